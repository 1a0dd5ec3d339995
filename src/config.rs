//! The plugin configuration: JSON in, a validated and compiled [`Config`] out.
//!
//! Every error names the field it is about (`providers.corp.audiences[1]: ...`), so the one log
//! line Envoy shows when it refuses a configuration tells the operator what to fix. Unknown
//! fields are refused too: a misspelt `audience` must not silently switch a check off.

use crate::claims::ClaimRules;
use crate::jwt::keys::{self, Jwk};
use serde_json::{Map, Value};
use std::fmt;

/// The realm sent in challenges when the configuration names none.
pub const DEFAULT_REALM: &str = "api";
/// The default `clock_skew_seconds`, as in Envoy's `jwt_authn`.
pub const DEFAULT_CLOCK_SKEW: u64 = 60;
/// The largest `clock_skew_seconds` accepted.
pub const MAX_CLOCK_SKEW: u64 = 3600;

/// A refused configuration: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

fn err<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        field: field.into(),
        reason: reason.into(),
    })
}

/// The whole, validated configuration.
#[derive(Debug)]
pub struct Config {
    pub realm: String,
    pub providers: Vec<Provider>,
    pub rules: Vec<Rule>,
    /// Every header name the filter writes (`claim_to_headers`): removed from every request
    /// before anything else, so a client can never supply them itself.
    pub owned_headers: Vec<String>,
    /// `upstream_credentials`: the OAuth clients whose tokens the filter injects upstream.
    pub clients: Vec<UpstreamClient>,
}

/// Where a provider looks for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A request header (lower-case name) whose value starts with `prefix` (ASCII
    /// case-insensitive); the token is the rest. A prefix ending in a space is an auth scheme,
    /// as in `Bearer `: one or more spaces may follow it.
    Header { name: String, prefix: String },
    /// A query parameter.
    Param(String),
}

/// A claim copied into a request header on success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    pub header: String,
    /// A top-level claim name, or a dotted path into nested objects (`realm_access.roles`).
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

/// Envoy's `HttpUri`: a URL, the Envoy cluster that reaches it, and a timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUri {
    pub uri: String,
    pub cluster: String,
    pub timeout_ms: u64,
}

/// The parts of an `http://` or `https://` URL a `dispatch_http_call` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts {
    pub scheme: String,
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
}

/// Splits an absolute http(s) URL; `None` if it is not one (or carries user info or a fragment).
pub fn split_url(url: &str) -> Option<UrlParts> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let bad = |c: char| c.is_whitespace() || c.is_control();
    if authority.is_empty()
        || authority.contains('@')
        || authority.chars().any(bad)
        || path.contains('#')
        || path.chars().any(bad)
    {
        return None;
    }
    Some(UrlParts {
        scheme,
        authority: authority.to_string(),
        path,
    })
}

/// A protobuf JSON duration (`"2s"`, `"0.5s"`, `"300s"`) in milliseconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let number = text.strip_suffix('s')?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || whole.len() > 9 {
        return None;
    }
    if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds: u64 = whole.parse().ok()?;
    let millis: u64 = format!("{fraction:0<3}")[..3].parse().ok()?;
    seconds.checked_mul(1000)?.checked_add(millis)
}

/// How the filter authenticates to the introspection endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic` with the form-urlencoded id and secret.
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// `introspection`: RFC 7662 token introspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introspection {
    pub endpoint: HttpUri,
    pub client_id: String,
    pub client_secret: String,
    pub auth: ClientAuth,
    pub token_type_hint: Option<String>,
    /// Active answers are cached until the earlier of their `exp` and this (ms).
    pub cache_duration_ms: u64,
    /// Inactive answers are cached this long (ms); 0: not cached.
    pub negative_cache_duration_ms: u64,
    /// The most answers kept, per VM and in the cache shared by the VMs.
    pub cache_entries: usize,
}

/// `upstream_credentials.<name>`: an OAuth client the filter is, to call an upstream with a
/// token it obtains itself (the client credentials grant, RFC 6749 §4.4).
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamClient {
    /// Letters, digits, `-` and `_` (it names metrics and shared data).
    pub name: String,
    /// `token_endpoint.http_uri`.
    pub endpoint: HttpUri,
    pub client_id: String,
    pub client_secret: String,
    pub auth: ClientAuth,
    /// Requested as `scope`, space-separated; none: the server's default.
    pub scopes: Vec<String>,
    /// Sent as `audience` (the parameter Auth0, Okta and others use).
    pub audience: Option<String>,
    /// Sent as `resource` (RFC 8707): an absolute URI without a fragment.
    pub resource: Option<String>,
    /// A token is refreshed this long before it expires, or at half its lifetime when that is
    /// sooner (ms).
    pub refresh_margin_ms: u64,
}

