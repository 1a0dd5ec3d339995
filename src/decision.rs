//! The decision: a request (path, headers, the time) and the configuration in, what to do out.

use crate::cache;
use crate::challenge::{self, Challenge};
use crate::claims;
use crate::config::{Config, KeySource, Provider, Rule, Source};
use crate::extract::{self, Extracted};
use crate::jwt;
use crate::jwt::keys::{Alg, Jwk};
use serde_json::{Map, Value};
use std::borrow::Cow;

/// What the filter saw of the request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The `:path` pseudo-header, query included.
    pub path: &'a str,
    /// Every request header (names as the host gives them: lower case), every value.
    pub headers: &'a [(&'a str, &'a [u8])],
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
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    pub passed: Passed,
    /// Headers to remove (all their values), before `set` is applied: only headers the request
    /// has (each change of the request's headers costs a host call, and makes Envoy clear its
    /// route cache).
    pub remove: Vec<String>,
    /// Headers to set, replacing any value.
    pub set: Vec<(String, String)>,
    /// A new `:path`, when the token came in the query and is not forwarded.
    pub path: Option<String>,
    /// A token whose signature was just verified, for the verified-token cache.
    pub verified: Option<Verified>,
    /// The upstream client (index into `Config::clients`) whose token `set` carries.
    pub injected: Option<usize>,
}

/// A verified token's claims, to cache under `key` until `until` (ms since the epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub key: cache::TokenKey,
    pub claims: Map<String, Value>,
    pub until: u64,
}

/// The description of the 503 answered when a provider's keys cannot be had.
pub const NO_KEYS: &str = "The keys to check the token cannot be fetched";
/// The description of the 503 answered when a rule's upstream token cannot be had.
pub const NO_CREDENTIAL: &str = "The credential for the upstream cannot be obtained";

/// The longest a verified token is cached (its `exp` usually ends it sooner).
pub const MAX_VERIFIED_CACHE_MS: u64 = 300_000;

/// Whether a decision on a cached token can need claim `name`: dates, issuer, audience,
/// scopes, and the top-level claims `claim_to_headers` reads.
fn is_needed(provider: &Provider, name: &str) -> bool {
    const ALWAYS: [&str; 7] = ["exp", "nbf", "iat", "iss", "aud", "scope", "scp"];
    ALWAYS.contains(&name)
        || provider
            .claim_to_headers
            .iter()
            .any(|ch| ch.claim == name || ch.claim.split('.').next() == Some(name))
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow(Forward),
    Deny(Challenge),
    /// Pause the request until the keys of `provider` change, then decide again. `refetch`:
    /// the token names a key the set does not have, so the set should be fetched again now.
    Wait {
        provider: usize,
        refetch: bool,
    },
    /// Pause the request, introspect `token` at `provider`'s endpoint, then decide again.
    Introspect {
        provider: usize,
        token: String,
    },
    /// The request may go, but only with upstream client `client`'s token, which is not there
    /// yet: pause it until the client's token changes, then decide again. `verified`: as in
    /// [`Forward::verified`].
    AwaitCredential {
        client: usize,
        verified: Option<Verified>,
    },
}

/// A cached introspection answer.
#[derive(Debug, Clone, Copy)]
pub enum Cached<'a> {
    Active(&'a Map<String, Value>),
    Inactive,
    Miss,
}

/// A provider's keys as they are at this moment.
#[derive(Debug, Clone, Copy)]
pub enum KeysNow<'a> {
    /// Keys to verify with; `may_refetch`: an unknown `kid` may trigger a refetch now (the
    /// shell rate-limits refetches per provider).
    Ready { keys: &'a [Jwk], may_refetch: bool },
    /// No keys yet, and a fetch is under way or due.
    Pending,
    /// No keys were ever loaded, and the last fetch failed.
    Unavailable,
}

/// An upstream client's token as it is at this moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialNow<'a> {
    Ready(&'a str),
    /// No token yet (or it was dropped or ran out), and a fetch is under way or due.
    Pending,
    /// No usable token, and the last fetch failed.
    Unavailable,
}

