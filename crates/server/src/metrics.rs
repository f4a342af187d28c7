//! The server's counters, rendered as Prometheus text at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters and gauges, updated by the HTTP side and the scheduler.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Completion requests received (valid or not).
    pub requests: AtomicU64,
    /// Requests that ended normally (stop or length).
    pub requests_finished: AtomicU64,
    /// Requests refused because the queue was full or the server shutting down.
    pub requests_rejected: AtomicU64,
    /// Requests ended early: the client went away, or the server shut down.
    pub requests_cancelled: AtomicU64,
    /// Requests answered with a 4xx error.
    pub requests_invalid: AtomicU64,
    /// Prompt tokens run through the model.
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens reused from a slot's cache instead.
    pub prompt_tokens_reused: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Requests waiting for a slot now.
    pub queue_depth: AtomicU64,
    /// Slots with a request now.
    pub slots_busy: AtomicU64,
    /// Slots in all.
    pub slots_total: AtomicU64,
    /// Forward passes run.
    pub steps: AtomicU64,
    /// Tokens over all forward passes.
    pub step_tokens: AtomicU64,
    /// Sequences in the last forward pass.
    pub step_sequences_last: AtomicU64,
    /// The most sequences one forward pass held.
    pub step_sequences_max: AtomicU64,
    /// Whether the model is loaded (0 or 1).
    pub model_loaded: AtomicU64,
}

impl Metrics {
    /// Records a forward pass of `tokens` tokens over `sequences` sequences.
    pub(crate) fn record_step(&self, tokens: usize, sequences: usize) {
        self.steps.fetch_add(1, Relaxed);
        self.step_tokens.fetch_add(tokens as u64, Relaxed);
        self.step_sequences_last.store(sequences as u64, Relaxed);
        self.step_sequences_max.fetch_max(sequences as u64, Relaxed);
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let rows: [(&str, &str, &str, &AtomicU64); 16] = [
            (
                "strata_requests_total",
                "counter",
                "Completion requests received.",
                &self.requests,
            ),
            (
                "strata_requests_finished_total",
                "counter",
                "Requests that ended normally.",
                &self.requests_finished,
            ),
            (
                "strata_requests_rejected_total",
                "counter",
                "Requests refused: queue full or shutting down.",
                &self.requests_rejected,
            ),
            (
                "strata_requests_cancelled_total",
                "counter",
                "Requests ended early: client gone or shutdown.",
                &self.requests_cancelled,
            ),
            (
                "strata_requests_invalid_total",
                "counter",
                "Requests answered with a 4xx error.",
                &self.requests_invalid,
            ),
            (
                "strata_prompt_tokens_total",
                "counter",
                "Prompt tokens run through the model.",
                &self.prompt_tokens,
            ),
            (
                "strata_prompt_tokens_reused_total",
                "counter",
                "Prompt tokens reused from a slot's cache.",
                &self.prompt_tokens_reused,
            ),
            (
                "strata_generated_tokens_total",
                "counter",
                "Tokens generated.",
                &self.generated_tokens,
            ),
            (
                "strata_queue_depth",
                "gauge",
                "Requests waiting for a slot.",
                &self.queue_depth,
            ),
            (
                "strata_slots_busy",
                "gauge",
                "Slots with a request.",
                &self.slots_busy,
            ),
            (
                "strata_slots_total",
                "gauge",
                "Slots (--parallel).",
                &self.slots_total,
            ),
            (
                "strata_batch_steps_total",
                "counter",
                "Forward passes run.",
                &self.steps,
            ),
            (
                "strata_batch_tokens_total",
                "counter",
                "Tokens over all forward passes.",
                &self.step_tokens,
            ),
            (
                "strata_batch_sequences",
                "gauge",
                "Sequences in the last forward pass.",
                &self.step_sequences_last,
            ),
            (
                "strata_batch_sequences_max",
                "gauge",
                "The most sequences one forward pass held.",
                &self.step_sequences_max,
            ),
            (
                "strata_model_loaded",
                "gauge",
                "1 once the model is loaded.",
                &self.model_loaded,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Relaxed)
            );
        }
        out
    }
}
