// moe.wgsl: a mixture-of-experts block of the fast mode (after quant_io.wgsl
// and quant.wgsl), llama.cpp's build_moe_ffn in three kinds of dispatch that
// never wait on one another inside a dispatch:
// - `moe_mv` with ROUTED 0: the router's logits, y[t, r] = W[r, :] · x[t];
// - `moe_route`: per token, the experts and their weights from the logits;
// - `moe_mv` with ROUTED 1: the chosen experts' products for every (token,
//   slot) pair j = t·n_used + s, the expert's rows found at byte
//   e · p.corr_base of one buffer holding every expert (stacked by the host
//   at compile time), e read from the routing;
// - `moe_sum`: per token, Σ_s weight(t, s) · down[t·n_used + s], in slot order.
//
// The routing lives in `ids` (binding 5, written as `y` by `moe_route`): two
// floats per (token, slot), the expert's index (as a float: exact for any
// count of experts) and its weight.
//
// MatParams as this file reads them: `corr_base` the bytes between experts
// in w; `x_base` how many consecutive j share one row of x (n_used for the
// gate/up products, which read the token's row; 1 otherwise); `aux_base`
// (PROLOGUE 2) the vec4 offset of the up values after the gate values in a
// row of x. moe_route: k experts, m = n_used chosen, x_stride the logits'
// row stride, eps the weights' scale. moe_sum: k values a row, m = n_used,
// x_stride the down products' row stride.
//
// Products are over float activations in this kernel's order, as fast.wgsl's
// `fmv`: not the CPU's bits, within the fast mode's agreement.

// moe_mv: 0 the router (no routing), 1 the experts.
override ROUTED: u32 = 1u;
// moe_mv: 0 x itself, 2 silu(gate)·up with gate and up in one row of x.
override PROLOGUE: u32 = 0u;
// moe_route: 0 softmax over every expert, 1 sigmoid, 2 the chosen logits
// softmaxed (tensor_core::graph::Gating's order).
override GATING: u32 = 0u;
// moe_route: 1 divides the chosen weights by their sum.
override NORMALIZE: u32 = 0u;

// The most experts a router may have (moe_route's private arrays).
const MOE_MAX_EXPERTS: u32 = 256u;

fn xv(i: u32) -> vec4<f32> {
    let v = x[i];
    if (PROLOGUE == 2u) {
        let u = x[i + p.aux_base];
        return v / (1.0 + exp(-v)) * u;
    }
    return v;
}

// y[j, r] = W_e[r, :] · xv(row j / p.x_base of x). Grid: (groups of
// 256 / MV_LANES rows over x and y, tokens · slots).
@compute @workgroup_size(256)
fn moe_mv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let lane = lid % MV_LANES;
    let row = (wid.x + wid.y * nwg.x) * (256u / MV_LANES) + lid / MV_LANES;
    let j = wid.z;
    let live = row < p.m;
    var e = 0u;
    if (ROUTED != 0u) {
        e = u32(bitcast<f32>(ids[2u * j]));
    }
    let base = e * p.corr_base + row * p.row_bytes;
    let xb = (j / p.x_base) * (p.x_stride >> 2u);
    var acc = 0.0;
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
    workgroupBarrier();
    for (var s = MV_LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    if (live && lane == 0u) {
        store(j, row, partial[lid]);
    }
}

fn xf(i: u32) -> f32 {
    return x[i >> 2u][i & 3u];
}

// The routing of token wid.z: its p.m experts by decreasing probability
// (ties to the lower index, as the CPU's stable sort), their weights
// (renormalised, scaled). One invocation a token: the work is a few hundred
// comparisons.
@compute @workgroup_size(1)
fn moe_route(@builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.z;
    let n = min(p.k, MOE_MAX_EXPERTS);
    let k = p.m;
    var prob: array<f32, 256>;
    var taken: array<u32, 8>;
    let row = t * p.x_stride;
    var mx = -3.0e38;
    for (var e = 0u; e < n; e++) {
        let v = xf(row + e);
        prob[e] = v;
        mx = max(mx, v);
    }
    if (GATING == 0u) {
        var sum = 0.0;
        for (var e = 0u; e < n; e++) {
            let v = exp(prob[e] - mx);
            prob[e] = v;
            sum += v;
        }
        let inv = 1.0 / sum;
        for (var e = 0u; e < n; e++) {
            prob[e] *= inv;
        }
    } else if (GATING == 1u) {
        for (var e = 0u; e < n; e++) {
            prob[e] = 1.0 / (1.0 + exp(-prob[e]));
        }
    }
    for (var w = 0u; w < 8u; w++) {
        taken[w] = 0u;
    }
    var wsum = 0.0;
    var wmax = -3.0e38;
    for (var s = 0u; s < k; s++) {
        var best = 0u;
        var bv = -3.4e38;
        var found = false;
        for (var e = 0u; e < n; e++) {
            let free = (taken[e >> 5u] & (1u << (e & 31u))) == 0u;
            if (free && (!found || prob[e] > bv)) {
                best = e;
                bv = prob[e];
                found = true;
            }
        }
        taken[best >> 5u] |= 1u << (best & 31u);
        let o = 2u * (t * k + s);
        y[o] = f32(best);
        y[o + 1u] = bv;
        wmax = max(wmax, bv);
    }
    if (GATING == 2u) {
        var sum = 0.0;
        for (var s = 0u; s < k; s++) {
            let o = 2u * (t * k + s) + 1u;
            let v = exp(y[o] - wmax);
            y[o] = v;
            sum += v;
        }
        for (var s = 0u; s < k; s++) {
            y[2u * (t * k + s) + 1u] /= sum;
        }
    }
    if (NORMALIZE != 0u) {
        for (var s = 0u; s < k; s++) {
            wsum += y[2u * (t * k + s) + 1u];
        }
        let d = max(wsum, 6.1035156e-5);
        for (var s = 0u; s < k; s++) {
            y[2u * (t * k + s) + 1u] /= d;
        }
    }
    for (var s = 0u; s < k; s++) {
        y[2u * (t * k + s) + 1u] *= p.eps;
    }
}

// y[t, c] (+)= Σ_s weight(t, s) · x[t·p.m + s, c]. Grid: (ceil(p.k / 256), 1,
// tokens).
@compute @workgroup_size(256)
fn moe_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let t = wid.z;
    let c = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (c >= p.k) {
        return;
    }
    var acc = 0.0;
    for (var s = 0u; s < p.m; s++) {
        let j = t * p.m + s;
        acc += bitcast<f32>(ids[2u * j + 1u]) * xf(j * p.x_stride + c);
    }
    store(t, c, acc);
}
