//! One reconcile of one OAuthToken: read inputs, ask the pure parts, call the token endpoint,
//! persist the chain, publish the token, report.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};
use tracing::{debug, info, warn};

use super::secrets::{self, controlled_by, secret_text};
use super::settings::{self, ClientSource, GrantSettings, Settings};
use super::state::{AccessToken, TokenState, fingerprint};
use super::status::{self, Outcome};
use super::{Context, Error};
use crate::api::{OAuthToken, OAuthTokenStatus, conditions};
use crate::oauth::{ClientCredentials, FailureKind, GrantRequest, OAuthError, TokenRequest, jwt};
use crate::schedule::{self, Decision, FailureClass, Observed, RefreshReason};

/// How long to wait before looking again at an OAuthToken that a user must fix, in case a watch
/// event for the fix was missed.
const BLOCKED_RECHECK: std::time::Duration = std::time::Duration::from_secs(300);
/// Longest sleep between two looks at one OAuthToken.
const MAX_REQUEUE: std::time::Duration = std::time::Duration::from_secs(3600);

pub async fn reconcile(object: Arc<OAuthToken>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = object.namespace().ok_or(Error::MissingNamespace)?;
    let name = object.name_any();
    let tokens: Api<OAuthToken> = Api::namespaced(ctx.client.clone(), &namespace);
    // Read afresh: the watch cache can lag behind our own status write, and the status holds
    // the failure backoff that must not be skipped.
    let Some(token) = tokens.get_opt(&name).await.map_err(Error::ReadInputs)? else {
        ctx.metrics.forget_token(&namespace, &name);
        return Ok(Action::await_change());
    };
    if token.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = Utc::now();
    let previous = token.status.clone().unwrap_or_default();

    let run = Run {
        token: &token,
        secrets: &secrets,
        ctx: &ctx,
        now,
        previous: &previous,
    };
    let outcome = run.execute().await?;
    let next = status::desired(&token, &previous, &outcome, now);
    if next != previous {
        tokens
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(status::merge_patch(&next)),
            )
            .await
            .map_err(Error::WriteStatus)?;
    }
    ctx.metrics.observe_token(
        &namespace,
        &name,
        conditions::is_true(&next.conditions, conditions::READY),
        next.expires_at.map(|at| at.timestamp()),
    );
    publish_events(&ctx, &token, &previous, &next, &outcome).await;
    Ok(requeue_for(&outcome, now))
}

fn requeue_for(outcome: &Outcome, now: DateTime<Utc>) -> Action {
    let until = match outcome {
        Outcome::Blocked { .. } => return Action::requeue(BLOCKED_RECHECK),
        Outcome::Issued { state, .. } => state.access.as_ref().map(|a| a.refresh_at),
        Outcome::Waiting { until, .. } => Some(*until),
        Outcome::Failed { retry_at, .. } => Some(*retry_at),
    };
    match until {
        Some(at) => {
            let wait = (at - now).to_std().unwrap_or_default();
            // Whole seconds are rounded down in status; never wake up early only to wait again.
            // Long-lived tokens are still looked at hourly: a missed watch event then costs at
            // most an hour, and the runtime's delay queue is never handed years.
            Action::requeue((wait + std::time::Duration::from_millis(500)).min(MAX_REQUEUE))
        }
        None => Action::requeue(BLOCKED_RECHECK),
    }
}

struct Run<'a> {
    token: &'a OAuthToken,
    secrets: &'a Api<Secret>,
    ctx: &'a Context,
    now: DateTime<Utc>,
    previous: &'a OAuthTokenStatus,
}

