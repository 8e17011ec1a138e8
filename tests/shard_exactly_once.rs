//! Shards on the mock Kafka cluster and a real Redis Cluster: exact stats through
//! duplicates, disorder, `kill -9` of shards, a Redis master failover, a broker
//! outage, a store that lost the last batch, and bad messages sent to the
//! dead-letter topic.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::Value;
use support::kafka::MockKafka;
use support::redis_cluster::{query, RedisCluster};
use support::service::{get_json, Service};
use swapstats::partition::partition_for;
use swapstats::swap::{decode_swap, SwapLimits};
use swapstats::window::{EngineConfig, WindowEngine, WindowSpec};

const PARTITIONS: i32 = 2;

fn start_shard(partition: i32, kafka: &MockKafka, redis: &RedisCluster) -> Service {
    Service::start(
        &["shard"],
        &[
            ("SWAPSTATS__KAFKA__BROKERS", kafka.bootstrap.clone()),
            ("SWAPSTATS__SHARD__PARTITIONS", PARTITIONS.to_string()),
            ("SWAPSTATS__SHARD__PARTITION", partition.to_string()),
            ("SWAPSTATS__SHARD__BATCH_MAX_SWAPS", "400".into()),
            ("SWAPSTATS__SHARD__BATCH_MAX_DELAY", "20ms".into()),
            ("SWAPSTATS__STORE__KIND", "redis-cluster".into()),
            ("SWAPSTATS__STORE__REDIS_URLS", redis.seed_urls().join(",")),
        ],
    )
}

/// One shard per partition, each answering `/healthz`.
async fn start_shards(kafka: &MockKafka, redis: &RedisCluster) -> Vec<Service> {
    let mut shards: Vec<Service> = (0..PARTITIONS)
        .map(|p| start_shard(p, kafka, redis))
        .collect();
    for shard in &mut shards {
        shard.wait_ok("/healthz", Duration::from_secs(30)).await;
    }
    shards
}

/// Starts `produce` for `count` swaps at `rate`/s in the background.
fn start_producer(kafka: &MockKafka, count: u64, rate: u64, seed: u64) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_swapstats"))
        .args(["produce", "--count", &count.to_string()])
        .env("SWAPSTATS__KAFKA__BROKERS", &kafka.bootstrap)
        .env("SWAPSTATS__SHARD__PARTITIONS", PARTITIONS.to_string())
        .env("SWAPSTATS__GENERATOR__RATE", rate.to_string())
        .env("SWAPSTATS__GENERATOR__TOKENS", "200")
        .env("SWAPSTATS__GENERATOR__WALLETS", "300")
        .env("SWAPSTATS__GENERATOR__DUP_RATE", "0.05")
        .env("SWAPSTATS__GENERATOR__DISORDER", "3s")
        .env("SWAPSTATS__GENERATOR__SEED", seed.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start produce")
}

async fn applied_offset(shard: &Service) -> Option<i64> {
    let (_, body) = get_json(&shard.url("/readyz")).await.ok()?;
    body["partitions"][0]["applied_offset"].as_i64()
}

/// Waits until each shard has applied its whole partition.
async fn wait_caught_up(shards: &mut [Service], kafka: &MockKafka, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for (p, shard) in shards.iter_mut().enumerate() {
        let end = kafka.end_offset("swaps", p as i32);
        let left = deadline.saturating_duration_since(Instant::now());
        wait_applied(shard, end - 1, left).await;
    }
}

/// Waits until `shard` has applied offset `last`.
async fn wait_applied(shard: &mut Service, last: i64, timeout: Duration) {
    shard
        .wait_until(&format!("offset {last} applied"), timeout, async |shard| {
            applied_offset(shard).await == Some(last)
        })
        .await;
}

