//! quant-kernels integration tests: one module per area.

mod core_golden;
mod core_matmul;
mod core_props;
mod core_util;
mod iquants;
mod kquants;
mod lowbit;
