//! `Bot::reconfigure` with the real layers and real peers (issue 7): a changed
//! registration is registered at its registrar before the swap (two Kamailio
//! registrars), a refused or unanswered one changes nothing and names the field while
//! calls keep being routed to the bot; `dialogue.max_calls` applies live; a slow build
//! (an LLM server that accepts the connection and never answers) does not hold up new
//! calls; echo mode is re-evaluated; `sip.listen` is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use callbot::bot::REGISTRATION_TIMEOUT;
use callbot::components::RegistrationChange;
use callbot::settings::RegistrationSettings;
use callbot::{Bot, Settings};
use callbot_sip::{CallId, EndReason, SipConfig, SipEvent, SipHandle, SipUserAgent};
use callbot_testkit::kamailio::{Kamailio, KamailioConfig, RegistrarEvent};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const USER: &str = "callbot";
const PASSWORD: &str = "s3cret-pw";

fn settings(dir: &Path, model: PathBuf) -> Settings {
    let mut s = Settings::default();
    s.sip.listen = SocketAddr::new(LOOPBACK, 0);
    s.stt.model = model;
    s.stt.threads = 1;
    // Nothing listens there: echo mode.
    s.llm.url = format!("http://127.0.0.1:{}", callbot_testkit::ports::free_udp_port());
    s.llm.connect_timeout_secs = 0.3;
    s.dialogue.greeting = "Hello.".into();
    s.dialogue.max_calls = 4;
    let base = callbot_testkit::ports::free_udp_port_range(10);
    s.media.rtp_port_min = base;
    s.media.rtp_port_max = base + 9;
    s.transcripts.dir = Some(dir.join("transcripts"));
    s
}

#[derive(Debug)]
enum Outcome {
    Answered(CallId, Duration),
    Refused(u16),
    Failed(String),
}

/// The project's own UAC placing calls (its RTP address is a bare socket: the bot's
/// audio is not listened to here).
struct Caller {
    ua: SipHandle,
    rtp: UdpSocket,
}

impl Caller {
    fn start() -> Caller {
        Caller {
            ua: SipUserAgent::start(SipConfig::new(SocketAddr::new(LOOPBACK, 0))).unwrap(),
            rtp: UdpSocket::bind(SocketAddr::new(LOOPBACK, 0)).unwrap(),
        }
    }

    /// Calls `uri` by sending the INVITE to `dest` and waits for the outcome.
    fn call(&self, uri: &str, dest: SocketAddr) -> Outcome {
        let t0 = Instant::now();
        let call = self.ua.call(uri, dest, self.rtp.local_addr().unwrap()).unwrap();
        loop {
            match self.ua.events().recv_timeout(Duration::from_secs(10)) {
                Ok(SipEvent::CallAnswered { call: c, .. }) if c == call => {
                    return Outcome::Answered(call, t0.elapsed());
                }
                Ok(SipEvent::CallEnded {
                    call: c,
                    reason: EndReason::Refused { code, .. },
                }) if c == call => return Outcome::Refused(code),
                Ok(SipEvent::CallEnded { call: c, reason }) if c == call => {
                    return Outcome::Failed(reason.to_string());
                }
                Ok(_) => {}
                Err(e) => return Outcome::Failed(format!("no outcome: {e}")),
            }
        }
    }

    fn answered(&self, uri: &str, dest: SocketAddr) -> CallId {
        match self.call(uri, dest) {
            Outcome::Answered(c, _) => c,
            Outcome::Refused(code) => panic!("call to {uri} via {dest} refused: {code}"),
            Outcome::Failed(why) => panic!("call to {uri} via {dest} failed: {why}"),
        }
    }

    fn hang_up(&self, call: CallId) {
        self.ua.hang_up(call).unwrap();
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(SipEvent::CallEnded { call: c, .. }) =
                self.ua.events().recv_timeout(Duration::from_millis(100))
                && c == call
            {
                return;
            }
        }
        panic!("{call} did not end");
    }
}

fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn registration(k: &Kamailio, password: &str) -> RegistrationSettings {
    RegistrationSettings {
        server: k.addr().to_string(),
        user: USER.into(),
        password: password.into(),
        expires: 120,
    }
}

fn count(k: &Kamailio, pred: impl Fn(&RegistrarEvent) -> bool) -> usize {
    k.count(pred)
}

fn reg_ok(e: &RegistrarEvent) -> bool {
    matches!(e, RegistrarEvent::RegOk { .. })
}

fn unregistered(e: &RegistrarEvent) -> bool {
    matches!(e, RegistrarEvent::Unregistered { .. })
}

