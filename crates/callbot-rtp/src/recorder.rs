//! Call recorder: a stereo 8 kHz WAV (caller left, bot right) written while the call
//! runs, under a hidden temporary name in the target directory, renamed into place when
//! it ends.
//!
//! [`Recorder`] is an RAII guard: [`Recorder::finish`] finalises and renames; if it is
//! dropped instead (error path, panic unwinding, shutdown mid-call) `Drop` does the
//! same, and if finalising fails the temporary file is removed. Either way no temporary
//! file is left behind (only a SIGKILL of the whole process can leave one: its name
//! starts with `.` and ends with `.part`).

use std::path::{Path, PathBuf};

use callbot_audio::wav::WavWriter;
use std::time::Duration;

/// Recorder errors.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// Creating, writing or renaming the file failed.
    #[error("recording {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The WAV writer failed.
    #[error("recording {path}: {source}")]
    Wav {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: callbot_audio::AudioError,
    },
}

/// What a finished recording holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingReport {
    /// Final path of the WAV file.
    pub path: PathBuf,
    /// Length of the recording.
    pub duration: Duration,
}

/// Makes a call-id safe as a file name: keeps `A-Z a-z 0-9 . _ - @`, replaces the
/// rest with `_`, never starts with `.`, at most 120 characters, never empty.
pub fn sanitize_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .take(120)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with('.') {
        s.replace_range(..1, "_");
    }
    if s.is_empty() {
        s.push_str("call");
    }
    s
}

/// A recording in progress. See the module documentation.
pub struct Recorder {
    tmp: PathBuf,
    path: PathBuf,
    writer: Option<WavWriter>,
    frames: u64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .field("frames", &self.frames)
            .finish()
    }
}

impl Recorder {
    /// Starts `dir/<sanitised name>.wav` (written as `dir/.<name>.wav.<pid>.<n>.part`).
    pub fn create(dir: &Path, name: &str) -> Result<Self, RecorderError> {
        let name = sanitize_name(name);
        let path = dir.join(format!("{name}.wav"));
        let tmp = dir.join(format!(
            ".{name}.wav.{}.{:08x}.part",
            std::process::id(),
            rand::random::<u32>()
        ));
        let writer = WavWriter::create(&tmp, 8000, 2).map_err(|source| RecorderError::Wav {
            path: tmp.clone(),
            source,
        })?;
        tracing::debug!(path = %path.display(), "recording started");
        Ok(Recorder {
            tmp,
            path,
            writer: Some(writer),
            frames: 0,
        })
    }

    /// Where the finished file will be.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends interleaved stereo samples (caller, bot, caller, bot, ...).
    pub fn write_interleaved(&mut self, samples: &[i16]) -> Result<(), RecorderError> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        w.write(samples).map_err(|source| RecorderError::Wav {
            path: self.tmp.clone(),
            source,
        })?;
        self.frames += samples.len() as u64 / 2;
        Ok(())
    }

    /// Finalises the WAV header and renames the file into place.
    pub fn finish(mut self) -> Result<RecordingReport, RecorderError> {
        self.finish_inner()
    }

    fn finish_inner(&mut self) -> Result<RecordingReport, RecorderError> {
        let Some(mut w) = self.writer.take() else {
            return Err(RecorderError::Io {
                path: self.path.clone(),
                source: std::io::Error::other("already finished"),
            });
        };
        let res = w
            .finish()
            .map(drop)
            .map_err(|source| RecorderError::Wav {
                path: self.tmp.clone(),
                source,
            })
            .and_then(|()| {
                std::fs::rename(&self.tmp, &self.path).map_err(|source| RecorderError::Io {
                    path: self.path.clone(),
                    source,
                })
            });
        if res.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        res?;
        let duration = Duration::from_micros(self.frames * 125);
        tracing::info!(path = %self.path.display(), ?duration, "recording saved");
        Ok(RecordingReport {
            path: self.path.clone(),
            duration,
        })
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.writer.is_some()
            && let Err(e) = self.finish_inner()
        {
            tracing::warn!(error = %e, "recording could not be saved");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn written_under_temp_name_then_renamed() {
        let dir = callbot_testkit::temp_dir("rec");
        let mut r = Recorder::create(dir.path(), "abc/../x@host").unwrap();
        let listing = entries(dir.path());
        assert_eq!(listing.len(), 1);
        assert!(listing[0].starts_with(".abc_.._x@host.wav") && listing[0].ends_with(".part"));
        r.write_interleaved(&[1, -1, 2, -2]).unwrap();
        let rep = r.finish().unwrap();
        assert_eq!(entries(dir.path()), vec!["abc_.._x@host.wav".to_string()]);
        let mut rd = hound::WavReader::open(&rep.path).unwrap();
        assert_eq!(rd.spec().channels, 2);
        let s: Vec<i16> = rd.samples::<i16>().map(|s| s.unwrap()).collect();
        assert_eq!(s, vec![1, -1, 2, -2]);
    }

    #[test]
    fn dropped_during_a_panic_still_lands() {
        let dir = callbot_testkit::temp_dir("rec");
        let d = dir.path().to_path_buf();
        let res = std::thread::spawn(move || {
            let mut r = Recorder::create(&d, "boom").unwrap();
            r.write_interleaved(&[5; 320]).unwrap();
            panic!("application thread panics mid-call");
        })
        .join();
        assert!(res.is_err());
        assert_eq!(entries(dir.path()), vec!["boom.wav".to_string()]);
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(sanitize_name(""), "call");
        assert_eq!(sanitize_name(".hidden"), "_hidden");
        assert_eq!(sanitize_name("a b\0c"), "a_b_c");
        assert_eq!(sanitize_name(&"x".repeat(500)).len(), 120);
    }
}