/// The secret stays out of every `{:?}`.
impl fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("auth", &self.auth)
            .field("scopes", &self.scopes)
            .field("audience", &self.audience)
            .field("resource", &self.resource)
            .field("refresh_margin_ms", &self.refresh_margin_ms)
            .finish()
    }
}

/// The default `refresh_margin` of an upstream client.
pub const DEFAULT_REFRESH_MARGIN_MS: u64 = 60_000;

/// The default `introspection.negative_cache_duration`.
pub const DEFAULT_NEGATIVE_CACHE_MS: u64 = 10_000;
/// The default `introspection.cache_entries`.
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;

/// The default `cache_duration` of fetched keys, as in `jwt_authn`.
pub const DEFAULT_CACHE_DURATION_MS: u64 = 300_000;
/// The default timeout of calls to the identity provider.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;

/// Which requests a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
}

impl PathMatch {
    /// Whether `path` (without its query) fits.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatch::Exact(exact) => path == exact,
        }
    }
}

/// What a rule demands of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// Index into [`Config::providers`].
    pub provider: usize,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matcher: PathMatch,
    /// `None`: the request passes without a token.
    pub requires: Option<Requirement>,
    /// `inject`: index into [`Config::clients`]; the request goes upstream with that client's
    /// token in `Authorization` (replacing the caller's).
    pub inject: Option<usize>,
}

/// A view of one JSON object that knows its own path, for error messages.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    fn new(value: &'a Value, path: String) -> Result<Self, ConfigError> {
        match value {
            Value::Object(map) => Ok(Obj { map, path }),
            _ => err(path, "must be a JSON object"),
        }
    }

    fn field(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn only(&self, known: &[&str]) -> Result<(), ConfigError> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => err(
                self.field(unknown),
                format!("unknown field (known here: {})", known.join(", ")),
            ),
            None => Ok(()),
        }
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name)
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            Some(_) => err(self.field(name), "must be a non-empty string"),
        }
    }

    fn required_string(&self, name: &str) -> Result<&'a str, ConfigError> {
        self.string(name)?
            .map_or_else(|| err(self.field(name), "is required"), Ok)
    }

    fn boolean(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => err(self.field(name), "must be true or false"),
        }
    }

    fn object(&self, name: &str) -> Result<Option<Obj<'a>>, ConfigError> {
        self.get(name)
            .map(|v| Obj::new(v, self.field(name)))
            .transpose()
    }

    fn array(&self, name: &str) -> Result<Option<&'a Vec<Value>>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(_) => err(self.field(name), "must be an array"),
        }
    }

    /// A duration field in milliseconds, within `min..=max`.
    fn duration(&self, name: &str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        let Some(text) = self.string(name)? else {
            return Ok(default);
        };
        match parse_duration(text) {
            Some(ms) if (min..=max).contains(&ms) => Ok(ms),
            Some(_) => err(
                self.field(name),
                format!("must be from {}ms to {}s", min, max / 1000),
            ),
            None => err(
                self.field(name),
                "must be a duration in seconds such as \"2s\" or \"0.5s\"",
            ),
        }
    }

    /// An Envoy `HttpUri` object: `uri` (required unless `uri_optional`), `cluster`, `timeout`.
    fn http_uri(&self, name: &str, uri_optional: bool) -> Result<Option<HttpUri>, ConfigError> {
        let Some(h) = self.object(name)? else {
            return Ok(None);
        };
        h.only(&["uri", "cluster", "timeout"])?;
        let uri = match h.string("uri")? {
            Some(uri) => {
                if split_url(uri).is_none() {
                    return err(
                        h.field("uri"),
                        "must be an absolute http:// or https:// URL",
                    );
                }
                uri.to_string()
            }
            None if uri_optional => String::new(),
            None => return err(h.field("uri"), "is required"),
        };
        Ok(Some(HttpUri {
            uri,
            cluster: h.required_string("cluster")?.to_string(),
            timeout_ms: h.duration("timeout", DEFAULT_TIMEOUT_MS, 1, 60_000)?,
        }))
    }

    /// An array of non-empty strings, each checked by `valid`.
    fn strings(
        &self,
        name: &str,
        valid: impl Fn(&str) -> Result<(), &'static str>,
    ) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(items) = self.array(name)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let here = format!("{}[{i}]", self.field(name));
            match item {
                Value::String(s) if !s.is_empty() => {
                    if let Err(why) = valid(s) {
                        return err(here, why);
                    }
                    out.push(s.clone());
                }
                _ => return err(here, "must be a non-empty string"),
            }
        }
        Ok(Some(out))
    }
}

