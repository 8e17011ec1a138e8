//! End to end through the router: three `swapstats shard` processes (one Kafka
//! partition each, persisting to a Redis Cluster), one `swapstats router`
//! process in front of them, swaps produced by `swapstats produce`.
//!
//! - `/stats` of every token through the router equals the owning shard's answer;
//!   `?tokens=` and `/stats/top` agree with the shards' answers;
//! - `kill -9` of one shard: its tokens keep answering from Redis with the same
//!   numbers (`"source": "redis"`); WS clients of its tokens stay connected and
//!   get updates again after the shard restarts;
//! - bad parameters and WS frames through the router get the same errors.
//!
//! Redis Cluster and Kafka are real: `redis-server` processes and librdkafka's
//! mock cluster (see `tests/support`).

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::kafka::MockKafka;
use support::redis_cluster::RedisCluster;
use support::service::{get_json, Service};
use tokio_tungstenite::tungstenite::Message;

const PARTITIONS: u32 = 3;
const TOKENS: u32 = 40;
const COUNT: u64 = 6000;

/// The external services the processes talk to; dropping it stops them.
struct Infra {
    /// Redis Cluster seed URLs (`redis://127.0.0.1:PORT`).
    redis_urls: Vec<String>,
    /// Kafka bootstrap address with topic `swaps` of [`PARTITIONS`] partitions.
    kafka_brokers: String,
    /// Whatever keeps the harnesses alive.
    _guards: Vec<Box<dyn std::any::Any>>,
}

/// Starts a Redis Cluster (3 masters + 3 replicas) and a mock Kafka cluster
/// hosting topic `swaps` with [`PARTITIONS`] partitions and `swaps.dlq`.
fn start_infra() -> Infra {
    let redis = RedisCluster::start();
    let kafka = MockKafka::start(PARTITIONS as i32);
    Infra {
        redis_urls: redis.seed_urls(),
        kafka_brokers: kafka.bootstrap.clone(),
        _guards: vec![Box::new(redis), Box::new(kafka)],
    }
}

fn common_env(infra: &Infra) -> Vec<(&'static str, String)> {
    vec![
        ("SWAPSTATS__SHARD__PARTITIONS", PARTITIONS.to_string()),
        ("SWAPSTATS__KAFKA__BROKERS", infra.kafka_brokers.clone()),
        ("SWAPSTATS__STORE__KIND", "redis-cluster".to_string()),
        ("SWAPSTATS__STORE__REDIS_URLS", infra.redis_urls.join(",")),
        ("SWAPSTATS__WS__COALESCE", "20ms".to_string()),
        ("SWAPSTATS__GENERATOR__TOKENS", TOKENS.to_string()),
        ("SWAPSTATS__GENERATOR__WALLETS", "300".to_string()),
        ("SWAPSTATS__GENERATOR__DUP_RATE", "0.05".to_string()),
        ("SWAPSTATS__GENERATOR__RATE", "3000".to_string()),
    ]
}

fn start_shard(infra: &Infra, partition: u32) -> Service {
    let mut env = common_env(infra);
    env.push(("SWAPSTATS__SHARD__PARTITION", partition.to_string()));
    Service::start(&["shard"], &env)
}

/// Runs `swapstats produce --count N` to completion.
async fn produce(infra: &Infra, count: u64, seed: u64) {
    let mut env = common_env(infra);
    env.push(("SWAPSTATS__GENERATOR__SEED", seed.to_string()));
    let count = count.to_string();
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_swapstats"))
        .args(["produce", "--count", &count])
        .envs(env)
        .status()
        .await
        .expect("run swapstats produce");
    assert!(status.success(), "produce failed: {status}");
}

/// Sum over shards of `applied_offset + 1`: swaps persisted so far.
async fn persisted(shards: &[Service]) -> u64 {
    let mut total = 0;
    for shard in shards {
        if let Ok((_, body)) = get_json(&shard.url("/readyz")).await {
            for p in body["partitions"].as_array().into_iter().flatten() {
                total += (p["applied_offset"].as_i64().unwrap_or(-1) + 1) as u64;
            }
        }
    }
    total
}

