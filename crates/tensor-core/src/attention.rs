//! Causal scaled-dot-product attention with grouped-query heads over a KV cache (CPU).

use half::f16;
use rayon::prelude::*;

use crate::ops::softmax_scaled;

/// Element type of a KV cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// Half precision, llama.cpp's default (`type_k = type_v = f16`).
    #[default]
    F16,
    /// Single precision.
    F32,
}

/// Shape of a whole KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    /// Layers.
    pub n_layer: usize,
    /// Positions it can hold.
    pub n_ctx: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Element type.
    pub kv_type: KvType,
}

impl KvShape {
    /// Elements of one position of one layer (`n_head_kv * head_dim`).
    pub fn row_len(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// The attention's fixed parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionParams {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (divides `n_head`; query head `h` reads KV head `h / (n_head / n_head_kv)`).
    pub n_head_kv: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Factor applied to `K·Q` before the softmax (usually `1/sqrt(head_dim)`).
    pub scale: f32,
}

/// A cache element: how values are stored, and how an `f32` operand is
/// rounded to be multiplied with them.
///
/// ggml multiplies a cache tensor with an `f32` operand by first converting the
/// operand to the cache's type (the "vec_dot_type" of `F16` is `F16`): with an
/// `f16` cache the query is rounded to `f16` before `K·Q`, and the softmax
/// probabilities are rounded to `f16` before `V·P`. Mirroring that is what
/// makes logits agree with llama.cpp to rounding.
pub trait KvElement: Copy + Default + Send + Sync + 'static {
    /// Converts from `f32` (round to nearest even).
    fn from_f32(x: f32) -> Self;
    /// Converts to `f32` (exact).
    fn to_f32(self) -> f32;
    /// `x` rounded to this type and back.
    #[inline]
    fn round(x: f32) -> f32 {
        Self::from_f32(x).to_f32()
    }
}

impl KvElement for f32 {
    #[inline]
    fn from_f32(x: f32) -> f32 {
        x
    }
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline]
    fn round(x: f32) -> f32 {
        x
    }
}

impl KvElement for f16 {
    #[inline]
    fn from_f32(x: f32) -> f16 {
        f16::from_f32(x)
    }
    #[inline]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// Stores `src` (`[n_rows, row_len]` f32) at positions `pos0..pos0+n_rows` of `cache` (`[n_ctx, row_len]`).
pub fn store_rows<E: KvElement>(cache: &mut [E], row_len: usize, pos0: usize, src: &[f32]) {
    let dst = &mut cache[pos0 * row_len..pos0 * row_len + src.len()];
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = E::from_f32(s);
    }
}

/// `out[t, h] = Σ_j softmax_j(scale · K[j, g]·Q[t, h]) · V[j, g]` over cached positions
/// `j ≤ pos0 + t`, with `g = h / (n_head / n_head_kv)`.
///
/// `q` and `out` are `[n_rows, n_head * head_dim]`; `k` and `v` are the layer's
/// cache, `[n_ctx, n_head_kv * head_dim]`, already holding the rows of this
/// batch. Parallel over (row, head) pairs. Follows llama.cpp without flash
/// attention: `K·Q` with the query rounded to the cache type, ggml's softmax,
/// then `V·P` with the probabilities rounded to the cache type.
pub fn attention<E: KvElement>(
    q: &[f32],
    k: &[E],
    v: &[E],
    pos0: usize,
    p: &AttentionParams,
    out: &mut [f32],
) {
    let hd = p.head_dim;
    let q_width = p.n_head * hd;
    let kv_width = p.n_head_kv * hd;
    let group = p.n_head / p.n_head_kv;
    assert!(q.len() == out.len() && q.len().is_multiple_of(q_width));
    let n_rows = q.len() / q_width;
    assert!(k.len() >= (pos0 + n_rows) * kv_width && v.len() >= (pos0 + n_rows) * kv_width);

    out.par_chunks_mut(hd).enumerate().for_each_init(
        || (Vec::<f32>::new(), vec![0.0f32; hd], vec![0.0f32; 8 * hd]),
        |(scores, qh, lanes), (unit, o)| {
            let (t, h) = (unit / p.n_head, unit % p.n_head);
            let g = h / group;
            let n_kv = pos0 + t + 1;
            for (d, &x) in qh.iter_mut().zip(&q[t * q_width + h * hd..][..hd]) {
                *d = E::round(x);
            }
            scores.clear();
            scores.extend((0..n_kv).map(|j| dot(qh, &k[j * kv_width + g * hd..][..hd])));
            softmax_scaled(scores, p.scale);
            // V·P as ggml's batched f16 GEMM (llamafile's tinyBLAS) sums it:
            // position j accumulates into lane j % 8, then the 8 lanes are
            // added pairwise. Products of two f16 values are exact in f32.
            lanes.fill(0.0);
            for (j, &s) in scores.iter().enumerate() {
                let w = E::round(s);
                let lane = &mut lanes[(j % 8) * hd..][..hd];
                for (a, &x) in lane.iter_mut().zip(&v[j * kv_width + g * hd..][..hd]) {
                    *a += w * x.to_f32();
                }
            }
            for (d, o) in o.iter_mut().enumerate() {
                let l = |i: usize| lanes[i * hd + d];
                *o = ((l(0) + l(4)) + (l(2) + l(6))) + ((l(1) + l(5)) + (l(3) + l(7)));
            }
        },
    );
}

/// `Σ a[i]·b[i]` as ggml's batched f16 GEMM sums it: element `i` into lane
/// `i % 8`, then the lanes pairwise (`hsum_float_8`). The products of two
/// `f16` values are exact in `f32`, so a fused multiply-add rounds the same.
#[inline]
fn dot<E: KvElement>(a: &[f32], b: &[E]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        acc[i % 8] += x * y.to_f32();
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_position_returns_its_value() {
        let p = AttentionParams {
            n_head: 2,
            n_head_kv: 1,
            head_dim: 4,
            scale: 0.5,
        };
        let k = vec![1.0f32, 0.0, 0.0, 0.0];
        let v = vec![0.25f32, -1.0, 2.0, 3.0];
        let q = vec![1.0f32; 8];
        let mut out = vec![0.0f32; 8];
        attention(&q, &k, &v, 0, &p, &mut out);
        assert_eq!(&out[..4], &v[..]);
        assert_eq!(&out[4..], &v[..]);
    }

    #[test]
    fn causal_rows_see_only_the_past() {
        let p = AttentionParams {
            n_head: 1,
            n_head_kv: 1,
            head_dim: 2,
            scale: 1.0,
        };
        let k = vec![0.0f32, 0.0, 0.0, 0.0];
        let v = vec![1.0f32, 1.0, 3.0, 3.0];
        let q = vec![1.0f32; 4];
        let mut out = vec![0.0f32; 4];
        attention(&q, &k, &v, 0, &p, &mut out);
        assert_eq!(out, vec![1.0, 1.0, 2.0, 2.0]);
    }
}
