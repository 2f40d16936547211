//! Turning a user's spec into validated settings, with messages that say what to fix.

use std::time::Duration;

use url::Url;

use super::state::{Binding, fingerprint};
use crate::api::{
    ClientAuthentication, DEFAULT_CLIENT_ID_KEY, DEFAULT_CLIENT_SECRET_KEY,
    DEFAULT_MIN_REFRESH_INTERVAL, DEFAULT_REFRESH_TOKEN_EXPIRY_WARNING, DEFAULT_REFRESH_TOKEN_KEY,
    OAuthToken, OAuthTokenSpec, Reauthorization,
};
use crate::oauth::budget::Limit;
use crate::oauth::{AuthMethod, TokenClient};
use crate::schedule::{RefreshPolicy, parse_duration};

/// Lifetime assumed when the provider gives no expiry at all.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// A Secret key the controller reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRef {
    pub secret: String,
    pub key: String,
}

/// Where the client's identity comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSource {
    pub method: AuthMethod,
    /// Literal `spec.clientId`, which wins over `id_key`.
    pub client_id: Option<String>,
    pub id_key: Option<KeyRef>,
    pub secret_key: Option<KeyRef>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantSettings {
    /// A refresh-token chain, begun by an import (`import`) or a device authorization
    /// (`device`), or either.
    RefreshToken {
        import: Option<KeyRef>,
        /// The device authorization endpoint, when the chain is begun and restored by the
        /// device flow.
        device: Option<Url>,
    },
    ClientCredentials,
}

/// A spec that passed validation.
#[derive(Clone, Debug)]
pub struct Settings {
    pub endpoint: Url,
    pub client: ClientSource,
    pub grant: GrantSettings,
    pub policy: RefreshPolicy,
    pub default_lifetime: Duration,
    /// `spec.refreshTokenLifetime`: how long a refresh token lives after it was issued, when
    /// the provider does not say.
    pub refresh_token_lifetime: Option<Duration>,
    pub target_secret: String,
    /// The budget this OAuthToken declares for its token endpoint's origin, if any.
    pub budget: Option<Limit>,
}

impl Settings {
    /// Where a refresh token used with these settings goes: the endpoint's origin (scheme, host,
    /// port) and the client id.
    pub fn binding(&self, client_id: &str) -> Binding {
        Binding {
            origin: self.endpoint.origin().ascii_serialization(),
            client_id: client_id.to_string(),
        }
    }

    /// Fingerprint of everything that shapes the token request; an edit that changes it asks
    /// for a new token, others (secretName, refresh timing, ...) do not.
    pub fn request_fingerprint(&self, client_id: &str, spec: &OAuthTokenSpec) -> String {
        let grant = match &self.grant {
            GrantSettings::RefreshToken { .. } => "refresh_token",
            GrantSettings::ClientCredentials => "client_credentials",
        };
        let shape = serde_json::json!({
            "endpoint": self.endpoint.as_str(),
            "method": format!("{:?}", self.client.method),
            "clientId": client_id,
            "grant": grant,
            "scopes": spec.scopes,
            "audience": spec.audience,
            "extraParameters": spec.extra_parameters,
        });
        fingerprint(&shape.to_string())
    }

