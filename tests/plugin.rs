//! The kubectl plugin (`kubectl oauthtoken`), run as a human runs it: the built binary invoked
//! through a link named `kubectl-oauthtoken`, against the test Kubernetes API (or
//! `E2E_KUBECONFIG`) and, for `authorize`, a real authorization server.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::DateTime;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use support::e2e::{Env, wait_for};
use support::oidc_provider::{
    BASIC_CLIENT, DEFAULT_SCOPE, HTTPS_REDIRECT_URI, OidcOptions, OidcProvider,
};

const BINARY: &str = env!("CARGO_BIN_EXE_oauth-token-operator");

/// A directory holding `kubectl-oauthtoken`, a link to the built binary, as the install
/// instructions make it.
struct Plugin {
    dir: tempfile::TempDir,
}

impl Plugin {
    fn new() -> Plugin {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(BINARY, dir.path().join("kubectl-oauthtoken")).unwrap();
        Plugin { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("kubectl-oauthtoken")
    }

    /// A command for the plugin with a clean environment: no KUBECONFIG, a HOME without one.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.path());
        command
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.dir.path())
            .stdin(Stdio::null());
        command
    }

    /// Runs the plugin against `env`'s cluster in its namespace, off the async runtime.
    async fn run(&self, env: &Env, args: &[&str]) -> Output {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend([
            "--kubeconfig".to_string(),
            env.kubeconfig.display().to_string(),
            "-n".to_string(),
            env.namespace.clone(),
        ]);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut command = self.command(&all);
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A kubeconfig like `env`'s whose context defaults to the test's namespace.
fn kubeconfig_in_namespace(env: &Env, dir: &Path) -> PathBuf {
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&env.kubeconfig).unwrap()).unwrap();
    for context in config["contexts"].as_sequence_mut().unwrap() {
        context["context"]["namespace"] = serde_yaml::Value::from(env.namespace.clone());
    }
    let path = dir.join("kubeconfig-in-namespace");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

async fn apply_import_token(env: &Env, name: &str) {
    env.apply_token(
        name,
        json!({
            "tokenEndpoint": "https://provider.example.test/token",
            "clientSecretRef": {"name": "client"},
            "grant": {"refreshToken": {"initialRefreshTokenSecretRef": {"name": format!("{name}-import")}}},
        }),
    )
    .await;
}

async fn patch_status(env: &Env, name: &str, status: Value) {
    env.tokens()
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();
}

#[test]
fn the_link_is_the_plugin_and_the_binary_offers_the_same_commands() {
    let plugin = Plugin::new();
    let help = plugin.command(&["--help"]).output().unwrap();
    assert!(help.status.success());
    let help = text(&help.stdout);
    for expected in [
        "Usage: kubectl oauthtoken <COMMAND>",
        "authorize",
        "refresh",
        "status",
        "Examples:",
        "kubectl oauthtoken status allegro -n shop",
    ] {
        assert!(help.contains(expected), "{expected:?} missing in\n{help}");
    }
    assert!(!help.contains("Run the controller"), "{help}");
    let operator = Command::new(BINARY).arg("--help").output().unwrap();
    let operator = text(&operator.stdout);
    for expected in [
        "run",
        "crd",
        "authorize",
        "refresh",
        "status",
        "kubectl-oauthtoken",
    ] {
        assert!(
            operator.contains(expected),
            "{expected:?} missing in\n{operator}"
        );
    }
    // Every command explains itself with examples.
    for command in ["authorize", "refresh", "status"] {
        let output = plugin.command(&[command, "--help"]).output().unwrap();
        let help = text(&output.stdout);
        assert!(output.status.success(), "{command} --help failed");
        assert!(
            help.contains(&format!("kubectl oauthtoken {command} allegro")),
            "{command} --help has no example:\n{help}"
        );
        for flag in ["--kubeconfig", "--context", "-n, --namespace"] {
            assert!(help.contains(flag), "{command} --help lacks {flag}");
        }
    }
}

