//! `kubectl oauthtoken status NAME`: what the operator reports about an OAuthToken, and the one
//! thing a human must do next. Reads the OAuthToken only, never a Secret.

use std::fmt::Write as _;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Args;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;

use super::{CliError, KubeArgs, api_error, when};
use crate::api::conditions::{self, reason};
use crate::api::{DEFAULT_REFRESH_TOKEN_KEY, OAuthToken, Reauthorization};

/// The condition that warns of a refresh token's end.
pub const REFRESH_TOKEN_EXPIRING: &str = "RefreshTokenExpiring";

pub const LONG_ABOUT: &str = "\
Show an OAuthToken's state as the operator reports it: its conditions with reasons and
messages, when the access token and the refresh token expire, the last and the next refresh,
failed attempts, a pending device authorization (the code to enter and where), the last refresh
asked for with `kubectl oauthtoken refresh`, and on the last line what a human must do next.

Only the OAuthToken is read; no Secret is, so nothing secret is ever printed.";

pub const EXAMPLES: &str = "\
Examples:
  # The state of the OAuthToken allegro in the current namespace
  kubectl oauthtoken status allegro

  # In another namespace and context
  kubectl oauthtoken status allegro -n shop --context prod";

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Name of the OAuthToken.
    pub name: String,
    #[command(flatten)]
    pub kube: KubeArgs,
}

pub async fn run(args: StatusArgs) -> Result<ExitCode, CliError> {
    let (client, namespace) = args.kube.connect().await?;
    let tokens: Api<OAuthToken> = Api::namespaced(client, &namespace);
    let token = tokens
        .get(&args.name)
        .await
        .map_err(|e| api_error("OAuthToken", &args.name, &namespace, e))?;
    print!("{}", render(&token, Utc::now()));
    Ok(ExitCode::SUCCESS)
}

fn condition<'a>(token: &'a OAuthToken, type_: &str) -> Option<&'a Condition> {
    token
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn is(token: &OAuthToken, type_: &str, status: &str) -> bool {
    condition(token, type_).is_some_and(|c| c.status == status)
}

/// Which grant an OAuthToken uses, as the human sees it.
fn grant_text(token: &OAuthToken) -> String {
    let grant = &token.spec.grant;
    if let Some(refresh) = &grant.refresh_token {
        let import = &refresh.initial_refresh_token_secret_ref;
        let key = import.key.as_deref().unwrap_or(DEFAULT_REFRESH_TOKEN_KEY);
        let reauthorization = match refresh.reauthorization {
            Reauthorization::Import => "",
            Reauthorization::DeviceCode => ", reauthorization by device flow",
        };
        format!(
            "refreshToken (import Secret {}, key {key}{reauthorization})",
            import.name
        )
    } else if grant.device_code.is_some() {
        "deviceCode (authorizes itself with the device flow)".to_string()
    } else if grant.client_credentials.is_some() {
        "clientCredentials".to_string()
    } else {
        "none".to_string()
    }
}

