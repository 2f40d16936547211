//! The chain protocol as a pure state machine: inputs in, outputs out, no I/O and no clock.
//!
//! One refresh of one rotating refresh-token chain is a [`Refresh`]. Its driver (the controller,
//! or the model checker in `tests/chain_model.rs`) feeds it what it loaded and what became of each
//! write and request, and carries out what it answers: write the state (always compare-and-swap
//! against the version last read or written), read it afresh, record an import in status, present
//! the refresh token before a deadline. What a process knows beyond the state Secret lives in its
//! [`Memory`] of that chain: when it first saw another process's claim, a successor or a release
//! it still owes the state Secret, a token it knows was rotated and whose successor it lost.
//!
//! The rules, in the order they apply:
//! - Whatever this process owes the chain is written before anything else.
//! - A new refresh token in the import Secret is imported, claimed and recorded in status before
//!   it is presented; a state Secret that is gone while status remembers an import is a lost
//!   chain, never a reason to import the used-up token again.
//! - A refresh token is presented only under a claim of this process, written with a
//!   precondition, and only if the request can end before the claim does.
//! - Another process's claim is waited out on this process's own clock, from when it first saw
//!   that very claim (claims carry an id, so a new claim that looks like an old one is new).
//! - A claim that ran out without a word from its holder may still be committed by it until the
//!   published access token stops serving; only then is the token presented once more.
//! - After an answer was lost, the token is presented once more and never again: whatever that
//!   presentation gets, a third one could revoke the grant.
//! - A successor is committed within its window and never over another process's claim on the
//!   token it replaces; when the window closes unwritten, it is given up and the token it replaced
//!   is never presented by this process again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::api::conditions::reason;

/// SHA-256 of a refresh token: how the protocol names one.
pub type Fingerprint = String;

/// A refresh token whose answers were lost this many times is not presented again: the
/// provider may have rotated it, and with reuse detection one more try revokes the grant.
pub const MAX_UNANSWERED_PRESENTATIONS: u32 = 2;
/// A successor whose write keeps meeting conflicts this many times in one reconcile is kept in
/// memory and tried again on the next.
const COMMIT_TRIES: u32 = 5;
/// How often a release is tried in one reconcile before it is kept in memory.
const RELEASE_TRIES: u32 = 3;

/// A point in time as one process sees it: its monotonic clock (time since it started), which
/// measures every wait, and the wall clock, which only meets timestamps stored by others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Now {
    pub mono: Duration,
    pub wall: DateTime<Utc>,
}

impl Now {
    /// Where `wall` falls on this process's monotonic clock (never before its start).
    fn mono_at(&self, wall: DateTime<Utc>) -> Duration {
        match (wall - self.wall).to_std() {
            Ok(ahead) => self.mono.saturating_add(ahead),
            Err(_) => self
                .mono
                .saturating_sub((self.wall - wall).to_std().unwrap_or(Duration::MAX)),
        }
    }
}

/// How long things take and how much room is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timing {
    /// The longest token request.
    pub request_timeout: Duration,
    /// How long a claim lasts: the request plus room to commit its answer (whole seconds, the
    /// unit a claim is stored in).
    pub claim_ttl: Duration,
    /// Kept free at the end of a claim to commit the answer.
    pub commit_margin: Duration,
    /// The published access token is taken to stop serving this long before it expires: a
    /// presentation and its commit fit in before consumers are left without a token.
    pub serving_margin: Duration,
    /// How far apart the wall clocks of two operator processes may be. The holder of a claim
    /// gives up its successor this much before others may present the token once more.
    pub clock_skew: Duration,
}

impl Timing {
    pub fn new(request_timeout: Duration) -> Timing {
        let commit_margin = Duration::from_secs(5);
        let claim_ttl =
            Duration::from_secs((request_timeout + 2 * commit_margin).as_secs_f64().ceil() as u64);
        Timing {
            request_timeout,
            claim_ttl,
            commit_margin,
            serving_margin: claim_ttl + request_timeout,
            clock_skew: Duration::from_secs(5),
        }
    }
}

/// The token endpoint origin and client a refresh-token chain belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Binding {
    /// Scheme, host and port of the token endpoint, e.g. `https://allegro.pl:443`.
    pub origin: String,
    pub client_id: String,
}

/// A process's claim to present one refresh token, stored with a precondition before the
/// request is sent, and kept after it as the record of what became of that presentation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    /// Unique per claim: an observer that sees another id sees another claim, however alike.
    /// Empty in claims written before ids existed.
    #[serde(default)]
    pub id: String,
    /// The process that presents the token (its identity and a per-process nonce).
    pub holder: String,
    /// Fingerprint of the refresh token presented.
    pub fingerprint: String,
    /// How long the claim lasts, measured by whoever sees it from when it first saw it.
    pub ttl_seconds: u64,
    /// 1 for a first presentation, 2 for the one more after a lost answer.
    pub attempt: u32,
    /// The holder got no answer: the provider may have rotated.
    #[serde(default)]
    pub lost: bool,
    /// The holder got a complete answer that issued nothing: the provider did not rotate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub answered: bool,
    /// The provider rotated, and the holder could not store the successor in time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub successor_lost: bool,
    /// When, by the holder's settings, the published access token stops serving: should the
    /// claim run out without a word, others present the token once more no earlier than this
    /// (nor than their own reckoning), for the holder keeps trying to store what it got until
    /// then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub once_more_at: Option<DateTime<Utc>>,
}

/// What became of the presentation a claim stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    InFlight,
    Lost,
    Answered,
    SuccessorLost,
}

impl Claim {
    fn fate(&self) -> Fate {
        if self.successor_lost {
            Fate::SuccessorLost
        } else if self.lost {
            Fate::Lost
        } else if self.answered {
            Fate::Answered
        } else {
            Fate::InFlight
        }
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_seconds)
    }

    /// Whether this claim is about `token` (an unreadable claim has no fingerprint and is taken
    /// to be about the current token).
    fn concerns(&self, token: &str) -> bool {
        self.fingerprint.is_empty() || self.fingerprint == token
    }
}

/// The part of the state Secret the protocol reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ledger {
    /// The newest refresh token of the chain.
    pub token: Option<Fingerprint>,
    pub claim: Option<Claim>,
    /// A refresh token the provider rejected; never presented again.
    pub rejected: Option<Fingerprint>,
    /// Whether the provider was seen to rotate; `Some(false)` exempts the chain from the limit
    /// on lost answers (a provider that keeps its refresh token cannot have rotated it).
    pub rotates: Option<bool>,
    pub binding: Option<Binding>,
    /// The last refresh token imported from the import Secret.
    pub imported: Option<Fingerprint>,
    /// When the published access token expires.
    pub serving_until: Option<DateTime<Utc>>,
}

/// A stored state as the protocol handles it: the controller's `TokenState`, or a bare
/// [`Ledger`] in the model.
pub trait Record: Clone + Default {
    fn ledger(&self) -> Ledger;
    fn with_claim(&self, claim: Option<Claim>) -> Self;
    fn with_rejected(&self, rejected: Fingerprint) -> Self;
}

impl Record for Ledger {
    fn ledger(&self) -> Ledger {
        self.clone()
    }

    fn with_claim(&self, claim: Option<Claim>) -> Self {
        Ledger {
            claim,
            ..self.clone()
        }
    }

