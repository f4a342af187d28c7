//! One test per malformed input the reader must reject, each checking the
//! error's kind and that it says what and where.

use gguf_format::{GgmlType, GgufError, GgufWriter, MAX_ALIGNMENT, MAX_ARRAY_LEN, MAX_STRING_LEN};

use crate::util::*;

/// Offset of the first metadata key: magic, version and two u64 counts.
const KV_START: u64 = 24;

#[test]
fn empty_file() {
    let e = reject(&[]);
    assert!(
        matches!(
            e,
            GgufError::UnexpectedEof {
                offset: 0,
                needed: 4,
                ..
            }
        ),
        "{e}"
    );
    says(&e, &["magic"]);
}

#[test]
fn short_file() {
    let e = reject(b"GG");
    assert!(
        matches!(
            e,
            GgufError::UnexpectedEof {
                offset: 0,
                needed: 2,
                ..
            }
        ),
        "{e}"
    );
    let e = reject(b"GGUF\x03\x00");
    assert!(
        matches!(
            e,
            GgufError::UnexpectedEof {
                offset: 4,
                needed: 2,
                ..
            }
        ),
        "{e}"
    );
    says(&e, &["version"]);
    let e = reject(&Raw::default().bytes(b"GGUF").u32(3).u64(0).0);
    assert!(
        matches!(e, GgufError::UnexpectedEof { offset: 16, .. }),
        "{e}"
    );
    says(&e, &["metadata count"]);
}

#[test]
fn every_truncation_of_a_valid_file() {
    let mut w = GgufWriter::new();
    w.add_metadata("general.name", "truncated").unwrap();
    w.add_metadata("v", vec![1u32, 2, 3]).unwrap();
    w.add_tensor("a", GgmlType::Q8_0, &[32, 2], vec![7u8; 68])
        .unwrap();
    // 32 bytes: a multiple of the alignment, so the file ends with no padding
    // and every shorter prefix cuts into something that must be there.
    w.add_tensor("b", GgmlType::F32, &[8], vec![1u8; 32])
        .unwrap();
    let bytes = w.to_bytes().unwrap();
    gguf_format::GgufHeader::parse(&bytes).unwrap();
    for n in 0..bytes.len() {
        reject(&bytes[..n]);
    }
}

#[test]
fn bad_magic() {
    let e = reject(&Raw::default().bytes(b"GGML").u32(3).u64(0).u64(0).0);
    assert!(
        matches!(e, GgufError::BadMagic { found } if &found == b"GGML"),
        "{e}"
    );
}

#[test]
fn version_zero() {
    let e = reject(&Raw::default().bytes(b"GGUF").u32(0).u64(0).u64(0).0);
    assert!(
        matches!(e, GgufError::UnsupportedVersion { version: 0, .. }),
        "{e}"
    );
}

#[test]
fn version_one_is_obsolete() {
    let e = reject(&Raw::default().bytes(b"GGUF").u32(1).u64(0).u64(0).0);
    assert!(
        matches!(e, GgufError::UnsupportedVersion { version: 1, .. }),
        "{e}"
    );
    says(&e, &["obsolete"]);
}

#[test]
fn unknown_versions() {
    for v in [4, 17, u32::MAX] {
        let e = reject(&Raw::default().bytes(b"GGUF").u32(v).u64(0).u64(0).0);
        assert!(
            matches!(e, GgufError::UnsupportedVersion { version, .. } if version == v),
            "{e}"
        );
    }
}

#[test]
fn byte_swapped_header() {
    let e = reject(
        &Raw::default()
            .bytes(b"GGUF")
            .u32(3u32.swap_bytes())
            .u64(0)
            .u64(0)
            .0,
    );
    assert!(
        matches!(
            e,
            GgufError::UnsupportedVersion {
                version: 0x0300_0000,
                ..
            }
        ),
        "{e}"
    );
    says(&e, &["byte-swapped"]);
}

