//! The vocabulary and its special tokens, read from `tokenizer.ggml.*` metadata
//! as llama.cpp's `llama_vocab::impl::load` does.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use gguf_format::{Array, GgufHeader, Value, ValueType};

use crate::pre::{pre_config, PreConfig};
use crate::unicode::PreTokenizer;
use crate::TokenizerError;

/// A small, fast, non-cryptographic hasher (FxHash) for the vocabulary maps:
/// their keys are the model's own strings, looked up millions of times.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let word = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write(&[i]);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
pub(crate) type FxSet<K> = HashSet<K, BuildHasherDefault<FxHasher>>;

/// The type a GGUF file gives a token (`tokenizer.ggml.token_type`, llama.cpp's `llama_token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenType {
    /// 0: not specified.
    Undefined,
    /// 1: ordinary text.
    Normal,
    /// 2: the unknown token.
    Unknown,
    /// 3: a control token (BOS, EOS, `<|im_start|>`, ...), rendered only on request.
    Control,
    /// 4: a user-defined token, matched in text before tokenization.
    UserDefined,
    /// 5: an unused slot.
    Unused,
    /// 6: a byte-fallback token `<0xNN>`.
    Byte,
}

/// Token attributes (llama.cpp's `llama_token_attr` bits).
pub(crate) mod attr {
    pub const UNKNOWN: u32 = 1 << 0;
    pub const UNUSED: u32 = 1 << 1;
    pub const NORMAL: u32 = 1 << 2;
    pub const CONTROL: u32 = 1 << 3;
    pub const USER_DEFINED: u32 = 1 << 4;
    pub const BYTE: u32 = 1 << 5;
    pub const LSTRIP: u32 = 1 << 7;
    pub const RSTRIP: u32 = 1 << 8;
}

/// One vocabulary entry.
#[derive(Clone, Debug)]
pub(crate) struct TokenData {
    pub text: String,
    pub score: f32,
    pub attr: u32,
    pub token_type: TokenType,
}

/// Which algorithm a vocabulary uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VocabKind {
    /// `tokenizer.ggml.model = "llama"`: SentencePiece BPE by token scores, byte fallback.
    SentencePiece,
    /// `tokenizer.ggml.model = "gpt2"`: byte-level BPE by merge rank after a regex pre-split.
    BytePairEncoding,
}

/// The special tokens a vocabulary designates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// End of sequence.
    pub eos: Option<u32>,
    /// End of turn (detected by text when the file does not say: `<|im_end|>`, `<|eot_id|>`, ...).
    pub eot: Option<u32>,
    /// End of message (`<|eom_id|>`).
    pub eom: Option<u32>,
    /// Unknown.
    pub unk: Option<u32>,
    /// Separator.
    pub sep: Option<u32>,
    /// Padding.
    pub pad: Option<u32>,
    /// Mask.
    pub mask: Option<u32>,
    /// Fill-in-the-middle prefix.
    pub fim_pre: Option<u32>,
    /// Fill-in-the-middle suffix.
    pub fim_suf: Option<u32>,
    /// Fill-in-the-middle middle.
    pub fim_mid: Option<u32>,
    /// Fill-in-the-middle padding.
    pub fim_pad: Option<u32>,
    /// Fill-in-the-middle repository name.
    pub fim_rep: Option<u32>,
    /// Fill-in-the-middle file separator.
    pub fim_sep: Option<u32>,
}

/// Byte-level BPE state: merge ranks and the pre-tokenizer.
#[derive(Debug)]
pub(crate) struct BpeState {
    /// `"left right"` → rank (the merge line; tokens never contain a space).
    pub ranks: FxMap<String, u32>,
    pub pre: PreTokenizer,
    pub ignore_merges: bool,
}

