//! The GPU backend: WGSL kernels dispatched through wgpu (Vulkan, Metal, DX12).
//!
//! Filled in by the backend-wgpu issue.
#![deny(missing_docs)]
