//! What Envoy's `verify_signature` foreign function needs, built without the host: public keys
//! as DER SubjectPublicKeyInfo (made once, when a key is loaded), ECDSA signatures converted from
//! JWS `r || s` to DER, and the protobuf envelope of the call and of its answer.
//!
//! Envoy verifies with BoringSSL's `EVP_DigestVerify` and default padding, so RSA PKCS#1 v1.5
//! (RS256/384/512) and ECDSA (ES256/384/512) go to the host; RSA-PSS, EdDSA and HMAC stay in Wasm.

use super::keys::{Alg, KeyMaterial};
use rsa::pkcs8::EncodePublicKey;

/// The hash name Envoy expects for `alg`, when the host can verify it.
pub fn host_hash(alg: Alg) -> Option<&'static str> {
    match alg {
        Alg::RS256 | Alg::ES256 => Some("sha256"),
        Alg::RS384 | Alg::ES384 => Some("sha384"),
        Alg::RS512 | Alg::ES512 => Some("sha512"),
        _ => None,
    }
}

/// DER SubjectPublicKeyInfo of a key the host can use (RSA and EC).
pub fn spki_der(key: &KeyMaterial) -> Option<Vec<u8>> {
    // id-ecPublicKey with the curve's OID, then the uncompressed point, as fixed DER prefixes.
    const P256: &[u8] = &[
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    const P384: &[u8] = &[
        0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05,
        0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
    ];
    const P521: &[u8] = &[
        0x30, 0x81, 0x9b, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
        0x05, 0x2b, 0x81, 0x04, 0x00, 0x23, 0x03, 0x81, 0x86, 0x00,
    ];
    let with = |prefix: &[u8], point: &[u8]| [prefix, point].concat();
    match key {
        KeyMaterial::Rsa(k) => k.to_public_key_der().ok().map(|d| d.as_bytes().to_vec()),
        KeyMaterial::P256(k) => Some(with(P256, k.to_encoded_point(false).as_bytes())),
        KeyMaterial::P384(k) => Some(with(P384, k.to_encoded_point(false).as_bytes())),
        KeyMaterial::P521(k) => Some(with(P521, k.to_encoded_point(false).as_bytes())),
        _ => None,
    }
}

fn der_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

fn der_integer(out: &mut Vec<u8>, bytes: &[u8]) {
    let trimmed = match bytes.iter().position(|b| *b != 0) {
        Some(i) => &bytes[i..],
        None => &[0u8][..],
    };
    let pad = trimmed[0] & 0x80 != 0;
    out.push(0x02);
    der_length(out, trimmed.len() + usize::from(pad));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(trimmed);
}

/// A JWS ECDSA signature (`r || s`, RFC 7518 §3.4) as DER `SEQUENCE { INTEGER r, INTEGER s }`;
/// `None` when its length is not twice the curve's field size.
pub fn ecdsa_der(alg: Alg, raw: &[u8]) -> Option<Vec<u8>> {
    let half = match alg {
        Alg::ES256 => 32,
        Alg::ES384 => 48,
        Alg::ES512 => 66,
        _ => return None,
    };
    if raw.len() != 2 * half {
        return None;
    }
    let mut body = Vec::with_capacity(raw.len() + 8);
    der_integer(&mut body, &raw[..half]);
    der_integer(&mut body, &raw[half..]);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(0x30);
    der_length(&mut out, body.len());
    out.extend_from_slice(&body);
    Some(out)
}

fn varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
    out.push(number << 3 | 2);
    varint(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// `VerifySignatureArguments { hash_function = 1; public_key = 2; signature = 3; text = 4 }`.
pub fn verify_arguments(hash: &str, spki: &[u8], signature: &[u8], text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(spki.len() + signature.len() + text.len() + 24);
    field(&mut out, 1, hash.as_bytes());
    field(&mut out, 2, spki);
    field(&mut out, 3, signature);
    field(&mut out, 4, text);
    out
}

/// `VerifySignatureResult { bool result = 1; string error = 2; }`: the `result`, or `None` if
/// the bytes are not such a message.
pub fn verify_result(bytes: &[u8]) -> Option<bool> {
    let mut result = false;
    let mut i = 0;
    while i < bytes.len() {
        let tag = bytes[i];
        i += 1;
        let mut value: usize = 0;
        let mut shift = 0;
        loop {
            let b = *bytes.get(i)?;
            i += 1;
            value |= usize::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 35 {
                return None;
            }
        }
        match tag {
            0x08 => result = value == 1,
            t if t & 7 == 2 => i = i.checked_add(value).filter(|end| *end <= bytes.len())?,
            t if t & 7 == 0 => {}
            _ => return None,
        }
    }
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Signer;
    use p256::pkcs8::DecodePublicKey;

    #[test]
    fn spki_keys_parse_as_what_they_are() {
        let rsa = Signer::rsa("RS256", "r", 2048);
        let ec = Signer::es256("e");
        let set = crate::jwt::keys::parse_jwks(
            crate::testkit::jwks(&[
                rsa.jwk(),
                ec.jwk(),
                Signer::es384("f").jwk(),
                Signer::es512("g").jwk(),
            ])
            .as_bytes(),
        )
        .unwrap();
        let der: Vec<Vec<u8>> = set
            .keys
            .iter()
            .map(|k| spki_der(&k.material).unwrap())
            .collect();
        let KeyMaterial::Rsa(r) = &set.keys[0].material else {
            panic!()
        };
        assert_eq!(&rsa::RsaPublicKey::from_public_key_der(&der[0]).unwrap(), r);
        let KeyMaterial::P256(p) = &set.keys[1].material else {
            panic!()
        };
        assert_eq!(
            &p256::ecdsa::VerifyingKey::from_public_key_der(&der[1]).unwrap(),
            p
        );
        let KeyMaterial::P384(p) = &set.keys[2].material else {
            panic!()
        };
        assert_eq!(
            &p384::ecdsa::VerifyingKey::from_public_key_der(&der[2]).unwrap(),
            p
        );
        let KeyMaterial::P521(p) = &set.keys[3].material else {
            panic!()
        };
        let parsed = p521::PublicKey::from_public_key_der(&der[3]).unwrap();
        assert_eq!(
            parsed.to_sec1_bytes(),
            p.to_encoded_point(false).as_bytes().into()
        );
        assert!(spki_der(&KeyMaterial::Hmac(vec![0; 32])).is_none());
    }

    #[test]
    fn ecdsa_signatures_to_der() {
        let ec = Signer::es256("e");
        let raw = ec.sign_as("ES256", b"hello");
        let der = ecdsa_der(Alg::ES256, &raw).unwrap();
        let ours = p256::ecdsa::Signature::from_der(&der).unwrap();
        assert_eq!(&ours.to_bytes()[..], &raw[..]);
        let big = Signer::es512("g").sign_as("ES512", b"hello");
        let der = ecdsa_der(Alg::ES512, &big).unwrap();
        assert_eq!(
            &p521::ecdsa::Signature::from_der(&der).unwrap().to_bytes()[..],
            &big[..]
        );
        // High bits get a zero byte; zeros stay one zero byte; wrong lengths are refused.
        let der = ecdsa_der(Alg::ES256, &[[0xff; 32], [0; 32]].concat()).unwrap();
        assert_eq!(&der[..5], &[0x30, 0x26, 0x02, 0x21, 0x00]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 0x00]);
        assert!(ecdsa_der(Alg::ES256, &[0; 63]).is_none());
        assert!(ecdsa_der(Alg::RS256, &[0; 64]).is_none());
    }

    #[test]
    fn protobuf_envelope() {
        let args = verify_arguments("sha256", &[1, 2], &[3; 200], b"t");
        assert_eq!(&args[..8], b"\x0a\x06sha256");
        assert_eq!(&args[8..12], &[0x12, 2, 1, 2]);
        assert_eq!(&args[12..15], &[0x1a, 0xc8, 0x01]);
        assert_eq!(&args[args.len() - 3..], &[0x22, 1, b't']);
        assert_eq!(verify_result(&[0x08, 0x01, 0x12, 0x00]), Some(true));
        assert_eq!(
            verify_result(&[0x08, 0x00, 0x12, 0x03, b'b', b'a', b'd']),
            Some(false)
        );
        assert_eq!(verify_result(&[]), Some(false));
        assert_eq!(verify_result(&[0x12, 0x05, b'x']), None);
        assert_eq!(verify_result(&[0x08]), None);
        assert_eq!(verify_result(&[0x0d, 0, 0, 0, 0]), None);
    }
}
