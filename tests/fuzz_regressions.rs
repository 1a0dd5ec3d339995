//! Replays the fuzzers' inputs under `cargo test`: the hand-written seeds
//! (`fuzz/corpus/<target>/seed-*`) and every input saved in `fuzz/regressions/<target>/` (a
//! crash, hang or huge allocation a fuzzer once found, minimised), through the very functions
//! the fuzz targets run (`fuzz/src/lib.rs`, included below). A crash found once stays fixed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// The files of `dir` whose names start with `prefix`, sorted; none if `dir` does not exist.
fn inputs(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && !n.starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

/// Runs `body` on every seed and regression input of `target`; fails naming each input that
/// panics.
fn replay(target: &str, body: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let seeds = inputs(&fuzz.join("corpus").join(target), "seed-");
    assert!(!seeds.is_empty(), "no seeds in fuzz/corpus/{target}");
    let regressions = inputs(&fuzz.join("regressions").join(target), "");
    let mut failed = Vec::new();
    for file in seeds.iter().chain(&regressions) {
        let data = std::fs::read(file).unwrap();
        if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: panics on {failed:#?}");
}

#[test]
fn extract() {
    replay("extract", harness::extract);
}

#[test]
fn jwt() {
    replay("jwt", harness::jwt);
}

#[test]
fn jwks() {
    replay("jwks", harness::jwks);
}

#[test]
fn introspection() {
    replay("introspection", harness::introspection);
}

#[test]
fn config() {
    replay("config", harness::config);
}

#[test]
fn headers() {
    replay("headers", harness::headers);
}

#[test]
fn host_answers() {
    replay("host_answers", harness::host_answers);
}
