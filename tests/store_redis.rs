//! `RedisStore` against real servers: a 3+3 Redis Cluster and a standalone Redis
//! (see `tests/support/redis_cluster.rs`). Effects are built by hand, not by the
//! window engine.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use support::redis_cluster::{command_stats, query, RedisCluster, RedisServer};
use swapstats::config::{Settings, StoreKind, StoreSettings};
use swapstats::shard::{engine_config, ShardCore, APPLY_CHUNK_SWAPS};
use swapstats::store::codec::encode_batch;
use swapstats::store::{
    keys, sort_effect, PersistBatch, PersistOutcome, RedisStore, RedisStoreOptions, Store,
    StoreError,
};
use swapstats::swap::{Side, Swap};
use swapstats::window::{
    AppliedEvent, BatchEffect, Bucket, BucketDelta, Level, PricePoint, WalletMark, WindowEngine,
};

const TOKENS: &[&str] = &[
    "BTC",
    "ETH",
    "SOL",
    "tok:with:colons",
    "ünïcødé",
    "{brace}",
    "x}y{z",
    "T7",
    "T8",
    "T9",
];
const WALLETS: &[&str] = &["0xaaa", "0xbbb", "w:with:colon", "0xccc"];

async fn cluster_store(cluster: &RedisCluster) -> RedisStore {
    let settings = StoreSettings {
        kind: StoreKind::RedisCluster,
        redis_urls: cluster.seed_urls(),
    };
    RedisStore::connect(&settings)
        .await
        .expect("connect to the cluster")
}

async fn single_store(server: &RedisServer) -> RedisStore {
    let settings = StoreSettings {
        kind: StoreKind::Redis,
        redis_urls: vec![server.url()],
    };
    RedisStore::connect(&settings)
        .await
        .expect("connect to redis")
}

/// A single `redis-server`, started off the async runtime's threads.
async fn start_server() -> RedisServer {
    tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("start redis")
}

fn now_ms() -> i64 {
    swapstats::now_ms()
}

/// Random but valid effects: buckets within the last 2 h (seconds) and 47 h
/// (minutes), wallet marks on those buckets, event ids within 23 h.
struct Gen {
    rng: SmallRng,
    now_ms: i64,
}

impl Gen {
    fn new(seed: u64, now_ms: i64) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            now_ms,
        }
    }

    fn point(&mut self, level: Level, at: i64) -> PricePoint {
        let (start, len) = match level {
            Level::Second => (at * 1000, 1000),
            Level::Minute => (at * 60_000, 60_000),
        };
        // Ties above 2^53 would not survive a Lua number; half of them are.
        let tie = if self.rng.random_bool(0.5) {
            self.rng.random::<u64>()
        } else {
            self.rng.random_range(0..4)
        };
        PricePoint {
            at_ms: start + self.rng.random_range(0..len),
            tie,
            price: self.rng.random::<f64>() * 100.0,
        }
    }

    fn bucket(&mut self, level: Level, at: i64) -> Bucket {
        let buys = self.rng.random_range(0..4u32);
        let sells = self.rng.random_range(if buys == 0 { 1 } else { 0 }..4u32);
        let buy_usd = if buys > 0 {
            self.rng.random::<f64>() * 1e4
        } else {
            0.0
        };
        let sell_usd = if sells > 0 {
            self.rng.random::<f64>() * 1e4
        } else {
            0.0
        };
        let (mut open, mut close) = (self.point(level, at), self.point(level, at));
        if (close.at_ms, close.tie) < (open.at_ms, open.tie) {
            std::mem::swap(&mut open, &mut close);
        }
        let extra = self.rng.random::<f64>() * 10.0;
        Bucket {
            txns: buys + sells,
            buys,
            sells,
            volume_usd: buy_usd + sell_usd,
            buy_volume_usd: buy_usd,
            sell_volume_usd: sell_usd,
            volume_token: self.rng.random::<f64>() * 1e6,
            open,
            close,
            high: open.price.max(close.price) + extra,
            low: (open.price.min(close.price) - extra).max(0.0),
        }
    }

    /// A random bucket of `token` at `at`, as a batch writes it (its own delta).
    fn bucket_delta(&mut self, token: &str, level: Level, at: i64) -> BucketDelta {
        let total = self.bucket(level, at);
        BucketDelta {
            token: token.into(),
            level,
            at,
            delta: total,
            total,
        }
    }

    fn effect(&mut self, buckets: usize, tokens: &[&str]) -> BatchEffect {
        let now_s = self.now_ms / 1000;
        let mut seen = BTreeMap::new();
        let mut effect = BatchEffect::default();
        for _ in 0..buckets {
            let token = tokens[self.rng.random_range(0..tokens.len())];
            let (level, at) = if self.rng.random_bool(0.5) {
                (Level::Second, now_s - self.rng.random_range(0..7000))
            } else {
                (
                    Level::Minute,
                    now_s / 60 - self.rng.random_range(0..47 * 60),
                )
            };
            if seen.insert((token, level_rank(level), at), ()).is_some() {
                continue; // a batch touches a bucket once
            }
            effect.buckets.push(self.bucket_delta(token, level, at));
            let token: Arc<str> = token.into();
            for _ in 0..self.rng.random_range(0..3) {
                let wallet: Arc<str> = WALLETS[self.rng.random_range(0..WALLETS.len())].into();
                let sides = self.rng.random_range(1..=3u8);
                effect.wallets.push(WalletMark {
                    token: token.clone(),
                    wallet: wallet.clone(),
                    level,
                    at,
                    sides,
                });
                // As the engine emits them: the minute's mark too, with some of
                // the second's bits or others (names shared, so the store
                // writes the bits they have in common once).
                if level == Level::Second && self.rng.random_bool(0.5) {
                    effect.wallets.push(WalletMark {
                        token: token.clone(),
                        wallet,
                        level: Level::Minute,
                        at: at.div_euclid(60),
                        sides: self.rng.random_range(1..=3u8),
                    });
                }
            }
        }
        for _ in 0..buckets {
            let executed_at_ms = self.now_ms - self.rng.random_range(0..23 * 3_600_000);
            effect.events.push(AppliedEvent {
                key: self.rng.random(),
                executed_at_ms,
            });
        }
        effect
    }
}

