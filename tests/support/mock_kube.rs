//! kube-rs's mocked-service pattern (`tower-test`), with a small in-memory responder behind it.
//!
//! Every request the controller makes is recorded (method, path, body) so tests can assert the
//! order of writes. Objects live in a map keyed by API path; Secrets and OAuthTokens get
//! resourceVersions, PUT checks them like an apiserver, and faults can be queued per method and
//! path.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

/// One request the controller sent.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
}

impl Recorded {
    pub fn is_write(&self) -> bool {
        self.method != Method::GET
    }
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<String, Value>,
    /// Deleted objects as they were last, with the resourceVersion of their deletion: what a
    /// watch delivers for a deletion.
    tombstones: BTreeMap<String, Value>,
    log: Vec<Recorded>,
    faults: VecDeque<(Method, String, u16)>,
    resource_version: u64,
}

/// The fake API's state, shared between the test and the responder task.
#[derive(Clone, Default)]
pub struct MockApi {
    inner: Arc<Mutex<Inner>>,
}

pub const NS: &str = "shop";

pub fn secret_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/secrets/{name}")
}

pub fn token_path(name: &str) -> String {
    format!("/apis/oauth-token-operator.io/v1alpha1/namespaces/{NS}/oauthtokens/{name}")
}

impl MockApi {
    /// A kube client whose requests this fake answers.
    pub fn client(&self) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let response = api.answer(request).await;
                send.send_response(response);
            }
        });
        kube::Client::new(service, NS)
    }

    /// Stores an object at its path, as if a user had created it.
    pub fn put(&self, path: &str, mut object: Value) {
        let mut inner = self.inner.lock().unwrap();
        inner.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
        inner.tombstones.remove(path);
        inner.objects.insert(path.to_string(), object);
    }

    /// Removes an object, as if a user had deleted it.
    pub fn remove(&self, path: &str) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(mut object) = inner.objects.remove(path) {
            inner.resource_version += 1;
            object["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
            inner.tombstones.insert(path.to_string(), object);
        }
    }

    /// Every stored object, by path.
    pub fn objects(&self) -> BTreeMap<String, Value> {
        self.inner.lock().unwrap().objects.clone()
    }

    /// A deleted object as it was when it went.
    pub fn tombstone(&self, path: &str) -> Option<Value> {
        self.inner.lock().unwrap().tombstones.get(path).cloned()
    }

    /// The paths of deleted objects.
    pub fn tombstones(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap()
            .tombstones
            .keys()
            .cloned()
            .collect()
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.inner.lock().unwrap().objects.get(path).cloned()
    }

    /// The next request with this method whose path ends with `path_suffix` fails with `status`.
    /// Lets the next matching request through; queued before `fail_next` it aims the fault
    /// at a later request.
    pub fn pass_next(&self, method: Method, path_suffix: &str) {
        self.fail_next(method, path_suffix, 0);
    }

    pub fn fail_next(&self, method: Method, path_suffix: &str, status: u16) {
        self.inner
            .lock()
            .unwrap()
            .faults
            .push_back((method, path_suffix.to_string(), status));
    }

    pub fn log(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.inner.lock().unwrap().log.clear();
    }

    /// Writes only, as `METHOD path` strings, Events excluded.
    pub fn writes(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|r| r.is_write() && !r.path.contains("/events"))
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    /// Events the controller published, as `type reason` strings.
    pub fn events(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|r| r.path.contains("/events") && r.method == Method::POST)
            .map(|r| {
                format!(
                    "{} {}",
                    r.body["type"].as_str().unwrap_or_default(),
                    r.body["reason"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }

    async fn answer(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or_default().to_string();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        let mut inner = self.inner.lock().unwrap();
        inner.log.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            query,
            body: body.clone(),
        });
        if let Some(position) = inner
            .faults
            .iter()
            .position(|(m, suffix, _)| *m == method && path.ends_with(suffix.as_str()))
        {
            let (_, _, status) = inner.faults.remove(position).unwrap();
            // Status 0 lets one matching request through, so later ones can be made to fail.
            if status != 0 {
                return status_response(status, "injected fault");
            }
        }
        match method {
            Method::GET => match inner.objects.get(&path) {
                Some(object) => json_response(StatusCode::OK, object),
                None => status_response(404, "not found"),
            },
            Method::POST if path.contains("/events") => json_response(StatusCode::CREATED, &body),
            Method::POST => {
                let name = body["metadata"]["name"].as_str().unwrap_or_default();
                let object_path = format!("{path}/{name}");
                if inner.objects.contains_key(&object_path) {
                    return status_response(409, "already exists");
                }
                let stored = inner.store(&object_path, body);
                json_response(StatusCode::CREATED, &stored)
            }
            Method::PUT => {
                let Some(existing) = inner.objects.get(&path) else {
                    return status_response(404, "not found");
                };
                let expected = &body["metadata"]["resourceVersion"];
                if !expected.is_null() && *expected != existing["metadata"]["resourceVersion"] {
                    return status_response(409, "the object has been modified");
                }
                let mut body = body;
                body["metadata"]["uid"] = existing["metadata"]["uid"].clone();
                let stored = inner.store(&path, body);
                json_response(StatusCode::OK, &stored)
            }
            Method::PATCH if path.ends_with("/status") => {
                let object_path = path.trim_end_matches("/status").to_string();
                let Some(mut existing) = inner.objects.get(&object_path).cloned() else {
                    return status_response(404, "not found");
                };
                // A resourceVersion in the patch is a precondition, as on an apiserver.
                let expected = &body["metadata"]["resourceVersion"];
                if !expected.is_null() && *expected != existing["metadata"]["resourceVersion"] {
                    return status_response(409, "the object has been modified");
                }
                merge(&mut existing["status"], &body["status"]);
                let stored = inner.store(&object_path, existing);
                json_response(StatusCode::OK, &stored)
            }
            Method::PATCH => {
                // Server-side apply: the applied object replaces data and metadata we manage.
                let mut object = inner.objects.get(&path).cloned().unwrap_or(json!({}));
                merge(&mut object, &body);
                if object["metadata"]["uid"].is_null() {
                    object["metadata"]["uid"] = json!(format!("uid-{}", path.len()));
                }
                if let Some(data) = body.get("data") {
                    object["data"] = data.clone();
                }
                let stored = inner.store(&path, object);
                json_response(StatusCode::OK, &stored)
            }
            _ => status_response(405, "method not allowed"),
        }
    }
}

