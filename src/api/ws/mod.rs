//! WebSocket push: protocol, subscription hub, per-connection session, and the
//! coalescer that turns engine changes into updates.

pub mod coalesce;
pub mod hub;
pub mod protocol;
pub mod session;

pub use coalesce::run_coalescer;
pub use hub::{ClientId, Hub, InterestChange, SubscribeError};
pub use protocol::{ClientMessage, ServerMessage};
pub use session::{accept_upgrade, run_session, SnapshotProvider};
