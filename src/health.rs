//! Whether the controller is making progress: what `/healthz` and `/readyz` report, and the
//! ERROR log lines for watches that keep failing (a missing CRD, a forbidden watch).
//!
//! The controller reports into a [`Progress`] through a handful of hook calls:
//! [`Progress::controllers_started`], [`Progress::synced`], [`Progress::watch_ok`],
//! [`Progress::controller_error`], the reconcile wrapper in [`crate::observe`] (in-flight
//! reconciles and when each token is due next), and [`Progress::standby`] from leader election.
//!
//! Liveness fails, while this replica runs the controllers, when for longer than the stall
//! timeout:
//! - the watches have not synced since the controllers started;
//! - the watches keep failing (errors still arriving after that long, with no successful watch
//!   event in between);
//! - a reconcile has been running (nothing in a reconcile legitimately takes that long: token
//!   requests have their own timeout);
//! - an OAuthToken's `status.nextRefreshAt` has passed and no reconcile of it finished since.
//!
//! A replica standing by for leadership is alive and ready.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// Default of `--liveness-stall-timeout`.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(300);
/// A failing watch is retried with a backoff of at most 30 s (kube-runtime's default backoff);
/// no error for longer than this means the watch recovered (a recovered watch is silent on a
/// quiet cluster).
const ERROR_STREAK_GAP: Duration = Duration::from_secs(45);
/// How often a watch that keeps failing is logged again at ERROR.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug)]
enum Mode {
    /// Waiting for leadership, or stopped: nothing to make progress on.
    Standby,
    Running {
        since: Instant,
    },
}

#[derive(Debug)]
struct Streak {
    first: Instant,
    last: Instant,
    /// When each distinct error (two watches fail differently: no CRD, no RBAC for Secrets)
    /// was last logged.
    logged: HashMap<String, Instant>,
}

#[derive(Debug)]
struct Inner {
    mode: Mode,
    synced: bool,
    errors: Option<Streak>,
    next_reconcile_id: u64,
    in_flight: HashMap<u64, (String, Instant)>,
    /// `namespace/name` → when the next reconcile of that OAuthToken is due.
    due: HashMap<String, DateTime<Utc>>,
}

/// Progress of the controller, shared by the reconciles, the watches and the HTTP endpoints.
#[derive(Debug)]
pub struct Progress {
    stall_timeout: Duration,
    inner: Mutex<Inner>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new(DEFAULT_STALL_TIMEOUT)
    }
}

/// Marks one reconcile as running until dropped.
pub struct InFlight<'a> {
    progress: &'a Progress,
    id: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.progress.lock().in_flight.remove(&self.id);
    }
}

impl Progress {
    pub fn new(stall_timeout: Duration) -> Progress {
        Progress {
            stall_timeout,
            inner: Mutex::new(Inner {
                mode: Mode::Standby,
                synced: false,
                errors: None,
                next_reconcile_id: 0,
                in_flight: HashMap::new(),
                due: HashMap::new(),
            }),
        }
    }

