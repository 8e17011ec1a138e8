//! Persist-only throughput of the Redis Cluster store: the same batches (the
//! shard's effects of a generated stream) persisted one at a time, and with
//! two in flight over two write lanes as the shard pipeline does. Isolates the
//! Redis side of `shard_pipeline`, whose rounds are too short (the mock
//! broker's retention) to reach a steady state.
//!
//! Setup: a real Redis Cluster (3 masters + 3 replicas); batches of
//! `shard.batch_max_swaps` swaps from the generator the shard bench uses
//! (10,000 tokens, 100,000 wallets, 1% duplicates, 2 s disorder), applied by
//! one engine into effects once, then persisted in rounds that alternate the
//! two modes, each into a fresh partition (fresh keys; every batch `Applied`).
//! Each round's partition is chosen so both modes of a pair use the same master.
//! Meanwhile a thread sends `PING` to that master every millisecond and reports
//! the round trips: how long a batch's script keeps the master's other clients
//! (other partitions, loads) waiting, the price of larger batches.
//!
//! Knobs (env): `BENCH_ROUNDS` (pairs, default 4), `BENCH_BATCHES` (batches per
//! round, default 10), `BENCH_BATCH_MAX` (swaps per batch, default the
//! setting's), `BENCH_STREAM_RATE` (swaps per second of block time, ending now;
//! default 0: every swap at the same clock, so later batches mostly rewrite the
//! same seconds; with a rate, each batch brings new seconds, as a partition's
//! stream does over time).
//!
//! Run: `cargo bench --bench store_persist`

mod common;
#[path = "../tests/support/redis_cluster.rs"]
#[allow(dead_code)]
mod redis_cluster;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesOrdered, StreamExt};
use swapstats::config::{Settings, StoreKind, StoreSettings};
use swapstats::shard::engine_config;
use swapstats::source::SwapGenerator;
use swapstats::store::{keys, PersistBatch, PersistOutcome, RedisStore, Store};
use swapstats::window::{BatchEffect, WindowEngine};

/// Persists `effects` as consecutive batches of `batch` offsets into
/// `partition`, at most `depth` at once; returns swaps/s.
async fn persist_all(
    store: &RedisStore,
    partition: u32,
    effects: &[BatchEffect],
    batch: usize,
    depth: usize,
    now_ms: i64,
) -> f64 {
    let started = Instant::now();
    let mut in_flight = FuturesOrdered::new();
    for (i, effect) in effects.iter().enumerate() {
        let first = (i * batch) as i64;
        let persist = PersistBatch {
            partition,
            first_offset: first,
            last_offset: first + batch as i64 - 1,
            follows: first - 1,
            effect,
            now_ms,
            lane: i,
        };
        in_flight.push_back(async move {
            loop {
                match store.persist(&persist).await.expect("persist") {
                    PersistOutcome::Applied => return,
                    // Overtook its predecessor (the shard waits for it too).
                    PersistOutcome::OutOfOrder { .. } => {
                        tokio::time::sleep(Duration::from_millis(1)).await
                    }
                    other => panic!("batch {i}: {other:?}"),
                }
            }
        });
        while in_flight.len() >= depth {
            in_flight.next().await;
        }
    }
    while in_flight.next().await.is_some() {}
    (effects.len() * batch) as f64 / started.elapsed().as_secs_f64()
}

/// Round trips of `PING` to the server at `port`, one every millisecond or so,
/// until `stop`: how long a master that runs the batches' scripts keeps its
/// other clients waiting (other partitions' writes, loads), which grows with
/// the batch size.
fn ping_while(port: u16, stop: &AtomicBool) -> Vec<f64> {
    let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) else {
        return Vec::new();
    };
    let _ = conn.set_nodelay(true);
    let mut reply = [0u8; 7]; // +PONG\r\n
    let mut round_trips = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        if conn.write_all(b"PING\r\n").is_err() || conn.read_exact(&mut reply).is_err() {
            break;
        }
        round_trips.push(started.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(1));
    }
    round_trips
}

/// A partition above `after` whose slot is served by the same master as `like`'s.
fn partition_like(cluster: &redis_cluster::RedisCluster, like: u32, after: u32) -> u32 {
    let master = cluster.master_of_slot(keys::slot(like));
    (after + 1..after + 10_000)
        .find(|&p| cluster.master_of_slot(keys::slot(p)) == master)
        .expect("a partition on the same master")
}

/// The servers' listpack limits for hashes, as `entries/value` bytes.
fn hash_settings(cluster: &redis_cluster::RedisCluster) -> String {
    let Some(port) = cluster.live_ports().first().copied() else {
        return "unknown".into();
    };
    let get = |name: &str| -> String {
        redis_cluster::query::<Vec<String>>(port, redis::cmd("CONFIG").arg("GET").arg(name))
            .ok()
            .and_then(|v| v.get(1).cloned())
            .unwrap_or_default()
    };
    format!(
        "hash-max-listpack-entries {}, hash-max-listpack-value {}",
        get("hash-max-listpack-entries"),
        get("hash-max-listpack-value")
    )
}