/// Asserts two stats JSON values are equal: floats within 1e-9 relative, the
/// query times (`updated_at`) and the router's `source` tag ignored.
fn assert_same(got: &Value, want: &Value, path: &str) {
    match (got, want) {
        (Value::Object(a), Value::Object(b)) => {
            let keys = |m: &serde_json::Map<String, Value>| -> Vec<String> {
                let mut k: Vec<String> = m
                    .keys()
                    .filter(|k| *k != "source" && *k != "updated_at")
                    .cloned()
                    .collect();
                k.sort();
                k
            };
            assert_eq!(keys(a), keys(b), "{path}: fields differ");
            for key in keys(a) {
                assert_same(&a[&key], &b[&key], &format!("{path}.{key}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: lengths differ");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_same(x, y, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            let tol = 1e-9 * x.abs().max(y.abs()).max(1.0);
            assert!((x - y).abs() <= tol, "{path}: {x} vs {y}");
        }
        _ => assert_eq!(got, want, "{path}"),
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_of(ws: &mut Ws, kind: &str, token: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} of {token} within {within:?}"))
            .expect("client stays connected")
            .expect("no WS error");
        if let Message::Text(text) = msg {
            let value: Value = serde_json::from_str(&text).expect("JSON");
            if value["type"] == kind && (token.is_empty() || value["token"] == token) {
                return value;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_answers_for_the_cluster_and_through_a_shard_restart() {
    let infra = start_infra();
    let mut shards: Vec<Service> = (0..PARTITIONS).map(|p| start_shard(&infra, p)).collect();
    for shard in &mut shards {
        shard.wait_ok("/healthz", Duration::from_secs(30)).await;
    }
    produce(&infra, COUNT, 11).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while persisted(&shards).await < COUNT {
        assert!(Instant::now() < deadline, "stream not persisted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for shard in &mut shards {
        shard.wait_ok("/readyz", Duration::from_secs(30)).await;
    }

    let mut env = common_env(&infra);
    let urls: Vec<String> = shards.iter().map(|s| s.url("")).collect();
    env.push(("SWAPSTATS__ROUTER__SHARDS", urls.join(",")));
    env.push(("SWAPSTATS__ROUTER__SHARD_TIMEOUT", "500ms".to_string()));
    let mut router = Service::start(&["router"], &env);
    router.wait_ok("/readyz", Duration::from_secs(30)).await;

    // Every token through the router equals its owning shard's answer.
    let tokens: Vec<String> = (0..TOKENS as usize)
        .map(swapstats::source::generator::token_name)
        .collect();
    let owner = |t: &str| swapstats::partition::partition_for(t, PARTITIONS) as usize;
    let mut direct: HashMap<String, Value> = HashMap::new();
    for token in &tokens {
        let (s_status, s_body) =
            get_json(&shards[owner(token)].url(&format!("/stats?token={token}")))
                .await
                .expect("shard");
        let (r_status, r_body) = get_json(&router.url(&format!("/stats?token={token}")))
            .await
            .expect("router");
        assert_eq!(r_status, s_status, "{token}: {r_body}");
        if s_status == 200 {
            assert_eq!(r_body["source"], "shard", "{token}");
            assert_same(&r_body, &s_body, token);
            direct.insert(token.clone(), s_body);
        }
    }
    assert!(
        direct.len() >= 10,
        "most tokens saw swaps: {}",
        direct.len()
    );

    // Many tokens at once.
    let (status, many) = get_json(&router.url(&format!("/stats?tokens={}", tokens.join(","))))
        .await
        .expect("router");
    assert_eq!(status, 200, "{many}");
    for token in &tokens {
        match direct.get(token) {
            Some(want) => assert_same(&many[token.as_str()], want, token),
            None => assert!(
                many[token.as_str()].is_null(),
                "{token}: {}",
                many[token.as_str()]
            ),
        }
    }

    // Top-N equals the merge of the shards' own lists.
    let mut entries: Vec<swapstats::window::TopEntry> = Vec::new();
    for shard in &shards {
        let (_, body) = get_json(&shard.url("/stats/top?window=1h&by=txns&limit=10"))
            .await
            .expect("shard top");
        entries.extend(
            serde_json::from_value::<Vec<swapstats::window::TopEntry>>(body["tokens"].clone())
                .expect("entries"),
        );
    }
    let want: Vec<String> = swapstats::shard::merge_top(entries, 10)
        .into_iter()
        .map(|e| e.token)
        .collect();
    let (status, top) = get_json(&router.url("/stats/top?window=1h&by=txns&limit=10"))
        .await
        .expect("router top");
    assert_eq!(status, 200, "{top}");
    let got: Vec<String> = top["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["token"].as_str().map(String::from))
        .collect();
    assert_eq!(got, want);

    // WS clients of a token of the partition about to die, and of another one.
    let victim = 1usize;
    let hot = tokens
        .iter()
        .filter(|t| owner(t) == victim && direct.contains_key(*t))
        .max_by_key(|t| direct[*t]["windows"]["1h"]["txns"].as_u64().unwrap_or(0))
        .expect("a token of the victim partition")
        .clone();
    let ws_url = router.ws_url(&format!("?token={hot}"));
    let (mut client, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .expect("ws connects");
    let snapshot = next_of(&mut client, "snapshot", &hot, Duration::from_secs(10)).await;
    assert_same(&snapshot["stats"], &direct[&hot], "WS snapshot");

    // kill -9 of the shard: the same numbers, from Redis.
    shards[victim].kill9();
    for token in tokens.iter().filter(|t| owner(t) == victim) {
        let (status, body) = get_json(&router.url(&format!("/stats?token={token}")))
            .await
            .expect("router");
        match direct.get(token) {
            Some(want) => {
                assert_eq!(
                    (status, body["source"].as_str()),
                    (200, Some("redis")),
                    "{token}: {body}"
                );
                assert_same(&body, want, &format!("{token} from redis"));
            }
            None => assert_eq!(status, 404, "{token}: {body}"),
        }
    }
    let victims: Vec<&String> = tokens.iter().filter(|t| owner(t) == victim).collect();
    let list = victims
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let (status, body) = get_json(&router.url(&format!("/stats?tokens={list}")))
        .await
        .expect("router");
    assert_eq!(status, 200, "{body}");
    for token in victims {
        if let Some(want) = direct.get(token) {
            assert_eq!(body[token.as_str()]["source"], "redis");
            assert_same(&body[token.as_str()], want, token);
        }
    }
    client
        .send(Message::text(r#"{"op":"ping"}"#))
        .await
        .expect("client still connected");
    next_of(&mut client, "pong", "", Duration::from_secs(5)).await;

    // Restart: the client gets a fresh snapshot and then live updates.
    shards[victim].restart();
    shards[victim]
        .wait_ok("/readyz", Duration::from_secs(60))
        .await;
    let resynced = tokio::time::timeout(
        Duration::from_secs(20),
        next_of(&mut client, "snapshot", &hot, Duration::from_secs(30)),
    )
    .await;
    assert!(
        resynced.is_ok(),
        "no fresh snapshot after the restart; router log:\n{}",
        router.log_tail()
    );
    produce(&infra, 3000, 12).await;
    let update = next_of(&mut client, "update", &hot, Duration::from_secs(30)).await;
    assert!(
        update["stats"]["windows"]["1h"]["txns"]
            .as_u64()
            .unwrap_or(0)
            > direct[&hot]["windows"]["1h"]["txns"].as_u64().unwrap_or(0)
    );

    // Bad parameters and frames through the router.
    for (path, want) in [
        ("/stats", 400),
        ("/stats?tokens=A,,B", 400),
        ("/stats/top?limit=0", 400),
        ("/stats?token=NO_SUCH_TOKEN", 404),
        ("/nowhere", 404),
    ] {
        let (status, body) = get_json(&router.url(path)).await.expect("router");
        assert_eq!(status, want, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    client.send(Message::text("not json")).await.expect("send");
    next_of(&mut client, "error", "", Duration::from_secs(5)).await;
    assert!(router.is_running());
}
