// tg_emu.wgsl: tg_sg.wgsl's lane exchanges through workgroup memory, each
// group of 32 consecutive invocations of a workgroup (of at most 256)
// taken as a subgroup: tg_fused.wgsl then runs on any device, llvmpipe
// included, with the arithmetic of the 32-wide kernels (for tests; the
// barriers make it slow). Every invocation of the workgroup must call each
// function (they synchronise).

var<private> sg_lid: u32;
var<workgroup> sg_x: array<vec4<u32>, 256>;

// v (four words) of lane src of the caller's group of 32.
fn sg_xchg(v: vec4<u32>, src: u32) -> vec4<u32> {
    sg_x[sg_lid] = v;
    workgroupBarrier();
    let r = sg_x[(sg_lid & 0xffffffe0u) | src];
    workgroupBarrier();
    return r;
}

fn sg_f32(v: f32, src: u32) -> f32 {
    return bitcast<f32>(sg_xchg(vec4<u32>(bitcast<u32>(v), 0u, 0u, 0u), src).x);
}

fn sg_vec2(v: vec2<f32>, src: u32) -> vec2<f32> {
    return bitcast<vec2<f32>>(sg_xchg(vec4<u32>(bitcast<vec2<u32>>(v), 0u, 0u), src).xy);
}

fn sg_vec4(v: vec4<f32>, src: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(sg_xchg(bitcast<vec4<u32>>(v), src));
}

fn sg_xor_u32(v: u32, m: u32) -> u32 {
    return sg_xchg(vec4<u32>(v, 0u, 0u, 0u), (sg_lid & 31u) ^ m).x;
}

fn sg_xor_i32(v: i32, m: u32) -> i32 {
    return bitcast<i32>(sg_xor_u32(bitcast<u32>(v), m));
}

// Every lane reads the group's 32 values in the same order, so all get
// the same result.
fn sg_max_f32(v: f32) -> f32 {
    sg_x[sg_lid] = vec4<u32>(bitcast<u32>(v), 0u, 0u, 0u);
    workgroupBarrier();
    let g = sg_lid & 0xffffffe0u;
    var m = bitcast<f32>(sg_x[g].x);
    for (var i = 1u; i < 32u; i++) {
        m = max(m, bitcast<f32>(sg_x[g + i].x));
    }
    workgroupBarrier();
    return m;
}

fn sg_add_f32(v: f32) -> f32 {
    sg_x[sg_lid] = vec4<u32>(bitcast<u32>(v), 0u, 0u, 0u);
    workgroupBarrier();
    let g = sg_lid & 0xffffffe0u;
    var s = 0.0;
    for (var i = 0u; i < 32u; i++) {
        s += bitcast<f32>(sg_x[g + i].x);
    }
    workgroupBarrier();
    return s;
}