    pub fn stall_timeout(&self) -> Duration {
        self.stall_timeout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The controllers start now (this replica leads, or runs without election).
    pub fn controllers_started(&self) {
        let mut inner = self.lock();
        inner.mode = Mode::Running {
            since: Instant::now(),
        };
        inner.synced = false;
        inner.errors = None;
        inner.due.clear();
    }

    /// Standing by for leadership (or stopped): alive, nothing to watch.
    pub fn standby(&self) {
        let mut inner = self.lock();
        inner.mode = Mode::Standby;
        inner.errors = None;
        inner.due.clear();
    }

    /// Every watch delivered its initial list.
    pub fn synced(&self) {
        let mut inner = self.lock();
        inner.synced = true;
        inner.errors = None;
    }

    /// Whether the watches delivered their initial lists since the controllers started.
    pub fn is_synced(&self) -> bool {
        self.lock().synced
    }

    /// A watch delivered an event: it works.
    pub fn watch_ok(&self) {
        self.lock().errors = None;
    }

    /// A watch failed (it is retried with a backoff). Logs each distinct error at ERROR when
    /// first seen in a streak and then once a minute while it lasts, with a hint on what to
    /// check.
    pub fn watch_failed(&self, error: &dyn std::fmt::Display, status: Option<u16>) {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut streak = match inner.errors.take() {
            Some(streak) if now.duration_since(streak.last) <= ERROR_STREAK_GAP => streak,
            _ => Streak {
                first: now,
                last: now,
                logged: HashMap::new(),
            },
        };
        streak.last = now;
        let text = error.to_string();
        let log = streak
            .logged
            .get(&text)
            .is_none_or(|at| now.duration_since(*at) >= ERROR_LOG_INTERVAL);
        if log {
            if streak.logged.len() >= 16 {
                streak.logged.clear();
            }
            streak.logged.insert(text, now);
        }
        let failing_for = now.duration_since(streak.first);
        inner.errors = Some(streak);
        drop(inner);
        if log {
            let hint = match status {
                Some(404) => {
                    "the OAuthToken CRD is not installed (kubectl apply -f crds/oauthtoken.yaml) or the API server does not serve it"
                }
                Some(401) => "the API server does not accept the operator's credentials",
                Some(403) => {
                    "the operator's RBAC does not allow this watch (list and watch on oauthtokens and secrets in the watched namespaces)"
                }
                _ => "the Kubernetes API is unreachable or failing; retrying with backoff",
            };
            tracing::error!(
                %error,
                hint,
                failing_for_seconds = failing_for.as_secs(),
                "watching the Kubernetes API failed"
            );
        }
    }

    /// Classifies an error from the controller's output stream: watch errors are counted and
    /// logged here; reconcile errors are already logged by the error policy.
    pub fn controller_error<R, Q>(&self, error: &kube::runtime::controller::Error<R, Q>)
    where
        R: std::error::Error + 'static,
        Q: std::error::Error + 'static,
    {
        use kube::runtime::controller::Error as ControllerError;
        match error {
            ControllerError::QueueError(queue) => {
                let status = watch_error_status(queue);
                self.watch_failed(queue, status);
            }
            other => tracing::debug!(error = %other, "reconcile round ended with an error"),
        }
    }

    /// A reconcile of `key` (`namespace/name`) starts; it counts as running until the guard is
    /// dropped.
    pub fn reconcile_started(&self, key: &str) -> InFlight<'_> {
        let mut inner = self.lock();
        inner.next_reconcile_id += 1;
        let id = inner.next_reconcile_id;
        inner
            .in_flight
            .insert(id, (key.to_string(), Instant::now()));
        InFlight { progress: self, id }
    }

    /// A reconcile of `key` finished; `next_due` is when its next one is due (from
    /// `status.nextRefreshAt`), if any.
    pub fn reconcile_finished(&self, key: &str, next_due: Option<DateTime<Utc>>) {
        let mut inner = self.lock();
        match next_due {
            Some(at) => inner.due.insert(key.to_string(), at),
            None => inner.due.remove(key),
        };
    }

    /// The OAuthToken is gone: nothing is due for it.
    pub fn forget(&self, key: &str) {
        self.lock().due.remove(key);
    }

    /// Reconciles running now.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }

    /// `Ok` while alive, else why not.
    pub fn liveness(&self) -> Result<(), String> {
        self.liveness_at(Instant::now(), Utc::now())
    }

    fn liveness_at(&self, now: Instant, wall: DateTime<Utc>) -> Result<(), String> {
        let inner = self.lock();
        let since = match inner.mode {
            Mode::Standby => return Ok(()),
            Mode::Running { since } => since,
        };
        let stall = self.stall_timeout;
        if !inner.synced && now.duration_since(since) > stall {
            return Err(format!(
                "the watches have not synced in {}s since the controller started",
                now.duration_since(since).as_secs()
            ));
        }
        if let Some(streak) = &inner.errors
            && streak.last.duration_since(streak.first) >= stall
            && now.duration_since(streak.last) <= ERROR_STREAK_GAP
        {
            return Err(format!(
                "the watches have been failing for {}s",
                now.duration_since(streak.first).as_secs()
            ));
        }
        if let Some((key, started)) = inner
            .in_flight
            .values()
            .find(|(_, started)| now.duration_since(*started) > stall)
        {
            return Err(format!(
                "the reconcile of {key} has been running for {}s",
                now.duration_since(*started).as_secs()
            ));
        }
        let stall_chrono = chrono::TimeDelta::from_std(stall).unwrap_or(chrono::TimeDelta::MAX);
        if let Some((key, due)) = inner.due.iter().find(|(_, due)| {
            due.checked_add_signed(stall_chrono)
                .is_some_and(|at| at < wall)
        }) {
            return Err(format!(
                "{key} was due at {due} and no reconcile of it has finished since"
            ));
        }
        Ok(())
    }
}

/// The HTTP status behind a watch error, when the API server answered.
fn watch_error_status(error: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if let Some(kube::Error::Api(status)) = error.downcast_ref::<kube::Error>() {
            return Some(status.code);
        }
        if let Some(kube::runtime::watcher::Error::WatchError(status)) =
            error.downcast_ref::<kube::runtime::watcher::Error>()
        {
            return Some(status.code);
        }
        source = error.source();
    }
    None
}

