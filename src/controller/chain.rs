//! The rotation invariant, owned by one type: a refresh token is presented at most once, and a
//! new one is persisted before anything else happens.
//!
//! The Lease keeps replicas from working at the same time, but a frozen leader, a partition or
//! a second operator without leader election defeat it. So every presentation is fenced by the
//! chain itself: a *claim* is written to the state Secret under a resourceVersion precondition
//! before the request is sent ([`Chain::claim`]), and the answer is committed against that
//! claim ([`Chain::commit`]). A conflicting write is compared, never overwritten blindly.
//!
//! A process that finds another's claim waits it out, measured on its own monotonic clock from
//! when it first saw the claim, so clock skew between nodes cannot shorten the wait. A claim
//! that expired without a commit means an answer was lost: the provider may or may not have
//! rotated, so the token may be presented once more, never a third time.

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
use super::state::{Binding, Claim, TokenState};
use crate::api::OAuthToken;
use crate::api::conditions::reason;

/// A refresh token whose answers were lost this many times is not presented again: the
/// provider may have rotated it every time, and with reuse detection one more try revokes the
/// grant for sure.
pub const MAX_UNANSWERED_PRESENTATIONS: u32 = 2;
/// Time kept free at the end of a claim to commit the answer before the claim runs out.
const COMMIT_MARGIN: Duration = Duration::from_secs(5);
/// How often a state write is tried within one reconcile before the new state is parked in
/// memory for the next attempt.
const WRITE_ATTEMPTS: u32 = 5;

/// What this process knows beyond the state Secrets: its identity for claims, when it first
/// saw other processes' claims, new states it could not write yet, and whether it may start a
/// refresh at all.
pub struct Fencing {
    holder: String,
    claim_ttl: Duration,
    /// The claims of other processes, keyed by OAuthToken UID, with when this process first
    /// saw each.
    seen: Mutex<HashMap<String, (Claim, Instant)>>,
    /// New states whose write failed, keyed by OAuthToken UID. They hold the newest link of a
    /// chain and are written before anything else.
    parked: Mutex<HashMap<String, Parked>>,
    /// Cleared when the Lease is lost or shutdown begins: in-flight work finishes, nothing new
    /// starts.
    may_refresh: AtomicBool,
}

/// A state that could not be written yet.
#[derive(Clone)]
pub struct Parked {
    /// The OAuthToken it belongs to (owner reference, namespace and name for the write).
    pub token: OAuthToken,
    /// Fingerprint of the refresh token that was presented to obtain it.
    pub presented: Option<String>,
    pub state: TokenState,
}

