//! `cargo xtask bench [--micro] [--model M] [--threads N] [--pp 128] [--tg 64] [--reps 3]
//! [--rounds 3] [--llama-bench BIN]`: CPU speed of the default model and of a
//! ladder of file types made from it, beside llama.cpp's native build on the
//! same files, interleaved in the same run.
//!
//! The ladder (F16 Q8_0 Q6_K Q5_K_M Q4_K_M Q4_0, and the original) is made
//! with `strata quantize` into `target/bench/ladder/`, once. The default
//! model is Q4_1, so the others are requantized through f32: they measure
//! speed, not the quality those types reach from an F16 original.
//!
//! The peer is llama.cpp built natively for this machine (`GGML_NATIVE=ON`)
//! from the source vendored in the llama-cpp-python 0.3.36 sdist
//! (`vendor/llama.cpp`), measured by its own `llama-bench`
//! (`-p PP -n TG -t N -r REPS -o json`), whose path is `--llama-bench BIN` or
//! the environment variable `LLAMA_BENCH`. Without one, only strata is
//! measured and a line says how to build it ([`LLAMA_BENCH_BUILD`]). The
//! `CMakeCache.txt` above the binary, where there is one, is read for the
//! build's settings (`GGML_NATIVE`, AMX, the source directory), which are
//! recorded and shown.
//!
//! Each file is measured by `strata bench --json` in its own process (pp: a
//! prompt in one batch, tg: tokens one at a time; a warm-up, then `--reps`
//! runs; peak resident memory of that process) and by `llama-bench` in its
//! own process (the same shape: its warm-up, then `--reps` runs; its peak
//! resident memory sampled from `/proc`). Shared machines drift by ±30%
//! between runs, so the two are interleaved: `--rounds R` times, every file
//! is measured by strata and by llama-bench one right after the other (strata
//! first in even rounds, llama-bench first in odd ones), and each side's best
//! run over all rounds is reported, with the ratio strata / llama.cpp.
//! Figures are comparable only within one run on one machine.
//!
//! The environment is passed through to both programs unchanged: for
//! example `STRATA_CPU_DISABLE=avx512,avx_vnni cargo xtask bench` measures
//! strata's AVX2 kernels (then the fair peer is an AVX2 native build). The
//! variables that change what is measured (`STRATA_*`, `GGML_*`, `OMP_*`,
//! `RAYON_*`) are recorded in the JSON and the table's header, with the
//! CPU's flags from `/proc/cpuinfo` and the load average before and after.
//!
//! Results: `target/bench/bench-<unix time>.json`, `target/bench/latest.json`
//! and `target/bench/latest.md` (the markdown table, also printed).
//!
//! `--micro` runs the crates' criterion benches instead
//! (`cargo bench -p quant-kernels -p tokenizer`).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::take_opt;

/// File types of the ladder, besides the original.
const LADDER: [&str; 6] = ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0"];

/// How the peer is named in the report.
pub const PEER: &str = "llama.cpp native (llama-bench, GGML_NATIVE=ON)";

/// How to build the peer's `llama-bench`, in the llama.cpp tree of the
/// llama-cpp-python 0.3.36 sdist (`vendor/llama.cpp`).
pub const LLAMA_BENCH_BUILD: &str = "cmake -B build-native -G Ninja -DCMAKE_BUILD_TYPE=Release \
     -DGGML_NATIVE=ON -DLLAMA_CURL=OFF (+ -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
     -DGGML_AMX_BF16=OFF where AMX crashes) && ninja -C build-native llama-bench";

/// The environment variable naming the peer's `llama-bench` when
/// `--llama-bench` is not given.
pub const LLAMA_BENCH_VAR: &str = "LLAMA_BENCH";

/// CPU flags of `/proc/cpuinfo` shown in the report: the instruction sets
/// strata's and llama.cpp's x86 kernels are chosen by.
const CPU_FLAGS: [&str; 5] = ["avx2", "avx512f", "avx_vnni", "avx512_vnni", "amx_tile"];

/// Prefixes of the environment variables recorded with the results.
const ENV_PREFIXES: [&str; 4] = ["STRATA_", "GGML_", "OMP_", "RAYON_"];

