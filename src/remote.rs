//! Remote key sets: what every worker VM knows about a provider's key fetches, who fetches,
//! when, and how fetched documents are judged. Pure: the shell passes the time in and carries
//! the records through proxy-wasm shared data.
//!
//! One Envoy runs one VM per worker thread (and one on the main thread). They share a
//! [`Record`] per provider through shared data, and a [`Lease`] decides which VM makes the next
//! fetch, so an Envoy makes about one fetch per refresh, not one per worker.

use crate::config::split_url;
use crate::json;
use serde_json::{json, Map, Value};

/// The shortest time between two fetches triggered by tokens with an unknown `kid`: at most
/// four a minute per provider, however many random kids an attacker sprays.
pub const MIN_REFETCH_INTERVAL_MS: u64 = 15_000;
/// Retry delays after failed fetches double from this...
pub const FIRST_BACKOFF_MS: u64 = 1_000;
/// ...up to this.
pub const MAX_BACKOFF_MS: u64 = 60_000;
/// The largest discovery document read.
pub const MAX_DISCOVERY_BYTES: usize = 256 * 1024;

/// The delay before retrying after `failures` failed fetches in a row: 1 s, doubling up to 60 s.
pub fn backoff_ms(failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF_MS
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF_MS)
}

/// What all VMs know about one provider's fetches (the value in shared data).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// When the last good key set was fetched (ms since the epoch); 0: never.
    pub fetched_at: u64,
    /// The last good JWKS document.
    pub jwks: String,
    /// The `jwks_uri` found by discovery, once found.
    pub jwks_uri: Option<String>,
    /// When the last fetch started.
    pub attempted_at: u64,
    /// Failed fetches since the last good one.
    pub failures: u32,
    /// When the last fetch failed.
    pub failed_at: u64,
    /// When the last fetch for an unknown `kid` started.
    pub refetched_at: u64,
}

impl Record {
    pub fn to_bytes(&self) -> Vec<u8> {
        json!({
            "fetched_at": self.fetched_at, "jwks": self.jwks, "jwks_uri": self.jwks_uri,
            "attempted_at": self.attempted_at, "failures": self.failures, "failed_at": self.failed_at,
            "refetched_at": self.refetched_at,
        })
        .to_string()
        .into_bytes()
    }

    /// Reads a record; anything unreadable is an empty record (as if nothing was fetched).
    pub fn from_bytes(bytes: &[u8]) -> Record {
        let f = json::Fields::parse(bytes);
        Record {
            fetched_at: f.u64("fetched_at"),
            jwks: f.string("jwks"),
            jwks_uri: f.str("jwks_uri").map(str::to_owned),
            attempted_at: f.u64("attempted_at"),
            failures: f.u32("failures"),
            failed_at: f.u64("failed_at"),
            refetched_at: f.u64("refetched_at"),
        }
    }

    /// Whether a key set was ever fetched.
    pub fn has_keys(&self) -> bool {
        self.fetched_at > 0
    }

    /// The delay before retrying after `self.failures` failures.
    pub fn backoff_ms(&self) -> u64 {
        backoff_ms(self.failures)
    }

    /// Whether a fetch is due at `now`: never fetched; the refresh time of a good set (three
    /// quarters into `cache_ms`, so a refresh lands before the set is stale); the end of the
    /// backoff after a failure; or a refetch `wanted` for an unknown `kid`, if the rate limit
    /// allows one.
    pub fn fetch_due(&self, cache_ms: u64, now: u64, wanted: bool) -> bool {
        if self.failures > 0 {
            return now >= self.failed_at.saturating_add(self.backoff_ms());
        }
        if !self.has_keys() {
            return true;
        }
        if wanted && self.refetch_allowed(now) {
            return true;
        }
        now >= self.fetched_at.saturating_add(cache_ms / 4 * 3)
    }

    /// Whether the last fetch failed and the backoff after it has not ended at `now`.
    pub fn backing_off(&self, now: u64) -> bool {
        self.failures > 0 && now < self.failed_at.saturating_add(self.backoff_ms())
    }

    /// Whether an unknown `kid` may trigger a fetch now: the first may at once, the next only
    /// [`MIN_REFETCH_INTERVAL_MS`] after it, and none while backing off after a failure (the
    /// token is then refused at once rather than held for a fetch that cannot start).
    pub fn refetch_allowed(&self, now: u64) -> bool {
        !self.backing_off(now)
            && (self.refetched_at == 0
                || now >= self.refetched_at.saturating_add(MIN_REFETCH_INTERVAL_MS))
    }

