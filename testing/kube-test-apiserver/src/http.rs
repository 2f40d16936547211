//! HTTP layer: routing of Kubernetes API paths, the verbs, content negotiation,
//! fault injection middleware and the `/_test/*` control endpoints.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use serde_json::{Value, json};

use crate::discovery;
use crate::errors::{ApiError, ApiResult};
use crate::faults::{FaultSpec, Faults, RequestRecord};
use crate::kinds;
use crate::registry::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{Mutation, Store, Target};
use crate::table::{self, Repr};

pub(crate) struct App {
    pub store: Mutex<Store>,
    pub faults: Arc<Faults>,
    pub addr: String,
    pub bookmark_interval: Duration,
}

pub(crate) type Params = HashMap<String, String>;

pub fn json_response(code: StatusCode, v: &Value) -> Response {
    let mut r = (code, serde_json::to_vec(v).unwrap_or_default()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/_test/faults", post(post_fault))
        .route("/_test/drop-watches", post(drop_watches))
        .route("/_test/requests", get(requests))
        .route("/_test/clear", post(clear))
        .fallback(api)
        .layer(middleware::from_fn_with_state(app.clone(), fault_layer))
        .with_state(app)
}

async fn post_fault(State(app): State<Arc<App>>, body: Bytes) -> Response {
    match serde_json::from_slice::<FaultSpec>(&body) {
        Ok(spec) => {
            app.faults.fail_next(spec);
            json_response(StatusCode::OK, &json!({"status": "ok"}))
        }
        Err(e) => ApiError::bad_request(format!("invalid fault spec: {e}")).into_response(),
    }
}

async fn drop_watches(State(app): State<Arc<App>>) -> Response {
    app.faults.drop_watches();
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

async fn requests(State(app): State<Arc<App>>) -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::to_value(app.faults.request_log()).unwrap_or_default(),
    )
}

async fn clear(State(app): State<Arc<App>>) -> Response {
    app.faults.clear();
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

async fn fault_layer(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    if path.starts_with("/_test/") {
        return next.run(req).await;
    }
    let method = req.method().to_string();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let response = match app.faults.take(&method, &path) {
        Some(f) => {
            if let Some(d) = f.delay {
                tokio::time::sleep(d).await;
            }
            if f.status == 0 {
                next.run(req).await
            } else {
                ApiError::from_status(f.status, format!("injected fault: {}", f.status))
                    .into_response()
            }
        }
        None => next.run(req).await,
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), "request");
    app.faults.record(RequestRecord {
        method,
        path,
        content_type,
        status: response.status().as_u16(),
    });
    response
}

