//! The rotation invariant, owned by one module: a refresh token is presented at most once, and a
//! new one is persisted before anything else happens.
//!
//! [`protocol`] decides, without I/O; this module carries its decisions out against the
//! Kubernetes API and is the only code that writes the state Secret ([`ChainStore`]). What the
//! process knows beyond the state Secret, per chain, is kept in [`Fencing`].

pub mod protocol;

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::Error;
use super::cache::Caches;
use super::secrets::{self, controlled_by};
use super::state::TokenState;
use crate::api::OAuthToken;
use protocol::{
    Answer, Claim, Done, Fingerprint, Input, Ledger, Loaded, Memory, Now, Output, Process, Record,
    Refresh, Timing,
};

/// What this process knows beyond the state Secrets: its name in claims, its clock, per chain
/// what the protocol remembers ([`Memory`]), and whether it may start a refresh at all.
pub struct Fencing {
    process: Process,
    /// Zero of this process's monotonic clock.
    epoch: Instant,
    /// Keyed by OAuthToken UID; only chains with something to remember have an entry.
    memories: Mutex<HashMap<String, Remembered>>,
    /// Cleared when the Lease is lost or shutdown begins: in-flight work finishes, nothing new
    /// starts.
    may_refresh: AtomicBool,
}

struct Remembered {
    /// The OAuthToken, for writes made after its reconciles stopped (shutdown).
    token: OAuthToken,
    memory: Memory<TokenState>,
}

impl Fencing {
    /// `identity` names the process (its pod); a random nonce is added so that a restarted
    /// process never takes its predecessor's claim for its own.
    pub fn new(identity: &str, request_timeout: Duration) -> Fencing {
        Fencing {
            process: Process {
                holder: format!("{identity}/{:08x}", rand::random::<u32>()),
                timing: Timing::new(request_timeout),
            },
            epoch: Instant::now(),
            memories: Mutex::default(),
            may_refresh: AtomicBool::new(true),
        }
    }

    pub fn holder(&self) -> &str {
        &self.process.holder
    }

    pub fn timing(&self) -> Timing {
        self.process.timing
    }

    /// Stops new refreshes (Lease lost, shutdown); in-flight ones finish and are committed.
    pub fn stop_refreshing(&self) {
        self.may_refresh.store(false, Ordering::Release);
    }

    pub fn resume_refreshing(&self) {
        self.may_refresh.store(true, Ordering::Release);
    }

    pub fn may_refresh(&self) -> bool {
        self.may_refresh.load(Ordering::Acquire)
    }

    pub fn now(&self) -> Now {
        Now {
            mono: self.epoch.elapsed(),
            wall: chrono::Utc::now(),
        }
    }

