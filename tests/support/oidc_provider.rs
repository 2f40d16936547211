//! A real OAuth 2.0 authorization server for integration tests.
//!
//! Spawns `node tests/oidc-provider/server.mjs` (the npm package
//! `oidc-provider`, see `tests/oidc-provider/README.md`) on an ephemeral
//! loopback port and talks to its test-only admin routes (`/test/*`).
//!
//! * Needs `node` (>= 20) and, on a fresh checkout, `npm` with registry access:
//!   the first [`OidcProvider::start`] runs `npm ci` in `tests/oidc-provider`
//!   under an exclusive file lock, so parallel test binaries do not race.
//! * The child is killed when the [`OidcProvider`] is dropped; it also exits by
//!   itself when its stdin closes, i.e. when the test process dies.
//! * `OIDC_NODE` overrides the `node` binary, `OIDC_NPM` the `npm` binary.
//!
//! Refresh tokens rotate on every refresh; presenting an already-used refresh
//! token answers `invalid_grant` AND revokes the whole grant (the newest
//! refresh token of that grant then fails too).
//!
//! [`BASIC_CLIENT`] and [`PUBLIC_CLIENT`] can also be authorized by a "user":
//! the device flow (RFC 8628) and the authorization code flow with PKCE
//! (loopback redirect `http://127.0.0.1/callback` on any port, or
//! [`HTTPS_REDIRECT_URI`]). [`OidcProvider::approve_device`],
//! [`OidcProvider::deny_device`], [`OidcProvider::browse_authorization`] and
//! [`OidcProvider::deny_authorization`] drive the server's pages as a browser
//! would (cookies kept, xsrf field sent, login as [`TEST_USER`], consent).
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

/// How long to wait for the server's "ready" line after spawning node.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How many stderr lines of the server to keep for panic messages.
const STDERR_TAIL: usize = 200;

/// A static client registered in the test server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub id: &'static str,
    /// Empty for the public client.
    pub secret: &'static str,
    /// `client_secret_basic`, `client_secret_post` or `none`. The server
    /// rejects (401 `invalid_client`) the other secret-based method by default.
    pub auth_method: &'static str,
}

/// `client_secret_basic`; grants `authorization_code`, the device code grant
/// and `refresh_token`; scopes `openid offline_access api:read api:write`;
/// redirect URIs [`LOOPBACK_REDIRECT_URI`] (any port) and [`HTTPS_REDIRECT_URI`].
pub const BASIC_CLIENT: Client = Client {
    id: "basic-client",
    secret: "basic-client-secret-0123456789abcdef",
    auth_method: "client_secret_basic",
};

/// `client_secret_post`; grants `authorization_code` + `refresh_token`;
/// scopes `openid offline_access api:read api:write`.
pub const POST_CLIENT: Client = Client {
    id: "post-client",
    secret: "post-client-secret-0123456789abcdef",
    auth_method: "client_secret_post",
};

/// Public client (`none`, send `client_id` in the form); grants
/// `authorization_code` (PKCE required), the device code grant and
/// `refresh_token`; refresh tokens rotate as well. Redirect URIs as
/// [`BASIC_CLIENT`].
pub const PUBLIC_CLIENT: Client = Client {
    id: "public-client",
    secret: "",
    auth_method: "none",
};

/// `client_secret_basic`; grant `client_credentials`; scopes `api:read api:write`.
pub const CC_CLIENT: Client = Client {
    id: "cc-client",
    secret: "cc-client-secret-0123456789abcdef",
    auth_method: "client_secret_basic",
};

/// `client_secret_post`; grant `client_credentials`; scopes `api:read api:write`.
pub const CC_POST_CLIENT: Client = Client {
    id: "cc-post-client",
    secret: "cc-post-client-secret-0123456789abcdef",
    auth_method: "client_secret_post",
};

pub const ALL_CLIENTS: [Client; 5] = [
    BASIC_CLIENT,
    POST_CLIENT,
    PUBLIC_CLIENT,
    CC_CLIENT,
    CC_POST_CLIENT,
];

/// Default scope of [`OidcProvider::create_grant`] callers that do not care.
pub const DEFAULT_SCOPE: &str = "openid offline_access api:read";

