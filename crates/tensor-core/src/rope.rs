//! Rotary position embedding (RoPE), as ggml computes it.

use crate::fma::with_fma;

/// Which dimensions a rotation pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeMode {
    /// Adjacent pairs `(x[2i], x[2i+1])`: LLaMA (ggml's `GGML_ROPE_TYPE_NORMAL`).
    Normal,
    /// Halves `(x[i], x[i + n_dims/2])`: GPT-NeoX, Qwen2 (`GGML_ROPE_TYPE_NEOX`).
    Neox,
}

/// Everything that fixes the rotation of a head at a position.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeParams {
    /// Pairing of dimensions.
    pub mode: RopeMode,
    /// Elements per head.
    pub head_dim: usize,
    /// Leading dimensions rotated (`rope.dimension_count`, ≤ `head_dim`, even); the rest pass through.
    pub n_dims: usize,
    /// Base of the frequencies (`rope.freq_base`).
    pub freq_base: f32,
    /// Position scale: 1 / linear scaling factor.
    pub freq_scale: f32,
    /// YaRN extrapolation mix (0 disables YaRN).
    pub ext_factor: f32,
    /// Magnitude scale of cos/sin (YaRN attention factor; 1 normally).
    pub attn_factor: f32,
    /// YaRN low correction dimension parameter.
    pub beta_fast: f32,
    /// YaRN high correction dimension parameter.
    pub beta_slow: f32,
    /// Training context length YaRN corrects for.
    pub n_ctx_orig: usize,
}

impl RopeParams {
    /// Plain RoPE: no scaling, no YaRN.
    pub fn new(mode: RopeMode, head_dim: usize, n_dims: usize, freq_base: f32) -> RopeParams {
        RopeParams {
            mode,
            head_dim,
            n_dims,
            freq_base,
            freq_scale: 1.0,
            ext_factor: 0.0,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            n_ctx_orig: 0,
        }
    }
}

/// `ggml_rope_yarn_corr_dims`: the dimension range over which YaRN blends.
fn yarn_corr_dims(p: &RopeParams) -> [f32; 2] {
    let corr_dim = |n_rot: f32| {
        p.n_dims as f32 * (p.n_ctx_orig as f32 / (n_rot * 2.0 * std::f32::consts::PI)).ln()
            / (2.0 * p.freq_base.ln())
    };
    let start = corr_dim(p.beta_fast).floor();
    let end = corr_dim(p.beta_slow).ceil();
    [start.max(0.0), end.min(p.n_dims as f32 - 1.0)]
}

/// `rope_yarn`: cos and sin of the (possibly YaRN-blended) angle, times the magnitude scale.
fn rope_yarn(theta_extrap: f32, p: &RopeParams, corr: [f32; 2], i0: usize) -> (f32, f32) {
    let theta_interp = p.freq_scale * theta_extrap;
    let mut theta = theta_interp;
    let mut mscale = p.attn_factor;
    if p.ext_factor != 0.0 {
        let y = ((i0 / 2) as f32 - corr[0]) / (corr[1] - corr[0]).max(0.001);
        let ramp_mix = (1.0 - y.clamp(0.0, 1.0)) * p.ext_factor;
        // As GCC contracts ggml's `theta_interp * (1 - ramp_mix) + theta_extrap
        // * ramp_mix` and `1.0f + 0.1f * logf(1.0f / freq_scale)` for an FMA
        // target: the first product of each sum fused.
        theta = theta_interp.mul_add(1.0 - ramp_mix, theta_extrap * ramp_mix);
        mscale *= 0.1f32.mul_add((1.0 / p.freq_scale).ln(), 1.0);
    }
    (theta.cos() * mscale, theta.sin() * mscale)
}

