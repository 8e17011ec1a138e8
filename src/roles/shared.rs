//! Settings → component parameters, and small tasks every role that holds
//! partitions runs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use swapstats::api::ws::{run_coalescer, Hub};
use swapstats::api::{local_routes, serve, LocalApi};
use swapstats::config::Settings;
use swapstats::shard::{ChangeFeed, LocalShards, PipelineConfig, StopFlag};
use swapstats::swap::SwapLimits;
use swapstats::window::EngineConfig;

/// Engine parameters from `windows` and `ingest.*`.
pub fn engine_config(settings: &Settings) -> EngineConfig {
    EngineConfig {
        windows: settings.windows.clone(),
        dedup_horizon_ms: settings.ingest.dedup_horizon.as_millis() as i64,
        retention_ms: settings.ingest.retention.as_millis() as i64,
    }
}

/// Pipeline parameters from `shard.*` and `ingest.*`.
pub fn pipeline_config(settings: &Settings) -> PipelineConfig {
    PipelineConfig {
        batch_max_swaps: settings.shard.batch_max_swaps,
        batch_max_delay: settings.shard.batch_max_delay,
        ready_max_lag: settings.shard.ready_max_lag,
        limits: SwapLimits {
            max_future_skew_ms: settings.ingest.max_future_skew.as_millis() as i64,
            ..SwapLimits::default()
        },
    }
}

/// Drops aged-out data every 10 s.
fn spawn_expiry(shards: Arc<LocalShards>, stop: StopFlag) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        while !stop.is_set() {
            tick.tick().await;
            for core in shards.cores() {
                core.expire(swapstats::now_ms());
            }
        }
    });
}

/// Serves `shards` on `http.addr` until `stop`: the local routes, WS updates of
/// the tokens `feed` reports changed, and periodic expiry.
pub async fn serve_shards(
    settings: &Settings,
    shards: Arc<LocalShards>,
    feed: Arc<ChangeFeed>,
    stop: StopFlag,
) -> anyhow::Result<()> {
    let hub = Hub::new(settings.ws.max_subscriptions, settings.ws.client_queue);
    tokio::spawn(run_coalescer(
        feed,
        hub.clone(),
        shards.clone(),
        settings.ws.coalesce,
        stop.clone(),
    ));
    spawn_expiry(shards.clone(), stop.clone());
    let api = LocalApi {
        shards,
        hub,
        ws: settings.ws.clone(),
        windows: settings.windows.clone(),
    };
    serve(settings.http.addr, local_routes(api), stop)
        .await
        .context("HTTP server")
}
