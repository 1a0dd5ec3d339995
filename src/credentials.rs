//! The filter as an OAuth client (the client credentials grant, RFC 6749 §4.4), for upstreams
//! that want the gateway's own token: the token request, what the token endpoint's answer
//! gives, the state every worker VM shares per client (the token, when to refresh it, failed
//! fetches), and whether an upstream's answer refuses the token. Pure: the shell passes the
//! time in and carries the records through proxy-wasm shared data.

use crate::config::UpstreamClient;
use crate::decision::CredentialNow;
use crate::introspection::{client_post, form_encode, Call};
use crate::json;
use crate::remote::backoff_ms;
use serde_json::{json, Value};

/// The largest token endpoint answer read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The longest access token the filter will put in a header.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The lifetime assumed when the answer has no `expires_in` (RFC 6749 §5.1 only recommends it).
pub const DEFAULT_LIFETIME_MS: u64 = 300_000;
/// Shorter lifetimes are refused: the token would expire before it could be used.
pub const MIN_LIFETIME_MS: u64 = 2_000;
/// A token is not sent in the last second of its life (it could expire on the way).
pub const EXPIRY_SLACK_MS: u64 = 1_000;
/// After the upstream refused a token, another refusal drops the new token only this much
/// later: an upstream that refuses every token costs the token endpoint four calls a minute,
/// not one per request.
pub const MIN_DROP_INTERVAL_MS: u64 = 15_000;

/// The token request (RFC 6749 §4.4.2), with `scope`, and `audience` or `resource` (RFC 8707)
/// when configured; the client authenticates as its `auth_method` says.
pub fn request(client: &UpstreamClient) -> Option<Call> {
    let mut body = "grant_type=client_credentials".to_string();
    if !client.scopes.is_empty() {
        body.push_str(&format!("&scope={}", form_encode(&client.scopes.join(" "))));
    }
    if let Some(audience) = &client.audience {
        body.push_str(&format!("&audience={}", form_encode(audience)));
    }
    if let Some(resource) = &client.resource {
        body.push_str(&format!("&resource={}", form_encode(resource)));
    }
    client_post(
        &client.endpoint,
        &client.client_id,
        &client.client_secret,
        client.auth,
        body,
    )
}

/// A token the endpoint issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub token: String,
    pub lifetime_ms: u64,
}

/// Reads the token endpoint's answer (RFC 6749 §5.1): HTTP 200, a JSON object with an
/// `access_token` that can stand in a header, `token_type` Bearer (any case), and `expires_in`
/// (seconds, as a number or a string of digits; absent: [`DEFAULT_LIFETIME_MS`]). Otherwise why
/// not, quoting the endpoint's `error` and `error_description` (RFC 6749 §5.2) when it gave them:
/// never the request, so never the secret.
pub fn parse(status: Option<&str>, body: &[u8]) -> Result<Issued, String> {
    let Some(status) = status else {
        return Err("no answer (timeout or connection failure)".into());
    };
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(format!(
            "HTTP {status}, an answer larger than {MAX_RESPONSE_BYTES} bytes"
        ));
    }
    let doc = json::parse_object(body).ok();
    if status != "200" {
        let said = doc.as_ref().map_or(String::new(), |d| {
            let field = |name: &str| d.get(name).and_then(Value::as_str).map(printable);
            match (field("error"), field("error_description")) {
                (Some(e), Some(d)) => format!(", error \"{e}\": {d}"),
                (Some(e), None) => format!(", error \"{e}\""),
                _ => String::new(),
            }
        });
        return Err(format!("HTTP {}{said}", printable(status)));
    }
    let Some(doc) = doc else {
        return Err("HTTP 200, but the answer is not a JSON object".into());
    };
    let token = match doc.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() => t,
        _ => return Err("the answer has no access_token".into()),
    };
    if token.len() > MAX_TOKEN_BYTES || !token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(
            "the access_token cannot be sent in a header (not visible ASCII, or too long)".into(),
        );
    }
    match doc.get("token_type").and_then(Value::as_str) {
        Some(t) if t.eq_ignore_ascii_case("bearer") => {}
        Some(t) => {
            return Err(format!(
                "the token_type is \"{}\", not Bearer",
                printable(t)
            ))
        }
        None => return Err("the answer has no token_type (RFC 6749 §5.1 requires it)".into()),
    }
    let lifetime_ms = match doc.get("expires_in") {
        None | Some(Value::Null) => DEFAULT_LIFETIME_MS,
        Some(v) => {
            let seconds = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                    s.parse::<f64>().ok()
                }
                _ => None,
            };
            match seconds {
                Some(s) if s.is_finite() && s >= 0.0 => (s.min(1e9) * 1000.0) as u64,
                _ => return Err("the expires_in is not a number of seconds".into()),
            }
        }
    };
    if lifetime_ms < MIN_LIFETIME_MS {
        return Err(format!(
            "the token expires in {lifetime_ms} ms, too soon to be used"
        ));
    }
    Ok(Issued {
        token: token.clone(),
        lifetime_ms,
    })
}

