// fast_wide.wgsl: the fast mode's single-token product (`fmv_wide`) for
// weights whose rows are whole 16-byte vectors (Q4_K, Q5_K, F16; Q6_K rows
// of an even number of blocks, staged four blocks at a time through
// workgroup memory by words) and for the 32-weight blocks (Q4_0, Q4_1,
// Q5_0, Q5_1, Q8_0: a block an invocation, by words),
// read as such: the weights as
// `vec4<u32>` (each invocation decodes 32 Q4_K/Q5_K weights or 8 F16 weights
// from one load), the
// activations as `vec4<f32>`, and the super-block's scales decoded once for
// those 32 weights. fast.wgsl's
// `fmv` reads a word at a time and decodes the scales again for every four
// weights. The same prologues as `fmv` (PROLOGUE 0: x; 1: RMSNorm(x)·weight,
// the sum of squares gathered on the way and applied to the row's sum; 2:
// silu(gate)·up) and the same store (quant_io.wgsl). Portable: the lanes of
// a row meet through workgroup memory, no subgroup operations. Float sums in
// this kernel's order: not the CPU's bits, within the fast mode's agreement.
//
// Workgroup: 256 invocations, four lane sets of WIDE_LANES; a lane set takes
// WIDE_ROWS rows at once for every format but Q6_K (each activation vector
// read once for all of them: re-reading them per row cost more than the
// weights), one row for Q6_K (ops.rs's Grid::Wide).

override FORMAT: u32 = 12u;
override PROLOGUE: u32 = 0u;

const WIDE_LANES: u32 = 64u;

@group(0) @binding(0) var<storage, read> wv: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> aux: array<vec4<f32>>;

var<private> sq: f32;
// One workgroup array for everything that passes through workgroup memory:
// Q6_K's staged rows, then the reduction (vectors 0..255 the lanes' partial
// sums of up to four rows, 256..319 their sums of squares, four lanes a
// vector).
// Q6_K: per lane set, 4 blocks (840 bytes, 210 words; + 4 words: the last
// slot's straddling reads stay inside).
const Q6_WORDS: u32 = 210u;
var<workgroup> wsh: array<vec4<u32>, 320>;

// Rows of each lane set: the activations a lane reads (after the prologue)
// serve this many rows. Q6_K, staged through workgroup memory a row at a
// time, takes one.
fn wide_rows() -> u32 {
    if (FORMAT == 14u) {
        return 1u;
    }
    return WIDE_ROWS;
}
const WIDE_ROWS: u32 = 4u;

// Activations i .. i + 3 of the row's input, as the prologue makes them.
fn xin(i: u32) -> vec4<f32> {
    let v = x[p.x_base + i];
    switch PROLOGUE {
        case 1u: {
            sq += dot(v, v);
            return v * aux[i];
        }
        case 2u: {
            let u = aux[p.aux_base + i];
            return v / (1.0 + exp(-v)) * u;
        }
        default: {
            return v;
        }
    }
}

// Byte k (< 12) of a K-quant super-block's scales (words 1..3 of its header).
fn sbyte(h: vec4<u32>, k: u32) -> u32 {
    return (h[1u + (k >> 2u)] >> (8u * (k & 3u))) & 0xffu;
}

// get_scale_min_k4: (scale, min) of sub-block j.
fn scale_min(h: vec4<u32>, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(sbyte(h, j) & 63u), f32(sbyte(h, j + 4u) & 63u));
    }
    let s = (sbyte(h, j + 4u) & 0xfu) | ((sbyte(h, j - 4u) >> 6u) << 4u);
    let m = (sbyte(h, j + 4u) >> 4u) | ((sbyte(h, j) >> 6u) << 4u);
    return vec2<f32>(f32(s), f32(m));
}

