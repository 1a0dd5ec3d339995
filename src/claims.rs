//! Checks on a token's claims (`iss`, `aud`, `exp`, `nbf`), its scopes and a requirement's claim
//! conditions. Shared by locally verified JWTs and introspection answers: both arrive here as a
//! JSON object.

use crate::config::{err, ConfigError, Obj};
use serde_json::{Map, Value};

/// What a provider requires of every token's claims.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRules {
    /// When set, `iss` must be a string equal to it.
    pub issuer: Option<String>,
    /// When not empty, `aud` (a string or an array of strings) must contain one of them.
    pub audiences: Vec<String>,
    /// When true, a token without `exp` is refused.
    pub require_expiration: bool,
    /// Tolerance for `exp` and `nbf`, in seconds.
    pub clock_skew_seconds: u64,
    /// When set, the longest lifetime a token may have, in seconds: `exp` must be there, no
    /// later than this after now (plus the skew), and no later than this after `iat` when the
    /// token has one.
    pub max_lifetime_seconds: Option<u64>,
}

/// Why a token's claims were refused. Descriptions never echo claim values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimError {
    Expired,
    NotYetValid,
    MissingExpiration,
    BadDate,
    WrongIssuer,
    WrongAudience,
    TooLong,
}

impl ClaimError {
    pub fn description(self) -> &'static str {
        match self {
            ClaimError::Expired => "The access token expired",
            ClaimError::NotYetValid => "The access token is not valid yet",
            ClaimError::MissingExpiration => "The access token has no expiration time",
            ClaimError::BadDate => "The access token's exp, nbf or iat is not a number",
            ClaimError::WrongIssuer => "The access token's issuer is not accepted",
            ClaimError::WrongAudience => "The access token's audience is not accepted",
            ClaimError::TooLong => "The access token's lifetime is longer than this API accepts",
        }
    }
}

/// A NumericDate claim (RFC 7519 §2): absent, or a JSON number (fractions allowed).
fn date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, ClaimError> {
    date_of(claims.get(name))
}

fn date_of(value: Option<&Value>) -> Result<Option<f64>, ClaimError> {
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(ClaimError::BadDate),
        Some(_) => Err(ClaimError::BadDate),
    }
}

/// The registered claims every token's check reads (RFC 7519 §4.1), found in one pass over the
/// claims: five lookups in the map cost each request with a cached token about 700
/// instructions, the pass a fraction of that.
#[derive(Default)]
struct Registered<'a> {
    exp: Option<&'a Value>,
    nbf: Option<&'a Value>,
    iat: Option<&'a Value>,
    iss: Option<&'a Value>,
    aud: Option<&'a Value>,
}

