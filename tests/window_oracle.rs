//! The window engine against a naive oracle that recomputes every window from
//! the raw list of distinct accepted swaps.
//!
//! Streams: a few tokens and wallets, block times spread over ~50 h, arrival
//! order shuffled by random lags (some beyond the dedup horizon, some a few
//! seconds in the future), duplicates anywhere, batches at an advancing clock,
//! queries at random times and right at bucket edges, occasional `expire`.
//! Three engines run side by side: one fed by `apply_batch`, one rebuilt only by
//! `restore` of those batches' effects, one fed swap by swap with `apply`.

use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;
use swapstats::swap::{Side, Swap};
use swapstats::window::{
    event_key, price_tie, ApplyOutcome, BatchCounts, ChangePct, EngineConfig, EngineTuning,
    PeriodStats, RankBy, TokenStats, WindowEngine, WindowSpec, WindowStats,
};

const SECOND: i64 = 1000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
/// A minute-aligned unix time in 2023.
const T0: i64 = 1_700_000_040_000;
const TOKENS: [&str; 3] = ["BONK", "JUP", "WIF"];
const WALLETS: [&str; 5] = ["w0", "w1", "w2", "w3", "w4"];

// ---------------------------------------------------------------- the oracle

#[derive(Debug, Clone)]
struct Held {
    swap: Swap,
    tie: u64,
    second: i64,
    minute: i64,
    in_second: bool,
    in_minute: bool,
}

/// Every distinct accepted swap, and which levels still hold it.
struct Oracle {
    windows: Vec<WindowSpec>,
    horizon_ms: i64,
    retention_ms: i64,
    remembered: HashMap<u128, i64>,
    held: Vec<Held>,
}

impl Oracle {
    fn new(config: &EngineConfig) -> Self {
        Self {
            windows: config.windows.clone(),
            horizon_ms: config.dedup_horizon_ms,
            retention_ms: config.retention_ms,
            remembered: HashMap::new(),
            held: Vec::new(),
        }
    }

    fn second_cut(now_ms: i64) -> i64 {
        now_ms.div_euclid(1000) + 1 - 7200
    }

    fn minute_cut(&self, now_ms: i64) -> i64 {
        (now_ms - self.retention_ms).div_euclid(MINUTE)
    }

    fn apply(&mut self, swap: &Swap, now_ms: i64) -> ApplyOutcome {
        let key = event_key(&swap.event_id);
        if self.remembered.contains_key(&key) {
            return ApplyOutcome::Duplicate;
        }
        let at = swap.executed_at_ms;
        if at < now_ms - self.horizon_ms || at < now_ms - self.retention_ms {
            return ApplyOutcome::Late;
        }
        self.remembered.insert(key, at);
        let second = at.div_euclid(SECOND);
        self.held.push(Held {
            swap: swap.clone(),
            tie: price_tie(key),
            second,
            minute: at.div_euclid(MINUTE),
            in_second: second >= Self::second_cut(now_ms),
            in_minute: true,
        });
        ApplyOutcome::Applied
    }

    fn expire(&mut self, now_ms: i64) {
        // Ids are forgotten by whole block seconds: those before the second
        // of the horizon's cut-off.
        let horizon_second = (now_ms - self.horizon_ms).div_euclid(SECOND);
        self.remembered
            .retain(|_, at| at.div_euclid(SECOND) >= horizon_second);
        let (second_cut, minute_cut) = (Self::second_cut(now_ms), self.minute_cut(now_ms));
        for h in &mut self.held {
            h.in_second &= h.second >= second_cut;
            h.in_minute &= h.minute >= minute_cut;
        }
        self.held.retain(|h| h.in_second || h.in_minute);
    }

    fn token_count(&self) -> usize {
        self.held
            .iter()
            .map(|h| h.swap.token.as_str())
            .collect::<BTreeSet<_>>()
            .len()
    }

