//! [`RedisStore`]: batches persisted to a single Redis or to Redis Cluster.
//!
//! * `persist` is one `EVALSHA` of `lua/apply_batch.lua` per batch: fence and
//!   order check, every bucket merge, wallet mark, event id, token index update
//!   and the new applied offset, atomically (invariants 2 and 3). It goes over
//!   the batch's write lane, so the next batch's script can run while this one
//!   waits for its replica. When the partition's
//!   master has replicas, `WAIT 1 <replica_ack_timeout>` follows in the same
//!   pipeline (same connection, same node), and `persist` only succeeds once a
//!   replica has the batch: a batch reported as persisted survives a failover
//!   (otherwise the shard would commit a Kafka offset for a write that the
//!   promoted replica never saw). A fenced reply is acknowledged the same way,
//!   so "fenced" after a retry also means "the earlier attempt is replicated".
//! * `load` reads the applied offset, the token index and the event ids in one
//!   pipeline, then every token's hashes (`HGETALL`) in pipelines, all on the
//!   slot's master; it re-reads the applied offset at the end and starts over if
//!   a batch landed meanwhile, so the result is one consistent state. The token
//!   hashes are read over plain connections of its own ([`super::hash_reader`]:
//!   redis-rs's per-element reply values cost a quarter of a restart's CPU),
//!   and through redis-rs when those cannot be had (TLS).
//! * `load_token` runs `read_token.lua` with `EVALSHA_RO` on a replica (Redis
//!   Cluster), falling back to the master when no replica answers.
//! * `NOSCRIPT` (a new master after a failover, a restarted server) is answered
//!   by sending the script itself (`EVAL` / `EVAL_RO`), which also caches it.
//!
//! Key layout and TTLs: `docs/redis-keys.md` and [`super::keys`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_read_routing::RandomReplicaStrategy;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisError, RedisResult, Value};

use super::codec::{
    decode_bucket, decode_events, decode_marks, encode_batch, mark_sides, KeyLifetimes,
};
use super::hash_reader::{hgetall_pipeline, HashReader, NodeAddr};
use super::index_scores::IndexScores;
use super::keys::{self, DAY_MS, HOUR_MS};
use super::{PersistBatch, PersistOutcome, Restored, Store, StoreError};
use crate::config::{IngestSettings, StoreKind, StoreSettings};
use crate::window::{BatchEffect, BucketDelta, Level, WalletMark};

const APPLY_BATCH_LUA: &str = include_str!("../../lua/apply_batch.lua");
const READ_TOKEN_LUA: &str = include_str!("../../lua/read_token.lua");

/// Tokens per `load` pipeline, and pipelines in flight at once.
const LOAD_CHUNK: usize = 256;
const LOAD_PARALLEL: usize = 4;
/// How often `load` starts over when batches keep landing while it reads.
const LOAD_ATTEMPTS: usize = 5;
/// Keys read past "now": block times may be slightly in the future (the
/// allowed skew), and a reader's clock may lag the writer's.
const FUTURE_SLACK_MS: i64 = 5 * 60 * 1000;

/// Retention, TTL and replication parameters of a [`RedisStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStoreOptions {
    /// How long second buckets and second-level wallet marks are kept after their
    /// second (windows up to 1 h and their previous window: 2 h).
    pub second_keep: Duration,
    /// How long minute buckets and minute-level wallet marks are kept
    /// (`ingest.retention`).
    pub retention: Duration,
    /// How long applied event ids are kept after their block time
    /// (`ingest.dedup_horizon`).
    pub dedup_horizon: Duration,
    /// Added to every TTL: clock skew between shards and a little slack.
    pub ttl_margin: Duration,
    /// TTL of the applied offset, refreshed by every batch. Long, because it is
    /// the fence; one small key per partition.
    pub applied_keep: Duration,
    /// How long `persist` waits for one replica to acknowledge a batch (when the
    /// master has replicas) before failing with [`StoreError::NotReplicated`].
    pub replica_ack_timeout: Duration,
    /// Client retries of one call (reconnects, redirections), before the error
    /// reaches the caller (who retries the batch).
    pub retries: u32,
    /// Connect and response timeout of one attempt.
    pub timeout: Duration,
    /// Whether `load` reads the token hashes over plain connections of the
    /// store's own ([`super::hash_reader`], much less CPU per field) rather
    /// than through redis-rs. Only plain TCP URLs can; TLS always goes through
    /// redis-rs, and so does a load whose direct connection fails.
    pub direct_reads: bool,
}

impl Default for RedisStoreOptions {
    fn default() -> Self {
        Self::from_ingest(&IngestSettings::default())
    }
}

impl RedisStoreOptions {
    /// Options with retention and dedup horizon taken from `ingest.*`.
    pub fn from_ingest(ingest: &IngestSettings) -> Self {
        Self {
            second_keep: Duration::from_secs(2 * 3600),
            retention: ingest.retention,
            dedup_horizon: ingest.dedup_horizon,
            ttl_margin: Duration::from_secs(600),
            applied_keep: Duration::from_secs(30 * 24 * 3600),
            replica_ack_timeout: Duration::from_secs(1),
            retries: 4,
            timeout: Duration::from_secs(5),
            direct_reads: true,
        }
    }

