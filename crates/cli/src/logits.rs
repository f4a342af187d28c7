//! `strata logits --model M --tokens T.json --out OUT.f32`: every position's logits of a token sequence.
//!
//! The tokens (a JSON list of ids) are evaluated as one batch, as llama.cpp
//! does for a prompt; the output is little-endian `f32`, row-major
//! `[n_tokens, n_vocab]` — the layout of the reference fixtures, so a file
//! can be compared with llama.cpp's directly. `--trace` prints each layer
//! step's statistics to stderr.

use std::io::Write as _;
use std::path::PathBuf;

use llama_model::{KvType, LogitsMode, SessionOptions, Trace};

use crate::CmdResult;

/// Arguments of `strata logits`.
#[derive(clap::Args)]
pub struct Args {
    /// The GGUF model: a file, or a registered name fetched on first use
    /// (smollm2-135m, the default; gemma3-270m); a file that exists wins over a name.
    #[arg(long)]
    model: Option<PathBuf>,
    /// A JSON file holding a list of token ids.
    #[arg(long)]
    tokens: PathBuf,
    /// Where to write the logits (little-endian f32, [n_tokens, n_vocab]).
    #[arg(long)]
    out: PathBuf,
    /// KV cache element type: f16 (llama.cpp's default) or f32.
    #[arg(long, default_value = "f16", value_parser = ["f16", "f32"])]
    kv: String,
    /// Print the layer trace (statistics of every step) to stderr.
    #[arg(long)]
    trace: bool,
    /// Where to run the model: the CPU, or a GPU through wgpu (the same graph).
    #[arg(long, value_enum, default_value_t = crate::common::BackendKind::Cpu)]
    backend: crate::common::BackendKind,
}

/// Runs `strata logits`.
pub fn run(args: Args) -> CmdResult {
    let path = crate::common::resolve_model(args.model.as_ref())?;
    let text = std::fs::read_to_string(&args.tokens)
        .map_err(|e| format!("{}: {e}", args.tokens.display()))?;
    let tokens: Vec<u32> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: not a JSON list of token ids: {e}",
            args.tokens.display()
        )
    })?;
    let model = crate::common::GraphModel::load(&path, args.backend)?;
    let kv_type = if args.kv == "f32" {
        KvType::F32
    } else {
        KvType::F16
    };
    let mut session = model.session(&SessionOptions {
        n_ctx: tokens.len().max(1),
        kv_type,
        ..SessionOptions::default()
    })?;
    let logits = if args.trace {
        let mut trace = Trace::with_limit(8);
        let logits = session
            .forward_traced(&tokens, LogitsMode::All, &mut trace)?
            .to_vec();
        eprint!("{trace}");
        logits
    } else {
        session.forward(&tokens, LogitsMode::All)?.to_vec()
    };
    let mut bytes = Vec::with_capacity(logits.len() * 4);
    for v in &logits {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(&args.out, bytes).map_err(|e| format!("{}: {e}", args.out.display()))?;
    writeln!(
        std::io::stdout(),
        "{} tokens x {} logits -> {}",
        tokens.len(),
        model.config().n_vocab,
        args.out.display()
    )?;
    Ok(())
}
