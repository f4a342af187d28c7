// fast.wgsl: the fast mode's single-token product (`fmv`), quant.wgsl's
// matrix-vector units over float activations that are made as they are
// read, so that the op producing them needs no dispatch of its own:
// - PROLOGUE 0: x itself (from vec4 `p.x_base`);
// - PROLOGUE 1: RMSNorm(x)·weight: the units read x·weight (the weight in
//   `aux`) and sum x² on the way; the row's sum is scaled by
//   1/sqrt(mean(x²) + eps) at the end (every row reads all of x once);
// - PROLOGUE 2: silu(gate)·up, gate in x at `p.x_base`, up in `aux` at
//   `p.aux_base`;
// - PROLOGUE 3: gelu(gate)·up, as 2 (`gelu_tanh`: ggml's tanh form, not
//   its f16 table).
// The activations are not rounded to ggml's Q8 types as the CPU's are
// (rounding them in the workgroup first moved SmolLM2's decoded logits from
// llama.cpp's as much: any difference that flips a rounded quant is
// amplified), and the sums are in this kernel's own order: not the CPU's
// bits (the exact mode's kernels are), within the fast mode's stated
// agreement.

override PROLOGUE: u32 = 0u;

var<private> sq: f32;
var<workgroup> partial_sq: array<f32, 256>;

fn aux4(i: u32) -> vec4<f32> {
    let j = 4u * i;
    return vec4<f32>(bitcast<f32>(ids[j]), bitcast<f32>(ids[j + 1u]), bitcast<f32>(ids[j + 2u]), bitcast<f32>(ids[j + 3u]));
}

// ggml's GELU, 0.5·x·(1 + tanh(√(2/π)·x·(1 + 0.044715·x²))), written as
// x / (1 + exp(−2·√(2/π)·x·(1 + 0.044715·x²))): the same function, and
// finite wherever x is (an exp overflowing to infinity gives 0).
fn gelu_tanh(v: vec4<f32>) -> vec4<f32> {
    return v / (1.0 + exp(-1.5957691216057308 * v * (1.0 + 0.044715 * v * v)));
}

fn xv(i: u32) -> vec4<f32> {
    let v = x[i];
    switch PROLOGUE {
        case 1u: {
            sq += dot(v, v);
            return v * aux4(i - p.x_base);
        }
        case 2u: {
            let u = aux4(i - p.x_base + p.aux_base);
            return v / (1.0 + exp(-v)) * u;
        }
        case 3u: {
            return gelu_tanh(v) * aux4(i - p.x_base + p.aux_base);
        }
        default: {
            return v;
        }
    }
}

// y[row] (+)= W[row, :] · xv. Grid: groups of 256 / MV_LANES rows over x and y.
@compute @workgroup_size(256)
fn fmv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let lane = lid % MV_LANES;
    let row = (wid.x + wid.y * nwg.x) * (256u / MV_LANES) + lid / MV_LANES;
    let live = row < p.m;
    let base = row * p.row_bytes;
    let xb = p.x_base;
    var acc = 0.0;
    sq = 0.0;
    if (live) {
        let l = MV_LANES;
        var u = lane;
        if (FORMAT == 12u || FORMAT == 14u) {
            let units = p.k / wide_unit_len();
            var a = vec2<f32>(0.0);
            for (; u + l < units; u += 2u * l) {
                a.x += wide_unit_dot(base, u, xb);
                a.y += wide_unit_dot(base, u + l, xb);
            }
            for (; u < units; u += l) {
                a.x += wide_unit_dot(base, u, xb);
            }
            acc = a.x + a.y;
        } else {
            let units = p.k >> 2u;
            var a = vec4<f32>(0.0);
            for (; u + 3u * l < units; u += 4u * l) {
                a.x += unit_dot(base, u, xb, 0u);
                a.y += unit_dot(base, u + l, xb, 0u);
                a.z += unit_dot(base, u + 2u * l, xb, 0u);
                a.w += unit_dot(base, u + 3u * l, xb, 0u);
            }
            for (; u < units; u += l) {
                a.x += unit_dot(base, u, xb, 0u);
            }
            acc = (a.x + a.y) + (a.z + a.w);
        }
    }
    partial[lid] = acc;
    partial_sq[lid] = sq;
    workgroupBarrier();
    for (var s = MV_LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            partial[lid] += partial[lid + s];
            partial_sq[lid] += partial_sq[lid + s];
        }
        workgroupBarrier();
    }
    if (live && lane == 0u) {
        var v = partial[lid];
        if (PROLOGUE == 1u) {
            v *= 1.0 / sqrt(partial_sq[lid] / f32(p.k) + p.eps);
        }
        store(0u, row, v);
    }
}