/// The full status text, as `status` prints it.
pub fn render(token: &OAuthToken, now: DateTime<Utc>) -> String {
    let name = token.metadata.name.as_deref().unwrap_or_default();
    let namespace = token.metadata.namespace.as_deref().unwrap_or_default();
    let status = token.status.clone().unwrap_or_default();
    let mut out = String::new();
    let time = |at: Option<DateTime<Utc>>| at.map_or_else(|| "-".to_string(), |at| when(at, now));
    let _ = writeln!(out, "Name:                  {name}");
    let _ = writeln!(out, "Namespace:             {namespace}");
    let _ = writeln!(out, "Grant:                 {}", grant_text(token));
    let _ = writeln!(out, "Token endpoint:        {}", token.spec.token_endpoint);
    let _ = writeln!(out, "Access token Secret:   {}", token.target_secret_name());
    let _ = writeln!(
        out,
        "Suspended:             {}",
        if token.spec.suspend { "yes" } else { "no" }
    );
    let _ = writeln!(out, "Conditions:");
    if status.conditions.is_empty() {
        let _ = writeln!(out, "  (none: the operator has not reported on it yet)");
    }
    let known = [
        conditions::READY,
        conditions::REAUTHORIZATION_REQUIRED,
        REFRESH_TOKEN_EXPIRING,
    ];
    let mut shown: Vec<&Condition> = known
        .iter()
        .filter_map(|type_| status.conditions.iter().find(|c| c.type_ == *type_))
        .collect();
    shown.extend(
        status
            .conditions
            .iter()
            .filter(|c| !known.contains(&c.type_.as_str())),
    );
    for c in shown {
        let _ = writeln!(out, "  {}: {} ({})", c.type_, c.status, c.reason);
        if !c.message.is_empty() {
            let _ = writeln!(out, "    {}", c.message);
        }
    }
    let _ = writeln!(out, "Access token expires:  {}", time(status.expires_at));
    if token.spec.grant.client_credentials.is_none() {
        let _ = writeln!(
            out,
            "Refresh token expires: {}",
            status
                .refresh_token_expires_at
                .map_or_else(|| "unknown".to_string(), |at| when(at, now))
        );
    }
    let _ = writeln!(
        out,
        "Last refresh:          {}",
        time(status.last_refresh_at)
    );
    let _ = writeln!(
        out,
        "Next refresh:          {}",
        time(status.next_refresh_at)
    );
    let _ = write!(out, "Failed attempts:       {}", status.failed_attempts);
    match status.last_failure_at {
        Some(at) if status.failed_attempts > 0 => {
            let _ = writeln!(out, " (last {})", when(at, now));
        }
        _ => out.push('\n'),
    }
    if let Some(at) = status.refresh_token_imported_at {
        let _ = writeln!(out, "Refresh token imported: {}", when(at, now));
    }
    match &status.authorization {
        None => {
            let _ = writeln!(out, "Device authorization:  none pending");
        }
        Some(pending) => {
            let _ = writeln!(out, "Device authorization:  pending");
            let _ = writeln!(out, "  Open:                {}", pending.verification_uri);
            let _ = writeln!(out, "  Enter the code:      {}", pending.user_code);
            if let Some(complete) = &pending.verification_uri_complete {
                let _ = writeln!(out, "  Or open:             {complete}");
            }
            let _ = writeln!(
                out,
                "  Expires:             {}",
                when(pending.expires_at, now)
            );
        }
    }
    match &status.last_refresh_request {
        None => {
            let _ = writeln!(out, "Last refresh request:  none");
        }
        Some(value) => {
            let _ = writeln!(out, "Last refresh request:  {value}");
            if let Some(result) = &status.last_refresh_request_result {
                let _ = writeln!(out, "  Result:              {result}");
            }
        }
    }
    let pending_request = token
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::api::REFRESH_ANNOTATION))
        .filter(|value| status.last_refresh_request.as_ref() != Some(*value));
    if let Some(value) = pending_request {
        let _ = writeln!(out, "Refresh requested:     {value} (not handled yet)");
    }
    let _ = writeln!(out, "Next step: {}", next_step(token, now));
    out
}

