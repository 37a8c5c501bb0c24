//! Streaming sample-rate conversion with `rubato`'s FFT resampler, in 20 ms chunks.
//!
//! [`Resampler`] converts a mono `f32` stream between two fixed rates (8 kHz <-> 16 kHz,
//! 22.05 / 24 kHz -> 8 kHz, 22.05 kHz -> 16 kHz, and any other pair up to [`MAX_RATE`]).
//! It uses `rubato::Fft` with a fixed input and output size per chunk: 20 ms of input
//! (or the smallest whole multiple of the pair's minimum block when 20 ms does not fit;
//! every pair named above fits exactly).
//!
//! **Alignment.** The filter's own delay (rubato's `output_delay`, half an FFT block of
//! output) is trimmed from the start of the output, so output sample `k` corresponds to
//! input time `k / output_rate`: a stream resampled and flushed has exactly
//! `round(n_in * to / from)` samples and no time shift (see the gain/delay test). One
//! exception: rubato centres its filter on sample `N/2` of an `N`-point block, so for an odd
//! block (441 samples, 22.05 kHz input) the output is half an input sample early (23 µs).
//!
//! **Delay (latency).** Input is held until a whole chunk is available, and the filter
//! needs `output_delay` samples of look-ahead, so an input sample appears in the output at
//! most [`Resampler::latency`] later (in audio time). For 20 ms chunks at the rates above
//! this is 20 ms + 10 ms = 30 ms. [`Resampler::flush`] emits what is held at the end of a
//! stream.
//!
//! **Quality.** A tone above the new Nyquist frequency is attenuated by more than 60 dB
//! (the tests measure each pair; the figures are printed with `--no-capture`), and a
//! passband tone keeps its level within 0.1 dB. (dasp's sinc interpolator does not
//! low-pass when downsampling, which is why it is not used here.)
//!
//! ```
//! use callbot_audio::resample::Resampler;
//! let mut r = Resampler::new(8000, 16000)?;
//! let mut out = Vec::new();
//! for _ in 0..50 {
//!     r.process(&[0.0; 160], &mut out); // 20 ms at 8 kHz
//! }
//! r.flush(&mut out);
//! assert_eq!(out.len(), 16000);
//! # Ok::<(), callbot_audio::AudioError>(())
//! ```

use std::time::Duration;

use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _};

use crate::error::AudioError;
use dasp::Sample;

use crate::frame::{AudioFrame, duration_of, f32_sample_to_i16, f32_to_i16, i16_to_f32};

/// The highest sample rate accepted (Hz).
pub const MAX_RATE: u32 = 384_000;

/// The target chunk length: 20 ms of input, one RTP packet's worth.
pub const CHUNK: Duration = Duration::from_millis(20);

/// A streaming mono resampler between two fixed rates. See the [module docs](self).
///
/// Owns only memory (about 20 KB for telephone rates); no threads.
pub struct Resampler {
    from: u32,
    to: u32,
    /// `None` when the rates are equal: samples pass through unchanged.
    engine: Option<Engine>,
    consumed: u64,
    produced: u64,
    /// Scratch buffers for the `i16` entry points.
    scratch_in: Vec<f32>,
    scratch_out: Vec<f32>,
}

struct Engine {
    fft: Fft<f32>,
    chunk_in: usize,
    chunk_out: usize,
    /// Output samples of filter delay (trimmed at the start of each stream).
    delay: usize,
    /// Delay samples still to be trimmed in this stream.
    skip: usize,
    /// Input waiting for a whole chunk (always shorter than `chunk_in` between calls).
    pending: Vec<f32>,
    /// One chunk of output.
    scratch: Vec<f32>,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("chunk_in", &self.chunk_in())
            .field("latency", &self.latency())
            .finish()
    }
}

