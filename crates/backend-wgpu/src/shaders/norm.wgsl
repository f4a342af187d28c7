// norm.wgsl (act_common.wgsl is prepended). RMSNorm (ggml_rms_norm
// followed by the weight multiply):
// y[t, i] = x[t, i] / sqrt(mean_i(x[t, :]²) + eps) · weight[i],
// then, when ACT ≠ 0, rounded as the matrix products that read y round
// their activations, as f32 values or (PACKED) ggml's blocks (saves a
// dispatch of act_quant.wgsl).

struct NormParams {
    n: u32,        // elements per token
    x_stride: u32, // floats between tokens in x
    y_stride: u32, // floats between tokens in y
    x_first: u32,  // 1: read only the batch's last token (final norm before sampling)
    eps: f32,
    zero: u32,     // always 0; unknown to the compiler (see `opaque`)
    corr_base: u32, // PACKED: word offset of the blocks' scales in y (y_stride: words of quants)
    row0: u32,     // workgroup z normalises row row0 + z (long calls run in chunks)
}

struct Step {
    n_tokens: u32,
    pos: u32,
    n_kv: u32,
    zero: u32,    // 0 at run time, unknown to the compiler: see fma.wgsl
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>; // f32 bits, or PACKED
@group(0) @binding(3) var<uniform> p: NormParams;
@group(0) @binding(4) var<uniform> step: Step;

const WG: u32 = 256u;

var<workgroup> partial: array<vec2<f32>, WG>;

// ggml sums the f32 squares in f64 and rounds sum/n to f32; the GPU has no
// f64, so the sum is kept as an unevaluated pair hi + lo of f32 (Knuth's
// TwoSum: additions only, which no compiler may contract into an fma), and
// the f32 mean, its square root and the reciprocal are rounded correctly
// (GPU division and sqrt may be off by an ulp or two). A last-bit difference
// of the scale would change a few of the products' quantized activations.

// x, hidden from the shader compiler's algebra: without it, an optimiser
// that treats float addition as associative (Mesa's, for one) turns
// (a + b) − a into b and the error term of two_sum into 0.
fn opaque(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) ^ p.zero);
}

fn two_sum(a: f32, b: f32) -> vec2<f32> {
    let s = opaque(a + b);
    let bb = opaque(s - a);
    return vec2<f32>(s, (a - (s - bb)) + (b - bb));
}

fn dd_add(x: vec2<f32>, y: vec2<f32>) -> vec2<f32> {
    let s = two_sum(x.x, y.x);
    let e = s.y + (x.y + y.y);
    let r = opaque(s.x + e);
    return vec2<f32>(r, e - (r - s.x));
}

// Splits a positive f32 into three pieces of at most 8 significant bits each
// (by masking, so exactly), whose products with an integer below 2^15 are exact.
fn split3(q: f32) -> vec3<f32> {
    let q1 = bitcast<f32>(bitcast<u32>(q) & 0xffff8000u);
    let r = q - q1;
    let q2 = bitcast<f32>(bitcast<u32>(r) & 0xffff8000u);
    return vec3<f32>(q1, q2, r - q2);
}

fn ulp(q: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(q) & 0x7f800000u) * 1.1920928955078125e-7;
}

// (hi + lo) / n rounded to nearest, for hi > 0 and an integer n < 2^15.
fn mean_rn(s: vec2<f32>, n: f32) -> f32 {
    var q = div_rn(s.x, n);
    let qs = split3(q);
    // hi − q·n exactly (the first difference by Sterbenz's lemma), then + lo.
    let r = (((s.x - qs.x * n) - qs.y * n) - qs.z * n) + s.y;
    let half = 0.5 * ulp(q) * n;
    if (r > half) {
        q = q + ulp(q);
    } else if (r < -half) {
        q = q - ulp(q);
    }
    return q;
}

// sqrt(t) rounded to nearest, for a normal t > 0.
fn sqrt_rn(t: f32) -> f32 {
    var s = sqrt(t);
    for (var i = 0u; i < 2u; i++) {
        // t − s² from the exact products of s's 12-bit halves.
        let sh = bitcast<f32>(bitcast<u32>(s) & 0xfffff000u);
        let sl = s - sh;
        let r = ((t - sh * sh) - 2.0 * sh * sl) - sl * sl;
        // sqrt(t) − s ≈ r / 2s; move s when that exceeds half an ulp.
        let half = ulp(s) * s;
        if (r > half) {
            s = s + ulp(s);
        } else if (r < -half) {
            s = s - ulp(s);
        }
    }
    return s;
}

// x[xo + i]² rounded to f32 (max() keeps the square from being fused into
// an add), 0 past the row.
fn sq_at(xo: u32, i: u32) -> f32 {
    if (i >= p.n) {
        return 0.0;
    }
    let v = x[xo + i];
    return max(v * v, 0.0);
}

// FAST: the fast mode's norm: the sum of squares in f32 in this kernel's
// order, and the scale as the GPU's division and square root round it (not
// ggml's f64 sum and correctly rounded steps: within the fast mode's
// agreement, not the CPU's bits). The exact norm's pair arithmetic cost a
// prompt of 512 tokens 35 µs a norm on an H100.
override FAST: bool = false;

