//! `cargo xtask bench [--micro] [--model M] [--threads N] [--pp 128] [--tg 64] [--reps 3]`:
//! speed of the default model and of a ladder of file types made from it,
//! beside llama.cpp's on the same files in the same run.
//!
//! The ladder (F16 Q8_0 Q6_K Q5_K_M Q4_K_M Q4_0, and the original) is made
//! with `strata quantize` into `target/bench/ladder/`, once. The default
//! model is Q4_1, so the others are requantized through f32: they measure
//! speed, not the quality those types reach from an F16 original.
//!
//! Each file is measured by `strata bench --json` in its own process (pp: a
//! prompt in one batch, tg: tokens one at a time; best of `--reps` after a
//! warm-up; peak resident memory of that process). When
//! `llama-cpp-python==0.3.36` is importable, the same files are measured
//! through it in a child Python process with the same token counts,
//! threads and repetitions, and the ratio strata / llama.cpp is reported.
//! Figures are comparable only within one run on one machine.
//!
//! Results: `target/bench/bench-<unix time>.json`, `target/bench/latest.json`
//! and `target/bench/latest.md` (the markdown table, also printed).
//!
//! `--micro` runs the crates' criterion benches instead
//! (`cargo bench -p quant-kernels -p tokenizer`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::take_opt;

/// File types of the ladder, besides the original.
const LADDER: [&str; 6] = ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0"];

/// The llama-cpp-python release whose llama.cpp the project is compared with.
const LLAMA_CPP_PYTHON: &str = "0.3.36";

/// How the reference llama.cpp is built: the AVX2 x86 build whose summation
/// orders strata mirrors (an AVX-512 build sums float products in 16 lanes),
/// and without the AMX kernels, which crash llama.cpp 0.3.36 on quantized
/// files on CPUs that have AMX.
const LLAMA_CPP_CMAKE_ARGS: &str = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
     -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF \
     -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF";

/// How llama.cpp is measured: the same shape as `strata bench` (warm-up, then
/// best and median of `reps` runs from an empty cache; pp in one batch, tg
/// one token at a time), peak RSS from getrusage.
const LLAMA_CPP_SCRIPT: &str = r#"
import sys, time, json, resource, statistics
import llama_cpp
path, pp, tg, th, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
m = llama_cpp.Llama(model_path=path, n_ctx=max(pp, tg) + 8, n_threads=th, n_threads_batch=th,
                    n_batch=max(pp, 512), n_ubatch=max(pp, 512), verbose=False, logits_all=False)
n_vocab = m.n_vocab()
toks = [((i * 0x9E3779B97F4A7C15 % 2**64) >> 17) % n_vocab for i in range(max(pp, tg))]
def run_pp():
    m.reset(); t0 = time.perf_counter(); m.eval(toks[:pp]); return pp / (time.perf_counter() - t0)
def run_tg():
    m.reset(); t0 = time.perf_counter()
    for t in toks[:tg]:
        m.eval([t])
    return tg / (time.perf_counter() - t0)
out = {"version": llama_cpp.__version__, "threads": th, "tests": []}
for name, n, f in (("pp%d" % pp, pp, run_pp), ("tg%d" % tg, tg, run_tg)):
    if n == 0:
        continue
    f()
    s = [f() for _ in range(reps)]
    out["tests"].append({"test": name, "best_tokens_per_second": max(s),
                         "median_tokens_per_second": statistics.median(s), "runs_tokens_per_second": s})
out["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(out))
"#;

/// The workspace root (xtask's parent).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where cargo puts build outputs for this workspace.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Runs a command, returning its stdout; its stderr goes to ours.
fn run_cmd(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("{shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{shown} failed ({})", out.status));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{shown}: output is not UTF-8: {e}"))
}

