//! A small, test-only, in-memory Kubernetes API server on loopback plain HTTP.
//!
//! It speaks the part of the Kubernetes API that a kube-rs operator (controller
//! watches, server-side apply, status patches, `Recorder` events, Lease-based
//! leader election) and end-to-end tests use, with real apiserver semantics where
//! they matter to a client: one global etcd-like `resourceVersion`, optimistic
//! concurrency (409 Conflict), no-op writes that neither bump the resourceVersion
//! nor emit watch events, `metadata.generation`, status subresources, finalizers,
//! owner-reference garbage collection, watch resume/bookmarks/410 Expired, and
//! `metav1.Status` errors that kube-rs parses into `kube::Error::Api`.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use kube_test_apiserver::{Options, TestApiServer};
//! let server = TestApiServer::start(Options {
//!     crds: vec![std::fs::read_to_string("crds/oauthtoken.yaml")?],
//!     ..Options::default()
//! })
//! .await?;
//! server.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"), "default")?;
//! // KUBECONFIG=/tmp/kubeconfig ./oauth-token-operator ...
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Served
//! * Discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{g}`, `/apis/{g}/{v}`
//!   (legacy documents only; a client asking for aggregated discovery gets the
//!   legacy form with `application/json`, and kubectl falls back to it).
//! * Built-in types (see `registry.rs`, one line each): namespaces, secrets,
//!   configmaps, serviceaccounts, core/v1 and events.k8s.io/v1 events (one storage,
//!   converted between the two shapes like the real apiserver), leases,
//!   customresourcedefinitions. CRDs created through the API or from
//!   [`Options::crds`] register their resource immediately and get `NamesAccepted`
//!   and `Established` conditions.
//! * Verbs: get, list (`limit`/`continue`, `labelSelector`, `fieldSelector`), watch,
//!   create (`generateName`), update, patch (merge, strategic, JSON patch, apply),
//!   delete (preconditions, finalizers, propagationPolicy Orphan), deletecollection.
//!   `dryRun=All` is honoured. `Accept: ...;as=PartialObjectMetadata` is honoured.
//! * Server-side `Table` output (what `kubectl get` asks for): the first servable
//!   alternative of `Accept` wins, and `application/json;as=Table;g=meta.k8s.io;v=v1`
//!   (or `v1beta1`) turns get, list (with `limit`/`continue`), watch and write
//!   responses into a `meta.k8s.io` `Table` with `columnDefinitions` and `rows`
//!   (`cells` plus `object`: `PartialObjectMetadata` for `includeObject=Metadata`,
//!   the default; the object for `Object`; none for `None`). Custom resources get
//!   `Name` and the version's `additionalPrinterColumns` (or `Age` when it has
//!   none), evaluated with a JSONPath subset (`.a.b`, `['a.b']`, `[0]`, `[-1]`,
//!   `[1:3]`, `[*]`, `..a`, unions, filters such as
//!   `[?(@.type=="Ready")]` with `==`/`!=`/`<`/`>`/`<=`/`>=`); like the real
//!   apiserver, a missing value is a `null` cell and a `date` cell is an age such
//!   as `5m`, which is `<invalid>` for times more than a second in the future.
//!   Built-in kinds get the real printers' columns (Namespace, Secret, ConfigMap,
//!   ServiceAccount, Event, Lease; CRDs `Name`/`Created At`). In a watch, every
//!   event carries a one-row `Table` and only the first one has column definitions.
//!   An `Accept` with only unservable `as=` alternatives is a 406.
//! * `/healthz`, `/readyz`, `/livez`, and the test endpoints `POST /_test/faults`
//!   ([`FaultSpec`] JSON), `POST /_test/drop-watches`, `GET /_test/requests`,
//!   `POST /_test/clear`.
//!
//! # Simplifications compared with a real kube-apiserver
//! * **No authentication, authorization (RBAC) or admission.** Any token is accepted;
//!   nothing is ever `403 Forbidden` except creating in a terminating namespace.
//! * **JSON responses only**: protobuf request bodies are understood only for
//!   Namespace, Secret, ConfigMap, ServiceAccount and Lease (what `kubectl create ...`
//!   sends); no CBOR; every response body is JSON, whatever media type the
//!   `Accept` header prefers. `/openapi/v3` exists but only lists PATCH operations
//!   with their GVK and a `fieldValidation` parameter (no schemas), which is what
//!   kubectl needs to skip client-side validation; `/openapi/v2` is 404.
//!   `fieldValidation=Strict` (kubectl's default) turns unknown fields of custom
//!   resources into 400 BadRequest `strict decoding error`s; for built-in kinds it is
//!   ignored, and `Warn` sends no warnings (unknown fields are just pruned).
//! * **Custom resources**: the version's `openAPIV3Schema` is used for pruning of
//!   unknown fields, dropping `null` of non-nullable fields, `default`s, and basic
//!   validation (types, `required`, `enum`, lengths, bounds, item counts); CEL
//!   `x-kubernetes-validations`, `pattern` and `format` are **not** checked. Several
//!   versions may be served but there is no conversion (like strategy `None`: only
//!   `apiVersion` is rewritten). Scale subresources are not served.
//! * **Server-side apply**: ownership is tracked per manager at leaf-field
//!   granularity; every list is atomic (no `listType=map`/`set` merging, so e.g.
//!   `ownerReferences`, `finalizers` and `conditions` are replaced whole). Conflicts
//!   (409, one cause per field) are reported when an applier sets a field owned by
//!   another manager to a different value, `force=true` takes it over, and fields a
//!   manager applied before but omits now are removed unless someone else owns them.
//!   `metadata.managedFields` is written in FieldsV1 form (without `k:`/`v:` keys);
//!   managedFields sent by a client are ignored, except that a non-apply write that
//!   changes them replaces the ownership record (kubectl's SSA migration does that). For Secrets, `stringData`
//!   in an applied configuration is converted to `data` before field tracking.
//!   `null` in an applied configuration removes the field.
//! * **Table output**: the JSONPath evaluator is a subset of client-go's (no `range`,
//!   functions or regular expressions; a path that does not parse gives `null`
//!   cells), CRD `additionalPrinterColumns` are only checked for `name`, `type`,
//!   `format` and a `jsonPath` starting with `.`, and rows never carry `conditions`.
//! * **Strategic merge patch is a JSON merge patch** (RFC 7386): lists are replaced,
//!   `$patch`/`$retainKeys`/`$setElementOrder` directives are dropped.
//! * **Lists** (`continue`) are not snapshots: a continuation returns the current
//!   objects after the last key, reporting the first page's resourceVersion; a
//!   `resourceVersion`/`resourceVersionMatch` on list or get is ignored (always the
//!   latest state). `continue` tokens never expire.
//! * **Watch history** is a ring of the last [`Options::watch_history`] changes over
//!   all types (like the apiserver watch cache window): resuming from an older
//!   resourceVersion yields an `ERROR` event with a 410 `Expired` Status. A watcher
//!   that falls >4096 events behind is closed (the client re-watches).
//! * **Garbage collection is synchronous** and happens inside the DELETE request;
//!   `Foreground` propagation behaves like `Background`; `blockOwnerDeletion` is ignored.
//! * **Namespace deletion** marks the namespace `Terminating`, deletes its contents
//!   immediately (objects with finalizers wait) and removes the namespace as soon as
//!   it is empty; the `kubernetes` spec finalizer is not modelled separately.
//! * **Deleting a CRD** removes all its objects at once, ignoring their finalizers.
//! * No controllers besides garbage collection, namespace termination and CRD
//!   establishment: namespaces get no `default` ServiceAccount and no
//!   `kube-root-ca.crt` ConfigMap; there is no `all` category (`kubectl get all` fails).
//! * Graceful deletion (pods) does not exist: `deletionGracePeriodSeconds` is always 0.
//! * Validation of built-in kinds is limited to metadata (names, labels, annotations,
//!   ownerReferences), Secret/ConfigMap keys and base64 data, `immutable`, Secret
//!   `type` immutability, and the events.k8s.io/v1 create rules.
//! * Creating an object with `metadata.resourceVersion` set fails with 500
//!   `resourceVersion should not be set on objects to be created` (as the real one);
//!   an apply carrying a resourceVersion for an absent object is a 409 Conflict.
//! * A client-side `kubectl apply` followed by `kubectl apply --server-side` with a
//!   changed value conflicts with `kubectl-client-side-apply` (the real apiserver
//!   upgrades client-side-apply ownership via the last-applied annotation).
//! * The default field manager of non-apply writes is the User-Agent's first
//!   `/`-separated word, or `unknown`.
//!
//! # Notes for clients
//! * kube 5's `Client` retries 429/503/504 by itself (`Config::default_retry`, up to
//!   15 times, honouring `Retry-After`, which injected 429s carry as `1`): injected
//!   faults with those codes are invisible to callers unless they outnumber the
//!   retries. Use 500 to make a failure visible, or disable `default_retry`.
//! * The kubeconfig uses plain `http://` and a dummy bearer token; kube-rs and
//!   kubectl both accept that.

