//! Exact distinct-wallet counts over sliding ranges in O(1) per update.
//!
//! For a window of length `L` (in bucket keys) let `C_L(a)` be the number of
//! wallets with a mark in `[a, a + L)`. Give every mark `t` of a wallet, whose
//! previous mark (of the same class) is `p`, the interval `(max(p, t - L), t]`: a
//! wallet's intervals are disjoint and their union is exactly the set of `a` for
//! which it has a mark in `[a, a + L)`. So `C_L(a)` is the number of intervals
//! covering `a`, i.e. a prefix sum over a difference array, and inserting or
//! removing a mark changes at most two intervals. `L = ∞` gives the current
//! window (`[a, ∞)`), where the intervals are `(p, t]`.

use std::collections::VecDeque;

/// "No such mark": the predecessor of a wallet's first mark.
pub(crate) const NONE: i64 = i64::MIN;

const PAGE_BITS: u32 = 9;
const PAGE_LEN: usize = 1 << PAGE_BITS;
const BLOCK_BITS: u32 = 5;
const BLOCK_LEN: usize = 1 << BLOCK_BITS;
const BLOCKS: usize = PAGE_LEN / BLOCK_LEN;

/// `PAGE_LEN` consecutive cells of a difference array, with block sums.
#[derive(Debug, Clone)]
struct Page {
    cells: [i32; PAGE_LEN],
    block_sums: [i32; BLOCKS],
    nonzero: u32,
}

impl Page {
    fn new() -> Box<Self> {
        Box::new(Self {
            cells: [0; PAGE_LEN],
            block_sums: [0; BLOCKS],
            nonzero: 0,
        })
    }

    /// Sum of cells `0..=offset`.
    #[inline]
    fn prefix(&self, offset: usize) -> i64 {
        let block = offset >> BLOCK_BITS;
        let whole: i32 = self.block_sums[..block].iter().sum();
        let part: i32 = self.cells[block << BLOCK_BITS..=offset].iter().sum();
        i64::from(whole) + i64::from(part)
    }
}

#[derive(Debug, Clone, Default)]
struct PageSlot {
    total: i32,
    page: Option<Box<Page>>,
}

/// A difference array over all `i64` positions, stored as pages allocated where
/// a cell is non-zero, with point updates and prefix sums.
#[derive(Debug, Clone, Default)]
pub(crate) struct PrefixCounter {
    /// Sum of the cells at "minus infinity" (intervals open to the left).
    below: i64,
    first_page: i64,
    slots: VecDeque<PageSlot>,
}

impl PrefixCounter {
    /// Adds `delta` to the number of intervals covering every `a` in `(lo, hi]`;
    /// `lo == NONE` means unbounded to the left.
    #[inline]
    pub(crate) fn add_interval(&mut self, lo: i64, hi: i64, delta: i32) {
        if lo == NONE {
            self.below += i64::from(delta);
        } else {
            self.add(lo + 1, delta);
        }
        self.add(hi + 1, -delta);
    }

    /// Number of intervals covering `a`.
    #[inline]
    pub(crate) fn count_at(&self, a: i64) -> i64 {
        let mut sum = self.below;
        if self.slots.is_empty() {
            return sum;
        }
        let page_id = a >> PAGE_BITS;
        let whole = (page_id - self.first_page).clamp(0, self.slots.len() as i64) as usize;
        let (front, back) = self.slots.as_slices();
        let front_n = whole.min(front.len());
        sum += front[..front_n]
            .iter()
            .map(|s| i64::from(s.total))
            .sum::<i64>();
        sum += back[..whole - front_n]
            .iter()
            .map(|s| i64::from(s.total))
            .sum::<i64>();
        if let Some(slot) = self.slots.get(whole) {
            if self.first_page + whole as i64 == page_id {
                if let Some(page) = &slot.page {
                    sum += page.prefix((a & (PAGE_LEN as i64 - 1)) as usize);
                }
            }
        }
        sum
    }

    /// Approximate heap bytes held (for memory reports).
    pub(crate) fn heap_bytes(&self) -> usize {
        let pages = self.slots.iter().filter(|s| s.page.is_some()).count();
        self.slots.capacity() * std::mem::size_of::<PageSlot>()
            + pages * std::mem::size_of::<Page>()
    }

