//! [`Tensor`]: a shape, an element type and bytes borrowed from a mapped file or owned.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use gguf_format::{GgmlType, Gguf};

use crate::error::{Result, TensorError};

/// Something that holds a GGUF file's bytes and can be shared between threads.
///
/// Implemented for every [`Gguf`] whose storage is bytes (a memory map, a
/// `Vec<u8>`); a mapped [`Tensor`] keeps its file alive through this.
pub trait FileBytes: Send + Sync {
    /// All bytes of the file.
    fn file_bytes(&self) -> &[u8];
}

impl<D: AsRef<[u8]> + Send + Sync> FileBytes for Gguf<D> {
    fn file_bytes(&self) -> &[u8] {
        self.bytes()
    }
}

#[derive(Clone)]
enum Storage {
    /// A byte range of a shared file: the zero-copy case for every weight.
    Mapped {
        file: Arc<dyn FileBytes>,
        range: Range<usize>,
    },
    /// Values computed or converted at load time (always `F32`).
    Owned(Arc<[f32]>),
}

/// A tensor: name, element type, shape (ggml's `ne`, innermost first) and storage.
///
/// Weights are borrowed views of the mapped GGUF file — cloning a `Tensor`
/// clones an `Arc`, never the data. Owned storage exists for the rare small
/// vector that must be converted (an `F16` norm weight) and for tests.
#[derive(Clone)]
pub struct Tensor {
    name: String,
    dtype: GgmlType,
    shape: Vec<usize>,
    storage: Storage,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

impl Tensor {
    /// The tensor `name` of `file`, as a view of the file's bytes (no copy).
    pub fn from_gguf<D>(file: &Arc<Gguf<D>>, name: &str) -> Result<Tensor>
    where
        D: AsRef<[u8]> + Send + Sync + 'static,
    {
        let (info, data) = file.tensor_by_name(name)?;
        let base = file.bytes().as_ptr() as usize;
        let start = data.as_ptr() as usize - base;
        let shape = info
            .dims
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| TensorError::Invalid {
                name: name.to_string(),
                message: "dimension does not fit in usize".into(),
            })?;
        let file: Arc<dyn FileBytes> = file.clone();
        Ok(Tensor {
            name: name.to_string(),
            dtype: info.ggml_type,
            shape,
            storage: Storage::Mapped {
                file,
                range: start..start + data.len(),
            },
        })
    }

    /// An owned `F32` tensor; `data.len()` must be the product of `shape`.
    pub fn from_f32(name: &str, shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(TensorError::Invalid {
                name: name.to_string(),
                message: format!("shape {shape:?} needs {n} values, got {}", data.len()),
            });
        }
        Ok(Tensor {
            name: name.to_string(),
            dtype: GgmlType::F32,
            shape,
            storage: Storage::Owned(data.into()),
        })
    }

    /// The tensor's name (`blk.0.attn_q.weight`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Element type.
    pub fn dtype(&self) -> GgmlType {
        self.dtype
    }

    /// Dimensions, innermost (contiguous) first, as ggml's `ne`.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Length of a row (the first dimension; 1 for a scalar).
    pub fn row_len(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Number of rows (the product of all but the first dimension).
    pub fn n_rows(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Whether the data is a view of a mapped file (rather than owned).
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. })
    }

    /// The raw bytes, in the tensor's element format.
    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Mapped { file, range } => &file.file_bytes()[range.clone()],
            Storage::Owned(v) => bytemuck::cast_slice(v),
        }
    }

    /// The bytes of row `i` (each row is `row_len` elements, a whole number of blocks).
    ///
    /// Panics if `i >= n_rows()` (callers check indices where they enter).
    pub fn row_bytes(&self, i: usize) -> &[u8] {
        let row = self.bytes().len() / self.n_rows().max(1);
        &self.bytes()[i * row..(i + 1) * row]
    }

    /// Rows `first..first + count` of the tensor seen as a matrix of
    /// [`Tensor::n_rows`] rows (every dimension after the first flattened),
    /// as a 2-D view `[row_len, count]` named `name`, sharing the data: one
    /// expert of a 3-D expert tensor, or one part of a fused projection.
    pub fn rows(&self, first: usize, count: usize, name: &str) -> Result<Tensor> {
        let n_rows = self.n_rows();
        if count == 0 || first.checked_add(count).is_none_or(|end| end > n_rows) {
            return Err(TensorError::Invalid {
                name: self.name.clone(),
                message: format!(
                    "rows {first}..{} out of range ({n_rows} rows)",
                    first.saturating_add(count)
                ),
            });
        }
        let row = self.bytes().len() / n_rows.max(1);
        let (start, end) = (first * row, (first + count) * row);
        let storage = match &self.storage {
            Storage::Mapped { file, range } => Storage::Mapped {
                file: file.clone(),
                range: range.start + start..range.start + end,
            },
            Storage::Owned(v) => Storage::Owned(v[start / 4..end / 4].into()),
        };
        Ok(Tensor {
            name: name.to_string(),
            dtype: self.dtype,
            shape: vec![self.row_len(), count],
            storage,
        })
    }

    /// The values as `f32`, when the tensor is `F32` (borrowed, no copy).
    pub fn as_f32(&self) -> Option<&[f32]> {
        if self.dtype != GgmlType::F32 {
            return None;
        }
        bytemuck::try_cast_slice(self.bytes()).ok()
    }

    /// Dequantizes row `i` into `dst` (`dst.len() == row_len()`), ggml's `get_rows`.
    pub fn dequantize_row(&self, i: usize, dst: &mut [f32]) -> Result<()> {
        if i >= self.n_rows() {
            return Err(TensorError::Invalid {
                name: self.name.clone(),
                message: format!("row {i} out of range ({} rows)", self.n_rows()),
            });
        }
        quant_kernels::dequantize_row(self.dtype, self.row_bytes(i), dst).map_err(|source| {
            TensorError::Quant {
                name: self.name.clone(),
                source,
            }
        })
    }

    /// All values converted to `f32` (for small vectors: norm weights, biases).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; self.n_elements()];
        quant_kernels::dequantize_row(self.dtype, self.bytes(), &mut out).map_err(|source| {
            TensorError::Quant {
                name: self.name.clone(),
                source,
            }
        })?;
        Ok(out)
    }

    /// A tensor with the same data viewed as `F32`: itself when it already is
    /// `F32` and aligned, otherwise an owned conversion.
    pub fn into_f32(self) -> Result<Tensor> {
        if self.as_f32().is_some() {
            return Ok(self);
        }
        let data = self.to_f32_vec()?;
        Tensor::from_f32(&self.name, self.shape.clone(), data)
    }

    /// Checks that the shape is `expected` (ignoring trailing 1s).
    pub fn expect_shape(&self, expected: &[usize]) -> Result<()> {
        let trim = |s: &[usize]| {
            let mut v = s.to_vec();
            while v.len() > 1 && v.last() == Some(&1) {
                v.pop();
            }
            v
        };
        if trim(&self.shape) != trim(expected) {
            return Err(TensorError::Shape {
                name: self.name.clone(),
                expected: expected.to_vec(),
                found: self.shape.clone(),
            });
        }
        Ok(())
    }
}
