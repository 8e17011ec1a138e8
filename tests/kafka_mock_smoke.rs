//! The mock Kafka host works for other processes: `swapstats produce` writes a
//! counted stream, keyed by token, partitioned by the murmur2 partitioner.

mod support;

use std::time::Duration;
use support::kafka::MockKafka;

use swapstats::partition::partition_for;
use swapstats::shard::{RecordSource, SourceRecord, StopFlag};
use swapstats::source::kafka::KafkaPartitionSource;
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

/// The source's next record, within 30 s.
async fn next(source: &mut KafkaPartitionSource) -> SourceRecord {
    tokio::time::timeout(Duration::from_secs(30), source.next_record())
        .await
        .expect("a record in time")
        .expect("no source error")
        .expect("not ended")
}

/// The shard's Kafka source reads only its partition, from the offset it is
/// given, in order; it waits on an empty partition and wakes for new
/// messages, also for more than one read batch at once; re-assigned, it reads
/// from the new offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_reads_its_partition_in_order_and_wakes_for_new_messages() {
    let kafka = std::sync::Arc::new(MockKafka::start(2));
    let payloads = |partition: i32, offsets: std::ops::Range<i64>| -> Vec<(String, Vec<u8>)> {
        offsets
            .map(|o| (format!("k{o}"), format!("p{partition}-{o}").into_bytes()))
            .collect()
    };
    let produce = |partition: i32, offsets: std::ops::Range<i64>| {
        let (kafka, messages) = (kafka.clone(), payloads(partition, offsets));
        tokio::task::spawn_blocking(move || kafka.produce_raw("swaps", partition, &messages))
    };
    produce(0, 0..10).await.expect("produce p0");
    produce(1, 0..5).await.expect("produce p1");

    let stop = StopFlag::default();
    let mut source =
        KafkaPartitionSource::assign(&kafka.bootstrap, "swaps", 1, Some(2), stop.clone())
            .expect("assign");
    for offset in 2..5 {
        let record = next(&mut source).await;
        assert_eq!(
            (record.offset, record.payload),
            (offset, format!("p1-{offset}").into_bytes())
        );
        assert_eq!(
            record.traceparent, None,
            "headers are not read while spans are not exported"
        );
    }
    // Caught up: the source waits (and never hands out partition 0's messages).
    let idle = tokio::time::timeout(Duration::from_millis(500), source.next_record()).await;
    assert!(idle.is_err(), "no record past the partition's end");

    // Messages that arrive while it waits wake it, more than one read batch.
    let later = produce(1, 5..2505);
    for offset in 5..2505 {
        let record = next(&mut source).await;
        assert_eq!(
            (record.offset, record.payload),
            (offset, format!("p1-{offset}").into_bytes())
        );
    }
    later.await.expect("produce later");
    // Re-assigned, it reads from the new offset, through the same queue, and
    // drops what it had read ahead (2001.. after the first start_at).
    source.start_at(Some(2000)).expect("start at 2000");
    assert_eq!(next(&mut source).await.offset, 2000);
    source.start_at(Some(100)).expect("start at 100");
    for offset in 100..103 {
        assert_eq!(next(&mut source).await.offset, offset);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while source.lag() != Some(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag {:?}",
            source.lag()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.set();
}
