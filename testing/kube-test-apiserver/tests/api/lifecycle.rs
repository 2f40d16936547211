//! Deletion: finalizers, preconditions, owner-reference garbage collection, namespaces.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::*;

fn owned_by<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    owner.controller_owner_ref(&()).unwrap()
}

#[tokio::test]
async fn finalizers_and_delete_preconditions() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let mut cm = configmap("fin", &[]);
    cm.metadata.finalizers = Some(vec!["example.com/cleanup".into()]);
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();

    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let e = assert_api_err(cms.delete("fin", &dp).await, 409, "Conflict");
    assert!(
        e.message
            .contains("Precondition failed: UID in precondition: wrong"),
        "{}",
        e.message
    );
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: None,
            resource_version: Some("1".into()),
        }),
        ..Default::default()
    };
    assert_api_err(cms.delete("fin", &dp).await, 409, "Conflict");

    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: created.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    let pending = cms
        .delete("fin", &dp)
        .await
        .unwrap()
        .left()
        .expect("object returned while finalizers remain");
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert_eq!(pending.metadata.deletion_grace_period_seconds, Some(0));
    let still = cms.get("fin").await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_some());
    // no new finalizers while deleting
    assert_api_err(
        cms.patch(
            "fin",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/cleanup", "b"]}})),
        )
        .await,
        422,
        "Invalid",
    );
    cms.patch(
        "fin",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_api_err(cms.get("fin").await, 404, "NotFound");

    // a plain delete returns the object
    create_cm(&cms, "plain", &[]).await;
    let gone = cms.delete("plain", &DeleteParams::default()).await.unwrap();
    assert_eq!(gone.left().unwrap().name_any(), "plain");
}

#[tokio::test]
async fn owner_references_cascade() {
    let (_server, client) = start().await;
    let widgets: Api<Widget> = Api::default_namespaced(client.clone());
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let owner = widgets
        .create(&PostParams::default(), &widget("owner", 1))
        .await
        .unwrap();
    let other_owner = create_cm(&cms, "other-owner", &[]).await;

    let mut dep = Secret::default();
    dep.metadata.name = Some("dep".into());
    dep.metadata.owner_references = Some(vec![owned_by(&owner)]);
    secrets.create(&PostParams::default(), &dep).await.unwrap();

    let mut shared = Secret::default();
    shared.metadata.name = Some("shared".into());
    let mut second = owned_by(&other_owner);
    second.controller = None;
    shared.metadata.owner_references = Some(vec![owned_by(&owner), second]);
    secrets
        .create(&PostParams::default(), &shared)
        .await
        .unwrap();

    let mut grandchild = configmap("grandchild", &[]);
    let dep_now = secrets.get("dep").await.unwrap();
    grandchild.metadata.owner_references = Some(vec![owned_by(&dep_now)]);
    cms.create(&PostParams::default(), &grandchild)
        .await
        .unwrap();

    widgets
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    assert_api_err(secrets.get("dep").await, 404, "NotFound");
    assert_api_err(cms.get("grandchild").await, 404, "NotFound");
    let shared = secrets.get("shared").await.unwrap();
    assert_eq!(
        shared.owner_references().len(),
        1,
        "only the dangling reference is removed"
    );
    assert_eq!(shared.owner_references()[0].name, "other-owner");

    // orphan propagation keeps dependents and strips the reference
    cms.delete("other-owner", &DeleteParams::orphan())
        .await
        .unwrap();
    assert!(
        secrets
            .get("shared")
            .await
            .unwrap()
            .metadata
            .owner_references
            .is_none()
    );
}

#[tokio::test]
async fn namespace_deletion_removes_contents() {
    let (_server, client) = start().await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some("doomed".into());
    let created = nss.create(&PostParams::default(), &ns).await.unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Active"));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    create_cm(&cms, "a", &[]).await;
    let mut held = configmap("held", &[]);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();

    nss.delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    assert_api_err(cms.get("a").await, 404, "NotFound");
    // waits for the finalizer; meanwhile it is Terminating and refuses new content
    let terminating = nss.get("doomed").await.unwrap();
    assert_eq!(
        terminating.status.unwrap().phase.as_deref(),
        Some("Terminating")
    );
    assert_api_err(
        cms.create(&PostParams::default(), &configmap("new", &[]))
            .await,
        403,
        "Forbidden",
    );
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": []}})),
    )
    .await
    .unwrap();
    assert_api_err(nss.get("doomed").await, 404, "NotFound");
    assert!(
        cms.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_api_err(
        cms.create(&PostParams::default(), &configmap("new", &[]))
            .await,
        404,
        "NotFound",
    );
}

#[tokio::test]
async fn delete_collection_with_selector() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    for (n, l) in [("x1", "x"), ("x2", "x"), ("y1", "y")] {
        create_cm(&cms, n, &[("g", l)]).await;
    }
    cms.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("g=x"),
    )
    .await
    .unwrap();
    let left: Vec<String> = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert_eq!(left, ["y1"]);
}
