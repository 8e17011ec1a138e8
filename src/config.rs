//! Layered configuration: built-in defaults ← optional TOML file ← environment
//! (`SWAPSTATS__SECTION__KEY`, lists comma-separated). Unknown keys are errors so a
//! typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::window::WindowSpec;

/// Errors while loading configuration; the message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// The whole configuration of every role.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub http: HttpSettings,
    pub windows: Vec<WindowSpec>,
    pub ingest: IngestSettings,
    pub generator: GeneratorSettings,
    pub kafka: KafkaSettings,
    pub shard: ShardSettings,
    pub store: StoreSettings,
    pub router: RouterSettings,
    pub ws: WsSettings,
    pub telemetry: TelemetrySettings,
    pub log: LogSettings,
}

/// `http.*`: the listen address shared by every role.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    pub addr: SocketAddr,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
        }
    }
}

/// `ingest.*`: how long duplicates are remembered, how much history is kept, and
/// how far in the future a block time may be.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    #[serde(with = "humantime_serde")]
    pub dedup_horizon: Duration,
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            dedup_horizon: Duration::from_secs(24 * 3600),
            retention: Duration::from_secs(48 * 3600),
            max_future_skew: Duration::from_secs(5),
        }
    }
}

/// `generator.*`: the built-in synthetic swap source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeneratorSettings {
    /// Swaps per second (0 = as fast as possible).
    pub rate: u64,
    /// Number of distinct tokens (Zipf-like popularity; the top three are BTC, ETH, SOL).
    pub tokens: u32,
    /// Number of distinct wallets.
    pub wallets: u32,
    /// Fraction of swaps that are re-sent duplicates, 0..=1.
    pub dup_rate: f64,
    /// Maximum block-time disorder: a swap's time is up to this much in the past.
    #[serde(with = "humantime_serde")]
    pub disorder: Duration,
    /// Random seed; the same seed gives the same stream.
    pub seed: u64,
    /// Stop after this many swaps (0 = never).
    pub count: u64,
}

impl Default for GeneratorSettings {
    fn default() -> Self {
        Self {
            rate: 1000,
            tokens: 1000,
            wallets: 10_000,
            dup_rate: 0.01,
            disorder: Duration::from_secs(2),
            seed: 42,
            count: 0,
        }
    }
}

/// `kafka.*`: brokers and topics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic: String,
    pub dlq_topic: String,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "swaps".into(),
            dlq_topic: "swaps.dlq".into(),
        }
    }
}

/// `shard.*`: which partition this shard owns, batching and readiness.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardSettings {
    /// This shard's partition; when unset, the ordinal at the end of the hostname (`name-3`).
    pub partition: Option<u32>,
    /// Number of partitions P of the topic (and of in-process shards in standalone mode).
    pub partitions: u32,
    /// Largest batch persisted in one store call. A busy partition fills
    /// batches to this size (a backlog after a restart, or a rate the store
    /// only keeps up with in large batches: hot tokens' buckets then merge);
    /// a quiet one sends what has arrived as soon as the store is free.
    /// Larger batches cost Redis less per swap (a batch writes each touched
    /// token hash once), but each script call runs longer and a busy shard's
    /// updates come less often; the engine applies a batch in parts of
    /// [`crate::shard::APPLY_CHUNK_SWAPS`], so queries never wait for a
    /// whole batch.
    pub batch_max_swaps: usize,
    /// Longest a batch waits for more swaps after its first one, while the
    /// store is busy with earlier batches. When the store could take the batch
    /// at once, it goes as soon as no more swaps are waiting (group commit).
    #[serde(with = "humantime_serde")]
    pub batch_max_delay: Duration,
    /// `/readyz` stays false while the consumer lag is above this many messages.
    pub ready_max_lag: i64,
}

impl Default for ShardSettings {
    fn default() -> Self {
        Self {
            partition: None,
            partitions: 1,
            batch_max_swaps: 50_000,
            batch_max_delay: Duration::from_millis(50),
            ready_max_lag: 1000,
        }
    }
}

/// Which store implementation persists batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    #[default]
    Memory,
    Redis,
    RedisCluster,
}

/// `store.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    pub kind: StoreKind,
    /// Redis URLs; for `redis-cluster`, the seed nodes.
    pub redis_urls: Vec<String>,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            redis_urls: vec!["redis://127.0.0.1:6379".into()],
        }
    }
}

/// How the router finds shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DiscoveryKind {
    #[default]
    Static,
    Kubernetes,
}

/// `router.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSettings {
    pub discovery: DiscoveryKind,
    /// Shard base URLs indexed by partition (static discovery).
    pub shards: Vec<String>,
    /// Headless Service of the shards (Kubernetes discovery).
    pub service: String,
    /// Namespace of that Service; empty = the pod's own namespace.
    pub namespace: String,
    /// Port of the shards' HTTP server behind the Service.
    pub shard_port: u16,
    #[serde(with = "humantime_serde")]
    pub shard_timeout: Duration,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            discovery: DiscoveryKind::Static,
            shards: Vec::new(),
            service: "swapstats-shard".into(),
            namespace: String::new(),
            shard_port: 8080,
            shard_timeout: Duration::from_millis(200),
        }
    }
}