    /// A point of the protocol's monotonic clock as a tokio instant.
    pub fn instant_at(&self, mono: Duration) -> Instant {
        self.epoch
            .checked_add(mono)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365))
    }

    fn recall(&self, uid: &str) -> Memory<TokenState> {
        lock(&self.memories)
            .get(uid)
            .map(|r| r.memory.clone())
            .unwrap_or_default()
    }

    /// Keeps what the protocol remembers of a chain where a stopping process finds it; a
    /// memory with nothing in it takes no room (claim ids stay unique without it).
    fn keep(&self, uid: &str, token: &OAuthToken, memory: &Memory<TokenState>) {
        let mut memories = lock(&self.memories);
        if memory.is_idle() {
            memories.remove(uid);
        } else {
            memories.insert(
                uid.to_string(),
                Remembered {
                    token: token.clone(),
                    memory: memory.clone(),
                },
            );
        }
    }

    /// Forgets a deleted OAuthToken's chain.
    pub fn forget(&self, uid: &str) {
        lock(&self.memories).remove(uid);
    }

    /// Whether a refresh of OAuthToken `uid` would import `offered` (see [`protocol::imports`]).
    pub fn imports(
        &self,
        uid: &str,
        stored: &Ledger,
        imported_in_status: Option<&Fingerprint>,
        offered: &Fingerprint,
    ) -> bool {
        let memories = lock(&self.memories);
        match memories.get(uid) {
            Some(r) => protocol::imports(&r.memory, stored, imported_in_status, offered),
            None => protocol::imports(
                &Memory::<TokenState>::default(),
                stored,
                imported_in_status,
                offered,
            ),
        }
    }

    /// Whether this process owes the state Secret of OAuthToken `uid` a write.
    pub fn owes(&self, uid: &str) -> bool {
        lock(&self.memories)
            .get(uid)
            .is_some_and(|r| r.memory.owes_a_write())
    }

    /// Whether some state Secret is owed a write (a successor, or the end of a claim).
    pub fn owes_writes(&self) -> bool {
        lock(&self.memories)
            .values()
            .any(|r| r.memory.owes_a_write())
    }

    /// Until when a successor held only in memory may still be written: a stopping process
    /// keeps trying that long, and does not give up the Lease before.
    pub fn successors_until(&self) -> Option<Instant> {
        lock(&self.memories)
            .values()
            .filter_map(|r| r.memory.successor_window_end())
            .max()
            .map(|end| self.instant_at(end))
    }

    fn owing(&self) -> Vec<(String, OAuthToken)> {
        lock(&self.memories)
            .iter()
            .filter(|(_, r)| r.memory.owes_a_write())
            .map(|(uid, r)| (uid.clone(), r.token.clone()))
            .collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Record for TokenState {
    fn ledger(&self) -> Ledger {
        Ledger {
            token: self.refresh_fingerprint(),
            claim: self.claim.clone(),
            rejected: self.rejected_fingerprint.clone(),
            rotates: self.rotates,
            binding: self.binding.clone(),
            imported: self.imported_fingerprint.clone(),
            serving_until: self.access.as_ref().map(|a| a.expires_at),
        }
    }

    fn with_claim(&self, claim: Option<Claim>) -> Self {
        TokenState {
            claim,
            ..self.clone()
        }
    }

    fn with_rejected(&self, rejected: Fingerprint) -> Self {
        TokenState {
            rejected_fingerprint: Some(rejected),
            ..self.clone()
        }
    }
}

/// Runs `request` only if it can finish, or time out after `request_timeout`, before
/// `deadline`; `None` when it was not sent or its answer came too late. The check is made in the
/// same poll that first drives the request, so a process frozen in between cannot send late.
pub async fn send_within<T>(
    deadline: Instant,
    request_timeout: Duration,
    request: impl Future<Output = T>,
) -> Sent<T> {
    let mut request = pin!(request);
    let mut started = false;
    let guarded = std::future::poll_fn(|cx| {
        if !started {
            if Instant::now() + request_timeout > deadline {
                return Poll::Ready(Sent::NotSent);
            }
            started = true;
        }
        request.as_mut().poll(cx).map(Sent::Answered)
    });
    match tokio::time::timeout_at(deadline, guarded).await {
        Ok(sent) => sent,
        Err(_) => Sent::TooLate,
    }
}

/// What became of a request sent under a claim.
pub enum Sent<T> {
    Answered(T),
    /// Nothing was sent: the claim would have run out first.
    NotSent,
    /// Sent, but no answer in time: lost.
    TooLate,
}

/// One OAuthToken's state Secret: the only writer of it.
pub struct ChainStore<'a> {
    secrets: &'a Api<Secret>,
    token: &'a OAuthToken,
    caches: &'a Caches,
    /// The state Secret as last read or written: its resourceVersion is the precondition of
    /// the next write.
    secret: Option<Secret>,
}

/// Why the state Secret cannot be used.
pub struct ForeignStateSecret;

