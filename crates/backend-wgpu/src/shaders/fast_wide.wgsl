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
// silu(gate)·up; 3: gelu(gate)·up, fast.wgsl's `gelu_tanh`) and the same
// store (quant_io.wgsl). The lanes of a row
// meet in `wide_sums`: through workgroup memory (wide_wg.wgsl, portable), or
// through 32-wide subgroups and one exchange (wide_sg.wgsl). Float sums in
// this kernel's order: not the CPU's bits, within the fast mode's agreement.
//
// Workgroup: 256 invocations, four lane sets of WIDE_LANES; a lane set takes
// WIDE_ROWS (1, 2 or 4, a pipeline constant the host picks: kernels.rs's
// wide_rows) rows at once for every format but Q6_K (each activation vector read
// once for all of them), one row for Q6_K (ops.rs's Grid::Wide). What an
// invocation keeps is in named vectors and struct members, never in arrays
// indexed at run time (which drivers may keep in memory, not registers):
// the loops over rows and words are written out.

override FORMAT: u32 = 12u;
override PROLOGUE: u32 = 0u;

const WIDE_LANES: u32 = 64u;

@group(0) @binding(0) var<storage, read> wv: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> aux: array<vec4<f32>>;

var<private> sq: f32;
// One workgroup array for everything that passes through workgroup memory:
// Q6_K's staged rows, then the reduction (wide_wg.wgsl: vectors 0..255 the
// lanes' partial sums of up to four rows, 256..319 their sums of squares,
// four lanes a vector; wide_sg.wgsl: 0..7 the second subgroups' sums).
// Q6_K: per lane set, 4 blocks (840 bytes, 210 words; + 4 words: the last
// slot's straddling reads stay inside).
const Q6_WORDS: u32 = 210u;
var<workgroup> wsh: array<vec4<u32>, 320>;

// Rows of each lane set: the activations a lane reads (after the prologue)
// serve this many rows. Q6_K, staged through workgroup memory a row at a
// time, takes one.
override WIDE_ROWS: u32 = 4u;
fn wide_rows() -> u32 {
    if (FORMAT == 14u) {
        return 1u;
    }
    return WIDE_ROWS;
}

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
        case 3u: {
            return v / (1.0 + exp(-1.5957691216057308 * v * (1.0 + 0.044715 * v * v))) * aux[p.aux_base + i];
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
    xl0: vec4<f32>,
    xl1: vec4<f32>,
    xl2: vec4<f32>,
    xl3: vec4<f32>,
    xh0: vec4<f32>,
    xh1: vec4<f32>,
    xh2: vec4<f32>,
    xh3: vec4<f32>,
    sum0: f32,
    sum1: f32,
}

