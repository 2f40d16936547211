//! The reconcile shell: watches, the shared context, and error handling.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, OAuthToken};
use crate::metrics::Metrics;
use crate::oauth::TokenClient;
use crate::oauth::budget::{Budgets, Limit};

pub mod cache;
pub mod cached_token;
pub mod chain;
pub mod device;
mod reconcile;
pub mod secrets;
pub mod settings;
pub mod state;
pub mod status;

use cache::{Caches, Delivery, Scope, SecretIndex};
use cached_token::CachedToken;
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
    #[error("writing the state Secret failed: {0}")]
    WriteState(#[source] kube::Error),
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
            Error::WriteState(_) => "WriteStateFailed",
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
    /// Names this controller and replica in Events.
    pub reporter: Reporter,
    /// A uniform draw in `[0, 1)` for jitter; replaceable so tests are reproducible.
    pub jitter: fn() -> f64,
    pub metrics: Arc<Metrics>,
    /// Claims, parked states and the refresh gate: see [`chain`].
    pub fencing: Fencing,
    /// What reconciles read instead of the API: see [`cache`].
    pub caches: Caches,
    /// Request budgets per token-endpoint origin.
    pub budgets: Budgets,
    /// Reconciles running at once, across all OAuthTokens: bounds memory, connections to the
    /// API server and the burst on token endpoints.
    pub max_concurrent_reconciles: u16,
    /// what liveness is computed from; see [`crate::health`].
    pub progress: Arc<crate::health::Progress>,
    /// Device authorizations in progress: see [`device`].
    pub device_sessions: device::Sessions,
}

/// Budget per token-endpoint origin unless OAuthTokens declare their own: generous (100
/// requests a second), so that only a runaway is held back.
pub const DEFAULT_TOKEN_ENDPOINT_BUDGET: Limit = Limit {
    per_minute: 6000,
    burst: 1000,
};
/// Longest a due refresh is held inside a reconcile for its origin's budget; beyond it the
/// OAuthToken is looked at again when the budget allows, without holding a reconcile slot.
pub const MAX_BUDGET_WAIT: Duration = Duration::from_secs(1);

/// Default for [`Context::max_concurrent_reconciles`].
pub const DEFAULT_MAX_CONCURRENT_RECONCILES: u16 = 32;

impl Context {
    /// Publishes an Event about `reference`. A fresh `Recorder` each time: kube's `Recorder`
    /// keeps every Event it published for six minutes to aggregate repeats into series, which
    /// after a cold start of 10,000 OAuthTokens is tens of MiB; this operator already publishes
    /// only on changes, so there is nothing to aggregate.
    pub async fn publish_event(
        &self,
        event: &kube::runtime::events::Event,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
    ) -> Result<(), kube::Error> {
        Recorder::new(self.client.clone(), self.reporter.clone())
            .publish(event, reference)
            .await
    }

    /// `reporter.instance` (the pod name) names this process in claims.
    pub fn new(client: Client, tokens: TokenClient, reporter: Reporter) -> Context {
        let identity = reporter
            .instance
            .clone()
            .unwrap_or_else(|| "oauth-token-operator".to_string());
        Context {
            reporter,
            fencing: Fencing::new(&identity, tokens.timeout()),
            client,
            tokens,
            jitter: rand::random::<f64>,
            metrics: Arc::default(),
            caches: Caches::default(),
            budgets: Budgets::new(DEFAULT_TOKEN_ENDPOINT_BUDGET, MAX_BUDGET_WAIT),
            max_concurrent_reconciles: DEFAULT_MAX_CONCURRENT_RECONCILES,
            progress: Arc::default(),
            device_sessions: device::Sessions::default(),
        }
    }
}

