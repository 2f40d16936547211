//! `kubectl oauthtoken authorize NAME`: obtains a refresh token for an OAuthToken's client and
//! writes it into the OAuthToken's import Secret, for the operator to import.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use clap::Args;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tokio::sync::mpsc;
use url::Url;

use super::{CliError, EXIT_TIMEOUT, KubeArgs, api_error};
use crate::api::OAuthToken;
use crate::controller::secrets::secret_text;
use crate::controller::settings::{self, ClientSource, GrantSettings, KeyRef, Settings};
use crate::oauth::device::SLOW_DOWN_INCREMENT;
use crate::oauth::pkce::{self, Pkce};
use crate::oauth::{
    ClientCredentials, ClientOptions, DEFAULT_MAX_RESPONSE_BYTES, DeviceAuthorizationRequest,
    DevicePoll, FailureKind, GrantRequest, TokenClient, TokenRequest, device_poll,
};

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

/// How the human authorizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Authorization code with PKCE, redirected to `http://127.0.0.1:PORT/callback` (0: any
    /// free port).
    Loopback {
        authorization_endpoint: Url,
        port: u16,
    },
    /// Authorization code with PKCE, redirected to a registered URI; the human pastes where the
    /// browser went.
    Paste {
        authorization_endpoint: Url,
        redirect_uri: Url,
    },
    /// The device flow at this device authorization endpoint.
    Device { endpoint: Url },
}

/// What `authorize` does for an OAuthToken: where the refresh token goes and how it is
/// obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub import: KeyRef,
    pub mode: Mode,
}

/// Decides what `authorize` does from the OAuthToken, its resolved settings and the flags; the
/// error says what to do instead.
pub fn plan(
    token: &OAuthToken,
    settings: &Settings,
    args: &AuthorizeArgs,
    tokens: &TokenClient,
) -> Result<Plan, CliError> {
    let name = token.metadata.name.as_deref().unwrap_or_default();
    let namespace = token.metadata.namespace.as_deref().unwrap_or_default();
    let import = match &settings.grant {
        GrantSettings::ClientCredentials => {
            return Err(CliError::new(format!(
                "OAuthToken {name} uses the clientCredentials grant: it needs no human authorization"
            )));
        }
        GrantSettings::RefreshToken { import: None, .. } => {
            let mut message = format!(
                "OAuthToken {name} authorizes itself with the device flow (spec.grant.deviceCode): it has no import Secret to write a refresh token to."
            );
            match token.status.as_ref().and_then(|s| s.authorization.as_ref()) {
                Some(pending) => message.push_str(&format!(
                    "\nA device authorization is pending: open {} and enter the code {} before {}.",
                    pending
                        .verification_uri_complete
                        .as_deref()
                        .unwrap_or(&pending.verification_uri),
                    pending.user_code,
                    pending
                        .expires_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )),
                None => message.push_str("\nNo device authorization is pending."),
            }
            message.push_str(&format!(
                "\nTo start a new authorization now: kubectl oauthtoken refresh {name} -n {namespace}, then kubectl oauthtoken status {name} -n {namespace} for the code to enter."
            ));
            return Err(CliError::new(message));
        }
        GrantSettings::RefreshToken {
            import: Some(import),
            ..
        } => import.clone(),
    };
    let mode = if args.device {
        let refresh = token.spec.grant.refresh_token.as_ref();
        let raw = refresh
            .and_then(|r| r.device_authorization_endpoint.as_deref())
            .ok_or_else(|| {
                CliError::new(format!(
                    "--device needs a device authorization endpoint: set spec.grant.refreshToken.deviceAuthorizationEndpoint of OAuthToken {name}"
                ))
            })?;
        let endpoint = tokens.check_endpoint(raw).map_err(|e| {
            CliError::new(format!(
                "spec.grant.refreshToken.deviceAuthorizationEndpoint: {e}"
            ))
        })?;
        // It gets the client's credentials, like the token endpoint: only on its origin.
        if endpoint.origin() != settings.endpoint.origin() {
            return Err(CliError::new(
                "spec.grant.refreshToken.deviceAuthorizationEndpoint must be on the token endpoint's origin (scheme, host and port)",
            ));
        }
        Mode::Device { endpoint }
    } else {
        let raw = token.spec.authorization_endpoint.as_deref().ok_or_else(|| {
            CliError::new(format!(
                "OAuthToken {name} has no spec.authorizationEndpoint: set it to the provider's authorization endpoint, or use --device with a device authorization endpoint"
            ))
        })?;
        let authorization_endpoint = Url::parse(raw)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some())
            .ok_or_else(|| {
                CliError::new("spec.authorizationEndpoint is not an absolute http(s) URL")
            })?;
        match &args.redirect_uri {
            Some(raw) => {
                let redirect_uri = Url::parse(raw)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some())
                    .ok_or_else(|| {
                        CliError::new(format!(
                            "--redirect-uri {raw} is not an absolute http(s) URL"
                        ))
                    })?;
                Mode::Paste {
                    authorization_endpoint,
                    redirect_uri,
                }
            }
            None => Mode::Loopback {
                authorization_endpoint,
                port: args.port.unwrap_or(0),
            },
        }
    };
    Ok(Plan { import, mode })
}

