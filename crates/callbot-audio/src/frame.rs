//! [`AudioFrame`]: mono 16-bit PCM that carries its sample rate.

use std::time::Duration;

use dasp::Sample;

/// A block of **mono**, 16-bit signed linear PCM samples together with their sample rate.
///
/// This is the unit that moves between layers: the RTP layer delivers 8 kHz frames
/// (normally 160 samples = 20 ms), speech recognition consumes 16 kHz, TTS produces
/// 22,050 Hz. `i16` is the wire and file format of telephone audio; DSP stages
/// (resampling, VAD) work in `f32` and convert with [`AudioFrame::to_f32`] /
/// [`AudioFrame::from_f32`], which use `dasp` sample conversion (`i16 / 32768`, and
/// `f32 * 32768` saturating to the `i16` range, truncating toward zero).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AudioFrame {
    /// Samples per second (for example 8000, 16000, 22050).
    pub sample_rate: u32,
    /// The samples, mono, full scale ±32767.
    pub samples: Vec<i16>,
}

impl AudioFrame {
    /// A frame of `samples` at `sample_rate` Hz.
    pub fn new(sample_rate: u32, samples: Vec<i16>) -> Self {
        Self { sample_rate, samples }
    }

    /// `duration` of digital silence at `sample_rate` (rounded down to whole samples).
    pub fn silence(sample_rate: u32, duration: Duration) -> Self {
        let n = samples_for(sample_rate, duration);
        Self::new(sample_rate, vec![0; n])
    }

    /// Builds a frame from `f32` samples in `[-1.0, 1.0]` (values outside are clipped).
    pub fn from_f32(sample_rate: u32, samples: &[f32]) -> Self {
        Self::new(sample_rate, f32_to_i16(samples))
    }

    /// The samples as `f32` in `[-1.0, 1.0)`.
    pub fn to_f32(&self) -> Vec<f32> {
        i16_to_f32(&self.samples)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when the frame holds no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Play time of the frame (zero when `sample_rate` is 0).
    pub fn duration(&self) -> Duration {
        duration_of(self.sample_rate, self.samples.len())
    }

    /// Removes the silence before the first sample louder than `threshold` (absolute
    /// value), keeping `keep` of it before that sample so the onset is not clipped.
    /// Returns how much was removed. A frame with no sample above `threshold` is left
    /// as it is (nothing to align on). Speech synthesizers start with a few ms of
    /// silence (espeak-ng: 14 ms at 22,050 Hz); on a phone line that silence only
    /// delays the reply.
    pub fn trim_leading_silence(&mut self, threshold: u16, keep: Duration) -> Duration {
        let Some(onset) = self.samples.iter().position(|s| s.unsigned_abs() > threshold) else {
            return Duration::ZERO;
        };
        let cut = onset.saturating_sub(samples_for(self.sample_rate, keep));
        self.samples.drain(..cut);
        duration_of(self.sample_rate, cut)
    }

    /// Removes the silence after the last sample louder than `threshold`, keeping
    /// `keep` of it; returns how much was removed. Like
    /// [`AudioFrame::trim_leading_silence`], a frame with no sample above `threshold`
    /// is left as it is.
    pub fn trim_trailing_silence(&mut self, threshold: u16, keep: Duration) -> Duration {
        let Some(last) = self.samples.iter().rposition(|s| s.unsigned_abs() > threshold) else {
            return Duration::ZERO;
        };
        let end = last
            .saturating_add(1 + samples_for(self.sample_rate, keep))
            .min(self.samples.len());
        let cut = self.samples.len() - end;
        self.samples.truncate(end);
        duration_of(self.sample_rate, cut)
    }
}

/// Converts `i16` samples to `f32` in `[-1.0, 1.0)` with `dasp` (`s / 32768`).
pub fn i16_to_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|s| s.to_sample::<f32>()).collect()
}

/// Converts `f32` samples to `i16` with `dasp`; values outside `[-1.0, 1.0]` are clipped
/// and NaN becomes 0.
pub fn f32_to_i16(samples: &[f32]) -> Vec<i16> {
    samples.iter().map(|&s| f32_sample_to_i16(s)).collect()
}

/// Converts one `f32` sample to `i16` (clipped; NaN becomes 0).
#[inline]
pub fn f32_sample_to_i16(s: f32) -> i16 {
    if s.is_nan() {
        0
    } else {
        s.clamp(-1.0, 1.0).to_sample::<i16>()
    }
}

