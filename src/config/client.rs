//! `upstream_credentials.NAME`: an OAuth client the filter is, for upstreams that want the
//! gateway's own token.

use super::{err, scope_token, ConfigError, HttpUri, Obj};
use serde_json::Value;
use std::fmt;

/// The default `refresh_margin` of an upstream client.
pub const DEFAULT_REFRESH_MARGIN_MS: u64 = 60_000;

/// How the filter authenticates as an OAuth client (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic` with the form-urlencoded id and secret.
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
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

/// An `upstream_credentials` entry.
pub(super) fn upstream_client(name: &str, value: &Value) -> Result<UpstreamClient, ConfigError> {
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
        if !is_absolute_uri(resource) {
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

/// RFC 8707 §2: an absolute URI, without a fragment.
fn is_absolute_uri(uri: &str) -> bool {
    let scheme = uri.split_once(':').map_or("", |(s, _)| s);
    scheme.starts_with(|ch: char| ch.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "+-.".contains(ch))
        && !uri.contains('#')
        && !uri.chars().any(char::is_whitespace)
}

/// `auth_method`: how the filter authenticates as an OAuth client.
pub(super) fn client_auth(o: &Obj<'_>) -> Result<ClientAuth, ConfigError> {
    match o.string("auth_method")? {
        None | Some("client_secret_basic") => Ok(ClientAuth::Basic),
        Some("client_secret_post") => Ok(ClientAuth::Post),
        Some(_) => err(
            o.field("auth_method"),
            "must be client_secret_basic or client_secret_post",
        ),
    }
}
