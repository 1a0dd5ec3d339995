//! Introspection in the shell: the per-VM cache, the cache shared by the VMs, one call per
//! token however many requests wait for it, and what happens when the answer comes.
//!
//! Envoy's shared data cannot delete keys, so the shared cache is a fixed set of slots (a token's
//! hash picks its slot, a newer answer overwrites an older one): bounded by construction.

use super::abi::{self, Action};
use super::http;
use super::metrics::Metrics;
use super::vm::Vm;
use crate::cache::{self, Key, TtlCache};
use crate::config::Introspection;
use crate::introspection::{self, Answer, Counted, Keeping};
use crate::json;
use crate::park::{Call, Joined};
use crate::throttle::{self, Throttle};
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::rc::Rc;

/// The most bytes of claims one shared slot holds; larger answers are cached per VM only.
const MAX_SHARED_ENTRY: usize = 8 * 1024;
/// The most slots of the shared cache, per provider.
const MAX_SHARED_SLOTS: usize = 65_536;
/// The per-VM cache's byte budget, per provider.
const MAX_LOCAL_BYTES: usize = 32 * 1024 * 1024;

/// A cached answer: the claims of an active token, or `None` for an inactive one.
pub type Cached = Rc<Option<Map<String, Value>>>;

/// What the calls of one request brought so far, by token hash: an answer, or `None` for a call
/// that failed. A request decided again after a call keeps what its earlier calls brought, so
/// answers that are not cached (`cache_duration: 0s`) are not asked for again, and a failure
/// is decided by the core (an `allow_missing_or_failed` rule passes; others get 503).
pub type Delivered = Vec<(Key, Option<Cached>)>;

/// One provider's introspection state in this VM.
pub struct Intro {
    pub name: String,
    pub config: Introspection,
    pub cache: TtlCache<Cached>,
    /// Failure lines in the log: one per window at most (see `throttle`).
    log: Throttle,
    slot_prefix: String,
    slots: usize,
}

impl Intro {
    pub fn new(name: &str, config: &Introspection, tag: u64) -> Intro {
        let entries = config.cache_entries;
        Intro {
            name: name.to_string(),
            config: config.clone(),
            cache: TtlCache::new(entries, (entries * 4096).min(MAX_LOCAL_BYTES)),
            log: Throttle::default(),
            slot_prefix: format!("oauth_filter.introspection.{name}.{tag:016x}."),
            slots: entries.min(MAX_SHARED_SLOTS),
        }
    }

    fn slot(&self, key: &Key) -> String {
        let n = u32::from_le_bytes([key[0], key[1], key[2], key[3]]) as usize % self.slots;
        format!("{}{n}", self.slot_prefix)
    }

    /// The answer another VM (or this one) left in the shared cache, if it is for this token
    /// and still fresh: `(answer, until)`.
    fn read_shared(&self, key: &Key, now: u64) -> Option<(Cached, u64)> {
        let (bytes, _) = abi::get_shared_data(&self.slot(key)).ok()?;
        let entry = json::parse_object(&bytes?).ok()?;
        if entry.get("k").and_then(Value::as_str) != Some(cache::hex(key).as_str()) {
            return None;
        }
        let until = entry.get("until").and_then(Value::as_u64)?;
        if until <= now {
            return None;
        }
        let claims = match entry.get("claims") {
            Some(Value::Object(claims)) => Some(claims.clone()),
            _ => None,
        };
        Some((Rc::new(claims), until))
    }

    fn write_shared(&self, key: &Key, answer: &Cached, until: u64) {
        let entry = json!({"k": cache::hex(key), "until": until, "claims": answer.as_ref()});
        let text = entry.to_string();
        if text.len() <= MAX_SHARED_ENTRY + 128 {
            let _ = abi::set_shared_data(&self.slot(key), text.as_bytes(), None);
        }
    }
}

/// A request waiting for a call (made from the root context, so that its answer arrives even
/// if the request that caused it went away), with what its earlier calls brought.
pub type Waiting = (u32, Delivered);

/// Decides request `context_id` again with `delivered` as what its calls brought (the current
/// effective context is the request's).
fn decide_with(
    vm: &Rc<RefCell<Vm>>,
    context_id: u32,
    delivered: Delivered,
    resumed: bool,
) -> Action {
    let before = std::mem::replace(&mut vm.borrow_mut().fresh, delivered);
    let action = http::process(vm, context_id, resumed);
    vm.borrow_mut().fresh = before;
    action
}

/// The shell's side of `Decision::Introspect`: answer from the shared cache, join a call under
/// way, or make the call. The current effective context is the request's; the action for it.
pub fn start(
    vm: &Rc<RefCell<Vm>>,
    context_id: u32,
    provider: usize,
    token: String,
    resumed: bool,
) -> Action {
    let now = abi::now_ms();
    let (key, from_shared, mut delivered) = {
        let state = vm.borrow();
        let Some(Some(intro)) = state.intros.get(provider) else {
            return http::deny(
                &crate::challenge::unavailable("The filter is misconfigured"),
                Some(&state),
            );
        };
        let key = cache::key(&intro.name, &token);
        (key, intro.read_shared(&key, now), state.fresh.clone())
    };
    if let Some((answer, until)) = from_shared {
        if let Some(Some(intro)) = vm.borrow_mut().intros.get_mut(provider) {
            intro
                .cache
                .insert(key, answer.clone(), answer_size(&answer), until, now);
        }
        delivered.push((key, Some(answer)));
        return decide_with(vm, context_id, delivered, resumed);
    }
    let mut guard = vm.borrow_mut();
    let state = &mut *guard;
    state.metrics.introspection_miss();
    let Some(Some(intro)) = state.intros.get(provider) else {
        return Action::Pause;
    };
    let call = waiting_call(intro, provider, (context_id, delivered), now);
    if state.calls.join(key, call) == Joined::Behind {
        return Action::Pause;
    }
    // From the root context: the answer must reach every waiter, whatever becomes of this one.
    let _ = abi::set_effective_context(state.root_context_id);
    let sent = dispatch(&intro.config, &token);
    let _ = abi::set_effective_context(context_id);
    match sent {
        Ok(id) => {
            state.metrics.introspection_call();
            state.calls.sent(&key, u64::from(id));
            Action::Pause
        }
        Err(why) => {
            if let Some(mut keep) = keeping(state, provider) {
                introspection::failed(&mut keep, &why, now);
            }
            let waiters = state.calls.finish(&key).map(|c| c.waiters);
            drop(guard);
            let (_, mut delivered) = waiters.and_then(|mut w| w.pop()).unwrap_or_default();
            delivered.push((key, None));
            decide_with(vm, context_id, delivered, resumed)
        }
    }
}

