//! Per-partition shard health, from each shard's `/readyz` (polled) and from
//! failed proxied calls (marked at once). The router sends a partition's reads to
//! its shard only while that shard is not known to be down or catching up; else
//! it answers from the store, so a restarting shard never serves stale numbers.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;

use super::discovery::ShardDirectory;
use super::proxy::ShardClient;
use crate::shard::StopFlag;

/// What the router believes about one shard.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardState {
    /// Not checked yet: requests go to it.
    Unknown,
    /// Its `/readyz` reports the partition ready.
    Ready,
    /// Unreachable, timed out, not ready, or serving another partition.
    Down(String),
}

impl ShardState {
    /// True unless the shard is known to be down.
    pub fn usable(&self) -> bool {
        !matches!(self, ShardState::Down(_))
    }
}

/// The last health observation of one partition's shard.
#[derive(Debug, Clone)]
pub struct PartitionHealth {
    /// The shard the observation is about (a new address starts as `Unknown`).
    pub base_url: String,
    pub state: ShardState,
    /// Whether the shard answered the last check at all.
    pub reachable: bool,
    /// The partition's entry of the shard's `/readyz` (lag, applied offset, ...).
    pub report: Option<Value>,
    /// When it was observed, unix ms.
    pub checked_at_ms: i64,
}

/// Health of every partition's shard; shared by request handlers and the poller.
#[derive(Debug)]
pub struct ShardHealth {
    entries: RwLock<Vec<Option<PartitionHealth>>>,
}

impl ShardHealth {
    /// Nothing known about any of `partitions` shards.
    pub fn new(partitions: u32) -> Self {
        Self {
            entries: RwLock::new(vec![None; partitions as usize]),
        }
    }

    /// The state of `partition`'s shard at `base_url`.
    pub fn state(&self, partition: u32, base_url: &str) -> ShardState {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        match entries.get(partition as usize).and_then(Option::as_ref) {
            Some(h) if h.base_url == base_url => h.state.clone(),
            _ => ShardState::Unknown,
        }
    }

    /// The last observation of `partition`, if any.
    pub fn get(&self, partition: u32) -> Option<PartitionHealth> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(partition as usize).cloned().flatten()
    }

    /// Records an observation.
    pub fn record(&self, partition: u32, health: PartitionHealth) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = entries.get_mut(partition as usize) {
            *slot = Some(health);
        }
    }

    /// Marks a shard down after a failed call (the poller clears it when it recovers).
    pub fn mark_down(&self, partition: u32, base_url: &str, reason: String) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = entries.get_mut(partition as usize) {
            let report = slot
                .as_ref()
                .filter(|h| h.base_url == base_url)
                .and_then(|h| h.report.clone());
            *slot = Some(PartitionHealth {
                base_url: base_url.to_string(),
                state: ShardState::Down(reason),
                reachable: false,
                report,
                checked_at_ms: crate::now_ms(),
            });
        }
    }
}

/// Asks the shard at `base_url` for its `/readyz` and judges `partition`'s entry.
pub async fn check_shard(
    client: &ShardClient,
    base_url: &str,
    partition: u32,
    timeout: Duration,
) -> PartitionHealth {
    let (state, reachable, report) =
        match client.get_within(base_url, "/readyz", &[], timeout).await {
            Err(e) => (ShardState::Down(e.to_string()), false, None),
            Ok(reply) => match reply.json() {
                None => (
                    ShardState::Down(format!("/readyz answered {} without JSON", reply.status)),
                    true,
                    None,
                ),
                Some(body) => {
                    let (state, report) = judge_readyz(&body, partition);
                    (state, true, report)
                }
            },
        };
    PartitionHealth {
        base_url: base_url.to_string(),
        state,
        reachable,
        report,
        checked_at_ms: crate::now_ms(),
    }
}

/// Reads a shard's `/readyz` body: `{"ready":..,"partitions":[{"partition":p,"ready":..,..}]}`.
pub fn judge_readyz(body: &Value, partition: u32) -> (ShardState, Option<Value>) {
    let entries = body["partitions"].as_array().cloned().unwrap_or_default();
    let Some(entry) = entries
        .iter()
        .find(|e| e["partition"].as_u64() == Some(u64::from(partition)))
    else {
        let served: Vec<u64> = entries
            .iter()
            .filter_map(|e| e["partition"].as_u64())
            .collect();
        return (
            ShardState::Down(format!(
                "shard serves partitions {served:?}, not {partition}"
            )),
            None,
        );
    };
    let state = if entry["ready"].as_bool() == Some(true) {
        ShardState::Ready
    } else {
        let why = match entry["last_error"].as_str() {
            Some(error) => format!("not ready: {error}"),
            None => format!("not ready (lag {})", entry["lag"]),
        };
        ShardState::Down(why)
    };
    (state, Some(entry.clone()))
}

/// Polls every known shard's `/readyz` every `interval` until `stop` is set.
pub fn spawn_health_poller(
    health: Arc<ShardHealth>,
    directory: ShardDirectory,
    client: ShardClient,
    interval: Duration,
    stop: StopFlag,
) {
    let timeout = client.timeout().max(Duration::from_secs(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.is_set() {
            tick.tick().await;
            let map = directory.state().map;
            let checks = map.iter().filter_map(|(p, endpoint)| {
                let endpoint = endpoint?.clone();
                let client = client.clone();
                Some(async move {
                    (
                        p,
                        check_shard(&client, &endpoint.base_url, p, timeout).await,
                    )
                })
            });
            for (p, observed) in join_all(checks).await {
                let before = health.get(p).map(|h| h.state);
                if before.as_ref() != Some(&observed.state) {
                    tracing::info!(partition = p, shard = %observed.base_url, state = ?observed.state, "shard health changed");
                }
                health.record(p, observed);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn readyz_judgement() {
        let body = json!({"ready": false, "partitions": [
            {"partition": 1, "ready": true, "lag": 0, "applied_offset": 9, "tokens": 3, "last_error": null},
            {"partition": 2, "ready": false, "lag": 5000, "applied_offset": 1, "tokens": 1, "last_error": null},
            {"partition": 3, "ready": false, "lag": 0, "applied_offset": 1, "tokens": 1, "last_error": "redis down"},
        ]});
        assert_eq!(judge_readyz(&body, 1).0, ShardState::Ready);
        assert_eq!(
            judge_readyz(&body, 1)
                .1
                .map(|r| r["applied_offset"].clone()),
            Some(json!(9))
        );
        assert!(matches!(judge_readyz(&body, 2).0, ShardState::Down(r) if r.contains("5000")));
        assert!(
            matches!(judge_readyz(&body, 3).0, ShardState::Down(r) if r.contains("redis down"))
        );
        assert!(matches!(judge_readyz(&body, 0).0, ShardState::Down(r) if r.contains("[1, 2, 3]")));
    }

    #[test]
    fn states_follow_the_address() {
        let health = ShardHealth::new(2);
        assert_eq!(health.state(0, "http://a"), ShardState::Unknown);
        health.mark_down(0, "http://a", "refused".into());
        assert!(!health.state(0, "http://a").usable());
        assert_eq!(
            health.state(0, "http://b"),
            ShardState::Unknown,
            "a new address starts unknown"
        );
        health.mark_down(7, "http://a", "out of range".into());
        assert!(health.get(7).is_none());
    }
}
