//! The window engine: per-token sliding-window statistics. Pure data structures,
//! no I/O and no async, so it is tested against a naive oracle and benchmarked alone.

mod bucket;
mod counter;
mod dedup;
mod effect;
mod engine;
mod hash;
mod marks;
mod series;
mod spec;
mod stats;
mod token;

pub use bucket::{Bucket, PricePoint};
pub use effect::{
    event_key, name_address, price_tie, AppliedEvent, BatchCounts, BatchEffect, BucketDelta,
    EventKey, Level, WalletMark, SIDE_BUY, SIDE_SELL,
};
pub(crate) use engine::WARM_AHEAD;
pub use engine::{
    chunk_ranges, AdmittedBatch, ApplyOutcome, EngineConfig, EngineTuning, RestoredEvents,
    WindowEngine,
};
pub(crate) use hash::FastMap;
pub use spec::{SecondRange, WindowRanges, WindowSpec, MAX_WINDOW_SECS, SECOND_EXACT_MAX_SECS};
pub use stats::{
    ChangePct, PeriodStats, RankBy, TokenStats, TopEntry, WindowList, WindowStats, Windows,
};
