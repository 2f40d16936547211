//! When to ask for a token: pure functions of the clock, the token's times and the policy.
//!
//! Nothing here reads the clock or a random source: callers pass `now` and a jitter draw, so the
//! schedule is reproducible in tests and computed once per issued token.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::oauth::MAX_TOKEN_LIFETIME;

mod refresh_token;
pub use refresh_token::{
    refresh_before_refresh_token_expiry, refresh_token_expiry, refresh_token_expiry_after,
};

/// How far ahead of expiry to refresh.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RefreshPolicy {
    /// Refresh this long before expiry (`refreshBefore`).
    Before(Duration),
    /// Refresh when this share of the lifetime remains, in percent (`refreshBeforePercentage`).
    RemainingPercent(u8),
}

impl Default for RefreshPolicy {
    /// When a third of the lifetime remains, like cert-manager's default renewal point.
    fn default() -> Self {
        RefreshPolicy::RemainingPercent(33)
    }
}

/// Where an access token's expiry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpirySource {
    ExpiresIn,
    JwtExp,
    DefaultLifetime,
}

/// Jitter moves a refresh earlier by at most this share of the refresh lead...
const JITTER_SHARE_OF_LEAD: f64 = 0.1;
/// ...and never by more than this.
const MAX_JITTER: Duration = Duration::from_secs(300);
/// No refresh is scheduled sooner than this after the previous one, so a provider issuing
/// tokens with tiny or already-past lifetimes cannot drive a hot loop.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Expiry of a token: request time + `expires_in`; else the JWT `exp`; else a default lifetime.
///
/// The request time, not the response time, starts the lifetime: the provider's clock started
/// it somewhere in between, and erring early is safe. Whatever the source, the lifetime is at
/// most [`MAX_TOKEN_LIFETIME`], and the expiry saturates at the end of chrono's range.
pub fn token_expiry(
    requested_at: DateTime<Utc>,
    expires_in: Option<Duration>,
    jwt_exp: Option<DateTime<Utc>>,
    default_lifetime: Duration,
) -> (DateTime<Utc>, ExpirySource) {
    let latest = after(requested_at, MAX_TOKEN_LIFETIME);
    if let Some(expires_in) = expires_in {
        return (after(requested_at, expires_in), ExpirySource::ExpiresIn);
    }
    match jwt_exp {
        Some(exp) if exp > requested_at => (exp.min(latest), ExpirySource::JwtExp),
        _ => (
            after(requested_at, default_lifetime),
            ExpirySource::DefaultLifetime,
        ),
    }
}

/// `at` plus a lifetime of at most [`MAX_TOKEN_LIFETIME`], saturating at chrono's limit.
fn after(at: DateTime<Utc>, lifetime: Duration) -> DateTime<Utc> {
    at.checked_add_signed(delta(lifetime.min(MAX_TOKEN_LIFETIME)))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// When to refresh a token issued at `requested_at` that expires at `expires_at`.
///
/// `jitter_unit` is a uniform draw in `[0, 1)` taken once per issued token; it moves the refresh
/// earlier by up to a tenth of the lead (at most five minutes) so that tokens issued together do
/// not all refresh in the same second. The result is truncated to whole seconds so that it
/// reads the same in status as in memory. Never panics: the result lies between the truncated
/// `requested_at` and `expires_at` (when `expires_at` is not before `requested_at`).
pub fn refresh_at(
    requested_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    policy: RefreshPolicy,
    jitter_unit: f64,
) -> DateTime<Utc> {
    // Any two instants in chrono's range are less than `TimeDelta::MAX` apart.
    let lifetime = expires_at
        .signed_duration_since(requested_at)
        .max(TimeDelta::zero());
    let default_lead = lifetime / 3;
    let lead = match policy {
        // A lead longer than the whole lifetime would mean "refresh immediately, forever".
        RefreshPolicy::Before(before) if delta(before) < lifetime => delta(before),
        RefreshPolicy::Before(_) => default_lead,
        RefreshPolicy::RemainingPercent(percent) => {
            scale(lifetime, f64::from(percent.clamp(1, 99)) / 100.0)
        }
    };
    let max_jitter = scale(lead, JITTER_SHARE_OF_LEAD).min(delta(MAX_JITTER));
    let jitter = scale(max_jitter, jitter_unit);
    let earliest = requested_at
        .checked_add_signed(delta(MIN_REFRESH_INTERVAL).min(lifetime / 2))
        .unwrap_or(requested_at);
    let at = lead
        .checked_add(&jitter)
        .and_then(|ahead| expires_at.checked_sub_signed(ahead))
        .unwrap_or(earliest);
    truncate_to_seconds(at.max(earliest))
}

/// What a failed token request means for the next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// Overload, timeout, broken response: exponential backoff, honouring `Retry-After`.
    Transient,
    /// The client or the request is wrong; a user must act. Slower backoff, but a change to the
    /// referenced Secrets or the spec triggers an immediate retry anyway.
    NeedsUserAction,
    /// The refresh token is dead: only a slow retry; importing a new token retries at once.
    ReauthorizationRequired,
}

