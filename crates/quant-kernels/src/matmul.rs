//! Matrix products of a quantized weight matrix with f32 activations.
//!
//! Activations are first quantized to the weight format's `vec_dot_type`
//! (as llama.cpp does), into a reusable [`Scratch`]; then rows of weights
//! are split into chunks, one task of [`crate::pool`] per chunk. [`matmul`]
//! walks each chunk's rows against a tile of the batch so each weight row is
//! read from memory once per tile, which makes prompt processing
//! compute-bound; Q8_0-activation formats first interleave the batch into
//! [`simd::Q8_0x16`] (or, widened, [`simd::Q8_0x16w`]) panels where the CPU
//! has kernels for them, else [`simd::Q8_0x8`] panels (and one
//! [`simd::Q8_0x4`] for a rest of three or four rows), Q8_1-activation
//! formats (Q4_1, Q5_1) into [`simd::Q8_1x8`] panels.

use crate::formats::{self, row_bytes};
use crate::pool::{self, ColumnBlock};
use crate::simd::{
    self, FromFloatFn, Pack16Fn, Panel16x0DotFn, Q8_0Panel, Q8_0x16, Q8_0x16w, Q8_0x4, Q8_0x8,
    Q8_1x8, VecDotFn,
};
use crate::{GgmlType, QuantError};

/// A quantized weight matrix view: `rows` rows of `cols` elements each, row-major, borrowed bytes.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: &'a [u8],
}

impl<'a> QMatrix<'a> {
    /// Views `data` as a `rows`×`cols` matrix of `ty`, checking that the type
    /// is supported, `cols` is a whole number of blocks and `data` has
    /// exactly the matrix's bytes.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, QuantError> {
        if !formats::is_supported(ty) {
            return Err(QuantError::UnsupportedType(ty));
        }
        let block_size = ty.block_size();
        let rb = row_bytes(ty, cols).ok_or(QuantError::PartialBlock {
            ty,
            n: cols,
            block_size,
        })?;
        let expected = rb
            .checked_mul(rows)
            .ok_or(QuantError::TooLarge { ty, rows, cols })?;
        if data.len() != expected {
            return Err(QuantError::BadLength {
                ty,
                what: "matrix data",
                n: rows * cols,
                expected,
                actual: data.len(),
            });
        }
        Ok(QMatrix {
            ty,
            rows,
            cols,
            row_bytes: rb,
            data,
        })
    }

    /// The weight format.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Number of rows (outputs of [`matvec`]).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (inputs of [`matvec`]).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The matrix's bytes, row-major.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// The bytes of row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
}

/// Reusable buffers for quantized activations (grows once, then reused).
#[derive(Default)]
pub struct Scratch {
    /// Quantized activations; u64 so every block type is aligned in place.
    act: Vec<u64>,
    /// Q8_0 activations interleaved four rows at a time (Q8_0, Q5_0, Q4_0 weights).
    panels: Vec<Q8_0x4>,
    /// Q8_0 activations interleaved eight rows at a time (the same weights).
    panels8_0: Vec<Q8_0x8>,
    /// Q8_0 activations interleaved sixteen rows at a time, lane-major (the same weights).
    panels16: Vec<Q8_0x16>,
    /// Q8_0 activations sixteen rows at a time, widened to i16 (the same weights).
    panels16w: Vec<Q8_0x16w>,
    /// Q8_1 activations interleaved eight rows at a time (Q4_1, Q5_1 weights).
    panels8: Vec<Q8_1x8>,
}

