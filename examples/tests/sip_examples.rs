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

fn register(reg: &Kamailio, password: &str, hold: &str, log: &Path) -> Option<Child> {
    let bin = example_bin("register")?;
    let mut cmd = Command::new(bin);
    cmd.args(["--server", &reg.addr().to_string()])
        .args(["--user", "botuser", "--password", password])
        .args(["--expires", "60", "--hold", hold]);
    Some(Child::spawn("register", cmd, log).unwrap())
}

#[test]
fn heavy_register_example_against_kamailio() {
    if callbot_testkit::tools::require("kamailio").is_none() {
        return;
    }
    let reg = Kamailio::start(&KamailioConfig::new("botuser", "s3cret")).unwrap();
    let dir = callbot_testkit::temp_dir("register-ok");
    let log = dir.path().join("register.log");
    let Some(mut child) = register(&reg, "s3cret", "1", &log) else {
        return;
    };
    let status = child.wait_timeout(Duration::from_secs(15)).unwrap();
    let text = read_lossy(&log);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{text}");
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
    let dir = callbot_testkit::temp_dir("register-bad");
    let log = dir.path().join("register.log");
    let Some(mut child) = register(&reg, "WRONG", "1", &log) else {
        return;
    };
    let status = child.wait_timeout(Duration::from_secs(15)).unwrap();
    let text = read_lossy(&log);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{text}");
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
