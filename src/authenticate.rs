//! The authenticator: for one request, each provider's token, what the provider makes of it,
//! and the outcome of each provider leaf of the rule's requirement ([`requirement::Leaves`]).
//!
//! A token is found once per provider ([`find`]), parsed at most once however many providers
//! read it, and tried only by the providers whose `issuer` it names (or that have none): a
//! JWT's unverified `iss` may only rule a provider out, never in. A provider's verdict (is the
//! token genuine: signature verified, now or earlier, or active at introspection) is reached
//! once; each leaf then checks dates, issuer and its audiences (or those of the rule's protected
//! resource), its scopes and claims, and its step-up conditions (`acr_values`, `max_age`).

use crate::binding;
use crate::cache;
use crate::claims;
use crate::config::{Config, KeySource, Provider, Rule};
use crate::decision::{Cached, Forward, KeysNow, Known, Request, Verified, MAX_VERIFIED_CACHE_MS};
use crate::dpop::replay;
use crate::extract::{self, Extracted};
use crate::identity;
use crate::jwt::{self, keys::Jwk, Jws, TokenError};
use crate::requirement::{Accepted, Failure, Leaf, Leaves, Outcome, Pending, ProviderSet};
use serde_json::{Map, Value};
use smallvec::SmallVec;

/// The description of the 503 answered when a provider's keys cannot be had.
pub const NO_KEYS: &str = "The keys to check the token cannot be fetched";
/// The description of the 503 answered when introspection gives no usable answer.
pub const INTROSPECTION_FAILED: &str = "The token cannot be introspected";

/// Each provider's credential in the request, indexed like the configuration's providers
/// (providers the rule does not consult have none). Found before anything is verified, and
/// kept apart from the [`Authenticator`] so that parsed tokens can borrow from it.
pub fn find<'a>(config: &'a Config, consulted: ProviderSet, request: &Request<'a>) -> Found<'a> {
    let mut found = Found::with_capacity(config.providers.len());
    for (i, p) in config.providers.iter().enumerate() {
        let same =
            (0..i).find(|&j| consulted.contains(j) && config.providers[j].sources == p.sources);
        found.push(match same.and_then(|j| found.get(j)) {
            _ if !consulted.contains(i) => Extracted::Missing,
            Some(earlier) => earlier.clone(),
            None => extract::extract(&p.sources, request.headers, request.path),
        });
    }
    found
}

/// Each provider's credential ([`find`]); on the stack for up to four providers.
pub type Found<'a> = SmallVec<[Extracted<'a>; 4]>;

/// Where a genuine token's claims are.
#[derive(Clone, Copy)]
enum Claims<'a> {
    /// Borrowed from what the filter knew: the verified-token cache, an introspection answer.
    Known(&'a Map<String, Value>),
    /// In the token parsed at this index of [`Authenticator::parsed`].
    Parsed(usize),
}

/// What a provider makes of its token.
enum Verdict<'a> {
    Genuine {
        claims: Claims<'a>,
        /// The claims are an introspection answer (see [`claims::check_for`]).
        vouched: bool,
        /// Verified just now: its verified-token cache key, and until when to keep it (ms).
        fresh: Option<(cache::TokenKey, u64)>,
    },
    Refused(Failure<'a>),
    Wait(Pending),
}

