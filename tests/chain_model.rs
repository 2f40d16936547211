//! The chain protocol, model-checked (tests/support/chain_model.rs has the model and its
//! properties). The operator's core keeps every property in every behaviour up to the bounds
//! below; the protocol as it was before (tests/support/legacy_chain.rs) breaks each of them, which
//! shows that the properties can fail.
//!
//! One configuration lets a consumer report the published token unusable (the refresh
//! annotation, `Loaded::token_reported_unusable`): a reconcile that follows the report ends the
//! wait for a silent holder whose claim ran out, on purpose. Its presentation is exempt from the
//! second half of property 1, and the successor its claim makes the holder give up from property
//! 3; every other property holds as without reports.
//!
//! `CHAIN_MODEL_DEEP=1 cargo test --release --test chain_model deeper -- --nocapture` checks
//! deeper bounds (two faults over 12 s; three processes with two refreshes each); it takes
//! minutes.

#[path = "support/chain_model.rs"]
mod chain_model;
#[path = "support/legacy_chain.rs"]
mod legacy_chain;

use std::time::Instant;

use chain_model::{
    CLAIM_HONOURED, CLAIM_KEPT, ChainModel, Config, Core, Faults, GOES_ON, NO_DROP, NO_FALSE_DEATH,
    NO_REUSE_AFTER_STORE, NO_REUSE_WHILE_HELD, ONCE_MORE, REPORT_COSTS_SUCCESSOR, REPORT_ENDS_WAIT,
    small_timing,
};
use legacy_chain::Legacy;
use oauth_token_operator::controller::chain::protocol::{Ledger, Refresh};
use stateright::{Checker, Model};

type OperatorCore = Refresh<Ledger>;

fn config(processes: usize, refreshes: u8, max_clock: u8, faults: u8, allowed: Faults) -> Config {
    Config {
        processes,
        refreshes,
        max_clock,
        faults,
        allowed,
        lifetime: 6,
        timing: small_timing(),
        uneven: false,
        reports: 0,
    }
}

/// Checks every behaviour of `config` (breadth first, two threads) and returns the checker.
fn check<C: Core>(name: &str, config: Config) -> impl Checker<ChainModel<C>> {
    let started = Instant::now();
    let checker = ChainModel::<C>::new(config)
        .checker()
        .threads(2)
        .spawn_bfs()
        .join();
    println!(
        "{name}: {} states ({} unique), depth {}, {:.1?}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed()
    );
    checker
}

#[test]
fn two_processes_with_any_two_faults_keep_every_property() {
    let checker = check::<OperatorCore>(
        "2 processes, 2 refreshes each, 9 s, any 2 faults",
        config(2, 2, 9, 2, Faults::all()),
    );
    checker.assert_properties();
}

#[test]
fn two_processes_with_three_refreshes_each_and_any_fault_keep_every_property() {
    check::<OperatorCore>(
        "2 processes, 3 refreshes each, 10 s, any 1 fault",
        config(2, 3, 10, 1, Faults::all()),
    )
    .assert_properties();
}

#[test]
fn processes_with_different_request_timeouts_keep_every_property() {
    // Process 1 reckons the published token stops serving a second earlier than process 0 (a
    // rollout that changed --token-request-timeout): it must still wait for process 0's commit.
    check::<OperatorCore>(
        "2 processes with different timeouts, 3 refreshes each, 12 s, 10 s tokens, any 1 fault",
        Config {
            uneven: true,
            // Tokens that serve long after a claim ran out: the wait for a silent holder counts.
            lifetime: 10,
            ..config(2, 3, 12, 1, Faults::all())
        },
    )
    .assert_properties();
}

#[test]
fn a_consumer_report_ends_only_the_wait_for_a_silent_holder() {
    // A consumer reports the published token unusable once, at any time, to either process: the
    // reconcile it starts presents the token once more without waiting for a silent holder whose
    // claim ran out. That may reuse a token whose successor the holder could still store (the
    // exemption in NO_REUSE_WHILE_HELD; it happens: REPORT_ENDS_WAIT), and the holder then gives
    // that successor up (the exemption in NO_DROP; it happens: REPORT_COSTS_SUCCESSOR). Every
    // other property holds as without reports: the report never lets a live claim be taken or
    // written over, a stored successor's token be presented, or a token be presented twice after
    // a lost answer.
    let checker = check::<OperatorCore>(
        "2 processes, 2 refreshes each, 10 s, 10 s tokens, any 1 fault, 1 report",
        Config {
            reports: 1,
            // Tokens that serve long after a claim ran out: there is a wait for the report to end.
            lifetime: 10,
            ..config(2, 2, 10, 1, Faults::all())
        },
    );
    checker.assert_properties();
    assert!(checker.discovery(REPORT_ENDS_WAIT).is_some());
    assert!(checker.discovery(REPORT_COSTS_SUCCESSOR).is_some());
}