/// Retry delay after a reconcile error (Kubernetes API trouble). Provider failures never get
/// here: their backoff is computed from status.
fn error_policy(_token: Arc<CachedToken>, error: &Error, ctx: Arc<Context>) -> Action {
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
        // Someone else moved the chain, or wrote status since it was read: look again at once
        // (a watch event usually comes first).
        Error::StateConflict => Duration::from_millis(200),
        Error::WriteStatus(error) if secrets::is_conflict(error) => Duration::from_millis(200),
        _ => Duration::from_secs(5),
    };
    Action::requeue(base + jitter)
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
    // Liveness now expects the watches to sync and reconciles to finish.
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
    let mut scopes_ready = Vec::new();
    let mut controllers = Vec::new();
    for namespace in scopes {
        let (scope, controller) = controller_for(context.clone(), namespace, shutdown.clone());
        scopes_ready.push(scope);
        controllers.push(controller);
    }
    // Series of deleted OAuthTokens go (the controller never reconciles
    // a deleted object).
    let _pruner = crate::observe::spawn_pruner(
        context.clone(),
        scopes_ready
            .iter()
            .map(|scope| scope.tokens.clone())
            .collect(),
    );
    let progress = context.progress.clone();
    tokio::spawn(async move {
        for scope in scopes_ready {
            if !scope.wait_ready().await {
                return;
            }
        }
        info!("watches synced");
        // Liveness: the initial lists arrived.
        progress.synced();
        ready.store(true, Ordering::Release);
    });
    futures::future::join_all(controllers).await;
    context.caches.clear();
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
    // Stop waiting as soon as no reconcile is in flight. A controller
    // whose watch never synced (no CRD, a forbidden watch) never ends by itself.
    let running = crate::health::until_idle(&context.progress, running);
    if tokio::time::timeout_at(deadline, running).await.is_err() {
        warn!("in-flight reconciles did not finish within the shutdown grace period");
    }
    flush_parked(context, deadline).await
}

