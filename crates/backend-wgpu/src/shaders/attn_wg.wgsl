// attn_wg.wgsl: attention.wgsl's exchanges through workgroup memory, for
// devices without 32-wide subgroups (attn_sg.wgsl has the same functions).

var<workgroup> xch: array<vec4<f32>, WG>;

// v of invocation lid ^ m (m < 8). Every invocation must call it.
fn xor_vec4(v: vec4<f32>, m: u32, lid: u32) -> vec4<f32> {
    xch[lid] = v;
    workgroupBarrier();
    let r = xch[lid ^ m];
    workgroupBarrier();
    return r;
}

// The maximum of v over the workgroup. Every invocation must call it.
fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}