    fn with_rejected(&self, rejected: Fingerprint) -> Self {
        Ledger {
            rejected: Some(rejected),
            ..self.clone()
        }
    }
}

/// One process: its name in claims and its timing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Process {
    /// Its identity plus a per-process nonce, so that a restarted process never takes its
    /// predecessor's claim for its own.
    pub holder: String,
    pub timing: Timing,
}

/// What one process knows about one chain beyond the state Secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Memory<S> {
    /// The claim of another process this one is waiting out, and when it first saw it.
    sighting: Option<(String, Duration)>,
    /// A write this process owes the state Secret.
    owed: Option<Owed<S>>,
    /// A refresh token this process knows the provider rotated, whose successor it could not
    /// store: presenting it again would be reuse.
    spent: Option<Fingerprint>,
    /// A refresh token this process recorded in status as imported and has not stored yet:
    /// status alone then says nothing about whether it was presented.
    recorded_import: Option<Fingerprint>,
    /// Claims made so far, for claim ids.
    claims: u64,
}

impl<S> Default for Memory<S> {
    fn default() -> Self {
        Memory {
            sighting: None,
            owed: None,
            spent: None,
            recorded_import: None,
            claims: 0,
        }
    }
}

impl<S> Memory<S> {
    /// Whether this process holds something the state Secret does not have yet.
    pub fn owes_a_write(&self) -> bool {
        self.owed.is_some()
    }

    /// Until when (monotonic) the successor this process holds may still be written.
    pub fn successor_window_end(&self) -> Option<Duration> {
        self.successor().map(|(_, end)| end)
    }

    /// The successor this process holds and has not stored, with the end of its window.
    pub fn successor(&self) -> Option<(&S, Duration)> {
        match &self.owed {
            Some(Owed {
                kind: OwedKind::Successor,
                state,
                window_end,
                ..
            }) => Some((state, *window_end)),
            _ => None,
        }
    }

    /// Whether nothing is remembered that a later reconcile needs, apart from the count of claims.
    pub fn is_idle(&self) -> bool {
        self.sighting.is_none()
            && self.owed.is_none()
            && self.spent.is_none()
            && self.recorded_import.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Owed<S> {
    state: S,
    kind: OwedKind,
    /// The claim the write belongs to.
    claim_id: String,
    /// The refresh token presented under that claim.
    presented: Fingerprint,
    /// Until when (monotonic) the write may be made.
    window_end: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum OwedKind {
    /// The state obtained by presenting `presented`.
    Successor,
    /// What became of the claim; written while the claim is still the recorded one.
    Release,
}

/// What the driver loaded before the refresh.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Loaded<S> {
    /// The state Secret's state, `None` when there is none (a cache may lag: every write is
    /// compare-and-swap).
    pub stored: Option<S>,
    /// A refresh token in the import Secret, when it was read.
    pub offer: Option<Offer<S>>,
    /// What status says was imported last.
    pub imported_in_status: Option<Fingerprint>,
    /// Where the spec sends the refresh token now.
    pub binding: Binding,
    /// Whether a refresh is due by the schedule.
    pub due: bool,
    /// Whether this process may start a refresh (leadership, shutdown).
    pub may_refresh: bool,
    /// A consumer said the published access token no longer serves: no reason left to wait for a
    /// silent holder's late commit.
    pub token_reported_unusable: bool,
}

/// A refresh token offered by the import Secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Offer<S> {
    pub fingerprint: Fingerprint,
    /// The state an import stores (the new token, its binding, no claim).
    pub state: S,
}

/// What became of a presentation, as the driver saw it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Answer<S> {
    /// Nothing left this process: the token was not used.
    NotSent,
    /// A complete answer that issued nothing; `rejected` when the provider declared the token
    /// dead (`invalid_grant`).
    Refused { rejected: bool },
    /// No usable answer: the provider may have rotated.
    Unknown,
    /// The provider issued tokens; `successor` is the state to store (its refresh token is the
    /// new one, or the presented one when the provider did not rotate).
    Issued { successor: S },
}

/// What the driver tells the machine.
#[derive(Clone, Debug)]
pub enum Input<S> {
    Loaded(Loaded<S>),
    /// The last write was stored, as this.
    Stored(S),
    /// The last write's precondition failed: someone changed the state (or deleted it).
    Conflict,
    /// The last write, or a read, failed for another reason.
    Failed,
    /// The state as read afresh from the API; `None`: there is no state Secret.
    Reloaded(Option<S>),
    ImportRecorded,
    ImportNotRecorded,
    Answer(Answer<S>),
}

/// What the machine asks the driver to do.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output<S> {
    /// Store this state with a precondition on the version last read or written (create it when
    /// there was none).
    Write(S),
    /// The same, for a successor: only if the write can be sent before this point of the
    /// monotonic clock, when others may present the token it replaces once more; otherwise
    /// answer [`Input::Failed`] without sending. (Sent in time, a write that lands late is
    /// harmless: compare-and-swap orders it against any claim made after the window.)
    WriteBy(S, Duration),
    /// Read the state afresh from the API.
    Reload,
    /// Record in status, with a precondition, that this refresh token was imported.
    RecordImport(Fingerprint),
    /// Present the refresh token of `state`, only if the request can end before `deadline`
    /// (monotonic); answer with [`Answer::NotSent`] otherwise.
    Present { state: S, deadline: Duration },
    /// The refresh is over.
    Done(Done<S>),
}

/// How a refresh ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Done<S> {
    /// No refresh token: nothing stored and nothing to import.
    NoToken,
    /// The state Secret is gone and status remembers an import: the import Secret holds a
    /// used-up refresh token.
    StateLost,
    /// Nothing presented: not due, or this process may not refresh now. `answer_unknown`: the
    /// last presentation's answer was lost, so the next is the one more.
    Idle { state: S, answer_unknown: bool },
    /// Another process presents the token, or may still store the answer it got: look again
    /// after `after`.
    Waiting {
        state: S,
        after: Duration,
        unconfirmed: Option<Unconfirmed>,
    },
    /// The refresh token must not be presented again: a human must authorize anew.
    Dead {
        state: S,
        reason: &'static str,
        message: String,
    },
    /// The new state (ours, or the same one stored by someone else) is stored.
    Committed { state: S },
    /// Presented; nothing was issued. `lost`: no answer came. `after_lost_answer`: this was the
    /// one more presentation after a lost answer.
    NotIssued {
        state: S,
        lost: bool,
        after_lost_answer: bool,
    },
    /// The request was not sent after all.
    NotSent { state: S },
    /// Another process stored another refresh token meanwhile; ours is discarded.
    Superseded { state: Option<S> },
    /// The state changed before our claim or import was stored: look again at once.
    Conflict,
    /// The claim or import could not be written; nothing was presented.
    NotStored,
    /// The successor could not be stored yet; it is kept in memory and written before anything
    /// else until `until` (monotonic).
    Parked { state: S, until: Duration },
    /// The successor could not be stored within its window and is given up.
    Dropped,
}

/// Why a refresh waits although another process's claim ran out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Unconfirmed {
    /// The process that presented the token and has not stored an answer.
    pub holder: String,
    /// When the token is presented once more unless that process stores the answer first.
    pub once_more_at: DateTime<Utc>,
}

