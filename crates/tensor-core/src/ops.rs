//! Small CPU kernels over `f32` rows, each with its one-line contract.
//!
//! Each follows the ggml CPU operation it names, down to the precision of
//! intermediate sums, so that results agree with llama.cpp to rounding.

use crate::fma::with_fma;
use half::f16;

/// Rows below this many elements are not worth a rayon task.
const PAR_MIN_LEN: usize = 1 << 14;

/// `out[r] = x[r] / sqrt(mean(x[r]²) + eps) * weight` for every row `r` of width `weight.len()`.
///
/// Follows `ggml_compute_forward_rms_norm_f32` then `ggml_mul`: squares are
/// formed in `f32` and summed in `f64` (ggml's `ggml_float`), the mean and the
/// scale are `f32`, and the row is scaled before the weight multiplies it.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    assert!(
        x.len() == out.len() && x.len().is_multiple_of(width),
        "rms_norm: shape mismatch"
    );
    let row = |(xr, yr): (&[f32], &mut [f32])| {
        let sum: f64 = xr.iter().map(|&v| (v * v) as f64).sum();
        let mean = (sum / width as f64) as f32;
        let scale = 1.0f32 / (mean + eps).sqrt();
        for ((y, &v), &w) in yr.iter_mut().zip(xr).zip(weight) {
            *y = (v * scale) * w;
        }
    };
    if x.len() >= PAR_MIN_LEN {
        quant_kernels::pool::for_each_chunk_mut(out, width, |r, yr| {
            row((&x[r * width..(r + 1) * width], yr))
        });
    } else {
        x.chunks(width).zip(out.chunks_mut(width)).for_each(row);
    }
}

/// `x[i] += y[i]` (ggml_add; addition commutes exactly, so the operand order of llama.cpp does not matter).
pub fn add(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "add: length mismatch");
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `x[r] += bias` for every row `r` of width `bias.len()` (a broadcast ggml_add).
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    assert!(
        x.len().is_multiple_of(bias.len()),
        "add_bias: shape mismatch"
    );
    for row in x.chunks_mut(bias.len()) {
        add(row, bias);
    }
}

