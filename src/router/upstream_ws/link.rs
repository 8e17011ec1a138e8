//! One partition's upstream WebSocket: connects while tokens of the partition
//! are wanted and its shard is usable, keeps the shard's subscriptions equal to
//! the wanted set, forwards updates, and reconnects with backoff.

use std::collections::HashSet;

use axum::extract::ws::Utf8Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout, Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::message::{subscribe_messages, UpstreamMessage};
use super::{LinkCommand, UpstreamConfig};
use crate::api::ws::Hub;
use crate::router::routing::Routing;
use crate::shard::StopFlag;

type Upstream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How often a disconnected link re-checks for interest and a usable shard.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Why a connected session ended.
enum Ended {
    /// The connection broke, went silent, or the shard moved: reconnect.
    Lost(String),
    /// The router is stopping.
    Stop,
}

pub(super) struct Link {
    partition: u32,
    hub: Hub,
    routing: Routing,
    config: UpstreamConfig,
    commands: mpsc::UnboundedReceiver<LinkCommand>,
    stop: StopFlag,
    /// Tokens of this partition some client wants.
    wanted: HashSet<String>,
}

impl Link {
    pub(super) fn new(
        partition: u32,
        hub: Hub,
        routing: Routing,
        config: UpstreamConfig,
        commands: mpsc::UnboundedReceiver<LinkCommand>,
        stop: StopFlag,
    ) -> Self {
        Self {
            partition,
            hub,
            routing,
            config,
            commands,
            stop,
            wanted: HashSet::new(),
        }
    }

