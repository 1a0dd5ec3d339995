//! Integration tests of protected resources (RFC 9728), step-up (RFC 9470) and the MCP flow, in
//! the real Envoy. First with hand-made tokens: the metadata documents the filter serves, the
//! defined answers for odd metadata paths and other methods, the challenges that name the
//! metadata, the resource's audience check, and the step-up challenges. Then with the real
//! thing: node-oidc-provider as the authorization server, an MCP server (the official SDK) as
//! the upstream, and the official MCP client SDK driving its own discovery through the filter;
//! also curl walking the same 401 → metadata → token → 200 path the README shows. Every case
//! asserts the status, the headers, and that nothing refused reached the upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::tokens::{good_claims, jwks, now, unb64, Signer};
use support::{free_port, Envoy, Oidc, Outcome, Upstream};

const REALM: &str = "tools";
const ISSUER: &str = "https://idp.example";
const TOOLS: &str = "https://api.example/mcp";
const TOOLS_METADATA: &str = "https://api.example/.well-known/oauth-protected-resource/mcp";
const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// Two resources behind one host, a step-up route, and a route that names no resource.
fn filter_config(signer: &Signer) -> String {
    let corp = |scopes: Value| json!({"provider_name": "corp", "scopes": scopes});
    json!({
        "realm": REALM,
        "protected_resources": {
            "tools": {"resource": TOOLS, "authorization_servers": [ISSUER],
                      "scopes_supported": ["tools:read", "tools:call"],
                      "bearer_methods_supported": ["header"], "resource_name": "Example tools"},
            "orders": {"resource": "https://api.example/orders", "authorization_servers": [ISSUER],
                       "audiences": ["orders-api"]}
        },
        "providers": {"corp": {
            "issuer": ISSUER, "audiences": ["api"],
            "local_jwks": {"inline_string": jwks(&[signer.jwk()])},
            "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}]
        }},
        "rules": [
            {"match": {"prefix": "/mcp/admin"}, "protected_resource": "tools", "requires": {
                "provider_name": "corp", "scopes": ["tools:call"],
                "acr_values": ["phrh", "phr"], "max_age": 300}},
            {"match": {"prefix": "/mcp"}, "protected_resource": "tools",
             "requires": corp(json!(["tools:read"]))},
            {"match": {"prefix": "/orders"}, "protected_resource": "orders",
             "requires": {"provider_name": "corp"}},
            {"match": {"prefix": "/"}, "requires": corp(json!([]))}
        ]
    })
    .to_string()
}

struct Env {
    envoy: Envoy,
    upstream: Upstream,
    signer: Signer,
}

impl Env {
    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Outcome {
        self.upstream
            .through(self.envoy.port, method, path, headers)
    }

    /// A GET of `path` with a token of these claims (`None`: no token).
    fn with(&self, path: &str, claims: Option<&Value>) -> Outcome {
        match claims {
            Some(c) => {
                let bearer = format!("Bearer {}", self.signer.token(c));
                self.send("GET", path, &[("authorization", &bearer)])
            }
            None => self.send("GET", path, &[]),
        }
    }
}

/// Refused by the filter with `status` and exactly this challenge (`None`: none at all); the
/// body's `error` is checked when `error` is given, and the upstream must not have seen it.
fn refused(o: &Outcome, status: u16, challenge: Option<&str>) {
    let r = &o.response;
    assert_eq!(r.status, status, "{}: {}", o.id, r.body);
    assert_eq!(r.header("www-authenticate"), challenge, "{}", o.id);
    assert!(o.seen.is_none(), "the upstream received a refused request");
}

/// A challenge of the tools resource: `Bearer realm="tools", …, resource_metadata="…"`.
fn tools_challenge(middle: &str) -> String {
    format!("Bearer realm=\"{REALM}\", {middle}resource_metadata=\"{TOOLS_METADATA}\"")
}

fn claims(aud: Value, scope: &str) -> Value {
    let mut c = good_claims(ISSUER, "x");
    c["aud"] = aud;
    c["scope"] = json!(scope);
    c
}

