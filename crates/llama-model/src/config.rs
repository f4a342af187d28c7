//! Hyper-parameters read from GGUF metadata.

use gguf_format::{GgufHeader, Value};
use tensor_core::{RopeMode, RopeParams};

use crate::error::{ModelError, Result};

/// The model families this crate runs, each described once as a graph (`src/arch/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `llama`: LLaMA 1/2/3, TinyLlama, SmolLM, Mistral-style models.
    Llama,
    /// `qwen2`: LLaMA layout with Q/K/V biases and NeoX RoPE.
    Qwen2,
    /// `qwen3`: per-head RMSNorm of queries and keys, NeoX RoPE.
    Qwen3,
    /// `qwen3moe`: Qwen3 with a mixture-of-experts feed-forward block.
    Qwen3Moe,
    /// `qwen35`: Qwen3.5's Gated DeltaNet layers and gated full-attention layers.
    Qwen35,
    /// `qwen35moe`: Qwen3.5 with a mixture-of-experts feed-forward block and a shared expert.
    Qwen35Moe,
    /// `gemma2`: GeGLU, post-norms, sliding-window layers, logit soft-capping.
    Gemma2,
    /// `gemma3`: Gemma 2's layout with per-head Q/K norms and local/global layers.
    Gemma3,
    /// `phi3`: fused QKV and gate/up projections, NeoX RoPE.
    Phi3,
    /// `smollm3`: LLaMA layout with RoPE left out of every fourth layer.
    SmolLm3,
    /// `olmo2`: norms after attention and feed-forward, Q/K norms over the whole width.
    Olmo2,
    /// `gpt-oss`: attention sinks, alternating sliding-window layers, YaRN
    /// RoPE, a mixture of experts with biases and SwiGLU-OAI experts.
    GptOss,
}

impl Architecture {
    /// Every architecture, in the order messages list them.
    pub const ALL: [Architecture; 12] = [
        Architecture::Llama,
        Architecture::Qwen2,
        Architecture::Qwen3,
        Architecture::Qwen3Moe,
        Architecture::Qwen35,
        Architecture::Qwen35Moe,
        Architecture::Gemma2,
        Architecture::Gemma3,
        Architecture::Phi3,
        Architecture::SmolLm3,
        Architecture::Olmo2,
        Architecture::GptOss,
    ];

    /// Parses `general.architecture`.
    pub fn from_name(name: &str) -> Result<Architecture> {
        Architecture::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| ModelError::UnknownArchitecture(name.to_string()))
    }

    /// The metadata key prefix (`llama`, `qwen2`, …), as `general.architecture` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Qwen3Moe => "qwen3moe",
            Architecture::Qwen35 => "qwen35",
            Architecture::Qwen35Moe => "qwen35moe",
            Architecture::Gemma2 => "gemma2",
            Architecture::Gemma3 => "gemma3",
            Architecture::Phi3 => "phi3",
            Architecture::SmolLm3 => "smollm3",
            Architecture::Olmo2 => "olmo2",
            Architecture::GptOss => "gpt-oss",
        }
    }

    /// How the architecture pairs dimensions in RoPE (llama.cpp's `llama_model_rope_type`).
    pub fn rope_mode(self) -> RopeMode {
        match self {
            Architecture::Llama | Architecture::SmolLm3 => RopeMode::Normal,
            _ => RopeMode::Neox,
        }
    }
}

/// Overrides applied while loading (llama.cpp's context parameters of the same names).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadOptions {
    /// RoPE base frequency instead of the file's `rope.freq_base`.
    pub rope_freq_base: Option<f32>,
    /// RoPE frequency scale (1 / linear factor) instead of the file's.
    pub rope_freq_scale: Option<f32>,
}

/// A model's hyper-parameters, all read from its metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The architecture.
    pub arch: Architecture,
    /// Transformer blocks (`block_count`).
    pub n_layer: usize,
    /// Width of the residual stream (`embedding_length`).
    pub n_embd: usize,
    /// Hidden width of the feed-forward network (`feed_forward_length`; 0 when absent).
    pub n_ff: usize,
    /// Query heads (`attention.head_count`).
    pub n_head: usize,
    /// Key/value heads (`attention.head_count_kv`; equal to `n_head` when absent).
    pub n_head_kv: usize,
    /// Elements per head (`attention.key_length`; `n_embd / n_head` when absent).
    pub head_dim: usize,
    /// Vocabulary size (`vocab_size`, else the token list's length, else the embedding's rows).
    pub n_vocab: usize,
    /// Context length the model was trained with (`context_length`).
    pub n_ctx_train: usize,
    /// RMSNorm epsilon (`attention.layer_norm_rms_epsilon`).
    pub rms_eps: f32,
    /// Rotary embedding parameters (`rope.*`).
    pub rope: RopeParams,
    /// Factor on `K·Q` (`attention.scale`, else `1/sqrt(head_dim)`).
    pub attn_scale: f32,
}

