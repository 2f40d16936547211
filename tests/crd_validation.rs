//! The CRD's CEL rules (`x-kubernetes-validations`) evaluated client-side with kube's CEL
//! validator, so bad input is known to be rejected before it reaches the operator.

use kube::core::cel::validate_cel;
use oauth_token_operator::api::OAuthToken;
use serde_json::{Value, json};

fn token(spec: Value) -> OAuthToken {
    serde_json::from_value(json!({
        "apiVersion": "oauth-token-operator.io/v1alpha1",
        "kind": "OAuthToken",
        "metadata": {"name": "allegro", "namespace": "shop"},
        "spec": spec,
    }))
    .unwrap()
}

fn valid_spec() -> Value {
    json!({
        "tokenEndpoint": "https://allegro.pl/auth/oauth/token",
        "clientAuthentication": "ClientSecretBasic",
        "clientSecretRef": {"name": "allegro-client"},
        "grant": {"refreshToken": {"initialRefreshTokenSecretRef": {"name": "allegro-authorization"}}},
        "refreshBefore": "15m"
    })
}

fn with(mut spec: Value, key: &str, value: Value) -> Value {
    if value.is_null() {
        spec.as_object_mut().unwrap().remove(key);
    } else {
        spec[key] = value;
    }
    spec
}

fn rejection(spec: Value) -> String {
    match validate_cel(&token(spec)) {
        Ok(()) => String::new(),
        Err(errors) => format!("{errors:?}"),
    }
}

#[test]
fn a_valid_spec_passes() {
    assert_eq!(rejection(valid_spec()), "");
    let cc = with(valid_spec(), "grant", json!({"clientCredentials": {}}));
    assert_eq!(rejection(cc), "");
}

#[test]
fn exactly_one_grant() {
    let both = with(
        valid_spec(),
        "grant",
        json!({"clientCredentials": {}, "refreshToken": {"initialRefreshTokenSecretRef": {"name": "a"}}}),
    );
    assert!(rejection(both).contains("exactly one"));
    let neither = with(valid_spec(), "grant", json!({}));
    assert!(rejection(neither).contains("exactly one"));
}

#[test]
fn refresh_policies_are_exclusive() {
    let both = with(valid_spec(), "refreshBeforePercentage", json!(20));
    assert!(rejection(both).contains("at most one"));
}

#[test]
fn token_endpoint_must_be_an_http_url() {
    for bad in ["ftp://idp.test/token", "not a url", "/token"] {
        let spec = with(valid_spec(), "tokenEndpoint", json!(bad));
        assert!(
            rejection(spec).contains("tokenEndpoint must be an absolute"),
            "{bad} was accepted"
        );
    }
}

#[test]
fn client_secret_ref_is_required_for_confidential_clients() {
    let missing = with(valid_spec(), "clientSecretRef", Value::Null);
    assert!(rejection(missing).contains("clientSecretRef is required"));
    let public = with(
        with(
            with(valid_spec(), "clientSecretRef", Value::Null),
            "clientAuthentication",
            json!("None"),
        ),
        "clientId",
        json!("app"),
    );
    assert_eq!(rejection(public), "");
}

#[test]
fn refresh_token_lifetime_is_for_the_refresh_token_grant_only() {
    let allegro = with(valid_spec(), "refreshTokenLifetime", json!("90d"));
    assert_eq!(rejection(allegro.clone()), "");
    let cc = with(allegro, "grant", json!({"clientCredentials": {}}));
    assert!(
        rejection(cc).contains(
            "refreshTokenLifetime only applies to the refreshToken and deviceCode grants"
        )
    );
}
