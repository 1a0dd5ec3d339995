//! Test keys and token signing. Tokens are signed at run time, so nothing in the tests expires.
//! Signing works on raw header and payload text, so tests can build any hostile shape.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, Pss, RsaPrivateKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::time::{SystemTime, UNIX_EPOCH};

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).unwrap()
}

/// The same ES256 token with its signature's `s` replaced by `n - s`: the other valid ECDSA
/// signature of the same message (signature malleability).
pub fn high_s_twin(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = p256::ecdsa::Signature::from_slice(&unb64(sig)).unwrap();
    let (r, s) = sig.split_scalars();
    let twin = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
    format!("{input}.{}", b64(twin.to_bytes()))
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub enum Private {
    Rsa(RsaPrivateKey),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    P521(p521::ecdsa::SigningKey),
    Ed25519(ed25519_compact::KeyPair),
    Hmac(Vec<u8>),
}

/// A signing key with its default algorithm and `kid`.
pub struct Signer {
    pub alg: &'static str,
    pub kid: Option<String>,
    pub key: Private,
}

fn kid(k: &str) -> Option<String> {
    (!k.is_empty()).then(|| k.to_string())
}

impl Signer {
    pub fn rsa(alg: &'static str, k: &str, bits: usize) -> Signer {
        let key = RsaPrivateKey::new(&mut OsRng, bits).unwrap();
        Signer {
            alg,
            kid: kid(k),
            key: Private::Rsa(key),
        }
    }
    pub fn es256(k: &str) -> Signer {
        let key = p256::ecdsa::SigningKey::random(&mut OsRng);
        Signer {
            alg: "ES256",
            kid: kid(k),
            key: Private::P256(key),
        }
    }
    pub fn es384(k: &str) -> Signer {
        let key = p384::ecdsa::SigningKey::random(&mut OsRng);
        Signer {
            alg: "ES384",
            kid: kid(k),
            key: Private::P384(key),
        }
    }
    pub fn es512(k: &str) -> Signer {
        let key = p521::ecdsa::SigningKey::random(&mut OsRng);
        Signer {
            alg: "ES512",
            kid: kid(k),
            key: Private::P521(key),
        }
    }
    pub fn eddsa(k: &str) -> Signer {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let pair = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed));
        Signer {
            alg: "EdDSA",
            kid: kid(k),
            key: Private::Ed25519(pair),
        }
    }
    pub fn hmac(alg: &'static str, k: &str, secret: &[u8]) -> Signer {
        Signer {
            alg,
            kid: kid(k),
            key: Private::Hmac(secret.to_vec()),
        }
    }

    /// The public JWK (for `oct`, the secret itself), with `kid` when the signer has one.
    pub fn jwk(&self) -> Value {
        let mut jwk = match &self.key {
            Private::Rsa(k) => json!({
                "kty": "RSA", "n": b64(k.n().to_bytes_be()), "e": b64(k.e().to_bytes_be())
            }),
            Private::P256(k) => {
                let p = k.verifying_key().to_encoded_point(false);
                json!({"kty":"EC","crv":"P-256","x":b64(p.x().unwrap()),"y":b64(p.y().unwrap())})
            }
            Private::P384(k) => {
                let p = k.verifying_key().to_encoded_point(false);
                json!({"kty":"EC","crv":"P-384","x":b64(p.x().unwrap()),"y":b64(p.y().unwrap())})
            }
            Private::P521(k) => {
                let p = p521::ecdsa::VerifyingKey::from(k).to_encoded_point(false);
                json!({"kty":"EC","crv":"P-521","x":b64(p.x().unwrap()),"y":b64(p.y().unwrap())})
            }
            Private::Ed25519(k) => json!({"kty":"OKP","crv":"Ed25519","x":b64(k.pk.as_ref())}),
            Private::Hmac(k) => json!({"kty":"oct","k":b64(k)}),
        };
        if let Some(kid) = &self.kid {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    /// A P-521 signer whose public JWK (the second value) writes a coordinate with one byte
    /// less than the curve's 66, its leading zero dropped, as jwt_verify_lib's test key does.
    pub fn es512_short_coordinate(k: &str) -> (Signer, Value) {
        loop {
            let signer = Signer::es512(k);
            let mut jwk = signer.jwk();
            for c in ["y", "x"] {
                let bytes = unb64(jwk[c].as_str().unwrap());
                if bytes[0] == 0 {
                    jwk[c] = json!(b64(&bytes[1..]));
                    return (signer, jwk);
                }
            }
        }
    }

    /// Signs `input` with algorithm `alg` (any algorithm the key can do).
    pub fn sign_as(&self, alg: &str, input: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer as _;
        match (&self.key, alg) {
            (Private::Rsa(k), "RS256") => k
                .sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(input))
                .unwrap(),
            (Private::Rsa(k), "RS384") => k
                .sign(Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(input))
                .unwrap(),
            (Private::Rsa(k), "RS512") => k
                .sign(Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(input))
                .unwrap(),
            (Private::Rsa(k), "PS256") => k
                .sign_with_rng(&mut OsRng, Pss::new::<Sha256>(), &Sha256::digest(input))
                .unwrap(),
            (Private::Rsa(k), "PS384") => k
                .sign_with_rng(&mut OsRng, Pss::new::<Sha384>(), &Sha384::digest(input))
                .unwrap(),
            (Private::Rsa(k), "PS512") => k
                .sign_with_rng(&mut OsRng, Pss::new::<Sha512>(), &Sha512::digest(input))
                .unwrap(),
            (Private::P256(k), _) => {
                let s: p256::ecdsa::Signature = k.sign(input);
                s.to_bytes().to_vec()
            }
            (Private::P384(k), _) => {
                let s: p384::ecdsa::Signature = k.sign(input);
                s.to_bytes().to_vec()
            }
            (Private::P521(k), _) => {
                use p521::ecdsa::signature::RandomizedSigner as _;
                let s: p521::ecdsa::Signature = k.sign_with_rng(&mut OsRng, input);
                s.to_bytes().to_vec()
            }
            (Private::Ed25519(k), _) => k.sk.sign(input, None).to_vec(),
            (Private::Hmac(k), "HS256") => hmac_tag::<Hmac<Sha256>>(k, input),
            (Private::Hmac(k), "HS384") => hmac_tag::<Hmac<Sha384>>(k, input),
            (Private::Hmac(k), "HS512") => hmac_tag::<Hmac<Sha512>>(k, input),
            _ => panic!("this key cannot sign {alg}"),
        }
    }

    /// The standard header: `alg`, `typ`, and `kid` when the signer has one.
    pub fn header(&self) -> Value {
        let mut h = json!({"alg": self.alg, "typ": "JWT"});
        if let Some(kid) = &self.kid {
            h["kid"] = json!(kid);
        }
        h
    }

    /// A token with the standard header and these claims.
    pub fn token(&self, claims: &Value) -> String {
        self.token_with(&self.header(), claims)
    }

    /// A token with this header and these claims, signed with the header's `alg`.
    pub fn token_with(&self, header: &Value, claims: &Value) -> String {
        self.token_raw(&header.to_string(), &claims.to_string())
    }

    /// A token over raw header and payload text, signed with the header's `alg` (or the
    /// signer's default when the header has none usable).
    pub fn token_raw(&self, header: &str, payload: &str) -> String {
        let alg = serde_json::from_str::<Value>(header)
            .ok()
            .and_then(|h| h["alg"].as_str().map(str::to_owned))
            .filter(|a| a != "none" && !a.is_empty())
            .unwrap_or_else(|| self.alg.to_string());
        let alg = if self.can_sign(&alg) {
            alg
        } else {
            self.alg.to_string()
        };
        let input = format!("{}.{}", b64(header), b64(payload));
        let sig = self.sign_as(&alg, input.as_bytes());
        format!("{input}.{}", b64(sig))
    }

    fn can_sign(&self, alg: &str) -> bool {
        match &self.key {
            Private::Rsa(_) => alg.starts_with("RS") || alg.starts_with("PS"),
            Private::Hmac(_) => alg.starts_with("HS"),
            _ => alg == self.alg,
        }
    }
}

