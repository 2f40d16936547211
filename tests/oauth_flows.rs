//! The device flow (RFC 8628) and the authorization code flow with PKCE (RFC 7636, RFC 8252)
//! of `oauth_token_operator::oauth`, against a real oidc-provider (tests/oidc-provider) whose
//! pages a test "browser" drives; and the device authorization endpoint's odd answers, against
//! a scripted endpoint.

mod support;

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead as _, BufReader, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oauth_token_operator::oauth::pkce::{self, AuthorizationError, Pkce};
use oauth_token_operator::oauth::{
    AuthMethod, ClientCredentials, ClientOptions, DeviceAuthorization, DeviceAuthorizationRequest,
    DevicePoll, FailureKind, GrantRequest, Issued, OAuthError, Presentation, TokenClient,
    TokenRequest, device_poll,
};
use secrecy::{ExposeSecret, SecretString};
use support::oidc_provider::{
    BASIC_CLIENT, CC_CLIENT, Client, DEFAULT_SCOPE, DEVICE_CODE_GRANT_TYPE, HTTPS_REDIRECT_URI,
    OidcOptions, OidcProvider, PUBLIC_CLIENT,
};
use url::Url;

fn tokens() -> TokenClient {
    TokenClient::new(ClientOptions {
        allow_insecure_http: true,
        ..ClientOptions::default()
    })
    .unwrap()
}

fn credentials(client: Client) -> ClientCredentials {
    ClientCredentials {
        method: match client.auth_method {
            "client_secret_basic" => AuthMethod::ClientSecretBasic,
            "client_secret_post" => AuthMethod::ClientSecretPost,
            _ => AuthMethod::None,
        },
        client_id: client.id.to_owned(),
        client_secret: (!client.secret.is_empty()).then(|| SecretString::from(client.secret)),
    }
}

fn scopes() -> Vec<String> {
    DEFAULT_SCOPE.split(' ').map(str::to_owned).collect()
}

/// Fails if any of `secrets` shows in `error`'s message or Debug output.
fn assert_hides(error: &dyn std::fmt::Debug, message: &str, secrets: &[&str]) {
    let debug = format!("{error:?}");
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        assert!(
            !message.contains(secret),
            "message leaks a secret: {message}"
        );
        assert!(!debug.contains(secret), "Debug leaks a secret: {debug}");
    }
}

async fn device_authorization(op: &OidcProvider, client: Client) -> DeviceAuthorization {
    let endpoint = Url::parse(op.device_authorization_endpoint()).unwrap();
    let credentials = credentials(client);
    let scopes = scopes();
    let extra = BTreeMap::new();
    tokens()
        .device_authorization(&DeviceAuthorizationRequest {
            endpoint: &endpoint,
            client: &credentials,
            scopes: &scopes,
            audience: None,
            extra_parameters: &extra,
        })
        .await
        .unwrap()
}

async fn token_request(
    op: &OidcProvider,
    client: Client,
    grant: GrantRequest<'_>,
) -> Result<Issued, OAuthError> {
    let endpoint = Url::parse(op.token_endpoint()).unwrap();
    let credentials = credentials(client);
    let extra = BTreeMap::new();
    tokens()
        .request(&TokenRequest {
            endpoint: &endpoint,
            client: &credentials,
            grant,
            scopes: &[],
            audience: None,
            extra_parameters: &extra,
        })
        .await
}

async fn poll(
    op: &OidcProvider,
    client: Client,
    authorization: &DeviceAuthorization,
) -> Result<Issued, OAuthError> {
    token_request(
        op,
        client,
        GrantRequest::DeviceCode(&authorization.device_code),
    )
    .await
}

/// A poll that fails; checks that its error names no secret and is a complete refusal.
async fn failed_poll(
    op: &OidcProvider,
    client: Client,
    authorization: &DeviceAuthorization,
) -> OAuthError {
    let error = poll(op, client, authorization).await.unwrap_err();
    assert_hides(
        &error,
        &error.to_string(),
        &[authorization.device_code.expose_secret(), client.secret],
    );
    assert_eq!(error.presentation(), Presentation::Refused, "{error}");
    error
}

