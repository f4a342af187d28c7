//! Bad input gives a clear typed error, never a panic.

use std::sync::Arc;

use gguf_format::{Gguf, GgufFile};
use llama_model::{CpuBackend, LoadOptions, LogitsMode, Model, ModelError, SessionOptions};

use crate::common::fixture;

fn synth() -> std::path::PathBuf {
    fixture("synth/synth-Q8_0.gguf")
}

#[test]
fn context_overflow_is_an_error() {
    let model = Model::load(synth(), &LoadOptions::default()).unwrap();
    let mut s = model
        .session(&SessionOptions {
            n_ctx: 8,
            ..Default::default()
        })
        .unwrap();
    s.forward(&[1, 2, 3, 4, 5], LogitsMode::Last).unwrap();
    let e = s.forward(&[1, 2, 3, 4], LogitsMode::Last).unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::ContextOverflow {
                n_past: 5,
                n_tokens: 4,
                n_ctx: 8
            }
        ),
        "{e}"
    );
    assert_eq!(s.n_past(), 5, "a failed batch leaves the cache as it was");
    assert!(e.to_string().contains("context"));
}

#[test]
fn token_out_of_vocabulary_is_an_error() {
    let model = Model::load(synth(), &LoadOptions::default()).unwrap();
    let mut s = model
        .session(&SessionOptions {
            n_ctx: 8,
            ..Default::default()
        })
        .unwrap();
    let e = s.forward(&[1, 384], LogitsMode::Last).unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::InvalidToken {
                token: 384,
                index: 1,
                n_vocab: 384
            }
        ),
        "{e}"
    );
    assert!(s.forward(&[], LogitsMode::Last).is_err());
}

#[test]
fn reads_hyper_parameters_from_metadata() {
    let model = Model::load(synth(), &LoadOptions::default()).unwrap();
    let c = model.config();
    assert_eq!(
        (
            c.n_layer,
            c.n_embd,
            c.n_ff,
            c.n_head,
            c.n_head_kv,
            c.head_dim,
            c.n_vocab
        ),
        (2, 256, 512, 4, 2, 64, 384)
    );
    assert_eq!(c.rope.freq_base, 10000.0);
    assert!(!model.tied_embeddings());
}

/// Rewrites synth-Q8_0.gguf in memory with `edit` applied to its raw bytes
/// at the first occurrence of `from`, and loads it.
fn load_edited(from: &[u8], to: &[u8]) -> Result<Model<CpuBackend>, ModelError> {
    let mut bytes = std::fs::read(synth()).unwrap();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    bytes[at..at + to.len()].copy_from_slice(to);
    let file = Arc::new(Gguf::from_data(bytes)?);
    Model::load_with(&file, CpuBackend::new(), &LoadOptions::default())
}

#[test]
fn unknown_architecture_is_named() {
    // `general.architecture` = "llama" → "llamx"; every llama.* key then is
    // under another prefix, but the architecture check comes first.
    let e = load_edited(
        b"\x05\x00\x00\x00\x00\x00\x00\x00llama",
        b"\x05\x00\x00\x00\x00\x00\x00\x00llamx",
    )
    .err()
    .expect("must fail");
    assert!(
        matches!(&e, ModelError::UnknownArchitecture(a) if a == "llamx"),
        "{e}"
    );
}

#[test]
fn missing_tensor_is_named() {
    // Rename blk.1.ffn_up.weight in the tensor table.
    let e = load_edited(b"blk.1.ffn_up.weight", b"blk.1.ffn_uq.weight")
        .err()
        .expect("must fail");
    assert!(
        matches!(&e, ModelError::MissingTensor { name } if name == "blk.1.ffn_up.weight"),
        "{e}"
    );
    assert_eq!(e.to_string(), "tensor `blk.1.ffn_up.weight` is missing");
}