/// The widest row (`n_embd`, `n_ff`, `n_head × head_dim`) accepted: 2^31
/// values, far beyond any model, so that products of widths with the
/// context or the vocabulary stay far from overflowing.
pub(crate) const MAX_WIDTH: usize = 1 << 31;

/// The most experts a mixture-of-experts layer may have (llama.cpp's
/// `LLAMA_MAX_EXPERTS`): the count sizes per-layer tables before any tensor
/// shape is checked.
pub(crate) const MAX_EXPERTS: usize = 512;

fn uint(h: &GgufHeader, key: &str) -> Result<usize> {
    let v = h.get_uint(key)?;
    usize::try_from(v).map_err(|_| ModelError::InvalidMetadata {
        key: key.to_string(),
        message: format!("{v} does not fit in usize"),
    })
}

fn opt_uint(h: &GgufHeader, key: &str) -> Result<Option<usize>> {
    if h.get(key).is_some() {
        uint(h, key).map(Some)
    } else {
        Ok(None)
    }
}

fn opt_f32(h: &GgufHeader, key: &str) -> Result<Option<f32>> {
    match h.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| ModelError::InvalidMetadata {
                key: key.to_string(),
                message: format!("expected a number, found {}", v.type_name()),
            }),
    }
}

fn invalid(key: String, message: impl Into<String>) -> ModelError {
    ModelError::InvalidMetadata {
        key,
        message: message.into(),
    }
}

/// YaRN's extrapolation mix and magnitude factor as llama.cpp's context
/// sets them (`llama_context`'s constructor, `src/llama-context.cpp`): with
/// YaRN, `ext_factor` 1 and `attn_factor = mscale(s) / (1 + 0.1·ln s)` for
/// the scaling factor `s = 1/freq_scale` (`mscale(s) = 0.1·ln s + 1` above
/// 1), which ggml's own `1 + 0.1·ln s` in the rotation brings back; both
/// times the file's `rope.scaling.attn_factor`. Plain `f32` arithmetic, as
/// llama.cpp's library is compiled without FMA contraction.
fn yarn_factors(yarn: bool, freq_scale: f32, file_attn_factor: f32) -> (f32, f32) {
    if !yarn {
        return (0.0, file_attn_factor);
    }
    let factor = 1.0f32 / freq_scale;
    let mscale = if factor <= 1.0 {
        1.0f32
    } else {
        0.1f32 * 1.0f32 * factor.ln() + 1.0
    };
    let cancel = 1.0f32 / (1.0f32 + 0.1f32 * factor.ln());
    (1.0, mscale * cancel * file_attn_factor)
}

