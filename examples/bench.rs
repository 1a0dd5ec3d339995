//! `make bench`: requests per second and latency of Envoy with and without this filter, and with
//! Envoy's native `jwt_authn`, measured with wrk on loopback in one invocation.
//!
//! Every setup runs the real Envoy (one worker, pinned to CPU 0) answering with a direct
//! response, and wrk (one thread, pinned to CPU 1). Before timing, a valid token must pass and a
//! bad one must fail. Setups are interleaved over rounds; the table shows each setup's median.
//! Then the filter's memory after one million distinct tokens.
//!
//! Environment: BENCH_SECONDS (default 5), BENCH_ROUNDS (default 3), BENCH_MEMORY_TOKENS
//! (default 1000000; 0 skips that part), BENCH_ONLY (run only the setups whose name contains one
//! of its comma-separated parts).
//!
//! With BENCH_INSTRUCTIONS=1 (`make bench-instructions`) it counts instead of timing: each setup
//! runs under callgrind, and the table gives the instructions Envoy (with the module) executes per
//! request. Those counts repeat to within a fraction of a percent whatever else the machine is
//! doing, where requests per second on a shared machine vary by 15% or more; they do not see
//! cache misses, branch mispredictions or system calls, so they complement the timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::tokens::{jwks, now, Signer};
use support::{free_port, Envoy, Reply, Scripted};

const COLD_TOKENS: usize = 30_000;
/// More than the verified-token cache's 10,000 entries: a cold count starts at a full cache.
const WARM_UP_TOKENS: usize = 12_000;

fn claims(jti: usize) -> Value {
    json!({"iss": "https://idp.test", "aud": "orders-api", "sub": "bench", "scope": "orders:read",
           "iat": now(), "exp": now() + 7200, "jti": jti.to_string()})
}

