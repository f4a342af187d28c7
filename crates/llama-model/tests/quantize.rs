//! `quantize_model` against llama.cpp's `llama-quantize`: the synthetic
//! model's `F32` file quantized to every file type llama.cpp made a fixture
//! for must give that fixture, byte for byte.

use gguf_format::{Gguf, GgufFile};
use llama_model::quantize::{plan, quantize_model, FileType};

use crate::common::fixture;

const FTYPES: [&str; 16] = [
    "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q5_1", "Q4_K_M", "Q4_0", "Q4_1", "Q3_K_M",
    "Q2_K", "IQ4_NL", "IQ4_XS", "Q2_0", "Q1_0",
];

/// Quantizes synth-F32.gguf to `name` and compares with llama.cpp's file:
/// first tensor by tensor (types, then bytes) for a readable failure, then
/// the whole file.
fn check(name: &str) {
    let ftype: FileType = name.parse().unwrap();
    let input = GgufFile::open(fixture("synth/synth-F32.gguf")).unwrap();
    let reference = GgufFile::open(fixture(&format!("synth/synth-{name}.gguf"))).unwrap();
    let ours = quantize_model(&input, ftype, |_| {})
        .unwrap()
        .to_bytes()
        .unwrap();
    let ours = Gguf::from_data(ours).unwrap();
    let names = |h: &gguf_format::GgufHeader| -> Vec<String> {
        h.tensors().iter().map(|t| t.name.clone()).collect()
    };
    assert_eq!(names(&ours), names(&reference), "{name}: tensor order");
    for t in reference.tensors() {
        let o = ours.header().tensor(&t.name).unwrap();
        assert_eq!(
            (o.ggml_type, &o.dims),
            (t.ggml_type, &t.dims),
            "{name}: {}",
            t.name
        );
        let (a, b) = (ours.tensor_data(o), reference.tensor_data(t));
        let diff = a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!(
            diff,
            0,
            "{name}: {} ({}): {diff} of {} bytes differ",
            t.name,
            t.ggml_type,
            b.len()
        );
    }
    assert_eq!(ours.metadata(), reference.metadata(), "{name}: metadata");
    assert!(ours.bytes() == reference.bytes(), "{name}: files differ");
}

#[test]
fn synth_quantized_like_llama_cpp_for_every_file_type() {
    for name in FTYPES {
        check(name);
    }
}

#[test]
fn nvfp4_tensors_quantized_like_llama_cpp() {
    // No file type makes NVFP4: synth-NVFP4.gguf is llama-quantize's Q8_0
    // with `--tensor-type blk=nvfp4`, so each of its 14 NVFP4 tensors is
    // ggml's quantize_row_nvfp4_ref of the tensor in synth-F32.gguf.
    let input = GgufFile::open(fixture("synth/synth-F32.gguf")).unwrap();
    let reference = GgufFile::open(fixture("synth/synth-NVFP4.gguf")).unwrap();
    let mut n = 0;
    for t in reference.tensors() {
        if t.ggml_type != gguf_format::GgmlType::NVFP4 {
            continue;
        }
        let src: Vec<f32> = input
            .tensor_data(input.header().tensor(&t.name).unwrap())
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let want = reference.tensor_data(t);
        let mut got = vec![0u8; want.len()];
        quant_kernels::quantize_row(t.ggml_type, &src, &mut got).unwrap();
        assert!(got == want, "{}", t.name);
        n += 1;
    }
    assert_eq!(n, 14);
}

#[test]
fn requantizing_goes_through_f32() {
    // Q8_0 -> Q4_0: all 16 2-D tensors are requantized (the output to Q6_K);
    // the 1-D norms are copied.
    let input = GgufFile::open(fixture("synth/synth-Q8_0.gguf")).unwrap();
    let mut requantized = 0;
    let out = quantize_model(&input, FileType::Q4_0, |p| {
        assert_eq!(
            p.requantized,
            p.from != p.to && p.from.is_quantized(),
            "{}",
            p.name
        );
        requantized += usize::from(p.requantized);
    })
    .unwrap();
    assert_eq!(requantized, 16);
    let bytes = out.to_bytes().unwrap();
    let file = Gguf::from_data(bytes).unwrap();
    assert_eq!(
        file.get_u32("general.file_type").unwrap(),
        FileType::Q4_0.id()
    );
}

#[test]
fn rows_that_do_not_fit_256_fall_back() {
    // SmolLM2's rows are 576 wide: Q4_K falls back to Q5_0, Q6_K to Q8_0, and
    // its tied embeddings take the output's type.
    let path = model_cache::default_model().unwrap();
    let file = GgufFile::open(path).unwrap();
    let choices = plan(file.header(), FileType::Q4_K_M).unwrap();
    let get = |n: &str| choices.iter().find(|c| c.name == n).unwrap();
    assert_eq!(get("token_embd.weight").to, gguf_format::GgmlType::Q8_0);
    let q = get("blk.0.attn_q.weight");
    assert_eq!(
        (q.to, q.fell_back_from),
        (
            gguf_format::GgmlType::Q5_0,
            Some(gguf_format::GgmlType::Q4_K)
        )
    );
    assert_eq!(get("blk.0.attn_norm.weight").to, gguf_format::GgmlType::F32);
}

#[test]
fn q2_0_and_q1_0_rows_that_do_not_fit() {
    // SmolLM2's 576-wide rows: Q2_0 (64) falls back to Q4_0 where a row is
    // not whole blocks — none here, 576 = 9·64 — and its tied embeddings,
    // taking the output's Q6_K, to Q8_0; Q1_0's 128-element blocks do not
    // fit 576 and llama.cpp defines no fallback for them (it throws).
    let path = model_cache::default_model().unwrap();
    let file = GgufFile::open(path).unwrap();
    let choices = plan(file.header(), FileType::Q2_0).unwrap();
    let get = |n: &str| choices.iter().find(|c| c.name == n).unwrap();
    assert_eq!(get("blk.0.attn_q.weight").to, gguf_format::GgmlType::Q2_0);
    let e = get("token_embd.weight");
    assert_eq!(
        (e.to, e.fell_back_from),
        (
            gguf_format::GgmlType::Q8_0,
            Some(gguf_format::GgmlType::Q6_K)
        )
    );
    let err = plan(file.header(), FileType::Q1_0).unwrap_err().to_string();
    assert!(err.contains("do not fit Q1_0"), "{err}");
}

#[test]
fn file_type_names_parse() {
    for f in FileType::ALL {
        assert_eq!(f.name().to_lowercase().parse::<FileType>().unwrap(), *f);
        assert_eq!(FileType::from_id(f.id()), Some(*f));
    }
    assert!("Q4_K_Z".parse::<FileType>().is_err());
}
