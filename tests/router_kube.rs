//! Kubernetes discovery against a local stand-in of the API server: the real
//! `kube` client and watcher list and watch EndpointSlices over plain HTTP from a
//! small axum server that serves a scripted list and a scripted watch stream.
//! Checks the partition map after each added, modified, deleted and bookmark
//! event, with two slices merged, a failed first list (not synced, backoff),
//! and a `410 Gone` that forces a re-list; and that the router's `/readyz`
//! waits for the first full list.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{json, Value};
use swapstats::config::{Settings, StoreKind};
use swapstats::router::discovery::{spawn_kubernetes_discovery, KubernetesDiscovery};
use swapstats::router::{router_app, RouterConfig, ShardDirectory};
use swapstats::shard::StopFlag;
use tokio::sync::mpsc;

const NAMESPACE: &str = "swap";
const SERVICE: &str = "swapstats-shard";

/// What the stand-in API server serves.
#[derive(Default)]
struct ApiStub {
    /// The list answer: resourceVersion and slices.
    list: Mutex<(String, Vec<Value>)>,
    /// Lists still to fail with a 500.
    failing_lists: AtomicUsize,
    lists: AtomicUsize,
    watches: AtomicUsize,
    /// Feeds the open watch stream, one JSON event per line.
    watch: Mutex<Option<mpsc::UnboundedSender<String>>>,
    /// Label selectors and namespaces the client asked with.
    seen: Mutex<Vec<(String, String)>>,
}

impl ApiStub {
    fn set_list(&self, resource_version: &str, slices: Vec<Value>) {
        *self.list.lock().unwrap() = (resource_version.to_string(), slices);
    }

    /// Sends a watch event; waits for the watcher to have a stream open.
    async fn event(&self, kind: &str, object: Value) {
        let line = json!({ "type": kind, "object": object }).to_string() + "\n";
        for _ in 0..200 {
            if let Some(tx) = self.watch.lock().unwrap().as_ref() {
                if tx.send(line.clone()).is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no watch stream open for {line}");
    }

    /// Ends the open watch stream (as the API server does after an ERROR event).
    fn close_watch(&self) {
        self.watch.lock().unwrap().take();
    }
}

async fn endpointslices(
    State(stub): State<Arc<ApiStub>>,
    Path(namespace): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let selector = params.get("labelSelector").cloned().unwrap_or_default();
    stub.seen.lock().unwrap().push((namespace, selector));
    if params.get("watch").map(String::as_str) == Some("true") {
        stub.watches.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        *stub.watch.lock().unwrap() = Some(tx);
        let lines = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
        });
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(lines))
            .unwrap();
    }
    stub.lists.fetch_add(1, Ordering::SeqCst);
    let failing = stub.failing_lists.load(Ordering::SeqCst);
    if failing > 0 {
        stub.failing_lists.store(failing - 1, Ordering::SeqCst);
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "etcd is having a bad day", "reason": "InternalError", "code": 500});
        return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(status)).into_response();
    }
    let (rv, items) = stub.list.lock().unwrap().clone();
    axum::Json(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSliceList",
        "metadata": { "resourceVersion": rv },
        "items": items,
    }))
    .into_response()
}

