//! End-to-end tests of the whole bot under load with real peers (issue 7, "Tested end
//! to end with real peers"): shutdown with 50 live SIPp calls, and 100 reconfigurations
//! during live calls alternating valid and invalid settings. The bot runs with its real
//! layers (Whisper tiny.en, espeak-ng, an Ollama-protocol test server or echo mode).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use callbot_testkit::harness::wait_for;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use callbot::components::RegistrationChange;
use callbot::settings::RegistrationSettings;
use callbot::{Bot, Settings};
use callbot_audio::g711::Law;
use callbot_rtp::{RtpSession, RtpSessionConfig};
use callbot_sip::{CallId, SipConfig, SipEvent, SipHandle, SipUserAgent};

use common::LOOPBACK;

fn settings(dir: &Path, model: PathBuf, max_calls: usize) -> Settings {
    let mut s = common::loopback_settings(model, max_calls);
    s.dialogue.greeting = "Hello.".into();
    s.transcripts.dir = Some(dir.join("transcripts"));
    s
}

use callbot_testkit::resources::{fd_targets as fd_list, open_fds as fds, open_sockets as sockets, threads};

fn rss_kb() -> i64 {
    callbot_testkit::resources::rss_kib() as i64
}

fn trimmed_rss_kb() -> i64 {
    callbot_testkit::resources::trimmed_rss_kib() as i64
}

/// Every UDP port of the bot (SIP and the RTP range) can be bound again.
fn assert_ports_free(sip: SocketAddr, min: u16, max: u16) {
    assert!(UdpSocket::bind(sip).is_ok(), "SIP port {sip} still bound");
    let busy: Vec<u16> = (min..=max)
        .filter(|p| UdpSocket::bind(SocketAddr::new(LOOPBACK, *p)).is_err())
        .collect();
    assert!(busy.is_empty(), "RTP ports still bound: {busy:?}");
}

/// Our own call beside SIPp's: a SIP UA and a bare UDP socket as its RTP port, read by
/// a thread that timestamps every packet the bot sends and the BYE, so the test knows
/// when the goodbye was heard and when the BYE came.
struct Listener {
    ua: SipHandle,
    rtp: UdpSocket,
    call: CallId,
}

/// What the listener saw from `since` on.
#[derive(Debug, Default)]
struct Heard {
    /// Arrival of the first and last packet with loud audio (the goodbye), from `since`.
    first_loud: Option<Duration>,
    last_loud: Option<Duration>,
    /// Audio in the loud packets.
    loud: Duration,
    /// Arrival of the bot's BYE, from `since`.
    bye: Option<Duration>,
}

impl Listener {
    fn call(bot: SocketAddr) -> Listener {
        let rtp = UdpSocket::bind(SocketAddr::new(LOOPBACK, 0)).unwrap();
        let ua = SipUserAgent::start(SipConfig::new(SocketAddr::new(LOOPBACK, 0))).unwrap();
        let uri = format!("sip:listener@{bot}");
        let offer = rtp.local_addr().unwrap();
        let (call, _) = callbot::testing::place_call(&ua, &uri, bot, offer, Duration::from_secs(5), |e| {
            if let SipEvent::CallEnded { reason, .. } = e {
                panic!("listener call ended: {reason:?}");
            }
        })
        .unwrap_or_else(|e| panic!("listener call not answered: {e}"));
        Listener { ua, rtp, call }
    }

    /// Drops the packets received so far (the greeting).
    fn drain(&self) {
        let mut buf = [0u8; 2048];
        self.rtp.set_nonblocking(true).unwrap();
        while self.rtp.recv_from(&mut buf).is_ok() {}
        self.rtp.set_nonblocking(false).unwrap();
    }

    /// Reads packets and SIP events from `since` until the BYE (plus 100 ms) or 3 s.
    fn listen(&self, since: Instant) -> Heard {
        let mut heard = Heard::default();
        let mut buf = [0u8; 2048];
        let mut samples = Vec::new();
        self.rtp.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        while since.elapsed() < Duration::from_secs(3)
            && heard
                .bye
                .is_none_or(|b| since.elapsed() < b + Duration::from_millis(100))
        {
            while let Ok(ev) = self.ua.events().try_recv() {
                if let SipEvent::CallEnded { call, reason } = ev
                    && call == self.call
                {
                    assert_eq!(reason, callbot_sip::EndReason::RemoteHangup);
                    heard.bye.get_or_insert(since.elapsed());
                }
            }
            let Ok((n, _)) = self.rtp.recv_from(&mut buf) else {
                continue;
            };
            let at = since.elapsed();
            // 12-byte RTP header (the bot sends no CSRC or extension), PCMU payload.
            let Some(payload) = buf.get(12..n).filter(|_| buf[1] & 0x7f == 0) else {
                continue;
            };
            samples.clear();
            Law::Ulaw.decode_into(payload, &mut samples);
            if samples.iter().any(|s| s.unsigned_abs() > 500) {
                heard.first_loud.get_or_insert(at);
                heard.last_loud = Some(at);
                heard.loud += Duration::from_millis(payload.len() as u64 / 8);
            }
        }
        heard
    }
}