    /// A refetch some request wanted (`wanted`, taken: it is asked for once), as the fetch
    /// schedule at `now` answers it: `(refetch, refused)`. A refused one (too soon after the
    /// last, or while backing off) lets those requests be decided again with the keys as they
    /// are.
    pub fn take_refetch(&self, wanted: &mut bool, now: u64) -> (bool, bool) {
        let refetch = *wanted && self.refetch_allowed(now);
        let refused = *wanted && !refetch;
        *wanted = false;
        (refetch, refused)
    }

    /// The record once a fetch starts at `now` (`refetch`: for an unknown `kid`).
    pub fn started(&self, now: u64, refetch: bool) -> Record {
        Record {
            attempted_at: now,
            refetched_at: if refetch { now } else { self.refetched_at },
            ..self.clone()
        }
    }

    /// The record after a good fetch of `jwks` at `now`.
    pub fn succeeded(&self, jwks: String, now: u64) -> Record {
        Record {
            fetched_at: now,
            jwks,
            failures: 0,
            failed_at: 0,
            ..self.clone()
        }
    }

    /// The record after a failed fetch at `now`: the last good keys stay.
    pub fn failed(&self, now: u64) -> Record {
        Record {
            failures: self.failures.saturating_add(1),
            failed_at: now,
            ..self.clone()
        }
    }
}

/// Which VM may fetch a provider's keys, and until when (the value in shared data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub owner: u64,
    pub until: u64,
}

impl Lease {
    pub fn to_bytes(self) -> Vec<u8> {
        format!("{}:{}", self.owner, self.until).into_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Lease> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (owner, until) = text.split_once(':')?;
        Some(Lease {
            owner: owner.parse().ok()?,
            until: until.parse().ok()?,
        })
    }

    /// Whether VM `me` may take the lease at `now`: it is free, expired, or already `me`'s.
    pub fn takeable(current: Option<Lease>, me: u64, now: u64) -> bool {
        current.is_none_or(|l| l.owner == me || l.until <= now)
    }
}

/// What a discovery document (OIDC Discovery 1.0 §3, RFC 8414 §2) tells the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub jwks_uri: String,
    pub introspection_endpoint: Option<String>,
}

