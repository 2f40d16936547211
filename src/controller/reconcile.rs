//! One reconcile of one OAuthToken: load its inputs (from the caches), let the pure parts decide
//! (the schedule; for refresh tokens the chain protocol), act (the token request, the state
//! Secret through the chain module, the token Secret), then report (status, Events).

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};
use tracing::{debug, info, warn};

use super::chain::protocol::{Answer, Done, Loaded, Offer, Record};
use super::chain::{self, ChainStore, Ended, ForeignStateSecret, Sent, send_within};
use super::device::Redeemed;
use super::secrets::{self, controlled_by, secret_text};
use super::settings::{self, ClientSource, GrantSettings, Settings};
use super::state::{AccessToken, Binding, TokenState, fingerprint, rfc3339};
use super::status::{self, Outcome, RefreshRequest};
use super::{Context, Error, MAX_BUDGET_WAIT};
use crate::api::conditions::{self, REFRESH_TOKEN_EXPIRING, reason};
use crate::api::{OAuthToken, OAuthTokenStatus};
use crate::oauth::budget::Admission;
use crate::oauth::{
    AccessGrant, ClientCredentials, FailureKind, GrantRequest, Issued, OAuthError, Presentation,
    TokenRequest, jwt,
};
use crate::schedule::{self, Decision, FailureClass, Observed};

/// Longest a reconcile waits for the caches to list before it looks again later.
const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest wait a status may announce: a hand-edited claim may say anything.
const LONGEST_WAIT: std::time::Duration = std::time::Duration::from_secs(86_400);
/// How soon a new refresh token kept in memory is tried again.
const PARKED_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

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

    let min_interval = status::min_refresh_interval(&token);
    let run = Run {
        token: &token,
        secrets: &secrets,
        ctx: &ctx,
        now,
        previous: &previous,
        recorded: Mutex::default(),
        request: RefreshRequest::pending(&token, now, min_interval),
        device_authorized: Default::default(),
    };
    let outcome = run.execute().await?;
    let mut next = status::desired(&token, &previous, &outcome, now);
    // A refresh asked for is acknowledged once its answer is known.
    if let Some(request) = &run.request
        && let Some(result) =
            status::acknowledgement(request, &outcome, &previous, &next, min_interval)
    {
        info!(request = request.value, result, "refresh request handled");
        next.last_refresh_request = Some(request.value.clone());
        next.last_refresh_request_result = Some(result);
    }
    // What was imported last never goes back: the state Secret's word, else what this
    // reconcile recorded before presenting it, else what status said.
    let recorded = run
        .recorded
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let version = recorded
        .as_ref()
        .map_or_else(|| token.resource_version(), |r| r.version.clone());
    if let Some(imported) = outcome
        .state()
        .and_then(|s| s.imported_fingerprint.clone())
        .or_else(|| recorded.map(|r| r.fingerprint))
    {
        next.imported_refresh_token_sha256 = Some(imported);
    }
    if next != previous {
        // Under a precondition on the version this status was computed from: a process
        // working from an older read must not write older facts over newer ones.
        let written = tokens
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(status::merge_patch(&next, version.as_deref())),
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
    let device_authorized = run
        .device_authorized
        .load(std::sync::atomic::Ordering::Relaxed);
    publish_events(&ctx, &token, &previous, &next, &outcome, device_authorized).await;
    // From the time the requeue is handed over, not from when this reconcile began: a
    // reconcile that took a token request and three writes would otherwise wake that late.
    // The expiry warning turns on by the clock alone: look then.
    let warning_at = status::uses_refresh_tokens(&token)
        .then(|| status::expiry_warning_begins(&next, status::expiry_warning(&token), now))
        .flatten();
    Ok(requeue_for(
        &outcome,
        Utc::now(),
        (ctx.jitter)(),
        warning_at,
    ))
}

fn requeue_for(
    outcome: &Outcome,
    now: DateTime<Utc>,
    jitter_unit: f64,
    also_at: Option<DateTime<Utc>>,
) -> Action {
    let until = match outcome {
        Outcome::Blocked { .. } | Outcome::ChainDead { .. } | Outcome::Suspended => None,
        // Continue from the chain another process stored.
        Outcome::Superseded => return Action::requeue(std::time::Duration::from_secs(1)),
        Outcome::Issued { state, .. } => state.access.as_ref().map(|a| a.refresh_at),
        Outcome::Waiting { until, .. } | Outcome::Deferred { until } => Some(*until),
        Outcome::Failed { retry_at, .. } => Some(*retry_at),
        Outcome::Authorizing { poll_at, .. } => Some(*poll_at),
        Outcome::AuthorizationEnded { restart_at, .. } => Some(*restart_at),
    };
    let until = match (until, also_at) {
        (Some(until), Some(also)) => Some(until.min(also)),
        (until, also) => until.or(also),
    };
    Action::requeue(schedule::requeue_after(until, now, jitter_unit))
}

struct Run<'a> {
    token: &'a OAuthToken,
    secrets: &'a Api<Secret>,
    ctx: &'a Context,
    now: DateTime<Utc>,
    previous: &'a OAuthTokenStatus,
    /// An import this reconcile recorded in status before presenting it.
    recorded: Mutex<Option<RecordedImport>>,
    /// A refresh asked for with the annotation and not acknowledged yet.
    request: Option<RefreshRequest>,
    /// The chain was begun anew by a device authorization in this reconcile.
    device_authorized: std::sync::atomic::AtomicBool,
}

#[derive(Clone)]
struct RecordedImport {
    fingerprint: String,
    /// The OAuthToken's resourceVersion after the record.
    version: Option<String>,
}

/// What a token request needs, all read before anything is claimed: nothing may fail between a
/// claim and its request.
struct Inputs<'a> {
    settings: &'a Settings,
    target: Option<&'a Secret>,
    client: ClientCredentials,
    binding: Binding,
    request_fingerprint: String,
    imported: bool,
    had_token: bool,
}

/// The token requests of one refresh, and what they learnt beyond the protocol's answer.
struct TokenRequests<'r, 'a> {
    run: &'r Run<'a>,
    inputs: &'r Inputs<'a>,
    /// Why the last request failed.
    failure: Option<OAuthError>,
    /// Why a 2xx answer's access token cannot be used (its refresh token is stored all the same).
    access_error: Option<OAuthError>,
}

impl chain::Requests for TokenRequests<'_, '_> {
    async fn present(
        &mut self,
        state: &TokenState,
        deadline: tokio::time::Instant,
    ) -> Answer<TokenState> {
        self.run
            .present(
                self.inputs,
                state,
                deadline,
                &mut self.failure,
                &mut self.access_error,
            )
            .await
    }

