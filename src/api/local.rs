//! HTTP and WS endpoints answered from the partitions held in this process
//! (standalone mode and a shard): `/stats`, `/stats/top`, `/healthz`, `/readyz`, `/ws`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::params::{parse_stats_query, parse_top_query, StatsQuery};
use super::ws::{accept_upgrade, Hub, SnapshotProvider};
use super::ApiError;
use crate::config::WsSettings;
use crate::shard::LocalShards;
use crate::window::WindowSpec;

/// Shared state of the local endpoints.
#[derive(Clone)]
pub struct LocalApi {
    pub shards: Arc<LocalShards>,
    pub hub: Hub,
    pub ws: WsSettings,
    pub windows: Vec<WindowSpec>,
}

/// The router of the local endpoints.
pub fn local_routes(api: LocalApi) -> Router {
    let metrics = crate::telemetry::metrics();
    metrics.register_shards(api.shards.clone());
    metrics.register_hub(api.hub.clone());
    Router::new()
        .route("/stats", get(stats))
        .route("/stats/top", get(top))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/ws", get(ws))
        .route("/metrics", get(crate::telemetry::metrics_handler))
        .fallback(super::error::not_found)
        .layer(axum::middleware::from_fn(crate::telemetry::track_http))
        .layer(axum::middleware::from_fn(crate::telemetry::trace_http))
        .with_state(api)
}

async fn stats(
    State(api): State<LocalApi>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let now = crate::now_ms();
    match parse_stats_query(&params)? {
        StatsQuery::One(token) => match api.shards.stats(&token, now) {
            Some(stats) => Ok(Json(stats).into_response()),
            None => Err(ApiError::NotFound(format!(
                "no swaps of `{token}` within retention"
            ))),
        },
        StatsQuery::Many(tokens) => {
            let body: serde_json::Map<String, serde_json::Value> = tokens
                .into_iter()
                .map(|t| {
                    let stats = api
                        .shards
                        .stats(&t, now)
                        .and_then(|s| serde_json::to_value(s).ok());
                    (t, stats.unwrap_or(serde_json::Value::Null))
                })
                .collect();
            Ok(Json(body).into_response())
        }
    }
}

async fn top(
    State(api): State<LocalApi>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let q = parse_top_query(&params, &api.windows)?;
    let entries = api
        .shards
        .top(&q.window, q.by, q.limit, crate::now_ms())
        .ok_or_else(|| ApiError::BadRequest(format!("unknown window `{}`", q.window)))?;
    Ok(Json(json!({ "window": q.window, "by": q.by, "tokens": entries })).into_response())
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(api): State<LocalApi>) -> Response {
    let partitions: Vec<_> = api
        .shards
        .cores()
        .iter()
        .map(|c| {
            json!({
                "partition": c.partition,
                "ready": c.is_ready(),
                "lag": c.counters.lag.load(Ordering::Relaxed),
                "applied_offset": c.counters.applied_offset.load(Ordering::Relaxed),
                "tokens": c.token_count(),
                "last_error": c.last_error(),
            })
        })
        .collect();
    let ready = api.shards.all_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": ready, "partitions": partitions })),
    )
        .into_response()
}

async fn ws(
    State(api): State<LocalApi>,
    Query(params): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let snapshots: Arc<dyn SnapshotProvider> = api.shards.clone();
    accept_upgrade(upgrade, &params, api.hub, snapshots, api.ws)
}

impl SnapshotProvider for LocalShards {
    fn snapshot<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<serde_json::Value>> + Send + 'a>> {
        Box::pin(async move {
            self.stats(token, crate::now_ms())
                .and_then(|s| serde_json::to_value(s).ok())
        })
    }
}