impl Fencing {
    /// `identity` names the process (its pod); a random nonce is added so that a restarted
    /// process never mistakes its predecessor's claim for its own.
    pub fn new(identity: &str, request_timeout: Duration) -> Fencing {
        Fencing {
            holder: format!("{identity}/{:08x}", rand::random::<u32>()),
            claim_ttl: claim_ttl(request_timeout),
            seen: Mutex::default(),
            parked: Mutex::default(),
            may_refresh: AtomicBool::new(true),
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// How long a claim lasts.
    pub fn claim_ttl(&self) -> Duration {
        self.claim_ttl
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

    fn park(&self, uid: &str, parked: Parked) {
        lock(&self.parked).insert(uid.to_string(), parked);
    }

    pub fn take_parked(&self, uid: &str) -> Option<Parked> {
        lock(&self.parked).remove(uid)
    }

    /// UIDs of the OAuthTokens whose newest state exists only in memory.
    pub fn parked_uids(&self) -> Vec<String> {
        lock(&self.parked).keys().cloned().collect()
    }

    pub fn has_parked(&self) -> bool {
        !lock(&self.parked).is_empty()
    }

    /// How long ago this process first saw `claim` on the OAuthToken `uid`. A claim of this
    /// very process is never in flight outside the reconcile that made it, so it counts as
    /// expired.
    fn claim_age(&self, uid: &str, claim: &Claim) -> Duration {
        if claim.holder == self.holder {
            return Duration::MAX;
        }
        let mut seen = lock(&self.seen);
        match seen.get(uid) {
            Some((known, since)) if known == claim => since.elapsed(),
            _ => {
                seen.insert(uid.to_string(), (claim.clone(), Instant::now()));
                Duration::ZERO
            }
        }
    }

    fn forget_claim(&self, uid: &str) {
        lock(&self.seen).remove(uid);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A claim outlives the longest request by enough to commit its answer.
pub fn claim_ttl(request_timeout: Duration) -> Duration {
    request_timeout + 2 * COMMIT_MARGIN
}

/// Whether the chain's refresh token may be presented now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Present it; `attempt` counts the presentations whose answer is unknown, this one
    /// included.
    Usable { attempt: u32 },
    /// Another process may be presenting it: look again after `remaining`.
    Claimed { remaining: Duration },
    /// It must not be presented again; a human must authorize anew.
    Dead {
        reason: &'static str,
        message: String,
    },
}

/// Decides whether the refresh token in `state` may be presented to `binding`. Pure:
/// `claim_age` is how long this process has known the recorded claim.
pub fn assess(state: &TokenState, binding: &Binding, claim_age: Option<Duration>) -> Verdict {
    let Some(current) = state.refresh_fingerprint() else {
        return Verdict::Usable { attempt: 1 };
    };
    if let Some(bound) = &state.binding
        && bound != binding
    {
        return Verdict::Dead {
            reason: reason::CHAIN_BINDING_CHANGED,
            message: format!(
                "The refresh token was issued for client {:?} at {} but the spec now names client {:?} at {}; it is only ever sent where it came from. Put a refresh token authorized for the new client and endpoint in the import Secret",
                bound.client_id, bound.origin, binding.client_id, binding.origin
            ),
        };
    }
    if state.rejected_fingerprint.as_deref() == Some(current.as_str()) {
        return Verdict::Dead {
            reason: reason::INVALID_GRANT,
            message: "The provider rejected the refresh token (invalid_grant); it is not presented again. A human must authorize again and put the new refresh token in the import Secret".to_string(),
        };
    }
    let Some(claim) = &state.claim else {
        return Verdict::Usable { attempt: 1 };
    };
    // An unreadable claim has no fingerprint and is taken to concern the current token.
    if !claim.fingerprint.is_empty() && claim.fingerprint != current {
        return Verdict::Usable { attempt: 1 };
    }
    let ttl = Duration::from_secs(claim.ttl_seconds);
    let age = claim_age.unwrap_or(Duration::ZERO);
    if !claim.lost && age < ttl {
        return Verdict::Claimed {
            remaining: ttl - age,
        };
    }
    // The claim ran out, or its holder said the answer was lost: the provider may have rotated.
    let rotation_impossible = state.rotates == Some(false);
    if claim.attempt >= MAX_UNANSWERED_PRESENTATIONS && !rotation_impossible {
        return Verdict::Dead {
            reason: reason::ANSWER_LOST,
            message: format!(
                "The answers to the last {} presentations of the refresh token were lost (timeout or a stopped process); the provider may have rotated it, so it is not presented again. Put a new refresh token in the import Secret",
                claim.attempt
            ),
        };
    }
    Verdict::Usable {
        attempt: claim.attempt + 1,
    }
}

/// How a commit ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// Our state is stored.
    Stored,
    /// Another process had already stored the same refresh token.
    AlreadyThere,
    /// Another process stored a different refresh token after the one we presented: our
    /// answer is discarded and theirs is used.
    Superseded,
}

/// A claim this process holds.
pub struct HeldClaim {
    claim: Claim,
    /// The claim ends here on this process's clock (measured from before the claim was sent).
    ends: Instant,
    /// What was recorded before the claim, restored when the request is never sent.
    previous: Option<Claim>,
}

impl HeldClaim {
    pub fn attempt(&self) -> u32 {
        self.claim.attempt
    }

    pub fn fingerprint(&self) -> &str {
        &self.claim.fingerprint
    }

    /// The latest moment an answer may arrive and still be committed within the claim.
    pub fn answer_deadline(&self) -> Instant {
        self.ends - COMMIT_MARGIN
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

/// One OAuthToken's state Secret as this reconcile knows it.
pub struct Chain<'a> {
    secrets: &'a Api<Secret>,
    token: &'a OAuthToken,
    uid: String,
    fencing: &'a Fencing,
    caches: &'a Caches,
    /// The state Secret as last read or written: its resourceVersion is the precondition of
    /// the next write.
    secret: Option<Secret>,
    pub state: TokenState,
}

/// Why the state Secret cannot be used.
pub struct ForeignStateSecret;

impl<'a> Chain<'a> {
    /// Reads the state Secret (from the cache when there is one: every write is
    /// compare-and-swap, so a stale read costs a retry, never the chain). `Ok(Err(_))` when a
    /// Secret of that name exists but belongs to someone else.
    pub async fn load(
        secrets: &'a Api<Secret>,
        token: &'a OAuthToken,
        fencing: &'a Fencing,
        caches: &'a Caches,
    ) -> Result<Result<Chain<'a>, ForeignStateSecret>, Error> {
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
        let state = secret
            .as_ref()
            .map(TokenState::from_secret)
            .unwrap_or_default();
        Ok(Ok(Chain {
            secrets,
            token,
            uid: token.uid().unwrap_or_default(),
            fencing,
            caches,
            secret,
            state,
        }))
    }

    /// Whether a state Secret exists.
    pub fn exists(&self) -> bool {
        self.secret.is_some()
    }

    /// Writes a state that this process obtained earlier but could not store; it is the newest
    /// link of the chain, so it goes first, before any spec or conflict check.
    pub async fn write_parked(&mut self, parked: Parked) -> Result<Committed, Error> {
        info!("writing a token state whose earlier write failed");
        let presented = parked.presented.clone();
        self.commit(presented.as_deref(), parked.state).await
    }

    /// What [`assess`] says about the current refresh token.
    pub fn verdict(&self, binding: &Binding) -> Verdict {
        let age = match &self.state.claim {
            Some(claim) => Some(self.fencing.claim_age(&self.uid, claim)),
            None => {
                self.fencing.forget_claim(&self.uid);
                None
            }
        };
        assess(&self.state, binding, age)
    }

    /// Replaces the state with a freshly imported refresh token bound to `binding`, expiring at
    /// `refresh_token_expires_at` when known. A concurrent change is not overwritten: the
    /// reconcile starts over.
    pub async fn import(
        &mut self,
        refresh_token: secrecy::SecretString,
        fingerprint: String,
        import_secret_version: Option<String>,
        binding: Binding,
        refresh_token_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), Error> {
        let mut next = self.state.clone();
        next.refresh_token = Some(refresh_token);
        next.refresh_token_expires_at = refresh_token_expires_at;
        next.imported_fingerprint = Some(fingerprint);
        next.import_secret_version = import_secret_version;
        next.binding = Some(binding);
        next.claim = None;
        next.rejected_fingerprint = None;
        next.rotates = None;
        self.write_once(next).await
    }

    /// Records the claim to present the current refresh token. `Err(StateConflict)` when
    /// another process changed the state first.
    pub async fn claim(&mut self, attempt: u32) -> Result<HeldClaim, Error> {
        let fingerprint = self.state.refresh_fingerprint().unwrap_or_default();
        let claim = Claim {
            holder: self.fencing.holder.clone(),
            fingerprint,
            ttl_seconds: self.fencing.claim_ttl.as_secs(),
            attempt,
            lost: false,
        };
        // Measured before the write is sent: whoever sees the claim starts counting later.
        let start = Instant::now();
        let previous = self.state.claim.clone();
        let mut next = self.state.clone();
        next.claim = Some(claim.clone());
        self.write_once(next).await?;
        debug!(attempt, "claimed the refresh token");
        Ok(HeldClaim {
            claim,
            ends: start + self.fencing.claim_ttl,
            previous,
        })
    }

    /// The request was never sent: put back what was recorded before the claim.
    pub async fn release_unsent(&mut self, held: HeldClaim) {
        let previous = held.previous.clone();
        self.release(&held, |state| state.claim = previous.clone())
            .await;
    }

    /// The provider answered with an error: the token was not used up, or (`rejected`) it is
    /// dead and never presented again.
    pub async fn release_answered(&mut self, held: HeldClaim, rejected: bool) {
        let fingerprint = held.claim.fingerprint.clone();
        self.release(&held, |state| {
            state.claim = None;
            if rejected {
                state.rejected_fingerprint = Some(fingerprint.clone());
            }
        })
        .await;
    }

    /// No answer came: the provider may have rotated. The claim stays, marked lost, so that
    /// nobody waits for it and the next presentation counts as the last one.
    pub async fn release_lost(&mut self, held: HeldClaim) {
        self.release(&held, |state| {
            if let Some(claim) = &mut state.claim {
                claim.lost = true;
            }
        })
        .await;
    }

    /// Changes the state while our claim is still the recorded one. A failure is only logged:
    /// a claim left behind runs out by itself and then counts as a lost answer, which is the
    /// safe reading.
    async fn release(&mut self, held: &HeldClaim, change: impl Fn(&mut TokenState)) {
        for _ in 0..WRITE_ATTEMPTS {
            if self.state.claim.as_ref() != Some(&held.claim) {
                debug!("the claim was replaced meanwhile; leaving the state as it is");
                return;
            }
            let mut next = self.state.clone();
            change(&mut next);
            match self.write_once(next).await {
                Ok(()) => return,
                Err(Error::StateConflict) => {
                    if self.reread().await.is_err() {
                        break;
                    }
                }
                Err(error) => {
                    warn!(%error, "releasing the claim failed; it will run out by itself");
                    return;
                }
            }
        }
        warn!("could not release the claim; it will run out by itself");
    }

    /// Stores `next`, obtained by presenting the refresh token with fingerprint `presented`
    /// (`None` for grants without refresh tokens). On a conflict the stored state is compared
    /// instead of overwritten. When the write keeps failing, `next` is parked in memory and
    /// written before anything else later.
    pub async fn commit(
        &mut self,
        presented: Option<&str>,
        next: TokenState,
    ) -> Result<Committed, Error> {
        let ours = next.refresh_fingerprint();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = secrets::write_state(
                self.secrets,
                self.token,
                self.secret.as_ref(),
                &next.to_data(),
            )
            .await;
            match result {
                Ok(written) => {
                    self.caches.wrote_secret(&written);
                    self.secret = Some(written);
                    self.state = next;
                    info!(
                        has_refresh_token = self.state.refresh_token.is_some(),
                        "persisted the token state"
                    );
                    return Ok(Committed::Stored);
                }
                Err(error) if secrets::is_conflict(&error) && attempt < 2 * WRITE_ATTEMPTS => {
                    let fresh = match self.secrets.get_opt(&self.token.state_secret_name()).await {
                        Ok(fresh) => fresh,
                        Err(error) => {
                            return self.park_after(presented, next, error);
                        }
                    };
                    let Some(fresh) = fresh else {
                        // Deleted meanwhile: we hold the newest link, so create it again.
                        self.secret = None;
                        continue;
                    };
                    if !controlled_by(&fresh, self.token) {
                        error!(
                            "the state Secret was replaced by one this OAuthToken does not control"
                        );
                        return self.park_after(presented, next, error);
                    }
                    let stored = TokenState::from_secret(&fresh);
                    let stored_fingerprint = stored.refresh_fingerprint();
                    self.secret = Some(fresh);
                    match presented {
                        Some(_) if ours.is_some() && stored_fingerprint == ours => {
                            self.state = stored;
                            return Ok(Committed::AlreadyThere);
                        }
                        Some(presented) if stored_fingerprint.as_deref() != Some(presented) => {
                            warn!(
                                "another process stored a different refresh token meanwhile; this answer is discarded"
                            );
                            self.state = stored;
                            return Ok(Committed::Superseded);
                        }
                        // Still the token we presented, or a grant without refresh tokens:
                        // ours is the newer state.
                        _ => {
                            self.state = stored;
                        }
                    }
                }
                Err(error) if attempt >= WRITE_ATTEMPTS => {
                    return self.park_after(presented, next, error);
                }
                Err(error) => {
                    warn!(attempt, %error, "writing the state Secret failed, retrying");
                    tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
                }
            }
        }
    }

    fn park_after(
        &mut self,
        presented: Option<&str>,
        next: TokenState,
        error: kube::Error,
    ) -> Result<Committed, Error> {
        self.fencing.park(
            &self.uid,
            Parked {
                token: self.token.clone(),
                presented: presented.map(str::to_string),
                state: next,
            },
        );
        Err(Error::PersistState(error))
    }

    /// Stores `next` if nobody changed the state since it was read.
    pub async fn write_once(&mut self, next: TokenState) -> Result<(), Error> {
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
                self.secret = Some(written);
                self.state = next;
                Ok(())
            }
            Err(error) if secrets::is_conflict(&error) => Err(Error::StateConflict),
            Err(error) => Err(Error::PersistState(error)),
        }
    }

