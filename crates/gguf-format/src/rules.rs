//! The validity rules shared by the reader and the writer, stated once so the
//! two can never disagree about what a well-formed file is.
//!
//! Each check returns the problem as a message; the caller wraps it in the
//! error variant that says where (a byte offset, a key, a tensor name).

use crate::reader::{
    MAX_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_DIMS, MAX_NAME_LEN, MAX_STRING_LEN,
};
use crate::types::GgmlType;
use crate::value::{Array, Value, ValueType};

/// Dimensions must be below this: ggml stores them as `int64_t`.
pub(crate) const DIM_LIMIT: u64 = 1 << 63;

/// The alignment `general.alignment` declares, or why it is unusable.
pub(crate) fn alignment(value: &Value) -> Result<u64, String> {
    match value {
        Value::U32(a) => {
            let a = u64::from(*a);
            if a == 0 || !a.is_power_of_two() || a > MAX_ALIGNMENT {
                Err(format!(
                    "alignment {a} must be a power of two between 1 and {MAX_ALIGNMENT}"
                ))
            } else {
                Ok(a)
            }
        }
        v => Err(format!("must be a u32, found {}", v.type_name())),
    }
}

/// Checks a tensor name: non-empty and shorter than ggml's `GGML_MAX_NAME`.
pub(crate) fn tensor_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty tensor name".into());
    }
    if name.len() >= MAX_NAME_LEN {
        return Err(format!(
            "name is {} bytes, the limit is {}",
            name.len(),
            MAX_NAME_LEN - 1
        ));
    }
    Ok(())
}

/// Checks that the number of dimensions is allowed.
pub(crate) fn n_dims(n: u64) -> Result<(), String> {
    if n > MAX_DIMS as u64 {
        return Err(format!("{n} dimensions, at most {MAX_DIMS} allowed"));
    }
    Ok(())
}

/// Checks one dimension.
pub(crate) fn dim(d: u64) -> Result<(), String> {
    if d >= DIM_LIMIT {
        return Err(format!("dimension {d} is at or above 2^63"));
    }
    Ok(())
}

/// Checks a whole shape for `ggml_type` and returns its size in bytes.
///
/// The element count must fit in an `int64_t` (as in ggml), the first
/// dimension must be whole blocks (ggml quantizes rows block by block), and
/// the byte count must fit too.
pub(crate) fn shape(ggml_type: GgmlType, dims: &[u64]) -> Result<u64, String> {
    n_dims(dims.len() as u64)?;
    for &d in dims {
        dim(d)?;
    }
    let mut n_elements: u64 = 1;
    for &d in dims {
        n_elements = n_elements
            .checked_mul(d)
            .filter(|&n| n < DIM_LIMIT)
            .ok_or_else(|| format!("element count of {dims:?} overflows"))?;
    }
    let bs = ggml_type.block_size() as u64;
    let first = dims.first().copied().unwrap_or(1);
    if !first.is_multiple_of(bs) {
        return Err(format!(
            "first dimension {first} is not a multiple of the {ggml_type} block size {bs}"
        ));
    }
    ggml_type
        .bytes_for(n_elements)
        .filter(|&n| n < DIM_LIMIT)
        .ok_or_else(|| format!("byte size of {n_elements} {ggml_type} elements overflows"))
}

/// Checks a metadata value that will be written: string and array lengths
/// within the reader's caps, arrays homogeneous and nested at most
/// [`MAX_ARRAY_DEPTH`] deep. `depth` is the number of enclosing arrays.
pub(crate) fn value(v: &Value, depth: usize) -> Result<(), String> {
    match v {
        Value::String(s) => string_len(s.len() as u64, "string value"),
        Value::Array(a) => array(a, depth),
        _ => Ok(()),
    }
}

/// [`value`] for an array.
fn array(a: &Array, depth: usize) -> Result<(), String> {
    if depth >= MAX_ARRAY_DEPTH {
        return Err(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"));
    }
    if a.len() as u64 > MAX_ARRAY_LEN {
        return Err(format!(
            "array length {} exceeds the limit of {MAX_ARRAY_LEN}",
            a.len()
        ));
    }
    if let Some((i, found)) = a.first_mismatch() {
        return Err(format!(
            "array of {} has a {found} at index {i}",
            a.element_type().name()
        ));
    }
    match a.element_type() {
        ValueType::String => {
            for (i, s) in a.strings().into_iter().flatten().enumerate() {
                string_len(s.len() as u64, "string value")
                    .map_err(|m| format!("element {i}: {m}"))?;
            }
        }
        ValueType::Array => {
            for i in 0..a.len() {
                if let Some(e) = a.get_array(i) {
                    array(e, depth + 1).map_err(|m| format!("element {i}: {m}"))?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Checks a string length against [`MAX_STRING_LEN`].
pub(crate) fn string_len(len: u64, what: &str) -> Result<(), String> {
    if len > MAX_STRING_LEN {
        return Err(format!(
            "{what} length {len} exceeds the limit of {MAX_STRING_LEN} bytes"
        ));
    }
    Ok(())
}
