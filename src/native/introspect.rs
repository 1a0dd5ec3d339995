//! Introspection in the native shell: one answer cache per provider for the whole process, one
//! call per token however many requests on however many workers wait for it (the Wasm build can
//! coalesce only within a VM), made by configuration-owned calls on the main thread so that the
//! answer arrives whatever becomes of the request that asked first. The request and the answer
//! are the core's ([`crate::introspection`]).

use super::abi::{self, Ptr};
use super::remote::WAKE;
use crate::cache::{self, Key, TtlCache};
use crate::config::{Config, Introspection};
use crate::introspection::{self, Answer, Counted, Keeping};
use crate::park::{self, Call, Calls, Joined};
use crate::throttle::{self, Throttle};
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

/// A cached answer: an active token's claims, or `None` for an inactive one.
pub type Cached = Arc<Option<Map<String, Value>>>;
/// What a request's calls brought, by token hash: an answer, or `None` for a failed call.
pub type Delivered = Vec<(Key, Option<Cached>)>;
/// Where a finished call leaves its answer for a waiting request.
pub type Mailbox = Arc<Mutex<Delivered>>;

/// The configuration scheduler's event: start the calls asked for.
pub const CALL: u64 = 2;
/// The per-provider cache's byte budget.
const MAX_BYTES: usize = 32 * 1024 * 1024;

macro_rules! lock {
    ($e:expr) => {
        $e.unwrap_or_else(|poisoned| poisoned.into_inner())
    };
}

/// One provider with introspection.
struct Intro {
    provider: usize,
    name: String,
    config: Introspection,
    cache: RwLock<TtlCache<Cached>>,
    /// Failure lines: one per window at most.
    log: Mutex<Throttle>,
}

/// A request waiting for a call: its stream's scheduler, and where the answer goes.
type Waiting = (Ptr, Mailbox);

/// Counter and histogram ids.
struct Metrics {
    calls: Option<usize>,
    failures: Option<usize>,
    hits: Option<usize>,
    misses: Option<usize>,
    evictions: Option<usize>,
    latency: Option<usize>,
}

/// The introspection providers of one configuration.
pub struct Introspector {
    intros: Vec<Intro>,
    envoy: Ptr,
    scheduler: Ptr,
    pending: Mutex<Calls<Waiting>>,
    metrics: Metrics,
}

impl Introspector {
    /// # Safety
    /// `envoy` must be the configuration pointer of `on_http_filter_config_new`, inside it;
    /// `scheduler` the configuration's scheduler.
    pub unsafe fn new(
        envoy: *mut std::ffi::c_void,
        scheduler: Ptr,
        config: &Config,
    ) -> Introspector {
        let intros = config
            .providers
            .iter()
            .enumerate()
            .filter_map(|(provider, p)| {
                let settings = p.introspection.as_ref()?;
                let entries = settings.cache_entries;
                Some(Intro {
                    provider,
                    name: p.name.clone(),
                    config: settings.clone(),
                    cache: RwLock::new(TtlCache::new(entries, (entries * 4096).min(MAX_BYTES))),
                    log: Mutex::new(Throttle::default()),
                })
            })
            .collect();
        let counter =
            |what: &str| abi::define_counter(envoy, &format!("oauth_filter.introspection.{what}"));
        Introspector {
            intros,
            envoy: Ptr(envoy),
            scheduler,
            pending: Mutex::default(),
            metrics: Metrics {
                calls: counter("calls"),
                failures: counter("failures"),
                hits: counter("cache_hits"),
                misses: counter("cache_misses"),
                evictions: counter("cache_evictions"),
                latency: abi::define_histogram(envoy, "oauth_filter.introspection.latency_ms"),
            },
        }
    }

    /// Read access to every introspection cache, by provider index, for one decision.
    pub fn read(&self, providers: usize) -> Vec<Option<RwLockReadGuard<'_, TtlCache<Cached>>>> {
        if self.intros.is_empty() {
            return Vec::new();
        }
        let mut caches: Vec<Option<RwLockReadGuard<'_, TtlCache<Cached>>>> =
            (0..providers).map(|_| None).collect();
        for i in &self.intros {
            if let Some(slot) = caches.get_mut(i.provider) {
                *slot = Some(lock!(i.cache.read()));
            }
        }
        caches
    }

    /// Provider `provider`'s introspection.
    fn intro(&self, provider: usize) -> Option<&Intro> {
        self.intros.iter().find(|i| i.provider == provider)
    }

    /// The cache key of `token` at `provider`.
    pub fn key(&self, provider: usize, token: &str) -> Option<Key> {
        Some(cache::key(&self.intro(provider)?.name, token))
    }

    /// Counts cache hits of a decision (on the stream's worker).
    ///
    /// # Safety
    /// `filter` must be a stream's Envoy pointer, inside its hook.
    pub unsafe fn count_hits(&self, filter: *mut std::ffi::c_void, hits: u64) {
        if let (Some(id), 1..) = (self.metrics.hits, hits) {
            abi::increment_counter(filter, id, hits);
        }
    }

    /// A request needs `token` introspected at `provider`: join the call under way or ask for
    /// one; the answer comes to `mailbox`, then `scheduler` wakes the request.
    ///
    /// # Safety
    /// `filter` must be the stream's Envoy pointer, inside its hook; `scheduler` its scheduler.
    pub unsafe fn start(
        &self,
        filter: *mut std::ffi::c_void,
        provider: usize,
        token: String,
        scheduler: Ptr,
        mailbox: &Mailbox,
        now: u64,
    ) {
        let Some(intro) = self.intro(provider) else {
            return abi::filter_schedule(scheduler, WAKE);
        };
        let key = cache::key(&intro.name, &token);
        let mut pending = lock!(self.pending.lock());
        // The answer may have come since the decision read the cache.
        if let Some(answer) = lock!(intro.cache.read()).peek(&key, now) {
            lock!(mailbox.lock()).push((key, Some(answer.clone())));
            return abi::filter_schedule(scheduler, WAKE);
        }
        if let Some(misses) = self.metrics.misses {
            abi::increment_counter(filter, misses, 1);
        }
        let call = Call {
            provider,
            token,
            waiters: vec![(scheduler, mailbox.clone())],
            started: now,
            deadline: park::NEVER,
            id: None,
        };
        if pending.join(key, call) == Joined::First {
            drop(pending);
            abi::config_schedule(self.scheduler, CALL);
        }
    }

    /// Forgets the waits of a stream that is going away (before its scheduler is deleted).
    pub fn forget(&self, scheduler: Ptr) {
        lock!(self.pending.lock()).forget(|(s, _)| *s == scheduler);
    }
}

