//! The plugin configuration: JSON in, a validated and compiled [`Config`] out.
//!
//! Every error names the field it is about (`providers.corp.audiences[1]: ...`), so the one log
//! line Envoy shows when it refuses a configuration tells the operator what to fix. Unknown
//! fields are refused too: a misspelt `audience` must not silently switch a check off.
//!
//! `provider` reads a provider, `client` an upstream client; rules are read here, their `match`
//! by [`crate::route`] and their `requires` by [`crate::requirement`]; protected resources by
//! [`crate::resource`].

mod client;
mod provider;

pub use client::{ClientAuth, UpstreamClient, DEFAULT_REFRESH_MARGIN_MS};
pub use provider::{
    ClaimHeader, ClaimState, Dpop, Introspection, JwtProfile, KeySource, Provider, RemoteJwks,
    Source, DEFAULT_CACHE_DURATION_MS, DEFAULT_CACHE_ENTRIES, DEFAULT_CLOCK_SKEW,
    DEFAULT_DPOP_MAX_AGE, DEFAULT_NEGATIVE_CACHE_MS, DPOP_PREFIX, MAX_CLOCK_SKEW,
};

use crate::requirement::{self, ProviderSet, Requirement};
use crate::resource::{self, ProtectedResource};
use crate::route::{self, RouteMatch};
use serde_json::{Map, Value};
use std::fmt;

/// The realm sent in challenges when the configuration names none.
pub const DEFAULT_REALM: &str = "api";
/// The default timeout of calls to the identity provider.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;

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

#[inline(never)]
pub(crate) fn err<T>(
    field: impl Into<String>,
    reason: impl Into<String>,
) -> Result<T, ConfigError> {
    Err(ConfigError {
        field: field.into(),
        reason: reason.into(),
    })
}

/// The whole, validated configuration.
#[derive(Debug)]
pub struct Config {
    pub realm: String,
    /// `bypass_cors_preflight`: CORS preflights pass without a token.
    pub bypass_cors_preflight: bool,
    pub providers: Vec<Provider>,
    pub rules: Vec<Rule>,
    /// Every header name the filter writes (`claim_to_headers`, `forward_payload_header`):
    /// removed from every request before anything else, so a client can never supply them.
    pub owned_headers: Vec<String>,
    /// `upstream_credentials`: the OAuth clients whose tokens the filter injects upstream.
    pub clients: Vec<UpstreamClient>,
    /// `protected_resources`: the RFC 9728 documents the filter serves.
    pub resources: Vec<ProtectedResource>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matcher: RouteMatch,
    /// `None`: the request passes without a token.
    pub requires: Option<Requirement>,
    /// `inject`: index into [`Config::clients`]; the request goes upstream with that client's
    /// token in `Authorization` (replacing the caller's).
    pub inject: Option<usize>,
    /// The providers `requires` may consult (all of them under `allow_missing`).
    pub providers: ProviderSet,
    /// Whether those providers read tokens from more than one place (header, parameter or
    /// cookie name): only then can a request carry credentials a pass did not check.
    pub several_places: bool,
    /// `protected_resource`: index into [`Config::resources`]; its audiences replace the
    /// providers', and its document's URL is on every challenge of the rule.
    pub resource: Option<usize>,
    /// Every scope the requirement's leaves ask for, space-separated: the `scope` of the rule's
    /// 401 challenges.
    pub scope: String,
    /// How the rule's providers take DPoP tokens, when one does: its challenges then carry a
    /// `DPoP` challenge.
    pub dpop: Option<RuleDpop>,
}

/// The DPoP side of a rule's providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleDpop {
    /// Some provider of the rule still takes unbound tokens with the `Bearer` scheme.
    pub bearer: bool,
    /// Some provider of the rule wants DPoP nonces.
    pub nonce: bool,
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

/// A view of one JSON object that knows its own path, for error messages.
pub(crate) struct Obj<'a> {
    pub map: &'a Map<String, Value>,
    pub path: String,
}

impl<'a> Obj<'a> {
    #[inline(never)]
    pub fn new(value: &'a Value, path: String) -> Result<Self, ConfigError> {
        match value {
            Value::Object(map) => Ok(Obj { map, path }),
            _ => err(path, "must be a JSON object"),
        }
    }

