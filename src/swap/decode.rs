//! Wire format (JSON) → validated [`Swap`], and back. The original service's
//! fields are accepted as they were; `executed_at` may also be unix milliseconds.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{Side, Swap};

/// Why a swap was rejected; each reason is counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Not JSON, or JSON of the wrong shape.
    Malformed,
    /// A required field is absent.
    MissingField,
    /// A number is negative, NaN or infinite.
    BadNumber,
    /// `side` is not `buy` or `sell`.
    UnknownSide,
    /// An id, token or wallet is empty or longer than the limit.
    BadString,
    /// A timestamp that does not parse.
    BadTime,
    /// Block time further in the future than `ingest.max_future_skew`.
    FromTheFuture,
}

impl RejectReason {
    /// All reasons, for metrics that list each one.
    pub const ALL: [RejectReason; 7] = [
        Self::Malformed,
        Self::MissingField,
        Self::BadNumber,
        Self::UnknownSide,
        Self::BadString,
        Self::BadTime,
        Self::FromTheFuture,
    ];

    /// Stable snake_case name used in metrics labels and dead-letter headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::MissingField => "missing_field",
            Self::BadNumber => "bad_number",
            Self::UnknownSide => "unknown_side",
            Self::BadString => "bad_string",
            Self::BadTime => "bad_time",
            Self::FromTheFuture => "from_the_future",
        }
    }
}

/// A rejected swap: the reason and a human-readable detail.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Validation limits.
#[derive(Debug, Clone, Copy)]
pub struct SwapLimits {
    /// Longest id, token or wallet, in bytes.
    pub max_string_bytes: usize,
    /// How far the block time may be ahead of the decoder's clock.
    pub max_future_skew_ms: i64,
}

impl Default for SwapLimits {
    fn default() -> Self {
        Self {
            max_string_bytes: 128,
            max_future_skew_ms: 5_000,
        }
    }
}

/// A timestamp as sent: RFC 3339 text (borrowed from the message unless it has
/// escapes) or unix milliseconds.
enum WireTime<'a> {
    Millis(f64),
    Text(Cow<'a, str>),
}

/// An event id as sent: a string, or a number (kept as its JSON text).
struct WireId(String);

/// Hand-written so that neither type buffers the value and tries variants in
/// turn (what `#[serde(untagged)]` does, building an error per failed try):
/// decoding is on the shard's hot path.
impl<'de: 'a, 'a> Deserialize<'de> for WireTime<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor("a unix millisecond time or RFC 3339 text"))
            .map(|scalar| match scalar {
                Scalar::Number(n) => WireTime::Millis(n.as_f64().unwrap_or(f64::NAN)),
                Scalar::Text(text) => WireTime::Text(text),
            })
    }
}

impl<'de> Deserialize<'de> for WireId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor("`event_id` as a string or number"))
            .map(|scalar| match scalar {
                Scalar::Number(n) => WireId(n.to_string()),
                Scalar::Text(text) => WireId(text.into_owned()),
            })
    }
}

/// A JSON string (borrowed from the message when it has no escapes) or number.
enum Scalar<'a> {
    Number(serde_json::Number),
    Text(Cow<'a, str>),
}

/// Accepts a JSON string or number; `.0` says what was expected.
struct ScalarVisitor(&'static str);

impl<'de> serde::de::Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.0)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Number(v.into()))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Number(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar<'de>, E> {
        serde_json::Number::from_f64(v)
            .map(Scalar::Number)
            .ok_or_else(|| E::custom(format!("{v} is not a JSON number")))
    }
    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Text(Cow::Owned(v)))
    }
}

/// The JSON object as it arrives; everything optional so a missing field is a
/// [`RejectReason::MissingField`], not a parse error. The side and the times
/// are borrowed from the message: only what [`Swap`] keeps is allocated.
#[derive(Deserialize)]
struct WireSwap<'a> {
    event_id: Option<WireId>,
    token_id: Option<String>,
    wallet: Option<String>,
    #[serde(borrow)]
    side: Option<Cow<'a, str>>,
    amount: Option<f64>,
    usd: Option<f64>,
    rate: Option<f64>,
    #[serde(borrow)]
    created_at: Option<WireTime<'a>>,
    #[serde(borrow)]
    executed_at: Option<WireTime<'a>>,
}