    #[inline]
    fn add(&mut self, position: i64, delta: i32) {
        let page_id = position >> PAGE_BITS;
        let index = self.slot_index(page_id);
        let slot = &mut self.slots[index];
        slot.total += delta;
        let page = slot.page.get_or_insert_with(Page::new);
        let offset = (position & (PAGE_LEN as i64 - 1)) as usize;
        let before = page.cells[offset];
        let after = before + delta;
        page.cells[offset] = after;
        page.block_sums[offset >> BLOCK_BITS] += delta;
        if before == 0 && after != 0 {
            page.nonzero += 1;
        } else if before != 0 && after == 0 {
            page.nonzero -= 1;
            if page.nonzero == 0 {
                slot.page = None;
                self.drop_empty_ends();
            }
        }
    }

    fn slot_index(&mut self, page_id: i64) -> usize {
        if self.slots.is_empty() {
            self.first_page = page_id;
            self.slots.push_back(PageSlot::default());
            return 0;
        }
        while page_id < self.first_page {
            self.slots.push_front(PageSlot::default());
            self.first_page -= 1;
        }
        let index = (page_id - self.first_page) as usize;
        while index >= self.slots.len() {
            self.slots.push_back(PageSlot::default());
        }
        index
    }

    fn drop_empty_ends(&mut self) {
        while self.slots.front().is_some_and(|s| s.page.is_none()) {
            self.slots.pop_front();
            self.first_page += 1;
        }
        while self.slots.back().is_some_and(|s| s.page.is_none()) {
            self.slots.pop_back();
        }
    }
}

/// Class of a mark chain: any side, buys, sells.
pub(crate) const CLASS_ANY: usize = 0;
/// See [`CLASS_ANY`].
pub(crate) const CLASS_BUY: usize = 1;
/// See [`CLASS_ANY`].
pub(crate) const CLASS_SELL: usize = 2;

/// For one level: a [`PrefixCounter`] per class (any/buy/sell) and per lane
/// (lane 0 = `L = ∞`, lane `i` = the `i`-th window length of the level).
#[derive(Debug, Clone)]
pub(crate) struct Counters {
    lens: Vec<i64>,
    counters: Vec<PrefixCounter>,
}

impl Counters {
    /// Empty counters for the given finite window lengths.
    pub(crate) fn new(lens: &[i64]) -> Self {
        let lanes = lens.len() + 1;
        Self {
            lens: lens.to_vec(),
            counters: vec![PrefixCounter::default(); 3 * lanes],
        }
    }

    fn lanes(&self) -> usize {
        self.lens.len() + 1
    }

    #[inline]
    fn start_of(&self, lane: usize, prev: i64, t: i64) -> i64 {
        if lane == 0 {
            prev
        } else {
            prev.max(t.saturating_sub(self.lens[lane - 1]))
        }
    }

    /// Mark `t` joins the chain of `class` between `prev` and `next` (`NONE` for none).
    #[inline]
    pub(crate) fn link(&mut self, class: usize, prev: i64, t: i64, next: i64) {
        let lanes = self.lanes();
        for lane in 0..lanes {
            let lo = self.start_of(lane, prev, t);
            let (old, new) = (
                self.start_of(lane, prev, next),
                self.start_of(lane, t, next),
            );
            let counter = &mut self.counters[class * lanes + lane];
            counter.add_interval(lo, t, 1);
            if next != NONE && old != new {
                counter.add_interval(old, new, -1);
            }
        }
    }

    /// Mark `t`, first of the chain of `class`, leaves it; `next` becomes first.
    #[inline]
    pub(crate) fn unlink_first(&mut self, class: usize, t: i64, next: i64) {
        let lanes = self.lanes();
        for lane in 0..lanes {
            let lo = self.start_of(lane, NONE, t);
            let (old, new) = (
                self.start_of(lane, t, next),
                self.start_of(lane, NONE, next),
            );
            let counter = &mut self.counters[class * lanes + lane];
            counter.add_interval(lo, t, -1);
            if next != NONE && old != new {
                counter.add_interval(new, old, 1);
            }
        }
    }

