//! `synth-model`: a LLaMA with random weights, quantized like llama-quantize.
//!
//! Weights are uniform with standard deviation 0.02 (norm weights near 1),
//! drawn from a seeded SplitMix64 stream, so a file is reproducible from its
//! preset, type and seed. Matrices are quantized with quant-kernels'
//! reference quantizers (`quantize_row`). `Q4_K_M` follows llama.cpp's
//! `llama_tensor_get_type` for that mix: Q4_K everywhere except `output`
//! (Q6_K) and `attn_v`/`ffn_down` in the layers `use_more_bits` picks (Q6_K).

use gguf_format::{GgmlType, GgufWriter, Value};
use rayon::prelude::*;

use crate::take_opt;

/// Shape of a preset model.
struct Preset {
    n_layer: u32,
    n_embd: u32,
    n_ff: u32,
    n_head: u32,
    n_head_kv: u32,
    n_vocab: u32,
    n_ctx: u32,
}

fn preset(name: &str) -> Result<Preset, String> {
    match name {
        "tinyllama-1.1b" => Ok(Preset {
            n_layer: 22,
            n_embd: 2048,
            n_ff: 5632,
            n_head: 32,
            n_head_kv: 4,
            n_vocab: 32000,
            n_ctx: 2048,
        }),
        // Small enough for tests: every row a multiple of 256.
        "synth" => Ok(Preset {
            n_layer: 2,
            n_embd: 256,
            n_ff: 512,
            n_head: 4,
            n_head_kv: 2,
            n_vocab: 384,
            n_ctx: 512,
        }),
        other => Err(format!("unknown preset `{other}` (tinyllama-1.1b, synth)")),
    }
}

/// llama.cpp's `use_more_bits`: the layers whose attn_v/ffn_down get more bits.
fn use_more_bits(i: u32, n: u32) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64) % 3 == 2
}

/// The type of each matrix for a file type name, and llama.cpp's `general.file_type`.
fn tensor_type(
    ftype: &str,
    name: &str,
    layer: Option<u32>,
    n_layer: u32,
) -> Result<(GgmlType, u32), String> {
    if ftype == "Q4_K_M" {
        let more = layer.is_some_and(|l| use_more_bits(l, n_layer));
        let ty = if name == "output.weight"
            || (more && (name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight")))
        {
            GgmlType::Q6_K
        } else {
            GgmlType::Q4_K
        };
        return Ok((ty, 15));
    }
    let ty = GgmlType::from_name(ftype).ok_or_else(|| format!("unknown type `{ftype}`"))?;
    if quant_kernels::kernels(ty).is_none_or(|k| k.quantize.is_none()) && ty != GgmlType::F32 {
        return Err(format!("{ty} has no reference quantizer"));
    }
    // llama_ftype values of the single-type files.
    let ft = match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q6_K => 18,
        GgmlType::BF16 => 32,
        _ => 0,
    };
    Ok((ty, ft))
}

/// SplitMix64: a tiny seeded generator (no dependency needed).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `n` values uniform in ±0.02·√3 (std 0.02) from stream `stream` of `seed`.
fn random(seed: u64, stream: u64, n: usize) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut s = seed
                ^ stream.wrapping_mul(0x2545_f491_4f6c_dd1d)
                ^ (c as u64).wrapping_mul(0x9e37_79b9);
            for v in chunk {
                let u = (splitmix(&mut s) >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                *v = (u * 2.0 - 1.0) * 0.034_641;
            }
        });
    out
}

