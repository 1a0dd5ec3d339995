//! Upstream credentials in the shell: obtaining each client's token (one fetch for all VMs,
//! under the shared lease), refreshing it from the root's tick, waking the requests that wait
//! for it, and dropping it when the upstream refuses it.
//!
//! Every token request is made from the root context, so its answer reaches every waiting
//! request whatever becomes of the one that caused it.

use super::abi::{self, MapType};
use super::http;
use super::shared;
use super::vm::Vm;
use crate::credentials::{self, Record};
use crate::decision::CredentialNow;
use crate::park::Awaited;
use std::cell::RefCell;
use std::rc::Rc;

/// From the root's tick: install what other VMs obtained, fetch what is due, and decide again
/// on the requests waiting for a client whose token is no longer pending.
pub fn tick(vm: &Rc<RefCell<Vm>>, now: u64) {
    let count = vm.borrow().clients.len();
    for c in 0..count {
        if !vm.borrow().clients[c].used {
            continue;
        }
        vm.borrow_mut().sync_client(c);
        maybe_fetch(vm, c, now);
        let settled = !matches!(vm.borrow().clients[c].now(now), CredentialNow::Pending);
        if settled {
            wake(vm, c);
        }
    }
}

/// For a request that waits for client `c` (the current effective context is the request's,
/// `context_id`): install what other VMs obtained and start a fetch if none is under way.
/// Whether what the request would see changed.
pub fn start(vm: &Rc<RefCell<Vm>>, c: usize, now: u64, context_id: u32) -> bool {
    let (root, before) = {
        let state = vm.borrow();
        let Some(client) = state.clients.get(c) else {
            return false;
        };
        (state.root_context_id, client.record.clone())
    };
    vm.borrow_mut().sync_client(c);
    let _ = abi::set_effective_context(root);
    maybe_fetch(vm, c, now);
    let _ = abi::set_effective_context(context_id);
    vm.borrow().clients.get(c).map(|cl| &cl.record) != Some(&before)
}

/// Sends client `c`'s token request if one is due, none is under way in this VM, and this VM
/// gets the lease (the current effective context must be the root's).
fn maybe_fetch(vm: &Rc<RefCell<Vm>>, c: usize, now: u64) {
    let failed = {
        let mut state = vm.borrow_mut();
        let me = state.id;
        let Some(client) = state.clients.get_mut(c) else {
            return;
        };
        let margin = client.spec.refresh_margin_ms;
        if client.in_flight.is_some() || !client.record.fetch_due(margin, now) {
            return;
        }
        let until = now + client.spec.endpoint.timeout_ms + 1000;
        let due = |r: &Record| r.fetch_due(margin, now);
        let Some((record, due)) = shared::lease_if_due(&client.shared, me, now, until, due) else {
            return;
        };
        client.record = record;
        if !due {
            return;
        }
        let refresh = client.record.usable(now).is_some();
        let sent = match credentials::request(&client.spec) {
            Some(call) => http::dispatch_post(&call),
            None => Err("the token endpoint URL is not usable".to_string()),
        };
        client.metrics.fetch(refresh);
        match sent {
            Ok(token) => {
                client.in_flight = Some(token);
                None
            }
            Err(why) => Some(why),
        }
    };
    if let Some(why) = failed {
        fail(vm, c, &why);
    }
}

/// The client whose token request is call `token`, if any.
pub fn owner(vm: &Rc<RefCell<Vm>>, token: u32) -> Option<usize> {
    vm.borrow()
        .clients
        .iter()
        .position(|c| c.in_flight == Some(token))
}

