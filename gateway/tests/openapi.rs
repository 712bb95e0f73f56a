//! `GET /v1/openapi.json` against the real binary: the hand-maintained
//! document describes every route the router declares (read from the
//! router's source, so a new route without a description fails here), and
//! every path it describes is served (not the fallback 404, not 405).
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
