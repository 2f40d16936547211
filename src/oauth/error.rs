//! What can go wrong at a token endpoint, and what each failure means for the caller.
//!
//! Messages carry the OAuth error code and the HTTP status only: never a response body,
//! `error_description`, token or client secret.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// How the controller should react to a failed token request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The refresh token is dead (`invalid_grant`): a human must re-authorize. Retrying soon
    /// only hammers the provider.
    ReauthorizationRequired,
    /// The client credentials were rejected; retrying cannot help until they change.
    InvalidClient,
    /// The provider rejected the request for a reason that the user must fix (bad scope,
    /// unsupported grant, ...), or the spec cannot be used.
    Configuration,
    /// Might pass on its own: overload, rate limit, timeout, a broken response.
    Transient,
}

/// A failed token request.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("token endpoint URL is invalid: {0}")]
    InvalidEndpoint(&'static str),

    #[error(
        "token endpoint uses http://, which sends credentials in clear text; use https:// or run the operator with --allow-insecure-http"
    )]
    InsecureEndpoint,

    #[error("token endpoint answered HTTP {status} with OAuth error {code}")]
    Rejected { status: u16, code: ErrorCode },

    #[error("token endpoint answered HTTP {status} (rate limited or unavailable){}", retry_after_text(*.retry_after))]
    Throttled {
        status: u16,
        retry_after: Option<Duration>,
    },

    #[error("token endpoint answered HTTP {status}")]
    UnexpectedStatus { status: u16 },

    #[error("token request timed out after {0:?}")]
    Timeout(Duration),

    #[error("could not connect to the token endpoint")]
    Connect,

    #[error("token endpoint tried to redirect (HTTP {status}); redirects are not followed")]
    Redirect { status: u16 },

    #[error("token request failed in transport")]
    Transport,

    #[error("token endpoint answered HTTP {status} with a response larger than {limit} bytes")]
    BodyTooLarge { status: u16, limit: usize },

    #[error("token endpoint answered HTTP {status} with an unusable body: {problem}")]
    Malformed { status: u16, problem: &'static str },

    /// A 2xx whose body holds no readable refresh token and is not a complete token response
    /// either: the provider may have rotated, and nobody can tell to what.
    #[error("token endpoint answered HTTP {status}, but no token response could be read from it")]
    UnreadableSuccess { status: u16 },
}

/// What a failed request tells about the refresh token it presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presentation {
    /// The request never left this process (invalid endpoint, connection refused/failed before
    /// anything was sent): the token was not used.
    NotSent,
    /// A complete answer that issued nothing (any non-2xx status, 3xx included): the provider
    /// did not rotate on this presentation.
    Refused,
    /// No usable answer (timeout, transport error after sending, a 2xx whose body cannot be
    /// read): the provider may have rotated.
    Unknown,
}

/// A non-2xx status is a refusal however little of its body arrived: RFC 6749 issues tokens in
/// 2xx answers only.
fn answered(status: u16) -> Presentation {
    if (200..300).contains(&status) {
        Presentation::Unknown
    } else {
        Presentation::Refused
    }
}

fn retry_after_text(retry_after: Option<Duration>) -> String {
    retry_after
        .map(|d| format!(", retry after {}s", d.as_secs()))
        .unwrap_or_default()
}