impl Scratch {
    /// Quantizes the `n` rows of `x` (each `cols` long) to `act_ty` and
    /// returns the bytes, one row after another, `act_row` bytes each.
    fn quantize<'s>(
        &'s mut self,
        act_ty: GgmlType,
        from_float: FromFloatFn,
        x: &[f32],
        n: usize,
        cols: usize,
    ) -> (&'s [u8], usize) {
        let act_row = row_bytes(act_ty, cols).expect("activation row is whole blocks");
        let total = act_row * n;
        if self.act.len() * 8 < total {
            self.act.resize(total.div_ceil(8), 0);
        }
        let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut self.act)[..total];
        if n == 1 {
            from_float(x, bytes);
        } else {
            pool::for_each_chunk_mut(bytes, act_row, |b, dst| {
                from_float(&x[b * cols..(b + 1) * cols], dst)
            });
        }
        (bytes, act_row)
    }
}

/// Rows per rayon task: enough tasks to balance the threads, each with at
/// least ~32 KiB of weights so scheduling stays negligible.
fn rows_per_task(rows: usize, row_bytes: usize, batch: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let balanced = rows.div_ceil(threads * 4);
    let min_rows = (32 * 1024 / (row_bytes * batch.max(1)).max(1)).max(1);
    balanced.max(min_rows).min(rows).max(1)
}

fn kernels_of(w: &QMatrix<'_>) -> (GgmlType, VecDotFn, FromFloatFn) {
    let act_ty = formats::kernels(w.ty)
        .expect("QMatrix holds a supported type")
        .vec_dot_type;
    let vec_dot = simd::vec_dot_for(w.ty).expect("supported type has a dot product");
    let from_float = simd::from_float_for(act_ty).expect("vec_dot_type has a quantizer");
    (act_ty, vec_dot, from_float)
}

/// `y[r] = Σ_c W[r,c]·x[c]` (W: rows×cols, x: cols, y: rows): a single-row product (decoding).
///
/// Where the CPU has a several-rows kernel for the format
/// ([`simd::rows_dot_for`]), it takes four weight rows a call, sharing
/// each activation block among them; the outputs are the single-row
/// kernel's bits.
pub fn matvec(w: &QMatrix<'_>, x: &[f32], y: &mut [f32], scratch: &mut Scratch) {
    assert_eq!(
        x.len(),
        w.cols,
        "matvec: x has {} elements, W has {} columns",
        x.len(),
        w.cols
    );
    assert_eq!(
        y.len(),
        w.rows,
        "matvec: y has {} elements, W has {} rows",
        y.len(),
        w.rows
    );
    let (act_ty, vec_dot, from_float) = kernels_of(w);
    let (act, _) = scratch.quantize(act_ty, from_float, x, 1, w.cols);
    let chunk = rows_per_task(w.rows, w.row_bytes, 1);
    let cols = w.cols;
    // A few rows per call where a kernel shares each activation block among
    // them, else one.
    let rows_dot = simd::rows_dot_for(w.ty);
    let group = if rows_dot.is_some() { 4 } else { 1 };
    pool::for_each_chunk_mut(y, chunk, |c, y| {
        let r0 = c * chunk;
        let end = (r0 + y.len()) * w.row_bytes;
        for (g, y) in y.chunks_mut(group).enumerate() {
            let from = (r0 + group * g) * w.row_bytes;
            let rows = &w.data[from..from + y.len() * w.row_bytes];
            simd::prefetch_ahead(w.data, from, rows.len(), end);
            match rows_dot {
                Some(rows_dot) => rows_dot(rows, y.len(), act, y),
                None => y[0] = vec_dot(cols, rows, act),
            }
        }
    });
}

/// Stores a panel product's outputs into a task's tile (batch row-major,
/// `nrows` values a row): `r[k]` at `at + k·nrows`, as many as the tile
/// has rows left (a panel padded with zero rows has more outputs).
#[inline(always)]
fn scatter(r: &[f32], out: &mut [f32], at: usize, nrows: usize) {
    for (o, &v) in out[at..].iter_mut().step_by(nrows).zip(r) {
        *o = v;
    }
}

