//! What each partition's token index (`ss:{p}:tokens`) already holds, as far as
//! this process wrote it. A token's score is the last millisecond of the hour
//! of its newest data ([`super::codec::index_score`]), so it changes once an
//! hour; a batch leaves out the tokens whose score is already stored, and the
//! persist script's `ZADD` covers only a token's first batch in each hour
//! (about a tenth of the script's time when every batch re-added them all).
//!
//! Only batches the store applied are recorded, and a load forgets its
//! partition, so a stored score here is always one the index has (until the
//! index's own trim, which the check honours).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::window::FastMap;

/// Index scores written by applied batches, per partition.
#[derive(Debug, Default)]
pub(crate) struct IndexScores {
    partitions: Mutex<HashMap<u32, PartitionScores>>,
}

#[derive(Debug, Default)]
struct PartitionScores {
    by_token: FastMap<String, i64>,
    /// Entries the index has trimmed are dropped when the map reaches this size.
    prune_at: usize,
}

impl IndexScores {
    fn lock(&self) -> MutexGuard<'_, HashMap<u32, PartitionScores>> {
        // The map is a cache: after a panic elsewhere its entries are still
        // ones the store holds.
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with a check that says whether `partition`'s index holds
    /// `token` with `score` or more, and keeps it at the trim `cutoff` (the
    /// script removes scores below it).
    pub fn with_check<T>(
        &self,
        partition: u32,
        cutoff: i64,
        f: impl FnOnce(&dyn Fn(&str, i64) -> bool) -> T,
    ) -> T {
        let partitions = self.lock();
        let scores = partitions.get(&partition);
        f(&|token, score| {
            scores
                .and_then(|s| s.by_token.get(token))
                .is_some_and(|&stored| stored >= score && stored >= cutoff)
        })
    }

    /// Records the index entries of a batch the store applied; now and then
    /// drops the entries below the trim `cutoff`.
    pub fn record(&self, partition: u32, entries: Vec<(String, i64)>, cutoff: i64) {
        let mut partitions = self.lock();
        let scores = partitions.entry(partition).or_default();
        for (token, score) in entries {
            let stored = scores.by_token.entry(token).or_insert(score);
            *stored = (*stored).max(score);
        }
        if scores.by_token.len() >= scores.prune_at {
            scores.by_token.retain(|_, &mut stored| stored >= cutoff);
            scores.prune_at = (2 * scores.by_token.len()).max(1024);
        }
    }

    /// Forgets `partition`'s scores: at a load, or when the store's state is in
    /// doubt. The next batches add their tokens again (`ZADD GT` keeps the
    /// higher score).
    pub fn forget(&self, partition: u32) {
        self.lock().remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(scores: &IndexScores, partition: u32, token: &str, score: i64, cutoff: i64) -> bool {
        scores.with_check(partition, cutoff, |check| check(token, score))
    }

    #[test]
    fn a_recorded_score_covers_itself_and_lower_ones_until_trimmed_or_forgotten() {
        let scores = IndexScores::default();
        assert!(!stored(&scores, 1, "A", 10, 0));
        scores.record(1, vec![("A".into(), 10), ("B".into(), 5)], 0);
        assert!(stored(&scores, 1, "A", 10, 0));
        assert!(stored(&scores, 1, "A", 9, 0));
        assert!(!stored(&scores, 1, "A", 11, 0), "a higher score is new");
        assert!(!stored(&scores, 2, "A", 10, 0), "per partition");
        assert!(!stored(&scores, 1, "A", 10, 11), "trimmed by the index");
        scores.record(1, vec![("A".into(), 7)], 0);
        assert!(stored(&scores, 1, "A", 10, 0), "scores only rise");
        scores.forget(1);
        assert!(!stored(&scores, 1, "A", 10, 0));
    }

    #[test]
    fn pruning_drops_only_trimmed_entries() {
        let scores = IndexScores::default();
        let named = |prefix: &str, score: i64| -> Vec<(String, i64)> {
            (0..2000).map(|i| (format!("{prefix}{i}"), score)).collect()
        };
        // The first record prunes (nothing to drop) and sets the next size.
        scores.record(1, named("old", 5), 0);
        assert_eq!(scores.lock()[&1].by_token.len(), 2000);
        // Twice the size: the old entries, below the cutoff now, go.
        scores.record(1, named("new", 100), 50);
        assert!(stored(&scores, 1, "new7", 100, 50));
        assert_eq!(scores.lock()[&1].by_token.len(), 2000);
    }
}
