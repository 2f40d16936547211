//! The table of served resource types: a data-driven list of built-ins plus
//! whatever CustomResourceDefinitions register.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

/// One served resource (`group`/`plural`), possibly in several versions.
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    /// Served versions, in the apiserver's preference order (first = preferred).
    pub versions: Vec<String>,
    /// The version objects are stored in.
    pub storage_version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `/status` subresource (main-resource writes ignore `status`).
    pub status_subresource: bool,
    /// Maintains `metadata.generation`.
    pub generation: bool,
    /// Field-selector labels supported besides `metadata.name`/`metadata.namespace`.
    pub field_labels: Vec<String>,
    /// Set for custom resources: openAPIV3Schema per version (if any).
    pub schemas: Option<BTreeMap<String, Value>>,
    /// Objects are stored under this (group, plural) (events.k8s.io shares core events).
    pub storage_group: String,
    /// Custom resources: `additionalPrinterColumns` per version (absent or empty =
    /// the default `Age` column), used for `Table` output.
    pub printer_columns: BTreeMap<String, Vec<Value>>,
}

impl ResourceType {
    /// `secrets` for core, `oauthtokens.example.com` otherwise (used in messages).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    pub fn storage_key(&self) -> (String, String) {
        (self.storage_group.clone(), self.plural.clone())
    }

    pub fn is_custom(&self) -> bool {
        self.schemas.is_some()
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    status: bool,
    generation: bool,
    field_labels: &'static [&'static str],
    storage_group: &'static str,
}

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

const EVENTS_V1_FIELDS: &[&str] = &[
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "regarding.apiVersion",
    "regarding.resourceVersion",
    "regarding.fieldPath",
    "reason",
    "reportingController",
    "type",
];

/// Built-in resource types. Add a kind with one line.
#[rustfmt::skip]
const BUILTINS: &[Builtin] = &[
    Builtin { group: "", version: "v1", plural: "namespaces", singular: "namespace", kind: "Namespace", namespaced: false, short_names: &["ns"], status: true, generation: false, field_labels: &["status.phase"], storage_group: "" },
    Builtin { group: "", version: "v1", plural: "secrets", singular: "secret", kind: "Secret", namespaced: true, short_names: &[], status: false, generation: false, field_labels: &["type"], storage_group: "" },
    Builtin { group: "", version: "v1", plural: "configmaps", singular: "configmap", kind: "ConfigMap", namespaced: true, short_names: &["cm"], status: false, generation: false, field_labels: &[], storage_group: "" },
    Builtin { group: "", version: "v1", plural: "serviceaccounts", singular: "serviceaccount", kind: "ServiceAccount", namespaced: true, short_names: &["sa"], status: false, generation: false, field_labels: &[], storage_group: "" },
    Builtin { group: "", version: "v1", plural: "events", singular: "event", kind: "Event", namespaced: true, short_names: &["ev"], status: false, generation: false, field_labels: EVENT_FIELDS, storage_group: "" },
    Builtin { group: "events.k8s.io", version: "v1", plural: "events", singular: "event", kind: "Event", namespaced: true, short_names: &["ev"], status: false, generation: false, field_labels: EVENTS_V1_FIELDS, storage_group: "" },
    Builtin { group: "coordination.k8s.io", version: "v1", plural: "leases", singular: "lease", kind: "Lease", namespaced: true, short_names: &[], status: false, generation: false, field_labels: &[], storage_group: "coordination.k8s.io" },
    Builtin { group: "apiextensions.k8s.io", version: "v1", plural: "customresourcedefinitions", singular: "customresourcedefinition", kind: "CustomResourceDefinition", namespaced: false, short_names: &["crd", "crds"], status: true, generation: true, field_labels: &[], storage_group: "apiextensions.k8s.io" },
];

