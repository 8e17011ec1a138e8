//! One time bucket's aggregate: counts, volumes and OHLC price. Buckets merge
//! associatively, so out-of-order swaps and restored deltas land in the same state.

use serde::{Deserialize, Serialize};

use crate::swap::{Side, Swap};

/// A price observed at a point in time; `tie` orders swaps in the same millisecond
/// (a hash of the event id), so open/close do not depend on arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PricePoint {
    pub at_ms: i64,
    pub tie: u64,
    pub price: f64,
}

impl PricePoint {
    fn key(&self) -> (i64, u64) {
        (self.at_ms, self.tie)
    }
}

/// Aggregate of the swaps whose block time falls in one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Bucket {
    pub txns: u32,
    pub buys: u32,
    pub sells: u32,
    pub volume_usd: f64,
    pub buy_volume_usd: f64,
    pub sell_volume_usd: f64,
    pub volume_token: f64,
    /// Earliest swap (by block time, then tie); meaningless while `txns == 0`.
    pub open: PricePoint,
    /// Latest swap (by block time, then tie); meaningless while `txns == 0`.
    pub close: PricePoint,
    pub high: f64,
    pub low: f64,
}

impl Bucket {
    /// A bucket holding exactly one swap.
    pub fn of_swap(swap: &Swap, tie: u64) -> Self {
        let point = PricePoint {
            at_ms: swap.executed_at_ms,
            tie,
            price: swap.rate,
        };
        let (buys, sells, buy_usd, sell_usd) = match swap.side {
            Side::Buy => (1, 0, swap.usd, 0.0),
            Side::Sell => (0, 1, 0.0, swap.usd),
        };
        Self {
            txns: 1,
            buys,
            sells,
            volume_usd: swap.usd,
            buy_volume_usd: buy_usd,
            sell_volume_usd: sell_usd,
            volume_token: swap.amount,
            open: point,
            close: point,
            high: swap.rate,
            low: swap.rate,
        }
    }

    /// True when no swap has landed here.
    pub fn is_empty(&self) -> bool {
        self.txns == 0
    }

    /// Folds `other` into `self`.
    pub fn merge(&mut self, other: &Bucket) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = *other;
            return;
        }
        self.add_totals(other);
        if other.open.key() < self.open.key() {
            self.open = other.open;
        }
        if other.close.key() > self.close.key() {
            self.close = other.close;
        }
        self.high = self.high.max(other.high);
        self.low = self.low.min(other.low);
    }

    /// Adds `other`'s counts and volumes (the part of a merge that is a sum).
    #[inline]
    fn add_totals(&mut self, other: &Bucket) {
        self.txns += other.txns;
        self.buys += other.buys;
        self.sells += other.sells;
        self.volume_usd += other.volume_usd;
        self.buy_volume_usd += other.buy_volume_usd;
        self.sell_volume_usd += other.sell_volume_usd;
        self.volume_token += other.volume_token;
    }

    /// Folds in `later`, a bucket of a later key (all its swaps come after this
    /// one's): a range fold's in-order step, with no open/close comparisons.
    /// Prices are finite (validated), so plain comparisons pick high and low.
    #[inline]
    pub fn append(&mut self, later: &Bucket) {
        if later.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = *later;
            return;
        }
        self.add_totals(later);
        self.close = later.close;
        if later.high > self.high {
            self.high = later.high;
        }
        if later.low < self.low {
            self.low = later.low;
        }
    }
}
