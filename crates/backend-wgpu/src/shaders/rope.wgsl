// Rotary position embedding (ggml_rope_ext, modes NORMAL and NEOX).
//
// Rotates the first n_dims dimensions of every head of token t at position
// step.pos + t. NORMAL mode pairs dimensions (2i, 2i+1) (LLaMA's GGUF
// tensors are permuted for it); NEOX mode pairs (i, i + n_dims/2).
// Dimensions past n_dims are copied unchanged.
//
// cos and sin come from a table made once on the CPU by tensor-core's
// `rope_cache` (ggml_rope_cache_init's arithmetic: the angle multiplied by
// base^(−2/n_dims) pair after pair in f32, libm's cosf/sinf): GPU sin/cos
// are far less accurate than libm at angles of thousands of radians.
// The rotation (rope_common.wgsl) is contracted as llama.cpp's build
// contracts it: the first product of each line fused into the
// subtraction/addition.

struct RopeParams {
    n_heads: u32,
    head_dim: u32,
    n_dims: u32,     // rotated dimensions (≤ head_dim, even)
    neox: u32,       // 1: NEOX pairing
    x_stride: u32,   // floats between tokens in x
    y_stride: u32,   // floats between tokens in y
    y_base: u32,     // float offset of the output
    at_pos: u32,     // KV cache write: token index in y counted from step.pos; 1 f32 cache, 2 f16 cache
    x_base: u32,     // float offset of x's first token
    n_heads2: u32,   // heads after the first n_heads of x, written to y2 (keys with queries)
    y2_stride: u32,  // floats between tokens in y2
    at_pos2: u32,    // at_pos for y2
    n_heads3: u32,   // heads after those, copied unrotated to y3 (values with queries and keys)
    y3_stride: u32,  // floats between tokens in y3
    at_pos3: u32,    // at_pos for y3
    pad: u32,
}

struct Step {
    n_tokens: u32,
    pos: u32,
    n_kv: u32,
    zero: u32,    // 0 at run time, unknown to the compiler: see fma.wgsl
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: RopeParams;
@group(0) @binding(3) var<uniform> step: Step;
@group(0) @binding(4) var<storage, read> table: array<vec2<f32>>; // [pos][n_dims/2] (cos, sin)
@group(0) @binding(5) var<storage, read_write> y2: array<f32>;
@group(0) @binding(6) var<storage, read_write> y3: array<f32>;

fn put(second: bool, i: u32, v: f32) {
    if (second) {
        y2[i] = stored(p.at_pos2, v);
    } else {
        y[i] = stored(p.at_pos, v);
    }
}

// One invocation per (token, head, pair). Grid: (ceil(heads·head_dim/2 / 64), 1, tokens).
@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.head_dim / 2u;
    let idx = gid.x;
    if (idx >= (p.n_heads + p.n_heads2 + p.n_heads3) * half) {
        return;
    }
    let tok = gid.z;
    let head = idx / half;
    let i = idx % half; // pair index
    if (head >= p.n_heads + p.n_heads2) {
        // A value head: dimensions 2i, 2i + 1 copied.
        let xo = p.x_base + tok * p.x_stride + head * p.head_dim + 2u * i;
        var yt = tok;
        if (p.at_pos3 != 0u) {
            yt += step.pos;
        }
        let yo = yt * p.y3_stride + (head - p.n_heads - p.n_heads2) * p.head_dim + 2u * i;
        y3[yo] = stored(p.at_pos3, x[xo]);
        y3[yo + 1u] = stored(p.at_pos3, x[xo + 1u]);
        return;
    }
    let second = head >= p.n_heads;
    let xo = p.x_base + tok * p.x_stride + head * p.head_dim;
    var yt = tok;
    var yo: u32;
    if (second) {
        if (p.at_pos2 != 0u) {
            yt += step.pos;
        }
        yo = yt * p.y2_stride + (head - p.n_heads) * p.head_dim;
    } else {
        if (p.at_pos != 0u) {
            yt += step.pos;
        }
        yo = yt * p.y_stride + p.y_base + head * p.head_dim;
    }
    if (2u * i >= p.n_dims) {
        // Unrotated tail (partial rotary): copy this pair's two dimensions.
        put(second, yo + 2u * i, x[xo + 2u * i]);
        put(second, yo + 2u * i + 1u, x[xo + 2u * i + 1u]);
        return;
    }
    let e = rope_pair(i, p.n_dims, p.neox != 0u);
    let r = rope_rot(x[xo + e.x], x[xo + e.y], table[(step.pos + tok) * (p.n_dims / 2u) + i]);
    put(second, yo + e.x, r.x);
    put(second, yo + e.y, r.y);
}
