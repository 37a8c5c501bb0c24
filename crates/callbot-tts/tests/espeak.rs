#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! EspeakSynthesizer against the real libespeak-ng.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use callbot_tts::{
    AudioFrame, EspeakConfig, EspeakSynthesizer, SynthesisEvent, SynthesisJob, SynthesizedAudio, Synthesizer,
    TtsError, VoiceOptions,
};

/// One engine per process: tests of this binary take turns when run by `cargo test`
/// (nextest runs each in its own process anyway).
static ENGINE_LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    ENGINE_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn start(config: EspeakConfig) -> EspeakSynthesizer {
    EspeakSynthesizer::start(config).expect("start espeak")
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

/// `text` spoken by `engine` with `options`, whole.
fn say(engine: &EspeakSynthesizer, text: &str, options: &VoiceOptions) -> SynthesizedAudio {
    engine.synthesize(text, options).unwrap().collect(soon()).unwrap()
}

/// The next chunk of `job`'s audio (within 10 s).
fn next_chunk(job: &mut SynthesisJob) -> AudioFrame {
    job.recv_timeout(Duration::from_secs(10)).unwrap().unwrap()
}

const SENTENCE: &str = "The quick brown fox jumps over the lazy dog near the river.";

fn long_text() -> String {
    (0..30)
        .map(|i| format!("This is sentence number {i} of a rather long reply. "))
        .collect()
}

/// espeak-ng's output length varies between runs of the same text (up to ~900 samples,
/// 40 ms, seen on "Hello there."), so "the same audio" means a length within 5 % or
/// 100 ms and audible speech; a leak of another job's audio would add whole seconds.
fn same_speech(a: &[i16], b: &[i16]) -> bool {
    let (la, lb) = (a.len() as f64, b.len() as f64);
    let tolerance = (0.05 * la.max(lb)).max(2205.0);
    (la - lb).abs() <= tolerance && rms(a) > 300.0 && rms(b) > 300.0
}

fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len() as f64).sqrt()
}

#[test]
fn synthesizes_audible_speech_in_chunks_at_the_engine_rate() {
    let _g = lock();
    let mut engine = start(EspeakConfig {
        chunk_ms: 20,
        ..Default::default()
    });
    assert_eq!(engine.sample_rate(), 22_050);
    let mut job = engine.synthesize(SENTENCE, &engine.default_options()).unwrap();
    assert_eq!(job.sample_rate(), 22_050);
    let mut samples = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = job.recv_timeout(Duration::from_secs(10)).unwrap() {
        assert_eq!(chunk.sample_rate, 22_050);
        assert!(!chunk.samples.is_empty());
        // espeak hands over buffers of at most chunk_ms of audio
        assert!(
            chunk.samples.len() <= 22_050 * 20 / 1000 + 1,
            "{}",
            chunk.samples.len()
        );
        samples.extend_from_slice(&chunk.samples);
        chunks += 1;
    }
    let summary = job.summary().unwrap();
    assert_eq!(summary.samples, samples.len() as u64);
    assert_eq!(summary.chunks, chunks);
    assert!(summary.first_chunk_after.is_some());
    // 11 words at the default 140 wpm: about 4-5 s (with the end pause)
    let secs = samples.len() as f64 / 22_050.0;
    assert!((3.0..9.0).contains(&secs), "{secs} s");
    assert!(rms(&samples) > 500.0, "rms {}", rms(&samples));
    let report = engine.shutdown(soon());
    assert!(report.worker_joined && !report.timed_out, "{report:?}");
    assert_eq!(report.requests_served, 1);
}

#[test]
fn rate_voice_and_volume_change_the_audio() {
    let _g = lock();
    let engine = start(EspeakConfig::default());
    let sentence = |o: &VoiceOptions| say(&engine, SENTENCE, o);
    // espeak-ng's normal rate (the default options speak slower, at 140 wpm).
    let at_175 = VoiceOptions {
        rate_wpm: 175,
        ..Default::default()
    };
    let normal = sentence(&at_175);
    let fast = sentence(&VoiceOptions {
        rate_wpm: 350,
        ..at_175.clone()
    });
    let slow = sentence(&VoiceOptions {
        rate_wpm: 100,
        ..at_175.clone()
    });
    assert!(
        fast.samples.len() * 3 < normal.samples.len() * 2,
        "{} vs {}",
        fast.samples.len(),
        normal.samples.len()
    );
    assert!(slow.samples.len() > normal.samples.len() * 3 / 2);
    let quiet = sentence(&VoiceOptions {
        volume: 30,
        ..at_175.clone()
    });
    assert!(rms(&quiet.samples) * 2.0 < rms(&normal.samples));
    let other_voice = sentence(&VoiceOptions {
        voice: "en".into(),
        ..at_175.clone()
    });
    assert!(other_voice.samples != normal.samples);
    // Same text and options: the same speech (no state leaks between requests).
    assert!(same_speech(&sentence(&at_175).samples, &normal.samples));
    // An unknown voice is a typed error and does not break the engine.
    let err = engine
        .synthesize(
            SENTENCE,
            &VoiceOptions {
                voice: "no-such-voice".into(),
                ..Default::default()
            },
        )
        .unwrap()
        .collect(soon())
        .unwrap_err();
    assert_eq!(err, TtsError::VoiceNotFound("no-such-voice".into()));
    assert!(same_speech(&sentence(&at_175).samples, &normal.samples));
}