/// The loopback redirect URI registered for [`BASIC_CLIENT`] and
/// [`PUBLIC_CLIENT`]; any port is accepted (RFC 8252 section 7.3).
pub const LOOPBACK_REDIRECT_URI: &str = "http://127.0.0.1/callback";
/// A registered HTTPS redirect URI of [`BASIC_CLIENT`] and [`PUBLIC_CLIENT`]
/// that nobody serves: read the Location header that points at it.
pub const HTTPS_REDIRECT_URI: &str = "https://app.example.test/callback";
/// The one account the interaction pages accept.
pub const TEST_USER: &str = "test-user";
pub const TEST_PASSWORD: &str = "test-password";
/// `grant_type` of device code polls.
pub const DEVICE_CODE_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";

#[derive(Debug, Clone)]
pub struct OidcOptions {
    /// `expires_in` of access tokens issued by the refresh_token grant.
    pub access_token_ttl_secs: u64,
    /// `expires_in` of access tokens issued by the client_credentials grant.
    pub client_credentials_ttl_secs: u64,
    /// Lifetime of each (rotated) refresh token.
    pub refresh_token_ttl_secs: u64,
    /// Reject `client_secret_basic` for a `client_secret_post` client and vice
    /// versa (oidc-provider itself accepts both). Default `true`.
    pub strict_client_auth: bool,
    /// `expires_in` of device codes. Default 600.
    pub device_code_ttl_secs: u64,
}

impl Default for OidcOptions {
    fn default() -> Self {
        Self {
            access_token_ttl_secs: 30,
            client_credentials_ttl_secs: 30,
            refresh_token_ttl_secs: 24 * 60 * 60,
            strict_client_auth: true,
            device_code_ttl_secs: 600,
        }
    }
}

/// A grant created through the admin API, as if a user had consented.
#[derive(Debug, Clone, Deserialize)]
pub struct Grant {
    pub refresh_token: String,
    pub grant_id: String,
    #[serde(default)]
    pub account_id: String,
}

/// Token-endpoint counters; every POST to the token endpoint is counted,
/// rejected and fault-injected ones included.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub token_requests: u64,
    /// POSTs to the device authorization endpoint (not counted in
    /// `token_requests`).
    #[serde(default)]
    pub device_authorizations: u64,
    /// Responses with status 2xx carrying an `access_token`.
    pub successes: u64,
    /// By OAuth `error` code (`invalid_grant`, `invalid_client`, ...), or
    /// `http_<status>` when the body carried no `error`.
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    /// By the `grant_type` form parameter (`unknown` when absent).
    #[serde(default)]
    pub by_grant_type: BTreeMap<String, u64>,
    /// By the client id claimed in the request (Basic header or `client_id`).
    #[serde(default)]
    pub by_client: BTreeMap<String, u64>,
    #[serde(default)]
    pub faults_injected: u64,
}

impl Stats {
    pub fn error(&self, code: &str) -> u64 {
        self.errors.get(code).copied().unwrap_or(0)
    }

    pub fn grant_type(&self, grant_type: &str) -> u64 {
        self.by_grant_type.get(grant_type).copied().unwrap_or(0)
    }

    pub fn client(&self, client_id: &str) -> u64 {
        self.by_client.get(client_id).copied().unwrap_or(0)
    }