// Q4_K (144-byte super-blocks: header, 128 bytes of quants) and Q5_K (176:
// header, 32 bytes of high bits, 128 of quants): lane part `part` (0..7) of
// super-block `sb` takes quant vector `part`: bytes 16·(part % 2) .. + 15 of
// pair j = part / 2, whose low nibbles are weights of sub-block 2j and high
// nibbles the same weights of sub-block 2j + 1. The part's 32 activations
// (low-nibble weights' xl, high-nibble weights' xh) and their sums are read
// once for the lane set's rows.
struct KPartX {
    xl: array<vec4<f32>, 4>,
    xh: array<vec4<f32>, 4>,
    sum0: f32,
    sum1: f32,
}

fn kquant_x(sb: u32, part: u32) -> KPartX {
    var a: KPartX;
    let x0 = (sb * 256u + 64u * (part >> 1u) + 16u * (part & 1u)) >> 2u;
    a.sum0 = 0.0;
    a.sum1 = 0.0;
    for (var c = 0u; c < 4u; c++) {
        let xl = xin(x0 + c);
        let xh = xin(x0 + 8u + c);
        a.xl[c] = xl;
        a.xh[c] = xh;
        a.sum0 += (xl.x + xl.y) + (xl.z + xl.w);
        a.sum1 += (xh.x + xh.y) + (xh.z + xh.w);
    }
    return a;
}

fn kquant_part(rv: u32, sb: u32, part: u32, a: ptr<function, KPartX>) -> f32 {
    let five = FORMAT == 13u;
    let per_sb = select(9u, 11u, five);
    let b = rv + sb * per_sb;
    let h = wv[b];
    let q = wv[b + select(1u, 3u, five) + part];
    let j = part >> 1u;
    let half = part & 1u;
    var qh = vec4<u32>(0u);
    if (five) {
        qh = wv[b + 1u + half];
    }
    let dm = unpack2x16float(h.x);
    let s0 = scale_min(h, 2u * j);
    let s1 = scale_min(h, 2u * j + 1u);
    var dot0 = 0.0;
    var dot1 = 0.0;
    for (var c = 0u; c < 4u; c++) {
        let word = q[c];
        var lo = vec4<f32>(unpack4xU8(word & 0x0f0f0f0fu));
        var hi = vec4<f32>(unpack4xU8((word >> 4u) & 0x0f0f0f0fu));
        if (five) {
            let hb = qh[c];
            lo += 16.0 * vec4<f32>(unpack4xU8((hb >> (2u * j)) & 0x01010101u));
            hi += 16.0 * vec4<f32>(unpack4xU8((hb >> (2u * j + 1u)) & 0x01010101u));
        }
        dot0 += dot(lo, (*a).xl[c]);
        dot1 += dot(hi, (*a).xh[c]);
    }
    return dm.x * (s0.x * dot0 + s1.x * dot1) - dm.y * (s0.y * (*a).sum0 + s1.y * (*a).sum1);
}

// Word i of the weights.
fn ww(i: u32) -> u32 {
    return wv[i >> 2u][i & 3u];
}

// The u32 at byte offset o (even) of the weights.
fn u32_at(o: u32) -> u32 {
    let wi = o >> 2u;
    if ((o & 3u) == 0u) {
        return ww(wi);
    }
    return (ww(wi) >> 16u) | (ww(wi + 1u) << 16u);
}

// Bits 4k .. 4k + 3 of qh, one in bit 4 of each byte (Q5_0/Q5_1's fifth
// bits of four consecutive weights).
fn fifth_bits(qh: u32, k: u32) -> u32 {
    let t = (qh >> (4u * k)) & 0xfu;
    return ((t & 1u) | ((t & 2u) << 7u) | ((t & 4u) << 14u) | ((t & 8u) << 21u)) << 4u;
}

