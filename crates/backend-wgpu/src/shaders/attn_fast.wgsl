// attn_fast.wgsl: the fast mode's attention for a single token (`attn_decode`),
// causal grouped-query attention over the KV cache in f32 with an online
// softmax: one workgroup per query head walks the visible positions in
// tiles of WG, each invocation scoring one position of a tile, then the
// tile's exponentials (against the running maximum) are summed and
// multiplied into V, outputs spread over the invocations. Not the CPU's
// bits (that is attention.wgsl, the exact mode's): float sums in this
// kernel's order, `exp` rather than ggml's, no f16 rounding of the query
// or the probabilities.

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

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> v_cache: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: AttnParams;
@group(0) @binding(5) var<uniform> step: Step;

const WG: u32 = 256u;
var<workgroup> q_head: array<vec4<f32>, 64>;
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

@compute @workgroup_size(WG)
fn attn_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let hd = p.head_dim;
    let kvh = h / (p.n_head / p.n_kv_head);
    let n_kv = step.pos + 1u;
    var first = 0u;
    if (p.window != 0u && n_kv > p.window) {
        first = n_kv - p.window;
    }
    let n4 = hd >> 2u;
    if (lid < n4) {
        let b = h * hd + 4u * lid;
        q_head[lid] = vec4<f32>(q[b], q[b + 1u], q[b + 2u], q[b + 3u]);
    }
    workgroupBarrier();
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
            let kb = (j * p.kv_stride + ko) >> 2u;
            var a = vec4<f32>(0.0);
            for (var i = 0u; i < n4; i++) {
                a = fma(q_head[i], k_cache[kb + i], a);
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
            var t = sl;
            let vb = c * p.kv_stride + ko + d;
            for (; t < cnt; t += slices) {
                a = fma(probs[t], v_cache[vb + t * p.kv_stride], a);
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