/// First transient backoff step; doubled per consecutive failure.
pub const TRANSIENT_BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest transient backoff.
pub const TRANSIENT_BACKOFF_CAP: Duration = Duration::from_secs(300);
const USER_ACTION_BACKOFF_BASE: Duration = Duration::from_secs(60);
const USER_ACTION_BACKOFF_CAP: Duration = Duration::from_secs(3600);
/// How often a dead grant is tried again without any change from the user.
pub const REAUTHORIZATION_RETRY_INTERVAL: Duration = Duration::from_secs(3600);

/// Delay before the next attempt after `failed_attempts` consecutive failures (counting the one
/// that just happened, so at least 1).
///
/// Equal jitter: half the step is fixed, the other half scaled by `jitter_unit` in `[0, 1)`; a
/// `Retry-After` from the provider is a floor.
pub fn failure_delay(
    class: FailureClass,
    failed_attempts: u32,
    retry_after: Option<Duration>,
    jitter_unit: f64,
) -> Duration {
    let step = match class {
        FailureClass::Transient => exponential(
            TRANSIENT_BACKOFF_BASE,
            TRANSIENT_BACKOFF_CAP,
            failed_attempts,
        ),
        FailureClass::NeedsUserAction => exponential(
            USER_ACTION_BACKOFF_BASE,
            USER_ACTION_BACKOFF_CAP,
            failed_attempts,
        ),
        FailureClass::ReauthorizationRequired => REAUTHORIZATION_RETRY_INTERVAL,
    };
    let half = step / 2;
    let jittered = half + half.mul_f64(jitter_unit.clamp(0.0, 1.0));
    let jittered = Duration::from_secs(jittered.as_secs().max(1));
    jittered.max(retry_after.unwrap_or(Duration::ZERO))
}

fn exponential(base: Duration, cap: Duration, failed_attempts: u32) -> Duration {
    let doublings = failed_attempts.saturating_sub(1).min(20);
    base.saturating_mul(1 << doublings).min(cap)
}

/// What the controller should do about obtaining a token now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Request a token now.
    RefreshNow(RefreshReason),
    /// Nothing to request until then.
    WaitUntil(DateTime<Utc>),
}

/// Why a token is requested; logged and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshReason {
    /// No access token has been obtained yet (or it was lost).
    NoToken,
    /// A new refresh token was imported.
    Imported,
    /// The spec changed since the current token was issued.
    SpecChanged,
    /// The scheduled refresh time (or the end of a backoff) arrived.
    Due,
    /// Someone asked for a refresh with the annotation.
    Requested,
}

