//! The shard's side of a swap's trace: `produce` → Kafka `traceparent` header →
//! the shard's `apply_batch` span (linked to the producer span) → its
//! `store.persist` child (Redis Cluster) → a `ws_push` span in the batch's trace
//! for a subscribed WebSocket client. Separate from `otlp_traces.rs` because it
//! needs the Redis Cluster harness (`support::redis_cluster`).

mod otlp_support;
mod support;

use std::time::Duration;

use futures_util::StreamExt;
use otlp_support::{split_traceparent, Receiver};
use support::kafka::MockKafka;
use support::redis_cluster::RedisCluster;
use support::service::Service;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_batch_links_the_producer_and_parents_persist_and_ws_push() {
    let kafka = MockKafka::start(1);
    let redis = RedisCluster::start();
    let receiver = Receiver::start().await;
    let mut shard = Service::start(
        &["shard"],
        &[
            ("SWAPSTATS__KAFKA__BROKERS", kafka.bootstrap.clone()),
            ("SWAPSTATS__SHARD__PARTITIONS", "1".into()),
            ("SWAPSTATS__SHARD__PARTITION", "0".into()),
            ("SWAPSTATS__SHARD__BATCH_MAX_DELAY", "20ms".into()),
            ("SWAPSTATS__STORE__KIND", "redis-cluster".into()),
            ("SWAPSTATS__STORE__REDIS_URLS", redis.seed_urls().join(",")),
            (
                "SWAPSTATS__TELEMETRY__OTLP_ENDPOINT",
                receiver.endpoint.clone(),
            ),
            ("HOSTNAME", "swapstats-shard-0".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ],
    );
    shard.wait_ok("/healthz", Duration::from_secs(30)).await;

    // Subscribe before the swap exists, so its batch's change is pushed.
    let (mut ws, _) = tokio_tungstenite::connect_async(shard.ws_url("?token=BTC"))
        .await
        .expect("WS connect");
    let first = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(first, Ok(Some(Ok(_)))),
        "subscription acknowledged: {first:?}"
    );

    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_swapstats"))
        .args(["produce", "--count", "1"])
        .env("SWAPSTATS__KAFKA__BROKERS", &kafka.bootstrap)
        .env("SWAPSTATS__SHARD__PARTITIONS", "1")
        .env("SWAPSTATS__GENERATOR__RATE", "0")
        .env("SWAPSTATS__GENERATOR__TOKENS", "1")
        .env("SWAPSTATS__TELEMETRY__OTLP_ENDPOINT", &receiver.endpoint)
        .status()
        .await
        .expect("run produce");
    assert!(status.success());

    let producer = receiver
        .wait_for("the producer span", Duration::from_secs(10), |spans| {
            spans.iter().find(|s| s.name == "kafka.produce").cloned()
        })
        .await;
    let headers = tokio::task::block_in_place(|| kafka.read_all("swaps", 0));
    let traceparent = headers[0]
        .2
        .iter()
        .find(|(k, _)| k == "traceparent")
        .map(|(_, v)| v.clone());
    let (trace_id, span_id, _) = split_traceparent(&traceparent.expect("traceparent header"));
    assert_eq!(
        (trace_id.as_str(), span_id.as_str()),
        (producer.trace_id.as_str(), producer.span_id.as_str())
    );

    let batch = receiver
        .wait_for(
            "apply_batch linked to the producer span",
            Duration::from_secs(20),
            |spans| {
                spans
                    .iter()
                    .find(|s| {
                        s.name == "apply_batch"
                            && s.links
                                .contains(&(producer.trace_id.clone(), producer.span_id.clone()))
                    })
                    .cloned()
            },
        )
        .await;
    assert_eq!(batch.service(), "swapstats-shard");
    assert_eq!(
        batch
            .resource
            .get("swapstats.partition")
            .map(String::as_str),
        Some("0")
    );
    assert_eq!(
        batch.resource.get("k8s.pod.name").map(String::as_str),
        Some("swapstats-shard-0")
    );
    assert_eq!(batch.attr("links"), Some("1"));

    let persist = receiver
        .wait_for(
            "store.persist under apply_batch",
            Duration::from_secs(10),
            |spans| {
                spans
                    .iter()
                    .find(|s| s.name == "store.persist" && s.parent_span_id == batch.span_id)
                    .cloned()
            },
        )
        .await;
    assert_eq!(persist.trace_id, batch.trace_id);
    assert_eq!(persist.attr("outcome"), Some("applied"));

    // The client gets the update, and its push is in the batch's trace.
    let update = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    assert!(matches!(update, Ok(Some(Ok(_)))), "WS update: {update:?}");
    let push = receiver
        .wait_for(
            "ws_push in the batch's trace",
            Duration::from_secs(10),
            |spans| {
                spans
                    .iter()
                    .find(|s| s.name == "ws_push" && s.trace_id == batch.trace_id)
                    .cloned()
            },
        )
        .await;
    assert_eq!(push.parent_span_id, batch.span_id);
    assert_eq!(push.attr("token"), Some("BTC"));
    assert_eq!(push.attr("clients"), Some("1"));

    // SIGTERM: the shard drains, closes its Kafka consumer (the partition's
    // split-off queue first) and exits cleanly.
    shard.terminate(Duration::from_secs(20)).await;
}
