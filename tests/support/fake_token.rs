//! An in-process token endpoint that behaves like a real authorization server where the chain is
//! concerned, plus scripted faults a real server will not produce on demand.
//!
//! Like a real provider it
//! - authenticates the client: `client_secret_basic` (RFC 6749 2.3.1, id and secret
//!   form-urlencoded in the `Authorization` header) or `client_secret_post`; anything else is
//!   401 `invalid_client`, and nothing of the grant is looked at;
//! - knows the refresh tokens it issued, one family per authorization (the imported token, or
//!   one a human authorizes again with [`FakeTokenEndpoint::authorize`]);
//! - rotates on every refresh-token grant: the presented token becomes used, `rt-N` is the new
//!   one (`N` counts the grants that issued tokens, `at-N` is the access token);
//! - detects reuse: a used refresh token presented again revokes its whole family, and from
//!   then on every token of it, the newest included, answers `invalid_grant`; so does a token it
//!   never issued.
//!
//! What a scripted [`Answer`] does to the token state is part of its definition: see each
//! variant. Every request is recorded, and a test can wait for requests to arrive.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use serde_json::json;
use tokio::sync::{Semaphore, watch};

/// How long a test waits for a request before it fails instead of hanging.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(20);

/// What the next token request gets.
#[derive(Clone, Debug)]
pub enum Answer {
    /// The grant is processed as usual (what every request gets when nothing is scripted): the
    /// client is authenticated, a refresh token is rotated or its reuse detected. `expires_in`
    /// replaces the endpoint's default for the access token issued.
    Issue { expires_in: Option<u64> },
    /// This error status, with an optional OAuth error code and `Retry-After`, without
    /// processing anything: no client check, the token state untouched (a proxy, an overloaded
    /// server, or a provider error the test wants exactly).
    Fail {
        status: u16,
        error: Option<&'static str>,
        retry_after: Option<u64>,
    },
    /// 200 with exactly this JSON body, without processing anything: the token state untouched
    /// (a refresh token in the body is not one the provider knows).
    Raw(serde_json::Value),
    /// The grant is processed (a refresh token IS rotated, or its reuse detected and the family
    /// revoked), then the answer goes out only after this delay: a client that timed out never
    /// learns what happened.
    Slow(Duration),
    /// The request is held this long and then failed with 504, never processed: lost before it
    /// reached the provider, nothing rotated.
    Hang(Duration),
    /// The grant is processed, then the answer goes out only when the test calls
    /// [`FakeTokenEndpoint::release`]: the test acts while the request is in flight.
    Held,
}

/// The refresh tokens of one authorization.
#[derive(Debug, Default)]
struct Family {
    /// The one refresh token that is valid now.
    current: Option<String>,
    /// Refresh tokens that were rotated away; presenting one again is reuse.
    used: Vec<String>,
    revoked: bool,
}

impl Family {
    fn knows(&self, token: &str) -> bool {
        self.current.as_deref() == Some(token) || self.used.iter().any(|t| t == token)
    }
}

#[derive(Default)]
struct State {
    client_id: String,
    client_secret: String,
    families: Vec<Family>,
    script: VecDeque<Answer>,
    /// `refresh_token` values presented (or the grant type when there is none), in arrival order,
    /// whatever became of them.
    presented: Vec<String>,
    /// Grants that issued tokens: numbers `at-N` and `rt-N`.
    issued: u64,
    default_expires_in: Option<u64>,
    /// Refresh tokens the provider accepted and rotated away.
    rotated: Vec<String>,
    /// Presentations of a used refresh token (each revoked its family, if it was not already).
    reuses: Vec<String>,
    /// Refresh-token grants answered `invalid_grant` by the provider itself (reuse, a revoked
    /// family, an unknown token); scripted `Fail`s are not counted.
    invalid_grants: usize,
    /// Requests answered 401 `invalid_client`.
    rejected_credentials: usize,
}

/// How to set up a [`FakeTokenEndpoint`].
pub struct Provider {
    client_id: String,
    client_secret: String,
    grants: Vec<String>,
    expires_in: Option<u64>,
}

impl Provider {
    /// A refresh token from an authorization a human made: valid, the first of its family.
    pub fn grant(mut self, refresh_token: &str) -> Provider {
        self.grants.push(refresh_token.to_string());
        self
    }

    /// `expires_in` of the access tokens it issues (none: the answer says nothing).
    pub fn expires_in(mut self, expires_in: Option<u64>) -> Provider {
        self.expires_in = expires_in;
        self
    }

