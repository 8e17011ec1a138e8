//! The batch loop of one partition: read records, decode (bad ones to the dead
//! letter sink), apply to the engine, persist the batch's effect in one store
//! call, and only then commit the source offset and announce the changed tokens.
//! Applying batch N overlaps reading batch N+1, and persisting batches N-1 and
//! N-2 overlaps both.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tracing::{Instrument, Span};

use super::{ShardCore, StopFlag};
use crate::config::Settings;
use crate::store::{PersistBatch, PersistOutcome, Store};
use crate::swap::{decode_swap, decode_swap_into, Rejection, Swap, SwapLimits};
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

/// Why the pipeline stopped before its source ended.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The source failed in a way it cannot retry.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The store holds another applied offset than the one this shard's batches
    /// follow: another writer moved the partition, or the store lost state the
    /// shard had persisted. The in-memory state no longer matches the store's;
    /// the shard must restart and restore.
    #[error("partition {partition}: the store holds applied offset {stored:?}, this shard's next batch follows {follows}; restart to restore")]
    Diverged {
        partition: u32,
        follows: i64,
        stored: Option<i64>,
    },
}

/// Batches handed to the store at once. With two, one batch waits for its
/// replica's acknowledgement while the next one runs its script on the master
/// (over another connection); the store applies them in order regardless
/// ([`PersistBatch::follows`]).
const PERSISTS_IN_FLIGHT: usize = 2;

/// A batch the store is persisting, in its own task.
struct InFlight {
    last_offset: i64,
    /// True once the store accepted the batch; false when the pipeline stopped first.
    task: tokio::task::JoinHandle<Result<bool, PipelineError>>,
}

/// A batch being applied to the engine in a task of its own, while the loop
/// reads and decodes the next one.
struct Applying {
    /// The applied batch, and its decoded swaps back for the next decode.
    task: tokio::task::JoinHandle<(AppliedBatch, DecodedSwaps)>,
    /// Woken when the task is done (a loop waiting for a first record goes on).
    done: Arc<Notify>,
}

