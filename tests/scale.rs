//! A small run of the scale benchmark (`cargo bench --bench scale`), checking the API cost
//! (counts, never times): no API request and no token request while idle or after a restart, no
//! read per refresh, no refresh token presented twice, and a bare writer that replays exactly
//! the cold start's writes.

#[path = "support/scale.rs"]
mod scale;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_cost_at_the_floor_for_300_tokens() {
    let tokens = 300;
    let report = scale::run(scale::Options {
        tokens,
        per_namespace: 100,
        short_lifetime: Duration::from_secs(12),
        sustain: Duration::from_secs(16),
        idle: Duration::from_secs(5),
        operator_args: Vec::new(),
        verbose: std::env::var_os("SCALE_VERBOSE").is_some(),
    })
    .await;
    report.print();

    assert_eq!(
        report.cold_start_token_requests, tokens as u64,
        "one token request per OAuthToken at a cold start"
    );
    assert_eq!(report.idle_token_requests, 0, "idle: no token request");
    assert_eq!(
        report.idle_api.point_requests(),
        0.0,
        "idle: no API request besides the watches: {:?}",
        report.idle_api
    );
    assert_eq!(
        report.restart_token_requests, 0,
        "restart: every token was valid"
    );
    assert_eq!(
        report.restart_api.point_requests(),
        0.0,
        "restart: reads come from the caches and nothing needs writing: {:?}",
        report.restart_api
    );

    let refreshes = report.sustained_refreshes as f64;
    assert!(
        refreshes >= tokens as f64,
        "every token refreshed at least once in the window: {refreshes}"
    );
    let api = &report.sustained_api;
    // The window's edges cut through refreshes in flight: their writes may fall inside while
    // their token request fell outside.
    let edge = 10.0;
    assert_eq!(
        api.verb("get"),
        0.0,
        "a refresh reads nothing from the API: {api:?}"
    );
    // A rotating refresh token is claimed, then committed: two state writes; client
    // credentials keep no state Secret. Every refresh writes the token Secret and status once,
    // and nothing else: no state Secret is created, no Event published.
    let rotating = report.sustained_rotating_refreshes as f64;
    let near = |measured: f64, expected: f64| (measured - expected).abs() <= edge;
    assert!(
        near(api.of("update", "secrets"), 2.0 * rotating),
        "state writes: claim and commit per rotating refresh ({rotating}): {api:?}"
    );
    assert_eq!(api.of("create", "secrets"), 0.0, "{api:?}");
    assert_eq!(
        api.of("create", "events"),
        0.0,
        "no Event per routine refresh: {api:?}"
    );
    assert!(
        near(api.of("patch", "secrets"), refreshes),
        "one token Secret write per refresh: {api:?}"
    );
    assert!(
        near(api.of("patch", "oauthtokens/status"), refreshes),
        "one status write per refresh: {api:?}"
    );
    assert_eq!(
        api.writes(),
        api.of("update", "secrets")
            + api.of("patch", "secrets")
            + api.of("patch", "oauthtokens/status"),
        "no other writes: {api:?}"
    );

    // The cold start at the floor: a rotating chain's import is recorded in status, its state
    // Secret created with the first claim, committed; client credentials keep no state Secret;
    // every OAuthToken gets its token Secret, one status write and one Event.
    let cold = &report.cold_start_api;
    let n = tokens as f64;
    assert_eq!(cold.of("create", "secrets"), n / 2.0, "{cold:?}");
    assert_eq!(cold.of("patch", "secrets"), n, "{cold:?}");
    assert_eq!(cold.of("patch", "oauthtokens/status"), 1.5 * n, "{cold:?}");
    assert_eq!(cold.of("create", "events"), n, "{cold:?}");
    // One commit per chain; a commit that meets a conflict is repeated on the fresh version
    // (compare-and-swap), which a busy API server may cause now and then.
    let commits = cold.of("update", "secrets");
    assert!(
        commits >= n / 2.0 && commits <= n / 2.0 + 3.0,
        "one commit per rotating chain: {cold:?}"
    );
    assert_eq!(
        report.reused_refresh_tokens, 0,
        "no refresh token presented twice"
    );
    assert_eq!(report.rejected_requests, 0);

    // The bare writer replays exactly the cold start's writes, kind by kind, and nothing else.
    let floor = &report.floor;
    assert!(
        floor.not_replayed.is_empty(),
        "the cold start made writes the floor does not replay: {:?}",
        floor.not_replayed
    );
    assert_eq!(floor.concurrency, 32);
    let cold = &report.cold_start_api;
    assert_eq!(
        floor.plan.values().sum::<f64>(),
        cold.writes(),
        "the floor replays every write: {cold:?}"
    );
    for kind in scale::REPLAYED_WRITES {
        let (verb, resource) = kind.split_once(' ').unwrap();
        assert_eq!(
            floor.api.of(verb, resource),
            cold.of(verb, resource),
            "{kind}: the floor made as many as the cold start"
        );
    }
    assert_eq!(
        floor.api.point_requests(),
        floor.api.writes(),
        "the floor only writes: {:?}",
        floor.api
    );
}
