//! The HTTP API (axum), versioned under `/v1`; see the README for the
//! contract. One file per area; all errors are [`ApiError`].

mod admin;
pub mod auth;
pub mod codec;
pub mod error;
mod groups;
pub mod openapi;
mod produce;
mod read;
pub mod serve;
#[cfg(feature = "status-page")]
pub mod status;
mod stream;
mod stream_sse;
mod stream_ws;

pub use admin::{parse_service_update, ServiceUpdate};
pub use error::ApiError;
pub use groups::{parse_commit, parse_fetch, CommitEntry, FetchBody};

use crate::state::Shared;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query};
use axum::response::IntoResponse as _;
use axum::routing::{get, post};
use axum::Router;
use std::collections::HashMap;

/// The whole API as a router, so tests can call it without a socket.
pub fn router(shared: Shared) -> Router {
    let authenticate = axum::middleware::from_fn_with_state(shared.clone(), auth::require_token);
    let router = Router::new()
        .route("/v1/topics", get(read::list_topics))
        .route("/v1/topics/{topic}/records", post(produce::produce))
        .route("/v1/topics/{topic}/partitions/{partition}/records", get(read::fetch))
        .route("/v1/groups/{group}/fetch", post(groups::fetch))
        .route("/v1/groups/{group}/commit", post(groups::commit))
        .route("/v1/groups/{group}/offsets", get(groups::offsets))
        .route("/v1/groups/{group}/stream", get(stream::stream))
        .route("/v1/services", get(admin::services))
        .route("/v1/uplinks", get(admin::uplinks))
        .route("/v1/rules", get(admin::rules))
        .route("/v1/services/{service}", axum::routing::put(admin::update_service))
        .route("/v1/reload", post(admin::reload))
        .route("/metrics", get(admin::metrics))
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/v1/openapi.json", get(openapi::openapi));
    #[cfg(feature = "status-page")]
    let router = status::routes(router);
    router
        .fallback(admin::not_found)
        // Bodies are read with our own limit so the 413 is JSON and names
        // the setting.
        .layer(DefaultBodyLimit::disable())
        .layer(authenticate)
        .with_state(shared)
}

/// Reads a body up to `http.max_body`, within `http.body_timeout` (the
/// handler runs once the headers are in, so the timer starts there). A body
/// that is too slow is answered 408 and counted; hyper closes the
/// connection, as the rest of the body was never read.
pub(crate) async fn read_body(shared: &Shared, body: Body) -> Result<Bytes, ApiError> {
    let limit = shared.config.http.max_body;
    let timeout = shared.config.http.body_timeout;
    let read = axum::body::to_bytes(body, limit.as_u64() as usize);
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds http.max_body ({limit}) or could not be read: {e}"),
        )),
        Err(_) => {
            shared.http_connections.body_timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(ApiError::new(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not complete within http.body_timeout ({})",
                    sluice_config::format_duration(timeout)
                ),
            ))
        }
    }
}

/// A 200 answer with a JSON body encoded by one of the [`codec`] reply
/// encoders.
pub(crate) fn json_reply(
    body: Result<Vec<u8>, serde_json::Error>,
) -> Result<axum::response::Response, ApiError> {
    let body = body.map_err(|e| {
        ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the reply: {e}"))
    })?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Query parameters as a map, with a JSON error when malformed.
pub(crate) type QueryMap = Result<Query<HashMap<String, String>>, QueryRejection>;

/// Checks query parameters against the allowed names.
pub(crate) fn query_params(q: QueryMap, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let Query(map) = q.map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
    if let Some(bad) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {bad:?} (allowed: {})",
            allowed.join(", ")
        )));
    }
    Ok(map)
}

/// A non-negative integer parameter with a default and an upper bound.
pub(crate) fn uint_param(
    map: &HashMap<String, String>,
    name: &str,
    default: u64,
    max: u64,
) -> Result<u64, ApiError> {
    match map.get(name) {
        None => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n <= max => Ok(n),
            Ok(n) => Err(ApiError::bad_request(format!("{name}: {n} is larger than the maximum {max}"))),
            Err(_) => {
                Err(ApiError::bad_request(format!("{name}: expected a non-negative integer, got {v:?}")))
            }
        },
    }
}

/// Parses a partition path segment.
pub(crate) fn partition_param(raw: &str) -> Result<sluice_store::PartitionId, ApiError> {
    raw.parse::<u32>().map(sluice_store::PartitionId).map_err(|_| {
        ApiError::bad_request(format!("partition: expected a non-negative integer, got {raw:?}"))
    })
}
