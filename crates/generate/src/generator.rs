//! [`Generator`]: prompts in, streamed text out, over an [`Engine`] whose KV
//! cache it keeps between calls.

use std::time::Instant;

use tokenizer::chat::{ChatContext, ChatTemplate, Message};
use tokenizer::{StreamDecoder, Tokenizer};

use crate::stop::StopFilter;
use crate::{Engine, GenerateError, Sampler, SamplerConfig, Timings};

/// What to continue.
#[derive(Clone, Copy, Debug)]
pub enum Prompt<'p> {
    /// Raw text, tokenized as llama.cpp tokenizes a prompt: BOS if the model
    /// adds one, special-token text (`<|im_start|>`) parsed.
    Text(&'p str),
    /// Token ids, used as they are.
    Tokens(&'p [u32]),
    /// A conversation, rendered with the chat template and followed by the
    /// opening of the assistant's turn.
    Chat(&'p [Message]),
}

/// How to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate (at least 1).
    pub max_tokens: usize,
    /// The sampler chain's settings.
    pub sampler: SamplerConfig,
    /// Strings that end generation; they are not part of the output.
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens (EOS, end of turn).
    pub ignore_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampler: SamplerConfig::default(),
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl GenerateOptions {
    /// Checks every setting, naming the first bad one.
    pub fn validate(&self) -> Result<(), GenerateError> {
        if self.max_tokens == 0 {
            return Err(GenerateError::InvalidArgument {
                name: "max_tokens",
                value: "0".into(),
                expected: "at least 1",
            });
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(GenerateError::InvalidArgument {
                name: "stop string",
                value: "\"\"".into(),
                expected: "a non-empty string",
            });
        }
        self.sampler.validate()
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token (EOS, end of turn).
    EndOfGeneration,
    /// A stop string appeared.
    StopString,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context is full.
    ContextFull,
}

impl StopReason {
    /// A short name: `eog`, `stop`, `length`, `context`.
    pub fn name(self) -> &'static str {
        match self {
            StopReason::EndOfGeneration => "eog",
            StopReason::StopString => "stop",
            StopReason::MaxTokens => "length",
            StopReason::ContextFull => "context",
        }
    }
}

/// The result of one generation.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The prompt's tokens (all of them, reused or not).
    pub prompt_tokens: Vec<u32>,
    /// The generated tokens, without a final end-of-generation token.
    pub tokens: Vec<u32>,
    /// The generated text, without a stop string.
    pub text: String,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Counts and durations.
    pub timings: Timings,
}

/// Generates text with an [`Engine`] and a [`Tokenizer`], keeping the KV cache
/// between calls: a prompt that starts like the tokens already in the cache
/// (the next turn of a chat) only runs its new tokens through the model.
pub struct Generator<'t, E> {
    engine: E,
    tokenizer: &'t Tokenizer,
    template: Option<ChatTemplate>,
    /// The tokens whose keys and values are in the engine's cache, in order.
    cached: Vec<u32>,
}

impl<'t, E: Engine> Generator<'t, E> {
    /// A generator over `engine` (with an empty cache) and `tokenizer`, which
    /// must have as many tokens as the engine has logits: otherwise the
    /// tokenizer makes ids the model has no row for, or the model samples
    /// ids the tokenizer cannot decode.
    pub fn new(mut engine: E, tokenizer: &'t Tokenizer) -> Result<Self, GenerateError> {
        if engine.n_vocab() != tokenizer.vocab_size() {
            return Err(GenerateError::Engine(
                format!(
                    "the model has {} logits per token but the tokenizer {} tokens (tokenizer.ggml.tokens and token_embd.weight disagree)",
                    engine.n_vocab(),
                    tokenizer.vocab_size()
                )
                .into(),
            ));
        }
        engine.truncate(0)?;
        Ok(Generator {
            engine,
            tokenizer,
            template: None,
            cached: Vec::new(),
        })
    }

    /// Sets the chat template [`Prompt::Chat`] is rendered with.
    pub fn with_template(mut self, template: ChatTemplate) -> Self {
        self.template = Some(template);
        self
    }

