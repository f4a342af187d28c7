//! Products whose summation order must be llama.cpp's own: float weights (F32,
//! F16, BF16), the formats llama.cpp repacks (Q4_0, Q4_K, IQ4_NL) and the
//! K-quants its tiled kernel multiplies (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
//! IQ4_XS).
//!
//! quant-kernels multiplies every format; for float weights the order of
//! the additions decides the last bits, and those bits decide later f16
//! roundings (the KV cache), so they are visible in the logits. llama.cpp's
//! x86 (AVX2) build routes F32, F16 and BF16 products through llamafile's
//! tinyBLAS, which accumulates element `i` of a dot product into lane `i % 8`
//! with fused multiply-adds and adds the 8 lanes pairwise at the end.
//! Mirroring that order makes the logits of synth-F32, -F16 and -BF16
//! bit-identical to llama.cpp's. tinyBLAS takes only a multiple of 4
//! weight rows: other F32/F16 matrices (a shared expert's one-row gate), and
//! every product of `ggml_mul_mat_id` (experts), go through
//! `ggml_vec_dot_f32`/`_f16` — 4 accumulators of 8 lanes over blocks of 32. (tinyBLAS would use 16 lanes in an AVX-512
//! build, so the reference build is AVX2 only; that also rules out the
//! AVX-512-only Q2_K repack.)
//!
//! Q4_0, Q4_K and IQ4_NL matrices with a multiple of 8 rows are repacked at
//! load time by llama.cpp's x86 CPU backend (`ggml-cpu/repack.cpp`) and
//! multiplied by `ggml_gemm_*_8x8` on the first `n - n % 4` activation rows
//! and `ggml_gemv_*_8x8` on the rest. Both sum each 32-element block's
//! integer products exactly and add `sumi · (d_w·d_a)` into one accumulator
//! per output with a fused multiply-add; Q4_K adds scale-weighted sub-block
//! sums per super-block in the gemv but per pair of sub-blocks in the gemm,
//! its mins into a second accumulator subtracted at the end.
//!
//! The other K-quants (and Q4_K matrices that are not repacked) go through
//! ggml's tiled kernel (`ggml-cpu/tiled`) when a batch has 8 or more rows:
//! per super-block the exact integer sums `s1 = Σ scale·Σq·q8` and
//! `s2 = Σ min·bsum` become `res = d·s1`, `res = fma(-dmin, s2, res)`,
//! `acc = fma(res, d_a, acc)`. Smaller batches use `ggml_vec_dot_*`, which
//! quant-kernels' AVX2 kernels reproduce bit for bit (its goldens come from
//! ggml's x86 `quants.c`).
//!
//! The synthetic model amplifies a last-bit difference in any of these into
//! a mean KLD of ~3e-4; with these orders every synth file's logits are
//! bit-identical to llama.cpp's. As in llama.cpp, one activation row and a
//! batch take different kernels, so a quantized model's logits for a token
//! depend on whether it was decoded alone or in a batch.

use std::cell::Cell;

use gguf_format::GgmlType;

mod float;
mod kquant;

use float::*;
use kquant::*;

/// The activation format ggml pairs with weights of `ty` on these paths
/// (`vec_dot_type`), or `None` for float weights.
fn act_type(ty: GgmlType) -> Option<GgmlType> {
    match ty {
        GgmlType::Q4_0 | GgmlType::IQ4_NL => Some(GgmlType::Q8_0),
        GgmlType::Q2_K
        | GgmlType::Q3_K
        | GgmlType::Q4_K
        | GgmlType::Q5_K
        | GgmlType::Q6_K
        | GgmlType::IQ4_XS => Some(GgmlType::Q8_K),
        _ => None,
    }
}

/// Whether llama.cpp's x86 CPU backend repacks a `rows`-row matrix of `ty`
/// (`ggml_repack_get_optimal_repack_type`: Q4_0, Q4_K and IQ4_NL with AVX2
/// and a multiple of 8 rows; Q2_K only in AVX-512 builds, which llama.cpp's
/// F32 products show the reference build is not).
fn repacked(ty: GgmlType, rows: usize) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_K | GgmlType::IQ4_NL)
        && rows.is_multiple_of(8)
        && avx2()
}

