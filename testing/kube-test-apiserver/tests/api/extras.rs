//! CRDs via the API, dynamic objects, events, leases, fault injection, kubeconfig.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent};
use k8s_openapi::api::events::v1::Event as EventsV1;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Discovery, Resource, ResourceExt};
use kube_test_apiserver::FaultSpec;
use serde_json::json;

use crate::*;

const GADGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.other.example.com
spec:
  group: other.example.com
  scope: Cluster
  names: {plural: gadgets, singular: gadget, kind: Gadget, shortNames: [gd]}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

#[tokio::test]
async fn crd_registered_through_the_api_is_served() {
    let (_server, client) = start().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_yaml::from_str(GADGET_CRD).unwrap();
    let created = crds.create(&PostParams::default(), &crd).await.unwrap();
    let conds = created.status.unwrap().conditions.unwrap();
    for t in ["Established", "NamesAccepted"] {
        assert!(
            conds.iter().any(|c| c.type_ == t && c.status == "True"),
            "{t}"
        );
    }
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk(
            "other.example.com",
            "v1alpha1",
            "Gadget",
        ))
        .unwrap();
    assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
    let gadgets: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let mut g = DynamicObject::new("g1", &ar);
    g.data = json!({"spec": {"anything": [1, 2]}});
    let made = gadgets.create(&PostParams::default(), &g).await.unwrap();
    assert_eq!(made.metadata.generation, Some(1));
    assert_eq!(made.data["spec"]["anything"], json!([1, 2]));
    assert_eq!(
        gadgets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    // the preinstalled Widget type through DynamicObject too
    let war = ApiResource::from_gvk(&GroupVersionKind::gvk("test.example.com", "v1", "Widget"));
    let dyn_widgets: Api<DynamicObject> = Api::default_namespaced_with(client.clone(), &war);
    let mut w = DynamicObject::new("dw", &war);
    w.data = json!({"spec": {"size": 3}});
    dyn_widgets
        .create(&PostParams::default(), &w)
        .await
        .unwrap();
    let typed: Api<Widget> = Api::default_namespaced(client.clone());
    assert_eq!(typed.get("dw").await.unwrap().spec.size, 3);

    // deleting the CRD removes the type and its objects
    crds.delete("gadgets.other.example.com", &Default::default())
        .await
        .unwrap();
    assert_api_err(gadgets.list(&ListParams::default()).await, 404, "NotFound");
    let bad: CustomResourceDefinition =
        serde_yaml::from_str(&GADGET_CRD.replace("name: gadgets.other.example.com", "name: wrong"))
            .unwrap();
    assert_api_err(
        crds.create(&PostParams::default(), &bad).await,
        422,
        "Invalid",
    );
}

#[tokio::test]
async fn recorder_publishes_events() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let cm = create_cm(&cms, "evented", &[]).await;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "test-controller".into(),
            instance: Some("pod-1".into()),
        },
    );
    let ev = Event {
        type_: EventType::Normal,
        reason: "Refreshed".into(),
        note: Some("token refreshed".into()),
        action: "Refresh".into(),
        secondary: None,
    };
    let reference = cm.object_ref(&());
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap(); // series update (merge patch)

    let events: Api<EventsV1> = Api::default_namespaced(client.clone());
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let e = &list.items[0];
    assert_eq!(e.reason.as_deref(), Some("Refreshed"));
    assert_eq!(
        e.regarding.as_ref().unwrap().name.as_deref(),
        Some("evented")
    );
    assert_eq!(e.series.as_ref().unwrap().count, 2);

    // the same event through core/v1
    let core: Api<CoreEvent> = Api::default_namespaced(client.clone());
    let by_object = core
        .list(&ListParams::default().fields("involvedObject.name=evented,reason=Refreshed"))
        .await
        .unwrap();
    assert_eq!(by_object.items.len(), 1);
    assert_eq!(
        by_object.items[0].message.as_deref(),
        Some("token refreshed")
    );
    assert_eq!(
        by_object.items[0].reporting_component.as_deref(),
        Some("test-controller")
    );

    // events.k8s.io validation like the real apiserver
    let too_long = Event {
        note: Some("x".repeat(2000)),
        reason: "Other".into(),
        ..ev
    };
    let err = recorder.publish(&too_long, &reference).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422),
        "{err:?}"
    );
}

