//! Pure helpers of scatter-gather: tokens grouped by owning partition, answers
//! tagged with where they came from, and per-shard top lists merged.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::partition::partition_for;
use crate::shard::merge_top;
use crate::window::TopEntry;

/// Where an answer came from; added to stats objects as `"source"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The owning shard's memory.
    Shard,
    /// The store (shard down, not ready or too slow).
    Redis,
}

impl Source {
    /// The `"source"` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Shard => "shard",
            Source::Redis => "redis",
        }
    }
}

/// Tokens grouped by the partition that owns them, each group in request order.
pub fn group_by_partition(tokens: &[String], partitions: u32) -> BTreeMap<u32, Vec<String>> {
    let mut groups: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for token in tokens {
        groups
            .entry(partition_for(token, partitions))
            .or_default()
            .push(token.clone());
    }
    groups
}

/// Adds `"source"` to a stats object; leaves `null` (unknown token) alone.
pub fn tag_source(value: &mut Value, source: Source) {
    if let Value::Object(map) = value {
        map.insert("source".into(), Value::from(source.as_str()));
    }
}

/// Adds `"source"` to a JSON object given as bytes without re-encoding it:
/// `{"token":..}` → `{"source":"shard","token":..}`. `None` if it is not an object.
pub fn splice_source(body: &[u8], source: Source) -> Option<Vec<u8>> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body.get(start) != Some(&b'{') {
        return None;
    }
    let rest = &body[start + 1..];
    let empty = rest.iter().all(|b| b.is_ascii_whitespace() || *b == b'}');
    let tag = format!(
        "{{\"source\":\"{}\"{}",
        source.as_str(),
        if empty { "" } else { "," }
    );
    let mut out = Vec::with_capacity(body.len() + tag.len());
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(rest);
    Some(out)
}

/// Reads the `tokens` list of a shard's `/stats/top` answer.
pub fn parse_top(body: &[u8]) -> Result<Vec<TopEntry>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct TopBody {
        tokens: Vec<TopEntry>,
    }
    serde_json::from_slice::<TopBody>(body).map(|b| b.tokens)
}

/// Merges the shards' top lists into the cluster's top `limit`.
pub fn merge_top_lists(lists: Vec<Vec<TopEntry>>, limit: usize) -> Vec<TopEntry> {
    merge_top(lists.into_iter().flatten().collect(), limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::WindowStats;

    #[test]
    fn groups_keep_request_order_and_cover_all_tokens() {
        let tokens: Vec<String> = (0..40).map(|i| format!("T{i}")).collect();
        let groups = group_by_partition(&tokens, 3);
        assert!(groups.keys().all(|p| *p < 3));
        assert_eq!(groups.values().map(Vec::len).sum::<usize>(), 40);
        for (p, group) in &groups {
            assert!(group.iter().all(|t| partition_for(t, 3) == *p));
            let positions: Vec<usize> = group
                .iter()
                .map(|t| tokens.iter().position(|x| x == t).unwrap())
                .collect();
            assert!(positions.windows(2).all(|w| w[0] < w[1]), "request order");
        }
        assert_eq!(group_by_partition(&tokens, 1).len(), 1);
        assert!(group_by_partition(&[], 3).is_empty());
    }

    #[test]
    fn source_tags() {
        let spliced = splice_source(br#" {"token":"BTC","n":1}"#, Source::Shard).unwrap();
        let value: Value = serde_json::from_slice(&spliced).unwrap();
        assert_eq!(value["source"], "shard");
        assert_eq!(value["token"], "BTC");
        let empty: Value =
            serde_json::from_slice(&splice_source(b"{}", Source::Redis).unwrap()).unwrap();
        assert_eq!(empty, serde_json::json!({"source": "redis"}));
        assert!(splice_source(b"[1]", Source::Shard).is_none());
        assert!(splice_source(b"", Source::Shard).is_none());

        let mut null = Value::Null;
        tag_source(&mut null, Source::Redis);
        assert!(null.is_null());
        let mut obj = serde_json::json!({"token": "X"});
        tag_source(&mut obj, Source::Redis);
        assert_eq!(obj["source"], "redis");
    }

    fn entry(token: &str, value: Option<f64>) -> TopEntry {
        TopEntry {
            token: token.into(),
            value,
            stats: WindowStats::default(),
        }
    }

    #[test]
    fn top_lists_merge_by_value_then_token() {
        let a = vec![entry("A", Some(5.0)), entry("B", Some(1.0))];
        let b = vec![
            entry("C", Some(7.0)),
            entry("D", None),
            entry("E", Some(5.0)),
        ];
        let merged = merge_top_lists(vec![a, b, vec![]], 4);
        let order: Vec<&str> = merged.iter().map(|e| e.token.as_str()).collect();
        assert_eq!(order, ["C", "A", "E", "B"]);
        assert!(merge_top_lists(vec![], 3).is_empty());

        let body =
            serde_json::json!({"window": "5m", "by": "txns", "tokens": [entry("A", Some(2.0))]});
        let parsed = parse_top(body.to_string().as_bytes()).unwrap();
        assert_eq!(parsed, vec![entry("A", Some(2.0))]);
        assert!(parse_top(b"{}").is_err());
    }
}
