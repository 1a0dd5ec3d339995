//! The RFC 6750 answers: status, `WWW-Authenticate` challenge and a small JSON body.

use serde_json::json;

/// Why a request was refused; each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    MissingToken,
    InvalidRequest,
    InvalidToken,
    InsufficientScope,
    InsufficientUserAuthentication,
    InvalidDpopProof,
    UseDpopNonce,
    Unavailable,
}

impl DenyReason {
    pub const ALL: [DenyReason; 8] = [
        DenyReason::MissingToken,
        DenyReason::InvalidRequest,
        DenyReason::InvalidToken,
        DenyReason::InsufficientScope,
        DenyReason::InsufficientUserAuthentication,
        DenyReason::InvalidDpopProof,
        DenyReason::UseDpopNonce,
        DenyReason::Unavailable,
    ];

    /// The name used in metrics and in the body's `error` member.
    pub fn name(self) -> &'static str {
        match self {
            DenyReason::MissingToken => "missing_token",
            DenyReason::InvalidRequest => "invalid_request",
            DenyReason::InvalidToken => "invalid_token",
            DenyReason::InsufficientScope => "insufficient_scope",
            DenyReason::InsufficientUserAuthentication => "insufficient_user_authentication",
            DenyReason::InvalidDpopProof => "invalid_dpop_proof",
            DenyReason::UseDpopNonce => "use_dpop_nonce",
            DenyReason::Unavailable => "temporarily_unavailable",
        }
    }
}

/// A complete local reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub reason: DenyReason,
    pub status: u32,
    /// The first (or only) challenge: `Bearer`, or `DPoP` where no provider takes `Bearer`.
    pub www_authenticate: Option<String>,
    /// A second `WWW-Authenticate`, the `DPoP` challenge beside the `Bearer` one (RFC 9449
    /// §7.1).
    pub dpop: Option<String>,
    /// A fresh `DPoP-Nonce` (RFC 9449 §8).
    pub dpop_nonce: Option<String>,
    pub body: String,
}

impl Challenge {
    /// The headers of the reply, `WWW-Authenticate` first when there is one.
    pub fn headers(&self) -> Vec<(&str, &str)> {
        let mut headers = Vec::with_capacity(3);
        for value in self.www_authenticate.iter().chain(&self.dpop) {
            headers.push(("www-authenticate", value.as_str()));
        }
        if let Some(nonce) = &self.dpop_nonce {
            headers.push(("dpop-nonce", nonce.as_str()));
        }
        headers.push(("content-type", "application/json"));
        headers.push(("cache-control", "no-store"));
        headers
    }
}

/// What every challenge of a rule carries besides its error: the realm, the scopes the rule's
/// requirement needs (`scope`, on 401 answers; empty for none) and the URL of its protected
/// resource's metadata document (`resource_metadata`, RFC 9728 §5.1, on every challenge).
///
/// All are checked or fixed text: none needs escaping inside a quoted string (configuration
/// refuses quotes and backslashes in them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hints<'a> {
    pub realm: &'a str,
    pub scope: &'a str,
    pub resource_metadata: Option<&'a str>,
    /// Whether the rule's providers take DPoP tokens (then every challenge has a `DPoP` one).
    pub dpop: Option<DpopHints>,
}

/// How a rule's challenges speak of DPoP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DpopHints {
    /// Some provider still takes `Bearer`: the `Bearer` challenge stays, first.
    pub bearer: bool,
    /// The request came with the DPoP scheme: the error goes on the `DPoP` challenge.
    pub presented: bool,
}

impl<'a> Hints<'a> {
    /// Only a realm: for answers no rule shapes.
    pub fn realm(realm: &'a str) -> Hints<'a> {
        Hints {
            realm,
            scope: "",
            resource_metadata: None,
            dpop: None,
        }
    }
}

/// Step-up attributes (RFC 9470 §3) of an `insufficient_user_authentication` challenge: only the
/// ones that failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepUp<'a> {
    /// The acceptable `acr` values, in order of preference.
    pub acr_values: Option<&'a [String]>,
    /// The longest time since the user authenticated, in seconds.
    pub max_age: Option<u64>,
}

fn body(error: &str, description: &str) -> String {
    json!({ "error": error, "error_description": description }).to_string()
}

/// A `Bearer` challenge: realm, the error and its description when there is one, then the
/// `extra` attributes (already formatted, each starting with `, `), then `resource_metadata`.
fn bearer(hints: &Hints<'_>, error: Option<(&str, &str)>, extra: &str) -> String {
    scheme("Bearer", "", hints, error, extra)
}

