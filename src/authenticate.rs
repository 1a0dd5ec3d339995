//! The authenticator: for one request, each provider's token, what the provider makes of it,
//! and the outcome of each provider leaf of the rule's requirement ([`requirement::Leaves`]).
//!
//! A token is found once per provider ([`find`]), parsed at most once however many providers
//! read it, and tried only by the providers whose `issuer` it names (or that have none): a
//! JWT's unverified `iss` may only rule a provider out, never in. A provider's verdict (is the
//! token genuine: signature verified, now or earlier, or active at introspection) is reached
//! once; each leaf then checks dates, issuer and its audiences, its scopes and its claims.

use crate::cache;
use crate::claims;
use crate::config::{Config, KeySource, Provider, Rule};
use crate::decision::{Cached, Forward, KeysNow, Known, Request, Verified, MAX_VERIFIED_CACHE_MS};
use crate::extract::{self, Extracted};
use crate::identity;
use crate::jwt::{self, keys::Jwk, Jws, TokenError};
use crate::requirement::{Accepted, Failure, Leaf, Leaves, Outcome, Pending, ProviderSet};
use serde_json::{Map, Value};

/// The description of the 503 answered when a provider's keys cannot be had.
pub const NO_KEYS: &str = "The keys to check the token cannot be fetched";
/// The description of the 503 answered when introspection gives no usable answer.
pub const INTROSPECTION_FAILED: &str = "The token cannot be introspected";
/// The description of the 400 for credentials in several places that a pass did not all check.
pub const SEVERAL_CREDENTIALS: &str = "The request carries more than one credential";

