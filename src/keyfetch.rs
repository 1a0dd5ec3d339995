//! One remote provider's key fetch, as both shells make it: which call comes next (discovery
//! while the JWKS location is unknown, then the JWKS), the request each call sends, and how each
//! answer is judged. The shells move the calls and the [`crate::remote::Record`]s; the Wasm
//! shell also shares them between its VMs.

use crate::config::{split_url, HttpUri, RemoteJwks, UrlParts};
use crate::jwt::keys::{parse_jwks, Jwk, KeySet, MAX_JWKS_BYTES};
use crate::remote::{self, Record};

/// A call of a key fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Discovery,
    Jwks,
}

impl Step {
    /// The largest answer read for this call.
    pub fn limit(self) -> usize {
        match self {
            Step::Discovery => remote::MAX_DISCOVERY_BYTES,
            Step::Jwks => MAX_JWKS_BYTES,
        }
    }
}

/// What a judged answer gives.
#[derive(Debug)]
pub enum Answer {
    /// Discovery found the JWKS here; fetch it next.
    Discovered(String),
    /// A key set with at least one usable key: the document's text and its keys (with the keys
    /// it skipped, to log).
    Keys(String, KeySet),
}

/// The next call of a fetch for `spec`, given what `record` knows: discovery while the JWKS
/// location is unknown, then the JWKS.
pub fn next_call(spec: &RemoteJwks, record: &Record) -> Option<(Step, HttpUri)> {
    match (&spec.jwks, &spec.discovery, &record.jwks_uri) {
        (Some(jwks), _, _) => Some((Step::Jwks, jwks.clone())),
        (None, Some(d), Some(found)) => Some((
            Step::Jwks,
            HttpUri {
                uri: found.clone(),
                ..d.clone()
            },
        )),
        (None, Some(d), None) => Some((Step::Discovery, d.clone())),
        (None, None, _) => None,
    }
}

/// The longest a whole fetch (discovery, then the JWKS) may take.
pub fn budget_ms(spec: &RemoteJwks) -> u64 {
    let d = spec.discovery.as_ref().map_or(0, |d| d.timeout_ms);
    let j = spec.jwks.as_ref().map_or(0, |j| j.timeout_ms);
    d + j.max(d)
}

/// The URL parts of a call to `target`, or why it cannot be made.
pub fn url(target: &HttpUri) -> Result<UrlParts, String> {
    split_url(&target.uri).ok_or_else(|| "the URL is not usable".to_string())
}

/// The request headers of a GET of `url`.
pub fn get_headers(url: &UrlParts) -> [(&str, &str); 5] {
    [
        (":method", "GET"),
        (":path", url.path.as_str()),
        (":authority", url.authority.as_str()),
        ("accept", "application/json"),
        ("user-agent", "envoy-oauth-filter"),
    ]
}

/// Judges the answer to `step`: its `:status` (`None`: no answer) and body (read up to one byte
/// past the step's limit). `issuer` is the provider's, which a discovery document must name.
pub fn judge(
    step: Step,
    status: Option<&str>,
    body: Vec<u8>,
    issuer: &str,
) -> Result<Answer, String> {
    let limit = step.limit();
    match status {
        _ if body.len() > limit => return Err(format!("the answer is larger than {limit} bytes")),
        Some("200") => {}
        Some(code) => return Err(format!("HTTP {code}")),
        None => return Err("no answer (timeout or connection failure)".to_string()),
    }
    match step {
        Step::Discovery => remote::parse_discovery(&body, issuer)
            .map(|found| Answer::Discovered(found.jwks_uri))
            .map_err(str::to_string),
        Step::Jwks => keys(body),
    }
}

/// A JWKS document with at least one usable signing key.
fn keys(body: Vec<u8>) -> Result<Answer, String> {
    let set = parse_jwks(&body).map_err(|why| format!("the JWKS is {why}"))?;
    if set.keys.is_empty() {
        return Err("the JWKS has no usable signing key".to_string());
    }
    let text = String::from_utf8(body).map_err(|_| "the JWKS is not UTF-8".to_string())?;
    Ok(Answer::Keys(text, set))
}

/// One provider's key fetch as a shell carries it out: where its record lives (shared data
/// in Wasm, the process's state natively), how a call goes out, what ends a fetch. The flow
/// itself ([`send`], [`answered`], [`failed`]) is written once, here.
pub trait Fetching {
    /// The provider's name (for the logs), issuer (which discovery must name) and keys.
    fn provider(&self) -> (&str, &str, &RemoteJwks);
    /// Changes the provider's record; the record now.
    fn update(&mut self, change: &dyn Fn(&Record) -> Record) -> Record;
    /// Sends `get` (the shell keeps the call as under way); `Err`: why it could not be sent.
    fn get(&mut self, get: &Get) -> Result<(), String>;
    /// The fetch ended: the record changed by `change` and these keys (`None`: it failed)
    /// installed at once, no call under way, the shell's lease released, counted, and the
    /// requests waiting for the keys woken. The record now.
    fn ended(&mut self, change: &dyn Fn(&Record) -> Record, keys: Option<Vec<Jwk>>) -> Record;
}

