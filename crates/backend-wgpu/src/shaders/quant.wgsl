// Dequantizing products and row lookups over raw GGUF block bytes.
//
// Weights arrive exactly as the GGUF file stores them, packed into a
// `array<u32>` (WGSL has no byte type), and are decoded here, four weights at
// a time, by `deq4`. `FORMAT` is the ggml type id (0 F32, 1 F16, 2 Q4_0, ...),
// fixed per pipeline with an `override` constant, so the `switch` in `deq4`
// folds to a single case when the pipeline is compiled.
//
// A row is addressed by its first byte; inside a row, weights come in chunks
// of 32 (every supported block size is a multiple of 32) and a chunk in 8
// groups of 4. The decoders follow ggml's `dequantize_row_<fmt>`
// (ggml-quants.c) element for element.

override FORMAT: u32 = 0u;

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> ids: array<u32>;

// ---- byte access ---------------------------------------------------------

fn ld8(o: u32) -> u32 {
    return (w[o >> 2u] >> ((o & 3u) * 8u)) & 0xffu;
}

// 16 bits at an even byte offset.
fn ld16(o: u32) -> u32 {
    return (w[o >> 2u] >> ((o & 2u) * 8u)) & 0xffffu;
}

// 32 bits at an even byte offset (blocks of 18, 22, 34, 110 or 210 bytes
// leave half of them 2 bytes off a word boundary).
fn ld32(o: u32) -> u32 {
    let i = o >> 2u;
    if ((o & 2u) == 0u) {
        return w[i];
    }
    return (w[i] >> 16u) | (w[i + 1u] << 16u);
}

fn f16at(o: u32) -> f32 {
    return unpack2x16float(ld16(o)).x;
}

fn lo4(v: u32) -> vec4<u32> {
    return bytes4(v) & vec4<u32>(0xfu);
}

fn hi4(v: u32) -> vec4<u32> {
    return bytes4(v) >> vec4<u32>(4u);
}

// kvalues_iq4nl (ggml-common.h)
var<private> KVALUES_IQ4NL: array<f32, 16> = array<f32, 16>(
    -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0,
    1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0);

fn iq4(q: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(KVALUES_IQ4NL[q.x], KVALUES_IQ4NL[q.y], KVALUES_IQ4NL[q.z], KVALUES_IQ4NL[q.w]);
}

// ggml's get_scale_min_k4: 6-bit scale and min `j` of a Q4_K/Q5_K block
// whose 12 packed scale bytes start at byte `s`.
fn scale_min_k4(s: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(ld8(s + j) & 63u), f32(ld8(s + j + 4u) & 63u));
    }
    let d = (ld8(s + j + 4u) & 0xfu) | ((ld8(s + j - 4u) >> 6u) << 4u);
    let m = (ld8(s + j + 4u) >> 4u) | ((ld8(s + j) >> 6u) << 4u);
    return vec2<f32>(f32(d), f32(m));
}

// ---- decoding --------------------------------------------------------------

// Weights 32·c + 4·g .. +3 of the row starting at byte `base`.
fn deq4(base: u32, c: u32, g: u32) -> vec4<f32> {
    switch FORMAT {
        case 0u: { // F32
            let i = (base >> 2u) + c * 32u + g * 4u;
            return vec4<f32>(bitcast<f32>(w[i]), bitcast<f32>(w[i + 1u]), bitcast<f32>(w[i + 2u]), bitcast<f32>(w[i + 3u]));
        }
        case 1u: { // F16
            let i = (base >> 2u) + c * 16u + g * 2u;
            return vec4<f32>(unpack2x16float(w[i]), unpack2x16float(w[i + 1u]));
        }
        case 30u: { // BF16: the high half of an f32
            let i = (base >> 2u) + c * 16u + g * 2u;
            let a = w[i];
            let b = w[i + 1u];
            return vec4<f32>(bitcast<f32>(a << 16u), bitcast<f32>(a & 0xffff0000u), bitcast<f32>(b << 16u), bitcast<f32>(b & 0xffff0000u));
        }
        case 2u: { // Q4_0: d·(q − 8)
            let b = base + c * 18u;
            let v = ld32(b + 2u + 4u * (g & 3u));
            var q = lo4(v);
            if (g >= 4u) { q = hi4(v); }
            return f16at(b) * (u2f(q) - 8.0);
        }
        case 3u: { // Q4_1: d·q + m
            let b = base + c * 20u;
            let v = w[(b + 4u + 4u * (g & 3u)) >> 2u];
            var q = lo4(v);
            if (g >= 4u) { q = hi4(v); }
            return f16at(b) * u2f(q) + f16at(b + 2u);
        }
        case 6u: { // Q5_0: d·(q − 16), fifth bit of weight i is bit i of qh
            let b = base + c * 22u;
            let qh = ld32(b + 2u);
            let v = ld32(b + 6u + 4u * (g & 3u));
            var q = lo4(v);
            if (g >= 4u) { q = hi4(v); }
            let h = ((vec4<u32>(qh) >> (vec4<u32>(4u * g) + vec4<u32>(0u, 1u, 2u, 3u))) & vec4<u32>(1u)) << vec4<u32>(4u);
            return f16at(b) * (u2f(q | h) - 16.0);
        }
        case 7u: { // Q5_1: d·q + m
            let b = base + c * 24u;
            let qh = w[(b + 4u) >> 2u];
            let v = w[(b + 8u + 4u * (g & 3u)) >> 2u];
            var q = lo4(v);
            if (g >= 4u) { q = hi4(v); }
            let h = ((vec4<u32>(qh) >> (vec4<u32>(4u * g) + vec4<u32>(0u, 1u, 2u, 3u))) & vec4<u32>(1u)) << vec4<u32>(4u);
            return f16at(b) * u2f(q | h) + f16at(b + 2u);
        }
        case 8u: { // Q8_0: d·q
            let b = base + c * 34u;
            return f16at(b) * sext8(bytes4(ld32(b + 2u + 4u * g)));
        }
        case 20u: { // IQ4_NL: d·kvalues[q]
            let b = base + c * 18u;
            let v = ld32(b + 2u + 4u * (g & 3u));
            var q = lo4(v);
            if (g >= 4u) { q = hi4(v); }
            return f16at(b) * iq4(q);
        }
        case 10u: { // Q2_K: dl·q − ml with 4-bit scale and min per 16 weights
            let b = base + (c >> 3u) * 84u;
            let n = (c & 7u) >> 2u;
            let j = c & 3u;
            let sc = ld8(b + n * 8u + j * 2u + (g >> 2u));
            let q = (bytes4(w[(b + 16u + 32u * n + 4u * g) >> 2u]) >> vec4<u32>(2u * j)) & vec4<u32>(3u);
            let dl = f16at(b + 80u) * f32(sc & 0xfu);
            let ml = f16at(b + 82u) * f32(sc >> 4u);
            return dl * vec4<f32>(q) - ml;
        }
        case 11u: { // Q3_K: dl·(q − 4·!hbit), 6-bit signed scales per 16 weights
            let b = base + (c >> 3u) * 110u;
            let n = (c & 7u) >> 2u;
            let j = c & 3u;
            let s = n * 8u + j * 2u + (g >> 2u);
            var lo: u32;
            if (s < 8u) { lo = ld8(b + 96u + s) & 0xfu; } else { lo = ld8(b + 96u + s - 8u) >> 4u; }
            let hi = (ld8(b + 104u + (s & 3u)) >> (2u * (s >> 2u))) & 3u;
            let dl = f16at(b + 108u) * f32(i32(lo | (hi << 4u)) - 32);
            let q = (bytes4(ld32(b + 32u + 32u * n + 4u * g)) >> vec4<u32>(2u * j)) & vec4<u32>(3u);
            let hm = (bytes4(ld32(b + 4u * g)) >> vec4<u32>(4u * n + j)) & vec4<u32>(1u);
            return dl * (vec4<f32>(q) - 4.0 * (1.0 - vec4<f32>(hm)));
        }
        case 12u: { // Q4_K: d·sc·q − dmin·m, 6-bit scale and min per 32 weights
            // Word loads only: d and dmin, then the 12 scale bytes as three
            // words (get_scale_min_k4 on bytes j, j + 4 and j + 8 of them).
            let b = (base + (c >> 3u) * 144u) >> 2u;
            let s = c & 7u;
            let dm = unpack2x16float(w[b]);
            let sh = 8u * (s & 3u);
            let b0 = (w[b + 1u] >> sh) & 0xffu;
            let b1 = (w[b + 2u] >> sh) & 0xffu;
            var sc: u32;
            var mn: u32;
            if (s < 4u) {
                sc = b0 & 63u;
                mn = b1 & 63u;
            } else {
                let b2 = (w[b + 3u] >> sh) & 0xffu;
                sc = (b2 & 0xfu) | ((b0 >> 6u) << 4u);
                mn = (b2 >> 4u) | ((b1 >> 6u) << 4u);
            }
            let v = w[b + 4u + 8u * (s >> 1u) + g];
            let q = (bytes4(v) >> vec4<u32>(4u * (s & 1u))) & vec4<u32>(0xfu);
            return (dm.x * u2f1(sc)) * u2f(q) - dm.y * u2f1(mn);
        }
        case 13u: { // Q5_K: as Q4_K with a fifth bit from qh
            let b = base + (c >> 3u) * 176u;
            let s = c & 7u;
            let sm = scale_min_k4(b + 4u, s);
            let v = w[(b + 48u + 32u * (s >> 1u) + 4u * g) >> 2u];
            var q = lo4(v);
            if ((s & 1u) != 0u) { q = hi4(v); }
            let h = (bytes4(w[(b + 16u + 4u * g) >> 2u]) >> vec4<u32>(s)) & vec4<u32>(1u);
            let d1 = f16at(b) * sm.x;
            let m1 = f16at(b + 2u) * sm.y;
            return d1 * u2f(q + (h << vec4<u32>(4u))) - m1;
        }
        case 14u: { // Q6_K: d·sc·(q − 32), 8-bit signed scales per 16 weights
            let b = base + (c >> 3u) * 210u;
            let h = (c & 7u) >> 2u;
            let k = c & 3u;
            let v = ld32(b + 64u * h + 32u * (k & 1u) + 4u * g);
            var q = lo4(v);
            if (k >= 2u) { q = hi4(v); }
            let qh = (bytes4(ld32(b + 128u + 32u * h + 4u * g)) >> vec4<u32>(2u * k)) & vec4<u32>(3u);
            let sc = sext8(vec4<u32>(ld8(b + 192u + 8u * h + (g >> 2u) + 2u * k))).x;
            let d = f16at(b + 208u);
            return d * sc * (u2f(q | (qh << vec4<u32>(4u))) - 32.0);
        }
        case 23u: { // IQ4_XS: dl·kvalues[q], 6-bit scale per 32 weights
            let b = base + (c >> 3u) * 136u;
            let ib = c & 7u;
            let sl = (ld8(b + 4u + (ib >> 1u)) >> (4u * (ib & 1u))) & 0xfu;
            let sh = (ld16(b + 2u) >> (2u * ib)) & 3u;
            let dl = f16at(b) * f32(i32(sl | (sh << 4u)) - 32);
            let v = w[(b + 8u + 16u * ib + 4u * (g & 3u)) >> 2u];
            var q = lo4(v);
            if (g >= 4u) { q = hi4(v); }
            return dl * iq4(q);
        }
        default: {
            return vec4<f32>(0.0);
        }
    }
}