#[test]
fn unsupported_type_is_named() {
    let file = Arc::new(GgufFile::open(synth()).unwrap());
    let info = file.tensor("blk.0.attn_q.weight").unwrap();
    // Retype the tensor as I8 (type 24), which has no kernels: its type id
    // follows its name, dimension count and dimensions in the tensor table.
    let mut bytes = std::fs::read(synth()).unwrap();
    let name = info.name.as_bytes();
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let type_at = at + 4 + 8 * info.dims.len();
    assert_eq!(
        u32::from_le_bytes(bytes[type_at..type_at + 4].try_into().unwrap()),
        8
    );
    bytes[type_at..type_at + 4].copy_from_slice(&24u32.to_le_bytes());
    let g = Arc::new(Gguf::from_data(bytes).unwrap());
    let e = Model::load_with(&g, CpuBackend::new(), &LoadOptions::default())
        .err()
        .expect("must fail");
    assert!(
        matches!(&e, ModelError::UnsupportedType { name, .. } if name == "blk.0.attn_q.weight"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "unsupported tensor type I8 in tensor `blk.0.attn_q.weight`"
    );
}

/// synth-Q8_0.gguf with metadata `set`, loaded.
fn load_with_metadata(set: &[(&str, gguf_format::Value)]) -> Result<Model<CpuBackend>, ModelError> {
    let f = GgufFile::open(synth()).unwrap();
    let mut w = gguf_format::GgufWriter::new();
    w.copy_metadata_from(f.header()).unwrap();
    for (k, v) in set {
        w.set_metadata(*k, v.clone()).unwrap();
    }
    for t in f.tensors() {
        w.add_tensor(t.name.clone(), t.ggml_type, &t.dims, f.tensor_data(t))
            .unwrap();
    }
    let file = Arc::new(Gguf::from_data(w.to_bytes().unwrap())?);
    Model::load_with(&file, CpuBackend::new(), &LoadOptions::default())
}

#[test]
fn metadata_that_would_size_allocations_or_overflow_is_refused() {
    use gguf_format::Value;
    let names: Vec<String> = (0..500).map(|i| format!("t{i}")).collect();
    let tokens = |n: usize| names[..n].iter().map(String::as_str).collect::<Vec<&str>>();
    let cases: [(Vec<(&str, Value)>, &str); 11] = [
        (
            vec![("llama.block_count", Value::U32(100_000_000))],
            "metadata `llama.block_count`: 100000000 layers, but the file has only 21 tensors",
        ),
        (
            // 4 heads × 2^62 wraps to 0 in 64 bits.
            vec![
                ("llama.attention.key_length", Value::U64(1 << 62)),
                ("llama.attention.value_length", Value::U64(1 << 62)),
            ],
            "metadata `llama.attention.head_count`: 4 heads × head size 4611686018427387904 is more than 2147483648 values per row",
        ),
        (
            vec![("llama.embedding_length", Value::U64(1 << 33))],
            "metadata `llama.embedding_length`: width 8589934592 exceeds 2147483648",
        ),
        (
            vec![("llama.context_length", Value::U32(0))],
            "metadata `llama.context_length`: 0 positions",
        ),
        (
            vec![("llama.block_count", Value::U32(0))],
            "layer count and widths must be positive",
        ),
        (
            vec![("llama.attention.head_count", Value::U32(0))],
            "metadata `llama.attention.head_count`: 0 query heads",
        ),
        (
            // Was NaN logits at the first token.
            vec![("llama.attention.scale", Value::F32(f32::NAN))],
            "metadata `llama.attention.scale`: NaN is not a valid scale",
        ),
        (
            vec![("llama.rope.freq_base_swa", Value::F32(-1.0))],
            "metadata `llama.rope.freq_base_swa`: -1 is not a valid base",
        ),
        (
            // Sized per-layer tables of 2^32 experts before any shape check.
            vec![("llama.expert_count", Value::U32(u32::MAX))],
            "metadata `llama.expert_count`: 4294967295 experts exceeds the limit of 512",
        ),
        (
            // 500 tokens for 384 embedding rows (ids the model has no row for),
            // with and without a `vocab_size` that agrees with the rows.
            vec![("tokenizer.ggml.tokens", Value::from(tokens(500)))],
            "vocabulary of 500 tokens, but token_embd.weight has 384 rows",
        ),
        (
            vec![
                ("llama.vocab_size", Value::U32(384)),
                ("tokenizer.ggml.tokens", Value::from(tokens(100))),
            ],
            "100 tokens, but the model's vocabulary has 384",
        ),
    ];
    for (set, want) in cases {
        let e = load_with_metadata(&set)
            .err()
            .expect("must fail")
            .to_string();
        assert!(e.contains(want), "{e}\nwanted: {want}");
    }
}

#[test]
fn a_kv_cache_larger_than_memory_is_refused_before_it_is_allocated() {
    let model = Model::load(synth(), &LoadOptions::default()).unwrap();
    let start = std::time::Instant::now();
    // 2^40 positions × 2 layers × 128 values × 2 (K and V) × 2 bytes: 1 PiB.
    let e = model
        .session(&SessionOptions {
            n_ctx: 1 << 40,
            ..Default::default()
        })
        .err()
        .expect("must fail")
        .to_string();
    assert!(e.contains("a KV cache of 1099511627776 positions"), "{e}");
    assert!(e.contains("would take 1125899906842624 bytes"), "{e}");
    assert!(start.elapsed().as_secs() < 5);
    let c = model.config();
    assert_eq!(c.kv_cache_bytes(1 << 40, 2), Some(1 << 50));
    assert_eq!(c.kv_cache_bytes(usize::MAX, 2), None);
    assert_eq!(c.logits_bytes(10), Some(10 * 384 * 4));
}