/// The answer to client `c`'s token request arrived (in the root context).
pub fn answered(vm: &Rc<RefCell<Vm>>, c: usize, body_size: usize) {
    let (status, body) = http::call_response(body_size, credentials::MAX_RESPONSE_BYTES);
    match credentials::parse(status.as_deref(), &body) {
        Ok(issued) => {
            let mut state = vm.borrow_mut();
            let me = state.id;
            let Some(client) = state.clients.get_mut(c) else {
                return;
            };
            let now = abi::now_ms();
            client.record =
                shared::update_record(&client.shared, |r: &Record| r.succeeded(&issued, now));
            client.in_flight = None;
            shared::release_lease(&client.shared, me);
            log::info!(
                "oauth-filter: upstream client {}: token obtained, valid for {} s",
                client.spec.name,
                issued.lifetime_ms / 1000
            );
        }
        Err(why) => fail(vm, c, &why),
    }
    wake(vm, c);
}

/// A token request failed: a token still usable stays in use, requests that have none get 503,
/// and the next request waits for the backoff. The log line names the client, the endpoint and
/// what it answered (never the secret).
fn fail(vm: &Rc<RefCell<Vm>>, c: usize, why: &str) {
    let mut state = vm.borrow_mut();
    let me = state.id;
    let Some(client) = state.clients.get_mut(c) else {
        return;
    };
    let now = abi::now_ms();
    client.record = shared::update_record(&client.shared, |r: &Record| r.failed(now));
    client.in_flight = None;
    shared::release_lease(&client.shared, me);
    client.metrics.failure();
    let outcome = if client.record.usable(now).is_some() {
        "the current token stays in use"
    } else {
        "requests that need it get 503"
    };
    log::warn!(
        "oauth-filter: upstream client {}: token request to {} failed: {why}; {outcome}; retry in {} ms",
        client.spec.name,
        client.spec.endpoint.uri,
        crate::remote::backoff_ms(client.record.failures)
    );
}

/// Decides again on every request paused for client `c` (from the root context).
fn wake(vm: &Rc<RefCell<Vm>>, c: usize) {
    let (waiting, root) = {
        let mut state = vm.borrow_mut();
        let waiting = state.waiters.take(Awaited::Credential(c));
        (waiting, state.root_context_id)
    };
    http::in_contexts(waiting, root, |id| {
        http::process(vm, id, true);
    });
}

/// An upstream's response headers (the current effective context is the request's,
/// `context_id`): if the request went with a client's token and the upstream refused it (401,
/// `invalid_token`), drop that token and fetch a new one. Any other response costs no host call.
pub fn on_response_headers(vms: &[Rc<RefCell<Vm>>], context_id: u32) {
    const RESPONSE: MapType = MapType::HttpResponseHeaders;
    for vm in vms {
        let Some(sent) = vm.borrow_mut().took_token(context_id) else {
            continue;
        };
        let Some(status) = abi::get_map_value(RESPONSE, ":status") else {
            return;
        };
        if status != b"401" {
            return;
        }
        let raw = abi::get_map_pairs(RESPONSE).unwrap_or_default();
        let headers = crate::headers::parse_pairs(&raw);
        let challenges: Vec<&[u8]> = headers
            .iter()
            .filter(|(name, _)| *name == "www-authenticate")
            .map(|(_, value)| *value)
            .collect();
        if credentials::upstream_refused(&status, &challenges) {
            drop_token(vm, sent.client, sent.generation, context_id);
        }
        return;
    }
}

fn drop_token(vm: &Rc<RefCell<Vm>>, c: usize, generation: u64, context_id: u32) {
    let now = abi::now_ms();
    let root = {
        let mut state = vm.borrow_mut();
        let root = state.root_context_id;
        let Some(client) = state.clients.get_mut(c) else {
            return;
        };
        let dropped = std::cell::Cell::new(false);
        client.record = shared::update_record(&client.shared, |r: &Record| {
            let next = r.dropped(generation, now);
            dropped.set(next.is_some());
            next.unwrap_or_else(|| r.clone())
        });
        if !dropped.get() {
            return;
        }
        client.metrics.dropped();
        log::info!(
            "oauth-filter: upstream client {}: the upstream refused its token (401 invalid_token); fetching a new one",
            client.spec.name
        );
        root
    };
    let _ = abi::set_effective_context(root);
    maybe_fetch(vm, c, now);
    let _ = abi::set_effective_context(context_id);
}
