//! Tokenization throughput (MB/s of UTF-8 input) for the byte-level BPE
//! vocabularies (SmolLM2's `smollm`, LLaMA-3's `llama-bpe`) and the LLaMA
//! SentencePiece vocabulary, on ~400 KB of text: the workspace's own Rust
//! sources and Markdown (code and English prose), read at bench start.
//!
//! `cargo bench -p tokenizer --bench tokenize`

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gguf_format::GgufFile;
use tokenizer::Tokenizer;

const TEXT_BYTES: usize = 400 << 10;

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if p.is_dir() {
            if !name.starts_with('.') && !name.starts_with("target") && name != "fixtures" {
                collect(&p, files);
            }
        } else if name.ends_with(".rs") || name.ends_with(".md") {
            files.push(p);
        }
    }
}

fn corpus() -> String {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let mut files = Vec::new();
    collect(root, &mut files);
    let mut text = String::new();
    for f in files {
        if text.len() >= TEXT_BYTES {
            break;
        }
        if let Ok(s) = std::fs::read_to_string(&f) {
            text.push_str(&s);
        }
    }
    let mut end = text.len().min(TEXT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

fn load(path: &Path) -> Tokenizer {
    let file = GgufFile::open(path).unwrap();
    Tokenizer::from_gguf(file.header()).unwrap()
}

fn bench(c: &mut Criterion) {
    let text = corpus();
    let fixtures = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/vocab"
    ));
    let vocabs = [
        (
            "smollm2",
            model_cache::default_model().expect("default model"),
        ),
        ("llama-bpe", fixtures.join("ggml-vocab-llama-bpe.gguf")),
        ("llama-spm", fixtures.join("ggml-vocab-llama-spm.gguf")),
    ];
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.sample_size(10);
    for (name, path) in vocabs {
        let tok = load(&path);
        let n = tok.encode(&text, false, false).unwrap().len();
        eprintln!("{name}: {} bytes -> {n} tokens", text.len());
        group.bench_function(name, |b| {
            b.iter(|| tok.encode(&text, false, false).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
