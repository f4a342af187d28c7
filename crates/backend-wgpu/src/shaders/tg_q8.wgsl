// tg_q8.wgsl: a single token's exact product with a Q8_0 matrix through
// 16-byte loads, for devices whose subgroups are exactly 32 wide. The
// shader is fma.wgsl, quant_io.wgsl, quant_tg.wgsl, then this file (its
// own module: workgroup arrays declared beside q4k_tg and q6k_tg slowed
// them on an H100).
//
// Q8_0 (34-byte blocks: f16 d, 32 signed quants), ggml's vec_dot lanes
// (ORDER 0: lane j of a block is its word j; lane j's chain multiply-adds
// the blocks' sums times d·d_a in block order; hsum_float_8 at the end),
// as qdot_sg computes them, from 16-byte loads: a step is 32 blocks of the
// row (1088 bytes, 68 vectors), loaded into workgroup memory at once; lane
// t then takes block t of the step (its 34 bytes: two bytes off a word
// boundary for every other block), and the sums and scales meet the chains
// through workgroup memory.
const Q8_STEP: u32 = 32u; // blocks per step
// Per row slot (288 words): a step's 68 vectors as words, then, in the same
// place, the step's sums (Q8_STEP blocks × 8 lanes) and scales d·d_a.
var<workgroup> q8_raw: array<u32, 1152>;

fn q8_si(i: u32) -> i32 {
    return bitcast<i32>(q8_raw[i]);
}

fn q8_f(i: u32) -> f32 {
    return bitcast<f32>(q8_raw[i]);
}

// A step's loads for one lane: vectors t, t + 32, t + 64 of the step's
// (zero past it; `v8` vectors per eight blocks: 17 for Q8_0, 9 for Q4_0),
// and the activations of block t (quants, then d_a).
struct Q8Loads {
    a: vec4<u32>,
    b: vec4<u32>,
    c: vec4<u32>,
    x0: vec4<u32>,
    x1: vec4<u32>,
    dx: f32,
}

fn q8_loads(rv: u32, c0: u32, nb: u32, t: u32, v8: u32) -> Q8Loads {
    let nv = (min(Q8_STEP, nb - c0) * v8) / 8u;
    let v0 = rv + (c0 * v8) / 8u;
    var l = Q8Loads(vec4<u32>(0u), vec4<u32>(0u), vec4<u32>(0u), vec4<u32>(0u), vec4<u32>(0u), 0.0);
    if (t < nv) { l.a = wv[v0 + t]; }
    if (t + 32u < nv) { l.b = wv[v0 + t + 32u]; }
    if (t + 64u < nv) { l.c = wv[v0 + t + 64u]; }
    let blk = min(c0 + t, nb - 1u);
    l.x0 = xv[2u * blk];
    l.x1 = xv[2u * blk + 1u];
    let xd = xv[(p.corr_base >> 2u) + (blk >> 1u)];
    l.dx = bitcast<f32>(select(xd.x, xd.z, (blk & 1u) == 1u));
    return l;
}

