//! The model graph: an architecture described once, as named operations.
//!
//! A [`Graph`] is a list of [`Node`]s in execution order, each an [`Op`]
//! over earlier nodes and the model's weights, named as llama.cpp names the
//! same tensor (`attn_norm-0`, `Qcur-0`, `kqv_out-0`, `ffn_out-3`,
//! `result_norm`, `result_output`), so a trace lines up with llama.cpp's
//! eval-callback dump. The graph does not depend on the batch: every node
//! holds one row per token (or, after [`Op::OutputRows`], one row per
//! requested output), and a backend executes the same graph for a prompt of
//! 512 tokens and for one token.
//!
//! Weights are referred to by [`WeightId`]: the graph records, for each, the
//! GGUF tensor it comes from, the shape it must have, and (for fused or 3-D
//! tensors) which rows of it. llama-model builds graphs (one function per
//! architecture); a backend may rewrite one before its weights are loaded
//! ([`crate::Backend::prepare_graph`]) and execute it node by node or
//! compile it ([`crate::Backend::compile`]).

use crate::{AttentionParams, DeltaNetParams, RopeParams, Unary};

/// A node of a [`Graph`] (its index in execution order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeId(pub usize);

/// A weight of a [`Graph`] (its index in [`Graph::weights`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WeightId(pub usize);

/// How a weight is used: a matrix for products and lookups, or an `f32` vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightKind {
    /// `[cols, rows]` in any supported block format.
    Matrix,
    /// `[len]`, converted to `f32` (norm weights, biases, RoPE factors).
    Vector,
}

/// Where a weight comes from in the GGUF file.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightSpec {
    /// The GGUF tensor (`blk.0.attn_q.weight`).
    pub tensor: String,
    /// The shape the tensor must have, ggml order (innermost first).
    pub shape: Vec<usize>,
    /// Matrix or vector.
    pub kind: WeightKind,
    /// For a part of a tensor (one expert of a 3-D tensor, one part of a
    /// fused projection): its first row and row count, counting rows over
    /// every dimension after the first.
    pub rows: Option<(usize, usize)>,
    /// Weights whose rows follow this one's in one stacked matrix (or
    /// vector), in order: a backend's rewrite that turns several products of
    /// one input into one ([`Op::Slice`] then views the parts). Each part
    /// must have this one's type and row length; empty for a plain weight.
    pub stack: Vec<WeightSpec>,
}

impl WeightSpec {
    /// A short name for messages: the tensor, with its row range if a part.
    pub fn label(&self) -> String {
        let one = match self.rows {
            Some((first, n)) => format!("{}[rows {first}..{}]", self.tensor, first + n),
            None => self.tensor.clone(),
        };
        self.stack
            .iter()
            .fold(one, |acc, part| format!("{acc}+{}", part.label()))
    }

    /// Rows of the weight: its shape's rows (or its row range), plus every
    /// stacked part's.
    pub fn n_rows(&self) -> usize {
        let own = match self.rows {
            Some((_, n)) => n,
            None => self.shape.iter().skip(1).product(),
        };
        own + self.stack.iter().map(WeightSpec::n_rows).sum::<usize>()
    }
}

/// How a mixture of experts weighs the experts a router chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gating {
    /// `softmax` over all experts' router logits (Qwen3-MoE, Mixtral).
    Softmax,
    /// `sigmoid` of each logit (DeepSeek-V3 style).
    Sigmoid,
    /// The top-k of the raw logits, then `softmax` over the chosen ones
    /// (llama.cpp's `SOFTMAX_WEIGHT`: gpt-oss).
    SoftmaxWeight,
}

/// The gated activation of each expert.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ExpertAct {
    /// `silu(gate) · up` (`ggml_swiglu_split`).
    Silu,
    /// gpt-oss's `ggml_swiglu_oai`: `x·sigmoid(alpha·x) · (y + 1)` with the
    /// gate `x` clamped above at `limit` and the up `y` to `±limit`.
    SwigluOai {
        /// Factor inside the sigmoid (1.702).
        alpha: f32,
        /// Clamp (7.0).
        limit: f32,
    },
}

/// Per-expert biases of the three expert products (`ggml_add_id`), each
/// one vector per expert.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertBiases {
    /// Per expert: `[n_ff_exp]`, added to the gate product.
    pub gate: Vec<WeightId>,
    /// Per expert: `[n_ff_exp]`, added to the up product.
    pub up: Vec<WeightId>,
    /// Per expert: `[n_embd]`, added to the down product.
    pub down: Vec<WeightId>,
}

