//! Server-side apply, field ownership, status subresource and generation.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::*;

#[tokio::test]
async fn server_side_apply_create_update_remove_and_conflicts() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let cfg = |data: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app", "labels": {"owner": "a"}}, "data": data});

    // apply without fieldManager is rejected by the server
    let no_manager = PatchParams::default();
    assert_api_err(
        cms.patch("app", &no_manager, &Patch::Apply(cfg(json!({}))))
            .await,
        400,
        "BadRequest",
    );

    let a = PatchParams::apply("manager-a");
    let created = cms
        .patch("app", &a, &Patch::Apply(cfg(json!({"x": "1", "y": "2"}))))
        .await
        .unwrap();
    assert_eq!(created.data.as_ref().unwrap().len(), 2);
    let mf = created.metadata.managed_fields.as_ref().unwrap();
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("manager-a"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    let fields = serde_json::to_value(mf[0].fields_v1.as_ref().unwrap()).unwrap();
    assert!(fields["f:data"]["f:x"].is_object(), "{fields}");

    // update: y dropped from the applied config -> removed
    let updated = cms
        .patch("app", &a, &Patch::Apply(cfg(json!({"x": "10"}))))
        .await
        .unwrap();
    assert_eq!(
        updated.data.as_ref().unwrap(),
        &[("x".to_string(), "10".to_string())].into()
    );
    assert_eq!(updated.metadata.uid, created.metadata.uid);

    // a second manager setting x to another value conflicts; force takes it over
    let b = PatchParams::apply("manager-b");
    let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"x": "20", "z": "3"}});
    let e = assert_api_err(
        cms.patch("app", &b, &Patch::Apply(&other)).await,
        409,
        "Conflict",
    );
    assert!(
        e.message.contains("conflict with \"manager-a\"") && e.message.contains(".data.x"),
        "{}",
        e.message
    );
    let forced = cms
        .patch("app", &b.clone().force(), &Patch::Apply(&other))
        .await
        .unwrap();
    assert_eq!(forced.data.as_ref().unwrap()["x"], "20");
    // manager-a no longer owns x: dropping it from a's config keeps b's value
    let a_again = cms.patch("app", &a, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"labels": {"owner": "a"}}}))).await.unwrap();
    assert_eq!(a_again.data.as_ref().unwrap()["x"], "20");
    assert_eq!(a_again.labels()["owner"], "a");

    // a plain update takes ownership: then manager-b's apply of z conflicts with it
    cms.patch(
        "app",
        &PatchParams {
            field_manager: Some("editor".into()),
            ..Default::default()
        },
        &Patch::Merge(json!({"data": {"z": "edited"}})),
    )
    .await
    .unwrap();
    let e = assert_api_err(
        cms.patch("app", &b, &Patch::Apply(&other)).await,
        409,
        "Conflict",
    );
    assert!(e.message.contains("\"editor\""), "{}", e.message);

    // apply with a stale resourceVersion is a precondition failure
    let stale = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"resourceVersion": created.metadata.resource_version}, "data": {"w": "1"}});
    assert_api_err(
        cms.patch("app", &PatchParams::apply("c"), &Patch::Apply(&stale))
            .await,
        409,
        "Conflict",
    );
}

#[tokio::test]
async fn status_subresource_and_generation() {
    let (_server, client) = start().await;
    let widgets: Api<Widget> = Api::default_namespaced(client.clone());
    let mut w = widget("w1", 1);
    w.status = Some(WidgetStatus {
        ready: true,
        observed_generation: Some(99),
    });
    let created = widgets.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.status.is_none(), "status is ignored on create");

    // status write changes only status, no generation bump
    let st = json!({"status": {"ready": true, "observedGeneration": 1}, "spec": {"size": 100}});
    let s1 = widgets
        .patch_status("w1", &PatchParams::default(), &Patch::Merge(&st))
        .await
        .unwrap();
    assert_eq!(s1.status.as_ref().unwrap().observed_generation, Some(1));
    assert_eq!(s1.spec.size, 1, "spec ignored on /status");
    assert_eq!(s1.metadata.generation, Some(1));
    assert!(rv(&s1) > rv(&created));

    // main resource ignores status; spec change bumps generation
    let main = json!({"spec": {"size": 2}, "status": {"ready": false}});
    let m1 = widgets
        .patch("w1", &PatchParams::default(), &Patch::Merge(&main))
        .await
        .unwrap();
    assert_eq!(m1.metadata.generation, Some(2));
    assert!(m1.status.as_ref().unwrap().ready);

    // metadata-only change: new resourceVersion, same generation
    let m2 = widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"l": "1"}}})),
        )
        .await
        .unwrap();
    assert_eq!(m2.metadata.generation, Some(2));
    assert!(rv(&m2) > rv(&m1));

    // no-op status patch: same resourceVersion
    let m3 = widgets
        .patch_status("w1", &PatchParams::default(), &Patch::Merge(&st))
        .await
        .unwrap();
    assert_eq!(m3.metadata.resource_version, m2.metadata.resource_version);

    // SSA on /status
    let applied = widgets
        .patch_status(
            "w1",
            &PatchParams::apply("ctrl").force(),
            &Patch::Apply(json!({"apiVersion": "test.example.com/v1", "kind": "Widget", "status": {"ready": false, "observedGeneration": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(
        applied.status.as_ref().unwrap().observed_generation,
        Some(2)
    );
    assert_eq!(applied.metadata.generation, Some(2));
    let mf = applied.metadata.managed_fields.unwrap();
    assert!(mf.iter().any(
        |m| m.manager.as_deref() == Some("ctrl") && m.subresource.as_deref() == Some("status")
    ));

    // replace_status with a stale resourceVersion
    let mut stale = created.clone();
    stale.status = Some(WidgetStatus {
        ready: false,
        observed_generation: None,
    });
    assert_api_err(
        widgets
            .replace_status("w1", &PostParams::default(), &stale)
            .await,
        409,
        "Conflict",
    );

    // schema: unknown fields pruned, wrong types rejected
    let pruned = widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unknown": 1, "color": "red"}, "junk": 1})),
        )
        .await
        .unwrap();
    assert_eq!(pruned.spec.color.as_deref(), Some("red"));
    let raw: serde_json::Value = client
        .request(
            http::Request::get("/apis/test.example.com/v1/namespaces/default/widgets/w1")
                .body(vec![])
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        raw["spec"].get("unknown").is_none() && raw.get("junk").is_none(),
        "{raw}"
    );
    let e = assert_api_err(
        widgets
            .patch(
                "w1",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"size": "big"}})),
            )
            .await,
        422,
        "Invalid",
    );
    assert!(e.message.contains("spec.size"), "{}", e.message);
    // fieldValidation=Strict (kubectl's default) rejects unknown fields instead of pruning them
    let e = assert_api_err(
        widgets
            .patch(
                "w1",
                &PatchParams::default().validation_strict(),
                &Patch::Merge(json!({"spec": {"typo": 1}})),
            )
            .await,
        400,
        "BadRequest",
    );
    assert!(
        e.message
            .contains("strict decoding error: unknown field \"spec.typo\""),
        "{}",
        e.message
    );
    let e = assert_api_err(
        widgets
            .patch(
                "w3",
                &PatchParams::apply("x"),
                &Patch::Apply(
                    json!({"apiVersion": "test.example.com/v1", "kind": "Widget", "spec": {}}),
                ),
            )
            .await,
        422,
        "Invalid",
    );
    assert!(
        e.message.contains("spec.size: Required value"),
        "{}",
        e.message
    );
}
