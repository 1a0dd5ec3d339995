//! `providers.NAME`: a token issuer, how its tokens are found and checked, and what the filter
//! passes on from them.

use super::client::client_auth;
use super::{any_string, err, header_name, parse_duration, quotable, ConfigError, HttpUri, Obj};
use super::{split_url, Rule};
use crate::claims::ClaimRules;
use crate::jwt::keys::{self, Jwk};
use crate::requirement::ProviderSet;
use serde_json::Value;

/// The default `clock_skew_seconds`, as in Envoy's `jwt_authn`.
pub const DEFAULT_CLOCK_SKEW: u64 = 60;
/// The largest `clock_skew_seconds` accepted.
pub const MAX_CLOCK_SKEW: u64 = 3600;
/// The default `introspection.negative_cache_duration`.
pub const DEFAULT_NEGATIVE_CACHE_MS: u64 = 10_000;
/// The default `introspection.cache_entries`.
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;
/// The default `cache_duration` of fetched keys, as in `jwt_authn`.
pub const DEFAULT_CACHE_DURATION_MS: u64 = 300_000;

/// Where a provider looks for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A request header (lower-case name) whose value starts with `prefix` (ASCII
    /// case-insensitive); the token is the rest. A prefix ending in a space is an auth scheme,
    /// as in `Bearer `: one or more spaces may follow it.
    Header { name: String, prefix: String },
    /// A query parameter.
    Param(String),
    /// A cookie (`from_cookies`).
    Cookie(String),
}

impl Source {
    /// Whether tokens found here come with the DPoP scheme (RFC 9449 §7.1).
    pub fn is_dpop(&self) -> bool {
        matches!(self, Source::Header { name, prefix } if name == "authorization" && prefix == DPOP_PREFIX)
    }

    /// Where in the request the token sits: two sources with the same place read the same
    /// credential (a header's prefix does not make it another place).
    pub fn same_place(&self, other: &Source) -> bool {
        match (self, other) {
            (Source::Header { name: a, .. }, Source::Header { name: b, .. }) => a == b,
            (Source::Param(a), Source::Param(b)) | (Source::Cookie(a), Source::Cookie(b)) => a == b,
            _ => false,
        }
    }
}

/// A claim copied into a request header on success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    pub header: String,
    /// A top-level claim name, or a dotted path into nested objects (`realm_access.roles`).
    pub claim: String,
}

/// A claim written to Envoy's filter state on success (`claim_to_filter_state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimState {
    /// The key as the Wasm ABI takes it; Envoy stores it as `wasm.KEY`.
    pub key: String,
    pub claim: String,
}

/// A named token issuer and how to check its tokens.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub claims: ClaimRules,
    pub keys: KeySource,
    /// RFC 7662 introspection of tokens that are not JWTs (all tokens, without `keys`).
    pub introspection: Option<Introspection>,
    pub sources: Vec<Source>,
    pub forward: bool,
    pub claim_to_headers: Vec<ClaimHeader>,
    /// `forward_payload_header`: the header that carries the token's payload upstream.
    pub payload_header: Option<String>,
    pub claim_to_filter_state: Vec<ClaimState>,
    /// `jwt_profile`: the profile a JWT must follow beyond RFC 7519.
    pub profile: Option<JwtProfile>,
    /// The top-level claims a decision on a cached token can need (dates, parties, scopes, the
    /// binding, and what the rules' claim conditions and this provider's outputs read).
    pub kept_claims: Vec<String>,
    /// `dpop`: DPoP-bound tokens (RFC 9449) are accepted with `Authorization: DPoP`.
    pub dpop: Option<Dpop>,
    /// `require_certificate_bound`: only tokens bound to the client certificate (RFC 8705).
    pub require_certificate_bound: bool,
}

/// `dpop`: how DPoP proofs are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dpop {
    /// `required`: tokens without a DPoP binding (`cnf.jkt`) are refused.
    pub required: bool,
    /// `max_age`: how old (by its `iat`) a proof may be, in seconds, besides the clock skew.
    pub max_age: u64,
    /// `nonce`: proofs must carry a nonce the filter issued (`DPoP-Nonce`).
    pub nonce: bool,
}

/// The default `dpop.max_age`, in seconds.
pub const DEFAULT_DPOP_MAX_AGE: u64 = 60;

/// `jwt_profile`: a JWT access-token profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtProfile {
    /// RFC 9068: `typ` `at+jwt`, and `iss`, `exp`, `aud`, `sub`, `client_id`, `iat`, `jti`.
    Rfc9068,
}

