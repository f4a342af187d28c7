// quant_sg.wgsl: kdot (quant.wgsl) with one 32-wide subgroup per output,
// for devices whose subgroups are exactly 32 invocations (NVIDIA's, for
// one; wgpu's SUBGROUP feature). The shader is fma.wgsl, quant.wgsl, then
// this file; kdot itself stays the fallback everywhere else.
//
// Per super-block, invocation t takes words t and t + 32 of the 64 (so a
// subgroup reads a super-block's quants in two coalesced sweeps), and the
// exact integer sums are combined in the subgroup instead of in workgroup
// memory, with no barrier:
//   ORDER 2 (vec_dot lanes): words t and t + 32 both belong to vec_dot lane
//     t % 8, whose sum two butterfly steps (xor 8, xor 16) give every
//     invocation of that lane's class; each class then runs its lane's float
//     chain (four copies, identical), and hsum_float_8 gathers the eight.
//   ORDER 3, 4: per-quarter sums (64 elements each) added over the subgroup
//     (`subgroupAdd`), then every invocation runs the output's float chain.
// Integer additions are exact in any order, so the result is kdot's to the
// bit.

// The exact sums invocation t needs from super-block sb (at byte b) of
// token tok: ORDER 2, (its vec_dot lane's sum, the lane's mins term) in
// s.xy; ORDER 3, 4, the output's per-quarter sums s and mins m.
struct KSums {
    s: vec4<i32>,
    m: vec4<i32>,
}

fn ksg_sums(b: u32, tok: u32, sb: u32, t: u32) -> KSums {
    let wps = k_sub_len() >> 2u;
    let lane = t & 7u;
    let u0 = t;
    let u1 = t + 32u;
    let d0 = dot4I8Packed(k_word(b, u0), k_xq(tok, sb, u0));
    let d1 = dot4I8Packed(k_word(b, u1), k_xq(tok, sb, u1));
    let sub0 = u0 / wps;
    let sub1 = u1 / wps;
    if (ORDER == 2u) {
        var part = k_scale(b, sub0) * d0 + k_scale(b, sub1) * d1;
        part += subgroupShuffleXor(part, 8u);
        part += subgroupShuffleXor(part, 16u);
        var extra = 0;
        if (FORMAT == 10u) {
            extra = k_min(b, 2u * lane) * k_bsum(tok, sb, 2u * lane)
                + k_min(b, 2u * lane + 1u) * k_bsum(tok, sb, 2u * lane + 1u);
        }
        if (FORMAT == 14u) {
            part -= 32 * (k_scale(b, 2u * lane) * k_bsum(tok, sb, 2u * lane)
                + k_scale(b, 2u * lane + 1u) * k_bsum(tok, sb, 2u * lane + 1u));
        }
        if (FORMAT == 12u && lane < 4u) {
            extra = k_min(b, 2u * lane) * k_sub_bsum(tok, sb, 2u * lane)
                + k_min(b, 2u * lane + 1u) * k_sub_bsum(tok, sb, 2u * lane + 1u);
        }
        if (FORMAT == 13u && lane == 0u) {
            for (var s = 0u; s < 8u; s++) {
                extra += k_min(b, s) * k_sub_bsum(tok, sb, s);
            }
        }
        return KSums(vec4<i32>(part, extra, 0, 0), vec4<i32>(0));
    }
    // Quarter sums: word u lies in quarter u / 16; a sub-block's first word
    // brings its Q6_K offset and its min.
    var s = vec4<i32>(0);
    var m = vec4<i32>(0);
    var c0 = d0;
    var c1 = d1;
    if (FORMAT == 14u) {
        if (u0 % wps == 0u) { c0 -= 32 * k_bsum(tok, sb, sub0); }
        if (u1 % wps == 0u) { c1 -= 32 * k_bsum(tok, sb, sub1); }
    }
    s[u0 >> 4u] += k_scale(b, sub0) * c0;
    s[u1 >> 4u] += k_scale(b, sub1) * c1;
    if ((FORMAT == 10u || FORMAT == 12u || FORMAT == 13u) && k_dmin(b).y != 0.0) {
        if (u0 % wps == 0u) { m[u0 >> 4u] += k_min(b, sub0) * k_sub_bsum(tok, sb, sub0); }
        if (u1 % wps == 0u) { m[u1 >> 4u] += k_min(b, sub1) * k_sub_bsum(tok, sb, sub1); }
    }
    return KSums(subgroupAdd(s), subgroupAdd(m));
}