fn any_string(_: &str) -> Result<(), &'static str> {
    Ok(())
}

/// An HTTP header name (RFC 9110 token) that the filter may read or write.
fn header_name(name: &str) -> Result<(), &'static str> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !name.chars().all(tchar) {
        return Err("is not a valid HTTP header name");
    }
    Ok(())
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
    ];
    if reserved.contains(&name.to_ascii_lowercase().as_str()) {
        return Err("is a header the filter must not overwrite");
    }
    Ok(())
}

/// A scope token (RFC 6749 §3.3): printable ASCII except space, `"` and `\`.
fn scope_token(scope: &str) -> Result<(), &'static str> {
    if scope
        .bytes()
        .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
    {
        Ok(())
    } else {
        Err("is not a valid scope (printable ASCII, no space, quote or backslash)")
    }
}

/// A value that can stand inside a quoted string of a challenge without escaping.
fn quotable(text: &str) -> Result<(), &'static str> {
    if text
        .bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
    {
        Ok(())
    } else {
        Err("must be printable ASCII without quotes or backslashes")
    }
}

impl Config {
    /// Parses and validates the plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let root = match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => v,
            Err(e) => return err("", format!("configuration is not valid JSON ({e})")),
        };
        let top = Obj::new(&root, String::new())?;
        top.only(&["providers", "rules", "realm", "upstream_credentials"])?;

        let realm = top.string("realm")?.unwrap_or(DEFAULT_REALM);
        if let Err(why) = quotable(realm) {
            return err("realm", why);
        }

        let mut clients = Vec::new();
        if let Some(c) = top.object("upstream_credentials")? {
            for (name, value) in c.map {
                clients.push(upstream_client(name, value)?);
            }
        }

        // A filter that only injects credentials needs no provider.
        let mut providers = Vec::new();
        match top.object("providers")? {
            Some(p) => {
                for (name, value) in p.map {
                    providers.push(provider(name, value)?);
                }
            }
            None if !clients.is_empty() => {}
            None => return err("providers", "is required"),
        }
        if providers.is_empty() && clients.is_empty() {
            return err(
                "providers",
                "must name at least one provider (or give upstream_credentials)",
            );
        }

        let Some(rule_values) = top.array("rules")? else {
            return err("rules", "is required (an empty array protects nothing)");
        };
        let mut rules = Vec::with_capacity(rule_values.len());
        for (i, value) in rule_values.iter().enumerate() {
            rules.push(rule(i, value, &providers, &clients)?);
        }

        let mut owned_headers: Vec<String> = Vec::new();
        for p in &providers {
            for ch in &p.claim_to_headers {
                if !owned_headers.contains(&ch.header) {
                    owned_headers.push(ch.header.clone());
                }
            }
        }
        Ok(Config {
            realm: realm.to_string(),
            providers,
            rules,
            owned_headers,
            clients,
        })
    }
}

