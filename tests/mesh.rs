//! Every deployment example under `envoy/` runs here for real, so none can rot.
//! - The Envoy bootstraps (`envoy/envoy.yaml` of `make run`, `envoy/compose/envoy.yaml` of the
//!   Docker walk-through) run as they are, with only addresses swapped for loopback ports and
//!   the module's path for the built one, in front of a recording upstream and
//!   node-oidc-provider under the issuer name the example expects; the README's walk-through is
//!   replayed against them.
//! - Istio's WasmPlugin and Envoy Gateway's EnvoyExtensionPolicy: each file's filter
//!   configuration is loaded into the real Envoy with the built module, with the cluster names
//!   the mesh would give (`outbound|80||idp.example.com`, `httproute/orders/idp-callout/rule/0`)
//!   pointing at a local stand-in for idp.example.com. Each case asserts what the example
//!   promises: open and guarded routes, identity headers, scopes, and (Istio) introspection with
//!   the configured client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine;

use serde_json::{json, Value};
use support::tokens::{jwks, now, Signer};
use support::{free_port, request_id, Envoy, Oidc, Reply, Scripted, Upstream};

const ISSUER: &str = "https://idp.example.com";

/// A stand-in for idp.example.com: discovery, keys, and an introspection endpoint that says
/// `partner-token` is active.
fn identity_provider(signer: &Signer) -> Scripted {
    let idp = Scripted::start();
    idp.set(
        "/.well-known/openid-configuration",
        Reply::ok(
            json!({"issuer": ISSUER, "jwks_uri": format!("{ISSUER}/jwks"),
                   "introspection_endpoint": format!("{ISSUER}/token/introspection")})
            .to_string(),
        ),
    );
    idp.set("/jwks", Reply::ok(jwks(&[signer.jwk()])));
    idp.set(
        "/token/introspection",
        Reply::ok(
            json!({"active": true, "client_id": "partner-7", "scope": "orders:read",
                   "exp": now() + 300})
            .to_string(),
        ),
    );
    idp
}

struct Example {
    envoy: Envoy,
    upstream: Upstream,
}

impl Example {
    fn start(config: &Value, cluster: &str, idp: &Scripted) -> Example {
        let wasm = support::wasm_module();
        let (envoy, upstream) =
            support::launch(&wasm, &config.to_string(), &[(cluster, idp.port)], 1);
        Example { envoy, upstream }
    }

    /// Status, and the upstream's copy of the request if it got there.
    fn get(&self, path: &str, token: Option<&str>) -> (u16, Option<support::Seen>) {
        let id = request_id();
        let auth = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
        let mut headers: Vec<(&str, &[u8])> = vec![("x-test-id", id.as_bytes())];
        if token.is_some() {
            headers.push(("authorization", auth.as_bytes()));
        }
        let r = self.envoy.get(path, &headers);
        (r.status, self.upstream.saw(&id))
    }

    /// The JWT provider's promises: an open health check, 401 without a token, the caller's
    /// identity upstream, 403 on the admin routes without the scope.
    fn keeps_the_jwt_promises(&self, signer: &Signer) {
        assert_eq!(self.get("/healthz", None).0, 200);
        let (status, seen) = self.get("/orders", None);
        assert_eq!(status, 401);
        assert!(seen.is_none());
        let claims = json!({"iss": ISSUER, "aud": "orders-api", "sub": "alice",
                            "iat": now(), "exp": now() + 300});
        let token = signer.token(&claims);
        let (status, seen) = self.get("/orders/7", Some(&token));
        assert_eq!(status, 200);
        let seen = seen.expect("the upstream got the allowed request");
        assert_eq!(seen.header("x-user"), Some("alice"));
        assert_eq!(seen.header("authorization"), None);
        let (status, seen) = self.get("/admin/users", Some(&token));
        assert_eq!(status, 403);
        assert!(seen.is_none());
        // max_lifetime: 86400s in both examples.
        let long = signer.token(&json!({"iss": ISSUER, "aud": "orders-api", "sub": "alice",
                                        "exp": now() + 30 * 86_400}));
        assert_eq!(self.get("/orders", Some(&long)).0, 401);
    }
}