/// Every token's stats from its shard equal a single reference engine fed the
/// partitions' distinct valid swaps (all fields; sums within 1e-9 relative).
async fn assert_exact(shards: &[Service], kafka: &MockKafka) -> usize {
    let mut reference = WindowEngine::new(EngineConfig {
        windows: WindowSpec::defaults(),
        dedup_horizon_ms: 24 * 3600 * 1000,
        retention_ms: 48 * 3600 * 1000,
    });
    let mut tokens: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let now = swapstats::now_ms();
    for p in 0..PARTITIONS {
        for (_, payload, _) in kafka.read_all("swaps", p) {
            if let Ok(swap) = decode_swap(&payload, &SwapLimits::default(), now) {
                let list = tokens
                    .entry(partition_for(&swap.token, PARTITIONS as u32))
                    .or_default();
                if !list.contains(&swap.token) {
                    list.push(swap.token.clone());
                }
                reference.apply(&swap, now);
            }
        }
    }
    let mut compared = 0;
    for (p, list) in tokens {
        for chunk in list.chunks(100) {
            let url = shards[p as usize].url(&format!("/stats?tokens={}", chunk.join(",")));
            let (status, body) = get_json(&url).await.expect("stats");
            assert_eq!(status, 200, "{body}");
            for token in chunk {
                let got = &body[token.as_str()];
                let at = got["updated_at"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("{token}: {got}"));
                let want = serde_json::to_value(
                    reference.stats(token, at).expect("reference has the token"),
                )
                .expect("json");
                assert_json_close(got, &want, token);
                compared += 1;
            }
        }
    }
    compared
}

