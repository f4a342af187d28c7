//! tensor-core's [`Backend`] seam on the GPU, so that llama-model's forward
//! pass (written once against the trait) runs on wgpu.
//!
//! Each call records its dispatch into a pending command encoder; nothing
//! reaches the GPU until [`Backend::read`], which submits everything
//! recorded since the last read in one submission and copies back only what
//! is asked for. Weights are uploaded once ([`Backend::load_matrix`]);
//! activations and the KV cache live in GPU buffers.
//!
//! Every call here builds its small parameter buffer and bind group, which
//! costs CPU time per op: a session runs a graph through these calls only
//! when tracing it node by node or batching several sequences; otherwise
//! [`Backend::compile`] makes a [`crate::GpuProgram`], whose ops are built
//! once.

use std::sync::{Arc, Mutex, OnceLock};

use gguf_format::GgmlType;
use tensor_core::attention::{AttentionParams, KvShape, KvType};
use tensor_core::graph::{Graph, WeightSpec};
use tensor_core::{Backend, Program, ProgramOptions, RopeParams, Tensor, TensorError};

use crate::device::GpuContext;
use crate::kernels::{act_type, is_exact, Kernel};
use crate::ops::{self, AttnParams, EwParams, GpuMatrix, Op, OpBuilder, ScaleParams, StepUniform};

type TcResult<T> = tensor_core::Result<T>;

/// The most rows one dispatch takes in its z dimension (WebGPU's limit of
/// workgroups per dimension).
const MAX_DISPATCH_ROWS: usize = 65535;

/// A weight on the GPU.
#[derive(Debug)]
pub enum GpuWeight {
    /// A matrix of raw GGUF blocks.
    Matrix(GpuMatrix),
    /// An `f32` vector (kept on the host too: RoPE frequency factors are
    /// folded into the host-made cos/sin table).
    Vector {
        /// The values on the GPU.
        buffer: wgpu::Buffer,
        /// The values on the host.
        host: Vec<f32>,
    },
}

/// An `f32` activation buffer on the GPU.
#[derive(Debug)]
pub struct GpuBuffer {
    buffer: wgpu::Buffer,
    len: usize,
}

/// Every layer's keys and values on the GPU.
#[derive(Debug)]
pub struct GpuKvCache {
    shape: KvShape,
    layers: Vec<(wgpu::Buffer, wgpu::Buffer)>,
}

struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    /// Scratch for rounded activations (+ the packed layout's scales) and in-place ops.
    scratch: Option<(wgpu::Buffer, u64)>,
    temp: Option<(wgpu::Buffer, u64)>,
}

/// How the GPU computes ([`WgpuBackend::with_options`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuOptions {
    /// Exact mode: every product, norm and activation computes the CPU
    /// backend's bits (llama.cpp's CPU order). Off by default: the fast mode
    /// computes single tokens' products on float activations, with the norm
    /// or SwiGLU before them made inside the product (fewer dispatches),
    /// within the agreement bounds the README states, and batches of
    /// [`crate::ops::FAST_MM_MIN_TOKENS`] or more on float activations
    /// (`mm_fast.wgsl`, or `mm_coop.wgsl`'s cooperative matrices where the
    /// device has them); smaller batches are exact in both modes.
    pub exact: bool,
}

/// The wgpu backend behind tensor-core's [`Backend`] trait.
pub struct WgpuBackend {
    ctx: Arc<GpuContext>,
    opts: GpuOptions,
    pending: Mutex<Pending>,
    dummy: wgpu::Buffer,
    /// ggml's f16 GELU table as f32 values, uploaded at the first `geglu`.
    gelu_table: OnceLock<wgpu::Buffer>,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuBackend")
            .field("device", self.ctx.caps())
            .finish_non_exhaustive()
    }
}

fn backend_err(e: impl std::fmt::Display) -> TensorError {
    TensorError::Backend {
        backend: "wgpu",
        message: e.to_string(),
    }
}

