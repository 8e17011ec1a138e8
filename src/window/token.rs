//! Per-token state: buckets and wallet activity at the second and minute levels,
//! and the window queries over them.

use std::sync::Arc;

use super::marks::{Activity, MarkAdded, MarkLimits, UniqueCounts, UniqueQuery};
use super::series::Series;
use super::{Bucket, ChangePct, Level, PeriodStats, WindowList, WindowSpec, WindowStats};

/// Index of the second level in per-level arrays.
pub(crate) const SECOND: usize = 0;
/// Index of the minute level in per-level arrays.
pub(crate) const MINUTE: usize = 1;

/// Second buckets are kept for this many seconds: a 1 h window's previous range
/// starts at `now_s + 1 - 7200`.
pub(crate) const SECOND_SPAN_S: i64 = 7200;

/// Per-level array index of a [`Level`].
pub(crate) fn level_index(level: Level) -> usize {
    match level {
        Level::Second => SECOND,
        Level::Minute => MINUTE,
    }
}

/// One configured window, resolved to the level and counter lane that answer it.
#[derive(Debug, Clone)]
pub(crate) struct WindowPlan {
    pub(crate) spec: WindowSpec,
    /// The window's name, shared by every stats answer.
    pub(crate) name: Arc<str>,
    pub(crate) level: usize,
    /// Counter lane of the previous range (lane 0 is the current range).
    pub(crate) lane: usize,
}

impl WindowPlan {
    /// Level keys `(current_start, previous_start)` at `now_ms`: the current range
    /// is `[current_start, ∞)`, the previous `[previous_start, current_start)`.
    #[inline]
    pub(crate) fn key_ranges(&self, now_ms: i64) -> (i64, i64) {
        let ranges = self.spec.ranges(now_ms);
        if self.level == SECOND {
            (ranges.current.start_s, ranges.previous.start_s)
        } else {
            // Minute buckets whose start second is in the range.
            let ceil_minute = |s: i64| -(-s).div_euclid(60);
            (
                ceil_minute(ranges.current.start_s),
                ceil_minute(ranges.previous.start_s),
            )
        }
    }

    /// The unique-count queries of the current range (lane 0, open to the
    /// right) and the previous range (the window's lane), in that order.
    #[inline]
    pub(crate) fn unique_queries(&self, now_ms: i64) -> [UniqueQuery; 2] {
        let (current, previous) = self.key_ranges(now_ms);
        [
            UniqueQuery {
                start: current,
                end: i64::MAX,
                lane: 0,
            },
            UniqueQuery {
                start: previous,
                end: current,
                lane: self.lane,
            },
        ]
    }
}

/// All windows, plus each level's distinct previous-range lengths (counter lanes).
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) windows: Vec<WindowPlan>,
    pub(crate) lens: [Vec<i64>; 2],
    /// Windows at the second level (the rest are at the minute level).
    pub(crate) second_windows: usize,
    /// Per window: where its (current, previous) unique queries go when the
    /// second level's pairs come first, then the minute level's.
    pub(crate) pair_at: Vec<usize>,
}

impl Plan {
    /// Resolves the configured windows.
    pub(crate) fn new(specs: &[WindowSpec]) -> Self {
        let mut lens: [Vec<i64>; 2] = [Vec::new(), Vec::new()];
        let mut windows = Vec::with_capacity(specs.len());
        for spec in specs {
            let (level, len) = if spec.is_second_exact() {
                (SECOND, spec.secs)
            } else {
                (MINUTE, (spec.secs + 59) / 60)
            };
            let lane = match lens[level].iter().position(|&l| l == len) {
                Some(i) => i + 1,
                None => {
                    lens[level].push(len);
                    lens[level].len()
                }
            };
            windows.push(WindowPlan {
                spec: spec.clone(),
                name: Arc::from(spec.name.as_str()),
                level,
                lane,
            });
        }
        let seconds = windows.iter().filter(|w| w.level == SECOND).count();
        let mut next = [0, 2 * seconds];
        let pair_at = windows
            .iter()
            .map(|w| {
                next[w.level] += 2;
                next[w.level] - 2
            })
            .collect();
        Self {
            windows,
            lens,
            second_windows: seconds,
            pair_at,
        }
    }
}

