// fast_wide.wgsl: the fast mode's single-token product (`fmv_wide`) for
// weights whose rows are whole 16-byte vectors (Q4_K, Q5_K, F16, Q8_0 in
// rows of whole groups of eight blocks; Q6_K rows of an even number of
// blocks, staged four blocks at a time through workgroup memory by words),
// read as such: the weights as
// `vec4<u32>` (each invocation decodes 32 Q4_K/Q5_K weights or 8 F16 weights
// from one load; Q8_0's 34-byte blocks are staged through workgroup memory
// 64 blocks a row at a time, then each invocation takes one), the
// activations as `vec4<f32>`, and the super-block's scales decoded once for
// those 32 weights. fast.wgsl's
// `fmv` reads a word at a time and decodes the scales again for every four
// weights. The same prologues as `fmv` (PROLOGUE 0: x; 1: RMSNorm(x)·weight,
// the sum of squares gathered on the way and applied to the row's sum; 2:
// silu(gate)·up) and the same store (quant_io.wgsl). Portable: the lanes of
// a row meet through workgroup memory, no subgroup operations. Float sums in
// this kernel's order: not the CPU's bits, within the fast mode's agreement.
//
// Workgroup: 256 invocations, WIDE_LANES per row (the grid of `fmv`, ops.rs's
// Grid::Linear).

override FORMAT: u32 = 12u;
override PROLOGUE: u32 = 0u;

const WIDE_LANES: u32 = 64u;

@group(0) @binding(0) var<storage, read> wv: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> aux: array<vec4<f32>>;

var<private> sq: f32;
var<workgroup> red: array<f32, 256>;
// Q8_0: per row of the workgroup, 64 blocks (2176 bytes, 136 vectors).
const Q8_VECS: u32 = 136u;
var<workgroup> q8s: array<vec4<u32>, 544>;
// Q6_K: per row of the workgroup, 4 blocks (840 bytes, 210 words).
const Q6_WORDS: u32 = 210u;
var<workgroup> q6s: array<u32, 844>; // (+ 4: the last slot's straddling reads stay inside)
var<workgroup> red_sq: array<f32, 256>;

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
// nibbles the same weights of sub-block 2j + 1.
fn kquant_part(rv: u32, sb: u32, part: u32) -> f32 {
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
    // Activation vectors of the low and high nibbles' weights.
    let x0 = (sb * 256u + 64u * j + 16u * half) >> 2u;
    var dot0 = 0.0;
    var dot1 = 0.0;
    var sum0 = 0.0;
    var sum1 = 0.0;
    for (var c = 0u; c < 4u; c++) {
        let word = q[c];
        var lo = vec4<f32>(unpack4xU8(word & 0x0f0f0f0fu));
        var hi = vec4<f32>(unpack4xU8((word >> 4u) & 0x0f0f0f0fu));
        if (five) {
            let hb = qh[c];
            lo += 16.0 * vec4<f32>(unpack4xU8((hb >> (2u * j)) & 0x01010101u));
            hi += 16.0 * vec4<f32>(unpack4xU8((hb >> (2u * j + 1u)) & 0x01010101u));
        }
        let xl = xin(x0 + c);
        let xh = xin(x0 + 8u + c);
        dot0 += dot(lo, xl);
        dot1 += dot(hi, xh);
        sum0 += (xl.x + xl.y) + (xl.z + xl.w);
        sum1 += (xh.x + xh.y) + (xh.z + xh.w);
    }
    return dm.x * (s0.x * dot0 + s1.x * dot1) - dm.y * (s0.y * sum0 + s1.y * sum1);
}

// Word i of a row slot of q8s.
fn q8w(slot: u32, i: u32) -> u32 {
    return q8s[slot + (i >> 2u)][i & 3u];
}

