//! [`Chat`]: a multi-turn conversation that keeps its KV cache, and
//! [`LastTurn`]: how its next prompt continues the tokens the model saw.

use tokenizer::chat::{Located, Message};
use tokenizer::{Tokenizer, TokenizerError};

use crate::{Completion, Engine, GenerateError, GenerateOptions, Generator, Prompt};

/// The last turn of a conversation as the model saw it: its prompt's
/// tokens followed by the reply's generated tokens, and the text they stand
/// for.
///
/// A reply tokenized again can differ from the tokens generated (merges the
/// model did not make; bytes of an incomplete UTF-8 character, kept in the
/// text as U+FFFD), and where the next prompt differs from the cache, the
/// cache is cut back — for a model with recurrent layers, to an earlier
/// snapshot of its states. So the next prompt is these tokens and then the
/// new text's, when the render of the conversation starts with this turn's
/// prompt and reply ([`LastTurn::continue_with`]) — as llama.cpp's
/// `llama-cli` continues a conversation; then the whole cache is reused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LastTurn {
    /// The render of the turn's prompt (ending with the reply's opening).
    pub render: String,
    /// The reply's text, as the conversation keeps it.
    pub reply: String,
    /// The prompt's tokens and then the reply's generated tokens.
    pub tokens: Vec<u32>,
}

impl LastTurn {
    /// The turn of `completion`, whose prompt was rendered as `render`.
    pub fn new(render: String, completion: &Completion) -> LastTurn {
        let mut tokens = completion.prompt_tokens.clone();
        tokens.extend_from_slice(&completion.tokens);
        LastTurn {
            render,
            reply: completion.text.clone(),
            tokens,
        }
    }

    /// The tokens of the conversation rendered as `r` (its text and message
    /// content: [`tokenizer::chat::ChatTemplate::render_located`]) as a
    /// continuation of this turn: [`LastTurn::tokens`], then the text after
    /// this turn's prompt and reply tokenized with
    /// [`Tokenizer::encode_continuation`] (special tokens where the template
    /// writes them, message content as text). `None` when the render does
    /// not start with this turn's prompt and reply (an earlier turn shifted
    /// out, a template that renders the history otherwise), when the
    /// content cannot be located, or when a message's content spans the
    /// seam: then the whole render is to be tokenized.
    pub fn continue_with(
        &self,
        tok: &Tokenizer,
        r: &Located,
    ) -> Result<Option<Vec<u32>>, TokenizerError> {
        let Some(ranges) = &r.content else {
            return Ok(None);
        };
        let head = self.render.len() + self.reply.len();
        let continues = r.text.starts_with(&self.render)
            && r.text[self.render.len()..].starts_with(&self.reply)
            && !ranges.iter().any(|c| c.start < head && c.end > head);
        if !continues {
            return Ok(None);
        }
        let tail: Vec<_> = ranges
            .iter()
            .filter(|c| c.start >= head)
            .map(|c| c.start - head..c.end - head)
            .collect();
        let mut ids = self.tokens.clone();
        ids.extend(tok.encode_continuation(&r.text[head..], true, &tail)?);
        Ok(Some(ids))
    }
}

/// A conversation with a model: each [`Chat::send`] renders the whole
/// conversation with the chat template and continues the tokens of the last
/// turn when the render does ([`LastTurn`]), so the [`Generator`] runs only
/// the tokens its cache does not hold yet (the new user message, mostly).
pub struct Chat<'t, E> {
    generator: Generator<'t, E>,
    messages: Vec<Message>,
    last: Option<LastTurn>,
}

impl<'t, E: Engine> Chat<'t, E> {
    /// A conversation over `generator` (which needs a chat template), opened
    /// by a system message if one is given.
    pub fn new(generator: Generator<'t, E>, system: Option<&str>) -> Self {
        let messages = system
            .map(|s| vec![Message::new("system", s)])
            .unwrap_or_default();
        Chat {
            generator,
            messages,
            last: None,
        }
    }

    /// The conversation so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The generator (its cache: [`Generator::cached_tokens`]).
    pub fn generator(&self) -> &Generator<'t, E> {
        &self.generator
    }

    /// Adds the user's message, generates the reply (streamed to `on_text`)
    /// and adds it to the conversation. On an error the conversation is left
    /// as it was.
    pub fn send(
        &mut self,
        user: &str,
        opts: &GenerateOptions,
        on_text: impl FnMut(&str),
    ) -> Result<Completion, GenerateError> {
        self.messages.push(Message::new("user", user));
        let result = self.prompt().and_then(|(ids, render)| {
            let done = self
                .generator
                .generate(Prompt::Tokens(&ids), opts, on_text)?;
            Ok((done, render))
        });
        match result {
            Ok((completion, render)) => {
                // Kept verbatim: the next render then starts with this
                // prompt and reply, and continues the tokens generated.
                self.messages
                    .push(Message::new("assistant", completion.text.as_str()));
                self.last = Some(LastTurn::new(render, &completion));
                Ok(completion)
            }
            Err(e) => {
                self.messages.pop();
                Err(e)
            }
        }
    }

    /// The prompt of the conversation and its render: the last turn's
    /// tokens continued, or the whole render tokenized.
    fn prompt(&self) -> Result<(Vec<u32>, String), GenerateError> {
        let tok = self.generator.tokenizer();
        let template = self
            .generator
            .template()
            .ok_or(GenerateError::NoChatTemplate)?;
        let ctx = tok.chat_context(self.messages.clone());
        let located = template.render_located(&ctx)?;
        let continued = match &self.last {
            Some(last) => last.continue_with(tok, &located)?,
            None => None,
        };
        let ids = match continued {
            Some(ids) => ids,
            None => crate::tokenize_chat(tok, template, ctx)?,
        };
        Ok((ids, located.text))
    }
}
