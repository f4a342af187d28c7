//! [`Chat`]: a multi-turn conversation that keeps its KV cache.

use tokenizer::chat::Message;

use crate::{Completion, Engine, GenerateError, GenerateOptions, Generator, Prompt};

/// A conversation with a model: each [`Chat::send`] renders the whole
/// conversation with the chat template, and the [`Generator`] runs only the
/// tokens its cache does not hold yet (the new user message, mostly).
pub struct Chat<'t, E> {
    generator: Generator<'t, E>,
    messages: Vec<Message>,
}

impl<'t, E: Engine> Chat<'t, E> {
    /// A conversation over `generator` (which needs a chat template), opened
    /// by a system message if one is given.
    pub fn new(generator: Generator<'t, E>, system: Option<&str>) -> Self {
        let messages = system
            .map(|s| vec![Message::new("system", s)])
            .unwrap_or_default();
        Chat {
            generator,
            messages,
        }
    }

    /// The conversation so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The generator (its cache: [`Generator::cached_tokens`]).
    pub fn generator(&self) -> &Generator<'t, E> {
        &self.generator
    }

    /// Adds the user's message, generates the reply (streamed to `on_text`)
    /// and adds it to the conversation. On an error the conversation is left
    /// as it was.
    pub fn send(
        &mut self,
        user: &str,
        opts: &GenerateOptions,
        on_text: impl FnMut(&str),
    ) -> Result<Completion, GenerateError> {
        self.messages.push(Message::new("user", user));
        let result = self
            .generator
            .generate(Prompt::Chat(&self.messages), opts, on_text);
        match result {
            Ok(completion) => {
                // Kept verbatim: the next render then starts with the very
                // tokens generated, and the cache covers them.
                self.messages
                    .push(Message::new("assistant", completion.text.as_str()));
                Ok(completion)
            }
            Err(e) => {
                self.messages.pop();
                Err(e)
            }
        }
    }
}
