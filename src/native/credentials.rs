//! Upstream credentials in the native shell: each client's token once for the whole process,
//! obtained and renewed by configuration-owned calls on the main thread, the requests paused
//! until it arrives, and the token dropped when an upstream refuses it. The token request, its
//! answer and the record's rules are the core's ([`crate::credentials`]).

use super::abi::{self, Ptr};
use super::remote::FETCH;
use super::waiters::Waiters;
use crate::config::{Config, UpstreamClient};
use crate::credentials::{self, Counted, Record};
use crate::introspection::Call;
use crate::park::Awaited;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

macro_rules! lock {
    ($e:expr) => {
        $e.unwrap_or_else(|poisoned| poisoned.into_inner())
    };
}

/// What the process knows of one client's token.
#[derive(Default)]
pub struct State {
    pub record: Record,
    in_flight: Option<u64>,
    /// Token requests finished (well or not): see [`Clients::wait`].
    settled: u64,
}

/// Counter ids of one client (`oauth_filter.upstream.NAME.*`).
struct Metrics {
    fetches: Option<usize>,
    failures: Option<usize>,
    refreshes: Option<usize>,
    injections: Option<usize>,
    dropped: Option<usize>,
}

struct Client {
    spec: UpstreamClient,
    /// Whether a rule injects this client's token (the others are never fetched).
    used: bool,
    state: RwLock<State>,
    metrics: Metrics,
}

/// The upstream clients of one configuration.
pub struct Clients {
    clients: Vec<Client>,
    envoy: Ptr,
    scheduler: Ptr,
    requested: AtomicBool,
    /// Paused requests, by their streams' schedulers.
    waiters: Waiters,
}

impl Clients {
    /// # Safety
    /// `envoy` must be the configuration pointer of `on_http_filter_config_new`, inside it;
    /// `scheduler` the configuration's.
    pub unsafe fn new(envoy: *mut std::ffi::c_void, scheduler: Ptr, config: &Config) -> Clients {
        let clients = config
            .clients
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let c = |what: &str| {
                    abi::define_counter(
                        envoy,
                        &format!("oauth_filter.upstream.{}.{what}", spec.name),
                    )
                };
                Client {
                    used: config.rules.iter().any(|r| r.inject == Some(i)),
                    metrics: Metrics {
                        fetches: c("token_fetches"),
                        failures: c("token_fetch_failures"),
                        refreshes: c("token_refreshes"),
                        injections: c("injections"),
                        dropped: c("tokens_dropped"),
                    },
                    spec: spec.clone(),
                    state: RwLock::default(),
                }
            })
            .collect();
        let clients = Clients {
            clients,
            envoy: Ptr(envoy),
            scheduler,
            requested: AtomicBool::new(false),
            waiters: Waiters::default(),
        };
        for client in clients.clients.iter().filter(|c| !c.used) {
            abi::log(abi::LOG_WARN, || {
                format!("oauth-filter: upstream client {}: no rule injects it; its token is never fetched", client.spec.name)
            });
        }
        clients
    }

    /// Read access to every client's state, for one decision.
    pub fn read(&self) -> Vec<RwLockReadGuard<'_, State>> {
        self.clients.iter().map(|c| lock!(c.state.read())).collect()
    }

    /// The generation of client `c`'s token requests.
    pub fn settled(states: &[RwLockReadGuard<'_, State>], c: usize) -> u64 {
        states.get(c).map_or(0, |s| s.settled)
    }

    /// Asks the main thread to look for token requests to send.
    pub fn request(&self) {
        if !self.requested.swap(true, Ordering::AcqRel) {
            // SAFETY: the scheduler lives as long as the configuration; commit is thread-safe.
            unsafe { abi::config_schedule(self.scheduler, FETCH) }
        }
    }

    /// Parks a request until client `c`'s token request settles; `seen`: the generation its
    /// decision read (woken at once if one settled since).
    pub fn wait(&self, c: usize, scheduler: Ptr, seen: u64) {
        let current = || {
            let client = self.clients.get(c);
            client.map_or(u64::MAX, |cl| lock!(cl.state.read()).settled)
        };
        if self
            .waiters
            .park(Awaited::Credential(c), scheduler, seen, current)
        {
            self.request();
        }
    }

    /// Forgets the parked requests of a stream that is going away.
    pub fn forget(&self, scheduler: Ptr) {
        self.waiters.forget(scheduler);
    }

    fn wake(&self, c: usize) {
        self.waiters.wake(Awaited::Credential(c));
    }

    /// A request is sent upstream with client `c`'s token: counted; its generation, to trace
    /// a refusal back to it.
    ///
    /// # Safety
    /// `filter` must be the stream's Envoy pointer, inside its hook.
    pub unsafe fn sent(&self, filter: *mut std::ffi::c_void, c: usize) -> Option<u64> {
        let client = self.clients.get(c)?;
        if let Some(id) = client.metrics.injections {
            abi::increment_counter(filter, id, 1);
        }
        Some(lock!(client.state.read()).record.generation())
    }

    /// The upstream refused client `c`'s token of `generation` (401 `invalid_token`): drop it
    /// (unless already replaced, or dropped too recently) and fetch a new one.
    ///
    /// # Safety
    /// `filter` must be the stream's Envoy pointer, inside its hook.
    pub unsafe fn refused(
        &self,
        filter: *mut std::ffi::c_void,
        c: usize,
        generation: u64,
        now: u64,
    ) {
        let Some(client) = self.clients.get(c) else {
            return;
        };
        {
            let mut s = lock!(client.state.write());
            let Some(next) = s.record.dropped(generation, now) else {
                return;
            };
            s.record = next;
        }
        if let Some(id) = client.metrics.dropped {
            abi::increment_counter(filter, id, 1);
        }
        abi::log(abi::LOG_INFO, || {
            format!("oauth-filter: upstream client {}: the upstream refused its token (401 invalid_token); fetching a new one", client.spec.name)
        });
        self.request();
    }
}

