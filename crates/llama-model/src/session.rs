//! [`Session`]: a KV cache, preallocated buffers and the forward pass.

use tensor_core::{AttentionParams, Backend, KvShape, KvType};

use crate::error::{ModelError, Result};
use crate::model::Model;
use crate::trace::{Observer, Step};

/// Which logits [`Session::forward`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsMode {
    /// Only the last token's: `[n_vocab]` (generation).
    Last,
    /// Every token's: `[n_tokens, n_vocab]` row-major (scoring, tests).
    All,
}

/// Which kernels compute the rows of a batch of several tokens.
///
/// Matrix products and attention sum in an order that depends on how many
/// rows they compute at once — llama.cpp's gemm / tiled / repacked kernels
/// and tinyBLAS for a batch, `ggml_vec_dot_*` / gemv for one token — so the
/// logits of a token can differ in the last bits with the way the prompt was
/// batched, and a model may amplify that (to ~0.2 in a logit for the
/// quantized synthetic test files, 0.9 for SmolLM2-135M Q4_1, where a
/// last-bit difference flips the rounding of an attention probability to
/// `f16` or of an activation to 8 bits). This option chooses between reproducing llama.cpp
/// and making every row independent of its batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchKernels {
    /// Mirrors llama.cpp's per-batch-size kernel choice: bit-exact with
    /// llama.cpp's logits for a batch and for a single token. Prefilling
    /// then decoding one token at a time can then differ from one batch of
    /// all tokens by what the batch kernels' other summation order makes of
    /// the model (exactly as in llama.cpp).
    #[default]
    LlamaCpp,
    /// Computes every row of a batch with the kernels of single-token
    /// decoding (one-row matrix products and attention), so a row's logits
    /// never depend on how the prompt was batched: prefill plus incremental
    /// decoding gives exactly the logits of one batch. Batches lose the speed
    /// of the batch kernels, and their logits are those llama.cpp gives when
    /// the tokens are decoded one at a time.
    RowConsistent,
}

/// How a session is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionOptions {
    /// Positions the KV cache holds; 0 means `min(context_length, 4096)`.
    pub n_ctx: usize,
    /// Most tokens computed at once (llama.cpp's `n_ubatch`); longer inputs are split.
    pub n_batch: usize,
    /// Element type of the KV cache; `F16` is llama.cpp's default and what
    /// reproduces its logits.
    pub kv_type: KvType,
    /// Which kernels compute a batch of several tokens (llama.cpp's, by default).
    pub batch_kernels: BatchKernels,
}

impl Default for SessionOptions {
    fn default() -> SessionOptions {
        SessionOptions {
            n_ctx: 0,
            n_batch: 512,
            kv_type: KvType::F16,
            batch_kernels: BatchKernels::LlamaCpp,
        }
    }
}

/// Activation buffers, sized once for `n_batch` rows (widths in comments).
struct RunState<Buf> {
    x: Buf,                       // (n_batch, n_embd) residual stream
    xn: Buf,                      // (n_batch, n_embd) normed residual
    q: Buf,                       // (n_batch, n_head * head_dim)
    k: Buf,                       // (n_batch, n_head_kv * head_dim)
    v: Buf,                       // (n_batch, n_head_kv * head_dim)
    kqv: Buf,                     // (n_batch, n_head * head_dim) attention output
    proj: Buf,                    // (n_batch, n_embd) output projections (attention, down)
    gate: Buf,                    // (n_batch, n_ff)
    up: Buf,                      // (n_batch, n_ff)
    act: Buf,                     // (n_batch, n_ff) silu(gate) * up
    row_io: Option<(Buf, Buf)>,   // (1, max width) ×2: one row in and out (RowConsistent)
    logits: Option<(Buf, usize)>, // (rows, n_vocab), grown on demand
}

/// One sequence being evaluated: its KV cache, buffers and position.
///
/// `forward` appends tokens to the cache and returns logits; `truncate`
/// rewinds (the next `forward` overwrites the dropped positions).
pub struct Session<'m, B: Backend> {
    model: &'m Model<B>,
    n_ctx: usize,
    n_batch: usize,
    batch_kernels: BatchKernels,
    kv: B::KvCache,
    n_past: usize,
    st: RunState<B::Buffer>,
    logits: Vec<f32>,
    host: Vec<f32>,
}

