//! Window engine throughput and query latency.
//!
//! - `apply/*`: 1 M pre-decoded arrivals (1000 tokens Zipf(1.0), 10k wallets
//!   Zipf(0.9), 1% duplicates, 1000 swaps/s of block time, 0–2 s disorder with 1%
//!   up to a minute) into a fresh engine, one swap at a time and in batches of
//!   500 and of 20,000 (`WindowEngine::apply_batch`).
//! - `apply/steady_*`: the same stream continued, 1 M swaps at a time, into one
//!   engine that already holds 3 h of it (dedup horizon 10 min): a long-running
//!   shard's apply, where every mark added is also trimmed later and the
//!   working set no longer fits in cache (about twice the fresh rows' time per
//!   swap). Applied as `ShardCore::apply_batch` applies a 50,000-swap batch
//!   (`shard.batch_max_swaps`): admitted in chunks of `ADMIT_CHUNK_SWAPS`,
//!   grouped by token, applied `APPLY_CHUNK_SWAPS` per part, expiry after
//!   each part (`EXPIRE_CHUNK_EVENTS` ids or `EXPIRE_CHUNK_TOKENS` tokens
//!   per hold). After it, printed lines: how long each `expire` held the
//!   engine when run after every part, and once after 5 M swaps; how long
//!   each admission chunk and each part's apply held it (a query waits out at
//!   most one hold).
//! - `stats/*`, `top/*`: one full day built first (300 swaps/s over 1000 tokens
//!   Zipf(1.3), the busiest ~85 swaps/s), then one token's full stats (4 windows,
//!   current + previous, uniques) for a quiet token (one swap), the 600th (~120
//!   wallets in 2 h, around `counters_min_wallets`: it reached counters earlier
//!   in the day), the one with the most wallets in 2 h among those that never
//!   reached counters (unique counts by visiting wallets: the dearest such
//!   query), the 50th and the busiest (unique counts from counters).
//!
//! - `restore/*`: a restart's restore alone (`WindowEngine::restore`) of the
//!   effects of 1 M swaps over 24 h, 10,000 tokens and 100,000 wallets.
//!
//! - `decode/*`: the shard's decode step alone (JSON → validated `Swap`) on
//!   100,000 payloads of the built-in generator as `swapstats produce` sends
//!   them (RFC 3339 times, string ids); and the same with a producer's extra
//!   fields (a nested object, an escaped string, a negative number) in front.
//!
//! Run: `cargo bench --bench engine` (about three minutes, plus ~30 s to build
//! the day and ~20 s to warm the steady engine).

#[path = "common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{default_config, Stream, HOUR, SECOND, T0};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use swapstats::shard::{
    ADMIT_CHUNK_SWAPS, APPLY_CHUNK_SWAPS, EXPIRE_CHUNK_EVENTS, EXPIRE_CHUNK_TOKENS,
};
use swapstats::swap::{Side, Swap};
use swapstats::window::{
    chunk_ranges, AdmittedBatch, BatchEffect, EngineConfig, RankBy, WindowEngine,
};

const APPLY_SWAPS: usize = 1_000_000;

