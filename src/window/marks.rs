//! Wallet activity of one token at one level: which wallets were active in which
//! bucket, and on which side. Unique counts are computed from it exactly.
//!
//! Three shapes, by how busy the token is:
//! - `Flat`: a few marks in one sorted vector (a quiet token costs a few bytes);
//! - `Wallets` without counters: per wallet, its sorted bucket keys with side
//!   bits; a unique count checks each wallet;
//! - `Wallets` with [`Counters`]: the same lists plus difference arrays that
//!   answer each unique count in O(1), for tokens with many wallets.

use super::counter::{Counters, CLASS_ANY, CLASS_BUY, CLASS_SELL, NONE};
use super::hash::FastMap;
use super::{SIDE_BUY, SIDE_SELL};

/// Thresholds for switching between shapes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MarkLimits {
    /// More marks than this: per-wallet lists.
    pub(crate) flat_max: usize,
    /// More wallets than this: counters.
    pub(crate) counters_min_wallets: usize,
}

/// Most marks the flat shape may hold (its queries sort a stack copy).
pub(crate) const FLAT_CAPACITY: usize = 64;

/// A mark packed in an `i64`: `key << 2 | side bits`. Order of packed marks is
/// the order of keys (a key appears once per wallet).
#[inline]
fn pack(key: i64, sides: u8) -> i64 {
    (key << 2) | i64::from(sides)
}

#[inline]
fn key_of(packed: i64) -> i64 {
    packed >> 2
}

#[inline]
fn sides_of(packed: i64) -> u8 {
    (packed & 3) as u8
}

/// Side bits that put a mark in the chain of `class`.
#[inline]
fn class_mask(class: usize) -> u8 {
    match class {
        CLASS_BUY => SIDE_BUY,
        CLASS_SELL => SIDE_SELL,
        _ => SIDE_BUY | SIDE_SELL,
    }
}

/// A mark of the flat shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct FlatMark {
    packed: i64,
    wallet: u32,
}

impl FlatMark {
    #[inline]
    fn order(&self) -> (i64, u32) {
        (key_of(self.packed), self.wallet)
    }
}

/// One wallet's marks, sorted by key, with its newest buy and sell keys.
#[derive(Debug, Clone)]
struct WalletMarks {
    marks: Vec<i64>,
    last_buy: i64,
    last_sell: i64,
}

impl WalletMarks {
    fn new() -> Self {
        Self {
            marks: Vec::new(),
            last_buy: NONE,
            last_sell: NONE,
        }
    }

    fn last_of(&self, class: usize) -> i64 {
        match class {
            CLASS_BUY => self.last_buy,
            CLASS_SELL => self.last_sell,
            _ => self.marks.last().map_or(NONE, |&m| key_of(m)),
        }
    }

    /// Side bits of this wallet in keys `[start, end)`.
    #[inline]
    fn sides_in(&self, start: i64, end: i64) -> u8 {
        if end == i64::MAX {
            return (u8::from(self.last_buy >= start) * SIDE_BUY)
                | (u8::from(self.last_sell >= start) * SIDE_SELL);
        }
        let from = self.marks.partition_point(|&m| key_of(m) < start);
        let mut sides = 0;
        for &m in &self.marks[from..] {
            if key_of(m) >= end {
                break;
            }
            sides |= sides_of(m);
            if sides == SIDE_BUY | SIDE_SELL {
                break;
            }
        }
        sides
    }
}

/// Per-wallet lists, optionally with counters.
#[derive(Debug, Clone)]
pub(crate) struct WalletIndex {
    wallets: FastMap<u32, WalletMarks>,
    marks: usize,
    oldest: i64,
    counters: Option<Counters>,
}

/// One range a unique count is asked for: keys `[start, end)`, and the counter
/// lane that answers it (0 for `end == i64::MAX`, else the lane of `end - start`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UniqueQuery {
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) lane: usize,
}

/// Distinct wallets, buyers and sellers.
pub(crate) type UniqueCounts = [u64; 3];

/// Wallet activity of one token at one level.
#[derive(Debug, Clone)]
pub(crate) enum MarkStore {
    Flat(Vec<FlatMark>),
    Wallets(Box<WalletIndex>),
}

impl Default for MarkStore {
    fn default() -> Self {
        Self::Flat(Vec::new())
    }
}

