//! The batch loop of one partition: read records, decode (bad ones to the dead
//! letter sink), apply to the engine, persist the batch's effect in one store
//! call, and only then commit the source offset and announce the changed tokens.
//! Persisting batch N overlaps reading and applying batch N+1.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::StopFlag;
use tokio::time::Instant;
use tracing::{Instrument, Span};

use super::ShardCore;
use crate::config::Settings;
use crate::store::{PersistBatch, PersistOutcome, Store};
use crate::swap::{decode_swap, Rejection, Swap, SwapLimits};
use crate::window::BatchEffect;

/// One message from the source: its offset in the partition and raw payload.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    pub offset: i64,
    pub payload: Vec<u8>,
    /// W3C `traceparent` carried with the record, if any.
    pub traceparent: Option<String>,
}

/// Source failures. Transient ones are logged and retried by the source itself.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source: {0}")]
    Fatal(String),
}

/// A partition's record stream, resumable at an offset.
pub trait RecordSource: Send {
    /// The next record; `Ok(None)` when the source has ended (generator done).
    fn next_record(
        &mut self,
    ) -> impl Future<Output = Result<Option<SourceRecord>, SourceError>> + Send;
    /// Records that `offset` (and everything before) is persisted.
    fn commit(&mut self, offset: i64) -> Result<(), SourceError>;
    /// Messages between the last record read and the partition's end, if known.
    fn lag(&self) -> Option<i64>;
}

/// Where rejected records go (a Kafka dead-letter topic, or just the log).
pub trait DeadLetterSink: Send {
    /// Sends one rejected record with its reason.
    fn send(
        &mut self,
        record: &SourceRecord,
        partition: u32,
        rejection: &Rejection,
    ) -> impl Future<Output = ()> + Send;
}

/// A dead-letter sink that only logs (standalone mode).
pub struct LogDeadLetters;

impl DeadLetterSink for LogDeadLetters {
    async fn send(&mut self, record: &SourceRecord, partition: u32, rejection: &Rejection) {
        tracing::warn!(partition, offset = record.offset, reason = rejection.reason.as_str(), detail = %rejection.detail, "dead letter");
    }
}

/// Batching and readiness parameters.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub batch_max_swaps: usize,
    pub batch_max_delay: Duration,
    pub ready_max_lag: i64,
    pub limits: SwapLimits,
}

impl PipelineConfig {
    /// Parameters from `shard.*` and `ingest.*`.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            batch_max_swaps: settings.shard.batch_max_swaps,
            batch_max_delay: settings.shard.batch_max_delay,
            ready_max_lag: settings.shard.ready_max_lag,
            limits: SwapLimits {
                max_future_skew_ms: settings.ingest.max_future_skew.as_millis() as i64,
                ..SwapLimits::default()
            },
        }
    }
}

/// Runs the pipeline until the source ends or `stop` is set.
pub async fn run_pipeline<R: RecordSource, S: Store, D: DeadLetterSink>(
    core: Arc<ShardCore>,
    mut source: R,
    store: Arc<S>,
    mut dead_letters: D,
    config: PipelineConfig,
    stop: StopFlag,
) -> Result<(), SourceError> {
    let mut records = Vec::with_capacity(config.batch_max_swaps);
    // Applied to the engine, not yet persisted: at most one batch.
    let mut pending: Option<AppliedBatch> = None;
    let mut ended = false;
    loop {
        let reading = !ended && !stop.is_set();
        if !reading && pending.is_none() {
            return Ok(());
        }
        // The previous batch is persisted while the next one is read, decoded
        // and applied, so the source and the engine work while Redis does.
        // Batches still reach the store one at a time and in order.
        let persist = async {
            match &pending {
                Some(batch) => persist_applied(&core, store.as_ref(), batch, &stop).await,
                None => true,
            }
        };
        let read = async {
            if !reading {
                return Ok((ended, None));
            }
            records.clear();
            let source_ended = fill_batch(&mut source, &mut records, &config, &stop).await?;
            update_readiness(&core, &source, &config);
            let next = apply_records(&core, &records, &mut dead_letters, &config).await;
            Ok::<_, SourceError>((source_ended, next))
        };
        let (persisted, read) = tokio::join!(persist, read);
        if let Some(batch) = pending.take() {
            if !persisted {
                // Stopping during a store outage: the batch is not in Redis, so
                // its offsets are not committed; the restart resumes before it.
                return read.map(|_| ());
            }
            source.commit(batch.last_offset)?;
        }
        (ended, pending) = read?;
        update_readiness(&core, &source, &config);
    }
}

