//! The Device Authorization Grant (RFC 8628): asking the device authorization endpoint for a
//! device code and a user code, and telling what a failed device code poll means.
//!
//! The poll itself is an ordinary token request with [`GrantRequest::DeviceCode`]; its answer
//! is an [`Issued`](super::Issued) like any other, and its failures go through
//! [`device_poll`].
//!
//! [`GrantRequest::DeviceCode`]: super::GrantRequest::DeviceCode

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::value::RawValue;
use url::Url;

use super::error::{ErrorCode, OAuthError};
use super::{ClientCredentials, TokenClient, append_client_and_parameters, response};

/// Shortest device code lifetime believed: a provider saying less gets this.
pub const MIN_DEVICE_CODE_LIFETIME: Duration = Duration::from_secs(1);
/// Longest device code lifetime believed, whatever the provider says.
pub const MAX_DEVICE_CODE_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// Poll interval when the provider names none (RFC 8628 section 3.2).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Shortest poll interval used, whatever the provider says.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Longest poll interval used, whatever the provider says.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// How much slower to poll after each `slow_down` (RFC 8628 section 3.5).
pub const SLOW_DOWN_INCREMENT: Duration = Duration::from_secs(5);
/// Longest `user_code` and verification URI accepted: they are shown to a human.
const MAX_DISPLAYED_LEN: usize = 2048;

/// Everything one device authorization request needs (RFC 8628 section 3.1).
pub struct DeviceAuthorizationRequest<'a> {
    pub endpoint: &'a Url,
    /// Authenticated as at the token endpoint (Basic, Post or None).
    pub client: &'a ClientCredentials,
    pub scopes: &'a [String],
    pub audience: Option<&'a str>,
    pub extra_parameters: &'a BTreeMap<String, String>,
}

/// A device authorization response (RFC 8628 section 3.2). `Debug` never shows the device code.
pub struct DeviceAuthorization {
    pub device_code: SecretString,
    /// What the user types at the verification URI.
    pub user_code: String,
    /// Where the user goes; Google's `verification_url` is accepted too.
    pub verification_uri: String,
    /// The verification URI with the user code in it, when the provider sends a usable one.
    pub verification_uri_complete: Option<String>,
    /// How long the device code lives from `requested_at`: between
    /// [`MIN_DEVICE_CODE_LIFETIME`] and [`MAX_DEVICE_CODE_LIFETIME`].
    pub expires_in: Duration,
    /// How long to wait between polls: [`DEFAULT_POLL_INTERVAL`] when the provider names none
    /// (or nothing usable), otherwise between [`MIN_POLL_INTERVAL`] and [`MAX_POLL_INTERVAL`].
    pub interval: Duration,
    /// When the request was sent: the start of the device code's life.
    pub requested_at: DateTime<Utc>,
}

impl DeviceAuthorization {
    /// When the device code stops working.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.requested_at
            + chrono::TimeDelta::from_std(self.expires_in).unwrap_or(chrono::TimeDelta::zero())
    }
}

impl std::fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("device_code", &"[redacted]")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("verification_uri_complete", &self.verification_uri_complete)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .field("requested_at", &self.requested_at)
            .finish()
    }
}

/// What a failed device code poll means (RFC 8628 section 3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevicePoll {
    /// `authorization_pending`: the user has not finished; poll again after the interval.
    Pending,
    /// `slow_down`: poll again, the interval raised by [`SLOW_DOWN_INCREMENT`] for good.
    SlowDown,
    /// `expired_token`: the device code is dead; start a new device authorization.
    Expired,
    /// `access_denied`: the user refused.
    Denied,
    /// Anything else: see [`OAuthError::kind`] (a transport failure may pass on its own).
    Failed,
}

/// What a failed device code poll means (RFC 8628 section 3.5): `authorization_pending`,
/// `slow_down`, `expired_token` and `access_denied` in an OAuth error answer, anything else
/// [`DevicePoll::Failed`].
pub fn device_poll(error: &OAuthError) -> DevicePoll {
    match error {
        OAuthError::Rejected { code, .. } => match code.as_str() {
            ErrorCode::AUTHORIZATION_PENDING => DevicePoll::Pending,
            ErrorCode::SLOW_DOWN => DevicePoll::SlowDown,
            ErrorCode::EXPIRED_TOKEN => DevicePoll::Expired,
            ErrorCode::ACCESS_DENIED => DevicePoll::Denied,
            _ => DevicePoll::Failed,
        },
        _ => DevicePoll::Failed,
    }
}

