//! What the native shell knows when it decides: the configured and fetched keys and the
//! verified-token cache. Envoy's workers share the module's memory, so one cache serves them all
//! (the Wasm build has one per VM): decisions read it together, inserts take it alone, after
//! the decision.

use super::credentials;
use super::introspect::{self, Delivered};
use super::remote::State;
use super::tokenkey::TokenHasher;
use crate::binding::Peer;
use crate::cache::{self, Secret, TokenKey, TtlCache, VerifiedCache};
use crate::config::{Config, KeySource};
use crate::decision::{self, Cached, CredentialNow, KeysNow, Known};
use crate::jwt::keys::{Alg, Jwk};
use serde_json::{Map, Value};
use std::cell::{Cell, OnceCell};
use std::collections::hash_map::RandomState;
use std::ffi::c_void;
use std::hash::{BuildHasher, Hasher};
use std::sync::{RwLock, RwLockReadGuard};

type Claims = Map<String, Value>;

/// The verified-token cache of one configuration, for every worker.
pub struct VerifiedTokens {
    cache: RwLock<VerifiedCache<Claims>>,
    /// Makes the cache keys, under secrets drawn when the configuration loads.
    hasher: TokenHasher,
}

impl VerifiedTokens {
    /// The cache of `config`'s providers.
    pub fn new(config: &Config) -> VerifiedTokens {
        VerifiedTokens {
            cache: RwLock::new(VerifiedCache::bounded(
                cache::VERIFIED_ENTRIES,
                cache::VERIFIED_BYTES,
            )),
            hasher: TokenHasher::new(random_secret(), random_secret())
                .with_providers(config.providers.iter().map(|p| p.name.as_str())),
        }
    }

    /// A view for one decision at `now_ms`, holding the cache, the remote providers' `states`
    /// and the introspection caches for reading, with what the request's calls `delivered`;
    /// `gave_up`: a provider the request waited for long enough.
    pub fn view<'a>(
        &'a self,
        config: &'a Config,
        states: Vec<Option<RwLockReadGuard<'a, State>>>,
        answers: Answers<'a>,
        clients: Vec<RwLockReadGuard<'a, credentials::State>>,
        now_ms: u64,
        gave_up: Option<usize>,
    ) -> View<'a> {
        View {
            filter: std::ptr::null_mut(),
            config,
            answers,
            clients,
            cache: self
                .cache
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            hasher: &self.hasher,
            now_ms,
            hits: Cell::new(0),
            states,
            gave_up,
        }
    }

    /// Keeps the claims of tokens verified just now.
    pub fn remember(&self, verified: Vec<decision::Verified>, now_ms: u64) {
        if verified.is_empty() {
            return;
        }
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for v in verified {
            let size = cache::json_size(&v.claims);
            cache.insert(v.key, v.claims, size, v.until, now_ms);
        }
    }

    /// Forgets every verified token (a key set changed: a token verified with a key that is
    /// gone must not stay valid).
    pub fn clear(&self) {
        self.cache
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }
}

/// Two random words from the standard library's per-process random hasher keys (seeded by the
/// operating system).
fn random_secret() -> Secret {
    let word = || {
        let mut h = RandomState::new().build_hasher();
        h.write_u8(0);
        h.finish()
    };
    Secret(word(), word())
}

/// The introspection answers a decision can use: each provider's cache (by provider index, of
/// `providers`, read-locked when a decision first asks: most ask none) and what the request's
/// own calls brought, with a count of cache hits.
pub struct Answers<'a> {
    pub introspector: &'a introspect::Introspector,
    pub providers: usize,
    pub caches: OnceCell<Vec<Option<RwLockReadGuard<'a, TtlCache<introspect::Cached>>>>>,
    pub delivered: &'a Delivered,
    pub hits: Cell<u64>,
}

/// What one decision knows.
pub struct View<'a> {
    config: &'a Config,
    pub answers: Answers<'a>,
    /// The upstream clients' states, by client index.
    pub clients: Vec<RwLockReadGuard<'a, credentials::State>>,
    cache: RwLockReadGuard<'a, VerifiedCache<Claims>>,
    hasher: &'a TokenHasher,
    now_ms: u64,
    /// Verified-token cache hits, to count once the decision is made.
    pub hits: Cell<u64>,
    /// The remote providers' states, by provider index.
    pub states: Vec<Option<RwLockReadGuard<'a, State>>>,
    gave_up: Option<usize>,
    /// The Envoy filter of the request being decided (for its connection's attributes; set by
    /// the hook that decides).
    pub filter: *mut c_void,
}

impl Known for View<'_> {
    fn client_certificate(&self) -> Peer {
        if self.filter.is_null() {
            return Peer::Plain;
        }
        // SAFETY: a view lives within the hook that made it, with that hook's filter.
        unsafe { super::dpop::client_certificate(self.filter) }
    }

    fn shared_secret(&self) -> &[u8; 32] {
        super::dpop::shared_secret()
    }

    fn check_signature(&self, alg: Alg, key: &Jwk, input: &[u8], signature: &[u8]) -> bool {
        super::verify::check(alg, key, input, signature)
    }

    fn credential(&self, client: usize) -> CredentialNow<'_> {
        self.clients
            .get(client)
            .map_or(CredentialNow::Unavailable, |s| s.record.now(self.now_ms))
    }

    fn keys_now(&self, provider: usize) -> KeysNow<'_> {
        let remote = self.states.get(provider).and_then(Option::as_ref);
        match (self.config.providers.get(provider).map(|p| &p.keys), remote) {
            (Some(KeySource::Remote(_)), Some(s)) => {
                if s.record.has_keys() {
                    KeysNow::Ready {
                        keys: &s.keys,
                        may_refetch: s.record.refetch_allowed(self.now_ms),
                    }
                } else if self.gave_up == Some(provider) || s.record.failures > 0 {
                    KeysNow::Unavailable
                } else {
                    KeysNow::Pending
                }
            }
            _ => decision::configured_keys(self.config, provider),
        }
    }

    fn token_key(&self, provider: &str, token: &str) -> TokenKey {
        self.hasher.key(provider, token)
    }

    fn verified(&self, key: &TokenKey) -> Option<&Claims> {
        let hit = self.cache.peek(key, self.now_ms);
        if hit.is_some() {
            self.hits.set(self.hits.get() + 1);
        }
        hit
    }

    fn introspected(&self, provider: usize, token: &str) -> Cached<'_> {
        let a = &self.answers;
        let Some(key) = a.introspector.key(provider, token) else {
            return Cached::Miss;
        };
        // What this request's own calls brought comes first (it may not be cached at all).
        let answer = match a.delivered.iter().rev().find(|(k, _)| *k == key) {
            Some((_, None)) => return Cached::Failed,
            Some((_, Some(answer))) => answer.as_ref(),
            None => {
                let caches = a.caches.get_or_init(|| a.introspector.read(a.providers));
                let cache = caches.get(provider).and_then(Option::as_ref);
                match cache.and_then(|c| c.peek(&key, self.now_ms)) {
                    Some(answer) => {
                        a.hits.set(a.hits.get() + 1);
                        answer.as_ref()
                    }
                    None => return Cached::Miss,
                }
            }
        };
        match answer {
            Some(claims) => Cached::Active(claims),
            None => Cached::Inactive,
        }
    }
}