/// The one thing a human must do next, or that nothing is expected.
pub fn next_step(token: &OAuthToken, now: DateTime<Utc>) -> String {
    let name = token.metadata.name.as_deref().unwrap_or_default();
    let namespace = token.metadata.namespace.as_deref().unwrap_or_default();
    let ns = if namespace.is_empty() {
        String::new()
    } else {
        format!(" -n {namespace}")
    };
    let status = token.status.clone().unwrap_or_default();
    let device_grant = token.spec.grant.device_code.is_some();
    let imports = token.spec.grant.refresh_token.is_some();

    if token.spec.suspend {
        return format!(
            "refreshing is suspended; to resume: kubectl patch oauthtoken {name}{ns} --type merge -p '{{\"spec\":{{\"suspend\":false}}}}'"
        );
    }
    if let Some(pending) = &status.authorization
        && pending.expires_at > now
    {
        let open = match &pending.verification_uri_complete {
            Some(complete) => format!(
                "open {complete} (or open {} and enter the code {})",
                pending.verification_uri, pending.user_code
            ),
            None => format!(
                "open {} and enter the code {}",
                pending.verification_uri, pending.user_code
            ),
        };
        return format!(
            "{open} before {}",
            pending
                .expires_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    let reauthorize = if device_grant {
        format!(
            "start a new device authorization with `kubectl oauthtoken refresh {name}{ns}`, then run `kubectl oauthtoken status {name}{ns}` for the code to enter"
        )
    } else {
        format!("authorize again: kubectl oauthtoken authorize {name}{ns}")
    };
    if is(
        token,
        conditions::REAUTHORIZATION_REQUIRED,
        conditions::TRUE,
    ) {
        return reauthorize;
    }
    let Some(ready) = condition(token, conditions::READY) else {
        if imports {
            return format!(
                "none yet: the operator has not reported on it (is it running?); if there is no refresh token yet, authorize: kubectl oauthtoken authorize {name}{ns}"
            );
        }
        return "none yet: the operator has not reported on it (is it running?)".to_string();
    };
    match (ready.status.as_str(), ready.reason.as_str()) {
        (conditions::TRUE, _) => {
            if is(token, REFRESH_TOKEN_EXPIRING, conditions::TRUE) {
                let until = status
                    .refresh_token_expires_at
                    .map(|at| {
                        format!(
                            " before {}",
                            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        )
                    })
                    .unwrap_or_default();
                return format!("the refresh token expires soon; {reauthorize}{until}");
            }
            "none: the access token is fresh".to_string()
        }
        (_, reason::INVALID_SPEC) if imports && mentions_import_secret(token, &ready.message) => {
            format!(
                "put a refresh token in the import Secret: kubectl oauthtoken authorize {name}{ns}"
            )
        }
        (_, reason::INVALID_SPEC) => format!(
            "fix the OAuthToken or the Secrets it names ({}): kubectl edit oauthtoken {name}{ns}",
            ready.message
        ),
        (_, reason::INVALID_CLIENT) => format!(
            "fix the client credentials (spec.clientId / spec.clientSecretRef) the provider rejected, then `kubectl oauthtoken refresh {name}{ns}`"
        ),
        (_, reason::PROVIDER_REJECTED) => format!(
            "fix the request the provider rejected (scopes, audience, extraParameters): kubectl edit oauthtoken {name}{ns}"
        ),
        (_, reason::SECRET_CONFLICT) => format!(
            "the access token's Secret {} belongs to something else: delete it or set spec.secretName",
            token.target_secret_name()
        ),
        (conditions::UNKNOWN, _) => {
            "none: the operator confirms the last refresh by itself".to_string()
        }
        _ => match status.next_refresh_at {
            Some(at) => format!(
                "none for now: the operator tries again {} ({} failed attempts)",
                when(at, now),
                status.failed_attempts
            ),
            None => "none for now: the operator is retrying".to_string(),
        },
    }
}

fn mentions_import_secret(token: &OAuthToken, message: &str) -> bool {
    token.spec.grant.refresh_token.as_ref().is_some_and(|r| {
        message.contains(&format!(
            "Secret {}",
            r.initial_refresh_token_secret_ref.name
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn token(grant: serde_json::Value, status: serde_json::Value) -> OAuthToken {
        serde_json::from_value(json!({
            "apiVersion": "oauth-token-operator.io/v1alpha1", "kind": "OAuthToken",
            "metadata": {"name": "allegro", "namespace": "shop"},
            "spec": {
                "tokenEndpoint": "https://allegro.pl/auth/oauth/token",
                "clientSecretRef": {"name": "client"},
                "grant": grant,
            },
            "status": status,
        }))
        .unwrap()
    }

    fn import_grant() -> serde_json::Value {
        json!({"refreshToken": {"initialRefreshTokenSecretRef": {"name": "allegro-import"}}})
    }

    fn cond(type_: &str, status: &str, reason: &str, message: &str) -> serde_json::Value {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastTransitionTime": "2026-03-01T11:00:00Z"})
    }

    #[test]
    fn a_ready_token_needs_nothing_and_every_field_is_shown() {
        let t = token(
            import_grant(),
            json!({
                "conditions": [
                    cond("Ready", "True", "TokenValid", "Access token valid until 2026-03-01T13:00:00Z"),
                    cond("ReauthorizationRequired", "False", "Authorized", ""),
                    cond("RefreshTokenExpiring", "False", "NotExpiring", ""),
                ],
                "expiresAt": "2026-03-01T13:00:00Z",
                "refreshTokenExpiresAt": "2026-04-01T12:00:00Z",
                "lastRefreshAt": "2026-03-01T11:55:00Z",
                "nextRefreshAt": "2026-03-01T12:45:00Z",
                "failedAttempts": 0,
                "lastRefreshRequest": "2026-03-01T11:54:59.123456789Z",
                "lastRefreshRequestResult": "Refreshed at 2026-03-01T11:55:00Z",
            }),
        );
        let text = render(&t, now());
        for expected in [
            "Name:                  allegro\n",
            "Namespace:             shop\n",
            "Grant:                 refreshToken (import Secret allegro-import, key refresh_token)\n",
            "Suspended:             no\n",
            "  Ready: True (TokenValid)\n    Access token valid until 2026-03-01T13:00:00Z\n",
            "  ReauthorizationRequired: False (Authorized)\n",
            "  RefreshTokenExpiring: False (NotExpiring)\n",
            "Access token expires:  2026-03-01T13:00:00Z (in 1h0m)\n",
            "Refresh token expires: 2026-04-01T12:00:00Z (in 31d0h)\n",
            "Last refresh:          2026-03-01T11:55:00Z (5m0s ago)\n",
            "Next refresh:          2026-03-01T12:45:00Z (in 45m0s)\n",
            "Failed attempts:       0\n",
            "Device authorization:  none pending\n",
            "Last refresh request:  2026-03-01T11:54:59.123456789Z\n  Result:              Refreshed at 2026-03-01T11:55:00Z\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(
            text.ends_with("Next step: none: the access token is fresh\n"),
            "{text}"
        );
    }

    #[test]
    fn a_dead_chain_asks_for_authorize() {
        let t = token(
            import_grant(),
            json!({"conditions": [
                cond("Ready", "False", "InvalidGrant", "The provider rejected the refresh token"),
                cond("ReauthorizationRequired", "True", "InvalidGrant", "Put a new refresh token in Secret allegro-import"),
            ], "failedAttempts": 3}),
        );
        assert_eq!(
            next_step(&t, now()),
            "authorize again: kubectl oauthtoken authorize allegro -n shop"
        );
        let text = render(&t, now());
        assert!(text.contains("  ReauthorizationRequired: True (InvalidGrant)\n    Put a new refresh token in Secret allegro-import\n"), "{text}");
        assert!(text.contains("Failed attempts:       3\n"), "{text}");
    }

    #[test]
    fn a_pending_device_authorization_says_where_to_go() {
        let t = token(
            json!({"deviceCode": {"deviceAuthorizationEndpoint": "https://allegro.pl/auth/oauth/device"}}),
            json!({
                "conditions": [cond("ReauthorizationRequired", "True", "InvalidGrant", "")],
                "authorization": {
                    "userCode": "WDJB-MJHT",
                    "verificationUri": "https://allegro.pl/device",
                    "verificationUriComplete": "https://allegro.pl/device?code=WDJB-MJHT",
                    "expiresAt": "2026-03-01T12:10:00Z",
                },
            }),
        );
        let text = render(&t, now());
        assert!(text.contains("Device authorization:  pending\n  Open:                https://allegro.pl/device\n  Enter the code:      WDJB-MJHT\n  Or open:             https://allegro.pl/device?code=WDJB-MJHT\n  Expires:             2026-03-01T12:10:00Z (in 10m0s)\n"), "{text}");
        assert!(text.contains("Grant:                 deviceCode"), "{text}");
        assert_eq!(
            next_step(&t, now()),
            "open https://allegro.pl/device?code=WDJB-MJHT (or open https://allegro.pl/device and enter the code WDJB-MJHT) before 2026-03-01T12:10:00Z"
        );
        // Once the code expired, the device grant is restarted with a refresh request.
        let later = now() + chrono::Duration::minutes(11);
        assert_eq!(
            next_step(&t, later),
            "start a new device authorization with `kubectl oauthtoken refresh allegro -n shop`, then run `kubectl oauthtoken status allegro -n shop` for the code to enter"
        );
    }

    #[test]
    fn suspended_says_how_to_resume() {
        let mut t = token(
            import_grant(),
            json!({"conditions": [cond("Ready", "False", "Suspended", "")]}),
        );
        t.spec.suspend = true;
        assert!(render(&t, now()).contains("Suspended:             yes\n"));
        assert_eq!(
            next_step(&t, now()),
            r#"refreshing is suspended; to resume: kubectl patch oauthtoken allegro -n shop --type merge -p '{"spec":{"suspend":false}}'"#
        );
    }

    #[test]
    fn an_expiring_refresh_token_asks_for_authorize_before_its_end() {
        let t = token(
            import_grant(),
            json!({"conditions": [
                cond("Ready", "True", "TokenValid", ""),
                cond("RefreshTokenExpiring", "True", "Expiring", "expires in 2 days"),
            ], "refreshTokenExpiresAt": "2026-03-03T12:00:00Z"}),
        );
        assert_eq!(
            next_step(&t, now()),
            "the refresh token expires soon; authorize again: kubectl oauthtoken authorize allegro -n shop before 2026-03-03T12:00:00Z"
        );
    }

    #[test]
    fn other_states_name_the_next_step() {
        let missing_import = token(
            import_grant(),
            json!({"conditions": [cond("Ready", "False", "InvalidSpec", "Secret allegro-import not found")]}),
        );
        assert_eq!(
            next_step(&missing_import, now()),
            "put a refresh token in the import Secret: kubectl oauthtoken authorize allegro -n shop"
        );
        let bad_spec = token(
            import_grant(),
            json!({"conditions": [cond("Ready", "False", "InvalidSpec", "spec.refreshBefore: bad")]}),
        );
        assert!(next_step(&bad_spec, now()).starts_with("fix the OAuthToken"));
        let failing = token(
            import_grant(),
            json!({"conditions": [cond("Ready", "False", "RefreshFailing", "HTTP 503")],
                   "failedAttempts": 2, "nextRefreshAt": "2026-03-01T12:01:00Z"}),
        );
        assert_eq!(
            next_step(&failing, now()),
            "none for now: the operator tries again 2026-03-01T12:01:00Z (in 1m0s) (2 failed attempts)"
        );
        let fresh = token(import_grant(), json!(null));
        assert!(render(&fresh, now()).contains("(none: the operator has not reported on it yet)"));
        assert!(next_step(&fresh, now()).starts_with("none yet"));
        let pending = {
            let mut t = token(import_grant(), json!({"lastRefreshRequest": "a"}));
            t.metadata.annotations =
                Some([(crate::api::REFRESH_ANNOTATION.to_string(), "b".to_string())].into());
            t
        };
        assert!(render(&pending, now()).contains("Refresh requested:     b (not handled yet)\n"));
    }
}
