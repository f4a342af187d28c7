// quant_tg.wgsl: the exact products of a single token with Q4_K, Q5_K and
// Q6_K matrices (token generation), a row's product over a subgroup of 32:
// the lane exchanges are tg_sg.wgsl's (devices whose subgroups are exactly
// 32 wide) or tg_emu.wgsl's (workgroup memory, for tg_fused.wgsl on any
// device). The shader is fma.wgsl, quant_io.wgsl, one of those two, then
// this file, then the entry points' file (tg_exact.wgsl, tg_rope.wgsl,
// tg_q8.wgsl, tg_fused.wgsl; tg_x.wgsl binds the activations for the
// exact ones).
//
// They compute kdot_sg's bits (quant.wgsl's k_* functions are the
// specification: the same exact integer sums, the same float steps in the
// same order), but read the weights and activations as 16-byte vectors with
// one subgroup per row and every super-block of a step in flight at once:
// kdot_sg's byte-wise decoding (`ld8`, `ld32` and a `vec4<f32>` component
// per activation word) left the matrix-vector products far below the
// memory's bandwidth.

@group(0) @binding(0) var<storage, read> wv: array<vec4<u32>>;
// `xv`, the activations in act_common.wgsl's packed layout (quants from
// vector 0, [d, bsums] from word p.corr_base), is tg_x.wgsl's storage
// binding or tg_fused.wgsl's workgroup copy.

// Rows (subgroups) per workgroup.
const TG_ROWS: u32 = 4u;

fn tg_dot8(w0: vec4<u32>, w1: vec4<u32>, a0: vec4<u32>, a1: vec4<u32>) -> i32 {
    return ((dot4I8Packed(w0.x, a0.x) + dot4I8Packed(w0.y, a0.y))
        + (dot4I8Packed(w0.z, a0.z) + dot4I8Packed(w0.w, a0.w)))
        + ((dot4I8Packed(w1.x, a1.x) + dot4I8Packed(w1.y, a1.y))
        + (dot4I8Packed(w1.z, a1.z) + dot4I8Packed(w1.w, a1.w)));
}

// hsum_float_8 of v over invocations 0 .. 7 of the subgroup (ggml's eight
// vec_dot lanes), in every invocation. Every invocation must call it.
fn hsum_lanes8(v: f32) -> f32 {
    let lo = vec4<f32>(sg_f32(v, 0u), sg_f32(v, 1u),
                       sg_f32(v, 2u), sg_f32(v, 3u));
    let hi = vec4<f32>(sg_f32(v, 4u), sg_f32(v, 5u),
                       sg_f32(v, 6u), sg_f32(v, 7u));
    return hsum_float_8(lo, hi);
}

// Byte k (< 12) of a Q4_K super-block's scales (words 1..3 of its first vec4).
fn q4k_sbyte(h: vec4<u32>, k: u32) -> u32 {
    return (h[1u + (k >> 2u)] >> (8u * (k & 3u))) & 0xffu;
}

// get_scale_min_k4: (scale, min) of sub-block j.
fn q4k_scale_min(h: vec4<u32>, j: u32) -> vec2<i32> {
    if (j < 4u) {
        return vec2<i32>(i32(q4k_sbyte(h, j) & 63u), i32(q4k_sbyte(h, j + 4u) & 63u));
    }
    let s = (q4k_sbyte(h, j + 4u) & 0xfu) | ((q4k_sbyte(h, j - 4u) >> 6u) << 4u);
    let m = (q4k_sbyte(h, j + 4u) >> 4u) | ((q4k_sbyte(h, j) >> 6u) << 4u);
    return vec2<i32>(i32(s), i32(m));
}

// The sum of a block's two bsums (two i16 in one word).
fn bsum_pair(v: u32) -> i32 {
    return (i32(v << 16u) >> 16u) + (i32(v) >> 16u);
}

// The float steps of super-blocks sb0 .. sb0 + 7 (those below nsb), whose
// (s, d·d_a, m, dmin·d_a) invocation 4j holds for super-block sb0 + j.
// All eight shuffles come first, then the chain of fmas (a loop that
// shuffled and then multiplied waited out the shuffle at every pass); the
// step's super-blocks past nsb are left out.
fn q4k_steps(acc: ptr<function, vec2<f32>>, f: vec4<f32>, sb0: u32, nsb: u32) {
    let g0 = sg_vec4(f, 0u);
    let g1 = sg_vec4(f, 4u);
    let g2 = sg_vec4(f, 8u);
    let g3 = sg_vec4(f, 12u);
    let g4 = sg_vec4(f, 16u);
    let g5 = sg_vec4(f, 20u);
    let g6 = sg_vec4(f, 24u);
    let g7 = sg_vec4(f, 28u);
    let n = nsb - sb0;
    var a = q4k_fstep(*acc, g0);
    if (n > 1u) { a = q4k_fstep(a, g1); }
    if (n > 2u) { a = q4k_fstep(a, g2); }
    if (n > 3u) { a = q4k_fstep(a, g3); }
    if (n > 4u) { a = q4k_fstep(a, g4); }
    if (n > 5u) { a = q4k_fstep(a, g5); }
    if (n > 6u) { a = q4k_fstep(a, g6); }
    if (n > 7u) { a = q4k_fstep(a, g7); }
    *acc = a;
}

