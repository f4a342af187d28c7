// dequant.wgsl (after quant.wgsl, with mm_fast.wgsl or mm_coop.wgsl): a
// matrix part of any GPU type decoded once into a copy that the fast batch
// product then reads as F16 (SCRATCH_BYTES 2: the cooperative matrices'
// operands, rounded as mm_coop.wgsl's `to_f16` rounds them) or F32
// (SCRATCH_BYTES 4: mm_fast.wgsl's f32 tiles, the same values deq4 gives):
// decoding a block once rather than in every tile of tokens that reads it
// (quant.wgsl's mm_load_w with SCRATCH_BYTES set). Row r of the copy is
// weights r · k .. of y.

// Grid: ops.rs's rows_grid over ceil(m · k / 32 / 256) workgroups; one
// invocation a chunk of 32 weights.
@compute @workgroup_size(256)
fn dequant_w(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    let per_row = p.k >> 5u;
    let r = i / per_row;
    if (r >= p.m) {
        return;
    }
    let c = i - r * per_row;
    let base = r * p.row_bytes;
    let o = r * p.k + 32u * c;
    for (var g = 0u; g < 8u; g++) {
        let v = deq4(base, c, g);
        if (SCRATCH_BYTES == 2u) {
            // Magnitudes clamped to f16's largest finite value: no pair of
            // f16 is then a NaN or infinite f32's bits.
            let h = clamp(v, vec4<f32>(-65504.0), vec4<f32>(65504.0));
            y[(o >> 1u) + 2u * g] = bitcast<f32>(pack2x16float(h.xy));
            y[(o >> 1u) + 2u * g + 1u] = bitcast<f32>(pack2x16float(h.zw));
        } else {
            y[o + 4u * g] = v.x;
            y[o + 4u * g + 1u] = v.y;
            y[o + 4u * g + 2u] = v.z;
            y[o + 4u * g + 3u] = v.w;
        }
    }
}
