// tg_sg.wgsl: the lane exchanges of quant_tg.wgsl and tg_fused.wgsl
// through subgroup operations, for devices whose subgroups are 32
// consecutive invocations (DeviceCaps::subgroup32, checked by a probe).
// tg_emu.wgsl has the same functions through workgroup memory.

// The invocation's index in its workgroup (tg_emu.wgsl's exchanges use it;
// set by entry points that may take either file).
var<private> sg_lid: u32;

fn sg_f32(v: f32, src: u32) -> f32 {
    return subgroupShuffle(v, src);
}

fn sg_vec2(v: vec2<f32>, src: u32) -> vec2<f32> {
    return subgroupShuffle(v, src);
}

fn sg_vec4(v: vec4<f32>, src: u32) -> vec4<f32> {
    return subgroupShuffle(v, src);
}

fn sg_xor_i32(v: i32, m: u32) -> i32 {
    return subgroupShuffleXor(v, m);
}

fn sg_xor_u32(v: u32, m: u32) -> u32 {
    return subgroupShuffleXor(v, m);
}

fn sg_max_f32(v: f32) -> f32 {
    return subgroupMax(v);
}

fn sg_add_f32(v: f32) -> f32 {
    return subgroupAdd(v);
}