// Grid: as q4k_tg's (k a multiple of 256, so rows are whole vectors). The
// next step's loads are issued before this step's chains.
@compute @workgroup_size(128)
fn q8_0_tg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
           @builtin(subgroup_invocation_id) t: u32) {
    let s = lid >> 5u;
    let row_raw = wid.y * TG_ROWS + s;
    let row = min(row_raw, p.m - 1u);
    let nb = p.k >> 5u;
    let rv = row * (p.row_bytes >> 4u);
    let j = t & 7u;
    let base = s * 288u;
    var acc = 0.0;
    var l = q8_loads(rv, 0u, nb, t, 17u);
    for (var c0 = 0u; c0 < nb; c0 += Q8_STEP) {
        for (var i = 0u; i < 4u; i++) {
            q8_raw[base + 4u * t + i] = l.a[i];
            q8_raw[base + 128u + 4u * t + i] = l.b[i];
            if (t < 4u) { q8_raw[base + 256u + 4u * t + i] = l.c[i]; }
        }
        workgroupBarrier();
        // Block t of the step: its nine words (from byte 34t, which is two
        // bytes off a word boundary for odd t: then d is the first word's
        // upper half and the quants are whole words; for even t, d is its
        // lower half and each quant word straddles two), read at once, then
        // d and the eight words' exact sums, without branching.
        let w = base + ((34u * t) >> 2u);
        let ev = (t & 1u) == 0u;
        let w0 = q8_raw[w];
        let w1 = q8_raw[w + 1u];
        let w2 = q8_raw[w + 2u];
        let w3 = q8_raw[w + 3u];
        let w4 = q8_raw[w + 4u];
        let w5 = q8_raw[w + 5u];
        let w6 = q8_raw[w + 6u];
        let w7 = q8_raw[w + 7u];
        let w8 = q8_raw[w + 8u];
        let d = unpack2x16float(select(w0 >> 16u, w0 & 0xffffu, ev)).x;
        let sums = array<i32, 8>(
            dot4I8Packed(q8_word(w0, w1, ev), l.x0.x), dot4I8Packed(q8_word(w1, w2, ev), l.x0.y),
            dot4I8Packed(q8_word(w2, w3, ev), l.x0.z), dot4I8Packed(q8_word(w3, w4, ev), l.x0.w),
            dot4I8Packed(q8_word(w4, w5, ev), l.x1.x), dot4I8Packed(q8_word(w5, w6, ev), l.x1.y),
            dot4I8Packed(q8_word(w6, w7, ev), l.x1.z), dot4I8Packed(q8_word(w7, w8, ev), l.x1.w));
        let dd = d * l.dx;
        if (c0 + Q8_STEP < nb) {
            l = q8_loads(rv, c0 + Q8_STEP, nb, t, 17u);
        }
        workgroupBarrier();
        for (var k = 0u; k < 8u; k++) {
            q8_raw[base + 8u * t + k] = bitcast<u32>(sums[k]);
        }
        q8_raw[base + 256u + t] = bitcast<u32>(dd);
        workgroupBarrier();
        // Lane j's chain over the step's blocks, in order (every lane of
        // the class runs the same chain), eight blocks at a time, each
        // eight's operands read before its multiply-adds (n is a multiple
        // of 8).
        let n = min(Q8_STEP, nb - c0);
        for (var q = 0u; q < n; q += 8u) {
            let si = base + 8u * q + j;
            let di = base + 256u + q;
            let sa = vec4<f32>(f32(q8_si(si)), f32(q8_si(si + 8u)), f32(q8_si(si + 16u)),
                               f32(q8_si(si + 24u)));
            let sb = vec4<f32>(f32(q8_si(si + 32u)), f32(q8_si(si + 40u)), f32(q8_si(si + 48u)),
                               f32(q8_si(si + 56u)));
            let da = vec4<f32>(q8_f(di), q8_f(di + 1u), q8_f(di + 2u), q8_f(di + 3u));
            let db = vec4<f32>(q8_f(di + 4u), q8_f(di + 5u), q8_f(di + 6u), q8_f(di + 7u));
            acc = fma_rn(sa.x, da.x, acc);
            acc = fma_rn(sa.y, da.y, acc);
            acc = fma_rn(sa.z, da.z, acc);
            acc = fma_rn(sa.w, da.w, acc);
            acc = fma_rn(sb.x, db.x, acc);
            acc = fma_rn(sb.y, db.y, acc);
            acc = fma_rn(sb.z, db.z, acc);
            acc = fma_rn(sb.w, db.w, acc);
        }
        workgroupBarrier();
    }
    let r = hsum_lanes8(acc);
    if (row_raw < p.m && t == 0u) {
        store(0u, row, r);
    }
}

// Q4_0 (18-byte blocks: f16 d, 32 four-bit quants q − 8) with a multiple
// of 8 rows: llama.cpp's repacked gemv order (ORDER 1: a block's 32
// products summed exactly, then one multiply-add of the sum times d·d_a per
// block, in block order), as qdot_sg computes it, from 16-byte loads: a
// step is 32 blocks of the row (576 bytes, 36 vectors) in workgroup memory,
// lane t takes block t (its five words, the block two bytes off a word
// boundary for odd t), and every lane runs the row's chain over the blocks'
// sums and scales, gathered by shuffles eight at a time.
fn q4_0_quants(v: u32) -> u32 {
    return ((v | 0x80808080u) - 0x08080808u) ^ 0x80808080u;
}

