//! WAV files with `hound`: a tolerant reader and a streaming writer.
//!
//! - [`read_wav`] accepts any sample rate, any channel count and 8/16/24/32-bit integer or
//!   32-bit float samples, downmixes to mono (channel average) and returns an
//!   [`AudioFrame`] at the file's own rate. Files longer than [`MAX_READ`] are refused
//!   (input size limit); [`read_wav_limited`] sets another limit.
//! - [`write_wav`] writes a mono 16-bit file in one go.
//! - [`WavWriter`] writes 16-bit PCM (1 or more interleaved channels) **as it goes**: each
//!   [`WavWriter::write`] goes to the file (buffered), [`WavWriter::flush`] makes the file
//!   valid up to that point (header sizes updated), [`WavWriter::finish`] finalizes it and
//!   reports what was written. Dropping an unfinished writer finalizes it too (errors are
//!   logged). The writer writes to exactly the path it is given: atomic publication
//!   (temp name, rename when done) is the caller's policy, e.g. callbot-rtp's recorder.
//!
//! ```no_run
//! use callbot_audio::{AudioFrame, wav};
//! let mut w = wav::WavWriter::create("/tmp/call.wav", 8000, 2)?;
//! w.write(&[0, 0, 100, -100])?; // two stereo frames
//! let report = w.finish()?;
//! assert_eq!(report.frames, 2);
//! let back: AudioFrame = wav::read_wav("/tmp/call.wav")?; // downmixed to mono
//! assert_eq!(back.sample_rate, 8000);
//! # Ok::<(), callbot_audio::AudioError>(())
//! ```

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dasp::Sample;

use crate::error::AudioError;
use crate::frame::{AudioFrame, duration_of, f32_sample_to_i16};

/// The longest file [`read_wav`] accepts: one hour.
pub const MAX_READ: Duration = Duration::from_secs(3600);

fn wav_err(path: &Path, source: hound::Error) -> AudioError {
    AudioError::Wav {
        path: path.display().to_string(),
        source,
    }
}

fn format_err(path: &Path, reason: impl Into<String>) -> AudioError {
    AudioError::WavFormat {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Reads any PCM or float WAV file, downmixed to mono 16-bit at the file's rate.
/// Refuses files longer than [`MAX_READ`].
pub fn read_wav(path: impl AsRef<Path>) -> Result<AudioFrame, AudioError> {
    read_wav_limited(path, MAX_READ)
}

/// [`read_wav`] with a custom length limit.
pub fn read_wav_limited(path: impl AsRef<Path>, max: Duration) -> Result<AudioFrame, AudioError> {
    let path = path.as_ref();
    let mut reader = hound::WavReader::open(path).map_err(|e| wav_err(path, e))?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    if channels == 0 || spec.sample_rate == 0 || spec.sample_rate > crate::resample::MAX_RATE {
        return Err(format_err(
            path,
            format!(
                "unsupported: {} channels at {} Hz",
                spec.channels, spec.sample_rate
            ),
        ));
    }
    let frames = reader.duration() as usize;
    let max_frames = crate::frame::samples_for(spec.sample_rate, max);
    if frames > max_frames {
        return Err(format_err(
            path,
            format!(
                "{} longer than the {max:?} limit",
                humanize(duration_of(spec.sample_rate, frames))
            ),
        ));
    }
    // The header's length is not trusted for allocation: at most 1 M samples up front.
    let mut mono = Vec::with_capacity(frames.min(1 << 20));
    let mut acc = 0.0f64;
    let mut in_frame = 0usize;
    let mut push = |v: f64, mono: &mut Vec<i16>| {
        acc += v;
        in_frame += 1;
        if in_frame == channels {
            mono.push(f32_sample_to_i16((acc / channels as f64) as f32));
            acc = 0.0;
            in_frame = 0;
        }
    };
    match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => {
            for s in reader.samples::<f32>() {
                let s = s.map_err(|e| wav_err(path, e))?;
                push(f64::from(s), &mut mono);
            }
        }
        (hound::SampleFormat::Int, bits @ 1..=32) => {
            let scale = 2f64.powi(i32::from(bits) - 1);
            for s in reader.samples::<i32>() {
                let s = s.map_err(|e| wav_err(path, e))?;
                push(f64::from(s) / scale, &mut mono);
            }
        }
        (format, bits) => {
            return Err(format_err(
                path,
                format!("unsupported sample format {format:?} with {bits} bits"),
            ));
        }
    }
    Ok(AudioFrame::new(spec.sample_rate, mono))
}

fn humanize(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Writes `frame` as a mono 16-bit WAV file at its sample rate.
pub fn write_wav(path: impl AsRef<Path>, frame: &AudioFrame) -> Result<(), AudioError> {
    let mut w = WavWriter::create(path, frame.sample_rate, 1)?;
    w.write(&frame.samples)?;
    w.finish()?;
    Ok(())
}

/// What a finished [`WavWriter`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavReport {
    /// The file.
    pub path: PathBuf,
    /// Sample rate (Hz).
    pub sample_rate: u32,
    /// Channels per frame.
    pub channels: u16,
    /// Frames written (samples per channel).
    pub frames: u64,
    /// Play time of what was written.
    pub duration: Duration,
}

/// A streaming 16-bit PCM WAV writer (see the [module docs](self)). Owns the open file;
/// finalized by [`finish`](WavWriter::finish) or on drop.
pub struct WavWriter {
    inner: Option<hound::WavWriter<BufWriter<File>>>,
    path: PathBuf,
    sample_rate: u32,
    channels: u16,
    samples: u64,
}

impl std::fmt::Debug for WavWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavWriter")
            .field("path", &self.path)
            .field("sample_rate", &self.sample_rate)
            .field("channels", &self.channels)
            .field("samples", &self.samples)
            .field("finished", &self.inner.is_none())
            .finish()
    }
}

