//! A model of the refresh-token chain, checked with stateright: two or three operator processes
//! drive a chain core through an API server with resourceVersion compare-and-swap and watch
//! caches that lag and skip states, against a provider that rotates refresh tokens and revokes
//! the whole family when one is presented twice, with faults.
//!
//! The model drives the core the operator runs (`controller::chain::protocol::Refresh`) through
//! the same inputs and outputs the controller uses; it only plays the driver's part: caches,
//! writes, requests, the clock. `Core` lets it drive the protocol as it was before the core was
//! extracted (tests/support/legacy_chain.rs), to show that the properties catch what it got wrong.
#![allow(dead_code)]

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use oauth_token_operator::api::conditions::reason;
use oauth_token_operator::controller::chain::protocol::{
    Answer, Binding, Claim, Done, Fingerprint, Input, Ledger, Loaded, Memory, Now, Offer, Output,
    Process, Refresh, Timing,
};
use stateright::{Model, Property};

/// A chain core as the model drives it.
pub trait Core: Clone + Debug + Hash + Eq + Send + Sync + 'static {
    type Memory: Clone + Debug + Hash + Eq + Default + Send + Sync;
    fn start() -> Self;
    fn step(
        &mut self,
        process: &Process,
        memory: &mut Self::Memory,
        now: Now,
        input: Input<Ledger>,
    ) -> Output<Ledger>;
    /// The successor this process holds and has not stored, with the end of the time in which
    /// it may still store it (`None`: no end).
    fn holds(&self, memory: &Self::Memory) -> Option<(Fingerprint, Option<Duration>)>;
    /// What the driver keeps of a memory after each step: the operator drops a memory with
    /// nothing in it (`Fencing::keep`).
    fn kept(memory: &mut Self::Memory);
    /// What the driver makes of a 2xx answer in `shape` that carries `successor`.
    fn read_answer(shape: Shape, successor: Ledger) -> Answer<Ledger>;
    /// Whether the driver tells the core that nothing was sent when it gives up between the
    /// claim and the request (a client Secret that cannot be read, say).
    fn reports_abandoned_claims() -> bool;
}

/// The operator's core.
impl Core for Refresh<Ledger> {
    type Memory = Memory<Ledger>;

    fn start() -> Self {
        Refresh::new()
    }

    fn step(
        &mut self,
        process: &Process,
        memory: &mut Memory<Ledger>,
        now: Now,
        input: Input<Ledger>,
    ) -> Output<Ledger> {
        Refresh::step(self, process, memory, now, input)
    }

    fn holds(&self, memory: &Memory<Ledger>) -> Option<(Fingerprint, Option<Duration>)> {
        self.successor()
            .or_else(|| memory.successor())
            .and_then(|(state, end)| state.token.clone().map(|t| (t, Some(end))))
    }

    fn kept(memory: &mut Memory<Ledger>) {
        if memory.is_idle() {
            *memory = Memory::default();
        }
    }

    fn read_answer(shape: Shape, successor: Ledger) -> Answer<Ledger> {
        match shape {
            // The refresh token is read from any 2xx it can be read from (src/oauth/response.rs).
            Shape::Json | Shape::Form => Answer::Issued { successor },
            Shape::Unreadable => Answer::Unknown,
        }
    }

    fn reports_abandoned_claims() -> bool {
        true
    }
}

/// How a 2xx answer reached the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    Json,
    /// `application/x-www-form-urlencoded`, as GitHub answers when it ignores `Accept`.
    Form,
    /// A body no refresh token can be read from (a JSON array, cut short before the member).
    Unreadable,
}

/// What the model lets happen.
#[derive(Clone, Debug)]
pub struct Config {
    pub processes: usize,
    /// Refreshes each process begins at most.
    pub refreshes: u8,
    /// The clock stops here.
    pub max_clock: u8,
    /// Faults in one behaviour at most.
    pub faults: u8,
    /// Which faults may happen.
    pub allowed: Faults,
    /// Seconds an access token lives.
    pub lifetime: u8,
    pub timing: Timing,
    /// Process 1 runs with a longer request timeout than the others (a rollout that changes
    /// `--token-request-timeout`): it reckons the published token stops serving earlier.
    pub uneven: bool,
    /// Times in one behaviour at most that a consumer reports the published access token
    /// unusable (the `oauth-token-operator.io/refresh` annotation): each starts a reconcile whose
    /// `Loaded` says so. Not a fault: it does not count against `faults`. 0 leaves it out.
    pub reports: u8,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// A process stops taking steps for any length of time (a frozen process, a long GC).
    pub pause: bool,
    pub crash: bool,
    pub lose_request: bool,
    pub lose_answer: bool,
    pub lose_write_answer: bool,
    pub unavailable: bool,
    pub odd_answers: bool,
    pub partition: bool,
    pub delete_state: bool,
    pub abandon_claim: bool,
}

impl Faults {
    pub fn all() -> Faults {
        Faults {
            pause: true,
            crash: true,
            lose_request: true,
            lose_answer: true,
            lose_write_answer: true,
            unavailable: true,
            odd_answers: true,
            partition: true,
            delete_state: true,
            abandon_claim: true,
        }
    }
}

/// Small numbers that keep every interesting order reachable: a claim lasts 3 s, a request
/// 1 s, the access token 6 s and is taken to stop serving 2 s before it expires; a holder stops
/// trying to store its successor 1 s before that (the allowance for clock skew, which the
/// model's one clock does not need but the protocol keeps).
pub fn small_timing() -> Timing {
    Timing {
        request_timeout: Duration::from_secs(1),
        claim_ttl: Duration::from_secs(3),
        commit_margin: Duration::from_secs(1),
        serving_margin: Duration::from_secs(2),
        clock_skew: Duration::from_secs(1),
    }
}

