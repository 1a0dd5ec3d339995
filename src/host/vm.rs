//! The state of one VM: the configuration, each remote provider's current keys, and the
//! requests paused until keys arrive. Shared by the root context and the HTTP contexts of the
//! VM (one thread: `Rc<RefCell<_>>`).

use super::introspect::{Delivered, Intro, Waiting};
use super::metrics::{ClientMetrics, Metrics};
use super::shared;
use crate::cache;
use serde_json::{Map, Value};

use super::abi::{self, Status};
use crate::config::{Config, KeySource, RemoteJwks, UpstreamClient};
use crate::credentials;
use crate::decision::{Cached, CredentialNow, KeysNow, Known};
use crate::jwt::keys::{parse_jwks, Alg, Jwk};
use crate::jwt::{host, verify};
use crate::keyfetch::{self, Step};
use crate::park::{Calls, Parked};
use crate::remote::Record;
use std::cell::Cell;

/// One remote provider, as this VM knows it.
pub struct Remote {
    pub name: String,
    pub issuer: Option<String>,
    pub spec: RemoteJwks,
    pub shared: shared::Keys,
    /// The record this VM last installed.
    pub record: Record,
    /// The keys of `record.jwks`, parsed once.
    pub keys: Vec<Jwk>,
    /// A call this VM has under way: its token and step.
    pub in_flight: Option<(u32, Step)>,
    /// A request saw an unknown `kid` and wants a refetch.
    pub want_refetch: bool,
}

impl Remote {
    /// Installs `record` (from shared data or a fetch); `true` if what requests see changed.
    pub fn install(&mut self, record: Record) -> bool {
        if record == self.record {
            return false;
        }
        let keys_changed = record.fetched_at != self.record.fetched_at;
        let state_changed = keys_changed || record.failures != self.record.failures;
        if keys_changed {
            match parse_jwks(record.jwks.as_bytes()) {
                Ok(set) => self.keys = set.keys,
                Err(why) => log::warn!(
                    "oauth-filter: provider {}: shared key set unreadable ({why})",
                    self.name
                ),
            }
        }
        self.record = record;
        state_changed
    }

    /// Installs the record of a fetch this VM made, whose JWKS text gave `keys` (read when the
    /// answer was judged: not parsed again).
    pub fn install_fetched(&mut self, record: Record, keys: Vec<Jwk>) {
        self.record = record;
        self.keys = keys;
    }

    /// The longest a fetch (discovery, then the JWKS) may take.
    pub fn fetch_budget_ms(&self) -> u64 {
        keyfetch::budget_ms(&self.spec)
    }
}

/// One upstream client, as this VM knows it.
pub struct Client {
    pub spec: UpstreamClient,
    pub shared: shared::Keys,
    /// The record this VM last installed (the token it injects).
    pub record: credentials::Record,
    /// A token request this VM has under way: its call token.
    pub in_flight: Option<u32>,
    /// Whether a rule injects this client's token (the others are never fetched).
    pub used: bool,
    pub metrics: ClientMetrics,
}

/// The most recent requests a VM remembers having sent with an upstream client's token, until
/// their response (a response later than this many newer requests is not matched: see
/// [`Vm::took_token`]).
const INJECTED_RING: usize = 4096;

/// A request sent upstream with client `client`'s token of `generation`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Injected {
    pub context_id: u32,
    pub client: usize,
    pub generation: u64,
}

pub struct Vm {
    pub config: std::rc::Rc<Config>,
    pub metrics: std::rc::Rc<Metrics>,
    /// A random id, for the fetch lease.
    pub id: u64,
    pub root_context_id: u32,
    /// Indexed like `config.providers`; `None` for providers with local keys.
    pub remotes: Vec<Option<Remote>>,
    /// Paused requests, by context id (given up at their deadlines: 503, or decided without
    /// the keys).
    pub waiters: Parked<u32>,
    /// Indexed like `config.providers`; `None` for providers without introspection.
    pub intros: Vec<Option<Intro>>,
    /// Introspection calls under way and the requests waiting for them.
    pub calls: Calls<Waiting>,
    /// What the request being decided right now was brought (see [`Delivered`]).
    pub fresh: Delivered,
    /// Indexed like `config.clients`.
    pub clients: Vec<Client>,
    /// Requests sent with an upstream client's token, by `context_id % INJECTED_RING`: the
    /// host no longer shows a request's headers when its response arrives, so this is how a
    /// refused response is traced to the token it refuses.
    injected: Vec<Injected>,
    /// Whether the host's `verify_signature` is usable (until it says it does not exist).
    pub host_crypto: Cell<bool>,
    /// Claims of tokens whose signature this VM verified, by token hash, until their `exp`.
    pub verified: cache::VerifiedCache<Map<String, Value>>,
    /// The secret of this VM's verified-token cache keys.
    pub secret: cache::Secret,
    /// The secret every VM shares (DPoP nonces and replay keys), read from shared data when
    /// first needed; `local_secret` where the host keeps none.
    pub shared_secret: std::cell::OnceCell<[u8; 32]>,
    pub local_secret: [u8; 32],
    /// The time of the request being decided (ms), for the refetch rate limit.
    pub now_ms: u64,
    /// The provider whose keys the request being decided waited for too long.
    pub gave_up: Option<usize>,
}