    fn second_keep_ms(&self) -> i64 {
        ms(self.second_keep)
    }
    fn retention_ms(&self) -> i64 {
        ms(self.retention)
    }
    fn dedup_ms(&self) -> i64 {
        ms(self.dedup_horizon)
    }
    fn margin_ms(&self) -> i64 {
        ms(self.ttl_margin)
    }
    fn index_keep_ms(&self) -> i64 {
        self.lifetimes().index_keep_ms()
    }
    /// The TTL rules the batch arguments are encoded with.
    pub fn lifetimes(&self) -> KeyLifetimes {
        KeyLifetimes {
            second_keep_ms: self.second_keep_ms(),
            minute_keep_ms: self.retention_ms(),
            dedup_ms: self.dedup_ms(),
            margin_ms: self.margin_ms(),
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// Write connections per node: `persist` of consecutive batches alternates
/// between them, so one batch's `WAIT` (which holds its connection until a
/// replica has it) does not hold up the next batch's script.
const WRITE_LANES: usize = 2;

/// The connection(s) of a [`RedisStore`]. Clones share the underlying
/// multiplexed connections.
#[derive(Clone)]
enum Conn {
    /// One connection per write lane; reads use the first.
    Single([ConnectionManager; WRITE_LANES]),
    Cluster {
        /// Every command goes to the slot's master, over one client per write
        /// lane (reads use the first).
        primary: [ClusterConnection; WRITE_LANES],
        /// Sends `READONLY` to every node; used for replica reads only.
        replicas: ClusterConnection,
    },
}

fn master_route(key: &str) -> SingleNodeRoutingInfo {
    SingleNodeRoutingInfo::SpecificNode(Route::with_key(key.as_bytes(), SlotAddr::Master))
}

impl Conn {
    /// Runs `cmd` on the master of `key`'s slot.
    async fn master(&self, key: &str, cmd: &Cmd) -> RedisResult<Value> {
        server_error_to_err(match self {
            Conn::Single([cm, ..]) => cm.clone().req_packed_command(cmd).await,
            Conn::Cluster {
                primary: [primary, ..],
                ..
            } => {
                primary
                    .clone()
                    .route_command(cmd.clone(), RoutingInfo::SingleNode(master_route(key)))
                    .await
            }
        })
    }

    /// Runs `pipe` on the master of `key`'s slot over write lane `lane`;
    /// per-command errors come back as [`Value::ServerError`] items or as the
    /// call's error.
    ///
    /// All commands of a pipeline go to one node over one connection, in order
    /// (`WAIT` after a write relies on that). A redirection inside a pipeline is
    /// not followed by the client, so on one this sends a harmless keyed command
    /// the normal way, which makes the client refresh its slot map; the caller
    /// sees the error and retries.
    ///
    /// Takes the pipeline: a batch's is ~1 MB, and the cluster client needs
    /// one it owns to send (a borrowed one would be copied).
    async fn master_pipe(&self, key: &str, pipe: Pipeline, lane: usize) -> RedisResult<Vec<Value>> {
        match self {
            Conn::Single(lanes) => {
                let cm = &lanes[lane % WRITE_LANES];
                cm.clone().req_packed_commands(&pipe, 0, pipe.len()).await
            }
            Conn::Cluster { primary, .. } => {
                let primary = &primary[lane % WRITE_LANES];
                let count = pipe.len();
                let replies = primary
                    .clone()
                    .route_pipeline(pipe, 0, count, master_route(key))
                    .await?;
                let redirected = replies.iter().any(|v| match v {
                    Value::ServerError(e) => {
                        matches!(e.code(), "MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN")
                    }
                    _ => false,
                });
                if redirected {
                    let mut probe = redis::cmd("EXISTS");
                    probe.arg(key);
                    let _ = primary
                        .clone()
                        .route_command(probe, RoutingInfo::SingleNode(master_route(key)))
                        .await;
                }
                Ok(replies)
            }
        }
    }

    /// Runs a read-only `cmd` on a replica of `key`'s slot (Redis Cluster; the
    /// master when the slot has no replica); `None` for a single Redis.
    async fn replica(&self, key: &str, cmd: &Cmd) -> Option<RedisResult<Value>> {
        match self {
            Conn::Single(_) => None,
            Conn::Cluster { replicas, .. } => {
                let route = Route::with_key(key.as_bytes(), SlotAddr::ReplicaRequired);
                Some(server_error_to_err(
                    replicas
                        .clone()
                        .route_command(
                            cmd.clone(),
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                        )
                        .await,
                ))
            }
        }
    }
}

/// A [`Store`] on a single Redis or on Redis Cluster. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    /// Per partition: does its master have replicas (so `persist` must WAIT)?
    /// Learned from every `apply_batch.lua` reply.
    replicas_seen: Arc<Mutex<HashMap<u32, bool>>>,
    /// What each partition's token index holds: batches leave those tokens out.
    index_scores: Arc<IndexScores>,
    apply: redis::Script,
    read: redis::Script,
    options: RedisStoreOptions,
    /// Where `load` reads hashes over a [`HashReader`] (plain TCP only): the
    /// single server, or for Redis Cluster the seed's login (the address is
    /// the partition's master, asked for at each load).
    direct: Option<NodeAddr>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.conn {
            Conn::Single(_) => "redis",
            Conn::Cluster { .. } => "redis-cluster",
        };
        f.debug_struct("RedisStore")
            .field("kind", &kind)
            .field("options", &self.options)
            .finish()
    }
}

impl RedisStore {
    /// Connects as `settings` say (`redis`: the first URL; `redis-cluster`: the
    /// URLs are seed nodes) with default [`RedisStoreOptions`].
    pub async fn connect(settings: &StoreSettings) -> Result<Self, StoreError> {
        Self::connect_with(settings, RedisStoreOptions::default()).await
    }

