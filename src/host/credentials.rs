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
use crate::config::UpstreamClient;
use crate::credentials::{self, Counted, Record};
use crate::decision::CredentialNow;
use crate::introspection::Call;
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
        let settled = !matches!(
            vm.borrow().clients[c].record.now(now),
            CredentialNow::Pending
        );
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
    let refresh = {
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
        client.record.usable(now).is_some()
    };
    if let Some(mut client) = WasmClient::new(vm, c) {
        credentials::send(&mut client, refresh, now);
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
    if let Some(mut client) = WasmClient::new(vm, c) {
        credentials::answered(&mut client, status.as_deref(), &body, abi::now_ms());
    }
    wake(vm, c);
}

/// One client's token requests in this VM: its record in shared data, its calls from the root
/// context, its lease released when a request ends. Requests waiting for it are woken when the
/// answer arrives, or at the next tick.
struct WasmClient<'v> {
    vm: &'v Rc<RefCell<Vm>>,
    c: usize,
    spec: UpstreamClient,
}

impl<'v> WasmClient<'v> {
    fn new(vm: &'v Rc<RefCell<Vm>>, c: usize) -> Option<WasmClient<'v>> {
        let spec = vm.borrow().clients.get(c)?.spec.clone();
        Some(WasmClient { vm, c, spec })
    }
}

impl credentials::Obtaining for WasmClient<'_> {
    fn client(&self) -> &UpstreamClient {
        &self.spec
    }

    fn post(&mut self, call: &Call) -> Result<(), String> {
        let token = http::dispatch_post(call)?;
        if let Some(client) = self.vm.borrow_mut().clients.get_mut(self.c) {
            client.in_flight = Some(token);
        }
        Ok(())
    }

    fn count(&mut self, counted: Counted) {
        if let Some(client) = self.vm.borrow().clients.get(self.c) {
            client.metrics.counted(counted);
        }
    }

    fn ended(&mut self, change: &dyn Fn(&Record) -> Record) -> Record {
        let mut state = self.vm.borrow_mut();
        let me = state.id;
        let Some(client) = state.clients.get_mut(self.c) else {
            return Record::default();
        };
        client.record = shared::update_record(&client.shared, |r: &Record| change(r));
        client.in_flight = None;
        shared::release_lease(&client.shared, me);
        client.record.clone()
    }
}

/// Decides again on every request paused for client `c` (from the root context).
fn wake(vm: &Rc<RefCell<Vm>>, c: usize) {
    http::wake(vm, Awaited::Credential(c));
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
