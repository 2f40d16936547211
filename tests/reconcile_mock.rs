//! Reconcile against a mocked Kubernetes API (kube-rs `tower-test` pattern) and a fake token
//! endpoint: the order of writes, no writes when nothing changed, the foreign-Secret refusal,
//! a failed state write that must not lose the new refresh token, and failure handling.

mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use http::Method;
use kube::runtime::events::Reporter;
use oauth_token_operator::api::OAuthToken;
use oauth_token_operator::controller::{Context, reconcile};
use oauth_token_operator::oauth::{
    AuthMethod, ClientCredentials, ClientOptions, FailureKind, GrantRequest, Issued, OAuthError,
    TokenClient, TokenRequest,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use support::fake_token::{Answer, FakeTokenEndpoint};
use support::mock_kube::{MockApi, NS, Watches, secret_path, token_path};

const CLIENT_ID: &str = "allegro-app";
const CLIENT_SECRET: &str = "client-secret-value-9f8e7d";

fn b64(value: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(value)
}

fn unb64(value: &Value) -> String {
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap())
            .unwrap(),
    )
    .unwrap()
}

/// Where a reconcile reads the OAuthToken and the Secrets from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caching {
    /// No caches registered: every read goes to the API.
    None,
    /// Watch caches (a registered `Scope`) that catch up before every reconcile, as the watches
    /// do between the events that start reconciles.
    Watch,
    /// Watch caches that lag: after their first list they deliver only the user's edits the
    /// fixture makes (`make_due`, `reauthorize`, `edit_spec`) and what a test delivers
    /// ([`Fixture::deliver_all`]). This process's own writes are known only from its own-write
    /// overlay, and other processes' writes not at all.
    Lagging,
}

struct Fixture {
    api: MockApi,
    ctx: Arc<Context>,
    endpoint: FakeTokenEndpoint,
    token: Arc<OAuthToken>,
    caching: Caching,
    watches: Option<Watches>,
}

impl Fixture {
    async fn new(expires_in: Option<u64>) -> Fixture {
        Fixture::with_spec(expires_in, json!({})).await
    }

    /// `spec_overrides` are merged into the default spec.
    async fn with_spec(expires_in: Option<u64>, spec_overrides: Value) -> Fixture {
        Fixture::build(expires_in, spec_overrides, Caching::None).await
    }

    async fn with_caching(expires_in: Option<u64>, caching: Caching) -> Fixture {
        Fixture::build(expires_in, json!({}), caching).await
    }

    async fn build(expires_in: Option<u64>, spec_overrides: Value, caching: Caching) -> Fixture {
        // The provider knows the fixture's client and the refresh token of its authorization.
        let endpoint = FakeTokenEndpoint::provider(CLIENT_ID, CLIENT_SECRET)
            .grant("rt-0")
            .expires_in(expires_in)
            .start()
            .await;
        let api = MockApi::default();
        let token = json!({
            "apiVersion": "oauth-token-operator.io/v1alpha1",
            "kind": "OAuthToken",
            "metadata": {"name": "allegro", "namespace": NS, "uid": "token-uid", "generation": 1},
            "spec": {
                "tokenEndpoint": endpoint.url,
                "clientSecretRef": {"name": "allegro-client"},
                "grant": {"refreshToken": {"initialRefreshTokenSecretRef": {"name": "allegro-authorization"}}},
                "secretName": "allegro-token"
            }
        });
        let mut token = token;
        for (key, value) in spec_overrides.as_object().unwrap() {
            token["spec"][key] = value.clone();
        }
        api.put(&token_path("allegro"), token.clone());
        put_client_secret(&api, CLIENT_SECRET);
        api.put(
            &secret_path("allegro-authorization"),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "allegro-authorization", "namespace": NS},
                   "data": {"refresh_token": b64("rt-0")}}),
        );
        let ctx = Arc::new(context(&api));
        // The watches list once before the first reconcile, as in the controller.
        let watches = (caching != Caching::None).then(|| Watches::start(&api, ctx.clone()));
        Fixture {
            api,
            ctx,
            endpoint,
            token: Arc::new(serde_json::from_value(token).unwrap()),
            caching,
            watches,
        }
    }

    /// Another operator process on the same API and provider, without caches (a replica, or
    /// this one restarted).
    fn other_process(&self) -> Arc<Context> {
        Arc::new(context(&self.api))
    }

    /// Every watch catches up with the API.
    fn deliver_all(&self) {
        if let Some(watches) = &self.watches {
            watches.deliver_all();
        }
    }

    /// A user's edit of these objects reaches the caches before the reconcile it starts.
    fn user_edited(&self, paths: &[String]) {
        if let Some(watches) = &self.watches {
            for path in paths {
                watches.deliver(path);
            }
        }
    }

    async fn reconcile(&self) -> Result<kube::runtime::controller::Action, String> {
        if self.caching == Caching::Watch {
            self.deliver_all();
        }
        reconcile(self.token.clone(), self.ctx.clone())
            .await
            .map_err(|e| e.to_string())
    }

    fn status(&self) -> Value {
        self.api.get(&token_path("allegro")).unwrap()["status"].clone()
    }

    fn condition(&self, type_: &str) -> (String, String) {
        let status = self.status();
        let condition = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
            .clone();
        (
            condition["status"].as_str().unwrap().to_string(),
            condition["reason"].as_str().unwrap().to_string(),
        )
    }

    fn condition_message(&self, type_: &str) -> String {
        let status = self.status();
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap()["message"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A human authorizes again (the provider issues `refresh_token`) and puts the new refresh
    /// token in the import Secret.
    fn reauthorize(&self, refresh_token: &str) {
        self.endpoint.authorize(refresh_token);
        self.api.put(
            &secret_path("allegro-authorization"),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "allegro-authorization", "namespace": NS},
                   "data": {"refresh_token": b64(refresh_token)}}),
        );
        self.user_edited(&[secret_path("allegro-authorization")]);
    }

    /// Moves every scheduled attempt into the past, as if time had passed.
    fn make_due(&self) {
        let path = token_path("allegro");
        let mut token = self.api.get(&path).unwrap();
        if !token["status"]["nextRefreshAt"].is_null() {
            token["status"]["nextRefreshAt"] = json!("2020-01-01T00:00:00Z");
        }
        self.api.put(&path, token);
        let mut edited = vec![path];
        let state_path = secret_path("allegro-oauth-state");
        if let Some(mut state) = self.api.get(&state_path)
            && state["data"].get("refresh_at").is_some()
        {
            state["data"]["refresh_at"] = json!(b64("2020-01-01T00:00:00Z"));
            self.api.put(&state_path, state);
            edited.push(state_path);
        }
        self.user_edited(&edited);
    }

    /// Edits the stored OAuthToken's spec, as `kubectl edit` would.
    fn edit_spec(&self, changes: Value) {
        let path = token_path("allegro");
        let mut token = self.api.get(&path).unwrap();
        for (key, value) in changes.as_object().unwrap() {
            token["spec"][key] = value.clone();
        }
        let generation = token["metadata"]["generation"].as_i64().unwrap_or(1);
        token["metadata"]["generation"] = json!(generation + 1);
        self.api.put(&path, token);
        self.user_edited(&[path]);
    }

    fn state_data(&self, key: &str) -> Option<String> {
        let secret = self.api.get(&secret_path("allegro-oauth-state"))?;
        secret["data"].get(key).map(unb64)
    }

    /// No token, refresh token or client secret in any status write or Event.
    fn assert_no_secret_leaks(&self) {
        for request in self.api.log() {
            let visible = request.path.contains("/status") || request.path.contains("/events");
            if !visible {
                continue;
            }
            let text = request.body.to_string();
            for secret in [
                "rt-0",
                "rt-1",
                "rt-2",
                "rt-new",
                "at-1",
                "at-2",
                CLIENT_SECRET,
            ] {
                assert!(
                    !text.contains(secret),
                    "{secret} leaked into {}: {text}",
                    request.path
                );
            }
            assert!(!text.contains("rt-should-not-leak"));
        }
    }
}

/// An operator process's context on `api`: the fixture's 2 s request timeout, no jitter.
fn context(api: &MockApi) -> Context {
    let tokens = TokenClient::new(ClientOptions {
        timeout: Duration::from_secs(2),
        allow_insecure_http: true,
        ..ClientOptions::default()
    })
    .unwrap();
    let mut ctx = Context::new(
        api.client(),
        tokens,
        Reporter {
            controller: "oauth-token-operator".into(),
            instance: None,
        },
    );
    ctx.jitter = || 0.0;
    ctx
}

