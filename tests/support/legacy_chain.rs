//! The chain protocol as it was before it became one pure core (commit e178ef8:
//! `src/controller/chain.rs` and `Run::execute`/`Run::refresh` in `src/controller/reconcile.rs`),
//! written in the core's shape so the model can drive it. It exists only to show that the
//! model's properties catch what that protocol got wrong; nothing runs it in production.
//!
//! Where it differs from the operator's core, and which property of the model catches it:
//! - (a) claims carry no id: a claim written again after a release looks like the one an
//!   observer saw before, which then judges the new claim expired (`NO_REUSE`);
//! - (b) a complete answer clears the claim even after a lost one, so the next presentation
//!   counts as a first one again (`ONCE_MORE`);
//! - (c) a 2xx that is not a JSON object counts as "answered, not rotated": a rotated refresh
//!   token in a form body is thrown away (`NO_DROP`), one in an unreadable body is presented
//!   again without counting as the one more try;
//! - (d) the commit is not bounded by the claim and overwrites another process's newer claim,
//!   (e) a successor parked in memory leaves its claim live, and others present the token once
//!   the claim ran out while the holder still tries to store the successor (`NO_REUSE`);
//! - (f) a claim abandoned between the claim and the request (an unreadable client Secret) is
//!   never released and later counts as a lost answer (`NO_FALSE_DEATH`);
//! - (h) the import is recorded in status only after the refresh: a process killed before that
//!   write, then a deleted state Secret, and the used-up import is presented again (`NO_REUSE`).
//!
//! (g), an `attempt + 1` that overflows on a hand-edited claim, is a panic, not an
//! interleaving: `src/controller/chain/protocol.rs` has a test for it.
#![allow(dead_code)]

use std::time::Duration;

use oauth_token_operator::api::conditions::reason;
use oauth_token_operator::controller::chain::protocol::{
    Answer, Claim, Done, Fingerprint, Input, Ledger, Loaded, Now, Output, Process, Record,
};

