//! The proxy-wasm shell: the only code that calls the host. It gathers inputs, asks the core,
//! and applies the answer.

mod abi;
mod credentials;
mod dpop;
mod exports;
mod http;
mod introspect;
mod metrics;
mod root;
mod shared;
mod vm;

/// Called once when the VM starts (from `_initialize`).
pub fn start() {
    abi::install_logger();
    // A panic in Wasm traps and kills the VM for every request on the worker: make sure it is at
    // least logged. The core is written not to panic; this is the last line of defence.
    std::panic::set_hook(Box::new(|info| {
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        log::error!("oauth-filter: panic at {place}");
    }));
}
