//! Turns "token changed" marks into WS updates, at most one per token per
//! coalesce interval; the first change after a quiet period goes out at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tokio::time::Instant;

use super::hub::Hub;
use super::protocol::ServerMessage;
use crate::shard::{ChangeFeed, LocalShards, StopFlag};

/// Runs until `stop` is set: publishes updates of changed, subscribed tokens.
pub async fn run_coalescer(
    feed: Arc<ChangeFeed>,
    hub: Hub,
    shards: Arc<LocalShards>,
    interval: Duration,
    stop: StopFlag,
) {
    let mut last_sent: HashMap<String, Instant> = HashMap::new();
    let mut pending: HashMap<String, Instant> = HashMap::new();
    let mut last_cleanup = Instant::now();
    while !stop.is_set() {
        let wake = pending
            .values()
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(500));
        tokio::select! {
            _ = feed.changed() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        for token in feed.take() {
            if !hub.is_wanted(&token) {
                continue;
            }
            match last_sent.get(&token) {
                Some(sent) if now.duration_since(*sent) < interval => {
                    pending.entry(token).or_insert(*sent + interval);
                }
                _ => {
                    publish(&hub, &shards, &token);
                    last_sent.insert(token, now);
                }
            }
        }
        let due: Vec<String> = pending
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, _)| t.clone())
            .collect();
        for token in due {
            pending.remove(&token);
            publish(&hub, &shards, &token);
            last_sent.insert(token, now);
        }
        if now.duration_since(last_cleanup) > Duration::from_secs(10) {
            last_sent.retain(|_, sent| now.duration_since(*sent) < interval);
            last_cleanup = now;
        }
    }
}

fn publish(hub: &Hub, shards: &LocalShards, token: &str) {
    let Some(stats) = shards.stats(token, crate::now_ms()) else {
        return;
    };
    let Ok(stats) = serde_json::to_value(&stats) else {
        return;
    };
    let message = ServerMessage::Update {
        token: token.to_string(),
        stats,
    };
    hub.publish(token, Utf8Bytes::from(message.to_text()));
}
