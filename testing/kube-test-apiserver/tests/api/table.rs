//! Server-side `Table` output (`kubectl get`), over raw HTTP requests.

use futures::{AsyncBufReadExt, StreamExt};
use kube::Client;
use kube_test_apiserver::{Options, TestApiServer};
use serde_json::{Value, json};

use crate::*;

const OAUTH_CRD: &str = include_str!("../../../../crds/oauthtoken.yaml");
const TOKENS: &str = "/apis/oauth-token-operator.io/v1alpha1/namespaces/default/oauthtokens";
const KUBECTL_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

async fn start_oauth() -> (TestApiServer, Client) {
    let server = TestApiServer::start(Options {
        crds: vec![OAUTH_CRD.to_string(), widget_crd_yaml()],
        ..Options::default()
    })
    .await
    .unwrap();
    let client = client_for(&server, "default").await;
    (server, client)
}

fn request(
    method: &str,
    uri: &str,
    accept: Option<&str>,
    body: Option<(&str, Value)>,
) -> http::Request<Vec<u8>> {
    let mut b = http::Request::builder().method(method).uri(uri);
    if let Some(a) = accept {
        b = b.header("Accept", a);
    }
    let body = match body {
        Some((ct, v)) => {
            b = b.header("Content-Type", ct);
            serde_json::to_vec(&v).unwrap()
        }
        None => Vec::new(),
    };
    b.body(body).unwrap()
}

async fn get(client: &Client, uri: &str, accept: Option<&str>) -> Value {
    let text = client
        .request_text(request("GET", uri, accept, None))
        .await
        .unwrap_or_else(|e| panic!("GET {uri}: {e}"));
    serde_json::from_str(&text).unwrap()
}

