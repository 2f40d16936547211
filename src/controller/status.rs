//! What a reconcile found, and the status that reports it. Pure: no I/O, time passed in.

use chrono::{DateTime, Utc};

use super::state::{TokenState, rfc3339};
use crate::api::conditions::{self, FALSE, READY, REAUTHORIZATION_REQUIRED, TRUE, UNKNOWN, reason};
use crate::api::{OAuthToken, OAuthTokenStatus};
use crate::oauth::{FailureKind, OAuthError};
use crate::schedule::truncate_to_seconds;

/// The result of one reconcile, as far as status and Events are concerned.
pub enum Outcome {
    /// A user must fix something before a token can be requested.
    Blocked {
        reason: &'static str,
        message: String,
    },
    /// A token was obtained, persisted and published.
    Issued {
        state: TokenState,
        had_token: bool,
        imported: bool,
    },
    /// Nothing to request yet.
    Waiting {
        state: TokenState,
        until: DateTime<Utc>,
        /// The answer to a presentation of the refresh token is unknown (lost, or another process
        /// presented it and stored nothing yet), and why the operator waits: the published token
        /// may already be invalid.
        unconfirmed: Option<String>,
    },
    /// The token request failed.
    Failed {
        state: TokenState,
        error: OAuthError,
        attempts: u32,
        retry_at: DateTime<Utc>,
        imported: bool,
        /// The answer to an earlier presentation of the same refresh token was lost.
        after_lost_answer: bool,
        /// No answer came: the provider may have rotated.
        lost: bool,
    },
    /// The refresh token must not be presented again: a human must authorize anew. The
    /// published access token stays until it expires.
    ChainDead {
        reason: &'static str,
        message: String,
        state: TokenState,
    },
    /// Another process stored a different refresh token while this one was refreshing; its
    /// answer was discarded. The next reconcile continues from the stored chain.
    Superseded,
    /// A refresh is due, but the token endpoint's origin is out of budget (or paused by a
    /// `Retry-After`): look again at `until`. Status does not change.
    Deferred { until: DateTime<Utc> },
}

impl Outcome {
    /// The chain this outcome leaves, when one was read.
    pub fn state(&self) -> Option<&TokenState> {
        match self {
            Outcome::Issued { state, .. }
            | Outcome::Waiting { state, .. }
            | Outcome::Failed { state, .. }
            | Outcome::ChainDead { state, .. } => Some(state),
            Outcome::Blocked { .. } | Outcome::Superseded | Outcome::Deferred { .. } => None,
        }
    }

    pub fn invalid_spec(message: String) -> Outcome {
        Outcome::Blocked {
            reason: reason::INVALID_SPEC,
            message,
        }
    }

    pub fn conflict(message: String) -> Outcome {
        Outcome::Blocked {
            reason: reason::SECRET_CONFLICT,
            message,
        }
    }
}

