//! Fetches, verifies and caches the default model.
//!
//! Filled in by the foundation issue.
#![deny(missing_docs)]
