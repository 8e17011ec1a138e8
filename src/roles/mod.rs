//! One module per subcommand: wiring of the library parts into a running role.

pub mod produce;
pub mod router;
pub mod shard;
mod shared;
pub mod standalone;