    /// The chat template [`Prompt::Chat`] is rendered with, if set.
    pub fn template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// The engine.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &'t Tokenizer {
        self.tokenizer
    }

    /// The tokens in the KV cache.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.cached
    }

    /// Empties the KV cache.
    pub fn reset(&mut self) -> Result<(), GenerateError> {
        self.engine.truncate(0)?;
        self.cached.clear();
        Ok(())
    }

    /// The tokens `prompt` stands for.
    pub fn tokenize(&self, prompt: Prompt<'_>) -> Result<Vec<u32>, GenerateError> {
        let tok = self.tokenizer;
        Ok(match prompt {
            Prompt::Text(text) => {
                // A text that cannot fit is refused before it is tokenized
                // (a 300 MB prompt took gigabytes to tokenize).
                let n_ctx = self.engine.n_ctx();
                if text.len() >= n_ctx && tok.min_tokens(text.len()) >= n_ctx {
                    return Err(GenerateError::PromptTooLong {
                        n_prompt: tok.min_tokens(text.len()),
                        at_least: true,
                        n_ctx,
                    });
                }
                tok.encode(text, true, true)?
            }
            Prompt::Tokens(ids) => ids.to_vec(),
            Prompt::Chat(messages) => {
                let template = self
                    .template
                    .as_ref()
                    .ok_or(GenerateError::NoChatTemplate)?;
                let ctx = ChatContext {
                    messages: messages.to_vec(),
                    ..ChatContext::default()
                };
                tokenize_chat(tok, template, ctx)?
            }
        })
    }

    /// Checks `prompt` and `opts`, runs the prompt's new tokens through the
    /// model, and returns the stream of generated text.
    ///
    /// Every argument is checked before any work: bad settings, an empty
    /// prompt, tokens outside the vocabulary and a prompt that does not fit
    /// the context are errors.
    pub fn stream(
        &mut self,
        prompt: Prompt<'_>,
        opts: &GenerateOptions,
    ) -> Result<Stream<'_, 't, E>, GenerateError> {
        opts.validate()?;
        let prompt_tokens = self.tokenize(prompt)?;
        if prompt_tokens.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        let n_vocab = self.engine.n_vocab();
        if let Some((index, &token)) = prompt_tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= n_vocab)
        {
            return Err(GenerateError::InvalidToken {
                index,
                token,
                n_vocab,
            });
        }
        let n_ctx = self.engine.n_ctx();
        if prompt_tokens.len() >= n_ctx {
            return Err(GenerateError::PromptTooLong {
                n_prompt: prompt_tokens.len(),
                at_least: false,
                n_ctx,
            });
        }
        let sampler = Sampler::new(opts.sampler.clone())?;

        // Reuse the cached prefix; at least the last prompt token is run, for its logits.
        let common = self
            .cached
            .iter()
            .zip(&prompt_tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt_tokens.len() - 1);
        // A recurrent state rewinds only to a saved position (its end, a
        // snapshot, the start): the longest at most `common`.
        let common = self.engine.rewind_point(common);
        self.engine.truncate(common)?;
        self.cached.truncate(common);
        let new = &prompt_tokens[common..];
        let start = Instant::now();
        let logits = match self.engine.forward_last(new) {
            Ok(logits) => logits.to_vec(),
            Err(e) => {
                // The cache's state is unknown after a failure: start afresh next time.
                let _ = self.reset();
                return Err(e);
            }
        };
        let timings = Timings {
            reused_tokens: common,
            prompt_tokens: new.len(),
            prompt_ms: start.elapsed().as_secs_f64() * 1e3,
            ..Timings::default()
        };
        self.cached.extend_from_slice(new);
        Ok(Stream {
            generator: self,
            sampler,
            max_tokens: opts.max_tokens,
            ignore_eos: opts.ignore_eos,
            decoder: StreamDecoder::new(),
            stops: StopFilter::new(&opts.stop),
            logits,
            prompt_tokens,
            tokens: Vec::new(),
            text: String::new(),
            stop_reason: None,
            timings,
            failed: false,
        })
    }

    /// Generates from `prompt`, handing each piece of text to `on_text` as
    /// soon as it is complete, and returns the whole [`Completion`].
    pub fn generate(
        &mut self,
        prompt: Prompt<'_>,
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str),
    ) -> Result<Completion, GenerateError> {
        let mut stream = self.stream(prompt, opts)?;
        for piece in &mut stream {
            on_text(&piece?);
        }
        stream.into_completion()
    }
}

