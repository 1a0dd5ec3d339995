//! The native build's verified-token cache keys: POLYVAL of the token under a random key `H`,
//! masked with a random word per provider, both drawn when the configuration loads.
//!
//! Every request with a cached token hashes the whole token (several hundred bytes). SipHash-2-4,
//! the Wasm build's key ([`crate::cache::Secret`]), costs about 4.8 instructions a byte; POLYVAL
//! runs on carry-less multiplication (PCLMULQDQ, PMULL) four blocks at a time, for about a
//! third of that (README, Performance). The input is the token, zero-padded to 16-byte blocks, then a
//! block with its length, so that tokens of different lengths never share an input. POLYVAL is
//! almost-universal: under an `H` nobody outside the process knows, two different tokens of at
//! most `n` blocks get the same value with probability at most `(n + 1) / 2^128`, whatever
//! tokens an attacker sends (the keys never leave the process). The mask is each provider's own
//! (a keyed SipHash-128 of its name), so a token verified for one is no cached token for
//! another.

use crate::cache::{Secret, TokenKey};
use polyval::universal_hash::UniversalHash;
use polyval::{Block, Key, Polyval};
use siphasher::sip128::{Hasher128, SipHasher24};
use std::hash::Hasher;

/// Keys tokens for one configuration's verified-token cache.
pub struct TokenHasher {
    /// POLYVAL under the random `H`, its powers expanded once; cloned for each token.
    polyval: Polyval,
    /// Makes each provider's mask.
    secret: Secret,
    /// The configured providers' masks, made once (a SipHash of the name per request cost
    /// about 120 instructions).
    masks: Vec<(String, u128)>,
}

impl TokenHasher {
    /// A hasher under the random words `h` (POLYVAL's key) and `secret` (the masks' key).
    pub fn new(h: Secret, secret: Secret) -> TokenHasher {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&h.0.to_le_bytes());
        bytes[8..].copy_from_slice(&h.1.to_le_bytes());
        TokenHasher {
            polyval: Polyval::new(&Key::from(bytes)),
            secret,
            masks: Vec::new(),
        }
    }

    /// The same hasher, with the masks of `providers` made now.
    pub fn with_providers<'a>(mut self, providers: impl IntoIterator<Item = &'a str>) -> Self {
        self.masks = providers
            .into_iter()
            .map(|name| (name.to_string(), self.provider_mask(name)))
            .collect();
        self
    }

    /// The key of `token` for `provider`.
    pub fn key(&self, provider: &str, token: &str) -> TokenKey {
        let mut hash = self.polyval.clone();
        hash.update_padded(token.as_bytes());
        let mut length = [0u8; 16];
        length[..8].copy_from_slice(&(token.len() as u64).to_le_bytes());
        hash.update(&[Block::from(length)]);
        let tag: [u8; 16] = hash.finalize().into();
        let mask = match self.masks.iter().find(|(name, _)| name == provider) {
            Some((_, mask)) => *mask,
            None => self.provider_mask(provider),
        };
        u128::from_le_bytes(tag) ^ mask
    }

    /// A keyed 128-bit hash of the provider's name.
    fn provider_mask(&self, provider: &str) -> u128 {
        let mut h = SipHasher24::new_with_keys(self.secret.0, self.secret.1);
        h.write(provider.as_bytes());
        h.finish128().as_u128()
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
        // The length block tells apart tokens that pad to the same blocks.
        let block = "0123456789abcdef";
        assert_ne!(h.key("idp", block), h.key("idp", &format!("{block}\0")));
        assert_ne!(h.key("idp", "ab"), h.key("idp", "ab\0\0"));
        // Masks made in advance are the masks made on the spot.
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

    #[test]
    fn many_tokens_many_keys() {
        let h = TokenHasher::new(Secret(7, 8), Secret(9, 10)).with_providers(["idp"]);
        let keys: std::collections::HashSet<TokenKey> = (0..20_000)
            .map(|i| h.key("idp", &format!("eyJhbGciOiJSUzI1NiJ9.{i}.sig")))
            .collect();
        assert_eq!(keys.len(), 20_000);
    }
}
