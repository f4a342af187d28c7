//! Whole-model tests of llama-model against llama.cpp's outputs.
mod common;
mod errors;
mod incremental;
mod quantize;
mod smollm2;
mod synth;
mod trace;
