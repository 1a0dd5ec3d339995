//! RSASSA-PKCS1-v1_5 verification (RS256, RS384, RS512) for keys with the public exponent
//! 65537, on AWS-LC's own Montgomery arithmetic (the assembly `jwt_authn`'s BoringSSL runs too),
//! without the EVP layer around it: no context allocated per call, no conversion out of
//! Montgomery form, and the encoding compared rather than parsed (RFC 8017 §8.2.2, the
//! comparison it recommends). Other exponents, and PSS, stay on `aws-lc-rs`.
//!
//! `s^65537 mod n` in 18 Montgomery products: `x = s·R`, sixteen squarings give `s^65536·R`,
//! and one product with `s` itself (`·s·R⁻¹`) leaves `s^65537` out of Montgomery form. Every
//! input is public: nothing here needs constant time.

use aws_lc_sys as sys;
use std::cell::RefCell;

/// The DER `DigestInfo` prefixes of SHA-256, SHA-384 and SHA-512 (RFC 8017 §9.2, note 1).
const SHA256_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
const SHA384_INFO: [u8; 19] = [
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0x04, 0x30,
];
const SHA512_INFO: [u8; 19] = [
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05,
    0x00, 0x04, 0x40,
];

/// The largest modulus, in bytes (8192 bits, as the key parser allows).
const MAX_BYTES: usize = 1024;

/// The hash of an RS* algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// An RSA public key with `e = 65537`, ready for verification: its modulus and Montgomery
/// context, made once.
pub struct Key {
    n: *mut sys::BIGNUM,
    mont: *mut sys::BN_MONT_CTX,
    len: usize,
}

// SAFETY: after `new`, the modulus and Montgomery context are only read (AWS-LC's
// `BN_mod_mul_montgomery` takes them as `const`), from any thread.
unsafe impl Send for Key {}
unsafe impl Sync for Key {}

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: made by `new`, freed once.
        unsafe {
            sys::BN_MONT_CTX_free(self.mont);
            sys::BN_free(self.n);
        }
    }
}

impl Key {
    /// The key of modulus `n` (big-endian) and exponent `e`; `None` unless `e` is 65537 and
    /// the modulus is 2048 to 8192 bits and odd.
    pub fn new(n: &[u8], e: &[u8]) -> Option<Key> {
        let e = e
            .iter()
            .skip_while(|b| **b == 0)
            .copied()
            .collect::<Vec<u8>>();
        let n = &n[n.iter().take_while(|b| **b == 0).count()..];
        if e != [1, 0, 1] || !(256..=MAX_BYTES).contains(&n.len()) || n[n.len() - 1] & 1 == 0 {
            return None;
        }
        if n[0] < 0x80 && n.len() == 256 {
            return None; // fewer than 2048 bits
        }
        // SAFETY: plain constructors; every pointer is checked, and freed on failure.
        unsafe {
            let bn = sys::BN_bin2bn(n.as_ptr(), n.len(), std::ptr::null_mut());
            if bn.is_null() {
                return None;
            }
            let mont = sys::BN_MONT_CTX_new_for_modulus(bn, std::ptr::null_mut());
            if mont.is_null() {
                sys::BN_free(bn);
                return None;
            }
            Some(Key {
                n: bn,
                mont,
                len: n.len(),
            })
        }
    }

    /// Whether `sig` is a valid signature of `input` under this key with `hash`.
    pub fn verify(&self, hash: Hash, input: &[u8], sig: &[u8]) -> bool {
        if sig.len() != self.len {
            return false;
        }
        let mut expected = [0u8; MAX_BYTES];
        let expected = &mut expected[..self.len];
        if !encode(hash, input, expected) {
            return false;
        }
        let mut got = [0u8; MAX_BYTES];
        let got = &mut got[..self.len];
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => scratch.as_mut().is_some_and(|s| s.power(self, sig, got)),
            Err(_) => false,
        }) && got == expected
    }
}

