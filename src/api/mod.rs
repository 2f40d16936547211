//! The `OAuthToken` custom resource: the public API users write and `kubectl explain` shows.
//!
//! Doc comments on the spec and status types become the CRD's field descriptions, so they are
//! written for users, not for maintainers.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod conditions;
pub mod schema;

/// API group of every resource this operator serves.
pub const GROUP: &str = "oauth-token-operator.io";

/// Default keys looked up in the Secret named by `clientSecretRef`.
pub const DEFAULT_CLIENT_ID_KEY: &str = "client_id";
pub const DEFAULT_CLIENT_SECRET_KEY: &str = "client_secret";
/// Default key looked up in the Secret named by `initialRefreshTokenSecretRef`.
pub const DEFAULT_REFRESH_TOKEN_KEY: &str = "refresh_token";

/// Annotation that asks for one refresh: set it to a new value (a timestamp, a counter) and the
/// operator refreshes once, then records the value in `status.lastRefreshRequest`.
pub const REFRESH_ANNOTATION: &str = "oauth-token-operator.io/refresh";
/// `spec.minRefreshInterval` when unset.
pub const DEFAULT_MIN_REFRESH_INTERVAL: &str = "10s";
/// `spec.refreshTokenExpiryWarning` when unset.
pub const DEFAULT_REFRESH_TOKEN_EXPIRY_WARNING: &str = "7d";

