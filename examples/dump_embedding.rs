//! Prints one token's embedding row and its RMS through the library API.
//!
//! ```text
//! cargo run --example dump_embedding -- [MODEL.gguf] [TOKEN_ID]
//! ```
//! Without a model the default model is fetched (first use) and used; the
//! token id defaults to 1.

use std::sync::Arc;

use strata::gguf::GgufFile;
use strata::tensor::{Backend, CpuBackend, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = match args.next() {
        Some(p) => p.into(),
        None => strata::cache::default_model()?,
    };
    let token: u32 = match args.next() {
        Some(t) => t.parse()?,
        None => 1,
    };
    let file = Arc::new(GgufFile::open(&path)?);
    let embd = Tensor::from_gguf(&file, "token_embd.weight")?;
    if token as usize >= embd.n_rows() {
        return Err(format!(
            "token {token} out of range: the vocabulary has {} tokens",
            embd.n_rows()
        )
        .into());
    }
    // Through the backend seam, as the model does it (ggml's get_rows).
    let cpu = CpuBackend::new();
    let table = cpu.load_matrix(&embd)?;
    let mut row = cpu.alloc(embd.row_len())?;
    cpu.get_rows(&table, &[token], &mut row);

    println!(
        "{}: token {token} of {} ({} x {}, {})",
        path.display(),
        embd.n_rows(),
        embd.row_len(),
        embd.n_rows(),
        embd.dtype()
    );
    for (i, chunk) in row.chunks(8).enumerate() {
        let vals: Vec<String> = chunk.iter().map(|v| format!("{v:>10.6}")).collect();
        println!("{:>5}: {}", i * 8, vals.join(" "));
    }
    println!("rms {:.6}", strata::tensor::ops::rms(&row));
    Ok(())
}