/// `silu(x) = x / (1 + e^-x)` with libm's `expf` (ggml_silu_f32, the scalar path).
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// ggml's vectorised `expf` (`ggml_v_expf`, AVX2/NEON), evaluated one lane at
/// a time: the same operations in the same order with fused multiply-adds, so
/// it returns the same bits (max error 1.5 ulp against the exact value).
///
/// ggml uses it for all but the last `n % 8` elements of a softmax or SwiGLU
/// row; reproducing it keeps f16 roundings downstream identical.
#[inline(always)]
pub fn expf_ggml(x: f32) -> f32 {
    let f = f32::from_bits;
    let r = f(0x4b40_0000); // 0x1.8p23: adding it rounds to an integer
    let z = x.mul_add(f(0x3fb8_aa3b), r); // x·log2(e) + r
    let n = z - r;
    // b = x − n·ln2 (ln2 split in two parts), as two fnmadds.
    let b = (-n).mul_add(f(0x35bf_be8e), (-n).mul_add(f(0x3f31_7200), x));
    let e = z.to_bits() << 23;
    let k = f(e.wrapping_add(1.0f32.to_bits()));
    let u = b * b;
    let j = f(0x3c07_2010)
        .mul_add(b, f(0x3d2b_9f17))
        .mul_add(u, f(0x3e2a_af33).mul_add(b, f(0x3eff_fedb)))
        .mul_add(u, f(0x3f7f_fff6) * b);
    if n.abs() <= 126.0 {
        return j.mul_add(k, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f(g.wrapping_add(0x7f00_0000));
    let s2 = f(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// ggml's `hsum_float_8`: the pairwise order in which AVX2 sums 8 lanes,
/// `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))` (every kernel of this crate
/// that mirrors an 8-lane ggml sum ends with it).
#[inline(always)]
pub(crate) fn hsum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// `silu(gate)·up` for one row, ggml's way ([`swiglu_row_portable`]'s
/// results, eight lanes at a time where AVX2 and FMA are present).
fn swiglu_row(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if quant_kernels::simd::features().avx2 {
        // SAFETY: the CPU has AVX2, FMA and F16C (`features().avx2`), all that the kernel enables.
        return unsafe { x86::swiglu_row(gate, up, out) };
    }
    swiglu_row_portable(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    //! ggml's AVX2 `ggml_v_expf` / `ggml_v_silu`, intrinsic for intrinsic,
    //! and (from quant-kernels) its `hsum_float_8`, shared by the crate's
    //! AVX2 kernels.

    use std::arch::x86_64::*;

    /// ggml's `hsum_float_8` on a register ([`super::hsum8`]'s order):
    /// quant-kernels' copy, the one every AVX2 kernel of the project uses.
    pub(crate) use quant_kernels::simd::hsum_float_8;

    /// `ggml_v_expf` (AVX2 + FMA).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn expf(x: __m256) -> __m256 {
        let f = |b: u32| _mm256_set1_ps(f32::from_bits(b));
        let r = f(0x4b40_0000);
        let z = _mm256_fmadd_ps(x, f(0x3fb8_aa3b), r);
        let n = _mm256_sub_ps(z, r);
        let b = _mm256_fnmadd_ps(n, f(0x35bf_be8e), _mm256_fnmadd_ps(n, f(0x3f31_7200), x));
        let e = _mm256_slli_epi32::<23>(_mm256_castps_si256(z));
        let k = _mm256_castsi256_ps(_mm256_add_epi32(
            e,
            _mm256_castps_si256(_mm256_set1_ps(1.0)),
        ));
        let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
        let c = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(126.0));
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(f(0x3c07_2010), b, f(0x3d2b_9f17)),
                u,
                _mm256_fmadd_ps(f(0x3e2a_af33), b, f(0x3eff_fedb)),
            ),
            u,
            _mm256_mul_ps(f(0x3f7f_fff6), b),
        );
        if _mm256_movemask_ps(c) == 0 {
            return _mm256_fmadd_ps(j, k, k);
        }
        let g = _mm256_and_si256(
            _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
            _mm256_set1_epi32(0x8200_0000u32 as i32),
        );
        let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
        let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
        let d = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
        _mm256_or_ps(
            _mm256_and_ps(d, _mm256_mul_ps(s1, s1)),
            _mm256_andnot_ps(
                d,
                _mm256_or_ps(
                    _mm256_and_ps(c, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                    _mm256_andnot_ps(c, _mm256_fmadd_ps(k, j, k)),
                ),
            ),
        )
    }

    /// `ggml_vec_swiglu_f32` (AVX2): `ggml_v_silu` on blocks of 8, the
    /// scalar `silu` on the tail.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn swiglu_row(gate: &[f32], up: &[f32], out: &mut [f32]) {
        assert!(gate.len() == out.len() && up.len() == out.len());
        let n8 = out.len() / 8 * 8;
        for ((o, g), u) in out[..n8]
            .chunks_exact_mut(8)
            .zip(gate.chunks_exact(8))
            .zip(up.chunks_exact(8))
        {
            // SAFETY: each chunk is 8 floats; loadu/storeu need no alignment.
            unsafe {
                let x = _mm256_loadu_ps(g.as_ptr());
                let e = expf(_mm256_sub_ps(_mm256_setzero_ps(), x));
                let silu = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e));
                _mm256_storeu_ps(
                    o.as_mut_ptr(),
                    _mm256_mul_ps(silu, _mm256_loadu_ps(u.as_ptr())),
                );
            }
        }
        for i in n8..out.len() {
            out[i] = super::silu(gate[i]) * up[i];
        }
    }
}

with_fma!(swiglu_row_portable, fn(gate: &[f32], up: &[f32], out: &mut [f32]) {
    // As ggml_vec_swiglu_f32: ggml_v_silu on blocks of 8, ggml_silu_f32 on the tail.
    let n8 = out.len() / 8 * 8;
    for i in 0..n8 {
        let g = gate[i];
        out[i] = g / (1.0 + expf_ggml(-g)) * up[i];
    }
    for i in n8..out.len() {
        out[i] = silu(gate[i]) * up[i];
    }
});

/// `out[i] = silu(gate[i]) * up[i]` for every row of width `width`
/// (ggml_swiglu_split, the LLaMA feed-forward gate; ggml's `expf` on blocks of 8).
pub fn swiglu(gate: &[f32], up: &[f32], width: usize, out: &mut [f32]) {
    assert!(gate.len() == up.len() && up.len() == out.len() && out.len().is_multiple_of(width));
    let f = |((o, g), u): ((&mut [f32], &[f32]), &[f32])| swiglu_row(g, u, o);
    if out.len() >= PAR_MIN_LEN {
        quant_kernels::pool::for_each_chunk_mut(out, width, |r, o| {
            let range = r * width..(r + 1) * width;
            f(((o, &gate[range.clone()]), &up[range]))
        });
    } else {
        out.chunks_mut(width)
            .zip(gate.chunks(width))
            .zip(up.chunks(width))
            .for_each(f);
    }
}