    pub(super) async fn run(mut self) {
        let mut backoff = self.config.backoff_min;
        while !self.stop.is_set() {
            let Some(base) = self.wait_for_target().await else {
                return;
            };
            let url = ws_url(&base);
            match timeout(
                self.config.connect_timeout,
                tokio_tungstenite::connect_async(&url),
            )
            .await
            {
                Ok(Ok((socket, _))) => {
                    tracing::info!(partition = self.partition, %url, tokens = self.wanted.len(), "upstream WS connected");
                    backoff = self.config.backoff_min;
                    match self.session(socket, &base).await {
                        Ended::Stop => return,
                        Ended::Lost(why) => {
                            tracing::warn!(partition = self.partition, %url, reason = %why, "upstream WS lost; reconnecting");
                        }
                    }
                }
                Ok(Err(e)) => self.connect_failed(&base, e.to_string()),
                Err(_) => self.connect_failed(
                    &base,
                    format!("no handshake within {:?}", self.config.connect_timeout),
                ),
            }
            if !self.pause(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
    }

    fn connect_failed(&mut self, base: &str, why: String) {
        tracing::debug!(partition = self.partition, shard = %base, reason = %why, "upstream WS connect failed");
        self.routing
            .mark_down(self.partition, base, format!("WS connect: {why}"));
    }

    /// Applies a command while no connection is open.
    fn note(&mut self, command: LinkCommand) {
        match command {
            LinkCommand::Want(t) => {
                self.wanted.insert(t);
            }
            LinkCommand::Unwant(t) => {
                self.wanted.remove(&t);
            }
        }
    }

    /// Sleeps `delay` while keeping the wanted set current; false when the hub is gone.
    async fn pause(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(c) => self.note(c),
                    None => return false,
                },
                _ = tokio::time::sleep_until(until) => return !self.stop.is_set(),
            }
        }
    }

    /// Waits until some token is wanted and the partition has a usable shard.
    async fn wait_for_target(&mut self) -> Option<String> {
        loop {
            if self.stop.is_set() {
                return None;
            }
            if !self.wanted.is_empty() {
                if let Some(base) = self.routing.shard_for(self.partition) {
                    return Some(base);
                }
            }
            if !self.pause(IDLE_POLL).await {
                return None;
            }
        }
    }

    async fn session(&mut self, socket: Upstream, base: &str) -> Ended {
        let (mut sink, mut stream) = socket.split();
        // Every token wanted before this connection existed may have missed
        // updates since its clients' snapshot (taken over HTTP, or before a
        // reconnect): the shard's fresh snapshot of it goes to them.
        let mut resync: HashSet<String> = self.wanted.clone();
        let all: Vec<String> = self.wanted.iter().cloned().collect();
        for text in subscribe_messages(&all, true, self.config.tokens_per_message) {
            if let Err(e) = sink.send(Message::text(text)).await {
                return Ended::Lost(format!("subscribing: {e}"));
            }
        }
        let silence = self.config.ping_interval * 2 + Duration::from_secs(5);
        let mut ping = tokio::time::interval_at(
            Instant::now() + self.config.ping_interval,
            self.config.ping_interval,
        );
        let mut check = tokio::time::interval(Duration::from_millis(500));
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                command = self.commands.recv() => {
                    let Some(command) = command else { return Ended::Stop };
                    let (want, unwant) = self.drain(command);
                    for text in subscribe_messages(&want, true, self.config.tokens_per_message)
                        .into_iter()
                        .chain(subscribe_messages(&unwant, false, self.config.tokens_per_message))
                    {
                        if let Err(e) = sink.send(Message::text(text)).await {
                            return Ended::Lost(format!("sending a subscription: {e}"));
                        }
                    }
                }
                frame = stream.next() => {
                    last_heard = Instant::now();
                    match frame {
                        Some(Ok(Message::Text(text))) => self.forward(text.as_str(), &mut resync),
                        Some(Ok(Message::Close(frame))) => return Ended::Lost(format!("closed by the shard: {frame:?}")),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Ended::Lost(e.to_string()),
                        None => return Ended::Lost("connection ended".into()),
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > silence {
                        return Ended::Lost(format!("nothing heard for {silence:?}"));
                    }
                    if let Err(e) = sink.send(Message::Ping(Default::default())).await {
                        return Ended::Lost(format!("ping: {e}"));
                    }
                }
                _ = check.tick() => {
                    if self.stop.is_set() {
                        return Ended::Stop;
                    }
                    let current = self.routing.directory.endpoint(self.partition).map(|e| e.base_url);
                    if current.as_deref() != Some(base) {
                        return Ended::Lost(format!("partition moved to {current:?}"));
                    }
                }
            }
        }
    }

    /// Applies `first` and every queued command; returns the net tokens to
    /// subscribe and unsubscribe upstream.
    fn drain(&mut self, first: LinkCommand) -> (Vec<String>, Vec<String>) {
        let before = self.wanted.clone();
        self.note(first);
        while let Ok(command) = self.commands.try_recv() {
            self.note(command);
        }
        let want = self.wanted.difference(&before).cloned().collect();
        let unwant = before.difference(&self.wanted).cloned().collect();
        (want, unwant)
    }

    /// Sends a shard's message on to the router's clients.
    fn forward(&self, text: &str, resync: &mut HashSet<String>) {
        let Some(message) = UpstreamMessage::parse(text) else {
            tracing::debug!(
                partition = self.partition,
                "ignoring a non-protocol upstream frame"
            );
            return;
        };
        match (message.kind.as_str(), message.token) {
            ("update", Some(token)) => {
                self.hub.publish(&token, Utf8Bytes::from(text));
            }
            // On a new connection, the shard's snapshot replaces what clients may
            // have missed; later subscribes got their snapshot from the router.
            ("snapshot", Some(token)) if resync.remove(&token) => {
                self.hub.publish(&token, Utf8Bytes::from(text));
            }
            ("error", _) => {
                tracing::warn!(partition = self.partition, error = ?message.error, "shard refused an upstream request");
            }
            _ => {}
        }
    }
}

/// `http://host:port` → `ws://host:port/ws` (`https` → `wss`).
pub(super) fn ws_url(base_url: &str) -> String {
    let rest = base_url
        .strip_prefix("https://")
        .map(|r| format!("wss://{r}"))
        .or_else(|| {
            base_url
                .strip_prefix("http://")
                .map(|r| format!("ws://{r}"))
        })
        .unwrap_or_else(|| base_url.to_string());
    format!("{rest}/ws")
}

#[cfg(test)]
mod tests {
    use super::ws_url;

    #[test]
    fn ws_urls() {
        assert_eq!(ws_url("http://127.0.0.1:8080"), "ws://127.0.0.1:8080/ws");
        assert_eq!(ws_url("https://h:1"), "wss://h:1/ws");
    }
}
