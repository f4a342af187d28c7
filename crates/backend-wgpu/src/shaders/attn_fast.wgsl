// attn_fast.wgsl: the fast mode's attention for a single token (`attn_decode`),
// causal grouped-query attention over the KV cache in f32 with an online
// softmax, split over the positions (split-K, as flash-decoding): workgroup
// (h, s) walks split s of query head h's visible positions in tiles of WG,
// each invocation scoring one position of a tile, then the tile's
// exponentials (against the running maximum) are summed and multiplied into
// V, outputs spread over the invocations; it leaves its maximum, its sum of
// exponentials and its unnormalised output in `part`. `attn_combine`, the
// next dispatch, weighs the splits of each head into the output. A long
// context thus occupies n_head · splits workgroups instead of n_head; a
// short one takes one workgroup a head and no combining (SOLO). Not
// the CPU's bits (that is attention.wgsl, the exact mode's): float sums in
// this kernel's order. Closer to them than a plain f32 attention: the
// exponentials are ggml's (expf_ggml), and with an f16 cache the query is
// rounded to f16 as ggml's K·Q takes it and, in SOLO (one tile, whose
// softmax is final before V), the normalised probabilities as its V·P takes
// them; the splits keep theirs in f32, unnormalised, and `exp` for their
// corrections.
//
// `attn_rope_decode` takes the query, key and value of the token from the
// stacked projection's output instead (RopeFuse): it rotates the query and
// the key itself (rope_common.wgsl), attends to the new position through
// those values, and the first query head of each KV head writes the key and
// value into the caches for later steps (no workgroup reads what another
// writes in the same dispatch) — RoPE's dispatch is gone. Every split
// rotates the query; the first split writes the caches. Two more steps of
// a layer may come along (RopeFuse): a per-head RMSNorm of the query and
// of the key before RoPE (Gemma 3's and Qwen3's `attn_q_norm`,
// `attn_k_norm`: `qk_norm` bits 0 and 1, their weights in `norm`, the
// query's then the key's), and a value its own product already wrote into
// the cache (`v_cached`: a value projection of another type than the
// stacked query and key).

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
    splits: u32,     // workgroups per head (grid y)
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
    qk_norm: u32,    // bit 0: RMSNorm each query head, bit 1: each key head
    v_cached: u32,   // 1: the value is in the cache (no v_base)
    q_eps: f32,
    k_eps: f32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read_write> k_cache: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> v_cache: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: AttnParams;
@group(0) @binding(5) var<uniform> step: Step;
@group(0) @binding(6) var<storage, read> table: array<vec2<f32>>; // [pos][n_dims/2] (cos, sin)
@group(0) @binding(7) var<uniform> rf: RopeFuse;
// Per head and split: the unnormalised outputs ([h][s][head_dim]), then
// from ml_base() the maximum and the sum of exponentials ([h][s][2]).
@group(0) @binding(8) var<storage, read_write> part: array<f32>;
// attn_rope_decode's per-head norm weights: the query's head_dim, then the key's.
@group(0) @binding(9) var<storage, read> norm: array<f32>;

const WG: u32 = 256u;
// The fewest positions a split takes: shorter contexts use fewer splits.
const MIN_CHUNK: u32 = 64u;
// SOLO: one workgroup a head takes every visible position and writes the
// head's output itself, with no `attn_combine` after it: the fast step's
// choice for short contexts (ops.rs's SOLO_MAX_KV), a dispatch less a
// layer, where the splits would have had a tile of positions or less each.
override SOLO: bool = false;
var<workgroup> q_head: array<vec4<f32>, 64>;
// attn_rope_decode: the token's query as loaded, then rotated; its key
// (rotated) and value as the caches hold them.
var<workgroup> q_in: array<f32, 256>;
var<workgroup> q_rot: array<f32, 256>;
var<workgroup> k_new: array<f32, 256>;
var<workgroup> v_new: array<f32, 256>;
var<workgroup> probs: array<f32, WG>;
var<workgroup> red: array<f32, WG>;
// Each invocation's share of the products with V, summed over the slices.
var<workgroup> red4: array<vec4<f32>, WG>;

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

// The query as ggml's K·Q product takes it: rounded to f16 where the cache
// is f16 (the product's vec_dot type), else as it is.
fn q_cast(v: vec4<f32>) -> vec4<f32> {
    if (p.kv_f16 == 0u) {
        return v;
    }
    return vec4<f32>(round_f16(v.x), round_f16(v.y), round_f16(v.z), round_f16(v.w));
}

fn ml_base() -> u32 {
    return p.n_head * p.splits * p.head_dim;
}

// The first visible position and the positions per split.
fn split_span() -> vec2<u32> {
    let n_kv = step.pos + 1u;
    var first = 0u;
    if (p.window != 0u && n_kv > p.window) {
        first = n_kv - p.window;
    }
    let len = n_kv - first;
    if (SOLO) {
        return vec2<u32>(first, len);
    }
    return vec2<u32>(first, max((len + p.splits - 1u) / p.splits, MIN_CHUNK));
}