impl WgpuBackend {
    /// The backend on an opened device, in the default (fast) mode.
    pub fn new(ctx: Arc<GpuContext>) -> WgpuBackend {
        WgpuBackend::with_options(ctx, GpuOptions::default())
    }

    /// The backend on an opened device, computing as `opts` says.
    pub fn with_options(ctx: Arc<GpuContext>, opts: GpuOptions) -> WgpuBackend {
        let dummy = ctx.storage("dummy", 16);
        WgpuBackend {
            ctx,
            opts,
            pending: Mutex::new(Pending {
                encoder: None,
                scratch: None,
                temp: None,
            }),
            dummy,
            gelu_table: OnceLock::new(),
        }
    }

    /// An activation buffer holding `data` (for tests and callers that
    /// bring their own inputs; the `Backend` seam itself only allocates).
    pub fn upload(&self, data: &[f32]) -> GpuBuffer {
        GpuBuffer {
            buffer: self.ctx.upload("activations", bytemuck::cast_slice(data)),
            len: data.len(),
        }
    }

    /// ggml's `ggml_table_gelu_f16` on the GPU: for every f16 bit pattern
    /// h, `f16(gelu_f32(h))` as an f32 (tensor-core's `ops::gelu` reads
    /// the same table).
    fn gelu_table(&self) -> &wgpu::Buffer {
        self.gelu_table.get_or_init(|| {
            let table: Vec<f32> = (0..=u16::MAX)
                .map(|h| {
                    let x = half::f16::from_bits(h).to_f32();
                    half::f16::from_f32(tensor_core::ops::gelu_f32(x)).to_f32()
                })
                .collect();
            self.ctx.upload("gelu_table", bytemuck::cast_slice(&table))
        })
    }

    /// Records a `scale.wgsl` op over `n` values of `y`.
    fn record_scale(
        &self,
        kernel: Kernel,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        y: &wgpu::Buffer,
        table: &wgpu::Buffer,
        params: ScaleParams,
    ) {
        if params.n == 0 {
            return;
        }
        let step = self.step(1, 0);
        let ob = OpBuilder {
            ctx: &self.ctx,
            step: &step,
        };
        let op = ob.scale_op(kernel, a, b, y, table, params);
        self.record(&[op], 1);
    }

    /// The device.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// How it computes.
    pub fn options(&self) -> GpuOptions {
        self.opts
    }

    fn step(&self, n_tokens: usize, pos: usize) -> wgpu::Buffer {
        let s = StepUniform {
            n_tokens: n_tokens as u32,
            pos: pos as u32,
            n_kv: (pos + n_tokens) as u32,
            zero: 0,
        };
        self.ctx.uniform("step", bytemuck::bytes_of(&s))
    }

    /// Records `ops` (each for `n_tokens`) into the pending encoder. (None
    /// of the seam's ops depends on the context's length: its attention is
    /// the exact kernel's single op.)
    fn record(&self, ops: &[Op], n_tokens: usize) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let enc = p
            .encoder
            .get_or_insert_with(|| self.ctx.device.create_command_encoder(&Default::default()));
        let mut pass = enc.begin_compute_pass(&Default::default());
        for op in ops {
            op.encode(&mut pass, n_tokens as u32, n_tokens as u32);
        }
    }

    fn copy_raw(
        &self,
        src: &wgpu::Buffer,
        src_off: u64,
        dst: &wgpu::Buffer,
        dst_off: u64,
        bytes: u64,
    ) {
        if bytes == 0 {
            return;
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let enc = p
            .encoder
            .get_or_insert_with(|| self.ctx.device.create_command_encoder(&Default::default()));
        enc.copy_buffer_to_buffer(src, src_off, dst, dst_off, bytes);
    }

    /// A scratch buffer of at least `bytes` (slot 0: rounded activations,
    /// slot 1: a copy for in-place ops), grown when needed.
    fn scratch(&self, slot: usize, bytes: u64) -> wgpu::Buffer {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let s = if slot == 0 {
            &mut p.scratch
        } else {
            &mut p.temp
        };
        match s {
            Some((b, n)) if *n >= bytes => b.clone(),
            _ => {
                let b = self.ctx.storage("scratch", bytes);
                *s = Some((b.clone(), bytes));
                b
            }
        }
    }

    fn vector<'w>(&self, w: &'w GpuWeight) -> (&'w wgpu::Buffer, &'w [f32]) {
        match w {
            GpuWeight::Vector { buffer, host } => (buffer, host),
            GpuWeight::Matrix(m) => panic!(
                "a matrix ({}×{}) was passed where a vector is needed",
                m.m, m.k
            ),
        }
    }
}

