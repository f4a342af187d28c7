//! The sampler chain: logits in, one token id out.
//!
//! The steps run in this fixed, documented order (llama.cpp's order for the
//! same steps):
//!
//! 1. penalties over the last `penalty_last_n` tokens: repetition
//!    (`logit / r` when positive, `logit · r` when not), then frequency
//!    (`− count · f`) and presence (`− p` if seen);
//! 2. logit bias (`logit + bias`, `-inf` bans a token);
//! 3. top-k: keep the `k` most likely (0 = off);
//! 4. top-p: keep the smallest most-likely set whose probability reaches `p` (1 = off);
//! 5. min-p: keep tokens at least `min_p` times as likely as the best (0 = off);
//! 6. temperature: divide the logits by `t`;
//! 7. draw: greedy (argmax) when `t == 0`, else a draw from the softmax with a
//!    seeded generator.
//!
//! The generator is SplitMix64, written out here rather than taken from a
//! crate, because its output for a seed must never change between versions:
//! same seed, same text, always.

use crate::GenerateError;

/// Settings of the sampler chain. `Default` is llama.cpp's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Temperature; 0 means greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 disables.
    pub top_k: usize,
    /// Nucleus threshold in (0, 1]; 1 disables.
    pub top_p: f32,
    /// Minimum probability relative to the best token, in [0, 1]; 0 disables.
    pub min_p: f32,
    /// Repetition penalty (≥ 0; 1 disables).
    pub repeat_penalty: f32,
    /// Frequency penalty (0 disables).
    pub frequency_penalty: f32,
    /// Presence penalty (0 disables).
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    /// Additive biases per token id.
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the random draw.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            logit_bias: Vec::new(),
            seed: 0x5eed,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Self::default()
        }
    }

    /// Checks every setting, naming the first bad one.
    pub fn validate(&self) -> Result<(), GenerateError> {
        let bad = |name: &'static str, value: f32, expected: &'static str| {
            Err(GenerateError::InvalidArgument {
                name,
                value: value.to_string(),
                expected,
            })
        };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", self.temperature, "a finite number ≥ 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "a number in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "a number in [0, 1]");
        }
        if !(self.repeat_penalty >= 0.0 && self.repeat_penalty.is_finite()) {
            return bad("repeat_penalty", self.repeat_penalty, "a finite number ≥ 0");
        }
        if !self.frequency_penalty.is_finite() {
            return bad(
                "frequency_penalty",
                self.frequency_penalty,
                "a finite number",
            );
        }
        if !self.presence_penalty.is_finite() {
            return bad("presence_penalty", self.presence_penalty, "a finite number");
        }
        for &(_, b) in &self.logit_bias {
            if b.is_nan() || b == f32::INFINITY {
                return bad("logit_bias", b, "a number or -inf");
            }
        }
        Ok(())
    }
}

/// SplitMix64: a tiny generator whose output for a seed is fixed forever.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A sampler: the chain of [`SamplerConfig`] with its generator and buffers.
#[derive(Clone, Debug)]
pub struct Sampler {
    config: SamplerConfig,
    rng: SplitMix64,
    candidates: Vec<(u32, f32)>,
    counts: Vec<(u32, u32)>,
}

