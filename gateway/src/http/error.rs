//! The one error type of the HTTP API: a status and a JSON body
//! `{"error": "..."}` naming what was wrong.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), retry_after: None }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: no such thing.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 429 with `Retry-After`.
    pub fn too_many(message: impl Into<String>, retry_after_secs: u64) -> ApiError {
        ApiError {
            retry_after: Some(retry_after_secs),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
        }
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError { retry_after: Some(1), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message) }
    }

    /// Prefixes the message with where in the request the problem is.
    pub fn with_prefix(mut self, prefix: &str) -> ApiError {
        self.message = format!("{prefix}: {}", self.message);
        self
    }

    /// What was wrong, without the status.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), error = %self.message, "request failed");
        }
        let body = serde_json::json!({ "error": self.message });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<crate::topics::TopicError> for ApiError {
    fn from(e: crate::topics::TopicError) -> ApiError {
        use crate::topics::TopicError as T;
        match &e {
            T::InvalidName { .. } => ApiError::bad_request(e.to_string()),
            T::Unknown(_) | T::NotFound(_) => ApiError::not_found(e.to_string()),
            T::Store(s) => s.into(),
        }
    }
}

impl From<&sluice_store::StoreError> for ApiError {
    fn from(e: &sluice_store::StoreError) -> ApiError {
        use sluice_store::StoreError as S;
        match e {
            S::UnknownTopic(_) | S::UnknownPartition { .. } => ApiError::not_found(e.to_string()),
            S::CommitPastEnd { .. } | S::PartitionShrink { .. } => ApiError::bad_request(e.to_string()),
            _ if e.is_disk_full() => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

impl From<sluice_store::StoreError> for ApiError {
    fn from(e: sluice_store::StoreError) -> ApiError {
        (&e).into()
    }
}

impl From<crate::ingest::IngestError> for ApiError {
    fn from(e: crate::ingest::IngestError) -> ApiError {
        use crate::ingest::IngestError as I;
        match &e {
            I::Storage { disk_full: true, .. } => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
            }
            I::Storage { .. } => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            I::ShuttingDown => ApiError::unavailable(e.to_string()),
        }
    }
}
