//! Reading the `exp` claim of a JWT access token, for providers that omit `expires_in`.
//!
//! The signature is not verified: the token came straight from the provider over the token
//! endpoint connection, and `exp` only schedules the next refresh.

use base64::Engine as _;
use chrono::{DateTime, Utc};

/// The `exp` claim of a JWS compact-serialised token, if the token is one and has a numeric one.
///
/// An `exp` outside chrono's range saturates to its limits (the far future or the far past);
/// callers clamp the lifetime.
pub fn expiry(token: &str) -> Option<DateTime<Utc>> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?;
    // Float to integer casts saturate; JSON has no NaN.
    let seconds = exp.as_i64().or_else(|| exp.as_f64().map(|f| f as i64))?;
    Some(
        DateTime::from_timestamp(seconds, 0).unwrap_or(if seconds > 0 {
            DateTime::<Utc>::MAX_UTC
        } else {
            DateTime::<Utc>::MIN_UTC
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            engine.encode(r#"{"alg":"RS256"}"#),
            engine.encode(claims)
        )
    }

    #[test]
    fn reads_exp() {
        let token = jwt(r#"{"sub":"bot","exp":1700000000}"#);
        assert_eq!(expiry(&token), DateTime::from_timestamp(1_700_000_000, 0));
    }

    #[test]
    fn ignores_tokens_that_are_not_jwts_or_lack_exp() {
        assert_eq!(expiry("opaque-token"), None);
        assert_eq!(expiry(&jwt(r#"{"sub":"bot"}"#)), None);
        assert_eq!(expiry(&jwt(r#"{"exp":"tomorrow"}"#)), None);
        assert_eq!(expiry("a.!!!.c"), None);
        assert_eq!(expiry("a.b.c.d.e"), None);
        assert_eq!(expiry(""), None);
        assert_eq!(expiry(".."), None);
        assert_eq!(expiry("a.+/==.c"), None);
        assert_eq!(expiry("a.\u{e9}\u{1f600}.c"), None);
        assert_eq!(expiry(&jwt(r#"{"exp":null}"#)), None);
        assert_eq!(expiry(&jwt(r#"{"exp":[1]}"#)), None);
        assert_eq!(expiry(&jwt(r#"{"exp":1e999}"#)), None);
        assert_eq!(expiry(&jwt("[1,2]")), None);
        assert_eq!(expiry(&jwt("not json")), None);
    }

    #[test]
    fn odd_exp_values_saturate_instead_of_panicking() {
        let max = Some(DateTime::<Utc>::MAX_UTC);
        let min = Some(DateTime::<Utc>::MIN_UTC);
        assert_eq!(expiry(&jwt(r#"{"exp":9223372036854775807}"#)), max);
        assert_eq!(expiry(&jwt(r#"{"exp":18446744073709551615}"#)), max);
        assert_eq!(expiry(&jwt(r#"{"exp":1e300}"#)), max);
        assert_eq!(expiry(&jwt(r#"{"exp":-9223372036854775808}"#)), min);
        assert_eq!(expiry(&jwt(r#"{"exp":-1e300}"#)), min);
        assert_eq!(
            expiry(&jwt(r#"{"exp":1700000000.9}"#)),
            DateTime::from_timestamp(1_700_000_000, 0)
        );
        assert_eq!(
            expiry(&jwt(r#"{"exp":-1}"#)),
            DateTime::from_timestamp(-1, 0)
        );
    }
}