/// The Secret write that hands a refresh token to the operator: a new Secret, or a merge patch
/// that replaces only `key` of an existing one.
pub fn import_patch(key: &str, refresh_token: &SecretString) -> serde_json::Value {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(refresh_token.expose_secret().as_bytes());
    json!({"data": {key: encoded}})
}

/// The page the browser shows after the loopback redirect.
pub fn callback_page(outcome: &Result<(), String>) -> String {
    let (title, text) = match outcome {
        Ok(()) => (
            "Authorized",
            "kubectl oauthtoken received the authorization. You can close this tab and return to the terminal.".to_string(),
        ),
        Err(message) => (
            "Authorization failed",
            format!("{}. Return to the terminal.", html_escape(message)),
        ),
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head><body><h1>{title}</h1><p>{text}</p></body></html>"
    )
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The redirect a human pasted: the whole URL, trimmed; a clear error for anything else.
pub fn parse_pasted(line: &str) -> Result<Url, CliError> {
    let line = line.trim();
    if line.is_empty() {
        return Err(CliError::new(
            "nothing was pasted: paste the full URL your browser was redirected to",
        ));
    }
    Url::parse(line).map_err(|_| {
        CliError::new(
            "what was pasted is not a URL: paste the full URL your browser was redirected to (it starts with the redirect URI)",
        )
    })
}

fn say(line: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{line}");
}

pub async fn run(args: AuthorizeArgs) -> Result<ExitCode, CliError> {
    let (client, namespace) = args.kube.connect().await?;
    let name = args.name.clone();
    let tokens_api: Api<OAuthToken> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let token = tokens_api
        .get(&name)
        .await
        .map_err(|e| api_error("OAuthToken", &name, &namespace, e))?;
    let token_client = TokenClient::new(ClientOptions {
        timeout: Duration::from_secs(30),
        max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        allow_insecure_http: args.allow_insecure_http,
    })
    .map_err(|e| CliError::new(format!("cannot build the HTTP client: {e}")))?;
    let settings = settings::resolve(&token, &token_client)
        .map_err(|message| CliError::new(format!("OAuthToken {name} cannot be used: {message}")))?;
    let plan = plan(&token, &settings, &args, &token_client)?;
    let credentials = read_client(&secrets, &settings.client, &name, &namespace).await?;
    let spec = &token.spec;
    let deadline = tokio::time::Instant::now() + args.timeout;
    let exchange = Exchange {
        endpoint: &settings.endpoint,
        client: &credentials,
        spec,
    };
    let issued = match &plan.mode {
        Mode::Device { endpoint } => {
            device_flow(
                &token_client,
                endpoint,
                &credentials,
                &token,
                deadline,
                &exchange,
            )
            .await?
        }
        Mode::Loopback {
            authorization_endpoint,
            port,
        } => {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", *port))
                .await
                .map_err(|e| {
                    CliError::new(format!(
                        "cannot listen on 127.0.0.1:{port} for the redirect: {e}"
                    ))
                })?;
            let port = listener
                .local_addr()
                .map_err(|e| CliError::new(format!("loopback listener: {e}")))?
                .port();
            let redirect_uri = format!("http://127.0.0.1:{port}/callback");
            let pkce = Pkce::new();
            let state = pkce::new_state();
            let url = pkce::authorization_url(
                authorization_endpoint,
                &credentials.client_id,
                &redirect_uri,
                &spec.scopes,
                &state,
                &pkce,
                &spec.extra_parameters,
            );
            say(&format!(
                "Open this URL in a browser on this machine and sign in:\n\n  {url}\n\nWaiting for the redirect to {redirect_uri} ..."
            ));
            if !args.no_browser {
                open_browser(url.as_str());
            }
            let code = receive_callback(listener, &redirect_uri, &state, deadline).await?;
            token_client
                .request(&exchange.request(GrantRequest::AuthorizationCode {
                    code: &code,
                    redirect_uri: &redirect_uri,
                    code_verifier: &pkce.verifier,
                }))
                .await
                .map_err(|e| CliError::new(format!("the token endpoint refused the code: {e}")))?
        }
        Mode::Paste {
            authorization_endpoint,
            redirect_uri,
        } => {
            let pkce = Pkce::new();
            let state = pkce::new_state();
            let url = pkce::authorization_url(
                authorization_endpoint,
                &credentials.client_id,
                redirect_uri.as_str(),
                &spec.scopes,
                &state,
                &pkce,
                &spec.extra_parameters,
            );
            say(&format!(
                "Open this URL in a browser and sign in:\n\n  {url}\n\nThe browser is then sent to {redirect_uri}?... (the page may fail to load: that is fine).\nPaste the full URL from the address bar here and press Enter:"
            ));
            if !args.no_browser {
                open_browser(url.as_str());
            }
            let line = tokio::time::timeout_at(
                deadline,
                tokio::task::spawn_blocking(|| {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).map(|_| line)
                }),
            )
            .await
            .map_err(|_| timed_out(args.timeout))?
            .map_err(|e| CliError::new(format!("reading standard input: {e}")))?
            .map_err(|e| CliError::new(format!("reading standard input: {e}")))?;
            let pasted = parse_pasted(&line)?;
            let code = pkce::code_from_redirect(&pasted, &state)
                .map_err(|e| CliError::new(format!("the pasted URL cannot be used: {e}")))?;
            let redirect = redirect_uri.as_str();
            token_client
                .request(&exchange.request(GrantRequest::AuthorizationCode {
                    code: &code,
                    redirect_uri: redirect,
                    code_verifier: &pkce.verifier,
                }))
                .await
                .map_err(|e| CliError::new(format!("the token endpoint refused the code: {e}")))?
        }
    };
    let Some(refresh_token) = issued.refresh_token else {
        return Err(CliError::new(
            "the provider issued no refresh token: the scopes may need one that asks for it (often offline_access), or the client may not be allowed the refresh_token grant",
        ));
    };
    write_import(&secrets, &plan.import, &refresh_token, &namespace).await?;
    println!(
        "Wrote a new refresh token to Secret {namespace}/{}, key {}.",
        plan.import.secret, plan.import.key
    );
    println!(
        "The operator imports it at its next reconcile; follow with: kubectl oauthtoken status {name} -n {namespace}"
    );
    Ok(ExitCode::SUCCESS)
}

