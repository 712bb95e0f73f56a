//! Operations endpoints: `/healthz`, `/readyz`, `/metrics`,
//! `GET /v1/services`, `PUT /v1/services/{name}` (run-time weight change).

use super::codec::parse_json;
use super::{read_body, ApiError};
use crate::state::Shared;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use std::sync::atomic::Ordering;

pub(super) async fn healthz(State(shared): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    if !shared.ingest.writer_alive.load(Ordering::Relaxed) && !*shared.shutdown.borrow() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the ingest writer has stopped"));
    }
    Ok(Json(serde_json::json!({ "status": "ok" })))
}

pub(super) async fn readyz(State(shared): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    if !shared.ready.load(Ordering::Relaxed) {
        return Err(ApiError::unavailable("not ready (starting or draining)"));
    }
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

pub(super) async fn metrics(State(shared): State<Shared>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::render(&shared))
}

pub(super) async fn services(State(shared): State<Shared>) -> Json<serde_json::Value> {
    Json(services_json(&shared))
}

/// The body of `GET /v1/services` (also part of the status feed).
pub(super) fn services_json(shared: &Shared) -> serde_json::Value {
    let queues = shared.ingest.queue_stats();
    let stored = shared.store.service_bytes();
    let list: Vec<_> = shared
        .services
        .iter()
        .zip(queues)
        .map(|(s, q)| {
            let class = s.class();
            let c = &s.counters;
            serde_json::json!({
                "name": s.name,
                "weight": class.weight,
                "express": class.express,
                "durability": match s.durability { sluice_config::Durability::Sync => "sync", sluice_config::Durability::Buffered => "buffered" },
                "ttl_ms": s.ttl.map(|t| t.as_millis() as u64),
                "max_pending": s.max_pending,
                "pending_bytes": s.pending_bytes.load(Ordering::Relaxed),
                "queued_jobs": q.jobs,
                "oldest_pending_ms": q.oldest.map(|d| d.as_millis() as u64),
                "stored_bytes": stored.get(&s.name).copied().unwrap_or(0),
                "reserved_bytes": s.reserved_bytes,
                "records_in": c.records_in.load(Ordering::Relaxed),
                "bytes_in": c.bytes_in.load(Ordering::Relaxed),
                "rejected_full": c.rejected_full.load(Ordering::Relaxed),
                "rejected_error": c.rejected_error.load(Ordering::Relaxed),
                "ttl_expired": c.ttl_expired.load(Ordering::Relaxed),
                "retention_deleted": c.retention_deleted.load(Ordering::Relaxed),
                "evicted": c.evicted.load(Ordering::Relaxed),
                "mqtt_dropped_full": c.mqtt_dropped_full.load(Ordering::Relaxed),
                "mqtt_dropped_rate": c.mqtt_dropped_rate.load(Ordering::Relaxed),
            })
        })
        .collect();
    serde_json::json!({ "services": list })
}

/// Body of `PUT /v1/services/{name}`: the fields to change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceUpdate {
    /// New weight, 1..=1000.
    pub weight: Option<u32>,
    /// New express flag.
    pub express: Option<bool>,
}

/// Parses and checks a service update body.
pub fn parse_service_update(body: &[u8]) -> Result<ServiceUpdate, ApiError> {
    let update: ServiceUpdate = parse_json(body)?;
    if let Some(w) = update.weight {
        if !(1..=1000).contains(&w) {
            return Err(ApiError::bad_request(format!("weight: {w} is out of range 1..=1000")));
        }
    }
    Ok(update)
}

pub(super) async fn update_service(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let update = parse_service_update(&read_body(&shared, body).await?)?;
    let service = shared
        .services
        .get(&name)
        .ok_or_else(|| ApiError::not_found(format!("service {name:?} is not configured")))?;
    let mut class = service.class();
    if let Some(w) = update.weight {
        class.weight = w;
    }
    if let Some(e) = update.express {
        class.express = e;
    }
    shared.ingest.set_class(service.id, class);
    tracing::info!(service = %name, weight = class.weight, express = class.express, "service class changed");
    Ok(Json(serde_json::json!({ "name": name, "weight": class.weight, "express": class.express })))
}

