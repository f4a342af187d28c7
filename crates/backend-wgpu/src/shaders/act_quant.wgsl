// act_quant.wgsl (act_common.wgsl is prepended): activations rounded to
// ACT as ggml's quantize_row_<type> rounds them, written as f32 d·q, or
// (PACKED) as ggml's blocks hold them (act_common.wgsl's quantize_packed).

struct ActParams {
    n: u32,        // elements per token (multiple of the block size)
    x_stride: u32,
    y_stride: u32,
    corr_base: u32, // PACKED: float offset of the per-block scales in y
}

struct Step {
    n_tokens: u32,
    pos: u32,
    n_kv: u32,
    zero: u32,    // 0 at run time, unknown to the compiler: see fma.wgsl
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<u32>;
@group(0) @binding(2) var<uniform> p: ActParams;
@group(0) @binding(3) var<uniform> step: Step;

// Grid: (ceil(n / 256), 1, tokens); one invocation per element.
@compute @workgroup_size(256)
fn quantize_act(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = wid.x * 256u + lid;
    let tok = wid.z;
    var v = 0.0;
    if (e < p.n) {
        v = x[tok * p.x_stride + e];
    }
    if (PACKED) {
        quantize_packed(v, e, tok, lid, p.n, p.y_stride, p.corr_base);
        return;
    }
    let r = round_act(v, lid);
    if (e < p.n) {
        y[tok * p.y_stride + e] = bitcast<u32>(r);
    }
}

fn act_out(i: u32, bits: u32) {
    y[i] = bits;
}