/// What every token request of this authorization shares.
struct Exchange<'a> {
    endpoint: &'a Url,
    client: &'a ClientCredentials,
    spec: &'a crate::api::OAuthTokenSpec,
}

impl Exchange<'_> {
    fn request<'b>(&'b self, grant: GrantRequest<'b>) -> TokenRequest<'b> {
        TokenRequest {
            endpoint: self.endpoint,
            client: self.client,
            grant,
            scopes: &self.spec.scopes,
            audience: self.spec.audience.as_deref(),
            extra_parameters: &self.spec.extra_parameters,
        }
    }
}

fn timed_out(timeout: Duration) -> CliError {
    CliError {
        message: format!(
            "timed out after {} waiting for the authorization; run the command again (--timeout sets the limit)",
            humantime::format_duration(timeout)
        ),
        code: EXIT_TIMEOUT,
    }
}

/// Reads the client's identity the way the operator does (spec.clientId, else the
/// clientSecretRef's keys).
async fn read_client(
    secrets: &Api<Secret>,
    source: &ClientSource,
    name: &str,
    namespace: &str,
) -> Result<ClientCredentials, CliError> {
    let mut cache: BTreeMap<String, Secret> = BTreeMap::new();
    let mut read = async |reference: &KeyRef| -> Result<String, CliError> {
        if !cache.contains_key(&reference.secret) {
            let secret = secrets
                .get(&reference.secret)
                .await
                .map_err(|e| api_error("Secret", &reference.secret, namespace, e))?;
            cache.insert(reference.secret.clone(), secret);
        }
        secret_text(&cache[&reference.secret], &reference.key).ok_or_else(|| {
            CliError::new(format!(
                "Secret {} (the client of OAuthToken {name}) has no key {}",
                reference.secret, reference.key
            ))
        })
    };
    let client_id = match (&source.client_id, &source.id_key) {
        (Some(id), _) => id.clone(),
        (None, Some(reference)) => read(reference).await?,
        (None, None) => return Err(CliError::new("no client id configured")),
    };
    let client_secret = match &source.secret_key {
        Some(reference) => Some(SecretString::from(read(reference).await?)),
        None => None,
    };
    Ok(ClientCredentials {
        method: source.method,
        client_id,
        client_secret,
    })
}

