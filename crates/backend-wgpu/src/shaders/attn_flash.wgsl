// attn_flash.wgsl: the fast mode's attention for a batch (`attn_flash`),
// causal grouped-query attention over the KV cache in the manner of
// FlashAttention: workgroup (x, h) takes BQ = 32 consecutive queries of
// query head h and walks the positions they see in tiles of BK = 64 keys,
// keeping an online softmax (each row's running maximum and sum of
// exponentials) and the unnormalised outputs in registers; nothing the
// size of the context is stored. A tile:
//   1. S = Q·Kᵀ (32 × 64): invocation (tx, ty) of 16 × 8 owns the scores of
//      queries 4ty.. + 3 and keys 4tx.. + 3, summing over the head's
//      dimensions in chunks of DC = 16 staged in workgroup memory (queries
//      and keys transposed: four of them a vec4 for each dimension).
//   2. The scores soft-capped (softcap ≠ 0), scaled, and masked (a key
//      after the query's position, or outside its sliding window, or a
//      query past the batch); each row's tile maximum from the 16
//      invocations sharing it (through `red`); the running maxima move and
//      the outputs and sums are rescaled by exp(m_old − m_new); the
//      probabilities exp(s − m_new) go to `ps`.
//   3. O += P·V: the same invocation owns queries 4ty.. + 3 and the output
//      columns (vec4s) tx, tx + 16, tx + 32, tx + 48 (head_dim ≤ 256), over
//      the tile's keys, V staged a chunk of keys at a time; the row sums of
//      P are taken in the same pass.
// Finally the outputs are divided by their sums. Workgroup memory: 16 KiB
// (WebGPU's default limit). Everything an invocation keeps is a named vector
// or struct member (no arrays indexed at run time, which drivers may keep
// in memory rather than registers); NC, the output vec4 columns an
// invocation owns (ceil(head_dim / 64)), is a pipeline constant. Not the
// CPU's bits (attention.wgsl is the
// exact mode's): f32 sums in this order, `exp` rather than ggml's, no f16
// rounding of the query or the probabilities.

