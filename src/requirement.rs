//! What a rule requires: `jwt_authn`'s requirement tree, and how its outcomes combine.
//!
//! A requirement is a provider leaf (`provider_name` or `provider_and_audiences`, with `scopes`,
//! `claims`, and the step-up conditions `acr_values` and `max_age` of RFC 9470), `requires_any`, `requires_all`, `allow_missing` or `allow_missing_or_failed`.
//! [`evaluate`] combines the outcomes of the leaves, which the [`Leaves`] it is given computes
//! (the authenticator in a request, a table in the tests), so the tree's semantics are plain
//! code with no token, key or host in sight.
//!
//! When a requirement fails, the answer is the most specific one: a malformed request (400);
//! then, under `requires_any`, a provider that could have decided but was unreachable (503, never
//! a pass); a token a provider accepted whose user authentication is too weak or too old (401
//! `insufficient_user_authentication`); one that lacks scopes or claims (403); a token refused
//! (401 `invalid_token`); no token at all (401, bare challenge). Under `requires_all` a definite
//! refusal of one part outranks another part being unreachable: the request fails either way.

use crate::claims::ClaimCondition;
use crate::config::{err, scope_token, ConfigError, Obj, Provider};
use serde_json::Value;

/// The deepest nesting of `requires_any` / `requires_all`.
pub const MAX_DEPTH: usize = 8;
/// The most providers a configuration may have (a set of them is one `u128`).
pub const MAX_PROVIDERS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Provider(Leaf),
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    /// Passes without a token; a token that is there must be valid for some provider.
    AllowMissing,
    /// Passes whatever the token, with the identity of a provider that accepts it, if any.
    AllowMissingOrFailed,
}

/// A provider leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// Index into the configuration's providers.
    pub provider: usize,
    /// `provider_and_audiences`: these audiences replace the provider's.
    pub audiences: Option<Vec<String>>,
    /// All must be granted.
    pub scopes: Vec<String>,
    /// All must hold.
    pub claims: Vec<ClaimCondition>,
    /// `acr_values`: when not empty, `acr` must be one of them (in order of preference).
    pub acr_values: Vec<String>,
    /// `max_age`: when set, the user must have authenticated (`auth_time`) at most this many
    /// seconds ago.
    pub max_age: Option<u64>,
}

/// A set of providers, by index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProviderSet(u128);

impl ProviderSet {
    pub fn one(provider: usize) -> ProviderSet {
        ProviderSet(1u128.checked_shl(provider as u32).unwrap_or(0))
    }

    pub fn all(count: usize) -> ProviderSet {
        ProviderSet((0..count.min(MAX_PROVIDERS)).fold(0, |set, i| set | 1 << i))
    }

    pub fn with(self, other: ProviderSet) -> ProviderSet {
        ProviderSet(self.0 | other.0)
    }

    pub fn contains(self, provider: usize) -> bool {
        provider < MAX_PROVIDERS && self.0 & (1 << provider) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The providers in the set, in order (one step per member, not per possible member).
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            if rest == 0 {
                return None;
            }
            let next = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            Some(next)
        })
    }
}

/// Why a requirement failed, most specific first in each kind's ranking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure<'a> {
    /// No credential for the provider (or another auth scheme).
    Missing,
    /// 400: a malformed or ambiguous credential.
    Malformed(&'static str),
    /// 401 `invalid_token`. `foreign`: the token names another issuer, so this provider's
    /// refusal says less than one from the provider the token is for.
    Invalid {
        description: &'static str,
        foreign: bool,
    },
    /// 403: a token a provider accepted, lacking a scope (`scope_missing`) or a claim its
    /// requirement asks for; `scopes`: every scope the requirement needs.
    Insufficient {
        scopes: Vec<&'a str>,
        scope_missing: bool,
    },
    /// 401 `insufficient_user_authentication` (RFC 9470): a token a provider accepted, with
    /// every scope and claim, whose `acr` (then `acr_values` is set) or `auth_time` (then
    /// `max_age` is) does not do.
    StepUp {
        acr_values: Option<&'a [String]>,
        max_age: Option<u64>,
    },
    /// 401 `invalid_dpop_proof` or `use_dpop_nonce`: a genuine DPoP-bound token whose proof
    /// does not do (RFC 9449 §7.1).
    Proof(crate::dpop::ProofError),
    /// 503: keys or introspection could not be had.
    Unavailable(&'static str),
}

/// What is still to be learnt before a leaf can be decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// The provider's keys; `refetch`: the token names a key the set lacks.
    Keys { provider: usize, refetch: bool },
    /// The provider's introspection answer for its token.
    Introspection { provider: usize },
}