/// Serves the loopback redirect until a request carries this authorization's answer.
async fn receive_callback(
    listener: tokio::net::TcpListener,
    redirect_uri: &str,
    state: &str,
    deadline: tokio::time::Instant,
) -> Result<SecretString, CliError> {
    let (sender, mut receiver) = mpsc::channel::<Result<SecretString, CliError>>(1);
    let base = Url::parse(redirect_uri)
        .map_err(|_| CliError::new(format!("{redirect_uri} is not a URL")))?;
    let state = state.to_string();
    let app = axum::Router::new().route(
        "/callback",
        axum::routing::get(move |uri: http::Uri| {
            let sender = sender.clone();
            let mut url = base.clone();
            url.set_query(uri.query());
            let state = state.clone();
            async move {
                let (page, status) = match pkce::code_from_redirect(&url, &state) {
                    Ok(code) => {
                        let _ = sender.try_send(Ok(code));
                        (callback_page(&Ok(())), http::StatusCode::OK)
                    }
                    // Not this authorization's answer (a stale tab): keep waiting.
                    Err(
                        error @ (pkce::AuthorizationError::MissingState
                        | pkce::AuthorizationError::StateMismatch),
                    ) => (
                        callback_page(&Err(error.to_string())),
                        http::StatusCode::BAD_REQUEST,
                    ),
                    Err(error) => {
                        let message = if error.is_access_denied() {
                            "the authorization was denied".to_string()
                        } else {
                            error.to_string()
                        };
                        let _ = sender.try_send(Err(CliError::new(format!(
                            "the provider did not authorize: {message}"
                        ))));
                        (callback_page(&Err(message)), http::StatusCode::BAD_REQUEST)
                    }
                };
                (status, axum::response::Html(page))
            }
        }),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await
    });
    let answer = tokio::time::timeout_at(deadline, receiver.recv()).await;
    // Let the browser receive its page before the server stops.
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    match answer {
        Ok(Some(answer)) => answer,
        Ok(None) => Err(CliError::new("the loopback server stopped")),
        Err(_) => Err(CliError {
            message: "timed out waiting for the browser's redirect; run the command again (--timeout sets the limit)".to_string(),
            code: EXIT_TIMEOUT,
        }),
    }
}