/// Runs a scenario (an `async fn(Caching)`) against the API without caches, through watch
/// caches that caught up, and through caches that lag behind this process's own writes.
macro_rules! in_every_cache_mode {
    ($scenario:ident) => {
        mod $scenario {
            use super::Caching;

            #[tokio::test]
            async fn without_caches() {
                super::$scenario(Caching::None).await
            }

            #[tokio::test]
            async fn with_caches() {
                super::$scenario(Caching::Watch).await
            }

            #[tokio::test]
            async fn with_lagging_caches() {
                super::$scenario(Caching::Lagging).await
            }
        }
    };
}

/// The client Secret the fixture's OAuthToken reads its credentials from.
fn put_client_secret(api: &MockApi, client_secret: &str) {
    api.put(
        &secret_path("allegro-client"),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "allegro-client", "namespace": NS},
               "data": {"client_id": b64(CLIENT_ID), "client_secret": b64(client_secret)}}),
    );
}

/// When a reconcile asked to be run again (kube's `Action` tells it only in its Debug form).
fn requeue_after(action: &kube::runtime::controller::Action) -> Option<Duration> {
    let text = format!("{action:?}");
    let inner = text.split("Some(").nth(1)?.split(')').next()?;
    humantime::parse_duration(inner).ok().or_else(|| {
        inner
            .strip_suffix('s')?
            .parse::<f64>()
            .ok()
            .map(Duration::from_secs_f64)
    })
}

fn sha256(value: &str) -> String {
    oauth_token_operator::controller::state::fingerprint(value)
}

fn owner() -> Value {
    json!({"apiVersion": "oauth-token-operator.io/v1alpha1", "kind": "OAuthToken",
           "name": "allegro", "uid": "token-uid", "controller": true, "blockOwnerDeletion": true})
}

fn time(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

in_every_cache_mode!(first_reconcile_persists_the_rotated_refresh_token_before_publishing);
async fn first_reconcile_persists_the_rotated_refresh_token_before_publishing(caching: Caching) {
    let f = Fixture::with_caching(Some(3600), caching).await;
    let action = f.reconcile().await.unwrap();

    assert_eq!(f.endpoint.presented(), vec!["rt-0"]);
    assert_eq!(f.endpoint.rotated(), vec!["rt-0"]);
    assert_eq!(f.endpoint.rejected_credentials(), 0);
    if caching != Caching::None {
        // The OAuthToken and the operator's Secrets come from the caches; only the data of the
        // user's Secrets is read, once.
        let reads: Vec<String> = f
            .api
            .log()
            .into_iter()
            .filter(|r| r.method == Method::GET)
            .map(|r| r.path)
            .collect();
        assert_eq!(
            reads,
            vec![
                secret_path("allegro-client"),
                secret_path("allegro-authorization")
            ]
        );
    }
    assert_eq!(
        f.api.writes(),
        vec![
            format!("PATCH {}/status", token_path("allegro")),
            format!("POST /api/v1/namespaces/{NS}/secrets"),
            format!("PUT {}", secret_path("allegro-oauth-state")),
            format!("PATCH {}", secret_path("allegro-token")),
            format!("PATCH {}/status", token_path("allegro")),
        ],
        "status records the import, the state Secret is created with the claim in one write, then the rotated refresh token, then the access token, then status"
    );
    let log = f.api.log();
    let writes: Vec<_> = log.iter().filter(|r| r.is_write()).collect();
    assert_eq!(
        writes[0].body["status"]["importedRefreshTokenSha256"],
        sha256("rt-0"),
        "the import is recorded before the token is presented"
    );
    assert!(
        !writes[0].body["metadata"]["resourceVersion"].is_null(),
        "under a precondition on the version that said the token was new"
    );
    let created = &writes[1].body;
    assert_eq!(unb64(&created["data"]["refresh_token"]), "rt-0");
    let claim: Value = serde_json::from_str(&unb64(&created["data"]["claim"])).unwrap();
    assert_eq!(
        claim["fingerprint"],
        sha256("rt-0"),
        "the claim names the token presented"
    );
    assert_eq!(claim["attempt"], 1);
    assert!(
        !claim["id"].as_str().unwrap_or_default().is_empty(),
        "every claim has an id of its own"
    );
    assert_eq!(claim["holder"], f.ctx.fencing.holder());
    assert_eq!(
        claim["ttlSeconds"], 12,
        "the request timeout (2 s) plus 10 s to commit the answer"
    );
    assert!(
        !writes[2].body["metadata"]["resourceVersion"].is_null(),
        "the commit carries a resourceVersion precondition"
    );
    assert!(
        writes[2].body["data"].get("claim").is_none(),
        "the commit ends the claim"
    );
    assert_eq!(
        f.state_data("bound_origin").as_deref(),
        Some(f.endpoint.url.trim_end_matches("/token"))
    );
    assert_eq!(
        f.state_data("bound_client_id").as_deref(),
        Some("allegro-app")
    );
    assert_eq!(
        f.status()["importedRefreshTokenSha256"],
        sha256("rt-0"),
        "status remembers what was imported, outside the state Secret"
    );
    assert_eq!(f.state_data("refresh_token").as_deref(), Some("rt-1"));

    let target = f.api.get(&secret_path("allegro-token")).unwrap();
    assert_eq!(unb64(&target["data"]["access_token"]), "at-1");
    assert_eq!(unb64(&target["data"]["token_type"]), "Bearer");
    assert!(
        target["data"].get("refresh_token").is_none(),
        "pods never see the refresh token by default"
    );
    assert_eq!(
        target["metadata"]["ownerReferences"][0]["uid"], "token-uid",
        "the target Secret is controlled by the OAuthToken"
    );
    let expires_at = unb64(&target["data"]["expires_at"]);
    assert!(expires_at.ends_with('Z'), "{expires_at}");

    assert_eq!(f.condition("Ready"), ("True".into(), "TokenValid".into()));
    assert_eq!(
        f.condition("ReauthorizationRequired"),
        ("False".into(), "Authorized".into())
    );
    let status = f.status();
    assert_eq!(status["failedAttempts"], 0);
    assert_eq!(status["observedGeneration"], 1);
    let next = time(&status["nextRefreshAt"]);
    let expires = time(&status["expiresAt"]);
    assert_eq!(
        (expires - next).num_seconds(),
        1188,
        "a third of 3600 s before expiry, no jitter"
    );
    assert!(!status["refreshTokenImportedAt"].is_null());
    let wait = format!("{action:?}");
    assert!(wait.contains("requeue_after: Some("), "{wait}");
    assert_eq!(f.api.events(), vec!["Normal TokenIssued"]);
    f.assert_no_secret_leaks();
}

in_every_cache_mode!(nothing_changed_means_no_writes_and_no_token_request);
async fn nothing_changed_means_no_writes_and_no_token_request(caching: Caching) {
    let f = Fixture::with_caching(Some(3600), caching).await;
    f.reconcile().await.unwrap();
    f.api.clear_log();
    f.reconcile().await.unwrap();
    f.reconcile().await.unwrap();
    assert_eq!(f.api.writes(), Vec::<String>::new());
    assert!(f.api.events().is_empty());
    assert_eq!(f.endpoint.requests(), 1);
    if caching != Caching::None {
        // Everything comes from the caches (or, lagging, from this process's own writes): not
        // one request to the API.
        assert!(
            f.api.log().is_empty(),
            "{:?}",
            f.api.log().iter().map(|r| &r.path).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn a_deleted_target_secret_is_recreated_without_a_token_request() {
    let f = Fixture::new(Some(3600)).await;
    f.reconcile().await.unwrap();
    let original = f.api.get(&secret_path("allegro-token")).unwrap();
    f.api.clear_log();
    f.api.remove(&secret_path("allegro-token"));
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.requests(), 1);
    let recreated = f.api.get(&secret_path("allegro-token")).unwrap();
    assert_eq!(recreated["data"], original["data"]);
}

#[tokio::test]
async fn a_foreign_target_secret_is_never_overwritten() {
    let f = Fixture::new(Some(3600)).await;
    f.api.put(
        &secret_path("allegro-token"),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "allegro-token", "namespace": NS},
               "data": {"mine": b64("keep me")}}),
    );
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.requests(), 0, "no token request while blocked");
    assert_eq!(
        f.api.writes(),
        vec![format!("PATCH {}/status", token_path("allegro"))]
    );
    let secret = f.api.get(&secret_path("allegro-token")).unwrap();
    assert_eq!(unb64(&secret["data"]["mine"]), "keep me");
    assert_eq!(
        f.condition("Ready"),
        ("False".into(), "SecretConflict".into())
    );
    assert_eq!(f.api.events(), vec!["Warning SecretConflict"]);
}