#[test]
fn metadata_count_exceeds_file() {
    let e = reject(&Raw::header(0, 1 << 40).0);
    assert!(matches!(e, GgufError::Invalid { offset: 16, .. }), "{e}");
    says(&e, &["metadata count 1099511627776"]);
    let e = reject(&Raw::header(0, u64::MAX).0);
    assert!(matches!(e, GgufError::Invalid { offset: 16, .. }), "{e}");
}

#[test]
fn tensor_count_exceeds_file() {
    let e = reject(&Raw::header(u64::MAX, 0).0);
    assert!(matches!(e, GgufError::Invalid { offset: 8, .. }), "{e}");
    says(&e, &["tensor count 18446744073709551615"]);
}

#[test]
fn counts_together_exceed_file() {
    // 27 bytes follow the counts: room for one key-value pair (14) or one
    // tensor entry (25), not both.
    let raw = Raw::header(1, 1).kv_u32("a", 1).bytes(&[0; 10]);
    assert_eq!(raw.len() - KV_START, 27);
    let e = reject(&raw.0);
    assert!(matches!(e, GgufError::Invalid { offset: 8, .. }), "{e}");
}

#[test]
fn key_length_past_end_of_file() {
    let e = reject(&Raw::header(0, 1).u64(100).bytes(b"abcdefghij").0);
    assert!(
        matches!(&e, GgufError::InvalidMetadata { key, offset: KV_START, .. } if key == "#0"),
        "{e}"
    );
    says(&e, &["metadata key length 100 runs past the end"]);
}

#[test]
fn key_length_above_cap() {
    let e = reject(
        &Raw::header(0, 1)
            .u64(MAX_STRING_LEN + 1)
            .bytes(&[b'a'; 16])
            .0,
    );
    assert!(
        matches!(
            e,
            GgufError::InvalidMetadata {
                offset: KV_START,
                ..
            }
        ),
        "{e}"
    );
    says(&e, &["exceeds the limit"]);
}

#[test]
fn string_value_length_past_end_of_file() {
    let e = reject(
        &Raw::header(0, 1)
            .key("s", T_STRING)
            .u64(1000)
            .bytes(b"xx")
            .0,
    );
    assert!(
        matches!(&e, GgufError::InvalidMetadata { key, offset: 37, .. } if key == "s"),
        "{e}"
    );
    says(&e, &["string value length 1000 runs past the end"]);
}

#[test]
fn string_value_length_above_cap() {
    let e = reject(&Raw::header(0, 1).key("s", T_STRING).u64(u64::MAX).0);
    assert!(
        matches!(&e, GgufError::InvalidMetadata { key, .. } if key == "s"),
        "{e}"
    );
    says(&e, &["exceeds the limit"]);
}

#[test]
fn array_length_past_end_of_file() {
    let raw = Raw::header(0, 1)
        .key("a", T_ARRAY)
        .u32(T_U32)
        .u64(1000)
        .u32(1);
    let e = reject(&raw.0);
    // The length field follows the key (8 + 1), value type (4), element type (4).
    assert!(
        matches!(&e, GgufError::InvalidMetadata { key, offset: 41, .. } if key == "a"),
        "{e}"
    );
    says(
        &e,
        &["array of 1000 u32 elements needs at least 4000 bytes"],
    );
    // Strings take at least their 8-byte length each.
    let raw = Raw::header(0, 1)
        .key("a", T_ARRAY)
        .u32(T_STRING)
        .u64(3)
        .str(b"x")
        .str(b"y");
    says(&reject(&raw.0), &["needs at least 24 bytes"]);
}

#[test]
fn array_length_above_cap() {
    let raw = Raw::header(0, 1)
        .key("a", T_ARRAY)
        .u32(T_U8)
        .u64(MAX_ARRAY_LEN + 1);
    let e = reject(&raw.0);
    assert!(
        matches!(&e, GgufError::InvalidMetadata { key, .. } if key == "a"),
        "{e}"
    );
    says(&e, &["exceeds the limit"]);
}