/// Reads a discovery document: a JSON object whose `issuer` equals the configured issuer
/// exactly (OIDC Discovery §4.3: otherwise the document must not be used) and whose `jwks_uri`
/// is an http(s) URL.
pub fn parse_discovery(body: &[u8], issuer: &str) -> Result<Discovered, &'static str> {
    if body.len() > MAX_DISCOVERY_BYTES {
        return Err("the discovery document is too large");
    }
    let doc: Map<String, Value> =
        json::parse_object(body).map_err(|_| "the discovery document is not a JSON object")?;
    if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err("the discovery document's issuer is not the configured issuer");
    }
    let url = |name: &str| {
        doc.get(name)
            .and_then(Value::as_str)
            .filter(|u| split_url(u).is_some())
            .map(str::to_owned)
    };
    Ok(Discovered {
        jwks_uri: url("jwks_uri").ok_or("the discovery document has no usable jwks_uri")?,
        introspection_endpoint: url("introspection_endpoint"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CACHE: u64 = 300_000;

    #[test]
    fn schedule() {
        let r = Record::default();
        assert!(r.fetch_due(CACHE, 0, false), "never fetched: due at once");
        let good = r.succeeded("{}".into(), 1_000_000);
        assert!(!good.fetch_due(CACHE, 1_000_000 + 224_999, false));
        assert!(
            good.fetch_due(CACHE, 1_000_000 + 225_000, false),
            "refresh before expiry"
        );
        // A failed refresh keeps the keys and backs off 1s, 2s, 4s ... 60s.
        let mut f = good.failed(2_000_000);
        assert!(f.has_keys());
        assert_eq!(f.jwks, "{}");
        assert!(!f.fetch_due(CACHE, 2_000_999, false));
        assert!(f.fetch_due(CACHE, 2_001_000, false));
        let mut delays = vec![];
        for _ in 0..10 {
            delays.push(f.backoff_ms());
            f = f.failed(3_000_000);
        }
        assert_eq!(
            &delays[..7],
            &[1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000]
        );
        assert_eq!(f.succeeded("{}".into(), 4_000_000).failures, 0);
        // Failures at start-up: no keys, retried with backoff.
        let down = Record::default().failed(5_000);
        assert!(!down.has_keys());
        assert!(!down.fetch_due(CACHE, 5_500, false));
        assert!(down.fetch_due(CACHE, 6_000, false));
        let up = Record::from_bytes(&down.to_bytes());
        assert_eq!(up, down);
        let back = Record::from_bytes(&good.to_bytes());
        assert_eq!(back, good);
        assert_eq!(Record::from_bytes(b"garbage"), Record::default());
    }

    #[test]
    fn unknown_kid_refetches_are_rate_limited() {
        let r = Record::default()
            .started(1_000, false)
            .succeeded("{}".into(), 1_000);
        // The first unknown kid may refetch at once, even right after the first fetch.
        assert!(r.fetch_due(CACHE, 1_001, true));
        let r = r.started(1_000, true);
        assert!(!r.fetch_due(CACHE, 10_000, true));
        assert!(r.fetch_due(CACHE, 16_000, true));
        assert!(!r.fetch_due(CACHE, 16_000, false));
        // However many requests want one, one window allows one fetch.
        let fetches = (0..60_000u64)
            .step_by(100)
            .fold((0, r.clone()), |(n, rec), t| {
                let now = 16_000 + t;
                if rec.fetch_due(CACHE, now, true) {
                    (n + 1, rec.started(now, true).succeeded("{}".into(), now))
                } else {
                    (n, rec)
                }
            })
            .0;
        assert_eq!(fetches, 4, "at most four a minute");
    }

    #[test]
    fn no_unknown_kid_refetch_while_backing_off() {
        let r = Record::default()
            .started(1_000, false)
            .succeeded("{}".into(), 1_000)
            .started(2_000, false)
            .failed(2_000);
        // Keys are still there, but the key server just failed: an unknown kid is refused at
        // once instead of waiting for a fetch the backoff forbids.
        assert!(r.has_keys() && r.backing_off(2_500));
        assert!(!r.refetch_allowed(2_500));
        assert!(!r.fetch_due(CACHE, 2_500, true));
        // After the backoff, one refetch may go.
        assert!(!r.backing_off(2_000 + FIRST_BACKOFF_MS));
        assert!(r.refetch_allowed(2_000 + FIRST_BACKOFF_MS));
        assert!(r.fetch_due(CACHE, 2_000 + FIRST_BACKOFF_MS, true));
        // A refetch wanted now is refused (once); wanted after the backoff, it goes.
        let mut wanted = true;
        assert_eq!(r.take_refetch(&mut wanted, 2_500), (false, true));
        assert!(!wanted);
        assert_eq!(r.take_refetch(&mut wanted, 2_500), (false, false));
        wanted = true;
        let later = 2_000 + FIRST_BACKOFF_MS;
        assert_eq!(r.take_refetch(&mut wanted, later), (true, false));
    }

    #[test]
    fn leases() {
        let l = Lease {
            owner: 7,
            until: 100,
        };
        assert_eq!(Lease::from_bytes(&l.to_bytes()), Some(l));
        assert_eq!(Lease::from_bytes(b"x"), None);
        assert!(Lease::takeable(None, 1, 0));
        assert!(Lease::takeable(Some(l), 7, 50));
        assert!(!Lease::takeable(Some(l), 8, 50));
        assert!(Lease::takeable(Some(l), 8, 100));
    }

    #[test]
    fn discovery_documents() {
        let iss = "https://idp.test";
        let ok = br#"{"issuer":"https://idp.test","jwks_uri":"https://idp.test/jwks","introspection_endpoint":"https://idp.test/introspect"}"#;
        let d = parse_discovery(ok, iss).unwrap();
        assert_eq!(d.jwks_uri, "https://idp.test/jwks");
        assert_eq!(
            d.introspection_endpoint.as_deref(),
            Some("https://idp.test/introspect")
        );
        for bad in [
            &br#"{"issuer":"https://idp.test/","jwks_uri":"https://idp.test/jwks"}"#[..],
            br#"{"issuer":"https://evil.test","jwks_uri":"https://idp.test/jwks"}"#,
            br#"{"jwks_uri":"https://idp.test/jwks"}"#,
            br#"{"issuer":"https://idp.test"}"#,
            br#"{"issuer":"https://idp.test","jwks_uri":"file:///etc/passwd"}"#,
            br#"{"issuer":"https://idp.test","jwks_uri":7}"#,
            b"[]",
            b"<html>",
        ] {
            assert!(parse_discovery(bad, iss).is_err());
        }
    }
}
