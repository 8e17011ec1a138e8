//! Logs (text, or JSON with trace/span ids) via `tracing`; spans exported over
//! OTLP/gRPC when `telemetry.otlp_endpoint` is set; W3C trace context across
//! Kafka and HTTP; Prometheus metrics.
//!
//! With no endpoint, no exporter exists and [`tracing_enabled`] is false: the
//! per-swap, per-batch and per-push instrumentation is skipped entirely.

mod logs;
pub mod metrics;
mod otel;
mod propagation;

pub use logs::WithTraceIds;
pub use metrics::{metrics, metrics_handler, track_http, Metrics};
pub use otel::{
    normalize_endpoint, pod_name, resource, tracer_provider, tracing_enabled, Role,
    DEFAULT_OTLP_PORT,
};
pub use propagation::{
    current_traceparent, extract_trace_headers, format_traceparent, inject_trace_headers,
    link_traceparents, parse_traceparent, set_parent, span_context, trace_http, traceparent,
    MAX_LINKS, TRACEPARENT,
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogFormat, Settings};

/// The filter when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info,rdkafka=warn";

/// Telemetry set-up failures.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.otlp_endpoint `{endpoint}`: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("logging already initialised: {0}")]
    Subscriber(String),
}

/// Keeps the span exporter of [`init`]; [`TelemetryGuard::shutdown`] flushes it.
#[must_use = "call shutdown() on exit, or buffered spans are lost"]
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// True when spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes buffered spans and stops the exporter. The SDK blocks the calling
    /// thread meanwhile, so this runs on the blocking pool, never on a runtime
    /// worker; call it before the runtime is dropped (the gRPC channel lives on it).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        otel::set_tracing_enabled(false);
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("swapstats: flushing spans failed: {e}"),
            Err(e) => eprintln!("swapstats: span flush task failed: {e}"),
        }
    }
}

/// Installs the global `tracing` subscriber for `role` (with `partition` as a
/// resource attribute when known). `RUST_LOG` overrides the default `info` filter.
///
/// Logs: text, or JSON lines with `trace_id`/`span_id` when `log.format = "json"`.
/// Spans: exported to `telemetry.otlp_endpoint` (OTLP/gRPC) sampled with
/// ParentBased(TraceIdRatioBased(`telemetry.sample_ratio`)); with no endpoint,
/// nothing is built. Call inside a Tokio runtime (the gRPC channel needs one), and
/// call [`TelemetryGuard::shutdown`] before exiting.
pub fn init(
    settings: &Settings,
    role: Role,
    partition: Option<u32>,
) -> Result<TelemetryGuard, TelemetryError> {
    if tracing::dispatcher::has_been_set() {
        return Err(TelemetryError::Subscriber(
            "a global subscriber exists".into(),
        ));
    }
    let provider = tracer_provider(&settings.telemetry, role, partition)?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let fmt_layer: Box<dyn Layer<Registry> + Send + Sync> = match settings.log.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .map_event_format(WithTraceIds)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("swapstats"))
            .with_tracked_inactivity(false)
    });
    tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer)
        .with(filter)
        .try_init()
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    if provider.is_some() {
        otel::set_tracing_enabled(true);
        tracing::info!(
            service = role.service_name(),
            endpoint = settings
                .telemetry
                .otlp_endpoint
                .as_deref()
                .unwrap_or_default(),
            sample_ratio = settings.telemetry.sample_ratio,
            "exporting spans over OTLP"
        );
    }
    Ok(TelemetryGuard { provider })
}
