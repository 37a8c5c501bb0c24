//! Voice-to-voice latency of the real pipeline, with and without speculative
//! transcription.
//!
//! Starts a [`callbot::Bot`] on loopback with the real layers (Whisper tiny.en from
//! `callbot_testkit::whisper_model()`, espeak-ng) and a local Ollama-protocol server
//! (`callbot_testkit::ollama::OllamaServer`) whose first token comes after 100 ms.
//! The caller is the project's own SIP UAC (`callbot-sip`) with an `RtpSession`: it
//! speaks the testkit's espeak-ng sentences (8 kHz, G.711) one turn at a time and
//! measures, per turn, from the end of its speech to the first reply packet it
//! receives with a loud sample (its jitter buffer, 20 ms, adaptive, is included).
//! The end of its speech is measured on the wire: a UDP relay between the two RTP
//! sessions timestamps every packet both ways, and the reference is the moment the
//! packet carrying the last speech sample left the caller (the relay's forwarding,
//! microseconds, falls after it, so it can only add). The bot's own per-turn figure
//! (end of the caller's voice to the first reply audio queued for sending, from its
//! transcript) is printed beside it, with a breakdown of the difference: the
//! reply's first packets on the wire, the caller's jitter buffer, and the bot's VAD
//! run offline over the same frames. `--jitter-min MS` sets the bot's
//! `media.jitter_buffer_min_ms` (40: the fixed buffer of before).
//!
//! With speculation on, the turn ends early when the speculative transcript reads as
//! a finished sentence (`dialogue.early_end_of_turn`); `--early-end off` measures the
//! speculation alone (the full endpoint hangover every turn).
//!
//! ```text
//! cargo run --release -p callbot-examples --example voice_latency -- [--turns 10] [--mode both|on|off]
//!     [--early-end on|off] [--speculation-delay SECS] [--early-min-silence SECS] [--hangover SECS]
//!     [--jitter-min MS]
//! ```
//! Needs `CALLBOT_WHISPER_MODEL` (or `cargo xtask model`) and espeak-ng. The machine's
//! load average is printed before and after each mode (the figures depend on it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use callbot::call::{EndpointEvent, Endpointer};
use callbot::{Bot, Settings};
use callbot_audio::AudioFrame;
use callbot_audio::g711::Law;
use callbot_rtp::packet::{Classified, classify};
use callbot_rtp::{RtpSession, RtpSessionConfig};
use callbot_sip::{SipConfig, SipUserAgent};
use callbot_testkit::speech;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The caller's jitter buffer: 20 ms, adaptive up to [`CALLER_JITTER_MAX`] when its
/// packets come late, shedding that growth again in the bot's silence. A fixed 20 ms
/// buffer keeps every stall's growth for the rest of the call (under load 8 it reached
/// 100 ms within the first turn, all of it added to every later turn's figure); on a
/// quiet machine the two are the same.
const CALLER_JITTER: Duration = Duration::from_millis(20);
const CALLER_JITTER_MAX: Duration = Duration::from_millis(100);

fn main() -> std::process::ExitCode {
    callbot_examples::run_main("voice_latency", run)
}

struct Utterance {
    text: &'static str,
    audio: AudioFrame,
    /// Where the speech ends in `audio`.
    speech_end: Duration,
    /// The sample after the last speech sample.
    speech_end_sample: usize,
}

fn utterances() -> Result<Vec<Utterance>, String> {
    let mut out = Vec::new();
    for s in speech::SENTENCES {
        let pcm = speech::espeak(s.text, s.voice).ok_or("espeak-ng is not installed")?;
        let pcm8 = speech::telephone_8k(&pcm, None);
        let bounds = speech::speech_bounds(&pcm8);
        out.push(Utterance {
            text: s.text,
            speech_end: Duration::from_secs_f64(bounds.end as f64 / 8000.0),
            speech_end_sample: bounds.end,
            audio: AudioFrame::new(8000, pcm8),
        });
    }
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

fn stats(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "  {name:<44} p50 {:7.0} ms   p95 {:7.0} ms   (n={})",
        percentile(&v, 0.5),
        percentile(&v, 0.95),
        v.len()
    );
}