fn main() {
    let rounds = common::env_usize("BENCH_ROUNDS").unwrap_or(4);
    let batches = common::env_usize("BENCH_BATCHES").unwrap_or(10);
    let settings = Settings::defaults();
    let batch = common::env_usize("BENCH_BATCH_MAX").unwrap_or(settings.shard.batch_max_swaps);
    eprintln!("starting Redis Cluster (3 masters + 3 replicas) ...");
    let cluster = redis_cluster::RedisCluster::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = runtime
        .block_on(RedisStore::connect(&StoreSettings {
            kind: StoreKind::RedisCluster,
            redis_urls: cluster.seed_urls(),
        }))
        .expect("connect");
    let mut generator = SwapGenerator::new(&common::shard_stream());
    let now = swapstats::now_ms();
    let stream_rate = common::env_usize("BENCH_STREAM_RATE").unwrap_or(0);
    // Clock of swap `i` of the stream: `now`, or spread at `stream_rate`.
    let total = (batches * batch) as i64;
    let clock = |i: i64| match stream_rate {
        0 => now,
        rate => now - (total - 1 - i) * 1000 / rate as i64,
    };
    let mut engine = WindowEngine::new(engine_config(&settings));
    let effects: Vec<BatchEffect> = (0..batches)
        .map(|b| {
            let first = (b * batch) as i64;
            let swaps: Vec<_> = (first..first + batch as i64)
                .map(|i| generator.next_swap(clock(i)))
                .collect();
            engine
                .apply_batch(&swaps, clock(first + batch as i64 - 1))
                .0
        })
        .collect();

    for port in cluster.live_ports() {
        let _: redis::RedisResult<()> =
            redis_cluster::query(port, redis::cmd("CONFIG").arg("RESETSTAT"));
    }
    let (memory_before, _) = cluster.used_memory();
    let (mut one, mut two) = (Vec::new(), Vec::new());
    let (mut one_pings, mut two_pings) = (Vec::new(), Vec::new());
    let mut partition = 100;
    for round in 0..rounds {
        let first = partition_like(&cluster, partition, partition);
        let second = partition_like(&cluster, first, first);
        partition = second;
        // Alternate which mode goes first.
        let modes = if round % 2 == 0 { [1, 2] } else { [2, 1] };
        for (depth, p) in modes.into_iter().zip([first, second]) {
            let stop = AtomicBool::new(false);
            let master = cluster.master_of_slot(keys::slot(p));
            let (rate, round_trips) = std::thread::scope(|scope| {
                let pinger =
                    scope.spawn(|| master.map_or_else(Vec::new, |port| ping_while(port, &stop)));
                let rate = runtime.block_on(persist_all(&store, p, &effects, batch, depth, now));
                stop.store(true, Ordering::Relaxed);
                (rate, pinger.join().unwrap_or_default())
            });
            if depth == 1 {
                &mut one_pings
            } else {
                &mut two_pings
            }
            .extend(round_trips);
            eprintln!(
                "round {}: {depth} in flight (partition {p}): {rate:.0} swaps/s",
                round + 1
            );
            if depth == 1 { &mut one } else { &mut two }.push(rate);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!();
    println!(
        "store_persist — release build, Redis Cluster 3+3 (EVALSHA + WAIT 1 per batch), 2 cores"
    );
    println!(
        "{batches} batches of {batch} swaps per round, block times {} ({} bucket deltas, {} wallet marks, {} events per batch on average)",
        match stream_rate {
            0 => "all at one clock".to_string(),
            rate => format!("spread at {rate} swaps/s"),
        },
        effects.iter().map(|e| e.buckets.len()).sum::<usize>() / batches.max(1),
        effects.iter().map(|e| e.wallets.len()).sum::<usize>() / batches.max(1),
        effects.iter().map(|e| e.events.len()).sum::<usize>() / batches.max(1),
    );
    let show = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{:.0}k", r / 1000.0))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "one batch at a time   {:>9.0} swaps/s  ({})",
        mean(&one),
        show(&one)
    );
    println!(
        "two in flight         {:>9.0} swaps/s  ({})",
        mean(&two),
        show(&two)
    );
    println!(
        "a PING to the partition's master meanwhile: one at a time {}; two in flight {}",
        common::latency_summary(&mut one_pings),
        common::latency_summary(&mut two_pings)
    );
    let swaps = (2 * rounds * batches * batch) as f64;
    let commands = cluster.command_stats();
    let stat = |name: &str| {
        commands
            .iter()
            .find(|c| c.0 == name)
            .map_or((0, 0), |c| (c.1, c.2))
    };
    let (scripts, script_usec) = stat("evalsha");
    println!(
        "redis masters, per 1,000 swaps: script {:.0} µs over {:.2} calls; inside them HSET {:.0} calls ({:.0} µs), PEXPIREAT {:.0} ({:.0} µs), APPEND {:.1} ({:.0} µs), ZADD {:.1} ({:.0} µs)",
        script_usec as f64 * 1000.0 / swaps,
        scripts as f64 * 1000.0 / swaps,
        stat("hset").0 as f64 * 1000.0 / swaps,
        stat("hset").1 as f64 * 1000.0 / swaps,
        stat("pexpireat").0 as f64 * 1000.0 / swaps,
        stat("pexpireat").1 as f64 * 1000.0 / swaps,
        stat("append").0 as f64 * 1000.0 / swaps,
        stat("append").1 as f64 * 1000.0 / swaps,
        stat("zadd").0 as f64 * 1000.0 / swaps,
        stat("zadd").1 as f64 * 1000.0 / swaps,
    );
    println!(
        "redis masters' used_memory grew {:.0} bytes per persisted swap (hash settings: {})",
        (cluster.used_memory().0 as f64 - memory_before as f64) / swaps,
        hash_settings(&cluster)
    );
    let ratios: Vec<f64> = two.iter().zip(&one).map(|(t, o)| t / o).collect();
    println!(
        "two / one per round: {}  mean {:.2}",
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" "),
        mean(&ratios)
    );
}
