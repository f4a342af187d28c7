//! Layer traces: what each node of the model graph produced, and where two runs diverge.

use std::fmt;

/// Receives every graph node's values during a traced forward pass.
pub trait Observer {
    /// `values` is `[n_rows, width]` row-major (`width = values.len() / n_rows`)
    /// of the node `name` (llama.cpp's tensor name, `Qcur-0`); `layer` is
    /// `None` outside the transformer blocks.
    fn record(&mut self, name: &str, layer: Option<usize>, n_rows: usize, values: &[f32]);
}

/// Summary statistics of a step's values.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// Root mean square.
    pub rms: f32,
    /// Smallest value.
    pub min: f32,
    /// Largest value.
    pub max: f32,
    /// Mean.
    pub mean: f32,
}

impl Stats {
    /// Statistics of `v` (sums in `f64`).
    pub fn of(v: &[f32]) -> Stats {
        if v.is_empty() {
            return Stats::default();
        }
        let (mut s, mut s2) = (0.0f64, 0.0f64);
        let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
        for &x in v {
            s += x as f64;
            s2 += x as f64 * x as f64;
            min = min.min(x);
            max = max.max(x);
        }
        let n = v.len() as f64;
        Stats {
            rms: (s2 / n).sqrt() as f32,
            min,
            max,
            mean: (s / n) as f32,
        }
    }
}

/// One recorded step.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceEntry {
    /// The block, or `None` for the embedding and the output steps.
    pub layer: Option<usize>,
    /// The node's name (`attn_norm-0`, `result_output`).
    pub name: String,
    /// Rows (tokens) in the batch.
    pub n_rows: usize,
    /// Values per row.
    pub width: usize,
    /// Statistics over all values.
    pub stats: Stats,
    /// The values kept: all of them, or the first [`Trace::with_limit`] ones.
    pub values: Vec<f32>,
}

/// An [`Observer`] that keeps every step: statistics and values.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    limit: Option<usize>,
    /// The steps, in the order they ran.
    pub entries: Vec<TraceEntry>,
}

impl Trace {
    /// A trace that keeps every value (for element-wise [`Trace::diff`]).
    pub fn new() -> Trace {
        Trace::default()
    }

    /// A trace that keeps only the first `n` values of each step (statistics cover all).
    pub fn with_limit(n: usize) -> Trace {
        Trace {
            limit: Some(n),
            entries: Vec::new(),
        }
    }

    /// The entry of node `name` (`kqv_out-0`; the last one recorded, as
    /// llama.cpp gives several nodes one name, the final value last).
    pub fn get(&self, name: &str) -> Option<&TraceEntry> {
        self.entries.iter().rev().find(|e| e.name == name)
    }

    /// Compares two traces entry by entry (in order; entries must describe the
    /// same steps), over the values both kept.
    pub fn diff(&self, other: &Trace) -> Vec<StepDiff> {
        self.entries
            .iter()
            .zip(&other.entries)
            .filter(|(a, b)| a.name == b.name)
            .map(|(a, b)| StepDiff::between(a, b))
            .collect()
    }

    /// The first step whose maximum absolute difference exceeds `tolerance`.
    pub fn first_divergence(&self, other: &Trace, tolerance: f32) -> Option<StepDiff> {
        self.diff(other).into_iter().find(|d| d.max_abs > tolerance)
    }
}

impl Observer for Trace {
    fn record(&mut self, name: &str, layer: Option<usize>, n_rows: usize, values: &[f32]) {
        let keep = self.limit.map_or(values.len(), |n| n.min(values.len()));
        self.entries.push(TraceEntry {
            layer,
            name: name.to_string(),
            n_rows,
            width: values.len() / n_rows.max(1),
            stats: Stats::of(values),
            values: values[..keep].to_vec(),
        });
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>5} {:<22} {:>11} {:>12} {:>12} {:>12} {:>12}  first values",
            "layer", "node", "shape", "rms", "min", "max", "mean"
        )?;
        for e in &self.entries {
            let layer = e.layer.map_or("-".to_string(), |l| l.to_string());
            let first: Vec<String> = e.values.iter().take(4).map(|v| format!("{v:.5}")).collect();
            writeln!(
                f,
                "{layer:>5} {:<22} {:>11} {:>12.6} {:>12.6} {:>12.6} {:>12.6}  [{}]",
                e.name,
                format!("{}x{}", e.n_rows, e.width),
                e.stats.rms,
                e.stats.min,
                e.stats.max,
                e.stats.mean,
                first.join(", ")
            )?;
        }
        Ok(())
    }
}

/// How one node differs between two traces.
#[derive(Clone, Debug, PartialEq)]
pub struct StepDiff {
    /// The block.
    pub layer: Option<usize>,
    /// The node's name.
    pub name: String,
    /// Largest `|a - b|`.
    pub max_abs: f32,
    /// Largest `|a - b| / max(|a|, |b|)` (0 where both are 0).
    pub max_rel: f32,
    /// `(row, column)` of the element with the largest absolute difference.
    pub worst: (usize, usize),
    /// The two values there.
    pub values: (f32, f32),
    /// Elements compared.
    pub compared: usize,
}

impl StepDiff {
    fn between(a: &TraceEntry, b: &TraceEntry) -> StepDiff {
        let mut d = StepDiff {
            layer: a.layer,
            name: a.name.clone(),
            max_abs: 0.0,
            max_rel: 0.0,
            worst: (0, 0),
            values: (0.0, 0.0),
            compared: a.values.len().min(b.values.len()),
        };
        let width = a.width.max(1);
        for (i, (&x, &y)) in a.values.iter().zip(&b.values).enumerate() {
            let abs = (x - y).abs();
            let scale = x.abs().max(y.abs());
            if scale > 0.0 {
                d.max_rel = d.max_rel.max(abs / scale);
            }
            if abs > d.max_abs || (abs.is_nan() && !d.max_abs.is_nan()) {
                d.max_abs = abs;
                d.worst = (i / width, i % width);
                d.values = (x, y);
            }
        }
        d
    }
}

impl fmt::Display for StepDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layer = self.layer.map_or("-".to_string(), |l| l.to_string());
        write!(
            f,
            "{layer:>5} {:<22} max_abs {:.3e} max_rel {:.3e} at row {} col {} ({} vs {})",
            self.name,
            self.max_abs,
            self.max_rel,
            self.worst.0,
            self.worst.1,
            self.values.0,
            self.values.1
        )
    }
}