/// An EndpointSlice of the shard Service; `endpoints` are (pod, ip, ready).
fn slice(name: &str, rv: u32, endpoints: &[(&str, &str, bool)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(pod, ip, ready)| {
            json!({
                "addresses": [ip],
                "conditions": { "ready": ready, "serving": ready, "terminating": false },
                "targetRef": { "kind": "Pod", "namespace": NAMESPACE, "name": pod },
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "resourceVersion": rv.to_string(),
            "labels": { "kubernetes.io/service-name": SERVICE },
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
    })
}

async fn start_stub(stub: Arc<ApiStub>) -> String {
    let app = axum::Router::new()
        .route(
            "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
            get(endpointslices),
        )
        .with_state(stub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn kube_client(url: &str) -> kube::Client {
    let config = kube::Config::new(url.parse().expect("stub URL"));
    kube::Client::try_from(config).expect("kube client over plain HTTP")
}

type Row = Option<(String, bool)>;

fn rows(dir: &ShardDirectory) -> Vec<Row> {
    let state = dir.state();
    state
        .map
        .iter()
        .map(|(_, e)| e.map(|e| (e.base_url.clone(), e.ready)))
        .collect()
}

fn ready(ip: &str) -> Row {
    Some((format!("http://{ip}:8080"), true))
}

fn not_ready(ip: &str) -> Row {
    Some((format!("http://{ip}:8080"), false))
}

/// Waits until the partition map equals `want` (and discovery is synced).
async fn expect_map(dir: &mut ShardDirectory, want: Vec<Row>, step: &str) {
    let wait = dir.wait_for(|s| {
        s.synced
            && s.map
                .iter()
                .map(|(_, e)| e.map(|e| (e.base_url.clone(), e.ready)))
                .collect::<Vec<_>>()
                == want
    });
    if tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .is_err()
    {
        panic!("{step}: map is {:?}, want {want:?}", rows(dir));
    }
}

fn discovery_config() -> KubernetesDiscovery {
    KubernetesDiscovery {
        namespace: NAMESPACE.into(),
        service: SERVICE.into(),
        port: 8080,
        partitions: 3,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_follows_endpointslices_through_a_relist() {
    let stub = Arc::new(ApiStub::default());
    stub.failing_lists.store(1, Ordering::SeqCst);
    stub.set_list(
        "100",
        vec![slice(
            "shard-a",
            90,
            &[
                ("swapstats-shard-0", "127.0.0.10", true),
                ("swapstats-shard-1", "127.0.0.11", true),
                ("unrelated-pod", "127.0.0.99", true),
            ],
        )],
    );
    let url = start_stub(stub.clone()).await;
    let mut dir = spawn_kubernetes_discovery(kube_client(&url), discovery_config());

    // The first list fails: not synced until the backed-off retry lists.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!dir.is_synced(), "synced before any full list");
    expect_map(
        &mut dir,
        vec![ready("127.0.0.10"), ready("127.0.0.11"), None],
        "initial list",
    )
    .await;
    assert!(
        stub.lists.load(Ordering::SeqCst) >= 2,
        "the failed list was retried"
    );
    {
        let seen = stub.seen.lock().unwrap();
        assert!(seen.iter().all(
            |(ns, sel)| ns == NAMESPACE && sel == "kubernetes.io/service-name=swapstats-shard"
        ));
    }

    // ADDED: a second slice, merged with the first.
    stub.event(
        "ADDED",
        slice("shard-b", 101, &[("swapstats-shard-2", "127.0.0.12", true)]),
    )
    .await;
    expect_map(
        &mut dir,
        vec![
            ready("127.0.0.10"),
            ready("127.0.0.11"),
            ready("127.0.0.12"),
        ],
        "added",
    )
    .await;

    // MODIFIED: shard-0 restarted with a new IP, shard-1 not ready.
    stub.event(
        "MODIFIED",
        slice(
            "shard-a",
            102,
            &[
                ("swapstats-shard-0", "127.0.0.20", true),
                ("swapstats-shard-1", "127.0.0.11", false),
            ],
        ),
    )
    .await;
    expect_map(
        &mut dir,
        vec![
            ready("127.0.0.20"),
            not_ready("127.0.0.11"),
            ready("127.0.0.12"),
        ],
        "modified",
    )
    .await;

    // DELETED: the second slice goes away.
    stub.event(
        "DELETED",
        slice("shard-b", 103, &[("swapstats-shard-2", "127.0.0.12", true)]),
    )
    .await;
    expect_map(
        &mut dir,
        vec![ready("127.0.0.20"), not_ready("127.0.0.11"), None],
        "deleted",
    )
    .await;

    // BOOKMARK: moves the resource version, changes nothing.
    stub.event(
        "BOOKMARK",
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"resourceVersion": "104"}, "addressType": "IPv4", "endpoints": []}),
    )
    .await;

    // 410 Gone: the watcher re-lists; the new list replaces everything (shard-a
    // is gone, a new slice holds all three).
    let lists_before = stub.lists.load(Ordering::SeqCst);
    stub.set_list(
        "200",
        vec![slice(
            "shard-c",
            200,
            &[
                ("swapstats-shard-0", "127.0.0.30", true),
                ("swapstats-shard-1", "127.0.0.31", true),
                ("swapstats-shard-2", "127.0.0.32", false),
            ],
        )],
    );
    stub.event(
        "ERROR",
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "too old resource version: 104 (150)", "reason": "Expired", "code": 410}),
    )
    .await;
    stub.close_watch();
    expect_map(
        &mut dir,
        vec![
            ready("127.0.0.30"),
            ready("127.0.0.31"),
            not_ready("127.0.0.32"),
        ],
        "re-listed after 410",
    )
    .await;
    assert!(
        stub.lists.load(Ordering::SeqCst) > lists_before,
        "410 forced a list"
    );
    assert!(dir.is_synced());

    // And the watch resumes after the re-list.
    stub.event(
        "MODIFIED",
        slice("shard-c", 201, &[("swapstats-shard-2", "127.0.0.32", true)]),
    )
    .await;
    expect_map(
        &mut dir,
        vec![None, None, ready("127.0.0.32")],
        "watch after re-list",
    )
    .await;
    assert!(stub.watches.load(Ordering::SeqCst) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_is_not_ready_before_the_first_full_list() {
    let stub = Arc::new(ApiStub::default());
    stub.failing_lists.store(2, Ordering::SeqCst);
    stub.set_list("1", vec![]);
    let url = start_stub(stub.clone()).await;
    let dir = spawn_kubernetes_discovery(kube_client(&url), discovery_config());

    let mut settings = Settings::defaults();
    settings.shard.partitions = 3;
    settings.store.kind = StoreKind::Memory;
    let app = router_app(
        RouterConfig::from_settings(&settings),
        dir.clone(),
        None,
        StopFlag::default(),
    )
    .expect("router app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let http = reqwest::Client::new();
    let readyz = |http: reqwest::Client, router: String| async move {
        let response = http
            .get(format!("{router}/readyz"))
            .send()
            .await
            .expect("readyz answers");
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.expect("JSON"))
    };
    let (status, body) = readyz(http.clone(), router.clone()).await;
    assert_eq!(
        (status, body["discovery_synced"].as_bool()),
        (503, Some(false)),
        "{body}"
    );
    let (status, _) = readyz(http.clone(), router.clone()).await;
    assert_eq!(status, 503);
    // Liveness does not wait for discovery.
    let health = http
        .get(format!("{router}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = readyz(http.clone(), router.clone()).await;
        if status == 200 {
            assert_eq!(body["store"], "none", "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No shard discovered and no fallback: a token's partition has nothing to ask.
    let response = http
        .get(format!("{router}/stats?token=BTC"))
        .send()
        .await
        .expect("stats");
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = response.json().await.expect("JSON error");
    assert_eq!(body["code"], "unavailable", "{body}");
}
