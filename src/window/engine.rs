//! `WindowEngine`: all tokens of one partition, their buckets, wallets and dedup.
//!
//! Tokens live in a slab indexed by name; wallets are interned to `u32` ids with
//! reference counts (one per mark), so ids of wallets that aged out are reused.
//! An expiry schedule (a min-heap of per-token due times) lets [`WindowEngine::expire`]
//! visit only tokens that have data to drop, never all of them.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::swap::{Side, Swap};

use super::dedup::Dedup;
use super::hash::FastMap;
use super::marks::MarkLimits;
use super::token::{
    level_index, minute_due_ms, second_due_ms, Plan, ShapeLimits, TokenState, MINUTE, SECOND,
    SECOND_SPAN_S,
};
use super::{
    event_key, price_tie, AppliedEvent, BatchCounts, BatchEffect, Bucket, BucketDelta, EventKey,
    Level, RankBy, TokenStats, TopEntry, WalletMark, WindowSpec, Windows, SIDE_BUY, SIDE_SELL,
};

/// Engine parameters, from `windows` and `ingest.*`.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Windows reported by `stats`, in this order.
    pub windows: Vec<WindowSpec>,
    /// Event ids are remembered this long (by block time); older swaps are late.
    pub dedup_horizon_ms: i64,
    /// Minute buckets and wallet marks are kept this long; at least 2 h (the
    /// second level's span) is expected.
    pub retention_ms: i64,
}

/// What happened to one swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Counted, and its event id remembered.
    Applied,
    /// Its event id was applied before, within the dedup horizon.
    Duplicate,
    /// Block time older than the dedup horizon (or the retention): dropped,
    /// not remembered.
    Late,
}

/// When a token's structures switch from their sparse shape to their indexed one.
/// The defaults are what production uses; tests lower them so that small inputs
/// exercise every shape. Results never depend on these, only speed and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineTuning {
    /// A token level with more buckets than this keeps block summaries (of
    /// 8, 64 and 512 buckets) so range folds stay short.
    pub tier_min_buckets: usize,
    /// A token with more wallet marks than this (both levels) keeps them in
    /// per-wallet records instead of one sorted vector (at most 64).
    pub flat_max_marks: usize,
    /// A token level with more active wallets than this keeps difference-array
    /// counters: O(1) unique counts, ~0.2–0.5 MB per level. Measured at 64
    /// instead of 128: the engine bench's dearest stats query is ~20 % cheaper
    /// (every token of its day then has counters), and the 1 M-token long
    /// tail ~18 % larger (`engine_memory`: 1328 → 1572 MiB).
    pub counters_min_wallets: usize,
    /// Once trimmed, a token is trimmed again when its oldest data is this
    /// overdue (or when all of it is, so it leaves on time). A busy token is
    /// then visited once per slack instead of at every expiry, and each wallet
    /// loses its aged-out marks in one visit instead of a few per expiry (each
    /// visit's record, mark list and counter rows are cache misses). Answers
    /// at or after the latest expiry do not change: their ranges start at or
    /// after the cuts (when the retention covers the longest window twice;
    /// otherwise the engine sets it to 0). Measured at 5 min: apply plus expiry
    /// of a steady engine ~20 % cheaper, 0.7 % more memory. Each trim adds up
    /// to half of it again, by token and time (see [`trim_spread_ms`]), so
    /// tokens first trimmed together (after a restore, or a stream's first
    /// two hours) drift apart instead of falling due in the same expiry.
    pub trim_slack_ms: i64,
}

impl Default for EngineTuning {
    fn default() -> Self {
        Self {
            tier_min_buckets: 64,
            flat_max_marks: 24,
            counters_min_wallets: 128,
            trim_slack_ms: 5 * 60_000,
        }
    }
}

impl EngineTuning {
    fn shape(&self) -> ShapeLimits {
        ShapeLimits {
            tier_min_buckets: self.tier_min_buckets,
            marks: MarkLimits {
                flat_max: self.flat_max_marks,
                counters_min_wallets: self.counters_min_wallets,
            },
        }
    }
}

/// A slab slot: the generation tells a reused slot from the token that left it.
#[derive(Debug)]
struct Slot {
    generation: u32,
    token: Option<TokenState>,
}

/// A swap's token slot and wallet id, looked up ahead (see
/// [`WindowEngine::apply_batch`]); `None` where the engine has none yet.
#[derive(Debug, Clone, Copy, Default)]
struct KnownIds {
    slot: Option<u32>,
    wallet: Option<u32>,
}

/// Interned wallet addresses with one reference per mark that uses them.
///
/// The id map is keyed by the address's 128-bit xxh3 hash, as dedup keys
/// event ids (collision odds ~1e-20 at 1e9 wallets): a lookup compares 16
/// bytes stored in the table instead of following a pointer to the name, which
/// with many wallets is a cache miss per swap (and per mark on restore).
#[derive(Debug, Default)]
struct WalletNames {
    ids: FastMap<u128, u32>,
    names: Vec<Option<Arc<str>>>,
    refs: Vec<u32>,
    free: Vec<u32>,
}

impl WalletNames {
    #[inline]
    fn intern(&mut self, name: &str) -> u32 {
        let key = name_key(name);
        if let Some(&id) = self.ids.get(&key) {
            return id;
        }
        let name: Arc<str> = Arc::from(name);
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = Some(name.clone());
                id
            }
            None => {
                self.names.push(Some(name.clone()));
                self.refs.push(0);
                (self.names.len() - 1) as u32
            }
        };
        self.ids.insert(key, id);
        id
    }

    /// The id of an interned address, if it is one.
    #[inline]
    fn lookup(&self, name: &str) -> Option<u32> {
        self.ids.get(&name_key(name)).copied()
    }

    #[inline]
    fn acquire(&mut self, id: u32) {
        self.refs[id as usize] += 1;
    }

    fn release(&mut self, id: u32) {
        let refs = &mut self.refs[id as usize];
        *refs = refs.saturating_sub(1);
        if *refs == 0 {
            if let Some(name) = self.names[id as usize].take() {
                self.ids.remove(&name_key(&name));
                self.free.push(id);
            }
        }
    }

    fn name(&self, id: u32) -> Arc<str> {
        self.names[id as usize].clone().unwrap_or_default()
    }

    /// Reads the names of `ids` without changing anything, so the effect's
    /// clones of them that follow do not each wait out a cache miss.
    fn warm(&self, ids: impl Iterator<Item = u32>) {
        let mut acc = 0usize;
        for id in ids {
            if let Some(Some(name)) = self.names.get(id as usize) {
                acc ^= Arc::strong_count(name);
            }
        }
        std::hint::black_box(acc);
    }
}

/// The key of a wallet address in [`WalletNames`] and of a token name in the
/// engine's token index: its 128-bit xxh3 hash.
#[inline]
fn name_key(name: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(name.as_bytes())
}

/// A batch checked against dedup and retention in arrival order
/// ([`WindowEngine::admit_batch`]): the swaps to apply, grouped by token
/// (arrival order within a token), for [`WindowEngine::apply_admitted`] to
/// apply in parts. A part then holds all of the batch's swaps of fewer
/// tokens, so each token's records and counters are warmed once per batch
/// however small the parts.
#[derive(Debug, Default)]
pub struct AdmittedBatch {
    /// `(token's name key, index in the batch, event key)`: the name key
    /// groups the swaps and finds the token's slot when they are applied.
    swaps: Vec<(u128, u32, EventKey)>,
    counts: BatchCounts,
}