// The 32-weight block (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) of `blk` of the row
// at byte `rb` · the block's activations `xq`, read by words at any even
// offset (these blocks are 18 to 34 bytes: not on 16-byte vectors).
// Consecutive lanes read consecutive blocks, so a subgroup's loads share
// cache lines. ggml's dequantize_row_* are the specification.
fn small_block(rb: u32, blk: u32, xq: ptr<function, array<vec4<f32>, 8>>) -> f32 {
    switch FORMAT {
        case 2u: { // Q4_0: d·(q − 8), low nibbles weights 0..15, high 16..31
            let bo = rb + blk * 18u;
            let d = unpack2x16float(u32_at(bo)).x;
            var a = 0.0;
            for (var k = 0u; k < 4u; k++) {
                let w = u32_at(bo + 2u + 4u * k);
                let lo = vec4<f32>(unpack4xU8(w & 0x0f0f0f0fu)) - 8.0;
                let hi = vec4<f32>(unpack4xU8((w >> 4u) & 0x0f0f0f0fu)) - 8.0;
                a += dot(lo, (*xq)[k]) + dot(hi, (*xq)[k + 4u]);
            }
            return d * a;
        }
        case 3u: { // Q4_1: d·q + m
            let bo = rb + blk * 20u;
            let dm = unpack2x16float(ww(bo >> 2u));
            var a = 0.0;
            var sx = 0.0;
            for (var k = 0u; k < 4u; k++) {
                let w = ww((bo >> 2u) + 1u + k);
                let lo = vec4<f32>(unpack4xU8(w & 0x0f0f0f0fu));
                let hi = vec4<f32>(unpack4xU8((w >> 4u) & 0x0f0f0f0fu));
                let xl = (*xq)[k];
                let xh = (*xq)[k + 4u];
                a += dot(lo, xl) + dot(hi, xh);
                sx += ((xl.x + xl.y) + (xl.z + xl.w)) + ((xh.x + xh.y) + (xh.z + xh.w));
            }
            return dm.x * a + dm.y * sx;
        }
        case 6u: { // Q5_0: d·(q − 16), the fifth bit of weight i in bit i of qh
            let bo = rb + blk * 22u;
            let d = unpack2x16float(u32_at(bo)).x;
            let qh = u32_at(bo + 2u);
            var a = 0.0;
            for (var k = 0u; k < 4u; k++) {
                let w = u32_at(bo + 6u + 4u * k);
                let lo = vec4<f32>(unpack4xU8((w & 0x0f0f0f0fu) | fifth_bits(qh, k))) - 16.0;
                let hi = vec4<f32>(unpack4xU8(((w >> 4u) & 0x0f0f0f0fu) | fifth_bits(qh, k + 4u))) - 16.0;
                a += dot(lo, (*xq)[k]) + dot(hi, (*xq)[k + 4u]);
            }
            return d * a;
        }
        case 7u: { // Q5_1: d·q + m
            let bo = rb + blk * 24u;
            let wi = bo >> 2u;
            let dm = unpack2x16float(ww(wi));
            let qh = ww(wi + 1u);
            var a = 0.0;
            var sx = 0.0;
            for (var k = 0u; k < 4u; k++) {
                let w = ww(wi + 2u + k);
                let lo = vec4<f32>(unpack4xU8((w & 0x0f0f0f0fu) | fifth_bits(qh, k)));
                let hi = vec4<f32>(unpack4xU8(((w >> 4u) & 0x0f0f0f0fu) | fifth_bits(qh, k + 4u)));
                let xl = (*xq)[k];
                let xh = (*xq)[k + 4u];
                a += dot(lo, xl) + dot(hi, xh);
                sx += ((xl.x + xl.y) + (xl.z + xl.w)) + ((xh.x + xh.y) + (xh.z + xh.w));
            }
            return dm.x * a + dm.y * sx;
        }
        default: { // Q8_0: d·q
            let bo = rb + blk * 34u;
            let d = unpack2x16float(u32_at(bo)).x;
            var a = 0.0;
            for (var k = 0u; k < 8u; k++) {
                a += dot(vec4<f32>(unpack4xI8(u32_at(bo + 2u + 4u * k))), (*xq)[k]);
            }
            return d * a;
        }
    }
}

// Word i of the staged Q6_K rows.
fn q6s(i: u32) -> u32 {
    return wsh[i >> 2u][i & 3u];
}

