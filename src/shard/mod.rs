//! One partition's shard: its core (engine + health), the batch pipeline, and
//! the set of partitions a process holds.

mod core;
mod engine_lock;
mod local;
pub mod pipeline;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use self::core::{
    engine_config, ChangeFeed, ShardCore, ShardCounters, ADMIT_CHUNK_SWAPS, APPLY_CHUNK_SWAPS,
    EXPIRE_CHUNK_EVENTS, EXPIRE_CHUNK_TOKENS,
};
pub use engine_lock::ShuttingDown;
pub use local::{merge_top, LocalShards};
pub use pipeline::{
    run_pipeline, DeadLetterSink, LogDeadLetters, PipelineConfig, PipelineError, RecordSource,
    SourceError, SourceRecord,
};

/// A shared "please stop" flag for pipeline loops (set on SIGINT/SIGTERM).
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Asks every holder to stop.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// True once stop was asked.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
