//! Wallet activity of one token at both levels: which wallets were active in
//! which bucket, and on which side. Unique counts are computed from it exactly.
//!
//! Two shapes, by how busy the token is:
//! - `Flat`: a few marks in one sorted vector (a quiet token costs a few bytes);
//! - `Wallets`: per level, a dense vector of per-wallet records, each holding
//!   its newest mark inline (so the common in-order swap touches one record) and
//!   its older marks sorted (the first few inline too); a map from wallet to its
//!   record's position at each level. A unique count walks a level's records in
//!   order. With many wallets the level also keeps [`Counters`], which answer
//!   each unique count in O(1) instead of a pass over the wallets.

use std::collections::VecDeque;

use super::counter::{Counters, CLASS_ANY, CLASS_BUY, CLASS_SELL, NONE};
use super::hash::FastMap;
use super::{SIDE_BUY, SIDE_SELL};

/// Thresholds for switching between shapes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MarkLimits {
    /// More marks than this (both levels): per-wallet records.
    pub(crate) flat_max: usize,
    /// More wallets than this: counters.
    pub(crate) counters_min_wallets: usize,
}

/// Most marks the flat shape may hold (its queries sort a stack copy).
pub(crate) const FLAT_CAPACITY: usize = 64;

/// A mark packed in an `i64`: `key << 2 | side bits`. Packed marks of one
/// wallet sort like their keys (a key appears once per wallet and level).
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlatMark {
    packed: i64,
    wallet: u32,
    level: u8,
}

impl FlatMark {
    #[inline]
    fn order(&self) -> (u8, i64, u32) {
        (self.level, key_of(self.packed), self.wallet)
    }
}

/// A record's older marks, sorted by key: most wallets hold a few, kept inline
/// in the record (no allocation, no pointer to follow when counting).
type OlderMarks = smallvec::SmallVec<[i64; 3]>;

/// One wallet's marks on one token at one level: the newest mark (inline, so
/// the common in-order swap touches nothing else), the newest buy and sell keys,
/// and the older marks sorted by key. A record exists only while it holds a mark.
#[derive(Debug, Clone)]
struct WalletMarks {
    wallet: u32,
    newest: i64,
    last_buy: i64,
    last_sell: i64,
    older: OlderMarks,
}

impl WalletMarks {
    fn new(wallet: u32) -> Self {
        Self {
            wallet,
            newest: NONE,
            last_buy: NONE,
            last_sell: NONE,
            older: OlderMarks::new(),
        }
    }

    /// Key of the oldest mark.
    fn oldest_key(&self) -> Option<i64> {
        (self.newest != NONE).then(|| key_of(*self.older.first().unwrap_or(&self.newest)))
    }

    fn last_of(&self, class: usize) -> i64 {
        match class {
            CLASS_BUY => self.last_buy,
            CLASS_SELL => self.last_sell,
            _ if self.newest == NONE => NONE,
            _ => key_of(self.newest),
        }
    }

    fn note_sides(&mut self, key: i64, sides: u8) {
        if sides & SIDE_BUY != 0 {
            self.last_buy = self.last_buy.max(key);
        }
        if sides & SIDE_SELL != 0 {
            self.last_sell = self.last_sell.max(key);
        }
    }

    /// Side bits at `key`.
    #[cfg(test)]
    fn sides_at(&self, key: i64) -> u8 {
        let newest = self.newest;
        if newest == NONE || key > key_of(newest) {
            return 0;
        }
        if key == key_of(newest) {
            return sides_of(newest);
        }
        self.older
            .binary_search_by_key(&key, |&m| key_of(m))
            .map_or(0, |i| sides_of(self.older[i]))
    }

    /// Side bits in keys `[start, end)` (a range open to the right is cheaper
    /// from `last_buy` and `last_sell`: see [`record_uniques`]).
    #[inline]
    fn sides_in(&self, start: i64, end: i64) -> u8 {
        let newest = self.newest;
        if newest == NONE || key_of(newest) < start {
            return 0;
        }
        let mut sides = if key_of(newest) < end {
            sides_of(newest)
        } else {
            0
        };
        let older = &self.older;
        // Most wallets hold a few marks: a walk from the back beats a binary
        // search.
        let from = if older.first().is_none_or(|&m| key_of(m) >= start) {
            // The whole record is in range (the previous period of a window
            // as long as the level's span).
            0
        } else if older.len() <= 8 {
            older
                .iter()
                .rposition(|&m| key_of(m) < start)
                .map_or(0, |i| i + 1)
        } else {
            older.partition_point(|&m| key_of(m) < start)
        };
        for &m in &older[from..] {
            if key_of(m) >= end || sides == SIDE_BUY | SIDE_SELL {
                break;
            }
            sides |= sides_of(m);
        }
        sides
    }

