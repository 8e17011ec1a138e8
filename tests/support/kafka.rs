//! Hosts librdkafka's mock Kafka cluster (a real Kafka-protocol broker) on a
//! dedicated thread, since `MockCluster` is not `Send`. Shard and producer
//! processes connect to `bootstrap` like to any broker. Mind its ~5 MiB
//! retention per partition: keep test streams below that.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Number of mock brokers (ids 1..=3).
pub const BROKERS: i32 = 3;

enum Command {
    BrokerDown(i32),
    BrokerUp(i32),
    Stop,
}

/// One consumed message: (offset, payload, headers as (key, value)).
pub type RawMessage = (i64, Vec<u8>, Vec<(String, String)>);

/// A running mock cluster with topic `swaps` (P partitions) and `swaps.dlq`.
pub struct MockKafka {
    pub bootstrap: String,
    commands: mpsc::Sender<(Command, mpsc::Sender<()>)>,
    thread: Option<JoinHandle<()>>,
}

impl MockKafka {
    /// Starts the cluster and creates the topics.
    pub fn start(partitions: i32) -> Self {
        let (boot_tx, boot_rx) = mpsc::channel();
        let (cmd_tx, cmd_rx) = mpsc::channel::<(Command, mpsc::Sender<()>)>();
        let thread = std::thread::spawn(move || {
            let cluster = MockCluster::new(BROKERS).expect("mock cluster");
            cluster
                .create_topic("swaps", partitions, 1)
                .expect("create swaps");
            cluster.create_topic("swaps.dlq", 1, 1).expect("create dlq");
            boot_tx
                .send(cluster.bootstrap_servers())
                .expect("send bootstrap");
            while let Ok((command, done)) = cmd_rx.recv() {
                match command {
                    Command::BrokerDown(id) => cluster.broker_down(id).expect("broker down"),
                    Command::BrokerUp(id) => cluster.broker_up(id).expect("broker up"),
                    Command::Stop => break,
                }
                let _ = done.send(());
            }
        });
        let bootstrap = boot_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("mock cluster started");
        Self {
            bootstrap,
            commands: cmd_tx,
            thread: Some(thread),
        }
    }

    fn command(&self, command: Command) {
        let (tx, rx) = mpsc::channel();
        self.commands
            .send((command, tx))
            .expect("mock cluster thread alive");
        let _ = rx.recv_timeout(Duration::from_secs(10));
    }

    /// Takes every broker down (an outage) or brings them all back.
    pub fn set_all_brokers(&self, up: bool) {
        for id in 1..=BROKERS {
            self.command(if up {
                Command::BrokerUp(id)
            } else {
                Command::BrokerDown(id)
            });
        }
    }

    /// Writes raw payloads to one partition of a topic (keyed, awaited).
    pub fn produce_raw(&self, topic: &str, partition: i32, messages: &[(String, Vec<u8>)]) {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("producer");
        for (key, payload) in messages {
            producer
                .send(
                    BaseRecord::to(topic)
                        .key(key.as_str())
                        .payload(payload.as_slice())
                        .partition(partition),
                )
                .map_err(|(e, _)| e)
                .expect("enqueue");
        }
        producer.flush(Duration::from_secs(30)).expect("flush");
    }

    /// The high watermark (next offset) of a partition.
    pub fn end_offset(&self, topic: &str, partition: i32) -> i64 {
        let consumer = self.consumer();
        consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .expect("watermarks")
            .1
    }

    fn consumer(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", "swapstats-test-reader")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("consumer")
    }

    /// Every message of a partition, in offset order.
    pub fn read_all(&self, topic: &str, partition: i32) -> Vec<RawMessage> {
        let end = self.end_offset(topic, partition);
        let consumer = self.consumer();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Beginning)
            .expect("tpl");
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while out.last().map_or(end > 0, |(o, _, _)| *o + 1 < end) {
            assert!(
                Instant::now() < deadline,
                "read_all timed out at {} of {end}",
                out.len()
            );
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let headers = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((
                    m.offset(),
                    m.payload().unwrap_or_default().to_vec(),
                    headers,
                ));
            }
        }
        out
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        let (tx, _rx) = mpsc::channel();
        let _ = self.commands.send((Command::Stop, tx));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
