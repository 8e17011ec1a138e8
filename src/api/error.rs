//! HTTP errors as JSON bodies: `{"error": "...", "code": "..."}` with a 4xx/5xx status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (missing or bad parameter).
    #[error("{0}")]
    BadRequest(String),
    /// The token is well-formed but has no swaps within retention.
    #[error("{0}")]
    NotFound(String),
    /// Nothing can answer right now (shard and fallback down).
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl From<crate::shard::ShuttingDown> for ApiError {
    fn from(e: crate::shard::ShuttingDown) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        (
            status,
            Json(serde_json::json!({ "error": self.to_string(), "code": code })),
        )
            .into_response()
    }
}

/// Answers requests to unknown paths with a JSON 404.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}
