//! The device flow (RFC 8628) of OAuthTokens whose refresh-token chain is begun, or restored
//! after it died, by a human entering a code at the provider: what each OAuthToken waits for,
//! and when to poll. The device code is a secret: it stays in this process's memory, never in
//! status, Events or logs. A restart or a new leader starts a new authorization, and status
//! shows the new code.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::api::conditions::reason;
use crate::oauth::DeviceAuthorization;
use crate::oauth::device::{MAX_POLL_INTERVAL, SLOW_DOWN_INCREMENT};

/// First wait before a new authorization starts on its own after one expired or was denied;
/// it doubles with each such end, up to [`LONGEST_RESTART_DELAY`]. A human need not wait:
/// asking for a refresh starts one at once.
pub const FIRST_RESTART_DELAY: Duration = Duration::from_secs(5 * 60);
pub const LONGEST_RESTART_DELAY: Duration = Duration::from_secs(6 * 3600);

/// A device authorization this process started and polls.
pub struct Session {
    pub authorization: DeviceAuthorization,
    /// What it was started for (endpoint, client, scopes): a spec that asks for something else
    /// starts anew.
    pub request: String,
    /// The interval, raised for good by every `slow_down`.
    pub interval: Duration,
    /// The next poll, not before.
    pub next_poll: DateTime<Utc>,
}

impl Session {
    pub fn new(authorization: DeviceAuthorization, request: String) -> Session {
        let interval = authorization.interval;
        let next_poll = authorization.requested_at + delta(interval);
        Session {
            authorization,
            request,
            interval,
            next_poll,
        }
    }

    /// After a poll answered at `now`: the next one an interval later, slower after
    /// `slow_down`.
    pub fn polled(&mut self, now: DateTime<Utc>, slow_down: bool) {
        if slow_down {
            self.interval = (self.interval + SLOW_DOWN_INCREMENT).min(MAX_POLL_INTERVAL);
        }
        self.next_poll = now + delta(self.interval);
    }
}

/// A refresh token a device authorization obtained, not yet handed to the chain: a device code
/// is redeemed once (a second redemption revokes the grant at some providers), so what it gave
/// is kept until the chain has taken it.
pub struct Redeemed {
    pub refresh_token: SecretString,
    pub expires_at: Option<DateTime<Utc>>,
    /// When the device code was redeemed (monotonic).
    pub redeemed_at: std::time::Instant,
}

/// How long a redeemed refresh token the chain could not take yet (the Kubernetes API failing,
/// the origin's budget) is kept before it is given up and a human authorizes again. Retries
/// come from the reconciles' error policy, some every 200 ms: a count would run out in seconds.
pub const REDEEMED_KEPT_FOR: Duration = Duration::from_secs(15 * 60);

/// What a device authorization left in memory.
pub enum Pending {
    Polling(Session),
    Redeemed(Redeemed),
}

/// Device authorizations in progress, by OAuthToken uid. A reconcile takes its OAuthToken's
/// entry and puts it back; reconciles of one OAuthToken never overlap.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Pending>>);

impl Sessions {
    pub fn take(&self, uid: &str) -> Option<Pending> {
        self.lock().remove(uid)
    }

    pub fn put(&self, uid: &str, session: Session) {
        self.lock()
            .insert(uid.to_string(), Pending::Polling(session));
    }

    pub fn keep_redeemed(&self, uid: &str, redeemed: Redeemed) {
        self.lock()
            .insert(uid.to_string(), Pending::Redeemed(redeemed));
    }

    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What to do next about an OAuthToken that needs a human's authorization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Ask the device authorization endpoint for a new code.
    Start,
    /// Ask the token endpoint whether the human finished.
    Poll,
    /// Nothing before then (the interval between polls).
    WaitUntil(DateTime<Utc>),
    /// The code expired without a poll telling so.
    Expired,
    /// An earlier authorization ended (expired, denied): a new one starts on its own only then.
    RestartAt(DateTime<Utc>),
}

