//! Metadata values: the 13 GGUF value types and arrays of them.

/// The type tag of a metadata value, with its on-disk id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    /// `uint8`
    U8 = 0,
    /// `int8`
    I8 = 1,
    /// `uint16`
    U16 = 2,
    /// `int16`
    I16 = 3,
    /// `uint32`
    U32 = 4,
    /// `int32`
    I32 = 5,
    /// `float32`
    F32 = 6,
    /// `bool` (one byte, 0 or 1)
    Bool = 7,
    /// UTF-8 string with a u64 length
    String = 8,
    /// array: element type, u64 count, elements
    Array = 9,
    /// `uint64`
    U64 = 10,
    /// `int64`
    I64 = 11,
    /// `float64`
    F64 = 12,
}

impl ValueType {
    /// The type with on-disk id `id`.
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Size in bytes of a scalar of this type (`None` for string and array).
    pub fn scalar_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `uint8`
    U8(u8),
    /// `int8`
    I8(i8),
    /// `uint16`
    U16(u16),
    /// `int16`
    I16(i16),
    /// `uint32`
    U32(u32),
    /// `int32`
    I32(i32),
    /// `float32`
    F32(f32),
    /// `bool`
    Bool(bool),
    /// UTF-8 string
    String(String),
    /// Homogeneous array
    Array(Array),
    /// `uint64`
    U64(u64),
    /// `int64`
    I64(i64),
    /// `float64`
    F64(f64),
}

/// A homogeneous array value, stored compactly: fixed-size elements as the
/// file's little-endian bytes (a `u8` array costs one byte per element),
/// strings as one text buffer with end offsets, nested arrays as a list.
/// A hostile file's 256 MiB array therefore takes about 256 MiB, not the
/// 32 bytes per element a `Vec<Value>` would (8 GiB).
///
/// Read elements with [`Array::get`] / [`Array::iter`] (owned [`Value`]s),
/// [`Array::get_str`] / [`Array::strings`] (borrowed text) or
/// [`Array::get_array`]. Nested arrays are allowed up to
/// [`MAX_ARRAY_DEPTH`](crate::MAX_ARRAY_DEPTH).
#[derive(Clone)]
pub struct Array {
    /// The elements as a `&[Value]` (`a.values.iter()`), built on first use
    /// and kept: 32 bytes per element, the cost compact storage avoids. For
    /// code written against the former `Vec<Value>` field; prefer
    /// [`Array::iter`], [`Array::get`] and [`Array::strings`], which build
    /// nothing.
    pub values: Values,
}

/// An [`Array`]'s compact elements, and their view as a slice of
/// [`Value`]s made on first use (see [`Array::values`]).
#[derive(Clone)]
pub struct Values {
    element_type: ValueType,
    storage: Storage,
    expanded: std::sync::OnceLock<Box<[Value]>>,
}

impl std::ops::Deref for Values {
    type Target = [Value];
    fn deref(&self) -> &[Value] {
        self.expanded
            .get_or_init(|| storage_values(self.element_type, &self.storage).collect())
    }
}

impl std::fmt::Debug for Values {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(storage_values(self.element_type, &self.storage))
            .finish()
    }
}

#[derive(Clone, PartialEq)]
enum Storage {
    /// Fixed-size elements, little-endian, `scalar_size` bytes each.
    Scalars(Box<[u8]>),
    /// Strings: the texts one after another and where each ends.
    Strings(Box<Strings>),
    /// Arrays (each with its own element type).
    Arrays(Box<[Array]>),
    /// Values that do not all have the element type: only [`Array::new`]
    /// makes these, and the writer rejects them.
    Mixed(Box<[Value]>),
}

#[derive(Clone, PartialEq, Default)]
struct Strings {
    text: String,
    ends: Vec<usize>,
}

impl Strings {
    fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.text[start..end])
    }
}

