//! Every file in `examples/` is something users copy. Each OAuthToken there must
//! - deserialize into `oauth_token_operator::api::OAuthToken`,
//! - validate against the CRD's `openAPIV3Schema` in `crds/oauthtoken.yaml` (types, enums,
//!   ranges, required fields, and no field the API server would prune),
//! - pass the operator's own spec validation (`controller::settings::resolve`),
//! - find the Secrets and keys it references in the same file, with placeholder values only.
//!
//! Pods must mount the Secret of an example OAuthToken. `.ci/chart-check` also validates the
//! Secrets and the Pod against the Kubernetes schemas, and the OAuthTokens with a full JSON
//! schema validator.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use oauth_token_operator::api::OAuthToken;
use oauth_token_operator::controller::settings::{self, GrantSettings};
use oauth_token_operator::oauth::{ClientOptions, TokenClient};
use serde::Deserialize;
use serde_json::Value;

/// Every Secret value in the examples starts with this, so nobody mistakes one for a credential.
const PLACEHOLDER: &str = "REPLACE_ME";

struct Document {
    file: String,
    value: Value,
}

impl Document {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn documents() -> Vec<Document> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples/ exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut count = 0;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("examples/{file} is not valid YAML: {e}"));
            if value.is_null() {
                continue;
            }
            count += 1;
            out.push(Document {
                file: file.clone(),
                value,
            });
        }
        assert!(count > 0, "examples/{file} holds no document");
    }
    out
}

