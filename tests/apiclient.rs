//! The Kubernetes client with `--kube-api-http-version 2`: requests and watches both work, and
//! go their own ways (requests over HTTP/2 where the server agrees to it, watches over HTTP/1.1).
//! Against the test API server (plain http://) both speak HTTP/1.1; with `E2E_KUBECONFIG`
//! pointing at a real cluster, requests speak HTTP/2.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client, Config};
use kube_test_apiserver::{Options, TestApiServer};
use oauth_token_operator::apiclient::{self, HttpVersions};
use serde_json::json;

/// A client built as the operator builds it, and the HTTP versions its answers came in.
async fn client(
    kubeconfig: &PathBuf,
    versions: HttpVersions,
) -> (Client, Arc<Mutex<Vec<http::Version>>>) {
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let noted = heard.clone();
    let layer = tower::util::MapResponseLayer::new(
        move |response: http::Response<Box<kube::client::DynBody>>| {
            noted.lock().unwrap().push(response.version());
            response
        },
    );
    let client = apiclient::client_builder(config, versions)
        .unwrap()
        .with_layer(&layer)
        .build();
    (client, heard)
}

#[tokio::test]
async fn requests_and_watches_go_their_own_ways_with_http2_offered() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, kubeconfig, real) = match std::env::var_os("E2E_KUBECONFIG") {
        Some(path) => (None, PathBuf::from(path), true),
        None => {
            let server = TestApiServer::start(Options::default()).await.unwrap();
            let path = dir.path().join("kubeconfig");
            server.write_kubeconfig(&path, "default").unwrap();
            (Some(server), path, false)
        }
    };
    let (client, heard) = client(&kubeconfig, HttpVersions::Http2).await;
    let namespace = format!("apiclient-{:05}", rand::random::<u32>() % 100_000);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap(),
        )
        .await
        .unwrap();
    let requests: Vec<http::Version> = std::mem::take(&mut heard.lock().unwrap());
    let expected = if real {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    assert_eq!(requests, vec![expected], "a request");

    // A watch sees what a request writes while it runs.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let stream = watcher(config_maps.clone(), watcher::Config::default());
    futures::pin_mut!(stream);
    let mut created = false;
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = stream.next().await {
            match event.unwrap() {
                watcher::Event::InitDone if !created => {
                    created = true;
                    config_maps
                        .create(
                            &PostParams::default(),
                            &serde_json::from_value(json!({"metadata": {"name": "seen"}})).unwrap(),
                        )
                        .await
                        .unwrap();
                }
                watcher::Event::Apply(cm) if cm.metadata.name.as_deref() == Some("seen") => {
                    return true;
                }
                _ => {}
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "the watch saw the ConfigMap");
    // The initial list and the create are requests; the watch came over HTTP/1.1.
    let heard = heard.lock().unwrap().clone();
    assert!(
        heard.contains(&http::Version::HTTP_11),
        "the watch: {heard:?}"
    );
    assert_eq!(
        heard.iter().filter(|v| **v == expected).count(),
        if real { 2 } else { heard.len() },
        "the list and the create: {heard:?}"
    );
    let _ = namespaces
        .delete(&namespace, &DeleteParams::default())
        .await;
}
