//! Kafka: one partition consumed by manual assignment (no group rebalance), the
//! dead-letter producer, and the swap producer used by `produce`.

use std::collections::VecDeque;
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::partition_queue::{PartitionQueue, SplitError};
use crate::shard::{DeadLetterSink, RecordSource, SourceError, SourceRecord, StopFlag};
use crate::swap::Rejection;

/// The consumer group used only for committed offsets (assignment is manual).
pub const GROUP_ID: &str = "swapstats-shards";
/// Header carrying W3C trace context.
pub const TRACEPARENT_HEADER: &str = match TRACEPARENT_HEADER_C.to_str() {
    Ok(name) => name,
    Err(_) => panic!("header name is ASCII"),
};
/// [`TRACEPARENT_HEADER`] for librdkafka's header lookup.
pub const TRACEPARENT_HEADER_C: &CStr = c"traceparent";
/// Most messages one read takes off the partition's queue.
const READ_BATCH: usize = 1024;

/// Kafka client errors.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("kafka: {0}")]
    Split(#[from] SplitError),
}

/// Base client settings shared by consumers and producers.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "swapstats");
    config
}

/// Consumes exactly one partition of a topic, starting at a given offset.
///
/// The partition's messages are read in batches off a queue of their own
/// ([`PartitionQueue`]) and handed out one by one; the consumer's queue is left
/// with errors, logs and commit results, which a task serves.
pub struct KafkaPartitionSource {
    queue: PartitionQueue,
    /// Read off the queue, not handed out yet.
    waiting: VecDeque<SourceRecord>,
    /// Set if a message of the partition ever shows on the consumer's queue.
    misrouted: Arc<AtomicBool>,
    consumer: Arc<StreamConsumer>,
    topic: String,
    partition: i32,
    next_offset: Arc<AtomicI64>,
    high_watermark: Arc<AtomicI64>,
}

impl KafkaPartitionSource {
    /// Assigns `topic`/`partition` at `start` (the offset after the last applied
    /// one; `None` = from the beginning) and starts watching the partition's end.
    pub fn assign(
        brokers: &str,
        topic: &str,
        partition: u32,
        start: Option<i64>,
        stop: StopFlag,
    ) -> Result<Self, KafkaError> {
        let mut source = Self::connect(brokers, topic, partition, stop)?;
        source.start_at(start)?;
        Ok(source)
    }

    /// Creates the consumer and starts watching the partition's end, without
    /// reading yet: a restarting shard connects while it restores, so it knows
    /// its lag (and can turn ready) as soon as it knows where to resume.
    pub fn connect(
        brokers: &str,
        topic: &str,
        partition: u32,
        stop: StopFlag,
    ) -> Result<Self, KafkaError> {
        let consumer: StreamConsumer = client_config(brokers)
            .set("group.id", GROUP_ID)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .set("enable.partition.eof", "false")
            .create()?;
        let consumer = Arc::new(consumer);
        // Before the partition is assigned: none of its messages may land on
        // the consumer's queue.
        let queue = PartitionQueue::split(&consumer, topic, partition as i32, READ_BATCH)?;
        let source = Self {
            queue,
            waiting: VecDeque::with_capacity(READ_BATCH),
            misrouted: Arc::new(AtomicBool::new(false)),
            consumer,
            topic: topic.to_string(),
            partition: partition as i32,
            next_offset: Arc::new(AtomicI64::new(0)),
            high_watermark: Arc::new(AtomicI64::new(-1)),
        };
        source.watch_watermark(stop.clone());
        source.serve_consumer_queue(stop);
        Ok(source)
    }