/// The main thread's part.
impl Clients {
    /// [`FETCH`] arrived: send the token requests that are due.
    pub fn on_scheduled(&self, now: u64) {
        self.requested.store(false, Ordering::Release);
        for (c, client) in self.clients.iter().enumerate().filter(|(_, c)| c.used) {
            let refresh = {
                let mut s = lock!(client.state.write());
                if s.in_flight.is_some() || !s.record.fetch_due(client.spec.refresh_margin_ms, now)
                {
                    continue;
                }
                s.in_flight = Some(u64::MAX);
                s.record.usable(now).is_some()
            };
            credentials::send(&mut self.obtain(c, client), refresh, now);
        }
    }

    /// The answer to call `id`, if it is one of this configuration's token requests.
    pub fn on_answer(&self, id: u64, status: Option<&str>, body: &[u8], now: u64) -> bool {
        let found = self
            .clients
            .iter()
            .enumerate()
            .find(|(_, c)| lock!(c.state.read()).in_flight == Some(id));
        let Some((c, client)) = found else {
            return false;
        };
        credentials::answered(&mut self.obtain(c, client), status, body, now);
        true
    }

    fn obtain<'c>(&'c self, c: usize, client: &'c Client) -> NativeClient<'c> {
        NativeClient {
            clients: self,
            c,
            client,
        }
    }
}

/// One client's token requests, from the main thread: its state under its lock, its calls the
/// configuration's; the requests waiting for it are woken when one ends.
struct NativeClient<'c> {
    clients: &'c Clients,
    c: usize,
    client: &'c Client,
}

impl credentials::Obtaining for NativeClient<'_> {
    fn client(&self) -> &UpstreamClient {
        &self.client.spec
    }

    fn post(&mut self, call: &Call) -> Result<(), String> {
        // SAFETY: on the main thread, with the configuration's pointer.
        let id = unsafe { abi::config_post(self.clients.envoy, call) }?;
        lock!(self.client.state.write()).in_flight = Some(id);
        Ok(())
    }

    fn count(&mut self, counted: Counted) {
        let metrics = &self.client.metrics;
        let id = match counted {
            Counted::Fetch => metrics.fetches,
            Counted::Refresh => metrics.refreshes,
            Counted::Failure => metrics.failures,
        };
        if let Some(id) = id {
            // SAFETY: as above.
            unsafe { abi::config_increment_counter(self.clients.envoy, id, 1) }
        }
    }

    fn ended(&mut self, change: &dyn Fn(&Record) -> Record) -> Record {
        let record = {
            let mut s = lock!(self.client.state.write());
            s.record = change(&s.record);
            s.in_flight = None;
            s.settled += 1;
            s.record.clone()
        };
        self.clients.wake(self.c);
        record
    }
}
