//! Helpers to build GGUF bytes field by field, including malformed ones.

use gguf_format::{GgufError, GgufHeader};

/// Value type ids on disk.
pub const T_U8: u32 = 0;
pub const T_U32: u32 = 4;
pub const T_BOOL: u32 = 7;
pub const T_STRING: u32 = 8;
pub const T_ARRAY: u32 = 9;
pub const T_U64: u32 = 10;

/// Tensor type ids on disk.
pub const F32: u32 = 0;
pub const Q4_0: u32 = 2;

/// A GGUF file assembled field by field, with nothing checked, so that a
/// test can write exactly the mistake it is about.
#[derive(Default)]
pub struct Raw(pub Vec<u8>);

impl Raw {
    /// Magic, version 3 and the two counts.
    pub fn header(n_tensors: u64, n_kv: u64) -> Raw {
        Raw::default()
            .bytes(b"GGUF")
            .u32(3)
            .u64(n_tensors)
            .u64(n_kv)
    }

    pub fn bytes(mut self, b: &[u8]) -> Raw {
        self.0.extend_from_slice(b);
        self
    }

    pub fn u8(self, v: u8) -> Raw {
        self.bytes(&[v])
    }

    pub fn u32(self, v: u32) -> Raw {
        self.bytes(&v.to_le_bytes())
    }

    pub fn u64(self, v: u64) -> Raw {
        self.bytes(&v.to_le_bytes())
    }

    /// A length-prefixed string of raw bytes.
    pub fn str(self, s: &[u8]) -> Raw {
        self.u64(s.len() as u64).bytes(s)
    }

    /// A key and a value type id; the value follows.
    pub fn key(self, key: &str, type_id: u32) -> Raw {
        self.str(key.as_bytes()).u32(type_id)
    }

    pub fn kv_u32(self, key: &str, v: u32) -> Raw {
        self.key(key, T_U32).u32(v)
    }

    /// A tensor table entry.
    pub fn tensor(self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Raw {
        let mut r = self.str(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(type_id).u64(offset)
    }

    /// Zero bytes up to the next multiple of `alignment`.
    pub fn pad(mut self, alignment: usize) -> Raw {
        let n = self.0.len().div_ceil(alignment) * alignment;
        self.0.resize(n, 0);
        self
    }

    /// `n` bytes of tensor data.
    pub fn data(mut self, n: usize) -> Raw {
        self.0.extend((0..n).map(|i| i as u8));
        self
    }

    /// Current length: the offset of the next field.
    pub fn len(&self) -> u64 {
        self.0.len() as u64
    }
}

/// The error `bytes` must be rejected with.
#[track_caller]
pub fn reject(bytes: &[u8]) -> GgufError {
    match GgufHeader::parse(bytes) {
        Ok(h) => panic!("parsed a file that must be rejected: {h:?}"),
        Err(e) => e,
    }
}

/// Asserts that `e`'s message contains every one of `parts`.
#[track_caller]
pub fn says(e: &GgufError, parts: &[&str]) {
    let msg = e.to_string();
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} lacks {p:?}");
    }
}

/// Path of a fixture file.
pub fn fixture(rel: &str) -> String {
    format!("{}/../../tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))
}
