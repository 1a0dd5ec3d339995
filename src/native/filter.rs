//! The native shell's configuration and requests: what `on_http_filter_config_new` builds, and
//! one request decided by the core and answered through [`crate::shell`], paused while its
//! provider's keys are fetched and decided again when they arrive.

use super::abi::{self, Ptr};
use super::credentials::Clients;
use super::dpop::ProcessSlots;
use super::introspect::{Delivered, Introspector, Mailbox, CALL};
use super::known::{Answers, VerifiedTokens};
use super::remote::{Fetcher, FETCH, WAKE};
use super::ticker::Ticker;
use crate::challenge::{self, Challenge};
use crate::config::Config;
use crate::decision::{self, Decision, Forward, Request, Verified};
use crate::headers::Pairs;
use crate::metrics::{self, REQUEST_COUNTERS};
use crate::shell::{self, RequestHost, Step, StreamHost};
use std::cell::{Cell, OnceCell};
use std::ffi::c_void;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// One filter configuration, shared by every worker (Envoy calls its hooks from all of them).
pub struct FilterConfig {
    pub config: Config,
    /// [`REQUEST_COUNTERS`]' ids, by index.
    counters: [Option<usize>; REQUEST_COUNTERS.len()],
    jwt_cache_hits: Option<usize>,
    pub verified: VerifiedTokens,
    pub fetcher: Fetcher,
    pub introspector: Introspector,
    pub clients: Clients,
    /// Posts events to the main thread (null when nothing is fetched or introspected).
    scheduler: Ptr,
    /// Keeps keys and tokens fresh without traffic.
    ticker: Mutex<Option<Ticker>>,
}

impl FilterConfig {
    /// Parses the configuration, defines the counters and asks for the first key fetches;
    /// `Err` names the refused field.
    ///
    /// # Safety
    /// `envoy` must be the configuration pointer of `on_http_filter_config_new`, inside it.
    pub unsafe fn new(envoy: *mut c_void, json: &[u8]) -> Result<FilterConfig, String> {
        let config = Config::from_json(json).map_err(|e| e.to_string())?;
        let remote =
            |p: &crate::config::Provider| matches!(p.keys, crate::config::KeySource::Remote(_));
        let fresh =
            config.providers.iter().any(remote) || config.rules.iter().any(|r| r.inject.is_some());
        let calls = fresh || config.providers.iter().any(|p| p.introspection.is_some());
        let scheduler = if calls {
            abi::config_scheduler(envoy)
        } else {
            Ptr(std::ptr::null_mut())
        };
        Ok(FilterConfig {
            counters: REQUEST_COUNTERS.map(|name| abi::define_counter(envoy, name)),
            jwt_cache_hits: abi::define_counter(envoy, metrics::JWT_CACHE_HITS),
            verified: VerifiedTokens::new(&config),
            fetcher: Fetcher::new(envoy, scheduler, &config),
            introspector: Introspector::new(envoy, scheduler, &config),
            clients: Clients::new(envoy, scheduler, &config),
            ticker: Mutex::new(fresh.then(|| Ticker::start(scheduler)).flatten()),
            scheduler,
            config,
        })
    }

    /// An event on the main thread.
    pub fn on_scheduled(&self, event: u64, now: u64) {
        match event {
            FETCH => {
                self.fetcher.on_scheduled(now);
                self.clients.on_scheduled(now);
            }
            CALL => self.introspector.on_scheduled(now),
            _ => {}
        }
    }

    /// The answer to one of the configuration's calls (on the main thread).
    pub fn on_answer(&self, id: u64, status: Option<&str>, body: Vec<u8>, now: u64) {
        if self.introspector.on_answer(id, status, &body, now)
            || self.clients.on_answer(id, status, &body, now)
        {
            return;
        }
        if self.fetcher.on_answer(id, status, body, now) {
            self.verified.clear();
        }
    }

