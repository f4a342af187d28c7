// norm.wgsl (act_common.wgsl is prepended). RMSNorm (ggml_rms_norm
// followed by the weight multiply):
// y[t, i] = x[t, i] / sqrt(mean_i(x[t, :]²) + eps) · weight[i],
// then, when ACT ≠ 0, rounded as the matrix products that read y round
// their activations (saves a dispatch of act_quant.wgsl).

struct NormParams {
    n: u32,        // elements per token
    x_stride: u32, // floats between tokens in x
    y_stride: u32, // floats between tokens in y
    x_first: u32,  // 1: read only the batch's last token (final norm before sampling)
    eps: f32,
}

struct Step {
    n_tokens: u32,
    pos: u32,
    n_kv: u32,
    pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: NormParams;
@group(0) @binding(4) var<uniform> step: Step;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

// Grid: (ceil(n / 256), 1, tokens): every workgroup sums the squares of the
// whole row (a few KiB, from cache) and writes its own 256 outputs, so that
// a row is spread over several compute units.
@compute @workgroup_size(WG)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var src_tok = wid.z;
    if (p.x_first != 0u) {
        src_tok = step.n_tokens - 1u;
    }
    let xo = src_tok * p.x_stride;
    let yo = wid.z * p.y_stride;
    var sum = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        let v = x[xo + i];
        sum += v * v;
    }
    partial[lid] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(partial[0] / f32(p.n) + p.eps);
    let i = wid.x * WG + lid;
    var v = 0.0;
    if (i < p.n) {
        v = (x[xo + i] * scale) * weight[i];
    }
    let r = round_act(v, lid).x;
    if (i < p.n) {
        y[yo + i] = r;
    }
}
