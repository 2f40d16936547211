//! Watch streams: newline-delimited JSON watch events over a chunked response.
//! With `Accept: ...;as=Table`, every event's object is a one-row `Table` and only
//! the first one carries the column definitions (like the real apiserver).

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::errors::{ApiError, ApiResult};
use crate::http::{App, Params, Selectors, render};
use crate::kinds;
use crate::registry::ResourceType;
use crate::store::Change;
use crate::table::{self, Repr};

type Chunk = Result<Bytes, std::io::Error>;

struct Watcher {
    rt: Arc<ResourceType>,
    version: String,
    namespace: Option<String>,
    selectors: Selectors,
    repr: Repr,
    /// Table output: the column definitions were sent already.
    headers_sent: Cell<bool>,
}

impl Watcher {
    fn line(&self, etype: &str, object: Value) -> Bytes {
        let mut s =
            serde_json::to_string(&json!({"type": etype, "object": object})).unwrap_or_default();
        s.push('\n');
        Bytes::from(s)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({
            "apiVersion": self.rt.api_version(&self.version),
            "kind": self.rt.kind,
            "metadata": meta,
        });
        let object = match self.repr {
            // the apiserver converts bookmark objects like any other
            Repr::Table(_) => self.render(&object),
            Repr::Metadata => json!({
                "apiVersion": "meta.k8s.io/v1",
                "kind": "PartialObjectMetadata",
                "metadata": object["metadata"],
            }),
            Repr::Object => object,
        };
        self.line("BOOKMARK", object)
    }

    fn render(&self, obj: &Value) -> Value {
        match &self.repr {
            Repr::Table(opts) => {
                let headers = !self.headers_sent.replace(true);
                table::single(&self.rt, &self.version, obj, opts, headers)
            }
            repr => render(&self.rt, &self.version, obj, repr),
        }
    }

    fn selects(&self, stored: &Value) -> bool {
        self.selectors
            .matches(&kinds::to_served(&self.rt, &self.version, stored))
    }

    /// The event this watcher sees for a change, if any (selector transitions
    /// turn MODIFIED into ADDED/DELETED like the real apiserver).
    fn translate(&self, c: &Change) -> Option<Bytes> {
        let (g, p) = self.rt.storage_key();
        if c.group != g
            || c.plural != p
            || self.namespace.as_ref().is_some_and(|n| *n != c.namespace)
        {
            return None;
        }
        let now = self.selects(&c.object);
        let before = c.previous.as_ref().is_some_and(|o| self.selects(o));
        let etype = match c.etype {
            "ADDED" if now => "ADDED",
            "DELETED" if before || now => "DELETED",
            "MODIFIED" => match (before, now) {
                (true, true) => "MODIFIED",
                (true, false) => "DELETED",
                (false, true) => "ADDED",
                (false, false) => return None,
            },
            _ => return None,
        };
        Some(self.line(etype, self.render(&c.object)))
    }
}

fn flag(params: &Params, k: &str) -> bool {
    params.get(k).is_some_and(|v| v == "true" || v == "1")
}

pub(crate) fn watch(
    app: Arc<App>,
    rt: Arc<ResourceType>,
    version: String,
    namespace: Option<String>,
    params: &Params,
    repr: Repr,
) -> ApiResult<Response> {
    let selectors = Selectors::from_params(&rt, params)?;
    let w = Watcher {
        rt,
        version,
        namespace,
        selectors,
        repr,
        headers_sent: Cell::new(false),
    };
    let bookmarks = flag(params, "allowWatchBookmarks");
    let send_initial = flag(params, "sendInitialEvents");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let requested: Option<u64> = match params.get("resourceVersion").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {v}")))?,
        ),
    };
    if send_initial && !bookmarks {
        return Err(ApiError::invalid(
            &w.rt,
            "",
            vec![(
                "allowWatchBookmarks".into(),
                "Required value: sendInitialEvents requires setting allowWatchBookmarks=true"
                    .into(),
            )],
        ));
    }

    let mut initial: Vec<Bytes> = Vec::new();
    let mut expired = false;
    let (mut changes, mut cursor) = {
        let store = app.store.lock().expect("store");
        let rx = store.tx.subscribe();
        let current = store.current_rv();
        match requested {
            Some(rv) if rv != 0 && !send_initial => match store.changes_since(rv) {
                Ok(list) => {
                    initial.extend(list.iter().filter_map(|c| w.translate(c)));
                    (rx, current.max(rv))
                }
                Err(compacted) => {
                    let err = ApiError::expired(format!(
                        "too old resource version: {rv} ({})",
                        compacted + 1
                    ));
                    initial.push(w.line("ERROR", err.to_status()));
                    expired = true;
                    (rx, current)
                }
            },
            _ => {
                for o in store.list(&w.rt, w.namespace.as_deref()) {
                    if w.selects(o) {
                        initial.push(w.line("ADDED", w.render(o)));
                    }
                }
                if send_initial {
                    initial.push(w.bookmark(current, true));
                }
                (rx, current)
            }
        }
    };

    let (tx, rx) = mpsc::channel::<Chunk>(256);
    let mut drop_rx = app.faults.drop_signal();
    let interval = app.bookmark_interval;
    tokio::spawn(async move {
        for chunk in initial {
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
        if expired {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = drop_rx.changed() => {
                    let _ = tx.send(Err(std::io::Error::other("watch dropped by fault injection"))).await;
                    break;
                }
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(Ok(w.bookmark(cursor, false))).await.is_err() {
                        break;
                    }
                }
                _ = tx.closed() => break,
                r = changes.recv() => match r {
                    Ok(c) => {
                        if c.rv <= cursor {
                            continue;
                        }
                        cursor = c.rv;
                        if let Some(line) = w.translate(&c)
                            && tx.send(Ok(line)).await.is_err()
                        {
                            break;
                        }
                    }
                    // a watcher that cannot keep up is closed; the client re-watches from its last RV
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    });

    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}
