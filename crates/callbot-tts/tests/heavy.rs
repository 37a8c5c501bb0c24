#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Long runs and the round trip through Whisper (named `heavy_*`: nextest runs them one
//! at a time).

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use callbot_audio::frame::{f32_to_i16, i16_to_f32};
use callbot_audio::g711::Law;
use callbot_audio::resample::resample;
use callbot_stt::{Transcriber, TranscriptionRequest, WhisperConfig, WhisperTranscriber};
use callbot_testkit::speech;
use callbot_tts::{EspeakConfig, EspeakSynthesizer, Synthesizer, TtsError, VoiceOptions};

static ENGINE_LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    ENGINE_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

/// 1,000 requests on one handle, a third of them cancelled or dropped mid-stream: memory
/// and thread count stay flat and every completed request is whole.
#[test]
fn heavy_thousand_syntheses_keep_rss_and_threads_flat() {
    let _g = lock();
    let mut engine = EspeakSynthesizer::start(EspeakConfig {
        chunk_queue: 8,
        ..Default::default()
    })
    .unwrap();
    let client = engine.client();
    let o = VoiceOptions::default();
    let run = |n: usize, offset: usize| {
        let mut completed = 0;
        for i in offset..offset + n {
            let text = format!("Request number {i} has been handled, thank you for calling.");
            let mut job = client.synthesize(&text, &o).unwrap();
            match i % 3 {
                0 => {
                    let audio = job.collect(soon()).unwrap();
                    assert!(audio.duration() > Duration::from_secs(2), "request {i}");
                    completed += 1;
                }
                1 => {
                    // cancel mid-stream, drain to the end
                    job.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
                    job.cancel();
                    let end = loop {
                        match job.recv_timeout(Duration::from_secs(10)) {
                            Ok(Some(_)) => {}
                            other => break other,
                        }
                    };
                    assert_eq!(end, Err(TtsError::Cancelled), "request {i}");
                }
                _ => {
                    // drop mid-stream
                    job.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
                    drop(job);
                }
            }
        }
        completed
    };
    run(100, 0); // warm-up: allocator pools, espeak caches
    let (rss0, threads0) = (
        callbot_testkit::resources::rss_kib(),
        callbot_testkit::resources::threads(),
    );
    let started = Instant::now();
    let completed = run(1000, 100);
    let elapsed = started.elapsed();
    let (rss1, threads1) = (
        callbot_testkit::resources::rss_kib(),
        callbot_testkit::resources::threads(),
    );
    eprintln!(
        "1000 requests ({completed} complete) in {elapsed:?}; RSS {rss0} -> {rss1} kB; threads {threads0} -> {threads1}"
    );
    assert_eq!(threads1, threads0, "threads grew");
    assert!(rss1 < rss0 + 4 * 1024, "RSS grew from {rss0} kB to {rss1} kB");
    let report = engine.shutdown(soon());
    assert_eq!(report.requests_served, 1100);
    assert!(report.worker_joined);
    // After shutdown the worker and libespeak-ng's own thread are gone.
    assert!(
        callbot_testkit::resources::threads() < threads1,
        "{} threads after shutdown",
        callbot_testkit::resources::threads()
    );
}

/// Ten things a phone bot says (the TTS speaks the bot's replies).
const REPLIES: [&str; 10] = [
    "Thank you for calling, how can I help you today?",
    "Your table for two people is booked for tonight.",
    "The pharmacy is open every day from nine in the morning.",
    "I am sorry, I did not understand that, could you say it again?",
    "Please hold the line while I transfer you to the billing department.",
    "Your appointment on Friday morning has been cancelled.",
    "The last train to the city leaves at ten in the evening.",
    "Your parcel will be delivered to the right address tomorrow.",
    "A doctor is available on Saturday afternoon.",
    "Is there anything else I can help you with?",
];