fn assert_json_close(got: &Value, want: &Value, path: &str) {
    match (got, want) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                assert_json_close(a.get(k).unwrap_or(&Value::Null), v, &format!("{path}.{k}"));
            }
        }
        (Value::Number(a), Value::Number(b)) if a.is_f64() || b.is_f64() => {
            let (x, y) = (
                a.as_f64().unwrap_or(f64::NAN),
                b.as_f64().unwrap_or(f64::NAN),
            );
            assert!(
                (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1e-9),
                "{path}: {x} vs {y}"
            );
        }
        _ => assert_eq!(got, want, "{path}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_through_duplicates_disorder_and_repeated_kill_9() {
    let redis = RedisCluster::start();
    let kafka = MockKafka::start(PARTITIONS);
    let mut shards = start_shards(&kafka, &redis).await;
    // 12,000 swaps over ~8 s (~1.5 MB per partition: within the mock's retention).
    let mut producer = start_producer(&kafka, 12_000, 1_500, 11);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
    for kill in 0..6 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        let victim = kill % PARTITIONS as usize;
        shards[victim].kill9();
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        shards[victim].restart();
    }
    assert!(producer.wait().expect("producer").success());
    wait_caught_up(&mut shards, &kafka, Duration::from_secs(60)).await;
    let compared = assert_exact(&shards, &kafka).await;
    assert!(compared > 100, "compared {compared} tokens");
    // A restart with nothing new reports ready and serves the same numbers.
    shards[0].restart();
    shards[0].wait_ok("/readyz", Duration::from_secs(30)).await;
    assert_exact(&shards, &kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_through_a_redis_failover_and_a_broker_outage() {
    let mut redis = RedisCluster::start();
    let kafka = MockKafka::start(PARTITIONS);
    let mut shards = start_shards(&kafka, &redis).await;
    let mut producer = start_producer(&kafka, 9_000, 1_000, 12);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Kill -9 the Redis master holding partition 0's keys: its replica takes over.
    redis.kill_master_for_key("ss:{0}:applied");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // All brokers down for 3 s: shards pause and resume.
    kafka.set_all_brokers(false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    kafka.set_all_brokers(true);
    assert!(producer.wait().expect("producer").success());
    wait_caught_up(&mut shards, &kafka, Duration::from_secs(90)).await;
    assert!(assert_exact(&shards, &kafka).await > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_go_to_the_dead_letter_topic_with_reasons() {
    let redis = RedisCluster::start();
    let kafka = MockKafka::start(PARTITIONS);
    let mut shards = start_shards(&kafka, &redis).await;
    let now = swapstats::now_ms();
    let good = |i: i64| {
        let swap = format!(
            r#"{{"event_id":"ok{i}","token_id":"BTC","wallet":"w{i}","amount":1,"usd":{i},"side":"buy","rate":1,"executed_at":{}}}"#,
            now - i
        );
        ("BTC".to_string(), swap.into_bytes())
    };
    let bad: Vec<(&str, String)> = vec![
        ("malformed", "not json at all".into()),
        (
            "missing_field",
            r#"{"event_id":"x1","token_id":"BTC"}"#.into(),
        ),
        (
            "bad_number",
            format!(
                r#"{{"event_id":"x2","token_id":"BTC","amount":-1,"usd":1,"side":"buy","executed_at":{now}}}"#
            ),
        ),
        (
            "unknown_side",
            format!(
                r#"{{"event_id":"x3","token_id":"BTC","amount":1,"usd":1,"side":"hodl","executed_at":{now}}}"#
            ),
        ),
        (
            "from_the_future",
            format!(
                r#"{{"event_id":"x4","token_id":"BTC","amount":1,"usd":1,"side":"buy","executed_at":{}}}"#,
                now + 3_600_000
            ),
        ),
    ];
    let p = partition_for("BTC", PARTITIONS as u32) as i32;
    let mut messages = Vec::new();
    for (i, (_, payload)) in bad.iter().enumerate() {
        messages.push(good(i as i64 * 2 + 1));
        messages.push(("BTC".to_string(), payload.clone().into_bytes()));
    }
    messages.push(good(1)); // a duplicate
    messages.push(good(100));
    kafka.produce_raw("swaps", p, &messages);
    wait_caught_up(&mut shards, &kafka, Duration::from_secs(30)).await;

    let dlq = kafka.read_all("swaps.dlq", 0);
    let reasons: Vec<String> = dlq
        .iter()
        .map(|(_, _, headers)| {
            headers
                .iter()
                .find(|(k, _)| k == "reason")
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        reasons,
        bad.iter().map(|(r, _)| r.to_string()).collect::<Vec<_>>()
    );
    for (_, _, headers) in &dlq {
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "source_partition" && v == &p.to_string()),
            "{headers:?}"
        );
        assert!(
            headers.iter().any(|(k, _)| k == "source_offset"),
            "{headers:?}"
        );
    }
    let (_, btc) = get_json(&shards[p as usize].url("/stats?token=BTC"))
        .await
        .expect("stats");
    assert_eq!(btc["windows"]["5m"]["txns"], 6, "{btc}");
    assert_eq!(
        btc["windows"]["5m"]["volume_usd"].as_f64(),
        Some((1 + 3 + 5 + 7 + 9 + 100) as f64)
    );
    assert!(shards[p as usize].is_running());
}

/// The store's applied offset moves back under a running shard (a failover that
/// lost an acknowledged write, or another writer): its next batch does not
/// follow the stored offset, so the shard exits instead of writing on top; the
/// restart restores from the store and the stats stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_exits_when_the_store_is_not_where_it_left_it() {
    let redis = RedisCluster::start();
    let kafka = MockKafka::start(PARTITIONS);
    let p = partition_for("BTC", PARTITIONS as u32) as i32;
    let mut shard = start_shard(p, &kafka, &redis);
    shard.wait_ok("/healthz", Duration::from_secs(30)).await;
    let now = swapstats::now_ms();
    let swaps = |from: i64, to: i64| -> Vec<(String, Vec<u8>)> {
        (from..to)
            .map(|i| {
                let swap = format!(
                    r#"{{"event_id":"e{i}","token_id":"BTC","wallet":"w{i}","amount":1,"usd":{i},"side":"buy","rate":1,"executed_at":{}}}"#,
                    now - i
                );
                ("BTC".to_string(), swap.into_bytes())
            })
            .collect()
    };
    kafka.produce_raw("swaps", p, &swaps(0, 20));
    let end = kafka.end_offset("swaps", p);
    wait_applied(&mut shard, end - 1, Duration::from_secs(30)).await;

    // The store forgets the last batch's offset (its data stays).
    let applied_key = format!("ss:{{{p}}}:applied");
    let master = redis.master_of_key(&applied_key).expect("master");
    let _: () = query(
        master,
        redis::cmd("SET")
            .arg(&applied_key)
            .arg(end - 2)
            .arg("KEEPTTL"),
    )
    .expect("SET applied");
    kafka.produce_raw("swaps", p, &swaps(20, 30));
    let status = shard
        .wait_exit("after the store moved", Duration::from_secs(30))
        .await;
    assert!(!status.success(), "{status}");
    assert!(
        shard.log_tail().contains("restart to restore"),
        "{}",
        shard.log_tail()
    );

    shard.restart();
    let end = kafka.end_offset("swaps", p);
    wait_applied(&mut shard, end - 1, Duration::from_secs(30)).await;
    let (_, btc) = get_json(&shard.url("/stats?token=BTC"))
        .await
        .expect("stats");
    assert_eq!(btc["windows"]["5m"]["txns"], 30, "{btc}");
    assert_eq!(
        btc["windows"]["5m"]["volume_usd"].as_f64(),
        Some((0..30).sum::<i64>() as f64)
    );
}
