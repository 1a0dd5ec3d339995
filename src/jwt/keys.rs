//! JWKS (RFC 7517) to verification keys, and which key may check which algorithm.

use super::b64url;
use crate::json;
use rsa::{traits::PublicKeyParts, BigUint, RsaPublicKey};
use serde_json::{Map, Value};
use std::fmt;

/// The JWS algorithms this filter verifies. `none` is deliberately absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    ES512,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl Alg {
    /// The algorithm named by a JOSE `alg` value (case-sensitive, RFC 7515 §4.1.1).
    pub fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "ES512" => Alg::ES512,
            "EdDSA" => Alg::EdDSA,
            "HS256" => Alg::HS256,
            "HS384" => Alg::HS384,
            "HS512" => Alg::HS512,
            _ => return None,
        })
    }

    /// Whether `key` may verify this algorithm: the key type must fit (never HMAC with a public
    /// key, never RSA with an EC key), the curve must be the algorithm's curve, and an HMAC key
    /// must be at least as long as the hash (RFC 7518 §3.2).
    pub fn fits(self, key: &KeyMaterial) -> bool {
        match (self, key) {
            (Alg::RS256 | Alg::RS384 | Alg::RS512, KeyMaterial::Rsa(_)) => true,
            (Alg::PS256 | Alg::PS384 | Alg::PS512, KeyMaterial::Rsa(_)) => true,
            (Alg::ES256, KeyMaterial::P256(_)) => true,
            (Alg::ES384, KeyMaterial::P384(_)) => true,
            (Alg::ES512, KeyMaterial::P521(_)) => true,
            (Alg::EdDSA, KeyMaterial::Ed25519(_)) => true,
            (Alg::HS256, KeyMaterial::Hmac(k)) => k.len() >= 32,
            (Alg::HS384, KeyMaterial::Hmac(k)) => k.len() >= 48,
            (Alg::HS512, KeyMaterial::Hmac(k)) => k.len() >= 64,
            _ => false,
        }
    }
}

/// A parsed public (or, for `oct`, shared) key, ready to verify with no per-request parsing.
#[derive(Clone)]
pub enum KeyMaterial {
    Rsa(RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    P521(p521::ecdsa::VerifyingKey),
    Ed25519(ed25519_compact::PublicKey),
    Hmac(Vec<u8>),
}

impl fmt::Debug for KeyMaterial {
    // Never print key bytes: an HMAC key is a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyMaterial::Rsa(_) => "RSA",
            KeyMaterial::P256(_) => "EC P-256",
            KeyMaterial::P384(_) => "EC P-384",
            KeyMaterial::P521(_) => "EC P-521",
            KeyMaterial::Ed25519(_) => "OKP Ed25519",
            KeyMaterial::Hmac(_) => "oct",
        })
    }
}

/// One usable key of a JWKS.
#[derive(Debug, Clone)]
pub struct Jwk {
    pub kid: Option<String>,
    /// The key's own `alg`, when the JWKS pins one: the token's `alg` must then equal it.
    pub alg: Option<Alg>,
    pub material: KeyMaterial,
    /// The key as DER SubjectPublicKeyInfo, for the host's verifier (RSA and EC keys), made
    /// once when the key is loaded.
    pub spki: Option<Vec<u8>>,
}

impl Jwk {
    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Alg) -> bool {
        self.alg.is_none_or(|pinned| pinned == alg) && alg.fits(&self.material)
    }
}

/// The usable keys of a JWKS, and a line for each key that was skipped as bad.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Jwk>,
    pub problems: Vec<String>,
}

/// The smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus accepted, in bits (bounds the cost of one verification).
pub const MAX_RSA_BITS: usize = 8192;
/// The largest JWKS document read, in bytes.
pub const MAX_JWKS_BYTES: usize = 512 * 1024;

