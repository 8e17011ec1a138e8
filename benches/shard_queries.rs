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
//! Run: `cargo bench --bench shard_queries` (about 30 s once built).

#[path = "common/mod.rs"]
mod common;

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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
