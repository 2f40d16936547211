//! `kubectl oauthtoken`: the commands a human runs at a terminal against OAuthTokens, with the
//! caller's kubeconfig. The same binary serves them as `oauth-token-operator authorize|refresh|
//! status` and, installed (or linked) as `kubectl-oauthtoken`, as a kubectl plugin.
//!
//! Every command keeps what can be decided without I/O (rendering, "what must a human do next",
//! the annotation patch, when a wait is over) in pure functions, tested on their own.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub mod authorize;
pub mod refresh;
pub mod status;

/// The file name under which the binary acts as a kubectl plugin.
pub const PLUGIN_NAME: &str = "kubectl-oauthtoken";

/// Whether the binary was started as the kubectl plugin: its file name (argv[0] without the
/// directory) is `kubectl-oauthtoken`, or `kubectl-oauthtoken.exe`.
pub fn invoked_as_plugin(argv0: &OsStr) -> bool {
    let name = Path::new(argv0)
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or_default();
    name == PLUGIN_NAME || name.eq_ignore_ascii_case(&format!("{PLUGIN_NAME}.exe"))
}

const PLUGIN_ABOUT: &str = "Authorize, refresh and inspect OAuthTokens of the oauth-token-operator";

const PLUGIN_LONG_ABOUT: &str = "\
kubectl oauthtoken helps the human behind an OAuthToken: it shows what the operator is doing and
what must be done next, asks for a refresh now, and obtains the first (or a new) refresh token
with a browser or the device flow. It talks to the cluster with your kubeconfig and never prints
a token or a client secret.";

const PLUGIN_EXAMPLES: &str = "\
Examples:
  # What is the state of an OAuthToken, and is anything expected of me?
  kubectl oauthtoken status allegro -n shop

  # Refresh the access token now, and wait for the operator's answer
  kubectl oauthtoken refresh allegro -n shop --wait

  # Obtain a refresh token in the browser (authorization code with PKCE, loopback redirect)
  kubectl oauthtoken authorize allegro -n shop

  # The same with the device flow, for a terminal without a browser
  kubectl oauthtoken authorize allegro -n shop --device";

/// The kubectl plugin: `kubectl oauthtoken COMMAND`.
#[derive(Parser, Debug)]
#[command(
    name = PLUGIN_NAME,
    bin_name = "kubectl oauthtoken",
    version,
    about = PLUGIN_ABOUT,
    long_about = PLUGIN_LONG_ABOUT,
    after_help = PLUGIN_EXAMPLES,
)]
pub struct PluginCli {
    #[command(subcommand)]
    pub command: Command,
}

/// The plugin's commands; the operator binary offers the same ones as subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Obtain a refresh token for an OAuthToken and put it in its import Secret.
    #[command(long_about = authorize::LONG_ABOUT, after_help = authorize::EXAMPLES)]
    Authorize(authorize::AuthorizeArgs),
    /// Ask the operator to refresh an OAuthToken now.
    #[command(long_about = refresh::LONG_ABOUT, after_help = refresh::EXAMPLES)]
    Refresh(refresh::RefreshArgs),
    /// Show an OAuthToken's state and what a human must do next.
    #[command(long_about = status::LONG_ABOUT, after_help = status::EXAMPLES)]
    Status(status::StatusArgs),
}

/// How to reach the cluster: the flags kubectl users expect.
#[derive(Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace of the OAuthToken (default: the context's namespace).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

impl KubeArgs {
    /// A client for the chosen kubeconfig and context, and the namespace to work in.
    pub async fn connect(&self) -> Result<(Client, String), CliError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let failed = |e: &dyn std::fmt::Display| {
            CliError::new(format!("cannot configure the Kubernetes client: {e}"))
        };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                    CliError::new(format!("cannot read kubeconfig {}: {e}", path.display()))
                })?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| failed(&e))?
            }
            (None, Some(_)) => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| failed(&e))?,
            (None, None) => Config::infer().await.map_err(|e| failed(&e))?,
        };
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config)
            .map_err(|e| CliError::new(format!("cannot build the Kubernetes client: {e}")))?;
        Ok((client, namespace))
    }
}

/// A failure to report to the human: the message, and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: u8,
}

impl CliError {
    pub fn new(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: 1,
        }
    }
}

