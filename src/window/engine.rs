//! `WindowEngine`: all tokens of one partition, their buckets, wallets and dedup.

use crate::swap::Swap;

use super::{BatchCounts, BatchEffect, RankBy, TokenStats, TopEntry, WindowSpec};

/// Engine parameters, from `windows` and `ingest.*`.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub windows: Vec<WindowSpec>,
    pub dedup_horizon_ms: i64,
    pub retention_ms: i64,
}

/// What happened to one swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    Applied,
    /// Its event id was applied before, within the dedup horizon.
    Duplicate,
    /// Block time older than the dedup horizon: dropped.
    Late,
}

/// Sliding-window statistics for every token of one partition.
pub struct WindowEngine {
    config: EngineConfig,
}

impl WindowEngine {
    /// An empty engine.
    pub fn new(config: EngineConfig) -> Self {
        Self { config }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Applies one swap at query clock `now_ms`.
    pub fn apply(&mut self, swap: &Swap, now_ms: i64) -> ApplyOutcome {
        let _ = (swap, now_ms);
        todo!("engine helper")
    }

    /// Applies a batch and returns what it changed (for the store) and the counts.
    pub fn apply_batch(&mut self, swaps: &[Swap], now_ms: i64) -> (BatchEffect, BatchCounts) {
        let _ = (swaps, now_ms);
        todo!("engine helper")
    }

    /// Merges persisted effects back in (restart from the store).
    pub fn restore(&mut self, effect: &BatchEffect) {
        let _ = effect;
        todo!("engine helper")
    }

    /// Stats of `token` at `now_ms`; `None` when it has no swap within retention.
    pub fn stats(&self, token: &str, now_ms: i64) -> Option<TokenStats> {
        let _ = (token, now_ms);
        todo!("engine helper")
    }

    /// Top `limit` tokens of window `window` by `by`; `None` for an unknown window.
    pub fn top(
        &self,
        window: &str,
        by: RankBy,
        limit: usize,
        now_ms: i64,
    ) -> Option<Vec<TopEntry>> {
        let _ = (window, by, limit, now_ms);
        todo!("engine helper")
    }

    /// Drops buckets, wallet marks and dedup entries that aged out at `now_ms`.
    pub fn expire(&mut self, now_ms: i64) {
        let _ = now_ms;
        todo!("engine helper")
    }

    /// Number of tokens held.
    pub fn token_count(&self) -> usize {
        todo!("engine helper")
    }
}