/// A GET of a fetch: its step, where it goes, its request headers.
pub struct Get<'a> {
    pub step: Step,
    pub target: &'a HttpUri,
    pub headers: &'a [(&'a str, &'a str)],
}

/// Sends `step` of a fetch to `target` (a refusal ends the fetch as failed).
pub fn send(host: &mut impl Fetching, step: Step, target: &HttpUri, now: u64) {
    let sent = url(target).and_then(|url| {
        let headers = get_headers(&url);
        let get = Get {
            step,
            target,
            headers: &headers,
        };
        host.get(&get).map_err(|refused| {
            let (cluster, uri) = (&target.cluster, &target.uri);
            format!("cannot call cluster {cluster} for {uri} ({refused})")
        })
    });
    if let Err(why) = sent {
        failed(host, &why, now);
    }
}

/// The answer to `step` of a fetch (see [`judge`]): the next call, the keys, or a failure.
/// Whether keys were loaded (tokens verified with the old ones must be verified again).
pub fn answered(
    host: &mut impl Fetching,
    step: Step,
    status: Option<&str>,
    body: Vec<u8>,
    now: u64,
) -> bool {
    let issuer = host.provider().1.to_string();
    match judge(step, status, body, &issuer) {
        Err(why) => failed(host, &why, now),
        Ok(Answer::Discovered(jwks_uri)) => {
            let record = host.update(&|rec| Record {
                jwks_uri: Some(jwks_uri.clone()),
                ..rec.clone()
            });
            match next_call(host.provider().2, &record) {
                Some((step, target)) => send(host, step, &target, now),
                None => failed(host, "discovery gave no JWKS location", now),
            }
        }
        Ok(Answer::Keys(text, set)) => {
            let name = host.provider().0.to_string();
            for problem in &set.problems {
                log::warn!("oauth-filter: provider {name}: JWKS key skipped: {problem}");
            }
            log::info!(
                "oauth-filter: provider {name}: {} key(s) loaded",
                set.keys.len()
            );
            host.ended(&|rec| rec.succeeded(text.clone(), now), Some(set.keys));
            return true;
        }
    }
    false
}