impl TokenClient {
    /// Asks the device authorization endpoint for a device code (RFC 8628 section 3.1), with
    /// the same client authentication, form encoding and response size limit as a token
    /// request. A refusal is classified as at the token endpoint (an OAuth error code, a
    /// throttle, a bare status); a 2xx without a usable device code, user code, verification
    /// URI or lifetime is [`OAuthError::Malformed`].
    pub async fn device_authorization(
        &self,
        request: &DeviceAuthorizationRequest<'_>,
    ) -> Result<DeviceAuthorization, OAuthError> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        append_client_and_parameters(
            &mut form,
            request.client,
            request.scopes,
            request.audience,
            request.extra_parameters,
        );
        let answer = self
            .post_form(request.endpoint, request.client, form.finish())
            .await?;
        if !(200..300).contains(&answer.status) {
            return Err(match answer.cut {
                Some(cut @ OAuthError::BodyTooLarge { .. }) => cut,
                _ => response::refusal(answer.status, answer.retry_after, &answer.body),
            });
        }
        if let Some(cut) = answer.cut {
            // Nothing is lost with a device authorization that cannot be read: ask again.
            return Err(cut);
        }
        parse(answer.status, &answer.body, answer.requested_at)
    }
}

/// Reads a complete 2xx device authorization response.
pub(crate) fn parse(
    status: u16,
    body: &[u8],
    requested_at: DateTime<Utc>,
) -> Result<DeviceAuthorization, OAuthError> {
    let malformed = |problem| OAuthError::Malformed { status, problem };
    let fields: BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(body).map_err(|_| malformed("not a JSON object"))?;
    let field = |name: &str| fields.get(name).map(|v| &**v);
    let device_code = field("device_code")
        .and_then(response::non_empty_string)
        .ok_or(malformed("no device_code"))?;
    let user_code = field("user_code")
        .and_then(response::non_empty_string)
        .filter(|c| c.len() <= MAX_DISPLAYED_LEN && !c.chars().any(char::is_control))
        .ok_or(malformed("no usable user_code"))?;
    let verification_uri = field("verification_uri")
        .or_else(|| field("verification_url"))
        .and_then(web_url)
        .ok_or(malformed("no usable verification_uri"))?;
    let verification_uri_complete = field("verification_uri_complete").and_then(web_url);
    let expires_in = field("expires_in")
        .and_then(|v| response::seconds(v, MAX_DEVICE_CODE_LIFETIME))
        .ok_or(malformed("no usable expires_in"))?
        .max(MIN_DEVICE_CODE_LIFETIME);
    let interval = field("interval")
        .and_then(|v| response::seconds(v, MAX_POLL_INTERVAL))
        .map(|i| i.max(MIN_POLL_INTERVAL))
        .unwrap_or(DEFAULT_POLL_INTERVAL);
    Ok(DeviceAuthorization {
        device_code: SecretString::from(device_code),
        user_code,
        verification_uri,
        verification_uri_complete,
        expires_in,
        interval,
        requested_at,
    })
}

