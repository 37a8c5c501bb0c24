//! The `answer` and `register` examples against real peers: SIPp (200 calls at 20/s),
//! baresip (the example hangs up on it), Kamailio (register, unregister, wrong password).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use callbot_testkit::harness::{example_bin, read_lossy, wait_until};
use callbot_testkit::kamailio::{Kamailio, KamailioConfig, RegistrarEvent};
use callbot_testkit::process::Child;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Starts `answer --listen 127.0.0.1:PORT --hold HOLD` and waits for `listening on`.
fn start_answer(dir: &Path, hold_secs: f64) -> Option<(Child, SocketAddr, std::path::PathBuf)> {
    let bin = example_bin("answer")?;
    let addr = SocketAddr::new(LO, callbot_testkit::ports::free_udp_port());
    let log = dir.join("answer.log");
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", &addr.to_string(), "--hold", &hold_secs.to_string()]);
    let child = Child::spawn("answer", cmd, &log).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            read_lossy(&log).contains("listening on")
        }),
        "answer did not start: {}",
        read_lossy(&log)
    );
    Some((child, addr, log))
}

fn count_lines(text: &str, prefix: &str, contains: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(contains))
        .count()
}

#[test]
fn heavy_answer_example_takes_200_sipp_calls_at_20_per_second() {
    if callbot_testkit::tools::require("sipp").is_none() {
        return;
    }
    let dir = callbot_testkit::temp_dir("answer-sipp");
    let Some((mut child, addr, log)) = start_answer(dir.path(), 30.0) else {
        return;
    };
    let stats = callbot_testkit::sipp::SippUac::new(addr, 200, 20.0)
        .hold(Duration::from_millis(300))
        .run()
        .unwrap();
    assert_eq!(
        (stats.created, stats.successful, stats.failed),
        (200, 200, 0),
        "{stats:?}"
    );
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || count_lines(&read_lossy(&log), "ended ", "reason=remote hangup") == 200
    ));
    let text = read_lossy(&log);
    // SIPp offered PCMU only.
    let pcmu = text
        .lines()
        .filter(|l| l.starts_with("incoming ") && l.to_ascii_lowercase().contains("codec=pcmu"))
        .count();
    assert_eq!(pcmu, 200, "{text}");
    assert_eq!(count_lines(&text, "answered ", ""), 200);
    // SIGTERM: the example shuts down and exits 0 (stop() returns the first exit status).
    let status = child.stop();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", read_lossy(&log));
    let text = read_lossy(&log);
    let shutdown = text.lines().find(|l| l.starts_with("shutdown ")).unwrap();
    assert!(shutdown.contains("thread_joined=true"), "{shutdown}");
    assert!(shutdown.contains("calls_hung_up=0"), "{shutdown}");
}

#[test]
fn heavy_answer_example_hangs_up_on_baresip() {
    if callbot_testkit::tools::require("baresip").is_none()
        || callbot_testkit::tools::require("sox").is_none()
    {
        return;
    }
    let Some(shared) = callbot_testkit::shared_dir() else {
        callbot_testkit::tools::missing("../shared/peers/audio");
        return;
    };
    let dir = callbot_testkit::temp_dir("answer-baresip");
    let Some((mut child, addr, log)) = start_answer(dir.path(), 1.0) else {
        return;
    };
    let r = callbot_testkit::baresip::BaresipCall::new(addr, &shared.join("peers/audio/caller_yes.wav"))
        .hold(Duration::from_secs(15))
        .run()
        .unwrap();
    assert!(r.answered, "{}", r.log);
    assert_eq!(r.ended_by, callbot_testkit::baresip::CallEnd::RemoteBye);
    let d = r.duration.unwrap();
    assert!(
        d >= Duration::from_millis(900) && d < Duration::from_secs(5),
        "{d:?}"
    );
    assert!(wait_until(
        Duration::from_secs(3),
        Duration::from_millis(50),
        || read_lossy(&log).contains("reason=local hangup")
    ));
    child.stop();
}

/// Runs the register example as `botuser` with `password` at `reg` (60 s expiry, held
/// 1 s) until it exits, within 15 s: (its exit code, its output).
fn register(reg: &Kamailio, password: &str) -> Option<(Option<i32>, String)> {
    let bin = example_bin("register")?;
    let dir = callbot_testkit::temp_dir("register");
    let log = dir.path().join("register.log");
    let mut cmd = Command::new(bin);
    cmd.args(["--server", &reg.addr().to_string()])
        .args(["--user", "botuser", "--password", password])
        .args(["--expires", "60", "--hold", "1"]);
    let mut child = Child::spawn("register", cmd, &log).unwrap();
    let status = child.wait_timeout(Duration::from_secs(15)).unwrap();
    Some((status.and_then(|s| s.code()), read_lossy(&log)))
}

