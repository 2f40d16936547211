//! End-to-end harness: a Kubernetes API (the in-process test server, or a real cluster when
//! `E2E_KUBECONFIG` is set), the real operator binary as a subprocess, and helpers that only
//! rely on what a real apiserver guarantees.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use kube_test_apiserver::{Faults, Options, TestApiServer};
use oauth_token_operator::api::OAuthToken;
use serde_json::{Value, json};

use super::oidc_provider::Client as OidcClient;

const CRD_YAML: &str = include_str!("../../crds/oauthtoken.yaml");
const CRD_NAME: &str = "oauthtokens.oauth-token-operator.io";

/// One test's slice of a Kubernetes API: its own namespace, and the server when it is ours.
pub struct Env {
    pub client: Client,
    pub namespace: String,
    pub kubeconfig: PathBuf,
    server: Option<TestApiServer>,
    real_cluster: bool,
    _dir: tempfile::TempDir,
}

impl Env {
    /// Connects to `E2E_KUBECONFIG` or starts a test server, installs the CRD the way a user
    /// would, and creates a fresh namespace for the test.
    pub async fn new(test: &str) -> Env {
        Env::new_with(test, true).await
    }

    /// Like [`Env::new`] but without installing the CRD: only against the in-process test
    /// server (a real cluster's CRD is shared); `None` on a real cluster.
    pub async fn without_crd(test: &str) -> Option<Env> {
        if std::env::var_os("E2E_KUBECONFIG").is_some() {
            return None;
        }
        Some(Env::new_with(test, false).await)
    }

