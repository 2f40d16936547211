//! The Kubernetes client the operator uses: kube's default stack, or the same stack speaking
//! HTTP/2 to the API server, plus a layer that counts every request by verb and resource, so
//! the API cost of the operator is visible in production and measurable by the benchmark on any
//! cluster.
//!
//! kube 5 speaks HTTP/1.1 only (its connector offers no ALPN protocol and its hyper client is
//! built without HTTP/2: kube-client 5.0.0 `client/config_ext.rs` `enable_http1()` and its
//! Cargo features), so every request in flight holds a TLS connection of its own. With
//! [`HttpVersions::Http2`] the stack is built here from kube's public parts (its rustls
//! configuration, base URI, authentication, extra headers and retry policy) around a hyper
//! client that offers `h2` by ALPN, as client-go does: one connection carries every request in
//! flight. Watches keep a connection each over HTTP/1.1 (see `WatchesApart`). A server that
//! does not agree to `h2`, a plain `http://` server and a proxy get HTTP/1.1 as before.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ClientBuilder, ConfigExt, DynBody};
use kube::{Client, Config};
use tower::{BoxError, ServiceBuilder, ServiceExt as _};

use crate::metrics::{ApiRequestLabels, Metrics};

/// The HTTP versions the client offers the API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersions {
    /// HTTP/1.1 only: kube's own stack, a connection per request in flight.
    Http1,
    /// HTTP/2 where the server agrees to it by ALPN, else HTTP/1.1.
    Http2,
}

/// What the operator offers unless told otherwise (`--kube-api-http-version`).
pub const DEFAULT_HTTP_VERSIONS: HttpVersions = HttpVersions::Http1;

impl std::fmt::Display for HttpVersions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HttpVersions::Http1 => "1.1",
            HttpVersions::Http2 => "2",
        })
    }
}

impl std::str::FromStr for HttpVersions {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "2" | "2.0" => Ok(HttpVersions::Http2),
            "1.1" => Ok(HttpVersions::Http1),
            other => Err(format!("{other}: expected 2 or 1.1")),
        }
    }
}

/// How often an idle HTTP/2 connection is checked with a PING, and how long the answer may
/// take before the connection is dropped (client-go's `ReadIdleTimeout` and `PingTimeout`): with
/// every request on one connection, a connection that died silently must not go unnoticed.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(15);

/// Builds a client from `config` whose requests are counted in `metrics`.
pub fn counted_client(
    config: Config,
    metrics: Arc<Metrics>,
    versions: HttpVersions,
) -> Result<Client, kube::Error> {
    let counting = tower::util::MapRequestLayer::new(move |request: http::Request<Body>| {
        metrics
            .kube_api_requests
            .get_or_create(&classify(request.method(), request.uri()))
            .inc();
        request
    });
    Ok(client_builder(config, versions)?
        .with_layer(&counting)
        .build())
}

type Connector = hyper_timeout::TimeoutConnector<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
>;

/// kube's connector for `config` (TLS by rustls, its timeouts), offering `h2` by ALPN when
/// `h2`.
fn connector(config: &Config, h2: bool) -> Result<Connector, kube::Error> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    // Many streams share an HTTP/2 connection, so a small frame is often written while earlier
    // ones wait for their ACK: without TCP_NODELAY, Nagle's algorithm holds it back (Go, and so
    // client-go and the API server, set it on every connection).
    http.set_nodelay(true);
    let mut tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = name
            .clone()
            .try_into()
            .map_err(kube::client::RustlsTlsError::InvalidServerName)
            .map_err(kube::Error::RustlsTls)?;
        tls = tls.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let https = if h2 {
        tls.enable_http1().enable_http2().wrap_connector(http)
    } else {
        tls.enable_http1().wrap_connector(http)
    };
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    Ok(connector)
}

type HyperClient = hyper_util::client::legacy::Client<Connector, Body>;

/// Sends watches over `watches` (HTTP/1.1, a connection each) and every other request over
/// `requests` (HTTP/2 where agreed). A watch holds its stream for minutes, and the API server
/// allows a connection only so many at once (`--http2-max-streams-per-connection`: kube-apiserver
/// 1.36 announces 100); hyper, unlike Go, opens no second connection when they are taken but
/// queues new streams, so watches sharing the connection (3 per watched namespace) could leave
/// no stream for the requests. Requests always finish and give their stream back.
#[derive(Clone)]
struct WatchesApart {
    watches: HyperClient,
    requests: HyperClient,
}

impl tower::Service<http::Request<Body>> for WatchesApart {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // hyper's client is always ready: it queues in its pool.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if is_watch(request.uri()) {
            self.watches.request(request)
        } else {
            self.requests.request(request)
        }
    }
}

/// kube's client stack (the type of kube's own default stack, which it does not export).
pub type Stack =
    tower::util::BoxService<http::Request<Body>, http::Response<Box<DynBody>>, BoxError>;

/// kube's client stack for `config`, offering `versions`.
pub fn client_builder(
    config: Config,
    versions: HttpVersions,
) -> Result<ClientBuilder<Stack>, kube::Error> {
    if versions == HttpVersions::Http1 || config.proxy_url.is_some() {
        return ClientBuilder::try_from(config);
    }
    // What kube's `ClientBuilder::try_from` builds (kube-client 5, client/builder.rs), with
    // HTTP/2 enabled on the connector and the hyper client for every request but watches.
    // Left out: its tracing layer (debug spans per request) and the expiry of exec-plugin
    // client certificates, which the operator does not read.
    let requests = hyper_util::client::legacy::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .http2_keep_alive_interval(H2_PING_INTERVAL)
        .http2_keep_alive_timeout(H2_PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .build(connector(&config, true)?);
    let watches = hyper_util::client::legacy::Builder::new(TokioExecutor::new())
        .build(connector(&config, false)?);
    let hyper_client = WatchesApart { watches, requests };
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| tower::retry::RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(hyper_client)
        .map_response(|response| {
            response.map(|body| {
                Box::new(http_body_util::BodyExt::map_err(body, BoxError::from)) as Box<DynBody>
            })
        })
        .boxed();
    Ok(ClientBuilder::new(service, config.default_namespace))
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
    let watching = is_watch(uri);
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

/// Whether a request is a watch (`?watch=true`).
fn is_watch(uri: &http::Uri) -> bool {
    uri.query().is_some_and(|query| {
        form_urlencoded::parse(query.as_bytes())
            .any(|(key, value)| key == "watch" && (value == "true" || value == "1"))
    })
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
    fn http_versions_are_named_as_the_flag_takes_them() {
        for versions in [HttpVersions::Http1, HttpVersions::Http2] {
            assert_eq!(versions.to_string().parse(), Ok(versions));
        }
        assert_eq!("2.0".parse(), Ok(HttpVersions::Http2));
        assert!("3".parse::<HttpVersions>().is_err());
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
