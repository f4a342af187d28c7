//! `strata perplexity`: a model's perplexity on a text, and how far a
//! quantized model's predictions are from a base model's (KL divergence),
//! scored exactly as llama.cpp's `llama-perplexity` scores them.
//!
//! The text is tokenized with BOS (if the vocabulary adds one) and cut into
//! non-overlapping windows of `--ctx` tokens; each window is evaluated from an
//! empty cache with its first token replaced by BOS, and only the second half
//! of it is scored (positions `ctx/2 .. ctx-1` predicting the next token), so
//! every scored token has at least `ctx/2` tokens of context. This is
//! `perplexity()` in llama.cpp's `tools/perplexity/perplexity.cpp`.
//!
//! `--save-logits BASE` writes the scored positions' log-probabilities in
//! llama.cpp's own `--kl-divergence-base` format, so files are interchangeable
//! with `llama-perplexity`: the bytes `_logits_`, `n_ctx` (u32), `n_vocab`
//! (i32), `n_chunk` (i32), the `n_chunk·n_ctx` evaluated tokens (i32), then
//! per window `ctx-1-ctx/2` rows of `2·⌈n_vocab/2⌉+4` u16: an f32 scale and an
//! f32 minimum log-probability (in the first four u16), then each token's
//! log-probability as `min + scale·q` with `q` a u16 (log-probabilities more
//! than 16 below the top one are clamped to the minimum). About 2 bytes per
//! vocabulary entry and position.
//!
//! `--kl-base BASE` evaluates the same tokens (read from BASE; `--file` is not
//! needed) and reports, as `llama-perplexity --kl-divergence` does: the mean
//! KL divergence from the base distribution, `Σ p_base·(log p_base − log p)`
//! over tokens whose base log-probability is above −16; the fraction of
//! positions where both models' most likely token is the same ("same top p");
//! the RMS of `Δp = p(correct token) − p_base(correct token)`; and both
//! perplexities.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use gguf_format::GgufFile;
use llama_model::{LogitsMode, SessionOptions};
use rayon::prelude::*;
use serde_json::json;
use tokenizer::Tokenizer;

use crate::common::UsageError;
use crate::CmdResult;

