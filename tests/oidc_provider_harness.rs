//! Proves the oidc-provider test harness (tests/support/oidc_provider.rs)
//! works: a real oidc-provider instance rotates refresh tokens, detects reuse
//! by revoking the grant, and counts every token-endpoint request.

mod support;

use std::time::Duration;

use serde::Deserialize;
use support::oidc_provider::{
    BASIC_CLIENT, CC_CLIENT, CC_POST_CLIENT, DEFAULT_SCOPE, Fault, OidcOptions, OidcProvider,
    POST_CLIENT, PUBLIC_CLIENT,
};

#[derive(Debug, Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    expires_in: Option<u64>,
    refresh_token: Option<String>,
    scope: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorResponse {
    error: String,
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn refresh_basic(
    http: &reqwest::Client,
    op: &OidcProvider,
    refresh_token: &str,
) -> reqwest::Response {
    http.post(op.token_endpoint())
        .basic_auth(BASIC_CLIENT.id, Some(BASIC_CLIENT.secret))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .send()
        .await
        .unwrap()
}

async fn expect_error(resp: reqwest::Response, status: u16, error: &str) {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    let body: ErrorResponse = resp.json().await.unwrap();
    assert_eq!(body.error, error);
}

#[tokio::test]
async fn refresh_rotation_and_reuse_detection() {
    let op = OidcProvider::start(OidcOptions {
        access_token_ttl_secs: 3,
        ..Default::default()
    })
    .await;
    assert!(op.issuer().starts_with("http://127.0.0.1:"));
    assert_eq!(op.token_endpoint(), format!("{}/token", op.issuer()));

    let http = http();
    let grant = op.create_grant(BASIC_CLIENT.id, DEFAULT_SCOPE).await;

    // Three refreshes: every response carries a new refresh token.
    let mut tokens = vec![grant.refresh_token.clone()];
    for _ in 0..3 {
        let resp = refresh_basic(&http, &op, tokens.last().unwrap()).await;
        assert_eq!(resp.status().as_u16(), 200);
        let body: TokenResponse = resp.json().await.unwrap();
        assert!(!body.access_token.is_empty());
        assert_eq!(body.token_type, "Bearer");
        assert_eq!(body.expires_in, Some(3));
        assert_eq!(body.scope.as_deref(), Some(DEFAULT_SCOPE));
        let new = body.refresh_token.expect("rotated refresh token");
        assert!(!tokens.contains(&new), "refresh token was not rotated");
        tokens.push(new);
    }

    // Reusing a consumed refresh token fails and revokes the whole grant ...
    expect_error(
        refresh_basic(&http, &op, &tokens[1]).await,
        400,
        "invalid_grant",
    )
    .await;
    // ... so the newest refresh token is dead too.
    expect_error(
        refresh_basic(&http, &op, &tokens[3]).await,
        400,
        "invalid_grant",
    )
    .await;

    // Wrong secret.
    let resp = http
        .post(op.token_endpoint())
        .basic_auth(BASIC_CLIENT.id, Some("wrong"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")])
        .send()
        .await
        .unwrap();
    expect_error(resp, 401, "invalid_client").await;

    let stats = op.stats().await;
    assert_eq!(stats.token_requests, 6, "{stats:?}");
    assert_eq!(stats.successes, 3, "{stats:?}");
    assert_eq!(stats.error("invalid_grant"), 2, "{stats:?}");
    assert_eq!(stats.error("invalid_client"), 1, "{stats:?}");
    assert_eq!(stats.grant_type("refresh_token"), 6, "{stats:?}");
    assert_eq!(stats.client(BASIC_CLIENT.id), 6, "{stats:?}");

    op.reset_stats().await;
    assert_eq!(op.stats().await, Default::default());
}

#[tokio::test]
async fn other_clients_revocation_and_faults() {
    let op = OidcProvider::start(OidcOptions {
        access_token_ttl_secs: 2,
        client_credentials_ttl_secs: 4,
        ..Default::default()
    })
    .await;
    let http = http();

    // client_secret_post client.
    let grant = op
        .create_grant(POST_CLIENT.id, "offline_access api:read")
        .await;
    let resp = http
        .post(op.token_endpoint())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", grant.refresh_token.as_str()),
            ("client_id", POST_CLIENT.id),
            ("client_secret", POST_CLIENT.secret),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: TokenResponse = resp.json().await.unwrap();
    assert_eq!(body.expires_in, Some(2));
    assert_ne!(
        body.refresh_token.as_deref(),
        Some(grant.refresh_token.as_str())
    );
    // Basic auth for a client_secret_post client is rejected (strict mode).
    let resp = http
        .post(op.token_endpoint())
        .basic_auth(POST_CLIENT.id, Some(POST_CLIENT.secret))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", body.refresh_token.as_deref().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    expect_error(resp, 401, "invalid_client").await;

    // Public client: rotation applies too.
    let grant = op
        .create_grant(PUBLIC_CLIENT.id, "offline_access api:read")
        .await;
    let resp = http
        .post(op.token_endpoint())
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", grant.refresh_token.as_str()),
            ("client_id", PUBLIC_CLIENT.id),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: TokenResponse = resp.json().await.unwrap();
    assert_ne!(
        body.refresh_token.as_deref(),
        Some(grant.refresh_token.as_str())
    );

    // client_credentials, with and without scope, basic and post.
    for scope in [None, Some("api:read")] {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        let resp = http
            .post(op.token_endpoint())
            .basic_auth(CC_CLIENT.id, Some(CC_CLIENT.secret))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let body: TokenResponse = resp.json().await.unwrap();
        assert_eq!(body.expires_in, Some(4));
        assert_eq!(body.scope.as_deref(), scope);
        assert!(body.refresh_token.is_none());
    }
    let resp = http
        .post(op.token_endpoint())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CC_POST_CLIENT.id),
            ("client_secret", CC_POST_CLIENT.secret),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // Admin revocation kills the refresh token.
    let grant = op.create_grant(BASIC_CLIENT.id, DEFAULT_SCOPE).await;
    op.revoke_grant(&grant.grant_id).await;
    op.revoke_grant(&grant.grant_id).await; // idempotent
    expect_error(
        refresh_basic(&http, &op, &grant.refresh_token).await,
        400,
        "invalid_grant",
    )
    .await;

    // Injected faults.
    op.reset_stats().await;
    op.inject_faults(
        1,
        Fault {
            retry_after_secs: Some(1),
            ..Fault::status(503)
        },
    )
    .await;
    let grant = op.create_grant(BASIC_CLIENT.id, DEFAULT_SCOPE).await;
    let resp = refresh_basic(&http, &op, &grant.refresh_token).await;
    assert_eq!(resp.headers()["retry-after"], "1");
    expect_error(resp, 503, "temporarily_unavailable").await;
    // The faulted request never reached oidc-provider: the token still works.
    let resp = refresh_basic(&http, &op, &grant.refresh_token).await;
    assert_eq!(resp.status().as_u16(), 200);

    let stats = op.stats().await;
    assert_eq!(stats.token_requests, 2, "{stats:?}");
    assert_eq!(stats.successes, 1, "{stats:?}");
    assert_eq!(stats.faults_injected, 1, "{stats:?}");
    assert_eq!(stats.error("temporarily_unavailable"), 1, "{stats:?}");
}