/// A claim this process holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Held<S> {
    claim: Claim,
    /// What was recorded before, restored when nothing was sent.
    previous: Option<Claim>,
    /// The state as written with the claim.
    stored: S,
    /// The latest moment (monotonic) an answer may arrive.
    answer_deadline: Duration,
    /// Until when (monotonic) a successor may be written: the claim's end, or later while the
    /// published access token still serves (others wait that long before presenting once more).
    window_end: Duration,
}

/// How a claim ends when no successor came of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Release {
    /// Nothing was sent: what was recorded before the claim comes back.
    Unsent,
    /// A complete answer that issued nothing; `rejected`: the token is dead.
    Answered { rejected: bool },
    /// No answer.
    Lost,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Phase<S> {
    Start,
    /// Writing what this process owed (a release), or reading first whether its claim is there
    /// (`writing: false`); then the refresh goes on from the result.
    Settling {
        loaded: Box<Loaded<S>>,
        writing: bool,
    },
    /// Reading the state afresh: the cache says the chain is lost.
    Confirming {
        loaded: Box<Loaded<S>>,
    },
    /// Marking a token whose successor this process lost.
    MarkingSpent {
        state: S,
        message: String,
    },
    Claiming(Held<S>),
    /// Recording in status that the token about to be claimed was imported.
    RecordingImport {
        base: S,
        previous: Option<Claim>,
        attempt: u32,
    },
    Presenting(Held<S>),
    Releasing {
        held: Held<S>,
        release: Release,
        tries: u32,
    },
    Committing {
        held: Held<S>,
        successor: S,
        tries: u32,
    },
    Finished,
}

/// One refresh of one chain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Refresh<S> {
    phase: Phase<S>,
}

impl<S: Record> Default for Refresh<S> {
    fn default() -> Self {
        Refresh::new()
    }
}

impl<S: Record> Refresh<S> {
    pub fn new() -> Refresh<S> {
        Refresh {
            phase: Phase::Start,
        }
    }

    /// The successor this refresh is storing, with the end of its window.
    pub fn successor(&self) -> Option<(&S, Duration)> {
        match &self.phase {
            Phase::Committing {
                held, successor, ..
            } => Some((successor, held.window_end)),
            _ => None,
        }
    }

    /// Whether the refresh is over.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// Takes one input and answers what to do next. An input the current step does not expect
    /// ends the refresh as a conflict: the driver looks again from a fresh read.
    pub fn step(
        &mut self,
        process: &Process,
        memory: &mut Memory<S>,
        now: Now,
        input: Input<S>,
    ) -> Output<S> {
        let phase = std::mem::replace(&mut self.phase, Phase::Finished);
        let output = match (phase, input) {
            (Phase::Start, Input::Loaded(loaded)) => self.start(process, memory, now, loaded),
            (Phase::Settling { loaded, writing }, input) => {
                self.settled(process, memory, now, *loaded, writing, input)
            }
            (Phase::Confirming { mut loaded }, Input::Reloaded(fresh)) => {
                loaded.stored = fresh;
                self.decide(process, memory, now, *loaded, true)
            }
            (Phase::MarkingSpent { state, message }, input) => {
                let state = match input {
                    Input::Stored(stored) => stored,
                    _ => state,
                };
                dead(state, reason::SUCCESSOR_LOST, message)
            }
            (Phase::Claiming(held), input) => self.claimed(memory, held, input),
            (
                Phase::RecordingImport {
                    base,
                    previous,
                    attempt,
                },
                Input::ImportRecorded,
            ) => {
                memory.recorded_import = base.ledger().imported;
                self.claim(process, memory, now, base, previous, attempt)
            }
            (Phase::Presenting(held), Input::Answer(answer)) => {
                self.answered(memory, now, held, answer)
            }
            (
                Phase::Releasing {
                    held,
                    release,
                    tries,
                },
                input,
            ) => self.releasing(memory, held, release, tries, input),
            (
                Phase::Committing {
                    held,
                    successor,
                    tries,
                },
                input,
            ) => self.committing(memory, now, held, successor, tries, input),
            (_, _) => Output::Done(Done::Conflict),
        };
        if matches!(output, Output::Done(_)) {
            self.phase = Phase::Finished;
        }
        output
    }

    fn start(
        &mut self,
        process: &Process,
        memory: &mut Memory<S>,
        now: Now,
        loaded: Loaded<S>,
    ) -> Output<S> {
        // What this process owes the chain comes first.
        if let Some(owed) = memory.owed.clone() {
            let recorded = loaded.stored.as_ref().and_then(|s| s.ledger().claim);
            match owed.kind {
                OwedKind::Successor => {
                    let held = Held {
                        claim: Claim {
                            id: owed.claim_id.clone(),
                            holder: process.holder.clone(),
                            fingerprint: owed.presented.clone(),
                            ttl_seconds: 0,
                            attempt: 1,
                            lost: false,
                            answered: false,
                            successor_lost: false,
                            once_more_at: None,
                        },
                        previous: None,
                        stored: owed.state.clone(),
                        answer_deadline: Duration::ZERO,
                        window_end: owed.window_end,
                    };
                    return self.commit(memory, now, held, owed.state, 0, loaded.stored);
                }
                OwedKind::Release => {
                    if recorded.as_ref().map(|c| &c.id) == Some(&owed.claim_id) {
                        return self.settle(owed, loaded);
                    }
                    // The cache may not show the claim yet (a write whose answer was lost):
                    // only a fresh read tells.
                    self.phase = Phase::Settling {
                        loaded: Box::new(loaded),
                        writing: false,
                    };
                    return Output::Reload;
                }
            }
        }
        self.decide(process, memory, now, loaded, false)
    }

    /// Writes the release this process owes over `loaded.stored`, which shows its claim.
    fn settle(&mut self, owed: Owed<S>, loaded: Loaded<S>) -> Output<S> {
        let Some(stored) = &loaded.stored else {
            return Output::Done(Done::Conflict);
        };
        let release = owed.state.ledger().claim;
        let mut next = stored.with_claim(release);
        if let Some(rejected) = owed.state.ledger().rejected {
            next = next.with_rejected(rejected);
        }
        self.phase = Phase::Settling {
            loaded: Box::new(loaded),
            writing: true,
        };
        Output::Write(next)
    }

    /// After a release this process owed: the refresh goes on from what is stored now.
    fn settled(
        &mut self,
        process: &Process,
        memory: &mut Memory<S>,
        now: Now,
        mut loaded: Loaded<S>,
        writing: bool,
        input: Input<S>,
    ) -> Output<S> {
        match input {
            Input::Stored(stored) if writing => {
                memory.owed = None;
                loaded.stored = Some(stored);
                self.decide(process, memory, now, loaded, true)
            }
            Input::Reloaded(fresh) if !writing => {
                let ours = fresh
                    .as_ref()
                    .and_then(|s| s.ledger().claim)
                    .zip(memory.owed.as_ref())
                    .is_some_and(|(claim, owed)| claim.id == owed.claim_id);
                loaded.stored = fresh;
                match memory.owed.clone() {
                    Some(owed) if ours => self.settle(owed, loaded),
                    _ => {
                        // The claim was replaced: whoever replaced it knew more.
                        memory.owed = None;
                        self.decide(process, memory, now, loaded, true)
                    }
                }
            }
            // Someone wrote first: the driver looks again from a fresh read.
            _ => Output::Done(Done::Conflict),
        }
    }