impl<'a> Registered<'a> {
    fn of(claims: &'a Map<String, Value>) -> Registered<'a> {
        let mut found = Registered::default();
        for (name, value) in claims {
            let slot = match name.as_bytes() {
                b"exp" => &mut found.exp,
                b"nbf" => &mut found.nbf,
                b"iat" => &mut found.iat,
                b"iss" => &mut found.iss,
                b"aud" => &mut found.aud,
                _ => continue,
            };
            *slot = Some(value);
        }
        found
    }
}

/// Checks the claims at `now` (seconds since the Unix epoch).
pub fn check(claims: &Map<String, Value>, rules: &ClaimRules, now: u64) -> Result<(), ClaimError> {
    check_for(claims, rules, &rules.audiences, now, false)
}

/// [`check`] for claims an authorization server vouched for (an introspection answer).
pub fn check_vouched(
    claims: &Map<String, Value>,
    rules: &ClaimRules,
    now: u64,
) -> Result<(), ClaimError> {
    check_for(claims, rules, &rules.audiences, now, true)
}

/// [`check`] with `audiences` in place of the provider's (a `provider_and_audiences` leaf).
/// `vouched`: the claims are an introspection answer, which the configured endpoint vouched for
/// over the filter's own authenticated call: `exp` need not be there (not even with a maximum
/// lifetime) nor `iss` (RFC 7662 makes both optional), but every date, issuer and audience that
/// is there is checked.
pub fn check_for(
    claims: &Map<String, Value>,
    rules: &ClaimRules,
    audiences: &[String],
    now: u64,
    vouched: bool,
) -> Result<(), ClaimError> {
    // A maximum lifetime cannot be checked on a token without exp.
    let require_expiration =
        !vouched && (rules.require_expiration || rules.max_lifetime_seconds.is_some());
    let registered = Registered::of(claims);
    check_dates(&registered, rules, now, require_expiration)?;
    if let Some(issuer) = &rules.issuer {
        let fits = match registered.iss {
            None => vouched,
            Some(iss) => iss.as_str() == Some(issuer.as_str()),
        };
        if !fits {
            return Err(ClaimError::WrongIssuer);
        }
    }
    if !audiences.is_empty() {
        let fits = |aud: &str| audiences.iter().any(|a| a == aud);
        let ok = match registered.aud {
            Some(Value::String(aud)) => fits(aud),
            Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(fits),
            _ => false,
        };
        if !ok {
            return Err(ClaimError::WrongAudience);
        }
    }
    Ok(())
}

fn check_dates(
    claims: &Registered<'_>,
    rules: &ClaimRules,
    now: u64,
    require_expiration: bool,
) -> Result<(), ClaimError> {
    let exp = date_of(claims.exp)?;
    let nbf = date_of(claims.nbf)?;
    // `iat` is not checked against the clock (as in jwt_authn), but it must still be a date.
    let iat = date_of(claims.iat)?;
    let now = now as f64;
    let skew = rules.clock_skew_seconds as f64;
    match exp {
        // RFC 7519 §4.1.4: the token must not be accepted "on or after" exp.
        Some(exp) if now >= exp + skew => return Err(ClaimError::Expired),
        None if require_expiration => return Err(ClaimError::MissingExpiration),
        _ => {}
    }
    if let (Some(max), Some(exp)) = (rules.max_lifetime_seconds, exp) {
        // A token minted to live for years is refused on every day of its life: against `iat`
        // when it has one, and against the clock in any case.
        let max = max as f64;
        if exp - now > max + skew || iat.is_some_and(|iat| exp - iat > max) {
            return Err(ClaimError::TooLong);
        }
    }
    match nbf {
        Some(nbf) if now + skew < nbf => Err(ClaimError::NotYetValid),
        _ => Ok(()),
    }
}

/// Why a token's user authentication does not do for a leaf's `acr_values` / `max_age`
/// (RFC 9470).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAuthentication {
    /// Too weak (`acr` missing or not one of the values) and/or too old (`auth_time` missing
    /// or longer ago than `max_age`): a step-up can help.
    Insufficient { acr: bool, age: bool },
    /// `acr` or `auth_time` of the wrong type, or an `auth_time` in the future: a token no
    /// authorization server should issue.
    Malformed(&'static str),
}

/// Checks `acr` against `acr_values` (when not empty) and `auth_time` against `max_age` (when
/// set) at `now`, with `skew` seconds of tolerance.
pub fn user_authentication(
    claims: &Map<String, Value>,
    acr_values: &[String],
    max_age: Option<u64>,
    now: u64,
    skew: u64,
) -> Result<(), UserAuthentication> {
    let weak = !acr_values.is_empty()
        && match claims.get("acr") {
            None => true,
            Some(Value::String(acr)) => !acr_values.contains(acr),
            Some(_) => {
                return Err(UserAuthentication::Malformed(
                    "The access token's acr is not a string",
                ))
            }
        };
    let old = match max_age {
        None => false,
        Some(max_age) => match date(claims, "auth_time") {
            Err(_) => {
                return Err(UserAuthentication::Malformed(
                    "The access token's auth_time is not a number",
                ))
            }
            Ok(None) => true,
            Ok(Some(at)) if at > (now + skew) as f64 => {
                return Err(UserAuthentication::Malformed(
                    "The access token's auth_time is in the future",
                ))
            }
            Ok(Some(at)) => now as f64 > at + (max_age + skew) as f64,
        },
    };
    if weak || old {
        return Err(UserAuthentication::Insufficient {
            acr: weak,
            age: old,
        });
    }
    Ok(())
}

/// Claim `name`: a top-level claim of that exact name, or else a dotted path into nested
/// objects (`realm_access.roles`).
pub fn lookup<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    claims.get(name).or_else(|| {
        let mut parts = name.split('.');
        let first = claims.get(parts.next()?)?;
        parts.try_fold(first, |v, part| v.as_object()?.get(part))
    })
}

