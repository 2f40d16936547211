//! What a reconcile reports about itself, kept out of the reconcile logic: a tracing span with
//! the OAuthToken's `namespace` and `name` (flattened into JSON log lines), the in-flight and
//! due bookkeeping behind liveness, and the per-token metrics computed from status.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use tracing::Instrument;

use crate::api::{OAuthTokenStatus, conditions};
use crate::controller::cached_token::CachedToken;
use crate::controller::{Context, Error};

/// The controller's reconcile function: [`crate::controller::reconcile`] inside a span that
/// names the OAuthToken, tracked as in flight for liveness.
pub async fn reconcile(object: Arc<CachedToken>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let key = format!("{namespace}/{name}");
    let span = tracing::info_span!("reconcile", namespace = %namespace, name = %name);
    let progress = ctx.progress.clone();
    // Due no more: this reconcile is it. While it runs it counts as in flight; a finished one
    // says when the next is due through `token_status`. A failed one is retried within seconds
    // by the error policy.
    progress.forget(&key);
    let _running = progress.reconcile_started(&key);
    crate::controller::reconcile(object, ctx)
        .instrument(span)
        .await
}

/// Hook for the reconcile, once the new status is known: per-token metrics, and when the next
/// reconcile of this OAuthToken is due (liveness): `status.nextRefreshAt`, or `deferred_until`
/// when a due refresh was put off for its origin's budget (status keeps the passed due time
/// then, and a long `Retry-After` must not look like a wedged controller).
pub fn token_status(
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: &OAuthTokenStatus,
    deferred_until: Option<chrono::DateTime<chrono::Utc>>,
) {
    ctx.metrics.observe_status(namespace, name, status);
    ctx.progress.reconcile_finished(
        &format!("{namespace}/{name}"),
        deferred_until.or(status.next_refresh_at),
    );
}

/// Hook for the reconcile of an OAuthToken that no longer exists: its series and bookkeeping go.
pub fn token_deleted(ctx: &Context, namespace: &str, name: &str) {
    ctx.metrics.forget_token(namespace, name);
    ctx.progress.forget(&format!("{namespace}/{name}"));
}

/// Whether the status says a human must re-authorize.
pub fn reauthorization_required(status: &OAuthTokenStatus) -> bool {
    conditions::is_true(&status.conditions, conditions::REAUTHORIZATION_REQUIRED)
}

/// How often series of deleted OAuthTokens are looked for.
const PRUNE_INTERVAL: Duration = Duration::from_secs(5);

/// Runs [`forget_deleted_tokens`] until the returned guard is dropped.
pub fn spawn_pruner(ctx: Arc<Context>, stores: Vec<Store<CachedToken>>) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(forget_deleted_tokens(ctx, stores)))
}

/// Aborts the task when dropped.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Drops the series of OAuthTokens that are gone. The controller does not reconcile a deleted
/// object, so the reconcile alone would leave them behind. Runs until aborted; looks only once
/// the watches have synced (an empty unsynced store would drop everything). It does not wait on
/// the stores itself: a store wakes only one waiter, and the controller waits on it too.
pub async fn forget_deleted_tokens(ctx: Arc<Context>, stores: Vec<Store<CachedToken>>) {
    let mut tick = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        tick.tick().await;
        if !ctx.progress.is_synced() {
            continue;
        }
        for (namespace, name) in ctx.metrics.tokens() {
            let reference = ObjectRef::<CachedToken>::new(&name).within(&namespace);
            if !stores.iter().any(|store| store.get(&reference).is_some()) {
                tracing::debug!(namespace, name, "OAuthToken deleted; dropping its series");
                token_deleted(&ctx, &namespace, &name);
            }
        }
    }
}
