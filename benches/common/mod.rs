//! Synthetic swap workloads shared by the engine benchmarks: Zipf-distributed
//! tokens and wallets, realistic id/address lengths, small arrival disorder and
//! duplicates.

#![allow(dead_code)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use swapstats::config::GeneratorSettings;
use swapstats::swap::{Side, Swap};
use swapstats::window::{EngineConfig, WindowSpec};

pub const SECOND: i64 = 1000;
pub const HOUR: i64 = 3_600_000;
/// A minute-aligned unix time.
pub const T0: i64 = 1_700_000_040_000;

/// Samples ranks `0..n` with probability ∝ `1 / (rank + 1)^s`.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (0..n)
            .map(|k| {
                total += 1.0 / ((k + 1) as f64).powf(s);
                total
            })
            .collect();
        cdf.iter_mut().for_each(|c| *c /= total);
        Self { cdf }
    }

    pub fn sample(&self, rng: &mut SmallRng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }

    /// Probability of rank 0.
    pub fn top_share(&self) -> f64 {
        self.cdf[0]
    }
}

/// A 44-character base58-looking address for entity `i` of kind `tag`.
pub fn address(tag: char, i: usize) -> String {
    const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(tag);
    let mut s = String::with_capacity(44);
    s.push(tag);
    while s.len() < 44 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push(ALPHABET[(x % 58) as usize] as char);
    }
    s
}

/// A transaction-signature-like event id (88 base58-ish chars would be Solana;
/// this is a 66-char hash plus a log index, like an EVM event).
pub fn event_id(n: u64) -> String {
    let a = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let b = a.rotate_left(29) ^ 0xD6E8_FEB8_6659_FD93;
    format!(
        "0x{a:016x}{b:016x}{:016x}{:016x}:{}",
        a ^ b,
        b.rotate_left(7),
        n % 7
    )
}

/// The default engine configuration (windows 5m/1h/6h/24h, 24 h dedup, 48 h retention).
pub fn default_config() -> EngineConfig {
    EngineConfig {
        windows: WindowSpec::defaults(),
        dedup_horizon_ms: 24 * HOUR,
        retention_ms: 48 * HOUR,
    }
}

/// A stream generator: `rate` swaps per second of block time starting at `T0`.
pub struct Stream {
    rng: SmallRng,
    tokens: Zipf,
    wallets: Zipf,
    token_names: Vec<String>,
    wallet_names: Vec<String>,
    rate: f64,
    dup_rate: f64,
    next_id: u64,
    recent: Vec<Swap>,
}

impl Stream {
    pub fn new(
        seed: u64,
        token_count: usize,
        token_skew: f64,
        wallet_count: usize,
        rate: f64,
        dup_rate: f64,
    ) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            tokens: Zipf::new(token_count, token_skew),
            wallets: Zipf::new(wallet_count, 0.9),
            token_names: (0..token_count).map(|i| address('T', i)).collect(),
            wallet_names: (0..wallet_count).map(|i| address('W', i)).collect(),
            rate,
            dup_rate,
            next_id: 0,
            recent: Vec::new(),
        }
    }

    pub fn token_name(&self, rank: usize) -> &str {
        &self.token_names[rank]
    }

    pub fn top_token_share(&self) -> f64 {
        self.tokens.top_share()
    }

    /// The next swap and its arrival clock (`now_ms`): block times advance at
    /// `rate`/s; arrival lags the block by 0–2 s (1% by up to a minute); a
    /// `dup_rate` share of arrivals re-delivers one of the last 1000 swaps.
    pub fn next_swap(&mut self) -> (Swap, i64) {
        let n = self.next_id;
        let block_ms = T0 + (n as f64 * 1000.0 / self.rate) as i64;
        if !self.recent.is_empty() && self.rng.random::<f64>() < self.dup_rate {
            let i = self.rng.random_range(0..self.recent.len());
            let dup = self.recent[i].clone();
            return (dup, block_ms + 500);
        }
        self.next_id += 1;
        let lag = if self.rng.random::<f64>() < 0.01 {
            self.rng.random_range(0..60 * SECOND)
        } else {
            self.rng.random_range(0..2 * SECOND)
        };
        let executed_at_ms = block_ms - lag;
        let token = self.tokens.sample(&mut self.rng);
        let wallet = self.wallets.sample(&mut self.rng);
        let usd = (self.rng.random::<f64>() * 8.0).exp();
        let rate = 0.001 + self.rng.random::<f64>();
        let swap = Swap {
            event_id: event_id(n),
            token: self.token_names[token].clone(),
            wallet: Some(self.wallet_names[wallet].clone()),
            side: if self.rng.random::<bool>() {
                Side::Buy
            } else {
                Side::Sell
            },
            amount: usd / rate,
            usd,
            rate,
            created_at_ms: Some(block_ms),
            executed_at_ms,
        };
        if self.recent.len() < 1000 {
            self.recent.push(swap.clone());
        } else {
            let i = (n % 1000) as usize;
            self.recent[i] = swap.clone();
        }
        (swap, block_ms)
    }
}

