//! A configured window length ("5m", "1h", ...) and the exact time range it covers.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest window a user may configure; the previous window doubles it, so
/// the engine keeps twice this much history.
pub const MAX_WINDOW_SECS: i64 = 24 * 3600;
/// Windows up to this length are exact to the second; longer ones are exact to
/// the minute at their old edge.
pub const SECOND_EXACT_MAX_SECS: i64 = 3600;

/// One window: its display name (as configured) and its length in whole seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    pub name: String,
    pub secs: i64,
}

/// Half-open range `[start_s, end_s)` of block seconds a window covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecondRange {
    pub start_s: i64,
    pub end_s: i64,
}

/// The current and previous ranges of one window at one query time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowRanges {
    pub current: SecondRange,
    pub previous: SecondRange,
}

impl WindowSpec {
    /// Parses a humantime duration ("90s", "5m", "1h 30m") of 1 s up to 24 h.
    pub fn parse(text: &str) -> Result<Self, String> {
        let d: Duration =
            humantime::parse_duration(text.trim()).map_err(|e| format!("window `{text}`: {e}"))?;
        let secs = d.as_secs() as i64;
        if d.subsec_nanos() != 0 || !(1..=MAX_WINDOW_SECS).contains(&secs) {
            return Err(format!(
                "window `{text}` must be whole seconds from 1s to 24h"
            ));
        }
        Ok(Self {
            name: text.trim().to_string(),
            secs,
        })
    }

    /// The default windows: 5m, 1h, 6h, 24h.
    pub fn defaults() -> Vec<Self> {
        ["5m", "1h", "6h", "24h"]
            .iter()
            .filter_map(|w| Self::parse(w).ok())
            .collect()
    }

    /// True when this window is exact to the second at both edges.
    pub fn is_second_exact(&self) -> bool {
        self.secs <= SECOND_EXACT_MAX_SECS
    }

    /// The ranges this window covers when queried at `now_ms`.
    ///
    /// The current window ends after the query second (block times up to the
    /// allowed future skew count as "now") and starts `secs` before it; windows
    /// longer than an hour round their old edge down to the minute. The previous
    /// window is the same length immediately before, rounded the same way.
    pub fn ranges(&self, now_ms: i64) -> WindowRanges {
        let now_s = now_ms.div_euclid(1000);
        let align = |s: i64| {
            if self.is_second_exact() {
                s
            } else {
                s.div_euclid(60) * 60
            }
        };
        let start = align(now_s + 1 - self.secs);
        let prev_start = align(start - self.secs);
        WindowRanges {
            current: SecondRange {
                start_s: start,
                end_s: i64::MAX,
            },
            previous: SecondRange {
                start_s: prev_start,
                end_s: start,
            },
        }
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Serialize for WindowSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for WindowSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_limits() {
        assert_eq!(WindowSpec::parse("5m").unwrap().secs, 300);
        assert_eq!(WindowSpec::parse("24h").unwrap().secs, 86_400);
        assert!(WindowSpec::parse("25h").is_err());
        assert!(WindowSpec::parse("0s").is_err());
        assert!(WindowSpec::parse("1.5s").is_err());
        assert!(WindowSpec::parse("soon").is_err());
    }

    #[test]
    fn short_windows_are_exact_to_the_second() {
        let w = WindowSpec::parse("5m").unwrap();
        let r = w.ranges(1_000_000_500);
        assert_eq!(r.current.start_s, 1_000_000 + 1 - 300);
        assert_eq!(
            r.previous,
            SecondRange {
                start_s: 1_000_000 + 1 - 600,
                end_s: r.current.start_s
            }
        );
    }

    #[test]
    fn long_windows_round_the_old_edge_to_the_minute() {
        let w = WindowSpec::parse("6h").unwrap();
        let r = w.ranges(1_000_000_500);
        assert_eq!(r.current.start_s % 60, 0);
        assert!(r.current.start_s <= 1_000_000 + 1 - 6 * 3600);
        assert!(r.current.start_s > 1_000_000 + 1 - 6 * 3600 - 60);
        assert_eq!(r.previous.start_s % 60, 0);
        assert_eq!(r.previous.end_s, r.current.start_s);
    }
}
