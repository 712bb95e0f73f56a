//! Bearer tokens of the HTTP API against the real binary on 127.0.0.1:0:
//! 401 without a (known) token, 403 outside its scope, open probes; a
//! token read from a file in `$CREDENTIALS_DIRECTORY` (`token_file`).
#![allow(clippy::unwrap_used)]

mod common;

use common::Gateway;
use serde_json::{json, Value};
use sha2::Digest as _;

const PRODUCER: &str = "producer-token-telemetry";
const READER: &str = "reader-token-telemetry-only";
const CONSUMER: &str = "consumer-token-all-services";
const ADMIN: &str = "admin-token-0123456789";
const METRICS: &str = "metrics-token-0123456789";

fn config() -> String {
    let hash: String = sha2::Sha256::digest(CONSUMER.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let services = common::service_topics(&[("alarms", ""), ("telemetry", "")]);
    format!(
        r#"{services}
[[http.tokens]]
token = "{PRODUCER}"
services = ["telemetry"]
produce = true
[[http.tokens]]
token = "{READER}"
services = ["telemetry"]
consume = true
[[http.tokens]]
token_hash = "sha256:{hash}"
services = ["*"]
consume = true
[[http.tokens]]
token = "{ADMIN}"
admin = true
[[http.tokens]]
token = "{METRICS}"
metrics = true
"#
    )
}

/// One request; the status, the `WWW-Authenticate` header and the JSON body.
async fn call(
    gw: &Gateway,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, String, Value) {
    let mut req = gw.http.request(method.parse().unwrap(), gw.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let challenge =
        r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let text = r.text().await.unwrap();
    (status, challenge, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn tokens_authenticate_and_scopes_authorize() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&dir.path().join("d"), Some(&config())).await;
    let record = || Some(json!({ "records": [{ "value": { "t": 1 } }] }));

    // Probes stay open.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(call(&gw, "GET", path, None, None).await.0, 200, "{path}");
    }
    // No token, or an unknown one: 401 with a Bearer challenge and a JSON error.
    let (status, challenge, body) = call(&gw, "POST", "/v1/topics/telemetry/records", None, record()).await;
    assert_eq!(status, 401);
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert!(body["error"].as_str().unwrap().contains("missing bearer token"), "{body}");
    let (status, challenge, body) =
        call(&gw, "POST", "/v1/topics/telemetry/records", Some("not-a-token-at-all"), record()).await;
    assert_eq!((status, challenge.contains("invalid_token")), (401, true), "{body}");
    assert_eq!(call(&gw, "GET", "/v1/nothing", None, None).await.0, 401);
    assert_eq!(call(&gw, "GET", "/v1/nothing", Some(ADMIN), None).await.0, 404);

    // Produce: its services only.
    let (status, _, body) = call(&gw, "POST", "/v1/topics/telemetry/records", Some(PRODUCER), record()).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = call(&gw, "POST", "/v1/topics/alarms/records", Some(PRODUCER), record()).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("may not produce to topic \"alarms\""), "{body}");
    // An unconfigured topic belongs to the default service: not covered.
    assert_eq!(call(&gw, "POST", "/v1/topics/other/records", Some(PRODUCER), record()).await.0, 403);
    // Percent-encoding cannot smuggle a topic past the check.
    assert_eq!(call(&gw, "POST", "/v1/topics/%61larms/records", Some(PRODUCER), record()).await.0, 400);

    // Consume: reading partitions and groups; the hashed token works.
    // (Long-poll: the buffered record becomes visible once durable.)
    let read = "/v1/topics/telemetry/partitions/0/records?wait_ms=5000";
    assert_eq!(call(&gw, "GET", read, Some(PRODUCER), None).await.0, 403);
    let (status, _, body) = call(&gw, "GET", read, Some(CONSUMER), None).await;
    assert_eq!((status, body["records"].as_array().map(Vec::len)), (200, Some(1)), "{body}");
    let fetch = |topics: Value| Some(json!({ "topics": topics, "max_records": 10 }));
    let (status, _, body) =
        call(&gw, "POST", "/v1/groups/g/fetch", Some(READER), fetch(json!(["telemetry"]))).await;
    assert_eq!((status, body["records"].as_array().map(Vec::len)), (200, Some(1)), "{body}");
    let (status, _, body) =
        call(&gw, "POST", "/v1/groups/g/fetch", Some(READER), fetch(json!(["telemetry", "alarms"]))).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("\"alarms\""), "{body}");
    let commit = |topic: &str| Some(json!({ "offsets": [{ "topic": topic, "partition": 0, "offset": 0 }] }));
    assert_eq!(call(&gw, "POST", "/v1/groups/g/commit", Some(READER), commit("telemetry")).await.0, 200);
    assert_eq!(call(&gw, "POST", "/v1/groups/g/commit", Some(READER), commit("alarms")).await.0, 403);
    assert_eq!(
        call(&gw, "POST", "/v1/groups/g/fetch", Some(PRODUCER), fetch(json!(["telemetry"]))).await.0,
        403
    );
    // Offsets without a topic list show the token's topics only.
    let (status, _, body) = call(&gw, "GET", "/v1/groups/g/offsets", Some(READER), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.to_string().contains("telemetry") && !body.to_string().contains("alarms"), "{body}");

    // Admin endpoints need admin; /metrics takes admin or metrics.
    for (method, path, body) in [
        ("GET", "/v1/topics", None),
        ("GET", "/v1/services", None),
        ("GET", "/v1/uplinks", None),
        ("PUT", "/v1/services/telemetry", Some(json!({ "weight": 3 }))),
    ] {
        assert_eq!(call(&gw, method, path, Some(CONSUMER), body.clone()).await.0, 403, "{path}");
        assert_eq!(call(&gw, method, path, Some(METRICS), body.clone()).await.0, 403, "{path}");
        assert_eq!(call(&gw, method, path, Some(ADMIN), body).await.0, 200, "{path}");
    }
    assert_eq!(call(&gw, "GET", "/metrics", Some(PRODUCER), None).await.0, 403);
    assert_eq!(call(&gw, "GET", "/metrics", Some(METRICS), None).await.0, 200);
    assert_eq!(call(&gw, "GET", "/metrics", Some(ADMIN), None).await.0, 200);
}

/// A token given as `token_file`, a relative name read from
/// `$CREDENTIALS_DIRECTORY` as under the packaged systemd unit.
#[tokio::test]
async fn a_token_file_in_the_credentials_directory_authenticates() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("secret_admin-token"), format!("{ADMIN}\n")).unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "[[http.tokens]]\ntoken_file = \"secret_admin-token\"\nadmin = true\n").unwrap();
    let creds = creds.to_str().unwrap();
    let gw =
        Gateway::start_env(&dir.path().join("d"), Some(config), &[("CREDENTIALS_DIRECTORY", creds)]).await;
    assert_eq!(call(&gw, "GET", "/v1/services", None, None).await.0, 401);
    assert_eq!(call(&gw, "GET", "/v1/services", Some(METRICS), None).await.0, 401);
    assert_eq!(call(&gw, "GET", "/v1/services", Some(ADMIN), None).await.0, 200);
}
