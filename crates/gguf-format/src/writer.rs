//! Building GGUF files: metadata, tensor table and aligned tensor data.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use crate::error::{GgufError, Result};
use crate::reader::{GgufHeader, TensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::rules;
use crate::types::GgmlType;
use crate::value::{Value, ValueType};

/// The version every file is written as.
const WRITE_VERSION: u32 = 3;

/// Builds a GGUF file (version 3) from metadata and tensors, then writes it.
///
/// Everything given is checked against the same rules the reader enforces,
/// when it is given, so a mistake is a [`GgufError::Write`] at the call that
/// made it and every file written reads back. Tensors are laid out in the
/// order they were added, each at an offset that is a multiple of the
/// alignment (`general.alignment` if set, else 32) and padded with zeros
/// to the next multiple, as llama.cpp writes them.
///
/// Tensor bytes are held as [`Cow`]: pass a `Vec<u8>` to hand over owned
/// bytes, or a `&'a [u8]` (for example [`Gguf::tensor_data`] of another
/// file) to write them without copying.
///
/// [`Gguf::tensor_data`]: crate::Gguf::tensor_data
///
/// ```
/// use gguf_format::{Gguf, GgmlType, GgufWriter};
/// let mut w = GgufWriter::new();
/// w.add_metadata("general.architecture", "llama")?;
/// w.add_metadata("llama.block_count", 2u32)?;
/// w.add_metadata("tokenizer.ggml.tokens", vec!["<s>", "</s>"])?;
/// let weights: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
/// w.add_tensor("output_norm.weight", GgmlType::F32, &[4], weights)?;
///
/// let file = Gguf::from_data(w.to_bytes()?)?;
/// assert_eq!(file.get_u32("llama.block_count")?, 2);
/// let (info, bytes) = file.tensor_by_name("output_norm.weight")?;
/// assert_eq!((info.dims.as_slice(), bytes.len()), (&[4u64][..], 16));
/// # Ok::<(), gguf_format::GgufError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct GgufWriter<'a> {
    metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    tensors: Vec<PendingTensor<'a>>,
    tensor_index: HashMap<String, usize>,
}

#[derive(Clone, Debug)]
struct PendingTensor<'a> {
    name: String,
    ggml_type: GgmlType,
    dims: Vec<u64>,
    data: Cow<'a, [u8]>,
}

fn write_err(message: String) -> GgufError {
    GgufError::Write { message }
}

