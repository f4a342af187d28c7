//! The kernels of recurrent (linear-attention) layers: Qwen3.5's Gated
//! DeltaNet, and the element-wise operations around it.
//!
//! Each follows the ggml CPU operation it names, in ggml's order of
//! operations (the AVX2 build's: 4 × 8-lane accumulators for `f32` dot
//! products, fused multiply-adds where GCC contracts `a += b * c`), so that
//! results agree with llama.cpp bit for bit.
//!
//! A recurrent layer keeps, per sequence, a state that each token updates:
//! the last `d_conv - 1` inputs of its short causal convolution
//! ([`ssm_conv`]) and the `[head_dim, head_dim]` matrix of each value head
//! ([`delta_net`]). A batch of tokens runs through the same per-token
//! recurrence as single tokens, so decoding token by token gives exactly the
//! values of one batch.

use crate::fma::with_fma;
use crate::ops;

/// An element-wise function ([`crate::graph::Op::Unary`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unary {
    /// `1 / (1 + e^-x)` (ggml_sigmoid: libm's `expf`).
    Sigmoid,
    /// `x / (1 + e^-x)` (ggml_silu: ggml's vector `expf` on blocks of 8 of
    /// each row, libm's on the tail).
    Silu,
    /// `log(1 + e^x)`, or `x` above 20 (ggml_softplus).
    Softplus,
}

impl Unary {
    /// ggml's name of the operation.
    pub fn name(self) -> &'static str {
        match self {
            Unary::Sigmoid => "sigmoid",
            Unary::Silu => "silu",
            Unary::Softplus => "softplus",
        }
    }
}

/// In place: `f` on every value of rows of `width` values (the row matters
/// for [`Unary::Silu`], whose blocks of 8 start at each row).
pub fn unary(x: &mut [f32], width: usize, f: Unary) {
    match f {
        Unary::Sigmoid => x.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
        Unary::Softplus => x
            .iter_mut()
            .for_each(|v| *v = if *v > 20.0 { *v } else { (1.0 + v.exp()).ln() }),
        Unary::Silu => {
            let ones = vec![1.0f32; width];
            let mut row = vec![0.0f32; width];
            for r in x.chunks_mut(width) {
                let n = r.len();
                row[..n].copy_from_slice(r);
                // silu(g) · 1 is silu(g) exactly.
                ops::swiglu(&row[..n], &ones[..n], n, r);
            }
        }
    }
}

/// `x[i] *= y[i]` (ggml_mul of two tensors of one shape), or with `y` one
/// value per row of `width` values of `x` (`y.len() · width == x.len()`:
/// ggml_mul broadcasting a column, a per-token gate).
pub fn mul(x: &mut [f32], y: &[f32], width: usize) {
    if x.len() == y.len() {
        for (a, &b) in x.iter_mut().zip(y) {
            *a *= b;
        }
        return;
    }
    assert_eq!(x.len(), y.len() * width, "mul: shape mismatch");
    for (row, &b) in x.chunks_mut(width).zip(y) {
        row.iter_mut().for_each(|a| *a *= b);
    }
}

/// `x[r] *= w` for every row `r` of width `w.len()` (a broadcast ggml_mul).
pub fn mul_rows(x: &mut [f32], w: &[f32]) {
    assert!(x.len().is_multiple_of(w.len()), "mul_rows: shape mismatch");
    for row in x.chunks_mut(w.len()) {
        mul(row, w, w.len());
    }
}

/// `out = x / max(‖x‖, eps)` over groups of `group` values, as llama.cpp's
/// `build_gdn_l2_norm` builds it: ggml_rms_norm with `eps / group` (squares
/// summed in `f64`), then ggml_scale by `1 / sqrt(group)`.
pub fn l2_norm(x: &[f32], group: usize, eps: f32, out: &mut [f32]) {
    let n = group as f32;
    let ones = vec![1.0f32; group];
    ops::rms_norm(x, &ones, eps / n, out);
    ops::scale(out, 1.0 / n.sqrt());
}

/// `GGML_F32_VEC_REDUCE` of four 8-lane accumulators (AVX).
#[inline(always)]
fn reduce_4x8(a: &[[f32; 8]; 4]) -> f32 {
    let x: [f32; 8] = std::array::from_fn(|i| (a[0][i] + a[2][i]) + (a[1][i] + a[3][i]));
    let t = [x[0] + x[4], x[1] + x[5], x[2] + x[6], x[3] + x[7]];
    (t[0] + t[1]) + (t[2] + t[3])
}

