//! Integration tests of the GPU backend. They need a GPU adapter (CI
//! installs Mesa's llvmpipe) and fail loudly when there is none.

mod common;
mod default_model;
mod fast;
mod kernels;
mod model;
mod moe;
mod recurrent;
mod seam;