/// The weights and routing of a mixture-of-experts feed-forward block.
#[derive(Clone, Debug, PartialEq)]
pub struct Moe {
    /// Router `[n_embd, n_expert]`.
    pub router: WeightId,
    /// Per expert: gate `[n_embd, n_ff_exp]`.
    pub gate: Vec<WeightId>,
    /// Per expert: up `[n_embd, n_ff_exp]`.
    pub up: Vec<WeightId>,
    /// Per expert: down `[n_ff_exp, n_embd]`.
    pub down: Vec<WeightId>,
    /// Hidden width of each expert.
    pub ff: usize,
    /// Experts used per token (top-k).
    pub n_used: usize,
    /// Whether the chosen experts' weights are divided by their sum.
    pub normalize: bool,
    /// How router logits become weights.
    pub gating: Gating,
    /// A factor on the weights (1 when absent).
    pub weights_scale: f32,
    /// Router bias `[n_expert]`, added to the router's logits.
    pub router_bias: Option<WeightId>,
    /// Biases of the experts' products, if any.
    pub biases: Option<ExpertBiases>,
    /// The experts' activation.
    pub act: ExpertAct,
}

/// One operation. Every node holds `[rows, width]` row-major values.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// The token embedding rows (`ggml_get_rows`).
    Embed {
        /// `[n_embd, n_vocab]`.
        table: WeightId,
    },
    /// `x · s` (`ggml_scale`).
    Scale {
        /// Input.
        x: NodeId,
        /// Factor.
        s: f32,
    },
    /// RMSNorm times a weight, over groups of `weight.len()` values: a row
    /// of the model's width, or each head of a row (per-head Q/K norm).
    RmsNorm {
        /// Input.
        x: NodeId,
        /// The weight; its length divides the node's width.
        weight: WeightId,
        /// Epsilon.
        eps: f32,
    },
    /// `x · Wᵀ (+ bias)` (`ggml_mul_mat`, `ggml_add`).
    MatMul {
        /// Input.
        x: NodeId,
        /// `[cols, rows]`.
        w: WeightId,
        /// `[rows]`.
        bias: Option<WeightId>,
    },
    /// `a + b` (`ggml_add`: residual connections).
    Add {
        /// First operand.
        a: NodeId,
        /// Second operand.
        b: NodeId,
    },
    /// Rotary position embedding of every head (`ggml_rope_ext`).
    Rope {
        /// Input: `n_heads` heads of `params.head_dim` per row.
        x: NodeId,
        /// Heads per row.
        n_heads: usize,
        /// The rotation.
        params: RopeParams,
        /// Per-pair frequency factors (`rope_freqs`).
        factors: Option<WeightId>,
    },
    /// Store `k` and `v` in cache slot `layer`, then attend with `q`
    /// (llama.cpp's `build_attn` without the output projection: `kqv_out`).
    Attention {
        /// Queries `[rows, n_head · head_dim]`.
        q: NodeId,
        /// Keys `[rows, n_head_kv · head_dim]`.
        k: NodeId,
        /// Values `[rows, n_head_kv · head_dim]`.
        v: NodeId,
        /// KV cache layer.
        layer: usize,
        /// Heads, scale, window, soft-cap.
        params: AttentionParams,
        /// A learned sink logit per query head (`[n_head]`, gpt-oss's `attn_sinks`).
        sinks: Option<WeightId>,
    },
    /// `silu(gate) · up` (`ggml_swiglu_split`).
    Swiglu {
        /// Gate.
        gate: NodeId,
        /// Up.
        up: NodeId,
    },
    /// `gelu(gate) · up` (`ggml_geglu_split`).
    Geglu {
        /// Gate.
        gate: NodeId,
        /// Up.
        up: NodeId,
    },
    /// `cap · tanh(x / cap)` (logit soft-capping).
    Softcap {
        /// Input.
        x: NodeId,
        /// The cap.
        cap: f32,
    },
    /// A mixture-of-experts feed-forward block (`build_moe_ffn`).
    Moe {
        /// Input (normed).
        x: NodeId,
        /// Router and experts.
        moe: Box<Moe>,
    },
    /// The rows whose logits are wanted (`ggml_get_rows` with `inp_out_ids`):
    /// the last `n_out` rows of the batch.
    OutputRows {
        /// Input.
        x: NodeId,
    },
    /// Values `offset .. offset + width` of every row of `x` (a view: one
    /// part of a stacked product, [`WeightSpec::stack`]).
    Slice {
        /// Input.
        x: NodeId,
        /// First value of each row.
        offset: usize,
    },
    /// An element-wise function (ggml_sigmoid, ggml_silu, ggml_softplus).
    Unary {
        /// Input.
        x: NodeId,
        /// The function.
        f: Unary,
    },
    /// `a · b` element by element (ggml_mul), `b` of `a`'s width or of
    /// width 1 (one factor per row, broadcast).
    Mul {
        /// First operand.
        a: NodeId,
        /// Second operand.
        b: NodeId,
    },
    /// `x · w` with the vector `w` broadcast over rows (ggml_mul).
    MulVec {
        /// Input.
        x: NodeId,
        /// `[width]`.
        w: WeightId,
    },
    /// `x / max(‖x‖, eps)` over groups of `group` values (llama.cpp's
    /// `build_gdn_l2_norm`: ggml_rms_norm with `eps / group`, then
    /// ggml_scale by `1 / sqrt(group)`).
    L2Norm {
        /// Input.
        x: NodeId,
        /// Values per group (a head).
        group: usize,
        /// Epsilon.
        eps: f32,
    },
    /// Every `period` values of a row, the `len` from `offset` on, where
    /// `len = width / (x's width / period)` (a strided view made contiguous:
    /// the queries or the gates of a joint per-head projection).
    Strided {
        /// Input.
        x: NodeId,
        /// Values per group of the input.
        period: usize,
        /// First value taken of each group.
        offset: usize,
    },
    /// The short causal convolution of a recurrent layer over its rolling
    /// state (`build_conv_state` + ggml_ssm_conv).
    SsmConv {
        /// Input `[rows, channels]`.
        x: NodeId,
        /// The taps `[d_conv, channels]` (ggml order), as an `f32` vector.
        kernel: WeightId,
        /// Recurrent state slot (its last `d_conv - 1` inputs per channel).
        state: usize,
    },
    /// The gated delta rule (ggml_gated_delta_net) over recurrent state `state`.
    DeltaNet {
        /// Queries `[rows, n_head_k · head_dim]`, L2-normed.
        q: NodeId,
        /// Keys `[rows, n_head_k · head_dim]`, L2-normed.
        k: NodeId,
        /// Values `[rows, n_head_v · head_dim]`.
        v: NodeId,
        /// Log-decay `[rows, n_head_v]`.
        g: NodeId,
        /// Write strength `[rows, n_head_v]`.
        beta: NodeId,
        /// Recurrent state slot (one `[head_dim, head_dim]` matrix per value head).
        state: usize,
        /// Heads and head size.
        params: DeltaNetParams,
    },
}