impl Inner {
    fn store(&mut self, path: &str, mut object: Value) -> Value {
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{}", self.resource_version));
        }
        self.tombstones.remove(path);
        self.objects.insert(path.to_string(), object.clone());
        object
    }
}

/// RFC 7386 merge.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn status_response(code: u16, message: &str) -> Response<Body> {
    let reason = match code {
        404 => "NotFound",
        409 => "Conflict",
        _ => "InternalError",
    };
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code
    });
    json_response(StatusCode::from_u16(code).unwrap(), &body)
}

/// The watches of one controller scope (the namespace [`NS`]) over this fake API: a `Scope` is
/// registered in the context's `Caches`, and its stores are fed with `watcher::Event`s built from
/// the stored objects through the code the controller runs on every event (`controller_for` in
/// src/controller/mod.rs): the reflector `Writer` and the Secret index for OAuthTokens,
/// `OwnedSecrets::apply` for Secrets with the operator's label, `UserSecrets::apply` for every
/// other Secret, and the `Caches::delivered_*` calls that retire this process's own writes.
///
/// Nothing reaches the caches but what a test delivers: [`Watches::deliver_all`] is a watch
/// that caught up, and not calling it is a watch that lags.
pub struct Watches {
    api: MockApi,
    ctx: std::sync::Arc<oauth_token_operator::controller::Context>,
    tokens: Mutex<
        kube::runtime::reflector::store::Writer<
            oauth_token_operator::controller::cached_token::CachedToken,
        >,
    >,
    owned: Arc<oauth_token_operator::controller::cache::OwnedSecrets>,
    others: Arc<oauth_token_operator::controller::cache::UserSecrets>,
    index: Arc<oauth_token_operator::controller::cache::SecretIndex>,
    /// What was delivered last for each path, by which watch, and whether it was the deletion.
    delivered: Mutex<BTreeMap<String, Delivered>>,
}

/// Which of the scope's watches sees an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watch {
    Tokens,
    /// Secrets with the operator's label: state and token Secrets.
    Owned,
    /// Every other Secret, as metadata.
    Others,
}

