// attn_fast.wgsl: the fast mode's attention for a single token (`attn_decode`),
// causal grouped-query attention over the KV cache in f32 with an online
// softmax: one workgroup per query head walks the visible positions in
// tiles of WG, each invocation scoring one position of a tile, then the
// tile's exponentials (against the running maximum) are summed and
// multiplied into V, outputs spread over the invocations. Not the CPU's
// bits (that is attention.wgsl, the exact mode's): float sums in this
// kernel's order, `exp` rather than ggml's, no f16 rounding of the query
// or the probabilities.
//
// `attn_rope_decode` takes the query, key and value of the token from the
// stacked projection's output instead (RopeFuse): it rotates the query and
// the key itself (rope_common.wgsl), attends to the new position through
// those values, and the first query head of each KV head writes the key and
// value into the caches for later steps (no workgroup reads what another
// writes in the same dispatch) — RoPE's dispatch is gone.

struct AttnParams {
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,   // ≤ WG, multiple of 4
    q_stride: u32,
    kv_stride: u32,  // floats between positions in the caches
    out_stride: u32,
    scale: f32,
    kv_f16: u32,
    window: u32,     // sliding window (0: all)
    softcap: f32,    // scores become softcap·tanh(K·Q · inv_cap) (0: not capped)
    inv_cap: f32,
    pad: u32,
}

struct Step {
    n_tokens: u32,
    pos: u32,
    n_kv: u32,
    zero: u32,
}