fn main() {
    let mut run = support::Runner::new();
    let wasm = support::wasm_module();
    let signer = Signer::es256("corp-1");
    let upstream = Upstream::start();
    let (port, admin) = (free_port(), free_port());
    let boot = support::bootstrap(port, admin, upstream.port, &wasm, &filter_config(&signer));
    let envoy = Envoy::start(&boot, port, admin).unwrap_or_else(|log| panic!("{log}"));
    let env = Env {
        envoy,
        upstream,
        signer,
    };
    run.case("metadata_documents_are_the_configured_ones", || {
        metadata_documents(&env)
    });
    run.case("metadata_paths_of_odd_forms", || odd_paths(&env));
    run.case("metadata_methods", || metadata_methods(&env));
    run.case("challenges_name_the_metadata_and_scopes", || {
        challenges(&env)
    });
    run.case("the_resource_sets_the_audience", || audiences(&env));
    run.case("step_up_challenges", || step_up(&env));
    run.case("step_up_claims_of_wrong_types_are_invalid", || {
        step_up_claims_of_wrong_types(&env)
    });
    run.case("metrics", || metrics(&env));
    run.case("nothing_refused_reached_the_upstream", || {
        // The upstream saw exactly the requests the filter let through.
        let seen = env.upstream.count();
        assert!(seen > 0);
        assert_eq!(env.envoy.counter("oauth_filter.allowed"), seen as u64);
    });
    drop(env);
    mcp_cases(&mut run);
    std::process::exit(run.finish());
}

fn metadata_documents(env: &Env) {
    // Host is api.test and X-Forwarded-Host names another: neither becomes the resource.
    let forwarded = [("x-forwarded-host", "evil.example")];
    let o = env.send("GET", &format!("{WELL_KNOWN}/mcp"), &forwarded);
    let r = &o.response;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=3600"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("www-authenticate"), None);
    let expected = json!({
        "resource": TOOLS, "authorization_servers": [ISSUER],
        "scopes_supported": ["tools:read", "tools:call"],
        "bearer_methods_supported": ["header"], "resource_name": "Example tools"
    });
    assert_eq!(r.json(), expected, "{}", r.body);
    assert!(o.seen.is_none(), "the document came from the upstream");
    // Another resource behind the same host has its own path and document.
    let orders = env.send("GET", &format!("{WELL_KNOWN}/orders"), &[]);
    assert_eq!(orders.response.status, 200);
    assert_eq!(
        orders.response.json(),
        json!({"resource": "https://api.example/orders", "authorization_servers": [ISSUER]})
    );
    // HEAD: the same status and headers, no body.
    let head = env.send("HEAD", &format!("{WELL_KNOWN}/mcp"), &[]);
    assert_eq!(head.response.status, 200);
    assert_eq!(
        head.response.header("cache-control"),
        Some("public, max-age=3600")
    );
    assert_eq!(head.response.body, "");
    assert!(head.seen.is_none());
}

