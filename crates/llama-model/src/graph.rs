//! Building a model graph ([`Graph`]): weights by tensor name and the
//! helpers architectures share. The graph itself (nodes, ops, weights) is
//! tensor-core's [`tensor_core::graph`], which every backend executes.

use std::collections::HashMap;

use gguf_format::GgufHeader;
use tensor_core::{AttentionParams, DeltaNetParams, RopeParams, Unary};

pub use tensor_core::graph::{
    ExpertAct, ExpertBiases, Gating, Graph, Moe, Node, NodeId, Op, WeightId, WeightKind, WeightSpec,
};

use crate::error::{ModelError, Result};

/// Builds a [`Graph`]: weights by tensor name, nodes named as llama.cpp names
/// them, and the helpers architectures share (llama.cpp's `build_norm`,
/// `build_qkv`, `build_attn`, `build_ffn`, `build_moe_ffn`).
pub struct GraphBuilder<'h> {
    header: &'h GgufHeader,
    weights: Vec<WeightSpec>,
    by_spec: HashMap<(String, Option<(usize, usize)>), WeightId>,
    nodes: Vec<Node>,
    layer: Option<usize>,
    n_kv_layers: usize,
}

impl<'h> GraphBuilder<'h> {
    /// A builder over the tensors of `header`.
    pub fn new(header: &'h GgufHeader) -> GraphBuilder<'h> {
        GraphBuilder {
            header,
            weights: Vec::new(),
            by_spec: HashMap::new(),
            nodes: Vec::new(),
            layer: None,
            n_kv_layers: 0,
        }
    }

    /// Names nodes made from now on as belonging to block `layer` (`-0`
    /// suffix), or to none.
    pub fn set_layer(&mut self, layer: Option<usize>) {
        self.layer = layer;
    }

    /// Whether the file has tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.header.tensor(name).is_some()
    }

    fn add_weight(&mut self, spec: WeightSpec) -> WeightId {
        let key = (spec.tensor.clone(), spec.rows);
        if let Some(&id) = self.by_spec.get(&key) {
            return id;
        }
        let id = WeightId(self.weights.len());
        self.weights.push(spec);
        self.by_spec.insert(key, id);
        id
    }

    /// The matrix `tensor`, which must be `[cols, rows]`.
    pub fn matrix(&mut self, tensor: &str, cols: usize, rows: usize) -> WeightId {
        self.add_weight(WeightSpec {
            tensor: tensor.to_string(),
            shape: vec![cols, rows],
            kind: WeightKind::Matrix,
            rows: None,
            stack: Vec::new(),
        })
    }

    /// Rows `first..first + count` of `tensor` (of shape `shape`) as a matrix:
    /// one part of a fused projection, or one expert of a 3-D tensor.
    pub fn matrix_rows(
        &mut self,
        tensor: &str,
        shape: &[usize],
        first: usize,
        count: usize,
    ) -> WeightId {
        self.add_weight(WeightSpec {
            tensor: tensor.to_string(),
            shape: shape.to_vec(),
            kind: WeightKind::Matrix,
            rows: Some((first, count)),
            stack: Vec::new(),
        })
    }

    /// The vector `tensor` of `len` values.
    pub fn vector(&mut self, tensor: &str, len: usize) -> WeightId {
        self.add_weight(WeightSpec {
            tensor: tensor.to_string(),
            shape: vec![len],
            kind: WeightKind::Vector,
            rows: None,
            stack: Vec::new(),
        })
    }

    /// Rows `first..first + count` of `tensor` (of shape `shape`) as one
    /// flat `f32` vector: one expert's bias of a `[len, n_expert]` tensor.
    pub fn vector_rows(
        &mut self,
        tensor: &str,
        shape: &[usize],
        first: usize,
        count: usize,
    ) -> WeightId {
        self.add_weight(WeightSpec {
            tensor: tensor.to_string(),
            shape: shape.to_vec(),
            kind: WeightKind::Vector,
            rows: Some((first, count)),
            stack: Vec::new(),
        })
    }