#[tokio::test]
async fn status_shows_the_operators_report_and_the_next_step() {
    let env = Env::new("plugin-status").await;
    let plugin = Plugin::new();
    apply_import_token(&env, "allegro").await;
    let expires = chrono::Utc::now() + chrono::Duration::minutes(50);
    patch_status(
        &env,
        "allegro",
        json!({
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "InvalidGrant",
                 "message": "The provider rejected the refresh token", "lastTransitionTime": "2026-03-01T11:00:00Z"},
                {"type": "ReauthorizationRequired", "status": "True", "reason": "InvalidGrant",
                 "message": "Put a new refresh token in Secret allegro-import", "lastTransitionTime": "2026-03-01T11:00:00Z"},
            ],
            "expiresAt": expires.to_rfc3339(),
            "refreshTokenExpiresAt": "2030-01-01T00:00:00Z",
            "lastRefreshAt": "2026-03-01T10:00:00Z",
            "failedAttempts": 4,
            "lastRefreshRequest": "2026-03-01T10:59:00.123456789Z",
            "lastRefreshRequestResult": "Refresh failed: invalid_grant",
        }),
    )
    .await;

    let output = plugin.run(&env, &["status", "allegro"]).await;
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    for expected in [
        "Name:                  allegro\n".to_string(),
        format!("Namespace:             {}\n", env.namespace),
        "  Ready: False (InvalidGrant)\n    The provider rejected the refresh token\n".to_string(),
        "  ReauthorizationRequired: True (InvalidGrant)\n".to_string(),
        "Refresh token expires: 2030-01-01T00:00:00Z".to_string(),
        "Last refresh:          2026-03-01T10:00:00Z".to_string(),
        "Failed attempts:       4\n".to_string(),
        "Last refresh request:  2026-03-01T10:59:00.123456789Z\n  Result:              Refresh failed: invalid_grant\n".to_string(),
        format!(
            "Next step: authorize again: kubectl oauthtoken authorize allegro -n {}\n",
            env.namespace
        ),
    ] {
        assert!(stdout.contains(&expected), "{expected:?} missing in\n{stdout}");
    }
    assert!(stdout.contains("Access token expires:  "), "{stdout}");

    // A pending device authorization: where to go and what to enter. The namespace comes
    // from the kubeconfig's context this time, the kubeconfig from $KUBECONFIG.
    patch_status(
        &env,
        "allegro",
        json!({"authorization": {
            "userCode": "WDJB-MJHT",
            "verificationUri": "https://provider.example.test/device",
            "expiresAt": (chrono::Utc::now() + chrono::Duration::minutes(10)).to_rfc3339(),
        }}),
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig_in_namespace(&env, work.path());
    let mut command = plugin.command(&["status", "allegro"]);
    command.env("KUBECONFIG", &kubeconfig);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        stdout.contains("  Enter the code:      WDJB-MJHT\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "Next step: open https://provider.example.test/device and enter the code WDJB-MJHT before "
        ),
        "{stdout}"
    );

    // The same command through the operator binary's own name.
    let mut command = Command::new(BINARY);
    command
        .args(["status", "allegro", "-n", &env.namespace, "--kubeconfig"])
        .arg(&env.kubeconfig);
    // Off the runtime: the in-process API server runs on it.
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success());
    assert!(text(&output.stdout).contains("Enter the code:      WDJB-MJHT"));

    // A name that does not exist is a clear error.
    let output = plugin.run(&env, &["status", "nope"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains(&format!(
            "error: OAuthToken nope not found in namespace {}",
            env.namespace
        )),
        "{}",
        text(&output.stderr)
    );
}

