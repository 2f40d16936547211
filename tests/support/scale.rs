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
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config, ResourceExt};
use kube_test_apiserver::{Options as ServerOptions, TestApiServer};
use oauth_token_operator::api::OAuthToken;
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
    let measured = Instant::now();
    tokio::time::sleep(opts.sustain).await;
    report.sustained_window = measured.elapsed();
    report.sustained_api = operator.api_counts().await.since(&counts_before);
    report.sustained_refreshes = endpoint.requests() - requests_before;
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
    if cluster.real {
        let api: Api<Namespace> = Api::all(cluster.client.clone());
        for namespace in &namespaces {
            let _ = api.delete(namespace, &DeleteParams::default()).await;
        }
    }
    report
}