pub struct ChainModel<C: Core> {
    pub config: Config,
    _core: std::marker::PhantomData<C>,
}

impl<C: Core> ChainModel<C> {
    pub fn new(config: Config) -> ChainModel<C> {
        ChainModel {
            config,
            _core: std::marker::PhantomData,
        }
    }
}

/// The state Secret on the API server.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stored {
    pub version: u8,
    pub ledger: Ledger,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct World<C: Core> {
    pub clock: u8,
    pub server: Option<Stored>,
    pub versions: u8,
    /// `status.importedRefreshTokenSha256`.
    pub status_imported: Option<Fingerprint>,
    /// The OAuthToken's resourceVersion, as far as status writes change it.
    pub status_version: u8,
    pub provider: Provider,
    pub processes: Vec<Proc<C>>,
    pub faults: u8,
    /// Consumer reports so far (`Action::Report`).
    pub reports: u8,
    pub ghost: Ghost,
}

/// The provider: refresh tokens are `t0`, `t1`, ...; `t0` is the one a human imported.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Provider {
    /// The only refresh token it accepts.
    pub current: u8,
    /// Tokens issued so far (`t0` included).
    pub issued: u8,
    /// Presenting a used token revoked the whole family.
    pub revoked: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Proc<C: Core> {
    pub alive: bool,
    pub paused: bool,
    pub partitioned: bool,
    pub epoch: u8,
    pub cache: Option<Stored>,
    pub memory: C::Memory,
    pub run: Option<Run<C>>,
    pub begun: u8,
    /// When the controller would reconcile again after the last run (its requeue).
    pub not_before: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Run<C: Core> {
    pub core: C,
    /// The version the next write is conditioned on.
    pub version: Option<u8>,
    /// The OAuthToken's version when the run read it: the import is recorded in status on
    /// that condition.
    pub status_version: u8,
    pub next: Next,
    /// A successor the provider issued to this run and that reached it readable, whatever the
    /// core made of it.
    pub received: Option<u8>,
    /// The token this run presented.
    pub presented: Option<Fingerprint>,
    /// Whether this run sent its request.
    pub sent: bool,
    /// When the access token published before this run's claim expires.
    pub serving_until: Option<DateTime<Utc>>,
    /// This run began on a consumer's report that the published token no longer serves.
    pub reported: bool,
}

/// What the process does next in this run.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Next {
    Output(Output<Ledger>),
    /// A request is out: `token` presented, answer expected before `deadline`.
    Request {
        token: u8,
        deadline: u8,
        stage: Stage,
        /// The state as written with the claim.
        presented: Ledger,
    },
    /// The run is over; the status write remains (it records the import, as the controller's
    /// last status write does).
    Status(Option<Fingerprint>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    Sent,
    /// The provider answered; `issued` is the new token, `None` for `invalid_grant`.
    Answered {
        issued: Option<u8>,
    },
    /// 503 without looking at the token.
    Unavailable,
    /// Lost on the way, before or after the provider saw it.
    Lost,
}

/// What the properties are checked against: facts the processes may not know.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ghost {
    /// Tokens ever stored in the state Secret (bit n: `tn`).
    pub persisted: u32,
    /// Tokens with a presentation whose answer its process never read (bit n: `tn`).
    pub lost: u32,
    /// Presentations of each token after its first lost answer.
    pub sent_after_loss: [u8; 8],
    /// Presentations of each token that may have happened: requests sent, and claims left in
    /// flight by a process that crashed or could not end them.
    pub presented: [u8; 8],
    /// The tracked properties that failed (bits of `TRACKED`).
    pub violations: u8,
    /// When the state Secret's claim was first written, while it is in flight.
    pub claim_written_at: Option<u8>,
    /// When the claims of other processes were first written (a claim put back by a process
    /// whose own request was not sent is the same claim, as old as it was).
    pub claim_times: Vec<(Claim, u8)>,
    /// Refreshes committed.
    pub committed: u8,
    /// When each process made its current claim (before it was written: the holder counts
    /// from then).
    pub claimed_at: Vec<Option<u8>>,
    /// A presentation that followed a consumer's report was made while another live process
    /// could still store the successor: the report ended the wait for it, as it may.
    pub report_ended_wait: bool,
    /// Tokens whose in-flight claim of one process another process took over in a reconcile
    /// that followed a consumer's report (bit n: `tn`).
    pub claimed_on_report: u32,
    /// A process gave up a successor within the time others would have waited for it, because
    /// a claim that followed a report took the token it replaced.
    pub report_cost_successor: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Tick,
    /// A reconcile starts from the process's watch cache as it is (`false`: a cache that lags,
    /// holding whatever state it saw last, intermediate ones skipped) or caught up (`true`).
    Begin(usize, bool),
    /// A consumer reports the published access token unusable (it asks for a refresh with the
    /// annotation): a reconcile of process `p` starts at once, whatever its requeue, from its
    /// cache as in `Begin`, and its `Loaded` carries `token_reported_unusable`.
    Report(usize, bool),
    /// Carry out the run's next output (a request reaches the provider as it is sent).
    Execute(usize),
    Deliver(usize, Shape),
    Timeout(usize),
    Status(usize),
    // Faults.
    Pause(usize),
    Resume(usize),
    Crash(usize),
    Restart(usize),
    LoseRequest(usize),
    LoseAnswer(usize),
    /// The write is stored but its answer never reaches the process.
    LoseWriteAnswer(usize),
    Unavailable(usize),
    Partition(usize),
    Heal(usize),
    DeleteState,
    /// The driver gives up between the claim and the request.
    Abandon(usize),
}