    /// Adds side bits at `key`, linking new chain members into `counters`.
    #[inline]
    fn add(&mut self, key: i64, sides: u8, counters: Option<&mut Counters>) -> MarkAdded {
        let newest = self.newest;
        if newest == NONE || key > key_of(newest) {
            // The common case: a new newest mark.
            if let Some(counters) = counters {
                let prev = if newest == NONE { NONE } else { key_of(newest) };
                counters.link(CLASS_ANY, prev, key, NONE);
                for class in [CLASS_BUY, CLASS_SELL] {
                    if sides & class_mask(class) != 0 {
                        counters.link(class, self.last_of(class), key, NONE);
                    }
                }
            }
            if newest != NONE {
                self.older.push(newest);
            }
            self.newest = pack(key, sides);
            self.note_sides(key, sides);
            return MarkAdded {
                sides,
                created: true,
            };
        }
        let added = if key == key_of(newest) {
            let added = sides & !sides_of(newest);
            if let Some(counters) = counters {
                for class in [CLASS_BUY, CLASS_SELL] {
                    // The previous mark of the class is its newest: older than `key`,
                    // which did not have the bit.
                    if added & class_mask(class) != 0 {
                        counters.link(class, self.last_of(class), key, NONE);
                    }
                }
            }
            self.newest |= i64::from(added);
            MarkAdded {
                sides: added,
                created: false,
            }
        } else {
            self.insert_older(key, sides, counters)
        };
        self.note_sides(key, added.sides);
        added
    }

    /// Adds side bits at `key`, older than the newest mark.
    fn insert_older(&mut self, key: i64, sides: u8, counters: Option<&mut Counters>) -> MarkAdded {
        let (last_buy, last_sell, newest) = (self.last_buy, self.last_sell, self.newest);
        let older = &mut self.older;
        let (position, found) = match older.binary_search_by_key(&key, |&m| key_of(m)) {
            Ok(i) => (i, true),
            Err(i) => (i, false),
        };
        let old = if found { sides_of(older[position]) } else { 0 };
        let added = sides & !old;
        if added == 0 {
            return MarkAdded {
                sides: 0,
                created: false,
            };
        }
        if let Some(counters) = counters {
            let neighbours = |mask: u8| {
                let with_class = |&&m: &&i64| sides_of(m) & mask != 0;
                let prev = older[..position]
                    .iter()
                    .rev()
                    .find(with_class)
                    .map_or(NONE, |&m| key_of(m));
                let after = if found { position + 1 } else { position };
                let next = older[after..]
                    .iter()
                    .chain(std::iter::once(&newest))
                    .find(with_class)
                    .map_or(NONE, |&m| key_of(m));
                (prev, next)
            };
            if !found {
                let (prev, next) = neighbours(SIDE_BUY | SIDE_SELL);
                counters.link(CLASS_ANY, prev, key, next);
            }
            for class in [CLASS_BUY, CLASS_SELL] {
                if added & class_mask(class) != 0 {
                    let (prev, next) = match class {
                        CLASS_BUY if key > last_buy => (last_buy, NONE),
                        CLASS_SELL if key > last_sell => (last_sell, NONE),
                        _ => neighbours(class_mask(class)),
                    };
                    counters.link(class, prev, key, next);
                }
            }
        }
        if found {
            older[position] |= i64::from(added);
        } else {
            older.insert(position, pack(key, sides));
        }
        MarkAdded {
            sides: added,
            created: !found,
        }
    }