// The float steps of super-block sb (at byte b) with its exact sums `k`.
fn ksg_step(acc: ptr<function, f32>, acc2: ptr<function, f32>, k: KSums, b: u32, tok: u32,
            sb: u32, lane: u32, gemm: bool) {
    let dy = k_xd(tok, sb);
    let dm = k_dmin(b);
    if (ORDER == 2u) {
        let ndmin = -mul_rn(dy, dm.y);
        if (FORMAT == 10u) {
            *acc = fma_rn(ndmin, f32(k.s.y), *acc);
        }
        if ((FORMAT == 12u && lane < 4u) || (FORMAT == 13u && lane == 0u)) {
            *acc2 = fma_rn(ndmin, f32(k.s.y), *acc2);
        }
        *acc = fma_rn(mul_rn(dy, dm.x), i2f_rn(k.s.x), *acc);
        return;
    }
    let s = k.s;
    let m = k.m;
    let s1 = (s.x + s.y) + (s.z + s.w);
    let s2 = (m.x + m.y) + (m.z + m.w);
    if (ORDER == 3u) {
        let res = fma_rn(-dm.y, i2f_rn(s2), mul_rn(dm.x, i2f_rn(s1)));
        *acc = fma_rn(res, dy, *acc);
    } else if (gemm) {
        let dd = mul_rn(dm.x, dy);
        let dmm = mul_rn(dm.y, dy);
        for (var q = 0u; q < 4u; q++) {
            *acc = fma_rn(i2f_rn(s[q]), dd, *acc);
            *acc2 = fma_rn(i2f_rn(m[q]), dmm, *acc2);
        }
    } else {
        *acc = fma_rn(i2f_rn(s1), mul_rn(dm.x, dy), *acc);
        *acc2 = fma_rn(i2f_rn(s2), mul_rn(dm.y, dy), *acc2);
    }
}

// Grid: (ceil(tokens / QDOT_TOKENS), ceil(m / (8 / QDOT_TOKENS)), 1): eight
// outputs per workgroup. (Taking super-blocks four at a time, their loads
// issued before any sum is used, measured slower on an H100: tg 257
// against 278 t/s on the TinyLlama-shaped Q4_K_M.)
@compute @workgroup_size(256)
fn kdot_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
           @builtin(subgroup_invocation_id) t: u32) {
    let unit = lid >> 5u;
    let tok_raw = wid.x * QDOT_TOKENS + unit % QDOT_TOKENS;
    let row_raw = wid.y * (8u / QDOT_TOKENS) + unit / QDOT_TOKENS;
    let live = row_raw < p.m && tok_raw < step.n_tokens;
    // Dead outputs read a live one's data (no early return: subgroup
    // operations need the whole subgroup) and store nothing.
    let tok = min(tok_raw, step.n_tokens - 1u);
    let row = min(row_raw, p.m - 1u);
    let nsb = p.k >> 8u;
    let bb = k_block_bytes();
    let base = row * p.row_bytes;
    let lane = t & 7u;
    let gemm = ORDER == 4u && tok < step.n_tokens - step.n_tokens % 4u;
    var acc = 0.0;
    var acc2 = 0.0;
    for (var sb = 0u; sb < nsb; sb++) {
        let b = base + sb * bb;
        ksg_step(&acc, &acc2, ksg_sums(b, tok, sb, t), b, tok, sb, lane, gemm);
    }
    var res = acc - acc2;
    if (ORDER == 2u) {
        // hsum_float_8 over the eight lanes: (a4 + a0) + (a6 + a2),
        // (a5 + a1) + (a7 + a3).
        let a0 = subgroupShuffle(acc, 0u);
        let a1 = subgroupShuffle(acc, 1u);
        let a2 = subgroupShuffle(acc, 2u);
        let a3 = subgroupShuffle(acc, 3u);
        let a4 = subgroupShuffle(acc, 4u);
        let a5 = subgroupShuffle(acc, 5u);
        let a6 = subgroupShuffle(acc, 6u);
        let a7 = subgroupShuffle(acc, 7u);
        res = ((a4 + a0) + (a6 + a2)) + ((a5 + a1) + (a7 + a3));
        if (FORMAT == 12u) {
            let m0 = subgroupShuffle(acc2, 0u);
            let m1 = subgroupShuffle(acc2, 1u);
            let m2 = subgroupShuffle(acc2, 2u);
            let m3 = subgroupShuffle(acc2, 3u);
            res = res + ((m0 + m2) + (m1 + m3));
        }
        if (FORMAT == 13u) {
            res = res + subgroupShuffle(acc2, 0u);
        }
    }
    if (live && t == 0u) {
        store(tok, row, res);
    }
}

