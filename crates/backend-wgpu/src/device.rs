//! The device layer: adapter choice, limits, features, pipeline cache,
//! buffer pool and read-back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::error::{Result, WgpuError};
use crate::kernels::{Kernel, Shader};

/// Environment variable naming the adapter to use (a case-insensitive
/// substring of its name, e.g. `llvmpipe` or `H100`).
pub const ADAPTER_ENV: &str = "STRATA_ADAPTER";

/// Environment variable that, when set, leaves cooperative matrices unused
/// even where the device offers them ([`DeviceCaps::coop_f16_16`]): batches
/// of the fast mode then take the portable `mm_fast`.
pub const NO_COOP_ENV: &str = "STRATA_NO_COOP";

/// How to pick and open a GPU.
#[derive(Clone, Debug, Default)]
pub struct DeviceOptions {
    /// Use the first adapter whose name contains this (case-insensitive).
    /// When `None`, [`ADAPTER_ENV`] is consulted, and failing that the
    /// adapter of the best kind is taken (discrete, integrated, virtual,
    /// then CPU).
    pub adapter: Option<String>,
}

/// What the opened device offers, as far as the kernels care.
#[derive(Clone, Debug)]
pub struct DeviceCaps {
    /// Adapter name (`NVIDIA H100 80GB HBM3`, `llvmpipe (LLVM 15.0.7, 256 bits)`).
    pub name: String,
    /// Discrete, integrated, CPU...
    pub device_type: wgpu::DeviceType,
    /// Vulkan, Metal, DX12...
    pub backend: wgpu::Backend,
    /// Largest storage-buffer binding: tensors above it are split by rows.
    pub max_storage_binding: u64,
    /// Largest buffer.
    pub max_buffer_size: u64,
    /// `shader-f16` is available (not required by any kernel).
    pub shader_f16: bool,
    /// Subgroup operations are available (not required by any kernel).
    pub subgroups: bool,
    /// Subgroups are available and always 32 invocations wide, reported so
    /// and checked at creation by running a probe (each subgroup 32
    /// consecutive invocations of a workgroup, its shuffles and reductions
    /// over them): the exact K-quant products of single tokens use
    /// `quant_sg.wgsl`.
    pub subgroup32: bool,
    /// Cooperative matrices of 16×16×16 f16 × f16 → f32 at subgroup scope
    /// with 32-wide subgroups and `shader-f16` (wgpu's experimental
    /// `EXPERIMENTAL_COOPERATIVE_MATRIX`, requested only then): the fast
    /// mode's batch products take `mm_coop.wgsl`. Off where [`NO_COOP_ENV`]
    /// is set.
    pub coop_f16_16: bool,
    /// Bytes of workgroup memory a workgroup may hold.
    pub max_workgroup_storage: u32,
    /// Timestamp queries are available (used by [`crate::GpuProgram::profile_step`]).
    pub timestamps: bool,
    /// WGSL's `fma` rounds once on this device (probed at open). Where it
    /// does not (llvmpipe computes a·b + c), the kernels emulate a fused
    /// multiply-add in integer arithmetic (`fma.wgsl`).
    pub fused_fma: bool,
}

/// Uniform-size buckets of the buffer pool.
type PoolKey = (u64, wgpu::BufferUsages);