/// Parses a JWKS document. A document that is not a JWKS at all is an `Err`; a bad key inside a
/// good document is skipped and described in `problems` (never with key bytes in it), so one
/// broken key at the identity provider does not take the others down.
pub fn parse_jwks(text: &[u8]) -> Result<KeySet, String> {
    if text.len() > MAX_JWKS_BYTES {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    let doc = json::parse_object(text).map_err(|e| match e {
        json::JsonError::Invalid => "not valid JSON (or a member name repeated)".to_string(),
        json::JsonError::NotObject => "not a JSON object".to_string(),
    })?;
    let Some(Value::Array(entries)) = doc.get("keys") else {
        return Err("without a \"keys\" array".to_string());
    };
    let mut set = KeySet::default();
    for (i, entry) in entries.iter().enumerate() {
        let Value::Object(jwk) = entry else {
            set.problems.push(format!("keys[{i}]: not a JSON object"));
            continue;
        };
        match parse_jwk(jwk) {
            Ok(Some(key)) => {
                let duplicate = key.kid.is_some() && set.keys.iter().any(|k| k.kid == key.kid);
                if duplicate {
                    set.problems
                        .push(format!("keys[{i}]: kid repeats an earlier key's kid"));
                } else {
                    set.keys.push(key);
                }
            }
            Ok(None) => {}
            Err(why) => set.problems.push(format!("keys[{i}]: {why}")),
        }
    }
    Ok(set)
}

/// One JWK: `Ok(None)` for a key that is not for signatures (`use` other than `sig`, or an
/// encryption `alg`), which is skipped silently as every JOSE library does.
fn parse_jwk(jwk: &Map<String, Value>) -> Result<Option<Jwk>, String> {
    let text = |name: &str| -> Result<Option<&str>, String> {
        match jwk.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("\"{name}\" is not a string")),
        }
    };
    if !verifies(text("use")?, jwk.get("key_ops"))? {
        return Ok(None);
    }
    let alg = match text("alg")? {
        None => None,
        Some(name) => match Alg::from_name(name) {
            Some(alg) => Some(alg),
            None => return Ok(None),
        },
    };
    let kid = text("kid")?.map(str::to_owned);
    let member = |name: &str| -> Result<Vec<u8>, String> {
        let value = text(name)?.ok_or_else(|| format!("\"{name}\" is missing"))?;
        b64url(value).ok_or_else(|| format!("\"{name}\" is not base64url"))
    };
    let material = match text("kty")? {
        Some("RSA") => rsa_key(&member("n")?, &member("e")?)?,
        Some("EC") => ec_key(text("crv")?, &member("x")?, &member("y")?)?,
        Some("OKP") => match text("crv")? {
            Some("Ed25519") => KeyMaterial::Ed25519(
                ed25519_compact::PublicKey::from_slice(&member("x")?)
                    .map_err(|_| "not an Ed25519 public key")?,
            ),
            _ => return Err("OKP key with an unsupported \"crv\"".to_string()),
        },
        Some("oct") => {
            let k = member("k")?;
            if k.len() < 32 {
                return Err("oct key shorter than 256 bits".to_string());
            }
            KeyMaterial::Hmac(k)
        }
        Some(_) => return Err("unsupported \"kty\"".to_string()),
        None => return Err("\"kty\" is missing".to_string()),
    };
    let spki = super::host::spki_der(&material);
    let key = Jwk {
        kid,
        alg,
        material,
        spki,
    };
    if let Some(alg) = alg {
        if !alg.fits(&key.material) {
            return Err("\"alg\" does not fit the key type".to_string());
        }
    }
    Ok(Some(key))
}

/// Why an inline public key (a DPoP proof's `jwk`) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicKeyError {
    /// It carries a private member (`d`, an RSA prime, a symmetric `k`).
    Private,
    /// Not a usable RSA (2048 bits or more), EC or OKP signature key.
    Unusable,
}

/// The members that make a JWK private (RFC 7518 §6.2.2, §6.3.2, §6.4.1; RFC 8037 §2).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// A public signature key given inline, with its RFC 7638 thumbprint (base64url SHA-256 of the
/// required members in lexicographic order): RSA of at least 2048 bits, EC or OKP; a key with a
/// private member, or an `oct` key, is refused.
pub fn public_jwk(jwk: &Map<String, Value>) -> Result<(Jwk, String), PublicKeyError> {
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(PublicKeyError::Private);
    }
    let required: &[&str] = match jwk.get("kty").and_then(Value::as_str) {
        Some("RSA") => &["e", "kty", "n"],
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("OKP") => &["crv", "kty", "x"],
        _ => return Err(PublicKeyError::Unusable),
    };
    let key = match parse_jwk(jwk) {
        Ok(Some(key)) => key,
        _ => return Err(PublicKeyError::Unusable),
    };
    let mut canonical = String::from("{");
    for (i, name) in required.iter().enumerate() {
        let value = jwk.get(*name).ok_or(PublicKeyError::Unusable)?;
        if i > 0 {
            canonical.push(',');
        }
        canonical.push_str(&format!("\"{name}\":{value}"));
    }
    canonical.push('}');
    Ok((key, sha256_b64url(canonical.as_bytes())))
}

