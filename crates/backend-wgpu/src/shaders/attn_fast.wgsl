// attn_fast.wgsl: the fast mode's attention for a single token (`attn_decode`),
// causal grouped-query attention over the KV cache in f32 with an online
// softmax, split over the positions (split-K, as flash-decoding): workgroup
// (g, s) takes HG query heads that share one KV head (group g) and walks
// split s of their visible positions in tiles of TP = WG / HG positions
// (rounded down to a power of two): each invocation scores one (head,
// position) pair of a tile, every key row thus read from memory once for
// the HG heads; then the tile's exponentials (against each head's running
// maximum) are summed and multiplied into V, each invocation owning a vec4
// of output dimensions for all HG heads over a slice of the tile's
// positions. It leaves each head's maximum, sum of exponentials and
// unnormalised output in `part`. `attn_combine`, the next dispatch, weighs
// the splits of each head into the output (one invocation a split for the
// weights, a vec4 of dimensions over a slice of the splits for the sums).
// A long context thus occupies (n_head / HG) · splits workgroups, reading
// each key and value once per group rather than once per head; a short one
// (SOLO, HG 1: `attend_solo`) one workgroup a head that writes the output
// itself, no combining dispatch. Not the CPU's bits
// (that is attention.wgsl, the exact mode's): float sums in this kernel's
// order, `exp` rather than ggml's, no f16 rounding of the query or the
// probabilities. HD (the head dimension) and HG are pipeline constants, so
// the loops over a head's vec4s and the group's heads unroll.
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
    head_dim: u32,   // = HD
    q_stride: u32,
    kv_stride: u32,  // floats between positions in the caches
    out_stride: u32,
    scale: f32,
    kv_f16: u32,
    window: u32,     // sliding window (0: all)
    softcap: f32,    // scores become softcap·tanh(K·Q · inv_cap) (0: not capped)
    inv_cap: f32,
    splits: u32,     // workgroups per head group (grid y)
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
// The most query heads a workgroup takes (ops.rs's attention_group).
const MAX_HG: u32 = 8u;
// SOLO: one workgroup a head (HG 1) takes every visible position and
// writes the head's output itself, with no `attn_combine` after it: the
// fast step's choice for short contexts (ops.rs's SOLO_MAX_KV), a dispatch
// less a layer.
override SOLO: bool = false;
// Query heads a workgroup takes (they share a KV head; HG · HD ≤ 1024).
override HG: u32 = 1u;
// The head dimension (≤ 256, a multiple of 4).
override HD: u32 = 64u;
// The group's queries, head after head (HG · HD / 4 vec4s).
var<workgroup> q_head: array<vec4<f32>, 256>;
// attn_rope_decode: the token's key (rotated) and value as the caches hold them.
var<workgroup> k_new: array<f32, 256>;
var<workgroup> v_new: array<f32, 256>;
// A tile's exponentials, head g's position t at g · TP + t.
var<workgroup> probs: array<f32, WG>;
var<workgroup> red: array<f32, WG>;
var<workgroup> red4: array<vec4<f32>, WG>;
// Each head's factor for its sums so far (exp(old max − new max)).
var<workgroup> hcorr: array<f32, MAX_HG>;

// Positions a tile: WG / HG rounded down to a power of two.
fn tile_len() -> u32 {
    var t = WG;
    while (t * HG > WG) {
        t >>= 1u;
    }
    return t;
}

// Max (MAX) or sum of v over the aligned `width` invocations around lid
// (width a power of two ≤ WG); every invocation gets its segment's.
fn seg_reduce(v: f32, lid: u32, width: u32, is_max: bool) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = width / 2u; s > 0u; s >>= 1u) {
        if (lid % width < s) {
            if (is_max) {
                red[lid] = max(red[lid], red[lid + s]);
            } else {
                red[lid] += red[lid + s];
            }
        }
        workgroupBarrier();
    }
    let r = red[lid - lid % width];
    workgroupBarrier();
    return r;
}

fn ml_base() -> u32 {
    return p.n_head * p.splits * HD;
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
    return vec2<u32>(first, max((len + p.splits - 1u) / p.splits, tile_len()));
}