/// `CMakeCache.txt` entries of the peer's build recorded with the results.
const CMAKE_KEYS: [&str; 8] = [
    "CMAKE_BUILD_TYPE",
    "CMAKE_HOME_DIRECTORY",
    "GGML_NATIVE",
    "GGML_AMX_TILE",
    "GGML_AMX_INT8",
    "GGML_AMX_BF16",
    "GGML_AVX512",
    "GGML_OPENMP",
];

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
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{shown} failed ({})", out.status));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{shown}: output is not UTF-8: {e}"))
}

/// Peak resident memory (VmHWM, KiB) of process `pid`, while it runs.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs a command, returning its stdout and its peak resident memory in KiB
/// (sampled from `/proc` every 20 ms while it runs; the last sample is at
/// most 20 ms before it exits); its stderr is dropped unless it fails, when
/// its last lines are in the error.
fn run_sampled(cmd: &mut Command) -> Result<(String, Option<u64>), String> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        stdout.read_to_end(&mut s).map(|_| s)
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let mut peak = None;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("{shown}: {e}"))? {
            break status;
        }
        if let Some(k) = vm_hwm_kib(pid) {
            peak = Some(peak.map_or(k, |p: u64| p.max(k)));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out_reader
        .join()
        .map_err(|_| format!("{shown}: stdout reader panicked"))?
        .map_err(|e| format!("{shown}: {e}"))?;
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        let err = String::from_utf8_lossy(&err);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("{shown} failed ({status}): {}", tail.join(" / ")));
    }
    let out = String::from_utf8(out).map_err(|e| format!("{shown}: output is not UTF-8: {e}"))?;
    Ok((out, peak))
}

/// Best tokens per second of test `name` in a bench JSON object (strata
/// bench's `--json` shape, which [`parse_llama_bench`] and [`merge_rounds`]
/// also produce).
fn best(v: &Value, name: &str) -> Option<f64> {
    v["tests"].as_array()?.iter().find(|t| t["test"] == name)?["best_tokens_per_second"].as_f64()
}

/// The name llama-bench gives a test: `pp128`, `tg64`, `pp128+tg64`, with
/// `@d<depth>` after a non-zero depth.
fn llama_bench_test_name(n_prompt: u64, n_gen: u64, n_depth: u64) -> String {
    let mut name = match (n_prompt, n_gen) {
        (p, 0) => format!("pp{p}"),
        (0, g) => format!("tg{g}"),
        (p, g) => format!("pp{p}+tg{g}"),
    };
    if n_depth > 0 {
        name += &format!("@d{n_depth}");
    }
    name
}

