//! The crate's one error type.

use gguf_format::GgmlType;

/// What went wrong in the GPU backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WgpuError {
    /// No adapter at all, or none matching the requested name.
    #[error("no GPU adapter found{wanted}; adapters seen: [{seen}] (on Linux, install a Vulkan driver, e.g. mesa-vulkan-drivers for llvmpipe)")]
    NoAdapter {
        /// ` matching "name"` when a name was requested, else empty.
        wanted: String,
        /// Names of the adapters that were found.
        seen: String,
    },
    /// The device could not be created.
    #[error("cannot open GPU device on adapter `{adapter}`: {source}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// wgpu's reason.
        source: wgpu::RequestDeviceError,
    },
    /// A weight type with no GPU kernel.
    #[error("tensor `{tensor}`: type {ty} has no GPU kernel")]
    UnsupportedType {
        /// Tensor name.
        tensor: String,
        /// Its ggml type.
        ty: GgmlType,
    },
    /// A shape the kernels cannot take.
    #[error("tensor `{tensor}`: {what}")]
    BadShape {
        /// Tensor name.
        tensor: String,
        /// What is wrong with it.
        what: String,
    },
    /// A tensor the model needs is missing or malformed in the file.
    #[error("model file: {0}")]
    Gguf(#[from] gguf_format::GgufError),
    /// A model hyper-parameter is missing or out of range.
    #[error("model: {0}")]
    Model(String),
    /// A request the loaded model cannot serve (too many tokens, bad id, ...).
    #[error("{0}")]
    Request(String),
    /// The device reported an error (out of memory, lost device, validation).
    #[error("GPU error: {0}")]
    Device(String),
}

/// Result with [`WgpuError`].
pub type Result<T, E = WgpuError> = std::result::Result<T, E>;
