//! `strata template [--model M | --template FILE.jinja] --context CTX.json`:
//! renders a chat template as Hugging Face's `apply_chat_template` does.
//!
//! The context is JSON shaped like `{"messages": [{"role": "user", "content":
//! "Hi"}], "add_generation_prompt": true}`; `bos_token`/`eos_token` default to
//! the model's. A model without a template falls back to ChatML (with a note
//! on stderr). A template error is printed on stderr with exit code 1.

use std::io::Write as _;
use std::path::PathBuf;

use gguf_format::GgufFile;
use tokenizer::chat::{ChatContext, ChatTemplate};
use tokenizer::Tokenizer;

use crate::CmdResult;

/// Arguments of `strata template`.
#[derive(clap::Args)]
pub struct Args {
    /// The GGUF file whose `tokenizer.chat_template` to render, or a registered model name
    /// (smollm2-135m, gemma3-270m); the default model if neither this nor --template is given.
    #[arg(long, short, conflicts_with = "template")]
    model: Option<PathBuf>,
    /// A Jinja template file to render instead of a model's.
    #[arg(long, short)]
    template: Option<PathBuf>,
    /// The context: a JSON file with `messages`, `add_generation_prompt`, ... (`-` reads standard input).
    #[arg(long, short)]
    context: PathBuf,
}

/// Runs `strata template`.
pub fn run(args: Args) -> CmdResult {
    let json = if args.context.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&args.context)
            .map_err(|e| format!("{}: {e}", args.context.display()))?
    };
    // Parsed straight into the context so that objects keep their key order
    // (`tools` rendered with `tojson` must match Hugging Face's output).
    let mut ctx =
        ChatContext::from_json(&json).map_err(|e| format!("{}: {e}", args.context.display()))?;
    let keys: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&json).map_err(|e| format!("{}: {e}", args.context.display()))?;

    let template = match args.template {
        Some(path) => {
            let source =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            ChatTemplate::new(&source)?
        }
        None => {
            let path = crate::common::resolve_model(args.model.as_ref())?;
            let file = GgufFile::open(&path)?;
            let tok = Tokenizer::from_gguf(file.header())?;
            // Fill in the model's BOS/EOS text unless the context gives them.
            let text = |id: Option<u32>| {
                id.and_then(|id| tok.token_text(id))
                    .unwrap_or_default()
                    .to_string()
            };
            if !keys.contains_key("bos_token") {
                ctx.bos_token = text(tok.bos());
            }
            if !keys.contains_key("eos_token") {
                ctx.eos_token = text(tok.eos());
            }
            match ChatTemplate::from_gguf(file.header())? {
                Some(t) => t,
                None => {
                    eprintln!(
                        "strata: note: {} has no chat template; using ChatML",
                        path.display()
                    );
                    ChatTemplate::chatml()
                }
            }
        }
    };
    let rendered = template.render(&ctx)?;
    std::io::stdout().lock().write_all(rendered.as_bytes())?;
    Ok(())
}