/// `ws.*`: WebSocket behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsSettings {
    #[serde(with = "humantime_serde")]
    pub coalesce: Duration,
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Messages queued for one client before it is dropped as too slow.
    pub client_queue: usize,
    pub max_subscriptions: usize,
    pub max_message_bytes: usize,
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            coalesce: Duration::from_millis(100),
            ping_interval: Duration::from_secs(30),
            client_queue: 1024,
            max_subscriptions: 1000,
            max_message_bytes: 64 * 1024,
        }
    }
}

/// `telemetry.*`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// OTLP gRPC endpoint, e.g. `http://jaeger:4317`; unset = no exporter.
    pub otlp_endpoint: Option<String>,
    pub sample_ratio: f64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: 1.0,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `log.*`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
}

/// Keys whose environment values are comma-separated lists.
const LIST_KEYS: [&str; 3] = ["windows", "store.redis_urls", "router.shards"];

impl Settings {
    /// Loads defaults ← `file` (TOML, optional) ← the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Like [`Settings::load`] with an explicit environment, so tests need not mutate
    /// the process environment.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let defaults = config::Config::try_from(&Settings::defaults())?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("SWAPSTATS__"))
            .collect();
        let mut environment = config::Environment::with_prefix("SWAPSTATS")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .try_parsing(true)
            .source(Some(env));
        for key in LIST_KEYS {
            environment = environment.with_list_parse_key(key);
        }
        let settings: Settings = builder.add_source(environment).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The built-in defaults, with the default window list filled in.
    pub fn defaults() -> Self {
        Settings {
            windows: WindowSpec::defaults(),
            ..Default::default()
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.into(),
            })
        };
        if self.windows.is_empty() {
            return invalid("windows", "at least one window is needed");
        }
        if self.shard.partitions == 0 {
            return invalid("shard.partitions", "must be at least 1");
        }
        if let Some(p) = self.shard.partition {
            if p >= self.shard.partitions {
                return invalid("shard.partition", "must be below shard.partitions");
            }
        }
        if self.shard.batch_max_swaps == 0 {
            return invalid("shard.batch_max_swaps", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.generator.dup_rate) {
            return invalid("generator.dup_rate", "must be within 0..=1");
        }
        if self.generator.tokens == 0 || self.generator.wallets == 0 {
            return invalid("generator.tokens", "tokens and wallets must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return invalid("telemetry.sample_ratio", "must be within 0..=1");
        }
        if self.ingest.retention < self.ingest.dedup_horizon {
            return invalid("ingest.retention", "must be at least ingest.dedup_horizon");
        }
        if self.ws.max_subscriptions == 0 {
            return invalid("ws.max_subscriptions", "must be at least 1");
        }
        // One coalescing tick queues up to one update per subscribed token: a
        // smaller queue would close clients that read promptly.
        if self.ws.client_queue < self.ws.max_subscriptions {
            return invalid("ws.client_queue", "must be at least ws.max_subscriptions");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.http.addr.port(), 8080);
        let names: Vec<_> = s.windows.iter().map(|w| w.name.clone()).collect();
        assert_eq!(names, ["5m", "1h", "6h", "24h"]);
        assert_eq!(s.ingest.max_future_skew, Duration::from_secs(5));
        assert_eq!(s.kafka.topic, "swaps");
        assert_eq!(s.store.kind, StoreKind::Memory);
        assert_eq!(s.ws.coalesce, Duration::from_millis(100));
    }

    #[test]
    fn env_overrides_with_lists() {
        let s = Settings::load_from(
            None,
            env(&[
                ("SWAPSTATS__WINDOWS", "1m,15m"),
                ("SWAPSTATS__SHARD__PARTITIONS", "3"),
                ("SWAPSTATS__STORE__KIND", "redis-cluster"),
                ("SWAPSTATS__STORE__REDIS_URLS", "redis://a:1,redis://b:2"),
                ("SWAPSTATS__WS__COALESCE", "250ms"),
            ]),
        )
        .unwrap();
        assert_eq!(s.windows.len(), 2);
        assert_eq!(s.shard.partitions, 3);
        assert_eq!(s.store.kind, StoreKind::RedisCluster);
        assert_eq!(s.store.redis_urls.len(), 2);
        assert_eq!(s.ws.coalesce, Duration::from_millis(250));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Settings::load_from(None, env(&[("SWAPSTATS__SHARD__BATCH_SIZE", "3")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch_size"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = Settings::load_from(None, env(&[("SWAPSTATS__WINDOWS", "5m,25h")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("25h"), "{err}");
        let err = Settings::load_from(None, env(&[("SWAPSTATS__SHARD__PARTITIONS", "zero")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("partitions"), "{err}");
        let err = Settings::load_from(None, env(&[("SWAPSTATS__WS__CLIENT_QUEUE", "10")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ws.client_queue"), "{err}");
    }

    #[test]
    fn file_layer_sits_between_defaults_and_env() {
        let dir = std::env::temp_dir().join(format!("swapstats-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "[shard]\npartitions = 4\nbatch_max_swaps = 10\n").unwrap();
        let s = Settings::load_from(Some(&path), env(&[("SWAPSTATS__SHARD__PARTITIONS", "2")]))
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(s.shard.partitions, 2);
        assert_eq!(s.shard.batch_max_swaps, 10);
    }
}