    /// Like [`RedisStore::connect`] with explicit options (e.g.
    /// [`RedisStoreOptions::from_ingest`]).
    pub async fn connect_with(
        settings: &StoreSettings,
        options: RedisStoreOptions,
    ) -> Result<Self, StoreError> {
        match settings.kind {
            StoreKind::Redis => {
                let url = settings
                    .redis_urls
                    .first()
                    .ok_or_else(|| StoreError::Config("store.redis_urls is empty".into()))?;
                Self::connect_single(url, options).await
            }
            StoreKind::RedisCluster => Self::connect_cluster(&settings.redis_urls, options).await,
            StoreKind::Memory => Err(StoreError::Config(
                "store.kind is `memory`, not a Redis store".into(),
            )),
        }
    }

    /// Connects to one Redis server (`redis://host:port`).
    pub async fn connect_single(url: &str, options: RedisStoreOptions) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(options.retries as usize)
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout));
        let lanes = [
            client
                .get_connection_manager_with_config(config.clone())
                .await?,
            client.get_connection_manager_with_config(config).await?,
        ];
        Ok(Self::new(Conn::Single(lanes), options, url))
    }

    /// Connects to Redis Cluster through `seeds` (any reachable nodes).
    pub async fn connect_cluster(
        seeds: &[String],
        options: RedisStoreOptions,
    ) -> Result<Self, StoreError> {
        if seeds.is_empty() {
            return Err(StoreError::Config("store.redis_urls is empty".into()));
        }
        let builder = || {
            ClusterClientBuilder::new(seeds.iter().map(String::as_str))
                .retries(options.retries)
                .min_retry_wait(100)
                .max_retry_wait(2000)
                .connection_timeout(options.timeout)
                .response_timeout(options.timeout)
        };
        let primary = [
            builder().build()?.get_async_connection().await?,
            builder().build()?.get_async_connection().await?,
        ];
        let replicas = builder()
            .read_routing_strategy(RandomReplicaStrategy)
            .build()?
            .get_async_connection()
            .await?;
        Ok(Self::new(
            Conn::Cluster { primary, replicas },
            options,
            &seeds[0],
        ))
    }

    fn new(conn: Conn, options: RedisStoreOptions, url: &str) -> Self {
        let direct = direct_node(url).filter(|_| options.direct_reads);
        Self {
            conn,
            replicas_seen: Arc::default(),
            index_scores: Arc::default(),
            apply: redis::Script::new(APPLY_BATCH_LUA),
            read: redis::Script::new(READ_TOKEN_LUA),
            options,
            direct,
        }
    }

    /// Up to `LOAD_PARALLEL` [`HashReader`]s to the master of `key`'s slot, or
    /// `None` when `load` should read through redis-rs (TLS, or the node's
    /// address or a first connection could not be had).
    async fn hash_readers(&self, key: &str) -> Option<ReaderPool> {
        let mut node = self.direct.clone()?;
        if let Conn::Cluster { .. } = self.conn {
            let nodes = self
                .conn
                .master(key, redis::cmd("CLUSTER").arg("NODES"))
                .await;
            match nodes
                .ok()
                .and_then(|v| bulk(v).ok())
                .as_deref()
                .and_then(myself)
            {
                Some((host, port)) => (node.host, node.port) = (host, port),
                None => {
                    tracing::warn!("no address for the slot's master; loading through redis-rs");
                    return None;
                }
            }
        }
        match HashReader::connect(&node, self.options.timeout).await {
            Ok(first) => Some(ReaderPool {
                node,
                timeout: self.options.timeout,
                idle: Mutex::new(vec![first]),
            }),
            Err(e) => {
                tracing::warn!(error = %e, host = %node.host, port = node.port,
                    "direct connection failed; loading through redis-rs");
                None
            }
        }
    }

    /// Whether `persist` should WAIT for a replica: what the last batch of the
    /// partition saw; at first, yes on a cluster, no on a single Redis.
    fn expects_replicas(&self, partition: u32) -> bool {
        let default = matches!(self.conn, Conn::Cluster { .. });
        self.replicas_seen
            .lock()
            .map(|m| m.get(&partition).copied().unwrap_or(default))
            .unwrap_or(true)
    }

    fn set_expects_replicas(&self, partition: u32, value: bool) {
        if let Ok(mut m) = self.replicas_seen.lock() {
            m.insert(partition, value);
        }
    }

    /// The options this store was built with.
    pub fn options(&self) -> &RedisStoreOptions {
        &self.options
    }

    /// Runs `EVALSHA <sha>`-style `cmd`; on `NOSCRIPT`, runs `fallback`
    /// (`EVAL` of the source, which also caches the script on that node).
    async fn eval_master(
        &self,
        key: &str,
        cmd: &Cmd,
        fallback: impl FnOnce() -> Cmd,
    ) -> RedisResult<Value> {
        match self.conn.master(key, cmd).await {
            Err(e) if is_noscript(&e) => self.conn.master(key, &fallback()).await,
            other => other,
        }
    }

    /// Candidate keys of one token for `read_token.lua`, with the level and
    /// hour (or day) each covers: second hashes, then minute hashes.
    /// `newest_ms`, the token's score in the token index (the end of the hour
    /// of its newest data) when known, rules out the periods after it: none
    /// of them holds data.
    fn token_keys(
        &self,
        partition: u32,
        token: &str,
        now_ms: i64,
        newest_ms: Option<i64>,
    ) -> TokenKeys {
        let last_ms = newest_ms.map_or(now_ms + FUTURE_SLACK_MS, |newest| {
            newest.min(now_ms + FUTURE_SLACK_MS)
        });
        let hours = (now_ms - self.options.second_keep_ms()).div_euclid(HOUR_MS)
            ..=last_ms.div_euclid(HOUR_MS);
        let days =
            (now_ms - self.options.retention_ms()).div_euclid(DAY_MS)..=last_ms.div_euclid(DAY_MS);
        let mut keys = Vec::new();
        let mut kinds = Vec::new();
        for h in hours {
            keys.push(keys::seconds(partition, token, h));
            kinds.push((Level::Second, h));
        }
        for d in days {
            keys.push(keys::minutes(partition, token, d));
            kinds.push((Level::Minute, d));
        }
        TokenKeys { keys, kinds }
    }

    fn read_cmd(&self, verb: &str, keys: &[String]) -> Cmd {
        let mut cmd = redis::cmd(verb);
        if verb.starts_with("EVALSHA") {
            cmd.arg(self.read.get_hash());
        } else {
            cmd.arg(READ_TOKEN_LUA);
        }
        cmd.arg(keys.len()).arg(keys);
        cmd
    }

    /// Reads the tokens of `chunk` (with their index scores) with one
    /// pipeline of `HGETALL`s, over a [`HashReader`] of `readers` when there
    /// are any, else through redis-rs on write lane `lane`. Not atomic per
    /// token, and it need not be: [`Store::load_into`] rereads when the
    /// applied offset moved meanwhile.
    async fn read_chunk(
        &self,
        partition: u32,
        applied_key: &str,
        chunk: &[(String, i64)],
        now_ms: i64,
        lane: usize,
        readers: Option<&ReaderPool>,
    ) -> Result<BatchEffect, StoreError> {
        let mut decoder = ChunkDecoder::new(self, now_ms);
        let mut keys = Vec::new();
        for (token, newest_ms) in chunk {
            let tk = self.token_keys(partition, token, now_ms, Some(*newest_ms));
            decoder.add_token(token, &tk);
            keys.extend(tk.keys);
        }
        match readers {
            Some(readers) => {
                readers
                    .for_each_field(&keys, |i, name, value| decoder.field(i, name, value))
                    .await?
            }
            None => {
                let pipe = hgetall_pipeline(&keys);
                let replies = self.conn.master_pipe(applied_key, pipe, lane).await?;
                decoder.replies(replies)?;
            }
        }
        Ok(decoder.finish())
    }

    /// True when a bucket (or wallet mark) of `level` at `at` is still kept at `now_ms`.
    fn within(&self, level: Level, at: i64, now_ms: i64) -> bool {
        let (unit, keep) = match level {
            Level::Second => (1000, self.options.second_keep_ms()),
            Level::Minute => (60_000, self.options.retention_ms()),
        };
        (at + 1) * unit + keep > now_ms
    }
}

