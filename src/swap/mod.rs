//! The swap: its wire format, decoding and validation.

mod decode;
mod flat;
mod model;

pub use decode::{decode_swap, decode_swap_into, encode_swap, RejectReason, Rejection, SwapLimits};
pub use model::{Side, Swap};
