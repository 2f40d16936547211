//! Condition types and reasons, and the one place that sets a condition.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// True while the target Secret holds an access token that has not expired.
pub const READY: &str = "Ready";
/// True when the provider rejected the refresh token and a human must re-authorize.
pub const REAUTHORIZATION_REQUIRED: &str = "ReauthorizationRequired";
/// True within `spec.refreshTokenExpiryWarning` of the refresh token's expiry: a human should
/// authorize again before the chain dies.
pub const REFRESH_TOKEN_EXPIRING: &str = "RefreshTokenExpiring";

/// Condition reasons. PascalCase, stable: users alert on them.
pub mod reason {
    /// A valid access token is published.
    pub const TOKEN_VALID: &str = "TokenValid";
    /// The provider answered `invalid_grant`: the refresh token is dead.
    pub const INVALID_GRANT: &str = "InvalidGrant";
    /// The provider rejected the client (`invalid_client` / `unauthorized_client`).
    pub const INVALID_CLIENT: &str = "InvalidClient";
    /// The provider rejected the request for another OAuth reason (`invalid_scope`, ...).
    pub const PROVIDER_REJECTED: &str = "ProviderRejected";
    /// The spec or a referenced Secret is unusable (missing key, bad duration, bad URL, ...).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The target Secret exists and is controlled by something else.
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    /// The access token expired and refreshing keeps failing for a reason that may pass.
    pub const REFRESH_FAILING: &str = "RefreshFailing";
    /// The refresh token was imported for another token endpoint origin or client id than the
    /// spec now names; it is only sent where it came from, so a fresh import is needed.
    pub const CHAIN_BINDING_CHANGED: &str = "ChainBindingChanged";
    /// The answers to the refresh token's last presentations were lost (timeout, a stopped
    /// process); the provider may have rotated it, so it is not presented again.
    pub const ANSWER_LOST: &str = "AnswerLost";
    /// The state Secret holding the refresh-token chain was deleted; the import Secret still
    /// holds a refresh token that was used up long ago.
    pub const STATE_LOST: &str = "StateLost";
    /// The provider rotated the refresh token, but the new one could not be stored in time
    /// (the Kubernetes API was unreachable for too long); the old one is not presented again.
    pub const SUCCESSOR_LOST: &str = "SuccessorLost";
    /// The answer to a presentation of the refresh token is unknown (lost, or another process
    /// presented it and has not stored what it got): the published token may already be
    /// invalid, as some providers revoke it the moment they rotate.
    pub const REFRESH_UNCONFIRMED: &str = "RefreshUnconfirmed";
    /// Another process stored a different refresh token while this one was refreshing.
    pub const CHAIN_CONFLICT: &str = "ChainConflict";
    /// The refresh token grant is usable.
    pub const AUTHORIZED: &str = "Authorized";
    /// The grant does not use refresh tokens.
    pub const NOT_APPLICABLE: &str = "NotApplicable";
    /// `spec.suspend` is true: no token requests.
    pub const SUSPENDED: &str = "Suspended";
    /// The refresh token expires within `spec.refreshTokenExpiryWarning`.
    pub const EXPIRES_SOON: &str = "ExpiresSoon";
    /// The refresh token's expiry has passed.
    pub const EXPIRED: &str = "Expired";
    /// The refresh token is valid for longer than `spec.refreshTokenExpiryWarning`.
    pub const NOT_EXPIRING: &str = "NotExpiring";
    /// Neither the provider nor `spec.refreshTokenLifetime` says when the refresh token expires.
    pub const EXPIRY_UNKNOWN: &str = "ExpiryUnknown";
    /// A device authorization waits for a human to enter the user code.
    pub const AUTHORIZATION_PENDING: &str = "AuthorizationPending";
    /// The human declined the device authorization (`access_denied`).
    pub const ACCESS_DENIED: &str = "AccessDenied";
    /// The device code expired before a human entered it.
    pub const AUTHORIZATION_EXPIRED: &str = "AuthorizationExpired";
    /// A device authorization succeeded but the provider issued no refresh token (a scope such
    /// as `offline_access` is missing).
    pub const NO_REFRESH_TOKEN: &str = "NoRefreshToken";
}

/// Status values of a condition.
pub const TRUE: &str = "True";
pub const FALSE: &str = "False";
pub const UNKNOWN: &str = "Unknown";

/// Converts a domain timestamp to the `metav1.Time` the Kubernetes types use.
///
/// The domain works in `chrono`; k8s-openapi 0.29 wraps `jiff`. This is the only conversion.
pub fn to_kube_time(at: DateTime<Utc>) -> Time {
    let seconds = at.timestamp();
    Time(jiff::Timestamp::from_second(seconds).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

/// Sets condition `type_` in `conditions`, keeping `lastTransitionTime` unless the status flips.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    observed_generation: Option<i64>,
    now: DateTime<Utc>,
) {
    let message = truncate_message(message);
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = to_kube_time(now);
            }
            existing.status = status.to_string();
            existing.reason = reason.to_string();
            existing.message = message;
            existing.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation,
            last_transition_time: to_kube_time(now),
        }),
    }
}

/// Returns the condition of the given type.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition of the given type has status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == TRUE)
}

/// The apiserver limits condition messages to 32 KiB; ours stay far shorter, but a provider's
/// error code is echoed into them, so bound them anyway.
fn truncate_message(mut message: String) -> String {
    const MAX: usize = 1024;
    if message.len() > MAX {
        let mut cut = MAX;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(seconds, 0).unwrap()
    }

    #[test]
    fn transition_time_changes_only_on_flip() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            READY,
            TRUE,
            "A",
            "m1".into(),
            Some(1),
            at(100),
        );
        set(
            &mut conditions,
            READY,
            TRUE,
            "B",
            "m2".into(),
            Some(2),
            at(200),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, to_kube_time(at(100)));
        assert_eq!(conditions[0].reason, "B");
        assert_eq!(conditions[0].observed_generation, Some(2));
        set(
            &mut conditions,
            READY,
            FALSE,
            "C",
            "m3".into(),
            Some(2),
            at(300),
        );
        assert_eq!(conditions[0].last_transition_time, to_kube_time(at(300)));
        assert!(!is_true(&conditions, READY));
    }

    #[test]
    fn long_messages_are_bounded_on_a_char_boundary() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            READY,
            TRUE,
            "A",
            "é".repeat(2000),
            None,
            at(1),
        );
        assert!(conditions[0].message.len() <= 1024);
    }

    #[test]
    fn kube_time_matches_rfc3339() {
        let time = to_kube_time(at(1_700_000_000));
        assert_eq!(time.0.to_string(), "2023-11-14T22:13:20Z");
    }
}
