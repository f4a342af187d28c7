// mm_split.wgsl: split-K for the fast mode's batch products (after
// quant.wgsl and mm_fast.wgsl or mm_coop.wgsl). A product with few tiles
// (a few hundred workgroups: a TinyLlama prompt's ffn_down has 256, each
// walking k = 5,632 in 176 chunks one after another) leaves most of a
// large GPU waiting on each workgroup's chain of loads. With a grid of z > 1
// (Op::encode, ops.rs's `mm_splits`) workgroup z of a plain batch takes
// only chunks z·per .. of k and writes its partial sums to `mm_part`;
// `mm_reduce`, the next dispatch, adds each output's partials in order of
// z and stores the sum as the product would have (accumulating, KV-cache
// rows). Deterministic: no atomics, no order between workgroups. The
// gathered mode (MM_GATHER) keeps z for its experts and never splits.
//
// mm_part: word 0 the split count (written by workgroup (0, 0, 0)), then
// from word 4 the partials, [z][token][row] over the step's tokens and the
// part's p.m rows. Where nothing splits, the op binds its y here.
@group(0) @binding(6) var<storage, read_write> mm_part: array<f32>;

// Set by mm_range: the split count (1: store directly) and this
// workgroup's split.
var<private> mm_nsplit: u32;
var<private> mm_z: u32;

const MM_PART_FIRST: u32 = 4u;

// Workgroup (0, 0, 0) of a split grid records the split count.
fn mm_split_header(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    if (MM_GATHER == 0u && nwg.z > 1u && wid.x == 0u && wid.y == 0u && wid.z == 0u && lid == 0u) {
        mm_part[0] = bitcast<f32>(nwg.z);
    }
}

// The chunks [x, y) of k that workgroup z of nz takes (all of them in the
// gathered mode or without a split).
fn mm_range(z: u32, nz: u32) -> vec2<u32> {
    let chunks = p.k >> 5u;
    if (MM_GATHER != 0u || nz <= 1u) {
        mm_nsplit = 1u;
        mm_z = 0u;
        return vec2<u32>(0u, chunks);
    }
    mm_nsplit = nz;
    mm_z = z;
    let per = (chunks + nz - 1u) / nz;
    let c0 = min(z * per, chunks);
    return vec2<u32>(c0, min(chunks, c0 + per));
}

// Output (t, r) of the tile (t below the tile's token count, r below p.m):
// stored, or this split's partial.
fn mm_out(t: u32, r: u32, v: f32) {
    if (mm_nsplit > 1u) {
        mm_part[MM_PART_FIRST + (mm_z * step.n_tokens + t) * p.m + r] = v;
    } else {
        store(mm_pair(t), r, v);
    }
}

// Each output's partials summed in order of split and stored.
// Grid: (ceil(m / 256), n_tokens).
@compute @workgroup_size(256)
fn mm_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.x * 256u + lid;
    let t = wid.y;
    if (r >= p.m) {
        return;
    }
    let n = step.n_tokens;
    let nz = bitcast<u32>(mm_part[0]);
    var v = 0.0;
    for (var z = 0u; z < nz; z++) {
        v += mm_part[MM_PART_FIRST + (z * n + t) * p.m + r];
    }
    store(t, r, v);
}
