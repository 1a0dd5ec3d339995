//! RSASSA-PKCS1-v1_5 verification (RS256, RS384, RS512) for keys with the public exponent
//! 65537, on AWS-LC's own Montgomery arithmetic (the assembly `jwt_authn`'s BoringSSL runs too),
//! without the EVP layer around it: no context allocated per call, and no conversion into or
//! out of Montgomery form. Other exponents, and PSS, stay on `aws-lc-rs`. Every input is
//! public: nothing here needs constant time.
//!
//! With `MM(a, b) = a·b·R⁻¹ mod n` (one Montgomery product), sixteen squarings of the signature
//! `s` itself give `s^65536·R^-65535`, and one product with `s` gives `z = s^65537·R^-65536`.
//! RFC 8017 §8.2.2 asks whether `s^65537 ≡ EM (mod n)`, `EM` the encoding the signature must
//! have; `R` is invertible mod `n` (odd), so that holds exactly when `z = EM·K mod n`, with
//! `K = R^-65536 mod n` made with the key. `EM = P + H`: the padding and `DigestInfo` (`P`,
//! fixed per key and hash, `P·K mod n` made with the key) and the digest `H` (at most 512
//! bits), so a request pays `H·K mod n`, a short product and one division, where putting `s`
//! into Montgomery form would cost a full product: 17 full products in all, against 18, and
//! 19 with the conversion out that the EVP path makes. `EM < n` (it begins `00 01`), so it is
//! its own residue and the test is the standard one.

use aws_lc_sys as sys;
use std::cell::RefCell;
use std::ptr::null_mut;

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

impl Hash {
    fn info(self) -> (&'static [u8; 19], usize) {
        match self {
            Hash::Sha256 => (&SHA256_INFO, 32),
            Hash::Sha384 => (&SHA384_INFO, 48),
            Hash::Sha512 => (&SHA512_INFO, 64),
        }
    }

    /// The digest of `input`, in the first bytes of `out`; its size.
    fn digest(self, input: &[u8], out: &mut [u8; 64]) -> usize {
        let (at, size) = (out.as_mut_ptr(), self.info().1);
        // SAFETY: `out` holds the largest digest; `input` is read during the call only.
        unsafe {
            match self {
                Hash::Sha256 => sys::SHA256(input.as_ptr(), input.len(), at),
                Hash::Sha384 => sys::SHA384(input.as_ptr(), input.len(), at),
                Hash::Sha512 => sys::SHA512(input.as_ptr(), input.len(), at),
            };
        }
        size
    }
}

/// An RSA public key with `e = 65537`, for one hash, ready for verification: its modulus,
/// Montgomery context, `K` and `P·K` (see the module's text), made once.
pub struct Key {
    /// The modulus, big-endian, and as AWS-LC's number.
    modulus: Vec<u8>,
    n: *mut sys::BIGNUM,
    mont: *mut sys::BN_MONT_CTX,
    k: *mut sys::BIGNUM,
    pk: *mut sys::BIGNUM,
    hash: Hash,
}

// SAFETY: after `new`, the numbers and the Montgomery context are only read (AWS-LC takes them
// as `const`), from any thread.
unsafe impl Send for Key {}
unsafe impl Sync for Key {}

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: made by `new` (or null), freed once.
        unsafe {
            sys::BN_free(self.pk);
            sys::BN_free(self.k);
            sys::BN_MONT_CTX_free(self.mont);
            sys::BN_free(self.n);
        }
    }
}

impl Key {
    /// The key of modulus `n` (big-endian) and exponent `e` for `hash`; `None` unless `e` is
    /// 65537 and the modulus is 2048 to 8192 bits and odd.
    pub fn new(n: &[u8], e: &[u8], hash: Hash) -> Option<Key> {
        let e = &e[e.iter().take_while(|b| **b == 0).count()..];
        let n = &n[n.iter().take_while(|b| **b == 0).count()..];
        let bits_ok = (256..=MAX_BYTES).contains(&n.len()) && !(n.len() == 256 && n[0] < 0x80);
        if e != [1, 0, 1] || !bits_ok || n[n.len() - 1] & 1 == 0 {
            return None;
        }
        let mut key = Key {
            modulus: n.to_vec(),
            n: null_mut(),
            mont: null_mut(),
            k: null_mut(),
            pk: null_mut(),
            hash,
        };
        // SAFETY: plain constructors and arithmetic on numbers made here; each result is
        // checked, and `Drop` frees what was made if a step fails.
        unsafe { key.make(n).then_some(key) }
    }