with_fma!(softmax_row, fn(x: &mut [f32], scale: f32, sink: Option<f32>) {
    let mut max = f32::NEG_INFINITY;
    for v in x.iter_mut() {
        *v *= scale;
        max = max.max(*v);
    }
    // An attention sink joins the maximum and the sum as if it were one
    // more logit (ggml_soft_max_add_sinks), its exponential libm's.
    if let Some(s) = sink {
        max = max.max(s);
    }
    // The row is conceptually padded with masked (-inf) entries to a multiple
    // of 8, as llama.cpp's KV window is: every element takes the vector path,
    // and each block of 8 is summed with hsum_float_8 before joining the f64 sum.
    let mut sum = 0.0f64;
    let mut block = [0.0f32; 8];
    for chunk in x.chunks_mut(8) {
        block.fill(0.0);
        for (b, v) in block.iter_mut().zip(chunk.iter_mut()) {
            *v = expf_ggml(*v - max);
            *b = *v;
        }
        sum += hsum8(&block) as f64;
    }
    if let Some(s) = sink {
        sum += (s - max).exp() as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
});

/// In place: `x = softmax(x * scale)` (ggml_soft_max_ext over one causal row).
///
/// As `ggml_compute_forward_soft_max_f32` with `ggml_vec_soft_max_f32`: scale,
/// subtract the maximum, ggml's vector `expf`, sum blocks of 8 in `f32` and
/// the blocks in `f64`, multiply by the `f32` reciprocal. Masked (future)
/// positions are simply absent from `x`; ggml's `exp(-inf) = 0` for them
/// changes nothing.
pub fn softmax_scaled(x: &mut [f32], scale: f32) {
    softmax_row(x, scale, None)
}

/// [`softmax_scaled`] with an attention sink: `sink` joins the row's
/// maximum and its sum of exponentials as one more (unscaled) logit whose
/// probability is dropped (`ggml_soft_max_ext` then
/// `ggml_soft_max_add_sinks`: `max = max(max, sink)`, `sum += expf(sink -
/// max)` in `f64` after the row's blocks), so the row sums to less than 1.
pub fn softmax_scaled_sink(x: &mut [f32], scale: f32, sink: f32) {
    softmax_row(x, scale, Some(sink))
}

/// In place: `x = softmax(x)` over a short row exactly as
/// `ggml_vec_soft_max_f32` computes it for any length: blocks of 8 with
/// ggml's vector `expf` (each block summed horizontally in `f32`), the
/// remaining values with libm's `expf`, one by one, all joined in `f64`;
/// then the `f32` reciprocal of the sum multiplies each value
/// (`ggml_soft_max` of a MoE's chosen router logits).
pub fn softmax_exact(x: &mut [f32]) {
    softmax_exact_row(x)
}

with_fma!(softmax_exact_row, fn(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let n8 = x.len() / 8 * 8;
    let mut sum = 0.0f64;
    for chunk in x[..n8].chunks_mut(8) {
        let mut block = [0.0f32; 8];
        for (b, v) in block.iter_mut().zip(chunk.iter_mut()) {
            *v = expf_ggml(*v - max);
            *b = *v;
        }
        sum += hsum8(&block) as f64;
    }
    for v in &mut x[n8..] {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
});

/// gpt-oss's gated activation (`ggml_swiglu_oai`, ggml's
/// `ggml_compute_forward_swiglu_oai_f32`): with `x = min(gate, limit)` and
/// `y = clamp(up, -limit, limit)`, `out = x / (1 + expf(alpha · -x)) · (y + 1)`,
/// libm's `expf`, every operation rounded alone (ggml's loop has no product
/// to contract into an add).
pub fn swiglu_oai(gate: &[f32], up: &[f32], alpha: f32, limit: f32, out: &mut [f32]) {
    assert!(gate.len() == up.len() && up.len() == out.len());
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let x = g.min(limit);
        let y = u.clamp(-limit, limit);
        let glu = x / (1.0 + (alpha * -x).exp());
        *o = glu * (y + 1.0);
    }
}

/// `sqrt(mean(x²))`, summed in `f64` (for traces and examples).
pub fn rms(x: &[f32]) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    let s: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
    (s / x.len() as f64).sqrt() as f32
}

/// `x[i] *= s` (ggml_scale).
pub fn scale(x: &mut [f32], s: f32) {
    for v in x.iter_mut() {
        *v *= s;
    }
}