in_every_cache_mode!(a_failed_state_write_keeps_the_new_refresh_token_and_never_reuses_the_old_one);
async fn a_failed_state_write_keeps_the_new_refresh_token_and_never_reuses_the_old_one(
    caching: Caching,
) {
    let f = Fixture::with_caching(Some(3600), caching).await;
    // The import and the claim are stored (one create); storing the rotated token fails.
    f.api
        .fail_next(Method::PUT, "/secrets/allegro-oauth-state", 500);
    let action = f.reconcile().await.unwrap();
    let again = requeue_after(&action).unwrap();
    assert!(
        again <= Duration::from_millis(1200),
        "the new refresh token kept in memory is tried again within a second: {again:?}"
    );
    assert_eq!(
        f.condition("Ready"),
        ("Unknown".into(), "RefreshUnconfirmed".into()),
        "the published token may already be dead: some providers revoke it when they rotate"
    );
    assert!(
        f.condition_message("Ready").contains("kept in memory"),
        "{}",
        f.condition_message("Ready")
    );
    assert_eq!(f.endpoint.presented(), vec!["rt-0"]);
    assert!(
        f.api.get(&secret_path("allegro-token")).is_none(),
        "no access token is published before its refresh token is persisted"
    );
    assert_eq!(f.state_data("refresh_token").as_deref(), Some("rt-0"));

    f.api.clear_log();
    f.reconcile().await.unwrap();
    assert_eq!(
        f.endpoint.presented(),
        vec!["rt-0"],
        "the old refresh token is never presented again"
    );
    assert_eq!(f.state_data("refresh_token").as_deref(), Some("rt-1"));
    assert_eq!(
        f.api.writes(),
        vec![
            format!("PUT {}", secret_path("allegro-oauth-state")),
            format!("PATCH {}", secret_path("allegro-token")),
            format!("PATCH {}/status", token_path("allegro")),
        ]
    );
    assert_eq!(f.condition("Ready"), ("True".into(), "TokenValid".into()));
}

in_every_cache_mode!(a_conflicting_claim_sends_nothing_and_looks_again);
async fn a_conflicting_claim_sends_nothing_and_looks_again(caching: Caching) {
    let f = Fixture::with_caching(Some(3600), caching).await;
    f.reconcile().await.unwrap();
    f.make_due();
    f.api
        .fail_next(Method::PUT, "/secrets/allegro-oauth-state", 409);
    let error = f.reconcile().await.unwrap_err();
    assert!(error.contains("changed meanwhile"), "{error}");
    assert_eq!(f.endpoint.presented(), vec!["rt-0"], "no claim, no request");
    f.reconcile().await.unwrap();
    assert_eq!(f.state_data("refresh_token").as_deref(), Some("rt-2"));
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-1"]);
}

#[tokio::test]
async fn a_lagging_cache_costs_a_retry_but_never_a_second_presentation() {
    let f = Fixture::with_caching(Some(3600), Caching::Lagging).await;
    f.reconcile().await.unwrap();
    assert_eq!(f.state_data("refresh_token").as_deref(), Some("rt-1"));
    // A new scope asks for a new token. The OAuthToken watch delivers the edit; the Secret
    // watch lags.
    f.edit_spec(json!({"scopes": ["read"]}));
    // Another replica, reading the API, refreshes first: rt-1 is used up, rt-2 is the newest.
    reconcile(f.token.clone(), f.other_process()).await.unwrap();
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-1"]);
    assert_eq!(f.state_data("refresh_token").as_deref(), Some("rt-2"));
    let stored = f.api.get(&secret_path("allegro-oauth-state")).unwrap();

    // This process still sees rt-1 as the newest link (its own write; the other's is not
    // delivered). Its claim is compared against the stored version and fails: a retry, and no
    // request.
    f.api.clear_log();
    for _ in 0..2 {
        let error = f.reconcile().await.unwrap_err();
        assert!(error.contains("changed meanwhile"), "{error}");
    }
    assert_eq!(
        f.api.writes(),
        vec![format!("PUT {}", secret_path("allegro-oauth-state")); 2],
        "only the claims, refused"
    );
    assert_eq!(
        f.api.get(&secret_path("allegro-oauth-state")).unwrap(),
        stored,
        "the other replica's chain is untouched"
    );
    assert_eq!(
        f.endpoint.presented(),
        vec!["rt-0", "rt-1"],
        "rt-1 is never presented a second time"
    );
    assert!(f.endpoint.reuses().is_empty());

    // The watch catches up: the other replica's chain and token are used, nothing requested.
    f.deliver_all();
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-1"]);
    assert_eq!(f.condition("Ready"), ("True".into(), "TokenValid".into()));
    assert_eq!(
        unb64(&f.api.get(&secret_path("allegro-token")).unwrap()["data"]["access_token"]),
        "at-2"
    );
    // And the chain goes on from it.
    f.make_due();
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-1", "rt-2"]);
    assert_eq!(f.state_data("refresh_token").as_deref(), Some("rt-3"));
    assert!(f.endpoint.reuses().is_empty());
    f.assert_no_secret_leaks();
}

#[tokio::test]
async fn a_conflicting_commit_on_the_same_chain_is_repeated_on_the_fresh_version() {
    let f = Fixture::new(Some(3600)).await;
    f.api
        .fail_next(Method::PUT, "/secrets/allegro-oauth-state", 409);
    f.reconcile().await.unwrap();
    assert_eq!(f.state_data("refresh_token").as_deref(), Some("rt-1"));
    let state_writes: Vec<_> = f
        .api
        .log()
        .into_iter()
        .filter(|r| r.method == Method::PUT && r.path.ends_with("/allegro-oauth-state"))
        .collect();
    assert_eq!(
        state_writes.len(),
        2,
        "the commit met the conflict, then was repeated"
    );
    assert_eq!(f.endpoint.requests(), 1);
    assert_eq!(f.condition("Ready"), ("True".into(), "TokenValid".into()));
}

#[tokio::test]
async fn a_newer_token_stored_by_someone_else_is_never_overwritten() {
    let f = Fixture::new(Some(3600)).await;
    // The provider answers only when the test says so.
    f.endpoint.then(Answer::Held);
    let racing = async {
        // While our request is in flight, another process commits its own successor.
        f.endpoint.wait_for_requests(1).await;
        let mut state = f.api.get(&secret_path("allegro-oauth-state")).unwrap();
        state["data"]["refresh_token"] = json!(b64("rt-theirs"));
        state["data"].as_object_mut().unwrap().remove("claim");
        f.api.put(&secret_path("allegro-oauth-state"), state);
        f.endpoint.release();
    };
    let (reconciled, ()) = tokio::join!(f.reconcile(), racing);
    reconciled.unwrap();
    assert_eq!(f.endpoint.presented(), vec!["rt-0"]);
    assert_eq!(
        f.state_data("refresh_token").as_deref(),
        Some("rt-theirs"),
        "compared, not overwritten"
    );
    assert!(
        f.api.get(&secret_path("allegro-token")).is_none(),
        "the discarded answer is not published"
    );
    assert_eq!(
        f.condition("Ready"),
        ("False".into(), "ChainConflict".into())
    );
    assert!(
        f.api
            .events()
            .contains(&"Warning ChainConflict".to_string())
    );
    f.assert_no_secret_leaks();
}

/// The claim in the state Secret as it was last written with one (the commit removes it).
fn last_claim(f: &Fixture) -> Value {
    let claim = f
        .api
        .log()
        .into_iter()
        .filter(|r| {
            // The state Secret's create (POST to the collection) or replace (PUT).
            let create = r.method == Method::POST && r.path.ends_with("/secrets");
            create || (r.method == Method::PUT && r.path.ends_with("/allegro-oauth-state"))
        })
        .filter_map(|r| r.body["data"]["claim"].as_str().map(|c| unb64(&json!(c))))
        .next_back()
        .expect("a claim was written");
    serde_json::from_str(&claim).unwrap()
}

/// Lets `elapsed` pass on the tokio clock, which is the operator's monotonic clock, at once.
/// The wall clock stays where it is.
async fn elapse(elapsed: Duration) {
    tokio::time::pause();
    tokio::time::advance(elapsed).await;
    tokio::time::resume();
}

