//! Protected resources (RFC 9728, the MCP authorization spec): each resource's metadata document,
//! built once when the configuration loads, the path it is served at, and the filter's own
//! answers to requests under `/.well-known/oauth-protected-resource`.
//!
//! The document's `resource` is the configured one, never derived from the request's `Host`: a
//! client that chooses `Host` must not choose the resource its token is checked for. The filter
//! owns every path that starts with the well-known prefix once a resource is configured, so a
//! request for an odd form of a document's path (a trailing slash, percent-encoding, `..`) gets
//! the filter's 404 and never reaches the upstream unauthenticated. Paths compare byte for byte;
//! a query is ignored, as in every rule.

use crate::config::{err, quotable, scope_token, split_url, ConfigError, Obj};
use serde_json::Value;

/// The well-known path of RFC 9728 §3.
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";
/// How long clients and caches may keep a document, in seconds.
pub const MAX_AGE_SECONDS: u32 = 3600;

/// One `protected_resources` entry, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedResource {
    pub name: String,
    /// `resource`, as configured.
    pub resource: String,
    /// Where the document is served (RFC 9728 §3.1: the well-known prefix, then the resource's
    /// path; a bare `/` is dropped).
    pub metadata_path: String,
    /// The document's absolute URL, for `resource_metadata` in challenges.
    pub metadata_url: String,
    /// `aud` must contain one of these on rules that name the resource.
    pub audiences: Vec<String>,
    /// The JSON document.
    pub document: String,
}

/// The filter's own answer to a request under [`WELL_KNOWN`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(&'static str, &'static str)>,
    pub body: String,
    /// A document was served (else a 404 or 405, or a preflight answered).
    pub served: bool,
}

const FIELDS: [&str; 7] = [
    "resource",
    "authorization_servers",
    "scopes_supported",
    "bearer_methods_supported",
    "resource_name",
    "resource_documentation",
    "audiences",
];

/// Reads `protected_resources.NAME`.
pub fn parse(name: &str, value: &Value) -> Result<ProtectedResource, ConfigError> {
    let r = Obj::new(value, format!("protected_resources.{name}"))?;
    r.only(&FIELDS)?;
    let resource = r.required_string("resource")?;
    let (origin, path) = match identifier(resource) {
        Ok(parts) => parts,
        Err(why) => return err(r.field("resource"), why),
    };
    let metadata_path = if path == "/" {
        WELL_KNOWN.to_string()
    } else {
        format!("{WELL_KNOWN}{path}")
    };
    let urls = |field| {
        r.strings(field, |url| identifier(url).map(|_| ()))
            .map(Option::unwrap_or_default)
    };
    let authorization_servers = urls("authorization_servers")?;
    let scopes = r.strings("scopes_supported", scope_token)?;
    let methods = r.strings("bearer_methods_supported", bearer_method)?;
    let documentation = r.string("resource_documentation")?;
    if documentation.is_some_and(|url| split_url(url).is_none()) {
        return err(
            r.field("resource_documentation"),
            "must be an absolute http:// or https:// URL",
        );
    }
    let audiences = r
        .strings("audiences", |_| Ok(()))?
        .unwrap_or_else(|| vec![resource.to_string()]);
    if audiences.is_empty() {
        return err(r.field("audiences"), "must list at least one audience");
    }
    let mut fields = vec![("resource", Value::from(resource))];
    if !authorization_servers.is_empty() {
        fields.push(("authorization_servers", Value::from(authorization_servers)));
    }
    fields.extend(scopes.map(|s| ("scopes_supported", Value::from(s))));
    fields.extend(methods.map(|m| ("bearer_methods_supported", Value::from(m))));
    fields.extend(
        r.string("resource_name")?
            .map(|n| ("resource_name", n.into())),
    );
    fields.extend(documentation.map(|d| ("resource_documentation", d.into())));
    Ok(ProtectedResource {
        name: name.to_string(),
        resource: resource.to_string(),
        metadata_url: format!("{origin}{metadata_path}"),
        metadata_path,
        audiences,
        document: document(&fields),
    })
}

/// The document's JSON, its members in the order given (`resource` first).
fn document(fields: &[(&str, Value)]) -> String {
    let members: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("{}:{value}", Value::from(*name)))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// A resource or issuer identifier: an absolute `https` URL (`http` only on a loopback host,
/// for development) without query, fragment, user info or dot segments, that can stand in a
/// quoted challenge attribute. Its origin (`scheme://authority`) and path.
fn identifier(url: &str) -> Result<(String, String), &'static str> {
    if url.contains(['?', '#']) {
        return Err("must not have a query or fragment (RFC 9728 §2)");
    }
    quotable(url)?;
    let Some(parts) = split_url(url) else {
        return Err("must be an absolute https:// URL");
    };
    if parts.scheme == "http" && !loopback(&parts.authority) {
        return Err("must be an https:// URL (http:// only on a loopback host)");
    }
    if parts.path.split('/').any(|s| s == "." || s == "..") {
        return Err("must not have . or .. path segments");
    }
    Ok((
        format!("{}://{}", parts.scheme, parts.authority),
        parts.path,
    ))
}

