//! [`Session`]: a KV cache, preallocated buffers and the forward pass.

use tensor_core::{AttentionParams, Backend, KvShape, KvType, Program, ProgramOptions};

use crate::graph::{ExpertAct, Gating, Graph, Moe, NodeId, Op};

use crate::error::{ModelError, Result};
use crate::model::Model;
use crate::trace::Observer;

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
    /// Sequences the session holds, each with its own KV cache of `n_ctx`
    /// positions (llama.cpp's `n_seq_max`); [`Session::forward_batch`]
    /// mixes tokens of several in one batch.
    pub n_seq: usize,
    /// Lets the backend compile the graph into its own schedule
    /// ([`Backend::compile`]: the GPU's dispatches, built once) when the
    /// session holds one sequence with llama.cpp's batch kernels; `false`
    /// runs every node through the backend's operations, which
    /// [`Session::forward_traced`] needs.
    pub compile: bool,
    /// Most snapshots of recurrent states kept per sequence, for models
    /// with recurrent layers (`qwen35`): a recurrent state cannot be cut
    /// back to an earlier position, so the session copies each sequence's
    /// states at chosen positions ([`Session::rewind_point`]), and rewinds
    /// to the longest saved prefix. Each snapshot holds one sequence's
    /// states ([`Session::recurrent_state_bytes`]: 19.3 MiB for
    /// Qwen3.5-0.8B's 18 Gated DeltaNet layers); past the cap, the least
    /// recently used is dropped. 0 keeps none: a recurrent sequence then
    /// rewinds only to its end or to the start. Ignored for models without
    /// recurrent layers.
    pub state_snapshots: usize,
    /// Within a batch, a recurrent sequence's states are also saved at
    /// every position that is a multiple of this (0: never), so a long
    /// prompt can be reused up to its last multiple before a change.
    pub snapshot_interval: usize,
}

impl Default for SessionOptions {
    fn default() -> SessionOptions {
        SessionOptions {
            n_ctx: 0,
            n_batch: 512,
            kv_type: KvType::F16,
            batch_kernels: BatchKernels::LlamaCpp,
            n_seq: 1,
            compile: true,
            state_snapshots: 8,
            snapshot_interval: 512,
        }
    }
}

/// Tokens of one or several sequences to run at once (llama.cpp's
/// `llama_batch`): each token with its position and sequence, and whether
/// its logits are wanted.
///
/// A sequence's tokens continue it: within the batch, in order, the tokens
/// of sequence `s` take positions `n_past(s)`, `n_past(s) + 1`, … (rewind
/// with [`Session::truncate_seq`] first to overwrite). Tokens of different
/// sequences may interleave; the matrix products run over all of them at
/// once, attention over each sequence's own cache.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// Token ids.
    pub tokens: &'a [u32],
    /// Position of each token in its sequence.
    pub pos: &'a [usize],
    /// Sequence of each token (`< n_seq`).
    pub seq: &'a [usize],
    /// Whether each token's logits are wanted.
    pub output: &'a [bool],
}

/// Consecutive rows of a batch that continue one sequence at consecutive positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    start: usize,
    len: usize,
    seq: usize,
    pos0: usize,
}

/// Part of a [`Run`] that a recurrent op computes in one call: a run is cut
/// where a snapshot of its sequence's states is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    run: Run,
    /// The snapshot (index into `Session::pending`) that takes the states
    /// reached at the end of this piece.
    snap: Option<usize>,
}

/// One sequence's recurrent states after its first `pos` tokens.
struct Snapshot<Buf> {
    seq: usize,
    pos: usize,
    /// A copy of each recurrent state slot (as `Session::states`).
    states: Vec<Buf>,
    /// When it was last taken or restored (`Session::clock`), for eviction.
    used: u64,
}

/// Where each node's values live: a slot per node, shared by nodes whose
/// lifetimes do not overlap, computed once from the graph.
struct Plan {
    /// The slot of each node.
    slot: Vec<usize>,
    /// Whether the node overwrites its first input's slot.
    in_place: Vec<bool>,
    /// Slots in all.
    n_slots: usize,
}

impl Plan {
    fn new(g: &Graph) -> Plan {
        let n = g.nodes.len();
        let mut last_use = vec![0usize; n];
        for (i, node) in g.nodes.iter().enumerate() {
            last_use[i] = i;
            for x in node.op.inputs() {
                last_use[x.0] = i;
            }
        }
        last_use[g.output.0] = usize::MAX;
        let mut slot = vec![0usize; n];
        let mut in_place = vec![false; n];
        let mut free: Vec<usize> = Vec::new();
        let mut n_slots = 0;
        for (i, node) in g.nodes.iter().enumerate() {
            let inputs = node.op.inputs();
            let first = inputs.first().copied();
            let reuse = match first {
                Some(x) if node.op.in_place() && last_use[x.0] == i => {
                    // The other inputs must not share the slot (they are live too).
                    !inputs[1..].iter().any(|y| slot[y.0] == slot[x.0])
                }
                _ => false,
            };
            if reuse {
                slot[i] = slot[first.expect("checked").0];
                in_place[i] = true;
            } else {
                slot[i] = free.pop().unwrap_or_else(|| {
                    n_slots += 1;
                    n_slots - 1
                });
            }
            for x in inputs {
                if last_use[x.0] == i
                    && !(in_place[i] && Some(x) == first)
                    && !free.contains(&slot[x.0])
                    && slot[x.0] != slot[i]
                {
                    free.push(slot[x.0]);
                }
            }
        }
        Plan {
            slot,
            in_place,
            n_slots,
        }
    }
}

/// A growable backend buffer.
struct Slot<Buf> {
    buf: Option<Buf>,
    cap: usize,
}

impl<Buf> Slot<Buf> {
    fn empty() -> Slot<Buf> {
        Slot { buf: None, cap: 0 }
    }
}

/// Makes `slot` hold at least `len` values (its contents are lost if it grows).
fn ensure<B: Backend>(b: &B, slot: &mut Slot<B::Buffer>, len: usize) -> Result<()> {
    if slot.buf.is_none() || slot.cap < len {
        slot.buf = Some(b.alloc(len.max(1))?);
        slot.cap = len.max(1);
    }
    Ok(())
}

/// Scratch space of the mixture-of-experts op.
struct MoeScratch<Buf> {
    router: Slot<Buf>,
    row: Slot<Buf>,
    expert: ExpertScratch<Buf>,
    down: Slot<Buf>,
    slots: Slot<Buf>,
    tmp: Slot<Buf>,
    host: Vec<f32>,
}

