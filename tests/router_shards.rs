//! The router in front of real shard HTTP/WS servers (`api::local_routes`),
//! each on its own runtime so it can be killed and restarted like a process.
//! The shards hold no partition core (the window engine is not needed for what
//! is checked here): every token is unknown to them, so `/stats` answers 404 and
//! `null`, `/stats/top` an empty list, and WS updates are published on the
//! shard's own hub as its coalescer would. Checks: proxying and errors, the
//! scatter-gather shape, top merge, 503 when a partition has neither shard nor
//! fallback, `/cluster`, and WS clients staying connected through a shard
//! restart, with the upstream subscription refcounted and restored.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::Value;
use support::ws::{assert_bad_frames_get_errors, next_json, Ws};
use swapstats::api::ws::Hub;
use swapstats::api::{local_routes, serve_on, LocalApi};
use swapstats::config::Settings;
use swapstats::partition::partition_for;
use swapstats::router::discovery::static_directory;
use swapstats::router::{router_app, RouterConfig, StatsFallback, StoreFallback};
use swapstats::shard::{LocalShards, StopFlag};
use swapstats::store::MemoryStore;
use swapstats::window::{EngineConfig, WindowSpec};
use tokio_tungstenite::tungstenite::Message;

const PARTITIONS: u32 = 2;

