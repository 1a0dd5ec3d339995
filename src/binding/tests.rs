//! Sender-constrained tokens through the whole decision: DPoP and certificate binding.

use super::*;
use crate::cache;
use crate::challenge::{Challenge, DenyReason};
use crate::config::Config;
use crate::decision::{configured_keys, decide, Cached, Decision, Forward, KeysNow};
use crate::dpop::nonce;
use crate::jwt::keys::{self, Alg, Jwk};
use crate::testkit::{good_claims, jwks, now, Signer};
use serde_json::json;
use std::sync::OnceLock;

static SECRET: [u8; 32] = [4; 32];

/// The issuer's signer and the client's DPoP key.
fn issuer() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| Signer::es256("k1"))
}

fn client() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| Signer::es256(""))
}

fn thumbprint(s: &Signer) -> String {
    keys::public_jwk(s.jwk().as_object().unwrap()).unwrap().1
}

fn config(corp: Value) -> Config {
    let mut provider = json!({
        "issuer": "https://idp", "local_jwks": {"inline_string": jwks(&[issuer().jwk()])},
    });
    if let (Value::Object(p), Value::Object(e)) = (&mut provider, corp) {
        p.extend(e);
    }
    let doc = json!({
        "realm": "api",
        "providers": {"corp": provider},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "corp"}}]
    });
    Config::from_json(doc.to_string().as_bytes()).unwrap()
}

struct Host<'a> {
    config: &'a Config,
    peer: Peer,
}

impl Known for Host<'_> {
    fn keys_now(&self, provider: usize) -> KeysNow<'_> {
        configured_keys(self.config, provider)
    }
    fn verified(&self, _key: &cache::TokenKey) -> Option<&Map<String, Value>> {
        None
    }
    fn introspected(&self, _provider: usize, _token: &str) -> Cached<'_> {
        Cached::Miss
    }
    fn client_certificate(&self) -> Peer {
        self.peer.clone()
    }
    fn shared_secret(&self) -> &[u8; 32] {
        &SECRET
    }
    fn check_signature(&self, alg: Alg, key: &Jwk, input: &[u8], sig: &[u8]) -> bool {
        crate::jwt::verify::verify(alg, &key.material, input, sig)
    }
}

fn token(cnf: Option<Value>) -> String {
    let mut claims = good_claims("https://idp", "api");
    if let Some(cnf) = cnf {
        claims["cnf"] = cnf;
    }
    issuer().token(&claims)
}

fn bound() -> String {
    token(Some(json!({"jkt": thumbprint(client())})))
}

fn proof(by: &Signer, token: &str, nonce: Option<&str>) -> String {
    let mut claims = json!({
        "jti": format!("{:x}", rand::random::<u64>()), "htm": "GET",
        "htu": "https://api.example/orders", "iat": now(),
        "ath": keys::sha256_b64url(token.as_bytes()),
    });
    if let Some(n) = nonce {
        claims["nonce"] = json!(n);
    }
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": by.jwk()});
    by.token_with(&header, &claims)
}

fn run_with<'c>(config: &'c Config, peer: Peer, headers: &[(&str, &str)]) -> Decision<'c> {
    let mut all: Vec<(&str, &[u8])> = vec![
        (":method", b"GET"),
        (":scheme", b"https"),
        (":authority", b"api.example"),
        (":path", b"/orders?x=1"),
    ];
    all.extend(headers.iter().map(|(n, v)| (*n, v.as_bytes())));
    let request = Request {
        path: "/orders?x=1",
        headers: &all,
        now: now(),
    };
    decide(config, &Host { config, peer }, request)
}

fn run<'c>(config: &'c Config, headers: &[(&str, &str)]) -> Decision<'c> {
    run_with(config, Peer::Plain, headers)
}

fn allowed(d: Decision) -> Forward {
    match d {
        Decision::Allow(f) => f,
        other => panic!("not allowed: {other:?}"),
    }
}

fn denied(d: Decision) -> Challenge {
    match d {
        Decision::Deny(c) => c,
        other => panic!("not denied: {other:?}"),
    }
}

#[test]
fn a_dpop_bound_token_passes_only_with_its_proof() {
    let config = config(json!({"dpop": {}}));
    let t = bound();
    let good = proof(client(), &t, None);
    let f = allowed(run(
        &config,
        &[("authorization", &format!("DPoP {t}")), ("dpop", &good)],
    ));
    assert_eq!(f.proofs.len(), 1);
    assert!(f.remove.contains(&"authorization") && f.remove.contains(&"dpop"));
    let replayed = crate::decision::replayed(&config, &f, &SECRET, now());
    assert_eq!(
        (replayed.status, replayed.reason),
        (401, DenyReason::InvalidDpopProof)
    );
    assert!(replayed.body.contains("used before"));

    // As a bearer token, it is refused, and the error is on the Bearer challenge.
    let c = denied(run(&config, &[("authorization", &format!("Bearer {t}"))]));
    assert_eq!((c.status, c.reason), (401, DenyReason::InvalidToken));
    assert!(c
        .www_authenticate
        .as_deref()
        .unwrap()
        .starts_with("Bearer realm=\"api\", error=\"invalid_token\""));
    let dpop = c.dpop.unwrap();
    assert_eq!(
        dpop,
        format!("DPoP realm=\"api\", algs=\"{}\"", crate::dpop::ALGS)
    );

    // No proof, a proof by another key, two proofs.
    let c = denied(run(&config, &[("authorization", &format!("DPoP {t}"))]));
    assert_eq!(c.www_authenticate.as_deref(), Some("Bearer realm=\"api\""));
    assert!(c
        .dpop
        .unwrap()
        .contains("error=\"invalid_dpop_proof\", error_description=\"A DPoP proof is required"));
    let stranger = Signer::es256("");
    let c = denied(run(
        &config,
        &[
            ("authorization", &format!("DPoP {t}")),
            ("dpop", &proof(&stranger, &t, None)),
        ],
    ));
    assert_eq!(c.reason, DenyReason::InvalidToken);
    assert!(c.dpop.unwrap().contains(
        "error=\"invalid_token\", error_description=\"The DPoP proof's key is not the key"
    ));
    let c = denied(run(
        &config,
        &[
            ("authorization", &format!("DPoP {t}")),
            ("dpop", &good),
            ("dpop", &good),
        ],
    ));
    assert_eq!((c.status, c.reason), (400, DenyReason::InvalidRequest));
    assert!(c.body.contains(TWO_PROOFS));
    // A proof for another token.
    let c = denied(run(
        &config,
        &[
            ("authorization", &format!("DPoP {t}")),
            ("dpop", &proof(client(), "other", None)),
        ],
    ));
    assert!(c.body.contains("ath"), "{}", c.body);
}

