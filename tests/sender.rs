//! Integration tests of sender-constrained tokens in the real Envoy against node-oidc-provider:
//! DPoP-bound tokens (RFC 9449; the test holds the client's key and signs its proofs) and
//! certificate-bound tokens (RFC 8705; the test makes a CA, a server certificate and two client
//! certificates with openssl, and talks to Envoy's TLS listeners with curl).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use oauth_filter::jwt::keys::{public_jwk, sha256_b64url};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::tokens::{b64, now, Signer};
use support::{request_id, Envoy, Oidc, Response, Upstream};

/// The client's DPoP key.
struct Client {
    key: Signer,
}

impl Client {
    fn new() -> Client {
        Client {
            key: Signer::es256(""),
        }
    }

    fn thumbprint(&self) -> String {
        public_jwk(self.key.jwk().as_object().unwrap()).unwrap().1
    }

    /// A proof for `method` `htu`, for `token` (none at the token endpoint), with `extra`
    /// claims.
    fn proof(&self, method: &str, htu: &str, token: Option<&str>, extra: Value) -> String {
        let mut claims = json!({
            "jti": format!("{:032x}", rand::random::<u128>()), "htm": method, "htu": htu,
            "iat": now(),
        });
        if let Some(t) = token {
            claims["ath"] = json!(sha256_b64url(t.as_bytes()));
        }
        if let (Value::Object(c), Value::Object(e)) = (&mut claims, extra) {
            c.extend(e);
        }
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.key.jwk()});
        self.key.token_with(&header, &claims)
    }
}

/// A client-credentials token from the test server (scope `orders:read`), with extra request
/// headers (a DPoP proof, a client certificate).
fn token(oidc: &Oidc, client: (&str, &str), resource: &str, extra: &[(&str, &[u8])]) -> Value {
    support::token_answer(oidc.port, client, resource, "orders:read", extra)
}

/// A DPoP-bound token for `client`'s key.
fn dpop_token(oidc: &Oidc, client: &Client, resource: &str) -> String {
    // node-oidc-provider checks htu against the URL the request names (its Host header).
    let proof = client.proof("POST", "http://api.test/token", None, json!({}));
    let answer = token(
        oidc,
        ("gateway", "gateway-secret"),
        resource,
        &[("dpop", proof.as_bytes())],
    );
    assert_eq!(answer["token_type"], "DPoP", "{answer}");
    answer["access_token"].as_str().unwrap().to_string()
}

fn provider(oidc: &Oidc, extra: Value) -> Value {
    let mut p = json!({
        "issuer": oidc.issuer, "audiences": ["orders-api"],
        "remote_jwks": {"http_uri": {"uri": format!("{}/jwks", oidc.issuer), "cluster": "oidc", "timeout": "2s"}},
        "claim_to_headers": [{"header_name": "x-client-id", "claim_name": "client_id"}]
    });
    if let (Value::Object(p), Value::Object(e)) = (&mut p, extra) {
        p.extend(e);
    }
    p
}

fn filter_config(oidc: &Oidc) -> String {
    let introspection = json!({
        "issuer": oidc.issuer, "audiences": ["orders-api"], "dpop": {},
        "introspection": {
            "http_uri": {"uri": format!("{}/token/introspection", oidc.issuer), "cluster": "oidc", "timeout": "2s"},
            "client_id": "gateway", "client_secret": "gateway-secret"
        }
    });
    json!({
        "realm": "orders",
        "providers": {
            "dpop": provider(oidc, json!({"dpop": {}})),
            "strict": provider(oidc, json!({"dpop": {"required": true, "nonce": true}})),
            "plain": provider(oidc, json!({})),
            "mtls": provider(oidc, json!({"require_certificate_bound": true})),
            "intro": introspection
        },
        "rules": (["dpop", "strict", "plain", "mtls", "intro"].map(|p| json!({
            "match": {"prefix": format!("/{p}")}, "requires": {"provider_name": p}
        })))
    })
    .to_string()
}

const CERTS_SCRIPT: &str = r#"
ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
openssl req -x509 $ec -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca
printf 'subjectAltName=IP:127.0.0.1\n' > server.ext
for name in server alice mallory; do
  openssl req $ec -keyout $name.key -out $name.csr -subj /CN=$name
  ext=""; [ $name = server ] && ext="-extfile server.ext"
  openssl x509 -req -in $name.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out $name.pem $ext
done
"#;