/// Property 1, in two halves: a refresh token is never presented after its successor was
/// stored, nor while a live process can still store that successor. Reuse happens only where the
/// successor is truly gone: never stored, and its holder crashed or its window closed.
///
/// The first half holds whatever consumers report.
pub const NO_REUSE_AFTER_STORE: &str = "never presented after its successor was stored";
/// The second half is what a consumer's report may override, and only that: a reconcile that
/// began on a report that the published token no longer serves (`Loaded::
/// token_reported_unusable`) does not wait for a silent holder whose claim ran out, and so may
/// take over that claim and present its token while the holder could still store the successor.
/// Exempt is exactly that presentation: made in a reconcile that followed a report, of a token
/// whose in-flight claim of another process such a reconcile took over. Every other presentation
/// is checked. The report ends only that wait: a live claim is still honoured and kept, a token
/// whose successor was stored is never presented again, and after a lost answer there is at most
/// one more presentation, all checked with reports as without.
pub const NO_REUSE_WHILE_HELD: &str = "never presented while a live process can still store its \
    successor, unless by a reconcile that followed a consumer's report and took over the claim";
/// Property 2: after a lost answer, at most one more presentation, ever.
pub const ONCE_MORE: &str = "after a lost answer, at most one more presentation";
/// Property 3: no successor is dropped by a process that lives long enough to write it: one that
/// received it readable drops it only when the API is out of its reach, its claim ran out or
/// another process claimed the token it replaced.
///
/// Without reports another process claims that token only once the holder's claim ran out and
/// the published token stopped serving by the holder's reckoning (less the skew allowance): the
/// check counts the holder's time as that long, and a claim of another that has ended since
/// (answered, lost) as no excuse. A consumer's report ends that wait (see `NO_REUSE_WHILE_HELD`),
/// so a reconcile that followed a report may claim the token while the holder could still store
/// its successor; the holder then gives it up, as it must (storing it would write over that
/// claim, and after its presentation the successor is revoked or of unknown fate). Such a drop
/// is excused, and only such a drop: the token it replaced was claimed, over the holder's claim,
/// in a reconcile that followed a report. `REPORT_COSTS_SUCCESSOR` shows it happens.
pub const NO_DROP: &str = "no successor given up by a process that can store it, unless a \
    reconcile that followed a consumer's report claimed the token it replaced";
/// Property 4: without faults every refresh commits and no process waits forever (checked on
/// every behaviour's end).
pub const GOES_ON: &str = "without faults every refresh commits and nobody waits forever";
/// `AnswerLost` only after a lost answer and a claim for the one more presentation.
pub const NO_FALSE_DEATH: &str = "a chain is declared lost only with cause";
/// A live claim (in flight, younger than its lifetime) is never taken over by another claim...
pub const CLAIM_HONOURED: &str = "no claim over another process's live claim";
/// ...nor removed by any other write of another process.
pub const CLAIM_KEPT: &str = "no write of another process removes a live claim";
/// With reports (`Config::reports`), a report does end the wait for a holder that can still
/// store its successor in some behaviour: the exemption in `NO_REUSE_WHILE_HELD` is needed, and
/// the report's path is reached.
pub const REPORT_ENDS_WAIT: &str =
    "a consumer's report ends the wait for a silent holder that could still store its successor";
/// With reports, the exemption in `NO_DROP` is needed: a holder gives up a successor because a
/// reconcile that followed a report claimed the token it replaced.
pub const REPORT_COSTS_SUCCESSOR: &str =
    "a claim that followed a consumer's report makes a holder give up its successor";

/// Every property the ghost tracks, by bit.
const TRACKED: [&str; 7] = [
    NO_REUSE_AFTER_STORE,
    NO_REUSE_WHILE_HELD,
    ONCE_MORE,
    NO_DROP,
    NO_FALSE_DEATH,
    CLAIM_HONOURED,
    CLAIM_KEPT,
];

fn violate(ghost: &mut Ghost, property: &'static str) {
    if let Some(bit) = TRACKED.iter().position(|p| *p == property) {
        ghost.violations |= 1 << bit;
    }
}

fn violated(ghost: &Ghost, property: &'static str) -> bool {
    TRACKED
        .iter()
        .position(|p| *p == property)
        .is_some_and(|bit| ghost.violations & (1 << bit) != 0)
}

const BINDING_ORIGIN: &str = "https://idp.test:443";

fn binding() -> Binding {
    Binding {
        origin: BINDING_ORIGIN.to_string(),
        client_id: "app".to_string(),
    }
}

fn token_name(n: u8) -> Fingerprint {
    format!("t{n}")
}

fn token_number(name: &str) -> Option<u8> {
    name.strip_prefix('t')?.parse().ok()
}

fn epoch() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
}

fn now(clock: u8) -> Now {
    Now {
        mono: Duration::from_secs(clock.into()),
        wall: epoch() + TimeDelta::seconds(clock.into()),
    }
}

fn process(index: usize, epoch: u8, timing: Timing) -> Process {
    Process {
        holder: format!("p{index}.{epoch}"),
        timing,
    }
}

impl<C: Core> ChainModel<C> {
    fn process(&self, world: &World<C>, p: usize) -> Process {
        let mut timing = self.config.timing;
        if self.config.uneven && p == 1 {
            // Its margin is a longer request timeout's (a presentation and its commit must fit
            // in before the token stops serving); by more than the skew allowance, so the claim
            // must say what its holder reckons.
            timing.serving_margin += Duration::from_secs(2);
        }
        process(p, world.processes[p].epoch, timing)
    }

    /// Process `p`'s monotonic clock. In nanoseconds it never reads the same in two of its runs:
    /// the runs it began stand for the nanoseconds between them.
    fn mono(&self, world: &World<C>, p: usize) -> Duration {
        Duration::from_secs(world.clock.into())
            + Duration::from_nanos(world.processes[p].begun.into())
    }

