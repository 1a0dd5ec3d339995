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

#[test]
fn dpop_proof() {
    replay("dpop_proof", harness::dpop_proof);
}

/// The seed proofs were signed by Node's crypto (another JOSE implementation): the good ones
/// pass, each hostile one fails for its own reason.
#[test]
fn dpop_seeds_signed_elsewhere() {
    use oauth_filter::dpop::{self, ProofError};
    use oauth_filter::jwt::verify;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/dpop_proof");
    fn expect(token: &str) -> dpop::Expect<'_> {
        dpop::Expect {
            target: harness::DPOP_TARGET,
            token,
            now: harness::NOW,
            max_age: 60,
            skew: 60,
            jkt: None,
            nonce_secret: Some(&harness::DPOP_SECRET),
        }
    }
    let cases = [
        ("seed-es256", None),
        ("seed-eddsa", None),
        ("seed-ed25519", None),
        ("seed-private-key", Some(ProofError::PrivateKey)),
        ("seed-alg-none", Some(ProofError::Alg)),
        ("seed-hs256", Some(ProofError::Alg)),
        ("seed-no-nonce", Some(ProofError::Nonce)),
        ("seed-stale", Some(ProofError::Stale)),
    ];
    for (seed, want) in cases {
        let text = std::fs::read_to_string(dir.join(seed)).unwrap();
        let (proof, token) = text.split_once('\n').unwrap_or((&text, "token"));
        let got = dpop::check(proof, &expect(token), &|alg, key, input, sig| {
            verify::verify(alg, &key.material, input, sig)
        });
        assert_eq!(got.err(), want, "{seed}");
    }
}
