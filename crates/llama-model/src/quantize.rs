//! Quantizing a whole model file into one of llama.cpp's file types, with the
//! same per-tensor type choices as `llama-quantize`.
//!
//! A file type (`Q4_K_M`, `Q8_0`, …) is not one tensor type: llama.cpp gives
//! the tensors most sensitive to quantization more bits (`attn_v` and
//! `ffn_down` in some layers of the `_M` mixes, the output matrix almost
//! always `Q6_K`), keeps 1-D tensors (norms) in `F32`, and falls back to a
//! 32-block type when a row is not a multiple of 256 (SmolLM2's 576-wide
//! rows). This module ports that logic — `llama_tensor_get_type_impl`,
//! `tensor_allows_quantization`, `tensor_type_fallback` and the driver
//! `llama_model_quantize_impl` of llama.cpp's `src/llama-quant.cpp` (as
//! vendored in llama-cpp-python 0.3.36) — so that quantizing an `F32` file
//! gives llama.cpp's file byte for byte: same metadata order, same tensor
//! order, same types, same bytes (the block quantizers are quant-kernels'
//! ports of ggml's, without an importance matrix).
//!
//! It lives in llama-model rather than quant-kernels because the choices
//! depend on what a tensor *is* (its name, its layer, the model's
//! grouped-query factor), which is model knowledge.
//!
//! ```no_run
//! use llama_model::quantize::{quantize_model, FileType};
//!
//! let input = gguf_format::GgufFile::open("model-F32.gguf")?;
//! let ftype: FileType = "Q4_K_M".parse()?;
//! let output = quantize_model(&input, ftype, |p| eprintln!("{} -> {}", p.name, p.to))?;
//! output.write_file("model-Q4_K_M.gguf")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::str::FromStr;

use gguf_format::{GgmlType, Gguf, GgufHeader, GgufWriter, TensorInfo, Value};
use rayon::prelude::*;

use crate::error::{ModelError, Result};

/// ggml's `GGML_QNT_VERSION`, written as `general.quantization_version`.
pub const QUANTIZATION_VERSION: u32 = 2;

