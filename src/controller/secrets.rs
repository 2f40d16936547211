//! Reading the Secrets an OAuthToken references and writing the two it owns.
//!
//! The state Secret is written with a resourceVersion precondition (compare-and-swap) because it
//! holds the refresh-token chain; the pod-facing Secret is a projection written with server-side
//! apply.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::ObjectMeta;
use kube::{Api, Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};

use super::cache::{content_digest, published_digest};
use super::state::{TokenState, rfc3339};
use crate::api::{
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, OAuthToken, OWNER_LABEL, ROLE_STATE, ROLE_TARGET,
    SECRET_ROLE_LABEL,
};

/// Field manager for every server-side apply this operator makes.
pub const FIELD_MANAGER: &str = "oauth-token-operator";

/// True when `secret` is controlled by `token` (a controller owner reference to its uid).
pub fn controlled_by(secret: &Secret, token: &OAuthToken) -> bool {
    let Some(uid) = token.metadata.uid.as_deref() else {
        return false;
    };
    secret
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

fn labels(token: &OAuthToken, role: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (OWNER_LABEL.to_string(), token.name_any()),
        (SECRET_ROLE_LABEL.to_string(), role.to_string()),
    ])
}

fn owned_metadata(token: &OAuthToken, name: &str, role: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: token.namespace(),
        labels: Some(labels(token, role)),
        owner_references: token.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// Reads one key of a Secret as UTF-8 text.
pub fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    let from_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok());
    // stringData is write-only on a real apiserver, but objects built in tests may carry it.
    let from_string_data = || {
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .cloned()
    };
    from_data
        .or_else(from_string_data)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Writes the state Secret once: creates it, or replaces it under the resourceVersion of
/// `current` (compare-and-swap). Conflicts are the caller's to judge: see `chain::Chain`.
pub async fn write_state(
    secrets: &Api<Secret>,
    token: &OAuthToken,
    current: Option<&Secret>,
    data: &BTreeMap<String, ByteString>,
) -> Result<Secret, kube::Error> {
    let name = token.state_secret_name();
    let mut secret = Secret {
        metadata: owned_metadata(token, &name, ROLE_STATE),
        data: Some(data.clone()),
        type_: Some("Opaque".to_string()),
        ..Secret::default()
    };
    match current {
        None => secrets.create(&PostParams::default(), &secret).await,
        Some(existing) => {
            secret.metadata.resource_version = existing.resource_version();
            secrets
                .replace(&name, &PostParams::default(), &secret)
                .await
        }
    }
}

/// Whether a write failed because the object changed (409) or vanished (404) since it was read.
pub fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(response) if response.code == 409 || response.code == 404)
}

/// The data pods see: the access token, its type and expiry, and the refresh token only when
/// the user opted in.
pub fn target_data(
    state: &TokenState,
    publish_refresh_token: bool,
) -> Option<BTreeMap<String, ByteString>> {
    let access = state.access.as_ref()?;
    let text = |v: &str| ByteString(v.as_bytes().to_vec());
    let mut data = BTreeMap::from([
        (
            "access_token".to_string(),
            text(access.token.expose_secret()),
        ),
        ("token_type".to_string(), text(&access.token_type)),
        ("expires_at".to_string(), text(&rfc3339(access.expires_at))),
    ]);
    if publish_refresh_token && let Some(refresh) = state.refresh_token.as_ref() {
        data.insert(
            "refresh_token".to_string(),
            text(SecretString::expose_secret(refresh)),
        );
    }
    Some(data)
}

/// Applies the pod-facing Secret unless it already holds exactly this data and our labels
/// (`existing` may come from the cache, which keeps only a digest of the data). Returns the
/// Secret written, if a write was made.
pub async fn publish_target(
    secrets: &Api<Secret>,
    token: &OAuthToken,
    name: &str,
    existing: Option<&Secret>,
    data: BTreeMap<String, ByteString>,
) -> Result<Option<Secret>, kube::Error> {
    let desired = content_digest(&data, &labels(token, ROLE_TARGET));
    let up_to_date = existing.is_some_and(|secret| {
        published_digest(secret) == Some(desired) && controlled_by(secret, token)
    });
    if up_to_date {
        return Ok(None);
    }
    let secret = Secret {
        metadata: owned_metadata(token, name, ROLE_TARGET),
        data: Some(data),
        type_: Some("Opaque".to_string()),
        ..Secret::default()
    };
    let written = secrets
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(Some(written))
}