/// All served types, keyed by (group, plural).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: BTreeMap<(String, String), Arc<ResourceType>>,
    /// Order in which groups were first registered (for `/apis`).
    group_order: Vec<String>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let mut r = Registry::default();
        for b in BUILTINS {
            r.insert(ResourceType {
                group: b.group.into(),
                versions: vec![b.version.into()],
                storage_version: b.version.into(),
                plural: b.plural.into(),
                singular: b.singular.into(),
                kind: b.kind.into(),
                list_kind: format!("{}List", b.kind),
                namespaced: b.namespaced,
                short_names: b.short_names.iter().map(|s| s.to_string()).collect(),
                categories: vec![],
                status_subresource: b.status,
                generation: b.generation,
                field_labels: b.field_labels.iter().map(|s| s.to_string()).collect(),
                schemas: None,
                storage_group: b.storage_group.into(),
                printer_columns: BTreeMap::new(),
            });
        }
        r
    }

    pub fn insert(&mut self, rt: ResourceType) {
        if !rt.group.is_empty() && !self.group_order.contains(&rt.group) {
            self.group_order.push(rt.group.clone());
        }
        self.types
            .insert((rt.group.clone(), rt.plural.clone()), Arc::new(rt));
    }

    pub fn remove(&mut self, group: &str, plural: &str) {
        self.types.remove(&(group.to_string(), plural.to_string()));
        if !self.types.keys().any(|(g, _)| g == group) {
            self.group_order.retain(|g| g != group);
        }
    }

    /// The type served at `group`/`version`/`plural`, if that version is served.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .get(&(group.to_string(), plural.to_string()))
            .filter(|rt| rt.versions.iter().any(|v| v == version))
            .cloned()
    }

    pub fn get(&self, group: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .get(&(group.to_string(), plural.to_string()))
            .cloned()
    }

    /// Types in a group serving `version`.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<Arc<ResourceType>> {
        self.types
            .values()
            .filter(|rt| rt.group == group && rt.versions.iter().any(|v| v == version))
            .cloned()
            .collect()
    }

    /// Non-core groups with their served versions (preferred first).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        self.group_order
            .iter()
            .map(|g| {
                let mut versions: Vec<String> = Vec::new();
                for rt in self.types.values().filter(|rt| &rt.group == g) {
                    for v in &rt.versions {
                        if !versions.contains(v) {
                            versions.push(v.clone());
                        }
                    }
                }
                sort_versions(&mut versions);
                (g.clone(), versions)
            })
            .collect()
    }
}

/// Kubernetes version priority: GA > beta > alpha, higher numbers first, then others alphabetically.
pub fn sort_versions(versions: &mut [String]) {
    fn key(v: &str) -> (u8, i64, i64, String) {
        let parse = |s: &str| -> Option<(i64, u8, i64)> {
            let rest = s.strip_prefix('v')?;
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            let major: i64 = digits.parse().ok()?;
            let tail = &rest[digits.len()..];
            if tail.is_empty() {
                return Some((major, 0, 0));
            }
            for (pre, rank) in [("beta", 1u8), ("alpha", 2u8)] {
                if let Some(n) = tail.strip_prefix(pre) {
                    return Some((major, rank, n.parse().ok()?));
                }
            }
            None
        };
        match parse(v) {
            Some((major, rank, minor)) => (rank, -major, -minor, String::new()),
            None => (3, 0, 0, v.to_string()),
        }
    }
    versions.sort_by_key(|v| key(v));
}