    pub async fn start(self) -> FakeTokenEndpoint {
        let families = self
            .grants
            .into_iter()
            .map(|token| Family {
                current: Some(token),
                ..Family::default()
            })
            .collect();
        let state = Arc::new(Mutex::new(State {
            client_id: self.client_id,
            client_secret: self.client_secret,
            families,
            default_expires_in: self.expires_in,
            ..State::default()
        }));
        let arrivals = Arc::new(watch::channel(0usize).0);
        let held = Arc::new(Semaphore::new(0));
        let shared = Shared {
            state: state.clone(),
            arrivals: arrivals.clone(),
            held: held.clone(),
        };
        let app = Router::new().route(
            "/token",
            post(move |headers: HeaderMap, body: String| {
                let shared = shared.clone();
                async move { shared.answer(&headers, &body).await }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeTokenEndpoint {
            url: format!("http://{addr}/token"),
            state,
            arrivals,
            held,
        }
    }
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<State>>,
    arrivals: Arc<watch::Sender<usize>>,
    held: Arc<Semaphore>,
}

pub struct FakeTokenEndpoint {
    pub url: String,
    state: Arc<Mutex<State>>,
    arrivals: Arc<watch::Sender<usize>>,
    held: Arc<Semaphore>,
}

impl FakeTokenEndpoint {
    /// A provider that knows one confidential client; add grants and start it.
    pub fn provider(client_id: &str, client_secret: &str) -> Provider {
        Provider {
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            grants: Vec::new(),
            expires_in: None,
        }
    }

    /// A human authorized again: `refresh_token` is valid, the first of a new family.
    pub fn authorize(&self, refresh_token: &str) {
        self.state.lock().unwrap().families.push(Family {
            current: Some(refresh_token.to_string()),
            ..Family::default()
        });
    }

    /// What the next token request gets (in order, one each).
    pub fn then(&self, answer: Answer) {
        self.state.lock().unwrap().script.push_back(answer);
    }

    /// Lets one [`Answer::Held`] answer go out.
    pub fn release(&self) {
        self.held.add_permits(1);
    }

    /// Waits until `count` requests have arrived in all (panics after a while instead of hanging).
    pub async fn wait_for_requests(&self, count: usize) {
        let mut arrivals = self.arrivals.subscribe();
        let arrived = tokio::time::timeout(ARRIVAL_TIMEOUT, arrivals.wait_for(|n| *n >= count));
        match arrived.await {
            Ok(Ok(_)) => {}
            _ => panic!(
                "{count} token requests expected, {} arrived",
                *self.arrivals.borrow()
            ),
        }
    }

    /// Every refresh token presented (or grant type, for grants without one), in order.
    pub fn presented(&self) -> Vec<String> {
        self.state.lock().unwrap().presented.clone()
    }

    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().presented.len()
    }

    /// Refresh tokens accepted and rotated away, in order.
    pub fn rotated(&self) -> Vec<String> {
        self.state.lock().unwrap().rotated.clone()
    }

    /// Used refresh tokens presented again (each a reuse that revoked its family).
    pub fn reuses(&self) -> Vec<String> {
        self.state.lock().unwrap().reuses.clone()
    }

    /// Refresh-token grants the provider itself answered `invalid_grant`.
    pub fn invalid_grants(&self) -> usize {
        self.state.lock().unwrap().invalid_grants
    }

    /// Requests answered 401 `invalid_client`.
    pub fn rejected_credentials(&self) -> usize {
        self.state.lock().unwrap().rejected_credentials
    }

    /// Whether the provider would accept `refresh_token` now.
    pub fn accepts(&self, refresh_token: &str) -> bool {
        self.state
            .lock()
            .unwrap()
            .families
            .iter()
            .any(|family| !family.revoked && family.current.as_deref() == Some(refresh_token))
    }
}

/// What processing a grant came to.
enum Processed {
    Issued {
        access_token: String,
        refresh_token: Option<String>,
        expires_in: Option<u64>,
    },
    Error {
        status: StatusCode,
        error: &'static str,
        /// Ask for Basic credentials (the client tried them).
        challenge: bool,
    },
}

impl Shared {
    async fn answer(&self, headers: &HeaderMap, body: &str) -> Response {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        let next = {
            let mut state = self.state.lock().unwrap();
            let presented = field(&form, "refresh_token")
                .or_else(|| field(&form, "grant_type"))
                .unwrap_or_default();
            state.presented.push(presented);
            state.script.pop_front()
        };
        self.arrivals.send_modify(|n| *n += 1);
        match next {
            None => self.process(headers, &form, None).into_response(),
            Some(Answer::Issue { expires_in }) => self
                .process(headers, &form, Some(expires_in))
                .into_response(),
            Some(Answer::Slow(delay)) => {
                let processed = self.process(headers, &form, None);
                tokio::time::sleep(delay).await;
                processed.into_response()
            }
            Some(Answer::Held) => {
                let processed = self.process(headers, &form, None);
                self.held.acquire().await.unwrap().forget();
                processed.into_response()
            }
            Some(Answer::Hang(delay)) => {
                tokio::time::sleep(delay).await;
                StatusCode::GATEWAY_TIMEOUT.into_response()
            }
            Some(Answer::Raw(body)) => (StatusCode::OK, axum::Json(body)).into_response(),
            Some(Answer::Fail {
                status,
                error,
                retry_after,
            }) => {
                let status = StatusCode::from_u16(status).unwrap();
                let mut response = match error {
                    Some(error) => error_response(status, error),
                    None => (status, axum::Json(json!({}))).into_response(),
                };
                if let Some(seconds) = retry_after {
                    response
                        .headers_mut()
                        .insert("retry-after", seconds.to_string().parse().unwrap());
                }
                response
            }
        }
    }

    /// Authenticates the client, then carries out the grant. `expires_in`: a scripted lifetime
    /// instead of the default.
    fn process(
        &self,
        headers: &HeaderMap,
        form: &[(String, String)],
        expires_in: Option<Option<u64>>,
    ) -> Processed {
        let mut state = self.state.lock().unwrap();
        let expires_in = expires_in.unwrap_or(state.default_expires_in);
        if let Err(challenge) = authenticate(&state, headers, form) {
            state.rejected_credentials += 1;
            return Processed::Error {
                status: StatusCode::UNAUTHORIZED,
                error: "invalid_client",
                challenge,
            };
        }
        let invalid_grant = Processed::Error {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_grant",
            challenge: false,
        };
        match field(form, "grant_type").as_deref() {
            Some("refresh_token") => {
                let presented = field(form, "refresh_token").unwrap_or_default();
                let Some(family) = state.families.iter().position(|f| f.knows(&presented)) else {
                    state.invalid_grants += 1;
                    return invalid_grant;
                };
                if state.families[family].revoked {
                    state.invalid_grants += 1;
                    return invalid_grant;
                }
                if state.families[family].current.as_deref() != Some(presented.as_str()) {
                    // A used refresh token again: someone holds a copy. The whole family goes.
                    state.families[family].revoked = true;
                    state.reuses.push(presented);
                    state.invalid_grants += 1;
                    return invalid_grant;
                }
                state.issued += 1;
                let n = state.issued;
                let rotated = format!("rt-{n}");
                let family = &mut state.families[family];
                family.used.push(presented.clone());
                family.current = Some(rotated.clone());
                state.rotated.push(presented);
                Processed::Issued {
                    access_token: format!("at-{n}"),
                    refresh_token: Some(rotated),
                    expires_in,
                }
            }
            Some("client_credentials") => {
                state.issued += 1;
                Processed::Issued {
                    access_token: format!("at-{}", state.issued),
                    refresh_token: None,
                    expires_in,
                }
            }
            _ => Processed::Error {
                status: StatusCode::BAD_REQUEST,
                error: "unsupported_grant_type",
                challenge: false,
            },
        }
    }
}

impl IntoResponse for Processed {
    fn into_response(self) -> Response {
        match self {
            Processed::Issued {
                access_token,
                refresh_token,
                expires_in,
            } => {
                let mut body = json!({"access_token": access_token, "token_type": "Bearer"});
                if let Some(expires_in) = expires_in {
                    body["expires_in"] = json!(expires_in);
                }
                if let Some(refresh_token) = refresh_token {
                    body["refresh_token"] = json!(refresh_token);
                }
                (StatusCode::OK, axum::Json(body)).into_response()
            }
            Processed::Error {
                status,
                error,
                challenge,
            } => {
                let mut response = error_response(status, error);
                if challenge {
                    response
                        .headers_mut()
                        .insert("www-authenticate", "Basic realm=\"fake\"".parse().unwrap());
                }
                response
            }
        }
    }
}

/// An OAuth error answer whose description must never reach status or Events.
fn error_response(status: StatusCode, error: &str) -> Response {
    let body = json!({"error": error, "error_description": "details rt-should-not-leak"});
    (status, axum::Json(body)).into_response()
}

fn field(form: &[(String, String)], name: &str) -> Option<String> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// Whether the request carries exactly one valid set of the client's credentials:
/// `client_secret_basic` or `client_secret_post`. `Err(true)` when Basic was tried.
fn authenticate(state: &State, headers: &HeaderMap, form: &[(String, String)]) -> Result<(), bool> {
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Basic ").map(decode_basic));
    let posted_id = field(form, "client_id");
    let posted_secret = field(form, "client_secret");
    let valid = |id: &str, secret: &str| id == state.client_id && secret == state.client_secret;
    match (basic, posted_secret) {
        // client_secret_basic; a client_id in the body must name the same client.
        (Some(Some(Some((id, secret)))), None) => {
            if valid(&id, &secret) && posted_id.is_none_or(|posted| posted == id) {
                Ok(())
            } else {
                Err(true)
            }
        }
        // client_secret_post.
        (None, Some(secret)) => match posted_id {
            Some(id) if valid(&id, &secret) => Ok(()),
            _ => Err(false),
        },
        // Two methods at once, a malformed header, or no client secret at all (a public
        // client: this provider knows only a confidential one).
        (basic, _) => Err(basic.is_some()),
    }
}

/// `id:secret` of a Basic header, each part form-urldecoded (RFC 6749 2.3.1).
fn decode_basic(encoded: &str) -> Option<(String, String)> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let pair = String::from_utf8(decoded).ok()?;
    let (id, secret) = pair.split_once(':')?;
    let unescape = |part: &str| -> String {
        url::form_urlencoded::parse(format!("x={part}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((unescape(id), unescape(secret)))
}
