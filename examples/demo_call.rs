//! The end-to-end demo (`cargo xtask demo` runs it): the bot on loopback, a real SIP
//! call to it that asks a spoken question, and both sides of the conversation.
//!
//! ```sh
//! cargo run --release -p callbot-examples --example demo_call -- --model models/ggml-tiny.en.bin
//! ```
//!
//! 1. The question is synthesized with espeak-ng (the engine is then shut down: only
//!    one may live per process, and the bot needs its own).
//! 2. `callbot::Bot` starts on 127.0.0.1 (Ollama at `--ollama-url`, default
//!    `http://127.0.0.1:11434`; echo mode when none answers).
//! 3. The caller, callbot's own SIP UAC and an RTP session, calls the bot, waits for the
//!    greeting, asks the question, and records everything the bot sends (WAV).
//! 4. When the bot's reply has been spoken, the caller hangs up; the recorded answer is
//!    transcribed back with Whisper and printed beside the bot's transcript (with the
//!    stage timings); the bot shuts down; exit 0.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use callbot::Settings;
use callbot_audio::AudioFrame;
use callbot_audio::g711::Law;
use callbot_examples::{Args, run_main};
use callbot_rtp::{RtpSession, RtpSessionConfig};
use callbot_sip::{SipConfig, SipUserAgent};
use callbot_stt::{Transcriber, TranscriptionRequest, WhisperConfig, WhisperTranscriber};
use callbot_tts::{EspeakConfig, EspeakSynthesizer, Synthesizer};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const QUESTION: &str = "Hello, what is the capital of France?";

fn synthesize(text: &str) -> Result<AudioFrame, String> {
    let mut engine = EspeakSynthesizer::start(EspeakConfig::default()).map_err(|e| e.to_string())?;
    let audio = engine
        .client()
        .synthesize(text, &engine.default_options())
        .and_then(|job| job.collect(Instant::now() + Duration::from_secs(10)))
        .map_err(|e| e.to_string());
    engine.shutdown(Instant::now() + Duration::from_secs(2));
    let audio = audio?;
    callbot_audio::resample::resample_frame(&AudioFrame::new(audio.sample_rate, audio.samples), 8000)
        .map_err(|e| e.to_string())
}

fn ms(v: &serde_json::Value) -> String {
    v.as_f64().map_or("-".into(), |m| format!("{m:.0} ms"))
}