    /// `confirmed`: `loaded.stored` was read from the API or just written, not from a cache
    /// that may lag. A chain is only declared lost on a confirmed state.
    fn decide(
        &mut self,
        process: &Process,
        memory: &mut Memory<S>,
        now: Now,
        loaded: Loaded<S>,
        confirmed: bool,
    ) -> Output<S> {
        let ledger = loaded
            .stored
            .as_ref()
            .map(Record::ledger)
            .unwrap_or_default();
        if let Some(offer) = &loaded.offer
            && imports(
                memory,
                &ledger,
                loaded.imported_in_status.as_ref(),
                &offer.fingerprint,
            )
        {
            if !loaded.due || !loaded.may_refresh {
                // Imported when it may be presented at once; nothing of it is reported before.
                return Output::Done(Done::Idle {
                    state: loaded.stored.unwrap_or_default(),
                    answer_unknown: false,
                });
            }
            // Imported and claimed in one write: a new refresh token is presented at once.
            return self.record_then_claim(
                process,
                memory,
                now,
                offer.state.clone(),
                None,
                1,
                loaded.imported_in_status.as_ref(),
            );
        }
        let Some(stored) = loaded.stored.clone().filter(|s| s.ledger().token.is_some()) else {
            memory.sighting = None;
            if loaded.imported_in_status.is_none() {
                return Output::Done(Done::NoToken);
            }
            if !confirmed {
                return self.confirm(loaded);
            }
            return Output::Done(Done::StateLost);
        };
        match verdict(&ledger, &loaded, process, memory, now) {
            Verdict::Dead { .. } if !confirmed => self.confirm(loaded),
            Verdict::Dead {
                reason,
                message,
                mark_spent,
            } => {
                let presenting_now = ledger
                    .claim
                    .as_ref()
                    .is_some_and(|c| c.holder != process.holder && c.fate() == Fate::InFlight);
                if mark_spent
                    && loaded.may_refresh
                    && !presenting_now
                    && let Some(token) = &ledger.token
                {
                    // Others would present the token once more after a wait; it is known to
                    // be rotated, so say so in the state.
                    let marker = Claim {
                        id: Self::claim_id(process, memory, now),
                        holder: process.holder.clone(),
                        fingerprint: token.clone(),
                        ttl_seconds: 0,
                        attempt: 1,
                        lost: false,
                        answered: false,
                        successor_lost: true,
                        once_more_at: None,
                    };
                    self.phase = Phase::MarkingSpent {
                        state: stored.clone(),
                        message,
                    };
                    return Output::Write(stored.with_claim(Some(marker)));
                }
                dead(stored, reason, message)
            }
            Verdict::Wait { after, unconfirmed } => Output::Done(Done::Waiting {
                state: stored,
                after,
                unconfirmed,
            }),
            Verdict::Usable { attempt } => {
                if !loaded.due || !loaded.may_refresh {
                    return Output::Done(Done::Idle {
                        state: stored,
                        answer_unknown: attempt > 1 && ledger.rotates != Some(false),
                    });
                }
                let previous = ledger.claim.clone();
                self.record_then_claim(
                    process,
                    memory,
                    now,
                    stored,
                    previous,
                    attempt,
                    loaded.imported_in_status.as_ref(),
                )
            }
        }
    }

    /// A claim id no other claim of this process has: its holder name carries a per-process
    /// nonce, the monotonic time tells apart its claims however its memory was kept.
    fn claim_id(process: &Process, memory: &mut Memory<S>, now: Now) -> String {
        memory.claims = memory.claims.saturating_add(1);
        format!(
            "{}/{}.{}",
            process.holder,
            now.mono.as_nanos(),
            memory.claims
        )
    }

    /// Reads the state afresh before a chain is declared lost.
    fn confirm(&mut self, loaded: Loaded<S>) -> Output<S> {
        self.phase = Phase::Confirming {
            loaded: Box::new(loaded),
        };
        Output::Reload
    }

    /// Status remembers an imported token before it is stored and presented, under a
    /// precondition on the version whose status said it was new: whoever presented it before
    /// recorded it first, so a stale decision to import it again fails here, and a state Secret
    /// deleted later can never make it look new again.
    #[allow(clippy::too_many_arguments)]
    fn record_then_claim(
        &mut self,
        process: &Process,
        memory: &mut Memory<S>,
        now: Now,
        base: S,
        previous: Option<Claim>,
        attempt: u32,
        imported_in_status: Option<&Fingerprint>,
    ) -> Output<S> {
        match base.ledger().imported {
            Some(imported) if Some(&imported) != imported_in_status => {
                self.phase = Phase::RecordingImport {
                    base,
                    previous,
                    attempt,
                };
                Output::RecordImport(imported)
            }
            _ => self.claim(process, memory, now, base, previous, attempt),
        }
    }

    fn claim(
        &mut self,
        process: &Process,
        memory: &mut Memory<S>,
        now: Now,
        base: S,
        previous: Option<Claim>,
        attempt: u32,
    ) -> Output<S> {
        let ledger = base.ledger();
        memory.sighting = None;
        let timing = process.timing;
        let once_more_at = serving_end(&ledger, &timing);
        let claim = Claim {
            id: Self::claim_id(process, memory, now),
            holder: process.holder.clone(),
            fingerprint: ledger.token.clone().unwrap_or_default(),
            ttl_seconds: timing.claim_ttl.as_secs(),
            attempt,
            lost: false,
            answered: false,
            successor_lost: false,
            once_more_at,
        };
        // Measured from before the claim is written: whoever sees it starts counting later.
        let claim_end = now.mono.saturating_add(claim.ttl());
        let window_end = match once_more_at {
            Some(once_more_at) => claim_end.max(now.mono_at(once_more_at - skew(&timing))),
            None => claim_end,
        };
        let held = Held {
            stored: base.with_claim(Some(claim.clone())),
            claim,
            previous,
            answer_deadline: claim_end.saturating_sub(timing.commit_margin),
            window_end,
        };
        let write = held.stored.clone();
        self.phase = Phase::Claiming(held);
        Output::Write(write)
    }

    fn claimed(&mut self, memory: &mut Memory<S>, mut held: Held<S>, input: Input<S>) -> Output<S> {
        match input {
            Input::Stored(stored) => {
                memory.recorded_import = None;
                held.stored = stored;
                self.present(held)
            }
            Input::Conflict => Output::Done(Done::Conflict),
            _ => {
                // The claim may have been stored all the same. Nothing was sent: should it be
                // there, it is ended before anything else, or others would read it as a lost
                // answer.
                memory.owed = Some(Owed {
                    state: released_state(&held, &Release::Unsent, &held.stored),
                    kind: OwedKind::Release,
                    claim_id: held.claim.id.clone(),
                    presented: held.claim.fingerprint.clone(),
                    window_end: held.window_end,
                });
                Output::Done(Done::NotStored)
            }
        }
    }

    fn present(&mut self, held: Held<S>) -> Output<S> {
        let output = Output::Present {
            state: held.stored.clone(),
            deadline: held.answer_deadline,
        };
        self.phase = Phase::Presenting(held);
        output
    }