    async fn reread(&mut self) -> Result<(), Error> {
        let fresh = self
            .secrets
            .get_opt(&self.token.state_secret_name())
            .await
            .map_err(Error::ReadInputs)?;
        self.state = fresh
            .as_ref()
            .map(TokenState::from_secret)
            .unwrap_or_default();
        self.secret = fresh;
        Ok(())
    }
}

/// Writes every parked state, for a stopping process. Returns the OAuthTokens (namespace/name)
/// whose state could not be written.
pub async fn flush_parked(client: &kube::Client, fencing: &Fencing) -> Vec<String> {
    // Straight to the API: the watches are gone by now.
    let no_caches = Caches::default();
    let mut left = Vec::new();
    for uid in fencing.parked_uids() {
        let Some(parked) = fencing.take_parked(&uid) else {
            continue;
        };
        let token = parked.token.clone();
        let namespace = token.namespace().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let written = match Chain::load(&secrets, &token, fencing, &no_caches).await {
            Ok(Ok(mut chain)) => chain.write_parked(parked).await.is_ok(),
            Ok(Err(ForeignStateSecret)) => {
                fencing.park(&uid, parked);
                false
            }
            Err(_) => {
                fencing.park(&uid, parked);
                false
            }
        };
        if !written {
            left.push(format!("{namespace}/{}", token.name_any()));
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::state::fingerprint;
    use secrecy::SecretString;

    fn binding() -> Binding {
        Binding {
            origin: "https://idp.test".into(),
            client_id: "app".into(),
        }
    }

    fn chain_state() -> TokenState {
        TokenState {
            refresh_token: Some(SecretString::from("rt-1")),
            binding: Some(binding()),
            ..TokenState::default()
        }
    }

    fn claim(attempt: u32, lost: bool) -> Claim {
        Claim {
            holder: "other/1".into(),
            fingerprint: fingerprint("rt-1"),
            ttl_seconds: 40,
            attempt,
            lost,
        }
    }

    #[test]
    fn a_fresh_chain_is_usable_once() {
        assert_eq!(
            assess(&chain_state(), &binding(), None),
            Verdict::Usable { attempt: 1 }
        );
    }

    #[test]
    fn a_live_claim_is_waited_out_on_our_own_clock() {
        let mut state = chain_state();
        state.claim = Some(claim(1, false));
        assert_eq!(
            assess(&state, &binding(), Some(Duration::ZERO)),
            Verdict::Claimed {
                remaining: Duration::from_secs(40)
            }
        );
        assert_eq!(
            assess(&state, &binding(), Some(Duration::from_secs(39))),
            Verdict::Claimed {
                remaining: Duration::from_secs(1)
            }
        );
        // Run out: the answer was lost, one more presentation is allowed.
        assert_eq!(
            assess(&state, &binding(), Some(Duration::from_secs(40))),
            Verdict::Usable { attempt: 2 }
        );
    }

    #[test]
    fn a_token_whose_answer_was_lost_twice_is_never_presented_a_third_time() {
        let mut state = chain_state();
        state.claim = Some(claim(2, true));
        let verdict = assess(&state, &binding(), Some(Duration::ZERO));
        assert!(
            matches!(verdict, Verdict::Dead { reason, .. } if reason == reason::ANSWER_LOST),
            "{verdict:?}"
        );
        state.claim = Some(claim(2, false));
        assert!(matches!(
            assess(&state, &binding(), Some(Duration::from_secs(41))),
            Verdict::Dead { .. }
        ));
        // A provider known to keep its refresh tokens cannot have rotated it.
        state.rotates = Some(false);
        assert_eq!(
            assess(&state, &binding(), Some(Duration::from_secs(41))),
            Verdict::Usable { attempt: 3 }
        );
    }

    #[test]
    fn a_claim_on_an_older_token_does_not_count() {
        let mut state = chain_state();
        state.claim = Some(Claim {
            fingerprint: fingerprint("rt-0"),
            ..claim(2, true)
        });
        assert_eq!(
            assess(&state, &binding(), None),
            Verdict::Usable { attempt: 1 }
        );
    }

    #[test]
    fn an_unreadable_claim_counts_for_the_current_token() {
        let mut state = chain_state();
        state.claim = Some(Claim {
            fingerprint: String::new(),
            ..claim(1, true)
        });
        assert_eq!(
            assess(&state, &binding(), None),
            Verdict::Usable { attempt: 2 }
        );
    }

    #[test]
    fn a_rejected_token_is_dead() {
        let mut state = chain_state();
        state.rejected_fingerprint = Some(fingerprint("rt-1"));
        assert!(matches!(
            assess(&state, &binding(), None),
            Verdict::Dead { reason, .. } if reason == reason::INVALID_GRANT
        ));
    }

    #[test]
    fn the_chain_goes_only_where_it_came_from() {
        let state = chain_state();
        for other in [
            Binding {
                origin: "https://evil.test".into(),
                ..binding()
            },
            Binding {
                origin: "https://idp.test:8443".into(),
                ..binding()
            },
            Binding {
                client_id: "other".into(),
                ..binding()
            },
        ] {
            assert!(matches!(
                assess(&state, &other, None),
                Verdict::Dead { reason, .. } if reason == reason::CHAIN_BINDING_CHANGED
            ));
        }
    }

    #[test]
    fn claims_outlive_the_request_with_room_to_commit() {
        let timeout = Duration::from_secs(30);
        assert!(claim_ttl(timeout) > timeout + COMMIT_MARGIN);
    }

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