impl<'m, B: Backend> Session<'m, B> {
    /// Allocates the KV cache and buffers for `model`.
    pub fn new(model: &'m Model<B>, opts: &SessionOptions) -> Result<Session<'m, B>> {
        let c = model.config();
        let n_ctx = if opts.n_ctx == 0 {
            c.n_ctx_train.clamp(1, 4096)
        } else {
            opts.n_ctx
        };
        if opts.n_batch == 0 {
            return Err(ModelError::InvalidRequest(
                "n_batch must be positive".into(),
            ));
        }
        let nb = opts.n_batch.min(n_ctx);
        let b = model.backend();
        let kv = b.alloc_kv(&KvShape {
            n_layer: c.n_layer,
            n_ctx,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
            kv_type: opts.kv_type,
        })?;
        let buf = |w: usize| b.alloc(nb * w);
        let st = RunState {
            x: buf(c.n_embd)?,
            xn: buf(c.n_embd)?,
            q: buf(c.q_width())?,
            k: buf(c.kv_width())?,
            v: buf(c.kv_width())?,
            kqv: buf(c.q_width())?,
            proj: buf(c.n_embd)?,
            gate: buf(c.n_ff)?,
            up: buf(c.n_ff)?,
            act: buf(c.n_ff)?,
            row_io: match opts.batch_kernels {
                BatchKernels::LlamaCpp => None,
                BatchKernels::RowConsistent => {
                    let w = c.n_embd.max(c.q_width()).max(c.kv_width()).max(c.n_ff);
                    Some((b.alloc(w)?, b.alloc(w)?))
                }
            },
            logits: None,
        };
        Ok(Session {
            model,
            n_ctx,
            n_batch: nb,
            batch_kernels: opts.batch_kernels,
            kv,
            n_past: 0,
            st,
            logits: Vec::new(),
            host: Vec::new(),
        })
    }

    /// The model.
    pub fn model(&self) -> &'m Model<B> {
        self.model
    }

    /// Tokens in the KV cache.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// Which kernels compute a batch of several tokens.
    pub fn batch_kernels(&self) -> BatchKernels {
        self.batch_kernels
    }

    /// Positions the KV cache holds.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Empties the KV cache.
    pub fn reset(&mut self) {
        self.n_past = 0;
    }