/// An absolute http(s) URL of reasonable length, as given.
fn web_url(value: &RawValue) -> Option<String> {
    let text = response::non_empty_string(value)?;
    if text.len() > MAX_DISPLAYED_LEN {
        return None;
    }
    let url = Url::parse(&text).ok()?;
    (matches!(url.scheme(), "https" | "http") && url.host().is_some()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::{AuthMethod, ClientOptions, FailureKind, Presentation};
    use secrecy::ExposeSecret;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    const GOOD: &str = r#"{"device_code":"DEVICE-SECRET","user_code":"ABCD-EFGH","verification_uri":"https://idp.test/device","verification_uri_complete":"https://idp.test/device?user_code=ABCD-EFGH","expires_in":600,"interval":7}"#;

    #[test]
    fn a_complete_answer_is_read() {
        let parsed = parse(200, GOOD.as_bytes(), at()).unwrap();
        assert_eq!(parsed.device_code.expose_secret(), "DEVICE-SECRET");
        assert_eq!(parsed.user_code, "ABCD-EFGH");
        assert_eq!(parsed.verification_uri, "https://idp.test/device");
        assert_eq!(
            parsed.verification_uri_complete.as_deref(),
            Some("https://idp.test/device?user_code=ABCD-EFGH")
        );
        assert_eq!(parsed.expires_in, Duration::from_secs(600));
        assert_eq!(parsed.interval, Duration::from_secs(7));
        assert_eq!(parsed.expires_at(), at() + chrono::TimeDelta::seconds(600));
        let debug = format!("{parsed:?}");
        assert!(!debug.contains("DEVICE-SECRET"), "{debug}");
        assert!(debug.contains("[redacted]"));
    }

    #[test]
    fn google_verification_url_and_default_interval() {
        let body = r#"{"device_code":"d","user_code":"u","verification_url":"https://www.google.com/device","expires_in":"1800"}"#;
        let parsed = parse(200, body.as_bytes(), at()).unwrap();
        assert_eq!(parsed.verification_uri, "https://www.google.com/device");
        assert_eq!(parsed.verification_uri_complete, None);
        assert_eq!(parsed.expires_in, Duration::from_secs(1800));
        assert_eq!(parsed.interval, DEFAULT_POLL_INTERVAL);
    }

    #[test]
    fn lifetimes_and_intervals_are_bounded() {
        let with = |expires_in: &str, interval: &str| {
            let body = format!(
                r#"{{"device_code":"d","user_code":"u","verification_uri":"https://idp.test/d","expires_in":{expires_in},"interval":{interval}}}"#
            );
            parse(200, body.as_bytes(), at()).map(|p| (p.expires_in, p.interval))
        };
        assert_eq!(
            with("1e300", "1e300").unwrap(),
            (MAX_DEVICE_CODE_LIFETIME, MAX_POLL_INTERVAL)
        );
        assert_eq!(
            with("99999999999999999999999999999", "0.001").unwrap(),
            (MAX_DEVICE_CODE_LIFETIME, MIN_POLL_INTERVAL)
        );
        assert_eq!(
            with("0.5", "0").unwrap(),
            (MIN_DEVICE_CODE_LIFETIME, DEFAULT_POLL_INTERVAL)
        );
        assert_eq!(with("600", "-3").unwrap().1, DEFAULT_POLL_INTERVAL);
        assert_eq!(with("600", "\"x\"").unwrap().1, DEFAULT_POLL_INTERVAL);
        assert_eq!(with("600", "null").unwrap().1, DEFAULT_POLL_INTERVAL);
        assert_eq!(with("600", "[5]").unwrap().1, DEFAULT_POLL_INTERVAL);
        for bad in [
            "0", "-1", "null", "\"soon\"", "{}", "true", "\"NaN\"", "\"inf\"",
        ] {
            assert!(
                matches!(
                    with(bad, "5"),
                    Err(OAuthError::Malformed { status: 200, .. })
                ),
                "expires_in {bad}"
            );
        }
    }

    #[test]
    fn odd_answers_are_malformed_and_never_echo_the_device_code() {
        let cases: &[&str] = &[
            "",
            "not json",
            "null",
            "[]",
            "\"DEVICE-SECRET\"",
            "{",
            r#"{"device_code":"DEVICE-SECRET""#,
            r#"{"user_code":"u","verification_uri":"https://idp.test/d","expires_in":600}"#,
            r#"{"device_code":"","user_code":"u","verification_uri":"https://idp.test/d","expires_in":600}"#,
            r#"{"device_code":42,"user_code":"u","verification_uri":"https://idp.test/d","expires_in":600}"#,
            r#"{"device_code":"DEVICE-SECRET","verification_uri":"https://idp.test/d","expires_in":600}"#,
            r#"{"device_code":"DEVICE-SECRET","user_code":["u"],"verification_uri":"https://idp.test/d","expires_in":600}"#,
            r#"{"device_code":"DEVICE-SECRET","user_code":"a\nb","verification_uri":"https://idp.test/d","expires_in":600}"#,
            r#"{"device_code":"DEVICE-SECRET","user_code":"u","expires_in":600}"#,
            r#"{"device_code":"DEVICE-SECRET","user_code":"u","verification_uri":"/device","expires_in":600}"#,
            r#"{"device_code":"DEVICE-SECRET","user_code":"u","verification_uri":"javascript:alert(1)","expires_in":600}"#,
            r#"{"device_code":"DEVICE-SECRET","user_code":"u","verification_uri":{"a":1},"expires_in":600}"#,
            r#"{"device_code":"DEVICE-SECRET","user_code":"u","verification_uri":"https://idp.test/d"}"#,
        ];
        for body in cases {
            let error = parse(200, body.as_bytes(), at()).unwrap_err();
            assert!(
                matches!(error, OAuthError::Malformed { status: 200, .. }),
                "{body}: {error:?}"
            );
            for text in [error.to_string(), format!("{error:?}")] {
                assert!(!text.contains("DEVICE-SECRET"), "{text}");
            }
            assert_eq!(error.kind(), FailureKind::Transient);
        }
        // Deeply nested and very long input: an error, not a crash.
        let deep = format!(
            r#"{{"device_code":{}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(parse(200, deep.as_bytes(), at()).is_err());
        let long_user_code = format!(
            r#"{{"device_code":"d","user_code":"{}","verification_uri":"https://idp.test/d","expires_in":600}}"#,
            "u".repeat(MAX_DISPLAYED_LEN + 1)
        );
        assert!(parse(200, long_user_code.as_bytes(), at()).is_err());
        // An unusable verification_uri_complete is dropped, not fatal.
        let body = r#"{"device_code":"d","user_code":"u","verification_uri":"https://idp.test/d","verification_uri_complete":17,"expires_in":600}"#;
        assert_eq!(
            parse(200, body.as_bytes(), at())
                .unwrap()
                .verification_uri_complete,
            None
        );
    }

    #[test]
    fn poll_failures_are_read() {
        let rejected = |code: &str| OAuthError::Rejected {
            status: 400,
            code: ErrorCode::new(code),
        };
        assert_eq!(
            device_poll(&rejected("authorization_pending")),
            DevicePoll::Pending
        );
        assert_eq!(device_poll(&rejected("slow_down")), DevicePoll::SlowDown);
        assert_eq!(device_poll(&rejected("expired_token")), DevicePoll::Expired);
        assert_eq!(device_poll(&rejected("access_denied")), DevicePoll::Denied);
        assert_eq!(device_poll(&rejected("invalid_grant")), DevicePoll::Failed);
        assert_eq!(device_poll(&rejected("invalid_client")), DevicePoll::Failed);
        assert_eq!(device_poll(&OAuthError::Transport), DevicePoll::Failed);
        assert_eq!(
            device_poll(&OAuthError::Throttled {
                status: 429,
                retry_after: None
            }),
            DevicePoll::Failed
        );
    }

    fn response(status: u16, body: &'static str) -> reqwest::Response {
        reqwest::Response::from(http::Response::builder().status(status).body(body).unwrap())
    }

    /// The non-2xx path of `device_authorization`, without a server.
    async fn refusal_of(tokens: &TokenClient, status: u16, body: &'static str) -> OAuthError {
        let (part, cut) = tokens.read_limited(status, response(status, body)).await;
        match cut {
            Some(cut @ OAuthError::BodyTooLarge { .. }) => cut,
            _ => response::refusal(status, None, &part),
        }
    }

    #[tokio::test]
    async fn refusals_are_classified_like_token_endpoint_refusals() {
        let tokens = TokenClient::new(ClientOptions {
            max_response_bytes: 64,
            ..ClientOptions::default()
        })
        .unwrap();
        let error = refusal_of(
            &tokens,
            400,
            r#"{"error":"invalid_scope","error_description":"DEVICE-SECRET"}"#,
        )
        .await;
        assert!(matches!(error, OAuthError::Rejected { status: 400, .. }));
        assert!(!error.to_string().contains("DEVICE-SECRET"));
        assert_eq!(error.presentation(), Presentation::Refused);
        let error = refusal_of(&tokens, 401, "<html>nope</html>").await;
        assert_eq!(error.kind(), FailureKind::InvalidClient);
        let error = refusal_of(&tokens, 400, &*"x".repeat(100).leak()).await;
        assert!(matches!(
            error,
            OAuthError::BodyTooLarge {
                status: 400,
                limit: 64
            }
        ));
    }

    #[test]
    fn the_request_form_is_the_token_endpoint_s() {
        let client = ClientCredentials {
            method: AuthMethod::ClientSecretPost,
            client_id: "cli".into(),
            client_secret: Some(SecretString::from("sec")),
        };
        let extra = BTreeMap::from([
            ("client_secret".to_string(), "other".to_string()),
            ("resource".to_string(), "https://api".to_string()),
        ]);
        let mut form = form_urlencoded::Serializer::new(String::new());
        append_client_and_parameters(
            &mut form,
            &client,
            &["openid".to_string(), "offline_access".to_string()],
            None,
            &extra,
        );
        assert_eq!(
            form.finish(),
            "client_id=cli&client_secret=sec&scope=openid+offline_access&resource=https%3A%2F%2Fapi"
        );
    }
}