/// A fetch failed: the last good keys stay (if any), the provider backs off (and discovers
/// its JWKS again, when it has no fixed one), and the waiting requests are decided again (with
/// the old keys, or 503 when there never were any).
pub fn failed(host: &mut impl Fetching, why: &str, now: u64) {
    let rediscover = host.provider().2.jwks.is_none();
    let change = |rec: &Record| {
        let mut next = rec.failed(now);
        if rediscover {
            next.jwks_uri = None;
        }
        next
    };
    let record = host.ended(&change, None);
    let outcome = if record.has_keys() {
        "keeping the last good keys"
    } else {
        "no keys yet: requests get 503"
    };
    let (name, retry) = (host.provider().0.to_string(), record.backoff_ms());
    log::warn!(
        "oauth-filter: provider {name}: key fetch failed: {why}; {outcome}; retry in {retry} ms"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{jwks, Signer};

    fn uri(u: &str) -> HttpUri {
        HttpUri {
            uri: u.into(),
            cluster: "idp".into(),
            timeout_ms: 2000,
        }
    }

    /// A shell that keeps one record, sends what `refuse` allows, and notes what happened.
    struct FakeFetch {
        spec: RemoteJwks,
        record: Record,
        keys: usize,
        sent: Vec<String>,
        ended: Vec<Option<usize>>,
        refuse: bool,
    }

    impl Fetching for FakeFetch {
        fn provider(&self) -> (&str, &str, &RemoteJwks) {
            ("idp", "https://idp", &self.spec)
        }
        fn update(&mut self, change: &dyn Fn(&Record) -> Record) -> Record {
            self.record = change(&self.record);
            self.record.clone()
        }
        fn get(&mut self, get: &Get) -> Result<(), String> {
            if self.refuse {
                return Err("refused: 1".into());
            }
            let (step, path) = (get.step, get.headers[1].1);
            self.sent
                .push(format!("{step:?} {} {path}", get.target.uri));
            Ok(())
        }
        fn ended(&mut self, change: &dyn Fn(&Record) -> Record, keys: Option<Vec<Jwk>>) -> Record {
            self.keys = keys.as_ref().map_or(self.keys, Vec::len);
            self.ended.push(keys.map(|k| k.len()));
            self.update(change)
        }
    }

    fn discovering() -> FakeFetch {
        FakeFetch {
            spec: RemoteJwks {
                jwks: None,
                discovery: Some(uri("https://idp/.well-known/openid-configuration")),
                cache_duration_ms: 300_000,
            },
            record: Record::default(),
            keys: 0,
            sent: Vec::new(),
            ended: Vec::new(),
            refuse: false,
        }
    }

    #[test]
    fn a_fetch_discovers_then_loads_the_keys() {
        let mut host = discovering();
        let (step, first) = next_call(&host.spec, &host.record).unwrap();
        send(&mut host, step, &first, 1_000);
        let doc = br#"{"issuer": "https://idp", "jwks_uri": "https://idp/keys"}"#.to_vec();
        assert!(!answered(
            &mut host,
            Step::Discovery,
            Some("200"),
            doc,
            1_100
        ));
        assert_eq!(host.record.jwks_uri.as_deref(), Some("https://idp/keys"));
        let body = jwks(&[Signer::es256("k").jwk()]).into_bytes();
        assert!(answered(&mut host, Step::Jwks, Some("200"), body, 1_200));
        assert_eq!(
            host.sent,
            [
                "Discovery https://idp/.well-known/openid-configuration /.well-known/openid-configuration",
                "Jwks https://idp/keys /keys"
            ]
        );
        assert_eq!((host.ended.as_slice(), host.keys), (&[Some(1)][..], 1));
        assert!(host.record.has_keys() && host.record.failures == 0);
    }

    #[test]
    fn a_failed_fetch_keeps_the_keys_backs_off_and_discovers_again() {
        let mut host = discovering();
        let body = jwks(&[Signer::es256("k").jwk()]).into_bytes();
        host.record.jwks_uri = Some("https://idp/keys".into());
        answered(&mut host, Step::Jwks, Some("200"), body, 1_000);
        assert!(!answered(
            &mut host,
            Step::Jwks,
            Some("503"),
            Vec::new(),
            2_000
        ));
        assert_eq!(host.ended, [Some(1), None]);
        assert_eq!((host.keys, host.record.failures), (1, 1));
        assert!(host.record.has_keys() && host.record.jwks_uri.is_none());
        host.refuse = true;
        send(&mut host, Step::Discovery, &uri("https://idp/d"), 3_000);
        assert_eq!((host.ended.len(), host.record.failures), (3, 2));
        send(&mut host, Step::Jwks, &uri("not a url"), 4_000);
        assert_eq!(host.record.failures, 3);
    }

    #[test]
    fn discovery_then_the_jwks_it_names() {
        let spec = RemoteJwks {
            jwks: None,
            discovery: Some(uri("https://idp/.well-known/openid-configuration")),
            cache_duration_ms: 300_000,
        };
        let record = Record::default();
        let (step, first) = next_call(&spec, &record).unwrap();
        assert_eq!(
            (step, first.uri.as_str()),
            (
                Step::Discovery,
                "https://idp/.well-known/openid-configuration"
            )
        );
        let doc = br#"{"issuer": "https://idp", "jwks_uri": "https://idp/keys"}"#.to_vec();
        let Ok(Answer::Discovered(found)) = judge(step, Some("200"), doc, "https://idp") else {
            panic!("not discovered")
        };
        let record = Record {
            jwks_uri: Some(found),
            ..record
        };
        let (step, next) = next_call(&spec, &record).unwrap();
        assert_eq!(
            (step, next.uri.as_str(), next.cluster.as_str()),
            (Step::Jwks, "https://idp/keys", "idp")
        );
        assert_eq!(budget_ms(&spec), 4000);
    }

    #[test]
    fn answers_are_judged() {
        let good = jwks(&[Signer::es256("k").jwk()]).into_bytes();
        assert!(matches!(
            judge(Step::Jwks, Some("200"), good.clone(), ""),
            Ok(Answer::Keys(..))
        ));
        let refused =
            |status: Option<&str>, body: Vec<u8>| judge(Step::Jwks, status, body, "").unwrap_err();
        assert_eq!(refused(Some("503"), good.clone()), "HTTP 503");
        assert_eq!(
            refused(None, Vec::new()),
            "no answer (timeout or connection failure)"
        );
        assert!(refused(Some("200"), vec![b' '; MAX_JWKS_BYTES + 1])
            .starts_with("the answer is larger"));
        assert_eq!(
            refused(Some("200"), br#"{"keys": []}"#.to_vec()),
            "the JWKS has no usable signing key"
        );
        let other = br#"{"issuer": "https://evil", "jwks_uri": "https://evil/keys"}"#.to_vec();
        assert!(judge(Step::Discovery, Some("200"), other, "https://idp").is_err());
        let url = url(&uri("https://idp:8443/keys?x=1")).unwrap();
        assert_eq!(
            get_headers(&url)[1..3],
            [(":path", "/keys?x=1"), (":authority", "idp:8443")]
        );
    }
}
