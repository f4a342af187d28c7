//! Generate text with the library API (the default model, greedy decoding):
//! `cargo run --release --example generate -- "Your prompt"`.

use std::io::Write as _;
use std::sync::Arc;

use strata::generate::{GenerateOptions, Generator, Prompt, SamplerConfig};
use strata::model::{CpuBackend, LoadOptions, Model, SessionOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "The capital of France is".into());
    let path = strata::cache::default_model()?; // fetched and verified on first use
    let file = Arc::new(strata::gguf::GgufFile::open(&path)?);
    let model = Model::load_with(&file, CpuBackend::new(), &LoadOptions::default())?;
    let tokenizer = strata::tokenizer::Tokenizer::from_gguf(file.header())?;
    let mut generator = Generator::new(model.session(&SessionOptions::default())?, &tokenizer)?;
    let opts = GenerateOptions {
        max_tokens: 32,
        sampler: SamplerConfig::greedy(),
        ..Default::default()
    };
    let done = generator.generate(Prompt::Text(&prompt), &opts, |piece| {
        print!("{piece}");
        let _ = std::io::stdout().flush();
    })?;
    eprintln!("\n{}", done.timings);
    Ok(())
}