    /// The tensor `tensor` of shape `shape` as one flat `f32` vector (a
    /// convolution's taps).
    pub fn flat_vector(&mut self, tensor: &str, shape: &[usize]) -> WeightId {
        self.add_weight(WeightSpec {
            tensor: tensor.to_string(),
            shape: shape.to_vec(),
            kind: WeightKind::Vector,
            rows: None,
            stack: Vec::new(),
        })
    }

    /// The vector `tensor` if the file has it.
    pub fn opt_vector(&mut self, tensor: &str, len: usize) -> Option<WeightId> {
        self.has(tensor).then(|| self.vector(tensor, len))
    }

    /// The matrix `tensor` if the file has it.
    pub fn opt_matrix(&mut self, tensor: &str, cols: usize, rows: usize) -> Option<WeightId> {
        self.has(tensor).then(|| self.matrix(tensor, cols, rows))
    }

    /// Adds a node named `name` (with the block suffix) of `width` values a row.
    pub fn node(&mut self, name: &str, op: Op, width: usize) -> NodeId {
        let name = match self.layer {
            Some(l) => format!("{name}-{l}"),
            None => name.to_string(),
        };
        if let Op::Attention { layer, .. } = op {
            self.n_kv_layers = self.n_kv_layers.max(layer + 1);
        }
        self.nodes.push(Node {
            name,
            layer: self.layer,
            op,
            width,
        });
        NodeId(self.nodes.len() - 1)
    }

    /// The name of node `x` without its block suffix.
    pub fn base_name(&self, x: NodeId) -> String {
        let n = &self.nodes[x.0];
        match n.layer {
            Some(l) => n
                .name
                .strip_suffix(&format!("-{l}"))
                .unwrap_or(&n.name)
                .to_string(),
            None => n.name.clone(),
        }
    }

    /// The width of node `x`.
    pub fn width(&self, x: NodeId) -> usize {
        self.nodes[x.0].width
    }

    /// `build_norm(.., LLM_NORM_RMS)`: RMSNorm times `weight` over groups of its length.
    pub fn rms_norm(&mut self, name: &str, x: NodeId, weight: WeightId, eps: f32) -> NodeId {
        let w = self.width(x);
        self.node(name, Op::RmsNorm { x, weight, eps }, w)
    }

    /// `x · Wᵀ (+ bias)`, `rows` values a row.
    pub fn matmul(
        &mut self,
        name: &str,
        x: NodeId,
        w: WeightId,
        bias: Option<WeightId>,
        rows: usize,
    ) -> NodeId {
        self.node(name, Op::MatMul { x, w, bias }, rows)
    }

    /// `a + b`.
    pub fn add(&mut self, name: &str, a: NodeId, b: NodeId) -> NodeId {
        let w = self.width(a);
        self.node(name, Op::Add { a, b }, w)
    }

    /// `x · s`.
    pub fn scale(&mut self, name: &str, x: NodeId, s: f32) -> NodeId {
        let w = self.width(x);
        self.node(name, Op::Scale { x, s }, w)
    }

    /// RoPE of `n_heads` heads a row.
    pub fn rope(
        &mut self,
        name: &str,
        x: NodeId,
        n_heads: usize,
        params: RopeParams,
        factors: Option<WeightId>,
    ) -> NodeId {
        let w = self.width(x);
        self.node(
            name,
            Op::Rope {
                x,
                n_heads,
                params,
                factors,
            },
            w,
        )
    }

    /// `cap · tanh(x / cap)`.
    pub fn softcap(&mut self, name: &str, x: NodeId, cap: f32) -> NodeId {
        let w = self.width(x);
        self.node(name, Op::Softcap { x, cap }, w)
    }

    /// Attention over KV cache `layer`, named `kqv_out`.
    pub fn attention(
        &mut self,
        q: NodeId,
        k: NodeId,
        v: NodeId,
        layer: usize,
        params: AttentionParams,
    ) -> NodeId {
        self.attention_sinks(q, k, v, layer, params, None)
    }