    pub fn total_errors(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A fault for the next token-endpoint requests, see [`OidcProvider::inject_faults`].
#[derive(Debug, Clone)]
pub struct Fault {
    pub status: u16,
    /// OAuth `error` in the body; default `temporarily_unavailable` for 5xx,
    /// `invalid_request` otherwise.
    pub error: Option<String>,
    /// `Retry-After` header value in seconds.
    pub retry_after_secs: Option<u64>,
    /// Delay before answering.
    pub delay_ms: u64,
    /// Only for token requests of this `grant_type` (others pass it by and
    /// leave it queued); `None` for any.
    pub grant_type: Option<String>,
}

impl Fault {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            error: None,
            retry_after_secs: None,
            delay_ms: 0,
            grant_type: None,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Ready {
    issuer: String,
    token_endpoint: String,
    authorization_endpoint: String,
    device_authorization_endpoint: String,
    verification_uri: String,
    revocation_endpoint: String,
    introspection_endpoint: String,
    pid: u32,
}

/// A running test authorization server; killed on drop.
pub struct OidcProvider {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    ready: Ready,
    options: OidcOptions,
    http: reqwest::Client,
}

impl OidcProvider {
    /// Starts a fresh server (own in-memory state) on an ephemeral port.
    pub async fn start(opts: OidcOptions) -> OidcProvider {
        tokio::task::spawn_blocking(ensure_node_modules)
            .await
            .expect("npm ci task panicked");

        let dir = provider_dir();
        let node = std::env::var("OIDC_NODE").unwrap_or_else(|_| "node".to_owned());
        let mut cmd = Command::new(&node);
        cmd.current_dir(&dir)
            .arg("server.mjs")
            .args(["--port", "0"])
            .args([
                "--access-token-ttl",
                &opts.access_token_ttl_secs.to_string(),
            ])
            .args([
                "--client-credentials-ttl",
                &opts.client_credentials_ttl_secs.to_string(),
            ])
            .args([
                "--refresh-token-ttl",
                &opts.refresh_token_ttl_secs.to_string(),
            ])
            .args(["--device-code-ttl", &opts.device_code_ttl_secs.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !opts.strict_client_auth {
            cmd.arg("--lenient-client-auth");
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "failed to spawn `{node} server.mjs` in {}: {e} (is Node.js >= 20 installed? set OIDC_NODE to override)",
                dir.display()
            )
        });

        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");

        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_thread = {
            let tail = Arc::clone(&stderr_tail);
            std::thread::Builder::new()
                .name("oidc-provider-stderr".into())
                .spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        // Captured by the test harness: shown for failing tests.
                        eprintln!("{line}");
                        let mut tail = tail.lock().unwrap();
                        if tail.len() == STDERR_TAIL {
                            tail.pop_front();
                        }
                        tail.push_back(line);
                    }
                })
                .expect("spawn stderr thread")
        };

        let (tx, rx) = tokio::sync::oneshot::channel::<Result<String, String>>();
        std::thread::Builder::new()
            .name("oidc-provider-stdout".into())
            .spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                let first = match lines.next() {
                    Some(Ok(line)) => Ok(line),
                    Some(Err(e)) => Err(format!("reading stdout: {e}")),
                    None => Err("stdout closed before the ready line".to_owned()),
                };
                let _ = tx.send(first);
                // Nothing else is expected on stdout; keep draining it anyway.
                for _ in lines {}
            })
            .expect("spawn stdout thread");

        let failure = match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(Ok(line))) => match serde_json::from_str::<Ready>(&line) {
                Ok(ready) => {
                    let http = reqwest::Client::builder()
                        .no_proxy()
                        // Tests may share a provider across runtimes: no pooling.
                        .pool_max_idle_per_host(0)
                        .timeout(Duration::from_secs(30))
                        .build()
                        .expect("reqwest client");
                    return OidcProvider {
                        child,
                        stdin,
                        stderr_tail,
                        ready,
                        options: opts,
                        http,
                    };
                }
                Err(e) => format!("unexpected ready line {line:?}: {e}"),
            },
            Ok(Ok(Err(e))) => e,
            Ok(Err(_)) => "stdout reader thread died".to_owned(),
            Err(_) => format!("no ready line within {START_TIMEOUT:?}"),
        };

        let _ = child.kill();
        let status = child.wait();
        drop(stdin);
        let _ = stderr_thread.join();
        let tail: Vec<String> = stderr_tail.lock().unwrap().iter().cloned().collect();
        panic!(
            "oidc-provider test server failed to start: {failure}; exit: {status:?}\n--- stderr (tail) ---\n{}",
            tail.join("\n")
        );
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn issuer(&self) -> &str {
        &self.ready.issuer
    }

    pub fn token_endpoint(&self) -> &str {
        &self.ready.token_endpoint
    }

    pub fn authorization_endpoint(&self) -> &str {
        &self.ready.authorization_endpoint
    }

    pub fn device_authorization_endpoint(&self) -> &str {
        &self.ready.device_authorization_endpoint
    }

    /// The page a user enters a device flow's user code at.
    pub fn verification_uri(&self) -> &str {
        &self.ready.verification_uri
    }

    pub fn revocation_endpoint(&self) -> &str {
        &self.ready.revocation_endpoint
    }

    pub fn introspection_endpoint(&self) -> &str {
        &self.ready.introspection_endpoint
    }

    pub fn options(&self) -> &OidcOptions {
        &self.options
    }

    pub fn pid(&self) -> u32 {
        self.ready.pid
    }

    /// Last lines the server wrote to stderr (never contains token values).
    pub fn stderr_tail(&self) -> Vec<String> {
        self.stderr_tail.lock().unwrap().iter().cloned().collect()
    }

    fn admin_url(&self, path: &str) -> String {
        format!("{}/test{path}", self.ready.issuer)
    }

    async fn admin_json<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> T {
        let url = self.admin_url(path);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status();
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: reading body: {e}"));
        if !status.is_success() {
            panic!("{method} {url}: HTTP {status}: {text}");
        }
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {url}: bad JSON {text:?}: {e}"))
    }

    /// Creates an account, a Grant and a refresh token for `client_id`, as if
    /// the user had gone through the authorization code flow. The refresh
    /// token is usable with `grant_type=refresh_token` by that client.
    /// `scope` must be a subset of the client's scopes and should contain
    /// `offline_access`.
    pub async fn create_grant(&self, client_id: &str, scope: &str) -> Grant {
        self.admin_json(
            reqwest::Method::POST,
            "/grants",
            Some(serde_json::json!({ "client_id": client_id, "scope": scope })),
        )
        .await
    }

    /// Revokes the grant and all its tokens ("log out everywhere").
    /// Idempotent: revoking an unknown or already revoked grant succeeds.
    pub async fn revoke_grant(&self, grant_id: &str) {
        let path = format!("/grants/{}/revoke", url_path_segment(grant_id));
        let _: serde_json::Value = self.admin_json(reqwest::Method::POST, &path, None).await;
    }

    pub async fn stats(&self) -> Stats {
        self.admin_json(reqwest::Method::GET, "/stats", None).await
    }

    pub async fn reset_stats(&self) {
        let _: serde_json::Value = self
            .admin_json(reqwest::Method::POST, "/stats/reset", None)
            .await;
    }

    /// The next `count` token-endpoint requests are answered with `fault`
    /// instead of reaching oidc-provider (they are still counted in stats).
    pub async fn inject_faults(&self, count: u32, fault: Fault) {
        let _: serde_json::Value = self
            .admin_json(
                reqwest::Method::POST,
                "/faults",
                Some(serde_json::json!({
                    "count": count,
                    "status": fault.status,
                    "error": fault.error,
                    "retry_after": fault.retry_after_secs,
                    "delay_ms": fault.delay_ms,
                    "grant_type": fault.grant_type,
                })),
            )
            .await;
    }

    /// Delays the next `count` token requests by `delay`, then answers them normally.
    pub async fn delay_next(&self, count: u32, delay: std::time::Duration) {
        let _: serde_json::Value = self
            .admin_json(
                reqwest::Method::POST,
                "/faults",
                Some(serde_json::json!({
                    "count": count,
                    "pass": true,
                    "delay_ms": delay.as_millis() as u64,
                })),
            )
            .await;
    }

    /// The next `count` token requests are processed at once (refresh tokens rotate) and
    /// their answers held back for `delay`: a client that gives up first has lost an answer
    /// after the provider rotated.
    pub async fn delay_answers(&self, count: u32, delay: std::time::Duration) {
        let _: serde_json::Value = self
            .admin_json(
                reqwest::Method::POST,
                "/faults",
                Some(serde_json::json!({
                    "count": count,
                    "pass": true,
                    "answer_delay_ms": delay.as_millis() as u64,
                })),
            )
            .await;
    }

    /// The next `count` device code polls answer `400 slow_down` (oidc-provider
    /// never does by itself: it does not enforce the poll interval). Other
    /// token requests pass these faults by.
    pub async fn slow_down_next_device_polls(&self, count: u32) {
        self.inject_faults(
            count,
            Fault {
                error: Some("slow_down".to_owned()),
                grant_type: Some(DEVICE_CODE_GRANT_TYPE.to_owned()),
                ..Fault::status(400)
            },
        )
        .await;
    }

    /// Approves a device flow as its user would: opens the verification page,
    /// submits `user_code` (with the page's xsrf field), confirms, logs in as
    /// [`TEST_USER`] and consents; panics unless the success page is reached.
    pub async fn approve_device(&self, user_code: &str) {
        let page = self.browse_device(user_code, Decision::Allow).await;
        assert!(
            page.body.contains("data-page=\"device-success\""),
            "device approval did not end on the success page: HTTP {} at {}: {}",
            page.status,
            page.url,
            page.body
        );
    }

    /// Denies a device flow as its user would: as [`Self::approve_device`], but
    /// "Deny" on the consent page, which ends the interaction with
    /// `access_denied`; the device code's polls then answer `access_denied`.
    pub async fn deny_device(&self, user_code: &str) {
        let page = self.browse_device(user_code, Decision::Deny).await;
        assert!(
            !page.body.contains("data-page=\"device-success\""),
            "device denial ended on the success page"
        );
    }

    async fn browse_device(&self, user_code: &str, decision: Decision) -> Page {
        let browser = Browser::new(&self.ready.issuer);
        let verification = url::Url::parse(&self.ready.verification_uri).unwrap();
        let input = browser.get(&verification).await;
        assert_eq!(input.status, 200, "verification page: {}", input.body);
        let xsrf = hidden_value(&input.body, "xsrf")
            .unwrap_or_else(|| panic!("no xsrf field on the verification page: {}", input.body));
        let confirm = browser
            .post(&verification, &[("xsrf", &xsrf), ("user_code", user_code)])
            .await;
        assert!(
            confirm.body.contains("data-page=\"device-confirm\""),
            "user code {user_code} not accepted: HTTP {}: {}",
            confirm.status,
            confirm.body
        );
        let xsrf = hidden_value(&confirm.body, "xsrf").unwrap_or(xsrf);
        let started = browser
            .post(
                &verification,
                &[
                    ("xsrf", &xsrf),
                    ("user_code", user_code),
                    ("confirm", "yes"),
                ],
            )
            .await;
        let next = started.location.unwrap_or_else(|| {
            panic!(
                "confirming the user code did not redirect: HTTP {}: {}",
                started.status, started.body
            )
        });
        match browser.drive(next, decision).await {
            Ending::Page(page) => page,
            Ending::Away(url) => panic!("the device flow redirected away to {url}"),
        }
    }

    /// Follows an authorization URL as a browser would (login as
    /// [`TEST_USER`], consent) and returns the final redirect to the client's
    /// redirect URI, read from the Location header and NOT fetched.
    pub async fn browse_authorization(&self, authorization_url: &str) -> url::Url {
        self.authorize(authorization_url, Decision::Allow).await
    }

    /// As [`Self::browse_authorization`], but "Deny" on the consent page: the
    /// redirect carries `error=access_denied`.
    pub async fn deny_authorization(&self, authorization_url: &str) -> url::Url {
        self.authorize(authorization_url, Decision::Deny).await
    }

    async fn authorize(&self, authorization_url: &str, decision: Decision) -> url::Url {
        let browser = Browser::new(&self.ready.issuer);
        let start = url::Url::parse(authorization_url)
            .unwrap_or_else(|e| panic!("authorization URL {authorization_url:?}: {e}"));
        match browser.drive(start, decision).await {
            Ending::Away(url) => url,
            Ending::Page(page) => panic!(
                "the authorization did not redirect to the client: HTTP {} at {}: {}",
                page.status, page.url, page.body
            ),
        }
    }

    /// Drops all pending injected faults.
    pub async fn clear_faults(&self) {
        let _: serde_json::Value = self
            .admin_json(reqwest::Method::DELETE, "/faults", None)
            .await;
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        // Closing stdin alone would make the server exit; kill to be prompt.
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `tests/oidc-provider` in this crate.
pub fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("oidc-provider")
}