// Output dimensions 4·d4 .. 4·d4 + 3 of position c + t's value (vb4: its
// vec4 at c); with `fresh`, the step's own position is v_new's (not yet in
// the cache).
fn v4_at(vb4: u32, c: u32, t: u32, fresh: bool, d4: u32) -> vec4<f32> {
    if (fresh && c + t == step.pos) {
        let d = 4u * d4;
        return vec4<f32>(v_new[d], v_new[d + 1u], v_new[d + 2u], v_new[d + 3u]);
    }
    return v_cache[vb4 + t * (p.kv_stride >> 2u)];
}

// Split s of head h's attention (its query in q_head) over positions ..=
// step.pos into `part`; with `fresh`, the last position's key and value are
// k_new and v_new.
fn attend(h: u32, s: u32, lid: u32, fresh: bool) {
    let hd = p.head_dim;
    let kvh = h / (p.n_head / p.n_kv_head);
    let n_kv = step.pos + 1u;
    let span = split_span();
    let first = span.x + s * span.y;
    if (first >= n_kv) {
        return;
    }
    let last = min(first + span.y, n_kv);
    let n4 = hd >> 2u;
    // V·P: invocation lid owns output vec4 d4 of slice `sl` (positions sl,
    // sl + slices, ... of each tile), a vec4 load a position: a slice of a
    // tile is 16 positions at head_dim 64 (64 with one float a load).
    let slices = WG / n4;
    let d4 = lid % n4;
    let sl = lid / n4;
    let ko = kvh * hd;
    var m = -3.4028235e38;
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var c = first; c < last; c += WG) {
        let j = c + lid;
        var sc = -3.4028235e38;
        if (j < last) {
            var a = vec4<f32>(0.0);
            if (fresh && j == step.pos) {
                for (var i = 0u; i < n4; i++) {
                    let kv = vec4<f32>(k_new[4u * i], k_new[4u * i + 1u], k_new[4u * i + 2u], k_new[4u * i + 3u]);
                    a = fma(q_head[i], kv, a);
                }
            } else {
                // Four vectors a pass into four sums: their loads issue
                // together instead of one cache round trip at a time.
                let kb = (j * p.kv_stride + ko) >> 2u;
                var a1 = vec4<f32>(0.0);
                var a2 = vec4<f32>(0.0);
                var a3 = vec4<f32>(0.0);
                var i = 0u;
                for (; i + 4u <= n4; i += 4u) {
                    let k0 = k_cache[kb + i];
                    let k1 = k_cache[kb + i + 1u];
                    let k2 = k_cache[kb + i + 2u];
                    let k3 = k_cache[kb + i + 3u];
                    a = fma(q_head[i], k0, a);
                    a1 = fma(q_head[i + 1u], k1, a1);
                    a2 = fma(q_head[i + 2u], k2, a2);
                    a3 = fma(q_head[i + 3u], k3, a3);
                }
                for (; i < n4; i++) {
                    a = fma(q_head[i], k_cache[kb + i], a);
                }
                a = (a + a1) + (a2 + a3);
            }
            sc = (a.x + a.y) + (a.z + a.w);
            if (p.softcap != 0.0) {
                sc = tanh_f32(sc * p.inv_cap) * p.softcap;
            }
            sc *= p.scale;
        }
        let m_new = max(m, wg_max(sc, lid));
        var e = 0.0;
        if (j < last) {
            e = expf_ggml(sc - m_new);
        }
        if (!SOLO) {
            // Visible to the products with V: wg_sum's barriers follow.
            probs[lid] = e;
        }
        let corr = exp(m - m_new);
        let ls = wg_sum(e, lid);
        l = l * corr + ls;
        if (SOLO) {
            // The one tile (SOLO takes at most WG positions): m_new and ls
            // are the softmax's own, so the probabilities are normalised
            // before V as ggml's soft_max normalises them (times 1/sum), and
            // rounded to f16 where the cache is f16, as ggml's product with
            // an f16 V rounds them.
            var pr = e * (1.0 / ls);
            if (p.kv_f16 != 0u) {
                pr = round_f16(pr);
            }
            probs[lid] = pr;
            workgroupBarrier();
        }
        if (sl < slices) {
            let cnt = min(WG, last - c);
            let vb4 = ((c * p.kv_stride + ko) >> 2u) + d4;
            // Four positions a pass into four sums, their loads first (one
            // position at a time waited out the cache at every step).
            var a0 = vec4<f32>(0.0);
            var a1 = vec4<f32>(0.0);
            var a2 = vec4<f32>(0.0);
            var a3 = vec4<f32>(0.0);
            var t = sl;
            for (; t + 3u * slices < cnt; t += 4u * slices) {
                let v0 = v4_at(vb4, c, t, fresh, d4);
                let v1 = v4_at(vb4, c, t + slices, fresh, d4);
                let v2 = v4_at(vb4, c, t + 2u * slices, fresh, d4);
                let v3 = v4_at(vb4, c, t + 3u * slices, fresh, d4);
                a0 = fma(vec4<f32>(probs[t]), v0, a0);
                a1 = fma(vec4<f32>(probs[t + slices]), v1, a1);
                a2 = fma(vec4<f32>(probs[t + 2u * slices]), v2, a2);
                a3 = fma(vec4<f32>(probs[t + 3u * slices]), v3, a3);
            }
            for (; t < cnt; t += slices) {
                a0 = fma(vec4<f32>(probs[t]), v4_at(vb4, c, t, fresh, d4), a0);
            }
            acc = acc * corr + ((a0 + a1) + (a2 + a3));
        }
        m = m_new;
        workgroupBarrier();
    }
    red4[lid] = acc;
    workgroupBarrier();
    let hs = h * p.splits + s;
    if (sl == 0u) {
        var total = vec4<f32>(0.0);
        for (var k = 0u; k < slices; k++) {
            total += red4[k * n4 + d4];
        }
        let o = 4u * d4;
        if (SOLO) {
            // Normalised already.
            let r = total;
            let b = h * hd + o;
            out[b] = r.x;
            out[b + 1u] = r.y;
            out[b + 2u] = r.z;
            out[b + 3u] = r.w;
        } else {
            let b = hs * hd + o;
            part[b] = total.x;
            part[b + 1u] = total.y;
            part[b + 2u] = total.z;
            part[b + 3u] = total.w;
        }
    }
    if (!SOLO && lid == 0u) {
        part[ml_base() + 2u * hs] = m;
        part[ml_base() + 2u * hs + 1u] = l;
    }
}