/// `swaps` in batches of `size`, each with its apply time: the latest arrival
/// clock in it (what a shard's batch is stamped with).
fn batches<'a>(
    swaps: &'a [Swap],
    clocks: &'a [i64],
    size: usize,
) -> impl Iterator<Item = (&'a [Swap], i64)> + 'a {
    swaps
        .chunks(size)
        .zip(clocks.chunks(size))
        .map(|(chunk, clocks)| (chunk, clocks.iter().copied().max().unwrap_or(T0)))
}

fn bench_apply(c: &mut Criterion) {
    let mut stream = Stream::new(1, 1000, 1.0, 10_000, 1000.0, 0.01);
    let (swaps, clocks): (Vec<Swap>, Vec<i64>) =
        (0..APPLY_SWAPS).map(|_| stream.next_swap()).unzip();
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(APPLY_SWAPS as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(12));
    group.bench_function("one_by_one_1M", |b| {
        b.iter_batched(
            || WindowEngine::new(default_config()),
            |mut engine| {
                for (swap, &now) in swaps.iter().zip(&clocks) {
                    black_box(engine.apply(swap, now));
                }
                engine
            },
            BatchSize::PerIteration,
        )
    });
    for size in [500, 20_000] {
        group.bench_function(format!("batches_of_{size}_with_expire_1M"), |b| {
            b.iter_batched(
                || WindowEngine::new(default_config()),
                |mut engine| {
                    for (chunk, now) in batches(&swaps, &clocks, size) {
                        black_box(engine.apply_batch(chunk, now));
                        engine.expire(now);
                    }
                    engine
                },
                BatchSize::PerIteration,
            )
        });
    }
    // Where the time goes: the same stream without wallets (no unique-count
    // bookkeeping), and re-applied as pure duplicates (hash + dedup probe only).
    let anonymous: Vec<Swap> = swaps
        .iter()
        .map(|s| Swap {
            wallet: None,
            ..s.clone()
        })
        .collect();
    group.bench_function("one_by_one_without_wallets_1M", |b| {
        b.iter_batched(
            || WindowEngine::new(default_config()),
            |mut engine| {
                for (swap, &now) in anonymous.iter().zip(&clocks) {
                    black_box(engine.apply(swap, now));
                }
                engine
            },
            BatchSize::PerIteration,
        )
    });
    bench_apply_steady(&mut group, &mut stream);
    let mut filled = WindowEngine::new(default_config());
    for (swap, &now) in swaps.iter().zip(&clocks) {
        filled.apply(swap, now);
    }
    group.bench_function("all_duplicates_1M", |b| {
        b.iter(|| {
            for (swap, &now) in swaps.iter().zip(&clocks) {
                black_box(filled.apply(swap, now));
            }
        })
    });
    group.finish();
}

/// The shard's batch size (`shard.batch_max_swaps`), for the steady rows.
const SHARD_BATCH: usize = 50_000;

/// How long each hold of a shard's batch took, in ms.
#[derive(Default)]
struct Holds {
    admissions: Vec<f64>,
    parts: Vec<f64>,
    expiries: Vec<f64>,
}

/// Applies `swaps` in batches of [`SHARD_BATCH`] as `ShardCore::apply_batch`
/// does, timing each hold of the engine into `holds`.
fn apply_as_shard(engine: &mut WindowEngine, swaps: &[Swap], clocks: &[i64], holds: &mut Holds) {
    let ms = |since: Instant| since.elapsed().as_secs_f64() * 1000.0;
    for (batch, now) in batches(swaps, clocks, SHARD_BATCH) {
        let mut admitted = AdmittedBatch::default();
        for chunk in chunk_ranges(batch.len(), ADMIT_CHUNK_SWAPS) {
            let started = Instant::now();
            engine.admit_batch(&mut admitted, batch, chunk, now);
            holds.admissions.push(ms(started));
        }
        admitted.group_by_token();
        for part in chunk_ranges(admitted.len(), APPLY_CHUNK_SWAPS) {
            let started = Instant::now();
            black_box(engine.apply_admitted(batch, &admitted, part, now));
            holds.parts.push(ms(started));
            loop {
                let started = Instant::now();
                let more = engine.expire_some(now, EXPIRE_CHUNK_EVENTS, EXPIRE_CHUNK_TOKENS);
                holds.expiries.push(ms(started));
                if !more {
                    break;
                }
            }
        }
    }
}

/// The same stream continued into an engine that already holds
/// `STEADY_WARM_HOURS` of it (more than the second level's 2 h span), in
/// 50,000-swap batches applied as a long-running shard applies them: marks
/// are trimmed as well as added, and the records and counters are out of
/// cache, which the fresh rows above never reach. Dedup horizon 10 minutes
/// (600k ids, like the fresh rows' 1 M) so the warm-up does not hold hours of
/// event ids.
fn bench_apply_steady(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    stream: &mut Stream,
) {
    const STEADY_WARM_HOURS: i64 = 3;
    let apply = |engine: &mut WindowEngine, swaps: &[Swap], clocks: &[i64]| {
        apply_as_shard(engine, swaps, clocks, &mut Holds::default());
    };
    let mut next_chunk =
        || -> (Vec<Swap>, Vec<i64>) { (0..APPLY_SWAPS).map(|_| stream.next_swap()).unzip() };
    // Warmed up on first use, so a run that filters this row out skips it.
    let mut warm: Option<WindowEngine> = None;
    group.bench_function("steady_batches_of_50000_in_parts_1M", |b| {
        let engine = warm.get_or_insert_with(|| {
            let mut engine = WindowEngine::new(EngineConfig {
                dedup_horizon_ms: 10 * 60 * SECOND,
                ..default_config()
            });
            let mut clock = T0;
            while clock < T0 + STEADY_WARM_HOURS * HOUR {
                let (swaps, clocks) = next_chunk();
                apply(&mut engine, &swaps, &clocks);
                clock = clocks.last().copied().unwrap_or(clock);
            }
            engine
        });
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let (swaps, clocks) = next_chunk();
                let started = Instant::now();
                apply(engine, &swaps, &clocks);
                spent += started.elapsed();
            }
            spent
        })
    });
    if let Some(engine) = warm.as_mut() {
        report_engine_holds(engine, &mut next_chunk);
    }
}