/// Registered at Kamailio A, the bot is reconfigured: to B with a wrong password
/// (refused, `sip.registration.password`), to an unreachable registrar (refused within
/// `REGISTRATION_TIMEOUT`, `sip.registration.server`) — each time A keeps its binding
/// and calls through A still reach the bot — then to B for real (B's binding is made
/// first, then A's removed; a call answered through A before the swap stays up), then
/// without registration (B's binding removed), then back to A (added).
#[test]
fn heavy_reconfigure_registration_swaps_bindings_between_two_kamailio_registrars() {
    let Some(model) = callbot_testkit::whisper_model() else {
        return;
    };
    if callbot_testkit::tools::require("kamailio").is_none() {
        return;
    }
    let dir = callbot_testkit::temp_dir("callbot-reconf");
    let a = Kamailio::start(&KamailioConfig::new(USER, PASSWORD)).unwrap();
    let b = Kamailio::start(&KamailioConfig::new(USER, PASSWORD)).unwrap();
    let mut s = settings(dir.path(), model);
    s.sip.registration = Some(registration(&a, PASSWORD));
    let mut bot = Bot::start(s.clone()).unwrap();
    assert!(
        a.wait_event(Duration::from_secs(10), reg_ok).is_some(),
        "{}",
        a.log()
    );
    let caller = Caller::start();
    let (via_a, via_b) = (
        || caller.call(&a.user_uri(USER), a.addr()),
        || caller.call(&b.user_uri(USER), b.addr()),
    );
    let c = caller.answered(&a.user_uri(USER), a.addr());
    caller.hang_up(c);
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // 1. Wrong password at B: refused, nothing changes.
    let mut next = s.clone();
    next.sip.registration = Some(registration(&b, "WRONG"));
    let t = Instant::now();
    let e = bot.reconfigure(next.clone()).unwrap_err();
    println!(
        "wrong password refused in {:?}: {e} (load {})",
        t.elapsed(),
        load().trim()
    );
    assert_eq!(e.field, "sip.registration.password", "{e}");
    assert!(e.reason.contains("401"), "{e}");
    assert!(
        count(&b, |e| matches!(e, RegistrarEvent::BadPassword { .. })) >= 1,
        "{}",
        b.log()
    );
    assert_eq!(count(&b, reg_ok), 0);
    assert_eq!(count(&a, unregistered), 0, "A's binding kept");
    let c = caller.answered(&a.user_uri(USER), a.addr());
    caller.hang_up(c);
    assert!(matches!(via_b(), Outcome::Refused(404)));

    // 2. A registrar that does not answer: refused after REGISTRATION_TIMEOUT.
    let mut dead = registration(&b, PASSWORD);
    dead.server = format!("127.0.0.1:{}", callbot_testkit::ports::free_udp_port());
    next.sip.registration = Some(dead);
    let t = Instant::now();
    let e = bot.reconfigure(next.clone()).unwrap_err();
    let waited = t.elapsed();
    println!("unanswered registrar refused in {waited:?}: {e}");
    assert_eq!(e.field, "sip.registration.server", "{e}");
    assert!(waited >= REGISTRATION_TIMEOUT && waited < REGISTRATION_TIMEOUT + Duration::from_secs(3));
    let c = caller.answered(&a.user_uri(USER), a.addr());
    caller.hang_up(c);

    // 3. B for real, with a call through A live across the swap.
    let held = caller.answered(&a.user_uri(USER), a.addr());
    wait_until(Duration::from_secs(3), "the held call", || bot.live_calls() == 1);
    next.sip.registration = Some(registration(&b, PASSWORD));
    let t = Instant::now();
    let r = bot.reconfigure(next.clone()).unwrap();
    let total = t.elapsed();
    let RegistrationChange::Replaced { expires, took } = r.registration else {
        panic!("{r:?}")
    };
    println!(
        "registration swapped A -> B in {total:?} (new binding accepted {took:?} after its first REGISTER, expires {expires}; load {})",
        load().trim()
    );
    assert_eq!(expires, 120);
    assert_eq!(count(&b, reg_ok), 1, "{}", b.log());
    assert!(
        a.wait_event(Duration::from_secs(3), unregistered).is_some(),
        "{}",
        a.log()
    );
    assert!(matches!(via_a(), Outcome::Refused(404)), "A's binding is gone");
    let c = caller.answered(&b.user_uri(USER), b.addr());
    assert_eq!(bot.live_calls(), 2, "the call routed through A is still up");
    caller.hang_up(c);
    caller.hang_up(held);
    wait_until(Duration::from_secs(3), "calls reaped", || bot.live_calls() == 0);

    // 4. No registration: B's binding removed.
    let mut none = next.clone();
    none.sip.registration = None;
    let r = bot.reconfigure(none.clone()).unwrap();
    assert_eq!(r.registration, RegistrationChange::Removed);
    assert!(
        b.wait_event(Duration::from_secs(3), unregistered).is_some(),
        "{}",
        b.log()
    );
    assert!(matches!(via_b(), Outcome::Refused(404)));
    // Calls straight to the bot still work.
    let c = caller.answered(&format!("sip:{USER}@{}", bot.sip_addr()), bot.sip_addr());
    caller.hang_up(c);

    // 5. Back to A: added.
    let r = bot.reconfigure(s.clone()).unwrap();
    assert!(
        matches!(r.registration, RegistrationChange::Added { .. }),
        "{r:?}"
    );
    assert_eq!(count(&a, reg_ok), 2);
    let c = caller.answered(&a.user_uri(USER), a.addr());
    caller.hang_up(c);

    let report = bot.shutdown(Instant::now() + Duration::from_secs(3));
    assert_eq!(
        report.sip.as_ref().and_then(|s| s.unregistered),
        Some(true),
        "{report:?}"
    );
    assert!(report.components.all_clean(), "{report:?}");
    assert_eq!(count(&a, unregistered), 2);
}

