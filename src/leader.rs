//! Leader election on a `coordination.k8s.io/v1` Lease, so that several replicas never refresh
//! the same token at once (with rotating refresh tokens that revokes the chain).

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::PostParams;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::controller::{self, Context};

/// How often a standby replica looks at the Lease. A released lease is noticed within this
/// time, so a graceful hand-over takes about a second instead of a lease duration.
const STANDBY_POLL: Duration = Duration::from_secs(1);
/// Longest wait for the Lease release when stopping.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseOptions {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease stays valid without renewal; a crashed leader is replaced after this.
    pub duration_seconds: u64,
    /// The leader renews this long before the lease would expire.
    pub grace_seconds: u64,
}

/// Held leadership: renewed in the background until released or lost.
pub struct Leadership {
    manager: Arc<LeaseManager>,
    held: watch::Receiver<bool>,
    renewal: JoinHandle<()>,
}

/// Waits until this process holds the lease.
pub async fn acquire(
    client: Client,
    options: &LeaseOptions,
) -> Result<Leadership, LeaseManagerError> {
    tracing::info!(
        lease = options.name,
        namespace = options.namespace,
        identity = options.identity,
        "waiting for leadership"
    );
    let manager = loop {
        // A lease manager trusts its cached view of the Lease until that lease would expire, so
        // a fresh one per poll is what notices a released lease within a second. The current
        // holder's lease is left alone: `changed` only takes a free or expired lease.
        let manager = LeaseManagerBuilder::new(client.clone(), &options.name)
            .with_namespace(&options.namespace)
            .with_identity(&options.identity)
            .with_duration(options.duration_seconds)
            .with_grace(options.grace_seconds)
            .build()
            .await;
        match manager {
            Ok(manager) => match tokio::time::timeout(STANDBY_POLL, manager.changed()).await {
                Ok(Ok(true)) => break manager,
                Ok(Ok(false)) | Err(_) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "taking the leader Lease failed; retrying");
                    tokio::time::sleep(STANDBY_POLL).await;
                }
            },
            Err(error) => {
                tracing::warn!(%error, "reading the leader Lease failed; retrying");
                tokio::time::sleep(STANDBY_POLL).await;
            }
        }
    };
    // Taken just now: the renewal deadline starts here.
    let acquired = Instant::now();
    tracing::info!(identity = options.identity, "acquired leadership");
    let (report, held) = watch::channel(true);
    let renewal = tokio::spawn(renew(
        Api::namespaced(client, &options.namespace),
        options.clone(),
        acquired,
        report,
    ));
    Ok(Leadership {
        manager: Arc::new(manager),
        held,
        renewal,
    })
}

/// Renews the Lease every third of the renew deadline, with a resourceVersion precondition.
/// Reports `false` once another identity holds it, or once the renew deadline (lease duration
/// minus grace) has passed since the last successful renewal: after the lease duration another
/// replica may lead, and the grace covers the time a renewal takes.
async fn renew(
    leases: Api<Lease>,
    options: LeaseOptions,
    acquired: Instant,
    report: watch::Sender<bool>,
) {
    let deadline = Duration::from_secs(
        options
            .duration_seconds
            .saturating_sub(options.grace_seconds)
            .max(1),
    );
    let mut last_success = acquired;
    loop {
        tokio::time::sleep((deadline / 3).min(STANDBY_POLL * 3)).await;
        let sent = Instant::now();
        match renew_once(&leases, &options).await {
            Ok(true) => last_success = sent,
            Ok(false) => {
                tracing::error!("another replica holds the leader Lease now");
                break;
            }
            Err(error) => tracing::warn!(%error, "renewing the leader Lease failed; retrying"),
        }
        if last_success.elapsed() >= deadline {
            tracing::error!(
                since_last_renewal = ?last_success.elapsed(),
                "could not renew the leader Lease in time"
            );
            break;
        }
    }
    let _ = report.send(false);
}

/// One renewal: `Ok(false)` when the Lease is no longer ours.
async fn renew_once(leases: &Api<Lease>, options: &LeaseOptions) -> Result<bool, kube::Error> {
    let mut lease = leases.get(&options.name).await?;
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(options.identity.as_str()) {
        return Ok(false);
    }
    spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
    spec.lease_duration_seconds = i32::try_from(options.duration_seconds).ok();
    // `replace` carries the resourceVersion just read: a takeover in between is a conflict.
    match leases
        .replace(&options.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(response)) if response.code == 409 => {
            // Changed since the read: look again on the next round.
            Err(kube::Error::Api(response))
        }
        Err(error) => Err(error),
    }
}

impl Leadership {
    /// Resolves when leadership is lost.
    pub async fn lost(&mut self) {
        let _ = self.held.wait_for(|held| !*held).await;
    }

    /// Gives the lease up so a standby replica takes over at once instead of after expiry.
    pub async fn release(self) {
        self.renewal.abort();
        let _ = self.renewal.await;
        match self.manager.release().await {
            Ok(()) => tracing::info!("released the leader lease"),
            Err(error) => tracing::warn!(%error, "could not release the leader lease"),
        }
    }
}

/// Stands by until this replica holds the lease, then runs the controller until shutdown or
/// until the lease is lost. Either way no new refresh starts from then on, in-flight ones
/// finish within `grace`, and every token state kept in memory is written before the Lease is
/// released: a chain's newest refresh token never dies with the process.
pub async fn run_as_leader(
    client: Client,
    lease: LeaseOptions,
    context: Arc<Context>,
    namespaces: Vec<String>,
    shutdown: CancellationToken,
    grace: Duration,
    ready: Arc<AtomicBool>,
) -> bool {
    // A standby replica is healthy and ready: it has nothing to sync until it leads.
    // Standing by; liveness has nothing to watch.
    context.progress.standby();
    context.metrics.leader.set(0);
    ready.store(true, Ordering::Release);
    let mut leadership = tokio::select! {
        acquired = acquire(client, &lease) => match acquired {
            Ok(leadership) => leadership,
            Err(error) => {
                tracing::error!(%error, "leader election failed");
                return false;
            }
        },
        _ = shutdown.cancelled() => return true,
    };
    context.fencing.resume_refreshing();
    // Leading now: ready again only once the watches synced.
    ready.store(false, Ordering::Release);
    context.metrics.leader.set(1);
    let metrics = context.metrics.clone();
    let ended = async {
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = leadership.lost() => {
                // Not the leader from this moment on.
                metrics.leader.set(0);
                tracing::error!("lost the leader lease; stopping so that another replica can lead");
                true
            }
        }
    };
    let (flushed, lost) =
        controller::run_until(context.clone(), namespaces, ready, grace, ended).await;
    let lost = lost.unwrap_or(false);
    // No longer leading.
    context.progress.standby();
    context.metrics.leader.set(0);
    if flushed {
        // Releasing is a courtesy (the lease expires anyway); an API
        // that does not answer must not hold up the exit.
        if tokio::time::timeout(RELEASE_TIMEOUT, leadership.release())
            .await
            .is_err()
        {
            tracing::warn!("releasing the leader lease timed out; it expires by itself");
        }
    } else {
        // The claim on each of those chains stays in its state Secret: the next leader waits
        // it out and then treats the answer as lost.
        tracing::error!("not releasing the leader Lease: some token states exist only in memory");
    }
    flushed && !lost
}
