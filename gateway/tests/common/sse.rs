//! A Server-Sent Events client for the group stream
//! (`GET /v1/groups/{group}/stream`).

use super::Gateway;
use serde_json::Value;
use std::time::Duration;

/// How long to wait for an event before calling it a hang.
const GUARD: Duration = Duration::from_secs(60);

/// A record's place: (topic, partition, offset).
pub type Place = (String, u64, u64);

pub fn place(r: &Value) -> Place {
    (r["topic"].as_str().unwrap().to_owned(), r["partition"].as_u64().unwrap(), r["offset"].as_u64().unwrap())
}

/// A Server-Sent Events reader over a streaming response.
pub struct SseClient {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl SseClient {
    pub async fn open(gw: &Gateway, group: &str, query: &str) -> SseClient {
        // No overall timeout: the harness client's would cut the stream.
        let client = reqwest::Client::new();
        let resp = client
            .get(gw.url(&format!("/v1/groups/{group}/stream?{query}")))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ctype.starts_with("text/event-stream"), "{ctype}");
        SseClient { resp, buf: Vec::new() }
    }

    /// The next event with data: (id, record); comments are skipped.
    pub async fn next(&mut self) -> (String, Value) {
        let (id, data) = self.next_raw().await;
        (id, serde_json::from_str(&data).unwrap())
    }

    /// The next event with data: (id, data lines joined by `\n`), for
    /// records that `serde_json::Value` cannot hold.
    pub async fn next_raw(&mut self) -> (String, String) {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).unwrap();
                let (mut id, mut data) = (String::new(), Vec::new());
                // Lines end in \r\n, \r or \n (a value's raw line breaks
                // become line breaks of the event).
                for line in text.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim_start().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    } else {
                        assert!(line.is_empty() || line.starts_with(':'), "unexpected SSE line {line:?}");
                    }
                }
                if !data.is_empty() {
                    return (id, data.join("\n"));
                }
                continue;
            }
            let chunk = tokio::time::timeout(GUARD, self.resp.chunk())
                .await
                .expect("no SSE event in time")
                .unwrap()
                .expect("SSE stream ended");
            self.buf.extend_from_slice(&chunk);
        }
    }

    pub async fn records(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let (id, r) = self.next().await;
            let (t, p, o) = place(&r);
            assert_eq!(id, format!("{t}/{p}/{o}"));
            out.push(r);
        }
        out
    }

    /// True once the server has ended the response.
    pub async fn ended(&mut self) -> bool {
        loop {
            match tokio::time::timeout(GUARD, self.resp.chunk()).await.expect("SSE stream did not end") {
                Ok(Some(chunk)) => {
                    let text = String::from_utf8_lossy(&chunk).into_owned();
                    assert!(text.lines().all(|l| l.is_empty() || l.starts_with(':')), "{text}");
                }
                Ok(None) | Err(_) => return true,
            }
        }
    }
}
