//! [`CpuBackend`]: weights borrowed from the mapped file, kernels from quant-kernels and [`crate::ops`].

use std::sync::Mutex;

use half::f16;
use quant_kernels::{QMatrix, Scratch};

use crate::attention::{attention, attention_sinks, store_rows, AttentionParams, KvShape, KvType};
use crate::backend::Backend;
use crate::error::{Result, TensorError};
use crate::gemm;
use crate::ops;
use crate::recurrent::{self, DeltaNetInputs, DeltaNetParams, Unary};
use crate::rope::{rope, RopeParams};
use crate::tensor::Tensor;

/// The CPU backend. Weights stay in the memory map; work is spread over
/// rayon's global pool (the caller sizes it).
#[derive(Default)]
pub struct CpuBackend {
    /// Quantized activations, reused across calls. Operations of one session
    /// run one after another, so the lock is never contended there.
    scratch: Mutex<Scratch>,
}

impl CpuBackend {
    /// A CPU backend.
    pub fn new() -> CpuBackend {
        CpuBackend::default()
    }
}

/// The KV cache of the CPU backend: per layer, keys and values as
/// `[n_ctx, n_head_kv * head_dim]`, in `f16` (llama.cpp's default) or `f32`.
pub struct CpuKvCache {
    shape: KvShape,
    layers: KvLayers,
}

enum KvLayers {
    F16(Vec<(Vec<f16>, Vec<f16>)>),
    F32(Vec<(Vec<f32>, Vec<f32>)>),
}

impl CpuKvCache {
    /// The cache's shape.
    pub fn shape(&self) -> &KvShape {
        &self.shape
    }
}

/// Fails with a message naming the size if `bytes` (the size of `what`,
/// `None` if it overflowed) exceeds the memory available
/// ([`gguf_format::available_memory`]).
pub fn check_memory(what: &str, bytes: Option<u64>) -> Result<()> {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    match (bytes, gguf_format::available_memory()) {
        (None, _) => Err(TensorError::Backend {
            backend: "cpu",
            message: format!("{what} is too large to allocate (its size overflows)"),
        }),
        (Some(b), Some(avail)) if b > avail => Err(TensorError::Backend {
            backend: "cpu",
            message: format!(
                "{what} would take {b} bytes ({:.1} GiB); only {avail} bytes ({:.1} GiB) of memory are available",
                gib(b),
                gib(avail)
            ),
        }),
        _ => Ok(()),
    }
}

/// The matrix view of a 2-D weight (validated by `load_matrix`).
fn qmatrix(w: &Tensor) -> QMatrix<'_> {
    QMatrix::new(w.dtype(), w.n_rows(), w.row_len(), w.bytes())
        .expect("load_matrix validated the weight")
}

/// The values of a vector weight (converted to `F32` by `load_vector`).
fn vector(w: &Tensor) -> &[f32] {
    w.as_f32().expect("load_vector converted the weight to f32")
}

impl CpuBackend {
    /// [`Backend::matmul`] on slices: `n_rows` rows of `x` into `out`.
    fn matmul_rows(&self, w: &Tensor, x: &[f32], n_rows: usize, out: &mut [f32]) {
        let m = qmatrix(w);
        if gemm::handles(w.dtype(), m.rows(), m.cols()) {
            return gemm::matmul_float(
                w.dtype(),
                w.bytes(),
                m.rows(),
                m.cols(),
                &x[..n_rows * m.cols()],
                n_rows,
                &mut out[..n_rows * m.rows()],
            );
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        quant_kernels::matmul(
            &m,
            &x[..n_rows * m.cols()],
            n_rows,
            &mut out[..n_rows * m.rows()],
            &mut scratch,
        );
    }
}

impl Backend for CpuBackend {
    type Weight = Tensor;
    type Buffer = Vec<f32>;
    type KvCache = CpuKvCache;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn load_matrix(&self, tensor: &Tensor) -> Result<Tensor> {
        if !quant_kernels::is_supported(tensor.dtype()) {
            return Err(TensorError::UnsupportedType {
                name: tensor.name().to_string(),
                ty: tensor.dtype(),
            });
        }
        if tensor.shape().len() > 2 {
            return Err(TensorError::Invalid {
                name: tensor.name().to_string(),
                message: format!("expected a matrix, found shape {:?}", tensor.shape()),
            });
        }
        QMatrix::new(
            tensor.dtype(),
            tensor.n_rows(),
            tensor.row_len(),
            tensor.bytes(),
        )
        .map_err(|source| TensorError::Quant {
            name: tensor.name().to_string(),
            source,
        })?;
        Ok(tensor.clone())
    }

