//! The pre-tokenizer of each `tokenizer.ggml.pre` value, as llama.cpp's
//! `llm_tokenizer_bpe` and `llama_vocab::impl::load` define it.

/// GPT-2's expression (llama.cpp runs a hand-written scanner for exactly this string).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// LLaMA-3's expression, with `(?i:..)` spelt out (also a hand-written scanner).
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's with combining marks joining letters (`[\p{L}\p{M}]`), so that
/// decomposed accents stay inside their word.
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const PORO: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";
const CJK: &str = "[一-龥ࠀ-一가-퟿]+";

const DEFAULT_EXPRS: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"];
const LLAMA3_EXPRS: &[&str] = &[LLAMA3];
const GPT2_EXPRS: &[&str] = &[GPT2];
const STARCODER_EXPRS: &[&str] = &[r"\p{N}", GPT2];
const FALCON_EXPRS: &[&str] = &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"];
const QWEN2_EXPRS: &[&str] = &[QWEN2];
const QWEN35_EXPRS: &[&str] = &[QWEN35];
const PORO_EXPRS: &[&str] = &[PORO];
const VIKING_EXPRS: &[&str] = &[PORO, r"\p{N}"];
// The letter class keeps a few compatibility codepoints (U+1F7D, U+1FBE, U+1FD3,
// U+1FDB, U+2126, U+212A) as escapes: Unicode normalization would turn them into
// other characters and the ranges they end into different (or invalid) ranges.
const DEEPSEEK_LLM_EXPRS: &[&str] = &[
    "[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u{1F7D}ᾀ-ᾴᾶ-ᾼ\u{1FBE}ῂ-ῄῆ-ῌῐ-\u{1FD3}ῖ-\u{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u{2126}ℨ\u{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
    "\\s+$",
    CJK,
    r"\p{N}+",
];
const DEEPSEEK_CODER_EXPRS: &[&str] = &["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK, r"\p{N}"];
const TEKKEN_EXPRS: &[&str] = &[
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];
const GPT4O_EXPRS: &[&str] = &[
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];
const SEED_CODER_EXPRS: &[&str] = &[
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
];
const BAILINGMOE_EXPRS: &[&str] = &[
    r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
];

/// What a `tokenizer.ggml.pre` value selects.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PreConfig {
    /// The expressions, applied one after the other.
    pub exprs: &'static [&'static str],
    /// `clean_up_tokenization_spaces` when detokenizing.
    pub clean_spaces: bool,
    /// Use a whole word as one token when the vocabulary has it.
    pub ignore_merges: bool,
    /// The default of `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
    /// The vocabulary has no BOS token by default.
    pub no_bos: bool,
}

const fn cfg(exprs: &'static [&'static str], clean_spaces: bool) -> PreConfig {
    PreConfig {
        exprs,
        clean_spaces,
        ignore_merges: false,
        add_bos: false,
        no_bos: false,
    }
}

/// LLaMA-3 and the names that share its settings.
const LLAMA3_CONFIG: PreConfig = PreConfig {
    ignore_merges: true,
    add_bos: true,
    ..cfg(LLAMA3_EXPRS, true)
};

/// Every `tokenizer.ggml.pre` name llama.cpp's `llama_vocab::impl::load`
/// accepts for a `gpt2` vocabulary and strata implements, with what it selects.
/// One row per configuration; the names are llama.cpp's, in its order.
const PRE_TOKENIZERS: &[(&[&str], PreConfig)] = &[
    (&["default"], cfg(DEFAULT_EXPRS, true)),
    (
        &[
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
        ],
        LLAMA3_CONFIG,
    ),
    (&["deepseek-llm"], cfg(DEEPSEEK_LLM_EXPRS, false)),
    (&["deepseek-coder"], cfg(DEEPSEEK_CODER_EXPRS, false)),
    (&["falcon"], cfg(FALCON_EXPRS, true)),
    (&["mpt", "olmo", "jais", "exaone4"], cfg(GPT2_EXPRS, true)),
    (
        &[
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "modern-bert",
            "jina-v1-en",
            "jina-v2-code",
            "roberta-bpe",
        ],
        cfg(GPT2_EXPRS, true),
    ),
    (&["trillion", "granite-docling"], cfg(GPT2_EXPRS, false)),
    (
        &[
            "starcoder",
            "refact",
            "codeshell",
            "exaone",
            "minerva-7b",
            "mellum2",
        ],
        cfg(STARCODER_EXPRS, true),
    ),
    (&["command-r", "smollm"], cfg(STARCODER_EXPRS, false)),
    (
        &[
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "f2llmv2",
            "hunyuan",
            "grok-2",
            "solar-open",
        ],
        cfg(QWEN2_EXPRS, false),
    ),
    (&["qwen35"], cfg(QWEN35_EXPRS, false)),
    (&["stablelm2", "megrez"], cfg(QWEN2_EXPRS, true)),
    (&["dbrx", "smaug-bpe"], cfg(LLAMA3_EXPRS, true)),
    (
        &["chatglm-bpe"],
        PreConfig {
            no_bos: true,
            ..cfg(LLAMA3_EXPRS, true)
        },
    ),
    (
        &["glm4", "glm5"],
        PreConfig {
            no_bos: true,
            ignore_merges: true,
            ..cfg(LLAMA3_EXPRS, true)
        },
    ),
    (&["poro-chat"], cfg(PORO_EXPRS, false)),
    (&["bloom", "gpt3-finnish"], cfg(PORO_EXPRS, true)),
    (&["viking"], cfg(VIKING_EXPRS, false)),
    (
        &["tekken"],
        PreConfig {
            ignore_merges: true,
            add_bos: true,
            ..cfg(TEKKEN_EXPRS, false)
        },
    ),
    (
        &["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"],
        cfg(GPT4O_EXPRS, false),
    ),
    (&["seed-coder"], cfg(SEED_CODER_EXPRS, false)),
    (
        &["bailingmoe", "bailingmoe2", "llada-moe"],
        cfg(BAILINGMOE_EXPRS, false),
    ),
];