// One super-block's float step: (s, d·d_a, m, dmin·d_a) into acc.
fn q4k_fstep(acc: vec2<f32>, g: vec4<f32>) -> vec2<f32> {
    return vec2<f32>(fma_rn(g.x, g.y, acc.x), fma_rn(g.z, g.w, acc.y));
}

// Row `row`'s product, which every invocation of its subgroup returns.
// Invocation t takes quarter t % 4 (sub-blocks 2q, 2q + 1) of super-block
// sb0 + t / 4, eight super-blocks per step: their exact (scale, min) sums are added over
// the quarters (as kdot_sg's pieces), and every invocation then takes the
// repacked gemv's float steps of the eight in order (k_fstep, ORDER 4).
// (Loading every step before the float steps measured slower on an H100.)
fn q4k_dot(row: u32, t: u32) -> f32 {
    let nsb = p.k >> 8u;
    let rb = row * (p.row_bytes >> 4u);
    let q = t & 3u;
    let m4 = vec4<u32>(0x0f0f0f0fu);
    var acc = vec2<f32>(0.0);
    for (var sb0 = 0u; sb0 < nsb; sb0 += 8u) {
        let sb = min(sb0 + (t >> 2u), nsb - 1u);
        let bo = rb + 9u * sb; // 144 bytes: nine vectors
        let hd = wv[bo];
        let w0 = wv[bo + 1u + 2u * q];
        let w1 = wv[bo + 2u + 2u * q];
        let xo = 16u * sb + 4u * q;
        // [d, bsums] of the activation blocks 2q and 2q + 1.
        let cs = xv[(p.corr_base >> 2u) + 4u * sb + q];
        let dlo = tg_dot8(w0 & m4, w1 & m4, xv[xo], xv[xo + 1u]);
        let dhi = tg_dot8((w0 >> vec4<u32>(4u)) & m4, (w1 >> vec4<u32>(4u)) & m4, xv[xo + 2u], xv[xo + 3u]);
        let sm0 = q4k_scale_min(hd, 2u * q);
        let sm1 = q4k_scale_min(hd, 2u * q + 1u);
        var s = sm0.x * dlo + sm1.x * dhi;
        let dm = unpack2x16float(hd.x);
        var m = 0;
        if (dm.y != 0.0) {
            m = sm0.y * bsum_pair(cs.y) + sm1.y * bsum_pair(cs.w);
        }
        s += sg_xor_i32(s, 1u);
        s += sg_xor_i32(s, 2u);
        m += sg_xor_i32(m, 1u);
        m += sg_xor_i32(m, 2u);
        let dy = bitcast<f32>(cs.x);
        q4k_steps(&acc, vec4<f32>(i2f_rn(s), mul_rn(dm.x, dy), i2f_rn(m), mul_rn(dm.y, dy)), sb0, nsb);
    }
    return acc.x - acc.y;
}


// Word i (of four bytes) of the weights.
fn tg_w(i: u32) -> u32 {
    return wv[i >> 2u][i & 3u];
}

// 32 bits at an even byte offset o (Q6_K's 210-byte super-blocks leave every
// other one 2 bytes off a word boundary).
fn tg_ld32(o: u32) -> u32 {
    let i = o >> 2u;
    if ((o & 2u) == 0u) {
        return tg_w(i);
    }
    return (tg_w(i) >> 16u) | (tg_w(i + 1u) << 16u);
}

// Sub-block s's signed scale (sc: the 16 scale bytes as four words).
fn q6k_scale(sc: vec4<u32>, s: u32) -> i32 {
    return i32(sc[s >> 2u] << (24u - 8u * (s & 3u))) >> 24u;
}

// Chunk c's term of lane l's sum: quants w (k_word's case 14) times
// activation word 64 sb + 8c + l, scaled by sub-block 2c + half.
fn q6k_term(w: u32, xo: u32, c: u32, sc: vec4<u32>, half: u32) -> i32 {
    let i = xo + 8u * c;
    return q6k_scale(sc, 2u * c + half) * dot4I8Packed(w, xv[i >> 2u][i & 3u]);
}