    fn period<'a>(swaps: impl Iterator<Item = &'a Held>) -> PeriodStats {
        let swaps: Vec<&Held> = swaps.collect();
        let Some(first) = swaps.iter().min_by_key(|h| (h.swap.executed_at_ms, h.tie)) else {
            return PeriodStats::default();
        };
        let last = swaps
            .iter()
            .max_by_key(|h| (h.swap.executed_at_ms, h.tie))
            .copied()
            .unwrap_or(first);
        let of_side = |side: Side| swaps.iter().filter(move |h| h.swap.side == side);
        let wallets = |side: Option<Side>| {
            swaps
                .iter()
                .filter(|h| side.is_none_or(|s| h.swap.side == s))
                .filter_map(|h| h.swap.wallet.as_deref())
                .collect::<BTreeSet<_>>()
                .len() as u64
        };
        let (open, close) = (first.swap.rate, last.swap.rate);
        PeriodStats {
            txns: swaps.len() as u64,
            buys: of_side(Side::Buy).count() as u64,
            sells: of_side(Side::Sell).count() as u64,
            volume_usd: swaps.iter().map(|h| h.swap.usd).sum(),
            buy_volume_usd: of_side(Side::Buy).map(|h| h.swap.usd).sum(),
            sell_volume_usd: of_side(Side::Sell).map(|h| h.swap.usd).sum(),
            volume_token: swaps.iter().map(|h| h.swap.amount).sum(),
            unique_wallets: wallets(None),
            unique_buyers: wallets(Some(Side::Buy)),
            unique_sellers: wallets(Some(Side::Sell)),
            price_open: Some(open),
            price_high: swaps.iter().map(|h| h.swap.rate).reduce(f64::max),
            price_low: swaps.iter().map(|h| h.swap.rate).reduce(f64::min),
            price_close: Some(close),
            price_change_pct: (open > 0.0).then(|| (close - open) / open * 100.0),
        }
    }

    fn change(current: &PeriodStats, previous: &PeriodStats) -> ChangePct {
        let pct = |now: f64, before: f64| (before != 0.0).then(|| (now - before) / before * 100.0);
        ChangePct {
            txns: pct(current.txns as f64, previous.txns as f64),
            volume_usd: pct(current.volume_usd, previous.volume_usd),
            unique_wallets: pct(
                current.unique_wallets as f64,
                previous.unique_wallets as f64,
            ),
            price_close: match (current.price_close, previous.price_close) {
                (Some(now), Some(before)) => pct(now, before),
                _ => None,
            },
        }
    }

    fn window(&self, token: &str, spec: &WindowSpec, now_ms: i64) -> WindowStats {
        let ranges = spec.ranges(now_ms);
        let select = |start: i64, end: i64| {
            self.held.iter().filter(move |h| {
                h.swap.token == token
                    && if spec.is_second_exact() {
                        h.in_second && h.second >= start && h.second < end
                    } else {
                        h.in_minute && h.minute * 60 >= start && h.minute * 60 < end
                    }
            })
        };
        let current = Self::period(select(ranges.current.start_s, ranges.current.end_s));
        let previous = Self::period(select(ranges.previous.start_s, ranges.previous.end_s));
        let change_pct = Self::change(&current, &previous);
        WindowStats {
            current,
            previous,
            change_pct,
        }
    }

    fn live(&self, token: &str, now_ms: i64) -> bool {
        let newest = self
            .held
            .iter()
            .filter(|h| h.swap.token == token && h.in_minute)
            .map(|h| h.minute)
            .max();
        newest.is_some_and(|m| m >= self.minute_cut(now_ms))
    }

    fn stats(&self, token: &str, now_ms: i64) -> Option<TokenStats> {
        if !self.live(token, now_ms) {
            return None;
        }
        let last_swap_at = self
            .held
            .iter()
            .filter(|h| h.swap.token == token && h.in_minute)
            .map(|h| h.swap.executed_at_ms)
            .max();
        Some(TokenStats {
            token: token.to_string(),
            updated_at: now_ms,
            last_swap_at,
            windows: swapstats::window::Windows(
                self.windows
                    .iter()
                    .map(|w| (w.name.as_str().into(), self.window(token, w, now_ms)))
                    .collect(),
            ),
        })
    }

    fn top(
        &self,
        window: &str,
        by: RankBy,
        limit: usize,
        now_ms: i64,
    ) -> Option<Vec<(String, Option<f64>)>> {
        let spec = self.windows.iter().find(|w| w.name == window)?;
        let mut rows: Vec<(String, Option<f64>)> = TOKENS
            .iter()
            .filter(|t| self.live(t, now_ms))
            .map(|t| {
                (
                    t.to_string(),
                    by.value(&self.window(t, spec, now_ms).current),
                )
            })
            .collect();
        rows.sort_by(|a, b| {
            let by_value = match (a.1, b.1) {
                (Some(x), Some(y)) => y.total_cmp(&x),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            };
            by_value.then_with(|| a.0.cmp(&b.0))
        });
        rows.truncate(limit);
        Some(rows)
    }
}