/// Written into node_modules after a successful `npm ci`; holds the
/// package-lock.json it was installed from, so a changed lock reinstalls.
const INSTALL_MARKER: &str = ".oauth-token-operator-npm-ci";

fn installed(dir: &Path, lock: &[u8]) -> bool {
    dir.join("node_modules/oidc-provider/package.json")
        .is_file()
        && fs::read(dir.join("node_modules").join(INSTALL_MARKER)).is_ok_and(|m| m == lock)
}

/// Runs `npm ci` in `tests/oidc-provider` unless node_modules matches
/// package-lock.json. Serialised across processes by an exclusive file lock.
fn ensure_node_modules() {
    let dir = provider_dir();
    let lock = fs::read(dir.join("package-lock.json"))
        .unwrap_or_else(|e| panic!("reading {}/package-lock.json: {e}", dir.display()));
    if installed(&dir, &lock) {
        return;
    }

    let lock_dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(lock_dir).unwrap_or_else(|e| panic!("creating {}: {e}", lock_dir.display()));
    let lock_path = lock_dir.join("oidc-provider-npm-ci.lock");
    let lock_file: File = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", lock_path.display()));
    lock_file
        .lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));

    // Another test binary may have installed while we waited for the lock.
    if installed(&dir, &lock) {
        return;
    }

    let npm = std::env::var("OIDC_NPM").unwrap_or_else(|_| "npm".to_owned());
    let output = Command::new(&npm)
        .current_dir(&dir)
        .args(["ci", "--no-audit", "--no-fund"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "failed to run `{npm} ci` in {}: {e} (is npm installed? set OIDC_NPM to override)",
                dir.display()
            )
        });
    if !output.status.success() {
        panic!(
            "`{npm} ci` in {} failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    fs::write(dir.join("node_modules").join(INSTALL_MARKER), &lock)
        .unwrap_or_else(|e| panic!("writing npm ci marker: {e}"));
    // The lock is released when `lock_file` is dropped.
}

/// What the "user" answers on the consent page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Allow,
    Deny,
}