/// Writes everything this process owes state Secrets (new refresh tokens it could not store
/// yet, the ends of its claims), retrying until `deadline`, and longer while a new refresh token
/// may still be stored: other processes present the old one only after that. A stopping process
/// calls it before it gives up the Lease or exits: the newest refresh token of a chain must not
/// die with the process. Returns whether nothing is left in memory.
pub async fn flush_parked(context: &Context, deadline: tokio::time::Instant) -> bool {
    let fencing = &context.fencing;
    let until = || {
        fencing
            .successors_until()
            .map_or(deadline, |window| window.max(deadline))
    };
    let mut pause = Duration::from_millis(200);
    loop {
        if !fencing.owes_writes() {
            return true;
        }
        // An API call that hangs must not outlast the deadline.
        let Ok(left) =
            tokio::time::timeout_at(until(), chain::settle_all(&context.client, fencing)).await
        else {
            error!("writing the token states kept in memory did not finish before the deadline");
            return !fencing.owes_writes();
        };
        if left.is_empty() {
            info!("wrote every token state that was kept in memory");
            return true;
        }
        if tokio::time::Instant::now() + pause >= until() {
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

/// The label every Secret this operator creates carries; owned Secrets are watched by it and
/// every other Secret is watched without it.
fn owned_selector(equal: bool) -> String {
    let op = if equal { "=" } else { "!=" };
    format!("{MANAGED_BY_LABEL}{op}{MANAGED_BY_VALUE}")
}

fn controller_for(
    context: Arc<Context>,
    namespace: Option<String>,
    shutdown: CancellationToken,
) -> (Scope, impl std::future::Future<Output = ()>) {
    let client = context.client.clone();
    let (oauth_tokens, owned, others): (
        Api<OAuthToken>,
        Api<Secret>,
        Api<PartialObjectMeta<Secret>>,
    ) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client),
        ),
    };
    let (tokens_store, tokens_writer) = reflector::store();
    let owned_secrets = Arc::new(cache::OwnedSecrets::default());
    let user_secrets = Arc::new(cache::UserSecrets::default());
    let index = Arc::new(SecretIndex::default());
    let scope = Scope {
        namespace: namespace.clone(),
        tokens: tokens_store.clone(),
        owned: owned_secrets.clone(),
        others: user_secrets.clone(),
        index: index.clone(),
    };
    context.caches.register(scope.clone());

    // OAuthTokens: a reconcile for a new OAuthToken and for every spec change (a new
    // generation; status writes, ours included, and metadata edits keep it), with the index of
    // referenced Secrets kept up to date. The generation is compared with the cached version
    // before the store takes the new one: kube's predicate filter would keep a second key per
    // OAuthToken for the same answer.
    let ctx = context.clone();
    let token_index = index.clone();
    let cached = tokens_store.clone();
    let mut tokens_writer = tokens_writer;
    let mut triggers = cached_token::Triggers::default();
    let token_changes = watcher(oauth_tokens, watcher::Config::default())
        .default_backoff()
        .modify(cache::strip_token)
        .map_ok(move |event| {
            let cached_event = match &event {
                watcher::Event::Init => watcher::Event::Init,
                watcher::Event::InitDone => watcher::Event::InitDone,
                watcher::Event::InitApply(token) => {
                    watcher::Event::InitApply(CachedToken::new(token))
                }
                watcher::Event::Apply(token) => watcher::Event::Apply(CachedToken::new(token)),
                watcher::Event::Delete(token) => watcher::Event::Delete(CachedToken::new(token)),
            };
            let spec_changed = match &cached_event {
                watcher::Event::Apply(token) | watcher::Event::InitApply(token) => {
                    cache::is_new_spec(cached.get(&ObjectRef::from_obj(token)).as_deref(), token)
                }
                _ => false,
            };
            // The store first, then what reads it: like kube's `reflect`.
            tokens_writer.apply_watcher_event(&cached_event);
            match event {
                // A relist builds the index anew and swaps it in whole, like the store.
                watcher::Event::Init => token_index.begin_relist(),
                watcher::Event::InitApply(token) => {
                    token_index.upsert(&token);
                    ctx.caches.delivered_token(&token, Delivery::Listed);
                }
                watcher::Event::InitDone => token_index.end_relist(),
                watcher::Event::Apply(token) => {
                    token_index.upsert(&token);
                    ctx.caches.delivered_token(&token, Delivery::Changed);
                }
                watcher::Event::Delete(token) => {
                    let namespace = token.namespace().unwrap_or_default();
                    if let Some(uid) = token.uid() {
                        ctx.fencing.forget(&uid);
                        ctx.device_sessions.forget(&uid);
                    }
                    token_index.remove(&namespace, &token.name_any());
                    ctx.caches.delivered_token(&token, Delivery::Deleted);
                    crate::observe::token_deleted(&ctx, &namespace, &token.name_any());
                }
            }
            triggers.after(cached_event, spec_changed)
        })
        .map_ok(|triggers| futures::stream::iter(triggers.into_iter().map(Ok)))
        .try_flatten();

    // The state and token Secrets, by label. This process's own writes trigger nothing: the
    // reconcile that made them already knows.
    let ctx = context.clone();
    let owned_changes = watcher(
        owned,
        watcher::Config::default().labels(&owned_selector(true)),
    )
    .default_backoff()
    .try_filter_map(move |event| {
        owned_secrets.apply(&event);
        let changed = match event {
            watcher::Event::InitApply(secret) => {
                (!ctx.caches.delivered_secret(&secret, Delivery::Listed)).then_some(secret)
            }
            watcher::Event::Apply(secret) => {
                (!ctx.caches.delivered_secret(&secret, Delivery::Changed)).then_some(secret)
            }
            watcher::Event::Delete(secret) => {
                ctx.caches.delivered_secret(&secret, Delivery::Deleted);
                Some(secret)
            }
            watcher::Event::Init | watcher::Event::InitDone => None,
        };
        std::future::ready(Ok(changed))
    });

    // Every other Secret, metadata only: a change reaches the OAuthTokens that reference it
    // through the index.
    let ctx = context.clone();
    let other_changes = watcher(
        others,
        watcher::Config::default().labels(&owned_selector(false)),
    )
    .default_backoff()
    .try_filter_map(move |event| {
        user_secrets.apply(&event);
        let changed = match event {
            watcher::Event::InitApply(meta) | watcher::Event::Apply(meta) => {
                ctx.caches.delivered_user_secret(&meta, false);
                Some(meta)
            }
            watcher::Event::Delete(meta) => {
                ctx.caches.delivered_user_secret(&meta, true);
                Some(meta)
            }
            watcher::Event::Init | watcher::Event::InitDone => None,
        };
        std::future::ready(Ok(changed))
    });

    info!(
        namespace = namespace.as_deref().unwrap_or("(all)"),
        concurrency = context.max_concurrent_reconciles,
        "starting the OAuthToken controller"
    );
    let config = controller::Config::default().concurrency(context.max_concurrent_reconciles);
    let owned_index = index.clone();
    let progress = context.progress.clone();
    let running = Controller::for_stream(token_changes, tokens_store)
        .with_config(config)
        .watches_stream(owned_changes, move |secret| {
            // Its OAuthToken, and any OAuthToken that references it (an odd but possible
            // client or import Secret).
            let namespace = secret.namespace().unwrap_or_default();
            let mut tokens = owned_index.readers(&namespace, &secret.name_any());
            tokens.extend(
                secret
                    .owner_references()
                    .iter()
                    .filter(|r| r.controller == Some(true) && r.kind == "OAuthToken")
                    .map(|r| ObjectRef::new(&r.name).within(&namespace)),
            );
            tokens
        })
        .watches_stream(other_changes, move |meta| {
            index.readers(&meta.namespace().unwrap_or_default(), &meta.name_any())
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        // the reconcile inside a span naming the OAuthToken, tracked.
        .run(crate::observe::reconcile, error_policy, context)
        .for_each(move |result| {
            if let Err(error) = result {
                // watch errors are logged at ERROR and feed liveness.
                progress.controller_error(&error);
            }
            futures::future::ready(())
        });
    (scope, running)
}