fn provider(name: &str, value: &Value) -> Result<Provider, ConfigError> {
    let p = Obj::new(value, format!("providers.{name}"))?;
    if let Err(why) = quotable(name) {
        return err(p.path, format!("the provider name {why}"));
    }
    p.only(&[
        "issuer",
        "audiences",
        "local_jwks",
        "remote_jwks",
        "discovery",
        "introspection",
        "from_headers",
        "from_params",
        "forward",
        "claim_to_headers",
        "clock_skew_seconds",
        "require_expiration",
        "max_lifetime",
    ])?;

    let issuer = p.string("issuer")?.map(str::to_owned);
    let audiences = p.strings("audiences", any_string)?;
    if audiences.as_ref().is_some_and(Vec::is_empty) {
        return err(
            p.field("audiences"),
            "must not be empty (leave it out to accept any audience)",
        );
    }

    let introspection = p
        .object("introspection")?
        .map(|i| introspection(&i))
        .transpose()?;
    let keys = key_source(&p, issuer.as_deref(), introspection.is_some())?;

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

    let mut sources = Vec::new();
    if let Some(items) = p.array("from_headers")? {
        for (i, item) in items.iter().enumerate() {
            let h = Obj::new(item, format!("{}[{i}]", p.field("from_headers")))?;
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
    }
    for param in p.strings("from_params", any_string)?.unwrap_or_default() {
        sources.push(Source::Param(param));
    }
    if sources.is_empty() {
        if p.get("from_headers").is_some() || p.get("from_params").is_some() {
            return err(
                p.field("from_headers"),
                "from_headers and from_params are both empty: the provider could never see a token",
            );
        }
        sources.push(Source::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        });
    }

    let mut claim_to_headers = Vec::new();
    if let Some(items) = p.array("claim_to_headers")? {
        for (i, item) in items.iter().enumerate() {
            let c = Obj::new(item, format!("{}[{i}]", p.field("claim_to_headers")))?;
            c.only(&["header_name", "claim_name"])?;
            let header = c.required_string("header_name")?;
            if let Err(why) = writable_header(header) {
                return err(c.field("header_name"), why);
            }
            if sources.iter().any(
                |s| matches!(s, Source::Header { name, .. } if name.eq_ignore_ascii_case(header)),
            ) {
                return err(
                    c.field("header_name"),
                    "is also a header the provider reads tokens from",
                );
            }
            claim_to_headers.push(ClaimHeader {
                header: header.to_ascii_lowercase(),
                claim: c.required_string("claim_name")?.to_string(),
            });
        }
    }

    Ok(Provider {
        name: name.to_string(),
        claims: ClaimRules {
            issuer,
            audiences: audiences.unwrap_or_default(),
            require_expiration: p.boolean("require_expiration", true)?,
            clock_skew_seconds,
            max_lifetime_seconds,
        },
        keys,
        introspection,
        sources,
        forward: p.boolean("forward", false)?,
        claim_to_headers,
    })
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
        ["local_jwks"] => {
            let jwks = p.object("local_jwks")?;
            jwks.map_or_else(
                || err(p.field("local_jwks"), "is required"),
                |j| local_jwks(&j),
            )
            .map(KeySource::Local)
        }
        ["remote_jwks"] => {
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
                cache_duration_ms: r.duration(
                    "cache_duration",
                    DEFAULT_CACHE_DURATION_MS,
                    1000,
                    86_400_000,
                )?,
            }))
        }
        ["discovery"] => {
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
                cache_duration_ms: d.duration(
                    "cache_duration",
                    DEFAULT_CACHE_DURATION_MS,
                    1000,
                    86_400_000,
                )?,
            }))
        }
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
    let auth = client_auth(i)?;
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
        auth,
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

fn rule(
    i: usize,
    value: &Value,
    providers: &[Provider],
    clients: &[UpstreamClient],
) -> Result<Rule, ConfigError> {
    let r = Obj::new(value, format!("rules[{i}]"))?;
    r.only(&["match", "requires", "inject"])?;
    let m = match r.object("match")? {
        Some(m) => m,
        None => return err(r.field("match"), "is required"),
    };
    m.only(&["prefix", "path"])?;
    let matcher = match (m.string("prefix")?, m.string("path")?) {
        (Some(prefix), None) => PathMatch::Prefix(prefix.to_string()),
        (None, Some(path)) => PathMatch::Exact(path.to_string()),
        _ => return err(m.path, "needs exactly one of prefix or path"),
    };
    let (PathMatch::Prefix(p) | PathMatch::Exact(p)) = &matcher;
    if !p.starts_with('/') {
        return err(m.path, "must start with '/'");
    }
    let requires = match r.object("requires")? {
        None => None,
        Some(q) => {
            q.only(&["provider_name", "scopes"])?;
            let name = q.required_string("provider_name")?;
            let Some(provider) = providers.iter().position(|p| p.name == name) else {
                return err(q.field("provider_name"), "names no provider in providers");
            };
            Some(Requirement {
                provider,
                scopes: q.strings("scopes", scope_token)?.unwrap_or_default(),
            })
        }
    };
    let inject = match r.string("inject")? {
        None => None,
        Some(name) => match clients.iter().position(|c| c.name == name) {
            Some(c) => Some(c),
            None => return err(r.field("inject"), "names no client in upstream_credentials"),
        },
    };
    Ok(Rule {
        matcher,
        requires,
        inject,
    })
}

