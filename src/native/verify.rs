//! Signatures in the native build: `ring` (BoringSSL's assembly) for the algorithms it has, the
//! core's RustCrypto verifier for the rest (ES512, HMAC). The Wasm build hands the same
//! algorithms to Envoy's BoringSSL; both give the core's verdicts (`tests/envoy.rs` compares
//! them on a corpus of good and bad tokens).

use crate::jwt::keys::{Alg, Jwk, KeyMaterial};
use crate::jwt::verify;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use rsa::traits::PublicKeyParts;

/// Whether `signature` over `input` is valid for `key` under `alg`.
pub fn check(alg: Alg, key: &Jwk, input: &[u8], signature: &[u8]) -> bool {
    match fast(alg, &key.material, input, signature) {
        Some(valid) => valid,
        None => verify::verify(alg, &key.material, input, signature),
    }
}

/// `ring`'s verdict, or `None` where it has no such algorithm (or the key is of another kind:
/// the core then refuses).
fn fast(alg: Alg, material: &KeyMaterial, input: &[u8], sig: &[u8]) -> Option<bool> {
    let rsa: Option<&'static signature::RsaParameters> = match alg {
        Alg::RS256 => Some(&signature::RSA_PKCS1_2048_8192_SHA256),
        Alg::RS384 => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
        Alg::RS512 => Some(&signature::RSA_PKCS1_2048_8192_SHA512),
        Alg::PS256 => Some(&signature::RSA_PSS_2048_8192_SHA256),
        Alg::PS384 => Some(&signature::RSA_PSS_2048_8192_SHA384),
        Alg::PS512 => Some(&signature::RSA_PSS_2048_8192_SHA512),
        _ => None,
    };
    match (rsa, material) {
        (Some(params), KeyMaterial::Rsa(key)) => {
            let (n, e) = (key.n().to_bytes_be(), key.e().to_bytes_be());
            let components = RsaPublicKeyComponents { n: &n, e: &e };
            Some(components.verify(params, input, sig).is_ok())
        }
        (Some(_), _) => None,
        (None, KeyMaterial::P256(key)) if alg == Alg::ES256 => {
            let point = key.to_encoded_point(false);
            let key = UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point.as_bytes());
            Some(key.verify(input, sig).is_ok())
        }
        (None, KeyMaterial::P384(key)) if alg == Alg::ES384 => {
            let point = key.to_encoded_point(false);
            let key = UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point.as_bytes());
            Some(key.verify(input, sig).is_ok())
        }
        (None, KeyMaterial::Ed25519(key)) if alg == Alg::EdDSA => {
            let key = UnparsedPublicKey::new(&signature::ED25519, key.as_ref());
            Some(key.verify(input, sig).is_ok())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::keys::parse_jwks;
    use crate::testkit::{jwks, Signer};

    /// `ring` and the core agree on good signatures, tampered ones, and the high-S twin.
    #[test]
    fn ring_agrees_with_the_core() {
        let signers = [
            Signer::rsa("RS256", "rs", 2048),
            Signer::rsa("PS256", "ps", 2048),
            Signer::es256("es"),
            Signer::es384("es384"),
            Signer::eddsa("ed"),
            Signer::es512("es512"),
        ];
        for s in &signers {
            let set = parse_jwks(jwks(&[s.jwk()]).as_bytes()).unwrap();
            let key = &set.keys[0];
            let token = s.token(&serde_json::json!({"sub": "x"}));
            let jws = crate::jwt::parse(&token).unwrap();
            let alg = jws.alg;
            let mut bad = jws.signature.clone();
            bad[0] ^= 1;
            for sig in [&jws.signature, &bad] {
                let core = verify::verify(alg, &key.material, jws.signing_input.as_bytes(), sig);
                assert_eq!(
                    check(alg, key, jws.signing_input.as_bytes(), sig),
                    core,
                    "{alg:?}"
                );
            }
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
