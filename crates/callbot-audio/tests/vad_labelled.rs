#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! VAD endpointing measured on labelled audio: the twelve espeak-ng test sentences placed
//! at known offsets in white noise, at 16 kHz and as 8 kHz µ-law telephone audio.
//! Prints edge errors and the false cut rate (`cargo nextest run -p callbot-audio
//! --no-capture vad_labelled`) and asserts bounds on them.

use std::ops::Range;
use std::time::Duration;

use callbot_audio::frame::f32_to_i16;
use callbot_audio::g711::Law;
use callbot_audio::vad::{Endpointer, VadConfig, VadEvent};
use callbot_testkit::speech::{self, SENTENCES};

struct Metrics {
    utterances: usize,
    missed: usize,
    false_cuts: usize,
    merged: usize,
    false_alarms: usize,
    start_err_ms: Vec<f64>,
    end_err_ms: Vec<f64>,
}

fn ms(samples: i64, rate: u32) -> f64 {
    samples as f64 * 1000.0 / f64::from(rate)
}

/// Runs the endpointer over `audio` in 20 ms chunks; returns detected segments (samples).
fn detect(audio: &[i16], rate: u32, config: VadConfig) -> Vec<Range<usize>> {
    let mut ep = Endpointer::new(rate, config).unwrap();
    let mut events = Vec::new();
    for chunk in audio.chunks(rate as usize / 50) {
        ep.process_i16(chunk, &mut events);
    }
    ep.finish(&mut events);
    let to_samples = |d: Duration| (d.as_secs_f64() * f64::from(rate)).round() as usize;
    let mut segments = Vec::new();
    let mut open = None;
    for e in events {
        match e {
            VadEvent::SpeechStart { at } => {
                assert!(open.is_none(), "two starts in a row");
                open = Some(at);
            }
            VadEvent::SpeechEnd { start, at, .. } => {
                assert_eq!(open.take(), Some(start), "end without its start");
                segments.push(to_samples(start)..to_samples(at));
            }
        }
    }
    assert!(open.is_none(), "finish() must close the utterance");
    segments
}

fn score(truth: &[Range<usize>], found: &[Range<usize>], rate: u32) -> Metrics {
    let overlaps = |a: &Range<usize>, b: &Range<usize>| a.start < b.end && b.start < a.end;
    let mut m = Metrics {
        utterances: truth.len(),
        missed: 0,
        false_cuts: 0,
        merged: 0,
        false_alarms: 0,
        start_err_ms: Vec::new(),
        end_err_ms: Vec::new(),
    };
    for t in truth {
        let hits: Vec<&Range<usize>> = found.iter().filter(|f| overlaps(t, f)).collect();
        match (hits.first(), hits.last()) {
            (Some(first), Some(last)) => {
                if hits.len() > 1 {
                    m.false_cuts += 1;
                }
                m.start_err_ms.push(ms(first.start as i64 - t.start as i64, rate));
                m.end_err_ms.push(ms(last.end as i64 - t.end as i64, rate));
            }
            _ => m.missed += 1,
        }
    }
    for f in found {
        let n = truth.iter().filter(|t| overlaps(t, f)).count();
        if n == 0 {
            m.false_alarms += 1;
        } else if n > 1 {
            m.merged += 1;
        }
    }
    m
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mean_abs = v.iter().map(|x| x.abs()).sum::<f64>() / v.len().max(1) as f64;
    let max_abs = v.iter().fold(0.0f64, |a, x| a.max(x.abs()));
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    (mean, mean_abs, max_abs)
}

/// Builds the labelled stream at `rate` (16 kHz clean band, or 8 kHz telephone µ-law).
fn labelled(rate: u32, snr_db: f64, seed: u64) -> Option<speech::Labelled> {
    let mut utterances = Vec::new();
    let mut at = Duration::from_millis(1000);
    for (i, s) in SENTENCES.iter().enumerate() {
        let pcm = speech::espeak(s.text, s.voice)?;
        let at_rate = if rate == 8000 {
            speech::telephone_8k(&pcm, Some(Law::Ulaw))
        } else {
            f32_to_i16(&speech::to_16k(&pcm))
        };
        let len = Duration::from_secs_f64(at_rate.len() as f64 / f64::from(rate));
        utterances.push((at, at_rate));
        // Gaps of 1.2 to 2.0 s between utterances (beyond the 600 ms hangover).
        at += len + Duration::from_millis(1200 + 200 * (i as u64 % 5));
    }
    let total = at + Duration::from_millis(500);
    Some(speech::labelled_in_noise(rate, total, &utterances, snr_db, seed))
}

