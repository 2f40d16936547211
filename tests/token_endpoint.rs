//! The OAuth client (`src/oauth`) against a real authorization server (oidc-provider, refresh
//! tokens rotated with reuse detection) and, for faults a real server will not produce on
//! demand, an in-process fake token endpoint.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use oauth_token_operator::oauth::{
    AuthMethod, ClientCredentials, ClientOptions, FailureKind, GrantRequest, OAuthError,
    Presentation, TokenClient, TokenRequest,
};
use secrecy::{ExposeSecret, SecretString};
use support::oidc_provider::{
    BASIC_CLIENT, CC_CLIENT, CC_POST_CLIENT, Client, DEFAULT_SCOPE, OidcOptions, OidcProvider,
    POST_CLIENT, PUBLIC_CLIENT,
};
use url::Url;

fn token_client(timeout: Duration) -> TokenClient {
    TokenClient::new(ClientOptions {
        timeout,
        allow_insecure_http: true,
        ..ClientOptions::default()
    })
    .unwrap()
}

fn credentials(client: Client, method: AuthMethod) -> ClientCredentials {
    ClientCredentials {
        method,
        client_id: client.id.to_string(),
        client_secret: (!client.secret.is_empty()).then(|| SecretString::from(client.secret)),
    }
}

async fn refresh(
    tokens: &TokenClient,
    endpoint: &Url,
    client: &ClientCredentials,
    refresh_token: &SecretString,
) -> Result<oauth_token_operator::oauth::Issued, OAuthError> {
    let extra = BTreeMap::new();
    tokens
        .request(&TokenRequest {
            endpoint,
            client,
            grant: GrantRequest::RefreshToken(refresh_token),
            scopes: &[],
            audience: None,
            extra_parameters: &extra,
        })
        .await
}

/// Refreshes `rounds` times in a row, each time with the refresh token the previous answer
/// rotated to, and returns the last refresh token.
async fn rotate(
    provider: &OidcProvider,
    client: Client,
    method: AuthMethod,
    rounds: usize,
) -> SecretString {
    let tokens = token_client(Duration::from_secs(10));
    let endpoint = Url::parse(provider.token_endpoint()).unwrap();
    let credentials = credentials(client, method);
    let grant = provider.create_grant(client.id, DEFAULT_SCOPE).await;
    let mut current = SecretString::from(grant.refresh_token);
    let mut seen = vec![current.expose_secret().to_string()];
    for round in 0..rounds {
        let issued = refresh(&tokens, &endpoint, &credentials, &current)
            .await
            .unwrap_or_else(|e| panic!("refresh {round} failed: {e}"));
        let next = issued.refresh_token.expect("oidc-provider rotates");
        let response = issued.access.unwrap();
        assert!(!response.access_token.expose_secret().is_empty());
        assert_eq!(response.token_type, "Bearer");
        assert!(response.expires_in.is_some());
        assert!(
            !seen.contains(&next.expose_secret().to_string()),
            "rotation gives a new refresh token every time"
        );
        seen.push(next.expose_secret().to_string());
        current = next;
    }
    current
}

#[tokio::test]
async fn basic_and_post_auth_rotate_without_breaking_the_chain() {
    let provider = OidcProvider::start(OidcOptions::default()).await;
    rotate(&provider, BASIC_CLIENT, AuthMethod::ClientSecretBasic, 5).await;
    rotate(&provider, POST_CLIENT, AuthMethod::ClientSecretPost, 5).await;
    rotate(&provider, PUBLIC_CLIENT, AuthMethod::None, 3).await;
    let stats = provider.stats().await;
    assert_eq!(stats.successes, 13, "{stats:?}");
    assert_eq!(stats.error("invalid_grant"), 0, "{stats:?}");
}

#[tokio::test]
async fn client_credentials_with_basic_and_post() {
    let provider = OidcProvider::start(OidcOptions::default()).await;
    let tokens = token_client(Duration::from_secs(10));
    let endpoint = Url::parse(provider.token_endpoint()).unwrap();
    let extra = BTreeMap::new();
    for (client, method) in [
        (CC_CLIENT, AuthMethod::ClientSecretBasic),
        (CC_POST_CLIENT, AuthMethod::ClientSecretPost),
    ] {
        let scopes = vec!["api:read".to_string()];
        let issued = tokens
            .request(&TokenRequest {
                endpoint: &endpoint,
                client: &credentials(client, method),
                grant: GrantRequest::ClientCredentials,
                scopes: &scopes,
                audience: None,
                extra_parameters: &extra,
            })
            .await
            .unwrap();
        assert!(issued.refresh_token.is_none());
        let response = issued.access.unwrap();
        assert_eq!(response.scope.as_deref(), Some("api:read"));
        assert_eq!(
            response.expires_in,
            Some(Duration::from_secs(
                provider.options().client_credentials_ttl_secs
            ))
        );
    }
}

