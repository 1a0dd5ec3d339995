//! The decision: a request (path, headers, the time) and what the filter knows in, what to do
//! out. Which rule applies is [`crate::route`]'s business, what its requirement asks
//! [`crate::requirement`]'s, what each provider makes of the token [`crate::authenticate`]'s,
//! and what goes upstream [`crate::identity`]'s; this module puts them in order.

use crate::authenticate::{self, Authenticator};
use crate::binding::Peer;
use crate::cache;
use crate::challenge::{self, Challenge, Hints, StepUp};
use crate::config::{Config, KeySource, Rule};
use crate::dpop::{nonce, replay, ProofError};
use crate::extract::Extracted;
use crate::jwt;
use crate::jwt::keys::{Alg, Jwk};
use crate::requirement::{self, Failure, Outcome, Pending};
use crate::resource;
use serde_json::{Map, Value};
use smallvec::SmallVec;

pub use crate::authenticate::NO_KEYS;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Passed {
    /// A rule required a token and a provider accepted it.
    Authenticated,
    /// A rule's requirement passed without accepting a token (`allow_missing`,
    /// `allow_missing_or_failed`).
    Anonymous,
    /// The matching rule has no `requires`.
    Public,
    /// No rule matched the request.
    #[default]
    NoRule,
    /// A CORS preflight, with `bypass_cors_preflight`.
    Preflight,
}

/// Changes to make to an allowed request before it goes upstream.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Forward<'c> {
    pub passed: Passed,
    /// Headers to remove (all their values), before `set` is applied: only headers the request
    /// has (each change of the request's headers costs a host call, and makes Envoy clear its
    /// route cache).
    pub remove: SmallVec<[&'c str; 4]>,
    /// Headers to set, replacing any value, in order (the names are the configuration's).
    pub set: SmallVec<[(&'c str, String); 2]>,
    /// Bit `i`: the request has no header named as `set[i]` and no earlier entry sets it, so the
    /// shell may add the value instead of replacing (Envoy then skips a search of the request's
    /// headers). Set by [`decide`]; entries from the 65th on are always replaced.
    pub fresh: u64,
    /// A new `:path`, when the token came in the query and is not forwarded.
    pub path: Option<String>,
    /// Filter state to set (`claim_to_filter_state`): key, plain value.
    pub filter_state: Vec<(&'c str, String)>,
    /// Tokens whose signature was just verified, for the verified-token cache.
    pub verified: Vec<Verified>,
    /// The upstream client (index into `Config::clients`) whose token `set` carries.
    pub injected: Option<usize>,
    /// The DPoP proofs the request passed with: the shell records them in the replay store
    /// before the request goes, and answers [`replayed`] if one was there already.
    pub proofs: Vec<replay::Use>,
    /// The index of the rule the request passed (with `proofs` only), for [`replayed`].
    pub rule: Option<usize>,
}

/// A verified token's claims, to cache under `key` until `until` (ms since the epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub key: cache::TokenKey,
    pub claims: Map<String, Value>,
    pub until: u64,
}

/// The description of the 503 answered when a rule's upstream token cannot be had.
pub const NO_CREDENTIAL: &str = "The credential for the upstream cannot be obtained";

/// The longest a verified token is cached (its `exp` usually ends it sooner).
pub const MAX_VERIFIED_CACHE_MS: u64 = 300_000;

// An allowed request's changes sit inline (short lists on the stack): a decision is made and
// moved once a request, and boxing it would cost the allocation the inline lists save.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Decision<'c> {
    Allow(Forward<'c>),
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
        verified: Vec<Verified>,
    },
    /// The filter's own answer under `/.well-known/oauth-protected-resource`: a protected
    /// resource's metadata document, or why there is none.
    Serve(resource::Reply),
}

/// A cached introspection answer.
#[derive(Debug, Clone, Copy)]
pub enum Cached<'a> {
    Active(&'a Map<String, Value>),
    Inactive,
    /// The call for this token just failed (no usable answer, or too late).
    Failed,
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
    /// No keys were ever loaded, and the last fetch failed (or the request waited too long).
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
    /// The downstream connection's client certificate (asked only for certificate-bound tokens).
    fn client_certificate(&self) -> Peer {
        Peer::Plain
    }
    /// The secret every worker shares, for DPoP nonces and replay-store keys.
    fn shared_secret(&self) -> &[u8; 32] {
        &NO_SECRET
    }
    /// Checks one signature; the host may do it faster than Wasm, with the same verdicts.
    fn check_signature(&self, alg: Alg, key: &Jwk, input: &[u8], signature: &[u8]) -> bool {
        jwt::verify::verify(alg, &key.material, input, signature)
    }
}

/// The shared secret of a [`Known`] that has none (tests, the fuzz harness).
static NO_SECRET: [u8; 32] = [0; 32];

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
        configured_keys(self.0, provider)
    }
}