/// One expert's scratch: its gate, up and activation rows, and one row in
/// and out for products of one row at a time.
struct ExpertScratch<Buf> {
    gate: Slot<Buf>,
    up: Slot<Buf>,
    act: Slot<Buf>,
    one: (Slot<Buf>, Slot<Buf>),
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
    /// KV cache layers per sequence (sequence `s` uses layers `s·n_kv_layers ..`).
    n_kv_layers: usize,
    n_past: Vec<usize>,
    /// This batch's runs of sequences.
    runs: Vec<Run>,
    /// This batch's rows whose logits are wanted.
    out_idx: Vec<usize>,
    /// Rows of one run, copied out when a batch holds several (q, k, v, out).
    run_bufs: [Slot<B::Buffer>; 4],
    plan: Plan,
    slots: Vec<Slot<B::Buffer>>,
    rows: Vec<usize>,
    row_io: Option<(B::Buffer, B::Buffer)>,
    moe: MoeScratch<B::Buffer>,
    logits: Vec<f32>,
    host: Vec<f32>,
    /// The backend's compiled graph, when it made one: it holds its own KV
    /// cache and runs every batch.
    program: Option<Box<dyn Program>>,
    /// Values of each recurrent state slot ([`Op::SsmConv`], [`Op::DeltaNet`]).
    state_len: Vec<usize>,
    /// Recurrent states: sequence `s` uses `states[s·state_len.len() ..]`.
    states: Vec<B::Buffer>,
    /// Rows of one run, copied out when a batch holds several (recurrent ops).
    rec_bufs: [Slot<B::Buffer>; 6],
    /// Saved recurrent states of each sequence, by position.
    snapshots: Vec<Vec<Snapshot<B::Buffer>>>,
    /// [`SessionOptions::state_snapshots`].
    max_snapshots: usize,
    /// [`SessionOptions::snapshot_interval`].
    snapshot_interval: usize,
    /// Ticks once per snapshot taken or restored.
    clock: u64,
    /// State buffers of dropped snapshots, reused for new ones.
    spare: Vec<Vec<B::Buffer>>,
    /// Per sequence, for the batch being run: the position after its last
    /// token, and how many tokens it has in the batch.
    batch_end: Vec<(usize, usize)>,
    /// This ubatch's runs, cut where snapshots are taken (recurrent ops).
    pieces: Vec<Piece>,
    /// Snapshots this ubatch takes; kept once it has run.
    pending: Vec<Snapshot<B::Buffer>>,
}

/// The size of every recurrent state slot the graph's nodes use.
fn state_lens(g: &Graph) -> Vec<usize> {
    let mut lens: Vec<usize> = Vec::new();
    for n in &g.nodes {
        let (slot, len) = match &n.op {
            Op::SsmConv { kernel, state, .. } => {
                let taps: usize = g.weights[kernel.0].shape.iter().product();
                (*state, taps - n.width)
            }
            Op::DeltaNet { state, params, .. } => (*state, params.state_len()),
            _ => continue,
        };
        if lens.len() <= slot {
            lens.resize(slot + 1, 0);
        }
        lens[slot] = len;
    }
    lens
}

