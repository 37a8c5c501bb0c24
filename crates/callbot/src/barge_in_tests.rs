//! Barge-in latency measured at the bot's side: a real [`RtpSession`] for the bot, the
//! real VAD endpointer, instant fake STT/LLM/TTS, and a caller that is a bare UDP
//! socket (no jitter buffer of its own): it sends espeak-ng speech as 20 ms PCMU
//! packets over the bot's greeting and timestamps every bot packet on arrival. The
//! figure is from the send time of the caller's first speech packet (loopback: its
//! arrival at the bot) to the arrival of the last loud bot packet.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use callbot_audio::g711::Law;
use callbot_rtp::{RtpSession, RtpSessionConfig};

use crate::bot::VadEndpointer;
use crate::call::{CallSetup, run_call};
use crate::dialogue::{DialogueConfig, TurnKind};
use crate::testing::instant_call_setup;

/// One call: greeting playing, the caller speaks over it after 1 s. Returns (the
/// measured onset-to-last-bot-packet delay, the bot's own `barge_in_stop` figure).
fn barge_in_once(
    speech: &[i16],
    jitter: callbot_rtp::JitterConfig,
    barge_in_min_speech: Duration,
) -> (Duration, Option<Duration>) {
    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    caller.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
    let caller_addr = caller.local_addr().unwrap();
    let mut cfg = RtpSessionConfig::new("127.0.0.1".parse().unwrap(), Law::Ulaw, Some(caller_addr));
    cfg.media.jitter = jitter;
    let mut session = RtpSession::start(cfg).unwrap();
    let bot_addr: SocketAddr = session.local_addr();
    let (turn_tx, turns) = crossbeam_channel::bounded(16);
    let (control, control_rx) = crossbeam_channel::bounded(4);
    let dialogue = DialogueConfig {
        // InstantSynth: 10 ms of audio per character: about 6 s.
        greeting: "Hello, this is the call bot speaking at length. ".repeat(12),
        ..DialogueConfig::default()
    };
    let setup = CallSetup {
        turn_observer: Some(turn_tx),
        ..instant_call_setup("barge-in", dialogue, &["hello"], "Hi.")
    };
    let vad = VadEndpointer::new(8000, crate::Settings::default().vad_config())
        .unwrap()
        .with_barge_in_min_speech(barge_in_min_speech);
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let thread = std::thread::Builder::new()
        .name("barge-in-call".into())
        .spawn(move || {
            let out = run_call(setup, &session, vad, &control_rx);
            let _ = done_tx.send(());
            session.shutdown(Instant::now() + Duration::from_secs(1));
            out
        })
        .unwrap();

    // 1 s of silence then the speech, then silence; packets paced at 20 ms.
    let mut audio = vec![0i16; 8000];
    let onset_sample = audio.len() + callbot_testkit::speech::speech_bounds(speech).start;
    audio.extend_from_slice(speech);
    audio.extend(std::iter::repeat_n(0i16, 8000));
    let start = Instant::now();
    let mut onset_sent = None;
    let mut last_loud = None;
    let mut buf = [0u8; 2048];
    let mut pcm = Vec::new();
    for (i, chunk) in audio.chunks(160).enumerate() {
        let due = start + Duration::from_millis(20 * i as u64);
        while Instant::now() < due {
            if let Ok((n, _)) = caller.recv_from(&mut buf) {
                pcm.clear();
                Law::Ulaw.decode_into(buf.get(12..n).unwrap_or_default(), &mut pcm);
                let now = Instant::now();
                // The greeting's last packet: the bot's reply to the interruption comes
                // after a gap (endpoint, fakes), which freezes the figure.
                let frozen = matches!((onset_sent, last_loud), (Some(o), Some(l))
                    if l > o && now.saturating_duration_since(l) > Duration::from_millis(300));
                if pcm.iter().any(|s| s.unsigned_abs() > 50) && !frozen {
                    last_loud = Some(now);
                }
            }
        }
        let mut pkt = vec![0x80u8, 0];
        pkt.extend_from_slice(&(i as u16).to_be_bytes());
        pkt.extend_from_slice(&((i * 160) as u32).to_be_bytes());
        pkt.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        Law::Ulaw.encode_into(chunk, &mut pkt);
        caller.send_to(&pkt, bot_addr).unwrap();
        if onset_sent.is_none() && (i + 1) * 160 > onset_sample {
            // The onset sample's offset within this packet.
            let within = onset_sample.saturating_sub(i * 160) as f64 / 8000.0;
            onset_sent = Some(Instant::now() + Duration::from_secs_f64(within));
        }
    }
    let greeting = turns
        .try_iter()
        .find(|r| r.kind == TurnKind::Greeting)
        .expect("the greeting turn (interrupted)");
    assert!(greeting.interrupted, "{greeting:?}");
    let _ = control.send(crate::call::CallControl::CallerHungUp);
    done.recv_timeout(Duration::from_secs(3)).unwrap();
    thread.join().unwrap();
    let onset = onset_sent.unwrap();
    let last = last_loud.expect("the greeting was heard");
    (
        last.saturating_duration_since(onset),
        greeting.timings.barge_in_stop,
    )
}

#[test]
fn heavy_barge_in_latency_at_the_bot_side() {
    let Some(pcm) = callbot_testkit::speech::espeak("Sorry to interrupt, what time is it?", "en-us") else {
        return;
    };
    let speech = callbot_testkit::speech::telephone_8k(&pcm, None);
    let s = crate::Settings::default();
    // Before: one min_speech for everything, the RTP default 60 ms jitter buffer.
    let (normal, old_jitter) = (s.vad_config().min_speech, callbot_rtp::JitterConfig::default());
    // After: the settings' defaults.
    let (short, jitter) = (s.barge_in_min_speech(), s.jitter_config());
    let mut before = Vec::new();
    let mut after = Vec::new();
    for _ in 0..3 {
        before.push(barge_in_once(&speech, old_jitter, normal));
        after.push(barge_in_once(&speech, jitter, short));
    }
    println!(
        "barge-in, speech onset -> last bot packet (bot side), jitter {:?}, min_speech {normal:?}: {before:?}",
        old_jitter.depth
    );
    println!(
        "barge-in, speech onset -> last bot packet (bot side), jitter {:?} (adaptive from {:?}), min_speech {short:?}: {after:?}",
        jitter.depth,
        jitter.adaptive.map(|a| a.min_depth)
    );
    let median = |v: &mut Vec<(Duration, Option<Duration>)>| {
        v.sort();
        v[v.len() / 2]
    };
    let (b, b_own) = median(&mut before);
    let (a, a_own) = median(&mut after);
    println!("median: {b:?} -> {a:?} (the bot's own barge_in_stop figure: {b_own:?} -> {a_own:?})");
    assert!(a_own.is_some() && b_own.is_some(), "barge_in_stop recorded");
    // Generous bounds (noisy machine); the real figures are printed above.
    assert!(a < Duration::from_millis(400), "{a:?}");
    assert!(
        a < b,
        "a shorter barge-in min_speech stops sooner: {a:?} vs {b:?}"
    );
}
