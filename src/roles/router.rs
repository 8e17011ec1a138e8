//! `swapstats router`: discovery (static list or Kubernetes EndpointSlices) →
//! fallback store (Redis when `store.kind` is redis or redis-cluster) → the
//! router app on `http.addr`. Stateless: run as many as the load needs.

use std::sync::Arc;

use anyhow::Context;

use swapstats::api::serve;
use swapstats::config::{DiscoveryKind, Settings, StoreKind};
use swapstats::router::discovery::{
    spawn_kubernetes_discovery, static_directory, KubernetesDiscovery,
};
use swapstats::router::{router_app, RouterConfig, ShardDirectory, StatsFallback, StoreFallback};
use swapstats::shard::StopFlag;
use swapstats::store::{RedisStore, RedisStoreOptions};

/// Runs the router until SIGINT/SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let directory = discovery(&settings).await?;
    let fallback = fallback_store(&settings).await?;
    let stop = StopFlag::default();
    let app = router_app(
        RouterConfig::from_settings(&settings),
        directory,
        fallback,
        stop.clone(),
    )
    .context("building the router")?;
    serve(settings.http.addr, app, stop)
        .await
        .context("HTTP server")
}

/// The shard directory for `router.discovery`.
async fn discovery(settings: &Settings) -> anyhow::Result<ShardDirectory> {
    let partitions = settings.shard.partitions;
    match settings.router.discovery {
        DiscoveryKind::Static => {
            let (_writer, directory) = static_directory(&settings.router.shards, partitions)?;
            tracing::info!(shards = ?settings.router.shards, "static shard list");
            Ok(directory)
        }
        DiscoveryKind::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .context("Kubernetes client (in-cluster service account or kubeconfig)")?;
            Ok(spawn_kubernetes_discovery(
                client,
                KubernetesDiscovery {
                    namespace: settings.router.namespace.clone(),
                    service: settings.router.service.clone(),
                    port: settings.router.shard_port,
                    partitions,
                },
            ))
        }
    }
}

/// The store the router falls back to when a shard is down: none for
/// `memory` (its state dies with each shard), Redis otherwise.
async fn fallback_store(settings: &Settings) -> anyhow::Result<Option<Arc<dyn StatsFallback>>> {
    match settings.store.kind {
        StoreKind::Memory => {
            tracing::warn!("store.kind = memory: no fallback; a down shard's tokens get 503");
            Ok(None)
        }
        StoreKind::Redis | StoreKind::RedisCluster => redis_fallback(settings).await,
    }
}

/// Connects to the shards' Redis store so a down shard's tokens are still
/// answered (read-only) from what the shard last persisted.
async fn redis_fallback(settings: &Settings) -> anyhow::Result<Option<Arc<dyn StatsFallback>>> {
    let options = RedisStoreOptions::from_ingest(&settings.ingest);
    let store = RedisStore::connect_with(&settings.store, options)
        .await
        .context("connecting to Redis")?;
    let engine = swapstats::shard::engine_config(settings);
    Ok(Some(Arc::new(StoreFallback::new(Arc::new(store), engine))))
}