/// A passing requirement: the providers whose tokens it accepted (their identity goes upstream),
/// and whether it passed leniently (through `allow_missing_or_failed`, which lets credentials
/// nobody accepted go on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accepted {
    pub providers: ProviderSet,
    pub lenient: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'a> {
    Pass(Accepted),
    Fail(Failure<'a>),
    Wait(Pending),
}

/// The outcomes of leaves, for one request.
pub trait Leaves<'a> {
    /// A provider leaf.
    fn leaf(&mut self, leaf: &'a Leaf) -> Outcome<'a>;
    /// Provider `provider` with no requirement beyond its own (for `allow_missing`).
    fn plain(&mut self, provider: usize) -> Outcome<'a>;
    /// How many providers there are.
    fn providers(&self) -> usize;
}

/// The outcome of `requirement` for the request `leaves` sees.
pub fn evaluate<'a>(requirement: &'a Requirement, leaves: &mut dyn Leaves<'a>) -> Outcome<'a> {
    match requirement {
        Requirement::Provider(leaf) => leaves.leaf(leaf),
        Requirement::Any(items) => any(&mut items.iter().map(|r| evaluate(r, &mut *leaves))),
        Requirement::All(items) => all(&mut items.iter().map(|r| evaluate(r, &mut *leaves))),
        Requirement::AllowMissing => {
            let mut all_missing = true;
            let count = leaves.providers();
            let outcome = any(&mut (0..count).map(|p| {
                let outcome = leaves.plain(p);
                all_missing &= outcome == Outcome::Fail(Failure::Missing);
                outcome
            }));
            if all_missing {
                Outcome::Pass(Accepted::default())
            } else {
                outcome
            }
        }
        Requirement::AllowMissingOrFailed => {
            let count = leaves.providers();
            match any(&mut (0..count).map(|p| leaves.plain(p))) {
                Outcome::Wait(pending) => Outcome::Wait(pending),
                Outcome::Pass(accepted) => Outcome::Pass(Accepted {
                    lenient: true,
                    ..accepted
                }),
                Outcome::Fail(_) => Outcome::Pass(Accepted {
                    providers: ProviderSet::default(),
                    lenient: true,
                }),
            }
        }
    }
}

/// How a group combines its parts' failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Any,
    All,
}

impl Group {
    /// Which failure to answer with: the higher rank wins.
    fn rank(self, f: &Failure) -> u8 {
        match (f, self) {
            (Failure::Unavailable(_), Group::All) => 0,
            (Failure::Missing, _) => 1,
            (Failure::Invalid { foreign: true, .. }, _) => 2,
            (Failure::Invalid { .. } | Failure::Proof(_), _) => 3,
            (Failure::Insufficient { .. }, _) => 4,
            (Failure::StepUp { .. }, _) => 5,
            (Failure::Unavailable(_), Group::Any) => 6,
            (Failure::Malformed(_), _) => 7,
        }
    }

    /// The failure to answer with of `kept` and `next` (the first of equal ones stays). Under
    /// `requires_all` the scopes of every part that lacks some are listed together.
    fn worse<'a>(self, kept: Option<Failure<'a>>, next: Failure<'a>) -> Failure<'a> {
        match (kept, next) {
            (None, next) => next,
            (
                Some(Failure::Insufficient {
                    mut scopes,
                    scope_missing,
                }),
                Failure::Insufficient {
                    scopes: more,
                    scope_missing: also,
                },
            ) if self == Group::All => {
                for scope in more {
                    if !scopes.contains(&scope) {
                        scopes.push(scope);
                    }
                }
                Failure::Insufficient {
                    scopes,
                    scope_missing: scope_missing || also,
                }
            }
            (Some(kept), next) if self.rank(&next) > self.rank(&kept) => next,
            (Some(kept), _) => kept,
        }
    }
}

/// `requires_any`: the first pass wins (later alternatives are not evaluated); else a
/// malformed request; else a wait for something that may still pass; else the failure that
/// ranks first.
fn any<'a>(outcomes: &mut dyn Iterator<Item = Outcome<'a>>) -> Outcome<'a> {
    let mut wait = None;
    let mut failure = None;
    for outcome in outcomes {
        match outcome {
            Outcome::Pass(accepted) => return Outcome::Pass(accepted),
            Outcome::Wait(pending) => {
                wait.get_or_insert(pending);
            }
            Outcome::Fail(f) => failure = Some(Group::Any.worse(failure, f)),
        }
    }
    match (failure, wait) {
        (Some(f @ Failure::Malformed(_)), _) => Outcome::Fail(f),
        (_, Some(pending)) => Outcome::Wait(pending),
        (Some(f), None) => Outcome::Fail(f),
        (None, None) => Outcome::Fail(Failure::Missing),
    }
}