/// What an insertion changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MarkAdded {
    /// Side bits that were not there before.
    pub(crate) sides: u8,
    /// True when the (wallet, key) mark was created (the wallet gains a reference).
    pub(crate) created: bool,
}

impl MarkStore {
    /// Number of (wallet, key) marks.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Flat(marks) => marks.len(),
            Self::Wallets(index) => index.marks,
        }
    }

    /// True when no mark is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The oldest key held (a lower bound for the per-wallet shape between trims).
    pub(crate) fn oldest_key(&self) -> Option<i64> {
        match self {
            Self::Flat(marks) => marks.iter().map(|m| key_of(m.packed)).min(),
            Self::Wallets(index) => (index.marks > 0).then_some(index.oldest),
        }
    }

    /// True when the counters are built (for tests and reports).
    #[cfg(test)]
    pub(crate) fn has_counters(&self) -> bool {
        matches!(self, Self::Wallets(index) if index.counters.is_some())
    }

    /// Side bits of `wallet` at `key`.
    #[inline]
    pub(crate) fn sides(&self, wallet: u32, key: i64) -> u8 {
        match self {
            Self::Flat(marks) => {
                let probe = (key, wallet);
                match marks.last() {
                    Some(last) if last.order() < probe => 0,
                    _ => marks
                        .binary_search_by(|m| m.order().cmp(&probe))
                        .map_or(0, |i| sides_of(marks[i].packed)),
                }
            }
            Self::Wallets(index) => {
                index
                    .wallets
                    .get(&wallet)
                    .map_or(0, |w| match w.marks.last() {
                        Some(&last) if key_of(last) == key => sides_of(last),
                        Some(&last) if key_of(last) < key => 0,
                        _ => w
                            .marks
                            .binary_search_by_key(&key, |&m| key_of(m))
                            .map_or(0, |i| sides_of(w.marks[i])),
                    })
            }
        }
    }

    /// Adds side bits for `wallet` at `key`. `lens` are the level's finite window
    /// lengths (for counters).
    pub(crate) fn add(
        &mut self,
        wallet: u32,
        key: i64,
        sides: u8,
        lens: &[i64],
        limits: MarkLimits,
    ) -> MarkAdded {
        let added = match self {
            Self::Flat(marks) => {
                let probe = (key, wallet);
                let position = match marks.last() {
                    Some(last) if last.order() < probe => Err(marks.len()),
                    None => Err(0),
                    _ => marks.binary_search_by(|m| m.order().cmp(&probe)),
                };
                match position {
                    Ok(i) => {
                        let old = sides_of(marks[i].packed);
                        marks[i].packed |= i64::from(sides);
                        MarkAdded {
                            sides: sides & !old,
                            created: false,
                        }
                    }
                    Err(i) => {
                        if marks.len() == marks.capacity() && marks.len() < 4 {
                            marks.reserve_exact(1);
                        }
                        marks.insert(
                            i,
                            FlatMark {
                                packed: pack(key, sides),
                                wallet,
                            },
                        );
                        MarkAdded {
                            sides,
                            created: true,
                        }
                    }
                }
            }
            Self::Wallets(index) => index.add(wallet, key, sides),
        };
        if added.created {
            self.reshape_after_growth(lens, limits);
        }
        added
    }

    fn reshape_after_growth(&mut self, lens: &[i64], limits: MarkLimits) {
        if let Self::Flat(marks) = self {
            if marks.len() <= limits.flat_max.min(FLAT_CAPACITY) {
                return;
            }
            let mut index = WalletIndex {
                wallets: FastMap::default(),
                marks: 0,
                oldest: i64::MAX,
                counters: None,
            };
            for m in marks.iter() {
                index.add(m.wallet, key_of(m.packed), sides_of(m.packed));
            }
            *self = Self::Wallets(Box::new(index));
        }
        if let Self::Wallets(index) = self {
            if index.counters.is_none() && index.wallets.len() > limits.counters_min_wallets {
                index.build_counters(lens);
            }
        }
    }

    /// Drops marks with keys before `cut`, calling `release(wallet)` once per
    /// dropped mark. Returns true when any was dropped.
    pub(crate) fn trim(
        &mut self,
        cut: i64,
        limits: MarkLimits,
        mut release: impl FnMut(u32),
    ) -> bool {
        let dropped = match self {
            Self::Flat(marks) => {
                let before = marks.len();
                marks.retain(|m| {
                    let keep = key_of(m.packed) >= cut;
                    if !keep {
                        release(m.wallet);
                    }
                    keep
                });
                if marks.capacity() > 2 * marks.len().max(2) {
                    marks.shrink_to_fit();
                }
                marks.len() != before
            }
            Self::Wallets(index) => index.trim(cut, &mut release),
        };
        if let Self::Wallets(index) = self {
            if index.marks <= limits.flat_max.min(FLAT_CAPACITY) / 2 {
                let mut marks: Vec<FlatMark> = index
                    .wallets
                    .iter()
                    .flat_map(|(&wallet, w)| {
                        w.marks
                            .iter()
                            .map(move |&packed| FlatMark { packed, wallet })
                    })
                    .collect();
                marks.sort_unstable_by_key(FlatMark::order);
                *self = Self::Flat(marks);
            } else if index.counters.is_some()
                && index.wallets.len() < limits.counters_min_wallets / 4
            {
                index.counters = None;
            }
        }
        dropped
    }

    /// Calls `release(wallet)` once per mark and empties the store.
    pub(crate) fn release_all(&mut self, mut release: impl FnMut(u32)) {
        match self {
            Self::Flat(marks) => marks.iter().for_each(|m| release(m.wallet)),
            Self::Wallets(index) => {
                for (&wallet, w) in &index.wallets {
                    for _ in &w.marks {
                        release(wallet);
                    }
                }
            }
        }
        *self = Self::default();
    }

    /// Unique wallets, buyers and sellers for each query, into `out` (same length).
    pub(crate) fn uniques(&self, queries: &[UniqueQuery], out: &mut [UniqueCounts]) {
        out.iter_mut().for_each(|o| *o = [0; 3]);
        match self {
            Self::Flat(marks) => flat_uniques(marks, queries, out),
            Self::Wallets(index) => match &index.counters {
                Some(counters) => {
                    for (q, o) in queries.iter().zip(out.iter_mut()) {
                        for (class, count) in o.iter_mut().enumerate() {
                            *count = counters.count(class, q.lane, q.start);
                        }
                    }
                }
                None => {
                    for w in index.wallets.values() {
                        for (q, o) in queries.iter().zip(out.iter_mut()) {
                            add_sides(o, w.sides_in(q.start, q.end));
                        }
                    }
                }
            },
        }
    }

    /// Every mark as `(wallet, key, sides)` (for tests and restores).
    #[cfg(test)]
    pub(crate) fn all(&self) -> Vec<(u32, i64, u8)> {
        let mut out: Vec<(u32, i64, u8)> = match self {
            Self::Flat(marks) => marks
                .iter()
                .map(|m| (m.wallet, key_of(m.packed), sides_of(m.packed)))
                .collect(),
            Self::Wallets(index) => index
                .wallets
                .iter()
                .flat_map(|(&w, list)| list.marks.iter().map(move |&m| (w, key_of(m), sides_of(m))))
                .collect(),
        };
        out.sort_unstable();
        out
    }

    /// Approximate heap bytes held (for memory reports).
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Self::Flat(marks) => marks.capacity() * std::mem::size_of::<FlatMark>(),
            Self::Wallets(index) => {
                let entry = std::mem::size_of::<(u32, WalletMarks)>() + 1;
                std::mem::size_of::<WalletIndex>()
                    + index.wallets.capacity() * entry
                    + index
                        .wallets
                        .values()
                        .map(|w| w.marks.capacity() * 8)
                        .sum::<usize>()
                    + index.counters.as_ref().map_or(0, Counters::heap_bytes)
            }
        }
    }
}

