//! W3C trace context across process boundaries: `traceparent` in Kafka message
//! headers and HTTP headers, span links for batches, and the HTTP middleware
//! that continues an incoming trace. Every helper is a no-op (and allocation
//! free) while tracing export is disabled.

use axum::extract::{MatchedPath, Request};
use axum::http::header::{HeaderName, HeaderValue};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::{field, Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::otel::tracing_enabled;

/// The W3C header (Kafka and HTTP) carrying trace context.
pub const TRACEPARENT: &str = "traceparent";

/// At most this many links per batch span (the SDK's default link limit).
pub const MAX_LINKS: usize = 128;

/// The OpenTelemetry span context of a `tracing` span, when it has a valid one
/// (the span exists and the OpenTelemetry layer is installed).
pub fn span_context(span: &Span) -> Option<SpanContext> {
    if span.is_none() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// `00-<trace id>-<span id>-<flags>` of a span context.
pub fn format_traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// The `traceparent` value naming `span` as the parent, if it has a valid context.
pub fn traceparent(span: &Span) -> Option<String> {
    span_context(span).map(|sc| format_traceparent(&sc))
}

/// The `traceparent` of the current span (`None` when tracing is disabled).
pub fn current_traceparent() -> Option<String> {
    if !tracing_enabled() {
        return None;
    }
    traceparent(&Span::current())
}

/// Parses a `traceparent` value into a remote span context; `None` when malformed.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&OneHeader(value));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Makes `parent` the parent of `span` (call before the span is first entered).
pub fn set_parent(span: &Span, parent: &SpanContext) {
    if span.is_none() {
        return;
    }
    let cx = Context::new().with_remote_span_context(parent.clone());
    if let Err(e) = span.set_parent(cx) {
        tracing::debug!(error = %e, "could not set a span's parent");
    }
}

/// Links `span` to the sampled contexts among `traceparents` (at most
/// [`MAX_LINKS`]; malformed values are skipped). Returns the number of links.
pub fn link_traceparents<'a>(
    span: &Span,
    traceparents: impl IntoIterator<Item = &'a str>,
) -> usize {
    if span.is_none() {
        return 0;
    }
    let mut links = 0;
    for value in traceparents {
        if links == MAX_LINKS {
            break;
        }
        if let Some(sc) = parse_traceparent(value).filter(SpanContext::is_sampled) {
            span.add_link(sc);
            links += 1;
        }
    }
    links
}

/// Adds the current span's `traceparent` (and `tracestate`) to outgoing HTTP
/// headers, so the callee continues this trace. A no-op when tracing is
/// disabled or there is no current span. Works with `reqwest::header::HeaderMap`
/// (the same `http` type).
pub fn inject_trace_headers(headers: &mut HeaderMap) {
    if !tracing_enabled() {
        return;
    }
    let cx = Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }
}

/// The remote parent carried by incoming HTTP headers, if any.
pub fn extract_trace_headers(headers: &HeaderMap) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Axum middleware: an `http.request` server span per request (route, method,
/// status), child of the caller's `traceparent` when there is one. Add it to
/// every role's routes with `.layer(axum::middleware::from_fn(trace_http))`.
/// Passes requests straight through when tracing is disabled.
pub async fn trace_http(request: Request, next: Next) -> Response {
    if !tracing_enabled() {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!(
        "http.request",
        otel.kind = "server",
        http.route = %route,
        http.request.method = %request.method(),
        url.path = %request.uri().path(),
        http.response.status_code = field::Empty,
        otel.status_code = field::Empty,
    );
    if let Some(parent) = extract_trace_headers(request.headers()) {
        set_parent(&span, &parent);
    }
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    response
}

/// A carrier holding only a `traceparent` value.
struct OneHeader<'a>(&'a str);

impl Extractor for OneHeader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips() {
        let sc = parse_traceparent(PARENT).expect("valid traceparent");
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(format_traceparent(&sc), PARENT);
        assert!(parse_traceparent("00-xyz").is_none());
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        let unsampled =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .expect("valid");
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn disabled_tracing_touches_nothing() {
        let mut headers = HeaderMap::new();
        inject_trace_headers(&mut headers);
        assert!(headers.is_empty());
        assert!(current_traceparent().is_none());
        assert!(span_context(&Span::none()).is_none());
        assert_eq!(link_traceparents(&Span::none(), [PARENT]), 0);
    }

    #[test]
    fn headers_carry_context_in_and_out() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(PARENT));
        let sc = extract_trace_headers(&headers).expect("extracted");
        assert_eq!(format_traceparent(&sc), PARENT);

        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("child");
            set_parent(&span, &sc);
            let own = span_context(&span).expect("valid context");
            assert_eq!(own.trace_id(), sc.trace_id());
            assert_ne!(own.span_id(), sc.span_id());
            let mut out = HeaderMap::new();
            TraceContextPropagator::new()
                .inject_context(&span.context(), &mut HeaderInjector(&mut out));
            assert_eq!(
                out.get(TRACEPARENT).and_then(|v| v.to_str().ok()),
                Some(format_traceparent(&own).as_str())
            );
            let batch = tracing::info_span!("batch");
            let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
            assert_eq!(
                link_traceparents(&batch, [PARENT, "garbage", unsampled, PARENT]),
                2
            );
        });
    }
}
