//! Compact JWS (RFC 7515) tokens: strict parsing, key choice and signature verification.

pub mod host;
pub mod keys;
pub mod profile;
pub mod verify;

use crate::json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use keys::{Alg, Jwk};
use serde_json::{Map, Value};

/// The longest token read, in bytes. Real tokens with many groups reach a few KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was refused. Each maps to a fixed `error_description` that never echoes input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    TooLarge,
    Malformed,
    AlgNone,
    UnsupportedAlg,
    UnsupportedCrit,
    Nested,
    UnknownKey,
    BadSignature,
}

impl TokenError {
    pub fn description(self) -> &'static str {
        match self {
            TokenError::TooLarge => "The access token is too large",
            TokenError::Malformed => "The access token is not a well-formed JWT",
            TokenError::AlgNone => "Unsigned tokens are not accepted",
            TokenError::UnsupportedAlg => "The token's signing algorithm is not supported",
            TokenError::UnsupportedCrit => {
                "The token requires a critical extension that is not supported"
            }
            TokenError::Nested => "Nested tokens are not accepted",
            TokenError::UnknownKey => "No known key fits the token's key id and algorithm",
            TokenError::BadSignature => "The token signature is invalid",
        }
    }
}

/// Strict base64url without padding (RFC 7515 §2): only `A-Z a-z 0-9 - _`, no `=`, and the
/// unused bits of the last character must be zero, so every byte string has one encoding.
pub fn b64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// A parsed, not yet verified, compact JWS.
#[derive(Debug)]
pub struct Jws<'a> {
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`: the bytes the signature covers.
    pub signing_input: &'a str,
    pub alg: Alg,
    pub kid: Option<String>,
    /// The header's `typ`, when it is a string.
    pub typ: Option<String>,
    pub signature: Vec<u8>,
    pub claims: Map<String, Value>,
}

/// The three segments of a compact serialization, if it has exactly three.
pub(crate) fn segments(token: &str) -> Option<(&str, &str, &str)> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => Some((h, p, s)),
        _ => None,
    }
}

/// A header (or payload) segment decoded and parsed as a JSON object.
pub(crate) fn json_segment(h64: &str) -> Option<Map<String, Value>> {
    b64url(h64).and_then(|bytes| json::parse_object(&bytes).ok())
}

/// Parses a compact JWS: exactly three non-empty base64url segments, a header that is a JSON
/// object with a supported `alg` and no `crit`, and a payload that is a JSON object. Header
/// members such as `jku`, `x5u`, `jwk` and `x5c` are ignored: keys come only from configuration.
pub fn parse(token: &str) -> Result<Jws<'_>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge);
    }
    let (h64, p64, s64) = segments(token).ok_or(TokenError::Malformed)?;
    if h64.is_empty() || p64.is_empty() || s64.is_empty() {
        return Err(TokenError::Malformed);
    }
    let header = json_segment(h64).ok_or(TokenError::Malformed)?;
    finish(token, header, p64, s64)
}

/// Whether a token looks like a JWT: three segments, the first a JSON object.
pub fn is_jwt_shaped(token: &str) -> bool {
    segments(token).is_some_and(|(h64, _, _)| json_segment(h64).is_some())
}

/// For a provider that both verifies JWTs and introspects: `None` if `token` is not
/// [JWT-shaped](is_jwt_shaped) (it goes to introspection), else what [`parse`] says of it; the
/// header is decoded and parsed once for both questions.
pub fn parse_if_jwt(token: &str) -> Option<Result<Jws<'_>, TokenError>> {
    let (h64, p64, s64) = segments(token)?;
    let header = json_segment(h64)?;
    Some(if token.len() > MAX_TOKEN_BYTES {
        Err(TokenError::TooLarge)
    } else if p64.is_empty() || s64.is_empty() {
        Err(TokenError::Malformed)
    } else {
        finish(token, header, p64, s64)
    })
}

/// The rest of [`parse`], once the header is an object.
fn finish<'a>(
    token: &'a str,
    mut header: Map<String, Value>,
    p64: &str,
    s64: &str,
) -> Result<Jws<'a>, TokenError> {
    let alg = match header.get("alg") {
        Some(Value::String(name)) if name.eq_ignore_ascii_case("none") => {
            return Err(TokenError::AlgNone)
        }
        Some(Value::String(name)) => Alg::from_name(name).ok_or(TokenError::UnsupportedAlg)?,
        _ => return Err(TokenError::Malformed),
    };
    // This filter implements no JWS extension, so any `crit` is one it does not understand
    // (RFC 7515 §4.1.11); that includes `b64` (RFC 7797), which must be listed in `crit`.
    if header.contains_key("crit") {
        return Err(TokenError::UnsupportedCrit);
    }
    // A nested JWT (RFC 7519 §5.2) signs or encrypts another JWT; this filter does not unwrap
    // them, and a payload claimed to be one must not be read as claims.
    if let Some(Value::String(cty)) = header.get("cty") {
        if cty.eq_ignore_ascii_case("JWT") {
            return Err(TokenError::Nested);
        }
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(TokenError::Malformed),
    };
    let typ = match header.remove("typ") {
        Some(Value::String(typ)) => Some(typ),
        _ => None,
    };
    let claims = b64url(p64)
        .and_then(|bytes| json::parse_object(&bytes).ok())
        .ok_or(TokenError::Malformed)?;
    let signature = b64url(s64).ok_or(TokenError::Malformed)?;
    Ok(Jws {
        signing_input: &token[..token.len() - s64.len() - 1],
        alg,
        kid,
        typ,
        signature,
        claims,
    })
}

/// Verifies `jws` against `keys` in Wasm; see [`verify_signature_with`].
pub fn verify_signature(jws: &Jws<'_>, keys: &[Jwk]) -> Result<(), TokenError> {
    verify_signature_with(jws, keys, &|alg, key, input, sig| {
        verify::verify(alg, &key.material, input, sig)
    })
}

/// A signature check: algorithm, key, signing input, signature; true if valid.
pub type Check<'a> = &'a dyn Fn(Alg, &Jwk, &[u8], &[u8]) -> bool;

/// Verifies `jws` against `keys` with `check`. A token with a `kid` is checked with the key of
/// that `kid` only; a token without one with each key that accepts its `alg`, until one
/// verifies.
pub fn verify_signature_with(
    jws: &Jws<'_>,
    keys: &[Jwk],
    check: Check<'_>,
) -> Result<(), TokenError> {
    let mut candidates = keys
        .iter()
        .filter(|key| jws.kid.is_none() || key.kid == jws.kid)
        .filter(|key| key.accepts(jws.alg))
        .peekable();
    if candidates.peek().is_none() {
        return Err(TokenError::UnknownKey);
    }
    let input = jws.signing_input.as_bytes();
    if candidates.any(|key| check(jws.alg, key, input, &jws.signature)) {
        Ok(())
    } else {
        Err(TokenError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::keys::{parse_jwks, KeySet};
    use super::*;
    use crate::testkit::{b64, jwks, Signer};
    use serde_json::json;
    use std::sync::OnceLock;

    fn rsa() -> &'static Signer {
        static K: OnceLock<Signer> = OnceLock::new();
        K.get_or_init(|| Signer::rsa("RS256", "rsa-1", 2048))
    }

    fn rsa_other() -> &'static Signer {
        static K: OnceLock<Signer> = OnceLock::new();
        K.get_or_init(|| Signer::rsa("RS256", "rsa-1", 2048))
    }

    fn set(signers: &[&Signer]) -> KeySet {
        let keys: Vec<_> = signers.iter().map(|s| s.jwk()).collect();
        parse_jwks(jwks(&keys).as_bytes()).unwrap()
    }

    fn check(token: &str, keys: &KeySet) -> Result<(), TokenError> {
        let jws = parse(token)?;
        verify_signature(&jws, &keys.keys)
    }

    fn claims() -> serde_json::Value {
        json!({"sub":"alice","exp": 4_000_000_000u64})
    }

    #[test]
    fn every_algorithm_verifies_and_detects_tampering() {
        let hmac = Signer::hmac("HS256", "h", &[7u8; 64]);
        let signers = [
            Signer::es256("e256"),
            Signer::es384("e384"),
            Signer::es512("e512"),
            Signer::eddsa("ed"),
        ];
        let mut all: Vec<&Signer> = signers.iter().collect();
        all.push(rsa());
        all.push(&hmac);
        let keys = set(&all);
        let mut cases: Vec<(&Signer, &str)> = signers.iter().map(|s| (s, s.alg)).collect();
        for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
            cases.push((rsa(), alg));
        }
        for alg in ["HS256", "HS384", "HS512"] {
            cases.push((&hmac, alg));
        }
        for (signer, alg) in cases {
            let mut header = signer.header();
            header["alg"] = json!(alg);
            let token = signer.token_with(&header, &claims());
            assert_eq!(check(&token, &keys), Ok(()), "{alg}");
            // Change one claim, keep the signature.
            let (_, rest) = token.split_once('.').unwrap();
            let (_, sig) = rest.split_once('.').unwrap();
            let forged = format!(
                "{}.{}.{sig}",
                b64(header.to_string()),
                b64(json!({"sub":"admin","exp":4_000_000_000u64}).to_string())
            );
            assert_eq!(
                check(&forged, &keys),
                Err(TokenError::BadSignature),
                "{alg}"
            );
        }
    }

    #[test]
    fn interoperates_with_jwt_simple() {
        use jwt_simple::prelude::*;
        let pair = RS256KeyPair::generate(2048).unwrap().with_key_id("js");
        let c = pair.public_key().to_components();
        let jwk = json!({"kty":"RSA","kid":"js","n":b64(&c.n),"e":b64(&c.e)});
        let keys = parse_jwks(jwks(&[jwk]).as_bytes()).unwrap();
        let token = pair
            .sign(Claims::create(Duration::from_mins(5)).with_subject("bob"))
            .unwrap();
        let jws = parse(&token).unwrap();
        assert_eq!(verify_signature(&jws, &keys.keys), Ok(()));
        assert_eq!(jws.claims["sub"], "bob");

        let ec = ES256KeyPair::generate().with_key_id("ec");
        let point = ec.public_key().public_key().to_bytes_uncompressed();
        let jwk = json!({"kty":"EC","crv":"P-256","kid":"ec",
                         "x":b64(&point[1..33]),"y":b64(&point[33..])});
        let keys = parse_jwks(jwks(&[jwk]).as_bytes()).unwrap();
        let token = ec.sign(Claims::create(Duration::from_mins(5))).unwrap();
        assert_eq!(check(&token, &keys), Ok(()));
    }

    #[test]
    fn wrong_key_with_known_kid() {
        // Same kid, different key: the signature must fail, not fall back to another key.
        let keys = set(&[rsa()]);
        let token = rsa_other().token(&claims());
        assert_eq!(check(&token, &keys), Err(TokenError::BadSignature));
    }

    #[test]
    fn kid_selection() {
        let a = Signer::es256("a");
        let b = Signer::es256("b");
        let no_kid = Signer::es256("");
        let keys = set(&[&a, &b]);
        assert_eq!(check(&b.token(&claims()), &keys), Ok(()));
        let unknown = Signer::es256("zzz");
        assert_eq!(
            check(&unknown.token(&claims()), &keys),
            Err(TokenError::UnknownKey)
        );
        // Without kid, every fitting key is tried.
        let keys = set(&[&a, &no_kid]);
        let token = no_kid.token(&claims());
        assert_eq!(check(&token, &keys), Ok(()));
        let stranger = Signer::es256("");
        assert_eq!(
            check(&stranger.token(&claims()), &keys),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn algorithm_attacks() {
        let keys = set(&[rsa()]);
        for none in ["none", "None", "NONE", "nOnE"] {
            let t = format!(
                "{}.{}.",
                b64(json!({"alg":none,"kid":"rsa-1"}).to_string()),
                b64(claims().to_string())
            );
            assert_eq!(check(&t, &keys), Err(TokenError::Malformed), "{none}");
            let t = format!("{t}AAAA");
            assert_eq!(check(&t, &keys), Err(TokenError::AlgNone), "{none}");
        }
        // HS256 keyed with the RSA public key (as JWK modulus bytes, and as the JWK text).
        let Private::Rsa(k) = &rsa().key else {
            unreachable!()
        };
        use rsa::traits::PublicKeyParts;
        for secret in [k.n().to_bytes_be(), rsa().jwk().to_string().into_bytes()] {
            let forger = Signer::hmac("HS256", "rsa-1", &secret);
            assert_eq!(
                check(&forger.token(&claims()), &keys),
                Err(TokenError::UnknownKey)
            );
        }
        // ES256 header pointing at the RSA key.
        let ec = Signer::es256("rsa-1");
        assert_eq!(
            check(&ec.token(&claims()), &keys),
            Err(TokenError::UnknownKey)
        );
        // Unknown and lower-case algorithm names.
        for alg in ["rs256", "RS1", "HS1", "ES256K", ""] {
            let t = format!(
                "{}.{}.AAAA",
                b64(json!({"alg":alg}).to_string()),
                b64(claims().to_string())
            );
            assert_eq!(check(&t, &keys), Err(TokenError::UnsupportedAlg), "{alg}");
        }
        // A crit header, even one naming a known parameter.
        let mut h = rsa().header();
        h["crit"] = json!(["exp"]);
        h["exp"] = json!(1);
        assert_eq!(
            check(&rsa().token_with(&h, &claims()), &keys),
            Err(TokenError::UnsupportedCrit)
        );
        // A nested JWT, whatever its payload looks like; other content types are ignored.
        for cty in ["JWT", "jwt"] {
            let mut h = rsa().header();
            h["cty"] = json!(cty);
            assert_eq!(
                check(&rsa().token_with(&h, &claims()), &keys),
                Err(TokenError::Nested)
            );
        }
        let mut h = rsa().header();
        h["cty"] = json!("json");
        assert_eq!(check(&rsa().token_with(&h, &claims()), &keys), Ok(()));
        // jku / x5u / jwk headers are ignored: keys come from configuration only.
        let mut h = rsa().header();
        h["jku"] = json!("https://evil.example/jwks");
        h["x5u"] = json!("https://evil.example/cert");
        assert_eq!(check(&rsa().token_with(&h, &claims()), &keys), Ok(()));
    }

    use super::super::testkit::Private;

    #[test]
    fn ecdsa_zero_and_wrong_length_signatures() {
        let ec = Signer::es256("e");
        let keys = set(&[&ec]);
        let good = ec.token(&claims());
        let input = good.rsplit_once('.').unwrap().0;
        for sig in [
            vec![0u8; 64],
            vec![0u8; 65],
            vec![1u8; 32],
            vec![0xffu8; 64],
        ] {
            let t = format!("{input}.{}", b64(&sig));
            assert_eq!(check(&t, &keys), Err(TokenError::BadSignature));
        }
    }

    #[test]
    fn structure() {
        let keys = set(&[rsa()]);
        let good = rsa().token(&claims());
        let parts: Vec<&str> = good.split('.').collect();
        let bad = [
            format!("{}.{}", parts[0], parts[1]),
            format!("{good}.{}", parts[2]),
            format!("{}.{}.", parts[0], parts[1]),
            format!("{}..{}", parts[0], parts[2]),
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
            format!("{}.{}+.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}", parts[0], b64("[1,2]"), parts[2]),
            format!("{}.{}.{}", parts[0], b64("{\"a\":1,\"a\":2}"), parts[2]),
            format!("{}.{}.{}", b64("[]"), parts[1], parts[2]),
            format!("{}.{}.{}", parts[0], b64(b"{\"a\":\"\xff\"}"), parts[2]),
            format!(
                "{}.{}.{}",
                b64("{\"alg\":\"RS256\",\"kid\":7}"),
                parts[1],
                parts[2]
            ),
            format!("{}.{}.{}", b64("{\"alg\":1}"), parts[1], parts[2]),
            String::new(),
            "...".into(),
        ];
        for token in bad {
            assert_eq!(check(&token, &keys), Err(TokenError::Malformed), "{token}");
        }
        // A non-canonical last character (unused bits set) is refused too.
        let mut sig = parts[2].to_string();
        let last = sig.pop().unwrap();
        let flipped = if last == 'A' { 'B' } else { 'A' };
        let token = format!("{}.{}.{sig}{flipped}", parts[0], parts[1]);
        assert!(check(&token, &keys).is_err());
        let long = format!("{}.{}.{}", parts[0], "A".repeat(MAX_TOKEN_BYTES), parts[2]);
        assert_eq!(check(&long, &keys), Err(TokenError::TooLarge));
    }

    #[test]
    fn jwks_problems_are_reported_and_skipped() {
        let small = Signer::rsa("RS256", "small", 1024);
        let good = Signer::es256("good");
        let doc = jwks(&[
            good.jwk(),
            small.jwk(),
            json!({"kty":"EC","crv":"P-256","kid":"dup","x":"AAAA","y":"AAAA"}),
            good.jwk(),
            json!({"kty":"XYZ","kid":"x"}),
            json!({"kty":"oct","kid":"short","k":b64([1u8; 16])}),
            json!({"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"}),
            json!({"kty":"RSA","kid":"oaep","alg":"RSA-OAEP","n":"AQAB","e":"AQAB"}),
            json!({"kty":"OKP","crv":"X25519","x":b64([9u8; 32])}),
            json!({"kty":"EC","crv":"P-256","alg":"ES384","x":"AA","y":"AA"}),
            json!("not an object"),
        ]);
        let set = parse_jwks(doc.as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.problems.len(), 8, "{:?}", set.problems);
        assert!(set.problems[0].contains("1024 bits"));
        assert!(set.problems.iter().any(|p| p.contains("repeats")));
        for problem in &set.problems {
            assert!(
                !problem.contains("AAAA"),
                "problems never echo key material"
            );
        }
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(b"[]").is_err());
        assert!(parse_jwks(b"not json").is_err());
        let huge = format!("{{\"keys\":[],\"x\":\"{}\"}}", "a".repeat(600 * 1024));
        assert!(parse_jwks(huge.as_bytes()).is_err());
    }

    #[test]
    fn pinned_key_alg() {
        let mut jwk = rsa().jwk();
        jwk["alg"] = json!("PS256");
        let keys = parse_jwks(jwks(&[jwk]).as_bytes()).unwrap();
        assert_eq!(
            check(&rsa().token(&claims()), &keys),
            Err(TokenError::UnknownKey)
        );
        let mut h = rsa().header();
        h["alg"] = json!("PS256");
        assert_eq!(check(&rsa().token_with(&h, &claims()), &keys), Ok(()));
    }
}