/// MXFP4 blocks (`2^(e−128) · k[q]`, `k` integers in ±12) rewritten as the
/// Q8_0 blocks of the same 32 values: scale `2^(e−128)` as `f16`, the `k[q]`
/// as the 8-bit integers. Exact while every scale is a power of two `f16`
/// holds (2^-24 ..= 2^15); a block outside that range is refused.
fn mxfp4_as_q8_0(name: &str, bytes: &[u8]) -> TcResult<Vec<u8>> {
    const QK: usize = 32;
    let n_blocks = bytes.len() / 17;
    let mut values = vec![0.0f32; n_blocks * QK];
    quant_kernels::dequantize_row(GgmlType::MXFP4, bytes, &mut values).map_err(|e| {
        TensorError::Invalid {
            name: name.to_string(),
            message: e.to_string(),
        }
    })?;
    let mut out = Vec::with_capacity(n_blocks * 34);
    for (block, x) in bytes.chunks_exact(17).zip(values.chunks_exact(QK)) {
        let e = block[0];
        let d = if e < 2 {
            f32::from_bits(0x0020_0000u32 << e)
        } else {
            f32::from_bits(((e - 1) as u32) << 23)
        };
        let dh = half::f16::from_f32(d);
        if dh.to_f32() != d {
            return Err(TensorError::Invalid {
                name: name.to_string(),
                message: format!(
                    "an MXFP4 scale 2^{} has no exact f16 (GPU Q8_0 form)",
                    e as i32 - 128
                ),
            });
        }
        out.extend_from_slice(&dh.to_bits().to_le_bytes());
        out.extend(x.iter().map(|&v| ((v / d) as i8) as u8));
    }
    Ok(out)
}

impl Backend for WgpuBackend {
    type Weight = GpuWeight;
    type Buffer = GpuBuffer;
    type KvCache = GpuKvCache;

    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn load_matrix(&self, tensor: &Tensor) -> TcResult<GpuWeight> {
        let mut ty = tensor.dtype();
        let mut bytes = std::borrow::Cow::Borrowed(tensor.bytes());
        // No MXFP4 kernel here: its blocks become the Q8_0 blocks of the
        // same values (gpt-oss's experts), products then sum as Q8_0's.
        if ty == GgmlType::MXFP4 {
            bytes = std::borrow::Cow::Owned(mxfp4_as_q8_0(tensor.name(), &bytes)?);
            ty = GgmlType::Q8_0;
        }
        let m = GpuMatrix::upload(
            &self.ctx,
            tensor.name(),
            ty,
            tensor.row_len() as u64,
            tensor.n_rows() as u64,
            &bytes,
        )
        .map_err(|e| match e {
            crate::WgpuError::UnsupportedType { tensor, ty } => {
                TensorError::UnsupportedType { name: tensor, ty }
            }
            other => TensorError::Invalid {
                name: tensor.name().to_string(),
                message: other.to_string(),
            },
        })?;
        Ok(GpuWeight::Matrix(m))
    }

    fn load_vector(&self, tensor: &Tensor) -> TcResult<GpuWeight> {
        let host = tensor.to_f32_vec()?;
        let buffer = self.ctx.upload(tensor.name(), bytemuck::cast_slice(&host));
        Ok(GpuWeight::Vector { buffer, host })
    }