impl Sampler {
    /// A sampler with `config`, which must be valid.
    pub fn new(config: SamplerConfig) -> Result<Self, GenerateError> {
        config.validate()?;
        let rng = SplitMix64(config.seed);
        Ok(Sampler {
            config,
            rng,
            candidates: Vec::new(),
            counts: Vec::new(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Picks the next token from `logits` (one per vocabulary entry), given the
    /// tokens so far (`history`, oldest first) for the penalties.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        self.sample_inner(logits, history, None::<fn(u32) -> bool>)
            .expect("with no mask every token is a candidate")
    }

    /// [`sample`](Self::sample) among the tokens `allowed` accepts (a
    /// grammar's mask, see [`constraint`](crate::constraint)): the others
    /// are removed after the logit bias, before top-k, so the rest of the
    /// chain sees only allowed tokens. `None` when no token is allowed.
    pub fn sample_allowed(
        &mut self,
        logits: &[f32],
        history: &[u32],
        allowed: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        self.sample_inner(logits, history, Some(allowed))
    }

    fn sample_inner(
        &mut self,
        logits: &[f32],
        history: &[u32],
        allowed: Option<impl Fn(u32) -> bool>,
    ) -> Option<u32> {
        let c = &self.config;
        // Most likely first (ties by id, so the order is deterministic).
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let recent = &history[history.len().saturating_sub(c.penalty_last_n)..];
        let penalise = c.penalty_last_n > 0
            && (c.repeat_penalty != 1.0 || c.frequency_penalty != 0.0 || c.presence_penalty != 0.0)
            && !recent.is_empty();
        // Logits that nothing changes before a small top-k go straight to
        // it: the same candidates, without a copy of the vocabulary.
        let direct = !penalise
            && c.logit_bias.is_empty()
            && allowed.is_none()
            && c.temperature != 0.0
            && c.top_k > 0
            && c.top_k <= SMALL_TOP_K
            && c.top_k < logits.len();
        if direct {
            keep_best_logits(logits, c.top_k, order, &mut self.candidates);
            return Some(self.draw_from_top_k(order));
        }
        self.candidates.clear();
        self.candidates
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));

        // 1. Penalties over the last N tokens.
        if penalise {
            self.counts.clear();
            for &t in recent {
                match self.counts.iter_mut().find(|(id, _)| *id == t) {
                    Some((_, n)) => *n += 1,
                    None => self.counts.push((t, 1)),
                }
            }
            for &(t, n) in &self.counts {
                if let Some((_, l)) = self.candidates.get_mut(t as usize) {
                    *l = if *l <= 0.0 {
                        *l * c.repeat_penalty
                    } else {
                        *l / c.repeat_penalty
                    };
                    *l -= n as f32 * c.frequency_penalty + c.presence_penalty;
                }
            }
        }
        // 2. Logit bias.
        for &(t, b) in &c.logit_bias {
            if let Some((_, l)) = self.candidates.get_mut(t as usize) {
                *l += b;
            }
        }
        // 2b. The mask: only allowed tokens stay candidates.
        if let Some(allowed) = &allowed {
            self.candidates.retain(|&(t, _)| allowed(t));
            if self.candidates.is_empty() {
                return None;
            }
        }
        // Greedy: the argmax of the penalised, biased logits.
        if c.temperature == 0.0 {
            return Some(argmax(&self.candidates));
        }
        // 3. top-k: select the k best in linear time, so that only they are
        // sorted (a whole vocabulary costs a millisecond per token to sort).
        if c.top_k > 0 && c.top_k < self.candidates.len() {
            if c.top_k <= SMALL_TOP_K {
                keep_best(&mut self.candidates, c.top_k, order);
            } else {
                self.candidates.select_nth_unstable_by(c.top_k - 1, order);
                self.candidates.truncate(c.top_k);
            }
        }
        Some(self.draw_from_top_k(order))
    }

    /// Steps 4 to 7 of the chain (top-p, min-p, temperature, the draw) on
    /// the candidates left by top-k, which are first sorted by `order`.
    fn draw_from_top_k(
        &mut self,
        order: impl Fn(&(u32, f32), &(u32, f32)) -> std::cmp::Ordering,
    ) -> u32 {
        let c = &self.config;
        self.candidates.sort_unstable_by(order);
        // 4. top-p on the softmax of what is left.
        if c.top_p < 1.0 {
            let probs = softmax(&self.candidates);
            let mut cum = 0.0f64;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                cum += *p;
                if cum >= c.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep.max(1));
        }
        // 5. min-p relative to the best.
        if c.min_p > 0.0 {
            let threshold = self.candidates[0].1 + c.min_p.ln();
            let keep = self
                .candidates
                .iter()
                .take_while(|(_, l)| *l >= threshold)
                .count();
            self.candidates.truncate(keep.max(1));
        }
        // 6. Temperature.
        for (_, l) in &mut self.candidates {
            *l /= c.temperature;
        }
        // 7. Seeded draw.
        let probs = softmax(&self.candidates);
        let r = self.rng.next_f64();
        let mut cum = 0.0;
        for (i, p) in probs.iter().enumerate() {
            cum += p;
            if r < cum {
                return self.candidates[i].0;
            }
        }
        self.candidates[probs.len() - 1].0
    }
}

