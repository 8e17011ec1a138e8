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
        StatsQuery::One(token) => match api.shards.stats(&token, now).await? {
            Some(stats) => Ok(Json(stats).into_response()),
            None => Err(ApiError::NotFound(format!(
                "no swaps of `{token}` within retention"
            ))),
        },
        StatsQuery::Many(tokens) => {
            let answers = api.shards.stats_of(&tokens, now).await?;
            let body: serde_json::Map<String, serde_json::Value> = tokens
                .into_iter()
                .zip(answers)
                .map(|(token, stats)| {
                    let value = stats.and_then(|s| serde_json::to_value(s).ok());
                    (token, value.unwrap_or(serde_json::Value::Null))
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
        .await?
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
            let stats = self.stats(token, crate::now_ms()).await.ok().flatten()?;
            serde_json::to_value(stats).ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    use super::*;
    use crate::shard::{ShardCore, StopFlag};
    use crate::swap::{Side, Swap};
    use crate::window::EngineConfig;

    /// The status line and body of `GET path`, asked over a fresh connection.
    fn get(addr: SocketAddr, path: &str) -> std::io::Result<(String, String)> {
        let mut tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
        write!(
            tcp,
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        tcp.read_to_string(&mut answer)?;
        let status = answer.lines().next().unwrap_or_default().to_string();
        let body = answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        Ok((status, body))
    }

    /// While a batch part holds the engine, `/stats` requests wait for it off
    /// the runtime's workers (two here, as on a 2-core pod): `/healthz` still
    /// answers at once, and the stats come once the engine is free. Waiting
    /// on the workers, four such requests stalled every other request.
    #[test]
    fn healthz_answers_while_stats_requests_wait_for_the_engine() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let core = Arc::new(ShardCore::new(
            0,
            EngineConfig::service_defaults(),
            Arc::default(),
        ));
        let swap = Swap {
            event_id: "e1".into(),
            token: "T0".into(),
            wallet: Some("w1".into()),
            side: Side::Buy,
            amount: 2.0,
            usd: 1.0,
            rate: 0.5,
            created_at_ms: None,
            executed_at_ms: crate::now_ms() - 1_000,
        };
        core.apply_batch(&[swap], crate::now_ms());
        let ws = WsSettings::default();
        let api = LocalApi {
            shards: Arc::new(LocalShards::new(1, vec![core.clone()])),
            hub: Hub::new(ws.max_subscriptions, ws.client_queue),
            ws,
            windows: WindowSpec::defaults(),
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        runtime.spawn(super::super::serve_on(
            listener,
            local_routes(api),
            StopFlag::default(),
        ));

        let held = core.hold_engine();
        let asking: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || get(addr, "/stats?token=T0")))
            .collect();
        let asking_many = std::thread::spawn(move || get(addr, "/stats?tokens=T0,NOPE"));
        // Time for the four to reach their handlers (what lets the old wait
        // show; the answer below does not depend on it).
        std::thread::sleep(Duration::from_millis(300));
        let (status, body) = get(addr, "/healthz").expect("healthz while the engine is held");
        assert!(status.contains("200"), "{status}: {body}");
        assert!(
            asking.iter().all(|a| !a.is_finished()) && !asking_many.is_finished(),
            "stats answered while the engine was held"
        );
        drop(held);
        for asked in asking {
            let (status, body) = asked.join().expect("asker").expect("stats");
            assert!(status.contains("200"), "{status}: {body}");
            let stats: serde_json::Value = serde_json::from_str(&body).expect("stats JSON");
            assert_eq!(stats["windows"]["5m"]["txns"], 1, "{body}");
        }
        let (status, body) = asking_many.join().expect("asker").expect("stats");
        assert!(status.contains("200"), "{status}: {body}");
        let stats: serde_json::Value = serde_json::from_str(&body).expect("stats JSON");
        assert_eq!(stats["T0"]["windows"]["5m"]["txns"], 1, "{body}");
        assert!(stats["NOPE"].is_null(), "{body}");
    }
}
