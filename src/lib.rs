//! swapstats: real-time token statistics for DEX swaps.
//!
//! Data flow (see DESIGN.md): [`source`] → [`swap`] decode/validate → [`window`]
//! engine (dedup, buckets) → [`store`] (one atomic write per batch) → [`api`]
//! (HTTP + WebSocket). [`shard`] wires one partition's pipeline; [`router`] fronts
//! the cluster; [`telemetry`] sets up traces, metrics and logs.

pub mod api;
pub mod config;
pub mod partition;
pub mod router;
pub mod shard;
pub mod source;
pub mod store;
pub mod swap;
pub mod telemetry;
pub mod window;

/// Wall-clock now in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
