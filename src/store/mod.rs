//! Where batches are persisted: one atomic write per batch, fenced by the
//! partition's applied offset, and read back on restart (and by the router's
//! fallback). Implementations: in-memory (standalone), single Redis, Redis Cluster.

use std::future::Future;

use crate::window::BatchEffect;

pub mod codec;
mod hash_reader;
mod index_scores;
pub mod keys;
mod memory;
mod redis;
pub use memory::MemoryStore;
pub use redis::{sort_effect, RedisStore, RedisStoreOptions};

/// Store failures. A failed persist is retried by the shard; nothing is skipped.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("store returned unexpected data: {0}")]
    Corrupt(String),
    /// The store is misconfigured (e.g. no Redis URL).
    #[error("store configuration: {0}")]
    Config(String),
    /// The batch cannot be persisted as given (reversed offsets, a string too long).
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// The batch (or the fenced state) reached the master but no replica
    /// acknowledged it in time; a failover could lose it, so the caller retries.
    #[error("partition {partition}: write not acknowledged by any of {replicas} replicas")]
    NotReplicated { partition: u32, replicas: i64 },
    /// Batches kept landing while the partition was being loaded.
    #[error("partition {partition}: applied offset kept moving while loading")]
    Unstable { partition: u32 },
}

/// One batch as it is persisted: its Kafka offset range and what it changed.
#[derive(Debug, Clone)]
pub struct PersistBatch<'a> {
    pub partition: u32,
    /// First and last source offset the batch covers (inclusive).
    pub first_offset: i64,
    pub last_offset: i64,
    /// The applied offset this batch follows: the previous batch's last offset,
    /// -1 for the partition's first. The store applies the batch only when it
    /// holds exactly this offset (compare-and-set), so a batch persisted while
    /// its predecessor is still in flight can never land before it.
    pub follows: i64,
    pub effect: &'a BatchEffect,
    /// Clock of the batch, for TTLs.
    pub now_ms: i64,
    /// Which of the store's write connections carries the batch (taken modulo
    /// their number). Consecutive batches use different lanes, so one batch can
    /// wait for its replica while the next one runs on the master.
    pub lane: usize,
}

/// Result of a persist call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistOutcome {
    /// Written; the applied offset is now `last_offset`.
    Applied,
    /// Refused: the batch starts at or below the stored applied offset, which
    /// is returned (a replay or a zombie writer; nothing was changed).
    Fenced { applied_offset: i64 },
    /// Refused: the store holds another applied offset than the one the batch
    /// follows (returned; `None`: nothing applied). Either the previous batch
    /// has not landed yet, or another writer moved the partition. Nothing was
    /// changed.
    OutOfOrder { applied_offset: Option<i64> },
}

/// A partition's persisted state, as read at start-up.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// Last applied source offset; `None` when nothing was ever applied.
    pub applied_offset: Option<i64>,
    /// Everything still within retention, as one merged effect.
    pub effect: BatchEffect,
}

/// A batch store.
pub trait Store: Send + Sync + 'static {
    /// Atomically persists `batch` unless it is fenced.
    fn persist(
        &self,
        batch: &PersistBatch<'_>,
    ) -> impl Future<Output = Result<PersistOutcome, StoreError>> + Send;

    /// Reads back everything persisted for `partition`, as one effect.
    fn load(
        &self,
        partition: u32,
        now_ms: i64,
    ) -> impl Future<Output = Result<Restored, StoreError>> + Send;

    /// Reads back everything persisted for `partition` in parts, handing each
    /// to `sink` as it arrives (a restart restores while it reads and never
    /// holds its whole state twice), and returns the applied offset. Fails
    /// with [`StoreError::Unstable`] when batches landed meanwhile: the caller
    /// forgets what `sink` got and calls again.
    fn load_into(
        &self,
        partition: u32,
        now_ms: i64,
        sink: &mut (impl FnMut(BatchEffect) + Send),
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send {
        async move {
            let restored = self.load(partition, now_ms).await?;
            sink(restored.effect);
            Ok(restored.applied_offset)
        }
    }

    /// Reads one token's persisted buckets and wallet marks (for the router's
    /// fallback); `None` when the token has nothing persisted.
    fn load_token(
        &self,
        partition: u32,
        token: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<Option<BatchEffect>, StoreError>> + Send;
}
