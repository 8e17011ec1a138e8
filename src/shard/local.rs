//! `LocalShards`: the partitions this process holds (all P in standalone mode,
//! one in shard mode), with token → partition routing by the murmur2 partitioner.

use std::sync::Arc;

use super::{ShardCore, ShuttingDown};
use crate::partition::partition_for;
use crate::window::{RankBy, TokenStats, TopEntry};

/// The shard cores of this process, indexed by partition.
pub struct LocalShards {
    partitions: u32,
    cores: Vec<Arc<ShardCore>>,
}

impl LocalShards {
    /// `cores` are the partitions held here, out of `partitions` in total.
    pub fn new(partitions: u32, cores: Vec<Arc<ShardCore>>) -> Self {
        Self { partitions, cores }
    }

    /// All cores held.
    pub fn cores(&self) -> &[Arc<ShardCore>] {
        &self.cores
    }

    /// The core owning `token`, if this process holds its partition.
    pub fn core_for(&self, token: &str) -> Option<&Arc<ShardCore>> {
        let p = partition_for(token, self.partitions);
        self.cores.iter().find(|c| c.partition == p)
    }

    /// Stats of a token held here (`None`: not held here, or no swaps in
    /// retention). Never holds a runtime worker while the engine is busy
    /// (see [`ShardCore::read`]).
    pub async fn stats(
        &self,
        token: &str,
        now_ms: i64,
    ) -> Result<Option<TokenStats>, ShuttingDown> {
        let Some(core) = self.core_for(token) else {
            return Ok(None);
        };
        let token = token.to_owned();
        core.read(move |engine| engine.stats(&token, now_ms)).await
    }

    /// Top tokens over all partitions held; `None` for an unknown window.
    pub async fn top(
        &self,
        window: &str,
        by: RankBy,
        limit: usize,
        now_ms: i64,
    ) -> Result<Option<Vec<TopEntry>>, ShuttingDown> {
        let mut all = Vec::new();
        for core in &self.cores {
            let window = window.to_owned();
            let top = core
                .read(move |engine| engine.top(&window, by, limit, now_ms))
                .await?;
            let Some(top) = top else { return Ok(None) };
            all.extend(top);
        }
        Ok(Some(merge_top(all, limit)))
    }

    /// True when every partition held is ready.
    pub fn all_ready(&self) -> bool {
        self.cores.iter().all(|c| c.is_ready())
    }
}

/// Merges per-partition top lists: by value descending (`None` last), then token.
pub fn merge_top(mut entries: Vec<TopEntry>, limit: usize) -> Vec<TopEntry> {
    entries.sort_by(|a, b| {
        let value_order = match (a.value, b.value) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        value_order.then_with(|| a.token.cmp(&b.token))
    });
    entries.truncate(limit);
    entries
}