use super::chain_model::{Core, Shape};

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LegacyMemory {
    /// The claim of another process and when this one first saw it, compared by content.
    seen: Option<(Claim, Duration)>,
    /// A successor whose write failed, and the token presented for it.
    parked: Option<(Ledger, Fingerprint)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Legacy {
    phase: Phase,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Phase {
    Start,
    /// The import is written without a claim; the claim follows in a second write.
    Importing(Box<Loaded<Ledger>>),
    Claiming {
        claim: Claim,
        previous: Option<Claim>,
        ends: Duration,
    },
    Presenting {
        claim: Claim,
        previous: Option<Claim>,
        stored: Ledger,
    },
    Releasing {
        claim: Claim,
        change: Change,
        tries: u32,
        then: Box<Done<Ledger>>,
    },
    Committing {
        successor: Ledger,
        presented: Fingerprint,
        tries: u32,
    },
    Finished,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Change {
    Restore(Option<Claim>),
    Clear { rejected: bool },
    MarkLost,
}

const WRITE_ATTEMPTS: u32 = 5;

impl Core for Legacy {
    type Memory = LegacyMemory;

    fn start() -> Self {
        Legacy {
            phase: Phase::Start,
        }
    }

    fn step(
        &mut self,
        process: &Process,
        memory: &mut LegacyMemory,
        now: Now,
        input: Input<Ledger>,
    ) -> Output<Ledger> {
        let phase = std::mem::replace(&mut self.phase, Phase::Finished);
        let output = match (phase, input) {
            (Phase::Start, Input::Loaded(loaded)) => {
                if let Some((successor, presented)) = memory.parked.take() {
                    return self.commit(memory, successor, presented, 0, loaded.stored);
                }
                self.import_or_claim(process, memory, now, loaded)
            }
            (Phase::Importing(loaded), Input::Stored(stored)) => {
                let mut loaded = *loaded;
                loaded.stored = Some(stored);
                loaded.offer = None;
                self.verdict_and_claim(process, memory, now, loaded)
            }
            (
                Phase::Claiming {
                    claim,
                    previous,
                    ends,
                },
                Input::Stored(stored),
            ) => {
                self.phase = Phase::Presenting {
                    claim,
                    previous,
                    stored: stored.clone(),
                };
                Output::Present {
                    state: stored,
                    deadline: ends.saturating_sub(process.timing.commit_margin),
                }
            }
            (
                Phase::Presenting {
                    claim,
                    previous,
                    stored,
                },
                Input::Answer(answer),
            ) => match answer {
                Answer::NotSent => {
                    self.release(claim, Change::Restore(previous), &stored, Done::Conflict)
                }
                Answer::Refused { rejected } => self.release(
                    claim,
                    Change::Clear { rejected },
                    &stored,
                    Done::NotIssued {
                        state: stored.clone(),
                        lost: false,
                        after_lost_answer: false,
                    },
                ),
                Answer::Unknown => self.release(
                    claim,
                    Change::MarkLost,
                    &stored,
                    Done::NotIssued {
                        state: stored.clone(),
                        lost: true,
                        after_lost_answer: false,
                    },
                ),
                Answer::Issued { successor } => {
                    let presented = claim.fingerprint.clone();
                    self.commit(memory, successor, presented, 0, Some(stored))
                }
            },
            (
                Phase::Releasing {
                    claim,
                    change,
                    tries,
                    then,
                },
                input,
            ) => match input {
                Input::Stored(_) => Output::Done(*then),
                Input::Conflict if tries < WRITE_ATTEMPTS => {
                    self.phase = Phase::Releasing {
                        claim,
                        change,
                        tries,
                        then,
                    };
                    Output::Reload
                }
                Input::Reloaded(Some(fresh)) if fresh.claim.as_ref() == Some(&claim) => {
                    let next = apply(&change, &claim, &fresh);
                    self.phase = Phase::Releasing {
                        claim,
                        change,
                        tries: tries + 1,
                        then,
                    };
                    Output::Write(next)
                }
                _ => Output::Done(*then),
            },
            (
                Phase::Committing {
                    successor,
                    presented,
                    tries,
                },
                input,
            ) => match input {
                Input::Stored(state) => Output::Done(Done::Committed { state }),
                Input::Conflict if tries < 2 * WRITE_ATTEMPTS => {
                    self.phase = Phase::Committing {
                        successor,
                        presented,
                        tries,
                    };
                    Output::Reload
                }
                Input::Reloaded(fresh) => self.commit(memory, successor, presented, tries, fresh),
                _ => {
                    memory.parked = Some((successor.clone(), presented));
                    Output::Done(Done::Parked {
                        state: successor,
                        until: Duration::MAX,
                    })
                }
            },
            (_, _) => Output::Done(Done::Conflict),
        };
        if matches!(output, Output::Done(_)) {
            self.phase = Phase::Finished;
        }
        output
    }

    fn holds(&self, memory: &LegacyMemory) -> Option<(Fingerprint, Option<Duration>)> {
        let held = match &self.phase {
            Phase::Committing { successor, .. } => Some(successor),
            _ => memory.parked.as_ref().map(|(s, _)| s),
        };
        held.and_then(|s| s.token.clone()).map(|t| (t, None))
    }

    fn kept(_: &mut LegacyMemory) {}

    fn read_answer(shape: Shape, successor: Ledger) -> Answer<Ledger> {
        match shape {
            Shape::Json => Answer::Issued { successor },
            // "not a JSON object": Malformed with an HTTP status, a complete answer.
            Shape::Form | Shape::Unreadable => Answer::Refused { rejected: false },
        }
    }

    fn reports_abandoned_claims() -> bool {
        false
    }
}

impl Legacy {
    fn import_or_claim(
        &mut self,
        process: &Process,
        memory: &mut LegacyMemory,
        now: Now,
        loaded: Loaded<Ledger>,
    ) -> Output<Ledger> {
        let stored = loaded.stored.clone().unwrap_or_default();
        let known = stored
            .imported
            .clone()
            .or_else(|| loaded.imported_in_status.clone());
        if let Some(offer) = &loaded.offer
            && Some(&offer.fingerprint) != known.as_ref()
        {
            let next = Ledger {
                claim: None,
                rejected: None,
                rotates: None,
                ..offer.state.clone()
            };
            self.phase = Phase::Importing(Box::new(loaded));
            return Output::Write(next);
        }
        if stored.token.is_none() {
            return Output::Done(if loaded.imported_in_status.is_some() {
                Done::StateLost
            } else {
                Done::NoToken
            });
        }
        self.verdict_and_claim(process, memory, now, loaded)
    }

    fn verdict_and_claim(
        &mut self,
        process: &Process,
        memory: &mut LegacyMemory,
        now: Now,
        loaded: Loaded<Ledger>,
    ) -> Output<Ledger> {
        let Some(stored) = loaded.stored.clone() else {
            return Output::Done(Done::NoToken);
        };
        let current = stored.token.clone().unwrap_or_default();
        if stored.rejected.as_deref() == Some(current.as_str()) {
            return Output::Done(Done::Dead {
                state: stored,
                reason: reason::INVALID_GRANT,
                message: String::new(),
            });
        }
        let attempt = match &stored.claim {
            None => {
                memory.seen = None;
                1
            }
            Some(claim) if !claim.fingerprint.is_empty() && claim.fingerprint != current => 1,
            Some(claim) => {
                let age = if claim.holder == process.holder {
                    Duration::MAX
                } else {
                    match &memory.seen {
                        Some((known, since)) if known == claim => now.mono.saturating_sub(*since),
                        _ => {
                            memory.seen = Some((claim.clone(), now.mono));
                            Duration::ZERO
                        }
                    }
                };
                let ttl = Duration::from_secs(claim.ttl_seconds);
                if !claim.lost && age < ttl {
                    return Output::Done(Done::Waiting {
                        state: stored,
                        after: ttl - age,
                        unconfirmed: None,
                    });
                }
                if claim.attempt >= 2 && stored.rotates != Some(false) {
                    return Output::Done(Done::Dead {
                        state: stored,
                        reason: reason::ANSWER_LOST,
                        message: String::new(),
                    });
                }
                claim.attempt + 1
            }
        };
        let claim = Claim {
            id: String::new(),
            holder: process.holder.clone(),
            fingerprint: current,
            ttl_seconds: process.timing.claim_ttl.as_secs(),
            attempt,
            lost: false,
            answered: false,
            successor_lost: false,
            once_more_at: None,
        };
        let previous = stored.claim.clone();
        self.phase = Phase::Claiming {
            claim: claim.clone(),
            previous,
            ends: now.mono + process.timing.claim_ttl,
        };
        Output::Write(stored.with_claim(Some(claim)))
    }

    fn release(
        &mut self,
        claim: Claim,
        change: Change,
        stored: &Ledger,
        then: Done<Ledger>,
    ) -> Output<Ledger> {
        let next = apply(&change, &claim, stored);
        self.phase = Phase::Releasing {
            claim,
            change,
            tries: 1,
            then: Box::new(then),
        };
        Output::Write(next)
    }

    /// On a conflict the stored state is compared: the same token we presented means ours is
    /// newer, and it is written over whatever claim is there.
    fn commit(
        &mut self,
        memory: &mut LegacyMemory,
        successor: Ledger,
        presented: Fingerprint,
        tries: u32,
        stored: Option<Ledger>,
    ) -> Output<Ledger> {
        let ours = successor.token.clone();
        if let Some(stored) = &stored {
            if ours.is_some() && stored.token == ours && tries > 0 {
                return Output::Done(Done::Committed {
                    state: stored.clone(),
                });
            }
            if stored.token.as_deref() != Some(presented.as_str()) && tries > 0 {
                return Output::Done(Done::Superseded {
                    state: Some(stored.clone()),
                });
            }
        }
        let _ = memory;
        self.phase = Phase::Committing {
            successor: successor.clone(),
            presented,
            tries: tries + 1,
        };
        Output::Write(successor.with_claim(None))
    }
}

fn apply(change: &Change, claim: &Claim, stored: &Ledger) -> Ledger {
    match change {
        Change::Restore(previous) => stored.with_claim(previous.clone()),
        Change::Clear { rejected } => {
            let next = stored.with_claim(None);
            if *rejected {
                next.with_rejected(claim.fingerprint.clone())
            } else {
                next
            }
        }
        Change::MarkLost => stored.with_claim(Some(Claim {
            lost: true,
            ..claim.clone()
        })),
    }
}
