//! Parsing and validating a GGUF file's header, metadata and tensor table.

use std::collections::HashMap;

use crate::error::{GgufError, Result};
use crate::rules;
use crate::types::GgmlType;
use crate::value::{Array, Value, ValueType};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The largest `general.alignment` accepted (1 MiB).
pub const MAX_ALIGNMENT: u64 = 1 << 20;
/// The longest string (key or value) accepted, in bytes (1 GiB).
pub const MAX_STRING_LEN: u64 = 1 << 30;
/// The most elements an array value may declare.
pub const MAX_ARRAY_LEN: u64 = 1 << 28;
/// How deeply arrays may nest (an array of arrays is depth 2).
pub const MAX_ARRAY_DEPTH: usize = 3;
/// The most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Tensor names must be shorter than this (ggml's `GGML_MAX_NAME`).
pub const MAX_NAME_LEN: usize = 64;

/// One tensor's entry in the tensor table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Dimensions, innermost (contiguous) first, as ggml's `ne`.
    pub dims: Vec<u64>,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements (product of the dimensions).
    pub fn n_elements(&self) -> u64 {
        // Validated at parse time not to overflow.
        self.dims.iter().product()
    }

    /// Bytes of tensor data.
    pub fn n_bytes(&self) -> u64 {
        // Validated at parse time: whole blocks, no overflow.
        self.n_elements() / self.ggml_type.block_size() as u64 * self.ggml_type.type_size() as u64
    }

    /// Row length (first dimension).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (product of all but the first dimension).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

/// A parsed GGUF header: version, metadata and tensor table.
///
/// Holds no tensor data; see [`Gguf`] for the file with its bytes.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    /// Format version (2 or 3).
    pub version: u32,
    metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    /// Alignment of tensor data.
    pub alignment: u64,
    /// Absolute byte offset of the data section.
    pub data_offset: u64,
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn pos(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        (self.data.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::UnexpectedEof {
                offset: self.pos(),
                needed: n - self.remaining(),
                what: what.to_string(),
            });
        }
        let n = n as usize;
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed UTF-8 string, where `what` names it in messages.
    /// Errors are (byte offset, message) for the caller to place.
    fn string(&mut self, what: &str) -> std::result::Result<String, (u64, String)> {
        self.str_slice(what).map(str::to_owned)
    }

    /// [`Cursor::string`], borrowed from the data.
    fn str_slice(&mut self, what: &str) -> std::result::Result<&'a str, (u64, String)> {
        let at = self.pos();
        let len = self.u64(what).map_err(|e| (at, e.to_string()))?;
        rules::string_len(len, what).map_err(|m| (at, m))?;
        if len > self.remaining() {
            return Err((
                at,
                format!(
                    "{what} length {len} runs past the end of the file ({} bytes left)",
                    self.remaining()
                ),
            ));
        }
        let bytes = self.take(len, what).map_err(|e| (at, e.to_string()))?;
        // Validate in place so that a bad string costs no allocation.
        std::str::from_utf8(bytes).map_err(|e| (at + 8, format!("{what} is not valid UTF-8: {e}")))
    }
}

/// Adds "of <place>" to an end-of-file error so that it says which key or
/// tensor was being read; other errors already carry their place.
fn within(e: GgufError, place: impl FnOnce() -> String) -> GgufError {
    match e {
        GgufError::UnexpectedEof {
            offset,
            needed,
            what,
        } => GgufError::UnexpectedEof {
            offset,
            needed,
            what: format!("{what} of {}", place()),
        },
        e => e,
    }
}