// ---- matrix-vector product: 256 / MV_LANES rows per workgroup --------------------

// Each row is taken by MV_LANES invocations (consecutive ones on consecutive
// words, coalesced: Q6_K sixteen weights per unit, Q4_K eight, others four),
// and a workgroup holds 256 / MV_LANES rows that share the activation vector
// in cache. (One 64-invocation workgroup per row, decoding per 4 weights,
// ran Q4_K at ~340 GB/s on an H100.)
override MV_LANES: u32 = 64u;
var<workgroup> partial: array<f32, 256>;

// Weights 4u .. 4u + 3 of the row at byte `base` · x.
fn unit_dot(base: u32, u: u32, xb: u32, tok: u32) -> f32 {
    return dot(deq4(base, u >> 3u, u & 7u), xv(xb + u));
}

// Q4_K's 6-bit scale and min of sub-block `s` (get_scale_min_k4) for the
// super-block at word `b`, from the three words of packed scales.
fn q4k_scale_min(b: u32, s: u32) -> vec2<f32> {
    let sh = 8u * (s & 3u);
    let b0 = (w[b + 1u] >> sh) & 0xffu;
    let b1 = (w[b + 2u] >> sh) & 0xffu;
    if (s < 4u) {
        return vec2<f32>(f32(b0 & 63u), f32(b1 & 63u));
    }
    let b2 = (w[b + 3u] >> sh) & 0xffu;
    return vec2<f32>(f32((b2 & 0xfu) | ((b0 >> 6u) << 4u)), f32((b2 >> 4u) | ((b1 >> 6u) << 4u)));
}

// Q4_K, eight weights from one word of quants: unit `u` is word g = u % 8 of
// sub-block pair i = (u / 8) % 4 of super-block u / 32 — weights 4g.. +3 of
// sub-blocks 2i (low nibbles) and 2i + 1 (high nibbles), each dequantized
// exactly as deq4 does — dotted with their activations at x[xb ..].
fn q4k_unit8_dot(base: u32, u: u32, xb: u32) -> f32 {
    let sb = u >> 5u;
    let i = (u >> 3u) & 3u;
    let g = u & 7u;
    let b = (base >> 2u) + sb * 36u;
    let dm = unpack2x16float(w[b]);
    let v = bytes4(w[b + 4u + 8u * i + g]);
    let sm0 = q4k_scale_min(b, 2u * i);
    let sm1 = q4k_scale_min(b, 2u * i + 1u);
    let w0 = (dm.x * sm0.x) * u2f(v & vec4<u32>(0xfu)) - dm.y * sm0.y;
    let w1 = (dm.x * sm1.x) * u2f(v >> vec4<u32>(4u)) - dm.y * sm1.y;
    let c0 = sb * 8u + 2u * i;
    return dot(w0, xv(xb + c0 * 8u + g)) + dot(w1, xv(xb + (c0 + 1u) * 8u + g));
}

// Q6_K, sixteen weights from one word of high bits: unit `u` is group
// g = u % 8 of half n = (u / 8) % 2 of super-block u / 16 — with l = 4g,
// weights l.. +3, l + 32.., l + 64.. and l + 96.. of the half
// (dequantize_row_q6_K's q1..q4), which share that qh word and two ql
// words — as d·Σ sc·(q − 32)·x, dotted with their activations at x[xb ..].
fn q6k_unit16_dot(base: u32, u: u32, xb: u32) -> f32 {
    let sb = u >> 4u;
    let n = (u >> 3u) & 1u;
    let g = u & 7u;
    let b = base + sb * 210u;
    let ql0 = bytes4(ld32(b + 64u * n + 4u * g));
    let ql1 = bytes4(ld32(b + 64u * n + 32u + 4u * g));
    let qh = bytes4(ld32(b + 128u + 32u * n + 4u * g));
    let so = b + 192u + 8u * n + (g >> 2u);
    let xi = xb + sb * 64u + 32u * n + g;
    let m4 = vec4<u32>(0xfu);
    let m2 = vec4<u32>(3u);
    let q1 = (ql0 & m4) | ((qh & m2) << vec4<u32>(4u));
    let q2 = (ql1 & m4) | (((qh >> vec4<u32>(2u)) & m2) << vec4<u32>(4u));
    let q3 = (ql0 >> vec4<u32>(4u)) | (((qh >> vec4<u32>(4u)) & m2) << vec4<u32>(4u));
    let q4 = (ql1 >> vec4<u32>(4u)) | ((qh >> vec4<u32>(6u)) << vec4<u32>(4u));
    let sc = sext8(vec4<u32>(ld8(so), ld8(so + 2u), ld8(so + 4u), ld8(so + 6u)));
    let s = vec4<f32>(
        dot(u2f(q1) - 32.0, xv(xi)),
        dot(u2f(q2) - 32.0, xv(xi + 8u)),
        dot(u2f(q3) - 32.0, xv(xi + 16u)),
        dot(u2f(q4) - 32.0, xv(xi + 24u)));
    return f16at(b + 208u) * dot(sc, s);
}

// Weights per unit of the K-quant matvec: Q6_K 16, Q4_K 8.
fn wide_unit_len() -> u32 {
    if (FORMAT == 14u) {
        return 16u;
    }
    return 8u;
}

// Unit `u` of the row at byte `base` · x: q6k_unit16_dot or q4k_unit8_dot.
fn wide_unit_dot(base: u32, u: u32, xb: u32) -> f32 {
    if (FORMAT == 14u) {
        return q6k_unit16_dot(base, u, xb);
    }
    return q4k_unit8_dot(base, u, xb);
}

