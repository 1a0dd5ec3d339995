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
use crate::config::{Config, HttpUri};
use crate::decision::NO_CREDENTIAL;
use crate::jwt::keys::KeySet;
use crate::keyfetch::{self, Answer, Step};
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
    let issuer = match vm.borrow().remotes.get(p) {
        Some(Some(r)) => r.issuer.clone().unwrap_or_default(),
        _ => return,
    };
    match keyfetch::judge(step, status.as_deref(), body, &issuer) {
        Err(why) => fail(&vm, p, &why),
        Ok(Answer::Discovered(jwks_uri)) => discovered(&vm, p, jwks_uri),
        Ok(Answer::Keys(text, set)) => fetched(&vm, p, text, set),
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
        let refetch = r.want_refetch && r.record.refetch_allowed(now);
        let refused_refetch = r.want_refetch && !refetch;
        r.want_refetch = false;
        let (changed, call) = start_fetch(r, me, now, refetch);
        (refused_refetch || changed, call)
    };
    if let Some((step, uri)) = call {
        dispatch(vm, p, step, &uri);
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

fn dispatch(vm: &Rc<RefCell<Vm>>, p: usize, step: Step, target: &HttpUri) {
    let url = match keyfetch::url(target) {
        Ok(url) => url,
        Err(why) => return fail(vm, p, &why),
    };
    let headers = keyfetch::get_headers(&url);
    let timeout = Duration::from_millis(target.timeout_ms);
    match abi::dispatch_http_call(&target.cluster, &headers, None, timeout) {
        Ok(token) => {
            if let Some(Some(r)) = vm.borrow_mut().remotes.get_mut(p) {
                r.in_flight = Some((token, step));
            }
        }
        Err(status) => fail(
            vm,
            p,
            &format!(
                "cannot call cluster {} for {} ({status:?})",
                target.cluster, target.uri
            ),
        ),
    }
}

/// Discovery found the JWKS at `jwks_uri`: fetch it.
fn discovered(vm: &Rc<RefCell<Vm>>, p: usize, jwks_uri: String) {
    let next = {
        let mut state = vm.borrow_mut();
        let Some(Some(r)) = state.remotes.get_mut(p) else {
            return;
        };
        let record = shared::update_record(&r.shared, |rec: &Record| Record {
            jwks_uri: Some(jwks_uri.clone()),
            ..rec.clone()
        });
        r.install(record);
        keyfetch::next_call(&r.spec, &r.record)
    };
    match next {
        Some((step, uri)) => dispatch(vm, p, step, &uri),
        None => fail(vm, p, "discovery gave no JWKS location"),
    }
}

/// A key set with usable keys arrived: keep it.
fn fetched(vm: &Rc<RefCell<Vm>>, p: usize, text: String, set: KeySet) {
    let name = match vm.borrow().remotes.get(p) {
        Some(Some(r)) => r.name.clone(),
        _ => return,
    };
    for problem in &set.problems {
        log::warn!("oauth-filter: provider {name}: JWKS key skipped: {problem}");
    }
    {
        let mut state = vm.borrow_mut();
        let me = state.id;
        let Some(Some(r)) = state.remotes.get_mut(p) else {
            return;
        };
        let now = abi::now_ms();
        let record =
            shared::update_record(&r.shared, |rec: &Record| rec.succeeded(text.clone(), now));
        r.install(record);
        r.in_flight = None;
        shared::release_lease(&r.shared, me);
        let count = r.keys.len();
        state.verified.clear();
        log::info!("oauth-filter: provider {name}: {count} key(s) loaded");
        state.metrics.jwks_fetched(true);
        state.metrics.keys_in_use(&name, count);
    }
    wake(vm, p);
}

/// A fetch failed: keep the last good keys (if any), back off, and wake the waiters (who get
/// the old keys, or 503 when there never were any).
fn fail(vm: &Rc<RefCell<Vm>>, p: usize, why: &str) {
    {
        let mut state = vm.borrow_mut();
        let me = state.id;
        let Some(Some(r)) = state.remotes.get_mut(p) else {
            return;
        };
        let now = abi::now_ms();
        let rediscover = r.spec.jwks.is_none();
        let record = shared::update_record(&r.shared, |rec: &Record| {
            let mut next = rec.failed(now);
            if rediscover {
                next.jwks_uri = None;
            }
            next
        });
        r.install(record);
        r.in_flight = None;
        shared::release_lease(&r.shared, me);
        let outcome = if r.record.has_keys() {
            "keeping the last good keys"
        } else {
            "no keys yet: requests get 503"
        };
        log::warn!(
            "oauth-filter: provider {}: key fetch failed: {why}; {outcome}; retry in {} ms",
            r.name,
            r.record.backoff_ms()
        );
        state.metrics.jwks_fetched(false);
    }
    wake(vm, p);
}

/// Decides again on every request paused for provider `p`.
fn wake(vm: &Rc<RefCell<Vm>>, p: usize) {
    let (waiting, root) = {
        let mut state = vm.borrow_mut();
        let waiting = state.waiters.take(Awaited::Keys(p));
        (waiting, state.root_context_id)
    };
    http::in_contexts(waiting, root, |id| {
        http::process(vm, id, true);
    });
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