/// Turns the hash fields of some tokens' keys into a [`BatchEffect`], keeping
/// what is within retention, each token's part in time order.
struct ChunkDecoder<'s> {
    store: &'s RedisStore,
    now_ms: i64,
    /// Per key: its token (index into `tokens`), level and period.
    keys: Vec<(usize, Level, i64)>,
    tokens: Vec<Arc<str>>,
    /// Per token with fields, in key order: the token and where its part
    /// starts in `out` (buckets, marks).
    parts: Vec<(usize, usize, usize)>,
    out: BatchEffect,
}

impl<'s> ChunkDecoder<'s> {
    fn new(store: &'s RedisStore, now_ms: i64) -> Self {
        Self {
            store,
            now_ms,
            keys: Vec::new(),
            tokens: Vec::new(),
            parts: Vec::new(),
            out: BatchEffect::default(),
        }
    }

    /// Adds the keys of `token`: they follow the keys added before.
    fn add_token(&mut self, token: &str, tk: &TokenKeys) {
        let t = self.tokens.len();
        self.tokens.push(Arc::from(token));
        self.keys
            .extend(tk.kinds.iter().map(|&(level, period)| (t, level, period)));
    }

    /// One field of key `key`: `<offset>` holds a bucket, `w<batch>` wallet mark records.
    fn field(&mut self, key: usize, name: &[u8], bytes: &[u8]) -> Result<(), StoreError> {
        let &(t, level, period) = self
            .keys
            .get(key)
            .ok_or_else(|| StoreError::Corrupt("reply for more keys than asked".into()))?;
        if self.parts.last().map(|part| part.0) != Some(t) {
            self.parts
                .push((t, self.out.buckets.len(), self.out.wallets.len()));
        }
        let (store, now_ms, out) = (self.store, self.now_ms, &mut self.out);
        let token = &self.tokens[t];
        let base = period * per_period(level);
        if name.first() == Some(&b'w') {
            return decode_marks(bytes, |offset, byte, wallet| {
                let at = base + offset;
                let (sides, second) = mark_sides(level, byte)?;
                // The record's own mark and, for a minute record, the mark of
                // the second it carries: each kept while within retention.
                let carried = second.map(|s| (Level::Second, at * 60 + s));
                let live = |&(level, at): &(Level, i64)| store.within(level, at, now_ms);
                let mut name: Option<Arc<str>> = None;
                for (level, at) in std::iter::once((level, at)).chain(carried).filter(live) {
                    out.wallets.push(WalletMark {
                        token: token.clone(),
                        wallet: name.get_or_insert_with(|| Arc::from(wallet)).clone(),
                        level,
                        at,
                        sides,
                    });
                }
                Ok(())
            });
        }
        let at = base + parse_i64(name)?;
        if store.within(level, at, now_ms) {
            let bucket = decode_bucket(bytes)?;
            out.buckets.push(BucketDelta {
                token: token.clone(),
                level,
                at,
                delta: bucket,
                total: bucket,
            });
        }
        Ok(())
    }