// y[tok, row] (+)= W[row, :] · x[tok, :]. Grid: (groups of 256 / MV_LANES rows
// split over x and y, tokens).
@compute @workgroup_size(256)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let lane = lid % MV_LANES;
    let row = (wid.x + wid.y * nwg.x) * (256u / MV_LANES) + lid / MV_LANES;
    let tok = wid.z;
    let live = row < p.m;
    let base = row * p.row_bytes;
    let xb = tok * (p.x_stride >> 2u);
    var acc = 0.0;
    if (live) {
        if (FORMAT == 12u || FORMAT == 14u) {
            // Q4_K eight weights per word of quants, Q6_K sixteen per word of
            // high bits: each word loaded once and its scales decoded once
            // for all its weights (consecutive invocations, consecutive words).
            let units = p.k / wide_unit_len();
            let l = MV_LANES;
            var u = lane;
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
            // Others: consecutive invocations take consecutive groups of 4
            // weights (coalesced loads), four per iteration (loads in flight).
            let units = p.k >> 2u;
            let l = MV_LANES;
            var u = lane;
            var a = vec4<f32>(0.0);
            for (; u + 3u * l < units; u += 4u * l) {
                a.x += unit_dot(base, u, xb, tok);
                a.y += unit_dot(base, u + l, xb, tok);
                a.z += unit_dot(base, u + 2u * l, xb, tok);
                a.w += unit_dot(base, u + 3u * l, xb, tok);
            }
            for (; u < units; u += l) {
                a.x += unit_dot(base, u, xb, tok);
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
        store(tok, row, partial[lid]);
    }
}

// ---- matrix-matrix product: 64 rows × 64 tokens per workgroup --------------

const TM: u32 = 64u;
const TN: u32 = 64u;
// Row r's group g of the current chunk lies at r·TS + g: a stride of 9
// vec4s, not 8, so that the 16 rows read together (tx) fall in distinct
// shared-memory banks (with 8, every one hit the same four banks; on an
// H100 pp512 went from 2,495 to 3,636 t/s).
const TS: u32 = 9u;
var<workgroup> w_tile: array<vec4<f32>, 576>; // TM rows × 8 groups (+1 pad)
var<workgroup> x_tile: array<vec4<f32>, 576>; // TN tokens × 8 groups (+1 pad)

// The batch products' gathered mode (mm_fast.wgsl, mm_coop.wgsl): a
// mixture of experts' grouped product (moe.wgsl), llama.cpp's mul_mat_id.
// Workgroup z is an expert e; the tile's tokens are the (token, slot) pairs
// j routed to it, listed by moe.wgsl's `moe_bucket` in `ids` (binding 5):
// at float e · (n_tokens + 1) their count, then the pairs in increasing
// order (floats, exact below 2^24). Pair j reads row j / p.x_base of x and
// writes row j of y; the weights are expert e's rows, e · p.corr_base bytes
// into w (moe.wgsl's MatParams). 0: a plain batch; 1: gathered; 2:
// gathered, with silu(gate)·up as the activations (the gate values in a
// row of x, the up values p.aux_base vec4s after them: moe.wgsl's PROLOGUE
// 2), made as they load.
override MM_GATHER: u32 = 0u;
// The gathered tile's expert: its rows' first byte in w, the float index
// of its first listed pair in ids, and how many pairs it has (set by
// mm_group; unread in a plain batch).
var<private> mm_w_base: u32;
var<private> mm_list: u32;
var<private> mm_count: u32;
// The count as one invocation read it, for every invocation through
// workgroupUniformLoad: mm_coop's cooperative-matrix operations must not
// follow a return that the shader's uniformity analysis cannot prove
// uniform, and to it a helper's arguments never are.
var<workgroup> mm_count_wg: u32;

// The tile's tokens: a plain batch's, or the pairs expert e has (set up
// for invocation lid; every invocation gets the same value). Workgroups
// whose first token is at or past it return at once (gathered: the
// expert's later tiles). Called in uniform control flow.
fn mm_group(e: u32, lid: u32) -> u32 {
    if (MM_GATHER == 0u) {
        return step.n_tokens;
    }
    let at = e * (step.n_tokens + 1u);
    if (lid == 0u) {
        mm_count_wg = u32(bitcast<f32>(ids[at]));
    }
    let n = workgroupUniformLoad(&mm_count_wg);
    mm_count = n;
    mm_list = at + 1u;
    mm_w_base = e * p.corr_base;
    return n;
}

// The output row of the tile's token t (below mm_group's count): t itself,
// or the pair listed at t.
fn mm_pair(t: u32) -> u32 {
    if (MM_GATHER == 0u) {
        return t;
    }
    return u32(bitcast<f32>(ids[mm_list + t]));
}

// The first byte of the weights' rows: 0, or the expert's.
fn mm_w0() -> u32 {
    return select(0u, mm_w_base, MM_GATHER != 0u);
}

// Group g of chunk c of row r (zeros past the last row).
fn mm_load_w(r: u32, c: u32, g: u32) -> vec4<f32> {
    if (r < p.m) {
        return deq4(mm_w0() + r * p.row_bytes, c, g);
    }
    return vec4<f32>(0.0);
}

// Group g of chunk c of token t's activations (zeros past the batch). In
// the gathered mode t indexes the expert's list, whose count bounds it
// (n_tok, the batch, may be larger), and MM_GATHER's prologue makes them.
fn mm_load_x(t: u32, n_tok: u32, xs: u32, c: u32, g: u32) -> vec4<f32> {
    if (MM_GATHER != 0u) {
        if (t >= mm_count) {
            return vec4<f32>(0.0);
        }
        let i = (mm_pair(t) / p.x_base) * xs + c * 8u + g;
        let v = x[i];
        if (MM_GATHER == 2u) {
            return v / (1.0 + exp(-v)) * x[i + p.aux_base];
        }
        return v;
    }
    if (t < n_tok) {
        return x[t * xs + c * 8u + g];
    }
    return vec4<f32>(0.0);
}

// What invocation lid stages of chunk c (two rows' and two tokens' group
// lid % 8), loaded a chunk ahead of its use.
struct MmStage {
    w0: vec4<f32>,
    w1: vec4<f32>,
    x0: vec4<f32>,
    x1: vec4<f32>,
}

fn mm_fetch(row0: u32, tok0: u32, lid: u32, c: u32) -> MmStage {
    let r0 = lid >> 3u;
    let g0 = lid & 7u;
    let xs = p.x_stride >> 2u;
    let n_tok = step.n_tokens;
    return MmStage(mm_load_w(row0 + r0, c, g0), mm_load_w(row0 + r0 + 32u, c, g0),
                   mm_load_x(tok0 + r0, n_tok, xs, c, g0), mm_load_x(tok0 + r0 + 32u, n_tok, xs, c, g0));
}

fn mm_put(lid: u32, st: MmStage) {
    let r0 = lid >> 3u;
    let g0 = lid & 7u;
    w_tile[r0 * TS + g0] = st.w0;
    w_tile[(r0 + 32u) * TS + g0] = st.w1;
    x_tile[r0 * TS + g0] = st.x0;
    x_tile[(r0 + 32u) * TS + g0] = st.x1;
}

// acc[i] + a_i · b for four rows a_0..a_3 and one token b, a dot product of
// four then one add per output. (Chains of four fused multiply-adds per
// output ran pp512 3% faster on an H100 but moved the logits further from
// the CPU's: synth-Q5_K_M mean KLD 7.7e-4 against 4.5e-4, SmolLM2 3.8e-3
// against 3.5e-3.)
fn mac4(acc: vec4<f32>, a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    return acc + vec4<f32>(dot(a0, b), dot(a1, b), dot(a2, b), dot(a3, b));
}

// Y[tok, row] (+)= W[row, :] · X[tok, :] for step.n_tokens tokens.
// Grid: (ceil(m / 64), ceil(n_tokens / 64)). Each thread owns a 4×4 block
// of outputs, rows tx + 16·i and tokens ty + 16·j; the weights of one
// 32-wide chunk are decoded once into shared memory for all 64 tokens.
// Accumulators and staged loads are separate variables, not arrays indexed
// in loops (which a shader compiler may leave in local memory: on an H100
// pp512 went from 3,636 to 6,613 t/s).
// (On an H100, a 128×64 tile with 8×4 outputs per thread measured 1.6×
// slower, before the tiles were padded; after, a 64×128 tile with 4×8
// outputs per thread, with arrays: pp512 2,769 t/s against this one's 3,636.)
@compute @workgroup_size(256)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.x * TM;
    let tok0 = wid.y * TN;
    let n_tok = step.n_tokens;
    let tx = lid & 15u;
    let ty = lid >> 4u;
    // acc_j[i]: token ty + 16j, row tx + 16i.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let chunks = p.k >> 5u;
    // Software pipelining: chunk c + 1's weights and activations are loaded
    // into registers while chunk c is multiplied out of shared memory.
    var st = mm_fetch(row0, tok0, lid, 0u);
    for (var c = 0u; c < chunks; c++) {
        mm_put(lid, st);
        workgroupBarrier();
        if (c + 1u < chunks) {
            st = mm_fetch(row0, tok0, lid, c + 1u);
        }
        for (var g = 0u; g < 8u; g++) {
            let a0 = w_tile[(tx) * TS + g];
            let a1 = w_tile[(tx + 16u) * TS + g];
            let a2 = w_tile[(tx + 32u) * TS + g];
            let a3 = w_tile[(tx + 48u) * TS + g];
            acc0 = mac4(acc0, a0, a1, a2, a3, x_tile[(ty) * TS + g]);
            acc1 = mac4(acc1, a0, a1, a2, a3, x_tile[(ty + 16u) * TS + g]);
            acc2 = mac4(acc2, a0, a1, a2, a3, x_tile[(ty + 32u) * TS + g]);
            acc3 = mac4(acc3, a0, a1, a2, a3, x_tile[(ty + 48u) * TS + g]);
        }
        workgroupBarrier();
    }
    mm_store(tok0 + ty, row0 + tx, n_tok, acc0);
    mm_store(tok0 + ty + 16u, row0 + tx, n_tok, acc1);
    mm_store(tok0 + ty + 32u, row0 + tx, n_tok, acc2);
    mm_store(tok0 + ty + 48u, row0 + tx, n_tok, acc3);
}

// Outputs of token `tok` for rows row + 16·i (those inside the batch and
// matrix; gathered, tok indexes the expert's list and the outputs go to its
// pair's row).
fn mm_store(tok: u32, row: u32, n_tok: u32, v: vec4<f32>) {
    if (tok < n_tok) {
        let t = mm_pair(tok);
        for (var i = 0u; i < 4u; i++) {
            if (row + 16u * i < p.m) {
                store(t, row + 16u * i, v[i]);
            }
        }
    }
}

// ---- embedding lookup --------------------------------------------------------

// y[tok, :] = row ids[tok] of W times p.eps (1: the row; else a scaled
// embedding, Gemma's, with ggml_scale's one rounded product), for tokens
// whose row lies in this part (rows y_base.. of the whole matrix; y_base
// is a row index here). Grid: (1, 1, n_tokens).
@compute @workgroup_size(256)
fn get_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tok = wid.z;
    let id = ids[tok];
    if (id < p.y_base || id >= p.y_base + p.m) {
        return;
    }
    let base = (id - p.y_base) * p.row_bytes;
    let o = tok * p.y_stride;
    for (var u = lid; u < (p.k >> 2u); u += 256u) {
        let v = deq4(base, u >> 3u, u & 7u) * p.eps;
        y[o + 4u * u] = v.x;
        y[o + 4u * u + 1u] = v.y;
        y[o + 4u * u + 2u] = v.z;
        y[o + 4u * u + 3u] = v.w;
    }
}

// ---- exact products: ggml's integer block sums and float order ------------
//
// For weights whose activations ggml quantizes to Q8_0/Q8_1 (Q4_0 Q4_1 Q5_0
// Q5_1 Q8_0 IQ4_NL), x holds them as act_quant.wgsl's PACKED layout: signed
// byte quants (x_stride / 4 words per token) and per-block [d, s] from
// corr_base. Each block's integer products are summed exactly; the floats
// then follow llama.cpp's x86 (AVX2) CPU kernels step for step, so the
// result is the CPU's to the last bit:
//   ORDER 0, ggml_vec_dot_<fmt>_q8_<0|1> (and tinyBLAS, whose order is the
//     same): eight lanes, lane j summing elements 4j..4j+3 of each block,
//     acc_j = fma(d_w·d_a, Σ_j, acc_j) block after block, then hsum_float_8;
//     Q4_1/Q5_1 add Σ m_w·s_a (plain products, in block order) at the end.
//   ORDER 1, ggml_gemm/gemv_{q4_0,iq4_nl}_8x8_q8_0 (matrices llama.cpp
//     repacks: Q4_0 and IQ4_NL with a multiple of 8 rows):
//     acc = fma(Σ_block, d_w·d_a, acc) block after block.
// ORDER 0 gives each output eight invocations (one per lane), ORDER 1 one.
// QDOT_TOKENS outputs of consecutive tokens share a row within a workgroup
// (1 for a single token, 4 for batches, whose neighbouring workgroups then
// read the same weights).

override ORDER: u32 = 0u;
override QDOT_TOKENS: u32 = 1u;
var<workgroup> lanes: array<f32, 256>;

// The four weights of lane j (elements 4j..4j+3) of block c of the row at
// byte `base`, as signed bytes (Q4_1/Q5_1: unsigned, below 32).
fn qdot_wq(base: u32, c: u32, j: u32) -> u32 {
    let jj = j & 3u;
    let sh = 4u * (j >> 2u);
    switch FORMAT {
        case 2u: { // Q4_0: q − 8
            let q = (ld32(base + c * 18u + 2u + 4u * jj) >> sh) & 0x0f0f0f0fu;
            return ((q | 0x80808080u) - 0x08080808u) ^ 0x80808080u;
        }
        case 3u: { // Q4_1: q
            return (ld32(base + c * 20u + 4u + 4u * jj) >> sh) & 0x0f0f0f0fu;
        }
        case 6u: { // Q5_0: q − 16 with the fifth bit from qh
            let b = base + c * 22u;
            let h = (ld32(b + 2u) >> (4u * j)) & 0xfu;
            let hb = ((h & 1u) | ((h & 2u) << 7u) | ((h & 4u) << 14u) | ((h & 8u) << 21u)) << 4u;
            let q = ((ld32(b + 6u + 4u * jj) >> sh) & 0x0f0f0f0fu) | hb;
            return ((q | 0x80808080u) - 0x10101010u) ^ 0x80808080u;
        }
        case 7u: { // Q5_1
            let b = base + c * 24u;
            let h = (ld32(b + 4u) >> (4u * j)) & 0xfu;
            let hb = ((h & 1u) | ((h & 2u) << 7u) | ((h & 4u) << 14u) | ((h & 8u) << 21u)) << 4u;
            return ((ld32(b + 8u + 4u * jj) >> sh) & 0x0f0f0f0fu) | hb;
        }
        case 8u: { // Q8_0
            return ld32(base + c * 34u + 2u + 4u * j);
        }
        case 20u: { // IQ4_NL: kvalues_iq4nl[q]
            let q = bytes4(ld32(base + c * 18u + 2u + 4u * jj) >> sh) & vec4<u32>(0xfu);
            return pack4xI8(vec4<i32>(iq4(q)));
        }
        default: {
            return 0u;
        }
    }
}

