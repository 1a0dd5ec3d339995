//! Signature verification of a JWS signing input with one key.

use super::keys::{Alg, KeyMaterial};
use hmac::{Hmac, Mac};
use rsa::{Pkcs1v15Sign, Pss};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// Whether `signature` is a valid `alg` signature of `input` under `key`. The caller has already
/// checked `alg.fits(key)`; a mismatch here is simply `false`. Signature encodings are the JWS
/// ones: RSA signatures as big-endian octets of the modulus length, ECDSA as raw `r || s`
/// (RFC 7518 §3.4), Ed25519 as 64 octets, HMAC as the full-length tag compared in constant time.
pub fn verify(alg: Alg, key: &KeyMaterial, input: &[u8], signature: &[u8]) -> bool {
    use p256::ecdsa::signature::Verifier;
    match (alg, key) {
        (Alg::RS256, KeyMaterial::Rsa(k)) => k
            .verify(
                Pkcs1v15Sign::new::<Sha256>(),
                &Sha256::digest(input),
                signature,
            )
            .is_ok(),
        (Alg::RS384, KeyMaterial::Rsa(k)) => k
            .verify(
                Pkcs1v15Sign::new::<Sha384>(),
                &Sha384::digest(input),
                signature,
            )
            .is_ok(),
        (Alg::RS512, KeyMaterial::Rsa(k)) => k
            .verify(
                Pkcs1v15Sign::new::<Sha512>(),
                &Sha512::digest(input),
                signature,
            )
            .is_ok(),
        (Alg::PS256, KeyMaterial::Rsa(k)) => k
            .verify(Pss::new::<Sha256>(), &Sha256::digest(input), signature)
            .is_ok(),
        (Alg::PS384, KeyMaterial::Rsa(k)) => k
            .verify(Pss::new::<Sha384>(), &Sha384::digest(input), signature)
            .is_ok(),
        (Alg::PS512, KeyMaterial::Rsa(k)) => k
            .verify(Pss::new::<Sha512>(), &Sha512::digest(input), signature)
            .is_ok(),
        (Alg::ES256, KeyMaterial::P256(k)) => p256::ecdsa::Signature::from_slice(signature)
            .is_ok_and(|sig| k.verify(input, &sig).is_ok()),
        (Alg::ES384, KeyMaterial::P384(k)) => p384::ecdsa::Signature::from_slice(signature)
            .is_ok_and(|sig| k.verify(input, &sig).is_ok()),
        (Alg::ES512, KeyMaterial::P521(k)) => p521::ecdsa::Signature::from_slice(signature)
            .is_ok_and(|sig| k.verify(input, &sig).is_ok()),
        (Alg::EdDSA, KeyMaterial::Ed25519(k)) => ed25519_compact::Signature::from_slice(signature)
            .is_ok_and(|sig| k.verify(input, &sig).is_ok()),
        (Alg::HS256, KeyMaterial::Hmac(k)) => hmac_ok::<Hmac<Sha256>>(k, input, signature),
        (Alg::HS384, KeyMaterial::Hmac(k)) => hmac_ok::<Hmac<Sha384>>(k, input, signature),
        (Alg::HS512, KeyMaterial::Hmac(k)) => hmac_ok::<Hmac<Sha512>>(k, input, signature),
        _ => false,
    }
}

fn hmac_ok<M: Mac + hmac::digest::KeyInit>(key: &[u8], input: &[u8], tag: &[u8]) -> bool {
    match <M as hmac::digest::KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(input);
            // verify_slice compares in constant time and refuses truncated tags.
            mac.verify_slice(tag).is_ok()
        }
        Err(_) => false,
    }
}
