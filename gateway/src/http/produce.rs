//! `POST /v1/topics/{topic}/records`: JSON records or one raw body, through
//! the service's bounded queue and the scheduler into the log.

use super::codec::{parse_produce, raw_record};
use super::{query_params, read_body, ApiError, QueryMap};
use crate::ingest::{Job, Rejected};
use crate::state::Shared;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use sluice_config::Durability;
use tokio::sync::oneshot;

pub(super) async fn produce(
    State(shared): State<Shared>,
    Path(topic): Path<String>,
    query: QueryMap,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let params = query_params(query, &["key"])?;
    sluice_config::check_topic_name(&topic)
        .map_err(|reason| ApiError::bad_request(format!("invalid topic name {topic:?}: {reason}")))?;
    let bytes = read_body(&shared, body).await?;
    let now = crate::now_ms();
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let records = match mime.as_str() {
        // curl -d sends application/x-www-form-urlencoded unless told
        // otherwise; a JSON body is what anyone posting here means.
        "application/json" | "application/x-www-form-urlencoded" | "" => parse_produce(&bytes, now)?,
        "application/octet-stream" => vec![raw_record(params.get("key").map(String::as_str), &bytes, now)],
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported Content-Type {other:?}: use application/json or application/octet-stream"
                ),
            ))
        }
    };
    if params.contains_key("key") && mime != "application/octet-stream" {
        return Err(ApiError::bad_request(
            "key: the ?key= parameter applies to application/octet-stream bodies only",
        ));
    }
    // Created only once the request is known to be good.
    let topic = shared.topics.get_or_create(&topic, &shared.store, &shared.services)?;
    let service = shared.services.resolve(&topic.service);
    let sync = service.durability == Durability::Sync;
    let (tx, rx) = oneshot::channel();
    let count = records.len() as u64;
    let job = Job::new(topic.clone(), service.id, records, sync, Some(tx));
    if job.cost > service.max_pending {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "batch of {} bytes exceeds max_pending of service {:?} ({} bytes); send smaller batches",
                job.cost, service.name, service.max_pending
            ),
        ));
    }
    if let Some(rate) = &service.rate {
        if let Err(wait) = rate.try_take(std::time::Instant::now(), count, job.cost) {
            service.counters.rejected_rate.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(ApiError::too_many(
                format!(
                    "service {:?} is over its rate limit ({}); retry in {secs} s",
                    service.name,
                    rate_text(&shared, &service.name)
                ),
                secs.max(1),
            ));
        }
    }
    if let Err((why, _)) = shared.ingest.submit(job) {
        return Err(match why {
            Rejected::Full { pending, limit } => ApiError::too_many(
                format!(
                    "service {:?} is over its pending limit ({pending} of {limit} bytes queued); retry later",
                    service.name
                ),
                1,
            ),
            Rejected::ShuttingDown => ApiError::unavailable("sluice is shutting down"),
        });
    }
    let appended = rx.await.map_err(|_| ApiError::unavailable("sluice is shutting down"))??;
    if let Some(durable) = appended.durable {
        durable.await.map_err(|_| ApiError::unavailable("sluice is shutting down"))??;
    }
    let offsets: Vec<_> = appended
        .offsets
        .iter()
        .map(|(p, o)| serde_json::json!({ "partition": p.0, "offset": o.0 }))
        .collect();
    Ok(Json(serde_json::json!({ "offsets": offsets })))
}

/// The configured limits of a service, for error messages.
fn rate_text(shared: &Shared, service: &str) -> String {
    let Some(s) = shared.config.service(service) else { return "rate limit".to_owned() };
    let mut parts = Vec::new();
    if let Some(r) = s.max_records_per_sec {
        parts.push(format!("max_records_per_sec = {r}"));
    }
    if let Some(b) = s.max_bytes_per_sec {
        parts.push(format!("max_bytes_per_sec = {b}"));
    }
    parts.push(format!("rate_burst = {}", sluice_config::format_duration(s.rate_burst)));
    parts.join(", ")
}
