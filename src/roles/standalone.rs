//! `swapstats standalone`: the generator feeds P in-process shards (routed by
//! the murmur2 partitioner, as Kafka would), and one HTTP server answers for all.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use swapstats::config::{GeneratorSettings, Settings};
use swapstats::partition::partition_for;
use swapstats::shard::{
    engine_config, run_pipeline, ChangeFeed, LocalShards, LogDeadLetters, PipelineConfig,
    ShardCore, StopFlag,
};
use swapstats::source::{ChannelSource, SwapGenerator};
use swapstats::store::MemoryStore;
use swapstats::swap::encode_swap;

use super::shared::serve_shards;

/// Runs standalone mode until SIGINT/SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let stop = StopFlag::default();
    let partitions = settings.shard.partitions;
    let feed = Arc::new(ChangeFeed::default());
    let store = Arc::new(MemoryStore::default());
    let mut senders = Vec::new();
    let mut cores = Vec::new();
    for p in 0..partitions {
        let core = Arc::new(ShardCore::new(p, engine_config(&settings), feed.clone()));
        let (tx, rx) = mpsc::channel(10_000);
        senders.push(tx);
        cores.push(core.clone());
        let (store, config, stop) = (
            store.clone(),
            PipelineConfig::from_settings(&settings),
            stop.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = run_pipeline(
                core,
                ChannelSource::new(rx),
                store,
                LogDeadLetters,
                config,
                stop,
            )
            .await
            {
                tracing::error!(partition = p, error = %e, "pipeline stopped");
            }
        });
    }
    let shards = Arc::new(LocalShards::new(partitions, cores));
    tokio::spawn(feed_generator(
        settings.generator.clone(),
        senders,
        stop.clone(),
    ));
    tracing::info!(
        partitions,
        rate = settings.generator.rate,
        "standalone: generator → in-process shards"
    );
    serve_shards(&settings, shards, feed, stop).await
}

/// Paces the generator at `rate` swaps/s and routes each swap to its partition.
async fn feed_generator(
    settings: GeneratorSettings,
    senders: Vec<mpsc::Sender<Vec<u8>>>,
    stop: StopFlag,
) {
    let mut generator = SwapGenerator::new(&settings);
    let partitions = senders.len() as u32;
    let start = tokio::time::Instant::now();
    let mut sent: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.is_set() && (settings.count == 0 || sent < settings.count) {
        tick.tick().await;
        let due = if settings.rate == 0 {
            sent + 1000
        } else {
            (start.elapsed().as_secs_f64() * settings.rate as f64) as u64
        };
        let due = if settings.count > 0 {
            due.min(settings.count)
        } else {
            due
        };
        while sent < due {
            let swap = generator.next_swap(swapstats::now_ms());
            let p = partition_for(&swap.token, partitions) as usize;
            if senders[p].send(encode_swap(&swap)).await.is_err() {
                return;
            }
            sent += 1;
        }
    }
    tracing::info!(sent, "generator finished");
}
