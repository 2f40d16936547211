//! `crds/oauthtoken.yaml` is generated from the Rust types; this fails when it drifts.

use std::process::Command;

const COMMITTED: &str = include_str!("../crds/oauthtoken.yaml");

#[test]
fn committed_crd_matches_the_rust_types() {
    assert!(
        oauth_token_operator::crd_yaml() == COMMITTED,
        "crds/oauthtoken.yaml is stale: run `cargo run -- crd > crds/oauthtoken.yaml`"
    );
}

#[test]
fn crd_subcommand_prints_the_committed_crd() {
    let output = Command::new(env!("CARGO_BIN_EXE_oauth-token-operator"))
        .arg("crd")
        .output()
        .expect("the binary runs");
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap(), COMMITTED);
}

#[test]
fn crd_keeps_the_public_names() {
    let crd: serde_yaml::Value = serde_yaml::from_str(COMMITTED).unwrap();
    assert_eq!(
        crd["metadata"]["name"],
        "oauthtokens.oauth-token-operator.io"
    );
    assert_eq!(crd["spec"]["group"], "oauth-token-operator.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let names = &crd["spec"]["names"];
    assert_eq!(names["kind"], "OAuthToken");
    assert_eq!(names["plural"], "oauthtokens");
    assert_eq!(names["shortNames"][0], "oat");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_mapping());
    let conditions =
        &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"][0], "type");
}