/// One request's authentication state.
pub struct Authenticator<'a> {
    config: &'a Config,
    known: &'a dyn Known,
    request: Request<'a>,
    found: &'a [Extracted<'a>],
    /// The audiences of the rule's protected resource: they replace the providers'.
    audiences: Option<&'a [String]>,
    verdicts: SmallVec<[Option<Verdict<'a>>; 4]>,
    /// Tokens parsed so far, with the provider whose token each is.
    parsed: Vec<(usize, Result<Jws<'a>, TokenError>)>,
    /// The good DPoP proofs of providers whose tokens are bound to their key.
    proofs: Vec<(usize, replay::Use)>,
}

impl<'a> Authenticator<'a> {
    pub fn new(
        config: &'a Config,
        known: &'a dyn Known,
        request: Request<'a>,
        found: &'a [Extracted<'a>],
        audiences: Option<&'a [String]>,
    ) -> Authenticator<'a> {
        Authenticator {
            config,
            known,
            request,
            found,
            audiences,
            verdicts: (0..found.len()).map(|_| None).collect(),
            parsed: Vec::new(),
            proofs: Vec::new(),
        }
    }

    /// Provider `p`'s token, if it found one.
    pub fn token(&self, p: usize) -> Option<&'a str> {
        match self.found.get(p) {
            Some(Extracted::Token { token, .. }) => Some(token),
            _ => None,
        }
    }

    /// Runs `f` on provider `p`'s verdict, reaching it first if need be.
    fn with_verdict<T>(&mut self, p: usize, f: impl FnOnce(&Self, &Verdict<'a>) -> T) -> T {
        let verdict = match self.verdicts.get_mut(p).and_then(Option::take) {
            Some(v) => v,
            None => self.judge(p),
        };
        let out = f(self, &verdict);
        if let Some(slot) = self.verdicts.get_mut(p) {
            *slot = Some(verdict);
        }
        out
    }

    fn claims(&self, claims: Claims<'a>) -> Option<&Map<String, Value>> {
        match claims {
            Claims::Known(map) => Some(map),
            Claims::Parsed(i) => match self.parsed.get(i) {
                Some((_, Ok(jws))) => Some(&jws.claims),
                _ => None,
            },
        }
    }

    /// What provider `p` makes of its token: is it genuine, and if it is bound to a key or a
    /// certificate (`cnf`), does the request prove it holds them.
    fn judge(&mut self, p: usize) -> Verdict<'a> {
        let verdict = self.genuine(p);
        let Verdict::Genuine { claims, .. } = &verdict else {
            return verdict;
        };
        let (Some(provider), Some(Extracted::Token { token, source, .. }), Some(map)) = (
            self.config.providers.get(p),
            self.found.get(p),
            self.claims(*claims),
        ) else {
            return verdict;
        };
        let via_dpop = source.is_dpop();
        match binding::check(provider, map, token, via_dpop, &self.request, self.known) {
            Ok(None) => verdict,
            Ok(Some(proof)) => {
                self.proofs.push((p, proof));
                verdict
            }
            Err(failure) => Verdict::Refused(failure),
        }
    }

    /// Whether provider `p`'s token is genuine.
    fn genuine(&mut self, p: usize) -> Verdict<'a> {
        let (Some(provider), Some(found)) = (self.config.providers.get(p), self.found.get(p))
        else {
            return Verdict::Refused(Failure::Unavailable("The filter is misconfigured"));
        };
        let (token, unchecked) = match found {
            Extracted::Missing => return Verdict::Refused(Failure::Missing),
            Extracted::Invalid(why) => return Verdict::Refused(Failure::Malformed(why)),
            Extracted::Token {
                token, unchecked, ..
            } => (&**token, *unchecked),
        };
        let has_keys = !matches!(provider.keys, KeySource::None);
        // A token this VM verified before needs no parsing and no cryptography, and no check
        // of its characters: it passed that check when it was verified.
        let key = has_keys.then(|| self.known.token_key(&provider.name, token));
        if let Some(claims) = key.as_ref().and_then(|k| self.known.verified(k)) {
            return Verdict::Genuine {
                claims: Claims::Known(claims),
                vouched: false,
                fresh: None,
            };
        }
        if let (true, Err(why)) = (unchecked, extract::well_formed(token)) {
            return Verdict::Refused(Failure::Malformed(why));
        }
        let at = self.parse(p, token);
        let parsed = at.and_then(|at| Some((at, &self.parsed.get(at)?.1)));
        match parsed {
            Some((_, Ok(jws))) if foreign(provider, &jws.claims) => {
                Verdict::Refused(Failure::Invalid {
                    description: claims::ClaimError::WrongIssuer.description(),
                    foreign: true,
                })
            }
            Some((at, Ok(_))) if has_keys => {
                let key = key.unwrap_or_else(|| self.known.token_key(&provider.name, token));
                self.verify(p, at, key)
            }
            Some((_, Err(e))) if has_keys => invalid(e.description()),
            None if provider.introspection.is_none() => {
                invalid(if token.len() > jwt::MAX_TOKEN_BYTES {
                    TokenError::TooLarge.description()
                } else {
                    TokenError::Malformed.description()
                })
            }
            _ => self.introspected(p, token),
        }
    }

    /// The index in `parsed` of provider `p`'s token, parsing it if no provider did yet; `None`
    /// for a token that is not JWT-shaped (not kept: telling one costs less than remembering).
    fn parse(&mut self, p: usize, token: &'a str) -> Option<usize> {
        let same =
            |(owner, _): &(usize, Result<Jws<'a>, TokenError>)| self.token(*owner) == Some(token);
        if let Some(at) = self.parsed.iter().position(same) {
            return Some(at);
        }
        #[cfg(test)]
        tests::PARSES.with(|n| n.set(n.get() + 1));
        let parsed = jwt::parse_if_jwt(token)?;
        self.parsed.push((p, parsed));
        Some(self.parsed.len() - 1)
    }

    /// Checks the signature of the token parsed at `at` with provider `p`'s keys.
    fn verify(&self, p: usize, at: usize, key: cache::TokenKey) -> Verdict<'a> {
        let Some((_, Ok(jws))) = self.parsed.get(at) else {
            return invalid(TokenError::Malformed.description());
        };
        let (keys, may_refetch): (&[Jwk], bool) = match self.known.keys_now(p) {
            KeysNow::Ready { keys, may_refetch } => (keys, may_refetch),
            KeysNow::Pending => {
                return Verdict::Wait(Pending::Keys {
                    provider: p,
                    refetch: false,
                })
            }
            KeysNow::Unavailable => return Verdict::Refused(Failure::Unavailable(NO_KEYS)),
        };
        let profile = self.config.providers.get(p).and_then(|pr| pr.profile);
        if let Some(Err(why)) = profile.map(|profile| jwt::profile::check(profile, jws)) {
            return invalid(why);
        }
        let known = self.known;
        let check =
            |alg, key: &Jwk, input: &[u8], sig: &[u8]| known.check_signature(alg, key, input, sig);
        match jwt::verify_signature_with(jws, keys, &check) {
            Ok(()) => Verdict::Genuine {
                claims: Claims::Parsed(at),
                vouched: false,
                fresh: Some((key, self.cache_until(&jws.claims))),
            },
            Err(TokenError::UnknownKey) if may_refetch => Verdict::Wait(Pending::Keys {
                provider: p,
                refetch: true,
            }),
            Err(e) => invalid(e.description()),
        }
    }

    /// Until when a token verified now may stay cached (ms): its `exp`, at most 5 minutes.
    fn cache_until(&self, claims: &Map<String, Value>) -> u64 {
        let now_ms = self.request.now.saturating_mul(1000);
        let exp_ms = claims
            .get("exp")
            .and_then(Value::as_f64)
            .map_or(u64::MAX, |e| (e.max(0.0) * 1000.0) as u64);
        exp_ms.min(now_ms.saturating_add(MAX_VERIFIED_CACHE_MS))
    }

    fn introspected(&self, p: usize, token: &str) -> Verdict<'a> {
        match self.known.introspected(p, token) {
            Cached::Miss => Verdict::Wait(Pending::Introspection { provider: p }),
            Cached::Inactive => invalid("The access token is not active"),
            Cached::Failed => Verdict::Refused(Failure::Unavailable(INTROSPECTION_FAILED)),
            Cached::Active(claims) => Verdict::Genuine {
                claims: Claims::Known(claims),
                vouched: true,
                fresh: None,
            },
        }
    }

    /// The outcome of provider `p`'s token for `leaf` (none: the provider's own checks only).
    /// The leaf's audiences replace the rule's resource audiences, which replace the
    /// provider's.
    fn outcome(&mut self, p: usize, leaf: Option<&'a Leaf>) -> Outcome<'a> {
        let now = self.request.now;
        let provider = self.config.providers.get(p);
        let audiences = leaf.and_then(|l| l.audiences.as_deref()).or(self.audiences);
        self.with_verdict(p, |auth, verdict| match verdict {
            Verdict::Refused(f) => Outcome::Fail(f.clone()),
            Verdict::Wait(pending) => Outcome::Wait(*pending),
            Verdict::Genuine {
                claims, vouched, ..
            } => {
                let (Some(provider), Some(map)) = (provider, auth.claims(*claims)) else {
                    return Outcome::Fail(Failure::Missing);
                };
                let audiences = audiences.unwrap_or(&provider.claims.audiences);
                if let Err(why) = claims::check_for(map, &provider.claims, audiences, now, *vouched)
                {
                    return Outcome::Fail(Failure::Invalid {
                        description: why.description(),
                        foreign: false,
                    });
                }
                match leaf {
                    Some(leaf) => {
                        leaf_conditions(leaf, map, now, provider.claims.clock_skew_seconds)
                    }
                    None => Outcome::Pass(Accepted {
                        providers: ProviderSet::one(p),
                        lenient: false,
                    }),
                }
            }
        })
    }

    /// Lets a passing request go: refuses it if it carries a credential nothing on the passing
    /// path accepted (unless it passed leniently), then adds the identity of every accepted
    /// provider to `forward`, and the tokens verified just now to its cache list. `config` and
    /// `request` are those of [`Authenticator::new`], with their own lifetimes: `forward`
    /// borrows header names from the configuration only.
    pub fn pass<'c>(
        mut self,
        (config, request): (&'c Config, Request<'_>),
        rule: &Rule,
        accepted: Accepted,
        forward: &mut Forward<'c>,
    ) -> Result<(), &'static str> {
        if rule.several_places && !accepted.lenient && !self.all_checked(rule, accepted) {
            return Err(extract::ONE_CREDENTIAL);
        }
        let mut out = identity::Out::new(request);
        for p in accepted.providers.iter() {
            let (Some(provider), Some(Extracted::Token { token, source, .. })) =
                (config.providers.get(p), self.found.get(p))
            else {
                continue;
            };
            // The token was found at one of the provider's own sources (or an equal one of a
            // provider reading the same places, [`find`]): the same source, borrowed for `'c`.
            // Never missing; if it were, the request is refused rather than let through with
            // its credential and without the identity.
            let Some(source) = provider.sources.iter().find(|s| *s == *source) else {
                return Err("The filter is misconfigured");
            };
            if let Some(Some(Verdict::Genuine {
                claims, vouched, ..
            })) = self.verdicts.get(p)
            {
                if let Some(map) = self.claims(*claims) {
                    out.add(provider, map, *vouched, token, source, forward);
                }
            }
        }
        out.finish(forward);
        forward.verified = self.fresh();
        for (p, proof) in &self.proofs {
            if accepted.providers.contains(*p) && !forward.proofs.contains(proof) {
                forward.proofs.push(*proof);
            }
        }
        Ok(())
    }

    /// Whether every credential the rule's providers found was accepted on the passing path
    /// (by its provider, or by one reading the same place).
    fn all_checked(&self, rule: &Rule, accepted: Accepted) -> bool {
        let accepted_at = |source: &crate::config::Source| {
            accepted.providers.iter().any(|p| {
                matches!(self.found.get(p), Some(Extracted::Token { source: s, .. }) if s.same_place(source))
            })
        };
        rule.providers.iter().all(|q| match self.found.get(q) {
            Some(Extracted::Token { source, .. }) => {
                accepted.providers.contains(q) || accepted_at(source)
            }
            Some(Extracted::Invalid(_)) => false,
            _ => true,
        })
    }

    /// The tokens verified just now, with the claims a later decision can need, for the
    /// verified-token cache (moved out of the parsed tokens, copied only when two providers
    /// verified the same token).
    fn fresh(&mut self) -> Vec<Verified> {
        let mut list: Vec<(usize, usize, cache::TokenKey, u64)> = Vec::new();
        for (p, verdict) in self.verdicts.iter().enumerate() {
            if let Some(Verdict::Genuine {
                claims: Claims::Parsed(at),
                fresh: Some((key, until)),
                ..
            }) = verdict
            {
                list.push((p, *at, *key, *until));
            }
        }
        let mut out = Vec::with_capacity(list.len());
        for (i, (p, at, key, until)) in list.iter().enumerate() {
            let shared = list[i + 1..].iter().any(|(_, other, _, _)| other == at);
            let Some((_, Ok(jws))) = self.parsed.get_mut(*at) else {
                continue;
            };
            let mut claims = if shared {
                jws.claims.clone()
            } else {
                std::mem::take(&mut jws.claims)
            };
            if let Some(provider) = self.config.providers.get(*p) {
                claims.retain(|name, _| provider.kept_claims.iter().any(|k| k == name));
            }
            out.push(Verified {
                key: *key,
                claims,
                until: *until,
            });
        }
        out
    }
}

