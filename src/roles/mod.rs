//! One module per subcommand: wiring of the library parts into a running role.

mod shared;
pub mod produce;
pub mod router;
// pub mod shard; (enabled when the Redis store lands)
pub mod standalone;