impl WavWriter {
    /// Creates (or truncates) `path` for 16-bit PCM at `sample_rate` with `channels`
    /// interleaved channels.
    pub fn create(path: impl AsRef<Path>, sample_rate: u32, channels: u16) -> Result<Self, AudioError> {
        let path = path.as_ref().to_path_buf();
        if channels == 0 {
            return Err(AudioError::InvalidConfig("WAV with 0 channels".into()));
        }
        if sample_rate == 0 {
            return Err(AudioError::InvalidRate(0));
        }
        let spec = hound::WavSpec {
            channels,
            sample_rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let inner = hound::WavWriter::create(&path, spec).map_err(|e| wav_err(&path, e))?;
        Ok(Self {
            inner: Some(inner),
            path,
            sample_rate,
            channels,
            samples: 0,
        })
    }

    /// Appends interleaved samples (a multiple of the channel count is expected; a partial
    /// frame is completed by the next call).
    pub fn write(&mut self, samples: &[i16]) -> Result<(), AudioError> {
        let w = self.inner.as_mut().ok_or(AudioError::Finished)?;
        for &s in samples {
            w.write_sample(s).map_err(|e| wav_err(&self.path, e))?;
        }
        self.samples += samples.len() as u64;
        Ok(())
    }

    /// Appends `f32` samples (converted with `dasp`, clipped).
    pub fn write_f32(&mut self, samples: &[f32]) -> Result<(), AudioError> {
        let w = self.inner.as_mut().ok_or(AudioError::Finished)?;
        for &s in samples {
            let v: i16 = if s.is_nan() {
                0
            } else {
                s.clamp(-1.0, 1.0).to_sample()
            };
            w.write_sample(v).map_err(|e| wav_err(&self.path, e))?;
        }
        self.samples += samples.len() as u64;
        Ok(())
    }

    /// Writes buffered data and updates the header, so the file on disk is a valid WAV
    /// holding everything written so far.
    pub fn flush(&mut self) -> Result<(), AudioError> {
        let w = self.inner.as_mut().ok_or(AudioError::Finished)?;
        w.flush().map_err(|e| wav_err(&self.path, e))
    }

    /// Frames (samples per channel) written so far.
    pub fn frames(&self) -> u64 {
        self.samples / u64::from(self.channels)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Finalizes the file (header sizes, close) and reports what it holds. A second call
    /// returns [`AudioError::Finished`].
    pub fn finish(&mut self) -> Result<WavReport, AudioError> {
        let w = self.inner.take().ok_or(AudioError::Finished)?;
        w.finalize().map_err(|e| wav_err(&self.path, e))?;
        let frames = self.frames();
        tracing::debug!(path = %self.path.display(), frames, "WAV finalized");
        Ok(WavReport {
            path: self.path.clone(),
            sample_rate: self.sample_rate,
            channels: self.channels,
            frames,
            duration: duration_of(self.sample_rate, usize::try_from(frames).unwrap_or(usize::MAX)),
        })
    }
}

impl Drop for WavWriter {
    fn drop(&mut self) {
        if self.inner.is_some()
            && let Err(e) = self.finish()
        {
            tracing::warn!(path = %self.path.display(), error = %e, "WAV finalize on drop failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> callbot_testkit::TempDir {
        callbot_testkit::temp_dir("callbot-audio-wav")
    }

    #[test]
    fn mono_round_trip() {
        let dir = tmp();
        let p = dir.path().join("a.wav");
        let f = AudioFrame::new(8000, (0..800).map(|i| (i * 37 - 15000) as i16).collect());
        write_wav(&p, &f).unwrap();
        assert_eq!(read_wav(&p).unwrap(), f);
    }

    #[test]
    fn streaming_writer_is_valid_after_flush_and_finalizes_on_drop() {
        let dir = tmp();
        let p = dir.path().join("s.wav");
        let mut w = WavWriter::create(&p, 8000, 2).unwrap();
        w.write(&[1000, -1000, 2000, -2000]).unwrap();
        w.flush().unwrap();
        // Readable while still open.
        let mid = hound::WavReader::open(&p).unwrap();
        assert_eq!(mid.duration(), 2);
        drop(mid);
        w.write_f32(&[0.5, 0.5]).unwrap();
        assert_eq!(w.frames(), 3);
        drop(w);
        let back = read_wav(&p).unwrap();
        // Downmix averages the channels: (1000 + -1000) / 2 = 0, ..., (16384+16384)/2.
        assert_eq!(back.samples, vec![0, 0, 16384]);
        let mut w = WavWriter::create(&p, 8000, 1).unwrap();
        let report = w.finish().unwrap();
        assert_eq!(report.frames, 0);
        assert!(matches!(w.finish(), Err(AudioError::Finished)));
        assert!(matches!(w.write(&[1]), Err(AudioError::Finished)));
    }

    /// Writes `samples` (interleaved) with hound: (channels, sample rate, bits per sample)
    /// and `format`.
    fn hound_wav<S: hound::Sample + Copy>(
        path: &std::path::Path,
        (channels, sample_rate, bits_per_sample): (u16, u32, u16),
        sample_format: hound::SampleFormat,
        samples: &[S],
    ) {
        let spec = hound::WavSpec {
            channels,
            sample_rate,
            bits_per_sample,
            sample_format,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for &v in samples {
            w.write_sample(v).unwrap();
        }
        w.finalize().unwrap();
    }

    #[test]
    fn reader_accepts_other_formats_and_downmixes() {
        let dir = tmp();
        // 24-bit stereo at 44.1 kHz.
        let p = dir.path().join("24.wav");
        // left +0.5, right 0
        hound_wav(
            &p,
            (2, 44100, 24),
            hound::SampleFormat::Int,
            &[1i32 << 22, 0].repeat(10),
        );
        let f = read_wav(&p).unwrap();
        assert_eq!(f.sample_rate, 44100);
        assert_eq!(f.samples, vec![8192; 10]); // (0.5 + 0) / 2 = 0.25
        // 32-bit float mono, 8-bit mono.
        let p = dir.path().join("f.wav");
        hound_wav(
            &p,
            (1, 16000, 32),
            hound::SampleFormat::Float,
            &[0.25f32, -1.5, 1.0],
        );
        assert_eq!(read_wav(&p).unwrap().samples, vec![8192, -32768, 32767]);
        let p = dir.path().join("8.wav");
        hound_wav(&p, (1, 8000, 8), hound::SampleFormat::Int, &[64i8, -128, 0]);
        assert_eq!(read_wav(&p).unwrap().samples, vec![16384, -32768, 0]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Any corruption of a valid file's bytes gives a frame or an error, never a panic
        /// or a huge allocation.
        #[test]
        fn reader_survives_corrupted_files(
            edits in proptest::collection::vec((0usize..200, proptest::num::u8::ANY), 1..12),
            cut in 0usize..300,
        ) {
            let dir = tmp();
            let p = dir.path().join("c.wav");
            write_wav(&p, &AudioFrame::new(8000, (0..100).map(|i| i * 300).collect())).unwrap();
            let mut bytes = std::fs::read(&p).unwrap();
            for (at, v) in edits {
                let i = at % bytes.len();
                bytes[i] = v;
            }
            bytes.truncate(cut.max(1));
            std::fs::write(&p, &bytes).unwrap();
            if let Ok(f) = read_wav(&p) {
                proptest::prop_assert!(f.len() <= 1 << 20);
            }
        }
    }

    #[test]
    fn reader_rejects_garbage_missing_and_too_long() {
        let dir = tmp();
        let p = dir.path().join("g.wav");
        std::fs::write(&p, b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk").unwrap();
        assert!(matches!(read_wav(&p), Err(AudioError::Wav { .. })));
        assert!(read_wav(dir.path().join("missing.wav")).is_err());
        let p = dir.path().join("long.wav");
        write_wav(&p, &AudioFrame::new(8000, vec![0; 16000])).unwrap();
        assert!(matches!(
            read_wav_limited(&p, Duration::from_secs(1)),
            Err(AudioError::WavFormat { .. })
        ));
        assert_eq!(read_wav_limited(&p, Duration::from_secs(2)).unwrap().len(), 16000);
        // Truncated data chunk: an error, not a panic.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2 + 1]).unwrap();
        assert!(read_wav(&p).is_err());
    }
}