/// An example bootstrap running as it is but for addresses (the listener and admin on free
/// loopback ports, cluster `demo_upstream` at a recording upstream, `demo_idp` at
/// node-oidc-provider calling itself the issuer the configuration expects), the module's path,
/// and what `adjust` changes; with its authorization server and that issuer.
fn run_bootstrap(path: &str, adjust: impl FnOnce(&mut Value)) -> (Example, Oidc, String) {
    let mut boot = support::yaml_documents(path).remove(0);
    let loopback =
        |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    let (port, admin) = (free_port(), free_port());
    boot["admin"]["address"] = loopback(admin);
    boot["static_resources"]["listeners"][0]["address"] = loopback(port);
    let filters = &mut boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"];
    let wasm = filters
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["name"] == "envoy.filters.http.wasm")
        .expect("the example has the Wasm filter");
    let config = &mut wasm["typed_config"]["config"];
    config["vm_config"]["code"]["local"]["filename"] =
        json!(support::wasm_module().display().to_string());
    let filter_config: Value =
        serde_json::from_str(config["configuration"]["value"].as_str().unwrap()).unwrap();
    let issuer = filter_config["providers"]["idp"]["issuer"]
        .as_str()
        .unwrap()
        .to_string();

    let upstream = Upstream::start();
    let idp = Oidc::start_as(free_port(), &issuer).unwrap();
    for cluster in boot["static_resources"]["clusters"].as_array_mut().unwrap() {
        let target = match cluster["name"].as_str().unwrap() {
            "demo_upstream" => upstream.port,
            "demo_idp" => idp.port,
            other => panic!("{path}: unexpected cluster {other}"),
        };
        cluster["type"] = json!("STATIC");
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] =
            loopback(target);
    }
    adjust(&mut boot);
    let envoy = Envoy::start(&boot, port, admin).unwrap_or_else(|log| panic!("{path}: {log}"));
    (Example { envoy, upstream }, idp, issuer)
}

/// Runs the Envoy bootstrap `path` (see `run_bootstrap`), then replays the README's
/// walk-through against it.
fn walk_through(path: &str) {
    let (example, idp, issuer) = run_bootstrap(path, |_| {});
    let issuer = issuer.as_str();
    let reader = idp.token("https://orders.example", "orders:read");
    let admin_token = idp.token("https://orders.example", "orders:read orders:admin");
    assert_eq!(example.get("/public/status", None).0, 200, "{path}");
    let (status, seen) = example.get("/orders", None);
    assert_eq!((status, seen.is_none()), (401, true), "{path}");
    let (status, seen) = example.get("/orders", Some(&reader));
    assert_eq!(status, 200, "{path}");
    let seen = seen.unwrap();
    assert_eq!(seen.header("x-client-id"), Some("gateway"), "{path}");
    assert_eq!(seen.header("authorization"), None, "{path}");
    let (status, seen) = example.get("/admin/settings", Some(&reader));
    assert_eq!((status, seen.is_none()), (403, true), "{path}");
    assert_eq!(
        example.get("/admin/settings", Some(&admin_token)).0,
        200,
        "{path}"
    );
    let (head, rest) = reader.split_once('.').unwrap();
    let signature = rest.split_once('.').unwrap().1;
    let forged_claims = json!({"iss": issuer, "aud": "orders-api", "sub": "admin",
                               "scope": "orders:admin", "exp": now() + 600});
    let forged = format!(
        "{head}.{}.{signature}",
        support::tokens::b64(forged_claims.to_string())
    );
    let (status, seen) = example.get("/orders", Some(&forged));
    assert_eq!((status, seen.is_none()), (401, true), "{path}");
    // /backend: the caller is validated, then the upstream gets the gateway's own token (client
    // orders-service), never the caller's.
    let (status, seen) = example.get("/backend/stock", None);
    assert_eq!((status, seen.is_none()), (401, true), "{path}");
    let (status, seen) = example.get("/backend/stock", Some(&reader));
    assert_eq!(status, 200, "{path}");
    let sent = seen.unwrap().header("authorization").unwrap().to_string();
    assert_ne!(sent, format!("Bearer {reader}"), "{path}");
    let payload = sent
        .strip_prefix("Bearer ")
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["client_id"], "orders-service", "{path}");
    assert_eq!(claims["scope"], "orders:admin", "{path}");
}