// Lane l's float steps of super-blocks sb0 .. sb0 + 3 (those below nsb),
// whose (sum, d·d_a) invocation l + 8k holds for super-block sb0 + k.
// (The four shuffles first, as q4k_steps.)
fn q6k_steps(acc: ptr<function, f32>, f: vec2<f32>, sb0: u32, nsb: u32, l: u32) {
    let g0 = sg_vec2(f, l);
    let g1 = sg_vec2(f, l + 8u);
    let g2 = sg_vec2(f, l + 16u);
    let g3 = sg_vec2(f, l + 24u);
    let n = nsb - sb0;
    var a = fma_rn(g0.y, g0.x, *acc);
    if (n > 1u) { a = fma_rn(g1.y, g1.x, a); }
    if (n > 2u) { a = fma_rn(g2.y, g2.x, a); }
    if (n > 3u) { a = fma_rn(g3.y, g3.x, a); }
    *acc = a;
}

// Row `row`'s product, which every invocation of its subgroup returns.
// Invocation t of the row's subgroup takes vec_dot lane
// l = t % 8 (elements 32c + 4l .. + 3 of every 32, ORDER 2) of super-block
// sb0 + t / 8, four super-blocks per step; lane l's class then gathers the
// four super-blocks' sums in order and runs lane l's float chain, and
// hsum_float_8 gathers the eight lanes (kdot_sg, ORDER 2, Q6_K).
fn q6k_dot(row: u32, t: u32) -> f32 {
    let nsb = p.k >> 8u;
    let base = row * p.row_bytes;
    let l = t & 7u;
    let half = l >> 2u;
    let m4 = 0x0f0f0f0fu;
    let m2 = 0x03030303u;
    var acc = 0.0;
    for (var sb0 = 0u; sb0 < nsb; sb0 += 4u) {
        let sb = min(sb0 + (t >> 3u), nsb - 1u);
        let b = base + 210u * sb;
        let ql0 = tg_ld32(b + 4u * l);
        let ql1 = tg_ld32(b + 32u + 4u * l);
        let ql2 = tg_ld32(b + 64u + 4u * l);
        let ql3 = tg_ld32(b + 96u + 4u * l);
        let qh0 = tg_ld32(b + 128u + 4u * l);
        let qh1 = tg_ld32(b + 160u + 4u * l);
        let sc = vec4<u32>(tg_ld32(b + 192u), tg_ld32(b + 196u), tg_ld32(b + 200u), tg_ld32(b + 204u));
        let d = unpack2x16float(tg_ld32(b + 208u) & 0xffffu).x;
        let xo = 64u * sb + l;
        // Chunk c: quarter j = c % 4 of half h = c / 4 (k_word's case 14).
        var sumi = ((q6k_term((ql0 & m4) | ((qh0 & m2) << 4u), xo, 0u, sc, half)
            + q6k_term((ql1 & m4) | (((qh0 >> 2u) & m2) << 4u), xo, 1u, sc, half))
            + (q6k_term(((ql0 >> 4u) & m4) | (((qh0 >> 4u) & m2) << 4u), xo, 2u, sc, half)
            + q6k_term(((ql1 >> 4u) & m4) | (((qh0 >> 6u) & m2) << 4u), xo, 3u, sc, half)))
            + ((q6k_term((ql2 & m4) | ((qh1 & m2) << 4u), xo, 4u, sc, half)
            + q6k_term((ql3 & m4) | (((qh1 >> 2u) & m2) << 4u), xo, 5u, sc, half))
            + (q6k_term(((ql2 >> 4u) & m4) | (((qh1 >> 4u) & m2) << 4u), xo, 6u, sc, half)
            + q6k_term(((ql3 >> 4u) & m4) | (((qh1 >> 6u) & m2) << 4u), xo, 7u, sc, half)));
        // Minus 32·(sc 2l·bsums 2l + sc 2l+1·bsums 2l+1) (bsums of block l).
        let j = p.corr_base + 2u * (8u * sb + l);
        let bs = xv[j >> 2u];
        let bw = bs[(j & 3u) + 1u];
        sumi -= 32 * (q6k_scale(sc, 2u * l) * (i32(bw << 16u) >> 16u)
            + q6k_scale(sc, 2u * l + 1u) * (i32(bw) >> 16u));
        let dy = bitcast<f32>(bs[j & 3u]);
        q6k_steps(&acc, vec2<f32>(i2f_rn(sumi), mul_rn(dy, d)), sb0, nsb, l);
    }
    return hsum_lanes8(acc);
}


