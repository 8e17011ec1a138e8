//! The router's read logic, independent of HTTP framing: one token, many tokens
//! (one request per shard, concurrently), top-N over all shards, WS snapshots,
//! cluster health and readiness. Each partition is asked of its shard first and
//! of the fallback store when the shard is down, not ready, or too slow.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures_util::future::join_all;
use serde_json::{json, Map, Value};

use super::fallback::StatsFallback;
use super::health::{check_shard, ShardState};
use super::proxy::{ShardClient, ShardReply};
use super::routing::Routing;
use super::scatter::{group_by_partition, merge_top_lists, parse_top, tag_source, Source};
use crate::api::params::TopQuery;
use crate::api::ApiError;
use crate::partition::partition_for;
use crate::window::{TokenStats, TopEntry};

/// Deadline of the store probe behind `/readyz` and of `/cluster`'s health checks.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One token's stats as fetched.
#[derive(Debug, Clone)]
pub enum Fetched {
    /// The shard's JSON stats object, as it sent it.
    Shard(Bytes),
    /// Restored from the store (boxed: its windows are inline).
    Redis(Box<TokenStats>),
}

impl Fetched {
    /// The stats as JSON, without a `source` tag (WS snapshots).
    pub fn into_value(self) -> Option<Value> {
        match self {
            Fetched::Shard(body) => serde_json::from_slice(&body).ok(),
            Fetched::Redis(stats) => serde_json::to_value(stats).ok(),
        }
    }
}

/// The cluster's read path.
pub struct RouterService {
    routing: Routing,
    client: ShardClient,
    fallback: Option<Arc<dyn StatsFallback>>,
}

impl RouterService {
    /// `routing.has_fallback` should match `fallback.is_some()`.
    pub fn new(
        routing: Routing,
        client: ShardClient,
        fallback: Option<Arc<dyn StatsFallback>>,
    ) -> Self {
        Self {
            routing,
            client,
            fallback,
        }
    }

    /// The routing state (discovery + health).
    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    /// One token: its shard, else the store. A shard's 404 is final.
    pub async fn stats_one(&self, token: &str) -> Result<Fetched, ApiError> {
        let partition = partition_for(token, self.routing.partitions());
        let shard_error = match self.routing.shard_for(partition) {
            None => "no ready shard".to_string(),
            Some(base) => match self.client.get(&base, "/stats", &[("token", token)]).await {
                Ok(reply) if reply.status == 200 => return Ok(Fetched::Shard(reply.body)),
                Ok(reply) if reply.status == 400 || reply.status == 404 => {
                    return Err(passed_on(&reply))
                }
                Ok(reply) => {
                    self.failed(partition, &base, format!("shard answered {}", reply.status))
                }
                Err(e) => self.failed(partition, &base, e.to_string()),
            },
        };
        let fallback = self.fallback_for(partition, &shard_error)?;
        match fallback.stats(partition, token, crate::now_ms()).await {
            Ok(Some(stats)) => Ok(Fetched::Redis(Box::new(stats))),
            Ok(None) => Err(no_swaps(token)),
            Err(e) => Err(ApiError::Unavailable(format!(
                "partition {partition}: {shard_error}, and the store failed: {e}"
            ))),
        }
    }

    /// Many tokens: one request per owning shard, concurrently; each partition
    /// whose shard fails is answered from the store. Unknown tokens are `null`.
    pub async fn stats_many(&self, tokens: &[String]) -> Result<Map<String, Value>, ApiError> {
        let groups = group_by_partition(tokens, self.routing.partitions());
        let parts = join_all(
            groups
                .into_iter()
                .map(|(partition, tokens)| self.partition_stats(partition, tokens)),
        )
        .await;
        let mut body = Map::new();
        for part in parts {
            body.extend(part?);
        }
        Ok(body)
    }

