//! Memory of the window engine, measured with a counting global allocator
//! (bytes requested and live; malloc's own per-allocation overhead, ~8–16 bytes,
//! is reported separately as a count of live allocations).
//!
//! Scenarios:
//! - quiet tokens: 200k tokens with one swap each, right after the swap (both
//!   levels) and after two hours (second level expired);
//! - dedup alone: the same number of swaps on one token in one second;
//! - busy tokens: one token at 100 and at 10 swaps/s for 24 h (10k wallets);
//! - a long tail: 1 M tokens over 24 h (every token one swap, plus 2 M swaps
//!   Zipf(1.1) over the tokens; 100k wallets Zipf(0.9)).
//!
//! Run: `cargo bench --bench engine_memory` (about a minute).

#[path = "common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use common::{address, default_config, event_id, Zipf, HOUR, SECOND, T0};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use swapstats::swap::{Side, Swap};
use swapstats::window::{EngineConfig, WindowEngine};

/// Counts live bytes and live allocations.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_ALLOCATIONS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to `System` with the same layout and pointer;
// the counters are only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        LIVE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        LIVE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        LIVE_ALLOCATIONS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live bytes and allocations now.
fn live() -> (isize, isize) {
    (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_ALLOCATIONS.load(Ordering::Relaxed),
    )
}

/// Builds an engine with `build` and returns it with the bytes and allocations
/// it holds (everything else `build` allocated must be freed by then).
fn measure(build: impl FnOnce() -> WindowEngine) -> (WindowEngine, f64, f64) {
    let before = live();
    let engine = build();
    let after = live();
    (
        engine,
        (after.0 - before.0) as f64,
        (after.1 - before.1) as f64,
    )
}

fn swap(id: u64, token: String, wallet: String, side: Side, at: i64) -> Swap {
    let usd = 10.0 + (id % 1000) as f64;
    Swap {
        event_id: event_id(id),
        token,
        wallet: Some(wallet),
        side,
        amount: usd * 3.0,
        usd,
        rate: 0.3 + (id % 7) as f64,
        created_at_ms: None,
        executed_at_ms: at,
    }
}

fn side(i: u64) -> Side {
    if i.is_multiple_of(2) {
        Side::Buy
    } else {
        Side::Sell
    }
}

fn report(name: &str, bytes: f64, allocations: f64, per: f64, unit: &str) {
    println!(
        "{name:<58} {:>10.1} MiB  {:>9.0} B/{unit}  ({:.2} live allocations/{unit})",
        bytes / (1024.0 * 1024.0),
        bytes / per,
        allocations / per
    );
}

fn quiet_tokens() {
    const N: u64 = 200_000;
    let wallets: Vec<String> = (0..10_000).map(|i| address('W', i)).collect();
    let at = T0 + HOUR;
    let (mut engine, bytes, allocations) = measure(|| {
        let mut engine = WindowEngine::new(default_config());
        for i in 0..N {
            let s = swap(
                i,
                address('T', i as usize),
                wallets[(i % 10_000) as usize].clone(),
                side(i),
                at,
            );
            engine.apply(&s, at);
        }
        engine
    });
    report(
        "quiet tokens, 1 swap each, both levels (incl. dedup entry)",
        bytes,
        allocations,
        N as f64,
        "token",
    );
    let (_, dedup_bytes, dedup_allocations) = measure(|| {
        let mut engine = WindowEngine::new(default_config());
        for i in 0..N {
            let s = swap(i, "ONE".to_string(), "W".to_string(), Side::Buy, at);
            engine.apply(&s, at);
        }
        engine
    });
    report(
        "dedup: one remembered event id",
        dedup_bytes,
        dedup_allocations,
        N as f64,
        "event",
    );
    let wallet_names = engine.wallet_count() as f64;
    report(
        "quiet token without its event id (wallet names amortized)",
        bytes - dedup_bytes,
        allocations - dedup_allocations,
        N as f64,
        "token",
    );
    let before = live();
    engine.expire(at + 2 * HOUR + SECOND);
    let after = live();
    let bytes = bytes + (after.0 - before.0) as f64;
    let allocations = allocations + (after.1 - before.1) as f64;
    report(
        "quiet token after 2 h (minute level only), without event id",
        bytes - dedup_bytes,
        allocations - dedup_allocations,
        N as f64,
        "token",
    );
    println!("  ({wallet_names} wallet names shared by these tokens)");
}

