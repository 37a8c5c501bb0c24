//! The whole bot on loopback with the real layers: Whisper tiny.en, espeak-ng, echo
//! mode (no Ollama reachable), the project's own SIP UAC and RTP session as the caller;
//! reconfiguration with real registrars (two Kamailio instances) at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use callbot::bot::REGISTRATION_TIMEOUT;
use callbot::components::RegistrationChange;
use callbot::settings::RegistrationSettings;
use callbot::testing::DialError;
use callbot::{Bot, Settings};
use callbot_audio::g711::Law;
use callbot_rtp::{RtpSession, RtpSessionConfig};
use callbot_sip::{CallId, EndReason, SipConfig, SipEvent, SipHandle, SipUserAgent};
use callbot_testkit::kamailio::{Kamailio, KamailioConfig, RegistrarEvent};

mod common;

use callbot_testkit::harness::wait_for;

use common::{LOOPBACK, turns};

fn settings(dir: &std::path::Path, model: std::path::PathBuf) -> Settings {
    let mut s = common::loopback_settings(model, 4);
    s.stt.threads = 2;
    s.dialogue.greeting = "Hello.".into();
    s.transcripts.dir = Some(dir.join("transcripts"));
    s
}

/// What a test of a spoken call needs: the Whisper model (and the `programs`), a temp
/// dir, and `text` spoken into an 8 kHz frame (see [`speech`]). `None` (skip) when any
/// is missing.
fn model_and_speech(
    programs: &[&str],
    text: &str,
) -> Option<(
    std::path::PathBuf,
    callbot_testkit::TempDir,
    callbot_audio::AudioFrame,
)> {
    let model = callbot_testkit::whisper_model_and(programs)?;
    let dir = callbot_testkit::temp_dir("callbot-bot");
    let audio = speech(text)?;
    Some((model, dir, audio))
}

/// espeak-ng (the program, en-us at 150 words a minute) speaks `text` into an 8 kHz frame.
fn speech(text: &str) -> Option<callbot_audio::AudioFrame> {
    use callbot_testkit::speech::{ESPEAK_RATE, espeak_with};
    let pcm = espeak_with(text, "en-us", 150)?;
    Some(
        callbot_audio::resample::resample_frame(&callbot_audio::AudioFrame::new(ESPEAK_RATE, pcm), 8000)
            .unwrap(),
    )
}