    async fn partition_stats(
        &self,
        partition: u32,
        tokens: Vec<String>,
    ) -> Result<Vec<(String, Value)>, ApiError> {
        let shard_error = match self.routing.shard_for(partition) {
            None => "no ready shard".to_string(),
            Some(base) => {
                let list = tokens.join(",");
                match self.client.get(&base, "/stats", &[("tokens", &list)]).await {
                    Ok(reply) if reply.status == 200 => match serde_json::from_slice::<
                        Map<String, Value>,
                    >(&reply.body)
                    {
                        Ok(mut answered) => {
                            return Ok(tokens
                                .into_iter()
                                .map(|t| {
                                    let mut stats = answered.remove(&t).unwrap_or(Value::Null);
                                    tag_source(&mut stats, Source::Shard);
                                    (t, stats)
                                })
                                .collect())
                        }
                        Err(e) => self.failed(partition, &base, format!("bad /stats body: {e}")),
                    },
                    Ok(reply) if reply.status == 400 => return Err(passed_on(&reply)),
                    Ok(reply) => {
                        self.failed(partition, &base, format!("shard answered {}", reply.status))
                    }
                    Err(e) => self.failed(partition, &base, e.to_string()),
                }
            }
        };
        let fallback = self.fallback_for(partition, &shard_error)?;
        let now = crate::now_ms();
        let answers = join_all(tokens.iter().map(|t| fallback.stats(partition, t, now))).await;
        let mut out = Vec::with_capacity(tokens.len());
        for (token, answer) in tokens.iter().zip(answers) {
            let stats = answer.map_err(|e| {
                ApiError::Unavailable(format!(
                    "partition {partition}: {shard_error}, and the store failed: {e}"
                ))
            })?;
            let mut value = stats
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or(Value::Null);
            tag_source(&mut value, Source::Redis);
            out.push((token.clone(), value));
        }
        Ok(out)
    }

    /// Top-N over all shards. Partitions whose shard cannot answer are listed
    /// in `missing_partitions` (the store keeps no ranking); none answering is a 503.
    pub async fn top(&self, query: &TopQuery) -> Result<Value, ApiError> {
        let limit = query.limit.to_string();
        let by = serde_json::to_value(query.by)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let params = [
            ("window", query.window.as_str()),
            ("by", by.as_str()),
            ("limit", limit.as_str()),
        ];
        let partitions = 0..self.routing.partitions();
        let answers = join_all(partitions.map(|p| self.partition_top(p, &params))).await;
        let mut lists = Vec::new();
        let mut missing = Vec::new();
        for (partition, answer) in answers.into_iter().enumerate() {
            match answer? {
                Some(list) => lists.push(list),
                None => missing.push(partition),
            }
        }
        if lists.is_empty() {
            return Err(ApiError::Unavailable("no shard answered /stats/top".into()));
        }
        let mut body = json!({
            "window": query.window,
            "by": query.by,
            "tokens": merge_top_lists(lists, query.limit),
        });
        if !missing.is_empty() {
            body["missing_partitions"] = json!(missing);
        }
        Ok(body)
    }

    async fn partition_top(
        &self,
        partition: u32,
        params: &[(&str, &str)],
    ) -> Result<Option<Vec<TopEntry>>, ApiError> {
        let Some(base) = self.routing.shard_for(partition) else {
            return Ok(None);
        };
        match self.client.get(&base, "/stats/top", params).await {
            Ok(reply) if reply.status == 200 => match parse_top(&reply.body) {
                Ok(list) => Ok(Some(list)),
                Err(e) => {
                    self.failed(partition, &base, format!("bad /stats/top body: {e}"));
                    Ok(None)
                }
            },
            Ok(reply) if reply.status == 400 => Err(passed_on(&reply)),
            Ok(reply) => {
                self.failed(partition, &base, format!("shard answered {}", reply.status));
                Ok(None)
            }
            Err(e) => {
                self.failed(partition, &base, e.to_string());
                Ok(None)
            }
        }
    }

