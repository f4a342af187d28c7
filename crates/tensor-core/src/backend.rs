//! The backend seam: the operations a LLaMA forward pass is made of, on opaque handles.

use crate::attention::{AttentionParams, KvShape, KvType};
use crate::error::{Result, TensorError};
use crate::graph::Graph;
use crate::recurrent::{self, DeltaNetInputs, DeltaNetParams, Unary};
use crate::rope::RopeParams;
use crate::tensor::Tensor;

/// A place where a model's weights live and its operations run (CPU, a GPU).
///
/// The model crate writes its forward pass once, against this trait; each
/// backend decides where memory lives and how each operation computes. All
/// shapes are implied by the arguments: activations are row-major
/// `[n_rows, width]` buffers of `f32`, one row per token, where the width
/// follows from the weight or parameters an operation receives. Shapes are
/// validated once, where data enters (loading a weight, sizing a buffer), so
/// the operations themselves do not return errors; a backend may panic on a
/// shape the model never produces.
///
/// The contract every backend keeps is numerical: each operation computes
/// what the ggml CPU operation named in its documentation computes, with the
/// same rounding of operands (activations quantized to the weight format's
/// `vec_dot_type`, queries and probabilities rounded to the KV cache type),
/// so that logits agree with llama.cpp to rounding.
pub trait Backend: Send + Sync {
    /// A weight resident on the backend: a matrix for [`Backend::matmul`] and
    /// [`Backend::get_rows`], or an `f32` vector (norm weight, bias, RoPE
    /// factors). The CPU keeps a view of the mapped file; a GPU uploads once.
    type Weight: Send + Sync;
    /// An `f32` activation buffer.
    type Buffer: Send;
    /// Keys and values of every layer for every position of a session.
    type KvCache: Send;

    /// A short name for messages (`"cpu"`, `"wgpu"`).
    fn name(&self) -> &'static str;

    /// Makes a 2-D weight (`shape [cols, rows]`, any supported block format)
    /// usable by `matmul` and `get_rows`. Fails for an unsupported type or
    /// rows that are not whole blocks.
    fn load_matrix(&self, tensor: &Tensor) -> Result<Self::Weight>;

    /// Makes a 1-D weight usable as an `f32` vector (converting it if stored in another format).
    fn load_vector(&self, tensor: &Tensor) -> Result<Self::Weight>;

    /// A zeroed buffer of `len` `f32` values.
    fn alloc(&self, len: usize) -> Result<Self::Buffer>;

    /// A KV cache of the given shape (contents undefined until stored).
    fn alloc_kv(&self, shape: &KvShape) -> Result<Self::KvCache>;

    /// `out[i] = table[ids[i]]` as `f32` rows (ggml_get_rows: the token embedding).
    /// Every id is below the table's row count (checked by the caller).
    fn get_rows(&self, table: &Self::Weight, ids: &[u32], out: &mut Self::Buffer);

    /// `out[r] = x[r] / sqrt(mean(x[r]²) + eps) * weight` for `n_rows` rows of
    /// width `weight.len()` (ggml_rms_norm, sum of squares in `f64`, then ggml_mul).
    fn rms_norm(
        &self,
        x: &Self::Buffer,
        weight: &Self::Weight,
        eps: f32,
        n_rows: usize,
        out: &mut Self::Buffer,
    );

    /// `out[b, r] = Σ_c W[r, c] · x[b, c]` for `n_rows` rows `b` (ggml_mul_mat:
    /// `x` quantized to the weight format's `vec_dot_type` first).
    fn matmul(&self, w: &Self::Weight, x: &Self::Buffer, n_rows: usize, out: &mut Self::Buffer);

    /// [`Backend::matmul`] of one expert's weights with the `n_rows` rows
    /// routed to it, in the order ggml's `MUL_MAT_ID` multiplies them (its
    /// kernels differ from `MUL_MAT`'s: `vec_dot` for float weights, the
    /// tiled K-quant kernel from 8 rows, a repacked format's gemv row by
    /// row). Returns `false`, computing nothing, where the backend has no
    /// such kernels (the default): the caller then multiplies the rows one
    /// at a time with [`Backend::matmul`].
    fn matmul_expert(
        &self,
        w: &Self::Weight,
        x: &Self::Buffer,
        n_rows: usize,
        out: &mut Self::Buffer,
    ) -> bool {
        let _ = (w, x, n_rows, out);
        false
    }

    /// `x[r] += bias` for `n_rows` rows of width `bias.len()` (ggml_add broadcast).
    fn add_bias(&self, x: &mut Self::Buffer, bias: &Self::Weight, n_rows: usize);

