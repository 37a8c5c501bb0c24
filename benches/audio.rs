//! callbot-audio throughput: G.711, resampling and VAD, on one second of audio each.
//!
//! Criterion reports time per iteration and elements (input samples) per second; the
//! multiple of real time is `elements per second / input rate` (the iteration is one
//! second of audio, so also `1 s / time`). Run: `cargo bench -p callbot-benches --bench audio`.
// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use callbot_audio::g711::Law;
use callbot_audio::resample::Resampler;
use callbot_audio::vad::{Endpointer, VadConfig};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// One second of a speech-like test signal at `rate`: two tones with a slow envelope.
fn signal(rate: u32) -> Vec<f32> {
    (0..rate)
        .map(|i| {
            let t = f64::from(i) / f64::from(rate);
            let env = 0.5 + 0.5 * (2.0 * std::f64::consts::PI * 3.0 * t).sin();
            (0.3 * env
                * ((2.0 * std::f64::consts::PI * 220.0 * t).sin()
                    + 0.5 * (2.0 * std::f64::consts::PI * 1400.0 * t).sin())) as f32
        })
        .collect()
}

fn g711(c: &mut Criterion) {
    let pcm: Vec<i16> = signal(8000).iter().map(|&v| (v * 32767.0) as i16).collect();
    let mut group = c.benchmark_group("g711_1s_8k");
    group.throughput(Throughput::Elements(pcm.len() as u64));
    for law in [Law::Ulaw, Law::Alaw] {
        let mut coded = Vec::with_capacity(pcm.len());
        law.encode_into(&pcm, &mut coded);
        group.bench_function(format!("{law:?}_encode"), |b| {
            let mut out = Vec::with_capacity(pcm.len());
            b.iter(|| {
                out.clear();
                for frame in pcm.chunks(160) {
                    law.encode_into(black_box(frame), &mut out);
                }
                black_box(out.len())
            })
        });
        group.bench_function(format!("{law:?}_decode"), |b| {
            let mut out = Vec::with_capacity(pcm.len());
            b.iter(|| {
                out.clear();
                for frame in coded.chunks(160) {
                    law.decode_into(black_box(frame), &mut out);
                }
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn resample(c: &mut Criterion) {
    let mut group = c.benchmark_group("resample_1s_20ms_chunks");
    for (from, to) in [
        (8000u32, 16000u32),
        (16000, 8000),
        (22050, 8000),
        (24000, 8000),
        (22050, 16000),
    ] {
        let input = signal(from);
        let chunk = (from / 50) as usize;
        group.throughput(Throughput::Elements(u64::from(from)));
        group.bench_function(format!("{from}_to_{to}"), |b| {
            let mut r = match Resampler::new(from, to) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot build resampler: {e}");
                    return;
                }
            };
            let mut out = Vec::with_capacity(to as usize + 1024);
            b.iter(|| {
                out.clear();
                for c in input.chunks(chunk) {
                    r.process(black_box(c), &mut out);
                }
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn vad(c: &mut Criterion) {
    let mut group = c.benchmark_group("vad_1s_20ms_chunks");
    for rate in [16000u32, 8000] {
        let input = signal(rate);
        group.throughput(Throughput::Elements(u64::from(rate)));
        group.bench_function(format!("endpointer_{rate}"), |b| {
            let mut ep = match Endpointer::new(rate, VadConfig::default()) {
                Ok(ep) => ep,
                Err(e) => {
                    eprintln!("cannot build endpointer: {e}");
                    return;
                }
            };
            let mut events = Vec::new();
            b.iter(|| {
                for c in input.chunks((rate / 50) as usize) {
                    ep.process(black_box(c), &mut events);
                }
                events.clear();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, g711, resample, vad);
criterion_main!(benches);
