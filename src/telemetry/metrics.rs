//! Prometheus metrics of every role, served at `/metrics`. Pipeline counters
//! live as atomics in `ShardCounters` (they also feed `/readyz`) and are read by
//! a collector at scrape time; latencies are histograms observed where they happen.

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::api::ws::Hub;
use crate::shard::LocalShards;
use crate::swap::RejectReason;

/// The process's metrics registry and the histograms observed directly.
pub struct Metrics {
    registry: Registry,
    /// HTTP request latency by route, method and status.
    pub http_seconds: HistogramVec,
    /// Swaps per batch, by partition.
    pub batch_swaps: HistogramVec,
    /// Time from a full batch to its persisted effect, by partition.
    pub batch_apply_seconds: HistogramVec,
    /// Latency of store (Redis) calls by operation.
    pub store_call_seconds: HistogramVec,
    /// Failed store calls by operation.
    pub store_errors: IntCounterVec,
    /// Router answers served from Redis instead of the shard, by partition.
    pub router_fallbacks: IntCounterVec,
    /// Partition loads (restores) from Redis by how they read the token
    /// hashes: `direct` (the store's own connections) or `client` (redis-rs,
    /// the slower path TLS takes and a failed direct connection falls back to).
    pub store_loads: IntCounterVec,
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid histogram definition")
}

/// The metrics of this process.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
        let seconds = || exponential_buckets(0.0001, 2.0, 16).expect("valid buckets");
        let m = Metrics {
            registry: Registry::new_custom(Some("swapstats".into()), None).expect("valid registry"),
            http_seconds: histogram(
                "http_request_seconds",
                "HTTP request latency",
                &["route", "method", "status"],
                seconds(),
            ),
            batch_swaps: histogram(
                "batch_swaps",
                "Swaps per batch",
                &["partition"],
                exponential_buckets(1.0, 4.0, 9).expect("valid buckets"),
            ),
            batch_apply_seconds: histogram(
                "batch_apply_seconds",
                "Batch decode+apply+persist time",
                &["partition"],
                seconds(),
            ),
            store_call_seconds: histogram(
                "store_call_seconds",
                "Store (Redis) call latency",
                &["op"],
                seconds(),
            ),
            store_errors: IntCounterVec::new(
                Opts::new("store_errors_total", "Failed store calls"),
                &["op"],
            )
            .expect("valid counter"),
            router_fallbacks: IntCounterVec::new(
                Opts::new("router_fallbacks_total", "Router answers served from Redis"),
                &["partition"],
            )
            .expect("valid counter"),
            store_loads: IntCounterVec::new(
                Opts::new(
                    "store_loads_total",
                    "Partition loads from Redis, by how the token hashes were read",
                ),
                &["partition", "reads"],
            )
            .expect("valid counter"),
        };
        let collectors: [Box<dyn Collector>; 7] = [
            Box::new(m.http_seconds.clone()),
            Box::new(m.batch_swaps.clone()),
            Box::new(m.batch_apply_seconds.clone()),
            Box::new(m.store_call_seconds.clone()),
            Box::new(m.store_errors.clone()),
            Box::new(m.router_fallbacks.clone()),
            Box::new(m.store_loads.clone()),
        ];
        for c in collectors {
            if let Err(e) = m.registry.register(c) {
                tracing::error!(error = %e, "metric registration failed");
            }
        }
        m
    });
    &METRICS
}

impl Metrics {
    /// Exposes the partitions held by this process (counters, lag, offsets).
    pub fn register_shards(&self, shards: Arc<LocalShards>) {
        self.register(Box::new(ShardCollector::new(shards)));
    }

    /// Exposes WebSocket connections, subscriptions and drops of a hub.
    pub fn register_hub(&self, hub: Hub) {
        self.register(Box::new(HubCollector::new(hub)));
    }