fn hsum4(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

fn kquant_x(sb: u32, part: u32) -> KPartX {
    let x0 = (sb * 256u + 64u * (part >> 1u) + 16u * (part & 1u)) >> 2u;
    let xl0 = xin(x0);
    let xl1 = xin(x0 + 1u);
    let xl2 = xin(x0 + 2u);
    let xl3 = xin(x0 + 3u);
    let xh0 = xin(x0 + 8u);
    let xh1 = xin(x0 + 9u);
    let xh2 = xin(x0 + 10u);
    let xh3 = xin(x0 + 11u);
    let sum0 = ((hsum4(xl0) + hsum4(xl1)) + hsum4(xl2)) + hsum4(xl3);
    let sum1 = ((hsum4(xh0) + hsum4(xh1)) + hsum4(xh2)) + hsum4(xh3);
    return KPartX(xl0, xl1, xl2, xl3, xh0, xh1, xh2, xh3, sum0, sum1);
}

// One quant word's (low nibbles · xl, high nibbles · xh); Q5_K adds the
// fifth bits of sub-blocks 2j and 2j + 1 from hb.
fn kq_word(word: u32, hb: u32, j: u32, xl: vec4<f32>, xh: vec4<f32>) -> vec2<f32> {
    var lo = word & 0x0f0f0f0fu;
    var hi = (word >> 4u) & 0x0f0f0f0fu;
    if (FORMAT == 13u) {
        lo |= ((hb >> (2u * j)) & 0x01010101u) << 4u;
        hi |= ((hb >> (2u * j + 1u)) & 0x01010101u) << 4u;
    }
    return vec2<f32>(dot(u2f(bytes4(lo)), xl), dot(u2f(bytes4(hi)), xh));
}

fn kquant_part(rv: u32, sb: u32, part: u32, a: KPartX) -> f32 {
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
    let d = (kq_word(q.x, qh.x, j, a.xl0, a.xh0) + kq_word(q.y, qh.y, j, a.xl1, a.xh1))
        + (kq_word(q.z, qh.z, j, a.xl2, a.xh2) + kq_word(q.w, qh.w, j, a.xl3, a.xh3));
    return dm.x * (s0.x * d.x + s1.x * d.y) - dm.y * (s0.y * a.sum0 + s1.y * a.sum1);
}

// A lane set's sums (wide_wg.wgsl's or wide_sg.wgsl's `wide_sums`): of
// the partial products of up to four rows, and of the squares.
struct WideSums {
    acc: vec4<f32>,
    sq: f32,
}

// Word i of the weights.
fn ww(i: u32) -> u32 {
    return wv[i >> 2u][i & 3u];
}

// The u32 at byte offset o (even) of the weights. Without a branch: the
// 32-weight blocks are 18 to 34 bytes, so neighbouring lanes' blocks
// alternate between word-aligned and not, and a branch would make every
// subgroup take both ways; the compiler can also share the words that the
// reads of one block have in common. (The word after an aligned read is
// loaded and not used; past the buffer's end, WGSL's robust access keeps
// the load inside it.)
fn u32_at(o: u32) -> u32 {
    let wi = o >> 2u;
    let lo = ww(wi);
    let hi = ww(wi + 1u);
    return select((lo >> 16u) | (hi << 16u), lo, (o & 3u) == 0u);
}

// Bits 4k .. 4k + 3 of qh, one in bit 4 of each byte (Q5_0/Q5_1's fifth
// bits of four consecutive weights).
fn fifth_bits(qh: u32, k: u32) -> u32 {
    let t = (qh >> (4u * k)) & 0xfu;
    return ((t & 1u) | ((t & 2u) << 7u) | ((t & 4u) << 14u) | ((t & 8u) << 21u)) << 4u;
}

// A 32-weight block's activations: a0..a3 the weights 0..15's (the low
// nibbles' of Q4/Q5 blocks), a4..a7 16..31's.
struct X8 {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
    a4: vec4<f32>,
    a5: vec4<f32>,
    a6: vec4<f32>,
    a7: vec4<f32>,
}

fn x8(b: u32) -> X8 {
    return X8(xin(b), xin(b + 1u), xin(b + 2u), xin(b + 3u),
              xin(b + 4u), xin(b + 5u), xin(b + 6u), xin(b + 7u));
}

// Word k of a Q4/Q5 block's quants (w; fifth bits f_lo, f_hi already in
// bit 4 of each byte) · activations xl (low nibbles) and xh (high), less
// `off` from every quant; and the sum of those activations.
fn nib_dot(w: u32, f_lo: u32, f_hi: u32, off: f32, xl: vec4<f32>, xh: vec4<f32>) -> vec2<f32> {
    let lo = u2f_less(bytes4((w & 0x0f0f0f0fu) | f_lo), off);
    let hi = u2f_less(bytes4(((w >> 4u) & 0x0f0f0f0fu) | f_hi), off);
    return vec2<f32>(dot(lo, xl) + dot(hi, xh), hsum4(xl) + hsum4(xh));
}

fn q8_dot(w: u32, x: vec4<f32>) -> f32 {
    return dot(sext8(bytes4(w)), x);
}

// The 32-weight block (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) of `blk` of the row
// at byte `rb` · the block's activations `x`, read by words at any even
// offset (these blocks are 18 to 34 bytes: not on 16-byte vectors).
// Consecutive lanes read consecutive blocks, so a subgroup's loads share
// cache lines. ggml's dequantize_row_* are the specification.
fn small_block(rb: u32, blk: u32, x: X8) -> f32 {
    switch FORMAT {
        case 2u: { // Q4_0: d·(q − 8), low nibbles weights 0..15, high 16..31
            let bo = rb + blk * 18u;
            let d = unpack2x16float(u32_at(bo)).x;
            let a = (nib_dot(u32_at(bo + 2u), 0u, 0u, 8.0, x.a0, x.a4)
                + nib_dot(u32_at(bo + 6u), 0u, 0u, 8.0, x.a1, x.a5))
                + (nib_dot(u32_at(bo + 10u), 0u, 0u, 8.0, x.a2, x.a6)
                + nib_dot(u32_at(bo + 14u), 0u, 0u, 8.0, x.a3, x.a7));
            return d * a.x;
        }
        case 3u: { // Q4_1: d·q + m
            let wi = (rb + blk * 20u) >> 2u;
            let dm = unpack2x16float(ww(wi));
            let a = (nib_dot(ww(wi + 1u), 0u, 0u, 0.0, x.a0, x.a4)
                + nib_dot(ww(wi + 2u), 0u, 0u, 0.0, x.a1, x.a5))
                + (nib_dot(ww(wi + 3u), 0u, 0u, 0.0, x.a2, x.a6)
                + nib_dot(ww(wi + 4u), 0u, 0u, 0.0, x.a3, x.a7));
            return dm.x * a.x + dm.y * a.y;
        }
        case 6u: { // Q5_0: d·(q − 16), the fifth bit of weight i in bit i of qh
            let bo = rb + blk * 22u;
            let d = unpack2x16float(u32_at(bo)).x;
            let qh = u32_at(bo + 2u);
            let a = (nib_dot(u32_at(bo + 6u), fifth_bits(qh, 0u), fifth_bits(qh, 4u), 16.0, x.a0, x.a4)
                + nib_dot(u32_at(bo + 10u), fifth_bits(qh, 1u), fifth_bits(qh, 5u), 16.0, x.a1, x.a5))
                + (nib_dot(u32_at(bo + 14u), fifth_bits(qh, 2u), fifth_bits(qh, 6u), 16.0, x.a2, x.a6)
                + nib_dot(u32_at(bo + 18u), fifth_bits(qh, 3u), fifth_bits(qh, 7u), 16.0, x.a3, x.a7));
            return d * a.x;
        }
        case 7u: { // Q5_1: d·q + m
            let wi = (rb + blk * 24u) >> 2u;
            let dm = unpack2x16float(ww(wi));
            let qh = ww(wi + 1u);
            let a = (nib_dot(ww(wi + 2u), fifth_bits(qh, 0u), fifth_bits(qh, 4u), 0.0, x.a0, x.a4)
                + nib_dot(ww(wi + 3u), fifth_bits(qh, 1u), fifth_bits(qh, 5u), 0.0, x.a1, x.a5))
                + (nib_dot(ww(wi + 4u), fifth_bits(qh, 2u), fifth_bits(qh, 6u), 0.0, x.a2, x.a6)
                + nib_dot(ww(wi + 5u), fifth_bits(qh, 3u), fifth_bits(qh, 7u), 0.0, x.a3, x.a7));
            return dm.x * a.x + dm.y * a.y;
        }
        default: { // Q8_0: d·q
            let bo = rb + blk * 34u;
            let d = unpack2x16float(u32_at(bo)).x;
            let a = ((q8_dot(u32_at(bo + 2u), x.a0) + q8_dot(u32_at(bo + 6u), x.a1))
                + (q8_dot(u32_at(bo + 10u), x.a2) + q8_dot(u32_at(bo + 14u), x.a3)))
                + ((q8_dot(u32_at(bo + 18u), x.a4) + q8_dot(u32_at(bo + 22u), x.a5))
                + (q8_dot(u32_at(bo + 26u), x.a6) + q8_dot(u32_at(bo + 30u), x.a7)));
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
    let q1 = u2f_less(bytes4((a & 0x0f0f0f0fu) | ((h & 0x03030303u) << 4u)), 32.0);
    let q2 = u2f_less(bytes4((b & 0x0f0f0f0fu) | (((h >> 2u) & 0x03030303u) << 4u)), 32.0);
    let q3 = u2f_less(bytes4(((a >> 4u) & 0x0f0f0f0fu) | (((h >> 4u) & 0x03030303u) << 4u)), 32.0);
    let q4 = u2f_less(bytes4(((b >> 4u) & 0x0f0f0f0fu) | (((h >> 6u) & 0x03030303u) << 4u)), 32.0);
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

// F16: vector u (eight weights) of row `rv` (its first vector) · xa, xb.
fn f16_part(rv: u32, u: u32, xa: vec4<f32>, xb: vec4<f32>) -> f32 {
    let q = wv[rv + u];
    let a = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
    let b = vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
    return dot(a, xa) + dot(b, xb);
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
            let rb = row * p.row_bytes;
            for (var blk = lane; blk < nb; blk += WIDE_LANES) {
                let xb = x8(blk * 8u);
                acc.x += small_block(rb, blk, xb);
                if (WIDE_ROWS > 1u && n > 1u) {
                    acc.y += small_block(rb + p.row_bytes, blk, xb);
                }
                if (WIDE_ROWS > 2u && n > 2u) {
                    acc.z += small_block(rb + 2u * p.row_bytes, blk, xb);
                }
                if (WIDE_ROWS > 3u && n > 3u) {
                    acc.w += small_block(rb + 3u * p.row_bytes, blk, xb);
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
                let xa = xin(2u * u);
                let xb = xin(2u * u + 1u);
                acc.x += f16_part(rv, u, xa, xb);
                if (WIDE_ROWS > 1u && n > 1u) {
                    acc.y += f16_part(rv + rvs, u, xa, xb);
                }
                if (WIDE_ROWS > 2u && n > 2u) {
                    acc.z += f16_part(rv + 2u * rvs, u, xa, xb);
                }
                if (WIDE_ROWS > 3u && n > 3u) {
                    acc.w += f16_part(rv + 3u * rvs, u, xa, xb);
                }
            }
        } else {
            // Eight lanes a super-block, WIDE_LANES / 8 super-blocks a pass.
            let nsb = p.k >> 8u;
            let part = lane & 7u;
            for (var sb = lane >> 3u; sb < nsb; sb += WIDE_LANES / 8u) {
                let a = kquant_x(sb, part);
                acc.x += kquant_part(rv, sb, part, a);
                if (WIDE_ROWS > 1u && n > 1u) {
                    acc.y += kquant_part(rv + rvs, sb, part, a);
                }
                if (WIDE_ROWS > 2u && n > 2u) {
                    acc.z += kquant_part(rv + 2u * rvs, sb, part, a);
                }
                if (WIDE_ROWS > 3u && n > 3u) {
                    acc.w += kquant_part(rv + 3u * rvs, sb, part, a);
                }
            }
        }
    }
    // The staging loop's last barrier is behind every read of wsh: the
    // reduction may take it over.
    let sums = wide_sums(lid, lane, acc, sq);
    if (live && lane == 0u) {
        let v = sums.acc;
        var scale = 1.0;
        if (PROLOGUE == 1u) {
            scale = 1.0 / sqrt(sums.sq / f32(p.k) + p.eps);
        }
        store(0u, row, v.x * scale);
        if (WIDE_ROWS > 1u && n > 1u) {
            store(0u, row + 1u, v.y * scale);
        }
        if (WIDE_ROWS > 2u && n > 2u) {
            store(0u, row + 2u, v.z * scale);
        }
        if (WIDE_ROWS > 3u && n > 3u) {
            store(0u, row + 3u, v.w * scale);
        }
    }
}
