#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Word error rate of `WhisperTranscriber` with the real tiny.en model on espeak-ng speech:
//! `callbot_testkit::speech::accuracy_set()`, the 12 sentences of `SENTENCES` each spoken by
//! the five voices of `ACCURACY_VOICES` (en-us, en, en-gb-x-rp, en-gb-scotland, en-029):
//! 60 utterances, 555 words, at espeak-ng `-s 120` (151 words a minute over the speech, a
//! natural phone rate), clean at 16 kHz and as a phone call carries them. Each test prints
//! every hypothesis that has errors and a per-voice table. The figures are in the doc
//! comments of the bounds at the end of this file.
//!
//! Also here: the held-out set (`speech::held_out_set`, the IEEE Harvard sentences by the same
//! voices, fixed before it was first transcribed and tuned on by nothing), the model README's
//! reference measurement reproduced through the handle, and a clip-for-clip comparison of the
//! handle's text with a direct whisper-rs call's.
//!
//! Every test runs whisper, so every test is `heavy_` (nextest runs them one at a time). The
//! clean set is split in two tests (sentences 1-6 and 7-12, all voices) so that each runs
//! both windows in well under a minute. The results are deterministic for a given model,
//! thread count and whisper.cpp build (a fresh whisper state per job, greedy decoding).

mod common;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use callbot_audio::frame::i16_to_f32;
use callbot_audio::g711::Law;
use callbot_stt::{
    AudioWindow, Decoding, TranscribeOptions, Transcriber, TranscriptionRequest, WhisperConfig,
    WhisperTranscriber,
};
use callbot_testkit::speech::{
    self, ACCURACY_VOICES, ACCURACY_WPM, ESPEAK_DEFAULT_WPM, ESPEAK_RATE, REFERENCE_SENTENCES, SENTENCES,
};
use whisper_rs::{SamplingStrategy, WhisperContext, WhisperContextParameters};

/// One test utterance: reference text, voice, 16 kHz audio.
struct Clip {
    text: &'static str,
    voice: &'static str,
    audio: Vec<f32>,
}

/// The accuracy set's utterances of the sentences `sentences` (indices into `SENTENCES`),
/// all voices, through `channel` (22,050 Hz i16 -> 16 kHz f32); `None` without the model
/// or espeak-ng.
fn clips(sentences: Range<usize>, channel: impl Fn(&[i16]) -> Vec<f32>) -> Option<(PathBuf, Vec<Clip>)> {
    let wanted: Vec<&str> = SENTENCES[sentences].iter().map(|s| s.text).collect();
    set_clips(speech::accuracy_set(), &wanted, channel)
}