/// The device flow in the terminal: shows where to go and the code, then polls the token
/// endpoint at the interval the provider asks for.
async fn device_flow(
    tokens: &TokenClient,
    endpoint: &Url,
    credentials: &ClientCredentials,
    token: &OAuthToken,
    deadline: tokio::time::Instant,
    exchange: &Exchange<'_>,
) -> Result<crate::oauth::Issued, CliError> {
    let spec = &token.spec;
    let authorization = tokens
        .device_authorization(&DeviceAuthorizationRequest {
            endpoint,
            client: credentials,
            scopes: &spec.scopes,
            audience: spec.audience.as_deref(),
            extra_parameters: &spec.extra_parameters,
        })
        .await
        .map_err(|e| CliError::new(format!("the device authorization endpoint refused: {e}")))?;
    let expires_at = authorization.expires_at();
    let mut text = format!(
        "Open {} and enter the code {}",
        authorization.verification_uri, authorization.user_code
    );
    if let Some(complete) = &authorization.verification_uri_complete {
        text.push_str(&format!(" (or open {complete})"));
    }
    text.push_str(&format!(
        " before {}.\nWaiting for the authorization ...",
        expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ));
    say(&text);
    let code_deadline = tokio::time::Instant::now()
        + (expires_at - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
    let mut interval = authorization.interval;
    loop {
        let next = tokio::time::Instant::now() + interval;
        if next > deadline {
            return Err(CliError {
                message: "timed out waiting for the device authorization; run the command again (--timeout sets the limit)".to_string(),
                code: EXIT_TIMEOUT,
            });
        }
        if next > code_deadline {
            return Err(CliError::new(
                "the code expired before it was entered; run the command again for a new one",
            ));
        }
        tokio::time::sleep_until(next).await;
        match tokens
            .request(&exchange.request(GrantRequest::DeviceCode(&authorization.device_code)))
            .await
        {
            Ok(issued) => return Ok(issued),
            Err(error) => match device_poll(&error) {
                DevicePoll::Pending => {}
                DevicePoll::SlowDown => interval += SLOW_DOWN_INCREMENT,
                DevicePoll::Expired => {
                    return Err(CliError::new(
                        "the code expired before it was entered; run the command again for a new one",
                    ));
                }
                DevicePoll::Denied => {
                    return Err(CliError::new("the authorization was denied"));
                }
                DevicePoll::Failed if error.kind() == FailureKind::Transient => {
                    say(&format!(
                        "the token endpoint failed ({error}); trying again"
                    ));
                }
                DevicePoll::Failed => {
                    return Err(CliError::new(format!(
                        "the token endpoint refused the device code: {error}"
                    )));
                }
            },
        }
    }
}

/// Writes the refresh token into the import Secret: creates it when missing, else replaces
/// only its key.
async fn write_import(
    secrets: &Api<Secret>,
    import: &KeyRef,
    refresh_token: &SecretString,
    namespace: &str,
) -> Result<(), CliError> {
    let failed = |e: kube::Error| {
        // The API's answer to a write never carries the data, but say no more than needed.
        let reason = match &e {
            kube::Error::Api(status) => format!("{} ({})", status.reason, status.code),
            _ => "the Kubernetes API could not be reached".to_string(),
        };
        CliError::new(format!(
            "could not write Secret {namespace}/{}: {reason}",
            import.secret
        ))
    };
    let exists = secrets
        .get_opt(&import.secret)
        .await
        .map_err(failed)?
        .is_some();
    if exists {
        secrets
            .patch(
                &import.secret,
                &PatchParams::default(),
                &Patch::Merge(import_patch(&import.key, refresh_token)),
            )
            .await
            .map_err(failed)?;
    } else {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(import.secret.clone()),
                ..Default::default()
            },
            type_: Some("Opaque".to_string()),
            data: Some(
                [(
                    import.key.clone(),
                    k8s_openapi::ByteString(refresh_token.expose_secret().as_bytes().to_vec()),
                )]
                .into(),
            ),
            ..Default::default()
        };
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .map_err(failed)?;
    }
    Ok(())
}