impl<'a> Leaves<'a> for Authenticator<'a> {
    fn leaf(&mut self, leaf: &'a Leaf) -> Outcome<'a> {
        self.outcome(leaf.provider, Some(leaf))
    }

    fn plain(&mut self, provider: usize) -> Outcome<'a> {
        self.outcome(provider, None)
    }

    fn providers(&self) -> usize {
        self.config.providers.len()
    }
}

/// What a leaf asks beyond its provider, of claims its provider accepted: its scopes and claim
/// conditions (else 403), then its step-up conditions (else 401, RFC 9470).
fn leaf_conditions<'a>(
    leaf: &'a Leaf,
    map: &Map<String, Value>,
    now: u64,
    skew: u64,
) -> Outcome<'a> {
    let scoped = claims::has_scopes(map, &leaf.scopes);
    if !scoped || !leaf.claims.iter().all(|c| c.holds(map)) {
        return Outcome::Fail(Failure::Insufficient {
            scopes: leaf.scopes.iter().map(String::as_str).collect(),
            scope_missing: !scoped,
        });
    }
    match claims::user_authentication(map, &leaf.acr_values, leaf.max_age, now, skew) {
        Ok(()) => Outcome::Pass(Accepted {
            providers: ProviderSet::one(leaf.provider),
            lenient: false,
        }),
        Err(claims::UserAuthentication::Insufficient { acr, age }) => {
            Outcome::Fail(Failure::StepUp {
                acr_values: acr.then_some(leaf.acr_values.as_slice()),
                max_age: leaf.max_age.filter(|_| age),
            })
        }
        Err(claims::UserAuthentication::Malformed(description)) => {
            Outcome::Fail(Failure::Invalid {
                description,
                foreign: false,
            })
        }
    }
}