    /// Drops marks before `cut`; returns how many.
    fn trim(&mut self, cut: i64, counters: Option<&mut Counters>) -> usize {
        if self.oldest_key().is_none_or(|oldest| oldest >= cut) {
            return 0;
        }
        let newest = self.newest;
        let older = &mut self.older;
        let gone_older = older.partition_point(|&m| key_of(m) < cut);
        let newest_gone = gone_older == older.len() && key_of(newest) < cut;
        if let Some(counters) = counters {
            let all = || older.iter().copied().chain(std::iter::once(newest));
            let gone = gone_older + usize::from(newest_gone);
            for class in [CLASS_ANY, CLASS_BUY, CLASS_SELL] {
                let mask = class_mask(class);
                let mut first = NONE;
                for m in all().take(gone) {
                    if sides_of(m) & mask != 0 {
                        if first != NONE {
                            counters.unlink_first(class, first, key_of(m));
                        }
                        first = key_of(m);
                    }
                }
                if first != NONE {
                    let next = all()
                        .skip(gone)
                        .find(|&m| sides_of(m) & mask != 0)
                        .map_or(NONE, key_of);
                    counters.unlink_first(class, first, next);
                }
            }
        }
        older.drain(..gone_older);
        if older.capacity() > 4 * older.len().max(2) {
            older.shrink_to_fit();
        }
        if newest_gone {
            self.newest = NONE;
        }
        if self.last_buy < cut {
            self.last_buy = NONE;
        }
        if self.last_sell < cut {
            self.last_sell = NONE;
        }
        gone_older + usize::from(newest_gone)
    }

    /// All marks, oldest first.
    fn marks(&self) -> impl Iterator<Item = i64> + '_ {
        let newest = self.newest;
        self.older
            .iter()
            .copied()
            .chain((newest != NONE).then_some(newest))
    }
}

/// Position of "no record at this level" in [`WalletIndex::positions`].
const UNLISTED: u32 = u32::MAX;

/// Per-wallet records, kept per level in a dense vector (a unique count
/// without counters walks it in order), with counters per level once there are
/// many wallets.
#[derive(Debug, Clone)]
pub(crate) struct WalletIndex {
    /// Wallet → position of its record in each level's `records` (`UNLISTED`: none).
    positions: FastMap<u32, [u32; 2]>,
    /// Per level: one record per wallet with at least one mark there.
    records: [Vec<WalletMarks>; 2],
    marks: [usize; 2],
    /// Per level: every wallet is filed at (or before) the key of its oldest
    /// mark, so a trim visits only the wallets filed before the cut.
    by_oldest: [WalletWheel; 2],
    counters: [Option<Counters>; 2],
}

impl WalletIndex {
    fn new() -> Self {
        Self {
            positions: FastMap::default(),
            records: [Vec::new(), Vec::new()],
            marks: [0; 2],
            by_oldest: [WalletWheel::default(), WalletWheel::default()],
            counters: [None, None],
        }
    }

    /// The record of `wallet` at `level`, if it has one.
    #[cfg(test)]
    fn record(&self, level: usize, wallet: u32) -> Option<&WalletMarks> {
        let position = self.positions.get(&wallet)?[level];
        self.records[level].get(position as usize)
    }

    /// Reads the records of `wallets` at `level` (their position-map entries,
    /// newest marks, and the end of their older marks, where a new newest mark
    /// pushes the old one), so the adds that follow find them in cache: these
    /// reads do not depend on one another, so the CPU overlaps their misses,
    /// where each add waits out its own. `black_box` keeps the reads, whose
    /// values nothing uses.
    fn warm(&self, level: usize, wallets: impl Iterator<Item = u32>) {
        let records = &self.records[level];
        let read = wallets
            .filter_map(|wallet| self.positions.get(&wallet))
            .filter_map(|positions| records.get(positions[level] as usize))
            .fold(0, |acc, record| {
                acc ^ record.newest ^ record.older.last().copied().unwrap_or(0)
            });
        std::hint::black_box(read);
    }

    #[inline]
    fn add(&mut self, level: usize, wallet: u32, key: i64, sides: u8) -> MarkAdded {
        let positions = self.positions.entry(wallet).or_insert([UNLISTED; 2]);
        let records = &mut self.records[level];
        if positions[level] == UNLISTED {
            positions[level] = records.len() as u32;
            records.push(WalletMarks::new(wallet));
        }
        let record = &mut records[positions[level] as usize];
        // Only a first mark, or one older than the newest, can be the new oldest.
        let newest = record.newest;
        let may_be_oldest = newest == NONE || key < key_of(newest);
        let added = record.add(key, sides, self.counters[level].as_mut());
        if added.created {
            self.marks[level] += 1;
            if may_be_oldest {
                self.by_oldest[level].file(key, wallet);
            }
        }
        added
    }