// Dimensions 4i.. of position c's value (vb: the vec4 offset of the KV
// head's value at position 0); with `fresh`, the step's own position is
// v_new's (not yet in the cache).
fn v_at(vb: u32, c: u32, i: u32, fresh: bool) -> vec4<f32> {
    if (fresh && c == step.pos) {
        return vec4<f32>(v_new[4u * i], v_new[4u * i + 1u], v_new[4u * i + 2u], v_new[4u * i + 3u]);
    }
    return v_cache[vb + c * (p.kv_stride >> 2u) + i];
}

// Output dimension d of position c + t's value (vb: its offset at c);
// with `fresh`, the step's own position is v_new's (not yet in the cache).
fn v1_at(vb: u32, c: u32, t: u32, fresh: bool, d: u32) -> f32 {
    if (fresh && c + t == step.pos) {
        return v_new[d];
    }
    let i = vb + t * p.kv_stride;
    return v_cache[i >> 2u][i & 3u];
}

// SOLO (HG 1): head h's attention over every visible position into `out`,
// a tile of WG positions at a time (each invocation scoring one), the
// products with V an output dimension per invocation over a slice of the
// tile. Short contexts (up to ops.rs's SOLO_MAX_KV, one tile) take this
// kernel: a workgroup a head keeps them as parallel as the grouped
// kernel's splits would, in one dispatch.
fn attend_solo(h: u32, lid: u32, fresh: bool) {
    let kvh = h / (p.n_head / p.n_kv_head);
    let n_kv = step.pos + 1u;
    let first = split_span().x;
    let last = n_kv;
    let n4 = HD / 4u;
    let slices = WG / HD;
    let d = lid % HD;
    let sl = lid / HD;
    let ko = kvh * HD;
    var m = -3.4028235e38;
    var l = 0.0;
    var acc = 0.0;
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
                let kb = (j * p.kv_stride + ko) >> 2u;
                var a1 = vec4<f32>(0.0);
                for (var i = 0u; i + 1u < n4; i += 2u) {
                    a = fma(q_head[i], k_cache[kb + i], a);
                    a1 = fma(q_head[i + 1u], k_cache[kb + i + 1u], a1);
                }
                if (n4 % 2u == 1u) {
                    a = fma(q_head[n4 - 1u], k_cache[kb + n4 - 1u], a);
                }
                a += a1;
            }
            sc = (a.x + a.y) + (a.z + a.w);
            if (p.softcap != 0.0) {
                sc = tanh_f32(sc * p.inv_cap) * p.softcap;
            }
            sc *= p.scale;
        }
        let m_new = max(m, seg_reduce(sc, lid, WG, true));
        var e = 0.0;
        if (j < last) {
            e = exp(sc - m_new);
        }
        probs[lid] = e;
        let corr = exp(m - m_new);
        // probs is visible after seg_reduce's barriers.
        l = l * corr + seg_reduce(e, lid, WG, false);
        if (sl < slices) {
            let cnt = min(WG, last - c);
            let vb = c * p.kv_stride + ko + d;
            // Four positions a pass into four sums, their loads first.
            var a0 = 0.0;
            var a1 = 0.0;
            var a2 = 0.0;
            var a3 = 0.0;
            var t = sl;
            for (; t + 3u * slices < cnt; t += 4u * slices) {
                let v0 = v1_at(vb, c, t, fresh, d);
                let v1 = v1_at(vb, c, t + slices, fresh, d);
                let v2 = v1_at(vb, c, t + 2u * slices, fresh, d);
                let v3 = v1_at(vb, c, t + 3u * slices, fresh, d);
                a0 = fma(probs[t], v0, a0);
                a1 = fma(probs[t + slices], v1, a1);
                a2 = fma(probs[t + 2u * slices], v2, a2);
                a3 = fma(probs[t + 3u * slices], v3, a3);
            }
            for (; t < cnt; t += slices) {
                a0 = fma(probs[t], v1_at(vb, c, t, fresh, d), a0);
            }
            acc = acc * corr + ((a0 + a1) + (a2 + a3));
        }
        m = m_new;
        workgroupBarrier();
    }
    red[lid] = acc;
    workgroupBarrier();
    if (sl == 0u && d < HD) {
        var total = 0.0;
        for (var k = 0u; k < slices; k++) {
            total += red[k * HD + d];
        }
        out[h * HD + d] = total / l;
    }
}

