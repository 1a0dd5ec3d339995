//! Signatures in the native build: AWS-LC (BoringSSL's fork, through `aws-lc-rs`) for RS*, PS*,
//! ES* and EdDSA, each key parsed once and kept; the core's verifier for HMAC. The Wasm build
//! hands RS* and ES* to Envoy's BoringSSL; every build gives the core's verdicts
//! (`tests/envoy.rs` compares them on a corpus of good and bad tokens, the tests below here).

use super::rsa;
use crate::jwt::keys::{Alg, Jwk, KeyMaterial};
use crate::jwt::verify;
use ::rsa::traits::PublicKeyParts;
use aws_lc_rs::signature::{self, ParsedPublicKey, VerificationAlgorithm};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

/// The most parsed keys kept (key sets are small; past this the table starts again).
const MAX_PARSED: usize = 1024;

/// A key as AWS-LC verifies it: RS* with `e = 65537` on its Montgomery arithmetic directly
/// ([`rsa`]), everything else through `aws-lc-rs`.
enum Verifier {
    Rsa(rsa::Key),
    Aws(ParsedPublicKey),
}

impl Verifier {
    fn verify(&self, input: &[u8], sig: &[u8]) -> bool {
        match self {
            Verifier::Rsa(key) => key.verify(input, sig),
            Verifier::Aws(parsed) => parsed.verify_sig(input, sig).is_ok(),
        }
    }
}

type Parsed = HashMap<(u8, Vec<u8>), Option<Arc<Verifier>>>;

/// Keys parsed for AWS-LC, by algorithm and encoded key, for every worker.
fn parsed() -> &'static RwLock<Parsed> {
    static PARSED: OnceLock<RwLock<Parsed>> = OnceLock::new();
    PARSED.get_or_init(|| RwLock::new(HashMap::new()))
}

/// Whether `sig` over `input` is valid for `key` under `alg`.
pub fn check(alg: Alg, key: &Jwk, input: &[u8], sig: &[u8]) -> bool {
    match algorithm(alg).zip(encoded(alg, key)) {
        Some((params, bytes)) => match public_key(alg, params, key, bytes) {
            Some(parsed) => parsed.verify(input, sig),
            // AWS-LC refused a key the core loaded: let the core judge, as it would in Wasm.
            None => verify::verify(alg, &key.material, input, sig),
        },
        None => verify::verify(alg, &key.material, input, sig),
    }
}

fn algorithm(alg: Alg) -> Option<&'static dyn VerificationAlgorithm> {
    Some(match alg {
        Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Alg::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        Alg::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
        Alg::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
        Alg::ES512 => &signature::ECDSA_P521_SHA512_FIXED,
        Alg::EdDSA => &signature::ED25519,
        Alg::HS256 | Alg::HS384 | Alg::HS512 => return None,
    })
}

/// The key as AWS-LC reads it: DER SubjectPublicKeyInfo (RSA, EC), the 32 bytes (Ed25519);
/// `None` when the key is not of the algorithm's kind (the core then refuses).
fn encoded(alg: Alg, key: &Jwk) -> Option<&[u8]> {
    match (&key.material, alg) {
        (KeyMaterial::Ed25519(k), Alg::EdDSA) => Some(k.as_ref()),
        (KeyMaterial::Ed25519(_) | KeyMaterial::Hmac(_), _) => None,
        _ if alg.fits(&key.material) => key.spki.as_deref(),
        _ => None,
    }
}

/// The parsed form of `bytes` for `alg`, parsed the first time it is seen.
fn public_key(
    alg: Alg,
    params: &'static dyn VerificationAlgorithm,
    key: &Jwk,
    bytes: &[u8],
) -> Option<Arc<Verifier>> {
    let table = parsed();
    let lookup = (alg as u8, bytes.to_vec());
    if let Some(found) = table.read().unwrap_or_else(|p| p.into_inner()).get(&lookup) {
        return found.clone();
    }
    let made = match direct(alg, key) {
        Some(direct) => Some(Arc::new(direct)),
        None => ParsedPublicKey::new(params, bytes)
            .ok()
            .map(|parsed| Arc::new(Verifier::Aws(parsed))),
    };
    let mut table = table.write().unwrap_or_else(|p| p.into_inner());
    if table.len() >= MAX_PARSED {
        table.clear();
    }
    table.insert(lookup, made.clone());
    made
}

/// The direct form of an RS* key with `e = 65537`.
fn direct(alg: Alg, key: &Jwk) -> Option<Verifier> {
    let hash = match alg {
        Alg::RS256 => rsa::Hash::Sha256,
        Alg::RS384 => rsa::Hash::Sha384,
        Alg::RS512 => rsa::Hash::Sha512,
        _ => return None,
    };
    let KeyMaterial::Rsa(public) = &key.material else {
        return None;
    };
    let (n, e) = (public.n().to_bytes_be(), public.e().to_bytes_be());
    rsa::Key::new(&n, &e, hash).map(Verifier::Rsa)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::keys::parse_jwks;
    use crate::testkit::{jwks, Signer};

    /// AWS-LC and the core agree on good signatures, tampered ones, and the high-S twin.
    #[test]
    fn aws_lc_agrees_with_the_core() {
        let signers = [
            Signer::rsa("RS256", "rs", 2048),
            Signer::rsa("PS256", "ps", 2048),
            Signer::es256("es"),
            Signer::es384("es384"),
            Signer::es512("es512"),
            Signer::eddsa("ed"),
            Signer::hmac("HS256", "hs", &[7; 32]),
        ];
        for s in &signers {
            let set = parse_jwks(jwks(&[s.jwk()]).as_bytes()).unwrap();
            let key = &set.keys[0];
            let token = s.token(&serde_json::json!({"sub": "x"}));
            let jws = crate::jwt::parse(&token).unwrap();
            let mut bad = jws.signature.clone();
            bad[0] ^= 1;
            for sig in [&jws.signature, &bad] {
                let input = jws.signing_input.as_bytes();
                let core = verify::verify(jws.alg, &key.material, input, sig);
                assert_eq!(check(jws.alg, key, input, sig), core, "{:?}", jws.alg);
            }
            assert!(check(
                jws.alg,
                key,
                jws.signing_input.as_bytes(),
                &jws.signature
            ));
        }
        let twin = crate::testkit::high_s_twin(&signers[2].token(&serde_json::json!({"sub": "y"})));
        let set = parse_jwks(jwks(&[signers[2].jwk()]).as_bytes()).unwrap();
        let jws = crate::jwt::parse(&twin).unwrap();
        assert!(check(
            Alg::ES256,
            &set.keys[0],
            jws.signing_input.as_bytes(),
            &jws.signature
        ));
    }
}
