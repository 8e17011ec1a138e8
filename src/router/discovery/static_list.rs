//! Static discovery: `router.shards` lists one shard base URL per partition, in
//! partition order. The directory is complete (synced) from the start; whether a
//! listed shard is up is the health poller's business.

use super::{DirectoryWriter, DiscoveryError, PartitionMap, ShardDirectory, ShardEndpoint};

/// Validates `urls` and builds a synced directory over `partitions` partitions.
///
/// The returned writer must be kept alive only if the caller wants to publish
/// later changes; the directory keeps its last state either way.
pub fn static_directory(
    urls: &[String],
    partitions: u32,
) -> Result<(DirectoryWriter, ShardDirectory), DiscoveryError> {
    if urls.len() != partitions as usize {
        return Err(DiscoveryError::WrongCount {
            got: urls.len(),
            partitions,
        });
    }
    let mut map = PartitionMap::empty(partitions);
    for (index, url) in urls.iter().enumerate() {
        let base_url = normalize_base_url(url).map_err(|reason| DiscoveryError::BadUrl {
            index,
            url: url.clone(),
            reason,
        })?;
        map.set(
            index as u32,
            Some(ShardEndpoint {
                base_url,
                ready: true,
                name: None,
            }),
        );
    }
    let (writer, directory) = ShardDirectory::channel(partitions);
    writer.publish(map, true);
    Ok((writer, directory))
}

/// `http://host:port/` → `http://host:port`; rejects non-http(s), paths, queries.
fn normalize_base_url(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| e.to_string())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("scheme `{}` is not http or https", parsed.scheme()));
    }
    if parsed.host_str().is_none() {
        return Err("no host".into());
    }
    if parsed.path() != "/" || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("give only scheme, host and port".into());
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_url_per_partition() {
        let (_w, dir) =
            static_directory(&urls(&["http://127.0.0.1:81/", " http://localhost:82"]), 2)
                .expect("valid");
        assert!(dir.is_synced());
        assert_eq!(
            dir.endpoint(0).map(|e| e.base_url),
            Some("http://127.0.0.1:81".into())
        );
        assert_eq!(
            dir.endpoint(1).map(|e| e.base_url),
            Some("http://localhost:82".into())
        );
    }

    #[test]
    fn rejects_bad_lists() {
        assert!(matches!(
            static_directory(&urls(&["http://a:1"]), 2),
            Err(DiscoveryError::WrongCount { got: 1, .. })
        ));
        for bad in [
            "a:1",
            "ftp://a:1",
            "http://a:1/stats",
            "http://a:1/?x=1",
            "",
        ] {
            let err = static_directory(&urls(&[bad]), 1).expect_err(bad);
            assert!(err.to_string().contains("router.shards[0]"), "{err}");
        }
    }
}