#[test]
fn empty_key() {
    let e = reject(&Raw::header(0, 1).str(b"").u32(T_U32).u32(5).0);
    assert!(
        matches!(&e, GgufError::InvalidMetadata { key, offset: KV_START, .. } if key == "#0"),
        "{e}"
    );
    says(&e, &["empty key"]);
}

#[test]
fn duplicate_key() {
    let e = reject(&Raw::header(0, 2).kv_u32("a", 1).kv_u32("a", 2).0);
    assert!(
        matches!(&e, GgufError::InvalidMetadata { key, offset: 41, .. } if key == "a"),
        "{e}"
    );
    says(&e, &["duplicate key"]);
}

#[test]
fn key_not_utf8() {
    let e = reject(&Raw::header(0, 1).str(b"\xff\xfe").u32(T_U32).u32(1).0);
    assert!(
        matches!(&e, GgufError::InvalidMetadata { key, offset: 32, .. } if key == "#0"),
        "{e}"
    );
    says(&e, &["metadata key is not valid UTF-8"]);
}

#[test]
fn string_value_not_utf8() {
    let e = reject(&Raw::header(0, 1).key("s", T_STRING).str(b"ok\xc3\x28").0);
    assert!(
        matches!(&e, GgufError::InvalidMetadata { key, offset: 45, .. } if key == "s"),
        "{e}"
    );
    says(&e, &["not valid UTF-8"]);
}

#[test]
fn value_type_out_of_range() {
    let e = reject(&Raw::header(0, 1).key("k", 13).u32(0).0);
    assert!(
        matches!(&e, GgufError::InvalidMetadata { key, offset: 33, .. } if key == "k"),
        "{e}"
    );
    says(&e, &["value type 13 is out of range"]);
}

#[test]
fn array_element_type_out_of_range() {
    let e = reject(&Raw::header(0, 1).key("k", T_ARRAY).u32(u32::MAX).u64(0).0);
    assert!(
        matches!(&e, GgufError::InvalidMetadata { key, .. } if key == "k"),
        "{e}"
    );
    says(&e, &["array element type 4294967295 is out of range"]);
}

#[test]
fn nesting_too_deep() {
    // array<array<array<array<u8>>>>: four levels, one more than allowed.
    let mut raw = Raw::header(0, 1).key("k", T_ARRAY);
    for _ in 0..3 {
        raw = raw.u32(T_ARRAY).u64(1);
    }
    let raw = raw.u32(T_U8).u64(1).u8(0);
    let e = reject(&raw.0);
    assert!(
        matches!(&e, GgufError::InvalidMetadata { key, .. } if key == "k"),
        "{e}"
    );
    says(&e, &["nested deeper than 3"]);
}

#[test]
fn bool_byte_not_0_or_1() {
    let e = reject(&Raw::header(0, 1).key("b", T_BOOL).u8(2).0);
    assert!(
        matches!(&e, GgufError::InvalidMetadata { key, offset: 37, .. } if key == "b"),
        "{e}"
    );
    says(&e, &["bool byte is 2"]);
    // Inside an array too, at the offending element.
    let raw = Raw::header(0, 1)
        .key("b", T_ARRAY)
        .u32(T_BOOL)
        .u64(3)
        .u8(1)
        .u8(0)
        .u8(255);
    let e = reject(&raw.0);
    assert!(
        matches!(&e, GgufError::InvalidMetadata { offset: 51, .. }),
        "{e}"
    );
}

fn alignment_error(raw: Raw) -> GgufError {
    let e = reject(&raw.0);
    assert!(
        matches!(&e, GgufError::InvalidMetadata { key, offset: 53, .. } if key == "general.alignment"),
        "{e}"
    );
    e
}

#[test]
fn alignment_not_u32() {
    let raw = Raw::header(0, 1).key("general.alignment", T_U64).u64(32);
    says(&alignment_error(raw), &["must be a u32, found u64"]);
}