// Split s of head group hg's attention (the queries in q_head) over
// positions ..= step.pos into `part`; with `fresh`, the last position's key
// and value are k_new and v_new. Each head's sums in its own registers
// (a0..a7, those past HG folded away with HG a constant), not an array a
// loop indexes (which a driver may keep in memory).
fn attend(hg: u32, s: u32, lid: u32, fresh: bool) {
    let h0 = hg * HG;
    let kvh = h0 / (p.n_head / p.n_kv_head);
    let n_kv = step.pos + 1u;
    let span = split_span();
    let first = span.x + s * span.y;
    if (first >= n_kv) {
        return;
    }
    let last = min(first + span.y, n_kv);
    let n4 = HD / 4u;
    let tp = tile_len();
    // Scores: invocation lid takes head g's position t of each tile
    // (invocations past HG · TP none).
    let g = lid / tp;
    let t = lid % tp;
    let scoring = g < HG;
    // V·P: invocation lid owns dimensions 4·d4.. of every head over slice
    // `sl` of a tile's positions (sl, sl + slices, ...).
    let slices = WG / n4;
    let d4 = lid % n4;
    let sl = lid / n4;
    let kb = kvh * n4;
    var m = -3.4028235e38;
    var l = 0.0;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    for (var c = first; c < last; c += tp) {
        let j = c + t;
        var sc = -3.4028235e38;
        if (scoring && j < last) {
            var a = vec4<f32>(0.0);
            var b = vec4<f32>(0.0);
            let qb = g * n4;
            if (fresh && j == step.pos) {
                for (var i = 0u; i < n4; i++) {
                    let kv = vec4<f32>(k_new[4u * i], k_new[4u * i + 1u], k_new[4u * i + 2u], k_new[4u * i + 3u]);
                    a = fma(q_head[qb + i], kv, a);
                }
            } else {
                let kr = j * (p.kv_stride >> 2u) + kb;
                for (var i = 0u; i + 1u < n4; i += 2u) {
                    a = fma(q_head[qb + i], k_cache[kr + i], a);
                    b = fma(q_head[qb + i + 1u], k_cache[kr + i + 1u], b);
                }
                if (n4 % 2u == 1u) {
                    a = fma(q_head[qb + n4 - 1u], k_cache[kr + n4 - 1u], a);
                }
            }
            a += b;
            sc = (a.x + a.y) + (a.z + a.w);
            if (p.softcap != 0.0) {
                sc = tanh_f32(sc * p.inv_cap) * p.softcap;
            }
            sc *= p.scale;
        }
        let m_new = max(m, seg_reduce(sc, lid, tp, true));
        var e = 0.0;
        if (scoring && j < last) {
            e = exp(sc - m_new);
        }
        probs[lid] = e;
        let corr = exp(m - m_new);
        if (scoring && t == 0u) {
            hcorr[g] = corr;
        }
        // probs and hcorr are visible after seg_reduce's barriers.
        l = l * corr + seg_reduce(e, lid, tp, false);
        m = m_new;
        if (sl < slices) {
            let cnt = min(tp, last - c);
            a0 *= hcorr[0];
            if (HG > 1u) { a1 *= hcorr[1]; }
            if (HG > 2u) { a2 *= hcorr[2]; }
            if (HG > 3u) { a3 *= hcorr[3]; }
            if (HG > 4u) { a4 *= hcorr[4]; }
            if (HG > 5u) { a5 *= hcorr[5]; }
            if (HG > 6u) { a6 *= hcorr[6]; }
            if (HG > 7u) { a7 *= hcorr[7]; }
            // A fixed count of positions per invocation (its slice of a
            // whole tile), those past the tile's `cnt` weighed 0 at a
            // position in range: the loop unrolls and every load issues
            // before the first product waits on one.
            let per = (tp + slices - 1u) / slices;
            for (var i = 0u; i < per; i++) {
                let u = sl + i * slices;
                let live = u < cnt;
                let v = v_at(kb, c + select(cnt - 1u, u, live), d4, fresh);
                let pu = min(u, tp - 1u);
                a0 = fma(vec4<f32>(select(0.0, probs[pu], live)), v, a0);
                if (HG > 1u) { a1 = fma(vec4<f32>(select(0.0, probs[tp + pu], live)), v, a1); }
                if (HG > 2u) { a2 = fma(vec4<f32>(select(0.0, probs[2u * tp + pu], live)), v, a2); }
                if (HG > 3u) { a3 = fma(vec4<f32>(select(0.0, probs[3u * tp + pu], live)), v, a3); }
                if (HG > 4u) { a4 = fma(vec4<f32>(select(0.0, probs[4u * tp + pu], live)), v, a4); }
                if (HG > 5u) { a5 = fma(vec4<f32>(select(0.0, probs[5u * tp + pu], live)), v, a5); }
                if (HG > 6u) { a6 = fma(vec4<f32>(select(0.0, probs[6u * tp + pu], live)), v, a6); }
                if (HG > 7u) { a7 = fma(vec4<f32>(select(0.0, probs[7u * tp + pu], live)), v, a7); }
            }
        }
        workgroupBarrier();
    }
    if (scoring && t == 0u) {
        let hs = (h0 + g) * p.splits + s;
        part[ml_base() + 2u * hs] = m;
        part[ml_base() + 2u * hs + 1u] = l;
    }
    // Each head's output: its slices' sums.
    for (var k = 0u; k < HG; k++) {
        var a = a0;
        switch k {
            case 1u: { a = a1; }
            case 2u: { a = a2; }
            case 3u: { a = a3; }
            case 4u: { a = a4; }
            case 5u: { a = a5; }
            case 6u: { a = a6; }
            case 7u: { a = a7; }
            default: {}
        }
        red4[lid] = a;
        workgroupBarrier();
        if (lid < n4) {
            var total = vec4<f32>(0.0);
            for (var z = 0u; z < slices; z++) {
                total += red4[z * n4 + lid];
            }
            let o = ((h0 + k) * p.splits + s) * HD + 4u * lid;
            part[o] = total.x;
            part[o + 1u] = total.y;
            part[o + 2u] = total.z;
            part[o + 3u] = total.w;
        }
        workgroupBarrier();
    }
}