#[tokio::test]
async fn refresh_sets_a_new_annotation_and_a_wait_without_operator_times_out() {
    let env = Env::new("plugin-refresh").await;
    let plugin = Plugin::new();
    apply_import_token(&env, "allegro").await;

    let before = chrono::Utc::now();
    let output = plugin.run(&env, &["refresh", "allegro"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let token = env.tokens().get("allegro").await.unwrap();
    let value = token.metadata.annotations.unwrap()["oauth-token-operator.io/refresh"].clone();
    let at = DateTime::parse_from_rfc3339(&value).unwrap();
    assert!(at >= before && at <= chrono::Utc::now(), "{value}");
    assert!(value.contains('.') && value.ends_with('Z'), "{value}");
    assert!(
        text(&output.stdout).contains(&value),
        "{}",
        text(&output.stdout)
    );
    // The spec is untouched.
    assert_eq!(
        token.spec.token_endpoint,
        "https://provider.example.test/token"
    );

    // Each request has a new value.
    let output = plugin.run(&env, &["refresh", "allegro"]).await;
    assert!(output.status.success());
    let token = env.tokens().get("allegro").await.unwrap();
    let second = token.metadata.annotations.unwrap()["oauth-token-operator.io/refresh"].clone();
    assert_ne!(second, value);

    // No operator runs: the wait ends at its timeout with a message and exit code 2.
    let started = Instant::now();
    let output = plugin
        .run(&env, &["refresh", "allegro", "--wait", "--timeout", "2s"])
        .await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("timed out after 2s"), "{stderr}");
    assert!(stderr.contains("is the operator running?"), "{stderr}");

    // The operator's acknowledgement of the value ends the wait: simulated here by writing
    // the status the operator would write once the annotation shows.
    let token = env.tokens().get("allegro").await.unwrap();
    let second = token.metadata.annotations.unwrap()["oauth-token-operator.io/refresh"].clone();
    let waiting = plugin.run(&env, &["refresh", "allegro", "--wait", "--timeout", "20s"]);
    let acknowledge = async {
        let value = support::e2e::wait_for(
            "the third refresh request",
            Duration::from_secs(10),
            || async {
                let token = env.tokens().get("allegro").await.unwrap();
                let value =
                    token.metadata.annotations.unwrap()["oauth-token-operator.io/refresh"].clone();
                (value != second).then_some(value)
            },
        )
        .await;
        patch_status(
            &env,
            "allegro",
            json!({
                "lastRefreshRequest": value,
                "lastRefreshRequestResult": "Refreshed",
                "conditions": [{"type": "Ready", "status": "True", "reason": "TokenValid",
                                "message": "", "lastTransitionTime": "2026-03-01T11:00:00Z"}],
            }),
        )
        .await;
    };
    let (output, ()) = tokio::join!(waiting, acknowledge);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("Result: Refreshed\nReady: True (TokenValid)\n"),
        "{}",
        text(&output.stdout)
    );

    // An acknowledgement that leaves the OAuthToken not Ready: exit 1, and what to do next.
    let token = env.tokens().get("allegro").await.unwrap();
    let third = token.metadata.annotations.unwrap()["oauth-token-operator.io/refresh"].clone();
    let waiting = plugin.run(&env, &["refresh", "allegro", "--wait", "--timeout", "20s"]);
    let acknowledge = async {
        let value = wait_for(
            "the fourth refresh request",
            Duration::from_secs(10),
            || async {
                let token = env.tokens().get("allegro").await.unwrap();
                let value =
                    token.metadata.annotations.unwrap()["oauth-token-operator.io/refresh"].clone();
                (value != third).then_some(value)
            },
        )
        .await;
        patch_status(
            &env,
            "allegro",
            json!({
                "lastRefreshRequest": value,
                "lastRefreshRequestResult": "Refresh failed: invalid_grant",
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "InvalidGrant",
                     "message": "rejected", "lastTransitionTime": "2026-03-01T11:00:00Z"},
                    {"type": "ReauthorizationRequired", "status": "True", "reason": "InvalidGrant",
                     "message": "", "lastTransitionTime": "2026-03-01T11:00:00Z"},
                ],
            }),
        )
        .await;
    };
    let (output, ()) = tokio::join!(waiting, acknowledge);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains(&format!(
            "Result: Refresh failed: invalid_grant\nReady: False (InvalidGrant): rejected\nNext step: authorize again: kubectl oauthtoken authorize allegro -n {}\n",
            env.namespace
        )),
        "{}",
        text(&output.stdout)
    );

    let output = plugin.run(&env, &["refresh", "nope"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("OAuthToken nope not found"));
}

