//! End to end: the real binary in standalone mode, a real WebSocket client, and
//! `/stats` checked against a reference engine fed the same seeded stream.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::service::{get_json, Service};
use support::ws::next_json;
use swapstats::config::GeneratorSettings;
use swapstats::source::SwapGenerator;
use swapstats::window::{EngineConfig, WindowEngine, WindowSpec};
use tokio_tungstenite::tungstenite::Message;

const COUNT: u64 = 6000;
const TOKENS: u32 = 50;

fn generator_settings() -> GeneratorSettings {
    GeneratorSettings {
        rate: 2000,
        tokens: TOKENS,
        wallets: 500,
        dup_rate: 0.05,
        disorder: Duration::from_secs(2),
        seed: 7,
        count: COUNT,
    }
}

fn start_standalone(extra: &[(&str, String)]) -> Service {
    let g = generator_settings();
    let mut env = vec![
        ("SWAPSTATS__GENERATOR__RATE", g.rate.to_string()),
        ("SWAPSTATS__GENERATOR__COUNT", g.count.to_string()),
        ("SWAPSTATS__GENERATOR__TOKENS", g.tokens.to_string()),
        ("SWAPSTATS__GENERATOR__WALLETS", g.wallets.to_string()),
        ("SWAPSTATS__GENERATOR__DUP_RATE", g.dup_rate.to_string()),
        ("SWAPSTATS__GENERATOR__DISORDER", "2s".to_string()),
        ("SWAPSTATS__GENERATOR__SEED", g.seed.to_string()),
        ("SWAPSTATS__SHARD__PARTITIONS", "3".to_string()),
    ];
    env.extend(extra.iter().cloned());
    Service::start(&["standalone"], &env)
}

/// Sum of `applied_offset + 1` over partitions: swaps consumed so far.
async fn consumed(service: &Service) -> u64 {
    let (_, body) = get_json(&service.url("/readyz"))
        .await
        .expect("readyz answers");
    body["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| (p["applied_offset"].as_i64().unwrap_or(-1) + 1) as u64)
                .sum()
        })
        .unwrap_or(0)
}