/// `requires_all`: every part is evaluated; a definite failure ranks first, then a wait, then
/// an unreachable provider; else the union of what the parts accepted.
fn all<'a>(outcomes: &mut dyn Iterator<Item = Outcome<'a>>) -> Outcome<'a> {
    let mut wait = None;
    let mut failure = None;
    let mut passed = Accepted::default();
    for outcome in outcomes {
        match outcome {
            Outcome::Pass(a) => {
                passed.providers = passed.providers.with(a.providers);
                passed.lenient |= a.lenient;
            }
            Outcome::Wait(pending) => {
                wait.get_or_insert(pending);
            }
            Outcome::Fail(f) => failure = Some(Group::All.worse(failure, f)),
        }
    }
    match (failure, wait) {
        (Some(Failure::Unavailable(_)) | None, Some(pending)) => Outcome::Wait(pending),
        (Some(f), _) => Outcome::Fail(f),
        (None, None) => Outcome::Pass(passed),
    }
}

impl Requirement {
    /// The providers this requirement may consult (every one under `allow_missing*`).
    pub fn providers(&self, count: usize) -> ProviderSet {
        match self {
            Requirement::Provider(leaf) => ProviderSet::one(leaf.provider),
            Requirement::Any(items) | Requirement::All(items) => {
                items.iter().fold(ProviderSet::default(), |set, r| {
                    set.with(r.providers(count))
                })
            }
            Requirement::AllowMissing | Requirement::AllowMissingOrFailed => {
                ProviderSet::all(count)
            }
        }
    }

    /// Adds the scopes its leaves ask for to `scopes` (each once, in order): what a 401 of the
    /// rule names in `scope`.
    pub fn scopes<'a>(&'a self, scopes: &mut Vec<&'a str>) {
        match self {
            Requirement::Provider(leaf) => {
                for scope in &leaf.scopes {
                    if !scopes.contains(&scope.as_str()) {
                        scopes.push(scope);
                    }
                }
            }
            Requirement::Any(items) | Requirement::All(items) => {
                for r in items {
                    r.scopes(scopes);
                }
            }
            _ => {}
        }
    }

    /// Adds the claims the leaves of `provider` test to `names`.
    pub fn claim_names<'a>(&'a self, provider: usize, names: &mut Vec<&'a str>) {
        match self {
            Requirement::Provider(leaf) if leaf.provider == provider => {
                names.extend(leaf.claims.iter().map(|c| c.claim.as_str()));
                if !leaf.acr_values.is_empty() {
                    names.push("acr");
                }
                if leaf.max_age.is_some() {
                    names.push("auth_time");
                }
            }
            Requirement::Any(items) | Requirement::All(items) => {
                for r in items {
                    r.claim_names(provider, names);
                }
            }
            _ => {}
        }
    }
}

/// The kinds of requirement, one of which each requirement object has.
const KINDS: [&str; 6] = [
    "provider_name",
    "provider_and_audiences",
    "requires_any",
    "requires_all",
    "allow_missing",
    "allow_missing_or_failed",
];

/// The fields only a provider leaf has.
const LEAF_ONLY: [&str; 4] = ["scopes", "claims", "acr_values", "max_age"];

/// Reads the requirement at `path`, nested `depth` levels deep (the rule's own is 1).
pub fn parse(
    value: &Value,
    path: String,
    providers: &[Provider],
    depth: usize,
) -> Result<Requirement, ConfigError> {
    let q = Obj::new(value, path)?;
    let mut known = KINDS.to_vec();
    known.extend(LEAF_ONLY);
    q.only(&known)?;
    let kinds: Vec<&str> = KINDS.into_iter().filter(|k| q.get(k).is_some()).collect();
    let kind = match kinds.as_slice() {
        [one] => *one,
        [] => return err(q.path, format!("needs one of {}", KINDS.join(", "))),
        _ => return err(q.path, format!("give only one of {}", kinds.join(", "))),
    };
    let leaf_only = LEAF_ONLY.into_iter().find(|f| q.get(f).is_some());
    if let (Some(extra), false) = (leaf_only, kind.starts_with("provider")) {
        return err(
            q.field(extra),
            format!("applies to a provider, not to {kind}"),
        );
    }
    match kind {
        "provider_name" | "provider_and_audiences" => leaf(&q, kind, providers),
        "requires_any" | "requires_all" => {
            let items = group(&q, kind, providers, depth)?;
            Ok(if kind == "requires_any" {
                Requirement::Any(items)
            } else {
                Requirement::All(items)
            })
        }
        _ => {
            if !matches!(q.get(kind), Some(Value::Object(empty)) if empty.is_empty()) {
                return err(q.field(kind), "must be an empty object, {}");
            }
            Ok(if kind == "allow_missing" {
                Requirement::AllowMissing
            } else {
                Requirement::AllowMissingOrFailed
            })
        }
    }
}