impl OAuthError {
    /// What the failure means for scheduling and conditions.
    pub fn kind(&self) -> FailureKind {
        match self {
            OAuthError::InvalidEndpoint(_) | OAuthError::InsecureEndpoint => {
                FailureKind::Configuration
            }
            OAuthError::Rejected { code, .. } => match code.as_str() {
                "invalid_grant" => FailureKind::ReauthorizationRequired,
                "invalid_client" | "unauthorized_client" => FailureKind::InvalidClient,
                // A device code poll that is early (RFC 8628 3.5): ask again later.
                ErrorCode::AUTHORIZATION_PENDING | ErrorCode::SLOW_DOWN => FailureKind::Transient,
                "temporarily_unavailable" | "server_error" => FailureKind::Transient,
                // The user refused, or the device code ran out (RFC 8628 3.5): the
                // authorization has to be started again by a human. Nothing is said about
                // any refresh token, which these grants never present.
                ErrorCode::ACCESS_DENIED | ErrorCode::EXPIRED_TOKEN => FailureKind::Configuration,
                _ => FailureKind::Configuration,
            },
            OAuthError::UnexpectedStatus { status: 401 } => FailureKind::InvalidClient,
            OAuthError::Throttled { .. }
            | OAuthError::UnexpectedStatus { .. }
            | OAuthError::Timeout(_)
            | OAuthError::Connect
            | OAuthError::Redirect { .. }
            | OAuthError::Transport
            | OAuthError::BodyTooLarge { .. }
            | OAuthError::Malformed { .. }
            | OAuthError::UnreadableSuccess { .. } => FailureKind::Transient,
        }
    }

    /// A static, low-cardinality name for metrics labels and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            OAuthError::InvalidEndpoint(_) => "InvalidEndpoint",
            OAuthError::InsecureEndpoint => "InsecureEndpoint",
            OAuthError::Rejected { code, .. }
                if code.as_str() == ErrorCode::AUTHORIZATION_PENDING =>
            {
                "AuthorizationPending"
            }
            OAuthError::Rejected { code, .. } if code.as_str() == ErrorCode::SLOW_DOWN => {
                "SlowDown"
            }
            OAuthError::Rejected { code, .. } if code.as_str() == ErrorCode::EXPIRED_TOKEN => {
                "DeviceCodeExpired"
            }
            OAuthError::Rejected { code, .. } if code.as_str() == ErrorCode::ACCESS_DENIED => {
                "AccessDenied"
            }
            OAuthError::Rejected { .. } => match self.kind() {
                FailureKind::ReauthorizationRequired => "InvalidGrant",
                FailureKind::InvalidClient => "InvalidClient",
                FailureKind::Transient => "ProviderUnavailable",
                FailureKind::Configuration => "ProviderRejected",
            },
            OAuthError::Throttled { .. } => "Throttled",
            OAuthError::UnexpectedStatus { .. } => "UnexpectedStatus",
            OAuthError::Timeout(_) => "Timeout",
            OAuthError::Connect => "ConnectionFailed",
            OAuthError::Redirect { .. } => "Redirect",
            OAuthError::Transport => "TransportError",
            OAuthError::BodyTooLarge { .. } => "ResponseTooLarge",
            OAuthError::Malformed { .. } => "MalformedResponse",
            OAuthError::UnreadableSuccess { .. } => "UnreadableResponse",
        }
    }

    /// What became of the refresh token this request presented: the way for a caller to decide
    /// whether that token may be presented again.
    pub fn presentation(&self) -> Presentation {
        match self {
            OAuthError::InvalidEndpoint(_) | OAuthError::InsecureEndpoint => Presentation::NotSent,
            // reqwest reports a connect error only while the connection (TLS included) is being
            // set up, before a byte of the request is written.
            OAuthError::Connect => Presentation::NotSent,
            OAuthError::Rejected { status, .. }
            | OAuthError::Throttled { status, .. }
            | OAuthError::UnexpectedStatus { status }
            | OAuthError::BodyTooLarge { status, .. }
            | OAuthError::Malformed { status, .. } => answered(*status),
            // Status 0: reqwest gave up on a redirect without saying which.
            OAuthError::Redirect { status: 0 } => Presentation::Unknown,
            OAuthError::Redirect { status } => answered(*status),
            OAuthError::Timeout(_)
            | OAuthError::Transport
            | OAuthError::UnreadableSuccess { .. } => Presentation::Unknown,
        }
    }

    /// The HTTP status of a complete answer that issued nothing: `Some` exactly when
    /// [`presentation`](Self::presentation) is [`Presentation::Refused`], so a 2xx that could not
    /// be read has none. Prefer `presentation()` to tell what became of the refresh token.
    pub fn http_status(&self) -> Option<u16> {
        if self.presentation() != Presentation::Refused {
            return None;
        }
        match self {
            OAuthError::Rejected { status, .. }
            | OAuthError::Throttled { status, .. }
            | OAuthError::UnexpectedStatus { status }
            | OAuthError::BodyTooLarge { status, .. }
            | OAuthError::Malformed { status, .. }
            | OAuthError::Redirect { status } => Some(*status),
            OAuthError::InvalidEndpoint(_)
            | OAuthError::InsecureEndpoint
            | OAuthError::Timeout(_)
            | OAuthError::Connect
            | OAuthError::Transport
            | OAuthError::UnreadableSuccess { .. } => None,
        }
    }

    /// The wait the provider asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            OAuthError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// An OAuth `error` code from a response body, restricted to a safe shape.