    /// Makes `n`, its Montgomery context, `K = R^-65536 mod n` (sixteen Montgomery squarings
    /// of 1 give `R^-65535`, one more product with 1 gives `R^-65536`) and `P·K mod n`.
    unsafe fn make(&mut self, n: &[u8]) -> bool {
        self.n = sys::BN_bin2bn(n.as_ptr(), n.len(), null_mut());
        if self.n.is_null() {
            return false;
        }
        self.mont = sys::BN_MONT_CTX_new_for_modulus(self.n, null_mut());
        let (one, ctx) = (sys::BN_new(), sys::BN_CTX_new());
        self.k = sys::BN_new();
        self.pk = sys::BN_new();
        let mut padding = [0u8; MAX_BYTES];
        let padding = &mut padding[..self.modulus.len()];
        let made = !self.mont.is_null()
            && !one.is_null()
            && !ctx.is_null()
            && !self.k.is_null()
            && !self.pk.is_null()
            && sys::BN_one(one) == 1
            && sys::BN_copy(self.k, one) == self.k
            && (0..16)
                .all(|_| sys::BN_mod_mul_montgomery(self.k, self.k, self.k, self.mont, ctx) == 1)
            && sys::BN_mod_mul_montgomery(self.k, self.k, one, self.mont, ctx) == 1
            && encode(self.hash, &[0; 64][..self.hash.info().1], padding)
            && !sys::BN_bin2bn(padding.as_ptr(), padding.len(), self.pk).is_null()
            && sys::BN_mod_mul(self.pk, self.pk, self.k, self.n, ctx) == 1;
        sys::BN_free(one);
        sys::BN_CTX_free(ctx);
        made
    }

    /// Whether `sig` is a valid signature of `input` under this key and its hash.
    pub fn verify(&self, input: &[u8], sig: &[u8]) -> bool {
        if sig.len() != self.modulus.len() {
            return false;
        }
        let mut digest = [0u8; 64];
        let size = self.hash.digest(input, &mut digest);
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => scratch
                .as_mut()
                .is_some_and(|s| s.check(self, sig, &digest[..size])),
            Err(_) => false,
        })
    }
}

/// `EM = 0x00 01 FF…FF 00 || DigestInfo || digest` (RFC 8017 §9.2) in `out`, whose length is
/// the modulus's; `false` if it is too short for the encoding.
fn encode(hash: Hash, digest: &[u8], out: &mut [u8]) -> bool {
    let (info, size) = hash.info();
    let t = info.len() + size;
    if out.len() < t + 11 || digest.len() != size {
        return false;
    }
    let (pad, tail) = out.split_at_mut(out.len() - t);
    pad.fill(0xff);
    pad[0] = 0;
    pad[1] = 1;
    pad[pad.len() - 1] = 0;
    let (prefix, rest) = tail.split_at_mut(info.len());
    prefix.copy_from_slice(info);
    rest.copy_from_slice(digest);
    true
}