/// Provider `provider`'s configured keys (`local_jwks`); remote key sets are pending.
pub fn configured_keys(config: &Config, provider: usize) -> KeysNow<'_> {
    match config.providers.get(provider).map(|p| &p.keys) {
        Some(KeySource::Local(keys)) => KeysNow::Ready {
            keys,
            may_refetch: false,
        },
        _ => KeysNow::Pending,
    }
}

/// Decides what to do with `request`, with what `known` knows now.
pub fn decide<'c>(config: &'c Config, known: &dyn Known, request: Request<'_>) -> Decision<'c> {
    let path = request.path.split(['?', '#']).next().unwrap_or("");
    if let Some(reply) = resource::serve(&config.resources, path, request.headers) {
        return Decision::Serve(reply);
    }
    // Headers the filter owns are removed from every request, whatever the rule says.
    let mut forward = Forward {
        remove: owned_present(config, request.headers),
        ..Forward::default()
    };
    if config.bypass_cors_preflight && is_preflight(request.headers) {
        forward.passed = Passed::Preflight;
        return Decision::Allow(forward);
    }
    let Some(rule) = config.rule_for(path, request.headers) else {
        return Decision::Allow(forward);
    };
    let Some(requires) = &rule.requires else {
        forward.passed = Passed::Public;
        return inject(rule, forward, known, request.headers);
    };
    let found = authenticate::find(config, rule.providers, &request);
    let resource = rule.resource.and_then(|r| config.resources.get(r));
    let audiences = resource.map(|r| r.audiences.as_slice());
    let mut auth = Authenticator::new(config, known, request, &found, audiences);
    let presented = rule.dpop.is_some()
        && found
            .iter()
            .any(|f| matches!(f, Extracted::Token { source, .. } if source.is_dpop()));
    let hints = rule_hints(config, rule, presented);
    match requirement::evaluate(requires, &mut auth) {
        Outcome::Pass(accepted) => {
            forward.passed = if accepted.providers.is_empty() {
                Passed::Anonymous
            } else {
                Passed::Authenticated
            };
            match auth.pass((config, request), rule, accepted, &mut forward) {
                Ok(()) => {
                    if !forward.proofs.is_empty() {
                        forward.rule = config.rules.iter().position(|r| std::ptr::eq(r, rule));
                    }
                    inject(rule, forward, known, request.headers)
                }
                Err(why) => Decision::Deny(challenge::invalid_request(&hints, why)),
            }
        }
        Outcome::Fail(failure) => {
            let mut answer = answer(&hints, failure);
            if answer.status == 401 {
                answer.dpop_nonce = dpop_nonce(rule, known.shared_secret(), request.now);
            }
            Decision::Deny(answer)
        }
        Outcome::Wait(Pending::Keys { provider, refetch }) => Decision::Wait { provider, refetch },
        Outcome::Wait(Pending::Introspection { provider }) => match auth.token(provider) {
            Some(token) => Decision::Introspect {
                provider,
                token: token.to_string(),
            },
            None => Decision::Deny(challenge::unavailable("The filter is misconfigured")),
        },
    }
}