    /// Keeps only the first `n` tokens of the cache.
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        if n > self.n_past {
            return Err(ModelError::InvalidRequest(format!(
                "cannot truncate to {n} tokens: the cache holds {}",
                self.n_past
            )));
        }
        self.n_past = n;
        Ok(())
    }

    /// Appends `tokens` to the sequence and returns their logits: the last
    /// token's (`[n_vocab]`) or every token's (`[n_tokens, n_vocab]`).
    pub fn forward(&mut self, tokens: &[u32], mode: LogitsMode) -> Result<&[f32]> {
        self.run(tokens, mode, None)
    }

    /// [`Session::forward`], reporting every step's values to `observer`.
    pub fn forward_traced(
        &mut self,
        tokens: &[u32],
        mode: LogitsMode,
        observer: &mut dyn Observer,
    ) -> Result<&[f32]> {
        self.run(tokens, mode, Some(observer))
    }

    fn run(
        &mut self,
        tokens: &[u32],
        mode: LogitsMode,
        mut obs: Option<&mut dyn Observer>,
    ) -> Result<&[f32]> {
        let c = self.model.config();
        if tokens.is_empty() {
            return Err(ModelError::InvalidRequest("empty batch".into()));
        }
        if let Some((index, &token)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= c.n_vocab)
        {
            return Err(ModelError::InvalidToken {
                token,
                index,
                n_vocab: c.n_vocab,
            });
        }
        if self.n_past + tokens.len() > self.n_ctx {
            return Err(ModelError::ContextOverflow {
                n_past: self.n_past,
                n_tokens: tokens.len(),
                n_ctx: self.n_ctx,
            });
        }
        let n_vocab = c.n_vocab;
        let rows_out = match mode {
            LogitsMode::Last => 1,
            LogitsMode::All => tokens.len(),
        };
        self.logits.clear();
        self.logits.resize(rows_out * n_vocab, 0.0);
        let chunks: Vec<&[u32]> = tokens.chunks(self.n_batch).collect();
        let mut row_out = 0;
        for (i, chunk) in chunks.iter().enumerate() {
            let last_chunk = i + 1 == chunks.len();
            let out_rows = match mode {
                LogitsMode::All => chunk.len(),
                LogitsMode::Last if last_chunk => 1,
                LogitsMode::Last => 0,
            };
            let o: Option<&mut dyn Observer> = match &mut obs {
                Some(o) => Some(&mut **o),
                None => None,
            };
            self.ubatch(chunk, out_rows, row_out, o)?;
            row_out += out_rows;
        }
        Ok(&self.logits)
    }

    /// Reads `n` values of `buf` and hands them to the observer, if any.
    #[allow(clippy::too_many_arguments)] // a private helper called with its context spelled out
    fn observe(
        b: &B,
        host: &mut Vec<f32>,
        obs: &mut Option<&mut dyn Observer>,
        layer: Option<usize>,
        step: Step,
        buf: &B::Buffer,
        offset: usize,
        n_rows: usize,
        width: usize,
    ) -> Result<()> {
        if let Some(o) = obs {
            host.resize(n_rows * width, 0.0);
            b.read(buf, offset, host)?;
            o.record(layer, step, n_rows, host);
        }
        Ok(())
    }

    /// Runs one batch of at most `n_batch` tokens at positions `n_past..`,
    /// writing the logits of its last `out_rows` tokens to rows
    /// `row_out..row_out + out_rows` of `self.logits`.
    fn ubatch(
        &mut self,
        tokens: &[u32],
        out_rows: usize,
        row_out: usize,
        mut obs: Option<&mut dyn Observer>,
    ) -> Result<()> {
        let m = self.model;
        let c = m.config();
        let b = m.backend();
        let w = &m.weights;
        let st = &mut self.st;
        let host = &mut self.host;
        let n = tokens.len();
        let pos0 = self.n_past;
        let (d, ff, qw, kvw) = (c.n_embd, c.n_ff, c.q_width(), c.kv_width());
        let attn = AttentionParams {
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
            scale: c.attn_scale,
        };
        let ff_factors = w.rope_freqs.as_ref();

        b.get_rows(&w.token_embd, tokens, &mut st.x);
        Self::observe(b, host, &mut obs, None, Step::Embedding, &st.x, 0, n, d)?;

        for (il, l) in w.layers.iter().enumerate() {
            let lay = Some(il);
            b.rms_norm(&st.x, &l.attn_norm, c.rms_eps, n, &mut st.xn);
            Self::observe(b, host, &mut obs, lay, Step::AttnNorm, &st.xn, 0, n, d)?;

            mm(b, &mut st.row_io, &l.wq, &st.xn, n, d, qw, &mut st.q);
            mm(b, &mut st.row_io, &l.wk, &st.xn, n, d, kvw, &mut st.k);
            mm(b, &mut st.row_io, &l.wv, &st.xn, n, d, kvw, &mut st.v);
            if let Some(bq) = &l.bq {
                b.add_bias(&mut st.q, bq, n);
            }
            if let Some(bk) = &l.bk {
                b.add_bias(&mut st.k, bk, n);
            }
            if let Some(bv) = &l.bv {
                b.add_bias(&mut st.v, bv, n);
            }
            b.rope(&mut st.q, n, c.n_head, pos0, &c.rope, ff_factors);
            b.rope(&mut st.k, n, c.n_head_kv, pos0, &c.rope, ff_factors);
            Self::observe(b, host, &mut obs, lay, Step::Q, &st.q, 0, n, qw)?;
            Self::observe(b, host, &mut obs, lay, Step::K, &st.k, 0, n, kvw)?;
            Self::observe(b, host, &mut obs, lay, Step::V, &st.v, 0, n, kvw)?;

            b.store_kv(&mut self.kv, il, pos0, n, &st.k, &st.v);
            attend(
                b,
                &mut st.row_io,
                &st.q,
                &self.kv,
                il,
                pos0,
                n,
                &attn,
                &mut st.kqv,
            );
            Self::observe(b, host, &mut obs, lay, Step::Kqv, &st.kqv, 0, n, qw)?;

            mm(b, &mut st.row_io, &l.wo, &st.kqv, n, qw, d, &mut st.proj);
            if let Some(bo) = &l.bo {
                b.add_bias(&mut st.proj, bo, n);
            }
            Self::observe(b, host, &mut obs, lay, Step::AttnOut, &st.proj, 0, n, d)?;
            b.add(&mut st.x, &st.proj, n * d);
            Self::observe(b, host, &mut obs, lay, Step::FfnInp, &st.x, 0, n, d)?;

            b.rms_norm(&st.x, &l.ffn_norm, c.rms_eps, n, &mut st.xn);
            Self::observe(b, host, &mut obs, lay, Step::FfnNorm, &st.xn, 0, n, d)?;
            mm(
                b,
                &mut st.row_io,
                &l.ffn_gate,
                &st.xn,
                n,
                d,
                ff,
                &mut st.gate,
            );
            mm(b, &mut st.row_io, &l.ffn_up, &st.xn, n, d, ff, &mut st.up);
            Self::observe(b, host, &mut obs, lay, Step::FfnGate, &st.gate, 0, n, ff)?;
            Self::observe(b, host, &mut obs, lay, Step::FfnUp, &st.up, 0, n, ff)?;
            b.swiglu(&st.gate, &st.up, n, ff, &mut st.act);
            Self::observe(b, host, &mut obs, lay, Step::Swiglu, &st.act, 0, n, ff)?;
            mm(
                b,
                &mut st.row_io,
                &l.ffn_down,
                &st.act,
                n,
                ff,
                d,
                &mut st.proj,
            );
            Self::observe(b, host, &mut obs, lay, Step::FfnOut, &st.proj, 0, n, d)?;
            b.add(&mut st.x, &st.proj, n * d);
            Self::observe(b, host, &mut obs, lay, Step::LayerOut, &st.x, 0, n, d)?;
        }
        self.n_past += n;

        if out_rows == 0 {
            return Ok(());
        }
        // The output rows are the batch's last `out_rows`: move them to the
        // front so the final norm and projection run on them alone.
        let first = n - out_rows;
        let src = if first == 0 {
            &st.x
        } else {
            b.copy(&st.x, first * d, &mut st.proj, 0, out_rows * d);
            &st.proj
        };
        b.rms_norm(src, &w.output_norm, c.rms_eps, out_rows, &mut st.xn);
        Self::observe(
            b,
            host,
            &mut obs,
            None,
            Step::ResultNorm,
            &st.xn,
            0,
            out_rows,
            d,
        )?;
        let n_vocab = c.n_vocab;
        let need = out_rows.max(st.logits.as_ref().map_or(0, |l| l.1));
        if st.logits.as_ref().is_none_or(|l| l.1 < out_rows) {
            st.logits = Some((b.alloc(need * n_vocab)?, need));
        }
        let (lbuf, _) = st.logits.as_mut().expect("allocated above");
        let output = w.output.as_ref().unwrap_or(&w.token_embd);
        let dst = &mut self.logits[row_out * n_vocab..(row_out + out_rows) * n_vocab];
        match &mut st.row_io {
            Some((row, _)) if out_rows > 1 => {
                for (r, dst_row) in dst.chunks_mut(n_vocab).enumerate() {
                    b.copy(&st.xn, r * d, row, 0, d);
                    b.matmul(output, row, 1, lbuf);
                    b.read(lbuf, 0, dst_row)?;
                }
            }
            _ => {
                b.matmul(output, &st.xn, out_rows, lbuf);
                b.read(lbuf, 0, dst)?;
            }
        }
        if let Some(o) = obs {
            o.record(None, Step::Logits, out_rows, dst);
        }
        Ok(())
    }
}