/// Build the resource type a CRD object (`apiextensions.k8s.io/v1`) describes.
pub fn from_crd(crd: &Value) -> Result<ResourceType, Vec<(String, String)>> {
    let spec = &crd["spec"];
    let mut errs = Vec::new();
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let group = s(&spec["group"]);
    let names = &spec["names"];
    let plural = s(&names["plural"]);
    let kind = s(&names["kind"]);
    if group.is_empty() {
        errs.push(("spec.group".into(), "Required value".into()));
    }
    if plural.is_empty() {
        errs.push(("spec.names.plural".into(), "Required value".into()));
    }
    if kind.is_empty() {
        errs.push(("spec.names.kind".into(), "Required value".into()));
    }
    let name = s(&crd["metadata"]["name"]);
    if name != format!("{plural}.{group}") {
        errs.push((
            "metadata.name".into(),
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let scope = s(&spec["scope"]);
    if scope != "Namespaced" && scope != "Cluster" {
        errs.push((
            "spec.scope".into(),
            format!(
                "Unsupported value: \"{scope}\": supported values: \"Cluster\", \"Namespaced\""
            ),
        ));
    }
    let mut versions = Vec::new();
    let mut storage = String::new();
    let mut schemas = BTreeMap::new();
    let mut printer_columns = BTreeMap::new();
    let mut status = false;
    for (i, v) in spec["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let vn = s(&v["name"]);
        let columns = v["additionalPrinterColumns"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (j, col) in columns.iter().enumerate() {
            let path = format!("spec.versions[{i}].additionalPrinterColumns[{j}]");
            errs.extend(validate_printer_column(col, &path));
        }
        printer_columns.insert(vn.clone(), columns);
        if v["storage"].as_bool() == Some(true) {
            if !storage.is_empty() {
                errs.push((
                    "spec.versions".into(),
                    "Invalid value: must have exactly one version marked as storage version".into(),
                ));
            }
            storage = vn.clone();
        }
        if v["served"].as_bool() == Some(true) {
            versions.push(vn.clone());
        }
        if v["subresources"]["status"].is_object() {
            status = true;
        }
        schemas.insert(vn, v["schema"]["openAPIV3Schema"].clone());
    }
    if storage.is_empty() {
        errs.push((
            "spec.versions".into(),
            "Invalid value: must have exactly one version marked as storage version".into(),
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    sort_versions(&mut versions);
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(ResourceType {
        storage_group: group.clone(),
        group,
        versions,
        storage_version: storage,
        singular: names["singular"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| kind.to_lowercase()),
        list_kind: names["listKind"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("{kind}List")),
        kind,
        plural,
        namespaced: scope == "Namespaced",
        short_names: strings(&names["shortNames"]),
        categories: strings(&names["categories"]),
        status_subresource: status,
        generation: true,
        field_labels: vec![],
        schemas: Some(schemas),
        printer_columns,
    })
}

/// `ValidateCustomResourceColumnDefinition` of the real apiserver.
fn validate_printer_column(col: &Value, path: &str) -> Vec<(String, String)> {
    const TYPES: &[&str] = &["boolean", "date", "integer", "number", "string"];
    const FORMATS: &[&str] = &[
        "byte",
        "date",
        "date-time",
        "double",
        "float",
        "int32",
        "int64",
        "password",
    ];
    let quoted = |l: &[&str]| {
        l.iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let s = |k: &str| col[k].as_str().unwrap_or_default();
    let mut errs = Vec::new();
    if s("name").is_empty() {
        errs.push((format!("{path}.name"), "Required value".into()));
    }
    match s("type") {
        "" => errs.push((
            format!("{path}.type"),
            format!("Required value: must be one of {}", TYPES.join(",")),
        )),
        t if !TYPES.contains(&t) => errs.push((
            format!("{path}.type"),
            format!(
                "Unsupported value: \"{t}\": supported values: {}",
                quoted(TYPES)
            ),
        )),
        _ => {}
    }
    let format = s("format");
    if !format.is_empty() && !FORMATS.contains(&format) {
        errs.push((
            format!("{path}.format"),
            format!(
                "Unsupported value: \"{format}\": supported values: {}",
                quoted(FORMATS)
            ),
        ));
    }
    let json_path = s("jsonPath");
    if json_path.is_empty() {
        errs.push((format!("{path}.jsonPath"), "Required value".into()));
    } else if !json_path.starts_with('.') {
        errs.push((
            format!("{path}.jsonPath"),
            format!("Invalid value: \"{json_path}\": must be a simple json path starting with ."),
        ));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_priority() {
        let mut v: Vec<String> = ["v1alpha1", "v2beta1", "foo", "v1", "v1beta2", "v2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        sort_versions(&mut v);
        assert_eq!(v, ["v2", "v1", "v2beta1", "v1beta2", "v1alpha1", "foo"]);
    }
}