    /// Rotates in place every head of `n_rows` rows of `n_heads * rope.head_dim`
    /// values, row `r` at position `pos0 + r` (ggml_rope_ext; `freq_factors`
    /// divides each pair's angle: LLaMA-3 `rope_freqs`).
    fn rope(
        &self,
        x: &mut Self::Buffer,
        n_rows: usize,
        n_heads: usize,
        pos0: usize,
        rope: &RopeParams,
        freq_factors: Option<&Self::Weight>,
    );

    /// Writes the `n_rows` rows of `k` and `v` (`[n_rows, n_head_kv * head_dim]`)
    /// into `layer` of the cache at positions `pos0..pos0 + n_rows`, converted
    /// to the cache type (ggml_cpy into the KV cache).
    fn store_kv(
        &self,
        cache: &mut Self::KvCache,
        layer: usize,
        pos0: usize,
        n_rows: usize,
        k: &Self::Buffer,
        v: &Self::Buffer,
    );

    /// Causal grouped-query attention of `n_rows` query rows (`[n_rows,
    /// n_head * head_dim]`, row `t` at position `pos0 + t`) over positions
    /// `0..=pos0 + t` of `layer` of the cache; writes `[n_rows, n_head * head_dim]`.
    /// llama.cpp without flash attention: `K·Q` with `q` rounded to the cache
    /// type, scale, causal mask, ggml_soft_max, `V·P` with `P` rounded to the
    /// cache type. Like ggml_mul_mat, the order of the sums depends on
    /// `n_rows`: one row (decoding) sums as ggml_vec_dot_f16, several as
    /// llamafile's tinyBLAS — llama.cpp's own two orders.
    #[allow(clippy::too_many_arguments)] // one argument per input of the operation
    fn attention(
        &self,
        q: &Self::Buffer,
        cache: &Self::KvCache,
        layer: usize,
        pos0: usize,
        n_rows: usize,
        params: &AttentionParams,
        out: &mut Self::Buffer,
    );

    /// [`Backend::attention`] with a learned sink logit per query head
    /// (`sinks`: a vector of `n_head` values; gpt-oss): each head's softmax
    /// counts its sink as one more logit (`ggml_soft_max_add_sinks`,
    /// [`crate::attention::attention_sinks`]). The default refuses.
    #[allow(clippy::too_many_arguments)] // one argument per input of the operation
    fn attention_sinks(
        &self,
        q: &Self::Buffer,
        cache: &Self::KvCache,
        layer: usize,
        pos0: usize,
        n_rows: usize,
        params: &AttentionParams,
        sinks: &Self::Weight,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        let _ = (q, cache, layer, pos0, n_rows, params, sinks, out);
        Err(TensorError::Backend {
            backend: self.name(),
            message: "attention sinks are not supported".into(),
        })
    }

    /// gpt-oss's gated activation over `n_rows` rows of `width` values
    /// (`ggml_swiglu_oai`, [`crate::ops::swiglu_oai`]). The default
    /// computes on the host.
    #[allow(clippy::too_many_arguments)] // the operation's inputs, spelled out
    fn swiglu_oai(
        &self,
        gate: &Self::Buffer,
        up: &Self::Buffer,
        n_rows: usize,
        width: usize,
        alpha: f32,
        limit: f32,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        let n = n_rows * width;
        let (mut g, mut u) = (vec![0.0; n], vec![0.0; n]);
        self.read(gate, 0, &mut g)?;
        self.read(up, 0, &mut u)?;
        let mut o = vec![0.0; n];
        crate::ops::swiglu_oai(&g, &u, alpha, limit, &mut o);
        self.write(out, 0, &o)
    }

    /// `out[i] = silu(gate[i]) * up[i]` over `n_rows` rows of `width` values
    /// (ggml_swiglu_split; ggml's vector `expf` on each row's blocks of 8).
    fn swiglu(
        &self,
        gate: &Self::Buffer,
        up: &Self::Buffer,
        n_rows: usize,
        width: usize,
        out: &mut Self::Buffer,
    );

    /// `out[i] = gelu(gate[i]) * up[i]` over `n_rows` rows of `width` values
    /// (ggml_geglu_split: ggml's `f16` table of the tanh-approximated GELU).
    fn geglu(
        &self,
        gate: &Self::Buffer,
        up: &Self::Buffer,
        n_rows: usize,
        width: usize,
        out: &mut Self::Buffer,
    );

    /// `x[i] *= s` for `len` values (ggml_scale).
    fn scale(&self, x: &mut Self::Buffer, len: usize, s: f32);

    /// `x[i] = cap · tanh(x[i] / cap)` for `len` values (logit soft-capping:
    /// ggml_scale by `1/cap`, ggml_tanh, ggml_scale by `cap`).
    fn softcap(&self, x: &mut Self::Buffer, len: usize, cap: f32);