#[test]
fn heavy_register_example_against_kamailio() {
    if callbot_testkit::tools::require("kamailio").is_none() {
        return;
    }
    let reg = Kamailio::start(&KamailioConfig::new("botuser", "s3cret")).unwrap();
    let Some((code, text)) = register(&reg, "s3cret") else {
        return;
    };
    assert_eq!(code, Some(0), "{text}");
    assert!(text.lines().any(|l| l == "registered expires=60"), "{text}");
    let shutdown = text.lines().find(|l| l.starts_with("shutdown ")).unwrap();
    assert!(shutdown.contains("unregistered=yes"), "{shutdown}");
    assert!(
        reg.wait_event(Duration::from_secs(2), |e| matches!(
            e,
            RegistrarEvent::Unregistered { .. }
        ))
        .is_some(),
        "{}",
        reg.log()
    );
    assert_eq!(reg.count(|e| matches!(e, RegistrarEvent::RegOk { .. })), 1);
}

#[test]
fn heavy_register_example_wrong_password_exits_1() {
    if callbot_testkit::tools::require("kamailio").is_none() {
        return;
    }
    let mut cfg = KamailioConfig::new("botuser", "s3cret");
    cfg.wrong_password_403 = true;
    let reg = Kamailio::start(&cfg).unwrap();
    let Some((code, text)) = register(&reg, "WRONG") else {
        return;
    };
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("registration failed: ")),
        "{text}"
    );
    let tries = reg.count(|e| matches!(e, RegistrarEvent::BadPassword { .. }));
    assert!(
        (1..=2).contains(&tries),
        "{tries} REGISTERs with the wrong password"
    );
}

/// Measurement (ignored; run with `--run-ignored only --no-capture`, best `--release`):
/// SIPp signalling-only calls against the `answer` example process, its call setup rate,
/// and its RSS after 100 calls and after each further run of CALLBOT_LOAD_CALLS (10,000)
/// calls at CALLBOT_LOAD_RATE (1,000/s), measured once its transactions have expired
/// (64*T1 = 32 s after the last call).
#[test]
#[ignore = "measurement: run explicitly"]
fn heavy_measure_answer_example_rate_and_rss() {
    if callbot_testkit::tools::require("sipp").is_none() {
        return;
    }
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    let rate = env("CALLBOT_LOAD_RATE").unwrap_or(1000.0);
    let total = env("CALLBOT_LOAD_CALLS").unwrap_or(10_000.0) as u32;
    let runs = env("CALLBOT_LOAD_RUNS").unwrap_or(2.0) as u32;
    let dir = callbot_testkit::temp_dir("answer-load");
    let Some(bin) = example_bin("answer") else {
        return;
    };
    let addr = SocketAddr::new(LO, callbot_testkit::ports::free_udp_port());
    let log = dir.path().join("answer.log");
    let mut cmd = Command::new(bin);
    cmd.args([
        "--listen",
        &addr.to_string(),
        "--hold",
        "60",
        "--max-calls",
        "5000",
    ])
    .env("RUST_LOG", "warn");
    let mut child = Child::spawn("answer", cmd, &log).unwrap();
    assert!(wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || read_lossy(&log).contains("listening on")
    ));
    let pid = child.pid();
    let linger = Duration::from_secs(35);
    let warm = callbot_testkit::sipp::SippUac::new(addr, 100, 100.0)
        .run()
        .unwrap();
    assert_eq!(warm.failed, 0);
    std::thread::sleep(linger);
    let rss_100 = callbot_testkit::resources::rss_kib_of(pid);
    println!("answer example: RSS after 100 calls, their RFC linger timers expired: {rss_100} KiB");
    let mut prev = rss_100;
    for run in 1..=runs {
        let st = callbot_testkit::sipp::SippUac::new(addr, total, rate)
            .max_concurrent(2000)
            .recv_timeout(Duration::from_secs(5))
            .run()
            .unwrap();
        let rss_peak = callbot_testkit::resources::rss_kib_of(pid);
        std::thread::sleep(linger);
        let rss = callbot_testkit::resources::rss_kib_of(pid);
        println!(
            "ANSWER-LOAD run={run} calls={total} rate_goal={rate} successful={} failed={} retransmissions={} calls_per_s={:.0} setup_avg_ms={:?} \
             rss_after_100_calls_kib={rss_100} rss_right_after_kib={rss_peak} rss_after_expiry_kib={rss} \
             (calls ended, RFC linger timers expired) growth_over_previous_kib={} growth_over_100_kib={} (goal <= 1024); load: {}",
            st.successful,
            st.failed,
            st.retransmissions,
            st.calls_per_second(),
            st.setup_avg_ms,
            rss as i64 - prev as i64,
            rss as i64 - rss_100 as i64,
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
        prev = rss;
        assert_eq!(st.failed, 0, "{st:?}");
    }
    let status = child.stop();
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}