/// `out = x · Wᵀ` for `n` rows of `cols` values into rows of `rows` values:
/// one product for the whole batch, or — with the one-row buffers of
/// [`BatchKernels::RowConsistent`] — one single-row product per row, the
/// kernel a decoded token takes.
#[allow(clippy::too_many_arguments)] // the operation's inputs, spelled out
fn mm<B: Backend>(
    b: &B,
    row_io: &mut Option<(B::Buffer, B::Buffer)>,
    w: &B::Weight,
    x: &B::Buffer,
    n: usize,
    cols: usize,
    rows: usize,
    out: &mut B::Buffer,
) {
    match row_io {
        Some((row_in, row_out)) if n > 1 => {
            for r in 0..n {
                b.copy(x, r * cols, row_in, 0, cols);
                b.matmul(w, row_in, 1, row_out);
                b.copy(row_out, 0, out, r * rows, rows);
            }
        }
        _ => b.matmul(w, x, n, out),
    }
}

/// Attention of `n` query rows at positions `pos0..`: one call for the
/// batch, or — with [`BatchKernels::RowConsistent`]'s buffers — one
/// single-row call per row at its own position, as when decoding. The cache
/// already holds the batch's keys and values; the causal mask keeps row `t`
/// from reading past position `pos0 + t`, so it sees what decoding saw.
#[allow(clippy::too_many_arguments)] // the operation's inputs, spelled out
fn attend<B: Backend>(
    b: &B,
    row_io: &mut Option<(B::Buffer, B::Buffer)>,
    q: &B::Buffer,
    kv: &B::KvCache,
    layer: usize,
    pos0: usize,
    n: usize,
    params: &AttentionParams,
    out: &mut B::Buffer,
) {
    match row_io {
        Some((row_in, row_out)) if n > 1 => {
            let qw = params.n_head * params.head_dim;
            for t in 0..n {
                b.copy(q, t * qw, row_in, 0, qw);
                b.attention(row_in, kv, layer, pos0 + t, 1, params, row_out);
                b.copy(row_out, 0, out, t * qw, qw);
            }
        }
        _ => b.attention(q, kv, layer, pos0, n, params, out),
    }
}
