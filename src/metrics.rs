//! Prometheus metrics (OpenMetrics text). Labels are static categories or the OAuthToken's
//! namespace and name: never a token, an error message or a URL.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::api::{OAuthTokenStatus, conditions};
use crate::oauth::{FailureKind, Issued, OAuthError};

/// Buckets of the token request histogram, in seconds: from fast answers to beyond the longest
/// sensible `--token-request-timeout` (default 30 s), so timeouts land in a bucket of their own.
pub const REQUEST_DURATION_BUCKETS: [f64; 16] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0,
];

/// The revision the binary was built from: `GIT_REVISION` at build time, else `unknown`.
pub const REVISION: &str = match option_env!("GIT_REVISION") {
    Some(revision) if !revision.is_empty() => revision,
    _ => "unknown",
};

/// Outcome of one token request, as counted.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RefreshResult {
    success,
    reauthorization_required,
    invalid_client,
    configuration_error,
    transient_error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: RefreshResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusClassLabels {
    /// `2xx`, `3xx`, `4xx`, `5xx`, or `none` when no complete answer arrived.
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeferredLabels {
    /// `budget`: the origin's request budget is used up; `retry_after`: the origin answered
    /// 429/503 and is paused.
    pub reason: &'static str,
}

/// A request to the Kubernetes API: see [`crate::apiclient::classify`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    pub verb: &'static str,
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    pub category: &'static str,
}

