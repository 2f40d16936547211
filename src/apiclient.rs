//! The Kubernetes client the operator uses: kube's default stack plus a layer that counts every
//! request by verb and resource, so the API cost of the operator is visible in production and
//! measurable by the benchmark on any cluster.
//!
//! kube's stack speaks HTTP/1.1 only, a connection per request in flight. HTTP/2 (offered by
//! ALPN, one connection for every request, as client-go does) was built from kube's public parts
//! and measured with the benchmark's bare writer on a real kube-apiserver: it did not make the
//! writes any faster (the API server and etcd are the limit), and its code made the binary
//! 2.6 MB and its RSS 1.6 MiB larger.

use std::sync::Arc;

use kube::client::{Body, ClientBuilder};
use kube::{Client, Config};

use crate::metrics::{ApiRequestLabels, Metrics};

/// Builds a client from `config` whose requests are counted in `metrics`.
pub fn counted_client(config: Config, metrics: Arc<Metrics>) -> Result<Client, kube::Error> {
    let counting = tower::util::MapRequestLayer::new(move |request: http::Request<Body>| {
        metrics
            .kube_api_requests
            .get_or_create(&classify(request.method(), request.uri()))
            .inc();
        request
    });
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&counting)
        .build())
}

/// The Kubernetes verb and resource of a request, from its method and path: `get`, `list`,
/// `watch`, `create`, `update`, `patch`, `delete`; the resource with its subresource
/// (`oauthtokens/status`). Label values come from a fixed vocabulary or the API path's resource
/// segment, never from object names.
pub fn classify(method: &http::Method, uri: &http::Uri) -> ApiRequestLabels {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/... or /apis/group/version/...
    let rest: &[&str] = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => &[],
    };
    let rest = match rest {
        ["namespaces", _namespace, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (resource, named) = match rest {
        [] => ("other".to_string(), false),
        [resource] => ((*resource).to_string(), false),
        [resource, _name] => ((*resource).to_string(), true),
        [resource, _name, subresource, ..] => (format!("{resource}/{subresource}"), true),
    };
    let watching = uri.query().is_some_and(|query| {
        form_urlencoded::parse(query.as_bytes())
            .any(|(key, value)| key == "watch" && (value == "true" || value == "1"))
    });
    let verb = match *method {
        http::Method::GET if watching => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if named => "delete",
        http::Method::DELETE => "deletecollection",
        _ => "other",
    };
    ApiRequestLabels { verb, resource }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(method: &str, uri: &str) -> (String, String) {
        let method = http::Method::from_bytes(method.as_bytes()).unwrap();
        let labels = classify(&method, &uri.parse().unwrap());
        (labels.verb.to_string(), labels.resource)
    }

    #[test]
    fn requests_are_classified_by_verb_and_resource() {
        let cases = [
            ("GET", "/api/v1/namespaces/shop/secrets/x", "get", "secrets"),
            (
                "GET",
                "/api/v1/namespaces/shop/secrets?limit=500",
                "list",
                "secrets",
            ),
            (
                "GET",
                "/api/v1/secrets?watch=true&resourceVersion=5",
                "watch",
                "secrets",
            ),
            (
                "PUT",
                "/api/v1/namespaces/shop/secrets/x",
                "update",
                "secrets",
            ),
            (
                "POST",
                "/api/v1/namespaces/shop/secrets",
                "create",
                "secrets",
            ),
            (
                "PATCH",
                "/apis/oauth-token-operator.io/v1alpha1/namespaces/shop/oauthtokens/a/status",
                "patch",
                "oauthtokens/status",
            ),
            (
                "POST",
                "/apis/events.k8s.io/v1/namespaces/shop/events",
                "create",
                "events",
            ),
            (
                "GET",
                "/apis/coordination.k8s.io/v1/namespaces/ops/leases/op",
                "get",
                "leases",
            ),
            ("GET", "/api/v1/namespaces/shop", "get", "namespaces"),
            ("GET", "/version", "list", "other"),
            (
                "DELETE",
                "/api/v1/namespaces/shop/secrets",
                "deletecollection",
                "secrets",
            ),
        ];
        for (method, uri, verb, resource) in cases {
            assert_eq!(
                labels(method, uri),
                (verb.to_string(), resource.to_string()),
                "{method} {uri}"
            );
        }
    }
}