fn loud(f: &callbot_rtp::ReceivedFrame) -> bool {
    f.audio.samples.iter().any(|s| s.unsigned_abs() > 300)
}

/// Loudness the caller takes for the reply (largest sample magnitude of a frame).
const LOUD: u16 = 300;
/// A frame with a larger magnitude than this carries sound (not digital silence).
const SOUND: u16 = 8;

/// One RTP audio packet as the wire relay saw it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// When the relay received it (loopback: when it left its sender).
    at: Instant,
    seq: u16,
    marker: bool,
    /// Largest decoded sample magnitude of the payload.
    peak: u16,
}

/// Packets the relay saw, per direction, and its own forwarding time.
#[derive(Default)]
struct WireLog {
    /// Caller -> bot.
    up: Vec<Seen>,
    /// Bot -> caller.
    down: Vec<Seen>,
    /// Microseconds from receive to forward, per packet.
    forward_us: Vec<u32>,
}

/// A UDP relay between the caller's RTP session and the bot's: it timestamps every
/// RTP packet in both directions where it crosses the wire, so the caller's reference
/// is the moment its last speech packet left (not an estimate), and the reply is
/// seen on the wire before the caller's jitter buffer. Costs one loopback hop per
/// packet (its forwarding time is printed).
struct Relay {
    /// The caller sends here (and gets the bot's packets from here).
    caller_side: SocketAddr,
    /// The bot sends here (the address in the caller's SDP).
    bot_side: SocketAddr,
    bot: Arc<Mutex<Option<SocketAddr>>>,
    log: Arc<Mutex<WireLog>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    _rtcp_sinks: [UdpSocket; 2],
}

fn peak_of(payload: &[u8]) -> u16 {
    payload
        .iter()
        .map(|&c| Law::Ulaw.decode(c).unsigned_abs())
        .max()
        .unwrap_or(0)
}

impl Relay {
    fn start() -> Result<Relay, String> {
        // RTP on base and base + 2; RTCP (sent to RTP port + 1) lands on the two
        // sockets between, held open and never read.
        let base = callbot_testkit::ports::free_udp_port_range(4);
        let bind = |i: u16| UdpSocket::bind(SocketAddr::new(LOOPBACK, base + i)).map_err(|e| e.to_string());
        let (a, b) = (bind(0)?, bind(2)?);
        let rtcp_sinks = [bind(1)?, bind(3)?];
        let caller_side = a.local_addr().map_err(|e| e.to_string())?;
        let bot_side = b.local_addr().map_err(|e| e.to_string())?;
        let caller: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let bot: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let log: Arc<Mutex<WireLog>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        // (receive on, send from, learn the sender into, forward to, caller -> bot?)
        let legs = [
            (&a, &b, caller.clone(), bot.clone(), true),
            (&b, &a, bot.clone(), caller.clone(), false),
        ];
        for (rx, tx, learn, to, up) in legs {
            let rx = rx.try_clone().map_err(|e| e.to_string())?;
            let tx = tx.try_clone().map_err(|e| e.to_string())?;
            rx.set_read_timeout(Some(Duration::from_millis(20)))
                .map_err(|e| e.to_string())?;
            let (log, stop) = (log.clone(), stop.clone());
            let name = if up { "relay-up" } else { "relay-down" };
            let t = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let mut buf = [0u8; 2048];
                    while !stop.load(Ordering::SeqCst) {
                        let Ok((n, from)) = rx.recv_from(&mut buf) else {
                            continue;
                        };
                        let at = Instant::now();
                        let data = buf.get(..n).unwrap_or_default();
                        if up {
                            *learn.lock().unwrap_or_else(|e| e.into_inner()) = Some(from);
                        }
                        let dest = *to.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(dest) = dest {
                            let _ = tx.send_to(data, dest);
                        }
                        let forward = at.elapsed().as_micros() as u32;
                        if let Classified::Rtp(p) = classify(data)
                            && p.payload_type == Law::Ulaw.payload_type()
                        {
                            let seen = Seen {
                                at,
                                seq: p.sequence,
                                marker: p.marker,
                                peak: peak_of(&p.payload),
                            };
                            let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                            if up {
                                l.up.push(seen)
                            } else {
                                l.down.push(seen)
                            }
                            l.forward_us.push(forward);
                        }
                    }
                })
                .map_err(|e| e.to_string())?;
            threads.push(t);
        }
        Ok(Relay {
            caller_side,
            bot_side,
            bot,
            log,
            stop,
            threads,
            _rtcp_sinks: rtcp_sinks,
        })
    }

    fn set_bot(&self, addr: SocketAddr) {
        *self.bot.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
    }

    fn log(&self) -> std::sync::MutexGuard<'_, WireLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join(); // each wakes within its 20 ms read timeout
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One turn as seen on the wire.
#[derive(Debug, Clone, Copy)]
struct WireTurn {
    /// The caller's packet carrying its last speech sample left the caller.
    speech_end: Instant,
    /// First bot packet after that with any sound in it.
    reply_sound: Option<Instant>,
    /// First bot packet after that with a loud sample (what the caller detects).
    reply_loud: Option<Instant>,
}