/// Where a provider's verification keys come from.
#[derive(Debug)]
pub enum KeySource {
    /// No JWT keys: every token is introspected.
    None,
    /// `local_jwks`: keys fixed in the configuration.
    Local(Vec<Jwk>),
    /// `remote_jwks` or `discovery`: keys fetched, cached and refreshed by the filter.
    Remote(RemoteJwks),
}

/// A key set fetched from the identity provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    /// Where the JWKS is; `None` when discovery finds it.
    pub jwks: Option<HttpUri>,
    /// The discovery document (OIDC Discovery or RFC 8414), when the JWKS is found through it.
    pub discovery: Option<HttpUri>,
    /// How long a fetched key set is used before it is refreshed, in milliseconds.
    pub cache_duration_ms: u64,
}

/// `introspection`: RFC 7662 token introspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introspection {
    pub endpoint: HttpUri,
    pub client_id: String,
    pub client_secret: String,
    pub auth: super::ClientAuth,
    pub token_type_hint: Option<String>,
    /// Active answers are cached until the earlier of their `exp` and this (ms).
    pub cache_duration_ms: u64,
    /// Inactive answers are cached this long (ms); 0: not cached.
    pub negative_cache_duration_ms: u64,
    /// The most answers kept, per VM and in the cache shared by the VMs.
    pub cache_entries: usize,
}

const FIELDS: [&str; 19] = [
    "issuer",
    "audiences",
    "local_jwks",
    "remote_jwks",
    "discovery",
    "introspection",
    "from_headers",
    "from_params",
    "from_cookies",
    "forward",
    "forward_payload_header",
    "claim_to_headers",
    "claim_to_filter_state",
    "clock_skew_seconds",
    "require_expiration",
    "max_lifetime",
    "jwt_profile",
    "dpop",
    "require_certificate_bound",
];

pub(super) fn provider(name: &str, value: &Value) -> Result<Provider, ConfigError> {
    let p = Obj::new(value, format!("providers.{name}"))?;
    if let Err(why) = quotable(name) {
        return err(p.path, format!("the provider name {why}"));
    }
    p.only(&FIELDS)?;
    let claims = claim_rules(&p)?;
    let introspection = p
        .object("introspection")?
        .map(|i| introspection(&i))
        .transpose()?;
    let keys = key_source(&p, claims.issuer.as_deref(), introspection.is_some())?;
    let dpop = p.object("dpop")?.map(|d| dpop(&d)).transpose()?;
    let sources = sources(&p, dpop.is_some())?;
    let claim_to_headers = claim_to_headers(&p, &sources)?;
    let payload_header = match p.string("forward_payload_header")? {
        Some(header) => Some(output_header(
            &p,
            "forward_payload_header",
            header,
            &sources,
        )?),
        None => None,
    };
    let profile = jwt_profile(&p, &keys)?;
    Ok(Provider {
        name: name.to_string(),
        claims,
        profile,
        keys,
        introspection,
        forward: p.boolean("forward", false)?,
        claim_to_filter_state: claim_to_filter_state(&p)?,
        claim_to_headers,
        payload_header,
        sources,
        kept_claims: Vec::new(),
        dpop,
        require_certificate_bound: p.boolean("require_certificate_bound", false)?,
    })
}

/// `dpop`: `required`, `max_age` (whole seconds, 1 s to 1 h), `nonce`.
fn dpop(d: &Obj<'_>) -> Result<Dpop, ConfigError> {
    d.only(&["required", "max_age", "nonce"])?;
    let max_age = d.duration("max_age", DEFAULT_DPOP_MAX_AGE * 1000, 1000, 3_600_000)?;
    if max_age % 1000 != 0 {
        return err(d.field("max_age"), "must be whole seconds, such as \"60s\"");
    }
    Ok(Dpop {
        required: d.boolean("required", false)?,
        max_age: max_age / 1000,
        nonce: d.boolean("nonce", false)?,
    })
}

/// `jwt_profile`, which only a provider with JWT keys can apply.
fn jwt_profile(p: &Obj<'_>, keys: &KeySource) -> Result<Option<JwtProfile>, ConfigError> {
    match p.string("jwt_profile")? {
        None => Ok(None),
        Some(_) if matches!(keys, KeySource::None) => err(
            p.field("jwt_profile"),
            "needs local_jwks, remote_jwks or discovery (it is a rule for JWTs)",
        ),
        Some("rfc9068") => Ok(Some(JwtProfile::Rfc9068)),
        Some(_) => err(p.field("jwt_profile"), "must be \"rfc9068\""),
    }
}

