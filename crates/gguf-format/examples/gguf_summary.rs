//! Prints a one-line summary of each GGUF file given on the command line.
fn main() {
    for path in std::env::args().skip(1) {
        match gguf_format::GgufFile::open(&path) {
            Ok(f) => println!(
                "{path}: v{} {} keys, {} tensors, data at {}",
                f.version,
                f.metadata().len(),
                f.tensors().len(),
                f.data_offset
            ),
            Err(e) => println!("{path}: error: {e}"),
        }
    }
}