/// What the filter knows at this moment: each provider's keys and cached introspection answers.
pub trait Known {
    /// Upstream client `client`'s token.
    fn credential(&self, _client: usize) -> CredentialNow<'_> {
        CredentialNow::Unavailable
    }
    fn keys_now(&self, provider: usize) -> KeysNow<'_>;
    /// The verified-token cache key of `token` at provider `provider`.
    fn token_key(&self, provider: &str, token: &str) -> cache::TokenKey {
        cache::Secret(0, 0).key(provider, token)
    }
    /// The claims of a token verified earlier (cache key from [`Known::token_key`]), if still
    /// cached.
    fn verified(&self, key: &cache::TokenKey) -> Option<&Map<String, Value>>;
    /// The cached, unexpired answer for `token` at `provider`'s introspection endpoint.
    fn introspected(&self, provider: usize, token: &str) -> Cached<'_>;
    /// Checks one signature; the host may do it faster than Wasm, with the same verdicts.
    fn check_signature(&self, alg: Alg, key: &Jwk, input: &[u8], signature: &[u8]) -> bool {
        jwt::verify::verify(alg, &key.material, input, signature)
    }
}

/// Only configured keys: remote key sets are always pending, nothing was introspected.
pub struct LocalKeys<'a>(pub &'a Config);

impl Known for LocalKeys<'_> {
    fn verified(&self, _key: &cache::TokenKey) -> Option<&Map<String, Value>> {
        None
    }

    fn introspected(&self, _provider: usize, _token: &str) -> Cached<'_> {
        Cached::Miss
    }

    fn keys_now(&self, provider: usize) -> KeysNow<'_> {
        match self.0.providers.get(provider).map(|p| &p.keys) {
            Some(KeySource::Local(keys)) => KeysNow::Ready {
                keys,
                may_refetch: false,
            },
            _ => KeysNow::Pending,
        }
    }
}

