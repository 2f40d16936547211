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

use super::chain::{Chain, Committed, ForeignStateSecret, HeldClaim, Sent, Verdict, send_within};
use super::secrets::{self, controlled_by, secret_text};
use super::settings::{self, ClientSource, GrantSettings, Settings};
use super::state::{AccessToken, Binding, TokenState, fingerprint};
use super::status::{self, Outcome};
use super::{Context, Error, MAX_BUDGET_WAIT};
use crate::api::conditions::reason;
use crate::api::{OAuthToken, OAuthTokenStatus};
use crate::oauth::budget::Admission;
use crate::oauth::{ClientCredentials, FailureKind, GrantRequest, OAuthError, TokenRequest, jwt};
use crate::schedule::{self, Decision, FailureClass, Observed, RefreshReason};

/// Longest a reconcile waits for the caches to list before it looks again later.
const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `object` names the OAuthToken (the controller's cached form, or an `OAuthToken`); what the
/// reconcile works on is the newest version the caches know.
pub async fn reconcile<K: Resource>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = object.namespace().ok_or(Error::MissingNamespace)?;
    let name = object.name_any();
    if let Some(scope) = ctx.caches.scope_for(&namespace) {
        // Without every cache listed, "not found" could be wrong. A watch that cannot list
        // (RBAC, a missing CRD) is reported by liveness; this reconcile only gives its slot
        // back and looks again.
        match tokio::time::timeout(CACHE_WAIT, scope.wait_ready()).await {
            Ok(true) => {}
            Ok(false) => return Ok(Action::await_change()),
            Err(_) => return Ok(Action::requeue(CACHE_WAIT)),
        }
    }
    let tokens: Api<OAuthToken> = Api::namespaced(ctx.client.clone(), &namespace);
    // The newest version: the watch cache can lag behind our own status write, and the status
    // holds the failure backoff that must not be skipped.
    let Some(token) = ctx
        .caches
        .token(&tokens, &namespace, &name)
        .await
        .map_err(Error::ReadInputs)?
    else {
        crate::observe::token_deleted(&ctx, &namespace, &name);
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
    let mut next = status::desired(&token, &previous, &outcome, now);
    if let Some(imported) = outcome.state().and_then(|s| s.imported_fingerprint.clone()) {
        next.imported_refresh_token_sha256 = Some(imported);
    }
    if next != previous {
        let written = tokens
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(status::merge_patch(&next)),
            )
            .await
            .map_err(Error::WriteStatus)?;
        ctx.caches.wrote_token(&written);
    }
    // per-token metrics from the new status; when the next reconcile is due.
    let deferred_until = match &outcome {
        Outcome::Deferred { until } => Some(*until),
        _ => None,
    };
    crate::observe::token_status(&ctx, &namespace, &name, &next, deferred_until);
    publish_events(&ctx, &token, &previous, &next, &outcome).await;
    // From the time the requeue is handed over, not from when this reconcile began: a
    // reconcile that took a token request and three writes would otherwise wake that late.
    Ok(requeue_for(&outcome, Utc::now(), (ctx.jitter)()))
}

fn requeue_for(outcome: &Outcome, now: DateTime<Utc>, jitter_unit: f64) -> Action {
    let until = match outcome {
        Outcome::Blocked { .. } | Outcome::ChainDead { .. } => None,
        // Continue from the chain another process stored.
        Outcome::Superseded => return Action::requeue(std::time::Duration::from_secs(1)),
        Outcome::Issued { state, .. } => state.access.as_ref().map(|a| a.refresh_at),
        Outcome::Waiting { until, .. } | Outcome::Deferred { until } => Some(*until),
        Outcome::Failed { retry_at, .. } => Some(*retry_at),
    };
    Action::requeue(schedule::requeue_after(until, now, jitter_unit))
}

struct Run<'a> {
    token: &'a OAuthToken,
    secrets: &'a Api<Secret>,
    ctx: &'a Context,
    now: DateTime<Utc>,
    previous: &'a OAuthTokenStatus,
}

/// What the reconcile found about the inputs, for the refresh step.
struct Inputs<'a> {
    settings: &'a Settings,
    target: Option<&'a Secret>,
    binding: Binding,
    request_fingerprint: String,
    imported: bool,
    /// Which presentation of the refresh token this would be (see `chain::assess`).
    attempt: u32,
}