/// Refreshes with `refresh_token`; returns the rotated one.
async fn refresh(op: &OidcProvider, client: Client, refresh_token: &SecretString) -> SecretString {
    let issued = token_request(op, client, GrantRequest::RefreshToken(refresh_token))
        .await
        .unwrap();
    assert!(issued.access.is_ok(), "{:?}", issued.access);
    let rotated = issued.refresh_token.expect("a rotated refresh token");
    assert_ne!(rotated.expose_secret(), refresh_token.expose_secret());
    rotated
}

/// Device authorization, `authorization_pending` while nobody approved, approval, a poll that
/// issues access and refresh token, and that refresh token refreshing and rotating: for a
/// confidential (Basic) and a public client.
#[tokio::test]
async fn device_flow_pending_then_approved_then_refreshed() {
    let op = OidcProvider::start(OidcOptions::default()).await;
    for client in [BASIC_CLIENT, PUBLIC_CLIENT] {
        op.reset_stats().await;
        let authorization = device_authorization(&op, client).await;
        assert!(!authorization.user_code.is_empty());
        assert_eq!(authorization.verification_uri, op.verification_uri());
        assert!(
            authorization
                .verification_uri_complete
                .as_deref()
                .is_some_and(|u| u.contains(&authorization.user_code))
        );
        assert_eq!(authorization.expires_in, Duration::from_secs(600));
        // oidc-provider sends no interval: RFC 8628's default applies.
        assert_eq!(authorization.interval, Duration::from_secs(5));
        let debug = format!("{authorization:?}");
        assert!(!debug.contains(authorization.device_code.expose_secret()));

        for _ in 0..2 {
            let error = failed_poll(&op, client, &authorization).await;
            assert_eq!(device_poll(&error), DevicePoll::Pending, "{error}");
            assert_eq!(error.kind(), FailureKind::Transient);
            assert_eq!(error.category(), "AuthorizationPending");
        }

        op.approve_device(&authorization.user_code).await;
        let issued = poll(&op, client, &authorization).await.unwrap();
        let access = issued.access.as_ref().expect("an access token");
        assert!(!access.access_token.expose_secret().is_empty());
        assert_eq!(access.token_type, "Bearer");
        let refresh_token = issued.refresh_token.clone().expect("a refresh token");
        assert_hides(
            &issued,
            "",
            &[
                refresh_token.expose_secret(),
                access.access_token.expose_secret(),
            ],
        );

        let rotated = refresh(&op, client, &refresh_token).await;
        let newest = refresh(&op, client, &rotated).await;

        // The device code is single use; presented again, oidc-provider takes it for a
        // stolen code and revokes the grant: the newest refresh token dies with it.
        let error = failed_poll(&op, client, &authorization).await;
        assert_eq!(device_poll(&error), DevicePoll::Failed, "{error}");
        assert_eq!(
            error.kind(),
            FailureKind::ReauthorizationRequired,
            "{error}"
        );
        let error = token_request(&op, client, GrantRequest::RefreshToken(&newest))
            .await
            .unwrap_err();
        assert_eq!(
            error.kind(),
            FailureKind::ReauthorizationRequired,
            "{error}"
        );

        let stats = op.stats().await;
        assert_eq!(stats.device_authorizations, 1);
        assert_eq!(stats.grant_type(DEVICE_CODE_GRANT_TYPE), 4);
        assert_eq!(stats.error("authorization_pending"), 2);
        assert_eq!(stats.grant_type("refresh_token"), 3);
        assert_eq!(stats.error("invalid_grant"), 2);
        assert_eq!(stats.successes, 3);
        assert_eq!(stats.client(client.id), 7);
    }
}