    fn answered(
        &mut self,
        memory: &mut Memory<S>,
        now: Now,
        held: Held<S>,
        answer: Answer<S>,
    ) -> Output<S> {
        match answer {
            Answer::NotSent => self.release(held, Release::Unsent),
            Answer::Refused { rejected } => self.release(held, Release::Answered { rejected }),
            Answer::Unknown => self.release(held, Release::Lost),
            Answer::Issued { successor } => {
                // Held in memory from now on, where a stopping process finds it, until it is
                // stored or given up.
                memory.owed = Some(Owed {
                    state: successor.clone(),
                    kind: OwedKind::Successor,
                    claim_id: held.claim.id.clone(),
                    presented: held.claim.fingerprint.clone(),
                    window_end: held.window_end,
                });
                let stored = Some(held.stored.clone());
                self.commit(memory, now, held, successor, 0, stored)
            }
        }
    }

    /// Ends the claim with what became of it.
    fn release(&mut self, held: Held<S>, release: Release) -> Output<S> {
        let next = released_state(&held, &release, &held.stored);
        self.phase = Phase::Releasing {
            held,
            release,
            tries: 1,
        };
        Output::Write(next)
    }

    fn releasing(
        &mut self,
        memory: &mut Memory<S>,
        held: Held<S>,
        release: Release,
        tries: u32,
        input: Input<S>,
    ) -> Output<S> {
        let ours = |state: &S| state.ledger().claim.is_some_and(|c| c.id == held.claim.id);
        match input {
            Input::Stored(stored) => Output::Done(ending(&held, &release, stored)),
            Input::Conflict => {
                self.phase = Phase::Releasing {
                    held,
                    release,
                    tries,
                };
                Output::Reload
            }
            Input::Reloaded(Some(fresh)) if tries < RELEASE_TRIES && ours(&fresh) => {
                let next = released_state(&held, &release, &fresh);
                self.phase = Phase::Releasing {
                    held,
                    release,
                    tries: tries + 1,
                };
                Output::Write(next)
            }
            // The claim was replaced meanwhile: whoever replaced it knew more.
            Input::Reloaded(Some(fresh)) if !ours(&fresh) => {
                Output::Done(ending(&held, &release, fresh))
            }
            Input::Reloaded(None) => Output::Done(Done::Conflict),
            _ => {
                // Kept for the next reconcile; should the process die first, the claim runs
                // out by itself and counts as a lost answer, the safe reading.
                let owed = released_state(&held, &release, &held.stored);
                memory.owed = Some(Owed {
                    state: owed.clone(),
                    kind: OwedKind::Release,
                    claim_id: held.claim.id.clone(),
                    presented: held.claim.fingerprint.clone(),
                    window_end: held.window_end,
                });
                Output::Done(ending(&held, &release, owed))
            }
        }
    }

    /// Stores a successor, judged against `stored` (the state last read).
    fn commit(
        &mut self,
        memory: &mut Memory<S>,
        now: Now,
        held: Held<S>,
        successor: S,
        tries: u32,
        stored: Option<S>,
    ) -> Output<S> {
        let presented = held.claim.fingerprint.clone();
        let ours = successor.ledger().token;
        let rotated = ours.as_deref() != Some(presented.as_str());
        if now.mono >= held.window_end {
            return self.drop_successor(memory, &held, rotated);
        }
        let judged = match &stored {
            // Deleted meanwhile: this process holds the newest link, so it is created again.
            None => Judged::Write,
            Some(stored) => {
                let ledger = stored.ledger();
                if rotated && ledger.token == ours {
                    Judged::AlreadyThere
                } else if ledger.token.as_deref() != Some(presented.as_str()) {
                    Judged::Superseded
                } else {
                    match &ledger.claim {
                        Some(claim) if claim.id == held.claim.id => Judged::Write,
                        Some(claim) if claim.concerns(&presented) => {
                            // Another process claimed the token we presented: it is presenting
                            // it or did. Overwriting its claim would hide that presentation.
                            if rotated {
                                Judged::Drop
                            } else {
                                Judged::Superseded
                            }
                        }
                        _ => Judged::Write,
                    }
                }
            }
        };
        match judged {
            Judged::Write => {
                let write = successor.with_claim(None);
                let by = held.window_end;
                self.phase = Phase::Committing {
                    held,
                    successor,
                    tries: tries + 1,
                };
                Output::WriteBy(write, by)
            }
            Judged::AlreadyThere => {
                memory.owed = None;
                Output::Done(Done::Committed {
                    state: stored.unwrap_or(successor),
                })
            }
            Judged::Superseded => {
                memory.owed = None;
                Output::Done(Done::Superseded { state: stored })
            }
            Judged::Drop => self.drop_successor(memory, &held, rotated),
        }
    }

    fn committing(
        &mut self,
        memory: &mut Memory<S>,
        now: Now,
        held: Held<S>,
        successor: S,
        tries: u32,
        input: Input<S>,
    ) -> Output<S> {
        match input {
            Input::Stored(stored) => {
                memory.owed = None;
                memory.spent = None;
                Output::Done(Done::Committed { state: stored })
            }
            Input::Conflict => {
                self.phase = Phase::Committing {
                    held,
                    successor,
                    tries,
                };
                Output::Reload
            }
            Input::Reloaded(fresh) if tries < COMMIT_TRIES => {
                self.commit(memory, now, held, successor, tries, fresh)
            }
            _ => self.park(memory, now, held, successor),
        }
    }

    /// The successor could not be written now: kept in memory while its window is open.
    fn park(&mut self, memory: &mut Memory<S>, now: Now, held: Held<S>, successor: S) -> Output<S> {
        let rotated = successor.ledger().token.as_deref() != Some(held.claim.fingerprint.as_str());
        if now.mono >= held.window_end {
            return self.drop_successor(memory, &held, rotated);
        }
        memory.owed = Some(Owed {
            state: successor.clone(),
            kind: OwedKind::Successor,
            claim_id: held.claim.id.clone(),
            presented: held.claim.fingerprint.clone(),
            window_end: held.window_end,
        });
        Output::Done(Done::Parked {
            state: successor,
            until: held.window_end,
        })
    }

    fn drop_successor(
        &mut self,
        memory: &mut Memory<S>,
        held: &Held<S>,
        rotated: bool,
    ) -> Output<S> {
        memory.owed = None;
        if rotated {
            memory.spent = Some(held.claim.fingerprint.clone());
        }
        Output::Done(Done::Dropped)
    }
}

enum Judged {
    Write,
    AlreadyThere,
    Superseded,
    Drop,
}

/// `state` with the claim ended as `release` says.
fn released_state<S: Record>(held: &Held<S>, release: &Release, state: &S) -> S {
    match release {
        Release::Unsent => state.with_claim(held.previous.clone()),
        Release::Lost => state.with_claim(Some(Claim {
            lost: true,
            ..held.claim.clone()
        })),
        Release::Answered { rejected } => {
            let next = state.with_claim(Some(Claim {
                answered: true,
                ..held.claim.clone()
            }));
            if *rejected {
                next.with_rejected(held.claim.fingerprint.clone())
            } else {
                next
            }
        }
    }
}

fn ending<S: Record>(held: &Held<S>, release: &Release, state: S) -> Done<S> {
    let after_lost_answer = held.claim.attempt > 1;
    // The one more presentation after a lost answer got nothing usable either: there is none
    // left, and status says so now rather than at the next look.
    let exhausted =
        held.claim.attempt >= MAX_UNANSWERED_PRESENTATIONS && state.ledger().rotates != Some(false);
    match release {
        Release::Unsent => Done::NotSent { state },
        Release::Answered { rejected: false } | Release::Lost if exhausted => Done::Dead {
            state,
            reason: reason::ANSWER_LOST,
            message: answer_lost_message(matches!(release, Release::Lost)),
        },
        Release::Answered { .. } => Done::NotIssued {
            state,
            lost: false,
            after_lost_answer,
        },
        Release::Lost => Done::NotIssued {
            state,
            lost: true,
            after_lost_answer,
        },
    }
}

