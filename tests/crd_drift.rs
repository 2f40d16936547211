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

/// A real API server warns (`Warning: unrecognized format "uint8"`) on every `kubectl apply` of a
/// CRD with a format it does not know. Every `format` must be one it validates.
#[test]
fn crd_uses_only_formats_the_api_server_recognizes() {
    fn walk(value: &serde_yaml::Value, path: &str, found: &mut Vec<String>) {
        match value {
            serde_yaml::Value::Mapping(map) => {
                for (key, child) in map {
                    let key = key.as_str().unwrap_or_default();
                    if key == "format"
                        && let Some(format) = child.as_str()
                        && !oauth_token_operator::api::schema::is_recognized_format(format)
                    {
                        found.push(format!("{path}: {format}"));
                    }
                    walk(child, &format!("{path}.{key}"), found);
                }
            }
            serde_yaml::Value::Sequence(items) => {
                for (index, child) in items.iter().enumerate() {
                    walk(child, &format!("{path}[{index}]"), found);
                }
            }
            _ => {}
        }
    }
    let crd: serde_yaml::Value = serde_yaml::from_str(COMMITTED).unwrap();
    let mut found = Vec::new();
    walk(&crd, "", &mut found);
    assert!(found.is_empty(), "unrecognized formats: {found:?}");
    // The ranges the dropped formats stood for are still there.
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let percentage = &spec["properties"]["refreshBeforePercentage"];
    assert_eq!(percentage["minimum"].as_f64(), Some(1.0));
    assert_eq!(percentage["maximum"].as_f64(), Some(99.0));
    // Known formats must stay: they document and validate timestamps.
    assert!(COMMITTED.contains("format: date-time"));
    assert!(!oauth_token_operator::api::schema::is_recognized_format(
        "uint32"
    ));
}

/// `kubectl get oat -o wide` shows the target Secret, the failure streak, whether a human
/// must re-authorize, and where and with which code to authorize by device flow.
#[test]
fn wide_output_has_secret_failures_and_reauthorization() {
    let crd: serde_yaml::Value = serde_yaml::from_str(COMMITTED).unwrap();
    let columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_sequence()
        .unwrap();
    let wide: Vec<&str> = columns
        .iter()
        .filter(|c| c["priority"].as_i64() == Some(1))
        .map(|c| c["jsonPath"].as_str().unwrap())
        .collect();
    assert_eq!(
        wide,
        [
            ".status.secretName",
            ".status.failedAttempts",
            ".status.conditions[?(@.type==\"ReauthorizationRequired\")].status",
            ".status.authorization.userCode",
            ".status.authorization.verificationUri"
        ]
    );
}
