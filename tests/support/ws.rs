//! WebSocket client helpers shared by the shard and router tests.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// A client connection made with `tokio_tungstenite::connect_async`.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON text message (pings and pongs skipped); panics with the close
/// frame if the server closes, or after 10 s of silence.
pub async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a WS message within 10 s")
            .expect("stream open")
            .expect("no WS error");
        match msg {
            Message::Text(text) => return serde_json::from_str(&text).expect("server sends JSON"),
            Message::Close(frame) => panic!("server closed the socket: {frame:?}"),
            _ => {}
        }
    }
}

/// Sends every kind of bad frame (against `ws.max_subscriptions = 3` and
/// `ws.max_message_bytes = 512`): each gets an error frame, and the connection
/// still answers a ping afterwards.
pub async fn assert_bad_frames_get_errors(ws: &mut Ws) {
    let big = format!(r#"{{"op":"subscribe","tokens":["{}"]}}"#, "A".repeat(600));
    for bad in [
        "not json".to_string(),
        r#"{"op":"dance"}"#.to_string(),
        r#"{"op":"subscribe","tokens":[]}"#.to_string(),
        r#"{"op":"subscribe","tokens":[""]}"#.to_string(),
        r#"{"op":"subscribe","tokens":["A","B","C","D"]}"#.to_string(),
        big,
    ] {
        ws.send(Message::text(bad.clone())).await.expect("send");
        let reply = next_json(ws).await;
        assert_eq!(reply["type"], "error", "{bad} → {reply}");
    }
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    assert_eq!(next_json(ws).await["type"], "error");
    ws.send(Message::text(r#"{"op":"ping"}"#))
        .await
        .expect("send");
    assert_eq!(next_json(ws).await["type"], "pong");
}