fn run_condition(name: &str, rate: u32, snr_db: f64) -> Option<Metrics> {
    let l = labelled(rate, snr_db, 0x5eed ^ rate as u64)?;
    let found = detect(&l.audio.samples, rate, VadConfig::default());
    let m = score(&l.speech, &found, rate);
    let (s_mean, s_abs, s_max) = stats(&m.start_err_ms);
    let (e_mean, e_abs, e_max) = stats(&m.end_err_ms);
    println!(
        "VAD {name}: {} utterances in {:.1} s, SNR {snr_db} dB: missed {}, false cuts {} ({:.1} %), merged {}, false alarms {}; \
         start edge error mean {s_mean:+.0} ms, mean |err| {s_abs:.0} ms, max |err| {s_max:.0} ms; \
         end edge error mean {e_mean:+.0} ms, mean |err| {e_abs:.0} ms, max |err| {e_max:.0} ms",
        m.utterances,
        l.audio.duration().as_secs_f64(),
        m.missed,
        m.false_cuts,
        100.0 * m.false_cuts as f64 / m.utterances as f64,
        m.merged,
        m.false_alarms,
    );
    Some(m)
}

fn check(m: &Metrics, max_start_ms: f64, max_end_ms: f64) {
    assert_eq!(m.missed, 0, "missed utterances");
    assert_eq!(m.false_alarms, 0, "detections in noise only");
    assert_eq!(m.merged, 0, "utterances merged across >= 1.2 s gaps");
    assert!(
        m.false_cuts * 10 <= m.utterances,
        "false cut rate above 10 %: {} of {}",
        m.false_cuts,
        m.utterances
    );
    let (_, s_abs, s_max) = stats(&m.start_err_ms);
    let (_, e_abs, e_max) = stats(&m.end_err_ms);
    assert!(s_max <= max_start_ms, "start edge error {s_max} ms");
    assert!(e_max <= max_end_ms, "end edge error {e_max} ms");
    assert!(s_abs <= max_start_ms / 2.0 && e_abs <= max_end_ms / 2.0);
}

#[test]
fn vad_labelled_16k_clean_band_snr_20db() {
    if let Some(m) = run_condition("16 kHz", 16000, 20.0) {
        check(&m, 120.0, 250.0);
    }
}

#[test]
fn vad_labelled_16k_snr_10db() {
    if let Some(m) = run_condition("16 kHz", 16000, 10.0) {
        check(&m, 150.0, 300.0);
    }
}

#[test]
fn vad_labelled_8k_telephone_ulaw_snr_20db() {
    if let Some(m) = run_condition("8 kHz telephone µ-law", 8000, 20.0) {
        check(&m, 120.0, 250.0);
    }
}

#[test]
fn vad_labelled_8k_telephone_ulaw_snr_10db() {
    // The hardest case: white noise band-limited to 4 kHz at 10 dB scores close to speech,
    // so the adaptive threshold sits high and onsets are often found late (measured: half
    // the starts more than 150 ms late, one 2.7 s). Asserted: nothing missed, cut, merged
    // or invented, ends within 300 ms, at least half the starts within 150 ms and the
    // mean start error under 600 ms.
    if let Some(m) = run_condition("8 kHz telephone µ-law", 8000, 10.0) {
        assert_eq!((m.missed, m.false_alarms, m.merged, m.false_cuts), (0, 0, 0, 0));
        assert!(
            m.end_err_ms.iter().all(|e| e.abs() <= 300.0),
            "{:?}",
            m.end_err_ms
        );
        let good = m.start_err_ms.iter().filter(|e| e.abs() <= 150.0).count();
        assert!(
            good >= 6,
            "starts within 150 ms: {good} of 12 ({:?})",
            m.start_err_ms
        );
        let (mean, _, _) = stats(&m.start_err_ms);
        assert!(mean < 600.0, "mean start error {mean} ms");
    }
}

/// A shorter hangover cuts utterances at their internal pauses: the false cut rate is
/// measured for 150, 300 and 600 ms and must not grow as the hangover grows.
#[test]
fn vad_labelled_false_cuts_versus_hangover() {
    let Some(l) = labelled(16000, 20.0, 99) else {
        return;
    };
    let mut rates = Vec::new();
    for hangover_ms in [150u64, 300, 600] {
        let config = VadConfig {
            hangover: Duration::from_millis(hangover_ms),
            ..VadConfig::default()
        };
        let found = detect(&l.audio.samples, 16000, config);
        let m = score(&l.speech, &found, 16000);
        assert_eq!(m.missed, 0);
        println!(
            "VAD 16 kHz SNR 20 dB, hangover {hangover_ms} ms: false cuts {} of {} utterances ({:.0} %), {} segments",
            m.false_cuts,
            m.utterances,
            100.0 * m.false_cuts as f64 / m.utterances as f64,
            found.len()
        );
        rates.push(m.false_cuts);
    }
    assert!(rates.windows(2).all(|w| w[0] >= w[1]), "{rates:?}");
    assert_eq!(rates[2], 0, "no cuts with the default hangover");
}
