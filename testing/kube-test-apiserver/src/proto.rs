//! Just enough Kubernetes protobuf to read the request bodies kubectl's typed
//! clients send (`kubectl create namespace|secret|configmap|serviceaccount`):
//! the `k8s\0` + `runtime.Unknown` envelope and a hand-written field table for a
//! few built-in kinds. Responses are always JSON, which client-go accepts.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

#[derive(Clone, Copy)]
enum F {
    Str,
    Int,
    Bool,
    Time { micros: bool },
    Msg(&'static [Field]),
    RepeatedStr,
    RepeatedMsg(&'static [Field]),
    MapStr,
    MapBytes,
}

type Field = (u64, &'static str, F);

const OWNER_REF: &[Field] = &[
    (5, "apiVersion", F::Str),
    (1, "kind", F::Str),
    (3, "name", F::Str),
    (4, "uid", F::Str),
    (6, "controller", F::Bool),
    (7, "blockOwnerDeletion", F::Bool),
];
const OBJECT_META: &[Field] = &[
    (1, "name", F::Str),
    (2, "generateName", F::Str),
    (3, "namespace", F::Str),
    (5, "uid", F::Str),
    (6, "resourceVersion", F::Str),
    (7, "generation", F::Int),
    (9, "deletionTimestamp", F::Time { micros: false }),
    (10, "deletionGracePeriodSeconds", F::Int),
    (11, "labels", F::MapStr),
    (12, "annotations", F::MapStr),
    (13, "ownerReferences", F::RepeatedMsg(OWNER_REF)),
    (14, "finalizers", F::RepeatedStr),
];
const SECRET: &[Field] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "data", F::MapBytes),
    (3, "type", F::Str),
    (4, "stringData", F::MapStr),
    (5, "immutable", F::Bool),
];
const CONFIGMAP: &[Field] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "data", F::MapStr),
    (3, "binaryData", F::MapBytes),
    (4, "immutable", F::Bool),
];
const NAMESPACE: &[Field] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "spec", F::Msg(&[(1, "finalizers", F::RepeatedStr)])),
];
const OBJECT_REF: &[Field] = &[
    (1, "kind", F::Str),
    (2, "namespace", F::Str),
    (3, "name", F::Str),
    (4, "uid", F::Str),
    (5, "apiVersion", F::Str),
];
const SERVICE_ACCOUNT: &[Field] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "secrets", F::RepeatedMsg(OBJECT_REF)),
    (
        3,
        "imagePullSecrets",
        F::RepeatedMsg(&[(1, "name", F::Str)]),
    ),
    (4, "automountServiceAccountToken", F::Bool),
];
const LEASE: &[Field] = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (
        2,
        "spec",
        F::Msg(&[
            (1, "holderIdentity", F::Str),
            (2, "leaseDurationSeconds", F::Int),
            (3, "acquireTime", F::Time { micros: true }),
            (4, "renewTime", F::Time { micros: true }),
            (5, "leaseTransitions", F::Int),
            (6, "strategy", F::Str),
            (7, "preferredHolder", F::Str),
        ]),
    ),
];

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (b, rest) = self.buf.split_first()?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        if n > self.buf.len() {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    /// Next `(field number, value)`; only varint and length-delimited values are kept.
    fn next(&mut self) -> Option<Option<(u64, Wire<'a>)>> {
        if self.buf.is_empty() {
            return Some(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            2 => Wire::Bytes(self.bytes()?),
            1 => {
                self.buf = self.buf.get(8..)?;
                Wire::Skipped
            }
            5 => {
                self.buf = self.buf.get(4..)?;
                Wire::Skipped
            }
            _ => return None,
        };
        Some(Some((key >> 3, value)))
    }
}

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Skipped,
}

fn fields(buf: &[u8]) -> Option<Vec<(u64, Wire<'_>)>> {
    let mut r = Reader { buf };
    let mut out = Vec::new();
    while let Some(f) = r.next()? {
        out.push(f);
    }
    Some(out)
}

fn text(b: &[u8]) -> Option<String> {
    String::from_utf8(b.to_vec()).ok()
}

