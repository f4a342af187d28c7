//! `synth-model`: a model with random weights, quantized like llama-quantize:
//! a LLaMA (`tinyllama-1.1b`, `synth`), a Gemma 3 (`gemma3-1b`,
//! `gemma3-synth`) or a Qwen3-MoE (`qwen3moe-small`, `qwen3moe-synth`), with
//! the metadata and tensor names llama.cpp's loaders (and strata's) read.
//!
//! Weights are uniform with standard deviation 0.02 (norm weights near 1),
//! drawn from a seeded SplitMix64 stream, so a file is reproducible from its
//! preset, type and seed. Matrices are quantized with quant-kernels'
//! reference quantizers (`quantize_row`). `Q4_K_M` follows llama.cpp's
//! `llama_tensor_get_type` for that mix: Q4_K everywhere except `output`
//! (or a tied `token_embd`: Q6_K) and `attn_v`/`ffn_down`(`_exps`) in the
//! layers `use_more_bits` picks (Q6_K); rows that are not whole 256-weight
//! super-blocks fall back as llama-quantize's do (Q4_K → Q5_0, Q6_K → Q8_0);
//! the router (`ffn_gate_inp`) and norms stay F32.

use gguf_format::{GgmlType, GgufWriter, Value};
use rayon::prelude::*;

use crate::take_opt;

/// The architecture a preset writes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Family {
    /// `llama`: pre-norm, SwiGLU.
    Llama,
    /// `gemma3`: q/k norms, post-attention and post-FFN norms, GELU-gated
    /// FFN, sliding-window layers (every 6th global), tied output.
    Gemma3,
    /// `qwen3moe`: q/k norms, a softmax-routed mixture of SwiGLU experts
    /// (stacked 3-D `ffn_{gate,up,down}_exps`).
    Qwen3Moe,
}

/// Shape of a preset model.
struct Preset {
    family: Family,
    n_layer: u32,
    n_embd: u32,
    /// The dense FFN's width (unused by qwen3moe, whose key llama.cpp reads).
    n_ff: u32,
    n_head: u32,
    n_head_kv: u32,
    /// Elements per head (`attention.key_length`/`value_length` where not
    /// `n_embd / n_head`).
    head_dim: u32,
    n_vocab: u32,
    n_ctx: u32,
    rope_base: f32,
    eps: f32,
    /// Gemma 3: the sliding window and the local layers' RoPE base.
    swa: Option<(u32, f32)>,
    /// Qwen3-MoE: experts, experts used per token, expert FFN width.
    experts: Option<(u32, u32, u32)>,
}

const PRESETS: &str =
    "tinyllama-1.1b, synth, gemma3-1b, gemma3-synth, qwen3moe-small, qwen3moe-synth";

fn preset(name: &str) -> Result<Preset, String> {
    let llama = |n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, n_ctx| Preset {
        family: Family::Llama,
        n_layer,
        n_embd,
        n_ff,
        n_head,
        n_head_kv,
        head_dim: n_embd / n_head,
        n_vocab,
        n_ctx,
        rope_base: 10000.0,
        eps: 1e-5,
        swa: None,
        experts: None,
    };
    match name {
        "tinyllama-1.1b" => Ok(llama(22, 2048, 5632, 32, 4, 32000, 2048)),
        // Small enough for tests: every row a multiple of 256.
        "synth" => Ok(llama(2, 256, 512, 4, 2, 384, 512)),
        // Gemma 3 1B: 26 layers, window 512 (every 6th layer global, RoPE
        // bases 1e6 global / 1e4 local), 4 heads of 256, one KV head.
        "gemma3-1b" => Ok(Preset {
            family: Family::Gemma3,
            n_layer: 26,
            n_embd: 1152,
            n_ff: 6912,
            n_head: 4,
            n_head_kv: 1,
            head_dim: 256,
            n_vocab: 262144,
            n_ctx: 32768,
            rope_base: 1_000_000.0,
            eps: 1e-6,
            swa: Some((512, 10000.0)),
            experts: None,
        }),
        "gemma3-synth" => Ok(Preset {
            family: Family::Gemma3,
            n_layer: 6,
            n_embd: 256,
            n_ff: 512,
            n_head: 4,
            n_head_kv: 1,
            head_dim: 64,
            n_vocab: 384,
            n_ctx: 512,
            rope_base: 1_000_000.0,
            eps: 1e-6,
            swa: Some((16, 10000.0)),
            experts: None,
        }),
        // Qwen3-30B-A3B scaled down: heads of 128 (wider than n_embd / n_head,
        // as Qwen3's), 32 experts of width 512, 4 used.
        "qwen3moe-small" => Ok(Preset {
            family: Family::Qwen3Moe,
            n_layer: 16,
            n_embd: 1024,
            n_ff: 3072,
            n_head: 16,
            n_head_kv: 4,
            head_dim: 128,
            n_vocab: 32000,
            n_ctx: 40960,
            rope_base: 1_000_000.0,
            eps: 1e-6,
            swa: None,
            experts: Some((32, 4, 512)),
        }),
        "qwen3moe-synth" => Ok(Preset {
            family: Family::Qwen3Moe,
            n_layer: 2,
            n_embd: 256,
            n_ff: 512,
            n_head: 4,
            n_head_kv: 2,
            head_dim: 64,
            n_vocab: 384,
            n_ctx: 512,
            rope_base: 1_000_000.0,
            eps: 1e-6,
            swa: None,
            experts: Some((8, 2, 256)),
        }),
        other => Err(format!("unknown preset `{other}` ({PRESETS})")),
    }
}

