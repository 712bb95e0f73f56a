//! The operator's status page (cargo feature `status-page`, on by default):
//!
//! - `GET /`: one self-contained HTML page (plain JS, canvas charts, no
//!   external resources), embedded in the binary. It holds no data, so it
//!   needs no token; it asks for one when the feed answers 401 and keeps it
//!   in the browser's `sessionStorage`.
//! - `GET /v1/status`: one snapshot (JSON): node, store, the bodies of
//!   `GET /v1/services`, `/v1/topics` and `/v1/uplinks`, and whether the
//!   caller may change weights.
//! - `GET /v1/status/stream?interval_ms=1000`: the same snapshot as
//!   newline-delimited JSON, one line per interval, until the client goes
//!   away or the gateway shuts down. The page reads it with `fetch()`
//!   streaming, which (unlike `EventSource`) sends the `Authorization`
//!   header, so a token never goes into a URL.
//!
//! Both feeds need what `/metrics` needs (a token with `metrics` or
//! `admin`) when tokens are configured; weight changes go through
//! `PUT /v1/services/{name}` (admin).

use super::auth::Access;
use super::{query_params, uint_param, ApiError, QueryMap};
use crate::state::Shared;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The page, embedded at build time.
pub const PAGE: &str = include_str!("status.html");

/// Bounds of the feed's `interval_ms`.
const MIN_INTERVAL_MS: u64 = 200;
const MAX_INTERVAL_MS: u64 = 60_000;

/// Adds the page and its feeds to the API router.
pub(super) fn routes(router: Router<Shared>) -> Router<Shared> {
    router.route("/", get(page)).route("/v1/status", get(snapshot)).route("/v1/status/stream", get(stream))
}

/// `Content-Security-Policy` of the page: its own inline script (by hash)
/// and style, requests to its own origin only, nothing else.
fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine as _;
        use sha2::Digest as _;
        let script = PAGE
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map_or("", |(s, _)| s);
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script.as_bytes()));
        format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        )
    })
}

async fn page() -> Response {
    let mut resp = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_security_policy()) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// One snapshot of the node's state.
pub(super) fn status_json(shared: &Shared, access: &Access) -> serde_json::Value {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    serde_json::json!({
        "node": shared.config.node.id,
        "version": env!("CARGO_PKG_VERSION"),
        "time_ms": now_ms,
        "uptime_ms": shared.started.elapsed().as_millis() as u64,
        "ready": shared.ready.load(std::sync::atomic::Ordering::Relaxed),
        "can_admin": access.is_admin(),
        "store": {
            "bytes": shared.store.total_bytes(),
            "max_bytes": shared.config.store.max_bytes.as_u64(),
        },
        "services": super::admin::services_json(shared)["services"].take(),
        "topics": super::read::topics_json(shared)["topics"].take(),
        "uplinks": super::admin::uplinks_json(shared)["uplinks"].take(),
        "groups": groups_json(shared),
    })
}

/// Committed consumer-group positions with their lag in records (to the
/// durable end, what a consumer can read).
fn groups_json(shared: &Shared) -> serde_json::Value {
    let lags = match crate::delivery::group_lags(&shared.store) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "status: cannot list group offsets");
            return serde_json::json!([]);
        }
    };
    let list: Vec<_> = lags
        .into_iter()
        .map(|g| {
            serde_json::json!({
                "group": g.group,
                "topic": g.topic,
                "partition": g.partition.0,
                "committed": g.committed,
                "durable": g.durable,
                "lag_records": g.lag_records,
                "lag_seconds": g.lag_seconds,
            })
        })
        .collect();
    serde_json::Value::Array(list)
}

async fn snapshot(
    State(shared): State<Shared>,
    access: Option<Extension<Access>>,
) -> axum::Json<serde_json::Value> {
    axum::Json(status_json(&shared, &access.map_or(Access(None), |Extension(a)| a)))
}

async fn stream(
    State(shared): State<Shared>,
    access: Option<Extension<Access>>,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let params = query_params(query, &["interval_ms"])?;
    let interval = uint_param(&params, "interval_ms", 1000, MAX_INTERVAL_MS)?;
    if interval < MIN_INTERVAL_MS {
        return Err(ApiError::bad_request(format!(
            "interval_ms: {interval} is smaller than the minimum {MIN_INTERVAL_MS}"
        )));
    }
    let access = access.map_or(Access(None), |Extension(a)| a);
    let mut ticker = tokio::time::interval(Duration::from_millis(interval));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = shared.shutdown.clone();
    let lines = futures_util::stream::unfold(
        (shared, access, ticker, shutdown),
        |(shared, access, mut ticker, mut shutdown)| async move {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return None,
            }
            if *shutdown.borrow() {
                return None;
            }
            let mut line = status_json(&shared, &access).to_string();
            line.push('\n');
            Some((Ok::<_, std::convert::Infallible>(line), (shared, access, ticker, shutdown)))
        },
    );
    let mut resp = Body::from_stream(lines).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_small_and_self_contained() {
        assert!(PAGE.len() < 64 * 1024, "the page is {} bytes", PAGE.len());
        for external in ["http://", "https://", "//cdn", "src=\"http", "@import"] {
            assert!(!PAGE.contains(external), "the page refers to something outside: {external}");
        }
        assert_eq!(PAGE.matches("<script>").count(), 1, "one inline script (its hash is in the CSP)");
        assert!(content_security_policy().contains("script-src 'sha256-"));
    }
}