#[inline]
fn add_sides(counts: &mut UniqueCounts, sides: u8) {
    counts[CLASS_ANY] += u64::from(sides != 0);
    counts[CLASS_BUY] += u64::from(sides & SIDE_BUY != 0);
    counts[CLASS_SELL] += u64::from(sides & SIDE_SELL != 0);
}

/// Unique counts of a flat store: group a sorted copy by wallet.
fn flat_uniques(marks: &[FlatMark], queries: &[UniqueQuery], out: &mut [UniqueCounts]) {
    let mut buffer = [(0_u32, 0_i64); FLAT_CAPACITY];
    let mut heap;
    let copy: &mut [(u32, i64)] = if marks.len() <= FLAT_CAPACITY {
        &mut buffer[..marks.len()]
    } else {
        heap = vec![(0_u32, 0_i64); marks.len()];
        &mut heap
    };
    for (slot, m) in copy.iter_mut().zip(marks) {
        *slot = (m.wallet, m.packed);
    }
    copy.sort_unstable();
    for group in copy.chunk_by(|a, b| a.0 == b.0) {
        for (q, o) in queries.iter().zip(out.iter_mut()) {
            let sides = group
                .iter()
                .filter(|(_, m)| key_of(*m) >= q.start && key_of(*m) < q.end)
                .fold(0, |s, (_, m)| s | sides_of(*m));
            add_sides(o, sides);
        }
    }
}