/// `POST /v1/reload`: what SIGHUP does (weights, tokens, MQTT users, TLS
/// files), answered with how many of them changed, or why the file was
/// refused.
pub(super) async fn reload(State(shared): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(path) = shared.config_path.clone() else {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "sluice was started without a configuration file: there is nothing to reload",
        ));
    };
    let (s, p) = (shared.clone(), path.clone());
    let result = tokio::task::spawn_blocking(move || crate::run::reload(&s, &p)).await.map_err(|e| {
        ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, format!("reload failed: {e}"))
    })?;
    // The rules reload like on SIGHUP (after the rest, as there).
    #[cfg(feature = "rules")]
    let result = match result {
        Ok(changed) => match crate::rules::reload(&shared, &path).await {
            Ok(rules) => Ok(changed + rules),
            Err(e) => Err(anyhow::anyhow!("rules: {e:#}")),
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(changed) => {
            tracing::info!(changed, "configuration reloaded (POST /v1/reload)");
            Ok(Json(serde_json::json!({ "changed": changed })))
        }
        Err(e) => {
            Err(ApiError::bad_request(format!("reload refused, the running configuration stays: {e:#}")))
        }
    }
}

pub(super) async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {}", uri.path()))
}

/// `GET /v1/rules`: per rule counters and gauges (an empty list in a build
/// without the `rules` feature).
pub(super) async fn rules(State(shared): State<Shared>) -> Json<serde_json::Value> {
    #[cfg(feature = "rules")]
    let body = crate::rules::stats::rules_json(&shared.rules.get().map(|r| r.handles()).unwrap_or_default());
    #[cfg(not(feature = "rules"))]
    let body = {
        let _ = &shared;
        serde_json::json!({ "rules": [] })
    };
    Json(body)
}

pub(super) async fn uplinks(State(shared): State<Shared>) -> Json<serde_json::Value> {
    Json(uplinks_json(&shared))
}

/// The body of `GET /v1/uplinks` (also part of the status feed).
pub(super) fn uplinks_json(shared: &Shared) -> serde_json::Value {
    let list: Vec<_> = shared
        .uplink_snapshots()
        .into_iter()
        .map(|u| {
            let last_error = match &u.state {
                sluice_uplink::State::BackingOff { error, .. } => Some(error.clone()),
                _ => None,
            };
            let services: serde_json::Map<String, serde_json::Value> = u
                .services
                .iter()
                .map(|(name, s)| {
                    (
                        name.clone(),
                        serde_json::json!({
                            "lag_records": s.lag_records,
                            "lag_bytes": s.lag_bytes,
                            "oldest_unsent_ms": s.oldest_unsent_ms,
                            "sent_records": s.sent_records,
                            "sent_bytes": s.sent_bytes,
                            "ttl_skipped": s.ttl_skipped,
                            "lost_before_forward": s.lost_before_forward,
                            "unfit_skipped": s.unfit_skipped,
                        }),
                    )
                })
                .collect();
            serde_json::json!({
                "name": u.name,
                "kind": u.kind,
                "state": u.state.label(),
                "last_error": last_error,
                "retries": u.retries,
                "throughput_bytes_per_sec": u.throughput_bps,
                "eta_seconds": u.eta_seconds(),
                "in_flight": u.in_flight,
                "max_in_flight": u.max_in_flight,
                "checkpoints": u.checkpoints,
                "resent_records": u.resent_records,
                "budget": u.budget.as_ref().map(|b| serde_json::json!({
                    "bytes": b.bytes,
                    "used_bytes": b.used,
                    "left_bytes": b.left,
                    "period_seconds": b.period_seconds,
                    "resets_in_seconds": b.resets_in_seconds,
                    "bulk_open": b.bulk_open,
                })),
                "services": services,
            })
        })
        .collect();
    serde_json::json!({ "uplinks": list })
}