    /// The `HGETALL` replies (or `read_token.lua`'s per-key list) of every
    /// key, as redis-rs parsed them.
    fn replies(&mut self, replies: Vec<Value>) -> Result<(), StoreError> {
        if replies.len() != self.keys.len() {
            return Err(StoreError::Corrupt(format!(
                "{} replies for {} keys",
                replies.len(),
                self.keys.len()
            )));
        }
        for (key, reply) in replies.into_iter().enumerate() {
            let reply = match reply {
                Value::ServerError(e) => return Err(StoreError::Redis(e.into())),
                reply => reply,
            };
            for (name, bytes) in hash_pairs(reply)? {
                self.field(key, &name, &bytes)?;
            }
        }
        Ok(())
    }

    /// The effect, each token's part sorted by time: hash fields come in no
    /// particular order, and the engine restores fastest in time order (a
    /// wallet's marks mostly append).
    fn finish(mut self) -> BatchEffect {
        let out = &mut self.out;
        let ends = self
            .parts
            .iter()
            .skip(1)
            .map(|&(_, b, w)| (b, w))
            .chain([(out.buckets.len(), out.wallets.len())]);
        for (&(_, b0, w0), (b1, w1)) in self.parts.iter().zip(ends) {
            out.buckets[b0..b1].sort_unstable_by_key(|b| (level_rank(b.level), b.at));
            out.wallets[w0..w1].sort_by_key(|w| (level_rank(w.level), w.at));
        }
        self.out
    }
}

/// A spawned chunk read of `load`, aborted when `load` stops waiting for it
/// (it failed on another chunk).
struct ChunkTask(tokio::task::JoinHandle<Result<BatchEffect, StoreError>>);

impl Drop for ChunkTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::future::Future for ChunkTask {
    type Output = Result<Result<BatchEffect, StoreError>, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// [`HashReader`]s to one node, shared by the chunk reads of one `load`.
struct ReaderPool {
    node: NodeAddr,
    timeout: Duration,
    idle: Mutex<Vec<HashReader>>,
}

impl ReaderPool {
    /// [`HashReader::for_each_field`] over an idle reader (or a new one); a
    /// reader that failed is dropped, not reused.
    async fn for_each_field(
        &self,
        keys: &[String],
        field: impl FnMut(usize, &[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let idle = self.idle.lock().map(|mut idle| idle.pop()).unwrap_or(None);
        let mut reader = match idle {
            Some(reader) => reader,
            None => HashReader::connect(&self.node, self.timeout).await?,
        };
        reader.for_each_field(keys, field).await?;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(reader);
        }
        Ok(())
    }
}

/// The node and login of `url` for a [`HashReader`]: plain TCP URLs only.
fn direct_node(url: &str) -> Option<NodeAddr> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info().ok()?;
    let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
        return None;
    };
    let login = info.redis_settings();
    Some(NodeAddr {
        host: host.clone(),
        port: *port,
        username: login.username().map(str::to_owned),
        password: login.password().map(str::to_owned),
        db: login.db(),
    })
}

/// The address of the node that answered `CLUSTER NODES` (its `myself` line).
fn myself(nodes: &[u8]) -> Option<(String, u16)> {
    let nodes = std::str::from_utf8(nodes).ok()?;
    // `<id> <ip:port@cport[,hostname]> <flags> ...`
    let addr = nodes.lines().find_map(|line| {
        let mut fields = line.split(' ').skip(1);
        let (addr, flags) = (fields.next()?, fields.next()?);
        flags.split(',').any(|f| f == "myself").then_some(addr)
    })?;
    let addr = addr.split(['@', ',']).next()?;
    let (host, port) = addr.rsplit_once(':')?;
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), port.parse().ok()?))
}

/// First item of an `apply_batch.lua` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApplyStatus {
    Fenced,
    Applied,
    OutOfOrder,
}

/// `{status, offset, replicas}` of an `apply_batch.lua` reply.
fn parse_apply_reply(reply: Value) -> Result<(ApplyStatus, i64, i64), StoreError> {
    let Value::Array(items) = reply else {
        return Err(StoreError::Corrupt(format!(
            "apply_batch replied {reply:?}"
        )));
    };
    let nums = items
        .into_iter()
        .map(|v| parse_i64(&bulk(v)?))
        .collect::<Result<Vec<i64>, _>>()?;
    match nums[..] {
        [status, offset, replicas] => {
            let status = match status {
                0 => ApplyStatus::Fenced,
                1 => ApplyStatus::Applied,
                2 => ApplyStatus::OutOfOrder,
                _ => return Err(StoreError::Corrupt(format!("apply_batch status {status}"))),
            };
            Ok((status, offset, replicas))
        }
        _ => Err(StoreError::Corrupt(format!("apply_batch replied {nums:?}"))),
    }
}

