//! Causal scaled-dot-product attention with grouped-query heads over a KV cache (CPU).

use half::f16;

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
    /// `a·b + acc` as ggml's SIMD multiply-add computes it (fused for `f32`;
    /// for `f16` the product of two `f16` values is exact, so a plain
    /// multiply-add rounds identically and needs no FMA instruction).
    fn madd(a: f32, b: Self, acc: f32) -> f32;
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
    #[inline]
    fn madd(a: f32, b: f32, acc: f32) -> f32 {
        a.mul_add(b, acc)
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
    #[inline]
    fn madd(a: f32, b: f16, acc: f32) -> f32 {
        a * b.to_f32() + acc
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

    // llama.cpp multiplies with ggml_mul_mat, whose summation order depends
    // on the batch: several query rows go through llamafile's tinyBLAS
    // (element i into lane i % 8, lanes summed pairwise), a single row
    // (token-by-token decoding) through ggml_vec_dot_f16/f32 (4 accumulators
    // of 8 lanes, reduced with horizontal adds). The last bits differ, and
    // they decide later f16 roundings: mirroring both is what makes
    // prompt logits and greedy continuations agree with llama.cpp's.
    let decode = n_rows == 1;
    // Tasks of whole heads, a few per thread; each task has its own buffers.
    let units = n_rows * p.n_head;
    let per_task = units
        .div_ceil(rayon::current_num_threads().max(1) * 4)
        .max(1);
    quant_kernels::pool::for_each_chunk_mut(out, per_task * hd, |c, out| {
        let (mut scores, mut qh, mut lanes) =
            (Vec::<f32>::new(), vec![0.0f32; hd], vec![0.0f32; 32 * hd]);
        for (i, o) in out.chunks_mut(hd).enumerate() {
            let unit = c * per_task + i;
            let (scores, qh, lanes) = (&mut scores, &mut qh[..], &mut lanes[..]);
            let (t, h) = (unit / p.n_head, unit % p.n_head);
            let g = h / group;
            let n_kv = pos0 + t + 1;
            for (d, &x) in qh.iter_mut().zip(&q[t * q_width + h * hd..][..hd]) {
                *d = E::round(x);
            }
            scores.clear();
            scores.extend((0..n_kv).map(|j| {
                let kr = &k[j * kv_width + g * hd..][..hd];
                if decode {
                    dot_vec(qh, kr)
                } else {
                    dot_lanes8(qh, kr)
                }
            }));
            softmax_scaled(scores, p.scale);
            // V·P, with the probabilities rounded to the cache type. Lane l of
            // output d accumulates the positions j with j % lanes == l. The
            // KV window llama.cpp multiplies over is padded with masked
            // (zero-probability) cells to a multiple of 32, so every position
            // takes the vector path.
            let n_lanes = if decode { 32 } else { 8 };
            lanes[..n_lanes * hd].fill(0.0);
            for (j, &s) in scores.iter().enumerate() {
                let w = E::round(s);
                let lane = &mut lanes[(j % n_lanes) * hd..][..hd];
                for (a, &x) in lane.iter_mut().zip(&v[j * kv_width + g * hd..][..hd]) {
                    *a = E::madd(w, x, *a);
                }
            }
            for (d, o) in o.iter_mut().enumerate() {
                let l = |i: usize| lanes[i * hd + d];
                *o = if decode {
                    let acc: [[f32; 8]; 4] =
                        std::array::from_fn(|a| std::array::from_fn(|i| l(8 * a + i)));
                    reduce_4x8(&acc)
                } else {
                    hsum8(&std::array::from_fn(l))
                };
            }
        }
    });
}

/// ggml's `hsum_float_8` (AVX): `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`.
#[inline]
fn hsum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

/// `GGML_F32_VEC_REDUCE` (AVX): the 4 accumulators pairwise, then the 8
/// lanes with two horizontal adds: `((x0+x4)+(x1+x5)) + ((x2+x6)+(x3+x7))`.
#[inline]
fn reduce_4x8(a: &[[f32; 8]; 4]) -> f32 {
    let x: [f32; 8] = std::array::from_fn(|i| (a[0][i] + a[2][i]) + (a[1][i] + a[3][i]));
    let t = [x[0] + x[4], x[1] + x[5], x[2] + x[6], x[3] + x[7]];
    (t[0] + t[1]) + (t[2] + t[3])
}

/// `Σ a[i]·b[i]` as tinyBLAS sums it: element `i` into lane `i % 8`, then [`hsum8`].
#[inline]
fn dot_lanes8<E: KvElement>(a: &[f32], b: &[E]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        acc[i % 8] = E::madd(x, y, acc[i % 8]);
    }
    hsum8(&acc)
}

/// `Σ a[i]·b[i]` as `ggml_vec_dot_f16`/`_f32` sum it: blocks of 32 over 4
/// accumulators of 8 lanes, [`reduce_4x8`], the tail added in `f64`.
#[inline]
fn dot_vec<E: KvElement>(a: &[f32], b: &[E]) -> f32 {
    let n32 = a.len() / 32 * 32;
    let mut acc = [[0.0f32; 8]; 4];
    for (i, (&x, &y)) in a[..n32].iter().zip(&b[..n32]).enumerate() {
        let (r, l) = ((i / 8) % 4, i % 8);
        acc[r][l] = E::madd(x, y, acc[r][l]);
    }
    let mut sum = reduce_4x8(&acc) as f64;
    for (&x, &y) in a[n32..].iter().zip(&b[n32..]) {
        sum += (x * y.to_f32()) as f64;
    }
    sum as f32
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