/// An `upstream_credentials` entry.
fn upstream_client(name: &str, value: &Value) -> Result<UpstreamClient, ConfigError> {
    let c = Obj::new(value, format!("upstream_credentials.{name}"))?;
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return err(
            c.path,
            "the client name must be letters, digits, '-' and '_' (it names metrics)",
        );
    }
    c.only(&[
        "token_endpoint",
        "client_id",
        "client_secret",
        "auth_method",
        "scopes",
        "audience",
        "resource",
        "refresh_margin",
    ])?;
    let Some(t) = c.object("token_endpoint")? else {
        return err(c.field("token_endpoint"), "is required");
    };
    t.only(&["http_uri"])?;
    let Some(endpoint) = t.http_uri("http_uri", false)? else {
        return err(t.field("http_uri"), "is required");
    };
    let audience = c.string("audience")?.map(str::to_owned);
    let resource = c.string("resource")?.map(str::to_owned);
    if let Some(resource) = &resource {
        // RFC 8707 §2: an absolute URI, without a fragment.
        let scheme = resource.split_once(':').map_or("", |(s, _)| s);
        let absolute = scheme.starts_with(|ch: char| ch.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "+-.".contains(ch));
        if !absolute || resource.contains('#') || resource.chars().any(char::is_whitespace) {
            return err(
                c.field("resource"),
                "must be an absolute URI without a fragment (RFC 8707)",
            );
        }
    }
    if audience.is_some() && resource.is_some() {
        return err(
            c.path,
            "give audience or resource, not both (resource is the RFC 8707 parameter)",
        );
    }
    Ok(UpstreamClient {
        name: name.to_string(),
        endpoint,
        client_id: c.required_string("client_id")?.to_string(),
        client_secret: c.required_string("client_secret")?.to_string(),
        auth: client_auth(&c)?,
        scopes: c.strings("scopes", scope_token)?.unwrap_or_default(),
        audience,
        resource,
        refresh_margin_ms: c.duration(
            "refresh_margin",
            DEFAULT_REFRESH_MARGIN_MS,
            1000,
            86_400_000,
        )?,
    })
}

/// `auth_method`: how the filter authenticates as an OAuth client.
fn client_auth(o: &Obj<'_>) -> Result<ClientAuth, ConfigError> {
    match o.string("auth_method")? {
        None | Some("client_secret_basic") => Ok(ClientAuth::Basic),
        Some("client_secret_post") => Ok(ClientAuth::Post),
        Some(_) => err(
            o.field("auth_method"),
            "must be client_secret_basic or client_secret_post",
        ),
    }
}

