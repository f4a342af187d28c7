//! The crate's one error type.

use llama_model::ModelError;
use tokenizer::TokenizerError;

/// Everything that can go wrong generating: bad arguments (caught before any
/// work), and failures of the model, the tokenizer or another engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// A setting is out of range.
    #[error("invalid {name} {value}: expected {expected}")]
    InvalidArgument {
        /// The setting.
        name: &'static str,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// The prompt has no tokens.
    #[error("the prompt is empty (no tokens)")]
    EmptyPrompt,
    /// The prompt leaves no room in the context for a generated token.
    #[error("the prompt has {}{n_prompt} tokens but the context holds {n_ctx}: it must be shorter than the context", if *.at_least { "at least " } else { "" })]
    PromptTooLong {
        /// Tokens in the prompt (a lower bound when `at_least`).
        n_prompt: usize,
        /// The text was refused before tokenizing: `n_prompt` is the
        /// fewest tokens its length can make.
        at_least: bool,
        /// Positions in the context.
        n_ctx: usize,
    },
    /// A prompt token id is outside the vocabulary.
    #[error("prompt token {index} is id {token}, outside the vocabulary of {n_vocab}")]
    InvalidToken {
        /// Where it is in the prompt.
        index: usize,
        /// The id.
        token: u32,
        /// The vocabulary size.
        n_vocab: usize,
    },
    /// Chat messages were given but the generator has no chat template.
    #[error("chat messages need a chat template, and none was set")]
    NoChatTemplate,
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Tokenizing or rendering the chat template failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// A grammar or schema could not be compiled, or constrained sampling
    /// failed ([`constraint`](crate::constraint)).
    #[error("grammar: {0}")]
    Grammar(String),
    /// Another [`Engine`](crate::Engine) failed (a GPU backend, ...).
    #[error("engine: {0}")]
    Engine(Box<dyn std::error::Error + Send + Sync>),
}

impl GenerateError {
    /// Whether the error is about the caller's arguments (a command line
    /// reports these with exit code 2) rather than a failure while working.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(
            self,
            GenerateError::InvalidArgument { .. }
                | GenerateError::EmptyPrompt
                | GenerateError::PromptTooLong { .. }
                | GenerateError::InvalidToken { .. }
                | GenerateError::NoChatTemplate
        )
    }
}