fn close(a: &Value, b: &Value, what: &str) {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => {
            let tol = 1e-9 * x.abs().max(y.abs()).max(1.0);
            assert!((x - y).abs() <= tol, "{what}: {x} vs {y}");
        }
        _ => assert_eq!(a, b, "{what}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_ws_match_the_generated_stream() {
    let mut service = start_standalone(&[]);
    service.wait_ok("/healthz", Duration::from_secs(20)).await;
    let started = swapstats::now_ms();

    // WebSocket: ?token= subscribes at connect; a snapshot, then live updates.
    let (mut ws, _) = tokio_tungstenite::connect_async(service.ws_url("?token=BTC"))
        .await
        .expect("ws connects");
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    let snapshot = next_json(&mut ws).await;
    assert_eq!(
        (snapshot["type"].as_str(), snapshot["token"].as_str()),
        (Some("snapshot"), Some("BTC")),
        "{snapshot}"
    );
    ws.send(Message::text(r#"{"op":"subscribe","tokens":["ETH"]}"#))
        .await
        .expect("send");
    let mut updates = 0;
    let mut eth_snapshot = false;
    while updates < 3 || !eth_snapshot {
        let msg = next_json(&mut ws).await;
        match msg["type"].as_str() {
            Some("update") => {
                assert!(msg["token"] == "BTC" || msg["token"] == "ETH", "{msg}");
                assert!(
                    msg["stats"]["windows"]["5m"]["txns"].as_u64().unwrap_or(0) > 0,
                    "{msg}"
                );
                updates += 1;
            }
            Some("snapshot") => eth_snapshot = msg["token"] == "ETH",
            Some("subscribed") => {}
            other => panic!("unexpected {other:?}: {msg}"),
        }
    }

    // Wait for the whole stream to be applied.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while consumed(&service).await < COUNT {
        assert!(
            std::time::Instant::now() < deadline,
            "stream not applied:\n{}",
            service.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Reference: one engine fed the same seeded stream.
    let mut reference = WindowEngine::new(EngineConfig {
        windows: WindowSpec::defaults(),
        dedup_horizon_ms: 24 * 3600 * 1000,
        retention_ms: 48 * 3600 * 1000,
    });
    let mut generator = SwapGenerator::new(&generator_settings());
    for _ in 0..COUNT {
        let swap = generator.next_swap(started);
        reference.apply(&swap, started);
    }

    let tokens: Vec<String> = (0..TOKENS as usize)
        .map(swapstats::source::generator::token_name)
        .collect();
    let (status, body) = get_json(&service.url(&format!("/stats?tokens={}", tokens.join(","))))
        .await
        .expect("stats");
    assert_eq!(status, 200, "{body}");
    let mut compared = 0;
    for token in &tokens {
        let got = &body[token.as_str()];
        let at = got["updated_at"].as_i64();
        let want = at.and_then(|at| reference.stats(token, at));
        let Some(want) = want else {
            assert!(
                got.is_null(),
                "{token}: service has stats the reference lacks: {got}"
            );
            continue;
        };
        let want = serde_json::to_value(want).expect("serialize");
        for window in ["5m", "1h", "6h", "24h"] {
            for field in [
                "txns",
                "buys",
                "sells",
                "volume_usd",
                "buy_volume_usd",
                "sell_volume_usd",
                "volume_token",
                "unique_wallets",
                "unique_buyers",
                "unique_sellers",
                "price_high",
                "price_low",
            ] {
                close(
                    &got["windows"][window][field],
                    &want["windows"][window][field],
                    &format!("{token} {window} {field}"),
                );
            }
            assert_eq!(
                got["windows"][window]["previous"]["txns"], 0,
                "nothing before the stream"
            );
        }
        compared += 1;
    }
    assert!(compared >= 10, "most tokens saw swaps: {compared}");

    // The single-token form, and the top list.
    let (status, btc) = get_json(&service.url("/stats?token=BTC"))
        .await
        .expect("stats");
    assert_eq!((status, btc["token"].as_str()), (200, Some("BTC")));
    let (status, top) = get_json(&service.url("/stats/top?window=1h&by=txns&limit=3"))
        .await
        .expect("top");
    assert_eq!(status, 200, "{top}");
    assert_eq!(
        top["tokens"][0]["token"], "BTC",
        "the most popular token leads: {top}"
    );
    assert_eq!(top["tokens"].as_array().map(Vec::len), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_requests_get_json_errors() {
    let mut service = start_standalone(&[]);
    service.wait_ok("/healthz", Duration::from_secs(20)).await;
    let long = "x".repeat(200);
    let cases = [
        ("/stats", 400),
        ("/stats?token=", 400),
        ("/stats?token=A&tokens=B", 400),
        ("/stats?tokens=A,,B", 400),
        (&format!("/stats?token={long}") as &str, 400),
        ("/stats?token=NO_SUCH_TOKEN", 404),
        ("/stats?bogus=1", 400),
        ("/stats/top?window=3d", 400),
        ("/stats/top?limit=0", 400),
        ("/stats/top?by=nonsense", 400),
        ("/nowhere", 404),
    ];
    for (path, want) in cases {
        let (status, body) = get_json(&service.url(path)).await.expect("a JSON answer");
        assert_eq!(status, want, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    service.wait_ok("/healthz", Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ws_frames_get_error_frames_and_the_connection_stays() {
    let mut service = start_standalone(&[
        ("SWAPSTATS__WS__MAX_SUBSCRIPTIONS", "3".to_string()),
        ("SWAPSTATS__WS__MAX_MESSAGE_BYTES", "512".to_string()),
    ]);
    service.wait_ok("/healthz", Duration::from_secs(20)).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(service.ws_url(""))
        .await
        .expect("ws connects");
    support::ws::assert_bad_frames_get_errors(&mut ws).await;
    // Still usable afterwards.
    ws.send(Message::text(r#"{"op":"subscribe","tokens":["BTC"]}"#))
        .await
        .expect("send");
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    assert_eq!(next_json(&mut ws).await["type"], "snapshot");
    // A bad ?token= is a 400 before the upgrade.
    assert!(tokio_tungstenite::connect_async(service.ws_url("?token="))
        .await
        .is_err());
    service.wait_ok("/healthz", Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_and_others_keep_going() {
    // The queue holds ~35 coalescing ticks of updates (2000 swaps/s over 50
    // tokens, 10 ms ticks): the reading client survives a loaded machine
    // starving it for a few hundred ms, while the one that never reads still
    // fills it within seconds once its socket buffers are full.
    let mut service = start_standalone(&[
        ("SWAPSTATS__WS__CLIENT_QUEUE", "512".to_string()),
        ("SWAPSTATS__WS__MAX_SUBSCRIPTIONS", "64".to_string()),
        ("SWAPSTATS__WS__COALESCE", "10ms".to_string()),
        ("SWAPSTATS__GENERATOR__COUNT", "0".to_string()),
    ]);
    service.wait_ok("/healthz", Duration::from_secs(20)).await;
    let all: Vec<String> = (0..TOKENS as usize)
        .map(swapstats::source::generator::token_name)
        .collect();
    let subscribe = format!(
        r#"{{"op":"subscribe","tokens":{}}}"#,
        serde_json::to_string(&all).expect("json")
    );

    // The slow client: a tiny receive buffer, subscribes to everything, never reads.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket
        .connect(([127, 0, 0, 1], service.port).into())
        .await
        .expect("connect");
    let (mut slow, _) = tokio_tungstenite::client_async(service.ws_url(""), stream)
        .await
        .expect("handshake");
    slow.send(Message::text(subscribe.clone()))
        .await
        .expect("send");

    let (mut good, _) = tokio_tungstenite::connect_async(service.ws_url(""))
        .await
        .expect("ws connects");
    good.send(Message::text(subscribe)).await.expect("send");

    // The good client reads all along and keeps getting updates while the slow
    // one's queue fills up.
    let mut updates = 0;
    let reading_until = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < reading_until || updates < 20 {
        if next_json(&mut good).await["type"] == "update" {
            updates += 1;
        }
    }
    // The slow one was dropped: its stream ends (close frame or EOF) instead of
    // delivering updates forever.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        let mut frames = 0u64;
        while let Some(Ok(msg)) = slow.next().await {
            if let Message::Close(frame) = msg {
                return (frames, frame.map(|f| f.reason.to_string()));
            }
            frames += 1;
        }
        (frames, None)
    })
    .await
    .expect("the slow client's stream ends");
    if let (_, Some(reason)) = &ended {
        assert!(reason.contains("too slow"), "{reason}");
    }
    assert!(service.is_running(), "process stays up");
    service.wait_ok("/healthz", Duration::from_secs(1)).await;
}