async fn api(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match dispatch(&app, &method, &uri, &headers, body) {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Where a request points.
struct Route {
    rt: Arc<ResourceType>,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn ok(v: Value) -> ApiResult<Response> {
    Ok(json_response(StatusCode::OK, &v))
}

fn dispatch(
    app: &Arc<App>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let params: Params = Query::<Params>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["version"] => return ok(discovery::version()),
        ["healthz"] | ["readyz"] | ["livez"] => return Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => return ok(discovery::core_versions(&app.addr)),
        ["openapi", "v3"] => {
            let store = app.store.lock().expect("store");
            return ok(discovery::openapi_v3_root(
                &store.registry,
                store.current_rv(),
            ));
        }
        ["openapi", "v3", "api", v] => {
            return discovery::openapi_v3_group_version(
                &app.store.lock().expect("store").registry,
                "",
                v,
            )
            .map(json_response_ok)
            .ok_or_else(ApiError::path_not_found);
        }
        ["openapi", "v3", "apis", g, v] => {
            return discovery::openapi_v3_group_version(
                &app.store.lock().expect("store").registry,
                g,
                v,
            )
            .map(json_response_ok)
            .ok_or_else(ApiError::path_not_found);
        }
        ["apis"] => {
            return ok(discovery::group_list(
                &app.store.lock().expect("store").registry,
            ));
        }
        ["apis", g] => {
            return discovery::group(&app.store.lock().expect("store").registry, g)
                .map(json_response_ok)
                .ok_or_else(ApiError::path_not_found);
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::path_not_found()),
    };
    if rest.is_empty() {
        return discovery::resource_list(
            &app.store.lock().expect("store").registry,
            group,
            version,
        )
        .map(json_response_ok)
        .ok_or_else(ApiError::path_not_found);
    }
    let route = {
        let store = app.store.lock().expect("store");
        let lookup = |p: &str| store.registry.lookup(group, version, p);
        match rest {
            ["namespaces", ns, plural, tail @ ..]
                if lookup(plural).is_some_and(|rt| rt.namespaced) && tail.len() <= 2 =>
            {
                Route {
                    rt: lookup(plural).expect("checked"),
                    version: version.into(),
                    namespace: Some(ns.to_string()),
                    name: tail.first().map(|s| s.to_string()),
                    subresource: tail.get(1).map(|s| s.to_string()),
                }
            }
            [plural, tail @ ..] if tail.len() <= 2 => {
                let rt = lookup(plural).ok_or_else(ApiError::path_not_found)?;
                if rt.namespaced && !tail.is_empty() {
                    return Err(ApiError::path_not_found());
                }
                Route {
                    rt,
                    version: version.into(),
                    namespace: None,
                    name: tail.first().map(|s| s.to_string()),
                    subresource: tail.get(1).map(|s| s.to_string()),
                }
            }
            _ => return Err(ApiError::path_not_found()),
        }
    };
    if let Some(sub) = &route.subresource
        && !(sub == "status" && route.rt.status_subresource)
    {
        return Err(ApiError::path_not_found());
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let repr = table::negotiate(accept, &params)?;
    let manager = params.get("fieldManager").cloned().unwrap_or_else(|| {
        let ua = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown");
        ua.split('/').next().unwrap_or("unknown").to_string()
    });
    let dry_run = params.get("dryRun").is_some_and(|d| d == "All");
    let ns = route.namespace.clone().unwrap_or_default();
    let name = route.name.clone().unwrap_or_default();
    let sub = route.subresource.clone().unwrap_or_default();
    let target = Target {
        rt: &route.rt,
        version: &route.version,
        namespace: &ns,
        name: &name,
        subresource: &sub,
        manager: &manager,
        dry_run,
        strict: params.get("fieldValidation").is_some_and(|v| v == "Strict"),
    };
    let render = |v: &Value| render(&route.rt, &route.version, v, &repr);
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let ct = ct.split(';').next().unwrap_or_default().trim().to_string();
    let collection = route.name.is_none();
    let mut body = body;
    if !body.is_empty() && (ct.contains("protobuf") || ct.contains("cbor")) {
        match crate::proto::decode(&body).filter(|_| ct.contains("protobuf")) {
            Some(v) => body = Bytes::from(serde_json::to_vec(&v).unwrap_or_default()),
            None => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml; got {ct}"
                    ),
                ));
            }
        }
    }

    match (method.clone(), collection) {
        (Method::GET, true) => {
            let watching = params.get("watch").is_some_and(|w| w == "true" || w == "1");
            if watching {
                return crate::watch::watch(
                    app.clone(),
                    route.rt.clone(),
                    route.version.clone(),
                    route.namespace.clone(),
                    &params,
                    repr,
                );
            }
            ok(list(app, &route, &params, &repr)?)
        }
        (Method::GET, false) => {
            let store = app.store.lock().expect("store");
            ok(render(store.get(&route.rt, &ns, &name)?))
        }
        (Method::POST, true) => {
            if route.rt.namespaced && route.namespace.is_none() {
                return Err(ApiError::method_not_allowed(
                    "the server does not allow this method on the requested resource",
                ));
            }
            let mut obj = parse_body(&body)?;
            if kinds::is_events_v1(&route.rt) {
                let errs = kinds::validate_events_v1_create(&obj);
                if !errs.is_empty() {
                    let n = obj["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    return Err(ApiError::invalid(&route.rt, &n, errs));
                }
            }
            if !obj.is_object() {
                return Err(ApiError::bad_request(
                    "the body of the request must be a JSON object",
                ));
            }
            if let Some(m) = obj.as_object_mut() {
                m.entry("metadata").or_insert_with(|| json!({}));
            }
            let created = app.store.lock().expect("store").create(&target, obj)?;
            Ok(json_response(StatusCode::CREATED, &render(&created)))
        }
        (Method::PUT, false) => {
            let obj = parse_body(&body)?;
            let (v, created) = app
                .store
                .lock()
                .expect("store")
                .write(&target, Mutation::Replace(obj))?;
            Ok(json_response(
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                &render(&v),
            ))
        }
        (Method::PATCH, false) => {
            let mutation = match ct.as_str() {
                "application/merge-patch+json" => Mutation::MergePatch(parse_body(&body)?),
                "application/strategic-merge-patch+json" => {
                    Mutation::MergePatch(strip_directives(parse_body(&body)?))
                }
                "application/json-patch+json" => Mutation::JsonPatch(
                    serde_json::from_slice(&body)
                        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?,
                ),
                "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                    if !params.contains_key("fieldManager") {
                        return Err(ApiError::bad_request(
                            "PATCH /apply requires fieldManager query parameter: fieldManager is required for apply requests",
                        ));
                    }
                    let force = params.get("force").is_some_and(|f| f == "true");
                    Mutation::Apply {
                        config: parse_body(&body)?,
                        force,
                    }
                }
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            let (v, created) = app.store.lock().expect("store").write(&target, mutation)?;
            Ok(json_response(
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                &render(&v),
            ))
        }
        (Method::DELETE, false) => {
            let mut opts = if body.is_empty() {
                json!({})
            } else {
                parse_body(&body)?
            };
            if let Some(p) = params.get("propagationPolicy") {
                opts["propagationPolicy"] = json!(p);
            }
            let gone = app.store.lock().expect("store").delete(&target, &opts)?;
            ok(render(&gone))
        }
        (Method::DELETE, true) => {
            let opts = if body.is_empty() {
                json!({})
            } else {
                parse_body(&body)?
            };
            let (gone, rv) = {
                let mut store = app.store.lock().expect("store");
                let selected = select(&store, &route, &params)?;
                let mut gone = Vec::new();
                for (obj_ns, obj_name) in selected {
                    let t = Target {
                        namespace: &obj_ns,
                        name: &obj_name,
                        ..target_clone(&target)
                    };
                    if let Ok(v) = store.delete(&t, &opts) {
                        gone.push(v);
                    }
                }
                (gone, store.current_rv())
            };
            let meta = json!({"resourceVersion": rv.to_string()});
            if let Repr::Table(opts) = &repr {
                let rows = gone
                    .iter()
                    .filter(|v| !v.is_null())
                    .map(|v| table::row(&route.rt, &route.version, v, opts))
                    .collect();
                return ok(table::table(
                    &route.rt,
                    &route.version,
                    opts,
                    meta,
                    rows,
                    true,
                ));
            }
            ok(json!({
                "kind": route.rt.list_kind,
                "apiVersion": route.rt.api_version(&route.version),
                "metadata": meta,
                "items": gone.iter().map(render).collect::<Vec<_>>(),
            }))
        }
        _ => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
    }
}

