//! WebSocket fan-out through one router: N clients (default 10,000) subscribed
//! through ONE `swapstats router` to the tokens of ONE shard; reports updates
//! delivered per second (summed over clients) and the delay from a swap's
//! production to its receipt by a client.
//!
//! Run it with an open-file limit well above the number of clients (the bench
//! and the router each hold one socket per client; children inherit the
//! limit). Raise the soft limit to the hard one (or to 65536 where allowed):
//!
//! ```text
//! bash -c 'ulimit -n $(ulimit -Hn); cargo bench --bench ws_fanout'
//! bash -c 'ulimit -n $(ulimit -Hn); SWAPSTATS__WS__COALESCE=10ms cargo bench --bench ws_fanout'
//! ```
//!
//! Topology (`WS_SOURCE`):
//! - `kafka` (default, the real path): librdkafka's mock cluster hosted in this
//!   process → `swapstats produce` (generator, no disorder, no duplicates) →
//!   `swapstats shard` (memory store) → `swapstats router` → clients.
//! - `standalone`: `swapstats standalone` with one partition as the shard (its
//!   built-in generator is the source) → `swapstats router` → clients.
//!
//! Delay: with disorder 0 the generator stamps each swap's block time with the
//! wall clock when it makes it, so `receipt − stats.last_swap_at` is how old the
//! token's newest swap is when the client gets the update (all processes share
//! this machine's clock). `receipt − stats.updated_at` is the part after the
//! shard computed the stats (shard WS → router → client). The shard batches up
//! to `shard.batch_max_delay` (50 ms) while its store is busy (otherwise a
//! batch goes as soon as no more swaps are waiting) and coalesces updates per
//! token to one
//! per `ws.coalesce` (100 ms; the first change after a quiet period goes at
//! once): both hold updates back by design.
//!
//! Knobs (environment): `WS_CLIENTS` (10000), `WS_TOKENS` (pool of the most
//! popular tokens subscriptions are drawn from, 50), `WS_SUBS` (most tokens
//! per client, 3; each client takes 1..=WS_SUBS distinct ones), `WS_RATE`
//! (swaps/s, 1000), `WS_BATCH` (connects in flight, 250), `WS_WARMUP` (s, 5),
//! `WS_MEASURE` (s, 30), `WS_SOURCE`. Every `SWAPSTATS__*` variable is passed
//! on to the shard, router and producer (e.g. `SWAPSTATS__WS__COALESCE=10ms`).