/// Shutdown with 50 live calls from SIPp (signalling only, holding the calls for far
/// longer than the test) and a spoken goodbye (`"Goodbye."`): `Bot::shutdown` returns
/// within the 500 ms deadline, every call got BYE from the bot (SIPp counts each as
/// ended by an unexpected BYE, which it answers with 200, and then exits), every
/// goodbye played to its end before its BYE, every thread is joined and every port
/// released. A 51st call from the project's own UA checks on the wire that the goodbye
/// arrived whole, then the BYE, both within the deadline.
#[test]
fn heavy_e2e_shutdown_with_50_live_sipp_calls() {
    let Some(model) = callbot_testkit::whisper_model_and(&["sipp"]) else {
        return;
    };
    let dir = callbot_testkit::temp_dir("callbot-e2e");
    let n = 50;
    let mut s = settings(dir.path(), model, n + 1);
    s.dialogue.shutdown_phrase = "Goodbye.".into();
    // The voice this test was calibrated with: "Goodbye." fits the 500 ms deadline's
    // ~240 ms uncut at 2.5x 175 wpm (at 2.5x the 140 wpm phone default it is cut to fit).
    s.tts.voice = "en-us".into();
    s.tts.rate = 175;
    let (rtp_min, rtp_max) = (s.media.rtp_port_min, s.media.rtp_port_max);
    // A first bot started and shut down: process-global library state initialised once
    // per process (it holds a connected UNIX socket pair after the first start) is then
    // part of the baseline, so what is compared below is what this bot leaves behind.
    let fds_cold = fds();
    Bot::start(s.clone())
        .unwrap()
        .shutdown(Instant::now() + Duration::from_secs(2));
    println!(
        "fds before the first bot {fds_cold}, after it {}: {}",
        fds(),
        fd_list()
    );
    let threads_before = threads();
    let fds_before = fds();
    let mut bot = Bot::start(s).unwrap();
    let sip = bot.sip_addr();
    let mut listener = Listener::call(sip);

    let uac = callbot_testkit::sipp::SippUac::new(sip, n as u32, 50.0)
        .media(callbot_testkit::sipp::UacMedia::SignallingOnly)
        .hold(Duration::from_secs(60))
        .max_concurrent(n as u32);
    let sipp = std::thread::Builder::new()
        .name("sipp-runner".into())
        .spawn(move || uac.run())
        .unwrap();

    wait_for(Duration::from_secs(20), "51 live calls", || {
        bot.live_calls() == n + 1
    });
    // Let every greeting play to its end.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(bot.live_calls(), n + 1);
    let live_threads = threads();
    listener.drain();

    let started = Instant::now();
    let heard = std::thread::scope(|scope| {
        let l = scope.spawn(|| listener.listen(started));
        let report = bot.shutdown(started + Duration::from_millis(500));
        (report, started.elapsed(), l.join().unwrap())
    });
    let (report, took, heard) = heard;
    println!(
        "shutdown with {} live calls and a goodbye: {took:?}; threads live {live_threads}; load {}",
        n + 1,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!("{report}");
    println!("{report:#?}");
    println!("listener: {heard:?}");
    assert_eq!(report.live_calls, n + 1);
    assert_eq!(report.calls_ended, n + 1, "{report}");
    assert_eq!(report.calls_abandoned, 0, "{report}");
    assert_eq!(report.byes_sent, n + 1, "{report}");
    assert_eq!(report.byes_answered, n + 1, "{report}");
    assert_eq!(report.goodbyes_completed, n + 1, "{report}");
    let goodbye = report.goodbye.as_ref().expect("a goodbye");
    assert!(goodbye.error.is_none() && !goodbye.cut, "{goodbye:?}");
    assert!(report.event_thread_joined);
    let sip_report = report.sip.as_ref().expect("SIP shut down");
    assert!(sip_report.thread_joined, "{sip_report}");
    assert_eq!(sip_report.calls_abandoned, 0, "{sip_report}");
    assert!(report.components.all_clean(), "{report:?}");
    // The deadline is 500 ms; allow scheduling noise on the loaded 2-core machine.
    assert!(took < Duration::from_millis(650), "shutdown took {took:?}");
    // On the wire: the whole goodbye (but its quiet edges), then the BYE, in time.
    let bye = heard.bye.expect("the listener got BYE");
    let last = heard.last_loud.expect("the listener heard the goodbye");
    assert!(last < bye, "{heard:?}");
    assert!(bye < Duration::from_millis(650), "{heard:?}");
    assert!(
        heard.loud + Duration::from_millis(60) >= goodbye.audio,
        "heard {:?} of {:?}",
        heard.loud,
        goodbye.audio
    );
    listener.ua.shutdown(Instant::now() + Duration::from_secs(1));
    drop(listener);

    // SIPp: every call ended by the bot's BYE; SIPp exits once all 50 are gone.
    let t0 = Instant::now();
    let stats = sipp.join().unwrap().unwrap();
    println!(
        "SIPp: created {} successful {} failed {} (unexpected message {}), exited {:?} after shutdown, exit code {:?}",
        stats.created,
        stats.successful,
        stats.failed,
        stats.failed_unexpected,
        t0.elapsed(),
        stats.exit_code
    );
    assert_eq!(stats.created, n as u64);
    assert_eq!(
        stats.failed_unexpected, n as u64,
        "each call ended by BYE: {}",
        stats.errors
    );
    assert!(
        stats.wall_time < Duration::from_secs(40),
        "SIPp did not see every call end (hold was 60 s): {:?}",
        stats.wall_time
    );
    assert!(stats.errors.contains("BYE"), "{}", stats.errors);

    wait_for(Duration::from_secs(2), "threads joined", || {
        threads() <= threads_before
    });
    let threads_after = threads();
    let fds_after = fds();
    println!(
        "threads: before start {threads_before}, with {} calls {live_threads}, after {threads_after}; fds {fds_before} -> {fds_after}",
        n + 1
    );
    assert_eq!(threads_after, threads_before, "every thread joined");
    assert_eq!(fds_after, fds_before, "every fd closed: {}", fd_list());
    assert_ports_free(sip, rtp_min, rtp_max);
}

struct Caller {
    ua: SipHandle,
    rtp: Vec<RtpSession>,
}

impl Caller {
    fn start() -> Caller {
        Caller {
            ua: SipUserAgent::start(SipConfig::new(SocketAddr::new(LOOPBACK, 0))).unwrap(),
            rtp: Vec::new(),
        }
    }

    /// Places a call, waits for the answer, points a fresh RTP session at the bot.
    /// Panics if any call (this one or a held one) ends meanwhile.
    fn call(&mut self, bot: SocketAddr) -> (CallId, usize) {
        self.call_via(&format!("sip:bot@{bot}"), bot)
    }

    /// [`Caller::call`] to `uri`, sending the INVITE to `dest` (a registrar routes it).
    fn call_via(&mut self, uri: &str, dest: SocketAddr) -> (CallId, usize) {
        let rtp = RtpSession::start(RtpSessionConfig::new(LOOPBACK, Law::Ulaw, None)).unwrap();
        let call = common::dial(&self.ua, &rtp, uri, dest);
        self.rtp.push(rtp);
        (call, self.rtp.len() - 1)
    }

    /// Waits for loud audio (the greeting) on the session.
    fn hears_audio(&self, idx: usize, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(f) = self.rtp[idx].frames().recv_timeout(Duration::from_millis(50))
                && f.audio.samples.iter().any(|s| s.unsigned_abs() > 500)
            {
                return true;
            }
        }
        false
    }

    fn hang_up(&mut self, call: CallId, idx: usize) {
        callbot::testing::hang_up(&self.ua, call, Duration::from_secs(3), |e| {
            if let SipEvent::CallEnded { call: c, reason } = e {
                panic!("call {c:?} ended: {reason:?}");
            }
        })
        .unwrap();
        let mut rtp = self.rtp.remove(idx);
        rtp.shutdown(Instant::now() + Duration::from_secs(1));
    }

    fn shutdown(mut self) {
        for mut r in self.rtp.drain(..) {
            r.shutdown(Instant::now() + Duration::from_secs(1));
        }
        self.ua.shutdown(Instant::now() + Duration::from_secs(1));
    }
}

