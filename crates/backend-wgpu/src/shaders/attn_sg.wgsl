// attn_sg.wgsl: attention.wgsl's exchanges through subgroup operations, for
// devices whose subgroups are 32 invocations of consecutive
// local_invocation_index (DeviceCaps::subgroup32); attn_wg.wgsl has the same
// functions through workgroup memory.

// v of invocation lid ^ m (m < 8: the same subgroup). Every invocation must
// call it.
fn xor_vec4(v: vec4<f32>, m: u32, lid: u32) -> vec4<f32> {
    return subgroupShuffleXor(v, m);
}

// The maximum of v over the workgroup. Every invocation must call it.
fn reduce_max(lid: u32, v: f32) -> f32 {
    let s = subgroupMax(v);
    if ((lid & 31u) == 0u) {
        red[lid >> 5u] = s;
    }
    workgroupBarrier();
    var r = red[0];
    for (var i = 1u; i < WG / 32u; i++) {
        r = max(r, red[i]);
    }
    workgroupBarrier();
    return r;
}
