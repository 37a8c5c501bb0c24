//! Voice-to-voice latency of the real pipeline, with and without speculative
//! transcription.
//!
//! Starts a [`callbot::Bot`] on loopback with the real layers (Whisper tiny.en from
//! `callbot_testkit::whisper_model()`, espeak-ng) and a local Ollama-protocol server
//! (`callbot_testkit::ollama::OllamaServer`) whose first token comes after 100 ms.
//! The caller is the project's own SIP UAC (`callbot-sip`) with an `RtpSession`: it
//! speaks the testkit's espeak-ng sentences (8 kHz, G.711) one turn at a time and
//! measures, per turn, from the end of its speech (the last speech sample sent) to the
//! first reply packet it receives (its jitter buffer is set to 20 ms and included).
//! The bot's own per-turn figure (end of the caller's voice to the first reply audio
//! queued for sending, from its transcript) is printed beside it.
//!
//! With speculation on, the turn ends early when the speculative transcript reads as
//! a finished sentence (`dialogue.early_end_of_turn`); `--early-end off` measures the
//! speculation alone (the full endpoint hangover every turn).
//!
//! ```text
//! cargo run --release -p callbot-examples --example voice_latency -- [--turns 10] [--mode both|on|off]
//!     [--early-end on|off] [--speculation-delay SECS] [--early-min-silence SECS] [--hangover SECS]
//! ```
//! Needs `CALLBOT_WHISPER_MODEL` (or `cargo xtask model`) and espeak-ng. The machine's
//! load average is printed before and after each mode (the figures depend on it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use callbot::{Bot, Settings};
use callbot_audio::AudioFrame;
use callbot_audio::g711::Law;
use callbot_rtp::{RtpSession, RtpSessionConfig};
use callbot_sip::{SipConfig, SipEvent, SipUserAgent};
use callbot_testkit::speech;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const CALLER_JITTER: Duration = Duration::from_millis(20);

fn main() {
    callbot_examples::init_logging();
    if let Err(e) = run() {
        eprintln!("voice_latency: {e}");
        std::process::exit(1);
    }
}

struct Utterance {
    text: &'static str,
    audio: AudioFrame,
    /// Where the speech ends in `audio`.
    speech_end: Duration,
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

/// Every JSON line of the transcript files in `dir` (turns, then the call summary).
fn transcript_lines(dir: &Path) -> Vec<serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn loud(f: &callbot_rtp::ReceivedFrame) -> bool {
    f.audio.samples.iter().any(|s| s.unsigned_abs() > 300)
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
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn run_mode(
    variant: Variant,
    turns: usize,
    model: &Path,
    utterances: &[Utterance],
) -> Result<(Vec<f64>, Vec<serde_json::Value>), String> {
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
    let mut bot = Bot::start(s).map_err(|e| e.to_string())?;
    let mut caller =
        SipUserAgent::start(SipConfig::new(SocketAddr::new(LOOPBACK, 0))).map_err(|e| e.to_string())?;
    let mut cfg = RtpSessionConfig::new(LOOPBACK, Law::Ulaw, None);
    cfg.media.jitter.depth = CALLER_JITTER;
    let mut rtp = RtpSession::start(cfg).map_err(|e| e.to_string())?;
    let call = caller
        .call(
            &format!("sip:bot@{}", bot.sip_addr()),
            bot.sip_addr(),
            rtp.local_addr(),
        )
        .map_err(|e| e.to_string())?;
    let media = loop {
        match caller.events().recv_timeout(Duration::from_secs(5)) {
            Ok(SipEvent::CallAnswered { media, .. }) => break media,
            Ok(_) => {}
            Err(e) => return Err(format!("no answer: {e}")),
        }
    };
    rtp.retarget(
        Some(media.remote_rtp),
        Law::Ulaw,
        media.payload_type,
        media.telephone_event,
    )
    .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(1500));
    let mut caller_side = Vec::new();
    for i in 0..turns {
        let Some(u) = utterances.get(i % utterances.len().max(1)) else {
            break;
        };
        while rtp.frames().try_recv().is_ok() {}
        rtp.play(u.audio.clone()).map_err(|e| e.to_string())?;
        // The caller's session sends from its next 20 ms tick.
        let speech_end = Instant::now() + u.speech_end;
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
        match first {
            Some(at) => {
                let ms = at.saturating_duration_since(speech_end).as_secs_f64() * 1000.0;
                println!("  turn {:2}: {ms:6.0} ms  \"{}\"", i + 1, u.text);
                caller_side.push(ms);
            }
            None => println!("  turn {:2}: no reply within 60 s", i + 1),
        }
        wait_quiet(&rtp, Duration::from_millis(700), Duration::from_secs(20));
    }
    let _ = caller.hang_up(call);
    std::thread::sleep(Duration::from_millis(300));
    let report = bot.shutdown(Instant::now() + Duration::from_secs(3));
    if !report.components.all_clean() {
        println!("  (components not all clean: {report:?})");
    }
    let lines = transcript_lines(&transcripts);
    llm.shutdown(Instant::now() + Duration::from_secs(1));
    rtp.shutdown(Instant::now() + Duration::from_secs(1));
    caller.shutdown(Instant::now() + Duration::from_secs(1));
    Ok((caller_side, lines))
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
        let (caller_side, all_lines) = run_mode(variant, turns, &model, &utterances)?;
        let (summaries, lines): (Vec<_>, Vec<_>) = all_lines
            .into_iter()
            .filter(|l| l["kind"] == "conversation" || l["type"] == "summary")
            .partition(|l| l["type"] == "summary");
        let field =
            |key: &str| -> Vec<f64> { lines.iter().filter_map(|l| l["timings"][key].as_f64()).collect() };
        stats("caller: end of speech -> first reply packet", caller_side);
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
        println!("  load average after: {}", load_average());
        for l in lines.iter().take(3) {
            println!("  heard: {}", l["user"]);
        }
    }
    Ok(())
}