/// The plugin running in the background, its output collected as it comes.
struct Running {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(plugin: &Plugin, env: &Env, args: &[&str]) -> Running {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend([
            "--kubeconfig".to_string(),
            env.kubeconfig.display().to_string(),
            "-n".to_string(),
            env.namespace.clone(),
        ]);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut child = plugin
            .command(&all)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut out = child.stdout.take().unwrap();
        let out_text = stdout.clone();
        let err = BufReader::new(child.stderr.take().unwrap());
        let err_lines = stderr.clone();
        let readers = vec![
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = out.read_to_string(&mut text);
                out_text.lock().unwrap().push_str(&text);
            }),
            std::thread::spawn(move || {
                for line in err.lines().map_while(Result::ok) {
                    err_lines.lock().unwrap().push(line);
                }
            }),
        ];
        Running {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// The first stderr line that `pick` accepts, transformed.
    async fn stderr_line<T>(&self, what: &str, pick: impl Fn(&str) -> Option<T>) -> T {
        wait_for(what, Duration::from_secs(20), || async {
            self.stderr.lock().unwrap().iter().find_map(|l| pick(l))
        })
        .await
    }

    fn write_stdin(&mut self, text: &str) {
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }

    /// Waits for the exit: status, stdout, stderr.
    async fn finish(self) -> (ExitStatus, String, String) {
        let Running {
            mut child,
            stdout,
            stderr,
            readers,
        } = self;
        let status = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(40);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("the plugin did not exit within 40 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .unwrap();
        for reader in readers {
            reader.join().unwrap();
        }
        let stdout = stdout.lock().unwrap().clone();
        let stderr = stderr.lock().unwrap().join("\n");
        (status, stdout, stderr)
    }
}

/// A provider, the client's Secret and an OAuthToken that imports from `allegro-import`.
async fn authorize_setup(test: &str) -> (Env, OidcProvider) {
    let env = Env::new(test).await;
    let provider = OidcProvider::start(OidcOptions::default()).await;
    env.apply_client_secret("client", BASIC_CLIENT).await;
    let token_endpoint = provider.token_endpoint().to_string();
    env.apply_token(
        "allegro",
        json!({
            "tokenEndpoint": token_endpoint,
            "authorizationEndpoint": provider.authorization_endpoint(),
            "clientSecretRef": {"name": "client"},
            "scopes": DEFAULT_SCOPE.split(' ').collect::<Vec<_>>(),
            "grant": {"refreshToken": {
                "initialRefreshTokenSecretRef": {"name": "allegro-import"},
                "deviceAuthorizationEndpoint": provider.device_authorization_endpoint(),
            }},
        }),
    )
    .await;
    (env, provider)
}

/// Runs `authorize --device` for `allegro` and enters the user code it prints at the provider,
/// as a human would: the exit status, stdout and stderr.
async fn authorize_by_device(
    plugin: &Plugin,
    env: &Env,
    provider: &OidcProvider,
) -> (ExitStatus, String, String) {
    let running = Running::start(
        plugin,
        env,
        &[
            "authorize",
            "allegro",
            "--device",
            "--allow-insecure-http",
            "--timeout",
            "40s",
        ],
    );
    let user_code = running
        .stderr_line("the user code", |l| {
            let rest = l.split(" and enter the code ").nth(1)?;
            Some(rest.split(' ').next()?.to_string())
        })
        .await;
    provider.approve_device(&user_code).await;
    running.finish().await
}

/// The refresh token now in the import Secret, after checking that the provider accepts it.
async fn imported_refresh_token(env: &Env, provider: &OidcProvider) -> String {
    let data = env
        .secret_data("allegro-import")
        .await
        .expect("the import Secret exists");
    let refresh_token = data["refresh_token"].clone();
    let answer = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(provider.token_endpoint())
        .basic_auth(BASIC_CLIENT.id, Some(BASIC_CLIENT.secret))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let body: Value = answer.json().await.unwrap();
    assert_eq!(
        status.as_u16(),
        200,
        "the provider refused the refresh token: {body}"
    );
    assert!(body["access_token"].is_string());
    refresh_token
}

/// Nothing secret reached the terminal.
fn assert_nothing_secret(outputs: &[&str], secrets: &[&str]) {
    for secret in secrets {
        assert!(!secret.is_empty());
        for output in outputs {
            assert!(!output.contains(secret), "a secret was printed:\n{output}");
        }
    }
}

fn code_of(location: &url::Url) -> String {
    location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("the redirect carries a code")
}

/// The URL the plugin asks the human to open (the indented line after "Open this URL").
fn printed_url(line: &str) -> Option<String> {
    let line = line.trim();
    line.starts_with("http").then(|| line.to_string())
}

#[tokio::test]
async fn authorize_over_a_loopback_redirect_writes_the_import_secret() {
    let (env, provider) = authorize_setup("plugin-loopback").await;
    let plugin = Plugin::new();
    let running = Running::start(
        &plugin,
        &env,
        &[
            "authorize",
            "allegro",
            "--no-browser",
            "--allow-insecure-http",
            "--timeout",
            "40s",
        ],
    );
    let url = running
        .stderr_line("the authorization URL", printed_url)
        .await;
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    let location = provider.browse_authorization(&url).await;
    assert_eq!(location.host_str(), Some("127.0.0.1"), "{location}");
    assert_eq!(location.path(), "/callback");
    // The browser follows the redirect to the plugin's loopback listener.
    let page = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(location.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("You can close this tab")
    );
    let (status, stdout, stderr) = running.finish().await;
    assert!(status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "Wrote a new refresh token to Secret {}/allegro-import, key refresh_token.",
            env.namespace
        )),
        "{stdout}"
    );
    let refresh_token = imported_refresh_token(&env, &provider).await;
    assert_nothing_secret(
        &[&stdout, &stderr],
        &[&refresh_token, &code_of(&location), BASIC_CLIENT.secret],
    );
}

