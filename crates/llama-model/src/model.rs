//! [`Model`]: hyper-parameters plus weights resident on a backend.

use std::path::Path;
use std::sync::Arc;

use gguf_format::{Gguf, GgufFile};
use tensor_core::{Backend, CpuBackend, Tensor};

use crate::config::{Config, LoadOptions};
use crate::error::{ModelError, Result};
use crate::graph::{Graph, GraphBuilder, WeightKind, WeightSpec};
use crate::session::{Session, SessionOptions};

/// A loaded model: its [`Config`], its [`Graph`] and the graph's weights on backend `B`.
///
/// On the CPU the weights are views of the memory-mapped file (the model
/// holds the file through `Arc`s, never copies of its tensors). Run it
/// through a [`Session`], which owns the KV cache and the buffers.
pub struct Model<B: Backend = CpuBackend> {
    config: Config,
    backend: B,
    graph: Graph,
    tied: bool,
    /// The graph's weights, indexed by [`crate::graph::WeightId`].
    pub(crate) weights: Vec<B::Weight>,
}

impl Model<CpuBackend> {
    /// Maps the GGUF file at `path` and loads its model on the CPU.
    pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Model<CpuBackend>> {
        let file = Arc::new(GgufFile::open(path)?);
        Model::load_with(&file, CpuBackend::new(), opts)
    }
}

impl<B: Backend> Model<B> {
    /// Loads the model of `file` onto `backend`, checking every hyper-parameter
    /// and every tensor's presence, shape and type.
    pub fn load_with<D>(file: &Arc<Gguf<D>>, backend: B, opts: &LoadOptions) -> Result<Model<B>>
    where
        D: AsRef<[u8]> + Send + Sync + 'static,
    {
        // The architecture first: an unknown one is the clearest error.
        crate::Architecture::from_name(file.get_str("general.architecture")?)?;
        let embd = Tensor::from_gguf(file, "token_embd.weight")?;
        if embd.shape().len() != 2 {
            return Err(ModelError::WrongShape {
                name: embd.name().to_string(),
                expected: vec![0, 0],
                found: embd.shape().to_vec(),
            });
        }
        let config = Config::from_gguf(file.header(), embd.n_rows(), opts)?;
        let c = &config;
        if embd.row_len() != c.n_embd {
            return Err(ModelError::WrongShape {
                name: embd.name().to_string(),
                expected: vec![c.n_embd, c.n_vocab],
                found: embd.shape().to_vec(),
            });
        }
        let graph = crate::arch::build_graph(c, GraphBuilder::new(file.header()))?;
        // The backend's rewrite (fusions), given each weight's element type.
        let header = file.header();
        let dtype = |w: &WeightSpec| header.tensor(&w.tensor).map(|t| t.ggml_type);
        let graph = backend.prepare_graph(graph, &dtype);
        let mut weights = Vec::with_capacity(graph.weights.len());
        for spec in &graph.weights {
            weights.push(load_weight(file, &backend, spec)?);
        }
        Ok(Model {
            tied: file.tensor("output.weight").is_none(),
            config,
            backend,
            graph,
            weights,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The backend the weights live on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Whether the output projection reuses the token embedding (no `output.weight`).
    pub fn tied_embeddings(&self) -> bool {
        self.tied
    }

    /// The graph's weights on the backend, indexed by [`crate::graph::WeightId`].
    pub fn weights(&self) -> &[B::Weight] {
        &self.weights
    }

    /// The forward pass as a graph of named operations.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// A new session (KV cache and buffers) over this model.
    pub fn session(&self, opts: &SessionOptions) -> Result<Session<'_, B>> {
        Session::new(self, opts)
    }
}

/// Loads one weight of the graph: the tensor (or its rows), shape-checked,
/// made resident on `backend`.
fn load_weight<D, B>(file: &Arc<Gguf<D>>, backend: &B, spec: &WeightSpec) -> Result<B::Weight>
where
    D: AsRef<[u8]> + Send + Sync + 'static,
    B: Backend,
{
    if !spec.stack.is_empty() {
        let mut parts = vec![weight_tensor(file, spec)?];
        for part in &spec.stack {
            parts.push(weight_tensor(file, part)?);
        }
        return Ok(backend.load_stacked(&parts)?);
    }
    let t = weight_tensor(file, spec)?;
    Ok(match spec.kind {
        WeightKind::Matrix => backend.load_matrix(&t)?,
        // A vector of several dimensions (a convolution's taps) is loaded flat.
        WeightKind::Vector if t.shape().len() > 1 => {
            let flat = Tensor::from_f32(t.name(), vec![t.n_elements()], t.to_f32_vec()?)?;
            backend.load_vector(&flat)?
        }
        WeightKind::Vector => backend.load_vector(&t)?,
    })
}

/// The tensor (or its rows) of one weight, shape-checked.
fn weight_tensor<D>(file: &Arc<Gguf<D>>, spec: &WeightSpec) -> Result<Tensor>
where
    D: AsRef<[u8]> + Send + Sync + 'static,
{
    let t = Tensor::from_gguf(file, &spec.tensor)?;
    t.expect_shape(&spec.shape)?;
    Ok(match spec.rows {
        Some((first, count)) => t.rows(first, count, &spec.label())?,
        None => t,
    })
}
