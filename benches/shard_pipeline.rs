//! Shard pipeline throughput against a bare Kafka consumer (issue 3), and the
//! same pipeline with span export on (issue 5).
//!
//! Setup: librdkafka's mock Kafka (1 partition) and a real Redis Cluster (3
//! masters + 3 replicas, `redis-server` processes). The mock broker keeps only
//! ~5 MiB per partition, so the stream is measured in rounds: each round
//! produces one chunk (lz4, large batches; the chunk size is calibrated once so
//! it stays entirely retained) and then reads the *same* offsets with
//!
//! - `bare/base`:   rdkafka `BaseConsumer`, manual assign, `fetch.wait.max.ms=10`,
//!   counts messages only;
//! - `source`:      the shard's own `KafkaPartitionSource` (batch reads off the
//!   partition's queue, each payload copied), same settings, counts records
//!   only: what the pipeline's reading costs before decode;
//! - `shard`:       `KafkaPartitionSource::assign` → `run_pipeline` with a real
//!   `RedisStore` on the cluster, engine/pipeline configuration from the
//!   default `Settings`, `LogDeadLetters`. Timed from `assign` until
//!   `core.counters.applied_offset` reaches the chunk's last offset. Every shard
//!   run uses a fresh `ShardCore` and a fresh store partition (so no batch is
//!   fenced and the engine starts empty); the Kafka partition is always 0.
//! - `shard, in-memory store`: the same with `MemoryStore`, which only keeps
//!   the applied offset: what the shard itself (consume, decode, engine apply
//!   and its batch effect) reaches when persisting costs nothing.
//! - `shard, long-lived`: one `ShardCore` and one store partition for all the
//!   rounds of a phase, each round resuming where the last one ended: a shard
//!   in its steady state, whose tokens' hashes mostly exist already (the fresh
//!   `shard` row creates, and sets the expiry of, every hash it touches), with
//!   an engine that holds the earlier rounds.
//!
//! - `streaming` (once, after phase 1's rounds): a fresh shard, on the Redis
//!   Cluster store and then on the in-memory store, reads `BENCH_STREAM_SWAPS`
//!   swaps (default 8 chunks) while a thread produces them, at most one chunk
//!   ahead of what the shard has read: the steady state that the rounds,
//!   a few batches each, never reach. Timed after the first chunk. Each run
//!   also says where the machine's CPU went meanwhile, per swap: the shard's
//!   tokio workers, librdkafka's threads (mock broker and clients), the bench
//!   producer, the Redis masters and replicas, and what was left idle; the
//!   rate those costs allow (the cores over their sum: the ceiling on this
//!   machine, where all of them share the cores; and per core of the shard's
//!   workers alone, as a pod with Redis and Kafka elsewhere would run); and
//!   how long the busiest token's stats took meanwhile (a query waits while
//!   the engine applies part of a batch), asked from a thread and from 4 tasks
//!   on the shard's runtime (as `/stats` handlers; timed from when each was
//!   due, so a task's wait for its worker counts), and how late the runtime's
//!   timers woke meanwhile.
//!
//! The order of the five alternates between rounds. Phase 1 runs with no
//! tracing subscriber and no endpoint (what a shard without
//! `telemetry.otlp_endpoint` does); phase 2 installs `swapstats::telemetry::init`
//! with an OTLP endpoint (a local gRPC receiver in this process) and repeats
//! the rounds. (`init` can be called once per process, so the phases cannot
//! interleave; the bare consumers in every round show the drift.)
//!
//! Knobs (env): `BENCH_ROUNDS` (per phase, default 6), `BENCH_CHUNK` (swaps per
//! round, default: calibrated, at most 120000), `BENCH_BATCH_MAX`
//! (`shard.batch_max_swaps`, default: the setting's default), `BENCH_STREAM_SWAPS`
//! (swaps of each streaming run, default 8 chunks).
//!
//! Run: `cargo bench --bench shard_pipeline`

mod common;
#[path = "../tests/support/kafka.rs"]
#[allow(dead_code)]
mod kafka;
#[path = "../tests/otlp_support/mod.rs"]
mod otlp_support;
#[path = "../tests/support/redis_cluster.rs"]
#[allow(dead_code)]
mod redis_cluster;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use swapstats::config::{Settings, StoreKind, StoreSettings};
use swapstats::shard::{
    engine_config, run_pipeline, ChangeFeed, LogDeadLetters, PipelineConfig, RecordSource,
    ShardCore, StopFlag,
};
use swapstats::source::kafka::{client_config, KafkaPartitionSource};
use swapstats::source::SwapGenerator;
use swapstats::store::codec::encode_batch;
use swapstats::store::{MemoryStore, RedisStore, RedisStoreOptions, Store};
use swapstats::swap::{decode_swap, encode_swap, Swap};
use swapstats::window::WindowEngine;

const TOPIC: &str = "swaps";
const PARTITION: i32 = 0;
/// Each bare consumer reads a round's chunk this many times (mean taken): one
/// read is only ~20 ms.
const BARE_REPS: usize = 3;

/// Produces swaps to partition 0 (lz4, big batches) and flushes.
struct SwapProducer {
    producer: ThreadedProducer<DefaultProducerContext>,
    generator: SwapGenerator,
}

/// A producer to partition 0: lz4, big batches, `linger_ms` of lingering.
fn lz4_producer(bootstrap: &str, linger_ms: u32) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.type", "lz4")
        .set("linger.ms", linger_ms.to_string())
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .expect("producer")
}

/// Hands one swap to the producer (key = token), waiting while its queue is full.
fn send_swap(producer: &ThreadedProducer<DefaultProducerContext>, token: &str, payload: &[u8]) {
    let mut record = BaseRecord::to(TOPIC)
        .key(token)
        .payload(payload)
        .partition(PARTITION);
    loop {
        match producer.send(record) {
            Ok(()) => break,
            Err((_, back)) => {
                record = back;
                producer.poll(Duration::from_millis(5));
            }
        }
    }
}