/// Decodes and validates one swap from its JSON bytes. `now_ms` is the clock used
/// for the future-skew check.
pub fn decode_swap(bytes: &[u8], limits: &SwapLimits, now_ms: i64) -> Result<Swap, Rejection> {
    use RejectReason::*;
    // One UTF-8 check of the whole message: parsing from `&str` then skips
    // the check serde_json would make of every key and string value.
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Rejection::new(Malformed, format!("not UTF-8: {e}")))?;
    let wire: WireSwap =
        serde_json::from_str(text).map_err(|e| Rejection::new(Malformed, e.to_string()))?;
    let missing = |name: &str| Rejection::new(MissingField, format!("`{name}` is required"));

    let WireId(event_id) = wire.event_id.ok_or_else(|| missing("event_id"))?;
    let token = wire.token_id.ok_or_else(|| missing("token_id"))?;
    check_string("event_id", &event_id, limits)?;
    check_string("token_id", &token, limits)?;
    if let Some(wallet) = &wire.wallet {
        check_string("wallet", wallet, limits)?;
    }
    let side = wire.side.ok_or_else(|| missing("side"))?;
    let side = if side.eq_ignore_ascii_case("buy") {
        Side::Buy
    } else if side.eq_ignore_ascii_case("sell") {
        Side::Sell
    } else {
        return Err(Rejection::new(
            UnknownSide,
            format!("side `{}`", side.to_ascii_lowercase()),
        ));
    };
    let amount = check_number("amount", wire.amount.ok_or_else(|| missing("amount"))?)?;
    let usd = check_number("usd", wire.usd.ok_or_else(|| missing("usd"))?)?;
    let rate = match wire.rate {
        Some(rate) => check_number("rate", rate)?,
        None if amount > 0.0 => usd / amount,
        None => 0.0,
    };
    let executed_at_ms = parse_time(
        "executed_at",
        wire.executed_at.ok_or_else(|| missing("executed_at"))?,
    )?;
    let created_at_ms = wire
        .created_at
        .map(|t| parse_time("created_at", t))
        .transpose()?;
    if executed_at_ms > now_ms.saturating_add(limits.max_future_skew_ms) {
        return Err(Rejection::new(
            FromTheFuture,
            format!("executed_at is {} ms ahead of now", executed_at_ms - now_ms),
        ));
    }
    Ok(Swap {
        event_id,
        token,
        wallet: wire.wallet,
        side,
        amount,
        usd,
        rate,
        created_at_ms,
        executed_at_ms,
    })
}

/// Encodes a swap in the wire format (times as RFC 3339), as the producer sends it.
pub fn encode_swap(swap: &Swap) -> Vec<u8> {
    let time = |ms: i64| {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
    };
    let value = serde_json::json!({
        "event_id": swap.event_id,
        "token_id": swap.token,
        "wallet": swap.wallet,
        "side": swap.side,
        "amount": swap.amount,
        "usd": swap.usd,
        "rate": swap.rate,
        "created_at": swap.created_at_ms.and_then(time),
        "executed_at": time(swap.executed_at_ms),
    });
    // Serializing a `Value` cannot fail.
    serde_json::to_vec(&value).unwrap_or_default()
}

fn check_string(name: &str, value: &str, limits: &SwapLimits) -> Result<(), Rejection> {
    if value.is_empty() || value.len() > limits.max_string_bytes {
        return Err(Rejection::new(
            RejectReason::BadString,
            format!(
                "`{name}` must be 1..={} bytes, got {}",
                limits.max_string_bytes,
                value.len()
            ),
        ));
    }
    Ok(())
}

fn check_number(name: &str, value: f64) -> Result<f64, Rejection> {
    if !value.is_finite() || value < 0.0 {
        return Err(Rejection::new(
            RejectReason::BadNumber,
            format!("`{name}` = {value}"),
        ));
    }
    Ok(value)
}

