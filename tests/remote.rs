//! Integration tests of remote key sets in the real Envoy: remote JWKS, OIDC discovery against
//! node-oidc-provider and a scriptable key server, start-up waits, outages, rotation, unknown-kid
//! sprays, bad key material, and one fetch per refresh across worker VMs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::tokens::{good_claims, jwks, Signer};
use support::{request_id, Envoy, Oidc, Reply, Response, Scripted, Upstream};

const AUD: &str = "orders-api";

struct Env {
    envoy: Envoy,
    upstream: Upstream,
    keys: Scripted,
}

impl Env {
    /// Sends a bearer token; the response and whether the upstream received the request.
    fn call(&self, path: &str, token: &str) -> (Response, bool) {
        let id = request_id();
        let auth = format!("Bearer {token}");
        let r = self.envoy.get(
            path,
            &[
                ("x-test-id", id.as_bytes()),
                ("authorization", auth.as_bytes()),
            ],
        );
        (r, self.upstream.saw(&id).is_some())
    }

    fn allowed(&self, path: &str, token: &str) {
        let (r, reached) = self.call(path, token);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(
            reached,
            "{path}: the upstream did not receive an allowed request"
        );
    }

    fn unavailable(&self, path: &str, token: &str) {
        let (r, reached) = self.call(path, token);
        assert_eq!(r.status, 503, "{path}: {}", r.body);
        assert_eq!(r.header("www-authenticate"), None);
        assert_eq!(r.json()["error"], "temporarily_unavailable");
        assert!(
            !reached,
            "{path}: the upstream received a request that got 503"
        );
    }

    fn invalid_token(&self, path: &str, token: &str) {
        let (r, reached) = self.call(path, token);
        assert_eq!(r.status, 401, "{path}: {}", r.body);
        assert!(r
            .header("www-authenticate")
            .unwrap_or("")
            .contains("error=\"invalid_token\""));
        assert!(!reached);
    }

    /// Whether Envoy's log has (or gets, within two seconds: it is flushed every 50 ms) `text`.
    fn logged(&self, text: &str) -> bool {
        self.eventually(Duration::from_secs(2), || self.envoy.log().contains(text))
    }

    /// Waits up to `limit` for `what` to hold.
    fn eventually(&self, limit: Duration, what: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if what() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        what()
    }
}

fn token(signer: &Signer) -> String {
    signer.token(&good_claims("https://idp.test", AUD))
}

fn remote(path: &str, cache: &str) -> Value {
    json!({
        "audiences": [AUD],
        "remote_jwks": {"http_uri": {"uri": format!("http://keys.test{path}"), "cluster": "keys", "timeout": "2s"},
                        "cache_duration": cache},
        "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}]
    })
}