#[tokio::test]
async fn authorize_by_pasting_the_redirect_patches_only_the_key() {
    let (env, provider) = authorize_setup("plugin-paste").await;
    // The import Secret exists with another key, which stays.
    env.apply_secret("allegro-import", &[("note", "kept")])
        .await;
    let plugin = Plugin::new();
    let mut running = Running::start(
        &plugin,
        &env,
        &[
            "authorize",
            "allegro",
            "--redirect-uri",
            HTTPS_REDIRECT_URI,
            "--no-browser",
            "--allow-insecure-http",
            "--timeout",
            "40s",
        ],
    );
    let url = running
        .stderr_line("the authorization URL", printed_url)
        .await;
    let location = provider.browse_authorization(&url).await;
    assert!(
        location.as_str().starts_with(HTTPS_REDIRECT_URI),
        "{location}"
    );
    running
        .stderr_line("the paste prompt", |l| {
            l.contains("Paste the full URL").then_some(())
        })
        .await;
    running.write_stdin(&format!("{location}\n"));
    let (status, stdout, stderr) = running.finish().await;
    assert!(status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let refresh_token = imported_refresh_token(&env, &provider).await;
    assert_eq!(
        env.secret_data("allegro-import").await.unwrap()["note"],
        "kept"
    );
    assert_nothing_secret(
        &[&stdout, &stderr],
        &[&refresh_token, &code_of(&location), BASIC_CLIENT.secret],
    );
}

#[tokio::test]
async fn authorize_with_the_device_flow_writes_the_import_secret() {
    let (env, provider) = authorize_setup("plugin-device").await;
    let plugin = Plugin::new();
    let (status, stdout, stderr) = authorize_by_device(&plugin, &env, &provider).await;
    assert!(status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains(provider.verification_uri()), "{stderr}");
    let refresh_token = imported_refresh_token(&env, &provider).await;
    assert_nothing_secret(&[&stdout, &stderr], &[&refresh_token, BASIC_CLIENT.secret]);
}

#[tokio::test]
async fn authorize_sends_no_credentials_to_a_plain_http_token_endpoint_without_the_flag() {
    let (env, _provider) = authorize_setup("plugin-authorize-errors").await;
    let plugin = Plugin::new();
    let output = plugin
        .run(
            &env,
            &["authorize", "allegro", "--no-browser", "--timeout", "5s"],
        )
        .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("spec.tokenEndpoint"),
        "{}",
        text(&output.stderr)
    );
    assert!(env.secret_data("allegro-import").await.is_none());
}

