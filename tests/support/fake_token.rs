//! An in-process token endpoint that answers from a script, for failures a real authorization
//! server will not produce on demand. It rotates refresh tokens (`rt-1`, `rt-2`, ...) and records
//! every grant it was shown.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

/// What the next token request gets.
#[derive(Clone, Debug)]
pub enum Answer {
    /// A fresh access token and, for the refresh-token grant, a rotated refresh token.
    Issue { expires_in: Option<u64> },
    /// An error status with an optional OAuth error code and `Retry-After`.
    Fail {
        status: u16,
        error: Option<&'static str>,
        retry_after: Option<u64>,
    },
    /// Answer after this delay (for timeouts), then issue.
    Slow(Duration),
    /// Answer 200 with exactly this JSON body.
    Raw(serde_json::Value),
}

#[derive(Default)]
struct State {
    script: VecDeque<Answer>,
    /// `refresh_token` values presented, or `client_credentials`.
    presented: Vec<String>,
    issued: u64,
    default_expires_in: Option<u64>,
}

pub struct FakeTokenEndpoint {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl FakeTokenEndpoint {
    pub async fn start(default_expires_in: Option<u64>) -> FakeTokenEndpoint {
        let state = Arc::new(Mutex::new(State {
            default_expires_in,
            ..State::default()
        }));
        let shared = state.clone();
        let app = Router::new().route(
            "/token",
            post(move |body: String| {
                let state = shared.clone();
                async move { answer(&state, &body).await }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeTokenEndpoint {
            url: format!("http://{addr}/token"),
            state,
        }
    }

    pub fn then(&self, answer: Answer) {
        self.state.lock().unwrap().script.push_back(answer);
    }

    pub fn presented(&self) -> Vec<String> {
        self.state.lock().unwrap().presented.clone()
    }

    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().presented.len()
    }
}

async fn answer(state: &Arc<Mutex<State>>, body: &str) -> Response {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let grant_type = field("grant_type").unwrap_or_default();
    let (next, n, expires_in) = {
        let mut state = state.lock().unwrap();
        state.presented.push(if grant_type == "refresh_token" {
            field("refresh_token").unwrap_or_default()
        } else {
            grant_type.clone()
        });
        let next = state.script.pop_front();
        let default = state.default_expires_in;
        if !matches!(next, Some(Answer::Fail { .. } | Answer::Raw(_))) {
            state.issued += 1;
        }
        (next, state.issued, default)
    };
    let issue = |expires_in: Option<u64>| {
        let mut body = json!({"access_token": format!("at-{n}"), "token_type": "Bearer"});
        if let Some(expires_in) = expires_in {
            body["expires_in"] = json!(expires_in);
        }
        if grant_type == "refresh_token" {
            body["refresh_token"] = json!(format!("rt-{n}"));
        }
        (StatusCode::OK, axum::Json(body)).into_response()
    };
    match next {
        None => issue(expires_in),
        Some(Answer::Issue { expires_in }) => issue(expires_in),
        Some(Answer::Raw(body)) => (StatusCode::OK, axum::Json(body)).into_response(),
        Some(Answer::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            issue(expires_in)
        }
        Some(Answer::Fail {
            status,
            error,
            retry_after,
        }) => {
            let status = StatusCode::from_u16(status).unwrap();
            let body = error
                .map(|e| json!({"error": e, "error_description": "details rt-should-not-leak"}))
                .unwrap_or(json!({}));
            let mut response = (status, axum::Json(body)).into_response();
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", seconds.to_string().parse().unwrap());
            }
            response
        }
    }
}