    fn oldest_key(&self, level: usize) -> Option<i64> {
        if self.marks[level] == 0 {
            return None;
        }
        self.by_oldest[level].first_key()
    }

    fn build_counters(&mut self, level: usize, lens: &[i64]) {
        let mut counters = Counters::new(lens);
        for record in &self.records[level] {
            for class in [CLASS_ANY, CLASS_BUY, CLASS_SELL] {
                let mask = class_mask(class);
                let mut prev = NONE;
                for m in record.marks() {
                    if sides_of(m) & mask != 0 {
                        counters.link(class, prev, key_of(m), NONE);
                        prev = key_of(m);
                    }
                }
            }
        }
        self.counters[level] = Some(counters);
    }

    fn trim(&mut self, cuts: [i64; 2], release: &mut impl FnMut(u32)) -> bool {
        let mut dropped = false;
        for (level, &cut) in cuts.iter().enumerate() {
            // Looked up first (independent lookups overlap their cache misses),
            // then visited by position from the last record down: records
            // are read in memory order, and a record that empties takes the
            // last one's place, which has already been visited.
            let mut due: Vec<(u32, u32)> = (self.by_oldest[level].take_before(cut).into_iter())
                .filter_map(|wallet| Some((self.positions.get(&wallet)?[level], wallet)))
                .collect();
            due.sort_unstable_by(|a, b| b.cmp(a));
            due.dedup();
            for (position, wallet) in due {
                let position = position as usize;
                let records = &mut self.records[level];
                let Some(record) = records.get_mut(position) else {
                    continue;
                };
                let gone = record.trim(cut, self.counters[level].as_mut());
                for _ in 0..gone {
                    release(wallet);
                }
                self.marks[level] -= gone;
                dropped |= gone > 0;
                if let Some(oldest) = record.oldest_key() {
                    self.by_oldest[level].file(oldest, wallet);
                    continue;
                }
                // No mark left at this level: the last record takes its place.
                records.swap_remove(position);
                if let Some(moved) = records.get(position) {
                    if let Some(p) = self.positions.get_mut(&moved.wallet) {
                        p[level] = position as u32;
                    }
                }
                if let Some(p) = self.positions.get_mut(&wallet) {
                    p[level] = UNLISTED;
                    if *p == [UNLISTED; 2] {
                        self.positions.remove(&wallet);
                    }
                }
            }
        }
        if dropped {
            if self.positions.capacity() > 4 * self.positions.len().max(4) {
                self.positions.shrink_to_fit();
            }
            for records in &mut self.records {
                if records.capacity() > 4 * records.len().max(4) {
                    records.shrink_to_fit();
                }
            }
        }
        dropped
    }
}

/// log2 of the keys per [`WalletWheel`] slot.
const WHEEL_SHIFT: u32 = 4;

/// Wallets filed by key, in slots of 16 keys: `file` is O(1), and a trim takes
/// every wallet filed in a slot that starts before the cut.
#[derive(Debug, Clone, Default)]
struct WalletWheel {
    first_slot: i64,
    slots: VecDeque<Vec<u32>>,
}

impl WalletWheel {
    #[inline]
    fn file(&mut self, key: i64, wallet: u32) {
        let slot = key >> WHEEL_SHIFT;
        if self.slots.is_empty() {
            self.first_slot = slot;
        }
        while slot < self.first_slot {
            self.slots.push_front(Vec::new());
            self.first_slot -= 1;
        }
        let index = (slot - self.first_slot) as usize;
        while index >= self.slots.len() {
            self.slots.push_back(Vec::new());
        }
        self.slots[index].push(wallet);
    }

    fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Vec<u32>>()
            + self.slots.iter().map(|s| s.capacity() * 4).sum::<usize>()
    }

    /// Start key of the first non-empty slot: no filed wallet has an older mark.
    fn first_key(&self) -> Option<i64> {
        let index = self.slots.iter().position(|s| !s.is_empty())?;
        Some((self.first_slot + index as i64) << WHEEL_SHIFT)
    }

    /// Removes and returns the wallets of every slot that starts before `cut`.
    fn take_before(&mut self, cut: i64) -> Vec<u32> {
        let mut taken = Vec::new();
        while let Some(front) = self.slots.front_mut() {
            if self.first_slot << WHEEL_SHIFT >= cut {
                break;
            }
            taken.append(front);
            if (self.first_slot + 1) << WHEEL_SHIFT > cut {
                break; // the slot straddles the cut: keep it for what is refiled there
            }
            self.slots.pop_front();
            self.first_slot += 1;
        }
        while self.slots.front().is_some_and(Vec::is_empty) && self.slots.len() > 1 {
            self.slots.pop_front();
            self.first_slot += 1;
        }
        taken
    }
}

/// One range a unique count is asked for: keys `[start, end)`, and the counter
/// lane that answers it (0 for `end == i64::MAX`, else the lane of `end - start`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UniqueQuery {
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) lane: usize,
}

/// Distinct wallets, buyers and sellers.
pub(crate) type UniqueCounts = [u64; 3];

/// What an insertion changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MarkAdded {
    /// Side bits that were not there before.
    pub(crate) sides: u8,
    /// True when the (wallet, level, key) mark was created (the wallet gains a reference).
    pub(crate) created: bool,
}

/// Wallet activity of one token at both levels.
#[derive(Debug, Clone)]
pub(crate) enum Activity {
    Flat(Vec<FlatMark>),
    Wallets(Box<WalletIndex>),
}

impl Default for Activity {
    fn default() -> Self {
        Self::Flat(Vec::new())
    }
}

impl Activity {
    /// Number of (wallet, key) marks at `level`.
    #[cfg(test)]
    pub(crate) fn len(&self, level: usize) -> usize {
        match self {
            Self::Flat(marks) => marks
                .iter()
                .filter(|m| usize::from(m.level) == level)
                .count(),
            Self::Wallets(index) => index.marks[level],
        }
    }