macro_rules! file_types {
    ($( $(#[$doc:meta])* $variant:ident = $id:literal, $name:literal, $default:ident; )*) => {
        /// A llama.cpp file type (`llama_ftype`): the mix of tensor types a
        /// quantized file is made of. Its number is what llama.cpp writes as
        /// `general.file_type`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        #[non_exhaustive]
        pub enum FileType {
            $( $(#[$doc])* $variant, )*
        }

        impl FileType {
            /// Every file type this module can produce, in llama.cpp's order.
            pub const ALL: &'static [FileType] = &[$(FileType::$variant),*];

            /// llama.cpp's number for it (`LLAMA_FTYPE_*`), the value of `general.file_type`.
            pub fn id(self) -> u32 {
                match self { $(FileType::$variant => $id,)* }
            }

            /// The name `llama-quantize` takes (`Q4_K_M`).
            pub fn name(self) -> &'static str {
                match self { $(FileType::$variant => $name,)* }
            }

            /// The tensor type most tensors get (`llama_ftype_get_default_type`).
            pub fn default_type(self) -> GgmlType {
                match self { $(FileType::$variant => GgmlType::$default,)* }
            }
        }
    };
}

file_types! {
    /// Everything `F32` (`ALL_F32`).
    F32 = 0, "F32", F32;
    /// 2-D weights `F16`.
    F16 = 1, "F16", F16;
    /// `Q4_0`, output `Q6_K`.
    Q4_0 = 2, "Q4_0", Q4_0;
    /// `Q4_1`, output `Q6_K`.
    Q4_1 = 3, "Q4_1", Q4_1;
    /// `Q8_0` throughout.
    Q8_0 = 7, "Q8_0", Q8_0;
    /// `Q5_0`, output `Q6_K`.
    Q5_0 = 8, "Q5_0", Q5_0;
    /// `Q5_1`, output `Q6_K`.
    Q5_1 = 9, "Q5_1", Q5_1;
    /// `Q2_K` with `Q3_K` (or `Q4_K`) for `attn_v`, `ffn_down`, `attn_output`.
    Q2_K = 10, "Q2_K", Q2_K;
    /// `Q3_K` throughout (small).
    Q3_K_S = 11, "Q3_K_S", Q3_K;
    /// `Q3_K` with `Q4_K`/`Q5_K` for the sensitive tensors (medium).
    Q3_K_M = 12, "Q3_K_M", Q3_K;
    /// `Q3_K` with `Q5_K` for the sensitive tensors (large).
    Q3_K_L = 13, "Q3_K_L", Q3_K;
    /// `Q4_K` with `Q5_K` for the first `attn_v`s and `ffn_down`s (small).
    Q4_K_S = 14, "Q4_K_S", Q4_K;
    /// `Q4_K` with `Q6_K` for half of `attn_v` and `ffn_down` (medium).
    Q4_K_M = 15, "Q4_K_M", Q4_K;
    /// `Q5_K` throughout (small).
    Q5_K_S = 16, "Q5_K_S", Q5_K;
    /// `Q5_K` with `Q6_K` for half of `attn_v` and `ffn_down` (medium).
    Q5_K_M = 17, "Q5_K_M", Q5_K;
    /// `Q6_K` throughout.
    Q6_K = 18, "Q6_K", Q6_K;
    /// `IQ4_NL` (32-element blocks, non-linear levels), output `Q6_K`.
    IQ4_NL = 25, "IQ4_NL", IQ4_NL;
    /// `IQ4_XS` (256-element super-blocks of `IQ4_NL` levels), output `Q6_K`.
    IQ4_XS = 30, "IQ4_XS", IQ4_XS;
    /// 2-D weights `BF16`.
    BF16 = 32, "BF16", BF16;
    /// Experts (3-D tensors) `MXFP4`, every other matrix `Q8_0` (gpt-oss's releases).
    MXFP4_MOE = 38, "MXFP4_MOE", MXFP4;
    /// `Q1_0` (signs and a mean magnitude per 128 weights), output `Q6_K`.
    Q1_0 = 40, "Q1_0", Q1_0;
    /// `Q2_0` (2-bit levels per 64 weights), token embeddings `Q4_K`, output `Q6_K`.
    Q2_0 = 41, "Q2_0", Q2_0;
}

impl FileType {
    /// The file type with llama.cpp's number `id`, if this module produces it.
    pub fn from_id(id: u32) -> Option<FileType> {
        FileType::ALL.iter().copied().find(|f| f.id() == id)
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FileType {
    type Err = ModelError;

    /// Parses a name as `llama-quantize` takes it, in any case (`q4_k_m`).
    fn from_str(s: &str) -> Result<FileType> {
        FileType::ALL
            .iter()
            .copied()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = FileType::ALL.iter().map(|f| f.name()).collect();
                ModelError::InvalidRequest(format!(
                    "unknown file type `{s}` (known: {})",
                    names.join(", ")
                ))
            })
    }
}

/// What a tensor is, for the type choice (llama.cpp's `tensor_category`):
/// broad roles found from the name, whatever the architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    TokenEmbd,
    AttnQ,
    AttnV,
    AttnK,
    AttnQkv,
    AttnKvB,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

impl Role {
    /// `tensor_get_category`: first match wins, in llama.cpp's order.
    fn of(name: &str) -> Role {
        if name == "output.weight" {
            return Role::Output;
        }
        if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            return Role::TokenEmbd;
        }
        const BY_SUBSTRING: [(&str, Role); 9] = [
            ("attn_qkv.weight", Role::AttnQkv),
            ("attn_kv_b.weight", Role::AttnKvB),
            ("attn_v.weight", Role::AttnV),
            ("attn_k.weight", Role::AttnK),
            ("attn_q.weight", Role::AttnQ),
            ("attn_output.weight", Role::AttnOutput),
            ("ffn_up", Role::FfnUp),
            ("ffn_gate", Role::FfnGate),
            ("ffn_down", Role::FfnDown),
        ];
        BY_SUBSTRING
            .iter()
            .find(|(s, _)| name.contains(s))
            .map_or(Role::Other, |&(_, r)| r)
    }

    /// `category_is_attn_v`: the value projections, more sensitive to quantization.
    fn is_attn_v(self) -> bool {
        matches!(self, Role::AttnV | Role::AttnQkv | Role::AttnKvB)
    }
}

/// The hyper-parameters the type choice depends on.
#[derive(Clone, Debug)]
struct Hparams {
    arch: String,
    n_layer: usize,
    /// `n_head / n_head_kv` of layer 0 (0 when `n_head_kv` is 0), llama.cpp's `n_gqa()`.
    n_gqa: u64,
    n_expert: u64,
    /// llama.cpp's `LLM_TYPE_70B`: its `attn_v` gets more bits.
    is_70b: bool,
}

/// A metadata value as an unsigned integer; per-layer arrays give their first element.
fn uint_value(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(u64::from(*x)),
        Value::U16(x) => Some(u64::from(*x)),
        Value::U32(x) => Some(u64::from(*x)),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        Value::Array(a) => a.get(0).as_ref().and_then(uint_value),
        _ => None,
    }
}

impl Hparams {
    fn from_header(h: &GgufHeader) -> Result<Hparams> {
        let arch = h.get_str("general.architecture")?.to_string();
        let uint = |key: &str| -> Result<Option<u64>> {
            let key = format!("{arch}.{key}");
            match h.get(&key) {
                None => Ok(None),
                Some(v) => uint_value(v)
                    .map(Some)
                    .ok_or_else(|| ModelError::InvalidMetadata {
                        key,
                        message: "expected an unsigned integer".into(),
                    }),
            }
        };
        let n_layer = uint("block_count")?.ok_or_else(|| ModelError::InvalidMetadata {
            key: format!("{arch}.block_count"),
            message: "missing".into(),
        })?;
        let n_layer = usize::try_from(n_layer).map_err(|_| ModelError::InvalidMetadata {
            key: format!("{arch}.block_count"),
            message: format!("{n_layer} is too large"),
        })?;
        let n_head = uint("attention.head_count")?.unwrap_or(0);
        let n_head_kv = uint("attention.head_count_kv")?.unwrap_or(n_head);
        let n_expert = uint("expert_count")?.unwrap_or(0);
        // llama.cpp's n_gqa(): 0 when there are no KV heads.
        let n_gqa = n_head.checked_div(n_head_kv).unwrap_or(0);
        // Where llama.cpp's loaders set LLM_TYPE_70B (src/models/*.cpp).
        let is_70b = match arch.as_str() {
            "llama" => n_layer == 80 && n_head != n_head_kv,
            "qwen2" | "deci" | "olmo" => n_layer == 80,
            "jais2" => n_layer == 68,
            _ => false,
        };
        Ok(Hparams {
            arch,
            n_layer,
            n_gqa,
            n_expert,
            is_70b,
        })
    }
}

/// ggml's `ggml_n_dims`: dimensions up to the last one that is not 1.
fn n_dims(dims: &[u64]) -> usize {
    dims.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1)
}

