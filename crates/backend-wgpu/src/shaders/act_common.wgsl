// Shared by act_quant.wgsl and norm.wgsl (prepended to both).
//
// Activation rounding to the format ggml's CPU dot products pair a weight
// format with (its `vec_dot_type`): ggml quantizes the activations to Q8_0,
// Q8_1 or Q8_K before multiplying with quantized weights, so to agree with
// it the GPU multiplies with the same rounded values, x' = d·q, kept as f32.
//
// ACT selects the rounding (ggml type ids):
//   8 Q8_0, 9 Q8_1: blocks of 32, d = max|x|/127 stored as f16,
//     q = round(x·127/max|x|) (ggml-cpu's quantize_row_q8_0/q8_1);
//     (act_quant.wgsl's PACKED layout also keeps Q8_1's s = f16(d·Σq),
//     which the Q4_1 and Q5_1 products multiply with the weight's min);
//   15 Q8_K: blocks of 256, d = max/−127 in f32 where max is the value of
//     largest magnitude, q = min(127, round(x·(−127/max)))
//     (quantize_row_q8_K_ref).

override ACT: u32 = 0u;
// Write the PACKED layout (quantize_packed) instead of f32 values.
override PACKED: bool = false;
var<workgroup> packed_q: array<i32, 256>;

// x / y rounded to nearest even for x, y in [1, 2), where `fma` is fused
// (FMA_FUSED): the device's quotient (within a few ulp), moved an ulp at a
// time while the remainder |x − q·y| (an fma: exact once q is within an ulp)
// exceeds half an ulp·y on that side. No quotient of two f32 values lies
// exactly halfway between two f32 values, so no tie is ever decided; and
// with both operands in [1, 2) no remainder or threshold is subnormal.
fn div_mant_fma(x: f32, y: f32) -> f32 {
    var q = x / y;
    for (var i = 0u; i < 3u; i++) {
        let r = fma(-q, y, x);
        let up = bitcast<f32>(bitcast<u32>(q) + 1u);
        let dn = bitcast<f32>(bitcast<u32>(q) - 1u);
        if (r > 0.0 && r > (up - q) * y * 0.5) {
            q = up;
        } else if (r < 0.0 && -r > (q - dn) * y * 0.5) {
            q = dn;
        }
    }
    return q;
}

// a / b rounded to nearest even, as the CPU divides. GPU division may be off
// by a few ulp (and `fma` need not be fused), which would change d and then
// every q of a block, so the quotient of the 24-bit mantissas is formed by
// integer long division. Zero, subnormal or out-of-range cases fall back to
// `a / b` (they do not arise for these scales).
fn div_rn(a: f32, b: f32) -> f32 {
    let ua = bitcast<u32>(a);
    let ub = bitcast<u32>(b);
    let ea = (ua >> 23u) & 0xffu;
    let eb = (ub >> 23u) & 0xffu;
    if (ea == 0u || eb == 0u || ea == 255u || eb == 255u) {
        return a / b;
    }
    if (FMA_FUSED) {
        // The significands' quotient, then the exponents (exact while the
        // result is normal).
        let q = div_mant_fma(bitcast<f32>((ua & 0x7fffffu) | 0x3f800000u),
                             bitcast<f32>((ub & 0x7fffffu) | 0x3f800000u));
        let uq = bitcast<u32>(q);
        let e = i32((uq >> 23u) & 0xffu) + i32(ea) - i32(eb);
        if (e >= 1 && e <= 254) {
            return bitcast<f32>(((ua ^ ub) & 0x80000000u) | (u32(e) << 23u) | (uq & 0x7fffffu));
        }
    }
    let mb = (ub & 0x7fffffu) | 0x800000u;
    var r = (ua & 0x7fffffu) | 0x800000u;
    var e = i32(ea) - i32(eb) + 127;
    if (r < mb) {
        r = r << 1u;
        e -= 1;
    }
    // 24 mantissa bits and a rounding bit; r/mb is in [1, 2).
    var q = 0u;
    for (var i = 0u; i < 25u; i++) {
        q = q << 1u;
        if (r >= mb) {
            r -= mb;
            q |= 1u;
        }
        r = r << 1u;
    }
    let half = q & 1u;
    q = q >> 1u;
    if (half == 1u && (r != 0u || (q & 1u) == 1u)) {
        q += 1u;
    }
    if (q == 0x1000000u) {
        q = q >> 1u;
        e += 1;
    }
    if (e <= 0 || e >= 255) {
        return a / b;
    }
    return bitcast<f32>(((ua ^ ub) & 0x80000000u) | (u32(e) << 23u) | (q & 0x7fffffu));
}