/// As [`scatter`], into a task's columns of the output itself: `r[k]` is
/// activation row `b + k`'s output at column `i`, as many as there are
/// rows left (a panel padded with zero rows has more outputs).
#[inline(always)]
fn scatter_to(r: &[f32], out: &mut ColumnBlock<'_>, b: usize, i: usize) {
    for (k, &v) in r.iter().enumerate().take(out.n().saturating_sub(b)) {
        out.row_mut(b + k)[i] = v;
    }
}

/// Batch rows handled against one weight row while it is hot in L1.
const BATCH_TILE: usize = 16;

/// `Y[b,r] = Σ_c W[r,c]·X[b,c]` (X: n×cols row-major, Y: n×rows row-major): batched prompt processing.
pub fn matmul(w: &QMatrix<'_>, x: &[f32], n: usize, y: &mut [f32], scratch: &mut Scratch) {
    assert_eq!(
        x.len(),
        n * w.cols,
        "matmul: X has {} elements, not n×cols = {}×{}",
        x.len(),
        n,
        w.cols
    );
    assert_eq!(
        y.len(),
        n * w.rows,
        "matmul: Y has {} elements, not n×rows = {}×{}",
        y.len(),
        n,
        w.rows
    );
    if n == 1 {
        return matvec(w, x, y, scratch);
    }
    if n == 0 || w.rows == 0 {
        return;
    }
    let (act_ty, vec_dot, from_float) = kernels_of(w);
    if let Some(panel) = simd::q8_0_panel() {
        if panel.dot_for(w.ty).is_some() {
            return matmul_q8_0_panels(w, x, n, y, scratch, &panel, vec_dot, from_float);
        }
    }
    if let Some(dot) = simd::q8_1_panel().and_then(|p| p.dot_for(w.ty)) {
        return matmul_q8_1_panels(w, x, n, y, scratch, dot, vec_dot, from_float);
    }
    let (act, act_row) = scratch.quantize(act_ty, from_float, x, n, w.cols);
    let chunk = rows_per_task(w.rows, w.row_bytes, n);
    let cols = w.cols;
    let act_of = |b: usize| &act[b * act_row..(b + 1) * act_row];
    // Each task multiplies a chunk of whole weight rows into an n×rows tile.
    pool::for_each_row_chunk_columns(y, w.rows, n, chunk, |r0, out| {
        let nrows = out.len() / n;
        for b0 in (0..n).step_by(BATCH_TILE) {
            let b1 = (b0 + BATCH_TILE).min(n);
            for i in 0..nrows {
                let wr = w.row(r0 + i);
                for b in b0..b1 {
                    out[b * nrows + i] = vec_dot(cols, wr, act_of(b));
                }
            }
        }
    });
}