fn dead<S>(state: S, reason: &'static str, message: String) -> Output<S> {
    Output::Done(Done::Dead {
        state,
        reason,
        message,
    })
}

/// Whether `offered` is a refresh token not imported yet: what was imported last is remembered
/// by the state Secret, or, when that is gone, by status.
pub fn is_new_import(
    stored: &Ledger,
    imported_in_status: Option<&Fingerprint>,
    offered: &Fingerprint,
) -> bool {
    stored.imported.as_ref().or(imported_in_status) != Some(offered)
        // The chain's own current token copied back into the import Secret is nothing new.
        && stored.token.as_ref() != Some(offered)
}

/// Whether a refresh would import `offered`: a new refresh token, or one this process recorded
/// in status as imported and could not store (it was never presented).
pub fn imports<S>(
    memory: &Memory<S>,
    stored: &Ledger,
    imported_in_status: Option<&Fingerprint>,
    offered: &Fingerprint,
) -> bool {
    is_new_import(stored, imported_in_status, offered)
        || (stored.token.is_none() && memory.recorded_import.as_ref() == Some(offered))
}

/// Why a chain is dead after the one more presentation; `lost`: its answer was lost too.
fn answer_lost_message(lost: bool) -> String {
    format!(
        "The answer to a presentation of the refresh token was lost (timeout, an unreadable answer or a stopped process), so the provider may have rotated it; it was presented once more, {}. It is not presented again. Put a new refresh token in the import Secret",
        if lost {
            "and that answer was lost too"
        } else {
            "and that got no new token"
        }
    )
}

/// When the published access token stops serving: its expiry less the margin.
fn serving_end(ledger: &Ledger, timing: &Timing) -> Option<DateTime<Utc>> {
    let until = ledger.serving_until?;
    let margin = chrono::TimeDelta::from_std(timing.serving_margin).ok()?;
    until.checked_sub_signed(margin)
}

fn skew(timing: &Timing) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(timing.clock_skew).unwrap_or_default()
}

/// Whether the chain's refresh token may be presented now.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    /// Present it; `attempt` is 2 for the one more after a lost answer.
    Usable { attempt: u32 },
    /// Another process presents it, or may still store what it got: look again after `after`.
    Wait {
        after: Duration,
        unconfirmed: Option<Unconfirmed>,
    },
    /// It must not be presented again.
    Dead {
        reason: &'static str,
        message: String,
        /// This process knows it was rotated; the state should say so.
        mark_spent: bool,
    },
}