// Bytes per block of the exact formats.
fn qdot_block_bytes() -> u32 {
    switch FORMAT {
        case 3u: { return 20u; }
        case 6u: { return 22u; }
        case 7u: { return 24u; }
        case 8u: { return 34u; }
        default: { return 18u; }
    }
}

// Word j of block c of token tok's packed activations.
fn qdot_xq(tok: u32, c: u32, j: u32) -> u32 {
    let i = tok * (p.x_stride >> 2u) + c * 8u + j;
    return bitcast<u32>(x[i >> 2u][i & 3u]);
}

// [d, s] of block c of token tok's activations.
fn qdot_xs(tok: u32, c: u32) -> vec2<f32> {
    let i = p.corr_base + 2u * (tok * (p.k >> 5u) + c);
    let v = x[i >> 2u];
    if ((i & 2u) == 0u) {
        return v.xy;
    }
    return v.zw;
}

// Grid: (ceil(tokens / QDOT_TOKENS), ceil(m / rows per workgroup), 1), rows
// per workgroup 256 / QDOT_TOKENS (ORDER 1) or 32 / QDOT_TOKENS (ORDER 0).
@compute @workgroup_size(256)
fn qdot(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var lane = 0u;
    var unit = lid;
    if (ORDER == 0u) {
        lane = lid & 7u;
        unit = lid >> 3u;
    }
    let units = select(256u, 32u, ORDER == 0u);
    let tok = wid.x * QDOT_TOKENS + unit % QDOT_TOKENS;
    let row = wid.y * (units / QDOT_TOKENS) + unit / QDOT_TOKENS;
    let live = row < p.m && tok < step.n_tokens;
    let nb = p.k >> 5u;
    let bb = qdot_block_bytes();
    let base = row * p.row_bytes;
    var acc = 0.0;
    var summs = 0.0;
    if (live) {
        for (var c = 0u; c < nb; c++) {
            let b = base + c * bb;
            let ds = qdot_xs(tok, c);
            let dd = f16at(b) * ds.x;
            if (ORDER == 0u) {
                let sum = dot4I8Packed(qdot_wq(base, c, lane), qdot_xq(tok, c, lane));
                acc = fma_rn(dd, f32(sum), acc);
                if (FORMAT == 3u || FORMAT == 7u) {
                    summs = summs + mul_rn(f16at(b + 2u), ds.y);
                }
            } else {
                var sum = 0;
                for (var j = 0u; j < 8u; j++) {
                    sum += dot4I8Packed(qdot_wq(base, c, j), qdot_xq(tok, c, j));
                }
                acc = fma_rn(f32(sum), dd, acc);
            }
        }
    }
    if (ORDER == 0u) {
        lanes[lid] = acc;
        workgroupBarrier();
        if (live && lane == 0u) {
            let r = hsum_float_8(vec4<f32>(lanes[lid], lanes[lid + 1u], lanes[lid + 2u], lanes[lid + 3u]),
                                 vec4<f32>(lanes[lid + 4u], lanes[lid + 5u], lanes[lid + 6u], lanes[lid + 7u]));
            store(tok, row, r + summs);
        }
    } else if (live) {
        store(tok, row, acc);
    }
}

// ---- exact K-quant products (Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_XS) ---------------
//
// Activations are act_quant.wgsl's packed Q8_K: signed byte quants, and per
// 32-element block [d, bsums] from corr_base (d: the super-block's f32
// scale; bsums: the sums of the block's two 16-element halves, two i16 in a
// u32). Integer sums are exact; the floats follow llama.cpp's x86 CPU
// kernels (tensor-core's gemm/kquant.rs states them):
//   ORDER 2, ggml_vec_dot_<fmt>_q8_K's AVX2 code (fewer than 8 tokens,
//     matrices not repacked): eight lanes, lane l holding the exact sums of
//     elements 32c + 4l .. +3 (c = 0..7) of each super-block;
//     acc_l = fma(d_w·d_a, Σ_l, acc_l), then hsum_float_8, each format's
//     mins term as its kernel lays it out.
//   ORDER 3, the tiled kernel (8+ tokens, not repacked): per super-block
//     res = fma(−dmin, s2, d·s1), acc = fma(res, d_a, acc), with s1 the
//     exact scale-weighted sum and s2 the mins' sum.
//   ORDER 4, ggml_gemm/gemv_q4_K_8x8_q8_K (Q4_K matrices with a multiple of
//     8 rows, which llama.cpp repacks): tokens below n − n % 4 take the
//     gemm (one step per 64 elements), the rest the gemv (one per
//     super-block): acc = fma(s, d·d_a, acc), acc_min = fma(m, dmin·d_a,
//     acc_min), result acc − acc_min.
// kdot (fewer than 8 tokens) gives every output 64 invocations; kmm (8 or
// more) tiles 64 rows × 64 tokens.

var<workgroup> kpart: array<vec2<i32>, 256>;
var<workgroup> kmins: array<f32, 256>;

// Elements per sub-block (one scale): 16 for Q2_K, Q3_K, Q6_K, else 32.
fn k_sub_len() -> u32 {
    if (FORMAT == 10u || FORMAT == 11u || FORMAT == 14u) {
        return 16u;
    }
    return 32u;
}

fn k_block_bytes() -> u32 {
    switch FORMAT {
        case 10u: { return 84u; }
        case 11u: { return 110u; }
        case 12u: { return 144u; }
        case 13u: { return 176u; }
        case 14u: { return 210u; }
        default: { return 136u; } // IQ4_XS
    }
}

// The quants of elements 4·u .. 4·u + 3 (u < 64) of the super-block at byte
// b, as four bytes: Q3_K and IQ4_XS signed, the others unsigned (Q6_K's
// without its offset −32, which ggml takes off through the bsums).
fn k_word(b: u32, u: u32) -> u32 {
    let c = u >> 3u;
    let l = u & 7u;
    switch FORMAT {
        case 10u: { // Q2_K: bits 2(c % 4) of qs[32(c / 4) + 4l ..]
            return (ld32(b + 16u + 32u * (c >> 2u) + 4u * l) >> (2u * (c & 3u))) & 0x03030303u;
        }
        case 11u: { // Q3_K: as Q2_K, minus 4 where bit c of hmask[4l ..] is clear
            let lo = (ld32(b + 32u + 32u * (c >> 2u) + 4u * l) >> (2u * (c & 3u))) & 0x03030303u;
            let hm = (ld32(b + 4u * l) >> c) & 0x01010101u;
            return (((lo | (hm << 2u)) | 0x80808080u) - 0x04040404u) ^ 0x80808080u;
        }
        case 12u: { // Q4_K: nibble c % 2 of qs[32(c / 2) + 4l ..]
            return (ld32(b + 16u + 32u * (c >> 1u) + 4u * l) >> (4u * (c & 1u))) & 0x0f0f0f0fu;
        }
        case 13u: { // Q5_K: as Q4_K, plus 16 where bit c of qh[4l ..] is set
            let lo = (ld32(b + 48u + 32u * (c >> 1u) + 4u * l) >> (4u * (c & 1u))) & 0x0f0f0f0fu;
            return lo | (((ld32(b + 16u + 4u * l) >> c) & 0x01010101u) << 4u);
        }
        case 14u: { // Q6_K: half h = c / 4, quarter j = c % 4 of it
            let h = c >> 2u;
            let j = c & 3u;
            let lo = (ld32(b + 64u * h + 32u * (j & 1u) + 4u * l) >> (4u * (j >> 1u))) & 0x0f0f0f0fu;
            let hi = (ld32(b + 128u + 32u * h + 4u * l) >> (2u * j)) & 0x03030303u;
            return lo | (hi << 4u);
        }
        default: { // IQ4_XS: nibbles (low for l < 4) of qs[16c + 4(l % 4) ..]
            let q = bytes4(ld32(b + 8u + 16u * c + 4u * (l & 3u)) >> (4u * (l >> 2u))) & vec4<u32>(0xfu);
            return pack4xI8(vec4<i32>(iq4(q)));
        }
    }
}

// Sub-block s's scale (signed where the format's are).
fn k_scale(b: u32, s: u32) -> i32 {
    switch FORMAT {
        case 10u: { return i32(ld8(b + s) & 0xfu); }
        case 11u: {
            let lo = (ld8(b + 96u + (s & 7u)) >> (4u * (s >> 3u))) & 0xfu;
            let hi = (ld8(b + 104u + (s & 3u)) >> (2u * (s >> 2u))) & 3u;
            return i32(lo | (hi << 4u)) - 32;
        }
        case 12u, 13u: { return i32(k_scale_min_k4(b + 4u, s).x); }
        case 14u: { return (i32(ld8(b + 192u + s)) << 24u) >> 24u; }
        default: {
            let lo = (ld8(b + 4u + (s >> 1u)) >> (4u * (s & 1u))) & 0xfu;
            let hi = (ld16(b + 2u) >> (2u * s)) & 3u;
            return i32(lo | (hi << 4u)) - 32;
        }
    }
}

// Sub-block s's min (Q2_K, Q4_K, Q5_K; 0 for the others).
fn k_min(b: u32, s: u32) -> i32 {
    switch FORMAT {
        case 10u: { return i32(ld8(b + s) >> 4u); }
        case 12u, 13u: { return i32(k_scale_min_k4(b + 4u, s).y); }
        default: { return 0; }
    }
}

// get_scale_min_k4 in integers: (scale, min) of sub-block j.
fn k_scale_min_k4(s: u32, j: u32) -> vec2<u32> {
    if (j < 4u) {
        return vec2<u32>(ld8(s + j) & 63u, ld8(s + j + 4u) & 63u);
    }
    let d = (ld8(s + j + 4u) & 0xfu) | ((ld8(s + j - 4u) >> 6u) << 4u);
    let m = (ld8(s + j + 4u) >> 4u) | ((ld8(s + j) >> 6u) << 4u);
    return vec2<u32>(d, m);
}

