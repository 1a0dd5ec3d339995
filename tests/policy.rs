//! Integration tests of the policies operators write in `jwt_authn` and Istio, in the real Envoy
//! (two workers): requirement trees over several issuers, route matching (regex, separated
//! prefixes, case, methods through `:method`), CORS preflights, tokens in cookies, claim
//! conditions, the payload header, and claims as filter state read by Envoy's own RBAC filter
//! (placed after this one) and by a file access log. Also the interoperability fixes (a P-521
//! key with a short coordinate, an introspection answer without `iss`, `key_ops`, ROCA keys)
//! and the refusal of bad policy configurations. Every case asserts the status, the challenge,
//! the body, and what the upstream did or did not receive.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::tokens::{good_claims, jwks, now, Signer, WYCHEPROOF_ROCA_N};
use support::{free_port, request_id, Envoy, Outcome, Reply, Scripted, Upstream};

const REALM: &str = "policy";

struct Keys {
    corp: Signer,
    corp_521: Signer,
    /// Its JWK has `key_ops: ["encrypt"]`: it must never verify a token.
    encrypt_only: Signer,
    partner: Signer,
    fetched: Signer,
}

impl Keys {
    fn new() -> (Keys, Value) {
        let (corp_521, short_jwk) = Signer::es512_short_coordinate("corp-521");
        let keys = Keys {
            corp: Signer::es256("corp-1"),
            corp_521,
            encrypt_only: Signer::es256("enc"),
            partner: Signer::es256("partner-1"),
            fetched: Signer::es256("fetched-1"),
        };
        (keys, short_jwk)
    }
}