fn run() -> Result<(), String> {
    let args = Args::parse(&[])?;
    args.reject_unknown(&["model", "ollama-url", "out"])?;
    let model = args.required("model")?.to_string();
    let work = std::env::temp_dir().join(format!("callbot-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let result = demo(&args, &model, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn demo(args: &Args, model: &str, work: &std::path::Path) -> Result<(), String> {
    println!("caller will ask: {QUESTION:?}");
    let question = synthesize(QUESTION)?;

    let mut settings = Settings::default();
    settings.sip.listen = SocketAddr::new(LOOPBACK, 0);
    settings.stt.model = model.into();
    settings.llm.url = args
        .get("ollama-url")
        .unwrap_or("http://127.0.0.1:11434")
        .to_string();
    settings.llm.connect_timeout_secs = 0.5;
    settings.dialogue.greeting = "Hello, this is the call bot.".into();
    settings.transcripts.dir = Some(work.join("transcripts"));
    let mut bot = callbot::Bot::start(settings).map_err(|e| e.to_string())?;
    println!(
        "bot listening on sip:{} ({})",
        bot.sip_addr(),
        if bot.echo_mode() {
            "echo mode: no Ollama reachable"
        } else {
            "Ollama"
        }
    );

    let mut caller =
        SipUserAgent::start(SipConfig::new(SocketAddr::new(LOOPBACK, 0))).map_err(|e| e.to_string())?;
    let mut rtp =
        RtpSession::start(RtpSessionConfig::new(LOOPBACK, Law::Ulaw, None)).map_err(|e| e.to_string())?;
    let invite = Instant::now();
    let uri = format!("sip:bot@{}", bot.sip_addr());
    let (call, _) = callbot::testing::dial(
        &caller,
        &rtp,
        &uri,
        bot.sip_addr(),
        Duration::from_secs(5),
        |_| {},
    )
    .map_err(|e| e.to_string())?;
    println!("answered in {:?}", invite.elapsed());

    // Record what the bot sends; ask after the greeting; wait for the reply to end.
    let mut heard: Vec<i16> = Vec::new();
    let mut asked = false;
    let mut quiet_since: Option<Instant> = None;
    let mut bot_spoke_after_question = false;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let Ok(frame) = rtp.frames().recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let loud = frame
            .audio
            .samples
            .iter()
            .map(|s| i32::from(*s).abs())
            .max()
            .unwrap_or(0)
            > 300;
        heard.extend_from_slice(&frame.audio.samples);
        if loud {
            quiet_since = None;
            bot_spoke_after_question |= asked;
        } else if quiet_since.is_none() {
            quiet_since = Some(Instant::now());
        }
        let quiet_for = quiet_since.map_or(Duration::ZERO, |q| q.elapsed());
        if !asked && heard.len() > 8000 && quiet_for > Duration::from_millis(800) {
            rtp.play(question.clone()).map_err(|e| e.to_string())?;
            asked = true;
        } else if bot_spoke_after_question && quiet_for > Duration::from_millis(1500) {
            break;
        }
    }
    caller.hang_up(call).map_err(|e| e.to_string())?;
    let wav = args
        .get("out")
        .map_or_else(|| work.join("bot-answer.wav"), std::path::PathBuf::from);
    callbot_audio::wav::write_wav(&wav, &AudioFrame::new(8000, heard.clone())).map_err(|e| e.to_string())?;

    // The bot's side, from its transcript (once the call is reaped, or after 3 s).
    callbot_testkit::harness::wait_until(Duration::from_secs(3), Duration::from_millis(20), || {
        bot.live_calls() == 0
    });
    let report = bot.shutdown(Instant::now() + Duration::from_secs(2));
    println!("\n--- conversation (bot transcript) ---");
    for l in callbot::testing::transcript_lines(&work.join("transcripts")) {
        if l["type"] != "turn" {
            continue;
        }
        if let Some(user) = l["user"].as_str() {
            println!("caller: {user}");
        }
        println!("bot:    {}", l["bot"].as_str().unwrap_or(""));
        let t = &l["timings"];
        if !t["stt"].is_null() {
            println!(
                "        endpoint {} | STT {} | LLM first token {} | TTS first audio {} | voice-to-voice {}",
                ms(&t["endpoint"]),
                ms(&t["stt"]),
                ms(&t["llm_first_token"]),
                ms(&t["tts_first_audio"]),
                ms(&t["voice_to_voice"])
            );
        }
    }

    // The caller's side: what arrived, transcribed back.
    let mut stt = WhisperTranscriber::new(WhisperConfig::new(model)).map_err(|e| e.to_string())?;
    let audio16 = callbot_audio::resample::resample(&callbot_audio::frame::i16_to_f32(&heard), 8000, 16000)
        .map_err(|e| e.to_string())?;
    let limit = callbot_stt::MAX_UTTERANCE.as_secs() as usize * 16000;
    let back = stt
        .transcribe(TranscriptionRequest::new(
            audio16.into_iter().take(limit).collect(),
        ))
        .map_err(|e| e.to_string())?;
    stt.shutdown(Instant::now() + Duration::from_secs(2));
    println!(
        "\n--- what the caller heard (recorded, transcribed back) ---\n{}",
        back.text.trim()
    );
    let secs = heard.len() as f64 / 8000.0;
    match args.get("out") {
        Some(_) => println!("recording: {} ({secs:.1} s)", wav.display()),
        None => println!("recording: {secs:.1} s (temporary; --out FILE keeps it)"),
    }
    println!(
        "\nbot shut down in {:?}; components clean: {}",
        report.elapsed,
        report.components.all_clean()
    );
    rtp.shutdown(Instant::now() + Duration::from_secs(1));
    caller.shutdown(Instant::now() + Duration::from_secs(1));
    if !asked || !bot_spoke_after_question {
        return Err("the bot did not answer the question".into());
    }
    Ok(())
}

fn main() -> ExitCode {
    run_main("demo_call", run)
}
