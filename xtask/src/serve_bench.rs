//! `cargo xtask serve-bench`: throughput of an OpenAI-compatible server under
//! concurrent streams — `strata serve`, and llama.cpp's `llama-server` on the
//! same model in the same run.
//!
//! ```text
//! cargo xtask serve-bench [--strata target/release/strata] [--llama-server PATH]
//!     [--model M.gguf] [--threads 2] [--parallel 8] [--requests 2] [--max-tokens 64]
//!     [--ctx 1024] [--rounds 3] [--url http://127.0.0.1:8080] [--json]
//! ```
//!
//! Each server is started once with `--parallel` slots (`-np` for
//! llama-server, whose `-c` is the total over slots) and `--threads`
//! threads, warmed up with one request, then measured in `--rounds`
//! interleaved rounds (strata, llama-server, strata, llama-server, …), so a
//! machine whose load changes during the run treats both alike. Each round
//! drives a server twice: one stream (one client, `--requests` requests one
//! after another) and `--parallel` streams (that many clients at once, each
//! `--requests` requests). Every request streams a chat reply of at most
//! `--max-tokens` tokens with its own seed (the same prompts and seeds for
//! every server); the client reads the server-sent events itself. Each
//! request's message starts with a tag unique to its round, stream count and
//! request (`Request 3.8.5: …`), so that no request finds another's whole
//! prompt in a server's prompt cache: only the chat template's system part
//! before the message is shared, as between different users.
//! Reported, for each server and stream count, from its best round (highest
//! aggregate): aggregate tokens/s (completion tokens over wall time),
//! tokens/s per stream (after its first token), and p50/p99 time to first
//! token; then the ratios the issue asks about. Every round's aggregate is
//! printed to stderr. `--url` drives a server that is already running
//! instead.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{take_flag, take_opt};

/// One request's measurements.
#[derive(Clone, Copy, Debug)]
struct Sample {
    ttft: f64,
    total: f64,
    tokens: usize,
}

/// One run's figures.
struct Figures {
    streams: usize,
    requests: usize,
    tokens: usize,
    wall: f64,
    ttft_p50: f64,
    ttft_p99: f64,
    per_stream_tps: f64,
}

impl Figures {
    fn aggregate(&self) -> f64 {
        self.tokens as f64 / self.wall
    }
}

const PROMPTS: &[&str] = &[
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works, step by step.",
    "Describe the sea on a stormy night.",
    "List ten ideas for a weekend in the mountains, with details.",
    "Tell me about the history of bread.",
    "Write a letter to a friend about your garden.",
    "Explain why the sky is blue to a child.",
    "Describe a busy market in the morning.",
];

