//! `strata quantize IN.gguf OUT.gguf TYPE`: a model file in one of
//! llama.cpp's file types, with the tensor types `llama-quantize` chooses.
//!
//! The choice and the conversion are llama-model's
//! [`quantize`](llama_model::quantize) module; this command adds the
//! threads, the progress lines on stderr (one per tensor, as
//! `llama-quantize` prints them) and the size summary.

use std::path::PathBuf;
use std::time::Instant;

use gguf_format::GgufFile;
use llama_model::quantize::{plan, quantize_model, FileType};

use crate::common::UsageError;
use crate::CmdResult;

/// Arguments of `strata quantize`.
#[derive(clap::Args)]
pub struct Args {
    /// The model to quantize (F32, F16, BF16, or already quantized: then it is requantized through f32).
    input: PathBuf,
    /// The file to write.
    output: PathBuf,
    /// The file type: F32 F16 BF16 Q8_0 Q6_K Q5_K_M Q5_K_S Q5_0 Q5_1 Q4_K_M Q4_K_S Q4_0 Q4_1
    /// Q3_K_L Q3_K_M Q3_K_S Q2_K IQ4_NL IQ4_XS Q2_0 Q1_0 MXFP4_MOE (any case).
    #[arg(value_parser = parse_file_type)]
    file_type: FileType,
    /// Worker threads (default: one per core).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Read the input into memory instead of mapping it.
    #[arg(long)]
    no_mmap: bool,
}

/// Parses a file type name for clap (so a bad one is a usage error, exit code 2).
fn parse_file_type(s: &str) -> Result<FileType, String> {
    s.parse()
        .map_err(|e: llama_model::ModelError| e.to_string())
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Runs `strata quantize`.
pub fn run(args: Args) -> CmdResult {
    let ftype = args.file_type;
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()?;
    }
    // Writing over the input would replace the model being quantized. The
    // same file is recognised by device and inode, so a hard link, a symbolic
    // link or another spelling of the path is caught too. (The output is
    // written beside its target and renamed into place, so even a file that
    // slips past this check is never truncated while mapped.)
    if gguf_format::same_file(&args.input, &args.output) {
        return Err(UsageError(format!(
            "the output {} is the input file {} (same device and inode): choose another output",
            args.output.display(),
            args.input.display()
        ))
        .into());
    }
    let input = GgufFile::open_with(&args.input, !args.no_mmap)?;
    let start = Instant::now();
    let requantized: Vec<String> = plan(input.header(), ftype)?
        .into_iter()
        .filter(|c| c.from != c.to && c.from.is_quantized())
        .map(|c| format!("{} ({})", c.name, c.from))
        .collect();
    if !requantized.is_empty() {
        eprintln!(
            "note: {} tensor(s) are already quantized and will be requantized through f32 \
             (quality is lower than quantizing the original F32/F16 model)",
            requantized.len()
        );
    }
    eprintln!(
        "quantizing {} to {} ({}) with {} threads",
        args.input.display(),
        args.output.display(),
        ftype,
        rayon::current_num_threads()
    );
    let (mut size_in, mut size_out, mut n_fallback, mut n_elements) =
        (0usize, 0usize, 0usize, 0u64);
    let writer = quantize_model(&input, ftype, |p| {
        size_in += p.bytes_in;
        size_out += p.bytes_out;
        n_elements += p.dims.iter().product::<u64>();
        let shape: Vec<String> = p.dims.iter().map(|d| d.to_string()).collect();
        let mut line = format!(
            "[{:4}/{:4}] {:<36} - [{}], type = {:>6}, ",
            p.index + 1,
            p.count,
            p.name,
            shape.join(", "),
            p.from.name()
        );
        if p.from == p.to {
            line += &format!("size = {:8.3} MiB", mib(p.bytes_in));
        } else {
            if let Some(wanted) = p.fell_back_from {
                n_fallback += 1;
                line += &format!("rows of {} do not fit {wanted}, ", p.dims[0]);
            }
            line += &format!(
                "{} {} .. size = {:8.2} MiB -> {:8.2} MiB",
                if p.requantized {
                    "requantizing (through f32) to"
                } else {
                    "converting to"
                },
                p.to.name(),
                mib(p.bytes_in),
                mib(p.bytes_out)
            );
        }
        eprintln!("{line}");
    })?;
    let written = writer.write_file(&args.output)?;
    let bpw = |bytes: usize| bytes as f64 * 8.0 / n_elements.max(1) as f64;
    eprintln!(
        "model size  = {:8.2} MiB ({:.2} BPW)",
        mib(size_in),
        bpw(size_in)
    );
    eprintln!(
        "quant size  = {:8.2} MiB ({:.2} BPW)",
        mib(size_out),
        bpw(size_out)
    );
    if n_fallback > 0 {
        eprintln!(
            "{n_fallback} of {} tensor(s) required fallback quantization",
            input.tensors().len()
        );
    }
    eprintln!(
        "wrote {} ({written} bytes) in {:.2} s",
        args.output.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