/// Zeroed recurrent states of one sequence.
fn alloc_states<B: Backend>(b: &B, lens: &[usize]) -> Result<Vec<B::Buffer>> {
    lens.iter().map(|&n| Ok(b.alloc(n)?)).collect()
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
        let g = model.graph();
        if opts.n_seq == 0 {
            return Err(ModelError::InvalidRequest("n_seq must be positive".into()));
        }
        let n_kv_layers = g.n_kv_layers.max(1);
        let program =
            if opts.compile && opts.n_seq == 1 && opts.batch_kernels == BatchKernels::LlamaCpp {
                let po = ProgramOptions {
                    n_ctx,
                    n_batch: nb,
                    kv_type: opts.kv_type,
                };
                b.compile(g, &model.weights, &po)?
            } else {
                None
            };
        // A compiled graph keeps its own cache: the node-by-node one is empty.
        let kv_layers = match program {
            Some(_) => 0,
            None => n_kv_layers.checked_mul(opts.n_seq).ok_or_else(|| {
                ModelError::InvalidRequest(format!("{} sequences is too many", opts.n_seq))
            })?,
        };
        let kv = b.alloc_kv(&KvShape {
            n_layer: kv_layers,
            n_ctx,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
            kv_type: opts.kv_type,
        })?;
        let plan = Plan::new(g);
        let slots = (0..plan.n_slots).map(|_| Slot::empty()).collect();
        let state_len = state_lens(g);
        let mut states = Vec::new();
        for _ in 0..opts.n_seq {
            states.extend(alloc_states(b, &state_len)?);
        }
        let row_io = match opts.batch_kernels {
            BatchKernels::LlamaCpp => None,
            BatchKernels::RowConsistent => {
                let w = g.nodes.iter().map(|n| n.width).max().unwrap_or(1);
                Some((b.alloc(w)?, b.alloc(w)?))
            }
        };
        let moe = MoeScratch {
            router: Slot::empty(),
            row: Slot::empty(),
            expert: ExpertScratch {
                gate: Slot::empty(),
                up: Slot::empty(),
                act: Slot::empty(),
                one: (Slot::empty(), Slot::empty()),
            },
            down: Slot::empty(),
            slots: Slot::empty(),
            tmp: Slot::empty(),
            host: Vec::new(),
        };
        Ok(Session {
            model,
            n_ctx,
            n_batch: nb,
            batch_kernels: opts.batch_kernels,
            kv,
            n_kv_layers,
            n_past: vec![0; opts.n_seq],
            runs: Vec::new(),
            out_idx: Vec::new(),
            run_bufs: [Slot::empty(), Slot::empty(), Slot::empty(), Slot::empty()],
            rows: vec![0; g.nodes.len()],
            plan,
            slots,
            row_io,
            moe,
            logits: Vec::new(),
            host: Vec::new(),
            program,
            state_len,
            states,
            rec_bufs: std::array::from_fn(|_| Slot::empty()),
            snapshots: (0..opts.n_seq).map(|_| Vec::new()).collect(),
            max_snapshots: opts.state_snapshots,
            snapshot_interval: opts.snapshot_interval,
            clock: 0,
            spare: Vec::new(),
            batch_end: vec![(0, 0); opts.n_seq],
            pieces: Vec::new(),
            pending: Vec::new(),
        })
    }

    /// Whether the backend compiled the graph ([`SessionOptions::compile`]).
    pub fn is_compiled(&self) -> bool {
        self.program.is_some()
    }

    /// The compiled graph, when the backend made one (for benchmarks that
    /// know the backend: [`Program::as_any_mut`]).
    pub fn program_mut(&mut self) -> Option<&mut (dyn Program + 'static)> {
        self.program.as_deref_mut()
    }

    /// Appends `tokens` and returns the id of the last one's largest logit
    /// (ties to the lowest id): on a compiled graph only that id comes back
    /// from the device.
    pub fn forward_greedy(&mut self, tokens: &[u32]) -> Result<u32> {
        if self.program.is_none() {
            let logits = self.forward(tokens, LogitsMode::Last)?;
            return Ok(argmax(logits));
        }
        let n = tokens.len();
        if n > self.n_batch {
            let split = n - (n - 1) % self.n_batch - 1;
            self.forward(&tokens[..split], LogitsMode::Last)?;
            return self.forward_greedy(&tokens[split..]);
        }
        self.check_tokens(tokens, self.n_past[0])?;
        let pos = self.n_past[0];
        let program = self.program.as_mut().expect("compiled");
        let id = program.run_greedy(tokens, pos)?;
        self.n_past[0] = pos + n;
        Ok(id)
    }

    /// Checks a single-sequence run of `tokens` at `pos ..`: ids in the
    /// vocabulary and positions within the context.
    fn check_tokens(&self, tokens: &[u32], pos: usize) -> Result<()> {
        let n_vocab = self.model.config().n_vocab;
        if tokens.is_empty() {
            return Err(ModelError::InvalidRequest("empty batch".into()));
        }
        check_ids(tokens, n_vocab)?;
        if pos + tokens.len() > self.n_ctx {
            return Err(ModelError::ContextOverflow {
                n_past: pos,
                n_tokens: tokens.len(),
                n_ctx: self.n_ctx,
            });
        }
        Ok(())
    }

    /// The model.
    pub fn model(&self) -> &'m Model<B> {
        self.model
    }

    /// Tokens in the KV cache (of sequence 0).
    pub fn n_past(&self) -> usize {
        self.n_past[0]
    }

    /// Tokens in the KV cache of sequence `seq`.
    pub fn n_past_seq(&self, seq: usize) -> usize {
        self.n_past.get(seq).copied().unwrap_or(0)
    }

    /// Sequences the session holds.
    pub fn n_seq(&self) -> usize {
        self.n_past.len()
    }

    /// Which kernels compute a batch of several tokens.
    pub fn batch_kernels(&self) -> BatchKernels {
        self.batch_kernels
    }

    /// Positions the KV cache holds.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Whether the model has recurrent layers, whose state cannot be cut
    /// back to an earlier position: it rewinds only to a saved snapshot
    /// ([`Session::rewind_point`]), its end, or the start.
    pub fn is_recurrent(&self) -> bool {
        !self.state_len.is_empty()
    }

    /// Bytes of one sequence's recurrent states (0 without recurrent
    /// layers): what each snapshot ([`SessionOptions::state_snapshots`]) holds.
    pub fn recurrent_state_bytes(&self) -> usize {
        self.state_len.iter().sum::<usize>() * std::mem::size_of::<f32>()
    }

    /// Whether recurrent states are saved as batches run.
    fn snapshots_on(&self) -> bool {
        self.is_recurrent() && self.max_snapshots > 0 && self.program.is_none()
    }

    /// The longest prefix of at most `n` tokens sequence `seq` can be
    /// rewound to ([`Session::truncate_seq`]): `min(n, n_past)` for a model
    /// without recurrent layers. A recurrent model rewinds to its whole
    /// sequence, to the start, or to a position where its states were
    /// saved: within a batch, after each sequence's last token and the one
    /// before it (the prompt as it was, and the prompt less the token a
    /// generator runs again for its logits) and at every multiple of
    /// [`SessionOptions::snapshot_interval`]; the longest of these up to `n`.
    pub fn rewind_point(&self, seq: usize, n: usize) -> usize {
        let have = self.n_past_seq(seq);
        if !self.is_recurrent() || n >= have {
            return n.min(have);
        }
        self.snapshots
            .get(seq)
            .into_iter()
            .flatten()
            .map(|s| s.pos)
            .filter(|&p| p <= n)
            .max()
            .unwrap_or(0)
    }

    /// Positions of sequence `seq` whose recurrent states are saved, in order.
    pub fn snapshot_positions(&self, seq: usize) -> Vec<usize> {
        self.snapshots
            .get(seq)
            .map(|v| v.iter().map(|s| s.pos).collect())
            .unwrap_or_default()
    }

    /// Empties the KV cache of every sequence.
    pub fn reset(&mut self) {
        self.n_past.iter_mut().for_each(|n| *n = 0);
        if self.is_recurrent() {
            // Zeroed again, lazily: each sequence's first run starts from zeros.
            for seq in 0..self.n_past.len() {
                self.zero_states(seq);
                self.drop_snapshots(seq, 0);
            }
        }
    }

    /// Drops sequence `seq`'s snapshots past position `n`.
    fn drop_snapshots(&mut self, seq: usize, n: usize) {
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.snapshots[seq])
            .into_iter()
            .partition(|s| s.pos <= n);
        self.snapshots[seq] = keep;
        for s in gone {
            self.recycle(s.states);
        }
    }

    /// Keeps the state buffers of a dropped snapshot for a later one (as
    /// many as one sequence may hold).
    fn recycle(&mut self, states: Vec<B::Buffer>) {
        if self.spare.len() < self.max_snapshots {
            self.spare.push(states);
        }
    }

    /// Buffers for one snapshot: recycled, or newly allocated.
    fn state_set(&mut self) -> Result<Vec<B::Buffer>> {
        match self.spare.pop() {
            Some(s) => Ok(s),
            None => alloc_states(self.model.backend(), &self.state_len),
        }
    }

    /// Replaces sequence `seq`'s recurrent states with zeroed ones.
    fn zero_states(&mut self, seq: usize) {
        let b = self.model.backend();
        let k = self.state_len.len();
        for (i, &len) in self.state_len.iter().enumerate() {
            if let Ok(buf) = b.alloc(len) {
                self.states[seq * k + i] = buf;
            }
        }
    }

    /// Keeps only the first `n` tokens of the cache (of sequence 0).
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        self.truncate_seq(0, n)
    }

    /// Keeps only the first `n` tokens of sequence `seq`'s cache.
    pub fn truncate_seq(&mut self, seq: usize, n: usize) -> Result<()> {
        let have = *self.n_past.get(seq).ok_or_else(|| {
            ModelError::InvalidRequest(format!(
                "sequence {seq} out of range (the session holds {})",
                self.n_past.len()
            ))
        })?;
        if n > have {
            return Err(ModelError::InvalidRequest(format!(
                "cannot truncate sequence {seq} to {n} tokens: its cache holds {have}"
            )));
        }
        if self.is_recurrent() && n < have {
            if n == 0 {
                self.zero_states(seq);
            } else {
                let Some(i) = self.snapshots[seq].iter().position(|s| s.pos == n) else {
                    return Err(ModelError::InvalidRequest(format!(
                        "cannot truncate sequence {seq} to {n} of its {have} tokens: a recurrent \
                         state rewinds only to a saved position (see Session::rewind_point)"
                    )));
                };
                let b = self.model.backend();
                let k = self.state_len.len();
                self.clock += 1;
                let snap = &mut self.snapshots[seq][i];
                snap.used = self.clock;
                for (j, &len) in self.state_len.iter().enumerate() {
                    b.copy(&snap.states[j], 0, &mut self.states[seq * k + j], 0, len);
                }
            }
            self.drop_snapshots(seq, n);
        }
        self.n_past[seq] = n;
        Ok(())
    }

    /// Appends `tokens` to the sequence and returns their logits: the last
    /// token's (`[n_vocab]`) or every token's (`[n_tokens, n_vocab]`).
    pub fn forward(&mut self, tokens: &[u32], mode: LogitsMode) -> Result<&[f32]> {
        self.run(tokens, mode, None)
    }

    /// [`Session::forward`], reporting every graph node's values to `observer`.
    pub fn forward_traced(
        &mut self,
        tokens: &[u32],
        mode: LogitsMode,
        observer: &mut dyn Observer,
    ) -> Result<&[f32]> {
        if self.program.is_some() {
            return Err(ModelError::InvalidRequest(
                "tracing runs the graph node by node: open the session with `compile: false`"
                    .into(),
            ));
        }
        self.run(tokens, mode, Some(observer))
    }

    fn run(
        &mut self,
        tokens: &[u32],
        mode: LogitsMode,
        obs: Option<&mut dyn Observer>,
    ) -> Result<&[f32]> {
        let n = tokens.len();
        let pos: Vec<usize> = (self.n_past[0]..self.n_past[0] + n).collect();
        let seq = vec![0; n];
        let output: Vec<bool> = match mode {
            LogitsMode::All => vec![true; n],
            LogitsMode::Last => (0..n).map(|i| i + 1 == n).collect(),
        };
        let batch = Batch {
            tokens,
            pos: &pos,
            seq: &seq,
            output: &output,
        };
        self.run_batch(&batch, obs)
    }

    /// Runs a batch of tokens of one or several sequences and returns the
    /// logits of the tokens whose `output` flag is set, in batch order
    /// (`[n_out, n_vocab]` row-major).
    pub fn forward_batch(&mut self, batch: &Batch<'_>) -> Result<&[f32]> {
        self.run_batch(batch, None)
    }

    fn run_batch(
        &mut self,
        batch: &Batch<'_>,
        mut obs: Option<&mut dyn Observer>,
    ) -> Result<&[f32]> {
        let c = self.model.config();
        let n = batch.tokens.len();
        if n == 0 {
            return Err(ModelError::InvalidRequest("empty batch".into()));
        }
        if batch.pos.len() != n || batch.seq.len() != n || batch.output.len() != n {
            return Err(ModelError::InvalidRequest(format!(
                "a batch of {n} tokens has {} positions, {} sequence ids and {} output flags",
                batch.pos.len(),
                batch.seq.len(),
                batch.output.len()
            )));
        }
        check_ids(batch.tokens, c.n_vocab)?;
        // Every token continues its sequence; none runs past the context.
        let mut next = self.n_past.clone();
        for i in 0..n {
            let s = batch.seq[i];
            let Some(expect) = next.get_mut(s) else {
                return Err(ModelError::InvalidRequest(format!(
                    "token {i}: sequence {s} out of range (the session holds {})",
                    self.n_past.len()
                )));
            };
            if batch.pos[i] != *expect {
                return Err(ModelError::InvalidRequest(format!(
                    "token {i}: position {} does not continue sequence {s} (next position {expect})",
                    batch.pos[i]
                )));
            }
            if *expect >= self.n_ctx {
                let n_tokens = batch.seq.iter().filter(|&&x| x == s).count();
                return Err(ModelError::ContextOverflow {
                    n_past: self.n_past[s],
                    n_tokens,
                    n_ctx: self.n_ctx,
                });
            }
            *expect += 1;
        }
        if self.snapshots_on() {
            self.batch_end.iter_mut().for_each(|e| *e = (0, 0));
            for i in 0..n {
                let e = &mut self.batch_end[batch.seq[i]];
                *e = (batch.pos[i] + 1, e.1 + 1);
            }
        }
        let n_vocab = c.n_vocab;
        let n_out = batch.output.iter().filter(|&&o| o).count();
        let need = n_out.checked_mul(n_vocab).ok_or_else(|| {
            ModelError::InvalidRequest(format!("logits of {n_out} tokens overflow"))
        })?;
        self.logits.clear();
        self.logits.try_reserve(need).map_err(|e| {
            ModelError::InvalidRequest(format!(
                "cannot hold the logits of {n_out} tokens × {n_vocab} entries ({} bytes): {e}",
                need as u128 * 4
            ))
        })?;
        self.logits.resize(need, 0.0);
        let mut row_out = 0;
        let mut start = 0;
        while start < n {
            let end = (start + self.n_batch).min(n);
            let sub = Batch {
                tokens: &batch.tokens[start..end],
                pos: &batch.pos[start..end],
                seq: &batch.seq[start..end],
                output: &batch.output[start..end],
            };
            let o: Option<&mut dyn Observer> = match &mut obs {
                Some(o) => Some(&mut **o),
                None => None,
            };
            row_out += self.ubatch(&sub, row_out, o)?;
            start = end;
        }
        Ok(&self.logits)
    }

    /// Runs the graph over one batch of at most `n_batch` tokens, writing
    /// the logits of its output rows to rows `row_out..` of `self.logits`;
    /// returns how many rows it wrote.
    fn ubatch(
        &mut self,
        batch: &Batch<'_>,
        row_out: usize,
        mut obs: Option<&mut dyn Observer>,
    ) -> Result<usize> {
        if self.program.is_some() {
            return self.ubatch_compiled(batch, row_out);
        }
        let m = self.model;
        let g = m.graph();
        let b = m.backend();
        let n = batch.tokens.len();
        self.runs.clear();
        for i in 0..n {
            match self.runs.last_mut() {
                Some(r) if r.seq == batch.seq[i] && r.pos0 + r.len == batch.pos[i] => r.len += 1,
                _ => self.runs.push(Run {
                    start: i,
                    len: 1,
                    seq: batch.seq[i],
                    pos0: batch.pos[i],
                }),
            }
        }
        self.out_idx.clear();
        self.out_idx.extend((0..n).filter(|&i| batch.output[i]));
        let out_rows = self.out_idx.len();
        self.plan_snapshots()?;
        for (i, node) in g.nodes.iter().enumerate() {
            let inputs = node.op.inputs();
            let rows = match &node.op {
                Op::Embed { .. } => n,
                Op::OutputRows { .. } => out_rows,
                _ => self.rows[inputs[0].0],
            };
            self.rows[i] = rows;
            if rows == 0 {
                continue;
            }
            let (o, len) = (self.plan.slot[i], rows * node.width);
            let mut out = if self.plan.in_place[i] {
                self.slots[o].buf.take().expect("the input's values")
            } else {
                ensure(b, &mut self.slots[o], len)?;
                self.slots[o].buf.take().expect("just allocated")
            };
            let res = self.op(i, batch.tokens, &mut out);
            self.slots[o].buf = Some(out);
            res?;
            if let Some(ob) = &mut obs {
                self.host.resize(len, 0.0);
                b.read(
                    self.slots[o].buf.as_ref().expect("stored"),
                    0,
                    &mut self.host,
                )?;
                ob.record(&node.name, node.layer, rows, &self.host);
            }
        }
        for r in &self.runs {
            self.n_past[r.seq] = r.pos0 + r.len;
        }
        self.keep_snapshots();
        if out_rows > 0 {
            let n_vocab = m.config().n_vocab;
            let dst = &mut self.logits[row_out * n_vocab..(row_out + out_rows) * n_vocab];
            let src = self.slots[self.plan.slot[g.output.0]]
                .buf
                .as_ref()
                .expect("computed");
            b.read(src, 0, dst)?;
        }
        Ok(out_rows)
    }

    /// Cuts this ubatch's runs into the pieces the recurrent ops compute
    /// ([`Session::pieces`]), one cut after each position whose states are
    /// saved (see [`Session::rewind_point`]) and not saved already, with
    /// buffers for those snapshots. The recurrent ops compute token by
    /// token, so the cuts change no value; matrix products and attention
    /// still see the whole batch.
    fn plan_snapshots(&mut self) -> Result<()> {
        self.pieces.clear();
        while let Some(s) = self.pending.pop() {
            self.recycle(s.states);
        }
        let on = self.snapshots_on();
        for ri in 0..self.runs.len() {
            let r = self.runs[ri];
            let mut done = 0;
            if on {
                let (end, count) = self.batch_end[r.seq];
                for p in r.pos0 + 1..=r.pos0 + r.len {
                    let at_interval =
                        self.snapshot_interval > 0 && p.is_multiple_of(self.snapshot_interval);
                    let at_end = count >= 2 && (p == end || p + 1 == end);
                    if !(at_interval || at_end) || self.snapshots[r.seq].iter().any(|s| s.pos == p)
                    {
                        continue;
                    }
                    let states = self.state_set()?;
                    self.pending.push(Snapshot {
                        seq: r.seq,
                        pos: p,
                        states,
                        used: 0,
                    });
                    let len = p - r.pos0 - done;
                    self.pieces.push(Piece {
                        run: Run {
                            start: r.start + done,
                            len,
                            seq: r.seq,
                            pos0: r.pos0 + done,
                        },
                        snap: Some(self.pending.len() - 1),
                    });
                    done += len;
                }
            }
            if done < r.len {
                self.pieces.push(Piece {
                    run: Run {
                        start: r.start + done,
                        len: r.len - done,
                        seq: r.seq,
                        pos0: r.pos0 + done,
                    },
                    snap: None,
                });
            }
        }
        Ok(())
    }

    /// Keeps the snapshots this ubatch took, dropping the least recently
    /// used of a sequence past [`SessionOptions::state_snapshots`].
    fn keep_snapshots(&mut self) {
        for mut s in std::mem::take(&mut self.pending) {
            self.clock += 1;
            s.used = self.clock;
            let seq = s.seq;
            let list = &mut self.snapshots[seq];
            let at = list.partition_point(|x| x.pos < s.pos);
            list.insert(at, s);
            while self.snapshots[seq].len() > self.max_snapshots {
                let list = &mut self.snapshots[seq];
                let oldest = (0..list.len())
                    .min_by_key(|&i| list[i].used)
                    .expect("more snapshots than the cap");
                let gone = list.remove(oldest);
                self.recycle(gone.states);
            }
        }
    }

    /// [`Session::ubatch`] on the compiled graph (one sequence, so the
    /// batch's positions are consecutive from `n_past`).
    fn ubatch_compiled(&mut self, batch: &Batch<'_>, row_out: usize) -> Result<usize> {
        let n = batch.tokens.len();
        let n_vocab = self.model.config().n_vocab;
        let pos = self.n_past[0];
        let n_out = batch.output.iter().filter(|&&o| o).count();
        let program = self.program.as_mut().expect("compiled");
        let dst = &mut self.logits[row_out * n_vocab..(row_out + n_out) * n_vocab];
        if n_out == 0 {
            // The cache still takes the tokens: compute and drop the last row.
            self.host.resize(n_vocab, 0.0);
            program.run(batch.tokens, pos, false, &mut self.host)?;
        } else if n_out == 1 && batch.output[n - 1] {
            program.run(batch.tokens, pos, false, dst)?;
        } else if n_out == n {
            program.run(batch.tokens, pos, true, dst)?;
        } else {
            self.host.resize(n * n_vocab, 0.0);
            program.run(batch.tokens, pos, true, &mut self.host)?;
            let rows = (0..n).filter(|&i| batch.output[i]);
            for (k, r) in rows.enumerate() {
                dst[k * n_vocab..(k + 1) * n_vocab]
                    .copy_from_slice(&self.host[r * n_vocab..(r + 1) * n_vocab]);
            }
        }
        self.n_past[0] = pos + n;
        Ok(n_out)
    }

    /// The values of node `x` (computed earlier in this batch).
    fn input(&self, x: NodeId) -> &B::Buffer {
        self.slots[self.plan.slot[x.0]]
            .buf
            .as_ref()
            .expect("an input is computed before it is read")
    }

    /// Computes node `i` into `out` (which, for an in-place node, holds its first input).
    fn op(&mut self, i: usize, tokens: &[u32], out: &mut B::Buffer) -> Result<()> {
        let m = self.model;
        let g = m.graph();
        let b = m.backend();
        let w = |id: crate::graph::WeightId| &m.weights[id.0];
        let node = &g.nodes[i];
        let rows = self.rows[i];
        let width = node.width;
        let len = rows * width;
        // For in-place capable ops given a fresh slot: start from a copy of the input.
        if node.op.in_place() && !self.plan.in_place[i] {
            let x = node.op.inputs()[0];
            b.copy(self.input(x), 0, out, 0, len);
        }
        match &node.op {
            Op::Embed { table } => b.get_rows(w(*table), tokens, out),
            Op::Scale { s, .. } => b.scale(out, len, *s),
            Op::Softcap { cap, .. } => b.softcap(out, len, *cap),
            Op::Add { b: y, .. } => b.add(out, self.input(*y), len),
            Op::RmsNorm { x, weight, eps } => {
                let group = g.weights[weight.0].shape[0];
                b.rms_norm(self.input(*x), w(*weight), *eps, len / group, out);
            }
            Op::MatMul { x, w: wid, bias } => {
                let cols = g.node(*x).width;
                let xin = self.slots[self.plan.slot[x.0]].buf.as_ref().expect("input");
                mm(b, &mut self.row_io, w(*wid), xin, rows, cols, width, out);
                if let Some(bias) = bias {
                    b.add_bias(out, w(*bias), rows);
                }
            }
            Op::Rope {
                n_heads,
                params,
                factors,
                ..
            } => {
                let whole = self.runs.len() == 1;
                for ri in 0..self.runs.len() {
                    let r = self.runs[ri];
                    if whole {
                        b.rope(out, rows, *n_heads, r.pos0, params, factors.map(w));
                        continue;
                    }
                    // One run at a time, through a scratch buffer.
                    let tmp = &mut self.run_bufs[0];
                    ensure(b, tmp, r.len * width)?;
                    let t = tmp.buf.as_mut().expect("allocated");
                    b.copy(out, r.start * width, t, 0, r.len * width);
                    b.rope(t, r.len, *n_heads, r.pos0, params, factors.map(w));
                    b.copy(t, 0, out, r.start * width, r.len * width);
                }
            }
            Op::Attention {
                q,
                k,
                v,
                layer,
                params,
                sinks,
            } => {
                let sinks = sinks.map(w);
                let (qs, ks, vs) = (
                    self.plan.slot[q.0],
                    self.plan.slot[k.0],
                    self.plan.slot[v.0],
                );
                let (qw, kvw) = (g.node(*q).width, g.node(*k).width);
                for ri in 0..self.runs.len() {
                    let r = self.runs[ri];
                    let cache_layer = r.seq * self.n_kv_layers + *layer;
                    let qb = self.slots[qs].buf.as_ref().expect("queries");
                    let kb = self.slots[ks].buf.as_ref().expect("keys");
                    let vb = self.slots[vs].buf.as_ref().expect("values");
                    if self.runs.len() == 1 {
                        b.store_kv(&mut self.kv, cache_layer, r.pos0, rows, kb, vb);
                        attend(
                            b,
                            &mut self.row_io,
                            qb,
                            &self.kv,
                            (cache_layer, r.pos0, rows),
                            params,
                            sinks,
                            out,
                        )?;
                        continue;
                    }
                    // One run at a time, through scratch buffers.
                    let [tq, tk, tv, to] = &mut self.run_bufs;
                    ensure(b, tq, r.len * qw)?;
                    ensure(b, tk, r.len * kvw)?;
                    ensure(b, tv, r.len * kvw)?;
                    ensure(b, to, r.len * width)?;
                    let (tq, tk, tv, to) = (
                        tq.buf.as_mut().expect("allocated"),
                        tk.buf.as_mut().expect("allocated"),
                        tv.buf.as_mut().expect("allocated"),
                        to.buf.as_mut().expect("allocated"),
                    );
                    b.copy(qb, r.start * qw, tq, 0, r.len * qw);
                    b.copy(kb, r.start * kvw, tk, 0, r.len * kvw);
                    b.copy(vb, r.start * kvw, tv, 0, r.len * kvw);
                    b.store_kv(&mut self.kv, cache_layer, r.pos0, r.len, tk, tv);
                    attend(
                        b,
                        &mut self.row_io,
                        tq,
                        &self.kv,
                        (cache_layer, r.pos0, r.len),
                        params,
                        sinks,
                        to,
                    )?;
                    b.copy(to, 0, out, r.start * width, r.len * width);
                }
            }
            Op::Swiglu { gate, up } => {
                b.swiglu(self.input(*gate), self.input(*up), rows, width, out)
            }
            Op::Geglu { gate, up } => b.geglu(self.input(*gate), self.input(*up), rows, width, out),
            Op::OutputRows { x } => {
                let src = self.input(*x);
                let idx = &self.out_idx;
                if idx.windows(2).all(|p| p[1] == p[0] + 1) {
                    b.copy(src, idx[0] * width, out, 0, len);
                } else {
                    for (k, &r) in idx.iter().enumerate() {
                        b.copy(src, r * width, out, k * width, width);
                    }
                }
            }
            Op::Moe { x, moe } => {
                let xin = self.slots[self.plan.slot[x.0]].buf.as_ref().expect("input");
                moe_ffn(b, &m.weights, moe, &mut self.moe, xin, rows, width, out)?;
            }
            Op::Slice { x, offset } => {
                let src_width = g.node(*x).width;
                b.copy_rows(self.input(*x), src_width, *offset, out, width, width, rows);
            }
            Op::Unary { f, .. } => b.unary(out, rows, width, *f)?,
            Op::Mul { b: y, .. } => {
                let yw = g.node(*y).width;
                b.mul(out, self.input(*y), rows, width, yw)?
            }
            Op::MulVec { w: wid, .. } => b.mul_vec(out, w(*wid), rows)?,
            Op::L2Norm { x, group, eps } => b.l2_norm(self.input(*x), *group, *eps, len, out)?,
            Op::Strided { x, period, offset } => {
                let groups = g.node(*x).width / period;
                let part = width / groups;
                b.copy_rows(
                    self.input(*x),
                    *period,
                    *offset,
                    out,
                    part,
                    part,
                    rows * groups,
                );
            }
            Op::SsmConv { .. } | Op::DeltaNet { .. } => self.recurrent(i, out)?,
        }
        Ok(())
    }

    /// A recurrent node ([`Op::SsmConv`], [`Op::DeltaNet`]): each run of the
    /// batch through its sequence's state, in place on the whole batch when
    /// it is one run, else through scratch copies of the run's rows.
    fn recurrent(&mut self, i: usize, out: &mut B::Buffer) -> Result<()> {
        let m = self.model;
        let g = m.graph();
        let b = m.backend();
        let node = &g.nodes[i];
        let width = node.width;
        let inputs = node.op.inputs();
        let k = self.state_len.len();
        let slot = match &node.op {
            Op::SsmConv { state, .. } | Op::DeltaNet { state, .. } => *state,
            _ => unreachable!("recurrent() is called for recurrent nodes"),
        };
        let whole = self.pieces.len() == 1;
        for pi in 0..self.pieces.len() {
            let Piece { run: r, snap } = self.pieces[pi];
            if !whole {
                for (j, x) in inputs.iter().enumerate() {
                    let xw = g.node(*x).width;
                    ensure(b, &mut self.rec_bufs[j], r.len * xw)?;
                    let src = self.slots[self.plan.slot[x.0]].buf.as_ref().expect("input");
                    let dst = self.rec_bufs[j].buf.as_mut().expect("allocated");
                    b.copy(src, r.start * xw, dst, 0, r.len * xw);
                }
                ensure(b, &mut self.rec_bufs[5], r.len * width)?;
            }
            let mut tmp = if whole {
                None
            } else {
                Some(self.rec_bufs[5].buf.take().expect("allocated"))
            };
            let input = |j: usize| -> &B::Buffer {
                if whole {
                    self.slots[self.plan.slot[inputs[j].0]]
                        .buf
                        .as_ref()
                        .expect("input")
                } else {
                    self.rec_bufs[j].buf.as_ref().expect("allocated")
                }
            };
            let o: &mut B::Buffer = match tmp.as_mut() {
                Some(t) => t,
                None => &mut *out,
            };
            let res = match &node.op {
                Op::SsmConv { kernel, state, .. } => {
                    let st = &mut self.states[r.seq * k + state];
                    b.ssm_conv(input(0), &m.weights[kernel.0], st, r.len, width, o)
                }
                Op::DeltaNet { state, params, .. } => {
                    let x = tensor_core::DeltaNetInputs {
                        q: input(0),
                        k: input(1),
                        v: input(2),
                        g: input(3),
                        beta: input(4),
                    };
                    let st = &mut self.states[r.seq * k + state];
                    b.delta_net(x, st, r.len, params, o)
                }
                _ => unreachable!("recurrent() is called for recurrent nodes"),
            };
            if let Some(t) = tmp {
                b.copy(&t, 0, out, r.start * width, r.len * width);
                self.rec_bufs[5].buf = Some(t);
            }
            res?;
            if let Some(si) = snap {
                let len = self.state_len[slot];
                let dst = &mut self.pending[si].states[slot];
                b.copy(&self.states[r.seq * k + slot], 0, dst, 0, len);
            }
        }
        Ok(())
    }
}

