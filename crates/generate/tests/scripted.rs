//! The generator over a scripted engine: streaming, stop strings, limits,
//! cache reuse and argument checks, without a model.

use generate::{
    Engine, GenerateError, GenerateOptions, Generator, Prompt, SamplerConfig, StopReason,
};
use gguf_format::GgufFile;
use tokenizer::Tokenizer;

fn tokenizer() -> Tokenizer {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/vocab/ggml-vocab-gpt-2.gguf"
    );
    let file = GgufFile::open(path).unwrap();
    Tokenizer::from_gguf(file.header()).unwrap()
}

/// An engine whose most likely next token is `script[n_past - start]`, and
/// that counts the tokens it is asked to compute.
struct Scripted {
    script: Vec<u32>,
    start: usize,
    n_ctx: usize,
    n_vocab: usize,
    n_past: usize,
    computed: usize,
    logits: Vec<f32>,
}

impl Scripted {
    fn new(tok: &Tokenizer, script: &[u32], start: usize) -> Scripted {
        Scripted {
            script: script.to_vec(),
            start,
            n_ctx: 64,
            n_vocab: tok.vocab_size(),
            n_past: 0,
            computed: 0,
            logits: vec![0.0; tok.vocab_size()],
        }
    }
}

impl Engine for Scripted {
    fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    fn n_vocab(&self) -> usize {
        self.n_vocab
    }
    fn n_past(&self) -> usize {
        self.n_past
    }
    fn truncate(&mut self, n: usize) -> Result<(), GenerateError> {
        assert!(n <= self.n_past);
        self.n_past = n;
        Ok(())
    }
    fn forward_last(&mut self, tokens: &[u32]) -> Result<&[f32], GenerateError> {
        assert!(!tokens.is_empty() && self.n_past + tokens.len() <= self.n_ctx);
        self.n_past += tokens.len();
        self.computed += tokens.len();
        self.logits.fill(0.0);
        let i = self.n_past - self.start;
        let next = self
            .script
            .get(i)
            .copied()
            .unwrap_or(self.script[self.script.len() - 1]);
        self.logits[next as usize] = 10.0;
        Ok(&self.logits)
    }
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampler: SamplerConfig::greedy(),
        ..GenerateOptions::default()
    }
}

#[test]
fn streams_until_the_token_limit() {
    let tok = tokenizer();
    let prompt = tok.encode("Say:", false, false).unwrap();
    let script = tok
        .encode(" one two three four five", false, false)
        .unwrap();
    let engine = Scripted::new(&tok, &script, prompt.len());
    let mut g = Generator::new(engine, &tok).unwrap();
    let mut pieces = Vec::new();
    let done = g
        .generate(Prompt::Tokens(&prompt), &greedy(3), |p| {
            pieces.push(p.to_string())
        })
        .unwrap();
    assert_eq!(done.tokens, &script[..3]);
    assert_eq!(done.text, " one two three");
    assert_eq!(pieces.concat(), done.text);
    assert_eq!(done.stop_reason, StopReason::MaxTokens);
    // The prompt, then the generated tokens but the last, one at a time.
    let t = done.timings;
    assert_eq!(
        (t.prompt_tokens, t.eval_tokens, t.sampled_tokens),
        (prompt.len(), 2, 3)
    );
    assert_eq!(g.engine().n_past(), prompt.len() + 2);
    assert_eq!(g.cached_tokens().len(), prompt.len() + 2);
}

#[test]
fn stop_strings_are_held_back_and_dropped() {
    let tok = tokenizer();
    let prompt = tok.encode("Q:", false, false).unwrap();
    let script = tok.encode(" fine.\n\nUser: more", false, false).unwrap();
    let engine = Scripted::new(&tok, &script, prompt.len());
    let mut g = Generator::new(engine, &tok).unwrap();
    let opts = GenerateOptions {
        stop: vec!["\nUser:".into()],
        ..greedy(20)
    };
    let mut pieces = Vec::new();
    let done = g
        .generate(Prompt::Tokens(&prompt), &opts, |p| {
            pieces.push(p.to_string())
        })
        .unwrap();
    assert_eq!(done.stop_reason, StopReason::StopString);
    assert_eq!(done.text, " fine.\n");
    assert!(pieces.iter().all(|p| !p.contains("User")), "{pieces:?}");
    assert_eq!(pieces.concat(), done.text);
}

#[test]
fn end_of_generation_token_ends_without_text() {
    let tok = tokenizer();
    let eos = tok.eos().expect("gpt-2 has an EOS");
    let prompt = tok.encode("Hi", false, false).unwrap();
    let mut script = tok.encode(" there", false, false).unwrap();
    script.push(eos);
    let engine = Scripted::new(&tok, &script, prompt.len());
    let mut g = Generator::new(engine, &tok).unwrap();
    let done = g
        .generate(Prompt::Tokens(&prompt), &greedy(20), |_| {})
        .unwrap();
    assert_eq!(done.stop_reason, StopReason::EndOfGeneration);
    assert_eq!(done.text, " there");
    assert!(!done.tokens.contains(&eos));
}