/// The configuration for pre-tokenizer name `pre`; `None` if unknown.
///
/// An absent or empty name means `default`, as in llama.cpp (which warns that
/// generation quality will be degraded).
pub(crate) fn pre_config(pre: &str) -> Option<PreConfig> {
    let pre = if pre.is_empty() { "default" } else { pre };
    PRE_TOKENIZERS
        .iter()
        .find(|(names, _)| names.contains(&pre))
        .map(|&(_, config)| config)
}

/// Every name [`pre_config`] knows, in table order.
pub(crate) fn known_names() -> impl Iterator<Item = &'static str> {
    PRE_TOKENIZERS
        .iter()
        .flat_map(|(names, _)| names.iter().copied())
}

/// [`known_names`] as one line, for error messages.
pub(crate) fn known_names_line() -> String {
    known_names().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unicode::PreTokenizer;

    #[test]
    fn every_pre_tokenizer_compiles() {
        for name in known_names() {
            let config = pre_config(name).unwrap();
            PreTokenizer::new(config.exprs).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(pre_config("").unwrap().exprs, DEFAULT_EXPRS);
        assert!(pre_config("no-such-pre").is_none());
    }

    /// llama.cpp replaces these expressions by hand-written scanners
    /// (`unicode_regex_split_custom`), which differ from a regex engine in
    /// corner cases; strata must pick the same scanner for the same string.
    #[test]
    fn scanners_run_where_llama_cpp_runs_them() {
        let kinds = |name: &str| {
            PreTokenizer::new(pre_config(name).unwrap().exprs)
                .unwrap()
                .step_kinds()
        };
        assert_eq!(kinds("gpt-2"), ["gpt2"]);
        assert_eq!(kinds("starcoder"), ["collapsed", "gpt2"]);
        assert_eq!(kinds("falcon"), ["collapsed", "gpt2", "plain"]);
        assert_eq!(kinds("llama-bpe"), ["llama3"]);
        assert_eq!(kinds("dbrx"), ["llama3"]);
        assert_eq!(kinds("qwen2"), ["qwen2"]);
        assert_eq!(kinds("stablelm2"), ["qwen2"]);
        assert_eq!(kinds("qwen35"), ["qwen35"]);
        assert_eq!(kinds("seed-coder"), ["collapsed"]);
        assert_eq!(
            kinds("deepseek-coder"),
            ["plain", "collapsed", "collapsed", "plain", "collapsed"]
        );
    }

    /// A name in two rows would make the second one dead.
    #[test]
    fn every_name_is_listed_once() {
        let mut names: Vec<&str> = known_names().collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn splits_like_llama_cpp() {
        let split = |name: &str, text: &'static str| {
            let pre = PreTokenizer::new(pre_config(name).unwrap().exprs).unwrap();
            let mut words = Vec::new();
            pre.split(text, &mut words).unwrap();
            words.into_iter().map(|r| &text[r]).collect::<Vec<_>>()
        };
        assert_eq!(
            split("gpt-2", "Hello  world's 123"),
            ["Hello", " ", " world", "'s", " 123"]
        );
        assert_eq!(
            split("smollm", "abc 2024!"),
            ["abc", " ", "2", "0", "2", "4", "!"]
        );
        assert_eq!(
            split("llama-bpe", "12345 I'M\n\n x"),
            ["123", "45", " I", "'M", "\n\n", " x"]
        );
        assert_eq!(split("qwen2", "ab12  c"), ["ab", "1", "2", " ", " c"]);
        // Qwen3.5: combining marks (U+0301, U+0300) stay in their word, and a
        // mark cannot start or join a punctuation run.
        assert_eq!(
            split("qwen35", "re\u{301}sume\u{301} a\u{300}! \u{301}x"),
            ["re\u{301}sume\u{301}", " a\u{300}", "!", " \u{301}x"]
        );
        assert_eq!(
            split("qwen2", "re\u{301}sume\u{301} a\u{300}! \u{301}x"),
            [
                "re",
                "\u{301}sume",
                "\u{301}",
                " a",
                "\u{300}!",
                " \u{301}",
                "x"
            ]
        );
    }

    /// The pre-tokenizers split like their expressions evaluated by a
    /// backtracking regex engine with Unicode categories (the `regex` module:
    /// tests/data/presplit.json, from scripts/gen_presplit_cases.py).
    #[test]
    fn splits_match_a_unicode_regex_engine() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/presplit.json");
        let data: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let texts = data["texts"].as_array().unwrap();
        let pres = data["pre"].as_object().unwrap();
        assert_eq!(pres.len(), 12);
        for (name, case) in pres {
            let config = pre_config(name).unwrap();
            let exprs: Vec<&str> = case["exprs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_str().unwrap())
                .collect();
            assert_eq!(
                exprs, config.exprs,
                "{name}: expressions changed since the data was made"
            );
            let pre = PreTokenizer::new(config.exprs).unwrap();
            for (text, expected) in texts.iter().zip(case["splits"].as_array().unwrap()) {
                let text = text.as_str().unwrap();
                let mut words = Vec::new();
                pre.split(text, &mut words).unwrap();
                let got: Vec<&str> = words.into_iter().map(|r| &text[r]).collect();
                let expected: Vec<&str> = expected
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|w| w.as_str().unwrap())
                    .collect();
                assert_eq!(got, expected, "{name}: {text:?}");
            }
        }
    }
}
