//! Binary encodings shared with the Lua scripts. All integers and floats are
//! little-endian; floats travel as their IEEE-754 bits, so nothing is rounded on
//! the way to Redis and back. The Lua scripts store and return them as they
//! are: only Rust encodes and decodes them.
//!
//! **Bucket** (stored hash value and batch argument), 108 bytes, in Lua
//! `struct` notation `<I4I4I4ddddi8I4I4di8I4I4ddd`: txns, buys, sells (u32); volume_usd,
//! buy_volume_usd, sell_volume_usd, volume_token (f64); open at_ms (i64), open
//! tie high and low 32 bits (u32, u32: Lua numbers are doubles, a u64 would lose
//! bits), open price (f64); close likewise; high, low (f64).
//!
//! **Event record**, 20 bytes: the 128-bit event key (16 bytes, little-endian)
//! then the block time's millisecond within its hour (u32).
//!
//! **Wallet mark records**, 4 bytes plus the wallet each: the bucket's offset
//! in the period (u16: second within the hour, minute within the day), side
//! bits (u8), wallet length (u8), wallet. A batch writes the records of the
//! bits it added as one hash field, `w<first offset of the batch>`; a
//! (wallet, bucket) has at most one record per side, and a reader ors them.
//!
//! A minute record also carries the second mark that added its bits in the
//! same batch, when there is one (there always is, unless the swap was too old
//! for second buckets): the side byte's upper six bits hold the second within
//! the minute plus one (0: no second). That second's bits are then left out of
//! the hour's record, so a batch writes each new wallet activity once instead of
//! once per level, and what only the seconds need (a wallet's later swaps in a
//! minute it already had) still expires with the hour's hash.
//!
//! **Batch arguments** (`ARGV[7..]` of `apply_batch.lua`, [`BatchArgs`]). Key
//! names, fields and absolute expiries are computed here, and data whose key
//! would already be expired is left out, so the script only writes: buckets
//! carry their new value (`HSET`, no read), wallet marks and event ids are new
//! data. Every item is its own argument, so Redis splits the batch while it
//! reads the command and the script parses nothing (counts are decimal):
//! ```text
//! hash_count
//!   hash_count × { key, expire_at_ms, n, n × { field, value } }
//!                  (bucket fields `<offset>` → bucket; `w<first offset>` → marks)
//! event_key_count
//!   event_key_count × { key, expire_at_ms, event records }
//! token_count
//!   token_count × { index_score, token }
//! ```
//! A token's index score is the last millisecond of the hour of its newest
//! data ([`index_score`]); tokens whose score the index already holds are left
//! out ([`encode_batch`]'s `indexed`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::ops::Range;

use super::keys::{self, DAY_MS, HOUR_MS};
use super::StoreError;
use crate::window::{
    name_address, AppliedEvent, BatchEffect, Bucket, FastMap, Level, PricePoint, WalletMark,
    WARM_AHEAD,
};

/// Encoded size of one bucket.
pub const BUCKET_LEN: usize = 108;
/// Encoded size of one event record.
pub const EVENT_LEN: usize = 20;
/// The side bits of a wallet mark record's side byte.
const SIDES: u8 = 3;
/// Where a minute record's second (within the minute, plus one) starts in its side byte.
const SECOND_SHIFT: u32 = 2;

fn put_point(out: &mut Vec<u8>, p: &PricePoint) {
    out.extend_from_slice(&p.at_ms.to_le_bytes());
    out.extend_from_slice(&((p.tie >> 32) as u32).to_le_bytes());
    out.extend_from_slice(&(p.tie as u32).to_le_bytes());
    out.extend_from_slice(&p.price.to_le_bytes());
}

/// Appends the 108-byte encoding of `b`.
pub fn encode_bucket(b: &Bucket, out: &mut Vec<u8>) {
    out.extend_from_slice(&b.txns.to_le_bytes());
    out.extend_from_slice(&b.buys.to_le_bytes());
    out.extend_from_slice(&b.sells.to_le_bytes());
    for v in [
        b.volume_usd,
        b.buy_volume_usd,
        b.sell_volume_usd,
        b.volume_token,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    put_point(out, &b.open);
    put_point(out, &b.close);
    out.extend_from_slice(&b.high.to_le_bytes());
    out.extend_from_slice(&b.low.to_le_bytes());
}

/// A little-endian reader over a byte slice that reports truncation as
/// [`StoreError::Corrupt`].
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        if self.bytes.len() < N {
            return Err(StoreError::Corrupt(format!("{} truncated", self.what)));
        }
        let (head, rest) = self.bytes.split_at(N);
        self.bytes = rest;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn i64(&mut self) -> Result<i64, StoreError> {
        self.take::<8>().map(i64::from_le_bytes)
    }
    /// A stored volume or price: never negative or NaN (every swap's numbers
    /// are finite and non-negative, and sums of them stay so, or reach +inf).
    /// The engine's merges compare them plainly, so a corrupt NaN is refused here.
    fn f64(&mut self) -> Result<f64, StoreError> {
        let value = self.take::<8>().map(f64::from_le_bytes)?;
        if value >= 0.0 {
            Ok(value)
        } else {
            Err(StoreError::Corrupt(format!(
                "{} holds {value}: negative or NaN",
                self.what
            )))
        }
    }
    fn point(&mut self) -> Result<PricePoint, StoreError> {
        let at_ms = self.i64()?;
        let hi = self.u32()?;
        let lo = self.u32()?;
        let price = self.f64()?;
        Ok(PricePoint {
            at_ms,
            tie: (u64::from(hi) << 32) | u64::from(lo),
            price,
        })
    }
}

