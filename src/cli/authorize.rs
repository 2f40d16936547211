//! `kubectl oauthtoken authorize NAME`: obtains a refresh token for an OAuthToken's client and
//! writes it into the OAuthToken's import Secret, for the operator to import.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::{CliError, KubeArgs};

pub const LONG_ABOUT: &str = "\
Obtain a refresh token for an OAuthToken's client and write it into the OAuthToken's import
Secret (spec.grant.refreshToken.initialRefreshTokenSecretRef; created when missing, else only
its key is replaced). The operator then imports it. The client's id and secret are read the
way the operator reads them (spec.clientId, spec.clientSecretRef), and the scopes, audience and
extra parameters come from the spec.

Three ways to authorize:
  default       authorization code with PKCE: open the printed URL (a browser is started
                unless --no-browser); the provider redirects to a loopback address
                http://127.0.0.1:PORT/callback where this command waits. Needs
                spec.authorizationEndpoint.
  --redirect-uri  the same, with a redirect URI registered at the provider that is not on this
                machine: after signing in, paste the full URL the browser was sent to.
  --device      the device flow (RFC 8628): open the printed address on any device and enter
                the code. Needs a device authorization endpoint in the spec.

Nothing secret (code, verifier, tokens, client secret) is ever printed.";

pub const EXAMPLES: &str = "\
Examples:
  # Sign in with the browser on this machine (loopback redirect)
  kubectl oauthtoken authorize allegro -n shop

  # On a remote machine: sign in anywhere, then paste the URL you were redirected to
  kubectl oauthtoken authorize allegro -n shop --redirect-uri https://app.example.com/callback

  # The device flow: enter the printed code on any device
  kubectl oauthtoken authorize allegro -n shop --device";

#[derive(Args, Debug)]
pub struct AuthorizeArgs {
    /// Name of the OAuthToken.
    pub name: String,
    /// Use this registered redirect URI instead of a loopback one, and read the URL the browser
    /// was redirected to from standard input.
    #[arg(long, value_name = "URL", conflicts_with_all = ["device", "port"])]
    pub redirect_uri: Option<String>,
    /// Use the device flow (RFC 8628) instead of a browser redirect.
    #[arg(long)]
    pub device: bool,
    /// Port of the loopback redirect http://127.0.0.1:PORT/callback (default: any free port).
    #[arg(long, value_name = "PORT", conflicts_with = "device")]
    pub port: Option<u16>,
    /// Only print the URL to open; do not try to start a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// How long to wait for the human (e.g. 5m).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// Allow http:// token endpoints. Credentials then travel in clear text: for local tests
    /// only.
    #[arg(long)]
    pub allow_insecure_http: bool,
    #[command(flatten)]
    pub kube: KubeArgs,
}

pub async fn run(_args: AuthorizeArgs) -> Result<ExitCode, CliError> {
    Err(CliError::new("authorize is not available yet"))
}
