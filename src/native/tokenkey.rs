//! The native build's verified-token cache keys: AES-128-GMAC through AWS-LC, under a key drawn
//! when the configuration loads.
//!
//! Every request with a cached token hashes the whole token (several hundred bytes). SipHash-2-4,
//! the Wasm build's key ([`crate::cache::Secret`]), costs about 4.8 instructions a byte; AWS-LC's
//! GHASH runs on carry-less multiplication and AES-NI, several blocks at once, for a fraction of
//! that (README, Performance). The key is the GMAC tag of the token (as additional data, nothing
//! encrypted) under a nonce fixed per provider. A fixed nonce would be fatal for a MAC whose tags
//! are seen; these tags never leave the process, and GHASH under an unknown key is
//! almost-universal: two different tokens get the same key with probability about
//! `length / 16 / 2^128`, whatever tokens an attacker sends. Providers differ by their nonce,
//! so a token verified for one is no cached token for another.

use crate::cache::{Secret, TokenKey};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use siphasher::sip::SipHasher24;
use std::hash::Hasher;

/// Keys tokens for one configuration's verified-token cache.
pub struct TokenHasher {
    /// `None` only if AWS-LC refused a 16-byte AES key: then SipHash, as in the Wasm build.
    gmac: Option<LessSafeKey>,
    /// Makes each provider's nonce, and is the SipHash key of the fallback.
    secret: Secret,
    /// The configured providers' nonce words, made once (a SipHash of the name per request
    /// cost about 120 instructions).
    words: Vec<(String, u64)>,
}

impl TokenHasher {
    /// A hasher under the random words `aes` (the AES key) and `secret`.
    pub fn new(aes: Secret, secret: Secret) -> TokenHasher {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&aes.0.to_le_bytes());
        bytes[8..].copy_from_slice(&aes.1.to_le_bytes());
        let gmac = UnboundKey::new(&AES_128_GCM, &bytes)
            .ok()
            .map(LessSafeKey::new);
        TokenHasher {
            gmac,
            secret,
            words: Vec::new(),
        }
    }

    /// The same hasher, with the nonce words of `providers` made now.
    pub fn with_providers<'a>(mut self, providers: impl IntoIterator<Item = &'a str>) -> Self {
        self.words = providers
            .into_iter()
            .map(|name| (name.to_string(), self.provider_word(name)))
            .collect();
        self
    }

    /// The key of `token` for `provider`.
    pub fn key(&self, provider: &str, token: &str) -> TokenKey {
        let Some(gmac) = &self.gmac else {
            return self.secret.key(provider, token);
        };
        let mut nonce = [0u8; 12];
        let word = match self.words.iter().find(|(name, _)| name == provider) {
            Some((_, word)) => *word,
            None => self.provider_word(provider),
        };
        nonce[..8].copy_from_slice(&word.to_le_bytes());
        let sealed = gmac.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(token.as_bytes()),
            &mut [],
        );
        let tag = sealed
            .ok()
            .and_then(|t| <[u8; 16]>::try_from(t.as_ref()).ok());
        match tag {
            Some(tag) => u128::from_le_bytes(tag),
            // Only for additional data past 2^61 bytes.
            None => self.secret.key(provider, token),
        }
    }

    /// A keyed 64-bit hash of the provider's name.
    fn provider_word(&self, provider: &str) -> u64 {
        let mut h = SipHasher24::new_with_keys(self.secret.0, self.secret.1);
        h.write(provider.as_bytes());
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_tell_tokens_providers_and_secrets_apart() {
        let h = TokenHasher::new(Secret(1, 2), Secret(3, 4));
        let k = h.key("idp", "a.b.c");
        assert_eq!(k, h.key("idp", "a.b.c"));
        assert_ne!(k, h.key("idp", "a.b.d"));
        assert_ne!(k, h.key("idp", "a.b.c="));
        assert_ne!(k, h.key("other", "a.b.c"));
        // Words made in advance are the words made on the spot.
        let ready = TokenHasher::new(Secret(1, 2), Secret(3, 4)).with_providers(["idp"]);
        assert_eq!(ready.key("idp", "a.b.c"), k);
        assert_eq!(ready.key("other", "a.b.c"), h.key("other", "a.b.c"));
        assert_ne!(h.key("idp", ""), h.key("idp", "\0"));
        let long = "x".repeat(5000);
        assert_ne!(h.key("idp", &long), h.key("idp", &long[1..]));
        assert_ne!(
            k,
            TokenHasher::new(Secret(1, 3), Secret(3, 4)).key("idp", "a.b.c")
        );
        assert_ne!(
            k,
            TokenHasher::new(Secret(1, 2), Secret(3, 5)).key("idp", "a.b.c")
        );
    }
}