#[tokio::test]
async fn lease_manager_acquires_and_releases() {
    use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
    let (_server, client) = start().await;
    let manager = |id: &'static str| {
        LeaseManagerBuilder::new(client.clone(), "leader")
            .with_namespace("default")
            .with_identity(id)
            .with_duration(2)
            .with_grace(1)
            .build()
    };
    let a: LeaseManager = manager("a").await.unwrap();
    let b: LeaseManager = manager("b").await.unwrap();
    let holder = || {
        let leases: Api<Lease> = Api::default_namespaced(client.clone());
        async move {
            leases
                .get("leader")
                .await
                .unwrap()
                .spec
                .unwrap()
                .holder_identity
        }
    };
    assert!(a.changed().await.unwrap(), "a becomes leader");
    assert_eq!(holder().await.as_deref(), Some("a"));
    // changed() only returns when b's leadership changes: not while a holds the lease
    assert!(
        tokio::time::timeout(Duration::from_millis(500), b.changed())
            .await
            .is_err()
    );
    a.release().await.unwrap();
    assert_eq!(holder().await, None);
    let took = tokio::time::timeout(Duration::from_secs(10), b.changed()).await;
    assert!(
        took.expect("b acquires in time").unwrap(),
        "b takes over after release"
    );
    assert_eq!(holder().await.as_deref(), Some("b"));
    // b stops renewing (as if it died): c takes over the expired lease
    let c: LeaseManager = manager("c").await.unwrap();
    let took = tokio::time::timeout(Duration::from_secs(10), c.changed()).await;
    assert!(took.expect("c acquires in time").unwrap());
    assert_eq!(holder().await.as_deref(), Some("c"));
}

#[tokio::test]
async fn fault_injection_and_request_log() {
    let (server, client) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    server.faults().fail_next(FaultSpec {
        count: 1,
        status: 500,
        path_contains: Some("/configmaps".into()),
        method: Some("POST".into()),
        delay: None,
    });
    assert_api_err(
        cms.create(&PostParams::default(), &configmap("f", &[]))
            .await,
        500,
        "InternalError",
    );
    create_cm(&cms, "f", &[]).await;
    server.faults().fail_next(FaultSpec {
        count: 2,
        status: 503,
        path_contains: None,
        method: None,
        delay: None,
    });
    // kube 5's client retries 429/503/504 by itself (default_retry): the caller sees success
    cms.get("f").await.unwrap();
    let mut no_retry = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml("default")).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    no_retry.default_retry = false;
    let plain: Api<ConfigMap> = Api::default_namespaced(kube::Client::try_from(no_retry).unwrap());

    // delay only
    server.faults().fail_next(FaultSpec {
        count: 1,
        status: 0,
        path_contains: Some("/configmaps/f".into()),
        method: None,
        delay: Some(Duration::from_millis(300)),
    });
    let t = std::time::Instant::now();
    cms.get("f").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));

    let log = server.faults().request_log();
    let statuses: Vec<u16> = log
        .iter()
        .filter(|r| r.path.contains("/configmaps"))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [500, 201, 503, 503, 200, 200]);
    server.faults().fail_next(FaultSpec {
        count: 1,
        status: 503,
        path_contains: None,
        method: None,
        delay: None,
    });
    assert_api_err(plain.get("f").await, 503, "ServiceUnavailable");
    assert_eq!(log[0].method, "POST");
    assert_eq!(log[0].content_type.as_deref(), Some("application/json"));

    // the same over HTTP, from "another process"
    let http = |path: &str, body: serde_json::Value| {
        http::Request::post(path)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .unwrap()
    };
    let _: serde_json::Value = client
        .request(http(
            "/_test/faults",
            json!({"count": 1, "status": 429, "method": "GET"}),
        ))
        .await
        .unwrap();
    let e = assert_api_err(plain.get("f").await, 429, "TooManyRequests");
    assert!(e.message.contains("injected"));
    server.faults().clear();
    assert!(server.faults().request_log().is_empty());
}

#[tokio::test]
async fn kubeconfig_file_works() {
    let (server, _client) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path, "kube-system").unwrap();
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "kube-system");
    let client = kube::Client::try_from(config).unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(client);
    let cm = create_cm(&cms, "here", &[]).await;
    assert_eq!(cm.namespace().as_deref(), Some("kube-system"));
}

#[tokio::test]
async fn binary_serves_and_writes_kubeconfig() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let crd = dir.path().join("crd.yaml");
    std::fs::write(&crd, GADGET_CRD).unwrap();
    let kc = dir.path().join("kc");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kube-test-apiserver"))
        .args(["--port", "0", "--crd"])
        .arg(&crd)
        .arg("--kubeconfig-out")
        .arg(&kc)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("http://127.0.0.1:"), "{line}");
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kc).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "other.example.com",
        "v1alpha1",
        "Gadget",
    ));
    let gadgets: Api<DynamicObject> = Api::all_with(client, &ar);
    assert!(
        gadgets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