/// Keeps an OAuth 2.0 access token fresh in a Secret that pods can mount.
///
/// The operator obtains an access token from `tokenEndpoint`, writes it to the Secret named by
/// `secretName` (keys `access_token`, `token_type`, `expires_at`) and refreshes it ahead of
/// expiry. With the `refreshToken` grant, rotated refresh tokens are kept in a separate Secret
/// that only the operator reads.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "oauth-token-operator.io",
    version = "v1alpha1",
    kind = "OAuthToken",
    plural = "oauthtokens",
    singular = "oauthtoken",
    shortname = "oat",
    namespaced,
    status = "OAuthTokenStatus",
    doc = "OAuthToken keeps an OAuth 2.0 access token fresh in a Secret that pods can mount.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Next Refresh","type":"string","jsonPath":".status.nextRefreshAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","priority":1,"description":"The Secret holding the published access token","jsonPath":".status.secretName"}"#,
    printcolumn = r#"{"name":"Failed Attempts","type":"integer","priority":1,"description":"Consecutive failed token requests since the last success","jsonPath":".status.failedAttempts"}"#,
    printcolumn = r#"{"name":"Reauthorization Required","type":"string","priority":1,"description":"True when a human must put a new refresh token in the import Secret","jsonPath":".status.conditions[?(@.type==\"ReauthorizationRequired\")].status"}"#,
    printcolumn = r#"{"name":"User Code","type":"string","priority":1,"description":"The code a human enters at the verification URI to authorize (device flow)","jsonPath":".status.authorization.userCode"}"#,
    printcolumn = r#"{"name":"Verification URI","type":"string","priority":1,"description":"Where a human enters the user code","jsonPath":".status.authorization.verificationUri"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::for_api_server)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.refreshBefore) && has(self.refreshBeforePercentage))",
     "message": "set at most one of refreshBefore and refreshBeforePercentage"},
    {"rule": "has(self.clientSecretRef) || (has(self.clientId) && has(self.clientAuthentication) && self.clientAuthentication == 'None')",
     "message": "clientSecretRef is required unless clientAuthentication is None and clientId is set"},
    {"rule": "!has(self.refreshTokenLifetime) || has(self.grant.refreshToken) || has(self.grant.deviceCode)",
     "message": "refreshTokenLifetime only applies to the refreshToken and deviceCode grants"},
    {"rule": "!has(self.refreshTokenExpiryWarning) || has(self.grant.refreshToken) || has(self.grant.deviceCode)",
     "message": "refreshTokenExpiryWarning only applies to the refreshToken and deviceCode grants"}
]))]
pub struct OAuthTokenSpec {
    /// URL of the provider's token endpoint, for example
    /// `https://allegro.pl/auth/oauth/token`. Must be `https://` unless the operator runs with
    /// `--allow-insecure-http`.
    #[schemars(length(min = 1, max = 2048), extend("x-kubernetes-validations" = [
        {"rule": "isURL(self) && url(self).getScheme() in ['https', 'http'] && url(self).getHostname() != ''",
         "message": "tokenEndpoint must be an absolute https:// URL (http:// only works with the operator flag --allow-insecure-http)"}
    ]))]
    pub token_endpoint: String,

    /// How the client authenticates at the token endpoint: `ClientSecretBasic` (HTTP Basic
    /// header, the default), `ClientSecretPost` (`client_id` and `client_secret` in the form
    /// body) or `None` (public client: only `client_id` is sent).
    #[serde(default)]
    pub client_authentication: ClientAuthentication,

    /// Secret in this namespace holding the client credentials. Required unless `clientId` is set
    /// and `clientAuthentication` is `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<ClientSecretRef>,

    /// Client identifier, for clients whose id is not secret. Takes precedence over the
    /// `clientIdKey` entry of `clientSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,

    /// How the operator obtains tokens. Set exactly one of `refreshToken` or
    /// `clientCredentials`.
    pub grant: Grant,

    /// Scopes to request, sent space-separated as the `scope` form parameter. Empty means the
    /// parameter is not sent and the provider's default applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,

    /// Value of the `audience` form parameter, for providers that need one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,

    /// Extra form parameters sent with every token request (for example `resource`). They cannot
    /// override the parameters the operator sets itself (`grant_type`, `refresh_token`,
    /// `client_id`, `client_secret`, `scope`, `audience`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_parameters: BTreeMap<String, String>,

    /// Refresh this long before the access token expires, as a duration such as `15m` or
    /// `1h30m`. Mutually exclusive with `refreshBeforePercentage`. When neither is set the
    /// token is refreshed when a third of its lifetime remains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub refresh_before: Option<String>,

    /// Refresh when this percentage (1-99) of the access token's lifetime remains. Mutually
    /// exclusive with `refreshBefore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub refresh_before_percentage: Option<u8>,

    /// Lifetime assumed for an access token when the provider sends no `expires_in` and the
    /// token is not a JWT with an `exp` claim, as a duration such as `1h`. Defaults to `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub default_token_lifetime: Option<String>,

    /// How long a refresh token stays usable after it was issued, as a duration such as `90d`,
    /// for providers whose token responses do not say so; a lifetime the provider states
    /// (`refresh_token_expires_in`, `refresh_expires_in`) wins. The clock starts when a refresh
    /// token is imported and, with providers that rotate refresh tokens, again at every
    /// refresh: `90d` fits a provider whose refresh tokens die after 90 days unused, like
    /// Allegro. The expiry is reported in `status.refreshTokenExpiresAt` and the metric
    /// `oauth_token_operator_refresh_token_expiry_timestamp_seconds`, and a rotating refresh
    /// token is refreshed before it expires. Only for the `refreshToken` grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub refresh_token_lifetime: Option<String>,

    /// Name of the Secret, in this namespace, that receives the access token. Defaults to the
    /// OAuthToken's name. The operator creates it and refuses to overwrite a Secret that it
    /// does not control. It may not be `<metadata.name>-oauth-state`, the operator-only Secret
    /// that keeps the refresh token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: Option<String>,

    /// Also write the current refresh token to the target Secret (key `refresh_token`). Off by
    /// default: anyone who can read the pod-facing Secret could otherwise use or burn the
    /// refresh token, and with rotating providers one stray use revokes the whole grant.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub publish_refresh_token: bool,

    /// Budget for requests to the token endpoint's origin (scheme, host and port), shared by
    /// every OAuthToken that sends to it: set it below the provider's rate limit. When
    /// OAuthTokens on one origin set different budgets, the strictest applies. Without it the
    /// operator's defaults apply (flags `--token-endpoint-requests-per-minute` and
    /// `--token-endpoint-burst`). A `429` or `503` answer with `Retry-After` pauses the whole
    /// origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint_budget: Option<RequestBudget>,

    /// Stop every token request while true: for maintenance, or while another refresher that
    /// uses the same refresh token is being retired (it must stop before the operator presents
    /// the refresh token). The published access token stays in its Secret until it expires;
    /// `Ready` is False with reason `Suspended`. Setting it back to false resumes refreshing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// Shortest time between two refreshes asked for with the annotation
    /// `oauth-token-operator.io/refresh`, as a duration such as `10s` (the default) or `1m`. A
    /// request that comes sooner is acknowledged in `status.lastRefreshRequest` without a new
    /// token request: a crash-looping consumer must not become a refresh storm at the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub min_refresh_interval: Option<String>,

    /// How long before `status.refreshTokenExpiresAt` the condition `RefreshTokenExpiring`
    /// turns True and a Warning Event asks a human to authorize again, as a duration such as
    /// `7d` (the default) or `36h`. Only for grants with refresh tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub refresh_token_expiry_warning: Option<String>,

    /// URL of the provider's authorization endpoint, for example
    /// `https://allegro.pl/auth/oauth/authorize`. The operator never calls it; `kubectl
    /// oauthtoken authorize` sends a human there to obtain the first refresh token with the
    /// authorization-code flow and PKCE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), extend("x-kubernetes-validations" = [
        {"rule": "isURL(self) && url(self).getScheme() in ['https', 'http'] && url(self).getHostname() != ''",
         "message": "authorizationEndpoint must be an absolute https:// URL"}
    ]))]
    pub authorization_endpoint: Option<String>,
}

