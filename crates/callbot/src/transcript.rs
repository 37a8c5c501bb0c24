//! Per-call transcript files: JSON lines, appended and fsynced one finished turn at a time.
//!
//! A [`TranscriptWriter`] creates `<dir>/<unix-seconds>-<call-id>.jsonl` (the call id
//! reduced to `[A-Za-z0-9_-]`, at most 64 characters) and writes, one JSON object per
//! line:
//! 1. `{"type":"call", "call_id", "started_unix_ms"}` when created,
//! 2. `{"type":"turn", ...}` per finished turn ([`TurnRecord`]: who said what, whether the
//!    bot was interrupted, the stage timings in milliseconds),
//! 3. `{"type":"summary", ...}` ([`CallSummary`]) from [`TranscriptWriter::finish`].
//!
//! Every line is written with one `write_all`, then flushed and `fsync`ed before the
//! call returns, so a crash loses no finished turn. The file is written in place under
//! its final name: there is no temp file to leave behind on any path. A call that ends
//! without `finish` (crash, error) keeps every turn written so far, without a summary.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::dialogue::{CallSummary, TurnRecord};

/// Why the transcript could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TranscriptError {
    /// Creating, writing or syncing the file failed.
    #[error("transcript {path}: {source}")]
    Io {
        /// The file (or directory).
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A record could not be serialized.
    #[error("transcript {path}: cannot serialize: {source}")]
    Serialize {
        /// The file.
        path: PathBuf,
        /// The serde error.
        source: serde_json::Error,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line<'a> {
    Call { call_id: &'a str, started_unix_ms: u128 },
    Turn(&'a TurnRecord),
    Summary(&'a CallSummary),
}

/// Writes one call's transcript (see the [module docs](self)).
#[derive(Debug)]
pub struct TranscriptWriter {
    file: File,
    path: PathBuf,
    turns: u32,
}

/// The call id as a file-name part: `[A-Za-z0-9_-]`, at most 64 characters.
fn file_safe(call_id: &str) -> String {
    let s: String = call_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() { "call".into() } else { s }
}

impl TranscriptWriter {
    /// Creates the call's transcript in `dir` (created if missing) and writes its
    /// first line. Never overwrites: a name already taken gets a `-2`, `-3`... suffix.
    pub fn create(
        dir: &Path,
        call_id: &str,
        started: SystemTime,
    ) -> Result<TranscriptWriter, TranscriptError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TranscriptError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let since = started.duration_since(UNIX_EPOCH).unwrap_or_default();
        let stem = format!("{}-{}", since.as_secs(), file_safe(call_id));
        let mut last_err = None;
        for n in 1..=100u32 {
            let name = if n == 1 {
                format!("{stem}.jsonl")
            } else {
                format!("{stem}-{n}.jsonl")
            };
            let path = dir.join(name);
            match OpenOptions::new().append(true).create_new(true).open(&path) {
                Ok(file) => {
                    // Make the new directory entry itself durable.
                    if let Ok(d) = File::open(dir) {
                        let _ = d.sync_all();
                    }
                    let mut w = TranscriptWriter { file, path, turns: 0 };
                    w.write_line(&Line::Call {
                        call_id,
                        started_unix_ms: since.as_millis(),
                    })?;
                    tracing::debug!(path = %w.path.display(), "transcript created");
                    return Ok(w);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Err(TranscriptError::Io {
            path: dir.join(format!("{stem}.jsonl")),
            source: last_err.unwrap_or_else(|| std::io::Error::other("no free name")),
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Turns written so far.
    pub fn turns(&self) -> u32 {
        self.turns
    }

    /// Appends one finished turn; it is on disk (fsynced) when this returns.
    pub fn write_turn(&mut self, turn: &TurnRecord) -> Result<(), TranscriptError> {
        self.write_line(&Line::Turn(turn))?;
        self.turns += 1;
        Ok(())
    }

    /// Appends the call summary and closes the file; returns its path.
    pub fn finish(mut self, summary: &CallSummary) -> Result<PathBuf, TranscriptError> {
        self.write_line(&Line::Summary(summary))?;
        Ok(self.path)
    }

    fn write_line(&mut self, line: &Line<'_>) -> Result<(), TranscriptError> {
        let mut buf = serde_json::to_vec(line).map_err(|source| TranscriptError::Serialize {
            path: self.path.clone(),
            source,
        })?;
        buf.push(b'\n');
        let io = |source| TranscriptError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&buf).map_err(io)?;
        self.file.flush().map_err(io)?;
        self.file.sync_data().map_err(io)
    }
}

/// Logs one finished turn with its stage timings (one line per turn).
pub fn log_turn(call_id: &str, r: &TurnRecord) {
    let ms = |d: Option<std::time::Duration>| d.map_or(-1.0, |d| d.as_secs_f64() * 1000.0);
    let t = &r.timings;
    tracing::info!(
        call = call_id,
        turn = r.index,
        kind = ?r.kind,
        interrupted = r.interrupted,
        endpoint_ms = ms(t.endpoint),
        stt_ms = ms(t.stt),
        llm_first_token_ms = ms(t.llm_first_token),
        tts_first_audio_ms = ms(t.tts_first_audio),
        voice_to_voice_ms = ms(t.voice_to_voice),
        user = r.user.as_deref().unwrap_or(""),
        bot = %r.bot,
        error = r.error.as_deref().unwrap_or(""),
        "turn finished"
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::dialogue::{EndReason, TurnKind, TurnTimings};

    fn turn(i: u32, user: &str) -> TurnRecord {
        TurnRecord {
            index: i,
            kind: TurnKind::Conversation,
            at: Duration::from_millis(1000 * u64::from(i)),
            user: Some(user.into()),
            bot: "Reply \"quoted\"\nnext".into(),
            interrupted: false,
            timings: TurnTimings {
                stt: Some(Duration::from_millis(120)),
                voice_to_voice: Some(Duration::from_millis(640)),
                ..TurnTimings::default()
            },
            error: None,
        }
    }

    fn summary() -> CallSummary {
        CallSummary {
            reason: EndReason::CallerHungUp,
            duration: Duration::from_secs(12),
            turns: 2,
            replies: 2,
            barge_ins: 0,
            noise_ignored: 1,
            utterances_dropped: 0,
            transcriptions_cancelled: 0,
            dtmf_digits: 0,
            speculations: 0,
            speculations_dropped: 0,
            early_ends: 0,
            goodbye_completed: false,
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn writes_header_turns_and_summary_as_json_lines() {
        let dir = callbot_testkit::temp_dir("callbot-transcript");
        let sub = dir.path().join("nested/dir");
        let started = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut w = TranscriptWriter::create(&sub, "a84b4c76e66710@127.0.0.1", started).unwrap();
        assert_eq!(
            w.path().file_name().unwrap().to_str().unwrap(),
            "1700000000-a84b4c76e66710_127_0_0_1.jsonl"
        );
        w.write_turn(&turn(1, "Hi")).unwrap();
        // each turn is complete on disk before the next one
        let l = lines(w.path());
        assert_eq!(l.len(), 2);
        assert_eq!(l[1]["type"], "turn");
        w.write_turn(&turn(2, "Grüß Gott")).unwrap();
        assert_eq!(w.turns(), 2);
        let path = w.finish(&summary()).unwrap();
        let l = lines(&path);
        assert_eq!(l.len(), 4);
        assert_eq!(l[0]["type"], "call");
        assert_eq!(l[0]["call_id"], "a84b4c76e66710@127.0.0.1");
        assert_eq!(l[0]["started_unix_ms"], 1_700_000_000_000u64);
        assert_eq!(l[2]["user"], "Grüß Gott");
        assert_eq!(l[2]["bot"], "Reply \"quoted\"\nnext");
        assert_eq!(l[2]["kind"], "conversation");
        assert_eq!(l[2]["timings"]["voice_to_voice"], 640.0);
        assert_eq!(l[3]["type"], "summary");
        assert_eq!(l[3]["reason"], "caller_hung_up");
        assert_eq!(l[3]["noise_ignored"], 1);
        // only the transcript is in the directory: no temp file
        assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 1);
    }

    #[test]
    fn dropped_writer_keeps_finished_turns_and_leaves_no_other_file() {
        let dir = callbot_testkit::temp_dir("callbot-transcript");
        let path = {
            let mut w = TranscriptWriter::create(dir.path(), "x", SystemTime::now()).unwrap();
            w.write_turn(&turn(1, "one")).unwrap();
            w.path().to_path_buf()
        };
        let l = lines(&path);
        assert_eq!(l.len(), 2);
        assert_eq!(l[1]["user"], "one");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn same_call_id_never_overwrites() {
        let dir = callbot_testkit::temp_dir("callbot-transcript");
        let t = UNIX_EPOCH + Duration::from_secs(5);
        let a = TranscriptWriter::create(dir.path(), "same", t).unwrap();
        let b = TranscriptWriter::create(dir.path(), "same", t).unwrap();
        assert_ne!(a.path(), b.path());
        assert!(b.path().to_str().unwrap().ends_with("5-same-2.jsonl"));
    }

    #[test]
    fn hostile_call_ids_stay_inside_the_directory() {
        let dir = callbot_testkit::temp_dir("callbot-transcript");
        let long = "z".repeat(500);
        for id in ["../../etc/passwd", "", "/abs", "a\0b", long.as_str()] {
            let w = TranscriptWriter::create(dir.path(), id, SystemTime::now()).unwrap();
            assert_eq!(w.path().parent().unwrap(), dir.path());
            assert!(w.path().file_name().unwrap().len() <= 64 + 30);
        }
    }

    #[test]
    fn unwritable_directory_is_an_error_naming_the_path() {
        let dir = callbot_testkit::temp_dir("callbot-transcript");
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let e = TranscriptWriter::create(&file.join("sub"), "c", SystemTime::now()).unwrap_err();
        assert!(e.to_string().contains("plain-file"), "{e}");
    }
}