#[test]
fn heavy_bot_answers_a_real_call_in_echo_mode_and_shuts_down_cleanly() {
    let Some((model, dir, question)) = model_and_speech(&[], "What is the weather like today?") else {
        return;
    };

    let started = Instant::now();
    let mut bot = Bot::start(settings(dir.path(), model)).unwrap();
    println!("Bot::start took {:?}", started.elapsed());
    assert!(bot.echo_mode(), "no LLM on that port: echo mode");

    // The caller: our own UAC and an RTP session.
    let mut caller = SipUserAgent::start(SipConfig::new(SocketAddr::new(LOOPBACK, 0))).unwrap();
    let mut rtp = RtpSession::start(RtpSessionConfig::new(LOOPBACK, Law::Ulaw, None)).unwrap();
    let invite_at = Instant::now();
    let call = dial_bot(&caller, &rtp, &bot);
    println!("INVITE to answer: {:?}", invite_at.elapsed());
    wait_for(Duration::from_secs(2), "the bot's live call", || {
        bot.live_calls() == 1
    });

    // Let the greeting play, then ask.
    std::thread::sleep(Duration::from_millis(2500));
    rtp.play(question.clone()).unwrap();
    rtp.play(callbot_audio::AudioFrame::silence(8000, Duration::from_secs(1)))
        .unwrap();

    // Wait for the conversation turn in the transcript file.
    let t0 = Instant::now();
    let turn = loop {
        if let Some(t) = turns(dir.path())
            .into_iter()
            .find(|l| l["kind"] == "conversation")
        {
            break t;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no conversation turn: {:?}",
            turns(dir.path())
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("turn: {turn}");
    let user = turn["user"].as_str().unwrap().to_lowercase();
    assert!(user.contains("weather"), "heard: {user}");
    assert!(turn["bot"].as_str().unwrap().starts_with("You said:"));
    assert!(turn["timings"]["voice_to_voice"].as_f64().is_some());

    // The caller hangs up; the bot ends the call and frees it.
    caller.hang_up(call).unwrap();
    let t0 = Instant::now();
    wait_for(Duration::from_secs(3), "the call reaped", || {
        bot.live_calls() == 0
    });
    println!("caller BYE to call reaped: {:?}", t0.elapsed());

    let report = bot.shutdown(Instant::now() + Duration::from_secs(3));
    println!("{report:#?}");
    assert!(!report.already_shut_down);
    assert!(report.event_thread_joined);
    assert!(report.sip.as_ref().is_some_and(|s| s.thread_joined));
    assert!(report.components.all_clean(), "{report:?}");
    assert!(
        bot.shutdown(Instant::now() + Duration::from_secs(1))
            .already_shut_down
    );
    // The transcript ends with the summary line.
    let lines = turns(dir.path());
    assert_eq!(lines.last().unwrap()["type"], "summary");
    rtp.shutdown(Instant::now() + Duration::from_secs(1));
    caller.shutdown(Instant::now() + Duration::from_secs(1));
}

#[test]
fn heavy_bot_start_failure_names_the_setting_and_reconfigure_rolls_back() {
    let Some(model) = callbot_testkit::whisper_model() else {
        return;
    };
    let dir = callbot_testkit::temp_dir("callbot-bot");
    let mut bad = settings(dir.path(), "/nonexistent/model.bin".into());
    let e = Bot::start(bad.clone()).unwrap_err();
    assert!(e.to_string().contains("stt.model"), "{e}");

    bad.stt.model = model.clone();
    let mut bot = Bot::start(bad.clone()).unwrap();
    // invalid: a missing model; the old one keeps serving
    let mut next = bad.clone();
    next.stt.model = "/nonexistent/other.bin".into();
    let e = bot.reconfigure(next).unwrap_err();
    assert_eq!(e.field, "stt.model");
    // refused: SIP cannot change while running
    let mut next = bad.clone();
    next.sip.listen = SocketAddr::new(LOOPBACK, 1);
    assert_eq!(bot.reconfigure(next).unwrap_err().field, "sip.listen");
    // valid: new STT threads -> a new Whisper pool; dialogue changes apply to new calls
    let mut next = bad.clone();
    next.stt.threads = 1;
    next.dialogue.greeting = "Hi again.".into();
    let r = bot.reconfigure(next).unwrap();
    // The LLM too: in echo mode the server is probed again on every reconfiguration.
    assert_eq!(r.replaced, vec!["stt", "llm"]);
    assert_eq!(
        r.shut_down.len(),
        2,
        "old Whisper pool and echo LLM shut down at once (no live call)"
    );
    common::shut_down_clean(&mut bot, Duration::from_secs(3));
}

/// Shutdown with live calls: each caller gets BYE, every thread is joined, bounded.
#[test]
fn heavy_bot_shutdown_with_live_calls_sends_bye_to_each() {
    let Some(model) = callbot_testkit::whisper_model() else {
        return;
    };
    let dir = callbot_testkit::temp_dir("callbot-bot");
    let mut s = settings(dir.path(), model);
    s.dialogue.shutdown_phrase = "Bye.".into();
    let n = 3;
    let mut bot = Bot::start(s).unwrap();
    let mut caller = SipUserAgent::start(SipConfig::new(SocketAddr::new(LOOPBACK, 0))).unwrap();
    let mut sessions = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..n {
        let rtp = RtpSession::start(RtpSessionConfig::new(LOOPBACK, Law::Ulaw, None)).unwrap();
        calls.push(dial_bot(&caller, &rtp, &bot));
        sessions.push(rtp);
    }
    wait_for(Duration::from_secs(2), "the live calls", || bot.live_calls() >= n);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let report = bot.shutdown(Instant::now() + Duration::from_millis(500));
    let took = started.elapsed();
    println!("shutdown with {n} live calls: {took:?}\n{report:#?}");
    assert_eq!(report.live_calls, n);
    assert_eq!(report.calls_ended, n);
    assert_eq!(report.calls_abandoned, 0);
    assert!(report.event_thread_joined);
    assert!(report.components.all_clean());
    assert!(
        took < Duration::from_millis(800),
        "bounded by the deadline: {took:?}"
    );
    // every caller got BYE from the bot
    let mut byes = 0;
    let t0 = Instant::now();
    while byes < n && t0.elapsed() < Duration::from_secs(3) {
        if let Ok(SipEvent::CallEnded { reason, .. }) =
            caller.events().recv_timeout(Duration::from_millis(200))
        {
            assert_eq!(reason, callbot_sip::EndReason::RemoteHangup);
            byes += 1;
        }
    }
    assert_eq!(byes, n, "every call got BYE");
    for mut rtp in sessions {
        rtp.shutdown(Instant::now() + Duration::from_secs(1));
    }
    caller.shutdown(Instant::now() + Duration::from_secs(1));
}

/// Barge-in on a real call: the caller speaks over the bot's greeting; measures the
/// delay from the caller's speech onset to the last loud bot frame the caller receives
/// (it includes the caller's own jitter buffer, so it over-estimates).
#[test]
fn heavy_bot_barge_in_stops_the_greeting() {
    let Some((model, dir, question)) = model_and_speech(&[], "Sorry to interrupt, what time is it?") else {
        return;
    };
    let onset_offset = question
        .samples
        .iter()
        .position(|s| s.unsigned_abs() > 1000)
        .map_or(Duration::ZERO, |i| Duration::from_secs_f64(i as f64 / 8000.0));
    let mut s = settings(dir.path(), model);
    s.dialogue.greeting = "Hello, this is the call bot. I can answer your questions about almost anything you like, so please go ahead and ask me whatever you want to know.".into();
    let mut bot = Bot::start(s).unwrap();
    let mut caller = SipUserAgent::start(SipConfig::new(SocketAddr::new(LOOPBACK, 0))).unwrap();
    let mut rtp = RtpSession::start(RtpSessionConfig::new(LOOPBACK, Law::Ulaw, None)).unwrap();
    let call = dial_bot(&caller, &rtp, &bot);
    let loud = |f: &callbot_rtp::ReceivedFrame| f.audio.samples.iter().any(|s| s.unsigned_abs() > 500);
    // wait for 1 s of greeting
    let mut loud_frames = 0;
    let t0 = Instant::now();
    while loud_frames < 50 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no greeting heard");
        if let Ok(f) = rtp.frames().recv_timeout(Duration::from_millis(100))
            && loud(&f)
        {
            loud_frames += 1;
        }
    }
    rtp.play(question).unwrap();
    let onset = Instant::now() + onset_offset;
    let mut last_loud = onset;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        if let Ok(f) = rtp.frames().recv_timeout(Duration::from_millis(100))
            && loud(&f)
        {
            last_loud = Instant::now();
        }
    }
    let delay = last_loud.saturating_duration_since(onset);
    println!("barge-in: caller speech onset to last loud bot frame received: {delay:?}");
    assert!(
        delay < Duration::from_secs(1),
        "the greeting was not stopped: {delay:?}"
    );
    caller.hang_up(call).unwrap();
    common::shut_down_clean(&mut bot, Duration::from_secs(2));
    common::assert_greeting_interrupted(&turns(dir.path()));
    rtp.shutdown(Instant::now() + Duration::from_secs(1));
    caller.shutdown(Instant::now() + Duration::from_secs(1));
}

