//! `ShardCore`: one partition's engine plus the counters and health that the
//! HTTP API and metrics read. Shared between the pipeline task and handlers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use parking_lot::{RwLockReadGuard, RwLockWriteGuard};

use opentelemetry::trace::SpanContext;
use tokio::sync::Notify;

use super::engine_lock::{EngineLock, ShuttingDown};
use crate::config::Settings;
use crate::swap::{RejectReason, Swap};
use crate::window::{
    chunk_ranges, AdmittedBatch, BatchCounts, BatchEffect, EngineConfig, RestoredEvents,
    TokenStats, WindowEngine,
};

/// Engine parameters from `windows` and `ingest.*`: what every role that holds
/// or reads a partition's state (shard, standalone, router fallback) uses.
pub fn engine_config(settings: &Settings) -> EngineConfig {
    EngineConfig {
        windows: settings.windows.clone(),
        dedup_horizon_ms: settings.ingest.dedup_horizon.as_millis() as i64,
        retention_ms: settings.ingest.retention.as_millis() as i64,
    }
}

/// Counters of one partition's pipeline (all monotonic except the gauges).
#[derive(Debug, Default)]
pub struct ShardCounters {
    pub consumed: AtomicU64,
    pub applied: AtomicU64,
    pub duplicates: AtomicU64,
    pub late: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub batches: AtomicU64,
    pub store_calls: AtomicU64,
    pub store_errors: AtomicU64,
    pub rejected: [AtomicU64; RejectReason::ALL.len()],
    /// Gauge: messages behind the partition's end.
    pub lag: AtomicI64,
    /// Gauge: last offset persisted to the store (-1 = none).
    pub applied_offset: AtomicI64,
}

