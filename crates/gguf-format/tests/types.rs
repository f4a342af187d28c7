//! The ggml type table agrees with the reference fixtures' manifest.

use gguf_format::GgmlType;

use crate::util::fixture;

#[test]
fn type_table_matches_manifest() {
    let text = std::fs::read_to_string(fixture("quant/manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entries = manifest.as_object().unwrap();
    assert!(entries.len() >= 22);
    for (name, e) in entries {
        let t = GgmlType::from_name(name).unwrap_or_else(|| panic!("unknown type {name}"));
        assert_eq!(
            u64::from(t.id()),
            e["ggml_type"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            t.block_size() as u64,
            e["block_size"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            t.type_size() as u64,
            e["type_size"].as_u64().unwrap(),
            "{name}"
        );
        let n_blocks = e["n_blocks"].as_u64().unwrap();
        let blocks = std::fs::metadata(fixture(&format!("quant/{name}.blocks"))).unwrap();
        assert_eq!(blocks.len(), n_blocks * t.type_size() as u64, "{name}");
        assert_eq!(
            t.bytes_for(n_blocks * t.block_size() as u64),
            Some(blocks.len())
        );
    }
}

#[test]
fn bytes_for_rejects_partial_blocks() {
    assert_eq!(GgmlType::Q4_K.bytes_for(255), None);
    assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
    assert_eq!(GgmlType::F64.bytes_for(u64::MAX), None);
}
