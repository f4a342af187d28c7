//! Property tests: random valid files read back as written, and random
//! corruptions of a valid file are an error or a file, never a panic.

use std::collections::BTreeMap;

use gguf_format::{Array, GgmlType, Gguf, GgufHeader, GgufWriter, Value, ValueType};
use proptest::prelude::*;

/// Values compare bit for bit, so NaNs (of any payload) must survive too.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(x), Value::Array(y)) => {
            x.element_type() == y.element_type()
                && x.len() == y.len()
                && x.iter().zip(y.iter()).all(|(a, b)| same(&a, &b))
        }
        _ => a == b,
    }
}

/// A value of type `t` that sits inside `depth` arrays.
fn value_of(t: ValueType, depth: usize) -> BoxedStrategy<Value> {
    match t {
        ValueType::U8 => any::<u8>().prop_map(Value::U8).boxed(),
        ValueType::I8 => any::<i8>().prop_map(Value::I8).boxed(),
        ValueType::U16 => any::<u16>().prop_map(Value::U16).boxed(),
        ValueType::I16 => any::<i16>().prop_map(Value::I16).boxed(),
        ValueType::U32 => any::<u32>().prop_map(Value::U32).boxed(),
        ValueType::I32 => any::<i32>().prop_map(Value::I32).boxed(),
        ValueType::F32 => any::<u32>()
            .prop_map(|b| Value::F32(f32::from_bits(b)))
            .boxed(),
        ValueType::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        ValueType::String => "\\PC{0,10}".prop_map(Value::String).boxed(),
        ValueType::U64 => any::<u64>().prop_map(Value::U64).boxed(),
        ValueType::I64 => any::<i64>().prop_map(Value::I64).boxed(),
        ValueType::F64 => any::<u64>()
            .prop_map(|b| Value::F64(f64::from_bits(b)))
            .boxed(),
        ValueType::Array => {
            // Elements sit one level deeper; an array there must itself be
            // within the reader's nesting limit.
            let can_nest = depth + 1 < gguf_format::MAX_ARRAY_DEPTH;
            let types: Vec<ValueType> = (0..13)
                .filter_map(ValueType::from_id)
                .filter(|&t| can_nest || t != ValueType::Array)
                .collect();
            prop::sample::select(types)
                .prop_flat_map(move |et| {
                    prop::collection::vec(value_of(et, depth + 1), 0..5)
                        .prop_map(move |values| Value::Array(Array::new(et, values)))
                })
                .boxed()
        }
    }
}

fn any_value() -> BoxedStrategy<Value> {
    (0u32..13)
        .prop_flat_map(|id| value_of(ValueType::from_id(id).unwrap(), 0))
        .boxed()
}

/// A tensor: type, shape (first dimension whole blocks) and matching bytes.
fn any_tensor() -> impl Strategy<Value = (GgmlType, Vec<u64>, Vec<u8>)> {
    (
        prop::sample::select(GgmlType::ALL.to_vec()),
        0u64..3,
        prop::collection::vec(0u64..4, 0..4),
    )
        .prop_flat_map(|(t, blocks, rest)| {
            let mut dims = vec![blocks * t.block_size() as u64];
            dims.extend(rest);
            let n = t.bytes_for(dims.iter().product()).unwrap() as usize;
            prop::collection::vec(any::<u8>(), n).prop_map(move |bytes| (t, dims.clone(), bytes))
        })
}

fn any_file() -> impl Strategy<Value = GgufWriter<'static>> {
    (
        prop::collection::btree_map("[a-z][a-z._0-9]{0,15}", any_value(), 0..6),
        prop::option::of(0u32..10),
        prop::collection::vec(any_tensor(), 0..5),
    )
        .prop_map(
            |(kvs, align_log2, tensors): (BTreeMap<String, Value>, _, _)| {
                let mut w = GgufWriter::new();
                for (k, v) in kvs {
                    if k != "general.alignment" {
                        w.add_metadata(k, v).unwrap();
                    }
                }
                if let Some(e) = align_log2 {
                    w.set_alignment(1 << e).unwrap();
                }
                for (i, (t, dims, bytes)) in tensors.into_iter().enumerate() {
                    w.add_tensor(format!("blk.{i}.weight"), t, &dims, bytes)
                        .unwrap();
                }
                w
            },
        )
}

proptest! {
    #[test]
    fn written_files_read_back(w in any_file()) {
        let bytes = w.to_bytes().unwrap();
        let file = Gguf::from_data(&bytes[..]).unwrap();
        prop_assert_eq!(file.metadata().len(), w.metadata().len());
        for ((ka, va), (kb, vb)) in file.metadata().iter().zip(w.metadata()) {
            prop_assert_eq!(ka, kb);
            prop_assert!(same(va, vb), "{ka}: {va:?} != {vb:?}");
        }
        prop_assert_eq!(file.alignment, w.alignment());
        prop_assert_eq!(file.tensors(), &w.tensor_infos()[..]);
        // Re-writing what was read gives the same bytes.
        let mut again = GgufWriter::new();
        again.copy_metadata_from(&file).unwrap();
        for t in file.tensors() {
            again.add_tensor(t.name.clone(), t.ggml_type, &t.dims, file.tensor_data(t)).unwrap();
        }
        prop_assert!(again.to_bytes().unwrap() == bytes);
    }

    #[test]
    fn corrupted_files_never_panic(
        w in any_file(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = w.to_bytes().unwrap();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if let Ok(file) = Gguf::from_data(&bytes[..]) {
            for t in file.tensors() {
                prop_assert_eq!(file.tensor_data(t).len() as u64, t.n_bytes());
            }
        }
        let n = cut.index(bytes.len() + 1);
        let _ = GgufHeader::parse(&bytes[..n]);
    }
}