/// Finds the turn whose playback started after `played_at`: the caller's first marked
/// packet since then starts the talkspurt; the packet `speech_end / 20 ms` after it
/// carries the last speech sample.
fn wire_turn(log: &WireLog, played_at: Instant, speech_end_sample: usize) -> Option<WireTurn> {
    let start = log.up.iter().find(|s| s.at >= played_at && s.marker)?;
    let seq = start
        .seq
        .wrapping_add(u16::try_from(speech_end_sample.saturating_sub(1) / 160).ok()?);
    let end = log.up.iter().find(|s| s.at >= start.at && s.seq == seq)?;
    let after = |min: u16| {
        log.down
            .iter()
            .find(|s| s.at > end.at && s.peak > min)
            .map(|s| s.at)
    };
    Some(WireTurn {
        speech_end: end.at,
        reply_sound: after(SOUND),
        reply_loud: after(LOUD),
    })
}

/// The phase of the bot's 20 ms send clock after the caller's (0..20 ms): circular
/// mean of the packets' arrival times modulo 20 ms in each direction.
fn clock_phase(log: &WireLog, origin: Instant) -> Option<f64> {
    // (phase in ms, concentration 0..1: 1 when every packet keeps the same phase)
    let mean = |v: &[Seen]| -> Option<(f64, f64)> {
        let (mut x, mut y, mut n) = (0.0f64, 0.0f64, 0.0f64);
        for s in v.iter().filter(|s| s.at >= origin) {
            let ms = s.at.duration_since(origin).as_secs_f64() * 1000.0;
            let a = ms / 20.0 * std::f64::consts::TAU;
            x += a.cos();
            y += a.sin();
            n += 1.0;
        }
        (n > 0.0).then(|| (y.atan2(x) / std::f64::consts::TAU * 20.0, x.hypot(y) / n))
    };
    let (up, down) = (mean(&log.up)?, mean(&log.down)?);
    println!(
        "    send clocks on the wire: caller at {:.1} ms (concentration {:.2}), bot at {:.1} ms (concentration {:.2}) of each 20 ms",
        up.0.rem_euclid(20.0),
        up.1,
        down.0.rem_euclid(20.0),
        down.1
    );
    Some((down.0 - up.0).rem_euclid(20.0))
}

/// Runs the bot's VAD endpointer (as the bot configures it) over one utterance,
/// G.711 round trip, 20 ms frames, 1 s of silence before it: returns (frames from the
/// frame holding the last speech sample to the frame on which the pause was noticed,
/// how much later than that last speech frame's arrival the pause notice dates the
/// end of voice), both in ms.
fn vad_pause(u: &Utterance, settings: &Settings) -> Option<(f64, f64)> {
    let mut vad = callbot::bot::VadEndpointer::new(8000, settings.vad_config()).ok()?;
    let pre = 8000;
    let mut audio = vec![0i16; pre];
    let mut codes = Vec::new();
    Law::Ulaw.encode_into(&u.audio.samples, &mut codes);
    Law::Ulaw.decode_into(&codes, &mut audio);
    audio.resize(audio.len() + 16000, 0);
    let last = ((pre + u.speech_end_sample.saturating_sub(1)) / 160) as f64;
    let mut paused = None;
    for (i, frame) in audio.chunks(160).enumerate() {
        match vad.push(&AudioFrame::new(8000, frame.to_vec())) {
            EndpointEvent::SpeechPaused { silence } => paused = Some((i as f64, silence)),
            EndpointEvent::SpeechResumed | EndpointEvent::SpeechStarted { .. } => paused = None,
            EndpointEvent::SpeechEnded { .. } => break,
            EndpointEvent::None => {}
        }
    }
    let (i, silence) = paused?;
    let notice = (i - last) * 20.0;
    Some((notice, notice - silence.as_secs_f64() * 1000.0))
}