    fn load_vector(&self, tensor: &Tensor) -> Result<Tensor> {
        if tensor.n_rows() != 1 {
            return Err(TensorError::Invalid {
                name: tensor.name().to_string(),
                message: format!("expected a vector, found shape {:?}", tensor.shape()),
            });
        }
        if !quant_kernels::is_supported(tensor.dtype()) {
            return Err(TensorError::UnsupportedType {
                name: tensor.name().to_string(),
                ty: tensor.dtype(),
            });
        }
        tensor.clone().into_f32()
    }

    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        check_memory(
            &format!("a buffer of {len} floats"),
            (len as u64).checked_mul(4),
        )?;
        let mut v = Vec::new();
        v.try_reserve_exact(len).map_err(|e| TensorError::Backend {
            backend: "cpu",
            message: format!("cannot allocate {len} floats: {e}"),
        })?;
        v.resize(len, 0.0);
        Ok(v)
    }

    fn alloc_kv(&self, shape: &KvShape) -> Result<CpuKvCache> {
        let per_layer =
            shape
                .n_ctx
                .checked_mul(shape.row_len())
                .ok_or_else(|| TensorError::Backend {
                    backend: "cpu",
                    message: format!("KV cache of {} positions is too large", shape.n_ctx),
                })?;
        let elem = match shape.kv_type {
            KvType::F16 => 2u64,
            KvType::F32 => 4,
        };
        // Checked before any layer is allocated: on a system that overcommits
        // memory, a cache too large for it is otherwise allocated, filled with
        // zeros for seconds, and ends in the process being killed.
        check_memory(
            &format!(
                "a KV cache of {} positions × {} layers × {} values (keys and values, {} bytes each)",
                shape.n_ctx,
                shape.n_layer,
                shape.row_len(),
                elem
            ),
            (per_layer as u64)
                .checked_mul(shape.n_layer as u64)
                .and_then(|n| n.checked_mul(2 * elem)),
        )?;
        fn layer<E: Clone + Default>(n: usize) -> Result<(Vec<E>, Vec<E>)> {
            let mk = || {
                let mut v = Vec::new();
                v.try_reserve_exact(n).map_err(|e| TensorError::Backend {
                    backend: "cpu",
                    message: format!("cannot allocate a KV cache layer of {n} values: {e}"),
                })?;
                v.resize(n, E::default());
                Ok::<_, TensorError>(v)
            };
            Ok((mk()?, mk()?))
        }
        let layers = match shape.kv_type {
            KvType::F16 => KvLayers::F16(
                (0..shape.n_layer)
                    .map(|_| layer(per_layer))
                    .collect::<Result<_>>()?,
            ),
            KvType::F32 => KvLayers::F32(
                (0..shape.n_layer)
                    .map(|_| layer(per_layer))
                    .collect::<Result<_>>()?,
            ),
        };
        Ok(CpuKvCache {
            shape: *shape,
            layers,
        })
    }

    fn get_rows(&self, table: &Tensor, ids: &[u32], out: &mut Vec<f32>) {
        let width = table.row_len();
        for (&id, row) in ids.iter().zip(out.chunks_mut(width)) {
            table
                .dequantize_row(id as usize, row)
                .expect("token id checked against the vocabulary");
        }
    }

    fn rms_norm(&self, x: &Vec<f32>, weight: &Tensor, eps: f32, n_rows: usize, out: &mut Vec<f32>) {
        let w = vector(weight);
        let n = n_rows * w.len();
        ops::rms_norm(&x[..n], w, eps, &mut out[..n]);
    }

    fn matmul(&self, w: &Tensor, x: &Vec<f32>, n_rows: usize, out: &mut Vec<f32>) {
        self.matmul_rows(w, x, n_rows, out)
    }

