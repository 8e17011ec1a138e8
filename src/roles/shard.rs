//! `swapstats shard`: one Kafka partition → engine → Redis, serving its tokens.
//! Start-up restores the partition from the store and resumes after the applied
//! offset; `/readyz` turns true once the lag is under `shard.ready_max_lag`.

use std::sync::Arc;

use anyhow::Context;

use swapstats::config::{Settings, StoreKind};
use swapstats::shard::{
    engine_config, run_pipeline, ChangeFeed, LocalShards, PipelineConfig, ShardCore, StopFlag,
};
use swapstats::source::kafka::{KafkaDeadLetters, KafkaPartitionSource};
use swapstats::store::{MemoryStore, RedisStore, RedisStoreOptions, Store};
use swapstats::window::{BatchEffect, RestoredEvents};

use super::shared::serve_shards;

/// This shard's partition: `shard.partition`, else the hostname's ordinal (`name-3` → 3).
pub fn resolve_partition(settings: &Settings, hostname: Option<&str>) -> anyhow::Result<u32> {
    if let Some(p) = settings.shard.partition {
        return Ok(p);
    }
    let hostname = hostname.context("shard.partition is unset and the hostname is unknown")?;
    let ordinal = hostname
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u32>().ok())
        .with_context(|| {
            format!("shard.partition is unset and hostname `{hostname}` has no -N ordinal")
        })?;
    anyhow::ensure!(
        ordinal < settings.shard.partitions,
        "ordinal {ordinal} of `{hostname}` is not below shard.partitions"
    );
    Ok(ordinal)
}

fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Runs the shard until SIGINT/SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let partition = resolve_partition(&settings, hostname().as_deref())?;
    match settings.store.kind {
        StoreKind::Memory => {
            run_with_store(settings, partition, Arc::new(MemoryStore::default())).await
        }
        StoreKind::Redis | StoreKind::RedisCluster => {
            let store = RedisStore::connect_with(
                &settings.store,
                RedisStoreOptions::from_ingest(&settings.ingest),
            )
            .await
            .context("connecting to Redis")?;
            run_with_store(settings, partition, Arc::new(store)).await
        }
    }
}

/// Reads the partition from `store` into `core`: parts are restored on a
/// thread of their own while the next ones are read and decoded, so a restart
/// takes about the longer of the two instead of their sum. A part of event ids
/// alone (the Redis store sends one first) is remembered on one more thread,
/// in parallel with the tokens' parts: the restore of the tokens is what a
/// restart waits for.
async fn restore_from<S: Store>(
    store: &S,
    core: &Arc<ShardCore>,
    partition: u32,
) -> Result<Option<i64>, swapstats::store::StoreError> {
    let (parts, received) = std::sync::mpsc::sync_channel::<BatchEffect>(2);
    let restorer = {
        let core = core.clone();
        std::thread::spawn(move || {
            let mut events = None;
            for part in received {
                if events.is_none() && part.buckets.is_empty() && part.wallets.is_empty() {
                    events = Some(std::thread::spawn(move || {
                        let mut events = RestoredEvents::default();
                        events.add(&part.events);
                        events
                    }));
                } else {
                    core.restore(&part);
                }
            }
            match events.map(|built| built.join()) {
                Some(Ok(events)) => core.adopt_events(events),
                Some(Err(panic)) => std::panic::resume_unwind(panic),
                None => {}
            }
        })
    };
    let read = store
        .load_into(partition, swapstats::now_ms(), &mut |part| {
            // Waits while the restorer is two parts behind (bounded memory);
            // `block_in_place` lets the runtime move other tasks meanwhile.
            let _ = tokio::task::block_in_place(|| parts.send(part));
        })
        .await;
    drop(parts);
    if let Err(panic) = tokio::task::block_in_place(|| restorer.join()) {
        std::panic::resume_unwind(panic); // a bug in the engine, not a store failure
    }
    read
}

async fn run_with_store<S: Store>(
    settings: Settings,
    partition: u32,
    store: Arc<S>,
) -> anyhow::Result<()> {
    let stop = StopFlag::default();
    let feed = Arc::new(ChangeFeed::default());
    let core = Arc::new(ShardCore::new(
        partition,
        engine_config(&settings),
        feed.clone(),
    ));
    let kafka = &settings.kafka;
    // Connected before the restore, so the partition's end is known by the
    // time the restore is done.
    let mut source =
        KafkaPartitionSource::connect(&kafka.brokers, &kafka.topic, partition, stop.clone())?;
    let started = std::time::Instant::now();
    // Restored part by part while reading; a failed read starts over.
    let applied_offset = loop {
        core.clear();
        match restore_from(&*store, &core, partition).await {
            Ok(applied_offset) => break applied_offset,
            Err(e) => {
                tracing::warn!(error = %e, "restore from store failed; retrying");
                core.set_error(Some(format!("restore: {e}")));
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    core.set_error(None);
    let start = applied_offset.map(|o| o + 1);
    tracing::info!(
        partition,
        ?start,
        tokens = core.token_count(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "restored"
    );
    if let Some(applied) = applied_offset {
        core.counters
            .applied_offset
            .store(applied, std::sync::atomic::Ordering::Relaxed);
    }

    source.start_at(start)?;
    let dead_letters = KafkaDeadLetters::new(&kafka.brokers, &kafka.dlq_topic)?;
    let pipeline_core = core.clone();
    let (config, pipeline_stop) = (PipelineConfig::from_settings(&settings), stop.clone());
    let pipeline = tokio::spawn(run_pipeline(
        pipeline_core,
        source,
        store,
        dead_letters,
        config,
        pipeline_stop,
    ));

    let shards = Arc::new(LocalShards::new(
        settings.shard.partitions,
        vec![core.clone()],
    ));
    let serving = serve_shards(&settings, shards, feed, stop.clone());
    tokio::pin!(serving);
    tokio::select! {
        served = &mut serving => served,
        // The pipeline only returns on its own when it cannot go on (e.g. the
        // store diverged from this shard's state): the process exits, and its
        // restart restores from the store.
        stopped = pipeline => {
            let error = match stopped {
                // Shutting down (SIGTERM): the server is draining too.
                Ok(Ok(())) if stop.is_set() => return serving.await,
                Ok(Ok(())) => anyhow::anyhow!("partition {partition}: pipeline ended"),
                Ok(Err(e)) => anyhow::Error::new(e),
                Err(e) => anyhow::Error::new(e).context("pipeline task"),
            };
            core.set_ready(false);
            core.set_error(Some(error.to_string()));
            stop.set();
            tracing::error!(partition, error = %error, "pipeline stopped; exiting");
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_from_config_or_hostname_ordinal() {
        let mut s = Settings::defaults();
        s.shard.partitions = 3;
        assert_eq!(resolve_partition(&s, Some("swapstats-shard-2")).unwrap(), 2);
        assert!(resolve_partition(&s, Some("swapstats-shard-3")).is_err());
        assert!(resolve_partition(&s, Some("shard")).is_err());
        s.shard.partition = Some(1);
        assert_eq!(resolve_partition(&s, Some("x-2")).unwrap(), 1);
    }
}
