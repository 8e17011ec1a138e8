//! One WebSocket connection: reads client messages, writes queued messages,
//! pings, and closes with a reason when the client is too slow or silent.
//!
//! Two paths lead to the socket: replies to the client's own requests
//! (snapshots, acks, errors) go through a small channel the session awaits, so
//! a large subscribe never counts against the push queue; pushed updates go
//! through the hub's bounded queue, whose overflow closes the client.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use axum::extract::WebSocketUpgrade;
use axum::response::{IntoResponse, Response};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};

use super::hub::{ClientId, Hub};
use super::protocol::{ClientMessage, ServerMessage};
use crate::api::params::validate_token;
use crate::config::WsSettings;

/// Close code for policy violations (too slow, no pong).
const CLOSE_POLICY: u16 = 1008;

/// Replies in flight to the writer; the reading side waits when it is full.
const REPLY_QUEUE: usize = 64;

/// Produces the snapshot sent when a client subscribes to a token.
pub trait SnapshotProvider: Send + Sync + 'static {
    /// The token's current stats as JSON, or `None` when it has none.
    fn snapshot<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<serde_json::Value>> + Send + 'a>>;
}

/// Answers a `/ws` upgrade request: a valid `?token=` becomes the first
/// subscription, a bad one a 400; frames are limited to a few times
/// `ws.max_message_bytes` (larger client messages get an error frame).
pub fn accept_upgrade(
    upgrade: WebSocketUpgrade,
    params: &HashMap<String, String>,
    hub: Hub,
    snapshots: Arc<dyn SnapshotProvider>,
    settings: WsSettings,
) -> Response {
    let initial: Vec<String> = match params.get("token") {
        Some(token) => match validate_token(token) {
            Ok(()) => vec![token.clone()],
            Err(e) => return e.into_response(),
        },
        None => Vec::new(),
    };
    let limit = settings.max_message_bytes.saturating_mul(4).max(1024);
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| run_session(socket, hub, snapshots, settings, initial))
}

/// Runs one connection until it closes. `initial` are tokens from `?token=`.
pub async fn run_session(
    socket: WebSocket,
    hub: Hub,
    snapshots: Arc<dyn SnapshotProvider>,
    settings: WsSettings,
    initial: Vec<String>,
) {
    let channels = hub.register();
    let id = channels.id;
    let (mut sink, mut stream) = socket.split();
    let pong_seen = Arc::new(AtomicBool::new(true));
    let mut queue = channels.queue;
    let mut kicked = channels.kicked;
    let (replies, mut reply_queue) = tokio::sync::mpsc::channel::<Utf8Bytes>(REPLY_QUEUE);
    let ping_interval = settings.ping_interval;
    let writer_pong = pong_seen.clone();
    let mut writer = tokio::spawn(async move {
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
        let close = |reason: String| {
            Message::Close(Some(CloseFrame {
                code: CLOSE_POLICY,
                reason: reason.into(),
            }))
        };
        loop {
            tokio::select! {
                biased;
                reason = &mut kicked => {
                    if let Ok(reason) = reason {
                        let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close(reason))).await;
                    }
                    break;
                }
                // Replies first: a snapshot goes out before updates queued after it.
                Some(text) = reply_queue.recv() => {
                    if !write_text(&mut sink, text, &mut kicked, ping_interval).await { break }
                }
                next = queue.recv() => {
                    let Some(text) = next else { break };
                    if !write_text(&mut sink, text, &mut kicked, ping_interval).await { break }
                }
                _ = ping.tick() => {
                    if !writer_pong.swap(false, Ordering::Relaxed) {
                        let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close("no pong within the ping interval".into()))).await;
                        break;
                    }
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        break;
                    }
                }
            }
        }
    });

    let session = Session {
        id,
        hub: hub.clone(),
        replies,
        snapshots,
        max_message_bytes: settings.max_message_bytes,
    };
    if !initial.is_empty() {
        session.subscribe(initial).await;
    }
    loop {
        tokio::select! {
            _ = &mut writer => break,
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(text))) => session.handle_text(text.as_str()).await,
                Some(Ok(Message::Binary(_))) => session.error("binary frames are not supported; send JSON text").await,
                Some(Ok(Message::Pong(_))) => pong_seen.store(true, Ordering::Relaxed),
                Some(Ok(Message::Ping(_))) => {}
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            },
        }
    }
    hub.unregister(id);
    writer.abort();
}

/// Writes one text frame; false when the socket failed, the client was kicked,
/// or the frame could not be written within `limit` (a client that stopped reading).
async fn write_text(
    sink: &mut SplitSink<WebSocket, Message>,
    text: Utf8Bytes,
    kicked: &mut tokio::sync::oneshot::Receiver<String>,
    limit: Duration,
) -> bool {
    tokio::select! {
        sent = sink.send(Message::Text(text)) => sent.is_ok(),
        _ = kicked => false,
        _ = tokio::time::sleep(limit) => false,
    }
}

struct Session {
    id: ClientId,
    hub: Hub,
    replies: tokio::sync::mpsc::Sender<Utf8Bytes>,
    snapshots: Arc<dyn SnapshotProvider>,
    max_message_bytes: usize,
}

impl Session {
    /// Sends a reply to the client's request; waits while the writer is behind.
    async fn send(&self, message: &ServerMessage) {
        // An error means the writer has ended: the session is closing anyway.
        let _ = self.replies.send(Utf8Bytes::from(message.to_text())).await;
    }

    async fn error(&self, error: impl Into<String>) {
        self.send(&ServerMessage::Error {
            error: error.into(),
        })
        .await;
    }

    async fn handle_text(&self, text: &str) {
        if text.len() > self.max_message_bytes {
            return self
                .error(format!(
                    "message larger than {} bytes",
                    self.max_message_bytes
                ))
                .await;
        }
        match serde_json::from_str::<ClientMessage>(text) {
            Ok(ClientMessage::Subscribe { tokens }) => self.subscribe(tokens).await,
            Ok(ClientMessage::Unsubscribe { tokens }) => {
                let removed = self.hub.unsubscribe(self.id, &tokens);
                self.send(&ServerMessage::Unsubscribed { tokens: removed })
                    .await;
            }
            Ok(ClientMessage::Ping) => self.send(&ServerMessage::Pong).await,
            Err(e) => {
                self.error(format!(
                    "bad message ({e}); expected {{\"op\":\"subscribe\",\"tokens\":[...]}}, unsubscribe or ping"
                ))
                .await
            }
        }
    }

    async fn subscribe(&self, tokens: Vec<String>) {
        if tokens.is_empty() {
            return self.error("`tokens` must not be empty").await;
        }
        if let Some(Err(e)) = tokens
            .iter()
            .map(|t| validate_token(t))
            .find(Result::is_err)
        {
            return self.error(e.to_string()).await;
        }
        match self.hub.subscribe(self.id, &tokens) {
            Err(e) => self.error(e.to_string()).await,
            Ok(fresh) => {
                self.send(&ServerMessage::Subscribed {
                    tokens: fresh.clone(),
                })
                .await;
                for token in fresh {
                    let stats = self.snapshots.snapshot(&token).await;
                    self.send(&ServerMessage::Snapshot { token, stats }).await;
                }
            }
        }
    }
}