// Grid: as q4k_tg's (k a multiple of 256, so rows are whole vectors).
@compute @workgroup_size(128)
fn q4_0_tg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
           @builtin(subgroup_invocation_id) t: u32) {
    let s = lid >> 5u;
    let row_raw = wid.y * TG_ROWS + s;
    let row = min(row_raw, p.m - 1u);
    let nb = p.k >> 5u;
    let rv = row * (p.row_bytes >> 4u);
    let base = s * 288u;
    let m4 = 0x0f0f0f0fu;
    var acc = 0.0;
    var l = q8_loads(rv, 0u, nb, t, 9u);
    for (var c0 = 0u; c0 < nb; c0 += Q8_STEP) {
        for (var i = 0u; i < 4u; i++) {
            q8_raw[base + 4u * t + i] = l.a[i];
            if (t < 4u) { q8_raw[base + 128u + 4u * t + i] = l.b[i]; }
        }
        workgroupBarrier();
        // Block t: d, then its sixteen bytes of quants (low nibbles:
        // quants 0..15, high: 16..31) against activation words 0..7.
        let w = base + ((18u * t) >> 2u);
        let ev = (t & 1u) == 0u;
        let w0 = q8_raw[w];
        let w1 = q8_raw[w + 1u];
        let w2 = q8_raw[w + 2u];
        let w3 = q8_raw[w + 3u];
        let w4 = q8_raw[w + 4u];
        let d = unpack2x16float(select(w0 >> 16u, w0 & 0xffffu, ev)).x;
        let n0 = q8_word(w0, w1, ev);
        let n1 = q8_word(w1, w2, ev);
        let n2 = q8_word(w2, w3, ev);
        let n3 = q8_word(w3, w4, ev);
        let sum = ((dot4I8Packed(q4_0_quants(n0 & m4), l.x0.x) + dot4I8Packed(q4_0_quants(n1 & m4), l.x0.y))
            + (dot4I8Packed(q4_0_quants(n2 & m4), l.x0.z) + dot4I8Packed(q4_0_quants(n3 & m4), l.x0.w)))
            + ((dot4I8Packed(q4_0_quants((n0 >> 4u) & m4), l.x1.x) + dot4I8Packed(q4_0_quants((n1 >> 4u) & m4), l.x1.y))
            + (dot4I8Packed(q4_0_quants((n2 >> 4u) & m4), l.x1.z) + dot4I8Packed(q4_0_quants((n3 >> 4u) & m4), l.x1.w)));
        let sf = f32(sum);
        let dd = d * l.dx;
        if (c0 + Q8_STEP < nb) {
            l = q8_loads(rv, c0 + Q8_STEP, nb, t, 9u);
        }
        // The chain, every lane alike: blocks in order, eight at a time
        // with their shuffles first (n is a multiple of 8).
        let n = min(Q8_STEP, nb - c0);
        for (var q = 0u; q < n; q += 8u) {
            let sa = vec4<f32>(subgroupShuffle(sf, q), subgroupShuffle(sf, q + 1u),
                               subgroupShuffle(sf, q + 2u), subgroupShuffle(sf, q + 3u));
            let sb = vec4<f32>(subgroupShuffle(sf, q + 4u), subgroupShuffle(sf, q + 5u),
                               subgroupShuffle(sf, q + 6u), subgroupShuffle(sf, q + 7u));
            let da = vec4<f32>(subgroupShuffle(dd, q), subgroupShuffle(dd, q + 1u),
                               subgroupShuffle(dd, q + 2u), subgroupShuffle(dd, q + 3u));
            let db = vec4<f32>(subgroupShuffle(dd, q + 4u), subgroupShuffle(dd, q + 5u),
                               subgroupShuffle(dd, q + 6u), subgroupShuffle(dd, q + 7u));
            acc = fma_rn(sa.x, da.x, acc);
            acc = fma_rn(sa.y, da.y, acc);
            acc = fma_rn(sa.z, da.z, acc);
            acc = fma_rn(sa.w, da.w, acc);
            acc = fma_rn(sb.x, db.x, acc);
            acc = fma_rn(sb.y, db.y, acc);
            acc = fma_rn(sb.z, db.z, acc);
            acc = fma_rn(sb.w, db.w, acc);
        }
        workgroupBarrier();
    }
    if (row_raw < p.m && t == 0u) {
        store(0u, row, acc);
    }
}