/// The next step, from the session this process holds (for this request), when an ended
/// authorization allows a new one (`restart_at`, from status) and whether a human asked for a
/// refresh.
pub fn next_step(
    session: Option<&Session>,
    restart_at: Option<DateTime<Utc>>,
    requested: bool,
    now: DateTime<Utc>,
) -> Step {
    match session {
        Some(session) if now >= session.authorization.expires_at() => Step::Expired,
        Some(session) if now < session.next_poll => Step::WaitUntil(session.next_poll),
        Some(_) => Step::Poll,
        None => match restart_at {
            Some(at) if now < at && !requested => Step::RestartAt(at),
            _ => Step::Start,
        },
    }
}

/// The `Ready` reason of a device authorization that ended (expired, declined, or without a
/// refresh token), as the constant; `None` for any other reason.
pub fn ended_reason(ready_reason: &str) -> Option<&'static str> {
    [
        reason::AUTHORIZATION_EXPIRED,
        reason::ACCESS_DENIED,
        reason::NO_REFRESH_TOKEN,
    ]
    .into_iter()
    .find(|ended| *ended == ready_reason)
}

/// The wait before a new authorization starts on its own after the `ended`-th that expired or
/// was denied in a row.
pub fn restart_delay(ended: u32) -> Duration {
    let doublings = ended.saturating_sub(1).min(16);
    FIRST_RESTART_DELAY
        .saturating_mul(1 << doublings)
        .min(LONGEST_RESTART_DELAY)
}

fn delta(duration: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(duration).unwrap_or(chrono::TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn session(interval: u64, expires_in: u64) -> Session {
        Session::new(
            DeviceAuthorization {
                device_code: SecretString::from("device-code-secret"),
                user_code: "WDJB-MJHT".into(),
                verification_uri: "https://idp.test/device".into(),
                verification_uri_complete: None,
                expires_in: Duration::from_secs(expires_in),
                interval: Duration::from_secs(interval),
                requested_at: t(0),
            },
            "request".into(),
        )
    }

    #[test]
    fn polls_once_per_interval_and_slower_after_slow_down() {
        let mut s = session(5, 600);
        assert_eq!(
            next_step(Some(&s), None, false, t(1)),
            Step::WaitUntil(t(5))
        );
        assert_eq!(next_step(Some(&s), None, false, t(5)), Step::Poll);
        s.polled(t(5), false);
        assert_eq!(
            next_step(Some(&s), None, true, t(9)),
            Step::WaitUntil(t(10))
        );
        s.polled(t(10), true);
        assert_eq!(s.interval, Duration::from_secs(10));
        assert_eq!(
            next_step(Some(&s), None, false, t(19)),
            Step::WaitUntil(t(20))
        );
        // slow_down never takes the interval past the longest accepted.
        for _ in 0..100 {
            s.polled(t(20), true);
        }
        assert_eq!(s.interval, MAX_POLL_INTERVAL);
    }

    #[test]
    fn an_expired_code_is_not_polled() {
        let s = session(5, 600);
        assert_eq!(next_step(Some(&s), None, false, t(600)), Step::Expired);
    }

    #[test]
    fn an_ended_authorization_restarts_after_its_delay_or_when_asked() {
        assert_eq!(next_step(None, None, false, t(0)), Step::Start);
        assert_eq!(
            next_step(None, Some(t(300)), false, t(0)),
            Step::RestartAt(t(300))
        );
        assert_eq!(next_step(None, Some(t(300)), true, t(0)), Step::Start);
        assert_eq!(next_step(None, Some(t(300)), false, t(300)), Step::Start);
    }

    #[test]
    fn restarts_back_off_to_six_hours() {
        assert_eq!(restart_delay(1), Duration::from_secs(300));
        assert_eq!(restart_delay(2), Duration::from_secs(600));
        assert_eq!(restart_delay(8), LONGEST_RESTART_DELAY);
        assert_eq!(restart_delay(u32::MAX), LONGEST_RESTART_DELAY);
        assert_eq!(restart_delay(0), Duration::from_secs(300));
    }

    #[test]
    fn a_session_never_shows_its_device_code() {
        let s = session(5, 600);
        assert!(!format!("{:?}", s.authorization).contains("device-code-secret"));
    }
}
