//! Every GGUF fixture made by llama.cpp / gguf-py reads, with sane contents,
//! and the writer reproduces the llama.cpp-made files byte for byte.

use std::collections::BTreeSet;

use gguf_format::{GgmlType, GgufFile, GgufWriter, Value, ValueType};

use crate::util::fixture;

const SYNTH: [&str; 15] = [
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q5_1", "Q4_K_M", "Q4_0", "Q4_1",
    "Q3_K_M", "Q2_K", "IQ4_NL", "IQ4_XS",
];

fn synth(ftype: &str) -> GgufFile {
    GgufFile::open(fixture(&format!("synth/synth-{ftype}.gguf"))).unwrap()
}

/// Checks what every parsed file must satisfy: each tensor's bytes are its
/// size, and tensors sit one after another in table order as llama.cpp
/// lays them out.
fn check_layout(file: &GgufFile) {
    let mut next = 0;
    for t in file.tensors() {
        assert_eq!(t.offset, next, "{}", t.name);
        assert_eq!(file.tensor_data(t).len() as u64, t.n_bytes(), "{}", t.name);
        next = (t.offset + t.n_bytes()).div_ceil(file.alignment) * file.alignment;
    }
    if !file.tensors().is_empty() {
        assert_eq!(file.data_offset + next, file.bytes().len() as u64);
    }
}

#[test]
fn synth_f32() {
    let f = synth("F32");
    assert_eq!(f.version, 3);
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_u32("llama.block_count").unwrap(), 2);
    assert_eq!(f.get_u32("llama.embedding_length").unwrap(), 256);
    assert_eq!(f.get_u32("llama.attention.head_count_kv").unwrap(), 2);
    assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 10000.0);
    assert!(f.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(f.metadata().len(), 20);
    assert_eq!(f.tensors().len(), 21);
    let (t, bytes) = f.tensor_by_name("token_embd.weight").unwrap();
    assert_eq!(
        (t.ggml_type, t.dims.as_slice()),
        (GgmlType::F32, &[256u64, 384][..])
    );
    assert_eq!(
        (t.row_len(), t.n_rows(), bytes.len()),
        (256, 384, 256 * 384 * 4)
    );
    assert!(bytes
        .chunks_exact(4)
        .all(|c| f32::from_le_bytes(c.try_into().unwrap()).is_finite()));
    let tokens = f.get_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(
        (tokens.element_type(), tokens.len()),
        (ValueType::String, 384)
    );
    assert_eq!(tokens.get_str(1), Some("<s>"));
    assert_eq!(
        f.get_array("tokenizer.ggml.scores").unwrap().element_type(),
        ValueType::F32
    );
    assert_eq!(
        f.get_array("tokenizer.ggml.token_type").unwrap().get(0),
        Some(Value::I32(2))
    );
    assert!(f.tensors().iter().all(|t| t.ggml_type == GgmlType::F32));
    check_layout(&f);
}

#[test]
fn every_synth_file() {
    let mut types = BTreeSet::new();
    for ftype in SYNTH {
        let f = synth(ftype);
        assert_eq!(f.get_u32("llama.block_count").unwrap(), 2, "{ftype}");
        assert_eq!(f.tensors().len(), 21, "{ftype}");
        assert_eq!(f.get_array("tokenizer.ggml.tokens").unwrap().len(), 384);
        let embd = f.require_tensor("token_embd.weight").unwrap();
        assert_eq!(embd.dims, [256, 384], "{ftype}");
        // The weight type the file is named after, on a typical matrix.
        let q = f.require_tensor("blk.0.attn_q.weight").unwrap();
        assert_eq!(q.ggml_type.name(), ftype.trim_end_matches("_M"), "{ftype}");
        // Norms stay F32 in every file.
        assert_eq!(
            f.require_tensor("output_norm.weight").unwrap().ggml_type,
            GgmlType::F32
        );
        check_layout(&f);
        types.extend(f.tensors().iter().map(|t| t.ggml_type.name()));
    }
    let expected = "F32 F16 BF16 Q8_0 Q6_K Q5_K Q5_0 Q5_1 Q4_K Q4_0 Q4_1 Q3_K Q2_K IQ4_NL IQ4_XS";
    assert_eq!(types, expected.split(' ').collect());
}

#[test]
fn vocab_files() {
    for (name, model, n_tokens, n_keys) in [
        ("gpt-2", "gpt2", 50257, 16),
        ("llama-bpe", "gpt2", 128256, 20),
        ("llama-spm", "llama", 32000, 22),
    ] {
        let f = GgufFile::open(fixture(&format!("vocab/ggml-vocab-{name}.gguf"))).unwrap();
        assert_eq!(f.metadata().len(), n_keys, "{name}");
        assert!(f.tensors().is_empty());
        assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), model);
        let tokens = f.get_array("tokenizer.ggml.tokens").unwrap();
        assert_eq!(
            (tokens.element_type(), tokens.len()),
            (ValueType::String, n_tokens)
        );
        assert_eq!(
            f.get_array("tokenizer.ggml.token_type").unwrap().len(),
            n_tokens
        );
        assert!(f.get_uint("tokenizer.ggml.bos_token_id").unwrap() < n_tokens as u64);
    }
    let gpt2 = GgufFile::open(fixture("vocab/ggml-vocab-gpt-2.gguf")).unwrap();
    let merges = gpt2.get_array("tokenizer.ggml.merges").unwrap();
    assert_eq!((merges.len(), merges.get_str(0)), (50000, Some("Ġ t")));
}

#[test]
fn writer_reproduces_llama_cpp_files() {
    for ftype in SYNTH {
        let f = synth(ftype);
        let mut w = GgufWriter::new();
        w.copy_metadata_from(&f).unwrap();
        for t in f.tensors() {
            // Borrowed straight from the map: no copy.
            w.add_tensor(t.name.clone(), t.ggml_type, &t.dims, f.tensor_data(t))
                .unwrap();
        }
        let bytes = w.to_bytes().unwrap();
        assert!(
            bytes == f.bytes(),
            "synth-{ftype}: written file differs from the original"
        );
    }
}

#[test]
fn vocab_files_round_trip() {
    for name in ["gpt-2", "llama-bpe", "llama-spm"] {
        let f = GgufFile::open(fixture(&format!("vocab/ggml-vocab-{name}.gguf"))).unwrap();
        let mut w = GgufWriter::new();
        w.copy_metadata_from(&f).unwrap();
        let bytes = w.to_bytes().unwrap();
        // Identical up to the header padding, which the writer always adds.
        assert_eq!(&bytes[..f.bytes().len()], f.bytes(), "{name}");
        let back = gguf_format::Gguf::from_data(bytes).unwrap();
        assert_eq!(back.metadata(), f.metadata());
    }
}
