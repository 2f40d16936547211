//! Server-side apply and `metadata.managedFields`, simplified.
//!
//! Ownership is tracked per manager entry `(manager, operation, subresource)` as a
//! set of *leaf paths*: every map key is a path segment, and anything that is not a
//! non-empty map (scalars, lists, empty maps) is a leaf. Lists are therefore atomic
//! (a real apiserver merges `listType=map`/`set` lists element-wise).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

pub type FieldPath = Vec<String>;
pub type FieldSet = BTreeSet<FieldPath>;

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub subresource: String,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
}

/// A field owned by another manager with a different value.
#[derive(Debug, Clone)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    pub path: FieldPath,
}

const UNTRACKED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

fn untracked(path: &[String]) -> bool {
    match path {
        [a] => a == "apiVersion" || a == "kind",
        [m, f, ..] => m == "metadata" && UNTRACKED_META.contains(&f.as_str()),
        _ => false,
    }
}

/// All leaf paths of `v` that field management tracks.
pub fn leaves(v: &Value) -> FieldSet {
    fn walk(v: &Value, prefix: &mut FieldPath, out: &mut FieldSet) {
        if !prefix.is_empty() && untracked(prefix) {
            return;
        }
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    prefix.push(k.clone());
                    walk(child, prefix, out);
                    prefix.pop();
                }
            }
            _ if !prefix.is_empty() => {
                out.insert(prefix.clone());
            }
            _ => {}
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

pub fn get_path<'a>(v: &'a Value, p: &[String]) -> Option<&'a Value> {
    p.iter().try_fold(v, |cur, seg| cur.as_object()?.get(seg))
}