/// Decodes the `i`th fixed-size element of `ty` from `bytes`.
fn scalar_at(ty: ValueType, bytes: &[u8], i: usize) -> Option<Value> {
    let size = ty.scalar_size()?;
    let b = bytes.get(i.checked_mul(size)?..i.checked_mul(size)? + size)?;
    let a2 = || [b[0], b[1]];
    let a4 = || [b[0], b[1], b[2], b[3]];
    let a8 = || [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
    Some(match ty {
        ValueType::U8 => Value::U8(b[0]),
        ValueType::I8 => Value::I8(b[0] as i8),
        ValueType::Bool => Value::Bool(b[0] != 0),
        ValueType::U16 => Value::U16(u16::from_le_bytes(a2())),
        ValueType::I16 => Value::I16(i16::from_le_bytes(a2())),
        ValueType::U32 => Value::U32(u32::from_le_bytes(a4())),
        ValueType::I32 => Value::I32(i32::from_le_bytes(a4())),
        ValueType::F32 => Value::F32(f32::from_le_bytes(a4())),
        ValueType::U64 => Value::U64(u64::from_le_bytes(a8())),
        ValueType::I64 => Value::I64(i64::from_le_bytes(a8())),
        ValueType::F64 => Value::F64(f64::from_le_bytes(a8())),
        ValueType::String | ValueType::Array => return None,
    })
}

/// The little-endian bytes of a fixed-size value (`None` for strings and arrays).
fn scalar_bytes(v: &Value, out: &mut Vec<u8>) -> bool {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::String(_) | Value::Array(_) => return false,
    }
    true
}

fn storage_len(ty: ValueType, s: &Storage) -> usize {
    match s {
        Storage::Scalars(b) => b.len() / ty.scalar_size().unwrap_or(1),
        Storage::Strings(s) => s.ends.len(),
        Storage::Arrays(a) => a.len(),
        Storage::Mixed(v) => v.len(),
    }
}

fn storage_get(ty: ValueType, s: &Storage, i: usize) -> Option<Value> {
    match s {
        Storage::Scalars(b) => scalar_at(ty, b, i),
        Storage::Strings(s) => s.get(i).map(|t| Value::String(t.to_owned())),
        Storage::Arrays(a) => a.get(i).cloned().map(Value::Array),
        Storage::Mixed(v) => v.get(i).cloned(),
    }
}

fn storage_values(ty: ValueType, s: &Storage) -> impl Iterator<Item = Value> + '_ {
    (0..storage_len(ty, s)).filter_map(move |i| storage_get(ty, s, i))
}

impl Array {
    /// An array of `element_type` holding `values`, stored compactly.
    ///
    /// Not checked here: values of another type than `element_type` are
    /// kept as they are, and the writer rejects the array.
    pub fn new(element_type: ValueType, values: Vec<Value>) -> Array {
        let homogeneous = values.iter().all(|v| v.value_type() == element_type);
        let storage = if !homogeneous {
            Storage::Mixed(values.into_boxed_slice())
        } else {
            match element_type {
                ValueType::String => {
                    let mut s = Strings::default();
                    for v in &values {
                        if let Value::String(t) = v {
                            s.text.push_str(t);
                            s.ends.push(s.text.len());
                        }
                    }
                    Storage::Strings(Box::new(s))
                }
                ValueType::Array => Storage::Arrays(
                    values
                        .into_iter()
                        .filter_map(|v| match v {
                            Value::Array(a) => Some(a),
                            _ => None,
                        })
                        .collect(),
                ),
                _ => {
                    let mut bytes =
                        Vec::with_capacity(values.len() * element_type.scalar_size().unwrap_or(1));
                    for v in &values {
                        scalar_bytes(v, &mut bytes);
                    }
                    Storage::Scalars(bytes.into_boxed_slice())
                }
            }
        };
        Array::from_storage(element_type, storage)
    }

    fn from_storage(element_type: ValueType, storage: Storage) -> Array {
        Array {
            values: Values {
                element_type,
                storage,
                expanded: std::sync::OnceLock::new(),
            },
        }
    }

