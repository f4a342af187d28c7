// Causal attention with grouped-query heads over a GPU-resident KV cache,
// bit for bit as tensor-core's CPU attention (crates/tensor-core/src/
// attention.rs, `head_portable` and its AVX2 twin `avx2::head`, which
// follow llama.cpp's non-flash-attention graph on x86 AVX2).
//
// One workgroup per (query head, query token). Token t of the batch sits at
// position step.pos + t and attends to cache positions 0 ..= step.pos + t,
// or with a sliding window (window ≠ 0) to first ..= step.pos + t, first =
// step.pos + t + 1 − window where that is positive: the CPU masks the
// positions before `first` with −inf, whose probability is exactly 0, so
// here they are skipped (their scores are never computed, their exponentials
// and probabilities are 0, and tiles that hold only them are not visited:
// adding a zero block to the f64 sum, or 0·v to a V·P lane, changes no bit).
// The caches hold f32 values; with an f16 cache (kv_f16 = 1) those values
// are f16-rounded already.
//
// The CPU's float operations, and where each is mirrored here:
//   1. The query is rounded to the cache type (`E::round`: f16 round to
//      nearest even for an f16 cache) — `round_f16_inf`.
//   2. K·Q per position j, in one of two orders chosen by the batch size
//      (CPU `decode = n_rows == 1`, here `step.n_tokens == 1`):
//      - batch (llamafile tinyBLAS, CPU `dot_lanes8`): element i is
//        multiply-added into lane i % 8, lanes summed by `hsum8`
//        ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)) — `dot_batch`;
//      - one token (ggml_vec_dot_f16/_f32, CPU `dot_vec`): blocks of 32
//        into 4 accumulators × 8 lanes (element i: accumulator (i/8)%4,
//        lane i%8), `reduce_4x8`, then the elements past the last full
//        block of 32 added one by one in f64 — `dot_decode`.
//      Each multiply-add is an FMA for an f32 cache (`fma_rn`); for an f16
//      cache the product of two f16 values is exact in f32, so a plain
//      multiply-add rounds the same, fused or not (the CPU's `E::madd`).
//      One invocation computes one position's dot product in that order;
//      positions are spread over the workgroup.
//   2b. With a soft-cap (softcap ≠ 0, CPU `cap_and_mask`): K·Q becomes
//      softcap·tanh(K·Q · inv_cap), each product rounded alone; `tanh_f32`
//      (fma.wgsl) is not libm's tanhf, so capped scores are within an ulp
//      or two of the CPU's rather than bit for bit.
//   3. Softmax (CPU `ops::softmax_scaled`): each score times `scale` (a
//      product rounded alone, `mul_rn`); the maximum (order-free);
//      e_j = ggml_v_expf(s_j − max) (`expf_ggml`, CPU `ops::expf_ggml`);
//      blocks of 8 positions (the last padded with zeros) summed by
//      `hsum8` in f32, the block sums added in order in f64 (emulated
//      exactly, `F64`, by one invocation); inv = f32(1 / sum) with the
//      division in f64 (`f64_recip`, then `f64_to_f32`: the CPU's double
//      rounding); p_j = e_j · inv (`mul_rn`).
//   4. p_j rounded to the cache type (f16 cache), then V·P: lane
//      j % n_lanes of output d accumulates p_j·v[j][d] in position order
//      (n_lanes = 8 for a batch, llama.cpp's tinyBLAS; 32 for one token,
//      ggml_vec_dot over the KV window padded to 32), then the lanes are
//      summed by `hsum8` (batch) or `reduce_4x8` (one token). A batch:
//      one invocation owns whole outputs d (all their lanes, as vec4s). One
//      token: an invocation owns four lanes of four outputs (V read as
//      vec4s), and xor exchanges (attn_sg.wgsl: subgroup shuffles;
//      attn_wg.wgsl: workgroup memory) form reduce_4x8's sums.
//
// Scores, then exponentials, of the first CAP positions from the first
// visited tile stay in workgroup memory; positions from there on are
// recomputed in each pass (the same operations, so the same bits).