/// Each provider's credential in the request, indexed like the configuration's providers
/// (providers the rule does not consult have none). Found before anything is verified, and
/// kept apart from the [`Authenticator`] so that parsed tokens can borrow from it.
pub fn find(config: &Config, consulted: ProviderSet, request: &Request<'_>) -> Vec<Extracted> {
    let mut found: Vec<Extracted> = Vec::with_capacity(config.providers.len());
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

/// A token as the parser left it.
enum Shape<'a> {
    /// Not three segments with a JSON header: an opaque token.
    NotJwt,
    Jwt(Result<Jws<'a>, TokenError>),
}

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
    found: &'a [Extracted],
    verdicts: Vec<Option<Verdict<'a>>>,
    /// Tokens parsed so far, with the provider whose token each is.
    parsed: Vec<(usize, Shape<'a>)>,
}

impl<'a> Authenticator<'a> {
    pub fn new(
        config: &'a Config,
        known: &'a dyn Known,
        request: Request<'a>,
        found: &'a [Extracted],
    ) -> Authenticator<'a> {
        Authenticator {
            config,
            known,
            request,
            found,
            verdicts: (0..found.len()).map(|_| None).collect(),
            parsed: Vec::new(),
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
                Some((_, Shape::Jwt(Ok(jws)))) => Some(&jws.claims),
                _ => None,
            },
        }
    }

    /// What provider `p` makes of its token.
    fn judge(&mut self, p: usize) -> Verdict<'a> {
        let (Some(provider), Some(found)) = (self.config.providers.get(p), self.found.get(p))
        else {
            return Verdict::Refused(Failure::Unavailable("The filter is misconfigured"));
        };
        let token = match found {
            Extracted::Missing => return Verdict::Refused(Failure::Missing),
            Extracted::Invalid(why) => return Verdict::Refused(Failure::Malformed(why)),
            Extracted::Token { token, .. } => token.as_str(),
        };
        let has_keys = !matches!(provider.keys, KeySource::None);
        // A token this VM verified before needs no parsing and no cryptography.
        let key = has_keys.then(|| self.known.token_key(&provider.name, token));
        if let Some(claims) = key.as_ref().and_then(|k| self.known.verified(k)) {
            return Verdict::Genuine {
                claims: Claims::Known(claims),
                vouched: false,
                fresh: None,
            };
        }
        let at = self.parse(p, token);
        let introspects = provider.introspection.is_some();
        match self.parsed.get(at).map(|(_, shape)| shape) {
            Some(Shape::Jwt(Ok(jws))) if foreign(provider, &jws.claims) => {
                Verdict::Refused(Failure::Invalid {
                    description: claims::ClaimError::WrongIssuer.description(),
                    foreign: true,
                })
            }
            Some(Shape::Jwt(Ok(_))) if has_keys => {
                let key = key.unwrap_or_else(|| self.known.token_key(&provider.name, token));
                self.verify(p, at, key)
            }
            Some(Shape::Jwt(Err(e))) if has_keys => invalid(e.description()),
            Some(Shape::NotJwt) if !introspects => invalid(if token.len() > jwt::MAX_TOKEN_BYTES {
                TokenError::TooLarge.description()
            } else {
                TokenError::Malformed.description()
            }),
            _ => self.introspected(p, token),
        }
    }

    /// The index in `parsed` of provider `p`'s token, parsing it if no provider did yet.
    fn parse(&mut self, p: usize, token: &'a str) -> usize {
        let same = |(owner, _): &(usize, Shape<'a>)| self.token(*owner) == Some(token);
        if let Some(at) = self.parsed.iter().position(same) {
            return at;
        }
        let shape = match jwt::parse_if_jwt(token) {
            Some(parsed) => Shape::Jwt(parsed),
            None => Shape::NotJwt,
        };
        self.parsed.push((p, shape));
        self.parsed.len() - 1
    }

    /// Checks the signature of the token parsed at `at` with provider `p`'s keys.
    fn verify(&self, p: usize, at: usize, key: cache::TokenKey) -> Verdict<'a> {
        let Some((_, Shape::Jwt(Ok(jws)))) = self.parsed.get(at) else {
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

    /// The outcome of provider `p`'s token for a leaf with these audiences, scopes and claims.
    fn outcome(
        &mut self,
        p: usize,
        audiences: Option<&[String]>,
        scopes: &'a [String],
        conditions: &[claims::ClaimCondition],
    ) -> Outcome<'a> {
        let now = self.request.now;
        let provider = self.config.providers.get(p);
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
                let scoped = claims::has_scopes(map, scopes);
                if !scoped || !conditions.iter().all(|c| c.holds(map)) {
                    return Outcome::Fail(Failure::Insufficient {
                        scopes: scopes.iter().map(String::as_str).collect(),
                        scope_missing: !scoped,
                    });
                }
                Outcome::Pass(Accepted {
                    providers: ProviderSet::one(p),
                    lenient: false,
                })
            }
        })
    }

    /// Lets a passing request go: refuses it if it carries a credential nothing on the passing
    /// path accepted (unless it passed leniently), then adds the identity of every accepted
    /// provider to `forward`, and the tokens verified just now to its cache list.
    pub fn pass(
        mut self,
        rule: &Rule,
        accepted: Accepted,
        forward: &mut Forward,
    ) -> Result<(), &'static str> {
        if rule.several_places && !accepted.lenient && !self.all_checked(rule, accepted) {
            return Err(SEVERAL_CREDENTIALS);
        }
        let mut out = identity::Out::new(self.request);
        for p in accepted.providers.iter() {
            let (Some(provider), Some(Extracted::Token { token, source })) =
                (self.config.providers.get(p), self.found.get(p))
            else {
                continue;
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
            let Some((_, Shape::Jwt(Ok(jws)))) = self.parsed.get_mut(*at) else {
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
        self.outcome(
            leaf.provider,
            leaf.audiences.as_deref(),
            &leaf.scopes,
            &leaf.claims,
        )
    }

    fn plain(&mut self, provider: usize) -> Outcome<'a> {
        self.outcome(provider, None, &[], &[])
    }

    fn providers(&self) -> usize {
        self.config.providers.len()
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
