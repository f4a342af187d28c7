//! The writer: every value type, its validation, metadata editing, output.

use gguf_format::{
    Array, GgmlType, Gguf, GgufError, GgufFile, GgufWriter, Value, ValueType, MAX_ARRAY_DEPTH,
};

use crate::util::says;

fn all_value_types() -> Vec<(&'static str, Value)> {
    vec![
        ("u8", Value::U8(200)),
        ("i8", Value::I8(-100)),
        ("u16", Value::U16(60000)),
        ("i16", Value::I16(-30000)),
        ("u32", Value::U32(4_000_000_000)),
        ("i32", Value::I32(-2_000_000_000)),
        ("f32", Value::F32(-1.25)),
        ("bool", Value::Bool(true)),
        ("string", Value::String("héllo ✓".into())),
        ("array", vec![1i16, -2, 3].into()),
        ("u64", Value::U64(u64::MAX)),
        ("i64", Value::I64(i64::MIN)),
        ("f64", Value::F64(std::f64::consts::PI)),
        ("empty", Value::Array(Array::new(ValueType::F64, vec![]))),
        ("strings", vec!["a", "", "ccc"].into()),
        (
            "nested",
            Value::Array(Array::new(
                ValueType::Array,
                vec![
                    vec![true, false].into(),
                    vec![7u64].into(),
                    Vec::<String>::new().into(),
                ],
            )),
        ),
    ]
}

#[test]
fn every_value_type_round_trips() {
    let mut w = GgufWriter::new();
    for (k, v) in all_value_types() {
        w.add_metadata(k, v).unwrap();
    }
    let file = Gguf::from_data(w.to_bytes().unwrap()).unwrap();
    assert_eq!(file.metadata(), w.metadata());
    let ids: Vec<u32> = file
        .metadata()
        .iter()
        .map(|(_, v)| v.value_type() as u32)
        .collect();
    for id in 0..13 {
        assert!(ids.contains(&id), "value type {id} not covered");
    }
    assert_eq!(file.get_u32("u32").unwrap(), 4_000_000_000);
    assert_eq!(file.get_uint("u8").unwrap(), 200);
    assert!(file.get_uint("i64").is_err());
}

#[track_caller]
fn write_error(r: gguf_format::Result<()>, parts: &[&str]) {
    let e = r.unwrap_err();
    assert!(matches!(e, GgufError::Write { .. }), "{e}");
    says(&e, parts);
}

#[test]
fn rejects_bad_metadata() {
    let mut w = GgufWriter::new();
    write_error(w.add_metadata("", 1u32), &["empty metadata key"]);
    w.add_metadata("k", 1u32).unwrap();
    write_error(w.add_metadata("k", 2u32), &["duplicate metadata key `k`"]);
    let mixed = Array::new(ValueType::U32, vec![Value::U32(1), Value::I32(2)]);
    write_error(
        w.add_metadata("mixed", mixed),
        &["`mixed`", "array of u32 has a i32 at index 1"],
    );
    // One level deeper than the reader accepts.
    let mut deep: Value = vec![1u8].into();
    for _ in 0..MAX_ARRAY_DEPTH {
        deep = Value::Array(Array::new(ValueType::Array, vec![deep]));
    }
    write_error(w.add_metadata("deep", deep), &["nested deeper than 3"]);
    assert_eq!(w.metadata().len(), 1, "a rejected pair is not kept");
}

#[test]
fn rejects_bad_alignment() {
    let mut w = GgufWriter::new();
    for a in [0, 48, 1 << 21] {
        write_error(
            w.set_alignment(a),
            &["general.alignment", &format!("alignment {a}")],
        );
    }
    write_error(
        w.add_metadata("general.alignment", 64u64),
        &["must be a u32, found u64"],
    );
    w.set_alignment(64).unwrap();
    assert_eq!(w.alignment(), 64);
    assert_eq!(w.remove_metadata("general.alignment"), Some(Value::U32(64)));
    assert_eq!(w.alignment(), 32);
}

