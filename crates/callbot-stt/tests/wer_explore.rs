#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! WER explorer: reproduces the model README's reference measurement (`../shared/models/README.md`:
//! espeak-ng en-us at its default rate, sox to 16 kHz f32, greedy, language en, 2 threads, full
//! 30 s window) and swaps one element at a time towards callbot's pipeline. A report, not an
//! assertion (run by hand; it prints every hypothesis with errors and one `RESULT` line per
//! configuration):
//!
//! ```sh
//! CALLBOT_WHISPER_MODEL=../shared/models/ggml-tiny.en.bin WER_SET=ref6 WER_VOICES=en-us \
//!   WER_RESAMPLE=sox WER_CHANNEL=clean WER_CONFIGS="direct;handle" \
//!   cargo test -p callbot-stt --test wer_explore -- --ignored --nocapture
//! ```
//!
//! Environment (defaults in brackets):
//! - `WER_SET` [ref6]: `ref6` the README's six sentences (`REFERENCE_SENTENCES`), `s12` the
//!   twelve of `SENTENCES`, `harvard` the forty of `HARVARD_SENTENCES` (the held-out set);
//!   every sentence is spoken by every voice of `WER_VOICES` [en-us].
//! - `WER_WPM` [175, espeak-ng's default]: espeak-ng `-s`.
//! - `WER_RESAMPLE` [sox]: 22,050 -> 16 kHz by `sox` or by `rubato` (`speech::to_16k`).
//! - `WER_CHANNEL` [clean]: `clean`; `soxtel` the README's telephone band (`sox in.wav -r 8000
//!   -e mu-law -b 8 tel.wav sinc 300-3400`, back to 16 kHz f32 by sox); `voip` (`speech::voip_16k`)
//!   and `pstn` (`speech::telephone_16k`, u-law), callbot's own.
//! - `WER_NORM` [ours]: `ours` = `speech::wer`; `plain` = lowercase, punctuation dropped
//!   (apostrophes too), digit strings as number words (the README's normaliser).
//! - `WER_THREADS` [2].
//! - `WER_CONFIGS` [direct]: `;`-separated configurations. `direct,...` is a direct whisper-rs
//!   call on a fresh state (README settings: greedy best_of 1, full window, no padding) with
//!   optional `ctx=N|auto` (auto = the handle's window), `trail=MS` (silence appended),
//!   `lead=MS` (silence prepended), `gain=X` (linear), `rms=DB` (speech scaled to this RMS
//!   level, dBFS), `beam=N`, `patience=P`, `bestof=N`, `lenpen=X`, `ent=X`, `lp=X`,
//!   `tinc=X`, `prompt=P` (index into `PROMPTS`). `handle,...` goes through `WhisperTranscriber` with its defaults
//!   (automatic window, 0.5 s trailing silence) and optional `ctx=full`, `beam=N`, `prompt=P`.
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use callbot_audio::frame::i16_to_f32;
use callbot_audio::g711::Law;
use callbot_stt::{
    AudioWindow, Decoding, TranscribeOptions, Transcriber, TranscriptionRequest, WhisperConfig,
    WhisperTranscriber,
};
use callbot_testkit::speech::{self, ESPEAK_DEFAULT_WPM, ESPEAK_RATE, REFERENCE_SENTENCES, SENTENCES};
use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters};

/// Generic initial prompts a phone bot could ship by default. 0 is the example of the task
/// that asked for this measurement; it shares "Hello" and "today" with the test sentences, so
/// its figure is not an honest one. 1 and 2 share only function words (a, the, is, and, I,
/// how) with any test sentence.
const PROMPTS: &[&str] = &[
    "Hello, thanks for calling. How can I help you today?",
    "The following is a phone call between a caller and an automated assistant.",
    "Hi, how may I help?",
];

fn env(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.to_string())
}

fn espeak(text: &str, voice: &str, wpm: u32, wav: &Path) {
    let st = Command::new("espeak-ng")
        .arg("-v")
        .arg(voice)
        .arg("-s")
        .arg(wpm.to_string())
        .arg("-w")
        .arg(wav)
        .arg("--")
        .arg(text)
        .status()
        .unwrap();
    assert!(st.success());
}