/// Fills `cache[2i], cache[2i+1]` with cos and sin of pair `i` at position `pos`
/// (`cache.len() == n_dims`), exactly as `ggml_rope_cache_init`: the angle
/// starts at `pos` and is multiplied by `freq_base^(-2/n_dims)` pair after
/// pair in `f32` (not recomputed with `powf`), and divided by the pair's
/// frequency factor (LLaMA-3 `rope_freqs`) when there is one.
pub fn rope_cache(pos: usize, p: &RopeParams, freq_factors: Option<&[f32]>, cache: &mut [f32]) {
    let theta_scale = p.freq_base.powf(-2.0 / p.n_dims as f32);
    let corr = if p.ext_factor != 0.0 {
        yarn_corr_dims(p)
    } else {
        [0.0, 0.0]
    };
    let mut theta = pos as f32;
    for i0 in (0..p.n_dims).step_by(2) {
        let ff = freq_factors.map_or(1.0, |f| f[i0 / 2]);
        let (c, s) = rope_yarn(theta / ff, p, corr, i0);
        cache[i0] = c;
        cache[i0 + 1] = s;
        theta *= theta_scale;
    }
}

/// Rotates, in place, every head of every row of `x` (`[n_rows, n_heads * head_dim]`),
/// row `r` being at position `pos0 + r`.
pub fn rope(
    x: &mut [f32],
    n_heads: usize,
    pos0: usize,
    p: &RopeParams,
    freq_factors: Option<&[f32]>,
) {
    let width = n_heads * p.head_dim;
    assert!(x.len().is_multiple_of(width) && p.n_dims <= p.head_dim && p.n_dims.is_multiple_of(2));
    let mut cache = vec![0.0f32; p.n_dims];
    for (r, row) in x.chunks_mut(width).enumerate() {
        rope_cache(pos0 + r, p, freq_factors, &mut cache);
        // ggml's `rotate_pairs`: `(x0, x1) ← (x0·cos − x1·sin, x0·sin + x1·cos)`,
        // as GCC contracts it in llama.cpp's build (-ffp-contract=fast with
        // FMA): the first product of each line fused, the second rounded.
        // Verified bit-exact against llama.cpp's logits on synth-F32.
        for head in row.chunks_mut(p.head_dim) {
            rotate_head(head, p, &cache);
        }
    }
}

with_fma!(rotate_head, fn(head: &mut [f32], p: &RopeParams, cache: &[f32]) {
    let (stride, offset) = match p.mode {
        RopeMode::Normal => (2, 1),
        RopeMode::Neox => (1, p.n_dims / 2),
    };
    for i in 0..p.n_dims / 2 {
        let (c, s) = (cache[2 * i], cache[2 * i + 1]);
        let a = i * stride;
        let (x0, x1) = (head[a], head[a + offset]);
        head[a] = x0.mul_add(c, -(x1 * s));
        head[a + offset] = x0.mul_add(s, x1 * c);
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity() {
        let p = RopeParams::new(RopeMode::Normal, 8, 8, 10000.0);
        let mut x: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let orig = x.clone();
        rope(&mut x, 2, 0, &p, None);
        assert_eq!(x, orig);
    }

    #[test]
    fn rotation_preserves_pair_norms() {
        for mode in [RopeMode::Normal, RopeMode::Neox] {
            let p = RopeParams::new(mode, 8, 8, 10000.0);
            let mut x: Vec<f32> = (0..8).map(|i| (i as f32 + 1.0) * 0.5).collect();
            let orig = x.clone();
            rope(&mut x, 1, 7, &p, None);
            let n = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
            assert!((n(&x) - n(&orig)).abs() < 1e-4);
            assert_ne!(x, orig);
        }
    }

    #[test]
    fn first_pair_angle_is_position() {
        let p = RopeParams::new(RopeMode::Normal, 4, 4, 10000.0);
        let mut c = [0.0f32; 4];
        rope_cache(3, &p, None, &mut c);
        assert_eq!(c[0], 3.0f32.cos());
        assert_eq!(c[1], 3.0f32.sin());
        rope_cache(3, &p, Some(&[2.0, 1.0]), &mut c);
        assert_eq!(c[0], 1.5f32.cos());
    }
}