/// The status to report for `outcome`, derived from the previous one so that unchanged facts
/// (and condition transition times) stay as they were.
pub fn desired(
    token: &OAuthToken,
    previous: &OAuthTokenStatus,
    outcome: &Outcome,
    now: DateTime<Utc>,
) -> OAuthTokenStatus {
    let conditions = ConditionWriter {
        generation: token.metadata.generation,
        now,
        uses_refresh_tokens: token.spec.grant.refresh_token.is_some(),
    };
    let set =
        |next: &mut OAuthTokenStatus, type_: &str, status: &str, why: &str, message: String| {
            conditions.set(next, type_, status, why, message)
        };
    let authorized = |next: &mut OAuthTokenStatus| conditions.authorized(next);
    let mut next = previous.clone();
    next.observed_generation = token.metadata.generation;
    next.secret_name = Some(token.target_secret_name());

    match outcome {
        Outcome::Blocked { reason, message } => {
            set(&mut next, READY, FALSE, reason, message.clone());
            if conditions::get(&next.conditions, REAUTHORIZATION_REQUIRED).is_none() {
                authorized(&mut next);
            }
            next.next_refresh_at = None;
        }
        Outcome::Issued {
            state, imported, ..
        } => {
            record_token(&mut next, state);
            next.failed_attempts = 0;
            next.last_failure_at = None;
            if *imported {
                next.refresh_token_imported_at = Some(truncate_to_seconds(now));
            }
            conditions.token_valid(&mut next, state);
            if !conditions.uses_refresh_tokens {
                next.request_sha256 = state.request_fingerprint.clone();
            }
        }
        Outcome::Waiting {
            state,
            until,
            unconfirmed: Some(why),
        } => {
            record_token(&mut next, state);
            next.next_refresh_at = Some(*until);
            set(
                &mut next,
                READY,
                UNKNOWN,
                reason::REFRESH_UNCONFIRMED,
                why.clone(),
            );
        }
        Outcome::Waiting {
            state,
            until,
            unconfirmed: None,
        } => {
            if previous.failed_attempts == 0 {
                record_token(&mut next, state);
                if state.valid_access(now).is_some() {
                    conditions.token_valid(&mut next, state);
                }
            } else if state.valid_access(now).is_none()
                && conditions::is_true(&next.conditions, READY)
            {
                set(
                    &mut next,
                    READY,
                    FALSE,
                    reason::REFRESH_FAILING,
                    format!(
                        "The access token expired and the last {} token requests failed",
                        previous.failed_attempts
                    ),
                );
            }
            next.next_refresh_at = Some(*until);
        }
        Outcome::ChainDead {
            reason: why,
            message,
            state,
        } => {
            record_token(&mut next, state);
            next.next_refresh_at = None;
            // The failure that killed the chain said more (an earlier lost answer, say) than a
            // later look at the dead chain can: keep its message.
            let message = match conditions::get(&next.conditions, REAUTHORIZATION_REQUIRED) {
                Some(existing) if existing.status == TRUE && existing.reason == *why => {
                    existing.message.clone()
                }
                _ => message.clone(),
            };
            set(&mut next, READY, FALSE, why, message.clone());
            set(&mut next, REAUTHORIZATION_REQUIRED, TRUE, why, message);
        }
        // Only when to look again changes, and that is not status.
        Outcome::Deferred { .. } => {}
        Outcome::Superseded => {
            set(
                &mut next,
                READY,
                FALSE,
                reason::CHAIN_CONFLICT,
                "Another process stored a different refresh token while this one was refreshing; its answer was discarded and the stored chain is used".to_string(),
            );
        }
        Outcome::Failed {
            state,
            error,
            attempts,
            retry_at,
            imported,
            after_lost_answer,
            lost,
        } => {
            next.failed_attempts = *attempts;
            next.last_failure_at = Some(truncate_to_seconds(now));
            next.next_refresh_at = Some(*retry_at);
            if *imported {
                next.refresh_token_imported_at = Some(truncate_to_seconds(now));
            }
            let still_valid = state.valid_access(now).is_some();
            match error.kind() {
                FailureKind::ReauthorizationRequired => {
                    let lost = if *after_lost_answer {
                        ". The answer to an earlier presentation of this refresh token was lost, so the provider had probably rotated it already"
                    } else {
                        ""
                    };
                    let expired = match state.refresh_token_expires_at {
                        Some(at) if at <= now => format!(
                            ". The refresh token had expired at {} (the provider's stated lifetime or spec.refreshTokenLifetime)",
                            rfc3339(at)
                        ),
                        _ => String::new(),
                    };
                    let message = format!(
                        "{error}{lost}{expired}. A human must authorize again and put the new refresh token in the import Secret"
                    );
                    set(
                        &mut next,
                        READY,
                        FALSE,
                        reason::INVALID_GRANT,
                        message.clone(),
                    );
                    set(
                        &mut next,
                        REAUTHORIZATION_REQUIRED,
                        TRUE,
                        reason::INVALID_GRANT,
                        message,
                    );
                }
                kind => {
                    let ready_reason = match kind {
                        FailureKind::InvalidClient => Some(reason::INVALID_CLIENT),
                        FailureKind::Configuration => Some(reason::PROVIDER_REJECTED),
                        _ if still_valid => None,
                        _ => Some(reason::REFRESH_FAILING),
                    };
                    match ready_reason {
                        // Whether the provider rotated is unknown: some revoke the published
                        // access token the moment they do.
                        None if *lost => set(
                            &mut next,
                            READY,
                            UNKNOWN,
                            reason::REFRESH_UNCONFIRMED,
                            format!(
                                "{error}. The provider may have rotated the refresh token, and some providers revoke the published access token when they do; the refresh token is presented once more at {}",
                                rfc3339(*retry_at)
                            ),
                        ),
                        Some(why) => set(&mut next, READY, FALSE, why, error.to_string()),
                        None => set(
                            &mut next,
                            READY,
                            TRUE,
                            reason::TOKEN_VALID,
                            format!("{}; refreshing failed: {error}", valid_message(state)),
                        ),
                    }
                    if *imported
                        || conditions::get(&next.conditions, REAUTHORIZATION_REQUIRED).is_none()
                    {
                        authorized(&mut next);
                    }
                }
            }
        }
    }
    // The state Secret is the source of truth for the refresh token's expiry (a state without
    // a refresh token, a lost chain's, says nothing about it).
    if let Some(state) = outcome.state().filter(|s| s.refresh_token.is_some()) {
        next.refresh_token_expires_at = state.refresh_token_expires_at;
    }
    next
}