fn read_value(cur: &mut Cursor<'_>, ty: ValueType, depth: usize, key: &str) -> Result<Value> {
    let at = cur.pos();
    let err = |offset: u64, message: String| GgufError::InvalidMetadata {
        key: key.to_string(),
        offset,
        message,
    };
    let what = "metadata value";
    Ok(match ty {
        ValueType::U8 => Value::U8(cur.array::<1>(what)?[0]),
        ValueType::I8 => Value::I8(cur.array::<1>(what)?[0] as i8),
        ValueType::U16 => Value::U16(u16::from_le_bytes(cur.array(what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(cur.array(what)?)),
        ValueType::U32 => Value::U32(cur.u32(what)?),
        ValueType::I32 => Value::I32(i32::from_le_bytes(cur.array(what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(cur.array(what)?)),
        ValueType::U64 => Value::U64(cur.u64(what)?),
        ValueType::I64 => Value::I64(i64::from_le_bytes(cur.array(what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(cur.array(what)?)),
        ValueType::Bool => match cur.array::<1>(what)?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => return Err(err(at, format!("bool byte is {b}, must be 0 or 1"))),
        },
        ValueType::String => Value::String(cur.string("string value").map_err(|(o, m)| err(o, m))?),
        ValueType::Array => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(err(
                    at,
                    format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                ));
            }
            let tid = cur.u32("array element type")?;
            let element_type = ValueType::from_id(tid).ok_or_else(|| {
                err(
                    at,
                    format!("array element type {tid} is out of range (0..=12)"),
                )
            })?;
            let count_at = cur.pos();
            let count = cur.u64("array length")?;
            if count > MAX_ARRAY_LEN {
                return Err(err(
                    count_at,
                    format!("array length {count} exceeds the limit of {MAX_ARRAY_LEN}"),
                ));
            }
            // Every element takes at least this many bytes, so the length can
            // be checked against the file before anything is allocated.
            let min_elem = match element_type {
                ValueType::String => 8,
                ValueType::Array => 12,
                t => t.scalar_size().unwrap_or(1) as u64,
            };
            if count.saturating_mul(min_elem) > cur.remaining() {
                return Err(err(
                    count_at,
                    format!(
                        "array of {count} {} elements needs at least {} bytes, only {} left in the file",
                        element_type.name(),
                        count.saturating_mul(min_elem),
                        cur.remaining()
                    ),
                ));
            }
            // Stored compactly (see `Array`): fixed-size elements as their
            // bytes, strings in one buffer, so memory follows the file's size.
            Value::Array(match element_type {
                ValueType::String => {
                    let mut strings = Vec::with_capacity(count as usize);
                    for _ in 0..count {
                        let s = cur.str_slice("string value").map_err(|(o, m)| err(o, m))?;
                        strings.push(s);
                    }
                    Array::from_strings(strings)
                }
                ValueType::Array => {
                    let mut arrays = Vec::with_capacity(count as usize);
                    for _ in 0..count {
                        match read_value(cur, element_type, depth + 1, key)? {
                            Value::Array(a) => arrays.push(a),
                            _ => unreachable!("an array element of type array is an array"),
                        }
                    }
                    Array::from_arrays(arrays)
                }
                t => {
                    let size = t.scalar_size().unwrap_or(1) as u64;
                    let bytes = cur.take(count * size, what)?;
                    if t == ValueType::Bool {
                        if let Some(i) = bytes.iter().position(|&b| b > 1) {
                            return Err(err(
                                count_at + 8 + i as u64,
                                format!("bool byte is {}, must be 0 or 1", bytes[i]),
                            ));
                        }
                    }
                    Array::from_le_bytes(t, bytes.to_vec())
                        .expect("whole elements of a fixed-size type")
                }
            })
        }
    })
}

impl GgufHeader {
    /// Parses and validates the header of a GGUF file held in `data`
    /// (the whole file: tensor extents are checked against its length).
    ///
    /// Rejected, each with an error naming the byte offset, key or tensor:
    /// a short file; a magic other than `GGUF`; versions other than 2 and 3
    /// (a byte-swapped, big-endian header is named as such); counts, string
    /// or array lengths that cannot fit in the rest of the file or exceed
    /// [`MAX_STRING_LEN`] / [`MAX_ARRAY_LEN`]; empty, duplicate or non-UTF-8
    /// keys and non-UTF-8 strings; unknown value types; arrays nested more
    /// than [`MAX_ARRAY_DEPTH`] deep; bool bytes other than 0 and 1; a
    /// `general.alignment` that is not a power-of-two `u32` up to
    /// [`MAX_ALIGNMENT`]; tensor names that are empty, duplicated or
    /// [`MAX_NAME_LEN`] bytes or longer; more than [`MAX_DIMS`] dimensions;
    /// a dimension, element count or byte count at or above 2^63; unknown or
    /// removed ggml types; a first dimension that is not whole blocks;
    /// offsets not a multiple of the alignment; tensor data that overlaps
    /// another tensor's or runs past the end of the file.
    ///
    /// Unlike llama.cpp, tensors need not be stored in table order with no
    /// gaps: any aligned, non-overlapping layout inside the file is read.
    pub fn parse(data: &[u8]) -> Result<GgufHeader> {
        let mut cur = Cursor { data, pos: 0 };
        let magic = cur.array::<4>("magic")?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = cur.u32("version")?;
        match version {
            2 | 3 => {}
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(GgufError::UnsupportedVersion {
                    version: v,
                    hint: " (byte-swapped: a big-endian file, which this reader does not support)",
                })
            }
            1 => {
                return Err(GgufError::UnsupportedVersion {
                    version: 1,
                    hint: " (GGUF v1 is obsolete; convert the file with a current llama.cpp)",
                })
            }
            v => {
                return Err(GgufError::UnsupportedVersion {
                    version: v,
                    hint: "",
                })
            }
        }
        let tc_at = cur.pos();
        let tensor_count = cur.u64("tensor count")?;
        let kv_at = cur.pos();
        let kv_count = cur.u64("metadata count")?;
        // Minimum bytes: a key-value pair is 8 (key len) + 1 (key) + 4 (type) + 1;
        // a tensor entry is 8 (name len) + 1 (name) + 4 (n_dims) + 4 (type) + 8 (offset).
        // Checking the counts against the file bounds every allocation below
        // by the file's size, whatever the counts claim.
        const MIN_KV: u64 = 14;
        const MIN_TENSOR: u64 = 25;
        let kv_min = kv_count.saturating_mul(MIN_KV);
        if kv_min > cur.remaining() {
            return Err(GgufError::Invalid {
                offset: kv_at,
                message: format!(
                    "metadata count {kv_count} needs at least {kv_min} bytes, the file has {} left",
                    cur.remaining()
                ),
            });
        }
        let tensor_min = tensor_count.saturating_mul(MIN_TENSOR);
        if kv_min.saturating_add(tensor_min) > cur.remaining() {
            return Err(GgufError::Invalid {
                offset: tc_at,
                message: format!(
                    "tensor count {tensor_count} needs at least {tensor_min} bytes \
                     (after {kv_min} for {kv_count} metadata entries), the file has {} left",
                    cur.remaining()
                ),
            });
        }

        let mut metadata = Vec::with_capacity(kv_count as usize);
        let mut index = HashMap::with_capacity(kv_count as usize);
        let mut alignment_at = 0;
        for i in 0..kv_count {
            let at = cur.pos();
            let key = cur.string("metadata key").map_err(|(offset, message)| {
                GgufError::InvalidMetadata {
                    key: format!("#{i}"),
                    offset,
                    message,
                }
            })?;
            if key.is_empty() {
                return Err(GgufError::InvalidMetadata {
                    key: format!("#{i}"),
                    offset: at,
                    message: "empty key".into(),
                });
            }
            if index.contains_key(&key) {
                return Err(GgufError::InvalidMetadata {
                    key,
                    offset: at,
                    message: "duplicate key".into(),
                });
            }
            let ty_at = cur.pos();
            let tid = cur
                .u32("metadata value type")
                .map_err(|e| within(e, || format!("key `{key}`")))?;
            let ty = ValueType::from_id(tid).ok_or_else(|| GgufError::InvalidMetadata {
                key: key.clone(),
                offset: ty_at,
                message: format!("value type {tid} is out of range (0..=12)"),
            })?;
            if key == "general.alignment" {
                alignment_at = cur.pos();
            }
            let value = read_value(&mut cur, ty, 0, &key)
                .map_err(|e| within(e, || format!("key `{key}`")))?;
            index.insert(key.clone(), metadata.len());
            metadata.push((key, value));
        }

        let alignment = match index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => {
                rules::alignment(&metadata[i].1).map_err(|message| GgufError::InvalidMetadata {
                    key: "general.alignment".into(),
                    offset: alignment_at,
                    message,
                })?
            }
        };

        let mut tensors = Vec::with_capacity(tensor_count as usize);
        let mut sizes = Vec::with_capacity(tensor_count as usize);
        let mut tensor_index = HashMap::with_capacity(tensor_count as usize);
        for i in 0..tensor_count {
            let at = cur.pos();
            let name =
                cur.string("tensor name")
                    .map_err(|(offset, message)| GgufError::Invalid {
                        offset,
                        message: format!("tensor #{i}: {message}"),
                    })?;
            let bad = |message: String| GgufError::InvalidTensor {
                name: name.clone(),
                message,
            };
            if name.is_empty() {
                return Err(GgufError::Invalid {
                    offset: at,
                    message: format!("tensor #{i} has an empty name"),
                });
            }
            rules::tensor_name(&name).map_err(bad)?;
            if tensor_index.contains_key(&name) {
                return Err(bad(format!("duplicate tensor name (byte {at})")));
            }
            let place = || format!("tensor `{name}`");
            let n_dims = cur.u32("tensor n_dims").map_err(|e| within(e, place))?;
            rules::n_dims(n_dims.into()).map_err(bad)?;
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = cur.u64("tensor dimension").map_err(|e| within(e, place))?;
                rules::dim(d).map_err(bad)?;
                dims.push(d);
            }
            let tid_at = cur.pos();
            let tid = cur.u32("tensor type").map_err(|e| within(e, place))?;
            let ggml_type = GgmlType::from_id(tid).ok_or_else(|| {
                bad(format!(
                    "unknown or removed tensor type id {tid} (byte {tid_at})"
                ))
            })?;
            let offset = cur.u64("tensor offset").map_err(|e| within(e, place))?;
            let size = rules::shape(ggml_type, &dims).map_err(bad)?;
            if !offset.is_multiple_of(alignment) {
                return Err(bad(format!(
                    "offset {offset} is not a multiple of alignment {alignment}"
                )));
            }
            tensor_index.insert(name.clone(), tensors.len());
            sizes.push(size);
            tensors.push(TensorInfo {
                name,
                ggml_type,
                dims,
                offset,
            });
        }

        let header_end = cur.pos();
        let data_offset = header_end.div_ceil(alignment) * alignment;
        let data_len = (data.len() as u64).saturating_sub(data_offset);

        // Extents: inside the data section, and no two overlap. Comparing
        // relative offsets against the section's length cannot wrap.
        let mut extents: Vec<(u64, u64, usize)> = Vec::with_capacity(tensors.len());
        for (i, (t, &size)) in tensors.iter().zip(&sizes).enumerate() {
            let end = t
                .offset
                .checked_add(size)
                .ok_or_else(|| GgufError::InvalidTensor {
                    name: t.name.clone(),
                    message: format!("offset {} + size {size} overflows", t.offset),
                })?;
            if end > data_len {
                return Err(GgufError::InvalidTensor {
                    name: t.name.clone(),
                    message: format!(
                        "data at {}..{end} (absolute {}..{}) runs past the end of the file ({} bytes)",
                        t.offset,
                        data_offset.saturating_add(t.offset),
                        data_offset.saturating_add(end),
                        data.len()
                    ),
                });
            }
            if size > 0 {
                extents.push((t.offset, end, i));
            }
        }
        extents.sort_unstable();
        for w in extents.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(GgufError::InvalidTensor {
                    name: tensors[w[1].2].name.clone(),
                    message: format!(
                        "data at {}..{} overlaps tensor `{}` at {}..{}",
                        w[1].0, w[1].1, tensors[w[0].2].name, w[0].0, w[0].1
                    ),
                });
            }
        }

        Ok(GgufHeader {
            version,
            metadata,
            index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        })
    }

    /// All metadata key-value pairs, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_string(),
        })
    }

    fn wrong(key: &str, expected: &'static str, v: &Value) -> GgufError {
        GgufError::WrongType {
            key: key.to_string(),
            expected,
            found: v.type_name(),
        }
    }

    /// The `u32` value of `key`: an error if missing or of another type.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        match self.require(key)? {
            Value::U32(v) => Ok(*v),
            v => Err(Self::wrong(key, "u32", v)),
        }
    }

    /// The value of `key` as a `u64`, accepting any non-negative integer type.
    pub fn get_uint(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| Self::wrong(key, "unsigned integer", v))
    }

    /// The `u64` value of `key`.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        match self.require(key)? {
            Value::U64(v) => Ok(*v),
            v => Err(Self::wrong(key, "u64", v)),
        }
    }

    /// The `i32` value of `key`.
    pub fn get_i32(&self, key: &str) -> Result<i32> {
        match self.require(key)? {
            Value::I32(v) => Ok(*v),
            v => Err(Self::wrong(key, "i32", v)),
        }
    }

    /// The `f32` value of `key`.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match self.require(key)? {
            Value::F32(v) => Ok(*v),
            v => Err(Self::wrong(key, "f32", v)),
        }
    }

    /// The `bool` value of `key`.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            Value::Bool(v) => Ok(*v),
            v => Err(Self::wrong(key, "bool", v)),
        }
    }

    /// The string value of `key`.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.require(key)? {
            Value::String(v) => Ok(v),
            v => Err(Self::wrong(key, "string", v)),
        }
    }

    /// The array value of `key`.
    pub fn get_array(&self, key: &str) -> Result<&Array> {
        match self.require(key)? {
            Value::Array(a) => Ok(a),
            v => Err(Self::wrong(key, "array", v)),
        }
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor named `name`, or a [`GgufError::MissingTensor`].
    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor(name).ok_or_else(|| GgufError::MissingTensor {
            name: name.to_string(),
        })
    }
}

