//! Unusual but valid files the reader must accept.

use gguf_format::{GgmlType, Gguf, GgufHeader, GgufWriter, Value, ValueType};

use crate::util::*;

#[test]
fn zero_element_tensor() {
    let raw = Raw::header(2, 0)
        .tensor("empty", &[256, 0], 12, 0)
        .tensor("w", &[8], F32, 0)
        .pad(32)
        .data(32);
    let file = Gguf::from_data(raw.0).unwrap();
    let (t, bytes) = file.tensor_by_name("empty").unwrap();
    assert_eq!(
        (t.ggml_type, t.n_elements(), t.n_bytes()),
        (GgmlType::Q4_K, 0, 0)
    );
    assert!(bytes.is_empty());
    // It shares offset 0 with `w` without overlapping it.
    assert_eq!(file.tensor_by_name("w").unwrap().1.len(), 32);
}

#[test]
fn custom_alignment() {
    for alignment in [1u32, 8, 64, 4096] {
        let mut w = GgufWriter::new();
        w.set_alignment(alignment).unwrap();
        w.add_tensor("a", GgmlType::F16, &[3], vec![1u8; 6])
            .unwrap();
        w.add_tensor("b", GgmlType::I8, &[5], vec![2u8; 5]).unwrap();
        let file = Gguf::from_data(w.to_bytes().unwrap()).unwrap();
        let a = u64::from(alignment);
        assert_eq!(file.alignment, a);
        assert_eq!(file.data_offset % a, 0);
        let b = file.tensor("b").unwrap();
        assert_eq!(b.offset, 6u64.div_ceil(a) * a);
        assert_eq!(file.tensor_data(b), &[2u8; 5]);
        assert_eq!(file.tensor_by_name("a").unwrap().1, &[1u8; 6]);
    }
}

#[test]
fn alignment_one_packs_tensors() {
    let raw = Raw::header(2, 1)
        .kv_u32("general.alignment", 1)
        .tensor("a", &[3], 24, 0)
        .tensor("b", &[1], 24, 3)
        .data(4);
    let file = Gguf::from_data(raw.0).unwrap();
    assert_eq!(file.tensor_by_name("b").unwrap().1, &[3]);
}

#[test]
fn version_2() {
    let mut raw = Raw::header(0, 1).kv_u32("k", 7);
    raw.0[4] = 2;
    let h = GgufHeader::parse(&raw.0).unwrap();
    assert_eq!((h.version, h.get_u32("k").unwrap()), (2, 7));
}

#[test]
fn name_of_63_bytes() {
    let name = "n".repeat(63);
    let raw = Raw::header(1, 0)
        .tensor(&name, &[8], F32, 0)
        .pad(32)
        .data(32);
    assert!(GgufHeader::parse(&raw.0).unwrap().tensor(&name).is_some());
}

#[test]
fn four_dims_and_scalars() {
    let raw = Raw::header(2, 0)
        .tensor("4d", &[2, 3, 4, 5], F32, 0)
        .tensor("scalar", &[], F32, 480)
        .pad(32)
        .data(484);
    let file = Gguf::from_data(raw.0).unwrap();
    let t = file.tensor("4d").unwrap();
    assert_eq!((t.n_elements(), t.row_len(), t.n_rows()), (120, 2, 60));
    let s = file.tensor("scalar").unwrap();
    assert_eq!(
        (s.n_elements(), s.n_bytes(), s.row_len(), s.n_rows()),
        (1, 4, 1, 1)
    );
}

#[test]
fn arrays_nested_three_deep() {
    let raw = Raw::header(0, 1)
        .key("k", T_ARRAY)
        .u32(T_ARRAY)
        .u64(1)
        .u32(T_ARRAY)
        .u64(2)
        .u32(T_U8)
        .u64(1)
        .u8(5)
        .u32(T_BOOL)
        .u64(0);
    let h = GgufHeader::parse(&raw.0).unwrap();
    let outer = h.get_array("k").unwrap();
    let middle = outer.get_array(0).unwrap();
    assert_eq!(middle.get(0), Some(Value::Array(vec![5u8].into())));
    assert_eq!(middle.get_array(1).unwrap().element_type(), ValueType::Bool);
}

#[test]
fn no_tensors_and_no_padding() {
    // Vocabulary-only files end right after their metadata.
    let raw = Raw::header(0, 1).key("s", T_STRING).str(b"tail");
    let h = GgufHeader::parse(&raw.0).unwrap();
    assert!(h.data_offset > raw.len());
    assert_eq!(h.get_str("s").unwrap(), "tail");
}

#[test]
fn empty_strings_and_arrays() {
    let raw = Raw::header(0, 2)
        .key("s", T_STRING)
        .str(b"")
        .key("a", T_ARRAY)
        .u32(T_STRING)
        .u64(0);
    let h = GgufHeader::parse(&raw.0).unwrap();
    assert_eq!(h.get_str("s").unwrap(), "");
    assert!(h.get_array("a").unwrap().is_empty());
}