/// `tensor_allows_quantization` (with llama.cpp's default parameters:
/// the output tensor is quantized, nothing is only copied).
fn allows_quantization(arch: &str, t: &TensorInfo) -> bool {
    if n_dims(&t.dims) < 2 {
        return false;
    }
    let name = t.name.as_str();
    // Tensors llama.cpp keeps as they are: norms, expert routers, small or
    // positional tables, RWKV's and multimodal towers' small matrices.
    const KEEP: &[&str] = &[
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ];
    const KEEP_GLM5_NEXT: &[&str] = &[
        "hc_",
        "indexer.attn_q_b",
        "indexer.attn_k",
        "indexer.proj",
        "indexer_compressor_gate",
        "indexer_compressor_ape",
        "ssm_f_a.weight",
        "ssm_f_b.weight",
        "ssm_g_a.weight",
        "ssm_g_b.weight",
        "ssm_beta.weight",
        "attn_kv_a_mqa.weight",
        "attn_k_b.weight",
        "attn_v_b.weight",
    ];
    name.ends_with("weight")
        && name != "position_embd.weight"
        && name != "token_types.weight"
        && !KEEP.iter().any(|k| name.contains(k))
        && !(arch == "glm5-next" && KEEP_GLM5_NEXT.iter().any(|k| name.contains(k)))
}