/// A GGUF file: its validated header and the bytes it was parsed from.
///
/// `D` is the storage: a memory map ([`crate::GgufFile`]), a borrowed slice or an
/// owned `Vec<u8>`. Tensor data is handed out as borrowed views into it.
#[derive(Debug)]
pub struct Gguf<D> {
    data: D,
    header: GgufHeader,
}

impl<D: AsRef<[u8]>> Gguf<D> {
    /// Parses and validates `data`.
    pub fn from_data(data: D) -> Result<Self> {
        let header = GgufHeader::parse(data.as_ref())?;
        Ok(Gguf { data, header })
    }

    /// The parsed header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// The storage the file was parsed from.
    pub fn storage(&self) -> &D {
        &self.data
    }

    /// The whole file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.data.as_ref()
    }

    /// The bytes of tensor `t` (zero-copy).
    ///
    /// # Panics
    ///
    /// If `t` is not from this file's tensor table and its extent lies
    /// outside the file (extents of this file's tensors were checked when
    /// it was parsed, so they never panic).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let len = t.n_bytes();
        if len == 0 {
            return &[];
        }
        let start = self.header.data_offset + t.offset;
        &self.data.as_ref()[start as usize..(start + len) as usize]
    }

    /// The tensor named `name` and its bytes.
    pub fn tensor_by_name(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let t = self.header.require_tensor(name)?;
        Ok((t, self.tensor_data(t)))
    }
}

impl<D> std::ops::Deref for Gguf<D> {
    type Target = GgufHeader;
    fn deref(&self) -> &GgufHeader {
        &self.header
    }
}