/// Fails with the first token id outside a vocabulary of `n_vocab`.
fn check_ids(tokens: &[u32], n_vocab: usize) -> Result<()> {
    match tokens
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= n_vocab)
    {
        Some((index, &token)) => Err(ModelError::InvalidToken {
            token,
            index,
            n_vocab,
        }),
        None => Ok(()),
    }
}

/// The index of the largest value (the first of equal ones).
fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// `build_moe_ffn` on any backend: the router's logits come back to the
/// host, which picks each token's experts and weights as ggml does (softmax
/// or sigmoid, top-k by value, optional renormalisation by the clamped sum;
/// or top-k of the logits then a softmax of the chosen); each expert runs
/// on the rows routed to it (ggml_mul_mat_id's products,
/// [`Backend::matmul_expert`]), the outputs are weighted and summed slot by
/// slot in ggml's order (`ggml_mul`, then `ggml_add` of slot 1, 2, … onto slot 0).
#[allow(clippy::too_many_arguments)] // the operation's inputs, spelled out
fn moe_ffn<B: Backend>(
    b: &B,
    weights: &[B::Weight],
    moe: &Moe,
    s: &mut MoeScratch<B::Buffer>,
    x: &B::Buffer,
    n: usize,
    d: usize,
    out: &mut B::Buffer,
) -> Result<()> {
    let n_expert = moe.gate.len();
    let k = moe.n_used;
    ensure(b, &mut s.router, n * n_expert)?;
    let router = s.router.buf.as_mut().expect("allocated");
    b.matmul(&weights[moe.router.0], x, n, router);
    if let Some(bias) = moe.router_bias {
        b.add_bias(router, &weights[bias.0], n);
    }
    s.host.resize(n * n_expert, 0.0);
    b.read(router, 0, &mut s.host)?;
    // Choose experts and weights per token (slot-major factors: [k, n]).
    let mut chosen = vec![0usize; n * k];
    let mut factors = vec![0.0f32; n * k];
    for t in 0..n {
        let probs = &mut s.host[t * n_expert..(t + 1) * n_expert];
        match moe.gating {
            Gating::Softmax => tensor_core::ops::softmax_exact(probs),
            Gating::Sigmoid => {
                for p in probs.iter_mut() {
                    *p = 1.0 / (1.0 + (-*p).exp());
                }
            }
            // The raw logits choose; the chosen are softmaxed below.
            Gating::SoftmaxWeight => {}
        }
        let mut order: Vec<usize> = (0..n_expert).collect();
        order.sort_by(|&a, &c| probs[c].total_cmp(&probs[a]).then(a.cmp(&c)));
        let mut w: Vec<f32> = order[..k].iter().map(|&e| probs[e]).collect();
        if moe.gating == Gating::SoftmaxWeight {
            tensor_core::ops::softmax_exact(&mut w);
        }
        if moe.normalize {
            let sum = w.iter().map(|&v| v as f64).sum::<f64>() as f32;
            let sum = sum.max(6.103_515_6e-5);
            for v in &mut w {
                *v /= sum;
            }
        }
        if moe.weights_scale != 1.0 {
            for v in &mut w {
                *v *= moe.weights_scale;
            }
        }
        for slot in 0..k {
            chosen[slot * n + t] = order[slot];
            factors[slot * n + t] = w[slot];
        }
    }
    // Each expert multiplies the rows routed to it together, as
    // ggml_mul_mat_id does (Backend::matmul_expert: its kernels and orders).
    // A token picks an expert at most once, so at most n rows.
    ensure(b, &mut s.row, n * d)?;
    ensure(b, &mut s.down, n * d)?;
    ensure(b, &mut s.slots, k * n * d)?;
    let ybuf = s.slots.buf.as_mut().expect("allocated");
    for e in 0..n_expert {
        // Entries `slot * n + t` of the slot-major choices.
        let routed: Vec<usize> = (0..k * n).filter(|&i| chosen[i] == e).collect();
        if routed.is_empty() {
            continue;
        }
        let rows = s.row.buf.as_mut().expect("allocated");
        for (j, &i) in routed.iter().enumerate() {
            b.copy(x, (i % n) * d, rows, j * d, d);
        }
        let down = s.down.buf.as_mut().expect("allocated");
        expert(
            b,
            weights,
            moe,
            e,
            (rows, routed.len(), d),
            &mut s.expert,
            down,
        )?;
        for (j, &i) in routed.iter().enumerate() {
            b.copy(down, j * d, ybuf, i * d, d);
        }
    }
    b.scale_rows(ybuf, &factors, d);
    b.copy(ybuf, 0, out, 0, n * d);
    if k > 1 {
        ensure(b, &mut s.tmp, n * d)?;
        let tmp = s.tmp.buf.as_mut().expect("allocated");
        for slot in 1..k {
            b.copy(ybuf, slot * n * d, tmp, 0, n * d);
            b.add(out, tmp, n * d);
        }
    }
    Ok(())
}

