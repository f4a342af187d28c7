//! [`Timings`]: where the time of a generation went, printed like llama.cpp's
//! `llama_perf_context_print`.

use std::fmt;

/// Counts and durations of one generation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    /// Prompt tokens found in the KV cache already (not recomputed).
    pub reused_tokens: usize,
    /// Prompt tokens run through the model (llama.cpp's "prompt eval").
    pub prompt_tokens: usize,
    /// Milliseconds spent on them.
    pub prompt_ms: f64,
    /// Generated tokens run through the model, one at a time (llama.cpp's "eval runs").
    pub eval_tokens: usize,
    /// Milliseconds spent on them.
    pub eval_ms: f64,
    /// Tokens sampled.
    pub sampled_tokens: usize,
    /// Milliseconds spent sampling.
    pub sample_ms: f64,
}

fn per_second(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

impl Timings {
    /// Prompt processing speed, tokens per second.
    pub fn prompt_tokens_per_second(&self) -> f64 {
        per_second(self.prompt_tokens, self.prompt_ms)
    }

    /// Generation speed, tokens per second.
    pub fn eval_tokens_per_second(&self) -> f64 {
        per_second(self.eval_tokens, self.eval_ms)
    }
}

impl fmt::Display for Timings {
    /// Three lines in llama.cpp's layout (sampling, prompt eval, eval).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = |f: &mut fmt::Formatter<'_>, name: &str, n: usize, ms: f64, unit: &str| {
            let per = if n > 0 { ms / n as f64 } else { 0.0 };
            writeln!(
                f,
                "{name:>16} = {ms:10.2} ms / {n:5} {unit:<6} ({per:8.2} ms per token, {:8.2} tokens per second)",
                per_second(n, ms)
            )
        };
        line(
            f,
            "sampling time",
            self.sampled_tokens,
            self.sample_ms,
            "runs",
        )?;
        line(
            f,
            "prompt eval time",
            self.prompt_tokens,
            self.prompt_ms,
            "tokens",
        )?;
        line(f, "eval time", self.eval_tokens, self.eval_ms, "runs")?;
        write!(
            f,
            "{:>16} = {:5} tokens",
            "reused from cache", self.reused_tokens
        )
    }
}
