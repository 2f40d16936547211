use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kube::runtime::events::Reporter;
use oauth_token_operator::apiclient;
use oauth_token_operator::cli;
use oauth_token_operator::controller::{self, Context};
use oauth_token_operator::health::{self, Progress};
use oauth_token_operator::leader::{self, LeaseOptions};
use oauth_token_operator::metrics::Metrics;
use oauth_token_operator::oauth::budget::{Budgets, Limit};
use oauth_token_operator::oauth::{ClientOptions, DEFAULT_MAX_RESPONSE_BYTES, TokenClient};
use oauth_token_operator::server::{self, Health};
use oauth_token_operator::telemetry::{self, LogFormat};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Time allowed beyond `--shutdown-grace-period` for releasing the Lease and stopping the HTTP
/// server before the process exits regardless.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// jemalloc rather than glibc's allocator: with thousands of cached objects glibc kept the memory
/// of a cold start for good (see README, Scale).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation. One arena instead of four per core: the
/// cache is filled by two runtime threads and a handful of others, and every further arena
/// holds its own partly used pages. Freed pages go back to the system at once instead of over
/// 10 s: the memory a cold start or a burst of refreshes used is given back, and the steady
/// RSS is what the caches hold. No per-thread caches: each thread that allocates (the runtime's
/// and the blocking pool's) would otherwise keep freed objects of every size class for itself.
/// At 10,000 OAuthTokens these settings took steady RSS from 71 to 61.5 MiB (62.5 on a real
/// kube-apiserver) at the same throughput; README, Scale, has the figures. `_RJEM_MALLOC_CONF`
/// in the environment still overrides them.
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_OPTIONS: JemallocOptions =
    JemallocOptions(c"narenas:1,tcache:false,dirty_decay_ms:0".as_ptr());

/// A C string pointer jemalloc reads as `const char *malloc_conf`.
#[repr(transparent)]
struct JemallocOptions(*const std::ffi::c_char);
// SAFETY: points at a constant C string that is never written.
unsafe impl Sync for JemallocOptions {}

/// Keeps OAuth 2.0 access tokens fresh in Kubernetes Secrets.
#[derive(Parser)]
#[command(
    version,
    about,
    after_help = "Installed (or linked) as `kubectl-oauthtoken`, this binary is the kubectl plugin: `kubectl oauthtoken --help`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller, using the kubeconfig or the in-cluster configuration.
    Run(RunArgs),
    /// Print the OAuthToken CustomResourceDefinition as YAML.
    Crd,
    /// The kubectl plugin's commands (also `kubectl oauthtoken ...` when this binary is
    /// installed as `kubectl-oauthtoken`).
    #[command(flatten)]
    Plugin(cli::Command),
}

