// act_sg.wgsl: the lane exchanges of act_common.wgsl and norm.wgsl through
// subgroup operations, for devices whose subgroups are 32 invocations of
// consecutive local_invocation_index (DeviceCaps::subgroup32). With SG true
// the shaders reduce within subgroups and meet in workgroup memory once
// (act_wg.wgsl has the same functions through workgroup memory).

const SG: bool = true;

// v of invocation lid ^ m (m < 32). Every invocation must call it.
fn xor_u32(v: u32, m: u32, lid: u32) -> u32 {
    return subgroupShuffleXor(v, m);
}

// v of invocation src of lid's group of 32. Every invocation must call it.
fn shfl_u32(v: u32, src: u32, lid: u32) -> u32 {
    return subgroupShuffle(v, src);
}

// The largest v of the subgroup (32 invocations). Every invocation must call it.
fn max32_u32(v: u32, lid: u32) -> u32 {
    return subgroupMax(v);
}

// The smallest v of the subgroup. Every invocation must call it.
fn min32_u32(v: u32, lid: u32) -> u32 {
    return subgroupMin(v);
}

// The sum of v over the subgroup. Every invocation must call it.
fn add32_i32(v: i32, lid: u32) -> i32 {
    return subgroupAdd(v);
}
