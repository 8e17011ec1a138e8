//! Dedup of event ids within the horizon. A swap's event key is remembered with
//! its block time; keys are indexed by block minute so that forgetting the ones
//! older than the horizon touches only those, never the whole set.

use super::hash::{FastMap, FastSet};
use super::EventKey;

const MINUTE_MS: i64 = 60_000;

/// An event key in the per-minute expiry index, with its block time's offset in
/// that minute (for the minute that straddles the cut-off).
#[derive(Debug, Clone, Copy)]
struct IndexedKey {
    low: u64,
    high: u64,
    ms_in_minute: u16,
}

impl IndexedKey {
    fn key(&self) -> EventKey {
        (u128::from(self.high) << 64) | u128::from(self.low)
    }
}

/// The set of remembered event keys, with their block times.
#[derive(Debug, Default)]
pub(crate) struct Dedup {
    keys: FastSet<EventKey>,
    by_minute: FastMap<i64, Vec<IndexedKey>>,
}

impl Dedup {
    /// True when `key` is remembered.
    #[inline]
    pub(crate) fn contains(&self, key: EventKey) -> bool {
        self.keys.contains(&key)
    }

    /// Remembers `key` with its block time; false when it was already remembered.
    #[inline]
    pub(crate) fn insert(&mut self, key: EventKey, executed_at_ms: i64) -> bool {
        if !self.keys.insert(key) {
            return false;
        }
        let minute = executed_at_ms.div_euclid(MINUTE_MS);
        let ms_in_minute = executed_at_ms.rem_euclid(MINUTE_MS) as u16;
        self.by_minute.entry(minute).or_default().push(IndexedKey {
            low: key as u64,
            high: (key >> 64) as u64,
            ms_in_minute,
        });
        true
    }

    /// Makes room for `additional` more keys at once (a restore knows how many
    /// come), instead of rehashing the set each time it doubles.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.keys.reserve(additional);
    }

    /// Takes over every key of `other` (a set built apart, see
    /// [`super::RestoredEvents`]); an empty set just becomes `other`.
    pub(crate) fn absorb(&mut self, other: Dedup) {
        if self.keys.is_empty() {
            *self = other;
            return;
        }
        self.reserve(other.len());
        for (minute, entries) in other.by_minute {
            for entry in entries {
                let at_ms = minute * MINUTE_MS + i64::from(entry.ms_in_minute);
                self.insert(entry.key(), at_ms);
            }
        }
    }

    /// Forgets every key whose block time is before `cutoff_ms`.
    pub(crate) fn expire(&mut self, cutoff_ms: i64) {
        let cut_minute = cutoff_ms.div_euclid(MINUTE_MS);
        let Self { keys, by_minute } = self;
        by_minute.retain(|&minute, entries| {
            if minute < cut_minute {
                for entry in entries.iter() {
                    keys.remove(&entry.key());
                }
                false
            } else if minute == cut_minute {
                let cut_ms = cutoff_ms.rem_euclid(MINUTE_MS) as u16;
                entries.retain(|entry| {
                    let keep = entry.ms_in_minute >= cut_ms;
                    if !keep {
                        keys.remove(&entry.key());
                    }
                    keep
                });
                !entries.is_empty()
            } else {
                true
            }
        });
    }

    /// Approximate heap bytes held.
    pub(crate) fn approx_heap_bytes(&self) -> usize {
        self.keys.capacity() * (std::mem::size_of::<EventKey>() + 1)
            + self.by_minute.capacity() * (std::mem::size_of::<(i64, Vec<IndexedKey>)>() + 1)
            + self
                .by_minute
                .values()
                .map(|v| v.capacity() * std::mem::size_of::<IndexedKey>())
                .sum::<usize>()
    }

    /// Number of remembered keys.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_the_cutoff_to_the_millisecond() {
        let mut dedup = Dedup::default();
        assert!(dedup.insert(1, 120_000 + 500));
        assert!(dedup.insert(2, 120_000 + 501));
        assert!(dedup.insert(3, 60_000));
        assert!(!dedup.insert(1, 0));
        assert!(dedup.contains(1) && dedup.contains(2) && dedup.contains(3));
        dedup.expire(120_000 + 501);
        assert!(!dedup.contains(1), "before the cutoff");
        assert!(!dedup.contains(3), "a whole minute before");
        assert!(dedup.contains(2), "exactly at the cutoff is kept");
        assert_eq!(dedup.len(), 1);
        dedup.expire(i64::MAX);
        assert_eq!(dedup.len(), 0);
    }

    #[test]
    fn absorb_keeps_every_key_and_its_time() {
        let built = || {
            let mut dedup = Dedup::default();
            dedup.insert(1, 60_000 + 7);
            dedup.insert(2, -1);
            dedup
        };
        let mut empty = Dedup::default();
        empty.absorb(built());
        let mut held = Dedup::default();
        held.insert(3, 0);
        held.absorb(built());
        for dedup in [&mut empty, &mut held] {
            assert!(dedup.contains(1) && dedup.contains(2));
            dedup.expire(60_000 + 7);
            assert!(dedup.contains(1) && !dedup.contains(2) && !dedup.contains(3));
            dedup.expire(60_000 + 8);
            assert!(!dedup.contains(1));
        }
    }

    #[test]
    fn negative_times_index_by_floor_minute() {
        let mut dedup = Dedup::default();
        dedup.insert(7, -1);
        dedup.expire(-1);
        assert!(dedup.contains(7));
        dedup.expire(0);
        assert!(!dedup.contains(7));
    }
}
