//! The in-memory object store: one global resourceVersion counter (like etcd),
//! create/update/patch/apply/delete with apiserver semantics, finalizers,
//! garbage collection, namespace termination, and the watch event history.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::errors::{ApiError, ApiResult};
use crate::kinds;
use crate::registry::{self, Registry, ResourceType};
use crate::ssa;

/// `(storage group, plural, namespace or "", name)`.
pub type ObjKey = (String, String, String, String);

/// One change, as kept in the history and broadcast to watchers (storage representation).
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub etype: &'static str,
    pub object: Value,
    pub previous: Option<Value>,
}

/// How an existing object is to be changed.
pub enum Mutation {
    Replace(Value),
    MergePatch(Value),
    JsonPatch(json_patch::Patch),
    Apply { config: Value, force: bool },
}

/// Who writes what, where.
pub struct Target<'a> {
    pub rt: &'a Arc<ResourceType>,
    pub version: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    /// `""` or `"status"`.
    pub subresource: &'a str,
    pub manager: &'a str,
    pub dry_run: bool,
    /// `fieldValidation=Strict`: unknown fields of custom resources are an error.
    pub strict: bool,
}

impl Target<'_> {
    fn key(&self, name: &str) -> ObjKey {
        let (g, p) = self.rt.storage_key();
        (
            g,
            p,
            if self.rt.namespaced {
                self.namespace.to_string()
            } else {
                String::new()
            },
            name.to_string(),
        )
    }
    fn api_version(&self) -> String {
        self.rt.api_version(self.version)
    }
}

pub struct Store {
    pub registry: Registry,
    rv: u64,
    objects: BTreeMap<ObjKey, Value>,
    history: VecDeque<Arc<Change>>,
    history_cap: usize,
    /// Highest resourceVersion dropped from the history.
    compacted: u64,
    pub tx: broadcast::Sender<Arc<Change>>,
}

/// RFC 3339, seconds precision, UTC.
pub fn timestamp() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn rv_of(obj: &Value) -> Option<&str> {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("metadata is a map")
}