/// The order llama.cpp's model loader keeps tensors in (`weight_name_comparer`):
/// tensors outside blocks first, then block by block, by name within each.
fn loader_order(a: &str, b: &str) -> std::cmp::Ordering {
    // `sscanf(name, "blk.%d.", &layer)`: the number after `blk.`, else -1.
    fn layer(name: &str) -> i64 {
        let Some(rest) = name.strip_prefix("blk.") else {
            return -1;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        rest[..digits].parse().unwrap_or(-1)
    }
    layer(a).cmp(&layer(b)).then_with(|| a.cmp(b))
}

/// The choice made for one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorChoice {
    /// The tensor's name.
    pub name: String,
    /// Its shape (ggml's `ne`, innermost first).
    pub dims: Vec<u64>,
    /// Its type in the input file.
    pub from: GgmlType,
    /// Its type in the output file.
    pub to: GgmlType,
    /// The type the mix asked for when the row length did not fit it and
    /// [`to`](Self::to) is llama.cpp's fallback (`Q4_K` → `Q5_0`, …).
    pub fell_back_from: Option<GgmlType>,
}

/// llama.cpp's `quantize_state_impl`: counters that walk through the layers
/// as tensors are visited, so that "the first eighth of `ffn_down`s" can be told.
struct Chooser<'a> {
    hp: &'a Hparams,
    ftype: FileType,
    has_tied_embeddings: bool,
    n_attention_wv: usize,
    i_attention_wv: usize,
    i_ffn_down: usize,
    i_ffn_gate: usize,
    i_ffn_up: usize,
}