#[tokio::test]
async fn wrong_client_secret_is_invalid_client() {
    let provider = OidcProvider::start(OidcOptions::default()).await;
    let tokens = token_client(Duration::from_secs(10));
    let endpoint = Url::parse(provider.token_endpoint()).unwrap();
    let grant = provider.create_grant(BASIC_CLIENT.id, DEFAULT_SCOPE).await;
    let mut wrong = credentials(BASIC_CLIENT, AuthMethod::ClientSecretBasic);
    wrong.client_secret = Some(SecretString::from("not-the-secret"));
    let error = refresh(
        &tokens,
        &endpoint,
        &wrong,
        &SecretString::from(grant.refresh_token.clone()),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind(), FailureKind::InvalidClient, "{error}");
    assert_eq!(error.category(), "InvalidClient");
    assert!(error.to_string().contains("401"), "{error}");
    assert!(!error.to_string().contains(&grant.refresh_token));
}

#[tokio::test]
async fn revoked_or_reused_grants_are_invalid_grant() {
    let provider = OidcProvider::start(OidcOptions::default()).await;
    let tokens = token_client(Duration::from_secs(10));
    let endpoint = Url::parse(provider.token_endpoint()).unwrap();
    let client = credentials(BASIC_CLIENT, AuthMethod::ClientSecretBasic);

    let grant = provider.create_grant(BASIC_CLIENT.id, DEFAULT_SCOPE).await;
    provider.revoke_grant(&grant.grant_id).await;
    let error = refresh(
        &tokens,
        &endpoint,
        &client,
        &SecretString::from(grant.refresh_token),
    )
    .await
    .unwrap_err();
    assert_eq!(
        error.kind(),
        FailureKind::ReauthorizationRequired,
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "token endpoint answered HTTP 400 with OAuth error invalid_grant"
    );

    // Presenting a used refresh token again kills the whole chain, newest token included:
    // the reason the operator must never refresh twice.
    let grant = provider.create_grant(BASIC_CLIENT.id, DEFAULT_SCOPE).await;
    let first = SecretString::from(grant.refresh_token);
    let second = refresh(&tokens, &endpoint, &client, &first)
        .await
        .unwrap()
        .refresh_token
        .unwrap();
    let reuse = refresh(&tokens, &endpoint, &client, &first)
        .await
        .unwrap_err();
    assert_eq!(reuse.kind(), FailureKind::ReauthorizationRequired);
    let newest = refresh(&tokens, &endpoint, &client, &second)
        .await
        .unwrap_err();
    assert_eq!(newest.kind(), FailureKind::ReauthorizationRequired);
}

/// A token endpoint that answers what the test tells it to, and counts requests.
struct FakeEndpoint {
    url: Url,
    hits: Arc<AtomicUsize>,
    _server: tokio::task::JoinHandle<()>,
}

impl FakeEndpoint {
    async fn start<F>(answer: F) -> FakeEndpoint
    where
        F: Fn(usize) -> Response + Clone + Send + Sync + 'static,
    {
        FakeEndpoint::start_delayed(Duration::ZERO, answer).await
    }

    async fn start_delayed<F>(delay: Duration, answer: F) -> FakeEndpoint
    where
        F: Fn(usize) -> Response + Clone + Send + Sync + 'static,
    {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = Router::new().route(
            "/token",
            post(move |_headers: HeaderMap, _body: String| {
                let answer = answer.clone();
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(delay).await;
                    answer(n)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeEndpoint {
            url: Url::parse(&format!("http://{addr}/token")).unwrap(),
            hits,
            _server: server,
        }
    }

    async fn request(
        &self,
        timeout: Duration,
    ) -> Result<oauth_token_operator::oauth::Issued, OAuthError> {
        let client = ClientCredentials {
            method: AuthMethod::ClientSecretBasic,
            client_id: "id".into(),
            client_secret: Some(SecretString::from("secret")),
        };
        let extra = BTreeMap::new();
        token_client(timeout)
            .request(&TokenRequest {
                endpoint: &self.url,
                client: &client,
                grant: GrantRequest::ClientCredentials,
                scopes: &[],
                audience: None,
                extra_parameters: &extra,
            })
            .await
    }
}

fn json(status: StatusCode, body: &'static str) -> Response {
    (status, [("content-type", "application/json")], body).into_response()
}

#[tokio::test]
async fn service_unavailable_with_retry_after_is_throttled() {
    let fake = FakeEndpoint::start(|_| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "17")],
            "busy",
        )
            .into_response()
    })
    .await;
    let error = fake.request(Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(error.kind(), FailureKind::Transient);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(17)));
    assert_eq!(error.category(), "Throttled");
}

