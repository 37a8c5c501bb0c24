//! Measurements (ignored by default; run with
//! `cargo nextest run -p callbot-sip --test peers_load --run-ignored only --no-capture`,
//! best with `--release`): signalling-only call setup rate with SIPp against the UA
//! (goal >= 1,000 calls/s, 0 failed) and the process RSS after 10,000 calls versus after
//! 100 (goal: within 1 MB). Prints the figures; asserts only the 0-failure goal and that
//! the tables are empty afterwards (no timing assertions on a shared machine).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod peers_support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use callbot_sip::SipConfig;
use callbot_testkit::sipp::{SippStats, SippUac};
use peers_support::Bot;

fn calls(bot: &mut Bot, n: u32, rate: f64) -> SippStats {
    let addr = bot.addr();
    let stats = bot.run_while(|| {
        SippUac::new(addr, n, rate)
            .max_concurrent(2000)
            .recv_timeout(Duration::from_secs(5))
            .run()
            .unwrap()
    });
    println!(
        "{n} calls at {rate}/s: successful={} failed={} retransmissions={} wall={:.2}s -> {:.0} calls/s, setup avg {:?} ms",
        stats.successful,
        stats.failed,
        stats.retransmissions,
        stats.wall_time.as_secs_f64(),
        stats.calls_per_second(),
        stats.setup_avg_ms
    );
    stats
}

/// Where this process's RSS is, in KiB, from `/proc/self/smaps`: the main heap
/// (`[heap]`, glibc's main arena), anonymous mappings (the other threads' arenas, thread
/// stacks, large `mmap`ed blocks) and the rest (binary, libraries, stack).
fn rss_breakdown() -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let (mut heap, mut anon, mut other) = (0u64, 0u64, 0u64);
    let mut kind = 2;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let path = words.nth(4);
            kind = match path {
                Some("[heap]") => 0,
                None => 1,
                Some(_) => 2,
            };
        } else if first == "Rss:" {
            let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match kind {
                0 => heap += kib,
                1 => anon += kib,
                _ => other += kib,
            }
        }
    }
    format!("main_heap_kib={heap} anon_kib={anon} other_kib={other}")
}

#[test]
#[ignore = "measurement: run explicitly (see the file's docs)"]
fn heavy_measure_setup_rate_and_rss() {
    if callbot_testkit::tools::require("sipp").is_none() {
        return;
    }
    let mut cfg = SipConfig::new(std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0));
    cfg.max_calls = 5000;
    let mut bot = Bot::start_with(cfg);
    bot.count_only = true;
    let warm = calls(&mut bot, 100, 100.0);
    assert_eq!(warm.failed, 0);
    let st = bot.wait_idle(Duration::from_secs(40));
    let rss_100 = callbot_testkit::resources::rss_kib();
    println!(
        "RSS after 100 calls, their RFC linger timers expired: {rss_100} KiB ({}) ({st:?})",
        rss_breakdown()
    );

    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    let rate = env("CALLBOT_LOAD_RATE").unwrap_or(1000.0);
    let total = env("CALLBOT_LOAD_CALLS").unwrap_or(10_000.0) as u32;
    let runs = env("CALLBOT_LOAD_RUNS").unwrap_or(2.0) as u32;
    let mut rss_prev = rss_100;
    for run in 1..=runs {
        bot.counts.clear();
        let big = calls(&mut bot, total, rate);
        let rss_right_after = callbot_testkit::resources::rss_kib();
        println!(
            "run {run}: events {:?} for {} calls; right after: {:?}",
            bot.counts,
            big.created,
            bot.handle.stats().unwrap()
        );
        bot.counts.clear();
        // Transactions linger 64*T1 (32 s); calls whose ACK and BYE were lost end after
        // timer H and their BYE's timeout.
        let t0 = std::time::Instant::now();
        let mut st = bot.wait_idle(Duration::from_secs(10));
        while t0.elapsed() < Duration::from_secs(120)
            && (st.calls, st.server_transactions, st.client_transactions) != (0, 0, 0)
        {
            println!("draining after {:.0?}: {st:?}", t0.elapsed());
            st = bot.wait_idle(Duration::from_secs(10));
        }
        if !bot.counts.is_empty() {
            println!("events while draining: {:?}", bot.counts);
        }
        let rss = callbot_testkit::resources::rss_kib();
        println!(
            "LOAD-RESULT run={run} rate_goal={rate} calls={total} successful={} failed={} retransmissions={} calls_per_s={:.0} \
             rss_after_100_calls_kib={rss_100} rss_right_after_kib={rss_right_after} \
             rss_after_expiry_kib={rss} (calls ended, RFC linger timers expired, tables empty) \
             growth_over_previous_kib={} growth_over_100_kib={} (goal <= 1024) [{}]; load: {}",
            big.successful,
            big.failed,
            big.retransmissions,
            big.calls_per_second(),
            rss as i64 - rss_prev as i64,
            rss as i64 - rss_100 as i64,
            rss_breakdown(),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
        rss_prev = rss;
        assert_eq!(big.failed, 0, "{big:?}");
        assert_eq!(
            (
                st.calls,
                st.dialogs,
                st.server_transactions,
                st.client_transactions
            ),
            (0, 0, 0, 0)
        );
    }
}
