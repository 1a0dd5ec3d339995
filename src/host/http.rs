//! One request: gather headers, ask the core, apply the answer. [`process`] works through
//! hostcalls on the current effective context, so the root context can run it again for a
//! request it resumes.

use super::introspect;
use super::vm::{Vm, Waiter};
use crate::cache;
use crate::challenge::{self, Challenge, DenyReason};
use crate::decision::{self, Decision, Forward, Request};
use crate::introspection;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

/// Slack added to a call's own timeouts before a request paused for it gives up.
pub const WAIT_SLACK_MS: u64 = 2_000;

pub struct Http {
    context_id: u32,
    vm: Option<Rc<RefCell<Vm>>>,
}

impl Http {
    pub fn new(context_id: u32, vm: Option<Rc<RefCell<Vm>>>) -> Http {
        Http { context_id, vm }
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, call: u32, _headers: usize, body_size: usize, _: usize) {
        let Some(vm) = &self.vm else { return };
        let (status, body) = call_response(body_size, introspection::MAX_RESPONSE_BYTES);
        introspect::answered(vm, call, status.as_deref(), &body, self.context_id);
    }

    fn on_done(&mut self) -> bool {
        if let Some(vm) = &self.vm {
            introspect::gone(vm, self.context_id);
        }
        true
    }
}

/// The `:status` and body of a call's answer; a body over `limit` is read as `limit + 1` bytes
/// at most (enough for the core to call it too large).
pub fn call_response(body_size: usize, limit: usize) -> (Option<String>, Vec<u8>) {
    let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten();
    let body = hostcalls::get_buffer(
        BufferType::HttpCallResponseBody,
        0,
        body_size.min(limit + 1),
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    (status, body)
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match &self.vm {
            Some(vm) => process(vm, self.context_id, false),
            // Fail closed: a filter without a configuration lets nothing through.
            None => deny(
                &challenge::unavailable("The filter is not configured"),
                None,
            ),
        }
    }
}

/// The time now, in milliseconds since the epoch.
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Decides on the request of the current effective context and applies the decision.
/// `resumed`: the request was paused and is being woken up, so an allowed request must be
/// resumed explicitly.
pub fn process(vm: &Rc<RefCell<Vm>>, context_id: u32, resumed: bool) -> Action {
    let headers: Vec<(String, Vec<u8>)> = hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value))
        .collect();
    let path = headers
        .iter()
        .find(|(name, _)| name == ":path")
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
        .unwrap_or("/")
        .to_string();
    let now = now_ms();
    let decide = || {
        let mut state = vm.borrow_mut();
        state.now_ms = now;
        let state = &*state;
        let request = Request {
            path: &path,
            headers: &headers,
            now: now / 1000,
        };
        decision::decide(&state.config, state, request)
    };
    let mut decision = decide();
    if matches!(&decision, Decision::Deny(c) if c.reason == DenyReason::Unavailable) {
        // Keys this VM never saw may be in shared data already (another VM fetched them since
        // this VM's last tick): look before answering 503.
        let mut changed = false;
        {
            let mut state = vm.borrow_mut();
            for p in 0..state.remotes.len() {
                changed |= state.sync(p);
            }
        }
        if changed {
            decision = decide();
        }
    }
    let state = vm.borrow();
    match decision {
        Decision::Allow(forward) => {
            apply(&forward);
            state.metrics.passed(forward.passed);
            drop(state);
            if let Some(v) = forward.verified {
                let size = cache::json_size(&v.claims);
                vm.borrow_mut()
                    .verified
                    .insert(v.key, v.claims, size, v.until, now);
            }
            if resumed {
                let _ = hostcalls::resume_http_request();
            }
            Action::Continue
        }
        Decision::Deny(challenge) => deny(&challenge, Some(&state)),
        Decision::Introspect { provider, token } => {
            drop(state);
            introspect::start(vm, context_id, provider, token, resumed)
        }
        Decision::Wait { provider, refetch } => {
            drop(state);
            let mut state = vm.borrow_mut();
            let budget = state
                .remotes
                .get(provider)
                .and_then(Option::as_ref)
                .map_or(0, |r| r.fetch_budget_ms());
            if let Some(Some(remote)) = state.remotes.get_mut(provider) {
                remote.want_refetch |= refetch;
            }
            state.waiters.push(Waiter {
                context_id,
                provider,
                deadline: now + budget + WAIT_SLACK_MS,
            });
            Action::Pause
        }
    }
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
        if hostcalls::set_effective_context(id).is_ok() {
            each(id);
        }
    }
    if switched {
        let _ = hostcalls::set_effective_context(back_to);
    }
}

/// Answers the current request with `challenge`.
pub fn deny(challenge: &Challenge, vm: Option<&Vm>) -> Action {
    if let Some(vm) = vm {
        vm.metrics.denied(challenge.reason);
    }
    log::debug!("oauth-filter: denied: {}", challenge.reason.name());
    let _ = hostcalls::send_http_response(
        challenge.status,
        challenge.headers(),
        Some(challenge.body.as_bytes()),
    );
    Action::Pause
}

fn apply(forward: &Forward) {
    for name in &forward.remove {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
    }
    for (name, value) in &forward.set {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
    }
    if let Some(path) = &forward.path {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, ":path", Some(path));
    }
}