/// `x = cap · tanh(x / cap)` as llama.cpp builds it from three ops:
/// ggml_scale by `1/cap`, ggml_tanh (libm's `tanhf`), ggml_scale by `cap`.
pub fn softcap(x: &mut [f32], cap: f32) {
    let inv = 1.0 / cap;
    for v in x.iter_mut() {
        *v = (*v * inv).tanh() * cap;
    }
}

/// `gelu(x)` with the tanh approximation, in `f32` (`ggml_gelu_f32`, as GCC
/// compiles it for an FMA target: `1 + a·x·x` contracted into one fused
/// multiply-add, which moves some table entries by an `f16` ulp).
pub fn gelu_f32(x: f32) -> f32 {
    const GELU_COEF_A: f32 = 0.044715;
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let inner = (GELU_COEF_A * x).mul_add(x, 1.0);
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * inner).tanh())
}

/// ggml's `ggml_table_gelu_f16`: `gelu` of every `f16` value, rounded to `f16`.
fn gelu_table() -> &'static [f16; 1 << 16] {
    static TABLE: std::sync::OnceLock<Box<[f16; 1 << 16]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([f16::ZERO; 1 << 16]);
        for (i, v) in t.iter_mut().enumerate() {
            *v = f16::from_f32(gelu_f32(f16::from_bits(i as u16).to_f32()));
        }
        t
    })
}

/// `gelu(x)` as ggml's CPU computes it (`GGML_GELU_FP16`): 0 at or below -10,
/// `x` at or above 10, else the table entry of `x` rounded to `f16`.
#[inline]
pub fn gelu(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        gelu_table()[f16::from_f32(x).to_bits() as usize].to_f32()
    }
}

/// `out[i] = gelu(gate[i]) * up[i]` (ggml_geglu_split: Gemma's feed-forward gate).
pub fn geglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && up.len() == out.len());
    let table = gelu_table();
    for ((o, &x), &g) in out.iter_mut().zip(gate).zip(up) {
        *o = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * g
        } else {
            table[f16::from_f32(x).to_bits() as usize].to_f32() * g
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swiglu_row_matches_the_portable_reference_bit_for_bit() {
        // Ordinary values, both exp branches' edges, overflow and underflow.
        let mut gate: Vec<f32> = (0..4003)
            .map(|i| ((i as f32) * 0.7311).sin() * 12.0)
            .collect();
        gate.extend([
            0.0, -0.0, 87.0, -87.0, 88.5, -88.5, 100.0, -100.0, 140.0, -140.0, 1e-30, -1e-30,
        ]);
        gate.extend([
            f32::MAX,
            f32::MIN,
            200.0,
            -200.0,
            126.5 * std::f32::consts::LN_2,
            -130.0 * std::f32::consts::LN_2,
        ]);
        let up: Vec<f32> = (0..gate.len())
            .map(|i| ((i as f32) * 0.191).cos() * 3.0)
            .collect();
        let (mut a, mut b) = (vec![0.0f32; gate.len()], vec![0.0f32; gate.len()]);
        swiglu_row(&gate, &up, &mut a);
        swiglu_row_portable(&gate, &up, &mut b);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(
                x.to_bits(),
                y.to_bits(),
                "element {i}: gate {} -> {x} vs {y}",
                gate[i]
            );
        }
    }

    #[test]
    fn rms_norm_unit_weight_gives_unit_rms() {
        let x: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let w = vec![1.0f32; 256];
        let mut y = vec![0.0; 512];
        rms_norm(&x, &w, 1e-6, &mut y);
        assert!((rms(&y[..256]) - 1.0).abs() < 1e-5);
        assert!((rms(&y[256..]) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn softmax_sums_to_one_and_orders() {
        let mut x = vec![1.0, 2.0, 3.0, -1.0];
        softmax_scaled(&mut x, 0.5);
        let s: f32 = x.iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert!(x[2] > x[1] && x[1] > x[0] && x[0] > x[3]);
    }

    #[test]
    fn ggml_expf_is_close_to_libm() {
        for i in -2000..2000 {
            let x = i as f32 * 0.05;
            let (a, b) = (expf_ggml(x), x.exp());
            if x > -87.0 && x < 88.0 {
                assert!((a - b).abs() <= 4.0 * f32::EPSILON * b, "{x}: {a} vs {b}");
            }
        }
        assert_eq!(expf_ggml(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf_ggml(0.0), 1.0);
    }

    #[test]
    fn swiglu_matches_definition() {
        let g = [0.0f32, 1.0, -2.0];
        let u = [5.0f32, 2.0, 1.0];
        let mut o = [0.0f32; 3];
        swiglu(&g, &u, 3, &mut o);
        assert_eq!(o[0], 0.0);
        assert!((o[1] - 2.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-7);
    }
}