#[tokio::test]
async fn too_many_requests_with_retry_after() {
    let fake = FakeEndpoint::start(|_| {
        (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "3")], "").into_response()
    })
    .await;
    let error = fake.request(Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_secs(3)));
}

#[tokio::test]
async fn slow_responses_time_out() {
    let fake = FakeEndpoint::start_delayed(Duration::from_secs(5), |_| {
        json(StatusCode::OK, r#"{"access_token":"late","expires_in":60}"#)
    })
    .await;
    let started = std::time::Instant::now();
    let error = fake.request(Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(error, OAuthError::Timeout(_)), "{error}");
    assert_eq!(error.kind(), FailureKind::Transient);
    assert_eq!(error.presentation(), Presentation::Unknown);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(fake.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn garbage_json_is_an_unreadable_answer() {
    let fake = FakeEndpoint::start(|_| json(StatusCode::OK, "{not json")).await;
    let error = fake.request(Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(error, OAuthError::UnreadableSuccess { status: 200 }),
        "{error}"
    );
    assert_eq!(error.kind(), FailureKind::Transient);
    // It may have carried a rotated refresh token.
    assert_eq!(error.presentation(), Presentation::Unknown);
}

#[tokio::test]
async fn bodies_over_the_limit_are_salvaged_or_lost_when_2xx_and_refused_otherwise() {
    let fake = FakeEndpoint::start(|n| {
        let padding = "x".repeat(1024 * 1024 + 1);
        let (status, body) = match n {
            0 => (StatusCode::OK, format!(r#"{{"access_token":"{padding}"}}"#)),
            1 => (
                StatusCode::OK,
                format!(r#"{{"refresh_token":"r9","access_token":"{padding}"}}"#),
            ),
            _ => (
                StatusCode::BAD_REQUEST,
                format!(r#"{{"error":"invalid_request","error_description":"{padding}"}}"#),
            ),
        };
        (status, [("content-type", "application/json")], body).into_response()
    })
    .await;
    let error = fake.request(Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(error, OAuthError::BodyTooLarge { status: 200, .. }),
        "{error}"
    );
    assert_eq!(error.presentation(), Presentation::Unknown);
    let issued = fake.request(Duration::from_secs(5)).await.unwrap();
    assert_eq!(issued.refresh_token.unwrap().expose_secret(), "r9");
    assert!(issued.access.is_err());
    let error = fake.request(Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(error, OAuthError::BodyTooLarge { status: 400, .. }),
        "{error}"
    );
    assert_eq!(error.presentation(), Presentation::Refused);
    assert_eq!(error.http_status(), Some(400));
}

#[tokio::test]
async fn chunked_bodies_over_the_limit_are_refused() {
    let fake = FakeEndpoint::start(|_| {
        let chunks = (0..2048).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 1024]));
        let body = axum::body::Body::from_stream(futures::stream::iter(chunks));
        (StatusCode::OK, body).into_response()
    })
    .await;
    let error = fake.request(Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(error, OAuthError::BodyTooLarge { status: 200, .. }),
        "{error}"
    );
    assert_eq!(error.presentation(), Presentation::Unknown);
}

/// A 2xx whose connection breaks after `sent` has gone out.
fn broken_after(sent: &'static str) -> Response {
    use futures::StreamExt as _;
    let first = futures::stream::iter([Ok::<_, std::io::Error>(sent.as_bytes().to_vec())]);
    let failure = futures::stream::once(async {
        // Gives the first part time to reach the client before the connection breaks.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Err(std::io::Error::other("connection lost"))
    });
    let body = axum::body::Body::from_stream(first.chain(failure));
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

#[tokio::test]
async fn a_refresh_token_survives_a_connection_broken_after_it() {
    let fake = FakeEndpoint::start(|n| match n {
        0 => broken_after(r#"{"access_token":"a","refresh_token":"r8","expires_in":36"#),
        _ => broken_after(r#"{"access_token":"a","expires_in":3600,"refresh_tok"#),
    })
    .await;
    let issued = fake.request(Duration::from_secs(5)).await.unwrap();
    assert_eq!(issued.refresh_token.unwrap().expose_secret(), "r8");
    assert!(
        matches!(
            issued.access,
            Err(OAuthError::Malformed {
                status: 200,
                problem: "cut short"
            })
        ),
        "{:?}",
        issued.access
    );
    let error = fake.request(Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(error, OAuthError::Transport), "{error}");
    assert_eq!(error.presentation(), Presentation::Unknown);
    assert_eq!(error.http_status(), None);
}

#[tokio::test]
async fn github_form_answers_are_read() {
    let fake = FakeEndpoint::start(|n| {
        let body = match n {
            0 => {
                "access_token=gho_a&expires_in=28800&refresh_token=ghr_r%2B1&refresh_token_expires_in=15811200&scope=&token_type=bearer"
            }
            _ => {
                "error=bad_refresh_token&error_description=The+refresh+token+passed+is+incorrect+or+expired."
            }
        };
        (
            StatusCode::OK,
            [("content-type", "application/x-www-form-urlencoded")],
            body,
        )
            .into_response()
    })
    .await;
    let issued = fake.request(Duration::from_secs(5)).await.unwrap();
    assert_eq!(issued.refresh_token.unwrap().expose_secret(), "ghr_r+1");
    assert_eq!(
        issued.refresh_expires_in,
        Some(Duration::from_secs(15_811_200))
    );
    let access = issued.access.unwrap();
    assert_eq!(access.access_token.expose_secret(), "gho_a");
    assert_eq!(access.token_type, "Bearer");
    assert_eq!(access.expires_in, Some(Duration::from_secs(28_800)));
    // An error answered with 200 rotated nothing.
    let issued = fake.request(Duration::from_secs(5)).await.unwrap();
    assert!(issued.refresh_token.is_none());
    assert!(issued.access.is_err());
}

#[tokio::test]
async fn a_refused_connection_sent_nothing() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let fake = FakeEndpoint {
        url: Url::parse(&format!("http://{addr}/token")).unwrap(),
        hits: Arc::new(AtomicUsize::new(0)),
        _server: tokio::spawn(async {}),
    };
    let error = fake.request(Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(error, OAuthError::Connect), "{error}");
    assert_eq!(error.presentation(), Presentation::NotSent);
}

#[tokio::test]
async fn missing_expires_in_is_not_an_error() {
    let fake = FakeEndpoint::start(|_| {
        json(
            StatusCode::OK,
            r#"{"access_token":"opaque","token_type":"Bearer"}"#,
        )
    })
    .await;
    let issued = fake.request(Duration::from_secs(5)).await.unwrap();
    assert_eq!(issued.access.unwrap().expires_in, None);
}

#[tokio::test]
async fn odd_but_usable_text_plain_answers_are_parsed() {
    let fake = FakeEndpoint::start(|_| {
        (
            StatusCode::OK,
            [("content-type", "text/plain; charset=utf-8")],
            r#"{"access_token":"a","refresh_token":"r2","scope":["read","write"],"expires_in":"3600","token_type":"BEARER","extra":{"x":1}}"#,
        )
            .into_response()
    })
    .await;
    let issued = fake.request(Duration::from_secs(5)).await.unwrap();
    assert_eq!(issued.status, 200);
    assert_eq!(issued.refresh_token.unwrap().expose_secret(), "r2");
    let access = issued.access.unwrap();
    assert_eq!(access.access_token.expose_secret(), "a");
    assert_eq!(access.token_type, "Bearer");
    assert_eq!(access.scope.as_deref(), Some("read write"));
    assert_eq!(access.expires_in, Some(Duration::from_secs(3600)));
}

#[tokio::test]
async fn a_rotated_refresh_token_survives_an_answer_without_access_token() {
    let fake = FakeEndpoint::start(|_| {
        json(
            StatusCode::OK,
            r#"{"refresh_token":"r3","expires_in":1e999}"#,
        )
    })
    .await;
    let issued = fake.request(Duration::from_secs(5)).await.unwrap();
    assert_eq!(issued.refresh_token.unwrap().expose_secret(), "r3");
    let error = issued.access.unwrap_err();
    assert!(
        matches!(error, OAuthError::Malformed { status: 200, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn success_bodies_that_are_neither_objects_nor_forms_are_unreadable() {
    let fake = FakeEndpoint::start(|n| match n {
        0 => json(StatusCode::OK, r#"["access_token"]"#),
        _ => (
            StatusCode::OK,
            [("content-type", "text/html")],
            "<html>ok</html>",
        )
            .into_response(),
    })
    .await;
    for _ in 0..2 {
        let error = fake.request(Duration::from_secs(5)).await.unwrap_err();
        assert!(
            matches!(error, OAuthError::UnreadableSuccess { status: 200 }),
            "{error}"
        );
        assert_eq!(error.presentation(), Presentation::Unknown);
    }
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let fake = FakeEndpoint::start(|_| {
        (
            StatusCode::FOUND,
            [("location", "http://127.0.0.1:1/elsewhere")],
            "",
        )
            .into_response()
    })
    .await;
    let error = fake.request(Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(error, OAuthError::Redirect { status: 302 }),
        "{error}"
    );
    assert_eq!(error.presentation(), Presentation::Refused);
    assert_eq!(fake.hits.load(Ordering::SeqCst), 1);
}
