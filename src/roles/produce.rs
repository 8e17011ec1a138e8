//! `swapstats produce`: the generator writes swaps to Kafka, key = token,
//! partition = murmur2 partitioner (the Java client's default, so any consumer
//! or producer keyed by token agrees).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use swapstats::config::Settings;
use swapstats::partition::partition_for;
use swapstats::source::kafka::{client_config, topic_partitions, TRACEPARENT_HEADER};
use swapstats::source::SwapGenerator;
use swapstats::swap::encode_swap;

/// Counts delivery reports.
#[derive(Default)]
struct DeliveryCounter {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::warn!(error = %e, "delivery failed");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Produces `generator.count` swaps (0 = until stopped) at `generator.rate`.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let kafka = &settings.kafka;
    let (brokers, topic) = (kafka.brokers.clone(), kafka.topic.clone());
    let partitions = tokio::task::spawn_blocking(move || topic_partitions(&brokers, &topic))
        .await?
        .context("reading the topic's partition count")?;
    anyhow::ensure!(
        partitions > 0,
        "topic `{}` has no partitions (does it exist?)",
        kafka.topic
    );
    if partitions != settings.shard.partitions {
        tracing::warn!(
            partitions,
            configured = settings.shard.partitions,
            "topic partition count differs from shard.partitions; using the topic's"
        );
    }
    let producer: ThreadedProducer<DeliveryCounter> = client_config(&kafka.brokers)
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "200000")
        .create_with_context(DeliveryCounter::default())?;
    let generator = settings.generator.clone();
    let mut swaps = SwapGenerator::new(&generator);
    let stop = swapstats::shard::StopFlag::default();
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        swapstats::api::shutdown_signal().await;
        signal_stop.set();
    });
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent: u64 = 0;
    let traced = swapstats::telemetry::tracing_enabled();
    tracing::info!(topic = %kafka.topic, partitions, rate = generator.rate, count = generator.count, "producing");
    while !stop.is_set() && (generator.count == 0 || sent < generator.count) {
        tick.tick().await;
        let mut due = if generator.rate == 0 {
            sent + 10_000
        } else {
            (start.elapsed().as_secs_f64() * generator.rate as f64) as u64
        };
        if generator.count > 0 {
            due = due.min(generator.count);
        }
        while sent < due {
            let swap = swaps.next_swap(swapstats::now_ms());
            let payload = encode_swap(&swap);
            let partition = partition_for(&swap.token, partitions) as i32;
            let mut record = BaseRecord::to(&kafka.topic)
                .key(swap.token.as_str())
                .payload(&payload)
                .partition(partition);
            // A span per swap only while exporting; its context travels in the
            // message's `traceparent` header to the shard's batch span.
            let span = if traced {
                produce_span(&kafka.topic, partition, &swap.token)
            } else {
                tracing::Span::none()
            };
            if let Some(traceparent) = swapstats::telemetry::traceparent(&span) {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: TRACEPARENT_HEADER,
                    value: Some(traceparent.as_str()),
                }));
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(e).context("producing a swap"),
                }
            }
            sent += 1;
            drop(span);
        }
    }
    let flushed = tokio::task::spawn_blocking(move || {
        let result = producer.flush(Duration::from_secs(30));
        (result, producer)
    })
    .await?;
    flushed.0.context("flushing the producer")?;
    let counter = flushed.1.context();
    let (delivered, failed) = (
        counter.delivered.load(Ordering::Relaxed),
        counter.failed.load(Ordering::Relaxed),
    );
    tracing::info!(sent, delivered, failed, "producer finished");
    println!("produced {sent} swaps ({delivered} delivered, {failed} failed)");
    anyhow::ensure!(failed == 0, "{failed} swaps were not delivered");
    Ok(())
}

/// The producer span of one swap.
fn produce_span(topic: &str, partition: i32, token: &str) -> tracing::Span {
    tracing::info_span!(
        "kafka.produce",
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.destination.name = topic,
        messaging.destination.partition.id = partition,
        token,
    )
}