/// `EM = 0x00 01 FF…FF 00 || DigestInfo || H(input)` (RFC 8017 §9.2), in `out`, whose length
/// is the modulus's; `false` if it is too short for the encoding.
fn encode(hash: Hash, input: &[u8], out: &mut [u8]) -> bool {
    let (info, size) = match hash {
        Hash::Sha256 => (&SHA256_INFO, 32),
        Hash::Sha384 => (&SHA384_INFO, 48),
        Hash::Sha512 => (&SHA512_INFO, 64),
    };
    let t = info.len() + size;
    if out.len() < t + 11 {
        return false;
    }
    let (pad, tail) = out.split_at_mut(out.len() - t);
    pad.fill(0xff);
    pad[0] = 0;
    pad[1] = 1;
    pad[pad.len() - 1] = 0;
    let (prefix, digest) = tail.split_at_mut(info.len());
    prefix.copy_from_slice(info);
    // SAFETY: `digest` has exactly the hash's size; `input` is read during the call only.
    unsafe {
        let at = digest.as_mut_ptr();
        match hash {
            Hash::Sha256 => sys::SHA256(input.as_ptr(), input.len(), at),
            Hash::Sha384 => sys::SHA384(input.as_ptr(), input.len(), at),
            Hash::Sha512 => sys::SHA512(input.as_ptr(), input.len(), at),
        };
    }
    true
}

/// One thread's numbers and context, kept between verifications (no allocation per call once
/// they have grown to the largest modulus seen).
struct Scratch {
    ctx: *mut sys::BN_CTX,
    s: *mut sys::BIGNUM,
    x: *mut sys::BIGNUM,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = RefCell::new(Scratch::new());
}

impl Scratch {
    fn new() -> Option<Scratch> {
        // SAFETY: plain constructors, checked; `Drop` frees what was made.
        unsafe {
            let scratch = Scratch {
                ctx: sys::BN_CTX_new(),
                s: sys::BN_new(),
                x: sys::BN_new(),
            };
            let made = !scratch.ctx.is_null() && !scratch.s.is_null() && !scratch.x.is_null();
            made.then_some(scratch)
        }
    }

