//! Integration tests of RFC 7662 introspection in the real Envoy: against node-oidc-provider
//! (opaque tokens, its introspection endpoint, revocation) and a scriptable server (failures,
//! malformed answers, client authentication, and call counts for the cache and coalescing).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::tokens::{good_claims, jwks, now, Signer};
use support::{request_id, Envoy, Oidc, Reply, Response, Scripted, Upstream};

struct Env {
    envoy: Envoy,
    upstream: Upstream,
    server: Scripted,
}

impl Env {
    fn call(&self, path: &str, token: &str) -> (Response, Option<support::Seen>) {
        let id = request_id();
        let auth = format!("Bearer {token}");
        let r = self.envoy.get(
            path,
            &[
                ("x-test-id", id.as_bytes()),
                ("authorization", auth.as_bytes()),
            ],
        );
        (r, self.upstream.saw(&id))
    }

    fn status(&self, path: &str, token: &str) -> u16 {
        self.call(path, token).0.status
    }

    fn allowed(&self, path: &str, token: &str) -> support::Seen {
        let (r, seen) = self.call(path, token);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        seen.expect("the upstream did not receive an allowed request")
    }

    fn denied(&self, path: &str, token: &str, status: u16, error: &str) {
        let (r, seen) = self.call(path, token);
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert_eq!(r.json()["error"], error, "{path}: {}", r.body);
        match status {
            401 | 403 => assert!(r
                .header("www-authenticate")
                .unwrap_or("")
                .contains(&format!("error=\"{error}\""))),
            _ => assert_eq!(r.header("www-authenticate"), None),
        }
        assert!(
            seen.is_none(),
            "{path}: the upstream received a rejected request"
        );
    }

    fn logged(&self, text: &str) -> bool {
        self.envoy.logs_within(text, Duration::from_secs(2))
    }
}

fn scripted(path: &str, extra: Value) -> Value {
    let mut intro = json!({
        "http_uri": {"uri": format!("http://introspect.test{path}"), "cluster": "server", "timeout": "2s"},
        "client_id": "gateway", "client_secret": "gateway-secret"
    });
    if let (Value::Object(i), Value::Object(e)) = (&mut intro, extra) {
        i.extend(e);
    }
    json!({
        "introspection": intro,
        "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}]
    })
}

fn active(sub: &str) -> String {
    json!({"active": true, "sub": sub, "scope": "orders:read", "exp": now() + 600}).to_string()
}

