//! Wire format (JSON) → validated [`Swap`], and back. The original service's
//! fields are accepted as they were; `executed_at` may also be unix milliseconds.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::flat::{read_flat_object, FlatValue};
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
#[cfg_attr(test, derive(Debug, PartialEq))]
enum WireTime<'a> {
    Millis(f64),
    Text(Cow<'a, str>),
}

/// An event id as sent: a string (borrowed from the message unless it has
/// escapes), or a number (kept as its JSON text).
#[cfg_attr(test, derive(Debug, PartialEq))]
struct WireId<'a>(Cow<'a, str>);

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

impl<'de: 'a, 'a> Deserialize<'de> for WireId<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor("`event_id` as a string or number"))
            .map(|scalar| match scalar {
                Scalar::Number(n) => WireId(Cow::Owned(n.to_string())),
                Scalar::Text(text) => WireId(text),
            })
    }
}

/// A JSON string, borrowed from the message unless it has escapes. (serde
/// borrows a `Cow<str>` field only when it is not inside an `Option`: an
/// `Option<Cow<str>>` always allocates.)
#[cfg_attr(test, derive(Debug, PartialEq))]
struct WireText<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for WireText<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> serde::de::Visitor<'de> for TextVisitor {
            type Value = WireText<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(WireText(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(WireText(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(TextVisitor)
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
/// [`RejectReason::MissingField`], not a parse error. Its strings are borrowed
/// from the message (unless they have escapes): what [`Swap`] keeps is copied
/// into it, into strings a caller may reuse ([`decode_swap_into`]).
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct WireSwap<'a> {
    #[serde(borrow)]
    event_id: Option<WireId<'a>>,
    #[serde(borrow)]
    token_id: Option<WireText<'a>>,
    #[serde(borrow)]
    wallet: Option<WireText<'a>>,
    #[serde(borrow)]
    side: Option<WireText<'a>>,
    amount: Option<f64>,
    usd: Option<f64>,
    rate: Option<f64>,
    #[serde(borrow)]
    created_at: Option<WireTime<'a>>,
    #[serde(borrow)]
    executed_at: Option<WireTime<'a>>,
}

impl<'a> WireSwap<'a> {
    /// The message read directly when it is a flat object whose swap fields
    /// hold plain strings, unsigned numbers and nulls (see
    /// [`read_flat_object`]; other fields may hold any JSON), each field at
    /// most once and of a type serde would take for it; `None` for anything
    /// else, which serde_json then reads. Numbers are read correctly rounded
    /// (`str::parse`): the very `f64` a producer wrote in shortest form.
    /// serde_json's default reading, which the other shapes get, is off in
    /// the last place somewhere in ~28 % of the generator's messages; its exact
    /// `float_roundtrip` reading would slow every JSON this crate reads (the
    /// router's too), so the two readings may differ in a number's last bit.
    fn read_flat(text: &'a str) -> Option<Self> {
        let mut wire = WireSwap::default();
        let mut seen = 0_u16;
        read_flat_object(text, |key, value| {
            let bit = match key {
                "event_id" => {
                    wire.event_id = flat_text(value)?.map(|t| WireId(Cow::Borrowed(t)));
                    1
                }
                "token_id" => {
                    wire.token_id = flat_text(value)?.map(|t| WireText(Cow::Borrowed(t)));
                    2
                }
                "wallet" => {
                    wire.wallet = flat_text(value)?.map(|t| WireText(Cow::Borrowed(t)));
                    4
                }
                "side" => {
                    wire.side = flat_text(value)?.map(|t| WireText(Cow::Borrowed(t)));
                    8
                }
                "amount" => {
                    wire.amount = flat_number(value)?;
                    16
                }
                "usd" => {
                    wire.usd = flat_number(value)?;
                    32
                }
                "rate" => {
                    wire.rate = flat_number(value)?;
                    64
                }
                "created_at" => {
                    wire.created_at = flat_time(value)?;
                    128
                }
                "executed_at" => {
                    wire.executed_at = flat_time(value)?;
                    256
                }
                // serde ignores any other field, whatever its value.
                _ => 0,
            };
            // A field given twice is serde_json's error to report.
            (seen & bit == 0).then(|| seen |= bit)
        })?;
        Some(wire)
    }
}

/// A string field's value (`Some(None)`: null); `None` for a number, which
/// serde_json reads (an id's spelling) or refuses, for a boolean, which it
/// refuses, and for a skipped value (a string with escapes, which serde_json
/// decodes; a negative number, read like any number; an object or array,
/// which it refuses).
#[inline(always)]
fn flat_text(value: FlatValue<'_>) -> Option<Option<&str>> {
    match value {
        FlatValue::Text(text) => Some(Some(text)),
        FlatValue::Null => Some(None),
        FlatValue::Number(_) | FlatValue::Bool(_) | FlatValue::Skipped => None,
    }
}

/// A number field's value (`Some(None)`: null); `None` for a string or a
/// boolean, which serde_json refuses, for a number beyond `f64`, which it
/// refuses too, and for a skipped value (a negative number, which serde_json
/// reads for validation to reject; anything else, which it refuses).
#[inline(always)]
fn flat_number(value: FlatValue<'_>) -> Option<Option<f64>> {
    match value {
        FlatValue::Number(digits) => {
            let n: f64 = digits.parse().ok()?;
            n.is_finite().then_some(Some(n))
        }
        FlatValue::Null => Some(None),
        FlatValue::Text(_) | FlatValue::Bool(_) | FlatValue::Skipped => None,
    }
}

/// A time field's value (`Some(None)`: null): text or unix milliseconds.
#[inline(always)]
fn flat_time(value: FlatValue<'_>) -> Option<Option<WireTime<'_>>> {
    match value {
        FlatValue::Text(text) => Some(Some(WireTime::Text(Cow::Borrowed(text)))),
        _ => flat_number(value).map(|ms| ms.map(WireTime::Millis)),
    }
}

/// Decodes and validates one swap from its JSON bytes. `now_ms` is the clock used
/// for the future-skew check.
pub fn decode_swap(bytes: &[u8], limits: &SwapLimits, now_ms: i64) -> Result<Swap, Rejection> {
    let mut swap = Swap {
        event_id: String::new(),
        token: String::new(),
        wallet: None,
        side: Side::Buy,
        amount: 0.0,
        usd: 0.0,
        rate: 0.0,
        created_at_ms: None,
        executed_at_ms: 0,
    };
    decode_swap_into(bytes, limits, now_ms, &mut swap)?;
    Ok(swap)
}

/// [`decode_swap`] into `out`, whose strings are reused: a batch decoded into
/// last batch's swaps allocates nothing for the strings that fit. On a
/// rejection `out` is left as it was (it is written once all checks passed).
pub fn decode_swap_into(
    bytes: &[u8],
    limits: &SwapLimits,
    now_ms: i64,
    out: &mut Swap,
) -> Result<(), Rejection> {
    use RejectReason::*;
    // One UTF-8 check of the whole message: parsing from `&str` then skips
    // the check serde_json would make of every key and string value.
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Rejection::new(Malformed, format!("not UTF-8: {e}")))?;
    // The shape producers send is read directly; serde_json reads the rest.
    let wire = match WireSwap::read_flat(text) {
        Some(wire) => wire,
        None => serde_json::from_str(text).map_err(|e| Rejection::new(Malformed, e.to_string()))?,
    };
    let missing = |name: &str| Rejection::new(MissingField, format!("`{name}` is required"));

    let WireId(event_id) = wire.event_id.ok_or_else(|| missing("event_id"))?;
    let WireText(token) = wire.token_id.ok_or_else(|| missing("token_id"))?;
    check_string("event_id", &event_id, limits)?;
    check_string("token_id", &token, limits)?;
    if let Some(WireText(wallet)) = &wire.wallet {
        check_string("wallet", wallet, limits)?;
    }
    let WireText(side) = wire.side.ok_or_else(|| missing("side"))?;
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
    replace_text(&mut out.event_id, &event_id);
    replace_text(&mut out.token, &token);
    match (wire.wallet, &mut out.wallet) {
        (Some(WireText(wallet)), Some(kept)) => replace_text(kept, &wallet),
        (wallet, kept) => *kept = wallet.map(|WireText(w)| w.into_owned()),
    }
    out.side = side;
    out.amount = amount;
    out.usd = usd;
    out.rate = rate;
    out.created_at_ms = created_at_ms;
    out.executed_at_ms = executed_at_ms;
    Ok(())
}

/// Sets `kept` to `text`, in the allocation it has when that is large enough.
fn replace_text(kept: &mut String, text: &str) {
    kept.clear();
    kept.push_str(text);
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
        WireTime::Text(text) => match plain_rfc3339_ms(text.as_bytes()) {
            Some(ms) => Ok(ms),
            None => general_rfc3339_ms(&text).map_err(bad),
        },
    }
}

/// Unix ms of any RFC 3339 text, read by the `time` crate (truncated toward
/// zero); the error is the crate's message.
fn general_rfc3339_ms(text: &str) -> Result<i64, String> {
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| e.to_string())?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|e| e.to_string())
}

