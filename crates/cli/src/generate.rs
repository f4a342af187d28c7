//! `strata generate [PROMPT]`: continue a prompt, streaming the text to
//! stdout (one flush per piece) and the timings to stderr; `--json` prints
//! one object instead.

use std::io::{IsTerminal as _, Read as _, Write as _};

use generate::{Completion, GenerateOptions, Generator, Prompt};
use serde_json::json;
use tokenizer::chat::Message;

use crate::common::{
    classify, init_threads, Loaded, ModelArgs, ModelFile, SamplingArgs, UsageError,
};
use crate::CmdResult;

/// Arguments of `strata generate`.
#[derive(clap::Args)]
pub struct Args {
    /// The prompt (read from standard input if omitted and stdin is not a terminal).
    prompt: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    max_tokens: u64,
    /// Context size in tokens (default: the model's training context, at most 4096).
    #[arg(long, short = 'c', value_parser = clap::value_parser!(u64).range(1..))]
    ctx: Option<u64>,
    /// Treat the prompt as a user message and render it with the model's chat template.
    #[arg(long)]
    chat: bool,
    /// With --chat: a system message before the user's.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// With --chat: let special-token text in the messages become special
    /// tokens (trusted input only; by default message text stays text).
    #[arg(long, requires = "chat")]
    special_in_content: bool,
    /// Stop at this text (not printed); repeatable.
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// The prompt as a JSON list of token ids instead of text (used as given: no BOS added).
    #[arg(long, conflicts_with_all = ["prompt", "chat"])]
    prompt_tokens: Option<String>,
    /// Print one JSON object (prompt ids, generated ids, text, timings) instead of streaming.
    #[arg(long)]
    json: bool,
}

/// Runs `strata generate`.
pub fn run(args: Args) -> CmdResult {
    let opts = GenerateOptions {
        max_tokens: args.max_tokens as usize,
        sampler: args.sampling.config(),
        stop: args.stop.clone(),
        ignore_eos: args.ignore_eos,
    };
    opts.validate().map_err(classify)?;
    let prompt_ids: Option<Vec<u32>> = match &args.prompt_tokens {
        Some(json) => Some(serde_json::from_str(json).map_err(|e| {
            UsageError(format!(
                "--prompt-tokens: not a JSON list of token ids: {e}"
            ))
        })?),
        None => None,
    };
    let text = match (&args.prompt, &prompt_ids) {
        (Some(p), _) => p.clone(),
        (None, Some(_)) => String::new(),
        (None, None) if !std::io::stdin().is_terminal() => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
        (None, None) => {
            return Err(
                UsageError("no prompt: give one, or pipe it to standard input".into()).into(),
            )
        }
    };
    init_threads(args.model.threads)?;

    let mf = ModelFile::open_with(args.model.model.as_ref(), !args.model.no_mmap)?;
    let messages: Vec<Message> = args
        .system
        .iter()
        .map(|s| Message::new("system", s.as_str()))
        .chain(std::iter::once(Message::new("user", text.as_str())))
        .collect();
    // A chat is rendered and tokenized here, message text as text (see
    // Tokenizer::encode_chat), and handed to the generator as tokens.
    let chat_ids = if args.chat && prompt_ids.is_none() {
        let ctx = mf.tokenizer.chat_context(messages);
        Some(
            mf.tokenizer
                .encode_chat(&mf.chat_template()?, &ctx, args.special_in_content)?,
        )
    } else {
        None
    };
    let prompt = match (&prompt_ids, &chat_ids) {
        (Some(ids), _) | (None, Some(ids)) => Prompt::Tokens(ids),
        (None, None) => Prompt::Text(&text),
    };
    let mut loaded = Loaded::load(
        &mf,
        args.model.backend,
        args.model.exact,
        args.ctx.unwrap_or(0) as usize,
    )?;
    let engine = loaded.engine()?;
    let mut generator = Generator::new(engine, &mf.tokenizer).map_err(classify)?;

    if args.json {
        let done = generator
            .generate(prompt, &opts, |_| {})
            .map_err(classify)?;
        let out = serde_json::to_string_pretty(&completion_json(&done))?;
        writeln!(std::io::stdout(), "{out}")?;
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    let done = generator
        .generate(prompt, &opts, |piece| {
            if write_error.is_none() {
                if let Err(e) = stdout
                    .write_all(piece.as_bytes())
                    .and_then(|_| stdout.flush())
                {
                    write_error = Some(e);
                }
            }
        })
        .map_err(classify)?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    writeln!(stdout)?;
    eprintln!("\n{}", done.timings);
    eprintln!(
        "strata: {} prompt tokens, {} generated, stopped by {}",
        done.prompt_tokens.len(),
        done.tokens.len(),
        done.stop_reason.name()
    );
    Ok(())
}

/// A completion as JSON (shared with `chat --json`).
pub fn completion_json(done: &Completion) -> serde_json::Value {
    let t = &done.timings;
    json!({
        "prompt_tokens": done.prompt_tokens,
        "tokens": done.tokens,
        "text": done.text,
        "stop_reason": done.stop_reason.name(),
        "timings": {
            "reused_tokens": t.reused_tokens,
            "prompt_tokens": t.prompt_tokens,
            "prompt_ms": t.prompt_ms,
            "prompt_tokens_per_second": t.prompt_tokens_per_second(),
            "eval_tokens": t.eval_tokens,
            "eval_ms": t.eval_ms,
            "eval_tokens_per_second": t.eval_tokens_per_second(),
            "sampled_tokens": t.sampled_tokens,
            "sample_ms": t.sample_ms,
        }
    })
}