impl<'a> ChainStore<'a> {
    /// Reads the state Secret (from the cache when there is one: every write is
    /// compare-and-swap, so a stale read costs a retry, never the chain). `Ok(Err(_))` when a
    /// Secret of that name exists but belongs to someone else.
    pub async fn load(
        secrets: &'a Api<Secret>,
        token: &'a OAuthToken,
        caches: &'a Caches,
    ) -> Result<Result<ChainStore<'a>, ForeignStateSecret>, Error> {
        let secret = caches
            .owned_secret(
                secrets,
                &token.namespace().unwrap_or_default(),
                &token.state_secret_name(),
            )
            .await
            .map_err(Error::ReadInputs)?;
        if let Some(existing) = &secret
            && !controlled_by(existing, token)
        {
            return Ok(Err(ForeignStateSecret));
        }
        Ok(Ok(ChainStore {
            secrets,
            token,
            caches,
            secret,
        }))
    }

    /// The state as loaded.
    pub fn state(&self) -> Option<TokenState> {
        self.secret.as_ref().map(TokenState::from_secret)
    }

    /// Stores `next` if nobody changed the state since it was read or written.
    async fn write(&mut self, next: &TokenState) -> Result<TokenState, WriteError> {
        match secrets::write_state(
            self.secrets,
            self.token,
            self.secret.as_ref(),
            &next.to_data(),
        )
        .await
        {
            Ok(written) => {
                self.caches.wrote_secret(&written);
                let stored = TokenState::from_secret(&written);
                self.secret = Some(written);
                Ok(stored)
            }
            Err(error) if secrets::is_conflict(&error) => Err(WriteError::Conflict),
            Err(error) => Err(WriteError::Failed(error)),
        }
    }

    /// Reads the state afresh from the API. `Err(None)`: the Secret of that name is not ours.
    async fn reload(&mut self) -> Result<Option<TokenState>, Option<kube::Error>> {
        let fresh = self
            .secrets
            .get_opt(&self.token.state_secret_name())
            .await
            .map_err(Some)?;
        if let Some(secret) = &fresh
            && !controlled_by(secret, self.token)
        {
            error!("the state Secret was replaced by one this OAuthToken does not control");
            return Err(None);
        }
        let state = fresh.as_ref().map(TokenState::from_secret);
        self.secret = fresh;
        Ok(state)
    }
}

enum WriteError {
    Conflict,
    Failed(kube::Error),
}

/// How a refresh of the chain ended, and the last Kubernetes API error on the way.
pub struct Ended {
    pub done: Done<TokenState>,
    pub api_error: Option<kube::Error>,
}

/// The requests a refresh makes outside the state Secret.
pub trait Requests {
    /// Presents the refresh token of `state`, only if the request can end before `deadline`
    /// (see [`send_within`]), and says what became of it.
    fn present(
        &mut self,
        state: &TokenState,
        deadline: Instant,
    ) -> impl Future<Output = Answer<TokenState>> + Send;
    /// Records in status, under a precondition, that a refresh token with this fingerprint was
    /// imported; whether it was recorded.
    fn record_import(&mut self, fingerprint: &str) -> impl Future<Output = bool> + Send;
}

/// For a process that only pays what it owes: it presents nothing.
struct NoRequests;

impl Requests for NoRequests {
    async fn present(&mut self, _: &TokenState, _: Instant) -> Answer<TokenState> {
        Answer::NotSent
    }

    async fn record_import(&mut self, _: &str) -> bool {
        false
    }
}

/// Runs one refresh of the chain: the protocol decides, this carries it out.
pub async fn refresh(
    store: &mut ChainStore<'_>,
    fencing: &Fencing,
    loaded: Loaded<TokenState>,
    requests: &mut impl Requests,
) -> Ended {
    let uid = store.token.uid().unwrap_or_default();
    let mut memory = fencing.recall(&uid);
    let mut machine = Refresh::new();
    let mut api_error = None;
    let mut input = Input::Loaded(loaded);
    let done = loop {
        let output = machine.step(&fencing.process, &mut memory, fencing.now(), input);
        // Kept after every step: should this reconcile be dropped mid-write (a stopping
        // process that stopped waiting), a successor it holds is still found and written.
        fencing.keep(&uid, store.token, &memory);
        input = match output {
            Output::WriteBy(_, by) if fencing.now().mono >= by => {
                warn!(
                    "too late to store the new refresh token: others may present the old one now"
                );
                Input::Failed
            }
            Output::Write(next) | Output::WriteBy(next, _) => match store.write(&next).await {
                Ok(stored) => Input::Stored(stored),
                Err(WriteError::Conflict) => {
                    debug!("the state Secret changed since it was read");
                    Input::Conflict
                }
                Err(WriteError::Failed(error)) => {
                    warn!(%error, "writing the state Secret failed");
                    api_error = Some(error);
                    Input::Failed
                }
            },
            Output::Reload => {
                debug!("reading the state Secret afresh");
                match store.reload().await {
                    Ok(fresh) => Input::Reloaded(fresh),
                    Err(error) => {
                        if let Some(error) = &error {
                            warn!(%error, "reading the state Secret failed");
                        }
                        api_error = error.or(api_error);
                        Input::Failed
                    }
                }
            }
            Output::RecordImport(fingerprint) => {
                if requests.record_import(&fingerprint).await {
                    Input::ImportRecorded
                } else {
                    Input::ImportNotRecorded
                }
            }
            Output::Present { state, deadline } => {
                let attempt = state.claim.as_ref().map(|c| c.attempt).unwrap_or(1);
                debug!(attempt, "presenting the refresh token");
                Input::Answer(requests.present(&state, fencing.instant_at(deadline)).await)
            }
            Output::Done(done) => break done,
        };
    };
    log_end(&done);
    Ended { done, api_error }
}