impl Vm {
    pub fn new(
        config: std::rc::Rc<Config>,
        metrics: std::rc::Rc<Metrics>,
        id: u64,
        root_context_id: u32,
        secret: (u64, u64),
    ) -> Vm {
        let remotes = config
            .providers
            .iter()
            .map(|p| match &p.keys {
                KeySource::Local(_) | KeySource::None => None,
                KeySource::Remote(spec) => {
                    let uris: Vec<&str> = [&spec.jwks, &spec.discovery]
                        .into_iter()
                        .flatten()
                        .map(|h| h.uri.as_str())
                        .collect();
                    Some(Remote {
                        name: p.name.clone(),
                        issuer: p.claims.issuer.clone(),
                        spec: spec.clone(),
                        shared: shared::Keys::new("jwks", &p.name, shared::fnv1a(&uris)),
                        record: Record::default(),
                        keys: Vec::new(),
                        in_flight: None,
                        want_refetch: false,
                    })
                }
            })
            .collect();
        let intros = config
            .providers
            .iter()
            .map(|p| {
                p.introspection.as_ref().map(|i| {
                    let tag = shared::fnv1a(&[&i.endpoint.uri, &i.client_id]);
                    Intro::new(&p.name, i, tag)
                })
            })
            .collect();
        let clients = config
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                // The secret is in the tag so that a configuration that fixes a wrong secret
                // starts afresh instead of inheriting the old one's failure backoff (the tag is
                // a shared-data key name, seen only inside this Envoy).
                let tag = shared::fnv1a(&[
                    &c.endpoint.uri,
                    &c.client_id,
                    &c.client_secret,
                    &c.scopes.join(" "),
                    c.audience.as_deref().unwrap_or(""),
                    c.resource.as_deref().unwrap_or(""),
                ]);
                Client {
                    spec: c.clone(),
                    shared: shared::Keys::new("upstream", &c.name, tag),
                    record: credentials::Record::default(),
                    in_flight: None,
                    used: config.rules.iter().any(|r| r.inject == Some(i)),
                    metrics: ClientMetrics::define(&c.name),
                }
            })
            .collect();
        Vm {
            config,
            metrics,
            id,
            root_context_id,
            remotes,
            waiters: Parked::default(),
            intros,
            calls: Calls::default(),
            fresh: Vec::new(),
            clients,
            injected: Vec::new(),
            host_crypto: Cell::new(true),
            verified: cache::VerifiedCache::bounded(cache::VERIFIED_ENTRIES, cache::VERIFIED_BYTES),
            secret: cache::Secret(secret.0, secret.1),
            shared_secret: std::cell::OnceCell::new(),
            local_secret: [0; 32],
            now_ms: 0,
            gave_up: None,
        }
    }

    /// Installs provider `p`'s shared record if another VM changed it; whether requests would
    /// now see something different.
    pub fn sync(&mut self, p: usize) -> bool {
        let Some(Some(r)) = self.remotes.get_mut(p) else {
            return false;
        };
        let (record, _) = shared::read_record(&r.shared);
        let changed = r.install(record);
        if changed {
            let (name, count) = (r.name.clone(), r.keys.len());
            self.metrics.keys_in_use(&name, count);
            // A key set changed: tokens verified with a key that is gone must not stay valid.
            self.verified.clear();
        }
        changed
    }

    /// Installs upstream client `c`'s shared record if another VM changed it; whether its
    /// token changed.
    pub fn sync_client(&mut self, c: usize) -> bool {
        let Some(client) = self.clients.get_mut(c) else {
            return false;
        };
        let (record, _) = shared::read_record(&client.shared);
        let changed = record != client.record;
        client.record = record;
        changed
    }

    /// Remembers that request `context_id` went upstream with client `client`'s current token.
    pub fn sent_token(&mut self, context_id: u32, client: usize) {
        let Some(c) = self.clients.get(client) else {
            return;
        };
        let generation = c.record.generation();
        if self.injected.is_empty() {
            self.injected = vec![Injected::default(); INJECTED_RING];
        }
        if let Some(slot) = self.injected.get_mut(context_id as usize % INJECTED_RING) {
            *slot = Injected {
                context_id,
                client,
                generation,
            };
        }
    }

    /// The token request `context_id` went upstream with, forgotten as it is returned.
    pub fn took_token(&mut self, context_id: u32) -> Option<Injected> {
        let slot = self.injected.get_mut(context_id as usize % INJECTED_RING)?;
        if slot.context_id != context_id || context_id == 0 {
            return None;
        }
        Some(std::mem::take(slot))
    }

    /// Whether a rule injects an upstream client's token.
    pub fn injects(&self) -> bool {
        self.clients.iter().any(|c| c.used)
    }

    /// Whether the root must tick: remote keys to keep fresh, introspection calls to watch, or
    /// upstream tokens to obtain and refresh.
    pub fn needs_ticks(&self) -> bool {
        self.remotes.iter().any(Option::is_some)
            || self.intros.iter().any(Option::is_some)
            || self.injects()
    }
}

