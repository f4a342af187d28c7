// act_wg.wgsl: the lane exchanges of act_common.wgsl and norm.wgsl through
// workgroup memory, for devices without 32-wide subgroups. With SG false
// the shaders take their workgroup-memory reductions instead, so these are
// only compiled, never called (act_sg.wgsl has the subgroup versions).

const SG: bool = false;
var<workgroup> xch_u: array<u32, 256>;

// v of invocation lid ^ m (m < 32). Every invocation must call it.
fn xor_u32(v: u32, m: u32, lid: u32) -> u32 {
    xch_u[lid] = v;
    workgroupBarrier();
    let r = xch_u[lid ^ m];
    workgroupBarrier();
    return r;
}

// v of invocation src of lid's group of 32. Every invocation must call it.
fn shfl_u32(v: u32, src: u32, lid: u32) -> u32 {
    xch_u[lid] = v;
    workgroupBarrier();
    let r = xch_u[(lid & 0xffffffe0u) | src];
    workgroupBarrier();
    return r;
}

// The largest v of lid's group of 32. Every invocation must call it.
fn max32_u32(v: u32, lid: u32) -> u32 {
    var m = v;
    for (var s = 16u; s > 0u; s >>= 1u) {
        m = max(m, xor_u32(m, s, lid));
    }
    return m;
}

// The smallest v of lid's group of 32. Every invocation must call it.
fn min32_u32(v: u32, lid: u32) -> u32 {
    var m = v;
    for (var s = 16u; s > 0u; s >>= 1u) {
        m = min(m, xor_u32(m, s, lid));
    }
    return m;
}

// The sum of v over lid's group of 32. Every invocation must call it.
fn add32_i32(v: i32, lid: u32) -> i32 {
    var m = v;
    for (var s = 16u; s > 0u; s >>= 1u) {
        m += i32(xor_u32(u32(m), s, lid));
    }
    return m;
}