impl AdmittedBatch {
    /// What admission decided: applied (to come), duplicates, late.
    pub fn counts(&self) -> BatchCounts {
        self.counts
    }

    /// Swaps to apply.
    pub fn len(&self) -> usize {
        self.swaps.len()
    }

    /// No swap to apply.
    pub fn is_empty(&self) -> bool {
        self.swaps.is_empty()
    }

    /// Puts the swaps to apply in token groups, keeping arrival order within
    /// a token. Needs no engine, so a shard does it outside the engine lock.
    pub fn group_by_token(&mut self) {
        self.swaps
            .sort_unstable_by_key(|&(token, index, _)| (token, index));
    }
}

/// `0..len` cut into consecutive ranges of at most `size` (the last shorter):
/// the chunks a batch is admitted in and the parts it is applied in.
pub fn chunk_ranges(len: usize, size: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..len)
        .step_by(size.max(1))
        .map(move |start| start..len.min(start + size))
}

/// A batch's effect while it is being built: slots and wallet ids instead of
/// strings, deltas pre-merged per (token, level, key). The engine keeps one
/// between batches, so a batch reuses its capacity instead of regrowing it.
#[derive(Debug, Default)]
struct PendingBatch {
    buckets: Vec<(u32, usize, i64, Bucket)>,
    bucket_at: FastMap<(u32, u8, i64), u32>,
    /// One entry per swap, per level: adding them needs no merge.
    marks: [Vec<PendingMark>; 2],
    /// Each applied swap's token slot and wallet id where known.
    known: Vec<KnownIds>,
}

impl PendingBatch {
    /// Capacity kept from the largest batch so far.
    fn heap_bytes(&self) -> usize {
        fn bytes<T>(v: &Vec<T>) -> usize {
            v.capacity() * std::mem::size_of::<T>()
        }
        bytes(&self.buckets)
            + self.marks.iter().map(bytes).sum::<usize>()
            + bytes(&self.known)
            + self.bucket_at.capacity() * (std::mem::size_of::<((u32, u8, i64), u32)>() + 1)
    }
}

/// A swap's wallet mark at one level while a batch is built: token slot,
/// wallet id, key and side bits packed in one integer whose order is (slot,
/// wallet, key), so sorting a batch's marks compares integers, not tuples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PendingMark(u128);

impl PendingMark {
    #[inline]
    fn new(slot: u32, wallet: u32, key: i64, sides: u8) -> Self {
        // `key << 2 | sides` with the sign bit flipped: unsigned order is
        // then the keys' signed order. (A key is unix ms divided by 1,000 or
        // 60,000, so shifting it by two never overflows.)
        let packed = ((key << 2) | i64::from(sides)) as u64 ^ (1 << 63);
        Self(u128::from(slot) << 96 | u128::from(wallet) << 64 | u128::from(packed))
    }

    #[inline]
    fn slot(self) -> u32 {
        (self.0 >> 96) as u32
    }

    #[inline]
    fn wallet(self) -> u32 {
        (self.0 >> 64) as u32
    }

    #[inline]
    fn key(self) -> i64 {
        (self.0 as u64 ^ (1 << 63)) as i64 >> 2
    }

    #[inline]
    fn sides(self) -> u8 {
        (self.0 & 3) as u8
    }
}

/// Event ids of a restore, remembered apart from the engine: a restart builds
/// them on a thread of their own while the tokens are restored, then hands them
/// to [`WindowEngine::adopt_events`] (the same state as restoring them in place;
/// they are a fifth of a restore's work and memory, independent of the tokens).
#[derive(Debug, Default)]
pub struct RestoredEvents(Dedup);

impl RestoredEvents {
    /// Remembers `events`, as [`WindowEngine::restore`] would.
    pub fn add(&mut self, events: &[AppliedEvent]) {
        remember_events(&mut self.0, events);
    }
}

fn remember_events(dedup: &mut Dedup, events: &[AppliedEvent]) {
    dedup.reserve(events.len());
    for event in events {
        dedup.insert(event.key, event.executed_at_ms);
    }
}

/// Sliding-window statistics for every token of one partition.
pub struct WindowEngine {
    config: EngineConfig,
    tuning: EngineTuning,
    plan: Plan,
    /// Token slots by the name's [`name_key`]: like [`WalletNames`], a lookup
    /// compares 16 bytes in the table instead of following a pointer to the
    /// name (a cache miss per swap with thousands of tokens).
    index: FastMap<u128, u32>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    wallets: WalletNames,
    dedup: Dedup,
    /// Min-heap of `(due_ms, slot, generation)`; stale entries are skipped.
    schedule: BinaryHeap<Reverse<(i64, u32, u32)>>,
    /// Scratch of [`WindowEngine::apply_batch`], empty between calls.
    pending: PendingBatch,
}

impl WindowEngine {
    /// An empty engine.
    pub fn new(config: EngineConfig) -> Self {
        Self::with_tuning(config, EngineTuning::default())
    }

