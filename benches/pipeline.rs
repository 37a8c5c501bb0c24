//! Pipeline overhead per turn with instant fake STT/LLM/TTS (`callbot::testing::PipelineRig`):
//! from the frame that ends the caller's utterance to the first reply audio queued for
//! playback. The goal is < 5 ms at p99. Criterion reports the mean; the p50/p99 of 500
//! turns are printed first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use callbot::testing::PipelineRig;
use criterion::{Criterion, criterion_group, criterion_main};

fn percentiles(rig: &PipelineRig, n: usize) {
    let mut v: Vec<Duration> = (0..n).map(|_| rig.turn().unwrap()).collect();
    v.sort();
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
    println!(
        "pipeline overhead per turn over {n} turns: p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        at(0.5),
        at(0.95),
        at(0.99),
        at(1.0)
    );
}

fn bench(c: &mut Criterion) {
    let rig = PipelineRig::start("What time is it?", "It is noon. Anything else?").unwrap();
    percentiles(&rig, 500);
    c.bench_function("pipeline_turn_overhead", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rig.turn().unwrap()).sum())
    });
    rig.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