// The weight scales (d, dmin) of the super-block at byte b.
fn k_dmin(b: u32) -> vec2<f32> {
    switch FORMAT {
        case 10u: { return vec2<f32>(f16at(b + 80u), f16at(b + 82u)); }
        case 11u: { return vec2<f32>(f16at(b + 108u), 0.0); }
        case 12u, 13u: { return vec2<f32>(f16at(b), f16at(b + 2u)); }
        case 14u: { return vec2<f32>(f16at(b + 208u), 0.0); }
        default: { return vec2<f32>(f16at(b), 0.0); }
    }
}

// Word u (< 64) of super-block sb of token tok's packed activations.
fn k_xq(tok: u32, sb: u32, u: u32) -> u32 {
    let i = tok * (p.x_stride >> 2u) + sb * 64u + u;
    return bitcast<u32>(x[i >> 2u][i & 3u]);
}

// Float `i` of the activations' scales (from corr_base).
fn k_xs(i: u32) -> u32 {
    let j = p.corr_base + i;
    return bitcast<u32>(x[j >> 2u][j & 3u]);
}

// d of super-block sb of token tok's activations.
fn k_xd(tok: u32, sb: u32) -> f32 {
    return bitcast<f32>(k_xs(2u * (tok * (p.k >> 5u) + 8u * sb)));
}

// bsums[g] (the sum of elements 16g .. 16g + 15) of super-block sb.
fn k_bsum(tok: u32, sb: u32, g: u32) -> i32 {
    let v = k_xs(2u * (tok * (p.k >> 5u) + 8u * sb + (g >> 1u)) + 1u);
    return (i32(v << (16u * (1u - (g & 1u))))) >> 16u;
}

// The activation sum that sub-block s's min multiplies.
fn k_sub_bsum(tok: u32, sb: u32, s: u32) -> i32 {
    if (k_sub_len() == 16u) {
        return k_bsum(tok, sb, s);
    }
    return k_bsum(tok, sb, 2u * s) + k_bsum(tok, sb, 2u * s + 1u);
}

// Lane j's exact sums of super-block sb (at byte b) of token tok, as
// ggml_vec_dot_<fmt>_q8_K's AVX2 code holds them: (the lane's scale-weighted
// sum, its mins term).
fn k_lane_sums(b: u32, tok: u32, sb: u32, lane: u32) -> vec2<i32> {
    var sumi = 0;
    for (var c = 0u; c < 8u; c++) {
        let u = 8u * c + lane;
        var s = c;
        if (k_sub_len() == 16u) {
            s = 2u * c + (lane >> 2u);
        }
        sumi += k_scale(b, s) * dot4I8Packed(k_word(b, u), k_xq(tok, sb, u));
    }
    var extra = 0;
    if (FORMAT == 10u) {
        // Q2_K's mins lane: mins 2l, 2l + 1 · bsums 2l, 2l + 1.
        extra = k_min(b, 2u * lane) * k_bsum(tok, sb, 2u * lane)
            + k_min(b, 2u * lane + 1u) * k_bsum(tok, sb, 2u * lane + 1u);
    }
    if (FORMAT == 14u) {
        // Q6_K: lane l takes off 32·(sc 2l·bsums 2l + sc 2l+1·bsums 2l+1).
        sumi -= 32 * (k_scale(b, 2u * lane) * k_bsum(tok, sb, 2u * lane)
            + k_scale(b, 2u * lane + 1u) * k_bsum(tok, sb, 2u * lane + 1u));
    }
    if (FORMAT == 12u && lane < 4u) {
        // Q4_K: four lanes of mins, lane j: sub-blocks 2j, 2j + 1.
        extra = k_min(b, 2u * lane) * k_sub_bsum(tok, sb, 2u * lane)
            + k_min(b, 2u * lane + 1u) * k_sub_bsum(tok, sb, 2u * lane + 1u);
    }
    if (FORMAT == 13u && lane == 0u) {
        // Q5_K: one scalar over all eight sub-blocks.
        for (var s = 0u; s < 8u; s++) {
            extra += k_min(b, s) * k_sub_bsum(tok, sb, s);
        }
    }
    return vec2<i32>(sumi, extra);
}

// The exact sums of elements 32·piece .. + 31 of super-block sb (at byte b):
// (scale-weighted sum, mins sum; 0 where dmin is 0, as tensor-core skips it).
fn k_piece_sums(b: u32, tok: u32, sb: u32, piece: u32) -> vec2<i32> {
    let sl = k_sub_len();
    let words = sl >> 2u;
    let dmin = k_dmin(b).y;
    var r = vec2<i32>(0);
    for (var sub = (32u / sl) * piece; sub < (32u / sl) * (piece + 1u); sub++) {
        var d = 0;
        for (var j = 0u; j < words; j++) {
            let u = sub * words + j;
            d += dot4I8Packed(k_word(b, u), k_xq(tok, sb, u));
        }
        if (FORMAT == 14u) {
            d -= 32 * k_bsum(tok, sb, sub);
        }
        r.x += k_scale(b, sub) * d;
        if ((FORMAT == 10u || FORMAT == 12u || FORMAT == 13u) && dmin != 0.0) {
            r.y += k_min(b, sub) * k_sub_bsum(tok, sb, sub);
        }
    }
    return r;
}

// Lane `lane`'s float steps (ORDER 2) for super-block sb (at byte b), whose
// exact sums k_lane_sums gave: ls.
fn k_lane_step(acc: ptr<function, f32>, acc2: ptr<function, f32>, ls: vec2<i32>, b: u32,
               tok: u32, sb: u32, lane: u32) {
    let dy = k_xd(tok, sb);
    let dm = k_dmin(b);
    let ndmin = -mul_rn(dy, dm.y);
    if (FORMAT == 10u) {
        *acc = fma_rn(ndmin, f32(ls.y), *acc);
    }
    if ((FORMAT == 12u && lane < 4u) || (FORMAT == 13u && lane == 0u)) {
        *acc2 = fma_rn(ndmin, f32(ls.y), *acc2);
    }
    *acc = fma_rn(mul_rn(dy, dm.x), i2f_rn(ls.x), *acc);
}

// One float step of ORDER 3 or 4 with exact sums s (scale-weighted) and m
// (mins), on (acc, acc_min): the tiled kernel's res = fma(−dmin, m, d·s),
// acc = fma(res, d_a, acc); the repacked Q4_K's acc = fma(s, d·d_a, acc),
// acc_min = fma(m, dmin·d_a, acc_min) (per 64 elements in the gemm, per
// super-block in the gemv).
fn k_fstep(acc: vec2<f32>, s: i32, m: i32, d: f32, dmin: f32, dy: f32) -> vec2<f32> {
    if (ORDER == 3u) {
        let res = fma_rn(-dmin, i2f_rn(m), mul_rn(d, i2f_rn(s)));
        return vec2<f32>(fma_rn(res, dy, acc.x), acc.y);
    }
    return vec2<f32>(fma_rn(i2f_rn(s), mul_rn(d, dy), acc.x), fma_rn(i2f_rn(m), mul_rn(dmin, dy), acc.y));
}

// The output's float steps (ORDER 3, 4) for super-block sb (at byte b), with
// its exact per-quarter sums s and mins m (the gemv and the tiled kernel
// only use their totals).
fn k_sb_step(acc: ptr<function, f32>, acc2: ptr<function, f32>, s: vec4<i32>, m: vec4<i32>,
             b: u32, tok: u32, sb: u32, gemm: bool) {
    let dy = k_xd(tok, sb);
    let dm = k_dmin(b);
    var a = vec2<f32>(*acc, *acc2);
    if (ORDER == 4u && gemm) {
        for (var q = 0u; q < 4u; q++) {
            a = k_fstep(a, s[q], m[q], dm.x, dm.y, dy);
        }
    } else {
        a = k_fstep(a, (s.x + s.y) + (s.z + s.w), (m.x + m.y) + (m.z + m.w), dm.x, dm.y, dy);
    }
    *acc = a.x;
    *acc2 = a.y;
}

// Grid: (ceil(tokens / QDOT_TOKENS), ceil(m / (4 / QDOT_TOKENS)), 1): 64
// invocations per output. Super-blocks are taken eight at a time: invocation
// v of an output computes the exact sums of super-block r + v / 8 (ORDER 2:
// lane v % 8's; ORDER 3, 4: elements 32(v % 8) .. + 31), then the first
// eight (ORDER 2: one per lane) or the first (3, 4) take the float steps of
// the eight super-blocks in order.
@compute @workgroup_size(256)
fn kdot(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let v = lid & 63u;
    let unit = lid >> 6u;
    let slot = v >> 3u;
    let lane = v & 7u;
    let tok = wid.x * QDOT_TOKENS + unit % QDOT_TOKENS;
    let row = wid.y * (4u / QDOT_TOKENS) + unit / QDOT_TOKENS;
    let live = row < p.m && tok < step.n_tokens;
    let nsb = p.k >> 8u;
    let bb = k_block_bytes();
    let base = row * p.row_bytes;
    let gemm = ORDER == 4u && tok < step.n_tokens - step.n_tokens % 4u;
    var acc = 0.0;
    var acc2 = 0.0; // ORDER 2: Q4_K's mins lanes, Q5_K's summs; 3, 4: acc_min
    for (var r = 0u; r < nsb; r += 8u) {
        let sb = r + slot;
        var sums = vec2<i32>(0);
        if (live && sb < nsb) {
            let b = base + sb * bb;
            if (ORDER == 2u) {
                sums = k_lane_sums(b, tok, sb, lane);
            } else {
                sums = k_piece_sums(b, tok, sb, lane);
            }
        }
        kpart[lid] = sums;
        workgroupBarrier();
        if (live && ORDER == 2u && slot == 0u) {
            for (var j = 0u; j < 8u && r + j < nsb; j++) {
                let sb = r + j;
                k_lane_step(&acc, &acc2, kpart[lid + 8u * j], base + sb * bb, tok, sb, lane);
            }
        }
        if (live && ORDER != 2u && v == 0u) {
            for (var j = 0u; j < 8u && r + j < nsb; j++) {
                let sb = r + j;
                var s = vec4<i32>(0);
                var m = vec4<i32>(0);
                for (var q = 0u; q < 4u; q++) {
                    let a = kpart[lid + 8u * j + 2u * q];
                    let c = kpart[lid + 8u * j + 2u * q + 1u];
                    s[q] = a.x + c.x;
                    m[q] = a.y + c.y;
                }
                k_sb_step(&acc, &acc2, s, m, base + sb * bb, tok, sb, gemm);
            }
        }
        workgroupBarrier();
    }
    if (ORDER == 2u) {
        lanes[lid] = acc;
        kmins[lid] = acc2;
        workgroupBarrier();
        if (live && v == 0u) {
            let r = hsum_float_8(vec4<f32>(lanes[lid], lanes[lid + 1u], lanes[lid + 2u], lanes[lid + 3u]),
                                 vec4<f32>(lanes[lid + 4u], lanes[lid + 5u], lanes[lid + 6u], lanes[lid + 7u]));
            var res = r;
            if (FORMAT == 12u) {
                // Q4_K's four mins lanes: (m0 + m2) + (m1 + m3).
                res = res + ((kmins[lid] + kmins[lid + 2u]) + (kmins[lid + 1u] + kmins[lid + 3u]));
            }
            if (FORMAT == 13u) {
                res = res + acc2;
            }
            store(tok, row, res);
        }
    } else if (live && v == 0u) {
        store(tok, row, acc - acc2);
    }
}

