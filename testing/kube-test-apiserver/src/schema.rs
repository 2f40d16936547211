//! Structural-schema handling for custom resources: pruning of unknown fields,
//! dropping of `null`s for non-nullable fields, defaulting and basic validation
//! (types, `required`, `enum`, string lengths, numeric bounds, item counts).
//! CEL rules (`x-kubernetes-validations`), `pattern` and `format` are not checked.

use serde_json::Value;

type Errors = Vec<(String, String)>;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => v.is_number(),
        _ => true,
    }
}

/// Prune, default and validate a whole custom object against its version's
/// `openAPIV3Schema`. `apiVersion`, `kind` and `metadata` are always kept.
/// Returns the validation errors; the paths of pruned unknown fields are added to `pruned`.
pub fn process(schema: &Value, obj: &mut Value, pruned: &mut Vec<String>) -> Errors {
    let mut errs = Vec::new();
    if !schema.is_object() {
        return errs;
    }
    if let Value::Object(m) = obj {
        let meta: Vec<(String, Value)> = ["apiVersion", "kind", "metadata"]
            .iter()
            .filter_map(|k| m.remove(*k).map(|v| (k.to_string(), v)))
            .collect();
        walk(schema, obj, "", &mut errs, pruned);
        if let Value::Object(m) = obj {
            for (k, v) in meta {
                m.insert(k, v);
            }
        }
    }
    errs
}

fn walk(schema: &Value, v: &mut Value, path: &str, errs: &mut Errors, pruned: &mut Vec<String>) {
    if !schema.is_object() || (v.is_null() && schema["nullable"].as_bool() == Some(true)) {
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"].as_bool() == Some(true);
    if int_or_string {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            errs.push((
                path.into(),
                format!(
                    "Invalid value: {}: {path} in body must be of type integer or string",
                    short(v)
                ),
            ));
        }
        return;
    }
    if let Some(ty) = schema["type"].as_str()
        && !type_ok(ty, v)
    {
        errs.push((
            path.into(),
            format!(
                "Invalid value: {}: {path} in body must be of type {ty}: {}",
                short(v),
                short(v)
            ),
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(short).collect();
        errs.push((
            path.into(),
            format!(
                "Unsupported value: {}: supported values: {}",
                short(v),
                list.join(", ")
            ),
        ));
    }
    match v {
        Value::Object(m) => {
            let props = schema["properties"].as_object();
            let preserve = schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true);
            let additional = &schema["additionalProperties"];
            // nulls of non-nullable fields are pruned before defaulting
            m.retain(|k, val| {
                let child = props.and_then(|p| p.get(k)).unwrap_or(additional);
                !(val.is_null() && child["nullable"].as_bool() != Some(true))
            });
            if let Some(props) = props {
                for (k, ps) in props {
                    if !m.contains_key(k)
                        && let Some(d) = ps.get("default")
                    {
                        m.insert(k.clone(), d.clone());
                    }
                }
            }
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let child_path = join(path, &k);
                if let Some(ps) = props.and_then(|p| p.get(&k)) {
                    walk(
                        ps,
                        m.get_mut(&k).expect("key exists"),
                        &child_path,
                        errs,
                        pruned,
                    );
                } else if additional.is_object() {
                    walk(
                        additional,
                        m.get_mut(&k).expect("key exists"),
                        &child_path,
                        errs,
                        pruned,
                    );
                } else if !(preserve || additional.as_bool() == Some(true)) {
                    m.remove(&k);
                    pruned.push(child_path);
                }
            }
            for req in schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str())
            {
                if !m.contains_key(req) {
                    errs.push((join(path, req), "Required value".into()));
                }
            }
            if let Some(max) = schema["maxProperties"].as_u64()
                && m.len() as u64 > max
            {
                errs.push((
                    path.into(),
                    format!("Too many: {}: must have at most {max} items", m.len()),
                ));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(
                    &schema["items"],
                    item,
                    &format!("{path}[{i}]"),
                    errs,
                    pruned,
                );
            }
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                errs.push((
                    path.into(),
                    format!("Too many: {}: must have at most {max} items", items.len()),
                ));
            }
            if let Some(min) = schema["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                errs.push((
                    path.into(),
                    format!(
                        "Invalid value: {}: {path} in body should have at least {min} items",
                        items.len()
                    ),
                ));
            }
        }
        Value::String(s) => {
            let n = s.chars().count() as u64;
            if let Some(max) = schema["maxLength"].as_u64()
                && n > max
            {
                errs.push((
                    path.into(),
                    format!("Too long: may not be more than {max} bytes"),
                ));
            }
            if let Some(min) = schema["minLength"].as_u64()
                && n < min
            {
                errs.push((
                    path.into(),
                    format!(
                        "Invalid value: \"{s}\": {path} in body should be at least {min} chars long"
                    ),
                ));
            }
        }
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or_default();
            if let Some(min) = schema["minimum"].as_f64()
                && f < min
            {
                errs.push((path.into(), format!("Invalid value: {n}: {path} in body should be greater than or equal to {min}")));
            }
            if let Some(max) = schema["maximum"].as_f64()
                && f > max
            {
                errs.push((
                    path.into(),
                    format!(
                        "Invalid value: {n}: {path} in body should be less than or equal to {max}"
                    ),
                ));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prunes_defaults_and_validates() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["url"], "properties": {
                "url": {"type": "string"},
                "refresh": {"type": "integer", "default": 60, "minimum": 1},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "extra": {"type": "object", "additionalProperties": {"type": "string"}},
                "opt": {"type": "string", "nullable": true},
            }},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        }});
        let mut o = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n"},
            "spec": {"url": "u", "unknown": 1, "extra": {"a": "b"}, "mode": null, "opt": null}, "status": {"anything": 1}, "junk": true});
        let mut pruned = Vec::new();
        assert!(process(&schema, &mut o, &mut pruned).is_empty());
        assert_eq!(pruned, ["junk", "spec.unknown"]);
        assert_eq!(
            o["spec"],
            json!({"url": "u", "refresh": 60, "extra": {"a": "b"}, "opt": null})
        );
        assert!(o.get("junk").is_none());
        assert_eq!(o["status"]["anything"], 1);
        let mut bad = json!({"spec": {"refresh": "x", "mode": "c"}});
        let errs = process(&schema, &mut bad, &mut pruned);
        assert_eq!(errs.len(), 3, "{errs:?}");
    }
}