var<workgroup> act_mag: array<f32, 256>;
var<workgroup> act_at: array<u32, 256>;
var<workgroup> act_val: array<f32, 256>;

// The largest magnitude of v's block (of 32 elements; Q8_K: 256) and the
// signed value that has it (first on ties), v being element `lid` of a
// workgroup of 256 holding whole blocks. Every invocation of the workgroup
// must call it: it synchronises.
fn act_block_max(v: f32, lid: u32) -> vec2<f32> {
    // Largest magnitude (and where, first on ties) within each block.
    var seg = 32u;
    if (ACT == 15u) {
        seg = 256u;
    }
    if (SG) {
        // Within the subgroup (32 elements): the largest magnitude (the bits
        // of a non-negative f32 order as its value), then the first lane
        // that has it; then, for Q8_K, over the eight subgroups in order
        // (the first wins ties), the same way.
        let a = abs(v);
        let m = bitcast<f32>(max32_u32(bitcast<u32>(a), lid));
        let at = min32_u32(select(0xffffffffu, lid & 31u, a == m), lid);
        let mx = bitcast<f32>(shfl_u32(bitcast<u32>(v), at, lid));
        if (seg == 32u) {
            return vec2<f32>(m, mx);
        }
        if ((lid & 31u) == 0u) {
            act_mag[lid >> 5u] = m;
            act_val[lid >> 5u] = mx;
        }
        workgroupBarrier();
        let i = lid & 7u;
        let mi = act_mag[i];
        let bm = bitcast<f32>(max32_u32(bitcast<u32>(mi), lid));
        let bv = act_val[min32_u32(select(0xffffffffu, i, mi == bm), lid)];
        workgroupBarrier(); // the arrays may be reused after return
        return vec2<f32>(bm, bv);
    }
    act_mag[lid] = abs(v);
    act_at[lid] = lid;
    act_val[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (s < seg && (lid % seg) < s) {
            let o = lid + s;
            if (act_mag[o] > act_mag[lid] || (act_mag[o] == act_mag[lid] && act_at[o] < act_at[lid])) {
                act_mag[lid] = act_mag[o];
                act_at[lid] = act_at[o];
            }
        }
        workgroupBarrier();
    }
    let first = lid - lid % seg;
    let amax = act_mag[first];
    let mx = act_val[act_at[first]];
    workgroupBarrier(); // the arrays may be reused after return
    return vec2<f32>(amax, mx);
}

// v rounded as ACT rounds it (0: unchanged), v being element `lid` of a
// workgroup of 256 that holds whole blocks (zeros past the row's end).
// Every invocation of the workgroup must call it: it synchronises.
fn round_act(v: f32, lid: u32) -> f32 {
    if (ACT == 0u) {
        return v;
    }
    if (ACT == 1u) { // F16
        return round_f16(v);
    }
    if (ACT == 30u) { // BF16: nearest even on the upper 16 bits
        let b = bitcast<u32>(v);
        return bitcast<f32>((b + 0x7fffu + ((b >> 16u) & 1u)) & 0xffff0000u);
    }
    let mm = act_block_max(v, lid);
    let amax = mm.x;
    let mx = mm.y;
    var r = 0.0;
    if (ACT == 15u) {
        if (amax != 0.0) {
            let iscale = div_rn(-127.0, mx);
            let q = min(127.0, round(iscale * v));
            r = div_rn(1.0, iscale) * q;
        }
    } else {
        let d = round_f16(div_rn(amax, 127.0));
        var id = 0.0;
        if (amax != 0.0) {
            id = div_rn(127.0, amax);
        }
        r = d * round(v * id);
    }
    return r;
}