// ---------------------------------------------------------------- comparisons

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) || (a - b).abs() <= 1e-9
}

fn close_pct(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) + 1e-7,
        (a, b) => a == b,
    }
}

fn check_period(
    engine: &PeriodStats,
    oracle: &PeriodStats,
    ctx: &str,
) -> Result<(), TestCaseError> {
    let counts = |p: &PeriodStats| {
        (
            p.txns,
            p.buys,
            p.sells,
            p.unique_wallets,
            p.unique_buyers,
            p.unique_sellers,
        )
    };
    prop_assert_eq!(counts(engine), counts(oracle), "counts/uniques {}", ctx);
    let prices = |p: &PeriodStats| {
        (
            p.price_open,
            p.price_high,
            p.price_low,
            p.price_close,
            p.price_change_pct,
        )
    };
    prop_assert_eq!(prices(engine), prices(oracle), "prices {}", ctx);
    for (name, e, o) in [
        ("volume_usd", engine.volume_usd, oracle.volume_usd),
        (
            "buy_volume_usd",
            engine.buy_volume_usd,
            oracle.buy_volume_usd,
        ),
        (
            "sell_volume_usd",
            engine.sell_volume_usd,
            oracle.sell_volume_usd,
        ),
        ("volume_token", engine.volume_token, oracle.volume_token),
    ] {
        prop_assert!(close(e, o), "{} {}: engine {} oracle {}", name, ctx, e, o);
    }
    Ok(())
}

fn check_window(
    engine: &WindowStats,
    oracle: &WindowStats,
    ctx: &str,
) -> Result<(), TestCaseError> {
    check_period(&engine.current, &oracle.current, &format!("{ctx} current"))?;
    check_period(
        &engine.previous,
        &oracle.previous,
        &format!("{ctx} previous"),
    )?;
    let (e, o) = (&engine.change_pct, &oracle.change_pct);
    prop_assert_eq!(
        (e.txns, e.unique_wallets, e.price_close),
        (o.txns, o.unique_wallets, o.price_close),
        "{}",
        ctx
    );
    prop_assert!(
        close_pct(e.volume_usd, o.volume_usd),
        "{} change volume {:?} {:?}",
        ctx,
        e.volume_usd,
        o.volume_usd
    );
    Ok(())
}

