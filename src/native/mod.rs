//! The native shell: the same core as an Envoy dynamic module (`liboauth_filter.so`, ABI
//! `v0.2.0`, Envoy 1.40), built by `make native`. It binds Envoy's C ABI itself (`abi.rs`),
//! exports the hooks Envoy requires (`exports.rs`) and decides each request with the core,
//! answering through [`crate::shell`] (`filter.rs`).
//!
//! In-process, unsandboxed: every hook catches unwinding, and a request whose hook failed is
//! answered 503.

mod abi;
mod credentials;
mod dpop;
mod exports;
mod filter;
mod introspect;
mod known;
mod remote;
mod rsa;
mod ticker;
mod tokenkey;
mod verify;
mod waiters;

/// Logs a panic's location through Envoy before the hook's guard turns it into a 503.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        abi::log(abi::LOG_ERROR, || format!("oauth-filter: panic at {place}"));
    }));
}