    fn matmul_expert(&self, w: &Tensor, x: &Vec<f32>, n_rows: usize, out: &mut Vec<f32>) -> bool {
        let m = qmatrix(w);
        let (rows, cols) = (m.rows(), m.cols());
        let (x, out) = (&x[..n_rows * cols], &mut out[..n_rows * rows]);
        if gemm::matmul_vec_dot(w.dtype(), w.bytes(), rows, cols, x, n_rows, out).is_some() {
            return true;
        }
        if gemm::expert_batches(w.dtype(), rows, cols) {
            self.matmul_rows(w, x, n_rows, out);
            return true;
        }
        for (xr, or) in x.chunks(cols).zip(out.chunks_mut(rows)) {
            self.matmul_rows(w, xr, 1, or);
        }
        true
    }

    fn add_bias(&self, x: &mut Vec<f32>, bias: &Tensor, n_rows: usize) {
        let b = vector(bias);
        ops::add_bias(&mut x[..n_rows * b.len()], b);
    }

    fn rope(
        &self,
        x: &mut Vec<f32>,
        n_rows: usize,
        n_heads: usize,
        pos0: usize,
        params: &RopeParams,
        freq_factors: Option<&Tensor>,
    ) {
        let n = n_rows * n_heads * params.head_dim;
        rope(&mut x[..n], n_heads, pos0, params, freq_factors.map(vector));
    }

