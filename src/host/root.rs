//! A root context: loads the configuration, makes the outgoing calls, and keeps remote key sets
//! fresh: on every tick it installs what other VMs fetched, fetches when a fetch
//! is due and this VM holds the lease, wakes paused requests when keys change, and answers 503
//! to those that waited too long.

use super::abi;
use super::credentials;
use super::http;
use super::introspect;
use super::metrics::Metrics;
use super::shared;
use super::vm::{Remote, Vm};
use crate::challenge;
use crate::config::{Config, HttpUri, RemoteJwks};
use crate::decision::NO_CREDENTIAL;
use crate::jwt::keys::Jwk;
use crate::keyfetch::{self, Step};
use crate::park::Awaited;
use crate::remote::Record;
use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;
use std::time::Duration;

/// How often the root looks at shared key state and paused requests.
const TICK: Duration = Duration::from_millis(100);

/// A root context: one per filter configuration in this VM.
#[derive(Clone)]
pub struct Root {
    pub id: u32,
    pub metrics: Rc<Metrics>,
    /// The configured state; `None` until a configuration is accepted.
    pub vm: Option<Rc<RefCell<Vm>>>,
}

impl Root {
    pub fn new(id: u32) -> Root {
        Root {
            id,
            metrics: Rc::new(Metrics::default()),
            vm: None,
        }
    }

    pub fn define_metrics(&mut self) {
        self.metrics = Rc::new(Metrics::define());
    }
}

/// Loads a configuration for root `root_id`; `None` (and one log line naming the field) if it
/// is refused.
pub fn configure(root_id: u32, bytes: &[u8], metrics: Rc<Metrics>) -> Option<Rc<RefCell<Vm>>> {
    let config = match Config::from_json(bytes) {
        Ok(config) => config,
        Err(e) => {
            // One line naming the field; Envoy then refuses the configuration.
            log::error!("oauth-filter: configuration refused: {e}");
            return None;
        }
    };
    log::info!(
        "oauth-filter: configured {} provider(s), {} rule(s), {} upstream client(s)",
        config.providers.len(),
        config.rules.len(),
        config.clients.len()
    );
    // A random id for the fetch lease, and a random key for the verified-token cache
    // (RandomState draws from WASI random_get).
    let random = RandomState::new();
    let id = random.hash_one(root_id) | 1;
    let secret = (random.hash_one(1u8), random.hash_one(2u8));
    let dpop = config.providers.iter().any(|p| p.dpop.is_some());
    let mut vm = Vm::new(Rc::new(config), metrics, id, root_id, secret);
    if dpop {
        vm.local_secret = super::dpop::prepare(&random);
    }
    for client in vm.clients.iter().filter(|c| !c.used) {
        log::warn!(
            "oauth-filter: upstream client {}: no rule injects it; its token is never fetched",
            client.spec.name
        );
    }
    if vm.needs_ticks() {
        abi::set_tick_period(TICK);
    }
    Some(Rc::new(RefCell::new(vm)))
}

pub fn tick(root: &Root) {
    let Some(vm) = root.vm.clone() else { return };
    let now = abi::now_ms();
    let count = vm.borrow().remotes.len();
    for p in 0..count {
        if vm.borrow().remotes[p].is_none() {
            continue;
        }
        sync(&vm, p);
        maybe_fetch(&vm, p, now);
    }
    credentials::tick(&vm, now);
    expire_waiters(&vm, now);
    introspect::tick(&vm, now, root.id);
}

/// The answer to an outgoing call made from root context `root`.
pub fn call_response(root: &Root, token: u32, body_size: usize) {
    let Some(vm) = root.vm.clone() else { return };
    if let Some(client) = credentials::owner(&vm, token) {
        credentials::answered(&vm, client, body_size);
        return;
    }
    if introspect::owns_call(&vm, token) {
        let (status, body) =
            http::call_response(body_size, crate::introspection::MAX_RESPONSE_BYTES);
        introspect::answered(&vm, token, status.as_deref(), &body, root.id);
        return;
    }
    let found = vm.borrow().remotes.iter().enumerate().find_map(|(p, r)| {
        r.as_ref()
            .and_then(|r| r.in_flight)
            .filter(|(t, _)| *t == token)
            .map(|(_, step)| (p, step))
    });
    let Some((p, step)) = found else { return };
    let (status, body) = http::call_response(body_size, step.limit());
    if let Some(mut fetch) = WasmFetch::new(&vm, p) {
        keyfetch::answered(&mut fetch, step, status.as_deref(), body, abi::now_ms());
    }
}

/// Installs the shared record if another VM changed it, and wakes the provider's waiters.
fn sync(vm: &Rc<RefCell<Vm>>, p: usize) {
    let changed = vm.borrow_mut().sync(p);
    if changed {
        wake(vm, p);
    }
}

/// Starts a fetch if one is due and this VM gets the lease.
fn maybe_fetch(vm: &Rc<RefCell<Vm>>, p: usize, now: u64) {
    let (decide_again, call) = {
        let mut state = vm.borrow_mut();
        let me = state.id;
        let Some(Some(r)) = state.remotes.get_mut(p) else {
            return;
        };
        if r.in_flight.is_some() {
            return;
        }
        // A refetch wanted for an unknown kid that is no longer allowed (another VM refetched
        // meanwhile, or a failed fetch put the provider in backoff): let those requests be
        // decided again with the keys as they are.
        let (refetch, refused_refetch) = r.record.take_refetch(&mut r.want_refetch, now);
        let (changed, call) = start_fetch(r, me, now, refetch);
        (refused_refetch || changed, call)
    };
    if let (Some((step, uri)), Some(mut fetch)) = (call, WasmFetch::new(vm, p)) {
        keyfetch::send(&mut fetch, step, &uri, now);
    } else if decide_again {
        wake(vm, p);
    }
}