fn invalid<'a>(description: &'static str) -> Verdict<'a> {
    Verdict::Refused(Failure::Invalid {
        description,
        foreign: false,
    })
}

/// Whether a token with these (unverified) claims names an issuer other than the provider's.
fn foreign(provider: &Provider, claims: &Map<String, Value>) -> bool {
    match (&provider.claims.issuer, claims.get("iss")) {
        (Some(issuer), Some(Value::String(iss))) => iss != issuer,
        _ => false,
    }
}

/// Why a token was not accepted by [`authenticate`].
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

/// Verifies a token of `provider` with `keys` (in Wasm) and checks its claims: one provider,
/// no rule (the fuzz harness's and the tests' reference).
pub fn authenticate(
    provider: &Provider,
    keys: &[Jwk],
    token: &str,
    now: u64,
) -> Result<Map<String, Value>, AuthError> {
    let jws = jwt::parse(token).map_err(AuthError::Token)?;
    jwt::verify_signature(&jws, keys).map_err(AuthError::Token)?;
    claims::check(&jws.claims, &provider.claims, now).map_err(AuthError::Claims)?;
    Ok(jws.claims)
}

#[cfg(test)]
mod tests {
    use crate::cache;
    use crate::challenge::DenyReason;
    use crate::config::{Config, KeySource};
    use crate::decision::{
        decide, Cached, CredentialNow, Decision, Forward, KeysNow, Known, Passed, Request,
    };
    use crate::jwt::keys::{Alg, Jwk};
    use crate::testkit::{good_claims, jwks, now, Signer};
    use serde_json::{json, Map, Value};
    use std::cell::{Cell, RefCell};
    use std::sync::OnceLock;

    thread_local! {
        /// Tokens parsed by this thread's authenticators.
        pub(super) static PARSES: Cell<usize> = const { Cell::new(0) };
    }

    struct Keys {
        corp: Signer,
        partner: Signer,
    }

