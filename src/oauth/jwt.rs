//! Reading the `exp` claim of a JWT access token, for providers that omit `expires_in`.
//!
//! The signature is not verified: the token came straight from the provider over the token
//! endpoint connection, and `exp` only schedules the next refresh.

use base64::Engine as _;
use chrono::{DateTime, Utc};

/// The `exp` claim of a JWS compact-serialised token, if the token is one and has it.
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
    let seconds = exp.as_i64().or_else(|| exp.as_f64().map(|f| f as i64))?;
    DateTime::from_timestamp(seconds, 0)
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
    }
}
