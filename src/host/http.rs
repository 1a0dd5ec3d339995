//! One request: gather headers, ask the core, apply the answer. [`process`] works through
//! host calls on the current effective context, so the root context can run it again for a
//! request it resumes.

use super::abi::{self, Action, BufferType, MapType};
use super::credentials;
use super::dpop::SharedSlots;
use super::introspect;
use super::vm::Vm;
use crate::cache;
use crate::challenge::{self, Challenge, DenyReason};
use crate::decision::{self, Decision, Forward, Request, Verified};
use crate::headers;
use crate::park::Awaited;
use crate::shell::{self, RequestHost, Step, StreamHost};
use std::cell::RefCell;
use std::rc::Rc;

/// Slack added to a call's own timeouts before a request paused for it gives up.
pub const WAIT_SLACK_MS: u64 = 2_000;

/// A request's headers arrived (the current effective context is the request's). `vm`: the
/// configured state of its root, if the root has a configuration.
pub fn on_request_headers(vm: Option<&Rc<RefCell<Vm>>>, context_id: u32) -> Action {
    match vm {
        Some(vm) => process(vm, context_id, false),
        // Fail closed: a filter without a configuration lets nothing through.
        None => deny(
            &challenge::unavailable("The filter is not configured"),
            None,
        ),
    }
}

/// The `:status` and body of a call's answer; a body over `limit` is read as `limit + 1` bytes
/// at most (enough for the core to call it too large).
pub fn call_response(body_size: usize, limit: usize) -> (Option<String>, Vec<u8>) {
    let status = abi::get_map_value(MapType::HttpCallResponseHeaders, ":status")
        .and_then(|s| String::from_utf8(s).ok());
    let body = abi::get_buffer(
        BufferType::HttpCallResponseBody,
        0,
        body_size.min(limit + 1),
    )
    .unwrap_or_default();
    (status, body)
}

/// Decides on the request of the current effective context and applies the decision.
/// `resumed`: the request was paused and is being woken up, so an allowed request must be
/// resumed explicitly.
pub fn process(vm: &Rc<RefCell<Vm>>, context_id: u32, resumed: bool) -> Action {
    // One host call for every header: each call that returns data costs a second entry into the
    // VM (the host allocates through it), so the request is read once and parsed in place.
    let raw = abi::get_map_pairs(MapType::HttpRequestHeaders).unwrap_or_default();
    let mut headers = headers::Pairs::new();
    headers::parse_pairs_into(&raw, &mut headers);
    let path = headers
        .iter()
        .find(|(name, _)| *name == ":path")
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
        .unwrap_or("/");
    let now = abi::now_ms();
    // Held apart from the VM's state, which `act` borrows again: an allowed request's header
    // names are the configuration's.
    let config = vm.borrow().config.clone();
    let decide = || {
        let mut state = vm.borrow_mut();
        state.now_ms = now;
        let request = Request {
            path,
            headers: &headers,
            now: now / 1000,
        };
        decision::decide(&config, &*state, request)
    };
    let first = decide();
    let decision = if look_again(vm, &first, now, context_id) {
        decide()
    } else {
        first
    };
    act(vm, decision, context_id, resumed, now)
}

/// Whether what the VM knows may have changed for `decision`: keys or tokens this VM never saw
/// may be in shared data already (another VM fetched them since this VM's last tick), and a
/// request that needs an upstream token starts its fetch.
fn look_again(vm: &Rc<RefCell<Vm>>, decision: &Decision, now: u64, context_id: u32) -> bool {
    match decision {
        Decision::Deny(c) if c.reason == DenyReason::Unavailable => {
            let mut changed = false;
            let mut state = vm.borrow_mut();
            for p in 0..state.remotes.len() {
                changed |= state.sync(p);
            }
            for c in 0..state.clients.len() {
                changed |= state.sync_client(c);
            }
            changed
        }
        Decision::AwaitCredential { client, .. } => {
            credentials::start(vm, *client, now, context_id)
        }
        _ => false,
    }
}

/// Carries out `decision` for request `context_id` (see [`shell::act`]).
fn act(
    vm: &Rc<RefCell<Vm>>,
    decision: Decision,
    context_id: u32,
    resumed: bool,
    now: u64,
) -> Action {
    let mut stream = WasmStream {
        vm,
        context_id,
        resumed,
    };
    match shell::act(&mut stream, decision, now) {
        Step::Continue => Action::Continue,
        Step::Stop => Action::Pause,
    }
}

/// Pauses request `context_id` until `awaited` changes, or `until` (plus slack) has passed.
fn pause(vm: &Rc<RefCell<Vm>>, context_id: u32, awaited: Awaited, until: u64) {
    let deadline = until + WAIT_SLACK_MS;
    vm.borrow_mut().waiters.park(awaited, context_id, deadline);
}

/// Sends `call` (a form POST built by the core); its call token, or why it could not be sent.
pub fn dispatch_post(call: &crate::introspection::Call) -> Result<u32, String> {
    let headers: Vec<(&str, &str)> = call
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    abi::dispatch_http_call(
        &call.cluster,
        &headers,
        Some(call.body.as_bytes()),
        std::time::Duration::from_millis(call.timeout_ms),
    )
    .map_err(|status| format!("cannot call cluster {} ({status:?})", call.cluster))
}