// ---- exact K-quant products for batches: 64 rows × 64 tokens per workgroup ----
//
// ORDER 3 and 4 as kdot computes them, with the integer work tiled: each
// 64-element chunk's quants (16 words per row and per token) are staged in
// workgroup memory, and each invocation sums a 4 × 4 block of outputs (rows
// tx + 16i, tokens ty + 16j) sub-block by sub-block with dot4I8Packed. The
// exact sums then take the float steps of the order per chunk (the Q4_K
// gemm) or per super-block (the tiled kernel, the Q4_K gemv).

const KWS: u32 = 17u; // words per row in the tiles: 16, plus 1 against bank conflicts
var<workgroup> kw_tile: array<u32, 1088>;
var<workgroup> kx_tile: array<u32, 1088>;
var<workgroup> kw_sc: array<vec4<i32>, 64>; // the chunk's sub-block scales, per row
var<workgroup> kw_mn: array<vec4<i32>, 64>; // and mins
var<workgroup> kw_d: array<vec2<f32>, 64>;  // the super-block's d, dmin, per row
var<workgroup> kx_bs: array<vec4<i32>, 64>; // the chunk's four bsums, per token
var<workgroup> kx_d: array<f32, 64>;        // the super-block's d, per token

fn dot4v(a: vec4<u32>, b: u32) -> vec4<i32> {
    return vec4<i32>(dot4I8Packed(a.x, b), dot4I8Packed(a.y, b), dot4I8Packed(a.z, b), dot4I8Packed(a.w, b));
}

fn i2f4(a: vec4<i32>) -> vec4<f32> {
    return vec4<f32>(i2f_rn(a.x), i2f_rn(a.y), i2f_rn(a.z), i2f_rn(a.w));
}

fn fma4(a: vec4<f32>, b: vec4<f32>, c: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(fma_rn(a.x, b.x, c.x), fma_rn(a.y, b.y, c.y), fma_rn(a.z, b.z, c.z), fma_rn(a.w, b.w, c.w));
}

fn mul4(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(mul_rn(a.x, b.x), mul_rn(a.y, b.y), mul_rn(a.z, b.z), mul_rn(a.w, b.w));
}

// One token's four outputs after a chunk: s and m are the exact sums since
// the last float step; `last`: the chunk ends a super-block. Returns the new
// (acc, acc_min) and whether the sums were consumed.
struct KStep {
    acc: vec4<f32>,
    acc2: vec4<f32>,
    used: bool,
}

// k_fstep for four outputs at once, on vectors: kept vectorised because
// a per-component loop over k_fstep measured pp512 4,264 against 5,397 t/s
// (TinyLlama-shaped Q4_K_M, H100).
fn kmm_step(acc: vec4<f32>, acc2: vec4<f32>, s: vec4<i32>, m: vec4<i32>, d: vec4<f32>,
            dmin: vec4<f32>, dy: f32, gemm: bool, last: bool) -> KStep {
    let dyv = vec4<f32>(dy);
    if (!(ORDER == 4u && gemm) && !last) {
        return KStep(acc, acc2, false);
    }
    if (ORDER == 3u) {
        let res = fma4(-dmin, i2f4(m), mul4(d, i2f4(s)));
        return KStep(fma4(res, dyv, acc), acc2, true);
    }
    return KStep(fma4(i2f4(s), mul4(d, dyv), acc), fma4(i2f4(m), mul4(dmin, dyv), acc2), true);
}

// Grid: (ceil(tokens / 64), ceil(m / 64), 1).
@compute @workgroup_size(256)
fn kmm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tok0 = wid.x * 64u;
    let row0 = wid.y * 64u;
    let n_tok = step.n_tokens;
    let tx = lid & 15u;
    let ty = lid >> 4u;
    let nsb = p.k >> 8u;
    let bb = k_block_bytes();
    let sl = k_sub_len();
    let wps = sl >> 2u;          // words per sub-block
    let spc = 64u / sl;          // sub-blocks per chunk
    let n_gemm = n_tok - n_tok % 4u;
    // Loading: invocation lid stages row (token) lid / 4, words 4·(lid % 4) ..
    let lr = lid >> 2u;
    let lw = 4u * (lid & 3u);
    let lrow = row0 + lr;
    let ltok = tok0 + lr;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var am0 = vec4<f32>(0.0);
    var am1 = vec4<f32>(0.0);
    var am2 = vec4<f32>(0.0);
    var am3 = vec4<f32>(0.0);
    var s0 = vec4<i32>(0);
    var s1 = vec4<i32>(0);
    var s2 = vec4<i32>(0);
    var s3 = vec4<i32>(0);
    var m0 = vec4<i32>(0);
    var m1 = vec4<i32>(0);
    var m2 = vec4<i32>(0);
    var m3 = vec4<i32>(0);
    for (var ch = 0u; ch < 4u * nsb; ch++) {
        let sb = ch >> 2u;
        let q = ch & 3u;
        if (lrow < p.m) {
            let b = lrow * p.row_bytes + sb * bb;
            for (var i = 0u; i < 4u; i++) {
                kw_tile[lr * KWS + lw + i] = k_word(b, 16u * q + lw + i);
            }
            if (lw == 0u) {
                var sc = vec4<i32>(0);
                var mn = vec4<i32>(0);
                for (var i = 0u; i < spc; i++) {
                    sc[i] = k_scale(b, spc * q + i);
                    mn[i] = k_min(b, spc * q + i);
                }
                kw_sc[lr] = sc;
                kw_mn[lr] = mn;
                kw_d[lr] = k_dmin(b);
            }
        } else {
            for (var i = 0u; i < 4u; i++) {
                kw_tile[lr * KWS + lw + i] = 0u;
            }
            if (lw == 0u) {
                kw_sc[lr] = vec4<i32>(0);
                kw_mn[lr] = vec4<i32>(0);
                kw_d[lr] = vec2<f32>(0.0);
            }
        }
        if (ltok < n_tok) {
            for (var i = 0u; i < 4u; i++) {
                kx_tile[lr * KWS + lw + i] = k_xq(ltok, sb, 16u * q + lw + i);
            }
            if (lw == 0u) {
                kx_bs[lr] = vec4<i32>(k_bsum(ltok, sb, 4u * q), k_bsum(ltok, sb, 4u * q + 1u),
                                      k_bsum(ltok, sb, 4u * q + 2u), k_bsum(ltok, sb, 4u * q + 3u));
                kx_d[lr] = k_xd(ltok, sb);
            }
        } else {
            for (var i = 0u; i < 4u; i++) {
                kx_tile[lr * KWS + lw + i] = 0u;
            }
            if (lw == 0u) {
                kx_bs[lr] = vec4<i32>(0);
                kx_d[lr] = 0.0;
            }
        }
        workgroupBarrier();
        for (var sub = 0u; sub < spc; sub++) {
            var i0 = vec4<i32>(0);
            var i1 = vec4<i32>(0);
            var i2 = vec4<i32>(0);
            var i3 = vec4<i32>(0);
            for (var wi = sub * wps; wi < (sub + 1u) * wps; wi++) {
                let a = vec4<u32>(kw_tile[tx * KWS + wi], kw_tile[(tx + 16u) * KWS + wi],
                                  kw_tile[(tx + 32u) * KWS + wi], kw_tile[(tx + 48u) * KWS + wi]);
                i0 += dot4v(a, kx_tile[ty * KWS + wi]);
                i1 += dot4v(a, kx_tile[(ty + 16u) * KWS + wi]);
                i2 += dot4v(a, kx_tile[(ty + 32u) * KWS + wi]);
                i3 += dot4v(a, kx_tile[(ty + 48u) * KWS + wi]);
            }
            let sc = vec4<i32>(kw_sc[tx][sub], kw_sc[tx + 16u][sub], kw_sc[tx + 32u][sub], kw_sc[tx + 48u][sub]);
            // The activation sums this sub-block covers, per token.
            var bs = vec4<i32>(kx_bs[ty][sub], kx_bs[ty + 16u][sub], kx_bs[ty + 32u][sub], kx_bs[ty + 48u][sub]);
            if (sl == 32u) {
                bs = vec4<i32>(kx_bs[ty][2u * sub] + kx_bs[ty][2u * sub + 1u],
                               kx_bs[ty + 16u][2u * sub] + kx_bs[ty + 16u][2u * sub + 1u],
                               kx_bs[ty + 32u][2u * sub] + kx_bs[ty + 32u][2u * sub + 1u],
                               kx_bs[ty + 48u][2u * sub] + kx_bs[ty + 48u][2u * sub + 1u]);
            }
            if (FORMAT == 14u) {
                i0 -= vec4<i32>(32 * bs.x);
                i1 -= vec4<i32>(32 * bs.y);
                i2 -= vec4<i32>(32 * bs.z);
                i3 -= vec4<i32>(32 * bs.w);
            }
            s0 += sc * i0;
            s1 += sc * i1;
            s2 += sc * i2;
            s3 += sc * i3;
            if (FORMAT == 10u || FORMAT == 12u || FORMAT == 13u) {
                let mn = vec4<i32>(kw_mn[tx][sub], kw_mn[tx + 16u][sub], kw_mn[tx + 32u][sub], kw_mn[tx + 48u][sub]);
                m0 += mn * bs.x;
                m1 += mn * bs.y;
                m2 += mn * bs.z;
                m3 += mn * bs.w;
            }
        }
        let last = q == 3u;
        let dv = vec4<f32>(kw_d[tx].x, kw_d[tx + 16u].x, kw_d[tx + 32u].x, kw_d[tx + 48u].x);
        let dmv = vec4<f32>(kw_d[tx].y, kw_d[tx + 16u].y, kw_d[tx + 32u].y, kw_d[tx + 48u].y);
        // tensor-core leaves the mins out where dmin is 0.
        let mz = vec4<i32>(dmv != vec4<f32>(0.0));
        var r = kmm_step(acc0, am0, s0, m0 * mz, dv, dmv, kx_d[ty], tok0 + ty < n_gemm, last);
        acc0 = r.acc;
        am0 = r.acc2;
        if (r.used) { s0 = vec4<i32>(0); m0 = vec4<i32>(0); }
        r = kmm_step(acc1, am1, s1, m1 * mz, dv, dmv, kx_d[ty + 16u], tok0 + ty + 16u < n_gemm, last);
        acc1 = r.acc;
        am1 = r.acc2;
        if (r.used) { s1 = vec4<i32>(0); m1 = vec4<i32>(0); }
        r = kmm_step(acc2, am2, s2, m2 * mz, dv, dmv, kx_d[ty + 32u], tok0 + ty + 32u < n_gemm, last);
        acc2 = r.acc;
        am2 = r.acc2;
        if (r.used) { s2 = vec4<i32>(0); m2 = vec4<i32>(0); }
        r = kmm_step(acc3, am3, s3, m3 * mz, dv, dmv, kx_d[ty + 48u], tok0 + ty + 48u < n_gemm, last);
        acc3 = r.acc;
        am3 = r.acc2;
        if (r.used) { s3 = vec4<i32>(0); m3 = vec4<i32>(0); }
        workgroupBarrier();
    }
    mm_store(tok0 + ty, row0 + tx, n_tok, acc0 - am0);
    mm_store(tok0 + ty + 16u, row0 + tx, n_tok, acc1 - am1);
    mm_store(tok0 + ty + 32u, row0 + tx, n_tok, acc2 - am2);
    mm_store(tok0 + ty + 48u, row0 + tx, n_tok, acc3 - am3);
}

