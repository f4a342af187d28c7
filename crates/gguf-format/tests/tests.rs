//! The crate's one integration-test binary.

mod files;
mod fixtures;
mod legal;
mod reject;
mod roundtrip;
mod types;
mod util;
mod writer;