/// Takes the lease and marks the fetch started if one is (still) due: whether what requests
/// see changed (another VM stored keys meanwhile), and the first call to make.
fn start_fetch(
    r: &mut Remote,
    me: u64,
    now: u64,
    refetch: bool,
) -> (bool, Option<(Step, HttpUri)>) {
    let cache_ms = r.spec.cache_duration_ms;
    let until = now + r.fetch_budget_ms() + 1000;
    let due = |rec: &Record| rec.fetch_due(cache_ms, now, refetch && rec.refetch_allowed(now));
    if !due(&r.record) {
        return (false, None);
    }
    match shared::lease_if_due(&r.shared, me, now, until, due) {
        Some((record, true)) => {
            // A refetch only if the record as it is now still allows one.
            let refetch = refetch && record.refetch_allowed(now);
            let record = shared::update_record(&r.shared, |rec: &Record| rec.started(now, refetch));
            r.install(record);
            let call = keyfetch::next_call(&r.spec, &r.record);
            (false, call)
        }
        Some((record, false)) => (r.install(record), None),
        None => (false, None),
    }
}

/// One provider's key fetch in this VM: its record in shared data (installed here too), its
/// calls from the root context, its lease released when the fetch ends.
struct WasmFetch<'v> {
    vm: &'v Rc<RefCell<Vm>>,
    p: usize,
    name: String,
    issuer: String,
    spec: RemoteJwks,
}

impl<'v> WasmFetch<'v> {
    fn new(vm: &'v Rc<RefCell<Vm>>, p: usize) -> Option<WasmFetch<'v>> {
        let state = vm.borrow();
        let r = state.remotes.get(p)?.as_ref()?;
        Some(WasmFetch {
            vm,
            p,
            name: r.name.clone(),
            issuer: r.issuer.clone().unwrap_or_default(),
            spec: r.spec.clone(),
        })
    }
}

impl keyfetch::Fetching for WasmFetch<'_> {
    fn provider(&self) -> (&str, &str, &RemoteJwks) {
        (&self.name, &self.issuer, &self.spec)
    }

    fn update(&mut self, change: &dyn Fn(&Record) -> Record) -> Record {
        let mut state = self.vm.borrow_mut();
        let Some(Some(r)) = state.remotes.get_mut(self.p) else {
            return Record::default();
        };
        r.install(shared::update_record(&r.shared, |rec: &Record| change(rec)));
        r.record.clone()
    }

    fn get(&mut self, get: &keyfetch::Get) -> Result<(), String> {
        let timeout = Duration::from_millis(get.target.timeout_ms);
        let call = abi::dispatch_http_call(&get.target.cluster, get.headers, None, timeout);
        let token = call.map_err(|status| format!("{status:?}"))?;
        if let Some(Some(r)) = self.vm.borrow_mut().remotes.get_mut(self.p) {
            r.in_flight = Some((token, get.step));
        }
        Ok(())
    }

    fn ended(&mut self, change: &dyn Fn(&Record) -> Record, keys: Option<Vec<Jwk>>) -> Record {
        let loaded = keys.is_some();
        let record = {
            let mut state = self.vm.borrow_mut();
            let me = state.id;
            let Some(Some(r)) = state.remotes.get_mut(self.p) else {
                return Record::default();
            };
            let record = shared::update_record(&r.shared, |rec: &Record| change(rec));
            match keys {
                // The record carries the text these keys were read from.
                Some(keys) => r.install_fetched(record, keys),
                None => {
                    r.install(record);
                }
            }
            r.in_flight = None;
            shared::release_lease(&r.shared, me);
            let (count, record) = (r.keys.len(), r.record.clone());
            if loaded {
                state.verified.clear();
                state.metrics.keys_in_use(&self.name, count);
            }
            state.metrics.jwks_fetched(loaded);
            record
        };
        wake(self.vm, self.p);
        record
    }
}

/// Decides again on every request paused for provider `p`.
fn wake(vm: &Rc<RefCell<Vm>>, p: usize) {
    http::wake(vm, Awaited::Keys(p));
}

/// Decides again, without waiting any more, on requests that waited longer than their fetch
/// could take (the core answers 503, or lets an `allow_missing_or_failed` rule pass), and
/// answers 503 to those that waited as long for an upstream token.
fn expire_waiters(vm: &Rc<RefCell<Vm>>, now: u64) {
    let (late, root) = {
        let mut state = vm.borrow_mut();
        (state.waiters.expired(now), state.root_context_id)
    };
    let credential = challenge::unavailable(NO_CREDENTIAL);
    http::in_contexts(late.iter().map(|(_, id)| *id), root, |id| {
        match late
            .iter()
            .find(|(_, w)| *w == id)
            .map(|(awaited, _)| *awaited)
        {
            Some(Awaited::Keys(p)) => {
                vm.borrow_mut().gave_up = Some(p);
                http::process(vm, id, true);
                vm.borrow_mut().gave_up = None;
            }
            _ => {
                http::deny(&credential, Some(&vm.borrow()));
            }
        }
    });
}
