//! `gpu-bench`: throughput of the wgpu backend on one model file.
//!
//! Reports prompt processing (pp: one step of `--pp` tokens), generation
//! (tg: `--tg` greedy tokens chained on the GPU, no read-back between them,
//! and the same with the token read back every step), the weight bytes one
//! generated token reads and the bandwidth that implies, and a per-kernel
//! GPU time profile from timestamp queries when the device has them.
//!
//! `--depth D` also measures tg after a context of D tokens (llama-bench's
//! `-d`).
//!
//! `--exact` measures the exact mode (the CPU's bits) instead of the
//! default fast mode.
//!
//! With `--attribute`, also what each kind of op costs generation in the
//! chain of dependent dispatches: chained tg timed again with that op left
//! out of every step ([`GpuProgram::leave_out`]), then with every product and
//! with everything but the products left out. Timestamps cannot give this:
//! a timestamped dispatch runs alone, with the queries' own overhead.

use std::time::Instant;

use backend_wgpu::{DeviceOptions, GpuContext, GpuOptions, GpuProgram, StepProfile, WgpuBackend};
use llama_model::{LoadOptions, Model, SessionOptions};

use crate::{take_flag, take_opt};

fn num(args: &mut Vec<String>, name: &str, default: u32) -> Result<u32, String> {
    take_opt(args, name)?
        .map(|s| s.parse().map_err(|_| format!("bad {name} `{s}`")))
        .transpose()
        .map(|v| v.unwrap_or(default))
}

fn e<T>(r: backend_wgpu::Result<T>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

fn print_profile(what: &str, p: &StepProfile) {
    println!(
        "  {what}: {} dispatches, {:.3} ms GPU time in dispatches",
        p.dispatches,
        p.total_ns / 1e6
    );
    for (label, n, ns) in &p.per_label {
        println!(
            "    {label:<14} {n:>4} × {:>9.1} µs = {:>8.3} ms ({:>4.1}%)",
            ns / *n as f64 / 1e3,
            ns / 1e6,
            100.0 * ns / p.total_ns
        );
    }
}

/// Best time per token of chained greedy decoding of `tg` tokens after a
/// one-token prompt (which counts as a generated token), over `reps` runs.
fn chained(model: &mut GpuProgram, first: u32, tg: u32, reps: u32) -> Result<f64, String> {
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        e(model.generate_greedy(&[first], 0, tg))?;
        best = best.min(t.elapsed().as_secs_f64() / tg as f64);
    }
    Ok(best)
}

/// `--attribute`: chained tg with each op label, every product, and
/// everything but the products left out of the steps.
fn attribute_tg(
    model: &mut GpuProgram,
    first: u32,
    tg: u32,
    reps: u32,
    full: f64,
) -> Result<(), String> {
    let ops = model.step_ops();
    let products: Vec<&str> = ops.iter().filter(|o| o.2).map(|o| o.0).collect();
    let others: Vec<&str> = ops.iter().filter(|o| !o.2).map(|o| o.0).collect();
    println!(
        "  tg cost in the chain (chained tg{tg} without the op; {:.3} ms/token with all):",
        full * 1e3
    );
    let mut row = |what: &str, labels: &[&str], n: usize| -> Result<(), String> {
        model.leave_out(labels);
        let t = chained(model, first, tg, reps)?;
        let cost = full - t;
        println!(
            "    {what:<22} {n:>4} dispatches: {:.3} ms/token without, cost {:.3} ms ({:>4.1}%), {:.1} µs a dispatch",
            t * 1e3,
            cost * 1e3,
            100.0 * cost / full,
            cost * 1e6 / n.max(1) as f64
        );
        Ok(())
    };
    for (label, n, _) in &ops {
        row(label, &[label], *n)?;
    }
    let count = |ls: &[&str]| ops.iter().filter(|o| ls.contains(&o.0)).map(|o| o.1).sum();
    row("all products", &products, count(&products))?;
    row("all but the products", &others, count(&others))?;
    model.leave_out(&[]);
    Ok(())
}

