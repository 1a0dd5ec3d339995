//! Runs the filter's decision natively on the tokens of the last `make bench`, for profiling
//! with callgrind: `valgrind --tool=callgrind target/release/examples/profile_decide 20000`
//! (hot: one token again and again) or with `COLD=1` (30,000 distinct tokens, signatures taken
//! as valid, as if the host had checked them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use oauth_filter::cache::{json_size, Secret, TokenKey, TtlCache};
use oauth_filter::config::{Config, KeySource};
use oauth_filter::decision::{decide, Cached, Decision, KeysNow, Known, Request};
use oauth_filter::jwt::keys::{Alg, Jwk};
use serde_json::{Map, Value};

struct View<'a> {
    config: &'a Config,
    cache: TtlCache<Map<String, Value>, TokenKey>,
}

impl Known for View<'_> {
    fn keys_now(&self, p: usize) -> KeysNow<'_> {
        match &self.config.providers[p].keys {
            KeySource::Local(keys) => KeysNow::Ready {
                keys,
                may_refetch: false,
            },
            _ => KeysNow::Pending,
        }
    }
    fn token_key(&self, provider: &str, token: &str) -> TokenKey {
        Secret(1, 2).key(provider, token)
    }
    fn verified(&self, key: &TokenKey) -> Option<&Map<String, Value>> {
        self.cache.peek(key, 0)
    }
    fn introspected(&self, _: usize, _: &str) -> Cached<'_> {
        Cached::Miss
    }
    fn check_signature(&self, _: Alg, _: &Jwk, _: &[u8], _: &[u8]) -> bool {
        true
    }
}

fn main() {
    let dir = std::path::Path::new("target/bench");
    let config = Config::from_json(&std::fs::read(dir.join("filter.json")).unwrap()).unwrap();
    let file = if std::env::var("COLD").is_ok() {
        "rs.txt"
    } else {
        "hot.txt"
    };
    let tokens: Vec<String> = std::fs::read_to_string(dir.join(file))
        .unwrap()
        .lines()
        .take(30_000)
        .map(|t| format!("Bearer {t}"))
        .collect();
    let mut headers: Vec<(&str, &[u8])> = vec![
        (":authority", b"127.0.0.1:10000"),
        (":path", b"/api/orders"),
        (":method", b"GET"),
        (":scheme", b"http"),
        ("authorization", b""),
        ("x-forwarded-proto", b"http"),
        ("x-request-id", b"2b7e1516-28ae-4d2a-8f09-cf4f3c1d2e3f"),
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut view = View {
        config: &config,
        cache: TtlCache::new(10_000, 16 << 20),
    };
    let n: usize = std::env::args()
        .nth(1)
        .map_or(10_000, |v| v.parse().unwrap());
    let mut allowed = 0;
    for i in 0..n {
        headers[4].1 = tokens[i % tokens.len()].as_bytes();
        let request = Request {
            path: "/api/orders",
            headers: &headers,
            now,
        };
        if let Decision::Allow(f) = decide(&config, &view, request) {
            allowed += 1;
            for v in f.verified {
                let size = json_size(&v.claims);
                view.cache.insert(v.key, v.claims, size, u64::MAX, 0);
            }
        }
    }
    println!("{allowed} of {n} allowed");
}