/// Keeps the claims of tokens verified just now in the verified-token cache.
pub fn remember(vm: &Rc<RefCell<Vm>>, verified: Vec<Verified>, now: u64) {
    if verified.is_empty() {
        return;
    }
    let mut state = vm.borrow_mut();
    for v in verified {
        let size = cache::json_size(&v.claims);
        state.verified.insert(v.key, v.claims, size, v.until, now);
    }
}

/// Decides again on every request paused for `awaited` (from the root context).
pub fn wake(vm: &Rc<RefCell<Vm>>, awaited: Awaited) {
    let (waiting, root) = {
        let mut state = vm.borrow_mut();
        (state.waiters.take(awaited), state.root_context_id)
    };
    in_contexts(waiting, root, |id| {
        process(vm, id, true);
    });
}

/// Runs `each` in the context of every request in `contexts` (those that went away are
/// skipped), then makes `back_to` the effective context again.
pub fn in_contexts(
    contexts: impl IntoIterator<Item = u32>,
    back_to: u32,
    mut each: impl FnMut(u32),
) {
    let mut switched = false;
    for id in contexts {
        switched = true;
        if abi::set_effective_context(id).is_ok() {
            each(id);
        }
    }
    if switched {
        let _ = abi::set_effective_context(back_to);
    }
}

/// Answers the current request with `challenge`.
pub fn deny(challenge: &Challenge, vm: Option<&Vm>) -> Action {
    if let Some(vm) = vm {
        vm.metrics.denied(challenge.reason);
    }
    log::debug!("oauth-filter: denied: {}", challenge.reason.name());
    shell::deny(&mut WasmRequest, challenge);
    Action::Pause
}

/// The request of the current effective context, through proxy-wasm host calls.
struct WasmRequest;

impl RequestHost for WasmRequest {
    fn remove_header(&mut self, name: &str) {
        let _ = abi::set_map_value(MapType::HttpRequestHeaders, name, None);
    }

    fn set_header(&mut self, name: &str, value: &[u8]) {
        let _ = abi::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
    }

    fn add_header(&mut self, name: &str, value: &[u8]) {
        let _ = abi::add_map_value(MapType::HttpRequestHeaders, name, value);
    }

    /// Envoy stores what a Wasm filter sets as `wasm.KEY`.
    fn set_filter_state(&mut self, key: &str, value: &[u8]) {
        let _ = abi::set_property(key, value);
    }

    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        abi::send_http_response(status, headers, body);
    }
}

/// The request of the current effective context, `context_id`, with its root's configured
/// state (`resumed`: it was paused).
struct WasmStream<'v> {
    vm: &'v Rc<RefCell<Vm>>,
    context_id: u32,
    resumed: bool,
}

impl RequestHost for WasmStream<'_> {
    fn remove_header(&mut self, name: &str) {
        WasmRequest.remove_header(name);
    }
    fn set_header(&mut self, name: &str, value: &[u8]) {
        WasmRequest.set_header(name, value);
    }
    fn add_header(&mut self, name: &str, value: &[u8]) {
        WasmRequest.add_header(name, value);
    }
    fn set_filter_state(&mut self, key: &str, value: &[u8]) {
        WasmRequest.set_filter_state(key, value);
    }
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        WasmRequest.send_response(status, headers, body);
    }
}

impl StreamHost for WasmStream<'_> {
    fn count(&mut self, index: usize) {
        self.vm.borrow().metrics.request(index);
    }

    fn debug(&mut self, line: std::fmt::Arguments) {
        log::debug!("{line}");
    }

    fn replay_refusal(&mut self, forward: &Forward, now: u64) -> Option<(Challenge, bool)> {
        if forward.proofs.is_empty() {
            return None;
        }
        let state = self.vm.borrow();
        let secret = decision::Known::shared_secret(&*state);
        shell::replay_refusal(&SharedSlots, &state.config, forward, secret, now)
    }

    fn remember(&mut self, verified: Vec<Verified>, now: u64) {
        remember(self.vm, verified, now);
    }

    fn sent_with(&mut self, client: usize) {
        let mut state = self.vm.borrow_mut();
        if let Some(c) = state.clients.get(client) {
            c.metrics.injection();
        }
        state.sent_token(self.context_id, client);
    }

    fn let_go(&mut self) {
        if self.resumed {
            abi::resume_http_request();
        }
    }

    fn wait_for_keys(&mut self, provider: usize, refetch: bool, now: u64) {
        let budget = {
            let mut state = self.vm.borrow_mut();
            let remote = state.remotes.get_mut(provider).and_then(Option::as_mut);
            remote.map_or(0, |r| {
                r.want_refetch |= refetch;
                r.fetch_budget_ms()
            })
        };
        pause(
            self.vm,
            self.context_id,
            Awaited::Keys(provider),
            now + budget,
        );
    }

    fn wait_for_credential(&mut self, client: usize, now: u64) {
        let timeout = self
            .vm
            .borrow()
            .clients
            .get(client)
            .map_or(0, |c| c.spec.endpoint.timeout_ms);
        let awaited = Awaited::Credential(client);
        pause(self.vm, self.context_id, awaited, now + timeout);
    }

    fn introspect(&mut self, provider: usize, token: String, _now: u64) -> Step {
        match introspect::start(self.vm, self.context_id, provider, token, self.resumed) {
            Action::Continue => Step::Continue,
            Action::Pause => Step::Stop,
        }
    }
}