/// `issuer`, `audiences`, the clock skew and the lifetime rules.
fn claim_rules(p: &Obj<'_>) -> Result<ClaimRules, ConfigError> {
    let audiences = p.strings("audiences", any_string)?;
    if audiences.as_ref().is_some_and(Vec::is_empty) {
        return err(
            p.field("audiences"),
            "must not be empty (leave it out to accept any audience)",
        );
    }
    let clock_skew_seconds = match p.get("clock_skew_seconds") {
        None => DEFAULT_CLOCK_SKEW,
        Some(v) => match v.as_u64() {
            Some(s) if s <= MAX_CLOCK_SKEW => s,
            _ => {
                return err(
                    p.field("clock_skew_seconds"),
                    format!("must be a whole number of seconds from 0 to {MAX_CLOCK_SKEW}"),
                )
            }
        },
    };
    let max_lifetime_seconds = match p.get("max_lifetime") {
        None => None,
        Some(v) => match v.as_str().and_then(parse_duration) {
            Some(ms) if ms >= 1000 && ms % 1000 == 0 => Some(ms / 1000),
            _ => {
                return err(
                    p.field("max_lifetime"),
                    "must be a whole number of seconds of at least 1, such as \"86400s\"",
                )
            }
        },
    };
    Ok(ClaimRules {
        issuer: p.string("issuer")?.map(str::to_owned),
        audiences: audiences.unwrap_or_default(),
        require_expiration: p.boolean("require_expiration", true)?,
        clock_skew_seconds,
        max_lifetime_seconds,
    })
}

/// `from_headers`, `from_params`, `from_cookies`; `Authorization: Bearer` when none is given.
/// With a `dpop` block, `Authorization: DPoP` is read wherever `Authorization: Bearer` is.
fn sources(p: &Obj<'_>, dpop: bool) -> Result<Vec<Source>, ConfigError> {
    let mut sources = configured_sources(p)?;
    let bearer = |s: &Source| matches!(s, Source::Header { name, prefix } if name == "authorization" && prefix.eq_ignore_ascii_case("Bearer "));
    if dpop && sources.iter().any(bearer) {
        sources.push(Source::Header {
            name: "authorization".into(),
            prefix: DPOP_PREFIX.into(),
        });
    }
    Ok(sources)
}

/// The prefix of the `Authorization` source a provider with `dpop` reads DPoP tokens from.
pub const DPOP_PREFIX: &str = "DPoP ";

fn configured_sources(p: &Obj<'_>) -> Result<Vec<Source>, ConfigError> {
    let mut sources = Vec::new();
    for h in p.objects("from_headers")? {
        h.only(&["name", "value_prefix"])?;
        let header = h.required_string("name")?;
        if let Err(why) = header_name(header) {
            return err(h.field("name"), why);
        }
        let prefix = match h.get("value_prefix") {
            None => "",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return err(h.field("value_prefix"), "must be a string"),
        };
        sources.push(Source::Header {
            name: header.to_ascii_lowercase(),
            prefix: prefix.to_string(),
        });
    }
    for param in p.strings("from_params", any_string)?.unwrap_or_default() {
        sources.push(Source::Param(param));
    }
    // Cookie names are RFC 6265 tokens, the same characters as header names.
    for cookie in p.strings("from_cookies", header_name)?.unwrap_or_default() {
        sources.push(Source::Cookie(cookie));
    }
    if sources.is_empty() {
        if ["from_headers", "from_params", "from_cookies"]
            .iter()
            .any(|f| p.get(f).is_some())
        {
            return err(
                p.field("from_headers"),
                "from_headers, from_params and from_cookies are all empty: the provider could never see a token",
            );
        }
        sources.push(Source::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        });
    }
    Ok(sources)
}

/// A header the provider writes (`field` names it): writable, and not one it reads tokens from.
fn output_header(
    o: &Obj<'_>,
    field: &str,
    header: &str,
    sources: &[Source],
) -> Result<String, ConfigError> {
    if let Err(why) = writable_header(header) {
        return err(o.field(field), why);
    }
    let reads =
        |s: &Source| matches!(s, Source::Header { name, .. } if name.eq_ignore_ascii_case(header));
    if sources.iter().any(reads) {
        return err(
            o.field(field),
            "is also a header the provider reads tokens from",
        );
    }
    Ok(header.to_ascii_lowercase())
}

/// A header the filter may set from a claim: not a pseudo-header, not one that frames or
/// routes the request.
fn writable_header(name: &str) -> Result<(), &'static str> {
    header_name(name)?;
    let reserved = [
        "host",
        "authorization",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "cookie",
    ];
    if reserved.contains(&name.to_ascii_lowercase().as_str()) {
        return Err("is a header the filter must not overwrite");
    }
    Ok(())
}