fn time(b: &[u8], micros: bool) -> Option<Value> {
    let (mut secs, mut nanos) = (0i64, 0u32);
    for (n, w) in fields(b)? {
        match (n, w) {
            (1, Wire::Varint(v)) => secs = v as i64,
            (2, Wire::Varint(v)) => nanos = v as u32,
            _ => {}
        }
    }
    let t = chrono::DateTime::from_timestamp(secs, nanos)?;
    let fmt = if micros {
        "%Y-%m-%dT%H:%M:%S%.6fZ"
    } else {
        "%Y-%m-%dT%H:%M:%SZ"
    };
    Some(json!(t.format(fmt).to_string()))
}

fn map_entry(b: &[u8], as_bytes: bool) -> Option<(String, Value)> {
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    for (n, w) in fields(b)? {
        match (n, w) {
            (1, Wire::Bytes(x)) => k = text(x)?,
            (2, Wire::Bytes(x)) if as_bytes => v = json!(STANDARD.encode(x)),
            (2, Wire::Bytes(x)) => v = json!(text(x)?),
            _ => {}
        }
    }
    Some((k, v))
}

fn message(b: &[u8], schema: &[Field]) -> Option<Value> {
    let mut out = Map::new();
    for (n, w) in fields(b)? {
        let Some((_, name, kind)) = schema.iter().find(|f| f.0 == n) else {
            continue;
        };
        let name = name.to_string();
        match (kind, w) {
            (F::Str, Wire::Bytes(x)) => {
                out.insert(name, json!(text(x)?));
            }
            (F::Int, Wire::Varint(v)) => {
                out.insert(name, json!(v as i64));
            }
            (F::Bool, Wire::Varint(v)) => {
                out.insert(name, json!(v != 0));
            }
            (F::Time { micros }, Wire::Bytes(x)) => {
                out.insert(name, time(x, *micros)?);
            }
            (F::Msg(s), Wire::Bytes(x)) => {
                out.insert(name, message(x, s)?);
            }
            (F::RepeatedStr, Wire::Bytes(x)) => push(&mut out, name, json!(text(x)?)),
            (F::RepeatedMsg(s), Wire::Bytes(x)) => push(&mut out, name, message(x, s)?),
            (F::MapStr | F::MapBytes, Wire::Bytes(x)) => {
                let (k, v) = map_entry(x, matches!(kind, F::MapBytes))?;
                out.entry(name).or_insert_with(|| json!({}))[k.as_str()] = v;
            }
            _ => {}
        }
    }
    // proto2 serialises unset strings as "": treat them as absent
    out.retain(|_, v| v.as_str() != Some(""));
    Some(Value::Object(out))
}

fn push(out: &mut Map<String, Value>, name: String, v: Value) {
    if let Value::Array(a) = out.entry(name).or_insert_with(|| json!([])) {
        a.push(v);
    }
}

/// Decode a `application/vnd.kubernetes.protobuf` body into JSON (None if the
/// kind is not one this server knows how to read).
pub fn decode(body: &[u8]) -> Option<Value> {
    let unknown = body.strip_prefix(b"k8s\0")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, w) in fields(unknown)? {
        match (n, w) {
            (1, Wire::Bytes(tm)) => {
                for (tn, tw) in fields(tm)? {
                    match (tn, tw) {
                        (1, Wire::Bytes(x)) => api_version = text(x)?,
                        (2, Wire::Bytes(x)) => kind = text(x)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(x)) => raw = x,
            _ => {}
        }
    }
    let schema = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Secret") => SECRET,
        ("v1", "ConfigMap") => CONFIGMAP,
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("coordination.k8s.io/v1", "Lease") => LEASE,
        _ => return None,
    };
    let mut v = message(raw, schema)?;
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(field: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![((field << 3) | 2) as u8, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_a_secret() {
        let meta = [
            ld(1, b"s"),
            ld(2, b""),
            ld(11, &[ld(1, b"app"), ld(2, b"x")].concat()),
        ]
        .concat();
        let secret = [
            ld(1, &meta),
            ld(2, &[ld(1, b"k"), ld(2, b"\x00\x01")].concat()),
            ld(3, b"Opaque"),
        ]
        .concat();
        let unknown = [
            ld(1, &[ld(1, b"v1"), ld(2, b"Secret")].concat()),
            ld(2, &secret),
        ]
        .concat();
        let body = [b"k8s\0".to_vec(), unknown].concat();
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "labels": {"app": "x"}}, "data": {"k": "AAE="}, "type": "Opaque"})
        );
    }
}