#[tokio::test]
async fn a_live_claim_of_another_process_is_waited_out() {
    // 12 s is the claim a process with the fixture's settings writes (its 2 s request timeout
    // plus 10 s to commit); a longer one and an absurd hand-edited lifetime are waited out too,
    // without a panic.
    for ttl in [12, 60, u64::MAX] {
        let f = Fixture::new(Some(3600)).await;
        let foreign = "other-pod/1f2e3d4c/7";
        f.api.put(
            &secret_path("allegro-oauth-state"),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "allegro-oauth-state", "namespace": NS,
                                "ownerReferences": [owner()]},
                   "data": {"refresh_token": b64("rt-0"),
                            "imported_refresh_token_sha256": b64(&sha256("rt-0")),
                            "claim": b64(&json!({"id": foreign, "holder": "other-pod/1f2e3d4c",
                                                  "fingerprint": sha256("rt-0"),
                                                  "ttlSeconds": ttl, "attempt": 1}).to_string())}}),
        );
        // Counted on this process's clock from when it first saw the claim; a reconcile asks to
        // be run again after an hour at most, and status says a day at most.
        let mut elapsed = 0;
        for step in [0, 5, 5] {
            elapse(Duration::from_secs(step)).await;
            elapsed += step;
            let before = Utc::now();
            let action = f.reconcile().await.unwrap();
            let left = ttl.saturating_sub(elapsed);
            let wait = requeue_after(&action).unwrap();
            let expected = Duration::from_secs(left.min(3600));
            assert!(
                wait <= expected + Duration::from_millis(100)
                    && wait + Duration::from_secs(1) >= expected,
                "claim of {ttl} s, seen {elapsed} s ago: requeue after {wait:?}"
            );
            let next = time(&f.status()["nextRefreshAt"]);
            let expected_next = before + chrono::TimeDelta::seconds(left.min(86_400) as i64);
            assert!(
                (next - expected_next).num_seconds().abs() <= 1,
                "claim of {ttl} s, seen {elapsed} s ago: nextRefreshAt {next}"
            );
            // Status tells nothing that is not so: no token, no failure, no dead chain.
            let status = f.status();
            for condition in status["conditions"].as_array().into_iter().flatten() {
                assert_ne!(condition["status"], "True", "{status}");
            }
            assert!(
                status["failedAttempts"].as_u64().unwrap_or(0) == 0,
                "{status}"
            );
            assert!(status["expiresAt"].is_null(), "{status}");
            assert_eq!(
                f.endpoint.requests(),
                0,
                "never two presentations in flight"
            );
            assert!(
                f.api.writes().iter().all(|w| w.ends_with("/status")),
                "the other process's claim is left alone: {:?}",
                f.api.writes()
            );
        }
        if ttl == u64::MAX {
            elapse(Duration::from_secs(86_400)).await;
            f.reconcile().await.unwrap();
            assert_eq!(f.endpoint.requests(), 0);
            continue;
        }

        // The claim ran out on this process's clock and its holder stored nothing: the token
        // is presented once more, exactly once.
        elapse(Duration::from_secs(ttl - elapsed)).await;
        f.reconcile().await.unwrap();
        assert_eq!(f.endpoint.presented(), vec!["rt-0"]);
        let claim = last_claim(&f);
        assert_eq!(claim["attempt"], 2, "the one more presentation: {claim}");
        assert_eq!(claim["holder"], f.ctx.fencing.holder());
        assert_ne!(claim["id"], foreign);
        assert_eq!(f.state_data("refresh_token").as_deref(), Some("rt-1"));
        assert_eq!(f.condition("Ready"), ("True".into(), "TokenValid".into()));
        for _ in 0..3 {
            f.reconcile().await.unwrap();
        }
        assert_eq!(f.endpoint.requests(), 1);
    }
}

#[tokio::test]
async fn a_lost_answer_allows_one_more_presentation_never_two() {
    let f = Fixture::new(Some(3600)).await;
    // The fixture's request timeout is 2 s: both answers come too late. The provider processed
    // the first all the same: it rotated rt-0, and the operator never saw rt-1.
    f.endpoint.then(Answer::Slow(Duration::from_secs(3)));
    f.endpoint.then(Answer::Slow(Duration::from_secs(3)));
    f.reconcile().await.unwrap();
    let claim: Value = serde_json::from_str(&f.state_data("claim").unwrap()).unwrap();
    assert_eq!(claim["lost"], true);
    assert_eq!(claim["attempt"], 1);
    assert_eq!(f.endpoint.rotated(), vec!["rt-0"]);
    assert_eq!(
        f.condition("Ready"),
        ("False".into(), "RefreshFailing".into()),
        "nothing was published yet"
    );
    f.make_due();
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-0"]);
    // The one more presentation was a reuse: the provider revoked the grant (the rt-1 it had
    // issued included), and that answer was lost too.
    assert_eq!(f.endpoint.reuses(), vec!["rt-0"]);
    assert!(!f.endpoint.accepts("rt-1"));
    assert_eq!(last_claim(&f)["attempt"], 2);
    assert_ne!(f.condition("Ready").0, "True");
    // The next reconcile, due or not, says the chain is dead.
    f.reconcile().await.unwrap();
    assert_eq!(
        f.condition("ReauthorizationRequired"),
        ("True".into(), "AnswerLost".into())
    );
    for _ in 0..3 {
        f.make_due();
        f.reconcile().await.unwrap();
    }
    assert_eq!(
        f.endpoint.presented(),
        vec!["rt-0", "rt-0"],
        "never a third time"
    );
    assert_eq!(
        f.condition("ReauthorizationRequired"),
        ("True".into(), "AnswerLost".into())
    );
    f.assert_no_secret_leaks();
}

/// After the one more presentation's answer is lost too, the chain is dead (the protocol never
/// presents the token again), and status says so at once, not one backoff (up to 5 minutes)
/// later.
#[tokio::test]
async fn a_second_lost_answer_asks_for_reauthorization_at_once() {
    let f = Fixture::new(Some(3600)).await;
    f.reconcile().await.unwrap();
    for _ in 0..2 {
        f.make_due();
        f.endpoint.then(Answer::Slow(Duration::from_secs(3)));
        f.reconcile().await.unwrap();
    }
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-1", "rt-1"]);
    assert_eq!(last_claim(&f)["attempt"], 2);
    assert_eq!(
        f.condition("ReauthorizationRequired"),
        ("True".into(), "AnswerLost".into()),
        "{}",
        f.condition_message("ReauthorizationRequired")
    );
}

#[tokio::test]
async fn invalid_grant_after_a_lost_answer_says_so() {
    let f = Fixture::new(Some(3600)).await;
    f.reconcile().await.unwrap();
    let published = f.api.get(&secret_path("allegro-token")).unwrap();
    // A routine refresh whose answer is lost: the provider rotated rt-1 to rt-2.
    f.make_due();
    f.endpoint.then(Answer::Slow(Duration::from_secs(3)));
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.rotated(), vec!["rt-0", "rt-1"]);
    assert_eq!(
        f.condition("Ready"),
        ("Unknown".into(), "RefreshUnconfirmed".into()),
        "the provider may have rotated, and some revoke the published token when they do"
    );
    assert_eq!(
        f.condition("ReauthorizationRequired"),
        ("False".into(), "Authorized".into())
    );
    let claim: Value = serde_json::from_str(&f.state_data("claim").unwrap()).unwrap();
    assert_eq!(
        (claim["lost"].clone(), claim["attempt"].clone()),
        (json!(true), json!(1))
    );
    assert_eq!(f.state_data("refresh_token").as_deref(), Some("rt-1"));
    assert_eq!(
        f.api.get(&secret_path("allegro-token")).unwrap()["data"],
        published["data"],
        "the published token stays"
    );

    // The one more presentation of rt-1 is a reuse: invalid_grant, and the provider revoked the
    // whole grant, rt-2 that the operator never saw included.
    f.make_due();
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-1", "rt-1"]);
    assert_eq!(f.endpoint.reuses(), vec!["rt-1"]);
    assert!(!f.endpoint.accepts("rt-2"));
    assert_eq!(last_claim(&f)["attempt"], 2);
    assert_eq!(
        f.condition("ReauthorizationRequired"),
        ("True".into(), "InvalidGrant".into())
    );
    assert_eq!(
        f.condition("Ready"),
        ("False".into(), "InvalidGrant".into())
    );
    let message = f.condition_message("ReauthorizationRequired");
    assert!(message.contains("was lost"), "{message}");
    f.make_due();
    f.reconcile().await.unwrap();
    assert!(
        f.condition_message("ReauthorizationRequired")
            .contains("was lost")
    );
    assert_eq!(f.endpoint.requests(), 3);
    f.assert_no_secret_leaks();
}

