//! Exact distinct-wallet counts over sliding ranges in O(1) per update.
//!
//! For a window of length `L` (in bucket keys) let `C_L(a)` be the number of
//! wallets with a mark in `[a, a + L)`. Give every mark `t` of a wallet, whose
//! previous mark (of the same class) is `p`, the interval `(max(p, t - L), t]`: a
//! wallet's intervals are disjoint and their union is exactly the set of `a` for
//! which it has a mark in `[a, a + L)`. So `C_L(a)` is the number of intervals
//! covering `a`, a prefix sum over a difference array, and inserting or removing
//! a mark changes at most two intervals. `L = ∞` gives the current window
//! (`[a, ∞)`), where the intervals are `(p, t]`.
//!
//! One level keeps a difference array per class (any / buy / sell) and lane
//! (lane 0 is `L = ∞`, lane `i` the `i`-th window length), interleaved by
//! position: the cells one mark touches share cache lines.

use std::collections::VecDeque;

/// "No such mark": the predecessor of a wallet's first mark.
pub(crate) const NONE: i64 = i64::MIN;

/// Class of a mark chain: any side, buys, sells.
pub(crate) const CLASS_ANY: usize = 0;
/// See [`CLASS_ANY`].
pub(crate) const CLASS_BUY: usize = 1;
/// See [`CLASS_ANY`].
pub(crate) const CLASS_SELL: usize = 2;
const CLASSES: usize = 3;

const PAGE_BITS: u32 = 11;
const PAGE_LEN: usize = 1 << PAGE_BITS;
/// A page's positions form a tree of sums: the page total, then per level
/// `1 << FANOUT_BITS[l]` children per node (16 superblocks of 8 blocks of 16
/// cells). A point update changes one row per level; a prefix sum reads at most
/// half of each level's siblings (see [`Counters::count`]).
const FANOUT_BITS: [u32; 3] = [4, 3, 4];
/// Positions under one node of each level: 128, 16, 1.
const SPAN_BITS: [u32; 3] = [7, 4, 0];
/// First row of each level in a page (row 0 is the page total).
const LEVEL_ROW: [usize; 3] = [1, 1 + 16, 1 + 16 + 128];
/// Rows in a page: the total, 16 superblocks, 128 blocks, 2048 cells.
const PAGE_ROWS: usize = 1 + 16 + 128 + PAGE_LEN;
const _: () = assert!(
    SPAN_BITS[0] + FANOUT_BITS[0] == PAGE_BITS
        && SPAN_BITS[1] + FANOUT_BITS[1] == SPAN_BITS[0]
        && SPAN_BITS[2] + FANOUT_BITS[2] == SPAN_BITS[1]
        && LEVEL_ROW[1] == LEVEL_ROW[0] + (1 << FANOUT_BITS[0])
        && LEVEL_ROW[2] == LEVEL_ROW[1] + (1 << (PAGE_BITS - SPAN_BITS[1]))
        && PAGE_ROWS == LEVEL_ROW[2] + PAGE_LEN
);

/// `PAGE_LEN` positions of every (lane, class) difference array. `data` holds
/// `PAGE_ROWS` rows of `stride` cells each: the page totals, the superblock
/// sums, the block sums, then the cells.
#[derive(Debug, Clone)]
struct Page {
    data: Box<[i32]>,
    nonzero: u32,
}

/// Difference arrays of one level, with point updates and prefix sums.
#[derive(Debug, Clone)]
pub(crate) struct Counters {
    lens: Vec<i64>,
    cells: Cells,
}

/// The cells of every (lane, class) difference array: apart from the lane
/// lengths, so an update can read those while it writes these.
#[derive(Debug, Clone)]
struct Cells {
    stride: usize,
    /// Per row index: intervals open to the left (count at "minus infinity").
    below: Vec<i64>,
    first_page: i64,
    pages: VecDeque<Option<Page>>,
    /// Some page's last nonzero cell went to zero (see [`Cells::free_empty_pages`]).
    emptied: bool,
}

/// Start of the interval of mark `t` after `prev` in `lane`: `prev`, or `L`
/// keys back when the lane's length `L` does not reach `prev`.
#[inline]
fn start_of(lens: &[i64], lane: usize, prev: i64, t: i64) -> i64 {
    if lane == 0 {
        prev
    } else {
        prev.max(t.saturating_sub(lens[lane - 1]))
    }
}

impl Counters {
    /// Empty counters for the given finite window lengths.
    pub(crate) fn new(lens: &[i64]) -> Self {
        let stride = (lens.len() + 1) * CLASSES;
        Self {
            lens: lens.to_vec(),
            cells: Cells {
                stride,
                below: vec![0; stride],
                first_page: 0,
                pages: VecDeque::new(),
                emptied: false,
            },
        }
    }