/// The version of llama-cpp-python importable by `python3`, if any.
fn llama_cpp_version() -> Option<String> {
    let out = Command::new("python3")
        .args(["-c", "import llama_cpp; print(llama_cpp.__version__)"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Best tokens per second of test `name` in a bench JSON object.
fn best(v: &Value, name: &str) -> Option<f64> {
    v["tests"].as_array()?.iter().find(|t| t["test"] == name)?["best_tokens_per_second"].as_f64()
}

/// Runs `cargo xtask bench`.
pub fn run(args: &[String]) -> Result<(), String> {
    let mut args = args.to_vec();
    let micro = crate::take_flag(&mut args, "--micro");
    let parse = |v: Option<String>, name: &str, default: usize| -> Result<usize, String> {
        v.map_or(Ok(default), |s| {
            s.parse().map_err(|_| format!("{name} {s}: not a number"))
        })
    };
    let model = take_opt(&mut args, "--model")?;
    let threads_default = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = parse(
        take_opt(&mut args, "--threads")?,
        "--threads",
        threads_default,
    )?;
    let pp = parse(take_opt(&mut args, "--pp")?, "--pp", 128)?;
    let tg = parse(take_opt(&mut args, "--tg")?, "--tg", 64)?;
    let reps = parse(take_opt(&mut args, "--reps")?, "--reps", 3)?.max(1);
    if let Some(extra) = args.first() {
        return Err(format!(
            "bench: unexpected argument `{extra}` (usage: cargo xtask bench [--micro] \
             [--model M] [--threads N] [--pp 128] [--tg 64] [--reps 3])"
        ));
    }
    if micro {
        run_cmd(Command::new(env!("CARGO")).current_dir(root()).args([
            "bench",
            "-p",
            "quant-kernels",
            "-p",
            "tokenizer",
        ]))?;
        return Ok(());
    }

    eprintln!("bench: building strata (release)");
    run_cmd(Command::new(env!("CARGO")).current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "strata-cli",
    ]))?;
    let strata = target_dir().join("release").join("strata");
    let model = match model {
        Some(m) => PathBuf::from(m),
        None => model_cache::default_model().map_err(|e| e.to_string())?,
    };
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let out_dir = target_dir().join("bench");
    let ladder_dir = out_dir.join("ladder");
    std::fs::create_dir_all(&ladder_dir).map_err(|e| format!("{}: {e}", ladder_dir.display()))?;

    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for ft in LADDER {
        let path = ladder_dir.join(format!("{stem}-{ft}.gguf"));
        if !path.exists() {
            eprintln!("bench: strata quantize -> {}", path.display());
            let tmp = path.with_extension("gguf.part");
            run_cmd(
                Command::new(&strata)
                    .arg("quantize")
                    .arg(&model)
                    .arg(&tmp)
                    .arg(ft),
            )?;
            std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        files.push((ft.to_string(), path));
    }
    files.push(("original".to_string(), model.clone()));

    let llama_cpp = llama_cpp_version();
    match &llama_cpp {
        Some(v) if v == LLAMA_CPP_PYTHON => {}
        Some(v) => eprintln!(
            "bench: llama-cpp-python {v} found, the reference is {LLAMA_CPP_PYTHON}; measuring anyway"
        ),
        None => eprintln!(
            "bench: llama-cpp-python is not installed, so llama.cpp is not measured. To compare, \
             `CMAKE_ARGS=\"{LLAMA_CPP_CMAKE_ARGS}\" pip install --no-cache-dir \
             llama-cpp-python=={LLAMA_CPP_PYTHON}` (builds llama.cpp from source, about 10 minutes \
             on 2 cores) and run again."
        ),
    }

    let (spp, stg) = (format!("pp{pp}"), format!("tg{tg}"));
    let mut rows = Vec::new();
    for (label, path) in &files {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        eprintln!("bench: strata bench {}", path.display());
        let ours: Value = serde_json::from_str(&run_cmd(
            Command::new(&strata)
                .args(["bench", "--json", "-m"])
                .arg(path)
                .args(["-t", &threads.to_string(), "-p", &pp.to_string()])
                .args(["-n", &tg.to_string(), "-r", &reps.to_string()]),
        )?)
        .map_err(|e| format!("strata bench output: {e}"))?;
        // A failed reference run (a crash in the Python binding) is recorded
        // and the comparison goes on without it.
        let mut llama_cpp_error = None;
        let theirs: Option<Value> = match &llama_cpp {
            Some(_) => {
                eprintln!("bench: llama.cpp (llama-cpp-python) {}", path.display());
                let out = run_cmd(
                    Command::new("python3")
                        .args(["-c", LLAMA_CPP_SCRIPT])
                        .arg(path)
                        .args([pp.to_string(), tg.to_string(), threads.to_string()])
                        .arg(reps.to_string()),
                )
                .and_then(|out| {
                    serde_json::from_str(&out).map_err(|e| format!("llama.cpp bench output: {e}"))
                });
                match out {
                    Ok(v) => Some(v),
                    Err(e) => {
                        let short = e.rsplit(" failed ").next().unwrap_or(&e).to_string();
                        eprintln!("bench: llama.cpp run failed: {short}");
                        llama_cpp_error = Some(short);
                        None
                    }
                }
            }
            None => None,
        };
        let ratio = |test: &str| -> Option<f64> {
            Some(best(&ours, test)? / best(theirs.as_ref()?, test)?)
        };
        rows.push(json!({
            "file_type": label,
            "file": path.display().to_string(),
            "bytes": size,
            "strata": ours,
            "llama_cpp": theirs,
            "llama_cpp_error": llama_cpp_error,
            "ratio": { spp.clone(): ratio(&spp), stg.clone(): ratio(&stg) },
        }));
    }

    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let report = json!({
        "unix_time": unix,
        "threads": threads,
        "pp": pp,
        "tg": tg,
        "repetitions": reps,
        "llama_cpp_python": llama_cpp,
        "model": model.display().to_string(),
        "results": rows,
    });
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    for name in [format!("bench-{unix}.json"), "latest.json".to_string()] {
        let p = out_dir.join(name);
        std::fs::write(&p, &text).map_err(|e| format!("{}: {e}", p.display()))?;
    }

    let fmt =
        |v: Option<f64>, digits: usize| v.map_or("–".to_string(), |x| format!("{x:.digits$}"));
    let mib = |v: &Value| v["peak_rss_kib"].as_f64().map(|k| k / 1024.0);
    let mut md = format!(
        "strata vs llama.cpp ({}), {threads} threads, best of {reps}, tokens/s\n\n\
         | file type | MiB | strata {spp} | llama.cpp {spp} | ratio | strata {stg} | llama.cpp {stg} | ratio | strata peak RSS MiB | llama.cpp peak RSS MiB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        llama_cpp.as_deref().map_or("not installed".to_string(), |v| format!("llama-cpp-python {v}"))
    );
    for r in report["results"].as_array().into_iter().flatten() {
        let theirs = &r["llama_cpp"];
        md += &format!(
            "| {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r["file_type"].as_str().unwrap_or("?"),
            r["bytes"].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0),
            fmt(best(&r["strata"], &spp), 1),
            fmt(best(theirs, &spp), 1),
            fmt(r["ratio"][&spp].as_f64(), 2),
            fmt(best(&r["strata"], &stg), 1),
            fmt(best(theirs, &stg), 1),
            fmt(r["ratio"][&stg].as_f64(), 2),
            fmt(mib(&r["strata"]), 0),
            fmt(mib(theirs), 0),
        );
    }
    let p = out_dir.join("latest.md");
    std::fs::write(&p, &md).map_err(|e| format!("{}: {e}", p.display()))?;
    print!("{md}");
    eprintln!("bench: results in {}", out_dir.display());
    Ok(())
}
