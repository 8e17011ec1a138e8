//! Where swaps come from: the built-in generator (standalone mode and
//! `produce`), an in-process channel, and Kafka (shards).

pub mod channel;
pub mod generator;

pub use channel::ChannelSource;
pub use generator::SwapGenerator;
pub mod kafka;
mod partition_queue;