///
/// The code is the one piece of a response body that is echoed into status and Events, so
/// anything that does not look like an RFC 6749 error code is replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorCode(String);

impl ErrorCode {
    /// RFC 8628 3.5: the user has not finished yet; poll again after the interval.
    pub const AUTHORIZATION_PENDING: &'static str = "authorization_pending";
    /// RFC 8628 3.5: poll again, and from now on 5 seconds slower.
    pub const SLOW_DOWN: &'static str = "slow_down";
    /// RFC 8628 3.5: the device code expired; a new device authorization is needed.
    pub const EXPIRED_TOKEN: &'static str = "expired_token";
    /// RFC 6749 4.1.2.1 / RFC 8628 3.5: the user (or the server) refused.
    pub const ACCESS_DENIED: &'static str = "access_denied";

    pub fn new(raw: &str) -> ErrorCode {
        let looks_like_a_code = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if looks_like_a_code {
            ErrorCode(raw.to_string())
        } else {
            ErrorCode("unrecognized_error".to_string())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest wait honoured from a `Retry-After` header; a provider asking for more is most likely
/// misconfigured, and the controller's own slow retry takes over.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Parses a `Retry-After` header value: delay-seconds or an HTTP-date (RFC 9110 section 10.2.3).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let at = DateTime::parse_from_rfc2822(value)
            .ok()?
            .with_timezone(&Utc);
        (at - now).to_std().unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn rejected(code: &str, status: u16) -> OAuthError {
        OAuthError::Rejected {
            status,
            code: ErrorCode::new(code),
        }
    }

    #[test]
    fn oauth_error_codes_are_classified() {
        assert_eq!(
            rejected("invalid_grant", 400).kind(),
            FailureKind::ReauthorizationRequired
        );
        assert_eq!(
            rejected("invalid_client", 401).kind(),
            FailureKind::InvalidClient
        );
        assert_eq!(
            rejected("unauthorized_client", 400).kind(),
            FailureKind::InvalidClient
        );
        assert_eq!(
            rejected("invalid_scope", 400).kind(),
            FailureKind::Configuration
        );
        assert_eq!(
            rejected("temporarily_unavailable", 503).kind(),
            FailureKind::Transient
        );
        assert_eq!(rejected("invalid_grant", 400).category(), "InvalidGrant");
        assert_eq!(rejected("invalid_client", 401).category(), "InvalidClient");
    }

    #[test]
    fn device_flow_codes_are_classified() {
        let pending = rejected("authorization_pending", 400);
        assert_eq!(pending.kind(), FailureKind::Transient);
        assert_eq!(pending.category(), "AuthorizationPending");
        let slow = rejected("slow_down", 400);
        assert_eq!(slow.kind(), FailureKind::Transient);
        assert_eq!(slow.category(), "SlowDown");
        let expired = rejected("expired_token", 400);
        assert_eq!(expired.kind(), FailureKind::Configuration);
        assert_eq!(expired.category(), "DeviceCodeExpired");
        let denied = rejected("access_denied", 400);
        assert_eq!(denied.kind(), FailureKind::Configuration);
        assert_eq!(denied.category(), "AccessDenied");
        for error in [pending, slow, expired, denied] {
            assert_ne!(
                error.kind(),
                FailureKind::ReauthorizationRequired,
                "{error}"
            );
            // A complete refusal: whatever was presented was not consumed.
            assert_eq!(error.presentation(), Presentation::Refused, "{error}");
            assert_eq!(error.http_status(), Some(400));
        }
        assert_eq!(
            rejected("server_error", 500).category(),
            "ProviderUnavailable"
        );
    }

    #[test]
    fn http_failures_without_oauth_body_are_classified() {
        assert_eq!(
            OAuthError::UnexpectedStatus { status: 401 }.kind(),
            FailureKind::InvalidClient
        );
        assert_eq!(
            OAuthError::UnexpectedStatus { status: 502 }.kind(),
            FailureKind::Transient
        );
        assert_eq!(
            OAuthError::Timeout(Duration::from_secs(1)).kind(),
            FailureKind::Transient
        );
        assert_eq!(
            OAuthError::BodyTooLarge {
                status: 200,
                limit: 10
            }
            .kind(),
            FailureKind::Transient
        );
        assert_eq!(
            OAuthError::InsecureEndpoint.kind(),
            FailureKind::Configuration
        );
    }

    #[test]
    fn presentation_of_every_variant() {
        use Presentation::*;
        let cases = [
            (OAuthError::InvalidEndpoint("no host"), NotSent, None),
            (OAuthError::InsecureEndpoint, NotSent, None),
            (OAuthError::Connect, NotSent, None),
            (rejected("invalid_grant", 400), Refused, Some(400)),
            (rejected("server_error", 500), Refused, Some(500)),
            (
                OAuthError::Throttled {
                    status: 429,
                    retry_after: None,
                },
                Refused,
                Some(429),
            ),
            (
                OAuthError::UnexpectedStatus { status: 502 },
                Refused,
                Some(502),
            ),
            (OAuthError::Redirect { status: 302 }, Refused, Some(302)),
            (OAuthError::Redirect { status: 0 }, Unknown, None),
            (OAuthError::Timeout(Duration::from_secs(1)), Unknown, None),
            (OAuthError::Transport, Unknown, None),
            (
                OAuthError::BodyTooLarge {
                    status: 200,
                    limit: 10,
                },
                Unknown,
                None,
            ),
            (
                OAuthError::BodyTooLarge {
                    status: 400,
                    limit: 10,
                },
                Refused,
                Some(400),
            ),
            (
                OAuthError::Malformed {
                    status: 200,
                    problem: "cut short",
                },
                Unknown,
                None,
            ),
            (
                OAuthError::Malformed {
                    status: 400,
                    problem: "odd",
                },
                Refused,
                Some(400),
            ),
            (OAuthError::UnreadableSuccess { status: 200 }, Unknown, None),
            (OAuthError::UnreadableSuccess { status: 204 }, Unknown, None),
        ];
        for (error, presentation, status) in cases {
            assert_eq!(error.presentation(), presentation, "{error}");
            // http_status() answers exactly for a complete refusal.
            assert_eq!(error.http_status(), status, "{error}");
        }
        let unreadable = OAuthError::UnreadableSuccess { status: 200 };
        assert_eq!(unreadable.kind(), FailureKind::Transient);
        assert_eq!(unreadable.category(), "UnreadableResponse");
    }

    #[test]
    fn error_codes_that_could_carry_data_are_replaced() {
        assert_eq!(ErrorCode::new("invalid_grant").as_str(), "invalid_grant");
        assert_eq!(
            ErrorCode::new("token eyJhbGciOi.leaked").as_str(),
            "unrecognized_error"
        );
        assert_eq!(
            ErrorCode::new(&"a".repeat(65)).as_str(),
            "unrecognized_error"
        );
        assert_eq!(ErrorCode::new("").as_str(), "unrecognized_error");
    }

    #[test]
    fn messages_carry_code_and_status() {
        let message = rejected("invalid_grant", 400).to_string();
        assert_eq!(
            message,
            "token endpoint answered HTTP 400 with OAuth error invalid_grant"
        );
        let throttled = OAuthError::Throttled {
            status: 429,
            retry_after: Some(Duration::from_secs(7)),
        };
        assert!(throttled.to_string().ends_with("retry after 7s"));
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0).unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
