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
