//! Speech to text (callbot-stt with the real Whisper model).
//!
//! ```sh
//! CALLBOT_WHISPER_MODEL=../shared/models/ggml-tiny.en.bin cargo bench -p callbot-benches --bench stt
//! ```
//!
//! Without `CALLBOT_WHISPER_MODEL` it prints SKIP and exits (CI only builds benches).
//! It prints four tables, then runs criterion:
//! 1. Encoder windows: WER on the test sentences (espeak-ng, several voices, clean 16 kHz
//!    and telephone band) and utterance-end-to-text latency (submission at the end of the
//!    utterance until the text is back) per window policy. `CALLBOT_STT_WINDOWS` picks
//!    the policies (`full,auto,256,384,512`, the default).
//! 2. Overhead of the handle: the same utterances with the same settings through
//!    `WhisperTranscriber` and through a direct whisper-rs call, interleaved in one run;
//!    the ratio of the totals (goal <= 1.05).
//! 3. The cost of the 0.5 s of trailing silence the handle appends (direct calls with and
//!    without it, interleaved).
//! 4. criterion: `stt/handle` vs `stt/direct` on one 3-4 s utterance.
//!
//! `CALLBOT_STT_BENCH=windows|overhead|padding|criterion` runs one part only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use callbot_audio::g711::Law;
use callbot_stt::{
    AudioWindow, TranscribeOptions, Transcriber, TranscriptionRequest, WhisperConfig, WhisperTranscriber,
};
use callbot_testkit::speech::{self, SENTENCES};
use criterion::Criterion;
use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters};

const THREADS: usize = 2;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn parse_window(s: &str) -> Option<AudioWindow> {
    match s.trim() {
        "full" => Some(AudioWindow::Full),
        "auto" => Some(AudioWindow::Auto),
        n => n.parse().ok().map(AudioWindow::Frames),
    }
}

fn windows_table(stt: &WhisperTranscriber, clean: &[(&str, Vec<f32>)], phone: &[(&str, Vec<f32>)]) {
    let windows: Vec<AudioWindow> = std::env::var("CALLBOT_STT_WINDOWS")
        .unwrap_or_else(|_| "full,auto,256,384,512".into())
        .split(',')
        .filter_map(parse_window)
        .collect();
    println!("\n== encoder window: WER and utterance end to text ({THREADS} threads, greedy) ==");
    println!("window      | clean WER        | phone WER        | median s (all) | median s (3-4 s clips)");
    for window in windows {
        let options = TranscribeOptions {
            window,
            ..TranscribeOptions::default()
        };
        let mut row = Vec::new();
        let mut lat_all = Vec::new();
        let mut lat_34 = Vec::new();
        for (set, clips) in [("clean", clean), ("phone", phone)] {
            let (mut e, mut n) = (0, 0);
            for (text, audio) in clips {
                let t = stt
                    .transcribe(TranscriptionRequest::new(audio.clone()).with_options(options.clone()))
                    .unwrap();
                let (ei, ni) = speech::wer(text, &t.text);
                e += ei;
                n += ni;
                if set == "clean" {
                    let secs = t.timings.total.as_secs_f64();
                    lat_all.push(secs);
                    if (3.0..=4.0).contains(&t.audio.as_secs_f64()) {
                        lat_34.push(secs);
                    }
                }
                if std::env::var_os("CALLBOT_STT_VERBOSE").is_some() {
                    println!(
                        "  {window:?} {set} [{ei}/{ni}] {:.2} s: {:?}",
                        t.audio.as_secs_f64(),
                        t.text
                    );
                }
            }
            #[allow(clippy::cast_precision_loss)]
            row.push(format!("{:5.1} % ({e:3}/{n:3})", 100.0 * e as f64 / n as f64));
        }
        println!(
            "{:<11} | {} | {} | {:14.3} | {:.3} (n={})",
            format!("{window:?}"),
            row[0],
            row[1],
            median(lat_all),
            median(lat_34.clone()),
            lat_34.len()
        );
    }
}

struct Direct {
    state: std::cell::RefCell<whisper_rs::WhisperState>,
}

impl Direct {
    /// The same settings the handle uses: greedy best_of 1, English, no context,
    /// printing off, `audio_ctx` as the handle's auto window, 2 threads, and the 0.5 s of
    /// trailing silence the handle appends. One state reused across calls.
    fn run(&self, audio: &[f32], audio_ctx: u16) -> String {
        self.run_padded(audio, audio_ctx, 8_000)
    }

    /// [`Direct::run`] with `pad` samples of trailing silence instead of 0.5 s.
    fn run_padded(&self, audio: &[f32], audio_ctx: u16, pad: usize) -> String {
        let mut state = self.state.borrow_mut();
        let mut audio = audio.to_vec();
        audio.resize(audio.len() + pad, 0.0);
        let mut p = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        p.set_n_threads(THREADS as i32);
        p.set_audio_ctx(i32::from(audio_ctx));
        p.set_no_context(true);
        p.set_print_progress(false);
        p.set_print_realtime(false);
        p.set_print_timestamps(false);
        p.set_print_special(false);
        state.full(p, &audio).unwrap();
        let mut text = String::new();
        for seg in state.as_iter() {
            text.push_str(seg.to_str_lossy().unwrap().trim());
        }
        text
    }
}