/// Candidate keys of one token and the (level, hour or day) of each.
struct TokenKeys {
    keys: Vec<String>,
    kinds: Vec<(Level, i64)>,
}

/// Bucket units per key period: seconds per hour, minutes per day.
fn per_period(level: Level) -> i64 {
    match level {
        Level::Second => 3600,
        Level::Minute => 1440,
    }
}

/// A single command's error reply may come back as `Ok(Value::ServerError)`.
fn server_error_to_err(r: RedisResult<Value>) -> RedisResult<Value> {
    match r {
        Ok(Value::ServerError(e)) => Err(e.into()),
        other => other,
    }
}

fn is_noscript(e: &RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

fn next_reply(replies: &mut impl Iterator<Item = Value>) -> Result<Value, StoreError> {
    match replies.next() {
        Some(Value::ServerError(e)) => Err(StoreError::Redis(e.into())),
        Some(v) => Ok(v),
        None => Err(StoreError::Corrupt("pipeline reply too short".into())),
    }
}

fn bulk(v: Value) -> Result<Vec<u8>, StoreError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        other => Err(StoreError::Corrupt(format!(
            "expected a string, got {other:?}"
        ))),
    }
}

fn utf8(b: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(b).map_err(|e| StoreError::Corrupt(format!("not UTF-8: {e}")))
}

fn parse_i64(b: &[u8]) -> Result<i64, StoreError> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            StoreError::Corrupt(format!("not an integer: {:?}", String::from_utf8_lossy(b)))
        })
}

/// The token index (`ZRANGEBYSCORE … WITHSCORES`): each token with its score,
/// the end of the hour of its newest data (RESP2 flat member/score list, or RESP3 pairs).
fn token_index(v: Value) -> Result<Vec<(String, i64)>, StoreError> {
    let score = |v: Value| -> Result<i64, StoreError> {
        let ms = match v {
            Value::Double(d) => d,
            v => {
                let b = bulk(v)?;
                std::str::from_utf8(&b)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .ok_or_else(|| StoreError::Corrupt("token index: bad score".into()))?
            }
        };
        Ok(ms as i64)
    };
    let Value::Array(items) = v else {
        return Err(StoreError::Corrupt(format!("token index replied {v:?}")));
    };
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let Some(item) = it.next() {
        let (member, ms) = match item {
            Value::Array(pair) => {
                let mut pair = pair.into_iter();
                (pair.next(), pair.next())
            }
            member => (Some(member), it.next()),
        };
        let (Some(member), Some(ms)) = (member, ms) else {
            return Err(StoreError::Corrupt(
                "token index: member without score".into(),
            ));
        };
        out.push((utf8(bulk(member)?)?, score(ms)?));
    }
    Ok(out)
}

fn parse_applied(v: Value) -> Result<Option<i64>, StoreError> {
    match v {
        Value::Nil => Ok(None),
        v => parse_i64(&bulk(v)?).map(Some),
    }
}

/// One field and its value, as bytes.
type FieldValue = (Vec<u8>, Vec<u8>);

/// Field/value pairs of an `HGETALL` reply (RESP2 flat list or RESP3 map).
fn hash_pairs(v: Value) -> Result<Vec<FieldValue>, StoreError> {
    match v {
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(StoreError::Corrupt("odd HGETALL reply".into()));
            }
            let mut it = items.into_iter();
            let mut out = Vec::new();
            while let (Some(f), Some(v)) = (it.next(), it.next()) {
                out.push((bulk(f)?, bulk(v)?));
            }
            Ok(out)
        }
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(f, v)| Ok((bulk(f)?, bulk(v)?)))
            .collect(),
        Value::Nil => Ok(Vec::new()),
        other => Err(StoreError::Corrupt(format!(
            "expected a hash, got {other:?}"
        ))),
    }
}

fn level_rank(level: Level) -> u8 {
    match level {
        Level::Second => 0,
        Level::Minute => 1,
    }
}

/// Canonical form of a restored effect: buckets and wallet marks by
/// (token, level, at[, wallet]), a wallet's records of one bucket merged into
/// one mark; events by (block time, key).
pub fn sort_effect(effect: &mut BatchEffect) {
    effect.buckets.sort_by(|a, b| {
        (&*a.token, level_rank(a.level), a.at).cmp(&(&*b.token, level_rank(b.level), b.at))
    });
    effect.wallets.sort_by(|a, b| {
        (&*a.token, level_rank(a.level), a.at, &*a.wallet).cmp(&(
            &*b.token,
            level_rank(b.level),
            b.at,
            &*b.wallet,
        ))
    });
    effect.wallets.dedup_by(|later, kept| {
        let same = (later.level, later.at) == (kept.level, kept.at)
            && later.wallet == kept.wallet
            && later.token == kept.token;
        if same {
            kept.sides |= later.sides;
        }
        same
    });
    effect.events.sort_by_key(|e| (e.executed_at_ms, e.key));
}

