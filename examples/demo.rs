//! `make run`: Envoy with the filter (envoy/envoy.yaml) in front of a demo upstream that echoes
//! what it receives, a demo authorization server (node-oidc-provider) whose keys the filter finds
//! by OIDC discovery, and ready-to-paste curl commands with real access tokens.
//! `make run DEMO=policy` runs envoy/policy/envoy.yaml instead (RBAC and the access log after
//! the filter) and prints its curls.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG: &str = "envoy/envoy.yaml";
const POLICY_CONFIG: &str = "envoy/policy/envoy.yaml";
const LISTEN: u16 = 10000;
const ADMIN: u16 = 9901;
const UPSTREAM: u16 = 8080;
const IDP: u16 = 9000;

fn main() {
    std::env::set_current_dir(support::root()).unwrap();
    let wasm = support::root().join("target/wasm32-wasip1/release/oauth_filter.wasm");
    assert!(wasm.exists(), "build the module first: make build");

    let policy = std::env::var("DEMO").is_ok_and(|d| d == "policy");
    let config = if policy { POLICY_CONFIG } else { CONFIG };
    let idp = support::Oidc::start_on(IDP).unwrap_or_else(|why| panic!("{why}"));
    let _upstream = support::Upstream::start_on(UPSTREAM);
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

    if policy {
        print_policy_curls(&idp);
        let _ = envoy.wait();
        return;
    }
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
    let _ = envoy.wait();
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
