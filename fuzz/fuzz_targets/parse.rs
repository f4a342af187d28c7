//! Feeds arbitrary bytes to the GGUF reader. It must never panic, hang or
//! allocate without bound; when a file parses, every tensor's data slice
//! must be inside it and every metadata value readable.
#![no_main]

use gguf_format::{Gguf, GgufHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = GgufHeader::parse(data);
    let file = Gguf::from_data(data);
    // Both entry points must agree on whether the bytes are a valid file.
    assert_eq!(header.is_ok(), file.is_ok());
    if let Ok(file) = file {
        let mut touched = 0u64;
        for t in file.tensors() {
            let bytes = file.tensor_data(t);
            assert_eq!(bytes.len() as u64, t.n_bytes());
            touched = touched.wrapping_add(bytes.iter().map(|&b| u64::from(b)).sum::<u64>());
            assert!(file.tensor(&t.name).is_some());
            assert_eq!(t.n_rows().checked_mul(t.row_len()), Some(t.n_elements()));
        }
        for (key, value) in file.metadata() {
            assert!(file.get(key) == Some(value) || value != value);
            std::hint::black_box(format!("{value:?}"));
        }
        std::hint::black_box(touched);
    }
});