#[test]
fn three_processes_with_any_fault_keep_every_property() {
    check::<OperatorCore>(
        "3 processes, 1 refresh each, 10 s, any 1 fault",
        config(3, 1, 10, 1, Faults::all()),
    )
    .assert_properties();
}

#[test]
fn without_faults_every_refresh_commits_and_nobody_waits_forever() {
    let checker = check::<OperatorCore>(
        "3 processes, 2 refreshes each, 12 s, no fault",
        config(3, 2, 12, 0, Faults::default()),
    );
    checker.assert_properties();
    assert!(checker.discovery(GOES_ON).is_none());
}

#[test]
fn deeper_bounds_behind_a_flag() {
    if std::env::var_os("CHAIN_MODEL_DEEP").is_none() {
        return;
    }
    for (name, config) in [
        (
            "2 processes, 2 refreshes each, 12 s, any 2 faults",
            config(2, 2, 12, 2, Faults::all()),
        ),
        (
            "3 processes, 2 refreshes each, 8 s, any 1 fault",
            config(3, 2, 8, 1, Faults::all()),
        ),
    ] {
        check::<OperatorCore>(name, config).assert_properties();
    }
}

/// The bugs the previous core had, each with the property that catches it and the smallest
/// model that shows it.
fn known_bugs() -> Vec<(&'static str, &'static str, Config)> {
    let only = |f: fn(&mut Faults)| {
        let mut faults = Faults::default();
        f(&mut faults);
        faults
    };
    vec![
        // A claim written again after an unsent request looks like the first to an observer.
        (
            "(a) claims without identity",
            CLAIM_HONOURED,
            config(2, 3, 10, 1, only(|f| f.pause = true)),
        ),
        // Lost, 503, lost: the 503 cleared the claim, and with it the count.
        (
            "(b) a complete answer resets the count of lost ones",
            ONCE_MORE,
            config(
                1,
                4,
                12,
                3,
                only(|f| {
                    f.lose_answer = true;
                    f.unavailable = true;
                }),
            ),
        ),
        // A rotated refresh token in a form body is thrown away.
        (
            "(c) a 2xx that is not a JSON object",
            NO_DROP,
            config(1, 2, 8, 1, only(|f| f.odd_answers = true)),
        ),
        // A late commit writes over the claim of the process presenting now.
        (
            "(d) a commit not bounded by the claim",
            CLAIM_KEPT,
            config(2, 4, 7, 1, only(|f| f.partition = true)),
        ),
        // The successor stays in memory, unbounded, while its claim runs out.
        (
            "(e) a parked successor leaves its claim to run out",
            NO_REUSE_WHILE_HELD,
            config(2, 3, 12, 1, only(|f| f.partition = true)),
        ),
        // A claim given up before the request is never released.
        (
            "(f) an abandoned claim",
            NO_FALSE_DEATH,
            config(
                1,
                4,
                12,
                2,
                only(|f| {
                    f.abandon_claim = true;
                    f.lose_answer = true;
                }),
            ),
        ),
        // Killed before the status write that records the import, then a deleted state Secret.
        (
            "(h) the import recorded in status last",
            NO_REUSE_AFTER_STORE,
            config(
                1,
                3,
                10,
                2,
                only(|f| {
                    f.crash = true;
                    f.delete_state = true;
                }),
            ),
        ),
    ]
}

#[test]
fn the_previous_core_breaks_a_property_in_each_known_bug() {
    for (bug, property, config) in known_bugs() {
        let checker = check::<Legacy>(bug, config);
        let Some(path) = checker.discovery(property) else {
            panic!("{bug}: the previous core should break {property:?}");
        };
        println!("{bug} breaks {property:?}: {:?}", path.into_actions());
    }
}

#[test]
fn the_operator_core_keeps_every_property_in_the_same_models() {
    for (bug, _, config) in known_bugs() {
        check::<OperatorCore>(bug, config).assert_properties();
    }
}
