//! Dedup of event ids within the horizon. A swap's event key is remembered with
//! its block time; keys are indexed by block second so that forgetting the ones
//! older than the horizon touches only those, never the whole set, and costs
//! the same whether it runs every batch or every few seconds.

use super::hash::{FastMap, FastSet};
use super::EventKey;

const SECOND_MS: i64 = 1000;

/// The set of remembered event keys, with their block seconds.
#[derive(Debug)]
pub(crate) struct Dedup {
    keys: FastSet<EventKey>,
    by_second: FastMap<i64, Vec<EventKey>>,
    /// No key is in a second before this one (`i64::MAX` while none is held):
    /// where [`Dedup::expire`] starts.
    first_second: i64,
}

impl Default for Dedup {
    fn default() -> Self {
        Self {
            keys: FastSet::default(),
            by_second: FastMap::default(),
            first_second: i64::MAX,
        }
    }
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
        let second = executed_at_ms.div_euclid(SECOND_MS);
        self.by_second.entry(second).or_default().push(key);
        self.first_second = self.first_second.min(second);
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
        for (second, keys) in other.by_second {
            for key in keys {
                self.insert(key, second * SECOND_MS);
            }
        }
    }

    /// Forgets every key whose block second is before the second of
    /// `cutoff_ms`: a key is kept for the horizon, and at most a second longer.
    /// Kept to the millisecond, every call had to sift the whole minute that
    /// straddled the cut-off; whole seconds tell apart only whether a swap
    /// already past the horizon is counted late or duplicate.
    #[cfg(test)]
    pub(crate) fn expire(&mut self, cutoff_ms: i64) {
        self.expire_some(cutoff_ms, usize::MAX);
    }

    /// Like [`Dedup::expire`], forgetting at most `max_keys` keys (at full
    /// rate a second holds hundreds of thousands); true when more are due.
    pub(crate) fn expire_some(&mut self, cutoff_ms: i64, max_keys: usize) -> bool {
        let cut = cutoff_ms.div_euclid(SECOND_MS);
        if cut <= self.first_second {
            return false;
        }
        let Self {
            keys,
            by_second,
            first_second,
        } = self;
        fn forget(expired: impl IntoIterator<Item = EventKey>, keys: &mut FastSet<EventKey>) {
            for key in expired {
                keys.remove(&key);
            }
        }
        if cut.saturating_sub(*first_second) as u64 > by_second.len() as u64 {
            // Fewer seconds held than passed (after a quiet spell): visit those.
            by_second.retain(|&second, expired| {
                let keep = second >= cut;
                if !keep {
                    forget(std::mem::take(expired), keys);
                }
                keep
            });
        } else {
            let mut budget = max_keys;
            for second in *first_second..cut {
                let Some(expired) = by_second.get_mut(&second) else {
                    continue;
                };
                let count = expired.len().min(budget);
                forget(expired.drain(expired.len() - count..), keys);
                budget -= count;
                if !expired.is_empty() {
                    *first_second = second;
                    return true;
                }
                by_second.remove(&second);
            }
        }
        *first_second = if by_second.is_empty() { i64::MAX } else { cut };
        false
    }

    /// Approximate heap bytes held.
    pub(crate) fn approx_heap_bytes(&self) -> usize {
        self.keys.capacity() * (std::mem::size_of::<EventKey>() + 1)
            + self.by_second.capacity() * (std::mem::size_of::<(i64, Vec<EventKey>)>() + 1)
            + self
                .by_second
                .values()
                .map(|v| v.capacity() * std::mem::size_of::<EventKey>())
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
    fn remembers_until_the_second_of_the_cutoff() {
        let mut dedup = Dedup::default();
        assert!(dedup.insert(1, 120_000 + 999));
        assert!(dedup.insert(2, 121_000));
        assert!(dedup.insert(3, 60_000));
        assert!(dedup.insert(4, 121_999));
        assert!(!dedup.insert(1, 0));
        assert!(dedup.contains(1) && dedup.contains(2) && dedup.contains(3));
        dedup.expire(121_500);
        assert!(!dedup.contains(1), "a second before the cutoff's");
        assert!(!dedup.contains(3), "a minute before");
        assert!(dedup.contains(2), "the cutoff's second is kept");
        assert!(dedup.contains(4), "the cutoff's second is kept");
        assert_eq!(dedup.len(), 2);
        dedup.expire(i64::MAX);
        assert_eq!(dedup.len(), 0);
        assert!(dedup.insert(5, 0), "usable again after everything expired");
        dedup.expire(1000);
        assert_eq!(dedup.len(), 0);
    }

    /// Expiry in calls of at most 4 keys forgets what one call forgets, and
    /// no more: the seconds it has not reached yet stay whole.
    #[test]
    fn expiry_in_small_calls_forgets_the_same() {
        let mut dedup = Dedup::default();
        for key in 0..10 {
            dedup.insert(key, 1_000);
        }
        for key in 10..15 {
            dedup.insert(key, 2_000);
        }
        dedup.insert(99, 3_000);
        let mut calls = 0;
        while dedup.expire_some(3_000, 4) {
            calls += 1;
            assert!(dedup.contains(99), "the cutoff's second is kept");
        }
        assert_eq!(calls, 3, "15 keys, 4 per call: 3 calls say more is due");
        assert_eq!(dedup.len(), 1);
        assert!((0..15).all(|key| !dedup.contains(key)));
        assert!(!dedup.expire_some(3_000, 4), "nothing more due");
        assert!(!dedup.insert(99, 3_000), "kept as a duplicate");
    }

    #[test]
    fn expiry_step_by_step_and_after_a_long_pause_forget_the_same() {
        let mut stepped = Dedup::default();
        let mut paused = Dedup::default();
        for i in 0..10_000u128 {
            let at = (i as i64) * 37;
            stepped.insert(i, at);
            paused.insert(i, at);
        }
        for cutoff in (0..=200_000).step_by(250) {
            stepped.expire(cutoff);
        }
        paused.expire(200_000);
        assert_eq!(stepped.len(), paused.len());
        for i in 0..10_000u128 {
            let kept = (i as i64) * 37 >= 200_000;
            assert_eq!(stepped.contains(i), kept, "{i}");
            assert_eq!(paused.contains(i), kept, "{i}");
        }
    }

    #[test]
    fn a_key_older_than_the_last_cutoff_still_expires() {
        let mut dedup = Dedup::default();
        dedup.insert(1, 50_000);
        dedup.expire(40_000);
        // Inserted behind the last cut-off (a batch stamped before the expiry).
        dedup.insert(2, 30_000);
        dedup.expire(45_000);
        assert!(!dedup.contains(2) && dedup.contains(1));
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
            dedup.expire(60_999);
            assert!(dedup.contains(1) && !dedup.contains(2) && !dedup.contains(3));
            dedup.expire(61_000);
            assert!(!dedup.contains(1));
        }
    }

    #[test]
    fn negative_times_index_by_floor_second() {
        let mut dedup = Dedup::default();
        dedup.insert(7, -1);
        dedup.expire(-1);
        assert!(dedup.contains(7));
        dedup.expire(0);
        assert!(!dedup.contains(7));
    }
}