// Q8_0 block `blk` of the slot (first block `b0` of the row) · its
// activations: d from its first two bytes, then eight words of quants (on a
// word boundary for odd blocks, straddling two words for even ones).
fn q8_block(slot: u32, blk: u32, b0: u32) -> f32 {
    let bo = blk * 34u;
    let wi = bo >> 2u;
    let odd = (bo & 3u) == 2u;
    let w0 = q8w(slot, wi);
    let d = unpack2x16float(select(w0, w0 >> 16u, odd)).x;
    let xb = (b0 + blk) * 8u;
    var a = 0.0;
    for (var k = 0u; k < 8u; k++) {
        var word: u32;
        if (odd) {
            word = q8w(slot, wi + 1u + k);
        } else {
            word = (q8w(slot, wi + k) >> 16u) | (q8w(slot, wi + k + 1u) << 16u);
        }
        a += dot(vec4<f32>(unpack4xI8(word)), xin(xb + k));
    }
    return d * a;
}

// The word at byte offset o (even) of a row slot of q6s.
fn q6w(slot: u32, o: u32) -> u32 {
    let i = slot + (o >> 2u);
    if ((o & 3u) == 0u) {
        return q6s[i];
    }
    return (q6s[i] >> 16u) | (q6s[i + 1u] << 16u);
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

// F16: eight weights from vector `u` of the row.
fn f16_part(rv: u32, u: u32) -> f32 {
    let q = wv[rv + u];
    let a = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
    let b = vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
    return dot(a, xin(2u * u)) + dot(b, xin(2u * u + 1u));
}

// y[row] (+)= W[row, :] · xin. Grid: groups of 256 / WIDE_LANES rows.
@compute @workgroup_size(256)
fn fmv_wide(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let lane = lid % WIDE_LANES;
    let row = (wid.x + wid.y * nwg.x) * (256u / WIDE_LANES) + lid / WIDE_LANES;
    let live = row < p.m;
    let rv = row * (p.row_bytes >> 4u);
    var acc = vec2<f32>(0.0);
    sq = 0.0;
    if (FORMAT == 8u) {
        // Every invocation takes the loop (its barriers), live or not.
        let nb = p.k >> 5u;
        let slot = (lid / WIDE_LANES) * Q8_VECS;
        for (var c0 = 0u; c0 < nb; c0 += 64u) {
            let nblk = min(64u, nb - c0);
            let nv = (nblk * 34u) >> 4u;
            let v0 = rv + ((c0 * 34u) >> 4u);
            for (var t = lane; t < nv; t += WIDE_LANES) {
                if (live) {
                    q8s[slot + t] = wv[v0 + t];
                }
            }
            workgroupBarrier();
            if (live && lane < nblk) {
                acc.x += q8_block(slot, lane, c0);
            }
            workgroupBarrier();
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
                    q6s[slot + t] = wv[(w0 + t) >> 2u][(w0 + t) & 3u];
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
            var u = lane;
            for (; u + WIDE_LANES < units; u += 2u * WIDE_LANES) {
                acc.x += f16_part(rv, u);
                acc.y += f16_part(rv, u + WIDE_LANES);
            }
            for (; u < units; u += WIDE_LANES) {
                acc.x += f16_part(rv, u);
            }
        } else {
            // Eight lanes a super-block, WIDE_LANES / 8 super-blocks a pass.
            let nsb = p.k >> 8u;
            let part = lane & 7u;
            for (var sb = lane >> 3u; sb < nsb; sb += WIDE_LANES / 8u) {
                acc.x += kquant_part(rv, sb, part);
            }
        }
    }
    red[lid] = acc.x + acc.y;
    red_sq[lid] = sq;
    workgroupBarrier();
    for (var s = WIDE_LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            red[lid] += red[lid + s];
            red_sq[lid] += red_sq[lid + s];
        }
        workgroupBarrier();
    }
    if (live && lane == 0u) {
        var v = red[lid];
        if (PROLOGUE == 1u) {
            v *= 1.0 / sqrt(red_sq[lid] / f32(p.k) + p.eps);
        }
        store(0u, row, v);
    }
}