impl Op {
    /// The nodes this op reads.
    pub fn inputs(&self) -> Vec<NodeId> {
        match self {
            Op::Embed { .. } => vec![],
            Op::Scale { x, .. }
            | Op::RmsNorm { x, .. }
            | Op::MatMul { x, .. }
            | Op::Rope { x, .. }
            | Op::Softcap { x, .. }
            | Op::Moe { x, .. }
            | Op::Slice { x, .. }
            | Op::Unary { x, .. }
            | Op::MulVec { x, .. }
            | Op::L2Norm { x, .. }
            | Op::Strided { x, .. }
            | Op::SsmConv { x, .. }
            | Op::OutputRows { x } => vec![*x],
            Op::Add { a, b } | Op::Mul { a, b } => vec![*a, *b],
            Op::DeltaNet {
                q, k, v, g, beta, ..
            } => vec![*q, *k, *v, *g, *beta],
            Op::Attention { q, k, v, .. } => vec![*q, *k, *v],
            Op::Swiglu { gate, up } | Op::Geglu { gate, up } => vec![*gate, *up],
        }
    }

    /// The nodes this op reads, to renumber them (a backend's rewrite).
    pub fn inputs_mut(&mut self) -> Vec<&mut NodeId> {
        match self {
            Op::Embed { .. } => vec![],
            Op::Scale { x, .. }
            | Op::RmsNorm { x, .. }
            | Op::MatMul { x, .. }
            | Op::Rope { x, .. }
            | Op::Softcap { x, .. }
            | Op::Moe { x, .. }
            | Op::Slice { x, .. }
            | Op::Unary { x, .. }
            | Op::MulVec { x, .. }
            | Op::L2Norm { x, .. }
            | Op::Strided { x, .. }
            | Op::SsmConv { x, .. }
            | Op::OutputRows { x } => vec![x],
            Op::Add { a, b } | Op::Mul { a, b } => vec![a, b],
            Op::DeltaNet {
                q, k, v, g, beta, ..
            } => vec![q, k, v, g, beta],
            Op::Attention { q, k, v, .. } => vec![q, k, v],
            Op::Swiglu { gate, up } | Op::Geglu { gate, up } => vec![gate, up],
        }
    }