#[test]
fn input_is_checked_before_queueing() {
    let _g = lock();
    let engine = start(EspeakConfig {
        max_text_bytes: 100,
        ..Default::default()
    });
    let o = VoiceOptions::default();
    assert_eq!(engine.synthesize("   ", &o).unwrap_err(), TtsError::EmptyText);
    assert_eq!(
        engine.synthesize(&"a".repeat(101), &o).unwrap_err(),
        TtsError::TextTooLong { len: 101, max: 100 }
    );
    assert!(matches!(
        engine.synthesize("a\0b", &o),
        Err(TtsError::InvalidText(_))
    ));
    assert!(matches!(
        engine.synthesize(
            "hi",
            &VoiceOptions {
                rate_wpm: 10,
                ..Default::default()
            }
        ),
        Err(TtsError::InvalidOption(_))
    ));
    // SSML is off: tags are spoken as text ("speak ... slash speak"), not interpreted.
    let plain = engine
        .synthesize("hello there", &o)
        .unwrap()
        .collect(soon())
        .unwrap();
    let markup = engine
        .synthesize("<speak>hello there</speak>", &o)
        .unwrap()
        .collect(soon())
        .unwrap();
    assert!(
        markup.duration() > plain.duration() + Duration::from_millis(500),
        "{:?} vs {:?}: markup was interpreted",
        markup.duration(),
        plain.duration()
    );
}

#[test]
fn one_engine_per_process_and_restart_after_shutdown() {
    let _g = lock();
    let mut first = start(EspeakConfig::default());
    assert_eq!(
        EspeakSynthesizer::start(EspeakConfig::default()).unwrap_err(),
        TtsError::AlreadyRunning
    );
    let client = first.client();
    let a = client
        .synthesize("first engine", &client.default_options())
        .unwrap()
        .collect(soon())
        .unwrap();
    let report = first.shutdown(soon());
    assert!(
        report.worker_joined && !report.already_shut_down && !report.timed_out,
        "{report:?}"
    );
    assert!(first.shutdown(soon()).already_shut_down, "idempotent");
    assert!(!first.is_running());
    // Clients of a stopped engine fail at once.
    assert_eq!(
        client.synthesize("hello", &VoiceOptions::default()).unwrap_err(),
        TtsError::EngineStopped
    );
    assert_eq!(
        first.synthesize("hello", &VoiceOptions::default()).unwrap_err(),
        TtsError::EngineStopped
    );
    drop(first);
    // A new engine starts in the same process and works the same.
    let second = start(EspeakConfig::default());
    let b = second
        .synthesize("first engine", &second.default_options())
        .unwrap()
        .collect(soon())
        .unwrap();
    assert!(same_speech(&a.samples, &b.samples));
    drop(second); // Drop shuts down too
    let third = start(EspeakConfig::default());
    drop(third);
}

#[test]
fn cancel_mid_synthesis_frees_the_worker() {
    let _g = lock();
    // A 2-chunk channel: the worker is blocked inside espeak_Synth waiting for room.
    let engine = start(EspeakConfig {
        chunk_queue: 2,
        ..Default::default()
    });
    let o = engine.default_options();
    let mut job = engine.synthesize(&long_text(), &o).unwrap();
    let first = next_chunk(&mut job);
    assert!(!first.samples.is_empty());
    std::thread::sleep(Duration::from_millis(50)); // let the worker fill the channel
    assert_eq!(job.events().len(), 2);
    let t = Instant::now();
    job.cancel();
    // Drain: at most the queued chunks, then the end.
    let mut after = 0;
    let end = loop {
        match job.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(_)) => after += 1,
            other => break other,
        }
    };
    assert_eq!(end, Err(TtsError::Cancelled));
    assert_eq!(after, 0, "{after} chunks after cancel");
    // The next request is served at once and completely.
    let next = say(&engine, SENTENCE, &o);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(next.duration() > Duration::from_secs(2));
    // A job cancelled while still queued never starts.
    let (blocker, queued) = (
        engine.synthesize(&long_text(), &o).unwrap(),
        engine.synthesize(SENTENCE, &o).unwrap(),
    );
    queued.cancel();
    drop(blocker);
    let mut queued = queued;
    assert_eq!(
        queued.recv_timeout(Duration::from_secs(10)),
        Err(TtsError::Cancelled)
    );
    let again = say(&engine, SENTENCE, &o);
    assert!(same_speech(&again.samples, &next.samples));
}

