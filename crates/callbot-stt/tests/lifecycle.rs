#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Worker lifecycle with the real tiny.en model: a long job cancelled inside whisper's
//! encoder pass frees its worker at once (whisper.cpp patched to check the abort callback
//! between graph nodes, see `vendor/whisper-rs-sys/PATCHES.md`), an aborted job is not
//! logged as an error, and shutdown aborts a running encoder pass within its grace.
//! (The stuck-worker and valgrind checks need test hooks: `src/lifecycle_tests.rs`.)
//!
//! Every test that runs whisper is named `heavy_` (nextest runs those one at a time).

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use callbot_stt::{
    AudioWindow, SttError, TranscribeOptions, Transcriber, TranscriptionRequest, WhisperConfig,
    WhisperTranscriber,
};
use callbot_testkit::speech::{self, SENTENCES};

mod common;
use common::wait_running;
use whisper_rs::{WhisperContext, WhisperContextParameters};

const THREADS: usize = 2;

fn config(model: &Path) -> WhisperConfig {
    let mut c = WhisperConfig::new(model);
    c.workers = 1;
    c.threads_per_job = THREADS;
    c.default_timeout = Duration::from_secs(240);
    c
}

/// About `secs` seconds of espeak-ng speech (the test sentences one after another), or
/// `None` when espeak-ng is missing.
fn speech_of(secs: usize) -> Option<Vec<f32>> {
    let mut audio = Vec::new();
    for s in SENTENCES.iter().cycle() {
        audio.extend(speech::to_16k(&speech::espeak(s.text, s.voice)?));
        if audio.len() >= 16_000 * secs {
            break;
        }
    }
    audio.truncate(16_000 * secs);
    Some(audio)
}

fn full_window() -> TranscribeOptions {
    TranscribeOptions {
        window: AudioWindow::Full,
        ..TranscribeOptions::default()
    }
}

/// Where whisper's time goes on `audio` right now, measured with whisper-rs directly
/// (same model, threads and full window as the transcriber's job): (log-mel, one encoder pass).
fn phases(ctx: &WhisperContext, audio: &[f32]) -> (Duration, Duration) {
    let mut st = ctx.create_state().unwrap();
    let t0 = Instant::now();
    st.pcm_to_mel(audio, THREADS).unwrap();
    let mel = t0.elapsed();
    let t1 = Instant::now();
    st.encode(0, THREADS).unwrap();
    (mel, t1.elapsed())
}

/// One cancelled job: returns (cancel -> `Cancelled` result, cancel -> next job picked up).
/// When the job ends before the cancel (the machine got faster since the pass was
/// measured), the trial is run again with the cancel brought forward, up to four times.
fn cancel_at(
    stt: &WhisperTranscriber,
    audio: &[f32],
    options: TranscribeOptions,
    mut at: Duration,
) -> (Duration, Duration) {
    for _ in 0..4 {
        if let Some(r) = try_cancel_at(stt, audio, options.clone(), at) {
            return r;
        }
        at = at * 6 / 10;
    }
    panic!("the job ended before every cancel (last at {at:?}): the machine got faster");
}

/// One attempt of [`cancel_at`]: `None` when the job ended before the cancel.
fn try_cancel_at(
    stt: &WhisperTranscriber,
    audio: &[f32],
    options: TranscribeOptions,
    at: Duration,
) -> Option<(Duration, Duration)> {
    let job = stt
        .submit(TranscriptionRequest::new(audio.to_vec()).with_options(options))
        .unwrap();
    let started = wait_running(stt);
    std::thread::sleep((started + at).saturating_duration_since(Instant::now()));
    if stt.running() == 0 {
        eprintln!("the job ended before the cancel at {at:?}: trying again earlier");
        let _ = job.wait();
        return None;
    }
    let next = stt
        .submit(TranscriptionRequest::new(audio[..16_000 * 3].to_vec()))
        .unwrap();
    let cancelled = Instant::now();
    job.cancel();
    let result = job.wait();
    let answered = cancelled.elapsed();
    assert!(matches!(result, Err(SttError::Cancelled)), "{result:?}");
    let t = next.wait().unwrap();
    assert!(!t.text.is_empty(), "the worker serves the next job");
    // Queued a few microseconds before the cancel: its wait for the worker is (an upper
    // bound of) the time the worker took to become free.
    Some((answered, t.timings.queued))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Captures every `tracing` event of the process (level, target, message).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<(tracing::Level, String, String)>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        let meta = event.metadata();
        self.0
            .lock()
            .unwrap()
            .push((*meta.level(), meta.target().to_owned(), m.0));
    }
}

/// The process-wide capture (installed once; nextest runs each test in its own process).
fn captured() -> Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            use tracing_subscriber::layer::SubscriberExt;
            let c = Captured::default();
            let subscriber = tracing_subscriber::registry().with(c.clone());
            tracing::subscriber::set_global_default(subscriber).unwrap();
            c
        })
        .clone()
}

