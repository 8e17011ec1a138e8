//! What every role that holds partitions runs: serving them, and expiry.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use swapstats::api::ws::{run_coalescer, Hub};
use swapstats::api::{local_routes, serve, LocalApi};
use swapstats::config::Settings;
use swapstats::shard::{ChangeFeed, LocalShards, StopFlag};

/// Drops aged-out data every 10 s: of partitions that get no batches (each
/// batch's parts expire too, see `ShardCore::apply_batch`). On the blocking
/// pool, as batches are applied: it waits for the engine while a part holds it.
fn spawn_expiry(shards: Arc<LocalShards>, stop: StopFlag) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        while !stop.is_set() {
            tick.tick().await;
            for core in shards.cores() {
                let core = core.clone();
                let expiry = tokio::task::spawn_blocking(move || core.expire(swapstats::now_ms()));
                if let Err(e) = expiry.await {
                    tracing::error!(error = %e, "expiry task failed");
                }
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
