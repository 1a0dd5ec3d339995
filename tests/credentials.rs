//! Integration tests of the filter as an OAuth client (`upstream_credentials`, rules' `inject`)
//! in the real Envoy: tokens from node-oidc-provider's token endpoint (client credentials grant),
//! injected upstream in place of the caller's credentials, refreshed before they expire, shared
//! by the worker VMs, dropped when the upstream refuses them, and 503 when none can be had. A
//! scriptable token endpoint checks the request the filter sends and odd answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{
    bootstrap_with, free_port, request_id, Envoy, Oidc, Reply, Response, Scripted, Seen, Server,
};

/// An upstream that echoes like the recording one, but answers 401 `invalid_token` to the
/// tokens the test revoked.
struct Upstream {
    server: Server,
    revoked: Arc<Mutex<HashSet<String>>>,
}

impl Upstream {
    fn start() -> Upstream {
        let revoked: Arc<Mutex<HashSet<String>>> = Arc::default();
        let check = revoked.clone();
        let server = Server::start(
            0,
            Arc::new(move |seen: &Seen| {
                if seen.path.starts_with("/internal/plain401") {
                    return Reply::status(401, "{}")
                        .header("www-authenticate", r#"Bearer realm="orders""#);
                }
                let token = seen.header("authorization").unwrap_or("").to_string();
                if check.lock().unwrap().contains(&token) {
                    return Reply::status(401, r#"{"error":"invalid_token"}"#).header(
                        "www-authenticate",
                        r#"Bearer realm="orders", error="invalid_token", error_description="revoked""#,
                    );
                }
                Reply::ok("{}")
            }),
        );
        Upstream { server, revoked }
    }

    fn saw(&self, id: &str) -> Option<Seen> {
        self.server
            .seen()
            .into_iter()
            .find(|s| s.header("x-test-id") == Some(id))
    }

    fn revoke(&self, authorization: &str) {
        self.revoked
            .lock()
            .unwrap()
            .insert(authorization.to_string());
    }
}

struct Env {
    envoy: Envoy,
    upstream: Upstream,
}

impl Env {
    fn start(config: &Value, clusters: &[(&str, u16)], workers: u32) -> Env {
        let upstream = Upstream::start();
        let (port, admin) = (free_port(), free_port());
        let wasm = support::wasm_module();
        let boot = bootstrap_with(
            port,
            admin,
            upstream.server.port,
            &wasm,
            &config.to_string(),
            clusters,
        );
        let envoy = Envoy::start_workers(&boot, port, admin, workers)
            .unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"));
        Env { envoy, upstream }
    }

    /// Sends `headers` to `path`: the answer, and what the upstream received (if it did).
    fn call(&self, path: &str, headers: &[(&str, &str)]) -> (Response, Option<Seen>) {
        let id = request_id();
        let mut all: Vec<(&str, &[u8])> = vec![("x-test-id", id.as_bytes())];
        all.extend(headers.iter().map(|(n, v)| (*n, v.as_bytes())));
        let r = self.envoy.get(path, &all);
        (r, self.upstream.saw(&id))
    }

    /// The `Authorization` the upstream received for an allowed request.
    fn injected(&self, path: &str, headers: &[(&str, &str)]) -> String {
        let (r, seen) = self.call(path, headers);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let seen = seen.expect("the upstream did not receive an allowed request");
        assert_eq!(seen.header_count("authorization"), 1, "{seen:?}");
        seen.header("authorization").unwrap().to_string()
    }

    /// Asserts a 503 that never reached the upstream.
    fn unavailable(&self, path: &str) {
        let (r, seen) = self.call(path, &[("authorization", "Bearer caller-token")]);
        assert_eq!(r.status, 503, "{path}: {}", r.body);
        assert_eq!(r.json()["error"], "temporarily_unavailable", "{}", r.body);
        assert_eq!(
            r.json()["error_description"],
            "The credential for the upstream cannot be obtained"
        );
        assert_eq!(r.header("www-authenticate"), None);
        assert!(seen.is_none(), "{path}: the upstream received the request");
    }

