//! The form in which the controller caches an OAuthToken.

use std::borrow::Cow;

use kube::Resource;
use kube::core::ObjectMeta;
use serde::{Deserialize, Deserializer};

use crate::api::{OAuthToken, OAuthTokenSpec, OAuthTokenStatus};

/// An OAuthToken as the watch cache keeps it: identity and version in `metadata`, spec and
/// status as one compact JSON document. An `OAuthToken` is a struct of about 900 bytes, mostly
/// unset optional fields, with a dozen small allocations besides; this keeps the metadata and
/// one allocation. A reconcile decodes the one it works on.
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

/// Which OAuthTokens a watch event starts a reconcile for. What a (re)list brings is in the
/// store only when the list is complete: a reconcile started before then would find a new
/// OAuthToken missing (and be dropped) or read the spec it replaces, so a list's triggers wait
/// for its end.
#[derive(Default)]
pub struct Triggers {
    listed: Vec<CachedToken>,
}

impl Triggers {
    /// `spec_changed`: the event's OAuthToken is new or has a new generation.
    pub fn after(
        &mut self,
        event: kube::runtime::watcher::Event<CachedToken>,
        spec_changed: bool,
    ) -> Vec<CachedToken> {
        use kube::runtime::watcher::Event;
        match event {
            Event::Init => {
                self.listed.clear();
                Vec::new()
            }
            Event::InitApply(token) => {
                if spec_changed {
                    self.listed.push(token);
                }
                Vec::new()
            }
            Event::InitDone => std::mem::take(&mut self.listed),
            Event::Apply(token) if spec_changed => vec![token],
            Event::Apply(_) | Event::Delete(_) => Vec::new(),
        }
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

    #[test]
    fn a_list_starts_its_reconciles_when_it_is_complete() {
        use kube::runtime::watcher::Event;
        let token = |name: &str| {
            let mut token = OAuthToken::new(
                name,
                serde_json::from_value(serde_json::json!({
                    "tokenEndpoint": "https://idp.test/token",
                    "clientSecretRef": {"name": "client"},
                    "grant": {"clientCredentials": {}},
                }))
                .unwrap(),
            );
            token.metadata.namespace = Some("shop".into());
            CachedToken::new(&token)
        };
        let names = |tokens: Vec<CachedToken>| -> Vec<String> {
            tokens
                .iter()
                .map(|t| t.meta().name.clone().unwrap())
                .collect()
        };
        let mut triggers = Triggers::default();
        assert!(triggers.after(Event::Init, false).is_empty());
        assert!(
            triggers
                .after(Event::InitApply(token("new")), true)
                .is_empty()
        );
        assert!(
            triggers
                .after(Event::InitApply(token("same")), false)
                .is_empty()
        );
        assert_eq!(names(triggers.after(Event::InitDone, false)), ["new"]);
        assert_eq!(
            names(triggers.after(Event::Apply(token("edited")), true)),
            ["edited"]
        );
        assert!(
            triggers
                .after(Event::Apply(token("status")), false)
                .is_empty()
        );
        assert!(
            triggers
                .after(Event::Delete(token("gone")), false)
                .is_empty()
        );
        // A list that restarts before it completes starts over.
        triggers.after(Event::Init, false);
        triggers.after(Event::InitApply(token("a")), true);
        triggers.after(Event::Init, false);
        triggers.after(Event::InitApply(token("b")), true);
        assert_eq!(names(triggers.after(Event::InitDone, false)), ["b"]);
    }
}
