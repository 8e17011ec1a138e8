//! Real Redis for integration tests: a Redis Cluster of `redis-server`
//! processes (3 masters + 3 replicas by default) or one standalone server, on
//! free loopback ports, in a temporary directory. Everything is stopped
//! (`SIGKILL`) and deleted when the handle is dropped, also when a test panics.
//! No system Redis service is used or needed; `redis-server` and `redis-cli`
//! must be on `PATH` (`apt-get install -y redis-server`, Redis 7).
//!
//! ```ignore
//! mod support;
//! use support::redis_cluster::{RedisCluster, RedisServer};
//!
//! // A dedicated cluster (needed when the test kills nodes):
//! let cluster = RedisCluster::start();              // formed, all slots ok, replicas in sync
//! let seeds: Vec<String> = cluster.seed_urls();     // for `store.redis_urls` (kind `redis-cluster`)
//! let old = cluster.kill_master_of_key("ss:{3}:applied");   // kill -9
//! let new = cluster.wait_for_failover_of_key("ss:{3}:applied", Duration::from_secs(30));
//! cluster.restart_node(old);                        // comes back as a replica
//!
//! // One cluster shared by the non-destructive tests of a test binary; it is
//! // stopped when the last test holding it finishes:
//! let cluster = RedisCluster::shared();
//!
//! // A standalone server:
//! let server = RedisServer::start();
//! let url = server.url();                           // `redis://127.0.0.1:PORT/`
//! ```
//!
//! All functions block (they start processes and poll them): in a
//! `#[tokio::test]` call them before spawning work, or from `spawn_blocking`
//! while async work runs (e.g. killing a master during writes). Node settings:
//! `appendonly yes`, `cluster-node-timeout 2000` (a killed master fails over in
//! ~4 s), no RDB snapshots, diskless replication without delay, replicas pinged
//! every second, and the hash settings swapstats recommends
//! ([`SWAPSTATS_HASH_CONF`]). "Ready" includes `CLUSTER SLOTS` listing every
//! replica, so a client connected afterwards can route reads to replicas.
//!
//! `REDIS_EXTRA_CONF` (env, lines separated by `;`) is appended to every node's
//! config, after the settings above, so a bench can compare server settings in
//! one session, e.g. `REDIS_EXTRA_CONF='hash-max-listpack-value 64'`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What swapstats recommends for its Redis servers (docs/redis-keys.md): a
/// token's period hash with a few buckets (108 bytes each) and wallet-mark
/// fields stays one listpack instead of becoming a hash table: ~20 % less
/// memory per swap and less persist script time (store_persist bench).
/// Kept equal to k8s/redis-cluster.yaml and docker-compose.yml.
pub const SWAPSTATS_HASH_CONF: &str =
    "hash-max-listpack-entries 256\nhash-max-listpack-value 512\n";

/// Highest node port: the cluster bus listens on port + 10000.
const MAX_PORT: u16 = 55_535;
const MIN_PORT: u16 = 20_000;
const BUS_OFFSET: u16 = 10_000;

/// Picks a loopback port that is free, and whose cluster-bus port (+10000) is free too.
fn free_port_pair() -> u16 {
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id().wrapping_mul(2_654_435_761);
        AtomicU16::new(MIN_PORT + (seed % u32::from(MAX_PORT - MIN_PORT)) as u16)
    });
    for _ in 0..20_000 {
        let mut port = next.fetch_add(1, Ordering::Relaxed);
        if !(MIN_PORT..=MAX_PORT).contains(&port) {
            next.store(MIN_PORT + 1, Ordering::Relaxed);
            port = MIN_PORT;
        }
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + BUS_OFFSET) {
            return port;
        }
    }
    panic!("no free loopback port pair found");
}

