//! The refresh token's own expiry, and how it bounds the next refresh. Pure, like the rest of
//! [`crate::schedule`].

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{RefreshPolicy, delta, refresh_at, truncate_to_seconds};
use crate::oauth::MAX_REFRESH_TOKEN_LIFETIME;

/// When the refresh token held after a successful token request expires, or `None` when unknown.
///
/// - `stated`: the lifetime the provider gave in this answer (`refresh_expires_in`, ...). It
///   wins over everything, and counts from `requested_at` like `expires_in`.
/// - `configured`: `spec.refreshTokenLifetime`, counted from when the refresh token was issued:
///   `requested_at` when the answer carried a new refresh token (`new_token`).
/// - `previous`: the stored expiry. It stays when the provider neither rotated nor stated a
///   lifetime: the refresh token is the one it was computed for.
///
/// A new refresh token without a stated or configured lifetime has an unknown expiry: the old
/// token's expiry says nothing about it. Lifetimes are at most [`MAX_REFRESH_TOKEN_LIFETIME`];
/// the result is in whole seconds and saturates at the end of chrono's range.
pub fn refresh_token_expiry(
    requested_at: DateTime<Utc>,
    stated: Option<Duration>,
    configured: Option<Duration>,
    new_token: bool,
    previous: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    match (stated, new_token) {
        (Some(lifetime), _) => Some(refresh_token_expiry_after(requested_at, lifetime)),
        (None, true) => {
            configured.map(|lifetime| refresh_token_expiry_after(requested_at, lifetime))
        }
        (None, false) => previous,
    }
}

/// `issued_at` plus a refresh-token lifetime of at most [`MAX_REFRESH_TOKEN_LIFETIME`], in whole
/// seconds; saturates at the end of chrono's range. Also for an imported refresh token with
/// `spec.refreshTokenLifetime`, whose clock starts at the import.
pub fn refresh_token_expiry_after(issued_at: DateTime<Utc>, lifetime: Duration) -> DateTime<Utc> {
    let at = issued_at
        .checked_add_signed(delta(lifetime.min(MAX_REFRESH_TOKEN_LIFETIME)))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    truncate_to_seconds(at)
}