/// oidc-provider never answers `slow_down` by itself (it does not enforce the interval): the
/// harness's fault knob makes the next polls answer it, and only polls. `slow_down` is told
/// apart from `authorization_pending` and is transient.
#[tokio::test]
async fn slow_down_is_classified() {
    let op = OidcProvider::start(OidcOptions::default()).await;
    let authorization = device_authorization(&op, BASIC_CLIENT).await;
    let grant = op.create_grant(BASIC_CLIENT.id, DEFAULT_SCOPE).await;
    op.slow_down_next_device_polls(2).await;

    // A refresh passes the device poll faults by.
    refresh(
        &op,
        BASIC_CLIENT,
        &SecretString::from(grant.refresh_token.clone()),
    )
    .await;

    for _ in 0..2 {
        let error = failed_poll(&op, BASIC_CLIENT, &authorization).await;
        assert_eq!(device_poll(&error), DevicePoll::SlowDown, "{error}");
        assert_eq!(error.kind(), FailureKind::Transient);
        assert_eq!(error.category(), "SlowDown");
    }
    let error = failed_poll(&op, BASIC_CLIENT, &authorization).await;
    assert_eq!(device_poll(&error), DevicePoll::Pending, "{error}");

    let stats = op.stats().await;
    assert_eq!(stats.faults_injected, 2);
    assert_eq!(stats.error("slow_down"), 2);
}

/// A device code that outlived its lifetime: `expired_token`, i.e. `DevicePoll::Expired`, not a
/// dead refresh token.
#[tokio::test]
async fn an_expired_device_code_is_expired() {
    let op = OidcProvider::start(OidcOptions {
        device_code_ttl_secs: 1,
        ..OidcOptions::default()
    })
    .await;
    let authorization = device_authorization(&op, PUBLIC_CLIENT).await;
    assert_eq!(authorization.expires_in, Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let error = failed_poll(&op, PUBLIC_CLIENT, &authorization).await;
    assert_eq!(device_poll(&error), DevicePoll::Expired, "{error}");
    assert_eq!(error.category(), "DeviceCodeExpired");
    assert_ne!(error.kind(), FailureKind::ReauthorizationRequired);
}

/// The user denies on the consent page: `access_denied`, i.e. `DevicePoll::Denied`, not a dead
/// refresh token.
#[tokio::test]
async fn a_denied_device_code_is_denied() {
    let op = OidcProvider::start(OidcOptions::default()).await;
    let authorization = device_authorization(&op, BASIC_CLIENT).await;
    op.deny_device(&authorization.user_code).await;
    let error = failed_poll(&op, BASIC_CLIENT, &authorization).await;
    assert_eq!(device_poll(&error), DevicePoll::Denied, "{error}");
    assert_eq!(error.category(), "AccessDenied");
    assert_ne!(error.kind(), FailureKind::ReauthorizationRequired);
}

/// The provider's refusals of a device authorization request are classified as at the token
/// endpoint: a wrong secret is InvalidClient, an unknown scope is a configuration problem.
#[tokio::test]
async fn device_authorization_refusals() {
    let op = OidcProvider::start(OidcOptions::default()).await;
    let endpoint = Url::parse(op.device_authorization_endpoint()).unwrap();
    let extra = BTreeMap::new();
    let wrong = ClientCredentials {
        client_secret: Some(SecretString::from("wrong-secret-0123456789")),
        ..credentials(BASIC_CLIENT)
    };
    let scopes = scopes();
    let error = tokens()
        .device_authorization(&DeviceAuthorizationRequest {
            endpoint: &endpoint,
            client: &wrong,
            scopes: &scopes,
            audience: None,
            extra_parameters: &extra,
        })
        .await
        .unwrap_err();
    assert_eq!(error.kind(), FailureKind::InvalidClient, "{error}");
    assert_hides(&error, &error.to_string(), &["wrong-secret-0123456789"]);

    // A client that may not use the device flow: oidc-provider says invalid_request (not
    // unauthorized_client), a configuration problem either way.
    let cc = credentials(CC_CLIENT);
    let error = tokens()
        .device_authorization(&DeviceAuthorizationRequest {
            endpoint: &endpoint,
            client: &cc,
            scopes: &[],
            audience: None,
            extra_parameters: &extra,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&error, OAuthError::Rejected { status: 400, code } if code.as_str() == "invalid_request"),
        "{error:?}"
    );
    assert_eq!(error.kind(), FailureKind::Configuration);
    assert_hides(&error, &error.to_string(), &[CC_CLIENT.secret]);
}

/// A one-shot loopback HTTP server: answers the first request and hands back its target.
fn loopback_listener() -> (u16, std::sync::mpsc::Receiver<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let target = line.split(' ').nth(1).unwrap_or_default().to_owned();
        let mut stream = reader.into_inner();
        let body = "You may close this window.";
        write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let _ = tx.send(target);
    });
    (port, rx)
}