/// One thread's numbers and context, kept between verifications (no allocation per call once
/// they have grown to the largest modulus seen).
struct Scratch {
    ctx: *mut sys::BN_CTX,
    s: *mut sys::BIGNUM,
    z: *mut sys::BIGNUM,
    t: *mut sys::BIGNUM,
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
                z: sys::BN_new(),
                t: sys::BN_new(),
            };
            let made = [scratch.s, scratch.z, scratch.t]
                .iter()
                .all(|b| !b.is_null());
            (made && !scratch.ctx.is_null()).then_some(scratch)
        }
    }

    /// Whether `sig^65537 ≡ EM (mod n)` for the encoding of `digest`: `z = MM(…MM(s, s)…, s)`
    /// against `t = (H·K + P·K) mod n` (see the module's text). `false` when `sig` is not below
    /// `n` (RFC 8017 §5.2.2) or AWS-LC failed.
    fn check(&mut self, key: &Key, sig: &[u8], digest: &[u8]) -> bool {
        let (s, z, t, ctx, mont) = (self.s, self.z, self.t, self.ctx, key.mont);
        // SAFETY: every pointer is live (made in `new`, freed in `drop`); AWS-LC allows a
        // product's result to alias its operands, and every operand is below `n`.
        unsafe {
            // Equal lengths: the byte order is the numbers' order.
            if sig >= key.modulus.as_slice()
                || sys::BN_bin2bn(sig.as_ptr(), sig.len(), s).is_null()
                || sys::BN_mod_mul_montgomery(z, s, s, mont, ctx) != 1
                || !(1..16).all(|_| sys::BN_mod_mul_montgomery(z, z, z, mont, ctx) == 1)
                || sys::BN_mod_mul_montgomery(z, z, s, mont, ctx) != 1
                || sys::BN_bin2bn(digest.as_ptr(), digest.len(), t).is_null()
                || sys::BN_mul(t, t, key.k, ctx) != 1
                || sys::BN_uadd(t, t, key.pk) != 1
                || sys::BN_nnmod(t, t, key.n, ctx) != 1
            {
                return false;
            }
            sys::BN_cmp(z, t) == 0
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: made in `new`, freed once (the null pointers of a failed `new` are accepted).
        unsafe {
            sys::BN_free(self.t);
            sys::BN_free(self.z);
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
        for hash in [Hash::Sha256, Hash::Sha384, Hash::Sha512] {
            let key = Key::new(&n, &e, hash).unwrap();
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
                assert_eq!(key.verify(input, sig), want, "{hash:?} case {i}");
                assert_eq!(want, i == 0, "{hash:?} case {i}");
            }
            let other = [Hash::Sha256, Hash::Sha384, Hash::Sha512];
            for wrong in other.into_iter().filter(|h| *h != hash) {
                assert!(!Key::new(&n, &e, wrong).unwrap().verify(&input, &good));
            }
        }
    }

    #[test]
    fn a_longer_modulus() {
        let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, 3072).unwrap();
        let (n, e) = (private.n().to_bytes_be(), private.e().to_bytes_be());
        let key = Key::new(&n, &e, Hash::Sha512).unwrap();
        let good = sign(&private, Hash::Sha512, b"h.p");
        let mut bad = good.clone();
        bad[383] ^= 1;
        assert!(key.verify(b"h.p", &good) && !key.verify(b"h.p", &bad));
        assert!(!aws_lc(&private, Hash::Sha512, b"h.p", &bad));
    }

    #[test]
    fn many_threads_verify_at_once() {
        let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let (n, e) = (private.n().to_bytes_be(), private.e().to_bytes_be());
        let key = std::sync::Arc::new(Key::new(&n, &e, Hash::Sha256).unwrap());
        let sig = sign(&private, Hash::Sha256, b"a.b");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (key, sig) = (key.clone(), sig.clone());
                std::thread::spawn(move || (0..20).all(|_| key.verify(b"a.b", &sig)))
            })
            .collect();
        assert!(threads.into_iter().all(|t| t.join().unwrap()));
    }

    #[test]
    fn only_keys_it_is_for() {
        let n = [&[0xc5][..], &[0x11; 254], &[0x01]].concat();
        assert!(Key::new(&n, &[1, 0, 1], Hash::Sha256).is_some());
        assert!(Key::new(&[&[0, 0][..], &n].concat(), &[0, 1, 0, 1], Hash::Sha256).is_some());
        assert!(
            Key::new(&n, &[3], Hash::Sha256).is_none(),
            "another exponent: aws-lc-rs"
        );
        assert!(
            Key::new(&n[1..], &[1, 0, 1], Hash::Sha256).is_none(),
            "under 2048 bits"
        );
        let low = [&[0x7f][..], &n[1..]].concat();
        assert!(
            Key::new(&low, &[1, 0, 1], Hash::Sha256).is_none(),
            "2047 bits"
        );
        let even = [&n[..255], &[0x02][..]].concat();
        assert!(
            Key::new(&even, &[1, 0, 1], Hash::Sha256).is_none(),
            "an even modulus"
        );
        assert!(
            Key::new(&vec![0xc5; 1025], &[1, 0, 1], Hash::Sha256).is_none(),
            "over 8192 bits"
        );
    }
}