/// A tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata.
///
/// See the [crate documentation](crate) for an example.
#[derive(Debug)]
pub struct Tokenizer {
    pub(crate) kind: VocabKind,
    pub(crate) model: String,
    pub(crate) pre: String,
    pub(crate) tokens: Vec<TokenData>,
    pub(crate) token_to_id: FxMap<String, u32>,
    pub(crate) bpe: Option<BpeState>,
    pub(crate) special: SpecialTokens,
    pub(crate) add_bos: bool,
    pub(crate) add_eos: bool,
    pub(crate) add_space_prefix: bool,
    pub(crate) clean_spaces: bool,
    pub(crate) eog: BTreeSet<u32>,
    /// Control, user-defined and unknown tokens, longest text first (`cache_special_tokens`).
    pub(crate) special_cache: Vec<u32>,
    /// Each token's piece with special tokens rendered (`cache_token_to_piece`).
    pub(crate) piece_cache: Vec<Vec<u8>>,
    /// The byte-fallback token of each byte (SentencePiece `byte_to_token`).
    pub(crate) byte_tokens: [Option<u32>; 256],
    /// SentencePiece: every pair of adjacent characters inside some token
    /// ([`pair_key`](crate::encode::pair_key)); text is never merged across
    /// other pairs.
    pub(crate) spm_pairs: FxSet<u64>,
}

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const KEY_ADD_PREFIX: &str = "tokenizer.ggml.add_space_prefix";

fn invalid(key: &str, message: impl Into<String>) -> TokenizerError {
    TokenizerError::InvalidMetadata {
        key: key.to_string(),
        message: message.into(),
    }
}

fn optional_bool(header: &GgufHeader, key: &str) -> Result<Option<bool>, TokenizerError> {
    match header.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(invalid(
            key,
            format!("expected bool, found {}", v.type_name()),
        )),
    }
}

fn optional_u32(header: &GgufHeader, key: &str) -> Result<Option<u32>, TokenizerError> {
    match header.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| {
                invalid(
                    key,
                    format!("expected a token id, found {} {v:?}", v.type_name()),
                )
            }),
    }
}