    /// An empty engine with explicit shape thresholds (see [`EngineTuning`]).
    pub fn with_tuning(config: EngineConfig, tuning: EngineTuning) -> Self {
        let plan = Plan::new(&config.windows);
        let tuning = EngineTuning {
            trim_slack_ms: invisible_trim_slack(&config, tuning.trim_slack_ms),
            ..tuning
        };
        Self {
            config,
            tuning,
            plan,
            index: FastMap::default(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            wallets: WalletNames::default(),
            dedup: Dedup::default(),
            schedule: BinaryHeap::new(),
            pending: PendingBatch::default(),
        }
    }

    /// Forgets every swap, keeping the configuration (a restore starting over).
    pub fn clear(&mut self) {
        *self = Self::with_tuning(self.config.clone(), self.tuning);
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Applies one swap at query clock `now_ms`.
    pub fn apply(&mut self, swap: &Swap, now_ms: i64) -> ApplyOutcome {
        let key = event_key(&swap.event_id);
        match self.admit(key, swap.executed_at_ms, now_ms) {
            ApplyOutcome::Applied => {}
            rejected => return rejected,
        }
        let bucket = Bucket::of_swap(swap, price_tie(key));
        let slot = self.slot_for(&swap.token);
        let wallet = swap.wallet.as_deref().map(|w| self.wallets.intern(w));
        let keys = level_keys(swap.executed_at_ms, now_ms);
        let shape = self.tuning.shape();
        let Self {
            slots,
            wallets,
            plan,
            ..
        } = self;
        let Some(token) = slots[slot as usize].token.as_mut() else {
            return ApplyOutcome::Applied;
        };
        for (level, key) in keys.iter().enumerate() {
            let Some(key) = *key else { continue };
            token.merge(level, key, &bucket, shape);
            if let Some(wallet) = wallet {
                if token
                    .add_mark(level, wallet, key, side_bit(swap.side), plan, shape)
                    .created
                {
                    wallets.acquire(wallet);
                }
            }
        }
        self.schedule_keys(slot, keys);
        ApplyOutcome::Applied
    }

    /// Applies a batch and returns what it changed (for the store) and the
    /// counts: [`WindowEngine::admit_batch`], then all of it at once through
    /// [`WindowEngine::apply_admitted`].
    pub fn apply_batch(&mut self, swaps: &[Swap], now_ms: i64) -> (BatchEffect, BatchCounts) {
        let mut admitted = AdmittedBatch::default();
        self.admit_batch(&mut admitted, swaps, 0..swaps.len(), now_ms);
        admitted.group_by_token();
        let effect = self.apply_admitted(swaps, &admitted, 0..admitted.len(), now_ms);
        (effect, admitted.counts())
    }

    /// Decides which of `swaps[range]` apply: not seen within the dedup
    /// horizon, not older than the retention. Their event ids are remembered
    /// at once (a later duplicate in the batch is one). Successive calls for
    /// one batch must cover it in order, so the first of two swaps with one
    /// event id is the one applied, in whatever order the admitted swaps are
    /// applied afterwards ([`AdmittedBatch::group_by_token`]). Each admitted
    /// swap's token name is hashed here, once: it groups the swaps and looks
    /// the token up when they are applied.
    ///
    /// Dedup runs in a pass of its own: its set lookups do not depend on one
    /// another, so the CPU overlaps their cache misses (the set holds a day of
    /// event ids, far beyond the caches): `apply/batches_of_20000` ran 2–28 %
    /// faster in 10 of 11 runs alternating with the one-pass build.
    pub fn admit_batch(
        &mut self,
        admitted: &mut AdmittedBatch,
        swaps: &[Swap],
        range: std::ops::Range<usize>,
        now_ms: i64,
    ) {
        let first = range.start;
        let Some(swaps) = swaps.get(range) else {
            return;
        };
        admitted.swaps.reserve(swaps.len());
        for (index, swap) in (first..).zip(swaps) {
            let key = event_key(&swap.event_id);
            match self.admit(key, swap.executed_at_ms, now_ms) {
                ApplyOutcome::Applied => {
                    admitted.counts.applied += 1;
                    admitted
                        .swaps
                        .push((name_key(&swap.token), index as u32, key));
                }
                ApplyOutcome::Duplicate => admitted.counts.duplicates += 1,
                ApplyOutcome::Late => admitted.counts.late += 1,
            }
        }
    }

    /// Applies `part` (a range of [`AdmittedBatch::len`]) of an admitted batch
    /// and returns what it changed, for the store. `swaps` is the batch given
    /// to [`WindowEngine::admit_batch`]. The parts may be applied in separate
    /// holds of the engine, with expiry in between: nothing looked up here
    /// outlives the call.
    ///
    /// The part's deltas are merged first and then folded into the engine, in
    /// the same order [`WindowEngine::restore`] folds them, so restoring the
    /// effects of a sequence of batches rebuilds bit-identical state.
    pub fn apply_admitted(
        &mut self,
        swaps: &[Swap],
        admitted: &AdmittedBatch,
        part: std::ops::Range<usize>,
        now_ms: i64,
    ) -> BatchEffect {
        let part = admitted.swaps.get(part).unwrap_or_default();
        let applied = || {
            part.iter()
                .filter_map(|&(token, index, key)| Some((swaps.get(index as usize)?, token, key)))
        };
        let mut pending = std::mem::take(&mut self.pending);
        let mut events = Vec::with_capacity(part.len());
        // The tokens and wallets the engine already has are looked up in a
        // pass of their own, like dedup (10k tokens and 100k wallets, batches
        // alternating in one process: wallets 2–3 % faster, tokens then
        // 7–9 %); creating new ones in this pass was slower.
        let mut known = std::mem::take(&mut pending.known);
        known.extend(applied().map(|(swap, token, _)| self.known_ids(swap, token)));
        for ((swap, token, key), known) in applied().zip(known.drain(..)) {
            events.push(AppliedEvent {
                key,
                executed_at_ms: swap.executed_at_ms,
            });
            let bucket = Bucket::of_swap(swap, price_tie(key));
            let slot = known
                .slot
                .unwrap_or_else(|| self.slot_of_key(token, &swap.token));
            let wallet = (swap.wallet.as_deref())
                .map(|w| known.wallet.unwrap_or_else(|| self.wallets.intern(w)));
            for (level, key) in level_keys(swap.executed_at_ms, now_ms).iter().enumerate() {
                let Some(key) = *key else { continue };
                let next = pending.buckets.len() as u32;
                let at = *pending
                    .bucket_at
                    .entry((slot, level as u8, key))
                    .or_insert(next);
                match pending.buckets.get_mut(at as usize) {
                    Some(entry) => entry.3.merge(&bucket),
                    None => pending.buckets.push((slot, level, key, bucket)),
                }
                if let Some(wallet) = wallet {
                    pending.marks[level].push(PendingMark::new(
                        slot,
                        wallet,
                        key,
                        side_bit(swap.side),
                    ));
                }
            }
        }
        pending.known = known;
        let shape = self.tuning.shape();
        let mut effect = BatchEffect {
            buckets: Vec::with_capacity(pending.buckets.len()),
            wallets: Vec::with_capacity(pending.marks.iter().map(Vec::len).sum()),
            events,
        };
        pending.bucket_at.clear();
        // A few dozen buckets at a time: their tokens' newest buckets and
        // names are read first (misses overlapped), then merged into.
        let mut buckets = std::mem::take(&mut pending.buckets);
        for chunk in buckets.chunks(WARM_AHEAD) {
            for &(slot, level, _, _) in chunk {
                if let Some(token) = &self.slots[slot as usize].token {
                    token.warm_merge(level);
                }
            }
            for &(slot, level, key, delta) in chunk {
                let Some(token) = self.slots[slot as usize].token.as_mut() else {
                    continue;
                };
                let total = *token.merge(level, key, &delta, shape);
                effect.buckets.push(BucketDelta {
                    token: token.name.clone(),
                    level: LEVELS[level],
                    at: key,
                    delta,
                    total,
                });
                let mut keys = [None, None];
                keys[level] = Some(key);
                self.schedule_keys(slot, keys);
            }
        }
        buckets.clear();
        pending.buckets = buckets;
        // Marks are sets of side bits: their order does not matter, and a mark
        // that adds no bit (already held, or repeated in the batch) is not emitted.
        // Sorted by level and token, a token's records and counter pages stay in
        // cache while its marks go in (a quarter faster than arrival order).
        for (level, marks) in pending.marks.iter_mut().enumerate() {
            marks.sort_unstable();
            // In runs of one token, a few dozen marks at a time: their
            // wallets' names and records are read first (misses overlapped),
            // then added to.
            for run in marks
                .chunk_by(|a, b| a.slot() == b.slot())
                .flat_map(|run| run.chunks(WARM_AHEAD))
            {
                let Self {
                    slots,
                    wallets,
                    plan,
                    ..
                } = &mut *self;
                let Some(token) = slots[run[0].slot() as usize].token.as_mut() else {
                    continue;
                };
                wallets.warm(run.iter().map(|m| m.wallet()));
                token.warm_marks(level, run.iter().map(|m| m.wallet()));
                for &mark in run {
                    let wallet = mark.wallet();
                    let added =
                        token.add_mark(level, wallet, mark.key(), mark.sides(), plan, shape);
                    if added.created {
                        wallets.acquire(wallet);
                    }
                    if added.sides != 0 {
                        effect.wallets.push(WalletMark {
                            token: token.name.clone(),
                            wallet: wallets.name(wallet),
                            level: LEVELS[level],
                            at: mark.key(),
                            sides: added.sides,
                        });
                    }
                }
            }
            marks.clear();
        }
        self.pending = pending;
        effect
    }

    /// Merges persisted effects back in (restart from the store).
    pub fn restore(&mut self, effect: &BatchEffect) {
        let shape = self.tuning.shape();
        // A load groups each token's data: look the token up once per run.
        let mut last = None;
        for delta in &effect.buckets {
            let slot = self.cached_slot(&mut last, &delta.token);
            let level = level_index(delta.level);
            if let Some(token) = self.slots[slot as usize].token.as_mut() {
                token.merge(level, delta.at, &delta.delta, shape);
            }
            let mut keys = [None, None];
            keys[level] = Some(delta.at);
            self.schedule_keys(slot, keys);
        }
        // Wallets are interned first, in a loop of their own: its lookups do not
        // depend on one another, so the CPU overlaps their cache misses. With a
        // restart's ~100k wallets the id map is out of L2; interned mark by
        // mark, between each mark's record and counter updates, the lookups
        // were ~30% of a shard's restore thread in a profile of shard_restart.
        // `restore/effects_of_1M_swaps_100k_wallets`: 6–11 % faster (3 A/B runs).
        let marks = effect
            .wallets
            .iter()
            .map(|mark| (mark, mark.sides & (SIDE_BUY | SIDE_SELL)))
            .filter(|&(_, sides)| sides != 0);
        // Only the ids are kept (4 bytes a mark): the second pass walks the
        // same filtered marks again. Keeping (mark, sides, id) instead was
        // 7–22 % slower in 3 A/B runs of the restore bench (more fresh memory).
        let ids: Vec<u32> = marks
            .clone()
            .map(|(mark, _)| self.wallets.intern(&mark.wallet))
            .collect();
        for ((mark, sides), wallet) in marks.zip(ids) {
            let slot = self.cached_slot(&mut last, &mark.token);
            let level = level_index(mark.level);
            let Self {
                slots,
                wallets,
                plan,
                ..
            } = &mut *self;
            if let Some(token) = slots[slot as usize].token.as_mut() {
                if token
                    .add_mark(level, wallet, mark.at, sides, plan, shape)
                    .created
                {
                    wallets.acquire(wallet);
                }
            }
            let mut keys = [None, None];
            keys[level] = Some(mark.at);
            self.schedule_keys(slot, keys);
        }
        remember_events(&mut self.dedup, &effect.events);
    }

    /// Takes over event ids restored apart (see [`RestoredEvents`]).
    pub fn adopt_events(&mut self, events: RestoredEvents) {
        self.dedup.absorb(events.0);
    }

    /// Stats of `token` at `now_ms`; `None` when it has no swap within retention.
    pub fn stats(&self, token: &str, now_ms: i64) -> Option<TokenStats> {
        let state = self.live_token(token, now_ms)?;
        let (_, last_swap_at) = state.newest()?;
        // Built in place (see `TokenState::window_stats`).
        let mut stats = TokenStats {
            token: state.name.to_string(),
            updated_at: now_ms,
            last_swap_at: Some(last_swap_at),
            windows: Windows::default(),
        };
        state.window_stats(&self.plan, now_ms, &mut stats.windows.0);
        Some(stats)
    }

    /// Top `limit` tokens of window `window` by `by`; `None` for an unknown window.
    pub fn top(
        &self,
        window: &str,
        by: RankBy,
        limit: usize,
        now_ms: i64,
    ) -> Option<Vec<TopEntry>> {
        let plan = self.plan.windows.iter().find(|w| w.spec.name == window)?;
        let minute_cut = self.minute_cut(now_ms);
        let mut ranked: Vec<(Option<f64>, &TokenState)> = self
            .slots
            .iter()
            .filter_map(|slot| slot.token.as_ref())
            .filter(|token| {
                token
                    .newest()
                    .is_some_and(|(minute, _)| minute >= minute_cut)
            })
            .map(|token| {
                let current = token.current_period(plan, now_ms, by == RankBy::UniqueWallets);
                (by.value(&current), token)
            })
            .collect();
        let order = |a: &(Option<f64>, &TokenState), b: &(Option<f64>, &TokenState)| -> Ordering {
            let by_value = match (a.0, b.0) {
                (Some(x), Some(y)) => y.total_cmp(&x),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            };
            by_value.then_with(|| a.1.name.cmp(&b.1.name))
        };
        if limit == 0 {
            return Some(Vec::new());
        }
        if ranked.len() > limit {
            ranked.select_nth_unstable_by(limit - 1, order);
            ranked.truncate(limit);
        }
        ranked.sort_unstable_by(order);
        Some(
            ranked
                .into_iter()
                .map(|(value, token)| TopEntry {
                    token: token.name.to_string(),
                    value,
                    stats: token.one_window(plan, now_ms),
                })
                .collect(),
        )
    }

    /// Drops buckets, wallet marks and dedup entries that aged out at `now_ms`.
    pub fn expire(&mut self, now_ms: i64) {
        self.expire_some(now_ms, usize::MAX, usize::MAX);
    }

    /// Like [`WindowEngine::expire`], but forgets at most `max_events` event
    /// ids and trims at most `max_tokens` tokens, and says whether more are
    /// due: a caller that must not hold the engine long (a shard, while
    /// queries wait) expires in several short calls. What is left for later
    /// stays a little longer: old data no answer depends on (see
    /// [`EngineTuning::trim_slack_ms`]), and event ids just past the dedup
    /// horizon (a swap re-sent meanwhile counts as the duplicate it is).
    pub fn expire_some(&mut self, now_ms: i64, max_events: usize, max_tokens: usize) -> bool {
        let horizon = now_ms.saturating_sub(self.config.dedup_horizon_ms);
        if self.dedup.expire_some(horizon, max_events) {
            return true;
        }
        let mut budget = max_tokens;
        let cuts = [second_cut(now_ms), self.minute_cut(now_ms)];
        let shape = self.tuning.shape();
        let retention_ms = self.config.retention_ms;
        let trim_slack_ms = self.tuning.trim_slack_ms;
        while let Some(&Reverse((due_ms, slot, generation))) = self.schedule.peek() {
            if due_ms > now_ms {
                return false;
            }
            if budget == 0 {
                return true;
            }
            self.schedule.pop();
            let Self {
                slots,
                wallets,
                index,
                free_slots,
                schedule,
                ..
            } = self;
            let entry = &mut slots[slot as usize];
            if entry.generation != generation {
                continue;
            }
            let Some(token) = entry.token.as_mut() else {
                continue;
            };
            if token.scheduled_due_ms != due_ms {
                continue;
            }
            budget -= 1;
            token.trim(cuts, shape, |w| wallets.release(w));
            if token.is_empty() {
                index.remove(&name_key(&token.name));
                token.release_all(|w| wallets.release(w));
                entry.token = None;
                entry.generation = entry.generation.wrapping_add(1);
                free_slots.push(slot);
            } else {
                let slack = trim_slack_ms + trim_spread_ms(trim_slack_ms, slot, now_ms);
                let due = (token.due_ms(retention_ms).saturating_add(slack))
                    .min(token.gone_ms(retention_ms))
                    .max(now_ms.saturating_add(1));
                token.scheduled_due_ms = due;
                schedule.push(Reverse((due, slot, generation)));
            }
        }
        false
    }

    /// Number of tokens held.
    pub fn token_count(&self) -> usize {
        self.index.len()
    }

    /// Number of event keys remembered for dedup.
    pub fn remembered_events(&self) -> usize {
        self.dedup.len()
    }

    /// Number of distinct wallets referenced by any token.
    pub fn wallet_count(&self) -> usize {
        self.wallets.ids.len()
    }

    /// Approximate heap bytes held by tokens, wallet names and dedup (for the
    /// memory gauge; allocator overhead not included).
    pub fn approx_heap_bytes(&self) -> usize {
        let tokens: usize = self
            .slots
            .iter()
            .filter_map(|s| s.token.as_ref())
            .map(|t| t.heap_bytes() + t.name.len() + 16)
            .sum();
        let slots = self.slots.capacity() * std::mem::size_of::<Slot>();
        let index = self.index.capacity() * (std::mem::size_of::<(u128, u32)>() + 1);
        let wallet_names: usize = (self.wallets.names.iter().flatten())
            .map(|name| name.len() + 16)
            .sum::<usize>()
            + self.wallets.ids.capacity() * (std::mem::size_of::<(u128, u32)>() + 1)
            + self.wallets.names.capacity() * (std::mem::size_of::<Option<Arc<str>>>() + 4);
        let schedule = self.schedule.capacity() * std::mem::size_of::<Reverse<(i64, u32, u32)>>();
        tokens
            + slots
            + index
            + wallet_names
            + schedule
            + self.pending.heap_bytes()
            + self.dedup.approx_heap_bytes()
    }

    /// Dedup and lateness of one event: a remembered key is a duplicate (even if
    /// late); otherwise a late one is dropped, and any other is remembered.
    #[inline]
    fn admit(&mut self, key: EventKey, executed_at_ms: i64, now_ms: i64) -> ApplyOutcome {
        if self.is_late(executed_at_ms, now_ms) {
            if self.dedup.contains(key) {
                ApplyOutcome::Duplicate
            } else {
                ApplyOutcome::Late
            }
        } else if self.dedup.insert(key, executed_at_ms) {
            ApplyOutcome::Applied
        } else {
            ApplyOutcome::Duplicate
        }
    }

    /// Late: older than the dedup horizon or the retention.
    #[inline]
    fn is_late(&self, executed_at_ms: i64, now_ms: i64) -> bool {
        let horizon = self.config.dedup_horizon_ms.min(self.config.retention_ms);
        executed_at_ms < now_ms.saturating_sub(horizon)
    }

    /// Minute buckets before this key are older than the retention at `now_ms`.
    fn minute_cut(&self, now_ms: i64) -> i64 {
        now_ms
            .saturating_sub(self.config.retention_ms)
            .div_euclid(60_000)
    }

    /// The token named `token` if it has a minute bucket within retention.
    fn live_token(&self, token: &str, now_ms: i64) -> Option<&TokenState> {
        let slot = self.token_slot(token)?;
        let state = self.slots.get(slot as usize)?.token.as_ref()?;
        let (newest_minute, _) = state.newest()?;
        (newest_minute >= self.minute_cut(now_ms)).then_some(state)
    }

    /// [`Self::slot_for`], skipping the lookup when `token` is `last`'s.
    fn cached_slot<'t>(&mut self, last: &mut Option<(&'t str, u32)>, token: &'t str) -> u32 {
        match *last {
            Some((name, slot)) if name == token => slot,
            _ => {
                let slot = self.slot_for(token);
                *last = Some((token, slot));
                slot
            }
        }
    }

