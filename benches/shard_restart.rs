//! Restart time of a shard (kill -9 → `/readyz` 200) holding 10,000 tokens
//! with 24 h of data in a real Redis Cluster (3 masters + 3 replicas).
//!
//! Fill: `BENCH_SWAPS` generated swaps (default 2,000,000; 10,000 tokens with
//! the generator's Zipf popularity, 100,000 wallets, 1% duplicates) with block
//! times spread evenly over the last 24 h, applied to a `WindowEngine` in
//! batches of 5,000 and each batch's effect persisted with
//! `RedisStore::persist`, exactly as the shard pipeline does. Batch k is
//! persisted as source offsets k..=k (one synthetic offset per batch); the mock
//! Kafka partition gets as many messages, so the restarted shard resumes at its
//! partition's end (lag 0) and reads nothing.
//!
//! Then the release `swapstats shard` binary is spawned `BENCH_RESTARTS` times
//! (default 5), timed from spawn until `GET /readyz` answers 200 (polled every
//! 10 ms), and killed with SIGKILL. Each restart also reports the CPU the shard
//! (`/proc/<pid>/stat`: user + system, and its page faults) and the Redis
//! nodes (`INFO cpu`) spent until ready, and the shard's RSS then. On this
//! sandboxed VM a page fault costs ~4–13 µs, so the shard's system time (its
//! fresh memory) is a large part of a restart. `store.load` alone is also
//! timed in-process.
//!
//! `BENCH_RESTART_PAUSE_MS` waits that long between restarts (default 0). This
//! Firecracker VM boots with `page_reporting`: the guest hands freed memory
//! back to the host after a few seconds, and touching it again costs ~3× the
//! system time per fault. Back to back, a restart reuses the killed shard's
//! pages (~4 µs a fault). After a 20 s pause, restarts have paid the dearer
//! faults on some days (~9–15 µs: 2.7–4.4 s of system time for ~300k faults,
//! every restart of one run) and not on others (0.8–1.0 s for the same
//! faults, every restart of another): it depends on the host.
//!
//! A/B: `BENCH_BINARIES=/path/a,/path/b` spawns those binaries in turn instead
//! (restart n runs binary n mod count) against the same data, and reports each
//! one's times: two builds compared within one run, on the same noise.
//!
//! Run: `cargo bench --bench shard_restart`

mod common;
#[path = "../tests/support/kafka.rs"]
#[allow(dead_code)]
mod kafka;
#[path = "../tests/support/redis_cluster.rs"]
#[allow(dead_code)]
mod redis_cluster;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use swapstats::config::{GeneratorSettings, Settings, StoreKind, StoreSettings};
use swapstats::shard::engine_config;
use swapstats::source::generator::token_name;
use swapstats::source::SwapGenerator;
use swapstats::store::{PersistBatch, PersistOutcome, RedisStore, RedisStoreOptions, Store};
use swapstats::swap::{encode_swap, Swap};
use swapstats::window::WindowEngine;

const TOKENS: u32 = 10_000;
const BATCH: usize = 5_000;
const HOUR_MS: i64 = 3_600_000;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A minimal HTTP/1.0 GET: (status, body), or `None` if nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

fn swap_template(swaps: &[Swap]) -> Swap {
    swaps.last().cloned().expect("at least one swap")
}

/// One swap for every token the Zipf stream never picked, so the shard holds
/// all `TOKENS` tokens (block times spread over the same 24 h).
fn coverage_swaps(seen: &HashSet<String>, template: &Swap, from: i64, to: i64) -> Vec<Swap> {
    let missing: Vec<String> = (0..TOKENS as usize)
        .map(token_name)
        .filter(|t| !seen.contains(t))
        .collect();
    let n = missing.len().max(1) as i64;
    missing
        .into_iter()
        .enumerate()
        .map(|(k, token)| {
            let at = from + (to - from) * k as i64 / n;
            Swap {
                event_id: format!("cover-{token}"),
                token,
                executed_at_ms: at,
                created_at_ms: Some(at),
                ..template.clone()
            }
        })
        .collect()
}

fn median(sorted: &[f64]) -> f64 {
    sorted[sorted.len() / 2]
}