/// Whether an authority names this machine: `localhost`, `127.x.y.z` or `[::1]`, any port.
fn loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(v6) => return v6.split(']').next() == Some("::1"),
        None => authority.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .strip_prefix("127.")
            .is_some_and(|rest| rest.split('.').all(|o| o.parse::<u8>().is_ok()))
}

/// A bearer method the filter reads tokens with (RFC 9728 §2): `header` or `query`; it reads no
/// form bodies.
fn bearer_method(method: &str) -> Result<(), &'static str> {
    match method {
        "header" | "query" => Ok(()),
        "body" => Err("is not supported: the filter reads no tokens from a form body"),
        _ => Err("must be \"header\" or \"query\""),
    }
}

/// Refuses two resources served at the same path (they would be one document).
pub fn distinct_paths(resources: &[ProtectedResource]) -> Result<(), ConfigError> {
    for (i, r) in resources.iter().enumerate() {
        if let Some(first) = resources[..i]
            .iter()
            .find(|o| o.metadata_path == r.metadata_path)
        {
            return err(
                format!("protected_resources.{}.resource", r.name),
                format!(
                    "has the same metadata path as protected_resources.{} ({})",
                    first.name, r.metadata_path
                ),
            );
        }
    }
    Ok(())
}

/// The filter's answer to a request for `path` (query removed) with these headers, when the
/// path is under [`WELL_KNOWN`] and resources are configured: `GET` and `HEAD` of a document's
/// path get the document (Envoy leaves out the body of a `HEAD` answer), `OPTIONS` a CORS
/// preflight answer, other methods 405, any other path under the prefix 404.
pub fn serve(
    resources: &[ProtectedResource],
    path: &str,
    headers: &[(&str, &[u8])],
) -> Option<Reply> {
    if resources.is_empty() || !path.starts_with(WELL_KNOWN) {
        return None;
    }
    let method = headers
        .iter()
        .find(|(name, _)| *name == ":method")
        .map_or(&b""[..], |(_, value)| value);
    let Some(r) = resources.iter().find(|r| r.metadata_path == path) else {
        return Some(refusal(404, "not_found", "No metadata document is here"));
    };
    Some(match method {
        b"GET" | b"HEAD" => Reply {
            status: 200,
            headers: vec![
                ("content-type", "application/json"),
                ("cache-control", CACHE_CONTROL),
                ("access-control-allow-origin", "*"),
            ],
            body: r.document.clone(),
            served: true,
        },
        b"OPTIONS" => Reply {
            status: 204,
            headers: vec![
                ("allow", ALLOW),
                ("access-control-allow-origin", "*"),
                ("access-control-allow-methods", ALLOW),
                ("access-control-allow-headers", "*"),
                ("access-control-max-age", "86400"),
            ],
            body: String::new(),
            served: false,
        },
        _ => {
            let mut reply = refusal(405, "method_not_allowed", "Only GET and HEAD are served");
            reply.headers.push(("allow", ALLOW));
            reply
        }
    })
}

const CACHE_CONTROL: &str = "public, max-age=3600";
const ALLOW: &str = "GET, HEAD, OPTIONS";