/// envoy/policy/envoy.yaml: the OAuth filter's `client_id` filter state decides Envoy's RBAC on
/// /reports and appears in the access log; optional authentication on /catalog; the method
/// selects the rule on /orders; CORS preflights pass.
fn policy_example() {
    let log = std::env::temp_dir().join(format!("policy-example-{}.log", free_port()));
    let (example, idp, _) = run_bootstrap("envoy/policy/envoy.yaml", |boot| {
        let hcm = &mut boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        hcm["access_log"][0]["typed_config"]["path"] = json!(log.display().to_string());
    });
    let resource = "https://orders.example";
    let gateway = idp.token(resource, "orders:read orders:admin");
    let service = idp.service_token(resource, "orders:admin");
    // RBAC after the OAuth filter: both pass it, only orders-service may read /reports.
    let (status, seen) = example.get("/reports/daily", Some(&gateway));
    assert_eq!((status, seen.is_none()), (403, true));
    let (status, seen) = example.get("/reports/daily", Some(&service));
    assert_eq!(status, 200);
    assert_eq!(seen.unwrap().header("x-client-id"), Some("orders-service"));
    let (status, seen) = example.get("/reports/daily", None);
    assert_eq!((status, seen.is_none()), (401, true));
    // Optional authentication: no token passes without identity, a bad one does not.
    let (status, seen) = example.get("/catalog/items", None);
    assert_eq!(status, 200);
    assert_eq!(seen.unwrap().header("x-client-id"), None);
    let (status, seen) = example.get("/catalog", Some(&gateway));
    assert_eq!(
        (status, seen.unwrap().header("x-client-id")),
        (200, Some("gateway"))
    );
    assert_eq!(example.get("/catalog/items", Some("not-a-token")).0, 401);
    // `/catalogue` is not under the separated prefix /catalog: the catch-all rule wants a token.
    assert_eq!(example.get("/catalogue", None).0, 401);
    // GET /orders wants orders:read; other methods fall to the catch-all (orders:admin).
    let reader = idp.token(resource, "orders:read");
    assert_eq!(example.get("/orders/7", Some(&reader)).0, 200);
    let id = request_id();
    let auth = format!("Bearer {reader}");
    let headers: [(&str, &[u8]); 2] = [
        ("x-test-id", id.as_bytes()),
        ("authorization", auth.as_bytes()),
    ];
    let r = support::request(example.envoy.port, "DELETE", "/orders/7", &headers, None);
    assert_eq!((r.status, example.upstream.saw(&id).is_none()), (403, true));
    // A CORS preflight reaches the upstream without a token.
    let id = request_id();
    let preflight: [(&str, &[u8]); 3] = [
        ("x-test-id", id.as_bytes()),
        ("origin", b"https://app.example"),
        ("access-control-request-method", b"DELETE"),
    ];
    let r = support::request(example.envoy.port, "OPTIONS", "/orders/7", &preflight, None);
    assert_eq!((r.status, example.upstream.saw(&id).is_some()), (200, true));
    // The access log names the caller of each request the OAuth filter accepted.
    let within = std::time::Duration::from_secs(5);
    let wrote = |text: &str| support::line_within(&log, within, |l| l.contains(text)).is_ok();
    assert!(wrote("\"GET /reports/daily\" 403 client=gateway"));
    assert!(wrote("\"GET /reports/daily\" 200 client=orders-service"));
    assert!(wrote("\"GET /catalog/items\" 200 client=-"));
    let _ = std::fs::remove_file(&log);
}

/// Every document is of an API version the CRDs of Envoy Gateway 1.8 to 1.9 (1.6 and 1.7 for
/// the Wasm resources) and Gateway API 1.4 to 1.6 (standard channel) serve: BackendTLSPolicy is
/// v1 there, v1alpha3 is gone.
fn assert_served_versions(docs: &[Value]) {
    for doc in docs {
        let served = match doc["kind"].as_str().unwrap() {
            "HTTPRoute" | "BackendTLSPolicy" => "gateway.networking.k8s.io/v1",
            "EnvoyProxy" | "EnvoyExtensionPolicy" | "Backend" => "gateway.envoyproxy.io/v1alpha1",
            other => panic!("unexpected kind {other}"),
        };
        assert_eq!(doc["apiVersion"], served, "{}", doc["kind"]);
    }
}