    /// The weights this op reads, to renumber them (a backend's rewrite).
    pub fn weights_mut(&mut self) -> Vec<&mut WeightId> {
        match self {
            Op::Embed { table: w }
            | Op::RmsNorm { weight: w, .. }
            | Op::MulVec { w, .. }
            | Op::SsmConv { kernel: w, .. } => vec![w],
            Op::MatMul { w, bias, .. } => {
                let mut v = vec![w];
                v.extend(bias.as_mut());
                v
            }
            Op::Rope { factors, .. } => factors.as_mut().into_iter().collect(),
            Op::Attention { sinks, .. } => sinks.as_mut().into_iter().collect(),
            Op::Moe { moe, .. } => {
                let Moe {
                    router,
                    gate,
                    up,
                    down,
                    router_bias,
                    biases,
                    ..
                } = &mut **moe;
                let mut v = vec![router];
                v.extend(gate.iter_mut());
                v.extend(up.iter_mut());
                v.extend(down.iter_mut());
                v.extend(router_bias.as_mut());
                if let Some(ExpertBiases { gate, up, down }) = biases {
                    v.extend(gate.iter_mut());
                    v.extend(up.iter_mut());
                    v.extend(down.iter_mut());
                }
                v
            }
            _ => vec![],
        }
    }

    /// Whether the op can overwrite its first input in place (when nothing
    /// else reads that input later).
    pub fn in_place(&self) -> bool {
        matches!(
            self,
            Op::Scale { .. }
                | Op::Rope { .. }
                | Op::Softcap { .. }
                | Op::Add { .. }
                | Op::Unary { .. }
                | Op::Mul { .. }
                | Op::MulVec { .. }
        )
    }

    /// A short name of the operation (`mul_mat`, `rope`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Embed { .. } => "get_rows",
            Op::Scale { .. } => "scale",
            Op::RmsNorm { .. } => "rms_norm",
            Op::MatMul { .. } => "mul_mat",
            Op::Add { .. } => "add",
            Op::Rope { .. } => "rope",
            Op::Attention { .. } => "attention",
            Op::Swiglu { .. } => "swiglu",
            Op::Geglu { .. } => "geglu",
            Op::Softcap { .. } => "softcap",
            Op::Moe { .. } => "moe",
            Op::OutputRows { .. } => "out_rows",
            Op::Slice { .. } => "view",
            Op::Unary { f, .. } => f.name(),
            Op::Mul { .. } | Op::MulVec { .. } => "mul",
            Op::L2Norm { .. } => "l2_norm",
            Op::Strided { .. } => "cont",
            Op::SsmConv { .. } => "ssm_conv",
            Op::DeltaNet { .. } => "gated_delta_net",
        }
    }
}

/// A named operation and the width of its rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// llama.cpp's name for the tensor (`Qcur-0`, `result_output`).
    pub name: String,
    /// The transformer block it belongs to, if any.
    pub layer: Option<usize>,
    /// What it computes.
    pub op: Op,
    /// Values per row.
    pub width: usize,
}

/// An architecture's forward pass: weights and nodes in execution order.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    /// Every weight the nodes use.
    pub weights: Vec<WeightSpec>,
    /// The nodes, each reading only earlier ones.
    pub nodes: Vec<Node>,
    /// The logits node (`[n_out, n_vocab]`).
    pub output: NodeId,
    /// KV cache layers the attention nodes use.
    pub n_kv_layers: usize,
}

impl Graph {
    /// The node `id`.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    /// For every node, the nodes that read it (in execution order).
    pub fn consumers(&self) -> Vec<Vec<NodeId>> {
        let mut c = vec![Vec::new(); self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for x in n.op.inputs() {
                if !c[x.0].contains(&NodeId(i)) {
                    c[x.0].push(NodeId(i));
                }
            }
        }
        c
    }

    /// The id of the node named `name`.
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name).map(NodeId)
    }

    /// One line per node of `layer` (or of the nodes outside the blocks for
    /// `None`): name, operation, width and inputs, as a trace of the graph.
    pub fn describe(&self, layer: Option<usize>) -> String {
        let mut s = String::new();
        for n in self.nodes.iter().filter(|n| n.layer == layer) {
            let inputs: Vec<&str> =
                n.op.inputs()
                    .iter()
                    .map(|i| self.nodes[i.0].name.as_str())
                    .collect();
            let weights = match &n.op {
                Op::Embed { table: w }
                | Op::RmsNorm { weight: w, .. }
                | Op::MatMul { w, .. }
                | Op::MulVec { w, .. }
                | Op::SsmConv { kernel: w, .. } => {
                    format!(" [{}]", self.weights[w.0].label())
                }
                _ => String::new(),
            };
            s.push_str(&format!(
                "{:<18} {:<10} [n, {}] <- {}{}\n",
                n.name,
                n.op.kind(),
                n.width,
                inputs.join(", "),
                weights
            ));
        }
        s
    }
}