fn main() {
    let mut run = support::Runner::new();
    let wasm = support::wasm_module();
    let oidc = match Oidc::start() {
        Ok(oidc) => oidc,
        Err(why) => panic!("{why}"),
    };
    let keys = Scripted::start();
    let shared = Signer::es256("shared-1");
    let rot1 = Signer::es256("rot-1");
    let rot2 = Signer::rsa("RS256", "rot-2", 2048);
    let slow = Signer::eddsa("slow-1");
    let down = Signer::es256("down-1");
    let flaky = Signer::es384("flaky-1");
    let mixed_good = Signer::es256("good");
    let disco = Signer::es256("disco-1");
    let small = Signer::rsa("RS256", "small", 1024);

    keys.set("/shared/jwks", Reply::ok(jwks(&[shared.jwk()])));
    keys.set("/rotate/jwks", Reply::ok(jwks(&[rot1.jwk()])));
    keys.set(
        "/slow/jwks",
        Reply::ok(jwks(&[slow.jwk()])).after(Duration::from_millis(1500)),
    );
    keys.set("/down/jwks", Reply::status(500, "{}"));
    keys.set("/flaky/jwks", Reply::ok(jwks(&[flaky.jwk()])));
    keys.set(
        "/mixed/jwks",
        Reply::ok(jwks(&[
            small.jwk(),
            json!({"kty": "XYZ", "kid": "x"}),
            mixed_good.jwk(),
            Signer::es256("good").jwk(),
        ])),
    );
    keys.set("/garbage/jwks", Reply::ok("<html>not json</html>"));
    keys.set("/empty/jwks", Reply::ok(jwks(&[])));
    // Truncated: a JSON document cut short (with a matching length), and a connection closed
    // before the promised body ended.
    let whole = jwks(&[shared.jwk()]);
    keys.set("/cutjson/jwks", Reply::ok(&whole[..whole.len() / 2]));
    keys.set(
        "/cutconn/jwks",
        Reply::ok(whole.clone()).cut_after(whole.len() / 2),
    );
    keys.set(
        "/hang/jwks",
        Reply::ok(jwks(&[shared.jwk()])).after(Duration::from_secs(8)),
    );
    keys.set(
        "/huge/jwks",
        Reply::ok(format!(
            "{{\"keys\":[],\"pad\":\"{}\"}}",
            "x".repeat(600 * 1024)
        )),
    );
    let disco_issuer = keys.url("/disco");
    keys.set(
        "/disco/.well-known/openid-configuration",
        Reply::ok(json!({"issuer": disco_issuer, "jwks_uri": keys.url("/disco/keys")}).to_string()),
    );
    keys.set("/disco/keys", Reply::ok(jwks(&[disco.jwk()])));
    let bad_issuer = keys.url("/badisco");
    keys.set(
        "/badisco/.well-known/openid-configuration",
        Reply::ok(
            json!({"issuer": "https://someone-else.test", "jwks_uri": keys.url("/disco/keys")})
                .to_string(),
        ),
    );

    let names = [
        "shared", "rotate", "slow", "down", "flaky", "mixed", "garbage", "huge", "empty", "hang",
        "disco", "badisco", "cutjson", "cutconn",
    ];
    let rules: Vec<Value> = names
        .iter()
        .map(|p| json!({"match": {"prefix": format!("/{p}")}, "requires": {"provider_name": p}}))
        .chain([
            json!({"match": {"prefix": "/oidc/admin"}, "requires": {"provider_name": "oidc", "scopes": ["orders:admin"]}}),
            json!({"match": {"prefix": "/oidc"}, "requires": {"provider_name": "oidc"}}),
        ])
        .collect();
    let config = json!({
        "providers": {
            "shared": remote("/shared/jwks", "300s"),
            "rotate": remote("/rotate/jwks", "300s"),
            "slow": remote("/slow/jwks", "300s"),
            "down": remote("/down/jwks", "300s"),
            "flaky": remote("/flaky/jwks", "1s"),
            "mixed": remote("/mixed/jwks", "300s"),
            "garbage": remote("/garbage/jwks", "300s"),
            "huge": remote("/huge/jwks", "300s"),
            "empty": remote("/empty/jwks", "300s"),
            "cutjson": remote("/cutjson/jwks", "300s"),
            "cutconn": remote("/cutconn/jwks", "300s"),
            "hang": {
                "remote_jwks": {"http_uri": {"uri": "http://keys.test/hang/jwks", "cluster": "keys", "timeout": "0.5s"}}
            },
            "disco": {"issuer": disco_issuer, "discovery": {"http_uri": {"cluster": "keys", "timeout": "2s"}}},
            "badisco": {"issuer": bad_issuer, "discovery": {"http_uri": {"cluster": "keys"}}},
            "oidc": {
                "issuer": oidc.issuer, "audiences": [AUD],
                "discovery": {"http_uri": {"cluster": "oidc", "timeout": "2s"}},
                // node-oidc-provider's JWT access tokens follow RFC 9068 (typ at+jwt).
                "jwt_profile": "rfc9068",
                "claim_to_headers": [{"header_name": "x-client", "claim_name": "client_id"}]
            }
        },
        "rules": rules
    });

    // Two workers: three VMs (main thread and two workers) share the fetched keys.
    let (envoy, upstream) = support::launch(
        &wasm,
        &config.to_string(),
        &[("keys", keys.port), ("oidc", oidc.port)],
        2,
    );
    let env = Env {
        envoy,
        upstream,
        keys,
    };

    run.case("requests_before_the_first_keys_wait_and_pass", || {
        let started = Instant::now();
        env.allowed("/slow/orders", &token(&slow));
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "the request did not wait for the slow key server ({:?})",
            started.elapsed()
        );
        assert_eq!(env.keys.hits("/slow/jwks"), 1);
    });

    run.case("remote_jwks_token_passes_with_identity", || {
        let id = request_id();
        let auth = format!("Bearer {}", token(&shared));
        let r = env.envoy.get(
            "/shared/x",
            &[
                ("x-test-id", id.as_bytes()),
                ("authorization", auth.as_bytes()),
            ],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            env.upstream.saw(&id).unwrap().header("x-user"),
            Some("alice")
        );
    });

    run.case("one_fetch_per_refresh_across_worker_vms", || {
        // Many requests over several connections reach both workers; three VMs, one fetch.
        for _ in 0..20 {
            env.allowed("/shared/x", &token(&shared));
        }
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(env.keys.hits("/shared/jwks"), 1);
        let gauge = env.envoy.counter("oauth_filter.jwks.shared.keys");
        assert_eq!(gauge, 1, "keys-in-use gauge");
    });

    run.case("outage_at_start_up_is_503_then_recovers", || {
        env.unavailable("/down/x", &token(&down));
        assert!(env.logged("provider down: key fetch failed: HTTP 500; no keys yet"));
        env.keys.set("/down/jwks", Reply::ok(jwks(&[down.jwk()])));
        let recovered = env.eventually(Duration::from_secs(20), || {
            env.call("/down/x", &token(&down)).0.status == 200
        });
        assert!(
            recovered,
            "the provider did not recover after the key server came back"
        );
        env.allowed("/down/x", &token(&down));
    });

    run.case("outage_after_start_up_keeps_the_last_good_keys", || {
        env.allowed("/flaky/x", &token(&flaky));
        let before = env.keys.hits("/flaky/jwks");
        env.keys.set("/flaky/jwks", Reply::status(503, "{}"));
        // cache_duration 1s: refreshes fail from now on.
        assert!(
            env.eventually(Duration::from_secs(10), || env.keys.hits("/flaky/jwks")
                >= before + 2)
        );
        env.allowed("/flaky/x", &token(&flaky));
        // An unknown kid while the key server is failing: refused at once, not held for a
        // refetch the backoff does not allow (it used to wait ~4 s and get 503).
        let started = Instant::now();
        env.invalid_token("/flaky/x", &token(&Signer::es256("stranger")));
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "an unknown kid waited {:?} during the outage",
            started.elapsed()
        );
        assert!(
            env.logged("provider flaky: key fetch failed: HTTP 503; keeping the last good keys")
        );
        assert!(env.envoy.counter("oauth_filter.jwks.fetch_failure") >= 2);
    });

    run.case("rotation_unknown_kid_refetches_once_and_passes", || {
        env.allowed("/rotate/x", &token(&rot1));
        assert_eq!(env.keys.hits("/rotate/jwks"), 1);
        env.keys
            .set("/rotate/jwks", Reply::ok(jwks(&[rot1.jwk(), rot2.jwk()])));
        // The new kid is not in the cached set: the request waits for one refetch and passes.
        env.allowed("/rotate/x", &token(&rot2));
        assert_eq!(env.keys.hits("/rotate/jwks"), 2);
        env.allowed("/rotate/x", &token(&rot1));
    });

    run.case("unknown_kid_spray_is_rate_limited", || {
        let before = env.keys.hits("/rotate/jwks");
        for i in 0..30 {
            let stranger = Signer::hmac("HS256", &format!("spray-{i}"), &[i as u8; 32]);
            env.invalid_token("/rotate/x", &token(&stranger));
        }
        assert!(
            env.keys.hits("/rotate/jwks") <= before + 1,
            "the spray made the filter hammer the key server"
        );
    });

    run.case("bad_keys_are_skipped_with_a_log_line", || {
        env.allowed("/mixed/x", &token(&mixed_good));
        assert!(env.logged("provider mixed: JWKS key skipped: keys[0]: RSA modulus of 1024 bits"));
        assert!(env.logged("provider mixed: JWKS key skipped: keys[1]: unsupported \"kty\""));
        // The second key with kid "good" is skipped: the first one still verifies.
        assert!(env
            .logged("provider mixed: JWKS key skipped: keys[3]: kid repeats an earlier key's kid"));
        env.invalid_token("/mixed/x", &token(&small));
    });

    run.case("jwks_that_is_not_json_or_too_large_fails_closed", || {
        env.unavailable("/garbage/x", &token(&shared));
        env.unavailable("/huge/x", &token(&shared));
        assert!(env.logged("provider garbage: key fetch failed: the JWKS is not valid JSON"));
        assert!(env.logged("provider huge: key fetch failed: the answer is larger than"));
        env.unavailable("/empty/x", &token(&shared));
        assert!(env.logged("provider empty: key fetch failed: the JWKS has no usable signing key"));
    });

    run.case("truncated_jwks_fails_closed", || {
        env.unavailable("/cutjson/x", &token(&shared));
        env.unavailable("/cutconn/x", &token(&shared));
        assert!(env.logged("provider cutjson: key fetch failed: the JWKS is not valid JSON"));
        assert!(env.logged("provider cutconn: key fetch failed: "));
    });

    run.case("key_server_timeout_is_honoured", || {
        let started = Instant::now();
        env.unavailable("/hang/x", &token(&shared));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        assert!(env.logged("provider hang: key fetch failed: "));
    });

    run.case("discovery_finds_the_jwks", || {
        let t = disco.token(
            &json!({"iss": disco_issuer, "sub": "dora", "exp": support::tokens::now() + 60}),
        );
        env.allowed("/disco/x", &t);
        assert_eq!(env.keys.hits("/disco/.well-known/openid-configuration"), 1);
        assert_eq!(env.keys.hits("/disco/keys"), 1);
    });

    run.case("discovery_with_another_issuer_is_refused", || {
        let t = disco.token(&json!({"iss": bad_issuer, "exp": support::tokens::now() + 60}));
        env.unavailable("/badisco/x", &t);
        assert!(env.logged("provider badisco: key fetch failed: the discovery document's issuer is not the configured issuer"));
        assert_eq!(env.keys.hits("/disco/keys"), 1, "keys of a mismatched issuer are never fetched");
    });

    run.case("node_oidc_provider_token_passes_through_discovery", || {
        let t = oidc.token("https://orders.example", "orders:read");
        let id = request_id();
        let auth = format!("Bearer {t}");
        let r = env.envoy.get(
            "/oidc/orders",
            &[
                ("x-test-id", id.as_bytes()),
                ("authorization", auth.as_bytes()),
            ],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let seen = env.upstream.saw(&id).unwrap();
        assert_eq!(seen.header("x-client"), Some("gateway"));
        assert_eq!(seen.header("authorization"), None);
    });

    run.case("node_oidc_provider_scopes_decide_admin_routes", || {
        let reader = oidc.token("https://orders.example", "orders:read");
        let (r, reached) = env.call("/oidc/admin/x", &reader);
        assert_eq!(r.status, 403, "{}", r.body);
        assert!(!reached);
        let admin = oidc.token("https://orders.example", "orders:read orders:admin");
        env.allowed("/oidc/admin/x", &admin);
    });

    run.case("node_oidc_provider_tampered_token_is_refused", || {
        let t = oidc.token("https://orders.example", "orders:read");
        let (head, rest) = t.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged = support::tokens::b64(json!({"iss": oidc.issuer, "aud": AUD, "sub": "admin", "exp": support::tokens::now() + 60}).to_string());
        env.invalid_token("/oidc/x", &format!("{head}.{forged}.{sig}"));
    });

    run.case("no_token_ever_logged", || {
        let log = env.envoy.log();
        assert!(
            !log.contains("eyJ"),
            "something token-shaped is in the Envoy log"
        );
    });

    drop(env);
    drop(oidc);
    std::process::exit(run.finish());
}