struct AttnParams {
    n_head: u32,
    n_kv_head: u32,
    head_dim: u32,   // ≤ 2·WG, multiple of 4
    q_stride: u32,   // floats between tokens in q
    kv_stride: u32,  // floats between positions in the caches (n_kv_head · head_dim)
    out_stride: u32, // floats between tokens in out
    scale: f32,      // 1/sqrt(head_dim) for LLaMA
    kv_f16: u32,     // 1: the cache holds f16-rounded values; round q and p likewise
    window: u32,     // sliding window: position j visible from p when p − j < window (0: all)
    softcap: f32,    // scores become softcap·tanh(K·Q · inv_cap) (0: not capped)
    inv_cap: f32,    // 1/softcap, rounded by the host as the CPU rounds it
    pad: u32,
}

struct Step {
    n_tokens: u32,
    pos: u32,
    n_kv: u32,
    zero: u32,    // 0 at run time, unknown to the compiler: see fma.wgsl
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> v_cache: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: AttnParams;
@group(0) @binding(5) var<uniform> step: Step;

const WG: u32 = 128u;   // invocations; also the tile of positions (a multiple of 32)
const CAP: u32 = 2048u; // positions whose scores/exponentials are kept
var<workgroup> q_head: array<vec4<f32>, 64>;
var<workgroup> sc: array<f32, CAP>;    // scaled scores, then exponentials
var<workgroup> probs: array<f32, WG>;  // one tile's exponentials, then probabilities
var<workgroup> red: array<f32, WG>;
var<workgroup> inv_sum: f32;

// ---- f32 helpers -------------------------------------------------------

// f32 → f16 → f32, round to nearest even (F16C's `vcvtps2ph`, `half`'s
// `f16::from_f32`), overflowing to ±inf.
fn round_f16_inf(x: f32) -> f32 {
    let a = abs(x);
    if (a < 6.103515625e-5) { // f16 subnormals: multiples of 2^-24 (exact scalings)
        return round(x * 16777216.0) * 5.9604644775390625e-8;
    }
    let b = bitcast<u32>(x);
    let r = (b + 0xfffu + ((b >> 13u) & 1u)) & 0xffffe000u;
    if ((r & 0x7fffffffu) >= 0x47800000u) { // ≥ 65536: beyond f16's range
        return bitcast<f32>((b & 0x80000000u) | 0x7f800000u);
    }
    return bitcast<f32>(r);
}


// acc + a·b per lane as the CPU's `E::madd`: an FMA for an f32 cache; for
// an f16 cache the product of f16 values is exact, so fused or not agree.
fn madd4(a: vec4<f32>, b: vec4<f32>, acc: vec4<f32>) -> vec4<f32> {
    if (p.kv_f16 != 0u) {
        return a * b + acc;
    }
    return vec4<f32>(fma_rn(a.x, b.x, acc.x), fma_rn(a.y, b.y, acc.y),
                     fma_rn(a.z, b.z, acc.z), fma_rn(a.w, b.w, acc.w));
}

// CPU `hsum8` / ggml's `hsum_float_8` of lanes (l0..l3, l4..l7):
// ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
fn hsum8(lo: vec4<f32>, hi: vec4<f32>) -> f32 {
    let s = lo + hi;
    return (s.x + s.z) + (s.y + s.w);
}

// CPU `reduce_4x8` (GGML_F32_VEC_REDUCE): accumulator r, lane i is
// a[2r + i/4][i%4]; the accumulators pairwise ((0+2)+(1+3)), then
// t_i = x_i + x_{i+4}, then (t0+t1) + (t2+t3).
fn reduce_4x8(a: array<vec4<f32>, 8>) -> f32 {
    let x_lo = (a[0] + a[4]) + (a[2] + a[6]);
    let x_hi = (a[1] + a[5]) + (a[3] + a[7]);
    let t = x_lo + x_hi;
    return (t.x + t.y) + (t.z + t.w);
}

// ---- f64 emulation: the CPU's `f64` sums, rounded exactly --------------
//
// value = (−1)^s · m · 2^e, m a 64-bit integer (hi, lo) that is 0 or has
// its top bit at bit 62 and its low 10 bits zero (53 significant bits).
// Uses fma.wgsl's 64-bit helpers.

struct F64 {
    m: vec2<u32>,
    e: i32,
    s: u32,
}

fn clz64(v: vec2<u32>) -> u32 {
    if (v.x != 0u) {
        return countLeadingZeros(v.x);
    }
    return 32u + countLeadingZeros(v.y);
}

// r · 2^e with sign s (r ≠ 0; bits shifted out earlier ORed into bit 0)
// rounded to 53 bits, nearest even. A left shift of more than one bit
// only follows exact operations, so the sticky bit stays below the
// rounding bit.
fn f64_round(r: vec2<u32>, e: i32, s: u32) -> F64 {
    let lz = clz64(r);
    var m = r;
    var ee = e;
    if (lz == 0u) {
        m = shr64_sticky(m, 1u);
        ee += 1;
    } else {
        m = shl64(m, lz - 1u);
        ee -= i32(lz - 1u);
    }
    let round_bit = (m.y >> 9u) & 1u;
    let sticky = (m.y & 0x1ffu) != 0u;
    var k = vec2<u32>(m.x, m.y & 0xfffffc00u);
    if (round_bit == 1u && (sticky || ((m.y >> 10u) & 1u) == 1u)) {
        k = add64(k, vec2<u32>(0u, 0x400u));
        if ((k.x & 0x80000000u) != 0u) { // 2^63: one more binade
            k = vec2<u32>(0x40000000u, 0u);
            ee += 1;
        }
    }
    return F64(k, ee, s);
}

// An f32, exactly (`x as f64`).
fn f64_from_f32(x: f32) -> F64 {
    let u = bitcast<u32>(x);
    let s = u >> 31u;
    let ex = (u >> 23u) & 0xffu;
    let sig = u & 0x7fffffu;
    if (ex == 0u) {
        if (sig == 0u) {
            return F64(vec2<u32>(0u, 0u), 0, s);
        }
        let lz = clz64(vec2<u32>(0u, sig));
        return F64(shl64(vec2<u32>(0u, sig), lz - 1u), -149 - i32(lz - 1u), s);
    }
    return F64(vec2<u32>((sig | 0x800000u) << 7u, 0u), i32(ex) - 189, s);
}

// a + b rounded to nearest even (f64 `+`).
fn f64_add(a: F64, b: F64) -> F64 {
    if ((a.m.x | a.m.y) == 0u) {
        return b;
    }
    if ((b.m.x | b.m.y) == 0u) {
        return a;
    }
    var x = a;
    var y = b;
    if (b.e > a.e || (b.e == a.e && !ge64(a.m, b.m))) {
        x = b;
        y = a;
    }
    let ym = shr64_sticky(y.m, u32(x.e - y.e));
    var r: vec2<u32>;
    if (x.s == y.s) {
        r = add64(x.m, ym);
    } else {
        r = sub64(x.m, ym);
    }
    if ((r.x | r.y) == 0u) {
        return F64(vec2<u32>(0u, 0u), 0, 0u);
    }
    return f64_round(r, x.e, x.s);
}

// 1 / a for a > 0, rounded to nearest even (f64 `1.0 / a`): the 53-bit
// significand M of a divided into 2^52 by restoring long division, 64
// quotient bits and a sticky remainder.
fn f64_recip(a: F64) -> F64 {
    let d = vec2<u32>(a.m.x >> 10u, (a.m.y >> 10u) | (a.m.x << 22u)); // M in [2^52, 2^53)
    var r = vec2<u32>(0x100000u, 0u); // 2^52
    var qv = vec2<u32>(0u, 0u);
    for (var i = 0u; i < 64u; i++) {
        qv = shl64(qv, 1u);
        if (ge64(r, d)) {
            r = sub64(r, d);
            qv.y |= 1u;
        }
        r = shl64(r, 1u);
    }
    // a = (M / 2^52) · 2^(e+62) and 2^52 / M = qv · 2^-63 (+ remainder).
    qv.y |= select(0u, 1u, (r.x | r.y) != 0u);
    return f64_round(qv, -(a.e + 125), 0u);
}

// f32(1 / a) with the division in f64 (`(1.0 / a) as f32`: rounded twice),
// for a normal a > 0, where `fma` is fused (FMA_FUSED): 1/a from the f32
// reciprocal of a's top 24 bits and one Newton step on the exact remainder
// of all 53 (y = r·(1 + ε + ε²), ε = 1 − r·a, to ~2^-42), rounded to f32.
// Where y is farther than 2^-38·y from every f32 midpoint, the f64 quotient
// (within 2^-53 of y) rounds to the same f32, and (result, 1) is returned;
// otherwise (about one call in 2^14) (0, 0), and f64_recip decides.
fn f64_recip_f32_fast(a: F64) -> vec2<f32> {
    // a = S · 2^k with S in [1, 2): its bits 62..39, 38..15 and 14..10.
    let k = a.e + 62;
    let s_hi = f32(a.m.x >> 7u) * 1.1920928955078125e-7; // 2^-23
    let s_mid = f32(((a.m.x & 0x7fu) << 17u) | (a.m.y >> 15u)) * 7.105427357601002e-15; // 2^-47
    let s_lo = f32((a.m.y >> 10u) & 0x1fu) * 2.220446049250313e-16; // 2^-52
    let r = 1.0 / s_hi;
    let h = r * s_hi;
    let l = fma(r, s_hi, -h); // r·s_hi = h + l exactly
    var e = (1.0 - h) - l;
    e = fma(-r, s_mid, e);
    e = fma(-r, s_lo, e);
    let y_lo = r * fma(e, e, e);
    let c = r + y_lo;
    let dist = (r - c) + y_lo; // y − c
    let uc = bitcast<u32>(c);
    var half = bitcast<f32>(uc & 0x7f800000u) * 5.960464477539063e-8; // ulp(c) / 2
    if (dist < 0.0 && (uc & 0x7fffffu) == 0u) {
        half = half * 0.5; // below a power of two the ulp halves
    }
    let eb = i32((uc >> 23u) & 0xffu) - k;
    if (half - abs(dist) <= c * 3.637978807091713e-12 || eb < 1 || eb > 254) { // 2^-38
        return vec2<f32>(0.0, 0.0);
    }
    return vec2<f32>(bitcast<f32>((uc & 0x807fffffu) | (u32(eb) << 23u)), 1.0);
}

// a rounded to f32, nearest even (`a as f32`), subnormals included.
fn f64_to_f32(a: F64) -> f32 {
    if ((a.m.x | a.m.y) == 0u) {
        return bitcast<f32>(a.s << 31u);
    }
    var m = a.m;
    var eb = a.e + 189; // biased f32 exponent of bit 62
    if (eb < 1) {
        m = shr64_sticky(m, u32(1 - eb));
        eb = 1;
    }
    var k = m.x >> 7u; // 24 bits, bit 23 the leading one when normal
    let round_bit = (m.x >> 6u) & 1u;
    let sticky = (m.x & 0x3fu) != 0u || m.y != 0u;
    if (round_bit == 1u && (sticky || (k & 1u) == 1u)) {
        k += 1u;
    }
    var bits = 0x7f800000u;
    if (eb < 255) {
        bits = min((u32(eb - 1) << 23u) + k, 0x7f800000u);
    }
    return bitcast<f32>(bits | (a.s << 31u));
}

// ---- K·Q ----------------------------------------------------------------

// Batch order (CPU `dot_lanes8`, tinyBLAS): element i into lane i % 8
// (lanes 0–3 in lo, 4–7 in hi), then hsum8.
fn dot_batch(ko: u32, n4: u32) -> f32 {
    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    var i = 0u;
    for (; i + 2u <= n4; i += 2u) {
        lo = madd4(q_head[i], k_cache[ko + i], lo);
        hi = madd4(q_head[i + 1u], k_cache[ko + i + 1u], hi);
    }
    if (i < n4) {
        lo = madd4(q_head[i], k_cache[ko + i], lo);
    }
    return hsum8(lo, hi);
}

// One-token order (CPU `dot_vec`, ggml_vec_dot_f16/_f32): blocks of 32 over
// 4 accumulators × 8 lanes (vec4 v of a block goes to a[v]), reduce_4x8,
// then the tail's f32 products added one at a time in f64.
fn dot_decode(ko: u32, n4: u32) -> f32 {
    var a: array<vec4<f32>, 8>;
    for (var v = 0u; v < 8u; v++) {
        a[v] = vec4<f32>(0.0);
    }
    let n32 = n4 / 8u * 8u;
    // Two blocks of 32 per round, their sixteen vectors of K loaded before
    // the first is added (the blocks still add in order).
    var i = 0u;
    for (; i + 16u <= n32; i += 16u) {
        let k0 = array<vec4<f32>, 8>(k_cache[ko + i], k_cache[ko + i + 1u], k_cache[ko + i + 2u],
                                     k_cache[ko + i + 3u], k_cache[ko + i + 4u], k_cache[ko + i + 5u],
                                     k_cache[ko + i + 6u], k_cache[ko + i + 7u]);
        let k1 = array<vec4<f32>, 8>(k_cache[ko + i + 8u], k_cache[ko + i + 9u], k_cache[ko + i + 10u],
                                     k_cache[ko + i + 11u], k_cache[ko + i + 12u], k_cache[ko + i + 13u],
                                     k_cache[ko + i + 14u], k_cache[ko + i + 15u]);
        for (var v = 0u; v < 8u; v++) {
            a[v] = madd4(q_head[i + v], k0[v], a[v]);
        }
        for (var v = 0u; v < 8u; v++) {
            a[v] = madd4(q_head[i + 8u + v], k1[v], a[v]);
        }
    }
    if (i < n32) {
        for (var v = 0u; v < 8u; v++) {
            a[v] = madd4(q_head[i + v], k_cache[ko + i + v], a[v]);
        }
    }
    let r = reduce_4x8(a);
    if (n32 == n4) {
        return r;
    }
    var sum = f64_from_f32(r);
    for (var i = n32; i < n4; i++) {
        let qv = q_head[i];
        let kv = k_cache[ko + i];
        sum = f64_add(sum, f64_from_f32(mul_rn(qv.x, kv.x)));
        sum = f64_add(sum, f64_from_f32(mul_rn(qv.y, kv.y)));
        sum = f64_add(sum, f64_from_f32(mul_rn(qv.z, kv.z)));
        sum = f64_add(sum, f64_from_f32(mul_rn(qv.w, kv.w)));
    }
    return f64_to_f32(sum);
}

// scale · (K·Q) of cache position t (the softmax's `*v *= scale`), the
// product soft-capped first where softcap ≠ 0.
fn score(t: u32, kvo: u32) -> f32 {
    let ko = (t * p.kv_stride + kvo) >> 2u;
    let n4 = p.head_dim >> 2u;
    var d: f32;
    if (step.n_tokens == 1u) {
        d = dot_decode(ko, n4);
    } else {
        d = dot_batch(ko, n4);
    }
    if (p.softcap != 0.0) {
        d = mul_rn(tanh_f32(mul_rn(d, p.inv_cap)), p.softcap);
    }
    return mul_rn(d, p.scale);
}

// ---- V·P ------------------------------------------------------------------

// V at positions j .. j + 3 of the output element at `base` (positions
// ks floats apart; past the window, the last one: its probability is 0).
fn v_at4(base: u32, j: u32, ks: u32, last: u32) -> vec4<f32> {
    return vec4<f32>(v_el(min(base + j * ks, last)), v_el(min(base + (j + 1u) * ks, last)),
                     v_el(min(base + (j + 2u) * ks, last)), v_el(min(base + (j + 3u) * ks, last)));
}

fn v_el(i: u32) -> f32 {
    return v_cache[i >> 2u][i & 3u];
}

// A batch's lanes of output d over one tile (positions t0 .. t0 + n, n ≤ WG,
// probabilities in `probs`): lane j % 8 as a[lane / 4][lane % 4]; positions
// past the window add 0·v (exact no-ops: the lanes start at +0).
fn vp_tile(a: ptr<function, array<vec4<f32>, 2>>, d: u32, t0: u32, n: u32, n_kv: u32) {
    let ks = p.kv_stride;
    let last = (n_kv - 1u) * ks + d;
    let base = t0 * ks + d;
    for (var j = 0u; j < n; j += 4u) {
        let pv = vec4<f32>(probs[j], probs[j + 1u], probs[j + 2u], probs[j + 3u]);
        let v = (j >> 2u) & 1u;
        (*a)[v] = madd4(pv, v_at4(base, j, ks, last), (*a)[v]);
    }
}

// One token's V·P for outputs 4·dq .. 4·dq + 3 (vq: their vec4 in the
// cache rows) over one tile of WG = 128 positions from t0 (probabilities in
// `probs`, 0 past the window): this invocation holds lanes 4g .. 4g + 3 of
// the 32 (position j adds into lane j % 32), a[i] being lane 4g + i of the
// four outputs, and adds positions in order within every lane. All sixteen
// vectors of V are loaded before the first is added; past the window V
// reads as 0 (adding p·v = +0 to a lane, which is never −0, changes
// nothing).
fn vp_tile_decode(a: ptr<function, array<vec4<f32>, 4>>, vq: u32, g: u32, t0: u32, n: u32) {
    let ks = p.kv_stride >> 2u;
    let j = 4u * g;
    let v0 = array<vec4<f32>, 4>(v_row(vq, t0, j, n, ks), v_row(vq, t0, j + 1u, n, ks),
                                 v_row(vq, t0, j + 2u, n, ks), v_row(vq, t0, j + 3u, n, ks));
    let v1 = array<vec4<f32>, 4>(v_row(vq, t0, j + 32u, n, ks), v_row(vq, t0, j + 33u, n, ks),
                                 v_row(vq, t0, j + 34u, n, ks), v_row(vq, t0, j + 35u, n, ks));
    let v2 = array<vec4<f32>, 4>(v_row(vq, t0, j + 64u, n, ks), v_row(vq, t0, j + 65u, n, ks),
                                 v_row(vq, t0, j + 66u, n, ks), v_row(vq, t0, j + 67u, n, ks));
    let v3 = array<vec4<f32>, 4>(v_row(vq, t0, j + 96u, n, ks), v_row(vq, t0, j + 97u, n, ks),
                                 v_row(vq, t0, j + 98u, n, ks), v_row(vq, t0, j + 99u, n, ks));
    for (var i = 0u; i < 4u; i++) {
        (*a)[i] = madd4(vec4<f32>(probs[j + i]), v0[i], (*a)[i]);
    }
    for (var i = 0u; i < 4u; i++) {
        (*a)[i] = madd4(vec4<f32>(probs[j + 32u + i]), v1[i], (*a)[i]);
    }
    for (var i = 0u; i < 4u; i++) {
        (*a)[i] = madd4(vec4<f32>(probs[j + 64u + i]), v2[i], (*a)[i]);
    }
    for (var i = 0u; i < 4u; i++) {
        (*a)[i] = madd4(vec4<f32>(probs[j + 96u + i]), v3[i], (*a)[i]);
    }
}

// V's vector vq at tile position j (0 at or past n).
fn v_row(vq: u32, t0: u32, j: u32, n: u32, ks: u32) -> vec4<f32> {
    if (j >= n) {
        return vec4<f32>(0.0);
    }
    return v_cache[(t0 + j) * ks + vq];
}

// Position t's probability (0 past the window or before `first`), rounded
// to the cache type; sc holds positions t_lo ...
fn prob(t: u32, first: u32, t_lo: u32, n_kv: u32, kvo: u32, mx: f32, inv: f32) -> f32 {
    if (t >= n_kv || t < first) {
        return 0.0;
    }
    var e: f32;
    if (t - t_lo < CAP) {
        e = sc[t - t_lo];
    } else {
        e = expf_ggml(score(t, kvo) - mx);
    }
    var pr = mul_rn(e, inv);
    if (p.kv_f16 != 0u) {
        pr = round_f16_inf(pr);
    }
    return pr;
}

// Grid: (n_head, 1, n_tokens).
@compute @workgroup_size(WG)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wid.x;
    let tok = wid.z;
    let hd = p.head_dim;
    let decode = step.n_tokens == 1u;
    let kv_head = head / (p.n_head / p.n_kv_head);
    let qo = tok * p.q_stride + head * hd;
    let n_kv = step.pos + tok + 1u;
    // The first visible position, and the first tile visited (a multiple
    // of WG, so that tiles, blocks of 8 and V·P lanes fall where the CPU's
    // do, counted from position 0).
    var first = 0u;
    if (p.window != 0u && n_kv > p.window) {
        first = n_kv - p.window;
    }
    let t_lo = first / WG * WG;
    let kvo = kv_head * hd;
    for (var i = lid; i < (hd >> 2u); i += WG) {
        var v = vec4<f32>(q[qo + 4u * i], q[qo + 4u * i + 1u], q[qo + 4u * i + 2u], q[qo + 4u * i + 3u]);
        if (p.kv_f16 != 0u) {
            v = vec4<f32>(round_f16_inf(v.x), round_f16_inf(v.y), round_f16_inf(v.z), round_f16_inf(v.w));
        }
        q_head[i] = v;
    }
    workgroupBarrier();