impl SwapProducer {
    fn new(bootstrap: &str) -> Self {
        Self {
            producer: lz4_producer(bootstrap, 100),
            generator: SwapGenerator::new(&common::shard_stream()),
        }
    }

    /// Sends `n` swaps; returns their payloads (for the offline phase timings).
    fn produce(&mut self, n: usize) -> Vec<Vec<u8>> {
        let mut payloads = Vec::with_capacity(n);
        for _ in 0..n {
            let swap = self.generator.next_swap(swapstats::now_ms());
            let payload = encode_swap(&swap);
            send_swap(&self.producer, &swap.token, &payload);
            payloads.push(payload);
        }
        self.producer
            .flush(Duration::from_secs(60))
            .expect("flush producer");
        payloads
    }
}

fn watermarks(bootstrap: &str) -> (i64, i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    consumer
        .fetch_watermarks(TOPIC, PARTITION, Duration::from_secs(10))
        .expect("watermarks")
}

/// The consumer settings of `KafkaPartitionSource` (group only for commits).
fn consumer_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut config = client_config(bootstrap);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .set("enable.partition.eof", "false");
    config
}

fn assignment(first: i64) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, PARTITION, Offset::Offset(first))
        .expect("tpl");
    tpl
}

/// One timed read: total time (assign → last offset) and time to first message.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    total: Duration,
    first_message: Duration,
}

impl Run {
    fn mean(runs: &[Run]) -> Run {
        let n = runs.len().max(1) as u32;
        Run {
            total: runs.iter().map(|r| r.total).sum::<Duration>() / n,
            first_message: runs.iter().map(|r| r.first_message).sum::<Duration>() / n,
        }
    }
}

/// Bare `BaseConsumer::poll` loop, counting messages `first..=last`.
fn bare_base(bootstrap: &str, first: i64, last: i64) -> Run {
    let started = Instant::now();
    let consumer: BaseConsumer = consumer_config(bootstrap, "bench-bare")
        .create()
        .expect("consumer");
    consumer.assign(&assignment(first)).expect("assign");
    let mut count = 0i64;
    let mut first_at = None;
    let deadline = started + Duration::from_secs(120);
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first_at.get_or_insert_with(|| started.elapsed());
                count += 1;
                if rdkafka::Message::offset(&m) >= last {
                    break;
                }
            }
            Some(Err(e)) => eprintln!("bare consumer: {e}"),
            None => assert!(Instant::now() < deadline, "bare consumer stuck at {count}"),
        }
    }
    assert_eq!(count, last - first + 1, "bare consumer read every message");
    Run {
        total: started.elapsed(),
        first_message: first_at.unwrap_or_default(),
    }
}

/// The shard's own Kafka source alone (`KafkaPartitionSource`: batch reads
/// off the partition's queue, a copy of each payload), counting records.
async fn bare_source(bootstrap: &str, first: i64, last: i64) -> Run {
    let started = Instant::now();
    let stop = StopFlag::default();
    let mut source = KafkaPartitionSource::assign(
        bootstrap,
        TOPIC,
        PARTITION as u32,
        Some(first),
        stop.clone(),
    )
    .expect("source");
    let mut count = 0i64;
    let mut first_at = None;
    loop {
        let record = tokio::time::timeout(Duration::from_secs(120), source.next_record())
            .await
            .expect("source stuck")
            .expect("source error")
            .expect("source ended");
        first_at.get_or_insert_with(|| started.elapsed());
        count += 1;
        if record.offset >= last {
            break;
        }
    }
    stop.set();
    assert_eq!(count, last - first + 1, "source read every message");
    Run {
        total: started.elapsed(),
        first_message: first_at.unwrap_or_default(),
    }
}

/// The shard pipeline of `core` reading the partition from offset `first`
/// until `stop` is set.
fn spawn_shard<S: Store + 'static>(
    bootstrap: &str,
    store: Arc<S>,
    settings: &Settings,
    core: &Arc<ShardCore>,
    first: i64,
    stop: &StopFlag,
) -> tokio::task::JoinHandle<Result<(), swapstats::shard::PipelineError>> {
    let source = KafkaPartitionSource::assign(
        bootstrap,
        TOPIC,
        PARTITION as u32,
        Some(first),
        stop.clone(),
    )
    .expect("assign source");
    tokio::spawn(run_pipeline(
        core.clone(),
        source,
        store,
        LogDeadLetters,
        PipelineConfig::from_settings(settings),
        stop.clone(),
    ))
}