fn authorization_url(
    op: &OidcProvider,
    client: Client,
    redirect_uri: &str,
    state: &str,
    pkce: &Pkce,
) -> Url {
    pkce::authorization_url(
        &Url::parse(op.authorization_endpoint()).unwrap(),
        client.id,
        redirect_uri,
        &scopes(),
        state,
        pkce,
        &BTreeMap::new(),
    )
}

async fn exchange(
    op: &OidcProvider,
    client: Client,
    code: &SecretString,
    redirect_uri: &str,
    verifier: &SecretString,
) -> Result<Issued, OAuthError> {
    token_request(
        op,
        client,
        GrantRequest::AuthorizationCode {
            code,
            redirect_uri,
            code_verifier: verifier,
        },
    )
    .await
}

/// The loopback flow of a CLI: a redirect URI on a random port of 127.0.0.1 (registered
/// without a port), the browser sent there, the code read from the request that arrives,
/// exchanged with its verifier; the refresh token then refreshes. A code is single use.
#[tokio::test]
async fn authorization_code_with_pkce_over_a_loopback_redirect() {
    let op = OidcProvider::start(OidcOptions::default()).await;
    for client in [PUBLIC_CLIENT, BASIC_CLIENT] {
        let (port, requests) = loopback_listener();
        let redirect_uri = format!("http://127.0.0.1:{port}/callback");
        let pkce = Pkce::new();
        let state = pkce::new_state();
        let url = authorization_url(&op, client, &redirect_uri, &state, &pkce);
        assert!(!url.as_str().contains(pkce.verifier.expose_secret()));

        let location = op.browse_authorization(url.as_str()).await;
        assert_eq!(location.port(), Some(port), "{location}");
        assert_eq!(location.path(), "/callback");
        // What the browser does next: the loopback listener gets the code.
        let answer = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(location.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 200);
        let target = requests.recv_timeout(Duration::from_secs(10)).unwrap();
        let arrived = Url::parse(&format!("http://127.0.0.1:{port}"))
            .unwrap()
            .join(&target)
            .unwrap();
        let code = pkce::code_from_redirect(&arrived, &state).unwrap();

        let issued = exchange(&op, client, &code, &redirect_uri, &pkce.verifier)
            .await
            .unwrap();
        assert!(issued.access.is_ok(), "{:?}", issued.access);
        let refresh_token = issued.refresh_token.expect("a refresh token");
        refresh(&op, client, &refresh_token).await;

        let error = exchange(&op, client, &code, &redirect_uri, &pkce.verifier)
            .await
            .unwrap_err();
        assert_eq!(
            error.kind(),
            FailureKind::ReauthorizationRequired,
            "{error}"
        );
        assert_hides(
            &error,
            &error.to_string(),
            &[
                code.expose_secret(),
                pkce.verifier.expose_secret(),
                client.secret,
            ],
        );
    }
}