    fn storage(&self) -> &Storage {
        &self.values.storage
    }

    /// An array of fixed-size elements of `element_type` from their
    /// little-endian bytes (as a GGUF file holds them). `None` if
    /// `element_type` is not fixed-size, the length is not whole elements,
    /// or a `bool` byte is not 0 or 1.
    pub fn from_le_bytes(element_type: ValueType, bytes: Vec<u8>) -> Option<Array> {
        let size = element_type.scalar_size()?;
        if !bytes.len().is_multiple_of(size) {
            return None;
        }
        if element_type == ValueType::Bool && bytes.iter().any(|&b| b > 1) {
            return None;
        }
        Some(Array::from_storage(
            element_type,
            Storage::Scalars(bytes.into_boxed_slice()),
        ))
    }

    /// An array of strings.
    pub fn from_strings<'s>(strings: impl IntoIterator<Item = &'s str>) -> Array {
        let mut s = Strings::default();
        for t in strings {
            s.text.push_str(t);
            s.ends.push(s.text.len());
        }
        Array::from_storage(ValueType::String, Storage::Strings(Box::new(s)))
    }

    /// An array of arrays.
    pub fn from_arrays(arrays: Vec<Array>) -> Array {
        Array::from_storage(ValueType::Array, Storage::Arrays(arrays.into_boxed_slice()))
    }

    /// The element type.
    pub fn element_type(&self) -> ValueType {
        self.values.element_type
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        storage_len(self.values.element_type, self.storage())
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a [`Value`] (a string element is copied).
    pub fn get(&self, i: usize) -> Option<Value> {
        storage_get(self.values.element_type, self.storage(), i)
    }

    /// Every element as a [`Value`], in order (string elements are copied).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Value> + '_ {
        (0..self.len()).map(move |i| {
            storage_get(self.values.element_type, self.storage(), i)
                .expect("an index below len() has an element")
        })
    }

    /// String element `i`, borrowed; `None` if out of range or not a string.
    pub fn get_str(&self, i: usize) -> Option<&str> {
        match self.storage() {
            Storage::Strings(s) => s.get(i),
            Storage::Mixed(v) => v.get(i).and_then(Value::as_str),
            _ => None,
        }
    }

    /// The elements of an array of strings, borrowed; `None` for other arrays.
    pub fn strings(&self) -> Option<impl ExactSizeIterator<Item = &str> + '_> {
        match self.storage() {
            Storage::Strings(s) => {
                Some((0..s.ends.len()).map(move |i| s.get(i).unwrap_or_default()))
            }
            _ => None,
        }
    }

    /// Array element `i` of an array of arrays, borrowed.
    pub fn get_array(&self, i: usize) -> Option<&Array> {
        match self.storage() {
            Storage::Arrays(a) => a.get(i),
            Storage::Mixed(v) => v.get(i).and_then(Value::as_array),
            _ => None,
        }
    }

    /// The elements' little-endian bytes, for an array of fixed-size elements.
    pub fn as_le_bytes(&self) -> Option<&[u8]> {
        match self.storage() {
            Storage::Scalars(b) => Some(b),
            _ => None,
        }
    }

    /// The index and type name of the first element whose type is not the
    /// element type (only an [`Array::new`] of mixed values has one).
    pub(crate) fn first_mismatch(&self) -> Option<(usize, &'static str)> {
        match self.storage() {
            Storage::Mixed(v) => v
                .iter()
                .enumerate()
                .find(|(_, e)| e.value_type() != self.values.element_type)
                .map(|(i, e)| (i, e.type_name())),
            _ => None,
        }
    }

    /// Appends the elements' encoding (as in a GGUF file, without the
    /// array's own type tag and length) to `out`.
    pub(crate) fn encode_elements(&self, out: &mut Vec<u8>, put_value: fn(&mut Vec<u8>, &Value)) {
        match self.storage() {
            Storage::Scalars(b) => out.extend_from_slice(b),
            Storage::Strings(s) => {
                for i in 0..s.ends.len() {
                    let t = s.get(i).unwrap_or_default();
                    out.extend_from_slice(&(t.len() as u64).to_le_bytes());
                    out.extend_from_slice(t.as_bytes());
                }
            }
            Storage::Arrays(a) => {
                for x in a.iter() {
                    put_value(out, &Value::Array(x.clone()));
                }
            }
            Storage::Mixed(v) => {
                for x in v.iter() {
                    put_value(out, x);
                }
            }
        }
    }

    /// Heap bytes the array holds (its compact storage), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        match self.storage() {
            Storage::Scalars(b) => b.len(),
            Storage::Strings(s) => s.text.len() + s.ends.len() * std::mem::size_of::<usize>(),
            Storage::Arrays(a) => a
                .iter()
                .map(|x| x.heap_bytes() + std::mem::size_of::<Array>())
                .sum(),
            Storage::Mixed(v) => v.len() * std::mem::size_of::<Value>(),
        }
    }
}

