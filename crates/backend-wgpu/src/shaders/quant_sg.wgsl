// quant_sg.wgsl: kdot (quant.wgsl) with one 32-wide subgroup per output,
// for devices whose subgroups are exactly 32 invocations (NVIDIA's, for
// one; wgpu's SUBGROUP feature). The shader is fma.wgsl, quant.wgsl, then
// this file; kdot itself stays the fallback everywhere else.
//
// Super-blocks are taken four at a time: invocation t works on super-block
// sb0 + t / 8, as invocation t % 8 of kdot's eight for it (ORDER 2: vec_dot
// lane t % 8's sums; ORDER 3, 4: the sums of elements 32(t % 8) .. + 31),
// with no workgroup memory and no barrier:
//   ORDER 2: lane j's class (t ≡ j mod 8) gathers the four super-blocks'
//     sums in order (subgroupShuffle) and runs lane j's float chain (four
//     identical copies); hsum_float_8 gathers the eight lanes at the end.
//   ORDER 3, 4: the eight pieces of a super-block are added (butterfly; for
//     the Q4_K gemm in pairs, the four quarters), and every invocation runs
//     the output's float chain over the four super-blocks in order.
// Integer additions are exact in any order, so the result is kdot's to the
// bit.

// Lane j's exact sums of super-block sb (at byte b) of token tok, as
// ggml_vec_dot_<fmt>_q8_K's AVX2 code holds them: (the lane's scale-weighted
// sum, its mins term).
fn ksg_lane(b: u32, tok: u32, sb: u32, lane: u32) -> vec2<i32> {
    var sumi = 0;
    for (var c = 0u; c < 8u; c++) {
        let u = 8u * c + lane;
        var s = c;
        if (k_sub_len() == 16u) {
            s = 2u * c + (lane >> 2u);
        }
        sumi += k_scale(b, s) * dot4I8Packed(k_word(b, u), k_xq(tok, sb, u));
    }
    var extra = 0;
    if (FORMAT == 10u) {
        // Q2_K's mins lane: mins 2l, 2l + 1 · bsums 2l, 2l + 1.
        extra = k_min(b, 2u * lane) * k_bsum(tok, sb, 2u * lane)
            + k_min(b, 2u * lane + 1u) * k_bsum(tok, sb, 2u * lane + 1u);
    }
    if (FORMAT == 14u) {
        // Q6_K: lane l takes off 32·(sc 2l·bsums 2l + sc 2l+1·bsums 2l+1).
        sumi -= 32 * (k_scale(b, 2u * lane) * k_bsum(tok, sb, 2u * lane)
            + k_scale(b, 2u * lane + 1u) * k_bsum(tok, sb, 2u * lane + 1u));
    }
    if (FORMAT == 12u && lane < 4u) {
        // Q4_K: four lanes of mins, lane j: sub-blocks 2j, 2j + 1.
        extra = k_min(b, 2u * lane) * k_sub_bsum(tok, sb, 2u * lane)
            + k_min(b, 2u * lane + 1u) * k_sub_bsum(tok, sb, 2u * lane + 1u);
    }
    if (FORMAT == 13u && lane == 0u) {
        // Q5_K: one scalar over all eight sub-blocks.
        for (var s = 0u; s < 8u; s++) {
            extra += k_min(b, s) * k_sub_bsum(tok, sb, s);
        }
    }
    return vec2<i32>(sumi, extra);
}

// The exact sums of elements 32·piece .. + 31 of super-block sb (at byte b):
// (scale-weighted sum, mins sum; 0 where dmin is 0, as tensor-core skips it).
fn ksg_piece(b: u32, tok: u32, sb: u32, piece: u32) -> vec2<i32> {
    let sl = k_sub_len();
    let words = sl >> 2u;
    let dmin = k_dmin(b).y;
    var r = vec2<i32>(0);
    for (var sub = (32u / sl) * piece; sub < (32u / sl) * (piece + 1u); sub++) {
        var d = 0;
        for (var j = 0u; j < words; j++) {
            let u = sub * words + j;
            d += dot4I8Packed(k_word(b, u), k_xq(tok, sb, u));
        }
        if (FORMAT == 14u) {
            d -= 32 * k_bsum(tok, sb, sub);
        }
        r.x += k_scale(b, sub) * d;
        if ((FORMAT == 10u || FORMAT == 12u || FORMAT == 13u) && dmin != 0.0) {
            r.y += k_min(b, sub) * k_sub_bsum(tok, sb, sub);
        }
    }
    return r;
}