#[tokio::test]
async fn a_request_lost_before_it_reached_the_provider_is_presented_once_more_and_the_chain_goes_on()
 {
    let f = Fixture::new(Some(3600)).await;
    f.reconcile().await.unwrap();
    // A routine refresh whose request is held up on the way and never processed: nothing
    // rotated, but the operator cannot know that.
    f.make_due();
    f.endpoint.then(Answer::Hang(Duration::from_secs(3)));
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.rotated(), vec!["rt-0"]);
    assert_eq!(
        f.condition("Ready"),
        ("Unknown".into(), "RefreshUnconfirmed".into())
    );
    let claim: Value = serde_json::from_str(&f.state_data("claim").unwrap()).unwrap();
    assert_eq!(
        (claim["lost"].clone(), claim["attempt"].clone()),
        (json!(true), json!(1))
    );

    // The one more presentation reaches the provider: rt-1 was still valid, the chain goes on.
    f.make_due();
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-1", "rt-1"]);
    assert_eq!(last_claim(&f)["attempt"], 2);
    assert!(f.endpoint.reuses().is_empty());
    assert_eq!(f.state_data("refresh_token").as_deref(), Some("rt-2"));
    assert_eq!(f.state_data("claim"), None);
    assert_eq!(f.condition("Ready"), ("True".into(), "TokenValid".into()));
    assert_eq!(
        f.condition("ReauthorizationRequired"),
        ("False".into(), "Authorized".into())
    );
    assert_eq!(
        unb64(&f.api.get(&secret_path("allegro-token")).unwrap()["data"]["access_token"]),
        "at-2"
    );

    // A later refresh is a first presentation again.
    f.make_due();
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-1", "rt-1", "rt-2"]);
    assert_eq!(last_claim(&f)["attempt"], 1);
    assert_eq!(f.state_data("refresh_token").as_deref(), Some("rt-3"));
    assert!(f.endpoint.reuses().is_empty());
    f.assert_no_secret_leaks();
}

in_every_cache_mode!(a_deleted_state_secret_never_reimports_a_used_refresh_token);
async fn a_deleted_state_secret_never_reimports_a_used_refresh_token(caching: Caching) {
    let f = Fixture::with_caching(Some(3600), caching).await;
    f.reconcile().await.unwrap();
    let published = f.api.get(&secret_path("allegro-token")).unwrap();
    f.api.remove(&secret_path("allegro-oauth-state"));
    if caching == Caching::Lagging {
        // Until the watch delivers the deletion, this process knows the state Secret as it
        // wrote it last: a chain that is not due. Nothing is presented meanwhile.
        for _ in 0..3 {
            f.make_due();
            f.reconcile().await.unwrap();
        }
        assert_eq!(f.endpoint.presented(), vec!["rt-0"]);
        assert_eq!(f.condition("Ready"), ("True".into(), "TokenValid".into()));
        f.deliver_all();
    }
    for _ in 0..3 {
        f.make_due();
        f.reconcile().await.unwrap();
    }
    assert_eq!(f.endpoint.presented(), vec!["rt-0"], "rt-0 was used up");
    assert_eq!(
        f.condition("ReauthorizationRequired"),
        ("True".into(), "StateLost".into())
    );
    assert_eq!(f.condition("Ready"), ("False".into(), "StateLost".into()));
    assert_eq!(
        f.api.get(&secret_path("allegro-token")).unwrap()["data"],
        published["data"],
        "the published access token stays until it expires"
    );
    // A human authorizes again.
    f.reauthorize("rt-new");
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-new"]);
    assert_eq!(f.condition("Ready"), ("True".into(), "TokenValid".into()));
    f.assert_no_secret_leaks();
}

#[tokio::test]
async fn the_chain_is_only_sent_where_it_came_from() {
    let f = Fixture::new(Some(3600)).await;
    f.reconcile().await.unwrap();
    let elsewhere = FakeTokenEndpoint::provider(CLIENT_ID, CLIENT_SECRET)
        .grant("rt-1")
        .expires_in(Some(3600))
        .start()
        .await;
    f.edit_spec(json!({"tokenEndpoint": elsewhere.url}));
    f.make_due();
    f.reconcile().await.unwrap();
    assert_eq!(
        elsewhere.requests(),
        0,
        "the refresh token never reaches another origin"
    );
    assert_eq!(
        f.condition("ReauthorizationRequired"),
        ("True".into(), "ChainBindingChanged".into())
    );
    f.edit_spec(json!({"tokenEndpoint": f.endpoint.url, "clientId": "another-app"}));
    f.reconcile().await.unwrap();
    assert_eq!(
        f.condition("ReauthorizationRequired"),
        ("True".into(), "ChainBindingChanged".into())
    );
    assert_eq!(f.endpoint.requests(), 1);
    f.assert_no_secret_leaks();
}

#[tokio::test]
async fn spec_edits_that_do_not_change_the_request_cause_no_token_request() {
    let f = Fixture::new(Some(3600)).await;
    f.reconcile().await.unwrap();
    f.edit_spec(
        json!({"secretName": "renamed", "refreshBefore": "10m", "publishRefreshToken": true}),
    );
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.requests(), 1);
    let renamed = f.api.get(&secret_path("renamed")).unwrap();
    assert_eq!(unb64(&renamed["data"]["access_token"]), "at-1");
    f.edit_spec(json!({"scopes": ["read"]}));
    f.reconcile().await.unwrap();
    assert_eq!(
        f.endpoint.presented(),
        vec!["rt-0", "rt-1"],
        "a new scope asks again"
    );
}

#[tokio::test]
async fn the_state_secret_cannot_be_the_published_secret() {
    let f = Fixture::with_spec(Some(3600), json!({"secretName": "allegro-oauth-state"})).await;
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.requests(), 0);
    assert_eq!(f.condition("Ready"), ("False".into(), "InvalidSpec".into()));
}

#[tokio::test]
async fn a_refresh_token_in_an_unusable_answer_is_kept() {
    let f = Fixture::new(Some(3600)).await;
    f.endpoint.then(Answer::Raw(
        json!({"refresh_token": "rt-salvaged", "token_type": "bearer"}),
    ));
    f.reconcile().await.unwrap();
    assert_eq!(
        f.state_data("refresh_token").as_deref(),
        Some("rt-salvaged")
    );
    assert_eq!(f.status()["failedAttempts"], 1);
    assert!(f.condition_message("Ready").contains("no access_token"));
    f.make_due();
    f.endpoint.then(Answer::Raw(
        json!({"access_token": "at-2", "refresh_token": "rt-2", "scope": ["read", "write"],
               "expires_in": "3600", "token_type": "BEARER", "extra": {"x": 1}}),
    ));
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-salvaged"]);
    assert_eq!(f.state_data("refresh_token").as_deref(), Some("rt-2"));
    assert_eq!(f.condition("Ready"), ("True".into(), "TokenValid".into()));
    f.assert_no_secret_leaks();
}

#[tokio::test]
async fn no_refresh_starts_without_leadership() {
    let f = Fixture::new(Some(3600)).await;
    f.ctx.fencing.stop_refreshing();
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.requests(), 0);
    f.ctx.fencing.resume_refreshing();
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.requests(), 1);
}

#[tokio::test]
async fn a_parked_state_is_written_before_any_spec_check() {
    let f = Fixture::new(Some(3600)).await;
    f.api
        .fail_next(Method::PUT, "/secrets/allegro-oauth-state", 500);
    f.reconcile().await.unwrap();
    assert_eq!(f.state_data("refresh_token").as_deref(), Some("rt-0"));
    // The spec turns invalid meanwhile: the newest link is still written first.
    f.edit_spec(json!({"refreshBeforePercentage": 0}));
    f.reconcile().await.unwrap();
    assert_eq!(f.state_data("refresh_token").as_deref(), Some("rt-1"));
    assert_eq!(f.condition("Ready"), ("False".into(), "InvalidSpec".into()));
    assert_eq!(f.endpoint.presented(), vec!["rt-0"]);
}

