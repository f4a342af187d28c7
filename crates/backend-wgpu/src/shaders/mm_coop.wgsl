// mm_coop.wgsl: mm_fast.wgsl's product through cooperative matrices (wgpu's
// EXPERIMENTAL_COOPERATIVE_MATRIX, 16×16×16 f16 × f16 → f32 at subgroup
// scope: NVIDIA's tensor cores through VK_KHR_cooperative_matrix). Only
// devices that offer that configuration with 32-wide subgroups compile it
// (DeviceCaps::coop_f16_16); mm_fast stays the portable fallback.
//
// A workgroup of eight 32-wide subgroups computes 128 rows × 64 tokens;
// each subgroup a 32 × 32 eighth, as 2 × 2 accumulators C[r, t] (f32). Per
// step of 32 weights of k (one chunk), the chunk's weights of the 128 rows
// are decoded by quant.wgsl's deq4 and stored as f16 in `ca` (row-major: A
// = W, rows × k), the 64 tokens' activations converted to f16 in `cb`
// (token t's k values contiguous: B = Xᵀ, k × tokens, column-major), both
// loaded a chunk ahead into registers. Each activation staged serves 128
// rows (64 rows × 64 tokens with four subgroups, its first form: the
// activations, f32 in memory, were two thirds of what a chunk loads).
// Products accumulate in f32; the activations
// and dequantized weights are rounded to f16 (magnitudes clamped to f16's
// largest finite value), the fast mode's stated agreement (not the CPU's
// bits).
//
// The results go out through `cc`, one 16 × 16 f32 tile per subgroup
// (coopStore, column-major: token t's 16 rows contiguous), then bounds-
// checked stores (quant_io.wgsl's store: accumulation, KV-cache writes).

const CM: u32 = 128u; // rows per workgroup (ops.rs's MM_COOP_ROWS)
const CN: u32 = 64u;  // tokens per workgroup
// f16 elements between the rows of ca and the tokens of cb: 32 of k plus 8
// (80 bytes, a multiple of 16) so that the rows a load reads together fall
// in different banks.
const CS: u32 = 40u;
var<workgroup> ca: array<f16, 5120>; // CM × CS
var<workgroup> cb: array<f16, 2560>; // CN × CS
var<workgroup> cc: array<f32, 2048>; // 8 subgroups × 16 × 16

fn to_f16(v: vec4<f32>) -> vec4<f16> {
    return vec4<f16>(clamp(v, vec4<f32>(-65504.0), vec4<f32>(65504.0)));
}

// What invocation lid stages of chunk c, groups of four values, loaded a
// chunk ahead of their use. Every format but Q8_0: weight groups e = lid +
// 256j (row e / 8, group e % 8) in v0..v3 and the activation groups of
// tokens lid / 8 and lid / 8 + 32 in v4, v5. Q8_0: invocations 0..127 a
// row's whole block (9 aligned words for the 34 bytes, against three words
// for every four weights through deq4: the kernel's time went to its weight
// loads, a TinyLlama Q8_0 prompt of 512 tokens ran at 25,210 t/s on an H100
// with them left out against 11,766, both while a build loaded its host;
// staged so, its pp512 went from 14,112 to 17,360 t/s in sittings without),
// invocations 128..255 group j % 8 of four tokens each (j = lid − 128).
// (F16 rows staged so, by four 16-byte loads through a second binding of
// the weights, ran at 7,487 t/s against 22,562 the sitting before: F16
// keeps the groups.)
struct CoopStage {
    v0: vec4<f16>,
    v1: vec4<f16>,
    v2: vec4<f16>,
    v3: vec4<f16>,
    v4: vec4<f16>,
    v5: vec4<f16>,
    v6: vec4<f16>,
    v7: vec4<f16>,
}

// Quants 4j .. 4j + 3 of a Q8_0 block as weights: the block's words `prev`
// and `next` (quant_io.wgsl's q8_word; `odd`: the block starts two bytes
// into a word) times its scale d.
fn coop_q8(prev: u32, next: u32, odd: bool, d: f32) -> vec4<f16> {
    return to_f16(d * sext8(bytes4(q8_word(prev, next, !odd))));
}