/// Arguments of `strata perplexity`.
#[derive(clap::Args)]
pub struct Args {
    /// The GGUF model: a file, or a registered name fetched on first use
    /// (smollm2-135m, the default; gemma3-270m); a file that exists wins over a name.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The text to score (UTF-8). Not needed with --kl-base, whose file holds the tokens.
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
    /// Tokens per window (half of each is scored).
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Tokens per step (llama-perplexity's `-b`; default 512).
    /// `--batch 1` runs every token as a decoding step, whose kernels differ
    /// from a batch's (llama.cpp's single-token orders; the GPU's fast mode).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    batch: Option<u64>,
    /// Score at most this many windows (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    chunks: Option<u64>,
    /// Save the scored log-probabilities here (llama.cpp's --kl-divergence-base format).
    #[arg(long, value_name = "BASE", conflicts_with = "kl_base")]
    save_logits: Option<PathBuf>,
    /// Compare with a base model's saved log-probabilities: KL divergence, same top token, RMS Δp.
    #[arg(long, value_name = "BASE")]
    kl_base: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Where to run the model: the CPU, or a GPU through wgpu (the same graph).
    #[arg(long, value_enum, default_value_t = crate::common::BackendKind::Cpu)]
    backend: crate::common::BackendKind,
    /// With `--backend wgpu`: compute the CPU backend's bits (llama.cpp's)
    /// instead of the default fast mode's float activations.
    #[arg(long)]
    exact: bool,
    /// Worker threads (default: one per core).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Read the model into memory instead of mapping it.
    #[arg(long)]
    no_mmap: bool,
}

/// The magic that starts a saved log-probability file.
const MAGIC: &[u8; 8] = b"_logits_";
/// Log-probabilities more than this below the top one are not told apart.
const LOG_PROB_RANGE: f32 = 16.0;

/// u16 entries per saved row: the packed scale and minimum, then the
/// vocabulary rounded up to an even count.
fn row_len(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// ggml's `nearest_int`: round to nearest (ties to even) through the f32
/// mantissa, as llama.cpp quantizes the saved log-probabilities.
fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// One row's maximum logit and `ln Σ exp(l − max)` (summed in f64, as llama.cpp).
fn max_and_log_sum_exp(logits: &[f32]) -> (f32, f32, usize) {
    let (mut max, mut imax) = (logits[0], 0);
    for (i, &l) in logits.iter().enumerate().skip(1) {
        if l > max {
            max = l;
            imax = i;
        }
    }
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    (max, sum.ln() as f32, imax)
}

/// llama.cpp's `log_softmax` for the plain perplexity: the negative
/// log-likelihood of `tok`.
fn nll_of(logits: &[f32], tok: usize) -> f64 {
    let max = logits.iter().copied().fold(logits[0], f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    -(f64::from(logits[tok] - max) - sum.ln())
}

/// llama.cpp's `log_softmax` that saves a row: fills `out` (see the module
/// docs) and returns the negative log-likelihood of `tok`.
fn save_row(logits: &[f32], tok: usize, out: &mut [u16]) -> f64 {
    let mut max = logits[0];
    let mut min = logits[0];
    for &l in &logits[1..] {
        max = max.max(l);
        min = min.min(l);
    }
    let min = min.max(max - LOG_PROB_RANGE);
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    let log_sum_exp = sum.ln() as f32;
    let min_log_prob = min - max - log_sum_exp;
    let scale = (max - min) / 65535.0;
    let (head, q) = out.split_at_mut(4);
    for (pair, v) in head.chunks_exact_mut(2).zip([scale, min_log_prob]) {
        let b = v.to_le_bytes();
        pair[0] = u16::from_le_bytes([b[0], b[1]]);
        pair[1] = u16::from_le_bytes([b[2], b[3]]);
    }
    q.fill(0);
    if scale != 0.0 {
        let inv = 1.0 / scale;
        for (q, &l) in q.iter_mut().zip(logits) {
            // In range by construction: 0 ..= 65535.
            *q = if l > min {
                nearest_int(inv * (l - min)) as u16
            } else {
                0
            };
        }
    }
    f64::from(max + log_sum_exp - logits[tok])
}

/// What one scored position contributes to the KL statistics (llama.cpp's
/// `kl_divergence_result` terms).
#[derive(Clone, Copy, Default)]
struct KlTerms {
    nll: f64,
    nll_base: f64,
    kld: f64,
    p_diff: f64,
    same_top: bool,
}

/// llama.cpp's `log_softmax` against a saved base row.
fn kl_row(logits: &[f32], base: &[u16], tok: usize) -> KlTerms {
    let (max, log_sum_exp, imax) = max_and_log_sum_exp(logits);
    let f = |i: usize| {
        f32::from_le_bytes({
            let (a, b) = (base[i].to_le_bytes(), base[i + 1].to_le_bytes());
            [a[0], a[1], b[0], b[1]]
        })
    };
    let (scale, min_log_prob) = (f(0), f(2));
    let q = &base[4..];
    let nll = max + log_sum_exp - logits[tok];
    let nll_base = -(scale * f32::from(q[tok]) + min_log_prob);
    let log_norm = max + log_sum_exp;
    let mut sum = 0f64;
    let (mut imax_base, mut top_base) = (0usize, 0f32);
    for (i, &l) in logits.iter().enumerate() {
        let lp_base = scale * f32::from(q[i]) + min_log_prob;
        if i == 0 || lp_base > top_base {
            top_base = lp_base;
            imax_base = i;
        }
        if lp_base > -LOG_PROB_RANGE {
            sum += f64::from(lp_base.exp() * (lp_base - l + log_norm));
        }
    }
    let p_diff = (-nll).exp() - (-nll_base).exp();
    KlTerms {
        nll: f64::from(nll),
        nll_base: f64::from(nll_base),
        kld: sum,
        p_diff: f64::from(p_diff),
        same_top: imax == imax_base,
    }
}

/// Mean and its standard error (llama.cpp's `mean_and_uncertainty`).
fn mean_and_uncertainty(sum: f64, sum2: f64, count: usize) -> (f64, f64) {
    if count < 1 {
        return (0.0, 0.0);
    }
    let n = count as f64;
    let f = sum / n;
    let var = sum2 / n - f * f;
    let df = if var > 0.0 && count > 10 {
        (var / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (f, df)
}

/// A saved base file: its header and a reader positioned at the first row.
struct BaseFile {
    n_ctx: usize,
    n_vocab: usize,
    n_chunk: usize,
    tokens: Vec<u32>,
    reader: BufReader<File>,
}

fn read_u32(r: &mut impl Read, path: &Path, what: &str) -> Result<u32, String> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            format!(
                "{}: the file ends inside its header (at {what})",
                path.display()
            )
        }
        _ => format!("{}: reading {what}: {e}", path.display()),
    })?;
    Ok(u32::from_le_bytes(b))
}

impl BaseFile {
    fn open(path: &Path) -> Result<BaseFile, String> {
        let file = gguf_format::open_regular(path).map_err(|e| e.to_string())?;
        let file_len = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        let mut reader = BufReader::new(file);
        let mut magic = [0u8; 8];
        reader
            .read_exact(&mut magic)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if &magic != MAGIC {
            return Err(format!(
                "{}: not a saved log-probability file (no `_logits_` magic)",
                path.display()
            ));
        }
        let n_ctx = read_u32(&mut reader, path, "n_ctx")? as usize;
        let n_vocab = read_u32(&mut reader, path, "n_vocab")? as usize;
        let n_chunk = read_u32(&mut reader, path, "n_chunk")? as usize;
        if n_ctx < 4 || n_vocab == 0 || n_vocab > 1 << 24 || n_chunk == 0 || n_chunk > 1 << 20 {
            return Err(format!(
                "{}: implausible header (n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk})",
                path.display()
            ));
        }
        // The header sizes everything that follows: check it against the
        // file before allocating (a corrupt header could ask for petabytes).
        let rows = (n_ctx - 1 - n_ctx / 2) as u64;
        let expected = (n_ctx as u64 * n_chunk as u64)
            .checked_mul(4)
            .and_then(|t| {
                rows.checked_mul(n_chunk as u64)?
                    .checked_mul(row_len(n_vocab) as u64 * 2)?
                    .checked_add(t)
            })
            .and_then(|b| b.checked_add(20));
        if expected != Some(file_len) {
            return Err(format!(
                "{}: the header (n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk}) describes {} bytes, the file has {file_len}",
                path.display(),
                expected.map_or("more than 2^64".to_string(), |b| b.to_string())
            ));
        }
        let mut raw = vec![0u8; n_ctx * n_chunk * 4];
        reader
            .read_exact(&mut raw)
            .map_err(|e| format!("{}: reading the tokens: {e}", path.display()))?;
        let tokens = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(BaseFile {
            n_ctx,
            n_vocab,
            n_chunk,
            tokens,
            reader,
        })
    }

