//! `make soak`: the filter under sustained mixed traffic while its authorization server fails.
//!
//! The real Envoy (two workers) runs the filter with two providers of node-oidc-provider
//! (tests/oidc/server.mjs): `jwt` finds the server's keys through OIDC discovery (route `/jwt`,
//! and `/jwt/admin`, which needs a scope the tokens lack), `opaque` introspects every token at
//! the server's RFC 7662 endpoint (route `/opaque`). Behind Envoy, a counting upstream (inside
//! this program: it keeps counts, not requests). wrk sends a mix chosen per request by a Lua
//! script: valid JWTs and opaque tokens issued by the server, and tokens that must be rejected
//! (tampered signature, expired, wrong audience, garbage, malformed, missing, a valid token
//! without the route's scope, unknown `kid`s, opaque tokens the server never issued). Each
//! request carries `x-soak-class`; the upstream echoes it, and Envoy's local replies copy it
//! from the request, so wrk counts every response by fault phase, class and status.
//!
//! Meanwhile the authorization server goes through phases, in cycles of about five minutes
//! (a longer run repeats them, with fresh tokens for each cycle):
//! up, stopped (SIGKILL), restarted (same port; OIDC_STATE_DIR keeps its signing key and the
//! opaque tokens it issued, so tokens stay valid), slowed (SIGSTOP/SIGCONT bursts longer than the
//! filter's call timeout), up again. Envoy's resident memory is sampled every few seconds, and
//! one probe thread per class sends a request a second and times it (wrk's Lua cannot).
//!
//! It fails (exit 1) when a request of a class that must be rejected reached the upstream, when
//! a token reached the upstream, when a response has a status the README does not design (or
//! wrk reports socket errors or timeouts, or a probe gets no answer), when a class gets a status
//! it must never get (a valid JWT anything but 200, a tampered one anything but 401...), when
//! Envoy's memory grows from the first third of the run (after warm-up) to the last, or when
//! Envoy dies or its log shows a Wasm panic. A class's allowed statuses are those the README's
//! Responses table gives for its situation. Every process it starts is stopped at the end, also on panic (profile `tools`: panic = unwind). Results are also written
//! to target/soak/ (results.md, probes.tsv).
//!
//! Environment: SOAK_SECONDS (default 300), SOAK_CYCLE_SECONDS (about how long a cycle of
//! phases lasts, default 300), SOAK_CONNECTIONS (wrk connections, default 32).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use support::tokens::{b64, now, unb64, Private, Signer};
use support::{free_port, Envoy};

const AUD: &str = "orders-api";
/// The filter's timeout for its calls to the server; SIGSTOP bursts last longer.
const CALL_TIMEOUT_S: f64 = 1.0;
const STOP_BURST: Duration = Duration::from_secs(3);
const CONT_BURST: Duration = Duration::from_secs(1);
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long before a fault the phase's label is published to wrk and the probes.
const LABEL_LEAD: Duration = Duration::from_millis(250);
/// Statuses the README's Responses section designs.
const DESIGNED: [u16; 5] = [200, 400, 401, 403, 503];
/// Memory may grow by this much from the first third to the last (median VmRSS).
const RSS_SLACK_KIB: u64 = 8 * 1024;
const RSS_SLACK_RATIO: f64 = 0.05;

/// A class of requests: its marker, share of the traffic (of 100), path, whether it must be
/// rejected, and the statuses it may get: those the README's Responses table gives for its
/// situation (any other fails the run).
struct Class {
    name: &'static str,
    weight: u32,
    path: &'static str,
    rejected: bool,
    expected: &'static [u16],
}

const CLASSES: [Class; 11] = [
    Class {
        name: "valid-jwt",
        weight: 30,
        path: "/jwt/orders",
        rejected: false,
        // Keys once loaded are kept through outages: no call is needed.
        expected: &[200],
    },
    Class {
        name: "valid-opaque",
        weight: 15,
        path: "/opaque/orders",
        rejected: false,
        // 503 when the cached answer expired and the server cannot answer.
        expected: &[200, 503],
    },
    Class {
        name: "no-scope",
        weight: 5,
        path: "/jwt/admin",
        rejected: true,
        expected: &[403],
    },
    Class {
        name: "tampered",
        weight: 8,
        path: "/jwt/orders",
        rejected: true,
        expected: &[401],
    },
    Class {
        name: "expired",
        weight: 6,
        path: "/jwt/orders",
        rejected: true,
        expected: &[401],
    },
    Class {
        name: "wrong-aud",
        weight: 6,
        path: "/jwt/orders",
        rejected: true,
        expected: &[401],
    },
    Class {
        name: "garbage",
        weight: 5,
        path: "/jwt/orders",
        rejected: true,
        expected: &[401],
    },
    Class {
        name: "malformed",
        weight: 3,
        path: "/jwt/orders",
        rejected: true,
        expected: &[400],
    },
    Class {
        name: "missing",
        weight: 6,
        path: "/jwt/orders",
        rejected: true,
        expected: &[401],
    },
    Class {
        name: "unknown-kid",
        weight: 6,
        path: "/jwt/orders",
        rejected: true,
        // An unknown `kid` may wait for one refetch, but never for a fetch that cannot start:
        // while the key server is failing it is refused at once. (The first soak runs found
        // 4 s waits ending in 503 here.)
        expected: &[401],
    },
    Class {
        name: "unknown-opaque",
        weight: 10,
        path: "/opaque/orders",
        rejected: true,
        expected: &[401, 503],
    },
];

fn class(name: &str) -> Option<&'static Class> {
    CLASSES.iter().find(|c| c.name == name)
}

// ---------------------------------------------------------------------------------------------
// The authorization server, which this program stops, slows and restarts.

struct Idp {
    child: Option<Child>,
    port: u16,
    issuer: String,
    state: PathBuf,
    paused: bool,
}