// RoPE and the cache writes of `attn_rope_decode` (floats offsets in q).
struct RopeFuse {
    q_base: u32,
    k_base: u32,
    v_base: u32,
    n_dims: u32,
    neox: u32,
    cache_f16: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read_write> k_cache: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: AttnParams;
@group(0) @binding(5) var<uniform> step: Step;
@group(0) @binding(6) var<storage, read> table: array<vec2<f32>>; // [pos][n_dims/2] (cos, sin)
@group(0) @binding(7) var<uniform> rf: RopeFuse;

const WG: u32 = 256u;
var<workgroup> q_head: array<vec4<f32>, 64>;
// attn_rope_decode: the token's query as loaded, then rotated; its key
// (rotated) and value as the caches hold them.
var<workgroup> q_in: array<f32, 256>;
var<workgroup> q_rot: array<f32, 256>;
var<workgroup> k_new: array<f32, 256>;
var<workgroup> v_new: array<f32, 256>;
var<workgroup> probs: array<f32, WG>;
var<workgroup> red: array<f32, WG>;

fn wg_max(v: f32, lid: u32) -> f32 {
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

fn wg_sum(v: f32, lid: u32) -> f32 {
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

// Head h's attention (its query in q_head) over positions ..= step.pos;
// with `fresh`, the last position's key and value are k_new and v_new.
fn attend(h: u32, lid: u32, fresh: bool) {
    let hd = p.head_dim;
    let kvh = h / (p.n_head / p.n_kv_head);
    let n_kv = step.pos + 1u;
    var first = 0u;
    if (p.window != 0u && n_kv > p.window) {
        first = n_kv - p.window;
    }
    let n4 = hd >> 2u;
    // V·P: invocation lid owns output d of slice `sl` (positions sl, sl +
    // slices, ... of each tile).
    let slices = WG / hd;
    let d = lid % hd;
    let sl = lid / hd;
    let ko = kvh * hd;
    var m = -3.4028235e38;
    var l = 0.0;
    var acc = 0.0;
    for (var c = first; c < n_kv; c += WG) {
        let j = c + lid;
        var s = -3.4028235e38;
        if (j < n_kv) {
            var a = vec4<f32>(0.0);
            if (fresh && j == step.pos) {
                for (var i = 0u; i < n4; i++) {
                    let kv = vec4<f32>(k_new[4u * i], k_new[4u * i + 1u], k_new[4u * i + 2u], k_new[4u * i + 3u]);
                    a = fma(q_head[i], kv, a);
                }
            } else {
                let kb = (j * p.kv_stride + ko) >> 2u;
                for (var i = 0u; i < n4; i++) {
                    a = fma(q_head[i], k_cache[kb + i], a);
                }
            }
            s = (a.x + a.y) + (a.z + a.w);
            if (p.softcap != 0.0) {
                s = tanh_f32(s * p.inv_cap) * p.softcap;
            }
            s *= p.scale;
        }
        let m_new = max(m, wg_max(s, lid));
        var e = 0.0;
        if (j < n_kv) {
            e = exp(s - m_new);
        }
        probs[lid] = e;
        let corr = exp(m - m_new);
        l = l * corr + wg_sum(e, lid);
        // probs is visible: wg_sum's barriers follow its writes.
        if (sl < slices) {
            let cnt = min(WG, n_kv - c);
            var a = 0.0;
            let vb = c * p.kv_stride + ko + d;
            for (var t = sl; t < cnt; t += slices) {
                var v: f32;
                if (fresh && c + t == step.pos) {
                    v = v_new[d];
                } else {
                    v = v_cache[vb + t * p.kv_stride];
                }
                a = fma(probs[t], v, a);
            }
            acc = acc * corr + a;
        }
        m = m_new;
        workgroupBarrier();
    }
    red[lid] = acc;
    workgroupBarrier();
    if (sl == 0u && d < hd) {
        var total = 0.0;
        for (var k = 0u; k < slices; k++) {
            total += red[k * hd + d];
        }
        out[h * hd + d] = total / l;
    }
}

@compute @workgroup_size(WG)
fn attn_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let hd = p.head_dim;
    if (lid < (hd >> 2u)) {
        let b = h * hd + 4u * lid;
        q_head[lid] = vec4<f32>(q[b], q[b + 1u], q[b + 2u], q[b + 3u]);
    }
    workgroupBarrier();
    attend(h, lid, false);
}

@compute @workgroup_size(WG)
fn attn_rope_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let hd = p.head_dim;
    let kvh = h / (p.n_head / p.n_kv_head);
    let pos = step.pos;
    if (lid < hd) {
        q_in[lid] = q[rf.q_base + h * hd + lid];
        // Unrotated dimensions (past n_dims) as they are.
        q_rot[lid] = q_in[lid];
        k_new[lid] = q[rf.k_base + kvh * hd + lid];
        v_new[lid] = stored(1u + rf.cache_f16, q[rf.v_base + kvh * hd + lid]);
    }
    workgroupBarrier();
    let pairs = rf.n_dims / 2u;
    var kr = vec2<f32>(0.0);
    var pr = vec2<u32>(0u);
    if (lid < pairs) {
        pr = rope_pair(lid, rf.n_dims, rf.neox != 0u);
        let cs = table[pos * pairs + lid];
        let qr = rope_rot(q_in[pr.x], q_in[pr.y], cs);
        q_rot[pr.x] = qr.x;
        q_rot[pr.y] = qr.y;
        kr = rope_rot(k_new[pr.x], k_new[pr.y], cs);
    }
    workgroupBarrier();
    if (lid < pairs) {
        k_new[pr.x] = kr.x;
        k_new[pr.y] = kr.y;
    }
    workgroupBarrier();
    if (lid < hd) {
        k_new[lid] = stored(1u + rf.cache_f16, k_new[lid]);
    }
    workgroupBarrier();
    if (lid < (hd >> 2u)) {
        q_head[lid] = vec4<f32>(q_rot[4u * lid], q_rot[4u * lid + 1u], q_rot[4u * lid + 2u], q_rot[4u * lid + 3u]);
    }
    // The first query head of each KV head stores the new key and value.
    if (h % (p.n_head / p.n_kv_head) == 0u && lid < hd) {
        let i = pos * p.kv_stride + kvh * hd + lid;
        k_cache[i >> 2u][i & 3u] = k_new[lid];
        v_cache[i] = v_new[lid];
    }
    workgroupBarrier();
    attend(h, lid, true);
}