/// Runs `f` on `n` default values: on the stack for up to 16 (every sensible
/// window list), on the heap beyond, so a stats query allocates nothing for them.
fn with_scratch<T: Copy + Default, R>(n: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    const STACK: usize = 16;
    if n <= STACK {
        f(&mut [T::default(); STACK][..n])
    } else {
        f(&mut vec![T::default(); n])
    }
}

/// Everything the engine holds for one token.
#[derive(Debug, Clone)]
pub(crate) struct TokenState {
    pub(crate) name: Arc<str>,
    /// Buckets per level.
    pub(crate) series: [Series; 2],
    /// Wallet marks of both levels.
    pub(crate) activity: Activity,
    /// Due time of this token's live entry in the expiry schedule (`i64::MAX`: none).
    pub(crate) scheduled_due_ms: i64,
}

/// Thresholds for the sparse/indexed shapes of a token's structures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShapeLimits {
    pub(crate) tier_min_buckets: usize,
    pub(crate) marks: MarkLimits,
}

impl TokenState {
    /// An empty token.
    pub(crate) fn new(name: Arc<str>) -> Self {
        Self {
            name,
            series: Default::default(),
            activity: Activity::default(),
            scheduled_due_ms: i64::MAX,
        }
    }

    /// True when it holds neither buckets nor marks.
    pub(crate) fn is_empty(&self) -> bool {
        self.series.iter().all(Series::is_empty) && self.activity.is_empty()
    }

    /// Merges a bucket delta at `key` of `level`; returns the bucket's new value.
    #[inline]
    pub(crate) fn merge(
        &mut self,
        level: usize,
        key: i64,
        delta: &Bucket,
        limits: ShapeLimits,
    ) -> &Bucket {
        self.series[level].merge(key, delta, limits.tier_min_buckets)
    }

    /// Adds side bits of `wallet` at `key` of `level`.
    #[inline]
    pub(crate) fn add_mark(
        &mut self,
        level: usize,
        wallet: u32,
        key: i64,
        sides: u8,
        plan: &Plan,
        limits: ShapeLimits,
    ) -> MarkAdded {
        self.activity
            .add(level, wallet, key, sides, &plan.lens, limits.marks)
    }

    /// Reads what merging a bucket of `level` reads first (the newest bucket,
    /// and the name an effect clones) without changing anything: see
    /// [`super::WindowEngine::apply_batch`]'s read-ahead.
    #[inline]
    pub(crate) fn warm_merge(&self, level: usize) {
        let newest = self.series[level].last().map_or(0, |entry| entry.0);
        std::hint::black_box(newest ^ Arc::strong_count(&self.name) as i64);
    }

    /// Brings the wallet records the next [`TokenState::add_mark`] calls at
    /// `level` will update into cache (see [`Activity::warm`]).
    pub(crate) fn warm_marks(&self, level: usize, wallets: impl Iterator<Item = u32>) {
        self.activity.warm(level, wallets);
    }

    /// Drops data with keys before `cuts[level]` (second, minute).
    pub(crate) fn trim(&mut self, cuts: [i64; 2], limits: ShapeLimits, release: impl FnMut(u32)) {
        for (series, cut) in self.series.iter_mut().zip(cuts) {
            series.trim(cut, limits.tier_min_buckets);
        }
        self.activity.trim(cuts, limits.marks, release);
    }

    /// Releases every wallet reference (before the token is dropped).
    pub(crate) fn release_all(&mut self, release: impl FnMut(u32)) {
        self.activity.release_all(release);
    }