    fn alloc(&self, len: usize) -> TcResult<GpuBuffer> {
        let bytes = (len as u64).max(1) * 4;
        if bytes > self.ctx.max_binding() {
            return Err(backend_err(format!(
                "a buffer of {len} floats exceeds the device's largest storage binding ({} bytes)",
                self.ctx.max_binding()
            )));
        }
        Ok(GpuBuffer {
            buffer: self
                .ctx
                .try_storage("activations", bytes)
                .map_err(backend_err)?,
            len,
        })
    }

    fn alloc_kv(&self, shape: &KvShape) -> TcResult<GpuKvCache> {
        let bytes = (shape.n_ctx * shape.n_head_kv * shape.head_dim * 4) as u64;
        if bytes > self.ctx.max_binding() {
            return Err(backend_err(format!(
                "a KV cache layer of {bytes} bytes exceeds the device's largest storage binding"
            )));
        }
        let mut layers = Vec::with_capacity(shape.n_layer);
        for _ in 0..shape.n_layer {
            let k = self
                .ctx
                .try_storage("k_cache", bytes)
                .map_err(backend_err)?;
            let v = self
                .ctx
                .try_storage("v_cache", bytes)
                .map_err(backend_err)?;
            layers.push((k, v));
        }
        Ok(GpuKvCache {
            shape: *shape,
            layers,
        })
    }

    fn get_rows(&self, table: &GpuWeight, ids: &[u32], out: &mut GpuBuffer) {
        let GpuWeight::Matrix(w) = table else {
            panic!("get_rows needs a matrix");
        };
        let step = self.step(ids.len(), 0);
        let ob = OpBuilder {
            ctx: &self.ctx,
            step: &step,
        };
        let idb = self.ctx.upload("ids", bytemuck::cast_slice(ids));
        let ops = ob.get_rows(w, &idb, &out.buffer, w.k, 1.0, &self.dummy);
        self.record(&ops, ids.len());
    }

    fn rms_norm(
        &self,
        x: &GpuBuffer,
        weight: &GpuWeight,
        eps: f32,
        n_rows: usize,
        out: &mut GpuBuffer,
    ) {
        // Rows of any width (the model's n_embd, or one head's head_dim
        // with n_rows = tokens · heads), in dispatches of at most
        // MAX_DISPATCH_ROWS rows (a dispatch's z dimension).
        let (wb, host) = self.vector(weight);
        let n = host.len() as u32;
        let step = self.step(n_rows, 0);
        let ob = OpBuilder {
            ctx: &self.ctx,
            step: &step,
        };
        let mut row0 = 0;
        while row0 < n_rows {
            let rows = (n_rows - row0).min(MAX_DISPATCH_ROWS);
            let op = ob.rms_norm_from(
                &x.buffer,
                n,
                wb,
                &out.buffer,
                n,
                n,
                eps,
                false,
                None,
                0,
                row0 as u32,
            );
            self.record(&[op], rows);
            row0 += rows;
        }
    }

    fn matmul(&self, w: &GpuWeight, x: &GpuBuffer, n_rows: usize, out: &mut GpuBuffer) {
        let GpuWeight::Matrix(w) = w else {
            panic!("matmul needs a matrix");
        };
        let k = w.k as usize;
        let step = self.step(n_rows, 0);
        let ob = OpBuilder {
            ctx: &self.ctx,
            step: &step,
        };
        let floats = (n_rows * k) as u64;
        let corr_base = floats as u32;
        let mut ops = Vec::new();
        let input = match act_type(w.ty) {
            Some(act) => {
                let s = self.scratch(0, (floats + floats / 16 + 1) * 4);
                let packed = is_exact(w.ty, w.m);
                ops.push(ob.quantize_act(
                    act, packed, &x.buffer, k as u32, &s, k as u32, k as u32, corr_base,
                ));
                s
            }
            None => x.buffer.clone(),
        };
        ops.extend(ob.linear(
            "matmul",
            w,
            &input,
            k as u32,
            &out.buffer,
            w.m,
            0,
            false,
            0,
            corr_base,
            &self.dummy,
        ));
        self.record(&ops, n_rows);
    }

