//! oauth-token-operator: keeps OAuth 2.0 access tokens fresh in Kubernetes Secrets.
//!
//! The library holds everything; the binary in `main.rs` only parses flags and starts it.
#![forbid(unsafe_code)]

pub mod api;
pub mod apiclient;
pub mod cli;
pub mod controller;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod oauth;
pub mod observe;
pub mod schedule;
pub mod server;
pub mod telemetry;

/// The CRD manifest, as `oauth-token-operator crd` prints it and `crds/oauthtoken.yaml` holds it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = api::OAuthToken::crd();
    serde_yaml::to_string(&crd).expect("the CRD always serializes")
}
