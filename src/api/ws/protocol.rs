//! The WebSocket protocol, shared by shards, standalone and the router.
//!
//! Client → server: `{"op":"subscribe","tokens":[...]}`, `{"op":"unsubscribe","tokens":[...]}`,
//! `{"op":"ping"}`. Server → client: `snapshot` (on subscribe), `update`
//! (coalesced per token), `subscribed`/`unsubscribed` acks, `error`, `pong`.

use serde::{Deserialize, Serialize};

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientMessage {
    Subscribe { tokens: Vec<String> },
    Unsubscribe { tokens: Vec<String> },
    Ping,
}

/// A message to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage {
    /// Current stats right after subscribing; `stats` is null while the token has no swaps.
    Snapshot {
        token: String,
        stats: Option<serde_json::Value>,
    },
    /// The token's stats changed.
    Update {
        token: String,
        stats: serde_json::Value,
    },
    Subscribed {
        tokens: Vec<String>,
    },
    Unsubscribed {
        tokens: Vec<String>,
    },
    /// The last client message was refused; the connection stays open.
    Error {
        error: String,
    },
    Pong,
}

impl ServerMessage {
    /// The JSON text of this message.
    pub fn to_text(&self) -> String {
        // Serializing these plain enums cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}
