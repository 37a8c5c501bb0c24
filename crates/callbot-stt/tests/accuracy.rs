#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Word error rate of `WhisperTranscriber` with the real tiny.en model on espeak-ng speech:
//! the 12 test sentences of `callbot_testkit::speech::SENTENCES` (five voices: en-us, en,
//! en-gb-x-rp, en-gb-scotland, en-029), clean at 16 kHz and as a phone call carries them.
//! Each test prints every hypothesis that has errors and a per-voice table.
//!
//! Every test runs whisper, so every test is `heavy_` (nextest runs them one at a time).
//! The results are deterministic for a given model, thread count and whisper.cpp build
//! (a fresh whisper state per job, greedy decoding).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use callbot_audio::frame::i16_to_f32;
use callbot_audio::g711::Law;
use callbot_stt::{
    AudioWindow, TranscribeOptions, Transcriber, TranscriptionRequest, WhisperConfig, WhisperTranscriber,
};
use callbot_testkit::speech::{self, ESPEAK_RATE, SENTENCES};

/// One test utterance: reference text, voice, 16 kHz audio.
struct Clip {
    text: &'static str,
    voice: &'static str,
    audio: Vec<f32>,
}

/// The test sentences, through `channel` (22,050 Hz i16 -> 16 kHz f32); `None` without
/// the model or espeak-ng.
fn clips(channel: impl Fn(&[i16]) -> Vec<f32>) -> Option<(PathBuf, Vec<Clip>)> {
    let model = callbot_testkit::whisper_model()?;
    let clips = SENTENCES
        .iter()
        .map(|s| {
            speech::espeak(s.text, s.voice).map(|pcm| Clip {
                text: s.text,
                voice: s.voice,
                audio: channel(&pcm),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    assert!(clips.len() >= 10);
    Some((model, clips))
}

fn transcriber(model: PathBuf) -> WhisperTranscriber {
    let mut c = WhisperConfig::new(model);
    c.workers = 1;
    c.threads_per_job = 2;
    // Generous: CI machines can be slow.
    c.default_timeout = Duration::from_secs(240);
    WhisperTranscriber::new(c).unwrap()
}

/// Word errors over a set of clips.
#[derive(Debug, Default)]
struct Score {
    errors: usize,
    words: usize,
    per_voice: BTreeMap<&'static str, (usize, usize)>,
    seconds: f64,
    /// Utterance end to text (submission of the whole utterance until the text is back)
    /// of the 3-4 s clips, sorted.
    latency_3_4s: Vec<f64>,
}

impl Score {
    fn pct(&self) -> f64 {
        100.0 * self.errors as f64 / self.words.max(1) as f64
    }

    fn median_latency(&self) -> f64 {
        let v = &self.latency_3_4s;
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
}

impl std::fmt::Display for Score {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let voices: Vec<String> = self
            .per_voice
            .iter()
            .map(|(v, (e, n))| format!("{v} {e}/{n}"))
            .collect();
        write!(
            f,
            "{:.1} % ({}/{}; {})",
            self.pct(),
            self.errors,
            self.words,
            voices.join(", ")
        )
    }
}

fn score(stt: &WhisperTranscriber, label: &str, clips: &[Clip], options: &TranscribeOptions) -> Score {
    let mut s = Score::default();
    for clip in clips {
        let t = stt
            .transcribe(TranscriptionRequest::new(clip.audio.clone()).with_options(options.clone()))
            .unwrap();
        let (e, n) = speech::wer(clip.text, &t.text);
        if e > 0 {
            eprintln!(
                "{label} {:<15} [{e}/{n}] {:?} -> {:?}",
                clip.voice, clip.text, t.text
            );
        }
        s.errors += e;
        s.words += n;
        let v = s.per_voice.entry(clip.voice).or_default();
        v.0 += e;
        v.1 += n;
        s.seconds += t.timings.inference.as_secs_f64();
        if (3.0..=4.0).contains(&t.audio.as_secs_f64()) {
            s.latency_3_4s.push(t.timings.total.as_secs_f64());
        }
    }
    s.latency_3_4s.sort_by(f64::total_cmp);
    eprintln!(
        "{label}: WER {s}, {:.2} s/clip inference",
        s.seconds / clips.len() as f64
    );
    s
}

fn window(window: AudioWindow) -> TranscribeOptions {
    TranscribeOptions {
        window,
        ..TranscribeOptions::default()
    }
}

/// Clean 16 kHz speech with the default options (automatic window), and the same with
/// whisper's full 30 s window: the automatic window must not cost more than 2 points.
#[test]
fn heavy_wer_clean_16k_and_the_automatic_window() {
    let Some((model, clean)) = clips(speech::to_16k) else {
        return;
    };
    let mut stt = transcriber(model);
    let auto = score(&stt, "clean auto", &clean, &TranscribeOptions::default());
    let full = score(&stt, "clean full", &clean, &window(AudioWindow::Full));
    eprintln!("clean 16 kHz: automatic window {auto}; full 30 s window {full}");
    eprintln!(
        "utterance end to text, {} clips of 3-4 s: median {:.3} s automatic window, {:.3} s full window (ratio {:.2}); load average {}",
        auto.latency_3_4s.len(),
        auto.median_latency(),
        full.median_latency(),
        auto.median_latency() / full.median_latency(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    // Issue 5's goal is <= 15 %: not met with tiny.en, see CLEAN_BOUND.
    assert!(auto.pct() <= CLEAN_BOUND, "clean WER {auto}");
    assert!(
        auto.pct() <= full.pct() + 2.0,
        "automatic window {auto} vs full window {full}"
    );
    assert!(stt.shutdown(Instant::now() + Duration::from_secs(5)).model_freed);
}

/// The same speech through a phone call: 8 kHz G.711 µ-law as a VoIP call carries it (the
/// issue's "band-limited to 8 kHz"), and with the analogue PSTN's 300-3400 Hz band-pass too.
#[test]
fn heavy_wer_telephone_8k() {
    let Some((model, voip)) = clips(|pcm| speech::voip_16k(&i16_to_f32(pcm), ESPEAK_RATE, Law::Ulaw)) else {
        return;
    };
    let pstn: Vec<Clip> = SENTENCES
        .iter()
        .map(|s| Clip {
            text: s.text,
            voice: s.voice,
            audio: speech::telephone_16k(&speech::espeak(s.text, s.voice).unwrap(), Some(Law::Ulaw)),
        })
        .collect();
    let mut stt = transcriber(model);
    let options = TranscribeOptions::default();
    let voip = score(&stt, "8 kHz u-law", &voip, &options);
    let pstn = score(&stt, "300-3400 Hz u-law", &pstn, &options);
    eprintln!("telephone: 8 kHz u-law {voip}; 300-3400 Hz band u-law {pstn}");
    // The reference for tiny.en on band-limited speech is about 27 %. MEASURED:
    // see VOIP_BOUND / PSTN_BOUND. A broken pipeline (wrong rate, clipping) scores near 100 %.
    assert!(voip.pct() <= VOIP_BOUND, "8 kHz WER {voip}");
    assert!(pstn.pct() <= PSTN_BOUND, "300-3400 Hz WER {pstn}");
    assert!(stt.shutdown(Instant::now() + Duration::from_secs(5)).model_freed);
}

/// Issue 5's goal is <= 15 % on clean speech, and it is NOT met by tiny.en on this set:
/// measured 17.1 % (19/111 words; was 18.0 % before the trailing silence and Whisper's
/// normaliser rules), the Scottish voice alone 9/17. What was tried and did not help on
/// this set (callbot-stt's closing note has the tables): beam search 5 (25.2 %), a greeting
/// as initial prompt (18.0 %), no temperature fallback (17.1 %), no timestamps (18.0 %),
/// level normalisation (17.1 %), 0.3 s leading silence (19.8 %). The bound is the measured
/// figure plus one word, so a regression of two words fails.
const CLEAN_BOUND: f64 = 18.1;
/// Measured 49.5 % (55/111); en-us alone 17/37. The bound is the measured figure plus two words.
const VOIP_BOUND: f64 = 51.4;
/// Measured 51.4 % (57/111; 50.5 % before); en-us alone 10/37 (27 %, the reference
/// for this model). The bound is the measured figure plus two words.
const PSTN_BOUND: f64 = 53.2;