fn verdict<S>(
    ledger: &Ledger,
    loaded: &Loaded<S>,
    process: &Process,
    memory: &mut Memory<S>,
    now: Now,
) -> Verdict {
    let Some(current) = ledger.token.as_deref() else {
        return Verdict::Usable { attempt: 1 };
    };
    if let Some(bound) = &ledger.binding
        && bound != &loaded.binding
    {
        return Verdict::Dead {
            reason: reason::CHAIN_BINDING_CHANGED,
            message: format!(
                "The refresh token was issued for client {:?} at {} but the spec now names client {:?} at {}; it is only ever sent where it came from. Put a refresh token authorized for the new client and endpoint in the import Secret",
                bound.client_id, bound.origin, loaded.binding.client_id, loaded.binding.origin
            ),
            mark_spent: false,
        };
    }
    if ledger.rejected.as_deref() == Some(current) {
        return Verdict::Dead {
            reason: reason::INVALID_GRANT,
            message: "The provider rejected the refresh token (invalid_grant); it is not presented again. A human must authorize again and put the new refresh token in the import Secret".to_string(),
            mark_spent: false,
        };
    }
    let successor_lost = |mark_spent| {
        Verdict::Dead {
        reason: reason::SUCCESSOR_LOST,
        message: "The provider rotated the refresh token, but the new one could not be stored in time (the Kubernetes API was unreachable); the old one is not presented again. Put a new refresh token in the import Secret".to_string(),
        mark_spent,
    }
    };
    if memory.spent.as_deref() == Some(current) {
        let marked = ledger
            .claim
            .as_ref()
            .is_some_and(|c| c.successor_lost && c.concerns(current));
        return successor_lost(!marked);
    }
    let Some(claim) = ledger.claim.as_ref().filter(|c| c.concerns(current)) else {
        memory.sighting = None;
        return Verdict::Usable { attempt: 1 };
    };
    let exempt = ledger.rotates == Some(false);
    let once_more = |attempt: u32| {
        if attempt >= MAX_UNANSWERED_PRESENTATIONS && !exempt {
            Verdict::Dead {
                reason: reason::ANSWER_LOST,
                message: answer_lost_message(claim.lost || claim.fate() == Fate::InFlight),
                mark_spent: false,
            }
        } else {
            Verdict::Usable {
                attempt: attempt.saturating_add(1),
            }
        }
    };
    match claim.fate() {
        Fate::SuccessorLost => successor_lost(false),
        Fate::Answered if claim.attempt >= MAX_UNANSWERED_PRESENTATIONS && !exempt => {
            once_more(claim.attempt)
        }
        Fate::Answered => Verdict::Usable { attempt: 1 },
        Fate::Lost => once_more(claim.attempt),
        // Our own claim with nothing owed: no reconcile of ours is presenting it.
        Fate::InFlight if claim.holder == process.holder => once_more(claim.attempt),
        Fate::InFlight => {
            let first_seen = match &memory.sighting {
                Some((id, since)) if *id == claim.id => *since,
                _ => {
                    memory.sighting = Some((claim.id.clone(), now.mono));
                    now.mono
                }
            };
            let age = now.mono.saturating_sub(first_seen);
            if age < claim.ttl() {
                return Verdict::Wait {
                    after: claim.ttl() - age,
                    unconfirmed: None,
                };
            }
            // The claim ran out without a word. Its holder may hold a successor it cannot
            // store yet; it keeps trying while the published token serves, so wait that long.
            let once_more_at = match (serving_end(ledger, &process.timing), claim.once_more_at) {
                (Some(ours), Some(theirs)) => Some(ours.max(theirs)),
                (ours, theirs) => ours.or(theirs),
            };
            if !exempt
                && !loaded.token_reported_unusable
                && let Some(once_more_at) = once_more_at
                && now.wall < once_more_at
            {
                return Verdict::Wait {
                    after: (once_more_at - now.wall).to_std().unwrap_or_default(),
                    unconfirmed: Some(Unconfirmed {
                        holder: claim.holder.clone(),
                        once_more_at,
                    }),
                };
            }
            once_more(claim.attempt)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: u64 = 40;

    fn timing() -> Timing {
        Timing {
            request_timeout: Duration::from_secs(30),
            claim_ttl: Duration::from_secs(TTL),
            commit_margin: Duration::from_secs(5),
            serving_margin: Duration::from_secs(70),
            clock_skew: Duration::from_secs(5),
        }
    }

    fn me() -> Process {
        Process {
            holder: "pod-a/1".into(),
            timing: timing(),
        }
    }

    fn binding() -> Binding {
        Binding {
            origin: "https://idp.test:443".into(),
            client_id: "app".into(),
        }
    }

    fn at(seconds: u64) -> Now {
        Now {
            mono: Duration::from_secs(seconds),
            wall: DateTime::from_timestamp(1_800_000_000 + seconds as i64, 0).unwrap(),
        }
    }

    fn chain(token: &str) -> Ledger {
        Ledger {
            token: Some(token.into()),
            binding: Some(binding()),
            imported: Some("t0".into()),
            ..Ledger::default()
        }
    }

    fn foreign_claim(id: &str, attempt: u32) -> Claim {
        Claim {
            id: id.into(),
            holder: "pod-b/2".into(),
            fingerprint: "t1".into(),
            ttl_seconds: TTL,
            attempt,
            lost: false,
            answered: false,
            successor_lost: false,
            once_more_at: None,
        }
    }

    fn loaded(stored: Ledger) -> Loaded<Ledger> {
        Loaded {
            stored: Some(stored),
            offer: None,
            imported_in_status: Some("t0".into()),
            binding: binding(),
            due: true,
            may_refresh: true,
            token_reported_unusable: false,
        }
    }

    /// Starts a refresh at `now` and feeds a fresh read whenever the machine asks to confirm.
    fn start(
        memory: &mut Memory<Ledger>,
        now: Now,
        loaded: Loaded<Ledger>,
    ) -> (Refresh<Ledger>, Output<Ledger>) {
        let stored = loaded.stored.clone();
        let mut refresh = Refresh::new();
        let mut output = refresh.step(&me(), memory, now, Input::Loaded(loaded));
        if output == Output::Reload {
            output = refresh.step(&me(), memory, now, Input::Reloaded(stored));
        }
        (refresh, output)
    }

    fn claim_of(output: &Output<Ledger>) -> Claim {
        match output {
            Output::Write(state) => state.claim.clone().expect("a claim"),
            other => panic!("expected a claim write, got {other:?}"),
        }
    }

    #[test]
    fn a_fresh_chain_is_claimed_with_an_id_of_its_own() {
        let mut memory = Memory::default();
        let (_, first) = start(&mut memory, at(0), loaded(chain("t1")));
        let (_, second) = start(&mut memory, at(1), loaded(chain("t1")));
        let (first, second) = (claim_of(&first), claim_of(&second));
        assert_eq!((first.attempt, first.fingerprint.as_str()), (1, "t1"));
        assert_ne!(
            first.id, second.id,
            "a claim written again is another claim"
        );
    }

    #[test]
    fn a_live_claim_is_waited_out_on_our_own_clock_from_when_we_first_saw_it() {
        let mut memory = Memory::default();
        let claimed = Ledger {
            claim: Some(foreign_claim("b/1", 1)),
            ..chain("t1")
        };
        let wait = |memory: &mut Memory<Ledger>, now, stored: &Ledger| match start(
            memory,
            now,
            loaded(stored.clone()),
        )
        .1
        {
            Output::Done(Done::Waiting { after, .. }) => Some(after),
            _ => None,
        };
        assert_eq!(
            wait(&mut memory, at(100), &claimed),
            Some(Duration::from_secs(TTL))
        );
        assert_eq!(
            wait(&mut memory, at(139), &claimed),
            Some(Duration::from_secs(1))
        );
        // (a) A claim just like it, written anew, is waited out from when it was first seen.
        let again = Ledger {
            claim: Some(foreign_claim("b/2", 1)),
            ..chain("t1")
        };
        assert_eq!(
            wait(&mut memory, at(139), &again),
            Some(Duration::from_secs(TTL))
        );
    }

    #[test]
    fn a_silent_holder_is_given_until_the_published_token_stops_serving() {
        let mut memory = Memory::default();
        let serving_until = at(1000).wall;
        let claimed = Ledger {
            claim: Some(foreign_claim("b/1", 1)),
            serving_until: Some(serving_until),
            ..chain("t1")
        };
        start(&mut memory, at(0), loaded(claimed.clone()));
        // Run out, but the holder may still store what it got while the token serves.
        match start(&mut memory, at(100), loaded(claimed.clone())).1 {
            Output::Done(Done::Waiting {
                after,
                unconfirmed: Some(unconfirmed),
                ..
            }) => {
                assert_eq!(unconfirmed.holder, "pod-b/2");
                assert_eq!(unconfirmed.once_more_at, at(930).wall);
                assert_eq!(after, Duration::from_secs(830));
            }
            other => panic!("{other:?}"),
        }
        // A consumer saying the token no longer serves ends the wait.
        let reported = Loaded {
            token_reported_unusable: true,
            ..loaded(claimed.clone())
        };
        assert_eq!(
            claim_of(&start(&mut memory, at(100), reported).1).attempt,
            2
        );
        // So does the token's approaching expiry.
        let mut memory = Memory::default();
        start(&mut memory, at(0), loaded(claimed.clone()));
        assert!(matches!(
            start(&mut memory, at(929), loaded(claimed.clone())).1,
            Output::Done(Done::Waiting { .. })
        ));
        assert_eq!(
            claim_of(&start(&mut memory, at(930), loaded(claimed)).1).attempt,
            2
        );
    }

    #[test]
    fn after_a_lost_answer_the_token_is_presented_once_more_and_never_again() {
        for ending in [
            Claim {
                lost: true,
                ..foreign_claim("b/2", 2)
            },
            // (b) A complete answer to the one more presentation does not reset the count.
            Claim {
                answered: true,
                ..foreign_claim("b/2", 2)
            },
        ] {
            let mut memory = Memory::default();
            let stored = Ledger {
                claim: Some(ending),
                ..chain("t1")
            };
            match start(&mut memory, at(0), loaded(stored)).1 {
                Output::Done(Done::Dead { reason, .. }) => assert_eq!(reason, reason::ANSWER_LOST),
                other => panic!("{other:?}"),
            }
        }
        let mut memory = Memory::default();
        let lost_once = Ledger {
            claim: Some(Claim {
                lost: true,
                ..foreign_claim("b/1", 1)
            }),
            ..chain("t1")
        };
        assert_eq!(
            claim_of(&start(&mut memory, at(0), loaded(lost_once)).1).attempt,
            2
        );
    }

    #[test]
    fn a_hand_edited_claim_cannot_make_it_panic() {
        // (g) With a provider known not to rotate, lost answers do not count, and an attempt
        // number at its limit stays there.
        let mut memory = Memory::default();
        let stored = Ledger {
            claim: Some(Claim {
                lost: true,
                ..foreign_claim("b/1", u32::MAX)
            }),
            rotates: Some(false),
            ..chain("t1")
        };
        assert_eq!(
            claim_of(&start(&mut memory, at(0), loaded(stored)).1).attempt,
            u32::MAX
        );
        let absurd = Ledger {
            claim: Some(Claim {
                ttl_seconds: u64::MAX,
                ..foreign_claim("b/1", 1)
            }),
            ..chain("t1")
        };
        assert!(matches!(
            start(&mut memory, at(u64::from(u32::MAX)), loaded(absurd)).1,
            Output::Done(Done::Waiting { .. })
        ));
    }

    #[test]
    fn an_unreadable_claim_counts_as_a_lost_answer_for_the_current_token() {
        let mut memory = Memory::default();
        let stored = Ledger {
            claim: Some(Claim {
                fingerprint: String::new(),
                lost: true,
                ..foreign_claim("", 1)
            }),
            ..chain("t1")
        };
        assert_eq!(
            claim_of(&start(&mut memory, at(0), loaded(stored)).1).attempt,
            2
        );
    }

    #[test]
    fn a_chain_is_declared_lost_only_on_a_fresh_read() {
        let mut memory = Memory::default();
        let rejected = Ledger {
            rejected: Some("t1".into()),
            ..chain("t1")
        };
        let mut refresh = Refresh::new();
        let output = refresh.step(&me(), &mut memory, at(0), Input::Loaded(loaded(rejected)));
        assert_eq!(output, Output::Reload, "the cache may lag");
        // Fresh, the chain has moved on: nothing is dead.
        let output = refresh.step(
            &me(),
            &mut memory,
            at(0),
            Input::Reloaded(Some(chain("t2"))),
        );
        assert_eq!(claim_of(&output).fingerprint, "t2");
    }

    #[test]
    fn the_chain_goes_only_where_it_came_from() {
        let mut memory = Memory::default();
        let elsewhere = Loaded {
            binding: Binding {
                origin: "https://evil.test:443".into(),
                ..binding()
            },
            ..loaded(chain("t1"))
        };
        match start(&mut memory, at(0), elsewhere).1 {
            Output::Done(Done::Dead { reason, .. }) => {
                assert_eq!(reason, reason::CHAIN_BINDING_CHANGED)
            }
            other => panic!("{other:?}"),
        }
    }

    /// Claims t1 at `claimed_at`, presents it, and returns the machine after it got t2.
    fn got_successor(
        memory: &mut Memory<Ledger>,
        stored: Ledger,
        claimed_at: u64,
    ) -> Refresh<Ledger> {
        let (mut refresh, output) = start(memory, at(claimed_at), loaded(stored));
        let Output::Write(with_claim) = output else {
            panic!("{output:?}")
        };
        let output = refresh.step(
            &me(),
            memory,
            at(claimed_at),
            Input::Stored(with_claim.clone()),
        );
        assert!(matches!(output, Output::Present { .. }), "{output:?}");
        let successor = Ledger {
            token: Some("t2".into()),
            claim: None,
            ..with_claim
        };
        let output = refresh.step(
            &me(),
            memory,
            at(claimed_at + 1),
            Input::Answer(Answer::Issued { successor }),
        );
        assert!(matches!(output, Output::WriteBy(..)), "{output:?}");
        refresh
    }

    #[test]
    fn a_successor_is_never_written_over_another_process_s_claim() {
        // (d) The commit meets a conflict: another process claimed the token we presented.
        let mut memory = Memory::default();
        let mut refresh = got_successor(&mut memory, chain("t1"), 0);
        assert_eq!(
            refresh.step(&me(), &mut memory, at(2), Input::Conflict),
            Output::Reload
        );
        let theirs = Ledger {
            claim: Some(foreign_claim("b/9", 2)),
            ..chain("t1")
        };
        let output = refresh.step(
            &me(),
            &mut memory,
            at(2),
            Input::Reloaded(Some(theirs.clone())),
        );
        assert_eq!(output, Output::Done(Done::Dropped));
        // Known to be rotated: this process never presents t1 again.
        match start(
            &mut memory,
            at(3),
            loaded(Ledger {
                claim: None,
                ..theirs
            }),
        )
        .1
        {
            Output::Write(marked) => assert!(marked.claim.unwrap().successor_lost),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_successor_that_cannot_be_written_is_kept_for_its_window_then_given_up() {
        // (e) Kept in memory and written first, but only while others still wait.
        let serving = Ledger {
            serving_until: Some(at(1000).wall),
            ..chain("t1")
        };
        let mut memory = Memory::default();
        let mut refresh = got_successor(&mut memory, serving.clone(), 0);
        let output = refresh.step(&me(), &mut memory, at(2), Input::Failed);
        // Others present t1 once more at 1000 - 70; this process stops 5 s (skew) earlier.
        assert!(
            matches!(&output, Output::Done(Done::Parked { until, .. }) if *until == Duration::from_secs(925)),
            "{output:?}"
        );
        assert_eq!(
            memory.successor_window_end(),
            Some(Duration::from_secs(925))
        );
        // The next refresh writes it before anything else...
        let (_, output) = start(&mut memory, at(500), loaded(serving.clone()));
        assert!(
            matches!(&output, Output::WriteBy(s, by) if s.token.as_deref() == Some("t2") && s.claim.is_none() && *by == Duration::from_secs(925)),
            "{output:?}"
        );
        // ...and once the window has closed it is given up.
        let (_, output) = start(&mut memory, at(925), loaded(serving));
        assert_eq!(output, Output::Done(Done::Dropped));
        assert!(!memory.owes_a_write());
    }

    #[test]
    fn a_release_that_could_not_be_written_is_written_before_anything_else() {
        let mut memory = Memory::default();
        let (mut refresh, output) = start(&mut memory, at(0), loaded(chain("t1")));
        let Output::Write(claimed) = output else {
            panic!()
        };
        refresh.step(&me(), &mut memory, at(0), Input::Stored(claimed.clone()));
        let output = refresh.step(
            &me(),
            &mut memory,
            at(1),
            Input::Answer(Answer::Refused { rejected: false }),
        );
        assert!(matches!(output, Output::Write(_)));
        let output = refresh.step(&me(), &mut memory, at(1), Input::Failed);
        assert!(matches!(
            output,
            Output::Done(Done::NotIssued { lost: false, .. })
        ));
        assert!(memory.owes_a_write());
        // The next refresh ends the claim first (as answered, so the next one is a first one).
        let (mut refresh, output) = start(&mut memory, at(5), loaded(claimed));
        let Output::Write(released) = output else {
            panic!("{output:?}")
        };
        assert!(released.claim.as_ref().unwrap().answered);
        let output = refresh.step(&me(), &mut memory, at(5), Input::Stored(released));
        assert_eq!(claim_of(&output).attempt, 1);
    }

    #[test]
    fn a_used_import_is_never_imported_again_and_an_unstored_one_is() {
        let offer = Offer {
            fingerprint: "t0".into(),
            state: Ledger {
                token: Some("t0".into()),
                imported: Some("t0".into()),
                binding: Some(binding()),
                ..Ledger::default()
            },
        };
        let gone = Loaded {
            stored: None,
            offer: Some(offer.clone()),
            ..loaded(chain("t0"))
        };
        // Status remembers the import and the state Secret is gone: never imported again.
        let mut memory = Memory::default();
        assert_eq!(
            start(&mut memory, at(0), gone.clone()).1,
            Output::Done(Done::StateLost)
        );
        // Unless this very process recorded it and failed to store it: then it was never sent.
        let fresh = Loaded {
            imported_in_status: None,
            ..gone.clone()
        };
        let (mut refresh, output) = start(&mut memory, at(0), fresh);
        assert_eq!(output, Output::RecordImport("t0".into()));
        let output = refresh.step(&me(), &mut memory, at(0), Input::ImportRecorded);
        assert!(matches!(output, Output::Write(_)));
        refresh.step(&me(), &mut memory, at(0), Input::Failed);
        assert_eq!(
            claim_of(&start(&mut memory, at(1), gone).1).fingerprint,
            "t0"
        );
    }
}