/// Reconfiguration during a live call, alternating valid and invalid settings: every
/// invalid one is refused with the old components still serving, the live call keeps
/// its components, and after the call ends everything retired is shut down and the
/// thread count is back to where it was.
#[test]
fn heavy_bot_reconfigure_during_a_live_call_alternating_valid_and_invalid() {
    let Some(model) = callbot_testkit::whisper_model() else {
        return;
    };
    let dir = callbot_testkit::temp_dir("callbot-bot");
    let base = settings(dir.path(), model);
    let mut bot = Bot::start(base.clone()).unwrap();
    let mut caller = SipUserAgent::start(SipConfig::new(SocketAddr::new(LOOPBACK, 0))).unwrap();
    let mut rtp = RtpSession::start(RtpSessionConfig::new(LOOPBACK, Law::Ulaw, None)).unwrap();
    // bot idle + the caller's own SIP and RTP threads
    let idle_threads = callbot_testkit::resources::threads();
    let call = dial_bot(&caller, &rtp, &bot);
    let cycles = 20;
    let started = Instant::now();
    for i in 0..cycles {
        let mut next = base.clone();
        if i % 2 == 0 {
            next.stt.threads = 1 + (i / 2) % 2;
            next.dialogue.greeting = format!("Greeting {i}.");
            bot.reconfigure(next).unwrap();
        } else {
            next.stt.model = "/nonexistent/model.bin".into();
            let e = bot.reconfigure(next).unwrap_err();
            assert_eq!(e.field, "stt.model");
        }
        assert_eq!(bot.live_calls(), 1, "the live call survives cycle {i}");
    }
    println!(
        "{cycles} reconfigurations (half invalid) during a live call: {:?}",
        started.elapsed()
    );
    // The call still works end to end: hang up, it is reaped.
    caller.hang_up(call).unwrap();
    wait_for(Duration::from_secs(3), "the call reaped", || {
        bot.live_calls() == 0
    });
    // The Whisper pool the call held is shut down once it ended.
    std::thread::sleep(Duration::from_millis(300));
    let now = callbot_testkit::resources::threads();
    println!("threads: idle {idle_threads}, after {cycles} reconfigurations and the call {now}");
    assert!(
        now <= idle_threads + 1,
        "threads back to baseline: {idle_threads} -> {now}"
    );
    common::shut_down_clean(&mut bot, Duration::from_secs(3));
    rtp.shutdown(Instant::now() + Duration::from_secs(1));
    caller.shutdown(Instant::now() + Duration::from_secs(1));
}