/// The generated stream of the shard and store benches: 10,000 tokens,
/// 100,000 wallets, 1% duplicates, 2 s of block-time disorder, unpaced.
pub fn shard_stream() -> GeneratorSettings {
    GeneratorSettings {
        rate: 0,
        tokens: 10_000,
        wallets: 100_000,
        dup_rate: 0.01,
        disorder: std::time::Duration::from_secs(2),
        seed: 7,
        count: 0,
    }
}

/// A bench knob from the environment: `name` parsed as a count, if set.
pub fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// CPU time (user + system) of process `pid` so far, in clock ticks (100 per
/// second on every Linux target here), from `/proc/<pid>/stat`; 0 when gone.
pub fn cpu_ticks(pid: impl std::fmt::Display) -> u64 {
    process_stat(pid).cpu_ticks()
}

/// What `/proc/<pid>/stat` says of a process so far (zeros when it is gone).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessStat {
    /// Page faults served without I/O: on this VM each costs ~4–13 µs, so a
    /// process that fills fresh memory pays ~1 s or more per GiB in the kernel.
    pub minor_faults: u64,
    pub user_ticks: u64,
    pub system_ticks: u64,
}

impl ProcessStat {
    /// User + system CPU, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.user_ticks + self.system_ticks
    }
}

/// The fields of `/proc/<pid>/stat` the benches report.
pub fn process_stat(pid: impl std::fmt::Display) -> ProcessStat {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| parse_stat(&stat))
        .unwrap_or_default()
}

/// CPU ticks (user + system) of this process's live threads, summed per thread
/// name (`comm`, e.g. `tokio-rt-worker`, `rdk:broker1`), from
/// `/proc/self/task/*/stat`. Threads that have exited are not in it: the
/// process total ([`process_stat`]) still counts them.
pub fn thread_cpu_ticks() -> Vec<(String, u64)> {
    let mut totals: Vec<(String, u64)> = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return totals;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let comm = stat
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map_or("", |(comm, _)| comm);
        let ticks = parse_stat(&stat).cpu_ticks();
        match totals.iter_mut().find(|(name, _)| name == comm) {
            Some((_, total)) => *total += ticks,
            None => totals.push((comm.to_string(), ticks)),
        }
    }
    totals
}

/// The machine's (idle, all) CPU ticks so far, summed over its cores, from
/// the `cpu` line of `/proc/stat` (idle counts iowait too).
pub fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    let idle = fields.get(3).unwrap_or(&0) + fields.get(4).unwrap_or(&0);
    (idle, fields.iter().sum())
}

/// The fields of one `/proc/.../stat` line the benches report.
fn parse_stat(stat: &str) -> ProcessStat {
    // Fields after the `(comm)`, which may hold spaces: state is the 3rd
    // field, minflt the 10th, utime the 14th, stime the 15th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    ProcessStat {
        minor_faults: field(7),
        user_ticks: field(11),
        system_ticks: field(12),
    }
}

/// `p50 / p99 / max` of latencies in ms (sorts them).
pub fn latency_summary(latencies: &mut [f64]) -> String {
    match p50_p99_max(latencies) {
        None => "no samples".into(),
        Some([p50, p99, max]) => format!(
            "p50 {p50:.2} ms, p99 {p99:.1} ms, max {max:.1} ms ({} samples)",
            latencies.len()
        ),
    }
}

/// The median, 99th percentile and maximum of `values` (sorts them); `None`
/// when there are none.
pub fn p50_p99_max(values: &mut [f64]) -> Option<[f64; 3]> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q) as usize];
    Some([at(0.5), at(0.99), at(1.0)])
}