    fn add_bias(&self, x: &mut GpuBuffer, bias: &GpuWeight, n_rows: usize) {
        let (bb, host) = self.vector(bias);
        let n = host.len();
        let tmp = self.scratch(1, (n_rows * n * 4) as u64);
        self.copy_raw(&x.buffer, 0, &tmp, 0, (n_rows * n * 4) as u64);
        let step = self.step(n_rows, 0);
        let ob = OpBuilder {
            ctx: &self.ctx,
            step: &step,
        };
        let p = EwParams {
            n: n as u32,
            a_stride: n as u32,
            b_stride: 0, // broadcast the bias to every row
            y_stride: n as u32,
            ..Default::default()
        };
        let op = ob.binary(Kernel::Add, &tmp, bb, &x.buffer, p, &self.dummy);
        self.record(&[op], n_rows);
    }

    fn rope(
        &self,
        x: &mut GpuBuffer,
        n_rows: usize,
        n_heads: usize,
        pos0: usize,
        rope: &RopeParams,
        freq_factors: Option<&GpuWeight>,
    ) {
        let width = n_heads * rope.head_dim;
        let mut table = vec![0f32; n_rows * rope.n_dims];
        let ff = freq_factors.map(|w| self.vector(w).1);
        for (r, row) in table.chunks_mut(rope.n_dims.max(1)).enumerate() {
            tensor_core::rope::rope_cache(pos0 + r, rope, ff, row);
        }
        // The table holds positions pos0.. only: index it from 0.
        let tb = self.ctx.upload("rope_table", bytemuck::cast_slice(&table));
        let tmp = self.scratch(1, (n_rows * width * 4) as u64);
        self.copy_raw(&x.buffer, 0, &tmp, 0, (n_rows * width * 4) as u64);
        let step = self.step(n_rows, 0);
        let ob = OpBuilder {
            ctx: &self.ctx,
            step: &step,
        };
        let op = ob.rope(
            &tmp,
            &x.buffer,
            &tb,
            ops::RopeParams {
                n_heads: n_heads as u32,
                head_dim: rope.head_dim as u32,
                n_dims: rope.n_dims as u32,
                neox: matches!(rope.mode, tensor_core::RopeMode::Neox) as u32,
                x_stride: width as u32,
                y_stride: width as u32,
                ..Default::default()
            },
        );
        self.record(&[op], n_rows);
    }

    fn store_kv(
        &self,
        cache: &mut GpuKvCache,
        layer: usize,
        pos0: usize,
        n_rows: usize,
        k: &GpuBuffer,
        v: &GpuBuffer,
    ) {
        // A RoPE with no rotated dimensions is a copy; at_pos places the rows
        // at pos0.. and rounds them to f16 for an f16 cache.
        let s = cache.shape;
        let width = (s.n_head_kv * s.head_dim) as u32;
        let step = self.step(n_rows, pos0);
        let ob = OpBuilder {
            ctx: &self.ctx,
            step: &step,
        };
        let no_table = &self.dummy;
        let p = ops::RopeParams {
            n_heads: s.n_head_kv as u32,
            head_dim: s.head_dim as u32,
            n_dims: 0,
            neox: 0,
            x_stride: width,
            y_stride: width,
            at_pos: if s.kv_type == KvType::F16 { 2 } else { 1 },
            ..Default::default()
        };
        let (kc, vc) = &cache.layers[layer];
        let ops = [
            ob.rope(&k.buffer, kc, no_table, p),
            ob.rope(&v.buffer, vc, no_table, p),
        ];
        self.record(&ops, n_rows);
    }