fn watch_of(path: &str, object: &Value) -> Option<Watch> {
    use oauth_token_operator::api::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
    if path.contains("/oauthtokens/") {
        Some(Watch::Tokens)
    } else if path.contains("/secrets/") {
        let owned = object["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGED_BY_VALUE;
        Some(if owned { Watch::Owned } else { Watch::Others })
    } else {
        None
    }
}

#[derive(Clone)]
struct Delivered {
    watch: Watch,
    object: Value,
    deleted: bool,
}

fn version(object: &Value) -> &Value {
    &object["metadata"]["resourceVersion"]
}

/// A watch event, before it is typed for its watch.
enum Seen<'a> {
    Init,
    InitApply(&'a Value),
    InitDone,
    Apply(&'a Value),
    Delete(&'a Value),
}

impl Watches {
    /// Registers the scope and lets every watch list once (what a reconcile waits for).
    pub fn start(
        api: &MockApi,
        ctx: std::sync::Arc<oauth_token_operator::controller::Context>,
    ) -> Watches {
        use oauth_token_operator::controller::cache::Scope;
        let (store, writer) = kube::runtime::reflector::store();
        let watches = Watches {
            api: api.clone(),
            ctx,
            tokens: Mutex::new(writer),
            owned: Arc::default(),
            others: Arc::default(),
            index: Arc::default(),
            delivered: Mutex::default(),
        };
        watches.ctx.caches.register(Scope {
            namespace: Some(NS.to_string()),
            tokens: store,
            owned: watches.owned.clone(),
            others: watches.others.clone(),
            index: watches.index.clone(),
        });
        let objects: Vec<(String, Watch, Value)> = api
            .objects()
            .into_iter()
            .filter_map(|(path, object)| Some((path.clone(), watch_of(&path, &object)?, object)))
            .collect();
        for watch in [Watch::Tokens, Watch::Owned, Watch::Others] {
            watches.event(watch, Seen::Init);
            for (path, _, object) in objects.iter().filter(|(_, w, _)| *w == watch) {
                watches.event(watch, Seen::InitApply(object));
                watches.delivered.lock().unwrap().insert(
                    path.clone(),
                    Delivered {
                        watch,
                        object: object.clone(),
                        deleted: false,
                    },
                );
            }
            watches.event(watch, Seen::InitDone);
        }
        watches
    }

    /// Every watch catches up: what changed since it last delivered, and what was deleted
    /// (also objects created and deleted since: the watch saw them go).
    pub fn deliver_all(&self) {
        let mut paths: Vec<String> = self.api.objects().into_keys().collect();
        paths.extend(self.api.tombstones());
        paths.extend(self.delivered.lock().unwrap().keys().cloned());
        paths.sort();
        paths.dedup();
        for path in paths {
            self.deliver(&path);
        }
    }

    /// The watch that sees `path` delivers its newest version, or its deletion.
    pub fn deliver(&self, path: &str) {
        let last = self.delivered.lock().unwrap().get(path).cloned();
        let (watch, object, deleted) = match self.api.get(path) {
            Some(object) => match watch_of(path, &object) {
                Some(watch) => (watch, object, false),
                None => return,
            },
            None => match self.api.tombstone(path) {
                Some(gone) => match watch_of(path, &gone) {
                    Some(watch) => (watch, gone, true),
                    None => return,
                },
                None => return,
            },
        };
        if let Some(last) = &last
            && last.deleted == deleted
            && version(&last.object) == version(&object)
        {
            return;
        }
        match (&last, deleted) {
            (_, true) => self.event(watch, Seen::Delete(&object)),
            // A Secret that gained or lost the operator's label leaves the other watch.
            (Some(last), false) if last.watch != watch && !last.deleted => {
                self.event(last.watch, Seen::Delete(&last.object));
                self.event(watch, Seen::Apply(&object));
            }
            (_, false) => self.event(watch, Seen::Apply(&object)),
        }
        self.delivered.lock().unwrap().insert(
            path.to_string(),
            Delivered {
                watch,
                object,
                deleted,
            },
        );
    }

    fn event(&self, watch: Watch, seen: Seen<'_>) {
        use kube::runtime::watcher::Event;
        fn typed<K: serde::de::DeserializeOwned>(seen: &Seen<'_>) -> Event<K> {
            let parse = |object: &Value| serde_json::from_value(object.clone()).unwrap();
            match seen {
                Seen::Init => Event::Init,
                Seen::InitApply(object) => Event::InitApply(parse(object)),
                Seen::InitDone => Event::InitDone,
                Seen::Apply(object) => Event::Apply(parse(object)),
                Seen::Delete(object) => Event::Delete(parse(object)),
            }
        }
        match watch {
            Watch::Tokens => self.token_event(typed(&seen)),
            Watch::Owned => self.owned_event(typed(&seen)),
            Watch::Others => {
                // What a metadata watch delivers.
                let as_meta = |object: &Value| {
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                           "metadata": object["metadata"]})
                };
                let meta = match &seen {
                    Seen::InitApply(object) | Seen::Apply(object) | Seen::Delete(object) => {
                        Some(as_meta(object))
                    }
                    _ => None,
                };
                let seen = match (seen, meta.as_ref()) {
                    (Seen::InitApply(_), Some(meta)) => Seen::InitApply(meta),
                    (Seen::Apply(_), Some(meta)) => Seen::Apply(meta),
                    (Seen::Delete(_), Some(meta)) => Seen::Delete(meta),
                    (seen, _) => seen,
                };
                self.others_event(typed(&seen));
            }
        }
    }

    /// As the controller's OAuthToken watch: stripped, cached, indexed, own writes retired.
    fn token_event(
        &self,
        event: kube::runtime::watcher::Event<oauth_token_operator::api::OAuthToken>,
    ) {
        use kube::ResourceExt;
        use kube::runtime::watcher::Event;
        use oauth_token_operator::controller::cache::{Delivery, strip_token};
        use oauth_token_operator::controller::cached_token::CachedToken;
        let event = event.modify(strip_token);
        let cached = match &event {
            Event::Init => Event::Init,
            Event::InitDone => Event::InitDone,
            Event::InitApply(token) => Event::InitApply(CachedToken::new(token)),
            Event::Apply(token) => Event::Apply(CachedToken::new(token)),
            Event::Delete(token) => Event::Delete(CachedToken::new(token)),
        };
        self.tokens.lock().unwrap().apply_watcher_event(&cached);
        let caches = &self.ctx.caches;
        match event {
            Event::Init => self.index.begin_relist(),
            Event::InitApply(token) => {
                self.index.upsert(&token);
                caches.delivered_token(&token, Delivery::Listed);
            }
            Event::InitDone => self.index.end_relist(),
            Event::Apply(token) => {
                self.index.upsert(&token);
                caches.delivered_token(&token, Delivery::Changed);
            }
            Event::Delete(token) => {
                self.index
                    .remove(&token.namespace().unwrap_or_default(), &token.name_any());
                caches.delivered_token(&token, Delivery::Deleted);
            }
        }
    }

    /// As the controller's watch of the operator's Secrets.
    fn owned_event(
        &self,
        event: kube::runtime::watcher::Event<k8s_openapi::api::core::v1::Secret>,
    ) {
        use kube::runtime::watcher::Event;
        use oauth_token_operator::controller::cache::Delivery;
        self.owned.apply(&event);
        let caches = &self.ctx.caches;
        match &event {
            Event::InitApply(secret) => {
                caches.delivered_secret(secret, Delivery::Listed);
            }
            Event::Apply(secret) => {
                caches.delivered_secret(secret, Delivery::Changed);
            }
            Event::Delete(secret) => {
                caches.delivered_secret(secret, Delivery::Deleted);
            }
            Event::Init | Event::InitDone => {}
        }
    }

    /// As the controller's metadata watch of every other Secret.
    fn others_event(
        &self,
        event: kube::runtime::watcher::Event<
            kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Secret>,
        >,
    ) {
        use kube::runtime::watcher::Event;
        self.others.apply(&event);
        match &event {
            Event::InitApply(meta) | Event::Apply(meta) => {
                self.ctx.caches.delivered_user_secret(meta, false)
            }
            Event::Delete(meta) => self.ctx.caches.delivered_user_secret(meta, true),
            Event::Init | Event::InitDone => {}
        }
    }
}
