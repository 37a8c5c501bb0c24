//! `Bot::shutdown` when the registrar does not answer (issue 7: the original's `stop()`
//! blocked 30 s when the registrar was down): registration configured to a loopback
//! port where nothing listens, and a real Kamailio that is killed after the bot
//! registered. Shutdown must return within its deadline and say the binding was not
//! removed ("unregistered: no (timed out)").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use callbot::settings::RegistrationSettings;
use callbot::{Bot, Settings};
use callbot_testkit::kamailio::{Kamailio, KamailioConfig, RegistrarEvent};

use common::LOOPBACK;

fn settings(model: std::path::PathBuf, registrar: SocketAddr) -> Settings {
    let mut s = common::loopback_settings(model, 2);
    s.sip.registration = Some(RegistrationSettings {
        server: registrar.to_string(),
        user: "callbot".into(),
        password: "s3cret-pw".into(),
        expires: 120,
    });
    s
}

/// Shuts `bot` down with `budget` and checks the report: within the deadline, the
/// registration reported as not removed because the deadline passed, every thread
/// joined, the components clean.
fn shutdown_within(bot: &mut Bot, budget: Duration) -> Duration {
    let started = Instant::now();
    let report = bot.shutdown(started + budget);
    let took = started.elapsed();
    println!("shutdown with the registrar down, deadline {budget:?}: took {took:?}; {report}");
    let sip = report.sip.as_ref().expect("SIP shut down");
    assert_eq!(sip.unregistered, Some(false), "{sip}");
    assert!(sip.timed_out, "{sip}");
    assert!(
        report.to_string().contains("unregistered: no (timed out)"),
        "{report}"
    );
    assert!(sip.thread_joined && report.event_thread_joined, "{report}");
    assert!(report.components.all_clean(), "{report:?}");
    // The SIP layer stops at the deadline and gets a little slack to exit its loop.
    assert!(took < budget + Duration::from_millis(150), "took {took:?}");
    took
}

/// Registration configured to a loopback port where nothing answers: the bot starts
/// (registration runs in the background), and shutdown returns within its deadline
/// (500 ms and 2 s) instead of waiting for the REGISTER transaction's 32 s timer.
#[test]
fn shutdown_with_no_registrar_returns_within_its_deadline() {
    let Some(model) = callbot_testkit::whisper_model() else {
        return;
    };
    for budget in [Duration::from_millis(500), Duration::from_secs(2)] {
        let nobody = SocketAddr::new(LOOPBACK, callbot_testkit::ports::free_udp_port());
        let mut bot = Bot::start(settings(model.clone(), nobody)).unwrap();
        // Let the first REGISTER and a retransmission go out unanswered.
        std::thread::sleep(Duration::from_millis(700));
        let took = shutdown_within(&mut bot, budget);
        // Not much sooner either: the bot tried to unregister until the deadline, less
        // the share it keeps for the components (at most 100 ms).
        assert!(took + Duration::from_millis(150) >= budget, "took {took:?}");
        // Idempotent, and Drop does nothing more.
        assert!(bot.shutdown(Instant::now() + budget).already_shut_down);
    }
}

/// The bot registers at a real Kamailio (digest auth), then Kamailio is killed (SIGTERM,
/// then SIGKILL): shutdown sends its `Expires: 0` REGISTER to a dead port and returns
/// at its deadline, saying the binding was not removed.
#[test]
fn heavy_e2e_shutdown_after_the_registrar_was_killed() {
    let Some(model) = callbot_testkit::whisper_model_and(&["kamailio"]) else {
        return;
    };
    let kam = Kamailio::start(&KamailioConfig::new("callbot", "s3cret-pw")).unwrap();
    let mut bot = Bot::start(settings(model, kam.addr())).unwrap();
    let reg = kam.wait_event(Duration::from_secs(10), |e| {
        matches!(e, RegistrarEvent::RegOk { .. })
    });
    assert!(reg.is_some(), "the bot did not register: {}", kam.log());
    kam.stop();
    let took = shutdown_within(&mut bot, Duration::from_millis(500));
    println!("registrar killed: shutdown took {took:?} (the original's stop() blocked 30 s)");
}