impl Config {
    /// Reads and checks the hyper-parameters of the model in `h`.
    ///
    /// `embd_rows` is the row count of `token_embd.weight`, the fallback for the vocabulary size.
    pub fn from_gguf(h: &GgufHeader, embd_rows: usize, opts: &LoadOptions) -> Result<Config> {
        let arch = Architecture::from_name(h.get_str("general.architecture")?)?;
        let a = arch.name();
        let k = |s: &str| format!("{a}.{s}");

        let n_layer = uint(h, &k("block_count"))?;
        let n_embd = uint(h, &k("embedding_length"))?;
        // Mixture-of-experts models may give only the experts' width.
        let n_ff = opt_uint(h, &k("feed_forward_length"))?.unwrap_or(0);
        let n_head = uint(h, &k("attention.head_count"))?;
        let n_head_kv = opt_uint(h, &k("attention.head_count_kv"))?.unwrap_or(n_head);
        if n_layer == 0 || n_embd == 0 {
            return Err(invalid(
                k("block_count"),
                "layer count and widths must be positive",
            ));
        }
        for (w, key) in [(n_embd, "embedding_length"), (n_ff, "feed_forward_length")] {
            if w > MAX_WIDTH {
                return Err(invalid(k(key), format!("width {w} exceeds {MAX_WIDTH}")));
            }
        }
        // Every layer has tensors of its own: a count beyond the file's
        // tensors is a hostile or broken file, and sizes tables by layer.
        if n_layer > h.tensors().len() {
            return Err(invalid(
                k("block_count"),
                format!(
                    "{n_layer} layers, but the file has only {} tensors (each layer needs its own)",
                    h.tensors().len()
                ),
            ));
        }
        if n_head == 0 {
            return Err(invalid(
                k("attention.head_count"),
                "0 query heads: the head count must be positive",
            ));
        }
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(invalid(
                k("attention.head_count_kv"),
                format!("{n_head_kv} KV heads must be positive and divide {n_head} query heads"),
            ));
        }
        let head_dim = match opt_uint(h, &k("attention.key_length"))? {
            Some(d) => d,
            None => {
                if n_embd % n_head != 0 {
                    return Err(invalid(
                        k("attention.head_count"),
                        format!("{n_head} heads do not divide the width {n_embd}"),
                    ));
                }
                n_embd / n_head
            }
        };
        if let Some(dv) = opt_uint(h, &k("attention.value_length"))? {
            if dv != head_dim {
                return Err(ModelError::Unsupported(format!(
                    "value head size {dv} differs from key head size {head_dim}"
                )));
            }
        }
        if head_dim == 0 {
            return Err(invalid(
                k("attention.key_length"),
                "head size must be positive",
            ));
        }
        // Widths are multiplied everywhere (n_head × head_dim, and by the
        // context for the KV cache): a product that wraps would pass the
        // tensor shape checks and fail far from here.
        for (heads, key) in [
            (n_head, "attention.head_count"),
            (n_head_kv, "attention.head_count_kv"),
        ] {
            if heads.checked_mul(head_dim).is_none_or(|w| w > MAX_WIDTH) {
                return Err(invalid(
                    k(key),
                    format!(
                        "{heads} heads × head size {head_dim} is more than {MAX_WIDTH} values per row"
                    ),
                ));
            }
        }

        let n_rot = opt_uint(h, &k("rope.dimension_count"))?.unwrap_or(head_dim);
        if n_rot > head_dim || n_rot % 2 != 0 || n_rot == 0 {
            return Err(invalid(
                k("rope.dimension_count"),
                format!("{n_rot} rotated dimensions must be even, positive and at most the head size {head_dim}"),
            ));
        }
        let n_tokens = match h.get("tokenizer.ggml.tokens") {
            Some(Value::Array(t)) => Some(t.len()),
            _ => None,
        };
        let n_vocab = match opt_uint(h, &k("vocab_size"))? {
            Some(v) => v,
            None => n_tokens.unwrap_or(embd_rows),
        };
        // The tokenizer and the model must agree (llama.cpp sizes the
        // embedding by the token list): a longer list makes ids the model
        // has no row for, a shorter one ids the tokenizer cannot decode.
        if let Some(n) = n_tokens.filter(|&n| n != n_vocab) {
            return Err(invalid(
                "tokenizer.ggml.tokens".to_string(),
                format!("{n} tokens, but the model's vocabulary has {n_vocab} (rows of token_embd.weight)"),
            ));
        }
        if n_vocab != embd_rows {
            return Err(invalid(
                k("vocab_size"),
                format!(
                    "vocabulary of {n_vocab} tokens, but token_embd.weight has {embd_rows} rows"
                ),
            ));
        }
        let n_ctx_train = uint(h, &k("context_length"))?;
        if n_ctx_train == 0 {
            return Err(invalid(
                k("context_length"),
                "0 positions: the training context must be positive",
            ));
        }
        let rms_eps = h.get_f32(&k("attention.layer_norm_rms_epsilon"))?;
        if !(rms_eps >= 0.0 && rms_eps.is_finite()) {
            return Err(invalid(
                k("attention.layer_norm_rms_epsilon"),
                format!("{rms_eps} is not a valid epsilon"),
            ));
        }