/// An open GPU: device, queue, compiled pipelines and pooled buffers.
///
/// Cheap to share: clone the `Arc` it is handed out in.
pub struct GpuContext {
    /// The wgpu device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    caps: DeviceCaps,
    modules: Mutex<HashMap<Shader, wgpu::ShaderModule>>,
    layouts: Mutex<HashMap<Shader, (wgpu::BindGroupLayout, wgpu::PipelineLayout)>>,
    pipelines: Mutex<HashMap<Kernel, wgpu::ComputePipeline>>,
    pool: Mutex<HashMap<PoolKey, Vec<wgpu::Buffer>>>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

impl GpuContext {
    /// Opens a GPU chosen as [`DeviceOptions`] says.
    ///
    /// Fails with [`WgpuError::NoAdapter`] when no adapter (or none with the
    /// requested name) exists.
    pub fn new(opts: &DeviceOptions) -> Result<Arc<GpuContext>> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::PRIMARY,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
        let wanted = opts
            .adapter
            .clone()
            .or_else(|| std::env::var(ADAPTER_ENV).ok().filter(|s| !s.is_empty()));
        let seen = || {
            adapters
                .iter()
                .map(|a| format!("{} ({:?})", a.get_info().name, a.get_info().backend))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let adapter = match &wanted {
            Some(name) => {
                let lower = name.to_lowercase();
                adapters
                    .iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&lower))
            }
            None => adapters
                .iter()
                .min_by_key(|a| type_rank(a.get_info().device_type)),
        };
        let Some(adapter) = adapter else {
            return Err(WgpuError::NoAdapter {
                wanted: wanted
                    .map(|w| format!(" matching \"{w}\""))
                    .unwrap_or_default(),
                seen: seen(),
            });
        };
        let info = adapter.get_info();
        let offered = adapter.features();
        // Optional features: taken when offered, never required by a kernel.
        let optional = wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let mut features = offered & optional;
        // Cooperative matrices: an experimental feature, asked for only
        // where the adapter offers the configuration mm_coop.wgsl uses, with
        // the 32-wide subgroups it assumes (eight subgroups a workgroup of
        // 256), f16 and its 24 KiB of workgroup memory.
        let coop_config = offered
            .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16)
            && adapter.cooperative_matrix_properties().iter().any(|c| {
                (c.m_size, c.n_size, c.k_size) == (16, 16, 16)
                    && c.ab_type == wgpu::CooperativeScalarType::F16
                    && c.cr_type == wgpu::CooperativeScalarType::F32
            });
        let coop = coop_config
            && adapter.limits().max_compute_workgroup_storage_size >= 24 * 1024
            && info.subgroup_min_size == 32
            && info.subgroup_max_size == 32
            && std::env::var_os(NO_COOP_ENV).is_none();
        let experimental_features = if coop {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
            // SAFETY: wgpu asks callers of experimental features to accept
            // that its implementation of them may have bugs with undefined
            // behaviour. The only experimental feature requested is
            // cooperative matrices, used by one kernel (mm_coop.wgsl) whose
            // loads and stores stay inside workgroup arrays it owns, in
            // uniform control flow, with the configuration (16×16×16, f16
            // inputs, f32 accumulators, subgroup scope) the adapter reports;
            // NO_COOP_ENV turns it off.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        // Ask for everything the adapter offers: large storage bindings and
        // buffers matter for the embedding and output matrices.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("strata"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features,
            ..Default::default()
        }))
        .map_err(|source| WgpuError::RequestDevice {
            adapter: info.name.clone(),
            source,
        })?;
        let caps = DeviceCaps {
            name: info.name.clone(),
            device_type: info.device_type,
            backend: info.backend,
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup32: features.contains(wgpu::Features::SUBGROUP)
                && info.subgroup_min_size == 32
                && info.subgroup_max_size == 32
                && std::env::var_os("STRATA_NO_SUBGROUPS").is_none(),
            coop_f16_16: coop,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            timestamps: features.contains(
                wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
            ),
            fused_fma: false,
        };
        let mut ctx = GpuContext {
            device,
            queue,
            caps,
            modules: Mutex::new(HashMap::new()),
            layouts: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            pool: Mutex::new(HashMap::new()),
        };
        ctx.caps.fused_fma = ctx.probe_fused_fma()?;
        if ctx.caps.subgroup32 && !ctx.probe_subgroup32()? {
            ctx.caps.subgroup32 = false;
            ctx.caps.coop_f16_16 = false;
        }
        Ok(Arc::new(ctx))
    }

    /// Runs `src`'s `main` as one workgroup over a buffer holding `init`
    /// and returns the buffer's words afterwards.
    fn run_probe(&self, label: &str, src: &str, init: &[u32]) -> Result<Vec<u32>> {
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        let buf = self.upload(label, bytemuck::cast_slice(init));
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: buf.as_entire_binding(),
            }],
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        let bytes = self.read_back(encoder, &buf, 0, 4 * init.len() as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Whether the subgroups are what the [`DeviceCaps::subgroup32`]
    /// kernels take them to be: in a workgroup of 256, invocation `lid` is
    /// lane `lid % 32` of a subgroup of 32 holding `lid & !31 ..`, and
    /// shuffles, maxima and sums over it give those lanes' values. WGSL
    /// leaves how a workgroup is cut into subgroups to the implementation,
    /// and a reported size can be wrong: llvmpipe with
    /// `LP_NATIVE_VECTOR_WIDTH=1024` reports 32 but runs 16 lanes.
    fn probe_subgroup32(&self) -> Result<bool> {
        const SRC: &str = "
@group(0) @binding(0) var<storage, read_write> v: array<u32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) t: u32,
        @builtin(subgroup_size) n: u32) {
    let xor1 = subgroupShuffleXor(lid, 1u);
    let rev = subgroupShuffle(lid, 31u - t);
    let mx = subgroupMax(lid);
    let sum = subgroupAdd(1u);
    let ok = (n == 32u) & (t == (lid & 31u)) & (xor1 == (lid ^ 1u)) & (rev == (lid ^ 31u))
        & (mx == (lid | 31u)) & (sum == 32u);
    v[lid] = select(0u, 1u, ok);
}";
        Ok(self
            .run_probe("subgroup probe", SRC, &[0; 256])?
            .iter()
            .all(|&ok| ok == 1))
    }

    /// Whether WGSL's `fma` is fused here: (1 + 2⁻¹²)² − (1 + 2⁻¹¹) is 2⁻²⁴
    /// when the product is not rounded first, 0 when it is. The operands
    /// come from a buffer so that no compiler can fold them.
    fn probe_fused_fma(&self) -> Result<bool> {
        const SRC: &str = "
@group(0) @binding(0) var<storage, read_write> v: array<f32, 4>;
@compute @workgroup_size(1)
fn main() {
    v[3] = fma(v[0], v[1], v[2]);
}";
        let a = 1.0 + 2f32.powi(-12);
        let init = [a, a, -(1.0 + 2f32.powi(-11)), 0.0].map(f32::to_bits);
        let out = self.run_probe("fma probe", SRC, &init)?;
        Ok(f32::from_bits(out[3]) == 2f32.powi(-24))
    }

    /// What the device offers.
    pub fn caps(&self) -> &DeviceCaps {
        &self.caps
    }

    /// Largest byte size of one storage binding (and so of one weight part).
    pub(crate) fn max_binding(&self) -> u64 {
        self.caps.max_storage_binding.min(self.caps.max_buffer_size)
    }

    /// The bind-group layout shared by every entry point of `shader`.
    pub(crate) fn bind_group_layout(&self, shader: Shader) -> wgpu::BindGroupLayout {
        self.layouts_for(shader).0
    }

    fn layouts_for(&self, shader: Shader) -> (wgpu::BindGroupLayout, wgpu::PipelineLayout) {
        // A shader's variants (quant_sg.wgsl's and quant_tg.wgsl's kernels, the
        // subgroup twins) bind what it binds: one layout, so that an op's bind
        // group serves every variant.
        let shader = shader.layout_base();
        let mut layouts = self.layouts.lock().unwrap_or_else(|e| e.into_inner());
        layouts
            .entry(shader)
            .or_insert_with(|| {
                let entries: Vec<wgpu::BindGroupLayoutEntry> = shader
                    .bindings()
                    .iter()
                    .enumerate()
                    .map(|(i, kind)| wgpu::BindGroupLayoutEntry {
                        binding: i as u32,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: kind.binding_type(),
                        count: None,
                    })
                    .collect();
                let bgl = self
                    .device
                    .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                        label: Some(shader.name()),
                        entries: &entries,
                    });
                let pl = self
                    .device
                    .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: Some(shader.name()),
                        bind_group_layouts: &[Some(&bgl)],
                        immediate_size: 0,
                    });
                (bgl, pl)
            })
            .clone()
    }

    /// The compute pipeline of `kernel`, compiled on first use and cached.
    pub(crate) fn pipeline(&self, kernel: Kernel) -> wgpu::ComputePipeline {
        if let Some(p) = self
            .pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&kernel)
        {
            return p.clone();
        }
        let shader = kernel.shader().for_device(self.caps.subgroup32);
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
            modules
                .entry(shader)
                .or_insert_with(|| {
                    self.device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(shader.name()),
                            source: wgpu::ShaderSource::Wgsl(shader.source().into()),
                        })
                })
                .clone()
        };
        let (_, layout) = self.layouts_for(shader);
        let mut constants = kernel.constants();
        constants.push(("FMA_FUSED", f64::from(u8::from(self.caps.fused_fma))));
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry_point()),
                layout: Some(&layout),
                module: &module,
                entry_point: Some(kernel.entry_point()),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        self.pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kernel, pipeline.clone());
        pipeline
    }

    /// A storage buffer of at least `size` bytes from the pool (contents
    /// undefined), or a new one. Sizes are rounded up to a power of two so
    /// that buffers of similar size are reused.
    pub fn take_buffer(&self, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        let size = size.max(16).next_power_of_two();
        let key = (size, usage);
        if let Some(b) = self
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&key)
            .and_then(Vec::pop)
        {
            return b;
        }
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("pooled"),
            size,
            usage,
            mapped_at_creation: false,
        })
    }

    /// Returns a buffer obtained from [`GpuContext::take_buffer`] to the pool.
    pub fn recycle(&self, buffer: wgpu::Buffer) {
        let key = (buffer.size(), buffer.usage());
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .push(buffer);
    }

    /// A storage buffer holding `bytes` (padded with zeros past one spare
    /// word, which unaligned 32-bit reads may touch, to a multiple of 16
    /// bytes: whole vec4s).
    pub(crate) fn upload(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        let padded = (bytes.len() + 4).div_ceil(16) * 16;
        let mut data = Vec::with_capacity(padded);
        data.extend_from_slice(bytes);
        data.resize(padded, 0);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &data,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
            })
    }

    /// [`GpuContext::storage`] for sizes that come from input (a KV cache,
    /// a weight): the device's out-of-memory or validation error becomes an
    /// error naming the buffer and its size, not a panic.
    pub(crate) fn try_storage(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let b = self.storage(label, size);
        let errors = [
            pollster::block_on(invalid.pop()),
            pollster::block_on(oom.pop()),
        ];
        match errors.into_iter().flatten().next() {
            None => Ok(b),
            Some(e) => Err(WgpuError::Device(format!(
                "cannot allocate {label} ({size} bytes) on the GPU: {e}"
            ))),
        }
    }

    /// [`GpuContext::upload`] through [`GpuContext::try_storage`].
    pub(crate) fn try_upload(&self, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        let padded = (bytes.len() + 4).div_ceil(16) * 16;
        let b = self.try_storage(label, padded as u64)?;
        let mut data = Vec::with_capacity(padded);
        data.extend_from_slice(bytes);
        data.resize(padded, 0);
        self.queue.write_buffer(&b, 0, &data);
        Ok(b)
    }

    /// A zeroed storage buffer of `size` bytes.
    pub(crate) fn storage(&self, label: &str, size: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            // Whole vec4s: kernels that read a buffer as array<vec4<f32>>
            // see only complete ones (robust access reads 0 past the end).
            size: size.max(16).div_ceil(16) * 16,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// A uniform buffer holding `bytes`.
    pub(crate) fn uniform(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// Copies `size` bytes at `offset` of `src` back to the CPU after
    /// recording the copy into `encoder` and submitting it: the only
    /// read-back path, through a pooled staging buffer.
    pub(crate) fn read_back(
        &self,
        encoder: wgpu::CommandEncoder,
        src: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>> {
        let pending = self.submit_read(Vec::new(), encoder, src, offset, size);
        self.finish_read(pending)
    }

    /// Submits `before` (command buffers recorded earlier), then `encoder`
    /// with a copy of `size` bytes at `offset` of `src` into a pooled staging
    /// buffer, and asks for it to be mapped; [`GpuContext::finish_read`]
    /// waits for it. The CPU is free in between (to record the next step).
    pub(crate) fn submit_read(
        &self,
        before: Vec<wgpu::CommandBuffer>,
        mut encoder: wgpu::CommandEncoder,
        src: &wgpu::Buffer,
        offset: u64,
        size: u64,
    ) -> PendingRead {
        let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let staging = self.take_buffer(size, usage);
        encoder.copy_buffer_to_buffer(src, offset, &staging, 0, size);
        self.queue
            .submit(before.into_iter().chain([encoder.finish()]));
        let (tx, rx) = std::sync::mpsc::channel();
        staging
            .slice(..size)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        PendingRead { staging, size, rx }
    }

    /// Waits for a read submitted by [`GpuContext::submit_read`] and returns
    /// its bytes.
    pub(crate) fn finish_read(&self, pending: PendingRead) -> Result<Vec<u8>> {
        let PendingRead { staging, size, rx } = pending;
        let dev = |e: &dyn std::fmt::Display| WgpuError::Device(e.to_string());
        // Polls without blocking for up to SPIN_WAIT (longer than a
        // decoding step; CUDA's stream synchronisation spins likewise), then
        // blocks: a blocking wait sleeps until the driver wakes the thread.
        // (On an H100, TinyLlama Q4_K_M, a token with its read-back took
        // 1.565 ms with this and 1.720 ms before it; that build also timed
        // the best of three runs rather than one.)
        let until = std::time::Instant::now() + SPIN_WAIT;
        let mapped = loop {
            match rx.try_recv() {
                Ok(r) => break r,
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
                Err(e) => return Err(dev(&e)),
            }
            if std::time::Instant::now() >= until {
                self.device
                    .poll(wgpu::PollType::wait_indefinitely())
                    .map_err(|e| dev(&e))?;
                break rx.recv().map_err(|e| dev(&e))?;
            }
            self.device
                .poll(wgpu::PollType::Poll)
                .map_err(|e| dev(&e))?;
            std::hint::spin_loop();
        };
        mapped.map_err(|e| dev(&e))?;
        let slice = staging.slice(..size);
        let out = slice
            .get_mapped_range()
            .map_err(|e| WgpuError::Device(e.to_string()))?
            .to_vec();
        staging.unmap();
        self.recycle(staging);
        Ok(out)
    }
}

/// How long [`GpuContext::finish_read`] polls before it blocks.
const SPIN_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// A read-back submitted and not yet waited for ([`GpuContext::submit_read`]).
pub(crate) struct PendingRead {
    staging: wgpu::Buffer,
    size: u64,
    rx: std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `y[i] = fma_rn(a, b, c)` and `mul_rn(a, b) + c` over the
    /// triples with fma.wgsl's emulation forced on.
    fn run_fma(ctx: &GpuContext, triples: &[[f32; 3]]) -> Vec<[f32; 2]> {
        let src = format!(
            "{}
struct Step {{ n_tokens: u32, pos: u32, n_kv: u32, zero: u32 }}
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> step: Step;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {{
    let i = g.x;
    if (i >= arrayLength(&a) / 3u) {{ return; }}
    let x = a[3u * i];
    let b = a[3u * i + 1u];
    let c = a[3u * i + 2u];
    y[2u * i] = fma_rn(x, b, c);
    y[2u * i + 1u] = mul_rn(x, b) + c;
}}",
            include_str!("shaders/fma.wgsl")
        );
        let module = ctx
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: None,
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
        let pipeline = ctx
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: None,
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[("FMA_FUSED", 0.0)],
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        let n = triples.len();
        let a = ctx.upload("a", bytemuck::cast_slice(triples));
        let y = ctx.storage("y", (8 * n) as u64);
        let step = ctx.uniform("step", bytemuck::cast_slice(&[0u32; 4]));
        let bind = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: a.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: y.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: step.as_entire_binding(),
                },
            ],
        });
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(n.div_ceil(64) as u32, 1, 1);
        }
        bytemuck::pod_collect_to_vec(&ctx.read_back(encoder, &y, 0, (8 * n) as u64).unwrap())
    }

    /// The emulated fused multiply-add rounds exactly as the CPU's FMA
    /// instruction on random operands and on the hard cases (cancellation,
    /// ties, addends far above or below the product); `mul_rn` is not fused.
    #[test]
    fn fma_emulation_is_correctly_rounded() {
        let ctx = GpuContext::new(&DeviceOptions::default()).unwrap();
        let mut s = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut t = Vec::new();
        for i in 0..200_000 {
            let r = next();
            let mant = |v: u64| f32::from_bits(0x3f80_0000 | (v as u32 & 0x7f_ffff)) - 1.0 + 1.0;
            let sign = |v: u64| if v & 1 == 0 { 1.0 } else { -1.0 };
            let a = sign(r >> 60) * mant(r) * 2f32.powi((r >> 40) as i32 % 20 - 10);
            let b = sign(r >> 61) * mant(r >> 23) * 2f32.powi((r >> 48) as i32 % 20 - 10);
            let c = match i % 4 {
                // near −a·b: massive cancellation
                0 => -(a * b) * (1.0 + sign(r >> 62) * mant(r >> 5) * 2f32.powi(-20)),
                1 => -(a * b),
                2 => sign(r >> 62) * mant(r >> 9) * 2f32.powi((r >> 52) as i32 % 80 - 40),
                _ => (a * b) * 2f32.powi(-24) * sign(r >> 63),
            };
            t.push([a, b, c]);
        }
        // Integer sums times block scales, as the products pass them.
        for i in 0..20_000u32 {
            let d = half::f16::from_bits((next() as u16 & 0x3fff) | 0x0400).to_f32();
            let e = half::f16::from_bits((next() as u16 & 0x3fff) | 0x0400).to_f32();
            let sum = (next() % 130_001) as f32 - 65_000.0;
            t.push([d * e, sum, (i as f32 - 10_000.0) * d]);
        }
        let got = run_fma(&ctx, &t);
        for (&[a, b, c], &[f, m]) in t.iter().zip(&got) {
            assert_eq!(
                f.to_bits(),
                a.mul_add(b, c).to_bits(),
                "fma_rn({a:e}, {b:e}, {c:e}) = {f:e}, expected {:e}",
                a.mul_add(b, c)
            );
            assert_eq!(
                m.to_bits(),
                (a * b + c).to_bits(),
                "mul_rn({a:e}, {b:e}) + {c:e}"
            );
        }
    }
}