    // Pass 1: scaled scores and their maximum.
    var m = -3.0e38;
    for (var t = t_lo + lid; t < n_kv; t += WG) {
        if (t >= first) {
            let s = score(t, kvo);
            if (t - t_lo < CAP) {
                sc[t - t_lo] = s;
            }
            m = max(m, s);
        }
    }
    let mx = reduce_max(lid, m);

    // Pass 2: exponentials; blocks of 8 summed by hsum8, the block sums
    // added in order in f64 by invocation 0 (CPU `softmax_row`).
    var sum = F64(vec2<u32>(0u, 0u), 0, 0u);
    for (var t0 = t_lo; t0 < n_kv; t0 += WG) {
        let t = t0 + lid;
        var e = 0.0;
        if (t < n_kv && t >= first) {
            var s: f32;
            if (t - t_lo < CAP) {
                s = sc[t - t_lo];
            } else {
                s = score(t, kvo);
            }
            e = expf_ggml(s - mx);
            if (t - t_lo < CAP) {
                sc[t - t_lo] = e;
            }
        }
        probs[lid] = e;
        workgroupBarrier();
        // The tile's block sums side by side, then their f64 chain.
        let nb = (min(WG, n_kv - t0) + 7u) / 8u;
        if (lid < nb) {
            let b = lid;
            let lo = vec4<f32>(probs[8u * b], probs[8u * b + 1u], probs[8u * b + 2u], probs[8u * b + 3u]);
            let hi = vec4<f32>(probs[8u * b + 4u], probs[8u * b + 5u], probs[8u * b + 6u], probs[8u * b + 7u]);
            red[b] = hsum8(lo, hi);
        }
        workgroupBarrier();
        if (lid == 0u) {
            for (var b = 0u; b < nb; b++) {
                sum = f64_add(sum, f64_from_f32(red[b]));
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        var fast = vec2<f32>(0.0);
        if (FMA_FUSED && sum.m.x != 0u) {
            fast = f64_recip_f32_fast(sum);
        }
        if (fast.y != 0.0) {
            inv_sum = fast.x;
        } else {
            inv_sum = f64_to_f32(f64_recip(sum));
        }
    }
    workgroupBarrier();
    let inv = inv_sum;

    // Pass 3: probabilities (rounded to the cache type) and V·P. One token:
    // invocation (dq, g) = (lid / 8, lid % 8) holds lanes 4g .. 4g + 3 of
    // outputs 4·dq .. 4·dq + 3 of each 64-output chunk (`vp_tile_decode`);
    // xor exchanges over g then take reduce_4x8's sums. A batch: one
    // invocation per output (`vp_tile`), lanes summed by hsum8.
    let oo = tok * p.out_stride + head * hd;
    if (decode) {
        let g = lid & 7u;
        for (var c0 = 0u; c0 < hd; c0 += 64u) {
            let dq = (c0 >> 2u) + (lid >> 3u);
            let live = 4u * dq < hd;
            var a: array<vec4<f32>, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = vec4<f32>(0.0);
            }
            for (var t0 = t_lo; t0 < n_kv; t0 += WG) {
                probs[lid] = prob(t0 + lid, first, t_lo, n_kv, kvo, mx, inv);
                workgroupBarrier();
                if (live) {
                    vp_tile_decode(&a, (kvo >> 2u) + dq, g, t0, min(WG, n_kv - t0));
                }
                workgroupBarrier();
            }
            // reduce_4x8 of each output's lanes a_v (the vec4 of lanes
            // 4v .. 4v + 3, held by g = v): x_lo = (a0 + a4) + (a2 + a6),
            // x_hi = (a1 + a5) + (a3 + a7), t = x_lo + x_hi, then
            // (t.x + t.y) + (t.z + t.w). Float addition commutes, so g and
            // its partner form the same sum.
            // (The four exchanges of a round are independent: all four
            // first, then the sums.)
            for (var m = 4u; m > 0u; m >>= 1u) {
                let x0 = xor_vec4(a[0], m, lid);
                let x1 = xor_vec4(a[1], m, lid);
                let x2 = xor_vec4(a[2], m, lid);
                let x3 = xor_vec4(a[3], m, lid);
                a[0] = a[0] + x0;
                a[1] = a[1] + x1;
                a[2] = a[2] + x2;
                a[3] = a[3] + x3;
            }
            if (live && g == 0u) {
                let r = (a[0] + a[1]) + (a[2] + a[3]);
                let o = oo + 4u * dq;
                out[o] = r.x;
                out[o + 1u] = r.y;
                out[o + 2u] = r.z;
                out[o + 3u] = r.w;
            }
        }
        return;
    }
    var acc0: array<vec4<f32>, 2>; // output lid
    var acc1: array<vec4<f32>, 2>; // output lid + WG
    for (var v = 0u; v < 2u; v++) {
        acc0[v] = vec4<f32>(0.0);
        acc1[v] = vec4<f32>(0.0);
    }
    for (var t0 = t_lo; t0 < n_kv; t0 += WG) {
        probs[lid] = prob(t0 + lid, first, t_lo, n_kv, kvo, mx, inv);
        workgroupBarrier();
        let n = min(WG, n_kv - t0);
        if (lid < hd) {
            vp_tile(&acc0, kvo + lid, t0, n, n_kv);
        }
        if (lid + WG < hd) {
            vp_tile(&acc1, kvo + lid + WG, t0, n, n_kv);
        }
        workgroupBarrier();
    }
    if (lid < hd) {
        out[oo + lid] = hsum8(acc0[0], acc0[1]);
    }
    if (lid + WG < hd) {
        out[oo + lid + WG] = hsum8(acc1[0], acc1[1]);
    }
}
