//! Concurrent queries on one shard's engine, as `/stats` and `/stats/top`
//! handlers ask them (`ShardCore::read` from tasks of a 2-worker runtime, the
//! shard pod's), while no batch is being applied: the usual state of a shard
//! at a live stream's rate.
//!
//! Rows: queries per second and each query's latency for 1, 4 and 16 tasks
//! asking back to back, for `/stats/top?window=1h&by=volume_usd&limit=20`
//! over 1000 tokens, and for one token's full stats (tokens of the 50 busiest,
//! in turn). The engine holds 2 M swaps of the engine bench's stream (1000
//! tokens Zipf(1.0), 10k wallets). With queries that exclude one another, more
//! tasks only queue; with shared reads, two run at once on the two workers.
//!
//! Last row, a flood while batches are applied: a thread applies 20,000-swap
//! batches back to back while 1,000 tasks (as many `/stats` pollers) each
//! ask one token's stats every 5 ms. Reported: the queries answered and their
//! latency, the swaps applied per second, and how many threads the runtime
//! started for it (every query that finds the engine taken waits off the
//! workers).
//!
//! Run: `cargo bench --bench shard_queries` (about 40 s once built).

#[path = "common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{default_config, p50_p99_max, Stream};
use swapstats::shard::{ChangeFeed, ShardCore};
use swapstats::swap::Swap;
use swapstats::window::RankBy;

/// How long each row asks.
const ROW_SECS: u64 = 4;

#[derive(Clone, Copy)]
enum Query {
    Top,
    Stats,
}

fn main() {
    let core = Arc::new(ShardCore::new(
        0,
        default_config(),
        Arc::new(ChangeFeed::default()),
    ));
    let mut stream = Stream::new(1, 1000, 1.0, 10_000, 1000.0, 0.01);
    let mut now = 0;
    for _ in 0..20 {
        let (swaps, clocks): (Vec<Swap>, Vec<i64>) =
            (0..100_000).map(|_| stream.next_swap()).unzip();
        now = clocks.iter().copied().max().unwrap_or(now);
        core.apply_batch(&swaps, now);
    }
    let busiest: Arc<[String]> = (0..50).map(|i| stream.token_name(i).to_string()).collect();
    let threads_started = Arc::new(AtomicUsize::new(0));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start({
            let threads_started = threads_started.clone();
            move || {
                threads_started.fetch_add(1, Ordering::Relaxed);
            }
        })
        .enable_all()
        .build()
        .expect("runtime");
    for (name, query) in [
        ("top 1h by volume_usd", Query::Top),
        ("stats", Query::Stats),
    ] {
        for tasks in [1, 4, 16] {
            let started = Instant::now();
            let mut latencies = runtime.block_on(ask(&core, &busiest, query, tasks, now));
            let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
            println!(
                "{name}, {tasks:>2} tasks: {rate:>9.0} queries/s, latency {}",
                summary_us(&mut latencies)
            );
        }
    }
    let before = threads_started.load(Ordering::Relaxed);
    let flood = flood(&runtime, &core, &busiest, &mut stream, now);
    println!(
        "flood: {FLOOD_TASKS} tasks asking stats every {FLOOD_EVERY_MS} ms while batches apply: \
         {} queries answered, latency {}; {:.0} swaps/s applied; {} threads started",
        flood.latencies.len(),
        summary_us(&mut flood.latencies.clone()),
        flood.applied_per_s,
        threads_started.load(Ordering::Relaxed) - before,
    );
}

/// Pollers of the flood row, and how often each asks.
const FLOOD_TASKS: usize = 1000;
const FLOOD_EVERY_MS: u64 = 5;

struct Flood {
    latencies: Vec<f64>,
    applied_per_s: f64,
}

/// [`FLOOD_TASKS`] tasks asking one token's stats every [`FLOOD_EVERY_MS`]
/// while a thread applies the stream's next 20,000-swap batches back to back,
/// for [`ROW_SECS`].
fn flood(
    runtime: &tokio::runtime::Runtime,
    core: &Arc<ShardCore>,
    busiest: &Arc<[String]>,
    stream: &mut Stream,
    now_ms: i64,
) -> Flood {
    let batches: Vec<(Vec<Swap>, i64)> = (0..60)
        .map(|_| {
            let (swaps, clocks): (Vec<Swap>, Vec<i64>) =
                (0..20_000).map(|_| stream.next_swap()).unzip();
            let now = clocks.iter().copied().max().unwrap_or(now_ms);
            (swaps, now)
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let applier = std::thread::spawn({
        let (core, stop) = (core.clone(), stop.clone());
        move || {
            let started = Instant::now();
            let mut applied = 0;
            for (swaps, now) in &batches {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                core.apply_batch(swaps, *now);
                applied += swaps.len();
            }
            applied as f64 / started.elapsed().as_secs_f64()
        }
    });
    let latencies = runtime.block_on(async {
        let until = Instant::now() + Duration::from_secs(ROW_SECS);
        let pollers: Vec<_> = (0..FLOOD_TASKS)
            .map(|task| {
                let (core, busiest) = (core.clone(), busiest.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut every = tokio::time::interval(Duration::from_millis(FLOOD_EVERY_MS));
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while Instant::now() < until {
                        every.tick().await;
                        let token = busiest[task % busiest.len()].clone();
                        let started = Instant::now();
                        let stats = core.read(move |e| e.stats(&token, now_ms)).await;
                        assert!(matches!(stats, Ok(Some(_))));
                        latencies.push(started.elapsed().as_secs_f64() * 1e6);
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for poller in pollers {
            all.extend(poller.await.expect("poller"));
        }
        all
    });
    stop.store(true, Ordering::Relaxed);
    let applied_per_s = applier.join().expect("applier");
    Flood {
        latencies,
        applied_per_s,
    }
}

/// `tasks` tasks each asking `query` back to back for [`ROW_SECS`]; every
/// query's latency in µs.
async fn ask(
    core: &Arc<ShardCore>,
    busiest: &Arc<[String]>,
    query: Query,
    tasks: usize,
    now_ms: i64,
) -> Vec<f64> {
    let until = Instant::now() + Duration::from_secs(ROW_SECS);
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (core, busiest) = (core.clone(), busiest.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut next_token = task;
                while Instant::now() < until {
                    let started = Instant::now();
                    match query {
                        Query::Top => {
                            let top = core
                                .read(move |e| e.top("1h", RankBy::VolumeUsd, 20, now_ms))
                                .await;
                            assert!(matches!(top, Ok(Some(ref t)) if t.len() == 20));
                        }
                        Query::Stats => {
                            let token = busiest[next_token % busiest.len()].clone();
                            next_token += 7;
                            let stats = core.read(move |e| e.stats(&token, now_ms)).await;
                            assert!(matches!(stats, Ok(Some(_))));
                        }
                    }
                    latencies.push(started.elapsed().as_secs_f64() * 1e6);
                    // As a handler would between requests: other tasks run.
                    tokio::task::yield_now().await;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.expect("query task"));
    }
    all
}

/// p50, p99 and max of latencies in µs (a stats query takes about one).
fn summary_us(latencies: &mut [f64]) -> String {
    match p50_p99_max(latencies) {
        None => "no samples".into(),
        Some([p50, p99, max]) => format!("p50 {p50:.1} µs, p99 {p99:.1} µs, max {max:.0} µs"),
    }
}
