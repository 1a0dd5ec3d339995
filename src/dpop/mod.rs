//! DPoP proofs (RFC 9449 §4): a compact JWS the client signs for each request with the key its
//! access token is bound to. [`check`] reads one proof against the request it came with and
//! says which key signed it (its RFC 7638 thumbprint, to compare with the token's `cnf.jkt`)
//! and what the replay store must remember; every defect is a [`ProofError`] with a fixed
//! description. The nonces are [`nonce`]'s, the replay store [`replay`]'s.

pub mod nonce;
pub mod replay;

use crate::jwt::keys::{self, Alg, Jwk, PublicKeyError};
use crate::jwt::{self, Check};
use serde_json::{Map, Value};

/// The largest proof read, in bytes.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;

/// The longest `jti` kept, in bytes (RFC 9449 asks for 96 bits of randomness; UUIDs are 36).
pub const MAX_JTI_BYTES: usize = 256;

/// The proof algorithms accepted, as the `algs` of a `DPoP` challenge (RFC 9449 §7.1):
/// asymmetric only. `Ed25519` is RFC 9864's fully specified name for `EdDSA` over Ed25519.
pub const ALGS: &str = "ES256 ES384 ES512 EdDSA Ed25519 PS256 PS384 PS512 RS256 RS384 RS512";

/// Why a proof was refused: `invalid_dpop_proof`, except [`ProofError::Nonce`], which is
/// `use_dpop_nonce`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofError {
    Missing,
    TooLarge,
    Malformed,
    Type,
    Alg,
    PrivateKey,
    Key,
    Signature,
    Method,
    Uri,
    Stale,
    Future,
    Jti,
    Ath,
    Replayed,
    Nonce,
    /// Signed (or claiming to be signed) by a key other than [`Expect::jkt`]: a failed binding,
    /// `invalid_token` (RFC 9449 Figure 16), not a defect of the proof.
    WrongKey,
}

impl ProofError {
    /// The fixed `error_description`; it never echoes the proof.
    pub fn description(self) -> &'static str {
        match self {
            ProofError::Missing => "A DPoP proof is required with the DPoP scheme",
            ProofError::TooLarge => "The DPoP proof is too large",
            ProofError::Malformed => "The DPoP proof is not a well-formed JWT",
            ProofError::Type => "The DPoP proof's typ is not dpop+jwt",
            ProofError::Alg => "The DPoP proof's algorithm is not an accepted asymmetric one",
            ProofError::PrivateKey => "The DPoP proof's jwk holds a private key",
            ProofError::Key => "The DPoP proof's jwk is not an accepted public key",
            ProofError::Signature => "The DPoP proof's signature is invalid",
            ProofError::Method => "The DPoP proof's htm is not the request's method",
            ProofError::Uri => "The DPoP proof's htu is not the request's URI",
            ProofError::Stale => "The DPoP proof is too old",
            ProofError::Future => "The DPoP proof is dated in the future",
            ProofError::Jti => "The DPoP proof has no usable jti",
            ProofError::Ath => "The DPoP proof's ath is not the hash of the access token",
            ProofError::Replayed => "The DPoP proof was used before",
            ProofError::Nonce => "The DPoP proof must carry a current nonce",
            ProofError::WrongKey => {
                "The DPoP proof's key is not the key the access token is bound to"
            }
        }
    }

    /// The challenge's `error` code.
    pub fn code(self) -> &'static str {
        match self {
            ProofError::Nonce => "use_dpop_nonce",
            ProofError::WrongKey => "invalid_token",
            _ => "invalid_dpop_proof",
        }
    }
}

/// A new secret for nonces and replay-store keys, drawn from `random` (a `RandomState`: the
/// operating system's randomness, WASI's `random_get` in Wasm). Each shell draws it once and
/// shares it with all its workers.
pub fn new_secret(random: &impl std::hash::BuildHasher) -> [u8; 32] {
    let mut secret = [0u8; 32];
    for (i, chunk) in secret.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&random.hash_one(0x5ec2e7u64 + i as u64).to_le_bytes());
    }
    secret
}

/// The request a proof must be for: its method and its URI as Envoy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub method: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    pub authority: &'a str,
    /// The `:path`, query included (ignored).
    pub path: &'a str,
}

impl<'a> Target<'a> {
    /// The target of a request with these headers (`:method`, `:scheme`, `:authority`,
    /// `:path`; a missing `:scheme` is `http`).
    pub fn of(headers: &[(&'a str, &'a [u8])]) -> Target<'a> {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
        };
        Target {
            method: get(":method").unwrap_or(""),
            scheme: get(":scheme").unwrap_or("http"),
            authority: get(":authority").unwrap_or(""),
            path: get(":path").unwrap_or("/"),
        }
    }
}

/// What a proof is checked against besides the request.
pub struct Expect<'a> {
    pub target: Target<'a>,
    /// The access token it came with (for `ath`).
    pub token: &'a str,
    /// Seconds since the epoch.
    pub now: u64,
    /// The provider's `dpop.max_age`, in seconds.
    pub max_age: u64,
    pub skew: u64,
    /// The secret nonces are made with, when the provider wants them.
    pub nonce_secret: Option<&'a [u8; 32]>,
    /// The thumbprint of the key the token is bound to (`cnf.jkt`): a proof by another key is
    /// refused before its signature is checked.
    pub jkt: Option<&'a str>,
}