fn check_stats(
    engine: Option<TokenStats>,
    oracle: Option<TokenStats>,
    ctx: &str,
) -> Result<(), TestCaseError> {
    match (engine, oracle) {
        (None, None) => Ok(()),
        (Some(e), Some(o)) => {
            prop_assert_eq!(&e.token, &o.token);
            prop_assert_eq!(e.updated_at, o.updated_at);
            prop_assert_eq!(e.last_swap_at, o.last_swap_at, "last_swap_at {}", ctx);
            let names = |s: &TokenStats| {
                s.windows
                    .0
                    .iter()
                    .map(|(n, _)| n.clone())
                    .collect::<Vec<_>>()
            };
            prop_assert_eq!(names(&e), names(&o), "window order {}", ctx);
            for ((name, ew), (_, ow)) in e.windows.0.iter().zip(&o.windows.0) {
                check_window(ew, ow, &format!("{ctx} {}/{name}", e.token))?;
            }
            Ok(())
        }
        (e, o) => {
            prop_assert!(
                false,
                "presence differs {}: engine {:?} oracle {:?}",
                ctx,
                e.is_some(),
                o.is_some()
            );
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- streams

#[derive(Debug, Clone)]
struct EventSeed {
    token: usize,
    wallet: Option<usize>,
    buy: bool,
    usd: f64,
    amount: f64,
    rate: f64,
    at_ms: i64,
    lag_ms: i64,
}

fn event_seed() -> impl Strategy<Value = EventSeed> {
    // Block times: anywhere in 50 h, or clustered around edges that matter.
    let at = prop_oneof![
        3 => 0..50 * HOUR,
        2 => (0..4_usize, 0..10 * MINUTE).prop_map(|(c, off)| [0, 2 * HOUR - 5 * MINUTE, 24 * HOUR, 47 * HOUR][c] + off),
    ];
    // Arrival lag: mostly seconds, some an hour, a few beyond the 24 h horizon,
    // a few slightly in the future, and some exactly at a horizon, retention or
    // second-level edge (to the millisecond).
    let edges = [
        2 * HOUR - SECOND,
        2 * HOUR,
        2 * HOUR + SECOND,
        3 * HOUR,
        6 * HOUR,
        24 * HOUR,
        26 * HOUR,
        30 * HOUR,
    ];
    let lag = prop_oneof![
        8 => 0..5 * SECOND,
        3 => 0..HOUR,
        1 => 0..30 * HOUR,
        1 => -5 * SECOND..0,
        2 => (prop::sample::select(edges.to_vec()), -1..=1_i64).prop_map(|(edge, nudge)| edge + nudge),
    ];
    let usd = prop_oneof![1 => Just(0.0), 4 => 0.0..1e6_f64, 2 => 0.0..1.0_f64];
    let rate = prop_oneof![1 => Just(0.0), 6 => 1e-3..10.0_f64];
    (
        0..TOKENS.len(),
        prop::option::weighted(0.85, 0..WALLETS.len()),
        any::<bool>(),
        usd,
        0.0..1e3_f64,
        rate,
        at,
        lag,
    )
        .prop_map(
            |(token, wallet, buy, usd, amount, rate, at_ms, lag_ms)| EventSeed {
                token,
                wallet,
                buy,
                usd,
                amount,
                rate,
                at_ms,
                lag_ms,
            },
        )
}

#[derive(Debug, Clone)]
enum QuerySeed {
    /// Relative to the batch clock.
    Offset(i64),
    /// A window range edge at an accepted swap's bucket: `pick` chooses the swap
    /// and the window, `previous` which range starts there, `nudge` the side.
    Edge {
        pick: usize,
        previous: bool,
        nudge: usize,
    },
}

fn query_seed() -> impl Strategy<Value = QuerySeed> {
    prop_oneof![
        (-3 * HOUR..10 * MINUTE).prop_map(QuerySeed::Offset),
        (any::<usize>(), any::<bool>(), 0..4_usize).prop_map(|(pick, previous, nudge)| {
            QuerySeed::Edge {
                pick,
                previous,
                nudge,
            }
        }),
    ]
}

#[derive(Debug, Clone)]
struct Step {
    batch_len: usize,
    clock_lag_ms: i64,
    queries: Vec<QuerySeed>,
    top: Option<(usize, usize, usize)>,
    expire: bool,
}

fn step() -> impl Strategy<Value = Step> {
    (
        1..8_usize,
        prop_oneof![Just(0), 0..2 * SECOND],
        prop::collection::vec(query_seed(), 0..3),
        prop::option::of((0..8_usize, 0..4_usize, 0..5_usize)),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(batch_len, clock_lag_ms, queries, top, expire)| Step {
            batch_len,
            clock_lag_ms,
            queries,
            top,
            expire,
        })
}

#[derive(Debug, Clone)]
struct Scenario {
    windows: Vec<&'static str>,
    horizon_ms: i64,
    retention_ms: i64,
    tuning: EngineTuning,
    events: Vec<EventSeed>,
    duplicates: Vec<(usize, i64)>,
    steps: Vec<Step>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let windows = prop_oneof![
        Just(vec!["5m", "1h", "6h", "24h"]),
        Just(vec!["90s", "2h"]),
        Just(vec!["1s", "5m", "61m", "1h 0m 30s", "24h"]),
        Just(vec!["24h", "1m", "1h"]),
    ];
    let limits = prop_oneof![
        Just((24 * HOUR, 48 * HOUR)),
        Just((6 * HOUR, 48 * HOUR)),
        Just((24 * HOUR, 26 * HOUR)),
        Just((30 * HOUR, 3 * HOUR)),
    ];
    let tuning = prop_oneof![
        Just(EngineTuning::default()),
        Just(EngineTuning {
            tier_min_buckets: 2,
            flat_max_marks: 1,
            counters_min_wallets: 1,
            trim_slack_ms: 0,
        }),
        Just(EngineTuning {
            tier_min_buckets: 5,
            flat_max_marks: 3,
            counters_min_wallets: 1000,
            // Aged-out data lingers for hours: no answer may read it.
            trim_slack_ms: 3 * HOUR,
        }),
        Just(EngineTuning {
            tier_min_buckets: 0,
            flat_max_marks: 0,
            counters_min_wallets: 0,
            trim_slack_ms: 60_000,
        }),
    ];
    (
        windows,
        limits,
        tuning,
        prop::collection::vec(event_seed(), 1..140),
        prop::collection::vec((any::<usize>(), 0..2 * HOUR), 0..30),
        prop::collection::vec(step(), 1..60),
    )
        .prop_map(
            |(windows, (horizon_ms, retention_ms), tuning, events, duplicates, steps)| Scenario {
                windows,
                horizon_ms,
                retention_ms,
                tuning,
                events,
                duplicates,
                steps,
            },
        )
}

fn to_swap(index: usize, seed: &EventSeed) -> Swap {
    Swap {
        event_id: format!("evt-{index}"),
        token: TOKENS[seed.token].to_string(),
        wallet: seed.wallet.map(|w| WALLETS[w].to_string()),
        side: if seed.buy { Side::Buy } else { Side::Sell },
        amount: seed.amount,
        usd: seed.usd,
        rate: seed.rate,
        created_at_ms: None,
        executed_at_ms: T0 + seed.at_ms,
    }
}

/// Query time for an edge seed: a range of one window starts exactly at (or
/// one millisecond / one bucket around) the bucket of an accepted swap.
fn edge_time(oracle: &Oracle, pick: usize, previous: bool, nudge: usize) -> Option<i64> {
    if oracle.held.is_empty() {
        return None;
    }
    let held = &oracle.held[pick % oracle.held.len()];
    let spec = &oracle.windows[(pick / 7) % oracle.windows.len()];
    let lengths = if previous { 2 } else { 1 };
    if spec.is_second_exact() {
        // start = now_s + 1 - k·secs = second
        let now_s = held.second + lengths * spec.secs - 1;
        Some(now_s * SECOND + [0, 999, 1000, -1][nudge])
    } else {
        // start = floor60(now_s + 1 - secs) = minute·60 (previous: start - 60·ceil(secs/60))
        let extra = if previous {
            60 * ((spec.secs + 59) / 60)
        } else {
            0
        };
        let now_s = held.minute * 60 + spec.secs - 1 + extra;
        Some(now_s * SECOND + [0, -1, 59_999, 60_000][nudge])
    }
}

fn run(scenario: Scenario) -> Result<(), TestCaseError> {
    let config = EngineConfig {
        windows: scenario
            .windows
            .iter()
            .map(|w| WindowSpec::parse(w).expect("valid window"))
            .collect(),
        dedup_horizon_ms: scenario.horizon_ms,
        retention_ms: scenario.retention_ms,
    };
    let mut batched = WindowEngine::with_tuning(config.clone(), scenario.tuning);
    let mut restored = WindowEngine::with_tuning(config.clone(), scenario.tuning);
    let mut single = WindowEngine::with_tuning(config.clone(), scenario.tuning);
    let mut oracle = Oracle::new(&config);

    // The stream in arrival order: originals and duplicates, each with its lag.
    let mut arrivals: Vec<(i64, Swap)> = scenario
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| (T0 + e.at_ms + e.lag_ms, to_swap(i, e)))
        .collect();
    for &(pick, lag) in &scenario.duplicates {
        let i = pick % scenario.events.len();
        let e = &scenario.events[i];
        arrivals.push((T0 + e.at_ms + lag, to_swap(i, e)));
    }
    arrivals.sort_by_key(|(arrival, s)| (*arrival, s.event_id.clone()));

    let mut clock = T0;
    // With a trim slack, data the oracle's expiry drops may linger in the
    // engine: answers at or after the latest expiry are still exact (query
    // ranges start at or after the cut), earlier ones may include it.
    let mut expired_at = i64::MIN;
    let mut next = 0;
    let mut steps = scenario.steps.iter().cycle();
    let mut step_no = 0;
    while next < arrivals.len() {
        let step = steps.next().expect("cycle");
        step_no += 1;
        let batch: Vec<Swap> = arrivals[next..(next + step.batch_len).min(arrivals.len())]
            .iter()
            .map(|(_, s)| s.clone())
            .collect();
        let newest_arrival = arrivals[(next + batch.len()).min(arrivals.len()) - 1].0;
        next += batch.len();
        clock = clock.max(newest_arrival + step.clock_lag_ms);
        let now = clock;

        let mut expected = BatchCounts::default();
        for swap in &batch {
            let outcome = oracle.apply(swap, now);
            match outcome {
                ApplyOutcome::Applied => expected.applied += 1,
                ApplyOutcome::Duplicate => expected.duplicates += 1,
                ApplyOutcome::Late => expected.late += 1,
            }
            prop_assert_eq!(
                single.apply(swap, now),
                outcome,
                "apply {} at {}",
                swap.event_id,
                now
            );
        }
        let (effect, counts) = batched.apply_batch(&batch, now);
        prop_assert_eq!(counts, expected, "batch counts at step {}", step_no);
        prop_assert_eq!(effect.events.len() as u64, counts.applied);
        restored.restore(&effect);
        // Restore remembers the events: the same batch is now all duplicates or late.
        let (again, again_counts) = restored.apply_batch(&batch, now);
        prop_assert_eq!(again_counts.applied, 0);
        prop_assert!(again.is_empty());

        let mut times = vec![now];
        for q in &step.queries {
            match q {
                QuerySeed::Offset(off) => times.push(now + off),
                QuerySeed::Edge {
                    pick,
                    previous,
                    nudge,
                } => times.extend(edge_time(&oracle, *pick, *previous, *nudge)),
            }
        }
        if scenario.tuning.trim_slack_ms > 0 {
            times.retain(|&t| t >= expired_at);
        }
        for &t in &times {
            for token in TOKENS.iter().chain(&["NOPE"]) {
                let ctx = format!("step {step_no} now {now} query {t}");
                let from_batches = batched.stats(token, t);
                prop_assert_eq!(
                    &from_batches,
                    &restored.stats(token, t),
                    "restore equivalence {}",
                    ctx
                );
                check_stats(
                    from_batches,
                    oracle.stats(token, t),
                    &format!("batched {ctx}"),
                )?;
                check_stats(
                    single.stats(token, t),
                    oracle.stats(token, t),
                    &format!("single {ctx}"),
                )?;
            }
        }
        if let Some((window_pick, by_pick, limit)) = step.top {
            let names: Vec<String> = config.windows.iter().map(|w| w.name.clone()).collect();
            let window = names.get(window_pick).map_or("7m", String::as_str);
            let by = [
                RankBy::VolumeUsd,
                RankBy::Txns,
                RankBy::UniqueWallets,
                RankBy::PriceChangePct,
            ][by_pick];
            let got = batched.top(window, by, limit, now);
            let want = oracle.top(window, by, limit, now);
            prop_assert_eq!(got.is_some(), want.is_some(), "top {} known", window);
            if let (Some(got), Some(want)) = (got, want) {
                let got_rows: Vec<&str> = got.iter().map(|e| e.token.as_str()).collect();
                let want_rows: Vec<&str> = want.iter().map(|(t, _)| t.as_str()).collect();
                prop_assert_eq!(got_rows, want_rows, "top {} by {:?} at {}", window, by, now);
                for (entry, (token, value)) in got.iter().zip(&want) {
                    prop_assert!(close_pct(entry.value, *value), "top value {}", token);
                    let spec = config
                        .windows
                        .iter()
                        .find(|w| w.name == window)
                        .expect("window");
                    check_window(
                        &entry.stats,
                        &oracle.window(token, spec, now),
                        &format!("top {token}"),
                    )?;
                }
            }
        }
        if step.expire {
            for engine in [&mut batched, &mut restored, &mut single] {
                engine.expire(now);
            }
            oracle.expire(now);
            expired_at = now;
        }
        prop_assert_eq!(
            batched.token_count(),
            oracle.token_count(),
            "token count at step {}",
            step_no
        );
        prop_assert_eq!(restored.token_count(), oracle.token_count());
        prop_assert_eq!(single.token_count(), oracle.token_count());
    }

    // Long after the stream: every window ages out, with and without expire.
    for later in [
        0,
        HOUR,
        2 * HOUR + 1,
        23 * HOUR,
        25 * HOUR,
        47 * HOUR,
        49 * HOUR,
        80 * HOUR,
    ] {
        let t = clock + later;
        for token in TOKENS {
            let ctx = format!("after the stream, +{later} ms");
            prop_assert_eq!(batched.stats(token, t), restored.stats(token, t), "{}", ctx);
            check_stats(batched.stats(token, t), oracle.stats(token, t), &ctx)?;
            check_stats(single.stats(token, t), oracle.stats(token, t), &ctx)?;
        }
        for engine in [&mut batched, &mut restored, &mut single] {
            engine.expire(t);
        }
        oracle.expire(t);
        prop_assert_eq!(batched.token_count(), oracle.token_count());
        prop_assert_eq!(single.token_count(), oracle.token_count());
    }
    prop_assert_eq!(batched.token_count(), 0);
    prop_assert_eq!(batched.wallet_count(), 0);
    prop_assert_eq!(batched.remembered_events(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_oracle(scenario in scenario()) {
        run(scenario)?;
    }
}

// ---------------------------------------------------------------- examples

fn config(windows: &[&str]) -> EngineConfig {
    EngineConfig {
        windows: windows
            .iter()
            .map(|w| WindowSpec::parse(w).expect("valid window"))
            .collect(),
        dedup_horizon_ms: 24 * HOUR,
        retention_ms: 48 * HOUR,
    }
}

fn swap(id: &str, token: &str, wallet: &str, side: Side, usd: f64, rate: f64, at: i64) -> Swap {
    Swap {
        event_id: id.to_string(),
        token: token.to_string(),
        wallet: Some(wallet.to_string()),
        side,
        amount: 1.0,
        usd,
        rate,
        created_at_ms: None,
        executed_at_ms: at,
    }
}

#[test]
fn windows_are_relative_to_the_query_second() {
    let mut engine = WindowEngine::new(config(&["5m"]));
    let at = T0 + 10 * SECOND + 500;
    engine.apply(&swap("a", "T", "w", Side::Buy, 10.0, 1.0, at), at);
    // The 5 m window at now_s covers [now_s - 299, ∞).
    let last_in = (at / SECOND + 299) * SECOND + 999;
    let stats = engine.stats("T", last_in).expect("live");
    assert_eq!(stats.windows.get("5m").map(|w| w.current.txns), Some(1));
    let stats = engine.stats("T", last_in + 1).expect("live");
    let w = stats.windows.get("5m").expect("window");
    assert_eq!((w.current.txns, w.previous.txns), (0, 1));
    assert_eq!(w.change_pct.txns, Some(-100.0));
}

#[test]
fn open_and_close_follow_block_time_then_tie_not_arrival() {
    let mut forward = WindowEngine::new(config(&["1h"]));
    let mut backward = WindowEngine::new(config(&["1h"]));
    let swaps = [
        swap("x1", "T", "a", Side::Buy, 1.0, 2.0, T0 + 5),
        swap("x2", "T", "b", Side::Sell, 1.0, 3.0, T0 + 5),
        swap("x3", "T", "c", Side::Buy, 1.0, 1.0, T0 + 1),
        swap("x4", "T", "a", Side::Sell, 1.0, 4.0, T0 + 9),
    ];
    for s in &swaps {
        forward.apply(s, T0 + 10);
    }
    for s in swaps.iter().rev() {
        backward.apply(s, T0 + 10);
    }
    let (f, b) = (
        forward.stats("T", T0 + 10).expect("live"),
        backward.stats("T", T0 + 10).expect("live"),
    );
    assert_eq!(f, b);
    let w = f.windows.get("1h").expect("window");
    assert_eq!(
        (w.current.price_open, w.current.price_close),
        (Some(1.0), Some(4.0))
    );
    assert_eq!(
        (w.current.price_low, w.current.price_high),
        (Some(1.0), Some(4.0))
    );
    assert_eq!(
        (
            w.current.unique_wallets,
            w.current.unique_buyers,
            w.current.unique_sellers
        ),
        (3, 2, 2)
    );
    assert_eq!(f.last_swap_at, Some(T0 + 9));
}

#[test]
fn top_ranks_by_value_then_name_with_none_last() {
    let mut engine = WindowEngine::new(config(&["5m", "24h"]));
    let now = T0 + HOUR;
    engine.apply(
        &swap("a", "AAA", "w1", Side::Buy, 5.0, 1.0, now - 1000),
        now,
    );
    engine.apply(
        &swap("b", "BBB", "w1", Side::Buy, 50.0, 1.0, now - 1000),
        now,
    );
    engine.apply(
        &swap("c", "CCC", "w2", Side::Buy, 5.0, 1.0, now - 1000),
        now,
    );
    engine.apply(
        &swap("d", "CCC", "w3", Side::Sell, 0.0, 2.0, now - 500),
        now,
    );
    engine.apply(
        &swap("e", "DDD", "w4", Side::Sell, 9.0, 1.0, now - 30 * MINUTE),
        now,
    );
    assert!(engine.top("7m", RankBy::Txns, 10, now).is_none());
    let rows = |by, limit| {
        engine
            .top("5m", by, limit, now)
            .expect("known window")
            .into_iter()
            .map(|e| (e.token, e.value))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        rows(RankBy::VolumeUsd, 10),
        vec![
            ("BBB".to_string(), Some(50.0)),
            ("AAA".to_string(), Some(5.0)),
            ("CCC".to_string(), Some(5.0)),
            ("DDD".to_string(), Some(0.0)),
        ]
    );
    assert_eq!(
        rows(RankBy::UniqueWallets, 1),
        vec![("CCC".to_string(), Some(2.0))]
    );
    let by_change = rows(RankBy::PriceChangePct, 10);
    assert_eq!(by_change[0], ("CCC".to_string(), Some(100.0)));
    assert_eq!(
        by_change[3],
        ("DDD".to_string(), None),
        "no swap in the window ranks last"
    );
    assert!(rows(RankBy::Txns, 0).is_empty());
    let top = engine
        .top("24h", RankBy::Txns, 1, now)
        .expect("known window");
    assert_eq!(top[0].token, "CCC");
    assert_eq!(top[0].stats.current.txns, 2);
}

#[test]
fn restore_rebuilds_identical_state_and_dedup() {
    let mut live = WindowEngine::new(config(&["5m", "1h", "6h", "24h"]));
    let mut restarted = WindowEngine::new(config(&["5m", "1h", "6h", "24h"]));
    let mut effects = Vec::new();
    let mut x: u64 = 7;
    for batch in 0..50 {
        let now = T0 + batch * 7 * MINUTE;
        let swaps: Vec<Swap> = (0..40)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let id = if x.is_multiple_of(10) {
                    format!("e{}", x % 300)
                } else {
                    format!("e{batch}-{i}")
                };
                let side = if x.is_multiple_of(3) {
                    Side::Sell
                } else {
                    Side::Buy
                };
                let at = now - (x % (3 * HOUR as u64)) as i64;
                let mut s = swap(
                    &id,
                    ["A", "B", "C"][(x % 3) as usize],
                    &format!("w{}", x % 61),
                    side,
                    1.0,
                    1.0,
                    at,
                );
                s.usd = (x % 10_000) as f64 / 7.0;
                s.rate = (x % 97) as f64 / 13.0;
                s
            })
            .collect();
        effects.push(live.apply_batch(&swaps, now).0);
    }
    for effect in &effects {
        restarted.restore(effect);
    }
    let now = T0 + 50 * 7 * MINUTE;
    for token in ["A", "B", "C"] {
        let stats = live.stats(token, now);
        assert!(stats.as_ref().is_some_and(|s| s
            .windows
            .get("24h")
            .is_some_and(|w| w.current.unique_wallets > 50)));
        assert_eq!(stats, restarted.stats(token, now));
    }
    assert_eq!(live.remembered_events(), restarted.remembered_events());
    assert_eq!(live.wallet_count(), restarted.wallet_count());
}
