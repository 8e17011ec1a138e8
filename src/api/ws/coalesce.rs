//! Turns "token changed" marks into WS updates, at most one per token per
//! coalesce interval; the first change after a quiet period goes out at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use opentelemetry::trace::SpanContext;
use tokio::time::Instant;
use tracing::Span;

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
    // Keyed by the engine's own token names (shared, not copied).
    let mut last_sent: HashMap<Arc<str>, Instant> = HashMap::new();
    let mut pending: HashMap<Arc<str>, Instant> = HashMap::new();
    // Trace context of the latest batch behind a pending token (tracing export only).
    let mut pending_traces: HashMap<Arc<str>, SpanContext> = HashMap::new();
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
        // Published together below: their stats are read in one engine hold
        // per partition, not one wait per token while a batch applies.
        let mut publishing: Vec<(Arc<str>, Option<SpanContext>)> = Vec::new();
        for (token, trace) in feed.take_traced() {
            if !hub.is_wanted(&token) {
                continue;
            }
            match last_sent.get(&token) {
                Some(sent) if now.duration_since(*sent) < interval => {
                    if let Some(trace) = trace {
                        pending_traces.insert(token.clone(), trace);
                    }
                    pending.entry(token).or_insert(*sent + interval);
                }
                _ => {
                    last_sent.insert(token.clone(), now);
                    publishing.push((token, trace));
                }
            }
        }
        let due: Vec<Arc<str>> = pending
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, _)| t.clone())
            .collect();
        for token in due {
            pending.remove(&token);
            let trace = if pending_traces.is_empty() {
                None
            } else {
                pending_traces.remove(&token)
            };
            last_sent.insert(token.clone(), now);
            publishing.push((token, trace));
        }
        publish(&hub, &shards, publishing).await;
        if now.duration_since(last_cleanup) > Duration::from_secs(10) {
            last_sent.retain(|_, sent| now.duration_since(*sent) < interval);
            last_cleanup = now;
        }
    }
}

/// Pushes the stats of `tokens` to their subscribers. A token with a trace
/// (the sampled batch that changed it) is pushed inside a `ws_push` span that
/// continues the batch's trace.
async fn publish(hub: &Hub, shards: &LocalShards, tokens: Vec<(Arc<str>, Option<SpanContext>)>) {
    if tokens.is_empty() {
        return;
    }
    let names: Vec<&Arc<str>> = tokens.iter().map(|(token, _)| token).collect();
    let Ok(answers) = shards.stats_of(&names, crate::now_ms()).await else {
        return;
    };
    for ((token, trace), stats) in tokens.iter().zip(answers) {
        let span = match trace.as_ref().filter(|t| t.is_sampled()) {
            Some(parent) => {
                let token = &**token;
                let span = tracing::info_span!("ws_push", token, clients = tracing::field::Empty);
                crate::telemetry::set_parent(&span, parent);
                span
            }
            None => Span::none(),
        };
        let _entered = span.enter();
        let Some(Ok(stats)) = stats.map(|s| serde_json::to_value(&s)) else {
            continue;
        };
        let message = ServerMessage::Update {
            token: token.to_string(),
            stats,
        };
        let clients = hub.publish(token, Utf8Bytes::from(message.to_text()));
        span.record("clients", clients);
    }
}
