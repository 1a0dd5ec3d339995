//! Remote key sets in the native shell: one record and key set per provider for the whole
//! process (Envoy's workers share the module's memory, so there is one fetch per refresh without
//! the leases the Wasm VMs need), fetched by configuration-owned calls on Envoy's main thread,
//! and the requests paused until they arrive. The fetch itself is the core's
//! ([`crate::keyfetch`]).
//!
//! Threads: workers decide with the states read-locked, ask for fetches through the
//! configuration's scheduler and park paused requests in [`Fetcher::wait`]; the main thread
//! makes the calls, installs what they bring and wakes the parked requests through their own
//! schedulers.

use super::abi::{self, Ptr};
use super::waiters::Waiters;
use crate::config::{Config, KeySource, RemoteJwks};
use crate::jwt::keys::Jwk;
use crate::keyfetch::{self, Step};
use crate::park::Awaited;
use crate::remote::Record;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

/// Locks, whatever a panicking holder left (the data stay consistent: every change is one
/// assignment).
macro_rules! lock {
    ($e:expr) => {
        $e.unwrap_or_else(|poisoned| poisoned.into_inner())
    };
}

/// The event a paused request is woken with.
pub const WAKE: u64 = 1;
/// The configuration scheduler's event: look for fetches to start.
pub const FETCH: u64 = 1;

/// What the process knows of one provider's remote keys.
#[derive(Default)]
pub struct State {
    pub record: Record,
    /// The keys of `record.jwks`.
    pub keys: Vec<Jwk>,
    /// The call under way: its id and step.
    in_flight: Option<(u64, Step)>,
    /// A request saw an unknown `kid` and wants a refetch.
    want_refetch: bool,
    /// Fetches finished (well or not): a request that saw one generation and parks after the
    /// next finished is woken at once.
    pub generation: u64,
}

/// One provider with remote keys.
struct Remote {
    provider: usize,
    name: String,
    issuer: String,
    spec: RemoteJwks,
    state: RwLock<State>,
    /// Gauge `oauth_filter.jwks.NAME.keys`.
    gauge: Option<usize>,
}

/// The remote key sets of one configuration.
pub struct Fetcher {
    remotes: Vec<Remote>,
    /// The configuration's Envoy pointer (calls and metrics, on the main thread).
    envoy: Ptr,
    /// Posts [`FETCH`] to the main thread.
    scheduler: Ptr,
    /// A [`FETCH`] is posted and not yet run.
    requested: AtomicBool,
    /// Paused requests, by their streams' schedulers.
    waiters: Waiters,
    fetch_ok: Option<usize>,
    fetch_failed: Option<usize>,
}

impl Fetcher {
    /// The remote providers of `config`, and a first fetch asked for.
    ///
    /// # Safety
    /// `envoy` must be the configuration pointer of `on_http_filter_config_new`, inside it.
    /// `scheduler`: the configuration's (null when nothing is fetched or introspected).
    pub unsafe fn new(envoy: *mut std::ffi::c_void, scheduler: Ptr, config: &Config) -> Fetcher {
        let remotes: Vec<Remote> = config
            .providers
            .iter()
            .enumerate()
            .filter_map(|(provider, p)| match &p.keys {
                KeySource::Remote(spec) => Some(Remote {
                    provider,
                    name: p.name.clone(),
                    issuer: p.claims.issuer.clone().unwrap_or_default(),
                    spec: spec.clone(),
                    state: RwLock::default(),
                    gauge: abi::define_gauge(envoy, &format!("oauth_filter.jwks.{}.keys", p.name)),
                }),
                _ => None,
            })
            .collect();
        let fetcher = Fetcher {
            scheduler,
            remotes,
            envoy: Ptr(envoy),
            requested: AtomicBool::new(false),
            waiters: Waiters::default(),
            fetch_ok: abi::define_counter(envoy, "oauth_filter.jwks.fetch_success"),
            fetch_failed: abi::define_counter(envoy, "oauth_filter.jwks.fetch_failure"),
        };
        fetcher.request();
        fetcher
    }

