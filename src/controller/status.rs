//! What a reconcile found, and the status that reports it. Pure: no I/O, time passed in.

use chrono::{DateTime, Utc};

use super::settings;
use super::state::{TokenState, rfc3339};
use crate::api::conditions::{
    self, FALSE, READY, REAUTHORIZATION_REQUIRED, REFRESH_TOKEN_EXPIRING, TRUE, UNKNOWN, reason,
};
use crate::api::{
    DEFAULT_MIN_REFRESH_INTERVAL, DEFAULT_REFRESH_TOKEN_EXPIRY_WARNING, DEFAULT_REFRESH_TOKEN_KEY,
    OAuthToken, OAuthTokenStatus, PendingAuthorization, REFRESH_ANNOTATION,
};
use crate::oauth::{FailureKind, OAuthError};
use crate::schedule::{
    RequestVerdict, expiry_warning_at, parse_duration, refresh_request, truncate_to_seconds,
};

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
    /// `spec.suspend` is true: no token requests; the published token stays until it expires.
    Suspended,
    /// A device authorization waits for a human; `ended` says why the chain ended, when it
    /// did (not at the first authorization). The next poll is at `poll_at`.
    Authorizing {
        pending: PendingAuthorization,
        ended: Option<(&'static str, String)>,
        poll_at: DateTime<Utc>,
    },
    /// A device authorization expired or was denied; a new one starts at `restart_at`, or when
    /// a refresh is asked for. `ended` counts such ends in a row.
    AuthorizationEnded {
        reason: &'static str,
        message: String,
        restart_at: DateTime<Utc>,
        ended: u32,
    },
}