    /// The slot of `token`, if the engine has it.
    #[inline]
    fn token_slot(&self, token: &str) -> Option<u32> {
        self.index.get(&name_key(token)).copied()
    }

    /// The slot of the swap's token (whose [`name_key`] is `token`) and the id
    /// of its wallet, where the engine already has them.
    #[inline]
    fn known_ids(&self, swap: &Swap, token: u128) -> KnownIds {
        KnownIds {
            slot: self.index.get(&token).copied(),
            wallet: swap.wallet.as_deref().and_then(|w| self.wallets.lookup(w)),
        }
    }

    /// The slot of `token`, created when absent.
    #[inline]
    fn slot_for(&mut self, token: &str) -> u32 {
        self.slot_of_key(name_key(token), token)
    }

    /// [`Self::slot_for`] of a token whose [`name_key`] is `key`.
    #[inline]
    fn slot_of_key(&mut self, key: u128, token: &str) -> u32 {
        if let Some(&slot) = self.index.get(&key) {
            return slot;
        }
        let name: Arc<str> = Arc::from(token);
        let state = TokenState::new(name.clone());
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.slots[slot as usize].token = Some(state);
                slot
            }
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    token: Some(state),
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, slot);
        slot
    }

    /// Makes sure the token's schedule entry is no later than the due time of
    /// data just added at these level keys.
    #[inline]
    fn schedule_keys(&mut self, slot: u32, keys: [Option<i64>; 2]) {
        let second = keys[SECOND].map_or(i64::MAX, second_due_ms);
        let minute = keys[MINUTE].map_or(i64::MAX, |m| minute_due_ms(m, self.config.retention_ms));
        let due = second.min(minute);
        let entry = &mut self.slots[slot as usize];
        if let Some(token) = entry.token.as_mut() {
            if due < token.scheduled_due_ms {
                token.scheduled_due_ms = due;
                self.schedule.push(Reverse((due, slot, entry.generation)));
            }
        }
    }
}

