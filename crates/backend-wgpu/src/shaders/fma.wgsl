// fma.wgsl, prepended to every shader: a correctly rounded f32 fused
// multiply-add, a product that a shader compiler cannot fuse, ggml's exp
// built from them, and the f16 rounding of activations and cache writes.
//
// ggml's x86 kernels (llama.cpp's reference build) use fused multiply-adds
// in fixed places (`_mm256_fmadd_ps`, the contracted lines of scalar code)
// and plain products elsewhere; agreeing with them bit for bit needs both.
// WGSL's `fma` need not be fused (llvmpipe evaluates it as a*b + c), and a
// compiler may fuse a plain a*b + c (NVIDIA's does). So:
//   - `fma_rn(a, b, c)` is a·b + c rounded once: the builtin where the
//     device fuses it (FMA_FUSED, probed when the device is opened), else an
//     integer emulation: the 48-bit product and the addend aligned in 64
//     bits with a sticky bit, rounded to nearest even;
//   - `mul_rn(a, b)` is a·b rounded on its own: the product's bits are ORed
//     with a uniform that is 0 at run time (`step.zero`, which the compiler
//     cannot see through), so it is never contracted into a later addition.

override FMA_FUSED: bool = false;

fn shl64(v: vec2<u32>, s: u32) -> vec2<u32> { // (hi, lo) << s, s < 64
    if (s == 0u) { return v; }
    if (s >= 32u) { return vec2<u32>(v.y << (s - 32u), 0u); }
    return vec2<u32>((v.x << s) | (v.y >> (32u - s)), v.y << s);
}

// (hi, lo) >> s with every bit shifted out ORed into bit 0.
fn shr64_sticky(v: vec2<u32>, s: u32) -> vec2<u32> {
    if (s == 0u) { return v; }
    if (s >= 64u) { return vec2<u32>(0u, select(0u, 1u, (v.x | v.y) != 0u)); }
    if (s >= 32u) {
        let t = s - 32u;
        let lost = v.y != 0u || (v.x & ((1u << t) - 1u)) != 0u;
        return vec2<u32>(0u, (v.x >> t) | select(0u, 1u, lost));
    }
    let lost = (v.y & ((1u << s) - 1u)) != 0u;
    return vec2<u32>(v.x >> s, (v.y >> s) | (v.x << (32u - s)) | select(0u, 1u, lost));
}

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.y + b.y;
    return vec2<u32>(a.x + b.x + select(0u, 1u, lo < a.y), lo);
}

fn sub64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> { // a ≥ b
    return vec2<u32>(a.x - b.x - select(0u, 1u, a.y < b.y), a.y - b.y);
}

fn ge64(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.x > b.x || (a.x == b.x && a.y >= b.y);
}

// a·b + c rounded once to nearest even. Zero, subnormal, infinite or NaN
// operands, and results outside the normal range, take a·b + c (never the
// case for the scales, sums and angles the kernels pass).
fn fma_rn(a: f32, b: f32, c: f32) -> f32 {
    if (FMA_FUSED) {
        return fma(a, b, c);
    }
    let ua = bitcast<u32>(a);
    let ub = bitcast<u32>(b);
    let uc = bitcast<u32>(c);
    let ea = (ua >> 23u) & 0xffu;
    let eb = (ub >> 23u) & 0xffu;
    let ec = (uc >> 23u) & 0xffu;
    if (ea == 0u || eb == 0u || ea == 255u || eb == 255u || ec == 255u) {
        return a * b + c;
    }
    if (ec == 0u) {
        if ((uc & 0x7fffffffu) == 0u) {
            return a * b;
        }
        return a * b + c;
    }
    // The 48-bit product of the 24-bit significands, from 16-bit pieces.
    let ma = (ua & 0x7fffffu) | 0x800000u;
    let mb = (ub & 0x7fffffu) | 0x800000u;
    let al = ma & 0xffffu;
    let ah = ma >> 16u;
    let bl = mb & 0xffffu;
    let bh = mb >> 16u;
    let ll = al * bl;
    let mid = al * bh + ah * bl;
    let lo = ll + (mid << 16u);
    let hi = ah * bh + (mid >> 16u) + select(0u, 1u, lo < ll);
    // Both operands with their top bit at bit 62: value = v · 2^e.
    var sp = 15u;
    if ((hi & 0x8000u) == 0u) { sp = 16u; }
    let pv = shl64(vec2<u32>(hi, lo), sp);
    let pe = i32(ea) + i32(eb) - 300 - i32(sp);
    let ps = (ua ^ ub) & 0x80000000u;
    let cv = vec2<u32>(((uc & 0x7fffffu) | 0x800000u) << 7u, 0u);
    let ce = i32(ec) - 189;
    let cs = uc & 0x80000000u;
    var xv = pv;
    var yv = cv;
    var xe = pe;
    var xs = ps;
    var ys = cs;
    var d = pe - ce;
    if (ce > pe) {
        xv = cv;
        yv = pv;
        xe = ce;
        xs = cs;
        ys = ps;
        d = ce - pe;
    }
    yv = shr64_sticky(yv, u32(d));
    var r: vec2<u32>;
    var s = xs;
    if (xs == ys) {
        r = add64(xv, yv);
    } else if (ge64(xv, yv)) {
        r = sub64(xv, yv);
    } else {
        r = sub64(yv, xv);
        s = ys;
    }
    if ((r.x | r.y) == 0u) {
        return 0.0;
    }
    var lz = countLeadingZeros(r.x);
    if (r.x == 0u) {
        lz = 32u + countLeadingZeros(r.y);
    }
    r = shl64(r, lz);
    var m = r.x >> 8u;
    let round_bit = (r.x >> 7u) & 1u;
    let sticky = (r.x & 0x7fu) != 0u || r.y != 0u;
    var e = xe - i32(lz) + 190;
    if (round_bit == 1u && (sticky || (m & 1u) == 1u)) {
        m += 1u;
        if (m == 0x1000000u) {
            m = m >> 1u;
            e += 1;
        }
    }
    if (e <= 0 || e >= 255) {
        return a * b + c;
    }
    return bitcast<f32>(s | (u32(e) << 23u) | (m & 0x7fffffu));
}

