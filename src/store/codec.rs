//! Binary encodings shared with the Lua scripts. All integers and floats are
//! little-endian; floats travel as their IEEE-754 bits, so nothing is rounded on
//! the way to Redis and back. Lua reads and writes them with `struct`.
//!
//! **Bucket** (stored hash value and batch payload), 108 bytes, Lua format
//! `<I4I4I4ddddi8I4I4di8I4I4ddd`: txns, buys, sells (u32); volume_usd,
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
//! **Batch payload** (ARGV of `apply_batch.lua`). Key names, fields and
//! absolute expiries are computed here, and data whose key would already be
//! expired is left out, so the script only writes: buckets carry their new
//! value (`HSET`, no read), wallet marks and event ids are new data.
//! ```text
//! u32 hash_count
//!   hash_count × { u16 len, key, i64 expire_at_ms,
//!                  u32 n, n × { u16 len, field, bucket },
//!                  u32 len, wallet mark records }
//! u32 event_key_count
//!   event_key_count × { u16 len, key, i64 expire_at_ms, u32 len, event records }
//! u32 token_count
//!   token_count × { u16 len, token, i64 last_ms }
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::keys::{self, DAY_MS, HOUR_MS};
use super::StoreError;
use crate::window::{AppliedEvent, BatchEffect, Bucket, FastMap, Level, PricePoint};

/// Encoded size of one bucket.
pub const BUCKET_LEN: usize = 108;
/// Encoded size of one event record.
pub const EVENT_LEN: usize = 20;

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
    fn f64(&mut self) -> Result<f64, StoreError> {
        self.take::<8>().map(f64::from_le_bytes)
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
    fn key(self, partition: u32, token: &str) -> String {
        match self.level {
            Level::Second => keys::seconds(partition, token, self.period),
            Level::Minute => keys::minutes(partition, token, self.period),
        }
    }
}

/// What a batch writes for one period of one token.
struct PeriodWrite<'a> {
    token: &'a str,
    id: HashId,
    /// Bucket offset and the bucket's new value (a batch touches a bucket once).
    buckets: Vec<(i64, &'a Bucket)>,
    /// Wallet mark records.
    marks: Vec<u8>,
}

/// A batch's writes grouped by token and period, in first-seen order (hash
/// lookups: this runs for every bucket and mark of every batch).
#[derive(Default)]
struct PeriodWrites<'a> {
    periods: Vec<PeriodWrite<'a>>,
    index: FastMap<(&'a str, HashId), usize>,
}

impl<'a> PeriodWrites<'a> {
    /// The writes of `token`'s period `id`, created empty on first use.
    fn of(&mut self, token: &'a str, id: HashId) -> &mut PeriodWrite<'a> {
        let next = self.periods.len();
        let at = *self.index.entry((token, id)).or_insert(next);
        if at == next {
            self.periods.push(PeriodWrite {
                token,
                id,
                buckets: Vec::new(),
                marks: Vec::new(),
            });
        }
        &mut self.periods[at]
    }
}

fn bucket_start_ms(level: Level, at: i64) -> i64 {
    match level {
        Level::Second => at.saturating_mul(1000),
        Level::Minute => at.saturating_mul(60_000),
    }
}

/// Appends `s` with its u16 length (too long → an invalid batch, naming `what`).
fn put_str(out: &mut Vec<u8>, s: &str, what: &str) -> Result<(), StoreError> {
    let len = u16::try_from(s.len()).map_err(|_| {
        StoreError::InvalidBatch(format!("{what} of {} bytes is too long", s.len()))
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_count(out: &mut Vec<u8>, n: usize) -> Result<(), StoreError> {
    let n = u32::try_from(n).map_err(|_| StoreError::InvalidBatch(format!("{n} items")))?;
    out.extend_from_slice(&n.to_le_bytes());
    Ok(())
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

/// Encodes partition `partition`'s batch `effect`, as of `now_ms`, as the
/// payload of `apply_batch.lua`.
pub fn encode_batch<'e>(
    partition: u32,
    effect: &'e BatchEffect,
    now_ms: i64,
    lifetimes: &KeyLifetimes,
) -> Result<Vec<u8>, StoreError> {
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
        periods.of(&d.token, id).buckets.push((offset, &d.total));
    }
    for w in &effect.wallets {
        seen(&w.token, bucket_start_ms(w.level, w.at));
        let (id, offset) = HashId::of(w.level, w.at);
        put_mark(
            &mut periods.of(&w.token, id).marks,
            offset,
            w.sides & 3,
            &w.wallet,
        )?;
    }
    let live: Vec<(String, i64, &PeriodWrite)> = periods
        .periods
        .iter()
        .map(|p| (p.id.key(partition, p.token), lifetimes.expire_at(p.id), p))
        .filter(|(_, expire_at, _)| *expire_at > now_ms)
        .collect();
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

    let mut out = Vec::with_capacity(
        16 + effect.buckets.len() * (BUCKET_LEN + 8)
            + effect.wallets.len() * 24
            + effect.events.len() * EVENT_LEN
            + live.len() * 48,
    );
    // Field names are written through one reused buffer.
    let mut field_name = String::new();
    put_count(&mut out, live.len())?;
    for (key, expire_at, period) in &live {
        put_str(&mut out, key, "key")?;
        out.extend_from_slice(&expire_at.to_le_bytes());
        put_count(&mut out, period.buckets.len())?;
        for &(offset, bucket) in &period.buckets {
            field_name.clear();
            let _ = write!(field_name, "{offset}");
            put_str(&mut out, &field_name, "field")?;
            encode_bucket(bucket, &mut out);
        }
        put_count(&mut out, period.marks.len())?;
        out.extend_from_slice(&period.marks);
    }
    put_count(&mut out, expiring.len())?;
    for (hour, expire_at, records) in expiring {
        put_str(&mut out, &keys::events(partition, hour), "key")?;
        out.extend_from_slice(&expire_at.to_le_bytes());
        put_count(&mut out, records.len())?;
        out.extend_from_slice(records);
    }
    let index_keep = lifetimes.index_keep_ms();
    let live: Vec<(&str, i64)> = tokens
        .into_iter()
        .filter(|(_, last_ms)| last_ms + index_keep > now_ms)
        .collect();
    put_count(&mut out, live.len())?;
    for (token, last_ms) in live {
        put_str(&mut out, token, "token")?;
        out.extend_from_slice(&last_ms.to_le_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::BucketDelta;

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
    fn buckets_round_trip_bit_exactly() {
        let b = sample();
        let mut bytes = Vec::new();
        encode_bucket(&b, &mut bytes);
        assert_eq!(bytes.len(), BUCKET_LEN);
        let back = decode_bucket(&bytes).unwrap();
        assert_eq!(back, b);
        assert_eq!(back.volume_usd.to_bits(), b.volume_usd.to_bits());
        assert!(decode_bucket(&bytes[1..]).is_err());
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

    #[test]
    fn long_tokens_are_rejected() {
        let effect = BatchEffect {
            buckets: vec![BucketDelta {
                token: "x".repeat(70_000).into(),
                level: Level::Second,
                at: 1,
                delta: sample(),
                total: sample(),
            }],
            ..BatchEffect::default()
        };
        let lifetimes = KeyLifetimes {
            second_keep_ms: 7_200_000,
            minute_keep_ms: 172_800_000,
            dedup_ms: 86_400_000,
            margin_ms: 600_000,
        };
        assert!(matches!(
            encode_batch(0, &effect, 0, &lifetimes),
            Err(StoreError::InvalidBatch(_))
        ));
    }
}