/// The certificates of the TLS listeners: a CA, the server's (for 127.0.0.1) and two clients'.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// Made with the openssl commands of the README's walk-through.
    fn make(dir: &Path) -> Certs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("bash")
            .args(["-ec", CERTS_SCRIPT])
            .current_dir(dir)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "making certificates: {log}");
        Certs {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    fn pem(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.pem"))).unwrap()
    }
}

/// A TLS copy of the bootstrap's first listener on `port`; `require`: client certificates
/// are required (else asked for, and checked against the CA when given).
fn tls_listener(plain: &Value, port: u16, certs: &Certs, require: bool) -> Value {
    let mut l = plain.clone();
    l["name"] = json!(format!("tls-{port}"));
    l["address"]["socket_address"]["port_value"] = json!(port);
    l["filter_chains"][0]["transport_socket"] = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": require,
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": certs.path("server.pem")},
                                      "private_key": {"filename": certs.path("server.key")}}],
                "validation_context": {"trusted_ca": {"filename": certs.path("ca.pem")}}
            }
        }
    });
    l
}

/// A request with curl over TLS, with client certificate `cert` (a name in `certs`) or none.
fn curl(
    port: u16,
    path: &str,
    cert: Option<&str>,
    certs: &Certs,
    headers: &[(&str, &str)],
) -> Response {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-D",
        "-",
        "--max-time",
        "10",
        "--cacert",
        &certs.path("ca.pem"),
    ]);
    if let Some(name) = cert {
        cmd.args([
            "--cert",
            &certs.path(&format!("{name}.pem")),
            "--key",
            &certs.path(&format!("{name}.key")),
        ]);
    }
    for (n, v) in headers {
        cmd.args(["-H", &format!("{n}: {v}")]);
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    support::parse_response(&out.stdout)
}

struct Env {
    envoy: Envoy,
    upstream: Upstream,
}

impl Env {
    /// A plain HTTP request with these headers; the response and what the upstream saw.
    fn send(&self, path: &str, headers: &[(&str, &str)]) -> (Response, Option<support::Seen>) {
        let id = request_id();
        let mut all: Vec<(&str, &[u8])> = vec![("x-test-id", id.as_bytes())];
        all.extend(headers.iter().map(|(n, v)| (*n, v.as_bytes())));
        let r = self.envoy.get(path, &all);
        (r, self.upstream.saw(&id))
    }

    fn refused(&self, path: &str, headers: &[(&str, &str)], status: u16, error: &str) -> Response {
        let (r, seen) = self.send(path, headers);
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert_eq!(r.json()["error"], error, "{path}: {}", r.body);
        assert!(
            seen.is_none(),
            "{path}: the upstream received a refused request"
        );
        r
    }
}

impl Env {
    /// [`Env::refused`] for a request with `authorization` and one DPoP `proof`.
    fn proof_refused(
        &self,
        path: &str,
        auth: &str,
        proof: &str,
        status: u16,
        error: &str,
    ) -> Response {
        self.refused(
            path,
            &[("authorization", auth), ("dpop", proof)],
            status,
            error,
        )
    }
}

/// Every `WWW-Authenticate` of a response.
fn challenges(r: &Response) -> Vec<&str> {
    r.headers
        .iter()
        .filter(|(n, _)| n == "www-authenticate")
        .map(|(_, v)| v.as_str())
        .collect()
}

