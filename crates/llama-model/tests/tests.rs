//! Whole-model tests of llama-model against llama.cpp's outputs.
mod common;
mod errors;
mod gemma3;
mod gpt_oss;
mod incremental;
mod quantize;
mod qwen35;
mod smollm2;
mod synth;
mod trace;