#[tokio::test]
async fn invalid_grant_asks_for_reauthorization_without_a_retry_storm() {
    let f = Fixture::new(Some(3600)).await;
    f.endpoint.then(Answer::Fail {
        status: 400,
        error: Some("invalid_grant"),
        retry_after: None,
    });
    let before = Utc::now();
    f.reconcile().await.unwrap();
    assert_eq!(
        f.condition("Ready"),
        ("False".into(), "InvalidGrant".into())
    );
    assert_eq!(
        f.condition("ReauthorizationRequired"),
        ("True".into(), "InvalidGrant".into())
    );
    let status = f.status();
    assert_eq!(status["failedAttempts"], 1);
    assert!(time(&status["nextRefreshAt"]) - before >= chrono::TimeDelta::minutes(29));
    assert_eq!(
        f.api.events(),
        vec!["Normal RefreshTokenImported", "Warning InvalidGrant"]
    );
    let message = status["conditions"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("invalid_grant") && message.contains("400"),
        "{message}"
    );

    for _ in 0..3 {
        f.reconcile().await.unwrap();
    }
    assert_eq!(f.endpoint.requests(), 1, "no retry storm");
    assert_eq!(
        f.state_data("rejected_refresh_token_sha256"),
        Some(sha256("rt-0")),
        "the rejection is recorded with the chain"
    );
    // Past the backoff too: the rejected token itself is never presented again.
    for _ in 0..3 {
        f.make_due();
        f.reconcile().await.unwrap();
        assert_eq!(
            f.condition("ReauthorizationRequired"),
            ("True".into(), "InvalidGrant".into())
        );
    }
    assert_eq!(f.endpoint.presented(), vec!["rt-0"]);

    // A human re-authorizes: the new refresh token is imported and used at once.
    f.reauthorize("rt-new");
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-new"]);
    assert_eq!(f.condition("Ready"), ("True".into(), "TokenValid".into()));
    assert_eq!(
        f.condition("ReauthorizationRequired"),
        ("False".into(), "Authorized".into())
    );
    assert_eq!(f.status()["failedAttempts"], 0);
    f.assert_no_secret_leaks();
}

#[tokio::test]
async fn invalid_client_has_its_own_reason() {
    let f = Fixture::new(Some(3600)).await;
    // The client Secret holds a secret the provider does not know.
    put_client_secret(&f.api, "not-the-client-secret");
    f.reconcile().await.unwrap();
    assert_eq!(
        f.condition("Ready"),
        ("False".into(), "InvalidClient".into())
    );
    assert_eq!(
        f.condition("ReauthorizationRequired"),
        ("False".into(), "Authorized".into())
    );
    assert_eq!(f.endpoint.rejected_credentials(), 1);
    assert!(
        f.endpoint.accepts("rt-0"),
        "the provider refused the client before it looked at the refresh token"
    );
    f.assert_no_secret_leaks();
    for request in f.api.log() {
        assert!(!request.body.to_string().contains("not-the-client-secret"));
    }

    // The client secret is put right: the same refresh token is accepted.
    put_client_secret(&f.api, CLIENT_SECRET);
    f.make_due();
    f.reconcile().await.unwrap();
    assert_eq!(f.condition("Ready"), ("True".into(), "TokenValid".into()));
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-0"]);
    assert_eq!(f.state_data("refresh_token").as_deref(), Some("rt-1"));
    assert_eq!(f.endpoint.rejected_credentials(), 1);
}

#[tokio::test]
async fn retry_after_is_honoured_and_kept_in_status() {
    let f = Fixture::new(Some(3600)).await;
    f.endpoint.then(Answer::Fail {
        status: 503,
        error: None,
        retry_after: Some(120),
    });
    let before = Utc::now();
    f.reconcile().await.unwrap();
    let status = f.status();
    assert_eq!(status["failedAttempts"], 1);
    assert!(!status["lastFailureAt"].is_null());
    let next = time(&status["nextRefreshAt"]);
    assert!(next - before >= chrono::TimeDelta::seconds(119), "{next}");
    assert_eq!(
        f.condition("Ready"),
        ("False".into(), "RefreshFailing".into())
    );
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.requests(), 1, "the backoff in status holds");
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_still_valid_token_published() {
    // The refresh is due while the token has most of its half minute left.
    let f = Fixture::with_spec(Some(30), json!({"refreshBeforePercentage": 99})).await;
    f.reconcile().await.unwrap();
    let published = f.api.get(&secret_path("allegro-token")).unwrap();
    f.make_due();
    f.endpoint.then(Answer::Fail {
        status: 500,
        error: None,
        retry_after: None,
    });
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-1"]);
    let after = f.api.get(&secret_path("allegro-token")).unwrap();
    assert_eq!(after["data"], published["data"]);
    assert_eq!(f.status()["failedAttempts"], 1);
    let (ready, _) = f.condition("Ready");
    assert_eq!(ready, "True", "the published token is still valid");
    assert_eq!(f.state_data("refresh_token").as_deref(), Some("rt-1"));
}

/// A second OAuthToken like the fixture's, on the same token endpoint.
fn sibling(f: &Fixture, name: &str, spec_overrides: Value) -> Arc<OAuthToken> {
    let mut token = serde_json::to_value(f.token.as_ref()).unwrap();
    token["metadata"]["name"] = json!(name);
    token["metadata"]["uid"] = json!(format!("{name}-uid"));
    token["spec"]["secretName"] = json!(format!("{name}-token"));
    for (key, value) in spec_overrides.as_object().unwrap() {
        token["spec"][key] = value.clone();
    }
    f.api.put(&token_path(name), token.clone());
    Arc::new(serde_json::from_value(token).unwrap())
}

#[tokio::test]
async fn retry_after_pauses_every_token_on_the_origin() {
    let f = Fixture::new(Some(3600)).await;
    let second = sibling(&f, "second", json!({}));
    f.endpoint.then(Answer::Fail {
        status: 429,
        error: None,
        retry_after: Some(60),
    });
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.requests(), 1);
    // The other OAuthToken on the origin is due too, but the origin is paused.
    let action = reconcile(second, f.ctx.clone()).await.unwrap();
    assert_eq!(
        f.endpoint.requests(),
        1,
        "nothing is sent to a paused origin"
    );
    let again = format!("{action:?}");
    assert!(
        again.contains("requeue_after: Some(") && !again.contains("requeue_after: None"),
        "{again}"
    );
    assert!(f.api.get(&secret_path("second-token")).is_none());
    assert!(
        f.ctx
            .metrics
            .encode()
            .contains("oauth_token_operator_refreshes_deferred_total{reason=\"retry_after\"} 1")
    );
}

#[tokio::test]
async fn a_declared_budget_is_shared_by_the_origin() {
    let budget = json!({"tokenEndpointBudget": {"requestsPerMinute": 1, "burst": 1}});
    let f = Fixture::with_spec(Some(3600), budget.clone()).await;
    let second = sibling(&f, "second", budget);
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.requests(), 1);
    reconcile(second, f.ctx.clone()).await.unwrap();
    assert_eq!(
        f.endpoint.requests(),
        1,
        "one request a minute for the whole origin"
    );
    assert!(
        f.ctx
            .metrics
            .encode()
            .contains("oauth_token_operator_refreshes_deferred_total{reason=\"budget\"} 1")
    );
    // The second chain's first import waits for the budget: nothing of it is recorded or
    // stored yet, and nothing is reported as wrong.
    let status = f.api.get(&token_path("second")).unwrap()["status"].clone();
    assert!(status["importedRefreshTokenSha256"].is_null(), "{status}");
    assert!(
        !status.to_string().contains("InvalidSpec") && !status.to_string().contains("StateLost"),
        "{status}"
    );
    assert!(f.api.get(&secret_path("second-oauth-state")).is_none());
}

fn refresh_expiry_series(f: &Fixture) -> Option<i64> {
    let prefix = format!(
        "oauth_token_operator_refresh_token_expiry_timestamp_seconds{{namespace=\"{NS}\",name=\"allegro\"}} "
    );
    f.ctx.metrics.encode().lines().find_map(|line| {
        line.strip_prefix(&prefix)
            .map(|v| v.parse::<f64>().unwrap() as i64)
    })
}

#[tokio::test]
async fn a_stated_refresh_token_lifetime_reaches_state_status_and_the_gauge() {
    let f = Fixture::new(Some(3600)).await;
    // Keycloak's name; the refresh token lives shorter than the access token.
    f.endpoint.then(Answer::Raw(json!({
        "access_token": "at-1", "refresh_token": "rt-1", "expires_in": 3600,
        "refresh_expires_in": 1800
    })));
    f.reconcile().await.unwrap();
    let status = f.status();
    let issued = time(&status["lastRefreshAt"]);
    let refresh_expires = time(&status["refreshTokenExpiresAt"]);
    assert_eq!((refresh_expires - issued).num_seconds(), 1800);
    assert_eq!(
        f.state_data("refresh_token_expires_at").as_deref(),
        status["refreshTokenExpiresAt"].as_str()
    );
    assert_eq!(refresh_expiry_series(&f), Some(refresh_expires.timestamp()));
    // The provider rotates: refresh while 33 % of the refresh token's life remains, not when
    // 33 % of the access token's does (which would be after the refresh token died).
    assert_eq!(
        (refresh_expires - time(&status["nextRefreshAt"])).num_seconds(),
        594
    );
    assert_eq!(f.condition("Ready"), ("True".into(), "TokenValid".into()));

    // A new refresh token whose lifetime nobody states: unknown, the series goes.
    f.make_due();
    f.endpoint.then(Answer::Raw(
        json!({"access_token": "at-2", "refresh_token": "rt-2", "expires_in": 3600}),
    ));
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-1"]);
    assert!(f.status()["refreshTokenExpiresAt"].is_null());
    assert_eq!(f.state_data("refresh_token_expires_at"), None);
    assert_eq!(refresh_expiry_series(&f), None);
    f.assert_no_secret_leaks();
}

