//! Basic verbs, errors, pagination, selectors, optimistic concurrency, secrets.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Discovery, ResourceExt};
use serde_json::json;

use crate::*;

#[tokio::test]
async fn discovery_lists_builtins_and_crds() {
    let (server, client) = start().await;
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    for g in [
        "",
        "apiextensions.k8s.io",
        "coordination.k8s.io",
        "events.k8s.io",
        "test.example.com",
    ] {
        assert!(discovery.has_group(g), "group {g:?} missing");
    }
    let gvk = kube::api::GroupVersionKind::gvk("test.example.com", "v1", "Widget");
    let (ar, caps) = discovery.resolve_gvk(&gvk).expect("widgets discovered");
    assert_eq!(ar.plural, "widgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(
        caps.subresources.iter().any(|(r, _)| r.plural == "status"),
        "{caps:?}"
    );
    assert!(caps.supports_operation(kube::discovery::verbs::WATCH));
    let (secrets, caps) = discovery
        .resolve_gvk(&kube::api::GroupVersionKind::gvk("", "v1", "Secret"))
        .unwrap();
    assert_eq!(secrets.plural, "secrets");
    assert!(caps.subresources.is_empty());
    let (ns, caps) = discovery
        .resolve_gvk(&kube::api::GroupVersionKind::gvk("", "v1", "Namespace"))
        .unwrap();
    assert_eq!(ns.plural, "namespaces");
    assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(info.major, "1");
    server.shutdown().await;
}

#[tokio::test]
async fn create_get_errors_and_metadata() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let cm = create_cm(&cms, "one", &[("app", "a")]).await;
    let meta = &cm.metadata;
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    assert_eq!(meta.uid.as_ref().unwrap().len(), 36);
    let ts = serde_json::to_value(meta.creation_timestamp.as_ref().unwrap()).unwrap();
    assert!(
        ts.as_str().unwrap().ends_with('Z') && ts.as_str().unwrap().len() == 20,
        "{ts}"
    );
    assert!(meta.generation.is_none(), "built-ins without generation");
    assert_eq!(cms.get("one").await.unwrap(), cm);
    let pom = cms.get_metadata("one").await.unwrap();
    assert_eq!(pom.metadata.uid, cm.metadata.uid);
    let poms = cms.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(poms.items.len(), 1);

    let e = assert_api_err(
        cms.create(&PostParams::default(), &configmap("one", &[]))
            .await,
        409,
        "AlreadyExists",
    );
    assert_eq!(e.message, "configmaps \"one\" already exists");
    let e = assert_api_err(cms.get("nope").await, 404, "NotFound");
    assert_eq!(e.message, "configmaps \"nope\" not found");
    assert_eq!(e.details.as_ref().unwrap().kind, "configmaps");
    assert_api_err(
        cms.delete("nope", &DeleteParams::default()).await,
        404,
        "NotFound",
    );
    let e = assert_api_err(
        cms.create(&PostParams::default(), &ConfigMap::default())
            .await,
        422,
        "Invalid",
    );
    assert!(
        e.message.contains("name or generateName is required"),
        "{}",
        e.message
    );
    assert_api_err(
        cms.create(&PostParams::default(), &configmap("Bad_Name", &[]))
            .await,
        422,
        "Invalid",
    );
    assert_api_err(
        cms.create(
            &PostParams::default(),
            &configmap("x", &[("bad key!", "v")]),
        )
        .await,
        422,
        "Invalid",
    );

    let mut gen_cm = configmap("", &[]);
    gen_cm.metadata.name = None;
    gen_cm.metadata.generate_name = Some("gen-".into());
    let created = cms.create(&PostParams::default(), &gen_cm).await.unwrap();
    assert!(
        created.name_any().starts_with("gen-") && created.name_any().len() == 9,
        "{}",
        created.name_any()
    );

    let missing: Api<ConfigMap> = Api::namespaced(client.clone(), "does-not-exist");
    let e = assert_api_err(
        missing
            .create(&PostParams::default(), &configmap("x", &[]))
            .await,
        404,
        "NotFound",
    );
    assert_eq!(e.message, "namespaces \"does-not-exist\" not found");

    let nss: Api<Namespace> = Api::all(client.clone());
    for ns in ["default", "kube-system"] {
        let n = nss.get(ns).await.unwrap();
        assert_eq!(n.status.unwrap().phase.as_deref(), Some("Active"));
    }
    // dry run changes nothing
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    cms.create(&pp, &configmap("dry", &[])).await.unwrap();
    assert_api_err(cms.get("dry").await, 404, "NotFound");
}