#[test]
fn unbound_tokens_and_providers_without_dpop() {
    let lenient = config(json!({"dpop": {}}));
    let unbound = token(None);
    allowed(run(
        &lenient,
        &[("authorization", &format!("Bearer {unbound}"))],
    ));
    // Under the DPoP scheme an unbound token proves nothing.
    let p = proof(client(), &unbound, None);
    let c = denied(run(
        &lenient,
        &[("authorization", &format!("DPoP {unbound}")), ("dpop", &p)],
    ));
    assert!(c.body.contains("not bound to a DPoP key"));

    // `required`: no Bearer challenge at all, the error on the DPoP one.
    let strict = config(json!({"dpop": {"required": true}}));
    let c = denied(run(
        &strict,
        &[("authorization", &format!("Bearer {unbound}"))],
    ));
    let only = c.www_authenticate.unwrap();
    assert!(
        only.starts_with("DPoP realm=\"api\", algs=")
            && only.contains("must be bound to a DPoP key"),
        "{only}"
    );
    assert_eq!(c.dpop, None);
    let c = denied(run(&strict, &[]));
    assert_eq!(c.reason, DenyReason::MissingToken);
    assert!(c
        .www_authenticate
        .unwrap()
        .starts_with("DPoP realm=\"api\", algs="));

    // Without `dpop`, the DPoP scheme is not read, and a bound token is no bearer token.
    let plain = config(json!({}));
    let t = bound();
    let c = denied(run(
        &plain,
        &[
            ("authorization", &format!("DPoP {t}")),
            ("dpop", &proof(client(), &t, None)),
        ],
    ));
    assert_eq!((c.reason, c.dpop), (DenyReason::MissingToken, None));
    let c = denied(run(&plain, &[("authorization", &format!("Bearer {t}"))]));
    assert!(c.body.contains("bound to a DPoP key"));
}

#[test]
fn nonces_are_handed_out_and_then_required() {
    let config = config(json!({"dpop": {"nonce": true}}));
    let t = bound();
    let c = denied(run(
        &config,
        &[
            ("authorization", &format!("DPoP {t}")),
            ("dpop", &proof(client(), &t, None)),
        ],
    ));
    assert_eq!((c.status, c.reason), (401, DenyReason::UseDpopNonce));
    assert!(c
        .dpop
        .as_deref()
        .unwrap()
        .contains("error=\"use_dpop_nonce\""));
    let nonce = c.dpop_nonce.unwrap();
    assert!(nonce::valid(&SECRET, &nonce, now()));
    let missing = denied(run(&config, &[]));
    let headers: Vec<&str> = c_headers(&missing);
    assert!(headers.contains(&"dpop-nonce"), "{headers:?}");
    let p = proof(client(), &t, Some(&nonce));
    allowed(run(
        &config,
        &[("authorization", &format!("DPoP {t}")), ("dpop", &p)],
    ));
}

fn c_headers(c: &Challenge) -> Vec<&str> {
    c.headers().into_iter().map(|(n, _)| n).collect()
}

#[test]
fn certificate_bound_tokens_need_that_certificate() {
    let config = config(json!({}));
    let digest = [0xabu8; 32];
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let x5t = URL_SAFE_NO_PAD.encode(digest);
    let t = token(Some(json!({"x5t#S256": x5t})));
    let auth = format!("Bearer {t}");
    let h = [("authorization", auth.as_str())];
    allowed(run_with(&config, Peer::Digest(hex), &h));
    for (peer, why) in [
        (Peer::Plain, "must come over mutual TLS"),
        (Peer::NoCertificate, "none was presented"),
        (
            Peer::Digest("00".repeat(32)),
            "not the one the access token is bound to",
        ),
        (
            Peer::Digest("zz".into()),
            "not the one the access token is bound to",
        ),
    ] {
        let c = denied(run_with(&config, peer, &h));
        assert_eq!(c.reason, DenyReason::InvalidToken);
        assert!(c.body.contains(why), "{}", c.body);
    }
    let strict = self::config(json!({"require_certificate_bound": true}));
    let unbound = format!("Bearer {}", token(None));
    let c = denied(run_with(
        &strict,
        Peer::Digest("00".repeat(32)),
        &[("authorization", &unbound)],
    ));
    assert!(c.body.contains("must be bound to a client certificate"));
    let c = denied(run(
        &config,
        &[(
            "authorization",
            &format!("Bearer {}", token(Some(json!("x")))),
        )],
    ));
    assert!(c.body.contains("cnf claim is malformed"));
}