/// "Paste the URL you were sent to": the registered HTTPS redirect is never fetched, its
/// Location is read. A redirect with another state is refused without echoing the code; the
/// right one gives a code that a confidential client exchanges.
#[tokio::test]
async fn authorization_code_with_pkce_over_a_pasted_https_redirect() {
    let op = OidcProvider::start(OidcOptions::default()).await;
    let pkce = Pkce::new();
    let state = pkce::new_state();
    let url = authorization_url(&op, BASIC_CLIENT, HTTPS_REDIRECT_URI, &state, &pkce);
    let location = op.browse_authorization(url.as_str()).await;
    assert!(
        location.as_str().starts_with(HTTPS_REDIRECT_URI),
        "{location}"
    );
    let sent_code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("a code in the redirect");

    let error = pkce::code_from_redirect(&location, &pkce::new_state()).unwrap_err();
    assert_eq!(error, AuthorizationError::StateMismatch);
    assert_hides(&error, &error.to_string(), &[&sent_code, &state]);

    let code = pkce::code_from_redirect(&location, &state).unwrap();
    assert_eq!(code.expose_secret(), sent_code);
    let issued = exchange(&op, BASIC_CLIENT, &code, HTTPS_REDIRECT_URI, &pkce.verifier)
        .await
        .unwrap();
    assert!(issued.access.is_ok());
    assert!(issued.refresh_token.is_some());
}

/// A code presented with another verifier is refused by the provider (RFC 7636 4.6), and the
/// error names neither code nor verifier.
#[tokio::test]
async fn a_wrong_verifier_is_refused_by_the_provider() {
    let op = OidcProvider::start(OidcOptions::default()).await;
    for client in [PUBLIC_CLIENT, BASIC_CLIENT] {
        let pkce = Pkce::new();
        let state = pkce::new_state();
        let url = authorization_url(&op, client, HTTPS_REDIRECT_URI, &state, &pkce);
        let location = op.browse_authorization(url.as_str()).await;
        let code = pkce::code_from_redirect(&location, &state).unwrap();
        let other = Pkce::new();
        let error = exchange(&op, client, &code, HTTPS_REDIRECT_URI, &other.verifier)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, OAuthError::Rejected { status: 400, code } if code.as_str() == "invalid_grant"),
            "{error:?}"
        );
        assert_eq!(error.presentation(), Presentation::Refused);
        assert_hides(
            &error,
            &error.to_string(),
            &[
                code.expose_secret(),
                other.verifier.expose_secret(),
                pkce.verifier.expose_secret(),
                client.secret,
            ],
        );
    }
}

/// The user denies on the consent page: the redirect carries `access_denied`, read as the
/// provider's error.
#[tokio::test]
async fn a_denied_authorization_is_the_provider_s_access_denied() {
    let op = OidcProvider::start(OidcOptions::default()).await;
    let pkce = Pkce::new();
    let state = pkce::new_state();
    let url = authorization_url(&op, PUBLIC_CLIENT, HTTPS_REDIRECT_URI, &state, &pkce);
    let location = op.deny_authorization(url.as_str()).await;
    let error = pkce::code_from_redirect(&location, &state).unwrap_err();
    assert!(error.is_access_denied(), "{error:?}");
    assert_eq!(
        error.to_string(),
        "the authorization server answered with OAuth error access_denied"
    );
}

// ---------------------------------------------------------------------------------------------
// Odd device authorization answers, from a scripted endpoint.
// ---------------------------------------------------------------------------------------------

