//! The decision: a request (path, headers, the time) and the configuration in, what to do out.

use crate::challenge::{self, Challenge};
use crate::claims;
use crate::config::{Config, Provider, Source};
use crate::extract::{self, Extracted};
use crate::jwt;
use serde_json::{Map, Value};

/// What the filter saw of the request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The `:path` pseudo-header, query included.
    pub path: &'a str,
    /// Every request header, lower-case names, every value.
    pub headers: &'a [(String, Vec<u8>)],
    /// Seconds since the Unix epoch.
    pub now: u64,
}

/// How an allowed request got through, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passed {
    /// A rule required a token and the token satisfied it.
    Authenticated,
    /// The matching rule has no `requires`.
    Public,
    /// No rule matched the path.
    NoRule,
}

/// Changes to make to an allowed request before it goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub passed: Passed,
    /// Headers to remove (all their values), before `set` is applied.
    pub remove: Vec<String>,
    /// Headers to set, replacing any value.
    pub set: Vec<(String, String)>,
    /// A new `:path`, when the token came in the query and is not forwarded.
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Forward),
    Deny(Challenge),
}

/// Decides what to do with `request`.
pub fn decide(config: &Config, request: Request<'_>) -> Decision {
    let path_only = request.path.split(['?', '#']).next().unwrap_or("");
    // Headers the filter owns are removed from every request, whatever the rule says.
    let mut forward = Forward {
        passed: Passed::NoRule,
        remove: config.owned_headers.clone(),
        set: Vec::new(),
        path: None,
    };
    let Some(rule) = config.rule_for(path_only) else {
        return Decision::Allow(forward);
    };
    let Some(requires) = &rule.requires else {
        forward.passed = Passed::Public;
        return Decision::Allow(forward);
    };
    let Some(provider) = config.providers.get(requires.provider) else {
        return Decision::Deny(challenge::unavailable("The filter is misconfigured"));
    };
    let realm = config.realm.as_str();
    let (token, source) = match extract::extract(&provider.sources, request.headers, request.path) {
        Extracted::Token { token, source } => (token, source),
        Extracted::Missing => return Decision::Deny(challenge::missing_token(realm)),
        Extracted::Invalid(why) => return Decision::Deny(challenge::invalid_request(realm, why)),
    };
    let claims = match authenticate(provider, &token, request.now) {
        Ok(claims) => claims,
        Err(why) => return Decision::Deny(challenge::invalid_token(realm, why)),
    };
    if !claims::has_scopes(&claims, &requires.scopes) {
        return Decision::Deny(challenge::insufficient_scope(realm, &requires.scopes));
    }
    forward.passed = Passed::Authenticated;
    for ch in &provider.claim_to_headers {
        if let Some(value) = claim_header_value(&claims, &ch.claim) {
            forward.set.push((ch.header.clone(), value));
        }
    }
    if !provider.forward {
        match source {
            Source::Header { name, .. } => forward.remove.push(name),
            Source::Param(param) => forward.path = Some(extract::strip_param(request.path, &param)),
        }
    }
    Decision::Allow(forward)
}

/// Verifies a token of `provider` and checks its claims; the claims, or a fixed description.
pub fn authenticate(
    provider: &Provider,
    token: &str,
    now: u64,
) -> Result<Map<String, Value>, &'static str> {
    let jws = jwt::parse(token).map_err(jwt::TokenError::description)?;
    jwt::verify_signature(&jws, &provider.keys).map_err(jwt::TokenError::description)?;
    claims::check(&jws.claims, &provider.claims, now).map_err(claims::ClaimError::description)?;
    Ok(jws.claims)
}

/// The header value for claim `name`: a top-level claim of that exact name, or else a dotted
/// path into nested objects. Strings as they are, numbers and booleans as JSON text, arrays of
/// those joined with commas; objects, nulls and values with control characters give no header.
pub fn claim_header_value(claims: &Map<String, Value>, name: &str) -> Option<String> {
    let value = claims.get(name).or_else(|| {
        let mut parts = name.split('.');
        let first = claims.get(parts.next()?)?;
        parts.try_fold(first, |v, part| v.as_object()?.get(part))
    })?;
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let text = match value {
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items.iter().map(scalar).collect();
            parts?.join(",")
        }
        other => scalar(other)?,
    };
    // A header value may not carry CR, LF, NUL or other controls (RFC 9110 §5.5).
    if text.chars().any(|c| c.is_control()) {
        return None;
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claim_values() {
        let Value::Object(c) = json!({
            "sub": "alice", "n": 3, "b": true, "roles": ["a", "b"],
            "realm_access": {"roles": ["x"]}, "a.b": "flat", "a": {"b": "nested"},
            "bad": "x\r\ny", "obj": {"k": 1}, "mixed": ["a", {"k": 1}], "nul": null
        }) else {
            unreachable!()
        };
        let v = |n: &str| claim_header_value(&c, n);
        assert_eq!(v("sub").as_deref(), Some("alice"));
        assert_eq!(v("n").as_deref(), Some("3"));
        assert_eq!(v("b").as_deref(), Some("true"));
        assert_eq!(v("roles").as_deref(), Some("a,b"));
        assert_eq!(v("realm_access.roles").as_deref(), Some("x"));
        assert_eq!(v("a.b").as_deref(), Some("flat"));
        assert_eq!(v("bad"), None);
        assert_eq!(v("obj"), None);
        assert_eq!(v("mixed"), None);
        assert_eq!(v("nul"), None);
        assert_eq!(v("missing"), None);
        assert_eq!(v("sub.x"), None);
    }
}

