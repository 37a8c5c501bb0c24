//! Transcribe WAV files with Whisper.
//!
//! ```sh
//! cargo run --release -p callbot-examples --example transcribe -- \
//!     --model ../shared/models/ggml-tiny.en.bin hello.wav call.wav
//! ```
//!
//! Prints one line per file: the text, then the audio length and the time the
//! transcription took. Any WAV rate and channel count is accepted: the file is downmixed
//! to mono and resampled to 16 kHz. Options: `--threads N`, `--beam N` (beam search),
//! `--language CODE` (or `auto`), `--prompt TEXT`, `--full-window` (whisper's fixed 30 s
//! window instead of one sized from the audio), `--timeout SECS` (per file, default 120).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use callbot_audio::{resample, wav};
use callbot_examples::{Args, init_logging};
use callbot_stt::{
    AudioWindow, Decoding, SAMPLE_RATE, TranscribeOptions, Transcriber, TranscriptionRequest, WhisperConfig,
    WhisperTranscriber,
};

fn main() -> ExitCode {
    init_logging();
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("transcribe: {e}");
            eprintln!(
                "usage: transcribe --model PATH [--threads N] [--beam N] [--language CODE] \
                 [--prompt TEXT] [--full-window] [--timeout SECS] FILE.wav..."
            );
            ExitCode::from(2)
        }
    }
}

/// Reads a WAV file as 16 kHz mono f32.
fn load(path: &str) -> Result<Vec<f32>, String> {
    let frame = wav::read_wav(path).map_err(|e| e.to_string())?;
    let samples = frame.to_f32();
    if frame.sample_rate == SAMPLE_RATE {
        return Ok(samples);
    }
    resample::resample(&samples, frame.sample_rate, SAMPLE_RATE).map_err(|e| e.to_string())
}

/// Returns whether every file was transcribed.
fn run() -> Result<bool, String> {
    let args = Args::parse(&["full-window"])?;
    args.reject_unknown(&[
        "model",
        "threads",
        "beam",
        "language",
        "prompt",
        "full-window",
        "timeout",
    ])?;
    if args.positional.is_empty() {
        return Err("no WAV file given".into());
    }
    let mut config = WhisperConfig::new(args.required("model")?);
    config.threads_per_job = args.parsed_or("threads", config.threads_per_job)?;
    let beam: u8 = args.parsed_or("beam", 0)?;
    let timeout = Duration::from_secs(args.parsed_or("timeout", 120u64)?);
    let options = TranscribeOptions {
        language: args.get("language").unwrap_or("en").to_string(),
        decoding: if beam > 0 {
            Decoding::BeamSearch { beam_size: beam }
        } else {
            Decoding::default()
        },
        initial_prompt: args.get("prompt").map(str::to_string),
        threads: None,
        window: if args.switch("full-window") {
            AudioWindow::Full
        } else {
            AudioWindow::Auto
        },
    };
    let mut stt = WhisperTranscriber::new(config).map_err(|e| e.to_string())?;
    let mut all_ok = true;
    for path in &args.positional {
        let audio = match load(path) {
            Ok(a) => a,
            Err(e) => {
                println!("{path}: cannot read: {e}");
                all_ok = false;
                continue;
            }
        };
        let request = TranscriptionRequest::new(audio)
            .with_options(options.clone())
            .with_deadline(Instant::now() + timeout);
        let seconds = request.duration().as_secs_f64();
        let start = Instant::now();
        match stt.transcribe(request) {
            Ok(t) => println!(
                "{}\t[{seconds:.2} s audio, {:.3} s]",
                t.text,
                start.elapsed().as_secs_f64()
            ),
            Err(e) => {
                println!(
                    "{path}: {e}\t[{seconds:.2} s audio, {:.3} s]",
                    start.elapsed().as_secs_f64()
                );
                all_ok = false;
            }
        }
    }
    // Returns as soon as the worker has stopped; the deadline only bounds a stuck one.
    let report = stt.shutdown(Instant::now() + Duration::from_secs(30));
    tracing::debug!(?report, "transcriber shut down");
    Ok(all_ok)
}
