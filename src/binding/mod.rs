//! Sender-constrained tokens: a genuine token's `cnf` claim (RFC 7800) binds it to a DPoP key
//! (`jkt`, RFC 9449 §6) or a client certificate (`x5t#S256`, RFC 8705 §3), and the request must
//! show it holds that key or certificate. A token bound to a DPoP key is refused with the
//! `Bearer` scheme, whatever the provider: a stolen bound token must not work as a bearer token
//! anywhere behind the filter.

use crate::config::{Dpop, Provider};
use crate::decision::{Known, Request};
use crate::dpop::{self, replay, Expect, ProofError, Target};
use crate::requirement::Failure;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

/// The downstream connection's client certificate, as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Not a TLS connection.
    Plain,
    /// TLS without a client certificate.
    NoCertificate,
    /// The SHA-256 of the client certificate's DER, as hex (Envoy's
    /// `connection.sha256_peer_certificate_digest`).
    Digest(String),
}

/// The 400 for a request with two `DPoP` headers (or one holding two proofs).
pub const TWO_PROOFS: &str = "The request carries more than one DPoP proof";

/// What binds `claims`' token, checked against the request: `Ok(Some(_))` is a good DPoP proof
/// for the replay store to remember. `via_dpop`: the token came with the DPoP scheme.
pub fn check(
    provider: &Provider,
    claims: &Map<String, Value>,
    token: &str,
    via_dpop: bool,
    request: &Request<'_>,
    known: &dyn Known,
) -> Result<Option<replay::Use>, Failure<'static>> {
    let (jkt, x5t) = match claims.get("cnf") {
        None => (None, None),
        Some(Value::Object(cnf)) => (
            cnf.get("jkt").and_then(Value::as_str),
            cnf.get("x5t#S256").and_then(Value::as_str),
        ),
        Some(_) => return Err(invalid("The access token's cnf claim is malformed")),
    };
    match x5t {
        Some(thumbprint) => certificate(thumbprint, &known.client_certificate())?,
        None if provider.require_certificate_bound => {
            return Err(invalid(
                "The access token must be bound to a client certificate",
            ))
        }
        None => {}
    }
    match (jkt, via_dpop, provider.dpop) {
        (Some(_), false, _) => Err(invalid(
            "The access token is bound to a DPoP key: it must come with the DPoP scheme and a proof",
        )),
        (None, true, _) => Err(invalid("The access token is not bound to a DPoP key")),
        (None, false, Some(d)) if d.required => {
            Err(invalid("The access token must be bound to a DPoP key"))
        }
        (None, false, _) => Ok(None),
        (Some(_), true, None) => Err(invalid("The access token is not bound to a DPoP key")),
        (Some(jkt), true, Some(d)) => {
            let skew = provider.claims.clock_skew_seconds;
            proof_binding(jkt, d, skew, token, request, known).map(Some)
        }
    }
}

/// The request's DPoP proof, checked for `token` bound to the key with thumbprint `jkt`: what
/// the replay store must remember of it.
fn proof_binding(
    jkt: &str,
    dpop: Dpop,
    skew: u64,
    token: &str,
    request: &Request<'_>,
    known: &dyn Known,
) -> Result<replay::Use, Failure<'static>> {
    let secret = known.shared_secret();
    let expect = Expect {
        target: Target::of(request.headers),
        token,
        now: request.now,
        max_age: dpop.max_age,
        skew,
        nonce_secret: dpop.nonce.then_some(secret),
        jkt: Some(jkt),
    };
    let proof = one_proof(request.headers)?;
    let check =
        |alg, key: &_, input: &[u8], sig: &[u8]| known.check_signature(alg, key, input, sig);
    let proven = dpop::check(proof, &expect, &check).map_err(|e| match e {
        ProofError::WrongKey => invalid(e.description()),
        other => Failure::Proof(other),
    })?;
    Ok(replay::Use {
        key: replay::key(secret, &proven.thumbprint, &proven.jti),
        until: proven.until,
    })
}

/// The request's one `DPoP` header value.
fn one_proof<'a>(headers: &[(&str, &'a [u8])]) -> Result<&'a str, Failure<'static>> {
    let mut values = headers.iter().filter(|(n, _)| *n == "dpop");
    let first = values.next().map(|(_, v)| *v);
    match (first, values.next()) {
        (None, _) => Err(Failure::Proof(ProofError::Missing)),
        (Some(_), Some(_)) => Err(Failure::Malformed(TWO_PROOFS)),
        (Some(v), None) if v.contains(&b',') => Err(Failure::Malformed(TWO_PROOFS)),
        (Some(v), None) => {
            std::str::from_utf8(v).map_err(|_| Failure::Proof(ProofError::Malformed))
        }
    }
}

/// Whether the connection's client certificate is the one with this `x5t#S256`.
fn certificate(thumbprint: &str, peer: &Peer) -> Result<(), Failure<'static>> {
    let digest = match peer {
        Peer::Plain => {
            return Err(invalid(
                "The access token is bound to a client certificate: the request must come over mutual TLS",
            ))
        }
        Peer::NoCertificate => {
            return Err(invalid(
                "The access token is bound to a client certificate, and none was presented",
            ))
        }
        Peer::Digest(hex) => from_hex(hex),
    };
    match digest {
        Some(bytes) if URL_SAFE_NO_PAD.encode(&bytes) == thumbprint => Ok(()),
        _ => Err(invalid(
            "The client certificate is not the one the access token is bound to",
        )),
    }
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn invalid(description: &'static str) -> Failure<'static> {
    Failure::Invalid {
        description,
        foreign: false,
    }
}

#[cfg(test)]
mod tests;
