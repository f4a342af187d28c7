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
// Batches of many tokens replace the experts' `moe_mv`s (each pair reading
// its expert's whole matrix again) with llama.cpp's mul_mat_id: `moe_bucket`
// lists each expert's pairs, then mm_fast.wgsl / mm_coop.wgsl in their
// gathered mode (quant.wgsl's MM_GATHER) multiply each expert's pairs as one
// batch, its weights read once per tile of 64 pairs.
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

// The most experts a router may have (moe_route's workgroup: one
// invocation an expert).
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

// moe_route's workgroup memory: a reduction's values, each expert's sort
// key, and the chosen experts and their weights by slot.
var<workgroup> route_red: array<f32, 256>;
var<workgroup> route_key: array<vec4<u32>, 64>;
var<workgroup> route_e: array<u32, 256>;
var<workgroup> route_w: array<f32, 256>;

// The largest (`is_max`) or the sum of the workgroup's values v, through a
// tree over the first `span` (a power of two ≥ the live values' count) of
// route_red; every invocation gets the result. Called in uniform control
// flow: it waits on the workgroup.
fn route_reduce(v: f32, lid: u32, span: u32, is_max: bool) -> f32 {
    route_red[lid] = v;
    workgroupBarrier();
    for (var s = span >> 1u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let a = route_red[lid];
            let b = route_red[lid + s];
            route_red[lid] = select(a + b, max(a, b), is_max);
        }
        workgroupBarrier();
    }
    let r = route_red[0];
    workgroupBarrier();
    return r;
}

// f's rank in Rust's f32::total_cmp as an unsigned integer: negative values
// (sign set) have all their bits flipped, the others only the sign.
fn total_key(f: f32) -> u32 {
    let b = bitcast<u32>(f);
    return b ^ select(0x80000000u, 0xffffffffu, (b >> 31u) != 0u);
}

// The routing of token wid.z: its p.m experts by decreasing probability
// (ties to the lower index: the CPU's stable sort by f32::total_cmp), their
// weights (renormalised, scaled). One invocation an expert: softmax through
// two tree reductions (in their order, not the CPU's: the fast mode's
// agreement), then each expert's rank (how many experts come before it in
// that order: its slot, if below p.m) by one pass over every key. The keys
// are a strict total order, so the ranks below p.m fill every slot once.
@compute @workgroup_size(256)
fn moe_route(@builtin(workgroup_id) wid: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let t = wid.z;
    let n = min(p.k, MOE_MAX_EXPERTS);
    let k = min(p.m, n);
    // Reductions over the first `span` values: n rounded up to a power of 2.
    let span = 2u << firstLeadingBit(max(n, 2u) - 1u);
    let live = lid < n;
    var prob = -3.0e38;
    if (live) {
        prob = xf(t * p.x_stride + lid);
    }
    if (GATING == 0u) {
        let mx = route_reduce(prob, lid, span, true);
        var v = 0.0;
        if (live) {
            v = exp(prob - mx);
        }
        let sum = route_reduce(v, lid, span, false);
        prob = v * (1.0 / sum);
    } else if (GATING == 1u) {
        prob = 1.0 / (1.0 + exp(-prob));
    }
    let key = total_key(prob);
    // Dead lanes' keys are never read (the pass stops at n).
    route_key[lid >> 2u][lid & 3u] = key;
    workgroupBarrier();
    if (live) {
        var rank = 0u;
        let n4 = (n + 3u) >> 2u;
        for (var q = 0u; q < n4; q++) {
            let o = route_key[q];
            let e = 4u * q;
            // Expert e + i comes first: a larger key, or the same key at a
            // lower index.
            let before = (o > vec4<u32>(key)) | ((o == vec4<u32>(key))
                & (vec4<u32>(e, e + 1u, e + 2u, e + 3u) < vec4<u32>(lid)));
            let inside = vec4<u32>(e, e + 1u, e + 2u, e + 3u) < vec4<u32>(n);
            let c = select(vec4<u32>(0u), vec4<u32>(1u), before & inside);
            rank += (c.x + c.y) + (c.z + c.w);
            if (rank >= k) {
                break;
            }
        }
        if (rank < k) {
            route_e[rank] = lid;
            route_w[rank] = prob;
        }
    }
    workgroupBarrier();
    // The chosen weights, slot by slot as the CPU orders them (k is small).
    if (lid == 0u) {
        if (GATING == 2u) {
            var wmax = -3.0e38;
            for (var s = 0u; s < k; s++) {
                wmax = max(wmax, route_w[s]);
            }
            var sum = 0.0;
            for (var s = 0u; s < k; s++) {
                let v = exp(route_w[s] - wmax);
                route_w[s] = v;
                sum += v;
            }
            for (var s = 0u; s < k; s++) {
                route_w[s] /= sum;
            }
        }
        if (NORMALIZE != 0u) {
            var wsum = 0.0;
            for (var s = 0u; s < k; s++) {
                wsum += route_w[s];
            }
            let d = max(wsum, 6.1035156e-5);
            for (var s = 0u; s < k; s++) {
                route_w[s] /= d;
            }
        }
    }
    workgroupBarrier();
    if (lid < k) {
        let o = 2u * (t * p.m + lid);
        y[o] = f32(route_e[lid]);
        y[o + 1u] = route_w[lid] * p.eps;
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

// moe_bucket's per-invocation counts, scanned into offsets.
var<workgroup> bucket_n: array<u32, 256>;

// The (token, slot) pairs routed to expert wid.z, for the grouped products
// (quant.wgsl's MM_GATHER): at y[e · (n_tokens + 1)] their count, then the
// pairs j in increasing order, as floats (as the routing's experts: exact
// below 2^24, where a small integer's bits as a float would be a denormal,
// which a device may flush). A token's slots hold distinct experts, so an
// expert has at most n_tokens pairs. p.m = n_used. Each invocation takes a
// run of consecutive pairs and writes those routed to e after the earlier
// invocations' (an exclusive prefix sum of their counts), so the list does
// not depend on timing. Grid: (1, 1, experts).
@compute @workgroup_size(256)
fn moe_bucket(@builtin(workgroup_id) wid: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let e = wid.z;
    let pairs = step.n_tokens * p.m;
    let per = (pairs + 255u) / 256u;
    let first = min(lid * per, pairs);
    let end = min(first + per, pairs);
    var n = 0u;
    for (var j = first; j < end; j++) {
        n += select(0u, 1u, u32(bitcast<f32>(ids[2u * j])) == e);
    }
    // Inclusive scan of the counts (Hillis–Steele, read then write).
    bucket_n[lid] = n;
    workgroupBarrier();
    for (var s = 1u; s < 256u; s <<= 1u) {
        var v = bucket_n[lid];
        if (lid >= s) {
            v += bucket_n[lid - s];
        }
        workgroupBarrier();
        bucket_n[lid] = v;
        workgroupBarrier();
    }
    let at = e * (step.n_tokens + 1u);
    var o = at + 1u + bucket_n[lid] - n;
    for (var j = first; j < end; j++) {
        if (u32(bitcast<f32>(ids[2u * j])) == e) {
            y[o] = f32(j);
            o++;
        }
    }
    if (lid == 255u) {
        y[at] = f32(bucket_n[255]);
    }
}
