//! The in-memory swap, as every part after decoding sees it.

use serde::{Deserialize, Serialize};

/// Which side of the pool the maker took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

/// One validated swap. Times are unix milliseconds; `executed_at_ms` is the block
/// time that decides which buckets the swap lands in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Swap {
    pub event_id: String,
    pub token: String,
    pub wallet: Option<String>,
    pub side: Side,
    /// Token amount swapped.
    pub amount: f64,
    /// USD value of the swap.
    pub usd: f64,
    /// Price of the token in USD at this swap.
    pub rate: f64,
    pub created_at_ms: Option<i64>,
    pub executed_at_ms: i64,
}
