//! Envoy counters. Envoy shows them in /stats with its `wasmcustom.` prefix.

use super::abi::{self, MetricType};
use crate::challenge::DenyReason;
use crate::credentials::Counted;
use crate::metrics::{self, REQUEST_COUNTERS};

/// Counter ids, defined once per VM (Envoy shares counters of the same name across VMs).
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    /// [`crate::metrics::REQUEST_COUNTERS`], by index.
    requests: [Option<u32>; REQUEST_COUNTERS.len()],
    jwks_fetch_ok: Option<u32>,
    jwks_fetch_failed: Option<u32>,
    intro_calls: Option<u32>,
    intro_failures: Option<u32>,
    intro_hits: Option<u32>,
    intro_misses: Option<u32>,
    intro_evictions: Option<u32>,
    intro_latency: Option<u32>,
    jwt_cache_hits: Option<u32>,
    host_verifications: Option<u32>,
}

fn counter(name: &str) -> Option<u32> {
    match abi::define_metric(MetricType::Counter, name) {
        Ok(id) => Some(id),
        Err(status) => {
            log::warn!("oauth-filter: cannot define metric {name}: {status:?}");
            None
        }
    }
}

fn bump(id: Option<u32>) {
    if let Some(id) = id {
        abi::increment_metric(id, 1);
    }
}

impl Metrics {
    pub fn define() -> Metrics {
        Metrics {
            requests: REQUEST_COUNTERS.map(counter),
            jwks_fetch_ok: counter("oauth_filter.jwks.fetch_success"),
            jwks_fetch_failed: counter("oauth_filter.jwks.fetch_failure"),
            intro_calls: counter("oauth_filter.introspection.calls"),
            intro_failures: counter("oauth_filter.introspection.failures"),
            intro_hits: counter("oauth_filter.introspection.cache_hits"),
            intro_misses: counter("oauth_filter.introspection.cache_misses"),
            intro_evictions: counter("oauth_filter.introspection.cache_evictions"),
            jwt_cache_hits: counter(metrics::JWT_CACHE_HITS),
            host_verifications: counter("oauth_filter.jwt.host_verifications"),
            intro_latency: abi::define_metric(
                MetricType::Histogram,
                "oauth_filter.introspection.latency_ms",
            )
            .ok(),
        }
    }

    pub fn host_verification(&self) {
        bump(self.host_verifications);
    }

    pub fn jwt_cache_hit(&self) {
        bump(self.jwt_cache_hits);
    }

    pub fn introspection_call(&self) {
        bump(self.intro_calls);
    }

    pub fn introspection_failed(&self) {
        bump(self.intro_failures);
    }

    pub fn introspection_hit(&self) {
        bump(self.intro_hits);
    }

    pub fn introspection_miss(&self) {
        bump(self.intro_misses);
    }

    pub fn introspection_evicted(&self, n: usize) {
        if let (Some(id), true) = (self.intro_evictions, n > 0) {
            abi::increment_metric(id, n as i64);
        }
    }

    pub fn introspection_latency(&self, ms: u64) {
        if let Some(id) = self.intro_latency {
            abi::record_metric(id, ms);
        }
    }

    pub fn jwks_fetched(&self, ok: bool) {
        bump(if ok {
            self.jwks_fetch_ok
        } else {
            self.jwks_fetch_failed
        });
    }

    /// Sets gauge `oauth_filter.jwks.<provider>.keys`: the keys in use.
    pub fn keys_in_use(&self, provider: &str, count: usize) {
        let name = format!("oauth_filter.jwks.{provider}.keys");
        if let Ok(id) = abi::define_metric(MetricType::Gauge, &name) {
            abi::record_metric(id, count as u64);
        }
    }

    /// Request counter `index` of [`REQUEST_COUNTERS`].
    pub fn request(&self, index: usize) {
        bump(self.requests.get(index).copied().flatten());
    }

    pub fn denied(&self, reason: DenyReason) {
        self.request(metrics::denied(reason));
    }
}

/// The counters of one upstream client, `oauth_filter.upstream.<client>.*`.
#[derive(Debug, Default, Clone)]
pub struct ClientMetrics {
    /// Token requests sent (refreshes included).
    fetches: Option<u32>,
    /// Token requests that gave no usable token.
    failures: Option<u32>,
    /// Token requests sent while the current token was still usable (ahead of its expiry).
    refreshes: Option<u32>,
    /// Requests sent upstream with the client's token.
    injections: Option<u32>,
    /// Tokens dropped because the upstream refused them (401 `invalid_token`).
    dropped: Option<u32>,
}

impl ClientMetrics {
    pub fn define(client: &str) -> ClientMetrics {
        let c = |what: &str| counter(&format!("oauth_filter.upstream.{client}.{what}"));
        ClientMetrics {
            fetches: c("token_fetches"),
            failures: c("token_fetch_failures"),
            refreshes: c("token_refreshes"),
            injections: c("injections"),
            dropped: c("tokens_dropped"),
        }
    }

    pub fn counted(&self, counted: Counted) {
        bump(match counted {
            Counted::Fetch => self.fetches,
            Counted::Refresh => self.refreshes,
            Counted::Failure => self.failures,
        });
    }

    pub fn injection(&self) {
        bump(self.injections);
    }

    pub fn dropped(&self) {
        bump(self.dropped);
    }
}