    /// Wallets of `class` with a mark in `[a, a + L_lane)` (lane 0: `[a, ∞)`).
    #[inline]
    pub(crate) fn count(&self, class: usize, lane: usize, a: i64) -> u64 {
        let lanes = self.lanes();
        self.counters[class * lanes + lane].count_at(a).max(0) as u64
    }

    /// Approximate heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.counters
            .iter()
            .map(PrefixCounter::heap_bytes)
            .sum::<usize>()
            + self.counters.capacity() * std::mem::size_of::<PrefixCounter>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_counter_matches_a_map() {
        let mut counter = PrefixCounter::default();
        let mut naive = std::collections::BTreeMap::new();
        let mut below = 0_i64;
        let mut x: i64 = 12345;
        for i in 0..4000 {
            x = (x * 1103515245 + 12345).rem_euclid(1 << 31);
            let lo = if i % 7 == 0 { NONE } else { x % 5000 - 2500 };
            let hi = lo.max(-2600) + (x % 900);
            let delta = if i % 3 == 0 { -1 } else { 1 };
            counter.add_interval(lo, hi, delta);
            if lo == NONE {
                below += i64::from(delta);
            } else {
                *naive.entry(lo + 1).or_insert(0_i64) += i64::from(delta);
            }
            *naive.entry(hi + 1).or_insert(0_i64) -= i64::from(delta);
        }
        for a in (-3000..3500).step_by(37) {
            let expect = below + naive.range(..=a).map(|(_, v)| v).sum::<i64>();
            assert_eq!(counter.count_at(a), expect, "a = {a}");
        }
    }

    #[test]
    fn pages_are_freed_when_everything_cancels() {
        let mut counter = PrefixCounter::default();
        counter.add_interval(10, 5000, 1);
        counter.add_interval(-900, 20, 1);
        assert!(counter.heap_bytes() > 0);
        counter.add_interval(10, 5000, -1);
        counter.add_interval(-900, 20, -1);
        assert_eq!(counter.slots.len(), 0);
        assert_eq!(counter.count_at(0), 0);
    }

    /// Brute force: wallets with a mark in [a, a + len).
    fn brute(marks: &[(u32, i64)], a: i64, len: Option<i64>) -> u64 {
        let mut wallets: Vec<u32> = marks
            .iter()
            .filter(|(_, t)| *t >= a && len.is_none_or(|l| *t < a + l))
            .map(|(w, _)| *w)
            .collect();
        wallets.sort_unstable();
        wallets.dedup();
        wallets.len() as u64
    }

    #[test]
    fn link_and_unlink_count_distinct_wallets() {
        let lens = [5_i64, 60];
        let mut counters = Counters::new(&lens);
        let mut chains: Vec<Vec<i64>> = vec![Vec::new(); 4];
        let mut marks = Vec::new();
        let mut x: u64 = 99;
        for _ in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let wallet = (x % 4) as usize;
            let t = ((x >> 8) % 200) as i64;
            let chain = &mut chains[wallet];
            let pos = chain.partition_point(|&k| k < t);
            if chain.get(pos) == Some(&t) {
                continue;
            }
            let prev = if pos > 0 { chain[pos - 1] } else { NONE };
            let next = chain.get(pos).copied().unwrap_or(NONE);
            counters.link(CLASS_ANY, prev, t, next);
            chain.insert(pos, t);
            marks.push((wallet as u32, t));
        }
        let check = |counters: &Counters, marks: &[(u32, i64)]| {
            for a in -70..210 {
                assert_eq!(
                    counters.count(CLASS_ANY, 0, a),
                    brute(marks, a, None),
                    "∞ at {a}"
                );
                for (i, len) in lens.iter().enumerate() {
                    assert_eq!(
                        counters.count(CLASS_ANY, i + 1, a),
                        brute(marks, a, Some(*len)),
                        "L={len} at {a}"
                    );
                }
            }
        };
        check(&counters, &marks);
        // Remove each wallet's marks before 100, oldest first.
        for (wallet, chain) in chains.iter_mut().enumerate() {
            while chain.first().is_some_and(|&t| t < 100) {
                let t = chain.remove(0);
                counters.unlink_first(CLASS_ANY, t, chain.first().copied().unwrap_or(NONE));
                marks.retain(|m| *m != (wallet as u32, t));
            }
        }
        check(&counters, &marks);
    }
}