/// The filter's configuration: a provider per concern, a rule per feature.
fn filter_config(k: &Keys, short_521: &Value) -> String {
    let mut encrypt_only = k.encrypt_only.jwk();
    encrypt_only["key_ops"] = json!(["encrypt"]);
    let corp_keys = jwks(&[k.corp.jwk(), short_521.clone(), encrypt_only]);
    let introspection = |path: &str| {
        json!({"http_uri": {"uri": format!("http://idp.test{path}"), "cluster": "idp", "timeout": "2s"},
               "client_id": "gateway", "client_secret": "introspection-secret"})
    };
    let provider = |issuer: &str, extra: Value| {
        let mut p = json!({"issuer": issuer, "audiences": ["api"]});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        p
    };
    let any = |a: Value, b: Value| json!({"requires_any": {"requirements": [a, b]}});
    json!({
        "realm": REALM,
        "bypass_cors_preflight": true,
        "providers": {
            "corp": provider("https://corp", json!({
                "local_jwks": {"inline_string": corp_keys},
                "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}],
                "forward_payload_header": "x-jwt-payload",
                "claim_to_filter_state": [{"key": "oauth.sub", "claim_name": "sub"}]})),
            "partner": provider("https://partner", json!({
                "local_jwks": {"inline_string": jwks(&[k.partner.jwk()])},
                "from_headers": [{"name": "x-partner-token"}],
                "claim_to_headers": [{"header_name": "x-partner", "claim_name": "sub"}]})),
            "web": provider("https://corp", json!({
                "local_jwks": {"inline_string": jwks(&[k.corp.jwk()])},
                "from_cookies": ["session"],
                "claim_to_headers": [{"header_name": "x-web-user", "claim_name": "sub"}]})),
            "opaque": provider("https://corp", json!({
                "introspection": introspection("/introspect"),
                "from_headers": [{"name": "x-opaque-token"}],
                "claim_to_headers": [{"header_name": "x-opaque-user", "claim_name": "sub"}],
                "claim_to_filter_state": [{"key": "oauth.sub", "claim_name": "sub"}]})),
            "evil": provider("https://corp", json!({
                "introspection": introspection("/introspect-evil"),
                "from_headers": [{"name": "x-evil-token"}]})),
            "down": provider("https://down", json!({
                "remote_jwks": {"http_uri": {"uri": "http://idp.test/dead-jwks", "cluster": "idp", "timeout": "1s"}},
                "from_headers": [{"name": "x-down-token"}],
                "claim_to_headers": [{"header_name": "x-down-user", "claim_name": "sub"}]})),
            "profiled": provider("https://profiled", json!({
                "local_jwks": {"inline_string": jwks(&[k.corp.jwk()])},
                "jwt_profile": "rfc9068",
                "from_headers": [{"name": "x-profiled-token"}]})),
            "fetched": provider("https://fetched", json!({
                "remote_jwks": {"http_uri": {"uri": "http://idp.test/jwks", "cluster": "idp"}},
                "from_headers": [{"name": "x-fetched-token"}]}))
        },
        "rules": [
            {"match": {"prefix": "/rbac-opaque"}, "requires": {"provider_name": "opaque"}},
            {"match": {"prefix": "/rbac"}, "requires": {"provider_name": "corp"}},
            {"match": {"prefix": "/any"}, "requires": any(json!({"provider_name": "corp"}), json!({"provider_name": "partner"}))},
            {"match": {"prefix": "/mixed"}, "requires": any(json!({"provider_name": "opaque"}), json!({"provider_name": "corp"}))},
            {"match": {"prefix": "/all"}, "requires": {"requires_all": {"requirements": [
                {"provider_name": "corp"}, {"provider_name": "partner"}]}}},
            {"match": {"prefix": "/optional"}, "requires": any(json!({"provider_name": "corp"}), json!({"allow_missing": {}}))},
            {"match": {"prefix": "/lenient"}, "requires": {"allow_missing_or_failed": {}}},
            {"match": {"prefix": "/browser"}, "requires": any(json!({"provider_name": "corp"}), json!({"provider_name": "web"}))},
            {"match": {"prefix": "/down"}, "requires": {"provider_name": "down"}},
            {"match": {"prefix": "/opaque"}, "requires": {"provider_name": "opaque"}},
            {"match": {"prefix": "/evil"}, "requires": {"provider_name": "evil"}},
            {"match": {"prefix": "/fetched"}, "requires": {"provider_name": "fetched"}},
            {"match": {"prefix": "/profiled"}, "requires": {"provider_name": "profiled"}},
            {"match": {"safe_regex": {"regex": "/v[0-9]+/admin(/.*)?"}},
             "requires": {"provider_and_audiences": {"provider_name": "corp", "audiences": ["admin-api"]},
                          "claims": [{"claim_name": "realm_access.roles", "values": ["admin"]}]}},
            {"match": {"path_separated_prefix": "/reports"}, "requires": {"provider_name": "corp", "scopes": ["reports:read"]}},
            {"match": {"prefix": "/docs", "case_sensitive": false}},
            {"match": {"prefix": "/orders", "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
             "requires": {"provider_name": "corp", "scopes": ["orders:read"]}},
            {"match": {"prefix": "/orders", "headers": [{"name": ":method", "string_match": {"safe_regex": {"regex": "POST|PUT"}}}]},
             "requires": {"provider_name": "corp", "scopes": ["orders:write"]}},
            {"match": {"prefix": "/orders"}, "requires": {"provider_name": "corp", "scopes": ["orders:admin"]}},
            {"match": {"prefix": "/public"}},
            {"match": {"prefix": "/"}, "requires": {"provider_name": "corp"}}
        ]
    })
    .to_string()
}

/// The test bootstrap with Envoy's RBAC filter after this one (alice alone may use `/rbac*`,
/// by the filter state this filter sets) and a file access log that prints that state.
fn bootstrap(
    listen: u16,
    admin: u16,
    upstream: u16,
    idp: u16,
    wasm: &Path,
    config: &str,
    log: &Path,
) -> Value {
    let mut boot = support::bootstrap_with(listen, admin, upstream, wasm, config, &[("idp", idp)]);
    let hcm = &mut boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    let rbac_area = json!({"url_path": {"path": {"prefix": "/rbac"}}});
    let rbac = json!({"name": "envoy.filters.http.rbac", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
    "rules": {"action": "ALLOW", "policies": {
        "alice-only": {"permissions": [rbac_area],
                       "principals": [{"filter_state": {"key": "wasm.oauth.sub", "string_match": {"exact": "alice"}}}]},
        "elsewhere": {"permissions": [{"not_rule": rbac_area}], "principals": [{"any": true}]}
    }}}});
    hcm["http_filters"].as_array_mut().unwrap().insert(1, rbac);
    hcm["access_log"] = json!([{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": log,
        "log_format": {"text_format_source": {"inline_string":
            "%REQ(X-TEST-ID)% sub=%FILTER_STATE(wasm.oauth.sub:PLAIN)% code=%RESPONSE_CODE%\n"}}}}]);
    boot
}