fn overhead_table(stt: &WhisperTranscriber, direct: &Direct, clips: &[Vec<f32>]) {
    let rounds: usize = std::env::var("CALLBOT_STT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (mut h_total, mut d_total) = (0.0, 0.0);
    let (mut h_all, mut d_all) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for audio in clips {
            let ctx = stt.audio_ctx_for(audio.len());
            // Alternate which goes first so drift in machine load hits both equally.
            let mut one = |handle_first: bool| {
                if handle_first == (round % 2 == 0) {
                    let t0 = Instant::now();
                    stt.transcribe(TranscriptionRequest::new(audio.clone())).unwrap();
                    let s = t0.elapsed().as_secs_f64();
                    h_total += s;
                    h_all.push(s);
                } else {
                    let t0 = Instant::now();
                    direct.run(audio, ctx);
                    let s = t0.elapsed().as_secs_f64();
                    d_total += s;
                    d_all.push(s);
                }
            };
            one(true);
            one(false);
        }
    }
    println!(
        "\n== handle vs direct whisper-rs (same audio, settings, {rounds} rounds x {} clips) ==",
        clips.len()
    );
    println!(
        "handle total {h_total:.3} s (median {:.3} s), direct total {d_total:.3} s (median {:.3} s), ratio {:.3}",
        median(h_all),
        median(d_all),
        h_total / d_total
    );
}

/// What the handle's 0.5 s of trailing silence costs: direct whisper-rs calls on the same
/// 3-4 s clips with and without it, interleaved, same window.
fn padding_table(stt: &WhisperTranscriber, direct: &Direct, clips: &[Vec<f32>]) {
    let rounds: usize = std::env::var("CALLBOT_STT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for audio in clips {
            let ctx = stt.audio_ctx_for(audio.len());
            for padded in [round % 2 == 0, round % 2 != 0] {
                let t0 = Instant::now();
                direct.run_padded(audio, ctx, if padded { 8_000 } else { 0 });
                let s = t0.elapsed().as_secs_f64();
                if padded { with.push(s) } else { without.push(s) }
            }
        }
    }
    let (w, wo) = (median(with), median(without));
    println!(
        "\n== 0.5 s trailing silence: median {w:.3} s with, {wo:.3} s without (ratio {:.3}; {rounds} rounds x {} clips) ==",
        w / wo,
        clips.len()
    );
}

fn main() {
    let Some(model) = std::env::var_os("CALLBOT_WHISPER_MODEL").map(PathBuf::from) else {
        println!("SKIP stt bench: set CALLBOT_WHISPER_MODEL to a ggml Whisper model");
        return;
    };
    let Some(pcm): Option<Vec<(&str, Vec<i16>)>> = SENTENCES
        .iter()
        .map(|s| speech::espeak(s.text, s.voice).map(|p| (s.text, p)))
        .collect()
    else {
        println!("SKIP stt bench: espeak-ng missing");
        return;
    };
    let clean: Vec<(&str, Vec<f32>)> = pcm.iter().map(|(t, p)| (*t, speech::to_16k(p))).collect();
    let phone: Vec<(&str, Vec<f32>)> = pcm
        .iter()
        .map(|(t, p)| (*t, speech::telephone_16k(p, Some(Law::Ulaw))))
        .collect();
    let mut config = WhisperConfig::new(&model);
    config.workers = 1;
    config.threads_per_job = THREADS;
    // Measurements must not be cut short on a busy machine.
    config.default_timeout = Duration::from_secs(600);
    let mut stt = WhisperTranscriber::new(config).unwrap();
    let only = std::env::var("CALLBOT_STT_BENCH").unwrap_or_default();

    if only.is_empty() || only == "windows" {
        windows_table(&stt, &clean, &phone);
    }
    let ctx = WhisperContext::new_with_params(&model, WhisperContextParameters::default()).unwrap();
    let direct = Direct {
        state: std::cell::RefCell::new(ctx.create_state().unwrap()),
    };
    let short: Vec<Vec<f32>> = clean
        .iter()
        .filter(|(_, a)| (3.0..=4.0).contains(&(a.len() as f64 / 16_000.0)))
        .map(|(_, a)| a.clone())
        .collect();
    if only.is_empty() || only == "overhead" {
        overhead_table(&stt, &direct, &short);
    }
    if only.is_empty() || only == "padding" {
        padding_table(&stt, &direct, &short);
    }
    if only.is_empty() || only == "criterion" {
        let audio = short.first().cloned().unwrap_or_else(|| clean[0].1.clone());
        let ctx = stt.audio_ctx_for(audio.len());
        let mut c = Criterion::default()
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5))
            .configure_from_args();
        let mut group = c.benchmark_group("stt");
        group.bench_function("handle", |b| {
            b.iter(|| stt.transcribe(TranscriptionRequest::new(audio.clone())).unwrap())
        });
        group.bench_function("direct", |b| b.iter(|| direct.run(&audio, ctx)));
        group.finish();
        c.final_summary();
    }
    let report = stt.shutdown(Instant::now() + Duration::from_secs(5));
    println!("\nshutdown: {report:?}");
}
