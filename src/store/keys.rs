//! Redis key names of one partition (see `docs/redis-keys.md`).
//!
//! Every key of partition `p` starts with `ss:{p}:`: the `{p}` hash tag puts all
//! of a partition's keys in one Redis Cluster slot, so one Lua call can update
//! them atomically. Key names are built here (the script derives only
//! `ss:{p}:tokens` from `KEYS[1]`):
//! `lua/apply_batch.lua` gets them in the batch arguments.

/// Milliseconds per hour: second buckets and event ids are grouped per hour.
pub const HOUR_MS: i64 = 3_600_000;
/// Milliseconds per day: minute buckets are grouped per day.
pub const DAY_MS: i64 = 86_400_000;

/// `ss:{p}:` — the prefix (and hash tag) of every key of partition `p`.
pub fn prefix(partition: u32) -> String {
    format!("ss:{{{partition}}}:")
}

/// `ss:{p}:applied` — the last applied source offset (decimal string).
pub fn applied(partition: u32) -> String {
    format!("ss:{{{partition}}}:applied")
}

/// `ss:{p}:tokens` — sorted set: token → last block time (ms) seen in a batch.
pub fn tokens(partition: u32) -> String {
    format!("ss:{{{partition}}}:tokens")
}

/// `ss:{p}:s:<token>:<hour>` — hash of the token's second buckets and
/// second-level wallet marks in unix hour `hour`: field `<second within the
/// hour>` (0..3599) → encoded bucket; field `w<offset>` → the wallet mark
/// records written by the batch starting at source offset `offset`.
pub fn seconds(partition: u32, token: &str, hour: i64) -> String {
    PeriodKey::seconds(partition, token, hour).to_string()
}

/// `ss:{p}:m:<token>:<day>` — hash of the token's minute buckets and
/// minute-level wallet marks in unix day `day`: field `<minute within the day>`
/// (0..1439) → encoded bucket; field `w<offset>` → wallet mark records, as in
/// [`seconds`], each of which may also carry one of its seconds' marks (see
/// [`super::codec`]).
pub fn minutes(partition: u32, token: &str, day: i64) -> String {
    PeriodKey::minutes(partition, token, day).to_string()
}

/// The name of one of a token's period hashes ([`seconds`], [`minutes`]) as
/// a `Display`: a batch writes thousands of them straight into its argument
/// buffer, with no `String` each.
#[derive(Debug, Clone, Copy)]
pub struct PeriodKey<'a> {
    partition: u32,
    /// `s` (an hour of second buckets) or `m` (a day of minute buckets).
    kind: char,
    token: &'a str,
    period: i64,
}

impl<'a> PeriodKey<'a> {
    /// `ss:{p}:s:<token>:<hour>`.
    pub fn seconds(partition: u32, token: &'a str, hour: i64) -> Self {
        Self {
            partition,
            kind: 's',
            token,
            period: hour,
        }
    }

    /// `ss:{p}:m:<token>:<day>`.
    pub fn minutes(partition: u32, token: &'a str, day: i64) -> Self {
        Self {
            partition,
            kind: 'm',
            token,
            period: day,
        }
    }
}

impl std::fmt::Display for PeriodKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            partition,
            kind,
            token,
            period,
        } = self;
        write!(f, "ss:{{{partition}}}:{kind}:{token}:{period}")
    }
}

/// `ss:{p}:e:<hour>` — string of applied event ids whose block time falls in
/// unix hour `hour`, 20 bytes each (see [`super::codec`]).
pub fn events(partition: u32, hour: i64) -> String {
    format!("ss:{{{partition}}}:e:{hour}")
}

/// The Redis Cluster slot of every key of `partition` (CRC16/XMODEM of the
/// hash tag, mod 16384).
pub fn slot(partition: u32) -> u16 {
    key_slot(applied(partition).as_bytes())
}

/// The Redis Cluster slot of any key, honouring `{hash tags}`.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&c| c == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&c| c == b'}')
                .map(|close| &rest[..close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key);
    crc16_xmodem(tagged) % 16_384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_keys_of_a_partition_share_one_slot() {
        for p in 0..64 {
            let s = slot(p);
            for key in [
                applied(p),
                tokens(p),
                seconds(p, "tok{x}:1", 472_222),
                minutes(p, "BTC", 19_676),
                seconds(p, "}{", 1),
                minutes(p, "", -1),
                events(p, 472_222),
            ] {
                assert_eq!(key_slot(key.as_bytes()), s, "{key}");
            }
        }
        assert_ne!(slot(0), slot(1));
    }

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"foo"), 12_182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"123456789"), 12_739);
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
    }
}