// Chunk c of row r's Q8_0 block (rows past the matrix read its last row,
// whose products are not stored; gathered, the expert's row: mm_w0).
fn coop_q8_block(r: u32, c: u32) -> CoopStage {
    let b = mm_w0() + min(r, p.m - 1u) * p.row_bytes + c * 34u;
    let o = b >> 2u;
    let odd = (b & 2u) != 0u;
    let w0 = w[o];
    let w1 = w[o + 1u];
    let w2 = w[o + 2u];
    let w3 = w[o + 3u];
    let w4 = w[o + 4u];
    let w5 = w[o + 5u];
    let w6 = w[o + 6u];
    let w7 = w[o + 7u];
    let w8 = w[o + 8u];
    let dd = unpack2x16float(w0);
    let d = select(dd.x, dd.y, odd);
    return CoopStage(
        coop_q8(w0, w1, odd, d), coop_q8(w1, w2, odd, d), coop_q8(w2, w3, odd, d),
        coop_q8(w3, w4, odd, d), coop_q8(w4, w5, odd, d), coop_q8(w5, w6, odd, d),
        coop_q8(w6, w7, odd, d), coop_q8(w7, w8, odd, d));
}

// Group g of chunk c of tokens t, t + 16, t + 32, t + 48 (v0..v3).
fn coop_x4(t: u32, c: u32, g: u32) -> CoopStage {
    let xs = p.x_stride >> 2u;
    let n = step.n_tokens;
    let z = vec4<f16>(0.0h);
    return CoopStage(
        to_f16(mm_load_x(t, n, xs, c, g)), to_f16(mm_load_x(t + 16u, n, xs, c, g)),
        to_f16(mm_load_x(t + 32u, n, xs, c, g)), to_f16(mm_load_x(t + 48u, n, xs, c, g)),
        z, z, z, z);
}

fn coop_fetch(row0: u32, tok0: u32, lid: u32, c: u32) -> CoopStage {
    var st: CoopStage;
    if (FORMAT == 8u) {
        if (lid < 128u) {
            st = coop_q8_block(row0 + lid, c);
        } else {
            let j = lid & 127u;
            st = coop_x4(tok0 + (j >> 3u), c, j & 7u);
        }
        return st;
    }
    let r = lid >> 3u;
    let g = lid & 7u;
    let xs = p.x_stride >> 2u;
    let n_tok = step.n_tokens;
    return CoopStage(
        to_f16(mm_load_w(row0 + r, c, g)),
        to_f16(mm_load_w(row0 + r + 32u, c, g)),
        to_f16(mm_load_w(row0 + r + 64u, c, g)),
        to_f16(mm_load_w(row0 + r + 96u, c, g)),
        to_f16(mm_load_x(tok0 + r, n_tok, xs, c, g)),
        to_f16(mm_load_x(tok0 + r + 32u, n_tok, xs, c, g)),
        vec4<f16>(0.0h),
        vec4<f16>(0.0h));
}

fn coop_put4(tile: u32, o: u32, v: vec4<f16>) {
    if (tile == 0u) {
        ca[o] = v.x;
        ca[o + 1u] = v.y;
        ca[o + 2u] = v.z;
        ca[o + 3u] = v.w;
    } else {
        cb[o] = v.x;
        cb[o + 1u] = v.y;
        cb[o + 2u] = v.z;
        cb[o + 3u] = v.w;
    }
}

// Eight groups into one tile, at o, o + step, .., o + 7·step.
fn coop_put8(tile: u32, o: u32, step: u32, st: CoopStage) {
    coop_put4(tile, o, st.v0);
    coop_put4(tile, o + step, st.v1);
    coop_put4(tile, o + 2u * step, st.v2);
    coop_put4(tile, o + 3u * step, st.v3);
    coop_put4(tile, o + 4u * step, st.v4);
    coop_put4(tile, o + 5u * step, st.v5);
    coop_put4(tile, o + 6u * step, st.v6);
    coop_put4(tile, o + 7u * step, st.v7);
}

