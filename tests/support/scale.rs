//! The scale benchmark: N OAuthTokens (half rotating refresh tokens, half client credentials)
//! against a Kubernetes API — the in-process test server, or a real cluster when
//! `E2E_KUBECONFIG` is set — and a fast local token endpoint, with the real operator binary as a
//! subprocess. `benches/scale.rs` prints the figures; `tests/scale.rs` runs a small instance and
//! checks the counts (never the times).
//!
//! API requests are counted by the operator itself (`oauth_token_operator_kube_api_requests_total`,
//! scraped from its /metrics) so that the figures are the same on any cluster; token requests and
//! their timing are recorded by the token endpoint.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config, Resource, ResourceExt};
use kube_test_apiserver::{Options as ServerOptions, TestApiServer};
use oauth_token_operator::api::{OAuthToken, OAuthTokenStatus, OWNER_LABEL};
use oauth_token_operator::apiclient;
use oauth_token_operator::metrics::Metrics;
use serde_json::json;

const CRD_YAML: &str = include_str!("../../crds/oauthtoken.yaml");
const CRD_NAME: &str = "oauthtokens.oauth-token-operator.io";

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub tokens: usize,
    /// OAuthTokens per namespace.
    pub per_namespace: usize,
    /// Access-token lifetime during the sustained-refresh phase; with the default refresh lead
    /// (a third of the lifetime) every token refreshes every two thirds of it.
    pub short_lifetime: Duration,
    /// Length of the window in which sustained refreshes are measured.
    pub sustain: Duration,
    /// Length of the idle window.
    pub idle: Duration,
    /// Extra flags for `oauth-token-operator run`.
    pub operator_args: Vec<String>,
    /// Print progress lines.
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tokens: 10_000,
            per_namespace: 1_000,
            short_lifetime: Duration::from_secs(30),
            sustain: Duration::from_secs(60),
            idle: Duration::from_secs(10),
            operator_args: Vec::new(),
            verbose: true,
        }
    }
}

/// API requests by verb (`get`, `list`, `watch`, `create`, `update`, `patch`, ...), summed over
/// resources, and by `verb resource`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ApiCounts {
    pub by_verb: BTreeMap<String, f64>,
    pub by_verb_and_resource: BTreeMap<String, f64>,
}

impl ApiCounts {
    pub fn since(&self, earlier: &ApiCounts) -> ApiCounts {
        let diff = |now: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>| {
            now.iter()
                .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v != 0.0)
                .collect()
        };
        ApiCounts {
            by_verb: diff(&self.by_verb, &earlier.by_verb),
            by_verb_and_resource: diff(&self.by_verb_and_resource, &earlier.by_verb_and_resource),
        }
    }

    pub fn verb(&self, verb: &str) -> f64 {
        self.by_verb.get(verb).copied().unwrap_or(0.0)
    }

    pub fn of(&self, verb: &str, resource: &str) -> f64 {
        self.by_verb_and_resource
            .get(&format!("{verb} {resource}"))
            .copied()
            .unwrap_or(0.0)
    }

    /// Every request except the long-lived list/watch of the caches.
    pub fn point_requests(&self) -> f64 {
        self.by_verb
            .iter()
            .filter(|(verb, _)| *verb != "watch" && *verb != "list")
            .map(|(_, n)| n)
            .sum()
    }

    pub fn writes(&self) -> f64 {
        ["create", "update", "patch", "delete"]
            .iter()
            .map(|verb| self.verb(verb))
            .sum()
    }

    fn per(&self, n: f64) -> String {
        let mut parts: Vec<String> = self
            .by_verb
            .iter()
            .map(|(verb, count)| format!("{verb} {:.2}", count / n.max(1.0)))
            .collect();
        if parts.is_empty() {
            parts.push("none".to_string());
        }
        parts.join(", ")
    }
}

/// The figures of one run.
#[derive(Debug, Default)]
pub struct Report {
    pub tokens: usize,
    pub cold_start: Duration,
    pub cold_start_api: ApiCounts,
    pub cold_start_token_requests: u64,
    pub peak_rss_kib: u64,
    pub steady_rss_kib: u64,
    pub idle_window: Duration,
    pub idle_api: ApiCounts,
    pub idle_token_requests: u64,
    pub restart_settled: Duration,
    pub restart_api: ApiCounts,
    pub restart_token_requests: u64,
    pub restart_peak_rss_kib: u64,
    pub sustained_refreshes: u64,
    /// Of those, refreshes of rotating refresh tokens (the others are client credentials).
    pub sustained_rotating_refreshes: u64,
    pub sustained_window: Duration,
    pub sustained_api: ApiCounts,
    pub sustained_rss_kib: u64,
    pub lateness_p50: Duration,
    pub lateness_p99: Duration,
    pub lateness_max: Duration,
    pub late_over_1s: usize,
    pub reused_refresh_tokens: u64,
    pub rejected_requests: u64,
    pub shutdown: Duration,
    /// The bare writer: the operator's cold-start writes replayed with nothing else.
    pub floor: FloorReport,
}