/// Text -> EspeakSynthesizer -> 16 kHz -> Whisper (real model): the words come back, at
/// full band and after the telephone path (22.05 kHz -> 8 kHz -> G.711 µ-law -> 16 kHz),
/// and through the analogue 300-3400 Hz band as well (reported, bounded loosely).
///
/// Ten bot replies in the engine's default voice (`en-us+f2` at 140 wpm, chosen for the
/// phone, see `VoiceOptions::default`), spoken in two groups of five, each group one clip
/// of about 15 s with 0.4 s pauses: Whisper runs 6 times, not 30. Goal WER <= 15 % on
/// both paths: measured 5.0 % at 22.05 kHz and 10.9 % after 8 kHz µ-law (15.8 % through
/// the 300-3400 Hz band); espeak-ng's own `en-us` at 120 wpm measured 5.0 % and 20.8 %.
#[test]
fn heavy_round_trip_through_whisper() {
    let _g = lock();
    let Some(model) = callbot_testkit::whisper_model() else {
        return;
    };
    let mut config = WhisperConfig::new(model);
    config.workers = 1;
    config.threads_per_job = 2;
    let mut stt = WhisperTranscriber::new(config).unwrap();
    let mut engine = EspeakSynthesizer::start(EspeakConfig::default()).unwrap();
    let rate = engine.sample_rate();
    let options = engine.default_options();
    let pause = vec![0.0f32; rate as usize * 2 / 5];
    let deadline = || Instant::now() + Duration::from_secs(60);
    let (mut errors_wide, mut errors_phone, mut errors_band, mut words) = (0, 0, 0, 0);
    for group in REPLIES.chunks(5) {
        let mut pcm: Vec<f32> = Vec::new();
        for text in group {
            let audio = engine
                .synthesize(text, &options)
                .unwrap()
                .collect(soon())
                .unwrap();
            assert_eq!(audio.sample_rate, rate);
            pcm.extend(i16_to_f32(&audio.samples));
            pcm.extend_from_slice(&pause);
        }
        let reference = group.join(" ");
        let at16k = resample(&pcm, rate, 16_000).unwrap();
        let heard = stt
            .transcribe(TranscriptionRequest::new(at16k).with_deadline(deadline()))
            .unwrap();
        // the telephone path: 8 kHz, G.711 µ-law both ways, back up to 16 kHz
        let phone16k = speech::voip_16k(&pcm, rate, Law::Ulaw);
        let heard_phone = stt
            .transcribe(TranscriptionRequest::new(phone16k).with_deadline(deadline()))
            .unwrap();
        // the analogue line's 300-3400 Hz band on top
        let band16k = speech::telephone_16k(&f32_to_i16(&pcm), Some(Law::Ulaw));
        let heard_band = stt
            .transcribe(TranscriptionRequest::new(band16k).with_deadline(deadline()))
            .unwrap();
        let (e_wide, n) = speech::wer(&reference, &heard.text);
        let (e_phone, _) = speech::wer(&reference, &heard_phone.text);
        let (e_band, _) = speech::wer(&reference, &heard_band.text);
        eprintln!(
            "said:        {reference}\n22.05 kHz:   {} [{e_wide}/{n}]\n8 kHz G.711: {} [{e_phone}/{n}]\n300-3400 Hz: {} [{e_band}/{n}]",
            heard.text, heard_phone.text, heard_band.text
        );
        errors_wide += e_wide;
        errors_phone += e_phone;
        errors_band += e_band;
        words += n;
    }
    let wer_wide = errors_wide as f64 / words as f64;
    let wer_phone = errors_phone as f64 / words as f64;
    let wer_band = errors_band as f64 / words as f64;
    eprintln!(
        "WER over {} replies ({words} words): {:.1} % at 22.05 kHz, {:.1} % after 8 kHz G.711, {:.1} % through 300-3400 Hz",
        REPLIES.len(),
        wer_wide * 100.0,
        wer_phone * 100.0,
        wer_band * 100.0
    );
    assert!(wer_wide <= 0.15, "WER {:.1} %", wer_wide * 100.0);
    assert!(wer_phone <= 0.15, "telephone WER {:.1} %", wer_phone * 100.0);
    // Not a goal of the issue (a VoIP call has no 300 Hz high-pass); measured 15.8 %.
    assert!(wer_band <= 0.20, "300-3400 Hz WER {:.1} %", wer_band * 100.0);
    assert!(engine.shutdown(soon()).worker_joined);
    stt.shutdown(soon());
}
