//! The form in which the controller caches an OAuthToken.

use std::borrow::Cow;

use kube::Resource;
use kube::core::ObjectMeta;
use serde::{Deserialize, Deserializer};

use crate::api::{OAuthToken, OAuthTokenSpec, OAuthTokenStatus};

/// An OAuthToken as the watch cache keeps it: identity and version in `metadata`, spec and
/// status as one compact JSON document. An `OAuthToken` is a struct of about 900 bytes, mostly
/// unset optional fields, with a dozen small allocations besides; kept this way it is about
/// half of that. A reconcile decodes the one it works on.
#[derive(Clone, Debug)]
pub struct CachedToken {
    metadata: ObjectMeta,
    spec_and_status: Box<[u8]>,
}

impl CachedToken {
    pub fn new(token: &OAuthToken) -> CachedToken {
        // Serializing a value of our own types into memory does not fail.
        let spec_and_status = serde_json::to_vec(&(&token.spec, &token.status)).unwrap_or_default();
        CachedToken {
            metadata: token.metadata.clone(),
            spec_and_status: spec_and_status.into_boxed_slice(),
        }
    }

    /// The OAuthToken as it was cached; `None` only if the types' JSON did not round-trip
    /// (then the reconcile reads it from the API).
    pub fn token(&self) -> Option<OAuthToken> {
        let (spec, status): (OAuthTokenSpec, Option<OAuthTokenStatus>) =
            serde_json::from_slice(&self.spec_and_status).ok()?;
        Some(OAuthToken {
            metadata: self.metadata.clone(),
            spec,
            status,
        })
    }
}

impl Resource for CachedToken {
    type DynamicType = ();
    type Scope = <OAuthToken as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        OAuthToken::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        OAuthToken::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        OAuthToken::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        OAuthToken::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// kube's controller asks for it; the operator fills its cache from `OAuthToken`s.
impl<'de> Deserialize<'de> for CachedToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        OAuthToken::deserialize(deserializer).map(|token| CachedToken::new(&token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_token_decodes_to_what_was_cached() {
        let token: OAuthToken = serde_json::from_value(serde_json::json!({
            "apiVersion": "oauth-token-operator.io/v1alpha1", "kind": "OAuthToken",
            "metadata": {"name": "a", "namespace": "shop", "uid": "u1", "generation": 3,
                         "resourceVersion": "17"},
            "spec": {
                "tokenEndpoint": "https://idp.test/token",
                "clientSecretRef": {"name": "client"},
                "grant": {"refreshToken": {"initialRefreshTokenSecretRef": {"name": "import"}}},
                "scopes": ["a", "b"],
                "extraParameters": {"resource": "https://api.test"},
            },
            "status": {"failedAttempts": 2, "expiresAt": "2026-12-04T10:00:00Z",
                "conditions": [{"type": "Ready", "status": "False", "reason": "RefreshFailed",
                    "message": "the provider answered 500",
                    "lastTransitionTime": "2026-12-04T09:00:00Z", "observedGeneration": 3}]},
        }))
        .unwrap();
        let json = |token: &OAuthToken| serde_json::to_value(token).unwrap();
        let cached = CachedToken::new(&token);
        assert_eq!(json(&cached.token().unwrap()), json(&token));
        assert_eq!(cached.meta().generation, Some(3));

        let without_status = OAuthToken {
            status: None,
            ..token
        };
        assert_eq!(
            json(&CachedToken::new(&without_status).token().unwrap()),
            json(&without_status)
        );
    }
}
