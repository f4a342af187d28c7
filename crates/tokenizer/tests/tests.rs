//! Proof tests against llama.cpp's own outputs (see tests/fixtures/README.md).

mod chat_content;
mod chat_templates;
mod fuzz;
mod metadata;
mod sandbox;
mod smollm2;
mod stream;
mod vocab_files;

/// Path of a file under the workspace's `tests/fixtures`.
pub fn fixture(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures")).join(rel)
}