/// The goal: a long job cancelled mid-way frees its worker within 100 ms. The
/// cancel is timed to land in the middle of whisper's encoder pass over a 25 s utterance
/// (full 30 s window), the pass that whisper.cpp 1.8.3 could not interrupt (0.5-2 s here
/// before the patch), then in the decoding that follows it, then in the language-detection
/// pass of `language: "auto"`.
#[test]
fn heavy_cancel_inside_the_encoder_frees_the_worker_at_once() {
    let Some(model) = callbot_testkit::whisper_model() else {
        return;
    };
    let Some(audio) = speech_of(25) else { return };
    let logs = captured();
    let mut params = WhisperContextParameters::default();
    params.use_gpu(false);
    let ctx = WhisperContext::new_with_params(&model, params).unwrap();
    let mut stt = WhisperTranscriber::new(config(&model)).unwrap();

    let trials = 3;
    let (mut enc_answer, mut enc_free, mut encoder_passes) = (Vec::new(), Vec::new(), Vec::new());
    let (mut mel, mut encode) = (Duration::ZERO, Duration::ZERO);
    for i in 0..trials {
        // Measured again every other trial: machine load changes the pass length.
        if i % 2 == 0 {
            (mel, encode) = phases(&ctx, &audio);
            encoder_passes.push(encode);
        }
        let (answered, freed) = cancel_at(&stt, &audio, full_window(), mel + encode / 2);
        enc_answer.push(answered);
        enc_free.push(freed);
    }
    let (mel, encode) = phases(&ctx, &audio);
    encoder_passes.push(encode);
    let (mut dec_answer, mut dec_free) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        // Decoding a 25 s utterance takes several encoder passes' time.
        let (answered, freed) = cancel_at(&stt, &audio, full_window(), mel + encode + encode / 2);
        dec_answer.push(answered);
        dec_free.push(freed);
    }
    // `language: "auto"` runs a language-detection encoder pass first (tiny.en too).
    let auto = TranscribeOptions {
        language: "auto".into(),
        ..full_window()
    };
    let mut auto_answer = Vec::new();
    for _ in 0..2 {
        auto_answer.push(cancel_at(&stt, &audio, auto.clone(), mel + encode / 2).0);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let pass = median(encoder_passes.clone());
    eprintln!(
        "cancel inside the encoder pass (median pass {pass:?}, {trials} trials): Cancelled after median {:?} max {:?}; worker free after median {:?} max {:?}",
        median(enc_answer.clone()),
        enc_answer.iter().max().unwrap(),
        median(enc_free.clone()),
        enc_free.iter().max().unwrap(),
    );
    eprintln!(
        "cancel while decoding (2 trials): Cancelled after median {:?} max {:?}; worker free after median {:?} max {:?}; inside language detection: Cancelled after {auto_answer:?}; load average {}",
        median(dec_answer.clone()),
        dec_answer.iter().max().unwrap(),
        median(dec_free.clone()),
        dec_free.iter().max().unwrap(),
        load.trim(),
    );
    // An aborted job is a cancellation, not a failure: whisper.cpp's "failed to encode"
    // line is logged at debug, and nothing at error.
    let events = logs.0.lock().unwrap().clone();
    let errors: Vec<_> = events
        .iter()
        .filter(|(l, _, _)| *l == tracing::Level::ERROR)
        .collect();
    assert!(errors.is_empty(), "errors logged: {errors:?}");
    assert!(
        events.iter().any(|(l, t, m)| *l == tracing::Level::DEBUG
            && t == "whisper_cpp"
            && m.contains("failed to encode")),
        "no aborted encoder pass seen"
    );
    // Without the patch a cancel in the middle of the pass waits for its second half
    // (pass / 2). Compared within this run, so machine load cancels out: the issue's
    // 100 ms is the figure on an idle machine (a pass of about 1 s; the abort lands after
    // the graph node running at the cancel), which a loaded one scales several times.
    let shortest = *encoder_passes.iter().min().unwrap();
    for (i, a) in enc_answer
        .iter()
        .chain(&dec_answer)
        .chain(&auto_answer)
        .enumerate()
    {
        assert!(
            *a < shortest / 4,
            "trial {i}: cancelled after {a:?}, pass {shortest:?}"
        );
    }
    assert!(
        median(enc_free.clone()) < shortest / 10,
        "worker free after {enc_free:?}, pass {shortest:?}"
    );
    let report = stt.shutdown(Instant::now() + Duration::from_secs(5));
    assert!(report.model_freed, "{report:?}");
}

/// Shutdown reaching its deadline aborts the running job inside its encoder pass: the
/// report says the abort happened and how long the job took to stop (a fraction of the
/// pass it interrupted), every worker is joined and the model freed.
#[test]
fn heavy_shutdown_aborts_inside_the_encoder_within_grace() {
    let Some(model) = callbot_testkit::whisper_model() else {
        return;
    };
    let Some(audio) = speech_of(25) else { return };
    let threads = callbot_testkit::resources::threads();
    let mut params = WhisperContextParameters::default();
    params.use_gpu(false);
    let ctx = WhisperContext::new_with_params(&model, params).unwrap();
    let (mel, pass) = phases(&ctx, &audio);
    drop(ctx);
    let mut c = config(&model);
    c.abort_grace = pass;
    let mut stt = WhisperTranscriber::new(c).unwrap();
    let job = stt
        .submit(TranscriptionRequest::new(audio).with_options(full_window()))
        .unwrap();
    let started = wait_running(&stt);
    // Into the encoder pass.
    std::thread::sleep((started + mel + pass / 3).saturating_duration_since(Instant::now()));
    let report = stt.shutdown(Instant::now());
    eprintln!("encoder pass {pass:?}: {report:?}");
    assert!(matches!(job.wait(), Err(SttError::Cancelled)));
    assert_eq!(report.running_aborted, 1, "{report:?}");
    assert_eq!(report.running_finished, 0, "{report:?}");
    assert_eq!(report.workers_joined, 1, "{report:?}");
    assert_eq!(report.workers_not_joined, 0, "{report:?}");
    assert!(report.model_freed, "{report:?}");
    // Unpatched, the job would have run to the end of the pass (2/3 of it).
    let stopped = report.abort_latency.expect("an abort was signalled");
    assert!(stopped < pass / 4, "pass {pass:?}: {report:?}");
    assert_eq!(callbot_testkit::resources::threads(), threads);
}
