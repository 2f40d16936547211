//! Prometheus metrics (OpenMetrics text). Labels are static categories or the OAuthToken's
//! namespace and name: never a token, an error message or a URL.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::oauth::{FailureKind, Issued, OAuthError};

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
    pub access_token_expiry: Family<TokenLabels, Gauge<f64, AtomicU64>>,
    pub ready: Family<TokenLabels, Gauge>,
    pub reconcile_errors: Family<CategoryLabels, Counter>,
    pub kube_api_requests: Family<ApiRequestLabels, Counter>,
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
        let refresh_duration = Histogram::new(exponential_buckets(0.01, 2.0, 12));
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
        let access_token_expiry = Family::<TokenLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "access_token_expiry_timestamp_seconds",
            "When the published access token expires, as a Unix timestamp",
            access_token_expiry.clone(),
        );
        let ready = Family::<TokenLabels, Gauge>::default();
        registry.register(
            "ready",
            "1 when the OAuthToken's Ready condition is True, else 0",
            ready.clone(),
        );
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
        Metrics {
            registry,
            kube_api_requests,
            refresh_attempts,
            refresh_duration,
            endpoint_responses,
            access_token_expiry,
            ready,
            reconcile_errors,
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
    pub fn observe_token(&self, namespace: &str, name: &str, ready: bool, expires_at: Option<i64>) {
        let labels = TokenLabels {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        self.ready.get_or_create(&labels).set(i64::from(ready));
        match expires_at {
            Some(at) => {
                self.access_token_expiry
                    .get_or_create(&labels)
                    .set(at as f64);
            }
            None => {
                self.access_token_expiry.remove(&labels);
            }
        }
    }

    /// Drops the per-token series of a deleted OAuthToken.
    pub fn forget_token(&self, namespace: &str, name: &str) {
        let labels = TokenLabels {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        self.ready.remove(&labels);
        self.access_token_expiry.remove(&labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_documented_series() {
        let metrics = Metrics::default();
        metrics.count_attempt(RefreshResult::success);
        metrics.count_attempt(RefreshResult::reauthorization_required);
        metrics.count_response(Some(200));
        metrics.count_response(None);
        metrics.refresh_duration.observe(0.2);
        metrics.observe_token("shop", "allegro", true, Some(1_700_000_000));
        let text = metrics.encode();
        for expected in [
            "oauth_token_operator_refresh_attempts_total{result=\"success\"} 1",
            "oauth_token_operator_refresh_attempts_total{result=\"reauthorization_required\"} 1",
            "oauth_token_operator_token_endpoint_responses_total{status_class=\"2xx\"} 1",
            "oauth_token_operator_token_endpoint_responses_total{status_class=\"none\"} 1",
            "oauth_token_operator_refresh_duration_seconds_count 1",
            "oauth_token_operator_ready{namespace=\"shop\",name=\"allegro\"} 1",
            "oauth_token_operator_access_token_expiry_timestamp_seconds{namespace=\"shop\",name=\"allegro\"} 1700000000",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn deleted_tokens_leave_no_series() {
        let metrics = Metrics::default();
        metrics.observe_token("shop", "allegro", false, None);
        metrics.forget_token("shop", "allegro");
        assert!(!metrics.encode().contains("allegro"));
    }
}