impl Config {
    /// The first rule whose match fits `path` (without its query).
    pub fn rule_for(&self, path: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matcher.matches(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{jwks, Signer};
    use serde_json::json;

    fn jwks_text() -> String {
        jwks(&[Signer::hmac("HS256", "k1", &[1u8; 32]).jwk()])
    }

    fn base() -> Value {
        json!({
            "providers": {"corp": {
                "issuer": "https://idp", "audiences": ["api"],
                "local_jwks": {"inline_string": jwks_text()},
                "claim_to_headers": [{"header_name": "X-User", "claim_name": "sub"}]
            }},
            "rules": [
                {"match": {"prefix": "/public"}},
                {"match": {"path": "/admin"}, "requires": {"provider_name": "corp", "scopes": ["admin"]}},
                {"match": {"prefix": "/"}, "requires": {"provider_name": "corp"}}
            ]
        })
    }

    fn refuse(edit: impl FnOnce(&mut Value)) -> String {
        let mut v = base();
        edit(&mut v);
        match Config::from_json(v.to_string().as_bytes()) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn accepts_the_documented_shape() {
        let c = Config::from_json(base().to_string().as_bytes()).unwrap();
        assert_eq!(c.realm, DEFAULT_REALM);
        let p = &c.providers[0];
        assert_eq!(p.claims.clock_skew_seconds, 60);
        assert!(p.claims.require_expiration);
        assert_eq!(p.claims.max_lifetime_seconds, None);
        assert!(!p.forward);
        assert_eq!(
            p.sources,
            vec![Source::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into()
            }]
        );
        assert_eq!(c.owned_headers, vec!["x-user".to_string()]);
        assert_eq!(c.rule_for("/public/x").unwrap().requires, None);
        assert_eq!(
            c.rule_for("/admin")
                .unwrap()
                .requires
                .as_ref()
                .unwrap()
                .scopes,
            vec!["admin"]
        );
        assert_eq!(
            c.rule_for("/admin/x")
                .unwrap()
                .requires
                .as_ref()
                .unwrap()
                .scopes,
            Vec::<String>::new()
        );
    }

    #[test]
    fn errors_name_the_field() {
        type Edit = Box<dyn FnOnce(&mut Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|v| v["providers"]["corp"]["audience"] = json!("api")),
                "providers.corp.audience: unknown field",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["audiences"] = json!(["api", 3])),
                "providers.corp.audiences[1]: must be a non-empty string",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["audiences"] = json!([])),
                "providers.corp.audiences: must not be empty",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["issuer"] = json!("")),
                "providers.corp.issuer: must be a non-empty string",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["clock_skew_seconds"] = json!(-1)),
                "providers.corp.clock_skew_seconds",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["clock_skew_seconds"] = json!("60s")),
                "providers.corp.clock_skew_seconds",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["forward"] = json!("yes")),
                "providers.corp.forward: must be true or false",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["require_expiration"] = json!(0)),
                "providers.corp.require_expiration",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["max_lifetime"] = json!(86400)),
                "providers.corp.max_lifetime: must be a whole number of seconds",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["max_lifetime"] = json!("1d")),
                "providers.corp.max_lifetime",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["max_lifetime"] = json!("0s")),
                "providers.corp.max_lifetime",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["max_lifetime"] = json!("1.5s")),
                "providers.corp.max_lifetime",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["local_jwks"]["inline_string"] = json!("{}")),
                "providers.corp.local_jwks.inline_string: the JWKS is without a \"keys\" array",
            ),
            (
                Box::new(|v| {
                    v["providers"]["corp"]["local_jwks"]["inline_string"] = json!("{\"keys\":[]}")
                }),
                "no usable signing key",
            ),
            (
                Box::new(|v| {
                    v["providers"]["corp"]["local_jwks"]["inline_string"] =
                        json!("{\"keys\":[{\"kty\":\"oct\",\"k\":\"AAAA\"}]}")
                }),
                "keys[0]: oct key shorter",
            ),
            (
                Box::new(|v| {
                    v["providers"]["corp"]["local_jwks"] = json!({"filename": "/etc/jwks"})
                }),
                "providers.corp.local_jwks.filename",
            ),
            (
                Box::new(|v| {
                    v["providers"]["corp"]
                        .as_object_mut()
                        .unwrap()
                        .remove("local_jwks");
                }),
                "providers.corp.local_jwks: the provider has no keys",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["remote_jwks"] = json!({})),
                "providers.corp: give only one of local_jwks, remote_jwks",
            ),
            (
                Box::new(|v| v["providers"]["corp"] = json!({"remote_jwks": {}})),
                "providers.corp.remote_jwks.http_uri: is required",
            ),
            (
                Box::new(
                    |v| v["providers"]["corp"] = json!({"remote_jwks": {"http_uri": {"uri": "ftp://x/jwks", "cluster": "idp"}}}),
                ),
                "providers.corp.remote_jwks.http_uri.uri: must be an absolute http",
            ),
            (
                Box::new(|v| {
                    v["providers"]["corp"] =
                        json!({"remote_jwks": {"http_uri": {"uri": "http://x/jwks"}}})
                }),
                "providers.corp.remote_jwks.http_uri.cluster: is required",
            ),
            (
                Box::new(
                    |v| v["providers"]["corp"] = json!({"remote_jwks": {"http_uri": {"uri": "http://x/jwks", "cluster": "idp", "timeout": "2"}}}),
                ),
                "providers.corp.remote_jwks.http_uri.timeout: must be a duration",
            ),
            (
                Box::new(
                    |v| v["providers"]["corp"] = json!({"remote_jwks": {"http_uri": {"uri": "http://x/jwks", "cluster": "idp"}, "cache_duration": "0.5s"}}),
                ),
                "providers.corp.remote_jwks.cache_duration: must be from 1000ms",
            ),
            (
                Box::new(|v| {
                    v["providers"]["corp"] = json!({"discovery": {"http_uri": {"cluster": "idp"}}})
                }),
                "providers.corp.issuer: is required with discovery",
            ),
            (
                Box::new(|v| {
                    v["providers"]["corp"] =
                        json!({"issuer": "corp", "discovery": {"http_uri": {"cluster": "idp"}}})
                }),
                "providers.corp.issuer: must be an http(s) URL for discovery",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["introspection"] = json!({})),
                "providers.corp.introspection.http_uri: is required",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["introspection"] = json!({"http_uri": {"uri": "http://idp/i", "cluster": "idp"}, "client_id": "gw"})),
                "providers.corp.introspection.client_secret: is required",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["introspection"] = json!({"http_uri": {"uri": "http://idp/i", "cluster": "idp"}, "client_id": "gw", "client_secret": "s", "auth_method": "private_key_jwt"})),
                "providers.corp.introspection.auth_method: must be client_secret_basic or client_secret_post",
            ),
            (
                Box::new(|v| {
                    v["providers"]["corp"]["from_headers"] = json!([{"name": "bad header"}])
                }),
                "providers.corp.from_headers[0].name",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["from_headers"] = json!([])),
                "could never see a token",
            ),
            (
                Box::new(|v| {
                    v["providers"]["corp"]["claim_to_headers"] =
                        json!([{"header_name": ":path", "claim_name": "sub"}])
                }),
                "claim_to_headers[0].header_name",
            ),
            (
                Box::new(|v| {
                    v["providers"]["corp"]["claim_to_headers"] =
                        json!([{"header_name": "Authorization", "claim_name": "sub"}])
                }),
                "must not overwrite",
            ),
            (
                Box::new(|v| {
                    v["providers"]["corp"]["claim_to_headers"] = json!([{"header_name": "x-a"}])
                }),
                "claim_to_headers[0].claim_name: is required",
            ),
            (
                Box::new(|v| v["providers"] = json!({})),
                "providers: must name at least one",
            ),
            (
                Box::new(|v| v["providers"] = json!([])),
                "providers: must be a JSON object",
            ),
            (
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("rules");
                }),
                "rules: is required",
            ),
            (
                Box::new(|v| v["rules"][1]["requires"]["provider_name"] = json!("other")),
                "rules[1].requires.provider_name: names no provider",
            ),
            (
                Box::new(|v| v["rules"][1]["requires"]["scopes"] = json!(["a b"])),
                "rules[1].requires.scopes[0]",
            ),
            (
                Box::new(|v| v["rules"][1]["requires"]["scopes"] = json!(["a\"b"])),
                "rules[1].requires.scopes[0]",
            ),
            (
                Box::new(|v| v["rules"][0]["match"] = json!({"prefix": "/a", "path": "/b"})),
                "rules[0].match: needs exactly one",
            ),
            (
                Box::new(|v| v["rules"][0]["match"] = json!({"prefix": "a"})),
                "rules[0].match: must start with '/'",
            ),
            (
                Box::new(|v| v["rules"][0]["match"] = json!({"safe_regex": ".*"})),
                "rules[0].match.safe_regex: unknown field",
            ),
            (
                Box::new(|v| v["realm"] = json!("a\"b")),
                "realm: must be printable",
            ),
            (Box::new(|v| v["bogus"] = json!(1)), "bogus: unknown field"),
        ];
        for (edit, expected) in cases {
            let message = refuse(edit);
            assert!(
                message.contains(expected),
                "{message:?} should contain {expected:?}"
            );
        }
        assert!(Config::from_json(b"not json")
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
        assert!(Config::from_json(b"").is_err());
        assert!(Config::from_json(b"[]")
            .unwrap_err()
            .to_string()
            .contains("must be a JSON object"));
    }

    #[test]
    fn remote_key_sources() {
        let remote = json!({"providers": {"a": {"remote_jwks": {
                "http_uri": {"uri": "http://idp:8080/keys?v=1", "cluster": "idp", "timeout": "1.5s"},
                "cache_duration": "60s"}}},
            "rules": []});
        let c = Config::from_json(remote.to_string().as_bytes()).unwrap();
        let KeySource::Remote(r) = &c.providers[0].keys else {
            panic!()
        };
        assert_eq!(r.cache_duration_ms, 60_000);
        let jwks = r.jwks.as_ref().unwrap();
        assert_eq!((jwks.cluster.as_str(), jwks.timeout_ms), ("idp", 1500));
        let disco = json!({"providers": {"a": {"issuer": "https://idp.test/realms/x/",
                "discovery": {"http_uri": {"cluster": "idp"}}}}, "rules": []});
        let c = Config::from_json(disco.to_string().as_bytes()).unwrap();
        let KeySource::Remote(r) = &c.providers[0].keys else {
            panic!()
        };
        let d = r.discovery.as_ref().unwrap();
        assert_eq!(
            d.uri,
            "https://idp.test/realms/x/.well-known/openid-configuration"
        );
        assert_eq!(
            (d.timeout_ms, r.cache_duration_ms),
            (DEFAULT_TIMEOUT_MS, DEFAULT_CACHE_DURATION_MS)
        );
    }

    #[test]
    fn urls_and_durations() {
        let u = split_url("https://Idp.test:8443/a/b?c=d").unwrap();
        assert_eq!(
            (u.scheme.as_str(), u.authority.as_str(), u.path.as_str()),
            ("https", "Idp.test:8443", "/a/b?c=d")
        );
        assert_eq!(split_url("http://idp").unwrap().path, "/");
        assert_eq!(split_url("http://idp?x").unwrap().path, "/?x");
        for bad in [
            "idp/jwks",
            "ftp://idp/x",
            "http:///x",
            "http://u@idp/x",
            "http://idp/x#f",
            "http://idp/a b",
        ] {
            assert_eq!(split_url(bad), None, "{bad}");
        }
        assert_eq!(parse_duration("2s"), Some(2000));
        assert_eq!(parse_duration("0.5s"), Some(500));
        assert_eq!(parse_duration("1.000000001s"), Some(1000));
        assert_eq!(parse_duration("300s"), Some(300_000));
        for bad in ["2", "s", ".5s", "-1s", "1.s5", "1e3s", "99999999999s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn secrets_never_appear_in_errors() {
        let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0";
        let msg = refuse(|v| {
            v["providers"]["corp"]["local_jwks"]["inline_string"] = json!(format!(
                "{{\"keys\":[{{\"kty\":\"oct\",\"k\":\"{secret}\",\"use\":7}}]}}"
            ))
        });
        assert!(!msg.contains(secret), "{msg}");
    }

    #[test]
    fn upstream_clients() {
        let with_client = |edit: &dyn Fn(&mut Value)| {
            let mut v = base();
            v["upstream_credentials"] = json!({"orders": {
                "token_endpoint": {"http_uri": {"uri": "https://idp/token", "cluster": "idp"}},
                "client_id": "gw", "client_secret": "top-secret-value",
                "scopes": ["orders:read"], "resource": "https://orders.example"
            }});
            v["rules"][2]["inject"] = json!("orders");
            edit(&mut v);
            Config::from_json(v.to_string().as_bytes())
        };
        let c = with_client(&|_| {}).unwrap();
        let client = &c.clients[0];
        assert_eq!(client.name, "orders");
        assert_eq!(client.auth, ClientAuth::Basic);
        assert_eq!(client.refresh_margin_ms, DEFAULT_REFRESH_MARGIN_MS);
        assert_eq!(client.endpoint.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(c.rules[2].inject, Some(0));
        assert_eq!(c.rules[1].inject, None);
        assert!(!format!("{c:?}").contains("top-secret-value"));

        type Edit = Box<dyn Fn(&mut Value)>;
        let refused: Vec<(Edit, &str)> = vec![
            (
                Box::new(|v| v["upstream_credentials"]["bad.name"] = v["upstream_credentials"]["orders"].clone()),
                "upstream_credentials.bad.name: the client name must be letters, digits, '-' and '_'",
            ),
            (
                Box::new(|v| v["upstream_credentials"]["orders"]["audience"] = json!("api")),
                "upstream_credentials.orders: give audience or resource, not both",
            ),
            (
                Box::new(|v| v["upstream_credentials"]["orders"]["resource"] = json!("https://o.example/#x")),
                "upstream_credentials.orders.resource: must be an absolute URI",
            ),
            (
                Box::new(|v| v["upstream_credentials"]["orders"]["resource"] = json!("orders")),
                "upstream_credentials.orders.resource: must be an absolute URI",
            ),
            (
                Box::new(|v| v["upstream_credentials"]["orders"]["client_secret"] = json!("")),
                "upstream_credentials.orders.client_secret: must be a non-empty string",
            ),
            (
                Box::new(|v| {
                    v["upstream_credentials"]["orders"]
                        .as_object_mut()
                        .unwrap()
                        .remove("token_endpoint");
                }),
                "upstream_credentials.orders.token_endpoint: is required",
            ),
            (
                Box::new(|v| v["upstream_credentials"]["orders"]["refresh_margin"] = json!("0s")),
                "upstream_credentials.orders.refresh_margin: must be from 1000ms",
            ),
            (
                Box::new(|v| v["upstream_credentials"]["orders"]["scopes"] = json!(["a b"])),
                "upstream_credentials.orders.scopes[0]",
            ),
            (
                Box::new(|v| v["upstream_credentials"]["orders"]["auth_method"] = json!("private_key_jwt")),
                "upstream_credentials.orders.auth_method: must be client_secret_basic or client_secret_post",
            ),
            (
                Box::new(|v| v["upstream_credentials"]["orders"]["client_secert"] = json!("x")),
                "upstream_credentials.orders.client_secert: unknown field",
            ),
            (
                Box::new(|v| v["rules"][0]["inject"] = json!("billing")),
                "rules[0].inject: names no client in upstream_credentials",
            ),
        ];
        for (edit, expected) in refused {
            let e = with_client(&*edit).unwrap_err().to_string();
            assert!(
                e.starts_with(expected),
                "{e} does not start with {expected}"
            );
            assert!(!e.contains("top-secret-value"), "{e}");
        }
        // Neither providers nor clients: refused, naming both.
        let e = Config::from_json(br#"{"rules": []}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "providers: is required");
        let e = Config::from_json(br#"{"providers": {}, "rules": []}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("or give upstream_credentials"), "{e}");
    }
}