    /// True when no mark is held.
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Self::Flat(marks) => marks.is_empty(),
            Self::Wallets(index) => index.marks == [0; 2],
        }
    }

    /// The oldest key held at `level` (a lower bound for the per-wallet shape
    /// between trims).
    pub(crate) fn oldest_key(&self, level: usize) -> Option<i64> {
        match self {
            Self::Flat(marks) => marks
                .iter()
                .find(|m| usize::from(m.level) == level)
                .map(|m| key_of(m.packed)),
            Self::Wallets(index) => index.oldest_key(level),
        }
    }

    /// True when `level` keeps counters (for tests).
    #[cfg(test)]
    pub(crate) fn has_counters(&self, level: usize) -> bool {
        matches!(self, Self::Wallets(index) if index.counters[level].is_some())
    }

    /// Side bits of `wallet` at `key` of `level` (for tests).
    #[cfg(test)]
    pub(crate) fn sides(&self, level: usize, wallet: u32, key: i64) -> u8 {
        match self {
            Self::Flat(marks) => {
                let probe = (level as u8, key, wallet);
                marks
                    .binary_search_by(|m| m.order().cmp(&probe))
                    .map_or(0, |i| sides_of(marks[i].packed))
            }
            Self::Wallets(index) => index.record(level, wallet).map_or(0, |w| w.sides_at(key)),
        }
    }

    /// Brings the records `wallets` have at `level` into cache before they
    /// are added to (see [`WalletIndex::warm`]); the flat shape is small
    /// enough not to need it.
    pub(crate) fn warm(&self, level: usize, wallets: impl Iterator<Item = u32>) {
        if let Self::Wallets(index) = self {
            index.warm(level, wallets);
        }
    }

    /// Adds side bits for `wallet` at `key` of `level`. `lens` are each level's
    /// finite window lengths (for counters).
    #[inline]
    pub(crate) fn add(
        &mut self,
        level: usize,
        wallet: u32,
        key: i64,
        sides: u8,
        lens: &[Vec<i64>; 2],
        limits: MarkLimits,
    ) -> MarkAdded {
        let added = match self {
            Self::Flat(marks) => {
                let probe = (level as u8, key, wallet);
                let position = match marks.last() {
                    Some(last) if last.order() < probe => Err(marks.len()),
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
                                level: level as u8,
                            },
                        );
                        MarkAdded {
                            sides,
                            created: true,
                        }
                    }
                }
            }
            Self::Wallets(index) => index.add(level, wallet, key, sides),
        };
        if added.created {
            self.reshape_after_growth(lens, limits);
        }
        added
    }

    fn reshape_after_growth(&mut self, lens: &[Vec<i64>; 2], limits: MarkLimits) {
        if let Self::Flat(marks) = self {
            if marks.len() <= limits.flat_max.min(FLAT_CAPACITY) {
                return;
            }
            let mut index = WalletIndex::new();
            // Sorted by (level, key): every insertion is a new newest mark.
            for m in marks.iter() {
                index.add(
                    usize::from(m.level),
                    m.wallet,
                    key_of(m.packed),
                    sides_of(m.packed),
                );
            }
            *self = Self::Wallets(Box::new(index));
        }
        if let Self::Wallets(index) = self {
            for (level, lens) in lens.iter().enumerate() {
                if index.counters[level].is_none()
                    && index.records[level].len() > limits.counters_min_wallets
                {
                    index.build_counters(level, lens);
                }
            }
        }
    }

    /// Drops marks with keys before `cuts[level]`, calling `release(wallet)`
    /// once per dropped mark. Returns true when any was dropped.
    pub(crate) fn trim(
        &mut self,
        cuts: [i64; 2],
        limits: MarkLimits,
        mut release: impl FnMut(u32),
    ) -> bool {
        let dropped = match self {
            Self::Flat(marks) => {
                let before = marks.len();
                marks.retain(|m| {
                    let keep = key_of(m.packed) >= cuts[usize::from(m.level)];
                    if !keep {
                        release(m.wallet);
                    }
                    keep
                });
                if marks.capacity() > marks.len() + marks.len() / 2 {
                    marks.shrink_to_fit();
                }
                marks.len() != before
            }
            Self::Wallets(index) => index.trim(cuts, &mut release),
        };
        if let Self::Wallets(index) = self {
            if index.marks[0] + index.marks[1] <= limits.flat_max.min(FLAT_CAPACITY) / 2 {
                let mut marks: Vec<FlatMark> = (0..2)
                    .flat_map(|level| {
                        index.records[level].iter().flat_map(move |record| {
                            record.marks().map(move |packed| FlatMark {
                                packed,
                                wallet: record.wallet,
                                level: level as u8,
                            })
                        })
                    })
                    .collect();
                marks.sort_unstable_by_key(FlatMark::order);
                *self = Self::Flat(marks);
            } else {
                for level in 0..2 {
                    if index.records[level].len() < limits.counters_min_wallets / 4 {
                        index.counters[level] = None;
                    }
                }
            }
        }
        dropped
    }

    /// Calls `release(wallet)` once per mark and empties the store.
    pub(crate) fn release_all(&mut self, mut release: impl FnMut(u32)) {
        match self {
            Self::Flat(marks) => marks.iter().for_each(|m| release(m.wallet)),
            Self::Wallets(index) => {
                for record in index.records.iter().flatten() {
                    for _ in record.marks() {
                        release(record.wallet);
                    }
                }
            }
        }
        *self = Self::default();
    }

    /// Unique wallets, buyers and sellers at `level` for each query, into `out`.
    pub(crate) fn uniques(&self, level: usize, queries: &[UniqueQuery], out: &mut [UniqueCounts]) {
        out.iter_mut().for_each(|o| *o = [0; 3]);
        match self {
            Self::Flat(marks) => flat_uniques(marks, level, queries, out),
            Self::Wallets(index) => match &index.counters[level] {
                Some(counters) => {
                    for (q, o) in queries.iter().zip(out.iter_mut()) {
                        *o = counters.count(q.lane, q.start);
                    }
                }
                None => record_uniques(&index.records[level], queries, out),
            },
        }
    }

    /// Asserts the per-wallet invariants (for tests): positions and records
    /// agree, no record is empty, marks sorted, the newest buy/sell keys exact,
    /// every wallet filed no later than its oldest mark.
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let Self::Wallets(index) = self else { return };
        for (&wallet, positions) in &index.positions {
            assert_ne!(*positions, [UNLISTED; 2], "wallet {wallet} without records");
            for (level, &position) in positions.iter().enumerate() {
                if position != UNLISTED {
                    assert_eq!(index.records[level][position as usize].wallet, wallet);
                }
            }
        }
        for level in 0..2 {
            let listed = index
                .positions
                .values()
                .filter(|p| p[level] != UNLISTED)
                .count();
            assert_eq!(
                listed,
                index.records[level].len(),
                "records at level {level}"
            );
            for record in &index.records[level] {
                let wallet = record.wallet;
                let marks: Vec<i64> = record.marks().collect();
                assert!(!marks.is_empty(), "empty record of {wallet}");
                assert!(marks.windows(2).all(|w| key_of(w[0]) < key_of(w[1])));
                let last_with = |bit: u8| {
                    marks
                        .iter()
                        .rev()
                        .find(|&&m| sides_of(m) & bit != 0)
                        .map_or(NONE, |&m| key_of(m))
                };
                assert_eq!(record.last_buy, last_with(SIDE_BUY), "last buy of {wallet}");
                assert_eq!(
                    record.last_sell,
                    last_with(SIDE_SELL),
                    "last sell of {wallet}"
                );
                let filed = &index.by_oldest[level];
                let slot = key_of(marks[0]) >> WHEEL_SHIFT;
                assert!(
                    filed.slots.iter().enumerate().any(|(i, wallets)| {
                        filed.first_slot + i as i64 <= slot && wallets.contains(&wallet)
                    }),
                    "wallet {wallet} filed no later than its oldest mark"
                );
            }
        }
    }

    /// Every mark of `level` as `(wallet, key, sides)`, sorted (for tests).
    #[cfg(test)]
    pub(crate) fn all(&self, level: usize) -> Vec<(u32, i64, u8)> {
        let mut out: Vec<(u32, i64, u8)> = match self {
            Self::Flat(marks) => marks
                .iter()
                .filter(|m| usize::from(m.level) == level)
                .map(|m| (m.wallet, key_of(m.packed), sides_of(m.packed)))
                .collect(),
            Self::Wallets(index) => index.records[level]
                .iter()
                .flat_map(|record| {
                    record
                        .marks()
                        .map(move |m| (record.wallet, key_of(m), sides_of(m)))
                })
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
                let entry = std::mem::size_of::<(u32, [u32; 2])>() + 1;
                std::mem::size_of::<WalletIndex>()
                    + index.positions.capacity() * entry
                    + index
                        .records
                        .iter()
                        .map(|records| {
                            records.capacity() * std::mem::size_of::<WalletMarks>()
                                + records
                                    .iter()
                                    .map(|r| {
                                        if r.older.spilled() {
                                            r.older.capacity() * 8
                                        } else {
                                            0
                                        }
                                    })
                                    .sum::<usize>()
                        })
                        .sum::<usize>()
                    + index
                        .counters
                        .iter()
                        .flatten()
                        .map(Counters::heap_bytes)
                        .sum::<usize>()
                    + index
                        .by_oldest
                        .iter()
                        .map(WalletWheel::heap_bytes)
                        .sum::<usize>()
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

/// Unique counts of one level's records, without counters: one pass over the
/// records per query (they stay in cache), so each pass is one branch-free
/// loop; the current period's reads only the newest buy and sell keys.
fn record_uniques(records: &[WalletMarks], queries: &[UniqueQuery], out: &mut [UniqueCounts]) {
    for (q, o) in queries.iter().zip(out.iter_mut()) {
        if q.end == i64::MAX {
            // `last_of` per class, without its `NONE` check (a record always
            // holds a mark): calling it here measured ~5% slower on rank_600.
            for record in records {
                o[CLASS_ANY] += u64::from(key_of(record.newest) >= q.start);
                o[CLASS_BUY] += u64::from(record.last_buy >= q.start);
                o[CLASS_SELL] += u64::from(record.last_sell >= q.start);
            }
        } else {
            for record in records {
                add_sides(o, record.sides_in(q.start, q.end));
            }
        }
    }
}

/// Unique counts of a flat store: group a sorted copy of the level's marks by wallet.
fn flat_uniques(
    marks: &[FlatMark],
    level: usize,
    queries: &[UniqueQuery],
    out: &mut [UniqueCounts],
) {
    let mut buffer = [(0_u32, 0_i64); FLAT_CAPACITY];
    let mut heap = Vec::new();
    let mut len = 0;
    for m in marks.iter().filter(|m| usize::from(m.level) == level) {
        if len < FLAT_CAPACITY {
            buffer[len] = (m.wallet, m.packed);
        } else {
            if heap.is_empty() {
                heap.extend_from_slice(&buffer);
            }
            heap.push((m.wallet, m.packed));
        }
        len += 1;
    }
    let copy: &mut [(u32, i64)] = if len <= FLAT_CAPACITY {
        &mut buffer[..len]
    } else {
        &mut heap
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: usize = 0;

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
        let lens = [vec![7_i64, 30], vec![3]];
        let mut store = Activity::default();
        let mut x: u64 = 0x9E37_79B9;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut refs = std::collections::BTreeMap::<u32, i64>::new();
        let mut saw_counters = false;
        for step in 0..900 {
            let r = next();
            let level = (r >> 40) as usize % 2;
            let wallet = (r % 23) as u32;
            // Mostly forward in time, sometimes far back.
            let key = if (r >> 50) % 4 == 0 {
                ((r >> 8) % 150) as i64
            } else {
                (step / 6) as i64 + ((r >> 8) % 3) as i64
            };
            let sides = [SIDE_BUY, SIDE_SELL, 3][((r >> 20) % 3) as usize];
            let before = store.sides(level, wallet, key);
            let added = store.add(level, wallet, key, sides, &lens, limits);
            assert_eq!(added.sides, sides & !before);
            assert_eq!(added.created, before == 0);
            assert_eq!(store.sides(level, wallet, key), before | sides);
            if added.created {
                *refs.entry(wallet).or_default() += 1;
            }
            if step % 150 == 149 {
                let cuts = [(step / 150) as i64 * 20, (step / 150) as i64 * 10];
                store.trim(cuts, limits, |w| *refs.entry(w).or_default() -= 1);
                for (level, cut) in cuts.iter().enumerate() {
                    assert!(store.all(level).iter().all(|m| m.1 >= *cut));
                }
            }
            store.check();
            saw_counters |= store.has_counters(0);
            for (level, level_lens) in lens.iter().enumerate() {
                let all = store.all(level);
                assert_eq!(all.len(), store.len(level));
                let now = ((r >> 30) % 170) as i64;
                let mut queries = vec![UniqueQuery {
                    start: now - 7,
                    end: i64::MAX,
                    lane: 0,
                }];
                for (i, len) in level_lens.iter().enumerate() {
                    queries.push(UniqueQuery {
                        start: now - 2 * len,
                        end: now - len,
                        lane: i + 1,
                    });
                }
                let mut out = vec![[0; 3]; queries.len()];
                store.uniques(level, &queries, &mut out);
                for (q, o) in queries.iter().zip(&out) {
                    assert_eq!(
                        *o,
                        brute(&all, q.start, q.end),
                        "step {step} level {level} query {q:?}"
                    );
                }
            }
        }
        let held: i64 = refs.values().sum();
        assert_eq!(
            held,
            (store.len(0) + store.len(1)) as i64,
            "one reference per mark"
        );
        store.trim([i64::MAX; 2], limits, |w| *refs.entry(w).or_default() -= 1);
        assert!(store.is_empty() && refs.values().all(|&r| r == 0));
        saw_counters
    }

    #[test]
    fn trimming_a_side_forgets_its_newest_key() {
        let lens = [vec![5_i64], vec![]];
        for counters_min_wallets in [0, 1000] {
            let limits = MarkLimits {
                flat_max: 0,
                counters_min_wallets,
            };
            let mut store = Activity::default();
            store.add(SECOND, 1, 9, SIDE_SELL, &lens, limits);
            store.add(SECOND, 1, 10, SIDE_BUY, &lens, limits);
            store.add(SECOND, 1, 11, SIDE_BUY, &lens, limits);
            store.add(SECOND, 2, 12, SIDE_SELL, &lens, limits);
            let mut released = Vec::new();
            store.trim([10, i64::MIN], limits, |w| released.push(w));
            assert_eq!(released, vec![1]);
            store.check();
            let query = [UniqueQuery {
                start: 0,
                end: i64::MAX,
                lane: 0,
            }];
            let mut out = [[0; 3]];
            store.uniques(SECOND, &query, &mut out);
            assert_eq!(out[0], [2, 1, 1], "wallet 1 buys only after the trim");
        }
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
