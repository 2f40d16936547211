//! Request budgets per token-endpoint origin (scheme, host, port): a token bucket shared by
//! every OAuthToken that sends to the origin, so that thousands of OAuthTokens on one provider
//! stay under its rate limit, and a `429`/`503` with `Retry-After` pauses the whole origin, not
//! only the OAuthToken that received it.
//!
//! Pure apart from a mutex: time is passed in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate and a burst.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    pub per_minute: u32,
    pub burst: u32,
}

impl Limit {
    fn per_second(&self) -> f64 {
        f64::from(self.per_minute.max(1)) / 60.0
    }

    fn burst(&self) -> f64 {
        f64::from(self.burst.max(1))
    }

    /// The stricter of two limits, field by field.
    fn min(self, other: Limit) -> Limit {
        Limit {
            per_minute: self.per_minute.min(other.per_minute),
            burst: self.burst.min(other.burst),
        }
    }
}

/// Whether a request may be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Send after this delay (zero: now); the slot is taken.
    After(Duration),
    /// Not within the longest acceptable wait: look again at this time. Nothing was taken.
    Deferred { until: Instant, paused: bool },
}

/// How long a limit declared by one OAuthToken keeps applying to its origin after that
/// OAuthToken last asked: a deleted OAuthToken's stricter limit does not apply forever.
const DECLARED_LIMIT_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
struct Bucket {
    available: f64,
    updated: Instant,
    paused_until: Option<Instant>,
    /// Limits declared by OAuthTokens (by UID), with when each last asked.
    declared: HashMap<String, (Limit, Instant)>,
}

/// The budgets of every origin seen.
#[derive(Debug)]
pub struct Budgets {
    default: Limit,
    /// Longest wait a request may be held for inside a reconcile; beyond it the OAuthToken is
    /// looked at again later instead.
    max_wait: Duration,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Budgets {
    pub fn new(default: Limit, max_wait: Duration) -> Budgets {
        Budgets {
            default,
            max_wait,
            buckets: Mutex::default(),
        }
    }

    pub fn default_limit(&self) -> Limit {
        self.default
    }

    /// Asks for one request to `origin` by the OAuthToken `uid`, which declares `limit` (or
    /// uses the default). When OAuthTokens on one origin declare different limits, the
    /// strictest applies.
    pub fn admit(&self, origin: &str, uid: &str, limit: Option<Limit>, now: Instant) -> Admission {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let default = self.default;
        let bucket = buckets.entry(origin.to_string()).or_insert_with(|| Bucket {
            available: limit.unwrap_or(default).burst(),
            updated: now,
            paused_until: None,
            declared: HashMap::new(),
        });
        match limit {
            Some(limit) => {
                bucket.declared.insert(uid.to_string(), (limit, now));
            }
            None => {
                bucket.declared.remove(uid);
            }
        }
        bucket
            .declared
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < DECLARED_LIMIT_TTL);
        let effective = bucket
            .declared
            .values()
            .map(|(limit, _)| *limit)
            .reduce(Limit::min)
            .unwrap_or(default);

        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.available =
            (bucket.available + elapsed * effective.per_second()).min(effective.burst());
        bucket.updated = now.max(bucket.updated);
        if let Some(until) = bucket.paused_until {
            if until > now {
                return Admission::Deferred {
                    until,
                    paused: true,
                };
            }
            bucket.paused_until = None;
        }
        let wait = Duration::from_secs_f64(
            ((1.0 - bucket.available).max(0.0) / effective.per_second()).min(86_400.0),
        );
        if wait <= self.max_wait {
            bucket.available -= 1.0;
            Admission::After(wait)
        } else {
            Admission::Deferred {
                until: now + wait,
                paused: false,
            }
        }
    }

