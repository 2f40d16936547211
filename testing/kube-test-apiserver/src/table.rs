//! Content negotiation of the served representation (`Accept: ...;as=Table` and
//! `as=PartialObjectMetadata`) and server-side `meta.k8s.io` `Table` output, as
//! `kubectl get` requests it.
//!
//! Custom resources get the apiextensions-apiserver columns: `Name`, then the
//! version's `additionalPrinterColumns` (or `Age` when there are none), cells
//! evaluated with [`JsonPath`] like `tableconvertor`. Built-in kinds get the columns
//! of the real apiserver's printers (`pkg/printers/internalversion`).

use serde_json::{Value, json};

use crate::errors::{ApiError, ApiResult};
use crate::http::Params;
use crate::jsonpath::JsonPath;
use crate::kinds;
use crate::registry::ResourceType;

/// `includeObject` of `TableOptions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Include {
    Metadata,
    Object,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableOptions {
    /// `meta.k8s.io/v1` or `meta.k8s.io/v1beta1`.
    pub api_version: &'static str,
    pub include: Include,
}

/// What the client asked to get back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Repr {
    /// The object itself (JSON).
    Object,
    /// `PartialObjectMetadata` / `PartialObjectMetadataList`.
    Metadata,
    Table(TableOptions),
}

/// Pick the first alternative of the `Accept` header that can be served. Media types
/// without `as=` are all answered with JSON; `as=Table` needs `g=meta.k8s.io` and
/// `v=v1` or `v1beta1`; a header listing only unservable `as=` alternatives is a
/// 406 like on the real apiserver.
pub(crate) fn negotiate(accept: &str, params: &Params) -> ApiResult<Repr> {
    let mut any = false;
    for alt in accept.split(',') {
        let mut parts = alt.split(';');
        if parts.next().unwrap_or_default().trim().is_empty() {
            continue;
        }
        any = true;
        let mut as_ = "";
        let mut g = "";
        let mut v = "";
        for p in parts {
            let (k, val) = p.split_once('=').unwrap_or((p, ""));
            let val = val.trim().trim_matches('"');
            match k.trim() {
                "as" => as_ = val,
                "g" => g = val,
                "v" => v = val,
                _ => {}
            }
        }
        match as_ {
            "" => return Ok(Repr::Object),
            "PartialObjectMetadata" | "PartialObjectMetadataList" => return Ok(Repr::Metadata),
            "Table" if g == "meta.k8s.io" && (v == "v1" || v == "v1beta1") => {
                let include = match params.get("includeObject").map(String::as_str) {
                    None | Some("") | Some("Metadata") => Include::Metadata,
                    Some("Object") => Include::Object,
                    Some("None") => Include::None,
                    Some(other) => {
                        return Err(ApiError::bad_request(format!(
                            "Unable to convert to Table as requested: includeObject: Unsupported value: \"{other}\": supported values: \"Metadata\", \"None\", \"Object\""
                        )));
                    }
                };
                return Ok(Repr::Table(TableOptions {
                    api_version: if v == "v1" {
                        "meta.k8s.io/v1"
                    } else {
                        "meta.k8s.io/v1beta1"
                    },
                    include,
                }));
            }
            _ => {}
        }
    }
    if any {
        Err(ApiError::new(
            406,
            "NotAcceptable",
            "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf",
        ))
    } else {
        Ok(Repr::Object)
    }
}

/// `duration.HumanDuration` of apimachinery (`5m`, `3h20m`, `<invalid>` for more
/// than a second in the future).
pub(crate) fn human_duration(d: chrono::TimeDelta) -> String {
    let nanos = d
        .num_nanoseconds()
        .unwrap_or(if d < chrono::TimeDelta::zero() {
            i64::MIN
        } else {
            i64::MAX
        });
    const S: i64 = 1_000_000_000;
    let seconds = nanos / S;
    if seconds < -1 {
        return "<invalid>".into();
    } else if seconds < 0 {
        return "0s".into();
    } else if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = nanos / (60 * S);
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    } else if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = nanos / (3600 * S);
    if hours < 8 {
        let m = minutes % 60;
        if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        }
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        }
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// `translateTimestampSince`: the age of an RFC 3339 timestamp, `<unknown>` if unset.
fn age(ts: &Value) -> String {
    match ts.as_str().filter(|s| !s.is_empty()).map(parse_time) {
        None => "<unknown>".into(),
        Some(None) => "<invalid>".into(),
        Some(Some(t)) => human_duration(chrono::Utc::now() - t),
    }
}