fn target_clone<'a>(t: &Target<'a>) -> Target<'a> {
    Target { ..*t }
}

fn json_response_ok(v: Value) -> Response {
    json_response(StatusCode::OK, &v)
}

/// Request bodies may be JSON or YAML.
fn parse_body(body: &[u8]) -> ApiResult<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    serde_json::from_slice(body).or_else(|_| {
        serde_yaml::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))
    })
}

/// Strategic merge patch = merge patch here: `$patch`, `$retainKeys`,
/// `$setElementOrder/...` and `$deleteFromPrimitiveList/...` directives are dropped.
fn strip_directives(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.retain(|k, _| !k.starts_with('$'));
        for child in m.values_mut() {
            *child = strip_directives(child.take());
        }
    }
    v
}

/// The served representation of one stored object (`null`: a success `Status`,
/// which no representation transforms).
pub(crate) fn render(rt: &ResourceType, version: &str, obj: &Value, repr: &Repr) -> Value {
    if obj.is_null() {
        return json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"});
    }
    match repr {
        Repr::Metadata => {
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"]})
        }
        Repr::Table(opts) => table::single(rt, version, obj, opts, true),
        Repr::Object => kinds::to_served(rt, version, obj),
    }
}

pub(crate) struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn from_params(rt: &ResourceType, params: &Params) -> ApiResult<Self> {
        Ok(Selectors {
            labels: LabelSelector::parse(
                params
                    .get("labelSelector")
                    .map(String::as_str)
                    .unwrap_or_default(),
            )?,
            fields: FieldSelector::parse(
                params
                    .get("fieldSelector")
                    .map(String::as_str)
                    .unwrap_or_default(),
                rt,
            )?,
        })
    }

    /// `served` is the object in the representation of the request's type.
    pub fn matches(&self, served: &Value) -> bool {
        self.labels.matches(served) && self.fields.matches(served)
    }
}

