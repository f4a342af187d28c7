// elementwise.wgsl (act_common.wgsl is prepended): element-wise kernels
// and the greedy argmax.

struct EwParams {
    n: u32,        // elements per token
    a_stride: u32, // floats between tokens in a
    b_stride: u32, // floats between tokens in b
    y_stride: u32, // floats between tokens in y
    a_base: u32,   // float offset of a's first token
    b_base: u32,   // float offset of b's first token (a and b may share a buffer)
    corr_base: u32, // swiglu, PACKED: word offset of the blocks' scales in y (y_stride: words of quants)
    mode: u32,     // add: bit 0, a's row is the step's last token's; bit 1, y = a (a copy)
}

struct Step {
    n_tokens: u32,
    pos: u32,
    n_kv: u32,
    zero: u32,    // 0 at run time, unknown to the compiler: see fma.wgsl
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>; // f32 bits, or PACKED
@group(0) @binding(3) var<uniform> p: EwParams;
@group(0) @binding(4) var<uniform> step: Step;
@group(0) @binding(5) var<storage, read_write> token: array<u32>;

// y = a + b, or (mode bit 1) y = a; with mode bit 0, a's row is the step's
// last token's (the output row of a batch). Grid: (ceil(n / 256), 1, tokens).
@compute @workgroup_size(256)
fn add(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.n) {
        return;
    }
    let t = gid.z;
    var ta = t;
    if ((p.mode & 1u) != 0u) {
        ta = step.n_tokens - 1u;
    }
    let va = a[p.a_base + ta * p.a_stride + i];
    if ((p.mode & 2u) != 0u) {
        y[t * p.y_stride + i] = bitcast<u32>(va);
        return;
    }
    y[t * p.y_stride + i] = bitcast<u32>(va + b[p.b_base + t * p.b_stride + i]);
}


// y = silu(a) · b (SwiGLU), then rounded as the product that reads y rounds
// its activations when ACT ≠ 0.
//
// Bit for bit as tensor-core's `ops::swiglu` (ggml_vec_swiglu_f32 on AVX2,
// `ops::x86::swiglu_row`): on the row's full blocks of 8,
// silu = x / (1 + ggml_v_expf(0 − x)) with a correctly rounded division
// (`div_rn`, act_common.wgsl), times b. The row's last n % 8 elements take
// ggml's scalar `ggml_silu_f32`, whose libm `expf` is not reproduced: they
// use ggml_v_expf too (within an ulp or so of libm; LLaMA widths are
// multiples of 8, so this does not arise for them).
// Grid: (ceil(n / 256), 1, tokens), 256 invocations per workgroup.
@compute @workgroup_size(256)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = gid.x;
    let t = gid.z;
    var v = 0.0;
    if (i < p.n) {
        let g = a[p.a_base + t * p.a_stride + i];
        let silu = div_rn(g, 1.0 + expf_ggml(0.0 - g));
        v = mul_rn(silu, b[p.b_base + t * p.b_stride + i]);
    }
    if (PACKED) {
        quantize_packed(v, i, t, lid, p.n, p.y_stride, p.corr_base);
        return;
    }
    let r = round_act(v, lid);
    if (i < p.n) {
        y[t * p.y_stride + i] = bitcast<u32>(r);
    }
}

fn act_out(i: u32, bits: u32) {
    y[i] = bits;
}

const WG: u32 = 256u;
var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

// token[t] = argmax of a[t, 0..n] (lowest index on ties, like a sequential scan).
// Grid: (1, 1, tokens).
@compute @workgroup_size(WG)
fn argmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let o = wid.z * p.a_stride;
    var bv = -3.0e38;
    var bi = 0xffffffffu;
    for (var i = lid; i < p.n; i += WG) {
        let v = a[o + i];
        if (v > bv) {
            bv = v;
            bi = i;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let ov = best_v[lid + s];
            let oi = best_i[lid + s];
            if (ov > best_v[lid] || (ov == best_v[lid] && oi < best_i[lid])) {
                best_v[lid] = ov;
                best_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        token[wid.z] = best_i[0];
    }
}