    /// Mark `t` joins the chain of `class` between `prev` and `next` (`NONE` for none).
    ///
    /// Every lane's new interval ends at `t`, and every lane whose length reaches
    /// back to `prev` starts it there: those updates share one position each, so
    /// they are made in one pass over the page (see [`Cells::add_rows`]).
    #[inline]
    pub(crate) fn link(&mut self, class: usize, prev: i64, t: i64, next: i64) {
        let Self { lens, cells } = self;
        let lanes = 0..=lens.len();
        let row = |lane: usize| lane * CLASSES + class;
        for lane in lanes.clone() {
            let lo = start_of(lens, lane, prev, t);
            if lo != prev {
                cells.add_start(lo, 1, [row(lane)]);
            }
        }
        let from_prev = lanes
            .clone()
            .filter(|&lane| start_of(lens, lane, prev, t) == prev);
        cells.add_start(prev, 1, from_prev.map(row));
        cells.add_rows(t + 1, -1, lanes.clone().map(row));
        if next != NONE {
            for lane in lanes {
                let old = start_of(lens, lane, prev, next);
                let new = start_of(lens, lane, t, next);
                if old != new {
                    cells.add_interval(row(lane), old, new, -1);
                }
            }
        }
        cells.free_empty_pages();
    }

    /// Mark `t`, first of the chain of `class`, leaves it; `next` becomes first.
    #[inline]
    pub(crate) fn unlink_first(&mut self, class: usize, t: i64, next: i64) {
        let Self { lens, cells } = self;
        let lanes = 0..=lens.len();
        let row = |lane: usize| lane * CLASSES + class;
        for lane in lanes.clone() {
            cells.add_start(start_of(lens, lane, NONE, t), -1, [row(lane)]);
            if next != NONE {
                let old = start_of(lens, lane, t, next);
                let new = start_of(lens, lane, NONE, next);
                if old != new {
                    cells.add_interval(row(lane), new, old, 1);
                }
            }
        }
        cells.add_rows(t + 1, 1, lanes.map(row));
        cells.free_empty_pages();
    }

    /// Wallets (any, buyers, sellers) with a mark in `[a, a + L_lane)` (lane 0: `[a, ∞)`).
    pub(crate) fn count(&self, lane: usize, a: i64) -> [u64; 3] {
        let cells = &self.cells;
        let first_row = lane * CLASSES;
        let mut sums = [0_i64; CLASSES];
        for (c, sum) in sums.iter_mut().enumerate() {
            *sum = cells.below[first_row + c];
        }
        let page_id = a >> PAGE_BITS;
        let stride = cells.stride;
        let mut add_row = |data: &[i32], row: usize, sign: i64| {
            let at = row * stride + first_row;
            for (c, sum) in sums.iter_mut().enumerate() {
                *sum += sign * i64::from(data[at + c]);
            }
        };
        for (i, page) in cells.pages.iter().enumerate() {
            let id = cells.first_page + i as i64;
            if id > page_id {
                break;
            }
            let Some(page) = page else { continue };
            let data = &page.data;
            if id < page_id {
                add_row(data, 0, 1);
                continue;
            }
            // The page's prefix through `offset`, level by level: the siblings
            // before `offset`'s node (at the cell level, through it), summed
            // from whichever end is nearer: directly, or as the parent's sum
            // minus the siblings after.
            let offset = (a & (PAGE_LEN as i64 - 1)) as usize;
            let mut parent = 0;
            for level in 0..3 {
                let node = offset >> SPAN_BITS[level];
                let first = node >> FANOUT_BITS[level] << FANOUT_BITS[level];
                let end = first + (1 << FANOUT_BITS[level]);
                let upto = if level == 2 { node + 1 } else { node };
                let row = LEVEL_ROW[level];
                if upto - first <= end - upto {
                    (first..upto).for_each(|n| add_row(data, row + n, 1));
                } else {
                    add_row(data, parent, 1);
                    (upto..end).for_each(|n| add_row(data, row + n, -1));
                }
                parent = row + node;
            }
        }
        sums.map(|s| s.max(0) as u64)
    }

    /// Approximate heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        let cells = &self.cells;
        let page = PAGE_ROWS * cells.stride * 4;
        cells.pages.iter().flatten().count() * page
            + cells.pages.capacity() * std::mem::size_of::<Option<Page>>()
            + (cells.below.capacity() + self.lens.capacity()) * 8
    }
}

impl Cells {
    /// Adds `delta` to the count of every `a` in `(lo, hi]` (`lo == NONE`: unbounded).
    #[inline]
    fn add_interval(&mut self, row: usize, lo: i64, hi: i64, delta: i32) {
        self.add_start(lo, delta, [row]);
        self.add_rows(hi + 1, -delta, [row]);
    }

    /// Adds `delta` to the count of every `a` after `lo` in `rows` (`lo == NONE`:
    /// every `a`).
    #[inline]
    fn add_start(&mut self, lo: i64, delta: i32, rows: impl IntoIterator<Item = usize>) {
        if lo == NONE {
            for row in rows {
                self.below[row] += i64::from(delta);
            }
        } else {
            self.add_rows(lo + 1, delta, rows);
        }
    }