fn claim_to_headers(p: &Obj<'_>, sources: &[Source]) -> Result<Vec<ClaimHeader>, ConfigError> {
    p.objects("claim_to_headers")?
        .iter()
        .map(|c| {
            c.only(&["header_name", "claim_name"])?;
            let header = c.required_string("header_name")?;
            Ok(ClaimHeader {
                header: output_header(c, "header_name", header, sources)?,
                claim: c.required_string("claim_name")?.to_string(),
            })
        })
        .collect()
}

fn claim_to_filter_state(p: &Obj<'_>) -> Result<Vec<ClaimState>, ConfigError> {
    p.objects("claim_to_filter_state")?
        .iter()
        .map(|c| {
            c.only(&["key", "claim_name"])?;
            let key = c.required_string("key")?;
            let fits = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
            if key.len() > 128 || !key.bytes().all(fits) {
                return err(
                    c.field("key"),
                    "must be at most 128 letters, digits, '.', '_' or '-'",
                );
            }
            Ok(ClaimState {
                key: key.to_string(),
                claim: c.required_string("claim_name")?.to_string(),
            })
        })
        .collect()
}

/// Exactly one of `local_jwks`, `remote_jwks` and `discovery`.
fn key_source(
    p: &Obj<'_>,
    issuer: Option<&str>,
    introspects: bool,
) -> Result<KeySource, ConfigError> {
    let given: Vec<&str> = ["local_jwks", "remote_jwks", "discovery"]
        .into_iter()
        .filter(|k| p.get(k).is_some())
        .collect();
    match given.as_slice() {
        ["local_jwks"] => match p.object("local_jwks")? {
            Some(j) => local_jwks(&j).map(KeySource::Local),
            None => err(p.field("local_jwks"), "is required"),
        },
        ["remote_jwks"] => remote_jwks(p),
        ["discovery"] => discovery(p, issuer),
        [] if introspects => Ok(KeySource::None),
        [] => err(
            p.field("local_jwks"),
            "the provider has no keys: give local_jwks, remote_jwks, discovery or introspection",
        ),
        _ => err(
            p.path.clone(),
            format!("give only one of {}", given.join(", ")),
        ),
    }
}

fn cache_duration(o: &Obj<'_>) -> Result<u64, ConfigError> {
    o.duration(
        "cache_duration",
        DEFAULT_CACHE_DURATION_MS,
        1000,
        86_400_000,
    )
}

fn remote_jwks(p: &Obj<'_>) -> Result<KeySource, ConfigError> {
    let Some(r) = p.object("remote_jwks")? else {
        return err(p.field("remote_jwks"), "is required");
    };
    r.only(&["http_uri", "cache_duration"])?;
    let Some(jwks) = r.http_uri("http_uri", false)? else {
        return err(r.field("http_uri"), "is required");
    };
    Ok(KeySource::Remote(RemoteJwks {
        jwks: Some(jwks),
        discovery: None,
        cache_duration_ms: cache_duration(&r)?,
    }))
}

fn discovery(p: &Obj<'_>, issuer: Option<&str>) -> Result<KeySource, ConfigError> {
    let Some(d) = p.object("discovery")? else {
        return err(p.field("discovery"), "is required");
    };
    d.only(&["http_uri", "cache_duration"])?;
    let Some(mut doc) = d.http_uri("http_uri", true)? else {
        return err(d.field("http_uri"), "is required (at least its cluster)");
    };
    let Some(issuer) = issuer else {
        return err(
            p.field("issuer"),
            "is required with discovery: the discovered issuer must equal it",
        );
    };
    if doc.uri.is_empty() {
        if split_url(issuer).is_none() {
            return err(
                p.field("issuer"),
                "must be an http(s) URL for discovery (or give discovery.http_uri.uri)",
            );
        }
        doc.uri = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
    }
    Ok(KeySource::Remote(RemoteJwks {
        jwks: None,
        discovery: Some(doc),
        cache_duration_ms: cache_duration(&d)?,
    }))
}

