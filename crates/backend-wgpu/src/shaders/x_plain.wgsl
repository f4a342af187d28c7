// The activations a matrix-vector unit reads (quant.wgsl's `xv`): x itself.
// (fast.wgsl's `xv` makes them from a norm's or a SwiGLU's inputs instead.)
fn xv(i: u32) -> vec4<f32> {
    return x[i];
}