#[tokio::test]
async fn list_pagination_and_selectors() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    for i in 0..7 {
        let tier = if i % 2 == 0 { "web" } else { "db" };
        create_cm(&cms, &format!("cm-{i}"), &[("app", "shop"), ("tier", tier)]).await;
    }
    let sys: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    create_cm(&sys, "elsewhere", &[("app", "shop")]).await;

    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(3);
    let mut pages = 0;
    let mut first_rv = None;
    loop {
        let page = cms.list(&lp).await.unwrap();
        pages += 1;
        let rv = page.metadata.resource_version.clone().unwrap();
        assert!(!rv.is_empty());
        first_rv.get_or_insert(rv.clone());
        assert_eq!(
            first_rv.as_ref(),
            Some(&rv),
            "continuations keep the list resourceVersion"
        );
        names.extend(page.items.iter().map(|c| c.name_any()));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => {
                assert!(page.metadata.remaining_item_count.unwrap() > 0);
                lp = lp.continue_token(&token);
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, (0..7).map(|i| format!("cm-{i}")).collect::<Vec<_>>());

    let count = |sel: &'static str| {
        let cms = cms.clone();
        async move {
            cms.list(&ListParams::default().labels(sel))
                .await
                .unwrap()
                .items
                .len()
        }
    };
    assert_eq!(count("tier=web").await, 4);
    assert_eq!(count("tier==db").await, 3);
    assert_eq!(count("tier!=web").await, 3);
    assert_eq!(count("tier in (web,db),app=shop").await, 7);
    assert_eq!(count("tier notin (web)").await, 3);
    assert_eq!(count("app").await, 7);
    assert_eq!(count("!tier").await, 0);
    let by_name = cms
        .list(&ListParams::default().fields("metadata.name=cm-3"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    let not_name = cms
        .list(&ListParams::default().fields("metadata.name!=cm-3"))
        .await
        .unwrap();
    assert_eq!(not_name.items.len(), 6);

    let all: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default().labels("app=shop"))
            .await
            .unwrap()
            .items
            .len(),
        8
    );
    let in_sys = all
        .list(&ListParams::default().fields("metadata.namespace=kube-system"))
        .await
        .unwrap();
    assert_eq!(in_sys.items.len(), 1);
    assert_api_err(
        cms.list(&ListParams::default().fields("data.k=v")).await,
        400,
        "BadRequest",
    );
    assert_api_err(
        cms.list(&ListParams::default().labels("a in b")).await,
        400,
        "BadRequest",
    );
}

#[tokio::test]
async fn optimistic_concurrency_on_replace_and_patch() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let v1 = create_cm(&cms, "occ", &[]).await;

    let mut upd = v1.clone();
    upd.data = Some([("k".to_string(), "v2".to_string())].into());
    let v2 = cms
        .replace("occ", &PostParams::default(), &upd)
        .await
        .unwrap();
    assert!(rv(&v2) > rv(&v1));
    assert_eq!(v2.metadata.uid, v1.metadata.uid);
    assert_eq!(
        v2.metadata.creation_timestamp,
        v1.metadata.creation_timestamp
    );

    // replace with the stale resourceVersion
    let e = assert_api_err(
        cms.replace("occ", &PostParams::default(), &upd).await,
        409,
        "Conflict",
    );
    assert_eq!(
        e.message,
        "Operation cannot be fulfilled on configmaps \"occ\": the object has been modified; please apply your changes to the latest version and try again"
    );
    // unconditional replace (no resourceVersion) is allowed
    let mut uncond = upd.clone();
    uncond.metadata.resource_version = None;
    uncond.data = Some([("k".to_string(), "v3".to_string())].into());
    let v3 = cms
        .replace("occ", &PostParams::default(), &uncond)
        .await
        .unwrap();

    // merge patch carrying a stale resourceVersion is a precondition
    let stale =
        json!({"metadata": {"resourceVersion": v2.metadata.resource_version}, "data": {"k": "x"}});
    assert_api_err(
        cms.patch("occ", &PatchParams::default(), &Patch::Merge(&stale))
            .await,
        409,
        "Conflict",
    );
    let fresh =
        json!({"metadata": {"resourceVersion": v3.metadata.resource_version}, "data": {"k": "x"}});
    let v4 = cms
        .patch("occ", &PatchParams::default(), &Patch::Merge(&fresh))
        .await
        .unwrap();
    assert_eq!(v4.data.unwrap()["k"], "x");

    // JSON patch: test/replace/add/remove
    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/k", "value": "x"},
        {"op": "replace", "path": "/data/k", "value": "y"},
        {"op": "add", "path": "/data/new", "value": "n"},
        {"op": "add", "path": "/data/tmp", "value": "t"},
        {"op": "remove", "path": "/data/tmp"},
    ]))
    .unwrap();
    let v5 = cms
        .patch("occ", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .unwrap();
    assert_eq!(v5.data.as_ref().unwrap()["k"], "y");
    assert_eq!(v5.data.as_ref().unwrap()["new"], "n");
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/k", "value": "nope"}]))
            .unwrap();
    assert_api_err(
        cms.patch("occ", &PatchParams::default(), &Patch::<()>::Json(failing))
            .await,
        422,
        "Invalid",
    );

    // strategic merge is a merge patch
    let smp = json!({"metadata": {"labels": {"s": "1"}}, "data": {"new": null}});
    let v6 = cms
        .patch("occ", &PatchParams::default(), &Patch::Strategic(&smp))
        .await
        .unwrap();
    assert_eq!(v6.labels()["s"], "1");
    assert!(!v6.data.unwrap().contains_key("new"));

    // PUT to a missing object is 404; name mismatch is 400
    let mut ghost = configmap("ghost", &[]);
    assert_api_err(
        cms.replace("ghost", &PostParams::default(), &ghost).await,
        404,
        "NotFound",
    );
    ghost.metadata.name = Some("other".into());
    assert_api_err(
        cms.replace("occ", &PostParams::default(), &ghost).await,
        400,
        "BadRequest",
    );
    assert_api_err(
        cms.patch("ghost", &PatchParams::default(), &Patch::Merge(json!({})))
            .await,
        404,
        "NotFound",
    );
}