    /// Starts reading at `start` (the offset after the last applied one;
    /// `None` = from the beginning); records read before are dropped.
    pub fn start_at(&mut self, start: Option<i64>) -> Result<(), KafkaError> {
        self.waiting.clear();
        let mut assignment = TopicPartitionList::new();
        let offset = match start {
            Some(o) => Offset::Offset(o),
            None => Offset::Beginning,
        };
        assignment.add_partition_offset(&self.topic, self.partition, offset)?;
        self.consumer.assign(&assignment)?;
        self.next_offset
            .store(start.unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    /// Serves the consumer's queue until `stop`: broker errors (an outage
    /// shows here; librdkafka reconnects by itself), logs and commit results.
    /// The partition's messages go to its own queue, so none come here; if
    /// one ever did, the source fails (see `next_record`).
    fn serve_consumer_queue(&self, stop: StopFlag) {
        let (consumer, misrouted) = (self.consumer.clone(), self.misrouted.clone());
        tokio::spawn(async move {
            while !stop.is_set() {
                match tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
                    // Unreachable: the queue is split before assignment, and
                    // librdkafka never re-forwards a queue the application
                    // forwarded (a re-assignment keeps it, too). Should a
                    // librdkafka change break that, the shard stops rather
                    // than skip the message.
                    Ok(Ok(message)) => {
                        tracing::error!(
                            partition = message.partition(),
                            offset = message.offset(),
                            "message on the consumer's queue, not the partition's"
                        );
                        misrouted.store(true, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "kafka error; librdkafka retries"),
                    Err(_idle) => {}
                }
            }
        });
    }

    /// Refreshes the partition's high watermark every 500 ms (a blocking call,
    /// so it runs on the blocking pool), for lag and readiness.
    fn watch_watermark(&self, stop: StopFlag) {
        let (consumer, topic, partition, high) = (
            self.consumer.clone(),
            self.topic.clone(),
            self.partition,
            self.high_watermark.clone(),
        );
        tokio::spawn(async move {
            while !stop.is_set() {
                let (c, t) = (consumer.clone(), topic.clone());
                let result = tokio::task::spawn_blocking(move || {
                    c.fetch_watermarks(&t, partition, Duration::from_secs(2))
                })
                .await;
                match result {
                    Ok(Ok((_low, hw))) => high.store(hw, Ordering::Relaxed),
                    Ok(Err(e)) => tracing::debug!(error = %e, "watermark fetch failed"),
                    Err(e) => tracing::debug!(error = %e, "watermark task failed"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
}

impl RecordSource for KafkaPartitionSource {
    async fn next_record(&mut self) -> Result<Option<SourceRecord>, SourceError> {
        loop {
            if let Some(record) = self.waiting.pop_front() {
                self.next_offset.store(record.offset + 1, Ordering::Relaxed);
                return Ok(Some(record));
            }
            // Everything after a misrouted message would come there too: stop
            // before any of it is skipped; the restart resumes after the
            // last applied offset. (The pipeline calls again while idle.)
            if self.misrouted.load(Ordering::Relaxed) {
                return Err(SourceError::Fatal(
                    "kafka: a message bypassed the partition's queue; restart to resume".into(),
                ));
            }
            // Span links are the only use of a record's traceparent.
            let traceparent = crate::telemetry::tracing_enabled();
            if self.queue.read_waiting(&mut self.waiting, traceparent) == 0 {
                self.queue.readable().await;
            }
        }
    }

    fn commit(&mut self, offset: i64) -> Result<(), SourceError> {
        let mut tpl = TopicPartitionList::new();
        let add = tpl.add_partition_offset(&self.topic, self.partition, Offset::Offset(offset + 1));
        if let Err(e) = add.and_then(|()| self.consumer.commit(&tpl, CommitMode::Async)) {
            // The applied offset in Redis is the resume point; the Kafka commit
            // is informational (lag tooling), so a failed commit is not fatal.
            tracing::debug!(error = %e, "kafka commit failed");
        }
        Ok(())
    }

    fn lag(&self) -> Option<i64> {
        let high = self.high_watermark.load(Ordering::Relaxed);
        (high >= 0).then(|| (high - self.next_offset.load(Ordering::Relaxed)).max(0))
    }
}

/// Sends rejected records to the dead-letter topic with the reason and the
/// source partition/offset as headers.
pub struct KafkaDeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl KafkaDeadLetters {
    /// A producer for `topic`.
    pub fn new(brokers: &str, topic: &str) -> Result<Self, KafkaError> {
        let producer = client_config(brokers).set("linger.ms", "5").create()?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
        })
    }
}

impl DeadLetterSink for KafkaDeadLetters {
    async fn send(&mut self, record: &SourceRecord, partition: u32, rejection: &Rejection) {
        let (partition, offset) = (partition.to_string(), record.offset.to_string());
        let headers = || {
            OwnedHeaders::new()
                .insert(Header {
                    key: "reason",
                    value: Some(rejection.reason.as_str()),
                })
                .insert(Header {
                    key: "detail",
                    value: Some(rejection.detail.as_str()),
                })
                .insert(Header {
                    key: "source_partition",
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: "source_offset",
                    value: Some(offset.as_str()),
                })
        };
        // Retry until the DLQ accepts it: a dead letter is never silently lost.
        loop {
            let message: FutureRecord<'_, (), [u8]> = FutureRecord::to(&self.topic)
                .payload(record.payload.as_slice())
                .headers(headers());
            match self.producer.send(message, Duration::from_secs(5)).await {
                Ok(_) => return,
                Err((e, _)) => {
                    tracing::warn!(error = %e, "dead-letter send failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// Number of partitions of `topic`, from the broker's metadata.
pub fn topic_partitions(brokers: &str, topic: &str) -> Result<u32, KafkaError> {
    let producer: rdkafka::producer::BaseProducer = client_config(brokers).create()?;
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .first()
        .map(|t| t.partitions().len() as u32)
        .unwrap_or(0))
}