/// How long `expire` holds the engine in a long-running shard: after every
/// part of a batch (the shard since the expiry moved into `apply_batch`), or
/// once after 5 M swaps: what the shard's 10 s expiry tick alone met at
/// 500k swaps/s. Also each admission chunk and each part's apply: a query
/// waits out at most one hold. Printed, not criterion rows: the longest holds
/// are the point.
fn report_engine_holds(
    engine: &mut WindowEngine,
    next_chunk: &mut impl FnMut() -> (Vec<Swap>, Vec<i64>),
) {
    let ms = |since: Instant| since.elapsed().as_secs_f64() * 1000.0;
    let mut holds = Holds::default();
    let (swaps, clocks) = next_chunk();
    apply_as_shard(engine, &swaps, &clocks, &mut holds);
    let mut now = T0;
    for _ in 0..5 {
        let (swaps, clocks) = next_chunk();
        for (chunk, at) in batches(&swaps, &clocks, SHARD_BATCH) {
            now = at;
            black_box(engine.apply_batch(chunk, now));
        }
    }
    let started = Instant::now();
    engine.expire(now);
    let once = ms(started);
    println!(
        "expire holds, steady engine: after each {APPLY_CHUNK_SWAPS}-swap part, {EXPIRE_CHUNK_EVENTS} ids or {EXPIRE_CHUNK_TOKENS} tokens each {} ({:.3} ms per 1,000 swaps); once after 5 M swaps {once:.1} ms",
        common::latency_summary(&mut holds.expiries.clone()),
        holds.expiries.iter().sum::<f64>() / (swaps.len() as f64 / 1000.0),
    );
    println!(
        "apply holds, steady engine: each {ADMIT_CHUNK_SWAPS}-swap admission {}; each {APPLY_CHUNK_SWAPS}-swap part {}",
        common::latency_summary(&mut holds.admissions),
        common::latency_summary(&mut holds.parts),
    );
}

/// One day of swaps at 300/s; dedup horizon cut to 10 minutes (with expire every
/// 10 s) so the bench does not hold 26 M event ids. Stats do not depend on it.
fn build_day() -> (WindowEngine, Stream, HourlyWallets, i64) {
    const RATE: f64 = 300.0;
    let started = Instant::now();
    let config = EngineConfig {
        dedup_horizon_ms: 10 * 60 * SECOND,
        ..default_config()
    };
    let mut engine = WindowEngine::new(config);
    let mut stream = Stream::new(7, 1000, 1.3, 10_000, RATE, 0.0);
    let mut now = T0;
    let mut next_expire = T0;
    // Hours of data to build (24 unless overridden, e.g. for profiling).
    let hours: i64 = std::env::var("ENGINE_BENCH_DAY_HOURS")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(24);
    let mut hourly = HourlyWallets::new();
    while now < T0 + hours * HOUR {
        let (swap, clock) = stream.next_swap();
        now = now.max(clock);
        if let Some(wallet) = &swap.wallet {
            let hour = ((swap.executed_at_ms - T0).max(0) / HOUR).min(hours - 1) as usize;
            hourly
                .entry(swap.token.to_string())
                .or_insert_with(|| vec![HashSet::new(); hours as usize])[hour]
                .insert(xxhash_rust::xxh3::xxh3_64(wallet.as_bytes()));
        }
        engine.apply(&swap, now);
        if now >= next_expire {
            engine.expire(now);
            next_expire = now + 10 * SECOND;
        }
    }
    let quiet = Swap {
        event_id: "quiet-1".into(),
        token: "QUIET".into(),
        wallet: Some("quiet-wallet".into()),
        side: Side::Buy,
        amount: 10.0,
        usd: 5.0,
        rate: 0.5,
        created_at_ms: None,
        executed_at_ms: now - 10 * 60 * SECOND,
    };
    engine.apply(&quiet, now);
    engine.expire(now);
    eprintln!(
        "built one day: {} tokens, {} wallets, busiest share {:.1}% ({:.0} swaps/s), in {:.1?}",
        engine.token_count(),
        engine.wallet_count(),
        100.0 * stream.top_token_share(),
        RATE * stream.top_token_share(),
        started.elapsed()
    );
    (engine, stream, hourly, now + SECOND)
}