/// `use_more_bits`: the first and last eighths of the layers and every third one between.
fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    let (i, n) = (i_layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

impl Chooser<'_> {
    /// The layer of a per-layer tensor: the running counter, or for
    /// mixture-of-experts models (whose tensors are not in layer order)
    /// the number in the name, as llama.cpp's `layer_info`.
    fn layer_info(&self, counter: usize, name: &str) -> Result<(usize, usize)> {
        let n_layer = self.hp.n_layer;
        if self.hp.n_expert > 1 {
            let layer = name
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    ModelError::InvalidRequest(format!(
                        "tensor `{name}`: cannot determine its layer"
                    ))
                })?;
            if layer >= n_layer {
                return Err(ModelError::InvalidRequest(format!(
                    "tensor `{name}`: layer {layer} is not in [0, {n_layer})"
                )));
            }
            return Ok((layer, n_layer));
        }
        Ok((counter, n_layer))
    }

    /// `llama_tensor_get_type_impl` for the file types of [`FileType`]
    /// (the IQ1/IQ2/IQ3 branches need an importance matrix and are not
    /// produced).
    fn mix_type(&mut self, t: &TensorInfo, role: Role, mut ty: GgmlType) -> Result<GgmlType> {
        use FileType as F;
        use GgmlType as G;
        let ft = self.ftype;
        let hp = self.hp;
        let falcon = hp.arch == "falcon";
        if role == Role::Output || (self.has_tied_embeddings && role == Role::TokenEmbd) {
            let nx = t.dims[0];
            if ft == F::MXFP4_MOE || falcon || !nx.is_multiple_of(ty.block_size() as u64) {
                ty = G::Q8_0;
            } else if ty != G::Q8_0 {
                ty = G::Q6_K;
            }
        } else if ft == F::MXFP4_MOE {
            // Experts MXFP4, everything else Q8_0, before any other rule.
            ty = if t.dims.get(2).is_some_and(|&n| n > 1) {
                G::MXFP4
            } else {
                G::Q8_0
            };
        } else if role == Role::TokenEmbd {
            // Of the mixes here only Q2_0 changes untied embeddings (as the
            // IQ1/IQ2/IQ3/TQ mixes do).
            if ft == F::Q2_0 {
                ty = G::Q4_K;
            }
        } else if role.is_attn_v() {
            let gqa4 = hp.n_gqa >= 4;
            ty = match ft {
                F::Q2_K => {
                    if gqa4 {
                        G::Q4_K
                    } else {
                        G::Q3_K
                    }
                }
                F::Q3_K_M => {
                    if self.i_attention_wv < 2 {
                        G::Q5_K
                    } else {
                        G::Q4_K
                    }
                }
                F::Q3_K_L => G::Q5_K,
                F::IQ4_NL | F::IQ4_XS if gqa4 => G::Q5_K,
                F::Q4_K_M | F::Q5_K_M
                    if use_more_bits(self.i_attention_wv, self.n_attention_wv) =>
                {
                    G::Q6_K
                }
                F::Q4_K_S if self.i_attention_wv < 4 => G::Q5_K,
                _ => ty,
            };
            if hp.is_70b && (ty == G::Q3_K || ty == G::Q4_K) {
                // 8 heads share each attn_v row in the 70B model: more bits cost little.
                ty = G::Q5_K;
            }
            if hp.n_expert == 8 {
                ty = G::Q8_0;
            }
            self.i_attention_wv += 1;
        } else if role == Role::AttnK {
            if hp.n_expert == 8 {
                ty = G::Q8_0;
            }
        } else if role == Role::AttnQ {
            // Only the IQ3 mixes change it.
        } else if role == Role::FfnDown {
            let (i_layer, n_layer) = self.layer_info(self.i_ffn_down, &t.name)?;
            match ft {
                F::Q2_K => ty = G::Q3_K,
                F::Q3_K_M => {
                    ty = if i_layer < n_layer / 16 {
                        G::Q5_K
                    } else if !falcon || use_more_bits(i_layer, n_layer) {
                        G::Q4_K
                    } else {
                        G::Q3_K
                    }
                }
                F::Q3_K_L => ty = if falcon { G::Q4_K } else { G::Q5_K },
                F::Q4_K_M => {
                    if falcon {
                        ty = if i_layer < n_layer / 16 {
                            G::Q6_K
                        } else if use_more_bits(i_layer, n_layer) {
                            G::Q5_K
                        } else {
                            G::Q4_K
                        };
                    } else if use_more_bits(i_layer, n_layer) {
                        ty = G::Q6_K;
                    }
                }
                // No importance matrix here.
                F::IQ4_NL | F::IQ4_XS if i_layer < n_layer / 8 => ty = G::Q5_K,
                F::Q5_K_M if use_more_bits(i_layer, n_layer) => ty = G::Q6_K,
                F::Q4_K_S if !falcon && i_layer < n_layer / 8 => ty = G::Q5_K,
                _ => {}
            }
            self.i_ffn_down += 1;
        } else if role == Role::AttnOutput {
            if !falcon {
                if hp.n_expert == 8 {
                    if matches!(
                        ft,
                        F::Q2_K
                            | F::Q3_K_S
                            | F::Q3_K_M
                            | F::IQ4_NL
                            | F::Q4_K_S
                            | F::Q4_K_M
                            | F::IQ4_XS
                    ) {
                        ty = G::Q5_K;
                    }
                } else {
                    match ft {
                        F::Q2_K => ty = G::Q3_K,
                        F::Q3_K_M => ty = G::Q4_K,
                        F::Q3_K_L => ty = G::Q5_K,
                        _ => {}
                    }
                }
            } else if ft == F::Q3_K_L {
                ty = G::Q4_K;
            }
        } else if role == Role::AttnQkv {
            match ft {
                F::Q3_K_M | F::Q3_K_L => ty = G::Q4_K,
                F::Q4_K_M => ty = G::Q5_K,
                F::Q5_K_M => ty = G::Q6_K,
                _ => {}
            }
        } else if role == Role::FfnGate {
            // Only IQ3_XS changes it; the counter still walks the layers.
            self.layer_info(self.i_ffn_gate, &t.name)?;
            self.i_ffn_gate += 1;
        } else if role == Role::FfnUp {
            self.layer_info(self.i_ffn_up, &t.name)?;
            self.i_ffn_up += 1;
        }
        Ok(ty)
    }

    /// `llama_tensor_get_type` with default parameters (no overrides, not pure).
    fn choose(&mut self, t: &TensorInfo) -> Result<TensorChoice> {
        let mut choice = TensorChoice {
            name: t.name.clone(),
            dims: t.dims.clone(),
            from: t.ggml_type,
            to: t.ggml_type,
            fell_back_from: None,
        };
        if !allows_quantization(&self.hp.arch, t) {
            return Ok(choice);
        }
        let default = self.ftype.default_type();
        if !default.is_quantized() {
            choice.to = default;
            return Ok(choice);
        }
        let wanted = self.mix_type(t, Role::of(&t.name), default)?;
        choice.to = fallback(t, wanted)?;
        if choice.to != wanted {
            choice.fell_back_from = Some(wanted);
        }
        Ok(choice)
    }
}