/// 100 reconfigurations while two calls stay live, alternating valid and invalid
/// settings. Valid rounds rebuild the LLM client against a real Ollama-protocol server
/// (new temperature or system prompt; `/api/tags` probed each time) and every tenth one
/// also reloads Whisper (new `stt.threads`). Invalid rounds cover a missing model file,
/// a model the server does not have, a non-HTTP URL, an unreachable server without echo
/// fallback, and out-of-range values: each is rejected naming its field, the held calls
/// survive, and a call placed right after is answered and hears its greeting (the old
/// components still serve). With Kamailio installed the bot is registered too: every
/// tenth valid round moves the registration to the other of two registrars (the new
/// binding registered first, the old one removed), one kind of invalid round is a wrong
/// password (`sip.registration.password`), and the verification calls are routed
/// through the current registrar. Afterwards threads, fds and sockets are back to the
/// baseline exactly, and RSS within 16 MB (see the assertion).
#[test]
fn heavy_e2e_100_reconfigurations_during_live_calls() {
    let Some(model) = callbot_testkit::whisper_model() else {
        return;
    };
    let dir = callbot_testkit::temp_dir("callbot-e2e");
    let mut llm = callbot_testkit::ollama::OllamaServer::start(callbot_testkit::ollama::Script::reply(
        "Fine, thank you.",
    ))
    .unwrap();
    let mut base = settings(dir.path(), model, 6);
    base.llm.url = llm.url();
    base.llm.model = "test-model".into();
    base.llm.echo_when_unreachable = false;
    let registrars = callbot_testkit::tools::require("kamailio").map(|_| {
        let cfg = callbot_testkit::kamailio::KamailioConfig::new("callbot", "s3cret");
        [0, 1].map(|_| callbot_testkit::kamailio::Kamailio::start(&cfg).unwrap())
    });
    let registration_at = |i: usize, password: &str| {
        registrars.as_ref().map(|r| RegistrationSettings {
            server: r[i].addr().to_string(),
            user: "callbot".into(),
            password: password.into(),
            expires: 300,
        })
    };
    let mut registrar = 0;
    base.sip.registration = registration_at(registrar, "s3cret");
    let mut bot = Bot::start(base.clone()).unwrap();
    assert!(!bot.echo_mode());
    let addr = bot.sip_addr();
    let mut caller = Caller::start();
    let is_ok = |e: &callbot_testkit::kamailio::RegistrarEvent| {
        matches!(e, callbot_testkit::kamailio::RegistrarEvent::RegOk { .. })
    };
    if let Some(r) = &registrars {
        assert!(
            r[0].wait_event(Duration::from_secs(10), is_ok).is_some(),
            "{}",
            r[0].log()
        );
    }
    // Verification calls go through the current registrar when there is one.
    let verify_route = |registrar: usize| match &registrars {
        Some(r) => (r[registrar].user_uri("callbot"), r[registrar].addr()),
        None => (format!("sip:bot@{addr}"), addr),
    };

    // Warm-up: one full call so lazily allocated state exists before the baseline.
    let (c, i) = caller.call(addr);
    assert!(caller.hears_audio(i, Duration::from_secs(5)), "warm-up greeting");
    caller.hang_up(c, i);
    wait_for(Duration::from_secs(3), "warm-up call reaped", || {
        bot.live_calls() == 0
    });
    std::thread::sleep(Duration::from_millis(200));
    let (t_base, f_base, s_base, rss_base) = (threads(), fds(), sockets(), trimmed_rss_kb());

    // Two calls held through all the rounds.
    let held: Vec<(CallId, usize)> = (0..2).map(|_| caller.call(addr)).collect();
    wait_for(Duration::from_secs(2), "2 live calls", || bot.live_calls() == 2);

    let started = Instant::now();
    let mut whisper_reloads = 0;
    let mut verified_calls = 0;
    let mut current_threads = base.stt.threads;
    let mut registration_swaps = Vec::new();
    let rounds = 100;
    for round in 0..rounds {
        let mut next = base.clone();
        next.stt.threads = current_threads;
        if round % 2 == 0 {
            next.llm.temperature = 0.1 + (round % 7) as f32 * 0.1;
            next.llm.system_prompt = format!("You are a phone bot, round {round}.");
            next.dialogue.greeting = format!("Hello, round {round}.");
            if round % 20 == 0 {
                current_threads = if current_threads == 1 { 2 } else { 1 };
                next.stt.threads = current_threads;
                whisper_reloads += 1;
            }
            let swap = round % 10 == 0 && registrars.is_some();
            if swap {
                next.sip.registration = registration_at(1 - registrar, "s3cret");
            }
            let r = bot
                .reconfigure(next.clone())
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert!(r.replaced.contains(&"llm"), "round {round}: {r:?}");
            if swap {
                let RegistrationChange::Replaced { took, .. } = r.registration else {
                    panic!("round {round}: {r:?}")
                };
                registration_swaps.push((took, r.elapsed));
                registrar = 1 - registrar;
            }
            base.stt.threads = current_threads;
            base.sip.registration = next.sip.registration;
        } else {
            let expected = match (round / 2) % 7 {
                0 => {
                    next.stt.model = dir.path().join("missing-model.bin");
                    "stt.model"
                }
                1 => {
                    next.llm.model = "no-such-model".into();
                    "llm.model"
                }
                2 => {
                    next.llm.url = "ftp://127.0.0.1/".into();
                    "llm.url"
                }
                3 => {
                    next.llm.url = format!("http://127.0.0.1:{}", callbot_testkit::ports::free_udp_port());
                    "llm.url"
                }
                4 => {
                    next.tts.rate = 5000;
                    "tts.rate"
                }
                5 if registrars.is_some() => {
                    next.sip.registration = registration_at(1 - registrar, "WRONG");
                    "sip.registration.password"
                }
                _ => {
                    next.stt.beam_size = 99;
                    "stt.beam_size"
                }
            };
            let e = bot.reconfigure(next).expect_err("invalid settings accepted");
            assert_eq!(e.field, expected, "round {round}: {e}");
            // The old components (and registration) still serve: a new call is answered
            // and greeted.
            let (uri, dest) = verify_route(registrar);
            let (c, i) = caller.call_via(&uri, dest);
            assert!(
                caller.hears_audio(i, Duration::from_secs(5)),
                "round {round}: no greeting after a rejected reconfigure"
            );
            caller.hang_up(c, i);
            verified_calls += 1;
        }
        assert!(bot.live_calls() >= 2, "round {round}: held calls lost");
        if round % 10 == 0 {
            println!("round {round}: RSS {} KB, threads {}", rss_kb(), threads());
        }
    }
    let took = started.elapsed();
    println!(
        "{rounds} reconfigurations (50 invalid, {whisper_reloads} Whisper reloads, {verified_calls} verification calls) in {took:?}"
    );
    if let Some(r) = &registrars {
        let unregistered = |k: &callbot_testkit::kamailio::Kamailio| {
            k.count(|e| matches!(e, callbot_testkit::kamailio::RegistrarEvent::Unregistered { .. }))
        };
        println!(
            "{} registration swaps (new binding accepted after, whole reconfiguration): {registration_swaps:?}; unregistered at A {}, at B {}",
            registration_swaps.len(),
            unregistered(&r[0]),
            unregistered(&r[1])
        );
        // Every swap away from a registrar removed its binding there.
        assert_eq!(
            unregistered(&r[0]) + unregistered(&r[1]),
            registration_swaps.len()
        );
        // Each new binding was accepted once (no retries, no refusals counted as bindings).
        assert_eq!(
            r[0].count(is_ok) + r[1].count(is_ok),
            1 + registration_swaps.len()
        );
    }

    // The held calls are still up, and still served: hang them up.
    for (c, i) in held.into_iter().rev() {
        caller.hang_up(c, i);
    }
    wait_for(Duration::from_secs(3), "calls reaped", || bot.live_calls() == 0);
    // A transcription cancelled by a hang-up may still be inside whisper.cpp's encoder
    // pass (it checks the abort flag only between passes), holding its worker for up to
    // a second or two on a loaded machine: wait (bounded) for the count to come back.
    wait_for(Duration::from_secs(10), "threads back to baseline", || {
        threads() == t_base
    });
    std::thread::sleep(Duration::from_millis(300));
    let rss_untrimmed = rss_kb();
    let (t, f, s, rss) = (threads(), fds(), sockets(), trimmed_rss_kb());
    println!(
        "baseline -> after: threads {t_base} -> {t}, fds {f_base} -> {f}, sockets {s_base} -> {s}, RSS (trimmed) {rss_base} -> {rss} KB ({:+} KB; {rss_untrimmed} KB before trimming)",
        rss - rss_base
    );
    assert_eq!(t, t_base, "threads back to baseline");
    assert_eq!(f, f_base, "fds back to baseline");
    assert_eq!(s, s_base, "sockets (UDP ports) back to baseline");
    // A leaked Whisper model is ~75 MB (tiny.en weights alone), a leaked LLM client or
    // call state would grow with the 50 rebuilds and 51 calls; measured growth is 5-7 MB
    // (glibc arenas of the 100+ threads that came and went, which malloc_trim does not
    // fully release). 16 MB catches one leaked model or ~300 KB per call or rebuild.
    assert!(rss - rss_base < 16 * 1024, "RSS grew {} KB", rss - rss_base);

    common::shut_down_clean(&mut bot, Duration::from_secs(3));
    llm.shutdown(Instant::now() + Duration::from_secs(1));
    caller.shutdown();
}