#[test]
fn alignment_zero() {
    says(
        &alignment_error(Raw::header(0, 1).kv_u32("general.alignment", 0)),
        &["alignment 0"],
    );
}

#[test]
fn alignment_not_power_of_two() {
    says(
        &alignment_error(Raw::header(0, 1).kv_u32("general.alignment", 48)),
        &["alignment 48"],
    );
}

#[test]
fn alignment_absurdly_large() {
    let too_big = (MAX_ALIGNMENT * 2) as u32;
    says(
        &alignment_error(Raw::header(0, 1).kv_u32("general.alignment", too_big)),
        &["power of two between 1 and 1048576"],
    );
    alignment_error(Raw::header(0, 1).kv_u32("general.alignment", 1 << 31));
}

/// A one-tensor file: the entry, padding and `data_len` bytes of data.
fn one_tensor(name: &str, dims: &[u64], type_id: u32, offset: u64, data_len: usize) -> Vec<u8> {
    Raw::header(1, 0)
        .tensor(name, dims, type_id, offset)
        .pad(32)
        .data(data_len)
        .0
}

#[track_caller]
fn tensor_error(bytes: &[u8], name: &str, parts: &[&str]) {
    let e = reject(bytes);
    assert!(
        matches!(&e, GgufError::InvalidTensor { name: n, .. } if n == name),
        "{e}"
    );
    says(&e, parts);
}

#[test]
fn tensor_name_empty() {
    let e = reject(&one_tensor("", &[8], F32, 0, 32));
    assert!(
        matches!(
            e,
            GgufError::Invalid {
                offset: KV_START,
                ..
            }
        ),
        "{e}"
    );
    says(&e, &["tensor #0 has an empty name"]);
}

#[test]
fn tensor_name_duplicated() {
    let raw = Raw::header(2, 0)
        .tensor("a", &[8], F32, 0)
        .tensor("a", &[8], F32, 32)
        .pad(32)
        .data(64);
    tensor_error(&raw.0, "a", &["duplicate tensor name (byte 57)"]);
}

#[test]
fn tensor_name_64_bytes_or_more() {
    let name = "x".repeat(64);
    tensor_error(
        &one_tensor(&name, &[8], F32, 0, 32),
        &name,
        &["64 bytes, the limit is 63"],
    );
}

#[test]
fn tensor_name_not_utf8() {
    let raw = Raw::header(1, 0)
        .str(b"w\xff")
        .u32(1)
        .u64(8)
        .u32(F32)
        .u64(0)
        .pad(32)
        .data(32);
    let e = reject(&raw.0);
    assert!(matches!(e, GgufError::Invalid { offset: 32, .. }), "{e}");
    says(&e, &["tensor #0", "not valid UTF-8"]);
}

#[test]
fn more_than_4_dims() {
    tensor_error(
        &one_tensor("t", &[1; 5], F32, 0, 32),
        "t",
        &["5 dimensions, at most 4"],
    );
}

#[test]
fn dimension_at_or_above_2_pow_63() {
    tensor_error(
        &one_tensor("t", &[1 << 63], F32, 0, 32),
        "t",
        &["at or above 2^63"],
    );
    tensor_error(
        &one_tensor("t", &[8, u64::MAX], F32, 0, 32),
        "t",
        &["at or above 2^63"],
    );
}

#[test]
fn element_count_overflows() {
    tensor_error(
        &one_tensor("t", &[1 << 32, 1 << 32], F32, 0, 32),
        "t",
        &["element count"],
    );
    // 2^63 does not fit ggml's int64_t, though it fits a u64.
    tensor_error(
        &one_tensor("t", &[1 << 62, 2], F32, 0, 32),
        "t",
        &["element count"],
    );
}

#[test]
fn byte_count_overflows() {
    // 2^62 elements of 4 bytes: 2^64 bytes.
    tensor_error(
        &one_tensor("t", &[1 << 31, 1 << 31], F32, 0, 32),
        "t",
        &["byte size"],
    );
}