fn level_rank(level: Level) -> u8 {
    match level {
        Level::Second => 0,
        Level::Minute => 1,
    }
}

/// The oracle: what the store holds after all effects, in order: each bucket's
/// last total, each wallet's side bits or-ed; in `sort_effect` order.
fn merge_all(effects: &[BatchEffect]) -> BatchEffect {
    // Keyed by (token, level rank, at[, wallet]).
    type Name = Arc<str>;
    let mut buckets: BTreeMap<(Name, u8, i64), (Level, Bucket)> = BTreeMap::new();
    let mut wallets: BTreeMap<(Name, u8, i64, Name), (Level, u8)> = BTreeMap::new();
    let mut out = BatchEffect::default();
    for e in effects {
        for d in &e.buckets {
            let entry = buckets
                .entry((d.token.clone(), level_rank(d.level), d.at))
                .or_insert((d.level, Bucket::default()));
            entry.1 = d.total;
        }
        for w in &e.wallets {
            let entry = wallets
                .entry((w.token.clone(), level_rank(w.level), w.at, w.wallet.clone()))
                .or_insert((w.level, 0));
            entry.1 |= w.sides;
        }
        out.events.extend(e.events.iter().copied());
    }
    out.buckets = buckets
        .into_iter()
        .map(|((token, _, at), (level, total))| BucketDelta {
            token,
            level,
            at,
            delta: total,
            total,
        })
        .collect();
    out.wallets = wallets
        .into_iter()
        .map(|((token, _, at, wallet), (level, sides))| WalletMark {
            token,
            wallet,
            level,
            at,
            sides,
        })
        .collect();
    sort_effect(&mut out);
    out
}

/// Buckets bit-exact (the store keeps each bucket's last written total), wallet
/// marks and events exact; both compared in `sort_effect` form (a load's order
/// is only by time within each token).
fn assert_effect_eq(actual: &BatchEffect, expected: &BatchEffect) {
    let (mut actual, mut expected) = (actual.clone(), expected.clone());
    sort_effect(&mut actual);
    sort_effect(&mut expected);
    assert_eq!(actual.buckets.len(), expected.buckets.len(), "bucket count");
    for (a, e) in actual.buckets.iter().zip(&expected.buckets) {
        assert_eq!((&a.token, a.level, a.at), (&e.token, e.level, e.at));
        assert_eq!(a.total, e.total, "{} {}", a.token, a.at);
        assert_eq!(a.delta, a.total, "a loaded bucket is its own delta");
    }
    assert_eq!(actual.wallets, expected.wallets, "wallet marks");
    assert_eq!(actual.events, expected.events, "event ids");
}

/// Only `token`'s buckets and wallet marks of `effect`.
fn token_part(effect: &BatchEffect, token: &str) -> BatchEffect {
    BatchEffect {
        buckets: effect
            .buckets
            .iter()
            .filter(|d| &*d.token == token)
            .cloned()
            .collect(),
        wallets: effect
            .wallets
            .iter()
            .filter(|w| &*w.token == token)
            .cloned()
            .collect(),
        events: Vec::new(),
    }
}

