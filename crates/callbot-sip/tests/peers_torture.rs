//! The 56-message torture set (`../shared/peers/torture/`) against the real UDP user
//! agent: it must answer the OPTIONS probe after every message, and each outcome is
//! compared with the set's INDEX.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod peers_support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use callbot_testkit::torture::{TortureOptions, TortureReport, TortureSet};
use peers_support::Bot;

fn run(ip: IpAddr, opts: &TortureOptions) -> Option<(Bot, TortureReport)> {
    let set = TortureSet::load().unwrap()?;
    let mut bot = Bot::start(ip);
    let addr = bot.addr();
    let report = bot.run_while(|| set.run(addr, opts)).unwrap();
    println!("{}", report.table());
    Some((bot, report))
}

fn fast() -> TortureOptions {
    TortureOptions {
        timeout: Duration::from_millis(300),
        invite_timeout: Duration::from_secs(2),
        probe_timeout: Duration::from_secs(2),
        ..TortureOptions::default()
    }
}

#[test]
fn heavy_torture_set_ipv4_alive_and_as_indexed() {
    let Some((mut bot, report)) = run(IpAddr::V4(Ipv4Addr::LOCALHOST), &fast()) else {
        return;
    };
    assert!(report.baseline_alive, "the UA must answer a plain OPTIONS");
    assert_eq!(report.rows.len(), 56);
    let dead: Vec<&str> = report.dead_after().iter().map(|r| r.file.as_str()).collect();
    assert!(
        dead.is_empty(),
        "UA stopped answering after {dead:?}\n{}",
        report.table()
    );
    assert_eq!(report.alive_at_end, Some(true));
    let diffs: Vec<String> = report
        .diffs()
        .iter()
        .map(|r| format!("{} got {:?} expected {}", r.file, r.statuses, r.expected))
        .collect();
    assert!(
        diffs.is_empty(),
        "outcomes differing from INDEX:\n{}",
        diffs.join("\n")
    );
    // Every INVITE the set made was cleaned up: no call or dialog is left.
    let st = bot.wait_no_calls(Duration::from_secs(10));
    assert_eq!((st.calls, st.dialogs), (0, 0), "{st:?}");
    let mut h = bot.handle;
    let rep = h.shutdown(std::time::Instant::now() + Duration::from_secs(2));
    assert!(rep.thread_joined, "{rep}");
}

#[test]
fn heavy_torture_set_ipv6_stays_alive() {
    let opts = TortureOptions {
        timeout: Duration::from_millis(150),
        invite_timeout: Duration::from_secs(1),
        ..fast()
    };
    let Some((_bot, report)) = run(IpAddr::V6(Ipv6Addr::LOCALHOST), &opts) else {
        return;
    };
    assert!(report.baseline_alive);
    assert!(report.dead_after().is_empty(), "{}", report.table());
    assert_eq!(report.alive_at_end, Some(true));
}