/// `dialogue.max_calls` changes live; while a reconfiguration's LLM build hangs (the
/// server accepted the connection and never answers the probe), a new call is answered
/// at once; echo mode is left when a reachable server is configured and kept otherwise;
/// `sip.listen` is refused with the field named.
#[test]
fn heavy_reconfigure_max_calls_live_slow_build_does_not_hold_up_calls_echo_reevaluated() {
    let Some(model) = callbot_testkit::whisper_model() else {
        return;
    };
    let dir = callbot_testkit::temp_dir("callbot-reconf");
    let s = settings(dir.path(), model);
    let mut bot = Bot::start(s.clone()).unwrap();
    assert!(bot.echo_mode());
    let caller = Caller::start();
    let uri = format!("sip:bot@{}", bot.sip_addr());

    // max_calls 1: a second call gets 486; 2: it is answered.
    let mut next = s.clone();
    next.dialogue.max_calls = 1;
    bot.reconfigure(next.clone()).unwrap();
    let c1 = caller.answered(&uri, bot.sip_addr());
    wait_until(Duration::from_secs(3), "1 live call", || bot.live_calls() == 1);
    match caller.call(&uri, bot.sip_addr()) {
        Outcome::Refused(486) => {}
        other => panic!("over max_calls: {other:?}"),
    }
    next.dialogue.max_calls = 2;
    bot.reconfigure(next.clone()).unwrap();
    let c2 = caller.answered(&uri, bot.sip_addr());
    caller.hang_up(c1);
    caller.hang_up(c2);
    wait_until(Duration::from_secs(3), "calls reaped", || bot.live_calls() == 0);

    // A slow build: the LLM probe hangs for connect_timeout_secs.
    let hanging = TcpListener::bind("127.0.0.1:0").unwrap();
    hanging.set_nonblocking(true).unwrap();
    next.llm.url = format!("http://{}", hanging.local_addr().unwrap());
    next.llm.connect_timeout_secs = 3.0;
    std::thread::scope(|scope| {
        let reconfiguring = scope.spawn(|| {
            let t = Instant::now();
            (bot.reconfigure(next.clone()), t.elapsed())
        });
        let t = Instant::now();
        let _probe = loop {
            match hanging.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if t.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("the probe never connected: {e}"),
            }
        };
        let Outcome::Answered(c, setup) = caller.call(&uri, bot.sip_addr()) else {
            panic!("call during the build not answered")
        };
        assert!(
            !reconfiguring.is_finished(),
            "the call was answered while the LLM build still waited"
        );
        println!("call answered in {setup:?} while the LLM probe hung");
        caller.hang_up(c);
        let (result, took) = reconfiguring.join().unwrap();
        let r = result.unwrap();
        println!("reconfiguration with the hanging probe took {took:?}");
        assert!(took >= Duration::from_millis(2900), "{took:?}");
        assert_eq!(r.replaced, vec!["llm"]);
    });
    assert!(bot.echo_mode(), "still unreachable: echo mode");

    // A reachable server: echo mode left; while it is up and unchanged, the LLM is kept.
    let mut llm =
        callbot_testkit::ollama::OllamaServer::start(callbot_testkit::ollama::Script::reply("Fine."))
            .unwrap();
    next.llm.url = llm.url();
    next.llm.model = "test-model".into();
    next.llm.connect_timeout_secs = 1.0;
    let r = bot.reconfigure(next.clone()).unwrap();
    assert_eq!(r.replaced, vec!["llm"]);
    assert!(!bot.echo_mode());
    let r = bot.reconfigure(next.clone()).unwrap();
    assert!(r.kept.contains(&"llm"), "{r:?}");

    // sip.listen needs a restart.
    let mut moved = next.clone();
    moved.sip.listen = SocketAddr::new(LOOPBACK, callbot_testkit::ports::free_udp_port());
    let e = bot.reconfigure(moved).unwrap_err();
    assert_eq!(e.field, "sip.listen");
    assert!(e.reason.contains("restart"), "{e}");

    let report = bot.shutdown(Instant::now() + Duration::from_secs(3));
    assert!(report.components.all_clean(), "{report:?}");
    llm.shutdown(Instant::now() + Duration::from_secs(1));
}