/// Quantizes a `rows × cols` matrix to `ty`, rows in parallel.
fn quantize(ty: GgmlType, data: &[f32], cols: usize) -> Result<Vec<u8>, String> {
    if ty == GgmlType::F32 {
        return Ok(data.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    let row_bytes = quant_kernels::row_bytes(ty, cols)
        .ok_or_else(|| format!("{cols} is not whole {ty} blocks"))?;
    let mut out = vec![0u8; data.len() / cols * row_bytes];
    out.par_chunks_mut(row_bytes * 16)
        .zip(data.par_chunks(cols * 16))
        .try_for_each(|(dst, src)| quant_kernels::quantize_row(ty, src, dst))
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Entry point: parses arguments, builds and writes the file.
pub fn run(args: &[String]) -> Result<(), String> {
    let mut args = args.to_vec();
    let preset_name = take_opt(&mut args, "--preset")?.unwrap_or_else(|| "synth".into());
    let ftype = take_opt(&mut args, "--type")?.unwrap_or_else(|| "Q4_K_M".into());
    let seed: u64 = take_opt(&mut args, "--seed")?
        .map(|s| s.parse().map_err(|_| format!("bad seed `{s}`")))
        .transpose()?
        .unwrap_or(42);
    let [out] = args.as_slice() else {
        return Err("usage: synth-model --preset <tinyllama-1.1b|synth> --type <Q4_K_M|Q8_0|F16|…> [--seed N] OUT.gguf".into());
    };
    let p = preset(&preset_name)?;
    let started = std::time::Instant::now();
    let (_, file_type) = tensor_type(&ftype, "output.weight", None, p.n_layer)?;

    let mut w = GgufWriter::new();
    let e = |r: gguf_format::Result<()>| r.map_err(|e| e.to_string());
    e(w.add_metadata("general.architecture", "llama"))?;
    e(w.add_metadata(
        "general.name",
        format!("synthetic {preset_name} {ftype} (random weights, seed {seed})").as_str(),
    ))?;
    e(w.add_metadata("general.file_type", file_type))?;
    e(w.add_metadata("llama.context_length", p.n_ctx))?;
    e(w.add_metadata("llama.embedding_length", p.n_embd))?;
    e(w.add_metadata("llama.block_count", p.n_layer))?;
    e(w.add_metadata("llama.feed_forward_length", p.n_ff))?;
    e(w.add_metadata("llama.rope.dimension_count", p.n_embd / p.n_head))?;
    e(w.add_metadata("llama.attention.head_count", p.n_head))?;
    e(w.add_metadata("llama.attention.head_count_kv", p.n_head_kv))?;
    e(w.add_metadata("llama.attention.layer_norm_rms_epsilon", 1e-5f32))?;
    e(w.add_metadata("llama.rope.freq_base", 10000.0f32))?;
    e(w.add_metadata("llama.vocab_size", p.n_vocab))?;
    // A SentencePiece-style vocabulary: specials, the 256 byte tokens, filler pieces.
    let tokens: Vec<String> = (0..p.n_vocab)
        .map(|i| match i {
            0 => "<unk>".to_string(),
            1 => "<s>".to_string(),
            2 => "</s>".to_string(),
            3..=258 => format!("<0x{:02X}>", i - 3),
            _ => format!("\u{2581}t{i}"),
        })
        .collect();
    let token_types: Vec<i32> = (0..p.n_vocab as i32)
        .map(|i| match i {
            0 => 2,
            1 | 2 => 3,
            3..=258 => 6,
            _ => 1,
        })
        .collect();
    let scores: Vec<f32> = (0..p.n_vocab).map(|i| -(i as f32)).collect();
    e(w.add_metadata("tokenizer.ggml.model", "llama"))?;
    e(w.add_metadata(
        "tokenizer.ggml.tokens",
        tokens.iter().map(String::as_str).collect::<Vec<_>>(),
    ))?;
    e(w.add_metadata("tokenizer.ggml.scores", Value::from(scores)))?;
    e(w.add_metadata("tokenizer.ggml.token_type", Value::from(token_types)))?;
    e(w.add_metadata("tokenizer.ggml.bos_token_id", 1u32))?;
    e(w.add_metadata("tokenizer.ggml.eos_token_id", 2u32))?;

    let (d, ff, nv) = (p.n_embd as usize, p.n_ff as usize, p.n_vocab as usize);
    let hd = d / p.n_head as usize;
    let dkv = hd * p.n_head_kv as usize;
    let mut stream = 0u64;
    let mut matrix = |w: &mut GgufWriter<'_>,
                      name: String,
                      layer: Option<u32>,
                      cols: usize,
                      rows: usize|
     -> Result<(), String> {
        stream += 1;
        let (ty, _) = tensor_type(&ftype, &name, layer, p.n_layer)?;
        let data = random(seed, stream, rows * cols);
        let bytes = quantize(ty, &data, cols)?;
        w.add_tensor(name, ty, &[cols as u64, rows as u64], bytes)
            .map_err(|e| e.to_string())
    };
    let norm =
        |w: &mut GgufWriter<'_>, name: String, n: usize, stream: u64| -> Result<(), String> {
            let data: Vec<u8> = random(seed, 1 << 40 | stream, n)
                .iter()
                .flat_map(|v| (1.0 + 5.0 * v).to_le_bytes())
                .collect();
            w.add_tensor(name, GgmlType::F32, &[n as u64], data)
                .map_err(|e| e.to_string())
        };
    matrix(&mut w, "token_embd.weight".into(), None, d, nv)?;
    for l in 0..p.n_layer {
        let b = |s: &str| format!("blk.{l}.{s}");
        norm(&mut w, b("attn_norm.weight"), d, 2 * l as u64)?;
        matrix(&mut w, b("attn_q.weight"), Some(l), d, d)?;
        matrix(&mut w, b("attn_k.weight"), Some(l), d, dkv)?;
        matrix(&mut w, b("attn_v.weight"), Some(l), d, dkv)?;
        matrix(&mut w, b("attn_output.weight"), Some(l), d, d)?;
        norm(&mut w, b("ffn_norm.weight"), d, 2 * l as u64 + 1)?;
        matrix(&mut w, b("ffn_gate.weight"), Some(l), d, ff)?;
        matrix(&mut w, b("ffn_up.weight"), Some(l), d, ff)?;
        matrix(&mut w, b("ffn_down.weight"), Some(l), ff, d)?;
    }
    norm(&mut w, "output_norm.weight".into(), d, 1 << 20)?;
    matrix(&mut w, "output.weight".into(), None, d, nv)?;
    let bytes = w.write_file(out).map_err(|e| format!("{out}: {e}"))?;
    eprintln!(
        "wrote {out}: {preset_name} {ftype}, {bytes} bytes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
