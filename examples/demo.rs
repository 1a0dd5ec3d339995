//! `make run`: Envoy with the filter (envoy/envoy.yaml) in front of a demo upstream that echoes
//! what it receives, plus ready-to-paste curl commands with freshly signed demo tokens.
//!
//! `cargo run --example demo -- token [SCOPE...]` prints one fresh demo token and exits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use rsa::pkcs8::DecodePrivateKey;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::tokens::{now, Private, Signer};

const KEY: &str = "envoy/demo/demo-signing-key.pem";
const CONFIG: &str = "envoy/envoy.yaml";
const LISTEN: u16 = 10000;
const ADMIN: u16 = 9901;
const UPSTREAM: u16 = 8080;

fn demo_signer() -> Signer {
    let pem = std::fs::read_to_string(support::root().join(KEY)).expect("demo key");
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).expect("demo key is PKCS#8 PEM");
    Signer {
        alg: "RS256",
        kid: Some("demo-rs256".into()),
        key: Private::Rsa(key),
    }
}

fn demo_token(signer: &Signer, sub: &str, scope: &str, exp: u64) -> String {
    signer.token(&json!({
        "iss": "https://demo-idp.local", "aud": "orders-api", "sub": sub,
        "scope": scope, "iat": now(), "exp": exp
    }))
}

fn main() {
    let signer = demo_signer();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("token") {
        let scope = args[1..].join(" ");
        println!("{}", demo_token(&signer, "alice", &scope, now() + 3600));
        return;
    }
    std::env::set_current_dir(support::root()).unwrap();
    let wasm = support::root().join("target/wasm32-wasip1/release/oauth_filter.wasm");
    assert!(wasm.exists(), "build the module first: make build");

    let _upstream = support::Upstream::start_on(UPSTREAM);
    let mut envoy = Command::new(support::envoy_bin())
        .args(["-c", CONFIG, "--concurrency", "1", "--disable-hot-restart"])
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

    let reader = demo_token(&signer, "alice", "orders:read", now() + 3600);
    let admin = demo_token(&signer, "root", "orders:read orders:admin", now() + 3600);
    let expired = demo_token(&signer, "alice", "orders:read", now() - 3600);
    let url = format!("http://127.0.0.1:{LISTEN}");
    println!(
        r#"
Envoy is listening on {url} with the OAuth filter; the demo upstream echoes what it receives.
Admin and counters: curl -s http://127.0.0.1:{ADMIN}/stats | grep oauth_filter

# No token: 401 with a bare challenge
curl -i {url}/orders

# A valid token: 200, the upstream sees x-user and x-scopes, and no Authorization header
curl -i -H "Authorization: Bearer {reader}" {url}/orders

# The same token on an admin route: 403 insufficient_scope
curl -i -H "Authorization: Bearer {reader}" {url}/admin/settings

# A token with the admin scope: 200
curl -i -H "Authorization: Bearer {admin}" {url}/admin/settings

# An expired token: 401 invalid_token
curl -i -H "Authorization: Bearer {expired}" {url}/orders

# A public route: no token needed
curl -i {url}/public/status

Press Ctrl-C to stop.
"#
    );
    let _ = envoy.wait();
}