fn hmac_tag<M: Mac + hmac::digest::KeyInit>(key: &[u8], input: &[u8]) -> Vec<u8> {
    let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key).unwrap();
    mac.update(input);
    mac.finalize().into_bytes().to_vec()
}

/// A JWKS document text holding these JWKs.
/// The public modulus of the RSA key with the ROCA structure (CVE-2017-15361) in Project
/// Wycheproof's `json_web_key_test.json` (group `jws_rsa_roca_key`, kid `kid-rsa-roca-sign`),
/// whose test vector expects it refused.
pub const WYCHEPROOF_ROCA_N: &str = "AanFpofbj7KjD4Lf-N2hVMKR7yewSyXhhbirIMTGpfYEhZ_lnt5UoK98DnKIgArXGTu3MaW_HhFw16HGaTDUHqPrId7fe4r11CqRw09yBFuW79V8sYIwHdzCaWflUI6auImYbVfoN9_nD5n8N8SY9DwXw7mwZM9wREPXoDPgOoIWl6q_MPsp7n0zs3Z5ZaiQWOOzl1S9OhwAfSiiOwz6efnXEaxuTEtPd7BjSx7NaFka8Dx9U7YqXy2RFj1O9PjyaDGuRh7YXsX3iMUSP_wSyHQg_c_qHRtKUsNSGCT7OZg0hzm2KphtjnayKJvC64vAbROBR4Ubg6Bxg9IQVZ-QYyE";

pub fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// Claims that pass every check of a provider with issuer `iss` and audience `aud`.
pub fn good_claims(iss: &str, aud: &str) -> Value {
    let now = now();
    json!({"iss": iss, "aud": aud, "sub": "alice", "iat": now, "exp": now + 600})
}