impl WalletIndex {
    fn add(&mut self, wallet: u32, key: i64, sides: u8) -> MarkAdded {
        let w = self.wallets.entry(wallet).or_insert_with(WalletMarks::new);
        let len = w.marks.len();
        let (position, found) = match w.marks.last() {
            None => (0, false),
            Some(&last) if key_of(last) < key => (len, false),
            _ => match w.marks.binary_search_by_key(&key, |&m| key_of(m)) {
                Ok(i) => (i, true),
                Err(i) => (i, false),
            },
        };
        let old = if found {
            sides_of(w.marks[position])
        } else {
            0
        };
        let added = sides & !old;
        if added == 0 {
            return MarkAdded {
                sides: 0,
                created: false,
            };
        }
        if let Some(counters) = &mut self.counters {
            if !found {
                let prev = if position > 0 {
                    key_of(w.marks[position - 1])
                } else {
                    NONE
                };
                let next = w.marks.get(position).map_or(NONE, |&m| key_of(m));
                counters.link(CLASS_ANY, prev, key, next);
            }
            for class in [CLASS_BUY, CLASS_SELL] {
                if added & class_mask(class) == 0 {
                    continue;
                }
                let (prev, next) = if position == len {
                    (w.last_of(class), NONE)
                } else {
                    let mask = class_mask(class);
                    let prev = w.marks[..position]
                        .iter()
                        .rev()
                        .find(|&&m| sides_of(m) & mask != 0)
                        .map_or(NONE, |&m| key_of(m));
                    let after = if found { position + 1 } else { position };
                    let next = w.marks[after..]
                        .iter()
                        .find(|&&m| sides_of(m) & mask != 0)
                        .map_or(NONE, |&m| key_of(m));
                    (prev, next)
                };
                counters.link(class, prev, key, next);
            }
        }
        if found {
            w.marks[position] |= i64::from(added);
        } else {
            if w.marks.len() == w.marks.capacity() && w.marks.len() < 4 {
                w.marks.reserve_exact(1);
            }
            w.marks.insert(position, pack(key, sides));
            self.marks += 1;
            self.oldest = self.oldest.min(key);
        }
        if added & SIDE_BUY != 0 {
            w.last_buy = w.last_buy.max(key);
        }
        if added & SIDE_SELL != 0 {
            w.last_sell = w.last_sell.max(key);
        }
        MarkAdded {
            sides: added,
            created: !found,
        }
    }

    fn build_counters(&mut self, lens: &[i64]) {
        let mut counters = Counters::new(lens);
        for w in self.wallets.values() {
            for class in [CLASS_ANY, CLASS_BUY, CLASS_SELL] {
                let mask = class_mask(class);
                let mut prev = NONE;
                for &m in &w.marks {
                    if sides_of(m) & mask != 0 {
                        counters.link(class, prev, key_of(m), NONE);
                        prev = key_of(m);
                    }
                }
            }
        }
        self.counters = Some(counters);
    }

