//! Synthetic swap stream: Zipf-like token popularity (BTC, ETH, SOL first),
//! random-walk prices, duplicates and block-time disorder. Deterministic for a
//! seed, so tests can recompute exactly what was sent.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::config::GeneratorSettings;
use crate::swap::{Side, Swap};

/// Names of the most popular tokens, so README examples answer at once.
const HEAD_TOKENS: [(&str, f64); 3] = [("BTC", 60_000.0), ("ETH", 3_000.0), ("SOL", 150.0)];
/// Zipf exponent of token popularity.
const ZIPF_S: f64 = 1.1;
/// How many recent swaps a duplicate may repeat.
const DUP_MEMORY: usize = 1024;

/// A deterministic generator of swaps.
pub struct SwapGenerator {
    rng: SmallRng,
    seed: u64,
    tokens: Vec<String>,
    prices: Vec<f64>,
    /// Cumulative popularity of tokens, for sampling by binary search.
    cdf: Vec<f64>,
    wallets: u32,
    dup_rate: f64,
    disorder_ms: i64,
    seq: u64,
    recent: Vec<Swap>,
}

/// The name of token number `index` (0 = most popular).
pub fn token_name(index: usize) -> String {
    match HEAD_TOKENS.get(index) {
        Some((name, _)) => (*name).to_string(),
        None => format!("TKN{index}"),
    }
}

impl SwapGenerator {
    /// A generator for these settings.
    pub fn new(settings: &GeneratorSettings) -> Self {
        let mut rng = SmallRng::seed_from_u64(settings.seed);
        let n = settings.tokens.max(1) as usize;
        let tokens: Vec<String> = (0..n).map(token_name).collect();
        let prices = (0..n)
            .map(|i| match HEAD_TOKENS.get(i) {
                Some((_, price)) => *price,
                None => 10f64.powf(rng.random_range(-4.0..2.0)),
            })
            .collect();
        let mut total = 0.0;
        let cdf = (0..n)
            .map(|i| {
                total += 1.0 / ((i + 1) as f64).powf(ZIPF_S);
                total
            })
            .collect();
        Self {
            rng,
            seed: settings.seed,
            tokens,
            prices,
            cdf,
            wallets: settings.wallets.max(1),
            dup_rate: settings.dup_rate,
            disorder_ms: settings.disorder.as_millis() as i64,
            seq: 0,
            recent: Vec::with_capacity(DUP_MEMORY),
        }
    }

    /// The next swap; its block time is `now_ms` minus a random disorder.
    /// A duplicate repeats an earlier swap exactly (same id and block time).
    pub fn next_swap(&mut self, now_ms: i64) -> Swap {
        if !self.recent.is_empty() && self.rng.random_bool(self.dup_rate) {
            let i = self.rng.random_range(0..self.recent.len());
            return self.recent[i].clone();
        }
        let swap = self.fresh_swap(now_ms);
        if self.recent.len() < DUP_MEMORY {
            self.recent.push(swap.clone());
        } else {
            let slot = (self.seq as usize) % DUP_MEMORY;
            self.recent[slot] = swap.clone();
        }
        swap
    }

    fn fresh_swap(&mut self, now_ms: i64) -> Swap {
        self.seq += 1;
        let total = self.cdf.last().copied().unwrap_or(1.0);
        let pick: f64 = self.rng.random_range(0.0..total);
        let t = self
            .cdf
            .partition_point(|c| *c < pick)
            .min(self.tokens.len() - 1);
        // Random walk: ~0.1% per swap, so prices move visibly within minutes.
        let step: f64 = self.rng.random_range(-0.001..0.001);
        self.prices[t] *= 1.0 + step;
        let price = self.prices[t];
        let usd = 10f64.powf(self.rng.random_range(1.0..4.0));
        let side = if self.rng.random_bool(0.5) {
            Side::Buy
        } else {
            Side::Sell
        };
        let wallet = self.rng.random_range(0..self.wallets);
        let lag = if self.disorder_ms > 0 {
            self.rng.random_range(0..=self.disorder_ms)
        } else {
            0
        };
        Swap {
            event_id: format!("g{}-{}", self.seed, self.seq),
            token: self.tokens[t].clone(),
            wallet: Some(format!("W{wallet}")),
            side,
            amount: usd / price,
            usd,
            rate: price,
            created_at_ms: Some(now_ms),
            executed_at_ms: now_ms - lag,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_head_tokens_dominate() {
        let settings = GeneratorSettings {
            dup_rate: 0.1,
            ..Default::default()
        };
        let mut a = SwapGenerator::new(&settings);
        let mut b = SwapGenerator::new(&settings);
        let mut btc = 0;
        let mut dups = 0;
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            let (x, y) = (a.next_swap(1_000_000 + i), b.next_swap(1_000_000 + i));
            assert_eq!(x, y);
            btc += usize::from(x.token == "BTC");
            dups += usize::from(!seen.insert(x.event_id.clone()));
            assert!(x.usd.is_finite() && x.amount > 0.0 && x.rate > 0.0);
        }
        assert!(btc > 1000, "BTC is the most popular token: {btc}");
        assert!((500..1500).contains(&dups), "about 10% duplicates: {dups}");
    }
}