fn refusal(status: u32, error: &str, description: &str) -> Reply {
    Reply {
        status,
        headers: vec![
            ("content-type", "application/json"),
            ("cache-control", "no-store"),
        ],
        body: serde_json::json!({ "error": error, "error_description": description }).to_string(),
        served: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resource(value: Value) -> Result<ProtectedResource, String> {
        parse("mcp", &value).map_err(|e| e.to_string())
    }

    #[test]
    fn documents_paths_and_urls() {
        let r = resource(json!({
            "resource": "https://api.example/mcp",
            "authorization_servers": ["https://idp.example"],
            "scopes_supported": ["tools:read"],
            "bearer_methods_supported": ["header"],
            "resource_name": "Tools \"é\"",
            "resource_documentation": "https://docs.example/mcp"
        }))
        .unwrap();
        assert_eq!(r.metadata_path, "/.well-known/oauth-protected-resource/mcp");
        assert_eq!(
            r.metadata_url,
            "https://api.example/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(r.audiences, ["https://api.example/mcp"]);
        assert!(r
            .document
            .starts_with("{\"resource\":\"https://api.example/mcp\","));
        let doc: Value = serde_json::from_str(&r.document).unwrap();
        assert_eq!(
            doc,
            json!({
                "resource": "https://api.example/mcp",
                "authorization_servers": ["https://idp.example"],
                "scopes_supported": ["tools:read"],
                "bearer_methods_supported": ["header"],
                "resource_name": "Tools \"é\"",
                "resource_documentation": "https://docs.example/mcp"
            })
        );
        // A bare `/` is dropped; a trailing slash of a longer path is kept.
        for (url, path) in [
            ("https://api.example", WELL_KNOWN),
            ("https://api.example/", WELL_KNOWN),
            (
                "https://api.example/v1/",
                "/.well-known/oauth-protected-resource/v1/",
            ),
            (
                "http://127.0.0.1:8080/mcp",
                "/.well-known/oauth-protected-resource/mcp",
            ),
            (
                "http://[::1]:80/a",
                "/.well-known/oauth-protected-resource/a",
            ),
            (
                "http://localhost/a%2Fb",
                "/.well-known/oauth-protected-resource/a%2Fb",
            ),
        ] {
            let r = resource(json!({"resource": url, "audiences": ["x"]})).unwrap();
            assert_eq!(r.metadata_path, path, "{url}");
            assert_eq!(r.document, format!("{{\"resource\":\"{url}\"}}"));
            assert_eq!(r.audiences, ["x"]);
        }
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (json!({}), "protected_resources.mcp.resource: is required"),
            (
                json!({"resource": "https://a/x?y=1"}),
                "resource: must not have a query",
            ),
            (
                json!({"resource": "https://a/x#f"}),
                "resource: must not have a query",
            ),
            (
                json!({"resource": "http://api.example/x"}),
                "resource: must be an https:// URL",
            ),
            (
                json!({"resource": "http://127.0.0.1.example/x"}),
                "must be an https:// URL",
            ),
            (
                json!({"resource": "urn:x"}),
                "resource: must be an absolute https:// URL",
            ),
            (
                json!({"resource": "https://u@a/x"}),
                "resource: must be an absolute",
            ),
            (
                json!({"resource": "https://a/x/../y"}),
                "resource: must not have . or ..",
            ),
            (
                json!({"resource": "https://a/\"x"}),
                "resource: must be printable ASCII",
            ),
            (
                json!({"resource": "https://a/x", "authorization_servers": ["http://idp"]}),
                "authorization_servers[0]: must be an https:// URL",
            ),
            (
                json!({"resource": "https://a/x", "bearer_methods_supported": ["body"]}),
                "bearer_methods_supported[0]: is not supported",
            ),
            (
                json!({"resource": "https://a/x", "scopes_supported": ["a b"]}),
                "scopes_supported[0]: is not a valid scope",
            ),
            (
                json!({"resource": "https://a/x", "audiences": []}),
                "audiences: must list at least one",
            ),
            (
                json!({"resource": "https://a/x", "resource_documentation": "docs"}),
                "resource_documentation: must be an absolute",
            ),
            (
                json!({"resource": "https://a/x", "jwks_uri": "x"}),
                "jwks_uri: unknown field",
            ),
        ];
        for (value, expected) in cases {
            let got = resource(value.clone()).unwrap_err();
            assert!(got.contains(expected), "{value}: {got}");
        }
        let twice = [
            resource(json!({"resource": "https://a.example/mcp"})).unwrap(),
            parse("other", &json!({"resource": "https://b.example/mcp"})).unwrap(),
        ];
        let e = distinct_paths(&twice).unwrap_err().to_string();
        assert!(e.starts_with("protected_resources.other.resource: has the same metadata path as protected_resources.mcp"), "{e}");
    }

    #[test]
    fn answers_under_the_well_known_prefix() {
        let r = [resource(json!({"resource": "https://api.example/mcp"})).unwrap()];
        let at = |method: &str, path: &str| serve(&r, path, &[(":method", method.as_bytes())]);
        let doc = at("GET", "/.well-known/oauth-protected-resource/mcp").unwrap();
        assert_eq!(
            (doc.status, doc.served, doc.body.as_str()),
            (200, true, r[0].document.as_str())
        );
        assert!(doc
            .headers
            .contains(&("cache-control", "public, max-age=3600")));
        assert_eq!(
            at("HEAD", "/.well-known/oauth-protected-resource/mcp")
                .unwrap()
                .status,
            200
        );
        let options = at("OPTIONS", "/.well-known/oauth-protected-resource/mcp").unwrap();
        assert_eq!((options.status, options.body.as_str()), (204, ""));
        let post = at("POST", "/.well-known/oauth-protected-resource/mcp").unwrap();
        assert_eq!(post.status, 405);
        assert!(post.headers.contains(&("allow", "GET, HEAD, OPTIONS")));
        for odd in [
            "/.well-known/oauth-protected-resource/mcp/",
            "/.well-known/oauth-protected-resource/%6Dcp",
            "/.well-known/oauth-protected-resource/../mcp",
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resourcex",
        ] {
            let reply = at("GET", odd).unwrap();
            assert_eq!((reply.status, reply.served), (404, false), "{odd}");
        }
        assert_eq!(at("GET", "/mcp"), None);
        assert_eq!(at("GET", "/.well-known/openid-configuration"), None);
        assert_eq!(
            serve(&[], "/.well-known/oauth-protected-resource", &[]),
            None
        );
    }
}