// The word at byte offset o (even) of a row slot of the staged Q6_K rows.
fn q6w(slot: u32, o: u32) -> u32 {
    let i = slot + (o >> 2u);
    if ((o & 3u) == 0u) {
        return q6s(i);
    }
    return (q6s(i) >> 16u) | (q6s(i + 1u) << 16u);
}

// Signed byte k of a word.
fn sbyte_i(w: u32, k: u32) -> f32 {
    return f32(i32(w << (24u - 8u * k)) >> 24u);
}

// Q6_K (210-byte blocks: ql[128], qh[64], scales[16], d): unit u (0..15) of
// block `blk` of the slot (first block `b0` of the row): half n = u / 8,
// l = 4·(u % 8): weights l.. + 3 of the half's four quarters (q1..q4 of
// dequantize_row_q6_K), from two words of ql and one of qh.
fn q6_unit(slot: u32, blk: u32, u: u32, b0: u32) -> f32 {
    let bo = blk * 210u;
    let n = u >> 3u;
    let l = 4u * (u & 7u);
    let a = q6w(slot, bo + 64u * n + l);
    let b = q6w(slot, bo + 64u * n + 32u + l);
    let h = q6w(slot, bo + 128u + 32u * n + l);
    let sc_lo = q6w(slot, bo + 192u + 8u * n);
    let sc_hi = q6w(slot, bo + 196u + 8u * n);
    let d = unpack2x16float(q6w(slot, bo + 208u)).x;
    let is = l >> 4u;
    let m = vec4<f32>(32.0);
    let q1 = vec4<f32>(unpack4xU8((a & 0x0f0f0f0fu) | ((h & 0x03030303u) << 4u))) - m;
    let q2 = vec4<f32>(unpack4xU8((b & 0x0f0f0f0fu) | (((h >> 2u) & 0x03030303u) << 4u))) - m;
    let q3 = vec4<f32>(unpack4xU8(((a >> 4u) & 0x0f0f0f0fu) | (((h >> 4u) & 0x03030303u) << 4u))) - m;
    let q4 = vec4<f32>(unpack4xU8(((b >> 4u) & 0x0f0f0f0fu) | (((h >> 6u) & 0x03030303u) << 4u))) - m;
    // Scales is, is + 2 (in sc_lo), is + 4, is + 6 (in sc_hi).
    let s1 = sbyte_i(sc_lo, is);
    let s2 = sbyte_i(sc_lo, is + 2u);
    let s3 = sbyte_i(sc_hi, is);
    let s4 = sbyte_i(sc_hi, is + 2u);
    let xb = ((b0 + blk) * 256u + 128u * n + l) >> 2u;
    let t = s1 * dot(q1, xin(xb)) + s2 * dot(q2, xin(xb + 8u))
        + s3 * dot(q3, xin(xb + 16u)) + s4 * dot(q4, xin(xb + 24u));
    return d * t;
}

// F16: eight weights from vector `u` of the row (rows of `rvs` vectors from
// vector rv0) times activations xa, xb, for each of the lane set's n rows.
fn f16_parts(rv0: u32, rvs: u32, n: u32, u: u32, acc: ptr<function, vec4<f32>>) {
    let xa = xin(2u * u);
    let xb = xin(2u * u + 1u);
    for (var r = 0u; r < WIDE_ROWS; r++) {
        if (r < n) {
            let q = wv[rv0 + r * rvs + u];
            let a = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
            let b = vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
            (*acc)[r] += dot(a, xa) + dot(b, xb);
        }
    }
}