/// A challenge of `name`: realm, `algs` (already formatted), the error, `extra`,
/// `resource_metadata`.
fn scheme(
    name: &str,
    algs: &str,
    hints: &Hints<'_>,
    error: Option<(&str, &str)>,
    extra: &str,
) -> String {
    let mut header = format!("{name} realm=\"{}\"{algs}", hints.realm);
    if let Some((code, description)) = error {
        header.push_str(&format!(
            ", error=\"{code}\", error_description=\"{description}\""
        ));
    }
    header.push_str(extra);
    if let Some(url) = hints.resource_metadata {
        header.push_str(&format!(", resource_metadata=\"{url}\""));
    }
    header
}

/// A refusal with its challenges: `Bearer` alone, or with the rule's `DPoP` challenge (the
/// error on the scheme the request used, or on `DPoP` where `Bearer` is not taken).
fn refusal(
    reason: DenyReason,
    status: u32,
    hints: &Hints<'_>,
    error: Option<(&str, &str)>,
    extra: &str,
) -> Challenge {
    let code = error.map_or(reason.name(), |(code, _)| code);
    let description = error.map_or("A bearer token is required", |(_, d)| d);
    let (first, second) = match hints.dpop {
        None => (bearer(hints, error, extra), None),
        Some(d) => {
            let on_dpop = d.presented || !d.bearer;
            let algs = format!(", algs=\"{}\"", crate::dpop::ALGS);
            let dpop = scheme("DPoP", &algs, hints, error.filter(|_| on_dpop), extra);
            if d.bearer {
                let bearer = bearer(hints, error.filter(|_| !on_dpop), extra);
                (bearer, Some(dpop))
            } else {
                (dpop, None)
            }
        }
    };
    Challenge {
        reason,
        status,
        www_authenticate: Some(first),
        dpop: second,
        dpop_nonce: None,
        body: body(code, description),
    }
}

/// 401 for a DPoP proof that does not do (`invalid_dpop_proof`, or `use_dpop_nonce` with
/// `nonce`, the fresh nonce to use).
pub fn invalid_dpop_proof(
    hints: &Hints<'_>,
    error: crate::dpop::ProofError,
    nonce: Option<String>,
) -> Challenge {
    let reason = match error {
        crate::dpop::ProofError::Nonce => DenyReason::UseDpopNonce,
        _ => DenyReason::InvalidDpopProof,
    };
    // Only a request with the DPoP scheme has a proof: its hints say so (`presented`).
    let mut challenge = refusal(
        reason,
        401,
        hints,
        Some((error.code(), error.description())),
        "",
    );
    challenge.dpop_nonce = nonce;
    challenge
}

/// `, scope="…"` for a non-empty space-separated list.
fn scope_attribute(scope: &str) -> String {
    if scope.is_empty() {
        String::new()
    } else {
        format!(", scope=\"{scope}\"")
    }
}

/// 401 for a request with no credential at all: no error code (RFC 6750 §3.1).
pub fn missing_token(hints: &Hints<'_>) -> Challenge {
    let scope = scope_attribute(hints.scope);
    refusal(DenyReason::MissingToken, 401, hints, None, &scope)
}

/// 400 for a malformed or ambiguous credential.
pub fn invalid_request(hints: &Hints<'_>, description: &str) -> Challenge {
    let error = Some(("invalid_request", description));
    refusal(DenyReason::InvalidRequest, 400, hints, error, "")
}

/// 401 for a token that is malformed, forged, expired or not for this API.
pub fn invalid_token(hints: &Hints<'_>, description: &str) -> Challenge {
    let error = Some(("invalid_token", description));
    let scope = scope_attribute(hints.scope);
    refusal(DenyReason::InvalidToken, 401, hints, error, &scope)
}

/// 403 for a valid token without a scope or claim the route requires. `scope` lists every
/// scope the requirement needs (left out when it needs none: a claim was missing).
pub fn insufficient_scope(hints: &Hints<'_>, scopes: &[&str], scope_missing: bool) -> Challenge {
    let description = if scope_missing {
        "The access token lacks a scope this resource requires"
    } else {
        "The access token lacks a claim this resource requires"
    };
    let error = Some(("insufficient_scope", description));
    let scope = scope_attribute(&scopes.join(" "));
    refusal(DenyReason::InsufficientScope, 403, hints, error, &scope)
}