/// Decodes a 108-byte bucket.
pub fn decode_bucket(bytes: &[u8]) -> Result<Bucket, StoreError> {
    if bytes.len() != BUCKET_LEN {
        return Err(StoreError::Corrupt(format!(
            "bucket of {} bytes, expected {BUCKET_LEN}",
            bytes.len()
        )));
    }
    let mut r = Reader {
        bytes,
        what: "bucket",
    };
    Ok(Bucket {
        txns: r.u32()?,
        buys: r.u32()?,
        sells: r.u32()?,
        volume_usd: r.f64()?,
        buy_volume_usd: r.f64()?,
        sell_volume_usd: r.f64()?,
        volume_token: r.f64()?,
        open: r.point()?,
        close: r.point()?,
        high: r.f64()?,
        low: r.f64()?,
    })
}

/// Appends one event record: key, then the millisecond within the hour.
pub fn encode_event(event: &AppliedEvent, out: &mut Vec<u8>) {
    out.extend_from_slice(&event.key.to_le_bytes());
    out.extend_from_slice(&(event.executed_at_ms.rem_euclid(HOUR_MS) as u32).to_le_bytes());
}

/// Decodes the event records of unix hour `hour`.
pub fn decode_events(
    hour: i64,
    bytes: &[u8],
    out: &mut Vec<AppliedEvent>,
) -> Result<(), StoreError> {
    if !bytes.len().is_multiple_of(EVENT_LEN) {
        return Err(StoreError::Corrupt(format!(
            "event list of {} bytes",
            bytes.len()
        )));
    }
    for rec in bytes.chunks_exact(EVENT_LEN) {
        let mut r = Reader {
            bytes: rec,
            what: "event",
        };
        let key = u128::from_le_bytes(r.take::<16>()?);
        let ms = r.u32()?;
        out.push(AppliedEvent {
            key,
            executed_at_ms: hour * HOUR_MS + i64::from(ms),
        });
    }
    Ok(())
}

/// How long each kind of key outlives the period it covers, in ms: the TTL
/// rules of `docs/redis-keys.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLifetimes {
    /// Second buckets and second-level wallet marks, after their hour.
    pub second_keep_ms: i64,
    /// Minute buckets and minute-level wallet marks, after their day (retention).
    pub minute_keep_ms: i64,
    /// Event ids, after their hour (dedup horizon).
    pub dedup_ms: i64,
    /// Added to every TTL.
    pub margin_ms: i64,
}

impl KeyLifetimes {
    /// How long a token stays in the partition's token index after its last swap.
    pub fn index_keep_ms(&self) -> i64 {
        self.second_keep_ms.max(self.minute_keep_ms) + self.margin_ms
    }

    /// Absolute expiry of the keys of period `id`.
    fn expire_at(&self, id: HashId) -> i64 {
        match id.level {
            Level::Second => (id.period + 1) * HOUR_MS + self.second_keep_ms + self.margin_ms,
            Level::Minute => (id.period + 1) * DAY_MS + self.minute_keep_ms + self.margin_ms,
        }
    }
}

/// Which period of a token's keys: the level and its hour (seconds) or day
/// (minutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct HashId {
    level: Level,
    period: i64,
}

impl HashId {
    /// The period holding the bucket at `at` of `level`, and the bucket's offset in it.
    fn of(level: Level, at: i64) -> (Self, i64) {
        let span = match level {
            Level::Second => 3600,
            Level::Minute => 1440,
        };
        let period = at.div_euclid(span);
        (Self { level, period }, at - period * span)
    }

    /// Name of `token`'s hash of this period.
    fn key(self, partition: u32, token: &str) -> keys::PeriodKey<'_> {
        match self.level {
            Level::Second => keys::PeriodKey::seconds(partition, token, self.period),
            Level::Minute => keys::PeriodKey::minutes(partition, token, self.period),
        }
    }
}