    fn attention(
        &self,
        q: &GpuBuffer,
        cache: &GpuKvCache,
        layer: usize,
        pos0: usize,
        n_rows: usize,
        params: &AttentionParams,
        out: &mut GpuBuffer,
    ) {
        let s = cache.shape;
        let step = self.step(n_rows, pos0);
        let ob = OpBuilder {
            ctx: &self.ctx,
            step: &step,
        };
        let (kc, vc) = &cache.layers[layer];
        let ops = ob.attention(
            &q.buffer,
            kc,
            vc,
            &out.buffer,
            AttnParams::of(
                params,
                (s.n_head_kv * s.head_dim) as u32,
                s.kv_type == KvType::F16,
            ),
            false,
            &q.buffer,
        );
        self.record(&ops, n_rows);
    }

    /// On the host: the queries and the cache layer's positions come back,
    /// tensor-core's CPU kernel attends (so the bits are the CPU
    /// backend's), and the result goes up again.
    #[allow(clippy::too_many_arguments)]
    fn attention_sinks(
        &self,
        q: &GpuBuffer,
        cache: &GpuKvCache,
        layer: usize,
        pos0: usize,
        n_rows: usize,
        params: &AttentionParams,
        sinks: &GpuWeight,
        out: &mut GpuBuffer,
    ) -> TcResult<()> {
        let sinks = self.vector_values(sinks)?;
        if sinks.len() != params.n_head {
            return Err(backend_err(format!(
                "{} attention sinks for {} heads",
                sinks.len(),
                params.n_head
            )));
        }
        let s = cache.shape;
        let qn = n_rows * params.n_head * params.head_dim;
        let kv_len = (pos0 + n_rows) * s.n_head_kv * s.head_dim;
        let mut qh = vec![0.0f32; qn];
        self.read(q, 0, &mut qh)?;
        let read_layer = |buf: &wgpu::Buffer| -> TcResult<Vec<f32>> {
            let enc = {
                let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                p.encoder
                    .take()
                    .unwrap_or_else(|| self.ctx.device.create_command_encoder(&Default::default()))
            };
            let bytes = self
                .ctx
                .read_back(enc, buf, 0, (kv_len * 4) as u64)
                .map_err(backend_err)?;
            Ok(bytemuck::cast_slice(&bytes).to_vec())
        };
        let (kc, vc) = &cache.layers[layer];
        let (k, v) = (read_layer(kc)?, read_layer(vc)?);
        let mut o = vec![0.0f32; qn];
        match s.kv_type {
            // The cache holds f16-rounded values: as f16 they are exact.
            KvType::F16 => {
                let h = |x: Vec<f32>| -> Vec<half::f16> {
                    x.into_iter().map(half::f16::from_f32).collect()
                };
                tensor_core::attention::attention_sinks(
                    &qh,
                    &h(k),
                    &h(v),
                    pos0,
                    params,
                    &sinks,
                    &mut o,
                )
            }
            KvType::F32 => {
                tensor_core::attention::attention_sinks(&qh, &k, &v, pos0, params, &sinks, &mut o)
            }
        }
        self.write(out, 0, &o)
    }

    fn swiglu(
        &self,
        gate: &GpuBuffer,
        up: &GpuBuffer,
        n_rows: usize,
        width: usize,
        out: &mut GpuBuffer,
    ) {
        let step = self.step(n_rows, 0);
        let ob = OpBuilder {
            ctx: &self.ctx,
            step: &step,
        };
        let w = width as u32;
        let p = EwParams {
            n: w,
            a_stride: w,
            b_stride: w,
            y_stride: w,
            ..Default::default()
        };
        let op = ob.binary(
            Kernel::Swiglu(None),
            &gate.buffer,
            &up.buffer,
            &out.buffer,
            p,
            &self.dummy,
        );
        self.record(&[op], n_rows);
    }