/// A cell of a printer column of `type` for a JSONPath match (`tableconvertor`).
fn crd_cell(ty: &str, v: &Value) -> Value {
    match (ty, v) {
        (_, Value::Null) => Value::Null,
        ("string", _) => json!(go_text(v)),
        ("integer", Value::Number(n)) => n
            .as_i64()
            .map(Value::from)
            .or_else(|| n.as_f64().map(|f| json!(f as i64)))
            .unwrap_or(Value::Null),
        ("number", Value::Number(n)) => n.as_f64().map(Value::from).unwrap_or(Value::Null),
        ("boolean", Value::Bool(b)) => json!(b),
        ("date", Value::String(s)) if s.is_empty() => json!("<unknown>"),
        ("date", Value::String(s)) => match parse_time(s) {
            Some(t) => json!(human_duration(chrono::Utc::now() - t)),
            None => json!("<invalid>"),
        },
        _ => Value::Null,
    }
}

/// How client-go's JSONPath printer writes a value: strings raw, maps and lists as
/// JSON, numbers like Go's `%v`.
fn go_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => go_float(n.as_f64().unwrap_or_default()),
        Value::Array(_) | Value::Object(_) | Value::Number(_) | Value::Bool(_) => v.to_string(),
        Value::Null => "<nil>".into(),
    }
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)` (what `%v` prints).
fn go_float(f: f64) -> String {
    if !f.is_finite() {
        return if f.is_nan() {
            "NaN".into()
        } else if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if f == 0.0 {
        return "0".into();
    }
    // shortest round-trip digits: "d.ddde<exp>"
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or_default();
    // shortest precision: %e when the exponent is < -4 or >= 6
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    f.to_string()
}

const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const CREATED_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

fn col(name: &str, ty: &str, format: &str, priority: i64, description: &str) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

fn name_col() -> Value {
    col("Name", "string", "name", 0, NAME_DESCRIPTION)
}

fn age_col() -> Value {
    col("Age", "string", "", 0, CREATED_DESCRIPTION)
}

/// The printer columns of a custom resource version (defaulted to `Age` when empty,
/// like `serveDefaultColumnsIfEmpty`).
fn crd_columns(rt: &ResourceType, version: &str) -> Vec<Value> {
    let cols = rt.printer_columns.get(version).cloned().unwrap_or_default();
    if cols.is_empty() {
        vec![
            json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "description": CREATED_DESCRIPTION}),
        ]
    } else {
        cols
    }
}

/// Column definitions for `rt` served at `version`.
pub(crate) fn columns(rt: &ResourceType, version: &str) -> Vec<Value> {
    if rt.is_custom() {
        let mut out = vec![name_col()];
        for c in crd_columns(rt, version) {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            let description = match s("description") {
                d if d.is_empty() => format!(
                    "Custom resource definition column (in JSONPath format): {}",
                    s("jsonPath")
                ),
                d => d,
            };
            out.push(col(
                &s("name"),
                &s("type"),
                &s("format"),
                c["priority"].as_i64().unwrap_or(0),
                &description,
            ));
        }
        return out;
    }
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "namespaces") => vec![
            name_col(),
            col("Status", "string", "", 0, "The status of the namespace"),
            age_col(),
        ],
        ("", "secrets") => vec![
            name_col(),
            col(
                "Type",
                "string",
                "",
                0,
                "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types",
            ),
            col(
                "Data",
                "string",
                "",
                0,
                "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string, representing the arbitrary (possibly non-string) data value here. Described in https://tools.ietf.org/html/rfc4648#section-4",
            ),
            age_col(),
        ],
        ("", "configmaps") => vec![
            name_col(),
            col(
                "Data",
                "string",
                "",
                0,
                "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored in Data must not overlap with the keys in the BinaryData field, this is enforced during validation process.",
            ),
            age_col(),
        ],
        ("", "serviceaccounts") => vec![
            name_col(),
            col(
                "Secrets",
                "string",
                "",
                0,
                "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
            ),
            age_col(),
        ],
        ("", "events") | ("events.k8s.io", "events") => vec![
            col(
                "Last Seen",
                "string",
                "",
                0,
                "The time at which the most recent occurrence of this event was recorded.",
            ),
            col(
                "Type",
                "string",
                "",
                0,
                "Type of this event (Normal, Warning), new types could be added in the future",
            ),
            col(
                "Reason",
                "string",
                "",
                0,
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            col(
                "Object",
                "string",
                "",
                0,
                "The object that this event is about.",
            ),
            col(
                "Subobject",
                "string",
                "",
                1,
                "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2].",
            ),
            col(
                "Source",
                "string",
                "",
                1,
                "The component reporting this event. Should be a short machine understandable string.",
            ),
            col(
                "Message",
                "string",
                "",
                0,
                "A human-readable description of the status of this operation.",
            ),
            col(
                "First Seen",
                "string",
                "",
                1,
                "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
            ),
            col(
                "Count",
                "string",
                "",
                1,
                "The number of times this event has occurred.",
            ),
            col("Name", "string", "name", 1, NAME_DESCRIPTION),
        ],
        ("coordination.k8s.io", "leases") => vec![
            name_col(),
            col(
                "Holder",
                "string",
                "",
                0,
                "holderIdentity contains the identity of the holder of a current lease.",
            ),
            age_col(),
        ],
        // rest.NewDefaultTableConvertor (CustomResourceDefinitions use it too)
        _ => vec![
            name_col(),
            col("Created At", "date", "", 0, CREATED_DESCRIPTION),
        ],
    }
}

fn len_of(v: &Value) -> i64 {
    match v {
        Value::Object(m) => m.len() as i64,
        Value::Array(a) => a.len() as i64,
        _ => 0,
    }
}

/// Cells of one object (`stored`: the storage representation).
pub(crate) fn cells(rt: &ResourceType, version: &str, stored: &Value) -> Vec<Value> {
    let meta = &stored["metadata"];
    let name = json!(meta["name"].as_str().unwrap_or_default());
    if rt.is_custom() {
        let served = kinds::to_served(rt, version, stored);
        let mut out = vec![name];
        for c in crd_columns(rt, version) {
            let ty = c["type"].as_str().unwrap_or_default();
            let found = JsonPath::parse(c["jsonPath"].as_str().unwrap_or_default())
                .ok()
                .and_then(|p| p.find(&served).first().map(|v| (*v).clone()));
            out.push(found.map(|v| crd_cell(ty, &v)).unwrap_or(Value::Null));
        }
        return out;
    }
    let s = |v: &Value| json!(v.as_str().unwrap_or_default());
    let created = age(&meta["creationTimestamp"]);
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "namespaces") => vec![name, s(&stored["status"]["phase"]), json!(created)],
        ("", "secrets") => vec![
            name,
            s(&stored["type"]),
            json!(len_of(&stored["data"])),
            json!(created),
        ],
        ("", "configmaps") => vec![
            name,
            json!(len_of(&stored["data"]) + len_of(&stored["binaryData"])),
            json!(created),
        ],
        ("", "serviceaccounts") => vec![name, json!(len_of(&stored["secrets"])), json!(created)],
        ("", "events") | ("events.k8s.io", "events") => event_cells(stored),
        ("coordination.k8s.io", "leases") => {
            vec![name, s(&stored["spec"]["holderIdentity"]), json!(created)]
        }
        _ => {
            let created_at = meta["creationTimestamp"]
                .as_str()
                .and_then(parse_time)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_else(|| "0001-01-01T00:00:00Z".into());
            vec![name, json!(created_at)]
        }
    }
}

/// `printEvent` (always wide, like the apiserver) on a stored core/v1 Event.
fn event_cells(e: &Value) -> Vec<Value> {
    let str_of = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let unset = |v: &Value| v.as_str().is_none_or(str::is_empty);
    let first = if unset(&e["firstTimestamp"]) {
        age(&e["eventTime"])
    } else {
        age(&e["firstTimestamp"])
    };
    let mut last = if unset(&e["lastTimestamp"]) {
        first.clone()
    } else {
        age(&e["lastTimestamp"])
    };
    let mut count = e["count"].as_i64().unwrap_or(0);
    if e["series"].is_object() {
        last = age(&e["series"]["lastObservedTime"]);
        count = e["series"]["count"].as_i64().unwrap_or(0);
    } else if count == 0 {
        count = 1;
    }
    let involved = &e["involvedObject"];
    let kind = str_of(&involved["kind"]).to_lowercase();
    let target = match involved["name"].as_str().filter(|n| !n.is_empty()) {
        Some(n) => format!("{kind}/{n}"),
        None => kind,
    };
    let first_non_empty = |a: &Value, b: &Value| {
        let a = str_of(a);
        if a.is_empty() { str_of(b) } else { a }
    };
    let component = first_non_empty(&e["source"]["component"], &e["reportingComponent"]);
    let instance = first_non_empty(&e["source"]["host"], &e["reportingInstance"]);
    let source = if instance.is_empty() {
        component
    } else {
        format!("{component}, {instance}")
    };
    vec![
        json!(last),
        json!(str_of(&e["type"])),
        json!(str_of(&e["reason"])),
        json!(target),
        json!(str_of(&involved["fieldPath"])),
        json!(source),
        json!(str_of(&e["message"]).trim()),
        json!(first),
        json!(count),
        json!(str_of(&e["metadata"]["name"])),
    ]
}

/// One row; `stored` is the storage representation.
pub(crate) fn row(rt: &ResourceType, version: &str, stored: &Value, opts: &TableOptions) -> Value {
    let mut row = json!({"cells": cells(rt, version, stored)});
    match opts.include {
        Include::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": opts.api_version,
                "metadata": stored["metadata"],
            });
        }
        Include::Object => row["object"] = kinds::to_served(rt, version, stored),
        Include::None => {}
    }
    row
}

/// A `Table` of `rows` (from [`row`]); `list_meta` becomes its `metadata`, and
/// `headers: false` leaves out the column definitions (watch events after the first).
pub(crate) fn table(
    rt: &ResourceType,
    version: &str,
    opts: &TableOptions,
    list_meta: Value,
    rows: Vec<Value>,
    headers: bool,
) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": opts.api_version,
        "metadata": list_meta,
        "columnDefinitions": if headers { json!(columns(rt, version)) } else { Value::Null },
        "rows": rows,
    })
}

/// A `Table` with the single object `stored`.
pub(crate) fn single(
    rt: &ResourceType,
    version: &str,
    stored: &Value,
    opts: &TableOptions,
    headers: bool,
) -> Value {
    let mut meta = json!({});
    if let Some(rv) = stored["metadata"]["resourceVersion"].as_str() {
        meta["resourceVersion"] = json!(rv);
    }
    table(
        rt,
        version,
        opts,
        meta,
        vec![row(rt, version, stored, opts)],
        headers,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    #[test]
    fn human_durations() {
        let cases = [
            (TimeDelta::seconds(-5), "<invalid>"),
            (TimeDelta::milliseconds(-1500), "0s"),
            (TimeDelta::seconds(0), "0s"),
            (TimeDelta::seconds(119), "119s"),
            (TimeDelta::seconds(120), "2m"),
            (TimeDelta::seconds(5 * 60 + 7), "5m7s"),
            (TimeDelta::minutes(42), "42m"),
            (TimeDelta::minutes(3 * 60 + 20), "3h20m"),
            (TimeDelta::hours(5), "5h"),
            (TimeDelta::hours(30), "30h"),
            (TimeDelta::hours(24 * 3 + 4), "3d4h"),
            (TimeDelta::days(100), "100d"),
            (TimeDelta::days(365 * 3 + 10), "3y10d"),
            (TimeDelta::days(365 * 9), "9y"),
        ];
        for (d, want) in cases {
            assert_eq!(human_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn go_formatting() {
        assert_eq!(go_text(&json!(1.5)), "1.5");
        assert_eq!(go_text(&json!(3)), "3");
        assert_eq!(go_text(&json!(1e21)), "1e+21");
        assert_eq!(go_text(&json!(1234567.0)), "1.234567e+06");
        assert_eq!(go_text(&json!(123456.0)), "123456");
        assert_eq!(go_text(&json!(0.00001)), "1e-05");
        assert_eq!(go_text(&json!(true)), "true");
        assert_eq!(go_text(&json!({"b": 1, "a": [2]})), r#"{"a":[2],"b":1}"#);
    }

    #[test]
    fn negotiation() {
        let p = Params::new();
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            negotiate(kubectl, &p).unwrap(),
            Repr::Table(TableOptions {
                api_version: "meta.k8s.io/v1",
                include: Include::Metadata
            })
        );
        assert!(matches!(
            negotiate("application/json;as=Table;v=v1beta1;g=meta.k8s.io", &p).unwrap(),
            Repr::Table(TableOptions {
                api_version: "meta.k8s.io/v1beta1",
                ..
            })
        ));
        assert_eq!(
            negotiate(
                "application/json;as=Table;v=v2;g=meta.k8s.io, application/json",
                &p
            )
            .unwrap(),
            Repr::Object
        );
        assert_eq!(negotiate("", &p).unwrap(), Repr::Object);
        assert_eq!(
            negotiate("application/vnd.kubernetes.protobuf,application/json", &p).unwrap(),
            Repr::Object
        );
        assert_eq!(
            negotiate(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
                &p
            )
            .unwrap(),
            Repr::Metadata
        );
        assert_eq!(
            negotiate("application/json;as=Table;v=v2;g=meta.k8s.io", &p)
                .unwrap_err()
                .to_status()["code"],
            406
        );
        let bad: Params = [("includeObject".to_string(), "All".to_string())].into();
        assert_eq!(
            negotiate(kubectl, &bad).unwrap_err().to_status()["code"],
            400
        );
    }
}