fn parse_time(name: &str, value: WireTime) -> Result<i64, Rejection> {
    let bad = |detail: String| Rejection::new(RejectReason::BadTime, format!("`{name}`: {detail}"));
    match value {
        WireTime::Millis(ms) if (0.0..1e15).contains(&ms) => Ok(ms as i64),
        WireTime::Millis(ms) => Err(bad(format!("{ms} is not a unix millisecond time"))),
        WireTime::Text(text) => {
            let t = OffsetDateTime::parse(&text, &Rfc3339).map_err(|e| bad(e.to_string()))?;
            i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|e| bad(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn decode(json: &str) -> Result<Swap, Rejection> {
        decode_swap(json.as_bytes(), &SwapLimits::default(), NOW)
    }

    fn reason(json: &str) -> RejectReason {
        decode(json).unwrap_err().reason
    }

    #[test]
    fn accepts_the_original_fields() {
        let s = decode(
            r#"{"event_id":"e1","token_id":"BTC","amount":2,"usd":100,"side":"buy","rate":50,
            "created_at":"2023-11-14T22:13:20Z","executed_at":"2023-11-14T22:13:19.5Z"}"#,
        )
        .unwrap();
        assert_eq!(s.token, "BTC");
        assert_eq!(s.side, Side::Buy);
        assert_eq!(s.executed_at_ms, NOW - 500);
        assert_eq!(s.created_at_ms, Some(NOW));
        assert_eq!(s.wallet, None);
    }

    #[test]
    fn accepts_millis_and_wallet_and_round_trips() {
        let s = decode(r#"{"event_id":7,"token_id":"ETH","wallet":"w1","amount":1,"usd":3,"side":"SELL","executed_at":1699999999000}"#)
            .unwrap();
        assert_eq!(s.event_id, "7");
        assert_eq!(s.rate, 3.0);
        assert_eq!(s.wallet.as_deref(), Some("w1"));
        let again = decode_swap(&encode_swap(&s), &SwapLimits::default(), NOW).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn escaped_side_and_times_decode_like_plain_ones() {
        // Escapes make serde_json hand over an owned copy instead of a borrow.
        let s = decode(
            r#"{"event_id":"e\u0031","token_id":"BTC","amount":2,"usd":100,"side":"B\u0075y",
            "created_at":"2023-11-14T22:13:20\u005a","executed_at":"2023-11-14T22:13:19.5Z"}"#,
        )
        .unwrap();
        assert_eq!(s.event_id, "e1");
        assert_eq!(s.side, Side::Buy);
        assert_eq!(s.created_at_ms, Some(NOW));
        assert_eq!(s.executed_at_ms, NOW - 500);
    }

    #[test]
    fn rejects_each_kind_of_bad_input() {
        let ok = r#""event_id":"e","token_id":"T","amount":1,"usd":1,"side":"buy""#;
        assert_eq!(reason("not json"), RejectReason::Malformed);
        assert_eq!(reason("[1,2]"), RejectReason::Malformed);
        // Invalid UTF-8 inside strings, or outside any string.
        let good = format!(r#"{{{ok},"executed_at":1,"wallet":"w"}}"#);
        assert!(decode_swap(good.as_bytes(), &SwapLimits::default(), NOW).is_ok());
        let in_strings: Vec<u8> = good
            .bytes()
            .map(|b| if b == b'w' { 0xff } else { b })
            .collect();
        let outside = [b"\xfe".as_slice(), good.as_bytes()].concat();
        for bytes in [in_strings, outside] {
            let err = decode_swap(&bytes, &SwapLimits::default(), NOW).unwrap_err();
            assert_eq!(err.reason, RejectReason::Malformed);
        }
        assert_eq!(reason(&format!("{{{ok}}}")), RejectReason::MissingField);
        assert_eq!(
            reason(&format!(r#"{{{ok},"executed_at":"yesterday"}}"#)),
            RejectReason::BadTime
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","token_id":"T","amount":-1,"usd":1,"side":"buy","executed_at":1}"#
            ),
            RejectReason::BadNumber
        );
        assert_eq!(
            reason(
                r#"{"event_id":"e","token_id":"T","amount":1,"usd":1,"side":"hold","executed_at":1}"#
            ),
            RejectReason::UnknownSide
        );
        assert_eq!(
            reason(
                r#"{"event_id":"","token_id":"T","amount":1,"usd":1,"side":"buy","executed_at":1}"#
            ),
            RejectReason::BadString
        );
        let long = "x".repeat(129);
        assert_eq!(
            reason(&format!(
                r#"{{"event_id":"e","token_id":"{long}","amount":1,"usd":1,"side":"buy","executed_at":1}}"#
            )),
            RejectReason::BadString
        );
        assert_eq!(
            reason(&format!(r#"{{{ok},"executed_at":{}}}"#, NOW + 6_000)),
            RejectReason::FromTheFuture
        );
        assert!(decode(&format!(r#"{{{ok},"executed_at":{}}}"#, NOW + 4_000)).is_ok());
        let rest = r#""token_id":"T","amount":1,"usd":1,"side":"buy""#;
        for bad_id in ["true", "null", "[1]", r#"{"a":1}"#] {
            let json = format!(r#"{{"event_id":{bad_id},{rest},"executed_at":1}}"#);
            let expected = if bad_id == "null" {
                RejectReason::MissingField
            } else {
                RejectReason::Malformed
            };
            assert_eq!(reason(&json), expected, "{json}");
        }
        for bad_time in ["true", "[1]", r#"{"ms":1}"#] {
            let json = format!(r#"{{{ok},"executed_at":{bad_time}}}"#);
            assert_eq!(reason(&json), RejectReason::Malformed, "{json}");
        }
    }

    #[test]
    fn ids_and_times_take_every_json_scalar_form() {
        let rest = r#""token_id":"T","amount":1,"usd":1,"side":"buy""#;
        let id = |raw: &str| {
            decode(&format!(r#"{{"event_id":{raw},{rest},"executed_at":1}}"#))
                .unwrap()
                .event_id
        };
        assert_eq!(id(r#""a\"b\u00e9""#), "a\"bé");
        assert_eq!(id("-3"), "-3");
        assert_eq!(id("1.5"), "1.5");
        assert_eq!(id("18446744073709551615"), "18446744073709551615");
        let at = |raw: &str| {
            decode(&format!(r#"{{"event_id":"e",{rest},"executed_at":{raw}}}"#))
                .map(|s| s.executed_at_ms)
        };
        assert_eq!(at("1699999999000.9").unwrap(), 1_699_999_999_000);
        assert_eq!(at(r#""2023-11-14T22:13:19Z""#).unwrap(), 1_699_999_999_000);
        assert_eq!(at("-1").unwrap_err().reason, RejectReason::BadTime);
    }
}
