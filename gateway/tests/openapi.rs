//! `GET /v1/openapi.json` against the real binary: the hand-maintained
//! document describes every route the router declares (read from the
//! router's source, so a new route without a description fails here), and
//! every path it describes is served (not the fallback 404, not 405); real
//! answers of every JSON endpoint and the README's examples validate
//! against the schemas it gives (strictly: an undescribed field fails).
// The document describes the status page routes too (feature status-page).
#![cfg(feature = "status-page")]
#![allow(clippy::unwrap_used)]

mod common;

use common::Gateway;
use serde_json::Value;
use std::path::Path;

/// `(path, method)` of every `.route("path", method(...))` in the router's
/// source files.
fn declared_routes() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut routes = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for part in text.split(".route(\"").skip(1) {
            let (route, rest) = part.split_once('"').unwrap();
            let rest = rest.trim_start_matches([',', ' ', '\n']);
            let method = rest.split('(').next().unwrap().rsplit("::").next().unwrap().trim();
            assert!(
                ["get", "post", "put", "delete", "patch"].contains(&method),
                "{}: cannot read the method of route {route}: {method:?}",
                path.display()
            );
            routes.push((route.to_owned(), method.to_owned()));
        }
    }
    assert!(routes.len() >= 15, "found only {routes:?}");
    routes
}

#[tokio::test]
async fn every_route_is_described_and_every_described_path_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::service_topics(&[("t", "")]);
    let gw = Gateway::start(&dir.path().join("d"), Some(&config)).await;
    let resp = gw.http.get(gw.url("/v1/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();

    let declared = declared_routes();
    for (route, method) in &declared {
        assert!(
            paths.get(route).is_some_and(|p| p.get(method).is_some()),
            "{} {route} is served but not described in gateway/src/http/openapi.json",
            method.to_uppercase()
        );
    }
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            assert!(
                declared.iter().any(|(r, m)| r == path && m == method),
                "{} {path} is described but the router does not declare it",
                method.to_uppercase()
            );
            // Served: a request reaches a handler (any answer but the
            // fallback's 404 and 405).
            let url = gw.url(
                &path
                    .replace("{topic}", "t")
                    .replace("{partition}", "0")
                    .replace("{group}", "g")
                    .replace("{service}", "t"),
            );
            let req = gw.http.request(method.to_uppercase().parse().unwrap(), url).query(&[("topics", "t")]);
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let streaming = resp.headers().get("content-type").is_some_and(|v| {
                v.to_str().unwrap().contains("stream") || v.to_str().unwrap().contains("ndjson")
            });
            let body = if streaming { String::new() } else { resp.text().await.unwrap() };
            assert!(
                status != 405 && !body.contains("no such endpoint"),
                "{} {path}: {status} {body}",
                method.to_uppercase()
            );
        }
    }
}