// Head h's output from its splits (those with positions), each weighed by
// exp(its maximum − the largest): invocation s takes split s's weight,
// then invocation lid sums dimensions 4·d4.. over a slice of the splits.
@compute @workgroup_size(WG)
fn attn_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let span = split_span();
    let n_kv = step.pos + 1u;
    let used = (n_kv - span.x + span.y - 1u) / span.y;
    let hs0 = h * p.splits;
    var ms = -3.4028235e38;
    if (lid < used) {
        ms = part[ml_base() + 2u * (hs0 + lid)];
    }
    let mx = seg_reduce(ms, lid, WG, true);
    var w = 0.0;
    if (lid < used) {
        w = exp(ms - mx);
    }
    probs[lid] = w;
    var wl = 0.0;
    if (lid < used) {
        wl = w * part[ml_base() + 2u * (hs0 + lid) + 1u];
    }
    // probs is visible after seg_reduce's barriers.
    let l = seg_reduce(wl, lid, WG, false);
    let n4 = HD / 4u;
    let slices = WG / n4;
    let d4 = lid % n4;
    let sl = lid / n4;
    var a = vec4<f32>(0.0);
    if (sl < slices) {
        for (var s = sl; s < used; s += slices) {
            let o = (hs0 + s) * HD + 4u * d4;
            a = fma(vec4<f32>(probs[s]), vec4<f32>(part[o], part[o + 1u], part[o + 2u], part[o + 3u]), a);
        }
    }
    red4[lid] = a;
    workgroupBarrier();
    if (lid < n4) {
        var total = vec4<f32>(0.0);
        for (var z = 0u; z < slices; z++) {
            total += red4[z * n4 + lid];
        }
        total /= l;
        let o = h * HD + 4u * lid;
        out[o] = total.x;
        out[o + 1u] = total.y;
        out[o + 2u] = total.z;
        out[o + 3u] = total.w;
    }
}