impl Run<'_> {
    async fn execute(&self) -> Result<Outcome, Error> {
        let fencing = &self.ctx.fencing;
        let caches = &self.ctx.caches;
        let namespace = self.token.namespace().unwrap_or_default();
        let mut chain = match Chain::load(self.secrets, self.token, fencing, caches).await? {
            Ok(chain) => chain,
            Err(ForeignStateSecret) => {
                let state_name = self.token.state_secret_name();
                return Ok(Outcome::conflict(format!(
                    "Secret {state_name} exists and is not controlled by this OAuthToken; the operator keeps the refresh token there, so rename or delete that Secret"
                )));
            }
        };
        // A state obtained earlier whose write failed holds the newest link of the chain: it
        // is written before any spec or conflict check, and the older refresh token is never
        // presented again.
        if let Some(parked) = fencing.take_parked(&self.token.uid().unwrap_or_default())
            && chain.write_parked(parked).await? == Committed::Superseded
        {
            return Ok(Outcome::Superseded);
        }

        let settings = match settings::resolve(self.token, &self.ctx.tokens) {
            Ok(settings) => settings,
            Err(message) => return Ok(Outcome::invalid_spec(message)),
        };
        let target = caches
            .owned_secret(self.secrets, &namespace, &settings.target_secret)
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
        // The client secret itself is read only when a request is made.
        let client = match self.client_credentials(&settings, false).await? {
            Ok(client) => client,
            Err(message) => return Ok(Outcome::invalid_spec(message)),
        };
        let binding = settings.binding(&client.client_id);

        let mut imported = false;
        let mut attempt = 1;
        if let GrantSettings::RefreshToken { import } = &settings.grant {
            // The import Secret is read only when it changed since the last import.
            let unchanged = chain.state.import_secret_version.is_some()
                && caches.user_secret_version(&namespace, &import.secret)
                    == Some(chain.state.import_secret_version.clone());
            let source = if unchanged {
                None
            } else {
                // Read once per change: the state records which version was imported, so the
                // value is not kept in memory.
                caches
                    .user_secret_once(self.secrets, &namespace, &import.secret)
                    .await
                    .map_err(Error::ReadInputs)?
            };
            let offered = source.as_ref().and_then(|s| secret_text(s, &import.key));
            // What was imported last: from the state Secret, or, when that is gone, from status.
            let known = chain
                .state
                .imported_fingerprint
                .clone()
                .or_else(|| self.previous.imported_refresh_token_sha256.clone());
            let state_lost = chain.state.refresh_token.is_none()
                && self.previous.imported_refresh_token_sha256.is_some();
            match offered {
                Some(value) if Some(fingerprint(&value)) != known => {
                    info!(secret = import.secret, "importing a new refresh token");
                    let offered_fingerprint = fingerprint(&value);
                    chain
                        .import(
                            SecretString::from(value),
                            offered_fingerprint,
                            source.as_ref().and_then(|s| s.resource_version()),
                            binding.clone(),
                            // spec.refreshTokenLifetime counts from the import.
                            settings
                                .refresh_token_lifetime
                                .map(|l| schedule::refresh_token_expiry_after(self.now, l)),
                        )
                        .await?;
                    imported = true;
                }
                _ if state_lost => {
                    warn!(
                        "the state Secret is gone and the import Secret holds a used-up refresh token"
                    );
                    self.publish(&settings, target.as_ref(), &chain.state)
                        .await?;
                    return Ok(Outcome::ChainDead {
                        reason: reason::STATE_LOST,
                        message: format!(
                            "The state Secret {} holding the refresh-token chain was deleted; the refresh token in Secret {} was used up long ago and is not presented again. Put a new refresh token in Secret {} key {}",
                            self.token.state_secret_name(),
                            import.secret,
                            import.secret,
                            import.key
                        ),
                        state: chain.state,
                    });
                }
                None if chain.state.refresh_token.is_none() && !unchanged => {
                    return Ok(Outcome::invalid_spec(format!(
                        "waiting for Secret {} with key {} holding the refresh token from the one-time authorization",
                        import.secret, import.key
                    )));
                }
                _ => {}
            }
            match chain.verdict(&binding) {
                Verdict::Usable { attempt: next } => attempt = next,
                Verdict::Claimed { remaining } => {
                    debug!(
                        ?remaining,
                        "another process holds a claim on the refresh token"
                    );
                    self.publish(&settings, target.as_ref(), &chain.state)
                        .await?;
                    // A hand-edited claim may say anything. The wait itself is tracked in
                    // `Fencing`; this is only when to look again, and it must stay a time
                    // status can hold.
                    let look_again = remaining.min(std::time::Duration::from_secs(86_400));
                    let until =
                        self.now + chrono::TimeDelta::from_std(look_again).unwrap_or_default();
                    return Ok(Outcome::Waiting {
                        state: chain.state,
                        until,
                    });
                }
                Verdict::Dead { reason, message } => {
                    self.publish(&settings, target.as_ref(), &chain.state)
                        .await?;
                    return Ok(Outcome::ChainDead {
                        reason,
                        message,
                        state: chain.state,
                    });
                }
            }
        }

        let request_fingerprint = settings.request_fingerprint(&client.client_id, &self.token.spec);
        let observed = Observed {
            now: self.now,
            imported,
            // A state from before request fingerprints were kept adopts the current spec.
            spec_changed: chain.state.access.is_some()
                && chain
                    .state
                    .request_fingerprint
                    .as_ref()
                    .is_some_and(|known| *known != request_fingerprint),
            token_refresh_at: chain.state.access.as_ref().map(|a| a.refresh_at),
            retry_at: (self.previous.failed_attempts > 0)
                .then_some(self.previous.next_refresh_at)
                .flatten(),
        };
        let decision = schedule::decide(&observed);
        debug!(?decision, "refresh decision");
        let inputs = Inputs {
            settings: &settings,
            target: target.as_ref(),
            binding,
            request_fingerprint,
            imported,
            attempt,
        };
        match decision {
            Decision::WaitUntil(until) => {
                self.publish(&settings, target.as_ref(), &chain.state)
                    .await?;
                Ok(Outcome::Waiting {
                    state: chain.state,
                    until,
                })
            }
            Decision::RefreshNow(_) if !fencing.may_refresh() => {
                // Leadership is gone or the process stops: another replica takes over.
                self.publish(&settings, target.as_ref(), &chain.state)
                    .await?;
                Ok(Outcome::Waiting {
                    state: chain.state,
                    until: self.now + chrono::TimeDelta::seconds(5),
                })
            }
            Decision::RefreshNow(reason) => {
                let uid = self.token.uid().unwrap_or_default();
                let admission = self.ctx.budgets.admit(
                    &inputs.binding.origin,
                    &uid,
                    settings.budget,
                    std::time::Instant::now(),
                );
                match admission {
                    Admission::After(wait) => {
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                        self.refresh(&inputs, reason, chain).await
                    }
                    Admission::Deferred { until, paused } => {
                        self.ctx.metrics.count_deferred(paused);
                        debug!(
                            paused,
                            "the token endpoint's budget is used up; refreshing later"
                        );
                        self.publish(&settings, target.as_ref(), &chain.state)
                            .await?;
                        // Spread over a second: the deferred do not all come back at once.
                        let delay = until.saturating_duration_since(std::time::Instant::now())
                            + MAX_BUDGET_WAIT.mul_f64((self.ctx.jitter)());
                        Ok(Outcome::Deferred {
                            until: self.now
                                + chrono::TimeDelta::from_std(delay).unwrap_or_default(),
                        })
                    }
                }
            }
        }
    }

    async fn refresh(
        &self,
        inputs: &Inputs<'_>,
        reason: RefreshReason,
        mut chain: Chain<'_>,
    ) -> Result<Outcome, Error> {
        let spec = &self.token.spec;
        let had_token = chain.state.access.is_some();
        let (grant_token, held) = match &inputs.settings.grant {
            GrantSettings::ClientCredentials => (None, None),
            GrantSettings::RefreshToken { import } => {
                let Some(refresh) = chain.state.refresh_token.clone() else {
                    return Ok(Outcome::invalid_spec(format!(
                        "no refresh token: put one in Secret {} key {}",
                        import.secret, import.key
                    )));
                };
                // The claim's resourceVersion precondition fails if the chain changed since
                // the verdict was reached.
                let held = chain.claim(inputs.attempt).await?;
                (Some(refresh), Some(held))
            }
        };
        let grant = match &grant_token {
            Some(refresh) => GrantRequest::RefreshToken(refresh),
            None => GrantRequest::ClientCredentials,
        };
        let client = match self.client_credentials(inputs.settings, true).await? {
            Ok(client) => client,
            Err(message) => return Ok(Outcome::invalid_spec(message)),
        };
        let request = TokenRequest {
            endpoint: &inputs.settings.endpoint,
            client: &client,
            grant,
            scopes: &spec.scopes,
            audience: spec.audience.as_deref(),
            extra_parameters: &spec.extra_parameters,
        };
        let attempt = held.as_ref().map(HeldClaim::attempt).unwrap_or(1);
        info!(reason = reason.as_str(), attempt, "requesting a token");
        let started = std::time::Instant::now();
        let result = match &held {
            None => self.ctx.tokens.request(&request).await,
            Some(claim) => match send_within(
                claim.answer_deadline(),
                self.ctx.tokens.timeout(),
                self.ctx.tokens.request(&request),
            )
            .await
            {
                Sent::Answered(result) => result,
                Sent::TooLate => Err(OAuthError::Timeout(self.ctx.tokens.timeout())),
                Sent::NotSent => {
                    warn!("the claim would run out before the request could finish; not sending");
                    if let Some(held) = held {
                        chain.release_unsent(held).await;
                    }
                    return Err(Error::StateConflict);
                }
            },
        };
        let elapsed = started.elapsed();
        self.ctx.metrics.observe_request(&result, elapsed);
        let presented = held.as_ref().map(|h| h.fingerprint().to_string());
        let after_lost_answer = attempt > 1;

        let issued = match result {
            Ok(issued) => issued,
            Err(error) => {
                if let Some(held) = held {
                    if error.http_status().is_some() {
                        // A complete answer: the provider did not hand out a new token.
                        let rejected = error.kind() == FailureKind::ReauthorizationRequired;
                        chain.release_answered(held, rejected).await;
                    } else if matches!(error, OAuthError::Connect) {
                        chain.release_unsent(held).await;
                    } else {
                        warn!("no answer arrived; the provider may have rotated the refresh token");
                        chain.release_lost(held).await;
                    }
                }
                return self
                    .failed(inputs, chain.state, error, after_lost_answer)
                    .await;
            }
        };

        // Salvage first: a refresh token in any 2xx answer is persisted before the rest of the
        // answer is judged.
        let mut next = chain.state.clone();
        next.claim = None;
        next.rejected_fingerprint = None;
        if let Some(presented) = &presented {
            next.binding = Some(inputs.binding.clone());
            let rotated = issued
                .refresh_token
                .as_ref()
                .is_some_and(|new| fingerprint(new.expose_secret()) != *presented);
            next.rotates = Some(rotated || next.rotates == Some(true));
            next.refresh_token_expires_at = schedule::refresh_token_expiry(
                issued.requested_at,
                issued.refresh_expires_in,
                inputs.settings.refresh_token_lifetime,
                rotated,
                next.refresh_token_expires_at,
            );
        }
        if let Some(refresh) = issued.refresh_token {
            next.refresh_token = Some(refresh);
        }
        let access_error = match issued.access {
            Ok(grant) => {
                let jwt_exp = jwt::expiry(grant.access_token.expose_secret());
                let (expires_at, source) = schedule::token_expiry(
                    issued.requested_at,
                    grant.expires_in,
                    jwt_exp,
                    inputs.settings.default_lifetime,
                );
                let refresh_at = schedule::refresh_at(
                    issued.requested_at,
                    expires_at,
                    inputs.settings.policy,
                    (self.ctx.jitter)(),
                );
                let refresh_at = schedule::refresh_before_refresh_token_expiry(
                    refresh_at,
                    issued.requested_at,
                    next.refresh_token_expires_at,
                    next.rotates == Some(true),
                    inputs.settings.policy,
                    (self.ctx.jitter)(),
                );
                info!(
                    rotated = next.rotates == Some(true),
                    expiry_source = ?source,
                    %expires_at,
                    %refresh_at,
                    latency_ms = elapsed.as_millis() as u64,
                    "token issued"
                );
                next.access = Some(AccessToken {
                    token: grant.access_token,
                    token_type: grant.token_type,
                    scope: grant.scope,
                    issued_at: schedule::truncate_to_seconds(issued.requested_at),
                    expires_at: schedule::truncate_to_seconds(expires_at),
                    refresh_at,
                });
                next.request_fingerprint = Some(inputs.request_fingerprint.clone());
                None
            }
            Err(error) => Some(error),
        };
        match chain.commit(presented.as_deref(), next).await? {
            Committed::Superseded => return Ok(Outcome::Superseded),
            Committed::Stored | Committed::AlreadyThere => {}
        }
        if let Some(error) = access_error {
            return self.failed(inputs, chain.state, error, false).await;
        }
        self.publish(inputs.settings, inputs.target, &chain.state)
            .await?;
        Ok(Outcome::Issued {
            state: chain.state,
            had_token,
            imported: inputs.imported,
        })
    }

    /// A failed token request: backoff from status, the published token kept while valid.
    async fn failed(
        &self,
        inputs: &Inputs<'_>,
        state: TokenState,
        error: OAuthError,
        after_lost_answer: bool,
    ) -> Result<Outcome, Error> {
        if let OAuthError::Throttled { retry_after, .. } = &error {
            // The provider is overloaded or limits us: every OAuthToken on this origin waits.
            let pause = retry_after.unwrap_or(schedule::TRANSIENT_BACKOFF_BASE);
            self.ctx
                .budgets
                .pause(&inputs.binding.origin, std::time::Instant::now() + pause);
        }
        let attempts = self.previous.failed_attempts.saturating_add(1);
        let class = failure_class(&error);
        let delay =
            schedule::failure_delay(class, attempts, error.retry_after(), (self.ctx.jitter)());
        let retry_at = schedule::truncate_to_seconds(self.now)
            .checked_add_signed(chrono::TimeDelta::from_std(delay).unwrap_or_default())
            .unwrap_or(self.now);
        warn!(
            category = error.category(),
            %error,
            attempts,
            %retry_at,
            "token request failed"
        );
        // The published token stays while it is valid: a failed refresh removes nothing.
        self.publish(inputs.settings, inputs.target, &state).await?;
        Ok(Outcome::Failed {
            state,
            error,
            attempts,
            retry_at,
            imported: inputs.imported,
            after_lost_answer,
        })
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
        let written = secrets::publish_target(
            self.secrets,
            self.token,
            &settings.target_secret,
            target,
            data,
        )
        .await
        .map_err(Error::PublishToken)?;
        if let Some(written) = written {
            self.ctx.caches.wrote_secret(&written);
            info!(
                secret = settings.target_secret,
                "published the access token"
            );
        }
        Ok(())
    }

    /// Reads the client's identity, and its secret when `with_secret` (without it, the
    /// secret's Secret is only checked to exist, from the cache). The inner error is a
    /// user-facing message.
    async fn client_credentials(
        &self,
        settings: &Settings,
        with_secret: bool,
    ) -> Result<Result<ClientCredentials, String>, Error> {
        let ClientSource {
            method,
            client_id,
            id_key,
            secret_key,
        } = &settings.client;
        let namespace = self.token.namespace().unwrap_or_default();
        let mut cached: Option<(String, Option<Arc<Secret>>)> = None;
        let mut read =
            async |reference: &settings::KeyRef| -> Result<Result<String, String>, Error> {
                if cached.as_ref().map(|(n, _)| n) != Some(&reference.secret) {
                    let secret = self
                        .ctx
                        .caches
                        .user_secret(self.secrets, &namespace, &reference.secret)
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
            Some(reference) if !with_secret => {
                let missing = self
                    .ctx
                    .caches
                    .user_secret_version(&namespace, &reference.secret)
                    == Some(None);
                if missing {
                    return Ok(Err(format!("Secret {} not found", reference.secret)));
                }
                None
            }
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
        Outcome::Blocked { reason, message }
        | Outcome::ChainDead {
            reason, message, ..
        } => {
            if previous_reason.as_deref() != Some(*reason) {
                events.push((EventType::Warning, *reason, message.clone()));
            }
        }
        Outcome::Superseded => {
            if previous_reason.as_deref() != Some(reason::CHAIN_CONFLICT) {
                events.push((
                    EventType::Warning,
                    reason::CHAIN_CONFLICT,
                    "Another process stored a different refresh token while this one was refreshing; its answer was discarded".to_string(),
                ));
            }
        }
        Outcome::Waiting { .. } | Outcome::Deferred { .. } => {}
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
        if let Err(error) = ctx.publish_event(&event, &reference).await {
            warn!(%error, reason, "could not publish an Event");
        }
    }
}
