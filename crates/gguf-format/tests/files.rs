//! Hostile inputs and outputs on disk: huge metadata arrays stored compactly,
//! paths that are not regular files, reading without a map, outputs that
//! never destroy an input.

use std::path::PathBuf;

use gguf_format::{
    same_file, Array, GgufFile, GgufHeader, GgufWriter, OutputFile, Value, ValueType,
};

use crate::util::{Raw, T_ARRAY, T_STRING, T_U8};

/// A fresh, empty directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gguf-files-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn small_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama").unwrap();
    w.add_metadata("k", vec![1u32, 2, 3]).unwrap();
    w.to_bytes().unwrap()
}

#[test]
fn a_large_u8_array_is_stored_as_its_bytes() {
    // 16 Mi elements: as a Vec<Value> this took 512 MiB; stored compactly, 16 MiB.
    let n = 16u64 << 20;
    let mut raw = Raw::header(0, 1).key("big", T_ARRAY).u32(T_U8).u64(n);
    raw.0.extend((0..n).map(|i| i as u8));
    let h = GgufHeader::parse(&raw.0).unwrap();
    let a = h.get_array("big").unwrap();
    assert_eq!((a.element_type(), a.len()), (ValueType::U8, n as usize));
    assert_eq!(a.heap_bytes(), n as usize);
    assert_eq!(a.get(300), Some(Value::U8(44)));
    assert_eq!(a.as_le_bytes().unwrap().len(), n as usize);
    assert!(std::mem::size_of::<Array>() <= 64);
}

#[test]
fn a_large_string_array_costs_its_text_and_one_offset_per_string() {
    let n = 1u64 << 20;
    let mut raw = Raw::header(0, 1).key("s", T_ARRAY).u32(T_STRING).u64(n);
    for i in 0..n {
        raw = raw.str(if i % 2 == 0 { b"ab" } else { b"" });
    }
    let h = GgufHeader::parse(&raw.0).unwrap();
    let a = h.get_array("s").unwrap();
    assert_eq!(a.len(), n as usize);
    assert!(a.heap_bytes() <= n as usize * (1 + std::mem::size_of::<usize>()));
    assert_eq!((a.get_str(0), a.get_str(1)), (Some("ab"), Some("")));
    assert_eq!(
        a.strings().unwrap().filter(|s| s.is_empty()).count(),
        n as usize / 2
    );
    // The `values` view still reads as a slice of values, made on demand.
    assert_eq!(a.values[2], Value::String("ab".into()));
}

#[test]
fn arrays_round_trip_through_the_writer() {
    let mut w = GgufWriter::new();
    w.add_metadata("f", vec![1.5f32, f32::NAN]).unwrap();
    w.add_metadata("b", vec![true, false]).unwrap();
    w.add_metadata("s", vec!["x", "", "yz"]).unwrap();
    w.add_metadata(
        "n",
        Value::Array(Array::from_arrays(vec![vec![1u8].into(), vec!["q"].into()])),
    )
    .unwrap();
    let bytes = w.to_bytes().unwrap();
    let h = GgufHeader::parse(&bytes).unwrap();
    for key in ["f", "b", "s", "n"] {
        assert_eq!(h.get(key), w.get(key), "{key}");
    }
    assert!(h.get_array("b").unwrap().get(0) == Some(Value::Bool(true)));
}

#[test]
fn a_directory_is_named_as_such() {
    let dir = scratch("dir");
    let e = GgufFile::open(&dir).unwrap_err().to_string();
    assert!(e.contains("is a directory, not a regular file"), "{e}");
    let e = GgufFile::read(&dir).unwrap_err().to_string();
    assert!(e.contains("is a directory"), "{e}");
}

#[cfg(unix)]
#[test]
fn a_fifo_is_refused_at_once_not_waited_on() {
    let dir = scratch("fifo");
    let fifo = dir.join("model.gguf");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let start = std::time::Instant::now();
    let e = GgufFile::open(&fifo).unwrap_err().to_string();
    assert!(e.contains("is a FIFO, not a regular file"), "{e}");
    assert!(start.elapsed().as_secs() < 5);
}

#[test]
fn read_holds_the_file_in_memory() {
    let dir = scratch("read");
    let path = dir.join("m.gguf");
    std::fs::write(&path, small_file()).unwrap();
    let f = GgufFile::read(&path).unwrap();
    assert!(!f.is_mapped());
    // The file can go away: the bytes are this process's own.
    std::fs::write(&path, b"").unwrap();
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert!(GgufFile::open_with(&path, true).is_err());
}

#[test]
fn an_output_replaces_its_target_only_when_committed() {
    let dir = scratch("out");
    let target = dir.join("out.bin");
    std::fs::write(&target, b"old").unwrap();
    {
        let mut out = OutputFile::create(&target).unwrap();
        std::io::Write::write_all(&mut out, b"partial").unwrap();
        // Dropped without commit: the target keeps its bytes, no temp is left.
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    let mut out = OutputFile::create(&target).unwrap();
    std::io::Write::write_all(&mut out, b"new").unwrap();
    out.commit().unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"new");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn writing_over_a_mapped_file_leaves_the_map_intact() {
    let dir = scratch("mapped");
    let path = dir.join("m.gguf");
    std::fs::write(&path, small_file()).unwrap();
    let f = GgufFile::open(&path).unwrap();
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "other").unwrap();
    w.write_file(&path).unwrap();
    // The map still reads the old file: the new one was renamed into place.
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.bytes(), small_file().as_slice());
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.get_str("general.architecture").unwrap(), "other");
}

#[cfg(unix)]
#[test]
fn links_are_the_same_file_and_a_symlinked_target_is_followed() {
    let dir = scratch("links");
    let a = dir.join("a");
    std::fs::write(&a, b"data").unwrap();
    let hard = dir.join("hard");
    std::fs::hard_link(&a, &hard).unwrap();
    let soft = dir.join("soft");
    std::os::unix::fs::symlink(&a, &soft).unwrap();
    let other = dir.join("other");
    std::fs::write(&other, b"data").unwrap();
    assert!(same_file(&a, &hard));
    assert!(same_file(&a, &soft));
    assert!(same_file(&a, &dir.join(".").join("a")));
    assert!(!same_file(&a, &other));
    assert!(!same_file(&a, &dir.join("missing")));

    let mut out = OutputFile::create(&soft).unwrap();
    std::io::Write::write_all(&mut out, b"via link").unwrap();
    out.commit().unwrap();
    assert!(std::fs::symlink_metadata(&soft)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&a).unwrap(), b"via link");
}