/// One answer the browser got.
#[derive(Debug)]
struct Page {
    url: url::Url,
    status: u16,
    location: Option<url::Url>,
    body: String,
}

/// Where following the server's pages ended.
enum Ending {
    /// A page of the server that is neither a redirect nor an interaction.
    Page(Page),
    /// A redirect off the server (to the client's redirect URI), not fetched.
    Away(url::Url),
}

/// A minimal browser for the server's pages: follows no redirect by itself and
/// keeps the server's cookies (by name; paths and expiry beyond deletion are
/// ignored, which is enough for one flow at a time).
struct Browser {
    http: reqwest::Client,
    origin: url::Origin,
    cookies: Mutex<BTreeMap<String, String>>,
}

impl Browser {
    fn new(issuer: &str) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .expect("reqwest client"),
            origin: url::Url::parse(issuer).expect("issuer URL").origin(),
            cookies: Mutex::new(BTreeMap::new()),
        }
    }

    async fn get(&self, url: &url::Url) -> Page {
        self.send(self.http.get(url.clone()), url).await
    }

    async fn post(&self, url: &url::Url, form: &[(&str, &str)]) -> Page {
        self.send(self.http.post(url.clone()).form(form), url).await
    }

    async fn send(&self, mut request: reqwest::RequestBuilder, url: &url::Url) -> Page {
        assert_eq!(
            url.origin(),
            self.origin,
            "the browser only visits the server"
        );
        let cookie = {
            let cookies = self.cookies.lock().unwrap();
            cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if !cookie.is_empty() {
            request = request.header(reqwest::header::COOKIE, cookie);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("browser: {url}: {e}"));
        {
            let mut cookies = self.cookies.lock().unwrap();
            for value in response.headers().get_all(reqwest::header::SET_COOKIE) {
                let Ok(value) = value.to_str() else { continue };
                let mut parts = value.split(';');
                let Some((name, content)) = parts.next().and_then(|p| p.split_once('=')) else {
                    continue;
                };
                let expired = parts.any(|attribute| {
                    let attribute = attribute.trim().to_ascii_lowercase();
                    attribute == "max-age=0" || attribute.contains("1970")
                });
                if content.is_empty() || expired {
                    cookies.remove(name.trim());
                } else {
                    cookies.insert(name.trim().to_owned(), content.trim().to_owned());
                }
            }
        }
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                url.join(v)
                    .unwrap_or_else(|e| panic!("browser: bad Location {v:?}: {e}"))
            });
        let body = response.text().await.unwrap_or_default();
        Page {
            url: url.clone(),
            status,
            location,
            body,
        }
    }

    /// Follows redirects and answers the interaction pages (login, then
    /// consent or deny) until a page that is neither, or a redirect away.
    async fn drive(&self, start: url::Url, decision: Decision) -> Ending {
        let mut url = start;
        for _ in 0..20 {
            if url.origin() != self.origin {
                return Ending::Away(url);
            }
            let page = self.get(&url).await;
            if (300..400).contains(&page.status) {
                url = page
                    .location
                    .unwrap_or_else(|| panic!("browser: redirect without Location at {url}"));
                continue;
            }
            let action = if page.body.contains("data-prompt=\"login\"") {
                "login"
            } else if page.body.contains("data-prompt=\"consent\"") {
                match decision {
                    Decision::Allow => "confirm",
                    Decision::Deny => "abort",
                }
            } else {
                return Ending::Page(page);
            };
            let target = url
                .join(&format!("{}/{action}", url.path()))
                .expect("interaction URL");
            let answer = self
                .post(
                    &target,
                    &[("login", TEST_USER), ("password", TEST_PASSWORD)],
                )
                .await;
            url = answer.location.unwrap_or_else(|| {
                panic!(
                    "browser: {action} did not redirect: HTTP {}: {}",
                    answer.status, answer.body
                )
            });
        }
        panic!("browser: more than 20 steps");
    }
}

/// The `value` of the hidden input `name` in an HTML page.
fn hidden_value(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')?;
    Some(html[start..start + end].to_owned())
}