/// Up to this `top_k`, [`keep_best`] selects the best candidates (else a
/// quickselect over the whole vocabulary does).
const SMALL_TOP_K: usize = 128;

/// Keeps the `k` first candidates under `order` (a total order, so the same
/// set as any selection), best first: a sorted list of the best seen, which
/// almost every candidate of a large vocabulary leaves with one comparison
/// against its last — a tenth of a quickselect's work for the default
/// top-k of 40 over 49,152 tokens.
fn keep_best(
    c: &mut Vec<(u32, f32)>,
    k: usize,
    order: impl Fn(&(u32, f32), &(u32, f32)) -> std::cmp::Ordering,
) {
    use std::cmp::Ordering::Less;
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    // The last kept logit: a smaller one cannot enter (a float compare;
    // equal values and NaN go through `order`).
    let mut worst = f32::NEG_INFINITY;
    for &x in c.iter() {
        if best.len() == k && (x.1 < worst || order(&x, &best[k - 1]) != Less) {
            continue;
        }
        let at = best.partition_point(|b| order(b, &x) == Less);
        best.insert(at, x);
        best.truncate(k);
        if best.len() == k {
            worst = best[k - 1].1;
        }
    }
    c.clear();
    c.extend_from_slice(&best);
}

/// [`keep_best`] of the candidates `(i, logits[i])`, into `out` (cleared
/// first), without making them all: a run of 16 logits all below the last
/// kept one (a vector compare; NaN is not below it) is passed over at once,
/// as each of them would be one at a time — the same candidates in the
/// same order.
fn keep_best_logits(
    logits: &[f32],
    k: usize,
    order: impl Fn(&(u32, f32), &(u32, f32)) -> std::cmp::Ordering,
    out: &mut Vec<(u32, f32)>,
) {
    use std::cmp::Ordering::Less;
    const RUN: usize = 16;
    out.clear();
    out.reserve(k + 1);
    let mut worst = f32::NEG_INFINITY;
    for (r, run) in logits.chunks(RUN).enumerate() {
        if out.len() == k && run.iter().fold(true, |below, &l| below & (l < worst)) {
            continue;
        }
        for (j, &l) in run.iter().enumerate() {
            let x = ((r * RUN + j) as u32, l);
            if out.len() == k && (x.1 < worst || order(&x, &out[k - 1]) != Less) {
                continue;
            }
            let at = out.partition_point(|b| order(b, &x) == Less);
            out.insert(at, x);
            out.truncate(k);
            if out.len() == k {
                worst = out[k - 1].1;
            }
        }
    }
}

fn argmax(c: &[(u32, f32)]) -> u32 {
    let mut best = 0;
    for (i, &(_, l)) in c.iter().enumerate() {
        if l > c[best].1 {
            best = i;
        }
    }
    c[best].0
}