fn has_finalizers(obj: &Value) -> bool {
    obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

fn is_crd(rt: &ResourceType) -> bool {
    rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions"
}

const KEEP_META: &[&str] = &[
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "resourceVersion",
];

impl Store {
    pub fn new(history_cap: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let mut s = Store {
            registry: Registry::with_builtins(),
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            compacted: 0,
            tx,
        };
        let ns = s
            .registry
            .get("", "namespaces")
            .expect("namespaces are built in");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let t = Target {
                rt: &ns,
                version: "v1",
                namespace: "",
                name,
                subresource: "",
                manager: "kube-apiserver",
                dry_run: false,
                strict: false,
            };
            s.create(&t, json!({"metadata": {"name": name}}))
                .expect("initial namespaces");
        }
        s
    }

    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> ApiResult<&Value> {
        let (g, p) = rt.storage_key();
        let ns = if rt.namespaced { ns } else { "" };
        self.objects
            .get(&(g, p, ns.to_string(), name.to_string()))
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// Objects of a type (in one namespace if `ns` is Some), ordered by namespace and name.
    pub fn list<'a>(
        &'a self,
        rt: &ResourceType,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        let (g, p) = rt.storage_key();
        let start = (
            g.clone(),
            p.clone(),
            ns.unwrap_or_default().to_string(),
            String::new(),
        );
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.0 == g && k.1 == p && ns.is_none_or(|n| k.2 == n))
            .map(|(_, v)| v)
    }

    /// Changes after `rv`, or Err if some of them were already dropped (410 Expired).
    pub fn changes_since(&self, rv: u64) -> Result<Vec<Arc<Change>>, u64> {
        if rv < self.compacted {
            return Err(self.compacted);
        }
        Ok(self.history.iter().filter(|c| c.rv > rv).cloned().collect())
    }

    fn emit_for(
        &mut self,
        key: &ObjKey,
        etype: &'static str,
        object: Value,
        previous: Option<Value>,
    ) {
        let change = Arc::new(Change {
            rv: self.rv,
            group: key.0.clone(),
            plural: key.1.clone(),
            namespace: key.2.clone(),
            etype,
            object,
            previous,
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_cap {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        let _ = self.tx.send(change);
    }

    fn bump(&mut self, obj: &mut Value) {
        self.rv += 1;
        meta_mut(obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
    }

    fn namespace_check(&self, t: &Target, name: &str) -> ApiResult<()> {
        if !t.rt.namespaced {
            return Ok(());
        }
        let key = (
            "".to_string(),
            "namespaces".to_string(),
            String::new(),
            t.namespace.to_string(),
        );
        match self.objects.get(&key) {
            None => Err(ApiError::namespace_not_found(t.namespace)),
            Some(ns) if !ns["metadata"]["deletionTimestamp"].is_null() => Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{} \"{name}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
                    t.rt.qualified(),
                    t.namespace
                ),
            )
            .with_details(json!({"name": name, "kind": t.rt.plural, "causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {} is being terminated", t.namespace), "field": "metadata.namespace"}]}))),
            Some(_) => Ok(()),
        }
    }

    /// Kind-specific normalisation, validation and CRD bookkeeping of a candidate.
    fn finish(&self, t: &Target, old: Option<&Value>, obj: &mut Value) -> ApiResult<()> {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut pruned = Vec::new();
        let mut errs = kinds::normalize(t.rt, old, obj, &mut pruned);
        if t.strict && !pruned.is_empty() {
            let k = &t.rt.kind;
            let fields: Vec<String> = pruned
                .iter()
                .map(|p| format!("unknown field \"{p}\""))
                .collect();
            return Err(ApiError::bad_request(format!(
                "{k} in version \"{}\" cannot be handled as a {k}: strict decoding error: {}",
                t.version,
                fields.join(", ")
            )));
        }
        errs.extend(kinds::validate_metadata(t.rt, obj));
        if is_crd(t.rt) {
            match registry::from_crd(obj) {
                Ok(crd) => {
                    if let Some(existing) = self.registry.get(&crd.group, &crd.plural)
                        && !existing.is_custom()
                    {
                        errs.push((
                            "spec.names.plural".into(),
                            "Invalid value: conflicts with a built-in resource".into(),
                        ));
                    }
                    obj["status"] = crd_status(old, obj, &crd);
                }
                Err(e) => errs.extend(e),
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(t.rt, &name, errs))
        }
    }

    fn after_store(&mut self, t: &Target, obj: &Value) {
        if is_crd(t.rt)
            && let Ok(rt) = registry::from_crd(obj)
        {
            self.registry.insert(rt);
        }
    }

    /// POST (and the create half of apply).
    pub fn create(&mut self, t: &Target, mut obj: Value) -> ApiResult<Value> {
        if let Some(rv) = rv_of(&obj) {
            let _ = rv;
            return Err(ApiError::new(
                500,
                "InternalError",
                "resourceVersion should not be set on objects to be created",
            ));
        }
        kinds::to_storage(t.rt, &mut obj);
        let meta = meta_mut(&mut obj);
        let name = match meta
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            Some(n) => n.to_string(),
            None => match meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            {
                Some(prefix) => format!("{prefix}{}", random_suffix()),
                None => {
                    return Err(ApiError::invalid(
                        t.rt,
                        "",
                        vec![(
                            "metadata.name".into(),
                            "Required value: name or generateName is required".into(),
                        )],
                    ));
                }
            },
        };
        if !t.name.is_empty() && t.name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({name}) does not match the name on the URL ({})",
                t.name
            )));
        }
        if t.rt.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(ns) if !ns.is_empty() && ns != t.namespace => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {}
            }
            meta.insert("namespace".into(), json!(t.namespace));
        } else {
            meta.remove("namespace");
        }
        meta.insert("name".into(), json!(name));
        for f in KEEP_META.iter().chain(["managedFields", "selfLink"].iter()) {
            meta.remove(*f);
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(timestamp()));
        if t.rt.generation {
            meta.insert("generation".into(), json!(1));
        }
        self.namespace_check(t, &name)?;
        let key = t.key(&name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(t.rt, &name));
        }
        if t.rt.status_subresource
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        self.finish(t, None, &mut obj)?;
        let mut entries = Vec::new();
        ssa::track_update(
            None,
            &obj,
            t.manager,
            t.subresource,
            &t.api_version(),
            &mut entries,
        );
        ssa::write_entries(&mut obj, &entries);
        self.store_new(t, key, obj)
    }

    fn store_new(&mut self, t: &Target, key: ObjKey, mut obj: Value) -> ApiResult<Value> {
        if t.dry_run {
            return Ok(obj);
        }
        self.bump(&mut obj);
        self.objects.insert(key.clone(), obj.clone());
        self.emit_for(&key, "ADDED", obj.clone(), None);
        self.after_store(t, &obj);
        Ok(obj)
    }

    /// PUT / PATCH / apply. Returns the resulting object and whether it was created.
    pub fn write(&mut self, t: &Target, m: Mutation) -> ApiResult<(Value, bool)> {
        let key = t.key(t.name);
        let Some(old) = self.objects.get(&key).cloned() else {
            return match m {
                Mutation::Apply { config, force } => {
                    if rv_of(&config).is_some() {
                        return Err(ApiError::conflict(t.rt, t.name));
                    }
                    let mut config = strip_for_subresource(t, config);
                    kinds::to_storage(t.rt, &mut config);
                    kinds::fold_string_data(t.rt, &mut config);
                    let mut entries = Vec::new();
                    let mut obj = ssa::apply(
                        None,
                        &config,
                        t.manager,
                        t.subresource,
                        &t.api_version(),
                        force,
                        &mut entries,
                    )
                    .map_err(|c| conflict_error(t, c))?;
                    meta_mut(&mut obj).insert("name".into(), json!(t.name));
                    meta_mut(&mut obj).remove("managedFields");
                    let created = self.create_applied(t, obj, entries)?;
                    Ok((created, true))
                }
                _ => Err(ApiError::not_found(t.rt, t.name)),
            };
        };
        let old_rv = rv_of(&old).unwrap_or_default().to_string();
        let mut entries = ssa::read_entries(&old);
        let mut bare_old = old.clone();
        meta_mut(&mut bare_old).remove("managedFields");
        let served_old = kinds::to_served(t.rt, t.version, &old);
        let is_apply = matches!(m, Mutation::Apply { .. });
        let mut cand = match m {
            Mutation::Replace(body) => body,
            Mutation::MergePatch(p) => {
                let mut d = served_old.clone();
                json_patch::merge(&mut d, &p);
                d
            }
            Mutation::JsonPatch(p) => {
                let mut d = served_old.clone();
                json_patch::patch(&mut d, &p).map_err(|e| {
                    ApiError::new(
                        422,
                        "Invalid",
                        format!(
                            "the server rejected our request due to an error in our request: {e}"
                        ),
                    )
                })?;
                d
            }
            Mutation::Apply { config, force } => {
                if rv_of(&config).is_some_and(|rv| rv != old_rv) {
                    return Err(ApiError::conflict(t.rt, t.name));
                }
                let mut config = strip_for_subresource(t, config);
                kinds::to_storage(t.rt, &mut config);
                kinds::fold_string_data(t.rt, &mut config);
                ssa::apply(
                    Some(&bare_old),
                    &config,
                    t.manager,
                    t.subresource,
                    &t.api_version(),
                    force,
                    &mut entries,
                )
                .map_err(|c| conflict_error(t, c))?
            }
        };
        if !cand.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        // preconditions carried in the object itself
        if rv_of(&cand).is_some_and(|rv| rv != old_rv) {
            return Err(ApiError::conflict(t.rt, t.name));
        }
        let old_uid = old["metadata"]["uid"].as_str().unwrap_or_default();
        if let Some(uid) = cand["metadata"]["uid"]
            .as_str()
            .filter(|u| !u.is_empty() && *u != old_uid)
        {
            return Err(ApiError::conflict_msg(
                t.rt,
                t.name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {old_uid}"
                ),
            ));
        }
        if let Some(n) = cand["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty() && *n != t.name)
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({})",
                t.name
            )));
        }
        if t.rt.namespaced
            && let Some(ns) = cand["metadata"]["namespace"]
                .as_str()
                .filter(|n| !n.is_empty() && *n != t.namespace)
        {
            let _ = ns;
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if !is_apply {
            kinds::to_storage(t.rt, &mut cand);
        }
        let mut new = if t.subresource == "status" {
            let mut n = old.clone();
            match cand.get("status") {
                Some(s) if !s.is_null() => n["status"] = s.clone(),
                _ => {
                    n.as_object_mut().expect("map").remove("status");
                }
            }
            n
        } else {
            if t.rt.status_subresource
                && let Some(m) = cand.as_object_mut()
            {
                match old.get("status") {
                    Some(s) => m.insert("status".into(), s.clone()),
                    None => m.remove("status"),
                };
            }
            cand
        };
        {
            let meta = meta_mut(&mut new);
            meta.insert("name".into(), json!(t.name));
            if t.rt.namespaced {
                meta.insert("namespace".into(), json!(t.namespace));
            }
            meta.remove("managedFields");
            meta.remove("selfLink");
            for f in KEEP_META {
                match old["metadata"].get(*f) {
                    Some(v) => meta.insert(f.to_string(), v.clone()),
                    None => meta.remove(*f),
                };
            }
        }
        if !old["metadata"]["deletionTimestamp"].is_null() {
            let old_f: Vec<Value> = old["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let added = new["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|f| !old_f.contains(f));
            if added {
                return Err(ApiError::invalid(
                    t.rt,
                    t.name,
                    vec![(
                        "metadata.finalizers".into(),
                        "Forbidden: no new finalizers can be added if the object is being deleted"
                            .into(),
                    )],
                ));
            }
        }
        self.finish(t, Some(&old), &mut new)?;
        if t.rt.generation && strip_spec(t.rt, &old) != strip_spec(t.rt, &new) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            meta_mut(&mut new).insert("generation".into(), json!(g));
        }
        if !is_apply {
            ssa::track_update(
                Some(&bare_old),
                &new,
                t.manager,
                t.subresource,
                &t.api_version(),
                &mut entries,
            );
        }
        ssa::write_entries(&mut new, &entries);
        if new == old || t.dry_run {
            return Ok((if t.dry_run { new } else { old }, false));
        }
        if !new["metadata"]["deletionTimestamp"].is_null() && !has_finalizers(&new) {
            self.objects.insert(key.clone(), new);
            let gone = self.remove(&key, false);
            return Ok((gone, false));
        }
        self.bump(&mut new);
        self.objects.insert(key.clone(), new.clone());
        self.emit_for(&key, "MODIFIED", new.clone(), Some(old));
        self.after_store(t, &new);
        Ok((new, false))
    }

    fn create_applied(
        &mut self,
        t: &Target,
        mut obj: Value,
        entries: Vec<ssa::Entry>,
    ) -> ApiResult<Value> {
        let meta = meta_mut(&mut obj);
        for f in KEEP_META {
            meta.remove(*f);
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(timestamp()));
        if t.rt.namespaced {
            meta.insert("namespace".into(), json!(t.namespace));
        }
        if t.rt.generation {
            meta.insert("generation".into(), json!(1));
        }
        self.namespace_check(t, t.name)?;
        if t.rt.status_subresource && t.subresource != "status" {
            obj.as_object_mut().expect("map").remove("status");
        }
        self.finish(t, None, &mut obj)?;
        ssa::write_entries(&mut obj, &entries);
        self.store_new(t, t.key(t.name), obj)
    }

    /// DELETE with DeleteOptions (`preconditions`, `propagationPolicy`).
    pub fn delete(&mut self, t: &Target, opts: &Value) -> ApiResult<Value> {
        let key = t.key(t.name);
        let old = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(t.rt, t.name))?;
        let pre = &opts["preconditions"];
        for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            if let Some(want) = pre[field].as_str() {
                let have = old["metadata"][field].as_str().unwrap_or_default();
                if want != have {
                    return Err(ApiError::conflict_msg(
                        t.rt,
                        t.name,
                        &format!(
                            "Precondition failed: {label} in precondition: {want}, {label} in object meta: {have}"
                        ),
                    ));
                }
            }
        }
        if t.dry_run {
            return Ok(old);
        }
        let orphan = opts["propagationPolicy"].as_str() == Some("Orphan")
            || opts["orphanDependents"].as_bool() == Some(true);
        if t.rt.plural == "namespaces" && t.rt.group.is_empty() {
            return Ok(self.terminate_namespace(&key));
        }
        Ok(self.delete_key(&key, orphan))
    }

    /// Delete one object: mark it if it has finalizers, otherwise remove it (+GC).
    fn delete_key(&mut self, key: &ObjKey, orphan: bool) -> Value {
        let Some(old) = self.objects.get(key).cloned() else {
            return Value::Null;
        };
        if has_finalizers(&old) {
            if !old["metadata"]["deletionTimestamp"].is_null() {
                return old;
            }
            let mut new = old.clone();
            let meta = meta_mut(&mut new);
            meta.insert("deletionTimestamp".into(), json!(timestamp()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            if let Some(g) = meta.get("generation").and_then(Value::as_i64) {
                meta.insert("generation".into(), json!(g + 1));
            }
            self.bump(&mut new);
            self.objects.insert(key.clone(), new.clone());
            self.emit_for(key, "MODIFIED", new.clone(), Some(old));
            return new;
        }
        self.remove(key, orphan)
    }

    /// Really remove an object, then collect garbage.
    fn remove(&mut self, key: &ObjKey, orphan: bool) -> Value {
        let Some(mut obj) = self.objects.remove(key) else {
            return Value::Null;
        };
        let previous = obj.clone();
        self.bump(&mut obj);
        self.emit_for(key, "DELETED", obj.clone(), Some(previous));
        let uid = obj["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // custom resource definitions take their instances with them
        if key.0 == "apiextensions.k8s.io"
            && key.1 == "customresourcedefinitions"
            && let Ok(rt) = registry::from_crd(&obj)
        {
            let (g, p) = rt.storage_key();
            let instances: Vec<ObjKey> = self
                .objects
                .keys()
                .filter(|k| k.0 == g && k.1 == p)
                .cloned()
                .collect();
            for k in instances {
                if let Some(mut o) = self.objects.remove(&k) {
                    let prev = o.clone();
                    self.bump(&mut o);
                    self.emit_for(&k, "DELETED", o, Some(prev));
                }
            }
            self.registry.remove(&rt.group, &rt.plural);
        }
        self.collect_garbage(&uid, orphan);
        // a terminating namespace goes away with its last object
        if !key.2.is_empty() {
            let ns_key = (
                "".to_string(),
                "namespaces".to_string(),
                String::new(),
                key.2.clone(),
            );
            let terminating = self
                .objects
                .get(&ns_key)
                .is_some_and(|ns| !ns["metadata"]["deletionTimestamp"].is_null());
            if terminating && !self.objects.keys().any(|k| k.2 == key.2) {
                self.remove(&ns_key, false);
            }
        }
        obj
    }

    fn collect_garbage(&mut self, owner_uid: &str, orphan: bool) {
        if owner_uid.is_empty() {
            return;
        }
        let dependents: Vec<ObjKey> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                owner_refs(o)
                    .iter()
                    .any(|r| r["uid"].as_str() == Some(owner_uid))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for dk in dependents {
            let Some(dep) = self.objects.get(&dk).cloned() else {
                continue;
            };
            let others_alive = owner_refs(&dep).iter().any(|r| {
                let u = r["uid"].as_str().unwrap_or_default();
                u != owner_uid
                    && self
                        .objects
                        .values()
                        .any(|o| o["metadata"]["uid"].as_str() == Some(u))
            });
            if orphan || others_alive {
                let mut new = dep.clone();
                let refs: Vec<Value> = owner_refs(&dep)
                    .into_iter()
                    .filter(|r| r["uid"].as_str() != Some(owner_uid))
                    .collect();
                let meta = meta_mut(&mut new);
                if refs.is_empty() {
                    meta.remove("ownerReferences");
                } else {
                    meta.insert("ownerReferences".into(), Value::Array(refs));
                }
                self.bump(&mut new);
                self.objects.insert(dk.clone(), new.clone());
                self.emit_for(&dk, "MODIFIED", new, Some(dep));
            } else {
                self.delete_key(&dk, false);
            }
        }
    }

    fn terminate_namespace(&mut self, key: &ObjKey) -> Value {
        let name = key.3.clone();
        let Some(old) = self.objects.get(key).cloned() else {
            return Value::Null;
        };
        if old["metadata"]["deletionTimestamp"].is_null() {
            let mut ns = old.clone();
            meta_mut(&mut ns).insert("deletionTimestamp".into(), json!(timestamp()));
            meta_mut(&mut ns).insert("deletionGracePeriodSeconds".into(), json!(0));
            ns["status"]["phase"] = json!("Terminating");
            self.bump(&mut ns);
            self.objects.insert(key.clone(), ns.clone());
            self.emit_for(key, "MODIFIED", ns, Some(old));
        }
        let contents: Vec<ObjKey> = self
            .objects
            .keys()
            .filter(|k| k.2 == name)
            .cloned()
            .collect();
        for k in contents {
            self.delete_key(&k, false);
        }
        if !self.objects.keys().any(|k| k.2 == name) {
            return self.remove(key, false);
        }
        self.objects.get(key).cloned().unwrap_or(Value::Null)
    }
}

fn owner_refs(o: &Value) -> Vec<Value> {
    o["metadata"]["ownerReferences"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// What `metadata.generation` tracks: everything but metadata (and status when it is a subresource).
fn strip_spec(rt: &ResourceType, o: &Value) -> Value {
    let mut v = o.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        if rt.status_subresource {
            m.remove("status");
        }
    }
    v
}

/// An apply body only affects the part of the object its endpoint owns.
fn strip_for_subresource(t: &Target, mut config: Value) -> Value {
    if let Some(m) = config.as_object_mut() {
        if t.subresource == "status" {
            m.retain(|k, _| k == "status" || k == "apiVersion" || k == "kind");
        } else if t.rt.status_subresource {
            m.remove("status");
        }
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
            meta.remove("managedFields");
        }
    }
    config
}

fn conflict_error(t: &Target, conflicts: Vec<ssa::Conflict>) -> ApiError {
    let n = conflicts.len();
    let mut msg = format!(
        "Apply failed with {n} conflict{}: ",
        if n == 1 { "" } else { "s" }
    );
    let lines: Vec<String> = conflicts
        .iter()
        .map(|c| {
            format!(
                "conflict with \"{}\" using {}: {}",
                c.manager,
                c.api_version,
                ssa::dotted(&c.path)
            )
        })
        .collect();
    msg.push_str(&lines.join("\n"));
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\" using {}", c.manager, c.api_version), "field": ssa::dotted(&c.path)})
        })
        .collect();
    let mut details = json!({"name": t.name, "kind": t.rt.plural, "causes": causes});
    if !t.rt.group.is_empty() {
        details["group"] = json!(t.rt.group);
    }
    ApiError::new(409, "Conflict", msg).with_details(details)
}

/// A CRD's status: accepted names, stored versions and established conditions.
fn crd_status(old: Option<&Value>, obj: &Value, rt: &ResourceType) -> Value {
    let prev = old.map(|o| o["status"].clone()).unwrap_or(Value::Null);
    let cond = |ty: &str, reason: &str, message: &str| {
        let existing = prev["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == ty);
        let since = existing
            .and_then(|c| c["lastTransitionTime"].as_str().map(String::from))
            .unwrap_or_else(timestamp);
        json!({"type": ty, "status": "True", "reason": reason, "message": message, "lastTransitionTime": since})
    };
    let mut names = obj["spec"]["names"].clone();
    names["singular"] = json!(rt.singular);
    names["listKind"] = json!(rt.list_kind);
    let mut stored: Vec<Value> = prev["storedVersions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !stored.contains(&json!(rt.storage_version)) {
        stored.push(json!(rt.storage_version));
    }
    json!({
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": names,
        "storedVersions": stored,
    })
}