/// Number of samples in `duration` at `sample_rate` (rounded down).
pub fn samples_for(sample_rate: u32, duration: Duration) -> usize {
    let n = duration.as_nanos() * u128::from(sample_rate) / 1_000_000_000;
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Play time of `n` samples at `sample_rate` (zero when the rate is 0).
pub fn duration_of(sample_rate: u32, n: usize) -> Duration {
    if sample_rate == 0 {
        return Duration::ZERO;
    }
    let nanos = (n as u128) * 1_000_000_000 / u128::from(sample_rate);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_every_i16() {
        let all: Vec<i16> = (i16::MIN..=i16::MAX).collect();
        let f = i16_to_f32(&all);
        assert!(f.iter().all(|v| (-1.0..1.0).contains(v)));
        assert_eq!(f32_to_i16(&f), all);
    }

    #[test]
    fn f32_out_of_range_clips_and_nan_is_silence() {
        assert_eq!(
            f32_to_i16(&[2.0, -2.0, f32::NAN, 0.5, f32::INFINITY]),
            vec![i16::MAX, i16::MIN, 0, 16384, i16::MAX]
        );
    }

    #[test]
    fn frame_duration_and_silence() {
        let f = AudioFrame::silence(8000, Duration::from_millis(20));
        assert_eq!(f.len(), 160);
        assert_eq!(f.duration(), Duration::from_millis(20));
        let g = AudioFrame::from_f32(16000, &f.to_f32());
        assert_eq!(g.len(), 160);
        assert_eq!(g.duration(), Duration::from_millis(10));
        assert_eq!(AudioFrame::new(0, vec![1]).duration(), Duration::ZERO);
        assert!(AudioFrame::default().is_empty());
        assert_eq!(samples_for(22050, Duration::from_millis(20)), 441);
    }

    #[test]
    fn leading_silence_is_trimmed_up_to_the_kept_lead_in() {
        // 30 ms of near-silence (|s| <= 40), then a tone at sample 240.
        let mut samples: Vec<i16> = (0..240).map(|i| if i % 2 == 0 { 40 } else { -40 }).collect();
        samples.extend((0..160).map(|i| ((i as f64 * 0.5).sin() * 9000.0) as i16 + 500));
        let mut f = AudioFrame::new(8000, samples.clone());
        let cut = f.trim_leading_silence(64, Duration::from_millis(2));
        assert_eq!(cut, Duration::from_millis(28));
        assert_eq!(f.samples, samples[224..]);
        // nothing left to trim: the onset is within the kept lead-in
        assert_eq!(
            f.trim_leading_silence(64, Duration::from_millis(2)),
            Duration::ZERO
        );
        assert_eq!(f.samples.len(), 176);
        // a frame that never rises above the threshold is kept whole
        let mut quiet = AudioFrame::new(8000, vec![30; 800]);
        assert_eq!(quiet.trim_leading_silence(64, Duration::ZERO), Duration::ZERO);
        assert_eq!(quiet.len(), 800);
        // sound from the first sample: nothing removed
        let mut loud = AudioFrame::new(8000, vec![1000; 10]);
        assert_eq!(
            loud.trim_leading_silence(64, Duration::from_millis(5)),
            Duration::ZERO
        );
        assert_eq!(loud.len(), 10);
    }

    #[test]
    fn trailing_silence_is_trimmed_after_the_kept_tail() {
        let mut samples = vec![0i16; 80];
        samples.extend([900, -900, 900]);
        samples.extend(vec![20i16; 400]); // 50 ms below the threshold
        let mut f = AudioFrame::new(8000, samples);
        let cut = f.trim_trailing_silence(64, Duration::from_millis(5));
        assert_eq!(cut, Duration::from_millis(45));
        assert_eq!(f.len(), 80 + 3 + 40);
        assert_eq!(f.samples[82], 900);
        assert_eq!(
            f.trim_trailing_silence(64, Duration::from_millis(5)),
            Duration::ZERO
        );
        // all below the threshold: kept whole
        let mut quiet = AudioFrame::new(8000, vec![20; 100]);
        assert_eq!(quiet.trim_trailing_silence(64, Duration::ZERO), Duration::ZERO);
        assert_eq!(quiet.len(), 100);
    }
}
