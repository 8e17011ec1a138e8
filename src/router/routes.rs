//! The router's HTTP and WS endpoints: the same `/stats`, `/stats/top`,
//! `/healthz`, `/readyz` and `/ws` as a shard (same parameters, errors and WS
//! protocol), answered for the whole cluster, plus `/cluster`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::scatter::{splice_source, tag_source, Source};
use super::service::{Fetched, RouterService};
use crate::api::params::{parse_stats_query, parse_top_query, StatsQuery};
use crate::api::ws::{accept_upgrade, Hub, SnapshotProvider};
use crate::api::ApiError;
use crate::config::WsSettings;
use crate::window::WindowSpec;

/// Shared state of the router's endpoints.
#[derive(Clone)]
pub struct RouterApi {
    pub service: Arc<RouterService>,
    /// Hub of the router's WS clients (fed by the upstream links).
    pub hub: Hub,
    pub ws: WsSettings,
    /// The shards' windows, to validate `/stats/top?window=` as a shard would.
    pub windows: Vec<WindowSpec>,
}

/// The router's endpoints.
pub fn router_routes(api: RouterApi) -> Router {
    Router::new()
        .route("/stats", get(stats))
        .route("/stats/top", get(top))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/cluster", get(cluster))
        .route("/ws", get(ws))
        .route("/metrics", get(crate::telemetry::metrics_handler))
        .fallback(crate::api::error::not_found)
        .with_state(api)
        .layer(axum::middleware::from_fn(crate::telemetry::track_http))
        .layer(axum::middleware::from_fn(crate::telemetry::trace_http))
}

async fn stats(
    State(api): State<RouterApi>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    match parse_stats_query(&params)? {
        StatsQuery::One(token) => Ok(match api.service.stats_one(&token).await? {
            Fetched::Shard(body) => match splice_source(&body, Source::Shard) {
                Some(tagged) => {
                    ([(header::CONTENT_TYPE, "application/json")], tagged).into_response()
                }
                None => {
                    return Err(ApiError::Unavailable(
                        "the shard sent a malformed answer".into(),
                    ))
                }
            },
            Fetched::Redis(stats) => {
                let mut value = serde_json::to_value(stats)
                    .map_err(|e| ApiError::Unavailable(format!("encoding stats: {e}")))?;
                tag_source(&mut value, Source::Redis);
                Json(value).into_response()
            }
        }),
        StatsQuery::Many(tokens) => {
            Ok(Json(api.service.stats_many(&tokens).await?).into_response())
        }
    }
}

async fn top(
    State(api): State<RouterApi>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let query = parse_top_query(&params, &api.windows)?;
    Ok(Json(api.service.top(&query).await?))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(api): State<RouterApi>) -> Response {
    let (ready, body) = api.service.readiness().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn cluster(State(api): State<RouterApi>) -> Json<Value> {
    Json(api.service.cluster().await)
}

async fn ws(
    State(api): State<RouterApi>,
    Query(params): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let snapshots: Arc<dyn SnapshotProvider> = Arc::new(RouterSnapshots(api.service.clone()));
    accept_upgrade(upgrade, &params, api.hub, snapshots, api.ws)
}

/// WS snapshots through the router's read path (shard, else store).
pub struct RouterSnapshots(pub Arc<RouterService>);

impl SnapshotProvider for RouterSnapshots {
    fn snapshot<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Value>> + Send + 'a>> {
        Box::pin(async move { self.0.stats_one(token).await.ok()?.into_value() })
    }
}