// Head h's output from its splits (those with positions), each weighed by
// exp(its maximum − the largest).
@compute @workgroup_size(WG)
fn attn_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let hd = p.head_dim;
    if (lid >= hd) {
        return;
    }
    let span = split_span();
    let n_kv = step.pos + 1u;
    let used = (n_kv - span.x + span.y - 1u) / span.y;
    let hs0 = h * p.splits;
    var mx = -3.4028235e38;
    for (var s = 0u; s < used; s++) {
        mx = max(mx, part[ml_base() + 2u * (hs0 + s)]);
    }
    var l = 0.0;
    var a = 0.0;
    for (var s = 0u; s < used; s++) {
        let w = exp(part[ml_base() + 2u * (hs0 + s)] - mx);
        l = fma(w, part[ml_base() + 2u * (hs0 + s) + 1u], l);
        a = fma(w, part[(hs0 + s) * hd + lid], a);
    }
    out[h * hd + lid] = a / l;
}

@compute @workgroup_size(WG)
fn attn_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let hd = p.head_dim;
    if (lid < (hd >> 2u)) {
        let b = h * hd + 4u * lid;
        q_head[lid] = q_cast(vec4<f32>(q[b], q[b + 1u], q[b + 2u], q[b + 3u]));
    }
    workgroupBarrier();
    attend(h, wid.y, lid, false);
}

@compute @workgroup_size(WG)
fn attn_rope_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let hd = p.head_dim;
    let kvh = h / (p.n_head / p.n_kv_head);
    let pos = step.pos;
    var qi = 0.0;
    var ki = 0.0;
    if (lid < hd) {
        qi = q[rf.q_base + h * hd + lid];
        ki = q[rf.k_base + kvh * hd + lid];
        if (rf.v_cached != 0u) {
            let i = pos * p.kv_stride + kvh * hd + lid;
            v_new[lid] = v_cache[i >> 2u][i & 3u];
        } else {
            v_new[lid] = stored(1u + rf.cache_f16, q[rf.v_base + kvh * hd + lid]);
        }
    }
    if (rf.qk_norm != 0u) {
        // Uniform control flow: wg_sum's barriers are met by every invocation.
        let sq = wg_sum(qi * qi, lid);
        let sk = wg_sum(ki * ki, lid);
        if (lid < hd) {
            if ((rf.qk_norm & 1u) != 0u) {
                qi = qi / sqrt(sq / f32(hd) + rf.q_eps) * norm[lid];
            }
            if ((rf.qk_norm & 2u) != 0u) {
                ki = ki / sqrt(sk / f32(hd) + rf.k_eps) * norm[hd + lid];
            }
        }
    }
    if (lid < hd) {
        q_in[lid] = qi;
        // Unrotated dimensions (past n_dims) as they are.
        q_rot[lid] = qi;
        k_new[lid] = ki;
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
        q_head[lid] = q_cast(vec4<f32>(q_rot[4u * lid], q_rot[4u * lid + 1u], q_rot[4u * lid + 2u], q_rot[4u * lid + 3u]));
    }
    // The first split of the first query head of each KV head stores the
    // new key and value.
    if (wid.y == 0u && h % (p.n_head / p.n_kv_head) == 0u && lid < hd) {
        let i = pos * p.kv_stride + kvh * hd + lid;
        k_cache[i >> 2u][i & 3u] = k_new[lid];
        if (rf.v_cached == 0u) {
            v_cache[i >> 2u][i & 3u] = v_new[lid];
        }
    }
    workgroupBarrier();
    attend(h, wid.y, lid, true);
}
