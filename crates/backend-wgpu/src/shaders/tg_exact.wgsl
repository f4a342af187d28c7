// tg_exact.wgsl: the exact single-token entry points over quant_tg.wgsl's
// products (`q4k_tg`, `q6k_tg`, `q5k_tg`), a subgroup of 32 per row, the
// activations from tg_x.wgsl's binding. The shader is fma.wgsl,
// quant_io.wgsl, tg_sg.wgsl, quant_tg.wgsl, tg_x.wgsl, then this file.

// Grid: (1, ceil(m / TG_ROWS), 1): a subgroup per row.
@compute @workgroup_size(128)
fn q4k_tg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
          @builtin(subgroup_invocation_id) t: u32) {
    let row_raw = wid.y * TG_ROWS + (lid >> 5u);
    let v = q4k_dot(min(row_raw, p.m - 1u), t);
    if (row_raw < p.m && t == 0u) {
        store(0u, row_raw, v);
    }
}

// Grid: as q4k_tg's.
@compute @workgroup_size(128)
fn q6k_tg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
          @builtin(subgroup_invocation_id) t: u32) {
    let row_raw = wid.y * TG_ROWS + (lid >> 5u);
    let row = min(row_raw, p.m - 1u);
    let r = q6k_dot(row, t);
    if (row_raw < p.m && t == 0u) {
        store(0u, row, r);
    }
}

// Grid: as q4k_tg's.
@compute @workgroup_size(128)
fn q5k_tg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
          @builtin(subgroup_invocation_id) t: u32) {
    let row_raw = wid.y * TG_ROWS + (lid >> 5u);
    let row = min(row_raw, p.m - 1u);
    let r = q5k_dot(row, t);
    if (row_raw < p.m && t == 0u) {
        store(0u, row, r);
    }
}
