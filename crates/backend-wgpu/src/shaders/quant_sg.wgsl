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

// The output of the subgroup that invocation lid belongs to (eight per
// workgroup, QDOT_TOKENS consecutive tokens per row). Dead outputs (past
// the matrix or the batch) read a live one's data, since subgroup
// operations need the whole subgroup (no early return), and store nothing.
struct SgOut {
    tok: u32,
    row: u32,
    live: bool,
}

fn sg_output(wid: vec3<u32>, lid: u32) -> SgOut {
    let unit = lid >> 5u;
    let tok = wid.x * QDOT_TOKENS + unit % QDOT_TOKENS;
    let row = wid.y * (8u / QDOT_TOKENS) + unit / QDOT_TOKENS;
    return SgOut(min(tok, step.n_tokens - 1u), min(row, p.m - 1u), row < p.m && tok < step.n_tokens);
}

// Grid: (ceil(tokens / QDOT_TOKENS), ceil(m / (8 / QDOT_TOKENS)), 1): eight
// outputs per workgroup.
@compute @workgroup_size(256)
fn kdot_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
           @builtin(subgroup_invocation_id) t: u32) {
    let o = sg_output(wid, lid);
    let tok = o.tok;
    let row = o.row;
    let live = o.live;
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
            let mine = k_lane_sums(b, tok, sb, lane);
            for (var q = 0u; q < 4u; q++) {
                let ls = subgroupShuffle(mine, lane + 8u * q);
                if (sb0 + q < nsb) {
                    k_lane_step(&acc, &acc2, ls, base + (sb0 + q) * bb, tok, sb0 + q, lane);
                }
            }
        } else {
            var part = k_piece_sums(b, tok, sb, lane);
            // Pieces 2q, 2q + 1 make quarter q; the four quarters, the whole.
            part += subgroupShuffleXor(part, 1u);
            if (!gemm) {
                part += subgroupShuffleXor(part, 2u);
                part += subgroupShuffleXor(part, 4u);
            }
            for (var q = 0u; q < 4u; q++) {
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
                if (sb0 + q < nsb) {
                    k_sb_step(&acc, &acc2, s, m, base + (sb0 + q) * bb, tok, sb0 + q, gemm);
                }
            }
        }
    }
    var res = acc - acc2;
    if (ORDER == 2u) {
        // hsum_float_8 over the eight lanes.
        let lo = vec4<f32>(subgroupShuffle(acc, 0u), subgroupShuffle(acc, 1u),
                           subgroupShuffle(acc, 2u), subgroupShuffle(acc, 3u));
        let hi = vec4<f32>(subgroupShuffle(acc, 4u), subgroupShuffle(acc, 5u),
                           subgroupShuffle(acc, 6u), subgroupShuffle(acc, 7u));
        res = hsum_float_8(lo, hi);
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
// Four such groups of four blocks are loaded before the first is applied
// (a group's 136 bytes or fewer per row left the memory idle between
// groups).
// Grid: as kdot_sg's.

// Invocation t's share of blocks c .. c + 3 (block c + t / 8, word t % 8):
// its word's exact sum, the block's d·d_a and, with a min, m·s_a.
struct QdotPiece {
    sum: i32,
    dd: f32,
    ms: f32,
}

fn qdot_piece(base: u32, tok: u32, c: u32, j: u32, nb: u32) -> QdotPiece {
    var pc = QdotPiece(0, 0.0, 0.0);
    if (c < nb) {
        let b = base + c * qdot_block_bytes();
        let ds = qdot_xs(tok, c);
        pc.dd = f16at(b) * ds.x;
        pc.sum = dot4I8Packed(qdot_wq(base, c, j), qdot_xq(tok, c, j));
        if (FORMAT == 3u || FORMAT == 7u) {
            pc.ms = mul_rn(f16at(b + 2u), ds.y);
        }
    }
    return pc;
}

// Applies blocks c0 .. c0 + 3 (those below nb) from the pieces, in order:
// the twelve shuffles first, then the chain (a loop that shuffled and then
// multiplied waited out the shuffle at every block).
fn qdot_apply(acc: ptr<function, f32>, summs: ptr<function, f32>, pc: QdotPiece, j: u32, c0: u32,
              nb: u32) {
    var sum = pc.sum;
    if (ORDER == 1u) {
        sum += subgroupShuffleXor(sum, 1u);
        sum += subgroupShuffleXor(sum, 2u);
        sum += subgroupShuffleXor(sum, 4u);
    }
    let o = select(0u, j, ORDER == 0u);
    let s4 = vec4<f32>(f32(subgroupShuffle(sum, o)), f32(subgroupShuffle(sum, o + 8u)),
                       f32(subgroupShuffle(sum, o + 16u)), f32(subgroupShuffle(sum, o + 24u)));
    let d4 = vec4<f32>(subgroupShuffle(pc.dd, o), subgroupShuffle(pc.dd, o + 8u),
                       subgroupShuffle(pc.dd, o + 16u), subgroupShuffle(pc.dd, o + 24u));
    let m4 = vec4<f32>(subgroupShuffle(pc.ms, 0u), subgroupShuffle(pc.ms, 8u),
                       subgroupShuffle(pc.ms, 16u), subgroupShuffle(pc.ms, 24u));
    if (c0 >= nb) {
        return;
    }
    // (Both orders multiply the sum by the scale; a fused product is the
    // same whichever operand comes first.)
    let n = nb - c0;
    var a = fma_rn(s4.x, d4.x, *acc);
    if (n > 1u) { a = fma_rn(s4.y, d4.y, a); }
    if (n > 2u) { a = fma_rn(s4.z, d4.z, a); }
    if (n > 3u) { a = fma_rn(s4.w, d4.w, a); }
    *acc = a;
    if (ORDER == 0u && (FORMAT == 3u || FORMAT == 7u)) {
        var m = *summs + m4.x;
        if (n > 1u) { m = m + m4.y; }
        if (n > 2u) { m = m + m4.z; }
        if (n > 3u) { m = m + m4.w; }
        *summs = m;
    }
}

@compute @workgroup_size(256)
fn qdot_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
           @builtin(subgroup_invocation_id) t: u32) {
    let o = sg_output(wid, lid);
    let tok = o.tok;
    let row = o.row;
    let live = o.live;
    let nb = p.k >> 5u;
    let base = row * p.row_bytes;
    let j = t & 7u;
    let slot = t >> 3u;
    var acc = 0.0;
    var summs = 0.0;
    for (var c0 = 0u; c0 < nb; c0 += 16u) {
        let p0 = qdot_piece(base, tok, c0 + slot, j, nb);
        let p1 = qdot_piece(base, tok, c0 + 4u + slot, j, nb);
        let p2 = qdot_piece(base, tok, c0 + 8u + slot, j, nb);
        let p3 = qdot_piece(base, tok, c0 + 12u + slot, j, nb);
        qdot_apply(&acc, &summs, p0, j, c0, nb);
        qdot_apply(&acc, &summs, p1, j, c0 + 4u, nb);
        qdot_apply(&acc, &summs, p2, j, c0 + 8u, nb);
        qdot_apply(&acc, &summs, p3, j, c0 + 12u, nb);
    }
    var res = acc;
    if (ORDER == 0u) {
        let lo = vec4<f32>(subgroupShuffle(acc, 0u), subgroupShuffle(acc, 1u),
                           subgroupShuffle(acc, 2u), subgroupShuffle(acc, 3u));
        let hi = vec4<f32>(subgroupShuffle(acc, 4u), subgroupShuffle(acc, 5u),
                           subgroupShuffle(acc, 6u), subgroupShuffle(acc, 7u));
        res = hsum_float_8(lo, hi) + summs;
    }
    if (live && t == 0u) {
        store(tok, row, res);
    }
}
