// scale.wgsl (fma.wgsl is prepended): the element-wise ops of the
// Gemma-style graphs, over `n` consecutive values of flat buffers.
//   geglu:      y = gelu(a)·b as ggml's CPU computes it (ggml_vec_geglu_f32
//               with GGML_GELU_FP16): 0 for a ≤ −10, a·b for a ≥ 10, else
//               the f16 table entry of a rounded to f16 (`table`: the f32
//               values of ggml_table_gelu_f16, made on the host), times b;
//               bit for bit.
//   scale:      y *= s (ggml_scale), in place; bit for bit.
//   softcap:    y = s·tanh(y·inv) with inv = 1/s (ggml_scale, ggml_tanh,
//               ggml_scale), in place; `tanh_f32` (fma.wgsl) is not libm's
//               tanhf, so within a couple of ulp rather than bit for bit.
//   scale_rows: y[i] *= b[i / width] (ggml_mul by a column: each row of
//               `width` values times its factor), in place; bit for bit.
//   norm_add:   y = b + RMSNorm(a)·table (eps `s`): a post-norm and the
//               residual sum after it in one dispatch, for the fast mode
//               (f32 sums in this kernel's order, not the CPU's bits); a
//               workgroup a row (grid (1, 1, rows)), a and b at their bases
//               and strides, y rows of `width`.
// Grid: (x, y, 1) workgroups of 256 covering n, x·y ≥ ceil(n / 256); or,
// with n = 0 (geglu, scale, softcap), rows of `width` values: (x, y, rows)
// with x·y ≥ ceil(width / 256), row z at z·width (a compiled graph's
// batch-sized ops), geglu's a and b rows at their own bases and strides
// (views of a stacked gate/up product).

struct ScaleParams {
    n: u32,     // values
    width: u32, // scale_rows: values per row
    s: f32,     // scale: the factor; softcap: the cap
    inv: f32,   // softcap: 1/cap as the host rounds it
    a_base: u32,   // geglu with n = 0: row z of a at a_base + z·a_stride
    a_stride: u32,
    b_base: u32,   // and of b at b_base + z·b_stride
    b_stride: u32,
}

struct Step {
    n_tokens: u32,
    pos: u32,
    n_kv: u32,
    zero: u32,    // 0 at run time, unknown to the compiler: see fma.wgsl
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: ScaleParams;
@group(0) @binding(4) var<uniform> step: Step;
@group(0) @binding(5) var<storage, read> table: array<f32>;

const NONE: u32 = 0xffffffffu;

// The value this invocation computes, or NONE past the end.
fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (p.n == 0u) {
        if (i >= p.width) {
            return NONE;
        }
        return wid.z * p.width + i;
    }
    if (i >= p.n) {
        return NONE;
    }
    return i;
}

// The bits of x rounded to f16, to nearest even (half's `f16::from_f32`,
// F16C's conversion), for |x| < 65504.
fn f16_bits(x: f32) -> u32 {
    let u = bitcast<u32>(x);
    let s = (u >> 16u) & 0x8000u;
    let m = u & 0x7fffffffu;
    if (m < 0x38800000u) { // below 2^-14: f16 subnormals, multiples of 2^-24
        return s | u32(round(abs(x) * 16777216.0)); // round: ties to even
    }
    let r = m + 0xfffu + ((m >> 13u) & 1u);
    return s | ((r - 0x38000000u) >> 13u);
}

@compute @workgroup_size(256)
fn geglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i == NONE) {
        return;
    }
    var ia = i;
    var ib = i;
    if (p.n == 0u) {
        let col = i - wid.z * p.width;
        ia = p.a_base + wid.z * p.a_stride + col;
        ib = p.b_base + wid.z * p.b_stride + col;
    }
    let x = a[ia];
    var r = 0.0;
    if (x >= 10.0) {
        r = x * b[ib];
    } else if (x > -10.0) {
        r = table[f16_bits(x) & 0xffffu] * b[ib];
    } else if (x != x) {
        r = x;
    }
    y[i] = r;
}

@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i != NONE) {
        y[i] = y[i] * p.s;
    }
}

@compute @workgroup_size(256)
fn softcap(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i != NONE) {
        y[i] = mul_rn(tanh_f32(mul_rn(y[i], p.inv)), p.s);
    }
}

@compute @workgroup_size(256)
fn scale_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i != NONE) {
        y[i] = y[i] * b[i / p.width];
    }
}

var<workgroup> norm_sq: array<f32, 256>;

@compute @workgroup_size(256)
fn norm_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let xo = p.a_base + wid.z * p.a_stride;
    let ro = p.b_base + wid.z * p.b_stride;
    let yo = wid.z * p.width;
    var sq = 0.0;
    for (var i = lid; i < p.width; i += 256u) {
        let v = a[xo + i];
        sq = fma(v, v, sq);
    }
    norm_sq[lid] = sq;
    workgroupBarrier();
    for (var k = 128u; k > 0u; k >>= 1u) {
        if (lid < k) {
            norm_sq[lid] += norm_sq[lid + k];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(norm_sq[0] / f32(p.width) + p.s);
    for (var i = lid; i < p.width; i += 256u) {
        y[yo + i] = b[ro + i] + a[xo + i] * scale * table[i];
    }
}
