//! The fuzz targets on the stable toolchain (issue 20): each target's check
//! (`fuzz/src/checks.rs`, the same code `cargo fuzz run` drives on nightly)
//! runs on its committed seeds (`fuzz/seeds/<target>/`), then on mutations
//! of them for a bounded time. A failure prints the input and writes it to
//! `target/fuzz-failures/` so that `cargo fuzz run <target> FILE` replays it.

#[path = "../../../fuzz/src/checks.rs"]
#[allow(dead_code)]
mod checks;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
/// Time each target runs mutations for in `cargo test`.
const BUDGET: Duration = Duration::from_secs(8);

/// The time each target runs mutations for: [`BUDGET`], or
/// `STRATA_FUZZ_SECONDS` seconds where CI asks for a longer run
/// (`.ci/run` gives each target a minute after the tests).
fn budget() -> Duration {
    match std::env::var("STRATA_FUZZ_SECONDS") {
        Ok(s) => Duration::from_secs(
            s.parse()
                .unwrap_or_else(|_| panic!("STRATA_FUZZ_SECONDS={s:?} is not a whole number")),
        ),
        Err(_) => BUDGET,
    }
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(ROOT).join("fuzz/seeds").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// xorshift64*: deterministic, so a run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random edit of `data`: flip, set, insert, delete, duplicate or
/// splice bytes, or insert a token from `dictionary`.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>], dictionary: &[&str]) {
    let len = data.len();
    match rng.below(7) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = [0, 1, 0x7f, 0x80, 0xff, b'{', b'}', b'%'][rng.below(8)];
        }
        2 => {
            let i = rng.below(len + 1);
            data.insert(i, rng.next() as u8);
        }
        3 if len > 1 => {
            let a = rng.below(len);
            let b = (a + 1 + rng.below(16)).min(len);
            data.drain(a..b);
        }
        4 if len > 1 => {
            let a = rng.below(len);
            let b = (a + 1 + rng.below(64)).min(len);
            let piece = data[a..b].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, piece);
        }
        5 if !others.is_empty() => {
            let other = &others[rng.below(others.len())];
            let (a, b) = (rng.below(len + 1), rng.below(other.len() + 1));
            data.truncate(a);
            data.extend_from_slice(&other[b..]);
        }
        _ if !dictionary.is_empty() => {
            let word = dictionary[rng.below(dictionary.len())];
            let at = rng.below(len + 1);
            data.splice(at..at, word.bytes());
        }
        _ => data.push(rng.next() as u8),
    }
    data.truncate(1 << 16);
}

fn run(target: &str, dictionary: &[&str], check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let corpus = seeds(target);
    let fail = |input: &[u8], e: Box<dyn std::any::Any + Send>| -> ! {
        let dir = Path::new(ROOT).join("target/fuzz-failures");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{target}-{:016x}", fxhash(input)));
        let _ = std::fs::write(&path, input);
        let what = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!(
            "{target}: {what}\ninput ({} bytes) saved to {}: {:?}",
            input.len(),
            path.display(),
            String::from_utf8_lossy(input)
        );
    };
    for seed in &corpus {
        if let Err(e) = std::panic::catch_unwind(|| check(seed)) {
            fail(seed, e);
        }
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ fxhash(target.as_bytes()));
    let start = Instant::now();
    let budget = budget();
    let mut runs = 0u64;
    while start.elapsed() < budget {
        let mut input = corpus[rng.below(corpus.len())].clone();
        for _ in 0..1 + rng.below(8) {
            mutate(&mut rng, &mut input, &corpus, dictionary);
        }
        let one = Instant::now();
        if let Err(e) = std::panic::catch_unwind(|| check(&input)) {
            fail(&input, e);
        }
        assert!(
            one.elapsed() < Duration::from_secs(5),
            "{target}: one input took {:?}: {:?}",
            one.elapsed(),
            String::from_utf8_lossy(&input)
        );
        runs += 1;
    }
    eprintln!(
        "{target}: {} seeds, {runs} mutated inputs in {:?}",
        corpus.len(),
        budget
    );
}

fn fxhash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn fuzz_gguf_reader() {
    run(
        "parse",
        &[
            "GGUF",
            "\x03\x00\x00\x00",
            "\x7f\x7f\x7f\x7f",
            "\x09\x00\x00\x00",
        ],
        checks::parse,
    );
}

#[test]
fn fuzz_tokenizer_encode_and_decode() {
    run(
        "tokenize",
        &[
            "<s>",
            "</s>",
            "<unk>",
            "<|endoftext|>",
            " ",
            "\n",
            "'s",
            "▁",
            "\u{1F389}",
            "\u{FFFD}",
        ],
        |data| checks::tokenize(ROOT, data),
    );
}

#[test]
fn fuzz_chat_template_rendering() {
    run(
        "template",
        &[
            "{{ ",
            " }}",
            "{% ",
            " %}",
            "{% for i in range(99) %}",
            "{% endfor %}",
            "{% set ns = namespace(s='x') %}",
            "{% set ns.s = ns.s ~ ns.s %}",
            " ~ ",
            " + ",
            " * 999 ",
            "|format(",
            "'%999s'",
            "|indent(999)",
            "|join('xx')",
            "|replace('', 'yy')",
            "|batch(99, 0)",
            "|slice(99)",
            "|list",
            "|tojson(indent=2)",
            "[",
            "]",
            "(",
            ")",
            "{'a': ",
            "namespace(a=",
            "messages",
            "message['content']",
            ".split('')",
            "{% macro m(n) %}",
            "{% endmacro %}",
            "{{ m(n - 1) }}",
            "{% set s %}",
            "{% endset %}",
            "loop.index",
            "caller()",
            "\0",
        ],
        checks::template,
    );
}