impl Store for RedisStore {
    async fn persist(&self, batch: &PersistBatch<'_>) -> Result<PersistOutcome, StoreError> {
        if batch.last_offset < batch.first_offset {
            return Err(StoreError::InvalidBatch(format!(
                "offsets {}..={} are reversed",
                batch.first_offset, batch.last_offset
            )));
        }
        let o = &self.options;
        // The script trims index scores below this.
        let index_cutoff = batch.now_ms - o.index_keep_ms();
        let mut args = self
            .index_scores
            .with_check(batch.partition, index_cutoff, |indexed| {
                encode_batch(
                    batch.partition,
                    batch.first_offset,
                    batch.effect,
                    batch.now_ms,
                    &o.lifetimes(),
                    indexed,
                )
            })?;
        let key = keys::applied(batch.partition);
        let build = |verb: &str, script: &str| {
            // Sized up front (the batch, plus the verb, script, key and six
            // numbers): growing a ~1 MB command copies it again and again.
            let mut cmd = redis::Cmd::with_capacity(
                args.arg_count() + 10,
                args.byte_len() + verb.len() + script.len() + key.len() + 6 * 20,
            );
            cmd.arg(verb)
                .arg(script)
                .arg(1)
                .arg(&key)
                .arg(batch.first_offset)
                .arg(batch.last_offset)
                .arg(batch.now_ms)
                .arg(o.index_keep_ms())
                .arg(ms(o.applied_keep))
                .arg(batch.follows);
            for arg in args.iter() {
                cmd.arg(arg);
            }
            cmd
        };
        // The script and WAIT travel in one pipeline, so WAIT runs on the very
        // connection (and node) that ran the script.
        let expect_replicas = self.expects_replicas(batch.partition);
        let with_wait = |mut cmd_pipe: Pipeline| {
            if expect_replicas {
                cmd_pipe.cmd("WAIT").arg(1).arg(ms(o.replica_ack_timeout));
            }
            cmd_pipe
        };
        let mut pipe = redis::pipe();
        pipe.add_command(build("EVALSHA", self.apply.get_hash()));
        let lane = batch.lane;
        let mut replies = self.conn.master_pipe(&key, with_wait(pipe), lane).await?;
        if matches!(replies.first(), Some(Value::ServerError(e)) if e.code() == "NOSCRIPT") {
            let mut pipe = redis::pipe();
            pipe.add_command(build("EVAL", APPLY_BATCH_LUA));
            replies = self.conn.master_pipe(&key, with_wait(pipe), lane).await?;
        }
        let mut replies = replies.into_iter();
        let (status, offset, replicas) = parse_apply_reply(next_reply(&mut replies)?)?;
        if status == ApplyStatus::OutOfOrder {
            // Nothing was written, so there is nothing to wait for. The store
            // may not hold what this process wrote: its index entries again.
            self.index_scores.forget(batch.partition);
            return Ok(PersistOutcome::OutOfOrder {
                applied_offset: (offset >= 0).then_some(offset),
            });
        }
        if replicas == 0 {
            // No replica to lose the write to; stop waiting for one.
            self.set_expects_replicas(batch.partition, false);
        } else if expect_replicas {
            // WAIT counts this connection's writes so far: this batch, or (when
            // fenced) whatever earlier attempt of it reached the master.
            let acked = parse_i64(&bulk(next_reply(&mut replies)?)?)?;
            if acked < 1 {
                return Err(StoreError::NotReplicated {
                    partition: batch.partition,
                    replicas,
                });
            }
        } else {
            // Replicas (re)appeared since the last batch: the write was not
            // waited for. The retry is fenced and waits.
            self.set_expects_replicas(batch.partition, true);
            return Err(StoreError::NotReplicated {
                partition: batch.partition,
                replicas,
            });
        }
        Ok(if status == ApplyStatus::Applied {
            // Recorded once a replica has it too (a failover keeps it).
            self.index_scores
                .record(batch.partition, args.take_index(), index_cutoff);
            PersistOutcome::Applied
        } else {
            PersistOutcome::Fenced {
                applied_offset: offset,
            }
        })
    }