    /// The configuration is going away: what posts to its scheduler stops, then the scheduler.
    pub fn close(&self) {
        let ticker = self.ticker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(ticker) = ticker {
            ticker.stop();
        }
        if !self.scheduler.0.is_null() {
            // SAFETY: created in `new`, deleted once, here, after the ticker stopped.
            unsafe { abi::config_scheduler_delete(self.scheduler) }
        }
    }

    /// Bumps counter `index` of [`REQUEST_COUNTERS`] for the stream `filter`.
    unsafe fn count(&self, filter: *mut c_void, index: usize) {
        if let Some(Some(id)) = self.counters.get(index) {
            abi::increment_counter(filter, *id, 1);
        }
    }
}

/// One stream's state.
pub struct Filter {
    config: *const FilterConfig,
    /// The stream's scheduler, once it paused (deleted with the stream).
    scheduler: Option<Ptr>,
    /// The provider whose keys the request last waited for, how often it paused, and whether
    /// it is paused now.
    waiting: Option<usize>,
    pauses: u32,
    paused: bool,
    /// Where introspection answers for this request arrive (made by its first call), and
    /// those it took in.
    mailbox: Option<Mailbox>,
    delivered: Delivered,
    /// The upstream client whose token the request was sent with, and the token's generation.
    sent: Option<(usize, u64)>,
}

/// A request that paused this often for keys is decided without waiting again.
const MAX_PAUSES: u32 = 2;

impl Filter {
    pub fn new(config: *const FilterConfig) -> Filter {
        Filter {
            config,
            scheduler: None,
            waiting: None,
            pauses: 0,
            paused: false,
            mailbox: None,
            delivered: Vec::new(),
            sent: None,
        }
    }

    /// The request's headers arrived: decide, answer, let go or pause.
    ///
    /// # Safety
    /// `envoy` must be this stream's Envoy filter pointer, inside its request-headers hook; the
    /// configuration outlives the stream (Envoy destroys it after its last filter).
    pub unsafe fn on_request_headers(&mut self, envoy: *mut c_void) -> u32 {
        self.process(envoy)
    }

    /// An event posted to the stream: a paused request is decided again.
    ///
    /// # Safety
    /// As [`Filter::on_request_headers`], inside the stream's scheduled hook.
    pub unsafe fn on_scheduled(&mut self, envoy: *mut c_void, event: u64) {
        if event != WAKE || !std::mem::take(&mut self.paused) {
            return;
        }
        if let Some(mailbox) = &self.mailbox {
            let arrived = std::mem::take(&mut *mailbox.lock().unwrap_or_else(|p| p.into_inner()));
            self.delivered.extend(arrived);
        }
        if self.process(envoy) == abi::CONTINUE {
            abi::continue_decoding(envoy);
        }
    }

    unsafe fn process(&mut self, envoy: *mut c_void) -> u32 {
        let Some(config) = self.config.as_ref() else {
            let refusal = challenge::unavailable("The filter is not configured");
            shell::deny(&mut Stream(envoy), &refusal);
            return abi::STOP_ITERATION;
        };
        let mut headers = Pairs::new();
        abi::request_headers(envoy, &mut headers);
        let path = headers
            .iter()
            .find(|(name, _)| *name == ":path")
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
            .unwrap_or("/");
        let now_ms = now_ms();
        let request = Request {
            path,
            headers: &headers,
            now: now_ms / 1000,
        };
        let (decision, generation) = self.decide(config, envoy, request, now_ms);
        self.act(config, envoy, decision, now_ms, generation)
    }