fn introspection(i: &Obj<'_>) -> Result<Introspection, ConfigError> {
    i.only(&[
        "http_uri",
        "client_id",
        "client_secret",
        "auth_method",
        "token_type_hint",
        "cache_duration",
        "negative_cache_duration",
        "cache_entries",
    ])?;
    let Some(endpoint) = i.http_uri("http_uri", false)? else {
        return err(i.field("http_uri"), "is required");
    };
    let cache_entries = match i.get("cache_entries") {
        None => DEFAULT_CACHE_ENTRIES,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=1_000_000).contains(&n) => n as usize,
            _ => {
                return err(
                    i.field("cache_entries"),
                    "must be a whole number from 1 to 1000000",
                )
            }
        },
    };
    Ok(Introspection {
        endpoint,
        client_id: i.required_string("client_id")?.to_string(),
        client_secret: i.required_string("client_secret")?.to_string(),
        auth: client_auth(i)?,
        token_type_hint: i.string("token_type_hint")?.map(str::to_owned),
        cache_duration_ms: i.duration(
            "cache_duration",
            DEFAULT_CACHE_DURATION_MS,
            0,
            86_400_000,
        )?,
        negative_cache_duration_ms: i.duration(
            "negative_cache_duration",
            DEFAULT_NEGATIVE_CACHE_MS,
            0,
            3_600_000,
        )?,
        cache_entries,
    })
}

/// `local_jwks`: an Envoy DataSource; only `inline_string` can be read from inside Wasm.
fn local_jwks(jwks: &Obj<'_>) -> Result<Vec<Jwk>, ConfigError> {
    jwks.only(&["inline_string", "filename"])?;
    if jwks.get("filename").is_some() {
        return err(
            jwks.field("filename"),
            "a Wasm filter cannot read files; put the JWKS in inline_string",
        );
    }
    let text = jwks.required_string("inline_string")?;
    let field = jwks.field("inline_string");
    let set = keys::parse_jwks(text.as_bytes()).map_err(|why| ConfigError {
        field: field.clone(),
        reason: format!("the JWKS is {why}"),
    })?;
    // Inline keys are the operator's own: a bad one is a configuration mistake, not a key to skip.
    if let Some(problem) = set.problems.first() {
        return err(field, problem.clone());
    }
    if set.keys.is_empty() {
        return err(field, "the JWKS has no usable signing key");
    }
    Ok(set.keys)
}

/// The claims always kept for a cached token: its dates, parties and scopes.
const ALWAYS_KEPT: [&str; 8] = ["exp", "nbf", "iat", "iss", "aud", "scope", "scp", "cnf"];

/// Fills each provider's `kept_claims`: what a decision on its cached tokens can read.
pub(super) fn keep_claims(providers: &mut [Provider], rules: &[Rule]) {
    for (i, p) in providers.iter_mut().enumerate() {
        let mut names: Vec<&str> = ALWAYS_KEPT.to_vec();
        names.extend(p.claim_to_headers.iter().map(|c| c.claim.as_str()));
        names.extend(p.claim_to_filter_state.iter().map(|c| c.claim.as_str()));
        for rule in rules {
            if let Some(requires) = &rule.requires {
                requires.claim_names(i, &mut names);
            }
        }
        let mut kept: Vec<String> = Vec::new();
        // A claim name is a top-level name or a dotted path: keep both readings.
        for name in names {
            for top in [name, name.split('.').next().unwrap_or(name)] {
                if !kept.iter().any(|k| k == top) {
                    kept.push(top.to_string());
                }
            }
        }
        p.kept_claims = kept;
    }
}

/// Every header any provider writes: removed from every request.
pub(super) fn owned_headers(providers: &[Provider]) -> Vec<String> {
    let mut owned: Vec<String> = Vec::new();
    for p in providers {
        let written = p.claim_to_headers.iter().map(|c| &c.header);
        for header in written.chain(p.payload_header.iter()) {
            if !owned.contains(header) {
                owned.push(header.clone());
            }
        }
    }
    owned
}

/// Whether the providers in `set` read tokens from more than one place.
pub(super) fn several_places(providers: &[Provider], set: ProviderSet) -> bool {
    let mut sources = set
        .iter()
        .filter_map(|i| providers.get(i))
        .flat_map(|p| p.sources.iter());
    let Some(first) = sources.next() else {
        return false;
    };
    sources.any(|s| !s.same_place(first))
}

/// The DPoP side of the providers in `set`: `None` when none of them has `dpop`.
pub(super) fn rule_dpop(providers: &[Provider], set: ProviderSet) -> Option<super::RuleDpop> {
    let consulted = || set.iter().filter_map(|i| providers.get(i));
    consulted()
        .any(|p| p.dpop.is_some())
        .then(|| super::RuleDpop {
            bearer: consulted().any(|p| !p.dpop.is_some_and(|d| d.required)),
            nonce: consulted().any(|p| p.dpop.is_some_and(|d| d.nonce)),
        })
}