    fn geglu(
        &self,
        gate: &GpuBuffer,
        up: &GpuBuffer,
        n_rows: usize,
        width: usize,
        out: &mut GpuBuffer,
    ) {
        // Rows are contiguous: one flat pass over n_rows · width values.
        let table = self.gelu_table();
        let p = ScaleParams {
            n: (n_rows * width) as u32,
            ..Default::default()
        };
        self.record_scale(
            Kernel::Geglu,
            &gate.buffer,
            &up.buffer,
            &out.buffer,
            table,
            p,
        );
    }

    fn scale(&self, x: &mut GpuBuffer, len: usize, s: f32) {
        let p = ScaleParams {
            n: len as u32,
            s,
            ..Default::default()
        };
        let d = &self.dummy;
        self.record_scale(Kernel::Scale, d, d, &x.buffer, d, p);
    }

    fn softcap(&self, x: &mut GpuBuffer, len: usize, cap: f32) {
        let p = ScaleParams {
            n: len as u32,
            s: cap,
            inv: 1.0 / cap,
            ..Default::default()
        };
        let d = &self.dummy;
        self.record_scale(Kernel::Softcap, d, d, &x.buffer, d, p);
    }

    fn scale_rows(&self, x: &mut GpuBuffer, factors: &[f32], width: usize) {
        if factors.is_empty() || width == 0 {
            return;
        }
        let fb = self
            .ctx
            .upload("row_factors", bytemuck::cast_slice(factors));
        let p = ScaleParams {
            n: (factors.len() * width) as u32,
            width: width as u32,
            ..Default::default()
        };
        let d = &self.dummy;
        self.record_scale(Kernel::ScaleRows, d, &fb, &x.buffer, d, p);
    }

    fn add(&self, x: &mut GpuBuffer, y: &GpuBuffer, len: usize) {
        let tmp = self.scratch(1, (len * 4) as u64);
        self.copy_raw(&x.buffer, 0, &tmp, 0, (len * 4) as u64);
        let step = self.step(1, 0);
        let ob = OpBuilder {
            ctx: &self.ctx,
            step: &step,
        };
        let n = len as u32;
        let p = EwParams {
            n,
            a_stride: n,
            b_stride: n,
            y_stride: n,
            ..Default::default()
        };
        let op = ob.binary(Kernel::Add, &tmp, &y.buffer, &x.buffer, p, &self.dummy);
        self.record(&[op], 1);
    }

    fn copy(
        &self,
        src: &GpuBuffer,
        src_offset: usize,
        dst: &mut GpuBuffer,
        dst_offset: usize,
        len: usize,
    ) {
        self.copy_raw(
            &src.buffer,
            (src_offset * 4) as u64,
            &dst.buffer,
            (dst_offset * 4) as u64,
            (len * 4) as u64,
        );
    }

    fn copy_rows(
        &self,
        src: &GpuBuffer,
        src_stride: usize,
        src_offset: usize,
        dst: &mut GpuBuffer,
        dst_stride: usize,
        width: usize,
        n_rows: usize,
    ) {
        if n_rows > MAX_DISPATCH_ROWS {
            // More rows than one dispatch holds: row by row.
            for r in 0..n_rows {
                self.copy(src, r * src_stride + src_offset, dst, r * dst_stride, width);
            }
            return;
        }
        // The add kernel in copy mode: one dispatch for every row.
        let step = self.step(n_rows, 0);
        let ob = OpBuilder {
            ctx: &self.ctx,
            step: &step,
        };
        let p = EwParams {
            n: width as u32,
            a_stride: src_stride as u32,
            y_stride: dst_stride as u32,
            a_base: src_offset as u32,
            mode: 2,
            ..Default::default()
        };
        let op = ob.binary(
            Kernel::Add,
            &src.buffer,
            &src.buffer,
            &dst.buffer,
            p,
            &self.dummy,
        );
        self.record(&[op], n_rows);
    }

    fn prepare_graph(
        &self,
        graph: Graph,
        dtype: &dyn Fn(&WeightSpec) -> Option<gguf_format::GgmlType>,
    ) -> Graph {
        crate::rewrite::stack_products(crate::rewrite::rows_after_sums(graph), dtype)
    }