#[tokio::test]
async fn noop_writes_keep_resource_version() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let v1 = create_cm(&cms, "noop", &[("a", "b")]).await;
    let same = cms
        .patch(
            "noop",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "v"}})),
        )
        .await
        .unwrap();
    assert_eq!(same.metadata.resource_version, v1.metadata.resource_version);
    let replaced = cms
        .replace("noop", &PostParams::default(), &v1)
        .await
        .unwrap();
    assert_eq!(
        replaced.metadata.resource_version,
        v1.metadata.resource_version
    );
    let pp = PatchParams::apply("mgr");
    let applied = cms
        .patch(
            "noop",
            &pp,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"x": "1"}})),
        )
        .await
        .unwrap();
    assert!(rv(&applied) > rv(&v1));
    let again = cms
        .patch(
            "noop",
            &pp,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"x": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        applied.metadata.resource_version
    );
}

#[tokio::test]
async fn secret_string_data_and_validation() {
    let (_server, client) = start().await;
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let mut s = Secret::default();
    s.metadata.name = Some("tok".into());
    s.string_data = Some(BTreeMap::from([("token".to_string(), "abc".to_string())]));
    s.data = Some(BTreeMap::from([
        ("other".to_string(), ByteString(b"x".to_vec())),
        ("token".to_string(), ByteString(b"old".to_vec())),
    ]));
    let created = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    assert!(created.string_data.is_none());
    let data = created.data.unwrap();
    assert_eq!(data["token"].0, b"abc");
    assert_eq!(data["other"].0, b"x");

    let raw = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bad"}, "data": {"k": "!!!not base64"}});
    let bad: Secret = serde_json::from_value(json!({"metadata": {"name": "bad"}})).unwrap();
    let _ = bad;
    let e = assert_api_err(
        secrets
            .patch("bad", &PatchParams::apply("t"), &Patch::Apply(&raw))
            .await,
        422,
        "Invalid",
    );
    assert!(e.message.contains("illegal base64"), "{}", e.message);

    // SSA with stringData
    let applied = secrets
        .patch(
            "ssa-secret",
            &PatchParams::apply("op").force(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Secret", "stringData": {"a": "1", "b": "2"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(applied.data.as_ref().unwrap()["a"].0, b"1");
    let applied = secrets
        .patch(
            "ssa-secret",
            &PatchParams::apply("op").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret", "stringData": {"a": "1"}})),
        )
        .await
        .unwrap();
    assert!(
        !applied.data.as_ref().unwrap().contains_key("b"),
        "applier dropped key b"
    );
    // type is immutable
    let e = assert_api_err(
        secrets
            .patch(
                "tok",
                &PatchParams::default(),
                &Patch::Merge(json!({"type": "kubernetes.io/tls"})),
            )
            .await,
        422,
        "Invalid",
    );
    assert!(e.message.contains("type"), "{}", e.message);
}
