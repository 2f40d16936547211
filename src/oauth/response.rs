//! Parsing token endpoint answers (RFC 6749 sections 5.1 and 5.2).
//!
//! A 2xx answer is read field by field and leniently: providers send `scope` as an array,
//! `expires_in` as a string or a float, `token_type` in any case. One odd field never makes the
//! whole answer unusable, and above all never loses a rotated refresh token.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::{ErrorCode, OAuthError};

/// Longest lifetime believed of any token, whatever the provider says (`expires_in`, JWT `exp`).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Longest lifetime believed of a refresh token, whatever the provider or the spec says. Longer
/// than [`MAX_TOKEN_LIFETIME`]: refresh tokens legitimately live for years, and a lifetime
/// clamped too short would raise a false "refresh token expiring" alert.
pub const MAX_REFRESH_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Members that state the refresh token's remaining lifetime in seconds, most specific first:
/// `refresh_token_expires_in` (GitHub Apps, Microsoft Entra, Dropbox, ...),
/// `x_refresh_token_expires_in` (Intuit) and `refresh_expires_in` (Keycloak). None of them is
/// in RFC 6749.
const REFRESH_LIFETIME_FIELDS: [&str; 3] = [
    "refresh_token_expires_in",
    "x_refresh_token_expires_in",
    "refresh_expires_in",
];

/// A 2xx answer. The refresh token is kept apart from the rest so that the caller can persist it
/// before anything else is judged.
pub struct Issued {
    /// When the request was sent: the start of the token's life.
    pub requested_at: DateTime<Utc>,
    /// The 2xx status the endpoint answered with.
    pub status: u16,
    /// A non-empty string `refresh_token` found in the 2xx JSON object, even when the rest is
    /// unusable.
    pub refresh_token: Option<SecretString>,
    /// How long the refresh token lives from `requested_at`, when the provider says so (see
    /// [`REFRESH_LIFETIME_FIELDS`]); at most [`MAX_REFRESH_TOKEN_LIFETIME`], `None` when absent
    /// or not a positive number (Keycloak's `0` for offline tokens means "no idle limit").
    pub refresh_expires_in: Option<Duration>,
    /// The access token, or why the answer cannot be used (an OAuthError, e.g. Malformed with
    /// problem "no access_token").
    pub access: Result<AccessGrant, OAuthError>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("requested_at", &self.requested_at)
            .field("status", &self.status)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("refresh_expires_in", &self.refresh_expires_in)
            .field("access", &self.access)
            .finish()
    }
}

/// The usable part of a successful token response. `Debug` never shows the token.
pub struct AccessGrant {
    pub access_token: SecretString,
    /// `Bearer` when the provider said `bearer` in any case or nothing at all.
    pub token_type: String,
    /// At most [`MAX_TOKEN_LIFETIME`]; `None` when absent or not a positive number.
    pub expires_in: Option<Duration>,
    /// Space-separated, also when the provider sent an array.
    pub scope: Option<String>,
}

impl std::fmt::Debug for AccessGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessGrant")
            .field("access_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

#[derive(Deserialize)]
struct RawError {
    error: String,
}

/// Turns an HTTP answer into an [`Issued`] or a classified error.
///
/// `Err` for non-2xx answers and for 2xx bodies that are not a JSON object (nothing to salvage);
/// any 2xx JSON object gives `Ok`, with `access` saying whether it can be used.
pub(crate) fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    requested_at: DateTime<Utc>,
) -> Result<Issued, OAuthError> {
    match status {
        200..=299 => {
            let fields = Fields::parse(body).ok_or(OAuthError::Malformed {
                status,
                problem: "not a JSON object",
            })?;
            Ok(Issued {
                requested_at,
                status,
                refresh_token: fields
                    .last("refresh_token", non_empty_string)
                    .map(SecretString::from),
                refresh_expires_in: REFRESH_LIFETIME_FIELDS
                    .iter()
                    .find_map(|name| fields.last(name, |v| seconds(v, MAX_REFRESH_TOKEN_LIFETIME))),
                access: access_grant(status, &fields),
            })
        }
        300..=399 => Err(OAuthError::Redirect { status }),
        429 | 503 => Err(OAuthError::Throttled {
            status,
            retry_after,
        }),
        _ => match serde_json::from_slice::<RawError>(body) {
            Ok(raw) => Err(OAuthError::Rejected {
                status,
                code: ErrorCode::new(&raw.error),
            }),
            Err(_) => Err(OAuthError::UnexpectedStatus { status }),
        },
    }
}