impl Outcome {
    /// The chain this outcome leaves, when one was read.
    pub fn state(&self) -> Option<&TokenState> {
        match self {
            Outcome::Issued { state, .. }
            | Outcome::Waiting { state, .. }
            | Outcome::Failed { state, .. }
            | Outcome::ChainDead { state, .. } => Some(state),
            Outcome::Blocked { .. }
            | Outcome::Superseded
            | Outcome::Deferred { .. }
            | Outcome::Suspended
            | Outcome::Authorizing { .. }
            | Outcome::AuthorizationEnded { .. } => None,
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
        uses_refresh_tokens: uses_refresh_tokens(token),
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
        Outcome::Authorizing { pending, ended, .. } => {
            let message = authorize_message(pending);
            let why = ended
                .as_ref()
                .map_or(reason::AUTHORIZATION_PENDING, |(r, _)| *r);
            let reauthorization = match ended {
                Some((_, ended)) => format!("{ended}. {message}"),
                None => message.clone(),
            };
            set(
                &mut next,
                READY,
                FALSE,
                reason::AUTHORIZATION_PENDING,
                message,
            );
            set(
                &mut next,
                REAUTHORIZATION_REQUIRED,
                TRUE,
                why,
                reauthorization,
            );
            next.authorization = Some(pending.clone());
            next.next_refresh_at = None;
            // failedAttempts counts authorizations that ended in a row (the back-off of the
            // next); failures of the chain before it count no more.
            let after_an_end = ready_reason(previous).is_some_and(|r| {
                r == reason::AUTHORIZATION_PENDING || super::device::ended_reason(&r).is_some()
            });
            if !after_an_end {
                next.failed_attempts = 0;
                next.last_failure_at = None;
            }
        }
        Outcome::AuthorizationEnded {
            reason: why,
            message,
            restart_at,
            ended,
        } => {
            set(&mut next, READY, FALSE, why, message.clone());
            set(
                &mut next,
                REAUTHORIZATION_REQUIRED,
                TRUE,
                why,
                message.clone(),
            );
            if *ended != previous.failed_attempts {
                next.last_failure_at = Some(truncate_to_seconds(now));
            }
            next.failed_attempts = *ended;
            next.next_refresh_at = Some(*restart_at);
        }
        Outcome::Suspended => {
            let published = match next.expires_at {
                Some(at) if at > now => format!(
                    "; the published access token stays in Secret {} until it expires at {}",
                    token.target_secret_name(),
                    rfc3339(at)
                ),
                _ => String::new(),
            };
            set(
                &mut next,
                READY,
                FALSE,
                reason::SUSPENDED,
                format!(
                    "spec.suspend is true: no token requests{published}. Set spec.suspend to false to resume refreshing"
                ),
            );
            next.next_refresh_at = None;
        }
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
                    // Without a refresh token (a device authorization that could not start)
                    // nothing says the grant works.
                    let no_chain = conditions.uses_refresh_tokens && state.refresh_token.is_none();
                    if !no_chain
                        && (*imported
                            || conditions::get(&next.conditions, REAUTHORIZATION_REQUIRED)
                                .is_none())
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
    if conditions.uses_refresh_tokens {
        conditions.refresh_token_expiring(&mut next, expiry_warning(token), token);
    } else {
        // A grant switched to client credentials has no refresh token to warn about.
        next.conditions
            .retain(|c| c.type_ != REFRESH_TOKEN_EXPIRING);
    }
    // A code is shown only while this process polls for it.
    if !matches!(
        outcome,
        Outcome::Authorizing { .. } | Outcome::Deferred { .. }
    ) {
        next.authorization = None;
    }
    next
}

/// What a human does to authorize a pending device authorization.
pub fn authorize_message(pending: &PendingAuthorization) -> String {
    let complete = pending
        .verification_uri_complete
        .as_deref()
        .map(|uri| format!(" (or open {uri}, which carries the code)"))
        .unwrap_or_default();
    format!(
        "Waiting for a human to authorize: open {} and enter the code {}{complete} before {}",
        pending.verification_uri,
        pending.user_code,
        rfc3339(pending.expires_at)
    )
}

/// Whether the OAuthToken's grant keeps a refresh-token chain.
pub fn uses_refresh_tokens(token: &OAuthToken) -> bool {
    token.spec.grant.refresh_token.is_some() || token.spec.grant.device_code.is_some()
}

/// `spec.refreshTokenExpiryWarning`, or its default (a spec where it does not parse is blocked
/// with InvalidSpec anyway).
pub fn expiry_warning(token: &OAuthToken) -> std::time::Duration {
    settings::refresh_token_expiry_warning(&token.spec)
        .or_else(|_| parse_duration(DEFAULT_REFRESH_TOKEN_EXPIRY_WARNING))
        .unwrap_or_default()
}

/// `spec.minRefreshInterval`, or its default (a spec where it does not parse is blocked with
/// InvalidSpec anyway).
pub fn min_refresh_interval(token: &OAuthToken) -> std::time::Duration {
    settings::min_refresh_interval(&token.spec)
        .or_else(|_| parse_duration(DEFAULT_MIN_REFRESH_INTERVAL))
        .unwrap_or_default()
}

/// When the `RefreshTokenExpiring` condition turns True next, if it is False now: a reconcile
/// must look then.
pub fn expiry_warning_begins(
    status: &OAuthTokenStatus,
    warning: std::time::Duration,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let begins = expiry_warning_at(status.refresh_token_expires_at?, warning);
    (begins > now && !conditions::is_true(&status.conditions, REFRESH_TOKEN_EXPIRING))
        .then_some(begins)
}

/// A refresh asked for with the annotation `oauth-token-operator.io/refresh`, not yet
/// acknowledged in status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshRequest {
    pub value: String,
    pub verdict: RequestVerdict,
}

impl RefreshRequest {
    /// The OAuthToken's pending request, if any: an annotation value that status does not
    /// acknowledge yet.
    pub fn pending(
        token: &OAuthToken,
        now: DateTime<Utc>,
        min_interval: std::time::Duration,
    ) -> Option<RefreshRequest> {
        let value = token
            .metadata
            .annotations
            .as_ref()?
            .get(REFRESH_ANNOTATION)?;
        let status = token.status.as_ref();
        if status.and_then(|s| s.last_refresh_request.as_ref()) == Some(value) {
            return None;
        }
        let verdict = refresh_request(
            now,
            status.and_then(|s| s.last_refresh_at),
            status.and_then(|s| s.last_failure_at),
            min_interval,
        );
        Some(RefreshRequest {
            value: value.clone(),
            verdict,
        })
    }

