//! Causal scaled-dot-product attention with grouped-query heads over a KV cache (CPU).

use half::f16;

use crate::ops::{hsum8, softmax_scaled, softmax_scaled_sink};

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
    /// Sliding window (llama.cpp's `n_swa`, standard type): a query at
    /// position `p` sees only positions `j` with `p - j < window`.
    pub window: Option<usize>,
    /// Logit soft-capping: `K·Q` becomes `cap·tanh(K·Q / cap)` before the
    /// scaled softmax (Gemma 2's `attn_logit_softcapping`).
    pub softcap: Option<f32>,
}

impl AttentionParams {
    /// Plain causal attention: no window, no soft-capping.
    pub fn new(n_head: usize, n_head_kv: usize, head_dim: usize, scale: f32) -> AttentionParams {
        AttentionParams {
            n_head,
            n_head_kv,
            head_dim,
            scale,
            window: None,
            softcap: None,
        }
    }

    /// The first position a query at position `pos` attends to.
    pub fn first_visible(&self, pos: usize) -> usize {
        match self.window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        }
    }
}

/// What llama.cpp applies to a row of `K·Q` before the softmax: the
/// soft-cap (`ggml_scale` by `1/cap`, `tanhf`, `ggml_scale` by `cap`) and the
/// mask (`-inf` before `first`, which ggml's softmax turns into 0).
fn cap_and_mask(scores: &mut [f32], first: usize, softcap: Option<f32>) {
    if let Some(cap) = softcap {
        let inv = 1.0 / cap;
        for s in scores.iter_mut() {
            *s = (*s * inv).tanh() * cap;
        }
    }
    for s in &mut scores[..first] {
        *s = f32::NEG_INFINITY;
    }
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
    attention_with(q, k, v, pos0, p, None, out, true)
}

/// [`attention`] with a learned sink logit per query head (gpt-oss's
/// `attn_sinks`, `sinks.len() == n_head`): the softmax of head `h` counts
/// `sinks[h]` as one more logit whose probability goes nowhere
/// (`ggml_soft_max_add_sinks`; [`crate::ops::softmax_scaled_sink`]).
pub fn attention_sinks<E: KvElement>(
    q: &[f32],
    k: &[E],
    v: &[E],
    pos0: usize,
    p: &AttentionParams,
    sinks: &[f32],
    out: &mut [f32],
) {
    assert_eq!(sinks.len(), p.n_head, "one sink per query head");
    attention_with(q, k, v, pos0, p, Some(sinks), out, true)
}

/// A row of scores to probabilities: scaled softmax, with the head's sink if any.
fn softmax_head(scores: &mut [f32], scale: f32, sink: Option<f32>) {
    match sink {
        Some(s) => softmax_scaled_sink(scores, scale, s),
        None => softmax_scaled(scores, scale),
    }
}

/// [`attention`] (with sinks if given), with the SIMD kernels only where
/// `allow_simd` (the tests compare both paths).
#[allow(clippy::too_many_arguments)] // the operation's inputs, spelled out
fn attention_with<E: KvElement>(
    q: &[f32],
    k: &[E],
    v: &[E],
    pos0: usize,
    p: &AttentionParams,
    sinks: Option<&[f32]>,
    out: &mut [f32],
    allow_simd: bool,
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
    #[cfg(target_arch = "x86_64")]
    let simd = allow_simd && avx2::usable::<E>(hd);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = allow_simd;
    // Tasks of whole heads, a few per thread; each task has its own buffers.
    let units = n_rows * p.n_head;
    let per_task = units
        .div_ceil(rayon::current_num_threads().max(1) * 4)
        .max(1);
    quant_kernels::pool::for_each_chunk_mut(out, per_task * hd, |c, out| {
        let mut bufs = HeadBuffers::new(hd);
        for (i, o) in out.chunks_mut(hd).enumerate() {
            let unit = c * per_task + i;
            let (t, h) = (unit / p.n_head, unit % p.n_head);
            let head = Head {
                q: &q[t * q_width + h * hd..][..hd],
                k: &k[h / group * hd..],
                v: &v[h / group * hd..],
                stride: kv_width,
                n_kv: pos0 + t + 1,
                first: p.first_visible(pos0 + t),
                softcap: p.softcap,
                scale: p.scale,
                sink: sinks.map(|s| s[h]),
                decode,
            };
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: `usable` checked AVX2, FMA and F16C, that `E`
                // is `f32` or `f16`, and that `hd` is a multiple of 8.
                unsafe { avx2::head(&head, &mut bufs, o) };
                continue;
            }
            head_portable(&head, &mut bufs, o);
        }
    });
}