fn scratch_dir(kind: &str) -> PathBuf {
    static N: AtomicU16 = AtomicU16::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "swapstats-{kind}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

fn require_binaries() {
    for bin in ["redis-server", "redis-cli"] {
        let found = Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(found, Ok(s) if s.success()) {
            panic!("`{bin}` not found on PATH: install it with `apt-get install -y redis-server`");
        }
    }
}

/// Runs one command against `127.0.0.1:port` (1 s timeouts).
pub fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    cmd.query(&mut conn)
}

/// `(command, calls, usec)` of each command in `INFO commandstats` on `port`
/// (commands a script runs count under their own names too; a replica does not
/// count what it applies from its master).
pub fn command_stats(port: u16) -> redis::RedisResult<Vec<(String, u64, u64)>> {
    let info: String = query(port, redis::cmd("INFO").arg("commandstats"))?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| -> u64 {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(key))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            Some((name.to_string(), field("calls="), field("usec=")))
        })
        .collect())
}

fn info_field(text: &str, field: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string())
}

/// One `redis-server` process.
struct Node {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Starts a server with `extra` config lines; retries on a port race.
    fn start(base: &Path, extra: &str) -> Node {
        let mut last_err = String::new();
        for _ in 0..10 {
            let port = free_port_pair();
            let dir = base.join(port.to_string());
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            let conf = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\nlogfile {dir}/redis.log\n\
                 daemonize no\nsave \"\"\nappendonly yes\nappendfsync everysec\n\
                 repl-diskless-sync yes\nrepl-diskless-sync-delay 0\nrepl-ping-replica-period 1\n\
                 loglevel notice\n{SWAPSTATS_HASH_CONF}{extra}{bench}",
                dir = dir.display(),
                bench = std::env::var("REDIS_EXTRA_CONF")
                    .unwrap_or_default()
                    .replace(';', "\n"),
            );
            std::fs::write(dir.join("redis.conf"), conf)
                .unwrap_or_else(|e| panic!("write config: {e}"));
            let mut node = Node {
                port,
                dir,
                child: None,
            };
            match node.spawn() {
                Ok(()) => return node,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    /// Starts (or restarts) the process on its config and waits until it answers.
    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .arg(self.dir.join("redis.conf"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    let log =
                        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    return Err(format!(
                        "redis-server on {} exited with {status}: {tail:?}",
                        self.port
                    ));
                }
            }
            // Answered by our process (not by another one that won a port race)?
            let pid = self.child.as_ref().map(Child::id);
            let info = query::<String>(self.port, redis::cmd("INFO").arg("server"));
            if let Ok(info) = info {
                if info_field(&info, "process_id").and_then(|p| p.parse().ok()) == pid {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!("redis-server on {} did not answer", self.port));
            }
            sleep(Duration::from_millis(20));
        }
    }

    fn alive(&self) -> bool {
        self.child.is_some()
    }

    /// `kill -9`, then reaps the process.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One slot range owner as seen in `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct NodeLine {
    id: String,
    port: u16,
    master: bool,
    failed: bool,
    master_id: Option<String>,
    slots: Vec<(u16, u16)>,
}

fn parse_cluster_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let addr = f[1].split('@').next()?;
            let port = addr.rsplit(':').next()?.parse().ok()?;
            let flags = f[2];
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|x| (x, x)),
                })
                .collect();
            Some(NodeLine {
                id: f[0].to_string(),
                port,
                master: flags.contains("master"),
                failed: flags.contains("fail") && !flags.contains("fail?"),
                master_id: (f[3] != "-").then(|| f[3].to_string()),
                slots,
            })
        })
        .collect()
}

/// A Redis Cluster of real `redis-server` processes; see the module docs.
pub struct RedisCluster {
    dir: PathBuf,
    nodes: Mutex<Vec<Node>>,
    replicas_per_master: usize,
}

impl RedisCluster {
    /// 3 masters with 1 replica each, formed and in sync.
    pub fn start() -> Self {
        Self::start_with(3, 1)
    }