#[tokio::test]
async fn the_spec_lifetime_counts_from_the_import_and_the_provider_wins_over_it() {
    let f = Fixture::with_spec(Some(3600), json!({"refreshTokenLifetime": "90d"})).await;
    let before = Utc::now();
    // The provider does not rotate and states nothing: the clock started at the import.
    f.endpoint.then(Answer::Raw(
        json!({"access_token": "at-1", "expires_in": 3600}),
    ));
    f.reconcile().await.unwrap();
    let status = f.status();
    let refresh_expires = time(&status["refreshTokenExpiresAt"]);
    let ninety_days = chrono::TimeDelta::days(90);
    assert!(
        refresh_expires >= before + ninety_days - chrono::TimeDelta::seconds(1)
            && refresh_expires <= Utc::now() + ninety_days,
        "{refresh_expires}"
    );
    assert_eq!(refresh_expiry_series(&f), Some(refresh_expires.timestamp()));
    assert_eq!(
        (time(&status["expiresAt"]) - time(&status["nextRefreshAt"])).num_seconds(),
        1188,
        "a refresh token that outlives the plan leaves it alone"
    );

    // Without rotation or a stated lifetime the expiry stays what it was.
    f.make_due();
    f.endpoint.then(Answer::Raw(
        json!({"access_token": "at-2", "expires_in": 3600, "refresh_token": "rt-0"}),
    ));
    f.reconcile().await.unwrap();
    assert_eq!(time(&f.status()["refreshTokenExpiresAt"]), refresh_expires);

    // A rotation starts the spec's clock again...
    f.make_due();
    f.endpoint.then(Answer::Raw(
        json!({"access_token": "at-3", "expires_in": 3600, "refresh_token": "rt-3"}),
    ));
    f.reconcile().await.unwrap();
    let status = f.status();
    assert_eq!(
        time(&status["refreshTokenExpiresAt"]) - time(&status["lastRefreshAt"]),
        ninety_days
    );

    // ...and a lifetime the provider states wins over the spec's.
    f.make_due();
    f.endpoint.then(Answer::Raw(json!({
        "access_token": "at-4", "expires_in": 3600, "refresh_token": "rt-4",
        "refresh_token_expires_in": "15897600"
    })));
    f.reconcile().await.unwrap();
    let status = f.status();
    assert_eq!(
        (time(&status["refreshTokenExpiresAt"]) - time(&status["lastRefreshAt"])).num_days(),
        184
    );
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-0", "rt-0", "rt-3"]);
}

#[tokio::test]
async fn invalid_grant_for_an_expired_refresh_token_says_so() {
    let f = Fixture::new(Some(3600)).await;
    f.endpoint.then(Answer::Raw(json!({
        "access_token": "at-1", "refresh_token": "rt-1", "expires_in": 3600,
        "refresh_token_expires_in": 7200
    })));
    f.reconcile().await.unwrap();
    // Time passes beyond the refresh token's expiry.
    f.make_due();
    let state_path = secret_path("allegro-oauth-state");
    let mut state = f.api.get(&state_path).unwrap();
    state["data"]["refresh_token_expires_at"] = json!(b64("2020-01-01T00:00:00Z"));
    f.api.put(&state_path, state);
    f.endpoint.then(Answer::Fail {
        status: 400,
        error: Some("invalid_grant"),
        retry_after: None,
    });
    f.reconcile().await.unwrap();
    assert_eq!(
        f.condition("ReauthorizationRequired"),
        ("True".into(), "InvalidGrant".into())
    );
    let message = f.condition_message("ReauthorizationRequired");
    assert!(
        message.contains("The refresh token had expired at 2020-01-01T00:00:00Z"),
        "{message}"
    );
    assert_eq!(f.status()["refreshTokenExpiresAt"], "2020-01-01T00:00:00Z");
    // Past the backoff: the rejected token is not presented again.
    for _ in 0..3 {
        f.make_due();
        f.reconcile().await.unwrap();
    }
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-1"]);
    assert_eq!(
        f.condition("ReauthorizationRequired"),
        ("True".into(), "InvalidGrant".into())
    );
    f.assert_no_secret_leaks();
}

/// One refresh-token grant at `endpoint`, as the operator's token client sends it.
async fn present(
    endpoint: &url::Url,
    client: &ClientCredentials,
    refresh_token: &str,
) -> Result<Issued, OAuthError> {
    let tokens = TokenClient::new(ClientOptions {
        timeout: Duration::from_secs(5),
        allow_insecure_http: true,
        ..ClientOptions::default()
    })
    .unwrap();
    let refresh_token = SecretString::from(refresh_token.to_string());
    let extra = std::collections::BTreeMap::new();
    tokens
        .request(&TokenRequest {
            endpoint,
            client,
            grant: GrantRequest::RefreshToken(&refresh_token),
            scopes: &[],
            audience: None,
            extra_parameters: &extra,
        })
        .await
}

fn client(method: AuthMethod, client_id: &str, client_secret: Option<&str>) -> ClientCredentials {
    ClientCredentials {
        method,
        client_id: client_id.to_string(),
        client_secret: client_secret.map(|s| SecretString::from(s.to_string())),
    }
}

fn rotated_to(issued: Result<Issued, OAuthError>) -> String {
    issued
        .unwrap()
        .refresh_token
        .expect("a rotated refresh token")
        .expose_secret()
        .to_string()
}

fn failure_kind(issued: Result<Issued, OAuthError>) -> FailureKind {
    issued.map(|_| ()).unwrap_err().kind()
}

/// The fake provider the tests above rely on behaves like a real one: it authenticates the
/// client, rotates, and answers a reuse by revoking the whole grant.
#[tokio::test]
async fn the_fake_provider_authenticates_the_client_and_detects_reuse() {
    let endpoint = FakeTokenEndpoint::provider(CLIENT_ID, CLIENT_SECRET)
        .grant("rt-0")
        .expires_in(Some(60))
        .start()
        .await;
    let url = url::Url::parse(&endpoint.url).unwrap();
    let basic = client(
        AuthMethod::ClientSecretBasic,
        CLIENT_ID,
        Some(CLIENT_SECRET),
    );
    let post = client(AuthMethod::ClientSecretPost, CLIENT_ID, Some(CLIENT_SECRET));

    // Wrong credentials, whichever way they come, and no credentials at all.
    for wrong in [
        client(AuthMethod::ClientSecretBasic, CLIENT_ID, Some("wrong")),
        client(AuthMethod::ClientSecretPost, CLIENT_ID, Some("wrong")),
        client(
            AuthMethod::ClientSecretBasic,
            "another-app",
            Some(CLIENT_SECRET),
        ),
        client(
            AuthMethod::ClientSecretPost,
            "another-app",
            Some(CLIENT_SECRET),
        ),
        client(AuthMethod::None, CLIENT_ID, None),
    ] {
        let answer = present(&url, &wrong, "rt-0").await;
        assert_eq!(
            failure_kind(answer),
            FailureKind::InvalidClient,
            "{wrong:?}"
        );
    }
    assert_eq!(endpoint.rejected_credentials(), 5);
    assert!(endpoint.rotated().is_empty(), "nothing was processed");
    assert!(endpoint.accepts("rt-0"));

    // Both methods work; every refresh rotates.
    assert_eq!(rotated_to(present(&url, &basic, "rt-0").await), "rt-1");
    assert_eq!(rotated_to(present(&url, &post, "rt-1").await), "rt-2");
    assert_eq!(endpoint.rotated(), vec!["rt-0", "rt-1"]);
    assert!(!endpoint.accepts("rt-0") && endpoint.accepts("rt-2"));

    // A used refresh token again: reuse. The whole grant is revoked, the newest token included.
    let reuse = present(&url, &basic, "rt-0").await;
    assert_eq!(failure_kind(reuse), FailureKind::ReauthorizationRequired);
    assert_eq!(endpoint.reuses(), vec!["rt-0"]);
    let newest = present(&url, &basic, "rt-2").await;
    assert_eq!(failure_kind(newest), FailureKind::ReauthorizationRequired);
    assert!(!endpoint.accepts("rt-2"));
    // A token it never issued.
    let forged = present(&url, &basic, "rt-forged").await;
    assert_eq!(failure_kind(forged), FailureKind::ReauthorizationRequired);
    assert_eq!(endpoint.invalid_grants(), 3);
    assert_eq!(endpoint.reuses(), vec!["rt-0"], "one reuse, one revocation");

    // A new authorization is a new grant, untouched by the revoked one.
    endpoint.authorize("rt-new");
    assert_eq!(rotated_to(present(&url, &post, "rt-new").await), "rt-3");

    // Scripted faults do not touch the token state: a Fail or a request held and failed before
    // it reached the provider leaves rt-3 valid; a slow answer was processed all the same.
    endpoint.then(Answer::Fail {
        status: 503,
        error: None,
        retry_after: None,
    });
    assert_eq!(
        failure_kind(present(&url, &basic, "rt-3").await),
        FailureKind::Transient
    );
    endpoint.then(Answer::Hang(Duration::from_millis(10)));
    assert_eq!(
        failure_kind(present(&url, &basic, "rt-3").await),
        FailureKind::Transient
    );
    assert!(endpoint.accepts("rt-3"));
    endpoint.then(Answer::Slow(Duration::from_millis(10)));
    assert_eq!(rotated_to(present(&url, &basic, "rt-3").await), "rt-4");
    assert_eq!(
        endpoint.presented(),
        vec![
            "rt-0",
            "rt-0",
            "rt-0",
            "rt-0",
            "rt-0",
            "rt-0",
            "rt-1",
            "rt-0",
            "rt-2",
            "rt-forged",
            "rt-new",
            "rt-3",
            "rt-3",
            "rt-3"
        ]
    );
    assert_eq!(endpoint.rejected_credentials(), 5);
}