// Grid: (ceil(tokens / QDOT_TOKENS), ceil(m / (8 / QDOT_TOKENS)), 1): eight
// outputs per workgroup.
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
    let slot = t >> 3u;
    let gemm = ORDER == 4u && tok < step.n_tokens - step.n_tokens % 4u;
    var acc = 0.0;
    var acc2 = 0.0; // ORDER 2: Q4_K's mins lanes, Q5_K's summs; 3, 4: acc_min
    for (var sb0 = 0u; sb0 < nsb; sb0 += 4u) {
        // This invocation's super-block (past the end: the last one again,
        // whose sums are then not used).
        let sb = min(sb0 + slot, nsb - 1u);
        let b = base + sb * bb;
        if (ORDER == 2u) {
            let mine = ksg_lane(b, tok, sb, lane);
            for (var q = 0u; q < 4u; q++) {
                let ls = subgroupShuffle(mine, lane + 8u * q);
                let sq = sb0 + q;
                if (sq < nsb) {
                    let bq = base + sq * bb;
                    let dy = k_xd(tok, sq);
                    let dm = k_dmin(bq);
                    let ndmin = -mul_rn(dy, dm.y);
                    if (FORMAT == 10u) {
                        acc = fma_rn(ndmin, f32(ls.y), acc);
                    }
                    if ((FORMAT == 12u && lane < 4u) || (FORMAT == 13u && lane == 0u)) {
                        acc2 = fma_rn(ndmin, f32(ls.y), acc2);
                    }
                    acc = fma_rn(mul_rn(dy, dm.x), i2f_rn(ls.x), acc);
                }
            }
        } else {
            var part = ksg_piece(b, tok, sb, lane);
            // Pieces 2q, 2q + 1 make quarter q; the four quarters, the whole.
            part += subgroupShuffleXor(part, 1u);
            if (!gemm) {
                part += subgroupShuffleXor(part, 2u);
                part += subgroupShuffleXor(part, 4u);
            }
            for (var q = 0u; q < 4u; q++) {
                let sq = sb0 + q;
                var s = vec4<i32>(0);
                var m = vec4<i32>(0);
                if (gemm) {
                    for (var h = 0u; h < 4u; h++) {
                        let v = subgroupShuffle(part, 8u * q + 2u * h);
                        s[h] = v.x;
                        m[h] = v.y;
                    }
                } else {
                    let v = subgroupShuffle(part, 8u * q);
                    s.x = v.x;
                    m.x = v.y;
                }
                if (sq < nsb) {
                    let bq = base + sq * bb;
                    let dy = k_xd(tok, sq);
                    let dm = k_dmin(bq);
                    let s1 = (s.x + s.y) + (s.z + s.w);
                    let s2 = (m.x + m.y) + (m.z + m.w);
                    if (ORDER == 3u) {
                        let res = fma_rn(-dm.y, i2f_rn(s2), mul_rn(dm.x, i2f_rn(s1)));
                        acc = fma_rn(res, dy, acc);
                    } else if (gemm) {
                        let dd = mul_rn(dm.x, dy);
                        let dmm = mul_rn(dm.y, dy);
                        for (var h = 0u; h < 4u; h++) {
                            acc = fma_rn(i2f_rn(s[h]), dd, acc);
                            acc2 = fma_rn(i2f_rn(m[h]), dmm, acc2);
                        }
                    } else {
                        acc = fma_rn(i2f_rn(s1), mul_rn(dm.x, dy), acc);
                        acc2 = fma_rn(i2f_rn(s2), mul_rn(dm.y, dy), acc2);
                    }
                }
            }
        }
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