/// A call for `provider` with its first waiter, given up when its timeout (and some slack) has
/// passed; made at once, so no token is kept.
fn waiting_call(intro: &Intro, provider: usize, first: Waiting, now: u64) -> Call<Waiting> {
    Call {
        provider,
        token: String::new(),
        waiters: vec![first],
        started: now,
        deadline: now + intro.config.endpoint.timeout_ms + http::WAIT_SLACK_MS,
        id: None,
    }
}

fn dispatch(config: &Introspection, token: &str) -> Result<u32, String> {
    let call = introspection::request(config, token).ok_or("the endpoint URL is not usable")?;
    http::dispatch_post(&call)
}

fn answer_size(answer: &Cached) -> usize {
    introspection::answer_size(answer.as_ref().as_ref())
}

/// Whether `call` is an introspection call of this VM.
pub fn owns_call(vm: &Rc<RefCell<Vm>>, call: u32) -> bool {
    vm.borrow().calls.owns(u64::from(call))
}

/// The answer to call `call` arrived (in the context that made it, or in the root): cache it
/// and decide every request that waited for it. `back_to` is the effective context to restore.
pub fn answered(vm: &Rc<RefCell<Vm>>, call: u32, status: Option<&str>, body: &[u8], back_to: u32) {
    let now = abi::now_ms();
    let Some((key, pending)) = vm.borrow_mut().calls.answered(u64::from(call)) else {
        return;
    };
    let result = introspection::parse(status, body).map_err(|failure| failure.describe());
    let cached = record(vm, &pending, key, result, now);
    wake(vm, pending.waiters, key, cached, back_to);
}

/// Caches a call's answer (or counts and logs its failure); the answer to hand to the waiters.
fn record(
    vm: &Rc<RefCell<Vm>>,
    pending: &Call<Waiting>,
    key: Key,
    result: Result<Answer, String>,
    now: u64,
) -> Option<Cached> {
    let mut state = vm.borrow_mut();
    let mut keep = keeping(&mut state, pending.provider)?;
    introspection::settle(&mut keep, &key, result, pending.started, now)
}

/// One provider's answers in this VM: its cache, the slots the VMs share, its counters.
struct WasmKeep<'s> {
    intro: &'s mut Intro,
    metrics: &'s Metrics,
}

fn keeping(state: &mut Vm, provider: usize) -> Option<WasmKeep<'_>> {
    let metrics = &state.metrics;
    let intro = state.intros.get_mut(provider)?.as_mut()?;
    Some(WasmKeep { intro, metrics })
}

impl Keeping for WasmKeep<'_> {
    type Cached = Cached;

    fn provider(&self) -> (&str, &Introspection) {
        (&self.intro.name, &self.intro.config)
    }

    fn keep(&mut self, key: &Key, answer: &Cached, until: u64, now: u64) -> usize {
        let size = answer_size(answer);
        let evicted = self
            .intro
            .cache
            .insert(*key, answer.clone(), size, until, now);
        self.intro.write_shared(key, answer, until);
        evicted
    }

    fn count(&mut self, counted: Counted) {
        match counted {
            Counted::Failure => self.metrics.introspection_failed(),
            Counted::Evicted(n) => self.metrics.introspection_evicted(n),
            Counted::Latency(ms) => self.metrics.introspection_latency(ms),
        }
    }

    fn admit_log(&mut self, now: u64) -> Option<u64> {
        self.intro.log.admit(now, throttle::WINDOW_MS)
    }
}

/// Decides again on every request that waited for the call for `key`, with its answer (`None`:
/// the call failed or took too long). `back_to`: the effective context to restore.
fn wake(
    vm: &Rc<RefCell<Vm>>,
    waiters: Vec<Waiting>,
    key: Key,
    answer: Option<Cached>,
    back_to: u32,
) {
    let ids: Vec<u32> = waiters.iter().map(|(id, _)| *id).collect();
    let mut waiters = waiters;
    http::in_contexts(ids, back_to, |id| {
        let Some(at) = waiters.iter().position(|(w, _)| *w == id) else {
            return;
        };
        let (_, mut delivered) = waiters.swap_remove(at);
        delivered.push((key, answer.clone()));
        decide_with(vm, id, delivered, true);
    });
}

/// From the root's tick: requests that waited too long for a call are decided as if it failed.
pub fn tick(vm: &Rc<RefCell<Vm>>, now: u64, root: u32) {
    let late = vm.borrow_mut().calls.expired(now);
    for (key, call) in late {
        wake(vm, call.waiters, key, None, root);
    }
}