pub fn run(args: &[String]) -> Result<(), String> {
    let mut args = args.to_vec();
    let strata = take_opt(&mut args, "--strata")?;
    let llama = take_opt(&mut args, "--llama-server")?;
    let url = take_opt(&mut args, "--url")?;
    let model = match take_opt(&mut args, "--model")? {
        Some(m) => m,
        None => model_cache::default_model()
            .map_err(|e| format!("the default model: {e}"))?
            .display()
            .to_string(),
    };
    let num = |args: &mut Vec<String>, name: &str, default: usize| -> Result<usize, String> {
        take_opt(args, name)?
            .map(|v| v.parse().map_err(|_| format!("{name} {v}: not a number")))
            .transpose()
            .map(|v| v.unwrap_or(default))
    };
    let threads = num(&mut args, "--threads", 2)?;
    let parallel = num(&mut args, "--parallel", 8)?;
    let requests = num(&mut args, "--requests", 2)?;
    let max_tokens = num(&mut args, "--max-tokens", 64)?;
    let ctx = num(&mut args, "--ctx", 1024)?;
    let rounds = num(&mut args, "--rounds", 3)?;
    let json_out = take_flag(&mut args, "--json");
    if let Some(a) = args.first() {
        return Err(format!("serve-bench: unknown argument {a}"));
    }
    if parallel == 0 || requests == 0 || max_tokens == 0 || rounds == 0 {
        return Err("--parallel, --requests, --max-tokens and --rounds must be at least 1".into());
    }
    // The servers, started once; `_spawned` kills them at the end.
    let mut servers: Vec<(String, String)> = Vec::new();
    let mut _spawned = Vec::new();
    if let Some(url) = url {
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        servers.push(("server".to_string(), addr));
    }
    let strata = strata.or_else(|| {
        let p = "target/release/strata";
        std::path::Path::new(p).exists().then(|| p.to_string())
    });
    if let Some(bin) = strata {
        let port = 18431;
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--model", &model, "--port", &port.to_string()])
            .args([
                "--parallel",
                &parallel.to_string(),
                "--ctx",
                &ctx.to_string(),
            ])
            .args(["--threads", &threads.to_string()]);
        let server = Spawned::start(cmd, port)?;
        servers.push(("strata serve".to_string(), server.addr.clone()));
        _spawned.push(server);
    }
    if let Some(bin) = llama {
        let port = 18432;
        let mut cmd = Command::new(&bin);
        cmd.args(["-m", &model, "--port", &port.to_string()])
            .args([
                "-np",
                &parallel.to_string(),
                "-c",
                &(ctx * parallel).to_string(),
            ])
            .args([
                "-t",
                &threads.to_string(),
                "-tb",
                &threads.to_string(),
                "--jinja",
            ]);
        let server = Spawned::start(cmd, port)?;
        servers.push(("llama-server".to_string(), server.addr.clone()));
        _spawned.push(server);
    }
    if servers.is_empty() {
        return Err("nothing to measure: build target/release/strata, or pass --strata, --llama-server or --url".into());
    }
    for (_, addr) in &servers {
        // Warm-up: one request, not counted.
        stream_chat(addr, PROMPTS[0], 0, 8)?;
    }
    // best[server][k]: the best round of the k-th stream count.
    let mut best: Vec<Vec<Option<Figures>>> = servers.iter().map(|_| vec![None, None]).collect();
    for round in 1..=rounds {
        for ((name, addr), best) in servers.iter().zip(&mut best) {
            for (k, streams) in [1, parallel].into_iter().enumerate() {
                let f = bench(addr, streams, requests, max_tokens, (round, streams))?;
                eprintln!(
                    "serve-bench: round {round}/{rounds} {name}, {streams} streams: {:.1} tokens/s",
                    f.aggregate()
                );
                if best[k]
                    .as_ref()
                    .is_none_or(|b| f.aggregate() > b.aggregate())
                {
                    best[k] = Some(f);
                }
            }
        }
    }
    let results: Vec<(String, Vec<Figures>)> = servers
        .into_iter()
        .zip(best)
        .map(|((name, _), figs)| (name, figs.into_iter().flatten().collect()))
        .collect();
    print_results(&results, rounds, json_out);
    Ok(())
}

/// A server process, killed when dropped.
struct Spawned {
    child: Child,
    addr: String,
}

