//! Watch semantics: raw stream format, resume, bookmarks, selectors, 410, and
//! kube-runtime's watcher recovering from 410 and dropped connections.

use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube_test_apiserver::Options;
use serde_json::{Value, json};

use crate::*;

/// Read raw watch lines from a URL until the stream ends (or `max` lines).
async fn raw_watch(client: &kube::Client, path: &str, max: usize) -> Vec<Value> {
    let req = http::Request::get(path).body(vec![]).unwrap();
    let lines = Box::pin(client.request_stream(req).await.unwrap().lines());
    let collect = lines
        .take(max)
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect::<Vec<_>>();
    tokio::time::timeout(Duration::from_secs(10), collect)
        .await
        .unwrap()
}

#[tokio::test]
async fn raw_watch_resume_selectors_bookmarks_and_timeout() {
    let (_server, client) = start_with(Options {
        bookmark_interval: Duration::from_millis(200),
        ..Options::default()
    })
    .await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let a = create_cm(&cms, "a", &[("sel", "yes")]).await;
    let start_rv = a.metadata.resource_version.clone().unwrap();
    create_cm(&cms, "b", &[("sel", "no")]).await;
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"sel": "no"}}})),
    )
    .await
    .unwrap();
    cms.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"sel": "yes"}}})),
    )
    .await
    .unwrap();
    cms.delete("b", &Default::default()).await.unwrap();

    // resume after `a` was created, only objects with sel=yes: a leaves (DELETED), b enters (ADDED), b deleted
    let path = format!(
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={start_rv}&labelSelector=sel%3Dyes&timeoutSeconds=1"
    );
    let events = raw_watch(&client, &path, 10).await;
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("DELETED", "a"), ("ADDED", "b"), ("DELETED", "b")]
            .map(|(t, n)| (t.to_string(), n.to_string()))
    );
    assert_eq!(events[0]["object"]["kind"], "ConfigMap");
    assert_eq!(events[0]["object"]["apiVersion"], "v1");

    // no resourceVersion: current state as ADDED, then bookmarks
    let path =
        "/api/v1/namespaces/default/configmaps?watch=1&allowWatchBookmarks=true&timeoutSeconds=1";
    let events = raw_watch(&client, path, 3).await;
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "a");
    assert_eq!(events[1]["type"], "BOOKMARK");
    let bm = &events[1]["object"];
    assert_eq!(bm["kind"], "ConfigMap");
    assert!(
        bm["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(bm.get("data").is_none());

    // sendInitialEvents: initial-events-end bookmark
    let path = "/api/v1/configmaps?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1";
    let events = raw_watch(&client, path, 2).await;
    assert_eq!(events[1]["type"], "BOOKMARK");
    assert_eq!(
        events[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );

    // the stream ends by itself after timeoutSeconds
    let started = std::time::Instant::now();
    let events = raw_watch(
        &client,
        "/api/v1/namespaces/default/secrets?watch=true&timeoutSeconds=1",
        100,
    )
    .await;
    assert!(events.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));

    // kube's typed watch sees live events
    let mut stream = cms
        .watch(
            &WatchParams::default().timeout(5),
            &a.metadata.resource_version.clone().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    let first = stream.try_next().await.unwrap().unwrap();
    assert!(
        matches!(first, WatchEvent::Added(ref o) if o.name_any() == "b"),
        "{first:?}"
    );
}

#[tokio::test]
async fn too_old_resource_version_gives_410_and_watcher_relists() {
    let (server, client) = start_with(Options {
        watch_history: 5,
        ..Options::default()
    })
    .await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let first = create_cm(&cms, "first", &[("w", "1")]).await;
    for i in 0..10 {
        let mut s = Secret::default();
        s.metadata.name = Some(format!("s{i}"));
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    // raw: ERROR event with a 410 Expired Status inside a 200 stream
    let path = format!(
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={}",
        first.metadata.resource_version.clone().unwrap()
    );
    let events = raw_watch(&client, &path, 5).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["kind"], "Status");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
    // kube's typed watch surfaces it as an API error
    let mut typed = cms
        .watch(
            &WatchParams::default(),
            &first.metadata.resource_version.clone().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    match typed.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }

    // kube-runtime watcher: list, watch, watch broken while history moves on, re-watch -> 410 -> relist
    let cfg = watcher::Config::default().labels("w=1").disable_bookmarks();
    let mut objects = watcher(cms.clone(), cfg)
        .default_backoff()
        .applied_objects()
        .boxed();
    assert_eq!(
        objects.try_next().await.unwrap().unwrap().name_any(),
        "first"
    );
    server.faults().clear();
    for i in 10..20 {
        let mut s = Secret::default();
        s.metadata.name = Some(format!("s{i}"));
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    server.faults().drop_watches();
    tokio::time::sleep(Duration::from_millis(100)).await;
    create_cm(&cms, "second", &[("w", "1")]).await;
    let mut seen = Vec::new();
    let mut expired = false;
    while !seen.contains(&"second".to_string()) {
        match tokio::time::timeout(Duration::from_secs(10), objects.next())
            .await
            .expect("watcher recovers")
            .unwrap()
        {
            Ok(o) => seen.push(o.name_any()),
            // kube-runtime surfaces the 410 once, then relists by itself
            Err(watcher::Error::WatchError(s)) if s.code == 410 => expired = true,
            Err(e) => panic!("unexpected watcher error {e:?}"),
        }
    }
    assert!(expired, "the resumed watch hit 410 Expired");
    let log = server.faults().request_log();
    let lists_after_start = log
        .iter()
        .filter(|r| {
            r.method == "GET"
                && r.path.starts_with("/api/v1/namespaces/default/configmaps?")
                && !r.path.contains("watch=true")
        })
        .count();
    assert!(
        lists_after_start >= 1,
        "watcher relisted after 410: {log:?}"
    );
}

#[tokio::test]
async fn noop_patch_emits_no_watch_event() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let cm = create_cm(&cms, "quiet", &[]).await;
    let rv0 = cm.metadata.resource_version.clone().unwrap();
    let same = cms
        .patch(
            "quiet",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "v"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        same.metadata.resource_version.as_deref(),
        Some(rv0.as_str())
    );
    let applied = cms
        .patch(
            "quiet",
            &PatchParams::apply("a"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"}})),
        )
        .await
        .unwrap();
    // the first apply records ownership (a real change of managedFields)...
    let rv1 = applied.metadata.resource_version.clone().unwrap();
    // ...repeating it is a no-op
    cms.patch(
        "quiet",
        &PatchParams::apply("a"),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"}})),
    )
    .await
    .unwrap();
    let events = raw_watch(&client, &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv1}&timeoutSeconds=1"), 10).await;
    assert!(events.is_empty(), "{events:?}");
    let events = raw_watch(&client, &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv0}&timeoutSeconds=1"), 10).await;
    assert_eq!(events.len(), 1, "only the ownership change: {events:?}");
}

#[tokio::test]
async fn dropped_watches_are_resumed_by_kube_runtime() {
    let (server, client) = start().await;
    let widgets: Api<Widget> = Api::default_namespaced(client.clone());
    let mut stream = watcher(widgets.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    widgets
        .create(&PostParams::default(), &widget("one", 1))
        .await
        .unwrap();
    assert_eq!(stream.try_next().await.unwrap().unwrap().name_any(), "one");
    let watches_before = server
        .faults()
        .request_log()
        .iter()
        .filter(|r| r.path.contains("watch=true"))
        .count();
    server.faults().drop_watches();
    widgets
        .create(&PostParams::default(), &widget("two", 2))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
        .await
        .expect("resumed")
        .unwrap()
        .unwrap();
    assert_eq!(next.name_any(), "two");
    let watches_after = server
        .faults()
        .request_log()
        .iter()
        .filter(|r| r.path.contains("watch=true"))
        .count();
    assert!(watches_after > watches_before);
}

#[tokio::test]
async fn many_watchers_and_writers() {
    let (_server, client) = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let start_rv = cms
        .list(&Default::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut watchers = Vec::new();
    for _ in 0..10 {
        let path = format!(
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={start_rv}&timeoutSeconds=20"
        );
        let client = client.clone();
        watchers.push(tokio::spawn(async move {
            raw_watch(&client, &path, 300).await.len()
        }));
    }
    let started = std::time::Instant::now();
    let writers: Vec<_> = (0..10)
        .map(|w| {
            let cms = cms.clone();
            tokio::spawn(async move {
                for i in 0..30 {
                    create_cm(&cms, &format!("load-{w}-{i}"), &[]).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed();
    for w in watchers {
        assert_eq!(w.await.unwrap(), 300);
    }
    assert!(
        elapsed < Duration::from_secs(5),
        "300 creates took {elapsed:?}"
    );
}