impl Run<'_> {
    async fn execute(&self) -> Result<Outcome, Error> {
        let settings = match settings::resolve(self.token, &self.ctx.tokens) {
            Ok(settings) => settings,
            Err(message) => return Ok(Outcome::invalid_spec(message)),
        };

        let target = self
            .secrets
            .get_opt(&settings.target_secret)
            .await
            .map_err(Error::ReadInputs)?;
        if let Some(existing) = &target
            && !controlled_by(existing, self.token)
        {
            return Ok(Outcome::conflict(format!(
                "Secret {} exists and is not controlled by this OAuthToken; delete it or choose another spec.secretName",
                settings.target_secret
            )));
        }

        let state_name = self.token.state_secret_name();
        let mut state_secret = self
            .secrets
            .get_opt(&state_name)
            .await
            .map_err(Error::ReadInputs)?;
        if let Some(existing) = &state_secret
            && !controlled_by(existing, self.token)
        {
            return Ok(Outcome::conflict(format!(
                "Secret {state_name} exists and is not controlled by this OAuthToken; the operator keeps the refresh token there, so rename or delete that Secret"
            )));
        }
        let mut state = state_secret
            .as_ref()
            .map(TokenState::from_secret)
            .unwrap_or_default();

        // A token obtained earlier whose write failed is the newest link of the chain: write it
        // before anything else, and never present the older refresh token again.
        if let Some(parked) = self.ctx.take_parked(&self.ctx.key(self.token)) {
            info!("writing a token state whose earlier write failed");
            state = parked;
            state_secret = Some(self.write_state(state_secret, &state).await?);
        }

        let client = match self.client_credentials(&settings).await? {
            Ok(client) => client,
            Err(message) => return Ok(Outcome::invalid_spec(message)),
        };

        let mut imported = false;
        if let GrantSettings::RefreshToken { import } = &settings.grant {
            let source = self
                .secrets
                .get_opt(&import.secret)
                .await
                .map_err(Error::ReadInputs)?;
            let offered = source.as_ref().and_then(|s| secret_text(s, &import.key));
            match offered {
                Some(value) => {
                    let offered_fingerprint = fingerprint(&value);
                    if state.imported_fingerprint.as_deref() != Some(offered_fingerprint.as_str()) {
                        info!(secret = import.secret, "importing a new refresh token");
                        state.refresh_token = Some(SecretString::from(value));
                        state.imported_fingerprint = Some(offered_fingerprint);
                        state_secret = Some(self.write_state(state_secret, &state).await?);
                        imported = true;
                    }
                }
                None if state.refresh_token.is_none() => {
                    return Ok(Outcome::invalid_spec(format!(
                        "waiting for Secret {} with key {} holding the refresh token from the one-time authorization",
                        import.secret, import.key
                    )));
                }
                None => {}
            }
        }

        let observed = Observed {
            now: self.now,
            imported,
            spec_changed: state.access.is_some()
                && self.previous.observed_generation.is_some()
                && self.previous.observed_generation != self.token.metadata.generation,
            token_refresh_at: state.access.as_ref().map(|a| a.refresh_at),
            retry_at: (self.previous.failed_attempts > 0)
                .then_some(self.previous.next_refresh_at)
                .flatten(),
        };
        let decision = schedule::decide(&observed);
        debug!(?decision, "refresh decision");
        match decision {
            Decision::WaitUntil(until) => {
                self.publish(&settings, target.as_ref(), &state).await?;
                Ok(Outcome::Waiting { state, until })
            }
            Decision::RefreshNow(reason) => {
                self.refresh(
                    &settings,
                    &client,
                    reason,
                    state,
                    state_secret,
                    target,
                    imported,
                )
                .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn refresh(
        &self,
        settings: &Settings,
        client: &ClientCredentials,
        reason: RefreshReason,
        state: TokenState,
        state_secret: Option<Secret>,
        target: Option<Secret>,
        imported: bool,
    ) -> Result<Outcome, Error> {
        let grant = match (&settings.grant, &state.refresh_token) {
            (GrantSettings::ClientCredentials, _) => GrantRequest::ClientCredentials,
            (GrantSettings::RefreshToken { .. }, Some(refresh)) => {
                GrantRequest::RefreshToken(refresh)
            }
            (GrantSettings::RefreshToken { import }, None) => {
                return Ok(Outcome::invalid_spec(format!(
                    "no refresh token: put one in Secret {} key {}",
                    import.secret, import.key
                )));
            }
        };
        let spec = &self.token.spec;
        let request = TokenRequest {
            endpoint: &settings.endpoint,
            client,
            grant,
            scopes: &spec.scopes,
            audience: spec.audience.as_deref(),
            extra_parameters: &spec.extra_parameters,
        };
        info!(reason = reason.as_str(), "requesting a token");
        let started = std::time::Instant::now();
        let result = self.ctx.tokens.request(&request).await;
        let elapsed = started.elapsed();
        self.ctx.metrics.observe_request(&result, elapsed);
        match result {
            Ok(issued) => {
                let response = issued.response;
                let jwt_exp = jwt::expiry(response.access_token.expose_secret());
                let (expires_at, source) = schedule::token_expiry(
                    issued.requested_at,
                    response.expires_in,
                    jwt_exp,
                    settings.default_lifetime,
                );
                let refresh_at = schedule::refresh_at(
                    issued.requested_at,
                    expires_at,
                    settings.policy,
                    (self.ctx.jitter)(),
                );
                let had_token = state.access.is_some();
                let rotated = response.refresh_token.is_some();
                let mut next = state;
                if let Some(refresh) = response.refresh_token {
                    next.refresh_token = Some(refresh);
                }
                next.access = Some(AccessToken {
                    token: response.access_token,
                    token_type: response.token_type,
                    scope: response.scope,
                    issued_at: schedule::truncate_to_seconds(issued.requested_at),
                    expires_at: schedule::truncate_to_seconds(expires_at),
                    refresh_at,
                });
                info!(
                    rotated,
                    expiry_source = ?source,
                    %expires_at,
                    %refresh_at,
                    latency_ms = elapsed.as_millis() as u64,
                    "token issued"
                );
                self.write_state(state_secret, &next).await?;
                self.publish(settings, target.as_ref(), &next).await?;
                Ok(Outcome::Issued {
                    state: next,
                    had_token,
                    imported,
                })
            }
            Err(error) => {
                let attempts = self.previous.failed_attempts.saturating_add(1);
                let class = failure_class(&error);
                let delay = schedule::failure_delay(
                    class,
                    attempts,
                    error.retry_after(),
                    (self.ctx.jitter)(),
                );
                let retry_at = schedule::truncate_to_seconds(self.now)
                    + chrono::TimeDelta::from_std(delay).unwrap_or(chrono::TimeDelta::MAX);
                warn!(
                    category = error.category(),
                    %error,
                    attempts,
                    %retry_at,
                    "token request failed"
                );
                // The published token stays while it is valid: a failed refresh removes nothing.
                self.publish(settings, target.as_ref(), &state).await?;
                Ok(Outcome::Failed {
                    state,
                    error,
                    attempts,
                    retry_at,
                    imported,
                })
            }
        }
    }

    /// Writes the state, parking it in memory when the write keeps failing.
    async fn write_state(
        &self,
        current: Option<Secret>,
        state: &TokenState,
    ) -> Result<Secret, Error> {
        match secrets::write_state(self.secrets, self.token, current, state).await {
            Ok(written) => {
                info!(
                    has_refresh_token = state.refresh_token.is_some(),
                    "persisted the token state"
                );
                Ok(written)
            }
            Err(error) => {
                self.ctx.park(self.ctx.key(self.token), state.clone());
                Err(Error::PersistState(error))
            }
        }
    }

    async fn publish(
        &self,
        settings: &Settings,
        target: Option<&Secret>,
        state: &TokenState,
    ) -> Result<(), Error> {
        let Some(access) = state.valid_access(self.now) else {
            return Ok(());
        };
        debug!(expires_at = %access.expires_at, "publishing the access token");
        let Some(data) = secrets::target_data(state, self.token.spec.publish_refresh_token) else {
            return Ok(());
        };
        let wrote = secrets::publish_target(
            self.secrets,
            self.token,
            &settings.target_secret,
            target,
            data,
        )
        .await
        .map_err(Error::PublishToken)?;
        if wrote {
            info!(
                secret = settings.target_secret,
                "published the access token"
            );
        }
        Ok(())
    }

    /// Reads the client's identity. The inner error is a user-facing message.
    async fn client_credentials(
        &self,
        settings: &Settings,
    ) -> Result<Result<ClientCredentials, String>, Error> {
        let ClientSource {
            method,
            client_id,
            id_key,
            secret_key,
        } = &settings.client;
        let mut cached: Option<(String, Option<Secret>)> = None;
        let mut read =
            async |reference: &settings::KeyRef| -> Result<Result<String, String>, Error> {
                if cached.as_ref().map(|(n, _)| n) != Some(&reference.secret) {
                    let secret = self
                        .secrets
                        .get_opt(&reference.secret)
                        .await
                        .map_err(Error::ReadInputs)?;
                    cached = Some((reference.secret.clone(), secret));
                }
                let secret = cached.as_ref().and_then(|(_, s)| s.as_ref());
                Ok(match secret {
                    None => Err(format!("Secret {} not found", reference.secret)),
                    Some(secret) => secret_text(secret, &reference.key).ok_or_else(|| {
                        format!("Secret {} has no key {}", reference.secret, reference.key)
                    }),
                })
            };
        let client_id = match (client_id, id_key) {
            (Some(id), _) => id.clone(),
            (None, Some(reference)) => match read(reference).await? {
                Ok(id) => id,
                Err(message) => return Ok(Err(message)),
            },
            (None, None) => return Ok(Err("no client id configured".to_string())),
        };
        let client_secret = match secret_key {
            Some(reference) => match read(reference).await? {
                Ok(secret) => Some(SecretString::from(secret)),
                Err(message) => return Ok(Err(message)),
            },
            None => None,
        };
        Ok(Ok(ClientCredentials {
            method: *method,
            client_id,
            client_secret,
        }))
    }
}

fn failure_class(error: &OAuthError) -> FailureClass {
    match error.kind() {
        FailureKind::ReauthorizationRequired => FailureClass::ReauthorizationRequired,
        FailureKind::InvalidClient | FailureKind::Configuration => FailureClass::NeedsUserAction,
        FailureKind::Transient => FailureClass::Transient,
    }
}

/// Events mark changes a human may care about, not every retry: the first failure of a streak,
/// a change of failure reason, the first token, a recovery, an import.
async fn publish_events(
    ctx: &Context,
    token: &OAuthToken,
    previous: &OAuthTokenStatus,
    next: &OAuthTokenStatus,
    outcome: &Outcome,
) {
    let previous_reason = status::ready_reason(previous);
    let next_reason = status::ready_reason(next);
    let mut events = Vec::new();
    if matches!(
        outcome,
        Outcome::Issued { imported: true, .. } | Outcome::Failed { imported: true, .. }
    ) {
        events.push((
            EventType::Normal,
            "RefreshTokenImported",
            "Imported a new refresh token from the import Secret".to_string(),
        ));
    }
    match outcome {
        Outcome::Issued { had_token, .. } => {
            if !had_token {
                events.push((
                    EventType::Normal,
                    "TokenIssued",
                    "Obtained the first access token".to_string(),
                ));
            } else if previous.failed_attempts > 0 {
                events.push((
                    EventType::Normal,
                    "Recovered",
                    format!(
                        "Obtained an access token after {} failed attempts",
                        previous.failed_attempts
                    ),
                ));
            }
        }
        Outcome::Failed {
            error, attempts, ..
        } => {
            if *attempts == 1 || previous_reason != next_reason {
                events.push((
                    EventType::Warning,
                    error.category(),
                    format!("{error}; next attempt at {}", status::next_text(next)),
                ));
            }
        }
        Outcome::Blocked { reason, message } => {
            if previous_reason.as_deref() != Some(*reason) {
                events.push((EventType::Warning, *reason, message.clone()));
            }
        }
        Outcome::Waiting { .. } => {}
    }
    let reference = token.object_ref(&());
    for (type_, reason, note) in events {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &reference).await {
            warn!(%error, reason, "could not publish an Event");
        }
    }
}
