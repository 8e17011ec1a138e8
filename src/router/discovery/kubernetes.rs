//! Kubernetes discovery: a `kube` watcher of the EndpointSlices of the shards'
//! headless Service (`kubernetes.io/service-name=<service>`), folded into a
//! [`SliceSet`] and published as a partition map. The directory is synced after
//! the first complete list; a `410 Gone` makes the watcher re-list, and the new
//! listing replaces the old one atomically. Watch errors back off and retry.

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;

use super::{DirectoryWriter, ShardDirectory, SliceSet};

/// Which Service to watch and how to reach its pods.
#[derive(Debug, Clone)]
pub struct KubernetesDiscovery {
    /// Namespace of the Service; empty = the client's default namespace.
    pub namespace: String,
    /// Name of the shards' headless Service.
    pub service: String,
    /// The shards' HTTP port.
    pub port: u16,
    /// Number of partitions P (pods with an ordinal ≥ P are ignored).
    pub partitions: u32,
}

impl KubernetesDiscovery {
    /// The label selector of the Service's EndpointSlices.
    pub fn label_selector(&self) -> String {
        format!("kubernetes.io/service-name={}", self.service)
    }
}

/// Starts watching on the current runtime and returns the directory it fills.
/// The task runs until the runtime stops.
pub fn spawn_kubernetes_discovery(
    client: kube::Client,
    config: KubernetesDiscovery,
) -> ShardDirectory {
    let (writer, directory) = ShardDirectory::channel(config.partitions);
    tokio::spawn(run_watch(client, config, writer));
    directory
}

async fn run_watch(client: kube::Client, config: KubernetesDiscovery, writer: DirectoryWriter) {
    let namespace = if config.namespace.is_empty() {
        client.default_namespace().to_string()
    } else {
        config.namespace.clone()
    };
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let watch_config = watcher::Config::default().labels(&config.label_selector());
    let mut events = watcher::watcher(api, watch_config)
        .default_backoff()
        .boxed();
    tracing::info!(%namespace, selector = %config.label_selector(), "watching shard EndpointSlices");
    let (partitions, port) = (config.partitions, config.port);
    let mut current = SliceSet::default();
    let mut listing: Option<SliceSet> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listing = Some(SliceSet::default()),
            Ok(Event::InitApply(slice)) => {
                listing
                    .get_or_insert_with(SliceSet::default)
                    .apply(&slice, partitions, port);
            }
            Ok(Event::InitDone) => {
                current = listing.take().unwrap_or_default();
                tracing::info!(slices = current.len(), "shard EndpointSlices listed");
                writer.publish(current.partition_map(partitions), true);
            }
            Ok(Event::Apply(slice)) => {
                current.apply(&slice, partitions, port);
                writer.publish(current.partition_map(partitions), false);
            }
            Ok(Event::Delete(slice)) => {
                current.delete(&slice);
                writer.publish(current.partition_map(partitions), false);
            }
            Err(e) => tracing::warn!(error = %e, "EndpointSlice watch failed; backing off"),
        }
    }
    tracing::error!("EndpointSlice watch ended");
}