fn main() {
    let mut run = support::Runner::new();
    let wasm = support::wasm_module();
    let oidc = Oidc::start().unwrap_or_else(|why| panic!("{why}"));
    let server = Scripted::start();
    let signer = Signer::es256("both-1");

    server.set("/err500", Reply::status(500, "{}"));
    server.set(
        "/hang",
        Reply::ok(active("late")).after(Duration::from_secs(4)),
    );
    server.set("/garbage", Reply::ok("<html>"));
    let whole = active("cut");
    server.set("/cutjson", Reply::ok(&whole[..whole.len() - 2]));
    server.set(
        "/cutconn",
        Reply::ok(whole.clone()).cut_after(whole.len() / 2),
    );
    server.set(
        "/huge",
        Reply::ok(format!(
            "{{\"active\":true,\"pad\":\"{}\"}}",
            "x".repeat(100 * 1024)
        )),
    );
    server.set(
        "/strtrue",
        Reply::ok(r#"{"active":"true","sub":"mallory"}"#),
    );
    server.set(
        "/noactive",
        Reply::ok(r#"{"sub":"mallory","exp":4000000000}"#),
    );
    server.set(
        "/expired",
        Reply::ok(json!({"active": true, "sub": "old", "exp": now() - 300}).to_string()),
    );
    server.set("/count", Reply::ok(active("carol")));
    server.set(
        "/coalesce",
        Reply::ok(active("dave")).after(Duration::from_millis(800)),
    );
    server.set("/neg", Reply::ok(r#"{"active":false}"#));
    server.set("/basic", Reply::ok(active("erin")));
    server.set("/post", Reply::ok(active("frank")));
    server.set("/both", Reply::ok(active("opaque-user")));

    let idp_intro = |auth: &str| {
        json!({
            "issuer": oidc.issuer, "audiences": ["orders-api"],
            "introspection": {
                "http_uri": {"uri": format!("{}/token/introspection", oidc.issuer), "cluster": "oidc", "timeout": "2s"},
                "client_id": "gateway", "client_secret": "gateway-secret", "auth_method": auth,
                "token_type_hint": "access_token",
                "cache_duration": "2s", "negative_cache_duration": "1s"
            },
            "claim_to_headers": [{"header_name": "x-client", "claim_name": "client_id"},
                                 {"header_name": "x-scope", "claim_name": "scope"}]
        })
    };
    let mut both = scripted("/both", json!({}));
    both["local_jwks"] = json!({"inline_string": jwks(&[signer.jwk()])});
    let config = json!({
        "providers": {
            "idp": idp_intro("client_secret_basic"),
            "idppost": idp_intro("client_secret_post"),
            "err500": scripted("/err500", json!({})),
            "hang": scripted("/hang", json!({"http_uri": {"uri": "http://introspect.test/hang", "cluster": "server", "timeout": "0.5s"}})),
            "garbage": scripted("/garbage", json!({})),
            "huge": scripted("/huge", json!({})),
            "cutjson": scripted("/cutjson", json!({})),
            "cutconn": scripted("/cutconn", json!({})),
            "strtrue": scripted("/strtrue", json!({})),
            "noactive": scripted("/noactive", json!({})),
            "expired": scripted("/expired", json!({})),
            "count": scripted("/count", json!({})),
            "coalesce": scripted("/coalesce", json!({})),
            "neg": scripted("/neg", json!({"negative_cache_duration": "1s"})),
            "basic": scripted("/basic", json!({"client_id": "gate way", "client_secret": "s3cr:t/+"})),
            "post": scripted("/post", json!({"client_id": "gate way", "client_secret": "s3cr:t/+", "auth_method": "client_secret_post"})),
            "both": both
        },
        "rules": [
            {"match": {"prefix": "/idp/admin"}, "requires": {"provider_name": "idp", "scopes": ["orders:admin"]}},
            {"match": {"prefix": "/idppost"}, "requires": {"provider_name": "idppost"}},
            {"match": {"prefix": "/idp"}, "requires": {"provider_name": "idp"}},
            {"match": {"prefix": "/err500"}, "requires": {"provider_name": "err500"}},
            {"match": {"prefix": "/hang"}, "requires": {"provider_name": "hang"}},
            {"match": {"prefix": "/garbage"}, "requires": {"provider_name": "garbage"}},
            {"match": {"prefix": "/huge"}, "requires": {"provider_name": "huge"}},
            {"match": {"prefix": "/cutjson"}, "requires": {"provider_name": "cutjson"}},
            {"match": {"prefix": "/cutconn"}, "requires": {"provider_name": "cutconn"}},
            {"match": {"prefix": "/strtrue"}, "requires": {"provider_name": "strtrue"}},
            {"match": {"prefix": "/noactive"}, "requires": {"provider_name": "noactive"}},
            {"match": {"prefix": "/expired"}, "requires": {"provider_name": "expired"}},
            {"match": {"prefix": "/count"}, "requires": {"provider_name": "count"}},
            {"match": {"prefix": "/coalesce"}, "requires": {"provider_name": "coalesce"}},
            {"match": {"prefix": "/neg"}, "requires": {"provider_name": "neg"}},
            {"match": {"prefix": "/basic"}, "requires": {"provider_name": "basic"}},
            {"match": {"prefix": "/post"}, "requires": {"provider_name": "post"}},
            {"match": {"prefix": "/both"}, "requires": {"provider_name": "both"}}
        ]
    });
    let (envoy, upstream) = support::launch(
        &wasm,
        &config.to_string(),
        &[("server", server.port), ("oidc", oidc.port)],
        2,
    );
    let env = Env {
        envoy,
        upstream,
        server,
    };

    // ---- node-oidc-provider --------------------------------------------------------------------
    run.case(
        "opaque_token_from_node_oidc_provider_is_introspected",
        || {
            let t = oidc.token("https://opaque.example", "orders:read");
            assert!(!t.contains('.'), "expected an opaque token");
            let seen = env.allowed("/idp/orders", &t);
            assert_eq!(seen.header("x-client"), Some("gateway"));
            assert_eq!(seen.header("x-scope"), Some("orders:read"));
            assert_eq!(seen.header("authorization"), None);
        },
    );
    run.case(
        "client_secret_post_works_against_node_oidc_provider",
        || {
            let t = oidc.token("https://opaque.example", "orders:read");
            env.allowed("/idppost/orders", &t);
        },
    );
    run.case("introspected_scopes_decide_admin_routes", || {
        let reader = oidc.token("https://opaque.example", "orders:read");
        env.denied("/idp/admin/x", &reader, 403, "insufficient_scope");
        let admin = oidc.token("https://opaque.example", "orders:read orders:admin");
        env.allowed("/idp/admin/x", &admin);
    });
    run.case("unknown_opaque_token_is_inactive", || {
        env.denied("/idp/orders", "made-up-token-123", 401, "invalid_token");
    });
    run.case(
        "revoked_token_passes_until_the_cache_expires_then_fails",
        || {
            let t = oidc.token("https://opaque.example", "orders:read");
            env.allowed("/idp/orders", &t);
            let basic = base64::engine::general_purpose::STANDARD.encode("gateway:gateway-secret");
            let r = support::request(
                oidc.port,
                "POST",
                "/token/revocation",
                &[
                    ("authorization", format!("Basic {basic}").as_bytes()),
                    ("content-type", b"application/x-www-form-urlencoded"),
                ],
                Some(format!("token={t}").as_bytes()),
            );
            assert_eq!(r.status, 200, "revocation: {}", r.body);
            // The trade-off: a cached active answer stands until cache_duration (2s) ends.
            env.allowed("/idp/orders", &t);
            std::thread::sleep(Duration::from_millis(2300));
            env.denied("/idp/orders", &t, 401, "invalid_token");
        },
    );

    // ---- Failures fail closed ----------------------------------------------------------------
    run.case("introspection_500_is_503", || {
        env.denied("/err500/x", "tok-500", 503, "temporarily_unavailable");
        assert!(env.logged("provider err500: introspection failed: HTTP 500"));
    });
    run.case(
        "failures_are_counted_each_but_logged_once_per_window",
        || {
            let line = "provider err500: introspection failed: HTTP 500";
            let failures = "oauth_filter.introspection.failures";
            let before = env.envoy.counter(failures);
            for i in 0..40 {
                env.denied(
                    "/err500/x",
                    &format!("tok-flood-{i}"),
                    503,
                    "temporarily_unavailable",
                );
            }
            std::thread::sleep(Duration::from_millis(200));
            assert_eq!(env.envoy.counter(failures), before + 40);
            // One line per VM at most within the window (two workers here), not forty.
            let lines = env.envoy.log().matches(line).count();
            assert!(lines <= 3, "{lines} log lines for 41 failures");
        },
    );
    run.case("introspection_timeout_is_honoured_and_503", || {
        let started = Instant::now();
        env.denied("/hang/x", "tok-hang", 503, "temporarily_unavailable");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
    });
    run.case("introspection_garbage_is_503", || {
        env.denied("/garbage/x", "tok-garbage", 503, "temporarily_unavailable");
        assert!(
            env.logged("provider garbage: introspection failed: the answer is not a JSON object")
        );
    });
    run.case("introspection_answer_too_large_is_503", || {
        env.denied("/huge/x", "tok-huge", 503, "temporarily_unavailable");
        assert!(env.logged("provider huge: introspection failed: the answer is larger than"));
    });
    run.case("introspection_answer_truncated_is_503", || {
        env.denied("/cutjson/x", "tok-cutjson", 503, "temporarily_unavailable");
        env.denied("/cutconn/x", "tok-cutconn", 503, "temporarily_unavailable");
        assert!(
            env.logged("provider cutjson: introspection failed: the answer is not a JSON object")
        );
        assert!(env.logged("provider cutconn: introspection failed: "));
    });
    run.case("active_as_a_string_is_not_active", || {
        env.denied("/strtrue/x", "tok-str", 401, "invalid_token");
    });
    run.case("missing_active_is_not_active", || {
        env.denied("/noactive/x", "tok-none", 401, "invalid_token");
    });
    run.case("active_but_expired_is_refused", || {
        env.denied("/expired/x", "tok-exp", 401, "invalid_token");
    });

    // ---- Client authentication ------------------------------------------------------------------
    run.case("client_secret_basic_form_encodes_before_base64", || {
        env.allowed("/basic/x", "tok-basic");
        let seen = env.server.last("/basic").unwrap();
        assert_eq!(seen.method, "POST");
        assert_eq!(
            seen.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let basic = seen
            .header("authorization")
            .unwrap()
            .strip_prefix("Basic ")
            .unwrap()
            .to_string();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic)
            .unwrap();
        assert_eq!(decoded, b"gate+way:s3cr%3At%2F%2B");
        assert_eq!(seen.body, "token=tok-basic");
    });
    run.case("client_secret_post_puts_credentials_in_the_body", || {
        env.allowed("/post/x", "tok-post");
        let seen = env.server.last("/post").unwrap();
        assert_eq!(seen.header("authorization"), None);
        assert_eq!(
            seen.body,
            "token=tok-post&client_id=gate+way&client_secret=s3cr%3At%2F%2B"
        );
    });

    // ---- Cache and coalescing, counted at the server --------------------------------------------
    run.case("cache_hits_across_requests_and_worker_vms", || {
        for _ in 0..20 {
            assert_eq!(
                env.allowed("/count/x", "tok-count").header("x-user"),
                Some("carol")
            );
        }
        // 20 connections spread over two workers: one call in all (the VMs share answers).
        assert_eq!(env.server.hits("/count"), 1);
        assert!(env.envoy.counter("oauth_filter.introspection.cache_hits") >= 18);
    });
    run.case("concurrent_requests_for_one_token_share_a_call", || {
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..12)
                .map(|_| s.spawn(|| env.status("/coalesce/x", "tok-coalesce")))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        // One call per worker VM at most (requests on one VM wait for its call).
        let calls = env.server.hits("/coalesce");
        assert!(
            (1..=2).contains(&calls),
            "{calls} calls for 12 concurrent requests"
        );
    });
    run.case("inactive_answers_are_cached_briefly", || {
        for _ in 0..5 {
            env.denied("/neg/x", "tok-neg", 401, "invalid_token");
        }
        assert_eq!(env.server.hits("/neg"), 1);
        std::thread::sleep(Duration::from_millis(1200));
        env.denied("/neg/x", "tok-neg", 401, "invalid_token");
        assert_eq!(
            env.server.hits("/neg"),
            2,
            "the negative cache did not expire"
        );
    });

    // ---- JWTs locally, the rest by introspection ---------------------------------------------------
    run.case(
        "provider_with_keys_and_introspection_routes_by_token_shape",
        || {
            let jwt = signer.token(&good_claims("https://idp.test", "orders-api"));
            assert_eq!(env.allowed("/both/x", &jwt).header("x-user"), Some("alice"));
            assert_eq!(env.server.hits("/both"), 0, "a JWT was introspected");
            assert_eq!(
                env.allowed("/both/x", "opaque-both").header("x-user"),
                Some("opaque-user")
            );
            assert_eq!(env.server.hits("/both"), 1);
            // A forged JWT is refused locally, never handed to the (all-accepting) introspection.
            for sig in ["AAAA", "AA", "A"] {
                let forged = format!("{}.{sig}", jwt.rsplit_once('.').unwrap().0);
                let (r, seen) = env.call("/both/x", &forged);
                assert_eq!(r.status, 401, "signature {sig:?}: {}", r.body);
                assert!(seen.is_none());
            }
            assert_eq!(env.server.hits("/both"), 1);
        },
    );

    run.case("metrics_and_no_token_in_logs", || {
        assert!(env.envoy.counter("oauth_filter.introspection.calls") >= 10);
        assert!(env.envoy.counter("oauth_filter.introspection.failures") >= 4);
        assert!(env.envoy.counter("oauth_filter.introspection.cache_misses") >= 10);
        let log = env.envoy.log();
        for t in [
            "tok-500",
            "tok-garbage",
            "tok-count",
            "gateway-secret",
            "s3cr",
        ] {
            assert!(!log.contains(t), "{t} appears in the Envoy log");
        }
    });

    drop(env);
    drop(oidc);
    std::process::exit(run.finish());
}
