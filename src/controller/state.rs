//! The operator-only state Secret: the refresh-token chain and the last issued access token.
//!
//! It is the source of truth. The pod-facing Secret is a projection of it, so a deleted target
//! Secret is recreated without a token request, and a restart knows when the next refresh is due
//! without asking the provider.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

const REFRESH_TOKEN: &str = "refresh_token";
const IMPORTED_SHA256: &str = "imported_refresh_token_sha256";
const ACCESS_TOKEN: &str = "access_token";
const TOKEN_TYPE: &str = "token_type";
const SCOPE: &str = "scope";
const ISSUED_AT: &str = "issued_at";
const EXPIRES_AT: &str = "expires_at";
const REFRESH_AT: &str = "refresh_at";

/// What the state Secret holds.
#[derive(Clone, Default)]
pub struct TokenState {
    /// The newest refresh token of the chain: the only one the provider still accepts.
    pub refresh_token: Option<SecretString>,
    /// SHA-256 of the last refresh token imported from the user's Secret, to notice a new one
    /// without keeping a second copy of the value.
    pub imported_fingerprint: Option<String>,
    pub access: Option<AccessToken>,
}

/// The last access token obtained.
#[derive(Clone)]
pub struct AccessToken {
    pub token: SecretString,
    pub token_type: String,
    pub scope: Option<String>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// When to refresh, computed once (jitter included) when the token was issued.
    pub refresh_at: DateTime<Utc>,
}

impl std::fmt::Debug for TokenState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenState")
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("imported_fingerprint", &self.imported_fingerprint)
            .field("access", &self.access)
            .finish()
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("refresh_at", &self.refresh_at)
            .finish()
    }
}

/// Hex SHA-256 of a secret value; safe to compare and store, useless to an attacker for a
/// high-entropy token.
pub fn fingerprint(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl TokenState {
    /// Reads the state from a Secret's data. Unreadable entries count as absent: the worst case
    /// is one extra token request, never a crash loop on a hand-edited Secret.
    pub fn from_secret(secret: &Secret) -> TokenState {
        let empty = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        let text = |key: &str| {
            data.get(key)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .filter(|v| !v.is_empty())
        };
        let time = |key: &str| {
            text(key)
                .and_then(|v| DateTime::parse_from_rfc3339(&v).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        let access = match (
            text(ACCESS_TOKEN),
            time(ISSUED_AT),
            time(EXPIRES_AT),
            time(REFRESH_AT),
        ) {
            (Some(token), Some(issued_at), Some(expires_at), Some(refresh_at)) => {
                Some(AccessToken {
                    token: SecretString::from(token),
                    token_type: text(TOKEN_TYPE).unwrap_or_else(|| "Bearer".to_string()),
                    scope: text(SCOPE),
                    issued_at,
                    expires_at,
                    refresh_at,
                })
            }
            _ => None,
        };
        TokenState {
            refresh_token: text(REFRESH_TOKEN).map(SecretString::from),
            imported_fingerprint: text(IMPORTED_SHA256),
            access,
        }
    }

    /// The Secret data that stores this state.
    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::new();
        let mut put = |key: &str, value: &str| {
            data.insert(key.to_string(), ByteString(value.as_bytes().to_vec()));
        };
        if let Some(token) = &self.refresh_token {
            put(REFRESH_TOKEN, token.expose_secret());
        }
        if let Some(fingerprint) = &self.imported_fingerprint {
            put(IMPORTED_SHA256, fingerprint);
        }
        if let Some(access) = &self.access {
            put(ACCESS_TOKEN, access.token.expose_secret());
            put(TOKEN_TYPE, &access.token_type);
            if let Some(scope) = &access.scope {
                put(SCOPE, scope);
            }
            put(ISSUED_AT, &rfc3339(access.issued_at));
            put(EXPIRES_AT, &rfc3339(access.expires_at));
            put(REFRESH_AT, &rfc3339(access.refresh_at));
        }
        data
    }

    /// The access token, if it has not expired at `now`.
    pub fn valid_access(&self, now: DateTime<Utc>) -> Option<&AccessToken> {
        self.access.as_ref().filter(|a| a.expires_at > now)
    }
}

/// RFC 3339 in UTC with whole seconds, the format of `expires_at` in the target Secret.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn round_trips_through_secret_data() {
        let at = |s: i64| Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap();
        let state = TokenState {
            refresh_token: Some(SecretString::from("rt")),
            imported_fingerprint: Some(fingerprint("imported")),
            access: Some(AccessToken {
                token: SecretString::from("at"),
                token_type: "Bearer".into(),
                scope: Some("a b".into()),
                issued_at: at(0),
                expires_at: at(3600),
                refresh_at: at(2400),
            }),
        };
        let secret = Secret {
            data: Some(state.to_data()),
            ..Secret::default()
        };
        let read = TokenState::from_secret(&secret);
        assert_eq!(read.refresh_token.unwrap().expose_secret(), "rt");
        assert_eq!(read.imported_fingerprint, state.imported_fingerprint);
        let access = read.access.unwrap();
        assert_eq!(access.token.expose_secret(), "at");
        assert_eq!(access.expires_at, at(3600));
        assert_eq!(access.refresh_at, at(2400));
        assert_eq!(access.scope.as_deref(), Some("a b"));
    }

    #[test]
    fn partial_or_garbled_data_reads_as_no_access_token() {
        let mut data = BTreeMap::new();
        data.insert(ACCESS_TOKEN.to_string(), ByteString(b"at".to_vec()));
        data.insert(EXPIRES_AT.to_string(), ByteString(b"yesterday".to_vec()));
        let secret = Secret {
            data: Some(data),
            ..Secret::default()
        };
        let state = TokenState::from_secret(&secret);
        assert!(state.access.is_none());
        assert!(state.refresh_token.is_none());
    }

    #[test]
    fn fingerprint_is_stable_hex() {
        assert_eq!(
            fingerprint("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn debug_hides_tokens() {
        let state = TokenState {
            refresh_token: Some(SecretString::from("rt-value")),
            ..TokenState::default()
        };
        assert!(!format!("{state:?}").contains("rt-value"));
    }
}
