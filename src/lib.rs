//! OAuth 2.0 bearer-token filter for Envoy, as a proxy-wasm module.
//!
//! The core (every module but `host`) is plain Rust with no host calls, unit-tested natively.
//! `host` is the thin proxy-wasm shell (its own ABI bindings and exports); it exists only in the
//! Wasm build.

pub mod authenticate;
pub mod binding;
pub mod cache;
pub mod challenge;
pub mod claims;
pub mod config;
pub mod credentials;
pub mod decision;
pub mod dpop;
pub mod extract;
pub mod headers;
pub mod identity;
pub mod introspection;
pub mod json;
pub mod jwt;
pub mod keyfetch;
pub mod metrics;
pub mod park;
pub mod regex;
pub mod remote;
pub mod requirement;
pub mod resource;
pub mod route;
pub mod shell;
pub mod throttle;

#[cfg(test)]
#[path = "../tests/support/tokens.rs"]
mod testkit;

#[cfg(target_arch = "wasm32")]
mod host;

#[cfg(all(feature = "native", not(target_arch = "wasm32")))]
mod native;