/// Starts the desktop's browser on `url`, if there is one; failures are silent (the URL is
/// printed anyway).
fn open_browser(url: &str) {
    let command = if cfg!(target_os = "macos") {
        Some(("open", vec![url]))
    } else if cfg!(windows) {
        Some(("cmd", vec!["/C", "start", "", url]))
    } else if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    {
        Some(("xdg-open", vec![url]))
    } else {
        None
    };
    if let Some((program, args)) = command {
        let _ = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn token(spec: serde_json::Value) -> OAuthToken {
        let mut full = json!({
            "tokenEndpoint": "https://provider.example.test/token",
            "clientSecretRef": {"name": "client"},
        });
        full.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        serde_json::from_value(json!({
            "apiVersion": "oauth-token-operator.io/v1alpha1", "kind": "OAuthToken",
            "metadata": {"name": "allegro", "namespace": "shop"},
            "spec": full,
        }))
        .unwrap()
    }

    fn args(flags: &[&str]) -> AuthorizeArgs {
        let mut all = vec!["kubectl-oauthtoken", "authorize", "allegro"];
        all.extend(flags);
        match super::super::PluginCli::parse_from(all).command {
            super::super::Command::Authorize(args) => args,
            _ => unreachable!(),
        }
    }

    fn plan_for(spec: serde_json::Value, flags: &[&str]) -> Result<Plan, CliError> {
        let token = token(spec);
        let client = TokenClient::new(ClientOptions::default()).unwrap();
        let settings = settings::resolve(&token, &client).unwrap();
        plan(&token, &settings, &args(flags), &client)
    }

    fn import_grant() -> serde_json::Value {
        json!({"refreshToken": {
            "initialRefreshTokenSecretRef": {"name": "allegro-import"},
            "deviceAuthorizationEndpoint": "https://provider.example.test/device/auth",
        }})
    }

    #[test]
    fn the_mode_follows_the_flags_and_the_import_secret_the_spec() {
        let spec = json!({"grant": import_grant(), "authorizationEndpoint": "https://provider.example.test/auth"});
        let loopback = plan_for(spec.clone(), &[]).unwrap();
        assert_eq!(
            loopback.import,
            KeyRef {
                secret: "allegro-import".into(),
                key: "refresh_token".into()
            }
        );
        assert_eq!(
            loopback.mode,
            Mode::Loopback {
                authorization_endpoint: Url::parse("https://provider.example.test/auth").unwrap(),
                port: 0
            }
        );
        assert!(matches!(
            plan_for(spec.clone(), &["--port", "8400"]).unwrap().mode,
            Mode::Loopback { port: 8400, .. }
        ));
        assert!(matches!(
            plan_for(spec.clone(), &["--redirect-uri", "https://app.example.test/callback"]).unwrap().mode,
            Mode::Paste { redirect_uri, .. } if redirect_uri.as_str() == "https://app.example.test/callback"
        ));
        assert_eq!(
            plan_for(spec, &["--device"]).unwrap().mode,
            Mode::Device {
                endpoint: Url::parse("https://provider.example.test/device/auth").unwrap()
            }
        );
    }

    #[test]
    fn what_cannot_be_done_says_why() {
        let no_endpoint = plan_for(json!({"grant": import_grant()}), &[]).unwrap_err();
        assert!(
            no_endpoint
                .message
                .contains("no spec.authorizationEndpoint"),
            "{}",
            no_endpoint.message
        );
        let no_device = plan_for(
            json!({"grant": {"refreshToken": {"initialRefreshTokenSecretRef": {"name": "i"}}}}),
            &["--device"],
        )
        .unwrap_err();
        assert!(
            no_device
                .message
                .contains("--device needs a device authorization endpoint")
        );
        let other_origin = plan_for(
            json!({"grant": {"refreshToken": {"initialRefreshTokenSecretRef": {"name": "i"},
                "deviceAuthorizationEndpoint": "https://elsewhere.example.test/device"}}}),
            &["--device"],
        )
        .unwrap_err();
        assert!(other_origin.message.contains("token endpoint's origin"));
        let cc = plan_for(json!({"grant": {"clientCredentials": {}}}), &[]).unwrap_err();
        assert!(cc.message.contains("needs no human authorization"));
    }

    #[test]
    fn a_device_grant_has_nowhere_to_write_and_points_at_its_own_flow() {
        let mut t = token(json!({"grant": {"deviceCode": {
            "deviceAuthorizationEndpoint": "https://provider.example.test/device/auth"}}}));
        t.status = Some(
            serde_json::from_value(json!({"authorization": {
                "userCode": "WDJB-MJHT", "verificationUri": "https://provider.example.test/device",
                "expiresAt": "2026-03-01T12:10:00Z"}}))
            .unwrap(),
        );
        let client = TokenClient::new(ClientOptions::default()).unwrap();
        let settings = settings::resolve(&t, &client).unwrap();
        for flags in [&[][..], &["--device"]] {
            let error = plan(&t, &settings, &args(flags), &client).unwrap_err();
            assert!(
                error
                    .message
                    .contains("authorizes itself with the device flow")
            );
            assert!(error.message.contains(
                "open https://provider.example.test/device and enter the code WDJB-MJHT before 2026-03-01T12:10:00Z"
            ), "{}", error.message);
            assert!(
                error
                    .message
                    .contains("kubectl oauthtoken refresh allegro -n shop")
            );
        }
    }

    #[test]
    fn flags_that_exclude_each_other_are_refused() {
        let parse = |flags: &[&str]| {
            let mut all = vec!["kubectl-oauthtoken", "authorize", "allegro"];
            all.extend(flags);
            super::super::PluginCli::try_parse_from(all)
        };
        assert!(parse(&["--device", "--redirect-uri", "https://a.test/cb"]).is_err());
        assert!(parse(&["--device", "--port", "1"]).is_err());
        assert!(parse(&["--port", "1", "--redirect-uri", "https://a.test/cb"]).is_err());
        assert!(parse(&["--no-browser", "--timeout", "30s", "--allow-insecure-http"]).is_ok());
    }

    #[test]
    fn the_import_patch_replaces_only_its_key() {
        let patch = import_patch("rt", &SecretString::from("abc"));
        assert_eq!(patch, json!({"data": {"rt": "YWJj"}}));
    }

    #[test]
    fn pasted_redirects_are_read_through_the_library() {
        let pasted =
            parse_pasted("  https://app.example.test/callback?code=C0DE&state=S1\n").unwrap();
        assert_eq!(
            pkce::code_from_redirect(&pasted, "S1")
                .unwrap()
                .expose_secret(),
            "C0DE"
        );
        assert_eq!(
            pkce::code_from_redirect(&pasted, "S2").unwrap_err(),
            pkce::AuthorizationError::StateMismatch
        );
        assert!(
            parse_pasted("\n")
                .unwrap_err()
                .message
                .contains("nothing was pasted")
        );
        let error = parse_pasted("C0DE").unwrap_err().message;
        assert!(error.contains("not a URL") && !error.contains("C0DE"));
    }

    #[test]
    fn the_callback_page_says_to_close_the_tab_and_escapes_errors() {
        assert!(callback_page(&Ok(())).contains("You can close this tab"));
        let page = callback_page(&Err("<script>".into()));
        assert!(page.contains("&lt;script&gt;") && !page.contains("<script>"));
    }
}