impl Idp {
    fn start(port: u16) -> Idp {
        let state = std::env::temp_dir().join(format!("oauth-filter-soak-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state).unwrap();
        let mut idp = Idp {
            child: None,
            port,
            issuer: format!("http://127.0.0.1:{port}"),
            state,
            paused: false,
        };
        if let Err(why) = idp.spawn() {
            panic!("{why}");
        }
        idp
    }

    /// Starts server.mjs on the port with the state directory; how long until it answered.
    fn spawn(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.join("node.log"))
            .map_err(|e| e.to_string())?;
        let child = support::spawn_oidc(self.port, &self.issuer, |command| {
            command
                .env("OIDC_STATE_DIR", &self.state)
                .stdout(log.try_clone().map_or_else(|_| Stdio::null(), Stdio::from))
                .stderr(Stdio::from(log));
        })?;
        self.child = Some(child);
        self.paused = false;
        Ok(started.elapsed())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&mut self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([format!("-{signal}"), pid.to_string()])
                .status();
            self.paused = signal == "STOP";
        }
    }

    fn pause(&mut self) {
        self.signal("STOP");
    }

    fn resume(&mut self) {
        if self.paused {
            self.signal("CONT");
        }
    }

    /// SIGKILL, and reaped.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// A client-credentials access token for `resource` (JWT for orders, opaque for opaque).
    fn token(&self, resource: &str) -> String {
        support::client_credentials_token(self.port, resource, "orders:read")
    }

    /// The server's own signing key (kept in the state directory), to sign tokens it would
    /// sign but with claims it would not issue (expired, another audience).
    fn signer(&self) -> Signer {
        let text = std::fs::read_to_string(self.state.join("signing-key.json")).unwrap();
        let jwk: Value = serde_json::from_str(&text).unwrap();
        let int = |member: &str| rsa::BigUint::from_bytes_be(&unb64(jwk[member].as_str().unwrap()));
        let key = rsa::RsaPrivateKey::from_components(
            int("n"),
            int("e"),
            int("d"),
            vec![int("p"), int("q")],
        )
        .unwrap();
        Signer {
            alg: "RS256",
            kid: jwk["kid"].as_str().map(str::to_owned),
            key: Private::Rsa(key),
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

// ---------------------------------------------------------------------------------------------
// The counting upstream.

#[derive(Default)]
struct Counts {
    by_class: Mutex<BTreeMap<String, u64>>,
    /// Requests that arrived with an `Authorization` header (`forward` is false: none should).
    with_token: AtomicU64,
}

/// Answers 200 to every request, echoing `x-soak-class`, and counts requests by that class.
fn counting_upstream() -> (u16, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let counts = Arc::new(Counts::default());
    let shared = counts.clone();
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let counts = shared.clone();
            thread::spawn(move || count_requests(conn, &counts));
        }
    });
    (port, counts)
}

fn count_requests(conn: TcpStream, counts: &Counts) {
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let (mut class, mut length, mut token) = (String::from("(none)"), 0usize, false);
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("x-soak-class") {
                    class = value.to_string();
                } else if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("authorization") {
                    token = true;
                }
            }
        }
        if length > 0 {
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }
        if token {
            counts.with_token.fetch_add(1, Ordering::Relaxed);
        }
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-soak-class: {class}\r\ncontent-length: 2\r\n\r\nok"
        );
        *counts.by_class.lock().unwrap().entry(class).or_insert(0) += 1;
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens, the wrk script and its control file.

/// The requests of each class, as the `Authorization` values to send (empty: none).
fn issue_tokens(
    idp: &Idp,
    as_signer: &Signer,
    unknown: &[Signer],
) -> BTreeMap<&'static str, Vec<String>> {
    let bearer = |t: &str| format!("Bearer {t}");
    let jwts: Vec<String> = (0..8)
        .map(|_| idp.token("https://orders.example"))
        .collect();
    let opaque: Vec<String> = (0..4)
        .map(|_| idp.token("https://opaque.example"))
        .collect();
    let claims = |aud: &str, iat: u64, exp: u64, jti: usize| {
        json!({"iss": idp.issuer, "aud": aud, "client_id": "gateway", "scope": "orders:read",
               "iat": iat, "exp": exp, "jti": format!("soak-{jti}")})
    };
    let now = now();
    let mut t: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    t.insert("valid-jwt", jwts.iter().map(|j| bearer(j)).collect());
    t.insert("valid-opaque", opaque.iter().map(|o| bearer(o)).collect());
    t.insert("no-scope", jwts.iter().map(|j| bearer(j)).collect());
    // One character in the middle of the signature changed (still strict base64url).
    t.insert(
        "tampered",
        jwts.iter()
            .map(|j| {
                let (input, sig) = j.rsplit_once('.').unwrap();
                let mut sig = sig.as_bytes().to_vec();
                let i = sig.len() / 2;
                sig[i] = if sig[i] == b'A' { b'B' } else { b'A' };
                bearer(&format!("{input}.{}", String::from_utf8(sig).unwrap()))
            })
            .collect(),
    );
    t.insert(
        "expired",
        (0..4)
            .map(|i| bearer(&as_signer.token(&claims(AUD, now - 7200, now - 3600, i))))
            .collect(),
    );
    t.insert(
        "wrong-aud",
        (0..4)
            .map(|i| bearer(&as_signer.token(&claims("other-api", now, now + 3600, i))))
            .collect(),
    );
    let header = b64(r#"{"alg":"RS256","kid":"x"}"#);
    t.insert(
        "garbage",
        vec![
            bearer("garbage"),
            bearer(&b64([0x5a; 48])),
            bearer("a.b.c"),
            bearer(&format!("{header}.{}.{}", b64("not json"), b64([1; 256]))),
            bearer(&format!("{header}..")),
        ],
    );
    t.insert(
        "malformed",
        vec![bearer("tok{en}"), bearer("two words"), bearer("a\"b")],
    );
    t.insert(
        "missing",
        vec![
            String::new(),
            "Basic Z2F0ZXdheTpnYXRld2F5LXNlY3JldA==".into(),
        ],
    );
    t.insert(
        "unknown-kid",
        unknown
            .iter()
            .enumerate()
            .map(|(i, s)| bearer(&s.token(&claims(AUD, now, now + 3600, i))))
            .collect(),
    );
    // Opaque tokens the server never issued: each is introspected (then cached as inactive for
    // negative_cache_duration).
    t.insert(
        "unknown-opaque",
        (0..3000)
            .map(|i| bearer(&format!("unknown-{i}-{}", b64(rand::random::<[u8; 24]>()))))
            .collect(),
    );
    t
}