/// One (query row, head) unit of [`attention`]: the query, the cache from
/// its KV head's first element on (positions `stride` elements apart).
struct Head<'a, E> {
    q: &'a [f32],
    k: &'a [E],
    v: &'a [E],
    stride: usize,
    n_kv: usize,
    /// Positions before it are masked (sliding window).
    first: usize,
    softcap: Option<f32>,
    scale: f32,
    /// The head's sink logit (gpt-oss), if any.
    sink: Option<f32>,
    decode: bool,
}

/// A task's scratch space.
struct HeadBuffers {
    qh: Vec<f32>,
    scores: Vec<f32>,
    lanes: Vec<f32>,
}

impl HeadBuffers {
    fn new(hd: usize) -> Self {
        Self {
            qh: vec![0.0; hd],
            scores: Vec::new(),
            lanes: vec![0.0; 32 * hd],
        }
    }
}

/// One head's attention, one element at a time (the reference order).
fn head_portable<E: KvElement>(u: &Head<'_, E>, bufs: &mut HeadBuffers, o: &mut [f32]) {
    let hd = o.len();
    let (qh, scores, lanes) = (&mut bufs.qh[..hd], &mut bufs.scores, &mut bufs.lanes);
    for (d, &x) in qh.iter_mut().zip(u.q) {
        *d = E::round(x);
    }
    scores.clear();
    scores.extend((0..u.n_kv).map(|j| {
        let kr = &u.k[j * u.stride..][..hd];
        if u.decode {
            dot_vec(qh, kr)
        } else {
            dot_lanes8(qh, kr)
        }
    }));
    cap_and_mask(scores, u.first, u.softcap);
    softmax_head(scores, u.scale, u.sink);
    // V·P, with the probabilities rounded to the cache type. Lane l of
    // output d accumulates the positions j with j % lanes == l. The
    // KV window llama.cpp multiplies over is padded with masked
    // (zero-probability) cells to a multiple of 32, so every position
    // takes the vector path.
    let n_lanes = if u.decode { 32 } else { 8 };
    lanes[..n_lanes * hd].fill(0.0);
    for (j, &s) in scores.iter().enumerate() {
        let w = E::round(s);
        let lane = &mut lanes[(j % n_lanes) * hd..][..hd];
        for (a, &x) in lane.iter_mut().zip(&u.v[j * u.stride..][..hd]) {
            *a = E::madd(w, x, *a);
        }
    }
    for (d, o) in o.iter_mut().enumerate() {
        let l = |i: usize| lanes[i * hd + d];
        *o = if u.decode {
            let acc: [[f32; 8]; 4] = std::array::from_fn(|a| std::array::from_fn(|i| l(8 * a + i)));
            reduce_4x8(&acc)
        } else {
            hsum8(&std::array::from_fn(l))
        };
    }
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

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! [`head_portable`](super::head_portable) with AVX2 + FMA + F16C, lane
    //! for lane: each 8-lane accumulator of the reference is one `__m256`,
    //! each multiply-add one FMA (for an `f16` cache the product of two
    //! `f16` values is exact, so the reference's separate multiply and add
    //! round the same way), and the final lane sums are the reference's
    //! additions done for 8 outputs at once.

    use std::any::TypeId;
    use std::arch::x86_64::*;

    use half::f16;

    use super::{Head, HeadBuffers, KvElement};
    use crate::ops::x86::hsum_float_8;

    fn is_f16<E: 'static>() -> bool {
        TypeId::of::<E>() == TypeId::of::<f16>()
    }

    /// Whether [`head`] handles caches of `E` with heads of `hd` elements
    /// on this CPU.
    pub(super) fn usable<E: KvElement>(hd: usize) -> bool {
        (is_f16::<E>() || TypeId::of::<E>() == TypeId::of::<f32>())
            && hd.is_multiple_of(8)
            && hd > 0
            && quant_kernels::simd::features().avx2
    }

    /// 8 cache elements at `p` as f32 (exact).
    ///
    /// # Safety
    /// `E` is `f32` or `f16` and `p` is readable for 8 elements.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<E: KvElement>(p: *const E) -> __m256 {
        // SAFETY: by the caller's contract; unaligned loads.
        unsafe {
            if is_f16::<E>() {
                _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
            } else {
                _mm256_loadu_ps(p as *const f32)
            }
        }
    }

    /// `E::round` on 8 lanes (F16C rounds to nearest even, as `f16::from_f32`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn round8<E: KvElement>(v: __m256) -> __m256 {
        if is_f16::<E>() {
            _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
        } else {
            v
        }
    }

    /// `E::round` on a slice.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn round_all<E: KvElement>(x: &mut [f32]) {
        if !is_f16::<E>() {
            return;
        }
        let mut c = x.chunks_exact_mut(8);
        for c in &mut c {
            // SAFETY: `c` holds 8 floats.
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), round8::<E>(_mm256_loadu_ps(c.as_ptr()))) };
        }
        for v in c.into_remainder() {
            *v = E::round(*v);
        }
    }

    /// `GGML_F32_VEC_REDUCE`: [`reduce_4x8`](super::reduce_4x8) of one vector per accumulator.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn reduce_4x8_v(a: [__m256; 4]) -> f32 {
        let x = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]));
        // [x0+x4, x1+x5, x2+x6, x3+x7], then two horizontal adds.
        let t = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
        let t = _mm_hadd_ps(t, t);
        _mm_cvtss_f32(_mm_hadd_ps(t, t))
    }

    /// tinyBLAS's `a·b` (lane `i % 8`, [`hsum_float_8`]); `a.len()` a multiple of 8.
    ///
    /// # Safety
    /// As [`load8`] for every 8 elements from `b`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_lanes8<E: KvElement>(a: &[f32], b: *const E) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (s, a) in a.chunks_exact(8).enumerate() {
            // SAFETY: `a` holds 8 floats; `b` by the caller's contract.
            unsafe {
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr()), load8(b.add(8 * s)), acc);
            }
        }
        hsum_float_8(acc)
    }

    /// [`dot_lanes8`] of `a` with the 4 rows `b`, `b + stride`, … at once.
    ///
    /// # Safety
    /// As [`load8`] for `a.len()` elements from each row.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_lanes8_x4<E: KvElement>(a: &[f32], b: *const E, stride: usize) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (s, a) in a.chunks_exact(8).enumerate() {
            // SAFETY: `a` holds 8 floats; the rows by the caller's contract.
            unsafe {
                let av = _mm256_loadu_ps(a.as_ptr());
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(av, load8(b.add(r * stride + 8 * s)), *acc);
                }
            }
        }
        acc.map(|a| hsum_float_8(a))
    }

    /// `ggml_vec_dot_f16`/`_f32`'s `a·b`: 4 accumulators over blocks of
    /// 32, [`reduce_4x8`](super::reduce_4x8), the tail in `f64`; `a.len()` a multiple of 8.
    ///
    /// # Safety
    /// As [`load8`] for `a.len()` elements from `b`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_vec<E: KvElement>(a: &[f32], b: *const E) -> f32 {
        let n32 = a.len() / 32 * 32;
        let mut acc = [_mm256_setzero_ps(); 4];
        for (blk, a) in a[..n32].chunks_exact(32).enumerate() {
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `a` holds 32 floats; `b` by the caller's contract.
                unsafe {
                    let av = _mm256_loadu_ps(a.as_ptr().add(8 * r));
                    *acc = _mm256_fmadd_ps(av, load8(b.add(32 * blk + 8 * r)), *acc);
                }
            }
        }
        let mut sum = reduce_4x8_v(acc) as f64;
        for (i, &x) in a[n32..].iter().enumerate() {
            // SAFETY: element `n32 + i < a.len()` of `b`.
            let y = unsafe { *b.add(n32 + i) };
            sum += (x * y.to_f32()) as f64;
        }
        sum as f32
    }

    /// One head's attention, as [`head_portable`](super::head_portable).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C, `E` is `f32` or `f16`, and `o.len()`
    /// (the head size) is a multiple of 8.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn head<E: KvElement>(
        u: &Head<'_, E>,
        bufs: &mut HeadBuffers,
        o: &mut [f32],
    ) {
        let hd = o.len();
        let last = (u.n_kv - 1) * u.stride + hd;
        assert!(u.q.len() == hd && u.k.len() >= last && u.v.len() >= last);
        let (qh, scores) = (&mut bufs.qh[..hd], &mut bufs.scores);
        qh.copy_from_slice(u.q);
        round_all::<E>(qh);
        scores.clear();
        scores.resize(u.n_kv, 0.0);
        let mut j = 0;
        if !u.decode {
            // Four positions at a time: four independent FMA chains instead
            // of one (each position's own order is unchanged).
            while j + 4 <= u.n_kv {
                // SAFETY: rows j..j+4 end by `last` (asserted); E by contract.
                let d = unsafe { dot_lanes8_x4(qh, u.k.as_ptr().add(j * u.stride), u.stride) };
                scores[j..j + 4].copy_from_slice(&d);
                j += 4;
            }
        }
        for (j, s) in scores.iter_mut().enumerate().skip(j) {
            // SAFETY: row j's `hd` elements end by `last` (asserted); E by contract.
            unsafe {
                let kr = u.k.as_ptr().add(j * u.stride);
                *s = if u.decode {
                    dot_vec(qh, kr)
                } else {
                    dot_lanes8(qh, kr)
                };
            }
        }
        super::cap_and_mask(scores, u.first, u.softcap);
        super::softmax_head(scores, u.scale, u.sink);
        round_all::<E>(scores);
        // V·P: for each 8 outputs, the lanes of one group of 8 (positions
        // j with j % n_lanes in 8a..8a+8) in registers, then summed.
        let n_lanes = if u.decode { 32 } else { 8 };
        let mut lanes = [_mm256_setzero_ps(); 32];
        let fma_row = |acc: &mut __m256, j: usize, d: usize| {
            // SAFETY: row j's elements d..d+8 end by `last` (asserted).
            unsafe {
                let vv = load8(u.v.as_ptr().add(j * u.stride + d));
                *acc = _mm256_fmadd_ps(_mm256_set1_ps(scores[j]), vv, *acc);
            }
        };
        for d in (0..hd).step_by(8) {
            for a in 0..n_lanes / 8 {
                let mut acc = [_mm256_setzero_ps(); 8];
                let mut j0 = 8 * a;
                while j0 + 8 <= u.n_kv {
                    for (i, acc) in acc.iter_mut().enumerate() {
                        fma_row(acc, j0 + i, d);
                    }
                    j0 += n_lanes;
                }
                if j0 < u.n_kv {
                    for (i, acc) in acc.iter_mut().enumerate() {
                        if j0 + i < u.n_kv {
                            fma_row(acc, j0 + i, d);
                        }
                    }
                }
                lanes[8 * a..][..8].copy_from_slice(&acc);
            }
            let out = if u.decode {
                // reduce_4x8 per output: lane 8a+i is accumulator a, lane i.
                let l = |i: usize| lanes[i];
                let x: [__m256; 8] = std::array::from_fn(|i| {
                    _mm256_add_ps(
                        _mm256_add_ps(l(i), l(16 + i)),
                        _mm256_add_ps(l(8 + i), l(24 + i)),
                    )
                });
                let t: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(x[i], x[4 + i]));
                _mm256_add_ps(_mm256_add_ps(t[0], t[1]), _mm256_add_ps(t[2], t[3]))
            } else {
                // hsum8 per output.
                let l = |i: usize| lanes[i];
                _mm256_add_ps(
                    _mm256_add_ps(_mm256_add_ps(l(0), l(4)), _mm256_add_ps(l(2), l(6))),
                    _mm256_add_ps(_mm256_add_ps(l(1), l(5)), _mm256_add_ps(l(3), l(7))),
                )
            };
            // SAFETY: `d + 8 ≤ hd = o.len()`.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(d), out) };
        }
    }
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
            window: None,
            softcap: None,
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
            window: None,
            softcap: None,
        };
        let k = vec![0.0f32, 0.0, 0.0, 0.0];
        let v = vec![1.0f32, 1.0, 3.0, 3.0];
        let q = vec![1.0f32; 4];
        let mut out = vec![0.0f32; 4];
        attention(&q, &k, &v, 0, &p, &mut out);
        assert_eq!(out, vec![1.0, 1.0, 2.0, 2.0]);
    }

    #[test]
    fn a_sink_takes_its_share_of_the_probability() {
        let p = AttentionParams::new(1, 1, 4, 1.0);
        let k = vec![0.0f32; 4];
        let v = vec![1.0f32, -2.0, 4.0, 0.5];
        let q = vec![1.0f32; 4];
        let mut out = vec![0.0f32; 4];
        // Score 0 and sink 0: half the probability stays with the sink.
        attention_sinks(&q, &k, &v, 0, &p, &[0.0], &mut out);
        assert_eq!(out, vec![0.5, -1.0, 2.0, 0.25]);
        // A sink of -inf is no sink.
        attention_sinks(&q, &k, &v, 0, &p, &[f32::NEG_INFINITY], &mut out);
        assert_eq!(out, v);
    }

    fn random(seed: &mut u32, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 17;
                *seed ^= *seed << 5;
                (*seed as f32 / u32::MAX as f32 - 0.5) * 6.0
            })
            .collect()
    }

    /// The SIMD heads give the reference's bits: f16 and f32 caches,
    /// decoding (one row) and batches, grouped heads, head sizes that are
    /// multiples of 8 but not of 32, windows not a multiple of 8 or 32.
    fn simd_matches_portable<E: KvElement>() {
        let mut seed = 0x1234_5677u32;
        for (n_head, n_head_kv, hd) in [(2, 1, 8), (3, 3, 40), (9, 3, 64), (4, 2, 72)] {
            let p = AttentionParams {
                n_head,
                n_head_kv,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
                window: None,
                softcap: None,
            };
            for (pos0, n_rows) in [(0, 1), (0, 5), (37, 1), (70, 1), (11, 13), (29, 8)] {
                let n_ctx = pos0 + n_rows;
                let kv: Vec<E> = random(&mut seed, 2 * n_ctx * n_head_kv * hd)
                    .into_iter()
                    .map(E::from_f32)
                    .collect();
                let (k, v) = kv.split_at(n_ctx * n_head_kv * hd);
                let q = random(&mut seed, n_rows * n_head * hd);
                let mut want = vec![0.0f32; q.len()];
                let sinks = random(&mut seed, n_head);
                let sinks = (n_rows % 2 == 1).then_some(&sinks[..]);
                attention_with(&q, k, v, pos0, &p, sinks, &mut want, false);
                let mut got = vec![0.0f32; q.len()];
                attention_with(&q, k, v, pos0, &p, sinks, &mut got, true);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        w.to_bits(),
                        "hd={hd} heads={n_head}/{n_head_kv} pos0={pos0} rows={n_rows} out {i}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn simd_matches_portable_f16_cache() {
        simd_matches_portable::<f16>();
    }

    #[test]
    fn simd_matches_portable_f32_cache() {
        simd_matches_portable::<f32>();
    }
}
