//! token → partition: Kafka's default (Java client) partitioner,
//! `toPositive(murmur2(utf8(key))) % partitions`. Producer, shards and router all
//! use this one function, so any Kafka producer keyed by token agrees with them.

/// Kafka's murmur2 hash (seed 0x9747b28c), exactly as `org.apache.kafka.common.utils.Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `token` among `partitions` (which must be > 0).
pub fn partition_for(token: &str, partitions: u32) -> u32 {
    let positive = (murmur2(token.as_bytes()) & 0x7fff_ffff) as u32;
    positive % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Kafka's `UtilsTest.testMurmur2` (clients/src/test/java/.../UtilsTest.java).
    #[test]
    fn matches_kafka_java_murmur2_vectors() {
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key.as_bytes()), expected, "murmur2({key:?})");
        }
    }

    #[test]
    fn partitions_are_positive_and_in_range() {
        for p in 1..8 {
            for token in ["BTC", "ETH", "SOL", "a-little-bit-long-string", ""] {
                assert!(partition_for(token, p) < p);
            }
        }
        // toPositive(-973932308) % 3 = (−973932308 & 0x7fffffff) % 3
        assert_eq!(
            partition_for("21", 3),
            ((-973932308i32 & 0x7fff_ffff) as u32) % 3
        );
    }
}
