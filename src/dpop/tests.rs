//! Good and hostile DPoP proofs against [`check`].

use super::*;
use crate::jwt::verify;
use crate::testkit::{b64, Signer};
use serde_json::{json, Value};
use std::sync::OnceLock;

const NOW: u64 = 1_800_000_000;
const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln";

fn es256() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| Signer::es256(""))
}

fn other() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| Signer::es256(""))
}

fn rsa() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| Signer::rsa("PS256", "", 2048))
}

fn target() -> Target<'static> {
    Target {
        method: "GET",
        scheme: "https",
        authority: "api.example",
        path: "/orders/7?view=full",
    }
}

fn expect(nonce_secret: Option<&'static [u8; 32]>) -> Expect<'static> {
    Expect {
        target: target(),
        token: TOKEN,
        now: NOW,
        max_age: 60,
        skew: 10,
        nonce_secret,
        jkt: None,
    }
}

fn claims() -> Value {
    json!({
        "jti": "e1j3V_bKic8-LAEB", "htm": "GET", "htu": "https://api.example/orders/7",
        "iat": NOW, "ath": keys::sha256_b64url(TOKEN.as_bytes()),
    })
}

fn header(signer: &Signer) -> Value {
    json!({"typ": "dpop+jwt", "alg": signer.alg, "jwk": signer.jwk()})
}

/// A proof by `signer` with its header and claims changed by `edit`.
fn proof(signer: &Signer, edit: impl FnOnce(&mut Value, &mut Value)) -> String {
    let (mut h, mut c) = (header(signer), claims());
    edit(&mut h, &mut c);
    signer.token_with(&h, &c)
}

fn run(proof: &str, expect: &Expect<'_>) -> Result<Proven, ProofError> {
    check(proof, expect, &|alg, key, input, sig| {
        verify::verify(alg, &key.material, input, sig)
    })
}

#[test]
fn good_proofs_of_every_key_type_pass_with_the_key_thumbprint() {
    let ed = Signer::eddsa("");
    let rs = Signer::rsa("RS256", "", 2048);
    for signer in [es256(), rsa(), &ed, &rs] {
        let p = proof(signer, |_, _| {});
        let proven = run(&p, &expect(None)).unwrap();
        let (_, thumbprint) = keys::public_jwk(signer.jwk().as_object().unwrap()).unwrap();
        assert_eq!(proven.thumbprint, thumbprint);
        assert_eq!(proven.jti, "e1j3V_bKic8-LAEB");
        assert_eq!(proven.until, NOW + 70);
    }
    // RFC 9864's fully specified name for EdDSA over Ed25519.
    let p = proof(&ed, |h, _| h["alg"] = json!("Ed25519"));
    assert!(run(&p, &expect(None)).is_ok());
    // The query and fragment of the htu are ignored, and so is a default port; host and
    // scheme compare without case.
    for htu in [
        "https://api.example/orders/7?a=b#frag",
        "https://api.example:443/orders/7",
        "HTTPS://API.Example/orders/7",
    ] {
        let p = proof(es256(), |_, c| c["htu"] = json!(htu));
        assert!(run(&p, &expect(None)).is_ok(), "{htu}");
    }
    // Within the skew of the future, and as old as max_age plus the skew.
    for iat in [NOW + 10, NOW - 70] {
        let p = proof(es256(), |_, c| c["iat"] = json!(iat));
        assert!(run(&p, &expect(None)).is_ok(), "{iat}");
    }
}

#[test]
fn rfc7638_thumbprint() {
    // RFC 7638 §3.1.
    let jwk = json!({
        "kty": "RSA", "alg": "RS256", "kid": "2011-04-29", "e": "AQAB",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    });
    let (_, thumbprint) = keys::public_jwk(jwk.as_object().unwrap()).unwrap();
    assert_eq!(thumbprint, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
}

#[test]
fn hostile_proofs_are_refused_for_what_is_wrong() {
    use ProofError::*;
    let small = Signer::rsa("RS256", "", 1024);
    let hmac = Signer::hmac("HS256", "", &[9u8; 32]);
    let ed = Signer::eddsa("");
    let with_private = {
        let mut jwk = es256().jwk();
        jwk["d"] = json!(b64([1u8; 32]));
        jwk
    };
    let cases: Vec<(&str, String, ProofError)> = vec![
        (
            "wrong htm",
            proof(es256(), |_, c| c["htm"] = json!("POST")),
            Method,
        ),
        (
            "htm in lower case",
            proof(es256(), |_, c| c["htm"] = json!("get")),
            Method,
        ),
        (
            "other path",
            proof(es256(), |_, c| {
                c["htu"] = json!("https://api.example/orders/8")
            }),
            Uri,
        ),
        (
            "other host",
            proof(es256(), |_, c| {
                c["htu"] = json!("https://evil.example/orders/7")
            }),
            Uri,
        ),
        (
            "other scheme",
            proof(es256(), |_, c| {
                c["htu"] = json!("http://api.example/orders/7")
            }),
            Uri,
        ),
        (
            "other port",
            proof(es256(), |_, c| {
                c["htu"] = json!("https://api.example:8443/orders/7")
            }),
            Uri,
        ),
        (
            "user info",
            proof(es256(), |_, c| {
                c["htu"] = json!("https://u@api.example/orders/7")
            }),
            Uri,
        ),
        (
            "relative htu",
            proof(es256(), |_, c| c["htu"] = json!("/orders/7")),
            Uri,
        ),
        (
            "no htu",
            proof(es256(), |_, c| {
                drop(c.as_object_mut().unwrap().remove("htu"))
            }),
            Uri,
        ),
        (
            "stale iat",
            proof(es256(), |_, c| c["iat"] = json!(NOW - 71)),
            Stale,
        ),
        (
            "future iat",
            proof(es256(), |_, c| c["iat"] = json!(NOW + 11)),
            Future,
        ),
        (
            "iat as text",
            proof(es256(), |_, c| c["iat"] = json!(NOW.to_string())),
            Malformed,
        ),
        (
            "no jti",
            proof(es256(), |_, c| {
                drop(c.as_object_mut().unwrap().remove("jti"))
            }),
            Jti,
        ),
        (
            "empty jti",
            proof(es256(), |_, c| c["jti"] = json!("")),
            Jti,
        ),
        (
            "huge jti",
            proof(es256(), |_, c| c["jti"] = json!("j".repeat(300))),
            Jti,
        ),
        (
            "no ath",
            proof(es256(), |_, c| {
                drop(c.as_object_mut().unwrap().remove("ath"))
            }),
            Ath,
        ),
        (
            "ath of another token",
            proof(es256(), |_, c| {
                c["ath"] = json!(keys::sha256_b64url(b"other"))
            }),
            Ath,
        ),
        (
            "jwk with d",
            proof(es256(), |h, _| h["jwk"] = with_private.clone()),
            PrivateKey,
        ),
        ("RSA under 2048 bits", proof(&small, |_, _| {}), Key),
        ("oct key", proof(&hmac, |_, _| {}), Alg),
        (
            "HMAC with a public key",
            proof(es256(), |h, _| h["alg"] = json!("HS256")),
            Alg,
        ),
        (
            "alg none",
            proof(es256(), |h, _| h["alg"] = json!("none")),
            Alg,
        ),
        (
            "no alg",
            proof(es256(), |h, _| {
                drop(h.as_object_mut().unwrap().remove("alg"))
            }),
            Alg,
        ),
        (
            "alg of another key type",
            proof(es256(), |h, _| h["jwk"] = ed.jwk()),
            Key,
        ),
        (
            "no jwk",
            proof(es256(), |h, _| {
                drop(h.as_object_mut().unwrap().remove("jwk"))
            }),
            Key,
        ),
        (
            "signed by another key",
            proof(other(), |h, _| h["jwk"] = es256().jwk()),
            Signature,
        ),
        (
            "typ JWT",
            proof(es256(), |h, _| h["typ"] = json!("JWT")),
            Type,
        ),
        (
            "no typ",
            proof(es256(), |h, _| {
                drop(h.as_object_mut().unwrap().remove("typ"))
            }),
            Type,
        ),
        (
            "crit",
            proof(es256(), |h, _| h["crit"] = json!(["exp"])),
            Malformed,
        ),
        (
            "too large",
            proof(es256(), |_, c| c["pad"] = json!("x".repeat(9000))),
            TooLarge,
        ),
        ("two segments", "a.b".into(), Malformed),
        ("not base64url", "a*.b.c".into(), Malformed),
    ];
    for (what, p, want) in cases {
        assert_eq!(run(&p, &expect(None)), Err(want), "{what}");
    }
    // Duplicated members are refused, in the header and in the claims.
    let jwk = es256().jwk().to_string();
    let h = format!(r#"{{"typ":"dpop+jwt","alg":"ES256","alg":"ES256","jwk":{jwk}}}"#);
    let p = es256().token_raw(&h, &claims().to_string());
    assert_eq!(run(&p, &expect(None)), Err(Malformed));
    let c = claims().to_string().replacen('{', r#"{"jti":"first","#, 1);
    let p = es256().token_raw(&header(es256()).to_string(), &c);
    assert_eq!(run(&p, &expect(None)), Err(Malformed));
    // A proof by another key than the token's is refused before its signature is checked.
    let mut bound = expect(None);
    let jkt = keys::public_jwk(es256().jwk().as_object().unwrap())
        .unwrap()
        .1;
    bound.jkt = Some(&jkt);
    let never_verified =
        |_: crate::jwt::keys::Alg, _: &Jwk, _: &[u8], _: &[u8]| -> bool { panic!("verified") };
    let by_other = proof(other(), |_, _| {});
    assert_eq!(check(&by_other, &bound, &never_verified), Err(WrongKey));
    assert!(run(&proof(es256(), |_, _| {}), &bound).is_ok());
    // A tampered payload breaks the signature.
    let good = proof(es256(), |_, _| {});
    let parts: Vec<&str> = good.split('.').collect();
    let mut c = claims();
    c["jti"] = json!("other");
    let tampered = format!("{}.{}.{}", parts[0], b64(c.to_string()), parts[2]);
    assert_eq!(run(&tampered, &expect(None)), Err(Signature));
}

#[test]
fn nonces_are_asked_for_and_checked() {
    static SECRET: [u8; 32] = [5u8; 32];
    let e = expect(Some(&SECRET));
    let without = proof(es256(), |_, _| {});
    assert_eq!(run(&without, &e), Err(ProofError::Nonce));
    let forged = proof(es256(), |_, c| {
        c["nonce"] = json!(nonce::issue(&[6u8; 32], NOW))
    });
    assert_eq!(run(&forged, &e), Err(ProofError::Nonce));
    let good = proof(es256(), |_, c| {
        c["nonce"] = json!(nonce::issue(&SECRET, NOW))
    });
    assert!(run(&good, &e).is_ok());
    assert_eq!(ProofError::Nonce.code(), "use_dpop_nonce");
    assert_eq!(ProofError::Ath.code(), "invalid_dpop_proof");
}
