//! Integration tests of `strata serve`'s HTTP API on the default model.

mod common;
mod http;
mod openai_client;
mod structured;