impl Fixture {
    /// Asks for a refresh the way `kubectl oauthtoken refresh` does: a new annotation value.
    fn request_refresh(&self, value: &str) {
        let path = token_path("allegro");
        let mut token = self.api.get(&path).unwrap();
        token["metadata"]["annotations"] = json!({"oauth-token-operator.io/refresh": value});
        self.api.put(&path, token);
        self.user_edited(&[path]);
    }

    fn acknowledged(&self) -> (Value, String) {
        let status = self.status();
        (
            status["lastRefreshRequest"].clone(),
            status["lastRefreshRequestResult"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }
}

in_every_cache_mode!(a_refresh_request_refreshes_once_and_is_acknowledged);
async fn a_refresh_request_refreshes_once_and_is_acknowledged(caching: Caching) {
    let f = Fixture::build(Some(3600), json!({"minRefreshInterval": "1ms"}), caching).await;
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.presented(), vec!["rt-0"]);
    // The token is fresh: only the request makes the operator refresh it.
    f.request_refresh("2026-12-05T10:00:00.000000001Z");
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-1"]);
    let (value, result) = f.acknowledged();
    assert_eq!(value, "2026-12-05T10:00:00.000000001Z");
    assert!(
        result.starts_with("Refreshed: a new access token"),
        "{result}"
    );
    assert_eq!(f.state_data("refresh_token").as_deref(), Some("rt-2"));
    // Acknowledged once: the same value asks for nothing more.
    f.api.clear_log();
    f.reconcile().await.unwrap();
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.presented(), vec!["rt-0", "rt-1"]);
    assert_eq!(f.api.writes(), Vec::<String>::new());
    assert!(f.endpoint.reuses().is_empty());
    f.assert_no_secret_leaks();
}

#[tokio::test]
async fn requests_within_the_minimum_interval_are_acknowledged_without_a_token_request() {
    let f = Fixture::new(Some(3600)).await;
    f.reconcile().await.unwrap();
    // A consumer crash-looping on 401s asks again and again: one token request in all.
    for attempt in 0..5 {
        f.request_refresh(&format!("loop-{attempt}"));
        f.reconcile().await.unwrap();
        let (value, result) = f.acknowledged();
        assert_eq!(value, format!("loop-{attempt}"));
        assert!(
            result.starts_with("Not refreshed: the last token request was at")
                && result.contains("spec.minRefreshInterval (10s)"),
            "{result}"
        );
    }
    assert_eq!(f.endpoint.presented(), vec!["rt-0"]);
    assert_eq!(f.condition("Ready"), ("True".into(), "TokenValid".into()));
}

#[tokio::test]
async fn a_suspended_token_requests_nothing_until_resumed() {
    let f = Fixture::with_spec(Some(3600), json!({"suspend": true})).await;
    f.reconcile().await.unwrap();
    f.request_refresh("while-suspended");
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.requests(), 0, "no token request while suspended");
    assert!(
        f.api.get(&secret_path("allegro-oauth-state")).is_none(),
        "nothing imported while suspended: the old refresher may still hold the token"
    );
    assert_eq!(f.condition("Ready"), ("False".into(), "Suspended".into()));
    assert!(
        f.condition_message("Ready")
            .contains("spec.suspend is true")
    );
    let (value, result) = f.acknowledged();
    assert_eq!(value, "while-suspended");
    assert!(result.starts_with("Not refreshed (Suspended)"), "{result}");
    assert_eq!(f.api.events(), vec!["Normal Suspended"]);

    f.edit_spec(json!({"suspend": false}));
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.presented(), vec!["rt-0"]);
    assert_eq!(f.condition("Ready"), ("True".into(), "TokenValid".into()));
    assert_eq!(
        f.api.events(),
        vec!["Normal Suspended", "Normal Resumed", "Normal TokenIssued"]
    );

    // Suspended again with a published token: it stays, and nothing is requested when due.
    f.edit_spec(json!({"suspend": true}));
    f.make_due();
    f.reconcile().await.unwrap();
    assert_eq!(f.endpoint.requests(), 1);
    assert!(f.api.get(&secret_path("allegro-token")).is_some());
    assert!(
        f.condition_message("Ready")
            .contains("stays in Secret allegro-token")
    );
    assert!(f.status()["nextRefreshAt"].is_null());
}

#[tokio::test]
async fn the_refresh_token_expiry_warning_turns_on_within_its_window() {
    // A refresh token that lives an hour, with a warning window of two: expiring at once.
    let f = Fixture::with_spec(
        Some(600),
        json!({"refreshTokenLifetime": "1h", "refreshTokenExpiryWarning": "2h"}),
    )
    .await;
    f.reconcile().await.unwrap();
    assert_eq!(
        f.condition("RefreshTokenExpiring"),
        ("True".into(), "ExpiresSoon".into())
    );
    let message = f.condition_message("RefreshTokenExpiring");
    assert!(
        message.contains("kubectl oauthtoken authorize allegro -n")
            && message.contains("Secret allegro-authorization"),
        "{message}"
    );
    assert_eq!(
        f.api.events(),
        vec!["Warning RefreshTokenExpiring", "Normal TokenIssued"]
    );
    // One Event for the transition, not one per reconcile.
    f.make_due();
    f.reconcile().await.unwrap();
    assert_eq!(
        f.api
            .events()
            .iter()
            .filter(|e| *e == "Warning RefreshTokenExpiring")
            .count(),
        1
    );
}

#[tokio::test]
async fn the_expiry_warning_wakes_the_reconcile_when_it_begins() {
    // Access tokens for 2 h (refreshed after 80 min); the refresh token dies after 1 h, and the
    // warning begins 30 min before: the reconcile must look again in 30 min, not 80. (A
    // non-rotating refresh token's expiry moves only with a new import.)
    let f = Fixture::with_spec(
        Some(7200),
        json!({"refreshTokenLifetime": "1h", "refreshTokenExpiryWarning": "30m"}),
    )
    .await;
    let action = f.reconcile().await.unwrap();
    assert_eq!(
        f.condition("RefreshTokenExpiring"),
        ("False".into(), "NotExpiring".into())
    );
    let wait = requeue_after(&action).unwrap();
    assert!(
        wait <= Duration::from_secs(30 * 60 + 5) && wait >= Duration::from_secs(29 * 60),
        "{wait:?}"
    );
}

#[tokio::test]
async fn client_credentials_have_no_refresh_token_expiry_condition() {
    let f = Fixture::with_spec(Some(3600), json!({"grant": {"clientCredentials": {}}})).await;
    f.reconcile().await.unwrap();
    let status = f.status();
    assert!(
        !status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "RefreshTokenExpiring"),
        "{status}"
    );
}