/// Waits until `store` has its initial list. `Store::wait_until_ready` wakes only the last of
/// several waiters (a oneshot channel underneath), and the controller itself waits on the same
/// store: a waiter that is never woken would leave readiness and liveness unsynced forever, so
/// this one looks again every 100 ms.
pub async fn store_ready<K>(
    store: &kube::runtime::reflector::Store<K>,
) -> Result<(), kube::runtime::reflector::store::WriterDropped>
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(result) =
            tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready()).await
        {
            return result;
        }
    }
}

/// Runs `running` (a controller being stopped) until it ends or no reconcile is in flight any
/// more. Reconciles run inside the controller's own stream, so one dispatched while `running`
/// is polled is counted before `in_flight` is looked at.
pub async fn until_idle(progress: &Progress, running: impl std::future::Future<Output = ()>) {
    tokio::pin!(running);
    loop {
        tokio::select! {
            biased;
            _ = &mut running => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if progress.in_flight() == 0 {
                    tracing::debug!("no reconcile in flight; not waiting for the controller");
                    return;
                }
            }
        }
    }
}

/// Ends the process if it has not exited `limit` after shutdown began, or, while `hold` names a
/// later time, then: every shutdown path (leader election, a controller waiting for a watch that
/// never syncs, a hung API call) is bounded by this last resort.
pub fn exit_after(limit: Duration, hold: impl Fn() -> Option<std::time::Instant> + Send + 'static) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        // A new refresh token that is not stored yet keeps the process alive while it may
        // still be stored: other processes present the old one only after that.
        while let Some(until) = hold().filter(|until| *until > std::time::Instant::now()) {
            tracing::warn!(
                "a new refresh token is not stored yet; staying until it is or its time runs out"
            );
            std::thread::sleep(until.saturating_duration_since(std::time::Instant::now()));
        }
        tracing::error!(
            limit_seconds = limit.as_secs(),
            "shutdown did not complete in time; exiting now"
        );
        std::process::exit(1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(stall: Duration) -> Progress {
        let progress = Progress::new(stall);
        progress.controllers_started();
        progress
    }

    #[test]
    fn standby_is_alive() {
        let progress = Progress::new(Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(progress.liveness().is_ok());
    }

    #[test]
    fn no_sync_within_the_stall_timeout_is_dead() {
        let progress = running(Duration::from_secs(60));
        let now = Instant::now();
        assert!(progress.liveness_at(now, Utc::now()).is_ok());
        let later = now + Duration::from_secs(61);
        assert!(progress.liveness_at(later, Utc::now()).is_err());
        progress.synced();
        assert!(progress.liveness_at(later, Utc::now()).is_ok());
    }

    #[test]
    fn a_watch_failing_for_the_stall_timeout_is_dead_and_recovers() {
        let progress = running(Duration::from_millis(50));
        progress.synced();
        progress.watch_failed(&"boom", None);
        assert!(progress.liveness().is_ok(), "one error is no stall");
        std::thread::sleep(Duration::from_millis(60));
        progress.watch_failed(&"boom", Some(404));
        let verdict = progress.liveness();
        assert!(verdict.is_err(), "{verdict:?}");
        progress.watch_ok();
        assert!(progress.liveness().is_ok());
    }

    #[test]
    fn each_distinct_watch_error_is_logged_once_a_minute() {
        let progress = running(Duration::from_secs(60));
        let logged_at = |text: &str| {
            progress
                .lock()
                .errors
                .as_ref()
                .unwrap()
                .logged
                .get(text)
                .copied()
        };
        progress.watch_failed(&"no CRD", Some(404));
        let first = logged_at("no CRD").unwrap();
        progress.watch_failed(&"secrets forbidden", Some(403));
        assert!(
            logged_at("secrets forbidden").is_some(),
            "a second error is logged too"
        );
        std::thread::sleep(Duration::from_millis(5));
        progress.watch_failed(&"no CRD", Some(404));
        assert_eq!(
            logged_at("no CRD"),
            Some(first),
            "a repeat within a minute is not"
        );
    }

    #[test]
    fn an_overdue_token_or_a_hung_reconcile_is_dead() {
        let progress = running(Duration::from_secs(60));
        progress.synced();
        let now = Utc::now();
        progress.reconcile_finished("shop/a", Some(now - chrono::TimeDelta::seconds(30)));
        assert!(progress.liveness().is_ok());
        progress.reconcile_finished("shop/a", Some(now - chrono::TimeDelta::seconds(90)));
        assert!(progress.liveness().is_err());
        progress.forget("shop/a");
        assert!(progress.liveness().is_ok());

        let guard = progress.reconcile_started("shop/b");
        assert_eq!(progress.in_flight(), 1);
        let later = Instant::now() + Duration::from_secs(61);
        assert!(progress.liveness_at(later, now).is_err());
        drop(guard);
        assert!(progress.liveness_at(later, now).is_ok());
    }
}