/// Level enum by per-level index.
const LEVELS: [Level; 2] = [Level::Second, Level::Minute];

/// Items whose data a read-ahead reads at a time before the work that needs
/// it (marks or buckets in [`WindowEngine::apply_batch`], wallet names in the
/// store's batch encoding): enough misses to overlap, few enough lines to
/// stay in L1.
pub(crate) const WARM_AHEAD: usize = 64;

#[inline]
fn side_bit(side: Side) -> u8 {
    match side {
        Side::Buy => SIDE_BUY,
        Side::Sell => SIDE_SELL,
    }
}

/// `slack` when data past the cuts is invisible to every query at or after
/// the latest expiry, else 0. Second-level ranges (windows up to 1 h, current
/// and previous) start at or after the second cut. A minute-level window of
/// `m` minutes (rounded up) reads back `2m`: that stays at or after the
/// minute cut only while the retention covers it (the default 48 h does for
/// 24 h); a shorter retention relies on trimming to hide older data.
fn invisible_trim_slack(config: &EngineConfig, slack: i64) -> i64 {
    let minute_reach_ms = (config.windows.iter())
        .filter(|w| !w.is_second_exact())
        .map(|w| 2 * 60_000 * ((w.secs + 59) / 60))
        .max()
        .unwrap_or(0);
    if config.retention_ms >= minute_reach_ms {
        slack
    } else {
        0
    }
}