/// A flag given twice keeps its last value, so `extraArgs` in the chart can override defaults.
#[derive(clap::Args)]
#[command(args_override_self = true)]
struct RunArgs {
    /// Allow http:// token endpoints. Credentials then travel in clear text: for local tests only.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_ALLOW_INSECURE_HTTP")]
    allow_insecure_http: bool,
    /// Watch only this namespace (repeat for several). Without it, all namespaces are watched.
    #[arg(long = "namespace", value_name = "NAMESPACE")]
    namespaces: Vec<String>,
    /// Limit for one token request, connection included (e.g. 30s, 1m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    token_request_timeout: Duration,
    /// Address serving /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Namespace of the leader-election Lease. Defaults to $POD_NAMESPACE, then the
    /// kubeconfig's namespace.
    #[arg(long)]
    leader_election_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "oauth-token-operator")]
    leader_election_lease_name: String,
    /// Run without leader election. Only safe with a single replica: two operators refreshing
    /// the same rotating refresh token revoke the chain.
    #[arg(long)]
    no_leader_election: bool,
    /// Time from SIGTERM to exit: in-flight token requests finish and every new refresh token
    /// is written before the process stops. Keep it below the pod's
    /// terminationGracePeriodSeconds and above --token-request-timeout.
    #[arg(long, default_value = "45s", value_parser = humantime::parse_duration)]
    shutdown_grace_period: Duration,
    /// Reconciles running at once. Bounds memory, connections to the API server and bursts on
    /// token endpoints; with 10,000 OAuthTokens the default keeps up with 500 refreshes a
    /// second on two cores.
    #[arg(long, default_value_t = controller::DEFAULT_MAX_CONCURRENT_RECONCILES, value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_reconciles: u16,
    /// Requests per minute to one token-endpoint origin (scheme, host, port), across all
    /// OAuthTokens, unless they declare `spec.tokenEndpointBudget`.
    #[arg(long, default_value_t = controller::DEFAULT_TOKEN_ENDPOINT_BUDGET.per_minute, value_parser = clap::value_parser!(u32).range(1..))]
    token_endpoint_requests_per_minute: u32,
    /// Requests that may go to one token-endpoint origin at once after a quiet period.
    #[arg(long, default_value_t = controller::DEFAULT_TOKEN_ENDPOINT_BUDGET.burst, value_parser = clap::value_parser!(u32).range(1..))]
    token_endpoint_burst: u32,
    /// /healthz fails once the controller has made no progress for this long: watches not
    /// synced or failing, a reconcile running, or a token's refresh overdue. A replica standing
    /// by for leadership is always healthy.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    liveness_stall_timeout: Duration,
    /// Log format.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        env = "OAUTH_TOKEN_OPERATOR_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Default log filter when RUST_LOG is not set.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    // Installed or linked as `kubectl-oauthtoken`, the binary is the kubectl plugin.
    if std::env::args_os()
        .next()
        .is_some_and(|argv0| cli::invoked_as_plugin(&argv0))
    {
        return cli::run(cli::PluginCli::parse().command);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Plugin(command) => cli::run(command),
        Command::Crd => {
            print!("{}", oauth_token_operator::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("could not start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let code = runtime.block_on(run(args));
            // Everything that matters is done; tasks still parked on the API (a watch in
            // backoff, a blocking DNS lookup) must not hold up the exit.
            runtime.shutdown_timeout(Duration::from_millis(500));
            code
        }
    }
}

async fn run(args: RunArgs) -> ExitCode {
    telemetry::init(args.log_format, &args.log_level);
    let tokens = match TokenClient::new(ClientOptions {
        timeout: args.token_request_timeout,
        max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        allow_insecure_http: args.allow_insecure_http,
    }) {
        Ok(tokens) => tokens,
        Err(error) => {
            error!(%error, "could not build the HTTP client");
            return ExitCode::FAILURE;
        }
    };
    let metrics = Arc::new(Metrics::default());
    let config = match kube::Config::infer().await {
        Ok(config) => config,
        Err(error) => {
            error!(%error, "could not configure the Kubernetes client");
            return ExitCode::FAILURE;
        }
    };
    let client = match apiclient::counted_client(config, metrics.clone()) {
        Ok(client) => client,
        Err(error) => {
            error!(%error, "could not configure the Kubernetes client");
            return ExitCode::FAILURE;
        }
    };
    let pod_name = std::env::var("POD_NAME").ok();
    let reporter = Reporter {
        controller: "oauth-token-operator".to_string(),
        instance: pod_name.clone(),
    };
    let context = Arc::new(Context {
        metrics,
        max_concurrent_reconciles: args.max_concurrent_reconciles,
        budgets: Budgets::new(
            Limit {
                per_minute: args.token_endpoint_requests_per_minute,
                burst: args.token_endpoint_burst,
            },
            controller::MAX_BUDGET_WAIT,
        ),
        progress: Arc::new(Progress::new(args.liveness_stall_timeout)),
        ..Context::new(client.clone(), tokens, reporter)
    });
    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    // Whatever hangs, the process exits this long after shutdown began.
    let exit_limit = args.shutdown_grace_period + SHUTDOWN_MARGIN;
    let watchdog = shutdown.clone();
    let holding = context.clone();
    tokio::spawn(async move {
        watchdog.cancelled().await;
        health::exit_after(exit_limit, move || {
            holding
                .fencing
                .successors_until()
                .map(tokio::time::Instant::into_std)
        });
    });

    let health = Health {
        metrics: context.metrics.clone(),
        ready: ready.clone(),
        progress: context.progress.clone(),
    };
    let server_stop = shutdown.clone();
    let server = tokio::spawn(server::serve(args.http_addr, health, async move {
        server_stop.cancelled().await
    }));

    let clean = if args.no_leader_election {
        run_alone(
            context,
            args.namespaces,
            shutdown.clone(),
            args.shutdown_grace_period,
            ready,
        )
        .await
    } else {
        let lease = LeaseOptions {
            namespace: args
                .leader_election_namespace
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .unwrap_or_else(|| client.default_namespace().to_string()),
            name: args.leader_election_lease_name,
            identity: pod_name.unwrap_or_else(random_identity),
            duration_seconds: 15,
            grace_seconds: 5,
        };
        leader::run_as_leader(
            client,
            lease,
            context,
            args.namespaces,
            shutdown.clone(),
            args.shutdown_grace_period,
            ready,
        )
        .await
    };
    let code = if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    shutdown.cancel();
    match server.await {
        Ok(Err(error)) => {
            error!(%error, "the HTTP server failed");
            ExitCode::FAILURE
        }
        _ => code,
    }
}

/// Runs the controller without leader election until shutdown.
async fn run_alone(
    context: Arc<Context>,
    namespaces: Vec<String>,
    shutdown: CancellationToken,
    grace: Duration,
    ready: Arc<AtomicBool>,
) -> bool {
    // Without election this replica always acts as the leader.
    context.metrics.leader.set(1);
    let (flushed, _) =
        controller::run_until(context, namespaces, ready, grace, shutdown.cancelled()).await;
    flushed
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => info!("SIGTERM received, finishing in-flight work"),
        _ = tokio::signal::ctrl_c() => info!("interrupt received, finishing in-flight work"),
    }
    shutdown.cancel();
}

fn random_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "oauth-token-operator".to_string());
    format!("{host}-{:08x}", rand::random::<u32>())
}