#[test]
fn rejects_bad_tensors() {
    let mut w = GgufWriter::new();
    write_error(
        w.add_tensor("", GgmlType::F32, &[1], vec![0; 4]),
        &["empty tensor name"],
    );
    let long = "x".repeat(64);
    write_error(
        w.add_tensor(long, GgmlType::F32, &[1], vec![0; 4]),
        &["64 bytes"],
    );
    w.add_tensor("t", GgmlType::F32, &[1], vec![0; 4]).unwrap();
    write_error(
        w.add_tensor("t", GgmlType::F32, &[1], vec![0; 4]),
        &["`t`", "duplicate"],
    );
    write_error(
        w.add_tensor("u", GgmlType::F32, &[1; 5], vec![0; 4]),
        &["5 dimensions"],
    );
    write_error(
        w.add_tensor("u", GgmlType::F32, &[1 << 63], vec![]),
        &["2^63"],
    );
    write_error(
        w.add_tensor("u", GgmlType::F32, &[1 << 40, 1 << 40], vec![]),
        &["element count"],
    );
    write_error(
        w.add_tensor("u", GgmlType::Q4_0, &[16], vec![0; 9]),
        &["block size 32"],
    );
    write_error(
        w.add_tensor("u", GgmlType::Q4_0, &[64], vec![0; 35]),
        &["35 bytes of data given, a Q4_0 tensor of shape [64] has 36"],
    );
    assert_eq!(w.tensor_infos().len(), 1);
}

#[test]
fn set_replaces_in_place_and_copy_overrides() {
    let src = {
        let mut w = GgufWriter::new();
        w.add_metadata("a", 1u32).unwrap();
        w.add_metadata("b", "two").unwrap();
        Gguf::from_data(w.to_bytes().unwrap()).unwrap()
    };
    let mut w = GgufWriter::new();
    w.add_metadata("b", "old").unwrap();
    w.add_metadata("z", 0u8).unwrap();
    w.copy_metadata_from(&src).unwrap();
    w.set_metadata("z", 9u8).unwrap();
    let keys: Vec<&str> = w.metadata().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["b", "z", "a"]);
    assert_eq!(w.get("b"), Some(&Value::String("two".into())));
    assert_eq!(w.get("z"), Some(&Value::U8(9)));
    assert_eq!(w.remove_metadata("b"), Some(Value::String("two".into())));
    assert_eq!(w.remove_metadata("b"), None);
    // The index stays right after a removal.
    w.set_metadata("a", 5u32).unwrap();
    let back = Gguf::from_data(w.to_bytes().unwrap()).unwrap();
    assert_eq!(
        back.metadata(),
        [("z".into(), Value::U8(9)), ("a".into(), Value::U32(5))]
    );
}

#[test]
fn layout_is_aligned_and_padded() {
    let mut w = GgufWriter::new();
    w.add_tensor("a", GgmlType::Q8_0, &[32], vec![1; 34])
        .unwrap();
    w.add_tensor("b", GgmlType::F16, &[3, 1, 1, 1], vec![2; 6])
        .unwrap();
    w.add_tensor("c", GgmlType::F32, &[0], vec![]).unwrap();
    let offsets: Vec<u64> = w.tensor_infos().iter().map(|t| t.offset).collect();
    assert_eq!(offsets, [0, 64, 96]);
    let bytes = w.to_bytes().unwrap();
    let file = Gguf::from_data(&bytes[..]).unwrap();
    assert_eq!(file.data_offset % 32, 0);
    assert_eq!(bytes.len() as u64, file.data_offset + 96);
    // Padding is zeros.
    let start = (file.data_offset + 34) as usize;
    assert!(bytes[start..start + 30].iter().all(|&b| b == 0));
    assert_eq!(file.tensors(), w.tensor_infos());
}

struct Failing;

impl std::io::Write for Failing {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("disk full"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn io_errors_are_reported() {
    let e = GgufWriter::new().write_to(Failing).unwrap_err();
    assert!(matches!(e, GgufError::WriteIo { .. }), "{e}");
    says(&e, &["disk full"]);
    let e = GgufWriter::new()
        .write_file("/nonexistent-dir/x.gguf")
        .unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }), "{e}");
    says(&e, &["/nonexistent-dir/x.gguf"]);
}

#[test]
fn write_file_then_open() {
    let path = std::env::temp_dir().join(format!("gguf-format-test-{}.gguf", std::process::id()));
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama").unwrap();
    w.add_tensor("w", GgmlType::BF16, &[4], vec![9; 8]).unwrap();
    let n = w.write_file(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(n, file.bytes().len() as u64);
    assert_eq!(file.tensor_by_name("w").unwrap().1, &[9; 8]);
}