/// `sox IN ARGS... -t raw -e floating-point -b 32 -L -r 16000 -c 1 OUT` read back as f32.
fn sox_to_f32_16k(input: &Path, out: &Path) -> Vec<f32> {
    let st = Command::new("sox")
        .arg(input)
        .args([
            "-t",
            "raw",
            "-e",
            "floating-point",
            "-b",
            "32",
            "-L",
            "-r",
            "16000",
            "-c",
            "1",
        ])
        .arg(out)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(out)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The README's normaliser: lowercase, punctuation dropped, digit strings as number words.
fn plain_words(text: &str) -> Vec<String> {
    let cleaned: String = text
        .to_lowercase()
        .chars()
        .filter(|c| *c != '\'')
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    cleaned
        .split_whitespace()
        .flat_map(|w| match w.parse::<u64>() {
            Ok(n) => speech::number_words(n)
                .split(' ')
                .map(str::to_string)
                .collect::<Vec<_>>(),
            Err(_) => vec![w.to_string()],
        })
        .collect()
}

fn plain_wer(reference: &str, hypothesis: &str) -> (usize, usize) {
    let r = plain_words(reference);
    (speech::word_errors(&r, &plain_words(hypothesis)), r.len())
}

struct Clip {
    text: &'static str,
    voice: String,
    audio: Vec<f32>,
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[test]
#[ignore = "report: run by hand with --ignored --nocapture (see the file's doc)"]
fn wer_explore() {
    let Some(model) = callbot_testkit::whisper_model() else {
        return;
    };
    let set = env("WER_SET", "ref6");
    let wpm: u32 = std::env::var("WER_WPM").map_or(ESPEAK_DEFAULT_WPM, |w| w.parse().unwrap());
    let resampler = env("WER_RESAMPLE", "sox");
    let channel = env("WER_CHANNEL", "clean");
    let norm = env("WER_NORM", "ours");
    let threads: usize = env("WER_THREADS", "2").parse().unwrap();
    let texts: Vec<&'static str> = match set.as_str() {
        "ref6" => REFERENCE_SENTENCES.to_vec(),
        "s12" => SENTENCES.iter().map(|s| s.text).collect(),
        "harvard" => speech::HARVARD_SENTENCES.to_vec(),
        other => panic!("unknown WER_SET {other}"),
    };
    let voices: Vec<String> = env("WER_VOICES", "en-us")
        .split(',')
        .map(str::to_string)
        .collect();
    let dir = callbot_testkit::temp_dir("wer-explore");
    let mut clips = Vec::new();
    for voice in &voices {
        for (i, &text) in texts.iter().enumerate() {
            let wav = dir.path().join(format!("{voice}-{i}.wav"));
            espeak(text, voice, wpm, &wav);
            let pcm = callbot_audio::wav::read_wav(&wav).unwrap();
            assert_eq!(pcm.sample_rate, ESPEAK_RATE);
            let pcm = pcm.samples;
            let raw = dir.path().join(format!("{voice}-{i}.f32"));
            let audio = match (channel.as_str(), resampler.as_str()) {
                ("clean", "sox") => sox_to_f32_16k(&wav, &raw),
                ("clean", "rubato") => speech::to_16k(&pcm),
                ("soxtel", _) => {
                    let tel = dir.path().join(format!("{voice}-{i}-tel.wav"));
                    let st = Command::new("sox")
                        .arg(&wav)
                        .args(["-r", "8000", "-e", "mu-law", "-b", "8"])
                        .arg(&tel)
                        .args(["sinc", "300-3400"])
                        .status()
                        .unwrap();
                    assert!(st.success());
                    sox_to_f32_16k(&tel, &raw)
                }
                ("voip", _) => speech::voip_16k(&i16_to_f32(&pcm), ESPEAK_RATE, Law::Ulaw),
                ("pstn", _) => speech::telephone_16k(&pcm, Some(Law::Ulaw)),
                other => panic!("unknown channel/resampler {other:?}"),
            };
            clips.push(Clip {
                text,
                voice: voice.clone(),
                audio,
            });
        }
    }
    let audio_secs: f64 = clips.iter().map(|c| c.audio.len() as f64 / 16_000.0).sum();
    eprintln!(
        "set {set} voices {voices:?} wpm {wpm} resample {resampler} channel {channel} norm {norm}: {} clips, {audio_secs:.1} s of audio",
        clips.len()
    );

    let mut cp = WhisperContextParameters::default();
    cp.use_gpu(false);
    let ctx = WhisperContext::new_with_params(model.to_str().unwrap(), cp).unwrap();
    let mut handle: Option<WhisperTranscriber> = None;
    for config in env("WER_CONFIGS", "direct").split(';') {
        let mut parts = config.split(',');
        let path = parts.next().unwrap_or("direct");
        let kv: BTreeMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
        let get = |k: &str| kv.get(k).copied();
        let f = |k: &str| get(k).map(|v| v.parse::<f32>().unwrap());
        let prompt = get("prompt").map(|p| PROMPTS[p.parse::<usize>().unwrap()]);
        let (mut errors, mut words) = (0, 0);
        // The other normaliser's errors, for the RESULT line.
        let mut other_errors = 0;
        let mut per: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut times = Vec::new();
        for c in &clips {
            let started = Instant::now();
            let text = match path {
                "direct" => {
                    let strategy = match get("beam") {
                        Some(b) => SamplingStrategy::BeamSearch {
                            beam_size: b.parse().unwrap(),
                            patience: f("patience").unwrap_or(-1.0),
                        },
                        None => SamplingStrategy::Greedy {
                            best_of: get("bestof").map_or(1, |b| b.parse().unwrap()),
                        },
                    };
                    let mut fp = FullParams::new(strategy);
                    fp.set_language(Some("en"));
                    fp.set_print_progress(false);
                    fp.set_print_realtime(false);
                    fp.set_print_timestamps(false);
                    fp.set_print_special(false);
                    fp.set_n_threads(threads as i32);
                    if let Some(v) = f("lenpen") {
                        fp.set_length_penalty(v);
                    }
                    if let Some(v) = f("ent") {
                        fp.set_entropy_thold(v);
                    }
                    if let Some(v) = f("lp") {
                        fp.set_logprob_thold(v);
                    }
                    if let Some(v) = f("tinc") {
                        fp.set_temperature_inc(v);
                    }
                    if let Some(p) = prompt {
                        fp.set_initial_prompt(p);
                    }
                    let trail = (f("trail").unwrap_or(0.0) * 16.0) as usize;
                    let lead = (f("lead").unwrap_or(0.0) * 16.0) as usize;
                    let mut audio = vec![0.0; lead];
                    audio.extend_from_slice(&c.audio);
                    audio.extend(std::iter::repeat_n(0.0, trail));
                    if let Some(g) = f("gain") {
                        audio.iter_mut().for_each(|s| *s = (*s * g).clamp(-1.0, 1.0));
                    }
                    if let Some(db) = f("rms") {
                        let rms =
                            (audio.iter().map(|s| s * s).sum::<f32>() / c.audio.len().max(1) as f32).sqrt();
                        let g = 10f32.powf(db / 20.0) / rms.max(1e-9);
                        audio.iter_mut().for_each(|s| *s = (*s * g).clamp(-1.0, 1.0));
                    }
                    let actx = match get("ctx") {
                        None | Some("full") => 0,
                        Some("auto") => {
                            ((audio.len().div_ceil(320) + 128).div_ceil(64) * 64).clamp(768, 1500)
                        }
                        Some(n) => n.parse().unwrap(),
                    };
                    fp.set_audio_ctx(actx as i32);
                    let mut st = ctx.create_state().unwrap();
                    st.full(fp, &audio).unwrap();
                    common::state_text(&st)
                }
                "handle" => {
                    let stt = handle.get_or_insert_with(|| {
                        let mut wc = WhisperConfig::new(model.clone());
                        wc.workers = 1;
                        wc.threads_per_job = threads;
                        wc.default_timeout = Duration::from_secs(240);
                        WhisperTranscriber::new(wc).unwrap()
                    });
                    let options = TranscribeOptions {
                        window: if get("ctx") == Some("full") {
                            AudioWindow::Full
                        } else {
                            AudioWindow::Auto
                        },
                        decoding: match get("beam") {
                            Some(b) => Decoding::BeamSearch {
                                beam_size: b.parse().unwrap(),
                            },
                            None => Decoding::default(),
                        },
                        initial_prompt: prompt.map(str::to_string),
                        ..TranscribeOptions::default()
                    };
                    stt.transcribe(TranscriptionRequest::new(c.audio.clone()).with_options(options))
                        .unwrap()
                        .text
                }
                other => panic!("unknown path {other}"),
            };
            times.push(started.elapsed().as_secs_f64());
            let (plain, ours) = (plain_wer(c.text, &text), speech::wer(c.text, &text));
            let ((e, n), o) = if norm == "plain" {
                (plain, ours)
            } else {
                (ours, plain)
            };
            other_errors += o.0;
            if e > 0 {
                eprintln!(
                    "  [{config}] {:<15} [{e}/{n}] {:?} -> {:?}",
                    c.voice, c.text, text
                );
            }
            errors += e;
            words += n;
            let v = per.entry(c.voice.clone()).or_default();
            v.0 += e;
            v.1 += n;
        }
        times.sort_by(f64::total_cmp);
        let voices: Vec<String> = per.iter().map(|(v, (e, n))| format!("{v} {e}/{n}")).collect();
        eprintln!(
            "RESULT set={set} wpm={wpm} rs={resampler} ch={channel} norm={norm} [{config}]: WER {:.1} % ({errors}/{words}; {}) (other normaliser {other_errors} errors) median {:.2} s/clip, load {}",
            100.0 * errors as f64 / words.max(1) as f64,
            voices.join(", "),
            times[times.len() / 2],
            load()
        );
    }
}