    fn load_stacked(&self, parts: &[Tensor]) -> TcResult<GpuWeight> {
        let first = &parts[0];
        let name: Vec<&str> = parts.iter().map(|t| t.name()).collect();
        let name = name.join("+");
        let vector = first.shape().len() == 1;
        if vector {
            let mut host = Vec::new();
            for t in parts {
                host.extend(t.to_f32_vec()?);
            }
            let buffer = self.ctx.upload(&name, bytemuck::cast_slice(&host));
            return Ok(GpuWeight::Vector { buffer, host });
        }
        let mut bytes = Vec::new();
        let mut rows = 0u64;
        for t in parts {
            if t.dtype() != first.dtype() || t.row_len() != first.row_len() {
                return Err(TensorError::Invalid {
                    name: t.name().to_string(),
                    message: format!(
                        "cannot stack a {:?} matrix of rows of {} with a {:?} one of rows of {}",
                        t.dtype(),
                        t.row_len(),
                        first.dtype(),
                        first.row_len()
                    ),
                });
            }
            bytes.extend_from_slice(t.bytes());
            rows += t.n_rows() as u64;
        }
        let m = GpuMatrix::upload(
            &self.ctx,
            &name,
            first.dtype(),
            first.row_len() as u64,
            rows,
            &bytes,
        )
        .map_err(|e| TensorError::Invalid {
            name: name.clone(),
            message: e.to_string(),
        })?;
        Ok(GpuWeight::Matrix(m))
    }

    fn compile(
        &self,
        graph: &Graph,
        weights: &[GpuWeight],
        opts: &ProgramOptions,
    ) -> TcResult<Option<Box<dyn Program>>> {
        let cfg = crate::program::ProgramConfig {
            n_ctx: u32::try_from(opts.n_ctx).map_err(backend_err)?,
            max_batch: u32::try_from(opts.n_batch).map_err(backend_err)?,
            kv_f16: opts.kv_type == KvType::F16,
            fast: !self.opts.exact,
        };
        let p = crate::program::GpuProgram::compile(self.ctx.clone(), graph, weights, &cfg)
            .map_err(backend_err)?;
        Ok(p.map(|p| Box::new(p) as Box<dyn Program>))
    }

    fn write(&self, dst: &mut GpuBuffer, offset: usize, data: &[f32]) -> TcResult<()> {
        if offset + data.len() > dst.len {
            return Err(backend_err(format!(
                "write of {} values at {offset} to a buffer of {}",
                data.len(),
                dst.len
            )));
        }
        if data.is_empty() {
            return Ok(());
        }
        // Through a staging buffer and a recorded copy, so the write is
        // ordered after the commands already recorded.
        let staging = self.upload(data);
        self.copy(&staging, 0, dst, offset, data.len());
        Ok(())
    }

    fn vector_values(&self, w: &GpuWeight) -> TcResult<Vec<f32>> {
        match w {
            GpuWeight::Vector { host, .. } => Ok(host.clone()),
            GpuWeight::Matrix(_) => Err(backend_err(
                "vector_values: the weight is a matrix, not a vector",
            )),
        }
    }

    fn read(&self, src: &GpuBuffer, offset: usize, out: &mut [f32]) -> TcResult<()> {
        if offset + out.len() > src.len {
            return Err(backend_err(format!(
                "read of {} values at {offset} from a buffer of {}",
                out.len(),
                src.len
            )));
        }
        let enc = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.encoder
                .take()
                .unwrap_or_else(|| self.ctx.device.create_command_encoder(&Default::default()))
        };
        let bytes = self
            .ctx
            .read_back(
                enc,
                &src.buffer,
                (offset * 4) as u64,
                (out.len() * 4) as u64,
            )
            .map_err(backend_err)?;
        out.copy_from_slice(bytemuck::cast_slice(&bytes));
        Ok(())
    }
}