    /// Row `r` of `x` (rows of `width` values) times `factors[r]`, for
    /// `factors.len()` rows (ggml_mul by a per-row column: expert weights).
    fn scale_rows(&self, x: &mut Self::Buffer, factors: &[f32], width: usize);

    /// `x[i] += y[i]` for `len` values (ggml_add: the residual connection).
    fn add(&self, x: &mut Self::Buffer, y: &Self::Buffer, len: usize);

    /// Copies `len` values from `src[src_offset..]` to `dst[dst_offset..]`.
    fn copy(
        &self,
        src: &Self::Buffer,
        src_offset: usize,
        dst: &mut Self::Buffer,
        dst_offset: usize,
        len: usize,
    );

    /// Reads `out.len()` values from `src[offset..]` back to the host.
    fn read(&self, src: &Self::Buffer, offset: usize, out: &mut [f32]) -> Result<()>;

    /// Writes `data` from the host into `dst[offset..]`.
    fn write(&self, dst: &mut Self::Buffer, offset: usize, data: &[f32]) -> Result<()>;

    /// The values of a vector weight ([`Backend::load_vector`]) on the host.
    fn vector_values(&self, w: &Self::Weight) -> Result<Vec<f32>>;

    /// In place: `f` on `n_rows` rows of `width` values ([`Unary`]). The
    /// default computes on the host ([`recurrent::unary`]): the values are
    /// read back, computed by the CPU kernel and written again.
    fn unary(&self, x: &mut Self::Buffer, n_rows: usize, width: usize, f: Unary) -> Result<()> {
        let mut h = vec![0.0; n_rows * width];
        self.read(x, 0, &mut h)?;
        recurrent::unary(&mut h, width, f);
        self.write(x, 0, &h)
    }

    /// `x *= y` for `n_rows` rows of `width` values, `y` of the same shape
    /// or (`y_width` 1) one value per row (ggml_mul; [`recurrent::mul`]).
    /// The default computes on the host.
    fn mul(
        &self,
        x: &mut Self::Buffer,
        y: &Self::Buffer,
        n_rows: usize,
        width: usize,
        y_width: usize,
    ) -> Result<()> {
        let (mut a, mut b) = (vec![0.0; n_rows * width], vec![0.0; n_rows * y_width]);
        self.read(x, 0, &mut a)?;
        self.read(y, 0, &mut b)?;
        recurrent::mul(&mut a, &b, width);
        self.write(x, 0, &a)
    }

    /// `x[r] *= w` for `n_rows` rows of width `w.len()` (ggml_mul broadcast).
    /// The default computes on the host.
    fn mul_vec(&self, x: &mut Self::Buffer, w: &Self::Weight, n_rows: usize) -> Result<()> {
        let w = self.vector_values(w)?;
        let mut a = vec![0.0; n_rows * w.len()];
        self.read(x, 0, &mut a)?;
        recurrent::mul_rows(&mut a, &w);
        self.write(x, 0, &a)
    }

    /// `out = x / max(‖x‖, eps)` over groups of `group` of `len` values
    /// ([`recurrent::l2_norm`]). The default computes on the host.
    fn l2_norm(
        &self,
        x: &Self::Buffer,
        group: usize,
        eps: f32,
        len: usize,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        let (mut a, mut o) = (vec![0.0; len], vec![0.0; len]);
        self.read(x, 0, &mut a)?;
        recurrent::l2_norm(&a, group, eps, &mut o);
        self.write(out, 0, &o)
    }

    /// The short causal convolution of `n_rows` rows of `channels` values
    /// over the rolling `state` (`[channels, d_conv - 1]`), which it
    /// advances ([`recurrent::ssm_conv`]; `kernel` is the `f32` vector of
    /// `[d_conv, channels]` taps). The default computes on the host.
    #[allow(clippy::too_many_arguments)] // the operation's inputs, spelled out
    fn ssm_conv(
        &self,
        x: &Self::Buffer,
        kernel: &Self::Weight,
        state: &mut Self::Buffer,
        n_rows: usize,
        channels: usize,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        let w = self.vector_values(kernel)?;
        let (mut a, mut o) = (vec![0.0; n_rows * channels], vec![0.0; n_rows * channels]);
        let mut s = vec![0.0; w.len() - channels];
        self.read(x, 0, &mut a)?;
        self.read(state, 0, &mut s)?;
        recurrent::ssm_conv(&a, &w, &mut s, channels, &mut o);
        self.write(state, 0, &s)?;
        self.write(out, 0, &o)
    }

