//! `make run`: Envoy with the filter (envoy/envoy.yaml) in front of a demo upstream that echoes
//! what it receives, a demo authorization server (node-oidc-provider) whose keys the filter finds
//! by OIDC discovery, and ready-to-paste curl commands with real access tokens.
//! `make run DEMO=policy` runs envoy/policy/envoy.yaml instead (RBAC and the access log after
//! the filter) and prints its curls. `make run DEMO=mcp` runs envoy/mcp/envoy.yaml: the filter as
//! the OAuth resource server of an MCP server (tests/mcp/server.mjs), with the curls of the
//! 401 → metadata → token → 200 path and the MCP SDK client's command.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG: &str = "envoy/envoy.yaml";
const POLICY_CONFIG: &str = "envoy/policy/envoy.yaml";
const MCP_CONFIG: &str = "envoy/mcp/envoy.yaml";
const LISTEN: u16 = 10000;
const ADMIN: u16 = 9901;
const UPSTREAM: u16 = 8080;
const IDP: u16 = 9000;

fn main() {
    std::env::set_current_dir(support::root()).unwrap();
    let wasm = support::root().join("target/wasm32-wasip1/release/oauth_filter.wasm");
    assert!(wasm.exists(), "build the module first: make build");

    let demo = std::env::var("DEMO").unwrap_or_default();
    let mcp = demo == "mcp";
    let config = match demo.as_str() {
        "policy" => POLICY_CONFIG,
        "mcp" => MCP_CONFIG,
        _ => CONFIG,
    };
    let idp = support::Oidc::start_on(IDP).unwrap_or_else(|why| panic!("{why}"));
    let _upstream = (!mcp).then(|| support::Upstream::start_on(UPSTREAM));
    let _mcp_server = mcp.then(mcp_server);
    let mut envoy = start_envoy(config);
    match demo.as_str() {
        "policy" => print_policy_curls(&idp),
        "mcp" => print_mcp_curls(&idp),
        _ => print_curls(&idp),
    }
    let _ = envoy.wait();
}