// ---- exact products for batches, vec_dot lanes (ORDER 0): 32 × 32 tiles ----
//
// qdot's ORDER 0 (Q4_0 Q4_1 Q5_0 Q5_1 Q8_0) with each 64-element chunk's
// packed quants staged in workgroup memory. Invocation lid takes lanes
// g = lid / 64 and g + 4 of a 4 × 4 block of outputs (rows tx + 8i, tokens
// ty + 8j): per block, acc_lane = fma(d_w·d_a, Σ_lane, acc_lane) as
// ggml_vec_dot does. At the end each invocation adds its two lanes
// (a_{g+4} + a_g, hsum_float_8's first step) and the four invocations of an
// output finish hsum_float_8 through workgroup memory.

var<workgroup> qw_tile: array<u32, 544>;      // 32 rows × 17 words
var<workgroup> qx_tile: array<u32, 544>;      // 32 tokens × 17 words
var<workgroup> qw_dm: array<vec4<f32>, 32>;   // per row: d, m of the chunk's two blocks
var<workgroup> qx_ds: array<vec4<f32>, 32>;   // per token: d, s of the chunk's two blocks
var<workgroup> qh: array<vec4<f32>, 512>;

// Word u of row `row`'s packed quants and of token `tok`'s (zeros past
// the matrix, the batch or the row), for the tiled kernels' staging.
fn qdot_stage(row: u32, tok: u32, n_tok: u32, u: u32) -> vec2<u32> {
    let c = u >> 3u;
    var r = vec2<u32>(0u);
    if (c < (p.k >> 5u)) {
        if (row < p.m) {
            r.x = qdot_wq(row * p.row_bytes, c, u & 7u);
        }
        if (tok < n_tok) {
            r.y = qdot_xq(tok, c, u & 7u);
        }
    }
    return r;
}

// Grid: (ceil(tokens / 32), ceil(m / 32), 1).
@compute @workgroup_size(256)
fn qmm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tok0 = wid.x * 32u;
    let row0 = wid.y * 32u;
    let n_tok = step.n_tokens;
    let g = lid >> 6u;
    let r = lid & 63u;
    let tx = r & 7u;
    let ty = r >> 3u;
    let nb = p.k >> 5u;
    let bb = qdot_block_bytes();
    let has_min = FORMAT == 3u || FORMAT == 7u;
    // Loading: invocation lid stages row (token) lid / 8, words 2·(lid % 8), +1.
    let lr = lid >> 3u;
    let lw = 2u * (lid & 7u);
    let lrow = row0 + lr;
    let ltok = tok0 + lr;
    var lo0 = vec4<f32>(0.0);
    var lo1 = vec4<f32>(0.0);
    var lo2 = vec4<f32>(0.0);
    var lo3 = vec4<f32>(0.0);
    var hi0 = vec4<f32>(0.0);
    var hi1 = vec4<f32>(0.0);
    var hi2 = vec4<f32>(0.0);
    var hi3 = vec4<f32>(0.0);
    var sm0 = vec4<f32>(0.0);
    var sm1 = vec4<f32>(0.0);
    var sm2 = vec4<f32>(0.0);
    var sm3 = vec4<f32>(0.0);
    for (var c0 = 0u; c0 < nb; c0 += 2u) {
        for (var i = 0u; i < 2u; i++) {
            let v = qdot_stage(lrow, ltok, n_tok, c0 * 8u + lw + i);
            qw_tile[lr * KWS + lw + i] = v.x;
            qx_tile[lr * KWS + lw + i] = v.y;
        }
        if ((lid & 7u) == 0u) {
            var dm = vec4<f32>(0.0);
            var ds = vec4<f32>(0.0);
            for (var h = 0u; h < 2u; h++) {
                let c = c0 + h;
                if (lrow < p.m && c < nb) {
                    let b = lrow * p.row_bytes + c * bb;
                    dm[2u * h] = f16at(b);
                    if (has_min) {
                        dm[2u * h + 1u] = f16at(b + 2u);
                    }
                }
                if (ltok < n_tok && c < nb) {
                    let v = qdot_xs(ltok, c);
                    ds[2u * h] = v.x;
                    ds[2u * h + 1u] = v.y;
                }
            }
            qw_dm[lr] = dm;
            qx_ds[lr] = ds;
        }
        workgroupBarrier();
        for (var h = 0u; h < 2u && c0 + h < nb; h++) {
            let wl = 8u * h + g;
            let wh = wl + 4u;
            let al = vec4<u32>(qw_tile[tx * KWS + wl], qw_tile[(tx + 8u) * KWS + wl],
                               qw_tile[(tx + 16u) * KWS + wl], qw_tile[(tx + 24u) * KWS + wl]);
            let ah = vec4<u32>(qw_tile[tx * KWS + wh], qw_tile[(tx + 8u) * KWS + wh],
                               qw_tile[(tx + 16u) * KWS + wh], qw_tile[(tx + 24u) * KWS + wh]);
            let dw = vec4<f32>(qw_dm[tx][2u * h], qw_dm[tx + 8u][2u * h],
                               qw_dm[tx + 16u][2u * h], qw_dm[tx + 24u][2u * h]);
            let x0 = qx_ds[ty];
            let x1 = qx_ds[ty + 8u];
            let x2 = qx_ds[ty + 16u];
            let x3 = qx_ds[ty + 24u];
            let dd0 = dw * x0[2u * h];
            let dd1 = dw * x1[2u * h];
            let dd2 = dw * x2[2u * h];
            let dd3 = dw * x3[2u * h];
            lo0 = fma4(dd0, vec4<f32>(dot4v(al, qx_tile[ty * KWS + wl])), lo0);
            lo1 = fma4(dd1, vec4<f32>(dot4v(al, qx_tile[(ty + 8u) * KWS + wl])), lo1);
            lo2 = fma4(dd2, vec4<f32>(dot4v(al, qx_tile[(ty + 16u) * KWS + wl])), lo2);
            lo3 = fma4(dd3, vec4<f32>(dot4v(al, qx_tile[(ty + 24u) * KWS + wl])), lo3);
            hi0 = fma4(dd0, vec4<f32>(dot4v(ah, qx_tile[ty * KWS + wh])), hi0);
            hi1 = fma4(dd1, vec4<f32>(dot4v(ah, qx_tile[(ty + 8u) * KWS + wh])), hi1);
            hi2 = fma4(dd2, vec4<f32>(dot4v(ah, qx_tile[(ty + 16u) * KWS + wh])), hi2);
            hi3 = fma4(dd3, vec4<f32>(dot4v(ah, qx_tile[(ty + 24u) * KWS + wh])), hi3);
            if (has_min && g == 0u) {
                let mw = vec4<f32>(qw_dm[tx][2u * h + 1u], qw_dm[tx + 8u][2u * h + 1u],
                                   qw_dm[tx + 16u][2u * h + 1u], qw_dm[tx + 24u][2u * h + 1u]);
                sm0 = sm0 + mul4(mw, vec4<f32>(x0[2u * h + 1u]));
                sm1 = sm1 + mul4(mw, vec4<f32>(x1[2u * h + 1u]));
                sm2 = sm2 + mul4(mw, vec4<f32>(x2[2u * h + 1u]));
                sm3 = sm3 + mul4(mw, vec4<f32>(x3[2u * h + 1u]));
            }
        }
        workgroupBarrier();
    }
    // hsum_float_8: h_g = a_{g+4} + a_g, then (h0 + h2) + (h1 + h3).
    var h0 = hi0 + lo0;
    var h1 = hi1 + lo1;
    var h2 = hi2 + lo2;
    var h3 = hi3 + lo3;
    if (g >= 2u) {
        let o = (g - 2u) * 256u + r * 4u;
        qh[o] = h0;
        qh[o + 1u] = h1;
        qh[o + 2u] = h2;
        qh[o + 3u] = h3;
    }
    workgroupBarrier();
    if (g < 2u) {
        let o = g * 256u + r * 4u;
        h0 = h0 + qh[o];
        h1 = h1 + qh[o + 1u];
        h2 = h2 + qh[o + 2u];
        h3 = h3 + qh[o + 3u];
    }
    workgroupBarrier();
    if (g == 1u) {
        qh[r * 4u] = h0;
        qh[r * 4u + 1u] = h1;
        qh[r * 4u + 2u] = h2;
        qh[r * 4u + 3u] = h3;
    }
    workgroupBarrier();
    if (g == 0u) {
        qmm_store(tok0 + ty, row0 + tx, n_tok, (h0 + qh[r * 4u]) + sm0);
        qmm_store(tok0 + ty + 8u, row0 + tx, n_tok, (h1 + qh[r * 4u + 1u]) + sm1);
        qmm_store(tok0 + ty + 16u, row0 + tx, n_tok, (h2 + qh[r * 4u + 2u]) + sm2);
        qmm_store(tok0 + ty + 24u, row0 + tx, n_tok, (h3 + qh[r * 4u + 3u]) + sm3);
    }
}

// Outputs of token `tok` for rows row + 8·i (those inside the batch and matrix).
fn qmm_store(tok: u32, row: u32, n_tok: u32, v: vec4<f32>) {
    if (tok < n_tok) {
        for (var i = 0u; i < 4u; i++) {
            if (row + 8u * i < p.m) {
                store(tok, row + 8u * i, v[i]);
            }
        }
    }
}

