// tg_fused.wgsl: the fast mode's single-token product with a Q4_K, Q5_K or
// Q6_K matrix through quant_tg.wgsl's integer dot products (Q8_0: this
// file's `q8_0_dot`, its activations in blocks of 32), each workgroup
// making the token's activations itself: the prologue (PROLOGUE 0: x; 1:
// RMSNorm(x)·weight; 2: silu(gate)·up; 3: gelu(gate)·up, as
// fast_wide.wgsl's) rounded to 8-bit blocks of 256 into workgroup memory
// in the packed layout quant_tg.wgsl reads (act_common.wgsl's
// quantize_packed). The norm, SwiGLU or GeGLU then takes no dispatch of
// its own, nor does the rounding of an input no such op writes (an
// attention's output). The RMSNorm's scale is uniform over the row, so the
// blocks are rounded before it (each block's scale carries it) and the
// row's sum is multiplied by it. The shader is fma.wgsl, quant_io.wgsl,
// tg_sg.wgsl (32-wide subgroups) or tg_emu.wgsl (their exchanges through
// workgroup memory, any device), quant_tg.wgsl, then this file.
//
// The rounding is the fast mode's, not ggml's Q8_K (Q8_0): d = max|v|/127
// per block of 256 (32), q = round(v/d), in this kernel's float order; for
// Q8_0 the block's d times the norm's factor is rounded to f16 as ggml's
// quantize_row_q8_0 stores the scale (SmolLM2 Q8_0 decoded on llvmpipe: mean
// KLD against the CPU 4.02e-3, 4.17e-3 with an f32 d).

override FORMAT: u32 = 12u;
override PROLOGUE: u32 = 0u;

@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> aux: array<vec4<f32>>;

// The activations of up to TG_FUSED_MAX_K (kernels.rs) values: their quants
// (k/16 vectors), then [d, bsums] a block of 32 from word p.corr_base (k/4).
var<workgroup> xv: array<vec4<u32>, 640>;
var<workgroup> tgf_sq: array<f32, 8>;

// Activations i .. i + 3 as the prologue makes them; the norm's squares of
// x into sq.
fn tgf_in(i: u32, sq: ptr<function, f32>) -> vec4<f32> {
    let v = x[p.x_base + i];
    switch PROLOGUE {
        case 1u: {
            *sq += dot(v, v);
            return v * aux[i];
        }
        case 2u: {
            return v / (1.0 + exp(-v)) * aux[p.aux_base + i];
        }
        case 3u: {
            return v / (1.0 + exp(-1.5957691216057308 * v * (1.0 + 0.044715 * v * v))) * aux[p.aux_base + i];
        }
        default: {
            return v;
        }
    }
}

fn tgf_max4(v: vec4<f32>) -> f32 {
    return max(max(v.x, v.y), max(v.z, v.w));
}

// Four quants (integers in [-127, 127]) as signed bytes.
fn tgf_pack(q: vec4<f32>) -> u32 {
    let u = bitcast<vec4<u32>>(vec4<i32>(q)) & vec4<u32>(0xffu);
    return u.x | (u.y << 8u) | (u.z << 16u) | (u.w << 24u);
}

// Rounds the token's activations into xv: subgroup s takes super-blocks s,
// s + 8, .., invocation t eight consecutive values of each (so a block of
// 256 is a subgroup's, and its maximum one sg_max_f32; for Q8_0 weights a
// scale a block of 32, four invocations' maximum). Returns the factor
// of the row sums: 1/rms(x) for the norm, else 1. Every invocation must
// call it: it synchronises.
fn tgf_prologue(lid: u32, t: u32) -> f32 {
    let s = lid >> 5u;
    let nsb = p.k >> 8u;
    var sq = 0.0;
    // Uniform trip count; a subgroup past the last super-block redoes the
    // last one and writes nothing.
    for (var b0 = 0u; b0 < nsb; b0 += 8u) {
        let valid = b0 + s < nsb;
        let b = min(b0 + s, nsb - 1u);
        let i0 = (b * 256u + 8u * t) >> 2u;
        var bsq = 0.0;
        let v0 = tgf_in(i0, &bsq);
        let v1 = tgf_in(i0 + 1u, &bsq);
        if (valid) {
            sq += bsq;
        }
        let lmax = max(tgf_max4(abs(v0)), tgf_max4(abs(v1)));
        var amax = 0.0;
        if (FORMAT == 8u) {
            // Q8_0: a scale a block of 32 (four invocations; the bits of a
            // non-negative f32 order as its value).
            var mu = bitcast<u32>(lmax);
            mu = max(mu, sg_xor_u32(mu, 1u));
            mu = max(mu, sg_xor_u32(mu, 2u));
            amax = bitcast<f32>(mu);
        } else {
            amax = sg_max_f32(lmax);
        }
        var id = 0.0;
        if (amax > 0.0) {
            id = 127.0 / amax;
        }
        let q0 = round(v0 * id);
        let q1 = round(v1 * id);
        let w0 = tgf_pack(q0);
        let w1 = tgf_pack(q1);
        // Sums of quants (exact): 16 values over invocation pairs, then the
        // block of 32's two halves in its first invocation (4m).
        let s8 = i32(dot(q0 + q1, vec4<f32>(1.0)));
        let s16 = s8 + sg_xor_i32(s8, 1u);
        let s16b = sg_xor_i32(s16, 2u);
        let bs = (u32(s16) & 0xffffu) | (u32(s16b) << 16u);
        let pw0 = sg_xor_u32(w0, 1u);
        let pw1 = sg_xor_u32(w1, 1u);
        let pbs = sg_xor_u32(bs, 4u);
        // (Q8_0: q8_0_dot rounds it to f16 once the norm's factor is in.)
        let du = bitcast<u32>(amax / 127.0);
        let pdu = sg_xor_u32(du, 4u);
        if (valid) {
            if ((t & 1u) == 0u) {
                xv[b * 16u + (t >> 1u)] = vec4<u32>(w0, w1, pw0, pw1);
            }
            if ((t & 7u) == 0u) {
                xv[(p.corr_base >> 2u) + b * 4u + (t >> 3u)] = vec4<u32>(du, bs, pdu, pbs);
            }
        }
    }
    let total = sg_add_f32(sq);
    if (t == 0u) {
        tgf_sq[s] = total;
    }
    workgroupBarrier();
    if (PROLOGUE != 1u) {
        return 1.0;
    }
    let ss = ((tgf_sq[0] + tgf_sq[1]) + (tgf_sq[2] + tgf_sq[3]))
        + ((tgf_sq[4] + tgf_sq[5]) + (tgf_sq[6] + tgf_sq[7]));
    return 1.0 / sqrt(ss / f32(p.k) + p.eps);
}