    /// `sig^65537 mod n`, big-endian in `out` (the modulus's length); `false` when `sig` is not
    /// below `n` (RFC 8017 §5.2.2) or AWS-LC failed.
    fn power(&mut self, key: &Key, sig: &[u8], out: &mut [u8]) -> bool {
        let (s, x, ctx, mont) = (self.s, self.x, self.ctx, key.mont);
        // SAFETY: every pointer is live (made in `new`, freed in `drop`); AWS-LC allows the
        // result to alias the operands of a Montgomery product.
        unsafe {
            if sys::BN_bin2bn(sig.as_ptr(), sig.len(), s).is_null()
                || sys::BN_ucmp(s, key.n) >= 0
                || sys::BN_to_montgomery(x, s, mont, ctx) != 1
            {
                return false;
            }
            for _ in 0..16 {
                if sys::BN_mod_mul_montgomery(x, x, x, mont, ctx) != 1 {
                    return false;
                }
            }
            sys::BN_mod_mul_montgomery(x, x, s, mont, ctx) == 1
                && sys::BN_bn2bin_padded(out.as_mut_ptr(), out.len(), x) == 1
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: made in `new`, freed once (the null pointers of a failed `new` are accepted).
        unsafe {
            sys::BN_free(self.x);
            sys::BN_free(self.s);
            sys::BN_CTX_free(self.ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::rsa::traits::PublicKeyParts;
    use ::rsa::{Pkcs1v15Sign, RsaPrivateKey};
    use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
    use sha2::{Digest, Sha256, Sha384, Sha512};

    fn sign(private: &RsaPrivateKey, hash: Hash, input: &[u8]) -> Vec<u8> {
        let signed = match hash {
            Hash::Sha256 => private.sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(input)),
            Hash::Sha384 => private.sign(Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(input)),
            Hash::Sha512 => private.sign(Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(input)),
        };
        signed.unwrap()
    }

    /// What `aws-lc-rs` (the EVP path) says of the same signature.
    fn aws_lc(private: &RsaPrivateKey, hash: Hash, input: &[u8], sig: &[u8]) -> bool {
        use ::rsa::pkcs1::EncodeRsaPublicKey;
        let der = private.to_public_key().to_pkcs1_der().unwrap();
        let alg: &dyn VerificationAlgorithm = match hash {
            Hash::Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Hash::Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Hash::Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        };
        UnparsedPublicKey::new(alg, der.as_bytes())
            .verify(input, sig)
            .is_ok()
    }

    #[test]
    fn signatures_verify_as_aws_lc_says_they_do() {
        let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let (n, e) = (private.n().to_bytes_be(), private.e().to_bytes_be());
        let key = Key::new(&n, &e).unwrap();
        for hash in [Hash::Sha256, Hash::Sha384, Hash::Sha512] {
            let input = format!("header.payload-{hash:?}").into_bytes();
            let good = sign(&private, hash, &input);
            let mut cases = vec![(input.clone(), good.clone())];
            for i in [0, 1, 100, 255] {
                let mut bad = good.clone();
                bad[i] ^= 0x40;
                cases.push((input.clone(), bad));
            }
            cases.push((b"header.other".to_vec(), good.clone()));
            cases.push((input.clone(), good[1..].to_vec()));
            cases.push((input.clone(), [&[0][..], &good].concat()));
            cases.push((input.clone(), n.clone()));
            cases.push((input.clone(), vec![0xff; 256]));
            cases.push((input.clone(), vec![0; 256]));
            for (i, (input, sig)) in cases.iter().enumerate() {
                let want = aws_lc(&private, hash, input, sig);
                assert_eq!(key.verify(hash, input, sig), want, "{hash:?} case {i}");
                assert_eq!(want, i == 0, "{hash:?} case {i}");
            }
            let other = [Hash::Sha256, Hash::Sha384, Hash::Sha512];
            for wrong in other.into_iter().filter(|h| *h != hash) {
                assert!(!key.verify(wrong, &input, &good));
            }
        }
    }

    #[test]
    fn many_threads_verify_at_once() {
        let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let (n, e) = (private.n().to_bytes_be(), private.e().to_bytes_be());
        let key = std::sync::Arc::new(Key::new(&n, &e).unwrap());
        let sig = sign(&private, Hash::Sha256, b"a.b");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (key, sig) = (key.clone(), sig.clone());
                std::thread::spawn(move || (0..20).all(|_| key.verify(Hash::Sha256, b"a.b", &sig)))
            })
            .collect();
        assert!(threads.into_iter().all(|t| t.join().unwrap()));
    }

    #[test]
    fn only_keys_it_is_for() {
        let n = [&[0xc5][..], &[0x11; 254], &[0x01]].concat();
        assert!(Key::new(&n, &[1, 0, 1]).is_some());
        assert!(Key::new(&[&[0, 0][..], &n].concat(), &[0, 1, 0, 1]).is_some());
        assert!(Key::new(&n, &[3]).is_none(), "another exponent: aws-lc-rs");
        assert!(Key::new(&n[1..], &[1, 0, 1]).is_none(), "under 2048 bits");
        let low = [&[0x7f][..], &n[1..]].concat();
        assert!(Key::new(&low, &[1, 0, 1]).is_none(), "2047 bits");
        let even = [&n[..255], &[0x02][..]].concat();
        assert!(Key::new(&even, &[1, 0, 1]).is_none(), "an even modulus");
        assert!(
            Key::new(&vec![0xc5; 1025], &[1, 0, 1]).is_none(),
            "over 8192 bits"
        );
    }
}
