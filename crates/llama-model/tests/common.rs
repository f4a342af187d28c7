//! Fixture paths and the comparison metrics.

use std::path::PathBuf;

/// A path under the repository's `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures")).join(rel)
}

/// `tests/fixtures/archs/{arch}/{arch}-F32.gguf`, written on first use by
/// `tools/make_arch_fixtures.py --arch {arch}` (one writer at a time).
pub fn arch_f32(arch: &str) -> PathBuf {
    let root = fixture("archs");
    let path = root.join(format!("{arch}/{arch}-F32.gguf"));
    static MAKE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = MAKE.lock().unwrap_or_else(|e| e.into_inner());
    if !path.exists() {
        let out = std::process::Command::new("python3")
            .arg(root.join("../../../tools/make_arch_fixtures.py"))
            .arg(&root)
            .args(["--arch", arch])
            .output()
            .expect("python3 runs tools/make_arch_fixtures.py (needs numpy and gguf==0.19.0)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    path
}

/// Little-endian f32 values of a file.
pub fn read_f32(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Little-endian f16 values of a file, as f32.
pub fn read_f16(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    x.iter().map(|&v| v as f64 - lse).collect()
}

fn argmax(x: &[f32]) -> usize {
    (0..x.len())
        .max_by(|&a, &b| x[a].total_cmp(&x[b]))
        .unwrap_or(0)
}

/// How our logits compare with the reference's, over `[rows, n_vocab]`.
#[derive(Debug)]
pub struct Agreement {
    /// Mean over rows of KL(P_ref || P_ours).
    pub mean_kld: f64,
    /// Fraction of rows whose argmax agrees.
    pub top1: f64,
    /// Largest absolute logit difference.
    pub max_abs: f32,
}

pub fn compare(reference: &[f32], ours: &[f32], n_vocab: usize) -> Agreement {
    assert_eq!(reference.len(), ours.len(), "logit counts differ");
    let rows = reference.len() / n_vocab;
    let (mut kld, mut agree, mut max_abs) = (0.0f64, 0usize, 0.0f32);
    for (r, o) in reference.chunks(n_vocab).zip(ours.chunks(n_vocab)) {
        let (lp, lq) = (log_softmax(r), log_softmax(o));
        kld += lp
            .iter()
            .zip(&lq)
            .map(|(&p, &q)| p.exp() * (p - q))
            .sum::<f64>();
        agree += (argmax(r) == argmax(o)) as usize;
        for (&a, &b) in r.iter().zip(o) {
            max_abs = max_abs.max((a - b).abs());
        }
    }
    Agreement {
        mean_kld: kld / rows as f64,
        top1: agree as f64 / rows as f64,
        max_abs,
    }
}

/// Index of the largest value.
pub fn top1(x: &[f32]) -> u32 {
    argmax(x) as u32
}