// ---- exact products for batches, repacked order (ORDER 1): 64 × 64 tiles ----
//
// qdot's ORDER 1 (Q4_0 and IQ4_NL matrices with a multiple of 8 rows, which
// llama.cpp repacks) with kmm's tiling: each 64-element chunk (two blocks)
// staged in workgroup memory, each invocation a 4 × 4 block of outputs
// (rows tx + 16i, tokens ty + 16j), per block acc = fma(Σ, d_w·d_a, acc).

var<workgroup> rw_d: array<vec2<f32>, 64>; // per row: d of the chunk's two blocks
var<workgroup> rx_d: array<vec2<f32>, 64>; // per token: d of the chunk's two blocks

// Grid: (ceil(tokens / 64), ceil(m / 64), 1).
@compute @workgroup_size(256)
fn qmm1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tok0 = wid.x * 64u;
    let row0 = wid.y * 64u;
    let n_tok = step.n_tokens;
    let tx = lid & 15u;
    let ty = lid >> 4u;
    let nb = p.k >> 5u;
    let bb = qdot_block_bytes();
    let lr = lid >> 2u;
    let lw = 4u * (lid & 3u);
    let lrow = row0 + lr;
    let ltok = tok0 + lr;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var c0 = 0u; c0 < nb; c0 += 2u) {
        for (var i = 0u; i < 4u; i++) {
            let v = qdot_stage(lrow, ltok, n_tok, c0 * 8u + lw + i);
            kw_tile[lr * KWS + lw + i] = v.x;
            kx_tile[lr * KWS + lw + i] = v.y;
        }
        if (lw == 0u) {
            var dw = vec2<f32>(0.0);
            var dx = vec2<f32>(0.0);
            for (var h = 0u; h < 2u; h++) {
                let c = c0 + h;
                if (lrow < p.m && c < nb) {
                    dw[h] = f16at(lrow * p.row_bytes + c * bb);
                }
                if (ltok < n_tok && c < nb) {
                    dx[h] = qdot_xs(ltok, c).x;
                }
            }
            rw_d[lr] = dw;
            rx_d[lr] = dx;
        }
        workgroupBarrier();
        for (var h = 0u; h < 2u && c0 + h < nb; h++) {
            var i0 = vec4<i32>(0);
            var i1 = vec4<i32>(0);
            var i2 = vec4<i32>(0);
            var i3 = vec4<i32>(0);
            for (var wi = 8u * h; wi < 8u * h + 8u; wi++) {
                let a = vec4<u32>(kw_tile[tx * KWS + wi], kw_tile[(tx + 16u) * KWS + wi],
                                  kw_tile[(tx + 32u) * KWS + wi], kw_tile[(tx + 48u) * KWS + wi]);
                i0 += dot4v(a, kx_tile[ty * KWS + wi]);
                i1 += dot4v(a, kx_tile[(ty + 16u) * KWS + wi]);
                i2 += dot4v(a, kx_tile[(ty + 32u) * KWS + wi]);
                i3 += dot4v(a, kx_tile[(ty + 48u) * KWS + wi]);
            }
            let dw = vec4<f32>(rw_d[tx][h], rw_d[tx + 16u][h], rw_d[tx + 32u][h], rw_d[tx + 48u][h]);
            acc0 = fma4(vec4<f32>(i0), dw * rx_d[ty][h], acc0);
            acc1 = fma4(vec4<f32>(i1), dw * rx_d[ty + 16u][h], acc1);
            acc2 = fma4(vec4<f32>(i2), dw * rx_d[ty + 32u][h], acc2);
            acc3 = fma4(vec4<f32>(i3), dw * rx_d[ty + 48u][h], acc3);
        }
        workgroupBarrier();
    }
    mm_store(tok0 + ty, row0 + tx, n_tok, acc0);
    mm_store(tok0 + ty + 16u, row0 + tx, n_tok, acc1);
    mm_store(tok0 + ty + 32u, row0 + tx, n_tok, acc2);
    mm_store(tok0 + ty + 48u, row0 + tx, n_tok, acc3);
}

// ---- float weights in tinyBLAS's order: matmul with lane accumulators ----
//
// F32, F16 and BF16 batches as llama.cpp's x86 build multiplies them
// (llamafile's tinyBLAS, tensor-core's gemm/float.rs): element e of a dot
// product is multiply-added (fused) into lane e % 8, and the eight lanes
// are summed by hsum_float_8. matmul's tiles and loads, but each output
// keeps its lanes 0..3 (groups of 4 elements at even g) and 4..7 (odd g)
// as two vec4 accumulators, advanced with a component-wise fused
// multiply-add: the same instruction count as matmul's dot products. x
// holds the activations rounded to the weight type (the norm, SwiGLU or
// act_quant.wgsl does it), as ggml's vec_dot_type conversion does.
@compute @workgroup_size(256)
fn fmatmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.x * TM;
    let tok0 = wid.y * TN;
    let n_tok = step.n_tokens;
    let tx = lid & 15u;
    let ty = lid >> 4u;
    // lJI / hJI: lanes 0..3 / 4..7 of token ty + 16J, row tx + 16I.
    var l00 = vec4<f32>(0.0);
    var l01 = vec4<f32>(0.0);
    var l02 = vec4<f32>(0.0);
    var l03 = vec4<f32>(0.0);
    var l10 = vec4<f32>(0.0);
    var l11 = vec4<f32>(0.0);
    var l12 = vec4<f32>(0.0);
    var l13 = vec4<f32>(0.0);
    var l20 = vec4<f32>(0.0);
    var l21 = vec4<f32>(0.0);
    var l22 = vec4<f32>(0.0);
    var l23 = vec4<f32>(0.0);
    var l30 = vec4<f32>(0.0);
    var l31 = vec4<f32>(0.0);
    var l32 = vec4<f32>(0.0);
    var l33 = vec4<f32>(0.0);
    var h00 = vec4<f32>(0.0);
    var h01 = vec4<f32>(0.0);
    var h02 = vec4<f32>(0.0);
    var h03 = vec4<f32>(0.0);
    var h10 = vec4<f32>(0.0);
    var h11 = vec4<f32>(0.0);
    var h12 = vec4<f32>(0.0);
    var h13 = vec4<f32>(0.0);
    var h20 = vec4<f32>(0.0);
    var h21 = vec4<f32>(0.0);
    var h22 = vec4<f32>(0.0);
    var h23 = vec4<f32>(0.0);
    var h30 = vec4<f32>(0.0);
    var h31 = vec4<f32>(0.0);
    var h32 = vec4<f32>(0.0);
    var h33 = vec4<f32>(0.0);
    let chunks = p.k >> 5u;
    var st = mm_fetch(row0, tok0, lid, 0u);
    for (var c = 0u; c < chunks; c++) {
        mm_put(lid, st);
        workgroupBarrier();
        if (c + 1u < chunks) {
            st = mm_fetch(row0, tok0, lid, c + 1u);
        }
        for (var g = 0u; g < 8u; g += 2u) {
            let a0 = w_tile[(tx + 0u) * TS + g];
            let a1 = w_tile[(tx + 16u) * TS + g];
            let a2 = w_tile[(tx + 32u) * TS + g];
            let a3 = w_tile[(tx + 48u) * TS + g];
            let b0 = x_tile[(ty + 0u) * TS + g];
            let b1 = x_tile[(ty + 16u) * TS + g];
            let b2 = x_tile[(ty + 32u) * TS + g];
            let b3 = x_tile[(ty + 48u) * TS + g];
            l00 = fma4(a0, b0, l00);
            l01 = fma4(a1, b0, l01);
            l02 = fma4(a2, b0, l02);
            l03 = fma4(a3, b0, l03);
            l10 = fma4(a0, b1, l10);
            l11 = fma4(a1, b1, l11);
            l12 = fma4(a2, b1, l12);
            l13 = fma4(a3, b1, l13);
            l20 = fma4(a0, b2, l20);
            l21 = fma4(a1, b2, l21);
            l22 = fma4(a2, b2, l22);
            l23 = fma4(a3, b2, l23);
            l30 = fma4(a0, b3, l30);
            l31 = fma4(a1, b3, l31);
            l32 = fma4(a2, b3, l32);
            l33 = fma4(a3, b3, l33);
            {
                let a0 = w_tile[(tx + 0u) * TS + g + 1u];
                let a1 = w_tile[(tx + 16u) * TS + g + 1u];
                let a2 = w_tile[(tx + 32u) * TS + g + 1u];
                let a3 = w_tile[(tx + 48u) * TS + g + 1u];
                let b0 = x_tile[(ty + 0u) * TS + g + 1u];
                let b1 = x_tile[(ty + 16u) * TS + g + 1u];
                let b2 = x_tile[(ty + 32u) * TS + g + 1u];
                let b3 = x_tile[(ty + 48u) * TS + g + 1u];
                h00 = fma4(a0, b0, h00);
                h01 = fma4(a1, b0, h01);
                h02 = fma4(a2, b0, h02);
                h03 = fma4(a3, b0, h03);
                h10 = fma4(a0, b1, h10);
                h11 = fma4(a1, b1, h11);
                h12 = fma4(a2, b1, h12);
                h13 = fma4(a3, b1, h13);
                h20 = fma4(a0, b2, h20);
                h21 = fma4(a1, b2, h21);
                h22 = fma4(a2, b2, h22);
                h23 = fma4(a3, b2, h23);
                h30 = fma4(a0, b3, h30);
                h31 = fma4(a1, b3, h31);
                h32 = fma4(a2, b3, h32);
                h33 = fma4(a3, b3, h33);
            }
        }
        workgroupBarrier();
    }
    mm_store(tok0 + ty, row0 + tx, n_tok, vec4<f32>(hsum_float_8(l00, h00), hsum_float_8(l01, h01), hsum_float_8(l02, h02), hsum_float_8(l03, h03)));
    mm_store(tok0 + ty + 16u, row0 + tx, n_tok, vec4<f32>(hsum_float_8(l10, h10), hsum_float_8(l11, h11), hsum_float_8(l12, h12), hsum_float_8(l13, h13)));
    mm_store(tok0 + ty + 32u, row0 + tx, n_tok, vec4<f32>(hsum_float_8(l20, h20), hsum_float_8(l21, h21), hsum_float_8(l22, h22), hsum_float_8(l23, h23)));
    mm_store(tok0 + ty + 48u, row0 + tx, n_tok, vec4<f32>(hsum_float_8(l30, h30), hsum_float_8(l31, h31), hsum_float_8(l32, h32), hsum_float_8(l33, h33)));
}