// FAST's 1 / sqrt(mean(x²) + eps) of the row at xo.
fn fast_scale(xo: u32, lid: u32) -> f32 {
    var s = 0.0;
    for (var i0 = lid; i0 < p.n; i0 += 4u * WG) {
        s += (sq_at(xo, i0) + sq_at(xo, i0 + WG)) + (sq_at(xo, i0 + 2u * WG) + sq_at(xo, i0 + 3u * WG));
    }
    var tot: f32;
    if (SG) {
        for (var m = 16u; m > 0u; m >>= 1u) {
            s += bitcast<f32>(xor_u32(bitcast<u32>(s), m, lid));
        }
        if ((lid & 31u) == 0u) {
            partial[lid >> 5u] = vec2<f32>(s, 0.0);
        }
        workgroupBarrier();
        tot = ((partial[0].x + partial[1].x) + (partial[2].x + partial[3].x))
            + ((partial[4].x + partial[5].x) + (partial[6].x + partial[7].x));
    } else {
        partial[lid] = vec2<f32>(s, 0.0);
        workgroupBarrier();
        for (var h = WG / 2u; h > 0u; h >>= 1u) {
            if (lid < h) {
                partial[lid].x += partial[lid + h].x;
            }
            workgroupBarrier();
        }
        tot = partial[0].x;
    }
    return 1.0 / sqrt(tot / f32(p.n) + p.eps);
}

// Grid: (ceil(n / 256), 1, rows): every workgroup sums the squares of the
// whole row (a few KiB, from cache) and writes its own 256 outputs, so that
// a row is spread over several compute units.
@compute @workgroup_size(WG)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = p.row0 + wid.z;
    var src_tok = row;
    if (p.x_first != 0u) {
        src_tok = step.n_tokens - 1u;
    }
    let xo = src_tok * p.x_stride;
    let yo = row * p.y_stride;
    // This invocation's output operands, loaded before the sum so that
    // their latency passes during it.
    let i = wid.x * WG + lid;
    var xi = 0.0;
    var wi = 0.0;
    if (i < p.n) {
        xi = x[xo + i];
        wi = weight[i];
    }
    var scale: f32;
    if (FAST) {
        scale = fast_scale(xo, lid);
    } else {
        // Eight elements per invocation and round, all loaded before any is
        // added (a loop that loads and adds in turn waits out the cache's
        // latency at every element), summed as a tree of exact pairs.
        var sum = vec2<f32>(0.0);
        for (var i0 = lid; i0 < p.n; i0 += 8u * WG) {
            let a = vec4<f32>(sq_at(xo, i0), sq_at(xo, i0 + WG), sq_at(xo, i0 + 2u * WG), sq_at(xo, i0 + 3u * WG));
            let b = vec4<f32>(sq_at(xo, i0 + 4u * WG), sq_at(xo, i0 + 5u * WG), sq_at(xo, i0 + 6u * WG),
                              sq_at(xo, i0 + 7u * WG));
            let lo = dd_add(two_sum(a.x, a.y), two_sum(a.z, a.w));
            let hi = dd_add(two_sum(b.x, b.y), two_sum(b.z, b.w));
            sum = dd_add(sum, dd_add(lo, hi));
        }
        var tot: vec2<f32>;
        if (SG) {
            // dd_add is symmetric (TwoSum's error is exact in either order), so
            // after the butterfly every invocation holds the same sum.
            for (var m = 16u; m > 0u; m >>= 1u) {
                let o = vec2<f32>(bitcast<f32>(xor_u32(bitcast<u32>(sum.x), m, lid)),
                                  bitcast<f32>(xor_u32(bitcast<u32>(sum.y), m, lid)));
                sum = dd_add(sum, o);
            }
            if ((lid & 31u) == 0u) {
                partial[lid >> 5u] = sum;
            }
            workgroupBarrier();
            tot = dd_add(dd_add(dd_add(partial[0], partial[1]), dd_add(partial[2], partial[3])),
                         dd_add(dd_add(partial[4], partial[5]), dd_add(partial[6], partial[7])));
        } else {
            partial[lid] = sum;
            workgroupBarrier();
            for (var s = WG / 2u; s > 0u; s >>= 1u) {
                if (lid < s) {
                    partial[lid] = dd_add(partial[lid], partial[lid + s]);
                }
                workgroupBarrier();
            }
            tot = partial[0];
        }
        var mean = 0.0;
        if (tot.x > 0.0) {
            mean = mean_rn(tot, f32(p.n));
        }
        scale = div_rn(1.0, sqrt_rn(mean + p.eps));
    }
    var v = 0.0;
    if (i < p.n) {
        v = (xi * scale) * wi;
    }
    if (PACKED) {
        quantize_packed(v, i, row, lid, p.n, p.y_stride, p.corr_base);
        return;
    }
    let r = round_act(v, lid);
    if (i < p.n) {
        y[yo + i] = bitcast<u32>(r);
    }
}

fn act_out(i: u32, bits: u32) {
    y[i] = bits;
}
