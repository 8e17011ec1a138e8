//! Query parameters of `/stats` and `/stats/top`, validated into typed requests
//! so every handler (shard, standalone, router) rejects the same inputs alike.

use std::collections::HashMap;

use super::ApiError;
use crate::window::{RankBy, WindowSpec};

/// Longest token accepted, in bytes (same as the swap validation).
pub const MAX_TOKEN_BYTES: usize = 128;
/// Most tokens in one `/stats?tokens=` request.
pub const MAX_TOKENS_PER_REQUEST: usize = 100;
/// Largest `limit` of `/stats/top`.
pub const MAX_TOP_LIMIT: usize = 1000;

/// What `/stats` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatsQuery {
    /// `?token=X`: one token's stats object.
    One(String),
    /// `?tokens=A,B`: an object keyed by token.
    Many(Vec<String>),
}

/// What `/stats/top` asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct TopQuery {
    pub window: String,
    pub by: RankBy,
    pub limit: usize,
}

/// Checks one token name.
pub fn validate_token(token: &str) -> Result<(), ApiError> {
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(ApiError::BadRequest(format!(
            "token must be 1..={MAX_TOKEN_BYTES} bytes"
        )));
    }
    if token.chars().any(|c| c.is_control() || c == ',') {
        return Err(ApiError::BadRequest(
            "token contains a control character or comma".into(),
        ));
    }
    Ok(())
}

fn reject_unknown(params: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::BadRequest(format!(
            "unknown parameter `{k}`; expected one of {known:?}"
        ))),
        None => Ok(()),
    }
}

/// Parses `/stats` parameters.
pub fn parse_stats_query(params: &HashMap<String, String>) -> Result<StatsQuery, ApiError> {
    reject_unknown(params, &["token", "tokens"])?;
    match (params.get("token"), params.get("tokens")) {
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "give `token` or `tokens`, not both".into(),
        )),
        (None, None) => Err(ApiError::BadRequest(
            "missing `token` (or `tokens=A,B,...`)".into(),
        )),
        (Some(token), None) => {
            validate_token(token)?;
            Ok(StatsQuery::One(token.clone()))
        }
        (None, Some(list)) => {
            let mut tokens: Vec<String> = Vec::new();
            for token in list.split(',') {
                validate_token(token)?;
                if !tokens.iter().any(|t| t == token) {
                    tokens.push(token.to_string());
                }
            }
            if tokens.len() > MAX_TOKENS_PER_REQUEST {
                return Err(ApiError::BadRequest(format!(
                    "at most {MAX_TOKENS_PER_REQUEST} tokens per request"
                )));
            }
            Ok(StatsQuery::Many(tokens))
        }
    }
}

/// Parses `/stats/top` parameters against the configured windows.
pub fn parse_top_query(
    params: &HashMap<String, String>,
    windows: &[WindowSpec],
) -> Result<TopQuery, ApiError> {
    reject_unknown(params, &["window", "by", "limit"])?;
    let window = match params.get("window") {
        Some(w) if windows.iter().any(|s| &s.name == w) => w.clone(),
        Some(w) => {
            let names: Vec<&str> = windows.iter().map(|s| s.name.as_str()).collect();
            return Err(ApiError::BadRequest(format!(
                "unknown window `{w}`; configured: {names:?}"
            )));
        }
        None => windows.first().map(|w| w.name.clone()).unwrap_or_default(),
    };
    let by = match params.get("by") {
        Some(b) => RankBy::parse(b).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown `by` `{b}`; one of volume_usd, txns, unique_wallets, price_change_pct"
            ))
        })?,
        None => RankBy::VolumeUsd,
    };
    let limit = match params.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_TOP_LIMIT).contains(l))
            .ok_or_else(|| ApiError::BadRequest(format!("`limit` must be 1..={MAX_TOP_LIMIT}")))?,
        None => 20,
    };
    Ok(TopQuery { window, by, limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn stats_params() {
        assert_eq!(
            parse_stats_query(&q(&[("token", "BTC")])),
            Ok(StatsQuery::One("BTC".into()))
        );
        assert_eq!(
            parse_stats_query(&q(&[("tokens", "A,B,A")])),
            Ok(StatsQuery::Many(vec!["A".into(), "B".into()]))
        );
        for bad in [
            q(&[]),
            q(&[("token", "")]),
            q(&[("tokens", "A,,B")]),
            q(&[("token", "A"), ("tokens", "B")]),
            q(&[("tok", "A")]),
        ] {
            assert!(
                matches!(parse_stats_query(&bad), Err(ApiError::BadRequest(_))),
                "{bad:?}"
            );
        }
        let long = "x".repeat(129);
        assert!(parse_stats_query(&q(&[("token", &long)])).is_err());
        let many = (0..101)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse_stats_query(&q(&[("tokens", &many)])).is_err());
    }

    #[test]
    fn top_params() {
        let windows = WindowSpec::defaults();
        let t = parse_top_query(&q(&[]), &windows).unwrap();
        assert_eq!(
            (t.window.as_str(), t.by, t.limit),
            ("5m", RankBy::VolumeUsd, 20)
        );
        let t = parse_top_query(
            &q(&[("window", "1h"), ("by", "txns"), ("limit", "3")]),
            &windows,
        )
        .unwrap();
        assert_eq!((t.window.as_str(), t.by, t.limit), ("1h", RankBy::Txns, 3));
        for bad in [
            q(&[("window", "2h")]),
            q(&[("by", "x")]),
            q(&[("limit", "0")]),
            q(&[("limit", "-1")]),
            q(&[("limit", "1001")]),
        ] {
            assert!(parse_top_query(&bad, &windows).is_err(), "{bad:?}");
        }
    }
}