/// A request rate with a burst.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestBudget {
    /// Requests per minute, at most.
    #[schemars(range(min = 1))]
    pub requests_per_minute: u32,
    /// Requests that may go out at once after a quiet period. Defaults to a tenth of
    /// `requestsPerMinute` (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<u32>,
}

/// Client authentication method at the token endpoint (RFC 6749 section 2.3).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ClientAuthentication {
    /// `client_id` and `client_secret` in an HTTP Basic `Authorization` header.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` as form parameters in the request body.
    ClientSecretPost,
    /// Public client: only `client_id` is sent, with no secret.
    None,
}

/// Reference to the Secret holding the client credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientSecretRef {
    /// Name of a Secret in the OAuthToken's namespace.
    #[schemars(
        length(max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Key holding the client identifier. Defaults to `client_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_key: Option<String>,
    /// Key holding the client secret. Defaults to `client_secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_key: Option<String>,
}

/// The OAuth 2.0 grant used to obtain access tokens. Exactly one field must be set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.refreshToken) ? 1 : 0) + (has(self.clientCredentials) ? 1 : 0) + (has(self.deviceCode) ? 1 : 0) == 1",
     "message": "set exactly one of refreshToken, clientCredentials or deviceCode"}
]))]
pub struct Grant {
    /// Refresh-token grant (RFC 6749 section 6): a refresh token obtained once by a human is
    /// exchanged for access tokens; rotated refresh tokens are stored by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<RefreshTokenGrant>,
    /// Client-credentials grant (RFC 6749 section 4.4), for machine-to-machine access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_credentials: Option<ClientCredentialsGrant>,
    /// Device authorization grant (RFC 8628): whenever there is no usable refresh token (the
    /// first time, or after the chain died) the operator starts a device authorization and
    /// shows in `status.authorization` the code a human enters at the provider; the refresh
    /// token it obtains is then kept and rotated like an imported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_code: Option<DeviceCodeGrant>,
}

/// Settings of the device authorization grant (RFC 8628).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCodeGrant {
    /// URL of the provider's device authorization endpoint, for example
    /// `https://allegro.pl/auth/oauth/device`. It gets the client's credentials like the token
    /// endpoint, so it must be on the token endpoint's origin.
    #[schemars(length(min = 1, max = 2048), extend("x-kubernetes-validations" = [
        {"rule": "isURL(self) && url(self).getScheme() in ['https', 'http'] && url(self).getHostname() != ''",
         "message": "deviceAuthorizationEndpoint must be an absolute https:// URL"}
    ]))]
    pub device_authorization_endpoint: String,
}

impl Reauthorization {
    fn is_import(&self) -> bool {
        *self == Reauthorization::Import
    }
}

/// How a dead refresh-token chain is restored.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Reauthorization {
    /// Wait until a human puts a new refresh token in the import Secret (for example with
    /// `kubectl oauthtoken authorize`).
    #[default]
    Import,
    /// Start a device authorization (RFC 8628) at `deviceAuthorizationEndpoint` and show its
    /// user code in `status.authorization`; a new refresh token in the import Secret is still
    /// imported.
    DeviceCode,
}

/// Settings of the refresh-token grant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshTokenGrant {
    /// Secret holding the refresh token from the one-time authorization. It is imported once;
    /// put a new refresh token in it to re-authorize (the operator imports it when the value
    /// changes). After the import the operator keeps the rotated refresh token in its own
    /// Secret, so this Secret may be deleted.
    pub initial_refresh_token_secret_ref: SecretKeyRef,
    /// What happens when the refresh token cannot be used any more: `Import` (the default)
    /// waits for a new refresh token in the import Secret; `DeviceCode` starts a device
    /// authorization at `deviceAuthorizationEndpoint`.
    #[serde(default, skip_serializing_if = "Reauthorization::is_import")]
    pub reauthorization: Reauthorization,
    /// The provider's device authorization endpoint, for `reauthorization: DeviceCode` and for
    /// `kubectl oauthtoken authorize --device`. It must be on the token endpoint's origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub device_authorization_endpoint: Option<String>,
}

/// Settings of the client-credentials grant. It currently has no fields of its own.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ClientCredentialsGrant {}

