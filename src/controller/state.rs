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
const CLAIM: &str = "claim";
const BOUND_ORIGIN: &str = "bound_origin";
const BOUND_CLIENT_ID: &str = "bound_client_id";
const REJECTED_SHA256: &str = "rejected_refresh_token_sha256";
const REQUEST_SHA256: &str = "request_sha256";
const ROTATES: &str = "provider_rotates_refresh_tokens";
const IMPORT_SECRET_VERSION: &str = "import_secret_resource_version";
const REFRESH_TOKEN_EXPIRES_AT: &str = "refresh_token_expires_at";

/// What the state Secret holds.
#[derive(Clone, Default)]
pub struct TokenState {
    /// The newest refresh token of the chain: the only one the provider still accepts.
    pub refresh_token: Option<SecretString>,
    /// When `refresh_token` expires: from the provider's answer (`refresh_expires_in`, ...) or
    /// `spec.refreshTokenLifetime`; `None` when unknown.
    pub refresh_token_expires_at: Option<DateTime<Utc>>,
    /// SHA-256 of the last refresh token imported from the user's Secret, to notice a new one
    /// without keeping a second copy of the value.
    pub imported_fingerprint: Option<String>,
    /// resourceVersion of the import Secret when its refresh token was imported: while the
    /// import Secret still has it, there is nothing new to import and nothing to read.
    pub import_secret_version: Option<String>,
    pub access: Option<AccessToken>,
    /// A presentation of the refresh token that may be in flight, or whose answer was lost.
    pub claim: Option<Claim>,
    /// Where the refresh token may be sent: the token endpoint origin and client id it was
    /// imported for.
    pub binding: Option<Binding>,
    /// Fingerprint of a refresh token the provider rejected (`invalid_grant`); it is never
    /// presented again.
    pub rejected_fingerprint: Option<String>,
    /// Fingerprint of the token request (endpoint, client, grant, scopes, audience, extra
    /// parameters) the access token was issued for; a spec edit that changes it asks again.
    pub request_fingerprint: Option<String>,
    /// Whether the provider answered a refresh with a different refresh token; `None` until a
    /// refresh succeeded.
    pub rotates: Option<bool>,
}