/// `Σ x[i]·y[i]` as `ggml_vec_dot_f32` sums it (AVX2 + FMA): blocks of 32
/// into 4 accumulators of 8 lanes, reduced, then the tail added one fused
/// multiply-add at a time.
#[inline(always)]
fn vec_dot_f32(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len();
    let np = n / 32 * 32;
    let mut acc = [[0.0f32; 8]; 4];
    for (b, (xs, ys)) in x[..np]
        .chunks_exact(8)
        .zip(y[..np].chunks_exact(8))
        .enumerate()
    {
        let a = &mut acc[b % 4];
        for l in 0..8 {
            a[l] = xs[l].mul_add(ys[l], a[l]);
        }
    }
    let mut s = reduce_4x8(&acc);
    for i in np..n {
        s = x[i].mul_add(y[i], s);
    }
    s
}

/// Shape of a Gated DeltaNet layer's recurrence ([`delta_net`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeltaNetParams {
    /// Query/key heads (`ssm.group_count`).
    pub n_head_k: usize,
    /// Value heads (`ssm.time_step_rank`), a multiple of `n_head_k`.
    pub n_head_v: usize,
    /// Elements per head, keys and values alike (`ssm.state_size`).
    pub head_dim: usize,
}

impl DeltaNetParams {
    /// Values of one sequence's state: a `[head_dim, head_dim]` matrix per value head.
    pub fn state_len(&self) -> usize {
        self.n_head_v * self.head_dim * self.head_dim
    }
}

/// The inputs of [`delta_net`], per token: queries and keys
/// `[n_head_k · head_dim]` (L2-normed), values `[n_head_v · head_dim]`, the
/// log-decay `g` and the write strength `beta` `[n_head_v]`.
#[derive(Debug)]
pub struct DeltaNetInputs<'a, T: ?Sized> {
    /// Queries.
    pub q: &'a T,
    /// Keys.
    pub k: &'a T,
    /// Values.
    pub v: &'a T,
    /// Log-decay per value head.
    pub g: &'a T,
    /// Write strength per value head.
    pub beta: &'a T,
}

impl<T: ?Sized> Clone for DeltaNetInputs<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: ?Sized> Copy for DeltaNetInputs<'_, T> {}

/// The gated delta rule over `n` tokens of one sequence
/// (ggml_gated_delta_net, llama.cpp's fused path on the CPU), each value head
/// `h` reading query/key head `h % n_head_k`: per token, `S ← e^g · S`,
/// `δ = β (v − Sᵀk)`, `S ← S + k δᵀ`, `o = Sᵀq / sqrt(head_dim)`, where
/// `state` holds each head's `S` transposed (`[head][j][i]`) and `out` is
/// `[n, n_head_v · head_dim]`. Dot products in ggml_vec_dot_f32's order, the
/// update as ggml_vec_mad_f32's fused multiply-adds.
pub fn delta_net(
    x: DeltaNetInputs<'_, [f32]>,
    state: &mut [f32],
    p: &DeltaNetParams,
    out: &mut [f32],
) {
    delta_net_fma(x, state, p, out)
}

with_fma!(delta_net_fma, fn(x: DeltaNetInputs<'_, [f32]>, state: &mut [f32], p: &DeltaNetParams, out: &mut [f32]) {
    // ggml_compute_forward_gated_delta_net_one_chunk (GDA: one g per head).
    // The state of head h is stored transposed: M[j][i] = S[i][j].
    let (hk, hv, d) = (p.n_head_k, p.n_head_v, p.head_dim);
    let n = x.g.len() / hv;
    assert!(
        x.q.len() == n * hk * d && x.k.len() == n * hk * d && x.v.len() == n * hv * d
            && x.beta.len() == n * hv && out.len() == n * hv * d && state.len() == p.state_len(),
        "delta_net: shape mismatch"
    );
    let scale = 1.0 / (d as f32).sqrt();
    let mut delta = vec![0.0f32; d];
    for h in 0..hv {
        let m = &mut state[h * d * d..(h + 1) * d * d];
        let hq = h % hk;
        for t in 0..n {
            let q = &x.q[(t * hk + hq) * d..][..d];
            let k = &x.k[(t * hk + hq) * d..][..d];
            let v = &x.v[(t * hv + h) * d..][..d];
            let beta = x.beta[t * hv + h];
            let decay = x.g[t * hv + h].exp();
            m.iter_mut().for_each(|s| *s *= decay);
            for j in 0..d {
                let sum = vec_dot_f32(&m[j * d..(j + 1) * d], k);
                delta[j] = (v[j] - sum) * beta;
            }
            for j in 0..d {
                let dj = delta[j];
                for (s, &ki) in m[j * d..(j + 1) * d].iter_mut().zip(k) {
                    *s = ki.mul_add(dj, *s);
                }
            }
            let o = &mut out[(t * hv + h) * d..][..d];
            for (j, oj) in o.iter_mut().enumerate() {
                *oj = vec_dot_f32(&m[j * d..(j + 1) * d], q) * scale;
            }
        }
    }
});