/// [`matmul`] for weights with Q8_0 activations through a [`simd::Q8_0Panel`]: the
/// activations are quantized as usual, then interleaved sixteen rows at a
/// time into [`Q8_0x16`] (or, widened to i16, [`Q8_0x16w`]) panels where
/// the instruction set has kernels for them (a rest of nine rows or more
/// padded with zeros into one more), or
/// eight at a time into [`Q8_0x8`] panels; each weight row meets a tile of
/// panels while hot in L1. Of the rows past the last whole eight-row panel,
/// five to seven go into one more panel padded with zeros, three or four
/// into a [`Q8_0x4`] panel (padded with a zero row), one or two use the
/// single product.
#[allow(clippy::too_many_arguments)]
fn matmul_q8_0_panels(
    w: &QMatrix<'_>,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    scratch: &mut Scratch,
    panel: &Q8_0Panel,
    vec_dot: VecDotFn,
    from_float: FromFloatFn,
) {
    let dot4 = panel.dot_for(w.ty).expect("checked by the caller");
    let dot8 = panel.dot8_for(w.ty).expect("every panel format has both");
    let lane16 = panel.dot16_for(w.ty).zip(panel.pack16);
    let wide16 = panel.dot16w_for(w.ty).zip(panel.pack16w);
    let cols = w.cols;
    let nb = cols / 32;
    // Rows `..b8` in sixteen-row panels, `b8..` as below.
    let groups16 = if lane16.is_some() || wide16.is_some() {
        n / 16 + usize::from(n % 16 >= 9)
    } else {
        0
    };
    let b8 = (16 * groups16).min(n);
    let rest = (n - b8) % 8;
    let groups = (n - b8) / 8 + usize::from(rest >= 5);
    // Rows from `b4` on: one four-row panel, or single products.
    let b4 = (b8 + 8 * groups).min(n);
    let four = n - b4 >= 3;
    let singles = if four { n } else { b4 };
    let mut panels16 = std::mem::take(&mut scratch.panels16);
    let mut panels16w = std::mem::take(&mut scratch.panels16w);
    let mut panels8 = std::mem::take(&mut scratch.panels8_0);
    if panels8.len() < groups * nb {
        panels8.resize(groups * nb, Q8_0x8::default());
    }
    let mut panels4 = std::mem::take(&mut scratch.panels);
    if four && panels4.len() < nb {
        panels4.resize(nb, Q8_0x4::default());
    }
    let (act, act_row) = scratch.quantize(GgmlType::Q8_0, from_float, x, n, cols);
    let act_of = |b: usize| &act[b * act_row..(b + 1) * act_row];
    // The sixteen-row panels, of whichever kind the instruction set has.
    let (lane_panels, wide_panels) = if let Some((_, pack16)) = wide16 {
        let p = pack_panels16(&mut panels16w, pack16, groups16, nb, n, &act_of);
        (&[][..], p)
    } else if let Some((_, pack16)) = lane16 {
        let p = pack_panels16(&mut panels16, pack16, groups16, nb, n, &act_of);
        (p, &[][..])
    } else {
        (&[][..], &[][..])
    };
    if groups > 0 {
        pool::for_each_chunk_mut(&mut panels8[..groups * nb], nb, |g, out| {
            let from = b8 + 8 * g;
            let rows: Vec<&[u8]> = (from..(from + 8).min(n)).map(act_of).collect();
            (panel.pack8)(&rows, out);
        });
    }
    if four {
        // A Q8_0 row of zero bytes is zero quants with scale zero.
        let zero = vec![0u8; act_row];
        let row = |k: usize| if b4 + k < n { act_of(b4 + k) } else { &zero };
        (panel.pack)(std::array::from_fn(row), &mut panels4[..nb]);
    }
    let chunk = rows_per_task(w.rows, w.row_bytes, n);
    let panels8_ref = &panels8[..groups * nb];
    let panels4_ref = &panels4[..if four { nb } else { 0 }];
    // Each task writes its columns of `y` in place (no tile to copy).
    pool::for_each_row_chunk_direct(y, w.rows, n, chunk, |r0, mut out| {
        let nrows = out.nrows();
        if let Some((dot16, _)) = wide16 {
            panels16_tile(w, r0, nb, dot16, wide_panels, &mut out);
        } else if let Some((dot16, _)) = lane16 {
            panels16_tile(w, r0, nb, dot16, lane_panels, &mut out);
        }
        for g0 in (0..groups).step_by(BATCH_TILE / 8) {
            let g1 = (g0 + BATCH_TILE / 8).min(groups);
            for i in 0..nrows {
                let wr = w.row(r0 + i);
                for g in g0..g1 {
                    let r = dot8(wr, &panels8_ref[g * nb..(g + 1) * nb]);
                    scatter_to(&r, &mut out, b8 + 8 * g, i);
                }
            }
        }
        if four {
            for i in 0..nrows {
                let r = dot4(w.row(r0 + i), panels4_ref);
                scatter_to(&r, &mut out, b4, i);
            }
        }
        for b in singles..n {
            let out = out.row_mut(b);
            for (i, o) in out.iter_mut().enumerate() {
                *o = vec_dot(cols, w.row(r0 + i), act_of(b));
            }
        }
    });
    scratch.panels16w = panels16w;
    scratch.panels16 = panels16;
    scratch.panels8_0 = panels8;
    scratch.panels = panels4;
}