/// Resident memory of the process `pid`, from `/proc/<pid>/status`.
fn process_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// `pick` of each restart, sorted.
fn sorted_by(rows: &[&Restart], pick: impl Fn(&Restart) -> f64) -> Vec<f64> {
    let mut values: Vec<f64> = rows.iter().map(|r| pick(r)).collect();
    values.sort_by(f64::total_cmp);
    values
}

/// Median of `pick` over the restarts.
fn median_of(rows: &[&Restart], pick: impl Fn(&Restart) -> f64) -> f64 {
    median(&sorted_by(rows, pick))
}

/// Nodes forking a background save (an AOF rewrite, with `appendonly yes`
/// after the fill's writes, or an RDB save) right now: its child competes
/// with the restart for the 2 cores, and its CPU is not in `INFO cpu`'s
/// main-process figures.
fn background_saves(cluster: &redis_cluster::RedisCluster) -> usize {
    cluster
        .live_ports()
        .into_iter()
        .filter(|&port| {
            let info: String = redis_cluster::query(port, redis::cmd("INFO").arg("persistence"))
                .unwrap_or_default();
            info.lines().any(|l| {
                matches!(
                    l.trim(),
                    "aof_rewrite_in_progress:1"
                        | "aof_rewrite_scheduled:1"
                        | "rdb_bgsave_in_progress:1"
                )
            })
        })
        .count()
}

/// What one restart took: wall time to ready, the CPU the shard and the Redis
/// nodes spent meanwhile (on 2 cores the sum bounds how fast it can be, and it
/// is far less noisy than the wall time), and what `/readyz` and the log said.
struct Restart {
    ready_s: f64,
    shard_cpu_s: f64,
    /// The kernel's part of `shard_cpu_s`: mostly page faults of fresh memory.
    shard_system_s: f64,
    /// Page faults the shard took until ready.
    shard_faults: u64,
    redis_cpu_s: f64,
    /// The shard's resident memory when ready.
    rss_mib: f64,
    tokens: u64,
    lag: serde_json::Value,
    applied_offset: serde_json::Value,
    /// `elapsed_ms` of the shard's "loaded partition from redis" log line.
    loaded_ms: Option<u64>,
    /// `elapsed_ms` of its "restored" log line.
    restored_ms: Option<u64>,
    /// [`background_saves`] at spawn and at ready.
    background_saves: (usize, usize),
}

/// Spawns the shard and waits for `/readyz` 200.
fn restart_once(
    binary: &str,
    bootstrap: &str,
    seeds: &str,
    log_path: &std::path::Path,
    cluster: &redis_cluster::RedisCluster,
) -> Restart {
    let redis_before = cluster.cpu_seconds().1;
    let saves_at_spawn = background_saves(cluster);
    let port = free_port();
    let log = std::fs::File::create(log_path).expect("log file");
    let started = Instant::now();
    let mut child = Command::new(binary)
        .arg("shard")
        .env("SWAPSTATS__KAFKA__BROKERS", bootstrap)
        .env("SWAPSTATS__SHARD__PARTITIONS", "1")
        .env("SWAPSTATS__SHARD__PARTITION", "0")
        .env("SWAPSTATS__STORE__KIND", "redis-cluster")
        .env("SWAPSTATS__STORE__REDIS_URLS", seeds)
        .env("SWAPSTATS__HTTP__ADDR", format!("127.0.0.1:{port}"))
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info,rdkafka=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn swapstats shard");
    let deadline = started + Duration::from_secs(120);
    let (elapsed, body) = loop {
        if let Some((200, body)) = http_get(port, "/readyz") {
            break (started.elapsed(), body);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            panic!("shard exited with {status} before ready:\n{log}");
        }
        assert!(Instant::now() < deadline, "shard not ready within 120 s");
        std::thread::sleep(Duration::from_millis(10));
    };
    let stat = common::process_stat(child.id());
    let shard_cpu_s = stat.cpu_ticks() as f64 / 100.0;
    let rss_mib = process_rss_mib(child.id());
    let redis_cpu_s = cluster.cpu_seconds().1 - redis_before;
    let saves_at_ready = background_saves(cluster);
    child.kill().expect("kill -9");
    let _ = child.wait();
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&body).expect("readyz JSON");
    let partition = &json["partitions"][0];
    Restart {
        ready_s: elapsed.as_secs_f64(),
        shard_cpu_s,
        shard_system_s: stat.system_ticks as f64 / 100.0,
        shard_faults: stat.minor_faults,
        redis_cpu_s,
        rss_mib,
        tokens: partition["tokens"].as_u64().unwrap_or(0),
        lag: partition["lag"].clone(),
        applied_offset: partition["applied_offset"].clone(),
        loaded_ms: logged_ms(&log, "loaded partition from redis"),
        restored_ms: logged_ms(&log, "restored"),
        background_saves: (saves_at_spawn, saves_at_ready),
    }
}

