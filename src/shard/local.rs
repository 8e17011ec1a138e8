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
        self.core_index(token).map(|at| &self.cores[at])
    }

    /// Where in [`Self::cores`] the core owning `token` is, if held here.
    fn core_index(&self, token: &str) -> Option<usize> {
        let p = partition_for(token, self.partitions);
        self.cores.iter().position(|c| c.partition == p)
    }

    /// Stats of a token held here (`None`: not held here, or no swaps in
    /// retention). Never holds a runtime worker while the engine is busy
    /// (see [`ShardCore::read`]).
    pub async fn stats(
        &self,
        token: &str,
        now_ms: i64,
    ) -> Result<Option<TokenStats>, ShuttingDown> {
        Ok(self.stats_of(&[token], now_ms).await?.pop().flatten())
    }

    /// Stats of each of `tokens`, in their order (`None` as for [`Self::stats`]):
    /// one engine read per partition, so a request for many tokens waits for
    /// a busy engine once, not once per token.
    pub async fn stats_of<T: AsRef<str>>(
        &self,
        tokens: &[T],
        now_ms: i64,
    ) -> Result<Vec<Option<TokenStats>>, ShuttingDown> {
        let mut per_core: Vec<Vec<(usize, String)>> = vec![Vec::new(); self.cores.len()];
        for (i, token) in tokens.iter().enumerate() {
            let token = token.as_ref();
            if let Some(at) = self.core_index(token) {
                per_core[at].push((i, token.to_owned()));
            }
        }
        let mut answers: Vec<Option<TokenStats>> = (0..tokens.len()).map(|_| None).collect();
        for (core, asked) in self.cores.iter().zip(per_core) {
            if asked.is_empty() {
                continue;
            }
            let found = core
                .read(move |engine| {
                    let stats = |(i, token): (usize, String)| (i, engine.stats(&token, now_ms));
                    asked.into_iter().map(stats).collect::<Vec<_>>()
                })
                .await?;
            for (i, stats) in found {
                answers[i] = stats;
            }
        }
        Ok(answers)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swap::{Side, Swap};
    use crate::window::EngineConfig;

    /// Tokens of both partitions, some held and some not: each answer lands
    /// at its token's place, `None` for a token without swaps.
    #[tokio::test]
    async fn stats_of_answers_each_token_in_order() {
        let now = crate::now_ms();
        let tokens: Vec<String> = (0..12).map(|i| format!("T{i}")).collect();
        let cores: Vec<Arc<ShardCore>> = (0..2)
            .map(|p| {
                Arc::new(ShardCore::new(
                    p,
                    EngineConfig::service_defaults(),
                    Arc::default(),
                ))
            })
            .collect();
        let shards = LocalShards::new(2, cores);
        // T0..T7 swapped i + 1 times; T8..T11 never.
        for (i, token) in tokens.iter().take(8).enumerate() {
            let swaps: Vec<Swap> = (0..=i)
                .map(|n| Swap {
                    event_id: format!("{token}-{n}"),
                    token: token.clone(),
                    wallet: None,
                    side: Side::Sell,
                    amount: 1.0,
                    usd: 1.0,
                    rate: 1.0,
                    created_at_ms: None,
                    executed_at_ms: now - 1_000,
                })
                .collect();
            let core = shards.core_for(token).expect("both partitions held");
            core.apply_batch(&swaps, now);
        }
        let partitions: Vec<u32> = tokens.iter().map(|t| partition_for(t, 2)).collect();
        assert!(
            partitions.contains(&0) && partitions.contains(&1),
            "{partitions:?}"
        );
        let mut asked = tokens.clone();
        asked.reverse();
        let answers = shards.stats_of(&asked, now).await.expect("runtime up");
        assert_eq!(answers.len(), asked.len());
        for (token, stats) in asked.iter().zip(&answers) {
            let i: usize = token[1..].parse().expect("T<i>");
            match stats {
                Some(stats) => {
                    assert_eq!(&stats.token, token);
                    let txns = stats.windows.get("5m").map(|w| w.current.txns);
                    assert_eq!(txns, Some(i as u64 + 1), "{token}");
                }
                None => assert!(i >= 8, "{token} has swaps"),
            }
        }
        // A partition not held here: no answer rather than another's.
        let one = LocalShards::new(2, vec![shards.cores()[0].clone()]);
        let answers = one.stats_of(&tokens, now).await.expect("runtime up");
        for ((token, stats), p) in tokens.iter().zip(&answers).zip(&partitions) {
            assert_eq!(
                stats.is_some(),
                *p == 0 && token[1..].parse::<usize>().is_ok_and(|i| i < 8),
                "{token}"
            );
        }
    }
}