    /// Names of every Secret the spec references as input.
    pub fn referenced_secrets(&self) -> Vec<&str> {
        let mut names: Vec<&str> = [&self.client.id_key, &self.client.secret_key]
            .into_iter()
            .flatten()
            .map(|k| k.secret.as_str())
            .collect();
        if let GrantSettings::RefreshToken {
            import: Some(import),
            ..
        } = &self.grant
        {
            names.push(&import.secret);
        }
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// Validates the spec. The error is a user-facing message for the `InvalidSpec` condition.
pub fn resolve(token: &OAuthToken, token_client: &TokenClient) -> Result<Settings, String> {
    let spec = &token.spec;
    let endpoint = token_client
        .check_endpoint(&spec.token_endpoint)
        .map_err(|e| format!("spec.tokenEndpoint: {e}"))?;

    let grant = match (
        &spec.grant.refresh_token,
        &spec.grant.client_credentials,
        &spec.grant.device_code,
    ) {
        (Some(refresh), None, None) => {
            let reference = &refresh.initial_refresh_token_secret_ref;
            check_secret_name(
                "spec.grant.refreshToken.initialRefreshTokenSecretRef.name",
                &reference.name,
            )?;
            let device = match (
                refresh.reauthorization,
                &refresh.device_authorization_endpoint,
            ) {
                (Reauthorization::Import, _) => None,
                (Reauthorization::DeviceCode, Some(raw)) => Some(device_endpoint(
                    "spec.grant.refreshToken.deviceAuthorizationEndpoint",
                    raw,
                    &endpoint,
                    token_client,
                )?),
                (Reauthorization::DeviceCode, None) => {
                    return Err(
                        "spec.grant.refreshToken.reauthorization DeviceCode needs deviceAuthorizationEndpoint"
                            .to_string(),
                    );
                }
            };
            GrantSettings::RefreshToken {
                import: Some(KeyRef {
                    secret: reference.name.clone(),
                    key: reference
                        .key
                        .clone()
                        .unwrap_or_else(|| DEFAULT_REFRESH_TOKEN_KEY.to_string()),
                }),
                device,
            }
        }
        (None, Some(_), None) => GrantSettings::ClientCredentials,
        (None, None, Some(device)) => GrantSettings::RefreshToken {
            import: None,
            device: Some(device_endpoint(
                "spec.grant.deviceCode.deviceAuthorizationEndpoint",
                &device.device_authorization_endpoint,
                &endpoint,
                token_client,
            )?),
        },
        _ => {
            return Err(
                "spec.grant: set exactly one of refreshToken, clientCredentials or deviceCode"
                    .to_string(),
            );
        }
    };

    let method = match spec.client_authentication {
        ClientAuthentication::ClientSecretBasic => AuthMethod::ClientSecretBasic,
        ClientAuthentication::ClientSecretPost => AuthMethod::ClientSecretPost,
        ClientAuthentication::None => AuthMethod::None,
    };
    let client = match &spec.client_secret_ref {
        Some(reference) => {
            check_secret_name("spec.clientSecretRef.name", &reference.name)?;
            let key = |configured: &Option<String>, default: &str| KeyRef {
                secret: reference.name.clone(),
                key: configured.clone().unwrap_or_else(|| default.to_string()),
            };
            ClientSource {
                method,
                client_id: spec.client_id.clone(),
                id_key: spec
                    .client_id
                    .is_none()
                    .then(|| key(&reference.client_id_key, DEFAULT_CLIENT_ID_KEY)),
                secret_key: (method != AuthMethod::None)
                    .then(|| key(&reference.client_secret_key, DEFAULT_CLIENT_SECRET_KEY)),
            }
        }
        None if method == AuthMethod::None && spec.client_id.is_some() => ClientSource {
            method,
            client_id: spec.client_id.clone(),
            id_key: None,
            secret_key: None,
        },
        None => {
            return Err(
                "spec.clientSecretRef is required unless clientAuthentication is None and clientId is set"
                    .to_string(),
            );
        }
    };
    if method == AuthMethod::None && grant == GrantSettings::ClientCredentials {
        return Err(
            "spec.grant.clientCredentials needs an authenticated client; clientAuthentication None is for public clients"
                .to_string(),
        );
    }

    let policy = match (&spec.refresh_before, spec.refresh_before_percentage) {
        (Some(_), Some(_)) => {
            return Err(
                "set at most one of spec.refreshBefore and spec.refreshBeforePercentage"
                    .to_string(),
            );
        }
        (Some(before), None) => RefreshPolicy::Before(
            parse_duration(before).map_err(|e| format!("spec.refreshBefore: {e}"))?,
        ),
        (None, Some(percent)) if (1..=99).contains(&percent) => {
            RefreshPolicy::RemainingPercent(percent)
        }
        (None, Some(percent)) => {
            return Err(format!(
                "spec.refreshBeforePercentage must be between 1 and 99, got {percent}"
            ));
        }
        (None, None) => RefreshPolicy::default(),
    };
    let default_lifetime = match &spec.default_token_lifetime {
        Some(text) => {
            let lifetime =
                parse_duration(text).map_err(|e| format!("spec.defaultTokenLifetime: {e}"))?;
            if lifetime < Duration::from_secs(1) {
                return Err("spec.defaultTokenLifetime must be at least 1s".to_string());
            }
            lifetime
        }
        None => DEFAULT_TOKEN_LIFETIME,
    };
    let refresh_token_lifetime = match &spec.refresh_token_lifetime {
        Some(_) if grant == GrantSettings::ClientCredentials => {
            return Err(
                "spec.refreshTokenLifetime only applies to grants with refresh tokens; the clientCredentials grant has none"
                    .to_string(),
            );
        }
        Some(text) => {
            let lifetime =
                parse_duration(text).map_err(|e| format!("spec.refreshTokenLifetime: {e}"))?;
            if lifetime < Duration::from_secs(1) {
                return Err("spec.refreshTokenLifetime must be at least 1s".to_string());
            }
            Some(lifetime)
        }
        None => None,
    };

    // Read where they are used (before the rest of the spec: a refresh request is judged
    // first); checked here so that a bad value is InvalidSpec.
    min_refresh_interval(spec)?;
    if spec.refresh_token_expiry_warning.is_some() && grant == GrantSettings::ClientCredentials {
        return Err(
            "spec.refreshTokenExpiryWarning only applies to grants with refresh tokens; the clientCredentials grant has none"
                .to_string(),
        );
    }
    refresh_token_expiry_warning(spec)?;

    let target_secret = token.target_secret_name();
    check_secret_name("spec.secretName", &target_secret)?;
    if crate::controller::cache::referenced_secrets(token).contains(&target_secret) {
        return Err(format!(
            "spec.secretName: {target_secret:?} is also read by this OAuthToken (client or import Secret); the operator writes the access token there, choose another name"
        ));
    }
    if target_secret == token.state_secret_name() {
        return Err(format!(
            "spec.secretName: {target_secret:?} is the operator-only Secret that keeps the refresh token; pods must not mount it, choose another name"
        ));
    }

    let budget = spec.token_endpoint_budget.as_ref().map(|budget| Limit {
        per_minute: budget.requests_per_minute.max(1),
        burst: budget
            .burst
            .unwrap_or(budget.requests_per_minute / 10)
            .max(1),
    });

    Ok(Settings {
        endpoint,
        client,
        grant,
        policy,
        default_lifetime,
        refresh_token_lifetime,
        target_secret,
        budget,
    })
}

/// `spec.minRefreshInterval`, or its default.
pub fn min_refresh_interval(spec: &OAuthTokenSpec) -> Result<Duration, String> {
    parse_duration(
        spec.min_refresh_interval
            .as_deref()
            .unwrap_or(DEFAULT_MIN_REFRESH_INTERVAL),
    )
    .map_err(|e| format!("spec.minRefreshInterval: {e}"))
}

/// `spec.refreshTokenExpiryWarning`, or its default.
pub fn refresh_token_expiry_warning(spec: &OAuthTokenSpec) -> Result<Duration, String> {
    parse_duration(
        spec.refresh_token_expiry_warning
            .as_deref()
            .unwrap_or(DEFAULT_REFRESH_TOKEN_EXPIRY_WARNING),
    )
    .map_err(|e| format!("spec.refreshTokenExpiryWarning: {e}"))
}

/// A device authorization endpoint gets the client's credentials, so it must be on the token
/// endpoint's origin: a credential is only sent where it belongs.
fn device_endpoint(
    field: &str,
    raw: &str,
    token_endpoint: &Url,
    token_client: &TokenClient,
) -> Result<Url, String> {
    let url = token_client
        .check_endpoint(raw)
        .map_err(|e| format!("{field}: {e}"))?;
    if url.origin() != token_endpoint.origin() {
        return Err(format!(
            "{field}: must be on the token endpoint's origin ({}); the client's credentials are only sent there",
            token_endpoint.origin().ascii_serialization()
        ));
    }
    Ok(url)
}

/// Secret names are DNS subdomains (RFC 1123): lower case alphanumerics, `-` and `.`.
fn check_secret_name(field: &str, name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(format!("{field}: {name:?} is not a valid Secret name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        ClientCredentialsGrant, ClientSecretRef, Grant, OAuthTokenSpec, RefreshTokenGrant,
        SecretKeyRef,
    };
    use crate::oauth::ClientOptions;

    fn spec() -> OAuthTokenSpec {
        OAuthTokenSpec {
            token_endpoint: "https://idp.test/token".into(),
            client_authentication: ClientAuthentication::ClientSecretBasic,
            client_secret_ref: Some(ClientSecretRef {
                name: "client".into(),
                client_id_key: None,
                client_secret_key: Some("secret".into()),
            }),
            client_id: None,
            grant: Grant {
                refresh_token: Some(RefreshTokenGrant {
                    initial_refresh_token_secret_ref: SecretKeyRef {
                        name: "auth".into(),
                        key: None,
                    },
                    reauthorization: Default::default(),
                    device_authorization_endpoint: None,
                }),
                client_credentials: None,
                device_code: None,
            },
            scopes: vec![],
            audience: None,
            extra_parameters: Default::default(),
            refresh_before: None,
            refresh_before_percentage: None,
            default_token_lifetime: None,
            refresh_token_lifetime: None,
            secret_name: None,
            publish_refresh_token: false,
            token_endpoint_budget: None,
            suspend: false,
            min_refresh_interval: None,
            refresh_token_expiry_warning: None,
            authorization_endpoint: None,
        }
    }

    fn resolve_spec(spec: OAuthTokenSpec) -> Result<Settings, String> {
        let token = OAuthToken::new("allegro", spec);
        resolve(&token, &TokenClient::new(ClientOptions::default()).unwrap())
    }

    #[test]
    fn defaults_are_filled_in() {
        let settings = resolve_spec(spec()).unwrap();
        assert_eq!(settings.target_secret, "allegro");
        assert_eq!(settings.policy, RefreshPolicy::RemainingPercent(33));
        assert_eq!(settings.default_lifetime, DEFAULT_TOKEN_LIFETIME);
        assert_eq!(
            settings.grant,
            GrantSettings::RefreshToken {
                import: Some(KeyRef {
                    secret: "auth".into(),
                    key: "refresh_token".into()
                }),
                device: None,
            }
        );
        assert_eq!(
            settings.client.secret_key,
            Some(KeyRef {
                secret: "client".into(),
                key: "secret".into()
            })
        );
        assert_eq!(settings.referenced_secrets(), vec!["auth", "client"]);
    }

    #[test]
    fn exactly_one_grant() {
        let mut both = spec();
        both.grant.client_credentials = Some(ClientCredentialsGrant {});
        assert!(resolve_spec(both).unwrap_err().contains("exactly one"));
        let mut neither = spec();
        neither.grant.refresh_token = None;
        assert!(resolve_spec(neither).unwrap_err().contains("exactly one"));
    }

    #[test]
    fn refresh_policies_are_exclusive_and_bounded() {
        let mut both = spec();
        both.refresh_before = Some("15m".into());
        both.refresh_before_percentage = Some(20);
        assert!(resolve_spec(both).is_err());
        let mut out_of_range = spec();
        out_of_range.refresh_before_percentage = Some(100);
        assert!(
            resolve_spec(out_of_range)
                .unwrap_err()
                .contains("between 1 and 99")
        );
        let mut bad_duration = spec();
        bad_duration.refresh_before = Some("a while".into());
        assert!(
            resolve_spec(bad_duration)
                .unwrap_err()
                .contains("spec.refreshBefore")
        );
        let mut before = spec();
        before.refresh_before = Some("15m".into());
        assert_eq!(
            resolve_spec(before).unwrap().policy,
            RefreshPolicy::Before(Duration::from_secs(900))
        );
    }

    #[test]
    fn refresh_token_lifetime_is_a_duration_for_the_refresh_token_grant_only() {
        assert_eq!(resolve_spec(spec()).unwrap().refresh_token_lifetime, None);
        let mut allegro = spec();
        allegro.refresh_token_lifetime = Some("90d".into());
        assert_eq!(
            resolve_spec(allegro.clone())
                .unwrap()
                .refresh_token_lifetime,
            Some(Duration::from_secs(90 * 86_400))
        );
        for bad in ["soon", "", "0s"] {
            let mut odd = spec();
            odd.refresh_token_lifetime = Some(bad.into());
            assert!(
                resolve_spec(odd)
                    .unwrap_err()
                    .contains("spec.refreshTokenLifetime"),
                "{bad}"
            );
        }
        allegro.grant = Grant {
            refresh_token: None,
            client_credentials: Some(ClientCredentialsGrant {}),
            device_code: None,
        };
        assert!(
            resolve_spec(allegro)
                .unwrap_err()
                .contains("only applies to grants with refresh tokens")
        );
    }

    #[test]
    fn insecure_endpoints_are_refused_with_a_hint() {
        let mut insecure = spec();
        insecure.token_endpoint = "http://idp.test/token".into();
        assert!(
            resolve_spec(insecure)
                .unwrap_err()
                .contains("--allow-insecure-http")
        );
    }

    #[test]
    fn public_clients_need_no_secret_but_cannot_use_client_credentials() {
        let mut public = spec();
        public.client_authentication = ClientAuthentication::None;
        public.client_secret_ref = None;
        public.client_id = Some("app".into());
        let settings = resolve_spec(public.clone()).unwrap();
        assert_eq!(settings.client.secret_key, None);
        public.grant = Grant {
            refresh_token: None,
            client_credentials: Some(ClientCredentialsGrant {}),
            device_code: None,
        };
        assert!(resolve_spec(public).is_err());
        let mut missing = spec();
        missing.client_secret_ref = None;
        assert!(
            resolve_spec(missing)
                .unwrap_err()
                .contains("clientSecretRef")
        );
    }

    #[test]
    fn secret_names_are_checked() {
        let mut bad = spec();
        bad.secret_name = Some("Bad_Name".into());
        assert!(resolve_spec(bad).unwrap_err().contains("spec.secretName"));
        let mut state = spec();
        state.secret_name = Some("allegro-oauth-state".into());
        assert!(
            resolve_spec(state)
                .unwrap_err()
                .contains("operator-only Secret")
        );
        for read in ["client", "auth"] {
            let mut overwrite = spec();
            overwrite.secret_name = Some(read.into());
            assert!(
                resolve_spec(overwrite)
                    .unwrap_err()
                    .contains("also read by this OAuthToken"),
                "{read}"
            );
        }
    }

    #[test]
    fn only_what_changes_the_token_request_changes_its_fingerprint() {
        let base = resolve_spec(spec()).unwrap();
        let fingerprint =
            |settings: &Settings, spec: &OAuthTokenSpec| settings.request_fingerprint("app", spec);
        let original = fingerprint(&base, &spec());
        let mut cosmetic = spec();
        cosmetic.secret_name = Some("other".into());
        cosmetic.refresh_before = Some("10m".into());
        cosmetic.publish_refresh_token = true;
        cosmetic.default_token_lifetime = Some("2h".into());
        cosmetic.refresh_token_lifetime = Some("90d".into());
        assert_eq!(
            fingerprint(&resolve_spec(cosmetic.clone()).unwrap(), &cosmetic),
            original
        );
        assert_ne!(base.request_fingerprint("other-client", &spec()), original);
        let mut scoped = spec();
        scoped.scopes = vec!["read".into()];
        assert_ne!(fingerprint(&base, &scoped), original);
        let mut moved = spec();
        moved.token_endpoint = "https://idp.test/oauth2/token".into();
        assert_ne!(
            fingerprint(&resolve_spec(moved.clone()).unwrap(), &moved),
            original
        );
    }

    #[test]
    fn the_binding_is_origin_and_client() {
        let mut custom_port = spec();
        custom_port.token_endpoint = "https://idp.test:8443/a/token".into();
        let settings = resolve_spec(custom_port).unwrap();
        let binding = settings.binding("app");
        assert_eq!(binding.origin, "https://idp.test:8443");
        assert_eq!(binding.client_id, "app");
        let default_port = resolve_spec(spec()).unwrap().binding("app");
        assert_eq!(default_port.origin, "https://idp.test");
    }
}