    fn may_fault(&self, world: &World<C>) -> bool {
        world.faults < self.config.faults
    }

    /// Whether a running process can take a step now. Time waits for that: processes are fast
    /// unless a fault pauses them, so a pause is the only way to be late.
    fn busy(&self, world: &World<C>) -> bool {
        world.processes.iter().any(|p| {
            p.alive
                && !p.paused
                && match &p.run {
                    Some(run) => match &run.next {
                        Next::Request {
                            stage: Stage::Answered { .. } | Stage::Unavailable,
                            deadline,
                            ..
                        } => world.clock < *deadline,
                        Next::Request { deadline, .. } => world.clock >= *deadline,
                        Next::Status(_) => !p.partitioned,
                        Next::Output(_) => true,
                    },
                    None => p.begun < self.config.refreshes && world.clock >= p.not_before,
                }
        })
    }

    /// What process `p` holds and has not stored: a successor it is storing or keeps in
    /// memory, or one on its way to it.
    fn holding(&self, world: &World<C>, p: usize) -> Option<(u8, Option<Duration>)> {
        let proc = &world.processes[p];
        if !proc.alive {
            return None;
        }
        if let Some(Run {
            next:
                Next::Request {
                    stage: Stage::Answered { issued: Some(n) },
                    deadline,
                    ..
                },
            ..
        }) = &proc.run
        {
            return Some((*n, Some(Duration::from_secs((*deadline).into()))));
        }
        let fresh = C::start();
        let core = proc.run.as_ref().map(|r| &r.core).unwrap_or(&fresh);
        C::holds(core, &proc.memory).and_then(|(token, end)| Some((token_number(&token)?, end)))
    }

    /// Feeds `input` to process `p`'s core and records what it answers.
    fn feed(&self, world: &mut World<C>, p: usize, input: Input<Ledger>) {
        let process = self.process(world, p);
        let mut at = now(world.clock);
        at.mono = self.mono(world, p);
        let proc = &mut world.processes[p];
        let Some(run) = proc.run.as_mut() else {
            return;
        };
        let output = run.core.step(&process, &mut proc.memory, at, input);
        C::kept(&mut proc.memory);
        if let Output::Write(next) = &output
            && let Some(claim) = &next.claim
            && claim.holder == process.holder
            && !claim.lost
            && !claim.answered
            && !claim.successor_lost
            && world
                .server
                .as_ref()
                .and_then(|s| s.ledger.claim.as_ref())
                .is_none_or(|c| c.id != claim.id)
        {
            world.ghost.claimed_at[p] = Some(world.clock);
        }
        if let Output::Done(done) = &output {
            self.finished(world, p, done.clone());
            return;
        }
        if let Some(run) = world.processes[p].run.as_mut() {
            run.next = Next::Output(output);
        }
    }

    fn finished(&self, world: &mut World<C>, p: usize, done: Done<Ledger>) {
        let clock = world.clock;
        let holder = self.process(world, p).holder;
        // A claim of this run left in flight because its end could not be written reads to
        // others as a presentation whose answer was lost: they cannot tell it from one.
        if world.processes[p].partitioned && !matches!(done, Done::Parked { .. }) {
            self.left_in_flight(world, p);
        }
        // A successor the process received readable must be stored, or given up only when it
        // could not be: the API out of reach, its claim run out, or the token it replaced
        // claimed by another process.
        let received = world.processes[p].run.as_ref().and_then(|r| r.received);
        if let Some(received) = received
            && world.ghost.persisted & (1 << received) == 0
            && self.holding(world, p).is_none()
            && !matches!(done, Done::Committed { .. } | Done::Superseded { .. })
        {
            // Others present the token once more only after the claim ran out and, while the
            // published token serves, not before it stops serving by the holder's reckoning
            // (which its claim tells them): until then the successor could still be stored,
            // less the allowance the holder keeps for clock skew between processes.
            let claimed_at = world.ghost.claimed_at[p].unwrap_or(0);
            let claim_end = u64::from(claimed_at) + self.config.timing.claim_ttl.as_secs();
            let serving_until = world.processes[p]
                .run
                .as_ref()
                .and_then(|r| r.serving_until)
                .map_or(0, |until| (until - epoch()).num_seconds().max(0) as u64);
            let timing = self.process(world, p).timing;
            let others_wait_until = serving_until
                .saturating_sub(timing.serving_margin.as_secs())
                .saturating_sub(timing.clock_skew.as_secs());
            let within_claim = u64::from(clock) < claim_end.max(others_wait_until);
            let presented = world.processes[p]
                .run
                .as_ref()
                .and_then(|r| r.presented.clone());
            let unchallenged = world.server.as_ref().is_some_and(|s| {
                s.ledger.token == presented
                    && s.ledger
                        .claim
                        .as_ref()
                        .is_none_or(|c| c.holder == holder || c.lost || c.answered)
            });
            let claimed_on_report = presented
                .as_deref()
                .and_then(token_number)
                .is_some_and(|n| world.ghost.claimed_on_report & (1 << n) != 0);
            if !world.processes[p].partitioned && within_claim && unchallenged {
                if claimed_on_report {
                    world.ghost.report_cost_successor = true;
                } else {
                    violate(&mut world.ghost, NO_DROP);
                }
            }
        }
        if let Done::Dead {
            reason: why, state, ..
        } = &done
            && *why == reason::ANSWER_LOST
            && let Some(n) = state.token.as_deref().and_then(token_number)
            && (world.ghost.lost & (1 << n) == 0
                || world
                    .ghost
                    .presented
                    .get(usize::from(n))
                    .copied()
                    .unwrap_or(0)
                    < 2)
        {
            violate(&mut world.ghost, NO_FALSE_DEATH);
        }
        let after = match &done {
            Done::Committed { .. } => {
                world.ghost.committed = world.ghost.committed.saturating_add(1);
                0
            }
            Done::Waiting { after, .. } => after.as_secs().max(1),
            Done::Idle { .. } | Done::Dead { .. } => u64::from(self.config.max_clock),
            _ => 1,
        };
        world.processes[p].not_before = u8::try_from(u64::from(clock) + after).unwrap_or(u8::MAX);
        let imported = match &done {
            Done::Committed { state }
            | Done::Idle { state, .. }
            | Done::Waiting { state, .. }
            | Done::Dead { state, .. }
            | Done::NotIssued { state, .. }
            | Done::NotSent { state } => state.imported.clone(),
            _ => None,
        };
        let proc = &mut world.processes[p];
        if imported.is_some() && imported != world.status_imported {
            if let Some(run) = proc.run.as_mut() {
                run.next = Next::Status(imported);
            }
        } else {
            proc.run = None;
        }
    }

