//! generate's one integration-test binary.

mod scripted;
mod smollm2;