    fn trim(&mut self, cut: i64, release: &mut impl FnMut(u32)) -> bool {
        if self.oldest >= cut {
            return false;
        }
        let mut dropped = 0;
        let mut oldest = i64::MAX;
        let counters = &mut self.counters;
        self.wallets.retain(|&wallet, w| {
            let gone = w.marks.partition_point(|&m| key_of(m) < cut);
            if gone > 0 {
                if let Some(counters) = counters.as_mut() {
                    for class in [CLASS_ANY, CLASS_BUY, CLASS_SELL] {
                        let mask = class_mask(class);
                        let mut first = NONE;
                        for &m in &w.marks[..gone] {
                            if sides_of(m) & mask != 0 {
                                if first != NONE {
                                    counters.unlink_first(class, first, key_of(m));
                                }
                                first = key_of(m);
                            }
                        }
                        if first != NONE {
                            let next = w.marks[gone..]
                                .iter()
                                .find(|&&m| sides_of(m) & mask != 0)
                                .map_or(NONE, |&m| key_of(m));
                            counters.unlink_first(class, first, next);
                        }
                    }
                }
                w.marks.drain(..gone);
                for _ in 0..gone {
                    release(wallet);
                }
                dropped += gone;
                if w.last_buy < cut {
                    w.last_buy = NONE;
                }
                if w.last_sell < cut {
                    w.last_sell = NONE;
                }
                if w.marks.capacity() > 2 * w.marks.len().max(2) {
                    w.marks.shrink_to_fit();
                }
            }
            if let Some(&first) = w.marks.first() {
                oldest = oldest.min(key_of(first));
            }
            !w.marks.is_empty()
        });
        self.marks -= dropped;
        self.oldest = oldest;
        if self.wallets.capacity() > 4 * self.wallets.len().max(4) {
            self.wallets.shrink_to_fit();
        }
        dropped > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force over `(wallet, key, sides)` marks.
    fn brute(marks: &[(u32, i64, u8)], start: i64, end: i64) -> UniqueCounts {
        let mut per_wallet: std::collections::BTreeMap<u32, u8> = Default::default();
        for &(w, k, s) in marks {
            if k >= start && k < end {
                *per_wallet.entry(w).or_default() |= s;
            }
        }
        let mut counts = [0; 3];
        for s in per_wallet.values() {
            add_sides(&mut counts, *s);
        }
        counts
    }

    /// Runs a random stream through a store; returns whether counters were used.
    fn run(limits: MarkLimits) -> bool {
        let lens = [7_i64, 30];
        let mut store = MarkStore::default();
        let mut x: u64 = 0x9E37_79B9;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut refs = std::collections::BTreeMap::<u32, i64>::new();
        let mut saw_counters = false;
        for step in 0..600 {
            let r = next();
            let wallet = (r % 9) as u32;
            let key = ((r >> 8) % 120) as i64;
            let sides = [SIDE_BUY, SIDE_SELL, 3][((r >> 20) % 3) as usize];
            let before = store.sides(wallet, key);
            let added = store.add(wallet, key, sides, &lens, limits);
            assert_eq!(added.sides, sides & !before);
            assert_eq!(added.created, before == 0);
            assert_eq!(store.sides(wallet, key), before | sides);
            if added.created {
                *refs.entry(wallet).or_default() += 1;
            }
            if step % 150 == 149 {
                let cut = (step / 150) as i64 * 25;
                store.trim(cut, limits, |w| *refs.entry(w).or_default() -= 1);
            }
            saw_counters |= store.has_counters();
            let all = store.all();
            assert_eq!(all.len(), store.len());
            let now = ((r >> 30) % 140) as i64;
            let mut queries = vec![UniqueQuery {
                start: now - 7,
                end: i64::MAX,
                lane: 0,
            }];
            for (i, len) in lens.iter().enumerate() {
                queries.push(UniqueQuery {
                    start: now - 2 * len,
                    end: now - len,
                    lane: i + 1,
                });
            }
            let mut out = vec![[0; 3]; queries.len()];
            store.uniques(&queries, &mut out);
            for (q, o) in queries.iter().zip(&out) {
                assert_eq!(*o, brute(&all, q.start, q.end), "step {step} query {q:?}");
            }
        }
        let held: i64 = refs.values().sum();
        assert_eq!(held, store.len() as i64, "one reference per mark");
        saw_counters
    }

    #[test]
    fn every_shape_counts_exactly() {
        assert!(!run(MarkLimits {
            flat_max: 64,
            counters_min_wallets: 1000
        }));
        assert!(!run(MarkLimits {
            flat_max: 4,
            counters_min_wallets: 1000
        }));
        assert!(run(MarkLimits {
            flat_max: 4,
            counters_min_wallets: 2
        }));
        assert!(run(MarkLimits {
            flat_max: 0,
            counters_min_wallets: 0
        }));
    }
}