/// Persists `effect` as offsets `first..=last`, following offset `first - 1`
/// (contiguous batches), retrying errors (as a shard does); returns the outcome
/// of the attempt that succeeded. Each call takes the next write lane, as a
/// shard's consecutive batches do.
async fn persist_retrying(
    store: &RedisStore,
    partition: u32,
    first: i64,
    last: i64,
    effect: &BatchEffect,
) -> PersistOutcome {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        static LANE: AtomicUsize = AtomicUsize::new(0);
        let batch = PersistBatch {
            partition,
            first_offset: first,
            last_offset: last,
            follows: first - 1,
            effect,
            now_ms: now_ms(),
            lane: LANE.fetch_add(1, Ordering::Relaxed),
        };
        match store.persist(&batch).await {
            Ok(outcome) => return outcome,
            Err(e) if Instant::now() < deadline => {
                eprintln!("persist {partition}/{first}..={last}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("persist kept failing: {e}"),
        }
    }
}

/// `SCRIPT FLUSH` on every port: what a new master after a failover or a
/// restarted server looks like to the store (`NOSCRIPT`).
fn flush_scripts(ports: &[u16]) {
    for &port in ports {
        let _: () = query(port, redis::cmd("SCRIPT").arg("FLUSH")).expect("SCRIPT FLUSH");
    }
}

/// Loads of `partition` counted under `reads` (`direct` or `client`).
fn loads(partition: u32, reads: &str) -> u64 {
    swapstats::telemetry::metrics()
        .store_loads
        .with_label_values(&[partition.to_string().as_str(), reads])
        .get()
}

/// Persist → load round trip, then load_token of every token. The server's
/// script cache is flushed midway and before reading (`NOSCRIPT` paths).
async fn round_trip(store: &RedisStore, partition: u32, ports: &[u16]) {
    let now = now_ms();
    let mut gen = Gen::new(u64::from(partition), now);
    let effects: Vec<BatchEffect> = (0..8).map(|_| gen.effect(60, TOKENS)).collect();
    let mut offset = 0;
    for (i, e) in effects.iter().enumerate() {
        if i == 4 {
            flush_scripts(ports);
        }
        let outcome = persist_retrying(store, partition, offset, offset + 9, e).await;
        assert_eq!(outcome, PersistOutcome::Applied);
        offset += 10;
    }
    // An empty batch still advances the offset.
    let empty = BatchEffect::default();
    assert_eq!(
        persist_retrying(store, partition, offset, offset + 4, &empty).await,
        PersistOutcome::Applied
    );

    let expected = merge_all(&effects);
    flush_scripts(ports);
    let reads = if store.options().direct_reads {
        "direct"
    } else {
        "client"
    };
    let before = loads(partition, reads);
    let restored = store.load(partition, now_ms()).await.expect("load");
    assert_eq!(
        loads(partition, reads),
        before + 1,
        "the load read the token hashes {reads}"
    );
    assert_eq!(restored.applied_offset, Some(offset + 4));
    assert_effect_eq(&restored.effect, &expected);

    flush_scripts(ports);
    for token in TOKENS {
        let want = token_part(&expected, token);
        let got = store
            .load_token(partition, token, now_ms())
            .await
            .expect("load_token");
        match got {
            Some(got) => assert_effect_eq(&got, &want),
            None => assert!(want.buckets.is_empty(), "{token} missing"),
        }
    }
    assert!(store
        .load_token(partition, "never-seen", now_ms())
        .await
        .expect("load_token")
        .is_none());
    let fresh = store
        .load(partition + 1000, now_ms())
        .await
        .expect("load of an empty partition");
    assert_eq!(fresh.applied_offset, None);
    assert!(fresh.effect.is_empty() && fresh.effect.wallets.is_empty());
}

/// Keys of partition `p` on `port` with their serialized value and absolute expiry.
fn dump(port: u16, partition: u32, cluster: bool) -> BTreeMap<Vec<u8>, (Vec<u8>, i64)> {
    let names: Vec<Vec<u8>> = if cluster {
        query(
            port,
            redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(keys::slot(partition))
                .arg(1_000_000),
        )
    } else {
        query(
            port,
            redis::cmd("KEYS").arg(format!("{}*", keys::prefix(partition))),
        )
    }
    .expect("list keys");
    names
        .into_iter()
        .map(|k| {
            let value: Vec<u8> = query(port, redis::cmd("DUMP").arg(&k)).expect("DUMP");
            let expires: i64 = query(port, redis::cmd("PEXPIRETIME").arg(&k)).expect("PEXPIRETIME");
            (k, (value, expires))
        })
        .collect()
}

/// `apply_batch.lua` called directly with `effect`'s arguments (batch 300..=300)
/// broken in different ways: each call fails and the partition is unchanged.
fn malformed_batches_change_nothing(
    store: &RedisStore,
    partition: u32,
    effect: &BatchEffect,
    port: u16,
    cluster: bool,
) {
    let now = now_ms();
    let lifetimes = store.options().lifetimes();
    let args: Vec<Vec<u8>> = encode_batch(partition, 300, effect, now, &lifetimes, &|_, _| false)
        .expect("encode")
        .iter()
        .map(<[u8]>::to_vec)
        .collect();
    let n = args.len();
    assert!(n > 10, "the batch writes a hash and tokens");
    let before = dump(port, partition, cluster);
    let replaced = |i: usize, arg: &[u8]| {
        let mut args = args.clone();
        args[i] = arg.to_vec();
        args
    };
    let broken = [
        ("one argument short", args[..n - 1].to_vec()),
        ("one argument extra", [&args[..], &[b"x".to_vec()]].concat()),
        ("hash count not a number", replaced(0, b"many")),
        ("first expiry not a number", replaced(2, b"soon")),
        ("last token's time not a number", replaced(n - 2, b"later")),
    ];
    for (what, args) in broken {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(include_str!("../lua/apply_batch.lua"))
            .arg(1)
            .arg(keys::applied(partition))
            .arg(300)
            .arg(300)
            .arg(now)
            .arg(lifetimes.index_keep_ms())
            .arg(86_400_000)
            .arg(299);
        for arg in &args {
            cmd.arg(arg.as_slice());
        }
        let err = query::<redis::Value>(port, &cmd).expect_err(what);
        assert!(err.to_string().contains("malformed batch"), "{what}: {err}");
        assert_eq!(dump(port, partition, cluster), before, "{what}");
    }
}

/// A replayed or overlapping batch is refused and changes nothing; so is a
/// batch that does not follow the stored applied offset.
async fn fencing(
    store: &RedisStore,
    partition: u32,
    port_of_partition: impl Fn() -> u16,
    cluster: bool,
) {
    let now = now_ms();
    let mut gen = Gen::new(99 + u64::from(partition), now);
    let a = gen.effect(40, TOKENS);
    let b = gen.effect(40, TOKENS);
    assert_eq!(
        persist_retrying(store, partition, 0, 199, &a).await,
        PersistOutcome::Applied
    );
    assert_eq!(
        persist_retrying(store, partition, 200, 299, &b).await,
        PersistOutcome::Applied
    );
    let before = dump(port_of_partition(), partition, cluster);
    assert!(before.len() > 5, "partition has keys");
    for (first, last) in [(200, 299), (0, 199), (299, 350), (250, 400), (0, 0)] {
        let outcome = persist_retrying(store, partition, first, last, &b).await;
        assert_eq!(
            outcome,
            PersistOutcome::Fenced {
                applied_offset: 299
            },
            "{first}..={last}"
        );
    }
    // Out of order: the batch follows another offset than the stored 299
    // (its predecessor has not landed, or another writer moved on).
    for (follows, first, last) in [(250, 300, 310), (399, 400, 410), (-1, 300, 300)] {
        let batch = PersistBatch {
            partition,
            first_offset: first,
            last_offset: last,
            follows,
            effect: &b,
            now_ms: now_ms(),
            lane: 0,
        };
        assert_eq!(
            store.persist(&batch).await.expect("persist"),
            PersistOutcome::OutOfOrder {
                applied_offset: Some(299)
            },
            "{first}..={last} after {follows}"
        );
    }
    assert_eq!(
        dump(port_of_partition(), partition, cluster),
        before,
        "a fenced or out-of-order batch changed the partition"
    );
    // A partition with nothing applied takes only a batch that follows -1.
    let empty_partition = partition + 500;
    let orphan = PersistBatch {
        partition: empty_partition,
        first_offset: 10,
        last_offset: 19,
        follows: 9,
        effect: &b,
        now_ms: now_ms(),
        lane: 1,
    };
    assert_eq!(
        store.persist(&orphan).await.expect("persist"),
        PersistOutcome::OutOfOrder {
            applied_offset: None
        }
    );
    let nothing = store.load(empty_partition, now_ms()).await.expect("load");
    assert_eq!(nothing.applied_offset, None);
    assert!(nothing.effect.is_empty());
    let restored = store.load(partition, now_ms()).await.expect("load");
    assert_effect_eq(&restored.effect, &merge_all(&[a.clone(), b.clone()]));
    let c = gen.effect(10, TOKENS);
    malformed_batches_change_nothing(store, partition, &c, port_of_partition(), cluster);
    // The next batch goes through.
    assert_eq!(
        persist_retrying(store, partition, 300, 300, &c).await,
        PersistOutcome::Applied
    );
    let restored = store.load(partition, now_ms()).await.expect("load");
    assert_eq!(restored.applied_offset, Some(300));
    assert_effect_eq(&restored.effect, &merge_all(&[a, b, c]));
    // Reversed offsets are a caller bug, not a fence.
    let bad = PersistBatch {
        partition,
        first_offset: 500,
        last_offset: 499,
        follows: 300,
        effect: &BatchEffect::default(),
        now_ms: now,
        lane: 0,
    };
    assert!(matches!(
        store.persist(&bad).await,
        Err(StoreError::InvalidBatch(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_round_trip() {
    let cluster = RedisCluster::shared();
    let store = cluster_store(&cluster).await;
    round_trip(&store, 1, &cluster.live_ports()).await;
}

/// The same round trip with the restore's hash reads going through redis-rs
/// (what TLS URLs use) instead of the store's own connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_round_trip_through_redis_rs() {
    let cluster = RedisCluster::shared();
    let options = RedisStoreOptions {
        direct_reads: false,
        ..RedisStoreOptions::default()
    };
    let store = RedisStore::connect_cluster(&cluster.seed_urls(), options)
        .await
        .expect("connect to the cluster");
    round_trip(&store, 30, &cluster.live_ports()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_round_trip_and_fencing() {
    let server = start_server().await;
    let store = single_store(&server).await;
    // Not partition 1, which cluster_round_trip loads meanwhile: the load
    // counters are per partition.
    round_trip(&store, 11, &[server.port()]).await;
    let port = server.port();
    fencing(&store, 2, || port, false).await;
}

/// A login (ACL user and password) and a database other than 0 in the URL: the
/// store writes and restores there (a restore also reads over its own
/// connections, which must log in and select the same way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_round_trip_with_login_and_database() {
    let server = start_server().await;
    let port = server.port();
    let _: () = query(
        port,
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("loader")
            .arg("on")
            .arg(">secret")
            .arg("~*")
            .arg("+@all"),
    )
    .expect("ACL SETUSER");
    let store = RedisStore::connect_single(
        &format!("redis://loader:secret@127.0.0.1:{port}/2"),
        RedisStoreOptions::default(),
    )
    .await
    .expect("connect as loader");
    round_trip(&store, 3, &[port]).await;
    let in_db0: i64 = query(port, &redis::cmd("DBSIZE")).expect("DBSIZE");
    assert_eq!(in_db0, 0, "everything went to database 2");
    // The load read over connections of its own (logged in): the redis-rs
    // fallback would open none, and would pass every check above too.
    let connections = || -> u64 {
        let info: String = query(port, redis::cmd("INFO").arg("stats")).expect("INFO stats");
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("total_connections_received")
    };
    let before = connections();
    let restored = store.load(3, now_ms()).await.expect("load");
    assert!(!restored.effect.buckets.is_empty(), "the round trip's data");
    // `connections()` itself opens one connection per call.
    assert!(
        connections() >= before + 2,
        "the load opened a direct reader"
    );
}

/// A load reads a token's periods only up to its newest block time in the token
/// index: tokens whose last swap is 30 h, 100 min and 0 s old all come back
/// whole, from either end of their range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_finds_quiet_tokens_whole() {
    let server = start_server().await;
    let store = single_store(&server).await;
    let now = now_ms();
    let (now_s, now_m) = (now / 1000, now / 60_000);
    let mut gen = Gen::new(5, now);
    let mut effect = BatchEffect::default();
    for (token, level, at) in [
        ("OLD", Level::Minute, now_m - 30 * 60),
        ("OLD", Level::Minute, now_m - 40 * 60),
        ("MID", Level::Second, now_s - 100 * 60),
        ("MID", Level::Minute, now_m - 100),
        ("MID", Level::Minute, now_m - 46 * 60),
        ("NEW", Level::Second, now_s),
        ("NEW", Level::Second, now_s - 7000),
        ("NEW", Level::Minute, now_m),
    ] {
        effect.buckets.push(gen.bucket_delta(token, level, at));
        effect.wallets.push(WalletMark {
            token: token.into(),
            wallet: "0xaaa".into(),
            level,
            at,
            sides: 1,
        });
    }
    assert_eq!(
        persist_retrying(&store, 4, 0, 0, &effect).await,
        PersistOutcome::Applied
    );
    let expected = merge_all(std::slice::from_ref(&effect));
    let restored = store.load(4, now_ms()).await.expect("load");
    assert_effect_eq(&restored.effect, &expected);
    for token in ["OLD", "MID", "NEW"] {
        let got = store
            .load_token(4, token, now_ms())
            .await
            .expect("load_token")
            .expect("token has data");
        assert_effect_eq(&got, &token_part(&expected, token));
    }
}

/// The token index gets a token once per hour of data: later batches of the
/// same hour leave it out (no `ZADD`), a new token or a load (which forgets
/// what the process wrote) brings it back, and a load still finds everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_index_is_written_once_an_hour() {
    let server = start_server().await;
    let store = single_store(&server).await;
    let port = server.port();
    let partition = 6;
    let now_s = now_ms() / 1000;
    let mut gen = Gen::new(6, now_ms());
    let mut batch = |tokens: &[&str], second: i64| {
        let mut effect = BatchEffect::default();
        for &token in tokens {
            effect
                .buckets
                .push(gen.bucket_delta(token, Level::Second, second));
        }
        effect
    };
    // Every bucket in the hour of `now_s`: the same index score throughout.
    let hour_start = now_s - now_s.rem_euclid(3600);
    let effects = [
        batch(&["A", "B"], hour_start),
        batch(&["A"], hour_start + 1),
        batch(&["A", "C"], hour_start + 2),
        batch(&["A"], hour_start + 3),
    ];
    let zadds = || command_calls(port, "zadd");
    let mut calls = Vec::new();
    for (offset, effect) in effects.iter().enumerate() {
        if offset == 3 {
            store.load(partition, now_ms()).await.expect("load");
        }
        let before = zadds();
        let offset = offset as i64;
        assert_eq!(
            persist_retrying(&store, partition, offset, offset, effect).await,
            PersistOutcome::Applied
        );
        calls.push(zadds() - before);
    }
    assert_eq!(
        calls,
        [1, 0, 1, 1],
        "ZADDs per batch: new, known, one new, after a load"
    );
    let index: Vec<(String, i64)> = query(
        port,
        redis::cmd("ZRANGE")
            .arg(keys::tokens(partition))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES"),
    )
    .expect("ZRANGE");
    let end_of_hour = (hour_start + 3600) * 1000 - 1;
    assert_eq!(
        index,
        [
            ("A".to_string(), end_of_hour),
            ("B".to_string(), end_of_hour),
            ("C".to_string(), end_of_hour)
        ]
    );
    let restored = store.load(partition, now_ms()).await.expect("load");
    assert_effect_eq(&restored.effect, &merge_all(&effects));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_fencing_changes_nothing() {
    let cluster = RedisCluster::shared();
    let store = cluster_store(&cluster).await;
    let partition = 2;
    let master = || {
        cluster
            .master_of_slot(keys::slot(partition))
            .expect("master of the partition")
    };
    fencing(&store, partition, master, true).await;
}

/// Partitions land in different slots (and on different masters); each
/// partition's keys all sit in its one slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_partition_keys_share_one_slot() {
    let cluster = RedisCluster::shared();
    let store = cluster_store(&cluster).await;
    let partitions: Vec<u32> = (10..22).collect();
    let mut gen = Gen::new(7, now_ms());
    for &p in &partitions {
        let e = gen.effect(20, TOKENS);
        assert_eq!(
            persist_retrying(&store, p, 0, 0, &e).await,
            PersistOutcome::Applied
        );
    }
    let slots: std::collections::BTreeSet<u16> =
        partitions.iter().map(|&p| keys::slot(p)).collect();
    assert_eq!(slots.len(), partitions.len(), "partitions share a slot");
    let masters: std::collections::BTreeSet<u16> = partitions
        .iter()
        .filter_map(|&p| cluster.master_of_slot(keys::slot(p)))
        .collect();
    assert!(masters.len() > 1, "all partitions on one master");

    let all_masters: Vec<u16> = cluster
        .live_ports()
        .into_iter()
        .filter(|&port| cluster.replicas_of(port).len() == 1)
        .collect();
    for &p in &partitions {
        let slot = keys::slot(p);
        let mut found = 0;
        for &port in &all_masters {
            let names: Vec<String> = query(
                port,
                redis::cmd("KEYS").arg(format!("{}*", keys::prefix(p))),
            )
            .expect("KEYS");
            for name in &names {
                let s: u16 =
                    query(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(name)).expect("KEYSLOT");
                assert_eq!(s, slot, "{name}");
                assert_eq!(
                    cluster.master_of_slot(slot),
                    Some(port),
                    "{name} on the wrong node"
                );
            }
            found += names.len();
        }
        let counted: usize = query(
            cluster.master_of_slot(slot).expect("master"),
            redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot),
        )
        .expect("COUNTKEYSINSLOT");
        assert!(
            found > 5 && found == counted,
            "partition {p}: {found} keys, {counted} in slot"
        );
    }
}

/// Every key carries a TTL bounded by retention; data older than retention is not written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_every_key_has_a_ttl() {
    let cluster = RedisCluster::shared();
    let store = cluster_store(&cluster).await;
    let partition = 3;
    let now = now_ms();
    let mut effect = Gen::new(3, now).effect(50, TOKENS);
    let mut gen = Gen::new(4, now);
    // Beyond retention (default 48 h) even for a day key, which lives until
    // its day's end + retention + margin: 4 days back, not 3 (3 days back is
    // still in a live key for the first minutes after midnight UTC).
    let old_minute = now / 60_000 - 4 * 24 * 60;
    effect.buckets.push(BucketDelta {
        token: "ancient".into(),
        level: Level::Minute,
        at: old_minute,
        delta: gen.bucket(Level::Minute, old_minute),
        total: gen.bucket(Level::Minute, old_minute),
    });
    effect.events.push(AppliedEvent {
        key: 42,
        executed_at_ms: now - 3 * 86_400_000,
    });
    assert_eq!(
        persist_retrying(&store, partition, 0, 0, &effect).await,
        PersistOutcome::Applied
    );

    let port = cluster
        .master_of_slot(keys::slot(partition))
        .expect("master");
    let d = dump(port, partition, true);
    let opts = store.options();
    let max_ttl_ms =
        (opts.retention + opts.ttl_margin + Duration::from_secs(86_400)).as_millis() as i64;
    for (name, (_, expires_at)) in &d {
        let name = String::from_utf8_lossy(name);
        assert!(*expires_at > now, "{name} has no TTL ({expires_at})");
        if !name.ends_with(":applied") {
            assert!(*expires_at - now <= max_ttl_ms, "{name} lives too long");
        }
        assert!(
            !name.contains("ancient"),
            "{name}: data beyond retention was written"
        );
    }
    assert!(
        !d.contains_key(keys::events(partition, (now - 3 * 86_400_000) / keys::HOUR_MS).as_bytes())
    );
    let restored = store.load(partition, now_ms()).await.expect("load");
    assert!(restored
        .effect
        .buckets
        .iter()
        .all(|b| &*b.token != "ancient"));
    assert!(restored.effect.events.iter().all(|e| e.key != 42));
}

/// A shard batch larger than one engine part (`APPLY_CHUNK_SWAPS`) is applied
/// part by part and persisted as one effect (each bucket once: the encoder
/// stops on a repeat in debug builds): every key it writes has its TTL, and a
/// restore of what the store holds answers what the shard answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_batch_of_several_engine_parts_persists_whole() {
    let cluster = RedisCluster::shared();
    let store = cluster_store(&cluster).await;
    let partition = 8;
    let now = now_ms();
    let config = engine_config(&Settings::default());
    let core = ShardCore::new(partition, config.clone(), Arc::default());
    let n = APPLY_CHUNK_SWAPS + 3_000;
    let mut rng = SmallRng::seed_from_u64(8);
    let swaps: Vec<Swap> = (0..n)
        .map(|i| Swap {
            event_id: format!("e{i}"),
            token: TOKENS[rng.random_range(0..TOKENS.len())].to_string(),
            wallet: Some(format!("w{}", rng.random_range(0..500))),
            side: if rng.random_bool(0.5) {
                Side::Buy
            } else {
                Side::Sell
            },
            amount: rng.random::<f64>() * 10.0,
            usd: rng.random::<f64>() * 1e3,
            rate: 1.0 + rng.random::<f64>(),
            created_at_ms: None,
            // Every part touches the same seconds and minutes.
            executed_at_ms: now - rng.random_range(0..120_000),
        })
        .collect();
    let (effect, counts) = core.apply_batch(&swaps, now);
    assert_eq!(counts.applied, n as u64);
    assert_eq!(
        persist_retrying(&store, partition, 0, n as i64 - 1, &effect).await,
        PersistOutcome::Applied
    );

    let port = cluster
        .master_of_slot(keys::slot(partition))
        .expect("master");
    for (name, (_, expires_at)) in &dump(port, partition, true) {
        let name = String::from_utf8_lossy(name);
        assert!(*expires_at > now, "{name} has no TTL ({expires_at})");
    }
    let restored = store.load(partition, now_ms()).await.expect("load");
    assert_eq!(restored.applied_offset, Some(n as i64 - 1));
    let mut engine = WindowEngine::new(config);
    engine.restore(&restored.effect);
    for token in TOKENS {
        let (Some(shard), Some(store)) = (core.stats(token, now), engine.stats(token, now)) else {
            panic!("{token}: missing");
        };
        for (name, w) in &shard.windows.0 {
            let r = store.windows.get(name).expect("window");
            for (a, b) in [(&r.current, &w.current), (&r.previous, &w.previous)] {
                assert_eq!(
                    (a.txns, a.unique_wallets, a.unique_buyers, a.unique_sellers),
                    (b.txns, b.unique_wallets, b.unique_buyers, b.unique_sellers),
                    "{token} {name}"
                );
                assert!(
                    (a.volume_usd - b.volume_usd).abs() <= 1e-9 * b.volume_usd.max(1.0),
                    "{token} {name}"
                );
            }
        }
    }
}

/// A key the script creates gets its expiry whatever the batch holds: even a
/// hash field named twice (the encoder never sends one; debug builds stop on
/// it) leaves no key that lives forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_hash_gets_its_expiry_even_with_a_field_named_twice() {
    let server = start_server().await;
    let port = server.port();
    let partition = 12;
    let now = now_ms();
    let key = keys::seconds(partition, "T", now / keys::HOUR_MS);
    let expire_at = now + 3 * keys::HOUR_MS;
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(include_str!("../lua/apply_batch.lua"))
        .arg(1)
        .arg(keys::applied(partition))
        .arg(0) // first offset
        .arg(0) // last offset
        .arg(now)
        .arg(86_400_000) // index keep
        .arg(86_400_000) // applied keep
        .arg(-1) // follows: the partition's first batch
        .arg(1) // one hash, two fields, the same one twice
        .arg(&key)
        .arg(expire_at)
        .arg(2)
        .arg("17")
        .arg("first")
        .arg("17")
        .arg("second")
        .arg(0) // no event strings
        .arg(0); // no tokens
    let reply: Vec<redis::Value> = query(port, &cmd).expect("apply_batch");
    assert_eq!(reply.first(), Some(&redis::Value::Int(1)), "applied");
    let value: String = query(port, redis::cmd("HGET").arg(&key).arg("17")).expect("HGET");
    assert_eq!(value, "second");
    let expires: i64 = query(port, redis::cmd("PEXPIRETIME").arg(&key)).expect("PEXPIRETIME");
    assert_eq!(expires, expire_at, "{key} has no expiry");
}

