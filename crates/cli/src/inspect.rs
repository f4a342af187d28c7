//! `strata inspect [FILE] [--json] [--graph BLOCK]`: a GGUF file's metadata
//! and tensor table, or its model graph.
//!
//! Long arrays (a vocabulary) are summarised as gguf-py's `gguf-dump` does:
//! type, length and the first few elements. Long strings (a chat template)
//! are cut in the text output and kept whole in the JSON.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use gguf_format::{GgufFile, GgufHeader, Value};
use serde_json::json;

use crate::CmdResult;

/// Array elements shown before the summary's `...`.
const SHOWN_ELEMENTS: usize = 6;
/// Characters of a string shown in the text output.
const SHOWN_CHARS: usize = 80;

/// Arguments of `strata inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// The GGUF file, or a registered model name fetched on first use
    /// (smollm2-135m, the default; gemma3-270m); a file that exists wins over a name.
    file: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Print the model graph of one transformer block instead (node names
    /// as llama.cpp's, operation, row width, inputs, weights), or with
    /// `output` the nodes outside the blocks.
    #[arg(long, value_name = "BLOCK")]
    graph: Option<String>,
}

/// Runs `strata inspect`.
pub fn run(args: Args) -> CmdResult {
    let path = crate::common::resolve_model(args.file.as_ref())?;
    if let Some(block) = &args.graph {
        let model = llama_model::Model::load(&path, &llama_model::LoadOptions::default())?;
        let n_layer = model.config().n_layer;
        let layer = match block.as_str() {
            "output" => None,
            n => match n.parse::<usize>() {
                Ok(l) if l < n_layer => Some(l),
                _ => {
                    return Err(crate::common::UsageError(format!(
                        "--graph {n}: not a block of this model (0..{n_layer}) or `output`"
                    ))
                    .into())
                }
            },
        };
        std::io::stdout()
            .lock()
            .write_all(model.graph().describe(layer).as_bytes())?;
        return Ok(());
    }
    let file = GgufFile::open(&path)?;
    let size = file.bytes().len() as u64;
    let out = if args.json {
        let mut s = serde_json::to_string_pretty(&to_json(&path, &file, size))?;
        s.push('\n');
        s
    } else {
        to_text(&path, &file, size)
    };
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}

fn to_text(path: &std::path::Path, h: &GgufHeader, size: u64) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        s,
        "{}: GGUF v{}, {} metadata keys, {} tensors, alignment {}, data at byte {}, {} bytes",
        path.display(),
        h.version,
        h.metadata().len(),
        h.tensors().len(),
        h.alignment,
        h.data_offset,
        size
    );
    let _ = writeln!(s, "\nmetadata:");
    let _ = writeln!(s, "{:>5}  {:<15} {:>8}  key = value", "#", "type", "count");
    for (i, (key, value)) in h.metadata().iter().enumerate() {
        let count = value.as_array().map_or(1, |a| a.len());
        let _ = writeln!(
            s,
            "{:>5}  {:<15} {:>8}  {} = {}",
            i + 1,
            value.type_name(),
            count,
            escaped(key),
            text_value(value)
        );
    }
    let names: Vec<String> = h.tensors().iter().map(|t| escaped(&t.name)).collect();
    let name_width = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let shapes: Vec<String> = h
        .tensors()
        .iter()
        .map(|t| format!("{:?}", t.dims))
        .collect();
    let shape_width = shapes.iter().map(String::len).max().unwrap_or(5).max(5);
    let _ = writeln!(s, "\ntensors:");
    let _ = writeln!(
        s,
        "{:>5}  {:<name_width$}  {:<7}  {:<shape_width$}  {:>12}  {:>12}",
        "#", "name", "type", "shape", "file offset", "bytes"
    );
    for (i, ((t, shape), name)) in h.tensors().iter().zip(&shapes).zip(&names).enumerate() {
        let _ = writeln!(
            s,
            "{:>5}  {:<name_width$}  {:<7}  {:<shape_width$}  {:>12}  {:>12}",
            i + 1,
            name,
            t.ggml_type.name(),
            shape,
            h.data_offset + t.offset,
            t.n_bytes()
        );
    }
    s
}

/// A key or tensor name from the file as it may be printed: control
/// characters (ESC would drive the terminal) and bidirectional overrides
/// (which reorder what is shown) are escaped as `\u{1b}`.
fn escaped(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A value as one line of text: strings quoted (and cut when long),
/// arrays summarised.
fn text_value(v: &Value) -> String {
    match v {
        Value::String(s) => {
            if s.chars().count() <= SHOWN_CHARS {
                format!("{s:?}")
            } else {
                let head: String = s.chars().take(SHOWN_CHARS).collect();
                format!("{head:?}... ({} bytes)", s.len())
            }
        }
        Value::Array(a) => {
            let mut parts: Vec<String> = a
                .iter()
                .take(SHOWN_ELEMENTS)
                .map(|v| text_value(&v))
                .collect();
            if a.len() > SHOWN_ELEMENTS {
                parts.push("...".into());
            }
            format!("[{}]", parts.join(", "))
        }
        Value::F32(x) => format!("{x:?}"),
        Value::F64(x) => format!("{x:?}"),
        Value::Bool(b) => b.to_string(),
        Value::U8(x) => x.to_string(),
        Value::I8(x) => x.to_string(),
        Value::U16(x) => x.to_string(),
        Value::I16(x) => x.to_string(),
        Value::U32(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        Value::U64(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
    }
}

/// A value as JSON; arrays keep only their first elements (the entry says
/// how many there are).
fn json_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Array(a) => a
            .iter()
            .take(SHOWN_ELEMENTS)
            .map(|v| json_value(&v))
            .collect(),
        Value::String(s) => json!(s),
        // Non-finite floats become null: JSON has no NaN.
        Value::F32(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Bool(b) => json!(b),
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
    }
}

fn to_json(path: &std::path::Path, h: &GgufHeader, size: u64) -> serde_json::Value {
    let metadata: Vec<serde_json::Value> = h
        .metadata()
        .iter()
        .map(|(key, value)| {
            let mut entry = json!({
                "key": key,
                "type": value.type_name(),
                "value": json_value(value),
            });
            if let Some(a) = value.as_array() {
                entry["len"] = json!(a.len());
                entry["truncated"] = json!(a.len() > SHOWN_ELEMENTS);
            }
            entry
        })
        .collect();
    let tensors: Vec<serde_json::Value> = h
        .tensors()
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "type": t.ggml_type.name(),
                "shape": t.dims,
                "offset": t.offset,
                "file_offset": h.data_offset + t.offset,
                "bytes": t.n_bytes(),
            })
        })
        .collect();
    json!({
        "file": path.display().to_string(),
        "version": h.version,
        "size": size,
        "alignment": h.alignment,
        "data_offset": h.data_offset,
        "metadata": metadata,
        "tensors": tensors,
    })
}
