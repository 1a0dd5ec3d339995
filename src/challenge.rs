//! The RFC 6750 answers: status, `WWW-Authenticate` challenge and a small JSON body.

use serde_json::json;

/// Why a request was refused; each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    MissingToken,
    InvalidRequest,
    InvalidToken,
    InsufficientScope,
    Unavailable,
}

impl DenyReason {
    pub const ALL: [DenyReason; 5] = [
        DenyReason::MissingToken,
        DenyReason::InvalidRequest,
        DenyReason::InvalidToken,
        DenyReason::InsufficientScope,
        DenyReason::Unavailable,
    ];

    /// The name used in metrics and in the body's `error` member.
    pub fn name(self) -> &'static str {
        match self {
            DenyReason::MissingToken => "missing_token",
            DenyReason::InvalidRequest => "invalid_request",
            DenyReason::InvalidToken => "invalid_token",
            DenyReason::InsufficientScope => "insufficient_scope",
            DenyReason::Unavailable => "temporarily_unavailable",
        }
    }
}

/// A complete local reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub reason: DenyReason,
    pub status: u32,
    pub www_authenticate: Option<String>,
    pub body: String,
}

impl Challenge {
    /// The headers of the reply, `WWW-Authenticate` first when there is one.
    pub fn headers(&self) -> Vec<(&str, &str)> {
        let mut headers = Vec::with_capacity(3);
        if let Some(value) = &self.www_authenticate {
            headers.push(("www-authenticate", value.as_str()));
        }
        headers.push(("content-type", "application/json"));
        headers.push(("cache-control", "no-store"));
        headers
    }
}

fn body(error: &str, description: &str) -> String {
    json!({ "error": error, "error_description": description }).to_string()
}

/// `realm`, `scope` and descriptions are checked or fixed text: none needs escaping inside a
/// quoted string (configuration refuses quotes and backslashes).
fn with_error(realm: &str, code: &str, description: &str) -> String {
    format!("Bearer realm=\"{realm}\", error=\"{code}\", error_description=\"{description}\"")
}

/// 401 for a request with no credential at all: no error code (RFC 6750 §3.1).
pub fn missing_token(realm: &str) -> Challenge {
    Challenge {
        reason: DenyReason::MissingToken,
        status: 401,
        www_authenticate: Some(format!("Bearer realm=\"{realm}\"")),
        body: body("missing_token", "A bearer token is required"),
    }
}

/// 400 for a malformed or ambiguous credential.
pub fn invalid_request(realm: &str, description: &str) -> Challenge {
    Challenge {
        reason: DenyReason::InvalidRequest,
        status: 400,
        www_authenticate: Some(with_error(realm, "invalid_request", description)),
        body: body("invalid_request", description),
    }
}

/// 401 for a token that is malformed, forged, expired or not for this API.
pub fn invalid_token(realm: &str, description: &str) -> Challenge {
    Challenge {
        reason: DenyReason::InvalidToken,
        status: 401,
        www_authenticate: Some(with_error(realm, "invalid_token", description)),
        body: body("invalid_token", description),
    }
}

/// 403 for a valid token without a scope or claim the route requires. `scope` lists every
/// scope the requirement needs (left out when it needs none: a claim was missing).
pub fn insufficient_scope(realm: &str, scopes: &[&str], scope_missing: bool) -> Challenge {
    let description = if scope_missing {
        "The access token lacks a scope this resource requires"
    } else {
        "The access token lacks a claim this resource requires"
    };
    let mut header = with_error(realm, "insufficient_scope", description);
    if !scopes.is_empty() {
        header.push_str(&format!(", scope=\"{}\"", scopes.join(" ")));
    }
    Challenge {
        reason: DenyReason::InsufficientScope,
        status: 403,
        www_authenticate: Some(header),
        body: body("insufficient_scope", description),
    }
}

/// 503 when the filter cannot decide (no configuration, keys or introspection unreachable).
pub fn unavailable(description: &str) -> Challenge {
    Challenge {
        reason: DenyReason::Unavailable,
        status: 503,
        www_authenticate: None,
        body: body("temporarily_unavailable", description),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let c = missing_token("api");
        assert_eq!(c.status, 401);
        assert_eq!(c.www_authenticate.as_deref(), Some("Bearer realm=\"api\""));
        let c = insufficient_scope("api", &["a", "b"], true);
        assert_eq!(c.status, 403);
        let w = c.www_authenticate.unwrap();
        assert!(w.starts_with("Bearer realm=\"api\", error=\"insufficient_scope\""));
        assert!(w.ends_with(", scope=\"a b\""));
        let c = insufficient_scope("api", &[], false);
        let w = c.www_authenticate.unwrap();
        assert!(!w.contains("scope=") && w.contains("lacks a claim"), "{w}");
        let c = invalid_request("r", "bad");
        assert_eq!(c.status, 400);
        let body: serde_json::Value = serde_json::from_str(&c.body).unwrap();
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(body["error_description"], "bad");
        let c = unavailable("down");
        assert_eq!((c.status, c.www_authenticate), (503, None));
    }
}