/// Softmax of the candidates' logits, in f64 (candidates sorted or not).
fn softmax(c: &[(u32, f32)]) -> Vec<f64> {
    let max = c.iter().map(|&(_, l)| l).fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut p: Vec<f64> = c.iter().map(|&(_, l)| ((l as f64) - max).exp()).collect();
    let sum: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= sum);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, -1.0, 2.5]
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplerConfig::greedy()).unwrap();
        assert_eq!(s.sample(&logits(), &[]), 1);
    }

    #[test]
    fn repetition_penalty_changes_the_choice() {
        let cfg = SamplerConfig {
            repeat_penalty: 2.0,
            ..SamplerConfig::greedy()
        };
        let mut s = Sampler::new(cfg).unwrap();
        // 3.0 / 2 = 1.5 < 2.5: token 4 wins.
        assert_eq!(s.sample(&logits(), &[1]), 4);
    }

    #[test]
    fn bias_can_ban() {
        let cfg = SamplerConfig {
            logit_bias: vec![(1, f32::NEG_INFINITY)],
            ..SamplerConfig::greedy()
        };
        let mut s = Sampler::new(cfg).unwrap();
        assert_eq!(s.sample(&logits(), &[]), 4);
    }

    /// The small-k selection keeps exactly the candidates (and order) that
    /// a quickselect and sort keep, ties by id included.
    #[test]
    fn small_top_k_selects_what_quickselect_does() {
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let mut rng = SplitMix64(7);
        for n in [5usize, 100, 5000] {
            // Coarse values: many ties.
            let c: Vec<(u32, f32)> = (0..n as u32)
                .map(|i| (i, (rng.next_f64() * 50.0).floor() as f32))
                .collect();
            for k in [1, 2, 40, 99] {
                let k = k.min(n - 1);
                let mut want = c.clone();
                want.select_nth_unstable_by(k - 1, order);
                want.truncate(k);
                want.sort_unstable_by(order);
                let mut got = c.clone();
                keep_best(&mut got, k, order);
                assert_eq!(got, want, "n {n} k {k}");
                // Straight from the logits (runs of 16 passed over at once),
                // with NaN, infinities and ties at run edges among them.
                let mut l: Vec<f32> = c.iter().map(|x| x.1).collect();
                for (i, v) in [(3, f32::NAN), (17, f32::INFINITY), (31, f32::NEG_INFINITY)] {
                    if i < n {
                        l[i] = v;
                    }
                }
                let mut want: Vec<(u32, f32)> =
                    l.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
                want.select_nth_unstable_by(k - 1, order);
                want.truncate(k);
                want.sort_unstable_by(order);
                let mut got = Vec::new();
                keep_best_logits(&l, k, order, &mut got);
                let bits =
                    |v: &[(u32, f32)]| v.iter().map(|x| (x.0, x.1.to_bits())).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "logits: n {n} k {k}");
            }
        }
    }

    #[test]
    fn top_k_one_is_greedy() {
        let cfg = SamplerConfig {
            top_k: 1,
            temperature: 1.5,
            ..SamplerConfig::default()
        };
        let mut s = Sampler::new(cfg).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&logits(), &[]), 1);
        }
    }

    #[test]
    fn same_seed_same_draws() {
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplerConfig::default()
        };
        let draw = |cfg: SamplerConfig| {
            let mut s = Sampler::new(cfg).unwrap();
            (0..50)
                .map(|_| s.sample(&logits(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(cfg.clone()), draw(cfg.clone()));
        let other = draw(SamplerConfig {
            seed: 1,
            ..cfg.clone()
        });
        assert_ne!(draw(cfg), other);
    }

    #[test]
    fn draws_follow_the_distribution() {
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplerConfig::default()
        };
        let mut s = Sampler::new(cfg).unwrap();
        let l = [0.0f32, (3.0f32).ln()]; // p = 0.25, 0.75
        let n = 20000;
        let ones = (0..n).filter(|_| s.sample(&l, &[]) == 1).count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
    }

    #[test]
    fn min_p_and_top_p_trim() {
        // p ∝ e^l: token 0 dominates; min_p 0.5 leaves only it.
        let l = [5.0f32, 0.0, 0.0];
        let cfg = SamplerConfig {
            min_p: 0.5,
            top_k: 0,
            top_p: 1.0,
            temperature: 1.0,
            ..SamplerConfig::default()
        };
        let mut s = Sampler::new(cfg).unwrap();
        assert!((0..100).all(|_| s.sample(&l, &[]) == 0));
        let cfg = SamplerConfig {
            top_p: 0.5,
            top_k: 0,
            min_p: 0.0,
            temperature: 1.0,
            ..SamplerConfig::default()
        };
        let mut s = Sampler::new(cfg).unwrap();
        assert!((0..100).all(|_| s.sample(&l, &[]) == 0));
    }

    #[test]
    fn bad_settings_are_errors() {
        for cfg in [
            SamplerConfig {
                temperature: -0.1,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                top_p: 0.0,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                top_p: 1.5,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                min_p: 2.0,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                repeat_penalty: f32::NAN,
                ..SamplerConfig::default()
            },
        ] {
            assert!(Sampler::new(cfg).is_err());
        }
    }
}
