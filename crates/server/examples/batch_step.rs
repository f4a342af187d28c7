//! What one step of `strata serve` costs with `N` decoding slots, without
//! HTTP: `N` sequences each prefilled with a short prompt, then `STEPS`
//! steps of one batch of `N` tokens (one per sequence) and a sampled token
//! per sequence (llama.cpp's default chain, temperature 0.8).
//!
//! ```text
//! cargo run --release -p strata-server --example batch_step -- [N=8] [STEPS=32] [THREADS=2] [PROMPT=24] [MODEL]
//! ```
//!
//! Prints the milliseconds per step spent in the forward pass and in
//! sampling. Its instruction counts under `valgrind --tool=callgrind` are
//! stable on a busy machine, where wall-clock figures are not.

use std::sync::Arc;
use std::time::Instant;

use generate::{Sampler, SamplerConfig};
use llama_model::{Batch, CpuBackend, LoadOptions, Model, SessionOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: usize| args.get(i).map_or(Ok(d), |s| s.parse());
    let (n, steps, threads) = (arg(0, 8)?, arg(1, 32)?, arg(2, 2)?);
    let prompt_len = arg(3, 24)?.max(1);
    let path = match args.get(4) {
        Some(p) => p.into(),
        None => model_cache::default_model()?,
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;
    let file = Arc::new(gguf_format::GgufFile::open(&path)?);
    let model = Model::load_with(&file, CpuBackend::new(), &LoadOptions::default())?;
    let n_vocab = model.config().n_vocab;
    let mut session = model.session(&SessionOptions {
        n_ctx: 1024,
        n_seq: n,
        ..SessionOptions::default()
    })?;
    // Prefill: every sequence gets a distinct prompt, all in one batch.
    let mut history: Vec<Vec<u32>> = (0..n)
        .map(|s| {
            (0..prompt_len)
                .map(|i| ((s * 7919 + i * 104_729) % n_vocab) as u32)
                .collect()
        })
        .collect();
    let tokens: Vec<u32> = history.concat();
    let pos: Vec<usize> = (0..n).flat_map(|_| 0..prompt_len).collect();
    let seq: Vec<usize> = (0..n)
        .flat_map(|s| std::iter::repeat_n(s, prompt_len))
        .collect();
    let output: Vec<bool> = (0..n * prompt_len)
        .map(|i| i % prompt_len == prompt_len - 1)
        .collect();
    let logits = session
        .forward_batch(&Batch {
            tokens: &tokens,
            pos: &pos,
            seq: &seq,
            output: &output,
        })?
        .to_vec();
    let mut samplers: Vec<Sampler> = (0..n)
        .map(|s| {
            Sampler::new(SamplerConfig {
                seed: s as u64,
                ..SamplerConfig::default()
            })
        })
        .collect::<Result<_, _>>()?;
    let mut next: Vec<u32> = (0..n)
        .map(|s| samplers[s].sample(&logits[s * n_vocab..(s + 1) * n_vocab], &history[s]))
        .collect();
    let (mut t_forward, mut t_sample) = (0.0, 0.0);
    for _ in 0..steps {
        let pos: Vec<usize> = history.iter().map(Vec::len).collect();
        let seq: Vec<usize> = (0..n).collect();
        let output = vec![true; n];
        let start = Instant::now();
        let logits = session.forward_batch(&Batch {
            tokens: &next,
            pos: &pos,
            seq: &seq,
            output: &output,
        })?;
        let mid = Instant::now();
        for s in 0..n {
            history[s].push(next[s]);
            next[s] = samplers[s].sample(&logits[s * n_vocab..(s + 1) * n_vocab], &history[s]);
        }
        t_forward += (mid - start).as_secs_f64();
        t_sample += mid.elapsed().as_secs_f64();
    }
    let per = |t: f64| t * 1e3 / steps as f64;
    println!(
        "{n} sequences, {steps} steps, {threads} threads: forward {:.2} ms/step, sampling {:.2} ms/step, {:.1} tokens/s",
        per(t_forward),
        per(t_sample),
        (n * steps) as f64 / (t_forward + t_sample)
    );
    Ok(())
}
