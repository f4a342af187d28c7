//! [`Model`]: hyper-parameters plus weights resident on a backend.

use std::path::Path;
use std::sync::Arc;

use gguf_format::{Gguf, GgufFile};
use tensor_core::{Backend, CpuBackend, Tensor};

use crate::config::{Config, LoadOptions};
use crate::error::{ModelError, Result};
use crate::session::{Session, SessionOptions};

/// The weights of one transformer block.
pub(crate) struct Layer<W> {
    pub attn_norm: W,
    pub wq: W,
    pub wk: W,
    pub wv: W,
    pub bq: Option<W>,
    pub bk: Option<W>,
    pub bv: Option<W>,
    pub wo: W,
    pub bo: Option<W>,
    pub ffn_norm: W,
    pub ffn_gate: W,
    pub ffn_up: W,
    pub ffn_down: W,
}

/// All weights of a model.
pub(crate) struct Weights<W> {
    pub token_embd: W,
    pub layers: Vec<Layer<W>>,
    pub output_norm: W,
    /// `None` when the embeddings are tied: the output projection is `token_embd`.
    pub output: Option<W>,
    /// LLaMA-3 per-pair RoPE frequency factors.
    pub rope_freqs: Option<W>,
}

/// A loaded LLaMA-family model: its [`Config`] and its weights on backend `B`.
///
/// On the CPU the weights are views of the memory-mapped file (the model
/// holds the file through `Arc`s, never copies of its tensors). Run it
/// through a [`Session`], which owns the KV cache and the buffers.
pub struct Model<B: Backend = CpuBackend> {
    config: Config,
    backend: B,
    pub(crate) weights: Weights<B::Weight>,
}

impl Model<CpuBackend> {
    /// Maps the GGUF file at `path` and loads its model on the CPU.
    pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Model<CpuBackend>> {
        let file = Arc::new(GgufFile::open(path)?);
        Model::load_with(&file, CpuBackend::new(), opts)
    }
}

/// Loads tensors by name with the checks every weight needs.
struct Loader<'a, D, B> {
    file: &'a Arc<Gguf<D>>,
    backend: &'a B,
}

impl<D, B> Loader<'_, D, B>
where
    D: AsRef<[u8]> + Send + Sync + 'static,
    B: Backend,
{
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = Tensor::from_gguf(self.file, name)?;
        t.expect_shape(shape)?;
        Ok(t)
    }

    fn matrix(&self, name: &str, cols: usize, rows: usize) -> Result<B::Weight> {
        let t = self.tensor(name, &[cols, rows])?;
        Ok(self.backend.load_matrix(&t)?)
    }

    fn vector(&self, name: &str, len: usize) -> Result<B::Weight> {
        let t = self.tensor(name, &[len])?;
        Ok(self.backend.load_vector(&t)?)
    }

    fn optional_vector(&self, name: &str, len: usize) -> Result<Option<B::Weight>> {
        if self.file.tensor(name).is_none() {
            return Ok(None);
        }
        self.vector(name, len).map(Some)
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
        let ld = Loader {
            file,
            backend: &backend,
        };
        let token_embd = backend.load_matrix(&embd)?;
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            layers.push(Layer {
                attn_norm: ld.vector(&n("attn_norm.weight"), c.n_embd)?,
                wq: ld.matrix(&n("attn_q.weight"), c.n_embd, c.q_width())?,
                wk: ld.matrix(&n("attn_k.weight"), c.n_embd, c.kv_width())?,
                wv: ld.matrix(&n("attn_v.weight"), c.n_embd, c.kv_width())?,
                bq: ld.optional_vector(&n("attn_q.bias"), c.q_width())?,
                bk: ld.optional_vector(&n("attn_k.bias"), c.kv_width())?,
                bv: ld.optional_vector(&n("attn_v.bias"), c.kv_width())?,
                wo: ld.matrix(&n("attn_output.weight"), c.q_width(), c.n_embd)?,
                bo: ld.optional_vector(&n("attn_output.bias"), c.n_embd)?,
                ffn_norm: ld.vector(&n("ffn_norm.weight"), c.n_embd)?,
                ffn_gate: ld.matrix(&n("ffn_gate.weight"), c.n_embd, c.n_ff)?,
                ffn_up: ld.matrix(&n("ffn_up.weight"), c.n_embd, c.n_ff)?,
                ffn_down: ld.matrix(&n("ffn_down.weight"), c.n_ff, c.n_embd)?,
            });
            if c.arch == crate::Architecture::Qwen2 {
                for (b, name) in [
                    (&layers[i].bq, "attn_q.bias"),
                    (&layers[i].bk, "attn_k.bias"),
                    (&layers[i].bv, "attn_v.bias"),
                ] {
                    if b.is_none() {
                        return Err(ModelError::MissingTensor { name: n(name) });
                    }
                }
            }
        }
        let output_norm = ld.vector("output_norm.weight", c.n_embd)?;
        let output = match file.tensor("output.weight") {
            Some(_) => Some(ld.matrix("output.weight", c.n_embd, c.n_vocab)?),
            None => None,
        };
        let rope_freqs = ld.optional_vector("rope_freqs.weight", c.rope.n_dims / 2)?;
        let weights = Weights {
            token_embd,
            layers,
            output_norm,
            output,
            rope_freqs,
        };
        Ok(Model {
            config,
            backend,
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
        self.weights.output.is_none()
    }

    /// A new session (KV cache and buffers) over this model.
    pub fn session(&self, opts: &SessionOptions) -> Result<Session<'_, B>> {
        Session::new(self, opts)
    }
}