/// Reads records until the batch is full or its delay is up. Returns true when
/// the source ended.
async fn fill_batch<R: RecordSource>(
    source: &mut R,
    records: &mut Vec<SourceRecord>,
    config: &PipelineConfig,
    stop: &StopFlag,
) -> Result<bool, SourceError> {
    // How long an idle partition waits for a first record before the loop
    // goes round (and updates readiness, e.g. once the lag becomes known).
    let idle_poll = Duration::from_millis(50);
    let first_deadline = Instant::now() + idle_poll;
    let mut deadline = first_deadline;
    while records.len() < config.batch_max_swaps {
        let next = tokio::time::timeout_at(deadline, source.next_record()).await;
        match next {
            Err(_elapsed) => break,
            Ok(Ok(None)) => return Ok(true),
            Ok(Ok(Some(record))) => {
                if records.is_empty() {
                    deadline = Instant::now() + config.batch_max_delay;
                }
                records.push(record);
            }
            Ok(Err(e)) => return Err(e),
        }
        if stop.is_set() {
            break;
        }
    }
    Ok(false)
}

/// The `apply_batch` span of a batch, linked to the sampled trace contexts its
/// records carry (a batch has many parents). `Span::none()` unless spans are
/// exported: the disabled path does no per-record work here.
fn batch_span(partition: u32, records: &[SourceRecord]) -> Span {
    if !crate::telemetry::tracing_enabled() {
        return Span::none();
    }
    let (first, last) = (
        records.first().map_or(-1, |r| r.offset),
        records.last().map_or(-1, |r| r.offset),
    );
    let span = tracing::info_span!(
        "apply_batch",
        otel.kind = "consumer",
        partition,
        swaps = records.len(),
        first_offset = first,
        last_offset = last,
        links = tracing::field::Empty,
    );
    let links = crate::telemetry::link_traceparents(
        &span,
        records.iter().filter_map(|r| r.traceparent.as_deref()),
    );
    span.record("links", links);
    span
}

/// A batch decoded and applied to the engine, waiting to be persisted.
struct AppliedBatch {
    effect: BatchEffect,
    first_offset: i64,
    last_offset: i64,
    now_ms: i64,
    /// The batch's `apply_batch` span (disabled unless exporting).
    span: Span,
    started: std::time::Instant,
}

/// Decodes `records` (bad ones to the dead-letter sink) and applies the good
/// ones to the engine. `None` for an empty batch.
async fn apply_records<D: DeadLetterSink>(
    core: &ShardCore,
    records: &[SourceRecord],
    dead_letters: &mut D,
    config: &PipelineConfig,
) -> Option<AppliedBatch> {
    let (first_offset, last_offset) = (records.first()?.offset, records.last()?.offset);
    let started = std::time::Instant::now();
    let span = batch_span(core.partition, records);
    let now_ms = crate::now_ms();
    let effect = async {
        crate::telemetry::metrics()
            .batch_swaps
            .with_label_values(&[core.partition.to_string().as_str()])
            .observe(records.len() as f64);
        let mut swaps: Vec<Swap> = Vec::with_capacity(records.len());
        for record in records {
            match decode_swap(&record.payload, &config.limits, now_ms) {
                Ok(swap) => swaps.push(swap),
                Err(rejection) => {
                    core.counters.reject(rejection.reason);
                    core.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    dead_letters.send(record, core.partition, &rejection).await;
                }
            }
        }
        core.counters
            .consumed
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        core.apply_batch(&swaps, now_ms).0
    }
    .instrument(span.clone())
    .await;
    Some(AppliedBatch {
        effect,
        first_offset,
        last_offset,
        now_ms,
        span,
        started,
    })
}

