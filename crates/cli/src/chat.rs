//! `strata chat`: an interactive conversation with the model's chat template.
//!
//! Each turn renders the whole conversation and reuses the KV cache of what
//! came before, so only the new tokens are computed. With standard input not
//! a terminal, each line is one user message and each reply is printed on
//! its own (scriptable); `--json` prints one object per turn instead,
//! including how many prompt tokens were reused and how many computed.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use generate::{Chat, GenerateOptions, Generator};

use crate::common::{classify, init_threads, Loaded, ModelArgs, ModelFile, SamplingArgs};
use crate::generate::completion_json;
use crate::CmdResult;

/// Arguments of `strata chat`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// A system message opening the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(long, short = 'n', default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    max_tokens: u64,
    /// Context size in tokens (default: the model's training context, at most 4096).
    #[arg(long, short = 'c', value_parser = clap::value_parser!(u64).range(1..))]
    ctx: Option<u64>,
    /// Print one JSON object per turn (the reply, its tokens and timings).
    #[arg(long)]
    json: bool,
}

/// Runs `strata chat`.
pub fn run(args: Args) -> CmdResult {
    let opts = GenerateOptions {
        max_tokens: args.max_tokens as usize,
        sampler: args.sampling.config(),
        ..GenerateOptions::default()
    };
    opts.validate().map_err(classify)?;
    init_threads(args.model.threads)?;
    let mf = ModelFile::open_with(args.model.model.as_ref(), !args.model.no_mmap)?;
    let mut loaded = Loaded::load(&mf, args.model.backend, args.ctx.unwrap_or(0) as usize)?;
    let engine = loaded.engine()?;
    let generator = Generator::new(engine, &mf.tokenizer)
        .map_err(classify)?
        .with_template(mf.chat_template()?);
    let mut chat = Chat::new(generator, args.system.as_deref());

    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("strata: chat with the model; an empty line or end of input (Ctrl-D) ends it");
    }
    let mut stdout = std::io::stdout().lock();
    let mut lines = std::io::stdin().lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let user = line.trim();
        if user.is_empty() {
            if interactive {
                break;
            }
            continue;
        }
        let mut write_error = None;
        let done = chat
            .send(user, &opts, |piece| {
                if !args.json && write_error.is_none() {
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
        if args.json {
            let mut v = completion_json(&done);
            v["user"] = user.into();
            writeln!(stdout, "{}", serde_json::to_string(&v)?)?;
        } else {
            writeln!(stdout)?;
            let t = &done.timings;
            eprintln!(
                "strata: [{} prompt tokens: {} reused, {} computed at {:.1} t/s; {} generated at {:.1} t/s]",
                done.prompt_tokens.len(),
                t.reused_tokens,
                t.prompt_tokens,
                t.prompt_tokens_per_second(),
                done.tokens.len(),
                t.eval_tokens_per_second()
            );
        }
        stdout.flush()?;
    }
    Ok(())
}
