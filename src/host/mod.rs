//! The proxy-wasm shell: the only code that calls the host. It gathers inputs, asks the core,
//! and applies the answer.

mod http;
mod introspect;
mod metrics;
mod root;
mod shared;
mod vm;

use proxy_wasm::types::LogLevel;

/// Called once when the VM starts.
pub fn start() {
    // A panic in Wasm traps and kills the VM for every request on the worker: make sure it is at
    // least logged. The core is written not to panic; this is the last line of defence.
    std::panic::set_hook(Box::new(|info| {
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        log::error!("oauth-filter: panic at {place}");
    }));
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| Box::new(root::Root::new(context_id)));
}