/// base64url (no padding) of the SHA-256 of `bytes`.
pub fn sha256_b64url(bytes: &[u8]) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use sha2::{Digest, Sha256};
    URL_SAFE_NO_PAD.encode(Sha256::digest(bytes))
}

/// Whether a key with this `use` and `key_ops` may verify signatures: `use` must be `sig` when
/// given, and `key_ops` (RFC 7517 §4.3), when given, must list `verify`.
fn verifies(usage: Option<&str>, ops: Option<&Value>) -> Result<bool, String> {
    if usage.is_some_and(|u| u != "sig") {
        return Ok(false);
    }
    match ops {
        None => Ok(true),
        Some(Value::Array(ops)) => Ok(ops.iter().any(|op| op.as_str() == Some("verify"))),
        Some(_) => Err("\"key_ops\" is not an array".to_string()),
    }
}

/// An EC public key from its curve name and coordinates (short ones left-padded by `sec1`).
fn ec_key(crv: Option<&str>, x: &[u8], y: &[u8]) -> Result<KeyMaterial, String> {
    Ok(match crv {
        Some("P-256") => KeyMaterial::P256(
            p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1(x, y, 32)?)
                .map_err(|_| "not a point on P-256")?,
        ),
        Some("P-384") => KeyMaterial::P384(
            p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1(x, y, 48)?)
                .map_err(|_| "not a point on P-384")?,
        ),
        Some("P-521") => KeyMaterial::P521(
            p521::ecdsa::VerifyingKey::from_sec1_bytes(&sec1(x, y, 66)?)
                .map_err(|_| "not a point on P-521")?,
        ),
        _ => return Err("EC key with an unsupported \"crv\"".to_string()),
    })
}

fn rsa_key(modulus: &[u8], e: &[u8]) -> Result<KeyMaterial, String> {
    let n = BigUint::from_bytes_be(modulus);
    let bits = n.bits();
    if bits < MIN_RSA_BITS {
        return Err(format!("RSA modulus of {bits} bits, under {MIN_RSA_BITS}"));
    }
    if has_roca_structure(modulus) {
        return Err(
            "RSA modulus with the ROCA structure (CVE-2017-15361): its private key can be computed"
                .to_string(),
        );
    }
    let key = RsaPublicKey::new_with_max_size(n, BigUint::from_bytes_be(e), MAX_RSA_BITS)
        .map_err(|_| "not a valid RSA public key".to_string())?;
    debug_assert!(key.size() * 8 >= MIN_RSA_BITS);
    Ok(KeyMaterial::Rsa(key))
}

/// The SEC1 uncompressed encoding of a point with coordinates of `len` bytes. Shorter ones are
/// left-padded with zeros, as BoringSSL and `jwt_authn` read them (some JWKS drop a leading
/// zero byte: jwt_verify_lib's P-521 test key has a 65-byte `y`); longer ones are refused.
fn sec1(x: &[u8], y: &[u8], len: usize) -> Result<Vec<u8>, String> {
    if x.len() > len || y.len() > len {
        return Err(format!("EC coordinates longer than {len} bytes"));
    }
    let mut point = Vec::with_capacity(1 + 2 * len);
    point.push(0x04);
    for coordinate in [x, y] {
        point.resize(point.len() + len - coordinate.len(), 0);
        point.extend_from_slice(coordinate);
    }
    Ok(point)
}

/// The primes whose residues fingerprint ROCA moduli (the published detector's set).
const ROCA_PRIMES: [u32; 38] = [
    3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97,
    101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
];

