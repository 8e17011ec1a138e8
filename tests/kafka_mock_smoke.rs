//! The mock Kafka host works for other processes: `swapstats produce` writes a
//! counted stream, keyed by token, partitioned by the murmur2 partitioner.

mod support;

use support::kafka::MockKafka;
use swapstats::partition::partition_for;
use swapstats::swap::{decode_swap, SwapLimits};

#[test]
fn produce_writes_each_swap_to_its_tokens_partition() {
    let kafka = MockKafka::start(3);
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_swapstats"))
        .args(["produce", "--count", "3000"])
        .env("SWAPSTATS__KAFKA__BROKERS", &kafka.bootstrap)
        .env("SWAPSTATS__SHARD__PARTITIONS", "3")
        .env("SWAPSTATS__GENERATOR__RATE", "0")
        .env("SWAPSTATS__GENERATOR__TOKENS", "100")
        .status()
        .expect("run produce");
    assert!(status.success());
    let mut total = 0;
    for p in 0..3 {
        for (_, payload, _) in kafka.read_all("swaps", p) {
            let swap = decode_swap(&payload, &SwapLimits::default(), swapstats::now_ms())
                .expect("valid swap");
            assert_eq!(
                partition_for(&swap.token, 3),
                p as u32,
                "{} on partition {p}",
                swap.token
            );
            total += 1;
        }
    }
    assert_eq!(total, 3000);
}
