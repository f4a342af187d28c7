//! `cargo xtask <task>`: what cargo alone cannot express. One module per task.
//!
//! - `synth-model --preset <tinyllama-1.1b|synth|gemma3-1b|gemma3-synth|qwen3moe-small|qwen3moe-synth> --type <Q4_K_M|Q8_0|F16|…> [--seed N] OUT.gguf`:
//!   a random-weight LLaMA, Gemma 3 or Qwen3-MoE written with gguf-format's writer.
//! - `gpu-bench MODEL.gguf [--adapter NAME] [--pp 512] [--tg 128] [--reps 3] [--attribute] [--exact]`:
//!   prompt and generation throughput of the wgpu backend, with a per-kernel GPU time profile
//!   (and, with `--attribute`, each op's cost in the chain of a generated token).
//! - `bench [--micro] [--model M] [--threads N] [--pp 128] [--tg 64] [--reps 3] [--rounds 3]
//!   [--llama-bench BIN]`: CPU speed of the default model and a ladder quantized from it,
//!   interleaved with llama.cpp's native llama-bench (see bench.rs).
//! - `serve-bench [--strata BIN] [--llama-server BIN] [--parallel 8] [--threads 2] ...`: tokens/s
//!   and time to first token of `strata serve` (and llama-server) under 1 and N concurrent
//!   streams (see serve_bench.rs).

mod bench;
mod gpu_bench;
mod serve_bench;
mod synth_model;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("synth-model") => synth_model::run(&args[1..]),
        Some("gpu-bench") => gpu_bench::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("serve-bench") => serve_bench::run(&args[1..]),
        _ => Err(
            "usage: cargo xtask <synth-model|gpu-bench|bench|serve-bench> ... (see xtask/src/main.rs)"
                .to_string(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the flag `name` is in `args`, and the arguments without it.
fn take_flag(args: &mut Vec<String>, name: &str) -> bool {
    match args.iter().position(|a| a == name) {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    }
}

/// Value of `--name VALUE` in `args`, and the arguments without the pair.
fn take_opt(args: &mut Vec<String>, name: &str) -> Result<Option<String>, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) if i + 1 < args.len() => {
            let v = args.remove(i + 1);
            args.remove(i);
            Ok(Some(v))
        }
        Some(_) => Err(format!("{name} needs a value")),
    }
}