pub use super::chain::protocol::{Binding, Claim};

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
            .field("refresh_token_expires_at", &self.refresh_token_expires_at)
            .field("imported_fingerprint", &self.imported_fingerprint)
            .field("import_secret_version", &self.import_secret_version)
            .field("access", &self.access)
            .field("claim", &self.claim)
            .field("binding", &self.binding)
            .field("rejected_fingerprint", &self.rejected_fingerprint)
            .field("request_fingerprint", &self.request_fingerprint)
            .field("rotates", &self.rotates)
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
        let binding = match (text(BOUND_ORIGIN), text(BOUND_CLIENT_ID)) {
            (Some(origin), Some(client_id)) => Some(Binding { origin, client_id }),
            _ => None,
        };
        TokenState {
            refresh_token: text(REFRESH_TOKEN).map(SecretString::from),
            refresh_token_expires_at: time(REFRESH_TOKEN_EXPIRES_AT),
            imported_fingerprint: text(IMPORTED_SHA256),
            import_secret_version: text(IMPORT_SECRET_VERSION),
            access,
            // An unreadable claim is treated as a lost answer by whoever reads it next: see
            // `Chain`. Dropping it silently would allow a second presentation in flight.
            claim: text(CLAIM).map(|raw| {
                serde_json::from_str(&raw).unwrap_or_else(|_| Claim {
                    id: String::new(),
                    holder: "(unreadable claim)".to_string(),
                    fingerprint: String::new(),
                    ttl_seconds: 0,
                    attempt: 1,
                    lost: true,
                    answered: false,
                    successor_lost: false,
                    once_more_at: None,
                })
            }),
            binding,
            rejected_fingerprint: text(REJECTED_SHA256),
            request_fingerprint: text(REQUEST_SHA256),
            rotates: text(ROTATES).and_then(|v| v.parse().ok()),
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
        if let Some(expires_at) = self.refresh_token_expires_at {
            put(REFRESH_TOKEN_EXPIRES_AT, &rfc3339(expires_at));
        }
        if let Some(fingerprint) = &self.imported_fingerprint {
            put(IMPORTED_SHA256, fingerprint);
        }
        if let Some(version) = &self.import_secret_version {
            put(IMPORT_SECRET_VERSION, version);
        }
        if let Some(claim) = &self.claim {
            put(CLAIM, &serde_json::to_string(claim).unwrap_or_default());
        }
        if let Some(binding) = &self.binding {
            put(BOUND_ORIGIN, &binding.origin);
            put(BOUND_CLIENT_ID, &binding.client_id);
        }
        if let Some(rejected) = &self.rejected_fingerprint {
            put(REJECTED_SHA256, rejected);
        }
        if let Some(request) = &self.request_fingerprint {
            put(REQUEST_SHA256, request);
        }
        if let Some(rotates) = self.rotates {
            put(ROTATES, &rotates.to_string());
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

    /// Fingerprint of the current refresh token.
    pub fn refresh_fingerprint(&self) -> Option<String> {
        self.refresh_token
            .as_ref()
            .map(|t| fingerprint(t.expose_secret()))
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
            refresh_token_expires_at: Some(at(90 * 86_400)),
            imported_fingerprint: Some(fingerprint("imported")),
            import_secret_version: Some("41".into()),
            access: Some(AccessToken {
                token: SecretString::from("at"),
                token_type: "Bearer".into(),
                scope: Some("a b".into()),
                issued_at: at(0),
                expires_at: at(3600),
                refresh_at: at(2400),
            }),
            claim: Some(Claim {
                id: "pod-a/1234/7".into(),
                holder: "pod-a/1234".into(),
                fingerprint: fingerprint("rt"),
                ttl_seconds: 40,
                attempt: 2,
                lost: true,
                answered: false,
                successor_lost: false,
                once_more_at: None,
            }),
            binding: Some(Binding {
                origin: "https://idp.test:443".into(),
                client_id: "app".into(),
            }),
            rejected_fingerprint: Some(fingerprint("old")),
            request_fingerprint: Some(fingerprint("request")),
            rotates: Some(true),
        };
        let secret = Secret {
            data: Some(state.to_data()),
            ..Secret::default()
        };
        let read = TokenState::from_secret(&secret);
        assert_eq!(read.refresh_token.unwrap().expose_secret(), "rt");
        assert_eq!(read.refresh_token_expires_at, Some(at(90 * 86_400)));
        assert_eq!(
            secret.data.as_ref().unwrap()[REFRESH_TOKEN_EXPIRES_AT].0,
            b"2024-02-12T22:13:20Z"
        );
        assert_eq!(read.imported_fingerprint, state.imported_fingerprint);
        assert_eq!(read.import_secret_version, state.import_secret_version);
        let access = read.access.unwrap();
        assert_eq!(access.token.expose_secret(), "at");
        assert_eq!(access.expires_at, at(3600));
        assert_eq!(access.refresh_at, at(2400));
        assert_eq!(access.scope.as_deref(), Some("a b"));
        assert_eq!(read.claim, state.claim);
        assert_eq!(read.binding, state.binding);
        assert_eq!(read.rejected_fingerprint, state.rejected_fingerprint);
        assert_eq!(read.request_fingerprint, state.request_fingerprint);
        assert_eq!(read.rotates, Some(true));
    }

    #[test]
    fn an_unreadable_claim_reads_as_a_lost_answer_not_as_no_claim() {
        let data = BTreeMap::from([(CLAIM.to_string(), ByteString(b"{not json".to_vec()))]);
        let secret = Secret {
            data: Some(data),
            ..Secret::default()
        };
        let claim = TokenState::from_secret(&secret).claim.unwrap();
        assert!(claim.lost);
        assert_eq!(claim.attempt, 1);
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
    fn an_unknown_or_garbled_refresh_token_expiry_reads_as_unknown() {
        let state = TokenState {
            refresh_token: Some(SecretString::from("rt")),
            ..TokenState::default()
        };
        let data = state.to_data();
        assert!(!data.contains_key(REFRESH_TOKEN_EXPIRES_AT));
        let mut data = data;
        data.insert(
            REFRESH_TOKEN_EXPIRES_AT.to_string(),
            ByteString(b"in 90 days".to_vec()),
        );
        let secret = Secret {
            data: Some(data),
            ..Secret::default()
        };
        let state = TokenState::from_secret(&secret);
        assert!(state.refresh_token.is_some());
        assert_eq!(state.refresh_token_expires_at, None);
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