impl Spawned {
    fn start(mut cmd: Command, port: u16) -> Result<Spawned, String> {
        eprintln!("serve-bench: starting {cmd:?}");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        let mut s = Spawned {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err(format!("{cmd:?} exited: {status}"));
            }
            if http_get(&s.addr, "/health").is_ok_and(|code| code == 200) {
                return Ok(s);
            }
            if start.elapsed() > Duration::from_secs(120) {
                return Err(format!("{cmd:?} was not healthy after 120 s"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(addr: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))
}

/// One streamed chat request: time to first token, total time, tokens.
fn stream_chat(addr: &str, prompt: &str, seed: u64, max_tokens: usize) -> Result<Sample, String> {
    let body = json!({
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": seed,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string();
    let io = |e: std::io::Error| format!("{addr}: {e}");
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).map_err(io)?;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(io)?;
    let mut reader = BufReader::new(s);
    let mut head = String::new();
    reader.read_line(&mut head).map_err(io)?;
    if !head.contains(" 200") {
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
        return Err(format!("{addr}: {head} {rest}"));
    }
    // Headers, then the body (chunked or not: only `data:` lines matter).
    let (mut ttft, mut chunks, mut usage) = (None, 0usize, None);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(io)? == 0 {
            break;
        }
        let Some(data) = line.trim_end().strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            usage = Some(n as usize);
        }
        let has_text = v["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty());
        if has_text {
            chunks += 1;
            ttft.get_or_insert_with(|| start.elapsed().as_secs_f64());
        }
    }
    let total = start.elapsed().as_secs_f64();
    Ok(Sample {
        ttft: ttft.unwrap_or(total),
        total,
        tokens: usage.unwrap_or(chunks),
    })
}

/// `streams` concurrent clients, each `requests` requests one after
/// another, against the server at `addr`; `(round, streams)` tags the
/// messages.
fn bench(
    addr: &str,
    streams: usize,
    requests: usize,
    max_tokens: usize,
    (round, tag): (usize, usize),
) -> Result<Figures, String> {
    let start = Instant::now();
    let samples: Vec<Result<Vec<Sample>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..streams)
            .map(|k| {
                s.spawn(move || {
                    (0..requests)
                        .map(|r| {
                            let i = k * requests + r;
                            let prompt = format!(
                                "Request {round}.{tag}.{i}: {}",
                                PROMPTS[i % PROMPTS.len()]
                            );
                            stream_chat(addr, &prompt, 1000 + i as u64, max_tokens)
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a client thread panicked".into()))
            })
            .collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let samples: Vec<Sample> = samples
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    let mut ttfts: Vec<f64> = samples.iter().map(|s| s.ttft).collect();
    ttfts.sort_by(f64::total_cmp);
    let pct = |p: f64| ttfts[((ttfts.len() - 1) as f64 * p).round() as usize];
    let per_stream: Vec<f64> = samples
        .iter()
        .filter(|s| s.tokens > 1 && s.total > s.ttft)
        .map(|s| (s.tokens - 1) as f64 / (s.total - s.ttft))
        .collect();
    Ok(Figures {
        streams,
        requests: samples.len(),
        tokens: samples.iter().map(|s| s.tokens).sum(),
        wall,
        ttft_p50: pct(0.5),
        ttft_p99: pct(0.99),
        per_stream_tps: per_stream.iter().sum::<f64>() / per_stream.len().max(1) as f64,
    })
}

/// The table (or JSON), then each server's N-stream aggregate over its
/// 1-stream one and strata's N-stream aggregate over llama-server's.
fn print_results(results: &[(String, Vec<Figures>)], rounds: usize, json_out: bool) {
    if json_out {
        let v: Vec<Value> = results
            .iter()
            .flat_map(|(name, figs)| {
                figs.iter().map(move |f| {
                    json!({"server": name, "streams": f.streams, "requests": f.requests,
                        "completion_tokens": f.tokens, "wall_s": f.wall,
                        "aggregate_tokens_per_s": f.aggregate(),
                        "per_stream_tokens_per_s": f.per_stream_tps,
                        "ttft_p50_ms": f.ttft_p50 * 1e3, "ttft_p99_ms": f.ttft_p99 * 1e3,
                        "best_of_rounds": rounds})
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("JSON values serialize")
        );
        return;
    }
    println!("| server | streams | requests | tokens | wall s | aggregate tok/s | per-stream tok/s | TTFT p50 ms | TTFT p99 ms | vs 1 stream |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, figs) in results {
        let one = figs.first().map_or(1.0, Figures::aggregate);
        for f in figs {
            println!(
                "| {name} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2}× |",
                f.streams,
                f.requests,
                f.tokens,
                f.wall,
                f.aggregate(),
                f.per_stream_tps,
                f.ttft_p50 * 1e3,
                f.ttft_p99 * 1e3,
                f.aggregate() / one
            );
        }
    }
    println!();
    println!("Best of {rounds} interleaved rounds per row.");
    let n_streams = |figs: &[Figures]| {
        figs.last()
            .filter(|f| f.streams > 1)
            .map(Figures::aggregate)
    };
    let strata = results
        .iter()
        .find(|(n, _)| n == "strata serve")
        .and_then(|(_, f)| n_streams(f));
    let llama = results
        .iter()
        .find(|(n, _)| n == "llama-server")
        .and_then(|(_, f)| n_streams(f));
    if let (Some(s), Some(l)) = (strata, llama) {
        println!("strata serve / llama-server, many streams: {:.2}×", s / l);
    }
}