/// The main thread's part.
impl Introspector {
    /// [`CALL`] arrived: make the calls asked for.
    pub fn on_scheduled(&self, now: u64) {
        let mut failed = Vec::new();
        {
            let mut pending = lock!(self.pending.lock());
            for key in pending.unsent() {
                let Some(call) = pending.get(&key) else {
                    continue;
                };
                let sent = match self.intro(call.provider) {
                    Some(intro) => self.dispatch(&intro.config, &call.token),
                    None => Err("the filter is misconfigured".into()),
                };
                match sent {
                    Ok(id) => pending.sent(&key, id),
                    Err(why) => failed.push((key, why)),
                }
            }
        }
        for (key, why) in failed {
            self.finish(key, Err(why), now);
        }
    }

    fn dispatch(&self, config: &Introspection, token: &str) -> Result<u64, String> {
        let call = introspection::request(config, token).ok_or("the endpoint URL is not usable")?;
        // SAFETY: on the main thread, with the configuration's pointer.
        let started = unsafe { abi::config_post(self.envoy, &call) };
        if let (Ok(_), Some(id)) = (&started, self.metrics.calls) {
            // SAFETY: as above.
            unsafe { abi::config_increment_counter(self.envoy, id, 1) }
        }
        started
    }

    /// The answer to call `id`, if it is one of this configuration's introspection calls.
    pub fn on_answer(&self, id: u64, status: Option<&str>, body: &[u8], now: u64) -> bool {
        let Some(key) = lock!(self.pending.lock()).key_of(id) else {
            return false;
        };
        let result = introspection::parse(status, body).map_err(|failure| failure.describe());
        self.finish(key, result, now);
        true
    }

    /// Caches the answer for `key` (or logs the failure) and hands it to every waiter. Under
    /// the pending lock throughout: a stream going away takes it (in [`Introspector::forget`])
    /// before deleting its scheduler, so no wake reaches a deleted one.
    fn finish(&self, key: Key, result: Result<Answer, String>, now: u64) {
        let mut pending = lock!(self.pending.lock());
        let Some(call) = pending.finish(&key) else {
            return;
        };
        let Some(intro) = self.intro(call.provider) else {
            return;
        };
        let mut keep = NativeKeep { on: self, intro };
        let answer = introspection::settle(&mut keep, &key, result, call.started, now);
        for (scheduler, mailbox) in call.waiters {
            lock!(mailbox.lock()).push((key, answer.clone()));
            // SAFETY: the waiter's stream has not deleted its scheduler (see above).
            unsafe { abi::filter_schedule(scheduler, WAKE) };
        }
        drop(pending);
    }
}

/// One provider's answers, from the main thread: its process-wide cache, its counters.
struct NativeKeep<'i> {
    on: &'i Introspector,
    intro: &'i Intro,
}

impl Keeping for NativeKeep<'_> {
    type Cached = Cached;

    fn provider(&self) -> (&str, &Introspection) {
        (&self.intro.name, &self.intro.config)
    }

    fn keep(&mut self, key: &Key, answer: &Cached, until: u64, now: u64) -> usize {
        let size = introspection::answer_size(answer.as_ref().as_ref());
        lock!(self.intro.cache.write()).insert(*key, answer.clone(), size, until, now)
    }

    fn count(&mut self, counted: Counted) {
        let (m, envoy) = (&self.on.metrics, self.on.envoy);
        // SAFETY: on the main thread, with the configuration's pointer.
        unsafe {
            match counted {
                Counted::Failure => {
                    if let Some(id) = m.failures {
                        abi::config_increment_counter(envoy, id, 1);
                    }
                }
                Counted::Evicted(n) => {
                    if let (Some(id), 1..) = (m.evictions, n) {
                        abi::config_increment_counter(envoy, id, n as u64);
                    }
                }
                Counted::Latency(ms) => {
                    if let Some(id) = m.latency {
                        abi::config_record_histogram(envoy, id, ms);
                    }
                }
            }
        }
    }

    fn admit_log(&mut self, now: u64) -> Option<u64> {
        lock!(self.intro.log.lock()).admit(now, throttle::WINDOW_MS)
    }
}
