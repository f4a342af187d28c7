// Causal attention with grouped-query heads over a GPU-resident KV cache.
//
// One workgroup per (query head, query token). Token t of the batch sits at
// position step.pos + t and attends to cache positions 0 ..= step.pos + t.
// Keys are visited in tiles of WG positions, twice, so that no score matrix
// is stored: the first pass finds the softmax maximum and sum (online), the
// second forms each probability p = exp(s − max)·(1/sum) as ggml_soft_max
// does and accumulates p·v. With an f16 cache (kv_f16 = 1) the query and the
// probabilities are rounded to f16 first, as ggml's f16 products round their
// f32 operand.

struct AttnParams {
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,   // ≤ 2·WG, multiple of 4
    q_stride: u32,   // floats between tokens in q
    kv_stride: u32,  // floats between positions in the caches (n_kv_head · head_dim)
    out_stride: u32, // floats between tokens in out
    scale: f32,      // 1/sqrt(head_dim) for LLaMA
    kv_f16: u32,     // 1: the cache holds f16-rounded values; round q and p likewise
}

struct Step {
    n_tokens: u32,
    pos: u32,
    n_kv: u32,
    zero: u32,    // 0 at run time, unknown to the compiler: see fma.wgsl
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> v_cache: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: AttnParams;
@group(0) @binding(5) var<uniform> step: Step;

const WG: u32 = 128u;
const NEG: f32 = -3.0e38;
var<workgroup> q_head: array<vec4<f32>, 64>;
var<workgroup> probs: array<f32, WG>;
var<workgroup> red: array<f32, WG>;

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn round_f16(x: f32) -> f32 {
    let a = abs(x);
    if (a < 6.103515625e-5) {
        return round(x * 16777216.0) / 16777216.0;
    }
    let b = bitcast<u32>(x);
    return bitcast<f32>((b + 0xfffu + ((b >> 13u) & 1u)) & 0xffffe000u);
}

// Score of cache position t (< n_kv) for the query in q_head (head_dim is a
// multiple of 4; keys are read as vec4).
fn score(t: u32, kvo: u32) -> f32 {
    let ko = (t * p.kv_stride + kvo) >> 2u;
    let n4 = p.head_dim >> 2u;
    var d = 0.0;
    var i = 0u;
    // Four loads in flight, summed in the same order as one at a time.
    for (; i + 4u <= n4; i += 4u) {
        let k0 = k_cache[ko + i];
        let k1 = k_cache[ko + i + 1u];
        let k2 = k_cache[ko + i + 2u];
        let k3 = k_cache[ko + i + 3u];
        d += dot(q_head[i], k0);
        d += dot(q_head[i + 1u], k1);
        d += dot(q_head[i + 2u], k2);
        d += dot(q_head[i + 3u], k3);
    }
    for (; i < n4; i++) {
        d += dot(q_head[i], k_cache[ko + i]);
    }
    return d * p.scale;
}

// Grid: (n_head, 1, n_tokens).
@compute @workgroup_size(WG)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wid.x;
    let tok = wid.z;
    let hd = p.head_dim;
    let kv_head = head / (p.n_head / p.n_kv_head);
    let qo = tok * p.q_stride + head * hd;
    for (var i = lid; i < (hd >> 2u); i += WG) {
        var v = vec4<f32>(q[qo + 4u * i], q[qo + 4u * i + 1u], q[qo + 4u * i + 2u], q[qo + 4u * i + 3u]);
        if (p.kv_f16 != 0u) {
            v = vec4<f32>(round_f16(v.x), round_f16(v.y), round_f16(v.z), round_f16(v.w));
        }
        q_head[i] = v;
    }
    workgroupBarrier();

    let n_kv = step.pos + tok + 1u;
    let kvo = kv_head * hd;
    // Pass 1: maximum and sum of exp(s − max).
    var m = NEG;
    var l = 0.0;
    var s_first = NEG; // the first tile's score, kept for pass 2
    for (var t0 = 0u; t0 < n_kv; t0 += WG) {
        let t = t0 + lid;
        var s = NEG;
        if (t < n_kv) {
            s = score(t, kvo);
        }
        if (t0 == 0u) {
            s_first = s;
        }
        let m_new = max(m, reduce_max(lid, s));
        var e = 0.0;
        if (t < n_kv) {
            e = exp(s - m_new);
        }
        l = l * exp(m - m_new) + reduce_sum(lid, e);
        m = m_new;
    }
    let inv = 1.0 / l;
    // Pass 2: probabilities and p·v.
    var acc0 = 0.0; // output dimension lid
    var acc1 = 0.0; // output dimension lid + WG
    for (var t0 = 0u; t0 < n_kv; t0 += WG) {
        let t = t0 + lid;
        var pr = 0.0;
        if (t < n_kv) {
            var s = s_first;
            if (t0 != 0u) {
                s = score(t, kvo);
            }
            pr = exp(s - m) * inv;
            if (p.kv_f16 != 0u) {
                pr = round_f16(pr);
            }
        }
        probs[lid] = pr;
        workgroupBarrier();
        let n = min(WG, n_kv - t0);
        if (lid < hd) {
            // Eight positions' values loaded ahead, summed in position order.
            let vo = t0 * p.kv_stride + kvo + lid;
            let ks = p.kv_stride;
            var j = 0u;
            for (; j + 8u <= n; j += 8u) {
                let v0 = v_cache[vo + j * ks];
                let v1 = v_cache[vo + (j + 1u) * ks];
                let v2 = v_cache[vo + (j + 2u) * ks];
                let v3 = v_cache[vo + (j + 3u) * ks];
                let v4 = v_cache[vo + (j + 4u) * ks];
                let v5 = v_cache[vo + (j + 5u) * ks];
                let v6 = v_cache[vo + (j + 6u) * ks];
                let v7 = v_cache[vo + (j + 7u) * ks];
                acc0 += probs[j] * v0;
                acc0 += probs[j + 1u] * v1;
                acc0 += probs[j + 2u] * v2;
                acc0 += probs[j + 3u] * v3;
                acc0 += probs[j + 4u] * v4;
                acc0 += probs[j + 5u] * v5;
                acc0 += probs[j + 6u] * v6;
                acc0 += probs[j + 7u] * v7;
            }
            for (; j < n; j++) {
                acc0 += probs[j] * v_cache[vo + j * ks];
            }
        }
        if (lid + WG < hd) {
            for (var j = 0u; j < n; j++) {
                acc1 += probs[j] * v_cache[(t0 + j) * p.kv_stride + kvo + lid + WG];
            }
        }
        workgroupBarrier();
    }
    let oo = tok * p.out_stride + head * hd;
    if (lid < hd) {
        out[oo + lid] = acc0;
    }
    if (lid + WG < hd) {
        out[oo + lid + WG] = acc1;
    }
}