/// Remove the value at `p`, then any parent maps that became empty by it.
pub fn remove_path(v: &mut Value, p: &[String]) {
    let Some((last, parents)) = p.split_last() else {
        return;
    };
    let Some(Value::Object(m)) = parents
        .iter()
        .try_fold(&mut *v, |cur, seg| cur.as_object_mut()?.get_mut(seg))
    else {
        return;
    };
    if m.remove(last).is_some() && m.is_empty() && !parents.is_empty() {
        remove_path(v, parents);
    }
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Deep merge used by apply: maps merge, everything else replaces, `null` removes.
pub fn merge_apply(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, pv) in p {
                if pv.is_null() {
                    t.remove(k);
                } else if let (Some(tv @ Value::Object(_)), Value::Object(_)) = (t.get_mut(k), pv) {
                    merge_apply(tv, pv);
                } else {
                    let mut fresh = Value::Object(Map::new());
                    merge_apply(&mut fresh, pv);
                    t.insert(k.clone(), if pv.is_object() { fresh } else { pv.clone() });
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn now() -> String {
    crate::store::timestamp()
}

/// Server-side apply of `config` by `manager` onto `live` (None = create).
/// Returns the merged object (managedFields not yet written) or the conflicts.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    subresource: &str,
    api_version: &str,
    force: bool,
    entries: &mut Vec<Entry>,
) -> Result<Value, Vec<Conflict>> {
    let empty = json!({});
    let live_v = live.unwrap_or(&empty);
    let cfg = leaves(config);
    let is_me =
        |e: &Entry| e.manager == manager && e.operation == "Apply" && e.subresource == subresource;

    let mut conflicts = Vec::new();
    for e in entries.iter_mut().filter(|e| !is_me(e)) {
        let mut lost = Vec::new();
        for q in &e.fields {
            let clash = cfg
                .iter()
                .any(|p| overlaps(p, q) && get_path(live_v, p) != get_path(config, p));
            if clash {
                lost.push(q.clone());
            }
        }
        if force {
            for q in lost {
                e.fields.remove(&q);
            }
        } else {
            conflicts.extend(lost.into_iter().map(|path| Conflict {
                manager: e.manager.clone(),
                api_version: e.api_version.clone(),
                path,
            }));
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }

    let mut out = live_v.clone();
    let previous = entries
        .iter()
        .find(|e| is_me(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    for r in previous
        .iter()
        .filter(|r| !cfg.iter().any(|p| overlaps(p, r)))
    {
        let shared = entries
            .iter()
            .filter(|e| !is_me(e))
            .any(|e| e.fields.iter().any(|q| overlaps(q, r)));
        if !shared {
            remove_path(&mut out, r);
        }
    }
    merge_apply(&mut out, config);

    entries.retain(|e| !e.fields.is_empty() || is_me(e));
    match entries.iter_mut().find(|e| is_me(e)) {
        Some(e) => {
            if e.fields != cfg {
                e.fields = cfg;
                e.time = now();
            }
            e.api_version = api_version.to_string();
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: "Apply".into(),
            subresource: subresource.to_string(),
            api_version: api_version.to_string(),
            time: now(),
            fields: cfg,
        }),
    }
    entries.retain(|e| !e.fields.is_empty());
    Ok(out)
}

/// Record a non-apply write (create/update/patch) by `manager`: it takes over every
/// changed leaf; removed leaves are dropped from all entries.
pub fn track_update(
    old: Option<&Value>,
    new: &Value,
    manager: &str,
    subresource: &str,
    api_version: &str,
    entries: &mut Vec<Entry>,
) {
    let empty = json!({});
    let old_v = old.unwrap_or(&empty);
    let changed: Vec<FieldPath> = leaves(new)
        .into_iter()
        .filter(|p| get_path(old_v, p) != get_path(new, p))
        .collect();
    let removed: Vec<FieldPath> = leaves(old_v)
        .into_iter()
        .filter(|p| get_path(new, p).is_none())
        .collect();
    if changed.is_empty() && removed.is_empty() {
        return;
    }
    for e in entries.iter_mut() {
        e.fields
            .retain(|q| !changed.iter().chain(removed.iter()).any(|p| overlaps(p, q)));
    }
    if !changed.is_empty() {
        let is_me = |e: &Entry| {
            e.manager == manager && e.operation == "Update" && e.subresource == subresource
        };
        match entries.iter_mut().find(|e| is_me(e)) {
            Some(e) => {
                e.fields.extend(changed);
                e.time = now();
                e.api_version = api_version.to_string();
            }
            None => entries.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                subresource: subresource.to_string(),
                api_version: api_version.to_string(),
                time: now(),
                fields: changed.into_iter().collect(),
            }),
        }
    }
    entries.retain(|e| !e.fields.is_empty());
}

fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for seg in path {
            let entry = cur.entry(format!("f:{seg}")).or_insert_with(|| json!({}));
            cur = entry.as_object_mut().expect("fieldsV1 nodes are maps");
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value, prefix: &mut FieldPath, out: &mut FieldSet) {
    let Some(m) = v.as_object() else { return };
    let mut any_child = false;
    for (k, child) in m {
        if let Some(seg) = k.strip_prefix("f:") {
            any_child = true;
            prefix.push(seg.to_string());
            from_fields_v1(child, prefix, out);
            prefix.pop();
        }
    }
    if !any_child && !prefix.is_empty() {
        out.insert(prefix.clone());
    }
}

/// Parse `metadata.managedFields` of a stored object.
pub fn read_entries(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj["metadata"]["managedFields"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .map(|e| {
            let mut fields = FieldSet::new();
            from_fields_v1(&e["fieldsV1"], &mut Vec::new(), &mut fields);
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            Entry {
                manager: s("manager"),
                operation: s("operation"),
                subresource: s("subresource"),
                api_version: s("apiVersion"),
                time: s("time"),
                fields,
            }
        })
        .collect()
}

/// Write `metadata.managedFields` (removed when there are no entries).
pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
        return;
    }
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    meta.insert("managedFields".into(), Value::Array(list));
}

/// `.spec.holderIdentity` style rendering of a path, as in apiserver messages.
pub fn dotted(p: &[String]) -> String {
    p.iter().map(|s| format!(".{s}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_removes_fields_it_no_longer_sets_and_detects_conflicts() {
        let mut entries = Vec::new();
        let cfg1 =
            json!({"metadata": {"name": "x", "labels": {"a": "1", "b": "2"}}, "data": {"k": "v"}});
        let o1 = apply(None, &cfg1, "m1", "", "v1", false, &mut entries).unwrap();
        assert_eq!(o1["metadata"]["labels"]["b"], "2");
        let cfg2 = json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "data": {"k": "v"}});
        let o2 = apply(Some(&o1), &cfg2, "m1", "", "v1", false, &mut entries).unwrap();
        assert!(o2["metadata"]["labels"].get("b").is_none());
        let cfg3 = json!({"data": {"k": "other"}});
        let err = apply(Some(&o2), &cfg3, "m2", "", "v1", false, &mut entries).unwrap_err();
        assert_eq!(dotted(&err[0].path), ".data.k");
        let same = json!({"data": {"k": "v"}});
        apply(Some(&o2), &same, "m2", "", "v1", false, &mut entries).unwrap();
        let o4 = apply(Some(&o2), &cfg3, "m2", "", "v1", true, &mut entries).unwrap();
        assert_eq!(o4["data"]["k"], "other");
        let mut obj = o4.clone();
        write_entries(&mut obj, &entries);
        assert_eq!(read_entries(&obj), entries);
    }
}