struct AttnParams {
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,   // ≤ 256, multiple of 4
    q_stride: u32,   // floats between tokens in q
    kv_stride: u32,  // floats between positions in the caches (multiple of 4)
    out_stride: u32, // floats between tokens in out
    scale: f32,
    kv_f16: u32,     // unread: the caches' values are what they are
    window: u32,     // sliding window: position j visible from p when p − j < window (0: all)
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
@group(0) @binding(2) var<storage, read> v_cache: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: AttnParams;
@group(0) @binding(5) var<uniform> step: Step;

override NC: u32 = 1u; // output vec4 columns an invocation owns (1 ..= 4)

const BQ: u32 = 32u; // queries per workgroup
const BK: u32 = 64u; // keys per tile
const DC: u32 = 16u; // dimensions per staged chunk of K·Q
const NEG: f32 = -1e30; // a running maximum before any visible key
// Step 1: the chunk's queries at [d · 8 + query / 4] (component query % 4),
// keys from KOFF at [d · 16 + key / 4]. Step 3: a chunk of V's rows.
const KOFF: u32 = 128u;
const STAGE: u32 = 384u;
var<workgroup> stage: array<vec4<f32>, STAGE>;
// The tile's probabilities: [key · 8 + query / 4], component query % 4.
var<workgroup> ps: array<vec4<f32>, 512>;
// Each row's tile maxima from its 16 invocations: [row · 4 + tx / 4],
// component tx % 4.
var<workgroup> red: array<vec4<f32>, 128>;

// Stores v's components as dimension rows d .. d + 3 of column `col` of a
// transposed chunk (`width` vec4s a dimension row, from `base`).
fn put_t(base: u32, width: u32, d: u32, col: u32, v: vec4<f32>) {
    let i = base + d * width + (col >> 2u);
    let c = col & 3u;
    stage[i][c] = v.x;
    stage[i + width][c] = v.y;
    stage[i + 2u * width][c] = v.z;
    stage[i + 3u * width][c] = v.w;
}

// An output column (vec4) of the invocation's four rows.
struct Rows {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
}

fn rows_zero() -> Rows {
    return Rows(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
}

// a + p_row · v for each row (pv: the four rows' probabilities of a key).
fn rows_fma(a: Rows, pv: vec4<f32>, v: vec4<f32>) -> Rows {
    return Rows(fma(vec4<f32>(pv.x), v, a.r0), fma(vec4<f32>(pv.y), v, a.r1),
                fma(vec4<f32>(pv.z), v, a.r2), fma(vec4<f32>(pv.w), v, a.r3));
}

fn rows_scale(a: Rows, f: vec4<f32>) -> Rows {
    return Rows(a.r0 * f.x, a.r1 * f.y, a.r2 * f.z, a.r3 * f.w);
}

// A row's scores of four keys: soft-capped (softcap ≠ 0), then scaled.
fn scores(v: vec4<f32>) -> vec4<f32> {
    var s = v;
    if (p.softcap != 0.0) {
        s = vec4<f32>(tanh_f32(v.x * p.inv_cap), tanh_f32(v.y * p.inv_cap),
                      tanh_f32(v.z * p.inv_cap), tanh_f32(v.w * p.inv_cap)) * p.softcap;
    }
    return s * p.scale;
}

// Which of keys kpos the query at position qp sees (none if !ok).
fn visible(kpos: vec4<u32>, qp: u32, ok: bool) -> vec4<bool> {
    var v = (kpos <= vec4<u32>(qp)) & vec4<bool>(ok);
    if (p.window != 0u) {
        // kpos ≤ qp where v holds, so qp − kpos does not wrap there.
        v = v & ((vec4<u32>(qp) - kpos) < vec4<u32>(p.window));
    }
    return v;
}

fn masked_max(s: vec4<f32>, vis: vec4<bool>) -> f32 {
    let m = select(vec4<f32>(NEG), s, vis);
    return max(max(m.x, m.y), max(m.z, m.w));
}

// Row r's maximum over its 16 invocations' tile maxima.
fn row_max(r: u32) -> f32 {
    let c = max(max(red[4u * r], red[4u * r + 1u]), max(red[4u * r + 2u], red[4u * r + 3u]));
    return max(max(c.x, c.y), max(c.z, c.w));
}

fn put_row(base: u32, col: u32, o: vec4<f32>) {
    let b = base + 4u * col;
    out[b] = o.x;
    out[b + 1u] = o.y;
    out[b + 2u] = o.z;
    out[b + 3u] = o.w;
}

// Row i's outputs (acc / l) of the invocation's columns.
fn store_row(tok: u32, h: u32, tx: u32, d4n: u32, inv: f32, o0: vec4<f32>, o1: vec4<f32>,
             o2: vec4<f32>, o3: vec4<f32>) {
    let b = tok * p.out_stride + h * p.head_dim;
    put_row(b, tx, o0 * inv);
    if (NC > 1u && tx + 16u < d4n) {
        put_row(b, tx + 16u, o1 * inv);
    }
    if (NC > 2u && tx + 32u < d4n) {
        put_row(b, tx + 32u, o2 * inv);
    }
    if (NC > 3u && tx + 48u < d4n) {
        put_row(b, tx + 48u, o3 * inv);
    }
}

// Grid: (ceil(n_tokens / BQ), n_head).
@compute @workgroup_size(128)
fn attn_flash(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tx = lid & 15u;
    let ty = lid >> 4u;
    let h = wid.y;
    let tok0 = wid.x * BQ;
    let n_tok = step.n_tokens;
    if (tok0 >= n_tok) {
        return; // the whole workgroup: uniform
    }
    let hd = p.head_dim;
    let d4n = hd >> 2u;
    let kvh = h / (p.n_head / p.n_kv_head);
    let ko4 = (kvh * hd) >> 2u;
    let ks4 = p.kv_stride >> 2u;
    // Positions: the tile's queries see keys [kstart, kend).
    let pos_first = step.pos + tok0;
    let kend = step.pos + min(tok0 + BQ, n_tok);
    var kstart = 0u;
    if (p.window != 0u && pos_first + 1u > p.window) {
        kstart = ((pos_first + 1u - p.window) / BK) * BK;
    }
    // This invocation's four queries (rows) and their positions.
    let row_tok = vec4<u32>(tok0 + 4u * ty) + vec4<u32>(0u, 1u, 2u, 3u);
    let row_ok = row_tok < vec4<u32>(n_tok);
    let row_pos = row_tok + vec4<u32>(step.pos);

    var m = vec4<f32>(NEG);
    var l = vec4<f32>(0.0);
    // Output columns tx, tx + 16, tx + 32, tx + 48 (those below NC).
    var o0 = rows_zero();
    var o1 = rows_zero();
    var o2 = rows_zero();
    var o3 = rows_zero();
    // Step 1's staging: query lid / 4 (one vec4), keys lid / 4 and
    // lid / 4 + 32 (one each), dimensions 4 (lid % 4) ...
    let sq = lid >> 2u;
    let sd = 4u * (lid & 3u);
    let vc = STAGE / d4n; // V rows a chunk

    for (var key0 = kstart; key0 < kend; key0 += BK) {
        // 1. S = Q·Kᵀ: s_i, query i's scores of keys 4tx .. + 3.
        var s0 = vec4<f32>(0.0);
        var s1 = vec4<f32>(0.0);
        var s2 = vec4<f32>(0.0);
        var s3 = vec4<f32>(0.0);
        for (var d0 = 0u; d0 < hd; d0 += DC) {
            workgroupBarrier();
            let d = d0 + sd;
            var qv = vec4<f32>(0.0);
            let t = tok0 + sq;
            if (t < n_tok && d < hd) {
                let b = t * p.q_stride + h * hd + d;
                qv = vec4<f32>(q[b], q[b + 1u], q[b + 2u], q[b + 3u]);
            }
            put_t(0u, BQ / 4u, sd, sq, qv);
            let j0 = key0 + sq;
            var k0 = vec4<f32>(0.0);
            if (j0 < kend && d < hd) {
                k0 = k_cache[j0 * ks4 + ko4 + (d >> 2u)];
            }
            put_t(KOFF, BK / 4u, sd, sq, k0);
            let j1 = j0 + 32u;
            var k1 = vec4<f32>(0.0);
            if (j1 < kend && d < hd) {
                k1 = k_cache[j1 * ks4 + ko4 + (d >> 2u)];
            }
            put_t(KOFF, BK / 4u, sd, sq + 32u, k1);
            workgroupBarrier();
            let nd = min(DC, hd - d0);
            for (var dd = 0u; dd < nd; dd++) {
                let a = stage[dd * (BQ / 4u) + ty];
                let b = stage[KOFF + dd * (BK / 4u) + tx];
                s0 = fma(vec4<f32>(a.x), b, s0);
                s1 = fma(vec4<f32>(a.y), b, s1);
                s2 = fma(vec4<f32>(a.z), b, s2);
                s3 = fma(vec4<f32>(a.w), b, s3);
            }
        }
        // 2. Masked scores, the rows' maxima, probabilities.
        let kpos = vec4<u32>(key0 + 4u * tx) + vec4<u32>(0u, 1u, 2u, 3u);
        s0 = scores(s0);
        s1 = scores(s1);
        s2 = scores(s2);
        s3 = scores(s3);
        let v0 = visible(kpos, row_pos.x, row_ok.x);
        let v1 = visible(kpos, row_pos.y, row_ok.y);
        let v2 = visible(kpos, row_pos.z, row_ok.z);
        let v3 = visible(kpos, row_pos.w, row_ok.w);
        let rb = 16u * ty + (tx >> 2u);
        let rc = tx & 3u;
        red[rb][rc] = masked_max(s0, v0);
        red[rb + 4u][rc] = masked_max(s1, v1);
        red[rb + 8u][rc] = masked_max(s2, v2);
        red[rb + 12u][rc] = masked_max(s3, v3);
        workgroupBarrier();
        let r = 4u * ty;
        let m_new = max(m, vec4<f32>(row_max(r), row_max(r + 1u), row_max(r + 2u), row_max(r + 3u)));
        let alpha = exp(m - m_new);
        m = m_new;
        l *= alpha;
        o0 = rows_scale(o0, alpha);
        if (NC > 1u) {
            o1 = rows_scale(o1, alpha);
        }
        if (NC > 2u) {
            o2 = rows_scale(o2, alpha);
        }
        if (NC > 3u) {
            o3 = rows_scale(o3, alpha);
        }
        let e0 = select(vec4<f32>(0.0), exp(s0 - vec4<f32>(m_new.x)), v0);
        let e1 = select(vec4<f32>(0.0), exp(s1 - vec4<f32>(m_new.y)), v1);
        let e2 = select(vec4<f32>(0.0), exp(s2 - vec4<f32>(m_new.z)), v2);
        let e3 = select(vec4<f32>(0.0), exp(s3 - vec4<f32>(m_new.w)), v3);
        // Keys 4tx .. + 3: the four rows' probabilities of each.
        let pb = 4u * tx * (BQ / 4u) + ty;
        ps[pb] = vec4<f32>(e0.x, e1.x, e2.x, e3.x);
        ps[pb + BQ / 4u] = vec4<f32>(e0.y, e1.y, e2.y, e3.y);
        ps[pb + 2u * (BQ / 4u)] = vec4<f32>(e0.z, e1.z, e2.z, e3.z);
        ps[pb + 3u * (BQ / 4u)] = vec4<f32>(e0.w, e1.w, e2.w, e3.w);
        // 3. O += P·V, a chunk of vc keys at a time (the first barrier
        // also makes ps visible).
        let nk = min(BK, kend - key0);
        var lsum = vec4<f32>(0.0);
        for (var kc = 0u; kc < nk; kc += vc) {
            let cnt = min(vc, nk - kc);
            workgroupBarrier();
            for (var x = lid; x < cnt * d4n; x += 128u) {
                let kk = x / d4n;
                stage[x] = v_cache[(key0 + kc + kk) * ks4 + ko4 + (x - kk * d4n)];
            }
            workgroupBarrier();
            for (var j = 0u; j < cnt; j++) {
                let pv = ps[(kc + j) * (BQ / 4u) + ty];
                lsum += pv;
                let vb = j * d4n + tx;
                o0 = rows_fma(o0, pv, stage[vb]);
                if (NC > 1u && tx + 16u < d4n) {
                    o1 = rows_fma(o1, pv, stage[vb + 16u]);
                }
                if (NC > 2u && tx + 32u < d4n) {
                    o2 = rows_fma(o2, pv, stage[vb + 32u]);
                }
                if (NC > 3u && tx + 48u < d4n) {
                    o3 = rows_fma(o3, pv, stage[vb + 48u]);
                }
            }
        }
        l += lsum;
    }
    let inv = select(vec4<f32>(0.0), 1.0 / l, l > vec4<f32>(0.0));
    if (row_ok.x) {
        store_row(row_tok.x, h, tx, d4n, inv.x, o0.r0, o1.r0, o2.r0, o3.r0);
    }
    if (row_ok.y) {
        store_row(row_tok.y, h, tx, d4n, inv.y, o0.r1, o1.r1, o2.r1, o3.r1);
    }
    if (row_ok.z) {
        store_row(row_tok.z, h, tx, d4n, inv.z, o0.r2, o1.r2, o2.r2, o3.r2);
    }
    if (row_ok.w) {
        store_row(row_tok.w, h, tx, d4n, inv.w, o0.r3, o1.r3, o2.r3, o3.r3);
    }
}