    /// Reads one window's rows.
    fn read_chunk(&mut self, rows: usize, path: &Path, chunk: usize) -> Result<Vec<u16>, String> {
        let mut raw = vec![0u8; rows * row_len(self.n_vocab) * 2];
        self.reader
            .read_exact(&mut raw)
            .map_err(|e| format!("{}: reading window {chunk}: {e}", path.display()))?;
        Ok(raw
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect())
    }
}

/// Runs `strata perplexity`.
pub fn run(args: Args) -> CmdResult {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()?;
    }
    let path = crate::common::resolve_model(args.model.as_ref())?;
    let start = Instant::now();
    // Outputs never replace an input (compared by device and inode).
    if let Some(out) = &args.save_logits {
        for (input, what) in [(Some(&path), "model"), (args.file.as_ref(), "text")] {
            if let Some(input) = input.filter(|i| gguf_format::same_file(i, out)) {
                return Err(UsageError(format!(
                    "--save-logits {} is the {what} {} (same device and inode): choose another output",
                    out.display(),
                    input.display()
                ))
                .into());
            }
        }
    }
    let tokenizer = Tokenizer::from_gguf(GgufFile::open_with(&path, !args.no_mmap)?.header())?;
    let model =
        crate::common::GraphModel::load_with(&path, args.backend, args.exact, !args.no_mmap)?;
    let n_vocab = model.config().n_vocab;
    eprintln!(
        "loaded {} ({} vocabulary) in {:.2} s",
        path.display(),
        n_vocab,
        start.elapsed().as_secs_f64()
    );