/// `tensor_type_fallback`: a type whose blocks fit the row length.
fn fallback(t: &TensorInfo, wanted: GgmlType) -> Result<GgmlType> {
    use GgmlType as G;
    let ncols = t.dims[0];
    let block = wanted.block_size() as u64;
    if ncols.is_multiple_of(block) {
        return Ok(wanted);
    }
    let ty = match wanted {
        G::IQ1_S
        | G::IQ1_M
        | G::IQ2_XXS
        | G::IQ2_XS
        | G::IQ2_S
        | G::IQ3_XXS
        | G::IQ3_S
        | G::IQ4_XS => G::IQ4_NL,
        G::Q2_0 | G::Q2_K | G::Q3_K | G::TQ1_0 | G::TQ2_0 => G::Q4_0,
        G::Q4_K => G::Q5_0,
        G::Q5_K => G::Q5_1,
        G::Q6_K => G::Q8_0,
        // Already a 32-element block: only F16 is left (below). Q1_0's
        // 128-element blocks have no fallback in llama.cpp either.
        _ if block <= 32 => wanted,
        _ => {
            return Err(ModelError::Unsupported(format!(
            "tensor `{}`: rows of {ncols} do not fit {wanted} and llama.cpp defines no fallback",
            t.name
        )))
        }
    };
    Ok(if !ncols.is_multiple_of(ty.block_size() as u64) {
        G::F16
    } else {
        ty
    })
}

/// The type every tensor of `header` gets in `ftype`, in the order llama.cpp
/// writes them (which is also the order the choice walks the layers in).
pub fn plan(header: &GgufHeader, ftype: FileType) -> Result<Vec<TensorChoice>> {
    let hp = Hparams::from_header(header)?;
    let mut tensors: Vec<&TensorInfo> = header.tensors().iter().collect();
    tensors.sort_by(|a, b| loader_order(&a.name, &b.name));
    let roles: Vec<Role> = tensors.iter().map(|t| Role::of(&t.name)).collect();
    let mut chooser = Chooser {
        hp: &hp,
        ftype,
        has_tied_embeddings: !roles.contains(&Role::Output),
        n_attention_wv: roles.iter().filter(|r| r.is_attn_v()).count(),
        i_attention_wv: 0,
        i_ffn_down: 0,
        i_ffn_gate: 0,
        i_ffn_up: 0,
    };
    tensors.into_iter().map(|t| chooser.choose(t)).collect()
}

/// What happened to one tensor, reported as it is done.
#[derive(Clone, Debug)]
pub struct TensorProgress<'a> {
    /// 0-based position in the output file.
    pub index: usize,
    /// Number of tensors.
    pub count: usize,
    /// The tensor's name.
    pub name: &'a str,
    /// Its shape (innermost first).
    pub dims: &'a [u64],
    /// Type in the input.
    pub from: GgmlType,
    /// Type in the output.
    pub to: GgmlType,
    /// The type the mix wanted, when the row length forced a fallback.
    pub fell_back_from: Option<GgmlType>,
    /// Whether the data went through `f32` from a quantized type (requantized).
    pub requantized: bool,
    /// Bytes in the input.
    pub bytes_in: usize,
    /// Bytes in the output.
    pub bytes_out: usize,
}

/// Rows handed to one rayon task: enough work to amortise the task, few
/// enough that a 2-D tensor spreads over all cores.
const ROWS_PER_TASK: usize = 16;

/// Converts `data` (type `from`, rows of `row_len`) to `f32`.
fn to_f32(name: &str, from: GgmlType, row_len: usize, data: &[u8]) -> Result<Vec<f32>> {
    if from == GgmlType::F32 {
        return Ok(bytemuck_f32(data));
    }
    let kernels = quant_kernels::kernels(from).ok_or_else(|| ModelError::UnsupportedType {
        name: name.to_string(),
        ty: from,
    })?;
    let row_bytes = quant_kernels::row_bytes(from, row_len).ok_or_else(|| {
        ModelError::InvalidRequest(format!(
            "tensor `{name}`: rows of {row_len} do not fit {from}"
        ))
    })?;
    let n_rows = data.len() / row_bytes;
    // A quantized tensor grows up to 8-fold as f32: check before allocating.
    tensor_core::check_memory(
        &format!("tensor `{name}` as f32 ({n_rows} rows of {row_len})"),
        (n_rows as u64)
            .checked_mul(row_len as u64)
            .and_then(|n| n.checked_mul(4)),
    )?;
    let mut out = vec![0f32; n_rows * row_len];
    out.par_chunks_mut(row_len * ROWS_PER_TASK)
        .zip(data.par_chunks(row_bytes * ROWS_PER_TASK))
        .for_each(|(dst, src)| (kernels.dequantize)(src, dst));
    Ok(out)
}