    fn keys() -> &'static Keys {
        static K: OnceLock<Keys> = OnceLock::new();
        K.get_or_init(|| Keys {
            corp: Signer::es256("corp-1"),
            partner: Signer::es256("partner-1"),
        })
    }

    /// Three providers and rules for each tree shape; `web` reads a cookie, `opaque`
    /// introspects.
    fn config() -> Config {
        let k = keys();
        let doc = json!({
            "bypass_cors_preflight": true,
            "providers": {
                "corp": {"issuer": "https://corp", "audiences": ["api"],
                         "local_jwks": {"inline_string": jwks(&[k.corp.jwk()])},
                         "claim_to_headers": [{"header_name": "x-user", "claim_name": "sub"}],
                         "claim_to_filter_state": [{"key": "oauth.sub", "claim_name": "sub"}],
                         "forward_payload_header": "x-jwt-payload"},
                "partner": {"issuer": "https://partner", "audiences": ["api"],
                            "local_jwks": {"inline_string": jwks(&[k.partner.jwk()])},
                            "from_headers": [{"name": "x-partner-token"}],
                            "claim_to_headers": [{"header_name": "x-partner", "claim_name": "sub"}]},
                "web": {"issuer": "https://corp", "audiences": ["api"],
                        "local_jwks": {"inline_string": jwks(&[k.corp.jwk()])},
                        "from_cookies": ["session"],
                        "claim_to_headers": [{"header_name": "x-web-user", "claim_name": "sub"}]},
                "opaque": {"issuer": "https://corp",
                           "introspection": {"http_uri": {"uri": "http://idp/i", "cluster": "idp"},
                                             "client_id": "gw", "client_secret": "s"},
                           "claim_to_headers": [{"header_name": "x-opaque-user", "claim_name": "sub"}]}
            },
            "protected_resources": {
                "mcp": {"resource": "https://api.example/mcp", "authorization_servers": ["https://corp"]}
            },
            "rules": [
                {"match": {"prefix": "/tools"}, "requires": {"provider_name": "corp", "scopes": ["tools"]},
                 "protected_resource": "mcp"},
                {"match": {"prefix": "/maybe"}, "protected_resource": "mcp",
                 "requires": {"requires_any": {"requirements": [{"provider_name": "corp"}, {"allow_missing": {}}]}}},
                {"match": {"prefix": "/stepup"}, "requires": {"provider_name": "corp",
                    "acr_values": ["phrh", "phr"], "max_age": 300}},
                {"match": {"prefix": "/any"}, "requires": {"requires_any": {"requirements": [
                    {"provider_name": "corp"}, {"provider_name": "partner"}]}}},
                {"match": {"prefix": "/all"}, "requires": {"requires_all": {"requirements": [
                    {"provider_name": "corp"}, {"provider_name": "partner"}]}}},
                {"match": {"prefix": "/browser"}, "requires": {"requires_any": {"requirements": [
                    {"provider_name": "corp"}, {"provider_name": "web"}]}}},
                {"match": {"prefix": "/either"}, "requires": {"requires_any": {"requirements": [
                    {"provider_name": "corp"}, {"provider_name": "opaque"}]}}},
                {"match": {"prefix": "/optional"}, "requires": {"requires_any": {"requirements": [
                    {"provider_name": "corp"}, {"allow_missing": {}}]}}},
                {"match": {"prefix": "/lenient"}, "requires": {"allow_missing_or_failed": {}}},
                {"match": {"prefix": "/admin"}, "requires": {
                    "provider_and_audiences": {"provider_name": "corp", "audiences": ["admin-api"]},
                    "claims": [{"claim_name": "realm_access.roles", "values": ["admin"]}]}},
                {"match": {"prefix": "/scoped"}, "requires": {"provider_name": "corp", "scopes": ["read", "write"],
                    "claims": [{"claim_name": "tier", "values": ["gold"]}]}},
                {"match": {"prefix": "/"}, "requires": {"provider_name": "corp"}}
            ]
        });
        Config::from_json(doc.to_string().as_bytes()).unwrap()
    }

    /// Local keys, one introspection answer for every token, and a record of the signature
    /// checks made (by key id).
    struct View<'a> {
        config: &'a Config,
        answer: Cached<'a>,
        checks: RefCell<Vec<Option<String>>>,
        keys_down: bool,
    }

    impl<'a> View<'a> {
        fn new(config: &'a Config) -> View<'a> {
            View {
                config,
                answer: Cached::Miss,
                checks: RefCell::new(vec![]),
                keys_down: false,
            }
        }
    }

    impl Known for View<'_> {
        fn keys_now(&self, p: usize) -> KeysNow<'_> {
            match &self.config.providers[p].keys {
                KeySource::Local(_) if self.keys_down => KeysNow::Unavailable,
                KeySource::Local(keys) => KeysNow::Ready {
                    keys,
                    may_refetch: false,
                },
                _ => KeysNow::Unavailable,
            }
        }
        fn verified(&self, _: &cache::TokenKey) -> Option<&Map<String, Value>> {
            None
        }
        fn introspected(&self, _: usize, _: &str) -> Cached<'_> {
            self.answer
        }
        fn check_signature(&self, alg: Alg, key: &Jwk, input: &[u8], sig: &[u8]) -> bool {
            self.checks.borrow_mut().push(key.kid.clone());
            crate::jwt::verify::verify(alg, &key.material, input, sig)
        }
        fn credential(&self, _: usize) -> CredentialNow<'_> {
            CredentialNow::Unavailable
        }
    }

    fn go<'c>(view: &View<'c>, method: &str, path: &str, headers: &[(&str, &str)]) -> Decision<'c> {
        let mut all: Vec<(&str, &[u8])> = vec![(":method", method.as_bytes())];
        all.extend(headers.iter().map(|(n, v)| (*n, v.as_bytes())));
        let request = Request {
            path,
            headers: &all,
            now: now(),
        };
        decide(view.config, view, request)
    }

    fn allowed(d: Decision) -> Forward {
        match d {
            Decision::Allow(f) => f,
            other => panic!("not allowed: {other:?}"),
        }
    }

    fn denied(d: &Decision) -> (u32, DenyReason, String) {
        match d {
            Decision::Deny(c) => (
                c.status,
                c.reason,
                c.www_authenticate.clone().unwrap_or_default(),
            ),
            other => panic!("not denied: {other:?}"),
        }
    }

    fn bearer(signer: &Signer, claims: &Value) -> String {
        format!("Bearer {}", signer.token(claims))
    }

    #[test]
    fn requires_any_tries_only_the_providers_the_token_names() {
        let c = config();
        let view = View::new(&c);
        let partner = keys().partner.token(&good_claims("https://partner", "api"));
        let f = allowed(go(&view, "GET", "/any", &[("x-partner-token", &partner)]));
        assert_eq!(f.passed, Passed::Authenticated);
        assert_eq!(f.set[..], [("x-partner", "alice".to_string())]);
        assert_eq!(f.remove[..], ["x-partner-token"]);
        // corp never saw a token; partner checked one signature with its own key.
        assert_eq!(*view.checks.borrow(), vec![Some("partner-1".to_string())]);
        // A partner-issued token in corp's header: corp refuses it without cryptography.
        let view = View::new(&c);
        let d = go(
            &view,
            "GET",
            "/any",
            &[("authorization", &format!("Bearer {partner}"))],
        );
        let (status, reason, challenge) = denied(&d);
        assert_eq!((status, reason), (401, DenyReason::InvalidToken));
        assert!(challenge.contains("issuer is not accepted"), "{challenge}");
        assert!(view.checks.borrow().is_empty());
    }

    #[test]
    fn one_token_is_parsed_once_for_every_provider_that_reads_it() {
        let c = config();
        let mut view = View::new(&c);
        view.answer = Cached::Inactive;
        // /optional: corp, then allow_missing over every provider. corp and opaque read the
        // bearer token (a partner's): one parse, and both rule themselves out by its issuer.
        let partner = bearer(&keys().partner, &good_claims("https://partner", "api"));
        PARSES.with(|n| n.set(0));
        let d = go(&view, "GET", "/optional", &[("authorization", &partner)]);
        assert_eq!(denied(&d).1, DenyReason::InvalidToken);
        assert_eq!(PARSES.with(Cell::get), 1);
        assert!(view.checks.borrow().is_empty());
        // A provider's verdict is reached once, whatever number of leaves ask for it: corp's
        // leaf fails on time, allow_missing asks corp again, then opaque (inactive).
        let mut claims = good_claims("https://corp", "api");
        claims["exp"] = json!(now() - 3600);
        let d = go(
            &view,
            "GET",
            "/optional",
            &[("authorization", &bearer(&keys().corp, &claims))],
        );
        assert_eq!(denied(&d).1, DenyReason::InvalidToken);
        assert_eq!(view.checks.borrow().len(), 1);
    }

    #[test]
    fn requires_all_takes_both_identities() {
        let c = config();
        let view = View::new(&c);
        let corp = bearer(&keys().corp, &good_claims("https://corp", "api"));
        let mut claims = good_claims("https://partner", "api");
        claims["sub"] = json!("svc");
        let partner = keys().partner.token(&claims);
        let f = allowed(go(
            &view,
            "GET",
            "/all",
            &[("authorization", &corp), ("x-partner-token", &partner)],
        ));
        assert!(f.set.contains(&("x-user", "alice".to_string())));
        assert!(f.set.contains(&("x-partner", "svc".to_string())));
        assert_eq!(f.remove[..], ["authorization", "x-partner-token"]);
        let d = go(&view, "GET", "/all", &[("authorization", &corp)]);
        assert_eq!(
            denied(&d),
            (
                401,
                DenyReason::MissingToken,
                "Bearer realm=\"api\"".to_string()
            )
        );
    }

    #[test]
    fn credentials_in_two_places_must_all_be_checked() {
        let c = config();
        let view = View::new(&c);
        let corp = keys().corp.token(&good_claims("https://corp", "api"));
        let cookie = format!("theme=dark; session={corp}; lang=en");
        // The cookie alone: accepted, and cut from the Cookie header (forward is false).
        let f = allowed(go(&view, "GET", "/browser", &[("cookie", &cookie)]));
        assert_eq!(f.set[0], ("x-web-user", "alice".to_string()));
        assert!(f
            .set
            .contains(&("cookie", "theme=dark; lang=en".to_string())));
        // The same token in the header and the cookie: two credentials, one checked.
        let d = go(
            &view,
            "GET",
            "/browser",
            &[
                ("authorization", &format!("Bearer {corp}")),
                ("cookie", &cookie),
            ],
        );
        let (status, reason, challenge) = denied(&d);
        assert_eq!((status, reason), (400, DenyReason::InvalidRequest));
        assert!(
            challenge.contains("more than one credential"),
            "{challenge}"
        );
        // Garbage in the other place is a credential too.
        let d = go(
            &view,
            "GET",
            "/browser",
            &[
                ("authorization", &format!("Bearer {corp}")),
                ("cookie", "session=a b"),
            ],
        );
        assert_eq!(denied(&d).0, 400);
        // Two session cookies: 400 from extraction; an empty one is no token.
        let d = go(
            &view,
            "GET",
            "/browser",
            &[("cookie", &format!("session={corp}; session={corp}"))],
        );
        assert_eq!(denied(&d).0, 400);
        let d = go(&view, "GET", "/browser", &[("cookie", "session=")]);
        assert_eq!(denied(&d).1, DenyReason::MissingToken);
        // The only cookie, cut: the header goes.
        let f = allowed(go(
            &view,
            "GET",
            "/browser",
            &[("cookie", &format!("session=\"{corp}\""))],
        ));
        assert!(f.remove.contains(&"cookie"));
    }

    #[test]
    fn introspection_providers_take_part() {
        let c = config();
        // Declared before the view, which borrows it.
        let Value::Object(answer) = json!({"active": true, "sub": "ivy", "exp": now() + 60}) else {
            unreachable!()
        };
        let mut view = View::new(&c);
        assert_eq!(
            go(
                &view,
                "GET",
                "/either",
                &[("authorization", "Bearer opaque-1")]
            ),
            Decision::Introspect {
                provider: 1,
                token: "opaque-1".into()
            }
        );
        // A corp JWT passes with corp; opaque is not asked.
        let corp = bearer(&keys().corp, &good_claims("https://corp", "api"));
        let f = allowed(go(&view, "GET", "/either", &[("authorization", &corp)]));
        assert_eq!(f.set[0].0, "x-user");
        view.answer = Cached::Active(&answer);
        let f = allowed(go(
            &view,
            "GET",
            "/either",
            &[("authorization", "Bearer opaque-1")],
        ));
        assert_eq!(f.set[..], [("x-opaque-user", "ivy".to_string())]);
        view.answer = Cached::Failed;
        let d = go(
            &view,
            "GET",
            "/either",
            &[("authorization", "Bearer opaque-1")],
        );
        assert_eq!(denied(&d).0, 503);
        // allow_missing_or_failed lets it through, without identity.
        let f = allowed(go(
            &view,
            "GET",
            "/lenient",
            &[("authorization", "Bearer opaque-1")],
        ));
        assert_eq!((f.passed, f.set.len()), (Passed::Anonymous, 0));
    }

    #[test]
    fn optional_and_lenient_authentication() {
        let c = config();
        let mut view = View::new(&c);
        // The introspecting provider is asked for every token nobody else accepts.
        view.answer = Cached::Inactive;
        let f = allowed(go(&view, "GET", "/optional", &[]));
        assert_eq!((f.passed, f.set.len()), (Passed::Anonymous, 0));
        let corp = bearer(&keys().corp, &good_claims("https://corp", "api"));
        let f = allowed(go(&view, "GET", "/optional", &[("authorization", &corp)]));
        assert_eq!(f.passed, Passed::Authenticated);
        assert_eq!(
            denied(&go(
                &view,
                "GET",
                "/optional",
                &[("authorization", "Bearer x.y.z")]
            ))
            .1,
            DenyReason::InvalidToken
        );
        // Keys unreachable: allow_missing_or_failed passes, without identity; a plain rule 503s.
        view.keys_down = true;
        let f = allowed(go(&view, "GET", "/lenient", &[("authorization", &corp)]));
        assert_eq!(
            (f.passed, f.set.len(), f.remove.len()),
            (Passed::Anonymous, 0, 0)
        );
        assert_eq!(
            denied(&go(&view, "GET", "/any", &[("authorization", &corp)])).0,
            503
        );
    }

    #[test]
    fn audiences_claims_and_scopes_of_a_leaf() {
        let c = config();
        let view = View::new(&c);
        let mut claims = good_claims("https://corp", "admin-api");
        claims["realm_access"] = json!({"roles": ["viewer", "admin"]});
        let admin = bearer(&keys().corp, &claims);
        assert_eq!(
            allowed(go(&view, "GET", "/admin", &[("authorization", &admin)])).passed,
            Passed::Authenticated
        );
        // The leaf's audiences replace the provider's: the same token fails elsewhere.
        assert_eq!(
            denied(&go(&view, "GET", "/x", &[("authorization", &admin)])).1,
            DenyReason::InvalidToken
        );
        claims["realm_access"] = json!({"roles": ["viewer"]});
        let viewer = bearer(&keys().corp, &claims);
        let (status, _, challenge) =
            denied(&go(&view, "GET", "/admin", &[("authorization", &viewer)]));
        assert_eq!(status, 403);
        assert!(
            challenge.contains("lacks a claim") && !challenge.contains("scope=\""),
            "{challenge}"
        );
        let mut claims = good_claims("https://corp", "api");
        claims["scope"] = json!("read write");
        claims["tier"] = json!("silver");
        let (status, _, challenge) = denied(&go(
            &view,
            "GET",
            "/scoped",
            &[("authorization", &bearer(&keys().corp, &claims))],
        ));
        assert_eq!(status, 403);
        assert!(challenge.ends_with("scope=\"read write\""), "{challenge}");
        claims["tier"] = json!(["bronze", "gold"]);
        let f = allowed(go(
            &view,
            "GET",
            "/scoped",
            &[("authorization", &bearer(&keys().corp, &claims))],
        ));
        assert_eq!(f.passed, Passed::Authenticated);
    }

    #[test]
    fn a_protected_resource_sets_audiences_and_challenges() {
        let c = config();
        let mut view = View::new(&c);
        // allow_missing consults every provider: the introspecting one knows no such token.
        view.answer = Cached::Inactive;
        let url = "https://api.example/.well-known/oauth-protected-resource/mcp";
        let (status, _, challenge) = denied(&go(&view, "POST", "/tools", &[]));
        assert_eq!(status, 401);
        assert_eq!(
            challenge,
            format!("Bearer realm=\"api\", scope=\"tools\", resource_metadata=\"{url}\"")
        );
        // The resource's audiences replace the provider's, for leaves and allow_missing alike.
        let mut claims = good_claims("https://corp", "api");
        claims["scope"] = json!("tools");
        let for_api = bearer(&keys().corp, &claims);
        for path in ["/tools", "/maybe"] {
            let (status, reason, challenge) =
                denied(&go(&view, "POST", path, &[("authorization", &for_api)]));
            assert_eq!((status, reason), (401, DenyReason::InvalidToken), "{path}");
            assert!(
                challenge.contains("audience is not accepted"),
                "{challenge}"
            );
            assert!(challenge.ends_with(&format!("resource_metadata=\"{url}\"")));
        }
        assert_eq!(
            allowed(go(&view, "POST", "/maybe", &[])).passed,
            Passed::Anonymous
        );
        claims["aud"] = json!(["other", "https://api.example/mcp"]);
        let f = allowed(go(
            &view,
            "POST",
            "/tools",
            &[("authorization", &bearer(&keys().corp, &claims))],
        ));
        assert_eq!(f.passed, Passed::Authenticated);
        claims["scope"] = json!("read");
        let unscoped = bearer(&keys().corp, &claims);
        let (status, _, challenge) = denied(&go(
            &view,
            "POST",
            "/tools",
            &[("authorization", &unscoped)],
        ));
        assert_eq!(status, 403);
        assert!(challenge.ends_with(&format!(", scope=\"tools\", resource_metadata=\"{url}\"")));
        // A 400 names the metadata too, but no scope.
        let two = [
            ("authorization", unscoped.as_str()),
            ("authorization", unscoped.as_str()),
        ];
        let (status, _, challenge) = denied(&go(&view, "POST", "/tools", &two));
        assert_eq!(status, 400);
        assert!(!challenge.contains("scope=") && challenge.contains("resource_metadata="));
        // The document itself is the filter's answer, whatever the rules say.
        let Decision::Serve(reply) = go(
            &view,
            "GET",
            "/.well-known/oauth-protected-resource/mcp?x",
            &[],
        ) else {
            panic!("not served")
        };
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, c.resources[0].document.as_str())
        );
    }

    #[test]
    fn step_up_asks_for_what_failed() {
        let c = config();
        let view = View::new(&c);
        let t = now();
        let token = |acr: Value, auth_time: Value| {
            let mut claims = good_claims("https://corp", "api");
            claims["acr"] = acr;
            claims["auth_time"] = auth_time;
            bearer(&keys().corp, &claims)
        };
        let on = |token: &str| go(&view, "GET", "/stepup", &[("authorization", token)]);
        let f = allowed(on(&token(json!("phr"), json!(t - 10))));
        assert_eq!(f.verified[0].claims["acr"], "phr", "kept for cache hits");
        assert_eq!(f.verified[0].claims["auth_time"], json!(t - 10));
        let (status, reason, challenge) = denied(&on(&token(json!("pwd"), json!(t - 1000))));
        assert_eq!(
            (status, reason),
            (401, DenyReason::InsufficientUserAuthentication)
        );
        assert!(
            challenge.ends_with(", acr_values=\"phrh phr\", max_age=\"300\""),
            "{challenge}"
        );
        let (_, _, challenge) = denied(&on(&token(json!("phrh"), json!(t - 1000))));
        assert!(
            challenge.ends_with("is required\", max_age=\"300\""),
            "{challenge}"
        );
        let (_, _, challenge) = denied(&on(&token(json!("pwd"), json!(t))));
        assert!(
            challenge.ends_with("is required\", acr_values=\"phrh phr\""),
            "{challenge}"
        );
        let (_, _, challenge) = denied(&on(&token(json!("phr"), Value::Null)));
        assert!(
            challenge.contains("auth_time is not a number"),
            "{challenge}"
        );
        let (status, reason, challenge) = denied(&on(&token(json!(["phr"]), json!(t))));
        assert_eq!((status, reason), (401, DenyReason::InvalidToken));
        assert!(challenge.contains("acr is not a string"), "{challenge}");
    }

    #[test]
    fn identity_for_what_comes_after() {
        let c = config();
        let view = View::new(&c);
        let token = keys().corp.token(&good_claims("https://corp", "api"));
        let f = allowed(go(
            &view,
            "GET",
            "/x",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-jwt-payload", "forged"),
            ],
        ));
        let payload = token.split('.').nth(1).unwrap();
        assert!(f.set.contains(&("x-jwt-payload", payload.to_string())));
        assert!(f.remove.contains(&"x-jwt-payload"));
        assert_eq!(f.filter_state, vec![("oauth.sub", "alice".to_string())]);
        assert_eq!(f.verified.len(), 1);
    }

    #[test]
    fn cors_preflights_pass_without_a_token() {
        let c = config();
        let view = View::new(&c);
        let preflight = [
            ("origin", "https://app"),
            ("access-control-request-method", "POST"),
        ];
        let f = allowed(go(&view, "OPTIONS", "/any", &preflight));
        assert_eq!(f.passed, Passed::Preflight);
        // Not a preflight: an OPTIONS without the CORS headers, or a GET with them.
        assert_eq!(
            denied(&go(&view, "OPTIONS", "/any", &[("origin", "https://app")])).1,
            DenyReason::MissingToken
        );
        assert_eq!(
            denied(&go(&view, "GET", "/any", &preflight)).1,
            DenyReason::MissingToken
        );
    }
}