/// Receives frames until `quiet` passes without a loud one (or `limit`).
fn wait_quiet(rtp: &RtpSession, quiet: Duration, limit: Duration) {
    let t0 = Instant::now();
    let mut last = Instant::now();
    while t0.elapsed() < limit && last.elapsed() < quiet {
        if let Ok(f) = rtp.frames().recv_timeout(Duration::from_millis(50))
            && loud(&f)
        {
            last = Instant::now();
        }
    }
}

/// The dialogue settings a run varies.
#[derive(Debug, Clone, Copy)]
struct Variant {
    speculative: bool,
    early_end: Option<bool>,
    speculation_delay: Option<f64>,
    early_min_silence: Option<f64>,
    hangover: Option<f64>,
    jitter_min_ms: Option<u32>,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// What one mode measured, per turn (ms).
#[derive(Default)]
struct Figures {
    /// The caller's last speech packet on the wire to the first loud reply frame out of
    /// the caller's jitter buffer.
    caller: Vec<f64>,
    /// The old reference (play time + speech end offset) minus the wire's.
    estimate_minus_wire: Vec<f64>,
    /// Last speech packet on the wire to the first reply packet with sound, on the wire.
    wire_to_sound: Vec<f64>,
    /// First reply packet with sound to the first loud one (both on the wire).
    sound_to_loud: Vec<f64>,
    /// First loud reply packet on the wire to the caller's frame (its jitter buffer).
    caller_buffer: Vec<f64>,
    /// Phase of the bot's send clock after the caller's (ms, 0..20).
    phase: Option<f64>,
    /// Relay forwarding time (ms): median, max.
    relay_forward: (f64, f64),
    /// Per utterance: (pause notice after the last speech frame, voice end as dated
    /// by that notice after the last speech frame), ms of stream time.
    vad: Vec<(f64, f64)>,
}

fn run_mode(
    variant: Variant,
    turns: usize,
    model: &Path,
    utterances: &[Utterance],
) -> Result<(Figures, Vec<serde_json::Value>), String> {
    let dir = callbot_testkit::temp_dir("voice-latency");
    let mut script = callbot_testkit::ollama::Script::reply("Sure, I can help with that.");
    script.first_token_delay = Duration::from_millis(100);
    let mut llm = callbot_testkit::ollama::OllamaServer::start(script).map_err(|e| e.to_string())?;
    let mut s = Settings::default();
    s.sip.listen = SocketAddr::new(LOOPBACK, 0);
    s.stt.model = model.to_path_buf();
    s.llm.url = llm.url();
    s.llm.model = "test-model".into();
    s.dialogue.greeting = String::new();
    s.dialogue.speculative_stt = variant.speculative;
    if let Some(on) = variant.early_end {
        s.dialogue.early_end_of_turn = on;
    }
    if let Some(secs) = variant.speculation_delay {
        s.dialogue.speculation_delay_secs = secs;
    }
    if let Some(secs) = variant.early_min_silence {
        s.dialogue.early_end_min_silence_secs = secs;
    }
    if let Some(secs) = variant.hangover {
        s.dialogue.vad.hangover_secs = secs;
    }
    if let Some(ms) = variant.jitter_min_ms {
        s.media.jitter_buffer_min_ms = ms.min(s.media.jitter_buffer_ms);
    }
    println!(
        "  settings: media.jitter_buffer_min_ms {} (max {})",
        s.media.jitter_buffer_min_ms, s.media.jitter_buffer_ms
    );
    println!(
        "  settings: speculative_stt {} early_end_of_turn {} speculation_delay_secs {} early_end_min_silence_secs {} vad.hangover_secs {}",
        s.dialogue.speculative_stt,
        s.dialogue.early_end_of_turn && s.dialogue.speculative_stt,
        s.dialogue.speculation_delay_secs,
        s.dialogue.early_end_min_silence_secs,
        s.dialogue.vad.hangover_secs
    );
    s.dialogue.silence_prompt_after_secs = 600.0;
    s.dialogue.silence_hangup_after_secs = 1200.0;
    s.dialogue.max_calls = 2;
    let base = callbot_testkit::ports::free_udp_port_range(4);
    s.media.rtp_port_min = base;
    s.media.rtp_port_max = base + 3;
    let transcripts = dir.path().join("transcripts");
    s.transcripts.dir = Some(transcripts.clone());
    let vad = utterances
        .iter()
        .filter_map(|u| vad_pause(u, &s))
        .collect::<Vec<_>>();
    let mut bot = Bot::start(s).map_err(|e| e.to_string())?;
    let mut relay = Relay::start()?;
    let mut caller =
        SipUserAgent::start(SipConfig::new(SocketAddr::new(LOOPBACK, 0))).map_err(|e| e.to_string())?;
    let mut cfg = RtpSessionConfig::new(LOOPBACK, Law::Ulaw, None);
    cfg.media.jitter.depth = CALLER_JITTER_MAX;
    cfg.media.jitter.adaptive = Some(callbot_rtp::AdaptiveDepth {
        min_depth: CALLER_JITTER,
        // gives a stall's growth back within the ~3 s the caller speaks
        shrink_after: 50,
        grow_hold: 100,
    });
    let mut rtp = RtpSession::start(cfg).map_err(|e| e.to_string())?;
    // The bot is offered the relay's address: its audio goes through the relay.
    let (call, media) = callbot::testing::place_call(
        &caller,
        &format!("sip:bot@{}", bot.sip_addr()),
        bot.sip_addr(),
        relay.bot_side,
        Duration::from_secs(5),
        |_| {},
    )
    .map_err(|e| e.to_string())?;
    relay.set_bot(media.remote_rtp);
    rtp.retarget(
        Some(relay.caller_side),
        Law::Ulaw,
        media.payload_type,
        media.telephone_event,
    )
    .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(1500));
    let origin = Instant::now();
    let mut fig = Figures::default();
    for i in 0..turns {
        let Some(u) = utterances.get(i % utterances.len().max(1)) else {
            break;
        };
        while rtp.frames().try_recv().is_ok() {}
        let played_at = Instant::now();
        rtp.play(u.audio.clone()).map_err(|e| e.to_string())?;
        // Only gates the detection: the reference is the packet seen on the wire.
        let speech_end = played_at + u.speech_end;
        let t0 = Instant::now();
        let mut first = None;
        while t0.elapsed() < Duration::from_secs(60) {
            if let Ok(f) = rtp.frames().recv_timeout(Duration::from_millis(50))
                && loud(&f)
                && Instant::now() > speech_end
            {
                first = Some(Instant::now());
                break;
            }
        }
        let wire = wire_turn(&relay.log(), played_at, u.speech_end_sample);
        match (first, wire) {
            (Some(at), Some(w)) => {
                let ms = |a: Instant, b: Instant| a.saturating_duration_since(b).as_secs_f64() * 1000.0;
                let caller_ms = ms(at, w.speech_end);
                // The old estimate (play time + offset) against the wire, signed.
                let estimate = (speech_end.max(w.speech_end) - speech_end.min(w.speech_end)).as_secs_f64()
                    * if speech_end >= w.speech_end {
                        1000.0
                    } else {
                        -1000.0
                    };
                println!(
                    "  turn {:2}: {caller_ms:6.0} ms  (estimate-wire {estimate:+4.0}, wire to reply sound {:4.0}, sound to loud {:3.0}, caller buffer {:3.0})  \"{}\"",
                    i + 1,
                    w.reply_sound.map_or(f64::NAN, |t| ms(t, w.speech_end)),
                    match (w.reply_loud, w.reply_sound) {
                        (Some(l), Some(s)) => ms(l, s),
                        _ => f64::NAN,
                    },
                    w.reply_loud.map_or(f64::NAN, |t| ms(at, t)),
                    u.text
                );
                fig.caller.push(caller_ms);
                fig.estimate_minus_wire.push(estimate);
                if let Some(s) = w.reply_sound {
                    fig.wire_to_sound.push(ms(s, w.speech_end));
                    if let Some(l) = w.reply_loud {
                        fig.sound_to_loud.push(ms(l, s));
                    }
                }
                if let Some(l) = w.reply_loud {
                    fig.caller_buffer.push(ms(at, l));
                }
            }
            (Some(_), None) => println!("  turn {:2}: reply heard, turn not found on the wire", i + 1),
            (None, _) => println!("  turn {:2}: no reply within 60 s", i + 1),
        }
        wait_quiet(&rtp, Duration::from_millis(700), Duration::from_secs(20));
    }
    {
        let log = relay.log();
        fig.phase = clock_phase(&log, origin);
        let mut fwd: Vec<f64> = log.forward_us.iter().map(|&u| f64::from(u) / 1000.0).collect();
        fwd.sort_by(f64::total_cmp);
        fig.relay_forward = (percentile(&fwd, 0.5), fwd.last().copied().unwrap_or(f64::NAN));
    }
    fig.vad = vad;
    let _ = caller.hang_up(call);
    std::thread::sleep(Duration::from_millis(300));
    let report = bot.shutdown(Instant::now() + Duration::from_secs(3));
    if !report.components.all_clean() {
        println!("  (components not all clean: {report:?})");
    }
    let lines = callbot::testing::transcript_lines(&transcripts);
    llm.shutdown(Instant::now() + Duration::from_secs(1));
    rtp.shutdown(Instant::now() + Duration::from_secs(1));
    caller.shutdown(Instant::now() + Duration::from_secs(1));
    relay.shutdown();
    Ok((fig, lines))
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Where the time between the caller's end of speech and its hearing the reply goes
/// (means over the turns, ms).
fn breakdown(fig: &Figures, bot_v2v: &[f64]) {
    println!("  breakdown (means, ms):");
    println!(
        "    old reference (play time + offset) minus the wire's  {:+6.1}",
        mean(&fig.estimate_minus_wire)
    );
    println!(
        "    relay forwarding per packet: median {:.3} ms, max {:.3} ms",
        fig.relay_forward.0, fig.relay_forward.1
    );
    let phase = fig.phase.unwrap_or(f64::NAN);
    println!("    bot send clock after the caller's                    {phase:6.1}");
    let notice: Vec<f64> = fig.vad.iter().map(|v| v.0).collect();
    let dated: Vec<f64> = fig.vad.iter().map(|v| v.1).collect();
    println!(
        "    VAD (offline, same frames): pause noticed {:.1} ms after the last speech frame, voice end dated {:+.1} ms after it",
        mean(&notice),
        mean(&dated)
    );
    let wire = mean(&fig.wire_to_sound);
    let v2v = mean(bot_v2v);
    println!("    A wire: last speech packet -> first reply packet with sound {wire:6.1}");
    println!("    B bot clock: voice_to_voice (voice end -> reply queued)     {v2v:6.1}");
    if bot_v2v.len() == fig.wire_to_sound.len() {
        let gap: Vec<f64> = fig
            .wire_to_sound
            .iter()
            .zip(bot_v2v)
            .map(|(a, b)| a - b)
            .collect();
        println!(
            "    A-B: bot jitter buffer + VAD dating + wait for the send tick {:6.1} (min {:.1}, max {:.1})",
            mean(&gap),
            gap.iter().copied().fold(f64::INFINITY, f64::min),
            gap.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        );
        println!(
            "      less the VAD dating above: bot jitter buffer + send tick wait {:6.1}",
            mean(&gap) - mean(&dated)
        );
    } else {
        println!(
            "    A-B: not paired ({} turns on the wire, {} bot turns with a voice_to_voice)",
            fig.wire_to_sound.len(),
            bot_v2v.len()
        );
    }
    println!(
        "    C reply sound -> first loud packet (leading quiet of the reply) {:6.1}",
        mean(&fig.sound_to_loud)
    );
    println!(
        "    D first loud packet -> caller's frame (caller's jitter buffer)  {:6.1}",
        mean(&fig.caller_buffer)
    );
    println!(
        "    A+C+D = caller figure                                     {:6.1} (measured {:.1})",
        wire + mean(&fig.sound_to_loud) + mean(&fig.caller_buffer),
        mean(&fig.caller)
    );
}

fn run() -> Result<(), String> {
    let args = callbot_examples::Args::parse(&[])?;
    args.reject_unknown(&[
        "turns",
        "mode",
        "early-end",
        "speculation-delay",
        "early-min-silence",
        "hangover",
        "jitter-min",
    ])?;
    let turns: usize = args.parsed_or("turns", 10)?;
    let early_end = match args.get("early-end") {
        None => None,
        Some("on") => Some(true),
        Some("off") => Some(false),
        Some(other) => return Err(format!("--early-end {other}: expected on or off")),
    };
    let optional = |name: &str| -> Result<Option<f64>, String> {
        args.get(name)
            .map(|v| v.parse::<f64>().map_err(|e| format!("--{name} {v}: {e}")))
            .transpose()
    };
    let base = Variant {
        speculative: true,
        early_end,
        speculation_delay: optional("speculation-delay")?,
        early_min_silence: optional("early-min-silence")?,
        hangover: optional("hangover")?,
        jitter_min_ms: args
            .get("jitter-min")
            .map(|v| v.parse::<u32>().map_err(|e| format!("--jitter-min {v}: {e}")))
            .transpose()?,
    };
    let modes: &[bool] = match args.get("mode").unwrap_or("both") {
        "both" => &[true, false],
        "on" => &[true],
        "off" => &[false],
        other => return Err(format!("--mode {other}: expected both, on or off")),
    };
    let model = callbot_testkit::whisper_model().ok_or("no Whisper model (set CALLBOT_WHISPER_MODEL)")?;
    let utterances = utterances()?;
    for &speculative in modes {
        println!(
            "speculative transcription {}: {turns} turns (load average {})",
            if speculative { "ON" } else { "OFF" },
            load_average()
        );
        let variant = Variant { speculative, ..base };
        let (fig, all_lines) = run_mode(variant, turns, &model, &utterances)?;
        let (summaries, lines): (Vec<_>, Vec<_>) = all_lines
            .into_iter()
            .filter(|l| l["kind"] == "conversation" || l["type"] == "summary")
            .partition(|l| l["type"] == "summary");
        let field =
            |key: &str| -> Vec<f64> { lines.iter().filter_map(|l| l["timings"][key].as_f64()).collect() };
        stats("caller: end of speech -> first reply packet", fig.caller.clone());
        stats(
            "bot: voice_to_voice (voice end -> reply queued)",
            field("voice_to_voice"),
        );
        stats("bot: endpoint (hangover)", field("endpoint"));
        stats("bot: stt (job duration)", field("stt"));
        stats(
            "bot: stt_after_endpoint (waited for)",
            field("stt_after_endpoint"),
        );
        stats("bot: llm_first_token", field("llm_first_token"));
        stats("bot: llm_first_sentence", field("llm_first_sentence"));
        stats("bot: tts_first_audio", field("tts_first_audio"));
        let spec = lines
            .iter()
            .filter(|l| l["timings"]["speculative_stt"] == true)
            .count();
        println!(
            "  turns answered from a speculative transcription: {spec} of {}",
            lines.len()
        );
        let early = lines.iter().filter(|l| l["timings"]["early_end"] == true).count();
        println!(
            "  turns ended early (finished sentence before the hangover): {early} of {}",
            lines.len()
        );
        for s in &summaries {
            println!(
                "  call summary: speculations {} (dropped as the caller went on: {}), early ends {}",
                s["speculations"], s["speculations_dropped"], s["early_ends"]
            );
        }
        breakdown(&fig, &field("voice_to_voice"));
        println!("  load average after: {}", load_average());
        for l in lines.iter().take(3) {
            println!("  heard: {}", l["user"]);
        }
    }
    Ok(())
}