    async fn new_with(test: &str, with_crd: bool) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let suffix: u32 = rand::random::<u32>() % 100_000;
        let namespace = format!("oat-{}-{suffix}", test.replace('_', "-"));
        let (server, kubeconfig, real_cluster) = match std::env::var_os("E2E_KUBECONFIG") {
            Some(path) => (None, PathBuf::from(path), true),
            None => {
                let server = TestApiServer::start(Options::default())
                    .await
                    .expect("test apiserver starts");
                let path = dir.path().join("kubeconfig");
                server.write_kubeconfig(&path, "default").unwrap();
                (Some(server), path, false)
            }
        };
        let kubeconfig_data = Kubeconfig::read_from(&kubeconfig).unwrap();
        let config = Config::from_custom_kubeconfig(kubeconfig_data, &KubeConfigOptions::default())
            .await
            .unwrap();
        let client = Client::try_from(config).unwrap();
        if with_crd {
            install_crd(&client).await;
        }
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap(),
            )
            .await
            .unwrap();
        Env {
            client,
            namespace,
            kubeconfig,
            server,
            real_cluster,
            _dir: dir,
        }
    }

    pub fn is_real_cluster(&self) -> bool {
        self.real_cluster
    }

    /// A kubeconfig for a new ServiceAccount of the test's namespace that has no RBAC rights at
    /// all (a real cluster only: it needs the TokenRequest API and RBAC). Written into the
    /// test's temporary directory.
    pub async fn kubeconfig_without_rights(&self) -> PathBuf {
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), &self.namespace);
        accounts
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "nobody"}})).unwrap(),
            )
            .await
            .unwrap();
        let request = http::Request::post(format!(
            "/api/v1/namespaces/{}/serviceaccounts/nobody/token",
            self.namespace
        ))
        .header("Content-Type", "application/json")
        .body(
            serde_json::to_vec(&json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": 600},
            }))
            .unwrap(),
        )
        .unwrap();
        let answer: Value = self.client.request(request).await.unwrap();
        let token = answer["status"]["token"].as_str().unwrap().to_string();
        let mut config: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&self.kubeconfig).unwrap()).unwrap();
        config["users"] =
            serde_yaml::to_value(json!([{"name": "nobody", "user": {"token": token}}])).unwrap();
        for context in config["contexts"].as_sequence_mut().unwrap() {
            context["context"]["user"] = "nobody".into();
        }
        let path = self._dir.path().join("nobody.kubeconfig");
        std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
        path
    }

    /// Stops the in-process test server for good: every watch is cut and every request is
    /// refused from now on. Returns false on a real cluster.
    pub async fn stop_api_server(&mut self) -> bool {
        match self.server.take() {
            Some(server) => {
                server.shutdown().await;
                true
            }
            None => false,
        }
    }

    /// Fault injection, available only against the in-process test server.
    pub fn faults(&self) -> Option<&Faults> {
        self.server.as_ref().map(|s| s.faults())
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn tokens(&self) -> Api<OAuthToken> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub async fn apply_secret(&self, name: &str, string_data: &[(&str, &str)]) {
        let data: BTreeMap<&str, &str> = string_data.iter().copied().collect();
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": self.namespace},
            "stringData": data,
        });
        self.secrets()
            .patch(
                name,
                &PatchParams::apply("e2e-user").force(),
                &Patch::Apply(secret),
            )
            .await
            .unwrap();
    }

    pub async fn apply_client_secret(&self, name: &str, client: OidcClient) {
        self.apply_secret(
            name,
            &[("client_id", client.id), ("client_secret", client.secret)],
        )
        .await;
    }

    pub async fn apply_token(&self, name: &str, spec: Value) {
        let token = json!({
            "apiVersion": "oauth-token-operator.io/v1alpha1", "kind": "OAuthToken",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        });
        self.tokens()
            .patch(
                name,
                &PatchParams::apply("e2e-user").force(),
                &Patch::Apply(token),
            )
            .await
            .unwrap();
    }

    /// A Secret's data as text; `None` when it does not exist.
    pub async fn secret_data(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let secret = self.secrets().get_opt(name).await.unwrap()?;
        Some(
            secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
                .collect(),
        )
    }

    pub async fn status(&self, name: &str) -> Value {
        let token = self.tokens().get(name).await.unwrap();
        serde_json::to_value(token.status.unwrap_or_default()).unwrap()
    }

    /// `(status, reason)` of a condition, if present.
    pub async fn condition(&self, name: &str, type_: &str) -> Option<(String, String)> {
        let status = self.status(name).await;
        status["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or_default().to_string(),
                    c["reason"].as_str().unwrap_or_default().to_string(),
                )
            })
    }

    /// The message of a condition, empty if absent.
    pub async fn condition_message(&self, name: &str, type_: &str) -> String {
        let status = self.status(name).await;
        status["conditions"]
            .as_array()
            .and_then(|conditions| conditions.iter().find(|c| c["type"] == type_))
            .and_then(|c| c["message"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until condition `type_` of OAuthToken `name` has this `(status, reason)`.
    pub async fn wait_for_condition(
        &self,
        name: &str,
        type_: &str,
        expected: (&str, &str),
        timeout: Duration,
    ) {
        let what = format!("{name} to have {type_}={} ({})", expected.0, expected.1);
        wait_for(&what, timeout, || async {
            let (status, reason) = self.condition(name, type_).await?;
            (status == expected.0 && reason == expected.1).then_some(())
        })
        .await;
    }

    /// Events about the OAuthToken `name`, as `type reason` strings.
    /// Waits for an Event `"{type} {reason}"` about `name`. The operator publishes Events after
    /// the status write that a test usually waits for, so reading them once races with it.
    pub async fn wait_for_event(&self, name: &str, event: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events_for(name).await;
            if events.iter().any(|e| e == event) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no Event {event:?} about {name} within {timeout:?}: {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn events_for(&self, name: &str) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| {
                format!(
                    "{} {}",
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if !self.real_cluster {
            return;
        }
        // Clean up the namespace on a real cluster even when the test failed; the owned
        // Secrets and OAuthTokens go with it. The test's client is bound to the test's runtime,
        // which this blocking drop holds up: a client of its own avoids the deadlock.
        let kubeconfig = self.kubeconfig.clone();
        let namespace = self.namespace.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let Ok(kubeconfig) = Kubeconfig::read_from(&kubeconfig) else {
                    return;
                };
                let Ok(config) =
                    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await
                else {
                    return;
                };
                let Ok(client) = Client::try_from(config) else {
                    return;
                };
                let namespaces: Api<Namespace> = Api::all(client);
                let _ = namespaces
                    .delete(&namespace, &DeleteParams::default())
                    .await;
            });
        })
        .join();
    }
}

async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: Value = serde_yaml::from_str(CRD_YAML).unwrap();
    crds.patch(
        CRD_NAME,
        &PatchParams::apply("oauth-token-operator-e2e").force(),
        &Patch::Apply(crd),
    )
    .await
    .expect("the CRD installs");
    wait_for(
        "the CRD to be established",
        Duration::from_secs(30),
        || async {
            let crd = crds.get(CRD_NAME).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        },
    )
    .await;
}

/// Polls `check` every 100 ms until it returns `Some`, panicking after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The operator binary, run as a user would run it, with its output kept for inspection.
pub struct Operator {
    child: Option<Child>,
    args: Vec<String>,
    kubeconfig: PathBuf,
    identity: String,
    http_port: u16,
    logs: Arc<Mutex<Vec<String>>>,
    /// `RUST_LOG` for the process; `None` leaves it unset (the `--log-level` default applies).
    rust_log: Option<String>,
    /// Index into `logs` where the current process's output starts.
    current_start: Arc<Mutex<usize>>,
}

impl Operator {
    pub fn start(env: &Env) -> Operator {
        Operator::start_with(env, &[])
    }