/// Text from the endpoint, safe for one log line: visible ASCII and spaces, 200 bytes at most.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .take(200)
        .collect()
}

/// What all VMs know about one client's token (the value in shared data).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The token; empty: none (never fetched, or dropped).
    pub token: String,
    /// When it was obtained and when it expires (ms since the epoch).
    pub obtained_at: u64,
    pub expires_at: u64,
    /// Failed fetches since the last good one, and when the last one failed.
    pub failures: u32,
    pub failed_at: u64,
    /// When a token was last dropped because the upstream refused it.
    pub dropped_at: u64,
}

impl Record {
    pub fn to_bytes(&self) -> Vec<u8> {
        json!({
            "token": self.token, "obtained_at": self.obtained_at, "expires_at": self.expires_at,
            "failures": self.failures, "failed_at": self.failed_at, "dropped_at": self.dropped_at,
        })
        .to_string()
        .into_bytes()
    }

    /// Reads a record; anything unreadable is an empty record (as if nothing was fetched).
    pub fn from_bytes(bytes: &[u8]) -> Record {
        let f = json::Fields::parse(bytes);
        Record {
            token: f.string("token"),
            obtained_at: f.u64("obtained_at"),
            expires_at: f.u64("expires_at"),
            failures: f.u32("failures"),
            failed_at: f.u64("failed_at"),
            dropped_at: f.u64("dropped_at"),
        }
    }

    /// The token as a request at `now` finds it.
    pub fn now(&self, now: u64) -> CredentialNow<'_> {
        match self.usable(now) {
            Some(token) => CredentialNow::Ready(token),
            None if self.failures > 0 => CredentialNow::Unavailable,
            None => CredentialNow::Pending,
        }
    }

    /// The token, if it may be sent at `now`.
    pub fn usable(&self, now: u64) -> Option<&str> {
        (!self.token.is_empty() && now.saturating_add(EXPIRY_SLACK_MS) < self.expires_at)
            .then_some(self.token.as_str())
    }

    /// When the token should be replaced: `margin` before it expires, or at half its lifetime
    /// when that comes first (a short `expires_in`).
    pub fn refresh_at(&self, margin_ms: u64) -> u64 {
        let lifetime = self.expires_at.saturating_sub(self.obtained_at);
        self.expires_at.saturating_sub(margin_ms.min(lifetime / 2))
    }

    /// Whether the last fetch failed and the backoff after it has not ended at `now`.
    pub fn backing_off(&self, now: u64) -> bool {
        self.failures > 0 && now < self.failed_at.saturating_add(backoff_ms(self.failures))
    }

    /// Whether a fetch is due at `now`: after a failure, when its backoff ends; without a
    /// usable token, at once; with one, at its refresh time.
    pub fn fetch_due(&self, margin_ms: u64, now: u64) -> bool {
        if self.failures > 0 {
            return !self.backing_off(now);
        }
        match self.usable(now) {
            None => true,
            Some(_) => now >= self.refresh_at(margin_ms),
        }
    }

    /// The record after a token was obtained at `now`.
    pub fn succeeded(&self, issued: &Issued, now: u64) -> Record {
        Record {
            token: issued.token.clone(),
            obtained_at: now,
            expires_at: now.saturating_add(issued.lifetime_ms),
            failures: 0,
            failed_at: 0,
            dropped_at: self.dropped_at,
        }
    }

    /// The record after a failed fetch at `now`: a token still usable stays in use.
    pub fn failed(&self, now: u64) -> Record {
        Record {
            failures: self.failures.saturating_add(1),
            failed_at: now,
            ..self.clone()
        }
    }

    /// The identity of the current token (when it was obtained; one fetch at a time, under the
    /// lease, so no two tokens share it), remembered for each request it was sent with.
    pub fn generation(&self) -> u64 {
        self.obtained_at
    }

    /// The record once the upstream refused the token of `generation` at `now`: without it, so
    /// that the next request fetches a new one; `None` if that token is no longer the current
    /// one (the refusal is about a token already replaced) or the last drop was too recent.
    pub fn dropped(&self, generation: u64, now: u64) -> Option<Record> {
        let recent =
            self.dropped_at > 0 && now < self.dropped_at.saturating_add(MIN_DROP_INTERVAL_MS);
        let current = !self.token.is_empty() && self.generation() == generation;
        (current && !recent).then(|| Record {
            token: String::new(),
            expires_at: 0,
            dropped_at: now,
            ..self.clone()
        })
    }
}