/// Decides what to do with `request`, with the keys `keys` has now.
pub fn decide(config: &Config, known: &dyn Known, request: Request<'_>) -> Decision {
    let path_only = request.path.split(['?', '#']).next().unwrap_or("");
    // Headers the filter owns are removed from every request, whatever the rule says.
    let mut forward = Forward {
        passed: Passed::NoRule,
        remove: config
            .owned_headers
            .iter()
            .filter(|owned| {
                request
                    .headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case(owned))
            })
            .cloned()
            .collect(),
        set: Vec::new(),
        path: None,
        verified: None,
        injected: None,
    };
    let Some(rule) = config.rule_for(path_only) else {
        return Decision::Allow(forward);
    };
    let Some(requires) = &rule.requires else {
        forward.passed = Passed::Public;
        return inject(rule, forward, known);
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
    let idx = requires.provider;
    let has_keys = !matches!(provider.keys, KeySource::None);
    // A token this VM verified before needs no parsing and no cryptography, whatever else the
    // provider does (only locally verified JWTs are in that cache); time and rules still apply.
    let key = has_keys.then(|| known.token_key(&provider.name, &token));
    let remembered = key.as_ref().and_then(|key| known.verified(key));
    // Otherwise a provider with keys reads the token as a JWT; one that also introspects sends
    // tokens that are not JWT-shaped to introspection instead.
    let parsed = match (remembered, has_keys, &provider.introspection) {
        (None, true, None) => Some(jwt::parse(&token)),
        (None, true, Some(_)) => jwt::parse_if_jwt(&token),
        _ => None,
    };
    // The verified-token cache key and expiry (ms) of a token verified just now.
    let mut fresh = None;
    let claims = if let Some(claims) = remembered {
        if let Err(why) = claims::check(claims, &provider.claims, request.now) {
            return Decision::Deny(challenge::invalid_token(realm, why.description()));
        }
        Cow::Borrowed(claims)
    } else if let Some(parsed) = parsed {
        let (keys, may_refetch) = match known.keys_now(idx) {
            KeysNow::Ready { keys, may_refetch } => (keys, may_refetch),
            KeysNow::Pending => {
                return Decision::Wait {
                    provider: idx,
                    refetch: false,
                }
            }
            KeysNow::Unavailable => return Decision::Deny(challenge::unavailable(NO_KEYS)),
        };
        let check = |alg: Alg, key: &Jwk, input: &[u8], sig: &[u8]| {
            known.check_signature(alg, key, input, sig)
        };
        let verdict = parsed
            .map_err(AuthError::from)
            .and_then(|jws| authenticate_parsed(provider, keys, jws, request.now, &check));
        match verdict {
            Ok(claims) => {
                let now_ms = request.now.saturating_mul(1000);
                let exp_ms = claims
                    .get("exp")
                    .and_then(Value::as_f64)
                    .map_or(u64::MAX, |e| (e.max(0.0) * 1000.0) as u64);
                let until = exp_ms.min(now_ms.saturating_add(MAX_VERIFIED_CACHE_MS));
                let key = key.unwrap_or_else(|| known.token_key(&provider.name, &token));
                fresh = Some((key, until));
                Cow::Owned(claims)
            }
            Err(AuthError::Token(jwt::TokenError::UnknownKey)) if may_refetch => {
                return Decision::Wait {
                    provider: idx,
                    refetch: true,
                }
            }
            Err(why) => return Decision::Deny(challenge::invalid_token(realm, why.description())),
        }
    } else {
        match known.introspected(idx, &token) {
            Cached::Miss => {
                return Decision::Introspect {
                    provider: idx,
                    token,
                }
            }
            Cached::Inactive => {
                return Decision::Deny(challenge::invalid_token(
                    realm,
                    "The access token is not active",
                ))
            }
            Cached::Active(claims) => {
                // The server vouches for the token; its answer need not carry `exp`, but every
                // date, issuer and audience it does carry is checked as for a JWT.
                if let Err(why) = claims::check_vouched(claims, &provider.claims, request.now) {
                    return Decision::Deny(challenge::invalid_token(realm, why.description()));
                }
                Cow::Borrowed(claims)
            }
        }
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
    // What a decision on the cached token will need, moved out of the claims just verified.
    if let (Some((key, until)), Cow::Owned(mut claims)) = (fresh, claims) {
        claims.retain(|name, _| is_needed(provider, name));
        forward.verified = Some(Verified { key, claims, until });
    }
    inject(rule, forward, known)
}

/// Lets an allowed request go, with the rule's upstream client token in `Authorization` when it
/// has `inject` (replacing whatever credentials the caller sent there).
fn inject(rule: &Rule, mut forward: Forward, known: &dyn Known) -> Decision {
    let Some(client) = rule.inject else {
        return Decision::Allow(forward);
    };
    match known.credential(client) {
        CredentialNow::Ready(token) => {
            forward
                .set
                .push(("authorization".into(), format!("Bearer {token}")));
            forward.injected = Some(client);
            Decision::Allow(forward)
        }
        CredentialNow::Pending => Decision::AwaitCredential {
            client,
            verified: forward.verified,
        },
        CredentialNow::Unavailable => Decision::Deny(challenge::unavailable(NO_CREDENTIAL)),
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Token(jwt::TokenError),
    Claims(claims::ClaimError),
}

impl AuthError {
    /// The fixed `error_description`; it never echoes the token.
    pub fn description(self) -> &'static str {
        match self {
            AuthError::Token(e) => e.description(),
            AuthError::Claims(e) => e.description(),
        }
    }
}

impl From<jwt::TokenError> for AuthError {
    fn from(e: jwt::TokenError) -> Self {
        AuthError::Token(e)
    }
}

impl From<claims::ClaimError> for AuthError {
    fn from(e: claims::ClaimError) -> Self {
        AuthError::Claims(e)
    }
}

/// Verifies a token of `provider` with `keys` (in Wasm) and checks its claims.
pub fn authenticate(
    provider: &Provider,
    keys: &[Jwk],
    token: &str,
    now: u64,
) -> Result<Map<String, Value>, AuthError> {
    authenticate_with(provider, keys, token, now, &|alg, key, input, sig| {
        jwt::verify::verify(alg, &key.material, input, sig)
    })
}

/// [`authenticate`] with signature checks done by `check`.
pub fn authenticate_with(
    provider: &Provider,
    keys: &[Jwk],
    token: &str,
    now: u64,
    check: jwt::Check<'_>,
) -> Result<Map<String, Value>, AuthError> {
    authenticate_parsed(provider, keys, jwt::parse(token)?, now, check)
}

/// [`authenticate_with`] for a token already parsed.
fn authenticate_parsed(
    provider: &Provider,
    keys: &[Jwk],
    jws: jwt::Jws<'_>,
    now: u64,
    check: jwt::Check<'_>,
) -> Result<Map<String, Value>, AuthError> {
    jwt::verify_signature_with(&jws, keys, check)?;
    claims::check(&jws.claims, &provider.claims, now)?;
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
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        decide(
            config,
            &LocalKeys(config),
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
            other => panic!("not denied: {other:?}"),
        }
    }

    /// A key view with a remote provider in a chosen state.
    struct Fake<'a>(KeysNow<'a>);
    impl Known for Fake<'_> {
        fn keys_now(&self, _: usize) -> KeysNow<'_> {
            self.0
        }
        fn verified(&self, _: &cache::TokenKey) -> Option<&Map<String, Value>> {
            None
        }
        fn introspected(&self, _: usize, _: &str) -> Cached<'_> {
            Cached::Miss
        }
    }

    /// A key view with fixed keys and one cached introspection answer.
    struct Answers<'a> {
        keys: &'a [Jwk],
        answer: Option<Map<String, Value>>,
        inactive: bool,
    }
    impl Known for Answers<'_> {
        fn keys_now(&self, _: usize) -> KeysNow<'_> {
            KeysNow::Ready {
                keys: self.keys,
                may_refetch: false,
            }
        }
        fn verified(&self, _: &cache::TokenKey) -> Option<&Map<String, Value>> {
            None
        }
        fn introspected(&self, _: usize, _: &str) -> Cached<'_> {
            match (&self.answer, self.inactive) {
                (Some(claims), _) => Cached::Active(claims),
                (None, true) => Cached::Inactive,
                (None, false) => Cached::Miss,
            }
        }
    }

    /// Keys that verify nothing, and one token's claims in the verified cache.
    struct Remembered {
        key: cache::TokenKey,
        claims: Map<String, Value>,
    }
    impl Known for Remembered {
        fn keys_now(&self, _: usize) -> KeysNow<'_> {
            KeysNow::Ready {
                keys: &[],
                may_refetch: false,
            }
        }
        fn verified(&self, key: &cache::TokenKey) -> Option<&Map<String, Value>> {
            (*key == self.key).then_some(&self.claims)
        }
        fn introspected(&self, _: usize, _: &str) -> Cached<'_> {
            Cached::Miss
        }
    }

    #[test]
    fn verified_tokens_skip_crypto_but_not_time_or_rules() {
        let c = config(json!({}));
        let now = crate::testkit::now();
        let claims = json!({"iss": "https://idp", "aud": "api", "sub": "alice", "exp": now + 60,
                            "scope": "admin write", "big": "x".repeat(1000)});
        let token = signer().token(&claims);
        let go = |known: &dyn Known, path: &str, now: u64| {
            let value = format!("Bearer {token}");
            let h = vec![("authorization", value.as_bytes())];
            decide(
                &c,
                known,
                Request {
                    path,
                    headers: &h,
                    now,
                },
            )
        };
        // A fresh verification reports what to cache: only the claims a decision needs.
        let Decision::Allow(f) = go(&LocalKeys(&c), "/api", now) else {
            panic!()
        };
        let v = f.verified.expect("a verified token to cache");
        assert_eq!(v.key, LocalKeys(&c).token_key("corp", &token));
        assert_eq!(v.until, (now + 60) * 1000);
        assert!(v.claims.contains_key("sub") && v.claims.contains_key("scope"));
        assert!(!v.claims.contains_key("big"));
        // A hit needs no key at all, yet time and scopes are checked again.
        let hit = Remembered {
            key: v.key,
            claims: v.claims,
        };
        let Decision::Allow(f) = go(&hit, "/admin", now) else {
            panic!()
        };
        assert_eq!(f.verified, None);
        assert_eq!(f.set, vec![("x-user".to_string(), "alice".to_string())]);
        assert_eq!(
            denied(&go(&hit, "/api", now + 120)),
            DenyReason::InvalidToken
        );
        let other = Remembered {
            key: LocalKeys(&c).token_key("corp", "other"),
            claims: hit.claims.clone(),
        };
        assert_eq!(denied(&go(&other, "/api", now)), DenyReason::InvalidToken);
    }

    #[test]
    fn introspection_answers() {
        let intro = json!({"introspection": {
            "http_uri": {"uri": "http://idp/introspect", "cluster": "idp"},
            "client_id": "gw", "client_secret": "s"}});
        let both = config(intro.clone());
        let KeySource::Local(keys) = &both.providers[0].keys else {
            unreachable!()
        };
        let now = crate::testkit::now();
        let obj = |v: Value| match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let go = |c: &Config, known: &dyn Known, token: &str, path: &str| {
            let value = format!("Bearer {token}");
            let h = vec![("authorization", value.as_bytes())];
            decide(
                c,
                known,
                Request {
                    path,
                    headers: &h,
                    now,
                },
            )
        };
        let miss = Answers {
            keys,
            answer: None,
            inactive: false,
        };
        assert_eq!(
            go(&both, &miss, "opaque-123", "/api"),
            Decision::Introspect {
                provider: 0,
                token: "opaque-123".into()
            }
        );
        // JWT-shaped tokens of a provider with keys are verified locally.
        let jwt = signer().token(&good_claims("https://idp", "api"));
        assert!(matches!(go(&both, &miss, &jwt, "/api"), Decision::Allow(_)));
        let inactive = Answers {
            keys,
            answer: None,
            inactive: true,
        };
        assert_eq!(
            denied(&go(&both, &inactive, "opaque", "/api")),
            DenyReason::InvalidToken
        );
        let good = obj(
            json!({"iss": "https://idp", "aud": ["api"], "sub": "ivy", "scope": "admin write", "exp": now + 60}),
        );
        let active = Answers {
            keys,
            answer: Some(good.clone()),
            inactive: false,
        };
        let Decision::Allow(f) = go(&both, &active, "opaque", "/admin") else {
            panic!()
        };
        assert_eq!(f.set, vec![("x-user".to_string(), "ivy".to_string())]);
        // An answer without exp is fine; an expired, foreign or under-scoped one is not.
        let mut no_exp = good.clone();
        no_exp.remove("exp");
        assert!(matches!(
            go(
                &both,
                &Answers {
                    keys,
                    answer: Some(no_exp),
                    inactive: false
                },
                "o",
                "/api"
            ),
            Decision::Allow(_)
        ));
        for (k, v) in [
            ("exp", json!(now - 120)),
            ("aud", json!("other")),
            ("iss", json!("https://evil")),
            ("exp", json!("soon")),
        ] {
            let mut bad = good.clone();
            bad.insert(k.into(), v);
            assert_eq!(
                denied(&go(
                    &both,
                    &Answers {
                        keys,
                        answer: Some(bad),
                        inactive: false
                    },
                    "o",
                    "/api"
                )),
                DenyReason::InvalidToken,
                "{k}"
            );
        }
        let mut reader = good.clone();
        reader.insert("scope".into(), json!("read"));
        assert_eq!(
            denied(&go(
                &both,
                &Answers {
                    keys,
                    answer: Some(reader),
                    inactive: false
                },
                "o",
                "/admin"
            )),
            DenyReason::InsufficientScope
        );
        // A provider with introspection only introspects JWT-shaped tokens too.
        let mut only = intro;
        only["local_jwks"] = Value::Null;
        let doc = json!({"providers": {"corp": {"introspection": only["introspection"]}},
                         "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "corp"}}]});
        let c = Config::from_json(doc.to_string().as_bytes()).unwrap();
        assert_eq!(
            go(&c, &miss, &jwt, "/x"),
            Decision::Introspect {
                provider: 0,
                token: jwt.clone()
            }
        );
    }

    #[test]
    fn waits_for_keys_and_refetches_unknown_kids_once() {
        let c = config(json!({}));
        let KeySource::Local(keys) = &c.providers[0].keys else {
            unreachable!()
        };
        let good = signer().token(&good_claims("https://idp", "api"));
        let stranger = Signer::es256("new-kid").token(&good_claims("https://idp", "api"));
        let go = |view: &dyn Known, token: &str| {
            let value = format!("Bearer {token}");
            let h = vec![("authorization", value.as_bytes())];
            decide(
                &c,
                view,
                Request {
                    path: "/api",
                    headers: &h,
                    now: crate::testkit::now(),
                },
            )
        };
        assert_eq!(
            go(&Fake(KeysNow::Pending), &good),
            Decision::Wait {
                provider: 0,
                refetch: false
            }
        );
        assert_eq!(
            denied(&go(&Fake(KeysNow::Unavailable), &good)),
            DenyReason::Unavailable
        );
        let may = Fake(KeysNow::Ready {
            keys,
            may_refetch: true,
        });
        assert!(matches!(go(&may, &good), Decision::Allow(_)));
        assert_eq!(
            go(&may, &stranger),
            Decision::Wait {
                provider: 0,
                refetch: true
            }
        );
        let may_not = Fake(KeysNow::Ready {
            keys,
            may_refetch: false,
        });
        assert_eq!(denied(&go(&may_not, &stranger)), DenyReason::InvalidToken);
        // Requests without a token never wait for keys.
        let h: Vec<(&str, &[u8])> = vec![];
        let d = decide(
            &c,
            &Fake(KeysNow::Pending),
            Request {
                path: "/api",
                headers: &h,
                now: 0,
            },
        );
        assert_eq!(denied(&d), DenyReason::MissingToken);
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
            // Headers the request does not have are not touched.
            let Decision::Allow(f) = run(&c, path, &[("x-other", "1")]) else {
                panic!()
            };
            assert_eq!((f.remove, f.set), (vec![], vec![]));
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
        // Nothing to remove: the token stays, and the request has no x-user of its own.
        assert_eq!(f.remove, Vec::<String>::new());
        assert_eq!(f.set, vec![("x-user".to_string(), "alice".to_string())]);
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

    /// Local keys, and one upstream client in a chosen state.
    struct WithCredential<'a>(LocalKeys<'a>, CredentialNow<'static>);
    impl Known for WithCredential<'_> {
        fn keys_now(&self, p: usize) -> KeysNow<'_> {
            self.0.keys_now(p)
        }
        fn verified(&self, _: &cache::TokenKey) -> Option<&Map<String, Value>> {
            None
        }
        fn introspected(&self, _: usize, _: &str) -> Cached<'_> {
            Cached::Miss
        }
        fn credential(&self, client: usize) -> CredentialNow<'_> {
            assert_eq!(client, 0);
            self.1
        }
    }

    #[test]
    fn injects_the_upstream_credential() {
        let mut doc: Value = json!({
            "providers": {"corp": {
                "issuer": "https://idp", "audiences": ["api"],
                "local_jwks": {"inline_string": jwks(&[signer().jwk()])}
            }},
            "upstream_credentials": {"orders": {
                "token_endpoint": {"http_uri": {"uri": "http://idp/token", "cluster": "idp"}},
                "client_id": "gw", "client_secret": "s"
            }},
            "rules": [
                {"match": {"prefix": "/open"}, "inject": "orders"},
                {"match": {"prefix": "/api"}, "requires": {"provider_name": "corp"}, "inject": "orders"},
                {"match": {"prefix": "/plain"}, "requires": {"provider_name": "corp"}}
            ]
        });
        let config = Config::from_json(doc.to_string().as_bytes()).unwrap();
        let token = signer().token(&good_claims("https://idp", "api"));
        let bearer = format!("Bearer {token}");
        let decide_with = |state, path: &str, headers: &[(&str, &str)]| {
            let headers: Vec<(&str, &[u8])> =
                headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
            let request = Request {
                path,
                headers: &headers,
                now: crate::testkit::now(),
            };
            decide(&config, &WithCredential(LocalKeys(&config), state), request)
        };
        let ready = CredentialNow::Ready("gateway-token");

        // Validated, then sent with the gateway's token instead of the caller's.
        let Decision::Allow(f) = decide_with(ready, "/api/x", &[("authorization", &bearer)]) else {
            panic!()
        };
        assert_eq!(f.passed, Passed::Authenticated);
        assert_eq!(f.injected, Some(0));
        assert_eq!(
            f.set,
            vec![(
                "authorization".to_string(),
                "Bearer gateway-token".to_string()
            )]
        );
        // A public rule injects too; the caller's Authorization is replaced, never forwarded.
        let Decision::Allow(f) = decide_with(ready, "/open", &[("authorization", "Basic dTpw")])
        else {
            panic!()
        };
        assert_eq!(f.passed, Passed::Public);
        assert_eq!(f.set[0].1, "Bearer gateway-token");
        // Inbound validation still comes first: no token, no upstream credential either.
        assert_eq!(
            denied(&decide_with(ready, "/api/x", &[])),
            DenyReason::MissingToken
        );
        // A rule without inject leaves Authorization alone (and strips the caller's token).
        let Decision::Allow(f) = decide_with(ready, "/plain", &[("authorization", &bearer)]) else {
            panic!()
        };
        assert_eq!((f.injected, f.set.len()), (None, 0));
        assert_eq!(f.remove, vec!["authorization".to_string()]);
        // No token yet: wait (keeping what was verified); none to be had: 503.
        match decide_with(
            CredentialNow::Pending,
            "/api/x",
            &[("authorization", &bearer)],
        ) {
            Decision::AwaitCredential {
                client: 0,
                verified,
            } => assert!(verified.is_some()),
            other => panic!("{other:?}"),
        }
        let d = decide_with(CredentialNow::Unavailable, "/open", &[]);
        assert_eq!(denied(&d), DenyReason::Unavailable);

        // `inject` must name a client; a filter that only injects needs no provider.
        doc["rules"][0]["inject"] = json!("billing");
        let e = Config::from_json(doc.to_string().as_bytes()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "rules[0].inject: names no client in upstream_credentials"
        );
        let only = json!({
            "upstream_credentials": doc["upstream_credentials"].clone(),
            "rules": [{"match": {"prefix": "/"}, "inject": "orders"}]
        });
        assert!(Config::from_json(only.to_string().as_bytes()).is_ok());
    }
}
