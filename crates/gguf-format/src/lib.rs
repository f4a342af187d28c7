//! Strict, zero-copy reading and writing of GGUF files, llama.cpp's model format.
//!
//! A GGUF file is a header (version, typed metadata key-value pairs, a tensor
//! table) followed by aligned tensor data. This crate parses the header into a
//! [`GgufHeader`], validating every field so that a hostile file is a clear
//! [`GgufError`] naming what is wrong and where, never a panic, a hang or an
//! allocation sized by a length the file declares. Tensor data is never
//! copied: [`Gguf::tensor_data`] hands out slices of the memory map.
//!
//! [`GgufWriter`] builds files (metadata, tensors, alignment and padding)
//! under the same rules the reader enforces, so what it writes reads back;
//! given llama.cpp's metadata and tensors it reproduces llama.cpp's files
//! byte for byte.
//!
//! The ggml type table ([`GgmlType`]) lives here too, so every crate above
//! shares one description of each block format's size.
//!
//! ```no_run
//! use gguf_format::GgufFile;
//! let file = GgufFile::open("model.gguf")?;
//! let layers = file.get_u32("llama.block_count")?;
//! let (info, bytes) = file.tensor_by_name("token_embd.weight")?;
//! println!("{layers} layers; {} is {} with {} bytes", info.name, info.ggml_type, bytes.len());
//! # Ok::<(), gguf_format::GgufError>(())
//! ```
#![deny(missing_docs)]

mod error;
mod file;
mod reader;
mod rules;
mod types;
mod value;
mod writer;

pub use error::{GgufError, Result};
pub use file::{
    available_memory, install_sigbus_handler, open_regular, same_file, FileData, GgufFile,
    OutputFile,
};
pub use reader::{
    Gguf, GgufHeader, TensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ALIGNMENT, MAX_ARRAY_DEPTH,
    MAX_ARRAY_LEN, MAX_DIMS, MAX_NAME_LEN, MAX_STRING_LEN,
};
pub use types::{GgmlType, TypeInfo};
pub use value::{Array, Value, ValueType, Values};
pub use writer::GgufWriter;