/// What every challenge of `rule` carries (`presented`: the request used the DPoP scheme).
fn rule_hints<'a>(config: &'a Config, rule: &'a Rule, presented: bool) -> Hints<'a> {
    let resource = rule.resource.and_then(|r| config.resources.get(r));
    Hints {
        realm: &config.realm,
        scope: &rule.scope,
        resource_metadata: resource.map(|r| r.metadata_url.as_str()),
        dpop: rule.dpop.map(|d| challenge::DpopHints {
            bearer: d.bearer,
            presented,
        }),
    }
}

/// A fresh `DPoP-Nonce` for a 401 of `rule`, when one of its providers wants nonces.
fn dpop_nonce(rule: &Rule, secret: &[u8; 32], now: u64) -> Option<String> {
    let wants = rule.dpop.is_some_and(|d| d.nonce);
    wants.then(|| nonce::issue(secret, now))
}

/// The answer to an allowed request whose DPoP proof the replay store had seen (`forward.rule`
/// is the rule it passed); made only then, by the shell. `secret`: [`Known::shared_secret`].
pub fn replayed(config: &Config, forward: &Forward, secret: &[u8; 32], now: u64) -> Challenge {
    let Some(rule) = forward.rule.and_then(|r| config.rules.get(r)) else {
        return challenge::invalid_dpop_proof(
            &Hints::realm(&config.realm),
            ProofError::Replayed,
            None,
        );
    };
    let hints = rule_hints(config, rule, true);
    challenge::invalid_dpop_proof(&hints, ProofError::Replayed, dpop_nonce(rule, secret, now))
}

/// The owned headers this request carries (only those need a removal).
fn owned_present<'c>(config: &'c Config, headers: &[(&str, &[u8])]) -> SmallVec<[&'c str; 4]> {
    config
        .owned_headers
        .iter()
        .filter(|owned| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(owned)))
        .map(String::as_str)
        .collect()
}

/// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
fn is_preflight(headers: &[(&str, &[u8])]) -> bool {
    let has = |name: &str| headers.iter().any(|(n, v)| *n == name && !v.is_empty());
    headers
        .iter()
        .any(|(n, v)| *n == ":method" && *v == b"OPTIONS")
        && has("origin")
        && has("access-control-request-method")
}

/// The RFC 6750 (or RFC 9470) answer to a failed requirement.
fn answer(hints: &Hints<'_>, failure: Failure<'_>) -> Challenge {
    match failure {
        Failure::Missing => challenge::missing_token(hints),
        Failure::Malformed(why) => challenge::invalid_request(hints, why),
        Failure::Invalid { description, .. } => challenge::invalid_token(hints, description),
        Failure::Proof(error) => challenge::invalid_dpop_proof(hints, error, None),
        Failure::Insufficient {
            scopes,
            scope_missing,
        } => challenge::insufficient_scope(hints, &scopes, scope_missing),
        Failure::StepUp {
            acr_values,
            max_age,
        } => challenge::insufficient_user_authentication(
            hints,
            StepUp {
                acr_values,
                max_age,
            },
        ),
        Failure::Unavailable(why) => challenge::unavailable(why),
    }
}

/// Which of `set` name headers that `headers` lacks and no earlier entry names
/// ([`Forward::fresh`]).
fn fresh(set: &[(&str, String)], headers: &[(&str, &[u8])]) -> u64 {
    let mut bits = 0;
    for (i, (name, _)) in set.iter().enumerate().take(64) {
        let earlier = set[..i].iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        if !earlier && !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            bits |= 1 << i;
        }
    }
    bits
}