with_fma!(conv_rows, fn(x: &[f32], kernel: &[f32], state: &mut [f32], channels: usize, out: &mut [f32]) {
    let n = x.len() / channels;
    let d = kernel.len() / channels;
    let keep = d - 1;
    let mut window = vec![0.0f32; keep + n];
    for c in 0..channels {
        let s = &mut state[c * keep..(c + 1) * keep];
        window[..keep].copy_from_slice(s);
        for t in 0..n {
            window[keep + t] = x[t * channels + c];
        }
        let w = &kernel[c * d..(c + 1) * d];
        for t in 0..n {
            let mut sum = 0.0f32;
            for i in 0..d {
                // Rounded product, then rounded sum: llama.cpp's build
                // (measured on its dumps) does not contract this loop.
                sum += window[t + i] * w[i];
            }
            out[t * channels + c] = sum;
        }
        s.copy_from_slice(&window[n..n + keep]);
    }
});

/// The short causal convolution of a recurrent layer (llama.cpp's
/// `build_conv_state` + ggml_ssm_conv): for `n` rows of `channels` values,
/// `out[t, c] = Σ_i w[c, i] · u_c[t + i]` over the `d` taps `kernel[c·d ..]`,
/// where `u_c` is channel `c`'s `d - 1` state values followed by the rows'
/// values; the state then keeps `u_c`'s last `d - 1` values. Sums in `f32`,
/// each tap's product rounded before it is added, as llama.cpp's CPU build
/// computes ggml_ssm_conv (bit for bit on its dumps of qwen35moe).
pub fn ssm_conv(x: &[f32], kernel: &[f32], state: &mut [f32], channels: usize, out: &mut [f32]) {
    assert!(
        channels > 0
            && x.len().is_multiple_of(channels)
            && out.len() == x.len()
            && kernel.len().is_multiple_of(channels)
            && kernel.len() >= channels
            && state.len() == kernel.len() - channels,
        "ssm_conv: shape mismatch"
    );
    conv_rows(x, kernel, state, channels, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_continues_across_calls_as_one_batch() {
        let (c, d, n) = (3, 4, 7);
        let kernel: Vec<f32> = (0..c * d).map(|i| 0.1 * i as f32 - 0.3).collect();
        let x: Vec<f32> = (0..n * c).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut s1 = vec![0.0; c * (d - 1)];
        let mut whole = vec![0.0; n * c];
        ssm_conv(&x, &kernel, &mut s1, c, &mut whole);
        let mut s2 = vec![0.0; c * (d - 1)];
        let mut parts = vec![0.0; n * c];
        for t in 0..n {
            ssm_conv(
                &x[t * c..(t + 1) * c],
                &kernel,
                &mut s2,
                c,
                &mut parts[t * c..(t + 1) * c],
            );
        }
        assert_eq!(whole, parts);
        assert_eq!(s1, s2);
        // Row 0 sees zeros then x[0]: the last tap times x[0].
        for ch in 0..c {
            assert_eq!(whole[ch], kernel[ch * d + d - 1] * x[ch]);
        }
    }

    #[test]
    fn delta_rule_by_hand() {
        // One head of size 2, S = 0: after one token S[i][j] = k[i]·beta·v[j],
        // and o[j] = Σ_i S[i][j]·q[i] / sqrt(2).
        let p = DeltaNetParams {
            n_head_k: 1,
            n_head_v: 1,
            head_dim: 2,
        };
        let (q, k, v) = ([1.0f32, 0.0], [0.6f32, 0.8], [2.0f32, -1.0]);
        let (g, beta) = ([0.0f32], [0.5f32]);
        let mut s = vec![0.0; 4];
        let mut o = vec![0.0; 2];
        let x = DeltaNetInputs {
            q: &q[..],
            k: &k[..],
            v: &v[..],
            g: &g[..],
            beta: &beta[..],
        };
        delta_net(x, &mut s, &p, &mut o);
        let r = 1.0 / 2f32.sqrt();
        assert!((o[0] - 0.6 * 0.5 * 2.0 * r).abs() < 1e-6);
        assert!((o[1] + 0.6 * 0.5 * r).abs() < 1e-6);
        // A second token with k again: the delta rule removes what S already
        // predicts, so beta = 1 writes v exactly: S·k = v' afterwards.
        let v2 = [1.0f32, 1.0];
        let beta2 = [1.0f32];
        let x = DeltaNetInputs {
            v: &v2[..],
            beta: &beta2[..],
            q: &k[..],
            ..x
        };
        delta_net(x, &mut s, &p, &mut o);
        // o = Sᵀk / sqrt(2) with ‖k‖ = 1, and Sᵀk = v2.
        assert!((o[0] - r).abs() < 1e-6 && (o[1] - r).abs() < 1e-6);
    }

    #[test]
    fn tokens_one_at_a_time_equal_one_batch() {
        let p = DeltaNetParams {
            n_head_k: 2,
            n_head_v: 4,
            head_dim: 32,
        };
        let n = 5;
        let f = |len: usize, s: f32| -> Vec<f32> {
            (0..len)
                .map(|i| ((i as f32 + s) * 0.731).sin() * 0.3)
                .collect()
        };
        let (q, k, v) = (f(n * 64, 1.0), f(n * 64, 2.0), f(n * 128, 3.0));
        let g: Vec<f32> = f(n * 4, 4.0).iter().map(|x| -x.abs()).collect();
        let beta = f(n * 4, 5.0);
        let mut s1 = vec![0.0; p.state_len()];
        let mut o1 = vec![0.0; n * 128];
        let x = DeltaNetInputs {
            q: &q[..],
            k: &k[..],
            v: &v[..],
            g: &g[..],
            beta: &beta[..],
        };
        delta_net(x, &mut s1, &p, &mut o1);
        let mut s2 = vec![0.0; p.state_len()];
        let mut o2 = vec![0.0; n * 128];
        for t in 0..n {
            let x = DeltaNetInputs {
                q: &q[t * 64..(t + 1) * 64],
                k: &k[t * 64..(t + 1) * 64],
                v: &v[t * 128..(t + 1) * 128],
                g: &g[t * 4..(t + 1) * 4],
                beta: &beta[t * 4..(t + 1) * 4],
            };
            delta_net(x, &mut s2, &p, &mut o2[t * 128..(t + 1) * 128]);
        }
        assert_eq!(o1, o2);
        assert_eq!(s1, s2);
    }

    #[test]
    fn l2_norm_is_unit_length() {
        let x = [3.0f32, 4.0, 0.0, 0.0];
        let mut o = [0.0; 4];
        l2_norm(&x, 2, 1e-6, &mut o);
        assert!((o[0] - 0.6).abs() < 1e-6 && (o[1] - 0.8).abs() < 1e-6);
        assert_eq!(&o[2..], &[0.0, 0.0]);
    }

    #[test]
    fn unary_values() {
        let mut x = [0.0f32, 30.0, -1.0];
        unary(&mut x, 3, Unary::Softplus);
        assert!((x[0] - 2f32.ln()).abs() < 1e-7 && x[1] == 30.0);
        let mut y = [0.0f32];
        unary(&mut y, 1, Unary::Sigmoid);
        assert_eq!(y[0], 0.5);
        let mut z: Vec<f32> = (0..11).map(|i| i as f32 - 5.0).collect();
        unary(&mut z, 11, Unary::Silu);
        for (i, v) in z.iter().enumerate() {
            let x = i as f32 - 5.0;
            assert!((v - x / (1.0 + (-x).exp())).abs() < 1e-5);
        }
    }
}
