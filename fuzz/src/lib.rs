//! The checks behind the fuzz targets (see `checks`).

pub mod checks;

/// The workspace root, where the committed vocabularies are.
pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