impl Report {
    pub fn print(&self) {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let n = self.tokens as f64;
        println!(
            "scale benchmark: {} OAuthTokens (half rotating, half client credentials)",
            self.tokens
        );
        println!(
            "  cold start: all Ready after {:.1} s",
            self.cold_start.as_secs_f64()
        );
        println!("    token requests: {}", self.cold_start_token_requests);
        println!("    API requests per token: {}", self.cold_start_api.per(n));
        println!(
            "  RSS: peak {:.1} MiB (cold start), steady {:.1} MiB (idle), {:.1} MiB under sustained refreshes",
            mib(self.peak_rss_kib),
            mib(self.steady_rss_kib),
            mib(self.sustained_rss_kib)
        );
        println!(
            "  idle {:.0} s: {} API requests besides watches, {} token requests",
            self.idle_window.as_secs_f64(),
            self.idle_api.point_requests() as i64,
            self.idle_token_requests
        );
        println!(
            "  restart with every token valid: done after {:.1} s, {} token requests, peak RSS {:.1} MiB",
            self.restart_settled.as_secs_f64(),
            self.restart_token_requests,
            mib(self.restart_peak_rss_kib)
        );
        println!("    API requests per token: {}", self.restart_api.per(n));
        let window = self.sustained_window.as_secs_f64().max(0.001);
        println!(
            "  sustained: {:.0} refreshes/s over {:.0} s",
            self.sustained_refreshes as f64 / window,
            window
        );
        println!(
            "    API requests per refresh: {}",
            self.sustained_api.per(self.sustained_refreshes as f64)
        );
        println!(
            "    lateness after the scheduled time: p50 {} ms, p99 {} ms, max {} ms; {} refreshes more than 1 s late",
            self.lateness_p50.as_millis(),
            self.lateness_p99.as_millis(),
            self.lateness_max.as_millis(),
            self.late_over_1s
        );
        println!(
            "  chain safety: {} refresh tokens presented twice, {} token requests rejected",
            self.reused_refresh_tokens, self.rejected_requests
        );
        println!(
            "  shutdown after SIGTERM: {:.1} s",
            self.shutdown.as_secs_f64()
        );
        self.floor.print(self.cold_start, n);
    }
}

// --- the token endpoint -------------------------------------------------------------------------

/// A token endpoint as fast as a local HTTP server can be: client credentials and rotating
/// refresh tokens with reuse detection. Every OAuthToken has its own client id, so each request
/// is attributed to one OAuthToken.
#[derive(Default)]
pub struct Endpoint {
    lifetime_secs: AtomicU64,
    requests: AtomicU64,
    /// Requests of the refresh-token grant.
    rotating: AtomicU64,
    reused: AtomicU64,
    rejected: AtomicU64,
    /// Client id → generation of the current refresh token.
    chains: Mutex<HashMap<String, u64>>,
    /// When each request arrived, by client id.
    arrivals: Mutex<Vec<(SystemTime, String)>>,
    counter: AtomicU64,
}

impl Endpoint {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    fn set_lifetime(&self, lifetime: Duration) {
        self.lifetime_secs
            .store(lifetime.as_secs(), Ordering::SeqCst);
    }

    fn arrivals_since(&self, from: SystemTime) -> Vec<(SystemTime, String)> {
        self.arrivals
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= from)
            .cloned()
            .collect()
    }
}

fn client_id(headers: &HeaderMap, form: &HashMap<String, String>) -> Option<String> {
    if let Some(id) = form.get("client_id") {
        return Some(id.clone());
    }
    let basic = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, _) = text.split_once(':')?;
    Some(
        form_urlencoded::parse(format!("x={id}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default(),
    )
}

async fn token(
    State(endpoint): State<Arc<Endpoint>>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let arrived = SystemTime::now();
    endpoint.requests.fetch_add(1, Ordering::SeqCst);
    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let Some(client) = client_id(&headers, &form) else {
        endpoint.rejected.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    };
    endpoint
        .arrivals
        .lock()
        .unwrap()
        .push((arrived, client.clone()));
    let n = endpoint.counter.fetch_add(1, Ordering::SeqCst);
    let lifetime = endpoint.lifetime_secs.load(Ordering::SeqCst);
    let mut answer = json!({
        "access_token": format!("at-{n:016x}-{:016x}", rand::random::<u64>()),
        "token_type": "Bearer",
        "expires_in": lifetime,
    });
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some("refresh_token") => {
            endpoint.rotating.fetch_add(1, Ordering::SeqCst);
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            let mut chains = endpoint.chains.lock().unwrap();
            let generation = chains.entry(client.clone()).or_insert(0);
            if presented != refresh_token(&client, *generation) {
                endpoint.reused.fetch_add(1, Ordering::SeqCst);
                endpoint.rejected.fetch_add(1, Ordering::SeqCst);
                return (
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({"error": "invalid_grant"})),
                )
                    .into_response();
            }
            *generation += 1;
            answer["refresh_token"] = json!(refresh_token(&client, *generation));
        }
        _ => {
            endpoint.rejected.fetch_add(1, Ordering::SeqCst);
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "unsupported_grant_type"})),
            )
                .into_response();
        }
    }
    axum::Json(answer).into_response()
}