    /// Decides with what the process knows, read-locked only while deciding (parking and
    /// fetching take the locks again); the generation of the fetches of the provider a
    /// paused request waits for.
    unsafe fn decide<'c>(
        &self,
        config: &'c FilterConfig,
        envoy: *mut c_void,
        request: Request<'_>,
        now_ms: u64,
    ) -> (Decision<'c>, u64) {
        let providers = config.config.providers.len();
        let answers = Answers {
            introspector: &config.introspector,
            providers,
            caches: OnceCell::new(),
            delivered: &self.delivered,
            hits: Cell::new(0),
        };
        let states = config.fetcher.read(providers);
        let gave_up = self.waiting_for_too_long();
        let clients = config.clients.read();
        let mut known =
            config
                .verified
                .view(&config.config, states, answers, clients, now_ms, gave_up);
        known.filter = envoy;
        let decision = decision::decide(&config.config, &known, request);
        if let (Some(id), hits @ 1..) = (config.jwt_cache_hits, known.hits.get()) {
            abi::increment_counter(envoy, id, hits);
        }
        config
            .introspector
            .count_hits(envoy, known.answers.hits.get());
        let generation = match &decision {
            Decision::Wait { provider, .. } => Fetcher::generation(&known.states, *provider),
            Decision::AwaitCredential { client, .. } => Clients::settled(&known.clients, *client),
            _ => 0,
        };
        if Fetcher::refresh_due(&known.states, &config.config, now_ms) {
            drop(known);
            config.fetcher.request();
        }
        (decision, generation)
    }

    /// The provider this request paused for too often already.
    fn waiting_for_too_long(&self) -> Option<usize> {
        (self.pauses >= MAX_PAUSES)
            .then_some(self.waiting)
            .flatten()
    }

    /// Carries out `decision` on the stream (see [`shell::act`]); `generation`: of what a
    /// paused request waits for, as the decision saw it.
    unsafe fn act(
        &mut self,
        config: &FilterConfig,
        envoy: *mut c_void,
        decision: Decision,
        now_ms: u64,
        generation: u64,
    ) -> u32 {
        let mut stream = NativeStream {
            filter: self,
            config,
            envoy,
            generation,
        };
        match shell::act(&mut stream, decision, now_ms) {
            Step::Continue => abi::CONTINUE,
            Step::Stop => abi::STOP_ITERATION,
        }
    }
}

/// One stream in one of its hooks: its Envoy pointer, its state and its configuration.
struct NativeStream<'s> {
    filter: &'s mut Filter,
    config: &'s FilterConfig,
    envoy: *mut c_void,
    generation: u64,
}

impl NativeStream<'_> {
    /// The stream's scheduler (made the first time the request pauses); marks it paused.
    fn pause(&mut self) -> Ptr {
        self.filter.paused = true;
        // SAFETY: only built inside a hook of the stream, with its Envoy pointer.
        unsafe { self.filter.scheduler(self.envoy) }
    }
}

impl RequestHost for NativeStream<'_> {
    fn remove_header(&mut self, name: &str) {
        Stream(self.envoy).remove_header(name);
    }
    fn set_header(&mut self, name: &str, value: &[u8]) {
        Stream(self.envoy).set_header(name, value);
    }
    fn add_header(&mut self, name: &str, value: &[u8]) {
        Stream(self.envoy).add_header(name, value);
    }
    fn set_filter_state(&mut self, key: &str, value: &[u8]) {
        Stream(self.envoy).set_filter_state(key, value);
    }
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        Stream(self.envoy).send_response(status, headers, body);
    }
}