/// Extra slack for the trim of token `slot` at `now_ms`: in `[0, slack / 2]`,
/// from a mix of both, so each trim of a token shifts its next one by a
/// different amount. Deterministic: the engine stays a pure function of its
/// input. A later trim changes no answer (see [`EngineTuning::trim_slack_ms`]).
#[inline]
fn trim_spread_ms(slack: i64, slot: u32, now_ms: i64) -> i64 {
    let mixed = (u64::from(slot) << 32 ^ now_ms as u64).wrapping_mul(super::hash::MIX);
    // The top bits are the best mixed; `slack / 2 + 1` is small and positive.
    ((mixed >> 32) % (slack as u64 / 2 + 1)) as i64
}

/// Second buckets before this key are outside the last two hours at `now_ms`.
#[inline]
fn second_cut(now_ms: i64) -> i64 {
    now_ms.div_euclid(1000) + 1 - SECOND_SPAN_S
}

/// The second key (when still within the last two hours) and minute key of a
/// block time.
#[inline]
fn level_keys(executed_at_ms: i64, now_ms: i64) -> [Option<i64>; 2] {
    let second = executed_at_ms.div_euclid(1000);
    [
        (second >= second_cut(now_ms)).then_some(second),
        Some(executed_at_ms.div_euclid(60_000)),
    ]
}

