// wide_wg.wgsl: fast_wide.wgsl's reduction through workgroup memory
// (portable; wide_sg.wgsl has it through subgroups).

// The sums over a lane set's WIDE_LANES lanes of acc (up to four rows'
// partial products) and s (partial sums of squares), valid in every lane
// of the set. Every invocation must call it (barriers).
fn wide_sums(lid: u32, lane: u32, acc: vec4<f32>, s: f32) -> WideSums {
    wsh[lid] = bitcast<vec4<u32>>(acc);
    wsh[256u + (lid >> 2u)][lid & 3u] = bitcast<u32>(s);
    workgroupBarrier();
    for (var h = WIDE_LANES / 2u; h > 0u; h >>= 1u) {
        if (lane < h) {
            wsh[lid] = bitcast<vec4<u32>>(bitcast<vec4<f32>>(wsh[lid]) + bitcast<vec4<f32>>(wsh[lid + h]));
            let a = lid + h;
            let v = bitcast<f32>(wsh[256u + (lid >> 2u)][lid & 3u]) + bitcast<f32>(wsh[256u + (a >> 2u)][a & 3u]);
            wsh[256u + (lid >> 2u)][lid & 3u] = bitcast<u32>(v);
        }
        workgroupBarrier();
    }
    let ls = lid - lane;
    return WideSums(bitcast<vec4<f32>>(wsh[ls]), bitcast<f32>(wsh[256u + (ls >> 2u)][ls & 3u]));
}
