//! End-to-end tests of kube-test-apiserver through the real kube-rs client.

mod crud;
mod extras;
mod lifecycle;
mod ssa_status;
mod table;
mod watch;

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, CustomResource, CustomResourceExt};
use kube_test_apiserver::{Options, TestApiServer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The test custom resource (namespaced, with a status subresource).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "test.example.com",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    shortname = "wd"
)]
pub struct WidgetSpec {
    pub size: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WidgetStatus {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

pub fn widget_crd_yaml() -> String {
    serde_yaml::to_string(&Widget::crd()).unwrap()
}

pub async fn client_for(server: &TestApiServer, namespace: &str) -> Client {
    let kc = Kubeconfig::from_yaml(&server.kubeconfig_yaml(namespace)).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

pub async fn start_with(opts: Options) -> (TestApiServer, Client) {
    let server = TestApiServer::start(Options {
        crds: vec![widget_crd_yaml()],
        ..opts
    })
    .await
    .unwrap();
    let client = client_for(&server, "default").await;
    (server, client)
}

pub async fn start() -> (TestApiServer, Client) {
    start_with(Options::default()).await
}

pub fn widget(name: &str, size: i32) -> Widget {
    Widget::new(name, WidgetSpec { size, color: None })
}

pub fn configmap(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.into());
    cm.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    cm.data = Some([("k".to_string(), "v".to_string())].into());
    cm
}

pub async fn create_cm(api: &Api<ConfigMap>, name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    api.create(&PostParams::default(), &configmap(name, labels))
        .await
        .unwrap()
}

/// Expect a `kube::Error::Api` with this code and reason.
#[track_caller]
pub fn assert_api_err<T: std::fmt::Debug>(
    r: kube::Result<T>,
    code: u16,
    reason: &str,
) -> Box<kube::core::Status> {
    match r {
        Err(kube::Error::Api(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (code, reason), "{e:?}");
            e
        }
        other => panic!("expected API error {code} {reason}, got {other:?}"),
    }
}

/// Poll `f` until it returns true (panics after `secs`).
pub async fn eventually<F, Fut>(secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn rv<K: kube::Resource>(o: &K) -> u64 {
    o.meta()
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}