struct ConditionWriter {
    generation: Option<i64>,
    now: DateTime<Utc>,
    uses_refresh_tokens: bool,
}

impl ConditionWriter {
    fn set(
        &self,
        next: &mut OAuthTokenStatus,
        type_: &str,
        status: &str,
        why: &str,
        message: String,
    ) {
        conditions::set(
            &mut next.conditions,
            type_,
            status,
            why,
            message,
            self.generation,
            self.now,
        );
    }

    /// `Ready=True` for a valid published token; the grant evidently works.
    fn token_valid(&self, next: &mut OAuthTokenStatus, state: &TokenState) {
        self.set(next, READY, TRUE, reason::TOKEN_VALID, valid_message(state));
        self.authorized(next);
    }

    /// `ReauthorizationRequired=False`, with a reason that fits the grant.
    fn authorized(&self, next: &mut OAuthTokenStatus) {
        let (why, message) = if self.uses_refresh_tokens {
            (reason::AUTHORIZED, "The provider accepts the refresh token")
        } else {
            (
                reason::NOT_APPLICABLE,
                "The client-credentials grant needs no refresh token",
            )
        };
        self.set(
            next,
            REAUTHORIZATION_REQUIRED,
            FALSE,
            why,
            message.to_string(),
        );
    }
}

fn record_token(status: &mut OAuthTokenStatus, state: &TokenState) {
    if let Some(access) = &state.access {
        status.expires_at = Some(access.expires_at);
        status.last_refresh_at = Some(access.issued_at);
        status.next_refresh_at = Some(access.refresh_at);
    }
}

fn valid_message(state: &TokenState) -> String {
    match &state.access {
        Some(access) => format!("Access token valid until {}", rfc3339(access.expires_at)),
        None => "No access token".to_string(),
    }
}

/// The `Ready` condition's reason, if any.
pub fn ready_reason(status: &OAuthTokenStatus) -> Option<String> {
    conditions::get(&status.conditions, READY).map(|c| c.reason.clone())
}

/// `nextRefreshAt` for messages.
pub fn next_text(status: &OAuthTokenStatus) -> String {
    status
        .next_refresh_at
        .map(rfc3339)
        .unwrap_or_else(|| "(not scheduled)".to_string())
}

/// A JSON merge patch that replaces the whole status; absent fields become `null` and are
/// removed, so nothing stale survives. With `version`, the patch applies only to that
/// resourceVersion of the OAuthToken.
pub fn merge_patch(status: &OAuthTokenStatus, version: Option<&str>) -> serde_json::Value {
    match version {
        Some(version) => {
            serde_json::json!({ "metadata": {"resourceVersion": version}, "status": status })
        }
        None => serde_json::json!({ "status": status }),
    }
}