mod common;
#[allow(dead_code)]
#[path = "../tests/support/kafka.rs"]
mod kafka;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The generator's token names: BTC, ETH, SOL, then TKN3, TKN4, ...
fn token_name(i: usize) -> String {
    match i {
        0 => "BTC".into(),
        1 => "ETH".into(),
        2 => "SOL".into(),
        _ => format!("TKN{i}"),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The release binary: next to this bench's profile, else `$CARGO_TARGET_DIR`.
fn binary() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_swapstats"));
    if built.exists() {
        return built;
    }
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    PathBuf::from(dir).join("release").join("swapstats")
}

/// Child processes, killed when dropped (also on a panic).
struct Children {
    logs: PathBuf,
    procs: Vec<(String, Child)>,
}

impl Children {
    fn spawn(&mut self, name: &str, role: &str, env: &[(&str, String)]) {
        let log = std::fs::File::create(self.logs.join(format!("{name}.log"))).expect("log file");
        let err = log.try_clone().expect("log file");
        let mut command = Command::new(binary());
        command
            .arg(role)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.procs.push((name.to_string(), child));
    }

    /// Panics with the log of any child that has exited.
    fn check_alive(&mut self) {
        for (name, child) in &mut self.procs {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.logs.join(format!("{name}.log")))
                    .unwrap_or_default();
                panic!("{name} exited ({status}); its log:\n{log}");
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Plain HTTP GET of `path` on 127.0.0.1:`port` (no client crate needed).
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).await.ok()?;
    let text = String::from_utf8_lossy(&body).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Some((status, body))
}

async fn wait_ready(children: &mut Children, port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, _)) = http_get(port, "/readyz").await {
            return;
        }
        children.check_alive();
        assert!(Instant::now() < deadline, "{what} not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one client saw.
#[derive(Default)]
struct ClientReport {
    /// Measured updates: receipt − last_swap_at, receipt − updated_at (ms).
    e2e: Vec<i32>,
    fanout: Vec<i32>,
    /// Why the connection ended before the bench stopped it.
    closed: Option<String>,
}

/// Global counters, for progress lines.
#[derive(Default)]
struct Counters {
    updates: AtomicU64,
    snapshots: AtomicU64,
    errors: AtomicU64,
    open: AtomicUsize,
    /// Clients whose subscribe was acknowledged, or that failed.
    settled: AtomicUsize,
}

/// Finds `"key":<integer>` in `text` and returns the integer.
fn int_field(text: &str, key: &str) -> Option<i64> {
    let at = text.find(key)? + key.len();
    let rest = &text[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

async fn client(
    url: String,
    tokens: Vec<String>,
    counters: Arc<Counters>,
    mut phase: watch::Receiver<u8>,
) -> Result<ClientReport, String> {
    let mut socket = None;
    for attempt in 0..5 {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((s, _)) => {
                socket = Some(s);
                break;
            }
            Err(e) if attempt == 4 => {
                counters.settled.fetch_add(1, Ordering::Relaxed);
                return Err(format!("connect: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200 << attempt)).await,
        }
    }
    let mut socket = socket.expect("connected");
    let subscribe = serde_json::json!({ "op": "subscribe", "tokens": tokens }).to_string();
    if let Err(e) = socket.send(Message::text(subscribe)).await {
        counters.settled.fetch_add(1, Ordering::Relaxed);
        return Err(format!("subscribe: {e}"));
    }
    counters.open.fetch_add(1, Ordering::Relaxed);
    let mut settled = false;
    let mut report = ClientReport::default();
    // Phase: 0 = warm-up, 1 = measuring, 2 = stop.
    let mut measuring = *phase.borrow() == 1;
    loop {
        tokio::select! {
            changed = phase.changed() => {
                let p = if changed.is_ok() { *phase.borrow() } else { 2 };
                if p >= 2 { break }
                measuring = p == 1;
            }
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let received = now_ms();
                    if !settled {
                        settled = true;
                        counters.settled.fetch_add(1, Ordering::Relaxed);
                    }
                    // Only the head is needed: type, token, updated_at, last_swap_at.
                    let head = &text.as_str()[..text.len().min(256)];
                    if head.starts_with(r#"{"type":"update""#) {
                        counters.updates.fetch_add(1, Ordering::Relaxed);
                        if measuring {
                            if let Some(t) = int_field(head, r#""last_swap_at":"#) {
                                report.e2e.push((received - t) as i32);
                            }
                            if let Some(t) = int_field(head, r#""updated_at":"#) {
                                report.fanout.push((received - t) as i32);
                            }
                        }
                    } else if head.starts_with(r#"{"type":"snapshot""#) {
                        counters.snapshots.fetch_add(1, Ordering::Relaxed);
                    } else if head.starts_with(r#"{"type":"error""#) {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    report.closed = Some(format!("closed by the router: {frame:?}"));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    report.closed = Some(format!("error: {e}"));
                    break;
                }
                None => {
                    report.closed = Some("connection ended".into());
                    break;
                }
            }
        }
    }
    counters.open.fetch_sub(1, Ordering::Relaxed);
    if !settled {
        counters.settled.fetch_add(1, Ordering::Relaxed);
    }
    Ok(report)
}

fn percentile(sorted: &[i32], p: f64) -> i32 {
    if sorted.is_empty() {
        return -1;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(name: &str, mut values: Vec<i32>) {
    values.sort_unstable();
    println!(
        "  {name:<34} n={:<9} p50 {:>5} ms  p90 {:>5} ms  p99 {:>5} ms  p99.9 {:>5} ms  max {:>5} ms  min {:>4} ms",
        values.len(),
        percentile(&values, 50.0),
        percentile(&values, 90.0),
        percentile(&values, 99.0),
        percentile(&values, 99.9),
        values.last().copied().unwrap_or(-1),
        values.first().copied().unwrap_or(-1),
    );
}

/// The `swapstats_ws_*` lines of a process's `/metrics`.
async fn ws_metrics(port: u16) -> Vec<String> {
    match http_get(port, "/metrics").await {
        Some((200, body)) => body
            .lines()
            .filter(|l| l.starts_with("swapstats_ws_"))
            .map(str::to_string)
            .collect(),
        _ => vec!["(no /metrics)".into()],
    }
}

/// (name, pid) of this bench and its children.
fn processes(children: &Children, source: &str) -> Vec<(String, String)> {
    let me = if source == "kafka" {
        "bench (clients + mock Kafka)"
    } else {
        "bench (clients)"
    };
    let mut all = vec![(me.to_string(), "self".to_string())];
    all.extend(
        children
            .procs
            .iter()
            .map(|(name, child)| (name.clone(), child.id().to_string())),
    );
    all
}

fn nofile_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let clients: usize = env_or("WS_CLIENTS", 10_000);
    let pool: usize = env_or("WS_TOKENS", 50);
    let max_subs: usize = env_or("WS_SUBS", 3);
    let rate: u64 = env_or("WS_RATE", 1000);
    let batch: usize = env_or("WS_BATCH", 250);
    let warmup = Duration::from_secs(env_or("WS_WARMUP", 5));
    let measure = Duration::from_secs(env_or("WS_MEASURE", 30));
    let source: String = env_or("WS_SOURCE", "kafka".to_string());
    assert!(
        source == "kafka" || source == "standalone",
        "WS_SOURCE is kafka or standalone"
    );

    let limit = nofile_limit().unwrap_or(0);
    assert!(
        limit as usize > clients + 1000,
        "open-file limit {limit} is too low for {clients} clients: run under `ulimit -n $(ulimit -Hn)`"
    );
    let logs = std::env::temp_dir().join(format!("ws_fanout-{}", std::process::id()));
    std::fs::create_dir_all(&logs).expect("log dir");
    let (shard_port, router_port) = (free_port(), free_port());
    let mut children = Children {
        logs: logs.clone(),
        procs: Vec::new(),
    };
    let coalesce = std::env::var("SWAPSTATS__WS__COALESCE").unwrap_or_else(|_| "100ms".into());
    let batch_delay =
        std::env::var("SWAPSTATS__SHARD__BATCH_MAX_DELAY").unwrap_or_else(|_| "50ms".into());
    println!(
        "ws_fanout: {clients} clients, 1..={max_subs} of the top {pool} tokens each, {rate} swaps/s, \
         source {source}, ws.coalesce {coalesce}, shard.batch_max_delay {batch_delay}, \
         {} cores shared by everything; binary {}; logs in {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        binary().display(),
        logs.display()
    );

    // Generator: block time = wall clock at production (no disorder), no duplicates.
    let generator = [
        ("SWAPSTATS__GENERATOR__RATE", rate.to_string()),
        ("SWAPSTATS__GENERATOR__DISORDER", "0s".to_string()),
        ("SWAPSTATS__GENERATOR__DUP_RATE", "0".to_string()),
    ];
    let shard_addr = ("SWAPSTATS__HTTP__ADDR", format!("127.0.0.1:{shard_port}"));
    let partitions = ("SWAPSTATS__SHARD__PARTITIONS", "1".to_string());
    let _kafka = if source == "kafka" {
        let kafka = kafka::MockKafka::start(1);
        let brokers = ("SWAPSTATS__KAFKA__BROKERS", kafka.bootstrap.clone());
        children.spawn(
            "shard",
            "shard",
            &[
                shard_addr.clone(),
                partitions.clone(),
                ("SWAPSTATS__SHARD__PARTITION", "0".into()),
                ("SWAPSTATS__STORE__KIND", "memory".into()),
                brokers.clone(),
            ],
        );
        wait_ready(&mut children, shard_port, "shard").await;
        let mut env = generator.to_vec();
        env.extend([brokers, partitions.clone()]);
        children.spawn("producer", "produce", &env);
        Some(kafka)
    } else {
        let mut env = generator.to_vec();
        env.extend([shard_addr.clone(), partitions.clone()]);
        children.spawn("shard", "standalone", &env);
        wait_ready(&mut children, shard_port, "standalone shard").await;
        None
    };
    children.spawn(
        "router",
        "router",
        &[
            ("SWAPSTATS__HTTP__ADDR", format!("127.0.0.1:{router_port}")),
            partitions,
            (
                "SWAPSTATS__ROUTER__SHARDS",
                format!("http://127.0.0.1:{shard_port}"),
            ),
            ("SWAPSTATS__STORE__KIND", "memory".into()),
        ],
    );
    wait_ready(&mut children, router_port, "router").await;
    // Let swaps flow and the router's health poll see the shard ready.
    tokio::time::sleep(Duration::from_secs(3)).await;
    children.check_alive();
    match http_get(router_port, "/stats?token=BTC").await {
        Some((200, body)) if body.contains(r#""source":"shard""#) => {}
        other => panic!("the router does not answer BTC from the shard: {other:?}"),
    }

    // Clients, connected in batches.
    let counters = Arc::new(Counters::default());
    let (phase_tx, phase_rx) = watch::channel(0u8);
    let url = format!("ws://127.0.0.1:{router_port}/ws");
    let mut rng = SmallRng::seed_from_u64(7);
    let mut handles = Vec::with_capacity(clients);
    let started = Instant::now();
    let mut subscriptions = 0;
    for chunk_start in (0..clients).step_by(batch.max(1)) {
        let n = batch.min(clients - chunk_start);
        for _ in 0..n {
            let k = rng.random_range(1..=max_subs.clamp(1, pool));
            let mut tokens: Vec<String> = Vec::with_capacity(k);
            while tokens.len() < k {
                let t = token_name(rng.random_range(0..pool));
                if !tokens.contains(&t) {
                    tokens.push(t);
                }
            }
            subscriptions += k;
            handles.push(tokio::spawn(client(
                url.clone(),
                tokens,
                counters.clone(),
                phase_rx.clone(),
            )));
        }
        // Wait for this batch's subscriptions to be acknowledged (or to fail)
        // before the next: the router is not flooded with connects and snapshots.
        let target = handles.len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while counters.settled.load(Ordering::Relaxed) < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let connect_time = started.elapsed();
    let open = counters.open.load(Ordering::Relaxed);
    println!(
        "connected {open} of {clients} clients ({subscriptions} subscriptions) in {:.1} s; snapshots so far {}",
        connect_time.as_secs_f64(),
        counters.snapshots.load(Ordering::Relaxed)
    );
    children.check_alive();

    tokio::time::sleep(warmup).await;
    let before_metrics = ws_metrics(router_port).await;
    let updates_before = counters.updates.load(Ordering::Relaxed);
    let cpu_before: Vec<u64> = processes(&children, &source)
        .iter()
        .map(|(_, pid)| common::cpu_ticks(pid))
        .collect();
    let measure_start = Instant::now();
    phase_tx.send_replace(1);
    let mut last = (measure_start, updates_before);
    while measure_start.elapsed() < measure {
        tokio::time::sleep(
            Duration::from_secs(5).min(measure.saturating_sub(measure_start.elapsed())),
        )
        .await;
        let (now, updates) = (Instant::now(), counters.updates.load(Ordering::Relaxed));
        println!(
            "  t+{:>4.1} s: {:>9.0} updates/s, {} clients open",
            measure_start.elapsed().as_secs_f64(),
            (updates - last.1) as f64 / now.duration_since(last.0).as_secs_f64(),
            counters.open.load(Ordering::Relaxed)
        );
        last = (now, updates);
    }
    let measured = measure_start.elapsed();
    let updates = counters.updates.load(Ordering::Relaxed) - updates_before;
    let open_at_end = counters.open.load(Ordering::Relaxed);
    let cpu: Vec<(String, f64)> = processes(&children, &source)
        .into_iter()
        .zip(cpu_before)
        .map(|((name, pid), before)| {
            let busy = common::cpu_ticks(&pid).saturating_sub(before) as f64 / 100.0;
            (name, 100.0 * busy / measured.as_secs_f64())
        })
        .collect();
    let router_metrics = ws_metrics(router_port).await;
    let shard_metrics = ws_metrics(shard_port).await;
    phase_tx.send_replace(2);

    let mut e2e = Vec::new();
    let mut fanout = Vec::new();
    let mut closed: Vec<String> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    for handle in handles {
        match handle.await {
            Ok(Ok(report)) => {
                e2e.extend(report.e2e);
                fanout.extend(report.fanout);
                closed.extend(report.closed);
            }
            Ok(Err(e)) => failed.push(e),
            Err(e) => failed.push(format!("task: {e}")),
        }
    }
    children.check_alive();

    println!(
        "== result ({source} source, ws.coalesce {coalesce}, shard.batch_max_delay {batch_delay})"
    );
    println!(
        "  clients connected {open} / {clients}, open at the end {open_at_end}, connect failures {}, closed early {}",
        failed.len(),
        closed.len()
    );
    println!(
        "  updates delivered {updates} in {:.1} s = {:.0} updates/s over all clients ({:.1} per client per s)",
        measured.as_secs_f64(),
        updates as f64 / measured.as_secs_f64(),
        updates as f64 / measured.as_secs_f64() / open.max(1) as f64
    );
    summary("swap produced → client (e2e)", e2e);
    summary("stats computed → client (fan-out)", fanout);
    println!(
        "  error messages {}, snapshots {}",
        counters.errors.load(Ordering::Relaxed),
        counters.snapshots.load(Ordering::Relaxed)
    );
    for (what, list) in [("connect failure", &failed), ("closed early", &closed)] {
        let mut reasons: Vec<&String> = list.iter().collect();
        reasons.sort();
        reasons.dedup();
        for r in reasons.iter().take(5) {
            println!("  {what}: {r}");
        }
    }
    let cpu: Vec<String> = cpu
        .iter()
        .map(|(name, pct)| format!("{name} {pct:.0}%"))
        .collect();
    println!(
        "  CPU while measuring (100% = one core): {}",
        cpu.join(", ")
    );
    println!(
        "  router /metrics before measuring: {}",
        before_metrics.join("; ")
    );
    println!(
        "  router /metrics at the end:       {}",
        router_metrics.join("; ")
    );
    println!(
        "  shard  /metrics at the end:       {}",
        shard_metrics.join("; ")
    );
}