/// Unix ms of the RFC 3339 form every producer we know sends,
/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` with a valid date at or after
/// 1970, read directly; `None` for anything else, which the `time` crate then
/// parses (or rejects with its message). Both times of a swap went through the
/// general parser (and an `i128` division) before: a swap's decode is ~14 %
/// cheaper this way (`cargo bench --bench engine -- decode/`).
fn plain_rfc3339_ms(text: &[u8]) -> Option<i64> {
    /// The decimal value of `digits` (all ASCII digits, at most 18 of them).
    fn number(digits: &[u8]) -> Option<i64> {
        digits.iter().try_fold(0_i64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    }
    let (datetime, rest) = text.split_at_checked(19)?;
    let [_, _, _, _, b'-', _, _, b'-', _, _, b'T', _, _, b':', _, _, b':', _, _] = datetime else {
        return None;
    };
    let year = number(&datetime[0..4])?;
    let month = number(&datetime[5..7])?;
    let day = number(&datetime[8..10])?;
    let hour = number(&datetime[11..13])?;
    let minute = number(&datetime[14..16])?;
    let second = number(&datetime[17..19])?;
    // Second 60 (a leap second) is left to the `time` crate.
    if !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if year < 1970 || day < 1 || day > month_days {
        return None;
    }
    let (fraction_ms, zone) = match rest.strip_prefix(b".") {
        Some(fraction) => {
            let digits = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
            if !(1..=9).contains(&digits) {
                return None;
            }
            // Truncated to the millisecond, as the `time` path's division does.
            let ms = number(&fraction[..digits.min(3)])? * [100, 10, 1][digits.min(3) - 1];
            (ms, &fraction[digits..])
        }
        None => (0, rest),
    };
    let offset_s = match zone {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (hours, minutes) = (number(&[*h1, *h2])?, number(&[*m1, *m2])?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let s = hours * 3600 + minutes * 60;
            if *sign == b'-' {
                -s
            } else {
                s
            }
        }
        _ => return None,
    };
    // Days since 1970-01-01 of the proleptic Gregorian date (a civil-from-days
    // inverse: years start in March, so the leap day is a year's last).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era_year = y.rem_euclid(400);
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = era_year * 365 + era_year / 4 - era_year / 100 + day_of_year;
    let days = y.div_euclid(400) * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    // Before 1970 in UTC the `time` path rounds toward zero, not down.
    (seconds >= 0).then(|| seconds * 1000 + fraction_ms)
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy;

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

    proptest::proptest! {
        /// The direct reading agrees with the `time` crate wherever it answers,
        /// and answers for every well-formed UTC or offset time after 1970.
        #[test]
        fn plain_rfc3339_agrees_with_the_time_crate(
            year in 1960_i64..2200,
            month in 0_i64..14,
            day in 0_i64..33,
            hour in 0_i64..25,
            minute in 0_i64..61,
            second in 0_i64..62,
            fraction in proptest::option::of("[0-9]{0,11}"),
            zone in proptest::prop_oneof![
                proptest::strategy::Just("Z".to_string()),
                "[+-](0[0-9]|1[0-9]|2[0-5]):[0-6][0-9]",
                "[zZ+ ]?[0-9:]{0,6}",
            ],
        ) {
            let fraction = fraction.map(|f| format!(".{f}")).unwrap_or_default();
            let text = format!(
                "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}{zone}"
            );
            let general = general_rfc3339_ms(&text).ok();
            match plain_rfc3339_ms(text.as_bytes()) {
                Some(ms) => proptest::prop_assert_eq!(Some(ms), general, "{}", text),
                None => {
                    let plain_form = second < 60
                        && fraction.len() != 1
                        && fraction.len() <= 10
                        && (zone == "Z" || zone.len() == 6 && zone[1..3] < *"24" && zone[4..] < *"60");
                    if let (Some(ms), true) = (general, plain_form) {
                        proptest::prop_assert!(ms < 0, "{} = {} ms was left to the time crate", text, ms);
                    }
                }
            }
        }
    }

    #[test]
    fn plain_rfc3339_reads_the_producers_form() {
        let cases = [
            ("1970-01-01T00:00:00Z", 0),
            ("2023-11-14T22:13:19.5Z", NOW - 500),
            ("2023-11-14T22:13:20.123456789Z", NOW + 123),
            ("2023-11-15T00:13:20+02:00", NOW),
            ("2023-11-14T20:13:20.999-02:00", NOW + 999),
            ("2024-02-29T12:00:00Z", 1_709_208_000_000),
        ];
        for (text, ms) in cases {
            assert_eq!(plain_rfc3339_ms(text.as_bytes()), Some(ms), "{text}");
            assert_eq!(general_rfc3339_ms(text), Ok(ms), "{text}");
        }
        for left_to_the_time_crate in [
            "2023-02-29T00:00:00Z",
            "2023-11-14T22:13:60Z",
            "2023-11-14t22:13:20Z",
            "2023-11-14T22:13:20z",
            "1970-01-01T00:00:00+01:00",
            "1969-12-31T23:59:59Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20",
        ] {
            assert_eq!(plain_rfc3339_ms(left_to_the_time_crate.as_bytes()), None);
        }
    }

    /// What serde_json alone reads from `text`.
    fn serde_reading(text: &str) -> Option<WireSwap<'_>> {
        serde_json::from_str(text).ok()
    }

    /// `direct` reads as `serde` does: the same strings and nulls, and
    /// numbers equal but for serde_json's last-place error (see
    /// [`WireSwap::read_flat`]).
    fn reads_like(direct: &WireSwap, serde: Option<&WireSwap>) -> bool {
        let close = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => {
                let gap = (x - y).abs();
                gap <= 4.0 * f64::EPSILON * x.abs().max(y.abs()) || gap < 1e-300
            }
            (x, y) => x.is_none() && y.is_none(),
        };
        let time = |x: &Option<WireTime>, y: &Option<WireTime>| match (x, y) {
            (Some(WireTime::Millis(x)), Some(WireTime::Millis(y))) => close(Some(*x), Some(*y)),
            _ => x == y,
        };
        serde.is_some_and(|serde| {
            direct.event_id == serde.event_id
                && direct.token_id == serde.token_id
                && direct.wallet == serde.wallet
                && direct.side == serde.side
                && close(direct.amount, serde.amount)
                && close(direct.usd, serde.usd)
                && close(direct.rate, serde.rate)
                && time(&direct.created_at, &serde.created_at)
                && time(&direct.executed_at, &serde.executed_at)
        })
    }

    /// Decoding into a kept swap gives what a fresh decode gives, whatever
    /// the kept swap held: longer or shorter strings, a wallet or none, text
    /// with escapes (serde_json's reading), and after a rejection.
    #[test]
    fn decoding_into_a_kept_swap_equals_a_fresh_decode() {
        let limits = SwapLimits::default();
        let settings = crate::config::GeneratorSettings {
            wallets: 1000,
            seed: 5,
            ..Default::default()
        };
        let mut generator = crate::source::SwapGenerator::new(&settings);
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        for i in 0..200 {
            let mut swap = generator.next_swap(NOW);
            if i % 3 == 0 {
                swap.wallet = None;
            }
            if i % 5 == 0 {
                swap.event_id = format!("{}-a-much-longer-event-id-than-the-others", swap.event_id);
            }
            payloads.push(encode_swap(&swap));
        }
        payloads.push(br#"{"event_id":"e\"1","token_id":"T\u0041","wallet":"w\n","side":"buy","amount":1,"usd":2,"executed_at":1700000000000}"#.to_vec());
        payloads.push(br#"{"event_id":7,"token_id":"T","side":"sell","amount":1,"usd":2,"executed_at":1700000000000}"#.to_vec());
        payloads.push(br#"{"event_id":"x","token_id":"T","side":"hold","amount":1,"usd":2,"executed_at":1700000000000}"#.to_vec());
        let mut kept = decode_swap(&payloads[1], &limits, NOW + 10_000).unwrap();
        for payload in payloads.iter().chain(payloads.iter().rev()) {
            let fresh = decode_swap(payload, &limits, NOW + 10_000);
            let into = decode_swap_into(payload, &limits, NOW + 10_000, &mut kept);
            match fresh {
                Ok(fresh) => {
                    assert_eq!(into, Ok(()));
                    assert_eq!(kept, fresh, "{}", String::from_utf8_lossy(payload));
                }
                Err(rejection) => assert_eq!(into, Err(rejection)),
            }
        }
    }

    #[test]
    fn producers_messages_are_read_directly_and_as_serde_reads_them() {
        let settings = crate::config::GeneratorSettings {
            wallets: 1000,
            seed: 3,
            ..Default::default()
        };
        let mut generator = crate::source::SwapGenerator::new(&settings);
        for _ in 0..2000 {
            let swap = generator.next_swap(NOW);
            let payload = encode_swap(&swap);
            let text = std::str::from_utf8(&payload).unwrap();
            let direct = WireSwap::read_flat(text).unwrap();
            assert!(reads_like(&direct, serde_reading(text).as_ref()), "{text}");
            // Read back exactly as written.
            assert_eq!(
                decode_swap(&payload, &SwapLimits::default(), NOW + 10_000).as_ref(),
                Ok(&swap),
                "{text}"
            );
        }
        // Nulls, whitespace, unknown fields and unix milliseconds too.
        let text = r#" { "event_id" : "e", "token_id":"T", "wallet":null, "side":"buy",
            "amount":1.5e2, "usd":0, "rate":null, "extra":"x", "n":12, "ok":true,
            "created_at":null, "executed_at":1699999999000 } "#;
        let direct = WireSwap::read_flat(text).unwrap();
        assert!(reads_like(&direct, serde_reading(text).as_ref()));
    }

    /// A producer's extra fields of any shape (nested, negative, escaped)
    /// keep the direct reading; a swap field of such a shape goes to serde_json.
    #[test]
    fn extra_fields_of_any_shape_are_skipped() {
        let swap = crate::swap::Swap {
            event_id: "e-1".into(),
            token: "TKN".into(),
            wallet: Some("W1".into()),
            side: Side::Buy,
            amount: 2.5,
            usd: 10.0,
            rate: 4.0,
            created_at_ms: None,
            executed_at_ms: NOW - 1000,
        };
        let payload = String::from_utf8(encode_swap(&swap)).unwrap();
        let extra = r#""meta":{"src":"dex","path":[1,-2,{"q":null}]},"note":"a\"b","delta":-3,"#;
        let text = payload.replacen('{', &format!("{{{extra}"), 1);
        let direct = WireSwap::read_flat(&text).unwrap();
        assert!(reads_like(&direct, serde_reading(&text).as_ref()), "{text}");
        assert_eq!(decode(&text), Ok(swap.clone()));
        let text = payload.replacen(r#""usd":"#, r#""usd":-1,"was":"#, 1);
        assert!(WireSwap::read_flat(&text).is_none(), "{text}");
        assert_eq!(reason(&text), RejectReason::BadNumber);
        let text = payload.replacen(r#""wallet":"W1""#, r#""wallet":"W\u0031""#, 1);
        assert!(WireSwap::read_flat(&text).is_none(), "{text}");
        assert_eq!(decode(&text), Ok(swap));
    }

    #[test]
    fn what_the_direct_reading_leaves_serde_still_decides() {
        let rest = r#""token_id":"T","amount":1,"usd":1,"side":"buy","executed_at":1"#;
        for (event_id, expected) in [
            (r#""e","event_id":"f""#, Err(RejectReason::Malformed)),
            ("7", Ok("7")),
            (r#""e\u0031""#, Ok("e1")),
        ] {
            let text = format!(r#"{{"event_id":{event_id},{rest}}}"#);
            assert!(WireSwap::read_flat(&text).is_none(), "{text}");
            let id = decode(&text).map(|s| s.event_id).map_err(|e| e.reason);
            assert_eq!(id, expected.map(str::to_owned), "{text}");
        }
        for wrong_type in [r#""rate":"1""#, r#""wallet":true"#, r#""created_at":false"#] {
            let text = format!(r#"{{"event_id":"e",{rest},{wrong_type}}}"#);
            assert!(WireSwap::read_flat(&text).is_none(), "{text}");
            assert_eq!(reason(&text), RejectReason::Malformed, "{text}");
        }
        let text = format!(r#"{{"event_id":"e",{rest},"rate":1e400}}"#);
        assert!(WireSwap::read_flat(&text).is_none());
        assert_eq!(reason(&text), RejectReason::Malformed);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Whatever the direct reading accepts, serde_json reads the same
        /// (strings, nulls, repeated and unknown fields; numbers but for
        /// serde_json's last-place error).
        #[test]
        fn the_direct_reading_agrees_with_serde_json(
            members in proptest::collection::vec(
                (
                    proptest::prop_oneof![
                        proptest::sample::select(vec![
                            "event_id", "token_id", "wallet", "side", "amount", "usd",
                            "rate", "created_at", "executed_at", "other",
                        ]).prop_map(str::to_owned),
                        "[a-z_]{0,3}",
                    ],
                    proptest::prop_oneof![
                        4 => r#""[ -~&&[^"\\]]{0,12}""#,
                        1 => r#""[a-z]{0,3}\\[n"u][a-z0-9]{0,4}""#,
                        4 => "(0|[1-9][0-9]{0,24})(\\.[0-9]{1,24})?([eE][+-]?[0-9]{1,3})?",
                        1 => "-?[0-9.eE+-]{1,6}",
                        2 => proptest::sample::select(vec![
                            "null", "true", "false", "[1]", r#"{"a":1}"#, "nul",
                            r#""2023-11-14T22:13:19.5Z""#, "1699999999000",
                        ]).prop_map(str::to_owned),
                        // Nested values, valid or not, for the skipping.
                        2 => proptest::sample::select(vec![
                            "[]", "{}", r#"[1,{"a":[true,null,-2.5e-3,"x\\y"]}]"#,
                            r#"{"a":{"b":{}},"c":[[]]}"#, "[1,]", r#"{"a"}"#, "[1}",
                            r#"{"a":1,"a":2}"#, r#"["\ud800"]"#, r#"["\x"]"#, "[-]",
                            "[1e400]", r#"{"a":nul}"#, "[01]",
                        ]).prop_map(str::to_owned),
                    ],
                    proptest::sample::select(vec!["", " ", "\n\t"]),
                ),
                0..8,
            ),
        ) {
            let body: Vec<String> = members
                .iter()
                .map(|(key, value, space)| format!(r#"{space}"{key}"{space}:{space}{value}{space}"#))
                .collect();
            let text = format!("{{{}}}", body.join(","));
            if let Some(direct) = WireSwap::read_flat(&text) {
                proptest::prop_assert!(reads_like(&direct, serde_reading(&text).as_ref()), "{}", text);
            }
        }

        /// A producer's message with a few bytes changed, inserted or
        /// removed (any byte, the text kept UTF-8): the direct reading never
        /// panics, and whatever it accepts serde_json reads the same.
        #[test]
        fn damaged_messages_are_read_as_serde_reads_them(
            edits in proptest::collection::vec(
                (0_usize..400, proptest::num::u8::ANY, 0_u8..3),
                1..6,
            ),
        ) {
            let swap = crate::swap::Swap {
                event_id: "g7-12".into(),
                token: "TKN11".into(),
                wallet: Some("W75496".into()),
                side: Side::Sell,
                amount: 85.43094859148825,
                usd: 6691.833053064817,
                rate: 78.33031428766724,
                created_at_ms: Some(NOW),
                executed_at_ms: NOW - 828,
            };
            let mut bytes = encode_swap(&swap);
            for (at, byte, edit) in edits {
                let at = at % (bytes.len() + 1);
                match edit {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, byte),
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Some(direct) = WireSwap::read_flat(&text) {
                proptest::prop_assert!(reads_like(&direct, serde_reading(&text).as_ref()), "{}", text);
            }
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