// a·b rounded on its own, never fused into a following addition.
fn mul_rn(a: f32, b: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(a * b) | step.zero);
}

// x rounded to f16 and back, to nearest even (F16C's conversion), as ggml's
// f16 activations and the f16 KV cache hold it. Overflow (|x| > 65504) is
// not modelled (attention.wgsl's `round_f16_inf` does).
fn round_f16(x: f32) -> f32 {
    if (abs(x) < 6.103515625e-5) { // f16 subnormals: multiples of 2^-24
        return round(x * 16777216.0) / 16777216.0;
    }
    let b = bitcast<u32>(x);
    return bitcast<f32>((b + 0xfffu + ((b >> 13u) & 1u)) & 0xffffe000u);
}

// v as an output with KV-cache mode `at` stores it (2: an f16 cache; 0 or
// 1: unchanged).
fn stored(at: u32, v: f32) -> f32 {
    if (at == 2u) {
        return round_f16(v);
    }
    return v;
}

// ggml_v_expf (ggml-cpu's AVX2 version), one lane: tensor-core's
// `ops::expf_ggml` / `ops::x86::expf`, operation for operation (FMAs where
// they use `mul_add` / `_mm256_fmadd_ps` / `_mm256_fnmadd_ps`, products
// rounded alone where they use `*` / `_mm256_mul_ps`).
fn expf_ggml(x: f32) -> f32 {
    let r = bitcast<f32>(0x4b400000u); // 0x1.8p23
    let z = fma_rn(x, bitcast<f32>(0x3fb8aa3bu), r);
    let n = z - r;
    let b = fma_rn(-n, bitcast<f32>(0x35bfbe8eu), fma_rn(-n, bitcast<f32>(0x3f317200u), x));
    let e = bitcast<u32>(z) << 23u;
    let k = bitcast<f32>(e + 0x3f800000u);
    let u = mul_rn(b, b);
    let j = fma_rn(
        fma_rn(fma_rn(bitcast<f32>(0x3c072010u), b, bitcast<f32>(0x3d2b9f17u)), u,
               fma_rn(bitcast<f32>(0x3e2aaf33u), b, bitcast<f32>(0x3efffedbu))),
        u,
        mul_rn(bitcast<f32>(0x3f7ffff6u), b));
    if (abs(n) <= 126.0) {
        return fma_rn(j, k, k);
    }
    let g = select(0u, 0x82000000u, n <= 0.0);
    let s1 = bitcast<f32>(g + 0x7f000000u);
    let s2 = bitcast<f32>(e - g);
    if (abs(n) > 192.0) {
        return mul_rn(s1, s1);
    }
    return mul_rn(fma_rn(s2, j, s2), s1);
}

// tanh(x) in f32, for logit soft-capping (scale.wgsl's softcap,
// attention.wgsl's capped scores). The CPU calls libm's `tanhf`, which
// differs between C libraries (glibc 2.36's fdlibm port is within about two
// ulp, newer glibc rounds correctly), and WGSL's `tanh` has no stated
// accuracy (NVIDIA's is a 2^-11 approximation), so neither is mirrored bit
// for bit: this one stays within an ulp of the correctly rounded value
// (a dense sweep measured 1 ulp at most; within 2 of glibc 2.36's).
//   |x| < 0.9: x + x³·P(x²), P of degree 6 (a relative fit of
//     (tanh(x) − x)/x³, 1e-9 before rounding its coefficients to f32);
//   0.9 ≤ |x| < 9.5: 1 − 2/(e^2|x| + 1), e^2|x| from expf_ggml and the
//     quotient corrected by a Newton step on its exact remainder;
//   above: ±1 (tanh rounds to 1 from 9.0109 on). The sign is copied, so
//   tanh(−0) = −0; NaN stays NaN.
fn tanh_f32(x: f32) -> f32 {
    let a = abs(x);
    var r = 1.0;
    if (a != a) {
        return x + x;
    }
    if (a < 0.9) {
        let z = mul_rn(a, a);
        var q = fma_rn(bitcast<f32>(0xb9f0ad85u), z, bitcast<f32>(0x3b29eb37u));
        q = fma_rn(q, z, bitcast<f32>(0xbc07966du));
        q = fma_rn(q, z, bitcast<f32>(0x3cb18446u));
        q = fma_rn(q, z, bitcast<f32>(0xbd5ce6afu));
        q = fma_rn(q, z, bitcast<f32>(0x3e0887a8u));
        q = fma_rn(q, z, bitcast<f32>(0xbeaaaaa7u));
        r = fma_rn(mul_rn(a, z), q, a);
    } else if (a < 9.5) {
        let d = expf_ggml(2.0 * a) + 1.0;
        var q = 2.0 / d;
        q = fma_rn(fma_rn(-q, d, 2.0), mul_rn(q, 0.5), q);
        r = 1.0 - q;
    }
    return bitcast<f32>(bitcast<u32>(r) | (bitcast<u32>(x) & 0x80000000u));
}
