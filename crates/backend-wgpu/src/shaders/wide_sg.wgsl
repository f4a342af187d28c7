// wide_sg.wgsl: fast_wide.wgsl's reduction through 32-wide subgroups of
// consecutive invocations (DeviceCaps::subgroup32): each subgroup sums its
// lanes, and the second subgroup of each lane set (WIDE_LANES = 64) hands
// its sums to the first through workgroup memory, one barrier in all
// (wide_wg.wgsl's tree takes seven).

fn wide_sums(lid: u32, lane: u32, acc: vec4<f32>, s: f32) -> WideSums {
    let a = subgroupAdd(acc);
    let q = subgroupAdd(s);
    let ls = lid / WIDE_LANES;
    if (lane == 32u) {
        wsh[ls] = bitcast<vec4<u32>>(a);
        wsh[4u + ls].x = bitcast<u32>(q);
    }
    workgroupBarrier();
    return WideSums(a + bitcast<vec4<f32>>(wsh[ls]), q + bitcast<f32>(wsh[4u + ls].x));
}
