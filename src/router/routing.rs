//! Which shard answers for a partition right now: discovery says where it is
//! (and Kubernetes whether it is ready), health says whether it is usable.

use std::sync::Arc;

use super::discovery::ShardDirectory;
use super::health::ShardHealth;

/// Discovery plus health: the routing decision shared by HTTP and WS.
#[derive(Debug, Clone)]
pub struct Routing {
    pub directory: ShardDirectory,
    pub health: Arc<ShardHealth>,
    /// With a fallback, a shard that is not ready is skipped; without one, any
    /// known shard is still tried (better than no answer).
    pub has_fallback: bool,
}

impl Routing {
    /// Routing over `directory` with fresh health.
    pub fn new(directory: ShardDirectory, has_fallback: bool) -> Self {
        let health = Arc::new(ShardHealth::new(directory.partitions()));
        Self {
            directory,
            health,
            has_fallback,
        }
    }

    /// Number of partitions P.
    pub fn partitions(&self) -> u32 {
        self.directory.partitions()
    }

    /// Base URL of the shard to ask for `partition`, or `None` to go to the fallback.
    pub fn shard_for(&self, partition: u32) -> Option<String> {
        let endpoint = self.directory.endpoint(partition)?;
        if !self.has_fallback {
            return Some(endpoint.base_url);
        }
        let usable = endpoint.ready && self.health.state(partition, &endpoint.base_url).usable();
        usable.then_some(endpoint.base_url)
    }

    /// Records a failed call so the next requests skip the shard until it recovers.
    pub fn mark_down(&self, partition: u32, base_url: &str, reason: String) {
        self.health.mark_down(partition, base_url, reason);
    }
}
