//! OpenTelemetry export end to end: the real binary exports spans over
//! OTLP/gRPC to a receiver in the test, and W3C trace context travels through
//! Kafka headers and HTTP headers. The shard's batch → store → WS-push trace is
//! in `otlp_traces_shard.rs` (it needs the Redis Cluster harness).

mod otlp_support;
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use otlp_support::{split_traceparent, ExportedSpan, Receiver};
use support::kafka::MockKafka;
use support::service::{free_port, get_json};

/// A caller's trace context, as a client outside the system would send it.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn caller_traceparent() -> String {
    format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
}

/// Spans are only exported by the batch processor's timer after a minute: what
/// arrives sooner was flushed by the graceful shutdown.
const NO_TIMER_FLUSH: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "60000");

/// `swapstats ARGS` with its log in a file; SIGKILLed on drop.
struct Process {
    child: Child,
    log: std::path::PathBuf,
    port: u16,
}

impl Process {
    fn start(args: &[&str], env: &[(&str, String)]) -> Self {
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("swapstats-otlp-{}-{port}.log", std::process::id()));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_swapstats"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("SWAPSTATS__HTTP__ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info,rdkafka=warn")
            .stdout(Stdio::from(file.try_clone().expect("clone log")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start swapstats");
        Self { child, log, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ok(&mut self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = get_json(&self.url(path)).await {
                return;
            }
            assert!(
                matches!(self.child.try_wait(), Ok(None)),
                "swapstats exited:\n{}",
                self.log()
            );
            assert!(Instant::now() < deadline, "{path} not OK:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then waits for a clean exit (the graceful path that flushes spans).
    async fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "exit after SIGTERM: {status}\n{}",
                    self.log()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Runs `swapstats produce --count 1` against `kafka` to completion.
async fn produce_one(kafka: &MockKafka, otlp_endpoint: Option<&str>) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_swapstats"));
    command
        .args(["produce", "--count", "1"])
        .env("SWAPSTATS__KAFKA__BROKERS", &kafka.bootstrap)
        .env("SWAPSTATS__SHARD__PARTITIONS", "1")
        .env("SWAPSTATS__GENERATOR__RATE", "0")
        .env("SWAPSTATS__GENERATOR__TOKENS", "1")
        .env("HOSTNAME", "producer-pod-0")
        .env(NO_TIMER_FLUSH.0, NO_TIMER_FLUSH.1)
        .env_remove("SWAPSTATS__TELEMETRY__OTLP_ENDPOINT")
        .kill_on_drop(true);
    if let Some(endpoint) = otlp_endpoint {
        command.env("SWAPSTATS__TELEMETRY__OTLP_ENDPOINT", endpoint);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("produce finishes within 60 s")
        .expect("run produce");
    assert!(
        output.status.success(),
        "produce failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The `traceparent` headers of every message on `swaps`/0.
fn kafka_traceparents(kafka: &MockKafka) -> Vec<Option<String>> {
    let messages = tokio::task::block_in_place(|| kafka.read_all("swaps", 0));
    messages
        .into_iter()
        .map(|(_, _, headers)| {
            headers
                .into_iter()
                .find(|(k, _)| k == "traceparent")
                .map(|(_, v)| v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_span_context_travels_in_the_kafka_header() {
    let kafka = MockKafka::start(1);
    let receiver = Receiver::start().await;
    produce_one(&kafka, Some(&receiver.endpoint)).await;

    // Exported by the shutdown flush when `produce` finished (the timer is at 60 s).
    let span = receiver
        .wait_for("the producer span", Duration::from_secs(10), |spans| {
            spans.iter().find(|s| s.name == "kafka.produce").cloned()
        })
        .await;
    assert_eq!(span.service(), "swapstats-producer");
    assert_eq!(
        span.resource.get("k8s.pod.name").map(String::as_str),
        Some("producer-pod-0")
    );
    assert_eq!(span.attr("messaging.system"), Some("kafka"));
    assert_eq!(span.attr("messaging.destination.name"), Some("swaps"));
    assert_eq!(span.attr("token"), Some("BTC"));
    assert!(
        span.parent_span_id.is_empty(),
        "a produced swap starts a trace"
    );

    let headers = kafka_traceparents(&kafka);
    assert_eq!(headers.len(), 1);
    let traceparent = headers[0]
        .clone()
        .expect("the message carries a traceparent header");
    let (trace_id, span_id, flags) = split_traceparent(&traceparent);
    assert_eq!(
        trace_id, span.trace_id,
        "header names the producer span's trace"
    );
    assert_eq!(
        span_id, span.span_id,
        "header names the producer span as parent"
    );
    assert_eq!(flags, "01", "sampled at the default ratio 1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_traced() {
    let kafka = MockKafka::start(1);
    produce_one(&kafka, None).await;
    assert_eq!(
        kafka_traceparents(&kafka),
        vec![None],
        "no span, so no traceparent header"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_exports_http_spans_continuing_the_callers_trace() {
    let receiver = Receiver::start().await;
    let mut standalone = Process::start(
        &["standalone"],
        &[
            (
                "SWAPSTATS__TELEMETRY__OTLP_ENDPOINT",
                receiver.endpoint.clone(),
            ),
            ("SWAPSTATS__GENERATOR__RATE", "20".into()),
            ("SWAPSTATS__LOG__FORMAT", "json".into()),
            ("HOSTNAME", "standalone-pod".into()),
            (NO_TIMER_FLUSH.0, NO_TIMER_FLUSH.1.into()),
        ],
    );
    standalone.wait_ok("/healthz").await;
    // A bad request (no token) answers 400 without touching the engine.
    let response = reqwest::Client::new()
        .get(standalone.url("/stats"))
        .header("traceparent", caller_traceparent())
        .send()
        .await
        .expect("GET /stats");
    assert_eq!(response.status().as_u16(), 400);
    assert!(
        receiver.spans().is_empty(),
        "nothing is exported before the flush"
    );
    standalone.terminate().await;

    let spans = receiver.spans();
    let http: Vec<&ExportedSpan> = spans.iter().filter(|s| s.name == "http.request").collect();
    assert!(
        !http.is_empty(),
        "http.request spans exported on SIGTERM:\n{}",
        standalone.log()
    );
    assert!(http.iter().all(|s| s.service() == "swapstats-standalone"));
    assert!(http
        .iter()
        .all(|s| s.resource.get("k8s.pod.name").map(String::as_str) == Some("standalone-pod")));
    let healthz = http
        .iter()
        .find(|s| s.attr("http.route") == Some("/healthz"))
        .expect("a /healthz span");
    assert_eq!(healthz.attr("http.response.status_code"), Some("200"));
    assert!(
        healthz.parent_span_id.is_empty(),
        "no incoming traceparent: a new trace"
    );
    let stats = http
        .iter()
        .find(|s| s.attr("http.route") == Some("/stats"))
        .expect("a /stats span");
    assert_eq!(stats.attr("http.request.method"), Some("GET"));
    assert_eq!(stats.attr("http.response.status_code"), Some("400"));
    assert_eq!(stats.trace_id, CALLER_TRACE, "the caller's trace continues");
    assert_eq!(
        stats.parent_span_id, CALLER_SPAN,
        "the caller's span is the parent"
    );
}

/// Router → shard: a routed `/stats` is one trace. The router's `http.request`
/// span continues the caller's trace, and its outgoing request to the shard
/// carries `traceparent` (`swapstats::telemetry::inject_trace_headers`), so the
/// shard's `http.request` span is the router span's child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_stats_is_one_trace_across_router_and_shard() {
    let kafka = MockKafka::start(1);
    let receiver = Receiver::start().await;
    let traced = |pod: &str| {
        vec![
            (
                "SWAPSTATS__TELEMETRY__OTLP_ENDPOINT",
                receiver.endpoint.clone(),
            ),
            ("SWAPSTATS__SHARD__PARTITIONS", "1".to_string()),
            ("HOSTNAME", pod.to_string()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".to_string()),
        ]
    };
    let mut shard_env = traced("swapstats-shard-0");
    shard_env.extend([
        ("SWAPSTATS__SHARD__PARTITION", "0".to_string()),
        ("SWAPSTATS__KAFKA__BROKERS", kafka.bootstrap.clone()),
        ("SWAPSTATS__STORE__KIND", "memory".to_string()),
    ]);
    let mut shard = Process::start(&["shard"], &shard_env);
    shard.wait_ok("/healthz").await;
    let mut router_env = traced("swapstats-router-abc");
    router_env.push(("SWAPSTATS__ROUTER__SHARDS", shard.url("")));
    let mut router = Process::start(&["router"], &router_env);
    router.wait_ok("/healthz").await;

    let response = reqwest::Client::new()
        .get(router.url("/stats?token=BTC"))
        .header("traceparent", caller_traceparent())
        .send()
        .await
        .expect("GET /stats through the router");
    assert!(response.status().as_u16() < 500, "{}", router.log());

    let (router_span, shard_span) = receiver
        .wait_for(
            "router and shard /stats spans",
            Duration::from_secs(20),
            |spans| {
                let of = |service: &str| {
                    spans.iter().find(|s| {
                        s.service() == service
                            && s.name == "http.request"
                            && s.attr("http.route") == Some("/stats")
                            && s.trace_id == CALLER_TRACE
                    })
                };
                Some((
                    of("swapstats-router")?.clone(),
                    of("swapstats-shard")?.clone(),
                ))
            },
        )
        .await;
    assert_eq!(router_span.parent_span_id, CALLER_SPAN);
    // The shard's parent is the router's request span or a client span under it.
    let trace: Vec<ExportedSpan> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == CALLER_TRACE)
        .collect();
    let mut ancestor = shard_span.parent_span_id.clone();
    while ancestor != router_span.span_id {
        let parent = trace
            .iter()
            .find(|s| s.span_id == ancestor)
            .expect("the shard span's ancestors are in the trace");
        assert_eq!(
            parent.service(),
            "swapstats-router",
            "only router spans between router and shard"
        );
        ancestor = parent.parent_span_id.clone();
    }
    assert_eq!(
        shard_span
            .resource
            .get("swapstats.partition")
            .map(String::as_str),
        Some("0")
    );
}
