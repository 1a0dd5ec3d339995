//! What goes upstream with an accepted token: claims as headers (`claim_to_headers`), the
//! payload (`forward_payload_header`), claims as Envoy filter state (`claim_to_filter_state`),
//! and the token itself only with `forward`.

use crate::claims;
use crate::config::{Provider, Source};
use crate::decision::{Forward, Request};
use crate::extract;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

/// The identity of one request's accepted providers, gathered into a [`Forward`] that borrows
/// its names from the configuration (`'c`), not from the request (`'q`).
pub struct Out<'c, 'q> {
    request: Request<'q>,
    /// The `:path` once query tokens are cut from it.
    path: Option<String>,
    /// Token cookies to cut from `Cookie`.
    cookies: Vec<&'c str>,
}

impl<'c, 'q> Out<'c, 'q> {
    pub fn new(request: Request<'q>) -> Out<'c, 'q> {
        Out {
            request,
            path: None,
            cookies: Vec::new(),
        }
    }

    /// Adds what `provider` passes on from a token it accepted (`token`, found at `source`, with
    /// `claims`; `vouched`: an introspection answer).
    pub fn add(
        &mut self,
        provider: &'c Provider,
        claims: &Map<String, Value>,
        vouched: bool,
        token: &str,
        source: &'c Source,
        forward: &mut Forward<'c>,
    ) {
        for ch in &provider.claim_to_headers {
            if let Some(value) = claim_value(claims, &ch.claim) {
                forward.set.push((&ch.header, value));
            }
        }
        if let Some(header) = &provider.payload_header {
            forward.set.push((header, payload(token, claims, vouched)));
        }
        for state in &provider.claim_to_filter_state {
            if let Some(value) = claim_value(claims, &state.claim) {
                forward.filter_state.push((&state.key, value));
            }
        }
        if provider.forward {
            return;
        }
        let proof = |(n, _): &(&str, &[u8])| *n == "dpop";
        let removed = forward.remove.contains(&"dpop");
        if source.is_dpop() && !removed && self.request.headers.iter().any(proof) {
            forward.remove.push("dpop");
        }
        match source {
            Source::Header { name, .. } => {
                if !forward.remove.contains(&name.as_str()) {
                    forward.remove.push(name);
                }
            }
            Source::Param(param) => {
                let path = self.path.as_deref().unwrap_or(self.request.path);
                self.path = Some(extract::strip_param(path, param));
            }
            Source::Cookie(name) => self.cookies.push(name),
        }
    }

    /// Puts the rewritten path and `Cookie` header into `forward`.
    pub fn finish(self, forward: &mut Forward<'c>) {
        if self.path.is_some() {
            forward.path = self.path;
        }
        if self.cookies.is_empty() {
            return;
        }
        match extract::without_cookies(self.request.headers, &self.cookies) {
            Some(rest) => forward.set.push(("cookie", rest)),
            None => forward.remove.push("cookie"),
        }
    }
}

/// The payload `forward_payload_header` carries: a JWT's payload segment as it came (base64url,
/// as `jwt_authn` sends it), or the introspection answer as base64url JSON.
fn payload(token: &str, claims: &Map<String, Value>, vouched: bool) -> String {
    if vouched {
        let json = serde_json::to_string(claims).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    } else {
        token.split('.').nth(1).unwrap_or_default().to_string()
    }
}

/// The plain value of claim `name` (a top-level name or a dotted path): strings as they are,
/// numbers and booleans as JSON text, arrays of those joined with commas; objects, nulls and
/// values with control characters give nothing (a header value may not carry CR, LF, NUL or
/// other controls, RFC 9110 §5.5).
pub fn claim_value(claims: &Map<String, Value>, name: &str) -> Option<String> {
    let text = match claims::lookup(claims, name)? {
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items.iter().map(claims::scalar_text).collect();
            parts?.join(",")
        }
        other => claims::scalar_text(other)?,
    };
    if text.chars().any(|c| c.is_control()) {
        return None;
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claim_values() {
        let Value::Object(c) = json!({
            "sub": "alice", "n": 3, "b": true, "roles": ["a", "b"],
            "realm_access": {"roles": ["x"]}, "a.b": "flat", "a": {"b": "nested"},
            "bad": "x\r\ny", "obj": {"k": 1}, "mixed": ["a", {"k": 1}], "nul": null
        }) else {
            unreachable!()
        };
        let v = |n: &str| claim_value(&c, n);
        assert_eq!(v("sub").as_deref(), Some("alice"));
        assert_eq!(v("n").as_deref(), Some("3"));
        assert_eq!(v("b").as_deref(), Some("true"));
        assert_eq!(v("roles").as_deref(), Some("a,b"));
        assert_eq!(v("realm_access.roles").as_deref(), Some("x"));
        assert_eq!(v("a.b").as_deref(), Some("flat"));
        assert_eq!(v("bad"), None);
        assert_eq!(v("obj"), None);
        assert_eq!(v("mixed"), None);
        assert_eq!(v("nul"), None);
        assert_eq!(v("missing"), None);
        assert_eq!(v("sub.x"), None);
    }

    #[test]
    fn payloads() {
        let Value::Object(c) = json!({"active": true, "sub": "ivy"}) else {
            unreachable!()
        };
        assert_eq!(payload("h.cGF5bG9hZA.s", &c, false), "cGF5bG9hZA");
        let sent = URL_SAFE_NO_PAD.decode(payload("opaque", &c, true)).unwrap();
        let back: Value = serde_json::from_slice(&sent).unwrap();
        assert_eq!(back, json!({"active": true, "sub": "ivy"}));
    }
}
