//! `strata bench`: llama-bench's two figures on this machine.
//!
//! - pp: a prompt of `-p` tokens evaluated in one batch (prompt processing);
//! - tg: `-n` tokens evaluated one at a time from an empty cache (generation).
//!
//! Each is run once to warm up, then `--repetitions` times from an empty
//! cache; the best and the median speed are reported, with the peak
//! resident memory of the process (VmHWM).

use std::io::Write as _;
use std::time::Instant;

use generate::Engine;
use serde_json::json;

use crate::common::{init_threads, Loaded, ModelArgs, ModelFile};
use crate::CmdResult;

/// Arguments of `strata bench`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt tokens in the pp test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 128)]
    n_prompt: usize,
    /// Generated tokens in the tg test (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 64)]
    n_gen: usize,
    /// Measured runs of each test.
    #[arg(short = 'r', long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    repetitions: u64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Speeds of one test's runs, tokens per second.
struct Figure {
    name: String,
    speeds: Vec<f64>,
}

impl Figure {
    fn best(&self) -> f64 {
        self.speeds.iter().copied().fold(0.0, f64::max)
    }
    fn median(&self) -> f64 {
        let mut s = self.speeds.clone();
        s.sort_by(f64::total_cmp);
        let m = s.len() / 2;
        if s.len() % 2 == 1 {
            s[m]
        } else {
            (s[m - 1] + s[m]) / 2.0
        }
    }
}

/// Deterministic token ids spread over the vocabulary (llama-bench uses random ones).
fn tokens(n: usize, n_vocab: usize) -> Vec<u32> {
    (0..n as u64)
        .map(|i| ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) % n_vocab as u64) as u32)
        .collect()
}

/// Runs `run` once to warm up, then `reps` times, returning tokens per second.
fn measure(
    engine: &mut dyn Engine,
    n: usize,
    reps: u64,
    run: impl Fn(&mut dyn Engine) -> Result<(), generate::GenerateError>,
) -> Result<Vec<f64>, generate::GenerateError> {
    let mut speeds = Vec::new();
    for rep in 0..=reps {
        engine.truncate(0)?;
        let start = Instant::now();
        run(engine)?;
        let secs = start.elapsed().as_secs_f64();
        if rep > 0 {
            speeds.push(n as f64 / secs);
        }
    }
    Ok(speeds)
}

/// Peak resident memory of this process in KiB (VmHWM), where /proc has it.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `strata bench`.
pub fn run(args: Args) -> CmdResult {
    init_threads(args.model.threads)?;
    let mf = ModelFile::open_with(args.model.model.as_ref(), !args.model.no_mmap)?;
    let n_ctx = args.n_prompt.max(args.n_gen).max(1);
    let mut loaded = Loaded::load(&mf, args.model.backend, args.model.exact, n_ctx)?;
    let mut engine = loaded.engine()?;
    let n_vocab = engine.n_vocab();
    let mut figures = Vec::new();
    if args.n_prompt > 0 {
        eprintln!("strata: pp{} ...", args.n_prompt);
        let prompt = tokens(args.n_prompt, n_vocab);
        let speeds = measure(&mut *engine, args.n_prompt, args.repetitions, |e| {
            e.forward_last(&prompt).map(|_| ())
        })?;
        figures.push(Figure {
            name: format!("pp{}", args.n_prompt),
            speeds,
        });
    }
    if args.n_gen > 0 {
        eprintln!("strata: tg{} ...", args.n_gen);
        let gen = tokens(args.n_gen, n_vocab);
        let speeds = measure(&mut *engine, args.n_gen, args.repetitions, |e| {
            for t in &gen {
                e.forward_last(std::slice::from_ref(t))?;
            }
            Ok(())
        })?;
        figures.push(Figure {
            name: format!("tg{}", args.n_gen),
            speeds,
        });
    }
    let threads = rayon::current_num_threads();
    let rss = peak_rss_kib();
    let model_name = mf
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let mut out = std::io::stdout().lock();
    if args.json {
        let tests: Vec<_> = figures
            .iter()
            .map(|f| {
                json!({"test": f.name, "best_tokens_per_second": f.best(),
                "median_tokens_per_second": f.median(), "runs_tokens_per_second": f.speeds})
            })
            .collect();
        let v = json!({"model": model_name, "backend": format!("{:?}", args.model.backend).to_lowercase(),
            "threads": threads, "repetitions": args.repetitions, "tests": tests,
            "peak_rss_kib": rss});
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(
            out,
            "| model | backend | threads | test | best t/s | median t/s |"
        )?;
        writeln!(out, "|---|---|---:|---|---:|---:|")?;
        for f in &figures {
            writeln!(
                out,
                "| {} | {:?} | {threads} | {} | {:.2} | {:.2} |",
                model_name.as_deref().unwrap_or("?"),
                args.model.backend,
                f.name,
                f.best(),
                f.median()
            )?;
        }
        match rss {
            Some(kib) => writeln!(out, "peak resident memory: {:.1} MiB", kib as f64 / 1024.0)?,
            None => writeln!(out, "peak resident memory: unknown (no /proc/self/status)")?,
        }
    }
    Ok(())
}
