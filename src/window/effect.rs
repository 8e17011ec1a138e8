//! What a batch changed, in the form the store persists and a restart restores.
//! Applying the same effects to an empty engine rebuilds the same state, which is
//! how a shard restarts from Redis.

use std::collections::hash_map::Entry;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::hash::FastMap;
use super::Bucket;

/// Bucket resolution: second buckets cover the last two hours (for windows up to
/// 1 h and their previous window), minute buckets cover 48 h.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Level {
    Second,
    Minute,
}

/// 128-bit hash of an event id: what dedup remembers (collision odds ~1e-20 at 1e9 ids).
pub type EventKey = u128;

/// Hashes an event id for dedup.
pub fn event_key(event_id: &str) -> EventKey {
    xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
}

/// The tie-breaker for open/close among swaps of the same millisecond: the low
/// half of the swap's event key, so a swap's id is hashed once.
pub fn price_tie(key: EventKey) -> u64 {
    key as u64
}

/// One bucket of one token touched by a batch. `at` is unix seconds for
/// [`Level::Second`], unix minutes for [`Level::Minute`].
///
/// The store writes `total`, so persisting costs the script no read and no
/// merge; restoring merges `delta`, so restoring a sequence of batches rebuilds
/// bit-identical state. A bucket loaded from the store has `delta == total`
/// (it is merged into an empty engine).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketDelta {
    /// Shared with the engine's token: an effect costs no copy of the name.
    pub token: Arc<str>,
    pub level: Level,
    pub at: i64,
    /// What the batch added.
    pub delta: Bucket,
    /// The bucket after the batch.
    pub total: Bucket,
}

/// Side bits of a wallet's activity in one bucket.
pub const SIDE_BUY: u8 = 1;
/// Side bits of a wallet's activity in one bucket.
pub const SIDE_SELL: u8 = 2;

/// A wallet was active on a token in a bucket (bits: [`SIDE_BUY`] | [`SIDE_SELL`]);
/// only marks that add a bit are emitted, and one (token, wallet, level, at)
/// may come as two marks of one side each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalletMark {
    pub token: Arc<str>,
    pub wallet: Arc<str>,
    pub level: Level,
    pub at: i64,
    pub sides: u8,
}

/// An applied event id and its block time (dedup forgets it after the horizon).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AppliedEvent {
    pub key: EventKey,
    pub executed_at_ms: i64,
}

/// Where each bucket of an effect is, by token name, level and key.
type BucketIndex = FastMap<(Arc<str>, Level, i64), usize>;

/// Everything one batch changed. Bucket deltas are pre-merged per (token, level, at).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchEffect {
    pub buckets: Vec<BucketDelta>,
    pub wallets: Vec<WalletMark>,
    pub events: Vec<AppliedEvent>,
}

impl BatchEffect {
    /// True when the batch changed nothing (all duplicates, late or empty).
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty() && self.events.is_empty()
    }

    /// The effects of consecutive batches as the effect of one batch (a large
    /// store write applied in engine-sized parts), in the order applied.
    ///
    /// A bucket several parts touched stays one entry, with the last total and
    /// the deltas merged: the store writes each touched bucket once, its total,
    /// so it persists what one batch would have. Restoring the merged delta
    /// gives the engine's state up to the rounding of the float sums (a restart
    /// from the store restores totals, so it is bit-identical). Wallet marks
    /// and events are appended: a mark carries only the bits its part added and
    /// an event is applied once, so neither repeats across parts. One part
    /// comes back as it is; the bucket index is built once for all the others.
    pub fn merged(parts: impl IntoIterator<Item = BatchEffect>) -> BatchEffect {
        let mut parts = parts.into_iter().peekable();
        let mut merged = parts.next().unwrap_or_default();
        let Some(next) = parts.peek() else {
            return merged;
        };
        // Keyed by the name, not its allocation: equal names must become one
        // entry whatever their addresses, or the store would get a field twice.
        let mut at = BucketIndex::with_capacity_and_hasher(
            merged.buckets.len() + next.buckets.len(),
            Default::default(),
        );
        for (i, d) in merged.buckets.iter().enumerate() {
            at.insert((d.token.clone(), d.level, d.at), i);
        }
        for later in parts {
            merged.buckets.reserve(later.buckets.len());
            for d in later.buckets {
                match at.entry((d.token.clone(), d.level, d.at)) {
                    Entry::Occupied(i) => {
                        let kept = &mut merged.buckets[*i.get()];
                        kept.delta.merge(&d.delta);
                        kept.total = d.total;
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(merged.buckets.len());
                        merged.buckets.push(d);
                    }
                }
            }
            merged.wallets.extend(later.wallets);
            merged.events.extend(later.events);
        }
        merged
    }

    /// The tokens this effect touches, each name once per allocation: the
    /// engine's effects share one per token, so these are distinct there
    /// (shared, not copied: a batch touches thousands).
    pub fn tokens(&self) -> Vec<Arc<str>> {
        let mut tokens: Vec<Arc<str>> = self.buckets.iter().map(|d| d.token.clone()).collect();
        tokens.sort_unstable_by_key(name_address);
        tokens.dedup_by(|a, b| Arc::ptr_eq(a, b));
        tokens
    }
}

/// The address of a name's shared allocation. An engine's effects clone one
/// allocation per token and per wallet, so within them equal addresses mean
/// equal names; equal names at other addresses (built apart) only compare
/// unequal, which costs the callers a saving, never correctness.
pub fn name_address(name: &Arc<str>) -> usize {
    Arc::as_ptr(name) as *const u8 as usize
}

/// Counts of what happened to a batch's swaps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCounts {
    pub applied: u64,
    pub duplicates: u64,
    /// Block time older than the dedup horizon / retention: dropped.
    pub late: u64,
}

impl std::ops::AddAssign for BatchCounts {
    fn add_assign(&mut self, other: Self) {
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.late += other.late;
    }
}
