//! Leader election on a `coordination.k8s.io/v1` Lease, so that several replicas never refresh
//! the same token at once (with rotating refresh tokens that revokes the chain).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often a standby replica looks at the Lease. A released lease is noticed within this
/// time, so a graceful hand-over takes about a second instead of a lease duration.
const STANDBY_POLL: Duration = Duration::from_secs(1);

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
    tracing::info!(identity = options.identity, "acquired leadership");
    let manager = Arc::new(manager);
    let (report, held) = watch::channel(true);
    let renewal = tokio::spawn(renew(
        manager.clone(),
        report,
        Duration::from_secs(
            options
                .duration_seconds
                .saturating_sub(options.grace_seconds),
        ),
    ));
    Ok(Leadership {
        manager,
        held,
        renewal,
    })
}

/// Keeps renewing the lease; reports `false` once it is lost, or once renewals have failed for
/// longer than `tolerated_failure` (after that another replica may already lead).
async fn renew(
    manager: Arc<LeaseManager>,
    report: watch::Sender<bool>,
    tolerated_failure: Duration,
) {
    let mut failing_since: Option<Instant> = None;
    loop {
        match tokio::time::timeout(tolerated_failure.max(STANDBY_POLL), manager.changed()).await {
            // Still renewing quietly.
            Err(_) => failing_since = None,
            Ok(Ok(true)) => failing_since = None,
            Ok(Ok(false)) => break,
            Ok(Err(error)) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= tolerated_failure {
                    tracing::error!(%error, "could not renew the leader Lease in time");
                    break;
                }
                tracing::warn!(%error, "renewing the leader Lease failed; retrying");
                tokio::time::sleep(STANDBY_POLL).await;
            }
        }
    }
    let _ = report.send(false);
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
