//! JWT access-token profiles a provider may require (`jwt_profile`): today RFC 9068, the profile
//! of OAuth 2.0 access tokens as JWTs. Checked once, when a token is verified (a cached token
//! passed it then); the values of `iss` and `aud` are compared by the claim rules as for any
//! token, where `issuer` and `audiences` are configured.

use super::Jws;
use crate::config::JwtProfile;
use serde_json::Value;

/// Why a token does not follow `profile`, as a fixed sentence; `Ok` when it does.
pub fn check(profile: JwtProfile, jws: &Jws<'_>) -> Result<(), &'static str> {
    match profile {
        JwtProfile::Rfc9068 => rfc9068(jws),
    }
}

/// RFC 9068 §2.1 and §4: `typ` `at+jwt` (or `application/at+jwt`; media types compare without
/// regard to case), and §2.2's required claims, each of its type.
fn rfc9068(jws: &Jws<'_>) -> Result<(), &'static str> {
    let typ = jws.typ.as_deref().unwrap_or("");
    let typ = typ
        .get(..12)
        .filter(|head| head.eq_ignore_ascii_case("application/"))
        .map_or(typ, |_| &typ[12..]);
    if !typ.eq_ignore_ascii_case("at+jwt") {
        return Err("The access token is not an RFC 9068 JWT access token (typ)");
    }
    let claims = &jws.claims;
    let string = |name: &str| matches!(claims.get(name), Some(Value::String(_)));
    let number = |name: &str| matches!(claims.get(name), Some(Value::Number(_)));
    let audience = match claims.get("aud") {
        Some(Value::String(_)) => true,
        Some(Value::Array(items)) => !items.is_empty() && items.iter().all(Value::is_string),
        _ => false,
    };
    let complete = string("iss")
        && number("exp")
        && audience
        && string("sub")
        && string("client_id")
        && number("iat")
        && string("jti");
    if complete {
        Ok(())
    } else {
        Err("The access token lacks a claim RFC 9068 requires")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::parse;
    use crate::testkit::b64;
    use serde_json::json;

    fn token(header: Value, claims: Value) -> String {
        format!(
            "{}.{}.c2ln",
            b64(header.to_string()),
            b64(claims.to_string())
        )
    }

    fn full() -> Value {
        json!({"iss": "https://idp", "exp": 2, "aud": "api", "sub": "alice", "client_id": "app",
               "iat": 1, "jti": "j-1"})
    }

    fn verdict(header: Value, claims: Value) -> Result<(), &'static str> {
        let text = token(header, claims);
        let jws = parse(&text).unwrap();
        check(JwtProfile::Rfc9068, &jws)
    }

    #[test]
    fn rfc9068_types() {
        for typ in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/AT+jwt",
        ] {
            assert_eq!(
                verdict(json!({"alg": "RS256", "typ": typ}), full()),
                Ok(()),
                "{typ}"
            );
        }
        for header in [
            json!({"alg": "RS256", "typ": "JWT"}),
            json!({"alg": "RS256"}),
            json!({"alg": "RS256", "typ": 7}),
            json!({"alg": "RS256", "typ": "application/jwt"}),
            json!({"alg": "RS256", "typ": "application/"}),
        ] {
            let why = verdict(header.clone(), full()).unwrap_err();
            assert!(why.contains("(typ)"), "{header}");
        }
    }

    #[test]
    fn rfc9068_claims() {
        let header = json!({"alg": "ES256", "typ": "at+jwt"});
        let mut two = full();
        two["aud"] = json!(["a", "b"]);
        assert_eq!(verdict(header.clone(), two), Ok(()));
        for name in ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"] {
            let mut claims = full();
            claims.as_object_mut().unwrap().remove(name);
            assert!(verdict(header.clone(), claims).is_err(), "without {name}");
        }
        for (name, bad) in [
            ("exp", json!("2")),
            ("iat", json!(null)),
            ("jti", json!(7)),
            ("aud", json!([])),
            ("aud", json!(["a", 1])),
            ("client_id", json!({"id": "app"})),
        ] {
            let mut claims = full();
            claims[name] = bad;
            assert!(verdict(header.clone(), claims).is_err(), "{name}");
        }
    }
}
