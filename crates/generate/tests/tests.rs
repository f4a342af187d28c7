//! generate's one integration-test binary.

mod constraint;
mod scripted;
mod smollm2;