// qdot (quant.wgsl: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 IQ4_NL) with one subgroup per
// output. Blocks are taken four at a time, invocation t holding word t % 8
// of block c0 + t / 8:
//   ORDER 0 (vec_dot lanes): word j belongs to lane j; each lane's class
//     (t ≡ j mod 8) gathers the four blocks' sums and scales in block order
//     and applies them to its chain, and hsum_float_8 gathers the lanes;
//   ORDER 1 (repacked gemm/gemv): each block's eight words are added
//     (butterfly), and every invocation applies the four blocks in order.
// Grid: as kdot_sg's.
@compute @workgroup_size(256)
fn qdot_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
           @builtin(subgroup_invocation_id) t: u32) {
    let unit = lid >> 5u;
    let tok_raw = wid.x * QDOT_TOKENS + unit % QDOT_TOKENS;
    let row_raw = wid.y * (8u / QDOT_TOKENS) + unit / QDOT_TOKENS;
    let live = row_raw < p.m && tok_raw < step.n_tokens;
    let tok = min(tok_raw, step.n_tokens - 1u);
    let row = min(row_raw, p.m - 1u);
    let nb = p.k >> 5u;
    let bb = qdot_block_bytes();
    let base = row * p.row_bytes;
    let j = t & 7u;
    let has_min = FORMAT == 3u || FORMAT == 7u;
    var acc = 0.0;
    var summs = 0.0;
    for (var c0 = 0u; c0 < nb; c0 += 4u) {
        let c = c0 + (t >> 3u);
        var sum = 0;
        var dd = 0.0;
        var ms = 0.0;
        if (c < nb) {
            let b = base + c * bb;
            let ds = qdot_xs(tok, c);
            dd = f16at(b) * ds.x;
            sum = dot4I8Packed(qdot_wq(base, c, j), qdot_xq(tok, c, j));
            if (has_min) {
                ms = mul_rn(f16at(b + 2u), ds.y);
            }
        }
        if (ORDER == 1u) {
            sum += subgroupShuffleXor(sum, 1u);
            sum += subgroupShuffleXor(sum, 2u);
            sum += subgroupShuffleXor(sum, 4u);
        }
        for (var q = 0u; q < 4u; q++) {
            let src = select(8u * q, j + 8u * q, ORDER == 0u);
            let s_q = subgroupShuffle(sum, src);
            let d_q = subgroupShuffle(dd, src);
            let m_q = subgroupShuffle(ms, 8u * q);
            if (c0 + q < nb) {
                if (ORDER == 0u) {
                    acc = fma_rn(d_q, f32(s_q), acc);
                    if (has_min) {
                        summs = summs + m_q;
                    }
                } else {
                    acc = fma_rn(f32(s_q), d_q, acc);
                }
            }
        }
    }
    var res = acc;
    if (ORDER == 0u) {
        let a0 = subgroupShuffle(acc, 0u);
        let a1 = subgroupShuffle(acc, 1u);
        let a2 = subgroupShuffle(acc, 2u);
        let a3 = subgroupShuffle(acc, 3u);
        let a4 = subgroupShuffle(acc, 4u);
        let a5 = subgroupShuffle(acc, 5u);
        let a6 = subgroupShuffle(acc, 6u);
        let a7 = subgroupShuffle(acc, 7u);
        res = (((a4 + a0) + (a6 + a2)) + ((a5 + a1) + (a7 + a3))) + summs;
    }
    if (live && t == 0u) {
        store(tok, row, res);
    }
}
