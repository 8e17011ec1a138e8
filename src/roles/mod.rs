//! One module per subcommand: wiring of the library parts into a running role.

pub mod produce;
pub mod router;
mod shared;
pub mod shard;
pub mod standalone;
