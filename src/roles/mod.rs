//! One module per subcommand: wiring of the library parts into a running role.

pub mod produce;
mod shared;
// pub mod shard; (enabled when the Redis store lands)
pub mod standalone;
