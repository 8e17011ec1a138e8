//! `/metrics` is valid Prometheus text and its counters move under load.

mod support;

use std::time::Duration;

use support::service::{get_text, metric_sum, parse_prometheus, Service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_under_load() {
    let mut service = Service::start(
        &["standalone"],
        &[
            ("SWAPSTATS__GENERATOR__RATE", "3000".into()),
            ("SWAPSTATS__GENERATOR__DUP_RATE", "0.05".into()),
            ("SWAPSTATS__SHARD__PARTITIONS", "2".into()),
        ],
    );
    service.wait_ok("/healthz", Duration::from_secs(20)).await;
    let (_, ws) = (
        0,
        tokio_tungstenite::connect_async(service.ws_url("?token=BTC"))
            .await
            .expect("ws"),
    );
    let scrape = || async {
        let (status, text) = get_text(&service.url("/metrics")).await.expect("metrics");
        assert_eq!(status, 200);
        parse_prometheus(&text)
    };
    let _ = get_text(&service.url("/stats?token=BTC")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = scrape().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = scrape().await;
    for name in [
        "swapstats_swaps_consumed_total",
        "swapstats_swaps_applied_total",
        "swapstats_batches_total",
        "swapstats_store_calls_total",
    ] {
        assert!(
            metric_sum(&second, name) > metric_sum(&first, name),
            "{name} moves"
        );
    }
    assert!(metric_sum(&second, "swapstats_swaps_duplicate_total") > 0.0);
    assert!(metric_sum(&second, "swapstats_batch_swaps_count") > 0.0);
    assert!(
        metric_sum(
            &second,
            "swapstats_store_call_seconds_count{op=\"persist\"}"
        ) > 0.0
    );
    assert!(
        metric_sum(
            &second,
            "swapstats_http_request_seconds_count{method=\"GET\",route=\"/stats\",status=\"200\"}"
        ) >= 1.0
    );
    assert_eq!(metric_sum(&second, "swapstats_ws_connections"), 1.0);
    assert!(metric_sum(&second, "swapstats_ws_messages_sent_total") > 0.0);
    assert!(second.iter().any(|(s, _)| s
        .starts_with("swapstats_swaps_rejected_total{partition=\"0\",reason=\"malformed\"}")));
    assert!(second
        .iter()
        .any(|(s, _)| s.starts_with("swapstats_consumer_lag{partition=\"1\"}")));
    drop(ws);
}