    #[inline(never)]
    pub fn field(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    #[inline(never)]
    pub fn only(&self, known: &[&str]) -> Result<(), ConfigError> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => err(
                self.field(unknown),
                format!("unknown field (known here: {})", known.join(", ")),
            ),
            None => Ok(()),
        }
    }

    #[inline(never)]
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name)
    }

    #[inline(never)]
    pub fn string(&self, name: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            Some(_) => err(self.field(name), "must be a non-empty string"),
        }
    }

    #[inline(never)]
    pub fn required_string(&self, name: &str) -> Result<&'a str, ConfigError> {
        self.string(name)?
            .map_or_else(|| err(self.field(name), "is required"), Ok)
    }

    #[inline(never)]
    pub fn boolean(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => err(self.field(name), "must be true or false"),
        }
    }

    #[inline(never)]
    pub fn object(&self, name: &str) -> Result<Option<Obj<'a>>, ConfigError> {
        self.get(name)
            .map(|v| Obj::new(v, self.field(name)))
            .transpose()
    }

    #[inline(never)]
    pub fn array(&self, name: &str) -> Result<Option<&'a Vec<Value>>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(_) => err(self.field(name), "must be an array"),
        }
    }

    /// The objects of array `name`, each with its path (`name[i]`).
    #[inline(never)]
    pub fn objects(&self, name: &str) -> Result<Vec<Obj<'a>>, ConfigError> {
        let items = self.array(name)?.map_or(&[][..], Vec::as_slice);
        items
            .iter()
            .enumerate()
            .map(|(i, item)| Obj::new(item, format!("{}[{i}]", self.field(name))))
            .collect()
    }

    /// A duration field in milliseconds, within `min..=max`.
    #[inline(never)]
    pub fn duration(
        &self,
        name: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
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
    #[inline(never)]
    pub fn http_uri(&self, name: &str, uri_optional: bool) -> Result<Option<HttpUri>, ConfigError> {
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
    #[inline(never)]
    pub fn strings(
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

pub(crate) fn any_string(_: &str) -> Result<(), &'static str> {
    Ok(())
}

/// An HTTP header name (RFC 9110 token) that the filter may read or write.
pub(crate) fn header_name(name: &str) -> Result<(), &'static str> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !name.chars().all(tchar) {
        return Err("is not a valid HTTP header name");
    }
    Ok(())
}

/// A scope token (RFC 6749 §3.3): printable ASCII except space, `"` and `\`.
pub(crate) fn scope_token(scope: &str) -> Result<(), &'static str> {
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
pub(crate) fn quotable(text: &str) -> Result<(), &'static str> {
    if text
        .bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
    {
        Ok(())
    } else {
        Err("must be printable ASCII without quotes or backslashes")
    }
}

const TOP_LEVEL: [&str; 6] = [
    "providers",
    "rules",
    "realm",
    "upstream_credentials",
    "protected_resources",
    "bypass_cors_preflight",
];

impl Config {
    /// Parses and validates the plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let root = match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => v,
            Err(e) => return Err(not_json(bytes, &e)),
        };
        let top = Obj::new(&root, String::new())?;
        top.only(&TOP_LEVEL)?;

        let realm = top.string("realm")?.unwrap_or(DEFAULT_REALM);
        if let Err(why) = quotable(realm) {
            return err("realm", why);
        }
        let clients = match top.object("upstream_credentials")? {
            Some(c) => c
                .map
                .iter()
                .map(|(name, value)| client::upstream_client(name, value))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let mut providers = providers(&top, !clients.is_empty())?;
        let resources = match top.object("protected_resources")? {
            Some(r) => r
                .map
                .iter()
                .map(|(name, value)| resource::parse(name, value))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        resource::distinct_paths(&resources)?;
        let Some(rule_values) = top.array("rules")? else {
            return err("rules", "is required (an empty array protects nothing)");
        };
        let mut rules = Vec::with_capacity(rule_values.len());
        let named = Named {
            providers: &providers,
            clients: &clients,
            resources: &resources,
        };
        for (i, value) in rule_values.iter().enumerate() {
            rules.push(rule(i, value, &named)?);
        }
        provider::keep_claims(&mut providers, &rules);
        Ok(Config {
            realm: realm.to_string(),
            bypass_cors_preflight: top.boolean("bypass_cors_preflight", false)?,
            owned_headers: provider::owned_headers(&providers),
            providers,
            rules,
            clients,
            resources,
        })
    }

    /// The first rule whose match fits a request with this path (query excluded) and headers.
    pub fn rule_for(&self, path: &str, headers: &[(&str, &[u8])]) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matcher.matches(path, headers))
    }
}

/// Why a configuration is not JSON. A document nested deeper than the parser goes (a
/// requirement tree thousands of levels deep) is named by the field where it gets too deep.
fn not_json(bytes: &[u8], e: &serde_json::Error) -> ConfigError {
    let deep = e.to_string().contains("recursion limit");
    match crate::json::path_at_depth(bytes, 100).filter(|_| deep) {
        Some(path) => ConfigError {
            field: requirement::deep_field(&path),
            reason: format!(
                "is nested too deeply (requirements nest at most {} levels)",
                requirement::MAX_DEPTH
            ),
        },
        None => ConfigError {
            field: String::new(),
            reason: format!("configuration is not valid JSON ({e})"),
        },
    }
}

/// `providers`: required unless the filter only injects upstream credentials.
fn providers(top: &Obj<'_>, has_clients: bool) -> Result<Vec<Provider>, ConfigError> {
    let providers = match top.object("providers")? {
        Some(p) => p
            .map
            .iter()
            .map(|(name, value)| provider::provider(name, value))
            .collect::<Result<Vec<_>, _>>()?,
        None if has_clients => Vec::new(),
        None => return err("providers", "is required"),
    };
    if providers.is_empty() && !has_clients {
        return err(
            "providers",
            "must name at least one provider (or give upstream_credentials)",
        );
    }
    if providers.len() > requirement::MAX_PROVIDERS {
        return err(
            "providers",
            format!("has more than {} providers", requirement::MAX_PROVIDERS),
        );
    }
    Ok(providers)
}

