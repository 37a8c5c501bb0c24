//! Speak text into a WAV file with espeak-ng, streamed chunk by chunk.
//!
//! ```sh
//! cargo run --release -p callbot-examples --example speak -- \
//!     --out hello.wav [--voice en-us] [--rate 175] [--pitch 50] [--volume 100] "Hello there."
//! ```
//!
//! Writes mono 16-bit PCM at the engine's rate (22,050 Hz) and prints what it measured:
//! time to the first chunk, synthesis time and speed as a multiple of real time. Several
//! positional words are joined with spaces. A failed run removes the partial file.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use callbot_audio::wav::WavWriter;
use callbot_examples::{Args, init_logging};
use callbot_tts::{EspeakConfig, EspeakSynthesizer, Synthesizer, VoiceOptions};

fn main() -> ExitCode {
    init_logging();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("speak: {e}");
            eprintln!(
                "usage: speak --out FILE.wav [--voice V] [--rate WPM] [--pitch 0-100] [--volume 0-200] TEXT"
            );
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let args = Args::parse(&[])?;
    args.reject_unknown(&["out", "voice", "rate", "pitch", "volume"])?;
    let out = args.required("out")?.to_string();
    let text = args.positional.join(" ");
    if text.trim().is_empty() {
        return Err("no text given".into());
    }
    let defaults = VoiceOptions::default();
    let options = VoiceOptions {
        voice: args.get("voice").unwrap_or(&defaults.voice).to_string(),
        rate_wpm: args.parsed_or("rate", defaults.rate_wpm)?,
        pitch: args.parsed_or("pitch", defaults.pitch)?,
        volume: args.parsed_or("volume", defaults.volume)?,
    };
    options.validate().map_err(|e| e.to_string())?;

    let mut engine = EspeakSynthesizer::start(EspeakConfig::default()).map_err(|e| e.to_string())?;
    let result = speak_to_file(&engine, &text, &options, &out);
    let report = engine.shutdown(Instant::now() + Duration::from_secs(2));
    if result.is_err() {
        let _ = std::fs::remove_file(&out);
    }
    let (samples, first_chunk, took) = result?;
    let rate = engine.sample_rate();
    let audio = Duration::from_secs_f64(samples as f64 / f64::from(rate));
    println!(
        "{out}: {:.2} s of audio at {rate} Hz; first chunk after {:.1} ms; synthesised in {:.1} ms ({:.0}x real time); engine stopped in {:?}",
        audio.as_secs_f64(),
        first_chunk.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e3,
        audio.as_secs_f64() / took.as_secs_f64().max(1e-9),
        report.elapsed,
    );
    Ok(())
}

/// Streams the synthesis into the WAV file; returns (samples, time to first chunk, total time).
fn speak_to_file(
    engine: &EspeakSynthesizer,
    text: &str,
    options: &VoiceOptions,
    out: &str,
) -> Result<(u64, Duration, Duration), String> {
    let mut wav = WavWriter::create(out, engine.sample_rate(), 1).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut job = engine.synthesize(text, options).map_err(|e| e.to_string())?;
    let mut first_chunk = None;
    while let Some(chunk) = job
        .recv_timeout(Duration::from_secs(30))
        .map_err(|e| e.to_string())?
    {
        first_chunk.get_or_insert_with(|| started.elapsed());
        wav.write(&chunk.samples).map_err(|e| e.to_string())?;
    }
    let took = started.elapsed();
    let report = wav.finish().map_err(|e| e.to_string())?;
    Ok((report.frames, first_chunk.unwrap_or(took), took))
}