impl ShardCounters {
    /// Counts one rejected swap under its reason.
    pub fn reject(&self, reason: RejectReason) {
        let i = RejectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.rejected[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Tokens changed since the WS coalescer last looked, with the trace context of
/// the batch that last changed each one (only while spans are exported).
#[derive(Debug, Default)]
pub struct ChangeFeed {
    dirty: Mutex<Dirty>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Dirty {
    /// The engine's own names (shared: a batch marks thousands).
    tokens: HashSet<Arc<str>>,
    /// Empty unless tracing export is on.
    traces: HashMap<Arc<str>, SpanContext>,
}

impl ChangeFeed {
    /// Marks tokens as changed and wakes the coalescer, remembering `trace`
    /// (the changing batch's span) as the parent of each token's next WS
    /// push. `None` costs nothing extra.
    pub fn mark_traced(
        &self,
        tokens: impl IntoIterator<Item = Arc<str>>,
        trace: Option<SpanContext>,
    ) {
        if let Ok(mut dirty) = self.dirty.lock() {
            let dirty = &mut *dirty;
            match trace {
                None => dirty.tokens.extend(tokens),
                Some(trace) => {
                    for token in tokens {
                        dirty.traces.insert(token.clone(), trace.clone());
                        dirty.tokens.insert(token);
                    }
                }
            }
        }
        self.notify.notify_one();
    }

    /// Takes the changed tokens, each with the trace context it was marked with.
    pub fn take_traced(&self) -> Vec<(Arc<str>, Option<SpanContext>)> {
        let Ok(mut dirty) = self.dirty.lock() else {
            return Vec::new();
        };
        let tokens = std::mem::take(&mut dirty.tokens);
        if dirty.traces.is_empty() {
            return tokens.into_iter().map(|t| (t, None)).collect();
        }
        let mut traces = std::mem::take(&mut dirty.traces);
        tokens
            .into_iter()
            .map(|t| {
                let trace = traces.remove(&t);
                (t, trace)
            })
            .collect()
    }

    /// Waits until something is marked.
    pub async fn changed(&self) {
        self.notify.notified().await
    }
}

/// Most swaps applied under one hold of the engine lock. A batch is sized for
/// the store (`shard.batch_max_swaps`: larger batches cost Redis less per
/// swap), but the queries of `/stats` and `/ws` wait while the engine applies,
/// so a larger batch is applied in parts of this size, each taking the lock
/// anew: a query waits for one part, never for the whole batch.
///
/// The parts are cut from the batch's admitted swaps grouped by token
/// ([`AdmittedBatch::group_by_token`]), so a part holds all of the batch's
/// swaps of fewer tokens, and each token's records and counters are warmed
/// once per batch, however small the parts. Cut in arrival order instead,
/// every part touched most tokens, and parts this small cost the engine's
/// batch speed (5,000-swap parts applied 43 % fewer swaps/s than 20,000-swap
/// ones in `apply/steady_*`).
///
/// After each part the lock goes to the waiting queries first
/// ([`RwLockWriteGuard::unlock_fair`]). Released plainly (std's `Mutex`), it was taken
/// straight back for the next part, and a query waited out the whole batch:
/// the longest stats query while streaming into Redis fell from 136–220 ms to
/// 86–166 ms (`BENCH_ROUNDS=1 BENCH_STREAM_SWAPS=1000000 cargo bench --bench
/// shard_pipeline`, 6 runs each).
pub const APPLY_CHUNK_SWAPS: usize = 2_500;

/// Most tokens trimmed, and event ids forgotten, under one hold of the engine
/// lock. Both fall due in bunches (the ids of a whole second at once, every
/// token whose trim came due since the batch before): with one hold per
/// expiry, the longest was the expiry after a batch's first part (p99 24–25
/// ms, max 42 ms in `cargo bench --bench engine -- apply/steady`, against
/// 2.5–2.7 ms for a part).
pub const EXPIRE_CHUNK_TOKENS: usize = 32;
/// See [`EXPIRE_CHUNK_TOKENS`].
pub const EXPIRE_CHUNK_EVENTS: usize = 16_384;

/// Most swaps admitted (dedup) under one hold of the engine lock: admission
/// costs a fraction of applying, so its holds are about as long as a part's.
pub const ADMIT_CHUNK_SWAPS: usize = 8 * APPLY_CHUNK_SWAPS;

/// One partition: engine, counters, health.
pub struct ShardCore {
    pub partition: u32,
    /// Queries share it (reads take `&WindowEngine`); mutations hold it alone.
    engine: Arc<EngineLock>,
    /// Tokens the engine held when a mutation last released it: `/readyz`
    /// and `/metrics` read it without waiting for the engine.
    tokens: AtomicUsize,
    pub counters: ShardCounters,
    pub changes: Arc<ChangeFeed>,
    ready: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl ShardCore {
    /// A core with an empty engine, not ready until the pipeline says so.
    pub fn new(partition: u32, engine: EngineConfig, changes: Arc<ChangeFeed>) -> Self {
        let counters = ShardCounters::default();
        counters.applied_offset.store(-1, Ordering::Relaxed);
        Self {
            partition,
            engine: Arc::new(EngineLock::new(WindowEngine::new(engine))),
            tokens: AtomicUsize::new(0),
            counters,
            changes,
            ready: AtomicBool::new(false),
            last_error: Mutex::new(None),
        }
    }

    /// The engine for a mutation. No poisoning: a panic while holding the
    /// lock leaves a consistent engine (every method finishes its mutation
    /// before returning).
    fn engine_mut(&self) -> RwLockWriteGuard<'_, WindowEngine> {
        self.engine.write()
    }

    /// The engine for a query, shared with other queries.
    fn engine(&self) -> RwLockReadGuard<'_, WindowEngine> {
        self.engine.read_blocking()
    }

    /// Holds the engine as a batch part does, for tests of what waits on it.
    #[cfg(test)]
    pub(crate) fn hold_engine(&self) -> RwLockWriteGuard<'_, WindowEngine> {
        self.engine_mut()
    }

    /// Runs `change` under the engine lock, then updates the token gauge and
    /// hands the engine to the waiting queries first: every mutation goes
    /// through here, so the gauge never lags one.
    fn change<R>(&self, change: impl FnOnce(&mut WindowEngine) -> R) -> R {
        let mut engine = self.engine_mut();
        let changed = change(&mut engine);
        self.tokens.store(engine.token_count(), Ordering::Relaxed);
        RwLockWriteGuard::unlock_fair(engine);
        changed
    }

    /// Runs `read` on the engine, for async code (HTTP handlers, WS updates,
    /// snapshots).
    ///
    /// Reads share the engine, so the two workers answer two queries at once:
    /// with 4 tasks asking `/stats/top` back to back, 14k queries/s instead of
    /// 5.6–6.2k, whose p99 waited 3.1–3.3 ms for one another (`cargo bench
    /// --bench shard_queries`, 2 alternated pairs).
    ///
    /// Waiting for the lock on a runtime worker, as the sync methods do, would
    /// stall every task queued on that worker (reads, persists, pings) while a
    /// mutation holds the engine, a few ms per hold at full rate (tens of ms
    /// before the parts were grouped by token). So the engine is
    /// read in place only when no mutation holds or waits for it, and
    /// otherwise the query waits off the workers, queued with the others
    /// behind one blocking-pool thread (`EngineLock::read`).
    /// Streaming at full rate with 4 stats tasks, the runtime's 1 ms timers
    /// then woke late p99 13–19 ms instead of 63–68 (into Redis) and 7–8
    /// instead of 51–81 (in-memory), at the same rate (`BENCH_ROUNDS=1
    /// BENCH_STREAM_SWAPS=1000000 cargo bench --bench shard_pipeline`, 3
    /// alternated pairs).
    pub async fn read<R>(&self, read: impl FnOnce(&WindowEngine) -> R) -> Result<R, ShuttingDown> {
        self.engine.read(read).await
    }

    /// Applies a batch of valid swaps and counts the outcome: one effect for
    /// the whole batch (one store write). Dedup decides first, in arrival
    /// order, [`ADMIT_CHUNK_SWAPS`] swaps per hold of the engine lock; then
    /// the swaps it admitted, grouped by token, are applied
    /// [`APPLY_CHUNK_SWAPS`] per hold. Each part also drops
    /// what aged out: under load that is as much as the part brought in,
    /// spread over the parts, where the 10 s expiry tick alone trimmed 10 s of
    /// it in one hold.
    ///
    /// The expiry takes holds of its own after the part's, so queries that
    /// waited during the part go first (no answer depends on whether it ran:
    /// see `EngineTuning::trim_slack_ms`).
    ///
    /// In a long-running engine (`cargo bench --bench engine --
    /// apply/steady`, 2 alternated pairs against 20,000-swap parts in arrival
    /// order), a part now holds the engine p50 2.7–2.8 ms, p99 3.9–4.0 ms
    /// (was 21–25 ms, 29–30 ms), an admission chunk p99 2.4–2.7 ms and an
    /// expiry p99 8.6 ms (was 17–19 ms), at 582–605k swaps/s (was
    /// 575–667k). Since admission hashes each token name once for both
    /// grouping and lookup (2 more pairs): admission p99 3.5–3.6 ms, part
    /// p99 3.6 ms, 652–687k swaps/s (was 631–642k). While streaming 1 M swaps (`BENCH_ROUNDS=1
    /// BENCH_STREAM_SWAPS=1000000 cargo bench --bench shard_pipeline`, 3
    /// alternated pairs), the p99 of stats from 4 tasks fell from 53–66 ms to
    /// 35–42 ms into Redis and from 39–45 to 27–31 ms in memory, at the same
    /// rates.
    pub fn apply_batch(&self, swaps: &[Swap], now_ms: i64) -> (BatchEffect, BatchCounts) {
        let mut admitted = AdmittedBatch::default();
        for chunk in chunk_ranges(swaps.len(), ADMIT_CHUNK_SWAPS) {
            self.change(|engine| engine.admit_batch(&mut admitted, swaps, chunk, now_ms));
        }
        admitted.group_by_token();
        let counts = admitted.counts();
        let parts: Vec<BatchEffect> = chunk_ranges(admitted.len(), APPLY_CHUNK_SWAPS)
            .map(|part| {
                let effect =
                    self.change(|engine| engine.apply_admitted(swaps, &admitted, part, now_ms));
                self.expire(now_ms);
                effect
            })
            .collect();
        if parts.is_empty() && !swaps.is_empty() {
            self.expire(now_ms);
        }
        let effect = BatchEffect::merged(parts);
        self.counters
            .applied
            .fetch_add(counts.applied, Ordering::Relaxed);
        self.counters
            .duplicates
            .fetch_add(counts.duplicates, Ordering::Relaxed);
        self.counters.late.fetch_add(counts.late, Ordering::Relaxed);
        (effect, counts)
    }

    /// Merges restored state into the engine.
    pub fn restore(&self, effect: &BatchEffect) {
        self.change(|engine| engine.restore(effect));
    }

    /// Takes over event ids restored apart from the tokens.
    pub fn adopt_events(&self, events: RestoredEvents) {
        self.change(|engine| engine.adopt_events(events));
    }

    /// Forgets all state (before a restore starts over).
    pub fn clear(&self) {
        self.change(WindowEngine::clear);
    }

    /// Drops aged-out data, [`EXPIRE_CHUNK_EVENTS`] event ids or
    /// [`EXPIRE_CHUNK_TOKENS`] tokens per hold of the engine, each handing
    /// the engine to waiting queries first (like each part of
    /// [`ShardCore::apply_batch`]).
    pub fn expire(&self, now_ms: i64) {
        let some = |engine: &mut WindowEngine| {
            engine.expire_some(now_ms, EXPIRE_CHUNK_EVENTS, EXPIRE_CHUNK_TOKENS)
        };
        while self.change(some) {}
    }

    /// Stats of one token, waiting for the engine where it is (threads,
    /// tests); async code asks through [`ShardCore::read`].
    pub fn stats(&self, token: &str, now_ms: i64) -> Option<TokenStats> {
        self.engine().stats(token, now_ms)
    }

    /// Number of tokens held, as of the engine's last change (never waits
    /// for the engine).
    pub fn token_count(&self) -> usize {
        self.tokens.load(Ordering::Relaxed)
    }

    /// Whether the shard serves (restored, caught up, store healthy).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Sets readiness.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Records (or clears) the last pipeline error, for `/readyz` and `/cluster`.
    pub fn set_error(&self, error: Option<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = error;
        }
    }

    /// The last pipeline error, if the pipeline is currently failing.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swap::Side;
    use crate::window::Level;

    const NOW: i64 = 1_700_000_040_000;

    fn test_core() -> ShardCore {
        ShardCore::new(0, EngineConfig::service_defaults(), Arc::default())
    }

    /// `n` distinct swaps of tokens `T0`..`T{tokens - 1}` in the 5 s before [`NOW`].
    fn swaps(n: usize, tokens: usize) -> Vec<Swap> {
        (0..n)
            .map(|i| Swap {
                event_id: format!("e{i}"),
                token: format!("T{}", i % tokens),
                wallet: Some(format!("w{}", i % 50)),
                side: if i % 2 == 0 { Side::Buy } else { Side::Sell },
                amount: 2.0,
                usd: 1.0,
                rate: 0.5,
                created_at_ms: None,
                executed_at_ms: NOW - 5_000 + (i as i64 % 5) * 1_000,
            })
            .collect()
    }

    /// A batch of more than one part is applied part by part but comes back
    /// as one effect: each bucket once, with the batch's final total.
    #[test]
    fn a_batch_larger_than_a_part_is_one_effect() {
        let core = test_core();
        let n = APPLY_CHUNK_SWAPS + 500;
        let (effect, counts) = core.apply_batch(&swaps(n, 3), NOW);
        assert_eq!(counts.applied, n as u64);
        assert_eq!(core.counters.applied.load(Ordering::Relaxed), n as u64);
        for level in [Level::Second, Level::Minute] {
            let buckets: Vec<_> = effect.buckets.iter().filter(|d| d.level == level).collect();
            let txns: u64 = buckets.iter().map(|d| u64::from(d.total.txns)).sum();
            assert_eq!(txns, n as u64, "{level:?}: every bucket once, at its total");
            let deltas: u64 = buckets.iter().map(|d| u64::from(d.delta.txns)).sum();
            assert_eq!(deltas, n as u64, "{level:?}");
        }
        assert_eq!(effect.events.len(), n);
    }

    /// A busy shard drops aged-out data with its batches, not only on the
    /// expiry tick: a token past the retention is gone after the next batch.
    #[test]
    fn a_batch_expires_what_aged_out() {
        let core = test_core();
        core.apply_batch(&swaps(10, 1), NOW);
        let later = NOW + 2 * 86_400_000 + 60_000;
        let mut fresh = swaps(1, 1);
        fresh[0].token = "NEW".into();
        fresh[0].event_id = "fresh".into();
        fresh[0].executed_at_ms = later;
        core.apply_batch(&fresh, later);
        assert_eq!(core.token_count(), 1, "T0 went with the batch");
        assert!(core.stats("NEW", later).is_some());
    }

    /// Queries do not wait for one another: one answers while another holds
    /// the engine for reading.
    #[test]
    fn queries_share_the_engine() {
        let core = test_core();
        core.apply_batch(&swaps(10, 1), NOW);
        let held = core.engine();
        let (answered, answer) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| answered.send(core.stats("T0", NOW).is_some()));
            let answer = answer.recv_timeout(std::time::Duration::from_secs(10));
            // Released before the assertion, so a failure cannot hang the scope.
            drop(held);
            assert_eq!(answer, Ok(true), "a second query waited for the first");
        });
        assert!(core.engine.try_write().is_some(), "no query holds it after");
    }

    /// A query that waits while a batch is applied gets the engine between
    /// two parts: it sees the batch partly applied, a whole number of parts,
    /// instead of waiting for all of it (the applier used to take the lock
    /// straight back). Only a querier parked when a part ends is sure to get
    /// in there, and a busy machine may deschedule it between two queries
    /// across a few short parts, so the batch has 20 of them.
    #[test]
    fn a_waiting_query_gets_the_engine_between_the_parts_of_a_batch() {
        let core = test_core();
        let parts = 20;
        let batch = swaps(parts * APPLY_CHUNK_SWAPS, 1);
        let applied = AtomicBool::new(false);
        let seen = std::thread::scope(|scope| {
            let querier = scope.spawn(|| {
                let mut seen = Vec::new();
                while !applied.load(Ordering::Acquire) {
                    let txns = core
                        .stats("T0", NOW)
                        .and_then(|s| s.windows.get("5m").map(|w| w.current.txns));
                    if seen.last() != Some(&txns) {
                        seen.push(txns);
                    }
                }
                seen
            });
            // Started once the querier is asking: it waits whenever a part ends.
            while core.engine.try_write().is_some() {
                std::thread::yield_now();
            }
            core.apply_batch(&batch, NOW);
            applied.store(true, Ordering::Release);
            querier.join().expect("querier")
        });
        let (part, all) = (APPLY_CHUNK_SWAPS as u64, batch.len() as u64);
        let between = |txns: &Option<u64>| txns.is_some_and(|n| n % part == 0 && n < all);
        assert!(
            seen.iter().any(between),
            "no query got in between the parts; seen: {seen:?}"
        );
        assert!(
            seen.iter().flatten().all(|n| n % part == 0),
            "a query saw part of a part; seen: {seen:?}"
        );
    }
}
