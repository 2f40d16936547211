//! The Helm chart in `charts/oauth-token-operator/` must not drift from the crate: its CRD
//! (`files/crds/oauthtoken.yaml`, which `templates/crds.yaml` renders, so that `helm upgrade`
//! upgrades it) is a byte-for-byte copy of `crds/oauthtoken.yaml`, itself generated from the Rust
//! types (`tests/crd_drift.rs`),
//! its appVersion is the crate version (the default image tag), and every value in values.yaml
//! is described by values.schema.json. `.ci/chart-check` runs helm itself.

use std::path::{Path, PathBuf};

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

#[test]
fn chart_crd_is_a_copy_of_the_generated_crd() {
    let generated = std::fs::read(repo_path("crds/oauthtoken.yaml")).unwrap();
    let copy = std::fs::read(repo_path(
        "charts/oauth-token-operator/files/crds/oauthtoken.yaml",
    ))
    .unwrap_or_default();
    assert!(
        copy == generated,
        "charts/oauth-token-operator/files/crds/oauthtoken.yaml differs from crds/oauthtoken.yaml: \
         run `cp crds/oauthtoken.yaml charts/oauth-token-operator/files/crds/`"
    );
}

/// The chart's `crds/` directory would be installed by Helm before the templates and then clash
/// with `templates/crds.yaml`; the CRD lives in `files/crds/` instead.
#[test]
fn chart_has_no_crds_directory() {
    assert!(
        !repo_path("charts/oauth-token-operator/crds").exists(),
        "charts/oauth-token-operator/crds/ must not exist: the CRD is rendered by \
         templates/crds.yaml from files/crds/oauthtoken.yaml"
    );
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&read("charts/oauth-token-operator/Chart.yaml")).unwrap();
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "oauth-token-operator");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "appVersion in charts/oauth-token-operator/Chart.yaml is the default image tag: set it \
         to the version in Cargo.toml (and bump the chart's `version`)"
    );
}

/// Every key of values.yaml has a schema entry, recursively through objects whose schema lists
/// `properties` (so a value added without a schema entry, or a schema entry left behind by a
/// renamed value, fails here and not at a user's `helm install`).
#[test]
fn values_schema_describes_every_value() {
    let values: serde_json::Value =
        serde_yaml::from_str(&read("charts/oauth-token-operator/values.yaml")).unwrap();
    let schema: serde_json::Value =
        serde_json::from_str(&read("charts/oauth-token-operator/values.schema.json")).unwrap();
    let mut problems = Vec::new();
    compare(&values, &schema, &schema, "", &mut problems);
    assert!(
        problems.is_empty(),
        "values.yaml and values.schema.json disagree:\n{}",
        problems.join("\n")
    );
}

fn resolve<'a>(
    schema: &'a serde_json::Value,
    root: &'a serde_json::Value,
) -> &'a serde_json::Value {
    match schema.get("$ref").and_then(|r| r.as_str()) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("local $ref only");
            root.pointer(pointer)
                .unwrap_or_else(|| panic!("unresolved $ref {reference}"))
        }
        None => schema,
    }
}

fn compare(
    value: &serde_json::Value,
    schema: &serde_json::Value,
    root: &serde_json::Value,
    path: &str,
    problems: &mut Vec<String>,
) {
    let schema = resolve(schema, root);
    let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) else {
        return;
    };
    let Some(object) = value.as_object() else {
        problems.push(format!(
            "{path}: an object in the schema, not in values.yaml"
        ));
        return;
    };
    for (key, sub) in object {
        match properties.get(key) {
            Some(sub_schema) => compare(sub, sub_schema, root, &format!("{path}.{key}"), problems),
            None => problems.push(format!("{path}.{key}: in values.yaml, not in the schema")),
        }
    }
    for key in properties.keys() {
        // `global` is Helm's: a parent chart may pass it; values.yaml does not set it.
        let helm_global = path.is_empty() && key == "global";
        if !object.contains_key(key) && !helm_global {
            problems.push(format!("{path}.{key}: in the schema, not in values.yaml"));
        }
    }
}