/// The members of a JSON object, each kept as raw JSON so that one odd value (a number out of
/// `f64` range, a deep nesting) cannot make the others unreadable. Duplicate names are kept.
struct Fields<'a>(Vec<(String, &'a RawValue)>);

impl<'a> Fields<'a> {
    /// `None` when the body is not a JSON object.
    fn parse(body: &'a [u8]) -> Option<Fields<'a>> {
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        serde_json::from_slice(body).ok()
    }

    /// The last member called `name` that `read` accepts.
    fn last<T>(&self, name: &str, read: impl Fn(&RawValue) -> Option<T>) -> Option<T> {
        self.0
            .iter()
            .rev()
            .filter(|(key, _)| key == name)
            .find_map(|(_, value)| read(value))
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

fn access_grant(status: u16, fields: &Fields<'_>) -> Result<AccessGrant, OAuthError> {
    let access_token =
        fields
            .last("access_token", non_empty_string)
            .ok_or(OAuthError::Malformed {
                status,
                problem: "no access_token",
            })?;
    Ok(AccessGrant {
        access_token: SecretString::from(access_token),
        token_type: fields
            .last("token_type", token_type)
            .unwrap_or_else(|| BEARER.to_string()),
        expires_in: fields.last("expires_in", |v| seconds(v, MAX_TOKEN_LIFETIME)),
        scope: fields.last("scope", scope),
    })
}

const BEARER: &str = "Bearer";

fn string(value: &RawValue) -> Option<String> {
    serde_json::from_str(value.get()).ok()
}

fn non_empty_string(value: &RawValue) -> Option<String> {
    string(value).filter(|s| !s.is_empty())
}

/// `bearer` in any case is `Bearer` (RFC 6749 section 5.1 says it is case-insensitive); other
/// types are kept as given.
fn token_type(value: &RawValue) -> Option<String> {
    let given = string(value)?;
    match given.trim() {
        "" => None,
        t if t.eq_ignore_ascii_case(BEARER) => Some(BEARER.to_string()),
        _ => Some(given),
    }
}

/// A space-separated string, or an array of strings joined with spaces.
fn scope(value: &RawValue) -> Option<String> {
    let scope = match string(value) {
        Some(scope) => scope,
        None => {
            let parts: Vec<String> = serde_json::from_str(value.get()).ok()?;
            parts
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    (!scope.is_empty()).then_some(scope)
}

/// A positive number of seconds, as a JSON number (integer or float, however large) or a
/// numeric string; at most `max`.
fn seconds(value: &RawValue, max: Duration) -> Option<Duration> {
    let raw = value.get();
    let text = if raw.starts_with('"') {
        string(value)?
    } else {
        raw.to_string()
    };
    let text = text.trim();
    // Rust's float syntax also takes "inf" and "NaN": only digits, signs, points and exponents.
    if text.is_empty()
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
    {
        return None;
    }
    let number: f64 = text.parse().ok()?;
    if number.is_nan() || number <= 0.0 {
        return None;
    }
    if number >= max.as_secs_f64() {
        return Some(max);
    }
    Duration::try_from_secs_f64(number)
        .ok()
        .filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::FailureKind;
    use crate::oauth::jwt;
    use crate::schedule::{self, RefreshPolicy};
    use base64::Engine as _;
    use chrono::TimeDelta;
    use secrecy::ExposeSecret;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn parse(body: &str) -> Issued {
        classify(200, None, body.as_bytes(), at()).unwrap()
    }

    fn usable(body: &str) -> AccessGrant {
        parse(body).access.unwrap()
    }

    fn expires_in_of(value: &str) -> Option<Duration> {
        usable(&format!(r#"{{"access_token":"x","expires_in":{value}}}"#)).expires_in
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn success_is_parsed() {
        let body = r#"{"access_token":"at-1","token_type":"bearer","expires_in":3600,"refresh_token":"rt-2","scope":"a b"}"#;
        let issued = parse(body);
        assert_eq!(issued.status, 200);
        assert_eq!(issued.requested_at, at());
        assert_eq!(
            issued.refresh_token.as_ref().unwrap().expose_secret(),
            "rt-2"
        );
        let debug = format!("{issued:?}");
        assert!(
            !debug.contains("at-1") && !debug.contains("rt-2"),
            "{debug}"
        );
        let grant = issued.access.unwrap();
        assert_eq!(grant.access_token.expose_secret(), "at-1");
        assert_eq!(grant.token_type, "Bearer");
        assert_eq!(grant.expires_in, Some(secs(3600)));
        assert_eq!(grant.scope.as_deref(), Some("a b"));
        assert!(!format!("{grant:?}").contains("at-1"));
    }

    #[test]
    fn scope_may_be_an_array() {
        let grant = usable(r#"{"access_token":"x","scope":["read","write"]}"#);
        assert_eq!(grant.scope.as_deref(), Some("read write"));
        for odd in [r#"[]"#, "42", "{}", r#"["read",7]"#, "null", r#""""#] {
            let grant = usable(&format!(r#"{{"access_token":"x","scope":{odd}}}"#));
            assert_eq!(grant.scope, None, "{odd}");
        }
    }

    #[test]
    fn expires_in_in_every_shape() {
        assert_eq!(expires_in_of("3600"), Some(secs(3600)));
        assert_eq!(expires_in_of("3600.0"), Some(secs(3600)));
        assert_eq!(expires_in_of("59.5"), Some(Duration::from_millis(59_500)));
        assert_eq!(expires_in_of(r#""3600""#), Some(secs(3600)));
        assert_eq!(expires_in_of(r#"" 60 ""#), Some(secs(60)));
        assert_eq!(expires_in_of(r#""3600.0""#), Some(secs(3600)));
        assert_eq!(expires_in_of("null"), None);
    }

    #[test]
    fn absurd_expires_in_is_clamped_or_ignored_but_never_an_error() {
        for huge in [
            "1e15",
            "1000000000000000",
            "18446744073709551616",
            "1e308",
            "1e400",
        ] {
            assert_eq!(expires_in_of(huge), Some(MAX_TOKEN_LIFETIME), "{huge}");
        }
        for useless in [
            "-5",
            "0",
            "-0",
            "0.0",
            "1e-400",
            r#""soon""#,
            r#""NaN""#,
            r#""inf""#,
            r#""""#,
            r#""-5""#,
            "true",
            "[3600]",
            r#"{"s":1}"#,
            r#""0x10""#,
            r#""1 h""#,
        ] {
            let issued = parse(&format!(
                r#"{{"access_token":"x","refresh_token":"r","expires_in":{useless}}}"#
            ));
            assert!(issued.refresh_token.is_some(), "{useless}");
            assert_eq!(issued.access.unwrap().expires_in, None, "{useless}");
        }
    }

    fn refresh_expires_in_of(member: &str, value: &str) -> Option<Duration> {
        parse(&format!(
            r#"{{"access_token":"x","refresh_token":"r","{member}":{value}}}"#
        ))
        .refresh_expires_in
    }

    #[test]
    fn refresh_token_lifetime_under_every_known_name_and_in_every_shape() {
        for member in REFRESH_LIFETIME_FIELDS {
            assert_eq!(
                refresh_expires_in_of(member, "7776000"),
                Some(secs(7_776_000))
            );
            assert_eq!(refresh_expires_in_of(member, "1800.0"), Some(secs(1800)));
            assert_eq!(
                refresh_expires_in_of(member, r#"" 1800 ""#),
                Some(secs(1800))
            );
            assert_eq!(
                refresh_expires_in_of(member, "59.5"),
                Some(Duration::from_millis(59_500))
            );
        }
        let issued = parse(
            r#"{"access_token":"x","expires_in":300,"refresh_token":"r","refresh_expires_in":1800}"#,
        );
        assert_eq!(issued.refresh_expires_in, Some(secs(1800)));
        assert_eq!(issued.access.unwrap().expires_in, Some(secs(300)));
        assert_eq!(parse(r#"{"access_token":"x"}"#).refresh_expires_in, None);
        // The specific name wins over Keycloak's, whatever the order.
        let issued =
            parse(r#"{"refresh_expires_in":60,"access_token":"x","refresh_token_expires_in":120}"#);
        assert_eq!(issued.refresh_expires_in, Some(secs(120)));
        // A useless specific one does not hide a usable other one.
        let issued = parse(
            r#"{"refresh_token_expires_in":"soon","access_token":"x","refresh_expires_in":60}"#,
        );
        assert_eq!(issued.refresh_expires_in, Some(secs(60)));
        // Stated even when the rest of the answer is unusable.
        let issued = parse(r#"{"refresh_token":"r","refresh_token_expires_in":60}"#);
        assert!(issued.access.is_err());
        assert_eq!(issued.refresh_expires_in, Some(secs(60)));
        assert!(format!("{issued:?}").contains("refresh_expires_in: Some(60s)"));
    }

    #[test]
    fn absurd_refresh_token_lifetimes_are_clamped_or_ignored() {
        for huge in ["1e15", "18446744073709551616", "1e400", r#""1e308""#] {
            assert_eq!(
                refresh_expires_in_of("refresh_expires_in", huge),
                Some(MAX_REFRESH_TOKEN_LIFETIME),
                "{huge}"
            );
        }
        // Longer than an access token may live, but believed.
        assert_eq!(
            refresh_expires_in_of("refresh_token_expires_in", "63072000"),
            Some(secs(63_072_000))
        );
        // Keycloak's 0 (an offline token without idle limit) and junk say nothing.
        for useless in [
            "0",
            "-5",
            "0.0",
            "1e-400",
            "null",
            "true",
            r#""soon""#,
            r#""NaN""#,
            r#""inf""#,
            r#""""#,
            "[60]",
            r#"{"s":60}"#,
        ] {
            let issued = parse(&format!(
                r#"{{"access_token":"x","refresh_token":"r","refresh_expires_in":{useless}}}"#
            ));
            assert_eq!(issued.refresh_expires_in, None, "{useless}");
            assert!(
                issued.refresh_token.is_some() && issued.access.is_ok(),
                "{useless}"
            );
        }
    }

    #[test]
    fn token_type_is_normalised() {
        let type_of = |body: &str| usable(body).token_type;
        assert_eq!(
            type_of(r#"{"access_token":"x","token_type":"BEARER"}"#),
            "Bearer"
        );
        assert_eq!(
            type_of(r#"{"access_token":"x","token_type":"bearer"}"#),
            "Bearer"
        );
        assert_eq!(type_of(r#"{"access_token":"x"}"#), "Bearer");
        assert_eq!(type_of(r#"{"access_token":"x","token_type":""}"#), "Bearer");
        assert_eq!(type_of(r#"{"access_token":"x","token_type":5}"#), "Bearer");
        assert_eq!(type_of(r#"{"access_token":"x","token_type":"mac"}"#), "mac");
        assert_eq!(
            type_of(r#"{"access_token":"x","token_type":"DPoP"}"#),
            "DPoP"
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let grant = usable(
            r#"{"id_token":{"deep":[1,{"x":null}]},"access_token":"x","not-before":1e999,"extra":[],"expires_in":60}"#,
        );
        assert_eq!(grant.access_token.expose_secret(), "x");
        assert_eq!(grant.expires_in, Some(secs(60)));
    }

    #[test]
    fn a_refresh_token_survives_an_unusable_answer() {
        let issued = parse(r#"{"refresh_token":"r2","token_type":"Bearer"}"#);
        assert_eq!(issued.refresh_token.as_ref().unwrap().expose_secret(), "r2");
        let error = issued.access.unwrap_err();
        assert!(
            matches!(
                error,
                OAuthError::Malformed {
                    status: 200,
                    problem: "no access_token"
                }
            ),
            "{error}"
        );
        assert_eq!(error.kind(), FailureKind::Transient);
        for access_token in [r#""""#, "null", "42", r#"["a"]"#, r#"{"a":"b"}"#] {
            let issued = parse(&format!(
                r#"{{"access_token":{access_token},"refresh_token":"r3"}}"#
            ));
            assert!(issued.refresh_token.is_some(), "{access_token}");
            assert!(issued.access.is_err(), "{access_token}");
        }
        // Odd siblings do not hide it either, and a UTF-8 BOM is tolerated.
        let issued =
            parse("\u{feff}{\"expires_in\":1e999,\"refresh_token\":\"r4\",\"access_token\":\"a\"}");
        assert_eq!(issued.refresh_token.unwrap().expose_secret(), "r4");
        assert_eq!(issued.access.unwrap().expires_in, Some(MAX_TOKEN_LIFETIME));
    }

    #[test]
    fn only_a_non_empty_string_is_a_refresh_token() {
        for odd in ["123", r#""""#, "null", "true", r#"["r"]"#, r#"{"v":"r"}"#] {
            let issued = parse(&format!(r#"{{"access_token":"a","refresh_token":{odd}}}"#));
            assert!(issued.refresh_token.is_none(), "{odd}");
            assert!(issued.access.is_ok(), "{odd}");
        }
    }

    #[test]
    fn duplicate_members_keep_the_last_usable_value() {
        let issued = parse(r#"{"access_token":"a","refresh_token":"r1","refresh_token":null}"#);
        assert_eq!(issued.refresh_token.unwrap().expose_secret(), "r1");
    }

    #[test]
    fn success_bodies_that_are_not_objects_are_malformed() {
        for body in [
            &b"<html>oops</html>"[..],
            b"[]",
            br#""x""#,
            b"42",
            b"null",
            b"",
            b"{not json",
            br#"{"access_token":"a"} trailing"#,
            b"\xff\xfe{}",
        ] {
            let error = classify(200, None, body, at()).unwrap_err();
            assert!(matches!(error, OAuthError::Malformed { .. }), "{error}");
            assert_eq!(error.kind(), FailureKind::Transient);
        }
    }

    #[test]
    fn error_bodies_give_their_code_but_not_their_description() {
        let body =
            br#"{"error":"invalid_grant","error_description":"grant rt-secret-123 revoked"}"#;
        let error = classify(400, None, body, at()).unwrap_err();
        assert_eq!(error.kind(), FailureKind::ReauthorizationRequired);
        assert!(!error.to_string().contains("rt-secret-123"));
        let error = classify(401, None, br#"{"error":"invalid_client"}"#, at()).unwrap_err();
        assert_eq!(error.kind(), FailureKind::InvalidClient);
        let error = classify(400, None, br#"{"error":7}"#, at()).unwrap_err();
        assert!(matches!(
            error,
            OAuthError::UnexpectedStatus { status: 400 }
        ));
    }

    #[test]
    fn throttling_keeps_retry_after() {
        let error = classify(
            503,
            Some(secs(9)),
            br#"{"error":"temporarily_unavailable"}"#,
            at(),
        )
        .unwrap_err();
        assert_eq!(error.retry_after(), Some(secs(9)));
        assert_eq!(error.kind(), FailureKind::Transient);
        let error = classify(429, None, b"", at()).unwrap_err();
        assert!(matches!(error, OAuthError::Throttled { status: 429, .. }));
    }

    #[test]
    fn non_json_errors_keep_their_status() {
        let error = classify(502, None, b"Bad Gateway", at()).unwrap_err();
        assert!(matches!(
            error,
            OAuthError::UnexpectedStatus { status: 502 }
        ));
        assert!(matches!(
            classify(302, None, b"", at()).unwrap_err(),
            OAuthError::Redirect { status: 302 }
        ));
    }

    fn jwt_with(claims: &str) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.sig", engine.encode("{}"), engine.encode(claims))
    }

    /// Odd JSON values: extreme numbers, wrong types, nesting.
    fn odd_values() -> Vec<String> {
        let mut values: Vec<String> = [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "1",
            "-1",
            "0.5",
            "-0.5",
            "1e-400",
            "5e-324",
            "1e15",
            "1e308",
            "-1e308",
            "1e309",
            "-1e999",
            "1.7976931348623157e308",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890123456789012345678901234567890",
            r#""""#,
            r#"" ""#,
            r#""3600""#,
            r#"" 60 ""#,
            r#""3600.0""#,
            r#""1e400""#,
            r#""-1e400""#,
            r#""NaN""#,
            r#""inf""#,
            r#""-inf""#,
            r#""infinity""#,
            r#""0x10""#,
            r#""+7""#,
            r#"".""#,
            r#""soon""#,
            r#""\u0000""#,
            r#""\ud800""#,
            r#""é""#,
            r#""bearer""#,
            r#""BeArEr""#,
            "[]",
            "{}",
            r#"["read","write"]"#,
            r#"["a",1]"#,
            "[null]",
            r#"{"a":{"b":[1,2]}}"#,
            r#"[[[[[[[[[[["x"]]]]]]]]]]]"#,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for n in [i64::MAX, i64::MIN, i64::MAX - 1, i64::MIN + 1] {
            values.push(n.to_string());
        }
        for n in [u64::MAX, u64::MAX / 2 + 1] {
            values.push(n.to_string());
        }
        for f in [
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::EPSILON,
            -f64::EPSILON,
        ] {
            values.push(format!("{f:e}"));
            values.push(format!("\"{f}\""));
        }
        values.push(format!("{}1{}", "[".repeat(200), "]".repeat(200)));
        for exp in [
            "9223372036854775807",
            "-9223372036854775808",
            "1e300",
            "-1e300",
            "1e999",
            "8210298412799",
            "8210298412800",
            "-8334632851200",
            "1700000000.75",
            r#""1700000000""#,
            "null",
        ] {
            values.push(format!("\"{}\"", jwt_with(&format!(r#"{{"exp":{exp}}}"#))));
        }
        values.push(r#""a.!!!.c""#.to_string());
        values.push(r#""a.b+/=.c""#.to_string());
        values
    }

    fn odd_bodies() -> Vec<String> {
        let fields = [
            "access_token",
            "refresh_token",
            "token_type",
            "expires_in",
            "refresh_expires_in",
            "refresh_token_expires_in",
            "scope",
            "error",
        ];
        let mut bodies = Vec::new();
        for value in odd_values() {
            for field in fields {
                // The odd value replaces the usual one: no duplicate members here.
                let mut members = vec![format!(r#""{field}":{value}"#)];
                for (name, usual) in [("access_token", r#""a""#), ("refresh_token", r#""r""#)] {
                    if name != field {
                        members.push(format!(r#""{name}":{usual}"#));
                    }
                }
                bodies.push(format!("{{{}}}", members.join(",")));
            }
            bodies.push(format!(
                r#"{{"access_token":{value},"expires_in":{value},"scope":{value},"refresh_token":{value}}}"#
            ));
            bodies.push(value);
        }
        bodies
    }

    #[test]
    fn no_body_panics_and_no_expiry_exceeds_the_maximum_lifetime() {
        let max = TimeDelta::from_std(MAX_TOKEN_LIFETIME).unwrap();
        let clocks = [
            at(),
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            DateTime::<Utc>::MAX_UTC - TimeDelta::seconds(1),
            DateTime::from_timestamp(0, 999_999_999).unwrap(),
        ];
        let defaults = [Duration::ZERO, secs(3600), Duration::MAX];
        let policies = [
            RefreshPolicy::default(),
            RefreshPolicy::Before(Duration::ZERO),
            RefreshPolicy::Before(secs(900)),
            RefreshPolicy::Before(Duration::MAX),
            RefreshPolicy::RemainingPercent(0),
            RefreshPolicy::RemainingPercent(100),
            RefreshPolicy::RemainingPercent(u8::MAX),
        ];
        let jitters = [0.0, 0.999_999, 1.0, -1.0, f64::NAN, f64::INFINITY];
        let bodies = odd_bodies();
        assert!(bodies.len() > 300, "{}", bodies.len());
        let mut usable = 0;
        for body in &bodies {
            for status in [200, 201, 299, 400, 401, 429, 500] {
                let result = classify(status, Some(secs(1)), body.as_bytes(), at());
                let Ok(issued) = result else { continue };
                assert!((200..300).contains(&status));
                // A refresh token is reported exactly when the body has a non-empty string one.
                let refresh = serde_json::from_str::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v.get("refresh_token").cloned());
                if let Some(refresh) = refresh {
                    assert_eq!(
                        issued.refresh_token.is_some(),
                        refresh.as_str().is_some_and(|s| !s.is_empty()),
                        "{body}"
                    );
                }
                assert!(
                    issued
                        .refresh_expires_in
                        .is_none_or(|d| !d.is_zero() && d <= MAX_REFRESH_TOKEN_LIFETIME),
                    "{body}"
                );
                let Ok(grant) = issued.access else { continue };
                usable += 1;
                assert!(grant.expires_in.is_none_or(|d| d <= MAX_TOKEN_LIFETIME));
                let jwt_exp = jwt::expiry(grant.access_token.expose_secret());
                for requested_at in clocks {
                    for default in defaults {
                        for jwt_exp in [jwt_exp, None] {
                            let (expires_at, _) = schedule::token_expiry(
                                requested_at,
                                grant.expires_in,
                                jwt_exp,
                                default,
                            );
                            let lifetime = expires_at.signed_duration_since(requested_at);
                            assert!(
                                lifetime >= TimeDelta::zero() && lifetime <= max,
                                "{body} at {requested_at}: {lifetime}"
                            );
                            for policy in policies {
                                for jitter in jitters {
                                    let refresh_at = schedule::refresh_at(
                                        requested_at,
                                        expires_at,
                                        policy,
                                        jitter,
                                    );
                                    assert!(refresh_at <= expires_at, "{body}");
                                    assert!(
                                        refresh_at >= schedule::truncate_to_seconds(requested_at),
                                        "{body}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(usable > 100, "{usable}");
    }
}