/// Persists an applied batch, then publishes it: the applied offset, and the
/// changed tokens for WS updates. False when the pipeline stopped before the
/// store accepted it.
async fn persist_applied<S: Store>(
    core: &ShardCore,
    store: &S,
    batch: &AppliedBatch,
    stop: &StopFlag,
) -> bool {
    let persist = PersistBatch {
        partition: core.partition,
        first_offset: batch.first_offset,
        last_offset: batch.last_offset,
        effect: &batch.effect,
        now_ms: batch.now_ms,
    };
    if !persist_with_retry(core, store, &persist, stop)
        .instrument(batch.span.clone())
        .await
    {
        return false;
    }
    core.counters.batches.fetch_add(1, Ordering::Relaxed);
    core.counters
        .applied_offset
        .store(batch.last_offset, Ordering::Relaxed);
    // The WS pushes of these tokens continue the batch's trace.
    core.changes.mark_traced(
        batch.effect.tokens(),
        crate::telemetry::span_context(&batch.span),
    );
    crate::telemetry::metrics()
        .batch_apply_seconds
        .with_label_values(&[core.partition.to_string().as_str()])
        .observe(batch.started.elapsed().as_secs_f64());
    true
}

/// Persists until the store accepts (or fences) the batch: an outage pauses
/// the partition, it never drops or skips a batch. False only when `stop` was
/// set while the store kept failing.
async fn persist_with_retry<S: Store>(
    core: &ShardCore,
    store: &S,
    batch: &PersistBatch<'_>,
    stop: &StopFlag,
) -> bool {
    let mut backoff = Duration::from_millis(50);
    let traced = crate::telemetry::tracing_enabled();
    let mut attempt: u32 = 0;
    loop {
        core.counters.store_calls.fetch_add(1, Ordering::Relaxed);
        attempt += 1;
        let span = if traced {
            persist_span(batch, attempt)
        } else {
            Span::none()
        };
        let started = std::time::Instant::now();
        let result = store.persist(batch).instrument(span.clone()).await;
        match &result {
            Ok(PersistOutcome::Applied) => span.record("outcome", "applied"),
            Ok(PersistOutcome::Fenced { .. }) => span.record("outcome", "fenced"),
            Err(_) => span
                .record("outcome", "error")
                .record("otel.status_code", "error"),
        };
        let metrics = crate::telemetry::metrics();
        metrics
            .store_call_seconds
            .with_label_values(&["persist"])
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            metrics.store_errors.with_label_values(&["persist"]).inc();
        }
        match result {
            Ok(PersistOutcome::Applied) => break,
            Ok(PersistOutcome::Fenced { applied_offset }) => {
                tracing::info!(
                    partition = batch.partition,
                    first = batch.first_offset,
                    applied_offset,
                    "batch already persisted (fenced)"
                );
                break;
            }
            Err(e) => {
                core.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                core.set_ready(false);
                core.set_error(Some(format!("store: {e}")));
                tracing::warn!(partition = batch.partition, error = %e, "persist failed; retrying");
                if stop.is_set() {
                    return false;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    core.set_error(None);
    true
}

/// One store write attempt, child of the batch span.
fn persist_span(batch: &PersistBatch<'_>, attempt: u32) -> Span {
    tracing::info_span!(
        "store.persist",
        otel.kind = "client",
        partition = batch.partition,
        first_offset = batch.first_offset,
        last_offset = batch.last_offset,
        attempt,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Ready when the lag is known and small and nothing is failing. An unknown lag
/// (the partition's end not fetched yet) is not ready: a shard that has just
/// restarted must not answer before it knows it has caught up.
fn update_readiness<R: RecordSource>(core: &ShardCore, source: &R, config: &PipelineConfig) {
    let Some(lag) = source.lag() else {
        core.set_ready(false);
        return;
    };
    core.counters.lag.store(lag, Ordering::Relaxed);
    core.set_ready(lag <= config.ready_max_lag && core.last_error().is_none());
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicI64;

    use super::*;
    use crate::config::GeneratorSettings;
    use crate::shard::ChangeFeed;
    use crate::source::SwapGenerator;
    use crate::store::{Restored, StoreError};
    use crate::swap::encode_swap;
    use crate::window::EngineConfig;

    /// A store that is down: every persist fails.
    struct DownStore;

    impl Store for DownStore {
        async fn persist(&self, _: &PersistBatch<'_>) -> Result<PersistOutcome, StoreError> {
            Err(StoreError::Config("down".into()))
        }
        async fn load(&self, _: u32, _: i64) -> Result<Restored, StoreError> {
            Err(StoreError::Config("down".into()))
        }
        async fn load_token(
            &self,
            _: u32,
            _: &str,
            _: i64,
        ) -> Result<Option<BatchEffect>, StoreError> {
            Err(StoreError::Config("down".into()))
        }
    }

    /// A fixed list of records that remembers the last committed offset.
    struct ListSource {
        records: std::vec::IntoIter<SourceRecord>,
        committed: Arc<AtomicI64>,
    }

    impl RecordSource for ListSource {
        async fn next_record(&mut self) -> Result<Option<SourceRecord>, SourceError> {
            match self.records.next() {
                Some(record) => Ok(Some(record)),
                // Stay open, like a live partition with nothing new.
                None => std::future::pending().await,
            }
        }
        fn commit(&mut self, offset: i64) -> Result<(), SourceError> {
            self.committed.store(offset, Ordering::Relaxed);
            Ok(())
        }
        fn lag(&self) -> Option<i64> {
            Some(0)
        }
    }

    #[tokio::test]
    async fn stopping_during_a_store_outage_commits_nothing() {
        let mut generator = SwapGenerator::new(&GeneratorSettings::default());
        let records: Vec<SourceRecord> = (0..20)
            .map(|offset| SourceRecord {
                offset,
                payload: encode_swap(&generator.next_swap(crate::now_ms())),
                traceparent: None,
            })
            .collect();
        let committed = Arc::new(AtomicI64::new(-1));
        let source = ListSource {
            records: records.into_iter(),
            committed: committed.clone(),
        };
        let engine = EngineConfig {
            windows: vec![crate::window::WindowSpec::parse("5m").expect("window")],
            dedup_horizon_ms: 86_400_000,
            retention_ms: 2 * 86_400_000,
        };
        let core = Arc::new(ShardCore::new(0, engine, Arc::new(ChangeFeed::default())));
        let config = PipelineConfig {
            batch_max_swaps: 100,
            batch_max_delay: Duration::from_millis(5),
            ready_max_lag: 0,
            limits: SwapLimits::default(),
        };
        let stop = StopFlag::default();
        let pipeline = tokio::spawn(run_pipeline(
            core.clone(),
            source,
            Arc::new(DownStore),
            LogDeadLetters,
            config,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!core.is_ready(), "a failing store makes the shard unready");
        stop.set();
        let result = tokio::time::timeout(Duration::from_secs(5), pipeline).await;
        assert!(matches!(result, Ok(Ok(Ok(())))), "the pipeline stops");
        assert_eq!(committed.load(Ordering::Relaxed), -1, "nothing committed");
        assert_eq!(core.counters.batches.load(Ordering::Relaxed), 0);
        assert_eq!(core.counters.applied_offset.load(Ordering::Relaxed), -1);
    }
}