@compute @workgroup_size(WG)
fn attn_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n4 = HD / 4u;
    for (var i = lid; i < HG * n4; i += WG) {
        let b = wid.x * HG * HD + 4u * i;
        q_head[i] = vec4<f32>(q[b], q[b + 1u], q[b + 2u], q[b + 3u]);
    }
    workgroupBarrier();
    if (SOLO) {
        attend_solo(wid.x, lid, false);
    } else {
        attend(wid.x, wid.y, lid, false);
    }
}

@compute @workgroup_size(WG)
fn attn_rope_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h0 = wid.x * HG;
    let grp = p.n_head / p.n_kv_head;
    let kvh = h0 / grp;
    let pos = step.pos;
    let pairs = rf.n_dims / 2u;
    let neox = rf.neox != 0u;
    // The key, normed and rotated, and the value.
    var ki = 0.0;
    if (lid < HD) {
        ki = q[rf.k_base + kvh * HD + lid];
        if (rf.v_cached != 0u) {
            let i = pos * p.kv_stride + kvh * HD + lid;
            v_new[lid] = v_cache[i >> 2u][i & 3u];
        } else {
            v_new[lid] = stored(1u + rf.cache_f16, q[rf.v_base + kvh * HD + lid]);
        }
    }
    if ((rf.qk_norm & 2u) != 0u) {
        // Uniform control flow: seg_reduce's barriers are met by every invocation.
        let sk = seg_reduce(ki * ki, lid, WG, false);
        if (lid < HD) {
            ki = ki / sqrt(sk / f32(HD) + rf.k_eps) * norm[HD + lid];
        }
    }
    if (lid < HD) {
        k_new[lid] = ki;
    }
    workgroupBarrier();
    var kr = vec2<f32>(0.0);
    var pr = vec2<u32>(0u);
    if (lid < pairs) {
        pr = rope_pair(lid, rf.n_dims, neox);
        kr = rope_rot(k_new[pr.x], k_new[pr.y], table[pos * pairs + lid]);
    }
    workgroupBarrier();
    if (lid < pairs) {
        k_new[pr.x] = kr.x;
        k_new[pr.y] = kr.y;
    }
    workgroupBarrier();
    if (lid < HD) {
        k_new[lid] = stored(1u + rf.cache_f16, k_new[lid]);
    }
    // Each query head: normed (its factor from the whole head), rotated
    // pair by pair from the stacked output, into q_head.
    for (var k = 0u; k < HG; k++) {
        let qb = rf.q_base + (h0 + k) * HD;
        var f = 1.0;
        if ((rf.qk_norm & 1u) != 0u) {
            var qi = 0.0;
            if (lid < HD) {
                qi = q[qb + lid];
            }
            let sq = seg_reduce(qi * qi, lid, WG, false);
            f = sqrt(sq / f32(HD) + rf.q_eps);
        }
        let o = k * HD;
        if (lid < pairs) {
            let pq = rope_pair(lid, rf.n_dims, neox);
            var a = q[qb + pq.x];
            var b = q[qb + pq.y];
            if ((rf.qk_norm & 1u) != 0u) {
                a = a / f * norm[pq.x];
                b = b / f * norm[pq.y];
            }
            let r = rope_rot(a, b, table[pos * pairs + lid]);
            q_head[(o + pq.x) >> 2u][(o + pq.x) & 3u] = r.x;
            q_head[(o + pq.y) >> 2u][(o + pq.y) & 3u] = r.y;
        } else if (lid >= rf.n_dims && lid < HD) {
            // Unrotated dimensions (past n_dims) as they are.
            var a = q[qb + lid];
            if ((rf.qk_norm & 1u) != 0u) {
                a = a / f * norm[lid];
            }
            q_head[(o + lid) >> 2u][(o + lid) & 3u] = a;
        }
    }
    workgroupBarrier();
    // The first split of the first head group of each KV head stores the
    // new key and value.
    if (wid.y == 0u && h0 % grp == 0u && lid < HD) {
        let i = pos * p.kv_stride + kvh * HD + lid;
        k_cache[i >> 2u][i & 3u] = k_new[lid];
        if (rf.v_cached == 0u) {
            v_cache[i >> 2u][i & 3u] = v_new[lid];
        }
    }
    workgroupBarrier();
    if (SOLO) {
        attend_solo(wid.x, lid, true);
    } else {
        attend(wid.x, wid.y, lid, true);
    }
}
