//! Upstream WebSockets: at most one connection per shard, carrying exactly the
//! tokens that at least one router client wants. The hub's interest feed says
//! when a token gains its first or loses its last subscriber; a dispatcher sends
//! that to the link of the token's partition. Links forward the shards' `update`
//! messages to the router's clients unchanged, and on every (re)connect
//! resubscribe and forward the fresh snapshots.

mod link;
mod message;

use std::time::Duration;

use tokio::sync::mpsc;

use super::routing::Routing;
use crate::api::ws::{Hub, InterestChange};
use crate::partition::partition_for;
use crate::shard::StopFlag;

pub use message::{subscribe_messages, UpstreamMessage};

/// Timing of the upstream links.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Deadline of a connect + handshake.
    pub connect_timeout: Duration,
    /// The router pings each upstream this often; silence for twice as long
    /// (plus a margin) drops the connection.
    pub ping_interval: Duration,
    /// First and largest delay between reconnect attempts.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Most tokens per upstream subscribe/unsubscribe message.
    pub tokens_per_message: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            ping_interval: Duration::from_secs(30),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            tokens_per_message: 200,
        }
    }
}

/// What a link is told: a token of its partition became wanted or unwanted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LinkCommand {
    Want(String),
    Unwant(String),
}

/// Starts one link per partition and the dispatcher of `interest` (from
/// [`Hub::with_interest_feed`]); they run until `stop` is set or the hub is gone.
pub fn spawn_upstream_links(
    hub: Hub,
    mut interest: mpsc::UnboundedReceiver<InterestChange>,
    routing: Routing,
    config: UpstreamConfig,
    stop: StopFlag,
) {
    let partitions = routing.partitions();
    let links: Vec<mpsc::UnboundedSender<LinkCommand>> = (0..partitions)
        .map(|partition| {
            let (tx, rx) = mpsc::unbounded_channel();
            let link = link::Link::new(
                partition,
                hub.clone(),
                routing.clone(),
                config.clone(),
                rx,
                stop.clone(),
            );
            tokio::spawn(link.run());
            tx
        })
        .collect();
    tokio::spawn(async move {
        while let Some(change) = interest.recv().await {
            let (token, command) = match change {
                InterestChange::Wanted(t) => (t.clone(), LinkCommand::Want(t)),
                InterestChange::Unwanted(t) => (t.clone(), LinkCommand::Unwant(t)),
            };
            let partition = partition_for(&token, partitions) as usize;
            if let Some(link) = links.get(partition) {
                let _ = link.send(command);
            }
        }
    });
}