fn check_rate(rate: u32) -> Result<(), AudioError> {
    if rate == 0 || rate > MAX_RATE {
        return Err(AudioError::InvalidRate(rate));
    }
    Ok(())
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz working in 20 ms chunks.
    ///
    /// Errors: a rate of 0 or above [`MAX_RATE`], or a pair rubato cannot build.
    pub fn new(from: u32, to: u32) -> Result<Self, AudioError> {
        check_rate(from)?;
        check_rate(to)?;
        let engine = if from == to {
            None
        } else {
            let chunk = (from as usize).div_ceil(50); // 20 ms of input
            let fft =
                Fft::<f32>::new(from as usize, to as usize, chunk, 1, FixedSync::Both).map_err(|e| {
                    AudioError::Resampler {
                        from,
                        to,
                        reason: e.to_string(),
                    }
                })?;
            let chunk_in = fft.input_frames_next();
            let chunk_out = fft.output_frames_next();
            let delay = fft.output_delay();
            Some(Engine {
                fft,
                chunk_in,
                chunk_out,
                delay,
                skip: delay,
                pending: Vec::with_capacity(chunk_in),
                scratch: vec![0.0; chunk_out],
            })
        };
        Ok(Self {
            from,
            to,
            engine,
            consumed: 0,
            produced: 0,
            scratch_in: Vec::new(),
            scratch_out: Vec::new(),
        })
    }

    /// Input rate (Hz).
    pub fn input_rate(&self) -> u32 {
        self.from
    }

    /// Output rate (Hz).
    pub fn output_rate(&self) -> u32 {
        self.to
    }

    /// Input samples per processing chunk (for example 160 at 8 kHz, 441 at 22.05 kHz);
    /// 0 when the rates are equal.
    pub fn chunk_in(&self) -> usize {
        self.engine.as_ref().map_or(0, |e| e.chunk_in)
    }

    /// The longest time (in audio time) between an input sample entering [`process`]
    /// and its output leaving it: one chunk of buffering plus the filter's delay.
    /// Zero when the rates are equal.
    ///
    /// [`process`]: Resampler::process
    pub fn latency(&self) -> Duration {
        match &self.engine {
            None => Duration::ZERO,
            Some(e) => duration_of(self.from, e.chunk_in) + duration_of(self.to, e.delay),
        }
    }

    /// Resamples `input` and appends the output to `out`.
    ///
    /// Output comes in whole chunks: between calls up to one chunk of input is held (see
    /// [`latency`](Resampler::latency)). Never allocates once `out` has room. NaN and
    /// infinite samples are replaced by 0 (they would poison the FFT).
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.consumed += input.len() as u64;
        let Some(engine) = self.engine.as_mut() else {
            out.extend_from_slice(input);
            self.produced += input.len() as u64;
            return;
        };
        let mut rest = input;
        while !rest.is_empty() {
            let take = (engine.chunk_in - engine.pending.len()).min(rest.len());
            let (now, later) = rest.split_at(take);
            // NaN or infinity would make rubato's FFT panic: they become silence.
            engine
                .pending
                .extend(now.iter().map(|&v| if v.is_finite() { v } else { 0.0 }));
            rest = later;
            if engine.pending.len() == engine.chunk_in {
                self.produced += engine.run_chunk(self.from, self.to, out) as u64;
            }
        }
    }

    /// Ends the stream: pads the held input with silence, appends the remaining output
    /// (so the stream's total output is `round(total_input * to / from)` samples), and
    /// resets the resampler for a new stream.
    pub fn flush(&mut self, out: &mut Vec<f32>) {
        let target = (self.consumed * u64::from(self.to) + u64::from(self.from) / 2) / u64::from(self.from);
        if let Some(engine) = self.engine.as_mut() {
            let mut tail = Vec::with_capacity(engine.chunk_out * 2);
            // At most ceil((pending + delay) / chunk) + 1 chunks are needed.
            let mut guard = (engine.delay / engine.chunk_out.max(1)) + 3;
            while self.produced + (tail.len() as u64) < target && guard > 0 {
                engine.pending.resize(engine.chunk_in, 0.0);
                engine.run_chunk(self.from, self.to, &mut tail);
                guard -= 1;
            }
            let missing = target.saturating_sub(self.produced);
            let keep = usize::try_from(missing).unwrap_or(usize::MAX).min(tail.len());
            out.extend_from_slice(&tail[..keep]);
        }
        self.reset();
    }

    /// [`process`](Resampler::process) for 16-bit samples (converted with `dasp`; the
    /// output is clipped to the `i16` range). Reuses internal buffers.
    pub fn process_i16(&mut self, input: &[i16], out: &mut Vec<i16>) {
        let mut fin = std::mem::take(&mut self.scratch_in);
        let mut fout = std::mem::take(&mut self.scratch_out);
        fin.clear();
        fin.extend(input.iter().map(|s| s.to_sample::<f32>()));
        fout.clear();
        self.process(&fin, &mut fout);
        out.extend(fout.iter().map(|&v| f32_sample_to_i16(v)));
        self.scratch_in = fin;
        self.scratch_out = fout;
    }

    /// [`flush`](Resampler::flush) for the `i16` stream.
    pub fn flush_i16(&mut self, out: &mut Vec<i16>) {
        let mut fout = std::mem::take(&mut self.scratch_out);
        fout.clear();
        self.flush(&mut fout);
        out.extend(fout.iter().map(|&v| f32_sample_to_i16(v)));
        self.scratch_out = fout;
    }

    /// Drops held input and filter state, to start a new, unrelated stream.
    pub fn reset(&mut self) {
        if let Some(engine) = self.engine.as_mut() {
            engine.fft.reset();
            engine.pending.clear();
            engine.skip = engine.delay;
        }
        self.consumed = 0;
        self.produced = 0;
    }
}

