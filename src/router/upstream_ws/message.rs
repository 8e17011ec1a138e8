//! The few parts of the WS protocol a link reads and writes: the type and token
//! of a shard's message, and chunked subscribe/unsubscribe requests.

use serde::Deserialize;

use crate::api::ws::ClientMessage;

/// The head of a shard's message; the rest (stats) is forwarded untouched.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UpstreamMessage {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

impl UpstreamMessage {
    /// Parses a shard's text frame; `None` when it is not protocol JSON.
    pub fn parse(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

/// `{"op":"subscribe"|"unsubscribe","tokens":[..]}` texts of at most `per_message` tokens.
pub fn subscribe_messages(tokens: &[String], subscribe: bool, per_message: usize) -> Vec<String> {
    tokens
        .chunks(per_message.max(1))
        .map(|chunk| {
            let tokens = chunk.to_vec();
            let message = if subscribe {
                ClientMessage::Subscribe { tokens }
            } else {
                ClientMessage::Unsubscribe { tokens }
            };
            serde_json::to_string(&message).unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_chunks() {
        let update =
            UpstreamMessage::parse(r#"{"type":"update","token":"BTC","stats":{"x":[1,2]}}"#)
                .unwrap();
        assert_eq!(
            (update.kind.as_str(), update.token.as_deref()),
            ("update", Some("BTC"))
        );
        let error = UpstreamMessage::parse(r#"{"type":"error","error":"too many"}"#).unwrap();
        assert_eq!(error.error.as_deref(), Some("too many"));
        assert!(UpstreamMessage::parse("nope").is_none());

        let tokens: Vec<String> = (0..5).map(|i| format!("T{i}")).collect();
        let messages = subscribe_messages(&tokens, true, 2);
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0], r#"{"op":"subscribe","tokens":["T0","T1"]}"#);
        assert_eq!(
            subscribe_messages(&tokens[..1], false, 0),
            [r#"{"op":"unsubscribe","tokens":["T0"]}"#]
        );
        assert!(subscribe_messages(&[], true, 10).is_empty());
    }
}