    /// `masters` masters with `replicas_per_master` replicas each, formed and in sync.
    pub fn start_with(masters: usize, replicas_per_master: usize) -> Self {
        require_binaries();
        let dir = scratch_dir("redis-cluster");
        let extra =
            "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 2000\n";
        let count = masters * (1 + replicas_per_master);
        // Built first, so a panic below still stops what started (Drop).
        let cluster = RedisCluster {
            dir,
            nodes: Mutex::new(Vec::new()),
            replicas_per_master,
        };
        for _ in 0..count {
            let node = Node::start(&cluster.dir, extra);
            cluster.lock().push(node);
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(cluster.ports().iter().map(|p| format!("127.0.0.1:{p}")));
        args.extend([
            "--cluster-replicas".into(),
            replicas_per_master.to_string(),
            "--cluster-yes".into(),
        ]);
        let out = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("run redis-cli: {e}"),
        }
        cluster.wait_ready(Duration::from_secs(60));
        cluster
    }

    /// A cluster shared by the tests of this test binary that do not kill
    /// nodes: started by the first caller, stopped when the last holder drops it.
    pub fn shared() -> Arc<RedisCluster> {
        static SHARED: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cluster) = slot.upgrade() {
            return cluster;
        }
        let cluster = Arc::new(RedisCluster::start());
        *slot = Arc::downgrade(&cluster);
        cluster
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Node>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ports of all nodes (live or killed), in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.lock().iter().map(|n| n.port).collect()
    }

    /// [`command_stats`] summed over the nodes whose process runs (a node that
    /// does not answer is left out).
    pub fn command_stats(&self) -> Vec<(String, u64, u64)> {
        let mut totals: Vec<(String, u64, u64)> = Vec::new();
        let per_node = self
            .live_ports()
            .into_iter()
            .filter_map(|p| command_stats(p).ok());
        for (name, calls, usec) in per_node.flatten() {
            match totals.iter_mut().find(|t| t.0 == name) {
                Some(t) => {
                    t.1 += calls;
                    t.2 += usec;
                }
                None => totals.push((name, calls, usec)),
            }
        }
        totals
    }

    /// `used_memory` summed over the masters, and over every node whose
    /// process runs (a node that does not answer counts 0).
    pub fn used_memory(&self) -> (u64, u64) {
        self.sum_by_role("memory", |info| {
            info_field(info, "used_memory")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
    }

    /// CPU seconds (user + system, every thread; not forked children) summed
    /// over the masters, and over every node whose process runs, from `INFO cpu`.
    pub fn cpu_seconds(&self) -> (f64, f64) {
        self.sum_by_role("cpu", |info| {
            ["used_cpu_sys", "used_cpu_user"]
                .iter()
                .filter_map(|name| info_field(info, name).and_then(|v| v.parse::<f64>().ok()))
                .sum()
        })
    }

    /// `value` of each live node's `INFO section`, summed over the masters and
    /// over every node (a node that does not answer reads as an empty section).
    fn sum_by_role<T: std::ops::AddAssign + Default + Copy>(
        &self,
        section: &str,
        value: impl Fn(&str) -> T,
    ) -> (T, T) {
        let info = |port: u16, section: &str| -> String {
            query(port, redis::cmd("INFO").arg(section)).unwrap_or_default()
        };
        let (mut masters, mut all) = (T::default(), T::default());
        for port in self.live_ports() {
            let v = value(&info(port, section));
            all += v;
            if info_field(&info(port, "replication"), "role").as_deref() == Some("master") {
                masters += v;
            }
        }
        (masters, all)
    }

    /// Ports of the nodes whose process runs.
    pub fn live_ports(&self) -> Vec<u16> {
        self.lock()
            .iter()
            .filter(|n| n.alive())
            .map(|n| n.port)
            .collect()
    }

    /// Seed URLs (`redis://127.0.0.1:PORT/`) of all nodes, for
    /// `store.redis_urls` / `SWAPSTATS__STORE__REDIS_URLS` (comma-joined).
    pub fn seed_urls(&self) -> Vec<String> {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }

    /// The data directory of the cluster (node logs are in `<dir>/<port>/redis.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn nodes_view(&self) -> Option<Vec<NodeLine>> {
        self.live_ports().into_iter().find_map(|port| {
            let text: String = query(port, redis::cmd("CLUSTER").arg("NODES")).ok()?;
            Some(parse_cluster_nodes(&text))
        })
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> u16 {
        self.live_ports()
            .into_iter()
            .find_map(|p| query::<u16>(p, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).ok())
            .unwrap_or_else(|| panic!("no live node answers CLUSTER KEYSLOT"))
    }

    /// Port of the master serving `slot`, as a live node sees it.
    pub fn master_of_slot(&self, slot: u16) -> Option<u16> {
        let view = self.nodes_view()?;
        view.iter()
            .find(|n| {
                n.master && !n.failed && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
            })
            .map(|n| n.port)
    }

    /// Port of the master serving `key`.
    pub fn master_of_key(&self, key: &str) -> Option<u16> {
        self.master_of_slot(self.slot_of(key))
    }

    /// Ports of the replicas of the master on `master_port` (as it sees them).
    pub fn replicas_of(&self, master_port: u16) -> Vec<u16> {
        let Ok(text) = query::<String>(master_port, redis::cmd("CLUSTER").arg("NODES")) else {
            return Vec::new();
        };
        let view = parse_cluster_nodes(&text);
        let Some(id) = view
            .iter()
            .find(|n| n.port == master_port)
            .map(|n| n.id.clone())
        else {
            return Vec::new();
        };
        view.iter()
            .filter(|n| n.master_id.as_deref() == Some(id.as_str()))
            .map(|n| n.port)
            .collect()
    }

    /// `kill -9` of the node on `port` (its data directory is kept for a restart).
    pub fn kill_node(&self, port: u16) {
        if let Some(node) = self.lock().iter_mut().find(|n| n.port == port) {
            node.kill();
        }
    }

    /// `kill -9` of the master serving `key`'s slot; returns its port. Does not
    /// wait for the failover (see [`RedisCluster::wait_for_failover_of_key`]).
    pub fn kill_master_of_key(&self, key: &str) -> u16 {
        let port = self
            .master_of_key(key)
            .unwrap_or_else(|| panic!("no master serves {key}"));
        self.kill_node(port);
        port
    }

    /// Same as [`RedisCluster::kill_master_of_key`], for an owned (`let mut`) cluster.
    pub fn kill_master_for_key(&mut self, key: &str) -> u16 {
        self.kill_master_of_key(key)
    }

    /// Restarts a killed node from its data directory; it rejoins the cluster
    /// (a failed-over master comes back as a replica).
    pub fn restart_node(&self, port: u16) {
        let mut nodes = self.lock();
        let node = nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on {port}"));
        if !node.alive() {
            node.spawn().unwrap_or_else(|e| panic!("restart: {e}"));
        }
    }

    /// Waits until a live master other than a killed one serves `key`'s slot
    /// and every live node reports `cluster_state:ok`; returns the new master.
    pub fn wait_for_failover_of_key(&self, key: &str, timeout: Duration) -> u16 {
        let slot = self.slot_of(key);
        let deadline = Instant::now() + timeout;
        loop {
            let live = self.live_ports();
            if let Some(m) = self.master_of_slot(slot) {
                if live.contains(&m) && self.all_ok(&live) {
                    return m;
                }
            }
            if Instant::now() > deadline {
                panic!("no failover of slot {slot} within {timeout:?}");
            }
            sleep(Duration::from_millis(100));
        }
    }

    fn all_ok(&self, ports: &[u16]) -> bool {
        ports.iter().all(|&p| {
            query::<String>(p, redis::cmd("CLUSTER").arg("INFO"))
                .map(|info| {
                    info_field(&info, "cluster_state").as_deref() == Some("ok")
                        && info_field(&info, "cluster_slots_ok").as_deref() == Some("16384")
                })
                .unwrap_or(false)
        })
    }

    /// Waits until all live nodes report `cluster_state:ok`, every master has
    /// its replicas connected and every replica's link is up and synced.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ready() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "redis cluster in {} not ready within {timeout:?}",
                    self.dir.display()
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    fn ready(&self) -> bool {
        let live = self.live_ports();
        if !self.all_ok(&live) {
            return false;
        }
        // Every node's gossip view: all live nodes known, each master with slots
        // has all its replicas.
        let views_agree = live.iter().all(|&p| {
            let Ok(text) = query::<String>(p, redis::cmd("CLUSTER").arg("NODES")) else {
                return false;
            };
            let view = parse_cluster_nodes(&text);
            let known_live = view
                .iter()
                .filter(|n| !n.failed && live.contains(&n.port))
                .count();
            let full = view
                .iter()
                .filter(|n| n.master && !n.failed && !n.slots.is_empty())
                .all(|m| {
                    let replicas = view
                        .iter()
                        .filter(|r| r.master_id.as_deref() == Some(m.id.as_str()))
                        .count();
                    replicas >= self.replicas_per_master.min(live.len().saturating_sub(1))
                });
            known_live == live.len() && full
        });
        if !views_agree {
            return false;
        }
        // CLUSTER SLOTS (what clients route by) lists a replica only once its
        // replication offset is known to be non-zero.
        let slots_list_replicas = live.iter().all(|&p| {
            let Ok(redis::Value::Array(ranges)) =
                query::<redis::Value>(p, redis::cmd("CLUSTER").arg("SLOTS"))
            else {
                return false;
            };
            !ranges.is_empty()
                && ranges.iter().all(|r| match r {
                    // start, end, master, replicas...
                    redis::Value::Array(items) => items.len() >= 3 + self.replicas_per_master,
                    _ => false,
                })
        });
        if !slots_list_replicas {
            return false;
        }
        live.iter().all(|&p| {
            let Ok(info) = query::<String>(p, redis::cmd("INFO").arg("replication")) else {
                return false;
            };
            match info_field(&info, "role").as_deref() {
                Some("master") => {
                    let slaves: usize = info_field(&info, "connected_slaves")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    // A master that has no slots (e.g. an extra node) needs no replica.
                    slaves >= self.replicas_per_master.min(live.len().saturating_sub(1))
                        || self.has_no_slots(p)
                }
                Some("slave") => {
                    info_field(&info, "master_link_status").as_deref() == Some("up")
                        && info_field(&info, "master_sync_in_progress").as_deref() == Some("0")
                }
                _ => false,
            }
        })
    }

    fn has_no_slots(&self, port: u16) -> bool {
        self.nodes_view()
            .is_some_and(|v| v.iter().any(|n| n.port == port && n.slots.is_empty()))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in self.lock().iter_mut() {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One standalone `redis-server` (no cluster), `appendonly yes`.
pub struct RedisServer {
    dir: PathBuf,
    node: Mutex<Node>,
    port: u16,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers.
    pub fn start() -> Self {
        require_binaries();
        let dir = scratch_dir("redis");
        let node = match std::panic::catch_unwind(|| Node::start(&dir, "")) {
            Ok(node) => node,
            Err(panic) => {
                let _ = std::fs::remove_dir_all(&dir);
                std::panic::resume_unwind(panic)
            }
        };
        let port = node.port;
        RedisServer {
            dir,
            node: Mutex::new(node),
            port,
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `kill -9` of the server.
    pub fn kill(&self) {
        self.node.lock().unwrap_or_else(|e| e.into_inner()).kill();
    }

    /// Restarts it on the same port from its data (AOF).
    pub fn restart(&self) {
        let mut node = self.node.lock().unwrap_or_else(|e| e.into_inner());
        if !node.alive() {
            node.spawn().unwrap_or_else(|e| panic!("restart: {e}"));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.node.lock().unwrap_or_else(|e| e.into_inner()).kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
