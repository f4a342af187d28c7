// tg_x.wgsl: quant_tg.wgsl's activations as a storage binding, the packed
// layout an activation rounding wrote (act_common.wgsl's quantize_packed).

@group(0) @binding(1) var<storage, read> xv: array<vec4<u32>>;
