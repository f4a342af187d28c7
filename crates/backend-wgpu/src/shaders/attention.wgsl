// Causal attention with grouped-query heads over a GPU-resident KV cache.
//
// One workgroup per (query head, query token). Token t of the batch sits at
// position step.pos + t and attends to cache positions 0 ..= step.pos + t.
// Keys are visited in tiles of WG positions with an online softmax (running
// maximum and sum, rescaled per tile), so no score matrix is stored;
// softmax(q·kᵀ·scale)·v is computed in f32.

struct AttnParams {
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,   // ≤ 2·WG
    q_stride: u32,   // floats between tokens in q
    kv_stride: u32,  // floats between positions in the caches (n_kv_head · head_dim)
    out_stride: u32, // floats between tokens in out
    scale: f32,      // 1/sqrt(head_dim) for LLaMA
    pad: u32,
}

struct Step {
    n_tokens: u32,
    pos: u32,
    n_kv: u32,
    pad: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k_cache: array<f32>;
@group(0) @binding(2) var<storage, read> v_cache: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: AttnParams;
@group(0) @binding(5) var<uniform> step: Step;

const WG: u32 = 128u;
const NEG: f32 = -3.0e38;
var<workgroup> q_head: array<f32, 256>;
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

// Grid: (n_head, 1, n_tokens).
@compute @workgroup_size(WG)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wid.x;
    let tok = wid.z;
    let hd = p.head_dim;
    let kv_head = head / (p.n_head / p.n_kv_head);
    let qo = tok * p.q_stride + head * hd;
    for (var i = lid; i < hd; i += WG) {
        q_head[i] = q[qo + i];
    }
    workgroupBarrier();

    let n_kv = step.pos + tok + 1u;
    let kvo = kv_head * hd;
    var m = NEG;
    var l = 0.0;
    var acc0 = 0.0; // output dimension lid
    var acc1 = 0.0; // output dimension lid + WG
    for (var t0 = 0u; t0 < n_kv; t0 += WG) {
        let t = t0 + lid;
        var s = NEG;
        if (t < n_kv) {
            let ko = t * p.kv_stride + kvo;
            var d = 0.0;
            for (var i = 0u; i < hd; i++) {
                d += q_head[i] * k_cache[ko + i];
            }
            s = d * p.scale;
        }
        let m_new = max(m, reduce_max(lid, s));
        var e = 0.0;
        if (t < n_kv) {
            e = exp(s - m_new);
        }
        probs[lid] = e;
        let tile_sum = reduce_sum(lid, e); // its barriers also publish probs
        let alpha = exp(m - m_new);
        l = l * alpha + tile_sum;
        m = m_new;
        let n = min(WG, n_kv - t0);
        acc0 *= alpha;
        acc1 *= alpha;
        if (lid < hd) {
            for (var j = 0u; j < n; j++) {
                acc0 += probs[j] * v_cache[(t0 + j) * p.kv_stride + kvo + lid];
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
        out[oo + lid] = acc0 / l;
    }
    if (lid + WG < hd) {
        out[oo + lid + WG] = acc1 / l;
    }
}