fn command_calls(port: u16, command: &str) -> u64 {
    command_stats(port)
        .expect("INFO commandstats")
        .into_iter()
        .find(|(name, _, _)| name == command)
        .map_or(0, |(_, calls, _)| calls)
}

/// The router's fallback read runs on a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_load_token_reads_a_replica() {
    let cluster = RedisCluster::shared();
    let store = cluster_store(&cluster).await;
    let partition = 4;
    let e = Gen::new(5, now_ms()).effect(30, &["BTC"]);
    assert_eq!(
        persist_retrying(&store, partition, 0, 0, &e).await,
        PersistOutcome::Applied
    );
    let master = cluster
        .master_of_slot(keys::slot(partition))
        .expect("master");
    let replica = cluster.replicas_of(master)[0];
    let read_calls = |port| command_calls(port, "evalsha_ro") + command_calls(port, "eval_ro");
    let (master_before, replica_before) = (read_calls(master), read_calls(replica));
    for _ in 0..3 {
        let got = store
            .load_token(partition, "BTC", now_ms())
            .await
            .expect("load_token")
            .expect("BTC persisted");
        assert_effect_eq(&got, &merge_all(&[token_part(&e, "BTC")]));
    }
    assert_eq!(
        read_calls(master),
        master_before,
        "load_token ran on the master"
    );
    assert!(
        read_calls(replica) >= replica_before + 3,
        "load_token did not run on the replica"
    );
}