fn crd_schema() -> Value {
    let crd: Value = serde_yaml::from_str(include_str!("../crds/oauthtoken.yaml")).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// The part of OpenAPI v3 validation a CRD schema generated from our types uses: `type`,
/// `nullable`, `properties` (unknown fields are errors: the API server would prune them),
/// `additionalProperties`, `required`, `enum`, `minimum`/`maximum`, `items`.
fn check_schema(value: &Value, schema: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema["nullable"] != Value::Bool(true) {
            errors.push(format!("{path}: null is not allowed"));
        }
        return;
    }
    let type_ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("boolean") => value.is_boolean(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some(other) => {
            errors.push(format!(
                "{path}: schema type {other} is not handled by this check"
            ));
            return;
        }
        None => true,
    };
    if !type_ok {
        errors.push(format!("{path}: expected {}, got {value}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    if let Some(number) = value.as_f64() {
        if let Some(min) = schema["minimum"].as_f64()
            && number < min
        {
            errors.push(format!("{path}: {number} is below the minimum {min}"));
        }
        if let Some(max) = schema["maximum"].as_f64()
            && number > max
        {
            errors.push(format!("{path}: {number} is above the maximum {max}"));
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema["properties"].as_object();
        for key in schema["required"].as_array().into_iter().flatten() {
            let key = key.as_str().unwrap();
            if !object.contains_key(key) {
                errors.push(format!("{path}: required field {key} is missing"));
            }
        }
        for (key, sub) in object {
            let sub_path = format!("{path}.{key}");
            match properties.and_then(|p| p.get(key)) {
                Some(sub_schema) => check_schema(sub, sub_schema, &sub_path, errors),
                None if schema["additionalProperties"].is_object() => {
                    check_schema(sub, &schema["additionalProperties"], &sub_path, errors)
                }
                None if schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true) => {}
                None => errors.push(format!("{sub_path}: unknown field (would be pruned)")),
            }
        }
    }
    if let (Some(items), Some(schema)) = (value.as_array(), schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check_schema(item, schema, &format!("{path}[{i}]"), errors);
        }
    }
}

/// The OAuthToken without apiVersion, kind and metadata, which the API server checks itself.
fn schema_errors(token: &Value) -> Vec<String> {
    let mut body = token.clone();
    let object = body.as_object_mut().unwrap();
    for key in ["apiVersion", "kind", "metadata"] {
        object.remove(key);
    }
    let mut errors = Vec::new();
    check_schema(&body, &crd_schema(), "", &mut errors);
    errors
}

fn token_client() -> TokenClient {
    TokenClient::new(ClientOptions::default()).unwrap()
}

#[test]
fn examples_hold_only_known_kinds() {
    let documents = documents();
    for document in &documents {
        let api_version = document.value["apiVersion"].as_str().unwrap_or_default();
        let known = matches!(
            (api_version, document.kind()),
            ("oauth-token-operator.io/v1alpha1", "OAuthToken") | ("v1", "Secret" | "Pod")
        );
        assert!(
            known,
            "examples/{}: unexpected {api_version} {}",
            document.file,
            document.kind()
        );
        assert!(
            !document.name().is_empty(),
            "examples/{}: a {} without metadata.name",
            document.file,
            document.kind()
        );
        assert!(
            document.value["metadata"]["namespace"].is_null(),
            "examples/{}: {} {} sets a namespace; the examples are applied with `kubectl -n`",
            document.file,
            document.kind(),
            document.name()
        );
    }
    let tokens = documents
        .iter()
        .filter(|d| d.kind() == "OAuthToken")
        .count();
    assert!(
        tokens >= 3,
        "expected the three OAuthToken examples, found {tokens}"
    );
}

#[test]
fn example_tokens_deserialize_and_match_the_crd_schema() {
    for document in documents().iter().filter(|d| d.kind() == "OAuthToken") {
        let where_ = format!("examples/{} OAuthToken {}", document.file, document.name());
        let token: OAuthToken = serde_json::from_value(document.value.clone())
            .unwrap_or_else(|e| panic!("{where_} does not deserialize: {e}"));
        let errors = schema_errors(&document.value);
        assert!(
            errors.is_empty(),
            "{where_} does not match the CRD schema:\n{}",
            errors.join("\n")
        );
        // Nothing the user wrote is lost between YAML and the Rust types.
        let round_trip = serde_json::to_value(&token.spec).unwrap();
        assert_eq!(
            without_defaults(round_trip),
            without_defaults(document.value["spec"].clone()),
            "{where_}: the spec changes on a round trip through the Rust types"
        );
    }
}

/// Drops `clientAuthentication: ClientSecretBasic`, which serialization always writes.
fn without_defaults(mut spec: Value) -> Value {
    let object = spec.as_object_mut().unwrap();
    if object.get("clientAuthentication") == Some(&Value::from("ClientSecretBasic")) {
        object.remove("clientAuthentication");
    }
    spec
}

#[test]
fn example_tokens_pass_the_operators_spec_validation() {
    let client = token_client();
    for document in documents().iter().filter(|d| d.kind() == "OAuthToken") {
        let token: OAuthToken = serde_json::from_value(document.value.clone()).unwrap();
        if let Err(message) = settings::resolve(&token, &client) {
            panic!(
                "examples/{} OAuthToken {} would be InvalidSpec: {message}",
                document.file,
                document.name()
            );
        }
    }
}

/// Every Secret key an OAuthToken reads exists in a Secret of the same file.
#[test]
fn example_tokens_find_their_secrets_in_the_same_file() {
    let documents = documents();
    let client = token_client();
    for document in documents.iter().filter(|d| d.kind() == "OAuthToken") {
        let token: OAuthToken = serde_json::from_value(document.value.clone()).unwrap();
        let resolved = settings::resolve(&token, &client).unwrap();
        let mut needed: Vec<&settings::KeyRef> =
            [&resolved.client.id_key, &resolved.client.secret_key]
                .into_iter()
                .flatten()
                .collect();
        if let GrantSettings::RefreshToken {
            import: Some(import),
            ..
        } = &resolved.grant
        {
            needed.push(import);
        }
        assert!(!needed.is_empty());
        for key_ref in needed {
            let secret = documents
                .iter()
                .find(|d| {
                    d.file == document.file && d.kind() == "Secret" && d.name() == key_ref.secret
                })
                .unwrap_or_else(|| {
                    panic!(
                        "examples/{}: OAuthToken {} reads Secret {} which the file does not define",
                        document.file,
                        document.name(),
                        key_ref.secret
                    )
                });
            assert!(
                secret.value["stringData"][&key_ref.key].is_string(),
                "examples/{}: Secret {} lacks the key {} that OAuthToken {} reads",
                document.file,
                key_ref.secret,
                key_ref.key,
                document.name()
            );
        }
    }
}

#[test]
fn example_secrets_are_placeholders_in_string_data() {
    let mut seen = 0;
    for document in documents().iter().filter(|d| d.kind() == "Secret") {
        seen += 1;
        let where_ = format!("examples/{} Secret {}", document.file, document.name());
        let secret: k8s_openapi::api::core::v1::Secret =
            serde_json::from_value(document.value.clone())
                .unwrap_or_else(|e| panic!("{where_} is not a v1 Secret: {e}"));
        assert!(secret.data.is_none(), "{where_}: use stringData, not data");
        let string_data: BTreeMap<String, String> = secret.string_data.unwrap_or_default();
        assert!(!string_data.is_empty(), "{where_} has no stringData");
        for (key, value) in &string_data {
            assert!(
                value.starts_with(PLACEHOLDER),
                "{where_}: {key} must be an obvious placeholder starting with {PLACEHOLDER}"
            );
        }
    }
    assert!(seen > 0, "no example Secret");
}

#[test]
fn example_pods_mount_the_secret_of_an_example_token() {
    let documents = documents();
    let targets: BTreeSet<String> = documents
        .iter()
        .filter(|d| d.kind() == "OAuthToken")
        .map(|d| {
            serde_json::from_value::<OAuthToken>(d.value.clone())
                .unwrap()
                .target_secret_name()
        })
        .collect();
    let mut pods = 0;
    for document in documents.iter().filter(|d| d.kind() == "Pod") {
        pods += 1;
        let where_ = format!("examples/{} Pod {}", document.file, document.name());
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(document.value.clone())
            .unwrap_or_else(|e| panic!("{where_} is not a v1 Pod: {e}"));
        let spec = pod.spec.unwrap();
        let volumes = spec.volumes.unwrap_or_default();
        let token_volume = volumes
            .iter()
            .find(|v| {
                v.secret
                    .as_ref()
                    .and_then(|s| s.secret_name.as_ref())
                    .is_some_and(|name| targets.contains(name))
            })
            .unwrap_or_else(|| panic!("{where_} mounts none of the token Secrets {targets:?}"));
        let items = token_volume.secret.as_ref().unwrap().items.clone();
        if let Some(items) = items {
            assert!(
                items.iter().any(|i| i.key == "access_token"),
                "{where_}: the Secret volume leaves out access_token"
            );
        }
        let mounted = spec.containers.iter().any(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == token_volume.name)
        });
        assert!(
            mounted,
            "{where_}: no container mounts {}",
            token_volume.name
        );
        let reads_token = serde_json::to_string(&spec.containers)
            .unwrap()
            .contains("access_token");
        assert!(reads_token, "{where_}: no container reads access_token");
        // Environment variables never change in a running pod: a token there goes stale.
        for container in &spec.containers {
            for env in container.env.iter().flatten() {
                let from_target = env
                    .value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                    .is_some_and(|r| targets.contains(&r.name));
                assert!(
                    !from_target,
                    "{where_}: env {} copies the token; mount the Secret instead",
                    env.name
                );
            }
        }
    }
    assert!(pods > 0, "no example Pod");
}