    /// The provider receives a presentation of `token` from process `presenter`.
    fn provide(&self, world: &mut World<C>, token: u8, presenter: Option<usize>) -> Option<u8> {
        if world.provider.revoked {
            return None;
        }
        if token == world.provider.current {
            world.provider.issued += 1;
            world.provider.current = world.provider.issued;
            return Some(world.provider.current);
        }
        if token < world.provider.current {
            // Reuse: the whole family is revoked. It is allowed only where the successor is
            // truly gone: never stored, and nobody who could still store it holds it.
            world.provider.revoked = true;
            let successor = token + 1;
            if world.ghost.persisted & (1 << successor) != 0 {
                violate(&mut world.ghost, NO_REUSE_AFTER_STORE);
            }
            let held = (0..world.processes.len())
                .filter(|&i| Some(i) != presenter)
                .any(|i| {
                    self.holding(world, i).is_some_and(|(held, end)| {
                        held == successor && end.is_none_or(|end| end > self.mono(world, i))
                    })
                });
            // The one exemption: a reconcile that followed a consumer's report took over the
            // claim another process left in flight on this token, and presents it.
            let reported = presenter
                .and_then(|p| world.processes[p].run.as_ref())
                .is_some_and(|r| r.reported)
                && world.ghost.claimed_on_report & (1 << token) != 0;
            if held && reported {
                world.ghost.report_ended_wait = true;
            } else if held {
                violate(&mut world.ghost, NO_REUSE_WHILE_HELD);
            }
        }
        None
    }
}

impl<C: Core> Model for ChainModel<C> {
    type State = World<C>;
    type Action = Action;

    fn init_states(&self) -> Vec<World<C>> {
        let processes = (0..self.config.processes)
            .map(|_| Proc {
                alive: true,
                paused: false,
                partitioned: false,
                epoch: 0,
                cache: None,
                memory: C::Memory::default(),
                run: None,
                begun: 0,
                not_before: 0,
            })
            .collect();
        vec![World {
            clock: 0,
            server: None,
            versions: 0,
            status_imported: None,
            status_version: 0,
            provider: Provider {
                current: 0,
                issued: 0,
                revoked: false,
            },
            processes,
            faults: 0,
            reports: 0,
            ghost: Ghost {
                claimed_at: vec![None; self.config.processes],
                ..Ghost::default()
            },
        }]
    }

    fn actions(&self, world: &World<C>, actions: &mut Vec<Action>) {
        // A behaviour ends at its first violation: its path is the counterexample.
        if world.ghost.violations != 0 {
            return;
        }
        let faults = self.may_fault(world);
        let allowed = self.config.allowed;
        if world.clock < self.config.max_clock && !self.busy(world) {
            actions.push(Action::Tick);
        }
        if faults && allowed.delete_state && world.server.is_some() {
            actions.push(Action::DeleteState);
        }
        for (p, proc) in world.processes.iter().enumerate() {
            if !proc.alive {
                actions.push(Action::Restart(p));
                continue;
            }
            if faults && allowed.crash {
                actions.push(Action::Crash(p));
            }
            if proc.paused {
                actions.push(Action::Resume(p));
                continue;
            }
            if faults && allowed.pause {
                actions.push(Action::Pause(p));
            }
            if faults && allowed.partition && !proc.partitioned {
                actions.push(Action::Partition(p));
            }
            if proc.partitioned {
                actions.push(Action::Heal(p));
            }
            let Some(run) = &proc.run else {
                if proc.begun < self.config.refreshes && world.clock >= proc.not_before {
                    if !proc.partitioned && proc.cache != world.server {
                        actions.push(Action::Begin(p, true));
                    }
                    actions.push(Action::Begin(p, false));
                }
                if proc.begun < self.config.refreshes && world.reports < self.config.reports {
                    if !proc.partitioned && proc.cache != world.server {
                        actions.push(Action::Report(p, true));
                    }
                    actions.push(Action::Report(p, false));
                }
                continue;
            };
            match &run.next {
                Next::Output(output) => {
                    actions.push(Action::Execute(p));
                    if faults
                        && allowed.lose_write_answer
                        && matches!(output, Output::Write(_) | Output::WriteBy(..))
                        && !proc.partitioned
                    {
                        actions.push(Action::LoseWriteAnswer(p));
                    }
                    if matches!(output, Output::Present { .. }) {
                        if faults && allowed.abandon_claim {
                            actions.push(Action::Abandon(p));
                        }
                        if faults && allowed.lose_request {
                            actions.push(Action::LoseRequest(p));
                        }
                        if faults && allowed.unavailable {
                            actions.push(Action::Unavailable(p));
                        }
                    }
                }
                Next::Status(_) => actions.push(Action::Status(p)),
                Next::Request {
                    stage, deadline, ..
                } => {
                    match stage {
                        Stage::Answered { issued } => {
                            if world.clock < *deadline {
                                actions.push(Action::Deliver(p, Shape::Json));
                                if issued.is_some() && faults && allowed.odd_answers {
                                    actions.push(Action::Deliver(p, Shape::Form));
                                    actions.push(Action::Deliver(p, Shape::Unreadable));
                                }
                            }
                            if faults && allowed.lose_answer {
                                actions.push(Action::LoseAnswer(p));
                            }
                        }
                        Stage::Unavailable => {
                            if world.clock < *deadline {
                                actions.push(Action::Deliver(p, Shape::Json));
                            }
                        }
                        Stage::Lost | Stage::Sent => {}
                    }
                    if world.clock >= *deadline {
                        actions.push(Action::Timeout(p));
                    }
                }
            }
        }
    }

