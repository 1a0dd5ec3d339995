//! One remote provider's key fetch, as both shells make it: which call comes next (discovery
//! while the JWKS location is unknown, then the JWKS), the request each call sends, and how each
//! answer is judged. The shells move the calls and the [`crate::remote::Record`]s; the Wasm
//! shell also shares them between its VMs.

use crate::config::{split_url, HttpUri, RemoteJwks, UrlParts};
use crate::jwt::keys::{parse_jwks, KeySet, MAX_JWKS_BYTES};
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