/// Reference to one key of a Secret in the OAuthToken's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of a Secret in the OAuthToken's namespace.
    #[schemars(
        length(max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Key within the Secret. Defaults to `refresh_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Observed state of an OAuthToken. Never contains token values.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = schema::for_api_server)]
pub struct OAuthTokenStatus {
    /// `Ready` is True while the target Secret holds a valid access token, and Unknown (reason
    /// `RefreshUnconfirmed`) while the answer to a presentation of the refresh token is unknown:
    /// some providers revoke the published access token the moment they rotate.
    /// `ReauthorizationRequired` is True when the refresh token cannot be used any more and a
    /// human must put a new one in the import Secret: the provider rejected it (`InvalidGrant`),
    /// the answers to its last presentations were lost (`AnswerLost`), the state Secret was
    /// deleted (`StateLost`), the spec now names another token endpoint origin or client
    /// (`ChainBindingChanged`), or the provider rotated it and the new one could not be stored in
    /// time (`SuccessorLost`).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status was computed for.
    pub observed_generation: Option<i64>,

    /// When the published access token expires.
    pub expires_at: Option<DateTime<Utc>>,

    /// When the refresh token expires, as the provider stated it in a token response or as
    /// `spec.refreshTokenLifetime` gives it; absent when unknown. With providers that rotate
    /// refresh tokens every refresh moves it later; once it passes, no refresh succeeds until
    /// a human authorizes again.
    pub refresh_token_expires_at: Option<DateTime<Utc>>,

    /// When an access token was last obtained successfully.
    pub last_refresh_at: Option<DateTime<Utc>>,

    /// When the operator will next request a token: ahead of expiry, or after a failure
    /// backoff.
    pub next_refresh_at: Option<DateTime<Utc>>,

    /// Consecutive failed token requests since the last success. Drives the backoff and survives
    /// operator restarts.
    #[serde(default)]
    pub failed_attempts: u32,

    /// When the last failed token request happened.
    pub last_failure_at: Option<DateTime<Utc>>,

    /// When a refresh token was last imported from `initialRefreshTokenSecretRef`.
    pub refresh_token_imported_at: Option<DateTime<Utc>>,

    /// SHA-256 fingerprint (hex) of the last refresh token imported from
    /// `initialRefreshTokenSecretRef`. Kept here, outside the state Secret, so that a used-up
    /// refresh token is never imported again, even when the state Secret is lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_refresh_token_sha256: Option<String>,

    /// SHA-256 fingerprint (hex) of the token request (endpoint, client, grant, scopes, audience,
    /// extra parameters) the published access token was issued for, for the client-credentials
    /// grant, which keeps no state Secret: a spec edit that changes the request asks for a new
    /// token, other edits do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_sha256: Option<String>,

    /// Name of the Secret holding the published access token.
    pub secret_name: Option<String>,

    /// What a human must do to authorize this OAuthToken, while a device authorization is
    /// pending: open `verificationUri` and enter `userCode` (or open `verificationUriComplete`)
    /// before `expiresAt`. Absent otherwise.
    // Serialized as null when absent: the status merge patch must remove a code that is done.
    #[serde(default)]
    pub authorization: Option<PendingAuthorization>,

    /// The last value of the annotation `oauth-token-operator.io/refresh` the operator handled:
    /// a requester waits until it shows the value it set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_request: Option<String>,

    /// What became of the request in `lastRefreshRequest`, for example that it came sooner than
    /// `spec.minRefreshInterval` after the last refresh and no new token was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_request_result: Option<String>,
}

/// A pending device authorization, as a human needs it. The device code itself is a secret and
/// stays in the operator's memory.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingAuthorization {
    /// The code to enter at `verificationUri`.
    pub user_code: String,
    /// Where to enter `userCode`.
    pub verification_uri: String,
    /// A URI that carries the code already, when the provider gives one.
    // Written as null when absent: a merge patch from one code to the next must not keep it.
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    /// When the code stops working; a new one is then shown after a back-off, or at once when
    /// a refresh is asked for with the annotation.
    pub expires_at: DateTime<Utc>,
}

impl OAuthToken {
    /// Name of the Secret pods mount.
    pub fn target_secret_name(&self) -> String {
        self.spec
            .secret_name
            .clone()
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }

    /// Name of the operator-only Secret that keeps the refresh-token chain and the last token.
    pub fn state_secret_name(&self) -> String {
        format!(
            "{}{STATE_SECRET_SUFFIX}",
            self.metadata.name.clone().unwrap_or_default()
        )
    }
}

/// Suffix of the operator-only state Secret's name.
pub const STATE_SECRET_SUFFIX: &str = "-oauth-state";

/// Label put on every Secret this operator writes.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "oauth-token-operator";
/// Label naming the OAuthToken a Secret belongs to.
pub const OWNER_LABEL: &str = "oauth-token-operator.io/oauthtoken";
/// Label telling the state Secret from the target Secret.
pub const SECRET_ROLE_LABEL: &str = "oauth-token-operator.io/role";
pub const ROLE_STATE: &str = "state";
pub const ROLE_TARGET: &str = "token";