    async fn load(&self, partition: u32, now_ms: i64) -> Result<Restored, StoreError> {
        for _ in 0..LOAD_ATTEMPTS {
            let mut effect = BatchEffect::default();
            let read = self
                .load_into(partition, now_ms, &mut |part: BatchEffect| {
                    effect.buckets.extend(part.buckets);
                    effect.wallets.extend(part.wallets);
                    effect.events.extend(part.events);
                })
                .await;
            match read {
                Ok(applied_offset) => {
                    return Ok(Restored {
                        applied_offset,
                        effect,
                    })
                }
                Err(StoreError::Unstable { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Unstable { partition })
    }

    /// Parts go to `sink` as they arrive: event ids first, then the tokens of
    /// each chunk.
    async fn load_into(
        &self,
        partition: u32,
        now_ms: i64,
        sink: &mut (impl FnMut(BatchEffect) + Send),
    ) -> Result<Option<i64>, StoreError> {
        let started = Instant::now();
        // What this process knew of the partition's index may be stale now.
        self.index_scores.forget(partition);
        let applied_key = keys::applied(partition);
        let hours: Vec<i64> = ((now_ms - self.options.dedup_ms()).div_euclid(HOUR_MS)
            ..=(now_ms + FUTURE_SLACK_MS).div_euclid(HOUR_MS))
            .collect();
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&applied_key);
        pipe.cmd("ZRANGEBYSCORE")
            .arg(keys::tokens(partition))
            .arg(now_ms - self.options.index_keep_ms())
            .arg("+inf")
            .arg("WITHSCORES");
        for &h in &hours {
            pipe.cmd("GET").arg(keys::events(partition, h));
        }
        let mut replies = self
            .conn
            .master_pipe(&applied_key, pipe, 0)
            .await?
            .into_iter();
        let applied = parse_applied(next_reply(&mut replies)?)?;
        let tokens = token_index(next_reply(&mut replies)?)?;
        let mut events = BatchEffect::default();
        for &h in &hours {
            match next_reply(&mut replies)? {
                Value::Nil => {}
                v => decode_events(h, &bulk(v)?, &mut events.events)?,
            }
        }
        let horizon = now_ms - self.options.dedup_ms();
        events.events.retain(|e| e.executed_at_ms > horizon);
        let n_events = events.events.len();
        let (mut n_buckets, mut n_wallets) = (0, 0);
        sink(events);

        // LOAD_PARALLEL pipelines stay in flight while `sink` restores the
        // part that arrived: Redis keeps serving while the shard restores.
        // The index lists tokens by last swap, so the busiest come last; dealt
        // round-robin, every chunk gets a share of them and the restore keeps
        // pace with the reads.
        let n_chunks = tokens.len().div_ceil(LOAD_CHUNK);
        let mut chunks = vec![Vec::with_capacity(LOAD_CHUNK); n_chunks];
        for (i, token) in tokens.into_iter().enumerate() {
            chunks[i % n_chunks].push(token);
        }
        let readers = self.hash_readers(&applied_key).await.map(Arc::new);
        let direct = readers.is_some();
        crate::telemetry::metrics()
            .store_loads
            .with_label_values(&[
                partition.to_string().as_str(),
                if direct { "direct" } else { "client" },
            ])
            .inc();
        // Each read is a task of its own, so the chunks in flight are parsed
        // and decoded on every runtime thread while the sink restores.
        let reads = chunks.into_iter().enumerate().map(|(i, chunk)| {
            let (store, key, readers) = (self.clone(), applied_key.clone(), readers.clone());
            ChunkTask(tokio::spawn(async move {
                store
                    .read_chunk(partition, &key, &chunk, now_ms, i, readers.as_deref())
                    .await
            }))
        });
        let mut parts = futures_util::stream::iter(reads).buffered(LOAD_PARALLEL);
        while let Some(part) = parts.next().await {
            let part = match part {
                Ok(part) => part?,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => return Err(StoreError::Corrupt(format!("chunk read: {e}"))),
            };
            n_buckets += part.buckets.len();
            n_wallets += part.wallets.len();
            sink(part);
        }

        let again = parse_applied(
            self.conn
                .master(&applied_key, redis::cmd("GET").arg(&applied_key))
                .await?,
        )?;
        if again != applied {
            tracing::warn!(partition, "applied offset moved while loading");
            return Err(StoreError::Unstable { partition });
        }
        tracing::info!(
            partition,
            ?applied,
            buckets = n_buckets,
            wallets = n_wallets,
            events = n_events,
            direct_reads = direct,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "loaded partition from redis"
        );
        Ok(applied)
    }

    async fn load_token(
        &self,
        partition: u32,
        token: &str,
        now_ms: i64,
    ) -> Result<Option<BatchEffect>, StoreError> {
        let tk = self.token_keys(partition, token, now_ms, None);
        let key = keys::applied(partition);
        let ro = self.read_cmd("EVALSHA_RO", &tk.keys);
        let replica = match self.conn.replica(&key, &ro).await {
            Some(Err(e)) if is_noscript(&e) => {
                self.conn
                    .replica(&key, &self.read_cmd("EVAL_RO", &tk.keys))
                    .await
            }
            other => other,
        };
        let reply = match replica {
            Some(Ok(v)) => v,
            other => {
                if let Some(Err(e)) = other {
                    tracing::warn!(partition, error = %e, "replica read failed; reading the master");
                }
                self.eval_master(&key, &ro, || self.read_cmd("EVAL_RO", &tk.keys))
                    .await?
            }
        };
        let Value::Array(per_key) = reply else {
            return Err(StoreError::Corrupt(format!("read_token replied {reply:?}")));
        };
        let mut decoder = ChunkDecoder::new(self, now_ms);
        decoder.add_token(token, &tk);
        decoder.replies(per_key)?;
        let mut effect = decoder.finish();
        if effect.buckets.is_empty() && effect.wallets.is_empty() {
            return Ok(None);
        }
        sort_effect(&mut effect);
        Ok(Some(effect))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn myself_is_the_node_that_answered() {
        let nodes = b"\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f 10.0.0.7:30001@40001,redis-0.redis myself,master - 0 0 1 connected 0-5460
";
        assert_eq!(myself(nodes), Some(("10.0.0.7".into(), 30001)));
        assert_eq!(
            myself(b"9a ::1:7000@17000 myself,master - 0 0 1 connected 0-16383\n"),
            Some(("::1".into(), 7000))
        );
        // A node that does not know its own address yet.
        assert_eq!(
            myself(b"9a :7000@17000 myself,master - 0 0 0 connected\n"),
            None
        );
        assert_eq!(
            myself(b"67ed 127.0.0.1:30002@40002 master - 0 0 2 connected\n"),
            None
        );
    }

    #[test]
    fn direct_reads_need_plain_tcp() {
        let node = direct_node("redis://loader:secret@10.1.2.3:7000/2").expect("tcp");
        assert_eq!(
            node,
            NodeAddr {
                host: "10.1.2.3".into(),
                port: 7000,
                username: Some("loader".into()),
                password: Some("secret".into()),
                db: 2,
            }
        );
        assert_eq!(
            direct_node("redis://:pw@h:1").and_then(|n| n.password),
            Some("pw".into())
        );
        assert!(direct_node("redis+unix:///tmp/redis.sock").is_none());
        assert!(direct_node("not a url").is_none());
    }
}
