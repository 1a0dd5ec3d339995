//! What a rule requires: `jwt_authn`'s requirement tree, and how its outcomes combine.
//!
//! A requirement is a provider leaf (`provider_name` or `provider_and_audiences`, with `scopes`
//! and `claims`), `requires_any`, `requires_all`, `allow_missing` or `allow_missing_or_failed`.
//! [`evaluate`] combines the outcomes of the leaves, which the [`Leaves`] it is given computes
//! (the authenticator in a request, a table in the tests), so the tree's semantics are plain
//! code with no token, key or host in sight.
//!
//! When a requirement fails, the answer is the most specific one: a malformed request (400);
//! then, under `requires_any`, a provider that could have decided but was unreachable (503, never
//! a pass); a token a provider accepted that lacks scopes or claims (403); a token refused
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

    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..MAX_PROVIDERS).filter(move |i| self.contains(*i))
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
            (Failure::Invalid { .. }, _) => 3,
            (Failure::Insufficient { .. }, _) => 4,
            (Failure::Unavailable(_), Group::Any) => 5,
            (Failure::Malformed(_), _) => 6,
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

    /// Adds the claims the leaves of `provider` test to `names`.
    pub fn claim_names<'a>(&'a self, provider: usize, names: &mut Vec<&'a str>) {
        match self {
            Requirement::Provider(leaf) if leaf.provider == provider => {
                names.extend(leaf.claims.iter().map(|c| c.claim.as_str()));
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

/// Reads the requirement at `path`, nested `depth` levels deep (the rule's own is 1).
pub fn parse(
    value: &Value,
    path: String,
    providers: &[Provider],
    depth: usize,
) -> Result<Requirement, ConfigError> {
    let q = Obj::new(value, path)?;
    let mut known = KINDS.to_vec();
    known.extend(["scopes", "claims"]);
    q.only(&known)?;
    let kinds: Vec<&str> = KINDS.into_iter().filter(|k| q.get(k).is_some()).collect();
    let kind = match kinds.as_slice() {
        [one] => *one,
        [] => return err(q.path, format!("needs one of {}", KINDS.join(", "))),
        _ => return err(q.path, format!("give only one of {}", kinds.join(", "))),
    };
    let leaf_only = ["scopes", "claims"]
        .into_iter()
        .find(|f| q.get(f).is_some());
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
            match q.object(kind)? {
                Some(empty) if empty.map.is_empty() => {}
                _ => return err(q.field(kind), "must be an empty object, {}"),
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
    Ok(Requirement::Provider(Leaf {
        provider,
        audiences,
        scopes: q.strings("scopes", scope_token)?.unwrap_or_default(),
        claims,
    }))
}

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