/// What rules may name.
struct Named<'a> {
    providers: &'a [Provider],
    clients: &'a [UpstreamClient],
    resources: &'a [ProtectedResource],
}

fn rule(i: usize, value: &Value, named: &Named<'_>) -> Result<Rule, ConfigError> {
    let (providers, clients) = (named.providers, named.clients);
    let r = Obj::new(value, format!("rules[{i}]"))?;
    r.only(&["match", "requires", "inject", "protected_resource"])?;
    let matcher = match r.object("match")? {
        Some(m) => route::parse(&m)?,
        None => return err(r.field("match"), "is required"),
    };
    let requires = match r.get("requires") {
        None => None,
        Some(q) => Some(requirement::parse(q, r.field("requires"), providers, 1)?),
    };
    let inject = match r.string("inject")? {
        None => None,
        Some(name) => match clients.iter().position(|c| c.name == name) {
            Some(c) => Some(c),
            None => return err(r.field("inject"), "names no client in upstream_credentials"),
        },
    };
    let resource = match r.string("protected_resource")? {
        None => None,
        Some(_) if requires.is_none() => {
            return err(
                r.field("protected_resource"),
                "applies to a rule with requires (a public rule answers no challenge)",
            )
        }
        Some(name) => match named.resources.iter().position(|p| p.name == name) {
            Some(p) => Some(p),
            None => {
                return err(
                    r.field("protected_resource"),
                    "names no resource in protected_resources",
                )
            }
        },
    };
    let consulted = requires
        .as_ref()
        .map_or_else(ProviderSet::default, |q| q.providers(providers.len()));
    let mut scopes = Vec::new();
    if let Some(q) = &requires {
        q.scopes(&mut scopes);
    }
    Ok(Rule {
        scope: scopes.join(" "),
        matcher,
        requires,
        inject,
        several_places: provider::several_places(providers, consulted),
        dpop: provider::rule_dpop(providers, consulted),
        providers: consulted,
        resource,
    })
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
        let scopes = |path: &str| match c.rule_for(path, &[]).and_then(|r| r.requires.as_ref()) {
            Some(Requirement::Provider(leaf)) => Some(leaf.scopes.clone()),
            _ => None,
        };
        assert_eq!(c.rule_for("/public/x", &[]).unwrap().requires, None);
        assert_eq!(scopes("/admin"), Some(vec!["admin".to_string()]));
        assert_eq!(scopes("/admin/x"), Some(vec![]));
    }

    #[test]
    fn errors_name_the_field() {
        type Edit = Box<dyn FnOnce(&mut Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|v| v["rules"][1]["protected_resource"] = json!("mcp")),
                "rules[1].protected_resource: names no resource in protected_resources",
            ),
            (
                Box::new(|v| {
                    v["protected_resources"] = json!({"mcp": {"resource": "https://a/mcp"}});
                    v["rules"][0]["protected_resource"] = json!("mcp");
                }),
                "rules[0].protected_resource: applies to a rule with requires",
            ),
            (
                Box::new(|v| v["protected_resources"] = json!({"mcp": {"resource": "/mcp"}})),
                "protected_resources.mcp.resource: must be an absolute https:// URL",
            ),
            (
                Box::new(|v| v["protected_resources"] = json!(["https://a/mcp"])),
                "protected_resources: must be a JSON object",
            ),
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
                Box::new(|v| v["providers"]["corp"]["jwt_profile"] = json!("rfc7519")),
                "providers.corp.jwt_profile: must be \"rfc9068\"",
            ),
            (
                Box::new(|v| {
                    v["providers"]["only"] = json!({"jwt_profile": "rfc9068", "introspection": {
                        "http_uri": {"uri": "https://idp/i", "cluster": "idp"},
                        "client_id": "g", "client_secret": "s"}});
                }),
                "providers.only.jwt_profile: needs local_jwks, remote_jwks or discovery",
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
                Box::new(|v| v["providers"]["corp"]["dpop"] = json!({"max_age": "0.5s"})),
                "providers.corp.dpop.max_age: must be from 1000ms to 3600s",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["dpop"] = json!({"max_age": "1.5s"})),
                "providers.corp.dpop.max_age: must be whole seconds",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["dpop"] = json!({"nonces": true})),
                "providers.corp.dpop.nonces: unknown field (known here: required, max_age, nonce)",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["dpop"] = json!(true)),
                "providers.corp.dpop",
            ),
            (
                Box::new(|v| v["providers"]["corp"]["require_certificate_bound"] = json!("yes")),
                "providers.corp.require_certificate_bound: must be true or false",
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
                "rules[0].match.prefix: must start with '/'",
            ),
            (
                Box::new(|v| v["rules"][0]["match"] = json!({"safe_regex": ".*"})),
                "rules[0].match.safe_regex: must be a JSON object",
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
