//! `strata embedding --token ID`: one row of the token embedding table
//! (`token_embd.weight`, dequantized to f32) and its RMS, on the CPU or
//! looked up on a GPU (`--backend wgpu`: the GPU's own row decoder).

use std::io::Write as _;
use std::path::PathBuf;

use backend_wgpu::{DeviceOptions, GpuContext, WgpuBackend};
use serde_json::json;
use tensor_core::{Backend, Tensor};

use crate::common::{BackendKind, ModelFile, UsageError};
use crate::CmdResult;

/// Arguments of `strata embedding`.
#[derive(clap::Args)]
pub struct Args {
    /// The token id.
    #[arg(long)]
    token: u32,
    /// The GGUF model: a file, or a registered name fetched on first use
    /// (smollm2-135m, the default; gemma3-270m); a file that exists wins over a name.
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// Print one JSON object (token, piece, rms, values).
    #[arg(long)]
    json: bool,
    /// Where the row is looked up.
    #[arg(long, value_enum, default_value = "cpu")]
    backend: crate::common::BackendKind,
}

/// Runs `strata embedding`.
pub fn run(args: Args) -> CmdResult {
    let mf = ModelFile::open(args.model.as_ref())?;
    let embd = Tensor::from_gguf(&mf.file, "token_embd.weight")?;
    if args.token as usize >= embd.n_rows() {
        return Err(UsageError(format!(
            "--token {}: outside the vocabulary of {} rows",
            args.token,
            embd.n_rows()
        ))
        .into());
    }
    let mut row = vec![0.0f32; embd.row_len()];
    match args.backend {
        BackendKind::Cpu => embd.dequantize_row(args.token as usize, &mut row)?,
        BackendKind::Wgpu => {
            let ctx = GpuContext::new(&DeviceOptions::default())?;
            let gpu = WgpuBackend::new(ctx);
            let table = gpu.load_matrix(&embd)?;
            let mut out = gpu.alloc(row.len())?;
            gpu.get_rows(&table, &[args.token], &mut out);
            gpu.read(&out, 0, &mut row)?;
        }
    }
    let rms = (row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / row.len() as f64).sqrt();
    let piece = String::from_utf8_lossy(mf.tokenizer.piece(args.token)).into_owned();
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = json!({"token": args.token, "piece": piece, "type": embd.dtype().to_string(),
            "n_embd": row.len(), "rms": rms, "values": row});
        writeln!(out, "{}", serde_json::to_string(&v)?)?;
    } else {
        writeln!(
            out,
            "token {} {piece:?}: {} values ({} row), rms {rms:.6}",
            args.token,
            row.len(),
            embd.dtype()
        )?;
        let values: Vec<String> = row.iter().map(|v| format!("{v}")).collect();
        writeln!(out, "{}", values.join(" "))?;
    }
    Ok(())
}
