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
        inner.objects.insert(path.to_string(), object);
    }

    /// Removes an object, as if a user had deleted it.
    pub fn remove(&self, path: &str) {
        self.inner.lock().unwrap().objects.remove(path);
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