async fn send(client: &Client, method: &str, uri: &str, ct: &str, body: Value) -> Value {
    let text = client
        .request_text(request(method, uri, None, Some((ct, body))))
        .await
        .unwrap_or_else(|e| panic!("{method} {uri}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn rfc3339(offset: chrono::TimeDelta) -> String {
    (chrono::Utc::now() + offset)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Create OAuthToken `name`; with `ready`, also give it a status whose token expired
/// 90 minutes ago and whose next refresh is in an hour.
async fn create_token(client: &Client, name: &str, ready: bool) {
    send(
        client,
        "POST",
        TOKENS,
        "application/json",
        json!({
            "apiVersion": "oauth-token-operator.io/v1alpha1",
            "kind": "OAuthToken",
            "metadata": {"name": name},
            "spec": {
                "tokenEndpoint": "https://auth.example.com/token",
                "grant": {"clientCredentials": {}},
                "clientSecretRef": {"name": "creds"},
            },
        }),
    )
    .await;
    if ready {
        let condition = |t: &str, status: &str, reason: &str| json!({"type": t, "status": status, "reason": reason, "message": "x", "lastTransitionTime": rfc3339(chrono::TimeDelta::zero())});
        send(
            client,
            "PATCH",
            &format!("{TOKENS}/{name}/status"),
            "application/merge-patch+json",
            json!({"status": {
                "conditions": [
                    condition("ReauthorizationRequired", "False", "RefreshTokenValid"),
                    condition("Ready", "True", "TokenValid"),
                ],
                "expiresAt": rfc3339(chrono::TimeDelta::minutes(-90)),
                "nextRefreshAt": rfc3339(chrono::TimeDelta::hours(1)),
            }}),
        )
        .await;
    }
}

fn column_names(table: &Value) -> Vec<&str> {
    table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

/// A just-created object's age: whole seconds.
#[track_caller]
fn assert_seconds(cell: &Value) {
    let s = cell.as_str().unwrap();
    assert!(
        s.ends_with('s') && s[..s.len() - 1].parse::<u32>().is_ok(),
        "{s}"
    );
}

#[tokio::test]
async fn list_as_table_uses_the_crd_printer_columns() {
    let (_server, client) = start_oauth().await;
    create_token(&client, "ready", true).await;
    create_token(&client, "fresh", false).await;

    let table = get(&client, TOKENS, Some(KUBECTL_ACCEPT)).await;
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["apiVersion"], "meta.k8s.io/v1");
    assert!(
        table["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    // the CRD lists its own Age column, so none is added; the `-o wide` columns (priority 1)
    // are in the table too, kubectl hides them
    assert_eq!(
        column_names(&table),
        [
            "Name",
            "Ready",
            "Reason",
            "Expires",
            "Next Refresh",
            "Age",
            "Secret",
            "Failed Attempts",
            "Reauthorization Required",
            "User Code",
            "Verification URI"
        ]
    );
    let cols = table["columnDefinitions"].as_array().unwrap();
    assert_eq!(
        cols[0],
        json!({"name": "Name", "type": "string", "format": "name", "priority": 0,
               "description": cols[0]["description"]})
    );
    assert!(
        cols[0]["description"]
            .as_str()
            .unwrap()
            .starts_with("Name must be unique")
    );
    assert_eq!(
        cols[1],
        json!({"name": "Ready", "type": "string", "format": "", "priority": 0,
               "description": "Custom resource definition column (in JSONPath format): .status.conditions[?(@.type==\"Ready\")].status"})
    );
    let types: Vec<&str> = cols.iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "string", "string", "string", "string", "string", "date", "string", "integer",
            "string", "string", "string"
        ]
    );
    let priorities: Vec<i64> = cols
        .iter()
        .map(|c| c["priority"].as_i64().unwrap())
        .collect();
    assert_eq!(priorities, [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);

    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    // objects are listed by name
    let fresh = &rows[0]["cells"];
    assert_eq!(fresh[0], "fresh");
    assert_eq!(
        fresh.as_array().unwrap()[1..5],
        [Value::Null, Value::Null, Value::Null, Value::Null]
    );
    assert_seconds(&fresh[5]);

    let ready = &rows[1]["cells"];
    assert_eq!(ready[0], "ready");
    assert_eq!(ready[1], "True", "the Ready condition, not the first one");
    assert_eq!(ready[2], "TokenValid");
    // Expires and Next Refresh are string columns: the timestamps as stored.
    let expires = chrono::DateTime::parse_from_rfc3339(ready[3].as_str().unwrap()).unwrap();
    let next = chrono::DateTime::parse_from_rfc3339(ready[4].as_str().unwrap()).unwrap();
    assert_eq!((next - expires).num_minutes(), 150);
    // date columns are ages like on a real apiserver
    assert_seconds(&ready[5]);
    // a wide column: the ReauthorizationRequired condition's status
    assert_eq!(ready[8], "False");
    // no device authorization pending: no user code, no verification URI
    assert_eq!(ready[9], Value::Null);
    assert_eq!(ready[10], Value::Null);

    // includeObject defaults to Metadata: PartialObjectMetadata
    let obj = &rows[1]["object"];
    assert_eq!(obj["kind"], "PartialObjectMetadata");
    assert_eq!(obj["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(obj["metadata"]["name"], "ready");
    assert_eq!(obj["metadata"]["namespace"], "default");
    assert!(obj.get("spec").is_none());

    // paging works on tables too
    let page = get(&client, &format!("{TOKENS}?limit=1"), Some(KUBECTL_ACCEPT)).await;
    assert_eq!(page["rows"].as_array().unwrap().len(), 1);
    assert_eq!(page["metadata"]["remainingItemCount"], 1);
    let token = page["metadata"]["continue"].as_str().unwrap();
    let rest = get(
        &client,
        &format!("{TOKENS}?limit=1&continue={token}"),
        Some(KUBECTL_ACCEPT),
    )
    .await;
    assert_eq!(rest["rows"][0]["cells"][0], "ready");
}

#[tokio::test]
async fn get_as_table_and_include_object() {
    let (_server, client) = start_oauth().await;
    create_token(&client, "ready", true).await;
    let one = format!("{TOKENS}/ready");

    let table = get(&client, &one, Some(KUBECTL_ACCEPT)).await;
    assert_eq!(table["kind"], "Table");
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["cells"][1], "True");
    assert_eq!(
        table["metadata"]["resourceVersion"],
        rows[0]["object"]["metadata"]["resourceVersion"]
    );

    let full = get(
        &client,
        &format!("{one}?includeObject=Object"),
        Some(KUBECTL_ACCEPT),
    )
    .await;
    let obj = &full["rows"][0]["object"];
    assert_eq!(obj["kind"], "OAuthToken");
    assert_eq!(obj["apiVersion"], "oauth-token-operator.io/v1alpha1");
    assert_eq!(
        obj["spec"]["tokenEndpoint"],
        "https://auth.example.com/token"
    );
    assert_eq!(obj["status"]["conditions"][1]["type"], "Ready");

    let none = get(
        &client,
        &format!("{TOKENS}?includeObject=None"),
        Some(KUBECTL_ACCEPT),
    )
    .await;
    assert!(none["rows"][0].get("object").is_none(), "{none}");
    assert_eq!(none["rows"][0]["cells"][0], "ready");

    // v1beta1 only
    let beta = get(
        &client,
        &one,
        Some("application/json;as=Table;v=v1beta1;g=meta.k8s.io"),
    )
    .await;
    assert_eq!(beta["apiVersion"], "meta.k8s.io/v1beta1");
    assert_eq!(
        beta["rows"][0]["object"]["apiVersion"],
        "meta.k8s.io/v1beta1"
    );

    // nothing acceptable: 406; a bad includeObject: 400
    let r = client
        .request_text(request(
            "GET",
            &one,
            Some("application/json;as=Table;v=v2;g=meta.k8s.io"),
            None,
        ))
        .await;
    assert_api_err(r, 406, "NotAcceptable");
    let r = client
        .request_text(request(
            "GET",
            &format!("{one}?includeObject=Everything"),
            Some(KUBECTL_ACCEPT),
            None,
        ))
        .await;
    assert_api_err(r, 400, "BadRequest");
}

#[tokio::test]
async fn plain_json_is_unchanged() {
    let (_server, client) = start_oauth().await;
    create_token(&client, "ready", true).await;
    for accept in [
        None,
        Some("application/json"),
        Some("application/json, */*"),
    ] {
        let list = get(&client, TOKENS, accept).await;
        assert_eq!(list["kind"], "OAuthTokenList", "{accept:?}");
        assert_eq!(list["apiVersion"], "oauth-token-operator.io/v1alpha1");
        let item = &list["items"][0];
        assert_eq!(item["kind"], "OAuthToken");
        assert_eq!(item["metadata"]["name"], "ready");
        assert_eq!(item["status"]["conditions"][1]["reason"], "TokenValid");
        assert!(list.get("rows").is_none());

        let one = get(&client, &format!("{TOKENS}/ready"), accept).await;
        assert_eq!(one["kind"], "OAuthToken");
        assert_eq!(one["spec"]["grant"], json!({"clientCredentials": {}}));
    }
    // the metadata-only representation is still served
    let meta = get(
        &client,
        TOKENS,
        Some("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"),
    )
    .await;
    assert_eq!(meta["kind"], "PartialObjectMetadataList");
    assert_eq!(meta["items"][0]["kind"], "PartialObjectMetadata");
}

#[tokio::test]
async fn default_and_builtin_columns() {
    let (_server, client) = start_oauth().await;
    // a CRD without printer columns: Name + Age (a date, rendered as an age)
    send(
        &client,
        "POST",
        "/apis/test.example.com/v1/namespaces/default/widgets",
        "application/json",
        json!({"apiVersion": "test.example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1}}),
    )
    .await;
    let widgets = get(
        &client,
        "/apis/test.example.com/v1/namespaces/default/widgets",
        Some(KUBECTL_ACCEPT),
    )
    .await;
    assert_eq!(column_names(&widgets), ["Name", "Age"]);
    assert_eq!(widgets["columnDefinitions"][1]["type"], "date");
    assert_eq!(widgets["rows"][0]["cells"][0], "w");
    assert_seconds(&widgets["rows"][0]["cells"][1]);

    send(
        &client,
        "POST",
        "/api/v1/namespaces/default/secrets",
        "application/json",
        json!({"metadata": {"name": "s"}, "stringData": {"a": "1", "b": "2"}}),
    )
    .await;
    let secrets = get(
        &client,
        "/api/v1/namespaces/default/secrets",
        Some(KUBECTL_ACCEPT),
    )
    .await;
    assert_eq!(column_names(&secrets), ["Name", "Type", "Data", "Age"]);
    let cells = &secrets["rows"][0]["cells"];
    assert_eq!(
        cells.as_array().unwrap()[..3],
        [json!("s"), json!("Opaque"), json!(2)]
    );
    assert_seconds(&cells[3]);

    let cms = get(
        &client,
        "/api/v1/namespaces/default/configmaps",
        Some(KUBECTL_ACCEPT),
    )
    .await;
    assert_eq!(column_names(&cms), ["Name", "Data", "Age"]);
    assert!(cms["rows"].as_array().unwrap().is_empty());

    let crds = get(
        &client,
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/oauthtokens.oauth-token-operator.io",
        Some(KUBECTL_ACCEPT),
    )
    .await;
    assert_eq!(column_names(&crds), ["Name", "Created At"]);
    let created = crds["rows"][0]["cells"][1].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "{created}"
    );
}

#[tokio::test]
async fn watch_as_table_sends_columns_once() {
    let (_server, client) = start_oauth().await;
    create_token(&client, "a", false).await;
    let stream = client
        .request_stream(request(
            "GET",
            &format!("{TOKENS}?watch=true&timeoutSeconds=20"),
            Some(KUBECTL_ACCEPT),
            None,
        ))
        .await
        .unwrap();
    let mut lines = stream.lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next())
            .await
            .expect("watch event")
            .unwrap()
            .unwrap();
        serde_json::from_str(&line).unwrap()
    };
    let first = next().await;
    assert_eq!(first["type"], "ADDED");
    assert_eq!(first["object"]["kind"], "Table");
    assert_eq!(
        column_names(&first["object"])[..6],
        ["Name", "Ready", "Reason", "Expires", "Next Refresh", "Age"]
    );
    assert_eq!(first["object"]["rows"][0]["cells"][0], "a");

    create_token(&client, "b", true).await;
    let added = next().await;
    assert_eq!(added["type"], "ADDED");
    assert!(added["object"]["columnDefinitions"].is_null(), "{added}");
    assert_eq!(added["object"]["rows"][0]["cells"][0], "b");
    let modified = next().await;
    assert_eq!(modified["type"], "MODIFIED");
    let cells = &modified["object"]["rows"][0]["cells"];
    assert_eq!(
        (cells[0].as_str(), cells[1].as_str()),
        (Some("b"), Some("True"))
    );
    assert_eq!(
        modified["object"]["metadata"]["resourceVersion"],
        modified["object"]["rows"][0]["object"]["metadata"]["resourceVersion"]
    );
}
