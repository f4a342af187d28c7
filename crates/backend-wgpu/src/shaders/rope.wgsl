// Rotary position embedding (ggml_rope_ext, modes NORMAL and NEOX).
//
// Rotates the first n_dims dimensions of every head of token t at position
// step.pos + t. NORMAL mode pairs dimensions (2i, 2i+1) (LLaMA's GGUF
// tensors are permuted for it); NEOX mode pairs (i, i + n_dims/2). The angle
// is pos · freq_scale · base^(−2i/n_dims), computed as ggml does:
// theta_scale^i with theta_scale = base^(−2/n_dims).
// Dimensions past n_dims are copied unchanged.

struct RopeParams {
    n_heads: u32,
    head_dim: u32,
    n_dims: u32,     // rotated dimensions (≤ head_dim, even)
    neox: u32,       // 1: NEOX pairing
    x_stride: u32,   // floats between tokens in x
    y_stride: u32,   // floats between tokens in y
    y_base: u32,     // float offset of the output
    at_pos: u32,     // 1: token index in y is counted from step.pos (KV cache write)
    theta_scale: f32,
    freq_scale: f32,
}

struct Step {
    n_tokens: u32,
    pos: u32,
    n_kv: u32,
    pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: RopeParams;
@group(0) @binding(3) var<uniform> step: Step;

// One invocation per (token, head, pair). Grid: (ceil(heads·head_dim/2 / 64), 1, tokens).
@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.head_dim / 2u;
    let idx = gid.x;
    if (idx >= p.n_heads * half) {
        return;
    }
    let tok = gid.z;
    let head = idx / half;
    let i = idx % half; // pair index
    var yt = tok;
    if (p.at_pos != 0u) {
        yt += step.pos;
    }
    let xo = tok * p.x_stride + head * p.head_dim;
    let yo = yt * p.y_stride + p.y_base + head * p.head_dim;
    var i0: u32;
    var i1: u32;
    if (p.neox != 0u) {
        i0 = i;
        i1 = i + p.n_dims / 2u;
    } else {
        i0 = 2u * i;
        i1 = 2u * i + 1u;
    }
    if (2u * i >= p.n_dims) {
        // Unrotated tail (partial rotary): copy this pair's two dimensions.
        y[yo + 2u * i] = x[xo + 2u * i];
        y[yo + 2u * i + 1u] = x[xo + 2u * i + 1u];
        return;
    }
    let pos = f32(step.pos + tok);
    let theta = pos * p.freq_scale * pow(p.theta_scale, f32(i));
    let c = cos(theta);
    let s = sin(theta);
    let a = x[xo + i0];
    let b = x[xo + i1];
    y[yo + i0] = a * c - b * s;
    y[yo + i1] = a * s + b * c;
}