/// Lets an allowed request go, with the rule's upstream client token in `Authorization` when it
/// has `inject` (replacing whatever credentials the caller sent there), and marks the headers
/// set that the request (`headers`) lacks ([`Forward::fresh`]).
fn inject<'c>(
    rule: &Rule,
    mut forward: Forward<'c>,
    known: &dyn Known,
    headers: &[(&str, &[u8])],
) -> Decision<'c> {
    if let Some(client) = rule.inject {
        match known.credential(client) {
            CredentialNow::Ready(token) => {
                forward
                    .set
                    .push(("authorization", format!("Bearer {token}")));
                forward.injected = Some(client);
            }
            CredentialNow::Pending => {
                return Decision::AwaitCredential {
                    client,
                    verified: forward.verified,
                }
            }
            CredentialNow::Unavailable => {
                return Decision::Deny(challenge::unavailable(NO_CREDENTIAL))
            }
        }
    }
    forward.fresh = fresh(&forward.set, headers);
    Decision::Allow(forward)
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

    fn run<'c>(config: &'c Config, path: &str, headers: &[(&str, &str)]) -> Decision<'c> {
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
        let [v] = <[Verified; 1]>::try_from(f.verified).expect("one verified token to cache");
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
        assert_eq!(f.verified, vec![]);
        assert_eq!(f.set[..], [("x-user", "alice".to_string())]);
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
        fn go<'c>(c: &'c Config, known: &dyn Known, token: &str, path: &str) -> Decision<'c> {
            let now = crate::testkit::now();
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
        }
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
        assert_eq!(f.set[..], [("x-user", "ivy".to_string())]);
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
    fn fresh_marks_headers_the_request_lacks_once() {
        fn set<'a>(names: &[&'a str]) -> Vec<(&'a str, String)> {
            names.iter().map(|n| (*n, "v".to_string())).collect()
        }
        let headers: &[(&str, &[u8])] = &[("x-a", b"1"), (":path", b"/")];
        assert_eq!(fresh(&set(&["x-b", "x-a", "x-c", "X-B"]), headers), 0b0101);
        assert_eq!(fresh(&set(&[]), headers), 0);
        // Past 64 entries every header is replaced.
        let many: Vec<String> = (0..70).map(|i| format!("x-{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(fresh(&set(&many), &[]), u64::MAX);
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
        assert_eq!(f.remove[..], ["x-user", "authorization"]);
        assert_eq!(f.set[..], [("x-user", "alice".to_string())]);
        // The forged x-user is replaced, not added to.
        assert_eq!(f.fresh, 0);
        let Decision::Allow(f) = run(&c, "/api/x", &[("authorization", &auth)]) else {
            panic!()
        };
        assert_eq!((f.remove.to_vec(), f.fresh), (vec!["authorization"], 1));
        // Public and unmatched paths still lose forged identity headers.
        for (path, passed) in [
            ("/public/a", Passed::Public),
            ("/elsewhere", Passed::NoRule),
        ] {
            let Decision::Allow(f) = run(&c, path, &[("x-user", "mallory")]) else {
                panic!()
            };
            assert_eq!(
                (f.passed, f.remove.to_vec(), f.set.to_vec()),
                (passed, vec!["x-user"], vec![])
            );
            // Headers the request does not have are not touched.
            let Decision::Allow(f) = run(&c, path, &[("x-other", "1")]) else {
                panic!()
            };
            assert!(f.remove.is_empty() && f.set.is_empty());
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
        assert!(f.remove.is_empty());
        assert_eq!(f.set[..], [("x-user", "alice".to_string())]);
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
            f.set[..],
            [("authorization", "Bearer gateway-token".to_string())]
        );
        // A public rule injects too; the caller's Authorization is replaced, never forwarded.
        let Decision::Allow(f) = decide_with(ready, "/open", &[("authorization", "Basic dTpw")])
        else {
            panic!()
        };
        assert_eq!(f.passed, Passed::Public);
        assert_eq!(f.set[0].1, "Bearer gateway-token");
        // The caller's Authorization is replaced; without one, the gateway's is added.
        assert_eq!(f.fresh, 0);
        let Decision::Allow(f) = decide_with(ready, "/open", &[]) else {
            panic!()
        };
        assert_eq!((f.set[0].1.as_str(), f.fresh), ("Bearer gateway-token", 1));
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
        assert_eq!(f.remove[..], ["authorization"]);
        // No token yet: wait (keeping what was verified); none to be had: 503.
        match decide_with(
            CredentialNow::Pending,
            "/api/x",
            &[("authorization", &bearer)],
        ) {
            Decision::AwaitCredential {
                client: 0,
                verified,
            } => assert_eq!(verified.len(), 1),
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