/// Envoy with `config`, once it is ready.
fn start_envoy(config: &str) -> std::process::Child {
    let mut envoy = Command::new(support::envoy_bin())
        .args(["-c", config, "--concurrency", "1", "--disable-hot-restart"])
        .args(["--log-level", "warn", "--component-log-level", "wasm:info"])
        .stdin(Stdio::null())
        .spawn()
        .expect("start envoy");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !support::admin_get(ADMIN, "/ready").is_some_and(|b| b.contains("LIVE")) {
        if Instant::now() > deadline || envoy.try_wait().ok().flatten().is_some() {
            let _ = envoy.kill();
            panic!("Envoy did not start; see its log above");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    envoy
}

/// The curls of envoy/envoy.yaml, with fresh tokens.
fn print_curls(idp: &support::Oidc) {
    let reader = idp.token("https://orders.example", "orders:read");
    let admin = idp.token("https://orders.example", "orders:read orders:admin");
    let forged = {
        let (head, rest) = reader.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let payload = serde_json::json!({"iss": idp.issuer, "aud": "orders-api", "sub": "admin",
                                         "scope": "orders:admin", "exp": support::tokens::now() + 600});
        format!("{head}.{}.{sig}", support::tokens::b64(payload.to_string()))
    };
    let url = format!("http://127.0.0.1:{LISTEN}");
    println!(
        r#"
Envoy is listening on {url} with the OAuth filter; the demo upstream echoes what it receives.
The authorization server (node-oidc-provider) is {issuer}; counters: curl -s http://127.0.0.1:{ADMIN}/stats | grep oauth_filter

# Get an access token yourself (client credentials, a JWT for the orders API; valid 10 minutes):
curl -s -u gateway:gateway-secret -d grant_type=client_credentials -d resource=https://orders.example -d scope=orders:read {issuer}/token

# No token: 401 with a bare challenge
curl -i {url}/orders

# A valid token: 200; the upstream sees x-client-id and x-scopes, and no Authorization header
curl -i -H "Authorization: Bearer {reader}" {url}/orders

# The same token on an admin route: 403 insufficient_scope
curl -i -H "Authorization: Bearer {reader}" {url}/admin/settings

# A token with the admin scope: 200
curl -i -H "Authorization: Bearer {admin}" {url}/admin/settings

# A forged token (claims changed, signature kept): 401 invalid_token
curl -i -H "Authorization: Bearer {forged}" {url}/orders

# A public route: no token needed
curl -i {url}/public/status

# The filter as an OAuth client: the caller's token is checked, then the upstream receives the
# gateway's own token (client orders-service, scope orders:admin) instead of the caller's
curl -s -H "Authorization: Bearer {reader}" {url}/backend/stock

Press Ctrl-C to stop.
"#,
        issuer = idp.issuer
    );
}

/// The curls of envoy/policy/envoy.yaml; Envoy's access log (on its stdout) names each caller.
fn print_policy_curls(idp: &support::Oidc) {
    let resource = "https://orders.example";
    let gateway = idp.token(resource, "orders:read orders:admin");
    let service = idp.service_token(resource, "orders:admin");
    let url = format!("http://127.0.0.1:{LISTEN}");
    println!(
        r#"
Envoy is listening on {url}: the OAuth filter, then Envoy's RBAC filter reading the caller's
client_id from the filter state the OAuth filter sets; the access log below names each caller.

# /reports: both tokens pass the OAuth filter; RBAC lets only orders-service in (403 for gateway)
curl -i -H "Authorization: Bearer {gateway}" {url}/reports/daily
curl -i -H "Authorization: Bearer {service}" {url}/reports/daily

# /catalog: a token is optional (none passes, a bad one is refused)
curl -i {url}/catalog/items
curl -i -H "Authorization: Bearer not-a-token" {url}/catalog/items

# GET /orders wants orders:read; DELETE falls to the catch-all rule (orders:admin)
curl -i -H "Authorization: Bearer {gateway}" {url}/orders/7

# A CORS preflight reaches the upstream without a token
curl -i -X OPTIONS -H "Origin: https://app.example" -H "Access-Control-Request-Method: DELETE" {url}/orders/7

Press Ctrl-C to stop.
"#
    );
}

/// The demo MCP server (tests/mcp/server.mjs) on the upstream's port, killed on drop.
struct McpServer(std::process::Child);

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mcp_server() -> McpServer {
    let child = Command::new("node")
        .args(["server.mjs", &UPSTREAM.to_string()])
        .current_dir(support::root().join("tests/mcp"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the MCP server (make mcp)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", UPSTREAM)).is_err() {
        assert!(Instant::now() < deadline, "the MCP server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    McpServer(child)
}

/// The curls of envoy/mcp/envoy.yaml: what an MCP client does, step by step.
fn print_mcp_curls(idp: &support::Oidc) {
    let url = format!("http://127.0.0.1:{LISTEN}");
    println!(
        r#"
Envoy is listening on {url}: the OAuth filter is the resource server of the MCP server behind it.

# 1. No token: 401; the challenge names the resource's metadata (RFC 9728) and the scope
curl -i -X POST {url}/mcp

# 2. The metadata, served by the filter: the resource and its authorization server
curl -s {url}/.well-known/oauth-protected-resource/mcp

# 3. A token for that resource (RFC 8707), from that authorization server
TOKEN=$(curl -s -u mcp-agent:mcp-agent-secret -d grant_type=client_credentials \
  --data-urlencode resource={url}/mcp -d scope=mcp:tools {issuer}/token | sed 's/.*"access_token":"\([^"]*\)".*/\1/')

# 4. The MCP server answers (initialize); the filter told it the caller (x-client-id)
curl -i -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -H 'Accept: application/json, text/event-stream' -X POST {url}/mcp \
  -d '{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"2025-06-18","capabilities":{{}},"clientInfo":{{"name":"curl","version":"1"}}}}}}'

# The same with the official MCP client SDK, which discovers all of it from the 401:
(cd tests/mcp && node client.mjs {url}/mcp {issuer} mcp-agent mcp-agent-secret mcp:tools)

Press Ctrl-C to stop.
"#,
        issuer = idp.issuer
    );
}
