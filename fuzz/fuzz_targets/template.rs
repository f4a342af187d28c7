//! Chat template rendering of arbitrary templates and contexts under small
//! sandbox limits: always returns, output within the cap. See `src/checks.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strata_fuzz::checks::template(data));
