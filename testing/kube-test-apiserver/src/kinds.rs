//! Per-kind behaviour: metadata validation, Secret/ConfigMap/Namespace
//! normalisation, custom-resource schemas, and the core/v1 <-> events.k8s.io/v1
//! Event representations (one storage, like the real apiserver).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use crate::registry::ResourceType;

pub type Errors = Vec<(String, String)>;

fn is_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// RFC 1123 label (lowercase alphanumerics and '-', at most 63 chars).
pub fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| is_alnum(c) || c == '-')
        && s.starts_with(is_alnum)
        && s.ends_with(is_alnum)
}

/// RFC 1123 subdomain (dot-separated labels, at most 253 chars).
pub fn dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(dns_label)
}

/// A label value / the name part of a qualified key.
fn label_token(s: &str, allow_empty: bool) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric();
    if s.is_empty() {
        return allow_empty;
    }
    s.len() <= 63
        && s.chars().all(|c| ok(c) || c == '-' || c == '_' || c == '.')
        && s.starts_with(ok)
        && s.ends_with(ok)
}

fn qualified_name(k: &str) -> bool {
    match k.split_once('/') {
        Some((prefix, name)) => dns_subdomain(prefix) && label_token(name, false),
        None => label_token(k, false),
    }
}

/// ObjectMeta validation shared by all kinds.
pub fn validate_metadata(rt: &ResourceType, obj: &Value) -> Errors {
    let mut errs = Errors::new();
    let meta = &obj["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    let name_ok = if rt.plural == "namespaces" {
        dns_label(name)
    } else {
        dns_subdomain(name)
    };
    if !name_ok {
        let what = if rt.plural == "namespaces" {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        } else {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        };
        errs.push((
            "metadata.name".into(),
            format!("Invalid value: \"{name}\": {what}"),
        ));
    }
    for (field, values_are_labels) in [("labels", true), ("annotations", false)] {
        match &meta[field] {
            Value::Null => {}
            Value::Object(m) => {
                for (k, v) in m {
                    if !qualified_name(k) {
                        errs.push((format!("metadata.{field}"), format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")));
                    }
                    match v.as_str() {
                        None => errs.push((format!("metadata.{field}.{k}"), "Invalid value: must be a string".into())),
                        Some(s) if values_are_labels && !label_token(s, true) => errs.push((
                            "metadata.labels".to_string(),
                            format!("Invalid value: \"{s}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                        )),
                        _ => {}
                    }
                }
            }
            _ => errs.push((
                format!("metadata.{field}"),
                "Invalid value: must be a map of strings".into(),
            )),
        }
    }
    if meta["annotations"].to_string().len() > 256 * 1024 {
        errs.push((
            "metadata.annotations".into(),
            "Too long: must have at most 262144 bytes".into(),
        ));
    }
    for (i, r) in meta["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        for f in ["apiVersion", "kind", "name", "uid"] {
            if r[f].as_str().unwrap_or_default().is_empty() {
                errs.push((
                    format!("metadata.ownerReferences[{i}].{f}"),
                    "Required value".into(),
                ));
            }
        }
    }
    errs
}

fn valid_data_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

/// Fold a Secret's `stringData` into `data` (base64), as the apiserver does.
pub fn fold_string_data(rt: &ResourceType, obj: &mut Value) {
    if rt.storage_group.is_empty() && rt.plural == "secrets" {
        let Some(m) = obj.as_object_mut() else { return };
        if let Some(Value::Object(sd)) = m.remove("stringData") {
            let data = m.entry("data").or_insert_with(|| json!({}));
            if !data.is_object() {
                *data = json!({});
            }
            for (k, v) in sd {
                let s = v
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string());
                data[k.as_str()] = json!(STANDARD.encode(s));
            }
        }
    }
}

fn secret(old: Option<&Value>, obj: &mut Value, errs: &mut Errors) {
    let m = obj.as_object_mut().expect("objects are maps");
    if m.get("type")
        .is_none_or(|t| t.as_str().is_none_or(str::is_empty))
    {
        m.insert("type".into(), json!("Opaque"));
    }
    if let Some(Value::Object(data)) = m.get("data") {
        for (k, v) in data {
            if !valid_data_key(k) {
                errs.push((format!("data[{k}]"), format!("Invalid value: \"{k}\": a valid config key must consist of alphanumeric characters, '-', '_' or '.'")));
            }
            if v.as_str().is_none_or(|s| STANDARD.decode(s).is_err()) {
                errs.push((
                    format!("data[{k}]"),
                    "Invalid value: illegal base64 data".into(),
                ));
            }
        }
    }
    if m.get("data")
        .is_some_and(|d| d.as_object().is_some_and(Map::is_empty))
    {
        m.remove("data");
    }
    if let Some(old) = old {
        if old["type"] != m["type"] {
            errs.push(("type".into(), "Invalid value: field is immutable".into()));
        }
        immutable(old, obj, &["data"], errs);
    }
}

fn immutable(old: &Value, obj: &Value, fields: &[&str], errs: &mut Errors) {
    if old["immutable"].as_bool() == Some(true) {
        for f in fields {
            if old[*f] != obj[*f] {
                errs.push((
                    f.to_string(),
                    "Forbidden: field is immutable when `immutable` is set".into(),
                ));
            }
        }
        if obj["immutable"].as_bool() != Some(true) {
            errs.push((
                "immutable".into(),
                "Forbidden: field is immutable when `immutable` is set".into(),
            ));
        }
    }
}

fn configmap(old: Option<&Value>, obj: &mut Value, errs: &mut Errors) {
    if let Some(m) = obj.as_object_mut() {
        for f in ["data", "binaryData"] {
            if m.get(f)
                .is_some_and(|d| d.as_object().is_some_and(Map::is_empty))
            {
                m.remove(f);
            }
        }
    }
    for (k, v) in obj["data"].as_object().into_iter().flatten() {
        if !valid_data_key(k) {
            errs.push((format!("data[{k}]"), format!("Invalid value: \"{k}\": a valid config key must consist of alphanumeric characters, '-', '_' or '.'")));
        }
        if !v.is_string() {
            errs.push((
                format!("data[{k}]"),
                "Invalid value: must be a string".into(),
            ));
        }
    }
    for (k, v) in obj["binaryData"].as_object().into_iter().flatten() {
        if v.as_str().is_none_or(|s| STANDARD.decode(s).is_err()) {
            errs.push((
                format!("binaryData[{k}]"),
                "Invalid value: illegal base64 data".into(),
            ));
        }
    }
    if let Some(old) = old {
        immutable(old, obj, &["data", "binaryData"], errs);
    }
}

/// Kind-specific defaulting and validation of an object about to be stored
/// (storage representation; `old` is the stored object on update).
/// `pruned` receives the paths of unknown fields dropped from custom resources.
pub fn normalize(
    rt: &ResourceType,
    old: Option<&Value>,
    obj: &mut Value,
    pruned: &mut Vec<String>,
) -> Errors {
    let mut errs = Errors::new();
    fold_string_data(rt, obj);
    drop_empty_metadata(obj);
    match (rt.storage_group.as_str(), rt.plural.as_str()) {
        ("", "secrets") => secret(old, obj, &mut errs),
        ("", "configmaps") => configmap(old, obj, &mut errs),
        ("", "namespaces") if old.is_none() => {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
        }
        _ => {}
    }
    if let Some(schemas) = &rt.schemas {
        let schema = schemas
            .get(&rt.storage_version)
            .cloned()
            .unwrap_or(Value::Null);
        errs.extend(crate::schema::process(&schema, obj, pruned));
    }
    errs
}

/// ObjectMeta is a typed struct in the apiserver: empty maps/lists are not kept.
fn drop_empty_metadata(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in ["labels", "annotations", "finalizers", "ownerReferences"] {
            let empty = match meta.get(f) {
                Some(Value::Object(m)) => m.is_empty(),
                Some(Value::Array(a)) => a.is_empty(),
                Some(Value::Null) => true,
                _ => false,
            };
            if empty {
                meta.remove(f);
            }
        }
    }
}

/// events.k8s.io/v1 field <-> core/v1 field.
const EVENT_FIELD_MAP: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(obj: &mut Value, from_v1: bool) {
    let Some(m) = obj.as_object_mut() else { return };
    let mut moved = Vec::new();
    for (v1, core) in EVENT_FIELD_MAP {
        let (from, to) = if from_v1 { (v1, core) } else { (core, v1) };
        if let Some(v) = m.remove(*from) {
            moved.push((to.to_string(), v));
        }
    }
    m.extend(moved);
}

/// Is this type served from another type's storage with a different shape?
pub fn is_events_v1(rt: &ResourceType) -> bool {
    rt.group == "events.k8s.io"
}

/// Convert a stored object (core/v1 Event) into the representation served for `rt`.
pub fn to_served(rt: &ResourceType, version: &str, obj: &Value) -> Value {
    let mut out = obj.clone();
    if is_events_v1(rt) {
        rename(&mut out, false);
    }
    if let Some(m) = out.as_object_mut() {
        m.insert("apiVersion".into(), json!(rt.api_version(version)));
        m.insert("kind".into(), json!(rt.kind));
    }
    out
}

/// Convert a request body for `rt` into the storage representation.
pub fn to_storage(rt: &ResourceType, obj: &mut Value) {
    if is_events_v1(rt) {
        rename(obj, true);
        obj["apiVersion"] = json!("v1");
    } else if let Some(m) = obj.as_object_mut() {
        m.insert(
            "apiVersion".into(),
            json!(rt.api_version(&rt.storage_version)),
        );
        m.insert("kind".into(), json!(rt.kind));
    }
}

/// The apiserver's extra validation for events created through events.k8s.io/v1
/// (on the served representation).
pub fn validate_events_v1_create(obj: &Value) -> Errors {
    let mut errs = Errors::new();
    for f in [
        "eventTime",
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        if obj[f].is_null() || obj[f].as_str() == Some("") {
            errs.push((f.to_string(), "Required value".into()));
        }
    }
    match obj["type"].as_str() {
        Some("Normal") | Some("Warning") => {}
        other => errs.push((
            "type".into(),
            format!(
                "Invalid value: \"{}\": has invalid value, must be one of Normal or Warning",
                other.unwrap_or_default()
            ),
        )),
    }
    for f in [
        "deprecatedFirstTimestamp",
        "deprecatedLastTimestamp",
        "deprecatedCount",
        "deprecatedSource",
    ] {
        if !obj[f].is_null() && obj[f] != json!({}) && obj[f] != json!(0) {
            errs.push((f.to_string(), "Invalid value: needs to be unset".into()));
        }
    }
    if obj["note"].as_str().is_some_and(|n| n.len() > 1024) {
        errs.push((
            "note".into(),
            "Too long: must have at most 1024 bytes".into(),
        ));
    }
    if obj["reason"].as_str().is_some_and(|r| r.len() > 128) {
        errs.push((
            "reason".into(),
            "Too long: must have at most 128 bytes".into(),
        ));
    }
    errs
}