/// One expert on `m` rows of `d` values: `down(act(gate(x), up(x)))` into `y`, each
/// product plus the expert's bias if the block has biases.
#[allow(clippy::too_many_arguments)] // the operation's inputs, spelled out
fn expert<B: Backend>(
    b: &B,
    weights: &[B::Weight],
    moe: &Moe,
    e: usize,
    (x, m, d): (&B::Buffer, usize, usize),
    bufs: &mut ExpertScratch<B::Buffer>,
    y: &mut B::Buffer,
) -> Result<()> {
    let ff = moe.ff;
    let ExpertScratch { gate, up, act, one } = bufs;
    ensure(b, gate, m * ff)?;
    ensure(b, up, m * ff)?;
    ensure(b, act, m * ff)?;
    let (g, u, a) = (
        gate.buf.as_mut().expect("allocated"),
        up.buf.as_mut().expect("allocated"),
        act.buf.as_mut().expect("allocated"),
    );
    expert_product(b, &weights[moe.gate[e].0], x, m, (d, ff), g, one)?;
    expert_product(b, &weights[moe.up[e].0], x, m, (d, ff), u, one)?;
    if let Some(bias) = &moe.biases {
        b.add_bias(g, &weights[bias.gate[e].0], m);
        b.add_bias(u, &weights[bias.up[e].0], m);
    }
    match moe.act {
        ExpertAct::Silu => b.swiglu(g, u, m, ff, a),
        ExpertAct::SwigluOai { alpha, limit } => b.swiglu_oai(g, u, m, ff, alpha, limit, a)?,
    }
    expert_product(b, &weights[moe.down[e].0], a, m, (ff, d), y, one)?;
    if let Some(bias) = &moe.biases {
        b.add_bias(y, &weights[bias.down[e].0], m);
    }
    Ok(())
}

