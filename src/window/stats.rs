//! What a stats query returns: per window, the current and previous period and
//! the change between them. These are the JSON bodies of `/stats` and WS updates.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::Bucket;

/// Aggregates of one period (the current window or the previous one).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PeriodStats {
    pub txns: u64,
    pub buys: u64,
    pub sells: u64,
    pub volume_usd: f64,
    pub buy_volume_usd: f64,
    pub sell_volume_usd: f64,
    pub volume_token: f64,
    pub unique_wallets: u64,
    pub unique_buyers: u64,
    pub unique_sellers: u64,
    /// Price of the first swap of the period; `null` when there was none.
    pub price_open: Option<f64>,
    pub price_high: Option<f64>,
    pub price_low: Option<f64>,
    /// Price of the last swap of the period.
    pub price_close: Option<f64>,
    /// `(close - open) / open * 100`; `null` without swaps or with a zero open.
    pub price_change_pct: Option<f64>,
}

impl PeriodStats {
    /// Counts, volumes and prices from a merged bucket; unique counts are set by the caller.
    pub fn from_bucket(b: &Bucket) -> Self {
        if b.is_empty() {
            return Self::default();
        }
        let change =
            (b.open.price > 0.0).then(|| (b.close.price - b.open.price) / b.open.price * 100.0);
        Self {
            txns: u64::from(b.txns),
            buys: u64::from(b.buys),
            sells: u64::from(b.sells),
            volume_usd: b.volume_usd,
            buy_volume_usd: b.buy_volume_usd,
            sell_volume_usd: b.sell_volume_usd,
            volume_token: b.volume_token,
            unique_wallets: 0,
            unique_buyers: 0,
            unique_sellers: 0,
            price_open: Some(b.open.price),
            price_high: Some(b.high),
            price_low: Some(b.low),
            price_close: Some(b.close.price),
            price_change_pct: change,
        }
    }
}

/// Change of the current period against the previous one, in percent; `null`
/// where the previous value is zero.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChangePct {
    pub txns: Option<f64>,
    pub volume_usd: Option<f64>,
    pub unique_wallets: Option<f64>,
    pub price_close: Option<f64>,
}

impl ChangePct {
    /// Compares `current` with `previous`.
    pub fn between(current: &PeriodStats, previous: &PeriodStats) -> Self {
        fn pct(now: f64, before: f64) -> Option<f64> {
            (before != 0.0).then(|| (now - before) / before * 100.0)
        }
        Self {
            txns: pct(current.txns as f64, previous.txns as f64),
            volume_usd: pct(current.volume_usd, previous.volume_usd),
            unique_wallets: pct(
                current.unique_wallets as f64,
                previous.unique_wallets as f64,
            ),
            price_close: match (current.price_close, previous.price_close) {
                (Some(now), Some(before)) => pct(now, before),
                _ => None,
            },
        }
    }
}

/// One window: the current period's numbers at top level, the previous period,
/// and the change between them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WindowStats {
    #[serde(flatten)]
    pub current: PeriodStats,
    pub previous: PeriodStats,
    pub change_pct: ChangePct,
}

/// All windows of one token at one query time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenStats {
    pub token: String,
    /// Query time, unix milliseconds.
    pub updated_at: i64,
    /// Block time of the newest swap of the token, unix milliseconds.
    pub last_swap_at: Option<i64>,
    /// Window name → stats, in configured order.
    pub windows: Windows,
}

/// Window name → stats, serialized as a JSON object in configured order.
/// Inline up to four windows (the default set): a query's answer then needs
/// no heap block of its own. A ~1.6 KB block is past glibc's per-thread
/// cache: allocating and freeing one beside each query added ~0.37 µs (~20 %)
/// to the engine bench's `stats/below_counters_token`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Windows(pub WindowList);

/// The windows of one answer, in configured order.
pub type WindowList = SmallVec<[(Arc<str>, WindowStats); 4]>;

impl Windows {
    /// The stats of the window named `name`.
    pub fn get(&self, name: &str) -> Option<&WindowStats> {
        self.0.iter().find(|(n, _)| &**n == name).map(|(_, w)| w)
    }
}

impl Serialize for Windows {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, stats) in &self.0 {
            map.serialize_entry(name, stats)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Windows {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Windows;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of window stats")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Windows, A::Error> {
                let mut out = WindowList::new();
                while let Some((k, v)) = map.next_entry::<String, WindowStats>()? {
                    out.push((k.into(), v));
                }
                Ok(Windows(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// What `/stats/top` ranks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RankBy {
    VolumeUsd,
    Txns,
    UniqueWallets,
    PriceChangePct,
}

impl RankBy {
    /// Parses the `by` query parameter.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "volume_usd" => Some(Self::VolumeUsd),
            "txns" => Some(Self::Txns),
            "unique_wallets" => Some(Self::UniqueWallets),
            "price_change_pct" => Some(Self::PriceChangePct),
            _ => None,
        }
    }

    /// The ranked value of a period (`None` ranks last).
    pub fn value(self, p: &PeriodStats) -> Option<f64> {
        match self {
            Self::VolumeUsd => Some(p.volume_usd),
            Self::Txns => Some(p.txns as f64),
            Self::UniqueWallets => Some(p.unique_wallets as f64),
            Self::PriceChangePct => p.price_change_pct,
        }
    }
}

/// One row of a top-N answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopEntry {
    pub token: String,
    pub value: Option<f64>,
    pub stats: WindowStats,
}