/// Whether llama.cpp multiplies `ty` with its tiled K-quant kernel when the
/// batch has at least [`TILED_MIN_BATCH`] rows (and the matrix is not repacked).
fn tiled(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::IQ4_XS
    )
}

/// `ggml_tiled_min_batch`: smaller batches go through `vec_dot`.
const TILED_MIN_BATCH: usize = 8;

fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        quant_kernels::simd::features().avx2
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether [`matmul_float`] handles weights of type `ty` in a `rows × cols`
/// matrix (tinyBLAS needs whole lanes of 8; the quantized paths mirror
/// llama.cpp's x86 AVX2 build and need its activation quantizer).
pub fn handles(ty: GgmlType, rows: usize, cols: usize) -> bool {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => cols.is_multiple_of(8),
        _ => match act_type(ty) {
            Some(act) => {
                avx2()
                    && cols.is_multiple_of(ty.block_size())
                    && (repacked(ty, rows) || tiled(ty))
                    && quant_kernels::simd::from_float_for(act).is_some()
                    && quant_kernels::simd::vec_dot_for(ty).is_some()
            }
            None => false,
        },
    }
}

/// `y[b, r] = Σ_c W[r, c]·x[b, c]` for weights `w` (`rows × cols`, row-major
/// bytes of `ty`) and `n` activation rows, activations rounded to the weight
/// type first (ggml's `vec_dot_type`). Requires [`handles`]`(ty, rows, cols)`.
///
/// For repacked weights llama.cpp runs its gemm on the first `n - n % 4`
/// activation rows (four at a time) and its gemv on the rest; the two sum
/// Q4_K in different groupings, so the row index decides the order here too.
/// Other K-quants take the tiled kernel's order from 8 rows on, and
/// `vec_dot`'s below (quant-kernels' AVX2 kernels, which are ggml's).
pub fn matmul_float(
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    assert!(handles(ty, rows, cols) && x.len() == n * cols && y.len() == n * rows);
    // tinyBLAS takes only a multiple of 4 weight rows; llama.cpp multiplies
    // other float matrices (a shared expert's one-row gate) with vec_dot.
    if !rows.is_multiple_of(4) && matmul_vec_dot(ty, w, rows, cols, x, n, y).is_some() {
        return;
    }
    // The rounded or quantized activations go into this thread's buffers,
    // reused from product to product (taken out while in use, so a product
    // started inside this one would only allocate its own).
    let mut xr = SCRATCH_F32.take();
    let mut xq = SCRATCH_U8.take();
    matmul_with(ty, w, rows, cols, x, n, y, &mut xr, &mut xq);
    SCRATCH_F32.set(xr);
    SCRATCH_U8.set(xq);
}

