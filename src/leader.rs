//! Leader election on a `coordination.k8s.io/v1` Lease, so that several replicas never refresh
//! the same token at once (with rotating refresh tokens that revokes the chain).

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

/// Waits until this process holds the lease.
pub async fn acquire(
    client: Client,
    options: &LeaseOptions,
) -> Result<Leadership, LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, &options.name)
        .with_namespace(&options.namespace)
        .with_identity(&options.identity)
        .with_duration(options.duration_seconds)
        .with_grace(options.grace_seconds)
        .build()
        .await?;
    let (mut state, task) = manager.watch().await;
    tracing::info!(
        lease = options.name,
        namespace = options.namespace,
        identity = options.identity,
        "waiting for leadership"
    );
    // An error here means the renewal task ended; its result says why.
    if state.wait_for(|leader| *leader).await.is_err() {
        return match task.await {
            Ok(Err(error)) => Err(error),
            _ => Err(LeaseManagerError::InconsistentState(
                "the lease task stopped before acquiring the lease".to_string(),
            )),
        };
    }
    tracing::info!(identity = options.identity, "acquired leadership");
    Ok(Leadership { state, task })
}

impl Leadership {
    /// Resolves when leadership is lost (the lease could not be renewed in time).
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|leader| !*leader).await;
    }

    /// Gives the lease up so a standby replica takes over at once instead of after expiry.
    pub async fn release(self) {
        drop(self.state);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("released the leader lease"),
            Ok(Err(error)) => tracing::warn!(%error, "could not release the leader lease"),
            Err(error) => tracing::warn!(%error, "the lease task failed"),
        }
    }
}