    let mut base = match &args.kl_base {
        Some(p) => {
            let b = BaseFile::open(p)?;
            if b.n_vocab != n_vocab {
                return Err(format!(
                    "{}: saved with a vocabulary of {}, the model has {n_vocab}",
                    p.display(),
                    b.n_vocab
                )
                .into());
            }
            Some(b)
        }
        None => None,
    };
    let (n_ctx, tokens, source) = match &base {
        Some(b) => (
            b.n_ctx,
            b.tokens.clone(),
            args.kl_base.clone().unwrap_or_default(),
        ),
        None => {
            let file = args
                .file
                .as_ref()
                .ok_or("give the text to score with --file (or a base file with --kl-base)")?;
            let text =
                std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
            let tokens = tokenizer.encode(&text, true, false)?;
            (args.ctx, tokens, file.clone())
        }
    };
    if n_ctx < 4 || n_ctx > i32::MAX as usize {
        return Err(UsageError(format!(
            "--ctx {n_ctx}: a window needs at least 4 tokens and at most {}",
            i32::MAX
        ))
        .into());
    }
    // A text needs two windows (llama.cpp's minimum); a saved base holds
    // whole windows, however many it was saved with.
    if base.is_none() && tokens.len() < 2 * n_ctx {
        return Err(format!(
            "{}: {} tokens; at least {} are needed for windows of {n_ctx}",
            source.display(),
            tokens.len(),
            2 * n_ctx
        )
        .into());
    }
    let n_chunk_max = match &base {
        Some(b) => b.n_chunk,
        None => tokens.len() / n_ctx,
    };
    let n_chunk = args
        .chunks
        .map_or(n_chunk_max, |c| (c.min(n_chunk_max as u64)) as usize)
        .max(1);
    // A window's logits and its KV cache are held at once.
    let c = model.config();
    tensor_core::check_memory(
        &format!(
            "a window of {n_ctx} tokens' logits ({} vocabulary entries) with its KV cache",
            c.n_vocab
        ),
        c.logits_bytes(n_ctx)
            .zip(c.kv_cache_bytes(n_ctx, 2))
            .and_then(|(a, b)| a.checked_add(b)),
    )?;
    let first = n_ctx / 2;
    let n_scored = n_ctx - 1 - first;
    let bos = if tokenizer.adds_bos() {
        tokenizer.bos()
    } else {
        None
    };
    eprintln!(
        "{} tokens; scoring {n_chunk} window(s) of {n_ctx} ({} positions each) with {} threads",
        tokens.len(),
        n_scored,
        rayon::current_num_threads()
    );

    // Written beside the target and renamed into place once complete.
    let mut save = match &args.save_logits {
        Some(p) => {
            let mut w = gguf_format::OutputFile::create(p)?;
            w.write_all(MAGIC)?;
            w.write_all(&(n_ctx as u32).to_le_bytes())?;
            w.write_all(&(n_vocab as u32).to_le_bytes())?;
            w.write_all(&(n_chunk as u32).to_le_bytes())?;
            for t in &tokens[..n_chunk * n_ctx] {
                w.write_all(&t.to_le_bytes())?;
            }
            Some(w)
        }
        None => None,
    };