fn main() {
    let mut run = support::Runner::new();
    let wasm = support::wasm_module();
    let oidc = Oidc::start().unwrap_or_else(|why| panic!("{why}"));
    let upstream = Upstream::start();
    let (port, admin) = (support::free_port(), support::free_port());
    let (tls_required, tls_optional) = (support::free_port(), support::free_port());
    let certs = Certs::make(
        &std::env::temp_dir().join(format!("oauth-filter-certs-{}", std::process::id())),
    );
    let mut boot = support::bootstrap_with(
        port,
        admin,
        upstream.port,
        &wasm,
        &filter_config(&oidc),
        &[("oidc", oidc.port)],
    );
    let plain = boot["static_resources"]["listeners"][0].clone();
    let listeners = boot["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap();
    listeners.push(tls_listener(&plain, tls_required, &certs, true));
    listeners.push(tls_listener(&plain, tls_optional, &certs, false));
    let envoy = Envoy::start_workers(&boot, port, admin, 2).unwrap_or_else(|log| panic!("{log}"));
    let env = Env { envoy, upstream };
    let client = Client::new();
    let bound = dpop_token(&oidc, &client, "https://orders.example");
    let htu = |path: &str| format!("http://api.test{path}");
    let dpop_auth = format!("DPoP {bound}");

    run.case(
        "a DPoP-bound JWT passes with its proof, and the proof is not sent upstream",
        || {
            let claims: Value =
                serde_json::from_slice(&support::tokens::unb64(bound.split('.').nth(1).unwrap()))
                    .unwrap();
            assert_eq!(claims["cnf"]["jkt"], client.thumbprint());
            let proof = client.proof("GET", &htu("/dpop/orders"), Some(&bound), json!({}));
            let (r, seen) = env.send(
                "/dpop/orders?page=2",
                &[("authorization", &dpop_auth), ("dpop", &proof)],
            );
            assert_eq!(r.status, 200, "{}", r.body);
            let seen = seen.unwrap();
            assert_eq!(seen.header("x-client-id"), Some("gateway"));
            assert_eq!(
                (seen.header("authorization"), seen.header("dpop")),
                (None, None)
            );
        },
    );

    run.case("a proof passes once, across both workers", || {
        // Fresh proofs, each sent eight times at once on eight connections (Envoy spreads
        // them over its two workers): each passes exactly once.
        for round in 0..10 {
            let path = format!("/dpop/once/{round}");
            let proof = client.proof("GET", &htu(&path), Some(&bound), json!({}));
            let headers = [("authorization", dpop_auth.as_str()), ("dpop", &proof)];
            let statuses: Vec<u16> = std::thread::scope(|s| {
                let sends: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| env.send(&path, &headers).0.status))
                    .collect();
                sends.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let passed = statuses.iter().filter(|s| **s == 200).count();
            let refused = statuses.iter().filter(|s| **s == 401).count();
            assert_eq!((passed, refused), (1, 7), "{statuses:?}");
        }
        let proof = client.proof("GET", &htu("/dpop/once"), Some(&bound), json!({}));
        assert_eq!(
            env.send(
                "/dpop/once",
                &[("authorization", &dpop_auth), ("dpop", &proof)]
            )
            .0
            .status,
            200
        );
        let r = env.proof_refused("/dpop/once", &dpop_auth, &proof, 401, "invalid_dpop_proof");
        assert!(r.body.contains("used before"), "{}", r.body);
        assert_eq!(env.envoy.counter("oauth_filter.dpop.replays"), 71);
    });

    run.case("bad proofs are refused with a DPoP challenge", || {
        let other_path = client.proof("GET", &htu("/dpop/other"), Some(&bound), json!({}));
        let r = env.proof_refused(
            "/dpop/orders",
            &dpop_auth,
            &other_path,
            401,
            "invalid_dpop_proof",
        );
        let all = challenges(&r);
        assert_eq!(all[0], "Bearer realm=\"orders\"", "{all:?}");
        assert!(
            all[1].starts_with("DPoP realm=\"orders\", algs=\"ES256 ")
                && all[1].contains(
                    "error=\"invalid_dpop_proof\", error_description=\"The DPoP proof's htu"
                ),
            "{all:?}"
        );
        let at = htu("/dpop/orders");
        let table = [
            ("POST", at.as_str(), Some(bound.as_str()), json!({}), "htm"),
            (
                "GET",
                &at,
                Some(&bound),
                json!({"iat": now() - 600}),
                "too old",
            ),
            ("GET", &at, None, json!({}), "ath"),
            (
                "GET",
                &at,
                Some(&bound),
                json!({"pad": "x".repeat(9000)}),
                "too large",
            ),
        ];
        for (method, uri, token, extra, why) in table {
            let proof = client.proof(method, uri, token, extra);
            let headers = [("authorization", dpop_auth.as_str()), ("dpop", &proof)];
            let r = env.refused("/dpop/orders", &headers, 401, "invalid_dpop_proof");
            assert!(r.body.contains(why), "{why}: {}", r.body);
        }
        env.refused(
            "/dpop/orders",
            &[("authorization", &dpop_auth)],
            401,
            "invalid_dpop_proof",
        );
        // Signed by another key: the binding fails (invalid_token, RFC 9449 Figure 16).
        let stranger = Client::new().proof("GET", &htu("/dpop/orders"), Some(&bound), json!({}));
        let r = env.proof_refused("/dpop/orders", &dpop_auth, &stranger, 401, "invalid_token");
        assert!(challenges(&r)[1].contains("error=\"invalid_token\""));
        let (p1, p2) = (
            client.proof("GET", &htu("/dpop/orders"), Some(&bound), json!({})),
            client.proof("GET", &htu("/dpop/orders"), Some(&bound), json!({})),
        );
        env.refused(
            "/dpop/orders",
            &[("authorization", &dpop_auth), ("dpop", &p1), ("dpop", &p2)],
            400,
            "invalid_request",
        );
    });

    run.case(
        "a DPoP-bound token is no bearer token, for any provider",
        || {
            let bearer = format!("Bearer {bound}");
            for path in ["/dpop/orders", "/plain/orders"] {
                let r = env.refused(path, &[("authorization", &bearer)], 401, "invalid_token");
                assert!(r.body.contains("bound to a DPoP key"), "{}", r.body);
                assert!(challenges(&r)[0]
                    .starts_with("Bearer realm=\"orders\", error=\"invalid_token\""));
            }
            // Without a dpop block, the DPoP scheme is not one the provider reads.
            let proof = client.proof("GET", &htu("/plain/orders"), Some(&bound), json!({}));
            let r = env.proof_refused("/plain/orders", &dpop_auth, &proof, 401, "missing_token");
            assert_eq!(challenges(&r), ["Bearer realm=\"orders\""]);
        },
    );

    run.case(
        "dpop.required and nonces: use_dpop_nonce, then the nonce is taken",
        || {
            let unbound = oidc.token("https://orders.example", "orders:read");
            let r = env.refused(
                "/strict/orders",
                &[("authorization", &format!("Bearer {unbound}"))],
                401,
                "invalid_token",
            );
            let all = challenges(&r);
            assert_eq!(all.len(), 1, "{all:?}");
            assert!(
                all[0].starts_with("DPoP realm=\"orders\", algs=")
                    && r.body.contains("must be bound"),
                "{all:?}"
            );
            let first = client.proof("GET", &htu("/strict/orders"), Some(&bound), json!({}));
            let r = env.proof_refused("/strict/orders", &dpop_auth, &first, 401, "use_dpop_nonce");
            assert!(challenges(&r)[0].contains("error=\"use_dpop_nonce\""));
            let nonce = r
                .header("dpop-nonce")
                .expect("a DPoP-Nonce header")
                .to_string();
            let again = client.proof(
                "GET",
                &htu("/strict/orders"),
                Some(&bound),
                json!({"nonce": nonce}),
            );
            let (r, seen) = env.send(
                "/strict/orders",
                &[("authorization", &dpop_auth), ("dpop", &again)],
            );
            assert_eq!(r.status, 200, "{}", r.body);
            assert!(seen.is_some());
            // The nonce is good on every worker, for a window, and for other proofs.
            for _ in 0..4 {
                let more = client.proof(
                    "GET",
                    &htu("/strict/orders"),
                    Some(&bound),
                    json!({"nonce": nonce}),
                );
                assert_eq!(
                    env.send(
                        "/strict/orders",
                        &[("authorization", &dpop_auth), ("dpop", &more)]
                    )
                    .0
                    .status,
                    200
                );
            }
            let forged = client.proof(
                "GET",
                &htu("/strict/orders"),
                Some(&bound),
                json!({"nonce": b64([0u8; 24])}),
            );
            env.proof_refused("/strict/orders", &dpop_auth, &forged, 401, "use_dpop_nonce");
        },
    );

    run.case(
        "an opaque DPoP-bound token: cnf.jkt from the introspection answer",
        || {
            let opaque = dpop_token(&oidc, &client, "https://opaque.example");
            assert!(!opaque.contains('.'));
            let auth = format!("DPoP {opaque}");
            let proof = client.proof("GET", &htu("/intro/orders"), Some(&opaque), json!({}));
            let (r, seen) = env.send(
                "/intro/orders",
                &[("authorization", &auth), ("dpop", &proof)],
            );
            assert_eq!(r.status, 200, "{}", r.body);
            assert!(seen.is_some());
            let stranger =
                Client::new().proof("GET", &htu("/intro/orders"), Some(&opaque), json!({}));
            env.proof_refused("/intro/orders", &auth, &stranger, 401, "invalid_token");
            env.refused(
                "/intro/orders",
                &[("authorization", &format!("Bearer {opaque}"))],
                401,
                "invalid_token",
            );
        },
    );

    run.case(
        "DPoP over TLS: htu names https and the authority as sent",
        || {
            let path = "/dpop/tls";
            for (scheme, status) in [("https", 200), ("http", 401)] {
                let htu = format!("{scheme}://127.0.0.1:{tls_optional}{path}");
                let proof = client.proof("GET", &htu, Some(&bound), json!({}));
                let headers = [("authorization", dpop_auth.as_str()), ("dpop", &proof)];
                let r = curl(tls_optional, path, None, &certs, &headers);
                assert_eq!(r.status, status, "{htu}: {}", r.body);
            }
        },
    );

    run.case(
        "the README's walk-through: proofs made by envoy/dpop/proof.sh with openssl",
        || {
            let script = support::root().join("envoy/dpop/proof.sh");
            let key = certs.dir.join("dpop.key");
            let sh = |args: &[&str]| {
                let out = Command::new("bash")
                    .arg(&script)
                    .args(args)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8(out.stdout).unwrap().trim().to_string()
            };
            let key = key.to_str().unwrap();
            sh(&["key", key]);
            let proof = sh(&["proof", key, "POST", "http://api.test/token"]);
            let answer = token(
                &oidc,
                ("gateway", "gateway-secret"),
                "https://orders.example",
                &[("dpop", proof.as_bytes())],
            );
            let t = answer["access_token"].as_str().unwrap();
            let claims: Value =
                serde_json::from_slice(&support::tokens::unb64(t.split('.').nth(1).unwrap()))
                    .unwrap();
            assert_eq!(
                claims["cnf"]["jkt"].as_str(),
                Some(sh(&["jkt", key]).as_str())
            );
            let auth = format!("DPoP {t}");
            for _ in 0..3 {
                let proof = sh(&["proof", key, "GET", "http://api.test/dpop/orders", t]);
                let (r, seen) = env.send(
                    "/dpop/orders",
                    &[("authorization", &auth), ("dpop", &proof)],
                );
                assert_eq!(r.status, 200, "{}", r.body);
                assert!(seen.is_some());
            }
        },
    );

    run.case(
        "behind a TLS-terminating proxy: X-Forwarded-Proto sets the scheme",
        || {
            let path = "/dpop/behind";
            for (xfp, scheme, status) in [("https", "https", 200), ("https", "http", 401)] {
                let proof = client.proof(
                    "GET",
                    &format!("{scheme}://api.test{path}"),
                    Some(&bound),
                    json!({}),
                );
                let headers = [
                    ("authorization", dpop_auth.as_str()),
                    ("dpop", &proof),
                    ("x-forwarded-proto", xfp),
                ];
                let (r, _) = env.send(path, &headers);
                assert_eq!(r.status, status, "{scheme}: {}", r.body);
            }
        },
    );

    run.case(
        "a certificate-bound token passes only with its certificate",
        || {
            let pem = certs.pem("alice");
            let encoded: String = pem.bytes().map(|b| format!("%{b:02X}")).collect();
            let answer = token(
                &oidc,
                ("bound-client", "bound-secret"),
                "https://orders.example",
                &[("x-client-cert", encoded.as_bytes())],
            );
            let t = answer["access_token"].as_str().unwrap().to_string();
            let auth = format!("Bearer {t}");
            let h = [("authorization", auth.as_str())];
            for port in [tls_required, tls_optional] {
                let r = curl(port, "/plain/orders", Some("alice"), &certs, &h);
                assert_eq!(r.status, 200, "{}", r.body);
                let r = curl(port, "/mtls/orders", Some("alice"), &certs, &h);
                assert_eq!(r.status, 200, "{}", r.body);
                let r = curl(port, "/plain/orders", Some("mallory"), &certs, &h);
                assert_eq!(r.status, 401, "{}", r.body);
                assert!(
                    r.body.contains("not the one the access token is bound to"),
                    "{}",
                    r.body
                );
            }
            let r = curl(tls_optional, "/plain/orders", None, &certs, &h);
            assert!(
                r.status == 401 && r.body.contains("none was presented"),
                "{}",
                r.body
            );
            let r = env.refused("/plain/orders", &h, 401, "invalid_token");
            assert!(r.body.contains("mutual TLS"), "{}", r.body);
            // require_certificate_bound: an unbound token fails even over mutual TLS.
            let unbound = format!(
                "Bearer {}",
                oidc.token("https://orders.example", "orders:read")
            );
            let r = curl(
                tls_required,
                "/mtls/orders",
                Some("alice"),
                &certs,
                &[("authorization", &unbound)],
            );
            assert!(
                r.status == 401 && r.body.contains("must be bound to a client certificate"),
                "{}",
                r.body
            );
            assert_eq!(
                curl(
                    tls_required,
                    "/plain/orders",
                    Some("alice"),
                    &certs,
                    &[("authorization", &unbound)]
                )
                .status,
                200
            );
        },
    );

    let code = run.finish();
    let _ = std::fs::remove_dir_all(&certs.dir);
    drop(env);
    std::process::exit(code);
}