    fn next_state(&self, last: &World<C>, action: Action) -> Option<World<C>> {
        let mut world = last.clone();
        match action.clone() {
            Action::Tick => {
                world.clock += 1;
                // An answer that has not arrived by its deadline is lost, whenever its process
                // notices.
                let late: Vec<u8> = world
                    .processes
                    .iter()
                    .filter_map(|proc| match &proc.run {
                        Some(Run {
                            next:
                                Next::Request {
                                    token, deadline, ..
                                },
                            ..
                        }) if world.clock >= *deadline => Some(*token),
                        _ => None,
                    })
                    .collect();
                for token in late {
                    mark_lost(&mut world.ghost, token);
                }
            }
            Action::DeleteState => {
                world.faults += 1;
                world.server = None;
                world.ghost.claim_written_at = None;
            }
            Action::Partition(p) => {
                world.faults += 1;
                world.processes[p].partitioned = true;
            }
            Action::Heal(p) => world.processes[p].partitioned = false,
            Action::Pause(p) => {
                world.faults += 1;
                world.processes[p].paused = true;
            }
            Action::Resume(p) => world.processes[p].paused = false,
            Action::Crash(p) => {
                world.faults += 1;
                let holder = self.process(&world, p).holder;
                if let Some(Run {
                    next: Next::Request { token, .. },
                    ..
                }) = &world.processes[p].run
                {
                    // Its answer dies with it: whatever the provider did counts as lost.
                    mark_lost(&mut world.ghost, *token);
                }
                // A claim it wrote and never ended may have been presented: nobody can tell.
                let _ = holder;
                self.left_in_flight(&mut world, p);
                let proc = &mut world.processes[p];
                proc.alive = false;
                proc.paused = false;
                proc.run = None;
                proc.memory = C::Memory::default();
            }
            Action::Restart(p) => {
                let server = world.server.clone();
                let proc = &mut world.processes[p];
                proc.alive = true;
                proc.partitioned = false;
                proc.epoch += 1;
                proc.cache = server;
            }
            Action::Begin(p, catch_up) | Action::Report(p, catch_up) => {
                let reported = matches!(action, Action::Report(..));
                if reported {
                    world.reports += 1;
                }
                if catch_up {
                    world.processes[p].cache = world.server.clone();
                }
                let proc = &mut world.processes[p];
                proc.begun += 1;
                let stored = proc.cache.clone();
                let offer_state = Ledger {
                    token: Some(token_name(0)),
                    imported: Some(token_name(0)),
                    binding: Some(binding()),
                    serving_until: stored.as_ref().and_then(|s| s.ledger.serving_until),
                    ..Ledger::default()
                };
                proc.run = Some(Run {
                    core: C::start(),
                    version: stored.as_ref().map(|s| s.version),
                    status_version: world.status_version,
                    next: Next::Status(None),
                    received: None,
                    presented: None,
                    sent: false,
                    serving_until: None,
                    reported,
                });
                let loaded = Loaded {
                    stored: stored.map(|s| s.ledger),
                    offer: Some(Offer {
                        fingerprint: token_name(0),
                        state: offer_state,
                    }),
                    imported_in_status: world.status_imported.clone(),
                    binding: binding(),
                    due: true,
                    may_refresh: true,
                    token_reported_unusable: reported,
                };
                self.feed(&mut world, p, Input::Loaded(loaded));
            }
            Action::Execute(p) => {
                let Some(Next::Output(output)) =
                    world.processes[p].run.as_ref().map(|r| r.next.clone())
                else {
                    return None;
                };
                self.execute(&mut world, p, output, false);
            }
            Action::LoseWriteAnswer(p) => {
                world.faults += 1;
                let Some(Next::Output(output)) =
                    world.processes[p].run.as_ref().map(|r| r.next.clone())
                else {
                    return None;
                };
                self.execute(&mut world, p, output, true);
            }
            Action::Abandon(p) => {
                world.faults += 1;
                if C::reports_abandoned_claims() {
                    self.feed(&mut world, p, Input::Answer(Answer::NotSent));
                } else if let Some(run) = world.processes[p].run.as_mut() {
                    run.next = Next::Status(None);
                }
            }
            Action::LoseRequest(p) | Action::Unavailable(p) => {
                world.faults += 1;
                let Some(Next::Output(output)) =
                    world.processes[p].run.as_ref().map(|r| r.next.clone())
                else {
                    return None;
                };
                let stage = if matches!(action, Action::LoseRequest(_)) {
                    Stage::Lost
                } else {
                    Stage::Unavailable
                };
                self.send(&mut world, p, output, stage);
            }
            Action::LoseAnswer(p) => {
                world.faults += 1;
                if let Some(Run {
                    next: Next::Request { stage, .. },
                    ..
                }) = world.processes[p].run.as_mut()
                {
                    *stage = Stage::Lost;
                }
            }
            Action::Deliver(p, shape) => {
                if shape != Shape::Json {
                    world.faults += 1;
                }
                let Some(Next::Request {
                    token,
                    stage,
                    presented,
                    ..
                }) = world.processes[p].run.as_ref().map(|r| r.next.clone())
                else {
                    return None;
                };
                let answer = match stage {
                    Stage::Unavailable => Answer::Refused { rejected: false },
                    Stage::Answered { issued: None } => Answer::Refused { rejected: true },
                    Stage::Answered {
                        issued: Some(issued),
                    } => {
                        let successor = Ledger {
                            token: Some(token_name(issued)),
                            claim: None,
                            rejected: None,
                            rotates: Some(true),
                            serving_until: Some(
                                epoch()
                                    + TimeDelta::seconds(
                                        i64::from(world.clock) + i64::from(self.config.lifetime),
                                    ),
                            ),
                            ..presented
                        };
                        if shape == Shape::Unreadable {
                            mark_lost(&mut world.ghost, token);
                        } else if let Some(run) = world.processes[p].run.as_mut() {
                            run.received = Some(issued);
                            run.presented = Some(token_name(token));
                        }
                        C::read_answer(shape, successor)
                    }
                    _ => return None,
                };
                self.feed(&mut world, p, Input::Answer(answer));
            }
            Action::Timeout(p) => {
                let Some(Next::Request { token, .. }) =
                    world.processes[p].run.as_ref().map(|r| r.next.clone())
                else {
                    return None;
                };
                mark_lost(&mut world.ghost, token);
                self.feed(&mut world, p, Input::Answer(Answer::Unknown));
            }
            Action::Status(p) => {
                let Some(Next::Status(imported)) =
                    world.processes[p].run.as_ref().map(|r| r.next.clone())
                else {
                    return None;
                };
                if !world.processes[p].partitioned {
                    if imported.is_some() {
                        world.status_imported = imported;
                        world.status_version = world.status_version.saturating_add(1);
                    }
                    world.processes[p].run = None;
                }
                // Partitioned: the status write is retried, as a reconcile error would be.
            }
        }
        Some(world)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties: Vec<Property<Self>> = vec![
            Property::always(NO_REUSE_AFTER_STORE, |_, w: &World<C>| {
                !violated(&w.ghost, NO_REUSE_AFTER_STORE)
            }),
            Property::always(NO_REUSE_WHILE_HELD, |_, w: &World<C>| {
                !violated(&w.ghost, NO_REUSE_WHILE_HELD)
            }),
            Property::always(ONCE_MORE, |_, w: &World<C>| !violated(&w.ghost, ONCE_MORE)),
            Property::always(NO_DROP, |_, w: &World<C>| !violated(&w.ghost, NO_DROP)),
            Property::always(NO_FALSE_DEATH, |_, w: &World<C>| {
                !violated(&w.ghost, NO_FALSE_DEATH)
            }),
            Property::always(CLAIM_HONOURED, |_, w: &World<C>| {
                !violated(&w.ghost, CLAIM_HONOURED)
            }),
            Property::always(CLAIM_KEPT, |_, w: &World<C>| {
                !violated(&w.ghost, CLAIM_KEPT)
            }),
            Property::sometimes("a refresh commits", |_, world: &World<C>| {
                world.ghost.committed > 0
            }),
        ];
        if self.config.reports > 0 {
            properties.push(Property::sometimes(REPORT_ENDS_WAIT, |_, w: &World<C>| {
                w.ghost.report_ended_wait
            }));
            properties.push(Property::sometimes(
                REPORT_COSTS_SUCCESSOR,
                |_, w: &World<C>| w.ghost.report_cost_successor,
            ));
        }
        if self.config.faults == 0 {
            properties.push(Property::eventually(GOES_ON, |_, world: &World<C>| {
                world.ghost.committed > 0
                    && !world.provider.revoked
                    && world.server.as_ref().and_then(|s| s.ledger.token.clone())
                        == Some(token_name(world.provider.current))
                    && world.processes.iter().all(|p| p.run.is_none())
            }));
        }
        properties
    }
}