    let mut session = model.session(&SessionOptions {
        n_ctx,
        n_batch: args
            .batch
            .map_or(SessionOptions::default().n_batch, |b| b as usize),
        ..SessionOptions::default()
    })?;
    let nv = row_len(n_vocab);
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut kl = Vec::<KlTerms>::new();
    let t_eval = Instant::now();
    for chunk in 0..n_chunk {
        let window_tokens = &tokens[chunk * n_ctx..(chunk + 1) * n_ctx];
        let mut window = window_tokens.to_vec();
        if let Some(bos) = bos {
            window[0] = bos;
        }
        session.reset();
        let logits = session.forward(&window, LogitsMode::All)?;
        for (i, row) in logits.chunks(n_vocab).enumerate() {
            crate::common::check_finite(row, i).map_err(|m| format!("window {chunk}: {m}"))?;
        }
        let row = |i: usize| &logits[i * n_vocab..(i + 1) * n_vocab];
        let target = |i: usize| window_tokens[i + 1] as usize;
        if let Some(b) = base.as_mut() {
            let base_rows = b.read_chunk(
                n_scored,
                args.kl_base.as_deref().unwrap_or(Path::new("")),
                chunk,
            )?;
            let terms: Vec<KlTerms> = (0..n_scored)
                .into_par_iter()
                .map(|k| {
                    let i = first + k;
                    kl_row(row(i), &base_rows[k * nv..(k + 1) * nv], target(i))
                })
                .collect();
            for t in &terms {
                nll += t.nll;
                nll2 += t.nll * t.nll;
            }
            kl.extend(terms);
        } else if let Some(w) = save.as_mut() {
            let mut rows = vec![0u16; n_scored * nv];
            let nlls: Vec<f64> = rows
                .par_chunks_mut(nv)
                .enumerate()
                .map(|(k, out)| save_row(row(first + k), target(first + k), out))
                .collect();
            for v in nlls {
                nll += v;
                nll2 += v * v;
            }
            let bytes: Vec<u8> = rows.iter().flat_map(|q| q.to_le_bytes()).collect();
            w.write_all(&bytes)?;
        } else {
            let nlls: Vec<f64> = (0..n_scored)
                .into_par_iter()
                .map(|k| nll_of(row(first + k), target(first + k)))
                .collect();
            for v in nlls {
                nll += v;
                nll2 += v * v;
            }
        }
        count += n_scored;
        let elapsed = t_eval.elapsed().as_secs_f64();
        eprintln!(
            "[{}/{n_chunk}] ppl {:.4}  ({:.1} s, ETA {:.0} s)",
            chunk + 1,
            (nll / count as f64).exp(),
            elapsed,
            elapsed / (chunk + 1) as f64 * (n_chunk - chunk - 1) as f64
        );
    }
    if let Some(w) = save {
        w.commit()?;
    }