/// A scalar claim as text: strings as they are, numbers and booleans as JSON text.
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A requirement's claim condition (`claims`): the claim (a top-level name or a dotted path)
/// must equal one of `values`; an array claim must contain one of them. Numbers and booleans
/// compare as their JSON text (`"true"`, `"3"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimCondition {
    pub claim: String,
    pub values: Vec<String>,
}

impl ClaimCondition {
    pub(crate) fn parse(c: &Obj<'_>) -> Result<ClaimCondition, ConfigError> {
        c.only(&["claim_name", "values"])?;
        let claim = c.required_string("claim_name")?.to_string();
        let values = c.strings("values", |_| Ok(()))?.unwrap_or_default();
        if values.is_empty() {
            return err(
                c.field("values"),
                "must list at least one value the claim may have",
            );
        }
        Ok(ClaimCondition { claim, values })
    }

    pub fn holds(&self, claims: &Map<String, Value>) -> bool {
        let fits = |v: &Value| scalar_text(v).is_some_and(|t| self.values.contains(&t));
        match lookup(claims, &self.claim) {
            Some(Value::Array(items)) => items.iter().any(fits),
            Some(value) => fits(value),
            None => false,
        }
    }
}

/// The scopes a token grants: the space-delimited `scope` claim (RFC 8693 §4.2, RFC 9068), or
/// else `scp` as an array of strings or a space-delimited string (Azure AD, Okta).
pub fn scopes(claims: &Map<String, Value>) -> Vec<&str> {
    match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => {
            s.split(' ').filter(|s| !s.is_empty()).collect()
        }
        (None, Some(Value::Array(items))) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Whether the token grants every one of `required`.
pub fn has_scopes(claims: &Map<String, Value>, required: &[String]) -> bool {
    if required.is_empty() {
        return true;
    }
    let granted = scopes(claims);
    required.iter().all(|r| granted.contains(&r.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn rules() -> ClaimRules {
        ClaimRules {
            issuer: Some("https://idp".into()),
            audiences: vec!["api".into(), "other".into()],
            require_expiration: true,
            clock_skew_seconds: 60,
            max_lifetime_seconds: None,
        }
    }

    const NOW: u64 = 1_000_000;

    #[test]
    fn accepts_good_claims() {
        let c = obj(json!({"iss":"https://idp","aud":"api","exp":NOW+10,"nbf":NOW}));
        assert_eq!(check(&c, &rules(), NOW), Ok(()));
        let c = obj(json!({"iss":"https://idp","aud":["x","other"],"exp":NOW as f64 + 0.5}));
        assert_eq!(check(&c, &rules(), NOW), Ok(()));
    }

    #[test]
    fn exp_and_nbf_with_skew() {
        let r = rules();
        let base = json!({"iss":"https://idp","aud":"api"});
        let with = |k: &str, v: Value| {
            let mut m = obj(base.clone());
            m.insert(k.into(), v);
            if k != "exp" {
                m.insert("exp".into(), json!(NOW + 1000));
            }
            m
        };
        // exp in the past but within the skew: accepted; at exp+skew: expired.
        assert_eq!(check(&with("exp", json!(NOW - 59)), &r, NOW), Ok(()));
        assert_eq!(
            check(&with("exp", json!(NOW - 60)), &r, NOW),
            Err(ClaimError::Expired)
        );
        assert_eq!(check(&with("nbf", json!(NOW + 60)), &r, NOW), Ok(()));
        assert_eq!(
            check(&with("nbf", json!(NOW + 61)), &r, NOW),
            Err(ClaimError::NotYetValid)
        );
        assert_eq!(
            check(&with("exp", json!(NOW.to_string())), &r, NOW),
            Err(ClaimError::BadDate)
        );
        assert_eq!(
            check(&with("nbf", json!(null)), &r, NOW),
            Err(ClaimError::BadDate)
        );
        assert_eq!(
            check(&with("iat", json!("yesterday")), &r, NOW),
            Err(ClaimError::BadDate)
        );
        assert_eq!(
            check(&with("exp", json!(-5)), &r, NOW),
            Err(ClaimError::Expired)
        );
    }

    #[test]
    fn require_expiration() {
        let c = obj(json!({"iss":"https://idp","aud":"api"}));
        assert_eq!(check(&c, &rules(), NOW), Err(ClaimError::MissingExpiration));
        let lax = ClaimRules {
            require_expiration: false,
            ..rules()
        };
        assert_eq!(check(&c, &lax, NOW), Ok(()));
        assert_eq!(check_vouched(&c, &rules(), NOW), Ok(()));
        let expired = obj(json!({"iss":"https://idp","aud":"api","exp":NOW - 61}));
        assert_eq!(
            check_vouched(&expired, &rules(), NOW),
            Err(ClaimError::Expired)
        );
    }

    #[test]
    fn max_lifetime() {
        let day = ClaimRules {
            max_lifetime_seconds: Some(86_400),
            require_expiration: false,
            ..rules()
        };
        let c = |v: Value| {
            let mut m = obj(json!({"iss":"https://idp","aud":"api"}));
            if let Value::Object(extra) = v {
                m.extend(extra);
            }
            m
        };
        // Unset: any lifetime.
        assert_eq!(check(&c(json!({"exp": 1e15})), &rules(), NOW), Ok(()));
        // exp against the clock, with the skew.
        assert_eq!(
            check(&c(json!({"exp": NOW + 86_400 + 60})), &day, NOW),
            Ok(())
        );
        assert_eq!(
            check(&c(json!({"exp": NOW + 86_400 + 61})), &day, NOW),
            Err(ClaimError::TooLong)
        );
        assert_eq!(
            check(&c(json!({"exp": 1e300})), &day, NOW),
            Err(ClaimError::TooLong)
        );
        // exp against iat: a ten-year token is refused even on its last day.
        assert_eq!(
            check(
                &c(json!({"iat": NOW as f64 - 315_360_000.0, "exp": NOW + 10})),
                &day,
                NOW
            ),
            Err(ClaimError::TooLong)
        );
        assert_eq!(
            check(
                &c(json!({"iat": NOW - 100, "exp": NOW + 86_300})),
                &day,
                NOW
            ),
            Ok(())
        );
        // A maximum lifetime needs exp, even where require_expiration is false.
        assert_eq!(
            check(&c(json!({})), &day, NOW),
            Err(ClaimError::MissingExpiration)
        );
        // Introspection answers: checked when they carry exp.
        assert_eq!(check_vouched(&c(json!({})), &day, NOW), Ok(()));
        assert_eq!(
            check_vouched(&c(json!({"exp": NOW + 90_000})), &day, NOW),
            Err(ClaimError::TooLong)
        );
    }

    #[test]
    fn issuer_and_audience_type_confusion() {
        let r = rules();
        let exp = NOW + 100;
        for (iss, aud) in [
            (json!("https://evil"), json!("api")),
            (json!(["https://idp"]), json!("api")),
            (json!(null), json!("api")),
        ] {
            let c = obj(json!({"iss":iss,"aud":aud,"exp":exp}));
            assert_eq!(check(&c, &r, NOW), Err(ClaimError::WrongIssuer));
        }
        for aud in [
            json!("apix"),
            json!(["nope"]),
            json!({"api":true}),
            json!([["api"]]),
            json!(1),
        ] {
            let c = obj(json!({"iss":"https://idp","aud":aud,"exp":exp}));
            assert_eq!(check(&c, &r, NOW), Err(ClaimError::WrongAudience));
        }
        let c = obj(json!({"iss":"https://idp","exp":exp}));
        assert_eq!(check(&c, &r, NOW), Err(ClaimError::WrongAudience));
        let open = ClaimRules {
            issuer: None,
            audiences: vec![],
            ..rules()
        };
        assert_eq!(check(&obj(json!({"exp":exp})), &open, NOW), Ok(()));
    }

    #[test]
    fn introspection_answers_may_leave_out_iss() {
        let r = rules();
        let exp = NOW + 100;
        let without = obj(json!({"aud": "api", "exp": exp}));
        assert_eq!(check_vouched(&without, &r, NOW), Ok(()));
        assert_eq!(check(&without, &r, NOW), Err(ClaimError::WrongIssuer));
        for iss in [json!("https://evil"), json!(null), json!(["https://idp"])] {
            let c = obj(json!({"iss": iss, "aud": "api", "exp": exp}));
            assert_eq!(
                check_vouched(&c, &r, NOW),
                Err(ClaimError::WrongIssuer),
                "{iss}"
            );
        }
        // Another leaf's audiences replace the provider's.
        let c = obj(json!({"iss": "https://idp", "aud": "admin", "exp": exp}));
        assert_eq!(check(&c, &r, NOW), Err(ClaimError::WrongAudience));
        assert_eq!(check_for(&c, &r, &["admin".into()], NOW, false), Ok(()));
    }

    #[test]
    fn claim_conditions() {
        let condition = |claim: &str, values: &[&str]| ClaimCondition {
            claim: claim.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let c = obj(json!({
            "tier": "gold", "groups": ["eng", "ops"], "n": 3, "admin": true,
            "realm_access": {"roles": ["viewer", "admin"]}, "tenant": {"id": "t1"},
            "nested": [["eng"]], "obj": {"eng": 1}
        }));
        let cases = [
            (condition("tier", &["silver", "gold"]), true),
            (condition("tier", &["Gold"]), false),
            (condition("groups", &["ops"]), true),
            (condition("groups", &["dev"]), false),
            (condition("realm_access.roles", &["admin"]), true),
            (condition("tenant.id", &["t1"]), true),
            (condition("tenant", &["t1"]), false),
            (condition("n", &["3"]), true),
            (condition("admin", &["true"]), true),
            (condition("nested", &["eng"]), false),
            (condition("obj", &["eng"]), false),
            (condition("missing", &["x"]), false),
        ];
        for (cond, expected) in cases {
            assert_eq!(cond.holds(&c), expected, "{cond:?}");
        }
    }

    #[test]
    fn scope_sources() {
        let c = obj(json!({"scope":"read  write"}));
        assert_eq!(scopes(&c), vec!["read", "write"]);
        let c = obj(json!({"scp":["read","write", 3]}));
        assert_eq!(scopes(&c), vec!["read", "write"]);
        let c = obj(json!({"scp":"read"}));
        assert_eq!(scopes(&c), vec!["read"]);
        let c = obj(json!({"scope":["read"]}));
        assert!(scopes(&c).is_empty());
        assert!(has_scopes(
            &obj(json!({"scope":"a b c"})),
            &["c".into(), "a".into()]
        ));
        assert!(!has_scopes(
            &obj(json!({"scope":"a b"})),
            &["a".into(), "ab".into()]
        ));
        assert!(has_scopes(&obj(json!({})), &[]));
    }

    #[test]
    fn step_up_conditions() {
        use UserAuthentication::{Insufficient, Malformed};
        let now = 10_000;
        let acr = ["phrh".to_string(), "phr".to_string()];
        let check = |c: Value, acr_values: &[String], max_age| {
            user_authentication(&obj(c), acr_values, max_age, now, 60)
        };
        let weak = |acr, age| Err(Insufficient { acr, age });
        assert_eq!(check(json!({"acr": "phr"}), &acr, None), Ok(()));
        assert_eq!(check(json!({"acr": "pwd"}), &acr, None), weak(true, false));
        assert_eq!(check(json!({}), &acr, None), weak(true, false));
        assert!(matches!(
            check(json!({"acr": ["phr"]}), &acr, None),
            Err(Malformed(_))
        ));
        assert!(matches!(
            check(json!({"acr": 2}), &acr, None),
            Err(Malformed(_))
        ));
        // auth_time: within max_age plus the skew; missing is too old; another type is bad.
        assert_eq!(
            check(json!({"auth_time": now - 300}), &[], Some(300)),
            Ok(())
        );
        assert_eq!(
            check(json!({"auth_time": now - 360}), &[], Some(300)),
            Ok(())
        );
        assert_eq!(
            check(json!({"auth_time": now - 361}), &[], Some(300)),
            weak(false, true)
        );
        assert_eq!(check(json!({}), &[], Some(300)), weak(false, true));
        assert_eq!(check(json!({"auth_time": now + 60}), &[], Some(0)), Ok(()));
        assert!(matches!(
            check(json!({"auth_time": now + 61}), &[], Some(0)),
            Err(Malformed(_))
        ));
        assert!(matches!(
            check(json!({"auth_time": "1"}), &[], Some(9)),
            Err(Malformed(_))
        ));
        // Both fail: both are named; without conditions nothing is read.
        assert_eq!(
            check(json!({"acr": "pwd"}), &acr, Some(5)),
            weak(true, true)
        );
        assert_eq!(
            check(json!({"acr": 1, "auth_time": "x"}), &[], None),
            Ok(())
        );
    }
}
