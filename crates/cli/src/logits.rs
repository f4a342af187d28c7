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

use crate::common::UsageError;
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
    /// Write every graph node's values to DIR as `NNNN_<node>.f32`
    /// (little-endian, `[rows, width]`), the layout `tools/diff_llama_dump.py`
    /// compares with a llama.cpp eval-callback dump (`tools/llama_ref/dump.patch`).
    #[arg(long, value_name = "DIR")]
    dump: Option<PathBuf>,
    /// Compute and write only the last token's logits, as llama.cpp computes
    /// a prompt for generation (its last layer then runs on that row alone).
    #[arg(long)]
    last: bool,
    /// Where to run the model: the CPU, or a GPU through wgpu (the same graph).
    #[arg(long, value_enum, default_value_t = crate::common::BackendKind::Cpu)]
    backend: crate::common::BackendKind,
    /// With `--backend wgpu`: compute the CPU backend's bits (llama.cpp's)
    /// instead of the default fast mode's float activations.
    #[arg(long)]
    exact: bool,
    /// Read the model into memory instead of mapping it.
    #[arg(long)]
    no_mmap: bool,
}

/// Runs `strata logits`.
pub fn run(args: Args) -> CmdResult {
    let path = crate::common::resolve_model(args.model.as_ref())?;
    // The output replaces its target only once complete (written beside it,
    // then renamed), and never the model or the token list.
    for (input, what) in [(&path, "model"), (&args.tokens, "token list")] {
        if gguf_format::same_file(input, &args.out) {
            return Err(UsageError(format!(
                "--out {} is the {what} {} (same device and inode): choose another output",
                args.out.display(),
                input.display()
            ))
            .into());
        }
    }
    let text = std::fs::read_to_string(&args.tokens)
        .map_err(|e| format!("{}: {e}", args.tokens.display()))?;
    let tokens: Vec<u32> = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: not a JSON list of token ids: {e}",
            args.tokens.display()
        )
    })?;
    if tokens.is_empty() {
        return Err(UsageError(format!(
            "{}: the token list is empty",
            args.tokens.display()
        ))
        .into());
    }
    let model =
        crate::common::GraphModel::load_with(&path, args.backend, args.exact, !args.no_mmap)?;
    let (kv_type, kv_bytes) = if args.kv == "f32" {
        (KvType::F32, 4)
    } else {
        (KvType::F16, 2)
    };
    // Every position's logits and its KV cache are held at once: check the
    // size before the session allocates it (200k tokens of a 49k vocabulary
    // are 39 GB of logits).
    let c = model.config();
    let need = c
        .logits_bytes(tokens.len())
        .zip(c.kv_cache_bytes(tokens.len(), kv_bytes))
        .and_then(|(a, b)| a.checked_add(b));
    tensor_core::check_memory(
        &format!(
            "the logits of {} tokens × {} vocabulary entries with their KV cache",
            tokens.len(),
            c.n_vocab
        ),
        need,
    )?;
    let mut session = model.session(&SessionOptions {
        n_ctx: tokens.len(),
        kv_type,
        // A trace reads every node: run the graph node by node.
        compile: !(args.trace || args.dump.is_some()),
        ..SessionOptions::default()
    })?;
    let mut trace = Trace::with_limit(8);
    let mut dump = match &args.dump {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            Some(Dump {
                dir: dir.clone(),
                next: 0,
                error: None,
            })
        }
        None => None,
    };
    let mode = if args.last {
        LogitsMode::Last
    } else {
        LogitsMode::All
    };
    let logits = match (&mut dump, args.trace) {
        (Some(d), _) => session.forward_traced(&tokens, mode, d)?,
        (None, true) => session.forward_traced(&tokens, mode, &mut trace)?,
        (None, false) => session.forward(&tokens, mode)?,
    };
    if let Some(Dump { error: Some(e), .. }) = dump {
        return Err(e.into());
    }
    if args.trace && args.dump.is_none() {
        eprint!("{trace}");
    }
    let n_vocab = model.config().n_vocab;
    for (i, row) in logits.chunks(n_vocab).enumerate() {
        crate::common::check_finite(row, i)?;
    }
    let mut out = gguf_format::OutputFile::create(&args.out)?;
    let mut bytes = Vec::with_capacity(n_vocab * 4);
    for row in logits.chunks(n_vocab) {
        bytes.clear();
        for v in row {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        out.write_all(&bytes)
            .map_err(|e| format!("{}: {e}", args.out.display()))?;
    }
    out.commit()?;
    writeln!(
        std::io::stdout(),
        "{} tokens x {} logits -> {}",
        tokens.len(),
        n_vocab,
        args.out.display()
    )?;
    Ok(())
}

/// Writes every graph node's values to a directory, one file per node in
/// execution order (`0003_attn_norm-0.f32`).
struct Dump {
    dir: PathBuf,
    next: usize,
    error: Option<String>,
}

impl llama_model::Observer for Dump {
    fn record(&mut self, name: &str, _layer: Option<usize>, _n_rows: usize, values: &[f32]) {
        if self.error.is_some() {
            return;
        }
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = self.dir.join(format!("{:04}_{safe}.f32", self.next));
        self.next += 1;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        if let Err(e) = std::fs::write(&path, bytes) {
            self.error = Some(format!("{}: {e}", path.display()));
        }
    }
}