#[test]
fn unknown_tensor_type() {
    tensor_error(
        &one_tensor("t", &[8], 99, 0, 32),
        "t",
        &["unknown or removed tensor type id 99"],
    );
}

#[test]
fn removed_tensor_types() {
    // Q4_2, Q4_3, Q4_0_4_4 and IQ4_NL_4_4 were dropped from ggml.
    for id in [4, 5, 31, 36] {
        tensor_error(
            &one_tensor("t", &[8], id, 0, 32),
            "t",
            &[&format!("type id {id}")],
        );
    }
}

#[test]
fn first_dim_not_multiple_of_block_size() {
    tensor_error(
        &one_tensor("t", &[33, 2], Q4_0, 0, 64),
        "t",
        &["first dimension 33 is not a multiple of the Q4_0 block size 32"],
    );
    // A scalar (no dimensions) of a block type is one element: not a block.
    tensor_error(&one_tensor("t", &[], Q4_0, 0, 32), "t", &["block size"]);
}

#[test]
fn offset_misaligned() {
    tensor_error(
        &one_tensor("t", &[8], F32, 4, 64),
        "t",
        &["offset 4 is not a multiple of alignment 32"],
    );
    // Against a custom alignment too.
    let raw = Raw::header(1, 1)
        .kv_u32("general.alignment", 64)
        .tensor("t", &[8], F32, 32)
        .pad(64)
        .data(128);
    tensor_error(
        &raw.0,
        "t",
        &["offset 32 is not a multiple of alignment 64"],
    );
}

#[test]
fn tensors_overlap() {
    let raw = Raw::header(2, 0)
        .tensor("a", &[16], F32, 0)
        .tensor("b", &[8], F32, 32)
        .pad(32)
        .data(96);
    tensor_error(
        &raw.0,
        "b",
        &["data at 32..64 overlaps tensor `a` at 0..64"],
    );
}

#[test]
fn data_past_end_of_file() {
    tensor_error(
        &one_tensor("t", &[16], F32, 0, 32),
        "t",
        &["runs past the end of the file"],
    );
    tensor_error(
        &one_tensor("t", &[8], F32, 32, 32),
        "t",
        &["data at 32..64"],
    );
    // A zero-size tensor may sit at the very end, not beyond it.
    tensor_error(
        &one_tensor("t", &[0], F32, 64, 32),
        "t",
        &["runs past the end"],
    );
}

#[test]
fn offset_plus_size_wraps() {
    // u64::MAX - 31 is aligned; adding 32 bytes wraps to 0.
    tensor_error(
        &one_tensor("t", &[8], F32, u64::MAX - 31, 32),
        "t",
        &["overflows"],
    );
    // No wrap in the relative offset, but the absolute one would.
    tensor_error(
        &one_tensor("t", &[8], F32, u64::MAX - 63, 32),
        "t",
        &["runs past the end"],
    );
}

#[test]
fn eof_inside_tensor_entry_names_the_tensor() {
    let mut bytes = Raw::header(1, 0)
        .tensor("blk.0.attn_q.weight", &[8, 8], F32, 0)
        .0;
    bytes.truncate(bytes.len() - 10);
    // Keep the count check satisfied: it needs only 25 bytes.
    let e = reject(&bytes);
    assert!(matches!(e, GgufError::UnexpectedEof { .. }), "{e}");
    says(&e, &["tensor `blk.0.attn_q.weight`"]);
}

#[test]
fn eof_inside_value_names_the_key() {
    let e = reject(
        &Raw::header(0, 1)
            .key("llama.block_count", T_U64)
            .u32(2)
            .bytes(&[0; 1])
            .0,
    );
    assert!(matches!(e, GgufError::UnexpectedEof { .. }), "{e}");
    says(&e, &["key `llama.block_count`"]);
}
