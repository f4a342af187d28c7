// act_quant.wgsl (act_common.wgsl is prepended): activations rounded to
// ACT as ggml's quantize_row_<type> rounds them, written as f32 d·q.

struct ActParams {
    n: u32,        // elements per token (multiple of the block size)
    x_stride: u32,
    y_stride: u32,
    corr_base: u32, // Q8_1: float offset of the per-block corrections in y
}

struct Step {
    n_tokens: u32,
    pos: u32,
    n_kv: u32,
    zero: u32,    // 0 at run time, unknown to the compiler: see fma.wgsl
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
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
    let ra = round_act(v, lid);
    let r = ra.x;
    let amax = ra.y;
    if (e < p.n) {
        y[tok * p.y_stride + e] = r;
    }
    if (ACT == 9u) {
        // Σq over each block of 32, then s − d_f16·Σq.
        workgroupBarrier();
        var q = 0.0;
        if (amax != 0.0) {
            q = round(v * div_rn(127.0, amax));
        }
        act_mag[lid] = q;
        workgroupBarrier();
        for (var s = 16u; s > 0u; s >>= 1u) {
            if ((lid % 32u) < s) {
                act_mag[lid] += act_mag[lid + s];
            }
            workgroupBarrier();
        }
        if (lid % 32u == 0u && e < p.n) {
            let sum = act_mag[lid];
            let d = div_rn(amax, 127.0);
            let s = round_f16(abs(d * sum)) * sign(d * sum);
            y[p.corr_base + tok * (p.n / 32u) + e / 32u] = s - round_f16(d) * sum;
        }
    }
}