/// Whether an upstream's answer refuses the token it was sent: status 401 and a `Bearer`
/// challenge with `error="invalid_token"` (RFC 6750 §3.1) in one of its `WWW-Authenticate`
/// values (a value may hold several challenges, RFC 9110 §11.6.1).
pub fn upstream_refused(status: &[u8], challenges: &[&[u8]]) -> bool {
    status == b"401"
        && challenges
            .iter()
            .any(|c| std::str::from_utf8(c).is_ok_and(bearer_invalid_token))
}

fn bearer_invalid_token(value: &str) -> bool {
    let mut bearer = false;
    for item in split_outside_quotes(value) {
        let item = item.trim();
        // `scheme`, `scheme param=value` (a new challenge) or `param=value` (the same one).
        let param = match item.split_once([' ', '=']) {
            Some((scheme, rest)) if item.as_bytes().get(scheme.len()) == Some(&b' ') => {
                let rest = rest.trim_start();
                if rest.starts_with('=') {
                    // `param = value` with spaces around `=`.
                    item
                } else {
                    bearer = scheme.eq_ignore_ascii_case("bearer");
                    rest
                }
            }
            Some(_) => item,
            None => {
                bearer = item.eq_ignore_ascii_case("bearer");
                continue;
            }
        };
        if let Some((name, value)) = param.split_once('=') {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            if bearer && name.trim().eq_ignore_ascii_case("error") && value == "invalid_token" {
                return true;
            }
        }
    }
    false
}

/// Splits at commas that are not inside a quoted string.
fn split_outside_quotes(text: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// What a shell counts of a client's token requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// A token request sent (or tried).
    Fetch,
    /// One of them while the current token was still usable.
    Refresh,
    /// One that failed.
    Failure,
}

/// One upstream client's token requests as a shell carries them out: where its record lives
/// (shared data in Wasm, the process's state natively), how the request goes out, its
/// counters. The flow ([`send`], [`answered`], [`failed`]) is written once, here.
pub trait Obtaining {
    fn client(&self) -> &UpstreamClient;
    /// Posts the token request (the shell keeps the call as under way); `Err`: why it could
    /// not be sent.
    fn post(&mut self, call: &Call) -> Result<(), String>;
    fn count(&mut self, counted: Counted);
    /// The request is over: the record changed by `change`, no call under way, the shell's
    /// lease released (the shell wakes the requests waiting for the token). The record now.
    fn ended(&mut self, change: &dyn Fn(&Record) -> Record) -> Record;
}

/// Sends the client's token request (`refresh`: its token is still usable); a request that
/// cannot be sent fails at once.
pub fn send(host: &mut impl Obtaining, refresh: bool, now: u64) {
    host.count(Counted::Fetch);
    if refresh {
        host.count(Counted::Refresh);
    }
    let sent = match request(host.client()) {
        Some(call) => host.post(&call),
        None => Err("the token endpoint URL is not usable".to_string()),
    };
    if let Err(why) = sent {
        failed(host, &why, now);
    }
}