/// Packs activation rows `16g..16g + 16` (fewer in the last of `groups`
/// panels, padded with zeros) of `n` into panel `g` of `panels` (grown as
/// needed), `nb` blocks each; returns the `groups` panels.
fn pack_panels16<'p, 'a, P: Clone + Default + Send>(
    panels: &'p mut Vec<P>,
    pack16: Pack16Fn<P>,
    groups: usize,
    nb: usize,
    n: usize,
    act_of: &(impl Fn(usize) -> &'a [u8] + Sync),
) -> &'p [P] {
    if panels.len() < groups * nb {
        panels.resize(groups * nb, P::default());
    }
    if groups > 0 {
        pool::for_each_chunk_mut(&mut panels[..groups * nb], nb, |g, out| {
            let rows: Vec<&[u8]> = (16 * g..(16 * g + 16).min(n)).map(act_of).collect();
            pack16(&rows, out);
        });
    }
    &panels[..groups * nb]
}

/// A task's weight rows `r0..r0 + out.nrows()` against every sixteen-row
/// panel of `panels` (`nb` blocks each), into the task's columns `out`: a
/// few weight rows against a few panels per call, so the kernel decodes
/// each row once for all of them.
fn panels16_tile<P>(
    w: &QMatrix<'_>,
    r0: usize,
    nb: usize,
    dot16: Panel16x0DotFn<P>,
    panels: &[P],
    out: &mut ColumnBlock<'_>,
) {
    const ROWS: usize = 8;
    const PANELS: usize = 8;
    let nrows = out.nrows();
    let mut r = [[0.0; 16]; ROWS * PANELS];
    for (g0, p) in panels.chunks(PANELS * nb).enumerate() {
        let gs = p.len() / nb;
        for i0 in (0..nrows).step_by(ROWS) {
            let k = ROWS.min(nrows - i0);
            let rows = &w.data[(r0 + i0) * w.row_bytes..(r0 + i0 + k) * w.row_bytes];
            dot16(rows, k, p, &mut r[..k * gs]);
            // Activation row by activation row, the k outputs side by side
            // (the panel's rows past the batch are padding).
            for g in 0..gs {
                let b = 16 * (PANELS * g0 + g);
                let rg = |i: usize| &r[i * gs + g];
                if k == ROWS && b + 16 <= out.n() {
                    // Four rows by four activation rows at a time.
                    for p in 0..ROWS / 4 {
                        for q in 0..4 {
                            let i = 4 * p;
                            let t = transpose_4x4([
                                quad(rg(i), q),
                                quad(rg(i + 1), q),
                                quad(rg(i + 2), q),
                                quad(rg(i + 3), q),
                            ]);
                            for (j, t) in t.iter().enumerate() {
                                let at = i0 + 4 * p;
                                out.row_mut(b + 4 * q + j)[at..at + 4].copy_from_slice(t);
                            }
                        }
                    }
                } else {
                    for c in 0..16.min(out.n() - b) {
                        let dst = &mut out.row_mut(b + c)[i0..i0 + k];
                        for (i, d) in dst.iter_mut().enumerate() {
                            *d = rg(i)[c];
                        }
                    }
                }
            }
        }
    }
}

/// Elements `4q..4q + 4` of `r`.
#[inline(always)]
fn quad(r: &[f32; 16], q: usize) -> [f32; 4] {
    r[4 * q..4 * q + 4].try_into().expect("four elements")
}

/// `t[j][i] = m[i][j]`: with SSE (every x86-64 has it) four shuffles of
/// pairs and four of halves; elsewhere element by element.
#[inline(always)]
fn transpose_4x4(m: [[f32; 4]; 4]) -> [[f32; 4]; 4] {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of the x86-64 baseline.
    return unsafe { transpose_4x4_sse(m) };
    #[cfg(not(target_arch = "x86_64"))]
    std::array::from_fn(|j| std::array::from_fn(|i| m[i][j]))
}

