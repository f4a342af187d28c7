//! Shared helpers: the device and the fixtures.

use std::sync::{Arc, OnceLock};

use backend_wgpu::{DeviceOptions, GpuContext};

/// The GPU, opened once per test binary. Panics (fails the test) when no
/// adapter exists: a GPU test must never pass without running.
pub fn ctx() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        let ctx = GpuContext::new(&DeviceOptions::default())
            .unwrap_or_else(|e| panic!("GPU tests need an adapter (CI installs llvmpipe): {e}"));
        eprintln!("GPU tests on {:?}", ctx.caps());
        ctx
    })
    .clone()
}

/// Path of a file under tests/fixtures.
pub fn fixture(rel: &str) -> String {
    format!("{}/../../tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// A fixture file's bytes.
pub fn read(rel: &str) -> Vec<u8> {
    let path = fixture(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}