/// `elapsed_ms=N` of the first log line containing `marker`.
fn logged_ms(log: &str, marker: &str) -> Option<u64> {
    log.lines().find(|l| l.contains(marker)).and_then(|l| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix("elapsed_ms="))
            .and_then(|v| v.parse().ok())
    })
}

fn main() {
    let swaps_total = common::env_usize("BENCH_SWAPS").unwrap_or(2_000_000);
    let restarts = common::env_usize("BENCH_RESTARTS").unwrap_or(5);
    let pause =
        Duration::from_millis(common::env_usize("BENCH_RESTART_PAUSE_MS").unwrap_or(0) as u64);
    let binaries: Vec<String> = std::env::var("BENCH_BINARIES")
        .ok()
        .map(|list| list.split(',').map(str::to_string).collect())
        .unwrap_or_else(|| vec![env!("CARGO_BIN_EXE_swapstats").to_string()]);
    eprintln!("starting Redis Cluster (3 masters + 3 replicas) and mock Kafka ...");
    let cluster = redis_cluster::RedisCluster::start();
    let mock = kafka::MockKafka::start(1);
    let seeds = cluster.seed_urls().join(",");
    let settings = Settings::defaults();
    let (mem_empty, _) = cluster.used_memory();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let store = runtime.block_on(async {
        RedisStore::connect_with(
            &StoreSettings {
                kind: StoreKind::RedisCluster,
                redis_urls: cluster.seed_urls(),
            },
            RedisStoreOptions::from_ingest(&settings.ingest),
        )
        .await
        .expect("connect redis cluster")
    });

    // Fill: 24 h of swaps, applied and persisted batch by batch.
    let mut generator = SwapGenerator::new(&GeneratorSettings {
        rate: 0,
        tokens: TOKENS,
        wallets: 100_000,
        dup_rate: 0.01,
        disorder: Duration::ZERO,
        seed: 11,
        count: 0,
    });
    let mut engine = WindowEngine::new(engine_config(&settings));
    let now = swapstats::now_ms();
    // Block times from 23 h 50 min ago to 5 s ago (inside the 24 h dedup horizon).
    let (from, to) = (now - 24 * HOUR_MS + 600_000, now - 5_000);
    let step = (to - from) as f64 / swaps_total as f64;
    let fill_started = Instant::now();
    let (mut engine_time, mut persist_time) = (Duration::ZERO, Duration::ZERO);
    let (mut applied, mut duplicates, mut late, mut batches) = (0u64, 0u64, 0u64, 0i64);
    let mut swaps: Vec<Swap> = Vec::with_capacity(BATCH);
    let mut i = 0usize;
    let mut seen: HashSet<String> = HashSet::new();
    let mut coverage: Vec<Swap> = Vec::new();
    while i < swaps_total || !coverage.is_empty() {
        swaps.clear();
        while swaps.len() < BATCH && i < swaps_total {
            let swap = generator.next_swap(from + (i as f64 * step) as i64);
            seen.insert(swap.token.clone());
            swaps.push(swap);
            i += 1;
            if i == swaps_total {
                coverage = coverage_swaps(&seen, &swap_template(&swaps), from, to);
            }
        }
        while swaps.len() < BATCH {
            match coverage.pop() {
                Some(swap) => swaps.push(swap),
                None => break,
            }
        }
        let batch_now = swapstats::now_ms();
        let t = Instant::now();
        let (effect, counts) = engine.apply_batch(&swaps, batch_now);
        engine_time += t.elapsed();
        applied += counts.applied;
        duplicates += counts.duplicates;
        late += counts.late;
        let batch = PersistBatch {
            partition: 0,
            first_offset: batches,
            last_offset: batches,
            follows: batches - 1,
            effect: &effect,
            now_ms: batch_now,
            lane: batches as usize,
        };
        let t = Instant::now();
        let outcome = runtime
            .block_on(store.persist(&batch))
            .expect("persist batch");
        persist_time += t.elapsed();
        assert_eq!(outcome, PersistOutcome::Applied);
        batches += 1;
        if batches % 100 == 0 {
            eprintln!(
                "fill: {i}/{swaps_total} swaps, {batches} batches, {:.0} s",
                fill_started.elapsed().as_secs_f64()
            );
        }
    }
    let fill_time = fill_started.elapsed();
    let covered = TOKENS as usize - seen.len();
    let engine_tokens = engine.token_count();
    drop(engine);
    // The partition's end offset = the number of batches: the shard resumes at it.
    let filler: Vec<(String, Vec<u8>)> = (0..batches)
        .map(|_| {
            let swap = generator.next_swap(swapstats::now_ms());
            (swap.token.clone(), encode_swap(&swap))
        })
        .collect();
    mock.produce_raw("swaps", 0, &filler);
    let end = mock.end_offset("swaps", 0);
    assert_eq!(end, batches, "partition end = applied offset + 1");
    // Let replicas catch up and memory settle before measuring.
    std::thread::sleep(Duration::from_secs(2));
    let (mem_masters, mem_all) = cluster.used_memory();

    // store.load alone, in-process.
    let mut load_times = Vec::new();
    let mut loaded = (0usize, 0usize, 0usize);
    for _ in 0..3 {
        let t = Instant::now();
        let restored = runtime
            .block_on(store.load(0, swapstats::now_ms()))
            .expect("load");
        load_times.push(t.elapsed().as_secs_f64());
        loaded = (
            restored.effect.buckets.len(),
            restored.effect.wallets.len(),
            restored.effect.events.len(),
        );
        assert_eq!(restored.applied_offset, Some(batches - 1));
    }
    let t = Instant::now();
    let restored = runtime
        .block_on(store.load(0, swapstats::now_ms()))
        .expect("load");
    let mut engine = WindowEngine::new(engine_config(&settings));
    let load_only = t.elapsed();
    engine.restore(&restored.effect);
    let restore_time = t.elapsed() - load_only;
    drop(engine);
    drop(restored);
    load_times.sort_by(f64::total_cmp);

    // Restarts of the real binary.
    let log_path =
        std::env::temp_dir().join(format!("swapstats-restart-{}.log", std::process::id()));
    let mut rows: Vec<Restart> = Vec::with_capacity(restarts);
    for n in 0..restarts {
        if n > 0 {
            std::thread::sleep(pause);
        }
        let binary = &binaries[n % binaries.len()];
        let row = restart_once(binary, &mock.bootstrap, &seeds, &log_path, &cluster);
        eprintln!(
            "restart {}/{restarts}: ready after {:.0} ms, tokens {}, lag {}, applied {} (log: load {:?} ms, restore done {:?} ms); Redis nodes in a background save at spawn/ready: {}/{}",
            n + 1,
            row.ready_s * 1000.0,
            row.tokens,
            row.lag,
            row.applied_offset,
            row.loaded_ms,
            row.restored_ms,
            row.background_saves.0,
            row.background_saves.1,
        );
        rows.push(row);
    }
    let _ = std::fs::remove_file(&log_path);

    println!();
    println!("shard_restart — release `swapstats shard`, Redis Cluster 3 masters + 3 replicas, mock Kafka, 2 cores");
    println!(
        "data: {swaps_total} swaps over 24 h ({:.1} swaps/s), {TOKENS} tokens (Zipf 1.1), 100,000 wallets, 1% duplicates",
        swaps_total as f64 / 86_400.0
    );
    println!(
        "fill: {batches} batches of ≤{BATCH} in {:.1} s (engine {:.1} s, persist {:.1} s = {:.1} ms/batch); applied {applied}, duplicates {duplicates}, late {late}; engine held {engine_tokens} tokens ({covered} of them got one extra swap because the Zipf stream never picked them)",
        fill_time.as_secs_f64(),
        engine_time.as_secs_f64(),
        persist_time.as_secs_f64(),
        persist_time.as_secs_f64() * 1000.0 / batches as f64
    );
    println!(
        "redis used_memory: masters {:.1} MiB ({:.1} MiB before fill) → {:.0} bytes per token, {:.0} bytes per swap (data only); all 6 nodes {:.1} MiB",
        mem_masters as f64 / 1048576.0,
        mem_empty as f64 / 1048576.0,
        (mem_masters - mem_empty.min(mem_masters)) as f64 / f64::from(TOKENS),
        (mem_masters - mem_empty.min(mem_masters)) as f64 / swaps_total as f64,
        mem_all as f64 / 1048576.0
    );
    println!(
        "in-process store.load: min {:.0} ms, median {:.0} ms, max {:.0} ms ({} bucket deltas, {} wallet marks, {} events); engine.restore of it {:.0} ms",
        load_times[0] * 1000.0,
        median(&load_times) * 1000.0,
        load_times[load_times.len() - 1] * 1000.0,
        loaded.0,
        loaded.1,
        loaded.2,
        restore_time.as_secs_f64() * 1000.0
    );
    println!();
    println!(
        "{:<10} {:>12} {:>15} {:>14} {:>16} {:>10} {:>11} {:>16} {:>10} {:>8} {:>9}",
        "restart",
        "ready (ms)",
        "log: load (ms)",
        "log: restored",
        "shard CPU (ms)",
        "of it sys",
        "faults (k)",
        "redis CPU (ms)",
        "RSS (MiB)",
        "tokens",
        "bg saves"
    );
    for (n, row) in rows.iter().enumerate() {
        let show = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        println!(
            "{:<10} {:>12.0} {:>15} {:>14} {:>16.0} {:>10.0} {:>11} {:>16.0} {:>10.0} {:>8} {:>9}",
            n + 1,
            row.ready_s * 1000.0,
            show(row.loaded_ms),
            show(row.restored_ms),
            row.shard_cpu_s * 1000.0,
            row.shard_system_s * 1000.0,
            row.shard_faults / 1000,
            row.redis_cpu_s * 1000.0,
            row.rss_mib,
            row.tokens,
            format!("{}/{}", row.background_saves.0, row.background_saves.1)
        );
    }
    let all: Vec<&Restart> = rows.iter().collect();
    println!(
        "CPU to ready (median): shard {:.0} ms, redis nodes {:.0} ms",
        median_of(&all, |r| r.shard_cpu_s) * 1000.0,
        median_of(&all, |r| r.redis_cpu_s) * 1000.0
    );
    let ready = sorted_by(&all, |r| r.ready_s);
    println!(
        "kill -9 → ready: min {:.0} ms, median {:.0} ms, max {:.0} ms (target < 3000 ms)",
        ready[0] * 1000.0,
        median(&ready) * 1000.0,
        ready[ready.len() - 1] * 1000.0
    );
    if binaries.len() > 1 {
        for (b, binary) in binaries.iter().enumerate() {
            let own: Vec<&Restart> = rows.iter().skip(b).step_by(binaries.len()).collect();
            let ready = sorted_by(&own, |r| r.ready_s);
            if let (Some(first), Some(last)) = (ready.first(), ready.last()) {
                println!(
                    "  {binary}: {} restarts, min {:.0} ms, median {:.0} ms, max {:.0} ms; shard CPU median {:.0} ms",
                    own.len(),
                    first * 1000.0,
                    median(&ready) * 1000.0,
                    last * 1000.0,
                    median_of(&own, |r| r.shard_cpu_s) * 1000.0
                );
            }
        }
    }
    drop(store);
    drop(runtime);
    drop(mock);
    drop(cluster);
}