mod discovery;
mod errors;
mod faults;
mod http;
mod jsonpath;
mod kinds;
mod proto;
mod registry;
mod schema;
mod selectors;
mod ssa;
mod store;
mod table;
mod watch;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use crate::errors::ApiError;
pub use crate::faults::{FaultSpec, Faults, RequestRecord};

/// Server configuration.
#[derive(Debug, Clone)]
pub struct Options {
    /// CustomResourceDefinition YAML (or JSON) documents to pre-install; a string may
    /// hold several `---`-separated documents.
    pub crds: Vec<String>,
    /// Changes kept for watch resumption (older resourceVersions get 410 Expired).
    pub watch_history: usize,
    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Port on 127.0.0.1 (0 = any free port).
    pub port: u16,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            crds: Vec::new(),
            watch_history: 2000,
            bookmark_interval: Duration::from_secs(30),
            port: 0,
        }
    }
}

/// A running server; see the crate docs.
pub struct TestApiServer {
    addr: SocketAddr,
    app: Arc<http::App>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

fn invalid_input(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

impl TestApiServer {
    /// Bind `127.0.0.1:{opts.port}` and start serving.
    pub async fn start(opts: Options) -> io::Result<TestApiServer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.port)).await?;
        let addr = listener.local_addr()?;
        let mut store = store::Store::new(opts.watch_history);
        let crd_type = store
            .registry
            .get("apiextensions.k8s.io", "customresourcedefinitions")
            .expect("built in");
        for text in &opts.crds {
            for doc in serde_yaml::Deserializer::from_str(text) {
                let v = Value::deserialize(doc).map_err(invalid_input)?;
                if v.is_null() {
                    continue;
                }
                let t = store::Target {
                    rt: &crd_type,
                    version: "v1",
                    namespace: "",
                    name: "",
                    subresource: "",
                    manager: "kube-test-apiserver",
                    dry_run: false,
                    strict: false,
                };
                store.create(&t, v).map_err(invalid_input)?;
            }
        }
        let app = Arc::new(http::App {
            store: Mutex::new(store),
            faults: Arc::new(Faults::default()),
            addr: addr.to_string(),
            bookmark_interval: opts.bookmark_interval.max(Duration::from_millis(10)),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let router = http::router(app.clone());
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "kube-test-apiserver stopped");
            }
        });
        Ok(TestApiServer {
            addr,
            app,
            stop: Some(stop),
            task,
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig with one cluster/user (dummy bearer token)/context, whose
    /// default namespace is `namespace`.
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-test-apiserver\n  cluster:\n    server: {url}\nusers:\n- name: kube-test-apiserver\n  user:\n    token: kube-test-apiserver-dummy-token\ncontexts:\n- name: kube-test-apiserver\n  context:\n    cluster: kube-test-apiserver\n    user: kube-test-apiserver\n    namespace: {namespace}\ncurrent-context: kube-test-apiserver\npreferences: {{}}\n",
            url = self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml(namespace))
    }

    pub fn faults(&self) -> &Faults {
        &self.app.faults
    }

    /// End all watches, stop accepting connections and wait (at most 5 s) for the server task.
    pub async fn shutdown(mut self) {
        self.app.faults.drop_watches();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