/// The tokens file wrk reads: `C class weight path`, then `T class authorization` lines.
fn write_tokens(path: &Path, tokens: &BTreeMap<&'static str, Vec<String>>) {
    let mut text = String::new();
    for c in &CLASSES {
        writeln!(text, "C\t{}\t{}\t{}", c.name, c.weight, c.path).unwrap();
        for token in &tokens[c.name] {
            writeln!(text, "T\t{}\t{token}", c.name).unwrap();
        }
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The control file: the tokens' generation and the current phase, read by wrk every 100
/// requests per thread.
fn write_control(path: &Path, generation: u32, phase: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{generation} {phase}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

const LUA: &str = r#"-- make soak: each request is one of the classes in SOAK_TOKENS, chosen at random by weight
-- and marked with x-soak-class; responses are counted by phase (from SOAK_CONTROL), class
-- (x-soak-class, echoed by the upstream and by Envoy's local replies) and status. The control
-- file is read every 100 requests per thread, so a phase change is seen within milliseconds.
local tokens_file = os.getenv("SOAK_TOKENS")
local control_file = os.getenv("SOAK_CONTROL")
local wheel = {}
local generation = nil
local phase = "?"
local sent = 0
counts = {}

local function load()
  local paths, weights, lists, order = {}, {}, {}, {}
  for line in io.lines(tokens_file) do
    local f = {}
    for field in (line .. "\t"):gmatch("([^\t]*)\t") do f[#f + 1] = field end
    if f[1] == "C" then
      order[#order + 1] = f[2]
      weights[f[2]] = tonumber(f[3])
      paths[f[2]] = f[4]
      lists[f[2]] = {}
    elseif f[1] == "T" then
      local headers = {["x-soak-class"] = f[2]}
      if f[3] ~= "" then headers["Authorization"] = f[3] end
      local list = lists[f[2]]
      list[#list + 1] = wrk.format("GET", paths[f[2]], headers)
    end
  end
  local w = {}
  for _, name in ipairs(order) do
    for _ = 1, weights[name] do w[#w + 1] = lists[name] end
  end
  wheel = w
end

local function poll()
  local f = io.open(control_file, "r")
  if not f then return end
  local line = f:read("*l")
  f:close()
  if not line then return end
  local g, p = line:match("^(%S+) (%S+)$")
  if not g then return end
  phase = p
  if g ~= generation then
    generation = g
    load()
  end
end

local threads = {}
setup = function(thread)
  threads[#threads + 1] = thread
  thread:set("id", #threads)
end

init = function(args)
  math.randomseed(os.time() * 1000 + id)
  poll()
end

request = function()
  sent = sent + 1
  if sent % 100 == 0 then poll() end
  local list = wheel[math.random(#wheel)]
  return list[math.random(#list)]
end

response = function(status, headers, body)
  local key = phase .. " " .. (headers["x-soak-class"] or "(none)") .. " " .. status
  counts[key] = (counts[key] or 0) + 1
end

done = function(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do io.write("SOAK count ", k, " ", v, "\n") end
  local e = summary.errors
  io.write(string.format("SOAK errors %d %d %d %d\n", e.connect, e.read, e.write, e.timeout))
  io.write(string.format("SOAK summary %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"#;

/// wrk, killed on drop if it is still running.
struct Wrk {
    child: Child,
    out: PathBuf,
}

impl Drop for Wrk {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Probes: besides wrk, one thread per class sends one request at a time on a new connection and
// times it, so each phase shows how long each class waited (wrk's Lua cannot time a request).

/// One probe's outcome: phase, class index, status (0: no answer), milliseconds.
type ProbeResult = (String, usize, u16, u64);

struct Probes {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    results: Arc<Mutex<Vec<ProbeResult>>>,
}

impl Probes {
    fn start(
        port: u16,
        phase: &Arc<Mutex<String>>,
        tokens: &Arc<Mutex<BTreeMap<&'static str, Vec<String>>>>,
    ) -> Probes {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..CLASSES.len())
            .map(|index| {
                let (stop, results) = (stop.clone(), results.clone());
                let (phase, tokens) = (phase.clone(), tokens.clone());
                thread::spawn(move || {
                    let c = &CLASSES[index];
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let token = {
                            let tokens = tokens.lock().unwrap();
                            let list = &tokens[c.name];
                            list[n % list.len()].clone()
                        };
                        n += 1;
                        let label = phase.lock().unwrap().clone();
                        let sent = Instant::now();
                        let status = probe(port, c, &token);
                        let ms = sent.elapsed().as_millis() as u64;
                        results.lock().unwrap().push((label, index, status, ms));
                        thread::sleep(PROBE_EVERY.saturating_sub(sent.elapsed()));
                    }
                })
            })
            .collect();
        Probes {
            stop,
            threads,
            results,
        }
    }

    fn finish(mut self) -> Vec<ProbeResult> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        std::mem::take(&mut *self.results.lock().unwrap())
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One request of class `c` on a new connection: the status (0 if no answer within 15 s).
fn probe(port: u16, c: &Class, token: &str) -> u16 {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("authorization: {token}\r\n")
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nhost: soak\r\nx-soak-class: probe.{}\r\n{auth}connection: close\r\n\r\n",
        c.path, c.name
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut line = String::new();
    let _ = BufReader::new(stream).read_line(&mut line);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Envoy.

fn filter_config(idp: &Idp) -> String {
    let timeout = format!("{CALL_TIMEOUT_S}s");
    json!({
        "realm": "soak",
        "providers": {
            "jwt": {
                "issuer": idp.issuer, "audiences": [AUD],
                "discovery": {"http_uri": {"cluster": "oidc", "timeout": timeout}, "cache_duration": "30s"},
                "claim_to_headers": [{"header_name": "x-client-id", "claim_name": "client_id"}]
            },
            "opaque": {
                "issuer": idp.issuer, "audiences": [AUD],
                "introspection": {
                    "http_uri": {"uri": format!("{}/token/introspection", idp.issuer), "cluster": "oidc", "timeout": timeout},
                    "client_id": "gateway", "client_secret": "gateway-secret",
                    "token_type_hint": "access_token",
                    "cache_duration": "20s", "negative_cache_duration": "5s"
                },
                "claim_to_headers": [{"header_name": "x-client-id", "claim_name": "client_id"}]
            }
        },
        "rules": [
            {"match": {"prefix": "/jwt/admin"}, "requires": {"provider_name": "jwt", "scopes": ["orders:admin"]}},
            {"match": {"prefix": "/jwt"}, "requires": {"provider_name": "jwt"}},
            {"match": {"prefix": "/opaque"}, "requires": {"provider_name": "opaque"}}
        ]
    })
    .to_string()
}

fn start_envoy(wasm: &Path, idp: &Idp, upstream: u16) -> Envoy {
    let (port, admin) = (free_port(), free_port());
    let mut boot = support::bootstrap_with(
        port,
        admin,
        upstream,
        wasm,
        &filter_config(idp),
        &[("oidc", idp.port)],
    );
    // Local replies (the filter's rejections, Envoy's own errors) carry the request's class, as
    // the upstream's answers do, so wrk can count responses by class.
    boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["local_reply_config"] = json!({"mappers": [{
        "filter": {"header_filter": {"header": {"name": "x-soak-class", "present_match": true}}},
        "headers_to_add": [{"header": {"key": "x-soak-class", "value": "%REQ(x-soak-class)%"},
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    }]});
    Envoy::start_workers(&boot, port, admin, 2).unwrap_or_else(|log| panic!("Envoy: {log}"))
}

/// The 1, 5 and 15 minute load averages (the machine is shared).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The filter's counters (`wasmcustom.oauth_filter.*`, or `dynamicmodulescustom.…` for the
/// native build, prefix removed).
fn counters(envoy: &Envoy) -> BTreeMap<String, u64> {
    support::admin_get(envoy.admin, "/stats?filter=oauth_filter")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter_map(|(n, v)| {
            let name = n
                .strip_prefix("wasmcustom.oauth_filter.")
                .or_else(|| n.strip_prefix("dynamicmodulescustom.oauth_filter."))?;
            Some((name.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Phases.

#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    Up,
    Stopped,
    Restarted,
    Slowed,
    UpAgain,
}

/// One cycle: the fault, its name, and its share of the cycle.
const CYCLE: [(Fault, &str, f64); 5] = [
    (Fault::Up, "up", 0.2),
    (Fault::Stopped, "stopped", 0.2),
    (Fault::Restarted, "restarted", 0.1),
    (Fault::Slowed, "slowed", 0.2),
    (Fault::UpAgain, "up-again", 0.3),
];

struct Phase {
    label: String,
    fault: Fault,
    cycle: usize,
    start: f64,
    end: f64,
    counters_start: BTreeMap<String, u64>,
    counters_end: BTreeMap<String, u64>,
    events: Vec<String>,
}

/// The phases of `seconds`, in cycles of about `cycle` seconds (tokens live 600 s; each cycle
/// after the first starts by issuing fresh ones, so a cycle must stay well under that).
fn schedule(seconds: f64, cycle: f64) -> Vec<Phase> {
    let cycles = ((seconds / cycle).round() as usize).max(1);
    let length = seconds / cycles as f64;
    let mut phases = Vec::new();
    let mut at = 0.0;
    for cycle in 1..=cycles {
        for (fault, name, share) in CYCLE {
            let label = if cycles == 1 {
                name.to_string()
            } else {
                format!("c{cycle}.{name}")
            };
            let end = at + share * length;
            phases.push(Phase {
                label,
                fault,
                cycle,
                start: at,
                end,
                counters_start: BTreeMap::new(),
                counters_end: BTreeMap::new(),
                events: Vec::new(),
            });
            at = end;
        }
    }
    if let Some(last) = phases.last_mut() {
        last.end = seconds;
    }
    phases
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let passed = soak();
    // Every process was stopped when `soak` returned (or unwound).
    std::process::exit(i32::from(!passed));
}

fn soak() -> bool {
    let seconds = support::env_number("SOAK_SECONDS", 300).max(20) as f64;
    let connections = support::env_number("SOAK_CONNECTIONS", 32).max(2);
    let cycle = support::env_number("SOAK_CYCLE_SECONDS", 300).clamp(20, 400) as f64;
    let wasm = support::root().join("target/wasm32-wasip1/release/oauth_filter.wasm");
    assert!(wasm.exists(), "build the module first: make build");
    let dir = support::root().join("target/soak");
    std::fs::create_dir_all(&dir).unwrap();
    let (script, tokens_path, control) = (
        dir.join("soak.lua"),
        dir.join("tokens.txt"),
        dir.join("control.txt"),
    );
    std::fs::write(&script, LUA).unwrap();

    let mut idp = Idp::start(free_port());
    let (upstream, counts) = counting_upstream();
    let envoy = start_envoy(&wasm, &idp, upstream);
    eprintln!(
        "soak: Envoy pid {} on :{} (2 workers), oidc-provider on :{}, upstream on :{}",
        envoy.pid(),
        envoy.port,
        idp.port,
        upstream
    );

    let as_signer = idp.signer();
    let unknown: Vec<Signer> = (1..=3)
        .map(|i| Signer::rsa("RS256", &format!("soak-unknown-{i}"), 2048))
        .collect();
    let mut generation = 1;
    let tokens = issue_tokens(&idp, &as_signer, &unknown);
    write_tokens(&tokens_path, &tokens);
    let tokens = Arc::new(Mutex::new(tokens));

    // Before the load: one request of each class must get its first expected status, and the
    // upstream must see exactly the valid ones (marked `precheck`, not counted below).
    let mut precheck_failures = Vec::new();
    for c in &CLASSES {
        let token = &tokens.lock().unwrap()[c.name][0].clone();
        let mut headers: Vec<(&str, &[u8])> = vec![("x-soak-class", b"precheck")];
        if !token.is_empty() {
            headers.push(("authorization", token.as_bytes()));
        }
        let r = envoy.get(c.path, &headers);
        let ok = r.status == c.expected[0];
        eprintln!(
            "precheck {:<15} {} {}",
            c.name,
            r.status,
            if ok { "ok" } else { r.body.as_str() }
        );
        if !ok {
            precheck_failures.push(c.name);
        }
    }
    assert!(
        precheck_failures.is_empty(),
        "precheck failed for {precheck_failures:?}"
    );
    let precheck_reached = counts
        .by_class
        .lock()
        .unwrap()
        .remove("precheck")
        .unwrap_or(0);
    assert_eq!(
        precheck_reached, 2,
        "precheck: the upstream saw {precheck_reached} requests"
    );

    let mut phases = schedule(seconds, cycle);
    write_control(&control, generation, &phases[0].label);
    let wrk_out = dir.join("wrk.out");
    let child = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{}s", seconds as u64),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(&script)
        .arg(format!("http://127.0.0.1:{}", envoy.port))
        .env("SOAK_TOKENS", &tokens_path)
        .env("SOAK_CONTROL", &control)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&wrk_out).unwrap()))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run wrk (apt-get install wrk)");
    let mut wrk = Wrk {
        child,
        out: wrk_out,
    };
    let started = Instant::now();
    eprintln!(
        "soak: {seconds:.0} s, wrk -t2 -c{connections}, phases: {}",
        phases
            .iter()
            .map(|p| format!("{} {:.0}-{:.0} s", p.label, p.start, p.end))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let phase_now = Arc::new(Mutex::new(phases[0].label.clone()));
    let probes = Probes::start(envoy.port, &phase_now, &tokens);
    let mut current: Option<usize> = None;
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut burst_until = Instant::now();
    let (mut bursts, mut envoy_died) = (0u32, false);
    let load_before = load_average();
    let wrk_status = loop {
        let elapsed = started.elapsed();
        let t = elapsed.as_secs_f64();
        if let Ok(Some(status)) = wrk.child.try_wait() {
            break Some(status);
        }
        if t > seconds + 60.0 {
            break None;
        }
        if elapsed >= next_sample {
            let kib = support::rss_kib(envoy.pid());
            if kib == 0 {
                envoy_died = true;
            }
            samples.push((t, kib));
            next_sample += SAMPLE_EVERY;
        }
        let index = phases
            .iter()
            .position(|p| t < p.end)
            .unwrap_or(phases.len() - 1);
        if current != Some(index) {
            let snapshot = counters(&envoy);
            if let Some(previous) = current {
                phases[previous].counters_end = snapshot.clone();
                if phases[previous].fault == Fault::Slowed {
                    phases[previous].events.push(format!(
                        "{bursts} SIGSTOP bursts of {} s",
                        STOP_BURST.as_secs()
                    ));
                }
            }
            let phase = &mut phases[index];
            phase.counters_start = snapshot;
            phase.start = t;
            // The label first: wrk counts responses for the new phase from now on, and the
            // fault follows a moment later, so none it causes is counted for the phase before.
            write_control(&control, generation, &phase.label);
            phase_now.lock().unwrap().clone_from(&phase.label);
            thread::sleep(LABEL_LEAD);
            match phase.fault {
                Fault::Up => {
                    if phase.cycle > 1 {
                        // Fresh tokens from the server (they live 600 s).
                        let fresh = issue_tokens(&idp, &as_signer, &unknown);
                        write_tokens(&tokens_path, &fresh);
                        *tokens.lock().unwrap() = fresh;
                        generation += 1;
                        write_control(&control, generation, &phase.label);
                        phase.events.push("fresh tokens issued".into());
                    }
                }
                Fault::Stopped => {
                    let pid = idp.pid().unwrap_or(0);
                    idp.resume();
                    idp.kill();
                    phase
                        .events
                        .push(format!("oidc-provider (pid {pid}) killed with SIGKILL"));
                }
                Fault::Restarted => match idp.spawn() {
                    Ok(took) => phase.events.push(format!(
                        "oidc-provider restarted on :{} (pid {}), answering after {:.1} s",
                        idp.port,
                        idp.pid().unwrap_or(0),
                        took.as_secs_f64()
                    )),
                    Err(why) => panic!("restart: {why}"),
                },
                Fault::Slowed => {
                    bursts = 0;
                    phase.events.push(format!(
                        "SIGSTOP {} s / SIGCONT {} s, repeated (call timeout {CALL_TIMEOUT_S} s)",
                        STOP_BURST.as_secs(),
                        CONT_BURST.as_secs()
                    ));
                    burst_until = Instant::now();
                }
                Fault::UpAgain => {
                    idp.resume();
                    phase
                        .events
                        .push("SIGCONT: oidc-provider answers again".into());
                }
            }
            eprintln!(
                "soak: {:>6.1} s  {:<12} {}",
                t,
                phase.label,
                phase.events.join("; ")
            );
            current = Some(index);
        }
        if phases[index].fault == Fault::Slowed && Instant::now() >= burst_until {
            if idp.paused {
                idp.resume();
                burst_until = Instant::now() + CONT_BURST;
            } else {
                idp.pause();
                bursts += 1;
                burst_until = Instant::now() + STOP_BURST;
            }
        }
        thread::sleep(Duration::from_millis(100));
    };
    idp.resume();
    let end = started.elapsed().as_secs_f64();
    if let Some(i) = current {
        phases[i].counters_end = counters(&envoy);
        phases[i].end = end;
    }
    samples.push((end, support::rss_kib(envoy.pid())));
    let probes = probes.finish();
    let mut tsv = String::from("phase\tclass\tstatus\tms\n");
    for (phase, class, status, ms) in &probes {
        writeln!(tsv, "{phase}\t{}\t{status}\t{ms}", CLASSES[*class].name).unwrap();
    }
    let _ = std::fs::write(dir.join("probes.tsv"), tsv);
    let load_after = load_average();
    let log = envoy.log();
    let envoy_alive = support::rss_kib(envoy.pid()) > 0 && !envoy_died;
    let with_token = counts.with_token.load(Ordering::Relaxed);
    let upstream_counts = counts.by_class.lock().unwrap().clone();
    let wrk_text = std::fs::read_to_string(&wrk.out).unwrap_or_default();
    drop(wrk);
    drop(envoy);
    drop(idp);

    report(&Report {
        seconds,
        connections,
        phases: &phases,
        wrk_text: &wrk_text,
        upstream: &upstream_counts,
        with_token,
        samples: &samples,
        log: &log,
        envoy_alive,
        probes: &probes,
        load: [load_before, load_after],
        wrk_exited: wrk_status.is_some(),
        dir: &dir,
    })
}

struct Report<'a> {
    seconds: f64,
    connections: u64,
    phases: &'a [Phase],
    wrk_text: &'a str,
    upstream: &'a BTreeMap<String, u64>,
    with_token: u64,
    samples: &'a [(f64, u64)],
    log: &'a str,
    envoy_alive: bool,
    probes: &'a [ProbeResult],
    /// /proc/loadavg at the start and at the end.
    load: [String; 2],
    wrk_exited: bool,
    dir: &'a Path,
}

fn report(r: &Report) -> bool {
    let mut failures: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    // phase -> class -> status -> count
    let mut counts: BTreeMap<String, BTreeMap<String, BTreeMap<u16, u64>>> = BTreeMap::new();
    let mut errors = [0u64; 4];
    let mut summary = [0u64; 5];
    let mut got_summary = false;
    for line in r.wrk_text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["SOAK", "count", phase, class, status, n] => {
                *counts
                    .entry(phase.to_string())
                    .or_default()
                    .entry(class.to_string())
                    .or_default()
                    .entry(status.parse().unwrap_or(0))
                    .or_default() += n.parse::<u64>().unwrap_or(0);
            }
            ["SOAK", "errors", rest @ ..] => {
                for (e, v) in errors.iter_mut().zip(rest) {
                    *e = v.parse().unwrap_or(0);
                }
            }
            ["SOAK", "summary", rest @ ..] => {
                got_summary = true;
                for (s, v) in summary.iter_mut().zip(rest) {
                    *s = v.parse().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    if !r.wrk_exited {
        failures.push("wrk did not exit 60 s after its duration".into());
    }
    if !got_summary {
        failures.push(format!("wrk did not finish normally:\n{}", r.wrk_text));
    }
    let mut totals: BTreeMap<String, BTreeMap<u16, u64>> = BTreeMap::new();
    for by_class in counts.values() {
        for (class, statuses) in by_class {
            for (status, n) in statuses {
                *totals
                    .entry(class.clone())
                    .or_default()
                    .entry(*status)
                    .or_default() += n;
            }
        }
    }
    let statuses: BTreeSet<u16> = totals.values().flat_map(|s| s.keys().copied()).collect();
    let mut out = String::new();
    let [requests, duration_us, p50_us, p99_us, max_us] = summary;
    writeln!(
        out,
        "Soak: {:.0} s, Envoy --concurrency 2, wrk -t2 -c{} on {} cores (load average {} at the start, {} at the end)\n\n\
         {requests} responses, {:.0} req/s; latency max {:.0} ms (wrk's p50 {:.2} ms and p99 {:.0} ms \
         include its correction for coordinated omission: see the probes for real waits); \
         wrk socket errors: connect {}, read {}, write {}, timeout {}\n",
        r.seconds,
        r.connections,
        thread::available_parallelism().map_or(0, |n| n.get()),
        r.load[0],
        r.load[1],
        requests as f64 / (duration_us.max(1) as f64 / 1e6),
        max_us as f64 / 1000.0,
        p50_us as f64 / 1000.0,
        p99_us as f64 / 1000.0,
        errors[0],
        errors[1],
        errors[2],
        errors[3],
    )
    .unwrap();
    if errors.iter().any(|&e| e > 0) {
        failures.push(format!(
            "wrk socket errors: connect {}, read {}, write {}, timeout {}",
            errors[0], errors[1], errors[2], errors[3]
        ));
    }

    // Requests by class and status.
    write!(out, "| class | must be rejected |").unwrap();
    for s in &statuses {
        write!(out, " {s} |").unwrap();
    }
    writeln!(out, " reached upstream |").unwrap();
    write!(out, "|---|---|").unwrap();
    for _ in &statuses {
        write!(out, "---:|").unwrap();
    }
    writeln!(out, "---:|").unwrap();
    let mut names: Vec<String> = CLASSES.iter().map(|c| c.name.to_string()).collect();
    names.extend(
        totals
            .keys()
            .chain(r.upstream.keys().filter(|n| !n.starts_with("probe.")))
            .filter(|n| class(n).is_none())
            .cloned()
            .collect::<BTreeSet<_>>(),
    );
    for name in &names {
        let c = class(name);
        let by_status = totals.get(name).cloned().unwrap_or_default();
        let reached = r.upstream.get(name).copied().unwrap_or(0);
        write!(
            out,
            "| {name} | {} |",
            c.map_or("?", |c| if c.rejected { "yes" } else { "no" })
        )
        .unwrap();
        for s in &statuses {
            write!(out, " {} |", by_status.get(s).copied().unwrap_or(0)).unwrap();
        }
        writeln!(out, " {reached} |").unwrap();
        match c {
            None => failures.push(format!(
                "responses or upstream requests of unknown class {name}: {by_status:?}, {reached} at the upstream"
            )),
            Some(c) => {
                if c.rejected && reached > 0 {
                    failures.push(format!(
                        "{reached} requests of class {name} reached the upstream"
                    ));
                }
                if by_status.values().sum::<u64>() == 0 {
                    failures.push(format!("no responses of class {name}"));
                }
                for (s, n) in &by_status {
                    if !DESIGNED.contains(s) {
                        failures.push(format!("{n} responses of class {name} with status {s}, not a designed status"));
                    } else if !c.expected.contains(s) {
                        failures.push(format!(
                            "{n} responses of class {name} with status {s} (allowed for it: {:?})",
                            c.expected
                        ));
                    }
                }
                // Only the upstream answers 200. It may count a few more than wrk: requests in
                // flight when wrk stopped (at most one per connection).
                let allowed = by_status.get(&200).copied().unwrap_or(0);
                if !c.rejected && (reached < allowed || reached > allowed + r.connections) {
                    failures.push(format!(
                        "{name}: {allowed} answered 200 but the upstream counted {reached}"
                    ));
                } else if reached > allowed {
                    notes.push(format!(
                        "{name}: the upstream counted {} more than wrk's 200s (in flight when wrk stopped)",
                        reached - allowed
                    ));
                }
            }
        }
    }
    // The probes: the same rules for their statuses and for what reached the upstream.
    for (index, c) in CLASSES.iter().enumerate() {
        let reached = r
            .upstream
            .get(&format!("probe.{}", c.name))
            .copied()
            .unwrap_or(0);
        let mine = r.probes.iter().filter(|p| p.1 == index);
        let allowed = mine.clone().filter(|p| p.2 == 200).count() as u64;
        if c.rejected && reached > 0 {
            failures.push(format!(
                "{reached} probes of class {} reached the upstream",
                c.name
            ));
        } else if !c.rejected && reached != allowed {
            failures.push(format!(
                "probes of class {}: {allowed} answered 200, the upstream counted {reached}",
                c.name
            ));
        }
        let mut wrong: BTreeMap<u16, u64> = BTreeMap::new();
        for p in mine.filter(|p| !c.expected.contains(&p.2)) {
            *wrong.entry(p.2).or_default() += 1;
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "probes of class {} got statuses {wrong:?} (0: no answer; designed for it: {:?})",
                c.name, c.expected
            ));
        }
    }
    if r.with_token > 0 {
        failures.push(format!(
            "{} requests reached the upstream with an Authorization header (forward is false)",
            r.with_token
        ));
    }
    writeln!(
        out,
        "\nRequests that reached the upstream with an Authorization header: {}",
        r.with_token
    )
    .unwrap();

    // Phases.
    writeln!(
        out,
        "\nPhases of the authorization server (times from the start of wrk):\n"
    )
    .unwrap();
    writeln!(
        out,
        "| phase | from s | to s | responses | req/s | statuses by class | filter counters |"
    )
    .unwrap();
    writeln!(out, "|---|---:|---:|---:|---:|---|---|").unwrap();
    const SHOWN: [(&str, &str); 7] = [
        ("jwks.fetch_success", "jwks ok"),
        ("jwks.fetch_failure", "jwks failed"),
        ("introspection.calls", "introspections"),
        ("introspection.failures", "introspection failed"),
        ("introspection.cache_hits", "introspection hits"),
        ("denied.temporarily_unavailable", "503"),
        ("jwt.host_verifications", "signatures verified"),
    ];
    for p in r.phases {
        let by_class = counts.get(&p.label).cloned().unwrap_or_default();
        let n: u64 = by_class.values().flat_map(|s| s.values()).sum();
        let cells: Vec<String> = by_class
            .iter()
            .map(|(class, statuses)| {
                let s: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}×{n}")).collect();
                format!("{class} {}", s.join(" "))
            })
            .collect();
        let delta: Vec<String> = SHOWN
            .iter()
            .map(|(key, label)| {
                let at = |c: &BTreeMap<String, u64>| c.get(*key).copied().unwrap_or(0);
                let d = at(&p.counters_end).saturating_sub(at(&p.counters_start));
                format!("{label} {d}")
            })
            .collect();
        let span = (p.end - p.start).max(0.001);
        writeln!(
            out,
            "| {} | {:.1} | {:.1} | {n} | {:.0} | {} | {} |",
            p.label,
            p.start,
            p.end,
            n as f64 / span,
            cells.join("; "),
            delta.join(", ")
        )
        .unwrap();
    }
    // Probe latencies by phase.
    writeln!(
        out,
        "\nLatency of the probes (one request at a time per class, new connection, every {} s): median / max ms, and statuses\n",
        PROBE_EVERY.as_secs()
    )
    .unwrap();
    write!(out, "| class |").unwrap();
    for p in r.phases {
        write!(out, " {} |", p.label).unwrap();
    }
    write!(out, "\n|---|").unwrap();
    for _ in r.phases {
        write!(out, "---|").unwrap();
    }
    writeln!(out).unwrap();
    for (index, c) in CLASSES.iter().enumerate() {
        write!(out, "| {} |", c.name).unwrap();
        for p in r.phases {
            let mine: Vec<&ProbeResult> = r
                .probes
                .iter()
                .filter(|x| x.1 == index && x.0 == p.label)
                .collect();
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            for x in &mine {
                *statuses.entry(x.2).or_default() += 1;
            }
            let ms = mine.iter().map(|x| x.3).collect::<Vec<_>>();
            let max = ms.iter().max().copied().unwrap_or(0);
            let slow = ms.iter().filter(|&&m| m > 2000).count();
            if slow > 0 {
                notes.push(format!(
                    "{} probes of class {} waited over 2 s in phase {} (up to {max} ms; call timeout {CALL_TIMEOUT_S} s)",
                    slow, c.name, p.label
                ));
            }
            let statuses: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}×{n}")).collect();
            write!(out, " {} / {max} ({}) |", median(ms), statuses.join(" ")).unwrap();
        }
        writeln!(out).unwrap();
    }

    writeln!(out, "\nTimeline:").unwrap();
    for p in r.phases {
        writeln!(
            out,
            "  {:>6.1} s  {:<12} {}",
            p.start,
            p.label,
            p.events.join("; ")
        )
        .unwrap();
    }

    // Memory.
    let warmup = (r.seconds / 10.0).clamp(10.0, 60.0);
    let after: Vec<&(f64, u64)> = r.samples.iter().filter(|(t, _)| *t >= warmup).collect();
    let third = after.len() / 3;
    writeln!(
        out,
        "\nEnvoy VmRSS, sampled every {} s ({} samples): {}",
        SAMPLE_EVERY.as_secs(),
        r.samples.len(),
        r.samples
            .iter()
            .map(|(t, kib)| format!("{t:.0}s:{:.1}", mib(*kib)))
            .collect::<Vec<_>>()
            .join(" ")
    )
    .unwrap();
    if third == 0 {
        failures.push("too few memory samples after warm-up".into());
    } else {
        let first = median(after[..third].iter().map(|(_, k)| *k).collect());
        let last = median(
            after[after.len() - third..]
                .iter()
                .map(|(_, k)| *k)
                .collect(),
        );
        let all: Vec<u64> = r.samples.iter().map(|(_, k)| *k).collect();
        let limit = first + RSS_SLACK_KIB.max((first as f64 * RSS_SLACK_RATIO) as u64);
        writeln!(
            out,
            "Memory (MiB): min {:.1}, max {:.1}; after a {warmup:.0} s warm-up, median of the first third {:.1}, \
             of the last third {:.1} ({:+.1}); threshold: last ≤ first + max({} MiB, {:.0}%) = {:.1}",
            mib(*all.iter().min().unwrap_or(&0)),
            mib(*all.iter().max().unwrap_or(&0)),
            mib(first),
            mib(last),
            mib(last) - mib(first),
            RSS_SLACK_KIB / 1024,
            RSS_SLACK_RATIO * 100.0,
            mib(limit)
        )
        .unwrap();
        // Information only: the trend within the last third (least squares), MiB per minute.
        let tail = &after[after.len() - third..];
        let n = tail.len() as f64;
        let (mt, mk) = (
            tail.iter().map(|(t, _)| t).sum::<f64>() / n,
            tail.iter().map(|(_, k)| *k as f64).sum::<f64>() / n,
        );
        let (cov, var) = tail.iter().fold((0.0, 0.0), |(c, v), (t, k)| {
            (c + (t - mt) * (*k as f64 - mk), v + (t - mt) * (t - mt))
        });
        let slope = if var > 0.0 { cov / var } else { 0.0 };
        writeln!(
            out,
            "Trend within the last third: {:+.2} MiB/min",
            slope * 60.0 / 1024.0
        )
        .unwrap();
        if last > limit {
            failures.push(format!(
                "Envoy's memory grew: median VmRSS {:.1} MiB in the first third, {:.1} MiB in the last (limit {:.1})",
                mib(first),
                mib(last),
                mib(limit)
            ));
        }
    }

    // Envoy itself.
    if !r.envoy_alive {
        failures.push("Envoy died during the run".into());
    }
    let panics = r
        .log
        .lines()
        .filter(|l| l.contains("panic") || l.contains("[critical]"))
        .count();
    if panics > 0 {
        failures.push(format!("{panics} panic or critical lines in Envoy's log"));
    }
    let level = |tag: &str| r.log.lines().filter(|l| l.contains(tag)).count();
    writeln!(
        out,
        "\nEnvoy log: {} warning, {} error, {} critical/panic lines",
        level("[warning]"),
        level("[error]"),
        panics
    )
    .unwrap();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for l in r.log.lines().filter(|l| l.contains("oauth-filter")) {
        // The message after the filter's name, with the numbers of its retry delays blanked.
        let msg = l.split("oauth-filter").nth(1).unwrap_or("");
        let msg: String = match msg.split_once("retry in ") {
            Some((head, _)) => format!("{head}retry in # ms"),
            None => msg.chars().take(140).collect(),
        };
        *reasons.entry(msg).or_default() += 1;
    }
    for (msg, n) in &reasons {
        writeln!(out, "  {n:>7} × oauth-filter{msg}").unwrap();
    }

    for n in &notes {
        writeln!(out, "note: {n}").unwrap();
    }
    if failures.is_empty() {
        writeln!(out, "\nAll assertions held.").unwrap();
    } else {
        writeln!(out, "\nFAILED:").unwrap();
        for f in &failures {
            writeln!(out, "  - {f}").unwrap();
        }
    }
    println!("\n{out}");
    let _ = std::fs::write(r.dir.join("results.md"), &out);
    failures.is_empty()
}