/// (namespace, name) of the objects a collection request selects.
fn select(store: &Store, route: &Route, params: &Params) -> ApiResult<Vec<(String, String)>> {
    let sel = Selectors::from_params(&route.rt, params)?;
    Ok(store
        .list(&route.rt, route.namespace.as_deref())
        .filter(|o| sel.matches(&kinds::to_served(&route.rt, &route.version, o)))
        .map(|o| {
            let m = &o["metadata"];
            (
                m["namespace"].as_str().unwrap_or_default().to_string(),
                m["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

fn list(app: &App, route: &Route, params: &Params, repr: &Repr) -> ApiResult<Value> {
    let sel = Selectors::from_params(&route.rt, params)?;
    let store = app.store.lock().expect("store");
    let (list_rv, start_after) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let bad = || {
                ApiError::bad_request(
                    "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
                )
            };
            let raw = URL_SAFE.decode(token).map_err(|_| bad())?;
            let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
            (
                v["rv"].as_u64().ok_or_else(bad)?,
                Some(v["start"].as_str().ok_or_else(bad)?.to_string()),
            )
        }
        None => (store.current_rv(), None),
    };
    let limit: usize = params
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let mut items = Vec::new();
    let mut remaining = 0usize;
    let mut last_key = String::new();
    for o in store.list(&route.rt, route.namespace.as_deref()) {
        let m = &o["metadata"];
        let key = format!(
            "{}\u{0}{}",
            m["namespace"].as_str().unwrap_or_default(),
            m["name"].as_str().unwrap_or_default()
        );
        if start_after
            .as_ref()
            .is_some_and(|s| key.as_str() <= s.as_str())
        {
            continue;
        }
        let served = kinds::to_served(&route.rt, &route.version, o);
        if !sel.matches(&served) {
            continue;
        }
        if items.len() < limit {
            last_key = key;
            items.push(match repr {
                Repr::Object => served,
                Repr::Metadata => render(&route.rt, &route.version, o, repr),
                Repr::Table(opts) => table::row(&route.rt, &route.version, o, opts),
            });
        } else {
            remaining += 1;
        }
    }
    let mut meta = json!({"resourceVersion": list_rv.to_string()});
    if remaining > 0 {
        let token = URL_SAFE
            .encode(json!({"v": "meta.k8s.io/v1", "rv": list_rv, "start": last_key}).to_string());
        meta["continue"] = json!(token);
        if !params.contains_key("labelSelector") && !params.contains_key("fieldSelector") {
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    let (kind, api_version) = match repr {
        Repr::Table(opts) => {
            return Ok(table::table(
                &route.rt,
                &route.version,
                opts,
                meta,
                items,
                true,
            ));
        }
        Repr::Metadata => (
            "PartialObjectMetadataList".to_string(),
            "meta.k8s.io/v1".to_string(),
        ),
        Repr::Object => (
            route.rt.list_kind.clone(),
            route.rt.api_version(&route.version),
        ),
    };
    Ok(json!({"kind": kind, "apiVersion": api_version, "metadata": meta, "items": items}))
}