/// The utterances of `set` whose sentence is one of `wanted`, spoken at `ACCURACY_WPM`,
/// through `channel`; `None` without the model or espeak-ng.
fn set_clips(
    set: impl Iterator<Item = speech::TestSentence>,
    wanted: &[&str],
    channel: impl Fn(&[i16]) -> Vec<f32>,
) -> Option<(PathBuf, Vec<Clip>)> {
    let model = callbot_testkit::whisper_model()?;
    let clips = set
        .filter(|s| wanted.contains(&s.text))
        .map(|s| {
            speech::espeak_with(s.text, s.voice, ACCURACY_WPM).map(|pcm| Clip {
                text: s.text,
                voice: s.voice,
                audio: channel(&pcm),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    assert_eq!(clips.len(), wanted.len() * ACCURACY_VOICES.len());
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

/// Clean 16 kHz speech of `sentences` (all voices) with the default options (automatic
/// window), and the same with whisper's full 30 s window: the automatic window must not
/// cost more than 2 points.
fn clean_16k(sentences: Range<usize>, bound: f64) {
    let label = format!("clean {}-{}", sentences.start + 1, sentences.end);
    let Some((model, clean)) = clips(sentences, speech::to_16k) else {
        return;
    };
    let mut stt = transcriber(model);
    let auto = score(
        &stt,
        &format!("{label} auto"),
        &clean,
        &TranscribeOptions::default(),
    );
    let full = score(&stt, &format!("{label} full"), &clean, &window(AudioWindow::Full));
    eprintln!("{label} 16 kHz: automatic window {auto}; full 30 s window {full}");
    eprintln!(
        "utterance end to text, {} clips of 3-4 s: median {:.3} s automatic window, {:.3} s full window (ratio {:.2}); load average {}",
        auto.latency_3_4s.len(),
        auto.median_latency(),
        full.median_latency(),
        auto.median_latency() / full.median_latency(),
        load()
    );
    assert!(auto.pct() <= bound, "clean WER {auto}");
    assert!(
        auto.pct() <= full.pct() + 2.0,
        "automatic window {auto} vs full window {full}"
    );
    assert!(stt.shutdown(Instant::now() + Duration::from_secs(5)).model_freed);
}

/// Sentences 1-6 of `SENTENCES` by all five voices, clean.
#[test]
fn heavy_wer_clean_16k_sentences_1_to_6() {
    clean_16k(0..6, CLEAN_BOUND_1_TO_6);
}

/// Sentences 7-12 of `SENTENCES` by all five voices, clean.
#[test]
fn heavy_wer_clean_16k_sentences_7_to_12() {
    clean_16k(6..12, CLEAN_BOUND_7_TO_12);
}

/// The held-out set (`speech::held_out_set`: the IEEE Harvard sentences, lists 1-4, by the
/// five accuracy voices, 200 clips, 1,575 words), clean at 16 kHz, with the default options
/// (greedy, automatic window): the primary figure, the one issue 5's "<= 15 %" is read
/// against. Nothing was tuned on this set (see `held_out_set`).
#[test]
fn heavy_wer_held_out_clean_16k() {
    held_out(
        "held-out clean greedy",
        speech::to_16k,
        TranscribeOptions::default(),
        HELD_OUT_CLEAN_MAX,
    );
}

/// The held-out set, clean, with beam search 5. A report (two minutes of CI): beam search
/// itself is exercised by `tests/whisper.rs`, and the default decoding is greedy.
#[test]
#[ignore = "report: beam search is exercised by tests/whisper.rs; run with --ignored --nocapture"]
fn heavy_wer_held_out_clean_16k_beam_5() {
    let options = TranscribeOptions {
        decoding: Decoding::BeamSearch { beam_size: 5 },
        ..TranscribeOptions::default()
    };
    held_out(
        "held-out clean beam 5",
        speech::to_16k,
        options,
        HELD_OUT_BEAM_MAX,
    );
}

/// The handle adds nothing to whisper: on 50 held-out clips (the first ten Harvard sentences
/// by the five voices) its text is, clip for clip, the text of a direct whisper-rs call with
/// the handle's settings (greedy, language en, no context, 2 threads, the window
/// `audio_ctx_for` picks, the 0.5 s of trailing silence every job gets). With the model
/// README's reference (`heavy_wer_reference_sentences`) this is what the accuracy figures
/// of this file can say about the crate; the rest is the model on espeak-ng's speech. (The
/// check is sharp: the same call with the full 30 s window differs on 36 of the 50 clips.)
#[test]
fn heavy_handle_text_is_a_direct_whisper_rs_calls() {
    let Some((model, clips)) = set_clips(
        speech::held_out_set(),
        &speech::HARVARD_SENTENCES[..10],
        speech::to_16k,
    ) else {
        return;
    };
    assert_eq!(clips.len(), 50);
    let mut stt = transcriber(model.clone());
    let mut cp = WhisperContextParameters::default();
    cp.use_gpu(false);
    let ctx = WhisperContext::new_with_params(&model, cp).unwrap();
    let mut differ = Vec::new();
    for clip in &clips {
        let handle = stt
            .transcribe(TranscriptionRequest::new(clip.audio.clone()))
            .unwrap()
            .text;
        let p = common::handle_params(
            SamplingStrategy::Greedy { best_of: 1 },
            2,
            stt.audio_ctx_for(clip.audio.len()),
        );
        let mut audio = clip.audio.clone();
        audio.resize(audio.len() + 8_000, 0.0);
        let mut st = ctx.create_state().unwrap();
        st.full(p, &audio).unwrap();
        let direct = common::state_text(&st);
        if handle != direct {
            differ.push(format!(
                "{} {:?}: handle {handle:?}, direct {direct:?}",
                clip.voice, clip.text
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of 50 clips differ: {differ:#?}",
        differ.len()
    );
    assert!(stt.shutdown(Instant::now() + Duration::from_secs(5)).model_freed);
}

/// The held-out set as a VoIP call carries it (8 kHz G.711 µ-law), default options. A report
/// (2 minutes of whisper in the dev profile): the 8 kHz path is gated on the accuracy set by
/// `heavy_wer_telephone_8k` and `heavy_wer_telephone_300_3400_hz`.
#[test]
#[ignore = "report: the 8 kHz path is gated by heavy_wer_telephone_8k; run with --ignored --nocapture"]
fn heavy_wer_held_out_telephone_8k() {
    held_out(
        "held-out 8 kHz u-law",
        |pcm| speech::voip_16k(&i16_to_f32(pcm), ESPEAK_RATE, Law::Ulaw),
        TranscribeOptions::default(),
        HELD_OUT_VOIP_MAX,
    );
}

/// Word errors of the held-out set through `channel` with `options`, at most `max_errors`.
fn held_out(
    label: &str,
    channel: impl Fn(&[i16]) -> Vec<f32>,
    options: TranscribeOptions,
    max_errors: usize,
) {
    let Some((model, clips)) = set_clips(speech::held_out_set(), speech::HARVARD_SENTENCES, channel) else {
        return;
    };
    assert_eq!(clips.len(), 200);
    let mut stt = transcriber(model);
    let wer = score(&stt, label, &clips, &options);
    eprintln!("{label}: {wer}; load average {}", load());
    assert_eq!(wer.words, 1575);
    assert!(wer.errors <= max_errors, "{label} {wer}");
    assert!(stt.shutdown(Instant::now() + Duration::from_secs(5)).model_freed);
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The model's reference measurement (`../shared/models/README.md`: the six
/// `REFERENCE_SENTENCES` by espeak-ng en-us at its default rate) through this crate's
/// pipeline: the same audio must score what the reference scored, so a defect of the handle,
/// its decoding parameters, the resampler or the telephone simulation shows here, apart from
/// the difficulty of the test speech (which is what the accuracy set's figures mostly
/// measure: see `/work/coord/s11/stt-wer2.md` and `tests/wer_explore.rs`).
#[test]
fn heavy_wer_reference_sentences() {
    let Some(model) = callbot_testkit::whisper_model() else {
        return;
    };
    let Some(pcm) = REFERENCE_SENTENCES
        .iter()
        .map(|&text| speech::espeak_with(text, "en-us", ESPEAK_DEFAULT_WPM).map(|pcm| (text, pcm)))
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let channel = |f: &dyn Fn(&[i16]) -> Vec<f32>| -> Vec<Clip> {
        pcm.iter()
            .map(|(text, pcm)| Clip {
                text,
                voice: "en-us",
                audio: f(pcm),
            })
            .collect()
    };
    let clean = channel(&speech::to_16k);
    let phone = channel(&|pcm| speech::telephone_16k(pcm, Some(Law::Ulaw)));
    let mut stt = transcriber(model);
    let full = score(&stt, "reference full", &clean, &window(AudioWindow::Full));
    let auto = score(&stt, "reference auto", &clean, &TranscribeOptions::default());
    let tel = score(
        &stt,
        "reference 300-3400 Hz u-law",
        &phone,
        &TranscribeOptions::default(),
    );
    assert_eq!(full.words, 73);
    assert!(full.errors <= REFERENCE_FULL_MAX, "full window {full}");
    assert!(auto.errors <= REFERENCE_AUTO_MAX, "automatic window {auto}");
    assert!(tel.errors <= REFERENCE_PHONE_MAX, "telephone band {tel}");
    assert!(stt.shutdown(Instant::now() + Duration::from_secs(5)).model_freed);
}

/// The whole set as a VoIP call carries it: 8 kHz G.711 µ-law (the issue's "band-limited to
/// 8 kHz"; the resampler's anti-alias filter is the only band limit).
#[test]
fn heavy_wer_telephone_8k() {
    telephone_wer("8 kHz u-law", VOIP_BOUND, |pcm| {
        speech::voip_16k(&i16_to_f32(pcm), ESPEAK_RATE, Law::Ulaw)
    });
}

/// The whole set as an analogue PSTN line carries it: 8 kHz, 300-3400 Hz band-pass, µ-law.
#[test]
fn heavy_wer_telephone_300_3400_hz() {
    telephone_wer("300-3400 Hz u-law", PSTN_BOUND, |pcm| {
        speech::telephone_16k(pcm, Some(Law::Ulaw))
    });
}

/// WER of the whole set through `channel` (22,050 Hz i16 -> 16 kHz f32) with the default
/// options, asserted at most `bound`. A broken pipeline (wrong rate, clipping) scores
/// near 100 %.
fn telephone_wer(label: &str, bound: f64, channel: impl Fn(&[i16]) -> Vec<f32>) {
    let Some((model, clips)) = clips(0..SENTENCES.len(), channel) else {
        return;
    };
    let mut stt = transcriber(model);
    let wer = score(&stt, label, &clips, &TranscribeOptions::default());
    assert!(wer.pct() <= bound, "{label} WER {wer}");
    assert!(stt.shutdown(Instant::now() + Duration::from_secs(5)).model_freed);
}

// Figures, measured with tiny.en, 2 threads, this file's defaults (greedy, automatic
// window), on this 2-core machine (load 5-8; the text does not depend on the load). The
// bounds are the measured figure plus two words, so a regression of three words fails.
//
// Issue 5's goal is <= 15 % on clean speech. On this set it is met by en-us alone:
//
// | clean 16 kHz, automatic window | 1-6 | 7-12 | all 12 sentences |
// |---|---|---|---|
// | en-us | 11/59 | 2/52 | 13/111 (11.7 %) |
// | en-gb-x-rp | 14/59 | 3/52 | 17/111 (15.3 %) |
// | en | 18/59 | 5/52 | 23/111 (20.7 %) |
// | en-029 | 26/59 | 11/52 | 37/111 (33.3 %) |
// | en-gb-scotland | 28/59 | 13/52 | 41/111 (36.9 %) |
// | all voices | 97/295 (32.9 %) | 34/260 (13.1 %) | 131/555 (23.6 %) |
// | full 30 s window, all voices | 93/295 (31.5 %) | 40/260 (15.4 %) | 133/555 (24.0 %) |
//
// The old set (`SENTENCES` alone, one voice per sentence, 111 words, at espeak-ng's
// `-s 160`, 203 words a minute) scored 17.1 % (19/111: en 2/30, en-029 4/9, en-gb-scotland
// 9/17, en-gb-x-rp 1/18, en-us 3/37) with the automatic window and 25.2 % with the full
// one: its voice-sentence pairs were easier than the average pair. The same 60 clips at
// `-s 160` scored 23.4 % (130/555, old normaliser; 24.3 % at `-s 120`): the slower, natural
// rate is not what makes the figure.
//
// Most errors are the recogniser's, on espeak-ng's pronunciation, and repeat across voices:
// "tonight" is heard "to hide" in all five voices, "book" as "work" in four, "The weather
// in Edinburgh" costs 5-13 words in every voice, "billing" is "building", "willing" or
// "milling". Not the pipeline: no clipping (the five voices peak at 0.67-0.86 of full scale
// on the Edinburgh sentence), and tried on this set (scratch harness, same decoding, old normaliser,
// base 24.3 %): 300 ms of leading silence as the bot's pre-roll gives 24.3 %, no temperature
// fallback 25.2 %, best_of 5 on fallback 24.5 %. On the old set: suppress_nst,
// suppress_blank off, max_initial_ts 0 and single_segment gave the same text clip for clip;
// beam search 5 25.2 %, a greeting as initial prompt 18.0 %, no timestamps 18.0 %, level
// normalisation 17.1 %, 0.3 s leading silence 19.8 %.
/// Sentences 1-6 by all voices, clean: measured 32.9 % (97/295).
const CLEAN_BOUND_1_TO_6: f64 = 100.0 * 99.0 / 295.0;
/// Sentences 7-12 by all voices, clean: measured 13.1 % (34/260).
const CLEAN_BOUND_7_TO_12: f64 = 100.0 * 36.0 / 260.0;
/// 8 kHz u-law, all 60 clips: measured 45.2 % (251/555; en 39, en-029 51, en-gb-scotland
/// 76, en-gb-x-rp 43, en-us 42 of 111 each). The reference for tiny.en on
/// band-limited speech is about 27 %; en-us alone is 37.8 % here. The old set scored 49.5 %
/// (55/111; en-us 17/37). (callbot-tts's phone voice, en-us+f2 at 140, does better through
/// the same path: 10.9 % in its round-trip test.)
const VOIP_BOUND: f64 = 100.0 * 253.0 / 555.0;
/// 300-3400 Hz band and u-law, all 60 clips: measured 47.9 % (266/555; en 43, en-029 61,
/// en-gb-scotland 75, en-gb-x-rp 45, en-us 42 of 111 each).
const PSTN_BOUND: f64 = 100.0 * 268.0 / 555.0;

// The reference sentences (en-us, espeak-ng's default rate), measured 03:13-03:15 (load 1.7-4.2)
// with `tests/wer_explore.rs`; text clip for clip the model README's (sox or rubato alike):
/// Full window, clean: 5/73 (the README's 4/73 with "you're" for "your" counted as one word).
const REFERENCE_FULL_MAX: usize = 5 + 2;
/// Automatic window, clean: 7/73 (the window hears "quick brown fox" as "quick roundfire").
const REFERENCE_AUTO_MAX: usize = 7 + 2;
/// Automatic window, 300-3400 Hz u-law: 19/73 (the README's sox telephone band: 20/73 as it
/// counts, 21 as `speech::wer` counts).
const REFERENCE_PHONE_MAX: usize = 19 + 2;

// The held-out set, measured once (05:33-05:35, load 0.5-1.7, release build, the text does not
// depend on the load or the profile), the commit after the one that fixed the set. The bounds
// are the measured figure plus four words (0.25 points of 1,575).
//
// | held-out set, 1,575 words | en-us | en-gb-x-rp | en | en-gb-scotland | en-029 | all |
// |---|---|---|---|---|---|---|
// | clean, greedy (default) | 80 | 82 | 92 | 132 | 143 | **529 (33.6 %)** |
// | clean, beam 5 | 82 | 88 | 80 | 132 | 139 | 521 (33.1 %) |
// | clean, greedy, full 30 s window (`tests/wer_explore.rs`) | 88 | 94 | 91 | 139 | 146 | 558 (35.4 %) |
// | 8 kHz u-law, greedy | 172 | 194 | 186 | 236 | 211 | 999 (63.4 %) |
//
// Issue 5's "<= 15 %" is not met on it, and not by the pipeline's fault: the model itself
// hears espeak-ng's rendering of these sentences this way. On the en-us clips at espeak-ng's
// default rate, converted by sox, a direct whisper-rs call with the model README's settings
// (full window, no padding) scores 35.2 % (111/315), this handle 32.4 % (102/315), and
// faster-whisper 1.2.1 (CTranslate2 4.8.5, float32, its own numpy front end: an independent
// implementation of the same weights, `tests/tools/faster_whisper_check.py`) 36.4 % (114/313
// with its plain normaliser), with the same mishearings ("The birch canoe" -> "The merch
// can be", "Glue the sheet" -> "Blue machine", "The box" -> "The marks": espeak-ng's /b/ is
// heard as /m/ or /w/ throughout). The same script on the other sets: the 60 clips 25.0 %
// (139/555; this handle 23.6 %, a direct call with the full window 24.0 %), the model
// README's six sentences 6.8 % (5/73; README 5.5 %).
/// Held-out, clean, greedy, automatic window: measured 529/1575 (33.6 %).
const HELD_OUT_CLEAN_MAX: usize = 529 + 4;
/// Held-out, clean, beam search 5: measured 521/1575 (33.1 %).
const HELD_OUT_BEAM_MAX: usize = 521 + 4;
/// Held-out, 8 kHz u-law, greedy: measured 999/1575 (63.4 %).
const HELD_OUT_VOIP_MAX: usize = 999 + 4;
