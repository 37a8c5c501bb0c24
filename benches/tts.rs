//! Speech synthesis (callbot-tts, espeak-ng through `EspeakSynthesizer`).
//!
//! ```sh
//! cargo bench -p callbot-benches --bench tts
//! ```
//!
//! First prints a table over 50 runs of a 3-sentence reply (median and 90th percentile):
//! time from `synthesize` to the first audio chunk, time to the whole reply, and
//! synthesis speed as a multiple of real time (audio duration / synthesis time). Then
//! criterion: `tts/first_chunk_3_sentences` and `tts/whole_3_sentences` (throughput in
//! samples: divide by 22,050 for seconds of audio per second).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use callbot_tts::{EspeakConfig, EspeakSynthesizer, Synthesizer, VoiceOptions};
use criterion::{Criterion, Throughput};

const REPLY: &str = "Thank you for calling the pharmacy on Main Street. \
    We are open every day from nine in the morning until six in the evening. \
    Is there anything else I can help you with today?";

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

/// One synthesis of `REPLY`: (time to first chunk, total time, samples).
fn once(engine: &EspeakSynthesizer, options: &VoiceOptions) -> (Duration, Duration, usize) {
    let started = Instant::now();
    let mut job = engine.synthesize(REPLY, options).unwrap();
    let mut first = None;
    let mut samples = 0;
    while let Some(chunk) = job.recv_timeout(Duration::from_secs(30)).unwrap() {
        first.get_or_insert_with(|| started.elapsed());
        samples += chunk.samples.len();
    }
    (first.unwrap(), started.elapsed(), samples)
}

fn table(engine: &EspeakSynthesizer, options: &VoiceOptions) {
    let runs: Vec<_> = (0..50).map(|_| once(engine, options)).collect();
    let rate = f64::from(engine.sample_rate());
    let audio = runs[0].2 as f64 / rate;
    let first: Vec<f64> = runs.iter().map(|r| r.0.as_secs_f64() * 1e3).collect();
    let total: Vec<f64> = runs.iter().map(|r| r.1.as_secs_f64() * 1e3).collect();
    let speed: Vec<f64> = runs
        .iter()
        .map(|r| (r.2 as f64 / rate) / r.1.as_secs_f64())
        .collect();
    println!("\n== 3-sentence reply ({audio:.2} s of audio at {rate} Hz, chunks of 40 ms, 50 runs) ==");
    println!(
        "first chunk: median {:.2} ms, p90 {:.2} ms",
        percentile(first.clone(), 0.5),
        percentile(first, 0.9)
    );
    println!(
        "whole reply: median {:.2} ms, p90 {:.2} ms",
        percentile(total.clone(), 0.5),
        percentile(total, 0.9)
    );
    println!(
        "speed: median {:.0}x real time, p10 {:.0}x",
        percentile(speed.clone(), 0.5),
        percentile(speed, 0.1)
    );
}

fn main() {
    let started = Instant::now();
    let mut engine = EspeakSynthesizer::start(EspeakConfig::default()).unwrap();
    println!("engine start (library init + warm-up): {:?}", started.elapsed());
    let options = engine.default_options();
    table(&engine, &options);

    let mut c = Criterion::default().configure_from_args();
    let samples = once(&engine, &options).2;
    let mut group = c.benchmark_group("tts");
    group.throughput(Throughput::Elements(samples as u64));
    group.bench_function("first_chunk_3_sentences", |b| {
        b.iter(|| {
            let mut job = engine.synthesize(REPLY, &options).unwrap();
            let chunk = job.recv_timeout(Duration::from_secs(30)).unwrap();
            job.cancel();
            chunk
        })
    });
    group.bench_function("whole_3_sentences", |b| {
        b.iter(|| {
            engine
                .synthesize(REPLY, &options)
                .unwrap()
                .collect(deadline())
                .unwrap()
        })
    });
    group.finish();
    c.final_summary();
    let report = engine.shutdown(deadline());
    assert!(report.worker_joined);
}
