//! `kubectl oauthtoken refresh NAME`: asks the operator for one refresh by setting the
//! annotation `oauth-token-operator.io/refresh` to a new value, and optionally waits until the
//! operator records that value in `status.lastRefreshRequest`.

use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use super::{CliError, EXIT_TIMEOUT, KubeArgs, api_error};
use crate::api::conditions;
use crate::api::{OAuthToken, REFRESH_ANNOTATION};

pub const LONG_ABOUT: &str = "\
Ask the operator to refresh an OAuthToken now: the annotation oauth-token-operator.io/refresh is
set to a new value (the current time, to the nanosecond). The operator refreshes once per new
value, or only acknowledges it when the last refresh is more recent than
spec.minRefreshInterval, and records the value in status.lastRefreshRequest with what became of
it in status.lastRefreshRequestResult. For an OAuthToken waiting for a device authorization
whose code expired or was declined, a refresh request starts a new one at once.

With --wait the command waits for that record, prints the result and the Ready condition, and
exits 0 when Ready is True, 1 when it is not, 2 when --timeout passed first.";

pub const EXAMPLES: &str = "\
Examples:
  # Ask for a refresh and return at once
  kubectl oauthtoken refresh allegro -n shop

  # Ask for a refresh and wait up to a minute for the operator's answer
  kubectl oauthtoken refresh allegro -n shop --wait --timeout 1m";

#[derive(Args, Debug)]
pub struct RefreshArgs {
    /// Name of the OAuthToken.
    pub name: String,
    /// Wait until the operator has handled the request, and exit non-zero unless the
    /// OAuthToken is Ready afterwards.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (e.g. 30s, 2m).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// A new, unique value for the refresh annotation: the time, RFC 3339 with nanoseconds.
pub fn request_value(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// The merge patch that sets the refresh annotation.
pub fn annotation_patch(value: &str) -> Value {
    json!({"metadata": {"annotations": {REFRESH_ANNOTATION: value}}})
}

/// What became of a refresh request, once the operator recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `status.lastRefreshRequestResult`.
    pub result: Option<String>,
    /// Ready's status, reason and message, if the condition is there.
    pub ready: Option<(String, String, String)>,
}

impl Outcome {
    pub fn is_ready(&self) -> bool {
        self.ready
            .as_ref()
            .is_some_and(|(status, _, _)| status == conditions::TRUE)
    }

    /// The lines printed after the wait.
    pub fn render(&self) -> String {
        let mut out = format!(
            "Result: {}\n",
            self.result
                .as_deref()
                .unwrap_or("(the operator recorded no result)")
        );
        match &self.ready {
            Some((status, reason, message)) if message.is_empty() => {
                out.push_str(&format!("Ready: {status} ({reason})\n"));
            }
            Some((status, reason, message)) => {
                out.push_str(&format!("Ready: {status} ({reason}): {message}\n"));
            }
            None => out.push_str("Ready: (no condition yet)\n"),
        }
        out
    }
}

/// The outcome once `status.lastRefreshRequest` shows `value`; `None` while it does not.
pub fn outcome(token: &OAuthToken, value: &str) -> Option<Outcome> {
    let status = token.status.as_ref()?;
    if status.last_refresh_request.as_deref() != Some(value) {
        return None;
    }
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
    Some(Outcome {
        result: status.last_refresh_request_result.clone(),
        ready,
    })
}

/// How often the OAuthToken is read while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

pub async fn run(args: RefreshArgs) -> Result<ExitCode, CliError> {
    let (client, namespace) = args.kube.connect().await?;
    let tokens: Api<OAuthToken> = Api::namespaced(client, &namespace);
    let name = &args.name;
    let value = request_value(Utc::now());
    let token = tokens
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(annotation_patch(&value)),
        )
        .await
        .map_err(|e| api_error("OAuthToken", name, &namespace, e))?;
    println!("Refresh requested for OAuthToken {namespace}/{name} ({REFRESH_ANNOTATION}={value})");
    if token.spec.suspend {
        eprintln!(
            "note: the OAuthToken is suspended (spec.suspend); the operator requests no token until it is resumed"
        );
    }
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        let token = tokens
            .get(name)
            .await
            .map_err(|e| api_error("OAuthToken", name, &namespace, e))?;
        if let Some(outcome) = outcome(&token, &value) {
            print!("{}", outcome.render());
            if outcome.is_ready() {
                return Ok(ExitCode::SUCCESS);
            }
            // A device authorization to enter, a chain to restore: what the human does now.
            println!(
                "Next step: {}",
                super::status::next_step(&token, Utc::now())
            );
            return Ok(ExitCode::FAILURE);
        }
        if tokio::time::Instant::now() + POLL_INTERVAL > deadline {
            return Err(CliError {
                message: format!(
                    "timed out after {} waiting for the operator to handle the refresh request (status.lastRefreshRequest is not {value} yet); is the operator running? See `kubectl oauthtoken status {name} -n {namespace}`",
                    humantime::format_duration(args.timeout)
                ),
                code: EXIT_TIMEOUT,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_value_is_an_rfc3339_time_with_nanoseconds() {
        let at = DateTime::parse_from_rfc3339("2026-03-01T12:00:00.000000042Z")
            .unwrap()
            .to_utc();
        assert_eq!(request_value(at), "2026-03-01T12:00:00.000000042Z");
        let now = Utc::now();
        assert_eq!(
            DateTime::parse_from_rfc3339(&request_value(now)).unwrap(),
            now
        );
    }

    #[test]
    fn the_patch_sets_only_the_annotation() {
        assert_eq!(
            annotation_patch("v1"),
            json!({"metadata": {"annotations": {"oauth-token-operator.io/refresh": "v1"}}})
        );
    }

    fn token(status: Value) -> OAuthToken {
        serde_json::from_value(json!({
            "apiVersion": "oauth-token-operator.io/v1alpha1", "kind": "OAuthToken",
            "metadata": {"name": "t", "namespace": "ns"},
            "spec": {"tokenEndpoint": "https://example.test/token", "clientSecretRef": {"name": "c"},
                     "grant": {"clientCredentials": {}}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn the_wait_ends_only_on_the_value_it_set() {
        assert_eq!(outcome(&token(Value::Null), "v2"), None);
        let older =
            token(json!({"lastRefreshRequest": "v1", "lastRefreshRequestResult": "Refreshed"}));
        assert_eq!(outcome(&older, "v2"), None);
        let done = token(json!({
            "lastRefreshRequest": "v2",
            "lastRefreshRequestResult": "Refreshed at 2026-03-01T12:00:01Z",
            "conditions": [{"type": "Ready", "status": "True", "reason": "TokenValid", "message": "",
                            "lastTransitionTime": "2026-03-01T12:00:01Z"}],
        }));
        let outcome_ = outcome(&done, "v2").unwrap();
        assert!(outcome_.is_ready());
        assert_eq!(
            outcome_.render(),
            "Result: Refreshed at 2026-03-01T12:00:01Z\nReady: True (TokenValid)\n"
        );
        let failed = token(json!({
            "lastRefreshRequest": "v2",
            "conditions": [{"type": "Ready", "status": "False", "reason": "InvalidGrant",
                            "message": "rejected", "lastTransitionTime": "2026-03-01T12:00:01Z"}],
        }));
        let outcome_ = outcome(&failed, "v2").unwrap();
        assert!(!outcome_.is_ready());
        assert_eq!(
            outcome_.render(),
            "Result: (the operator recorded no result)\nReady: False (InvalidGrant): rejected\n"
        );
    }
}