    fn counter(&self, client: &str, what: &str) -> u64 {
        self.envoy
            .counter(&format!("oauth_filter.upstream.{client}.{what}"))
    }

    fn logged(&self, text: &str) -> bool {
        self.envoy.logs_within(text, Duration::from_secs(5))
    }
}

/// The claims of a JWT `Authorization: Bearer` value (not verified: the upstream's business).
fn claims(authorization: &str) -> Value {
    let token = authorization.strip_prefix("Bearer ").unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn client(uri: &str, cluster: &str, id: &str, secret: &str, extra: Value) -> Value {
    let mut c = json!({
        "token_endpoint": {"http_uri": {"uri": uri, "cluster": cluster, "timeout": "2s"}},
        "client_id": id, "client_secret": secret
    });
    if let (Value::Object(c), Value::Object(e)) = (&mut c, extra) {
        c.extend(e);
    }
    c
}

fn main() {
    let mut run = support::Runner::new();
    let oidc = Oidc::start().unwrap_or_else(|why| panic!("{why}"));
    let tokens = Scripted::start();
    let issuer = oidc.issuer.clone();
    let token_uri = format!("{issuer}/token");
    let good =
        json!({"access_token": "scripted-token-1", "token_type": "Bearer", "expires_in": "3600"});
    tokens.set("/token", Reply::ok(good.to_string()));
    tokens.set(
        "/mac",
        Reply::ok(r#"{"access_token":"m","token_type":"mac","expires_in":60}"#),
    );
    let orders = json!({"resource": "https://orders.example", "scopes": ["orders:read"]});
    let config = json!({
        "providers": {"corp": {
            "issuer": issuer, "audiences": ["orders-api"],
            "remote_jwks": {"http_uri": {"uri": format!("{issuer}/jwks"), "cluster": "idp", "timeout": "2s"}}
        }},
        "upstream_credentials": {
            "orders": client(&token_uri, "idp", "gateway", "gateway-secret", orders.clone()),
            "short": client(&token_uri, "idp", "gateway", "gateway-secret",
                json!({"resource": "https://short.example", "scopes": ["orders:read"], "refresh_margin": "60s"})),
            "post": client(&token_uri, "idp", "reporting", "reporting-secret",
                json!({"auth_method": "client_secret_post", "resource": "https://orders.example", "scopes": ["orders:admin"]})),
            "badsecret": client(&token_uri, "idp", "gateway", "not-the-gateway-secret", orders.clone()),
            "unreachable": client("http://tokens.test/token", "nowhere", "gateway", "gateway-secret", json!({})),
            "scripted": client("http://tokens.test/token", "tokens", "gate way", "s3cr:t",
                json!({"audience": "orders-api", "scopes": ["a", "b:c"]})),
            "mac": client("http://tokens.test/mac", "tokens", "gateway", "gateway-secret", json!({}))
        },
        "rules": [
            {"match": {"prefix": "/orders"}, "requires": {"provider_name": "corp", "scopes": ["orders:read"]}, "inject": "orders"},
            {"match": {"prefix": "/internal"}, "inject": "orders"},
            {"match": {"prefix": "/short"}, "inject": "short"},
            {"match": {"prefix": "/post"}, "inject": "post"},
            {"match": {"prefix": "/badsecret"}, "inject": "badsecret"},
            {"match": {"prefix": "/unreachable"}, "inject": "unreachable"},
            {"match": {"prefix": "/scripted"}, "inject": "scripted"},
            {"match": {"prefix": "/mac"}, "inject": "mac"},
            {"match": {"prefix": "/"}, "requires": {"provider_name": "corp"}}
        ]
    });
    let closed = free_port();
    let clusters = [
        ("idp", oidc.port),
        ("tokens", tokens.port),
        ("nowhere", closed),
    ];
    let env = Env::start(&config, &clusters, 2);
    let caller = oidc.token("https://orders.example", "orders:read");
    let caller_auth = format!("Bearer {caller}");

    run.case(
        "validates_the_caller_then_injects_the_gateway_token",
        || {
            let sent = env.injected("/orders/1", &[("authorization", &caller_auth)]);
            assert_ne!(sent, caller_auth, "the caller's token reached the upstream");
            let c = claims(&sent);
            assert_eq!(c["client_id"], "gateway");
            assert_eq!(c["aud"], "orders-api");
            assert_eq!(c["scope"], "orders:read");
            assert_eq!(c["iss"], issuer.as_str());
            // The same cached token for the next request.
            assert_eq!(
                env.injected("/orders/2", &[("authorization", &caller_auth)]),
                sent
            );
            assert!(env.counter("orders", "injections") >= 2);
        },
    );

    run.case(
        "a_caller_that_fails_validation_gets_no_upstream_credential",
        || {
            for headers in [vec![], vec![("authorization", "Bearer not-a-token")]] {
                let (r, seen) = env.call("/orders/1", &headers);
                assert_eq!(r.status, 401, "{}", r.body);
                assert!(seen.is_none(), "the upstream received a rejected request");
            }
            // Validated but without the rule's scope: 403, not forwarded either.
            let admin = oidc.token("https://orders.example", "orders:admin");
            let (r, seen) = env.call(
                "/orders/1",
                &[("authorization", &format!("Bearer {admin}"))],
            );
            assert_eq!(r.status, 403, "{}", r.body);
            assert!(seen.is_none());
        },
    );

    run.case("the_callers_credentials_never_reach_the_upstream", || {
        for auth in [
            "Basic dXNlcjpwYXNz",
            "Bearer caller-token",
            "Bearer a, Bearer b",
        ] {
            let sent = env.injected("/internal/x", &[("authorization", auth)]);
            assert!(sent.starts_with("Bearer ey"), "{sent}");
            assert!(
                !sent.contains("caller") && !sent.contains("Basic"),
                "{sent}"
            );
        }
        // Two Authorization headers: both replaced by the one injected.
        let sent = env.injected(
            "/internal/x",
            &[
                ("authorization", "Bearer one"),
                ("authorization", "Bearer two"),
            ],
        );
        assert_eq!(claims(&sent)["client_id"], "gateway");
    });

    run.case("client_secret_post_against_node_oidc_provider", || {
        let sent = env.injected("/post/x", &[]);
        let c = claims(&sent);
        assert_eq!(c["client_id"], "reporting");
        assert_eq!(c["scope"], "orders:admin");
    });

    run.case(
        "the_token_request_carries_the_configured_parameters",
        || {
            let sent = env.injected("/scripted", &[]);
            assert_eq!(sent, "Bearer scripted-token-1");
            let asked = tokens.last("/token").expect("no token request");
            assert_eq!(asked.method, "POST");
            assert_eq!(
                asked.header("content-type"),
                Some("application/x-www-form-urlencoded")
            );
            assert_eq!(
                asked.body,
                "grant_type=client_credentials&scope=a+b%3Ac&audience=orders-api"
            );
            let basic = base64::engine::general_purpose::STANDARD.encode("gate+way:s3cr%3At");
            assert_eq!(
                asked.header("authorization"),
                Some(format!("Basic {basic}").as_str())
            );
            // Cached: an hour-long token is fetched once, however many requests use it.
            for _ in 0..5 {
                env.injected("/scripted", &[]);
            }
            assert_eq!(tokens.hits("/token"), 1);
        },
    );

    run.case(
        "no_token_to_be_had_is_503_with_a_log_line_naming_client_and_answer",
        || {
            env.unavailable("/badsecret/x");
            assert!(env.logged("upstream client badsecret: token request to"));
            assert!(
                env.logged("error \"invalid_client\""),
                "{}",
                env.envoy.log()
            );
            env.unavailable("/unreachable/x");
            assert!(env.logged(
                "upstream client unreachable: token request to http://tokens.test/token failed"
            ));
            env.unavailable("/mac/x");
            assert!(env.logged("the token_type is \"mac\", not Bearer"));
            assert!(env.counter("badsecret", "token_fetch_failures") >= 1);
            // The secrets are never logged, in clear or in a Basic header.
            let log = env.envoy.log();
            for secret in [
                "not-the-gateway-secret",
                "gateway-secret",
                "reporting-secret",
                "s3cr",
            ] {
                assert!(!log.contains(secret), "a secret was logged");
            }
            let basic =
                base64::engine::general_purpose::STANDARD.encode("gateway:not-the-gateway-secret");
            assert!(!log.contains(&basic));
        },
    );

    run.case("refreshes_a_short_lived_token_before_it_expires", || {
        // https://short.example tokens live 6 s; with a 60 s margin the filter refreshes at
        // half the lifetime. Every request for 8 s must pass with an unexpired token.
        let first = env.injected("/short", &[]);
        let mut seen = vec![first.clone()];
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            let sent = env.injected("/short", &[]);
            let at = now_secs();
            let exp = claims(&sent)["exp"].as_f64().unwrap();
            assert!(at < exp, "a token was sent {} s after it expired", at - exp);
            if seen.last() != Some(&sent) {
                seen.push(sent);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(seen.len() >= 2, "never refreshed");
        // Each new token was obtained while the one before was still valid.
        for pair in seen.windows(2) {
            let (old, new) = (claims(&pair[0]), claims(&pair[1]));
            assert!(
                new["iat"].as_f64().unwrap() < old["exp"].as_f64().unwrap(),
                "refreshed only after expiry: {old} then {new}"
            );
        }
        assert!(env.counter("short", "token_refreshes") >= 1);
    });

    run.case(
        "an_upstream_refusal_drops_the_token_and_the_next_request_gets_a_new_one",
        || {
            let first = env.injected("/internal/a", &[]);
            let before = env.counter("orders", "token_fetches");
            env.upstream.revoke(&first);
            // The upstream's own answer goes back to the caller...
            let (r, seen) = env.call("/internal/b", &[]);
            assert_eq!(r.status, 401);
            assert_eq!(seen.unwrap().header("authorization"), Some(first.as_str()));
            // ...and the token is gone: the next request carries a new one (the other worker's
            // VM sees the drop at its next tick, within 100 ms).
            std::thread::sleep(Duration::from_millis(250));
            let second = env.injected("/internal/c", &[]);
            assert_ne!(second, first);
            assert_eq!(claims(&second)["client_id"], "gateway");
            assert_eq!(env.counter("orders", "tokens_dropped"), 1);
            assert_eq!(env.counter("orders", "token_fetches"), before + 1);
            assert!(env.logged("upstream client orders: the upstream refused its token"));
            // A 401 without invalid_token drops nothing.
            let (r, seen) = env.call("/internal/plain401", &[]);
            assert_eq!(r.status, 401);
            assert_eq!(seen.unwrap().header("authorization"), Some(second.as_str()));
            std::thread::sleep(Duration::from_millis(250));
            assert_eq!(env.injected("/internal/d", &[]), second);
            assert_eq!(env.counter("orders", "tokens_dropped"), 1);
        },
    );

    drop(env);

    run.case("concurrent_first_requests_share_one_token_fetch_across_workers", || {
        // A fresh Envoy (two workers, so three VMs) whose token endpoint takes a second: the
        // requests arriving meanwhile all wait for the one fetch.
        let slow = Scripted::start();
        slow.set(
            "/token",
            Reply::ok(r#"{"access_token":"slow-token","token_type":"Bearer","expires_in":600}"#)
                .after(Duration::from_millis(1500)),
        );
        let config = json!({
            "upstream_credentials": {
                "slow": client("http://tokens.test/token", "tokens", "gateway", "gateway-secret", json!({}))
            },
            "rules": [{"match": {"prefix": "/"}, "inject": "slow"}]
        });
        let env = Env::start(&config, &[("tokens", slow.port)], 2);
        let env = Arc::new(env);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let env = env.clone();
                std::thread::spawn(move || env.injected("/x", &[("authorization", "Bearer mine")]))
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), "Bearer slow-token");
        }
        assert_eq!(slow.hits("/token"), 1, "one fetch for every VM and request");
        assert_eq!(env.counter("slow", "token_fetches"), 1);
        assert_eq!(env.counter("slow", "injections"), 8);
    });

    // `exit` runs no destructors: stop the authorization server first.
    drop(oidc);
    std::process::exit(run.finish());
}
