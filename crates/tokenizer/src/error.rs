//! The crate's one error type.

use thiserror::Error;

/// Everything that can go wrong building a tokenizer, tokenizing, or rendering
/// a chat template.
///
/// Messages say what and where: the metadata key, the token id, the template
/// line. [`TemplateError`](crate::chat::TemplateError) is this same type.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// A metadata key is missing or has the wrong type.
    #[error("tokenizer metadata: {0}")]
    Metadata(#[from] gguf_format::GgufError),
    /// A metadata value is present but invalid.
    #[error("tokenizer metadata `{key}`: {message}")]
    InvalidMetadata {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// `tokenizer.ggml.model` names a tokenizer this crate does not implement.
    #[error("unsupported tokenizer model `{0}` (supported: `llama` (SentencePiece), `gpt2` (byte-level BPE))")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not know.
    /// The message lists the names it does know.
    #[error(
        "unknown pre-tokenizer type `{0}` in tokenizer.ggml.pre (known: {known})",
        known = crate::pre::known_names_line()
    )]
    UnknownPreTokenizer(String),
    /// A pre-tokenizer expression failed to compile or to run.
    #[error("pre-tokenizer expression `{pattern}`: {message}")]
    Regex {
        /// The expression as llama.cpp writes it.
        pattern: String,
        /// The regex engine's message.
        message: String,
    },
    /// The vocabulary cannot represent a byte of the input (no `<0xNN>` token).
    #[error("the vocabulary has no token for byte 0x{0:02X} (no `<0x{0:02X}>` byte token)")]
    NoByteToken(u8),
    /// Adding BOS/EOS was requested but the vocabulary has no such token.
    #[error("{flag} is true but the vocabulary has no {token} token")]
    MissingSpecialToken {
        /// The flag that asks for the token.
        flag: &'static str,
        /// Which token is missing.
        token: &'static str,
    },
    /// The chat template does not parse.
    #[error("chat template syntax: {0}")]
    TemplateSyntax(String),
    /// The template called `raise_exception(message)`.
    #[error("chat template raised: {0}")]
    TemplateRaised(String),
    /// Rendering failed (undefined operation, bad argument, ...).
    #[error("chat template render: {0}")]
    TemplateRender(String),
    /// Rendering exceeded the instruction budget (a runaway or hostile template).
    #[error("chat template exceeded its budget of {0} instructions")]
    TemplateOutOfFuel(u64),
    /// Rendering produced more than the allowed output.
    #[error("chat template output exceeds {0} bytes")]
    TemplateOutputTooLarge(usize),
    /// Rendering ran into another sandbox limit (a value, list, nesting or
    /// work budget too large: a hostile template).
    #[error("chat template exceeded a limit: {0}")]
    TemplateLimit(String),
    /// A chat message holds a special token's text that cannot be kept as
    /// text: the template changes message content, so where the content
    /// ends up in the rendered prompt is unknown.
    #[error(
        "message {message} contains the text of special token `{token}`, and the chat \
         template changes message content, so it cannot be kept as plain text; remove it, \
         or allow special tokens in message content"
    )]
    SpecialTokenInContent {
        /// Index of the message in the conversation.
        message: usize,
        /// The special token's text.
        token: String,
    },
    /// A text too large to tokenize in the memory available.
    #[error("tokenizing {bytes} bytes of text needs about {needed} bytes of memory; only {available} are available")]
    TextTooLarge {
        /// Bytes of text.
        bytes: usize,
        /// The estimate of the memory tokenizing it takes.
        needed: u64,
        /// Memory available.
        available: u64,
    },
    /// The chat context (JSON) is malformed.
    #[error("chat context: {0}")]
    Context(String),
}
