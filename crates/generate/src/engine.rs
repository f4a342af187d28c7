//! [`Engine`]: what generation needs from a model — a KV cache that can be
//! extended and rewound, and the last token's logits.

use llama_model::{Backend, LogitsMode, Session};

use crate::GenerateError;

/// A language model with a KV cache, seen from the generator.
///
/// llama-model's [`Session`] implements it for every backend (on the GPU,
/// its graph compiled into the GPU's dispatches); a test double or another
/// runtime implements these five methods.
pub trait Engine {
    /// Positions the KV cache holds.
    fn n_ctx(&self) -> usize;
    /// Entries in the vocabulary (the length of a logits row).
    fn n_vocab(&self) -> usize;
    /// Tokens in the KV cache now.
    fn n_past(&self) -> usize;
    /// Keeps only the first `n` tokens of the cache (`n ≤ n_past`).
    fn truncate(&mut self, n: usize) -> Result<(), GenerateError>;
    /// The longest prefix of at most `n` tokens the cache can be truncated
    /// to: `n`, unless recurrent layers keep a state that cannot be cut back
    /// (then the longest of `n_past` itself, a position where the state was
    /// saved — llama-model's `Session::rewind_point` — and 0).
    fn rewind_point(&self, n: usize) -> usize {
        n
    }
    /// Appends `tokens` (at least one) to the cache and returns the last one's logits.
    fn forward_last(&mut self, tokens: &[u32]) -> Result<&[f32], GenerateError>;
}

impl<B: Backend> Engine for Session<'_, B> {
    fn n_ctx(&self) -> usize {
        Session::n_ctx(self)
    }

    fn n_vocab(&self) -> usize {
        self.model().config().n_vocab
    }

    fn n_past(&self) -> usize {
        Session::n_past(self)
    }

    fn truncate(&mut self, n: usize) -> Result<(), GenerateError> {
        Ok(Session::truncate(self, n)?)
    }

    fn rewind_point(&self, n: usize) -> usize {
        Session::rewind_point(self, 0, n)
    }

    fn forward_last(&mut self, tokens: &[u32]) -> Result<&[f32], GenerateError> {
        Ok(self.forward(tokens, LogitsMode::Last)?)
    }
}

/// Lets a generator borrow an engine, or own a boxed one (`Box<dyn Engine>`).
macro_rules! forward_engine {
    ($($ty:ty),*) => {$(
        impl<E: Engine + ?Sized> Engine for $ty {
            fn n_ctx(&self) -> usize {
                (**self).n_ctx()
            }
            fn n_vocab(&self) -> usize {
                (**self).n_vocab()
            }
            fn n_past(&self) -> usize {
                (**self).n_past()
            }
            fn truncate(&mut self, n: usize) -> Result<(), GenerateError> {
                (**self).truncate(n)
            }
            fn rewind_point(&self, n: usize) -> usize {
                (**self).rewind_point(n)
            }
            fn forward_last(&mut self, tokens: &[u32]) -> Result<&[f32], GenerateError> {
                (**self).forward_last(tokens)
            }
        }
    )*};
}
forward_engine!(&mut E, Box<E>);
