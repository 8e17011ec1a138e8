//! The OpenTelemetry tracer provider: an OTLP/gRPC (tonic) span exporter, a
//! parent-based ratio sampler and the resource naming this process. Built only
//! when `telemetry.otlp_endpoint` is set; otherwise nothing is created at all.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::KeyValue;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use super::TelemetryError;
use crate::config::TelemetrySettings;

/// The default OTLP/gRPC port, used when the endpoint names none.
pub const DEFAULT_OTLP_PORT: u16 = 4317;

/// Set once a span exporter is installed; read by every traced code path.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// True when spans are exported (an OTLP endpoint is configured and the
/// exporter is installed). Instrumentation that costs anything (a span per
/// swap, per batch or per push, parsing `traceparent`s) is gated on this, so a
/// process without an endpoint does none of it.
#[inline]
pub fn tracing_enabled() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

pub(super) fn set_tracing_enabled(enabled: bool) {
    EXPORTING.store(enabled, Ordering::Relaxed);
}

/// Which process this is: names the OpenTelemetry service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Generator + all shards + HTTP in one process.
    Standalone,
    /// One Kafka partition.
    Shard,
    /// The stateless router tier.
    Router,
    /// `swapstats produce`.
    Producer,
}

impl Role {
    /// The `service.name` of this role (`swapstats-shard`, ...).
    pub fn service_name(self) -> &'static str {
        match self {
            Role::Standalone => "swapstats-standalone",
            Role::Shard => "swapstats-shard",
            Role::Router => "swapstats-router",
            Role::Producer => "swapstats-producer",
        }
    }
}

/// Builds the tracer provider, or `None` when no endpoint is configured (then
/// no exporter, no background thread and no connection exist).
///
/// Must run inside a Tokio runtime when an endpoint is set: the gRPC channel
/// spawns its connection task on it.
pub fn tracer_provider(
    settings: &TelemetrySettings,
    role: Role,
    partition: Option<u32>,
) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let Some(endpoint) = settings
        .otlp_endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
    else {
        return Ok(None);
    };
    let endpoint = normalize_endpoint(endpoint)?;
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio)));
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(resource(role, partition, pod_name().as_deref()))
        .build();
    Ok(Some(provider))
}

/// The resource of this process: `service.name` per role, the partition (when
/// one is known) and the pod name.
pub fn resource(role: Role, partition: Option<u32>, pod: Option<&str>) -> Resource {
    let mut attributes = vec![
        KeyValue::new("service.namespace", "swapstats"),
        KeyValue::new("swapstats.role", role_label(role)),
    ];
    if let Some(partition) = partition {
        attributes.push(KeyValue::new("swapstats.partition", i64::from(partition)));
    }
    if let Some(pod) = pod {
        attributes.push(KeyValue::new("k8s.pod.name", pod.to_string()));
        attributes.push(KeyValue::new("service.instance.id", pod.to_string()));
    }
    Resource::builder()
        .with_service_name(role.service_name())
        .with_attributes(attributes)
        .build()
}

fn role_label(role: Role) -> &'static str {
    match role {
        Role::Standalone => "standalone",
        Role::Shard => "shard",
        Role::Router => "router",
        Role::Producer => "producer",
    }
}

/// The pod (host) name: `HOSTNAME`, else `/etc/hostname`.
pub fn pod_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// `jaeger:4317` → `http://jaeger:4317`; `http://jaeger` → `http://jaeger:4317`.
pub fn normalize_endpoint(endpoint: &str) -> Result<String, TelemetryError> {
    let with_scheme = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let invalid = |reason: String| TelemetryError::Endpoint {
        endpoint: endpoint.to_string(),
        reason,
    };
    let uri: axum::http::Uri = with_scheme.parse().map_err(|e| invalid(format!("{e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        other => return Err(invalid(format!("unsupported scheme {other:?}"))),
    }
    let authority = uri.authority().ok_or_else(|| invalid("no host".into()))?;
    if authority.port().is_some() {
        return Ok(with_scheme);
    }
    let scheme = uri.scheme_str().unwrap_or("http");
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    let path = if path == "/" { "" } else { path };
    Ok(format!("{scheme}://{authority}:{DEFAULT_OTLP_PORT}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_endpoint_means_no_provider() {
        let mut settings = TelemetrySettings::default();
        assert!(tracer_provider(&settings, Role::Shard, Some(0))
            .unwrap()
            .is_none());
        settings.otlp_endpoint = Some("  ".into());
        assert!(tracer_provider(&settings, Role::Shard, Some(0))
            .unwrap()
            .is_none());
        assert!(!tracing_enabled());
    }

    #[test]
    fn endpoints_get_a_scheme_and_the_default_port() {
        assert_eq!(
            normalize_endpoint("jaeger:4317").unwrap(),
            "http://jaeger:4317"
        );
        assert_eq!(
            normalize_endpoint("http://jaeger").unwrap(),
            "http://jaeger:4317"
        );
        assert_eq!(
            normalize_endpoint("http://jaeger/").unwrap(),
            "http://jaeger:4317"
        );
        assert_eq!(
            normalize_endpoint("https://otel.example:443").unwrap(),
            "https://otel.example:443"
        );
        assert_eq!(
            normalize_endpoint("127.0.0.1:9").unwrap(),
            "http://127.0.0.1:9"
        );
        assert!(normalize_endpoint("ftp://x:1").is_err());
        assert!(normalize_endpoint("http://").is_err());
    }

    #[test]
    fn resource_names_service_partition_and_pod() {
        let r = resource(Role::Shard, Some(3), Some("swapstats-shard-3"));
        let get = |k: &str| {
            r.get(&opentelemetry::Key::from(k.to_string()))
                .map(|v| v.to_string())
        };
        assert_eq!(get("service.name").as_deref(), Some("swapstats-shard"));
        assert_eq!(get("swapstats.partition").as_deref(), Some("3"));
        assert_eq!(get("k8s.pod.name").as_deref(), Some("swapstats-shard-3"));
        let r = resource(Role::Router, None, None);
        assert!(r
            .get(&opentelemetry::Key::from_static_str("swapstats.partition"))
            .is_none());
        assert_eq!(Role::Producer.service_name(), "swapstats-producer");
        assert_eq!(Role::Standalone.service_name(), "swapstats-standalone");
    }
}
