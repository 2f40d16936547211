//! The reconcile shell: watches, the shared context, and error handling.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::OAuthToken;
use crate::metrics::Metrics;
use crate::oauth::TokenClient;

pub mod chain;
mod reconcile;
pub mod secrets;
pub mod settings;
pub mod state;
pub mod status;

use chain::Fencing;
pub use reconcile::reconcile;

/// Failures of a reconcile that are not the provider's answer (those end up in status).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("OAuthToken has no namespace")]
    MissingNamespace,
    #[error("reading inputs from the Kubernetes API failed: {0}")]
    ReadInputs(#[source] kube::Error),
    #[error(
        "persisting the token state failed ({0}); the new state is kept in memory and written before any further token request"
    )]
    PersistState(#[source] kube::Error),
    #[error("writing the target Secret failed: {0}")]
    PublishToken(#[source] kube::Error),
    #[error("writing the status failed: {0}")]
    WriteStatus(#[source] kube::Error),
    #[error("the state Secret changed meanwhile; looking again")]
    StateConflict,
}

impl Error {
    /// A static, low-cardinality name for metrics labels and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::MissingNamespace => "MissingNamespace",
            Error::ReadInputs(_) => "ReadInputsFailed",
            Error::PersistState(_) => "PersistStateFailed",
            Error::PublishToken(_) => "PublishTokenFailed",
            Error::WriteStatus(_) => "WriteStatusFailed",
            Error::StateConflict => "StateConflict",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub tokens: TokenClient,
    pub recorder: Recorder,
    /// A uniform draw in `[0, 1)` for jitter; replaceable so tests are reproducible.
    pub jitter: fn() -> f64,
    pub metrics: Arc<Metrics>,
    /// Claims, parked states and the refresh gate: see [`chain`].
    pub fencing: Fencing,
    /// HOOK(issue9 health): what liveness is computed from; see [`crate::health`].
    pub progress: Arc<crate::health::Progress>,
}

impl Context {
    /// `reporter.instance` (the pod name) names this process in claims.
    pub fn new(client: Client, tokens: TokenClient, reporter: Reporter) -> Context {
        let identity = reporter
            .instance
            .clone()
            .unwrap_or_else(|| "oauth-token-operator".to_string());
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            fencing: Fencing::new(&identity, tokens.timeout()),
            client,
            tokens,
            jitter: rand::random::<f64>,
            metrics: Arc::default(),
            progress: Arc::default(),
        }
    }
}

/// Retry delay after a reconcile error (Kubernetes API trouble). Provider failures never get
/// here: their backoff is computed from status.
fn error_policy(_token: Arc<OAuthToken>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(category = error.category(), %error, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&crate::metrics::CategoryLabels {
            category: error.category(),
        })
        .inc();
    let jitter = Duration::from_millis((rand::random::<f64>() * 2000.0) as u64);
    let base = match error {
        // The newest refresh token exists only in memory: try to write it again soon.
        Error::PersistState(_) => Duration::from_secs(1),
        // Someone else moved the chain: look again at once (a watch event usually comes first).
        Error::StateConflict => Duration::from_millis(200),
        _ => Duration::from_secs(5),
    };
    Action::requeue(base + jitter)
}

/// Which OAuthTokens a change to this Secret concerns: its controller, and every OAuthToken in
/// its namespace that reads it.
fn tokens_for_secret(
    store: &Store<OAuthToken>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<OAuthToken>> {
    let namespace = secret.namespace();
    let name = secret.name_any();
    let owners: Vec<&str> = secret
        .owner_references()
        .iter()
        .filter(|r| r.kind == "OAuthToken")
        .map(|r| r.uid.as_str())
        .collect();
    store
        .state()
        .iter()
        .filter(|token| token.namespace() == namespace)
        .filter(|token| {
            token
                .uid()
                .is_some_and(|uid| owners.contains(&uid.as_str()))
                || reads_secret(token, &name)
        })
        .map(|token| ObjectRef::from_obj(token.as_ref()))
        .collect()
}

fn reads_secret(token: &OAuthToken, name: &str) -> bool {
    let spec = &token.spec;
    spec.client_secret_ref
        .as_ref()
        .is_some_and(|r| r.name == name)
        || spec
            .grant
            .refresh_token
            .as_ref()
            .is_some_and(|g| g.initial_refresh_token_secret_ref.name == name)
}

/// Runs the controllers until `shutdown` is cancelled: one for the whole cluster, or one per
/// namespace in `namespaces`. In-flight reconciles finish first, so a refresh that already
/// reached the provider gets its new refresh token persisted. `ready` is set once every watch
/// has synced.
pub async fn run(
    context: Arc<Context>,
    namespaces: Vec<String>,
    shutdown: CancellationToken,
    ready: Arc<AtomicBool>,
) {
    // HOOK(issue9 health): liveness now expects the watches to sync and reconciles to finish.
    context.progress.controllers_started();
    let mut namespaces = namespaces;
    // A namespace listed twice would get two controllers, and so two refreshes of one token.
    namespaces.sort_unstable();
    namespaces.dedup();
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let mut stores = Vec::new();
    let mut controllers = Vec::new();
    for namespace in scopes {
        let (store, controller) = controller_for(context.clone(), namespace, shutdown.clone());
        stores.push(store);
        controllers.push(controller);
    }
    // HOOK(issue9 observe): series of deleted OAuthTokens go (the controller never reconciles
    // a deleted object).
    let _pruner = crate::observe::spawn_pruner(context.clone(), stores.clone());
    let progress = context.progress.clone();
    tokio::spawn(async move {
        for store in stores {
            // HOOK(issue9 health): a store wakes only one waiter and the controller waits on
            // it too; this one looks again every 100 ms.
            if crate::health::store_ready(&store).await.is_err() {
                return;
            }
        }
        info!("watches synced");
        // HOOK(issue9 health): the initial lists arrived.
        progress.synced();
        ready.store(true, Ordering::Release);
    });
    futures::future::join_all(controllers).await;
    info!("controller stopped");
}

/// Runs the controllers until `until` resolves (or they end by themselves), then stops them the
/// safe way ([`stop`]). Returns whether nothing is left only in memory, and what `until` gave.
pub async fn run_until<T>(
    context: Arc<Context>,
    namespaces: Vec<String>,
    ready: Arc<AtomicBool>,
    grace: Duration,
    until: impl std::future::Future<Output = T>,
) -> (bool, Option<T>) {
    let controller_stop = CancellationToken::new();
    let running = run(context.clone(), namespaces, controller_stop.clone(), ready);
    tokio::pin!(running);
    tokio::select! {
        _ = &mut running => {
            context.fencing.stop_refreshing();
            (flush_parked(&context, tokio::time::Instant::now() + grace).await, None)
        }
        reason = until => (stop(&context, running, controller_stop, grace).await, Some(reason)),
    }
}

/// Stops a running controller: no new refresh starts, in-flight reconciles get until `grace`
/// runs out, then every state kept in memory is written within the same `grace`. Returns
/// whether nothing is left only in memory.
pub async fn stop(
    context: &Context,
    running: impl std::future::Future<Output = ()>,
    controller_stop: CancellationToken,
    grace: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + grace;
    context.fencing.stop_refreshing();
    controller_stop.cancel();
    // HOOK(issue9 shutdown): stop waiting as soon as no reconcile is in flight. A controller
    // whose watch never synced (no CRD, a forbidden watch) never ends by itself.
    let running = crate::health::until_idle(&context.progress, running);
    if tokio::time::timeout_at(deadline, running).await.is_err() {
        warn!("in-flight reconciles did not finish within the shutdown grace period");
    }
    flush_parked(context, deadline).await
}

/// Writes every token state that exists only in memory, retrying until `deadline`. A stopping
/// process calls it before it gives up the Lease or exits: the newest refresh token of a chain
/// must not die with the process. Returns whether nothing is left in memory.
pub async fn flush_parked(context: &Context, deadline: tokio::time::Instant) -> bool {
    let mut pause = Duration::from_millis(200);
    loop {
        if !context.fencing.has_parked() {
            return true;
        }
        // HOOK(issue9 shutdown): an API call that hangs must not outlast the deadline.
        let Ok(left) = tokio::time::timeout_at(
            deadline,
            chain::flush_parked(&context.client, &context.fencing),
        )
        .await
        else {
            error!("writing the token states kept in memory did not finish before the deadline");
            return false;
        };
        if left.is_empty() {
            info!("wrote every token state that was kept in memory");
            return true;
        }
        if tokio::time::Instant::now() + pause >= deadline {
            for token in &left {
                error!(
                    oauthtoken = token.as_str(),
                    "stopping with a new refresh token that could not be written; this chain will need re-authorization"
                );
            }
            return false;
        }
        warn!(
            pending = left.len(),
            "token states still wait to be written; retrying"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

fn controller_for(
    context: Arc<Context>,
    namespace: Option<String>,
    shutdown: CancellationToken,
) -> (Store<OAuthToken>, impl std::future::Future<Output = ()>) {
    let client = context.client.clone();
    // Metadata only: the controller reads Secret values on demand and never caches them.
    let (oauth_tokens, secrets): (Api<OAuthToken>, Api<PartialObjectMeta<Secret>>) =
        match &namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client, ns),
            ),
            None => (Api::all(client.clone()), Api::all(client)),
        };
    let secret_changes = watcher(secrets, watcher::Config::default())
        .default_backoff()
        .touched_objects();
    let controller = Controller::new(oauth_tokens, watcher::Config::default());
    let store = controller.store();
    let mapper_store = store.clone();
    info!(
        namespace = namespace.as_deref().unwrap_or("(all)"),
        "starting the OAuthToken controller"
    );
    // HOOK(issue9 health): watch errors come out of the controller's stream.
    let progress = context.progress.clone();
    let running = controller
        .watches_stream(secret_changes, move |secret| {
            tokens_for_secret(&mapper_store, &secret)
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        // HOOK(issue9 observe): the reconcile inside a span naming the OAuthToken, tracked.
        .run(crate::observe::reconcile, error_policy, context)
        .for_each(move |result| {
            if let Err(error) = result {
                // HOOK(issue9 health): watch errors are logged at ERROR and feed liveness.
                progress.controller_error(&error);
            }
            futures::future::ready(())
        });
    (store, running)
}