/// llama.cpp's `use_more_bits`: the layers whose attn_v/ffn_down get more bits.
fn use_more_bits(i: u32, n: u32) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64) % 3 == 2
}

/// The type of each matrix for a file type name, and llama.cpp's `general.file_type`.
/// `cols`: the row length (a Q4_K_M K-quant whose rows are not whole
/// super-blocks falls back as llama-quantize's does); `tied`: `token_embd`
/// is also the output; `n_expert`: llama.cpp gives Mixtral's shape (8
/// experts) Q8_0 keys and values and a Q5_K attention output.
fn tensor_type(
    ftype: &str,
    name: &str,
    layer: Option<u32>,
    (n_layer, cols, tied, n_expert): (u32, usize, bool, u32),
) -> Result<(GgmlType, u32), String> {
    if name.ends_with("ffn_gate_inp.weight") {
        return Ok((GgmlType::F32, 0));
    }
    if ftype == "Q4_K_M" {
        let more = layer.is_some_and(|l| use_more_bits(l, n_layer));
        let mixtral = n_expert == 8;
        let ty = if mixtral && (name.ends_with("attn_k.weight") || name.ends_with("attn_v.weight"))
        {
            GgmlType::Q8_0
        } else if mixtral && name.ends_with("attn_output.weight") {
            GgmlType::Q5_K
        } else if name == "output.weight"
            || (tied && name == "token_embd.weight")
            || (more
                && (name.ends_with("attn_v.weight")
                    || name.ends_with("ffn_down.weight")
                    || name.ends_with("ffn_down_exps.weight")))
        {
            GgmlType::Q6_K
        } else {
            GgmlType::Q4_K
        };
        let ty = match ty {
            GgmlType::Q8_0 => ty,
            _ if cols.is_multiple_of(256) => ty,
            GgmlType::Q6_K => GgmlType::Q8_0,
            GgmlType::Q5_K => GgmlType::Q5_1,
            _ => GgmlType::Q5_0,
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
        return Err(format!(
            "usage: synth-model --preset <{}> --type <Q4_K_M|Q8_0|F16|…> [--seed N] OUT.gguf",
            PRESETS.replace(", ", "|")
        ));
    };
    let p = preset(&preset_name)?;
    let started = std::time::Instant::now();
    let (_, file_type) = tensor_type(&ftype, "output.weight", None, (p.n_layer, 256, false, 0))?;
    let arch = match p.family {
        Family::Llama => "llama",
        Family::Gemma3 => "gemma3",
        Family::Qwen3Moe => "qwen3moe",
    };
    let tied = p.family == Family::Gemma3;

    let mut w = GgufWriter::new();
    let e = |r: gguf_format::Result<()>| r.map_err(|e| e.to_string());
    let k = |key: &str| format!("{arch}.{key}");
    e(w.add_metadata("general.architecture", arch))?;
    e(w.add_metadata(
        "general.name",
        format!("synthetic {preset_name} {ftype} (random weights, seed {seed})").as_str(),
    ))?;
    e(w.add_metadata("general.file_type", file_type))?;
    e(w.add_metadata(k("context_length"), p.n_ctx))?;
    e(w.add_metadata(k("embedding_length"), p.n_embd))?;
    e(w.add_metadata(k("block_count"), p.n_layer))?;
    e(w.add_metadata(k("feed_forward_length"), p.n_ff))?;
    e(w.add_metadata(k("rope.dimension_count"), p.head_dim))?;
    e(w.add_metadata(k("attention.head_count"), p.n_head))?;
    e(w.add_metadata(k("attention.head_count_kv"), p.n_head_kv))?;
    if p.head_dim != p.n_embd / p.n_head || p.family == Family::Gemma3 {
        e(w.add_metadata(k("attention.key_length"), p.head_dim))?;
        e(w.add_metadata(k("attention.value_length"), p.head_dim))?;
    }
    e(w.add_metadata(k("attention.layer_norm_rms_epsilon"), p.eps))?;
    e(w.add_metadata(k("rope.freq_base"), p.rope_base))?;
    if let Some((window, base_swa)) = p.swa {
        e(w.add_metadata(k("attention.sliding_window"), window))?;
        e(w.add_metadata(k("rope.freq_base_swa"), base_swa))?;
    }
    if let Some((n_expert, n_used, ff_exp)) = p.experts {
        e(w.add_metadata(k("expert_count"), n_expert))?;
        e(w.add_metadata(k("expert_used_count"), n_used))?;
        e(w.add_metadata(k("expert_feed_forward_length"), ff_exp))?;
    }
    e(w.add_metadata(k("vocab_size"), p.n_vocab))?;
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
    let hd = p.head_dim as usize;
    let (dq, dkv) = (hd * p.n_head as usize, hd * p.n_head_kv as usize);
    let mut stream = 0u64;
    // A matrix of `rows` rows of `cols` (per expert, `n_expert` of them
    // stacked into a 3-D tensor, when given).
    let mut matrix = |w: &mut GgufWriter<'_>,
                      name: String,
                      layer: Option<u32>,
                      (cols, rows, n_expert): (usize, usize, Option<usize>)|
     -> Result<(), String> {
        stream += 1;
        let n_exp = p.experts.map_or(0, |e| e.0);
        let (ty, _) = tensor_type(&ftype, &name, layer, (p.n_layer, cols, tied, n_exp))?;
        let n = n_expert.unwrap_or(1);
        let data = random(seed, stream, n * rows * cols);
        let bytes = quantize(ty, &data, cols)?;
        let mut dims = vec![cols as u64, rows as u64];
        dims.extend(n_expert.map(|n| n as u64));
        w.add_tensor(name, ty, &dims, bytes)
            .map_err(|e| e.to_string())
    };
    // Streams: attn_norm 2l, ffn_norm 2l + 1, output_norm 2^20 (the LLaMA
    // files of earlier versions), the others' from 2^30 on.
    let mut extra_norms = 1u64 << 30;
    let mut norm = |w: &mut GgufWriter<'_>, name: String, n: usize| -> Result<(), String> {
        let stream = match name.as_str() {
            "output_norm.weight" => 1 << 20,
            _ => {
                let layer: Option<u64> = name
                    .strip_prefix("blk.")
                    .and_then(|r| r.split('.').next())
                    .and_then(|l| l.parse().ok());
                match (layer, name.rsplit('.').nth(1)) {
                    (Some(l), Some("attn_norm")) => 2 * l,
                    (Some(l), Some("ffn_norm")) => 2 * l + 1,
                    _ => {
                        extra_norms += 1;
                        extra_norms
                    }
                }
            }
        };
        let data: Vec<u8> = random(seed, 1 << 40 | stream, n)
            .iter()
            .flat_map(|v| (1.0 + 5.0 * v).to_le_bytes())
            .collect();
        w.add_tensor(name, GgmlType::F32, &[n as u64], data)
            .map_err(|e| e.to_string())
    };
    matrix(&mut w, "token_embd.weight".into(), None, (d, nv, None))?;
    for l in 0..p.n_layer {
        let b = |s: &str| format!("blk.{l}.{s}");
        let m = Some(l);
        norm(&mut w, b("attn_norm.weight"), d)?;
        matrix(&mut w, b("attn_q.weight"), m, (d, dq, None))?;
        matrix(&mut w, b("attn_k.weight"), m, (d, dkv, None))?;
        matrix(&mut w, b("attn_v.weight"), m, (d, dkv, None))?;
        if p.family != Family::Llama {
            norm(&mut w, b("attn_q_norm.weight"), hd)?;
            norm(&mut w, b("attn_k_norm.weight"), hd)?;
        }
        matrix(&mut w, b("attn_output.weight"), m, (dq, d, None))?;
        if p.family == Family::Gemma3 {
            norm(&mut w, b("post_attention_norm.weight"), d)?;
        }
        norm(&mut w, b("ffn_norm.weight"), d)?;
        if let Some((n_expert, _, ff_exp)) = p.experts {
            let (ne, fe) = (Some(n_expert as usize), ff_exp as usize);
            matrix(
                &mut w,
                b("ffn_gate_inp.weight"),
                m,
                (d, n_expert as usize, None),
            )?;
            matrix(&mut w, b("ffn_gate_exps.weight"), m, (d, fe, ne))?;
            matrix(&mut w, b("ffn_up_exps.weight"), m, (d, fe, ne))?;
            matrix(&mut w, b("ffn_down_exps.weight"), m, (fe, d, ne))?;
        } else {
            matrix(&mut w, b("ffn_gate.weight"), m, (d, ff, None))?;
            matrix(&mut w, b("ffn_up.weight"), m, (d, ff, None))?;
            matrix(&mut w, b("ffn_down.weight"), m, (ff, d, None))?;
        }
        if p.family == Family::Gemma3 {
            norm(&mut w, b("post_ffw_norm.weight"), d)?;
        }
    }
    norm(&mut w, "output_norm.weight".into(), d)?;
    if !tied {
        matrix(&mut w, "output.weight".into(), None, (d, nv, None))?;
    }
    let bytes = w.write_file(out).map_err(|e| format!("{out}: {e}"))?;
    eprintln!(
        "wrote {out}: {preset_name} {ftype}, {bytes} bytes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