/// A device authorization endpoint that answers each request with the next scripted
/// (status, body).
async fn scripted(answers: Vec<(u16, Vec<u8>)>) -> Url {
    use axum::routing::post;
    let queue = Arc::new(Mutex::new(VecDeque::from(answers)));
    let app = axum::Router::new().route(
        "/device",
        post(move || {
            let queue = queue.clone();
            async move {
                let (status, body) = queue.lock().unwrap().pop_front().unwrap_or((500, vec![]));
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Url::parse(&format!("http://{addr}/device")).unwrap()
}

/// Missing fields, wrong types, huge numbers, non-JSON, a 4xx with an OAuth error body, a 429
/// and an oversized body: each is an error of the right kind, never a panic, and none repeats
/// the device code or the client secret. A huge lifetime or interval is held to its bound.
#[tokio::test]
async fn odd_device_authorization_answers() {
    const CODE: &str = "DEVICE-CODE-SECRET";
    const SECRET: &str = "client-secret-0123456789";
    let good = |extra: &str| {
        format!(
            r#"{{"device_code":"{CODE}","user_code":"WDJB-MJHT","verification_uri":"https://idp.test/device"{extra}}}"#
        )
        .into_bytes()
    };
    let huge = format!(
        r#"{{"device_code":"{CODE}","pad":"{}"}}"#,
        "x".repeat(2 << 20)
    );
    type Check = fn(&OAuthError) -> bool;
    let malformed: Check = |e| matches!(e, OAuthError::Malformed { status: 200, .. });
    let cases: Vec<((u16, Vec<u8>), Check)> = vec![
        ((200, good("")), malformed),
        ((200, good(r#","expires_in":"never""#)), malformed),
        ((200, good(r#","expires_in":-5"#)), malformed),
        (
            (
                200,
                format!(r#"{{"device_code":["{CODE}"],"user_code":"u"}}"#).into_bytes(),
            ),
            malformed,
        ),
        ((200, format!("device_code={CODE}").into_bytes()), malformed),
        ((200, b"\xff\xfe\x00".to_vec()), malformed),
        ((200, Vec::new()), malformed),
        (
            (200, format!(r#"{{"device_code":"{CODE}""#).into_bytes()),
            malformed,
        ),
        (
            (
                400,
                format!(r#"{{"error":"invalid_scope","error_description":"{CODE}"}}"#).into_bytes(),
            ),
            |e| {
                matches!(e, OAuthError::Rejected { status: 400, code } if code.as_str() == "invalid_scope")
                    && e.kind() == FailureKind::Configuration
            },
        ),
        ((401, br#"{"error":"invalid_client"}"#.to_vec()), |e| {
            e.kind() == FailureKind::InvalidClient
        }),
        ((429, b"slow".to_vec()), |e| {
            matches!(e, OAuthError::Throttled { status: 429, .. })
        }),
        ((500, b"<html>oops</html>".to_vec()), |e| {
            matches!(e, OAuthError::UnexpectedStatus { status: 500 })
        }),
        ((200, huge.clone().into_bytes()), |e| {
            matches!(e, OAuthError::BodyTooLarge { status: 200, .. })
        }),
        ((400, huge.into_bytes()), |e| {
            matches!(e, OAuthError::BodyTooLarge { status: 400, .. })
        }),
    ];
    let endpoint = scripted(cases.iter().map(|(answer, _)| answer.clone()).collect()).await;
    let client = ClientCredentials {
        method: AuthMethod::ClientSecretPost,
        client_id: "cli".to_owned(),
        client_secret: Some(SecretString::from(SECRET)),
    };
    let extra = BTreeMap::new();
    let tokens = tokens();
    for (index, ((status, _), check)) in cases.iter().enumerate() {
        let error = tokens
            .device_authorization(&DeviceAuthorizationRequest {
                endpoint: &endpoint,
                client: &client,
                scopes: &[],
                audience: None,
                extra_parameters: &extra,
            })
            .await
            .unwrap_err();
        assert!(check(&error), "case {index} (HTTP {status}): {error:?}");
        assert_hides(&error, &error.to_string(), &[CODE, SECRET]);
    }

    // Huge numbers are held to their bounds; 1e999999 is not even a finite f64.
    let endpoint = scripted(vec![(
        200,
        good(r#","expires_in":1e999999,"interval":18446744073709551616"#),
    )])
    .await;
    let authorization = tokens
        .device_authorization(&DeviceAuthorizationRequest {
            endpoint: &endpoint,
            client: &client,
            scopes: &[],
            audience: None,
            extra_parameters: &extra,
        })
        .await
        .unwrap();
    assert_eq!(authorization.expires_in, Duration::from_secs(24 * 60 * 60));
    assert_eq!(authorization.interval, Duration::from_secs(5 * 60));
    assert_eq!(authorization.device_code.expose_secret(), CODE);
}