fn array_of<'a>(
    header: &'a GgufHeader,
    key: &str,
    types: &[ValueType],
) -> Result<Option<&'a Array>, TokenizerError> {
    match header.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) if types.contains(&a.element_type()) => Ok(Some(a)),
        Some(v) => Err(invalid(
            key,
            format!("expected array of {:?}, found {}", types, v.type_name()),
        )),
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by `header`'s `tokenizer.ggml.*` metadata.
    ///
    /// Supports `tokenizer.ggml.model` `llama` (SentencePiece) and `gpt2`
    /// (byte-level BPE, with the pre-tokenizer named by `tokenizer.ggml.pre`;
    /// an absent one means llama.cpp's `default`, an unknown one is an error).
    /// Defaults for absent keys follow llama.cpp: SentencePiece adds BOS (id 1)
    /// and a space prefix; BPE adds BOS only for LLaMA-3-style pre-tokenizers.
    pub fn from_gguf(header: &GgufHeader) -> Result<Tokenizer, TokenizerError> {
        let model = header.get_str(KEY_MODEL)?.to_string();
        let pre = match header.get(KEY_PRE) {
            None => String::new(),
            Some(_) => header.get_str(KEY_PRE)?.to_string(),
        };

        // Per-model defaults (llama.cpp's `load`).
        let mut special = SpecialTokens::default();
        let (kind, mut add_bos, mut add_space_prefix, clean_spaces, pre_cfg): (
            _,
            _,
            _,
            _,
            Option<PreConfig>,
        );
        match model.as_str() {
            "llama" => {
                kind = VocabKind::SentencePiece;
                special.bos = Some(1);
                special.eos = Some(2);
                special.unk = Some(0);
                add_bos = true;
                add_space_prefix = true;
                clean_spaces = false;
                pre_cfg = None;
            }
            "gpt2" => {
                kind = VocabKind::BytePairEncoding;
                special.bos = Some(11);
                special.eos = Some(11);
                let cfg = pre_config(&pre)
                    .ok_or_else(|| TokenizerError::UnknownPreTokenizer(pre.clone()))?;
                if cfg.no_bos {
                    special.bos = None;
                }
                add_bos = cfg.add_bos;
                add_space_prefix = false;
                clean_spaces = cfg.clean_spaces;
                pre_cfg = Some(cfg);
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        }
        let mut add_eos = false;
        if let Some(v) = optional_bool(header, KEY_ADD_PREFIX)? {
            add_space_prefix = v;
        }

        // The token list, scores and types.
        let words = array_of(header, KEY_TOKENS, &[ValueType::String])?
            .ok_or_else(|| invalid(KEY_TOKENS, "missing: the file has no vocabulary"))?;
        let n_tokens = words.len();
        if n_tokens > u32::MAX as usize / 2 {
            return Err(invalid(
                KEY_TOKENS,
                format!("{n_tokens} tokens is too many"),
            ));
        }
        // Each token costs its text twice (the table and the map) and about
        // a hundred bytes of bookkeeping: a hostile vocabulary of 2^28 empty
        // strings (2 GiB of file) would take tens of GiB. Check first.
        let text_bytes: u64 = words
            .strings()
            .map_or(0, |s| s.map(|t| t.len() as u64).sum());
        let estimate = (n_tokens as u64)
            .saturating_mul(128)
            .saturating_add(text_bytes.saturating_mul(2));
        if let Some(avail) = gguf_format::available_memory() {
            if estimate > avail {
                return Err(invalid(
                    KEY_TOKENS,
                    format!(
                        "a vocabulary of {n_tokens} tokens needs about {estimate} bytes; only {avail} bytes of memory are available"
                    ),
                ));
            }
        }
        let scores = array_of(header, KEY_SCORES, &[ValueType::F32, ValueType::I32])?;
        if let Some(s) = scores {
            if s.len() < n_tokens {
                return Err(invalid(
                    KEY_SCORES,
                    format!("{} scores for {n_tokens} tokens", s.len()),
                ));
            }
        }
        let types = array_of(header, KEY_TOKEN_TYPE, &[ValueType::I32])?;
        if let Some(t) = types {
            if t.len() < n_tokens {
                return Err(invalid(
                    KEY_TOKEN_TYPE,
                    format!("{} types for {n_tokens} tokens", t.len()),
                ));
            }
        }

        let mut tokens = Vec::with_capacity(n_tokens);
        let mut token_to_id: FxMap<String, u32> = FxMap::default();
        token_to_id.reserve(n_tokens);
        for i in 0..n_tokens {
            let mut text = words.get_str(i).unwrap_or_default().to_string();
            if text.is_empty() {
                // llama.cpp names empty tokens so that the map stays one-to-one.
                text = format!("[EMPTY_{i}]");
            }
            if let Some(prev) = token_to_id.insert(text.clone(), i as u32) {
                return Err(invalid(
                    KEY_TOKENS,
                    format!("duplicate token {text:?} has ids {prev} and {i}"),
                ));
            }
            let score = match scores.and_then(|s| s.get(i)) {
                Some(Value::F32(f)) => f,
                Some(Value::I32(x)) => x as f32,
                _ => 0.0,
            };
            let (token_type, attr) = match types.and_then(|t| t.get(i)) {
                None => (TokenType::Normal, attr::NORMAL),
                Some(Value::I32(1)) => (TokenType::Normal, attr::NORMAL),
                Some(Value::I32(2)) => (TokenType::Unknown, attr::UNKNOWN),
                Some(Value::I32(3)) => (TokenType::Control, attr::CONTROL),
                Some(Value::I32(4)) => (TokenType::UserDefined, attr::USER_DEFINED),
                Some(Value::I32(5)) => (TokenType::Unused, attr::UNUSED),
                Some(Value::I32(6)) => (TokenType::Byte, attr::BYTE),
                Some(_) => (TokenType::Undefined, 0),
            };
            tokens.push(TokenData {
                text,
                score,
                attr,
                token_type,
            });
        }

        // Merges for byte-level BPE.
        let bpe = match pre_cfg {
            None => None,
            Some(cfg) => {
                let merges =
                    array_of(header, KEY_MERGES, &[ValueType::String])?.ok_or_else(|| {
                        invalid(KEY_MERGES, "missing: a gpt2 vocabulary needs merges")
                    })?;
                let mut ranks: FxMap<String, u32> = FxMap::default();
                ranks.reserve(merges.len());
                for (rank, line) in merges.strings().into_iter().flatten().enumerate() {
                    // llama.cpp splits at the first space after the first byte;
                    // a line without one becomes the pair ("", "").
                    let split = line.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1);
                    let key = match split {
                        Some(p) => format!("{} {}", &line[..p], &line[p + 1..]),
                        None => " ".to_string(),
                    };
                    ranks.entry(key).or_insert(rank as u32);
                }
                Some(BpeState {
                    ranks,
                    pre: PreTokenizer::new(cfg.exprs)?,
                    ignore_merges: cfg.ignore_merges,
                })
            }
        };

        let mut tok = Tokenizer {
            kind,
            model,
            pre,
            tokens,
            token_to_id,
            bpe,
            special,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
            eog: BTreeSet::new(),
            special_cache: Vec::new(),
            piece_cache: Vec::new(),
            byte_tokens: [None; 256],
            spm_pairs: FxSet::default(),
        };
        if kind == VocabKind::SentencePiece {
            for t in &tok.tokens {
                let mut chars = t.text.chars();
                let mut prev = chars.next();
                for c in chars {
                    if let Some(p) = prev {
                        tok.spm_pairs.insert(crate::encode::pair_key(p, c));
                    }
                    prev = Some(c);
                }
            }
            for b in 0..=255u8 {
                tok.byte_tokens[b as usize] = tok
                    .token_id(&format!("<0x{b:02X}>"))
                    .or_else(|| std::str::from_utf8(&[b]).ok().and_then(|s| tok.token_id(s)));
            }
        }

        tok.read_special_ids(header)?;
        if let Some(v) = optional_bool(header, KEY_ADD_BOS)? {
            add_bos = v;
        }
        if let Some(v) = optional_bool(header, KEY_ADD_EOS)? {
            add_eos = v;
        }
        if add_bos && tok.special.bos.is_none() {
            return Err(TokenizerError::MissingSpecialToken {
                flag: KEY_ADD_BOS,
                token: "BOS",
            });
        }
        if add_eos && tok.special.eos.is_none() {
            return Err(TokenizerError::MissingSpecialToken {
                flag: KEY_ADD_EOS,
                token: "EOS",
            });
        }
        tok.add_bos = add_bos;
        tok.add_eos = add_eos;

        tok.detect_special_tokens();
        tok.apply_model_attrs(header);
        tok.build_caches();
        Ok(tok)
    }

    /// Reads `tokenizer.ggml.*_token_id`, keeping the defaults for absent or out-of-range ids.
    fn read_special_ids(&mut self, header: &GgufHeader) -> Result<(), TokenizerError> {
        type Slot = fn(&mut SpecialTokens) -> &mut Option<u32>;
        let keys: [(&str, Slot); 17] = [
            ("tokenizer.ggml.bos_token_id", |s| &mut s.bos),
            ("tokenizer.ggml.eos_token_id", |s| &mut s.eos),
            ("tokenizer.ggml.eot_token_id", |s| &mut s.eot),
            ("tokenizer.ggml.eom_token_id", |s| &mut s.eom),
            ("tokenizer.ggml.unknown_token_id", |s| &mut s.unk),
            ("tokenizer.ggml.seperator_token_id", |s| &mut s.sep),
            ("tokenizer.ggml.padding_token_id", |s| &mut s.pad),
            ("tokenizer.ggml.mask_token_id", |s| &mut s.mask),
            ("tokenizer.ggml.fim_pre_token_id", |s| &mut s.fim_pre),
            ("tokenizer.ggml.fim_suf_token_id", |s| &mut s.fim_suf),
            ("tokenizer.ggml.fim_mid_token_id", |s| &mut s.fim_mid),
            ("tokenizer.ggml.fim_pad_token_id", |s| &mut s.fim_pad),
            ("tokenizer.ggml.fim_rep_token_id", |s| &mut s.fim_rep),
            ("tokenizer.ggml.fim_sep_token_id", |s| &mut s.fim_sep),
            // Deprecated spellings of the first three FIM ids.
            ("tokenizer.ggml.prefix_token_id", |s| &mut s.fim_pre),
            ("tokenizer.ggml.suffix_token_id", |s| &mut s.fim_suf),
            ("tokenizer.ggml.middle_token_id", |s| &mut s.fim_mid),
        ];
        let n = self.tokens.len() as u32;
        for (key, slot) in keys {
            let slot = slot(&mut self.special);
            if matches!(*slot, Some(id) if id >= n) {
                *slot = None;
            }
            // An out-of-range id in the file keeps the default (llama.cpp warns).
            if let Some(id) = optional_u32(header, key)? {
                if id < n {
                    *slot = Some(id);
                }
            }
        }
        Ok(())
    }

    /// Finds EOT/EOM/FIM and end-of-generation tokens by their text, marks them
    /// control, and marks control tokens named "unused" unused (llama.cpp's
    /// text-based auto-detection).
    fn detect_special_tokens(&mut self) {
        // llama.cpp walks an unordered map and takes the first hit, so with
        // several candidates (`<|im_end|>` and `<|endoftext|>`) the choice is
        // up to the hash order; here it is the first name of llama.cpp's list
        // the vocabulary has (`<|eot_id|>` before `<|end_of_text|>`).
        let token_to_id = &self.token_to_id;
        let find_first = |tokens: &mut Vec<TokenData>, slot: &mut Option<u32>, names: &[&str]| {
            if slot.is_some() {
                return;
            }
            if let Some(&id) = names.iter().find_map(|n| token_to_id.get(*n)) {
                *slot = Some(id);
                tokens[id as usize].attr |= attr::CONTROL;
            }
        };
        let s = &mut self.special;
        let t = &mut self.tokens;
        find_first(
            t,
            &mut s.eot,
            &[
                "<|eot_id|>",
                "<|im_end|>",
                "<|end|>",
                "<end_of_turn>",
                "<|endoftext|>",
                "<|end_of_text|>",
                "<EOT>",
                "_<EOT>",
                "[EOT]",
                "<｜end▁of▁sentence｜>",
                "<end_of_utterance>",
            ],
        );
        find_first(t, &mut s.eom, &["<|eom_id|>"]);
        find_first(
            t,
            &mut s.fim_pre,
            &[
                "<|fim_prefix|>",
                "<fim-prefix>",
                "<fim_prefix>",
                "<｜fim▁begin｜>",
                "<PRE>",
                "▁<PRE>",
                "<|code_prefix|>",
                "<|prefix|>",
            ],
        );
        find_first(
            t,
            &mut s.fim_suf,
            &[
                "<|fim_suffix|>",
                "<fim-suffix>",
                "<fim_suffix>",
                "<｜fim▁hole｜>",
                "<SUF>",
                "▁<SUF>",
                "<|code_suffix|>",
                "<|suffix|>",
            ],
        );
        find_first(
            t,
            &mut s.fim_mid,
            &[
                "<|fim_middle|>",
                "<fim-middle>",
                "<fim_middle>",
                "<｜fim▁end｜>",
                "<MID>",
                "▁<MID>",
                "<|code_middle|>",
                "<|middle|>",
            ],
        );
        find_first(
            t,
            &mut s.fim_pad,
            &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
        );
        find_first(
            t,
            &mut s.fim_rep,
            &[
                "<|fim_repo|>",
                "<|repo_name|>",
                "<fim-repo>",
                "<REPO>",
                "<reponame>",
            ],
        );
        find_first(t, &mut s.fim_sep, &["<|file_sep|>"]);

        for tok in t.iter_mut() {
            if tok.attr & attr::CONTROL != 0 && tok.text.contains("unused") {
                tok.attr |= attr::UNUSED;
            }
        }

        // End-of-generation tokens.
        let mut eog = BTreeSet::new();
        eog.extend(s.fim_pad);
        eog.extend(s.fim_rep);
        eog.extend(s.fim_sep);
        const EOG_TEXTS: &[&str] = &[
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<|return|>",
            "<|call|>",
            "<|flush|>",
            "<|calls|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "</s>",
            "<|eom_id|>",
            "<EOT>",
            "_<EOT>",
            "[EOT]",
            "[EOS]",
            "<|end_of_text|>",
            "<end_of_utterance>",
            "<eos>",
            "<turn|>",
            "<|tool_response>",
            "<｜end▁of▁sentence｜>",
            "[e~[",
        ];
        for (id, tok) in t.iter_mut().enumerate() {
            if EOG_TEXTS.contains(&tok.text.as_str()) {
                eog.insert(id as u32);
                tok.attr |= attr::CONTROL;
            }
        }
        // gpt-oss: these are always rendered.
        for tok in t.iter_mut() {
            if matches!(
                tok.text.as_str(),
                "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>"
            ) {
                tok.attr = attr::USER_DEFINED;
            }
        }
        eog.extend(s.eos);
        eog.extend(s.eot);
        eog.extend(s.eom);

        // o200k_harmony / solar-open: "<|end|>" ends a message, not generation.
        let has = |text: &str| eog.iter().any(|&id| t[id as usize].text == text);
        let end_id = eog
            .iter()
            .copied()
            .find(|&id| t[id as usize].text == "<|end|>");
        if let Some(end_id) = end_id {
            let has_call = has("<|call|>") || has("<|calls|>");
            if has_call && (has("<|return|>") || has("<|flush|>")) {
                eog.remove(&end_id);
                t[end_id as usize].attr = attr::USER_DEFINED;
            }
        }
        // gemma4 / paddleocr: "</s>" is not an end of generation there.
        let s_id = eog
            .iter()
            .copied()
            .find(|&id| t[id as usize].text == "</s>");
        if let Some(s_id) = s_id {
            if eog
                .iter()
                .any(|&id| t[id as usize].text == "<|tool_response>")
            {
                eog.remove(&s_id);
                t[s_id as usize].attr = attr::NORMAL;
            }
        }
        self.eog = eog;
    }

    /// Per-model token attributes llama.cpp sets by model name (Phi-3's rstrip).
    fn apply_model_attrs(&mut self, header: &GgufHeader) {
        let name = header
            .get("general.name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        if name.contains("phi-3") || name.contains("phi3") {
            for t in &mut self.tokens {
                if t.attr & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0 {
                    t.attr |= attr::RSTRIP;
                }
            }
            let mut set = |text: &str, on: bool| {
                if let Some(&id) = self.token_to_id.get(text) {
                    let a = &mut self.tokens[id as usize].attr;
                    *a = if on {
                        *a | attr::RSTRIP
                    } else {
                        *a & !attr::RSTRIP
                    };
                }
            };
            set("</s>", true);
            for text in ["<unk>", "<s>", "<|endoftext|>"] {
                set(text, false);
            }
        }
    }

    fn build_caches(&mut self) {
        let mut cache: Vec<u32> = (0..self.tokens.len() as u32)
            .filter(|&id| {
                self.tokens[id as usize].attr & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN)
                    != 0
            })
            .collect();
        // Longest first; llama.cpp's sort is unstable, ties here go by id.
        cache.sort_by_key(|&id| std::cmp::Reverse(self.tokens[id as usize].text.len()));
        self.special_cache = cache;
        self.piece_cache = (0..self.tokens.len() as u32)
            .map(|id| self.piece_uncached(id, true))
            .collect();
    }

    /// The id of the token whose text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// The token's text as stored in the vocabulary (`▁` for spaces in SentencePiece, GPT-2's byte characters in BPE).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|t| t.text.as_str())
    }

    /// The token's score (SentencePiece merge priority; 0 when the file has none).
    pub fn token_score(&self, id: u32) -> Option<f32> {
        self.tokens.get(id as usize).map(|t| t.score)
    }

    /// The token's type as the file gives it (`tokenizer.ggml.token_type`; `Normal` when absent).
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.tokens.get(id as usize).map(|t| t.token_type)
    }

    /// Whether the token is a control token (after llama.cpp's auto-detection,
    /// which also makes `<|im_end|>`-like end tokens control).
    pub fn is_control(&self, id: u32) -> bool {
        self.tokens
            .get(id as usize)
            .is_some_and(|t| t.attr & attr::CONTROL != 0)
    }

    /// The fewest tokens any text of `bytes` bytes can become: no token
    /// stands for more input bytes than its own text has (normalization only
    /// lengthens text, a byte token stands for one byte), so a text longer
    /// than the context times the longest token cannot fit and need not be
    /// tokenized to know it.
    pub fn min_tokens(&self, bytes: usize) -> usize {
        let longest = self.tokens.iter().map(|t| t.text.len()).max().unwrap_or(1);
        bytes / longest.max(1)
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The algorithm.
    pub fn kind(&self) -> VocabKind {
        self.kind
    }

    /// `tokenizer.ggml.model`.
    pub fn model_name(&self) -> &str {
        &self.model
    }

    /// `tokenizer.ggml.pre` (empty when absent).
    pub fn pre_tokenizer_name(&self) -> &str {
        &self.pre
    }

    /// The beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.special.bos
    }

    /// The end-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.special.eos
    }

    /// The end-of-turn token, from the file or detected by text.
    pub fn eot(&self) -> Option<u32> {
        self.special.eot
    }

    /// All special token ids.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// Whether `encode(.., add_special = true, ..)` prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., add_special = true, ..)` appends EOS.
    pub fn adds_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether generating `id` ends generation (EOS, EOT, EOM, `<|im_end|>`, `<|eot_id|>`,
    /// `<end_of_turn>`, `<|end|>`, ... as llama.cpp decides).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The end-of-generation tokens, in increasing order.
    pub fn eog_tokens(&self) -> impl Iterator<Item = u32> + '_ {
        self.eog.iter().copied()
    }
}