/// Each odd form of a metadata path has one defined answer (README, "Protected resources"):
/// Envoy's path normalisation runs first (`..` resolved, slashes merged, `%2F` redirected),
/// then the filter compares the path byte for byte, without the query.
fn odd_paths(env: &Env) {
    let doc = |path: &str| env.send("GET", path, &[]);
    for path in [
        format!("{WELL_KNOWN}/mcp?x=1"),
        format!("{WELL_KNOWN}/x/../mcp"),
        format!("{WELL_KNOWN}//mcp"),
        "/.well-known/./oauth-protected-resource/mcp".to_string(),
        // Envoy decodes percent-encoded unreserved characters before the filter sees the path.
        format!("{WELL_KNOWN}/%6Dcp"),
    ] {
        let o = doc(&path);
        assert_eq!(o.response.status, 200, "{path}: {}", o.response.body);
        assert_eq!(o.response.json()["resource"], TOOLS, "{path}");
        assert!(o.seen.is_none());
    }
    // Not a document's path, but under the prefix: the filter's 404, never the upstream's.
    for path in [
        format!("{WELL_KNOWN}/mcp/"),
        format!("{WELL_KNOWN}/MCP"),
        format!("{WELL_KNOWN}/mcp%20"),
        format!("{WELL_KNOWN}/mcp/../../{}", "oauth-protected-resource/nope"),
        WELL_KNOWN.to_string(),
        format!("{WELL_KNOWN}x/mcp"),
    ] {
        let o = doc(&path);
        refused(&o, 404, None);
        assert_eq!(o.response.json()["error"], "not_found", "{path}");
        assert_eq!(o.response.header("cache-control"), Some("no-store"));
    }
    // An escaped slash: Envoy redirects to the unescaped path, which the filter then serves.
    let o = doc("/.well-known%2Foauth-protected-resource%2Fmcp");
    assert_eq!(o.response.status, 307, "{}", o.response.body);
    assert_eq!(
        o.response.header("location"),
        Some(&format!("{WELL_KNOWN}/mcp")[..])
    );
    assert!(o.seen.is_none());
    // Paths outside the prefix are the rules' business: here a token is required.
    let o = doc("/.well-known/OAUTH-protected-resource/mcp");
    refused(&o, 401, Some(&format!("Bearer realm=\"{REALM}\"")));
}

fn metadata_methods(env: &Env) {
    let path = format!("{WELL_KNOWN}/mcp");
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let o = env.send(method, &path, &[]);
        refused(&o, 405, None);
        assert_eq!(o.response.header("allow"), Some("GET, HEAD, OPTIONS"));
        assert_eq!(o.response.json()["error"], "method_not_allowed");
    }
    // A browser's preflight: answered here (a browser-based MCP client fetches the document).
    let preflight = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "GET"),
    ];
    let o = env.send("OPTIONS", &path, &preflight);
    refused(&o, 204, None);
    assert_eq!(o.response.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        o.response.header("access-control-allow-methods"),
        Some("GET, HEAD, OPTIONS")
    );
}

fn challenges(env: &Env) {
    let api = json!(TOOLS);
    // No token: the rule's scopes and the metadata, as MCP clients expect.
    let o = env.with("/mcp", None);
    refused(&o, 401, Some(&tools_challenge("scope=\"tools:read\", ")));
    assert_eq!(o.response.json()["error"], "missing_token");
    // An expired token: invalid_token, with the same hints.
    let mut expired = claims(api.clone(), "tools:read");
    expired["exp"] = json!(now() - 600);
    let o = env.with("/mcp", Some(&expired));
    let got = o.response.header("www-authenticate").unwrap_or("");
    assert!(got.starts_with(&format!(
        "Bearer realm=\"{REALM}\", error=\"invalid_token\""
    )));
    assert!(
        got.ends_with(&format!("resource_metadata=\"{TOOLS_METADATA}\"")),
        "{got}"
    );
    assert!(
        got.contains(", scope=\"tools:read\", resource_metadata="),
        "{got}"
    );
    assert!(o.seen.is_none());
    // A token without the scope: 403 naming the scopes needed, and the metadata.
    let o = env.with("/mcp/admin", Some(&claims(api.clone(), "tools:read")));
    let got = o
        .response
        .header("www-authenticate")
        .unwrap_or("")
        .to_string();
    assert_eq!(o.response.status, 403);
    assert!(got.contains("error=\"insufficient_scope\""), "{got}");
    assert!(got.ends_with(&format!(
        ", scope=\"tools:call\", resource_metadata=\"{TOOLS_METADATA}\""
    )));
    assert!(o.seen.is_none());
    // Two tokens: 400, with the metadata but no scope.
    let bearer = format!("Bearer {}", env.signer.token(&claims(api, "tools:read")));
    let two = [
        ("authorization", bearer.as_str()),
        ("authorization", bearer.as_str()),
    ];
    let o = env.send("GET", "/mcp", &two);
    let got = o
        .response
        .header("www-authenticate")
        .unwrap_or("")
        .to_string();
    assert_eq!(o.response.status, 400);
    assert!(
        got.ends_with(&format!("\", resource_metadata=\"{TOOLS_METADATA}\"")),
        "{got}"
    );
    assert!(!got.contains("scope="));
    // A rule that names no resource says nothing of one.
    refused(
        &env.with("/elsewhere", None),
        401,
        Some(&format!("Bearer realm=\"{REALM}\"")),
    );
}