    /// The gated delta rule over `n_rows` tokens of one sequence, advancing
    /// `state` ([`recurrent::delta_net`]); writes `[n_rows, n_head_v ·
    /// head_dim]`. The default computes on the host.
    fn delta_net(
        &self,
        x: DeltaNetInputs<'_, Self::Buffer>,
        state: &mut Self::Buffer,
        n_rows: usize,
        p: &DeltaNetParams,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        let (kw, vw) = (p.n_head_k * p.head_dim, p.n_head_v * p.head_dim);
        let get = |b: &Self::Buffer, len: usize| -> Result<Vec<f32>> {
            let mut h = vec![0.0; len];
            self.read(b, 0, &mut h)?;
            Ok(h)
        };
        let (q, k, v) = (
            get(x.q, n_rows * kw)?,
            get(x.k, n_rows * kw)?,
            get(x.v, n_rows * vw)?,
        );
        let (g, beta) = (
            get(x.g, n_rows * p.n_head_v)?,
            get(x.beta, n_rows * p.n_head_v)?,
        );
        let mut s = get(state, p.state_len())?;
        let mut o = vec![0.0; n_rows * vw];
        let h = DeltaNetInputs {
            q: &q[..],
            k: &k[..],
            v: &v[..],
            g: &g[..],
            beta: &beta[..],
        };
        recurrent::delta_net(h, &mut s, p, &mut o);
        self.write(state, 0, &s)?;
        self.write(out, 0, &o)
    }

    /// `dst[r·dst_stride + i] = src[r·src_stride + src_offset + i]` for
    /// `i < width`, `r < n_rows` (an [`crate::graph::Op::Slice`] view made
    /// contiguous). The default copies row by row.
    #[allow(clippy::too_many_arguments)] // two strided row ranges, spelled out
    fn copy_rows(
        &self,
        src: &Self::Buffer,
        src_stride: usize,
        src_offset: usize,
        dst: &mut Self::Buffer,
        dst_stride: usize,
        width: usize,
        n_rows: usize,
    ) {
        for r in 0..n_rows {
            self.copy(src, r * src_stride + src_offset, dst, r * dst_stride, width);
        }
    }

    /// The backend's rewrite of a model graph before its weights are loaded
    /// (fusions: stacking products of one input into one, …); `dtype` gives
    /// a weight's element type. The default keeps the graph as it is, which
    /// is what an exact CPU backend must do.
    fn prepare_graph(
        &self,
        graph: Graph,
        dtype: &dyn Fn(&crate::graph::WeightSpec) -> Option<gguf_format::GgmlType>,
    ) -> Graph {
        let _ = dtype;
        graph
    }

    /// Loads a weight whose rows are those of `parts` one after another
    /// ([`crate::graph::WeightSpec::stack`]), for backends whose
    /// [`Backend::prepare_graph`] stacks weights. The default refuses.
    fn load_stacked(&self, parts: &[Tensor]) -> Result<Self::Weight> {
        Err(TensorError::Backend {
            backend: self.name(),
            message: format!("stacked weights ({} parts) are not supported", parts.len()),
        })
    }

    /// Compiles `graph` (over its loaded `weights`) into the backend's own
    /// schedule for one sequence, or `None` when the backend runs graphs
    /// node by node through the operations above (the default) or cannot
    /// compile this one.
    fn compile(
        &self,
        graph: &Graph,
        weights: &[Self::Weight],
        opts: &ProgramOptions,
    ) -> Result<Option<Box<dyn Program>>> {
        let _ = (graph, weights, opts);
        Ok(None)
    }
}

/// How a compiled [`Program`] is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramOptions {
    /// Positions of its KV cache.
    pub n_ctx: usize,
    /// Most tokens per step; longer inputs run in several.
    pub n_batch: usize,
    /// Element type of the KV cache.
    pub kv_type: KvType,
}

/// A graph compiled by a backend ([`Backend::compile`]) for one sequence:
/// it owns its activations and KV cache, and runs a batch of tokens at
/// consecutive positions in one submission.
pub trait Program: Send {
    /// Positions its KV cache holds.
    fn n_ctx(&self) -> usize;

    /// Runs `tokens` at positions `pos ..` (the cache holds positions
    /// `0..pos` from earlier calls; later ones are overwritten) and writes
    /// into `logits` the last token's logits (`all == false`, `[n_vocab]`) or
    /// every token's (`[tokens.len(), n_vocab]`). The caller has checked the
    /// token ids and that `pos + tokens.len() ≤ n_ctx`.
    fn run(&mut self, tokens: &[u32], pos: usize, all: bool, logits: &mut [f32]) -> Result<()>;

    /// As [`Program::run`] with `all == false`, but returns only the id of the
    /// largest logit (computed where the program runs; ties to the lowest id).
    fn run_greedy(&mut self, tokens: &[u32], pos: usize) -> Result<u32>;

    /// The program as `Any`, for callers that know its backend (benchmarks).
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}