impl<'a> GgufWriter<'a> {
    /// An empty file: no metadata, no tensors.
    pub fn new() -> GgufWriter<'a> {
        GgufWriter::default()
    }

    /// Checks a key-value pair against the reader's rules.
    fn check_metadata(key: &str, value: &Value) -> Result<()> {
        if key.is_empty() {
            return Err(write_err("empty metadata key".into()));
        }
        let at_key = |m: String| write_err(format!("metadata key `{key}`: {m}"));
        rules::string_len(key.len() as u64, "key").map_err(at_key)?;
        rules::value(value, 0).map_err(at_key)?;
        if key == "general.alignment" {
            rules::alignment(value).map_err(at_key)?;
        }
        Ok(())
    }

    /// Adds a key-value pair after the existing ones.
    ///
    /// Errors if the key is empty or already present, or the value is not
    /// writable (an array holding values of another type than its element
    /// type, nesting deeper than [`MAX_ARRAY_DEPTH`](crate::MAX_ARRAY_DEPTH),
    /// a `general.alignment` that is not a power-of-two `u32`).
    pub fn add_metadata(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Result<()> {
        let key = key.into();
        let value = value.into();
        Self::check_metadata(&key, &value)?;
        if self.index.contains_key(&key) {
            return Err(write_err(format!("duplicate metadata key `{key}`")));
        }
        self.index.insert(key.clone(), self.metadata.len());
        self.metadata.push((key, value));
        Ok(())
    }

    /// Sets `key` to `value`: replaces the value in place if the key is
    /// present, else adds it at the end. Checked as in [`add_metadata`](Self::add_metadata).
    pub fn set_metadata(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Result<()> {
        let key = key.into();
        let value = value.into();
        Self::check_metadata(&key, &value)?;
        match self.index.get(&key) {
            Some(&i) => self.metadata[i].1 = value,
            None => {
                self.index.insert(key.clone(), self.metadata.len());
                self.metadata.push((key, value));
            }
        }
        Ok(())
    }

    /// Removes `key`, returning its value if it was present.
    pub fn remove_metadata(&mut self, key: &str) -> Option<Value> {
        let i = self.index.remove(key)?;
        let (_, value) = self.metadata.remove(i);
        for slot in self.index.values_mut() {
            if *slot > i {
                *slot -= 1;
            }
        }
        Some(value)
    }

    /// Copies every key-value pair of `header`, in its order, as
    /// [`set_metadata`](Self::set_metadata) would: keys already present take
    /// the header's value. Use it to start a file from another (a quantizer
    /// copies the source model's metadata, then sets `general.file_type`).
    pub fn copy_metadata_from(&mut self, header: &GgufHeader) -> Result<()> {
        for (key, value) in header.metadata() {
            self.set_metadata(key.clone(), value.clone())?;
        }
        Ok(())
    }

    /// The metadata so far, in the order it will be written.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Sets `general.alignment` (a power of two up to
    /// [`MAX_ALIGNMENT`](crate::MAX_ALIGNMENT)).
    pub fn set_alignment(&mut self, alignment: u32) -> Result<()> {
        self.set_metadata("general.alignment", Value::U32(alignment))
    }

    /// The alignment tensor data will be written with.
    pub fn alignment(&self) -> u64 {
        // Only a valid value can have been set (see `check_metadata`).
        self.get("general.alignment")
            .and_then(|v| rules::alignment(v).ok())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Adds a tensor after the existing ones.
    ///
    /// `dims` are ggml's `ne`, innermost first; `data` must be exactly the
    /// tensor's size (`dims` product / block size × bytes per block). Errors
    /// if the name is empty, 64 bytes or longer, or already used, or the
    /// shape is invalid for the type (see [`GgufHeader::parse`]), or the data
    /// has the wrong length.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ggml_type: GgmlType,
        dims: &[u64],
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<()> {
        let name = name.into();
        let data = data.into();
        let bad = |m: String| write_err(format!("tensor `{name}`: {m}"));
        rules::tensor_name(&name).map_err(bad)?;
        if self.tensor_index.contains_key(&name) {
            return Err(bad("duplicate tensor name".into()));
        }
        let size = rules::shape(ggml_type, dims).map_err(bad)?;
        if data.len() as u64 != size {
            return Err(bad(format!(
                "{} bytes of data given, a {ggml_type} tensor of shape {dims:?} has {size}",
                data.len()
            )));
        }
        self.tensor_index.insert(name.clone(), self.tensors.len());
        self.tensors.push(PendingTensor {
            name,
            ggml_type,
            dims: dims.to_vec(),
            data,
        });
        Ok(())
    }

    /// The tensor table as it will be written: names, types, shapes and the
    /// offsets (relative to the data section) the current alignment gives.
    pub fn tensor_infos(&self) -> Vec<TensorInfo> {
        let alignment = self.alignment();
        let mut offset = 0u64;
        self.tensors
            .iter()
            .map(|t| {
                let info = TensorInfo {
                    name: t.name.clone(),
                    ggml_type: t.ggml_type,
                    dims: t.dims.clone(),
                    offset,
                };
                offset += pad_to(t.data.len() as u64, alignment);
                info
            })
            .collect()
    }

    /// Encodes the header (magic to tensor table, without the padding).
    fn header_bytes(&self, infos: &[TensorInfo]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&WRITE_VERSION.to_le_bytes());
        out.extend_from_slice(&(infos.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            out.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            put_value(&mut out, value);
        }
        for t in infos {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        out
    }

    /// Writes the file to `w`, returning the number of bytes written.
    ///
    /// The header is encoded in memory first (its size decides where the
    /// data starts); tensor data is streamed from where it is held.
    pub fn write_to<W: Write>(&self, mut w: W) -> Result<u64> {
        let io = |source| GgufError::WriteIo { source };
        let alignment = self.alignment();
        let infos = self.tensor_infos();
        let mut header = self.header_bytes(&infos);
        let header_len = header.len() as u64;
        header.resize(pad_to(header_len, alignment) as usize, 0);
        w.write_all(&header).map_err(io)?;
        let mut written = header.len() as u64;
        let zeros = vec![0u8; alignment as usize];
        for t in &self.tensors {
            let len = t.data.len() as u64;
            let padding = (pad_to(len, alignment) - len) as usize;
            w.write_all(&t.data).map_err(io)?;
            w.write_all(&zeros[..padding]).map_err(io)?;
            written += len + padding as u64;
        }
        w.flush().map_err(io)?;
        Ok(written)
    }

    /// The whole file as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// Writes the file to `path`: into a temporary file beside it, renamed
    /// over `path` once complete ([`OutputFile`](crate::OutputFile)). A
    /// failed write leaves `path` as it was, and a process that has the old
    /// file open or mapped (the file being requantized) keeps its bytes.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<u64> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut out = crate::OutputFile::create(path)?;
        let written = self.write_to(&mut out).map_err(|e| match e {
            GgufError::WriteIo { source } => io(source),
            e => e,
        })?;
        out.commit()?;
        Ok(written)
    }
}

/// `n` rounded up to a multiple of `alignment` (a power of two).
fn pad_to(n: u64, alignment: u64) -> u64 {
    n.div_ceil(alignment) * alignment
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Encodes a value without its type tag (array elements carry none).
fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_str(out, s),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Array(a) => {
            out.extend_from_slice(&(a.element_type() as u32).to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            a.encode_elements(out, put_value);
        }
    }
}

// The on-disk type tag is the enum discriminant; keep them tied together.
const _: () = assert!(ValueType::F64 as u32 == 12 && ValueType::Array as u32 == 9);