#[cfg(test)]
mod flow {
    use super::*;
    use crate::challenge::DenyReason;
    use crate::testkit::{good_claims, jwks, Signer};
    use serde_json::json;
    use std::sync::OnceLock;

    fn signer() -> &'static Signer {
        static S: OnceLock<Signer> = OnceLock::new();
        S.get_or_init(|| Signer::es256("k1"))
    }

    fn config(extra: Value) -> Config {
        let mut provider = json!({
            "issuer": "https://idp", "audiences": ["api"],
            "local_jwks": {"inline_string": jwks(&[signer().jwk()])},
            "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}]
        });
        if let (Value::Object(p), Value::Object(e)) = (&mut provider, extra) {
            p.extend(e);
        }
        let doc = json!({
            "providers": {"corp": provider},
            "rules": [
                {"match": {"prefix": "/public"}},
                {"match": {"prefix": "/admin"}, "requires": {"provider_name": "corp", "scopes": ["admin", "write"]}},
                {"match": {"prefix": "/api"}, "requires": {"provider_name": "corp"}}
            ]
        });
        Config::from_json(doc.to_string().as_bytes()).unwrap()
    }

    fn run(config: &Config, path: &str, headers: &[(&str, &str)]) -> Decision {
        let headers: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        decide(
            config,
            Request {
                path,
                headers: &headers,
                now: crate::testkit::now(),
            },
        )
    }

    fn denied(d: &Decision) -> DenyReason {
        match d {
            Decision::Deny(c) => c.reason,
            Decision::Allow(f) => panic!("allowed: {f:?}"),
        }
    }

    #[test]
    fn allows_and_rewrites() {
        let c = config(json!({}));
        let token = signer().token(&good_claims("https://idp", "api"));
        let auth = format!("Bearer {token}");
        let Decision::Allow(f) = run(
            &c,
            "/api/x",
            &[("authorization", &auth), ("x-user", "mallory")],
        ) else {
            panic!()
        };
        assert_eq!(f.passed, Passed::Authenticated);
        assert_eq!(
            f.remove,
            vec!["x-user".to_string(), "authorization".to_string()]
        );
        assert_eq!(f.set, vec![("x-user".to_string(), "alice".to_string())]);
        // Public and unmatched paths still lose forged identity headers.
        for (path, passed) in [
            ("/public/a", Passed::Public),
            ("/elsewhere", Passed::NoRule),
        ] {
            let Decision::Allow(f) = run(&c, path, &[("x-user", "mallory")]) else {
                panic!()
            };
            assert_eq!(
                (f.passed, f.remove, f.set),
                (passed, vec!["x-user".to_string()], vec![])
            );
        }
    }

    #[test]
    fn forward_keeps_the_token_and_query_tokens_are_stripped() {
        let c = config(json!({"forward": true}));
        let token = signer().token(&good_claims("https://idp", "api"));
        let Decision::Allow(f) = run(&c, "/api", &[("authorization", &format!("Bearer {token}"))])
        else {
            panic!()
        };
        assert_eq!(f.remove, vec!["x-user".to_string()]);
        let c = config(json!({"from_params": ["access_token"]}));
        let Decision::Allow(f) = run(&c, &format!("/api/x?a=1&access_token={token}"), &[]) else {
            panic!()
        };
        assert_eq!(f.path.as_deref(), Some("/api/x?a=1"));
    }

    #[test]
    fn rejections() {
        let c = config(json!({}));
        let now = crate::testkit::now();
        let bearer = |claims: Value| format!("Bearer {}", signer().token(&claims));
        assert_eq!(denied(&run(&c, "/api", &[])), DenyReason::MissingToken);
        assert_eq!(
            denied(&run(&c, "/api?access_token=x", &[])),
            DenyReason::MissingToken
        );
        assert_eq!(
            denied(&run(&c, "/api", &[("authorization", "Basic eA==")])),
            DenyReason::MissingToken
        );
        assert_eq!(
            denied(&run(&c, "/api", &[("authorization", "Bearer")])),
            DenyReason::InvalidRequest
        );
        assert_eq!(
            denied(&run(
                &c,
                "/api",
                &[("authorization", "Bearer a"), ("authorization", "Bearer a")]
            )),
            DenyReason::InvalidRequest
        );
        assert_eq!(
            denied(&run(&c, "/api", &[("authorization", "Bearer abc")])),
            DenyReason::InvalidToken
        );
        let expired = json!({"iss":"https://idp","aud":"api","exp": now - 61});
        assert_eq!(
            denied(&run(&c, "/api", &[("authorization", &bearer(expired))])),
            DenyReason::InvalidToken
        );
        let wrong_aud = json!({"iss":"https://idp","aud":"other","exp": now + 60});
        assert_eq!(
            denied(&run(&c, "/api", &[("authorization", &bearer(wrong_aud))])),
            DenyReason::InvalidToken
        );
        let some_scope =
            json!({"iss":"https://idp","aud":"api","exp": now + 60, "scope": "admin read"});
        let d = run(&c, "/admin", &[("authorization", &bearer(some_scope))]);
        let Decision::Deny(ch) = &d else { panic!() };
        assert_eq!((ch.status, ch.reason), (403, DenyReason::InsufficientScope));
        assert!(ch
            .www_authenticate
            .as_deref()
            .unwrap()
            .ends_with("scope=\"admin write\""));
        let all_scopes =
            json!({"iss":"https://idp","aud":"api","exp": now + 60, "scope": "write admin"});
        assert!(matches!(
            run(&c, "/admin/x", &[("authorization", &bearer(all_scopes))]),
            Decision::Allow(_)
        ));
    }
}