// Row `row`'s product with Q8_0 weights (34-byte blocks: f16 d, 32
// quants), which every invocation of its subgroup returns: lane t takes
// blocks t, t + 32, .. (the quants by 4-byte reads at even offsets,
// tg_ld32), each block's exact integer sum times d·d_a added in f32, and
// the lanes' sums meet in sg_add_f32.
fn q8_0_dot(row: u32, t: u32, f: f32) -> f32 {
    let nb = p.k >> 5u;
    var acc = 0.0;
    for (var b0 = 0u; b0 < nb; b0 += 32u) {
        let blk = b0 + t;
        if (blk < nb) {
            let o = row * p.row_bytes + 34u * blk;
            let d = unpack2x16float(tg_ld32(o) & 0xffffu).x;
            let xa = xv[2u * blk];
            let xb = xv[2u * blk + 1u];
            let s = ((dot4I8Packed(tg_ld32(o + 2u), xa.x) + dot4I8Packed(tg_ld32(o + 6u), xa.y))
                + (dot4I8Packed(tg_ld32(o + 10u), xa.z) + dot4I8Packed(tg_ld32(o + 14u), xa.w)))
                + ((dot4I8Packed(tg_ld32(o + 18u), xb.x) + dot4I8Packed(tg_ld32(o + 22u), xb.y))
                + (dot4I8Packed(tg_ld32(o + 26u), xb.z) + dot4I8Packed(tg_ld32(o + 30u), xb.w)));
            let cs = xv[(p.corr_base >> 2u) + (blk >> 1u)];
            // The block's scale times the row factor f, rounded to f16 as
            // ggml's quantize_row_q8_0 stores the scale of the activations
            // it rounds after the norm: the CPU's activations, but for the
            // last bits of the products the quants come from.
            let da = unpack2x16float(pack2x16float(vec2<f32>(
                bitcast<f32>(select(cs.x, cs.z, (blk & 1u) == 1u)) * f, 0.0))).x;
            acc = fma(f32(s), d * da, acc);
        }
    }
    return sg_add_f32(acc);
}

// Grid: ceil(m / 8) workgroups (as ops.rs's rows_grid spreads them over x
// and y); subgroup s takes row s of the workgroup's eight. (Two or four
// rows a subgroup, rounding the activations once for more rows, decoded
// slower on an H100: TinyLlama Q4_K_M 650 and 525 t/s against 721.)
@compute @workgroup_size(256)
fn tg_fused(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    sg_lid = lid;
    // A subgroup's lane (tg_sg.wgsl: the probe found lane lid % 32).
    let t = lid & 31u;
    let f = tgf_prologue(lid, t);
    let row_raw = (wid.x + wid.y * nwg.x) * 8u + (lid >> 5u);
    let row = min(row_raw, p.m - 1u);
    var v = 0.0;
    switch FORMAT {
        case 14u: {
            v = q6k_dot(row, t);
        }
        case 13u: {
            v = q5k_dot(row, t);
        }
        case 8u: {
            v = q8_0_dot(row, t, f);
        }
        default: {
            v = q4k_dot(row, t);
        }
    }
    if (row_raw < p.m && t == 0u) {
        // (Q8_0's blocks carry f already.)
        store(0u, row, select(v * f, v, FORMAT == 8u));
    }
}
