// mm_fast.wgsl: the fast mode's product of a batch (after quant.wgsl and
// x_plain.wgsl): Y[t, r] (+)= W[r, :] · X[t, :] over float activations (rows
// of p.x_stride floats, not rounded to ggml's Q8 types) and a weight matrix
// of any GPU type, decoded by quant.wgsl's deq4. This is the portable entry
// point; mm_coop.wgsl has the one for devices with cooperative matrices.
//
// Tiles of 64 rows × 64 tokens, 32 weights of k (one chunk) per step: the
// chunk's weights are decoded once to f32 into workgroup memory (quant.wgsl's
// w_tile, x_tile, mm_fetch, mm_put: matmul's staging, a chunk ahead) and each
// invocation accumulates a 4×4 block of outputs (rows tx + 16i, tokens
// ty + 16j) in registers. The grid is the exact products' (Op::encode's
// Grid::Qdot): x over tokens, y over rows. With MM_GATHER (quant.wgsl) it
// is a mixture of experts' grouped product: z over experts, the tokens of
// a tile the pairs routed to its expert.

// Grid: (ceil(n_tokens / 64), ceil(m / 64), splits of k), gathered (..,
// experts).
@compute @workgroup_size(256)
fn mm_fast(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.y * TM;
    let tok0 = wid.x * TN;
    let n_tok = mm_group(wid.z, lid);
    if (tok0 >= n_tok) {
        return;
    }
    let tx = lid & 15u;
    let ty = lid >> 4u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    // Split-K (mm_split.wgsl): this workgroup's chunks of k.
    mm_split_header(wid, nwg, lid);
    let range = mm_range(wid.z, nwg.z);
    var st: MmStage;
    if (range.x < range.y) {
        st = mm_fetch(row0, tok0, lid, range.x);
    }
    for (var c = range.x; c < range.y; c++) {
        mm_put(lid, st);
        workgroupBarrier();
        if (c + 1u < range.y) {
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
    mm_fast_store(tok0 + ty, row0 + tx, n_tok, acc0);
    mm_fast_store(tok0 + ty + 16u, row0 + tx, n_tok, acc1);
    mm_fast_store(tok0 + ty + 32u, row0 + tx, n_tok, acc2);
    mm_fast_store(tok0 + ty + 48u, row0 + tx, n_tok, acc3);
}

// Outputs of token `tok` for rows row + 16·i (those inside the batch and
// matrix; gathered, tok indexes the expert's list and the outputs go to its
// pair's row): stored, or a split's partials (mm_split.wgsl's mm_out).
fn mm_fast_store(tok: u32, row: u32, n_tok: u32, v: vec4<f32>) {
    if (tok < n_tok) {
        for (var i = 0u; i < 4u; i++) {
            if (row + 16u * i < p.m) {
                mm_out(tok, row + 16u * i, v[i]);
            }
        }
    }
}