/// Voice-to-voice with the real layers and a local Ollama-protocol server answering in
/// 100 ms: several turns on one call; prints p50/p95 of each stage from the transcript.
#[test]
fn heavy_bot_voice_to_voice_with_a_100ms_llm() {
    let Some((model, dir, question)) = model_and_speech(&[], "What is the capital of France?") else {
        return;
    };
    let mut script = callbot_testkit::ollama::Script::reply("Paris is the capital of France.");
    script.first_token_delay = Duration::from_millis(100);
    let mut llm = callbot_testkit::ollama::OllamaServer::start(script).unwrap();
    let mut s = settings(dir.path(), model);
    s.llm.url = llm.url();
    s.llm.model = "test-model".into();
    let mut bot = Bot::start(s).unwrap();
    assert!(!bot.echo_mode());
    let mut caller = SipUserAgent::start(SipConfig::new(SocketAddr::new(LOOPBACK, 0))).unwrap();
    let mut rtp = RtpSession::start(RtpSessionConfig::new(LOOPBACK, Law::Ulaw, None)).unwrap();
    let call = dial_bot(&caller, &rtp, &bot);
    std::thread::sleep(Duration::from_millis(2000));
    let n = 3;
    for i in 1..=n {
        rtp.play(question.clone()).unwrap();
        wait_for(Duration::from_secs(40), &format!("turn {i}"), || {
            let done = turns(dir.path())
                .iter()
                .filter(|l| l["kind"] == "conversation")
                .count();
            done >= i
        });
        // let the reply finish playing (about 2 s)
        std::thread::sleep(Duration::from_millis(2500));
    }
    caller.hang_up(call).unwrap();
    let lines = turns(dir.path());
    let convo: Vec<&serde_json::Value> = lines.iter().filter(|l| l["kind"] == "conversation").collect();
    for l in &convo {
        assert_eq!(l["bot"], "Paris is the capital of France.", "{l}");
    }
    let stat = |key: &str| {
        let mut v: Vec<f64> = convo.iter().filter_map(|l| l["timings"][key].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        println!(
            "{key:>20}: p50 {:7.0} ms  p95 {:7.0} ms  (n={})",
            at(0.5),
            at(0.95),
            v.len()
        );
    };
    for key in [
        "endpoint",
        "stt",
        "llm_first_token",
        "tts_first_audio",
        "voice_to_voice",
    ] {
        stat(key);
    }
    println!("heard: {}", convo[0]["user"]);
    common::shut_down_clean(&mut bot, Duration::from_secs(2));
    llm.shutdown(Instant::now() + Duration::from_secs(1));
    rtp.shutdown(Instant::now() + Duration::from_secs(1));
    caller.shutdown(Instant::now() + Duration::from_secs(1));
}

/// 20 concurrent calls from SIPp with RTP (espeak-ng speech looped): none fails, all
/// are reaped, and the bot's threads are back to their idle count.
#[test]
fn heavy_bot_takes_20_concurrent_sipp_calls_with_rtp() {
    let Some((model, dir, audio)) =
        model_and_speech(&["sipp"], "Hello, I would like to know the opening hours.")
    else {
        return;
    };
    let wav = dir.path().join("caller8k.wav");
    callbot_audio::wav::write_wav(&wav, &audio).unwrap();
    let n = 20;
    let mut s = settings(dir.path(), model);
    s.dialogue.max_calls = n as usize;
    let base = callbot_testkit::ports::free_udp_port_range(2 * n as u16 + 2);
    s.media.rtp_port_min = base;
    s.media.rtp_port_max = base + 2 * n as u16 + 1;
    let mut bot = Bot::start(s).unwrap();
    let idle = callbot_testkit::resources::threads();
    let mut rss = Vec::new();
    let mut fds = Vec::new();
    for batch in 1..=3 {
        let stats = callbot_testkit::sipp::SippUac::new(bot.sip_addr(), n, 20.0)
            .media(callbot_testkit::sipp::UacMedia::Rtp { audio: wav.clone() })
            .hold(Duration::from_secs(4))
            .max_concurrent(n)
            .run()
            .unwrap();
        println!(
            "SIPp batch {batch}: {} calls, {} successful, {} failed, wall {:?}",
            stats.created, stats.successful, stats.failed, stats.wall_time
        );
        assert_eq!(stats.failed, 0, "{}", stats.errors);
        assert_eq!(stats.successful, u64::from(n));
        wait_for(Duration::from_secs(5), "the calls reaped", || {
            bot.live_calls() == 0
        });
        // A transcription cancelled when its call ended (speculative ones start at
        // every pause) may still be aborting in the Whisper worker, with whisper.cpp's
        // compute thread: allow it the STT abort bound to finish.
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_millis(200));
        while callbot_testkit::resources::threads() != idle && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        println!("batch {batch}: threads back to idle after {:?}", t0.elapsed());
        let names: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|n| n.trim().to_string())
            .collect();
        assert_eq!(
            callbot_testkit::resources::threads(),
            idle,
            "threads back to idle after batch {batch}: {names:?}"
        );
        rss.push(callbot_testkit::resources::rss_kib());
        fds.push(callbot_testkit::resources::open_fds());
    }
    println!(
        "RSS after each batch: {rss:?} KB ({:+.1} KB per call from batch 2 to 3); fds {fds:?}",
        (rss[2] as f64 - rss[1] as f64) / f64::from(n),
    );
    assert!(
        fds.iter().all(|f| *f == fds[0]),
        "file descriptors back to the same count"
    );
    common::shut_down_clean(&mut bot, Duration::from_secs(3));
}