/// A batch's writes grouped by token and period, in first-seen order (hash
/// lookups: this runs for every bucket and mark of every batch). The buckets
/// and mark records of all periods are kept in two flat lists, tagged with
/// their period, and gathered per period once at the end: a batch touches
/// thousands of periods, and a `Vec` each was thousands of allocations.
#[derive(Default)]
struct PeriodWrites<'a> {
    /// Token and period of each period written, in first-seen order.
    periods: Vec<(&'a str, HashId)>,
    index: FastMap<(&'a str, HashId), u32>,
    /// Period, bucket offset and the bucket's new value (a batch touches a
    /// bucket once).
    buckets: Vec<(u32, (i64, &'a Bucket))>,
    /// Buckets added so far, checked in debug builds: the engine and
    /// `BatchEffect::merged` hand over each bucket once, so a bucket named
    /// twice is a bug upstream (the store would keep only the last total).
    #[cfg(debug_assertions)]
    seen: std::collections::HashSet<(u32, i64)>,
    /// Period and where its record is in `mark_bytes`.
    marks: Vec<(u32, Range<usize>)>,
    /// Wallet mark records, one after another.
    mark_bytes: Vec<u8>,
}

impl<'a> PeriodWrites<'a> {
    /// Index of `token`'s period `id`, added on first use.
    fn of(&mut self, token: &'a str, id: HashId) -> u32 {
        let next = self.periods.len() as u32;
        let at = *self.index.entry((token, id)).or_insert(next);
        if at == next {
            self.periods.push((token, id));
        }
        at
    }

    /// Adds the bucket at `offset` of `token`'s period `id`.
    fn bucket(&mut self, token: &'a str, id: HashId, offset: i64, bucket: &'a Bucket) {
        let period = self.of(token, id);
        #[cfg(debug_assertions)]
        assert!(
            self.seen.insert((period, offset)),
            "bucket {offset} of {token} written twice in one batch"
        );
        self.buckets.push((period, (offset, bucket)));
    }

    /// Adds a record of `mark`'s wallet with side byte `byte` at bucket `at`
    /// of `level` to the hash of `mark`'s token that holds that bucket.
    fn mark(
        &mut self,
        mark: &'a WalletMark,
        level: Level,
        at: i64,
        byte: u8,
    ) -> Result<(), StoreError> {
        let (id, offset) = HashId::of(level, at);
        let period = self.of(&mark.token, id);
        let start = self.mark_bytes.len();
        put_mark(&mut self.mark_bytes, offset, byte, &mark.wallet)?;
        self.marks.push((period, start..self.mark_bytes.len()));
        Ok(())
    }

    /// Each period's buckets, and its mark records as `mark_bytes` ranges, in
    /// the order they were added.
    fn gathered(&self) -> (Gathered<(i64, &'a Bucket)>, Gathered<Range<usize>>) {
        (
            Gathered::new(self.periods.len(), &self.buckets),
            Gathered::new(self.periods.len(), &self.marks),
        )
    }
}

/// Items tagged with a period, gathered per period in the order they came (a
/// counting sort).
struct Gathered<T> {
    /// Period `p`'s items are `items[starts[p]..starts[p + 1]]`.
    starts: Vec<usize>,
    items: Vec<T>,
}

impl<T: Clone> Gathered<T> {
    fn new(periods: usize, tagged: &[(u32, T)]) -> Self {
        let mut starts = vec![0; periods + 1];
        for &(period, _) in tagged {
            starts[period as usize + 1] += 1;
        }
        for p in 0..periods {
            starts[p + 1] += starts[p];
        }
        let mut order = vec![0; tagged.len()];
        let mut next = starts.clone();
        for (i, &(period, _)) in tagged.iter().enumerate() {
            order[next[period as usize]] = i;
            next[period as usize] += 1;
        }
        Self {
            starts,
            items: order.into_iter().map(|i| tagged[i].1.clone()).collect(),
        }
    }

    fn of(&self, period: usize) -> &[T] {
        &self.items[self.starts[period]..self.starts[period + 1]]
    }
}

/// Reads the first byte of the wallet name of each mark of `level`, so the
/// records written next find the names in cache: these reads do not depend
/// on one another, so the CPU overlaps their misses, where each record's copy
/// would wait out its own. `black_box` keeps the reads, whose value nothing uses.
fn warm_wallets(marks: &[WalletMark], level: Level) {
    let read = marks.iter().filter(|w| w.level == level).fold(0, |acc, w| {
        acc ^ w.wallet.as_bytes().first().copied().unwrap_or(0)
    });
    std::hint::black_box(read);
}

fn bucket_start_ms(level: Level, at: i64) -> i64 {
    match level {
        Level::Second => at.saturating_mul(1000),
        Level::Minute => at.saturating_mul(60_000),
    }
}

/// The script arguments of one batch after the five fixed ones (see the module
/// doc), in one buffer: argument `i` is `bytes[ends[i - 1]..ends[i]]`. One
/// buffer instead of a `Vec` per argument: a batch has tens of thousands.
#[derive(Debug, Default)]
pub struct BatchArgs {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// The token index entries among the arguments: `(token, score)`.
    index: Vec<(String, i64)>,
}

impl BatchArgs {
    fn with_capacity(bytes: usize, args: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(args),
            index: Vec::new(),
        }
    }

    /// Takes the token index entries the arguments carry, `(token, score)`:
    /// what the index holds once the batch is applied.
    pub fn take_index(&mut self) -> Vec<(String, i64)> {
        std::mem::take(&mut self.index)
    }

    /// Ends the argument whose bytes were appended since the last one.
    fn end(&mut self) {
        self.ends.push(self.bytes.len());
    }

    fn push(&mut self, arg: &[u8]) {
        self.bytes.extend_from_slice(arg);
        self.end();
    }

    /// A number (decimal, as Lua's `tonumber` and Redis read it) or a name.
    fn push_display(&mut self, n: impl std::fmt::Display) {
        // Writing into a Vec<u8> cannot fail.
        let _ = write!(self.bytes, "{n}");
        self.end();
    }

    /// The arguments, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(start, &end)| &self.bytes[start..end])
    }

    /// Number of arguments.
    pub fn arg_count(&self) -> usize {
        self.ends.len()
    }

    /// Total bytes of all arguments.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Appends one wallet mark record.
fn put_mark(out: &mut Vec<u8>, offset: i64, sides: u8, wallet: &str) -> Result<(), StoreError> {
    let (Ok(offset), Ok(len)) = (u16::try_from(offset), u8::try_from(wallet.len())) else {
        return Err(StoreError::InvalidBatch(format!(
            "wallet mark at {offset} of a {}-byte wallet",
            wallet.len()
        )));
    };
    out.extend_from_slice(&offset.to_le_bytes());
    out.push(sides);
    out.push(len);
    out.extend_from_slice(wallet.as_bytes());
    Ok(())
}

/// Calls `mark(offset, sides, wallet)` for each record of a wallet mark string.
pub fn decode_marks(
    mut bytes: &[u8],
    mut mark: impl FnMut(i64, u8, &str) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    while !bytes.is_empty() {
        let [o0, o1, sides, len, rest @ ..] = bytes else {
            return Err(StoreError::Corrupt("wallet mark record truncated".into()));
        };
        let len = usize::from(*len);
        if rest.len() < len {
            return Err(StoreError::Corrupt("wallet mark record truncated".into()));
        }
        let wallet = std::str::from_utf8(&rest[..len])
            .map_err(|_| StoreError::Corrupt("wallet mark: wallet is not UTF-8".into()))?;
        mark(i64::from(u16::from_le_bytes([*o0, *o1])), *sides, wallet)?;
        bytes = &rest[len..];
    }
    Ok(())
}

/// What a record's side byte says, read at `level`: its side bits and, for a
/// minute record, the second within the minute whose mark it also carries.
pub fn mark_sides(level: Level, byte: u8) -> Result<(u8, Option<i64>), StoreError> {
    let second = byte >> SECOND_SHIFT;
    match (level, second) {
        (_, 0) => Ok((byte & SIDES, None)),
        (Level::Minute, 1..=60) => Ok((byte & SIDES, Some(i64::from(second) - 1))),
        _ => Err(StoreError::Corrupt(format!(
            "{level:?} wallet mark with side byte {byte:#04x}"
        ))),
    }
}

/// The token index's score for data at `ms`: the last millisecond of its hour.
/// A load uses a token's score only to skip the hours and days after it, so
/// the hour is all it needs, and a token's score changes once an hour.
pub fn index_score(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS + (HOUR_MS - 1)
}

/// Encodes partition `partition`'s batch `effect` (starting at source offset
/// `first_offset`), as of `now_ms`, as the arguments of `apply_batch.lua`.
/// `indexed(token, score)` says the token index already holds `token` with
/// `score` or more: such tokens are left out of the index section.
pub fn encode_batch<'e>(
    partition: u32,
    first_offset: i64,
    effect: &'e BatchEffect,
    now_ms: i64,
    lifetimes: &KeyLifetimes,
    indexed: &dyn Fn(&str, i64) -> bool,
) -> Result<BatchArgs, StoreError> {
    // Grouped by token and period first; each key name is formatted once.
    let mut periods = PeriodWrites::default();
    let mut tokens: FastMap<&str, i64> = FastMap::default();
    let mut seen = |token: &'e str, ms: i64| {
        let last = tokens.entry(token).or_insert(ms);
        *last = (*last).max(ms);
    };
    for d in &effect.buckets {
        seen(
            &d.token,
            if d.total.is_empty() {
                bucket_start_ms(d.level, d.at)
            } else {
                d.total.close.at_ms
            },
        );
        let (id, offset) = HashId::of(d.level, d.at);
        periods.bucket(&d.token, id, offset, &d.total);
    }
    // A minute mark's bits are carried, where they can be, by the same
    // batch's second mark that added them (see the module doc): `minute_bits`
    // holds the minute bits still to write, per (token, wallet, minute).
    // Keyed by address: the engine's effect shares one allocation per token
    // and per wallet name, and equal names at different addresses only miss
    // the saving. Carried only where a day's hash outlives (and a load reads
    // it as long as) the hours' hashes of its day: a retention of at least
    // the second level's.
    let carry = lifetimes.minute_keep_ms >= lifetimes.second_keep_ms;
    let carry_key =
        |w: &WalletMark, minute: i64| (name_address(&w.token), name_address(&w.wallet), minute);
    let mut minute_bits: FastMap<(usize, usize, i64), u8> = FastMap::default();
    for w in &effect.wallets {
        seen(&w.token, bucket_start_ms(w.level, w.at));
        if carry && w.level == Level::Minute {
            *minute_bits.entry(carry_key(w, w.at)).or_default() |= w.sides & SIDES;
        }
    }
    for chunk in effect.wallets.chunks(WARM_AHEAD) {
        warm_wallets(chunk, Level::Second);
        for w in chunk.iter().filter(|w| w.level == Level::Second) {
            let minute = w.at.div_euclid(60);
            let mut sides = w.sides & SIDES;
            if let Some(pending) = minute_bits.get_mut(&carry_key(w, minute)) {
                let carried = *pending & sides;
                if carried != 0 {
                    *pending &= !carried;
                    sides &= !carried;
                    let second = (w.at - minute * 60 + 1) as u8;
                    periods.mark(w, Level::Minute, minute, carried | second << SECOND_SHIFT)?;
                }
            }
            if sides != 0 {
                periods.mark(w, Level::Second, w.at, sides)?;
            }
        }
    }
    for chunk in effect.wallets.chunks(WARM_AHEAD) {
        warm_wallets(chunk, Level::Minute);
        for w in chunk.iter().filter(|w| w.level == Level::Minute) {
            let sides = if carry {
                // Taken, so a minute that came as two marks (one per side) is written once.
                minute_bits.remove(&carry_key(w, w.at)).unwrap_or(0)
            } else {
                w.sides & SIDES
            };
            if sides != 0 {
                periods.mark(w, Level::Minute, w.at, sides)?;
            }
        }
    }
    let live: Vec<(usize, i64)> = periods
        .periods
        .iter()
        .enumerate()
        .map(|(p, &(_, id))| (p, lifetimes.expire_at(id)))
        .filter(|&(_, expire_at)| expire_at > now_ms)
        .collect();
    let (period_buckets, period_marks) = periods.gathered();
    let mut hours: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
    for e in &effect.events {
        encode_event(
            e,
            hours
                .entry(e.executed_at_ms.div_euclid(HOUR_MS))
                .or_default(),
        );
    }
    let expiring: Vec<(i64, i64, &Vec<u8>)> = hours
        .iter()
        .map(|(hour, records)| {
            let expire_at = (hour + 1) * HOUR_MS + lifetimes.dedup_ms + lifetimes.margin_ms;
            (*hour, expire_at, records)
        })
        .filter(|(_, expire_at, records)| *expire_at > now_ms && !records.is_empty())
        .collect();

    let mut args = BatchArgs::with_capacity(
        64 + effect.buckets.len() * (BUCKET_LEN + 4)
            + periods.mark_bytes.len()
            + effect.events.len() * EVENT_LEN
            + live.len() * 64,
        4 + 2 * effect.buckets.len() + 5 * live.len() + 3 * expiring.len() + 2 * tokens.len(),
    );
    args.push_display(live.len());
    for &(p, expire_at) in &live {
        let (token, id) = periods.periods[p];
        let (buckets, marks) = (period_buckets.of(p), period_marks.of(p));
        args.push_display(id.key(partition, token));
        args.push_display(expire_at);
        args.push_display(buckets.len() + usize::from(!marks.is_empty()));
        for &(offset, bucket) in buckets {
            args.push_display(offset);
            encode_bucket(bucket, &mut args.bytes);
            args.end();
        }
        if !marks.is_empty() {
            args.push_display(format_args!("w{first_offset}"));
            for record in marks {
                args.bytes
                    .extend_from_slice(&periods.mark_bytes[record.clone()]);
            }
            args.end();
        }
    }
    args.push_display(expiring.len());
    for (hour, expire_at, records) in expiring {
        args.push(keys::events(partition, hour).as_bytes());
        args.push_display(expire_at);
        args.push(records);
    }
    let index_keep = lifetimes.index_keep_ms();
    let live: Vec<(&str, i64)> = tokens
        .into_iter()
        .map(|(token, last_ms)| (token, index_score(last_ms)))
        .filter(|&(token, score)| score + index_keep > now_ms && !indexed(token, score))
        .collect();
    args.push_display(live.len());
    for &(token, score) in &live {
        args.push_display(score);
        args.push(token.as_bytes());
    }
    args.index = live
        .into_iter()
        .map(|(token, score)| (token.to_string(), score))
        .collect();
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::{BucketDelta, SIDE_BUY, SIDE_SELL};
    use std::sync::Arc;

    /// The lifetimes of the default settings: 2 h of seconds, 48 h of
    /// minutes, a 24 h dedup horizon, a 10 min margin.
    fn lifetimes() -> KeyLifetimes {
        crate::store::RedisStoreOptions::default().lifetimes()
    }

    fn sample() -> Bucket {
        Bucket {
            txns: 3,
            buys: 2,
            sells: 1,
            volume_usd: 0.1 + 0.2,
            buy_volume_usd: 1e-300,
            sell_volume_usd: 123_456_789.123_456_78,
            volume_token: f64::MAX,
            open: PricePoint {
                at_ms: 1_700_000_000_123,
                tie: u64::MAX - 1,
                price: 1.0 / 3.0,
            },
            close: PricePoint {
                at_ms: 1_700_000_000_999,
                tie: 0x8000_0000_0000_0001,
                price: 2.5,
            },
            high: 7.25,
            low: f64::MIN_POSITIVE,
        }
    }

    #[test]
    fn gathered_keeps_each_periods_items_in_order() {
        let tagged = [(2, 'a'), (0, 'b'), (2, 'c'), (0, 'd'), (2, 'e')];
        let gathered = Gathered::new(4, &tagged);
        assert_eq!(gathered.of(0), ['b', 'd']);
        assert_eq!(gathered.of(1), [] as [char; 0]);
        assert_eq!(gathered.of(2), ['a', 'c', 'e']);
        assert_eq!(gathered.of(3), [] as [char; 0]);
    }

    #[test]
    fn buckets_round_trip_bit_exactly() {
        let b = sample();
        let mut bytes = Vec::new();
        encode_bucket(&b, &mut bytes);
        assert_eq!(bytes.len(), BUCKET_LEN);
        let back = decode_bucket(&bytes).unwrap();
        assert_eq!(back, b);
        assert_eq!(back.volume_usd.to_bits(), b.volume_usd.to_bits());
        assert!(decode_bucket(&bytes[1..]).is_err());
        // Sums may reach +inf; NaN or a negative number is corruption.
        let mut huge = b;
        huge.volume_usd = f64::INFINITY;
        bytes.clear();
        encode_bucket(&huge, &mut bytes);
        assert_eq!(decode_bucket(&bytes).unwrap(), huge);
        for bad in [f64::NAN, -1.0] {
            let mut corrupt = b;
            corrupt.high = bad;
            bytes.clear();
            encode_bucket(&corrupt, &mut bytes);
            assert!(matches!(decode_bucket(&bytes), Err(StoreError::Corrupt(_))));
        }
    }

    #[test]
    fn events_round_trip() {
        let events = [
            AppliedEvent {
                key: u128::MAX - 7,
                executed_at_ms: 1_700_000_000_123,
            },
            AppliedEvent {
                key: 1,
                executed_at_ms: 1_700_000_000_000 / HOUR_MS * HOUR_MS,
            },
        ];
        let hour = events[0].executed_at_ms.div_euclid(HOUR_MS);
        let mut bytes = Vec::new();
        for e in &events {
            encode_event(e, &mut bytes);
        }
        let mut back = Vec::new();
        decode_events(hour, &bytes, &mut back).unwrap();
        assert_eq!(back, events);
        assert!(decode_events(hour, &bytes[1..], &mut back).is_err());
    }

    #[test]
    fn wallet_marks_round_trip() {
        let marks = [(0, 1, "w"), (3599, 3, "ü-wallet"), (17, 2, "")];
        let mut bytes = Vec::new();
        for (offset, sides, wallet) in marks {
            put_mark(&mut bytes, offset, sides, wallet).unwrap();
        }
        let mut back = Vec::new();
        decode_marks(&bytes, |offset, sides, wallet| {
            back.push((offset, sides, wallet.to_string()));
            Ok(())
        })
        .unwrap();
        let want: Vec<_> = marks
            .iter()
            .map(|&(o, s, w)| (o, s, w.to_string()))
            .collect();
        assert_eq!(back, want);
        assert!(decode_marks(&bytes[..bytes.len() - 1], |_, _, _| Ok(())).is_err());
        assert!(put_mark(&mut bytes, 0, 1, &"x".repeat(256)).is_err());
        assert!(put_mark(&mut bytes, 70_000, 1, "x").is_err());
    }

    /// The arguments walked the way `apply_batch.lua` walks them: every count
    /// lines up with what follows, marks ride as `w<first offset>`, and data
    /// whose key is already expired is left out.
    #[test]
    fn batch_args_follow_the_script_layout() {
        let now_ms = 1_700_000_000_000;
        let second = now_ms / 1000;
        let minute = now_ms / 60_000;
        let delta = |token: &str, level, at| BucketDelta {
            token: token.into(),
            level,
            at,
            delta: sample(),
            total: sample(),
        };
        // Three days old: its day key would already be expired.
        let mut old = delta("C", Level::Minute, minute - 3 * 1440);
        old.total.close.at_ms = (minute - 3 * 1440) * 60_000;
        let effect = BatchEffect {
            buckets: vec![
                delta("A", Level::Second, second),
                delta("A", Level::Second, second - 1),
                delta("A", Level::Minute, minute),
                delta("B:{x}", Level::Minute, minute),
                old,
            ],
            wallets: vec![WalletMark {
                token: "A".into(),
                wallet: "w1".into(),
                level: Level::Second,
                at: second,
                sides: 1,
            }],
            events: vec![AppliedEvent {
                key: 9,
                executed_at_ms: now_ms,
            }],
        };
        let lifetimes = lifetimes();
        let mut encoded = encode_batch(3, 42, &effect, now_ms, &lifetimes, &|_, _| false).unwrap();
        let args: Vec<&[u8]> = encoded.iter().collect();
        let text = |a: &[u8]| String::from_utf8(a.to_vec()).unwrap();
        let mut at = 0;
        let mut next = || {
            at += 1;
            args[at - 1]
        };
        let mut hashes = BTreeMap::new();
        for _ in 0..text(next()).parse::<usize>().unwrap() {
            let key = text(next());
            let expire_at: i64 = text(next()).parse().unwrap();
            assert!(expire_at > now_ms);
            let fields: Vec<String> = (0..text(next()).parse::<usize>().unwrap())
                .map(|_| {
                    let (field, value) = (text(next()), next());
                    if field.starts_with('w') {
                        assert_eq!(field, "w42");
                        let offset = (second.rem_euclid(3600) as u16).to_le_bytes();
                        assert_eq!(value, [&offset[..], &[1, 2], b"w1"].concat());
                    } else {
                        assert_eq!(value.len(), BUCKET_LEN, "{field}");
                    }
                    field
                })
                .collect();
            hashes.insert(key, fields);
        }
        let hour = second.div_euclid(3600);
        let day = minute.div_euclid(1440);
        let s_off = second - hour * 3600;
        let m_off = (minute - day * 1440).to_string();
        assert_eq!(
            hashes,
            BTreeMap::from([
                (
                    keys::seconds(3, "A", hour),
                    vec![s_off.to_string(), (s_off - 1).to_string(), "w42".into()]
                ),
                (keys::minutes(3, "A", day), vec![m_off.clone()]),
                (keys::minutes(3, "B:{x}", day), vec![m_off]),
            ])
        );
        assert_eq!(text(next()), "1");
        assert_eq!(text(next()), keys::events(3, hour));
        assert!(text(next()).parse::<i64>().unwrap() > now_ms);
        assert_eq!(next().len(), EVENT_LEN);
        let tokens: BTreeMap<String, i64> = (0..text(next()).parse::<usize>().unwrap())
            .map(|_| {
                let last_ms = text(next()).parse().unwrap();
                (text(next()), last_ms)
            })
            .collect();
        assert_eq!(
            tokens.keys().collect::<Vec<_>>(),
            ["A", "B:{x}"],
            "C's only bucket is beyond retention"
        );
        let end_of_hour = (hour + 1) * 3_600_000 - 1;
        assert!(tokens.values().all(|&score| score == end_of_hour));
        assert_eq!(at, args.len());
        let mut index = encoded.take_index();
        index.sort();
        assert_eq!(
            index,
            [
                ("A".to_string(), end_of_hour),
                ("B:{x}".to_string(), end_of_hour)
            ]
        );

        // A token the index already holds at that score is left out.
        let indexed = |token: &str, score: i64| token == "A" && score <= end_of_hour;
        let mut encoded = encode_batch(3, 42, &effect, now_ms, &lifetimes, &indexed).unwrap();
        let args: Vec<&[u8]> = encoded.iter().collect();
        assert_eq!(
            &args[args.len() - 3..],
            [
                b"1".as_slice(),
                end_of_hour.to_string().as_bytes(),
                b"B:{x}"
            ]
        );
        assert_eq!(encoded.take_index(), [("B:{x}".to_string(), end_of_hour)]);
    }

    /// The hash fields' mark records of an encoded batch: key → (offset, side byte, wallet).
    fn mark_records(args: &BatchArgs) -> BTreeMap<String, Vec<(i64, u8, String)>> {
        let args: Vec<&[u8]> = args.iter().collect();
        let text = |a: &[u8]| String::from_utf8(a.to_vec()).unwrap();
        let mut out = BTreeMap::new();
        let mut at = 1;
        for _ in 0..text(args[0]).parse::<usize>().unwrap() {
            let key = text(args[at]);
            let n: usize = text(args[at + 2]).parse().unwrap();
            for f in 0..n {
                let (field, value) = (args[at + 3 + 2 * f], args[at + 4 + 2 * f]);
                if field.first() == Some(&b'w') {
                    let records: &mut Vec<_> = out.entry(key.clone()).or_default();
                    decode_marks(value, |offset, byte, wallet| {
                        records.push((offset, byte, wallet.to_string()));
                        Ok(())
                    })
                    .unwrap();
                }
            }
            at += 3 + 2 * n;
        }
        out
    }

    /// A minute record carries the second mark that added its bits in the
    /// batch; what the minute already had, or a second without a shared name,
    /// stays in the hour's record.
    #[test]
    fn minute_records_carry_their_seconds_mark() {
        let now_ms = 1_700_000_000_000;
        let minute = now_ms / 60_000;
        let second = minute * 60 + 17;
        let (a, w1, w2): (Arc<str>, Arc<str>, Arc<str>) = ("A".into(), "w1".into(), "w2".into());
        let mark = |wallet: &Arc<str>, level, at, sides| WalletMark {
            token: a.clone(),
            wallet: wallet.clone(),
            level,
            at,
            sides,
        };
        let effect = BatchEffect {
            buckets: vec![],
            wallets: vec![
                // w1 bought at :17 and sold at :18, both new in the minute.
                mark(&w1, Level::Second, second, SIDE_BUY),
                mark(&w1, Level::Second, second + 1, SIDE_SELL),
                mark(&w1, Level::Minute, minute, SIDE_BUY | SIDE_SELL),
                // w2 sold at :17; the minute already had its sell.
                mark(&w2, Level::Second, second, SIDE_SELL),
                // The same wallet under another name allocation: not matched.
                mark(&"w1".into(), Level::Second, second + 60, SIDE_BUY),
                mark(&"w1".into(), Level::Minute, minute + 1, SIDE_BUY),
            ],
            events: vec![],
        };
        let lifetimes = lifetimes();
        let args = encode_batch(3, 42, &effect, now_ms, &lifetimes, &|_, _| false).unwrap();
        let (hour, day) = (second.div_euclid(3600), minute.div_euclid(1440));
        let s_off = second - hour * 3600;
        let m_off = minute - day * 1440;
        let with_second = |sides: u8, s: u8| sides | (s + 1) << SECOND_SHIFT;
        assert_eq!(
            mark_records(&args),
            BTreeMap::from([
                (
                    keys::seconds(3, "A", hour),
                    vec![
                        (s_off, SIDE_SELL, "w2".into()),
                        (s_off + 60, SIDE_BUY, "w1".into())
                    ]
                ),
                (
                    keys::minutes(3, "A", day),
                    vec![
                        (m_off, with_second(SIDE_BUY, 17), "w1".into()),
                        (m_off, with_second(SIDE_SELL, 18), "w1".into()),
                        (m_off + 1, SIDE_BUY, "w1".into()),
                    ]
                ),
            ])
        );
        // Read back: a minute record says its side bits and the carried second.
        assert_eq!(
            mark_sides(Level::Minute, with_second(SIDE_SELL, 18)).unwrap(),
            (SIDE_SELL, Some(18))
        );
        assert_eq!(
            mark_sides(Level::Minute, SIDE_BUY).unwrap(),
            (SIDE_BUY, None)
        );
        assert_eq!(
            mark_sides(Level::Second, SIDE_BUY).unwrap(),
            (SIDE_BUY, None)
        );
        assert!(mark_sides(Level::Second, with_second(SIDE_BUY, 0)).is_err());
        assert!(mark_sides(Level::Minute, SIDE_BUY | 61 << SECOND_SHIFT).is_err());

        // A retention shorter than the second level's: nothing is carried.
        let short = KeyLifetimes {
            minute_keep_ms: 3_600_000,
            ..lifetimes
        };
        let args = encode_batch(3, 42, &effect, now_ms, &short, &|_, _| false).unwrap();
        let records = mark_records(&args);
        assert_eq!(records[&keys::seconds(3, "A", hour)].len(), 4);
        assert!(records[&keys::minutes(3, "A", day)]
            .iter()
            .all(|&(_, byte, _)| byte >> SECOND_SHIFT == 0));
    }

    #[test]
    fn index_scores_are_the_last_millisecond_of_the_hour() {
        assert_eq!(index_score(0), 3_599_999);
        assert_eq!(index_score(3_599_999), 3_599_999);
        assert_eq!(index_score(3_600_000), 7_199_999);
        assert_eq!(index_score(-1), -1);
    }

    /// A bucket named twice in one batch is a bug upstream (the engine and
    /// `BatchEffect::merged` write each once): debug builds stop on it.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "written twice in one batch")]
    fn a_bucket_twice_in_one_batch_is_refused_in_debug_builds() {
        let now_ms = 1_700_000_000_000;
        let delta = |at| BucketDelta {
            token: "T".into(),
            level: Level::Second,
            at,
            delta: sample(),
            total: sample(),
        };
        let effect = BatchEffect {
            buckets: vec![
                delta(now_ms / 1000),
                delta(now_ms / 1000 - 1),
                delta(now_ms / 1000),
            ],
            wallets: vec![],
            events: vec![],
        };
        let lifetimes = lifetimes();
        let _ = encode_batch(3, 42, &effect, now_ms, &lifetimes, &|_, _| false);
    }
}