fn audiences(env: &Env) {
    // The resource's audience, not the provider's, is what the rule accepts.
    let seen = env.with("/mcp/x", Some(&claims(json!(TOOLS), "tools:read")));
    assert_eq!(seen.allowed().header("x-user"), Some("alice"));
    let seen = env.with(
        "/mcp/x",
        Some(&claims(json!(["other", TOOLS]), "tools:read")),
    );
    seen.allowed();
    for aud in [
        json!("api"),
        json!("https://api.example/orders"),
        json!("orders-api"),
    ] {
        let o = env.with("/mcp/x", Some(&claims(aud.clone(), "tools:read")));
        assert_eq!(o.response.status, 401, "{aud}");
        let got = o.response.header("www-authenticate").unwrap_or("");
        assert!(got.contains("error=\"invalid_token\""), "{got}");
        assert!(got.contains("audience"), "{got}");
        assert!(o.seen.is_none());
    }
    // The orders resource configured its own audiences.
    env.with("/orders", Some(&claims(json!("orders-api"), "")))
        .allowed();
    let o = env.with("/orders", Some(&claims(json!(TOOLS), "")));
    assert_eq!(o.response.status, 401);
    assert!(o.seen.is_none());
    // A rule without a resource keeps the provider's audiences.
    env.with("/elsewhere", Some(&claims(json!("api"), "")))
        .allowed();
}

/// Claims with both scopes of /mcp/admin, this `acr` and `auth_time` (null: none at all).
fn user(acr: Value, auth_time: Value) -> Value {
    let mut c = claims(json!(TOOLS), "tools:read tools:call");
    c["acr"] = acr;
    c["auth_time"] = auth_time;
    c.as_object_mut().unwrap().retain(|_, v| !v.is_null());
    c
}

fn step_up(env: &Env) {
    let t = now();
    let seen = env.with("/mcp/admin", Some(&user(json!("phr"), json!(t - 10))));
    assert_eq!(seen.allowed().header("x-user"), Some("alice"));
    let cases = [
        (
            user(json!("pwd"), json!(t - 10)),
            "acr_values=\"phrh phr\", ",
        ),
        (user(json!("phrh"), json!(t - 1000)), "max_age=\"300\", "),
        (
            user(json!("pwd"), json!(t - 1000)),
            "acr_values=\"phrh phr\", max_age=\"300\", ",
        ),
        (user(json!("phr"), Value::Null), "max_age=\"300\", "),
    ];
    for (c, attributes) in cases {
        let o = env.with("/mcp/admin", Some(&c));
        assert_eq!(o.response.status, 401, "{c}");
        assert_eq!(
            o.response.json()["error"],
            "insufficient_user_authentication",
            "{c}: {}",
            o.response.body
        );
        let got = o.response.header("www-authenticate").unwrap_or("");
        let start = format!("Bearer realm=\"{REALM}\", error=\"insufficient_user_authentication\"");
        assert!(got.starts_with(&start), "{got}");
        let end =
            format!("\", scope=\"tools:call\", {attributes}resource_metadata=\"{TOOLS_METADATA}\"");
        assert!(got.ends_with(&end), "{got} should end with {end}");
        assert!(o.seen.is_none());
    }
    // Scopes come first: a token lacking both gets the 403.
    let mut weak = user(json!("pwd"), json!(t));
    weak["scope"] = json!("tools:read");
    assert_eq!(env.with("/mcp/admin", Some(&weak)).response.status, 403);
}

