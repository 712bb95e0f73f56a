//! `POST /v1/topics/{topic}/records`: JSON records or one raw body, through
//! the service's bounded queue and the scheduler into the log.

use super::codec::parse_produce;
use super::{query_params, read_body, ApiError, QueryMap};
use crate::ingest::{Job, Rejected};
use crate::state::Shared;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use sluice_config::Durability;
use sluice_store::Record;
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
        "application/octet-stream" => vec![Record {
            key: params.get("key").map(|k| k.clone().into_bytes()),
            value: bytes.to_vec(),
            headers: Vec::new(),
            timestamp_ms: now,
        }],
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