/// An expert's product with its `m` routed rows (`shape`: values per row in
/// and out): [`Backend::matmul_expert`], or where the backend has no such
/// kernels one row at a time through `one`'s buffers.
fn expert_product<B: Backend>(
    b: &B,
    w: &B::Weight,
    x: &B::Buffer,
    m: usize,
    shape: (usize, usize),
    out: &mut B::Buffer,
    one: &mut (Slot<B::Buffer>, Slot<B::Buffer>),
) -> Result<()> {
    if b.matmul_expert(w, x, m, out) {
        return Ok(());
    }
    let (cols, rows) = shape;
    ensure(b, &mut one.0, cols)?;
    ensure(b, &mut one.1, rows)?;
    let (xi, yo) = (
        one.0.buf.as_mut().expect("allocated"),
        one.1.buf.as_mut().expect("allocated"),
    );
    for r in 0..m {
        b.copy(x, r * cols, xi, 0, cols);
        b.matmul(w, xi, 1, yo);
        b.copy(yo, 0, out, r * rows, rows);
    }
    Ok(())
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

/// Attention of `n` query rows at positions `pos0..` (`at`: cache layer,
/// `pos0`, `n`), with a sink per head if `sinks`: one call for the batch,
/// or — with [`BatchKernels::RowConsistent`]'s buffers — one single-row
/// call per row at its own position, as when decoding. The cache already
/// holds the batch's keys and values; the causal mask keeps row `t` from
/// reading past position `pos0 + t`, so it sees what decoding saw.
#[allow(clippy::too_many_arguments)] // the operation's inputs, spelled out
fn attend<B: Backend>(
    b: &B,
    row_io: &mut Option<(B::Buffer, B::Buffer)>,
    q: &B::Buffer,
    kv: &B::KvCache,
    at: (usize, usize, usize),
    params: &AttentionParams,
    sinks: Option<&B::Weight>,
    out: &mut B::Buffer,
) -> Result<()> {
    let (layer, pos0, n) = at;
    let one = |q: &B::Buffer, pos: usize, rows: usize, out: &mut B::Buffer| -> Result<()> {
        match sinks {
            Some(s) => Ok(b.attention_sinks(q, kv, layer, pos, rows, params, s, out)?),
            None => {
                b.attention(q, kv, layer, pos, rows, params, out);
                Ok(())
            }
        }
    };
    match row_io {
        Some((row_in, row_out)) if n > 1 => {
            let qw = params.n_head * params.head_dim;
            for t in 0..n {
                b.copy(q, t * qw, row_in, 0, qw);
                one(row_in, pos0 + t, 1, row_out)?;
                b.copy(row_out, 0, out, t * qw, qw);
            }
            Ok(())
        }
        _ => one(q, pos0, n, out),
    }
}