/// A good proof: the thumbprint of its key, its `jti`, and until when (seconds since the epoch)
/// it could be presented again, which is how long the replay store must remember it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    pub thumbprint: String,
    pub jti: String,
    pub until: u64,
}

/// Checks `proof` (one `DPoP` header value) for `expect`, signatures through `check`.
pub fn check(proof: &str, expect: &Expect<'_>, verify: Check<'_>) -> Result<Proven, ProofError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(ProofError::TooLarge);
    }
    let (h64, p64, s64) = jwt::segments(proof).ok_or(ProofError::Malformed)?;
    let header = jwt::json_segment(h64).ok_or(ProofError::Malformed)?;
    let (alg, key, thumbprint) = header_key(&header)?;
    let claims = jwt::json_segment(p64).ok_or(ProofError::Malformed)?;
    let signature = jwt::b64url(s64).ok_or(ProofError::Malformed)?;
    let claimed = claims_for(&claims, expect)?;
    if expect.jkt.is_some_and(|jkt| jkt != thumbprint) {
        return Err(ProofError::WrongKey);
    }
    let input = &proof.as_bytes()[..h64.len() + 1 + p64.len()];
    if !verify(alg, &key, input, &signature) {
        return Err(ProofError::Signature);
    }
    if let Some(secret) = expect.nonce_secret {
        let given = claims.get("nonce").and_then(Value::as_str);
        if !given.is_some_and(|n| nonce::valid(secret, n, expect.now)) {
            return Err(ProofError::Nonce);
        }
    }
    Ok(Proven {
        thumbprint,
        jti: claimed.jti.to_string(),
        until: claimed.until,
    })
}

/// The header's `typ`, `alg` and `jwk`: the algorithm, the key and the key's thumbprint.
fn header_key(header: &Map<String, Value>) -> Result<(Alg, Jwk, String), ProofError> {
    let typ = header.get("typ").and_then(Value::as_str);
    if !typ.is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt")) {
        return Err(ProofError::Type);
    }
    if header.contains_key("crit") {
        return Err(ProofError::Malformed);
    }
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("Ed25519") => Alg::EdDSA,
        Some(name) => match Alg::from_name(name) {
            Some(Alg::HS256 | Alg::HS384 | Alg::HS512) | None => return Err(ProofError::Alg),
            Some(alg) => alg,
        },
        None => return Err(ProofError::Alg),
    };
    let Some(Value::Object(jwk)) = header.get("jwk") else {
        return Err(ProofError::Key);
    };
    let (key, thumbprint) = keys::public_jwk(jwk).map_err(|e| match e {
        PublicKeyError::Private => ProofError::PrivateKey,
        PublicKeyError::Unusable => ProofError::Key,
    })?;
    if !key.accepts(alg) {
        return Err(ProofError::Key);
    }
    Ok((alg, key, thumbprint))
}

/// What the payload says, once its `htm`, `htu`, `iat`, `jti` and `ath` hold.
struct Claimed<'a> {
    jti: &'a str,
    until: u64,
}

fn claims_for<'a>(
    claims: &'a Map<String, Value>,
    e: &Expect<'_>,
) -> Result<Claimed<'a>, ProofError> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let jti = text("jti").filter(|j| !j.is_empty() && j.len() <= MAX_JTI_BYTES);
    let jti = jti.ok_or(ProofError::Jti)?;
    if text("htm") != Some(e.target.method) {
        return Err(ProofError::Method);
    }
    if !text("htu").is_some_and(|htu| same_uri(htu, &e.target)) {
        return Err(ProofError::Uri);
    }
    let iat = match claims.get("iat") {
        Some(Value::Number(n)) => n.as_f64().ok_or(ProofError::Malformed)?,
        _ => return Err(ProofError::Malformed),
    };
    let now = e.now as f64;
    if iat > now + e.skew as f64 {
        return Err(ProofError::Future);
    }
    let window = (e.max_age + e.skew) as f64;
    if iat < now - window {
        return Err(ProofError::Stale);
    }
    let expected = keys::sha256_b64url(e.token.as_bytes());
    if text("ath") != Some(expected.as_str()) {
        return Err(ProofError::Ath);
    }
    Ok(Claimed {
        jti,
        until: (iat.max(0.0) as u64).saturating_add(e.max_age + e.skew),
    })
}

/// Whether `htu` names the target (RFC 9449 §4.3 step 9): scheme and host compared without
/// case, a default port the same as none, the path exactly (an empty one is `/`), the query
/// and fragment of both ignored.
pub fn same_uri(htu: &str, target: &Target<'_>) -> bool {
    let Some((scheme, rest)) = htu.split_once("://") else {
        return false;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let path = tail.split(['?', '#']).next().unwrap_or("");
    let request_path = target.path.split(['?', '#']).next().unwrap_or("");
    let or_root = |p: &'_ str| if p.is_empty() { "/" } else { p }.to_string();
    scheme.eq_ignore_ascii_case(target.scheme)
        && !authority.contains('@')
        && host_port(authority, scheme)
            .eq_ignore_ascii_case(&host_port(target.authority, target.scheme))
        && or_root(path) == or_root(request_path)
}

/// An authority without the scheme's default port.
fn host_port(authority: &str, scheme: &str) -> String {
    let default = if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        ":80"
    };
    authority
        .strip_suffix(default)
        .unwrap_or(authority)
        .to_string()
}

#[cfg(test)]
mod tests;