    /// Whether the request asks for a token request now.
    pub fn refreshes(request: Option<&RefreshRequest>) -> bool {
        request.is_some_and(|r| r.verdict == RequestVerdict::Refresh)
    }
}

/// What to tell the requester of `request` after `outcome`, or `None` while the answer is still
/// to come (another process holds the refresh token, the origin's budget put the refresh off,
/// this process does not lead): a later reconcile acknowledges it.
pub fn acknowledgement(
    request: &RefreshRequest,
    outcome: &Outcome,
    previous: &OAuthTokenStatus,
    next: &OAuthTokenStatus,
    min_interval: std::time::Duration,
) -> Option<String> {
    let text = acknowledgement_text(request, outcome, next, min_interval)?;
    // The request was the consumer's word that the published token no longer serves: it ended
    // the wait for an answer that may still have come.
    let ended_wait = request.verdict == RequestVerdict::Refresh
        && ready_reason(previous).as_deref() == Some(reason::REFRESH_UNCONFIRMED)
        && !matches!(outcome, Outcome::Blocked { .. } | Outcome::Suspended);
    Some(if ended_wait {
        format!(
            "{text}. This request ended the wait for the unconfirmed answer to an earlier presentation of the refresh token: a refresh request says the published access token no longer serves"
        )
    } else {
        text
    })
}

fn acknowledgement_text(
    request: &RefreshRequest,
    outcome: &Outcome,
    next: &OAuthTokenStatus,
    min_interval: std::time::Duration,
) -> Option<String> {
    let published = || match next.expires_at {
        Some(at) => format!("the published access token is valid until {}", rfc3339(at)),
        None => "no access token is published".to_string(),
    };
    if let RequestVerdict::TooSoon { last } = request.verdict {
        return Some(format!(
            "Not refreshed: the last token request was at {}, less than spec.minRefreshInterval ({}) before this request; {}",
            rfc3339(last),
            humantime::format_duration(min_interval),
            published()
        ));
    }
    let why_not = |reason: &str, message: &str| format!("Not refreshed ({reason}): {message}");
    match outcome {
        Outcome::Issued { state, .. } => Some(match &state.access {
            Some(access) => format!(
                "Refreshed: a new access token was issued at {}, valid until {}",
                rfc3339(access.issued_at),
                rfc3339(access.expires_at)
            ),
            None => "Refreshed".to_string(),
        }),
        Outcome::Failed {
            error, retry_at, ..
        } => Some(format!(
            "Refresh failed: {error}; {}; next attempt at {}",
            published(),
            rfc3339(*retry_at)
        )),
        Outcome::ChainDead {
            reason, message, ..
        }
        | Outcome::Blocked { reason, message } => Some(why_not(reason, message)),
        Outcome::Suspended => Some(why_not(
            reason::SUSPENDED,
            "spec.suspend is true, so no token is requested",
        )),
        Outcome::Authorizing { pending, .. } => Some(why_not(
            reason::AUTHORIZATION_PENDING,
            &authorize_message(pending),
        )),
        Outcome::AuthorizationEnded {
            reason, message, ..
        } => Some(why_not(reason, message)),
        Outcome::Waiting { .. } | Outcome::Deferred { .. } | Outcome::Superseded => None,
    }
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

    /// `RefreshTokenExpiring`: True from `warning` before the refresh token's expiry.
    fn refresh_token_expiring(
        &self,
        next: &mut OAuthTokenStatus,
        warning: std::time::Duration,
        token: &OAuthToken,
    ) {
        let (status, why, message) = if conditions::is_true(
            &next.conditions,
            REAUTHORIZATION_REQUIRED,
        ) {
            (
                FALSE,
                reason::NOT_APPLICABLE,
                "The chain has ended (see ReauthorizationRequired)".to_string(),
            )
        } else {
            match next.refresh_token_expires_at {
                None => (
                    FALSE,
                    reason::EXPIRY_UNKNOWN,
                    "The provider states no refresh-token lifetime and spec.refreshTokenLifetime is not set".to_string(),
                ),
                Some(at) if at <= self.now => (
                    TRUE,
                    reason::EXPIRED,
                    format!(
                        "The refresh token expired at {}: no refresh succeeds until a human authorizes again ({})",
                        rfc3339(at),
                        how_to_authorize(token)
                    ),
                ),
                Some(at) if expiry_warning_at(at, warning) <= self.now => (
                    TRUE,
                    reason::EXPIRES_SOON,
                    format!(
                        "The refresh token expires at {}, within spec.refreshTokenExpiryWarning ({}), and refreshing has not moved that: authorize again before then ({})",
                        rfc3339(at),
                        humantime::format_duration(warning),
                        how_to_authorize(token)
                    ),
                ),
                Some(at) => (
                    FALSE,
                    reason::NOT_EXPIRING,
                    format!("The refresh token is valid until {}", rfc3339(at)),
                ),
            }
        };
        self.set(next, REFRESH_TOKEN_EXPIRING, status, why, message);
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

/// What a human runs to give this OAuthToken a new refresh token.
pub fn how_to_authorize(token: &OAuthToken) -> String {
    let name = token.metadata.name.as_deref().unwrap_or_default();
    let namespace = token.metadata.namespace.as_deref().unwrap_or_default();
    match &token.spec.grant.refresh_token {
        Some(grant) => format!(
            "kubectl oauthtoken authorize {name} -n {namespace}, or put a new refresh token in Secret {} key {}",
            grant.initial_refresh_token_secret_ref.name,
            grant
                .initial_refresh_token_secret_ref
                .key
                .as_deref()
                .unwrap_or(DEFAULT_REFRESH_TOKEN_KEY)
        ),
        None => format!(
            "kubectl annotate oauthtoken {name} -n {namespace} --overwrite {REFRESH_ANNOTATION}=\"$(date +%s)\" starts a new device authorization"
        ),
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