    /// Adds `delta` at `position` of each of `rows`: one page lookup, and the
    /// tree rows above the cell computed once for all of them.
    #[inline]
    fn add_rows(&mut self, position: i64, delta: i32, rows: impl IntoIterator<Item = usize>) {
        let mut rows = rows.into_iter().peekable();
        if rows.peek().is_none() {
            return;
        }
        let index = self.page_index(position >> PAGE_BITS);
        let stride = self.stride;
        let page = self.pages[index].get_or_insert_with(|| Page {
            data: vec![0; PAGE_ROWS * stride].into_boxed_slice(),
            nonzero: 0,
        });
        let offset = (position & (PAGE_LEN as i64 - 1)) as usize;
        let sums = [
            0,
            (LEVEL_ROW[0] + (offset >> SPAN_BITS[0])) * stride,
            (LEVEL_ROW[1] + (offset >> SPAN_BITS[1])) * stride,
        ];
        let cells = (LEVEL_ROW[2] + offset) * stride;
        for row in rows {
            for at in sums {
                page.data[at + row] += delta;
            }
            let cell = &mut page.data[cells + row];
            let before = *cell;
            *cell += delta;
            if before == 0 {
                page.nonzero += 1;
            } else if *cell == 0 {
                page.nonzero -= 1;
            }
        }
        self.emptied |= page.nonzero == 0;
    }

    /// Frees the pages left with no nonzero cell. Called once a link or unlink
    /// is complete: a page can be empty for a moment in between, and freeing it
    /// then would only allocate it again.
    fn free_empty_pages(&mut self) {
        if !std::mem::take(&mut self.emptied) {
            return;
        }
        for page in &mut self.pages {
            if page.as_ref().is_some_and(|p| p.nonzero == 0) {
                *page = None;
            }
        }
        self.drop_empty_ends();
    }

    /// Index in `pages` of page `page_id`, adding empty pages to reach it.
    #[inline]
    fn page_index(&mut self, page_id: i64) -> usize {
        let index = page_id.wrapping_sub(self.first_page);
        if !self.pages.is_empty() && (0..self.pages.len() as i64).contains(&index) {
            return index as usize;
        }
        self.extend_to(page_id)
    }

    #[cold]
    fn extend_to(&mut self, page_id: i64) -> usize {
        if self.pages.is_empty() {
            self.first_page = page_id;
            self.pages.push_back(None);
            return 0;
        }
        while page_id < self.first_page {
            self.pages.push_front(None);
            self.first_page -= 1;
        }
        let index = (page_id - self.first_page) as usize;
        while index >= self.pages.len() {
            self.pages.push_back(None);
        }
        index
    }

    fn drop_empty_ends(&mut self) {
        while self.pages.front().is_some_and(Option::is_none) {
            self.pages.pop_front();
            self.first_page += 1;
        }
        while self.pages.back().is_some_and(Option::is_none) {
            self.pages.pop_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let lens = [5_i64, 60, 3000];
        let mut counters = Counters::new(&lens);
        let mut chains: Vec<Vec<i64>> = vec![Vec::new(); 4];
        let mut marks = Vec::new();
        let mut x: u64 = 99;
        for _ in 0..400 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let wallet = (x % 4) as usize;
            // Keys over several pages, some negative.
            let t = ((x >> 8) % 6000) as i64 - 1000;
            let chain = &mut chains[wallet];
            let pos = chain.partition_point(|&k| k < t);
            if chain.get(pos) == Some(&t) {
                continue;
            }
            let prev = if pos > 0 { chain[pos - 1] } else { NONE };
            let next = chain.get(pos).copied().unwrap_or(NONE);
            counters.link(CLASS_BUY, prev, t, next);
            chain.insert(pos, t);
            marks.push((wallet as u32, t));
        }
        let check = |counters: &Counters, marks: &[(u32, i64)]| {
            for a in (-4200..5200).step_by(7) {
                assert_eq!(
                    counters.count(0, a),
                    [0, brute(marks, a, None), 0],
                    "∞ at {a}"
                );
                for (i, len) in lens.iter().enumerate() {
                    assert_eq!(
                        counters.count(i + 1, a)[CLASS_BUY],
                        brute(marks, a, Some(*len)),
                        "L={len} at {a}"
                    );
                }
            }
        };
        check(&counters, &marks);
        // Remove each wallet's marks before 2500, oldest first.
        for (wallet, chain) in chains.iter_mut().enumerate() {
            while chain.first().is_some_and(|&t| t < 2500) {
                let t = chain.remove(0);
                counters.unlink_first(CLASS_BUY, t, chain.first().copied().unwrap_or(NONE));
                marks.retain(|m| *m != (wallet as u32, t));
            }
        }
        check(&counters, &marks);
        // Everything removed: every page is freed.
        for chain in &mut chains {
            while let Some(t) = chain.first().copied() {
                chain.remove(0);
                counters.unlink_first(CLASS_BUY, t, chain.first().copied().unwrap_or(NONE));
            }
        }
        assert!(counters.cells.pages.is_empty());
        assert!(counters.cells.below.iter().all(|&b| b == 0));
    }
}