/// Parses `llama-bench -o json` output (an array of test objects with
/// `n_prompt`, `n_gen`, `avg_ts` and `samples_ts`, among others) into strata
/// bench's `--json` shape: `{"tests": [{"test": "pp128",
/// "best_tokens_per_second", "median_tokens_per_second",
/// "avg_tokens_per_second", "runs_tokens_per_second"}], "build_commit",
/// "cpu_info", "threads"}`. The best is the fastest sample (as strata
/// reports), the average llama-bench's own `avg_ts`.
pub fn parse_llama_bench(text: &str) -> Result<Value, String> {
    // Only the JSON array is on stdout, but tolerate a line before it.
    let start = text.find('[').ok_or("llama-bench output: no JSON array")?;
    let v: Value =
        serde_json::from_str(&text[start..]).map_err(|e| format!("llama-bench output: {e}"))?;
    let entries = v.as_array().ok_or("llama-bench output: not an array")?;
    let mut tests = Vec::new();
    for e in entries {
        let field = |k: &str| -> Result<u64, String> {
            e[k].as_u64()
                .ok_or_else(|| format!("llama-bench output: a test without `{k}`"))
        };
        let (n_prompt, n_gen) = (field("n_prompt")?, field("n_gen")?);
        let n_depth = e["n_depth"].as_u64().unwrap_or(0);
        let avg = e["avg_ts"]
            .as_f64()
            .ok_or("llama-bench output: a test without `avg_ts`")?;
        let samples: Vec<f64> = e["samples_ts"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let best = samples
            .iter()
            .copied()
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        let median = {
            let mut s = samples.clone();
            s.sort_by(f64::total_cmp);
            match s.len() {
                0 => None,
                n if n % 2 == 1 => Some(s[n / 2]),
                n => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
            }
        };
        tests.push(json!({
            "test": llama_bench_test_name(n_prompt, n_gen, n_depth),
            "best_tokens_per_second": best.unwrap_or(avg),
            "median_tokens_per_second": median.unwrap_or(avg),
            "avg_tokens_per_second": avg,
            "runs_tokens_per_second": samples,
        }));
    }
    let first = entries.first().cloned().unwrap_or(Value::Null);
    Ok(json!({
        "build_commit": first["build_commit"],
        "cpu_info": first["cpu_info"],
        "threads": first["n_threads"],
        "tests": tests,
    }))
}

/// Folds the rounds' bench objects of one program on one file into one: per
/// test (in the order first seen), the best tokens per second over all
/// rounds and each round's best (`best_per_round`, null where a round lacks
/// it); the largest peak resident memory; and the rounds themselves.
pub fn merge_rounds(rounds: &[Value]) -> Value {
    let mut names: Vec<String> = Vec::new();
    for r in rounds {
        for t in r["tests"].as_array().into_iter().flatten() {
            if let Some(n) = t["test"].as_str() {
                if !names.iter().any(|m| m == n) {
                    names.push(n.to_string());
                }
            }
        }
    }
    let tests: Vec<Value> = names
        .iter()
        .map(|n| {
            let per_round: Vec<Option<f64>> = rounds.iter().map(|r| best(r, n)).collect();
            let top = per_round
                .iter()
                .flatten()
                .copied()
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
            json!({"test": n, "best_tokens_per_second": top, "best_per_round": per_round})
        })
        .collect();
    let rss = rounds
        .iter()
        .filter_map(|r| r["peak_rss_kib"].as_u64())
        .max();
    json!({"tests": tests, "peak_rss_kib": rss, "rounds": rounds})
}

/// The flags of [`CPU_FLAGS`] present in the first `flags` line of a
/// `/proc/cpuinfo` text, in that order.
pub fn cpu_flags(cpuinfo: &str) -> Vec<&'static str> {
    let Some(line) = cpuinfo.lines().find(|l| l.starts_with("flags")) else {
        return Vec::new();
    };
    let have: Vec<&str> = line
        .split_once(':')
        .map_or("", |(_, v)| v)
        .split_whitespace()
        .collect();
    CPU_FLAGS.into_iter().filter(|f| have.contains(f)).collect()
}

/// The CPU's model name from `/proc/cpuinfo`, if it has one.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    let line = cpuinfo.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// The entries of [`CMAKE_KEYS`] in the `CMakeCache.txt` of the build tree
/// holding `bin` (the binary's directory or up to two above it).
fn cmake_settings(bin: &Path) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(cache) = bin
        .ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join("CMakeCache.txt"))
        .find(|p| p.is_file())
    else {
        return out;
    };
    let text = std::fs::read_to_string(&cache).unwrap_or_default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.split(':').next().unwrap_or(key);
        if CMAKE_KEYS.contains(&key) {
            out.insert(key.to_string(), Value::String(value.to_string()));
        }
    }
    out.insert(
        "cmake_cache".to_string(),
        Value::String(cache.display().to_string()),
    );
    out
}