    fn oldest_key(&self, level: usize) -> Option<i64> {
        match (
            self.series[level].first_key(),
            self.activity.oldest_key(level),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the oldest data needs trimming: second key `s` at `(s + 7200) s`,
    /// minute key `m` at `(m + 1) min + retention`.
    pub(crate) fn due_ms(&self, retention_ms: i64) -> i64 {
        let second = self.oldest_key(SECOND).map_or(i64::MAX, second_due_ms);
        let minute = self
            .oldest_key(MINUTE)
            .map_or(i64::MAX, |m| minute_due_ms(m, retention_ms));
        second.min(minute)
    }

    /// When all of the data has aged out (its newest minute bucket is due).
    pub(crate) fn gone_ms(&self, retention_ms: i64) -> i64 {
        self.newest()
            .map_or(i64::MAX, |(m, _)| minute_due_ms(m, retention_ms))
    }

    /// The newest minute bucket's key and block time of its latest swap.
    pub(crate) fn newest(&self) -> Option<(i64, i64)> {
        self.series[MINUTE]
            .last()
            .map(|(key, b)| (*key, b.close.at_ms))
    }

    /// Stats of every window at `now_ms`, in plan order, appended to `out`.
    ///
    /// Written in place: an answer's four windows are ~1.6 KB, and returning
    /// them by value copied them at each step out to the caller (~100 ns of a
    /// quiet token's ~560 ns in the engine bench, interleaved in one process).
    pub(crate) fn window_stats(&self, plan: &Plan, now_ms: i64, out: &mut WindowList) {
        let n = 2 * plan.windows.len();
        with_scratch(n, |queries: &mut [UniqueQuery]| {
            with_scratch(n, |uniques: &mut [UniqueCounts]| {
                // Each window's (current, previous) pair at `plan.pair_at`: one
                // level's pairs are contiguous, so a pass over that level's
                // wallets answers all of them.
                for (w, &at) in plan.windows.iter().zip(&plan.pair_at) {
                    queries[at..at + 2].copy_from_slice(&w.unique_queries(now_ms));
                }
                // The second level's queries, then the minute level's.
                let split = 2 * plan.second_windows;
                for (level, range) in [(SECOND, 0..split), (MINUTE, split..n)] {
                    if !range.is_empty() {
                        self.activity
                            .uniques(level, &queries[range.clone()], &mut uniques[range]);
                    }
                }
                for (w, &at) in plan.windows.iter().zip(&plan.pair_at) {
                    let (current_start, previous_start) =
                        (queries[at].start, queries[at + 1].start);
                    // Filled in place, like the list (`window_into`).
                    out.push((w.name.clone(), WindowStats::default()));
                    if let Some((_, stats)) = out.last_mut() {
                        self.window_into(
                            w,
                            current_start,
                            previous_start,
                            [uniques[at], uniques[at + 1]],
                            stats,
                        );
                    }
                }
            })
        })
    }

    /// Stats of one window at `now_ms`.
    pub(crate) fn one_window(&self, w: &WindowPlan, now_ms: i64) -> WindowStats {
        let queries = w.unique_queries(now_ms);
        let mut uniques = [[0; 3]; 2];
        self.activity.uniques(w.level, &queries, &mut uniques);
        let mut stats = WindowStats::default();
        self.window_into(w, queries[0].start, queries[1].start, uniques, &mut stats);
        stats
    }

    /// A window's stats from its range starts and unique counts, into `out`:
    /// in place, as each window's ~400-byte return value was copied (~40 ns
    /// over a query's four windows, on every token of the engine bench,
    /// interleaved in one process).
    fn window_into(
        &self,
        w: &WindowPlan,
        current_start: i64,
        previous_start: i64,
        uniques: [UniqueCounts; 2],
        out: &mut WindowStats,
    ) {
        let series = &self.series[w.level];
        out.current = period(&series.fold(current_start, i64::MAX), uniques[0]);
        out.previous = period(&series.fold(previous_start, current_start), uniques[1]);
        out.change_pct = ChangePct::between(&out.current, &out.previous);
    }

    /// The current period of one window, with unique counts only when asked.
    pub(crate) fn current_period(
        &self,
        w: &WindowPlan,
        now_ms: i64,
        with_uniques: bool,
    ) -> PeriodStats {
        let [current, _] = w.unique_queries(now_ms);
        let current_start = current.start;
        let mut uniques = [[0; 3]];
        if with_uniques {
            self.activity.uniques(w.level, &[current], &mut uniques);
        }
        period(
            &self.series[w.level].fold(current_start, i64::MAX),
            uniques[0],
        )
    }

    /// Approximate heap bytes held, excluding the name (for memory reports).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.series.iter().map(Series::heap_bytes).sum::<usize>() + self.activity.heap_bytes()
    }
}

/// Due time of second key `s`.
pub(crate) fn second_due_ms(s: i64) -> i64 {
    s.saturating_add(SECOND_SPAN_S).saturating_mul(1000)
}

/// Due time of minute key `m`.
pub(crate) fn minute_due_ms(m: i64, retention_ms: i64) -> i64 {
    m.saturating_add(1)
        .saturating_mul(60_000)
        .saturating_add(retention_ms)
}

fn period(bucket: &Bucket, uniques: UniqueCounts) -> PeriodStats {
    let mut stats = PeriodStats::from_bucket(bucket);
    stats.unique_wallets = uniques[0];
    stats.unique_buyers = uniques[1];
    stats.unique_sellers = uniques[2];
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_match_the_lengths_of_the_previous_ranges() {
        let specs: Vec<WindowSpec> = [
            "1s",
            "90s",
            "5m",
            "1h",
            "61m",
            "1h 0m 30s",
            "2h",
            "6h",
            "24h",
        ]
        .iter()
        .map(|s| WindowSpec::parse(s).unwrap())
        .collect();
        let plan = Plan::new(&specs);
        for w in &plan.windows {
            for now_ms in [
                0_i64,
                999,
                1000,
                59_999,
                60_000,
                1_700_000_000_123,
                -1,
                -61_001,
            ] {
                let (current, previous) = w.key_ranges(now_ms);
                assert_eq!(
                    current - previous,
                    plan.lens[w.level][w.lane - 1],
                    "{} at {now_ms}",
                    w.spec.name
                );
            }
        }
        assert_eq!(plan.lens[SECOND], vec![1, 90, 300, 3600]);
        assert_eq!(plan.lens[MINUTE], vec![61, 120, 360, 1440]);
    }

    #[test]
    fn all_windows_at_once_match_one_at_a_time() {
        use crate::swap::{Side, Swap};
        let limits = ShapeLimits {
            tier_min_buckets: 4,
            marks: MarkLimits {
                flat_max: 2,
                counters_min_wallets: 1000,
            },
        };
        let now_ms = 1_700_000_040_000_i64;
        // Levels interleaved; 9 windows need more scratch than the stack holds.
        for names in [
            &["24h", "5m", "6h", "1h"][..],
            &["1s", "24h", "90s", "2h", "5m", "61m", "1h", "6h", "12h"][..],
        ] {
            let specs: Vec<WindowSpec> = names
                .iter()
                .map(|s| WindowSpec::parse(s).unwrap())
                .collect();
            let plan = Plan::new(&specs);
            let mut token = TokenState::new(Arc::from("T"));
            for i in 0..400_i64 {
                let at_ms = now_ms - (i * i * 541) % (30 * 3_600_000);
                let swap = Swap {
                    event_id: format!("e{i}"),
                    token: "T".into(),
                    wallet: None,
                    side: if i % 3 == 0 { Side::Sell } else { Side::Buy },
                    amount: 1.0 + i as f64,
                    usd: 2.0 + i as f64,
                    rate: 1.0 + (i % 7) as f64,
                    created_at_ms: None,
                    executed_at_ms: at_ms,
                };
                let bucket = Bucket::of_swap(&swap, i as u64);
                let sides = if i % 3 == 0 { 2 } else { 1 };
                for (level, key) in [
                    (SECOND, at_ms.div_euclid(1000)),
                    (MINUTE, at_ms.div_euclid(60_000)),
                ] {
                    if level == SECOND && at_ms < now_ms - SECOND_SPAN_S * 1000 {
                        continue;
                    }
                    token.merge(level, key, &bucket, limits);
                    token.add_mark(level, (i % 37) as u32, key, sides, &plan, limits);
                }
            }
            let mut all = WindowList::new();
            token.window_stats(&plan, now_ms, &mut all);
            assert_eq!(all.len(), plan.windows.len());
            for ((name, stats), w) in all.iter().zip(&plan.windows) {
                assert_eq!(&**name, w.spec.name.as_str());
                assert_eq!(*stats, token.one_window(w, now_ms), "window {name}");
                assert!(stats.current.txns > 0, "window {name} sees swaps");
            }
        }
    }
}