    async fn record_import(&mut self, fingerprint: &str) -> bool {
        self.run.record_import(fingerprint).await
    }
}

/// Where a step of the device flow led. Short-lived, one per reconcile: its size is no matter.
#[allow(clippy::large_enum_variant)]
enum DeviceFlow {
    /// Still waiting for the human, or ended: report this.
    Outcome(Outcome),
    /// The human authorized: the refresh token enters the chain.
    Authorized(Redeemed),
}

/// The import offer of a device authorization's refresh token: like an import from the import
/// Secret (whose version stays recorded, so a used-up import is not offered again).
///
/// With an import Secret, the import bookkeeping keeps naming the import Secret's refresh token
/// (`import_secret`: its fingerprint and version now): the device token is no import, and the
/// used-up token in the import Secret must never look new again when that Secret is touched.
fn device_offer(
    authorized: &Redeemed,
    stored: Option<&TokenState>,
    binding: &Binding,
    import_secret: Option<(String, Option<String>)>,
) -> Offer<TokenState> {
    let offered = fingerprint(authorized.refresh_token.expose_secret());
    let base = stored.cloned().unwrap_or_default();
    let (imported_fingerprint, import_secret_version) = match import_secret {
        Some((fingerprint, version)) => (fingerprint, version),
        None => (offered.clone(), base.import_secret_version.clone()),
    };
    Offer {
        fingerprint: offered,
        state: TokenState {
            refresh_token: Some(authorized.refresh_token.clone()),
            refresh_token_expires_at: authorized.expires_at,
            imported_fingerprint: Some(imported_fingerprint),
            import_secret_version,
            binding: Some(binding.clone()),
            claim: None,
            rejected_fingerprint: None,
            rotates: None,
            ..base
        },
    }
}

/// Whether a token request is due, and whether it may be made now.
struct Schedule {
    decision: Decision,
    /// Due and admitted by the origin's budget.
    due: bool,
    /// Due, but the origin's budget puts it off until then.
    deferred: Option<DateTime<Utc>>,
}