fn coop_put(lid: u32, st: CoopStage) {
    if (FORMAT == 8u) {
        if (lid < 128u) {
            coop_put8(0u, lid * CS, 4u, st);
        } else {
            let j = lid & 127u;
            let o = (j >> 3u) * CS + 4u * (j & 7u);
            let q = 16u * CS;
            coop_put4(1u, o, st.v0);
            coop_put4(1u, o + q, st.v1);
            coop_put4(1u, o + 2u * q, st.v2);
            coop_put4(1u, o + 3u * q, st.v3);
        }
        return;
    }
    let o = (lid >> 3u) * CS + 4u * (lid & 7u);
    let q = 32u * CS;
    coop_put4(0u, o, st.v0);
    coop_put4(0u, o + q, st.v1);
    coop_put4(0u, o + 2u * q, st.v2);
    coop_put4(0u, o + 3u * q, st.v3);
    coop_put4(1u, o, st.v4);
    coop_put4(1u, o + q, st.v5);
}

// Subgroup sg's accumulator for rows row.. + 15, tokens tok.. + 15 into y:
// through its tile of cc (every subgroup at once: the barriers are the
// workgroup's), 8 values per invocation, consecutive invocations on
// consecutive rows.
fn coop_out(v: coop_mat16x16<f32, C>, sg: u32, lane: u32, row: u32, tok: u32, n_tok: u32) {
    coopStore(v, &cc[sg * 256u], 16u);
    workgroupBarrier();
    for (var e = 0u; e < 8u; e++) {
        let i = e * 32u + lane;
        let r = row + (i & 15u);
        let t = tok + (i >> 4u);
        if (r < p.m && t < n_tok) {
            mm_out(t, r, cc[sg * 256u + i]);
        }
    }
    workgroupBarrier();
}

// Grid: (ceil(n_tokens / 64), ceil(m / 128), splits of k), as mm_fast but
// for the rows (gathered, as mm_fast: z over experts, quant.wgsl's
// MM_GATHER).
@compute @workgroup_size(256)
fn mm_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.y * CM;
    let tok0 = wid.x * CN;
    let n_tok = mm_group(wid.z, lid);
    if (tok0 >= n_tok) {
        return;
    }
    let sg = lid >> 5u;
    let lane = lid & 31u;
    // The subgroup's rows and tokens inside the tile.
    let sr = (sg & 3u) * 32u;
    let st = (sg >> 2u) * 32u;
    // Zero accumulators, loaded from a zeroed tile of cc (rather than a
    // zero-value constructor, an OpConstantNull of the matrix type in
    // SPIR-V, which not every driver may take).
    for (var e = 0u; e < 8u; e++) {
        cc[lid * 8u + e] = 0.0;
    }
    workgroupBarrier();
    var c00 = coopLoad<coop_mat16x16<f32, C>>(&cc[sg * 256u], 16u);
    var c01 = c00;
    var c10 = c00;
    var c11 = c00;
    // Split-K (mm_split.wgsl): this workgroup's chunks of k.
    mm_split_header(wid, nwg, lid);
    let range = mm_range(wid.z, nwg.z);
    var stage: CoopStage;
    if (range.x < range.y) {
        stage = coop_fetch(row0, tok0, lid, range.x);
    }
    for (var c = range.x; c < range.y; c++) {
        coop_put(lid, stage);
        workgroupBarrier();
        if (c + 1u < range.y) {
            stage = coop_fetch(row0, tok0, lid, c + 1u);
        }
        for (var kk = 0u; kk < 32u; kk += 16u) {
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&ca[sr * CS + kk], CS);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&ca[(sr + 16u) * CS + kk], CS);
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&cb[st * CS + kk], CS);
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&cb[(st + 16u) * CS + kk], CS);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
        }
        workgroupBarrier();
    }
    coop_out(c00, sg, lane, row0 + sr, tok0 + st, n_tok);
    coop_out(c01, sg, lane, row0 + sr, tok0 + st + 16u, n_tok);
    coop_out(c10, sg, lane, row0 + sr + 16u, tok0 + st, n_tok);
    coop_out(c11, sg, lane, row0 + sr + 16u, tok0 + st + 16u, n_tok);
}