    let (log_ppl, log_ppl_unc) = mean_and_uncertainty(nll, nll2, count);
    let ppl = log_ppl.exp();
    let mut report = json!({
        "model": path.display().to_string(),
        "text": source.display().to_string(),
        "n_ctx": n_ctx,
        "n_chunks": n_chunk,
        "n_tokens_scored": count,
        "ppl": ppl,
        "ppl_uncertainty": ppl * log_ppl_unc,
        "seconds": t_eval.elapsed().as_secs_f64(),
    });
    let mut table = vec![
        ("windows × ctx".to_string(), format!("{n_chunk} × {n_ctx}")),
        ("tokens scored".to_string(), count.to_string()),
        (
            "PPL".to_string(),
            format!("{ppl:.4} ± {:.5}", ppl * log_ppl_unc),
        ),
    ];
    if !kl.is_empty() {
        let n = kl.len();
        let sum = |f: &dyn Fn(&KlTerms) -> f64| kl.iter().map(f).sum::<f64>();
        let (lb, lb_unc) =
            mean_and_uncertainty(sum(&|t| t.nll_base), sum(&|t| t.nll_base * t.nll_base), n);
        let (kld, kld_unc) = mean_and_uncertainty(sum(&|t| t.kld), sum(&|t| t.kld * t.kld), n);
        let (mse, mse_unc) =
            mean_and_uncertainty(sum(&|t| t.p_diff * t.p_diff), sum(&|t| t.p_diff.powi(4)), n);
        let rms = mse.sqrt();
        let rms_unc = if rms > 0.0 { 0.5 / rms * mse_unc } else { 0.0 };
        let same = kl.iter().filter(|t| t.same_top).count() as f64 / n as f64;
        let same_unc = (same * (1.0 - same) / (n as f64 - 1.0).max(1.0)).sqrt();
        let mut klds: Vec<f64> = kl.iter().map(|t| t.kld).collect();
        klds.sort_by(f64::total_cmp);
        let median = if n.is_multiple_of(2) {
            0.5 * (klds[n / 2] + klds[n / 2 - 1])
        } else {
            klds[n / 2]
        };
        let ppl_base = lb.exp();
        table.extend([
            (
                "PPL(base)".to_string(),
                format!("{ppl_base:.4} ± {:.5}", ppl_base * lb_unc),
            ),
            (
                "ln(PPL/PPL(base))".to_string(),
                format!("{:.6}", log_ppl - lb),
            ),
            ("mean KLD".to_string(), format!("{kld:.6} ± {kld_unc:.6}")),
            ("median KLD".to_string(), format!("{median:.6}")),
            ("max KLD".to_string(), format!("{:.6}", klds[n - 1])),
            (
                "RMS Δp".to_string(),
                format!("{:.3} ± {:.3} %", 100.0 * rms, 100.0 * rms_unc),
            ),
            (
                "same top p".to_string(),
                format!("{:.3} ± {:.3} %", 100.0 * same, 100.0 * same_unc),
            ),
        ]);
        let extra = json!({
            "base": args.kl_base.as_ref().map(|p| p.display().to_string()),
            "ppl_base": ppl_base,
            "ln_ppl_ratio": log_ppl - lb,
            "kld_mean": kld,
            "kld_uncertainty": kld_unc,
            "kld_median": median,
            "kld_max": klds[n - 1],
            "rms_dp": rms,
            "rms_dp_uncertainty": rms_unc,
            "same_top_p": same,
            "same_top_p_uncertainty": same_unc,
        });
        if let (Some(r), Some(e)) = (report.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
    }
    if let Some(p) = &args.save_logits {
        report["saved_logits"] = json!(p.display().to_string());
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        let width = table
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (k, v) in table {
            writeln!(out, "{k:<width$}  {v}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!([0.5, 1.5, 2.4, 65534.6].map(nearest_int), [0, 2, 2, 65535]);
    }

    #[test]
    fn saved_row_reproduces_log_probabilities_and_kl_of_itself_is_zero() {
        let logits: Vec<f32> = (0..101)
            .map(|i| ((i * 37) % 23) as f32 * 0.7 - 5.0)
            .collect();
        let mut row = vec![0u16; row_len(logits.len())];
        let nll = save_row(&logits, 7, &mut row);
        assert!((nll - nll_of(&logits, 7)).abs() < 1e-5);
        let t = kl_row(&logits, &row, 7);
        assert!(t.same_top);
        // Only the u16 rounding of the base separates the two distributions:
        // each base log-probability is off by at most half a step, so the KL
        // divergence (a p_base-weighted mean of log-probability differences)
        // is within that of zero.
        let (max, min) = (
            logits.iter().copied().fold(f32::MIN, f32::max),
            logits.iter().copied().fold(f32::MAX, f32::min),
        );
        let half_step = f64::from((max - min.max(max - LOG_PROB_RANGE)) / 65535.0) / 2.0;
        assert!(
            t.kld.abs() <= half_step * 1.01,
            "{} vs half a step {half_step}",
            t.kld
        );
        assert!((t.nll - t.nll_base).abs() < 1e-3);
        assert!(t.p_diff.abs() < 1e-3);
    }
}