    /// [`GraphBuilder::attention`] with a sink logit per query head (`sinks`, if any).
    pub fn attention_sinks(
        &mut self,
        q: NodeId,
        k: NodeId,
        v: NodeId,
        layer: usize,
        params: AttentionParams,
        sinks: Option<WeightId>,
    ) -> NodeId {
        let w = params.n_head * params.head_dim;
        self.node(
            "kqv_out",
            Op::Attention {
                q,
                k,
                v,
                layer,
                params,
                sinks,
            },
            w,
        )
    }

    /// `f(x)` element by element.
    pub fn unary(&mut self, name: &str, x: NodeId, f: Unary) -> NodeId {
        let w = self.width(x);
        self.node(name, Op::Unary { x, f }, w)
    }

    /// `a · b` element by element.
    pub fn mul(&mut self, name: &str, a: NodeId, b: NodeId) -> NodeId {
        let w = self.width(a);
        self.node(name, Op::Mul { a, b }, w)
    }

    /// `x · w`, the vector `w` broadcast over rows.
    pub fn mul_vec(&mut self, name: &str, x: NodeId, w: WeightId) -> NodeId {
        let width = self.width(x);
        self.node(name, Op::MulVec { x, w }, width)
    }

    /// L2 normalisation over groups of `group` values.
    pub fn l2_norm(&mut self, name: &str, x: NodeId, group: usize, eps: f32) -> NodeId {
        let w = self.width(x);
        self.node(name, Op::L2Norm { x, group, eps }, w)
    }

    /// Values `offset .. offset + len` of every group of `period` values of `x`'s rows.
    pub fn strided(
        &mut self,
        name: &str,
        x: NodeId,
        period: usize,
        offset: usize,
        len: usize,
    ) -> NodeId {
        let w = self.width(x) / period * len;
        self.node(name, Op::Strided { x, period, offset }, w)
    }

    /// Values `offset .. offset + width` of every row of `x`.
    pub fn slice(&mut self, name: &str, x: NodeId, offset: usize, width: usize) -> NodeId {
        self.node(name, Op::Slice { x, offset }, width)
    }

    /// The short causal convolution of `x` with `kernel` over recurrent state `state`.
    pub fn ssm_conv(&mut self, name: &str, x: NodeId, kernel: WeightId, state: usize) -> NodeId {
        let w = self.width(x);
        self.node(name, Op::SsmConv { x, kernel, state }, w)
    }

    /// The gated delta rule over recurrent state `state`.
    #[allow(clippy::too_many_arguments)] // the operation's inputs, spelled out
    pub fn delta_net(
        &mut self,
        name: &str,
        qkv: (NodeId, NodeId, NodeId),
        g: NodeId,
        beta: NodeId,
        state: usize,
        params: DeltaNetParams,
    ) -> NodeId {
        let (q, k, v) = qkv;
        let w = params.n_head_v * params.head_dim;
        self.node(
            name,
            Op::DeltaNet {
                q,
                k,
                v,
                g,
                beta,
                state,
                params,
            },
            w,
        )
    }

    /// The rows whose logits are wanted.
    pub fn output_rows(&mut self, name: &str, x: NodeId) -> NodeId {
        let w = self.width(x);
        self.node(name, Op::OutputRows { x }, w)
    }

    /// The finished graph, with `output` as its logits.
    pub fn finish(self, output: NodeId) -> Graph {
        Graph {
            weights: self.weights,
            nodes: self.nodes,
            output,
            n_kv_layers: self.n_kv_layers,
        }
    }

    /// The file's header (for architectures' own metadata).
    pub fn header(&self) -> &'h GgufHeader {
        self.header
    }
}

/// A missing tensor, as an error.
pub(crate) fn missing(name: &str) -> ModelError {
    ModelError::MissingTensor {
        name: name.to_string(),
    }
}

/// Checks `what` or fails with `Unsupported`.
pub(crate) fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(ModelError::Unsupported(what()))
    }
}