// Lane l's float steps of Q5_K super-blocks sb0 .. sb0 + 3 (those below
// nsb): (sum, d·d_a, mins sum, −dmin·d_a) of super-block sb0 + k held by
// invocation l + 8k; the mins chain (acc2) is lane 0's. (The shuffles
// first, as q4k_steps.)
fn q5k_steps(acc: ptr<function, f32>, acc2: ptr<function, f32>, f: vec4<f32>, sb0: u32, nsb: u32,
             l: u32) {
    let g0 = sg_vec4(f, l);
    let g1 = sg_vec4(f, l + 8u);
    let g2 = sg_vec4(f, l + 16u);
    let g3 = sg_vec4(f, l + 24u);
    let n = nsb - sb0;
    var a = fma_rn(g0.y, g0.x, *acc);
    var a2 = fma_rn(g0.w, g0.z, *acc2);
    if (n > 1u) { a = fma_rn(g1.y, g1.x, a); a2 = fma_rn(g1.w, g1.z, a2); }
    if (n > 2u) { a = fma_rn(g2.y, g2.x, a); a2 = fma_rn(g2.w, g2.z, a2); }
    if (n > 3u) { a = fma_rn(g3.y, g3.x, a); a2 = fma_rn(g3.w, g3.z, a2); }
    *acc = a;
    *acc2 = a2;
}

// Q5_K (176-byte super-blocks: d, dmin, twelve bytes of scales and mins as
// Q4_K's, 32 bytes of fifth bits, 128 of nibbles), the AVX2 vec_dot lanes
// (ORDER 2) as kdot_sg computes them: invocation t takes lane l = t % 8 of
// super-block sb0 + t / 8, four super-blocks per step, its eight words (one
// per sub-block c: elements 32c + 4l .. + 3) from 4-byte reads of aligned
// vectors; lane 0 also takes the mins sum (all eight sub-blocks). Lane l's
// class then gathers the four super-blocks in order and runs lane l's
// chain, and hsum_float_8 of the eight lanes plus lane 0's mins chain is
// the output, which every invocation of the row's subgroup returns.
fn q5k_dot(row: u32, t: u32) -> f32 {
    let nsb = p.k >> 8u;
    let rb = row * (p.row_bytes >> 4u);
    let l = t & 7u;
    let lv = l >> 2u;
    let lc = l & 3u;
    let m4 = 0x0f0f0f0fu;
    var acc = 0.0;
    var acc2 = 0.0;
    for (var sb0 = 0u; sb0 < nsb; sb0 += 4u) {
        let sb = min(sb0 + (t >> 3u), nsb - 1u);
        let bo = rb + 11u * sb; // 176 bytes: eleven vectors
        let hd = wv[bo];
        let qh = wv[bo + 1u + lv][lc];
        let q0 = wv[bo + 3u + lv][lc];
        let q1 = wv[bo + 5u + lv][lc];
        let q2 = wv[bo + 7u + lv][lc];
        let q3 = wv[bo + 9u + lv][lc];
        let cb = (p.corr_base >> 2u) + 4u * sb; // [d, bsums] of the eight blocks
        let c0 = xv[cb];
        let xo = 64u * sb + l;
        var sumi = 0;
        for (var c = 0u; c < 8u; c++) {
            let qs = select(select(q0, q1, c >= 2u), select(q2, q3, c >= 6u), c >= 4u);
            let wd = ((qs >> (4u * (c & 1u))) & m4) | (((qh >> c) & 0x01010101u) << 4u);
            let i = xo + 8u * c;
            sumi += q4k_scale_min(hd, c).x * dot4I8Packed(wd, xv[i >> 2u][i & 3u]);
        }
        var extra = 0;
        if (l == 0u) {
            let c1 = xv[cb + 1u];
            let c2 = xv[cb + 2u];
            let c3 = xv[cb + 3u];
            extra = (q4k_scale_min(hd, 0u).y * bsum_pair(c0.y) + q4k_scale_min(hd, 1u).y * bsum_pair(c0.w))
                + (q4k_scale_min(hd, 2u).y * bsum_pair(c1.y) + q4k_scale_min(hd, 3u).y * bsum_pair(c1.w))
                + (q4k_scale_min(hd, 4u).y * bsum_pair(c2.y) + q4k_scale_min(hd, 5u).y * bsum_pair(c2.w))
                + (q4k_scale_min(hd, 6u).y * bsum_pair(c3.y) + q4k_scale_min(hd, 7u).y * bsum_pair(c3.w));
        }
        let dm = unpack2x16float(hd.x);
        let dy = bitcast<f32>(c0.x);
        q5k_steps(&acc, &acc2, vec4<f32>(i2f_rn(sumi), mul_rn(dy, dm.x), f32(extra), -mul_rn(dy, dm.y)),
                  sb0, nsb, l);
    }
    return hsum_lanes8(acc) + sg_f32(acc2, 0u);
}