fn busy_token(rate: u64) {
    let started = Instant::now();
    let wallets = Zipf::new(10_000, 0.9);
    let names: Vec<String> = (0..10_000).map(|i| address('W', i)).collect();
    let mut rng = SmallRng::seed_from_u64(rate);
    // Dedup horizon of one minute with frequent expiry, so that what is measured
    // is the token, not 24 h of event ids.
    let config = EngineConfig {
        dedup_horizon_ms: 60 * SECOND,
        ..default_config()
    };
    let total = rate * 24 * 3600;
    let (engine, bytes, allocations) = measure(|| {
        let mut engine = WindowEngine::new(config);
        for i in 0..total {
            let at = T0 + (i * 1000 / rate) as i64;
            let wallet = names[wallets.sample(&mut rng)].clone();
            engine.apply(&swap(i, "BUSY".to_string(), wallet, side(i), at), at);
            if i % (rate * 10) == 0 {
                engine.expire(at);
            }
        }
        engine.expire(T0 + 24 * HOUR);
        engine
    });
    let remembered = engine.remembered_events();
    report(
        &format!(
            "busy token, {rate} swaps/s for 24 h, {} wallets",
            engine.wallet_count()
        ),
        bytes,
        allocations,
        1.0,
        "token",
    );
    println!(
        "  (includes {remembered} remembered event ids and the wallet names; built in {:.1?})",
        started.elapsed()
    );
}

fn long_tail() {
    const TOKENS: usize = 1_000_000;
    const SWAPS: u64 = 3_000_000;
    let started = Instant::now();
    let tokens = Zipf::new(TOKENS, 1.1);
    let wallets = Zipf::new(100_000, 0.9);
    let mut rng = SmallRng::seed_from_u64(11);
    let mut now = T0;
    let (engine, bytes, allocations) = measure(|| {
        let mut engine = WindowEngine::new(default_config());
        for i in 0..SWAPS {
            now = T0 + (i as f64 * (24 * HOUR) as f64 / SWAPS as f64) as i64;
            // Every third swap is some token's only guaranteed swap; the rest are Zipf.
            let token = if i % 3 == 0 {
                (i / 3) as usize
            } else {
                tokens.sample(&mut rng)
            };
            let wallet = wallets.sample(&mut rng);
            engine.apply(
                &swap(i, address('T', token), address('W', wallet), side(i), now),
                now,
            );
            if i % 10_000 == 0 {
                engine.expire(now);
            }
        }
        engine.expire(now);
        engine
    });
    let (_, dedup_bytes, _) = measure(|| {
        let mut engine = WindowEngine::new(default_config());
        for i in 0..SWAPS {
            engine.apply(
                &swap(i, "ONE".to_string(), "W".to_string(), Side::Buy, now),
                now,
            );
        }
        engine
    });
    let tokens = engine.token_count() as f64;
    report(
        &format!(
            "long tail: {tokens} tokens, {SWAPS} swaps over 24 h, {} wallets",
            engine.wallet_count()
        ),
        bytes,
        allocations,
        tokens,
        "token",
    );
    report(
        "long tail without the 24 h of event ids",
        bytes - dedup_bytes,
        allocations,
        tokens,
        "token",
    );
    println!("  (built in {:.1?})", started.elapsed());
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    println!("window engine memory (requested bytes; see the header of benches/engine_memory.rs)");
    quiet_tokens();
    busy_token(10);
    busy_token(100);
    long_tail();
}