/// Waits until `core` has applied `offset`; panics past `deadline`.
async fn wait_applied(core: &ShardCore, offset: i64, deadline: Instant) {
    loop {
        let applied = core.counters.applied_offset.load(Ordering::Relaxed);
        if applied >= offset {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "shard pipeline stuck at {applied}, waiting for {offset}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// What one shard run did.
#[derive(Debug, Clone, Copy, Default)]
struct ShardRun {
    total: Duration,
    swaps: u64,
    applied: u64,
    duplicates: u64,
    rejected: u64,
    batches: u64,
    store_calls: u64,
    /// Sum of `batch_apply_seconds` (decode + engine + persist + bookkeeping).
    apply: Duration,
    /// Sum of `store_call_seconds{op="persist"}`.
    persist: Duration,
}

fn histogram_sum(h: &prometheus::HistogramVec, label: &str) -> f64 {
    h.with_label_values(&[label]).get_sample_sum()
}

/// A fresh shard of store partition `store_partition`: empty engine, nothing applied.
fn fresh_core(settings: &Settings, store_partition: u32) -> Arc<ShardCore> {
    Arc::new(ShardCore::new(
        store_partition,
        engine_config(settings),
        Arc::new(ChangeFeed::default()),
    ))
}

/// The shard pipeline of `core` on offsets `first..=last` (`core`'s applied
/// offset is `first - 1`, or nothing for a fresh one); what this run added to
/// its counters.
async fn shard_run<S: Store + 'static>(
    bootstrap: &str,
    store: Arc<S>,
    settings: &Settings,
    core: Arc<ShardCore>,
    first: i64,
    last: i64,
) -> ShardRun {
    let metrics = swapstats::telemetry::metrics();
    let store_partition = core.partition;
    let persist_before = histogram_sum(&metrics.store_call_seconds, "persist");
    let apply_before = histogram_sum(&metrics.batch_apply_seconds, &store_partition.to_string());
    let c = &core.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    // consumed, applied, duplicates, dead-lettered, batches, store calls
    let counts = || {
        [
            &c.consumed,
            &c.applied,
            &c.duplicates,
            &c.dead_lettered,
            &c.batches,
            &c.store_calls,
        ]
        .map(load)
    };
    let before = counts();
    let stop = StopFlag::default();
    let started = Instant::now();
    let task = spawn_shard(bootstrap, store, settings, &core, first, &stop);
    wait_applied(&core, last, started + Duration::from_secs(300)).await;
    let total = started.elapsed();
    stop.set();
    task.await.expect("pipeline task").expect("pipeline");
    let after = counts();
    let added = |i: usize| after[i] - before[i];
    ShardRun {
        total,
        swaps: added(0),
        applied: added(1),
        duplicates: added(2),
        rejected: added(3),
        batches: added(4),
        store_calls: added(5),
        apply: Duration::from_secs_f64(
            histogram_sum(&metrics.batch_apply_seconds, &store_partition.to_string())
                - apply_before,
        ),
        persist: Duration::from_secs_f64(
            histogram_sum(&metrics.store_call_seconds, "persist") - persist_before,
        ),
    }
}

/// The shard in its steady state, which the rounds (a few batches each: the
/// mock broker keeps only ~5 MiB) do not reach. A fresh shard on `store` reads
/// `swaps` generator swaps while a thread produces them, never more than `lead`
/// messages ahead of what the shard has read, so nothing it has yet to
/// fetch leaves the broker. The payloads are encoded beforehand: the thread
/// only hands them to librdkafka (lz4, 5 ms linger), which still shares the 2
/// cores with the shard. Returns swaps/s from the `lead`-th applied offset
/// (the pipeline is full by then) to the last.
async fn shard_streaming<S: Store + 'static>(
    cluster: &redis_cluster::RedisCluster,
    bootstrap: &str,
    store: Arc<S>,
    settings: &Settings,
    core: Arc<ShardCore>,
    swaps: usize,
    lead: usize,
) -> StreamRun {
    let mut generator = SwapGenerator::new(&common::shard_stream());
    let payloads: Vec<(String, Vec<u8>)> = (0..swaps)
        .map(|_| {
            let swap = generator.next_swap(swapstats::now_ms());
            let payload = encode_swap(&swap);
            (swap.token, payload)
        })
        .collect();
    let (_, start) = tokio::task::block_in_place(|| watermarks(bootstrap));
    let last = start + swaps as i64 - 1;
    let stop = StopFlag::default();
    let producing = std::thread::Builder::new()
        .name("bench-producer".into())
        .spawn({
            let (bootstrap, core, stop) = (bootstrap.to_string(), core.clone(), stop.clone());
            move || {
                let producer = lz4_producer(&bootstrap, 5);
                let read = || core.counters.consumed.load(Ordering::Relaxed) as usize;
                let mut sent = 0;
                while sent < payloads.len() && !stop.is_set() {
                    let room = (read() + lead).saturating_sub(sent);
                    if room == 0 {
                        // Sleep, not `poll`: the producer's own thread serves its
                        // events, and polling here spun on the shard's 2 cores.
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    for (token, payload) in
                        &payloads[sent..(sent + room.min(1000)).min(payloads.len())]
                    {
                        send_swap(&producer, token, payload);
                        sent += 1;
                    }
                }
                producer
                    .flush(Duration::from_secs(60))
                    .expect("flush producer");
                // Alive (with its librdkafka threads) until the run is measured:
                // the CPU of a thread that has exited is no longer in its group.
                while !stop.is_set() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
        .expect("spawn producer thread");
    let task = spawn_shard(bootstrap, store, settings, &core, start, &stop);
    let deadline = Instant::now() + Duration::from_secs(600);
    wait_applied(&core, start + lead as i64 - 1, deadline).await;
    let (from, started, cpu_before) = (
        core.counters.applied_offset.load(Ordering::Relaxed),
        Instant::now(),
        CpuSnapshot::take(cluster),
    );
    let measured = StopFlag::default();
    let querying = std::thread::Builder::new()
        .name("bench-querier".into())
        .spawn({
            let (core, measured) = (core.clone(), measured.clone());
            move || query_while(&core, &measured)
        })
        .expect("spawn querier thread");
    let ticking = tokio::spawn(tick_while(measured.clone()));
    let asking: Vec<_> = (0..ASYNC_QUERIERS)
        .map(|_| tokio::spawn(ask_while(core.clone(), measured.clone())))
        .collect();
    wait_applied(&core, last, deadline).await;
    let rate = (last - from) as f64 / started.elapsed().as_secs_f64();
    let cpu = CpuSnapshot::take(cluster).split_since(&cpu_before, (last - from) as f64);
    measured.set();
    let (mut stats_waits, mut oversleeps) =
        tokio::task::block_in_place(|| querying.join()).expect("querier thread");
    let mut late_ticks = ticking.await.expect("ticker task");
    let mut answers = Vec::new();
    for task in asking {
        answers.extend(task.await.expect("async querier task"));
    }
    stop.set();
    task.await.expect("pipeline task").expect("pipeline");
    tokio::task::block_in_place(|| producing.join()).expect("producer thread");
    assert_eq!(
        core.counters.consumed.load(Ordering::Relaxed),
        swaps as u64,
        "streaming shard read every swap once"
    );
    StreamRun {
        rate,
        cpu,
        stats_latency: common::latency_summary(&mut stats_waits),
        oversleep: common::latency_summary(&mut oversleeps),
        late_ticks: common::latency_summary(&mut late_ticks),
        async_stats: common::latency_summary(&mut answers),
    }
}

/// Stats requests in flight at once on the shard's runtime, as HTTP handlers.
const ASYNC_QUERIERS: usize = 4;

/// Answer times of BTC's stats asked as the `/stats` handler asks them
/// ([`ShardCore::read`]: in place when no mutation holds or waits for the
/// engine, otherwise queued until the mutation ends), from a task on the
/// shard's runtime, one query per ms or so until `stop`. Timed from when each query was due (the end of the
/// task's 1 ms sleep), as a client sees it: a task whose worker is held up
/// starts late, and that wait counts too.
async fn ask_while(core: Arc<ShardCore>, stop: StopFlag) -> Vec<f64> {
    let mut latencies = Vec::new();
    let mut due = Instant::now();
    while !stop.is_set() {
        let now = swapstats::now_ms();
        let answer = core.read(move |engine| engine.stats("BTC", now)).await;
        std::hint::black_box(answer.expect("runtime running"));
        latencies.push(due.elapsed().as_secs_f64() * 1000.0);
        due = Instant::now() + Duration::from_millis(1);
        tokio::time::sleep_until(due.into()).await;
    }
    latencies
}

/// How late a task on the shard's runtime wakes from 1 ms sleeps until `stop`:
/// what every task there (reads, persists, HTTP, WS pings) waits for a worker.
async fn tick_while(stop: StopFlag) -> Vec<f64> {
    let mut late = Vec::new();
    let nap = Duration::from_millis(1);
    while !stop.is_set() {
        let slept = Instant::now();
        tokio::time::sleep(nap).await;
        late.push(slept.elapsed().saturating_sub(nap).as_secs_f64() * 1000.0);
    }
    late
}

/// Answer times of the busiest token's stats (what `/stats?token=BTC` asks the
/// core, without HTTP), one query every millisecond or so until `stop`: a query
/// waits while the engine applies a part of a batch under its lock. Also how
/// late each 1 ms sleep woke: the wait for a core alone, on a machine this busy.
fn query_while(core: &ShardCore, stop: &StopFlag) -> (Vec<f64>, Vec<f64>) {
    let (mut latencies, mut oversleeps) = (Vec::new(), Vec::new());
    let nap = Duration::from_millis(1);
    while !stop.is_set() {
        let started = Instant::now();
        std::hint::black_box(core.stats("BTC", swapstats::now_ms()));
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        let slept = Instant::now();
        std::thread::sleep(nap);
        oversleeps.push(slept.elapsed().saturating_sub(nap).as_secs_f64() * 1000.0);
    }
    (latencies, oversleeps)
}

/// A streaming run: its rate, where the machine's CPU went meanwhile, and how
/// long a stats query took meanwhile.
struct StreamRun {
    rate: f64,
    cpu: CpuSplit,
    stats_latency: String,
    /// How late the querier's 1 ms sleeps woke (CPU contention alone).
    oversleep: String,
    /// How late a task's 1 ms sleeps on the shard's runtime woke.
    late_ticks: String,
    /// Stats answer times from tasks on the shard's runtime.
    async_stats: String,
}

/// CPU of a streaming run in µs per swap, by who spent it; and the share of
/// the machine's cores left idle (what the 2 cores had to spare).
struct CpuSplit {
    /// The tokio workers: the shard's pipeline, engine and Redis client.
    shard: f64,
    /// librdkafka's threads: the mock broker, the shard's consumer and the
    /// bench producer's client.
    kafka: f64,
    /// The rest of this process: the bench's producing thread, main thread.
    bench: f64,
    redis_masters: f64,
    redis_replicas: f64,
    idle_share: f64,
    /// This process's minor page faults per swap: fresh memory it touched.
    faults: f64,
}

impl CpuSplit {
    fn print(&self, row: &str) {
        println!(
            "    CPU, {row}: shard {:.2} µs/swap (tokio workers), Kafka {:.2} (mock broker + clients), bench producer {:.2}, Redis masters {:.2}, replicas {:.2}; machine idle {:.0} %; bench process {:.2} page faults/swap",
            self.shard, self.kafka, self.bench, self.redis_masters, self.redis_replicas, self.idle_share * 100.0, self.faults
        );
        // What these costs allow: everything shares this machine's cores, so
        // their sum caps the rate here; the shard's own share is what a pod
        // with Redis and Kafka elsewhere would need per core.
        let all = self.shard + self.kafka + self.bench + self.redis_masters + self.redis_replicas;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        println!(
            "    CPU ceiling, {row}: all of it {all:.2} µs/swap on {cores} cores → at most {:.0} swaps/s here; the shard's workers alone {:.0} swaps/s per core",
            cores as f64 * 1e6 / all,
            1e6 / self.shard
        );
    }
}

/// CPU counters of this process's threads, the Redis nodes and the machine.
struct CpuSnapshot {
    threads: Vec<(String, u64)>,
    process: common::ProcessStat,
    redis: (f64, f64),
    machine: (u64, u64),
}

impl CpuSnapshot {
    fn take(cluster: &redis_cluster::RedisCluster) -> Self {
        Self {
            threads: common::thread_cpu_ticks(),
            process: common::process_stat("self"),
            redis: cluster.cpu_seconds(),
            machine: common::machine_ticks(),
        }
    }

    /// What was spent between `before` and this snapshot, per swap of `swaps`.
    fn split_since(&self, before: &Self, swaps: f64) -> CpuSplit {
        // Ticks are 10 ms: µs per swap = ticks × 10,000 / swaps.
        let per_swap = |ticks: u64| ticks as f64 * 10_000.0 / swaps;
        let spent = |matches: &dyn Fn(&str) -> bool| {
            let sum = |threads: &[(String, u64)]| -> u64 {
                threads
                    .iter()
                    .filter(|(name, _)| matches(name))
                    .map(|(_, ticks)| ticks)
                    .sum()
            };
            sum(&self.threads).saturating_sub(sum(&before.threads))
        };
        let shard = spent(&|name| name == "tokio-rt-worker");
        let kafka = spent(&|name| name.starts_with("rdk:"));
        let process = self
            .process
            .cpu_ticks()
            .saturating_sub(before.process.cpu_ticks());
        let idle = self.machine.0.saturating_sub(before.machine.0);
        let all = self.machine.1.saturating_sub(before.machine.1).max(1);
        CpuSplit {
            shard: per_swap(shard),
            kafka: per_swap(kafka),
            bench: per_swap(process.saturating_sub(shard + kafka)),
            redis_masters: (self.redis.0 - before.redis.0) * 1e6 / swaps,
            redis_replicas: ((self.redis.1 - self.redis.0) - (before.redis.1 - before.redis.0))
                * 1e6
                / swaps,
            idle_share: idle as f64 / all as f64,
            faults: self
                .process
                .minor_faults
                .saturating_sub(before.process.minor_faults) as f64
                / swaps,
        }
    }
}

#[derive(Default)]
struct Totals {
    swaps: u64,
    base: Vec<Run>,
    /// The shard's Kafka source alone.
    source: Vec<Run>,
    shard: Vec<ShardRun>,
    /// The same pipeline with the in-memory store: the shard without Redis.
    shard_memory: Vec<ShardRun>,
    /// One long-lived shard (same core and store partition every round).
    shard_warm: Vec<ShardRun>,
    /// Redis server side of the `shard` runs, and of the `shard_warm` runs.
    server: ServerStats,
    server_warm: ServerStats,
}

impl Totals {
    fn rate(swaps: u64, runs: impl Iterator<Item = Duration>) -> f64 {
        let t: f64 = runs.map(|d| d.as_secs_f64()).sum();
        swaps as f64 / t
    }
    fn base_rate(&self) -> f64 {
        Self::rate(self.swaps, self.base.iter().map(|r| r.total))
    }
    fn source_rate(&self) -> f64 {
        Self::rate(self.swaps, self.source.iter().map(|r| r.total))
    }
    fn shard_rate(&self) -> f64 {
        Self::rate(self.swaps, self.shard.iter().map(|r| r.total))
    }
    fn shard_memory_rate(&self) -> f64 {
        Self::rate(self.swaps, self.shard_memory.iter().map(|r| r.total))
    }
    fn shard_warm_rate(&self) -> f64 {
        Self::rate(self.swaps, self.shard_warm.iter().map(|r| r.total))
    }
}

fn per_round_rates(swaps_per_round: &[u64], runs: &[Duration]) -> String {
    swaps_per_round
        .iter()
        .zip(runs)
        .map(|(n, d)| format!("{:.0}k", *n as f64 / d.as_secs_f64() / 1000.0))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Spread (min..max) of the per-round rates, relative to their mean.
fn spread(swaps_per_round: &[u64], runs: &[Duration]) -> f64 {
    let rates: Vec<f64> = swaps_per_round
        .iter()
        .zip(runs)
        .map(|(n, d)| *n as f64 / d.as_secs_f64())
        .collect();
    let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    let (lo, hi) = rates
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    (hi - lo) / mean
}

/// A shard run on the Redis Cluster store, with the server-side statistics
/// it caused added to `server`.
async fn redis_shard_run(
    cluster: &redis_cluster::RedisCluster,
    bootstrap: &str,
    store: &Arc<RedisStore>,
    settings: &Settings,
    core: Arc<ShardCore>,
    (first, last): (i64, i64),
    server: &mut ServerStats,
) -> ShardRun {
    let before = tokio::task::block_in_place(|| server_stats(cluster));
    let run = shard_run(bootstrap, store.clone(), settings, core, first, last).await;
    let after = tokio::task::block_in_place(|| server_stats(cluster));
    server.add_difference(&after, &before);
    run
}

#[allow(clippy::too_many_arguments)]
async fn run_phase(
    name: &str,
    rounds: usize,
    chunk: usize,
    cluster: &redis_cluster::RedisCluster,
    bootstrap: &str,
    producer: &mut SwapProducer,
    store: &Arc<RedisStore>,
    settings: &Settings,
    next_store_partition: &mut u32,
    last_payloads: &mut Vec<Vec<u8>>,
) -> (Totals, Vec<u64>) {
    let mut totals = Totals::default();
    let mut per_round = Vec::new();
    let warm_core = fresh_core(settings, *next_store_partition);
    *next_store_partition += 1;
    for round in 0..rounds {
        let (_, start) = tokio::task::block_in_place(|| watermarks(bootstrap));
        let payloads = tokio::task::block_in_place(|| producer.produce(chunk));
        let (low, high) = tokio::task::block_in_place(|| watermarks(bootstrap));
        assert!(
            low <= start && high == start + chunk as i64,
            "chunk not fully retained: low {low} > start {start} (high {high}); lower BENCH_CHUNK"
        );
        let (first, last) = (start, high - 1);
        // Five orders, rotating.
        for step in 0..5 {
            match (round + step) % 5 {
                0 => {
                    let b = bootstrap.to_string();
                    let run = tokio::task::spawn_blocking(move || {
                        let runs: Vec<Run> =
                            (0..BARE_REPS).map(|_| bare_base(&b, first, last)).collect();
                        Run::mean(&runs)
                    })
                    .await
                    .expect("bare task");
                    totals.base.push(run);
                }
                1 => {
                    let mut runs = Vec::new();
                    for _ in 0..BARE_REPS {
                        runs.push(bare_source(bootstrap, first, last).await);
                    }
                    totals.source.push(Run::mean(&runs));
                }
                2 => {
                    let memory = Arc::new(MemoryStore::default());
                    let core = fresh_core(settings, 0);
                    let run = shard_run(bootstrap, memory, settings, core, first, last).await;
                    assert_eq!(run.swaps, chunk as u64, "shard consumed the whole chunk");
                    totals.shard_memory.push(run);
                }
                3 => {
                    let core = fresh_core(settings, *next_store_partition);
                    *next_store_partition += 1;
                    let run = redis_shard_run(
                        cluster,
                        bootstrap,
                        store,
                        settings,
                        core,
                        (first, last),
                        &mut totals.server,
                    )
                    .await;
                    assert_eq!(run.swaps, chunk as u64, "shard consumed the whole chunk");
                    totals.shard.push(run);
                }
                _ => {
                    let run = redis_shard_run(
                        cluster,
                        bootstrap,
                        store,
                        settings,
                        warm_core.clone(),
                        (first, last),
                        &mut totals.server_warm,
                    )
                    .await;
                    assert_eq!(run.swaps, chunk as u64, "shard consumed the whole chunk");
                    totals.shard_warm.push(run);
                }
            }
        }
        totals.swaps += chunk as u64;
        per_round.push(chunk as u64);
        let s = totals.shard.last().copied().unwrap_or_default();
        eprintln!(
            "[{name}] round {}/{rounds}: offsets {first}..={last}  base {:.0}/s  source {:.0}/s  shard {:.0}/s  long-lived {:.0}/s  (memory store {:.0}/s)  ({} batches)",
            round + 1,
            chunk as f64 / totals.base.last().map_or(1.0, |r| r.total.as_secs_f64()),
            chunk as f64 / totals.source.last().map_or(1.0, |r| r.total.as_secs_f64()),
            chunk as f64 / s.total.as_secs_f64(),
            chunk as f64 / totals.shard_warm.last().map_or(1.0, |r| r.total.as_secs_f64()),
            chunk as f64 / totals.shard_memory.last().map_or(1.0, |r| r.total.as_secs_f64()),
            s.batches,
        );
        *last_payloads = payloads;
    }
    (totals, per_round)
}

/// Offline split of the in-pipeline CPU work on one round's payloads: decode
/// alone (best of 3 passes, so one pass slowed by a neighbour on this shared
/// machine does not set the figure), and engine `apply_batch` alone in batches
/// of `batch` swaps.
fn offline_split(settings: &Settings, payloads: &[Vec<u8>], batch: usize) -> Offline {
    let limits = PipelineConfig::from_settings(settings).limits;
    let now = swapstats::now_ms();
    let mut swaps: Vec<Swap> = Vec::new();
    let mut decode_ns = f64::INFINITY;
    for _ in 0..3 {
        let started = Instant::now();
        swaps = payloads
            .iter()
            .filter_map(|p| decode_swap(p, &limits, now).ok())
            .collect();
        decode_ns = decode_ns.min(started.elapsed().as_nanos() as f64 / payloads.len() as f64);
    }
    let mut engine = WindowEngine::new(engine_config(settings));
    let started = Instant::now();
    let effects: Vec<_> = swaps
        .chunks(batch.max(1))
        .map(|chunk| engine.apply_batch(chunk, now).0)
        .collect();
    let engine_ns = started.elapsed().as_nanos() as f64 / swaps.len() as f64;
    let lifetimes = RedisStoreOptions::from_ingest(&settings.ingest).lifetimes();
    let started = Instant::now();
    let bytes: usize = effects
        .iter()
        .map(|e| {
            encode_batch(0, 0, e, now, &lifetimes, &|_, _| false)
                .expect("encode")
                .byte_len()
        })
        .sum();
    let encode_ns = started.elapsed().as_nanos() as f64 / swaps.len() as f64;
    let n = effects.len().max(1) as f64;
    Offline {
        decode_ns,
        engine_ns,
        encode_ns,
        batch,
        payload_bytes: bytes as f64 / n,
        buckets: effects.iter().map(|e| e.buckets.len()).sum::<usize>() as f64 / n,
        wallets: effects.iter().map(|e| e.wallets.len()).sum::<usize>() as f64 / n,
        events: effects.iter().map(|e| e.events.len()).sum::<usize>() as f64 / n,
    }
}

/// Per-swap CPU costs measured outside the pipeline, and batch payload sizes.
struct Offline {
    decode_ns: f64,
    engine_ns: f64,
    encode_ns: f64,
    batch: usize,
    payload_bytes: f64,
    buckets: f64,
    wallets: f64,
    events: f64,
}

impl Offline {
    fn print(&self) {
        println!(
            "offline, one round's payloads in batches of {}: decode {:.0} ns/swap (best of 3), engine apply_batch {:.0} ns/swap (fresh engine), encode_batch {:.0} ns/swap",
            self.batch, self.decode_ns, self.engine_ns, self.encode_ns
        );
        println!(
            "  per batch: persist arguments {:.0} KiB; effect = {:.0} bucket deltas, {:.0} wallet marks, {:.0} events",
            self.payload_bytes / 1024.0,
            self.buckets,
            self.wallets,
            self.events
        );
    }
}

/// Server-side command statistics summed over every node (`INFO commandstats`).
#[derive(Debug, Default, Clone, Copy)]
struct ServerStats {
    script_calls: u64,
    script_usec: u64,
    wait_calls: u64,
    wait_usec: u64,
}

impl ServerStats {
    /// Adds `after - before` (two readings of the same counters).
    fn add_difference(&mut self, after: &ServerStats, before: &ServerStats) {
        self.script_calls += after.script_calls.saturating_sub(before.script_calls);
        self.script_usec += after.script_usec.saturating_sub(before.script_usec);
        self.wait_calls += after.wait_calls.saturating_sub(before.wait_calls);
        self.wait_usec += after.wait_usec.saturating_sub(before.wait_usec);
    }
}

/// The scripts' and WAITs' totals over every node, since each node started.
fn server_stats(cluster: &redis_cluster::RedisCluster) -> ServerStats {
    let mut stats = ServerStats::default();
    for (name, calls, usec) in cluster.command_stats() {
        match name.as_str() {
            "evalsha" | "eval" => {
                stats.script_calls += calls;
                stats.script_usec += usec;
            }
            "wait" => {
                stats.wait_calls += calls;
                stats.wait_usec += usec;
            }
            _ => {}
        }
    }
    stats
}

fn print_server_stats(what: &str, s: &ServerStats, swaps: u64) {
    println!(
        "redis server side of {what} (INFO commandstats, all nodes): {} script calls, {:.1} ms each = {:.1} µs per swap inside Lua; WAIT {} calls, {:.2} ms each",
        s.script_calls,
        s.script_usec as f64 / 1000.0 / s.script_calls.max(1) as f64,
        s.script_usec as f64 / swaps.max(1) as f64,
        s.wait_calls,
        s.wait_usec as f64 / 1000.0 / s.wait_calls.max(1) as f64,
    );
}

fn print_phase(title: &str, t: &Totals, per_round: &[u64]) {
    let shard_totals: Vec<Duration> = t.shard.iter().map(|r| r.total).collect();
    let base_totals: Vec<Duration> = t.base.iter().map(|r| r.total).collect();
    let source_totals: Vec<Duration> = t.source.iter().map(|r| r.total).collect();
    let memory_totals: Vec<Duration> = t.shard_memory.iter().map(|r| r.total).collect();
    let warm_totals: Vec<Duration> = t.shard_warm.iter().map(|r| r.total).collect();
    let sum = |f: fn(&ShardRun) -> u64| t.shard.iter().map(f).sum::<u64>();
    let (batches, calls) = (sum(|r| r.batches), sum(|r| r.store_calls));
    let (applied, dups, rejected) = (
        sum(|r| r.applied),
        sum(|r| r.duplicates),
        sum(|r| r.rejected),
    );
    let shard_time: f64 = shard_totals.iter().map(Duration::as_secs_f64).sum();
    let apply: f64 = t.shard.iter().map(|r| r.apply.as_secs_f64()).sum();
    let persist: f64 = t.shard.iter().map(|r| r.persist.as_secs_f64()).sum();
    let first_base: f64 = t
        .base
        .iter()
        .map(|r| r.first_message.as_secs_f64())
        .sum::<f64>()
        / t.base.len().max(1) as f64;
    println!();
    println!("== {title} ==");
    println!(
        "rounds: {}   swaps per round: {}   total swaps: {}",
        per_round.len(),
        per_round.first().copied().unwrap_or(0),
        t.swaps
    );
    println!("{:<44} {:>14} {:>10}  per round", "", "swaps/s", "spread");
    println!(
        "{:<44} {:>14.0} {:>9.0}%  {}",
        "(a) bare BaseConsumer::poll",
        t.base_rate(),
        100.0 * spread(per_round, &base_totals),
        per_round_rates(per_round, &base_totals)
    );
    println!(
        "{:<44} {:>14.0} {:>9.0}%  {}",
        "(a') the shard's Kafka source alone",
        t.source_rate(),
        100.0 * spread(per_round, &source_totals),
        per_round_rates(per_round, &source_totals)
    );
    println!(
        "{:<44} {:>14.0} {:>9.0}%  {}",
        "(b) shard pipeline (Kafka → engine → Redis)",
        t.shard_rate(),
        100.0 * spread(per_round, &shard_totals),
        per_round_rates(per_round, &shard_totals)
    );
    println!(
        "{:<44} {:>14.0} {:>9.0}%  {}",
        "(c) shard pipeline, in-memory store",
        t.shard_memory_rate(),
        100.0 * spread(per_round, &memory_totals),
        per_round_rates(per_round, &memory_totals)
    );
    println!(
        "{:<44} {:>14.0} {:>9.0}%  {}",
        "(d) shard pipeline, long-lived (steady state)",
        t.shard_warm_rate(),
        100.0 * spread(per_round, &warm_totals),
        per_round_rates(per_round, &warm_totals)
    );
    println!(
        "ratio shard / bare(poll): {:.2}   shard / its source alone: {:.2}   long-lived / bare(poll): {:.2}   (target ≥ 0.8 and ≥ 500,000 swaps/s)",
        t.shard_rate() / t.base_rate(),
        t.shard_rate() / t.source_rate(),
        t.shard_warm_rate() / t.base_rate()
    );
    println!(
        "without Redis: in-memory store / bare(poll): {:.2}   Redis / in-memory store: {:.2}",
        t.shard_memory_rate() / t.base_rate(),
        t.shard_rate() / t.shard_memory_rate()
    );
    println!(
        "batches: {batches}   mean batch: {:.0} swaps   script calls: {calls} = {:.3} per 1,000 swaps (target ≤ 2)",
        t.swaps as f64 / batches.max(1) as f64,
        calls as f64 * 1000.0 / t.swaps as f64
    );
    println!("applied {applied}, duplicates {dups}, dead-lettered {rejected}");
    // Batches overlap (two persist while the next one is read and applied),
    // so these are per-batch latencies, not a split of the wall time.
    println!(
        "per batch: decode → persisted {:.1} ms, of which store calls {:.1} ms (batches overlap: two persist while the next is read and applied); shard wall time {:.3} s over all rounds",
        1000.0 * apply / batches.max(1) as f64,
        1000.0 * persist / batches.max(1) as f64,
        shard_time,
    );
    println!(
        "bare poll: first message after {:.1} ms (connect + fetch) on average",
        1000.0 * first_base
    );
    print_server_stats("(b)", &t.server, t.swaps);
    print_server_stats("(d)", &t.server_warm, t.swaps);
}

fn main() {
    let rounds = common::env_usize("BENCH_ROUNDS").unwrap_or(6);
    eprintln!("starting Redis Cluster (3 masters + 3 replicas) and mock Kafka ...");
    let cluster = redis_cluster::RedisCluster::start();
    let mock = kafka::MockKafka::start(1);
    let bootstrap = mock.bootstrap.clone();
    let mut settings = Settings::defaults();
    if let Some(max) = common::env_usize("BENCH_BATCH_MAX") {
        settings.shard.batch_max_swaps = max;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store_settings = StoreSettings {
            kind: StoreKind::RedisCluster,
            redis_urls: cluster.seed_urls(),
        };
        let store = Arc::new(
            RedisStore::connect_with(
                &store_settings,
                RedisStoreOptions::from_ingest(&settings.ingest),
            )
            .await
            .expect("connect redis cluster"),
        );
        let mut producer = SwapProducer::new(&bootstrap);

        // Calibration: how many swaps does the mock broker retain?
        let chunk = match common::env_usize("BENCH_CHUNK") {
            Some(c) => c,
            None => {
                let probe = 200_000;
                let payloads = tokio::task::block_in_place(|| producer.produce(probe));
                let bytes: usize = payloads.iter().map(Vec::len).sum();
                let (low, high) = watermarks(&bootstrap);
                let retained = (high - low) as usize;
                let chunk = (retained * 8 / 10).min(120_000) / 1000 * 1000;
                eprintln!(
                    "calibration: produced {probe} swaps ({:.0} B JSON each), broker retains {retained}; chunk = {chunk}",
                    bytes as f64 / probe as f64
                );
                chunk
            }
        };

        let mut store_partition = 1000;
        let mut payloads = Vec::new();
        let (off, off_rounds) = run_phase(
            "no endpoint",
            rounds,
            chunk,
            &cluster,
            &bootstrap,
            &mut producer,
            &store,
            &settings,
            &mut store_partition,
            &mut payloads,
        )
        .await;
        let mean_batch = off.swaps as usize
            / off.shard.iter().map(|r| r.batches).sum::<u64>().max(1) as usize;
        let offline = offline_split(&settings, &payloads, mean_batch);
        let stream_swaps = common::env_usize("BENCH_STREAM_SWAPS").unwrap_or(8 * chunk);
        let streaming_redis = shard_streaming(
            &cluster,
            &bootstrap,
            store.clone(),
            &settings,
            fresh_core(&settings, store_partition),
            stream_swaps,
            chunk,
        )
        .await;
        store_partition += 1;
        let streaming_memory = shard_streaming(
            &cluster,
            &bootstrap,
            Arc::new(MemoryStore::default()),
            &settings,
            fresh_core(&settings, 0),
            stream_swaps,
            chunk,
        )
        .await;

        // Phase 2: the real telemetry set-up with an OTLP endpoint.
        let receiver = otlp_support::Receiver::start().await;
        let mut traced_settings = Settings::defaults();
        traced_settings.telemetry.otlp_endpoint = Some(receiver.endpoint.clone());
        traced_settings.telemetry.sample_ratio = 1.0;
        let guard = swapstats::telemetry::init(
            &traced_settings,
            swapstats::telemetry::Role::Shard,
            Some(0),
        )
        .expect("telemetry init");
        assert!(guard.exporting() && swapstats::telemetry::tracing_enabled());
        let (on, on_rounds) = run_phase(
            "OTLP export on",
            rounds,
            chunk,
            &cluster,
            &bootstrap,
            &mut producer,
            &store,
            &settings,
            &mut store_partition,
            &mut payloads,
        )
        .await;
        guard.shutdown().await;
        let spans = receiver.spans();
        let batch_spans = spans.iter().filter(|s| s.name == "apply_batch").count();
        let persist_spans = spans.iter().filter(|s| s.name == "store.persist").count();

        println!();
        println!("shard_pipeline — release build, 2 cores shared by Kafka mock, 6 redis-servers and the bench");
        println!("generator: 10,000 tokens (Zipf 1.1), 100,000 wallets, 1% duplicates, 2 s disorder; producer lz4");
        println!(
            "settings: batch_max_swaps {}, batch_max_delay {:?}, store redis-cluster 3+3 (EVALSHA + WAIT 1 per batch, 2 batches in flight)",
            settings.shard.batch_max_swaps, settings.shard.batch_max_delay
        );
        print_phase("phase 1: no tracing subscriber, no OTLP endpoint", &off, &off_rounds);
        offline.print();
        println!(
            "(e) streaming, steady state ({stream_swaps} swaps produced while read, at most {chunk} ahead; rate after the first {chunk}):"
        );
        println!(
            "    shard → Redis {:.0} swaps/s = {:.2} × bare(poll)   shard, in-memory store {:.0} swaps/s = {:.2} × bare(poll)",
            streaming_redis.rate,
            streaming_redis.rate / off.base_rate(),
            streaming_memory.rate,
            streaming_memory.rate / off.base_rate()
        );
        streaming_redis.cpu.print("→ Redis");
        streaming_memory.cpu.print("in-memory store");
        println!(
            "    stats of BTC (ShardCore::stats, one query per ms): → Redis {}; in-memory store {}",
            streaming_redis.stats_latency, streaming_memory.stats_latency
        );
        println!(
            "    the querier's 1 ms sleeps woke late by: → Redis {}; in-memory store {}",
            streaming_redis.oversleep, streaming_memory.oversleep
        );
        println!(
            "    a task's 1 ms sleeps on the shard's runtime woke late by: → Redis {}; in-memory store {}",
            streaming_redis.late_ticks, streaming_memory.late_ticks
        );
        println!(
            "    stats of BTC from {ASYNC_QUERIERS} tasks on the runtime (as /stats handlers, from when due; the 1 ms timer adds ~1 ms): → Redis {}; in-memory store {}",
            streaming_redis.async_stats, streaming_memory.async_stats
        );
        print_phase("phase 2: telemetry::init with OTLP endpoint (local gRPC receiver)", &on, &on_rounds);
        println!(
            "spans received: {} ({batch_spans} apply_batch, {persist_spans} store.persist)",
            spans.len()
        );
        println!();
        println!("== tracing off vs on (issue 5) ==");
        let (off_rate, on_rate) = (off.shard_rate(), on.shard_rate());
        let (off_rel, on_rel) = (off_rate / off.base_rate(), on_rate / on.base_rate());
        println!(
            "shard swaps/s  off {off_rate:.0}   on {on_rate:.0}   on/off {:.3}",
            on_rate / off_rate
        );
        println!(
            "shard / bare(poll) in the same rounds  off {off_rel:.2}   on {on_rel:.2}   on/off {:.3}",
            on_rel / off_rel
        );
        let shard_off: Vec<Duration> = off.shard.iter().map(|r| r.total).collect();
        println!(
            "noise: per-round spread of the shard rate with tracing off is {:.0}% (min..max / mean)",
            100.0 * spread(&off_rounds, &shard_off)
        );
    });
    drop(runtime);
    drop(mock);
    drop(cluster);
}
