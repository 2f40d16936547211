use std::time::Duration;

use clap::{Parser, Subcommand};
use kube::runtime::events::Reporter;
use oauth_token_operator::controller::{self, Scope};
use oauth_token_operator::oauth::{ClientOptions, DEFAULT_MAX_RESPONSE_BYTES, TokenClient};
use oauth_token_operator::telemetry::{self, LogFormat};

/// Keeps OAuth 2.0 access tokens fresh in Kubernetes Secrets.
#[derive(Parser)]
#[command(version, about)]
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
}

#[derive(clap::Args)]
struct RunArgs {
    /// Allow http:// token endpoints. Credentials then travel in clear text: for local tests only.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_ALLOW_INSECURE_HTTP")]
    allow_insecure_http: bool,
    /// Watch only this namespace instead of the whole cluster.
    #[arg(long, env = "OAUTH_TOKEN_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Limit for one token request, connection included (e.g. 30s, 1m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    token_request_timeout: Duration,
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", oauth_token_operator::crd_yaml());
            std::process::ExitCode::SUCCESS
        }
        Command::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> std::process::ExitCode {
    telemetry::init(args.log_format, &args.log_level);
    let tokens = match TokenClient::new(ClientOptions {
        timeout: args.token_request_timeout,
        max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        allow_insecure_http: args.allow_insecure_http,
    }) {
        Ok(tokens) => tokens,
        Err(error) => {
            tracing::error!(%error, "could not build the HTTP client");
            return std::process::ExitCode::FAILURE;
        }
    };
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "could not configure the Kubernetes client");
            return std::process::ExitCode::FAILURE;
        }
    };
    let reporter = Reporter {
        controller: "oauth-token-operator".to_string(),
        instance: std::env::var("POD_NAME").ok(),
    };
    controller::run(
        client,
        tokens,
        Scope {
            namespace: args.namespace,
        },
        reporter,
    )
    .await;
    std::process::ExitCode::SUCCESS
}