/// The day, the names of the busiest and the 50th token, and the query clock.
struct Day {
    engine: WindowEngine,
    busiest: String,
    middling: String,
    /// Few enough wallets per level that unique counts visit them.
    thin: String,
    /// The token with the most 2 h wallets still below
    /// `counters_min_wallets`: the dearest query that visits wallets.
    below_counters: String,
    now: i64,
}

fn day() -> Day {
    let (engine, stream, hourly, now) = build_day();
    let busiest = stream.token_name(0).to_string();
    let middling = stream.token_name(50).to_string();
    let thin = stream.token_name(600).to_string();
    let (below_counters, recent) = below_counters(&hourly);
    eprintln!("below_counters: {recent} wallets in the last 2 h");
    for (name, token) in [
        ("quiet", "QUIET"),
        ("rank_600", thin.as_str()),
        ("below_counters", below_counters.as_str()),
        ("rank_50", middling.as_str()),
        ("busiest", busiest.as_str()),
    ] {
        let stats = engine.stats(token, now).expect("token is live");
        let day = stats.windows.get("24h").expect("24h window");
        eprintln!(
            "{name}: 24h txns {} unique wallets {} (1h unique wallets {}, 5m txns {})",
            day.current.txns,
            day.current.unique_wallets,
            stats
                .windows
                .get("1h")
                .map_or(0, |w| w.current.unique_wallets),
            stats.windows.get("5m").map_or(0, |w| w.current.txns)
        );
    }
    Day {
        engine,
        busiest,
        middling,
        thin,
        below_counters,
        now,
    }
}

/// Per token, the wallets of each hour of the day (their `xxh3_64`).
type HourlyWallets = HashMap<String, Vec<HashSet<u64>>>;

/// The token with the most wallets in the day's last 2 h (what its second
/// level holds) among those that never had `counters_min_wallets` in any two
/// consecutive hours (a level keeps its counters until it shrinks well below
/// the threshold), so its unique counts visit its wallets: the dearest such
/// query. Returns the token and its last-2-h wallet count.
fn below_counters(hourly: &HourlyWallets) -> (String, usize) {
    // A little below the threshold: the second level holds a sliding 2 h, not
    // two whole hours.
    let limit = swapstats::window::EngineTuning::default().counters_min_wallets * 15 / 16;
    let two_hours = |hours: &[HashSet<u64>]| hours[0].union(&hours[1]).count();
    hourly
        .iter()
        .filter(|(_, hours)| hours.windows(2).all(|pair| two_hours(pair) < limit))
        .map(|(token, hours)| (two_hours(&hours[hours.len() - 2..]), token))
        .max()
        .map(|(n, token)| (token.clone(), n))
        .expect("some token never had counters_min_wallets wallets in 2 h")
}

fn bench_queries(c: &mut Criterion) {
    // Built on first use, so a filter that skips these benches skips the build.
    let day_cell = std::cell::OnceCell::new();
    let mut group = c.benchmark_group("stats");
    group.sample_size(30);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("quiet_token", |b| {
        let d = day_cell.get_or_init(day);
        b.iter(|| black_box(d.engine.stats(black_box("QUIET"), d.now)))
    });
    group.bench_function("rank_600_token", |b| {
        let d = day_cell.get_or_init(day);
        b.iter(|| black_box(d.engine.stats(black_box(&d.thin), d.now)))
    });
    group.bench_function("below_counters_token", |b| {
        let d = day_cell.get_or_init(day);
        b.iter(|| black_box(d.engine.stats(black_box(&d.below_counters), d.now)))
    });
    group.bench_function("rank_50_token", |b| {
        let d = day_cell.get_or_init(day);
        b.iter(|| black_box(d.engine.stats(black_box(&d.middling), d.now)))
    });
    group.bench_function("busiest_token", |b| {
        let d = day_cell.get_or_init(day);
        b.iter(|| black_box(d.engine.stats(black_box(&d.busiest), d.now)))
    });
    group.bench_function("busiest_token_clock_over_last_minute", |b| {
        let d = day_cell.get_or_init(day);
        // Query times spread over the last minute (different second/minute edges).
        let mut i: i64 = 0;
        b.iter(|| {
            i += 1;
            let t = d.now - 60 * SECOND + (i * 137) % (60 * SECOND);
            black_box(d.engine.stats(black_box(&d.busiest), t))
        })
    });
    group.finish();
    let mut group = c.benchmark_group("top");
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("1000_tokens_24h_by_volume_top_10", |b| {
        let d = day_cell.get_or_init(day);
        b.iter(|| black_box(d.engine.top("24h", RankBy::VolumeUsd, 10, d.now)))
    });
    group.bench_function("1000_tokens_5m_by_unique_wallets_top_10", |b| {
        let d = day_cell.get_or_init(day);
        b.iter(|| black_box(d.engine.top("5m", RankBy::UniqueWallets, 10, d.now)))
    });
    group.finish();
}

