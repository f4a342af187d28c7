// Activation rounding to the format ggml's CPU dot products pair a weight
// format with (its `vec_dot_type`): ggml quantizes the activations to Q8_0,
// Q8_1 or Q8_K before multiplying with quantized weights, so to agree with
// it the GPU multiplies with the same rounded values, x' = d·q, kept as f32.
//
// ACT selects the rounding (ggml type ids):
//   8 Q8_0, 9 Q8_1: blocks of 32, d = max|x|/127 stored as f16,
//     q = round(x·127/max|x|) (ggml-cpu's quantize_row_q8_0/q8_1);
//   15 Q8_K: blocks of 256, d = max/−127 in f32 where max is the value of
//     largest magnitude, q = min(127, round(x·(−127/max)))
//     (quantize_row_q8_K_ref).

override ACT: u32 = 8u;

struct ActParams {
    n: u32,        // elements per token (multiple of the block size)
    x_stride: u32,
    y_stride: u32,
    pad: u32,
}

struct Step {
    n_tokens: u32,
    pos: u32,
    n_kv: u32,
    pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: ActParams;
@group(0) @binding(3) var<uniform> step: Step;

// f32 → f16 → f32 with round-to-nearest-even (as F16C's conversion); v ≥ 0.
fn round_f16(v: f32) -> f32 {
    if (v < 6.103515625e-5) { // f16 subnormals: multiples of 2^-24
        return round(v * 16777216.0) / 16777216.0;
    }
    let b = bitcast<u32>(v);
    return bitcast<f32>((b + 0xfffu + ((b >> 13u) & 1u)) & 0xffffe000u);
}

var<workgroup> mag: array<f32, 256>;
var<workgroup> at: array<u32, 256>;

// Grid: (ceil(n / 256), 1, tokens); one invocation per element.
@compute @workgroup_size(256)
fn quantize_act(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = wid.x * 256u + lid;
    let tok = wid.z;
    var v = 0.0;
    if (e < p.n) {
        v = x[tok * p.x_stride + e];
    }
    // Largest magnitude (and where, first on ties) within each block.
    var seg = 32u;
    if (ACT == 15u) {
        seg = 256u;
    }
    mag[lid] = abs(v);
    at[lid] = lid;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (s < seg && (lid % seg) < s) {
            let o = lid + s;
            if (mag[o] > mag[lid] || (mag[o] == mag[lid] && at[o] < at[lid])) {
                mag[lid] = mag[o];
                at[lid] = at[o];
            }
        }
        workgroupBarrier();
    }
    let first = lid - lid % seg;
    let amax = mag[first];
    var r = 0.0;
    if (ACT == 1u) {
        // F16 (ggml rounds to nearest even)
        r = sign(v) * round_f16(abs(v));
    } else if (ACT == 30u) {
        // BF16: round to nearest even on the upper 16 bits
        let b = bitcast<u32>(v);
        r = bitcast<f32>((b + 0x7fffu + ((b >> 16u) & 1u)) & 0xffff0000u);
    } else if (ACT == 15u) {
        if (amax != 0.0) {
            let mx = x[tok * p.x_stride + wid.x * 256u + at[first]];
            let iscale = -127.0 / mx;
            let q = min(127.0, round(iscale * v));
            r = (1.0 / iscale) * q;
        }
    } else {
        let d = round_f16(amax / 127.0);
        var id = 0.0;
        if (amax != 0.0) {
            id = 127.0 / amax;
        }
        r = d * round(v * id);
    }
    if (e < p.n) {
        y[tok * p.y_stride + e] = r;
    }
}