    fn store_kv(
        &self,
        cache: &mut CpuKvCache,
        layer: usize,
        pos0: usize,
        n_rows: usize,
        k: &Vec<f32>,
        v: &Vec<f32>,
    ) {
        let w = cache.shape.row_len();
        let n = n_rows * w;
        match &mut cache.layers {
            KvLayers::F16(l) => {
                store_rows(&mut l[layer].0, w, pos0, &k[..n]);
                store_rows(&mut l[layer].1, w, pos0, &v[..n]);
            }
            KvLayers::F32(l) => {
                store_rows(&mut l[layer].0, w, pos0, &k[..n]);
                store_rows(&mut l[layer].1, w, pos0, &v[..n]);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Vec<f32>,
        cache: &CpuKvCache,
        layer: usize,
        pos0: usize,
        n_rows: usize,
        params: &AttentionParams,
        out: &mut Vec<f32>,
    ) {
        let n = n_rows * params.n_head * params.head_dim;
        match &cache.layers {
            KvLayers::F16(l) => attention(
                &q[..n],
                &l[layer].0,
                &l[layer].1,
                pos0,
                params,
                &mut out[..n],
            ),
            KvLayers::F32(l) => attention(
                &q[..n],
                &l[layer].0,
                &l[layer].1,
                pos0,
                params,
                &mut out[..n],
            ),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_sinks(
        &self,
        q: &Vec<f32>,
        cache: &CpuKvCache,
        layer: usize,
        pos0: usize,
        n_rows: usize,
        params: &AttentionParams,
        sinks: &Tensor,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let sinks = vector(sinks);
        if sinks.len() != params.n_head {
            return Err(TensorError::Backend {
                backend: "cpu",
                message: format!(
                    "{} attention sinks for {} heads",
                    sinks.len(),
                    params.n_head
                ),
            });
        }
        let n = n_rows * params.n_head * params.head_dim;
        match &cache.layers {
            KvLayers::F16(l) => attention_sinks(
                &q[..n],
                &l[layer].0,
                &l[layer].1,
                pos0,
                params,
                sinks,
                &mut out[..n],
            ),
            KvLayers::F32(l) => attention_sinks(
                &q[..n],
                &l[layer].0,
                &l[layer].1,
                pos0,
                params,
                sinks,
                &mut out[..n],
            ),
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn swiglu_oai(
        &self,
        gate: &Vec<f32>,
        up: &Vec<f32>,
        n_rows: usize,
        width: usize,
        alpha: f32,
        limit: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let n = n_rows * width;
        ops::swiglu_oai(&gate[..n], &up[..n], alpha, limit, &mut out[..n]);
        Ok(())
    }

    fn swiglu(
        &self,
        gate: &Vec<f32>,
        up: &Vec<f32>,
        n_rows: usize,
        width: usize,
        out: &mut Vec<f32>,
    ) {
        let len = n_rows * width;
        ops::swiglu(&gate[..len], &up[..len], width, &mut out[..len]);
    }

    fn geglu(
        &self,
        gate: &Vec<f32>,
        up: &Vec<f32>,
        n_rows: usize,
        width: usize,
        out: &mut Vec<f32>,
    ) {
        let len = n_rows * width;
        ops::geglu(&gate[..len], &up[..len], &mut out[..len]);
    }

    fn scale(&self, x: &mut Vec<f32>, len: usize, s: f32) {
        ops::scale(&mut x[..len], s);
    }

    fn softcap(&self, x: &mut Vec<f32>, len: usize, cap: f32) {
        ops::softcap(&mut x[..len], cap);
    }

    fn scale_rows(&self, x: &mut Vec<f32>, factors: &[f32], width: usize) {
        for (row, &f) in x.chunks_mut(width).zip(factors) {
            ops::scale(row, f);
        }
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>, len: usize) {
        ops::add(&mut x[..len], &y[..len]);
    }

    fn copy(
        &self,
        src: &Vec<f32>,
        src_offset: usize,
        dst: &mut Vec<f32>,
        dst_offset: usize,
        len: usize,
    ) {
        dst[dst_offset..dst_offset + len].copy_from_slice(&src[src_offset..src_offset + len]);
    }

    fn read(&self, src: &Vec<f32>, offset: usize, out: &mut [f32]) -> Result<()> {
        let end = offset + out.len();
        if end > src.len() {
            return Err(TensorError::Backend {
                backend: "cpu",
                message: format!("read of {}..{end} past a buffer of {}", offset, src.len()),
            });
        }
        out.copy_from_slice(&src[offset..end]);
        Ok(())
    }

    fn write(&self, dst: &mut Vec<f32>, offset: usize, data: &[f32]) -> Result<()> {
        let end = offset + data.len();
        if end > dst.len() {
            return Err(TensorError::Backend {
                backend: "cpu",
                message: format!("write of {}..{end} past a buffer of {}", offset, dst.len()),
            });
        }
        dst[offset..end].copy_from_slice(data);
        Ok(())
    }

    fn vector_values(&self, w: &Tensor) -> Result<Vec<f32>> {
        Ok(vector(w).to_vec())
    }

    fn unary(&self, x: &mut Vec<f32>, n_rows: usize, width: usize, f: Unary) -> Result<()> {
        recurrent::unary(&mut x[..n_rows * width], width, f);
        Ok(())
    }

    fn mul(
        &self,
        x: &mut Vec<f32>,
        y: &Vec<f32>,
        n_rows: usize,
        width: usize,
        y_width: usize,
    ) -> Result<()> {
        recurrent::mul(&mut x[..n_rows * width], &y[..n_rows * y_width], width);
        Ok(())
    }

    fn mul_vec(&self, x: &mut Vec<f32>, w: &Tensor, n_rows: usize) -> Result<()> {
        let w = vector(w);
        recurrent::mul_rows(&mut x[..n_rows * w.len()], w);
        Ok(())
    }

    fn l2_norm(
        &self,
        x: &Vec<f32>,
        group: usize,
        eps: f32,
        len: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        recurrent::l2_norm(&x[..len], group, eps, &mut out[..len]);
        Ok(())
    }

    fn ssm_conv(
        &self,
        x: &Vec<f32>,
        kernel: &Tensor,
        state: &mut Vec<f32>,
        n_rows: usize,
        channels: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let len = n_rows * channels;
        recurrent::ssm_conv(&x[..len], vector(kernel), state, channels, &mut out[..len]);
        Ok(())
    }

    fn delta_net(
        &self,
        x: DeltaNetInputs<'_, Vec<f32>>,
        state: &mut Vec<f32>,
        n_rows: usize,
        p: &DeltaNetParams,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let (kw, vw) = (
            n_rows * p.n_head_k * p.head_dim,
            n_rows * p.n_head_v * p.head_dim,
        );
        let hv = n_rows * p.n_head_v;
        let h = DeltaNetInputs {
            q: &x.q[..kw],
            k: &x.k[..kw],
            v: &x.v[..vw],
            g: &x.g[..hv],
            beta: &x.beta[..hv],
        };
        recurrent::delta_net(h, state, p, &mut out[..vw]);
        Ok(())
    }
}