/// Runs the pipeline until the source ends or `stop` is set.
///
/// Batches are read and decoded here; each is applied to the engine in a task
/// of its own while the next one is read and decoded (batch N+1's apply starts
/// after batch N's ended, so the engine sees batches in order), then persisted
/// in a task of its own: up to [`PERSISTS_IN_FLIGHT`] persist at once. Source
/// offsets are committed in order, each once its batch and every batch before
/// it are persisted.
pub async fn run_pipeline<R: RecordSource, S: Store, D: DeadLetterSink>(
    core: Arc<ShardCore>,
    mut source: R,
    store: Arc<S>,
    mut dead_letters: D,
    config: PipelineConfig,
    stop: StopFlag,
) -> Result<(), PipelineError> {
    let mut records = Vec::with_capacity(config.batch_max_swaps);
    // What the next batch is decoded into: the swaps of the batch applied
    // before the one applying now.
    let mut spare = DecodedSwaps::default();
    let mut applying: Option<Applying> = None;
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    // What the next batch follows: the restored applied offset, then each
    // batch's last offset.
    let mut follows = core.counters.applied_offset.load(Ordering::Relaxed);
    // Completion of the latest batch handed to the store, for the one after it.
    let mut previous_done: Option<oneshot::Receiver<bool>> = None;
    let mut lane = 0;
    let persisting = Arc::new(Persisting::default());
    let mut ended = false;
    // False when a batch was not persisted because the pipeline is stopping
    // during a store outage: nothing after it can land, so nothing is drained.
    let mut drain = true;
    let mut result = 'run: loop {
        let stopping = ended || stop.is_set();
        if stopping && applying.is_none() {
            break Ok(());
        }
        records.clear();
        let mut decoded = None;
        if !stopping {
            let filled = fill_batch(
                &mut source,
                &mut records,
                &config,
                &stop,
                &persisting,
                applying.as_ref(),
            );
            ended = match filled.await {
                Ok(ended) => ended,
                Err(e) => break Err(e.into()),
            };
            update_readiness(&core, &source, &config);
            decoded = decode_records(&core, &records, &mut dead_letters, &config, &mut spare).await;
        }
        // The batch read last time round has been applied meanwhile.
        let applied = match applying.take() {
            Some(stage) => match stage.task.await {
                Ok((applied, swaps)) => {
                    spare = swaps;
                    Some(applied)
                }
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Cancelled: the runtime is shutting down.
                Err(_) => {
                    drain = false;
                    break Ok(());
                }
            },
            None => None,
        };
        if let Some(batch) = decoded {
            applying = Some(spawn_apply(core.clone(), batch));
        }
        // Commit what has been persisted, in order; wait for the oldest batch
        // while the new one would be one too many in flight.
        while let Some(oldest) = in_flight.front() {
            let full = applied.is_some() && in_flight.len() >= PERSISTS_IN_FLIGHT;
            if !full && !oldest.task.is_finished() {
                break;
            }
            let Some(oldest) = in_flight.pop_front() else {
                break;
            };
            match settle(oldest, &mut source).await {
                Ok(true) => {}
                Ok(false) => {
                    drain = false;
                    break 'run Ok(());
                }
                Err(e) => break 'run Err(e),
            }
        }
        if let Some(batch) = applied {
            let (done, done_rx) = oneshot::channel();
            let last_offset = batch.last_offset;
            let order = PersistOrder {
                follows,
                lane,
                previous_done: previous_done.replace(done_rx),
                done,
                persisting: persisting.clone(),
            };
            persisting.started();
            let task = tokio::spawn(persist_applied(
                core.clone(),
                store.clone(),
                batch,
                order,
                stop.clone(),
            ));
            in_flight.push_back(InFlight { last_offset, task });
            follows = last_offset;
            lane += 1;
        }
        update_readiness(&core, &source, &config);
    };
    // Every batch handed to the store is persisted before returning (unless
    // the pipeline is stopping during an outage).
    if drain && result.is_ok() {
        while let Some(oldest) = in_flight.pop_front() {
            match settle(oldest, &mut source).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    abort_all(&mut in_flight);
    if let Some(stage) = applying {
        // Left only on an error or a stop during an outage: not persisted, so
        // not committed either; the restart reads it again.
        stage.task.abort();
    }
    result
}

/// Applies a decoded batch to the engine on the blocking pool: a batch is up
/// to ~100 ms of CPU, which on an async worker stalled the tasks queued behind
/// it there (reads, persists, HTTP, WS pings). While streaming at full rate,
/// a task's 1 ms sleep woke up to 67–111 ms late (in-memory store) and
/// 134–214 ms (Redis); on the blocking pool 7–12 ms and 62–83 ms, at the same
/// throughput (`BENCH_ROUNDS=1 BENCH_STREAM_SWAPS=1000000 cargo bench --bench
/// shard_pipeline`, 3 alternated pairs).
fn spawn_apply(core: Arc<ShardCore>, batch: DecodedBatch) -> Applying {
    let done = Arc::new(Notify::new());
    let task = tokio::task::spawn_blocking({
        let done = done.clone();
        move || {
            let span = batch.span.clone();
            let applied = span.in_scope(|| batch.apply(&core));
            done.notify_one();
            applied
        }
    });
    Applying { task, done }
}

/// Waits for a persist task; commits its batch's offset when the store took
/// it. False when the pipeline stopped before the store accepted the batch:
/// its offsets are not committed and the restart resumes before it.
async fn settle<R: RecordSource>(batch: InFlight, source: &mut R) -> Result<bool, PipelineError> {
    let persisted = match batch.task.await {
        Ok(result) => result?,
        // The task was cancelled or panicked: treat the batch as not persisted.
        Err(e) => {
            tracing::error!(error = %e, "persist task failed");
            false
        }
    };
    if persisted {
        source.commit(batch.last_offset)?;
    }
    Ok(persisted)
}

fn abort_all(in_flight: &mut VecDeque<InFlight>) {
    for batch in in_flight.drain(..) {
        batch.task.abort();
    }
}

/// Reads records until the batch is full or its delay is up, or, once the
/// store could take the batch at once (fewer than [`PERSISTS_IN_FLIGHT`]
/// batches `persisting`), until no more records are waiting. This is group
/// commit: a quiet partition's swaps are persisted and announced without
/// waiting out `batch_max_delay`, and a busy one fills its batches while the
/// store works. Returns early with no record once the previous batch is
/// `applying` no more, so it goes to the store without waiting for the next
/// record. Returns true when the source ended.
async fn fill_batch<R: RecordSource>(
    source: &mut R,
    records: &mut Vec<SourceRecord>,
    config: &PipelineConfig,
    stop: &StopFlag,
    persisting: &Persisting,
    applying: Option<&Applying>,
) -> Result<bool, SourceError> {
    // How long an idle partition waits for a first record before the loop
    // goes round (and updates readiness, e.g. once the lag becomes known).
    let idle_poll = Duration::from_millis(50);
    let first_deadline = Instant::now() + idle_poll;
    let mut deadline = first_deadline;
    while records.len() < config.batch_max_swaps {
        let next = if records.is_empty() {
            let first = tokio::time::timeout_at(deadline, source.next_record());
            match applying {
                Some(stage) if stage.task.is_finished() => break,
                Some(stage) => tokio::select! {
                    next = first => match next {
                        Ok(next) => next,
                        Err(_elapsed) => break,
                    },
                    () = stage.done.notified() => break,
                },
                None => match first.await {
                    Ok(next) => next,
                    Err(_elapsed) => break,
                },
            }
        } else if persisting.count() < PERSISTS_IN_FLIGHT {
            // Only a record that is already here.
            match source.next_record().now_or_never() {
                Some(next) => next,
                None => break,
            }
        } else {
            tokio::select! {
                next = tokio::time::timeout_at(deadline, source.next_record()) => match next {
                    Ok(next) => next,
                    Err(_elapsed) => break,
                },
                // A persist ended: the store may take this batch now.
                () = persisting.ended.notified() => continue,
            }
        };
        match next {
            Ok(None) => return Ok(true),
            Ok(Some(record)) => {
                if records.is_empty() {
                    deadline = Instant::now() + config.batch_max_delay;
                }
                records.push(record);
            }
            Err(e) => return Err(e),
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

/// A batch on its way through the pipeline: what it holds at this stage, and
/// what every stage needs to know about it.
struct StagedBatch<T> {
    content: T,
    first_offset: i64,
    last_offset: i64,
    now_ms: i64,
    /// The batch's `apply_batch` span (disabled unless exporting).
    span: Span,
    started: std::time::Instant,
}

/// A batch's good swaps, decoded and waiting for the engine.
type DecodedBatch = StagedBatch<DecodedSwaps>;

/// Decoded swaps in a vector kept from batch to batch: each is decoded into a
/// swap of an earlier batch ([`decode_swap_into`]), whose strings it reuses,
/// so decoding a batch allocates nothing for the strings that fit.
#[derive(Default)]
struct DecodedSwaps {
    swaps: Vec<Swap>,
    /// How many of `swaps` are this batch's; the rest are kept for later.
    len: usize,
}

impl DecodedSwaps {
    /// Decodes one record's payload as the batch's next swap.
    fn decode(
        &mut self,
        payload: &[u8],
        limits: &SwapLimits,
        now_ms: i64,
    ) -> Result<(), Rejection> {
        match self.swaps.get_mut(self.len) {
            Some(kept) => decode_swap_into(payload, limits, now_ms, kept)?,
            None => self.swaps.push(decode_swap(payload, limits, now_ms)?),
        }
        self.len += 1;
        Ok(())
    }

    /// This batch's swaps.
    fn as_slice(&self) -> &[Swap] {
        &self.swaps[..self.len]
    }
}

/// A batch decoded and applied to the engine (its effect), waiting to be persisted.
type AppliedBatch = StagedBatch<BatchEffect>;

impl DecodedBatch {
    /// Applies the swaps to the engine; hands them back for reuse.
    fn apply(self, core: &ShardCore) -> (AppliedBatch, DecodedSwaps) {
        let applied = StagedBatch {
            content: core.apply_batch(self.content.as_slice(), self.now_ms).0,
            first_offset: self.first_offset,
            last_offset: self.last_offset,
            now_ms: self.now_ms,
            span: self.span,
            started: self.started,
        };
        (applied, self.content)
    }
}

/// Decodes `records` into `spare` (taken), bad ones to the dead-letter sink.
/// `None` for an empty batch.
async fn decode_records<D: DeadLetterSink>(
    core: &ShardCore,
    records: &[SourceRecord],
    dead_letters: &mut D,
    config: &PipelineConfig,
    spare: &mut DecodedSwaps,
) -> Option<DecodedBatch> {
    let (first_offset, last_offset) = (records.first()?.offset, records.last()?.offset);
    let started = std::time::Instant::now();
    let span = batch_span(core.partition, records);
    let now_ms = crate::now_ms();
    // Counted as read before the decoding: what has left the source.
    core.counters
        .consumed
        .fetch_add(records.len() as u64, Ordering::Relaxed);
    let swaps = async {
        crate::telemetry::metrics()
            .batch_swaps
            .with_label_values(&[core.partition.to_string().as_str()])
            .observe(records.len() as f64);
        let mut swaps = std::mem::take(spare);
        swaps.len = 0;
        for record in records {
            if let Err(rejection) = swaps.decode(&record.payload, &config.limits, now_ms) {
                core.counters.reject(rejection.reason);
                core.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                dead_letters.send(record, core.partition, &rejection).await;
            }
        }
        swaps
    }
    .instrument(span.clone())
    .await;
    Some(StagedBatch {
        content: swaps,
        first_offset,
        last_offset,
        now_ms,
        span,
        started,
    })
}

/// Where a batch stands among the batches persisting at once.
struct PersistOrder {
    /// The applied offset the batch follows ([`PersistBatch::follows`]).
    follows: i64,
    /// Write lane ([`PersistBatch::lane`]).
    lane: usize,
    /// Says whether the batch before this one was persisted; `None` once known.
    previous_done: Option<oneshot::Receiver<bool>>,
    /// Tells the batch after this one whether this one was persisted.
    done: oneshot::Sender<bool>,
    /// Counts this batch until its store call ended.
    persisting: Arc<Persisting>,
}

/// Batches whose store call has not ended yet, and a wake-up for the
/// pipeline loop when one ends (a batch waiting for more records may go now).
#[derive(Debug, Default)]
struct Persisting {
    count: AtomicUsize,
    ended: Notify,
}

impl Persisting {
    fn started(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn end(&self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.ended.notify_one();
    }
}

/// Persists an applied batch, then publishes it: the applied offset, and the
/// changed tokens for WS updates. False when the pipeline stopped before the
/// store accepted it.
async fn persist_applied<S: Store>(
    core: Arc<ShardCore>,
    store: Arc<S>,
    batch: AppliedBatch,
    mut order: PersistOrder,
    stop: StopFlag,
) -> Result<bool, PipelineError> {
    let persist = PersistBatch {
        partition: core.partition,
        first_offset: batch.first_offset,
        last_offset: batch.last_offset,
        follows: order.follows,
        effect: &batch.content,
        now_ms: batch.now_ms,
        lane: order.lane,
    };
    let persisted = persist_with_retry(
        &core,
        store.as_ref(),
        &persist,
        &mut order.previous_done,
        &stop,
    )
    .instrument(batch.span.clone())
    .await;
    // The next batch may be waiting to know (a receiver gone is no error).
    let _ = order.done.send(matches!(persisted, Ok(true)));
    order.persisting.end();
    if !persisted? {
        return Ok(false);
    }
    core.counters.batches.fetch_add(1, Ordering::Relaxed);
    // Batches' replicas may acknowledge out of order; the offset only grows.
    core.counters
        .applied_offset
        .fetch_max(batch.last_offset, Ordering::Relaxed);
    // The WS pushes of these tokens continue the batch's trace.
    core.changes.mark_traced(
        batch.content.tokens(),
        crate::telemetry::span_context(&batch.span),
    );
    crate::telemetry::metrics()
        .batch_apply_seconds
        .with_label_values(&[core.partition.to_string().as_str()])
        .observe(batch.started.elapsed().as_secs_f64());
    Ok(true)
}

/// Persists until the store accepts (or fences) the batch: an outage pauses
/// the partition, it never drops or skips a batch. A batch that reached the
/// store before the one it follows waits for that one and tries again. False
/// only when `stop` was set while the store kept failing (or the batch before
/// was never persisted).
async fn persist_with_retry<S: Store>(
    core: &ShardCore,
    store: &S,
    batch: &PersistBatch<'_>,
    previous_done: &mut Option<oneshot::Receiver<bool>>,
    stop: &StopFlag,
) -> Result<bool, PipelineError> {
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
            Ok(PersistOutcome::OutOfOrder { .. }) => span.record("outcome", "out_of_order"),
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
            Ok(PersistOutcome::OutOfOrder { applied_offset }) => {
                // Either the batch before this one has not landed yet (wait for
                // it, then try again at once), or the store moved on without
                // this shard.
                match previous_done.take() {
                    Some(previous) => {
                        if previous.await != Ok(true) {
                            return Ok(false);
                        }
                    }
                    None => {
                        return Err(PipelineError::Diverged {
                            partition: batch.partition,
                            follows: batch.follows,
                            stored: applied_offset,
                        })
                    }
                }
            }
            Err(e) => {
                core.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                core.set_ready(false);
                core.set_error(Some(format!("store: {e}")));
                tracing::warn!(partition = batch.partition, error = %e, "persist failed; retrying");
                if stop.is_set() {
                    return Ok(false);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    core.set_error(None);
    Ok(true)
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
    use crate::store::{MemoryStore, Restored, StoreError};
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

    /// `n` generated swap records at offsets `first..first + n`, and a source
    /// that serves them.
    fn list_source(first: i64, n: i64) -> (ListSource, Arc<AtomicI64>) {
        let mut generator = SwapGenerator::new(&GeneratorSettings::default());
        let records: Vec<SourceRecord> = (first..first + n)
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
        (source, committed)
    }

    fn test_core() -> Arc<ShardCore> {
        let engine = EngineConfig {
            windows: vec![crate::window::WindowSpec::parse("5m").expect("window")],
            dedup_horizon_ms: 86_400_000,
            retention_ms: 2 * 86_400_000,
        };
        Arc::new(ShardCore::new(0, engine, Arc::new(ChangeFeed::default())))
    }

    fn test_config(batch_max_swaps: usize) -> PipelineConfig {
        PipelineConfig {
            batch_max_swaps,
            batch_max_delay: Duration::from_millis(5),
            ready_max_lag: 0,
            limits: SwapLimits::default(),
        }
    }

    /// Runs the pipeline on a fresh test core in a task; returns the core, the
    /// stop flag and the task.
    fn spawn_pipeline<S: Store>(
        source: ListSource,
        store: Arc<S>,
        config: PipelineConfig,
    ) -> (
        Arc<ShardCore>,
        StopFlag,
        tokio::task::JoinHandle<Result<(), PipelineError>>,
    ) {
        let core = test_core();
        let stop = StopFlag::default();
        let pipeline = tokio::spawn(run_pipeline(
            core.clone(),
            source,
            store,
            LogDeadLetters,
            config,
            stop.clone(),
        ));
        (core, stop, pipeline)
    }

    #[tokio::test]
    async fn stopping_during_a_store_outage_commits_nothing() {
        let (source, committed) = list_source(0, 20);
        let (core, stop, pipeline) = spawn_pipeline(source, Arc::new(DownStore), test_config(100));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!core.is_ready(), "a failing store makes the shard unready");
        stop.set();
        let result = tokio::time::timeout(Duration::from_secs(5), pipeline).await;
        assert!(matches!(result, Ok(Ok(Ok(())))), "the pipeline stops");
        assert_eq!(committed.load(Ordering::Relaxed), -1, "nothing committed");
        assert_eq!(core.counters.batches.load(Ordering::Relaxed), 0);
        assert_eq!(core.counters.applied_offset.load(Ordering::Relaxed), -1);
    }

    /// Waits until offset `last` is committed, then stops the pipeline and
    /// checks that it ends cleanly.
    async fn stop_once_committed(
        committed: &AtomicI64,
        last: i64,
        stop: &StopFlag,
        pipeline: tokio::task::JoinHandle<Result<(), PipelineError>>,
    ) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while committed.load(Ordering::Relaxed) < last {
            assert!(Instant::now() < deadline, "offset {last} never committed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.set();
        let result = tokio::time::timeout(Duration::from_secs(5), pipeline).await;
        assert!(matches!(result, Ok(Ok(Ok(())))), "the pipeline stops");
    }

    #[tokio::test]
    async fn a_free_store_takes_a_batch_without_waiting_out_the_delay() {
        // Three records, then nothing: with the store free, the batch goes as
        // soon as no more records are waiting, not after batch_max_delay.
        let (source, committed) = list_source(0, 3);
        let config = PipelineConfig {
            batch_max_delay: Duration::from_secs(3600),
            ..test_config(100)
        };
        let (core, stop, pipeline) =
            spawn_pipeline(source, Arc::new(MemoryStore::default()), config);
        // The delay is an hour: only a batch that did not wait gets committed.
        stop_once_committed(&committed, 2, &stop, pipeline).await;
        assert_eq!(core.counters.batches.load(Ordering::Relaxed), 1);
    }

    /// A memory store whose first `slow_calls` persist calls take 200 ms.
    #[derive(Default)]
    struct SlowStore {
        inner: MemoryStore,
        slow_calls: u64,
        calls: std::sync::atomic::AtomicU64,
    }

    impl Store for SlowStore {
        async fn persist(&self, batch: &PersistBatch<'_>) -> Result<PersistOutcome, StoreError> {
            if self.calls.fetch_add(1, Ordering::Relaxed) < self.slow_calls {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            self.inner.persist(batch).await
        }
        async fn load(&self, partition: u32, now_ms: i64) -> Result<Restored, StoreError> {
            self.inner.load(partition, now_ms).await
        }
        async fn load_token(
            &self,
            partition: u32,
            token: &str,
            now_ms: i64,
        ) -> Result<Option<BatchEffect>, StoreError> {
            self.inner.load_token(partition, token, now_ms).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_batch_goes_when_the_store_frees_up() {
        // Two full batches keep the store busy; the third, partial one waits
        // for more records only until one of them is persisted (the delay is
        // an hour).
        let (source, committed) = list_source(0, 25);
        let store = Arc::new(SlowStore {
            slow_calls: u64::MAX,
            ..SlowStore::default()
        });
        let config = PipelineConfig {
            batch_max_delay: Duration::from_secs(3600),
            ..test_config(10)
        };
        let (core, stop, pipeline) = spawn_pipeline(source, store, config);
        stop_once_committed(&committed, 24, &stop, pipeline).await;
        assert_eq!(core.counters.batches.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_overtakes_its_predecessor_waits_for_it() {
        let (source, committed) = list_source(0, 30);
        // Only the first call is slow: the second batch reaches the store first.
        let store = Arc::new(SlowStore {
            slow_calls: 1,
            ..SlowStore::default()
        });
        let (core, stop, pipeline) = spawn_pipeline(source, store.clone(), test_config(10));
        stop_once_committed(&committed, 29, &stop, pipeline).await;
        let c = &core.counters;
        assert_eq!(c.batches.load(Ordering::Relaxed), 3);
        assert_eq!(c.applied_offset.load(Ordering::Relaxed), 29);
        // The second batch was refused once (out of order), then applied.
        assert!(
            c.store_calls.load(Ordering::Relaxed) > 3,
            "no batch overtook the slow one"
        );
        let stored = store.load(0, crate::now_ms()).await.expect("load");
        assert_eq!(stored.applied_offset, Some(29));
    }

    #[tokio::test]
    async fn a_store_moved_on_by_another_writer_stops_the_pipeline() {
        // Another writer already applied offsets up to 150; this shard starts
        // as if nothing had been applied, at offset 200.
        let store = Arc::new(MemoryStore::default());
        let other = PersistBatch {
            partition: 0,
            first_offset: 0,
            last_offset: 150,
            follows: -1,
            effect: &BatchEffect::default(),
            now_ms: crate::now_ms(),
            lane: 0,
        };
        assert_eq!(
            store.persist(&other).await.expect("persist"),
            PersistOutcome::Applied
        );
        let (source, committed) = list_source(200, 10);
        let core = test_core();
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            run_pipeline(
                core.clone(),
                source,
                store,
                LogDeadLetters,
                test_config(100),
                StopFlag::default(),
            ),
        )
        .await
        .expect("the pipeline stops on its own");
        assert!(
            matches!(
                result,
                Err(PipelineError::Diverged {
                    partition: 0,
                    follows: -1,
                    stored: Some(150)
                })
            ),
            "{result:?}"
        );
        assert_eq!(committed.load(Ordering::Relaxed), -1, "nothing committed");
    }
}