struct Env {
    envoy: Envoy,
    upstream: Upstream,
    idp: Scripted,
    access_log: PathBuf,
}

impl Env {
    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Outcome {
        self.upstream
            .through(self.envoy.port, method, path, headers)
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Outcome {
        self.send("GET", path, headers)
    }

    fn bearer(&self, path: &str, token: &str) -> Outcome {
        self.get(path, &[("authorization", &format!("Bearer {token}"))])
    }

    /// The access log line of request `id`, once Envoy has written it.
    fn logged(&self, id: &str) -> String {
        let start = format!("{id} ");
        support::line_within(&self.access_log, Duration::from_secs(5), |l| {
            l.starts_with(&start)
        })
        .unwrap_or_else(|text| panic!("no access log line for {id}:\n{text}"))
    }
}

impl Outcome {
    /// Denied by this filter: `status`, a challenge starting with `challenge` (none for 503),
    /// the body's `error`, and nothing at the upstream. The challenge is returned.
    fn denied(&self, status: u16, error: &str) -> String {
        let r = &self.response;
        assert_eq!(r.status, status, "body: {}", r.body);
        assert!(
            self.seen.is_none(),
            "the upstream received a rejected request"
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(r.json()["error"], error, "body: {}", r.body);
        let challenge = r.header("www-authenticate").unwrap_or("").to_string();
        match (status, error) {
            (503, _) => assert_eq!(challenge, ""),
            (401, "missing_token") => assert_eq!(challenge, format!("Bearer realm=\"{REALM}\"")),
            _ => assert!(
                challenge.starts_with(&format!(
                    "Bearer realm=\"{REALM}\", error=\"{error}\", error_description=\""
                )),
                "{challenge}"
            ),
        }
        challenge
    }
}

fn claims(iss: &str, sub: &str) -> Value {
    let mut c = good_claims(iss, "api");
    c["sub"] = json!(sub);
    c
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn main() {
    let mut run = support::Runner::new();
    let wasm = support::wasm_module();
    let (keys, short_521) = Keys::new();
    let k = &keys;
    let idp = Scripted::start();
    idp.set("/dead-jwks", Reply::status(500, "{}"));
    let roca = json!({"kty": "RSA", "kid": "roca", "n": WYCHEPROOF_ROCA_N, "e": "AQAB"});
    idp.set("/jwks", Reply::ok(jwks(&[roca.clone(), k.fetched.jwk()])));
    // RFC 7662 answers: `iss` is optional; the configured endpoint vouches for the token.
    idp.set(
        "/introspect",
        Reply::ok(
            json!({"active": true, "sub": "alice", "aud": "api", "exp": now() + 600}).to_string(),
        ),
    );
    idp.set("/introspect-evil", Reply::ok(json!({"active": true, "sub": "eve", "aud": "api", "iss": "https://evil", "exp": now() + 600}).to_string()));
    let upstream = Upstream::start();
    let (port, admin) = (free_port(), free_port());
    let access_log = std::env::temp_dir().join(format!(
        "oauth-filter-policy-{}-{port}.log",
        std::process::id()
    ));
    let config = filter_config(k, &short_521);
    let boot = bootstrap(
        port,
        admin,
        upstream.port,
        idp.port,
        &wasm,
        &config,
        &access_log,
    );
    let envoy = match Envoy::start_workers(&boot, port, admin, 2) {
        Ok(envoy) => envoy,
        Err(log) => panic!("Envoy did not start:\n{log}"),
    };
    let env = Env {
        envoy,
        upstream,
        idp,
        access_log,
    };
    let corp = k.corp.token(&claims("https://corp", "alice"));
    let bob = k.corp.token(&claims("https://corp", "bob"));
    let partner = k.partner.token(&claims("https://partner", "svc"));

    // ---- Requirement trees ----------------------------------------------------------------------
    run.case("requires_any_accepts_a_token_of_either_issuer", || {
        let seen = env.bearer("/any/x", &corp).allowed().clone();
        assert_eq!(
            (seen.header("x-user"), seen.header("x-partner")),
            (Some("alice"), None)
        );
        assert_eq!(seen.header("authorization"), None);
        let seen = env
            .get("/any/x", &[("x-partner-token", &partner)])
            .allowed()
            .clone();
        assert_eq!(
            (seen.header("x-user"), seen.header("x-partner")),
            (None, Some("svc"))
        );
        assert_eq!(seen.header("x-partner-token"), None);
        let stranger = Signer::es256("corp-1").token(&claims("https://stranger", "mallory"));
        let challenge = env.bearer("/any/x", &stranger).denied(401, "invalid_token");
        assert!(challenge.contains("issuer is not accepted"), "{challenge}");
        env.get("/any/x", &[]).denied(401, "missing_token");
    });

    run.case("requires_any_with_an_introspection_provider", || {
        // The introspection provider comes first but finds no token: the JWT is not introspected.
        let calls = env.idp.hits("/introspect");
        let seen = env.bearer("/mixed", &corp).allowed().clone();
        assert_eq!(seen.header("x-user"), Some("alice"));
        assert_eq!(env.idp.hits("/introspect"), calls, "a JWT was introspected");
        let token = format!("opaque-{}", request_id());
        let seen = env
            .get("/mixed", &[("x-opaque-token", &token)])
            .allowed()
            .clone();
        assert_eq!(
            (seen.header("x-opaque-user"), seen.header("x-user")),
            (Some("alice"), None)
        );
        assert_eq!(env.idp.hits("/introspect"), calls + 1);
        env.get("/mixed", &[]).denied(401, "missing_token");
    });

    run.case("requires_all_needs_every_token", || {
        let o = env.get(
            "/all",
            &[
                ("authorization", &format!("Bearer {corp}")),
                ("x-partner-token", &partner),
            ],
        );
        let seen = o.allowed();
        assert_eq!(
            (seen.header("x-user"), seen.header("x-partner")),
            (Some("alice"), Some("svc"))
        );
        assert_eq!(
            (seen.header("authorization"), seen.header("x-partner-token")),
            (None, None)
        );
        env.bearer("/all", &corp).denied(401, "missing_token");
        let o = env.get(
            "/all",
            &[
                ("authorization", "Bearer x.y.z"),
                ("x-partner-token", &partner),
            ],
        );
        o.denied(401, "invalid_token");
    });

    run.case(
        "allow_missing_passes_without_a_token_never_with_a_bad_one",
        || {
            let seen = env
                .get("/optional", &[("x-user", "mallory")])
                .allowed()
                .clone();
            assert_eq!(
                seen.header("x-user"),
                None,
                "a forged identity header went through"
            );
            env.bearer("/optional", &format!("{corp}x"))
                .denied(401, "invalid_token");
            assert_eq!(
                env.bearer("/optional", &corp).allowed().header("x-user"),
                Some("alice")
            );
            assert!(env.envoy.counter("oauth_filter.anonymous") >= 1);
        },
    );

    run.case(
        "allow_missing_or_failed_passes_when_keys_are_unreachable",
        || {
            let down = k.corp.token(&claims("https://down", "dora"));
            // The provider's keys cannot be fetched (HTTP 500): a plain rule answers 503 ...
            env.get("/down", &[("x-down-token", &down)])
                .denied(503, "temporarily_unavailable");
            // ... allow_missing_or_failed lets the request through, without identity, token kept.
            let seen = env
                .get(
                    "/lenient",
                    &[("x-down-token", &down), ("x-down-user", "forged")],
                )
                .allowed()
                .clone();
            assert_eq!(seen.header("x-down-user"), None);
            assert_eq!(seen.header("x-down-token"), Some(down.as_str()));
            let seen = env
                .get("/lenient", &[("authorization", "Bearer not-a-jwt")])
                .allowed()
                .clone();
            assert_eq!(seen.header("x-user"), None);
            assert_eq!(
                env.bearer("/lenient", &corp).allowed().header("x-user"),
                Some("alice")
            );
        },
    );

    // ---- Route matching, leaf audiences and claims -------------------------------------------
    run.case(
        "regex_route_with_leaf_audiences_and_claim_conditions",
        || {
            let admin = |roles: Value| {
                let c = with(
                    good_claims("https://corp", "admin-api"),
                    "realm_access",
                    json!({"roles": roles}),
                );
                k.corp.token(&c)
            };
            env.bearer("/v2/admin/users", &admin(json!(["viewer", "admin"])))
                .allowed();
            let challenge = env
                .bearer("/v12/admin", &admin(json!(["viewer"])))
                .denied(403, "insufficient_scope");
            assert!(
                challenge.contains("lacks a claim") && !challenge.contains("scope=\""),
                "{challenge}"
            );
            // The leaf's audiences replace the provider's.
            let challenge = env.bearer("/v2/admin", &corp).denied(401, "invalid_token");
            assert!(challenge.contains("audience"), "{challenge}");
            // Not the regex's path (a full match): the catch-all rule, with the provider's audiences.
            env.bearer("/v2/administrator", &corp).allowed();
            // The query is never part of the path matched.
            env.get("/public?next=/v2/admin", &[]).allowed();
            env.get("/v2/admin?x=1", &[]).denied(401, "missing_token");
        },
    );

    run.case("separated_and_case_insensitive_prefixes", || {
        let challenge = env
            .bearer("/reports/q1", &corp)
            .denied(403, "insufficient_scope");
        assert!(challenge.ends_with("scope=\"reports:read\""), "{challenge}");
        let reader = k.corp.token(&with(
            claims("https://corp", "alice"),
            "scope",
            json!("reports:read"),
        ));
        env.bearer("/reports", &reader).allowed();
        // Not the same path segment: the catch-all rule.
        env.bearer("/reportsx", &corp).allowed();
        env.get("/reportsx", &[]).denied(401, "missing_token");
        env.get("/DOCS/intro", &[]).allowed();
        env.get("/docs", &[]).allowed();
    });

    run.case("methods_select_rules_through_the_method_header", || {
        let scoped = |scope: &str| {
            k.corp.token(&with(
                claims("https://corp", "alice"),
                "scope",
                json!(scope),
            ))
        };
        let (read, write) = (scoped("orders:read"), scoped("orders:write"));
        let auth = |t: &str| format!("Bearer {t}");
        env.send("GET", "/orders/7", &[("authorization", &auth(&read))])
            .allowed();
        let o = env.send("POST", "/orders", &[("authorization", &auth(&read))]);
        assert!(o
            .denied(403, "insufficient_scope")
            .ends_with("scope=\"orders:write\""));
        let seen = env
            .send("PUT", "/orders/7", &[("authorization", &auth(&write))])
            .allowed()
            .clone();
        assert_eq!(seen.method, "PUT");
        let o = env.send("DELETE", "/orders/7", &[("authorization", &auth(&write))]);
        assert!(o
            .denied(403, "insufficient_scope")
            .ends_with("scope=\"orders:admin\""));
    });

    run.case("cors_preflights_pass_without_a_token", || {
        let preflight = [
            ("origin", "https://app.test"),
            ("access-control-request-method", "POST"),
        ];
        let o = env.send("OPTIONS", "/any/x", &preflight);
        assert_eq!(o.allowed().method, "OPTIONS");
        env.send("OPTIONS", "/any/x", &[("origin", "https://app.test")])
            .denied(401, "missing_token");
        assert!(env.envoy.counter("oauth_filter.cors_preflight") >= 1);
    });

    // ---- Cookies, and credentials in two places -----------------------------------------------
    run.case("token_in_a_cookie_is_cut_from_the_cookie_header", || {
        let cookie = format!("theme=dark; session={corp}; lang=en");
        let seen = env
            .get("/browser", &[("cookie", &cookie)])
            .allowed()
            .clone();
        assert_eq!(seen.header("x-web-user"), Some("alice"));
        assert_eq!(seen.header("cookie"), Some("theme=dark; lang=en"));
        let seen = env
            .get("/browser", &[("cookie", &format!("session={corp}"))])
            .allowed()
            .clone();
        assert_eq!(seen.header("cookie"), None);
    });

    run.case("hostile_cookies_and_tokens_in_two_places", || {
        let two = [
            ("authorization", format!("Bearer {corp}")),
            ("cookie", format!("session={corp}")),
        ];
        let two: Vec<(&str, &str)> = two.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let challenge = env.get("/browser", &two).denied(400, "invalid_request");
        assert!(
            challenge.contains("more than one credential"),
            "{challenge}"
        );
        let many = vec![format!("session={corp}"); 50].join("; ");
        env.get("/browser", &[("cookie", &many)])
            .denied(400, "invalid_request");
        let huge = format!("session={}", "A".repeat(20 * 1024));
        let challenge = env
            .get("/browser", &[("cookie", &huge)])
            .denied(401, "invalid_token");
        assert!(challenge.contains("too large"), "{challenge}");
        env.get("/browser", &[("cookie", "session=a b")])
            .denied(400, "invalid_request");
    });

    // ---- Identity for what comes after the filter --------------------------------------------
    run.case("payload_header_carries_the_jwt_payload", || {
        let seen = env
            .get(
                "/api",
                &[
                    ("authorization", &format!("Bearer {corp}")),
                    ("x-jwt-payload", "forged"),
                ],
            )
            .allowed()
            .clone();
        assert_eq!(seen.header("x-jwt-payload"), corp.split('.').nth(1));
        assert_eq!(seen.header_count("x-jwt-payload"), 1);
        let seen = env
            .get("/public", &[("x-jwt-payload", "forged")])
            .allowed()
            .clone();
        assert_eq!(seen.header("x-jwt-payload"), None);
    });

    run.case("filter_state_feeds_envoy_rbac_and_the_access_log", || {
        let o = env.bearer("/rbac/report", &corp);
        o.allowed();
        assert_eq!(env.logged(&o.id), format!("{} sub=alice code=200", o.id));
        // bob passes this filter; Envoy's RBAC, reading the filter state it set, refuses him.
        let o = env.bearer("/rbac/report", &bob);
        assert_eq!(o.response.status, 403, "{}", o.response.body);
        assert!(
            o.response.body.contains("RBAC: access denied"),
            "{}",
            o.response.body
        );
        assert!(o.seen.is_none(), "RBAC let bob through");
        assert_eq!(env.logged(&o.id), format!("{} sub=bob code=403", o.id));
        let o = env.get("/public", &[]);
        o.allowed();
        assert_eq!(env.logged(&o.id), format!("{} sub=- code=200", o.id));
        // Without this filter's identity, RBAC refuses /rbac: the state cannot be forged.
        let o = env.get("/rbac", &[("authorization", "Bearer nope")]);
        o.denied(401, "invalid_token");
    });

    run.case(
        "filter_state_is_set_on_a_request_resumed_after_introspection",
        || {
            let calls = env.idp.hits("/introspect");
            let token = format!("opaque-{}", request_id());
            let o = env.get("/rbac-opaque", &[("x-opaque-token", &token)]);
            assert_eq!(o.allowed().header("x-opaque-user"), Some("alice"));
            assert_eq!(
                env.idp.hits("/introspect"),
                calls + 1,
                "the request did not wait for a call"
            );
            assert_eq!(env.logged(&o.id), format!("{} sub=alice code=200", o.id));
        },
    );

    // ---- Interoperability: others' test data -------------------------------------------------
    run.case(
        "introspection_answer_without_iss_is_accepted_another_iss_is_not",
        || {
            let seen = env
                .get("/opaque", &[("x-opaque-token", "opaque-no-iss")])
                .allowed()
                .clone();
            assert_eq!(seen.header("x-opaque-user"), Some("alice"));
            let challenge = env
                .get("/evil", &[("x-evil-token", "opaque-evil")])
                .denied(401, "invalid_token");
            assert!(challenge.contains("issuer is not accepted"), "{challenge}");
        },
    );

    run.case("jwt_profile_rfc9068_wants_at_jwt_and_its_claims", || {
        let mut at = k.corp.header();
        at["typ"] = json!("at+jwt");
        let full = with(
            with(
                claims("https://profiled", "alice"),
                "client_id",
                json!("app"),
            ),
            "jti",
            json!("j-1"),
        );
        let good = k.corp.token_with(&at, &full);
        env.get("/profiled", &[("x-profiled-token", &good)])
            .allowed();
        // The standard header says typ JWT.
        let plain = k.corp.token(&full);
        let challenge = env
            .get("/profiled", &[("x-profiled-token", &plain)])
            .denied(401, "invalid_token");
        assert!(
            challenge.contains("RFC 9068 JWT access token (typ)"),
            "{challenge}"
        );
        let mut no_jti = full.clone();
        no_jti.as_object_mut().unwrap().remove("jti");
        let token = k.corp.token_with(&at, &no_jti);
        let challenge = env
            .get("/profiled", &[("x-profiled-token", &token)])
            .denied(401, "invalid_token");
        assert!(
            challenge.contains("lacks a claim RFC 9068 requires"),
            "{challenge}"
        );
    });

    run.case(
        "p521_key_with_a_65_byte_coordinate_loads_and_verifies",
        || {
            let before = env.envoy.counter("oauth_filter.jwt.host_verifications");
            let t = k.corp_521.token(&claims("https://corp", "p521"));
            assert_eq!(
                env.bearer("/api", &t).allowed().header("x-user"),
                Some("p521")
            );
            // In Wasm, by Envoy's BoringSSL (the padded key reached the host); natively the
            // module verifies in process.
            if support::native_dir().is_none() {
                assert!(env.envoy.counter("oauth_filter.jwt.host_verifications") > before);
            }
        },
    );

    run.case("a_key_whose_key_ops_lack_verify_verifies_nothing", || {
        let t = k.encrypt_only.token(&claims("https://corp", "mallory"));
        let challenge = env.bearer("/api", &t).denied(401, "invalid_token");
        assert!(challenge.contains("No known key"), "{challenge}");
    });

    run.case("a_fetched_roca_key_is_skipped_with_a_log_line", || {
        assert!(
            env.envoy.logs_within(
                "provider fetched: JWKS key skipped: keys[0]: RSA modulus with the ROCA structure",
                Duration::from_secs(5)
            ),
            "{}",
            env.envoy.log()
        );
        let t = k.fetched.token(&claims("https://fetched", "fred"));
        env.get("/fetched", &[("x-fetched-token", &t)]).allowed();
        let posing = Signer::rsa("RS256", "roca", 2048).token(&claims("https://fetched", "eve"));
        let challenge = env
            .get("/fetched", &[("x-fetched-token", &posing)])
            .denied(401, "invalid_token");
        assert!(challenge.contains("No known key"), "{challenge}");
    });

    run.case("bad_policy_configurations_are_refused_naming_the_field", || {
        let base: Value = serde_json::from_str(&config).unwrap();
        let roca_jwks = jwks(std::slice::from_ref(&roca));
        let deep = format!(
            "{}{{\"provider_name\": \"corp\"}}{}",
            r#"{"requires_any": {"requirements": ["#.repeat(3000),
            r#", {"provider_name": "partner"}]}}"#.repeat(3000)
        );
        let cases: Vec<(String, String)> = vec![
            (set_rule(&base, json!({"match": {"prefix": "/"}, "requires": {"requires_some": {}}})),
             "rules[0].requires.requires_some: unknown field".into()),
            (set_rule(&base, json!({"match": {"safe_regex": {"regex": "(a)\\1"}}})),
             "rules[0].match.safe_regex.regex: is not a regular expression".into()),
            (set_rule(&base, json!({"match": {"prefix": "/"}, "requires": {"provider_name": "corp", "claims": [{"claim_name": "groups"}]}})),
             "rules[0].requires.claims[0].values: must list at least one value".into()),
            (with_provider_keys(&base, &roca_jwks),
             "providers.corp.local_jwks.inline_string: keys[0]: RSA modulus with the ROCA structure".into()),
            (set_rule_text(&base, &deep),
             format!("rules[0].requires{}.requires_any: is nested too deeply", ".requires_any.requirements[0]".repeat(8))),
        ];
        for (bad, expected) in cases {
            let (port, admin) = (free_port(), free_port());
            let boot = support::bootstrap_with(port, admin, env.upstream.port, &wasm, &bad, &[("idp", env.idp.port)]);
            let log = support::envoy_refuses(&boot, port, admin).unwrap();
            let line = format!("oauth-filter: configuration refused: {expected}");
            let found: Vec<&str> = log.lines().filter(|l| l.contains("configuration refused")).collect();
            assert!(found.len() == 1 && found[0].contains(&line), "{expected}:\n{}", found.join("\n"));
            assert!(!log.contains("panic"), "{log}");
        }
    });

    run.case("no_token_or_secret_reaches_the_log", || {
        let log = env.envoy.log();
        for secret in [
            corp.as_str(),
            bob.as_str(),
            partner.as_str(),
            "introspection-secret",
        ] {
            assert!(
                !log.contains(secret),
                "the Envoy log holds a token or secret"
            );
        }
    });

    let code = run.finish();
    let _ = std::fs::remove_file(&env.access_log);
    drop(env);
    std::process::exit(code);
}

/// `config` with its rules replaced by `rule` alone, as text.
fn set_rule(config: &Value, rule: Value) -> String {
    let mut c = config.clone();
    c["rules"] = json!([rule]);
    c.to_string()
}

/// `config` with one rule whose `requires` is the JSON text `requires` (too deep to build).
fn set_rule_text(config: &Value, requires: &str) -> String {
    let mut c = config.clone();
    c["rules"] = json!([]);
    let text = c.to_string();
    let rule = format!(r#"{{"match": {{"prefix": "/"}}, "requires": {requires}}}"#);
    text.replace(r#""rules":[]"#, &format!(r#""rules":[{rule}]"#))
}

/// `config` with provider corp's inline key set replaced.
fn with_provider_keys(config: &Value, keys: &str) -> String {
    let mut c = config.clone();
    c["providers"]["corp"]["local_jwks"]["inline_string"] = json!(keys);
    c.to_string()
}
