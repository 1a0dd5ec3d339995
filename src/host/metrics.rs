//! Envoy counters. Envoy shows them in /stats with its `wasmcustom.` prefix.

use crate::challenge::DenyReason;
use crate::decision::Passed;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// Counter ids, defined once per VM (Envoy shares counters of the same name across VMs).
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    authenticated: Option<u32>,
    public: Option<u32>,
    no_rule: Option<u32>,
    denied: [Option<u32>; DenyReason::ALL.len()],
}

fn counter(name: &str) -> Option<u32> {
    match hostcalls::define_metric(MetricType::Counter, name) {
        Ok(id) => Some(id),
        Err(status) => {
            log::warn!("oauth-filter: cannot define metric {name}: {status:?}");
            None
        }
    }
}

fn bump(id: Option<u32>) {
    if let Some(id) = id {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

impl Metrics {
    pub fn define() -> Metrics {
        Metrics {
            authenticated: counter("oauth_filter.allowed"),
            public: counter("oauth_filter.public"),
            no_rule: counter("oauth_filter.no_rule"),
            denied: DenyReason::ALL.map(|r| counter(&format!("oauth_filter.denied.{}", r.name()))),
        }
    }

    pub fn passed(&self, passed: Passed) {
        bump(match passed {
            Passed::Authenticated => self.authenticated,
            Passed::Public => self.public,
            Passed::NoRule => self.no_rule,
        });
    }

    pub fn denied(&self, reason: DenyReason) {
        if let Some(i) = DenyReason::ALL.iter().position(|r| *r == reason) {
            bump(self.denied[i]);
        }
    }
}
