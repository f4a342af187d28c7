// rope_common.wgsl: the rotation rope.wgsl applies, shared with
// tg_rope.wgsl (which applies it to a single token's query and key rows as
// the projection computes them). fma.wgsl comes first.

// The dimensions pair i (2i < n_dims) rotates: (2i, 2i + 1) in NORMAL mode,
// (i, i + n_dims / 2) in NEOX mode.
fn rope_pair(i: u32, n_dims: u32, neox: bool) -> vec2<u32> {
    if (neox) {
        return vec2<u32>(i, i + n_dims / 2u);
    }
    return vec2<u32>(2u * i, 2u * i + 1u);
}

// (a, b) rotated by (cos, sin) = cs, contracted as llama.cpp's build
// contracts it: the first product of each line fused into the subtraction
// or addition.
fn rope_rot(a: f32, b: f32, cs: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(fma_rn(a, cs.x, -(b * cs.y)), fma_rn(a, cs.y, b * cs.x));
}
