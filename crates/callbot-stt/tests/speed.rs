#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// One FFI call: getrusage, for the CPU time of each variant.
#![allow(unsafe_code)]
//! Where the time of one phone-turn transcription goes, and what whisper.cpp settings change
//! it: a timing report, not an assertion (run by hand; it prints tables).
//!
//! ```sh
//! CALLBOT_WHISPER_MODEL=../shared/models/ggml-tiny.en.bin \
//!   cargo test --release -p callbot-stt --test speed -- --ignored --nocapture
//! ```
//! (plain `cargo test`: under load the report can outlast nextest's timeout for heavy tests).
//!
//! On the 3-4 s test sentences (espeak-ng, several voices, clean 16 kHz, with the handle's
//! 0.5 s of trailing silence and its automatic window) it measures:
//! - whisper state creation (`whisper_init_state`), and the mel / encoder / decoder split
//!   of one job;
//! - a direct whisper-rs call per variant (threads, flash attention, a reused state,
//!   timestamps, temperature fallback, beam search): median wall time, CPU time of the process per job
//!   (all threads; spinning counts) and WER, since a faster variant is only worth having
//!   at the same WER;
//! - the same utterances through `WhisperTranscriber` (utterance end to text).
//!
//! Everything is interleaved per clip, so a change of machine load hits every variant
//! alike; still, print the load average with the figures (the table does). Build-flag
//! comparisons (e.g. `GGML_NATIVE=ON`) need a second build: run this test from two target
//! directories (`CARGO_TARGET_DIR`) one after the other, and compare the CPU column.
//!
//! `CALLBOT_SPEED_VARIANTS` (comma-separated words) runs only the variants whose name
//! contains one of them. `CALLBOT_SPEED_ROUNDS` (default 2) sets how many times every clip runs per variant.

mod common;

use std::time::{Duration, Instant};

use callbot_stt::{Transcriber, TranscriptionRequest, WhisperConfig, WhisperTranscriber};
use callbot_testkit::speech::{self, SENTENCES};
use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters};

/// The handle's trailing silence (0.5 s) and automatic window for 3-4 s turns.
const PAD: usize = 8_000;
const THREADS: i32 = 2;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One way of calling whisper.
struct Variant {
    name: &'static str,
    flash: bool,
    threads: i32,
    no_timestamps: bool,
    no_fallback: bool,
    /// One state reused for every job instead of a fresh one per job (created untimed, as
    /// the handle's worker does between jobs). A reused state's results depend on earlier
    /// jobs (the temperature fallback's random generator lives in the state).
    reuse_state: bool,
    /// Beam search with this many beams instead of greedy decoding.
    beam: Option<i32>,
}

const fn variant(name: &'static str, flash: bool, threads: i32) -> Variant {
    Variant {
        name,
        flash,
        threads,
        no_timestamps: false,
        no_fallback: false,
        reuse_state: false,
        beam: None,
    }
}

const VARIANTS: &[Variant] = &[
    variant("handle settings (2 thr)", false, THREADS),
    variant("flash attention (2 thr)", true, THREADS),
    variant("1 thread", false, 1),
    variant("flash attention (1 thr)", true, 1),
    Variant {
        reuse_state: true,
        ..variant("reused state (2 thr)", false, THREADS)
    },
    Variant {
        no_timestamps: true,
        ..variant("no timestamps (2 thr)", false, THREADS)
    },
    Variant {
        no_fallback: true,
        ..variant("no temp. fallback (2 thr)", false, THREADS)
    },
    Variant {
        beam: Some(5),
        ..variant("beam search 5 (2 thr)", false, THREADS)
    },
    Variant {
        beam: Some(3),
        ..variant("beam search 3 (2 thr)", false, THREADS)
    },
];

/// CPU time of this process so far (all threads, also the ones that have ended).
fn cpu_time() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the buffer it is given.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv =
        |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn params(v: &Variant, audio_ctx: u16) -> FullParams<'static, 'static> {
    let strategy = match v.beam {
        Some(beam_size) => SamplingStrategy::BeamSearch {
            beam_size,
            patience: -1.0,
        },
        None => SamplingStrategy::Greedy { best_of: 1 },
    };
    let mut p = common::handle_params(strategy, v.threads, audio_ctx);
    p.set_no_timestamps(v.no_timestamps);
    if v.no_fallback {
        p.set_temperature_inc(0.0);
    }
    p
}

fn context(model: &std::path::Path, flash: bool) -> WhisperContext {
    let mut p = WhisperContextParameters::default();
    p.use_gpu(false);
    p.flash_attn(flash);
    WhisperContext::new_with_params(model, p).unwrap()
}