impl Engine {
    /// Resamples the full `pending` chunk, appends the (delay-trimmed) output, returns how
    /// many samples were appended.
    fn run_chunk(&mut self, from: u32, to: u32, out: &mut Vec<f32>) -> usize {
        let result = match (
            InterleavedSlice::new(&self.pending[..], 1, self.chunk_in),
            InterleavedSlice::new_mut(&mut self.scratch[..], 1, self.chunk_out),
        ) {
            (Ok(input), Ok(mut output)) => self
                .fft
                .process_into_buffer(&input, &mut output, None)
                .map_err(|e| e.to_string()),
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
        };
        self.pending.clear();
        let written = match result {
            Ok((_, written)) => written.min(self.scratch.len()),
            Err(reason) => {
                // Cannot happen with the sizes rubato itself reported; keep time anyway.
                tracing::error!(from, to, %reason, "resampler chunk failed; emitting silence");
                self.scratch.fill(0.0);
                self.chunk_out
            }
        };
        let skip = self.skip.min(written);
        self.skip -= skip;
        out.extend_from_slice(&self.scratch[skip..written]);
        written - skip
    }
}

/// Resamples a whole clip (process + flush): `round(input.len() * to / from)` samples out.
pub fn resample(input: &[f32], from: u32, to: u32) -> Result<Vec<f32>, AudioError> {
    let mut r = Resampler::new(from, to)?;
    let expected = (input.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let mut out = Vec::with_capacity(expected + 1);
    r.process(input, &mut out);
    r.flush(&mut out);
    Ok(out)
}

/// Resamples a whole [`AudioFrame`] clip to `to` Hz (through `f32`).
pub fn resample_frame(frame: &AudioFrame, to: u32) -> Result<AudioFrame, AudioError> {
    if frame.sample_rate == to {
        return Ok(frame.clone());
    }
    let out = resample(&i16_to_f32(&frame.samples), frame.sample_rate, to)?;
    Ok(AudioFrame::new(to, f32_to_i16(&out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn tone(rate: u32, freq: f64, amp: f64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (amp * (2.0 * PI * freq * i as f64 / rate as f64).sin()) as f32)
            .collect()
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len() as f64).sqrt()
    }

    fn db(ratio: f64) -> f64 {
        20.0 * ratio.max(1e-12).log10()
    }

    /// Level (amplitude) of the `freq` component of `x`, by correlation with sin and cos.
    fn level_at(x: &[f32], rate: u32, freq: f64) -> f64 {
        let (mut s, mut c) = (0.0, 0.0);
        for (i, &v) in x.iter().enumerate() {
            let ph = 2.0 * PI * freq * i as f64 / rate as f64;
            s += v as f64 * ph.sin();
            c += v as f64 * ph.cos();
        }
        2.0 * (s * s + c * c).sqrt() / x.len() as f64
    }

    /// Streams `input` through a resampler in chunks of `chunk` samples, then flushes.
    fn stream(from: u32, to: u32, input: &[f32], chunk: usize) -> Vec<f32> {
        let mut r = Resampler::new(from, to).unwrap();
        let mut out = Vec::new();
        for c in input.chunks(chunk) {
            r.process(c, &mut out);
        }
        r.flush(&mut out);
        out
    }

    const PAIRS: [(u32, u32); 7] = [
        (8000, 16000),
        (16000, 8000),
        (22050, 8000),
        (24000, 8000),
        (22050, 16000),
        (48000, 16000),
        (44100, 16000),
    ];

    #[test]
    fn chunks_are_20_ms_and_latency_bounded() {
        for (from, to) in PAIRS {
            let r = Resampler::new(from, to).unwrap();
            assert_eq!(r.chunk_in(), (from as usize).div_ceil(50), "{from}->{to}");
            let lat = r.latency();
            assert!(lat <= Duration::from_millis(31), "{from}->{to}: {lat:?}");
            eprintln!("{from} -> {to}: chunk {} in, latency {lat:?}", r.chunk_in());
        }
        assert_eq!(Resampler::new(8000, 8000).unwrap().latency(), Duration::ZERO);
    }

    #[test]
    fn invalid_rates_are_errors() {
        assert!(matches!(Resampler::new(0, 8000), Err(AudioError::InvalidRate(0))));
        assert!(Resampler::new(8000, MAX_RATE + 1).is_err());
    }

    #[test]
    fn alias_above_new_nyquist_attenuated_60_db() {
        // Downsampling: tones between the new Nyquist and the old one must vanish.
        let cases: [(u32, u32, &[f64]); 5] = [
            (16000, 8000, &[4600.0, 6000.0, 7500.0]),
            (22050, 8000, &[4600.0, 6000.0, 9000.0, 10500.0]),
            (24000, 8000, &[4600.0, 7000.0, 11000.0]),
            (22050, 16000, &[8600.0, 10000.0]),
            (48000, 16000, &[8600.0, 20000.0]),
        ];
        for (from, to, freqs) in cases {
            for &f in freqs {
                let input = tone(from, f, 0.5, from as usize); // 1 s
                let out = stream(from, to, &input, (from / 50) as usize);
                // Steady state: skip 50 ms at each end.
                let m = (to / 20) as usize;
                let att = db(rms(&out[m..out.len() - m]) / rms(&input));
                eprintln!("{from} -> {to}: {f} Hz tone attenuated {:.1} dB", -att);
                assert!(att <= -60.0, "{from}->{to} {f} Hz: only {att:.1} dB");
            }
        }
        // Upsampling: the image of a passband tone above the old Nyquist must vanish.
        for (f, image) in [(1000.0, 7000.0), (3000.0, 5000.0)] {
            let input = tone(8000, f, 0.5, 8000);
            let out = stream(8000, 16000, &input, 160);
            let body = &out[800..out.len() - 800];
            let att = db(level_at(body, 16000, image) / 0.5);
            eprintln!("8000 -> 16000: image of {f} Hz at {image} Hz: {:.1} dB", -att);
            assert!(att <= -60.0, "image {image} Hz only {att:.1} dB");
        }
    }

    #[test]
    fn passband_gain_and_zero_delay() {
        for (from, to) in PAIRS {
            let n = from as usize; // 1 s
            for f in [300.0, 1000.0, 3000.0] {
                let input = tone(from, f, 0.5, n);
                let out = stream(from, to, &input, 333); // odd chunking on purpose
                let expect_len = (n as u64 * to as u64 + from as u64 / 2) / from as u64;
                assert_eq!(out.len() as u64, expect_len, "{from}->{to} length");
                let reference = tone(to, f, 0.5, out.len());
                let m = (to / 20) as usize;
                let gain = db(rms(&out[m..out.len() - m]) / rms(&reference[m..out.len() - m]));
                assert!(gain.abs() < 0.1, "{from}->{to} {f} Hz gain {gain:.3} dB");
                // Delay from the phase difference at f, in output samples.
                let w = 2.0 * PI * f / to as f64;
                let body = &out[m..out.len() - m];
                let phase = |x: &[f32]| {
                    let (mut sn, mut cs) = (0.0, 0.0);
                    for (i, &v) in x.iter().enumerate() {
                        let ph = w * (i + m) as f64;
                        sn += v as f64 * ph.sin();
                        cs += v as f64 * ph.cos();
                    }
                    cs.atan2(sn)
                };
                let mut dphi = phase(body) - phase(&reference[m..out.len() - m]);
                while dphi > PI {
                    dphi -= 2.0 * PI;
                }
                while dphi < -PI {
                    dphi += 2.0 * PI;
                }
                let delay_out = -dphi / w;
                let delay_in = delay_out * from as f64 / to as f64;
                // rubato centres its filter on sample N/2 of an N-point block: for an odd
                // block (441 at 22.05 kHz) that is half an input sample early (23 µs).
                assert!(
                    delay_in.abs() <= 0.51,
                    "{from}->{to} {f} Hz: delay {delay_in:.3} input samples"
                );
                // With that delay the output is the tone, to better than 60 dB.
                let shifted: Vec<f32> = (0..out.len())
                    .map(|i| (0.5 * (w * (i as f64 - delay_out)).sin()) as f32)
                    .collect();
                let resid: Vec<f32> = (m..out.len() - m).map(|i| out[i] - shifted[i]).collect();
                let snr = db(rms(&shifted[m..out.len() - m]) / rms(&resid));
                assert!(snr > 60.0, "{from}->{to} {f} Hz: SNR {snr:.1} dB");
                eprintln!(
                    "{from}->{to} {f} Hz: gain {gain:.4} dB, delay {delay_in:+.3} input samples, SNR {snr:.1} dB"
                );
            }
        }
    }

    #[test]
    fn chunking_does_not_change_the_output() {
        let input: Vec<f32> = (0..22050)
            .map(|i| ((i * 7919) % 2000) as f32 / 2000.0 - 0.5)
            .collect();
        let a = stream(22050, 8000, &input, 441);
        let b = stream(22050, 8000, &input, 1);
        let c = stream(22050, 8000, &input, 10_000);
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn flush_resets_for_a_new_stream_and_passthrough_is_identity() {
        let input = tone(8000, 440.0, 0.3, 4000);
        let mut r = Resampler::new(8000, 16000).unwrap();
        let mut first = Vec::new();
        r.process(&input, &mut first);
        r.flush(&mut first);
        let mut second = Vec::new();
        r.process(&input, &mut second);
        r.flush(&mut second);
        assert_eq!(first, second);
        assert_eq!(first.len(), 8000);

        let mut same = Resampler::new(16000, 16000).unwrap();
        let mut out = Vec::new();
        same.process(&input, &mut out);
        same.flush(&mut out);
        assert_eq!(out, input);
        // Empty stream: nothing out.
        let mut out = Vec::new();
        r.flush(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn non_finite_input_becomes_silence() {
        let mut input = vec![0.0f32; 1600];
        input[100] = f32::NAN;
        input[200] = f32::INFINITY;
        input[300] = f32::NEG_INFINITY;
        for (from, to) in [(8000, 16000), (16000, 8000)] {
            let out = stream(from, to, &input, 160);
            assert!(out.iter().all(|v| *v == 0.0 || v.abs() < 1e-6), "{from}->{to}");
        }
    }

    #[test]
    fn i16_entry_points_match_the_f32_path() {
        let pcm: Vec<i16> = (0..4410).map(|i| ((i * 7919) % 40000 - 20000) as i16).collect();
        let mut r = Resampler::new(22050, 8000).unwrap();
        let mut out = Vec::new();
        for c in pcm.chunks(441) {
            r.process_i16(c, &mut out);
        }
        r.flush_i16(&mut out);
        let reference = resample_frame(&AudioFrame::new(22050, pcm), 8000).unwrap();
        assert_eq!(out, reference.samples);
        assert_eq!(out.len(), 1600);
    }

    #[test]
    fn frame_helper_keeps_rate_and_length() {
        let f = AudioFrame::new(8000, vec![1000; 800]);
        let g = resample_frame(&f, 16000).unwrap();
        assert_eq!(g.sample_rate, 16000);
        assert_eq!(g.len(), 1600);
        assert_eq!(resample_frame(&f, 8000).unwrap(), f);
    }
}
