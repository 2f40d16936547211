//! Parsing token endpoint answers (RFC 6749 sections 5.1 and 5.2).

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::error::{ErrorCode, OAuthError};

/// A successful token response. `Debug` never shows token values.
pub struct TokenResponse {
    pub access_token: SecretString,
    pub token_type: String,
    pub expires_in: Option<Duration>,
    /// Present when the provider issued (or rotated to) a new refresh token.
    pub refresh_token: Option<SecretString>,
    pub scope: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("scope", &self.scope)
            .finish()
    }
}

#[derive(Deserialize)]
struct RawSuccess {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    scope: Option<String>,
}

#[derive(Deserialize)]
struct RawError {
    error: String,
}

/// Turns an HTTP answer into a token response or a classified error.
pub(crate) fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<TokenResponse, OAuthError> {
    match status {
        200..=299 => parse_success(status, body),
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

fn parse_success(status: u16, body: &[u8]) -> Result<TokenResponse, OAuthError> {
    let malformed = |problem| OAuthError::Malformed { status, problem };
    let raw: RawSuccess =
        serde_json::from_slice(body).map_err(|_| malformed("not a JSON token response"))?;
    let access_token = raw
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| malformed("no access_token"))?;
    let expires_in = match raw.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(value) => {
            Some(parse_expires_in(&value).ok_or_else(|| malformed("invalid expires_in"))?)
        }
    };
    Ok(TokenResponse {
        access_token: SecretString::from(access_token),
        token_type: raw
            .token_type
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "Bearer".to_string()),
        expires_in,
        refresh_token: raw
            .refresh_token
            .filter(|t| !t.is_empty())
            .map(SecretString::from),
        scope: raw.scope,
    })
}

/// `expires_in` is a number of seconds; some providers send it as a string.
fn parse_expires_in(value: &serde_json::Value) -> Option<Duration> {
    let seconds = match value {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64))?,
        serde_json::Value::String(s) => s.trim().parse::<u64>().ok()?,
        _ => return None,
    };
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::FailureKind;
    use secrecy::ExposeSecret;

    #[test]
    fn success_is_parsed() {
        let body = br#"{"access_token":"at-1","token_type":"bearer","expires_in":3600,"refresh_token":"rt-2","scope":"a b"}"#;
        let response = classify(200, None, body).unwrap();
        assert_eq!(response.access_token.expose_secret(), "at-1");
        assert_eq!(response.token_type, "bearer");
        assert_eq!(response.expires_in, Some(Duration::from_secs(3600)));
        assert_eq!(
            response.refresh_token.as_ref().unwrap().expose_secret(),
            "rt-2"
        );
        let debug = format!("{response:?}");
        assert!(!debug.contains("at-1") && !debug.contains("rt-2"));
    }

    #[test]
    fn lenient_on_string_expires_in_and_missing_token_type() {
        let response = classify(200, None, br#"{"access_token":"x","expires_in":"60"}"#).unwrap();
        assert_eq!(response.expires_in, Some(Duration::from_secs(60)));
        assert_eq!(response.token_type, "Bearer");
        let response = classify(200, None, br#"{"access_token":"x"}"#).unwrap();
        assert_eq!(response.expires_in, None);
        assert!(response.refresh_token.is_none());
    }

    #[test]
    fn broken_success_bodies_are_malformed() {
        for body in [
            &b"<html>oops</html>"[..],
            br#"{"token_type":"Bearer"}"#,
            br#"{"access_token":""}"#,
            br#"{"access_token":"x","expires_in":"soon"}"#,
        ] {
            let error = classify(200, None, body).unwrap_err();
            assert!(matches!(error, OAuthError::Malformed { .. }), "{error}");
            assert_eq!(error.kind(), FailureKind::Transient);
        }
    }

    #[test]
    fn error_bodies_give_their_code_but_not_their_description() {
        let body =
            br#"{"error":"invalid_grant","error_description":"grant rt-secret-123 revoked"}"#;
        let error = classify(400, None, body).unwrap_err();
        assert_eq!(error.kind(), FailureKind::ReauthorizationRequired);
        assert!(!error.to_string().contains("rt-secret-123"));
        let error = classify(401, None, br#"{"error":"invalid_client"}"#).unwrap_err();
        assert_eq!(error.kind(), FailureKind::InvalidClient);
    }

    #[test]
    fn throttling_keeps_retry_after() {
        let error = classify(
            503,
            Some(Duration::from_secs(9)),
            br#"{"error":"temporarily_unavailable"}"#,
        )
        .unwrap_err();
        assert_eq!(error.retry_after(), Some(Duration::from_secs(9)));
        assert_eq!(error.kind(), FailureKind::Transient);
        let error = classify(429, None, b"").unwrap_err();
        assert!(matches!(error, OAuthError::Throttled { status: 429, .. }));
    }

    #[test]
    fn non_json_errors_keep_their_status() {
        let error = classify(502, None, b"Bad Gateway").unwrap_err();
        assert!(matches!(
            error,
            OAuthError::UnexpectedStatus { status: 502 }
        ));
        assert!(matches!(
            classify(302, None, b"").unwrap_err(),
            OAuthError::Redirect { status: 302 }
        ));
    }
}
