//! Compact JWS (RFC 7515) tokens: strict parsing, key choice and signature verification.

pub mod keys;
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
    pub signature: Vec<u8>,
    pub claims: Map<String, Value>,
}

/// Parses a compact JWS: exactly three non-empty base64url segments, a header that is a JSON
/// object with a supported `alg` and no `crit`, and a payload that is a JSON object. Header
/// members such as `jku`, `x5u`, `jwk` and `x5c` are ignored: keys come only from configuration.
pub fn parse(token: &str) -> Result<Jws<'_>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    if h64.is_empty() || p64.is_empty() || s64.is_empty() {
        return Err(TokenError::Malformed);
    }
    let header = b64url(h64)
        .and_then(|bytes| json::parse_object(&bytes).ok())
        .ok_or(TokenError::Malformed)?;
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
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(TokenError::Malformed),
    };
    let claims = b64url(p64)
        .and_then(|bytes| json::parse_object(&bytes).ok())
        .ok_or(TokenError::Malformed)?;
    let signature = b64url(s64).ok_or(TokenError::Malformed)?;
    Ok(Jws {
        signing_input: &token[..h64.len() + 1 + p64.len()],
        alg,
        kid,
        signature,
        claims,
    })
}

/// Verifies `jws` against `keys`. A token with a `kid` is checked with the key of that `kid`
/// only; a token without one with each key that accepts its `alg`, until one verifies.
pub fn verify_signature(jws: &Jws<'_>, keys: &[Jwk]) -> Result<(), TokenError> {
    let mut candidates = keys
        .iter()
        .filter(|key| jws.kid.is_none() || key.kid == jws.kid)
        .filter(|key| key.accepts(jws.alg))
        .peekable();
    if candidates.peek().is_none() {
        return Err(TokenError::UnknownKey);
    }
    let input = jws.signing_input.as_bytes();
    if candidates.any(|key| verify::verify(jws.alg, &key.material, input, &jws.signature)) {
        Ok(())
    } else {
        Err(TokenError::BadSignature)
    }
}