/// Entry point.
pub fn run(args: &[String]) -> Result<(), String> {
    let mut args = args.to_vec();
    let adapter = take_opt(&mut args, "--adapter")?;
    let pp = num(&mut args, "--pp", 512)?;
    let tg = num(&mut args, "--tg", 128)?;
    let reps = num(&mut args, "--reps", 3)?.max(1);
    let attribute = take_flag(&mut args, "--attribute");
    let exact = take_flag(&mut args, "--exact");
    let depth = num(&mut args, "--depth", 0)?;
    let bandwidth: f64 = take_opt(&mut args, "--bandwidth-gbs")?
        .map(|s| s.parse().map_err(|_| format!("bad bandwidth `{s}`")))
        .transpose()?
        .unwrap_or(3000.0);
    let [path] = args.as_slice() else {
        return Err("usage: gpu-bench MODEL.gguf [--adapter NAME] [--pp 512] [--tg 128] [--reps 3] [--bandwidth-gbs 3000] [--attribute] [--exact] [--depth D]".into());
    };
    let ctx = GpuContext::new(&DeviceOptions { adapter }).map_err(|e| e.to_string())?;
    println!("device: {:?}", ctx.caps());
    let file = std::sync::Arc::new(gguf_format::GgufFile::open(path).map_err(|e| e.to_string())?);
    let t0 = Instant::now();
    let n_ctx = (pp.max(depth) + tg + 8).next_power_of_two();
    println!("mode: {}", if exact { "exact" } else { "fast" });
    let backend = WgpuBackend::with_options(ctx, GpuOptions { exact });
    let loaded =
        Model::load_with(&file, backend, &LoadOptions::default()).map_err(|e| e.to_string())?;
    let mut session = loaded
        .session(&SessionOptions {
            n_ctx: n_ctx as usize,
            n_batch: pp.max(1) as usize,
            ..SessionOptions::default()
        })
        .map_err(|e| e.to_string())?;
    let Some(model) = session
        .program_mut()
        .and_then(|p| p.as_any_mut().downcast_mut::<GpuProgram>())
    else {
        return Err(format!(
            "{path}: the graph of this architecture is not compiled for the GPU (mixture of experts)"
        ));
    };
    let cfg = loaded.config().clone();
    println!(
        "model: {path} ({} {} layers, hidden {}, vocab {}), loaded in {:.2} s",
        cfg.arch.name(),
        cfg.n_layer,
        cfg.n_embd,
        cfg.n_vocab,
        t0.elapsed().as_secs_f64()
    );
    let n_vocab = cfg.n_vocab as u32;
    let tokens: Vec<u32> = (0..pp).map(|i| 1 + (i * 7919) % (n_vocab - 1)).collect();

    // pp: the whole prompt as one step (the last token's logits read back).
    e(model.forward(&tokens, 0))?; // warm-up: pipelines, first touch
    let mut best_pp = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        e(model.forward(&tokens, 0))?;
        best_pp = best_pp.min(t.elapsed().as_secs_f64());
    }
    println!(
        "pp{pp}: {:.1} t/s ({:.2} ms per step, best of {reps})",
        pp as f64 / best_pp,
        best_pp * 1e3
    );

    // tg: chained greedy decoding after a one-token prompt.
    e(model.generate_greedy(&tokens[..1], 0, 8))?;
    let best_tg = chained(model, tokens[0], tg, reps)?;
    // tg with a read-back every token (what an interactive sampler needs),
    // best of `reps` runs as the chained figure.
    let mut synced = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        let mut tok = e(model.forward_greedy(&tokens[..1], 0))?;
        for i in 1..tg {
            tok = e(model.forward_greedy(&[tok], i))?;
        }
        synced = synced.min(t.elapsed().as_secs_f64() / tg as f64);
    }
    let bytes = model.weight_bytes_per_token() as f64;
    let gbs = bytes / best_tg / 1e9;
    println!(
        "tg{tg}: {:.1} t/s chained ({:.3} ms/token), {:.1} t/s with a read-back per token ({:.3} ms/token)",
        1.0 / best_tg,
        best_tg * 1e3,
        1.0 / synced,
        synced * 1e3
    );
    println!(
        "weights read per token: {:.1} MB → {gbs:.0} GB/s = {:.1}% of {bandwidth:.0} GB/s",
        bytes / 1e6,
        100.0 * gbs / bandwidth
    );
    let enc = model.time_encode(1, 50);
    println!(
        "host time to record one 1-token step: {:.3} ms ({} dispatches)",
        enc * 1e3,
        model.dispatches_per_step()
    );
    // A decoding step well into the context (position 64, or the last one
    // a short context has).
    let at = 64.min(model.n_ctx() - 1);
    if let Some(p) = e(model.profile_step(&tokens[..1], at))? {
        print_profile(&format!("tg step profile (1 token at position {at})"), &p);
        println!(
            "    (each dispatch timed alone, with the queries' overhead: {:.3} ms against {:.3} ms per chained token)",
            p.total_ns / 1e6,
            best_tg * 1e3
        );
    }
    if depth > 0 {
        // tg after a context of `depth` tokens (llama-bench's -d): the
        // cache filled by prompt steps, then chained and read-back decoding.
        let ctx_toks: Vec<u32> = (0..depth).map(|i| 1 + (i * 7919) % (n_vocab - 1)).collect();
        let mut best = f64::MAX;
        let mut best_synced = f64::MAX;
        for _ in 0..reps {
            let first = e(model.forward_greedy(&ctx_toks, 0))?;
            let t = Instant::now();
            e(model.generate_greedy(&[first], depth, tg))?;
            best = best.min(t.elapsed().as_secs_f64() / tg as f64);
            let t = Instant::now();
            let mut tok = first;
            for i in 0..tg {
                tok = e(model.forward_greedy(&[tok], depth + i))?;
            }
            best_synced = best_synced.min(t.elapsed().as_secs_f64() / tg as f64);
        }
        println!(
            "tg{tg} at depth {depth}: {:.1} t/s chained, {:.1} t/s with a read-back per token \
             ({:.0}% of tg{tg} at depth 0)",
            1.0 / best,
            1.0 / best_synced,
            100.0 * synced / best_synced
        );
        if let Some(p) = e(model.profile_step(&tokens[..1], depth))? {
            print_profile(
                &format!("tg step profile (1 token at position {depth})"),
                &p,
            );
        }
    }
    if attribute {
        attribute_tg(model, tokens[0], tg, reps, best_tg)?;
    }
    if let Some(p) = e(model.profile_step(&tokens, 0))? {
        print_profile(&format!("pp{pp} step profile"), &p);
    }
    Ok(())
}