    pub fn start_with(env: &Env, extra_args: &[&str]) -> Operator {
        Operator::start_logging(env, extra_args, Some("debug"))
    }

    /// Starts with `RUST_LOG` set to `rust_log`, or unset.
    pub fn start_logging(env: &Env, extra_args: &[&str], rust_log: Option<&str>) -> Operator {
        Operator::start_as(env, &env.kubeconfig, extra_args, rust_log)
    }

    /// Starts with another kubeconfig (another identity), `RUST_LOG` as in [`start_logging`].
    pub fn start_as(
        env: &Env,
        kubeconfig: &std::path::Path,
        extra_args: &[&str],
        rust_log: Option<&str>,
    ) -> Operator {
        let http_port = free_port();
        let mut args: Vec<String> = vec![
            "run".into(),
            "--allow-insecure-http".into(),
            "--namespace".into(),
            env.namespace.clone(),
            "--leader-election-namespace".into(),
            env.namespace.clone(),
            "--http-addr".into(),
            format!("127.0.0.1:{http_port}"),
            "--token-request-timeout".into(),
            "5s".into(),
        ];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let mut operator = Operator {
            child: None,
            args,
            kubeconfig: kubeconfig.to_path_buf(),
            // Like a pod name: a restarted process keeps it, and so keeps its lease.
            identity: format!("operator-{:08x}", rand::random::<u32>()),
            http_port,
            logs: Arc::default(),
            rust_log: rust_log.map(str::to_string),
            current_start: Arc::default(),
        };
        operator.spawn();
        operator
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        *self.current_start.lock().unwrap() = self.logs.lock().unwrap().len();
        let mut command = Command::new(env!("CARGO_BIN_EXE_oauth-token-operator"));
        match &self.rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let mut child = command
            .args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("POD_NAME", &self.identity)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the operator binary starts");
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let logs = self.logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            });
        }
        self.child = Some(child);
    }

    /// Base URL of the health and metrics endpoints.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// `(status, body)` of a GET on the health and metrics port.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{}{path}", self.http_url()))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits for a graceful exit. Async on purpose: the in-process API
    /// server shares this test's runtime, and the operator needs it to finish its work.
    pub async fn terminate(&mut self) {
        let mut child = self.child.take().expect("running");
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "graceful exit, got {status}");
                return;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                let logs = self.current_logs();
                if let Ok(path) = std::env::var("E2E_DUMP_LOGS") {
                    std::fs::write(path, logs.join("\n")).unwrap();
                }
                let tail = &logs[logs.len().saturating_sub(30)..];
                panic!(
                    "the operator did not stop within 30 s of SIGTERM; last lines:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the process without its knowledge (SIGSTOP), as a node stall would.
    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn restart(&mut self) {
        self.spawn();
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Output of the most recent process only.
    pub fn current_logs(&self) -> Vec<String> {
        let start = *self.current_start.lock().unwrap();
        self.logs.lock().unwrap()[start..].to_vec()
    }

    /// Panics if any of `secrets` appears anywhere in the operator's output so far.
    pub fn assert_no_secret_in_logs(&self, secrets: &SecretValues) {
        let logs = self.logs();
        assert!(!logs.is_empty(), "the operator wrote no log at all");
        let values = secrets.values();
        assert!(!values.is_empty());
        for line in &logs {
            for value in &values {
                assert!(
                    !line.contains(value.as_str()),
                    "a secret value appears in the operator's output: {line}"
                );
            }
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A failed wait says only what did not happen; the operator's last words say why.
        if std::thread::panicking() {
            let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
            println!("--- last lines of operator {}:", self.identity);
            for line in logs
                .iter()
                .skip(logs.len().saturating_sub(OUTPUT_SHOWN_ON_FAILURE))
            {
                println!("{}", line.chars().take(400).collect::<String>());
            }
        }
    }
}

/// How many lines of an operator's output a failed test prints.
const OUTPUT_SHOWN_ON_FAILURE: usize = 60;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Every secret value a test has seen, to check none leaks into logs.
#[derive(Default, Clone)]
pub struct SecretValues(Arc<Mutex<std::collections::BTreeSet<String>>>);

impl SecretValues {
    pub fn add(&self, value: &str) {
        if value.len() >= 8 {
            self.0.lock().unwrap().insert(value.to_string());
        }
    }

    pub fn values(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().cloned().collect()
    }

    /// Records the token values currently in the OAuthToken's state and target Secrets.
    pub async fn collect(&self, env: &Env, token: &str, target: &str) {
        for name in [format!("{token}-oauth-state"), target.to_string()] {
            if let Some(data) = env.secret_data(&name).await {
                for key in ["access_token", "refresh_token"] {
                    if let Some(value) = data.get(key) {
                        self.add(value);
                    }
                }
            }
        }
    }
}