#[test]
fn a_prompt_extending_the_cache_computes_only_new_tokens() {
    let tok = tokenizer();
    let first = tok.encode("The first part", false, false).unwrap();
    let script = tok.encode(" and more text here", false, false).unwrap();
    let engine = Scripted::new(&tok, &script, first.len());
    let mut g = Generator::new(engine, &tok).unwrap();
    let done = g
        .generate(Prompt::Tokens(&first), &greedy(4), |_| {})
        .unwrap();
    assert_eq!(done.timings.reused_tokens, 0);
    // Continue from what is cached (prompt + 3 fed tokens), plus 2 new tokens.
    let mut second = g.cached_tokens().to_vec();
    let cached = second.len();
    second.extend(tok.encode(" again", false, false).unwrap());
    let done = g
        .generate(Prompt::Tokens(&second), &greedy(1), |_| {})
        .unwrap();
    assert_eq!(done.timings.reused_tokens, cached);
    assert_eq!(done.timings.prompt_tokens, second.len() - cached);
    // The same prompt again: all but its last token reused.
    let done = g
        .generate(Prompt::Tokens(&second), &greedy(1), |_| {})
        .unwrap();
    assert_eq!(done.timings.prompt_tokens, 1);
    // A diverging prompt truncates to the common prefix.
    let mut third = first[..2].to_vec();
    third.extend(tok.encode(" else", false, false).unwrap());
    let done = g
        .generate(Prompt::Tokens(&third), &greedy(1), |_| {})
        .unwrap();
    assert_eq!(done.timings.reused_tokens, 2);
}

#[test]
fn bad_arguments_fail_before_any_work() {
    let tok = tokenizer();
    let script = tok.encode(" x", false, false).unwrap();
    let mut g = Generator::new(Scripted::new(&tok, &script, 0), &tok).unwrap();
    let prompt = tok.encode("Hello", false, false).unwrap();
    let long = vec![prompt[0]; 64];
    let cases: Vec<(Prompt<'_>, GenerateOptions, &str)> = vec![
        (Prompt::Tokens(&prompt), greedy(0), "max_tokens"),
        (
            Prompt::Tokens(&prompt),
            GenerateOptions {
                sampler: SamplerConfig {
                    temperature: -1.0,
                    ..SamplerConfig::default()
                },
                ..greedy(4)
            },
            "temperature",
        ),
        (
            Prompt::Tokens(&prompt),
            GenerateOptions {
                sampler: SamplerConfig {
                    top_p: 1.5,
                    ..SamplerConfig::default()
                },
                ..greedy(4)
            },
            "top_p",
        ),
        (
            Prompt::Tokens(&prompt),
            GenerateOptions {
                stop: vec![String::new()],
                ..greedy(4)
            },
            "stop",
        ),
        (Prompt::Tokens(&[]), greedy(4), "empty"),
        (Prompt::Text(""), greedy(4), "empty"),
        (
            Prompt::Tokens(&[1_000_000]),
            greedy(4),
            "outside the vocabulary",
        ),
        (Prompt::Tokens(&long), greedy(4), "context holds 64"),
        (Prompt::Chat(&[]), greedy(4), "chat template"),
    ];
    for (prompt, opts, expected) in cases {
        let e = g.generate(prompt, &opts, |_| {}).unwrap_err();
        assert!(e.is_invalid_argument(), "{e}");
        assert!(
            e.to_string().contains(expected),
            "{e} (expected {expected:?})"
        );
        assert_eq!(
            g.engine().computed,
            0,
            "work was done before the error: {e}"
        );
    }
}

#[test]
fn the_stream_is_an_iterator() {
    let tok = tokenizer();
    let prompt = tok.encode("A", false, false).unwrap();
    let script = tok.encode(" b c d", false, false).unwrap();
    let mut g = Generator::new(Scripted::new(&tok, &script, prompt.len()), &tok).unwrap();
    let mut stream = g.stream(Prompt::Tokens(&prompt), &greedy(2)).unwrap();
    let first = stream.next().unwrap().unwrap();
    assert_eq!(first, " b");
    assert_eq!(stream.tokens().len(), 1);
    let done = stream.into_completion().unwrap();
    assert_eq!(done.text, " b c");
}

#[test]
fn a_text_far_longer_than_the_context_is_refused_before_it_is_tokenized() {
    let tok = tokenizer();
    let mut g = Generator::new(Scripted::new(&tok, &[], 0), &tok).unwrap();
    // 64 MB: tokenizing it took gigabytes; no vocabulary makes it fit 64 positions.
    let text = "a".repeat(64 << 20);
    let start = std::time::Instant::now();
    let e = g
        .generate(Prompt::Text(&text), &greedy(1), |_| {})
        .unwrap_err();
    assert!(
        matches!(e, GenerateError::PromptTooLong { n_ctx: 64, .. }),
        "{e}"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(2));
    // The bound never exceeds the true count.
    let small = "hello world, how are you";
    let n = tok.encode(small, false, false).unwrap().len();
    assert!(tok.min_tokens(small.len()) <= n);
    assert_eq!(tok.min_tokens(0), 0);
}

#[test]
fn a_tokenizer_that_disagrees_with_the_engine_is_refused() {
    let tok = tokenizer();
    let mut engine = Scripted::new(&tok, &[], 0);
    engine.n_vocab += 1;
    let e = Generator::new(engine, &tok).err().expect("must fail");
    assert!(
        e.to_string().contains("logits per token but the tokenizer"),
        "{e}"
    );
}