/// The service's defaults (windows 5m, 1h, 6h, 24h; 24 h dedup horizon; 48 h
/// retention), for tests that need no particular configuration.
#[cfg(test)]
impl EngineConfig {
    pub(crate) fn service_defaults() -> Self {
        Self {
            windows: super::WindowSpec::defaults(),
            dedup_horizon_ms: 24 * 3_600_000,
            retention_ms: 48 * 3_600_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swap::Side;
    use std::collections::{HashMap, HashSet};

    const HOUR: i64 = 3_600_000;
    /// Minute-aligned.
    const T0: i64 = 1_700_000_040_000;

    fn swap(id: &str, token: &str, wallet: Option<&str>, side: Side, usd: f64, at: i64) -> Swap {
        Swap {
            event_id: id.to_string(),
            token: token.to_string(),
            wallet: wallet.map(str::to_string),
            side,
            amount: usd * 2.0,
            usd,
            rate: 0.5,
            created_at_ms: None,
            executed_at_ms: at,
        }
    }

    #[test]
    fn engine_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<WindowEngine>();
    }

    #[test]
    fn duplicates_and_late_swaps_are_dropped() {
        let mut engine = WindowEngine::new(EngineConfig::service_defaults());
        let s = swap("e1", "T", Some("w"), Side::Buy, 10.0, T0);
        assert_eq!(engine.apply(&s, T0), ApplyOutcome::Applied);
        assert_eq!(engine.apply(&s, T0 + 5), ApplyOutcome::Duplicate);
        let late = swap("e2", "T", Some("w"), Side::Buy, 10.0, T0 - 24 * HOUR - 1);
        assert_eq!(engine.apply(&late, T0), ApplyOutcome::Late);
        // Late swaps are not remembered: a later, in-horizon clock still drops them as late.
        assert_eq!(engine.apply(&late, T0), ApplyOutcome::Late);
        let edge = swap("e3", "T", None, Side::Sell, 1.0, T0 - 24 * HOUR);
        assert_eq!(engine.apply(&edge, T0), ApplyOutcome::Applied);
        let stats = engine.stats("T", T0).unwrap();
        let day = stats.windows.get("24h").unwrap();
        assert_eq!(day.current.txns + day.previous.txns, 2);
        assert_eq!(engine.remembered_events(), 2);
    }

    /// Two swaps of one event id on different tokens: the one that arrived
    /// first is applied, though admitted swaps are applied grouped by token
    /// (in one of the two orders, the other token's group comes first).
    #[test]
    fn the_first_of_one_event_id_is_applied_across_token_groups() {
        for (first, second) in [("X", "Y"), ("Y", "X")] {
            let mut engine = WindowEngine::new(EngineConfig::service_defaults());
            let batch = [
                swap("e1", first, Some("w"), Side::Buy, 1.0, T0),
                swap("e1", second, Some("w"), Side::Buy, 1.0, T0),
            ];
            let (effect, counts) = engine.apply_batch(&batch, T0);
            assert_eq!((counts.applied, counts.duplicates), (1, 1));
            assert!(engine.stats(first, T0).is_some(), "{first} arrived first");
            assert!(
                engine.stats(second, T0).is_none(),
                "{second} is the duplicate"
            );
            assert!(effect.buckets.iter().all(|b| &*b.token == first));
        }
    }

    /// An admitted batch applied in parts, grouped by token, leaves the same
    /// stats as the batch applied at once, and its parts' effects hold each
    /// applied swap's event once.
    #[test]
    fn an_admitted_batch_applied_in_parts_equals_the_batch_at_once() {
        let batch: Vec<Swap> = (0..300)
            .map(|i| {
                let side = if i % 3 == 0 { Side::Sell } else { Side::Buy };
                let wallet = format!("w{}", i % 17);
                let at = T0 - (i % 50) * 1_000;
                swap(
                    &format!("e{}", i % 280),
                    &format!("T{}", i % 7),
                    Some(&wallet),
                    side,
                    1.0 + i as f64,
                    at,
                )
            })
            .collect();
        let mut at_once = WindowEngine::new(EngineConfig::service_defaults());
        let (_, counts) = at_once.apply_batch(&batch, T0);
        let mut in_parts = WindowEngine::new(EngineConfig::service_defaults());
        let mut admitted = AdmittedBatch::default();
        for chunk in chunk_ranges(batch.len(), 64) {
            in_parts.admit_batch(&mut admitted, &batch, chunk, T0);
        }
        admitted.group_by_token();
        assert_eq!(admitted.counts(), counts);
        let mut events = 0;
        for part in chunk_ranges(admitted.len(), 25) {
            events += in_parts
                .apply_admitted(&batch, &admitted, part, T0)
                .events
                .len();
        }
        assert_eq!(events as u64, counts.applied);
        for token in (0..7).map(|t| format!("T{t}")) {
            assert_eq!(
                in_parts.stats(&token, T0),
                at_once.stats(&token, T0),
                "{token}"
            );
        }
    }

    /// Expiry in calls of one token each ends where one call ends.
    #[test]
    fn expiry_one_token_at_a_time_forgets_the_same() {
        let mut engine = WindowEngine::new(EngineConfig::service_defaults());
        for token in ["A", "B", "C"] {
            let id = format!("e-{token}");
            engine.apply(&swap(&id, token, Some("w"), Side::Buy, 1.0, T0), T0);
        }
        let later = T0 + 60 * HOUR;
        let mut calls = 0;
        while engine.expire_some(later, usize::MAX, 1) {
            calls += 1;
        }
        assert_eq!(calls, 2, "3 tokens, 1 per call: 2 calls say more is due");
        assert_eq!(engine.token_count(), 0);
        assert_eq!(engine.remembered_events(), 0);
    }

    #[test]
    fn expire_forgets_events_buckets_marks_and_tokens() {
        let mut engine = WindowEngine::new(EngineConfig::service_defaults());
        engine.apply(&swap("a", "OLD", Some("w1"), Side::Buy, 5.0, T0), T0);
        engine.apply(
            &swap("b", "NEW", Some("w2"), Side::Sell, 7.0, T0 + 3 * HOUR),
            T0 + 3 * HOUR,
        );
        assert_eq!(engine.token_count(), 2);
        assert_eq!(engine.wallet_count(), 2);

        // Second buckets of OLD are gone after 2 h; its minute bucket stays.
        engine.expire(T0 + 2 * HOUR + 1000);
        let old = engine.slots[engine.token_slot("OLD").unwrap() as usize]
            .token
            .as_ref()
            .unwrap();
        assert!(old.series[SECOND].is_empty() && old.activity.len(SECOND) == 0);
        assert_eq!(old.series[MINUTE].len(), 1);
        assert_eq!(old.activity.len(MINUTE), 1);

        // The dedup horizon (24 h) forgets "a" once its block second is
        // wholly past it; the swap is then late anyway.
        engine.expire(T0 + 24 * HOUR + 999);
        assert_eq!(
            engine.remembered_events(),
            2,
            "kept to the end of its second"
        );
        engine.expire(T0 + 24 * HOUR + 1000);
        assert_eq!(engine.remembered_events(), 1);
        let again = swap("a", "OLD", Some("w1"), Side::Buy, 5.0, T0);
        assert_eq!(
            engine.apply(&again, T0 + 24 * HOUR + 1000),
            ApplyOutcome::Late
        );

        // After the retention (48 h) the whole token and its wallet go.
        assert!(engine.stats("OLD", T0 + 48 * HOUR + 59_999).is_some());
        assert!(
            engine.stats("OLD", T0 + 48 * HOUR + 60_000).is_none(),
            "minute fully past retention"
        );
        engine.expire(T0 + 48 * HOUR + 60_000);
        assert_eq!(engine.token_count(), 1);
        assert_eq!(engine.wallet_count(), 1);
        assert!(engine.stats("OLD", T0 + 48 * HOUR + 60_000).is_none());
        assert!(engine.stats("NEW", T0 + 48 * HOUR + 60_000).is_some());

        engine.expire(T0 + 100 * HOUR);
        assert_eq!(engine.token_count(), 0);
        assert_eq!(engine.wallet_count(), 0);
        assert_eq!(engine.remembered_events(), 0);
        assert!(engine.schedule.is_empty());
        // Slots and wallet ids are reused.
        engine.apply(
            &swap("c", "X", Some("w3"), Side::Buy, 1.0, T0 + 100 * HOUR),
            T0 + 100 * HOUR,
        );
        assert_eq!(engine.slots.len(), 2);
        assert_eq!(engine.wallets.names.len(), 2);
    }

    #[test]
    fn expire_visits_only_due_tokens() {
        let mut engine = WindowEngine::new(EngineConfig::service_defaults());
        for i in 0..100 {
            engine.apply(
                &swap(
                    &format!("e{i}"),
                    &format!("T{i}"),
                    None,
                    Side::Buy,
                    1.0,
                    T0 + i * 1000,
                ),
                T0 + i * 1000,
            );
        }
        // Each token has one entry due at its second key + 2 h.
        assert_eq!(engine.schedule.len(), 100);
        engine.expire(T0 + 2 * HOUR + 49_000);
        // Tokens 0..=49 were trimmed and rescheduled for their minute bucket.
        let due: Vec<i64> = engine
            .schedule
            .iter()
            .map(|Reverse((d, _, _))| *d)
            .collect();
        assert_eq!(due.iter().filter(|&&d| d > T0 + 40 * HOUR).count(), 50);
        assert_eq!(engine.token_count(), 100);
    }

    #[test]
    fn a_trimmed_token_is_trimmed_again_after_the_slack_and_leaves_on_time() {
        let mut engine = WindowEngine::new(EngineConfig::service_defaults());
        let slack = EngineTuning::default().trim_slack_ms;
        assert_eq!(engine.tuning.trim_slack_ms, slack);
        let eager_tuning = EngineTuning {
            trim_slack_ms: 0,
            ..EngineTuning::default()
        };
        let mut eager = WindowEngine::with_tuning(EngineConfig::service_defaults(), eager_tuning);
        for (i, at) in [T0, T0 + 10_000, T0 + 20_000].into_iter().enumerate() {
            let s = swap(&format!("e{i}"), "T", Some("w"), Side::Buy, 1.0, at);
            engine.apply(&s, at);
            eager.apply(&s, at);
        }
        let seconds = |engine: &WindowEngine| {
            let token = engine.slots[engine.token_slot("T").unwrap() as usize]
                .token
                .as_ref();
            token.map_or(0, |t| t.series[SECOND].len())
        };
        // The first trim is on time; the next waits until the oldest is `slack` overdue.
        engine.expire(T0 + 2 * HOUR + 1000);
        assert_eq!(seconds(&engine), 2);
        let now = T0 + 2 * HOUR + 30_000;
        engine.expire(now);
        eager.expire(now);
        assert_eq!(seconds(&engine), 2, "lingers within the slack");
        assert_eq!(seconds(&eager), 0);
        assert_eq!(engine.stats("T", now), eager.stats("T", now));
        engine.expire(T0 + 2 * HOUR + 10_000 + slack - 1);
        assert_eq!(seconds(&engine), 2, "at least the slack");
        engine.expire(T0 + 2 * HOUR + 10_000 + slack + slack / 2);
        assert_eq!(seconds(&engine), 0, "at most half of it more");
        // All of its data due: it leaves then, not a slack later.
        let gone = ((T0 + 20_000).div_euclid(60_000) + 1) * 60_000 + 48 * HOUR;
        engine.expire(gone - 1);
        assert_eq!(engine.token_count(), 1);
        engine.expire(gone);
        assert_eq!(engine.token_count(), 0);
        // Too short a retention for the longest window twice: no slack.
        let short = EngineConfig {
            retention_ms: 47 * HOUR,
            ..EngineConfig::service_defaults()
        };
        assert_eq!(WindowEngine::new(short).tuning.trim_slack_ms, 0);
    }

    #[test]
    fn tokens_trimmed_together_are_next_due_at_spread_times() {
        let mut engine = WindowEngine::new(EngineConfig::service_defaults());
        let slack = engine.tuning.trim_slack_ms;
        for i in 0..100 {
            for (n, at) in [T0, T0 + 10_000].into_iter().enumerate() {
                let s = swap(
                    &format!("e{i}-{n}"),
                    &format!("T{i}"),
                    None,
                    Side::Buy,
                    1.0,
                    at,
                );
                engine.apply(&s, at);
            }
        }
        engine.expire(T0 + 2 * HOUR + 1000);
        let due: HashSet<i64> = engine
            .schedule
            .iter()
            .map(|Reverse((d, _, _))| *d)
            .filter(|&d| d < T0 + 40 * HOUR)
            .collect();
        let oldest_due = T0 + 2 * HOUR + 10_000;
        assert!(due.len() > 90, "{} distinct due times", due.len());
        assert!(due
            .iter()
            .all(|&d| (oldest_due + slack..=oldest_due + slack + slack / 2).contains(&d)));
    }

    #[test]
    fn stale_second_data_is_not_kept() {
        let mut engine = WindowEngine::new(EngineConfig::service_defaults());
        let (effect, counts) = engine.apply_batch(
            &[swap("a", "T", Some("w"), Side::Buy, 1.0, T0)],
            T0 + 3 * HOUR,
        );
        assert_eq!(counts.applied, 1);
        assert!(effect.buckets.iter().all(|d| d.level == Level::Minute));
        assert!(effect.wallets.iter().all(|m| m.level == Level::Minute));
        assert_eq!(effect.buckets.len(), 1);
        assert_eq!(effect.wallets.len(), 1);
    }

    #[test]
    fn pending_marks_unpack_and_sort_by_slot_wallet_key() {
        let marks = [
            (0, 0, i64::MIN >> 3, 1),
            (0, 0, -61, 2),
            (0, 0, -1, 3),
            (0, 0, 0, 1),
            (0, 7, -5, 2),
            (0, u32::MAX, 3, 1),
            (1, 0, i64::MAX >> 3, 2),
            (u32::MAX, 2, 1_700_000_000, 3),
        ];
        let packed: Vec<PendingMark> = marks
            .iter()
            .map(|&(slot, wallet, key, sides)| PendingMark::new(slot, wallet, key, sides))
            .collect();
        let mut sorted = packed.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, packed);
        for (mark, &(slot, wallet, key, sides)) in packed.iter().zip(&marks) {
            assert_eq!(
                (mark.slot(), mark.wallet(), mark.key(), mark.sides()),
                (slot, wallet, key, sides)
            );
        }
    }