/// `filter` with a second issuer and the rules of a `jwt_authn` migration in front of the one
/// every request falls under: a regex rule and a separated prefix that do not match, then a
/// method matcher and a `requires_any` over the two issuers with a claim condition. What the
/// policy features cost a request, against the plain rule of the hot setup.
fn policy_config(filter: &Value, partner: &Signer) -> Value {
    let mut policy = filter.clone();
    policy["providers"]["partner"] = json!({
        "issuer": "https://partner.test", "audiences": ["orders-api"],
        "local_jwks": {"inline_string": jwks(&[partner.jwk()])}
    });
    policy["rules"] = json!([
        {"match": {"safe_regex": {"regex": "/v[0-9]+/admin(/.*)?"}},
         "requires": {"provider_name": "idp", "scopes": ["admin"]}},
        {"match": {"path_separated_prefix": "/internal"}, "requires": {"provider_name": "idp"}},
        {"match": {"prefix": "/", "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
         "requires": {"requires_any": {"requirements": [
            {"provider_name": "idp", "claims": [{"claim_name": "sub", "values": ["bench", "ops"]}]},
            {"provider_name": "partner"}]}}}
    ]);
    policy
}

/// `filter` with its one rule protecting a resource (RFC 9728): the metadata path check every
/// request passes through, and the resource's audiences and hints on the rule. What a protected
/// resource costs a request, against the plain rule of the hot setup.
fn resource_config(filter: &Value) -> Value {
    let mut protected = filter.clone();
    protected["protected_resources"] = json!({"api": {
        "resource": "https://api.test/orders", "authorization_servers": ["https://idp.test"],
        "scopes_supported": ["orders:read"], "audiences": ["orders-api"]}});
    protected["rules"][0]["protected_resource"] = json!("api");
    protected
}

/// The warm-up tokens of a cold setup's token file: `WARM_UP_TOKENS` others of the same key
/// (more than the verified-token cache holds), in `warm-NAME` beside it.
fn warm_up_path(tokens: &Path) -> PathBuf {
    let name = tokens
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
    tokens.with_file_name(format!("warm-{name}"))
}

fn warm_up_file(tokens: &Path, signer: &Signer) {
    let first = COLD_TOKENS;
    signed_file(&warm_up_path(tokens), signer, first..first + WARM_UP_TOKENS);
}

/// `count` distinct tokens of `signer`, signed on all cores, one per line in `path`.
fn token_file(path: &Path, signer: &Signer, count: usize) {
    signed_file(path, signer, 0..count);
}

/// The tokens of `signer` whose `jti` are `jtis`, signed on all cores, one per line in `path`.
fn signed_file(path: &Path, signer: &Signer, jtis: std::ops::Range<usize>) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunks: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let jtis = jtis.clone();
                s.spawn(move || {
                    jtis.skip(t)
                        .step_by(threads)
                        .map(|i| signer.token(&claims(i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    std::fs::write(path, chunks.concat().join("\n") + "\n").unwrap();
}

/// The DPoP setups' files beside `dir`'s others: a DPoP-bound token of `issuer` for the key of
/// `client`, and lines of that token with a fresh proof (`dpop.txt`, `warm-dpop.txt` for the
/// warm-up, `dpop-check.txt` for the check). Proofs are for `GET http://api.test/api/orders`.
fn dpop_files(dir: &Path, issuer: &Signer, client: &Signer) -> PathBuf {
    use oauth_filter::jwt::keys::{public_jwk, sha256_b64url};
    let jkt = public_jwk(client.jwk().as_object().unwrap()).unwrap().1;
    let mut bound = claims(0);
    bound["cnf"] = json!({ "jkt": jkt });
    let token = issuer.token(&bound);
    let ath = sha256_b64url(token.as_bytes());
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": client.jwk()});
    let lines = |range: std::ops::Range<usize>| -> String {
        let lines: Vec<String> = range
            .map(|i| {
                let claims = json!({"jti": format!("bench-{i}"), "htm": "GET",
                    "htu": "http://api.test/api/orders", "iat": now(), "ath": ath});
                format!("{token} {}", client.token_with(&header, &claims))
            })
            .collect();
        lines.join("\n") + "\n"
    };
    let path = dir.join("dpop.txt");
    std::fs::write(&path, lines(0..COLD_TOKENS)).unwrap();
    let warm = COLD_TOKENS..COLD_TOKENS + WARM_UP_TOKENS;
    std::fs::write(warm_up_path(&path), lines(warm)).unwrap();
    let end = COLD_TOKENS + WARM_UP_TOKENS;
    std::fs::write(dir.join("dpop-check.txt"), lines(end..end + 1)).unwrap();
    path
}

/// How wrk's scripts send the requests they formatted up front: in turn, round and round.
const LUA_CYCLE: &str = r#"local i = 0
request = function()
  i = i + 1
  if i > #requests then i = 1 end
  return requests[i]
end
"#;

/// wrk's script for the bearer setups (before [`LUA_CYCLE`]): each line is a token.
const BEARER_REQUESTS: &str = r#"-- Every request is formatted once, up front: the generator must cost the same for all setups.
local requests = {}
init = function(args)
  for line in io.lines(os.getenv("BENCH_TOKENS")) do
    requests[#requests + 1] = wrk.format("GET", nil, {["Authorization"] = "Bearer " .. line})
  end
end
"#;

/// wrk's script for the DPoP setups (before [`LUA_CYCLE`]): each line is a token and its proof.
const DPOP_REQUESTS: &str = r#"local requests = {}
init = function(args)
  for line in io.lines(os.getenv("BENCH_TOKENS")) do
    local token, proof = line:match("^(%S+) (%S+)$")
    requests[#requests + 1] = wrk.format("GET", nil,
      {["Host"] = "api.test", ["Authorization"] = "DPoP " .. token, ["DPoP"] = proof})
  end
end
"#;

/// The Wasm filter of module `wasm`, with `config` as its plugin configuration.
fn wasm_filter(wasm: &Path, config: &str) -> Value {
    json!({"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"name": "oauth_filter", "root_id": "oauth_filter",
            "vm_config": {"vm_id": "oauth_filter", "runtime": "envoy.wasm.runtime.v8",
                          "code": {"local": {"filename": wasm}}},
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                              "value": config}}}})
}

/// The native build (liboauth_filter.so, `make native`) with `config`: Envoy finds it through
/// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`, which the harness sets from `OAUTH_FILTER_NATIVE`.
fn native_filter(config: &str) -> Value {
    json!({"name": "envoy.filters.http.dynamic_modules", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
        "dynamic_module_config": {"name": "oauth_filter"},
        "filter_name": "oauth_filter",
        "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config}}})
}

/// Envoy's `jwt_authn` doing what the filter does in the same setups: issuer and audience
/// checks, the token removed before the upstream (its default), `sub` copied into `x-user`.
fn jwt_authn(jwks_text: &str, cache: bool) -> Value {
    let mut provider = json!({"issuer": "https://idp.test", "audiences": ["orders-api"],
                              "local_jwks": {"inline_string": jwks_text},
                              "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}]});
    if cache {
        provider["jwt_cache_config"] = json!({"jwt_cache_size": 1000});
    }
    json!({"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"idp": provider},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]}})
}

/// The ratios reported: label, setup, baseline setup (names of setups), target.
const RATIOS: [(&str, &str, &str, f64); 21] = [
    (
        "RS256 cold / jwt_authn without cache",
        COLD,
        AUTHN_NOCACHE,
        1.0,
    ),
    ("RS256 hot / jwt_authn with cache", HOT, AUTHN_CACHE, 0.85),
    ("RS256 hot / no filter", HOT, NONE, 0.80),
    ("introspection hit / no filter", INTRO, NONE, 0.80),
    (
        "filter on a public route / no filter",
        PUBLIC,
        NONE,
        f64::NAN,
    ),
    (
        "ES256 cold / jwt_authn RS256 without cache",
        ES,
        AUTHN_NOCACHE,
        f64::NAN,
    ),
    (
        "EdDSA cold / jwt_authn RS256 without cache",
        ED,
        AUTHN_NOCACHE,
        f64::NAN,
    ),
    ("reference: Wasm no-op / no filter", NOOP, NONE, f64::NAN),
    (
        "reference: Wasm bearer floor / no filter",
        FLOOR,
        NONE,
        f64::NAN,
    ),
    (
        "reference: floor + host calls / jwt_authn with cache",
        CROSSINGS,
        AUTHN_CACHE,
        f64::NAN,
    ),
    (
        "reference: floor + host calls / no filter",
        CROSSINGS,
        NONE,
        f64::NAN,
    ),
    ("RS256 hot / floor + host calls", HOT, CROSSINGS, f64::NAN),
    ("RS256 hot, policy rule / RS256 hot", POLICY, HOT, f64::NAN),
    (
        "RS256 hot, protected resource / RS256 hot",
        RESOURCE,
        HOT,
        f64::NAN,
    ),
    (
        "native RS256 cold / jwt_authn without cache",
        NATIVE_COLD,
        AUTHN_NOCACHE,
        1.3,
    ),
    (
        "native RS256 hot / jwt_authn with cache",
        NATIVE_HOT,
        AUTHN_CACHE,
        1.0,
    ),
    ("native RS256 hot / no filter", NATIVE_HOT, NONE, 0.85),
    (
        "native introspection hit / no filter",
        NATIVE_INTRO,
        NONE,
        0.85,
    ),
    ("native RS256 hot / RS256 hot", NATIVE_HOT, HOT, f64::NAN),
    ("DPoP hot / RS256 hot", DPOP, HOT, f64::NAN),
    (
        "native DPoP hot / native RS256 hot",
        NATIVE_DPOP,
        NATIVE_HOT,
        f64::NAN,
    ),
];

const NONE: &str = "no filter";
const AUTHN_NOCACHE: &str = "jwt_authn RS256, no cache";
const AUTHN_CACHE: &str = "jwt_authn RS256, cache";
const COLD: &str = "oauth-filter RS256 cold";
const HOT: &str = "oauth-filter RS256 hot";
const POLICY: &str = "oauth-filter RS256 hot, policy rule";
const RESOURCE: &str = "oauth-filter RS256 hot, protected resource";
const NATIVE_COLD: &str = "native oauth-filter RS256 cold";
const NATIVE_HOT: &str = "native oauth-filter RS256 hot";
const NATIVE_INTRO: &str = "native oauth-filter introspection hit";
const ES: &str = "oauth-filter ES256 cold";
const ED: &str = "oauth-filter EdDSA cold";
const PUBLIC: &str = "oauth-filter, public route (no token work)";
const INTRO: &str = "oauth-filter introspection hit";
const NOOP: &str = "reference: Wasm no-op filter";
const FLOOR: &str = "reference: Wasm bearer floor (no validation)";
const CROSSINGS: &str = "reference: bearer floor + the filter's other host calls";
const DPOP: &str = "oauth-filter DPoP hot (cached token, fresh ES256 proof)";
const NATIVE_DPOP: &str = "native oauth-filter DPoP hot (cached token, fresh ES256 proof)";

/// Setup `name`'s index in `setups`.
fn index(setups: &[Setup], name: &str) -> usize {
    setups
        .iter()
        .position(|s| s.name == name)
        .unwrap_or_else(|| panic!("no setup {name}"))
}

/// The ratio table of a report, from one number per setup; `ratio` maps a setup's number and its
/// baseline's to the ratio shown (higher is better).
fn ratio_rows(
    title: &str,
    setups: &[Setup],
    values: &[f64],
    ratio: impl Fn(f64, f64) -> f64,
) -> String {
    let mut rows = format!("\n| {title} | value | target |\n|---|---:|---:|\n");
    for (label, a, b, target) in RATIOS {
        let target = if target.is_nan() {
            "-".to_string()
        } else {
            format!("{target:.2}")
        };
        let value = ratio(values[index(setups, a)], values[index(setups, b)]);
        let value = if value.is_finite() && value > 0.0 {
            format!("{value:.2}")
        } else {
            "-".to_string()
        };
        rows.push_str(&format!("| {label} | {value} | {target} |\n"));
    }
    rows
}

struct Setup {
    name: &'static str,
    filters: Vec<Value>,
    /// A file of tokens to cycle through (one line each).
    tokens: PathBuf,
    /// Whether a bad token must be refused (false only without any filter).
    checks: bool,
    /// Lines of `tokens` are a DPoP-bound token and a fresh proof (counted only under callgrind:
    /// a proof passes once, and a timed run would replay them).
    dpop: bool,
}

#[derive(Clone, Copy, Default)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Envoy's CPU time per request, in microseconds (steadier than req/s on a busy machine).
    cpu_us: f64,
}

/// A process's CPU time so far (user + system), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<f64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = fields.get(11).copied().unwrap_or(0.0) + fields.get(12).copied().unwrap_or(0.0);
    ticks / 100.0 // USER_HZ: 100 ticks a second on Linux
}

fn ms(text: &str) -> f64 {
    let t = text.trim();
    let (n, factor) = if let Some(v) = t.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = t.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = t.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (t, 1.0)
    };
    n.parse::<f64>().unwrap_or(f64::NAN) * factor
}

fn run_wrk(envoy: &Envoy, tokens: &Path, script: &Path, seconds: u64) -> Sample {
    let port = envoy.port;
    let cpu_before = cpu_seconds(envoy.pid());
    let out = Command::new("taskset")
        .args([
            "-c",
            "1",
            "wrk",
            "-t1",
            "-c32",
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}/api/orders"))
        .env("BENCH_TOKENS", tokens)
        .output()
        .expect("run wrk (apt-get install wrk)");
    let cpu = cpu_seconds(envoy.pid()) - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut sample = Sample::default();
    for line in text.lines() {
        let l = line.trim();
        if l.contains(" requests in ") {
            let requests: f64 = l
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
            if requests > 0.0 {
                sample.cpu_us = cpu / requests * 1e6;
            }
        }
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            sample.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = l.strip_prefix("50%") {
            sample.p50_ms = ms(v);
        } else if let Some(v) = l.strip_prefix("99%") {
            sample.p99_ms = ms(v);
        }
    }
    if text.contains("Non-2xx") {
        panic!("wrk saw non-2xx answers:\n{text}");
    }
    sample
}

/// Runs `attempt` with a free listener port and a free admin port, again with fresh ones when
/// Envoy could not bind them: a port found free can be taken before Envoy binds it (wrk's closed
/// connections leave the ephemeral ports they used in TIME_WAIT).
fn on_free_ports<T>(setup: &Setup, mut attempt: impl FnMut(u16, u16) -> Result<T, String>) -> T {
    let mut retries = 0;
    loop {
        match attempt(free_port(), free_port()) {
            Ok(started) => return started,
            Err(log) if log.contains("Address already in use") && retries < 5 => retries += 1,
            Err(log) => panic!("{}: {log}", setup.name),
        }
    }
}

fn start(setup: &Setup, clusters: &[Value]) -> Envoy {
    let envoy = on_free_ports(setup, |port, admin| {
        let boot = support::direct_bootstrap(port, admin, setup.filters.clone(), clusters.to_vec());
        Envoy::start(&boot, port, admin)
    });
    let _ = Command::new("taskset")
        .args(["-a", "-pc", "0", &envoy.pid().to_string()])
        .output();
    envoy
}

fn first_token(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string()
}

fn check(envoy: &Envoy, setup: &Setup) {
    if setup.dpop {
        let line = first_token(&setup.tokens.with_file_name("dpop-check.txt"));
        let (token, proof) = line.split_once(' ').unwrap();
        let auth = format!("DPoP {token}");
        let headers = [
            ("authorization", auth.as_bytes()),
            ("dpop", proof.as_bytes()),
        ];
        let r = envoy.get("/api/orders", &headers);
        assert_eq!(
            r.status, 200,
            "{}: a good proof did not pass: {}",
            setup.name, r.body
        );
        let r = envoy.get("/api/orders", &headers);
        assert_eq!(r.status, 401, "{}: a replayed proof passed", setup.name);
        return;
    }
    let good = first_token(&setup.tokens);
    let bearer = format!("Bearer {good}");
    let r = envoy.get("/api/orders", &[("authorization", bearer.as_bytes())]);
    assert_eq!(
        r.status, 200,
        "{}: a valid token did not pass: {}",
        setup.name, r.body
    );
    if !setup.checks {
        return;
    }
    let r = envoy.get("/api/orders", &[]);
    assert_eq!(
        r.status, 401,
        "{}: a request without a token passed",
        setup.name
    );
    // A JWT-shaped forgery (for opaque tokens too: it must never be handed to introspection).
    let forged = match good.rsplit_once('.') {
        Some((signed, _)) if good.matches('.').count() == 2 => format!("Bearer {signed}.AAAA"),
        _ => format!(
            "Bearer {}.AAAA",
            first_token(&setup.tokens.with_file_name("hot.txt"))
                .rsplit_once('.')
                .unwrap()
                .0
        ),
    };
    let r = envoy.get("/api/orders", &[("authorization", forged.as_bytes())]);
    assert_eq!(
        r.status, 401,
        "{}: a forged token was not refused: {}",
        setup.name, r.body
    );
}

/// Instructions per request of `setup` under callgrind: Envoy starts with instrumentation off,
/// is warmed up, then counted over a fixed run of wrk (4 connections).
fn instructions(setup: &Setup, clusters: &[Value], script: &Path) -> f64 {
    let (envoy, out) = on_free_ports(setup, |port, admin| {
        let boot = support::direct_bootstrap(port, admin, setup.filters.clone(), clusters.to_vec());
        let out = std::env::temp_dir().join(format!("oauth-filter-callgrind-{port}"));
        std::fs::create_dir_all(&out).unwrap();
        let wrapper: Vec<String> = [
            "valgrind",
            "--tool=callgrind",
            "--smc-check=all-non-file",
            "--instr-atstart=no",
        ]
        .into_iter()
        .map(String::from)
        .chain([format!(
            "--callgrind-out-file={}",
            out.join("callgrind.out").display()
        )])
        .collect();
        let started = Envoy::start_under(
            &boot,
            port,
            admin,
            1,
            &wrapper,
            std::time::Duration::from_secs(300),
        );
        if started.is_err() {
            let _ = std::fs::remove_dir_all(&out);
        }
        started.map(|envoy| (envoy, out))
    });
    let port = envoy.port;
    check(&envoy, setup);
    let dpop_script = script.with_file_name("dpop.lua");
    let script = if setup.dpop { &dpop_script } else { script };
    let control = |what: &[&str]| {
        Command::new("callgrind_control")
            .args(what)
            .arg(envoy.pid().to_string())
            .output()
            .expect("callgrind_control (apt-get install valgrind)");
    };
    // A cold setup warms up with other tokens, filling the verified-token cache, and counts only
    // tokens it never saw; a hot one warms up with its own.
    let warm_up = Some(warm_up_path(&setup.tokens)).filter(|p| p.exists());
    let wrk = |seconds: u32, tokens: &Path| -> f64 {
        let out = Command::new("wrk")
            .args(["-t1", "-c4", &format!("-d{seconds}s"), "-s"])
            .arg(script)
            .arg(format!("http://127.0.0.1:{port}/api/orders"))
            .env("BENCH_TOKENS", tokens)
            .output()
            .expect("run wrk");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("Non-2xx"), "{}: non-2xx answers", setup.name);
        text.lines()
            .find(|l| l.contains(" requests in "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0)
    };
    control(&["-i", "on"]);
    let warmed = wrk(3, warm_up.as_deref().unwrap_or(&setup.tokens));
    control(&["-z"]);
    let requests = wrk(8, &setup.tokens);
    if let Some(warm_up) = &warm_up {
        // Never-seen tokens only: neither run may wrap around its file.
        let lines = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count()) as f64;
        assert!(
            warmed <= lines(warm_up) && requests <= lines(&setup.tokens),
            "{}: a token file wrapped around",
            setup.name
        );
    }
    control(&["-d"]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    drop(envoy);
    let mut total = 0.0;
    for entry in std::fs::read_dir(&out).unwrap().flatten() {
        // Only the dump asked for (`callgrind.out.1`), not what Envoy did while stopping.
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("callgrind.out.")
        {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            total += text
                .lines()
                .find_map(|l| l.strip_prefix("summary: "))
                .and_then(|n| n.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
        }
    }
    // BENCH_KEEP_CALLGRIND=1 keeps the profile, for `callgrind_annotate --inclusive=yes`.
    if support::env_number("BENCH_KEEP_CALLGRIND", 0) == 1 {
        eprintln!("{}: callgrind output kept in {}", setup.name, out.display());
    } else {
        let _ = std::fs::remove_dir_all(&out);
    }
    total / requests.max(1.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let seconds = support::env_number("BENCH_SECONDS", 5);
    let rounds = support::env_number("BENCH_ROUNDS", 3) as usize;
    let memory_tokens = support::env_number("BENCH_MEMORY_TOKENS", 1_000_000) as usize;
    let wasm = support::root().join("target/wasm32-wasip1/release/oauth_filter.wasm");
    assert!(wasm.exists(), "build the module first: make build");
    let floor = support::root().join("target/wasm32-wasip1/release/examples/floor_filter.wasm");
    assert!(
        floor.exists(),
        "build the reference module first: make floor"
    );
    let dir = support::root().join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("tokens.lua");
    std::fs::write(&script, format!("{BEARER_REQUESTS}{LUA_CYCLE}")).unwrap();

    eprintln!("signing tokens...");
    let rs = Signer::rsa("RS256", "rs", 2048);
    let es = Signer::es256("es");
    let ed = Signer::eddsa("ed");
    let keys = jwks(&[rs.jwk(), es.jwk(), ed.jwk()]);
    let hot = dir.join("hot.txt");
    std::fs::write(&hot, rs.token(&claims(0)) + "\n").unwrap();
    let (rs_cold, es_cold, ed_cold) = (dir.join("rs.txt"), dir.join("es.txt"), dir.join("ed.txt"));
    token_file(&rs_cold, &rs, COLD_TOKENS);
    token_file(&es_cold, &es, COLD_TOKENS);
    token_file(&ed_cold, &ed, COLD_TOKENS);
    // Other tokens of the same keys, to fill the verified-token cache before a cold count.
    for (path, signer) in [(&rs_cold, &rs), (&es_cold, &es), (&ed_cold, &ed)] {
        warm_up_file(path, signer);
    }
    std::fs::write(dir.join("dpop.lua"), format!("{DPOP_REQUESTS}{LUA_CYCLE}")).unwrap();
    let dpop_tokens = dpop_files(&dir, &rs, &Signer::es256(""));
    let opaque = dir.join("opaque.txt");
    std::fs::write(&opaque, "opaque-bench-token-0123456789\n").unwrap();

    let server = Scripted::start();
    server.set(
        "/introspect",
        Reply::ok(
            json!({"active": true, "iss": "https://idp.test", "aud": "orders-api",
                         "sub": "bench", "scope": "orders:read", "exp": now() + 7200})
            .to_string(),
        ),
    );
    let clusters = vec![support::cluster("idp", server.port)];
    let filter = json!({
        "providers": {"idp": {
            "issuer": "https://idp.test", "audiences": ["orders-api"],
            "local_jwks": {"inline_string": keys},
            "introspection": {"http_uri": {"uri": "http://idp.test/introspect", "cluster": "idp", "timeout": "2s"},
                              "client_id": "bench", "client_secret": "bench-secret"},
            "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}]
        }},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]
    });
    // The configuration, for measuring a setup by hand with the same keys and tokens.
    std::fs::write(dir.join("filter.json"), filter.to_string()).unwrap();
    std::fs::write(dir.join("jwks.json"), &keys).unwrap();
    let ours = wasm_filter(&wasm, &filter.to_string());
    let ours_policy = wasm_filter(&wasm, &policy_config(&filter, &es).to_string());
    let ours_resource = wasm_filter(&wasm, &resource_config(&filter).to_string());
    let native = native_filter(&filter.to_string());
    // The same provider taking DPoP-bound tokens (proofs signed at start stay good an hour).
    let mut dpop = filter.clone();
    dpop["providers"]["idp"]["dpop"] = json!({"max_age": "3600s"});
    let (ours_dpop, native_dpop) = (
        wasm_filter(&wasm, &dpop.to_string()),
        native_filter(&dpop.to_string()),
    );
    let mut public = filter.clone();
    public["rules"] = json!([{"match": {"prefix": "/"}}]);
    let ours_public = wasm_filter(&wasm, &public.to_string());
    let setups = vec![
        Setup {
            name: NONE,
            filters: vec![],
            tokens: hot.clone(),
            checks: false,
            dpop: false,
        },
        Setup {
            name: AUTHN_NOCACHE,
            filters: vec![jwt_authn(&keys, false)],
            // The same distinct tokens as the filter's cold setup.
            tokens: rs_cold.clone(),
            checks: true,
            dpop: false,
        },
        Setup {
            name: AUTHN_CACHE,
            filters: vec![jwt_authn(&keys, true)],
            tokens: hot.clone(),
            checks: true,
            dpop: false,
        },
        Setup {
            name: COLD,
            filters: vec![ours.clone()],
            tokens: rs_cold,
            checks: true,
            dpop: false,
        },
        Setup {
            name: HOT,
            filters: vec![ours.clone()],
            tokens: hot.clone(),
            checks: true,
            dpop: false,
        },
        Setup {
            name: POLICY,
            filters: vec![ours_policy],
            tokens: hot.clone(),
            checks: true,
            dpop: false,
        },
        Setup {
            name: RESOURCE,
            filters: vec![ours_resource],
            tokens: hot.clone(),
            checks: true,
            dpop: false,
        },
        Setup {
            name: NATIVE_COLD,
            filters: vec![native.clone()],
            tokens: dir.join("rs.txt"),
            checks: true,
            dpop: false,
        },
        Setup {
            name: NATIVE_HOT,
            filters: vec![native.clone()],
            tokens: hot.clone(),
            checks: true,
            dpop: false,
        },
        Setup {
            name: NATIVE_INTRO,
            filters: vec![native],
            tokens: dir.join("opaque.txt"),
            checks: true,
            dpop: false,
        },
        Setup {
            name: ES,
            filters: vec![ours.clone()],
            tokens: es_cold,
            checks: true,
            dpop: false,
        },
        Setup {
            name: ED,
            filters: vec![ours.clone()],
            tokens: ed_cold,
            checks: true,
            dpop: false,
        },
        Setup {
            name: PUBLIC,
            filters: vec![ours_public],
            tokens: hot.clone(),
            checks: false,
            dpop: false,
        },
        Setup {
            name: INTRO,
            filters: vec![ours.clone()],
            tokens: opaque,
            checks: true,
            dpop: false,
        },
        Setup {
            name: DPOP,
            filters: vec![ours_dpop],
            tokens: dpop_tokens.clone(),
            checks: true,
            dpop: true,
        },
        Setup {
            name: NATIVE_DPOP,
            filters: vec![native_dpop],
            tokens: dpop_tokens,
            checks: true,
            dpop: true,
        },
        // What Envoy costs with a Wasm filter that does nothing; with one that does only the
        // header work every bearer filter must do; and with that plus the host calls this filter
        // makes besides (the clock, two counters, `on_context_create` and `on_response_headers`
        // exported), with none of its own work (examples/floor_filter.rs, floor_callbacks.rs).
        Setup {
            name: NOOP,
            filters: vec![wasm_filter(&floor, "noop")],
            tokens: hot.clone(),
            checks: false,
            dpop: false,
        },
        Setup {
            name: FLOOR,
            filters: vec![wasm_filter(&floor, "bearer")],
            tokens: hot.clone(),
            checks: false,
            dpop: false,
        },
        Setup {
            name: CROSSINGS,
            filters: vec![wasm_filter(
                &floor.with_file_name("floor_callbacks.wasm"),
                "bearer+",
            )],
            tokens: hot.clone(),
            checks: false,
            dpop: false,
        },
    ];

    // BENCH_ONLY=a,b runs only the setups whose name contains a or b (a ratio needs both of its
    // setups).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let chosen = |setup: &Setup| only.split(',').any(|part| setup.name.contains(part));
    if support::env_number("BENCH_INSTRUCTIONS", 0) == 1 {
        let counts: Vec<f64> = setups
            .iter()
            .map(|setup| {
                if !chosen(setup) {
                    return f64::NAN;
                }
                let n = instructions(setup, &clusters, &script);
                eprintln!("{:<44} {n:>9.0} instructions/request", setup.name);
                n
            })
            .collect();
        let mut report = String::from(
            "Instructions per request (callgrind; Envoy, 1 worker, and the module together)\n\n| setup | instructions/request |\n|---|---:|\n",
        );
        for (setup, n) in setups.iter().zip(&counts) {
            report.push_str(&format!("| {} | {n:.0} |\n", setup.name));
        }
        report.push_str(&ratio_rows(
            "ratio (fewer instructions = higher)",
            &setups,
            &counts,
            |a, b| b / a,
        ));
        println!("\n{report}");
        std::fs::write(dir.join("instructions.md"), &report).unwrap();
        return;
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); setups.len()];
    for round in 0..rounds {
        for (i, setup) in setups.iter().enumerate() {
            if !chosen(setup) || setup.dpop {
                samples[i].push(Sample::default());
                continue;
            }
            let envoy = start(setup, &clusters);
            check(&envoy, setup);
            // A short warm-up (JIT, connections), then the measured run.
            run_wrk(&envoy, &setup.tokens, &script, 1);
            let s = run_wrk(&envoy, &setup.tokens, &script, seconds);
            eprintln!(
                "round {}: {:<32} {:>9.0} req/s",
                round + 1,
                setup.name,
                s.rps
            );
            samples[i].push(s);
        }
    }
    let m: Vec<Sample> = samples
        .iter()
        .map(|v| Sample {
            rps: median(v.iter().map(|s| s.rps).collect()),
            p50_ms: median(v.iter().map(|s| s.p50_ms).collect()),
            p99_ms: median(v.iter().map(|s| s.p99_ms).collect()),
            cpu_us: median(v.iter().map(|s| s.cpu_us).collect()),
        })
        .collect();
    let mut report = String::new();
    report.push_str(&format!(
        "{rounds} rounds of {seconds} s, medians; Envoy 1 worker on CPU 0, wrk -t1 -c32 on CPU 1\n\n"
    ));
    report.push_str(
        "| setup | req/s | p50 ms | p99 ms | Envoy CPU µs/request |\n|---|---:|---:|---:|---:|\n",
    );
    for (setup, s) in setups.iter().zip(&m) {
        report.push_str(&format!(
            "| {} | {:.0} | {:.3} | {:.3} | {:.1} |\n",
            setup.name, s.rps, s.p50_ms, s.p99_ms, s.cpu_us
        ));
    }
    let rps: Vec<f64> = m.iter().map(|s| s.rps).collect();
    report.push_str(&ratio_rows("ratio", &setups, &rps, |a, b| a / b));

    if memory_tokens > 0 {
        report.push_str(&memory_rows(&dir, &wasm, memory_tokens, &clusters, &script));
    }
    println!("\n{report}");
    std::fs::write(dir.join("results.md"), &report).unwrap();
}

/// Envoy's memory before and after `tokens` requests with distinct tokens (every one verified
/// and cached, so the caches stay at their bounds), for the Wasm module and the native one.
fn memory_rows(
    dir: &Path,
    wasm: &Path,
    tokens: usize,
    clusters: &[Value],
    script: &Path,
) -> String {
    eprintln!("memory: signing {tokens} distinct HS256 tokens...");
    let hs = Signer::hmac("HS256", "hs", &[42u8; 32]);
    let many = dir.join("many.txt");
    token_file(&many, &hs, tokens);
    let filter = json!({
        "providers": {"idp": {"issuer": "https://idp.test", "audiences": ["orders-api"],
                              "local_jwks": {"inline_string": jwks(&[hs.jwk()])}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]
    })
    .to_string();
    let size_kib = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len() / 1024);
    let native = support::native_dir().map(|d| d.join("liboauth_filter.so"));
    let mut builds = vec![(
        "Wasm",
        wasm_filter(wasm, &filter),
        size_kib(wasm),
        "wasmcustom",
    )];
    if let Some(so) = native.filter(|so| so.exists()) {
        let stats = "dynamicmodulescustom";
        builds.push(("native", native_filter(&filter), size_kib(&so), stats));
    }
    let mut rows = String::from("\nMemory (Envoy RSS, 1 worker):\n\n| build | before | after | requests | allowed | module |\n|---|---:|---:|---:|---:|---:|\n");
    for (build, module, kib, stats) in builds {
        let setup = Setup {
            name: "memory",
            filters: vec![module],
            tokens: many.clone(),
            checks: true,
            dpop: false,
        };
        let envoy = start(&setup, clusters);
        check(&envoy, &setup);
        let before = support::rss_kib(envoy.pid());
        let (mut sent, mut rounds) = (0.0, 0);
        while sent < tokens as f64 && rounds < 20 {
            sent += run_wrk(&envoy, &many, script, 10).rps * 10.0;
            rounds += 1;
        }
        let after = support::rss_kib(envoy.pid());
        rows.push_str(&format!(
            "| {build} | {} MiB | {} MiB | {} | {} | {kib} KiB |\n",
            before / 1024,
            after / 1024,
            sent as u64,
            envoy.stat(&format!("{stats}.oauth_filter.allowed")),
        ));
    }
    let _ = std::fs::remove_file(&many);
    rows
}