/// `requires_any` / `requires_all`: at least two requirements, nested at most [`MAX_DEPTH`].
fn group(
    q: &Obj<'_>,
    kind: &str,
    providers: &[Provider],
    depth: usize,
) -> Result<Vec<Requirement>, ConfigError> {
    let Some(g) = q.object(kind)? else {
        return err(q.field(kind), "is required");
    };
    if depth > MAX_DEPTH {
        return err(
            g.path,
            format!("is nested too deeply (requirements nest at most {MAX_DEPTH} levels)"),
        );
    }
    g.only(&["requirements"])?;
    let items = g.array("requirements")?.map_or(&[][..], Vec::as_slice);
    if items.len() < 2 {
        return err(
            g.field("requirements"),
            "needs at least 2 requirements (a single one goes without the group)",
        );
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let path = format!("{}[{i}]", g.field("requirements"));
            parse(item, path, providers, depth + 1)
        })
        .collect()
}

/// A provider leaf: the provider (with its audiences replaced under `provider_and_audiences`),
/// its scopes and its claim conditions.
fn leaf(q: &Obj<'_>, kind: &str, providers: &[Provider]) -> Result<Requirement, ConfigError> {
    let (named_in, audiences) = if kind == "provider_name" {
        (
            Obj {
                map: q.map,
                path: q.path.clone(),
            },
            None,
        )
    } else {
        let Some(pa) = q.object("provider_and_audiences")? else {
            return err(q.field(kind), "is required");
        };
        pa.only(&["provider_name", "audiences"])?;
        let audiences = pa.strings("audiences", crate::config::any_string)?;
        if audiences.as_ref().is_none_or(Vec::is_empty) {
            return err(pa.field("audiences"), "must list at least one audience");
        }
        (pa, audiences)
    };
    let name = named_in.required_string("provider_name")?;
    let Some(provider) = providers.iter().position(|p| p.name == name) else {
        return err(
            named_in.field("provider_name"),
            "names no provider in providers",
        );
    };
    let claims = q
        .objects("claims")?
        .iter()
        .map(ClaimCondition::parse)
        .collect::<Result<Vec<_>, _>>()?;
    let acr_values = q.strings("acr_values", acr_value)?;
    if acr_values.as_ref().is_some_and(Vec::is_empty) {
        return err(q.field("acr_values"), "must list at least one acr value");
    }
    Ok(Requirement::Provider(Leaf {
        provider,
        audiences,
        scopes: q.strings("scopes", scope_token)?.unwrap_or_default(),
        claims,
        acr_values: acr_values.unwrap_or_default(),
        max_age: max_age(q)?,
    }))
}

/// An `acr` value: it goes into the space-separated `acr_values` of a challenge, so it is a
/// string of printable ASCII without space, quote or backslash.
fn acr_value(value: &str) -> Result<(), &'static str> {
    scope_token(value)
        .map_err(|_| "is not a valid acr value (printable ASCII, no space, quote or backslash)")
}

/// `max_age`: whole seconds, as a JSON number (as in RFC 9470 and OpenID Connect).
fn max_age(q: &Obj<'_>) -> Result<Option<u64>, ConfigError> {
    match q.get("max_age") {
        None => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some_and(|s| s <= MAX_MAX_AGE) => Ok(n.as_u64()),
        Some(_) => err(
            q.field("max_age"),
            format!("must be a whole number of seconds from 0 to {MAX_MAX_AGE} (a JSON number)"),
        ),
    }
}

/// The longest `max_age`: a year.
const MAX_MAX_AGE: u64 = 366 * 86_400;

