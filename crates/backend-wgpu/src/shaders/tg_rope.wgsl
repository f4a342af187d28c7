// tg_rope.wgsl: a single token's query, key (and value) projection with
// Q4_K weights (quant_tg.wgsl's q4k_dot) that also applies RoPE in NORMAL
// mode and writes the key and value rows into the KV caches, as rope.wgsl
// would from the projection's output: one dispatch instead of two for each
// layer of token generation. The shader is fma.wgsl, quant_io.wgsl,
// quant_tg.wgsl, rope_common.wgsl, then this file.
//
// The rows of the stacked product are [queries | keys | values]; NORMAL
// mode pairs dimensions (2i, 2i + 1), that is rows (2r, 2r + 1), which the
// subgroups 2s and 2s + 1 of one workgroup compute (TG_ROWS is even and
// every head starts at an even row), so the pair meets in workgroup memory.
// The rotation and the f16 rounding of cache writes are rope.wgsl's.

struct TgRopeParams {
    n_q: u32,      // query rows (heads · head_dim)
    n_k: u32,      // key rows (KV heads · head_dim), also floats per cache position
    n_v: u32,      // value rows stacked after the keys (0: none)
    head_dim: u32,
    n_dims: u32,   // rotated dimensions of each head (even, ≤ head_dim)
    at_pos: u32,   // cache writes: 1 f32 cache, 2 f16 cache (rounded)
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(6) var<storage, read> rope_cs: array<vec2<f32>>; // [pos][n_dims/2] (cos, sin)
@group(0) @binding(7) var<storage, read_write> q_out: array<f32>;
@group(0) @binding(8) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(9) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(10) var<uniform> rp: TgRopeParams;

var<workgroup> tg_val: array<f32, TG_ROWS>;

// Grid: as q4k_tg's.
@compute @workgroup_size(128)
fn q4k_tg_rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
               @builtin(subgroup_invocation_id) t: u32) {
    let s = lid >> 5u;
    let r = wid.y * TG_ROWS + s;
    let v = q4k_dot(min(r, p.m - 1u), t);
    if (t == 0u) {
        tg_val[s] = v;
    }
    workgroupBarrier();
    if (t != 0u || r >= p.m) {
        return;
    }
    let pos = step.pos;
    if (r >= rp.n_q + rp.n_k) {
        v_cache[pos * rp.n_k + (r - rp.n_q - rp.n_k)] = stored(rp.at_pos, v);
        return;
    }
    // Dimension i of its head (queries and keys both start on a head).
    let i = r % rp.head_dim;
    var out = v;
    if (i < rp.n_dims) {
        let e = rope_rot(tg_val[s & ~1u], tg_val[s | 1u], rope_cs[pos * (rp.n_dims / 2u) + i / 2u]);
        out = select(e.x, e.y, (i & 1u) == 1u);
    }
    if (r < rp.n_q) {
        q_out[r] = out;
    } else {
        k_cache[pos * rp.n_k + (r - rp.n_q)] = stored(rp.at_pos, out);
    }
}