/// A shard server on its own runtime: killing the runtime closes every socket.
struct ShardServer {
    port: u16,
    hub: Hub,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ShardServer {
    fn start(port: u16) -> Self {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {port}: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("bind {port}: {e}"),
            }
        };
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("shard runtime");
        let mut settings = Settings::defaults();
        settings.ws.ping_interval = Duration::from_secs(5);
        let hub = Hub::new(settings.ws.max_subscriptions, settings.ws.client_queue);
        let api = LocalApi {
            shards: Arc::new(LocalShards::new(PARTITIONS, Vec::new())),
            hub: hub.clone(),
            ws: settings.ws.clone(),
            windows: settings.windows.clone(),
        };
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let _ = serve_on(listener, local_routes(api), StopFlag::default()).await;
        });
        Self {
            port,
            hub,
            runtime: Some(runtime),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Like a `kill -9`: every task and socket of the shard is gone.
    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Publishes an update as the shard's coalescer would.
    fn publish_update(&self, token: &str, n: u64) -> usize {
        let text = format!(r#"{{"type":"update","token":"{token}","stats":{{"n":{n}}}}}"#);
        self.hub.publish(token, text.into())
    }
}

impl Drop for ShardServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the router over `shards` (static discovery) and returns its base URL.
async fn start_router(shards: &[&ShardServer], fallback: Option<Arc<dyn StatsFallback>>) -> String {
    let mut settings = Settings::defaults();
    settings.shard.partitions = PARTITIONS;
    settings.ws.max_subscriptions = 3;
    settings.ws.max_message_bytes = 512;
    let urls: Vec<String> = shards.iter().map(|s| s.url()).collect();
    let (_writer, directory) = static_directory(&urls, PARTITIONS).expect("static list");
    let app = router_app(
        RouterConfig::from_settings(&settings),
        directory,
        fallback,
        StopFlag::default(),
    )
    .expect("router app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn get(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("an HTTP answer");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// Tokens of each partition.
fn tokens_of(partition: u32, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("TOK{i}"))
        .filter(|t| partition_for(t, PARTITIONS) == partition)
        .take(n)
        .collect()
}

/// Reads until a message of `kind` arrives (skipping others).
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let msg = next_json(ws).await;
        if msg["type"] == kind {
            return msg;
        }
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_through_the_router() {
    let mut shard0 = ShardServer::start(0);
    let shard1 = ShardServer::start(0);
    let router = start_router(&[&shard0, &shard1], None).await;
    let (t0, t1) = (tokens_of(0, 3), tokens_of(1, 3));

    // One token: the owning shard's 404 is passed on.
    let (status, body) = get(&format!("{router}/stats?token={}", t0[0])).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap_or("").contains(&t0[0]),
        "{body}"
    );

    // Many tokens: one object keyed by every token, across both shards.
    let all: Vec<String> = t0.iter().chain(&t1).cloned().collect();
    let (status, body) = get(&format!("{router}/stats?tokens={}", all.join(","))).await;
    assert_eq!(status, 200, "{body}");
    let keys: Vec<&String> = body.as_object().expect("object").keys().collect();
    assert_eq!(keys.len(), all.len(), "{body}");
    assert!(all.iter().all(|t| body[t.as_str()].is_null()), "{body}");

    // Top: both shards' (empty) lists merged.
    let (status, body) = get(&format!("{router}/stats/top?window=1h&by=txns&limit=5")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["window"].as_str(), body["by"].as_str()),
        (Some("1h"), Some("txns"))
    );
    assert_eq!(body["tokens"], serde_json::json!([]));
    assert!(body.get("missing_partitions").is_none(), "{body}");

    // Bad parameters: the same 400s as a shard, before any shard is asked.
    let long = "x".repeat(200);
    for (path, want) in [
        ("/stats".to_string(), 400),
        ("/stats?token=".to_string(), 400),
        ("/stats?token=A&tokens=B".to_string(), 400),
        ("/stats?tokens=A,,B".to_string(), 400),
        (format!("/stats?token={long}"), 400),
        ("/stats?bogus=1".to_string(), 400),
        ("/stats/top?window=3d".to_string(), 400),
        ("/stats/top?limit=0".to_string(), 400),
        ("/stats/top?by=nonsense".to_string(), 400),
        ("/nowhere".to_string(), 404),
    ] {
        let (status, body) = get(&format!("{router}{path}")).await;
        assert_eq!(status, want, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }

    // /cluster: both shards listed and reachable.
    let (status, body) = get(&format!("{router}/cluster")).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["partitions"][0]["address"],
        shard0.url().as_str(),
        "{body}"
    );
    assert_eq!(body["partitions"][1]["reachable"], true, "{body}");

    // Shard 0 dies, and there is no fallback store: its tokens get 503, the
    // other partition still answers, and top-N says which partition is missing.
    shard0.kill();
    let (status, body) = get(&format!("{router}/stats?token={}", t0[0])).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    let (status, _) = get(&format!("{router}/stats?token={}", t1[0])).await;
    assert_eq!(status, 404);
    let (status, _) = get(&format!("{router}/stats?tokens={}", all.join(","))).await;
    assert_eq!(status, 503);
    let (status, body) = get(&format!("{router}/stats/top")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["missing_partitions"], serde_json::json!([0]), "{body}");
    let (_, body) = get(&format!("{router}/cluster")).await;
    assert_eq!(body["partitions"][0]["reachable"], false, "{body}");
    assert!(body["partitions"][0]["last_error"].is_string(), "{body}");
    let (status, body) = get(&format!("{router}/readyz")).await;
    assert_eq!(
        (status, body["ready"].as_bool()),
        (200, Some(true)),
        "shards are not the router's readiness: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_answers_for_a_dead_shard() {
    let mut shard0 = ShardServer::start(0);
    let shard1 = ShardServer::start(0);
    let engine = EngineConfig {
        windows: WindowSpec::defaults(),
        dedup_horizon_ms: 24 * 3600 * 1000,
        retention_ms: 48 * 3600 * 1000,
    };
    let fallback: Arc<dyn StatsFallback> =
        Arc::new(StoreFallback::new(Arc::new(MemoryStore::default()), engine));
    let router = start_router(&[&shard0, &shard1], Some(fallback)).await;
    shard0.kill();
    let t0 = tokens_of(0, 2);
    // The memory store has nothing persisted: the fallback's answer is a 404
    // (not a 503), like the shard's for a token without swaps.
    let (status, body) = get(&format!("{router}/stats?token={}", t0[0])).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (status, body) = get(&format!("{router}/stats?tokens={}", t0.join(","))).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body[t0[0].as_str()].is_null() && body[t0[1].as_str()].is_null(),
        "{body}"
    );
    let (status, body) = get(&format!("{router}/readyz")).await;
    assert_eq!(
        (status, body["store"].as_str()),
        (200, Some("ok")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_clients_stay_through_a_shard_restart() {
    let mut shard0 = ShardServer::start(0);
    let shard1 = ShardServer::start(0);
    let router = start_router(&[&shard0, &shard1], None).await;
    let ws_url = format!("{}/ws", router.replacen("http://", "ws://", 1));
    let token = tokens_of(0, 1).remove(0);
    let other = tokens_of(1, 1).remove(0);

    // Client A subscribes at connect; its snapshot is null (no swaps anywhere).
    let (mut a, _) = tokio_tungstenite::connect_async(format!("{ws_url}?token={token}"))
        .await
        .expect("ws connects");
    assert_eq!(next_json(&mut a).await["type"], "subscribed");
    let snapshot = next_json(&mut a).await;
    assert_eq!(
        (snapshot["type"].as_str(), snapshot["token"].as_str()),
        (Some("snapshot"), Some(token.as_str()))
    );
    assert!(snapshot["stats"].is_null(), "{snapshot}");

    // Client B wants the same token and one of the other partition.
    let (mut b, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .expect("ws connects");
    let subscribe = format!(r#"{{"op":"subscribe","tokens":["{token}","{other}"]}}"#);
    b.send(Message::text(subscribe)).await.expect("send");
    assert_eq!(next_json(&mut b).await["type"], "subscribed");

    // One upstream subscription per token, on the owning shard only.
    eventually("shards see the subscriptions", || {
        shard0.hub.is_wanted(&token) && shard1.hub.is_wanted(&other)
    })
    .await;
    assert_eq!(shard0.hub.client_count(), 1, "one upstream WS per shard");
    assert!(!shard1.hub.is_wanted(&token));

    // Updates fan out to both clients, unchanged.
    assert_eq!(shard0.publish_update(&token, 1), 1);
    for ws in [&mut a, &mut b] {
        let update = next_of(ws, "update").await;
        assert_eq!(
            (update["token"].as_str(), update["stats"]["n"].as_u64()),
            (Some(token.as_str()), Some(1))
        );
    }
    shard1.publish_update(&other, 7);
    assert_eq!(next_of(&mut b, "update").await["stats"]["n"], 7);

    // Shard 0 dies: clients stay connected and served.
    let port = shard0.port;
    shard0.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.send(Message::text(r#"{"op":"ping"}"#))
        .await
        .expect("send");
    assert_eq!(next_of(&mut a, "pong").await["type"], "pong");

    // It comes back on the same address: the router reconnects, resubscribes,
    // and sends the clients a fresh snapshot, then updates flow again.
    shard0 = ShardServer::start(port);
    eventually("the restarted shard sees the subscription again", || {
        shard0.hub.is_wanted(&token)
    })
    .await;
    for ws in [&mut a, &mut b] {
        let fresh = next_of(ws, "snapshot").await;
        assert_eq!(fresh["token"], token.as_str(), "{fresh}");
    }
    shard0.publish_update(&token, 2);
    for ws in [&mut a, &mut b] {
        assert_eq!(next_of(ws, "update").await["stats"]["n"], 2);
    }

    // Refcount: A unsubscribes, B still wants it; B leaves, the shard is told.
    a.send(Message::text(format!(
        r#"{{"op":"unsubscribe","tokens":["{token}"]}}"#
    )))
    .await
    .expect("send");
    assert_eq!(
        next_of(&mut a, "unsubscribed").await["tokens"][0],
        token.as_str()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(shard0.hub.is_wanted(&token), "B still wants it");
    drop(b);
    eventually("the last unsubscribe reaches the shard", || {
        !shard0.hub.is_wanted(&token)
    })
    .await;
    eventually("the other shard too", || !shard1.hub.is_wanted(&other)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ws_frames_through_the_router_get_errors() {
    let shard0 = ShardServer::start(0);
    let shard1 = ShardServer::start(0);
    let router = start_router(&[&shard0, &shard1], None).await;
    let ws_url = format!("{}/ws", router.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .expect("ws connects");
    assert_bad_frames_get_errors(&mut ws).await;
    assert!(
        tokio_tungstenite::connect_async(format!("{ws_url}?token="))
            .await
            .is_err(),
        "a bad ?token= is a 400"
    );
}