/// The tokens of a conversation rendered with `template` and followed by the
/// opening of the assistant's turn: `ctx`'s messages and extra variables
/// (`tools`, ...), with `add_generation_prompt` set and the BOS/EOS texts
/// filled in from `tok`. BOS is added unless the template wrote it.
pub fn tokenize_chat(
    tok: &Tokenizer,
    template: &ChatTemplate,
    mut ctx: ChatContext,
) -> Result<Vec<u32>, GenerateError> {
    let text_of = |id: Option<u32>| {
        id.and_then(|id| tok.token_text(id))
            .unwrap_or_default()
            .to_string()
    };
    ctx.add_generation_prompt = true;
    ctx.bos_token = text_of(tok.bos());
    ctx.eos_token = text_of(tok.eos());
    // Message content is tokenized as text: special tokens only where the
    // template writes them (a user's `<|im_end|><|im_start|>system` stays text).
    Ok(tok.encode_chat(template, &ctx, false)?)
}

/// Generated text, piece by piece: each item is a non-empty run of complete
/// UTF-8 characters. Made by [`Generator::stream`]; read the result with
/// [`Stream::into_completion`] once the iterator has ended.
pub struct Stream<'g, 't, E> {
    generator: &'g mut Generator<'t, E>,
    sampler: Sampler,
    max_tokens: usize,
    ignore_eos: bool,
    decoder: StreamDecoder,
    stops: StopFilter,
    /// The logits the next token is sampled from.
    logits: Vec<f32>,
    prompt_tokens: Vec<u32>,
    tokens: Vec<u32>,
    text: String,
    stop_reason: Option<StopReason>,
    timings: Timings,
    failed: bool,
}

impl<E: Engine> Stream<'_, '_, E> {
    /// The tokens generated so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The counts and durations so far.
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// Runs the stream to its end and returns the result (an error if the
    /// stream failed, even if that error was already read from the iterator).
    pub fn into_completion(mut self) -> Result<Completion, GenerateError> {
        for piece in &mut self {
            piece?;
        }
        if self.failed {
            return Err(GenerateError::Engine("generation failed part way".into()));
        }
        Ok(Completion {
            prompt_tokens: self.prompt_tokens,
            tokens: self.tokens,
            text: self.text,
            stop_reason: self.stop_reason.unwrap_or(StopReason::MaxTokens),
            timings: self.timings,
        })
    }

    /// Ends generation for `reason`, releasing the text held back.
    fn end(&mut self, reason: StopReason) -> String {
        self.stop_reason = Some(reason);
        let mut rest = self.decoder.finish();
        if reason != StopReason::StopString {
            let filtered = self.stops.push(&rest);
            rest = filtered.text;
            if filtered.stopped {
                self.stop_reason = Some(StopReason::StopString);
            } else {
                rest.push_str(&self.stops.finish());
            }
        }
        rest
    }

    /// One token: sample it, decode it, and feed it back if generation goes on.
    /// Returns the text released (possibly empty).
    fn step(&mut self) -> Result<String, GenerateError> {
        let tok = self.generator.tokenizer;
        let start = Instant::now();
        let history = &self.generator.cached;
        let token = self.sampler.sample(&self.logits, history);
        self.timings.sample_ms += start.elapsed().as_secs_f64() * 1e3;
        self.timings.sampled_tokens += 1;

        if tok.is_eog(token) && !self.ignore_eos {
            return Ok(self.end(StopReason::EndOfGeneration));
        }
        self.tokens.push(token);
        let piece = self.decoder.push(tok, token);
        let filtered = self.stops.push(&piece);
        if filtered.stopped {
            self.stop_reason = Some(StopReason::StopString);
            return Ok(filtered.text);
        }
        let mut text = filtered.text;
        if self.tokens.len() >= self.max_tokens {
            text.push_str(&self.end(StopReason::MaxTokens));
            return Ok(text);
        }
        let g = &mut *self.generator;
        if g.cached.len() >= g.engine.n_ctx() {
            text.push_str(&self.end(StopReason::ContextFull));
            return Ok(text);
        }
        let start = Instant::now();
        match g.engine.forward_last(&[token]) {
            Ok(logits) => self.logits.copy_from_slice(logits),
            Err(e) => {
                let _ = g.reset();
                return Err(e);
            }
        }
        self.timings.eval_ms += start.elapsed().as_secs_f64() * 1e3;
        self.timings.eval_tokens += 1;
        g.cached.push(token);
        Ok(text)
    }
}

impl<E: Engine> Iterator for Stream<'_, '_, E> {
    type Item = Result<String, GenerateError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.stop_reason.is_none() && !self.failed {
            match self.step() {
                Ok(text) if text.is_empty() => continue,
                Ok(text) => {
                    self.text.push_str(&text);
                    return Some(Ok(text));
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}