// ------------------------------------------------------------ reconfiguration
//
// A changed registration is registered at its registrar before the swap (two Kamailio
// registrars), a refused or unanswered one changes nothing and names the field while
// calls keep being routed to the bot; `dialogue.max_calls` applies live; a slow build
// (an LLM server that accepts the connection and never answers) does not hold up new
// calls; echo mode is re-evaluated; `sip.listen` is refused.

const USER: &str = "callbot";
const PASSWORD: &str = "s3cret-pw";

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
        let offer = self.rtp.local_addr().unwrap();
        match callbot::testing::place_call(&self.ua, uri, dest, offer, Duration::from_secs(10), |_| {}) {
            Ok((call, _)) => Outcome::Answered(call, t0.elapsed()),
            Err(DialError::Ended(EndReason::Refused { code, .. })) => Outcome::Refused(code),
            Err(DialError::Ended(reason)) => Outcome::Failed(reason.to_string()),
            Err(e) => Outcome::Failed(format!("no outcome: {e}")),
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
        callbot::testing::hang_up(&self.ua, call, Duration::from_secs(5), |_| {})
            .unwrap_or_else(|e| panic!("{call}: {e}"));
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
    let Some(model) = callbot_testkit::whisper_model_and(&["kamailio"]) else {
        return;
    };
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

    // 1. Wrong password at B, with a new Whisper pool built for the same attempt:
    //    refused, the new pool shut down again, nothing changes.
    wait_for(Duration::from_secs(3), "the first call reaped", || {
        bot.live_calls() == 0
    });
    std::thread::sleep(Duration::from_millis(200));
    let threads_before = callbot_testkit::resources::threads();
    let mut next = s.clone();
    next.sip.registration = Some(registration(&b, "WRONG"));
    next.stt.threads = 2;
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
    assert_eq!(
        callbot_testkit::resources::threads(),
        threads_before,
        "the Whisper pool built for the refused attempt is gone"
    );
    let c = caller.answered(&a.user_uri(USER), a.addr());
    caller.hang_up(c);
    assert!(matches!(via_b(), Outcome::Refused(404)));
    // A component that fails to build: the registration is not even tried.
    let mut broken = s.clone();
    broken.sip.registration = Some(registration(&b, PASSWORD));
    broken.stt.model = dir.path().join("missing.bin");
    assert_eq!(bot.reconfigure(broken).unwrap_err().field, "stt.model");
    assert_eq!(count(&b, reg_ok), 0, "no REGISTER for a failed reconfiguration");
    next.stt.threads = s.stt.threads;

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
    wait_for(Duration::from_secs(3), "the held call", || bot.live_calls() == 1);
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
    wait_for(Duration::from_secs(3), "B's binding in its log", || {
        count(&b, reg_ok) == 1
    });
    assert!(
        a.wait_event(Duration::from_secs(3), unregistered).is_some(),
        "{}",
        a.log()
    );
    assert!(matches!(via_a(), Outcome::Refused(404)), "A's binding is gone");
    let c = caller.answered(&b.user_uri(USER), b.addr());
    // The bot counts a call once its thread runs, just after the 200.
    wait_for(
        Duration::from_secs(3),
        "the call through A still up beside the new one",
        || bot.live_calls() == 2,
    );
    caller.hang_up(c);
    caller.hang_up(held);
    wait_for(Duration::from_secs(3), "calls reaped", || bot.live_calls() == 0);

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
    // Kamailio logs the binding just after its 200 OK: wait for the line.
    wait_for(Duration::from_secs(3), "A's second binding in its log", || {
        count(&a, reg_ok) == 2
    });
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
    wait_for(Duration::from_secs(3), "1 live call", || bot.live_calls() == 1);
    match caller.call(&uri, bot.sip_addr()) {
        Outcome::Refused(486) => {}
        other => panic!("over max_calls: {other:?}"),
    }
    next.dialogue.max_calls = 2;
    bot.reconfigure(next.clone()).unwrap();
    let c2 = caller.answered(&uri, bot.sip_addr());
    caller.hang_up(c1);
    caller.hang_up(c2);
    wait_for(Duration::from_secs(3), "calls reaped", || bot.live_calls() == 0);

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

    common::shut_down_clean(&mut bot, Duration::from_secs(3));
    llm.shutdown(Instant::now() + Duration::from_secs(1));
}

/// Calls `bot` from `caller`, waits for the answer and points `rtp` at the bot's media;
/// panics if any call ends meanwhile.
fn dial_bot(caller: &callbot_sip::SipHandle, rtp: &RtpSession, bot: &Bot) -> callbot_sip::CallId {
    common::dial(
        caller,
        rtp,
        &format!("sip:bot@{}", bot.sip_addr()),
        bot.sip_addr(),
    )
}