// y[row] (+)= W[row, :] · xin for the lane set's rows. Grid: groups of
// 4 · wide_rows() rows (ops.rs's Grid::Wide).
@compute @workgroup_size(256)
fn fmv_wide(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let lane = lid % WIDE_LANES;
    let rows = wide_rows();
    let row = ((wid.x + wid.y * nwg.x) * (256u / WIDE_LANES) + lid / WIDE_LANES) * rows;
    let live = row < p.m;
    // Rows of this lane set inside the matrix.
    let n = min(rows, p.m - min(row, p.m));
    let rvs = p.row_bytes >> 4u;
    let rv = row * rvs;
    var acc = vec4<f32>(0.0);
    sq = 0.0;
    if (FORMAT == 2u || FORMAT == 3u || FORMAT == 6u || FORMAT == 7u || FORMAT == 8u) {
        // A block a lane, its activations read once for the lane set's rows.
        let nb = p.k >> 5u;
        if (live) {
            for (var blk = lane; blk < nb; blk += WIDE_LANES) {
                var xq: array<vec4<f32>, 8>;
                for (var k = 0u; k < 8u; k++) {
                    xq[k] = xin(blk * 8u + k);
                }
                for (var r = 0u; r < WIDE_ROWS; r++) {
                    if (r < n) {
                        acc[r] += small_block((row + r) * p.row_bytes, blk, &xq);
                    }
                }
            }
        }
    } else if (FORMAT == 14u) {
        // Four blocks a pass staged by words (rows of an even number of
        // blocks start on a word), then sixteen units a block, one a lane.
        let nb = p.k >> 8u;
        let slot = (lid / WIDE_LANES) * Q6_WORDS;
        let rw = row * (p.row_bytes >> 2u);
        for (var c0 = 0u; c0 < nb; c0 += 4u) {
            let nblk = min(4u, nb - c0);
            let nw = (nblk * 210u) >> 2u;
            let w0 = rw + ((c0 * 210u) >> 2u);
            for (var t = lane; t < nw; t += WIDE_LANES) {
                if (live) {
                    let i = slot + t;
                    wsh[i >> 2u][i & 3u] = wv[(w0 + t) >> 2u][(w0 + t) & 3u];
                }
            }
            workgroupBarrier();
            if (live && lane < 16u * nblk) {
                acc.x += q6_unit(slot, lane >> 4u, lane & 15u, c0);
            }
            workgroupBarrier();
        }
    } else if (live) {
        if (FORMAT == 1u) {
            let units = p.k >> 3u;
            for (var u = lane; u < units; u += WIDE_LANES) {
                f16_parts(rv, rvs, n, u, &acc);
            }
        } else {
            // Eight lanes a super-block, WIDE_LANES / 8 super-blocks a pass.
            let nsb = p.k >> 8u;
            let part = lane & 7u;
            for (var sb = lane >> 3u; sb < nsb; sb += WIDE_LANES / 8u) {
                var a = kquant_x(sb, part);
                for (var r = 0u; r < WIDE_ROWS; r++) {
                    if (r < n) {
                        acc[r] += kquant_part(rv + r * rvs, sb, part, &a);
                    }
                }
            }
        }
    }
    // The staging loop's last barrier is behind every read of wsh: the
    // reduction may take it over.
    wsh[lid] = bitcast<vec4<u32>>(acc);
    wsh[256u + (lid >> 2u)][lid & 3u] = bitcast<u32>(sq);
    workgroupBarrier();
    for (var s = WIDE_LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            wsh[lid] = bitcast<vec4<u32>>(bitcast<vec4<f32>>(wsh[lid]) + bitcast<vec4<f32>>(wsh[lid + s]));
            let a = lid + s;
            let v = bitcast<f32>(wsh[256u + (lid >> 2u)][lid & 3u]) + bitcast<f32>(wsh[256u + (a >> 2u)][a & 3u]);
            wsh[256u + (lid >> 2u)][lid & 3u] = bitcast<u32>(v);
        }
        workgroupBarrier();
    }
    if (live && lane == 0u) {
        let v = bitcast<vec4<f32>>(wsh[lid]);
        var scale = 1.0;
        if (PROLOGUE == 1u) {
            scale = 1.0 / sqrt(bitcast<f32>(wsh[256u + (lid >> 2u)][lid & 3u]) / f32(p.k) + p.eps);
        }
        for (var r = 0u; r < WIDE_ROWS; r++) {
            if (r < n) {
                store(0u, row + r, v[r] * scale);
            }
        }
    }
}