fn mark_lost(ghost: &mut Ghost, token: u8) {
    ghost.lost |= 1 << token;
}

impl<C: Core> ChainModel<C> {
    /// Process `p`'s claim is left in flight on the server while it cannot end it (crashed, or
    /// out of the API's reach): others may read it as a presentation whose answer was lost.
    fn left_in_flight(&self, world: &mut World<C>, p: usize) {
        let holder = self.process(world, p).holder;
        let sent = world.processes[p].run.as_ref().is_some_and(|r| r.sent);
        if let Some(claim) = world.server.as_ref().and_then(|s| s.ledger.claim.as_ref())
            && claim.holder == holder
            && !claim.lost
            && !claim.answered
            && !claim.successor_lost
            && let Some(n) = token_number(&claim.fingerprint)
        {
            if !sent && let Some(count) = world.ghost.presented.get_mut(usize::from(n)) {
                *count = count.saturating_add(1);
            }
            mark_lost(&mut world.ghost, n);
        }
    }
}

impl<C: Core> ChainModel<C> {
    /// Sends the request `output` asks for; `Stage::Sent` means it reaches the provider.
    fn send(&self, world: &mut World<C>, p: usize, output: Output<Ledger>, stage: Stage) {
        let Output::Present { state, deadline } = output else {
            return;
        };
        let deadline = u8::try_from(deadline.as_secs()).unwrap_or(u8::MAX);
        let timeout = u8::try_from(self.process(world, p).timing.request_timeout.as_secs())
            .unwrap_or(u8::MAX);
        if world.clock.saturating_add(timeout) > deadline {
            return self.feed(world, p, Input::Answer(Answer::NotSent));
        }
        let Some(token) = state.token.as_deref().and_then(token_number) else {
            return self.feed(world, p, Input::Answer(Answer::NotSent));
        };
        if let Some(run) = world.processes[p].run.as_mut() {
            run.sent = true;
            run.serving_until = state.serving_until;
        }
        if let Some(count) = world.ghost.presented.get_mut(usize::from(token)) {
            *count = count.saturating_add(1);
        }
        if world.ghost.lost & (1 << token) != 0
            && let Some(count) = world.ghost.sent_after_loss.get_mut(usize::from(token))
        {
            *count = count.saturating_add(1);
            if *count > 1 {
                violate(&mut world.ghost, ONCE_MORE);
            }
        }
        let stage = match stage {
            Stage::Sent => Stage::Answered {
                issued: self.provide(world, token, Some(p)),
            },
            other => other,
        };
        if let Some(run) = world.processes[p].run.as_mut() {
            run.next = Next::Request {
                token,
                deadline,
                stage,
                presented: state,
            };
        }
    }