    /// Read access to every remote provider's state, by provider index, for one decision.
    pub fn read(&self, providers: usize) -> Vec<Option<RwLockReadGuard<'_, State>>> {
        if self.remotes.is_empty() {
            return Vec::new();
        }
        let mut states: Vec<Option<RwLockReadGuard<'_, State>>> =
            (0..providers).map(|_| None).collect();
        for r in &self.remotes {
            if let Some(slot) = states.get_mut(r.provider) {
                *slot = Some(lock!(r.state.read()));
            }
        }
        states
    }

    /// Whether a refresh of some provider is due at `now` with none under way.
    pub fn refresh_due(
        states: &[Option<RwLockReadGuard<'_, State>>],
        config: &Config,
        now: u64,
    ) -> bool {
        states.iter().enumerate().any(|(p, s)| {
            match (s, config.providers.get(p).map(|p| &p.keys)) {
                (Some(s), Some(KeySource::Remote(spec))) => {
                    s.in_flight.is_none() && s.record.fetch_due(spec.cache_duration_ms, now, false)
                }
                _ => false,
            }
        })
    }

    /// Asks the main thread to look for fetches to start (from any thread; once until it has).
    pub fn request(&self) {
        if !self.remotes.is_empty() && !self.requested.swap(true, Ordering::AcqRel) {
            // SAFETY: the scheduler lives as long as the configuration; commit is thread-safe.
            unsafe { abi::config_schedule(self.scheduler, FETCH) }
        }
    }

    /// A request for `provider` saw an unknown `kid`: refetch if the rate limit allows.
    pub fn want_refetch(&self, provider: usize) {
        if let Some(r) = self.remotes.iter().find(|r| r.provider == provider) {
            lock!(r.state.write()).want_refetch = true;
        }
        self.request();
    }

    /// Parks a request until `provider`'s keys change; `seen`: the generation its decision
    /// read (if a fetch finished since, it is woken at once).
    pub fn wait(&self, provider: usize, scheduler: Ptr, seen: u64) {
        let Some(r) = self.remotes.iter().find(|r| r.provider == provider) else {
            // SAFETY: the stream's own scheduler, alive in its hook.
            return unsafe { abi::filter_schedule(scheduler, WAKE) };
        };
        let current = || lock!(r.state.read()).generation;
        if self
            .waiters
            .park(Awaited::Keys(provider), scheduler, seen, current)
        {
            self.request();
        }
    }

    /// The generation of `provider`'s fetches.
    pub fn generation(states: &[Option<RwLockReadGuard<'_, State>>], provider: usize) -> u64 {
        states
            .get(provider)
            .and_then(Option::as_ref)
            .map_or(0, |s| s.generation)
    }

    /// Forgets the parked requests of a stream that is going away (before its scheduler is
    /// deleted: a wake must never reach a deleted scheduler).
    pub fn forget(&self, scheduler: Ptr) {
        self.waiters.forget(scheduler);
    }

    /// Wakes the requests parked for `provider`.
    fn wake(&self, provider: usize) {
        self.waiters.wake(Awaited::Keys(provider));
    }
}

/// The main thread's part: starting calls and taking their answers.
impl Fetcher {
    /// [`FETCH`] arrived: start what is due.
    pub fn on_scheduled(&self, now: u64) {
        self.requested.store(false, Ordering::Release);
        for r in &self.remotes {
            self.maybe_fetch(r, now);
        }
    }

    fn maybe_fetch(&self, r: &Remote, now: u64) {
        let (call, refused_refetch) = {
            let mut s = lock!(r.state.write());
            if s.in_flight.is_some() {
                return;
            }
            let s = &mut *s;
            let (refetch, refused) = s.record.take_refetch(&mut s.want_refetch, now);
            let call = if s.record.fetch_due(r.spec.cache_duration_ms, now, refetch) {
                s.record = s.record.started(now, refetch);
                keyfetch::next_call(&r.spec, &s.record)
            } else {
                None
            };
            (call, refused)
        };
        match call {
            Some((step, target)) => keyfetch::send(&mut self.fetch(r), step, &target, now),
            // Those requests are decided again with the keys as they are.
            None if refused_refetch => self.wake(r.provider),
            None => {}
        }
    }

    fn fetch<'f>(&'f self, r: &'f Remote) -> NativeFetch<'f> {
        NativeFetch { fetcher: self, r }
    }

    /// The answer to call `id`, if it is one of this configuration's key fetches; `true` if
    /// keys changed (tokens verified with the old ones must be verified again).
    pub fn on_answer(&self, id: u64, status: Option<&str>, body: Vec<u8>, now: u64) -> bool {
        let found = self.remotes.iter().find_map(|r| {
            let s = lock!(r.state.read());
            s.in_flight
                .filter(|(call, _)| *call == id)
                .map(|(_, step)| (r, step))
        });
        let Some((r, step)) = found else { return false };
        lock!(r.state.write()).in_flight = None;
        keyfetch::answered(&mut self.fetch(r), step, status, body, now)
    }
}

/// One provider's key fetch, from the main thread: its state under its lock, its calls the
/// configuration's.
struct NativeFetch<'f> {
    fetcher: &'f Fetcher,
    r: &'f Remote,
}

impl keyfetch::Fetching for NativeFetch<'_> {
    fn provider(&self) -> (&str, &str, &RemoteJwks) {
        (&self.r.name, &self.r.issuer, &self.r.spec)
    }

    fn update(&mut self, change: &dyn Fn(&Record) -> Record) -> Record {
        let mut s = lock!(self.r.state.write());
        s.record = change(&s.record);
        s.record.clone()
    }

    fn get(&mut self, get: &keyfetch::Get) -> Result<(), String> {
        let (cluster, timeout, headers) = (&get.target.cluster, get.target.timeout_ms, get.headers);
        let envoy = self.fetcher.envoy;
        // SAFETY: on the main thread (config_scheduled or a config callout's done hook).
        let id = unsafe { abi::config_callout(envoy, cluster, headers, b"", timeout) }
            .map_err(|code| format!("refused: {code}"))?;
        lock!(self.r.state.write()).in_flight = Some((id, get.step));
        Ok(())
    }

    fn ended(&mut self, change: &dyn Fn(&Record) -> Record, keys: Option<Vec<Jwk>>) -> Record {
        let (loaded, count, record) = {
            let mut s = lock!(self.r.state.write());
            s.record = change(&s.record);
            s.in_flight = None;
            s.generation += 1;
            let loaded = keys.is_some();
            if let Some(keys) = keys {
                s.keys = keys;
            }
            (loaded, s.keys.len(), s.record.clone())
        };
        let (f, envoy) = (self.fetcher, self.fetcher.envoy);
        // SAFETY: on the main thread, with the configuration's pointer.
        unsafe {
            let counter = if loaded { f.fetch_ok } else { f.fetch_failed };
            if let Some(id) = counter {
                abi::config_increment_counter(envoy, id, 1);
            }
            if let (true, Some(id)) = (loaded, self.r.gauge) {
                abi::config_set_gauge(envoy, id, count as u64);
            }
        }
        f.wake(self.r.provider);
        record
    }
}