    /// Bucket key of an effect entry, by name.
    fn bucket_key(d: &BucketDelta) -> (String, Level, i64) {
        (d.token.to_string(), d.level, d.at)
    }

    /// A batch applied in two parts, their effects merged, persists what the
    /// batch applied at once does: each touched bucket once with the same
    /// total, the same wallet bits, the same events, the same counts.
    #[test]
    fn a_batch_applied_in_parts_merges_into_the_effect_of_one_batch() {
        let now = T0 + 10_000;
        let mut swaps = Vec::new();
        for i in 0..60 {
            let token = ["A", "B", "C"][i % 3];
            let wallet = format!("w{}", i % 7);
            let side = if i % 2 == 0 { Side::Buy } else { Side::Sell };
            // Both halves touch the same seconds and minutes of each token.
            let at = T0 + (i as i64 % 5) * 1000 + i as i64;
            swaps.push(swap(
                &format!("e{i}"),
                token,
                Some(&wallet),
                side,
                1.0 + i as f64 / 7.0,
                at,
            ));
        }
        // A duplicate of the first half in the second, and one within a half.
        swaps.push(swaps[3].clone());
        swaps.insert(10, swaps[2].clone());
        let (first, second) = swaps.split_at(swaps.len() / 2);

        let mut whole_engine = WindowEngine::new(EngineConfig::service_defaults());
        let (whole, whole_counts) = whole_engine.apply_batch(&swaps, now);
        let mut parts_engine = WindowEngine::new(EngineConfig::service_defaults());
        let (earlier, mut parts_counts) = parts_engine.apply_batch(first, now);
        let (later, later_counts) = parts_engine.apply_batch(second, now);
        assert!(later.buckets.iter().any(|d| earlier
            .buckets
            .iter()
            .any(|e| bucket_key(e) == bucket_key(d))));
        let parts = BatchEffect::merged([earlier, later]);
        parts_counts += later_counts;

        assert_eq!(parts_counts, whole_counts);
        assert_eq!(whole_counts.duplicates, 2);
        let by_key = |effect: &BatchEffect| -> HashMap<(String, Level, i64), BucketDelta> {
            effect
                .buckets
                .iter()
                .map(|d| (bucket_key(d), d.clone()))
                .collect()
        };
        let (whole_buckets, part_buckets) = (by_key(&whole), by_key(&parts));
        assert_eq!(
            part_buckets.len(),
            parts.buckets.len(),
            "a bucket merged twice"
        );
        assert_eq!(
            whole_buckets.keys().collect::<HashSet<_>>(),
            part_buckets.keys().collect::<HashSet<_>>()
        );
        for (key, d) in &part_buckets {
            let w = &whole_buckets[key];
            for (a, b) in [(&d.total, &w.total), (&d.delta, &w.delta)] {
                assert_eq!(
                    (a.txns, a.buys, a.sells),
                    (b.txns, b.buys, b.sells),
                    "{key:?}"
                );
                assert!(
                    (a.volume_usd - b.volume_usd).abs() <= 1e-9 * b.volume_usd,
                    "{key:?}"
                );
                assert_eq!((a.open, a.close), (b.open, b.close), "{key:?}");
                assert_eq!((a.high, a.low), (b.high, b.low), "{key:?}");
            }
        }
        let marks = |effect: &BatchEffect| {
            let mut bits: HashMap<(String, String, Level, i64), u8> = HashMap::new();
            for m in &effect.wallets {
                *bits
                    .entry((m.token.to_string(), m.wallet.to_string(), m.level, m.at))
                    .or_default() |= m.sides;
            }
            bits
        };
        assert_eq!(marks(&parts), marks(&whole));
        let events = |effect: &BatchEffect| {
            let mut keys: Vec<EventKey> = effect.events.iter().map(|e| e.key).collect();
            keys.sort_unstable();
            keys
        };
        assert_eq!(events(&parts), events(&whole));

        // Restored, the merged effect answers what the engine that made it does.
        let mut restored = WindowEngine::new(EngineConfig::service_defaults());
        restored.restore(&parts);
        for token in ["A", "B", "C"] {
            let (a, b) = (
                restored.stats(token, now).unwrap(),
                parts_engine.stats(token, now).unwrap(),
            );
            for (name, w) in &b.windows.0 {
                let r = a.windows.get(name).unwrap();
                assert_eq!(r.current.txns, w.current.txns);
                assert_eq!(r.current.unique_wallets, w.current.unique_wallets);
                assert!(
                    (r.current.volume_usd - w.current.volume_usd).abs()
                        <= 1e-9 * w.current.volume_usd
                );
            }
        }
    }

    #[test]
    fn batch_marks_only_add_bits() {
        let mut engine = WindowEngine::new(EngineConfig::service_defaults());
        engine.apply(&swap("a", "T", Some("w"), Side::Buy, 1.0, T0), T0);
        let batch = [
            swap("b", "T", Some("w"), Side::Buy, 1.0, T0 + 10),
            swap("c", "T", Some("w"), Side::Sell, 1.0, T0 + 20),
            swap("d", "T", Some("w"), Side::Sell, 1.0, T0 + 30),
            swap("a", "T", Some("w"), Side::Buy, 1.0, T0),
        ];
        let (effect, counts) = engine.apply_batch(&batch, T0 + 100);
        assert_eq!(
            counts,
            BatchCounts {
                applied: 3,
                duplicates: 1,
                late: 0
            }
        );
        assert_eq!(effect.events.len(), 3);
        // One delta per level, pre-merged.
        assert_eq!(effect.buckets.len(), 2);
        assert!(effect.buckets.iter().all(|d| d.delta.txns == 3));
        // Only the sell bit is new, at each level.
        assert_eq!(effect.wallets.len(), 2);
        assert!(effect
            .wallets
            .iter()
            .all(|m| m.sides == SIDE_SELL && &*m.wallet == "w"));
    }
}