    fn execute(&self, world: &mut World<C>, p: usize, output: Output<Ledger>, lose_answer: bool) {
        let partitioned = world.processes[p].partitioned;
        match output {
            Output::WriteBy(_, by) if self.mono(world, p) >= by => {
                self.feed(world, p, Input::Failed)
            }
            Output::Write(next) | Output::WriteBy(next, _) => {
                if partitioned {
                    return self.feed(world, p, Input::Failed);
                }
                let expected = world.processes[p].run.as_ref().and_then(|r| r.version);
                let current = world.server.as_ref().map(|s| s.version);
                if expected != current {
                    return self.feed(world, p, Input::Conflict);
                }
                world.versions += 1;
                let version = world.versions;
                if let Some(n) = next.token.as_deref().and_then(token_number) {
                    world.ghost.persisted |= 1 << n;
                }
                let holder = self.process(world, p).holder;
                let in_flight = |c: &&oauth_token_operator::controller::chain::protocol::Claim| {
                    !c.lost && !c.answered && !c.successor_lost
                };
                let new_claim = next
                    .claim
                    .as_ref()
                    .filter(in_flight)
                    .filter(|c| c.holder == holder);
                let previous_claim = world.server.as_ref().and_then(|s| s.ledger.claim.clone());
                let ttl = u8::try_from(self.config.timing.claim_ttl.as_secs()).unwrap_or(u8::MAX);
                // A claim taken over in flight is read as a presentation whose answer was lost,
                // whatever its holder did: nobody else can tell.
                if let Some(old) = previous_claim.as_ref().filter(in_flight)
                    && old.holder != holder
                    && new_claim.is_some()
                    && let Some(n) = token_number(&old.fingerprint)
                {
                    let unsent = world.processes.iter().enumerate().any(|(q, proc)| {
                        proc.alive
                            && self.process(world, q).holder == old.holder
                            && proc.run.as_ref().is_some_and(|r| !r.sent)
                    });
                    if unsent && let Some(count) = world.ghost.presented.get_mut(usize::from(n)) {
                        *count = count.saturating_add(1);
                    }
                    mark_lost(&mut world.ghost, n);
                    if world.processes[p].run.as_ref().is_some_and(|r| r.reported) {
                        world.ghost.claimed_on_report |= 1 << n;
                    }
                }
                if let Some(live) = previous_claim.as_ref().filter(in_flight)
                    && live.holder != holder
                    && next.claim.as_ref() != Some(live)
                    && world
                        .ghost
                        .claim_written_at
                        .is_some_and(|at| world.clock < at.saturating_add(ttl))
                {
                    violate(
                        &mut world.ghost,
                        if new_claim.is_some() {
                            CLAIM_HONOURED
                        } else {
                            CLAIM_KEPT
                        },
                    );
                }
                world.ghost.claim_written_at = match next.claim.as_ref().filter(in_flight) {
                    Some(claim) if previous_claim.as_ref() == Some(claim) => {
                        world.ghost.claim_written_at
                    }
                    // A claim of the writer's own is new; another's is one put back.
                    Some(claim) if claim.holder == holder => {
                        world.ghost.claim_times.push((claim.clone(), world.clock));
                        Some(world.clock)
                    }
                    Some(claim) => world
                        .ghost
                        .claim_times
                        .iter()
                        .rev()
                        .find(|(known, _)| known == claim)
                        .map(|(_, at)| *at),
                    None => None,
                };
                world.server = Some(Stored {
                    version,
                    ledger: next.clone(),
                });
                if lose_answer {
                    // The process does not learn its write was stored; its next write is
                    // conditioned on the version it knew.
                    return self.feed(world, p, Input::Failed);
                }
                if let Some(run) = world.processes[p].run.as_mut() {
                    run.version = Some(version);
                }
                self.feed(world, p, Input::Stored(next));
            }
            Output::Reload => {
                if partitioned {
                    return self.feed(world, p, Input::Failed);
                }
                let fresh = world.server.clone();
                if let Some(run) = world.processes[p].run.as_mut() {
                    run.version = fresh.as_ref().map(|s| s.version);
                }
                self.feed(world, p, Input::Reloaded(fresh.map(|s| s.ledger)));
            }
            Output::RecordImport(fingerprint) => {
                let seen = world.processes[p].run.as_ref().map(|r| r.status_version);
                if partitioned || seen != Some(world.status_version) {
                    return self.feed(world, p, Input::ImportNotRecorded);
                }
                world.status_imported = Some(fingerprint);
                world.status_version = world.status_version.saturating_add(1);
                let version = world.status_version;
                if let Some(run) = world.processes[p].run.as_mut() {
                    run.status_version = version;
                }
                self.feed(world, p, Input::ImportRecorded);
            }
            output @ Output::Present { .. } => self.send(world, p, output, Stage::Sent),
            Output::Done(done) => self.finished(world, p, done),
        }
    }
}
