//! One module per subcommand: wiring of the library parts into a running role.

mod shared;
pub mod standalone;