impl RefreshReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshReason::NoToken => "no_token",
            RefreshReason::Imported => "imported",
            RefreshReason::SpecChanged => "spec_changed",
            RefreshReason::Due => "due",
            RefreshReason::Requested => "requested",
        }
    }
}

/// The inputs of [`decide`].
#[derive(Clone, Copy, Debug)]
pub struct Observed {
    pub now: DateTime<Utc>,
    /// A new refresh token was just imported and has not been used yet.
    pub imported: bool,
    /// `metadata.generation` differs from the generation the current token was issued for.
    pub spec_changed: bool,
    /// The current access token's scheduled refresh, if there is a token.
    pub token_refresh_at: Option<DateTime<Utc>>,
    /// The next attempt after the most recent failure, if a failure happened after the current
    /// token was issued.
    pub retry_at: Option<DateTime<Utc>>,
    /// A refresh asked for with the annotation, and allowed by [`refresh_request`].
    pub requested: bool,
}

/// Decides whether to request a token now.
///
/// A failure's backoff wins over everything but a fresh import, a spec change or a refresh asked
/// for, which are user actions that deserve an immediate attempt (a request is rate-limited by
/// [`refresh_request`] instead).
pub fn decide(observed: &Observed) -> Decision {
    if observed.imported {
        return Decision::RefreshNow(RefreshReason::Imported);
    }
    if observed.spec_changed {
        return Decision::RefreshNow(RefreshReason::SpecChanged);
    }
    if observed.requested {
        return Decision::RefreshNow(RefreshReason::Requested);
    }
    if let Some(retry_at) = observed.retry_at {
        return due_or_wait(observed.now, retry_at, RefreshReason::Due);
    }
    match observed.token_refresh_at {
        None => Decision::RefreshNow(RefreshReason::NoToken),
        Some(at) => due_or_wait(observed.now, at, RefreshReason::Due),
    }
}

fn due_or_wait(now: DateTime<Utc>, at: DateTime<Utc>, reason: RefreshReason) -> Decision {
    if at <= now {
        Decision::RefreshNow(reason)
    } else {
        Decision::WaitUntil(at)
    }
}

/// What to do with a refresh asked for with the annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestVerdict {
    /// Refresh now.
    Refresh,
    /// The last token request was at `last`, within `spec.minRefreshInterval`: acknowledge
    /// without a new request. A consumer that crash-loops on a 401 must not become a refresh
    /// storm at the provider.
    TooSoon { last: DateTime<Utc> },
}

/// Whether a requested refresh may go out: not within `min_interval` of the last token request,
/// successful (`last_refresh`) or failed (`last_failure`).
pub fn refresh_request(
    now: DateTime<Utc>,
    last_refresh: Option<DateTime<Utc>>,
    last_failure: Option<DateTime<Utc>>,
    min_interval: Duration,
) -> RequestVerdict {
    match last_refresh.max(last_failure) {
        Some(last)
            if last
                .checked_add_signed(delta(min_interval))
                .is_none_or(|end| now < end) =>
        {
            RequestVerdict::TooSoon { last }
        }
        _ => RequestVerdict::Refresh,
    }
}

/// When the refresh token's expiry warning begins: `warning` before `expires_at`.
pub fn expiry_warning_at(expires_at: DateTime<Utc>, warning: Duration) -> DateTime<Utc> {
    expires_at
        .checked_sub_signed(delta(warning))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// A `Duration` as a `TimeDelta`, saturating at `TimeDelta::MAX`.
fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

/// `value` times `factor`, with `factor` clamped to `[0, 1]` (NaN counts as 0), to the
/// millisecond.
fn scale(value: TimeDelta, factor: f64) -> TimeDelta {
    let factor = if factor.is_nan() {
        0.0
    } else {
        factor.clamp(0.0, 1.0)
    };
    // The float to integer cast saturates, and `try_milliseconds` refuses only `i64::MIN`.
    let milliseconds = (value.num_milliseconds() as f64 * factor) as i64;
    TimeDelta::try_milliseconds(milliseconds).unwrap_or(if milliseconds < 0 {
        TimeDelta::MIN
    } else {
        TimeDelta::MAX
    })
}

/// Drops sub-second precision: status timestamps are RFC 3339 seconds.
pub fn truncate_to_seconds(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at)
}