/// `kill -9` of the partition's master while batches are being persisted: after
/// the failover every batch is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_applies_every_batch_exactly_once() {
    let cluster = std::sync::Arc::new(
        tokio::task::spawn_blocking(RedisCluster::start)
            .await
            .expect("start cluster"),
    );
    let store = cluster_store(&cluster).await;
    let partition = 5;
    let applied_key = keys::applied(partition);
    let now = now_ms();
    let mut gen = Gen::new(11, now);
    let effects: Vec<BatchEffect> = (0..60).map(|_| gen.effect(40, TOKENS)).collect();

    let (killed_tx, mut killed_rx) = tokio::sync::oneshot::channel();
    let killer = {
        let cluster = cluster.clone();
        let key = applied_key.clone();
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(300));
            let old = cluster.kill_master_of_key(&key);
            let _ = killed_tx.send(old);
            let new = cluster.wait_for_failover_of_key(&key, Duration::from_secs(30));
            (old, new)
        })
    };

    let (mut applied, mut fenced) = (0, 0);
    let mut restarted = false;
    let mut old_master = None;
    let started = Instant::now();
    for (i, e) in effects.iter().enumerate() {
        let first = i as i64 * 10;
        match persist_retrying(&store, partition, first, first + 9, e).await {
            PersistOutcome::Applied => applied += 1,
            // A retry of a batch whose first attempt landed.
            PersistOutcome::Fenced { applied_offset } => {
                assert_eq!(
                    applied_offset,
                    first + 9,
                    "batch {i} fenced by a later offset"
                );
                fenced += 1;
            }
            PersistOutcome::OutOfOrder { applied_offset } => {
                panic!("batch {i} out of order after {applied_offset:?}")
            }
        }
        if old_master.is_none() {
            old_master = killed_rx.try_recv().ok();
        }
        // Bring the old master back (as a replica) for the last batches.
        if i == 45 && !restarted {
            if let Some(old) = old_master {
                let c = cluster.clone();
                tokio::task::spawn_blocking(move || c.restart_node(old))
                    .await
                    .expect("restart");
                restarted = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (old, new) = killer.await.expect("killer");
    assert_ne!(old, new);
    eprintln!(
        "failover {old} -> {new}: {applied} applied, {fenced} fenced retries, {:?}",
        started.elapsed()
    );
    assert_eq!(applied + fenced, effects.len());

    let restored = store
        .load(partition, now_ms())
        .await
        .expect("load after failover");
    assert_eq!(restored.applied_offset, Some(effects.len() as i64 * 10 - 1));
    assert_effect_eq(&restored.effect, &merge_all(&effects));
    // A replay of the whole stream is fenced batch by batch.
    for (i, e) in effects.iter().enumerate().take(3) {
        let first = i as i64 * 10;
        let outcome = persist_retrying(&store, partition, first, first + 9, e).await;
        assert!(matches!(outcome, PersistOutcome::Fenced { .. }));
    }
    // load_token still works with the new topology.
    let got = store
        .load_token(partition, "BTC", now_ms())
        .await
        .expect("load_token")
        .expect("BTC");
    assert_effect_eq(&got, &token_part(&restored.effect, "BTC"));
}

/// Not a timed test: measures persist calls/s for a large batch and load time
/// for 10,000 tokens. `cargo test --test store_redis -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn perf_persist_and_load() {
    let cluster = RedisCluster::shared();
    let store = cluster_store(&cluster).await;
    let partition = 7;
    let now = now_ms();
    let mut gen = Gen::new(21, now);
    let tokens: Vec<String> = (0..10_000).map(|i| format!("TOKEN{i:05}")).collect();

    // A 5000-swap batch: ~5000 second + minute bucket deltas over 1000 tokens,
    // ~5000 wallet marks, 5000 event ids.
    let big = |gen: &mut Gen, offset: usize| {
        let names: Vec<&str> = tokens[offset..offset + 1000]
            .iter()
            .map(String::as_str)
            .collect();
        let mut e = gen.effect(5000, &names);
        e.events.truncate(5000);
        e
    };
    let batches: Vec<BatchEffect> = (0..10).map(|i| big(&mut gen, i * 1000)).collect();
    let master = cluster
        .master_of_slot(keys::slot(partition))
        .expect("master");
    let usec = |port| {
        let info: String = query(port, redis::cmd("INFO").arg("commandstats")).expect("INFO");
        info.lines()
            .filter_map(|l| {
                l.split_once("usec=")
                    .and_then(|(_, r)| r.split(',').next()?.parse::<u64>().ok())
            })
            .sum::<u64>()
    };
    let before = usec(master);
    let started = Instant::now();
    for (i, e) in batches.iter().enumerate() {
        let first = i as i64 * 5000;
        assert_eq!(
            persist_retrying(&store, partition, first, first + 4999, e).await,
            PersistOutcome::Applied
        );
    }
    let elapsed = started.elapsed();
    eprintln!(
        "persist: {} batches of ~{} bucket deltas / {} wallet marks / {} events: {:.1} calls/s ({:?} each)",
        batches.len(),
        batches[0].buckets.len(),
        batches[0].wallets.len(),
        batches[0].events.len(),
        batches.len() as f64 / elapsed.as_secs_f64(),
        elapsed / batches.len() as u32
    );
    eprintln!(
        "persist: redis busy {} ms per batch",
        (usec(master) - before) / 1000 / batches.len() as u64
    );

    let before = usec(master);
    let started = Instant::now();
    let restored = store.load(partition, now_ms()).await.expect("load");
    eprintln!("load: redis busy {} ms", (usec(master) - before) / 1000);
    let n_tokens: std::collections::BTreeSet<&str> =
        restored.effect.buckets.iter().map(|b| &*b.token).collect();
    eprintln!(
        "load: {} tokens, {} buckets, {} wallet marks, {} events in {:?}",
        n_tokens.len(),
        restored.effect.buckets.len(),
        restored.effect.wallets.len(),
        restored.effect.events.len(),
        started.elapsed()
    );
    let expected = merge_all(&batches);
    assert_effect_eq(&restored.effect, &expected);
    let started = Instant::now();
    for t in tokens.iter().take(200) {
        let _ = store
            .load_token(partition, t, now_ms())
            .await
            .expect("load_token");
    }
    eprintln!(
        "load_token: {:?} per call, one at a time",
        started.elapsed() / 200
    );
}