impl Known for Vm {
    fn credential(&self, client: usize) -> CredentialNow<'_> {
        self.clients
            .get(client)
            .map_or(CredentialNow::Unavailable, |c| c.record.now(self.now_ms))
    }

    fn check_signature(&self, alg: Alg, key: &Jwk, input: &[u8], signature: &[u8]) -> bool {
        if let (Some(hash), Some(spki), true) =
            (host::host_hash(alg), &key.spki, self.host_crypto.get())
        {
            let signature = match alg {
                Alg::ES256 | Alg::ES384 | Alg::ES512 => match host::ecdsa_der(alg, signature) {
                    Some(der) => der,
                    // Not twice the field size: no valid signature (Wasm says the same).
                    None => return false,
                },
                _ => signature.to_vec(),
            };
            let args = host::verify_arguments(hash, spki, &signature, input);
            match abi::call_foreign_function("verify_signature", &args) {
                Ok(Some(answer)) => {
                    if let Some(valid) = host::verify_result(&answer) {
                        self.metrics.host_verification();
                        return valid;
                    }
                }
                Err(Status::NotFound) => {
                    log::info!("oauth-filter: the host has no verify_signature; verifying in Wasm");
                    self.host_crypto.set(false);
                }
                _ => {}
            }
        }
        verify::verify(alg, &key.material, input, signature)
    }

    fn client_certificate(&self) -> crate::binding::Peer {
        super::dpop::client_certificate()
    }

    fn shared_secret(&self) -> &[u8; 32] {
        self.shared_secret.get_or_init(|| {
            super::dpop::stored_secret().unwrap_or_else(|| {
                log::warn!("oauth-filter: no DPoP secret in shared data; this VM uses its own");
                self.local_secret
            })
        })
    }

    fn token_key(&self, provider: &str, token: &str) -> cache::TokenKey {
        self.secret.key(provider, token)
    }

    fn verified(&self, key: &cache::TokenKey) -> Option<&Map<String, Value>> {
        let hit = self.verified.peek(key, self.now_ms);
        if hit.is_some() {
            self.metrics.jwt_cache_hit();
        }
        hit
    }

    fn introspected(&self, provider: usize, token: &str) -> Cached<'_> {
        let Some(Some(intro)) = self.intros.get(provider) else {
            return Cached::Miss;
        };
        let key = cache::key(&intro.name, token);
        // What this request's own calls brought comes first (it may not be cached at all).
        let delivered = self.fresh.iter().rev().find(|(k, _)| *k == key);
        let answer = match delivered {
            Some((_, None)) => return Cached::Failed,
            Some((_, Some(answer))) => answer.as_ref(),
            None => match intro.cache.peek(&key, self.now_ms) {
                Some(answer) => {
                    self.metrics.introspection_hit();
                    answer.as_ref()
                }
                None => return Cached::Miss,
            },
        };
        match answer {
            Some(claims) => Cached::Active(claims),
            None => Cached::Inactive,
        }
    }

    fn keys_now(&self, provider: usize) -> KeysNow<'_> {
        match self.config.providers.get(provider).map(|p| &p.keys) {
            Some(KeySource::Local(keys)) => KeysNow::Ready {
                keys,
                may_refetch: false,
            },
            Some(KeySource::Remote(_)) => match self.remotes.get(provider).and_then(Option::as_ref)
            {
                Some(r) if r.record.has_keys() => KeysNow::Ready {
                    keys: &r.keys,
                    may_refetch: r.record.refetch_allowed(self.now_ms),
                },
                // The request waited as long as the fetch may take: no more waiting.
                Some(_) if self.gave_up == Some(provider) => KeysNow::Unavailable,
                Some(r) if r.record.failures > 0 => KeysNow::Unavailable,
                _ => KeysNow::Pending,
            },
            Some(KeySource::None) | None => KeysNow::Unavailable,
        }
    }
}