/// Little-endian `f32`s from bytes (GGUF data is little-endian).
fn bytemuck_f32(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Quantizes `src` (rows of `row_len`) to `to`, rows in parallel.
fn from_f32(name: &str, to: GgmlType, row_len: usize, src: &[f32]) -> Result<Vec<u8>> {
    let quantize = quant_kernels::kernels(to)
        .and_then(|k| k.quantize)
        .ok_or_else(|| ModelError::UnsupportedType {
            name: name.to_string(),
            ty: to,
        })?;
    let row_bytes = quant_kernels::row_bytes(to, row_len).ok_or_else(|| {
        ModelError::InvalidRequest(format!(
            "tensor `{name}`: rows of {row_len} do not fit {to}"
        ))
    })?;
    let n_rows = src.len() / row_len;
    let mut out = vec![0u8; n_rows * row_bytes];
    // Every format quantizes its blocks independently (no importance
    // matrix), so how rows are split between threads does not change a byte.
    out.par_chunks_mut(row_bytes * ROWS_PER_TASK)
        .zip(src.par_chunks(row_len * ROWS_PER_TASK))
        .for_each(|(dst, src)| quantize(src, dst));
    Ok(out)
}

/// Quantizes every tensor of `input` as llama.cpp's `llama-quantize` does for
/// `ftype` (default parameters: no importance matrix, output tensor
/// quantized, requantizing allowed), returning the output file ready to write.
///
/// Metadata is copied in order; `general.quantization_version` (2) and
/// `general.file_type` are then set as llama.cpp sets them (moved to the end),
/// and split keys are dropped. Tensors whose type does not change are
/// borrowed from `input`, not copied. A tensor already quantized that gets
/// another type goes through `f32` ([`TensorProgress::requantized`]), which
/// loses more than quantizing the original would. `progress` is called after
/// each tensor.
///
/// Errors on metadata the choice needs (`general.architecture`,
/// `{arch}.block_count`) missing, or a tensor type with no conversion.
pub fn quantize_model<'a, D: AsRef<[u8]>>(
    input: &'a Gguf<D>,
    ftype: FileType,
    mut progress: impl FnMut(&TensorProgress<'_>),
) -> Result<GgufWriter<'a>> {
    let header = input.header();
    let choices = plan(header, ftype)?;
    let mut out = GgufWriter::new();
    out.copy_metadata_from(header)?;
    // gguf_set_val_u32 removes the key and appends it.
    for key in ["general.quantization_version", "general.file_type"] {
        out.remove_metadata(key);
    }
    out.add_metadata(
        "general.quantization_version",
        Value::U32(QUANTIZATION_VERSION),
    )?;
    out.add_metadata("general.file_type", Value::U32(ftype.id()))?;
    for key in ["split.no", "split.count", "split.tensors.count"] {
        out.remove_metadata(key);
    }
    let count = choices.len();
    for (index, c) in choices.iter().enumerate() {
        let info = header
            .tensor(&c.name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: c.name.clone(),
            })?;
        let data = input.tensor_data(info);
        let requantized = c.from != c.to && c.from.is_quantized();
        let bytes_out = if c.from == c.to {
            out.add_tensor(c.name.clone(), c.to, &c.dims, data)?;
            data.len()
        } else {
            let row_len = usize::try_from(info.row_len()).map_err(|_| {
                ModelError::InvalidRequest(format!("tensor `{}`: too large", c.name))
            })?;
            let f32s = to_f32(&c.name, c.from, row_len, data)?;
            let bytes = from_f32(&c.name, c.to, row_len, &f32s)?;
            let n = bytes.len();
            out.add_tensor(c.name.clone(), c.to, &c.dims, bytes)?;
            n
        };
        progress(&TensorProgress {
            index,
            count,
            name: &c.name,
            dims: &c.dims,
            from: c.from,
            to: c.to,
            fell_back_from: c.fell_back_from,
            requantized,
            bytes_in: data.len(),
            bytes_out,
        });
    }
    Ok(out)
}
