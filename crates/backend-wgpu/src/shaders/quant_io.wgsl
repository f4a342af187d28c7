// quant_io.wgsl: what every product shader shares (quant.wgsl, quant_tg.wgsl;
// fma.wgsl comes first): the matrix and step parameters, the output binding
// and its store, and the integer and lane-sum helpers of the exact products.

// Static shape of one weight matrix (or one row-range part of it).
struct MatParams {
    k: u32,          // weights per row (multiple of 32)
    m: u32,          // rows in this part
    row_bytes: u32,  // bytes per row
    x_stride: u32,   // floats between tokens in x (multiple of 4)
    y_stride: u32,   // floats between tokens in y
    y_base: u32,     // float offset of the first output (part's first row included)
    accumulate: u32, // 1: y += W·x (residual connection), 0: y = W·x
    at_pos: u32,     // KV cache write: token index in y counted from step.pos; 1 f32 cache, 2 f16 cache
    corr_base: u32,  // qdot: float offset in x of the packed activations' scales (act_quant.wgsl)
    x_base: u32,     // fmv (fast.wgsl): vec4 offset of the token's activations in x
    aux_base: u32,   // fmv: vec4 offset of SwiGLU's up values in aux
    eps: f32,        // fmv: RMSNorm's epsilon; get_rows: the rows' factor
}

// Per-step values shared by every dispatch of a step.
struct Step {
    n_tokens: u32, // tokens in this batch
    pos: u32,      // position of the batch's first token
    n_kv: u32,     // pos + n_tokens
    zero: u32,    // 0 at run time, unknown to the compiler: see fma.wgsl
}

@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: MatParams;
@group(0) @binding(4) var<uniform> step: Step;

fn store(tok: u32, row: u32, v_in: f32) {
    var t = tok;
    let v = stored(p.at_pos, v_in);
    if (p.at_pos != 0u) { t += step.pos; }
    let i = t * p.y_stride + p.y_base + row;
    if (p.accumulate != 0u) {
        y[i] += v;
    } else {
        y[i] = v;
    }
}

// ggml's hsum_float_8 of lanes a0..a3 (lo) and a4..a7 (hi):
// ((a4 + a0) + (a6 + a2)) + ((a5 + a1) + (a7 + a3)).
fn hsum_float_8(lo: vec4<f32>, hi: vec4<f32>) -> f32 {
    let s = hi + lo;
    return (s.x + s.z) + (s.y + s.w);
}

// a as f32 rounded to nearest even (as cvtdq2ps and Rust's `as f32`), also
// for |a| ≥ 2^24, where a device's conversion may round otherwise.
fn i2f_rn(a: i32) -> f32 {
    let u = u32(abs(a));
    if (u < 0x1000000u) {
        return f32(a);
    }
    let sh = 8u - countLeadingZeros(u);
    var q = u >> sh;
    let rem = u & ((1u << sh) - 1u);
    let half = 1u << (sh - 1u);
    if (rem > half || (rem == half && (q & 1u) == 1u)) {
        q += 1u;
    }
    let f = f32(q) * f32(1u << sh);
    return select(f, -f, a < 0);
}

// Quant word k of a Q8_0 block (34 bytes: f16 d, 32 quants) from the
// block's words k and k + 1 (`ev`: the block starts on a word boundary, so
// the quant word straddles them; else it is word k + 1).
fn q8_word(lo: u32, hi: u32, ev: bool) -> u32 {
    return select(hi, (lo >> 16u) | (hi << 16u), ev);
}

// ---- small integers as floats ------------------------------------------------

fn bytes4(v: u32) -> vec4<u32> {
    return (vec4<u32>(v) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xffu);
}

// Small unsigned integers (< 2^23) as floats, less `off`, without an
// integer-to-float conversion (a quarter-rate instruction on NVIDIA GPUs,
// and a matvec converts every weight): the bits of 2^23 + q, minus
// 2^23 + off, which is exact for the offsets used (0 to 128).
fn u2f_less(q: vec4<u32>, off: f32) -> vec4<f32> {
    return bitcast<vec4<f32>>(q | vec4<u32>(0x4b000000u)) - (8388608.0 + off);
}

fn u2f(q: vec4<u32>) -> vec4<f32> {
    return u2f_less(q, 0.0);
}

fn u2f1(q: u32) -> f32 {
    return bitcast<f32>(q | 0x4b000000u) - 8388608.0;
}

// Bytes as signed 8-bit values, converted as u2f does (q + 128, then − 128
// folded into the constant).
fn sext8(b: vec4<u32>) -> vec4<f32> {
    return u2f_less((b + vec4<u32>(128u)) & vec4<u32>(0xffu), 128.0);
}
