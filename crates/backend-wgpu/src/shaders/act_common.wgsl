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

// f32 → f16 → f32 with round-to-nearest-even (as F16C's conversion).
fn round_f16(v: f32) -> f32 {
    if (abs(v) < 6.103515625e-5) { // f16 subnormals: multiples of 2^-24
        return round(v * 16777216.0) / 16777216.0;
    }
    let b = bitcast<u32>(v);
    return bitcast<f32>((b + 0xfffu + ((b >> 13u) & 1u)) & 0xffffe000u);
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

// v rounded as ACT rounds it (0: unchanged), v being element `lid` of a
// workgroup of 256 that holds whole blocks (zeros past the row's end).
// Returns (rounded value, the block's largest magnitude; for Q8_K the
// signed value of largest magnitude). Every invocation
// of the workgroup must call it: it synchronises.
fn round_act(v: f32, lid: u32) -> vec2<f32> {
    if (ACT == 0u) {
        return vec2<f32>(v, 0.0);
    }
    if (ACT == 1u) { // F16
        return vec2<f32>(round_f16(v), 0.0);
    }
    if (ACT == 30u) { // BF16: nearest even on the upper 16 bits
        let b = bitcast<u32>(v);
        return vec2<f32>(bitcast<f32>((b + 0x7fffu + ((b >> 16u) & 1u)) & 0xffff0000u), 0.0);
    }
    // Largest magnitude (and where, first on ties) within each block.
    var seg = 32u;
    if (ACT == 15u) {
        seg = 256u;
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
    if (ACT == 15u) {
        return vec2<f32>(r, mx);
    }
    return vec2<f32>(r, amax);
}