/// 401 for a valid token whose user authentication is too weak or too old (RFC 9470).
pub fn insufficient_user_authentication(hints: &Hints<'_>, step_up: StepUp<'_>) -> Challenge {
    let description = match (step_up.acr_values, step_up.max_age) {
        (Some(_), None) => "A stronger authentication of the user is required",
        (None, Some(_)) => "A more recent authentication of the user is required",
        _ => "A stronger and more recent authentication of the user is required",
    };
    let mut extra = scope_attribute(hints.scope);
    if let Some(values) = step_up.acr_values {
        extra.push_str(&format!(", acr_values=\"{}\"", values.join(" ")));
    }
    if let Some(seconds) = step_up.max_age {
        extra.push_str(&format!(", max_age=\"{seconds}\""));
    }
    let reason = DenyReason::InsufficientUserAuthentication;
    refusal(
        reason,
        401,
        hints,
        Some((reason.name(), description)),
        &extra,
    )
}

/// 503 when the filter cannot decide (no configuration, keys or introspection unreachable).
pub fn unavailable(description: &str) -> Challenge {
    Challenge {
        reason: DenyReason::Unavailable,
        status: 503,
        www_authenticate: None,
        dpop: None,
        dpop_nonce: None,
        body: body("temporarily_unavailable", description),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let api = Hints::realm("api");
        let c = missing_token(&api);
        assert_eq!(c.status, 401);
        assert_eq!(c.www_authenticate.as_deref(), Some("Bearer realm=\"api\""));
        let c = insufficient_scope(&api, &["a", "b"], true);
        assert_eq!(c.status, 403);
        let w = c.www_authenticate.unwrap();
        assert!(w.starts_with("Bearer realm=\"api\", error=\"insufficient_scope\""));
        assert!(w.ends_with(", scope=\"a b\""));
        let c = insufficient_scope(&api, &[], false);
        let w = c.www_authenticate.unwrap();
        assert!(!w.contains("scope=") && w.contains("lacks a claim"), "{w}");
        let c = invalid_request(&Hints::realm("r"), "bad");
        assert_eq!(c.status, 400);
        let body: serde_json::Value = serde_json::from_str(&c.body).unwrap();
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(body["error_description"], "bad");
        let c = unavailable("down");
        assert_eq!((c.status, c.www_authenticate), (503, None));
    }

    #[test]
    fn rule_hints_and_step_up() {
        let url = "https://api.example/.well-known/oauth-protected-resource/mcp";
        let hints = Hints {
            realm: "mcp",
            scope: "tools:read tools:call",
            resource_metadata: Some(url),
            dpop: None,
        };
        let w = |c: Challenge| c.www_authenticate.unwrap();
        assert_eq!(
            w(missing_token(&hints)),
            format!("Bearer realm=\"mcp\", scope=\"tools:read tools:call\", resource_metadata=\"{url}\"")
        );
        let invalid = w(invalid_token(&hints, "The access token expired"));
        assert!(
            invalid.contains("error=\"invalid_token\"") && invalid.contains("scope=\"tools:read")
        );
        assert!(invalid.ends_with(&format!("resource_metadata=\"{url}\"")));
        // A 400 names no scope, but still the metadata.
        let bad = w(invalid_request(&hints, "Two tokens"));
        assert!(
            !bad.contains("scope=") && bad.contains("resource_metadata="),
            "{bad}"
        );
        // A 403 lists the scopes of the failed requirement, not the rule's.
        let scoped = w(insufficient_scope(&hints, &["tools:call"], true));
        assert!(
            scoped.contains(", scope=\"tools:call\", resource_metadata="),
            "{scoped}"
        );
        // Step-up names only the attributes that failed.
        let acr = ["phrh".to_string(), "phr".to_string()];
        let both = StepUp {
            acr_values: Some(&acr),
            max_age: Some(300),
        };
        let c = insufficient_user_authentication(&Hints::realm("api"), both);
        assert_eq!(
            (c.status, c.reason.name()),
            (401, "insufficient_user_authentication")
        );
        let h = c.www_authenticate.unwrap();
        assert!(h.starts_with("Bearer realm=\"api\", error=\"insufficient_user_authentication\""));
        assert!(
            h.ends_with(", acr_values=\"phrh phr\", max_age=\"300\""),
            "{h}"
        );
        let old = StepUp {
            acr_values: None,
            max_age: Some(60),
        };
        let h = w(insufficient_user_authentication(&Hints::realm("api"), old));
        assert!(h.ends_with("recent authentication of the user is required\", max_age=\"60\""));
        assert!(!h.contains("acr_values"));
    }
}