        let freq_base = match opts.rope_freq_base {
            Some(b) => b,
            None => opt_f32(h, &k("rope.freq_base"))?.unwrap_or(10000.0),
        };
        if !(freq_base > 0.0 && freq_base.is_finite()) {
            return Err(invalid(
                k("rope.freq_base"),
                format!("{freq_base} is not a valid base"),
            ));
        }
        // llama.cpp: rope.scaling.type defaults to linear; the factor comes
        // from rope.scaling.factor or the older rope.scale_linear.
        let scaling_type = match h.get(&k("rope.scaling.type")) {
            Some(_) => h.get_str(&k("rope.scaling.type"))?.to_string(),
            None => "linear".to_string(),
        };
        let factor = match opt_f32(h, &k("rope.scaling.factor"))? {
            Some(f) => f,
            None => opt_f32(h, &k("rope.scale_linear"))?.unwrap_or(0.0),
        };
        let yarn = match scaling_type.as_str() {
            "none" | "linear" => false,
            "yarn" => true,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "RoPE scaling type `{other}` ({})",
                    k("rope.scaling.type")
                )))
            }
        };
        let freq_scale = match opts.rope_freq_scale {
            Some(s) => s,
            // llama.cpp never scales with the type `none`.
            None if factor == 0.0 || scaling_type == "none" => 1.0,
            None => 1.0 / factor,
        };
        if !(freq_scale > 0.0 && freq_scale.is_finite()) {
            return Err(invalid(
                k("rope.scaling.factor"),
                format!("{factor} is not a valid scaling factor"),
            ));
        }
        let mut rope = RopeParams::new(arch.rope_mode(), head_dim, n_rot, freq_base);
        rope.freq_scale = freq_scale;
        rope.n_ctx_orig = match opt_uint(h, &k("rope.scaling.original_context_length"))? {
            Some(0) => {
                return Err(invalid(
                    k("rope.scaling.original_context_length"),
                    "0 positions: the original context must be positive",
                ))
            }
            Some(n) => n,
            None => n_ctx_train,
        };
        let attn_factor = opt_f32(h, &k("rope.scaling.attn_factor"))?.unwrap_or(1.0);
        if !(attn_factor > 0.0 && attn_factor.is_finite()) {
            return Err(invalid(
                k("rope.scaling.attn_factor"),
                format!("{attn_factor} is not a valid factor"),
            ));
        }
        (rope.ext_factor, rope.attn_factor) = yarn_factors(yarn, freq_scale, attn_factor);

        let attn_scale = match opt_f32(h, &k("attention.scale"))? {
            Some(s) if !s.is_finite() => {
                return Err(invalid(
                    k("attention.scale"),
                    format!("{s} is not a valid scale"),
                ))
            }
            Some(s) if s != 0.0 => s,
            _ => 1.0 / (head_dim as f32).sqrt(),
        };
        // Keys other architectures' graphs read, checked here so that a bad
        // value is a load error naming the key, not NaN logits or an
        // allocation sized by it.
        if let Some(b) = opt_f32(h, &k("rope.freq_base_swa"))? {
            if !(b > 0.0 && b.is_finite()) {
                return Err(invalid(
                    k("rope.freq_base_swa"),
                    format!("{b} is not a valid base"),
                ));
            }
        }
        if arch == Architecture::Gemma2 && opt_uint(h, &k("attention.sliding_window"))? == Some(0) {
            return Err(invalid(
                k("attention.sliding_window"),
                "a window of 0 positions masks every key",
            ));
        }
        if let Some(n) = opt_uint(h, &k("expert_count"))? {
            if n > MAX_EXPERTS {
                return Err(invalid(
                    k("expert_count"),
                    format!("{n} experts exceeds the limit of {MAX_EXPERTS}"),
                ));
            }
        }

        Ok(Config {
            arch,
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab,
            n_ctx_train,
            rms_eps,
            rope,
            attn_scale,
        })
    }

    /// Width of all query heads together (`n_head * head_dim`).
    pub fn q_width(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of all key (or value) heads together (`n_head_kv * head_dim`).
    pub fn kv_width(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Bytes of a KV cache of `n_ctx` positions with `bytes_per_value`-byte
    /// elements (2 for f16) over every layer: keys and values. `None` if the
    /// size overflows.
    pub fn kv_cache_bytes(&self, n_ctx: usize, bytes_per_value: usize) -> Option<u64> {
        (self.kv_width() as u64)
            .checked_mul(n_ctx as u64)?
            .checked_mul(self.n_layer as u64)?
            .checked_mul(2 * bytes_per_value as u64)
    }

    /// Bytes of `n_rows` rows of f32 logits. `None` if the size overflows.
    pub fn logits_bytes(&self, n_rows: usize) -> Option<u64> {
        (self.n_vocab as u64)
            .checked_mul(n_rows as u64)?
            .checked_mul(4)
    }
}