/// Claims of the wrong type make the token invalid, not too weak.
fn step_up_claims_of_wrong_types(env: &Env) {
    let t = now();
    for (c, why) in [
        (user(json!(["phr"]), json!(t)), "acr is not a string"),
        (user(json!(2), json!(t)), "acr is not a string"),
        (
            user(json!("phr"), json!(t.to_string())),
            "auth_time is not a number",
        ),
        (user(json!("phr"), json!([t])), "auth_time is not a number"),
        (
            user(json!("phr"), json!(t + 3600)),
            "auth_time is in the future",
        ),
    ] {
        let o = env.with("/mcp/admin", Some(&c));
        assert_eq!(o.response.status, 401, "{c}");
        let got = o.response.header("www-authenticate").unwrap_or("");
        assert!(
            got.contains("error=\"invalid_token\"") && got.contains(why),
            "{got}"
        );
        assert!(o.seen.is_none());
    }
}

fn metrics(env: &Env) {
    let e = &env.envoy;
    assert!(e.counter("oauth_filter.metadata.served") >= 7);
    assert!(e.counter("oauth_filter.metadata.refused") >= 10);
    assert!(e.counter("oauth_filter.denied.insufficient_user_authentication") >= 4);
}

// ---------------------------------------------------------------------------------------------
// The real thing: node-oidc-provider, an MCP server, the MCP client SDK, curl.