/// Every metric the operator exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    pub refresh_attempts: Family<ResultLabels, Counter>,
    pub refresh_duration: Histogram,
    pub endpoint_responses: Family<StatusClassLabels, Counter>,
    /// The per-token gauges.
    per_token: Arc<TokenSeries>,
    pub reconcile_errors: Family<CategoryLabels, Counter>,
    pub kube_api_requests: Family<ApiRequestLabels, Counter>,
    pub refreshes_deferred: Family<DeferredLabels, Counter>,
    /// 1 while this replica holds the leader Lease or runs without leader election.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("oauth_token_operator");
        let refresh_attempts = Family::<ResultLabels, Counter>::default();
        registry.register(
            "refresh_attempts",
            "Token requests by result",
            refresh_attempts.clone(),
        );
        registry.register(
            "build",
            "Version and source revision of the running binary",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("revision", REVISION),
            ]),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease or runs without leader election, else 0",
            leader.clone(),
        );
        let refresh_duration = Histogram::new(REQUEST_DURATION_BUCKETS);
        registry.register(
            "refresh_duration_seconds",
            "Duration of token requests, from sending to a classified answer",
            refresh_duration.clone(),
        );
        let endpoint_responses = Family::<StatusClassLabels, Counter>::default();
        registry.register(
            "token_endpoint_responses",
            "Token endpoint answers by HTTP status class (none: no complete answer)",
            endpoint_responses.clone(),
        );
        let per_token = Arc::new(TokenSeries::default());
        registry.register_collector(Box::new(per_token.clone()));
        let reconcile_errors = Family::<CategoryLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed on the Kubernetes API, by category",
            reconcile_errors.clone(),
        );
        let kube_api_requests = Family::<ApiRequestLabels, Counter>::default();
        registry.register(
            "kube_api_requests",
            "Requests sent to the Kubernetes API, by verb and resource",
            kube_api_requests.clone(),
        );
        let refreshes_deferred = Family::<DeferredLabels, Counter>::default();
        registry.register(
            "refreshes_deferred",
            "Due refreshes put off because the token endpoint's origin was out of budget or paused by Retry-After",
            refreshes_deferred.clone(),
        );
        Metrics {
            registry,
            kube_api_requests,
            refreshes_deferred,
            refresh_attempts,
            refresh_duration,
            endpoint_responses,
            per_token,
            reconcile_errors,
            leader,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// Counts a due refresh put off for its origin's budget (`paused`: by a Retry-After).
    pub fn count_deferred(&self, paused: bool) {
        let reason = if paused { "retry_after" } else { "budget" };
        self.refreshes_deferred
            .get_or_create(&DeferredLabels { reason })
            .inc();
    }

    /// Counts one token request: its outcome, latency and HTTP status class.
    pub fn observe_request(&self, result: &Result<Issued, OAuthError>, elapsed: Duration) {
        self.refresh_duration.observe(elapsed.as_secs_f64());
        let failure = |error: &OAuthError| match error.kind() {
            FailureKind::ReauthorizationRequired => RefreshResult::reauthorization_required,
            FailureKind::InvalidClient => RefreshResult::invalid_client,
            FailureKind::Configuration => RefreshResult::configuration_error,
            FailureKind::Transient => RefreshResult::transient_error,
        };
        let (outcome, status) = match result {
            Ok(issued) => match &issued.access {
                Ok(_) => (RefreshResult::success, Some(issued.status)),
                // A 2xx answer without a usable access token.
                Err(error) => (failure(error), Some(issued.status)),
            },
            Err(error) => (failure(error), error.http_status()),
        };
        self.count_attempt(outcome);
        self.count_response(status);
    }

    fn count_attempt(&self, result: RefreshResult) {
        self.refresh_attempts
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    fn count_response(&self, status: Option<u16>) {
        let status_class = match status {
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            _ => "none",
        };
        self.endpoint_responses
            .get_or_create(&StatusClassLabels { status_class })
            .inc();
    }

    /// Sets the per-token gauges from a status.
    pub fn observe_status(&self, namespace: &str, name: &str, status: &OAuthTokenStatus) {
        let figures = TokenFigures {
            ready: conditions::is_true(&status.conditions, conditions::READY),
            reauthorization_required: conditions::is_true(
                &status.conditions,
                conditions::REAUTHORIZATION_REQUIRED,
            ),
            access_token_expiry: status.expires_at.map(|at| at.timestamp()),
            refresh_token_expiry: status.refresh_token_expires_at.map(|at| at.timestamp()),
            refresh_token_expiring: conditions::get(
                &status.conditions,
                conditions::REFRESH_TOKEN_EXPIRING,
            )
            .map(|c| c.status == conditions::TRUE),
            last_successful_refresh: status.last_refresh_at.map(|at| at.timestamp()),
            next_refresh: status.next_refresh_at.map(|at| at.timestamp()),
        };
        let mut tokens = self.per_token.write();
        match tokens.get_mut(&(namespace, name) as &dyn TokenKey) {
            Some(known) => *known = figures,
            None => {
                tokens.insert((namespace.into(), name.into()), figures);
            }
        }
    }

    /// `(namespace, name)` of every OAuthToken that has per-token series.
    pub fn tokens(&self) -> Vec<(String, String)> {
        self.per_token
            .read()
            .keys()
            .map(|(namespace, name)| (namespace.to_string(), name.to_string()))
            .collect()
    }

    /// Drops the per-token series of a deleted OAuthToken.
    pub fn forget_token(&self, namespace: &str, name: &str) {
        self.per_token
            .write()
            .remove(&(namespace, name) as &dyn TokenKey);
    }
}

/// What the per-token gauges say about one OAuthToken.
#[derive(Clone, Copy, Debug, PartialEq)]
struct TokenFigures {
    ready: bool,
    reauthorization_required: bool,
    access_token_expiry: Option<i64>,
    refresh_token_expiry: Option<i64>,
    /// `None` for grants without refresh tokens (no such condition).
    refresh_token_expiring: Option<bool>,
    last_successful_refresh: Option<i64>,
    next_refresh: Option<i64>,
}

/// The per-token gauges, kept once per OAuthToken and written out at scrape time: one entry
/// per OAuthToken instead of one labelled series in each of six families, a few hundred bytes
/// less per OAuthToken.
#[derive(Debug, Default)]
struct TokenSeries {
    tokens: RwLock<TokenMap>,
}

/// Looks up `(Box<str>, Box<str>)` keys with borrowed `(&str, &str)`.
trait TokenKey {
    fn key(&self) -> (&str, &str);
}

impl TokenKey for (Box<str>, Box<str>) {
    fn key(&self) -> (&str, &str) {
        (&self.0, &self.1)
    }
}

impl TokenKey for (&str, &str) {
    fn key(&self) -> (&str, &str) {
        (self.0, self.1)
    }
}

impl<'a> std::borrow::Borrow<dyn TokenKey + 'a> for (Box<str>, Box<str>) {
    fn borrow(&self) -> &(dyn TokenKey + 'a) {
        self
    }
}

impl PartialEq for dyn TokenKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for dyn TokenKey + '_ {}

impl PartialOrd for dyn TokenKey + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn TokenKey + '_ {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

type TokenMap = BTreeMap<(Box<str>, Box<str>), TokenFigures>;

impl TokenSeries {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, TokenMap> {
        self.tokens.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, TokenMap> {
        self.tokens.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A per-token gauge: its name, help and value.
type PerTokenGauge = (&'static str, &'static str, fn(&TokenFigures) -> Option<i64>);

const PER_TOKEN_GAUGES: [PerTokenGauge; 7] = [
    (
        "ready",
        "1 when the OAuthToken's Ready condition is True, else 0",
        |f| Some(i64::from(f.ready)),
    ),
    (
        "reauthorization_required",
        "1 when the OAuthToken's ReauthorizationRequired condition is True, else 0",
        |f| Some(i64::from(f.reauthorization_required)),
    ),
    (
        "access_token_expiry_timestamp_seconds",
        "When the published access token expires, as a Unix timestamp",
        |f| f.access_token_expiry,
    ),
    (
        "refresh_token_expiry_timestamp_seconds",
        "When the refresh token expires, as a Unix timestamp; only when the provider states its lifetime or spec.refreshTokenLifetime gives it",
        |f| f.refresh_token_expiry,
    ),
    (
        "refresh_token_expiring",
        "1 when the OAuthToken's RefreshTokenExpiring condition is True (the refresh token expires within spec.refreshTokenExpiryWarning), else 0; only for grants with refresh tokens",
        |f| f.refresh_token_expiring.map(i64::from),
    ),
    (
        "last_successful_refresh_timestamp_seconds",
        "When an access token was last obtained successfully, as a Unix timestamp",
        |f| f.last_successful_refresh,
    ),
    (
        "next_refresh_timestamp_seconds",
        "When the operator will next request a token, as a Unix timestamp",
        |f| f.next_refresh,
    ),
];

impl Collector for TokenSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let tokens = self.read();
        for (name, help, value) in PER_TOKEN_GAUGES {
            // A gauge without any series is left out, as an empty family would be.
            if !tokens.values().any(|figures| value(figures).is_some()) {
                continue;
            }
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for ((namespace, token), figures) in tokens.iter() {
                if let Some(value) = value(figures) {
                    let labels = [("namespace", &**namespace), ("name", &**token)];
                    ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn exposition_has_the_documented_series() {
        let metrics = Metrics::default();
        metrics.count_attempt(RefreshResult::success);
        metrics.count_attempt(RefreshResult::reauthorization_required);
        metrics.count_response(Some(200));
        metrics.count_response(None);
        metrics.refresh_duration.observe(0.2);
        metrics.observe_status("shop", "allegro", &status(true, false));
        let mut with_refresh_expiry = status(true, false);
        with_refresh_expiry.refresh_token_expires_at =
            chrono::DateTime::from_timestamp(1_707_776_000, 0);
        conditions::set(
            &mut with_refresh_expiry.conditions,
            conditions::REFRESH_TOKEN_EXPIRING,
            conditions::TRUE,
            "ExpiresSoon",
            "m".to_string(),
            None,
            chrono::Utc::now(),
        );
        metrics.observe_status("shop", "mercadolibre", &with_refresh_expiry);
        metrics.leader.set(1);
        let text = metrics.encode();
        for expected in [
            "oauth_token_operator_refresh_attempts_total{result=\"success\"} 1",
            "oauth_token_operator_refresh_attempts_total{result=\"reauthorization_required\"} 1",
            "oauth_token_operator_token_endpoint_responses_total{status_class=\"2xx\"} 1",
            "oauth_token_operator_token_endpoint_responses_total{status_class=\"none\"} 1",
            "oauth_token_operator_refresh_duration_seconds_count 1",
            "oauth_token_operator_ready{namespace=\"shop\",name=\"allegro\"} 1",
            "oauth_token_operator_access_token_expiry_timestamp_seconds{namespace=\"shop\",name=\"allegro\"} 1700000000",
            "oauth_token_operator_last_successful_refresh_timestamp_seconds{namespace=\"shop\",name=\"allegro\"} 1699996400",
            "oauth_token_operator_next_refresh_timestamp_seconds{namespace=\"shop\",name=\"allegro\"} 1699998800",
            "oauth_token_operator_reauthorization_required{namespace=\"shop\",name=\"allegro\"} 0",
            "# TYPE oauth_token_operator_refresh_token_expiry_timestamp_seconds gauge",
            "oauth_token_operator_refresh_token_expiry_timestamp_seconds{namespace=\"shop\",name=\"mercadolibre\"} 1707776000",
            "oauth_token_operator_refresh_token_expiring{namespace=\"shop\",name=\"mercadolibre\"} 1",
            "oauth_token_operator_leader 1",
            "oauth_token_operator_build_info{version=\"",
            "oauth_token_operator_refresh_duration_seconds_bucket{le=\"60.0\"} 1",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        assert!(
            !text.contains(
                "oauth_token_operator_refresh_token_expiry_timestamp_seconds{namespace=\"shop\",name=\"allegro\"}"
            ),
            "no series while the refresh token's expiry is unknown"
        );
        assert!(
            !text.contains(
                "oauth_token_operator_refresh_token_expiring{namespace=\"shop\",name=\"allegro\"}"
            ),
            "no series without the condition (a grant without refresh tokens)"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_refresh_token_expiry_that_becomes_unknown_drops_its_series() {
        let metrics = Metrics::default();
        let mut known = status(true, false);
        known.refresh_token_expires_at = chrono::DateTime::from_timestamp(1_707_776_000, 0);
        metrics.observe_status("shop", "allegro", &known);
        let series = "oauth_token_operator_refresh_token_expiry_timestamp_seconds{namespace=\"shop\",name=\"allegro\"}";
        assert!(metrics.encode().contains(series));
        metrics.observe_status("shop", "allegro", &status(true, false));
        assert!(!metrics.encode().contains(series));
        metrics.observe_status("shop", "allegro", &known);
        metrics.forget_token("shop", "allegro");
        assert!(!metrics.encode().contains("allegro"));
    }

    #[test]
    fn deleted_tokens_leave_no_series() {
        let metrics = Metrics::default();
        metrics.observe_status("shop", "allegro", &status(false, true));
        assert!(metrics.encode().contains(
            "oauth_token_operator_reauthorization_required{namespace=\"shop\",name=\"allegro\"} 1"
        ));
        assert_eq!(
            metrics.tokens(),
            [("shop".to_string(), "allegro".to_string())]
        );
        metrics.forget_token("shop", "allegro");
        assert!(!metrics.encode().contains("allegro"));
        assert!(metrics.tokens().is_empty());
    }

    /// Metric names in the exposition as a PromQL query names them: counters with `_total`,
    /// info metrics with `_info`, histograms by their base name.
    fn exported_names(text: &str) -> BTreeSet<String> {
        text.lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .map(|rest| {
                let mut parts = rest.split(' ');
                let name = parts.next().unwrap_or_default();
                match parts.next() {
                    Some("counter") => format!("{name}_total"),
                    Some("info") => format!("{name}_info"),
                    _ => name.to_string(),
                }
            })
            .collect()
    }

    #[test]
    fn readme_and_chart_check_name_every_exported_metric_and_no_other() {
        let metrics = Metrics::default();
        let mut status = status(true, false);
        status.refresh_token_expires_at = status.expires_at;
        conditions::set(
            &mut status.conditions,
            conditions::REFRESH_TOKEN_EXPIRING,
            conditions::TRUE,
            "ExpiresSoon",
            "m".to_string(),
            None,
            chrono::Utc::now(),
        );
        metrics.observe_status("shop", "allegro", &status);
        // Families without series are not in the exposition at all.
        metrics.count_attempt(RefreshResult::success);
        metrics.count_response(Some(200));
        metrics
            .reconcile_errors
            .get_or_create(&CategoryLabels { category: "test" })
            .inc();
        metrics
            .kube_api_requests
            .get_or_create(&ApiRequestLabels {
                verb: "get",
                resource: "secrets".to_string(),
            })
            .inc();
        metrics.count_deferred(false);
        let exported = exported_names(&metrics.encode());
        assert!(exported.contains("oauth_token_operator_refresh_token_expiry_timestamp_seconds"));

        let readme = include_str!("../README.md");
        let documented: BTreeSet<String> = readme
            .lines()
            .filter_map(|line| line.strip_prefix("| `oauth_token_operator_"))
            .filter_map(|rest| rest.split('`').next())
            .map(|name| format!("oauth_token_operator_{name}"))
            .collect();
        assert_eq!(documented, exported, "README's metrics table");

        let check = include_str!("../.ci/chart_check.py");
        let list = check
            .split_once("METRICS = {")
            .and_then(|(_, rest)| rest.split_once('}'))
            .map(|(list, _)| list)
            .unwrap();
        let checked: BTreeSet<String> = list
            .split('"')
            .filter(|part| part.starts_with("oauth_token_operator_"))
            .map(str::to_string)
            .collect();
        assert_eq!(checked, exported, ".ci/chart_check.py METRICS");
    }

    #[test]
    fn request_buckets_reach_beyond_the_request_timeout() {
        assert!(REQUEST_DURATION_BUCKETS.last().copied().unwrap() >= 60.0);
        assert!(REQUEST_DURATION_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    fn status(ready: bool, reauthorize: bool) -> OAuthTokenStatus {
        use chrono::TimeZone;
        let at = |s| Some(chrono::Utc.timestamp_opt(s, 0).unwrap());
        let mut status = OAuthTokenStatus {
            expires_at: at(1_700_000_000),
            last_refresh_at: at(1_699_996_400),
            next_refresh_at: at(1_699_998_800),
            ..OAuthTokenStatus::default()
        };
        let now = chrono::Utc::now();
        let flag = |b: bool| {
            if b {
                conditions::TRUE
            } else {
                conditions::FALSE
            }
        };
        conditions::set(
            &mut status.conditions,
            conditions::READY,
            flag(ready),
            "R",
            "m".to_string(),
            None,
            now,
        );
        conditions::set(
            &mut status.conditions,
            conditions::REAUTHORIZATION_REQUIRED,
            flag(reauthorize),
            "R",
            "m".to_string(),
            None,
            now,
        );
        status
    }
}