    /// Per partition: where its shard is and what its `/readyz` says, fetched now.
    pub async fn cluster(&self) -> Value {
        let state = self.routing.directory.state();
        let rows = state.map.iter().map(|(partition, endpoint)| {
            let endpoint = endpoint.cloned();
            async move {
                let Some(endpoint) = endpoint else {
                    return json!({
                        "partition": partition, "address": null, "discovered_ready": false,
                        "reachable": false, "ready": false, "lag": null, "applied_offset": null,
                        "tokens": null, "last_error": "no shard discovered",
                    });
                };
                let timeout = self.client.timeout().max(PROBE_TIMEOUT);
                let observed =
                    check_shard(&self.client, &endpoint.base_url, partition, timeout).await;
                let report = observed.report.clone().unwrap_or(Value::Null);
                let last_error = match &observed.state {
                    ShardState::Down(why) if report["last_error"].is_null() => {
                        Value::from(why.clone())
                    }
                    _ => report["last_error"].clone(),
                };
                let row = json!({
                    "partition": partition,
                    "address": endpoint.base_url,
                    "pod": endpoint.name,
                    "discovered_ready": endpoint.ready,
                    "reachable": observed.reachable,
                    "ready": observed.state == ShardState::Ready,
                    "lag": report["lag"],
                    "applied_offset": report["applied_offset"],
                    "tokens": report["tokens"],
                    "last_error": last_error,
                });
                self.routing.health.record(partition, observed);
                row
            }
        });
        let partitions = join_all(rows).await;
        let ready = partitions.iter().filter(|r| r["ready"] == true).count();
        json!({
            "discovery_synced": state.synced,
            "partitions_total": state.map.partitions(),
            "partitions_ready": ready,
            "fallback": self.fallback.is_some(),
            "partitions": partitions,
        })
    }

    /// Router readiness: discovery listed once, and the fallback store (when
    /// configured) answers. Shards may be down: the fallback covers them.
    pub async fn readiness(&self) -> (bool, Value) {
        let synced = self.routing.directory.is_synced();
        let (store_ok, store) = match &self.fallback {
            None => (true, Value::from("none")),
            Some(fallback) => match tokio::time::timeout(PROBE_TIMEOUT, fallback.ping()).await {
                Ok(Ok(())) => (true, Value::from("ok")),
                Ok(Err(e)) => (false, Value::from(format!("error: {e}"))),
                Err(_) => (
                    false,
                    Value::from(format!("no answer within {PROBE_TIMEOUT:?}")),
                ),
            },
        };
        let ready = synced && store_ok;
        (
            ready,
            json!({ "ready": ready, "discovery_synced": synced, "store": store }),
        )
    }

    fn failed(&self, partition: u32, base: &str, reason: String) -> String {
        tracing::debug!(partition, shard = %base, %reason, "shard call failed; using the fallback");
        self.routing.mark_down(partition, base, reason.clone());
        reason
    }

    fn fallback_for(
        &self,
        partition: u32,
        shard_error: &str,
    ) -> Result<&Arc<dyn StatsFallback>, ApiError> {
        let fallback = self.fallback.as_ref().ok_or_else(|| {
            ApiError::Unavailable(format!(
                "partition {partition}: {shard_error}, and no fallback store is configured"
            ))
        })?;
        crate::telemetry::metrics()
            .router_fallbacks
            .with_label_values(&[partition.to_string().as_str()])
            .inc();
        Ok(fallback)
    }
}

/// The 404 a shard gives for a token without swaps, given alike by the fallback.
fn no_swaps(token: &str) -> ApiError {
    ApiError::NotFound(format!("no swaps of `{token}` within retention"))
}

/// A shard's 400/404 JSON error, passed on with its message.
fn passed_on(reply: &ShardReply) -> ApiError {
    let message = reply
        .json()
        .and_then(|b| b["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("shard answered {}", reply.status));
    if reply.status == 404 {
        ApiError::NotFound(message)
    } else {
        ApiError::BadRequest(message)
    }
}