/// A node program of tests/mcp, killed on drop; its stdout lines are kept.
struct Node {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Node {
    fn spawn(args: &[&str]) -> Node {
        let dir = support::root().join("tests/mcp");
        assert!(
            dir.join("node_modules/@modelcontextprotocol/sdk").exists(),
            "the MCP SDK is not installed: run `make mcp`"
        );
        let mut child = Command::new("node")
            .args(args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let keep = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line);
            }
        });
        Node { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits up to `within` for a line starting with `prefix`.
    fn line_starting(&self, prefix: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(l) = self.lines().into_iter().find(|l| l.starts_with(prefix)) {
                return Some(l);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Waits for the program to exit (up to `within`) and gives its last line.
    fn finish(mut self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return self.lines().pop().unwrap_or_default();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node did not finish: {:?}", self.lines());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Mcp {
    oidc: Oidc,
    server: Node,
    envoy: Envoy,
    /// `http://127.0.0.1:PORT/mcp`: the resource, and where clients reach it (through Envoy).
    resource: String,
}

impl Mcp {
    /// What the MCP server received so far, one JSON object per request.
    fn received(&self) -> Vec<Value> {
        let lines = self.server.lines();
        lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// envoy/mcp/envoy.yaml as it is but for addresses: the listener and admin on free ports, its
/// clusters at the MCP server and node-oidc-provider, the resource and the issuer renamed to
/// where they really are (an MCP client accepts only a resource on the server's own origin).
fn example_bootstrap(port: u16, admin: u16, mcp_port: u16, oidc: &Oidc) -> Value {
    let mut boot = support::yaml_documents("envoy/mcp/envoy.yaml").remove(0);
    let loopback =
        |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    boot["admin"]["address"] = loopback(admin);
    let listener = &mut boot["static_resources"]["listeners"][0];
    listener["address"] = loopback(port);
    // The example's filter, with the same configuration, in the build under test.
    let filter = &mut listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0];
    let value = &filter["typed_config"]["config"]["configuration"]["value"];
    let mut config: Value = serde_json::from_str(value.as_str().unwrap()).unwrap();
    let resource = &mut config["protected_resources"]["mcp"];
    resource["resource"] = json!(format!("http://127.0.0.1:{port}/mcp"));
    resource["authorization_servers"] = json!([oidc.issuer]);
    config["providers"]["idp"]["issuer"] = json!(oidc.issuer);
    *filter = support::oauth_filter(&support::wasm_module(), &config.to_string());
    for cluster in boot["static_resources"]["clusters"].as_array_mut().unwrap() {
        let to = if cluster["name"] == "mcp_server" {
            mcp_port
        } else {
            oidc.port
        };
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] =
            loopback(to);
    }
    boot
}

fn start_mcp() -> Mcp {
    let oidc = Oidc::start().unwrap_or_else(|why| panic!("{why}"));
    let mcp_port = free_port();
    let server = Node::spawn(&["server.mjs", &mcp_port.to_string()]);
    assert!(server
        .line_starting("ready", Duration::from_secs(30))
        .is_some());
    let (port, admin) = (free_port(), free_port());
    let boot = example_bootstrap(port, admin, mcp_port, &oidc);
    let envoy = Envoy::start(&boot, port, admin).unwrap_or_else(|log| panic!("{log}"));
    Mcp {
        oidc,
        server,
        envoy,
        resource: format!("http://127.0.0.1:{port}/mcp"),
    }
}

fn mcp_cases(run: &mut support::Runner) {
    let mcp = start_mcp();
    run.case(
        "mcp_sdk_discovers_the_authorization_server_and_calls_a_tool",
        || sdk_flow(&mcp),
    );
    run.case("mcp_token_for_another_resource_is_refused", || {
        other_resources(&mcp)
    });
    run.case("curl_walks_401_metadata_token_200", || curl_walk(&mcp));
    run.case("mcp_server_saw_only_authenticated_requests", || {
        let received = mcp.received();
        assert!(received.len() >= 3, "{received:?}");
        for r in &received {
            assert_eq!(r["authorization"], false, "the token was forwarded: {r}");
            assert!(
                r["client"].is_string(),
                "an unauthenticated request got through: {r}"
            );
        }
    });
}

fn sdk_flow(mcp: &Mcp) {
    let issuer = &mcp.oidc.issuer;
    let client = ["mcp-agent", "mcp-agent-secret", "mcp:tools"];
    let mut args = vec!["client.mjs", &mcp.resource, issuer];
    args.extend(client);
    let out = Node::spawn(&args).finish(Duration::from_secs(60));
    let out: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("client: {out}"));
    assert_eq!(out["error"], Value::Null, "{out:#}");
    assert_eq!(out["tools"], json!(["whoami"]), "{out:#}");
    assert_eq!(
        out["whoami"], "mcp-agent",
        "the server saw another identity"
    );
    exchanges(mcp, &out);
    // The token is an RFC 9068 token for the resource.
    let access = out["token"].as_str().unwrap();
    let part = |i: usize| -> Value {
        serde_json::from_slice(&unb64(access.split('.').nth(i).unwrap())).unwrap()
    };
    assert_eq!(part(0)["typ"], "at+jwt");
    assert_eq!(part(1)["aud"], mcp.resource.as_str());
    assert_eq!(part(1)["client_id"], "mcp-agent");
}

/// The SDK's HTTP exchanges, in order: the filter's exact challenge, the metadata it named,
/// the authorization server's metadata, the token request for the resource, the retry.
fn exchanges(mcp: &Mcp, out: &Value) {
    let issuer = &mcp.oidc.issuer;
    let ex = out["exchanges"].as_array().unwrap();
    let metadata = format!(
        "http://127.0.0.1:{}/.well-known/oauth-protected-resource/mcp",
        mcp.envoy.port
    );
    // 1. The filter's challenge, exactly.
    assert_eq!(
        (ex[0]["method"].as_str(), ex[0]["status"].as_u64()),
        (Some("POST"), Some(401))
    );
    let challenge =
        format!("Bearer realm=\"mcp\", scope=\"mcp:tools\", resource_metadata=\"{metadata}\"");
    assert_eq!(ex[0]["www_authenticate"], challenge.as_str());
    // 2. The metadata the challenge named, 3. the authorization server's metadata.
    let at = |url: &str| {
        ex.iter()
            .position(|e| e["url"] == url && e["status"] == 200)
    };
    let found = at(&metadata).unwrap_or_else(|| panic!("no metadata fetch: {out:#}"));
    let discovered = ex
        .iter()
        .position(|e| {
            e["url"]
                .as_str()
                .is_some_and(|u| u.starts_with(&format!("{issuer}/.well-known/")))
                && e["status"] == 200
        })
        .unwrap_or_else(|| panic!("no discovery: {out:#}"));
    // 4. The token request, for this resource; 5. the retried request, accepted.
    let token = ex
        .iter()
        .position(|e| e["form"].is_string())
        .unwrap_or_else(|| panic!("no token request: {out:#}"));
    let form = ex[token]["form"].as_str().unwrap();
    assert!(form.contains("grant_type=client_credentials"), "{form}");
    let encoded = mcp.resource.replace(':', "%3A").replace('/', "%2F");
    assert!(form.contains(&format!("resource={encoded}")), "{form}");
    assert_eq!(ex[token]["status"], 200);
    assert!(found < discovered && discovered < token, "{out:#}");
    let after = &ex[token + 1];
    assert_eq!(
        (after["url"].as_str(), after["status"].as_u64()),
        (Some(&mcp.resource[..]), Some(200))
    );
}

/// An MCP `initialize` request with this token.
fn initialize(mcp: &Mcp, token: &str) -> support::Response {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "curl", "version": "1"}}})
    .to_string();
    let bearer = format!("Bearer {token}");
    let headers: [(&str, &[u8]); 3] = [
        ("authorization", bearer.as_bytes()),
        ("content-type", b"application/json"),
        ("accept", b"application/json, text/event-stream"),
    ];
    support::request(
        mcp.envoy.port,
        "POST",
        "/mcp",
        &headers,
        Some(body.as_bytes()),
    )
}

