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
    /// Timestamp queries are available (used by [`crate::GpuModel::profile_step`]).
    pub timestamps: bool,
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
        let features = offered & optional;
        // Ask for everything the adapter offers: large storage bindings and
        // buffers matter for the embedding and output matrices.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("strata"),
            required_features: features,
            required_limits: limits.clone(),
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
            timestamps: features.contains(
                wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
            ),
        };
        Ok(Arc::new(GpuContext {
            device,
            queue,
            caps,
            modules: Mutex::new(HashMap::new()),
            layouts: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            pool: Mutex::new(HashMap::new()),
        }))
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
        let shader = kernel.shader();
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
        let constants = kernel.constants();
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

    /// A storage buffer holding `bytes` (padded with zeros to a multiple of
    /// 4 bytes plus one spare word, which unaligned 32-bit reads may touch).
    pub(crate) fn upload(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        let padded = (bytes.len() + 4).div_ceil(4) * 4;
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

    /// A zeroed storage buffer of `size` bytes.
    pub(crate) fn storage(&self, label: &str, size: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(16).div_ceil(4) * 4,
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
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| WgpuError::Device(e.to_string()))?;
        rx.recv()
            .map_err(|e| WgpuError::Device(e.to_string()))?
            .map_err(|e| WgpuError::Device(e.to_string()))?;
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

/// A read-back submitted and not yet waited for ([`GpuContext::submit_read`]).
pub(crate) struct PendingRead {
    staging: wgpu::Buffer,
    size: u64,
    rx: std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}
