//! EndpointSlices → partition map. A headless Service's endpoints may be spread
//! over several slices; each endpoint names its pod (`targetRef.name`, else
//! `hostname`), whose StatefulSet ordinal is the partition it serves.

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use super::{pod_ordinal, PartitionMap, ShardEndpoint};

/// The slices currently known, by slice name (a manual reflector store that
/// keeps only what the partition map needs).
#[derive(Debug, Clone, Default)]
pub struct SliceSet {
    slices: BTreeMap<String, Vec<Candidate>>,
}

/// One endpoint of one slice that names a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    partition: u32,
    endpoint: ShardEndpoint,
}

impl SliceSet {
    /// Adds or replaces a slice (watch `ADDED`/`MODIFIED`, or a listed slice).
    pub fn apply(&mut self, slice: &EndpointSlice, partitions: u32, port: u16) {
        let Some(name) = slice.metadata.name.clone() else {
            return;
        };
        let ipv6 = slice.address_type == "IPv6";
        let candidates = slice
            .endpoints
            .iter()
            .filter_map(|e| candidate(e, ipv6, partitions, port))
            .collect();
        self.slices.insert(name, candidates);
    }

    /// Removes a slice (watch `DELETED`).
    pub fn delete(&mut self, slice: &EndpointSlice) {
        if let Some(name) = &slice.metadata.name {
            self.slices.remove(name);
        }
    }

    /// Number of slices held.
    pub fn len(&self) -> usize {
        self.slices.len()
    }

    /// True when no slice is held.
    pub fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }

    /// The merged partition map: per partition a ready endpoint if any slice has
    /// one, else a not-ready one (so `/cluster` can show it), else none.
    pub fn partition_map(&self, partitions: u32) -> PartitionMap {
        let mut map = PartitionMap::empty(partitions);
        for candidate in self.slices.values().flatten() {
            let better = match map.get(candidate.partition) {
                None => true,
                Some(current) => candidate.endpoint.ready && !current.ready,
            };
            if better {
                map.set(candidate.partition, Some(candidate.endpoint.clone()));
            }
        }
        map
    }
}

/// The partition map of a complete set of slices.
pub fn partition_map_from_slices(
    slices: &[EndpointSlice],
    partitions: u32,
    port: u16,
) -> PartitionMap {
    let mut set = SliceSet::default();
    for slice in slices {
        set.apply(slice, partitions, port);
    }
    set.partition_map(partitions)
}

fn candidate(endpoint: &Endpoint, ipv6: bool, partitions: u32, port: u16) -> Option<Candidate> {
    let name = endpoint
        .target_ref
        .as_ref()
        .and_then(|r| r.name.clone())
        .or_else(|| endpoint.hostname.clone())?;
    let partition = pod_ordinal(&name).filter(|p| *p < partitions)?;
    let address = endpoint.addresses.first()?;
    let host = if ipv6 && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.clone()
    };
    // Kubernetes: an unset `ready` condition means ready.
    let ready = endpoint
        .conditions
        .as_ref()
        .and_then(|c| c.ready)
        .unwrap_or(true);
    Some(Candidate {
        partition,
        endpoint: ShardEndpoint {
            base_url: format!("http://{host}:{port}"),
            ready,
            name: Some(name),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": { "name": name, "resourceVersion": "1" },
            "addressType": "IPv4",
            "endpoints": endpoints,
        }))
        .expect("a valid EndpointSlice")
    }

    fn url(map: &PartitionMap, p: u32) -> Option<(String, bool)> {
        map.get(p).map(|e| (e.base_url.clone(), e.ready))
    }

    #[test]
    fn merges_slices_by_pod_ordinal() {
        let a = slice(
            "svc-a",
            serde_json::json!([
                { "addresses": ["127.0.0.10"], "conditions": { "ready": true }, "targetRef": { "kind": "Pod", "name": "swapstats-shard-0" } },
                { "addresses": ["127.0.0.12"], "conditions": { "ready": false }, "targetRef": { "kind": "Pod", "name": "swapstats-shard-2" } },
                { "addresses": ["127.0.0.19"], "targetRef": { "kind": "Pod", "name": "swapstats-shard-9" } },
                { "addresses": ["127.0.0.18"], "targetRef": { "kind": "Pod", "name": "no-ordinal" } },
                { "addresses": [], "targetRef": { "kind": "Pod", "name": "swapstats-shard-1" } },
            ]),
        );
        let b = slice(
            "svc-b",
            serde_json::json!([
                { "addresses": ["127.0.0.11"], "hostname": "swapstats-shard-1" },
                { "addresses": ["127.0.0.22"], "conditions": { "ready": true }, "targetRef": { "kind": "Pod", "name": "swapstats-shard-2" } },
            ]),
        );
        let map = partition_map_from_slices(&[a.clone(), b.clone()], 3, 8080);
        assert_eq!(url(&map, 0), Some(("http://127.0.0.10:8080".into(), true)));
        assert_eq!(
            url(&map, 1),
            Some(("http://127.0.0.11:8080".into(), true)),
            "hostname, unset ready = ready"
        );
        assert_eq!(
            url(&map, 2),
            Some(("http://127.0.0.22:8080".into(), true)),
            "ready wins"
        );
        assert_eq!(map.partitions(), 3, "ordinal 9 is out of range");

        let only_a = partition_map_from_slices(&[a], 3, 8080);
        assert_eq!(url(&only_a, 1), None);
        assert_eq!(
            url(&only_a, 2),
            Some(("http://127.0.0.12:8080".into(), false))
        );

        let mut set = SliceSet::default();
        set.apply(&b, 3, 9000);
        assert_eq!(set.len(), 1);
        set.delete(&b);
        assert!(set.is_empty());
        assert_eq!(set.partition_map(3), PartitionMap::empty(3));
    }

    #[test]
    fn ipv6_addresses_get_brackets() {
        let mut s = slice(
            "v6",
            serde_json::json!([{ "addresses": ["fd00::1"], "hostname": "shard-0" }]),
        );
        s.address_type = "IPv6".into();
        let map = partition_map_from_slices(&[s], 1, 8080);
        assert_eq!(url(&map, 0), Some(("http://[fd00::1]:8080".into(), true)));
    }
}