#[test]
fn dropping_a_job_mid_stream_stops_it_and_the_next_works() {
    let _g = lock();
    let mut engine = start(EspeakConfig {
        chunk_queue: 4,
        ..Default::default()
    });
    let o = engine.default_options();
    let reference = say(&engine, SENTENCE, &o);
    for _ in 0..20 {
        let mut job = engine.synthesize(&long_text(), &o).unwrap();
        for _ in 0..3 {
            next_chunk(&mut job);
        }
        drop(job);
        let next = say(&engine, SENTENCE, &o);
        assert!(
            same_speech(&next.samples, &reference.samples),
            "{} vs {}",
            next.samples.len(),
            reference.samples.len()
        );
    }
    let report = engine.shutdown(soon());
    assert_eq!(report.requests_served, 41);
    assert!(!report.running_cancelled);
}

#[test]
fn a_stalled_consumer_loses_its_job_and_does_not_starve_others() {
    let _g = lock();
    let engine = start(EspeakConfig {
        chunk_queue: 1,
        consumer_timeout: Duration::from_millis(200),
        ..Default::default()
    });
    let o = engine.default_options();
    let mut stalled = engine.synthesize(&long_text(), &o).unwrap();
    let t = Instant::now();
    let other = say(&engine, SENTENCE, &o);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!other.samples.is_empty());
    let mut events = Vec::new();
    while let Ok(e) = stalled.events().try_recv() {
        events.push(e);
    }
    assert!(matches!(events.first(), Some(SynthesisEvent::Chunk(_))));
    assert_eq!(
        stalled.recv_timeout(Duration::from_secs(5)),
        Err(TtsError::ConsumerStalled(Duration::from_millis(200)))
    );
}

#[test]
fn a_full_request_queue_is_an_error_not_a_wait() {
    let _g = lock();
    let engine = start(EspeakConfig {
        chunk_queue: 1,
        request_queue: 2,
        ..Default::default()
    });
    let o = engine.default_options();
    let mut blocker = engine.synthesize(&long_text(), &o).unwrap();
    next_chunk(&mut blocker); // worker busy now
    let q1 = engine.synthesize(SENTENCE, &o).unwrap();
    let q2 = engine.synthesize(SENTENCE, &o).unwrap();
    let t = Instant::now();
    assert_eq!(
        engine.synthesize(SENTENCE, &o).unwrap_err(),
        TtsError::QueueFull { capacity: 2 }
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(blocker);
    for job in [q1, q2] {
        assert!(job.collect(soon()).unwrap().duration() > Duration::from_secs(2));
    }
}

#[test]
fn shutdown_fails_queued_and_aborts_running_within_the_deadline() {
    let _g = lock();
    let mut engine = start(EspeakConfig {
        chunk_queue: 1,
        ..Default::default()
    });
    let o = engine.default_options();
    let mut running = engine.synthesize(&long_text(), &o).unwrap();
    next_chunk(&mut running);
    std::thread::sleep(Duration::from_millis(50)); // the worker waits for room now
    let mut queued: Vec<_> = (0..3).map(|_| engine.synthesize(SENTENCE, &o).unwrap()).collect();
    let t = Instant::now();
    let report = engine.shutdown(Instant::now() + Duration::from_secs(2));
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(report.worker_joined && !report.timed_out, "{report:?}");
    assert!(report.running_cancelled, "{report:?}");
    assert_eq!(report.queued_cancelled, 3);
    for job in &mut queued {
        assert_eq!(
            job.recv_timeout(Duration::from_secs(1)),
            Err(TtsError::EngineStopped)
        );
    }
    let end = loop {
        match running.recv_timeout(Duration::from_secs(1)) {
            Ok(Some(_)) => {}
            other => break other,
        }
    };
    assert_eq!(end, Err(TtsError::EngineStopped));
}

#[test]
fn many_concurrent_requests_from_several_threads() {
    let _g = lock();
    let mut engine = start(EspeakConfig::default());
    let texts = [
        "Hello there.",
        "Your appointment is on Monday at ten.",
        "Goodbye and thank you for calling.",
    ];
    let o = engine.default_options();
    let reference: Vec<Vec<i16>> = texts.iter().map(|t| say(&engine, t, &o).samples).collect();
    std::thread::scope(|s| {
        for worker in 0..6 {
            let client = engine.client();
            let (o, reference) = (o.clone(), &reference);
            s.spawn(move || {
                for i in 0..8 {
                    let k = (worker + i) % texts.len();
                    let mut job = loop {
                        match client.synthesize(texts[k], &o) {
                            Ok(job) => break job,
                            Err(TtsError::QueueFull { .. }) => std::thread::sleep(Duration::from_millis(5)),
                            Err(e) => panic!("{e}"),
                        }
                    };
                    let mut got = Vec::new();
                    while let Some(chunk) = job.recv_timeout(Duration::from_secs(20)).unwrap() {
                        got.extend_from_slice(&chunk.samples);
                    }
                    assert!(
                        same_speech(&got, &reference[k]),
                        "thread {worker} request {i}: {} samples, expected about {}",
                        got.len(),
                        reference[k].len()
                    );
                }
            });
        }
    });
    let report = engine.shutdown(soon());
    assert_eq!(report.requests_served, 3 + 6 * 8);
}