/// The schema check is not vacuous: it rejects what the API server would reject or prune.
#[test]
fn schema_check_rejects_bad_specs() {
    let good: Value = serde_json::json!({
        "apiVersion": "oauth-token-operator.io/v1alpha1",
        "kind": "OAuthToken",
        "metadata": {"name": "t"},
        "spec": {
            "tokenEndpoint": "https://idp.example.com/token",
            "clientSecretRef": {"name": "c"},
            "grant": {"clientCredentials": {}},
        }
    });
    assert_eq!(schema_errors(&good), Vec::<String>::new());
    let cases: [(&str, Value); 6] = [
        ("/spec/refreshBfore", Value::from("15m")),
        ("/spec/refreshBeforePercentage", Value::from(130)),
        ("/spec/clientAuthentication", Value::from("Basic")),
        ("/spec/scopes", Value::from("a b")),
        ("/spec/grant/refreshToken", serde_json::json!({"name": "x"})),
        ("/spec/extraParameters", serde_json::json!({"resource": 1})),
    ];
    for (pointer, value) in cases {
        let mut bad = good.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        bad.pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .insert(key.to_string(), value.clone());
        assert!(
            !schema_errors(&bad).is_empty(),
            "setting {pointer} to {value} should fail the schema check"
        );
    }
    let mut missing = good.clone();
    missing["spec"]
        .as_object_mut()
        .unwrap()
        .remove("tokenEndpoint");
    assert!(!schema_errors(&missing).is_empty());
}