    /// The origin answered `429` or `503`: no request goes there before `until`.
    pub fn pause(&self, origin: &str, until: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = buckets.get_mut(origin) {
            bucket.paused_until = Some(bucket.paused_until.map_or(until, |known| known.max(until)));
            // Nothing is saved up during the pause, and what was saved up before is not sent
            // the moment it ends.
            bucket.available = bucket.available.min(1.0);
            bucket.updated = bucket.updated.max(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "https://allegro.pl:443";

    fn budgets(per_minute: u32, burst: u32) -> Budgets {
        Budgets::new(Limit { per_minute, burst }, Duration::from_secs(1))
    }

    fn sent(admission: Admission) -> bool {
        matches!(admission, Admission::After(_))
    }

    #[test]
    fn a_burst_then_the_rate() {
        let budgets = budgets(60, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(
                budgets.admit(ORIGIN, "a", None, t0),
                Admission::After(Duration::ZERO)
            );
        }
        // The fourth waits for the next second, within the acceptable wait.
        assert_eq!(
            budgets.admit(ORIGIN, "a", None, t0),
            Admission::After(Duration::from_secs(1))
        );
        // The fifth would wait two seconds: looked at again later, nothing taken.
        assert_eq!(
            budgets.admit(ORIGIN, "a", None, t0),
            Admission::Deferred {
                until: t0 + Duration::from_secs(2),
                paused: false
            }
        );
        assert!(sent(budgets.admit(
            ORIGIN,
            "a",
            None,
            t0 + Duration::from_secs(2)
        )));
    }

    #[test]
    fn a_thousand_tokens_on_one_origin_never_exceed_its_limit() {
        // Allegro-like: at most 1,000 requests a minute; 5,000 OAuthTokens all due at once.
        let budgets = Budgets::new(
            Limit {
                per_minute: 1000,
                burst: 50,
            },
            Duration::from_secs(1),
        );
        let t0 = Instant::now();
        let mut sent_at = Vec::new();
        let mut due: Vec<(usize, Instant)> = (0..5000).map(|i| (i, t0)).collect();
        while let Some((i, at)) = due.pop() {
            match budgets.admit(ORIGIN, &i.to_string(), None, at) {
                Admission::After(wait) => sent_at.push(at + wait),
                Admission::Deferred { until, .. } => due.insert(0, (i, until)),
            }
        }
        sent_at.sort();
        // In every sliding minute, at most the rate plus the burst.
        for (k, start) in sent_at.iter().enumerate() {
            let in_minute = sent_at[k..]
                .iter()
                .take_while(|t| t.duration_since(*start) < Duration::from_secs(60))
                .count();
            assert!(in_minute <= 1050, "{in_minute} requests within a minute");
        }
        assert_eq!(sent_at.len(), 5000, "every request goes out eventually");
    }

    #[test]
    fn retry_after_pauses_the_whole_origin() {
        let budgets = budgets(6000, 100);
        let t0 = Instant::now();
        assert!(sent(budgets.admit(ORIGIN, "a", None, t0)));
        budgets.pause(ORIGIN, t0 + Duration::from_secs(30));
        assert_eq!(
            budgets.admit(ORIGIN, "b", None, t0 + Duration::from_secs(1)),
            Admission::Deferred {
                until: t0 + Duration::from_secs(30),
                paused: true
            }
        );
        assert!(sent(budgets.admit("https://other.test:443", "c", None, t0)));
        let after = t0 + Duration::from_secs(30);
        assert!(sent(budgets.admit(ORIGIN, "b", None, after)));
        // The saved-up burst is not released at once when the pause ends.
        assert!(!matches!(
            budgets.admit(ORIGIN, "b", None, after),
            Admission::After(Duration::ZERO)
        ));
    }

    #[test]
    fn the_strictest_declared_limit_applies_until_it_is_withdrawn() {
        let budgets = budgets(60_000, 1000);
        let t0 = Instant::now();
        let strict = Some(Limit {
            per_minute: 60,
            burst: 1,
        });
        assert!(sent(budgets.admit(ORIGIN, "strict", strict, t0)));
        // Another OAuthToken without its own limit shares the strict budget.
        assert!(matches!(
            budgets.admit(ORIGIN, "plain", None, t0),
            Admission::After(wait) if wait >= Duration::from_millis(999)
        ));
        // The strict OAuthToken drops its limit: the default applies again.
        assert!(sent(budgets.admit(
            ORIGIN,
            "strict",
            None,
            t0 + Duration::from_secs(2)
        )));
        for _ in 0..100 {
            assert!(sent(budgets.admit(
                ORIGIN,
                "plain",
                None,
                t0 + Duration::from_secs(3)
            )));
        }
    }
}