thread_local! {
    /// [`matmul_float`]'s rounded activations, kept between products.
    static SCRATCH_F32: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// [`matmul_float`]'s quantized activations, kept between products.
    static SCRATCH_U8: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// [`matmul_float`] with buffers for the rounded (`xr`) and quantized (`xq`)
/// activations.
#[allow(clippy::too_many_arguments)]
fn matmul_with(
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    xr: &mut Vec<f32>,
    xq: &mut Vec<u8>,
) {
    let x = match ty {
        GgmlType::F16 | GgmlType::BF16 => {
            round_activations_into(ty, x, xr);
            &xr[..]
        }
        _ => x,
    };
    // Quantized weights pair with Q8_0 / Q8_K activations, quantized as
    // ggml's x86 build does (its 4-row interleaved quantizer for the gemm
    // gives the same values: where +amax and -amax tie it may flip the sign
    // of every quant and of the scale, which leaves each product unchanged).
    let mut act_row = 0;
    xq.clear();
    if let Some(act_ty) = act_type(ty) {
        let from_float = quant_kernels::simd::from_float_for(act_ty).expect("checked by handles");
        act_row = cols / act_ty.block_size() * act_ty.type_size();
        xq.resize(n * act_row, 0);
        // A batch's rows are quantized by the pool's threads, `QUANT_ROWS`
        // rows a task (as ggml converts `src1`).
        const QUANT_ROWS: usize = 16;
        quant_kernels::pool::for_each_chunk_mut(xq, QUANT_ROWS * act_row, |c, q| {
            let xs = &x[c * QUANT_ROWS * cols..];
            for (q, xb) in q.chunks_mut(act_row).zip(xs.chunks(cols)) {
                from_float(xb, q);
            }
        });
    }
    let is_repacked = repacked(ty, rows);
    let is_tiled = !is_repacked && tiled(ty) && n >= TILED_MIN_BATCH;
    let vec_dot = quant_kernels::simd::vec_dot_for(ty);
    let row_bytes = cols / ty.block_size() * ty.type_size();
    // Each task owns a chunk of whole weight rows (read once per batch) and
    // fills a rows × n tile, which the pool writes into y's columns. A
    // matrix-vector product streams its weights from memory: fewer, longer
    // chunks keep each thread's prefetching running (SmolLM2 F16 decoding,
    // 2 threads: ~+8% with 2 chunks a thread against 4).
    let per_thread = if n == 1 { 2 } else { 4 };
    let chunk = rows
        .div_ceil(rayon::current_num_threads() * per_thread)
        .max(1);
    let rows_of = |r0: usize, out: &[f32]| &w[r0 * row_bytes..][..out.len() / n * row_bytes];
    if is_tiled || is_repacked {
        quant_kernels::pool::for_each_row_chunk_transposed(y, rows, n, chunk, |r0, out| {
            kquant_rows(
                ty,
                rows_of(r0, out),
                row_bytes,
                xq,
                act_row,
                n,
                out,
                is_repacked,
            )
        });
    } else if xq.is_empty() {
        // The float kernel writes its outputs straight into `y`.
        quant_kernels::pool::for_each_row_chunk_direct(y, rows, n, chunk, |r0, out| {
            let w = &w[r0 * row_bytes..][..out.nrows() * row_bytes];
            float_rows(ty, w, cols, x, n, out)
        });
    } else {
        let vec_dot = vec_dot.expect("checked by handles");
        quant_kernels::pool::for_each_row_chunk_transposed(y, rows, n, chunk, |r0, out| {
            let ws = rows_of(r0, out);
            for (i, (wr, o)) in ws
                .chunks_exact(row_bytes)
                .zip(out.chunks_mut(n))
                .enumerate()
            {
                if n == 1 {
                    // One activation row streams the weights once, as in
                    // quant-kernels' matvec (without it the K-quant kernels
                    // wait on memory at every mapped page).
                    quant_kernels::simd::prefetch_ahead(ws, i * row_bytes, row_bytes, ws.len());
                }
                for (b, o) in o.iter_mut().enumerate() {
                    *o = vec_dot(cols, wr, &xq[b * act_row..][..act_row]);
                }
            }
        });
    }
}

/// Whether ggml's `MUL_MAT_ID` multiplies the rows routed to one expert of
/// type `ty` (a `rows`-row matrix) as one product whose per-row values
/// [`matmul_float`] reproduces for those rows together: the K-quants of
/// the tiled kernel (from 8 rows; `vec_dot` below, as here), when not
/// repacked. Repacked formats go through their gemv one row at a time,
/// other quantized formats through `vec_dot` (one row at a time here),
/// float weights through `vec_dot` ([`matmul_vec_dot`]).
pub fn expert_batches(ty: GgmlType, rows: usize, cols: usize) -> bool {
    tiled(ty) && !repacked(ty, rows) && handles(ty, rows, cols)
}

/// `y[b, r] = Σ_c W[r, c]·x[b, c]` for `F32` or `F16` weights in
/// `ggml_vec_dot_f32`/`ggml_vec_dot_f16`'s order (the products of
/// `ggml_mul_mat_id`, which does not take tinyBLAS), activations rounded to
/// f16 for F16 weights. `None` for other types.
pub fn matmul_vec_dot(
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) -> Option<()> {
    if !matches!(ty, GgmlType::F32 | GgmlType::F16) {
        return None;
    }
    assert!(x.len() == n * cols && y.len() == n * rows && w.len() >= rows * cols * ty.type_size());
    let xr;
    let x = match ty {
        GgmlType::F16 => {
            xr = round_activations(ty, x);
            &xr[..]
        }
        _ => x,
    };
    let row_bytes = cols * ty.type_size();
    let chunk = rows.div_ceil(rayon::current_num_threads() * 4).max(1);
    quant_kernels::pool::for_each_row_chunk_transposed(y, rows, n, chunk, |r0, out| {
        let wr = &w[r0 * row_bytes..][..out.len() / n * row_bytes];
        for (wr, o) in wr.chunks_exact(row_bytes).zip(out.chunks_mut(n)) {
            for (b, o) in o.iter_mut().enumerate() {
                let xb = &x[b * cols..(b + 1) * cols];
                *o = match ty {
                    GgmlType::F32 => vec_dot_ggml_f32(bytemuck::cast_slice(wr), xb),
                    _ => vec_dot_ggml_f16(bytemuck::cast_slice(wr), xb),
                };
            }
        }
    });
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    /// `rows` rows of `blocks` random super-blocks of `ty` with small finite
    /// f16 scales at the given byte offsets.
    fn random_rows(ty: GgmlType, rows: usize, blocks: usize, scales: &[usize]) -> Vec<u8> {
        let mut seed = 0x2545_f491u32;
        let mut w: Vec<u8> = (0..rows * blocks * ty.type_size())
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        for (i, b) in w.chunks_mut(ty.type_size()).enumerate() {
            for (k, &o) in scales.iter().enumerate() {
                let v = f16::from_f32(0.01 + 0.001 * ((i + k) % 7) as f32);
                b[o..o + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        w
    }

    /// Float matrices of 1-3 rows (tinyBLAS takes none) and experts' products
    /// sum as ggml_vec_dot_f32/f16: element i in accumulator (i/8)%4, lane
    /// i%8, the reduce, then the leftovers (here 40 = 32 + 8 elements).
    #[test]
    fn vec_dot_order_for_odd_row_counts() {
        let cols = 40;
        let w: Vec<f32> = (0..3 * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let x: Vec<f32> = (0..2 * cols)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 3.0)
            .collect();
        let want = |r: usize, b: usize| {
            let (wr, xb) = (&w[r * cols..][..cols], &x[b * cols..][..cols]);
            let mut acc = [[0.0f32; 8]; 4];
            for i in 0..32 {
                acc[(i / 8) % 4][i % 8] = wr[i].mul_add(xb[i], acc[(i / 8) % 4][i % 8]);
            }
            let v: [f32; 8] =
                std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
            let t = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
            let mut s = (t[0] + t[1]) + (t[2] + t[3]);
            for i in 32..cols {
                s = wr[i].mul_add(xb[i], s);
            }
            s
        };
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut y = vec![0.0f32; 2 * 3];
        matmul_float(GgmlType::F32, &bytes, 3, cols, &x, 2, &mut y);
        for b in 0..2 {
            for r in 0..3 {
                assert_eq!(
                    y[b * 3 + r].to_bits(),
                    want(r, b).to_bits(),
                    "row {r} token {b}"
                );
            }
        }
        assert!(matmul_vec_dot(GgmlType::Q8_0, &bytes, 3, cols, &x, 2, &mut y).is_none());
    }

    fn q8k(x: &[f32]) -> Vec<u8> {
        let from_float = quant_kernels::simd::portable_from_float(GgmlType::Q8_K).unwrap();
        let mut q = vec![0u8; x.len() / 256 * 292];
        from_float(x, &mut q);
        q
    }

    fn prepared(ty: GgmlType, row: &[u8]) -> Vec<KRow> {
        let mut k = KBlock::ZERO;
        row.chunks_exact(ty.type_size())
            .map(|xb| {
                decode_kblock(ty, xb, &mut k);
                KRow::new(&k, sub_block_len(ty))
            })
            .collect()
    }

    /// The prepared rows decode every format as ggml lays it out: the
    /// tiled order lands within rounding of ggml's portable `vec_dot`.
    #[test]
    fn prepared_rows_agree_with_portable_vec_dot() {
        let cases: [(GgmlType, &[usize]); 6] = [
            (GgmlType::Q2_K, &[80, 82]),
            (GgmlType::Q3_K, &[108]),
            (GgmlType::Q4_K, &[0, 2]),
            (GgmlType::Q5_K, &[0, 2]),
            (GgmlType::Q6_K, &[208]),
            (GgmlType::IQ4_XS, &[0]),
        ];
        let x: Vec<f32> = (0..1024)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let a = q8k(&x);
        for (ty, scales) in cases {
            let w = random_rows(ty, 8, 4, scales);
            let vec_dot = quant_kernels::simd::portable_vec_dot(ty).unwrap();
            for row in w.chunks(4 * ty.type_size()) {
                let ours = kquant_dot(&prepared(ty, row), &a, KOrder::Tiled);
                let theirs = vec_dot(1024, row, &a);
                assert!(
                    (ours - theirs).abs() <= 1e-4 * (1.0 + theirs.abs()),
                    "{ty:?}: {ours} vs {theirs}"
                );
            }
        }
    }

    /// Q4_K read directly and through prepared rows gives the same bits in
    /// every order.
    #[test]
    fn q4_k_direct_matches_prepared_rows() {
        let w = random_rows(GgmlType::Q4_K, 8, 4, &[0, 2]);
        let x: Vec<f32> = (0..1024)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 9.0)
            .collect();
        let a = q8k(&x);
        for row in w.chunks(4 * 144) {
            let blocks = prepared(GgmlType::Q4_K, row);
            for order in [KOrder::Tiled, KOrder::RepackGemv, KOrder::RepackGemm] {
                let direct = q4_k_direct(row, &a, order);
                let prep = kquant_dot(&blocks, &a, order);
                assert_eq!(direct.to_bits(), prep.to_bits());
            }
        }
    }
    /// [`matmul_float`] picks llama.cpp's kernel by batch size: repacked
    /// Q4_K takes the gemm order on rows `0..n - n % 4` and the gemv's on
    /// the rest; Q5_K and Q6_K take `vec_dot` below 8 rows and the tiled
    /// order from 8.
    #[test]
    fn matmul_float_follows_llama_cpp_kernel_choice() {
        if !avx2() {
            return;
        }
        let (rows, cols) = (8, 512);
        let x: Vec<f32> = (0..9 * cols)
            .map(|i| ((i * 29 % 83) as f32 - 41.0) / 11.0)
            .collect();
        let from_float = quant_kernels::simd::from_float_for(GgmlType::Q8_K).unwrap();
        let a: Vec<Vec<u8>> = x
            .chunks(cols)
            .map(|r| {
                let mut q = vec![0u8; cols / 256 * 292];
                from_float(r, &mut q);
                q
            })
            .collect();
        let check =
            |ty: GgmlType, scales: &[usize], n: usize, want: &dyn Fn(&[u8], usize) -> f32| {
                let w = random_rows(ty, rows, cols / 256, scales);
                let mut y = vec![0.0f32; n * rows];
                matmul_float(ty, &w, rows, cols, &x[..n * cols], n, &mut y);
                for (r, wr) in w.chunks(w.len() / rows).enumerate() {
                    for b in 0..n {
                        assert_eq!(
                            y[b * rows + r].to_bits(),
                            want(wr, b).to_bits(),
                            "{ty:?} n={n} b={b}"
                        );
                    }
                }
            };
        let q4k = |wr: &[u8], b: usize, n: usize| {
            let order = if b < n - n % 4 {
                KOrder::RepackGemm
            } else {
                KOrder::RepackGemv
            };
            q4_k_direct(wr, &a[b], order)
        };
        check(GgmlType::Q4_K, &[0, 2], 1, &|wr, b| q4k(wr, b, 1));
        check(GgmlType::Q4_K, &[0, 2], 6, &|wr, b| q4k(wr, b, 6));
        check(GgmlType::Q4_K, &[0, 2], 9, &|wr, b| q4k(wr, b, 9));
        let vec_dot = quant_kernels::simd::vec_dot_for(GgmlType::Q5_K).unwrap();
        check(GgmlType::Q5_K, &[0, 2], 7, &|wr, b| {
            vec_dot(cols, wr, &a[b])
        });
        check(GgmlType::Q5_K, &[0, 2], 8, &|wr, b| {
            kquant_dot(&prepared(GgmlType::Q5_K, wr), &a[b], KOrder::Tiled)
        });
        let vec_dot = quant_kernels::simd::vec_dot_for(GgmlType::Q6_K).unwrap();
        check(GgmlType::Q6_K, &[208], 3, &|wr, b| vec_dot(cols, wr, &a[b]));
    }
}