    fn register(&self, collector: Box<dyn Collector>) {
        if let Err(e) = self.registry.register(collector) {
            tracing::warn!(error = %e, "collector already registered");
        }
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// `GET /metrics`.
pub async fn metrics_handler() -> Response {
    (
        [("content-type", prometheus::TEXT_FORMAT)],
        metrics().render(),
    )
        .into_response()
}

/// Middleware observing request latency by matched route and status.
pub async fn track_http(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_owned();
    let start = Instant::now();
    let response = next.run(request).await;
    metrics()
        .http_seconds
        .with_label_values(&[route.as_str(), method.as_str(), response.status().as_str()])
        .observe(start.elapsed().as_secs_f64());
    response
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter definition")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge definition")
}

/// Reads one counter of a partition.
type CounterRead = fn(&crate::shard::ShardCounters) -> u64;
/// Reads one gauge of a partition.
type GaugeRead = fn(&crate::shard::ShardCore) -> i64;

/// Reads `ShardCounters` of every held partition at scrape time.
struct ShardCollector {
    shards: Arc<LocalShards>,
    counters: Vec<(IntCounterVec, CounterRead)>,
    rejected: IntCounterVec,
    gauges: Vec<(IntGaugeVec, GaugeRead)>,
    descs: Vec<Desc>,
}

impl ShardCollector {
    fn new(shards: Arc<LocalShards>) -> Self {
        let p = &["partition"];
        let counters: Vec<(IntCounterVec, CounterRead)> = vec![
            (
                counter("swaps_consumed_total", "Records read from the source", p),
                |c| c.consumed.load(Ordering::Relaxed),
            ),
            (
                counter("swaps_applied_total", "Distinct valid swaps applied", p),
                |c| c.applied.load(Ordering::Relaxed),
            ),
            (
                counter("swaps_duplicate_total", "Swaps ignored as duplicates", p),
                |c| c.duplicates.load(Ordering::Relaxed),
            ),
            (
                counter(
                    "swaps_late_total",
                    "Swaps dropped as older than the dedup horizon",
                    p,
                ),
                |c| c.late.load(Ordering::Relaxed),
            ),
            (
                counter(
                    "swaps_dead_lettered_total",
                    "Records sent to the dead-letter sink",
                    p,
                ),
                |c| c.dead_lettered.load(Ordering::Relaxed),
            ),
            (counter("batches_total", "Batches persisted", p), |c| {
                c.batches.load(Ordering::Relaxed)
            }),
            (
                counter(
                    "store_calls_total",
                    "Persist calls (one per batch, plus retries)",
                    p,
                ),
                |c| c.store_calls.load(Ordering::Relaxed),
            ),
            (
                counter("store_persist_errors_total", "Failed persist calls", p),
                |c| c.store_errors.load(Ordering::Relaxed),
            ),
        ];
        let rejected = counter(
            "swaps_rejected_total",
            "Invalid swaps by reason",
            &["partition", "reason"],
        );
        let gauges: Vec<(IntGaugeVec, GaugeRead)> = vec![
            (
                gauge("consumer_lag", "Messages behind the partition's end", p),
                |s| s.counters.lag.load(Ordering::Relaxed),
            ),
            (
                gauge("applied_offset", "Last source offset persisted", p),
                |s| s.counters.applied_offset.load(Ordering::Relaxed),
            ),
            (gauge("tokens", "Tokens held in memory", p), |s| {
                s.token_count() as i64
            }),
            (gauge("ready", "1 when the partition is ready", p), |s| {
                i64::from(s.is_ready())
            }),
        ];
        let mut descs: Vec<Desc> = Vec::new();
        for (c, _) in &counters {
            descs.extend(c.desc().into_iter().cloned());
        }
        descs.extend(rejected.desc().into_iter().cloned());
        for (g, _) in &gauges {
            descs.extend(g.desc().into_iter().cloned());
        }
        Self {
            shards,
            counters,
            rejected,
            gauges,
            descs,
        }
    }
}

impl Collector for ShardCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        for (vec, read) in &self.counters {
            vec.reset();
            for core in self.shards.cores() {
                vec.with_label_values(&[core.partition.to_string().as_str()])
                    .inc_by(read(&core.counters));
            }
            out.extend(vec.collect());
        }
        self.rejected.reset();
        for core in self.shards.cores() {
            let partition = core.partition.to_string();
            for (i, reason) in RejectReason::ALL.iter().enumerate() {
                let n = core.counters.rejected[i].load(Ordering::Relaxed);
                self.rejected
                    .with_label_values(&[partition.as_str(), reason.as_str()])
                    .inc_by(n);
            }
        }
        out.extend(self.rejected.collect());
        for (vec, read) in &self.gauges {
            for core in self.shards.cores() {
                vec.with_label_values(&[core.partition.to_string().as_str()])
                    .set(read(core));
            }
            out.extend(vec.collect());
        }
        out
    }
}

/// Reads WebSocket numbers from a hub at scrape time.
struct HubCollector {
    hub: Hub,
    connections: IntGaugeVec,
    subscriptions: IntGaugeVec,
    sent: IntCounterVec,
    dropped: IntCounterVec,
    descs: Vec<Desc>,
}

impl HubCollector {
    fn new(hub: Hub) -> Self {
        let connections = gauge("ws_connections", "Open WebSocket connections", &[]);
        let subscriptions = gauge(
            "ws_subscriptions",
            "Token subscriptions over all connections",
            &[],
        );
        let sent = counter(
            "ws_messages_sent_total",
            "Messages queued to WebSocket clients",
            &[],
        );
        let dropped = counter(
            "ws_clients_dropped_total",
            "Clients closed for being too slow",
            &[],
        );
        let mut descs: Vec<Desc> = Vec::new();
        descs.extend(connections.desc().into_iter().cloned());
        descs.extend(subscriptions.desc().into_iter().cloned());
        descs.extend(sent.desc().into_iter().cloned());
        descs.extend(dropped.desc().into_iter().cloned());
        Self {
            hub,
            connections,
            subscriptions,
            sent,
            dropped,
            descs,
        }
    }
}

impl Collector for HubCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.connections
            .with_label_values(&[] as &[&str])
            .set(self.hub.client_count() as i64);
        self.subscriptions
            .with_label_values(&[] as &[&str])
            .set(self.hub.subscription_count() as i64);
        self.sent.reset();
        self.sent
            .with_label_values(&[] as &[&str])
            .inc_by(self.hub.messages_sent());
        self.dropped.reset();
        self.dropped
            .with_label_values(&[] as &[&str])
            .inc_by(self.hub.dropped_slow());
        let mut out = self.connections.collect();
        out.extend(self.subscriptions.collect());
        out.extend(self.sent.collect());
        out.extend(self.dropped.collect());
        out
    }
}