fn log_end(done: &Done<TokenState>) {
    match done {
        Done::Committed { state } => info!(
            has_refresh_token = state.refresh_token.is_some(),
            "persisted the token state"
        ),
        Done::Parked { .. } => warn!(
            "the new refresh token could not be stored; it is kept in memory and written before anything else"
        ),
        Done::Dropped => error!(
            "the new refresh token could not be stored before others may present the old one; it is given up and the old one is never presented by this process"
        ),
        Done::Superseded { .. } => {
            warn!(
                "another process stored a different refresh token meanwhile; this answer is discarded"
            )
        }
        _ => {}
    }
}

/// Writes what this process owes the state Secret of one OAuthToken (a successor, or the end of
/// a claim), reading it from the API. Returns whether nothing is owed any more.
async fn settle(client: &kube::Client, fencing: &Fencing, token: &OAuthToken) -> bool {
    let namespace = token.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    // Straight to the API: the watches are gone by now.
    let no_caches = Caches::default();
    let Ok(Ok(mut store)) = ChainStore::load(&secrets, token, &no_caches).await else {
        return false;
    };
    settle_with(&mut store, fencing).await.is_ok()
}

/// Pays what this process owes the chain in `store`, and nothing else: nothing is claimed or
/// presented. An error when something is still owed.
pub async fn settle_with(store: &mut ChainStore<'_>, fencing: &Fencing) -> Result<(), Error> {
    let uid = store.token.uid().unwrap_or_default();
    if !fencing.owes(&uid) {
        return Ok(());
    }
    info!("writing what this process owes the state Secret");
    let stored = store.state();
    let ledger = stored.as_ref().map(Record::ledger).unwrap_or_default();
    let loaded = Loaded {
        binding: ledger.binding.clone().unwrap_or(protocol::Binding {
            origin: String::new(),
            client_id: String::new(),
        }),
        imported_in_status: ledger.imported.clone(),
        stored,
        offer: None,
        due: false,
        may_refresh: false,
        token_reported_unusable: false,
    };
    let ended = refresh(store, fencing, loaded, &mut NoRequests).await;
    if !fencing.owes(&uid) {
        return Ok(());
    }
    Err(ended
        .api_error
        .map_or(Error::StateConflict, Error::PersistState))
}

/// Writes everything this process owes state Secrets, for a stopping process. Returns the
/// OAuthTokens (namespace/name) still owed a write.
pub async fn settle_all(client: &kube::Client, fencing: &Fencing) -> Vec<String> {
    let mut left = Vec::new();
    for (_, token) in fencing.owing() {
        if !settle(client, fencing, &token).await {
            left.push(format!(
                "{}/{}",
                token.namespace().unwrap_or_default(),
                token.name_any()
            ));
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn nothing_is_sent_when_the_claim_would_run_out_first() {
        let sent = std::sync::atomic::AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        // A process frozen until just before the deadline must not send.
        tokio::time::advance(Duration::from_secs(6)).await;
        let outcome = send_within(deadline, Duration::from_secs(5), async {
            sent.store(true, Ordering::SeqCst);
        })
        .await;
        assert!(matches!(outcome, Sent::NotSent));
        assert!(!sent.load(Ordering::SeqCst));

        let deadline = Instant::now() + Duration::from_secs(10);
        let outcome = send_within(
            deadline,
            Duration::from_secs(5),
            tokio::time::sleep(Duration::from_secs(30)),
        )
        .await;
        assert!(matches!(outcome, Sent::TooLate));
        let outcome = send_within(
            Instant::now() + Duration::from_secs(10),
            Duration::from_secs(5),
            async { 7 },
        )
        .await;
        assert!(matches!(outcome, Sent::Answered(7)));
    }
}