// The PACKED layout of element e = v of token tok (n elements per token),
// for the products that sum exact integer block sums as ggml does
// (quant.wgsl's `qdot`, `kdot`, `kmm`):
//   - the quants, four signed bytes per u32, element e of token t in word
//     t·y_words + e/4;
//   - per block of 32, two words from corr_base + 2·(t·n/32 + e/32): d as
//     the product reads it (Q8_0/Q8_1: f32 of the f16; Q8_K: the
//     super-block's f32) and, for Q8_1, s = f16(d·Σq) with the unrounded d;
//     for Q8_K, the block's two 16-element sums (ggml's bsums) as two i16.
// Written through the including shader's `act_out(word index, bits)`. Every
// invocation of the workgroup (256 elements, whole blocks) must call it.
fn quantize_packed(v: f32, e: u32, tok: u32, lid: u32, n: u32, y_words: u32, corr_base: u32) {
    let mm = act_block_max(v, lid);
    let amax = select(mm.x, mm.y, ACT == 15u);
    var q = 0;
    var d = 0.0;
    if (ACT == 15u) {
        // quantize_row_q8_K_ref: iscale = −127/max (max: the signed value of
        // largest magnitude), q = min(127, nearest(iscale·x)), d = 1/iscale.
        // amax is the signed value of largest magnitude here (round_act).
        if (amax != 0.0) {
            let mx = amax;
            let iscale = div_rn(-127.0, mx);
            q = i32(min(127.0, round(iscale * v)));
            d = div_rn(1.0, iscale);
        }
    } else {
        if (amax != 0.0) {
            q = i32(round(v * div_rn(127.0, amax)));
        }
        d = round_f16(div_rn(amax, 127.0));
    }
    // The word's four quants (valid where lid % 4 = 0) and the first half's
    // and the whole block's sums of quants (valid where lid % 32 = 0): exact
    // integer sums, so any order.
    var word = 0u;
    var s16 = 0;
    var s32 = 0;
    if (SG) {
        // By exchanges.
        let qu = u32(q);
        let q1 = xor_u32(qu, 1u, lid);
        let q2 = xor_u32(qu, 2u, lid);
        let q3 = xor_u32(qu, 3u, lid);
        word = (qu & 0xffu) | ((q1 & 0xffu) << 8u) | ((q2 & 0xffu) << 16u) | (q3 << 24u);
        s16 = add32_i32(select(0, q, (lid & 16u) == 0u), lid);
        s32 = add32_i32(q, lid);
    } else {
        // Through workgroup memory.
        packed_q[lid] = q;
        workgroupBarrier();
        if ((lid & 3u) == 0u) {
            word = (u32(packed_q[lid]) & 0xffu) | ((u32(packed_q[lid + 1u]) & 0xffu) << 8u)
                | ((u32(packed_q[lid + 2u]) & 0xffu) << 16u) | (u32(packed_q[lid + 3u]) << 24u);
        }
        if (lid % 32u == 0u && (ACT == 9u || ACT == 15u)) {
            for (var j = 0u; j < 16u; j++) {
                s16 += packed_q[lid + j];
            }
            s32 = s16;
            for (var j = 16u; j < 32u; j++) {
                s32 += packed_q[lid + j];
            }
        }
        workgroupBarrier();
    }
    if (e < n && (lid & 3u) == 0u) {
        act_out(tok * y_words + e / 4u, word);
    }
    if (e < n && lid % 32u == 0u) {
        let i = corr_base + 2u * (tok * (n / 32u) + e / 32u);
        act_out(i, bitcast<u32>(d));
        if (ACT == 9u) {
            // y.s = GGML_FP32_TO_FP16(d·Σq) with d = amax/127 unrounded.
            let ds = div_rn(amax, 127.0) * f32(s32);
            act_out(i + 1u, bitcast<u32>(round_f16(abs(ds)) * sign(ds)));
        } else if (ACT == 15u) {
            // Q8_K's bsums of the block's two halves, as two i16.
            act_out(i + 1u, (u32(s16) & 0xffffu) | (u32(s32 - s16) << 16u));
        } else {
            act_out(i + 1u, 0u);
        }
    }
}
