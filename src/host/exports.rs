//! The callbacks the filter exports to the host, and which root context each request belongs to.
//!
//! Exported: `on_context_create`, `on_vm_start`, `on_configure`, `on_tick`,
//! `on_request_headers`, `on_response_headers` and `on_http_call_response`. Nothing else: Envoy
//! skips the callbacks a module does not export, so a request costs three entries into the VM
//! (`on_response_headers` returns at once unless a configuration injects upstream tokens).
//! Consequences, by design:
//! - Requests keep no per-request state in the VM; a paused request is remembered by its
//!   context id in its root's wait lists, and a request that went away is simply found gone
//!   (`set_effective_context` fails) when its turn comes, or dropped at its deadline.
//! - Every outgoing call (JWKS, discovery, introspection) is made from a root context, so its
//!   answer never depends on the request that caused it.
//! - Without `on_delete`, a root context that Envoy removed (a configuration change) is noticed
//!   by probing it with `set_effective_context` when another root configures or ticks.

use super::abi;
use super::root::{self, Root};
use std::cell::RefCell;

/// Several root contexts share one VM when filters with the same `vm_id` and code have different
/// configurations (or while a changed configuration replaces the old one).
#[derive(Default)]
struct Registry {
    roots: Vec<Root>,
    /// The root of recently created request contexts, by `context_id % PARENTS`. Envoy creates a
    /// request's context right before its `on_request_headers`, so a small ring suffices.
    parents: Vec<(u32, u32)>,
    /// Whether a configured root injects upstream tokens (only then do responses matter).
    injects: bool,
}

const PARENTS: usize = 256;

thread_local! {
    static REGISTRY: RefCell<Registry> = RefCell::new(Registry::default());
}

impl Registry {
    fn root(&self, id: u32) -> Option<&Root> {
        self.roots.iter().find(|r| r.id == id)
    }

    fn root_mut(&mut self, id: u32) -> Option<&mut Root> {
        self.roots.iter_mut().find(|r| r.id == id)
    }

    /// The root of request context `context_id`.
    fn parent(&self, context_id: u32) -> Option<u32> {
        if let [only] = self.roots.as_slice() {
            return Some(only.id);
        }
        let (id, parent) = *self.parents.get(context_id as usize % PARENTS)?;
        (id == context_id).then_some(parent)
    }
}

/// The root with id `root_id`, cloned out so that no borrow of the registry is held while the
/// root works (host calls may call back into the module).
fn with_root<T>(root_id: u32, f: impl FnOnce(Root) -> T) -> Option<T> {
    let root = REGISTRY.with(|r| r.borrow().root(root_id).cloned())?;
    Some(f(root))
}

/// Forgets root contexts the host no longer has, then makes `current` effective again.
fn sweep(current: u32) {
    let ids: Vec<u32> = REGISTRY.with(|r| {
        r.borrow()
            .roots
            .iter()
            .map(|root| root.id)
            .filter(|id| *id != current)
            .collect()
    });
    if ids.is_empty() {
        return;
    }
    let gone: Vec<u32> = ids
        .into_iter()
        .filter(|id| abi::set_effective_context(*id).is_err())
        .collect();
    let _ = abi::set_effective_context(current);
    if !gone.is_empty() {
        REGISTRY.with(|r| r.borrow_mut().roots.retain(|root| !gone.contains(&root.id)));
    }
}

extern "C" {
    fn __wasm_call_ctors();
}

#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: the reactor's static constructors, run once by the host before any callback.
    unsafe { __wasm_call_ctors() };
    super::start();
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    abi::allocate(size)
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_id: u32) {
    REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        if parent_id == 0 {
            if r.root(context_id).is_none() {
                r.roots.push(Root::new(context_id));
            }
        } else {
            if r.parents.is_empty() {
                r.parents = vec![(0, 0); PARENTS];
            }
            let slot = context_id as usize % PARENTS;
            r.parents[slot] = (context_id, parent_id);
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(root_id: u32, _size: usize) -> u32 {
    REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        if r.root(root_id).is_none() {
            r.roots.push(Root::new(root_id));
        }
        if let Some(root) = r.root_mut(root_id) {
            root.define_metrics();
        }
    });
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root_id: u32, size: usize) -> u32 {
    sweep(root_id);
    let bytes = abi::get_buffer(abi::BufferType::PluginConfiguration, 0, size).unwrap_or_default();
    let metrics = REGISTRY.with(|r| r.borrow().root(root_id).map(|root| root.metrics.clone()));
    let Some(metrics) = metrics else {
        return 0;
    };
    match root::configure(root_id, &bytes, metrics) {
        Some(vm) => {
            REGISTRY.with(|r| {
                let mut r = r.borrow_mut();
                if let Some(root) = r.root_mut(root_id) {
                    root.vm = Some(vm);
                }
                r.injects = r
                    .roots
                    .iter()
                    .any(|root| root.vm.as_ref().is_some_and(|vm| vm.borrow().injects()));
            });
            1
        }
        None => 0,
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root_id: u32) {
    sweep(root_id);
    with_root(root_id, |root| root::tick(&root));
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(context_id: u32, _headers: usize, _eos: u32) -> u32 {
    let vm = REGISTRY.with(|r| {
        let r = r.borrow();
        r.parent(context_id)
            .and_then(|p| r.root(p))
            .and_then(|root| root.vm.clone())
    });
    let action = super::http::on_request_headers(vm.as_ref(), context_id);
    action as u32
}

/// Costs every response one entry into the VM; it looks further only where a configuration
/// injects upstream tokens (to drop a token the upstream refused).
#[no_mangle]
pub extern "C" fn proxy_on_response_headers(context_id: u32, _headers: usize, _eos: u32) -> u32 {
    if REGISTRY.with(|r| r.borrow().injects) {
        let vms: Vec<_> = REGISTRY.with(|r| {
            r.borrow()
                .roots
                .iter()
                .filter_map(|root| root.vm.clone())
                .filter(|vm| vm.borrow().injects())
                .collect()
        });
        super::credentials::on_response_headers(&vms, context_id);
    }
    abi::Action::Continue as u32
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    context_id: u32,
    token: u32,
    _headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    with_root(context_id, |root| {
        root::call_response(&root, token, body_size)
    });
}