/// Exit code when a wait ran out of time.
pub const EXIT_TIMEOUT: u8 = 2;

/// Maps a Kubernetes API error on the OAuthToken to a message a human can act on.
pub fn api_error(what: &str, name: &str, namespace: &str, error: kube::Error) -> CliError {
    match &error {
        kube::Error::Api(status) if status.code == 404 => {
            CliError::new(format!("{what} {name} not found in namespace {namespace}"))
        }
        kube::Error::Api(status) if status.code == 403 => CliError::new(format!(
            "not allowed to access {what} {name} in namespace {namespace}: {}",
            status.message
        )),
        _ => CliError::new(format!("{what} {name} in namespace {namespace}: {error}")),
    }
}

/// Runs one command to its end and returns the process's exit code; errors are printed on
/// stderr.
pub fn run(command: Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Authorize(args) => authorize::run(args).await,
            Command::Refresh(args) => refresh::run(args).await,
            Command::Status(args) => status::run(args).await,
        }
    });
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", error.message);
            ExitCode::from(error.code)
        }
    }
}

/// A duration as a human reads it relative to now: "in 5m 3s", "2h ago".
pub fn relative(at: chrono::DateTime<chrono::Utc>, now: chrono::DateTime<chrono::Utc>) -> String {
    let delta = at.signed_duration_since(now);
    let seconds = delta.num_seconds();
    let text = |s: i64| {
        let s = s.unsigned_abs();
        let (d, h, m, sec) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
        match (d, h, m) {
            (0, 0, 0) => format!("{sec}s"),
            (0, 0, _) => format!("{m}m{sec}s"),
            (0, _, _) => format!("{h}h{m}m"),
            _ => format!("{d}d{h}h"),
        }
    };
    if seconds >= 0 {
        format!("in {}", text(seconds))
    } else {
        format!("{} ago", text(seconds))
    }
}

/// A timestamp as printed by every command: RFC 3339 in UTC, seconds, and how far from now.
pub fn when(at: chrono::DateTime<chrono::Utc>, now: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "{} ({})",
        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        relative(at, now)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_plugin_is_recognized_by_its_file_name() {
        assert!(invoked_as_plugin(OsStr::new("kubectl-oauthtoken")));
        assert!(invoked_as_plugin(OsStr::new(
            "/home/me/.local/bin/kubectl-oauthtoken"
        )));
        assert!(invoked_as_plugin(OsStr::new("kubectl-oauthtoken.exe")));
        assert!(invoked_as_plugin(OsStr::new("kubectl-oauthtoken.EXE")));
        assert!(!invoked_as_plugin(OsStr::new("oauth-token-operator")));
        assert!(!invoked_as_plugin(OsStr::new(
            "/usr/bin/oauth-token-operator"
        )));
        assert!(!invoked_as_plugin(OsStr::new("kubectl-oauthtoken-old")));
        assert!(!invoked_as_plugin(OsStr::new("")));
    }

    #[test]
    fn the_plugin_cli_is_consistent() {
        PluginCli::command().debug_assert();
    }

    #[test]
    fn every_command_takes_the_kubectl_flags() {
        for args in [
            [
                "kubectl-oauthtoken",
                "status",
                "t",
                "-n",
                "ns",
                "--context",
                "c",
            ]
            .as_slice(),
            &[
                "kubectl-oauthtoken",
                "refresh",
                "t",
                "--namespace",
                "ns",
                "--kubeconfig",
                "k",
            ],
            &[
                "kubectl-oauthtoken",
                "authorize",
                "t",
                "-n",
                "ns",
                "--context",
                "c",
            ],
        ] {
            PluginCli::try_parse_from(args).unwrap();
        }
    }

    #[test]
    fn times_read_relative_to_now() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let at = |s: i64| now + chrono::Duration::seconds(s);
        assert_eq!(relative(at(42), now), "in 42s");
        assert_eq!(relative(at(-305), now), "5m5s ago");
        assert_eq!(relative(at(7_260), now), "in 2h1m");
        assert_eq!(relative(at(-(3 * 86_400 + 3_600)), now), "3d1h ago");
        assert_eq!(when(at(60), now), "2026-01-01T00:01:00Z (in 1m0s)");
    }
}