/// The field to name for a document nested too deeply at `path` (field names and `[i]`): the
/// requirement group where nesting passes [`MAX_DEPTH`], or else the path's first three steps.
pub fn deep_field(path: &[String]) -> String {
    let mut field = String::new();
    let mut short = None;
    let mut groups = 0;
    for (i, step) in path.iter().enumerate() {
        if !field.is_empty() && !step.starts_with('[') {
            field.push('.');
        }
        field.push_str(step);
        if step == "requires_any" || step == "requires_all" {
            groups += 1;
            if groups > MAX_DEPTH {
                return field;
            }
        }
        if i == 2 {
            short = Some(field.clone());
        }
    }
    short.unwrap_or(field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::json;

    /// Leaf outcomes from a table, by provider; remembers which providers were asked.
    struct Table {
        outcomes: Vec<Outcome<'static>>,
        asked: Vec<usize>,
    }

    impl<'a> Leaves<'a> for Table {
        fn leaf(&mut self, leaf: &'a Leaf) -> Outcome<'a> {
            self.plain(leaf.provider)
        }
        fn plain(&mut self, provider: usize) -> Outcome<'a> {
            self.asked.push(provider);
            self.outcomes[provider].clone()
        }
        fn providers(&self) -> usize {
            self.outcomes.len()
        }
    }

    fn p(provider: usize) -> Requirement {
        Requirement::Provider(Leaf {
            provider,
            audiences: None,
            scopes: vec![],
            claims: vec![],
            acr_values: vec![],
            max_age: None,
        })
    }
    fn any_of(items: Vec<Requirement>) -> Requirement {
        Requirement::Any(items)
    }
    fn all_of(items: Vec<Requirement>) -> Requirement {
        Requirement::All(items)
    }

    fn pass(providers: &[usize], lenient: bool) -> Outcome<'static> {
        let set = providers
            .iter()
            .fold(ProviderSet::default(), |s, p| s.with(ProviderSet::one(*p)));
        Outcome::Pass(Accepted {
            providers: set,
            lenient,
        })
    }
    const MISSING: Outcome<'static> = Outcome::Fail(Failure::Missing);
    const INVALID: Outcome<'static> = Outcome::Fail(Failure::Invalid {
        description: "bad",
        foreign: false,
    });
    const FOREIGN: Outcome<'static> = Outcome::Fail(Failure::Invalid {
        description: "issuer",
        foreign: true,
    });
    const UNAVAILABLE: Outcome<'static> = Outcome::Fail(Failure::Unavailable("down"));
    const MALFORMED: Outcome<'static> = Outcome::Fail(Failure::Malformed("two"));
    fn insufficient(scopes: &[&'static str]) -> Outcome<'static> {
        Outcome::Fail(Failure::Insufficient {
            scopes: scopes.to_vec(),
            scope_missing: true,
        })
    }
    const STEP_UP: Outcome<'static> = Outcome::Fail(Failure::StepUp {
        acr_values: None,
        max_age: Some(60),
    });
    fn wait(provider: usize) -> Outcome<'static> {
        Outcome::Wait(Pending::Introspection { provider })
    }

    #[test]
    fn tree_semantics() {
        let ok = |i| pass(&[i], false);
        let rows: Vec<(&str, Requirement, Vec<Outcome<'static>>, Outcome<'static>)> = vec![
            ("leaf", p(0), vec![ok(0)], ok(0)),
            (
                "any: a later pass",
                any_of(vec![p(0), p(1)]),
                vec![MISSING, ok(1)],
                ok(1),
            ),
            (
                "any: refused beats missing",
                any_of(vec![p(0), p(1)]),
                vec![INVALID, MISSING],
                INVALID,
            ),
            (
                "any: the provider the token is for speaks",
                any_of(vec![p(0), p(1)]),
                vec![FOREIGN, INVALID],
                INVALID,
            ),
            (
                "any: only foreign refusals",
                any_of(vec![p(0), p(1)]),
                vec![FOREIGN, FOREIGN],
                FOREIGN,
            ),
            (
                "any: accepted but lacking beats refused",
                any_of(vec![p(0), p(1)]),
                vec![insufficient(&["a"]), INVALID],
                insufficient(&["a"]),
            ),
            (
                "any: too weak an authentication beats lacking a scope",
                any_of(vec![p(0), p(1)]),
                vec![insufficient(&["a"]), STEP_UP],
                STEP_UP,
            ),
            (
                "all: too weak an authentication beats refused",
                all_of(vec![p(0), p(1)]),
                vec![STEP_UP, INVALID],
                STEP_UP,
            ),
            (
                "any: unreachable beats too weak an authentication",
                any_of(vec![p(0), p(1)]),
                vec![STEP_UP, UNAVAILABLE],
                UNAVAILABLE,
            ),
            (
                "any: unreachable beats lacking (never a pass)",
                any_of(vec![p(0), p(1)]),
                vec![UNAVAILABLE, insufficient(&["a"])],
                UNAVAILABLE,
            ),
            (
                "any: unreachable beats missing",
                any_of(vec![p(0), p(1)]),
                vec![MISSING, UNAVAILABLE],
                UNAVAILABLE,
            ),
            (
                "any: malformed beats waiting",
                any_of(vec![p(0), p(1)]),
                vec![MALFORMED, wait(1)],
                MALFORMED,
            ),
            (
                "any: a pass wins over malformed (the authenticator checks places)",
                any_of(vec![p(0), p(1)]),
                vec![MALFORMED, ok(1)],
                ok(1),
            ),
            (
                "any: wait for what may still pass",
                any_of(vec![p(0), p(1)]),
                vec![wait(0), INVALID],
                wait(0),
            ),
            (
                "all: both",
                all_of(vec![p(0), p(1)]),
                vec![ok(0), ok(1)],
                pass(&[0, 1], false),
            ),
            (
                "all: one missing",
                all_of(vec![p(0), p(1)]),
                vec![ok(0), MISSING],
                MISSING,
            ),
            (
                "all: a definite failure beats unreachable",
                all_of(vec![p(0), p(1)]),
                vec![UNAVAILABLE, MISSING],
                MISSING,
            ),
            (
                "all: unreachable fails",
                all_of(vec![p(0), p(1)]),
                vec![UNAVAILABLE, ok(1)],
                UNAVAILABLE,
            ),
            (
                "all: no wait once it fails",
                all_of(vec![p(0), p(1)]),
                vec![wait(0), INVALID],
                INVALID,
            ),
            (
                "all: wait",
                all_of(vec![p(0), p(1)]),
                vec![wait(0), ok(1)],
                wait(0),
            ),
            (
                "all: wait rather than 503",
                all_of(vec![p(0), p(1)]),
                vec![UNAVAILABLE, wait(1)],
                wait(1),
            ),
            (
                "all: every lacking scope listed once",
                all_of(vec![p(0), p(1)]),
                vec![insufficient(&["a"]), insufficient(&["b", "a"])],
                insufficient(&["a", "b"]),
            ),
            (
                "all: lacking beats refused",
                all_of(vec![p(0), p(1)]),
                vec![insufficient(&["a"]), INVALID],
                insufficient(&["a"]),
            ),
            (
                "all: malformed first",
                all_of(vec![p(0), p(1)]),
                vec![insufficient(&["a"]), MALFORMED],
                MALFORMED,
            ),
            (
                "allow_missing: no token",
                Requirement::AllowMissing,
                vec![MISSING, MISSING],
                pass(&[], false),
            ),
            (
                "allow_missing: a bad token",
                Requirement::AllowMissing,
                vec![MISSING, INVALID],
                INVALID,
            ),
            (
                "allow_missing: a good token",
                Requirement::AllowMissing,
                vec![FOREIGN, ok(1)],
                ok(1),
            ),
            (
                "allow_missing: waits",
                Requirement::AllowMissing,
                vec![wait(0), MISSING],
                wait(0),
            ),
            (
                "allow_missing: unreachable",
                Requirement::AllowMissing,
                vec![UNAVAILABLE, MISSING],
                UNAVAILABLE,
            ),
            (
                "allow_missing_or_failed: no token",
                Requirement::AllowMissingOrFailed,
                vec![MISSING],
                pass(&[], true),
            ),
            (
                "allow_missing_or_failed: failed and unreachable",
                Requirement::AllowMissingOrFailed,
                vec![INVALID, UNAVAILABLE],
                pass(&[], true),
            ),
            (
                "allow_missing_or_failed: identity when it can",
                Requirement::AllowMissingOrFailed,
                vec![FOREIGN, ok(1)],
                pass(&[1], true),
            ),
            (
                "allow_missing_or_failed: waits for identity",
                Requirement::AllowMissingOrFailed,
                vec![wait(0)],
                wait(0),
            ),
            (
                "any[p, allow_missing]: bad token",
                any_of(vec![p(0), Requirement::AllowMissing]),
                vec![INVALID],
                INVALID,
            ),
            (
                "any[p, allow_missing]: none",
                any_of(vec![p(0), Requirement::AllowMissing]),
                vec![MISSING],
                pass(&[], false),
            ),
            (
                "any[p, allow_missing_or_failed]: unreachable",
                any_of(vec![p(0), Requirement::AllowMissingOrFailed]),
                vec![UNAVAILABLE],
                pass(&[], true),
            ),
            (
                "no identity from a failed branch",
                any_of(vec![all_of(vec![p(0), p(1)]), p(2)]),
                vec![ok(0), INVALID, ok(2)],
                ok(2),
            ),
            (
                "nested",
                all_of(vec![
                    any_of(vec![p(0), p(1)]),
                    any_of(vec![p(2), Requirement::AllowMissingOrFailed]),
                ]),
                vec![INVALID, ok(1), INVALID],
                pass(&[1], true),
            ),
        ];
        for (name, tree, outcomes, expected) in rows {
            let mut table = Table {
                outcomes,
                asked: vec![],
            };
            assert_eq!(evaluate(&tree, &mut table), expected, "{name}");
        }
    }

    #[test]
    fn any_stops_at_the_first_pass() {
        let tree = any_of(vec![p(0), p(1), p(2)]);
        let mut table = Table {
            outcomes: vec![MISSING, pass(&[1], false), wait(2)],
            asked: vec![],
        };
        assert_eq!(evaluate(&tree, &mut table), pass(&[1], false));
        assert_eq!(table.asked, vec![0, 1]);
        // requires_all asks every part, for the most specific answer.
        let tree = all_of(vec![p(0), p(1), p(2)]);
        let mut table = Table {
            outcomes: vec![MISSING, INVALID, wait(2)],
            asked: vec![],
        };
        assert_eq!(evaluate(&tree, &mut table), INVALID);
        assert_eq!(table.asked, vec![0, 1, 2]);
    }

    #[test]
    fn provider_sets() {
        let s = ProviderSet::one(0).with(ProviderSet::one(127));
        assert!(s.contains(0) && s.contains(127) && !s.contains(1) && !s.contains(128));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 127]);
        assert_eq!(ProviderSet::all(128).iter().count(), 128);
        assert!(ProviderSet::one(128).is_empty());
        let tree = any_of(vec![p(3), all_of(vec![p(1), p(3)])]);
        assert_eq!(tree.providers(5).iter().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(Requirement::AllowMissing.providers(3).iter().count(), 3);
    }

    fn with_requires(requires: Value) -> Result<Config, String> {
        with_requires_text(&requires.to_string())
    }

    fn with_requires_text(requires: &str) -> Result<Config, String> {
        let keys =
            crate::testkit::jwks(&[crate::testkit::Signer::hmac("HS256", "k", &[1; 32]).jwk()]);
        let providers = json!({
            "corp": {"issuer": "https://corp", "local_jwks": {"inline_string": keys}},
            "partner": {"issuer": "https://partner", "local_jwks": {"inline_string": keys}}
        });
        // As text: a tree too deep for serde_json's recursion limit is too deep to build as a
        // `Value` here, too.
        let doc = format!(
            r#"{{"providers": {providers}, "rules": [{{"match": {{"prefix": "/"}}, "requires": {requires}}}]}}"#
        );
        Config::from_json(doc.as_bytes()).map_err(|e| e.to_string())
    }

    /// `depth` groups nested inside one another, around two leaves, as JSON text.
    fn nested(depth: usize) -> String {
        let open = r#"{"requires_any": {"requirements": ["#.repeat(depth);
        let close = r#", {"provider_name": "partner"}]}}"#.repeat(depth);
        format!(r#"{open}{{"provider_name": "corp"}}{close}"#)
    }

    #[test]
    fn parses_jwt_authn_shapes() {
        let c = with_requires(json!({"requires_any": {"requirements": [
            {"provider_and_audiences": {"provider_name": "partner", "audiences": ["a"]}, "scopes": ["s"]},
            {"provider_name": "corp", "claims": [{"claim_name": "realm_access.roles", "values": ["admin"]}]},
            {"requires_all": {"requirements": [{"provider_name": "corp"}, {"allow_missing": {}}]}},
            {"allow_missing_or_failed": {}}
        ]}}))
        .unwrap();
        let Some(Requirement::Any(items)) = &c.rules[0].requires else {
            panic!()
        };
        assert_eq!(items.len(), 4);
        let Requirement::Provider(leaf) = &items[0] else {
            panic!()
        };
        assert_eq!(
            (leaf.provider, leaf.audiences.clone()),
            (1, Some(vec!["a".to_string()]))
        );
        assert_eq!(c.rules[0].providers, ProviderSet::all(2));
        // Claims the conditions read are kept for cached tokens.
        assert!(c.providers[0]
            .kept_claims
            .contains(&"realm_access".to_string()));
        assert!(with_requires_text(&nested(MAX_DEPTH)).is_ok());
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (
                json!({"requires_some": {}}),
                "rules[0].requires.requires_some: unknown field",
            ),
            (json!({}), "rules[0].requires: needs one of provider_name"),
            (
                json!({"provider_name": "corp", "allow_missing": {}}),
                "rules[0].requires: give only one of provider_name, allow_missing",
            ),
            (
                json!({"requires_any": {"requirements": [{"provider_name": "corp"}]}}),
                "rules[0].requires.requires_any.requirements: needs at least 2",
            ),
            (
                json!({"requires_all": {"requirements": []}}),
                "rules[0].requires.requires_all.requirements: needs at least 2",
            ),
            (
                json!({"requires_all": {"requirement": []}}),
                "rules[0].requires.requires_all.requirement: unknown field",
            ),
            (
                json!({"requires_any": {"requirements": [{"provider_name": "corp"}, {"provider_name": "nobody"}]}}),
                "rules[0].requires.requires_any.requirements[1].provider_name: names no provider",
            ),
            (
                json!({"allow_missing": {"x": 1}}),
                "rules[0].requires.allow_missing: must be an empty object",
            ),
            (
                json!({"allow_missing": true}),
                "rules[0].requires.allow_missing: must be an empty object",
            ),
            (
                json!({"allow_missing": {}, "scopes": ["a"]}),
                "rules[0].requires.scopes: applies to a provider",
            ),
            (
                json!({"requires_any": {"requirements": [{"provider_name": "corp"}, {"provider_name": "partner"}]}, "claims": []}),
                "rules[0].requires.claims: applies to a provider",
            ),
            (
                json!({"allow_missing": {}, "max_age": 60}),
                "rules[0].requires.max_age: applies to a provider",
            ),
            (
                json!({"provider_name": "corp", "max_age": "300s"}),
                "rules[0].requires.max_age: must be a whole number of seconds",
            ),
            (
                json!({"provider_name": "corp", "max_age": 1.5}),
                "rules[0].requires.max_age: must be a whole number of seconds",
            ),
            (
                json!({"provider_name": "corp", "max_age": -1}),
                "rules[0].requires.max_age: must be a whole number of seconds",
            ),
            (
                json!({"provider_name": "corp", "acr_values": []}),
                "rules[0].requires.acr_values: must list at least one",
            ),
            (
                json!({"provider_name": "corp", "acr_values": ["a b"]}),
                "rules[0].requires.acr_values[0]: is not a valid acr value",
            ),
            (
                json!({"provider_name": "corp", "acr_values": "phrh"}),
                "rules[0].requires.acr_values: must be an array",
            ),
            (
                json!({"provider_and_audiences": {"provider_name": "corp"}}),
                "rules[0].requires.provider_and_audiences.audiences: must list",
            ),
            (
                json!({"provider_and_audiences": {"provider_name": "x", "audiences": ["a"]}}),
                "rules[0].requires.provider_and_audiences.provider_name: names no provider",
            ),
            (
                json!({"provider_name": "corp", "claims": [{"claim_name": "groups"}]}),
                "rules[0].requires.claims[0].values: must list",
            ),
            (
                json!({"provider_name": "corp", "claims": [{"claim_name": "groups", "values": []}]}),
                "rules[0].requires.claims[0].values: must list",
            ),
            (
                json!({"provider_name": "corp", "claims": [{"claim": "groups", "values": ["a"]}]}),
                "rules[0].requires.claims[0].claim: unknown field",
            ),
            (
                json!({"provider_name": "corp", "acr": ["x"]}),
                "rules[0].requires.acr: unknown field",
            ),
        ];
        for (requires, expected) in cases {
            let e = with_requires(requires.clone()).unwrap_err();
            assert!(
                e.starts_with(expected),
                "{requires}: {e:?} does not start with {expected:?}"
            );
        }
        let e = with_requires_text(&nested(MAX_DEPTH + 1)).unwrap_err();
        let deepest = "rules[0].requires".to_string()
            + &".requires_any.requirements[0]".repeat(MAX_DEPTH)
            + ".requires_any: is nested too deeply";
        assert!(e.starts_with(&deepest), "{e}");
    }

    #[test]
    fn a_tree_deeper_than_the_json_parser_goes_is_named_too() {
        let e = with_requires_text(&nested(5_000)).unwrap_err();
        let field = "rules[0].requires".to_string()
            + &".requires_any.requirements[0]".repeat(MAX_DEPTH)
            + ".requires_any: is nested too deeply";
        assert!(e.starts_with(&field), "{}", &e[..e.len().min(300)]);
        assert!(!e.contains('\n') && e.len() < 400, "{e}");
    }
}