/// Problems of `value` against `schema` (the subset of JSON Schema the
/// document uses: `$ref`, `type`, `properties`, `required`,
/// `additionalProperties`, `items`, `enum`, `minimum`, `maximum`). Strict
/// about objects: a field the schema does not describe is a problem unless
/// `additionalProperties` allows it, so the document cannot fall behind the
/// handlers.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap();
        return check(doc, &doc["components"]["schemas"][name], value, at, out);
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let type_of = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let t = type_of(value);
    let fits = types.is_empty() || types.contains(&t) || (t == "integer" && types.contains(&"number"));
    if !fits {
        out.push(format!("{at}: {t} where the document says {types:?}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            out.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), value.as_f64()) {
        if n < min {
            out.push(format!("{at}: {n} below the minimum {min}"));
        }
    }
    if let (Some(max), Some(n)) = (schema["maximum"].as_f64(), value.as_f64()) {
        if n > max {
            out.push(format!("{at}: {n} above the maximum {max}"));
        }
    }
    match value {
        Value::Object(fields) => {
            for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if !fields.contains_key(name) {
                    out.push(format!("{at}: required field {name:?} missing"));
                }
            }
            for (name, v) in fields {
                let here = format!("{at}.{name}");
                match (schema["properties"].get(name), &schema["additionalProperties"]) {
                    (Some(s), _) => check(doc, s, v, &here, out),
                    (None, Value::Object(s)) => check(doc, &Value::Object(s.clone()), v, &here, out),
                    (None, Value::Bool(false)) => out.push(format!("{here}: not allowed by the document")),
                    // A free-form object (a map without a value schema).
                    (None, Value::Null) if schema["properties"].is_null() => {}
                    (None, Value::Null) => out.push(format!("{here}: not described in the document")),
                    (None, _) => {}
                }
            }
        }
        Value::Array(items) if !schema["items"].is_null() => {
            for (i, v) in items.iter().enumerate() {
                check(doc, &schema["items"], v, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Asserts `value` matches `schema`, naming every problem.
fn assert_valid(doc: &Value, schema: &Value, value: &Value, what: &str) {
    let mut problems = Vec::new();
    check(doc, schema, value, "$", &mut problems);
    assert!(
        problems.is_empty(),
        "{what} does not match gateway/src/http/openapi.json:\n{}\n{value}",
        problems.join("\n")
    );
}

fn response_schema<'a>(doc: &'a Value, path: &str, method: &str, status: u16) -> &'a Value {
    let mut response = &doc["paths"][path][method]["responses"][status.to_string()];
    if let Some(r) = response["$ref"].as_str() {
        response = &doc["components"]["responses"][r.rsplit('/').next().unwrap()];
    }
    let s = &response["content"]["application/json"]["schema"];
    assert!(!s.is_null(), "{} {path}: no {status} JSON response described", method.to_uppercase());
    s
}

/// Real answers of every JSON endpoint (with records, a consumer group, an
/// uplink with a metered budget, an error) match the schemas the document
/// gives them: the hand-maintained document is checked against the
/// handlers, field by field, both ways.
#[tokio::test]
async fn real_answers_match_the_described_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ingest", receiver.local_addr().unwrap());
    let app = axum::Router::new().route("/ingest", axum::routing::post(|_: axum::body::Bytes| async {}));
    tokio::spawn(async move { axum::serve(receiver, app).await });
    let config = format!(
        "{}\n[[uplink]]\nname = \"central\"\nkind = \"http\"\nbrokers = [\"{url}\"]\nlinger = \"1ms\"\n\
         budget = {{ bytes = \"1MiB\" }}\n",
        common::service_topics(&[("alarms", "express = true\ndurability = \"sync\""), ("logs", "")])
    );
    let gw = Gateway::start(&dir.path().join("d"), Some(&config)).await;
    let doc: Value = gw.http.get(gw.url("/v1/openapi.json")).send().await.unwrap().json().await.unwrap();

    let produce = serde_json::json!({"records": [
        {"key": "dev-1", "value": {"t": 21.5}, "headers": {"h": "v"}},
        {"value": "plain"},
        {"value": 3, "header_list": [{"name": "h", "value": "a"}, {"name": "h", "value_b64": "AP8="}]},
    ]});
    assert_valid(
        &doc,
        &doc["paths"]["/v1/topics/{topic}/records"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"],
        &produce,
        "the produce body",
    );
    let (status, body) = gw.post_json("/v1/topics/alarms/records", &produce).await;
    assert_valid(
        &doc,
        response_schema(&doc, "/v1/topics/{topic}/records", "post", status),
        &body,
        "POST records",
    );
    gw.produce("logs", &[serde_json::json!({"l": 1})]).await;
    gw.settle("alarms").await;

    let checks: [(&str, &str, &str); 5] = [
        (
            "/v1/topics/alarms/partitions/0/records?offset=0",
            "/v1/topics/{topic}/partitions/{partition}/records",
            "fetch",
        ),
        ("/v1/topics", "/v1/topics", "topics"),
        ("/v1/services", "/v1/services", "services"),
        ("/v1/groups/ops/offsets?topics=alarms,logs", "/v1/groups/{group}/offsets", "offsets"),
        ("/v1/status", "/v1/status", "status"),
    ];
    for (url, path, what) in checks {
        let (status, body) = gw.get_json(url).await;
        assert_eq!(status, 200, "{what}: {body}");
        assert_valid(&doc, response_schema(&doc, path, "get", 200), &body, what);
    }
    let (status, body) =
        gw.post_json("/v1/groups/ops/fetch", &serde_json::json!({"topics": ["alarms", "logs"]})).await;
    assert_eq!(status, 200, "{body}");
    assert_valid(&doc, response_schema(&doc, "/v1/groups/{group}/fetch", "post", 200), &body, "group fetch");
    let offsets = common::positions_after(body["records"].as_array().unwrap());
    let (status, body) =
        gw.post_json("/v1/groups/ops/commit", &serde_json::json!({"offsets": offsets})).await;
    assert_valid(&doc, response_schema(&doc, "/v1/groups/{group}/commit", "post", status), &body, "commit");
    let resp = gw
        .http
        .put(gw.url("/v1/services/logs"))
        .json(&serde_json::json!({"weight": 3}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_valid(&doc, response_schema(&doc, "/v1/services/{service}", "put", status), &body, "PUT service");
    // The uplink has sent something, so its per-service view is filled in.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let uplinks = loop {
        let (_, u) = gw.get_json("/v1/uplinks").await;
        if u["uplinks"][0]["services"]["logs"]["sent_records"].as_u64().unwrap_or(0) >= 1 {
            break u;
        }
        assert!(std::time::Instant::now() < deadline, "the uplink sent nothing: {u}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_valid(&doc, response_schema(&doc, "/v1/uplinks", "get", 200), &uplinks, "uplinks");
    // Errors have the described shape too.
    let (status, body) = gw.get_json("/v1/topics/nope/partitions/0/records").await;
    assert_eq!(status, 404, "{body}");
    assert_valid(
        &doc,
        response_schema(&doc, "/v1/topics/{topic}/partitions/{partition}/records", "get", 404),
        &body,
        "404",
    );
}

/// The README's request bodies and answers (`curl ... -d '...'` followed by
/// `# {...}`) match the document.
#[test]
fn readme_examples_match_the_document() {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    // Shell lines with their continuations joined.
    let mut lines = Vec::new();
    let mut current = String::new();
    for l in readme.lines() {
        if let Some(head) = l.strip_suffix('\\') {
            current.push_str(head);
            continue;
        }
        current.push_str(l);
        lines.push(std::mem::take(&mut current));
    }
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    // The document path a URL path is an instance of.
    let operation = |url: &str| -> Option<&String> {
        let url = url.split('?').next().unwrap();
        paths.iter().copied().find(|p| {
            let (a, b): (Vec<&str>, Vec<&str>) = (p.split('/').collect(), url.split('/').collect());
            a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.starts_with('{') || x == y)
        })
    };
    let mut last: Option<(String, String)> = None;
    let mut checked = 0;
    for l in &lines {
        let l = l.trim();
        if l.starts_with("curl ") {
            last = None;
            let Some(url) = l
                .split_whitespace()
                .find_map(|w| w.trim_matches('\'').split_once("8080").map(|(_, p)| p.to_owned()))
            else {
                continue;
            };
            let method = if l.contains("-XPOST") || l.contains("-X POST") {
                "post"
            } else if l.contains("-XPUT") || l.contains("-X PUT") {
                "put"
            } else {
                "get"
            };
            let Some(path) = operation(&url) else { continue };
            if let Some((_, body)) = l.split_once("-d '") {
                let body: Value = serde_json::from_str(body.split('\'').next().unwrap()).unwrap();
                let schema = &doc["paths"][path.as_str()][method]["requestBody"]["content"]
                    ["application/json"]["schema"];
                assert_valid(&doc, schema, &body, &format!("README request {method} {url}"));
                checked += 1;
            }
            last = Some((path.clone(), method.to_owned()));
        } else if let (Some(answer), Some((path, method))) = (l.strip_prefix("# {"), &last) {
            let body: Value = serde_json::from_str(&format!("{{{answer}")).unwrap();
            assert_valid(
                &doc,
                response_schema(&doc, path, method, 200),
                &body,
                &format!("README answer of {method} {path}"),
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} README examples found");
}