/// The token endpoint's answer (see [`parse`]): the token kept, or the request failed.
pub fn answered(host: &mut impl Obtaining, status: Option<&str>, body: &[u8], now: u64) {
    match parse(status, body) {
        Ok(issued) => {
            host.ended(&|r| r.succeeded(&issued, now));
            log::info!(
                "oauth-filter: upstream client {}: token obtained, valid for {} s",
                host.client().name,
                issued.lifetime_ms / 1000
            );
        }
        Err(why) => failed(host, &why, now),
    }
}

/// A token request failed: a token still usable stays in use, requests that have none get 503,
/// and the next request waits for the backoff. The log line names the client, the endpoint and
/// what it answered (never the secret).
pub fn failed(host: &mut impl Obtaining, why: &str, now: u64) {
    let record = host.ended(&|r| r.failed(now));
    host.count(Counted::Failure);
    let outcome = if record.usable(now).is_some() {
        "the current token stays in use"
    } else {
        "requests that need it get 503"
    };
    let client = host.client();
    log::warn!(
        "oauth-filter: upstream client {}: token request to {} failed: {why}; {outcome}; retry in {} ms",
        client.name,
        client.endpoint.uri,
        backoff_ms(record.failures)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClientAuth, HttpUri};
    use base64::Engine;

    fn client(auth: ClientAuth) -> UpstreamClient {
        UpstreamClient {
            name: "orders".into(),
            endpoint: HttpUri {
                uri: "https://idp.test/oauth/token".into(),
                cluster: "idp".into(),
                timeout_ms: 2000,
            },
            client_id: "gate way".into(),
            client_secret: "s3cr:t".into(),
            auth,
            scopes: vec!["orders:read".into(), "orders:write".into()],
            audience: None,
            resource: Some("https://orders.example/".into()),
            refresh_margin_ms: 60_000,
        }
    }

    /// A shell with one record, sending what `refuse` allows, noting what happened.
    struct FakeClient {
        spec: UpstreamClient,
        record: Record,
        refuse: bool,
        notes: Vec<String>,
    }

    impl Obtaining for FakeClient {
        fn client(&self) -> &UpstreamClient {
            &self.spec
        }
        fn post(&mut self, call: &Call) -> Result<(), String> {
            if self.refuse {
                return Err("cannot call cluster idp".into());
            }
            self.notes.push(format!("post {}", call.cluster));
            Ok(())
        }
        fn count(&mut self, counted: Counted) {
            self.notes.push(format!("{counted:?}"));
        }
        fn ended(&mut self, change: &dyn Fn(&Record) -> Record) -> Record {
            self.record = change(&self.record);
            self.notes.push("ended".into());
            self.record.clone()
        }
    }

    #[test]
    fn a_request_finds_the_token_ready_pending_or_unavailable() {
        let record = Record::default();
        assert_eq!(record.now(0), CredentialNow::Pending);
        assert_eq!(record.failed(0).now(1), CredentialNow::Unavailable);
        let issued = Issued {
            token: "up".into(),
            lifetime_ms: 60_000,
        };
        let kept = record.succeeded(&issued, 0);
        assert_eq!(kept.now(1), CredentialNow::Ready("up"));
        assert_eq!(kept.now(60_000), CredentialNow::Pending);
        assert_eq!(kept.failed(59_000).now(60_000), CredentialNow::Unavailable);
    }

    #[test]
    fn a_token_is_requested_kept_and_refreshed() {
        let mut host = FakeClient {
            spec: client(ClientAuth::Basic),
            record: Record::default(),
            refuse: false,
            notes: Vec::new(),
        };
        send(&mut host, false, 1_000);
        let body = br#"{"access_token": "up", "token_type": "Bearer", "expires_in": 120}"#;
        answered(&mut host, Some("200"), body, 1_100);
        assert_eq!(host.record.usable(2_000), Some("up"));
        send(&mut host, true, 70_000);
        answered(&mut host, Some("500"), b"{}", 70_100);
        assert_eq!(host.record.usable(70_200), Some("up"));
        assert_eq!(host.record.failures, 1);
        host.refuse = true;
        send(&mut host, false, 80_000);
        assert_eq!(host.record.failures, 2);
        assert_eq!(
            host.notes,
            [
                "Fetch", "post idp", "ended", "Fetch", "Refresh", "post idp", "ended", "Failure",
                "Fetch", "ended", "Failure"
            ]
        );
    }

    #[test]
    fn token_requests() {
        let call = request(&client(ClientAuth::Basic)).unwrap();
        assert_eq!(
            call.body,
            "grant_type=client_credentials&scope=orders%3Aread+orders%3Awrite&resource=https%3A%2F%2Forders.example%2F"
        );
        let basic = call
            .headers
            .iter()
            .find(|(n, _)| n == "authorization")
            .unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.1.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, b"gate+way:s3cr%3At");
        assert!(call
            .headers
            .contains(&(":path".into(), "/oauth/token".into())));

        let mut c = client(ClientAuth::Post);
        c.scopes.clear();
        c.resource = None;
        c.audience = Some("orders-api".into());
        let call = request(&c).unwrap();
        assert!(!call.headers.iter().any(|(n, _)| n == "authorization"));
        assert_eq!(
            call.body,
            "grant_type=client_credentials&audience=orders-api&client_id=gate+way&client_secret=s3cr%3At"
        );
        // The secret never shows in a Debug print of the configuration.
        assert!(!format!("{c:?}").contains("s3cr"));
    }

    #[test]
    fn answers() {
        let ok = parse(
            Some("200"),
            br#"{"access_token":"abc.def","token_type":"Bearer","expires_in":3600}"#,
        );
        assert_eq!(
            ok,
            Ok(Issued {
                token: "abc.def".into(),
                lifetime_ms: 3_600_000
            })
        );
        let as_text = parse(
            Some("200"),
            br#"{"access_token":"t","token_type":"bearer","expires_in":"60"}"#,
        );
        assert_eq!(as_text.unwrap().lifetime_ms, 60_000);
        let no_expiry = parse(
            Some("200"),
            br#"{"access_token":"t","token_type":"BEARER"}"#,
        );
        assert_eq!(no_expiry.unwrap().lifetime_ms, DEFAULT_LIFETIME_MS);

        let refused = parse(
            Some("401"),
            br#"{"error":"invalid_client","error_description":"client authentication failed"}"#,
        );
        assert_eq!(
            refused,
            Err("HTTP 401, error \"invalid_client\": client authentication failed".into())
        );
        assert_eq!(parse(Some("503"), b"<html>"), Err("HTTP 503".into()));
        let hostile = parse(Some("400"), b"{\"error\":\"x\\r\\ny\"}").unwrap_err();
        assert!(
            !hostile.contains('\n') && !hostile.contains('\r'),
            "{hostile}"
        );
        assert!(parse(None, b"").unwrap_err().contains("no answer"));

        for (bad, why) in [
            (&br#"{"token_type":"Bearer"}"#[..], "no access_token"),
            (
                br#"{"access_token":"","token_type":"Bearer"}"#,
                "no access_token",
            ),
            (
                br#"{"access_token":7,"token_type":"Bearer"}"#,
                "no access_token",
            ),
            (br#"{"access_token":"a b","token_type":"Bearer"}"#, "header"),
            (
                b"{\"access_token\":\"a\\r\\nx: y\",\"token_type\":\"Bearer\"}",
                "header",
            ),
            (br#"{"access_token":"t"}"#, "no token_type"),
            (
                br#"{"access_token":"t","token_type":"DPoP"}"#,
                "\"DPoP\", not Bearer",
            ),
            (
                br#"{"access_token":"t","token_type":"Bearer","expires_in":-5}"#,
                "expires_in",
            ),
            (
                br#"{"access_token":"t","token_type":"Bearer","expires_in":"1h"}"#,
                "expires_in",
            ),
            (
                br#"{"access_token":"t","token_type":"Bearer","expires_in":1}"#,
                "too soon",
            ),
            (
                br#"{"access_token":"t","token_type":"Bearer","expires_in":0}"#,
                "too soon",
            ),
            (b"[1]", "not a JSON object"),
        ] {
            let got = parse(Some("200"), bad).unwrap_err();
            assert!(got.contains(why), "{got}");
        }
        let long = format!(
            r#"{{"access_token":"{}","token_type":"Bearer"}}"#,
            "a".repeat(MAX_TOKEN_BYTES + 1)
        );
        assert!(parse(Some("200"), long.as_bytes()).is_err());
    }

    #[test]
    fn schedule() {
        let issued = |lifetime_ms| Issued {
            token: "t1".into(),
            lifetime_ms,
        };
        let never = Record::default();
        assert!(never.fetch_due(60_000, 1_000));
        assert_eq!(never.usable(1_000), None);

        // A one-hour token: used until its last second, refreshed a margin before expiry.
        let r = never.succeeded(&issued(3_600_000), 1_000);
        assert_eq!(r.usable(1_000), Some("t1"));
        assert_eq!(r.refresh_at(60_000), 3_541_000);
        assert!(!r.fetch_due(60_000, 3_540_999));
        assert!(r.fetch_due(60_000, 3_541_000));
        assert_eq!(r.usable(3_599_999), Some("t1"));
        assert_eq!(r.usable(3_600_000), None);

        // A short one (expires_in under twice the margin): refreshed at half its lifetime.
        let short = never.succeeded(&issued(6_000), 10_000);
        assert_eq!(short.refresh_at(60_000), 13_000);
        assert!(short.fetch_due(60_000, 13_000));

        // A failed refresh keeps the token in use and backs off 1 s, 2 s, ...
        let f = r.failed(3_541_000);
        assert_eq!(f.usable(3_541_500), Some("t1"));
        assert!(!f.fetch_due(60_000, 3_541_999));
        assert!(f.fetch_due(60_000, 3_542_000));
        let f2 = f.failed(3_542_000);
        assert!(!f2.fetch_due(60_000, 3_543_999));
        assert!(f2.fetch_due(60_000, 3_544_000));
        assert_eq!(f2.succeeded(&issued(1000 * 60), 3_545_000).failures, 0);

        // Round trip through shared data; garbage reads as nothing fetched.
        assert_eq!(Record::from_bytes(&f2.to_bytes()), f2);
        assert_eq!(Record::from_bytes(b"garbage"), Record::default());
    }

    #[test]
    fn drops() {
        let r = Record::default().succeeded(
            &Issued {
                token: "t1".into(),
                lifetime_ms: 3_600_000,
            },
            1_000,
        );
        assert_eq!(r.dropped(999, 2_000), None, "not the current token");
        let d = r.dropped(r.generation(), 2_000).unwrap();
        assert_eq!(d.usable(2_000), None);
        assert!(d.fetch_due(60_000, 2_000), "a new token is fetched at once");
        assert_eq!(d.dropped(r.generation(), 2_001), None, "already dropped");
        // The next token is dropped only after the interval.
        let next = d.succeeded(
            &Issued {
                token: "t2".into(),
                lifetime_ms: 3_600_000,
            },
            2_100,
        );
        let t2 = next.generation();
        assert_eq!(next.dropped(t2, 2_000 + MIN_DROP_INTERVAL_MS - 1), None);
        assert!(next.dropped(t2, 2_000 + MIN_DROP_INTERVAL_MS).is_some());
    }

    #[test]
    fn refusals() {
        let refused = |status: &[u8], values: &[&str]| {
            let values: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
            upstream_refused(status, &values)
        };
        assert!(refused(
            b"401",
            &[r#"Bearer realm="api", error="invalid_token""#]
        ));
        assert!(refused(b"401", &[r#"bearer error=invalid_token"#]));
        assert!(refused(
            b"401",
            &[
                r#"Basic realm="x", Bearer realm="a, b", error="invalid_token", error_description="expired""#
            ]
        ));
        assert!(refused(
            b"401",
            &["Basic realm=\"x\"", "Bearer error=\"invalid_token\""]
        ));
        assert!(refused(b"401", &[r#"Bearer error = "invalid_token""#]));
        // Not a refusal of the token.
        assert!(!refused(b"403", &[r#"Bearer error="invalid_token""#]));
        assert!(!refused(b"401", &[r#"Bearer realm="api""#]));
        assert!(!refused(b"401", &[r#"Bearer error="insufficient_scope""#]));
        assert!(!refused(b"401", &[r#"Basic error="invalid_token""#]));
        assert!(!refused(
            b"401",
            &[r#"Bearer realm="error=\"invalid_token\"""#]
        ));
        assert!(!refused(
            b"401",
            &[r#"Basic realm="x", error="invalid_token""#]
        ));
        assert!(!refused(b"401", &[]));
        assert!(!refused(b"401", &["\u{ff}"]));
    }
}