/// `/proc/loadavg`'s three load averages, if readable.
fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
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
    let rounds = parse(take_opt(&mut args, "--rounds")?, "--rounds", 3)?.max(1);
    let llama_bench = take_opt(&mut args, "--llama-bench")?
        .map(PathBuf::from)
        .or_else(|| std::env::var_os(LLAMA_BENCH_VAR).map(PathBuf::from));
    if let Some(extra) = args.first() {
        return Err(format!(
            "bench: unexpected argument `{extra}` (usage: cargo xtask bench [--micro] \
             [--model M] [--threads N] [--pp 128] [--tg 64] [--reps 3] [--rounds 3] \
             [--llama-bench BIN])"
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
    if let Some(b) = &llama_bench {
        if !b.is_file() {
            return Err(format!("--llama-bench {}: no such file", b.display()));
        }
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

    let cmake = match &llama_bench {
        Some(b) => {
            let s = cmake_settings(b);
            match s.get("GGML_NATIVE").and_then(Value::as_str) {
                Some("ON") => {}
                Some(v) => eprintln!(
                    "bench: {} was built with GGML_NATIVE={v}; the reference is a native build",
                    b.display()
                ),
                None => eprintln!(
                    "bench: no CMakeCache.txt above {}; cannot tell whether it is a native build",
                    b.display()
                ),
            }
            s
        }
        None => {
            eprintln!(
                "bench: no llama-bench (--llama-bench BIN or {LLAMA_BENCH_VAR}), so llama.cpp is \
                 not measured; to compare, build it natively in the llama.cpp of the \
                 llama-cpp-python 0.3.36 sdist (vendor/llama.cpp): {LLAMA_BENCH_BUILD}"
            );
            Map::new()
        }
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpu_flags(&cpuinfo);
    let env: Map<String, Value> = std::env::vars()
        .filter(|(k, _)| ENV_PREFIXES.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let load_before = load_average();

    let (spp, stg) = (format!("pp{pp}"), format!("tg{tg}"));
    // Per file: strata's and llama-bench's bench object of each round, and
    // llama-bench's errors (a crash is recorded and the run goes on).
    let mut ours: Vec<Vec<Value>> = vec![Vec::new(); files.len()];
    let mut theirs: Vec<Vec<Value>> = vec![Vec::new(); files.len()];
    let mut errors: Vec<Vec<String>> = vec![Vec::new(); files.len()];
    for round in 0..rounds {
        for (i, (label, path)) in files.iter().enumerate() {
            let run_strata = || -> Result<Value, String> {
                eprintln!("bench: round {}/{rounds}: strata bench {label}", round + 1);
                serde_json::from_str(&run_cmd(
                    Command::new(&strata)
                        .args(["bench", "--json", "-m"])
                        .arg(path)
                        .args(["-t", &threads.to_string(), "-p", &pp.to_string()])
                        .args(["-n", &tg.to_string(), "-r", &reps.to_string()]),
                )?)
                .map_err(|e| format!("strata bench output: {e}"))
            };
            let run_peer = |bin: &Path| -> Result<Value, String> {
                eprintln!("bench: round {}/{rounds}: llama-bench {label}", round + 1);
                let (out, rss) = run_sampled(
                    Command::new(bin)
                        .arg("-m")
                        .arg(path)
                        .args(["-p", &pp.to_string(), "-n", &tg.to_string()])
                        .args(["-t", &threads.to_string(), "-r", &reps.to_string()])
                        .args(["-o", "json"]),
                )?;
                let mut v = parse_llama_bench(&out)?;
                v["peak_rss_kib"] = json!(rss);
                Ok(v)
            };
            let peer = |theirs: &mut Vec<Value>, errors: &mut Vec<String>| {
                if let Some(bin) = &llama_bench {
                    match run_peer(bin) {
                        Ok(v) => theirs.push(v),
                        Err(e) => {
                            eprintln!("bench: llama-bench failed: {e}");
                            errors.push(e);
                        }
                    }
                }
            };
            if round % 2 == 0 {
                ours[i].push(run_strata()?);
                peer(&mut theirs[i], &mut errors[i]);
            } else {
                peer(&mut theirs[i], &mut errors[i]);
                ours[i].push(run_strata()?);
            }
        }
    }
    let load_after = load_average();

    let mut rows = Vec::new();
    for (i, (label, path)) in files.iter().enumerate() {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let ours = merge_rounds(&ours[i]);
        let theirs = (!theirs[i].is_empty()).then(|| merge_rounds(&theirs[i]));
        let ratio = |test: &str| -> Option<f64> {
            Some(best(&ours, test)? / best(theirs.as_ref()?, test)?)
        };
        rows.push(json!({
            "file_type": label,
            "file": path.display().to_string(),
            "bytes": size,
            "strata": ours,
            "llama_cpp": theirs,
            "llama_cpp_errors": errors[i],
            "ratio": { spp.clone(): ratio(&spp), stg.clone(): ratio(&stg) },
        }));
    }

    let build_commit = rows
        .iter()
        .flat_map(|r| r["llama_cpp"]["rounds"].as_array().into_iter().flatten())
        .find_map(|r| r["build_commit"].as_str().map(str::to_string));
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let report = json!({
        "unix_time": unix,
        "threads": threads,
        "pp": pp,
        "tg": tg,
        "repetitions": reps,
        "rounds": rounds,
        "peer": PEER,
        "llama_bench": llama_bench.as_ref().map(|b| b.display().to_string()),
        "llama_bench_build_commit": build_commit,
        "llama_cpp_build": cmake,
        "cpu": cpu_model(&cpuinfo),
        "cpu_flags": flags,
        "environment": env,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "model": model.display().to_string(),
        "results": rows,
    });
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    for name in [format!("bench-{unix}.json"), "latest.json".to_string()] {
        let p = out_dir.join(name);
        std::fs::write(&p, &text).map_err(|e| format!("{}: {e}", p.display()))?;
    }

    let md = markdown(&report, &spp, &stg);
    let p = out_dir.join("latest.md");
    std::fs::write(&p, &md).map_err(|e| format!("{}: {e}", p.display()))?;
    print!("{md}");
    eprintln!("bench: results in {}", out_dir.display());
    Ok(())
}

/// The markdown report of a bench JSON object: a header (peer, rounds,
/// threads, CPU, flags, environment, load) and one row per file.
fn markdown(report: &Value, spp: &str, stg: &str) -> String {
    let fmt =
        |v: Option<f64>, digits: usize| v.map_or("–".to_string(), |x| format!("{x:.digits$}"));
    let mib = |v: &Value| v["peak_rss_kib"].as_f64().map(|k| k / 1024.0);
    let peer = match (&report["llama_bench"], &report["llama_bench_build_commit"]) {
        (Value::Null, _) => "llama.cpp not measured (no llama-bench)".to_string(),
        (_, Value::String(c)) => format!("{PEER}, build {c}"),
        _ => PEER.to_string(),
    };
    // A native build ignores GGML_AVX* (-march=native decides), so those
    // are shown only for a build that is not native.
    let native = report["llama_cpp_build"]["GGML_NATIVE"] == "ON";
    let build: Vec<String> = report["llama_cpp_build"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("GGML_") && !(native && k.starts_with("GGML_AVX")))
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
        .collect();
    let flags: Vec<&str> = report["cpu_flags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let env: Vec<String> = report["environment"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
        .collect();
    let mut md = format!(
        "strata vs {peer}; {} threads, best of {} interleaved rounds × {} runs, tokens/s\n\n\
         - CPU: {} (flags: {})\n\
         - llama.cpp build: {}\n\
         - environment: {}\n\
         - load average before / after: {} / {}\n\n\
         | file type | MiB | strata {spp} | llama.cpp {spp} | ratio | strata {stg} | llama.cpp {stg} | ratio | strata peak RSS MiB | llama.cpp peak RSS MiB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        report["threads"],
        report["rounds"],
        report["repetitions"],
        report["cpu"].as_str().unwrap_or("?"),
        if flags.is_empty() {
            "none of avx2 avx512f avx_vnni avx512_vnni amx_tile".to_string()
        } else {
            flags.join(" ")
        },
        if build.is_empty() {
            "–".to_string()
        } else {
            build.join(" ")
        },
        if env.is_empty() {
            "passed through; no STRATA_/GGML_/OMP_/RAYON_ variables set".to_string()
        } else {
            format!("passed through; {}", env.join(" "))
        },
        report["load_average_before"].as_str().unwrap_or("?"),
        report["load_average_after"].as_str().unwrap_or("?"),
    );
    for r in report["results"].as_array().into_iter().flatten() {
        let theirs = &r["llama_cpp"];
        md += &format!(
            "| {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r["file_type"].as_str().unwrap_or("?"),
            r["bytes"].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0),
            fmt(best(&r["strata"], spp), 1),
            fmt(best(theirs, spp), 1),
            fmt(r["ratio"][spp].as_f64(), 2),
            fmt(best(&r["strata"], stg), 1),
            fmt(best(theirs, stg), 1),
            fmt(r["ratio"][stg].as_f64(), 2),
            fmt(mib(&r["strata"]), 0),
            fmt(mib(theirs), 0),
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tests as `llama-bench -p 128 -n 64 -r 2 -o json` prints them
    /// (fields trimmed), after a stray line.
    const LLAMA_BENCH_JSON: &str = r#"build: 0c1e570 (1)
[
  {
    "build_commit": "0c1e570",
    "cpu_info": "AMD EPYC",
    "n_threads": 2,
    "n_prompt": 128,
    "n_gen": 0,
    "n_depth": 0,
    "avg_ns": 2000000000,
    "avg_ts": 64.5,
    "stddev_ts": 0.5,
    "samples_ns": [ 2015503875, 1968503937 ],
    "samples_ts": [ 64.0, 65.0 ]
  },
  {
    "build_commit": "0c1e570",
    "cpu_info": "AMD EPYC",
    "n_threads": 2,
    "n_prompt": 0,
    "n_gen": 64,
    "n_depth": 0,
    "avg_ts": 31.0,
    "stddev_ts": 1.0,
    "samples_ts": [ 30.0, 32.0 ]
  }
]
"#;

    #[test]
    fn llama_bench_json_becomes_strata_bench_shape() {
        let v = parse_llama_bench(LLAMA_BENCH_JSON).unwrap();
        assert_eq!(v["build_commit"], "0c1e570");
        assert_eq!(v["threads"], 2);
        assert_eq!(best(&v, "pp128"), Some(65.0));
        assert_eq!(best(&v, "tg64"), Some(32.0));
        let tg = &v["tests"][1];
        assert_eq!(tg["avg_tokens_per_second"], 31.0);
        assert_eq!(tg["median_tokens_per_second"], 31.0);
        assert_eq!(tg["runs_tokens_per_second"], json!([30.0, 32.0]));
        assert_eq!(llama_bench_test_name(128, 64, 0), "pp128+tg64");
        assert_eq!(llama_bench_test_name(0, 64, 4096), "tg64@d4096");
    }

    #[test]
    fn llama_bench_json_without_samples_uses_the_average() {
        let v = parse_llama_bench(r#"[{"n_prompt": 0, "n_gen": 16, "avg_ts": 12.5}]"#).unwrap();
        assert_eq!(best(&v, "tg16"), Some(12.5));
        assert!(parse_llama_bench("no json here").is_err());
        assert!(parse_llama_bench(r#"[{"n_gen": 16, "avg_ts": 1.0}]"#).is_err());
        assert!(parse_llama_bench(r#"[{"n_prompt": 1, "n_gen": 0}]"#).is_err());
    }

    #[test]
    fn rounds_keep_the_best_of_each_test() {
        let a = json!({"tests": [{"test": "pp128", "best_tokens_per_second": 60.0},
                                 {"test": "tg64", "best_tokens_per_second": 30.0}],
                       "peak_rss_kib": 100});
        let b = json!({"tests": [{"test": "pp128", "best_tokens_per_second": 70.0}],
                       "peak_rss_kib": 120});
        let m = merge_rounds(&[a, b]);
        assert_eq!(best(&m, "pp128"), Some(70.0));
        assert_eq!(best(&m, "tg64"), Some(30.0));
        assert_eq!(m["tests"][1]["best_per_round"], json!([30.0, null]));
        assert_eq!(m["peak_rss_kib"], 120);
        assert_eq!(m["rounds"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn cpu_flags_are_read_from_cpuinfo() {
        let info = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 avx512f \
                    avx512_vnni\nprocessor\t: 1\nflags\t\t: fpu\n";
        assert_eq!(cpu_flags(info), ["avx2", "avx512f", "avx512_vnni"]);
        assert_eq!(cpu_model(info).as_deref(), Some("AMD EPYC"));
        assert!(cpu_flags("").is_empty());
    }
}