impl Run<'_> {
    async fn execute(&self) -> Result<Outcome, Error> {
        let uid = self.token.uid().unwrap_or_default();
        // What this process owes the state Secret (a new refresh token it could not store yet,
        // the end of a claim) is the newest word on the chain: it is written before any spec or
        // conflict check.
        if self.ctx.fencing.owes(&uid)
            && let Ok(mut store) =
                ChainStore::load(self.secrets, self.token, &self.ctx.caches).await?
        {
            chain::settle_with(&mut store, &self.ctx.fencing).await?;
        }
        let settings = match settings::resolve(self.token, &self.ctx.tokens) {
            Ok(settings) => settings,
            Err(message) => return Ok(Outcome::invalid_spec(message)),
        };
        // After what this process owes the state Secret: a suspended OAuthToken still keeps
        // the successor it holds.
        if self.token.spec.suspend {
            return Ok(Outcome::Suspended);
        }
        let namespace = self.token.namespace().unwrap_or_default();
        let target = self
            .ctx
            .caches
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
        match &settings.grant {
            GrantSettings::ClientCredentials => {
                self.client_credentials_grant(&settings, target.as_ref())
                    .await
            }
            GrantSettings::RefreshToken { import, device } => {
                self.refresh_token_grant(
                    &settings,
                    target.as_ref(),
                    import.as_ref(),
                    device.as_ref(),
                )
                .await
            }
        }
    }

    /// The refresh-token grant: the chain protocol decides, [`chain::refresh`] carries it out.
    /// Without a usable chain, a device authorization (when the spec asks for one) begins it
    /// anew: its refresh token enters the chain exactly as an import does.
    async fn refresh_token_grant(
        &self,
        settings: &Settings,
        target: Option<&Secret>,
        import: Option<&settings::KeyRef>,
        device: Option<&url::Url>,
    ) -> Result<Outcome, Error> {
        let (outcome, unauthorized) = self.refresh_chain(settings, target, import, None).await?;
        let uid = self.token.uid().unwrap_or_default();
        let (Some(endpoint), Some(ended)) = (device, unauthorized) else {
            // A chain that works (or waits) needs no authorization in progress.
            self.ctx.device_sessions.forget(&uid);
            return Ok(outcome);
        };
        if !self.ctx.fencing.may_refresh() {
            // Leadership is gone or the process stops: the next leader authorizes (and shows
            // its own code; this one is not polled again); status stays as it was.
            self.ctx.device_sessions.forget(&uid);
            return Ok(Outcome::Deferred {
                until: self.now + chrono::TimeDelta::seconds(5),
            });
        }
        match self.device_flow(settings, endpoint, ended).await? {
            DeviceFlow::Outcome(outcome) => Ok(outcome),
            DeviceFlow::Authorized(redeemed) => {
                self.device_authorized
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let offered = fingerprint(redeemed.refresh_token.expose_secret());
                let result = self
                    .refresh_chain(settings, target, import, Some(&redeemed))
                    .await;
                // Taken once status records it as imported: from then on the chain (and the
                // core's import rule) owns it.
                let recorded = self
                    .recorded
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .map(|r| r.fingerprint.clone());
                let taken = recorded.as_ref() == Some(&offered)
                    || self.previous.imported_refresh_token_sha256.as_ref() == Some(&offered)
                    || matches!(&result, Ok((outcome, _)) if outcome
                        .state()
                        .and_then(|s| s.imported_fingerprint.as_ref())
                        == Some(&offered));
                if !taken {
                    if redeemed.redeemed_at.elapsed() < super::device::REDEEMED_KEPT_FOR {
                        debug!(
                            "the device authorization's refresh token is kept until the chain takes it"
                        );
                        self.ctx.device_sessions.keep_redeemed(&uid, redeemed);
                    } else {
                        warn!(
                            "the refresh token of a device authorization could not be stored; it is given up"
                        );
                    }
                }
                result.map(|(outcome, _)| outcome)
            }
        }
    }

    /// One refresh of the chain; with `authorized`, a refresh token from a device authorization
    /// is offered instead of the import Secret's. Also says whether the chain needs a human's
    /// authorization (and why it ended, unless it never began).
    async fn refresh_chain(
        &self,
        settings: &Settings,
        target: Option<&Secret>,
        import: Option<&settings::KeyRef>,
        authorized: Option<&Redeemed>,
    ) -> Result<(Outcome, Option<Option<(&'static str, String)>>), Error> {
        let fencing = &self.ctx.fencing;
        let mut store = match ChainStore::load(self.secrets, self.token, &self.ctx.caches).await? {
            Ok(store) => store,
            Err(ForeignStateSecret) => {
                return Ok((
                    Outcome::conflict(format!(
                        "Secret {} exists and is not controlled by this OAuthToken; the operator keeps the refresh token there, so rename or delete that Secret",
                        self.token.state_secret_name()
                    )),
                    None,
                ));
            }
        };
        let stored = store.state();
        let ledger = stored.as_ref().map(Record::ledger).unwrap_or_default();
        // The client secret itself is read only when a request follows.
        let identity = match self.client_credentials(settings, false).await? {
            Ok(client) => client,
            Err(message) => return Ok((Outcome::invalid_spec(message), None)),
        };
        let binding = settings.binding(&identity.client_id);
        let offer = match (authorized, import) {
            (Some(authorized), import) => {
                let import_secret = match import {
                    Some(import) => self.import_secret_now(import).await?,
                    None => None,
                };
                Some(device_offer(
                    authorized,
                    stored.as_ref(),
                    &binding,
                    import_secret,
                ))
            }
            (None, Some(import)) => {
                self.import_offer(settings, import, stored.as_ref(), &binding)
                    .await?
            }
            (None, None) => None,
        };
        let uid = self.token.uid().unwrap_or_default();
        let imported = offer.as_ref().is_some_and(|offer| {
            fencing.imports(
                &uid,
                &ledger,
                self.previous.imported_refresh_token_sha256.as_ref(),
                &offer.fingerprint,
            )
        });
        let request_fingerprint =
            settings.request_fingerprint(&identity.client_id, &self.token.spec);
        let access = stored.as_ref().and_then(|s| s.access.as_ref());
        let spec_changed = access.is_some()
            && stored
                .as_ref()
                .and_then(|s| s.request_fingerprint.as_ref())
                .is_some_and(|known| *known != request_fingerprint);
        let schedule = self
            .schedule(
                settings,
                &binding,
                imported,
                spec_changed,
                access.map(|a| a.refresh_at),
            )
            .await;
        let client = match self.client_for(settings, identity, schedule.due).await? {
            Ok(client) => client,
            Err(message) => return Ok((Outcome::invalid_spec(message), None)),
        };
        let inputs = Inputs {
            settings,
            target,
            client,
            binding: binding.clone(),
            request_fingerprint,
            imported,
            had_token: access.is_some(),
        };
        let loaded = Loaded {
            stored,
            offer,
            imported_in_status: self.previous.imported_refresh_token_sha256.clone(),
            binding,
            due: schedule.due,
            may_refresh: fencing.may_refresh(),
            // Whoever asks for a refresh says the published token no longer serves them: no
            // reason left to wait for a silent holder's late commit.
            token_reported_unusable: RefreshRequest::refreshes(self.request.as_ref()),
        };
        let mut requests = TokenRequests {
            run: self,
            inputs: &inputs,
            failure: None,
            access_error: None,
        };
        let ended = chain::refresh(&mut store, fencing, loaded, &mut requests).await;
        let never_began = matches!(ended.done, Done::NoToken);
        let (failure, access_error) = (requests.failure, requests.access_error);
        let outcome = self
            .outcome(&inputs, &schedule, ended, failure, access_error)
            .await?;
        let unauthorized = match &outcome {
            // A refreshToken grant begins with an import; only a deviceCode grant begins with
            // a device authorization.
            _ if never_began && import.is_some() => None,
            _ if never_began => Some(None),
            Outcome::ChainDead {
                reason, message, ..
            } => Some(Some((*reason, message.clone()))),
            Outcome::Failed { error, .. }
                if error.kind() == FailureKind::ReauthorizationRequired =>
            {
                Some(Some((reason::INVALID_GRANT, error.to_string())))
            }
            _ => None,
        };
        Ok((outcome, unauthorized))
    }

    /// The fingerprint of the refresh token in the import Secret now, and the Secret's version.
    async fn import_secret_now(
        &self,
        import: &settings::KeyRef,
    ) -> Result<Option<(String, Option<String>)>, Error> {
        let namespace = self.token.namespace().unwrap_or_default();
        let source = self
            .ctx
            .caches
            .user_secret(self.secrets, &namespace, &import.secret)
            .await
            .map_err(Error::ReadInputs)?;
        Ok(source.and_then(|source| {
            let value = secret_text(&source, &import.key)?;
            Some((fingerprint(&value), source.resource_version()))
        }))
    }

    /// The refresh token in the import Secret, when that Secret changed since the last import.
    async fn import_offer(
        &self,
        settings: &Settings,
        import: &settings::KeyRef,
        stored: Option<&TokenState>,
        binding: &Binding,
    ) -> Result<Option<Offer<TokenState>>, Error> {
        let namespace = self.token.namespace().unwrap_or_default();
        let recorded = stored.and_then(|s| s.import_secret_version.clone());
        let unchanged = recorded.is_some()
            && self
                .ctx
                .caches
                .user_secret_version(&namespace, &import.secret)
                == Some(recorded);
        if unchanged {
            return Ok(None);
        }
        // Read once per change: the state records which version was imported, so the value is
        // not kept in memory.
        let Some(source) = self
            .ctx
            .caches
            .user_secret_once(self.secrets, &namespace, &import.secret)
            .await
            .map_err(Error::ReadInputs)?
        else {
            return Ok(None);
        };
        let Some(value) = secret_text(&source, &import.key) else {
            return Ok(None);
        };
        let offered = fingerprint(&value);
        let base = stored.cloned().unwrap_or_default();
        let state = TokenState {
            refresh_token: Some(SecretString::from(value)),
            // spec.refreshTokenLifetime counts from the import.
            refresh_token_expires_at: settings
                .refresh_token_lifetime
                .map(|l| schedule::refresh_token_expiry_after(self.now, l)),
            imported_fingerprint: Some(offered.clone()),
            import_secret_version: source.resource_version(),
            binding: Some(binding.clone()),
            claim: None,
            rejected_fingerprint: None,
            rotates: None,
            ..base
        };
        Ok(Some(Offer {
            fingerprint: offered,
            state,
        }))
    }

    /// Whether to request a token now, and whether the origin's budget allows it (a short wait
    /// for the budget happens here, before anything is claimed).
    async fn schedule(
        &self,
        settings: &Settings,
        binding: &Binding,
        imported: bool,
        spec_changed: bool,
        token_refresh_at: Option<DateTime<Utc>>,
    ) -> Schedule {
        let decision = schedule::decide(&Observed {
            now: self.now,
            imported,
            spec_changed,
            token_refresh_at,
            retry_at: (self.previous.failed_attempts > 0)
                .then_some(self.previous.next_refresh_at)
                .flatten(),
            requested: RefreshRequest::refreshes(self.request.as_ref()),
        });
        debug!(?decision, "refresh decision");
        let mut schedule = Schedule {
            decision,
            due: false,
            deferred: None,
        };
        if !matches!(decision, Decision::RefreshNow(_)) || !self.ctx.fencing.may_refresh() {
            return schedule;
        }
        match self.admit(settings, binding).await {
            None => schedule.due = true,
            Some(until) => schedule.deferred = Some(until),
        }
        schedule
    }

    /// Waits briefly for the origin's budget to admit a token request; `Some(until)` when it
    /// puts the request off until then.
    async fn admit(&self, settings: &Settings, binding: &Binding) -> Option<DateTime<Utc>> {
        let admission = self.ctx.budgets.admit(
            &binding.origin,
            &self.token.uid().unwrap_or_default(),
            settings.budget,
            std::time::Instant::now(),
        );
        match admission {
            Admission::After(wait) => {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                None
            }
            Admission::Deferred { until, paused } => {
                self.ctx.metrics.count_deferred(paused);
                debug!(
                    paused,
                    "the token endpoint's budget is used up; requesting later"
                );
                // Spread over a second: the deferred do not all come back at once.
                let delay = until.saturating_duration_since(std::time::Instant::now())
                    + MAX_BUDGET_WAIT.mul_f64((self.ctx.jitter)());
                Some(self.now + chrono::TimeDelta::from_std(delay).unwrap_or_default())
            }
        }
    }

    /// One step of the device flow for a chain that needs a human: start an authorization,
    /// wait for the interval, or poll the token endpoint. Every request goes through the
    /// origin's budget. `ended` says why the chain ended (`None`: it never began).
    async fn device_flow(
        &self,
        settings: &Settings,
        endpoint: &url::Url,
        ended: Option<(&'static str, String)>,
    ) -> Result<DeviceFlow, Error> {
        use super::device::{Pending, Session, Step};
        use crate::oauth::{DeviceAuthorizationRequest, DevicePoll, device_poll};
        let uid = self.token.uid().unwrap_or_default();
        let client = match self.client_credentials(settings, true).await? {
            Ok(client) => client,
            Err(message) => return Ok(DeviceFlow::Outcome(Outcome::invalid_spec(message))),
        };
        let binding = settings.binding(&client.client_id);
        let spec = &self.token.spec;
        let request_key = serde_json::json!([
            endpoint.as_str(),
            settings.endpoint.as_str(),
            &client.client_id,
            &spec.scopes,
            &spec.audience,
            &spec.extra_parameters,
        ])
        .to_string();
        let session = match self.ctx.device_sessions.take(&uid) {
            // Redeemed earlier, not yet taken by the chain: offered again, never redeemed twice.
            Some(Pending::Redeemed(redeemed)) => return Ok(DeviceFlow::Authorized(redeemed)),
            Some(Pending::Polling(session)) => Some(session).filter(|s| s.request == request_key),
            None => None,
        };
        let previous_reason = status::ready_reason(self.previous);
        let earlier_end = previous_reason
            .as_deref()
            .and_then(super::device::ended_reason);
        // An authorization started after an earlier one ended keeps that count in
        // failedAttempts while it is pending: the back-off grows with every end in a row.
        let ends_in_a_row = if earlier_end.is_some()
            || previous_reason.as_deref() == Some(reason::AUTHORIZATION_PENDING)
        {
            self.previous.failed_attempts
        } else {
            0
        };
        let restart_at = earlier_end.and(self.previous.next_refresh_at);
        let requested = RefreshRequest::refreshes(self.request.as_ref());
        let authorizing = |session: &Session, ended: Option<(&'static str, String)>| {
            DeviceFlow::Outcome(Outcome::Authorizing {
                pending: pending_authorization(session),
                ended,
                poll_at: session.next_poll,
            })
        };
        let end = |why: &'static str| {
            let ends = ends_in_a_row.saturating_add(1);
            let restart_at = self.now
                + chrono::TimeDelta::from_std(super::device::restart_delay(ends))
                    .unwrap_or_default();
            let what = match why {
                reason::ACCESS_DENIED => {
                    "The authorization was declined at the provider (access_denied)"
                }
                reason::NO_REFRESH_TOKEN => {
                    "A human authorized, but the provider issued no refresh token, so the operator cannot keep the access token fresh: ask for a scope that grants one (often offline_access) in spec.scopes"
                }
                _ => "The device code expired before anyone entered it",
            };
            info!(reason = why, %restart_at, "the device authorization ended");
            DeviceFlow::Outcome(Outcome::AuthorizationEnded {
                reason: why,
                message: format!(
                    "{what}. A new authorization starts at {}, or at once when a refresh is asked for ({})",
                    rfc3339(restart_at),
                    status::how_to_authorize(self.token)
                ),
                restart_at,
                ended: ends,
            })
        };
        let step = super::device::next_step(session.as_ref(), restart_at, requested, self.now);
        match (step, session) {
            (Step::RestartAt(restart_at), _) => {
                let why = earlier_end.unwrap_or(reason::AUTHORIZATION_EXPIRED);
                let message = conditions::get(&self.previous.conditions, conditions::READY)
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                Ok(DeviceFlow::Outcome(Outcome::AuthorizationEnded {
                    reason: why,
                    message,
                    restart_at,
                    ended: ends_in_a_row,
                }))
            }
            (Step::WaitUntil(_), Some(session)) => {
                let outcome = authorizing(&session, ended);
                self.ctx.device_sessions.put(&uid, session);
                Ok(outcome)
            }
            (Step::Expired, _) => Ok(end(reason::AUTHORIZATION_EXPIRED)),
            // `next_step` waits or polls only with a session; without one, start.
            (Step::Start, _) | (Step::WaitUntil(_) | Step::Poll, None) => {
                if let Some(until) = self.admit(settings, &binding).await {
                    return Ok(DeviceFlow::Outcome(Outcome::Deferred { until }));
                }
                let request = DeviceAuthorizationRequest {
                    endpoint,
                    client: &client,
                    scopes: &spec.scopes,
                    audience: spec.audience.as_deref(),
                    extra_parameters: &spec.extra_parameters,
                };
                match self.ctx.tokens.device_authorization(&request).await {
                    Ok(authorization) => {
                        info!(
                            verification_uri = authorization.verification_uri,
                            expires_in = ?authorization.expires_in,
                            "started a device authorization; a human must enter its code"
                        );
                        let session = Session::new(authorization, request_key);
                        let outcome = authorizing(&session, ended);
                        self.ctx.device_sessions.put(&uid, session);
                        Ok(outcome)
                    }
                    Err(error) => Ok(DeviceFlow::Outcome(self.failed(
                        &binding,
                        false,
                        TokenState::default(),
                        error,
                        false,
                        false,
                    ))),
                }
            }
            (Step::Poll, Some(mut session)) => {
                if let Some(until) = self.admit(settings, &binding).await {
                    session.next_poll = until;
                    let outcome = authorizing(&session, ended);
                    self.ctx.device_sessions.put(&uid, session);
                    return Ok(outcome);
                }
                // RFC 8628 section 3.4: the device code and the client, nothing else.
                let no_parameters = std::collections::BTreeMap::new();
                let request = TokenRequest {
                    endpoint: &settings.endpoint,
                    client: &client,
                    grant: GrantRequest::DeviceCode(&session.authorization.device_code),
                    scopes: &[],
                    audience: None,
                    extra_parameters: &no_parameters,
                };
                let started = std::time::Instant::now();
                let result = self.ctx.tokens.request(&request).await;
                let polled_at = Utc::now();
                let verdict = result.as_ref().err().map(device_poll);
                if !matches!(verdict, Some(DevicePoll::Pending | DevicePoll::SlowDown)) {
                    self.ctx.metrics.observe_request(&result, started.elapsed());
                }
                match (result, verdict) {
                    (Ok(issued), _) => match issued.refresh_token {
                        Some(refresh_token) => {
                            info!("a human authorized by device flow");
                            Ok(DeviceFlow::Authorized(Redeemed {
                                redeemed_at: std::time::Instant::now(),
                                refresh_token,
                                expires_at: schedule::refresh_token_expiry(
                                    issued.requested_at,
                                    issued.refresh_expires_in,
                                    settings.refresh_token_lifetime,
                                    true,
                                    None,
                                ),
                            }))
                        }
                        None => Ok(end(reason::NO_REFRESH_TOKEN)),
                    },
                    (Err(_), Some(DevicePoll::Pending)) => {
                        session.polled(polled_at, false);
                        let outcome = authorizing(&session, ended);
                        self.ctx.device_sessions.put(&uid, session);
                        Ok(outcome)
                    }
                    (Err(_), Some(DevicePoll::SlowDown)) => {
                        session.polled(polled_at, true);
                        debug!(interval = ?session.interval, "slow_down: polling less often");
                        let outcome = authorizing(&session, ended);
                        self.ctx.device_sessions.put(&uid, session);
                        Ok(outcome)
                    }
                    (Err(_), Some(DevicePoll::Expired)) => Ok(end(reason::AUTHORIZATION_EXPIRED)),
                    (Err(_), Some(DevicePoll::Denied)) => Ok(end(reason::ACCESS_DENIED)),
                    // A failure that may pass keeps the code: the human may be entering it.
                    (Err(error), _) if error.kind() == FailureKind::Transient => {
                        warn!(category = error.category(), %error, "polling the device code failed; polling again");
                        session.polled(polled_at, false);
                        if let Some(retry_after) = error.retry_after() {
                            session.next_poll = session.next_poll.max(
                                polled_at
                                    + chrono::TimeDelta::from_std(retry_after).unwrap_or_default(),
                            );
                        }
                        let outcome = authorizing(&session, ended);
                        self.ctx.device_sessions.put(&uid, session);
                        Ok(outcome)
                    }
                    (Err(error), _) => Ok(DeviceFlow::Outcome(self.failed(
                        &binding,
                        false,
                        TokenState::default(),
                        error,
                        false,
                        false,
                    ))),
                }
            }
        }
    }

    /// The client's credentials for a request that follows: with the secret when `due`.
    async fn client_for(
        &self,
        settings: &Settings,
        identity: ClientCredentials,
        due: bool,
    ) -> Result<Result<ClientCredentials, String>, Error> {
        if due && settings.client.secret_key.is_some() {
            self.client_credentials(settings, true).await
        } else {
            Ok(Ok(identity))
        }
    }

    /// Presents the refresh token of `state` before `deadline` and says what became of it.
    async fn present(
        &self,
        inputs: &Inputs<'_>,
        state: &TokenState,
        deadline: tokio::time::Instant,
        failure: &mut Option<OAuthError>,
        access_error: &mut Option<OAuthError>,
    ) -> Answer<TokenState> {
        let Some(refresh) = &state.refresh_token else {
            return Answer::NotSent;
        };
        let spec = &self.token.spec;
        let request = TokenRequest {
            endpoint: &inputs.settings.endpoint,
            client: &inputs.client,
            grant: GrantRequest::RefreshToken(refresh),
            scopes: &spec.scopes,
            audience: spec.audience.as_deref(),
            extra_parameters: &spec.extra_parameters,
        };
        let attempt = state.claim.as_ref().map(|c| c.attempt).unwrap_or(1);
        info!(attempt, "requesting a token");
        let started = std::time::Instant::now();
        let timeout = self.ctx.tokens.timeout();
        let result = match send_within(deadline, timeout, self.ctx.tokens.request(&request)).await {
            Sent::Answered(result) => result,
            Sent::TooLate => Err(OAuthError::Timeout(timeout)),
            Sent::NotSent => {
                warn!("the claim would run out before the request could finish; not sending");
                return Answer::NotSent;
            }
        };
        let elapsed = started.elapsed();
        self.ctx.metrics.observe_request(&result, elapsed);
        match result {
            Ok(issued) => {
                let (successor, error) = self.successor(inputs, state, issued, elapsed);
                *access_error = error;
                Answer::Issued { successor }
            }
            Err(error) => {
                let answer = match error.presentation() {
                    Presentation::NotSent => Answer::NotSent,
                    Presentation::Refused => Answer::Refused {
                        rejected: error.kind() == FailureKind::ReauthorizationRequired,
                    },
                    Presentation::Unknown => {
                        warn!("no answer arrived; the provider may have rotated the refresh token");
                        Answer::Unknown
                    }
                };
                *failure = Some(error);
                answer
            }
        }
    }

    /// The state a 2xx answer leads to: its refresh token first, whatever the rest says, and the
    /// access token when it can be used (else why not).
    fn successor(
        &self,
        inputs: &Inputs<'_>,
        presented: &TokenState,
        issued: Issued,
        elapsed: std::time::Duration,
    ) -> (TokenState, Option<OAuthError>) {
        let presented_fingerprint = presented.refresh_fingerprint();
        let mut next = presented.clone();
        next.claim = None;
        next.rejected_fingerprint = None;
        next.binding = Some(inputs.binding.clone());
        let rotated = issued
            .refresh_token
            .as_ref()
            .is_some_and(|new| Some(fingerprint(new.expose_secret())) != presented_fingerprint);
        next.refresh_token_expires_at = schedule::refresh_token_expiry(
            issued.requested_at,
            issued.refresh_expires_in,
            inputs.settings.refresh_token_lifetime,
            rotated,
            next.refresh_token_expires_at,
        );
        if let Some(refresh) = issued.refresh_token {
            next.refresh_token = Some(refresh);
        }
        let grant = match issued.access {
            Ok(grant) => grant,
            // Whether the provider rotates is learnt from usable answers only.
            Err(error) => return (next, Some(error)),
        };
        next.rotates = Some(rotated || presented.rotates == Some(true));
        next.access = Some(self.access_token(inputs, grant, issued.requested_at, &next, elapsed));
        next.request_fingerprint = Some(inputs.request_fingerprint.clone());
        (next, None)
    }

    /// The access token of a usable answer, with when to refresh it.
    fn access_token(
        &self,
        inputs: &Inputs<'_>,
        grant: AccessGrant,
        requested_at: DateTime<Utc>,
        state: &TokenState,
        elapsed: std::time::Duration,
    ) -> AccessToken {
        let jwt_exp = jwt::expiry(grant.access_token.expose_secret());
        let (expires_at, source) = schedule::token_expiry(
            requested_at,
            grant.expires_in,
            jwt_exp,
            inputs.settings.default_lifetime,
        );
        let refresh_at = schedule::refresh_at(
            requested_at,
            expires_at,
            inputs.settings.policy,
            (self.ctx.jitter)(),
        );
        let refresh_at = schedule::refresh_before_refresh_token_expiry(
            refresh_at,
            requested_at,
            state.refresh_token_expires_at,
            state.rotates == Some(true),
            inputs.settings.policy,
            (self.ctx.jitter)(),
        );
        info!(
            rotated = state.rotates == Some(true),
            expiry_source = ?source,
            %expires_at,
            %refresh_at,
            latency_ms = elapsed.as_millis() as u64,
            "token issued"
        );
        AccessToken {
            token: grant.access_token,
            token_type: grant.token_type,
            scope: grant.scope,
            issued_at: schedule::truncate_to_seconds(requested_at),
            expires_at: schedule::truncate_to_seconds(expires_at),
            refresh_at,
        }
    }

    /// Records in status, under a precondition on the version this reconcile read, that
    /// `fingerprint` was imported: the import is then never mistaken for a new one, even when
    /// the state Secret is lost.
    async fn record_import(&self, fingerprint: &str) -> bool {
        let tokens: Api<OAuthToken> = Api::namespaced(
            self.ctx.client.clone(),
            &self.token.namespace().unwrap_or_default(),
        );
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": self.token.resource_version()},
            "status": {"importedRefreshTokenSha256": fingerprint},
        });
        match tokens
            .patch_status(
                &self.token.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(written) => {
                self.ctx.caches.wrote_token(&written);
                *self.recorded.lock().unwrap_or_else(|e| e.into_inner()) = Some(RecordedImport {
                    fingerprint: fingerprint.to_string(),
                    version: written.resource_version(),
                });
                true
            }
            Err(error) => {
                warn!(%error, "recording the import in status failed; nothing was presented");
                false
            }
        }
    }

    /// What a refresh of the chain means for status; publishes what it left.
    async fn outcome(
        &self,
        inputs: &Inputs<'_>,
        schedule: &Schedule,
        ended: Ended,
        failure: Option<OAuthError>,
        access_error: Option<OAuthError>,
    ) -> Result<Outcome, Error> {
        let now = self.now;
        let Ended { done, api_error } = ended;
        let after = |wait: std::time::Duration| {
            now + chrono::TimeDelta::from_std(wait.min(LONGEST_WAIT)).unwrap_or_default()
        };
        let outcome = match done {
            Done::NoToken | Done::StateLost => return Ok(self.no_chain(inputs, &done)),
            Done::Idle {
                state,
                answer_unknown,
            } => match (schedule.deferred, schedule.decision) {
                (Some(until), _) => Outcome::Deferred { until },
                (None, Decision::WaitUntil(until)) => Outcome::Waiting {
                    unconfirmed: answer_unknown.then(|| unconfirmed_until(until)),
                    state,
                    until,
                },
                // Due, but leadership is gone or the process stops: another replica takes over.
                (None, Decision::RefreshNow(_)) => Outcome::Waiting {
                    state,
                    until: now + chrono::TimeDelta::seconds(5),
                    unconfirmed: None,
                },
            },
            Done::Waiting {
                state,
                after: wait,
                unconfirmed,
            } => {
                debug!(?wait, "another process holds a claim on the refresh token");
                Outcome::Waiting {
                    unconfirmed: unconfirmed.map(|u| {
                        format!(
                            "Process {} presented the refresh token and has stored no answer; it may still store one, so the refresh token is presented once more only at {}, shortly before the published access token expires. Until then the published token may already be invalid: some providers revoke it the moment they rotate",
                            u.holder,
                            rfc3339(u.once_more_at)
                        )
                    }),
                    state,
                    until: after(wait),
                }
            }
            Done::Dead {
                state,
                reason,
                message,
            } => Outcome::ChainDead {
                reason,
                message,
                state,
            },
            Done::Committed { state } => match access_error {
                Some(error) => self.failed(&inputs.binding, inputs.imported, state, error, false, false),
                None => Outcome::Issued {
                    state,
                    had_token: inputs.had_token,
                    imported: inputs.imported,
                },
            },
            Done::NotIssued {
                state,
                lost,
                after_lost_answer,
            } => {
                let error = failure.unwrap_or(OAuthError::Timeout(self.ctx.tokens.timeout()));
                self.failed(&inputs.binding, inputs.imported, state, error, after_lost_answer, lost)
            }
            Done::NotSent { state } => match failure {
                Some(error) => self.failed(&inputs.binding, inputs.imported, state, error, false, false),
                // The claim would have run out first: look again at once.
                None => return Err(Error::StateConflict),
            },
            Done::Superseded { .. } => return Ok(Outcome::Superseded),
            Done::Conflict => return Err(Error::StateConflict),
            Done::NotStored => {
                return Err(api_error.map_or(Error::StateConflict, Error::WriteState));
            }
            Done::Parked { state, until } => {
                let remaining = self
                    .ctx
                    .fencing
                    .instant_at(until)
                    .saturating_duration_since(tokio::time::Instant::now());
                let why = api_error.map_or_else(
                    || "the state Secret kept changing".to_string(),
                    |e| e.to_string(),
                );
                Outcome::Waiting {
                    unconfirmed: Some(format!(
                        "A new refresh token was obtained but could not be stored yet ({why}); it is kept in memory and stored before anything else, for up to {}s more",
                        remaining.as_secs()
                    )),
                    // Nothing of the new state is published before it is stored.
                    state: TokenState {
                        access: None,
                        ..state
                    },
                    until: after(PARKED_RETRY),
                }
            }
            Done::Dropped => Outcome::ChainDead {
                reason: reason::SUCCESSOR_LOST,
                message: "The provider rotated the refresh token, but the new one could not be stored before other processes may present the old one (the Kubernetes API was out of reach too long); it was given up, and the old one is not presented again. Put a new refresh token in the import Secret".to_string(),
                state: TokenState::default(),
            },
        };
        // The published token stays while it is valid: a failed refresh removes nothing, and a
        // deleted token Secret comes back from the state.
        if let Some(state) = outcome.state() {
            self.publish(inputs.settings, inputs.target, state).await?;
        }
        Ok(outcome)
    }

    /// No chain to refresh: nothing imported yet, or the state Secret is gone.
    fn no_chain(&self, inputs: &Inputs<'_>, done: &Done<TokenState>) -> Outcome {
        let GrantSettings::RefreshToken {
            import: Some(import),
            ..
        } = &inputs.settings.grant
        else {
            // Begun by a device authorization, which the caller starts now.
            if matches!(done, Done::NoToken) {
                return Outcome::invalid_spec(
                    "no refresh token yet: a device authorization begins the chain".to_string(),
                );
            }
            warn!("the state Secret is gone");
            return Outcome::ChainDead {
                reason: reason::STATE_LOST,
                message: format!(
                    "The state Secret {} holding the refresh-token chain was deleted; the refresh token it held is not known any more",
                    self.token.state_secret_name()
                ),
                state: TokenState::default(),
            };
        };
        if matches!(done, Done::NoToken) {
            return Outcome::invalid_spec(format!(
                "waiting for Secret {} with key {} holding the refresh token from the one-time authorization",
                import.secret, import.key
            ));
        }
        warn!("the state Secret is gone and the import Secret holds a used-up refresh token");
        Outcome::ChainDead {
            reason: reason::STATE_LOST,
            message: format!(
                "The state Secret {} holding the refresh-token chain was deleted; the refresh token in Secret {} was used up long ago and is not presented again. Put a new refresh token in Secret {} key {}",
                self.token.state_secret_name(),
                import.secret,
                import.secret,
                import.key
            ),
            state: TokenState::default(),
        }
    }

    /// The client-credentials grant: no chain to protect, so no state Secret. What a restart
    /// needs to know comes from status and the token Secret.
    async fn client_credentials_grant(
        &self,
        settings: &Settings,
        target: Option<&Secret>,
    ) -> Result<Outcome, Error> {
        let identity = match self.client_credentials(settings, false).await? {
            Ok(client) => client,
            Err(message) => return Ok(Outcome::invalid_spec(message)),
        };
        let binding = settings.binding(&identity.client_id);
        let request_fingerprint =
            settings.request_fingerprint(&identity.client_id, &self.token.spec);
        let published = self.published_from_status(settings, target).await?;
        // A token issued for another request, or of unknown origin (a grant switched from
        // refresh tokens), is replaced.
        let spec_changed = published.access.is_some()
            && published.request_fingerprint.as_ref() != Some(&request_fingerprint);
        let schedule = self
            .schedule(
                settings,
                &binding,
                false,
                spec_changed,
                published.access.as_ref().map(|a| a.refresh_at),
            )
            .await;
        if let Some(until) = schedule.deferred {
            return Ok(Outcome::Deferred { until });
        }
        if let Decision::WaitUntil(until) = schedule.decision {
            return Ok(Outcome::Waiting {
                state: published,
                until,
                unconfirmed: None,
            });
        }
        if !schedule.due {
            return Ok(Outcome::Waiting {
                state: published,
                until: self.now + chrono::TimeDelta::seconds(5),
                unconfirmed: None,
            });
        }
        let client = match self.client_for(settings, identity, true).await? {
            Ok(client) => client,
            Err(message) => return Ok(Outcome::invalid_spec(message)),
        };
        let inputs = Inputs {
            settings,
            target,
            client,
            binding,
            request_fingerprint,
            imported: false,
            had_token: self.previous.expires_at.is_some(),
        };
        let spec = &self.token.spec;
        let request = TokenRequest {
            endpoint: &settings.endpoint,
            client: &inputs.client,
            grant: GrantRequest::ClientCredentials,
            scopes: &spec.scopes,
            audience: spec.audience.as_deref(),
            extra_parameters: &spec.extra_parameters,
        };
        info!("requesting a token");
        let started = std::time::Instant::now();
        let result = self.ctx.tokens.request(&request).await;
        let elapsed = started.elapsed();
        self.ctx.metrics.observe_request(&result, elapsed);
        let outcome = match result.and_then(|issued| {
            let requested_at = issued.requested_at;
            issued.access.map(|grant| (grant, requested_at))
        }) {
            Ok((grant, requested_at)) => {
                let mut state = TokenState {
                    request_fingerprint: Some(inputs.request_fingerprint.clone()),
                    ..TokenState::default()
                };
                state.access =
                    Some(self.access_token(&inputs, grant, requested_at, &state, elapsed));
                Outcome::Issued {
                    state,
                    had_token: inputs.had_token,
                    imported: false,
                }
            }
            Err(error) => self.failed(&inputs.binding, false, published, error, false, false),
        };
        if let Outcome::Issued { state, .. } = &outcome {
            self.publish(settings, target, state).await?;
        }
        Ok(outcome)
    }

    /// The published client-credentials token as status and the token Secret tell it (its
    /// value stays in the token Secret).
    async fn published_from_status(
        &self,
        settings: &Settings,
        target: Option<&Secret>,
    ) -> Result<TokenState, Error> {
        let status = self.previous;
        // A token Secret of another name (spec.secretName moved, or moved back to a Secret this
        // OAuthToken still owns) holds nothing this status speaks for.
        let published_there =
            status.secret_name.as_deref() == Some(settings.target_secret.as_str());
        let access = match (target, status.expires_at, status.last_refresh_at) {
            (Some(_), Some(expires_at), Some(issued_at)) if published_there => Some(AccessToken {
                token: SecretString::from(String::new()),
                token_type: String::new(),
                scope: None,
                issued_at,
                expires_at,
                // After a failure nextRefreshAt is the retry, which the schedule reads apart;
                // a spell without a schedule (a blocked spec) leaves the policy's time.
                refresh_at: match status.next_refresh_at {
                    Some(at) if status.failed_attempts == 0 => at,
                    _ => schedule::refresh_at(issued_at, expires_at, settings.policy, 0.0),
                },
            }),
            _ => None,
        };
        let request_fingerprint = match &status.request_sha256 {
            Some(known) => Some(known.clone()),
            // Issued before client credentials kept no state Secret: the request is on record
            // there (a state Secret of a refresh-token grant records another grant).
            None if access.is_some() => {
                ChainStore::load(self.secrets, self.token, &self.ctx.caches)
                    .await?
                    .ok()
                    .and_then(|store| store.state())
                    .and_then(|state| state.request_fingerprint)
            }
            None => None,
        };
        Ok(TokenState {
            access,
            request_fingerprint,
            ..TokenState::default()
        })
    }

    /// A failed token request: backoff from status, the published token kept while valid.
    #[allow(clippy::too_many_arguments)]
    fn failed(
        &self,
        binding: &Binding,
        imported: bool,
        state: TokenState,
        error: OAuthError,
        after_lost_answer: bool,
        lost: bool,
    ) -> Outcome {
        if let OAuthError::Throttled { retry_after, .. } = &error {
            // The provider is overloaded or limits us: every OAuthToken on this origin waits.
            let pause = retry_after.unwrap_or(schedule::TRANSIENT_BACKOFF_BASE);
            self.ctx
                .budgets
                .pause(&binding.origin, std::time::Instant::now() + pause);
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
        Outcome::Failed {
            state,
            error,
            attempts,
            retry_at,
            imported,
            after_lost_answer,
            lost,
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

/// What status shows of a device authorization: never its device code.
fn pending_authorization(session: &super::device::Session) -> crate::api::PendingAuthorization {
    let authorization = &session.authorization;
    crate::api::PendingAuthorization {
        user_code: authorization.user_code.clone(),
        verification_uri: authorization.verification_uri.clone(),
        verification_uri_complete: authorization.verification_uri_complete.clone(),
        expires_at: schedule::truncate_to_seconds(authorization.expires_at()),
    }
}

/// Why `Ready` is Unknown while the last presentation's answer is unknown.
fn unconfirmed_until(until: DateTime<Utc>) -> String {
    format!(
        "The answer to the last presentation of the refresh token was lost: the provider may have rotated it, and some providers revoke the published access token when they do. The refresh token is presented once more at {}",
        rfc3339(until)
    )
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
    device_authorized: bool,
) {
    let previous_reason = status::ready_reason(previous);
    let next_reason = status::ready_reason(next);
    let mut events = Vec::new();
    let suspended = Some(reason::SUSPENDED);
    if previous_reason.as_deref() == suspended && next_reason.as_deref() != suspended {
        events.push((
            EventType::Normal,
            "Resumed",
            "spec.suspend is false: refreshing resumed".to_string(),
        ));
    }
    if let Some(expiring) = conditions::get(&next.conditions, REFRESH_TOKEN_EXPIRING)
        && expiring.status == conditions::TRUE
        && !conditions::is_true(&previous.conditions, REFRESH_TOKEN_EXPIRING)
    {
        events.push((
            EventType::Warning,
            "RefreshTokenExpiring",
            expiring.message.clone(),
        ));
    }
    match outcome {
        // One Event per transition: a first token (the import that led to it included), a new
        // import (a human authorized again), a recovery; none for a routine refresh.
        Outcome::Issued { imported: true, .. } if device_authorized => events.push((
            EventType::Normal,
            "Authorized",
            "A human authorized by device flow; the new refresh token is stored and an access token was obtained with it".to_string(),
        )),
        Outcome::Issued {
            had_token: false,
            imported,
            ..
        } => events.push((
            EventType::Normal,
            "TokenIssued",
            if *imported {
                "Imported the refresh token from the import Secret and obtained the first access token"
            } else {
                "Obtained the first access token"
            }
            .to_string(),
        )),
        Outcome::Issued { imported: true, .. } => events.push((
            EventType::Normal,
            "RefreshTokenImported",
            "Imported a new refresh token from the import Secret and obtained an access token with it"
                .to_string(),
        )),
        Outcome::Issued { .. } if previous.failed_attempts > 0 => events.push((
            EventType::Normal,
            "Recovered",
            format!(
                "Obtained an access token after {} failed attempts",
                previous.failed_attempts
            ),
        )),
        Outcome::Failed { imported: true, .. } => events.push((
            EventType::Normal,
            "RefreshTokenImported",
            "Imported a new refresh token from the import Secret".to_string(),
        )),
        _ => {}
    }
    match outcome {
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
        Outcome::Waiting {
            unconfirmed: Some(why),
            ..
        } => {
            if previous_reason.as_deref() != Some(reason::REFRESH_UNCONFIRMED) {
                events.push((EventType::Warning, reason::REFRESH_UNCONFIRMED, why.clone()));
            }
        }
        Outcome::Authorizing { pending, ended, .. } => {
            if let Some((reason, message)) = ended
                && conditions::get(&previous.conditions, conditions::REAUTHORIZATION_REQUIRED)
                    .is_none_or(|c| c.reason != *reason)
            {
                events.push((EventType::Warning, *reason, message.clone()));
            }
            if previous.authorization.as_ref().map(|a| &a.user_code) != Some(&pending.user_code) {
                events.push((
                    EventType::Normal,
                    reason::AUTHORIZATION_PENDING,
                    status::authorize_message(pending),
                ));
            }
        }
        Outcome::AuthorizationEnded {
            reason, message, ..
        } => {
            if previous_reason.as_deref() != Some(*reason) {
                events.push((EventType::Warning, *reason, message.clone()));
            }
        }
        Outcome::Suspended => {
            if previous_reason.as_deref() != suspended
                && let Some(ready) = conditions::get(&next.conditions, conditions::READY)
            {
                events.push((EventType::Normal, reason::SUSPENDED, ready.message.clone()));
            }
        }
        Outcome::Issued { .. } | Outcome::Waiting { .. } | Outcome::Deferred { .. } => {}
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