/// The refresh time of a new access token (`access_refresh_at`, from [`refresh_at`]), moved
/// earlier when the refresh token would otherwise die first.
///
/// Only for providers that rotate refresh tokens (`rotates`): there a refresh issues a new
/// refresh token and so outruns the old one's expiry. Without rotation an early refresh gains
/// nothing and would only shorten the interval as the fixed expiry approaches. The same policy
/// (and jitter draw) as for the access token decides how far ahead of the refresh token's
/// expiry. A refresh token already expired at `requested_at` changes nothing: the next refresh
/// finds out. The result lies between the truncated `requested_at` and `access_refresh_at`.
pub fn refresh_before_refresh_token_expiry(
    access_refresh_at: DateTime<Utc>,
    requested_at: DateTime<Utc>,
    refresh_token_expires_at: Option<DateTime<Utc>>,
    rotates: bool,
    policy: RefreshPolicy,
    jitter_unit: f64,
) -> DateTime<Utc> {
    match refresh_token_expires_at {
        Some(expires_at) if rotates && expires_at > requested_at => {
            access_refresh_at.min(refresh_at(requested_at, expires_at, policy, jitter_unit))
        }
        _ => access_refresh_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, TimeZone};

    fn t(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    const DAY: u64 = 86_400;

    #[test]
    fn the_providers_word_wins_over_the_spec_and_the_past() {
        for new_token in [true, false] {
            assert_eq!(
                refresh_token_expiry(
                    t(0),
                    Some(secs(1800)),
                    Some(secs(90 * DAY)),
                    new_token,
                    Some(t(5))
                ),
                Some(t(1800))
            );
        }
    }

    #[test]
    fn the_spec_lifetime_counts_from_a_new_refresh_token() {
        assert_eq!(
            refresh_token_expiry(t(0), None, Some(secs(90 * DAY)), true, Some(t(5))),
            Some(t(90 * DAY as i64))
        );
        // A new token whose lifetime nobody states: unknown, not the old token's expiry.
        assert_eq!(
            refresh_token_expiry(t(0), None, None, true, Some(t(5))),
            None
        );
    }

    #[test]
    fn without_rotation_and_without_a_stated_lifetime_the_expiry_stays() {
        assert_eq!(
            refresh_token_expiry(t(100), None, Some(secs(90 * DAY)), false, Some(t(5))),
            Some(t(5))
        );
        assert_eq!(
            refresh_token_expiry(t(100), None, Some(secs(90 * DAY)), false, None),
            None
        );
    }

    #[test]
    fn lifetimes_are_clamped_whole_seconds_and_never_overflow() {
        let start = t(0) + TimeDelta::milliseconds(999);
        assert_eq!(refresh_token_expiry_after(start, secs(60)), t(60));
        let max = TimeDelta::from_std(MAX_REFRESH_TOKEN_LIFETIME).unwrap();
        assert_eq!(refresh_token_expiry_after(t(0), Duration::MAX), t(0) + max);
        for at in [DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MIN_UTC] {
            for lifetime in [Duration::ZERO, secs(1), Duration::MAX] {
                let expiry = refresh_token_expiry(at, Some(lifetime), None, true, None).unwrap();
                assert!(expiry >= truncate_to_seconds(at), "{at} {lifetime:?}");
            }
        }
    }

    #[test]
    fn a_rotating_refresh_token_shorter_lived_than_the_access_token_is_refreshed_in_time() {
        let access = refresh_at(t(0), t(3600), RefreshPolicy::default(), 0.0);
        assert_eq!(access, t(2412));
        // The refresh token lives 30 minutes: refresh when 33 % of that remains.
        assert_eq!(
            refresh_before_refresh_token_expiry(
                access,
                t(0),
                Some(t(1800)),
                true,
                RefreshPolicy::default(),
                0.0
            ),
            t(1206)
        );
        // With refreshBefore, that lead before the refresh token's expiry.
        let policy = RefreshPolicy::Before(secs(600));
        let access = refresh_at(t(0), t(3600), policy, 0.0);
        assert_eq!(
            refresh_before_refresh_token_expiry(access, t(0), Some(t(1800)), true, policy, 0.0),
            t(1200)
        );
    }

    #[test]
    fn the_refresh_token_changes_nothing_when_it_outlives_the_plan_or_cannot_be_helped() {
        let policy = RefreshPolicy::default();
        let access = t(2412);
        let long = Some(t(90 * DAY as i64));
        assert_eq!(
            refresh_before_refresh_token_expiry(access, t(0), long, true, policy, 0.5),
            access
        );
        assert_eq!(
            refresh_before_refresh_token_expiry(access, t(0), None, true, policy, 0.0),
            access
        );
        // No rotation: refreshing early does not give a new refresh token.
        assert_eq!(
            refresh_before_refresh_token_expiry(access, t(0), Some(t(1800)), false, policy, 0.0),
            access
        );
        // Already expired: the next refresh as planned tells.
        for dead in [t(0), t(-60)] {
            assert_eq!(
                refresh_before_refresh_token_expiry(access, t(0), Some(dead), true, policy, 0.0),
                access
            );
        }
    }

    #[test]
    fn the_bound_stays_between_the_request_and_the_planned_refresh() {
        let policies = [
            RefreshPolicy::default(),
            RefreshPolicy::Before(Duration::ZERO),
            RefreshPolicy::Before(Duration::MAX),
            RefreshPolicy::RemainingPercent(0),
            RefreshPolicy::RemainingPercent(u8::MAX),
        ];
        let starts = [
            t(0) + TimeDelta::milliseconds(500),
            DateTime::<Utc>::MAX_UTC - TimeDelta::seconds(2),
        ];
        for requested_at in starts {
            let access = truncate_to_seconds(requested_at) + TimeDelta::seconds(1);
            for rt in [
                requested_at + TimeDelta::milliseconds(1),
                requested_at + TimeDelta::seconds(1),
                DateTime::<Utc>::MAX_UTC,
            ] {
                for policy in policies {
                    for jitter in [0.0, 0.999, f64::NAN, -1.0, f64::INFINITY] {
                        let at = refresh_before_refresh_token_expiry(
                            access,
                            requested_at,
                            Some(rt),
                            true,
                            policy,
                            jitter,
                        );
                        assert!(at <= access && at >= truncate_to_seconds(requested_at));
                    }
                }
            }
        }
    }
}