fn refresh_token(client: &str, generation: u64) -> String {
    format!("rt-{client}-{generation}")
}

async fn start_endpoint(endpoint: Arc<Endpoint>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/token", axum::routing::post(token))
        .with_state(endpoint);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/token")
}

// --- the operator process -----------------------------------------------------------------------

struct OperatorProcess {
    child: Child,
    http_port: u16,
}

impl OperatorProcess {
    fn start(kubeconfig: &PathBuf, extra: &[String], verbose: bool) -> OperatorProcess {
        let http_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_oauth-token-operator"))
            .arg("run")
            .arg("--no-leader-election")
            .arg("--allow-insecure-http")
            // The benchmark's token endpoint allows what the benchmark asks of it.
            .arg("--token-endpoint-requests-per-minute=600000")
            .arg("--token-endpoint-burst=20000")
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{http_port}"))
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("SCALE_OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the operator binary starts");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let forward = move |output: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines().map_while(Result::ok) {
                    if verbose {
                        eprintln!("[operator] {line}");
                    }
                }
            });
        };
        forward(Box::new(stdout));
        forward(Box::new(stderr));
        OperatorProcess { child, http_port }
    }

    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    async fn metrics(&self) -> Option<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.http_port);
        reqwest::get(url).await.ok()?.text().await.ok()
    }

    async fn api_counts(&self) -> ApiCounts {
        for _ in 0..50 {
            if let Some(text) = self.metrics().await {
                return parse_api_counts(&text);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the operator's /metrics did not answer");
    }

    /// SIGTERM, then waits for the exit; returns how long it took.
    fn stop(mut self) -> Duration {
        let started = Instant::now();
        send_sigterm(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        started.elapsed()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

/// `oauth_token_operator_kube_api_requests_total{verb="get",resource="secrets"} 12`
pub fn parse_api_counts(text: &str) -> ApiCounts {
    let mut counts = ApiCounts::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("oauth_token_operator_kube_api_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        let verb = label("verb");
        *counts.by_verb.entry(verb.clone()).or_default() += value;
        *counts
            .by_verb_and_resource
            .entry(format!("{verb} {}", label("resource")))
            .or_default() += value;
    }
    counts
}

// --- what the benchmark sees of the OAuthTokens -------------------------------------------------

#[derive(Clone, Debug, Default)]
struct Seen {
    ready: bool,
    next_refresh_at: Option<DateTime<Utc>>,
    /// Scheduled refresh times seen over time, oldest first.
    schedule: Vec<DateTime<Utc>>,
}

#[derive(Default)]
struct Observer {
    tokens: Mutex<HashMap<String, Seen>>,
}

impl Observer {
    fn ready_count(&self) -> usize {
        self.tokens
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.ready)
            .count()
    }

    fn observe(&self, token: &OAuthToken) {
        let key = format!(
            "{}.{}",
            token.namespace().unwrap_or_default(),
            token.name_any()
        );
        let status = token.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let mut tokens = self.tokens.lock().unwrap();
        let seen = tokens.entry(key).or_default();
        seen.ready = ready;
        if let Some(at) = status.next_refresh_at
            && seen.next_refresh_at != Some(at)
        {
            seen.next_refresh_at = Some(at);
            seen.schedule.push(at);
        }
    }

    /// How late each request was after the refresh time the operator had scheduled for it:
    /// the latest scheduled time at or before the request (so a request is never measured
    /// against the schedule it itself produced).
    fn lateness(&self, arrivals: &[(SystemTime, String)]) -> Vec<Duration> {
        let tokens = self.tokens.lock().unwrap();
        arrivals
            .iter()
            .filter_map(|(at, client)| {
                let at: DateTime<Utc> = (*at).into();
                let seen = tokens.get(client)?;
                let scheduled = seen.schedule.iter().rev().find(|s| **s <= at)?;
                (at - *scheduled).to_std().ok()
            })
            .collect()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

// --- the floor: a bare writer ------------------------------------------------------------------

/// The kinds of writes the bare writer replays, by `verb resource`, in the order one reconcile
/// makes them: the state Secret (created, then replaced under its resourceVersion), the token
/// Secret (server-side apply), the status (merge patch), the Events.
pub const REPLAYED_WRITES: [&str; 5] = [
    "create secrets",
    "update secrets",
    "patch secrets",
    "patch oauthtokens/status",
    "create events",
];

/// The bare writer: the operator's cold-start writes, replayed against the same API server at
/// the same concurrency, with the operator's client stack, with nothing else running.
#[derive(Clone, Debug, Default)]
pub struct FloorReport {
    /// Writers at once: the operator's `--max-concurrent-reconciles`.
    pub concurrency: usize,
    /// The writes replayed, by `verb resource`: those of the operator's cold start.
    pub plan: BTreeMap<String, f64>,
    /// Writes of the operator's cold start of a kind the floor does not replay.
    pub not_replayed: BTreeMap<String, f64>,
    /// From its first write to its last answer.
    pub time: Duration,
    /// Its requests, counted by its client as the operator counts its own.
    pub api: ApiCounts,
}

impl FloorReport {
    fn print(&self, cold_start: Duration, n: f64) {
        let per_token: Vec<String> = REPLAYED_WRITES
            .iter()
            .filter_map(|kind| {
                let count = self.plan.get(*kind)?;
                Some(format!("{kind} {:.2}", count / n.max(1.0)))
            })
            .collect();
        let total: f64 = self.plan.values().sum();
        let time = self.time.as_secs_f64().max(0.001);
        println!(
            "  floor: a bare writer replaying the cold start's writes at concurrency {}: {:.1} s, {:.0} writes/s",
            self.concurrency,
            self.time.as_secs_f64(),
            self.api.writes() / time
        );
        println!(
            "    writes per token replayed: {} ({:.2} in all)",
            per_token.join(", "),
            total / n.max(1.0)
        );
        if !self.not_replayed.is_empty() {
            println!("    not replayed: {:?}", self.not_replayed);
        }
        println!(
            "    cold start / floor: {:.2}",
            cold_start.as_secs_f64() / time
        );
    }
}

/// The last value of an operator flag in `args` (`--flag=value` or `--flag value`): the
/// operator keeps the last one too.
fn operator_flag(args: &[String], flag: &str) -> Option<String> {
    let mut found = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if let Some(value) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            found = Some(value.to_string());
        } else if arg == flag {
            found = args.next().cloned();
        }
    }
    found
}

/// What the operator wrote for one OAuthToken at its cold start, read back: the shapes and
/// sizes the bare writer writes.
#[derive(Clone)]
struct Shapes {
    spec: serde_json::Value,
    status: OAuthTokenStatus,
    state: Secret,
    target: Secret,
}

/// `state` is the state Secret to use for a grant that keeps none (client credentials), whose
/// bare writes replay the cold start's state writes all the same (spread over every token).
async fn read_shapes(
    client: &Client,
    namespace: &str,
    name: &str,
    state: Option<&Secret>,
) -> Shapes {
    let tokens: Api<OAuthToken> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let token = tokens.get(name).await.expect("the OAuthToken is there");
    let own_state = secrets
        .get_opt(&token.state_secret_name())
        .await
        .expect("the state Secret can be read");
    Shapes {
        spec: serde_json::to_value(&token.spec).unwrap(),
        status: token.status.clone().expect("the operator wrote a status"),
        state: own_state
            .or_else(|| state.cloned())
            .expect("a rotating chain's state Secret"),
        target: secrets
            .get(&token.target_secret_name())
            .await
            .expect("the operator wrote a token Secret"),
    }
}

/// `data` with one byte of its longest value changed by `k` (none when `k` is 0), so that a
/// repeated write of the same object is a real change of the same size.
fn vary(
    data: &Option<BTreeMap<String, ByteString>>,
    k: usize,
) -> Option<BTreeMap<String, ByteString>> {
    let mut data = data.clone()?;
    if k > 0
        && let Some(value) = data.values_mut().max_by_key(|v| v.0.len())
        && let Some(last) = value.0.last_mut()
    {
        *last ^= (k % 255) as u8 + 1;
    }
    Some(data)
}

/// A Secret of `template`'s shape owned by `token`, as the operator writes its own.
fn owned_secret(template: &Secret, token: &OAuthToken, name: &str, k: usize) -> Secret {
    let mut labels = template.metadata.labels.clone().unwrap_or_default();
    if let Some(owner) = labels.get_mut(OWNER_LABEL) {
        *owner = token.name_any();
    }
    Secret {
        metadata: kube::core::ObjectMeta {
            name: Some(name.to_string()),
            namespace: token.namespace(),
            labels: Some(labels),
            owner_references: token.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        data: vary(&template.data, k),
        type_: template.type_.clone(),
        ..Secret::default()
    }
}

/// How many writes of a kind token `i` of `n` makes when `total` are spread over them.
fn share(total: f64, i: usize, n: usize) -> usize {
    let total = total.round().max(0.0) as usize;
    total * (i + 1) / n.max(1) - total * i / n.max(1)
}

/// One OAuthToken's writes, in the operator's order.
async fn replay_token(
    client: &Client,
    token: &OAuthToken,
    shapes: &Shapes,
    counts: &[(&str, usize)],
    mut state: Option<Secret>,
) -> Result<(), kube::Error> {
    let namespace = token.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let tokens: Api<OAuthToken> = Api::namespaced(client.clone(), &namespace);
    let state_name = token.state_secret_name();
    for (kind, count) in counts {
        for k in 0..*count {
            match *kind {
                "create secrets" => {
                    let name = if k == 0 {
                        state_name.clone()
                    } else {
                        format!("{state_name}-{k}")
                    };
                    let secret = owned_secret(&shapes.state, token, &name, 0);
                    let written = secrets.create(&PostParams::default(), &secret).await?;
                    if k == 0 {
                        state = Some(written);
                    }
                }
                "update secrets" => {
                    let current = state.as_ref().expect("a state Secret to replace");
                    let mut secret = owned_secret(&shapes.state, token, &state_name, k + 1);
                    secret.metadata.resource_version = current.resource_version();
                    state = Some(
                        secrets
                            .replace(&state_name, &PostParams::default(), &secret)
                            .await?,
                    );
                }
                "patch secrets" => {
                    let name = token.target_secret_name();
                    let secret = owned_secret(&shapes.target, token, &name, k);
                    secrets
                        .patch(
                            &name,
                            &PatchParams::apply(
                                oauth_token_operator::controller::secrets::FIELD_MANAGER,
                            )
                            .force(),
                            &Patch::Apply(&secret),
                        )
                        .await?;
                }
                "patch oauthtokens/status" => {
                    let mut status = shapes.status.clone();
                    if k > 0 {
                        status.next_refresh_at = status
                            .next_refresh_at
                            .map(|at| at + chrono::TimeDelta::seconds(k as i64));
                    }
                    tokens
                        .patch_status(
                            &token.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(oauth_token_operator::controller::status::merge_patch(
                                &status, None,
                            )),
                        )
                        .await?;
                }
                "create events" => {
                    let (reason, note) = if k == 0 {
                        ("TokenIssued", "Obtained the first access token")
                    } else {
                        (
                            "RefreshTokenImported",
                            "Imported a new refresh token from the import Secret",
                        )
                    };
                    // A fresh Recorder for each Event, as the operator does.
                    let reporter = Reporter {
                        controller: "oauth-token-operator".to_string(),
                        instance: None,
                    };
                    Recorder::new(client.clone(), reporter)
                        .publish(
                            &KubeEvent {
                                type_: EventType::Normal,
                                reason: reason.to_string(),
                                note: Some(note.to_string()),
                                action: "Reconcile".to_string(),
                                secondary: None,
                            },
                            &token.object_ref(&()),
                        )
                        .await?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The bare writer's client: the operator's (`apiclient::counted_client`, its counting layer
/// included) from the same kubeconfig, counting into metrics of its own.
async fn floor_client(kubeconfig: &PathBuf) -> (Client, Arc<Metrics>) {
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let metrics = Arc::new(Metrics::default());
    let client = apiclient::counted_client(config, metrics.clone()).unwrap();
    (client, metrics)
}

/// Replays `plan` (writes by `verb resource` for `opts.tokens` OAuthTokens) on fresh
/// OAuthTokens in namespaces of its own; returns its time, its requests and those namespaces.
async fn floor_run(
    cluster: &Cluster,
    opts: &Options,
    shapes: &[Shapes],
    plan: &BTreeMap<String, f64>,
    concurrency: usize,
) -> (Duration, ApiCounts, Vec<String>) {
    // Setup, not timed (as the OAuthTokens' creation is not part of the cold start): the
    // namespaces and the OAuthTokens.
    let setup = Instant::now();
    let run = format!("{:05}", rand::random::<u32>() % 100_000);
    let n = opts.tokens;
    let per_namespace = opts.per_namespace.max(1);
    let namespaces: Vec<String> = (0..n.div_ceil(per_namespace))
        .map(|k| format!("floor-{run}-{k}"))
        .collect();
    let api: Api<Namespace> = Api::all(cluster.client.clone());
    for namespace in &namespaces {
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap(),
        )
        .await
        .unwrap();
    }
    let tokens: Vec<OAuthToken> = futures::stream::iter(0..n)
        .map(|i| {
            let tokens: Api<OAuthToken> =
                Api::namespaced(cluster.client.clone(), &namespaces[i / per_namespace]);
            let spec = shapes[i % shapes.len()].spec.clone();
            async move {
                let token: OAuthToken = serde_json::from_value(json!({
                    "apiVersion": "oauth-token-operator.io/v1alpha1", "kind": "OAuthToken",
                    "metadata": {"name": format!("t-{i}")},
                    "spec": spec,
                }))
                .unwrap();
                tokens.create(&PostParams::default(), &token).await
            }
        })
        .buffered(32)
        .try_collect()
        .await
        .expect("the floor's OAuthTokens are created");
    let kinds: Vec<&str> = REPLAYED_WRITES
        .iter()
        .copied()
        .filter(|kind| plan.contains_key(*kind))
        .collect();
    let counts: Vec<Vec<(&str, usize)>> = (0..n)
        .map(|i| {
            kinds
                .iter()
                .map(|kind| (*kind, share(plan[*kind], i, n)))
                .collect()
        })
        .collect();
    // A token that replaces its state Secret without creating it finds one made beforehand.
    let mut states: Vec<Option<Secret>> = vec![None; n];
    for (i, token) in tokens.iter().enumerate() {
        let count = |kind: &str| {
            counts[i]
                .iter()
                .find(|(k, _)| *k == kind)
                .map_or(0, |(_, c)| *c)
        };
        if count("update secrets") > 0 && count("create secrets") == 0 {
            let secrets: Api<Secret> =
                Api::namespaced(cluster.client.clone(), &token.namespace().unwrap());
            let secret = owned_secret(
                &shapes[i % shapes.len()].state,
                token,
                &token.state_secret_name(),
                0,
            );
            states[i] = Some(
                secrets
                    .create(&PostParams::default(), &secret)
                    .await
                    .expect("a state Secret is created"),
            );
        }
    }

    if opts.verbose {
        eprintln!(
            "[bench] floor: {n} OAuthTokens of its own created in {:.1} s; writing",
            setup.elapsed().as_secs_f64()
        );
    }
    let (client, metrics) = floor_client(&cluster.kubeconfig).await;
    let work = Arc::new((tokens, counts, Mutex::new(states), shapes.to_vec()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let work = work.clone();
            let next = next.clone();
            let client = client.clone();
            tokio::spawn(async move {
                let (tokens, counts, states, shapes) = &*work;
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= tokens.len() {
                        return;
                    }
                    let state = states.lock().unwrap()[i].take();
                    replay_token(
                        &client,
                        &tokens[i],
                        &shapes[i % shapes.len()],
                        &counts[i],
                        state,
                    )
                    .await
                    .expect("a floor write succeeds");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a floor writer finishes");
    }
    let time = started.elapsed();
    (time, parse_api_counts(&metrics.encode()), namespaces)
}

/// The bare writer, after the operator has stopped: its cold-start writes; returns the report
/// and the namespaces it made.
async fn floor(
    cluster: &Cluster,
    opts: &Options,
    shapes: &[Shapes],
    cold_start_api: &ApiCounts,
) -> (FloorReport, Vec<String>) {
    let concurrency = operator_flag(&opts.operator_args, "--max-concurrent-reconciles")
        .map(|v| v.parse().expect("--max-concurrent-reconciles is a number"))
        .unwrap_or(oauth_token_operator::controller::DEFAULT_MAX_CONCURRENT_RECONCILES as usize);
    let mut report = FloorReport {
        concurrency,
        ..FloorReport::default()
    };
    for (kind, count) in &cold_start_api.by_verb_and_resource {
        let verb = kind.split(' ').next().unwrap_or_default();
        if !["create", "update", "patch", "delete", "deletecollection"].contains(&verb) {
            continue;
        }
        if REPLAYED_WRITES.contains(&kind.as_str()) {
            report.plan.insert(kind.clone(), *count);
        } else {
            report.not_replayed.insert(kind.clone(), *count);
        }
    }
    let (time, api, namespaces) = floor_run(cluster, opts, shapes, &report.plan, concurrency).await;
    report.time = time;
    report.api = api;
    (report, namespaces)
}

// --- the run ------------------------------------------------------------------------------------

struct Cluster {
    client: Client,
    kubeconfig: PathBuf,
    _server: Option<TestApiServer>,
    _dir: tempfile::TempDir,
    real: bool,
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let (server, kubeconfig, real) = match std::env::var_os("E2E_KUBECONFIG") {
        Some(path) => (None, PathBuf::from(path), true),
        None => {
            let server = TestApiServer::start(ServerOptions {
                watch_history: 200_000,
                ..ServerOptions::default()
            })
            .await
            .expect("test apiserver starts");
            let path = dir.path().join("kubeconfig");
            server.write_kubeconfig(&path, "default").unwrap();
            (Some(server), path, false)
        }
    };
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let client = Client::try_from(config).unwrap();
    let crd: CustomResourceDefinition = serde_yaml::from_str(CRD_YAML).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        CRD_NAME,
        &PatchParams::apply("scale-bench").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    for _ in 0..100 {
        let established = crds
            .get(CRD_NAME)
            .await
            .ok()
            .and_then(|c| c.status)
            .is_some_and(|s| {
                s.conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Cluster {
        client,
        kubeconfig,
        _server: server,
        _dir: dir,
        real,
    }
}

async fn create_objects(cluster: &Cluster, opts: &Options, endpoint_url: &str) -> Vec<String> {
    let run = format!("{:05}", rand::random::<u32>() % 100_000);
    let namespace_count = opts.tokens.div_ceil(opts.per_namespace.max(1));
    let namespaces: Vec<String> = (0..namespace_count)
        .map(|k| format!("scale-{run}-{k}"))
        .collect();
    let api: Api<Namespace> = Api::all(cluster.client.clone());
    for namespace in &namespaces {
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap(),
        )
        .await
        .unwrap();
        let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), namespace);
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "bench-client"},
                    "stringData": {"client_secret": "bench-secret"},
                }))
                .unwrap(),
            )
            .await
            .unwrap();
    }
    let client = cluster.client.clone();
    let endpoint_url = endpoint_url.to_string();
    futures::stream::iter(0..opts.tokens)
        .map(|i| {
            let namespace = namespaces[i / opts.per_namespace.max(1)].clone();
            let client = client.clone();
            let endpoint_url = endpoint_url.clone();
            async move {
                let name = format!("t-{i}");
                let client_id = format!("{namespace}.{name}");
                let rotating = i % 2 == 1;
                let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
                let grant = if rotating {
                    let import = format!("{name}-import");
                    secrets
                        .create(
                            &PostParams::default(),
                            &serde_json::from_value(json!({
                                "metadata": {"name": import},
                                "stringData": {"refresh_token": refresh_token(&client_id, 0)},
                            }))
                            .unwrap(),
                        )
                        .await?;
                    json!({"refreshToken": {"initialRefreshTokenSecretRef": {"name": import}}})
                } else {
                    json!({"clientCredentials": {}})
                };
                let tokens: Api<OAuthToken> = Api::namespaced(client, &namespace);
                let token: OAuthToken = serde_json::from_value(json!({
                    "apiVersion": "oauth-token-operator.io/v1alpha1", "kind": "OAuthToken",
                    "metadata": {"name": name},
                    "spec": {
                        "tokenEndpoint": endpoint_url,
                        "clientId": client_id,
                        "clientSecretRef": {"name": "bench-client"},
                        "grant": grant,
                        "scopes": ["bench"],
                    },
                }))
                .unwrap();
                tokens.create(&PostParams::default(), &token).await?;
                Ok::<(), kube::Error>(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .expect("benchmark objects are created");
    namespaces
}

fn observe(client: Client, observer: Arc<Observer>) -> tokio::task::JoinHandle<()> {
    let api: Api<OAuthToken> = Api::all(client);
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(token) | watcher::Event::InitApply(token)) => {
                    observer.observe(&token)
                }
                Ok(_) => {}
                Err(_) => {}
            }
        }
    })
}

/// Waits until the operator's API request counter has not moved for `quiet`.
async fn settle(operator: &OperatorProcess, endpoint: &Endpoint, quiet: Duration, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut last = (operator.api_counts().await, endpoint.requests());
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = (operator.api_counts().await, endpoint.requests());
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}

pub async fn run(opts: Options) -> Report {
    let log = |line: String| {
        if opts.verbose {
            eprintln!("[bench] {line}");
        }
    };
    let cluster = cluster().await;
    let endpoint = Arc::new(Endpoint::default());
    endpoint.set_lifetime(Duration::from_secs(3600));
    let endpoint_url = start_endpoint(endpoint.clone()).await;
    log(format!("creating {} OAuthTokens", opts.tokens));
    let created = Instant::now();
    let namespaces = create_objects(&cluster, &opts, &endpoint_url).await;
    log(format!(
        "created in {:.1} s",
        created.elapsed().as_secs_f64()
    ));
    let observer = Arc::new(Observer::default());
    let watch = observe(cluster.client.clone(), observer.clone());
    let mut report = Report {
        tokens: opts.tokens,
        ..Report::default()
    };

    // Cold start.
    let started = Instant::now();
    let operator = OperatorProcess::start(&cluster.kubeconfig, &opts.operator_args, opts.verbose);
    let limit = Duration::from_secs(120 + opts.tokens as u64 / 20);
    let mut peak = 0;
    let deadline = Instant::now() + limit;
    loop {
        peak = peak.max(operator.rss_kib().1);
        if observer.ready_count() >= opts.tokens {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every OAuthToken became Ready: {} of {}",
            observer.ready_count(),
            opts.tokens
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report.cold_start = started.elapsed();
    log(format!(
        "all Ready after {:.1} s",
        report.cold_start.as_secs_f64()
    ));
    settle(
        &operator,
        &endpoint,
        Duration::from_secs(3),
        Duration::from_secs(120),
    )
    .await;
    report.peak_rss_kib = peak.max(operator.rss_kib().1);
    report.cold_start_api = operator.api_counts().await;
    report.cold_start_token_requests = endpoint.requests();
    // What the operator wrote for one OAuthToken of each grant: the bare writer's shapes.
    let rotating = read_shapes(&cluster.client, &namespaces[0], "t-1", None).await;
    let shapes = vec![
        read_shapes(
            &cluster.client,
            &namespaces[0],
            "t-0",
            Some(&rotating.state),
        )
        .await,
        rotating,
    ];

    // Idle.
    let before = (operator.api_counts().await, endpoint.requests());
    tokio::time::sleep(opts.idle).await;
    report.idle_window = opts.idle;
    report.idle_api = operator.api_counts().await.since(&before.0);
    report.idle_token_requests = endpoint.requests() - before.1;
    report.steady_rss_kib = operator.rss_kib().0;
    log(format!("idle: {:?}", report.idle_api.by_verb));

    // Restart with every token valid.
    operator.stop();
    let token_requests = endpoint.requests();
    let started = Instant::now();
    let operator = OperatorProcess::start(&cluster.kubeconfig, &opts.operator_args, opts.verbose);
    // Every OAuthToken is looked at once after the caches sync; wait until that is over.
    let quiet = Duration::from_secs(5);
    operator.api_counts().await;
    settle(&operator, &endpoint, quiet, Duration::from_secs(120)).await;
    report.restart_settled = started.elapsed().saturating_sub(quiet);
    report.restart_api = operator.api_counts().await;
    report.restart_token_requests = endpoint.requests() - token_requests;
    report.restart_peak_rss_kib = operator.rss_kib().1;
    log(format!("restart: {:?}", report.restart_api.by_verb));

    // Sustained refreshes: short lifetimes, then a spec change that makes every token refresh.
    endpoint.set_lifetime(opts.short_lifetime);
    let edit = futures::stream::iter(0..opts.tokens).map(|i| {
        let namespace = namespaces[i / opts.per_namespace.max(1)].clone();
        let client = cluster.client.clone();
        async move {
            let tokens: Api<OAuthToken> = Api::namespaced(client, &namespace);
            tokens
                .patch(
                    &format!("t-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"scopes": ["bench", "sustained"]}})),
                )
                .await
        }
    });
    edit.buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .expect("specs are edited");
    // The first lifetime is the burst of the edit; measure from then on.
    tokio::time::sleep(opts.short_lifetime).await;
    let window_start = SystemTime::now();
    let counts_before = operator.api_counts().await;
    let requests_before = endpoint.requests();
    let rotating_before = endpoint.rotating.load(Ordering::SeqCst);
    let measured = Instant::now();
    tokio::time::sleep(opts.sustain).await;
    report.sustained_window = measured.elapsed();
    report.sustained_api = operator.api_counts().await.since(&counts_before);
    report.sustained_refreshes = endpoint.requests() - requests_before;
    report.sustained_rotating_refreshes =
        endpoint.rotating.load(Ordering::SeqCst) - rotating_before;
    report.sustained_rss_kib = operator.rss_kib().0;
    let mut lateness = observer.lateness(&endpoint.arrivals_since(window_start));
    lateness.sort();
    report.lateness_p50 = percentile(&lateness, 0.5);
    report.lateness_p99 = percentile(&lateness, 0.99);
    report.lateness_max = lateness.last().copied().unwrap_or_default();
    report.late_over_1s = lateness
        .iter()
        .filter(|l| **l > Duration::from_secs(1))
        .count();
    report.reused_refresh_tokens = endpoint.reused.load(Ordering::SeqCst);
    report.rejected_requests = endpoint.rejected.load(Ordering::SeqCst);

    report.shutdown = operator.stop();
    watch.abort();

    // The bare writer, with the operator stopped: nothing else writes or watches.
    log("floor: replaying the cold start's writes".to_string());
    let (floor, floor_namespaces) = floor(&cluster, &opts, &shapes, &report.cold_start_api).await;
    log(format!("floor: {:.1} s", floor.time.as_secs_f64()));
    report.floor = floor;
    if cluster.real {
        let api: Api<Namespace> = Api::all(cluster.client.clone());
        for namespace in namespaces.iter().chain(&floor_namespaces) {
            let _ = api.delete(namespace, &DeleteParams::default()).await;
        }
    }
    report
}