/// Whether an RSA modulus (big-endian bytes) has the structure of the keys Infineon's RSALib
/// generated (ROCA, CVE-2017-15361): its primes are `k·M + 65537^a mod M` for a primorial `M`,
/// so the modulus modulo each small prime of `M` lies in the subgroup 65537 generates. A random
/// modulus passes all 38 tests with a probability near 2^-154; a ROCA one always does.
pub fn has_roca_structure(modulus: &[u8]) -> bool {
    ROCA_PRIMES.iter().all(|&p| {
        let residue = modulus
            .iter()
            .fold(0u32, |r, &b| (r * 256 + u32::from(b)) % p);
        let generator = 65_537 % p;
        let mut power = 1;
        loop {
            if power == residue {
                return true;
            }
            power = power * generator % p;
            if power == 1 {
                return false;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{b64, jwks, Signer, WYCHEPROOF_ROCA_N};
    use serde_json::json;

    /// Wycheproof's ordinary RS256 key of the same file (group `rs256`), which it expects
    /// accepted.
    const WYCHEPROOF_RS256_N: &str = "kqGboBfAWttWPCA-0cGRgsY6SaYoIARt0B_PkaEcIq9HPYNdu9n6UuWHuuTHrjF_ZoQW97r5HaAorNvrMEGTGdxCHZdEtkHvNVVmrtxTBLiQCbCozXhFoIrVcr3qUBrdGnNn_M3jJi7Wg7p_-x62nS5gNG875oyheRkutHsQXikFZwsN3q_TsPNOVlCiHy8mxzaFTUQGm-X8UYexFyAivlDSjgDJLAZSWfxd7k9Gxuwa3AUfQqQcVcegmgKGCaErQ3qQbh1x7WB6iopE3_-GZ8HMAVtR9AmrVscqYsnjhaCehfAI0iKKs8zXr8tISc0ORbaalrkk03H1ZrsEnDKEWQ";

    fn modulus(text: &str) -> Vec<u8> {
        b64url(text).unwrap()
    }

    #[test]
    fn roca_moduli_are_refused() {
        assert!(has_roca_structure(&modulus(WYCHEPROOF_ROCA_N)));
        assert!(!has_roca_structure(&modulus(WYCHEPROOF_RS256_N)));
        // A power of 65537 has the structure by construction; one more than it has not.
        let power = (0..130).fold(BigUint::from(1u32), |acc, _| acc * BigUint::from(65_537u32));
        assert!(has_roca_structure(&power.to_bytes_be()));
        assert!(!has_roca_structure(&(power + 2u32).to_bytes_be()));
        for _ in 0..3 {
            let n = Signer::rsa("RS256", "k", 2048).jwk()["n"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(!has_roca_structure(&modulus(&n)));
        }
        let roca = json!({"kty": "RSA", "kid": "roca", "n": WYCHEPROOF_ROCA_N, "e": "AQAB"});
        let fine = json!({"kty": "RSA", "kid": "fine", "n": WYCHEPROOF_RS256_N, "e": "AQAB"});
        let set = parse_jwks(jwks(&[roca, fine]).as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.keys[0].kid.as_deref(), Some("fine"));
        assert!(set.problems[0].starts_with("keys[0]: RSA modulus with the ROCA structure"));
    }

    #[test]
    fn short_ec_coordinates_are_left_padded() {
        let (signer, short) = Signer::es512_short_coordinate("p521");
        let set = parse_jwks(jwks(std::slice::from_ref(&short)).as_bytes()).unwrap();
        assert_eq!(set.problems, Vec::<String>::new());
        let token = signer.token(&json!({"sub": "a"}));
        let jws = crate::jwt::parse(&token).unwrap();
        assert_eq!(crate::jwt::verify_signature(&jws, &set.keys), Ok(()));
        // The DER key for the host's verifier is the padded point too.
        let full = parse_jwks(jwks(&[signer.jwk()]).as_bytes()).unwrap();
        assert_eq!(set.keys[0].spki, full.keys[0].spki);
        // Longer than the curve's size: refused.
        let mut long = signer.jwk();
        let x = crate::jwt::b64url(long["x"].as_str().unwrap()).unwrap();
        long["x"] = json!(b64([&[0u8][..], &x].concat()));
        let set = parse_jwks(jwks(&[long]).as_bytes()).unwrap();
        assert!(
            set.problems[0].contains("longer than 66 bytes"),
            "{:?}",
            set.problems
        );
        // P-256 with a short coordinate: padded, then checked to be on the curve.
        let short = json!({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"});
        let set = parse_jwks(jwks(&[short]).as_bytes()).unwrap();
        assert!(
            set.problems[0].contains("not a point on P-256"),
            "{:?}",
            set.problems
        );
    }

    #[test]
    fn key_ops_must_allow_verify() {
        let signer = Signer::es256("ops");
        let with_ops = |ops: Value| {
            let mut jwk = signer.jwk();
            jwk["key_ops"] = ops;
            parse_jwks(jwks(&[jwk]).as_bytes()).unwrap()
        };
        assert_eq!(with_ops(json!(["verify"])).keys.len(), 1);
        assert_eq!(with_ops(json!(["sign", "verify"])).keys.len(), 1);
        for skipped in [json!(["encrypt"]), json!([]), json!(["sign"]), json!([7])] {
            let set = with_ops(skipped.clone());
            assert_eq!((set.keys.len(), set.problems.len()), (0, 0), "{skipped}");
        }
        let set = with_ops(json!("verify"));
        assert_eq!(
            set.problems,
            vec!["keys[0]: \"key_ops\" is not an array".to_string()]
        );
    }
}
