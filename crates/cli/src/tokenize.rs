//! `strata tokenize [--model M] TEXT [--json] [--no-special] [--no-bos]`: the
//! token ids and pieces of a text, as llama.cpp's tokenizer gives them.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;

use gguf_format::GgufFile;
use tokenizer::Tokenizer;

use crate::CmdResult;

/// Arguments of `strata tokenize`.
#[derive(clap::Args)]
pub struct Args {
    /// The text to tokenize (`-` reads standard input).
    text: String,
    /// The GGUF file whose vocabulary to use, or a registered model name
    /// (smollm2-135m, gemma3-270m); the default model if omitted.
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// Print one JSON object instead of one `id<TAB>piece` line per token.
    #[arg(long)]
    json: bool,
    /// Treat special-token text (`<|im_start|>`) as plain text.
    #[arg(long)]
    no_special: bool,
    /// Do not add BOS/EOS even where the model asks for them.
    #[arg(long)]
    no_bos: bool,
}

/// Runs `strata tokenize`.
pub fn run(args: Args) -> CmdResult {
    let path = crate::common::resolve_model(args.model.as_ref())?;
    let file = GgufFile::open(&path)?;
    let tok = Tokenizer::from_gguf(file.header())?;
    let text = if args.text == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        args.text
    };
    let ids = tok.encode(&text, !args.no_bos, !args.no_special)?;
    let piece = |id: u32| String::from_utf8_lossy(tok.piece(id)).into_owned();
    // Streamed: a value tree of every token took over a kilobyte a token.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        // The layout of serde_json's pretty printer, one token at a time.
        write!(out, "{{\n  \"count\": {},\n  \"tokens\": [", ids.len())?;
        for (i, &id) in ids.iter().enumerate() {
            let sep = if i == 0 { "\n" } else { ",\n" };
            let p = serde_json::to_string(&piece(id))?;
            write!(
                out,
                "{sep}    {{\n      \"id\": {id},\n      \"piece\": {p}\n    }}"
            )?;
        }
        let close = if ids.is_empty() { "]" } else { "\n  ]" };
        writeln!(out, "{close}\n}}")?;
    } else {
        for &id in &ids {
            // Debug formatting makes spaces and newlines in pieces visible.
            writeln!(out, "{id}\t{:?}", piece(id))?;
        }
    }
    out.flush()?;
    Ok(())
}