#[test]
#[ignore = "timing report, run by hand (see the file's doc)"]
fn heavy_speed_report() {
    let Some(model) = callbot_testkit::whisper_model() else {
        return;
    };
    let rounds: usize = std::env::var("CALLBOT_SPEED_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    // (reference, audio as submitted, audio as whisper sees it)
    let clips: Vec<(&str, Vec<f32>, Vec<f32>)> = SENTENCES
        .iter()
        .filter_map(|s| {
            let audio = speech::to_16k(&speech::espeak(s.text, s.voice)?);
            let secs = audio.len() as f64 / 16_000.0;
            (3.0..=4.0).contains(&secs).then(|| {
                let mut padded = audio.clone();
                padded.resize(audio.len() + PAD, 0.0);
                (s.text, audio, padded)
            })
        })
        .collect();
    assert!(clips.len() >= 5, "{} clips of 3-4 s", clips.len());
    eprintln!(
        "{} clips of 3-4 s, {rounds} rounds, load {}",
        clips.len(),
        load_avg()
    );

    let mut config = WhisperConfig::new(&model);
    config.workers = 1;
    config.threads_per_job = 2;
    let mut stt = WhisperTranscriber::new(config).unwrap();
    let audio_ctx = stt.audio_ctx_for(clips[0].1.len());
    assert!(clips.iter().all(|c| stt.audio_ctx_for(c.1.len()) == audio_ctx));

    let plain = context(&model, false);
    let flash = context(&model, true);

    // State creation.
    let mut create = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let st = plain.create_state().unwrap();
        create.push(ms(t.elapsed()));
        drop(st);
    }
    eprintln!(
        "whisper_init_state: median {:.1} ms (min {:.1}, max {:.1})",
        median(&create),
        create.iter().copied().fold(f64::INFINITY, f64::min),
        create.iter().copied().fold(0.0, f64::max)
    );

    // Split of one job: mel, encoder (window set by a first full call), full.
    {
        let v = &VARIANTS[0];
        let mut st = plain.create_state().unwrap();
        let (mut mel, mut enc, mut full) = (Vec::new(), Vec::new(), Vec::new());
        {
            for (_, _, padded) in &clips {
                let t = Instant::now();
                st.full(params(v, audio_ctx), padded).unwrap();
                full.push(ms(t.elapsed()));
                let t = Instant::now();
                st.pcm_to_mel(padded, 2).unwrap();
                mel.push(ms(t.elapsed()));
                let t = Instant::now();
                st.encode(0, 2).unwrap();
                enc.push(ms(t.elapsed()));
            }
        }
        eprintln!(
            "one job (window {audio_ctx}, 2 threads), medians: full {:.1} ms = mel {:.1} ms + encoder {:.1} ms + decoder and rest {:.1} ms",
            median(&full),
            median(&mel),
            median(&enc),
            median(&full) - median(&mel) - median(&enc)
        );
    }

    // Variants, interleaved: round r runs every variant on every clip.
    // `CALLBOT_SPEED_VARIANTS`: comma-separated words; a variant runs when its name
    // contains one of them (all by default).
    let only: Vec<String> = std::env::var("CALLBOT_SPEED_VARIANTS")
        .map(|s| s.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let selected = |v: &Variant| only.is_empty() || only.iter().any(|w| v.name.contains(w.as_str()));
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    let mut cpu = vec![Duration::ZERO; VARIANTS.len()];
    let mut errors = vec![(0usize, 0usize); VARIANTS.len()];
    let mut handle_times = Vec::new();
    let mut handle_errors = (0usize, 0usize);
    let mut reused = plain.create_state().unwrap();
    // Interleaved per clip, so a change of machine load hits every variant alike.
    for round in 0..rounds {
        for (reference, audio, padded) in &clips {
            for (i, v) in VARIANTS.iter().enumerate().filter(|(_, v)| selected(v)) {
                let ctx = if v.flash { &flash } else { &plain };
                let mut fresh = (!v.reuse_state).then(|| ctx.create_state().unwrap());
                let st = fresh.as_mut().unwrap_or(&mut reused);
                let (t, c) = (Instant::now(), cpu_time());
                st.full(params(v, audio_ctx), padded).unwrap();
                times[i].push(ms(t.elapsed()));
                cpu[i] += cpu_time() - c;
                if round == 0 {
                    let (e, n) = speech::wer(reference, &common::state_text(st));
                    errors[i].0 += e;
                    errors[i].1 += n;
                }
            }
            let r = stt.transcribe(TranscriptionRequest::new(audio.clone())).unwrap();
            handle_times.push(ms(r.timings.total));
            if round == 0 {
                let (e, n) = speech::wer(reference, &r.text);
                handle_errors.0 += e;
                handle_errors.1 += n;
            }
        }
    }
    eprintln!(
        "\n== 3-4 s clips, window {audio_ctx}, load after: {} ==",
        load_avg()
    );
    eprintln!("variant                      | median ms | ratio | CPU ms/job | WER");
    let base = median(&times[0]);
    for (i, v) in VARIANTS.iter().enumerate().filter(|(_, v)| selected(v)) {
        let m = median(&times[i]);
        eprintln!(
            "{:<28} | {m:9.1} | {:5.2} | {:10.1} | {:.1} % ({}/{})",
            v.name,
            m / base,
            ms(cpu[i]) / times[i].len().max(1) as f64,
            100.0 * errors[i].0 as f64 / errors[i].1.max(1) as f64,
            errors[i].0,
            errors[i].1
        );
    }
    let m = median(&handle_times);
    eprintln!(
        "{:<28} | {m:9.1} | {:5.2} | {:>10} | {:.1} % ({}/{})",
        "handle: utterance end->text",
        m / base,
        "",
        100.0 * handle_errors.0 as f64 / handle_errors.1.max(1) as f64,
        handle_errors.0,
        handle_errors.1
    );
    drop(reused);
    stt.shutdown(Instant::now() + Duration::from_secs(5));
}