impl StreamHost for NativeStream<'_> {
    fn count(&mut self, index: usize) {
        // SAFETY: as above.
        unsafe { self.config.count(self.envoy, index) }
    }

    fn debug(&mut self, line: std::fmt::Arguments) {
        abi::log(abi::LOG_DEBUG, || line.to_string());
    }

    fn replay_refusal(&mut self, forward: &Forward, now: u64) -> Option<(Challenge, bool)> {
        let secret = super::dpop::shared_secret();
        shell::replay_refusal(&ProcessSlots, &self.config.config, forward, secret, now)
    }

    fn remember(&mut self, verified: Vec<Verified>, now: u64) {
        self.config.verified.remember(verified, now);
    }

    fn sent_with(&mut self, client: usize) {
        // SAFETY: as above.
        let generation = unsafe { self.config.clients.sent(self.envoy, client) };
        self.filter.sent = generation.map(|g| (client, g));
    }

    /// Envoy's hook answers `CONTINUE`; a stream woken from a pause is continued by
    /// [`Filter::on_scheduled`].
    fn let_go(&mut self) {}

    fn wait_for_keys(&mut self, provider: usize, refetch: bool, _now: u64) {
        let scheduler = self.pause();
        self.filter.waiting = Some(provider);
        self.filter.pauses += 1;
        self.config
            .fetcher
            .wait(provider, scheduler, self.generation);
        if refetch {
            self.config.fetcher.want_refetch(provider);
        }
    }

    fn wait_for_credential(&mut self, client: usize, _now: u64) {
        let scheduler = self.pause();
        self.config.clients.wait(client, scheduler, self.generation);
    }

    fn introspect(&mut self, provider: usize, token: String, now: u64) -> Step {
        let scheduler = self.pause();
        let mailbox = self.filter.mailbox.get_or_insert_with(Mailbox::default);
        let introspector = &self.config.introspector;
        // SAFETY: as above.
        unsafe { introspector.start(self.envoy, provider, token, scheduler, mailbox, now) };
        Step::Stop
    }
}

impl Filter {
    /// The upstream's response headers: a token of ours it refused is dropped.
    ///
    /// # Safety
    /// `envoy` must be this stream's Envoy pointer, inside its response-headers hook.
    pub unsafe fn on_response_headers(&mut self, envoy: *mut c_void) {
        let (Some((client, generation)), Some(config)) = (self.sent.take(), self.config.as_ref())
        else {
            return;
        };
        let mut headers = Pairs::new();
        abi::response_headers(envoy, &mut headers);
        let status = headers
            .iter()
            .find(|(n, _)| *n == ":status")
            .map_or(&b""[..], |(_, v)| *v);
        let challenges: Vec<&[u8]> = headers
            .iter()
            .filter(|(n, _)| *n == "www-authenticate")
            .map(|(_, v)| *v)
            .collect();
        if crate::credentials::upstream_refused(status, &challenges) {
            config.clients.refused(envoy, client, generation, now_ms());
        }
    }

    /// The stream's scheduler, made the first time the request pauses.
    unsafe fn scheduler(&mut self, envoy: *mut c_void) -> Ptr {
        *self
            .scheduler
            .get_or_insert_with(|| abi::filter_scheduler(envoy))
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        if let Some(scheduler) = self.scheduler.take() {
            // SAFETY: the configuration outlives its streams; no wake can reach the scheduler
            // once it is forgotten, and it is deleted once.
            unsafe {
                if let Some(config) = self.config.as_ref() {
                    config.fetcher.forget(scheduler);
                    config.introspector.forget(scheduler);
                    config.clients.forget(scheduler);
                }
                abi::filter_scheduler_delete(scheduler);
            }
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The stream being decided, through Envoy's callbacks (built only inside one of its hooks).
pub struct Stream(pub *mut c_void);

impl RequestHost for Stream {
    fn remove_header(&mut self, name: &str) {
        // SAFETY: only built inside a hook of the stream, with its Envoy pointer.
        unsafe { abi::set_request_header(self.0, name, None) }
    }

    fn set_header(&mut self, name: &str, value: &[u8]) {
        // SAFETY: as above.
        unsafe { abi::set_request_header(self.0, name, Some(value)) }
    }

    fn add_header(&mut self, name: &str, value: &[u8]) {
        // SAFETY: as above.
        unsafe { abi::add_request_header(self.0, name, value) }
    }

    /// Envoy keeps a dynamic module's key as given; the Wasm build's keys are `wasm.KEY`, and
    /// one RBAC and access-log configuration serves both builds.
    fn set_filter_state(&mut self, key: &str, value: &[u8]) {
        let key = format!("wasm.{key}");
        // SAFETY: as above.
        unsafe { abi::set_filter_state(self.0, &key, value) }
    }

    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        // SAFETY: as above.
        unsafe { abi::send_response(self.0, status, headers, body) }
    }
}