const RESTORE_SWAPS: usize = 1_000_000;

/// A restart's restore alone: the effects of 1 M swaps spread over 24 h (10,000
/// tokens Zipf(1.1), 100,000 wallets, as `shard_restart`), applied in batches
/// of 20,000 and concatenated, folded into a fresh engine.
fn bench_restore(c: &mut Criterion) {
    let rate = RESTORE_SWAPS as f64 / (24.0 * 3600.0);
    let mut stream = Stream::new(3, 10_000, 1.1, 100_000, rate, 0.01);
    let (swaps, clocks): (Vec<Swap>, Vec<i64>) =
        (0..RESTORE_SWAPS).map(|_| stream.next_swap()).unzip();
    let mut engine = WindowEngine::new(default_config());
    let mut effect = BatchEffect::default();
    for (chunk, now) in batches(&swaps, &clocks, 20_000) {
        let (batch, _) = engine.apply_batch(chunk, now);
        effect.buckets.extend(batch.buckets);
        effect.wallets.extend(batch.wallets);
        effect.events.extend(batch.events);
    }
    drop(engine);
    let mut group = c.benchmark_group("restore");
    group.throughput(Throughput::Elements(RESTORE_SWAPS as u64));
    group.sample_size(10);
    group.bench_function("effects_of_1M_swaps_100k_wallets", |b| {
        b.iter_batched(
            || WindowEngine::new(default_config()),
            |mut engine| {
                engine.restore(&effect);
                engine
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

const DECODE_SWAPS: usize = 100_000;

fn bench_decode(c: &mut Criterion) {
    let mut generator = swapstats::source::SwapGenerator::new(&common::shard_stream());
    let now = swapstats::now_ms();
    let payloads: Vec<Vec<u8>> = (0..DECODE_SWAPS)
        .map(|_| swapstats::swap::encode_swap(&generator.next_swap(now)))
        .collect();
    let limits = swapstats::swap::SwapLimits::default();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(DECODE_SWAPS as u64));
    group.sample_size(20);
    group.bench_function("generator_payloads_100k", |b| {
        b.iter(|| {
            for payload in &payloads {
                let _ = black_box(swapstats::swap::decode_swap(payload, &limits, now));
            }
        })
    });
    // As the shard decodes: into the swaps of an earlier batch, reusing their
    // strings (what each decode above allocates, and drops, is not paid here).
    let mut kept: Vec<swapstats::swap::Swap> = payloads
        .iter()
        .filter_map(|p| swapstats::swap::decode_swap(p, &limits, now).ok())
        .collect();
    group.bench_function("generator_payloads_100k_into_kept_swaps", |b| {
        b.iter(|| {
            for (payload, swap) in payloads.iter().rev().zip(kept.iter_mut()) {
                let _ = black_box(swapstats::swap::decode_swap_into(
                    payload, &limits, now, swap,
                ));
            }
        })
    });
    // A producer that adds its own metadata: a nested object, an escaped
    // string and a negative number before the swap's fields, which the direct
    // reading skips (serde_json checks them) instead of handing the whole
    // message to serde_json.
    let extra =
        br#"{"meta":{"venue":"dex-1","route":[3,-1,{"hop":null}]},"note":"a\"b","delta":-3,"#;
    let with_extra: Vec<Vec<u8>> = payloads
        .iter()
        .map(|p| [&extra[..], &p[1..]].concat())
        .collect();
    let decoded = |all: &[Vec<u8>]| {
        let ok = |p: &&Vec<u8>| swapstats::swap::decode_swap(p, &limits, now).is_ok();
        all.iter().filter(ok).count()
    };
    assert_eq!(
        decoded(&with_extra),
        decoded(&payloads),
        "the extra fields broke swaps"
    );
    group.bench_function("with_nested_extra_fields_100k", |b| {
        b.iter(|| {
            for payload in &with_extra {
                let _ = black_box(swapstats::swap::decode_swap(payload, &limits, now));
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().nresamples(10_000).without_plots();
    targets = bench_apply, bench_restore, bench_queries, bench_decode
}
criterion_main!(benches);