#[tokio::test]
async fn authorize_reports_a_denial_and_writes_nothing() {
    let (env, provider) = authorize_setup("plugin-deny").await;
    let plugin = Plugin::new();
    // In the browser: "Deny" on the consent page.
    let running = Running::start(
        &plugin,
        &env,
        &[
            "authorize",
            "allegro",
            "--no-browser",
            "--allow-insecure-http",
            "--timeout",
            "40s",
        ],
    );
    let url = running
        .stderr_line("the authorization URL", printed_url)
        .await;
    let location = provider.deny_authorization(&url).await;
    let page = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(location)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 400);
    assert!(page.text().await.unwrap().contains("Authorization failed"));
    let (status, _, stderr) = running.finish().await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: the provider did not authorize: the authorization was denied"),
        "{stderr}"
    );

    // In the device flow: "Deny" after entering the code.
    let running = Running::start(
        &plugin,
        &env,
        &[
            "authorize",
            "allegro",
            "--device",
            "--allow-insecure-http",
            "--timeout",
            "40s",
        ],
    );
    let user_code = running
        .stderr_line("the user code", |l| {
            let rest = l.split(" and enter the code ").nth(1)?;
            Some(rest.split(' ').next()?.to_string())
        })
        .await;
    provider.deny_device(&user_code).await;
    let (status, _, stderr) = running.finish().await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: the authorization was denied"),
        "{stderr}"
    );
    assert!(env.secret_data("allegro-import").await.is_none());
}

/// The whole human path with the operator running: `authorize --device` puts a refresh token in
/// the import Secret, the operator imports it, `refresh --wait` is acknowledged after exactly one
/// more presentation, a second one at once is acknowledged without any, and `status` says the
/// OAuthToken is Ready with nothing to do. Nothing secret reaches the terminal.
#[tokio::test]
async fn authorize_refresh_and_status_with_the_operator_running() {
    let (env, provider) = authorize_setup("plugin-operator").await;
    let operator = support::e2e::Operator::start(&env);
    let plugin = Plugin::new();
    let (status, stdout, stderr) = authorize_by_device(&plugin, &env, &provider).await;
    assert!(status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let mut outputs = vec![stdout, stderr];
    env.wait_for_condition(
        "allegro",
        "Ready",
        ("True", "TokenValid"),
        Duration::from_secs(30),
    )
    .await;
    // The import was one presentation; let spec.minRefreshInterval (10 s) pass.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = provider.stats().await.grant_type("refresh_token");

    let output = plugin
        .run(&env, &["refresh", "allegro", "--wait", "--timeout", "30s"])
        .await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("Refreshed"), "{stdout}");
    assert_eq!(
        provider.stats().await.grant_type("refresh_token"),
        before + 1
    );
    outputs.extend([stdout, stderr]);

    let output = plugin
        .run(&env, &["refresh", "allegro", "--wait", "--timeout", "30s"])
        .await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("Not refreshed: the last token request was at"),
        "{stdout}"
    );
    assert_eq!(
        provider.stats().await.grant_type("refresh_token"),
        before + 1,
        "too soon: acknowledged without a token request"
    );
    outputs.extend([stdout, stderr]);

    let output = plugin.run(&env, &["status", "allegro"]).await;
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.contains("TokenValid"), "{stdout}");
    outputs.push(stdout);

    let stats = provider.stats().await;
    assert_eq!(stats.error("invalid_grant"), 0, "{stats:?}");
    let issued = provider.issued_secrets().await;
    let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let mut secrets: Vec<&str> = issued.iter().map(String::as_str).collect();
    secrets.push(BASIC_CLIENT.secret);
    assert_nothing_secret(&outputs, &secrets);
    let values = support::e2e::SecretValues::default();
    for secret in &secrets {
        values.add(secret);
    }
    operator.assert_no_secret_in_logs(&values);
}