/// [`transpose_4x4`] with SSE.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "sse")]
fn transpose_4x4_sse(m: [[f32; 4]; 4]) -> [[f32; 4]; 4] {
    use std::arch::x86_64::*;
    // SAFETY (all four): `[f32; 4]` and `__m128` are both 16 bytes of
    // four f32, and every bit pattern is valid for either.
    let [a, b, c, d]: [__m128; 4] = unsafe { std::mem::transmute(m) };
    let (ab_lo, cd_lo) = (_mm_unpacklo_ps(a, b), _mm_unpacklo_ps(c, d));
    let (ab_hi, cd_hi) = (_mm_unpackhi_ps(a, b), _mm_unpackhi_ps(c, d));
    let t = [
        _mm_movelh_ps(ab_lo, cd_lo),
        _mm_movehl_ps(cd_lo, ab_lo),
        _mm_movelh_ps(ab_hi, cd_hi),
        _mm_movehl_ps(cd_hi, ab_hi),
    ];
    // SAFETY: as above.
    unsafe { std::mem::transmute(t) }
}

/// Batch rows past the last whole [`Q8_1x8`] panel from which a panel
/// padded with zero rows is cheaper than single products: a panel costs
/// about what three single products do.
const Q8_1_PAD_FROM: usize = 3;

/// [`matmul`] for weights with Q8_1 activations (Q4_1, Q5_1) through
/// [`Q8_1x8`] panels: the activations are quantized as usual, then
/// interleaved eight rows at a time; each weight row meets a tile of panels
/// while hot in L1. The rows past the last whole panel go into one panel
/// padded with zeros, or, when fewer than [`Q8_1_PAD_FROM`], use the single
/// product.
#[allow(clippy::too_many_arguments)]
fn matmul_q8_1_panels(
    w: &QMatrix<'_>,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    scratch: &mut Scratch,
    dot: simd::Panel8DotFn,
    vec_dot: VecDotFn,
    from_float: FromFloatFn,
) {
    let cols = w.cols;
    let nb = cols / 32;
    let rest = n % 8;
    let groups = n / 8 + usize::from(rest >= Q8_1_PAD_FROM);
    let mut panels = std::mem::take(&mut scratch.panels8);
    if panels.len() < groups * nb {
        panels.resize(groups * nb, Q8_1x8::default());
    }
    let (act, act_row) = scratch.quantize(GgmlType::Q8_1, from_float, x, n, cols);
    let act_of = |b: usize| &act[b * act_row..(b + 1) * act_row];
    for (g, out) in panels.chunks_exact_mut(nb).take(groups).enumerate() {
        let rows: Vec<&[u8]> = (8 * g..(8 * g + 8).min(n)).map(act_of).collect();
        simd::pack_q8_1x8(&rows, out);
    }
    let chunk = rows_per_task(w.rows, w.row_bytes, n);
    let panels_ref = &panels[..groups * nb];
    pool::for_each_row_chunk_columns(y, w.rows, n, chunk, |r0, out| {
        let nrows = out.len() / n;
        for g0 in (0..groups).step_by(BATCH_TILE / 8) {
            let g1 = (g0 + BATCH_TILE / 8).min(groups);
            for i in 0..nrows {
                let wr = w.row(r0 + i);
                for g in g0..g1 {
                    let r = dot(wr, &panels_ref[g * nb..(g + 1) * nb]);
                    scatter(&r, out, 8 * g * nrows + i, nrows);
                }
            }
        }
        for b in (8 * groups).min(n)..n {
            for i in 0..nrows {
                out[b * nrows + i] = vec_dot(cols, w.row(r0 + i), act_of(b));
            }
        }
    });
    scratch.panels8 = panels;
}
