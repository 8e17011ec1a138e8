//! Shard discovery: which base URL serves which partition, and whether it is
//! ready. Two sources fill the same [`ShardDirectory`]: a static list from the
//! configuration ([`static_list`]) and a Kubernetes EndpointSlice watcher
//! ([`kubernetes`]). Everything else in the router reads only the directory.

pub mod kubernetes;
pub mod slices;
pub mod static_list;

use std::sync::Arc;

use tokio::sync::watch;

pub use kubernetes::{spawn_kubernetes_discovery, KubernetesDiscovery};
pub use slices::{partition_map_from_slices, SliceSet};
pub use static_list::static_directory;

/// Discovery failures (bad configuration); watch errors are retried, not returned.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// `router.shards` does not name one URL per partition.
    #[error("router.shards has {got} URLs but shard.partitions is {partitions}; give one base URL per partition, in partition order")]
    WrongCount { got: usize, partitions: u32 },
    /// A shard URL is not an absolute `http://` or `https://` URL.
    #[error("router.shards[{index}] `{url}` is not an http(s) base URL: {reason}")]
    BadUrl {
        index: usize,
        url: String,
        reason: String,
    },
}

/// One shard as discovery sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardEndpoint {
    /// Base URL without a trailing slash, e.g. `http://10.0.0.7:8080`.
    pub base_url: String,
    /// False when the platform says the shard is not ready (Kubernetes readiness);
    /// a static entry is always true (the health poller decides then).
    pub ready: bool,
    /// The pod (or other) name the partition was derived from, for `/cluster`.
    pub name: Option<String>,
}

/// Partition → shard, for `partitions` partitions; `None` where no shard is known.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionMap {
    shards: Vec<Option<ShardEndpoint>>,
}

impl PartitionMap {
    /// A map with no shard for any of `partitions` partitions.
    pub fn empty(partitions: u32) -> Self {
        Self {
            shards: vec![None; partitions as usize],
        }
    }

    /// Sets (or clears) the shard of `partition`; ignored when out of range.
    pub fn set(&mut self, partition: u32, endpoint: Option<ShardEndpoint>) {
        if let Some(slot) = self.shards.get_mut(partition as usize) {
            *slot = endpoint;
        }
    }

    /// The shard of `partition`, if known.
    pub fn get(&self, partition: u32) -> Option<&ShardEndpoint> {
        self.shards.get(partition as usize).and_then(Option::as_ref)
    }

    /// Number of partitions the map covers.
    pub fn partitions(&self) -> u32 {
        self.shards.len() as u32
    }

    /// `(partition, shard)` for every partition, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, Option<&ShardEndpoint>)> {
        self.shards
            .iter()
            .enumerate()
            .map(|(p, s)| (p as u32, s.as_ref()))
    }
}

/// What discovery currently knows.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryState {
    /// True once a first complete listing was seen (the router is not ready before).
    pub synced: bool,
    /// The current partition map.
    pub map: Arc<PartitionMap>,
}

/// Read side of discovery, cheap to clone; every router part holds one.
#[derive(Debug, Clone)]
pub struct ShardDirectory {
    rx: watch::Receiver<DiscoveryState>,
    partitions: u32,
}

/// Write side of discovery, held by the source that fills the directory.
#[derive(Debug)]
pub struct DirectoryWriter {
    tx: watch::Sender<DiscoveryState>,
    partitions: u32,
}

impl ShardDirectory {
    /// A directory for `partitions` partitions, empty and not synced, and its writer.
    pub fn channel(partitions: u32) -> (DirectoryWriter, ShardDirectory) {
        let state = DiscoveryState {
            synced: false,
            map: Arc::new(PartitionMap::empty(partitions)),
        };
        let (tx, rx) = watch::channel(state);
        (
            DirectoryWriter { tx, partitions },
            ShardDirectory { rx, partitions },
        )
    }

    /// Number of partitions P.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The current state (a cheap clone of an `Arc`).
    pub fn state(&self) -> DiscoveryState {
        self.rx.borrow().clone()
    }

    /// True once the first complete listing arrived.
    pub fn is_synced(&self) -> bool {
        self.rx.borrow().synced
    }

    /// The shard of `partition`, if known.
    pub fn endpoint(&self, partition: u32) -> Option<ShardEndpoint> {
        self.rx.borrow().map.get(partition).cloned()
    }

    /// Waits for the next change; returns false when the source is gone for good.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    /// Waits until the directory satisfies `predicate` (checked now and on every change).
    pub async fn wait_for(&mut self, mut predicate: impl FnMut(&DiscoveryState) -> bool) -> bool {
        self.rx.wait_for(|s| predicate(s)).await.is_ok()
    }
}

impl DirectoryWriter {
    /// Publishes a new map; `synced` marks a complete listing.
    pub fn publish(&self, map: PartitionMap, synced: bool) {
        let synced = synced || self.tx.borrow().synced;
        let map = Arc::new(map);
        self.tx.send_if_modified(|state| {
            let changed = state.synced != synced || *state.map != *map;
            if changed {
                *state = DiscoveryState {
                    synced,
                    map: map.clone(),
                };
            }
            changed
        });
    }

    /// Number of partitions the directory covers.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }
}

/// The ordinal at the end of a StatefulSet pod name: `swapstats-shard-2` → 2.
pub fn pod_ordinal(name: &str) -> Option<u32> {
    let (_, digits) = name.rsplit_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals() {
        assert_eq!(pod_ordinal("swapstats-shard-2"), Some(2));
        assert_eq!(pod_ordinal("a-10"), Some(10));
        assert_eq!(pod_ordinal("shard"), None);
        assert_eq!(pod_ordinal("shard-"), None);
        assert_eq!(pod_ordinal("shard-+1"), None);
        assert_eq!(pod_ordinal("shard-x1"), None);
    }

    #[tokio::test]
    async fn writer_publishes_changes_only() {
        let (writer, mut dir) = ShardDirectory::channel(2);
        assert!(!dir.is_synced());
        let mut map = PartitionMap::empty(2);
        map.set(
            1,
            Some(ShardEndpoint {
                base_url: "http://127.0.0.1:1".into(),
                ready: true,
                name: None,
            }),
        );
        map.set(5, None); // out of range: ignored
        writer.publish(map.clone(), true);
        assert!(dir.changed().await);
        assert!(dir.is_synced());
        assert_eq!(
            dir.endpoint(1).map(|e| e.base_url),
            Some("http://127.0.0.1:1".into())
        );
        assert_eq!(dir.endpoint(0), None);
        writer.publish(map, false);
        assert!(!dir.rx.has_changed().unwrap_or(true), "same map: no change");
        assert!(dir.is_synced(), "synced stays true");
    }
}