fn main() {
    let mut run = support::Runner::new();
    let signer = Signer::es256("idp-1");

    run.case("make_run_example_walk_through", || {
        walk_through("envoy/envoy.yaml");
    });
    run.case("docker_compose_example_walk_through", || {
        walk_through("envoy/compose/envoy.yaml");
    });

    run.case("policy_example_feeds_rbac_and_the_access_log", || {
        policy_example();
    });

    run.case("istio_wasmplugin_example_works_as_documented", || {
        let docs = support::yaml_documents("envoy/istio/wasmplugin.yaml");
        let plugin = &docs[0];
        assert_eq!(plugin["kind"], "WasmPlugin");
        assert_eq!(plugin["spec"]["failStrategy"], "FAIL_CLOSE");
        let config = &plugin["spec"]["pluginConfig"];
        let idp = identity_provider(&signer);
        let example = Example::start(config, "outbound|80||idp.example.com", &idp);
        example.keeps_the_jwt_promises(&signer);
        // The introspection provider, with the client the example configures.
        let (status, seen) = example.get("/partners/orders", Some("partner-token"));
        assert_eq!(status, 200);
        assert_eq!(seen.unwrap().header("x-partner"), Some("partner-7"));
        let call = idp.last("/token/introspection").unwrap();
        assert_eq!(
            call.header(":authority").or(call.header("host")),
            Some("idp.example.com")
        );
        assert!(call.header("authorization").unwrap().starts_with("Basic "));
        assert!(call.body.contains("token=partner-token"));
    });

    run.case(
        "istio_egress_example_names_the_cluster_the_plugin_calls",
        || {
            let docs = support::yaml_documents("envoy/istio/idp-egress.yaml");
            let entry = docs.iter().find(|d| d["kind"] == "ServiceEntry").unwrap();
            let rule = docs
                .iter()
                .find(|d| d["kind"] == "DestinationRule")
                .unwrap();
            let host = entry["spec"]["hosts"][0].as_str().unwrap();
            let port = &entry["spec"]["ports"][0];
            // outbound|PORT||HOST: the cluster wasmplugin.yaml uses.
            let cluster = format!("outbound|{}||{host}", port["number"]);
            let plugin = support::yaml_documents("envoy/istio/wasmplugin.yaml");
            let uses = plugin[0]["spec"]["pluginConfig"].to_string();
            assert!(uses.contains(&cluster), "{cluster} not in the WasmPlugin");
            assert_eq!(port["targetPort"], 443);
            assert_eq!(rule["spec"]["host"], host);
            let tls = &rule["spec"]["trafficPolicy"]["portLevelSettings"][0];
            assert_eq!(tls["port"]["number"], port["number"]);
            assert_eq!(tls["tls"]["mode"], "SIMPLE");
        },
    );

    run.case("envoy_gateway_policy_example_works_as_documented", || {
        let docs = support::yaml_documents("envoy/gateway/extension-policy.yaml");
        let policy = docs
            .iter()
            .find(|d| d["kind"] == "EnvoyExtensionPolicy")
            .unwrap();
        let wasm = &policy["spec"]["wasm"][0];
        assert_eq!(wasm["failOpen"], false);
        assert_served_versions(&docs);
        // The callout route's first rule is the cluster the configuration names.
        let route = docs.iter().find(|d| d["kind"] == "HTTPRoute").unwrap();
        let cluster = format!(
            "httproute/{}/{}/rule/0",
            route["metadata"]["namespace"].as_str().unwrap(),
            route["metadata"]["name"].as_str().unwrap()
        );
        assert!(wasm["config"].to_string().contains(&cluster));
        let idp = identity_provider(&signer);
        let example = Example::start(&wasm["config"], &cluster, &idp);
        example.keeps_the_jwt_promises(&signer);
    });

    run.case(
        "envoy_gateway_dynamic_module_example_works_as_documented",
        || {
            let docs = support::yaml_documents("envoy/gateway/dynamic-module.yaml");
            let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap();
            assert_served_versions(&docs);
            // The policy loads a module the EnvoyProxy allow-lists, by the filter's name, with
            // the configuration as an object (Envoy Gateway passes its JSON text as a
            // StringValue, which the filter parses).
            let module = &kind("EnvoyExtensionPolicy")["spec"]["dynamicModule"][0];
            let listed = &kind("EnvoyProxy")["spec"]["dynamicModules"][0];
            assert_eq!(module["name"], listed["name"]);
            assert_eq!(module["filterName"], "oauth_filter");
            let path = listed["source"]["local"]["path"].as_str().unwrap();
            assert!(path.ends_with("/liboauth_filter.so"), "{path}");
            assert!(module["config"].is_object());
            let route = kind("HTTPRoute");
            let cluster = format!(
                "httproute/{}/{}/rule/0",
                route["metadata"]["namespace"].as_str().unwrap(),
                route["metadata"]["name"].as_str().unwrap()
            );
            assert!(module["config"].to_string().contains(&cluster));
            // The same configuration in the real Envoy (the native build under make test-native).
            let idp = identity_provider(&signer);
            let example = Example::start(&module["config"], &cluster, &idp);
            example.keeps_the_jwt_promises(&signer);
        },
    );

    std::process::exit(run.finish());
}
