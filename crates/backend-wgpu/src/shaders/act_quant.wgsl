// act_quant.wgsl (act_common.wgsl is prepended): activations rounded to
// ACT as ggml's quantize_row_<type> rounds them, written as f32 d·q, or
// (PACKED) as ggml's blocks hold them, for the products that sum exact
// integer block sums as ggml does (quant.wgsl's `qdot`):
//   - the quants, four signed bytes per u32, element e of token t in word
//     t·y_stride + e/4 (y_stride counts words here);
//   - per block of 32, two words from corr_base + 2·(t·n/32 + e/32): d as
//     the product reads it (Q8_0/Q8_1: f32 of the f16; Q8_K: the
//     super-block's f32) and, for Q8_1, s = f16(d·Σq) with the unrounded d;
//     for Q8_K, the block's two 16-element sums (ggml's bsums) as two i16.

override PACKED: bool = false;
var<workgroup> packed_q: array<i32, 256>;

struct ActParams {
    n: u32,        // elements per token (multiple of the block size)
    x_stride: u32,
    y_stride: u32,
    corr_base: u32, // PACKED: float offset of the per-block scales in y
}

struct Step {
    n_tokens: u32,
    pos: u32,
    n_kv: u32,
    zero: u32,    // 0 at run time, unknown to the compiler: see fma.wgsl
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<u32>;
@group(0) @binding(2) var<uniform> p: ActParams;
@group(0) @binding(3) var<uniform> step: Step;

// Grid: (ceil(n / 256), 1, tokens); one invocation per element.
@compute @workgroup_size(256)
fn quantize_act(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = wid.x * 256u + lid;
    let tok = wid.z;
    var v = 0.0;
    if (e < p.n) {
        v = x[tok * p.x_stride + e];
    }
    let ra = round_act(v, lid);
    let r = ra.x;
    let amax = ra.y;
    if (PACKED) {
        quantize_packed(v, amax, e, tok, lid);
        return;
    }
    if (e < p.n) {
        y[tok * p.y_stride + e] = bitcast<u32>(r);
    }
}

// The PACKED layout (see the top of the file) of element e = v, whose block's
// largest magnitude is amax (Q8_K: the super-block's signed extreme).
fn quantize_packed(v: f32, amax: f32, e: u32, tok: u32, lid: u32) {
    var q = 0;
    var d = 0.0;
    if (ACT == 15u) {
        // quantize_row_q8_K_ref: iscale = −127/max (max: the signed value of
        // largest magnitude), q = min(127, nearest(iscale·x)), d = 1/iscale.
        // amax is the signed value of largest magnitude here (round_act).
        if (amax != 0.0) {
            let mx = amax;
            let iscale = div_rn(-127.0, mx);
            q = i32(min(127.0, round(iscale * v)));
            d = div_rn(1.0, iscale);
        }
    } else {
        if (amax != 0.0) {
            q = i32(round(v * div_rn(127.0, amax)));
        }
        d = round_f16(div_rn(amax, 127.0));
    }
    packed_q[lid] = q;
    workgroupBarrier();
    if (e < p.n && (lid & 3u) == 0u) {
        let word = (u32(packed_q[lid]) & 0xffu) | ((u32(packed_q[lid + 1u]) & 0xffu) << 8u)
            | ((u32(packed_q[lid + 2u]) & 0xffu) << 16u) | (u32(packed_q[lid + 3u]) << 24u);
        y[tok * p.y_stride + e / 4u] = word;
    }
    workgroupBarrier();
    if (e < p.n && lid % 32u == 0u) {
        let i = p.corr_base + 2u * (tok * (p.n / 32u) + e / 32u);
        y[i] = bitcast<u32>(d);
        if (ACT == 9u) {
            // y.s = GGML_FP32_TO_FP16(d·Σq) with d = amax/127 unrounded
            // (Σq exact in i32, summed by the block's first invocation).
            var sum = 0;
            for (var j = 0u; j < 32u; j++) {
                sum += packed_q[lid + j];
            }
            let ds = div_rn(amax, 127.0) * f32(sum);
            y[i + 1u] = bitcast<u32>(round_f16(abs(ds)) * sign(ds));
        } else if (ACT == 15u) {
            // Q8_K's bsums of the block's two halves, as two i16.
            var s0 = 0;
            var s1 = 0;
            for (var j = 0u; j < 16u; j++) {
                s0 += packed_q[lid + j];
                s1 += packed_q[lid + 16u + j];
            }
            y[i + 1u] = (u32(s0) & 0xffffu) | (u32(s1) << 16u);
        } else {
            y[i + 1u] = 0u;
        }
    }
}