/// Parses a duration such as `15m`, `1h30m`, `90s` or `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration".to_string());
    }
    humantime::parse_duration(trimmed)
        .map_err(|_| format!("{text:?} is not a duration such as 15m, 1h30m or 90s"))
}

/// Longest sleep between two looks at one OAuthToken: a missed watch event then costs at most
/// this long, and the runtime's delay queue is never handed years.
pub const MAX_REQUEUE: Duration = Duration::from_secs(3600);
/// How long to wait before looking again at an OAuthToken that a user must fix, in case a watch
/// event for the fix was missed.
pub const BLOCKED_RECHECK: Duration = Duration::from_secs(300);
/// Share of a long requeue that is random: OAuthTokens created together (a cold start of
/// thousands) must not all wake up in the same second an hour later.
const LONG_REQUEUE_JITTER: f64 = 0.1;
/// Waking this long after a due time absorbs timer rounding: waking early costs a second
/// reconcile, waking late delays the refresh.
const WAKE_MARGIN: Duration = Duration::from_millis(20);

/// How long to sleep before the next look at an OAuthToken that is due at `until` (`None`: only
/// a user can unblock it). A due time within the hour is kept exactly: refresh times carry their
/// own jitter. Long sleeps are shortened by up to a tenth, at random (`jitter_unit` in `[0, 1)`).
pub fn requeue_after(
    until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    jitter_unit: f64,
) -> Duration {
    let jittered = |sleep: Duration| {
        sleep.saturating_sub(sleep.mul_f64(LONG_REQUEUE_JITTER * jitter_unit.clamp(0.0, 1.0)))
    };
    match until {
        Some(at) => {
            let wait = (at - now).to_std().unwrap_or_default() + WAKE_MARGIN;
            if wait >= MAX_REQUEUE {
                jittered(MAX_REQUEUE)
            } else {
                wait
            }
        }
        None => jittered(BLOCKED_RECHECK),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn expiry_prefers_expires_in_then_jwt_then_default() {
        assert_eq!(
            token_expiry(t(0), Some(secs(3600)), Some(t(99)), secs(60)),
            (t(3600), ExpirySource::ExpiresIn)
        );
        assert_eq!(
            token_expiry(t(0), None, Some(t(900)), secs(60)),
            (t(900), ExpirySource::JwtExp)
        );
        assert_eq!(
            token_expiry(t(0), None, None, secs(60)),
            (t(60), ExpirySource::DefaultLifetime)
        );
        // A JWT that is already expired by the provider's own claim cannot schedule anything.
        assert_eq!(
            token_expiry(t(0), None, Some(t(-5)), secs(60)),
            (t(60), ExpirySource::DefaultLifetime)
        );
    }

    #[test]
    fn default_policy_refreshes_when_a_third_remains() {
        assert_eq!(
            refresh_at(t(0), t(3000), RefreshPolicy::default(), 0.0),
            t(2010)
        );
    }

    #[test]
    fn refresh_before_is_a_fixed_lead() {
        let at = refresh_at(t(0), t(3600), RefreshPolicy::Before(secs(900)), 0.0);
        assert_eq!(at, t(2700));
    }

    #[test]
    fn a_lead_longer_than_the_lifetime_falls_back_to_a_third() {
        let at = refresh_at(t(0), t(600), RefreshPolicy::Before(secs(900)), 0.0);
        assert_eq!(at, t(400));
    }

    #[test]
    fn percentage_of_lifetime() {
        let at = refresh_at(t(0), t(1000), RefreshPolicy::RemainingPercent(50), 0.0);
        assert_eq!(at, t(500));
        let at = refresh_at(t(0), t(1000), RefreshPolicy::RemainingPercent(10), 0.0);
        assert_eq!(at, t(900));
    }

    #[test]
    fn jitter_moves_earlier_by_at_most_a_tenth_of_the_lead() {
        let policy = RefreshPolicy::Before(secs(900));
        let none = refresh_at(t(0), t(3600), policy, 0.0);
        let most = refresh_at(t(0), t(3600), policy, 0.999_999);
        assert!(most < none);
        assert!(none - most <= TimeDelta::seconds(90));
        assert!(none - most >= TimeDelta::seconds(89));
        // Long leads cap the jitter at five minutes.
        let long = RefreshPolicy::Before(secs(86_400));
        let spread =
            refresh_at(t(0), t(864_000), long, 0.0) - refresh_at(t(0), t(864_000), long, 0.999_999);
        assert!(spread <= TimeDelta::seconds(300));
    }

    #[test]
    fn same_inputs_give_the_same_schedule() {
        let policy = RefreshPolicy::default();
        assert_eq!(
            refresh_at(t(0), t(3600), policy, 0.42),
            refresh_at(t(0), t(3600), policy, 0.42)
        );
    }

    #[test]
    fn tiny_lifetimes_cannot_cause_a_hot_loop() {
        let at = refresh_at(t(0), t(0), RefreshPolicy::default(), 0.5);
        assert_eq!(at, t(0));
        let at = refresh_at(t(0), t(2), RefreshPolicy::RemainingPercent(99), 0.5);
        assert_eq!(at, t(1));
    }

    #[test]
    fn absurd_lifetimes_are_clamped_to_a_year() {
        let year = secs(365 * 24 * 3600);
        assert_eq!(MAX_TOKEN_LIFETIME, year);
        let end = t(365 * 24 * 3600);
        assert_eq!(
            token_expiry(t(0), Some(secs(1_000_000_000_000_000)), None, secs(60)),
            (end, ExpirySource::ExpiresIn)
        );
        assert_eq!(
            token_expiry(t(0), Some(Duration::MAX), None, secs(60)),
            (end, ExpirySource::ExpiresIn)
        );
        assert_eq!(
            token_expiry(t(0), None, None, Duration::MAX),
            (end, ExpirySource::DefaultLifetime)
        );
        // A year is kept as it is.
        assert_eq!(
            token_expiry(t(0), Some(year), None, secs(60)),
            (end, ExpirySource::ExpiresIn)
        );
        // With a year-long lifetime the default policy refreshes when a third remains.
        assert_eq!(
            refresh_at(t(0), end, RefreshPolicy::default(), 0.0),
            t(21_129_120)
        );
    }

    #[test]
    fn a_jwt_exp_of_i64_max_is_clamped_to_a_year() {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = format!(
            "{}.{}.sig",
            engine.encode("{}"),
            engine.encode(format!(r#"{{"exp":{}}}"#, i64::MAX))
        );
        let exp = crate::oauth::jwt::expiry(&token);
        assert_eq!(exp, Some(DateTime::<Utc>::MAX_UTC));
        assert_eq!(
            token_expiry(t(0), None, exp, secs(60)),
            (t(365 * 24 * 3600), ExpirySource::JwtExp)
        );
        // An exp within the year is kept.
        assert_eq!(
            token_expiry(t(0), None, Some(t(7200)), secs(60)),
            (t(7200), ExpirySource::JwtExp)
        );
    }

    #[test]
    fn clocks_at_chronos_limits_saturate() {
        let max = DateTime::<Utc>::MAX_UTC;
        let min = DateTime::<Utc>::MIN_UTC;
        assert_eq!(
            token_expiry(max, Some(secs(3600)), None, secs(60)),
            (max, ExpirySource::ExpiresIn)
        );
        assert_eq!(
            token_expiry(max - TimeDelta::seconds(10), None, Some(max), secs(60)),
            (max, ExpirySource::JwtExp)
        );
        assert_eq!(
            token_expiry(min, None, Some(max), secs(60)).0,
            min + TimeDelta::days(365)
        );
        for policy in [
            RefreshPolicy::default(),
            RefreshPolicy::Before(Duration::MAX),
            RefreshPolicy::Before(secs(1)),
            RefreshPolicy::RemainingPercent(99),
        ] {
            for jitter in [0.0, 0.5, 1.0, f64::NAN, f64::NEG_INFINITY] {
                let at = refresh_at(min, max, policy, jitter);
                assert!(at > min && at < max, "{policy:?} {jitter}");
                assert_eq!(
                    refresh_at(max, max, policy, jitter),
                    truncate_to_seconds(max)
                );
                assert_eq!(refresh_at(min, min, policy, jitter), min);
                assert_eq!(
                    refresh_at(max, min, policy, jitter),
                    truncate_to_seconds(max)
                );
                let near = max - TimeDelta::milliseconds(1500);
                assert!(refresh_at(near, max, policy, jitter) >= truncate_to_seconds(near));
            }
        }
    }

    #[test]
    fn odd_jitter_draws_stay_within_the_range() {
        let policy = RefreshPolicy::Before(secs(900));
        let none = refresh_at(t(0), t(3600), policy, 0.0);
        assert_eq!(refresh_at(t(0), t(3600), policy, f64::NAN), none);
        assert_eq!(refresh_at(t(0), t(3600), policy, -3.0), none);
        assert_eq!(refresh_at(t(0), t(3600), policy, f64::INFINITY), t(2610));
    }

    #[test]
    fn transient_backoff_doubles_with_equal_jitter_and_a_cap() {
        let delays: Vec<u64> = (1..=8)
            .map(|n| failure_delay(FailureClass::Transient, n, None, 0.0).as_secs())
            .collect();
        assert_eq!(delays, vec![2, 5, 10, 20, 40, 80, 150, 150]);
        let max = failure_delay(FailureClass::Transient, 3, None, 0.999_999);
        assert!(max <= secs(20) && max >= secs(19));
        let capped = failure_delay(FailureClass::Transient, 1000, None, 0.999_999);
        assert!(capped <= TRANSIENT_BACKOFF_CAP);
    }

    #[test]
    fn retry_after_is_a_floor() {
        assert_eq!(
            failure_delay(FailureClass::Transient, 1, Some(secs(30)), 0.0),
            secs(30)
        );
        assert_eq!(
            failure_delay(FailureClass::Transient, 5, Some(secs(1)), 0.0),
            secs(40)
        );
    }

    #[test]
    fn dead_grants_are_retried_slowly() {
        let delay = failure_delay(FailureClass::ReauthorizationRequired, 1, None, 0.0);
        assert_eq!(delay, REAUTHORIZATION_RETRY_INTERVAL / 2);
        let slow = failure_delay(FailureClass::NeedsUserAction, 1, None, 0.0);
        assert_eq!(slow, secs(30));
    }

    fn observed() -> Observed {
        Observed {
            now: t(100),
            imported: false,
            spec_changed: false,
            token_refresh_at: Some(t(200)),
            retry_at: None,
            requested: false,
        }
    }

    #[test]
    fn a_requested_refresh_skips_the_wait_and_the_backoff() {
        let requested = Observed {
            requested: true,
            retry_at: Some(t(5000)),
            ..observed()
        };
        assert_eq!(
            decide(&requested),
            Decision::RefreshNow(RefreshReason::Requested)
        );
    }

    #[test]
    fn requests_within_the_minimum_interval_of_any_token_request_are_too_soon() {
        let interval = secs(10);
        assert_eq!(
            refresh_request(t(100), None, None, interval),
            RequestVerdict::Refresh
        );
        assert_eq!(
            refresh_request(t(105), Some(t(100)), None, interval),
            RequestVerdict::TooSoon { last: t(100) }
        );
        // A failed request counts: a consumer looping on 401s while the provider is down must
        // not hammer it either.
        assert_eq!(
            refresh_request(t(105), Some(t(50)), Some(t(99)), interval),
            RequestVerdict::TooSoon { last: t(99) }
        );
        assert_eq!(
            refresh_request(t(110), Some(t(100)), None, interval),
            RequestVerdict::Refresh
        );
        // Absurd intervals saturate instead of panicking.
        assert_eq!(
            refresh_request(t(110), Some(t(100)), None, Duration::MAX),
            RequestVerdict::TooSoon { last: t(100) }
        );
    }

    #[test]
    fn the_expiry_warning_begins_its_length_before_the_expiry() {
        assert_eq!(expiry_warning_at(t(1000), secs(100)), t(900));
        assert_eq!(
            expiry_warning_at(t(1000), Duration::MAX),
            DateTime::<Utc>::MIN_UTC
        );
    }

    #[test]
    fn waits_for_the_scheduled_refresh() {
        assert_eq!(decide(&observed()), Decision::WaitUntil(t(200)));
        let due = Observed {
            now: t(200),
            ..observed()
        };
        assert_eq!(decide(&due), Decision::RefreshNow(RefreshReason::Due));
    }

    #[test]
    fn no_token_means_refresh_now() {
        let none = Observed {
            token_refresh_at: None,
            ..observed()
        };
        assert_eq!(decide(&none), Decision::RefreshNow(RefreshReason::NoToken));
    }

    #[test]
    fn backoff_holds_even_without_a_token() {
        let backing_off = Observed {
            token_refresh_at: None,
            retry_at: Some(t(150)),
            ..observed()
        };
        assert_eq!(decide(&backing_off), Decision::WaitUntil(t(150)));
    }

    #[test]
    fn user_actions_skip_the_backoff() {
        let imported = Observed {
            imported: true,
            retry_at: Some(t(5000)),
            ..observed()
        };
        assert_eq!(
            decide(&imported),
            Decision::RefreshNow(RefreshReason::Imported)
        );
        let changed = Observed {
            spec_changed: true,
            retry_at: Some(t(5000)),
            ..observed()
        };
        assert_eq!(
            decide(&changed),
            Decision::RefreshNow(RefreshReason::SpecChanged)
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("15m"), Ok(secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(secs(5400)));
        assert_eq!(parse_duration("1h 30m"), Ok(secs(5400)));
        assert_eq!(parse_duration("90s"), Ok(secs(90)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5m").is_err());
    }

    #[test]
    fn due_times_are_kept_and_long_sleeps_are_spread() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let margin = Duration::from_millis(20);
        let soon = now + TimeDelta::seconds(90);
        for jitter in [0.0, 0.5, 0.999] {
            assert_eq!(
                requeue_after(Some(soon), now, jitter),
                Duration::from_secs(90) + margin
            );
        }
        assert_eq!(
            requeue_after(Some(now - TimeDelta::seconds(5)), now, 0.3),
            margin
        );
        let far = now + TimeDelta::days(30);
        assert_eq!(requeue_after(Some(far), now, 0.0), MAX_REQUEUE);
        assert_eq!(
            requeue_after(Some(far), now, 0.5),
            Duration::from_secs(3420)
        );
        assert_eq!(requeue_after(None, now, 0.0), BLOCKED_RECHECK);
        assert_eq!(requeue_after(None, now, 1.0), Duration::from_secs(270));
        // 10,000 long sleeps drawn uniformly spread over the last 6 minutes of the hour, not one second.
        let seconds: std::collections::BTreeSet<u64> = (0..10_000)
            .map(|i| requeue_after(Some(far), now, f64::from(i) / 10_000.0).as_secs())
            .collect();
        assert_eq!(seconds.len(), 361);
    }
}