impl PartialEq for Array {
    /// Same element type and the same elements; floats compare by their bits.
    fn eq(&self, other: &Array) -> bool {
        if self.values.element_type != other.values.element_type || self.len() != other.len() {
            return false;
        }
        match (self.storage(), &other.values.storage) {
            (Storage::Mixed(_), _) | (_, Storage::Mixed(_)) => self.iter().eq(other.iter()),
            (a, b) => a == b,
        }
    }
}

impl std::fmt::Debug for Array {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Array")
            .field("element_type", &self.values.element_type)
            .field("values", &DebugElements(self))
            .finish()
    }
}

struct DebugElements<'a>(&'a Array);

impl std::fmt::Debug for DebugElements<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl Value {
    /// The value's type tag.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// A short name of the value's type, for messages (`"array<string>"`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Array(a) => match a.element_type() {
                ValueType::U8 => "array<u8>",
                ValueType::I8 => "array<i8>",
                ValueType::U16 => "array<u16>",
                ValueType::I16 => "array<i16>",
                ValueType::U32 => "array<u32>",
                ValueType::I32 => "array<i32>",
                ValueType::F32 => "array<f32>",
                ValueType::Bool => "array<bool>",
                ValueType::String => "array<string>",
                ValueType::Array => "array<array>",
                ValueType::U64 => "array<u64>",
                ValueType::I64 => "array<i64>",
                ValueType::F64 => "array<f64>",
            },
            v => v.value_type().name(),
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is `f32` or `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The string, if this is a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The array, if this is an array value.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// `From` conversions for the scalar types, so that metadata reads
/// `writer.add_metadata("llama.block_count", 2u32)`, and for vectors of
/// them, so that `vec![1.0f32, 2.0]` becomes an `array<f32>` (typed even
/// when empty).
macro_rules! value_from {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::$variant(v)
            }
        }
        impl From<Vec<$t>> for Array {
            fn from(v: Vec<$t>) -> Array {
                Array::new(ValueType::$variant, v.into_iter().map(Value::$variant).collect())
            }
        }
        impl From<Vec<$t>> for Value {
            fn from(v: Vec<$t>) -> Value {
                Value::Array(v.into())
            }
        }
    )*};
}

value_from! {
    u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32,
    f32 => F32, bool => Bool, String => String, u64 => U64, i64 => I64, f64 => F64,
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::String(v.to_owned())
    }
}

impl From<Vec<&str>> for Array {
    fn from(v: Vec<&str>) -> Array {
        Array::from_strings(v)
    }
}

impl From<Vec<&str>> for Value {
    fn from(v: Vec<&str>) -> Value {
        Value::Array(v.into())
    }
}

impl From<Array> for Value {
    fn from(a: Array) -> Value {
        Value::Array(a)
    }
}