fn other_resources(mcp: &Mcp) {
    let before = mcp.received().len();
    // A token of the same authorization server, for another resource.
    let orders = mcp.oidc.token("https://orders.example", "orders:read");
    // And one for an MCP server on another port: same issuer, same scopes, another audience.
    let elsewhere = format!("http://127.0.0.1:{}/mcp", free_port());
    let client = ("mcp-agent", "mcp-agent-secret");
    let other_mcp = support::client_token(mcp.oidc.port, client, &elsewhere, "mcp:tools");
    for token in [orders, other_mcp] {
        let r = initialize(mcp, &token);
        assert_eq!(r.status, 401, "{}", r.body);
        let got = r.header("www-authenticate").unwrap_or("");
        assert!(
            got.contains("error=\"invalid_token\"") && got.contains("audience"),
            "{got}"
        );
        assert!(
            got.contains("resource_metadata=\"http://127.0.0.1:"),
            "{got}"
        );
    }
    assert_eq!(
        mcp.received().len(),
        before,
        "a refused request reached the MCP server"
    );
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-S", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl (apt-get install curl)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n")
}

/// The README's walk-through, with curl.
fn curl_walk(mcp: &Mcp) {
    let server = &mcp.resource;
    // 1. 401 with the metadata's URL.
    let first = curl(&["-X", "POST", server]);
    assert!(first.starts_with("HTTP/1.1 401"), "{first}");
    let url = first
        .lines()
        .find_map(|l| l.strip_prefix("www-authenticate: "))
        .and_then(|c| c.split("resource_metadata=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("{first}"))
        .to_string();
    // 2. The metadata names the resource and its authorization server.
    let metadata = curl(&[&url]);
    assert!(metadata.starts_with("HTTP/1.1 200"), "{metadata}");
    let doc: Value = serde_json::from_str(metadata.split("\n\n").nth(1).unwrap()).unwrap();
    assert_eq!(doc["resource"], server.as_str());
    assert_eq!(doc["authorization_servers"][0], mcp.oidc.issuer.as_str());
    // 3. A token for that resource from that server.
    let token_url = format!(
        "{}/token",
        doc["authorization_servers"][0].as_str().unwrap()
    );
    let token = curl(&[
        "-u",
        "mcp-agent:mcp-agent-secret",
        "-d",
        "grant_type=client_credentials",
        "--data-urlencode",
        &format!("resource={server}"),
        "-d",
        "scope=mcp:tools",
        &token_url,
    ]);
    let token: Value = serde_json::from_str(token.split("\n\n").last().unwrap()).unwrap();
    let access = token["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{token}"));
    // 4. The MCP server answers.
    let r = initialize(mcp, access);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("oauth-filter-demo-tools"), "{}", r.body);
}
