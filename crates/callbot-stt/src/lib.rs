//! # callbot-stt: speech to text for phone voice bots
//!
//! A [`Transcriber`] takes one caller utterance (16 kHz mono f32, as produced by
//! `callbot-audio`'s resampler) and returns a [`Transcript`]: text, [`Segment`]s with times,
//! average log-probability and no-speech probability (so a bot can ignore coughs and noise).
//! Other engines plug in by implementing the trait and building their job handles with
//! [`job_channel`].
//!
//! ## `WhisperTranscriber`: what it owns, which threads it starts, how it stops
//!
//! [`WhisperTranscriber`] owns **one** whisper.cpp model (a `whisper-rs` context, loaded once
//! and shared by every job), a bounded job queue (`queue_capacity`, default 8) and
//! `workers` named threads `stt-whisper-N` (default: one per two cores, so one on a 2-core
//! machine, with 2 compute threads per job). Every job runs on a whisper state of its own,
//! never shared and freed when the job ends, so results never depend on earlier jobs; each
//! worker allocates the state for its next job while it waits, off the latency path.
//!
//! Before whisper.cpp sees the model file, its whole layout is checked
//! ([`validate_model_file`]): a missing, foreign or truncated file is an error, never a
//! whisper.cpp `abort()`. whisper.cpp's own log lines go to `tracing` (target `whisper_cpp`).
//!
//! Every job has a deadline (the request's, or `default_timeout`) and a cancel flag, both
//! checked by whisper.cpp's abort callback: cancelling (or dropping) the
//! [`TranscriptionJob`] of a caller who hung up frees the worker at whisper.cpp's next
//! check. The workspace builds a patched whisper.cpp (`vendor/whisper-rs-sys/PATCHES.md`)
//! that checks the callback after every graph node, inside the encoder passes (language
//! detection included) as well as at every decoder step; stock 1.8.3 only checks between
//! passes, so a cancel landing in the encoder waited 0.5-2 s for the pass to end. Measured
//! with a 25 s utterance and the full window on 2 cores shared with other builds (load
//! average 7.5; an encoder pass took 9.8 s instead of about 1 s on an idle machine): cancel
//! to `Cancelled` 81 ms median (133 ms max) inside the encoder pass, 15 ms while decoding;
//! cancel to the worker taking its next job 101 ms / 36 ms (`tests/lifecycle.rs`). An
//! aborted job ends with [`SttError::Cancelled`] (or [`SttError::DeadlineExceeded`]), and
//! whisper.cpp's "failed to encode" / "failed to decode" lines for it are logged at
//! `debug`, not as errors. A job that panics (a bug) fails alone with
//! [`SttError::WorkerLost`]; its worker goes on.
//!
//! Audio shorter than [`MIN_UTTERANCE`] returns an empty transcript without running whisper;
//! audio longer than [`MAX_UTTERANCE`] (30 s) is refused. The encoder window is sized from
//! the utterance ([`AudioWindow::Auto`]) instead of whisper's fixed 30 s.
//!
//! [`Transcriber::shutdown`] fails queued jobs with [`SttError::Cancelled`], lets running
//! jobs finish until the deadline and aborts them then, joins the workers (each frees its
//! state, then drops its reference to the model, before it ends, also when it panics),
//! frees the model last and logs "Whisper model cleaned up". It returns by the deadline
//! plus [`WhisperConfig::abort_grace`] (default 1 s) at the latest, and its
//! [`SttShutdownReport`] says what happened: jobs cancelled in the queue, finished, aborted,
//! how long the aborted ones took to stop, workers joined. A worker still inside whisper.cpp
//! after the grace (not seen with the patched abort) is reported in `workers_not_joined`,
//! keeps the model alive and is waited for again by the next call or `Drop`. Later calls
//! do nothing else; `Drop` calls it with a 2 s deadline.
//!
//! ## Accuracy: what to expect from tiny.en
//!
//! This crate adds no error of its own: on the same audio it returns the words a direct
//! whisper-rs call returns (the model README's reference, 6 sentences, is reproduced word for
//! word, and the test `heavy_wer_reference_sentences` keeps it so), and faster-whisper, an
//! independent implementation of the same weights, scores the same or worse
//! (`tests/accuracy.rs`). What the words are depends on the model and the speech. With
//! tiny.en, the model the tests use, on espeak-ng's synthetic voices (clean 16 kHz, five
//! English voices): 9.6 % WER on the README's six phone sentences (en-us alone), 23.6 % on
//! twelve phone-bot sentences, 33.6 % on the IEEE Harvard sentences, about twice that
//! through an 8 kHz G.711 call. [`Decoding::BeamSearch`] with 5 beams takes 0.5-3.6 points
//! off for 1.25x the time of a turn; an [`TranscribeOptions::initial_prompt`] with the
//! domain's words (names, products) helps where the words are known. For real callers,
//! prefer a larger model (`cargo xtask model base.en`) where the CPU allows it.
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use callbot_stt::{Transcriber, TranscriptionRequest, WhisperConfig, WhisperTranscriber};
//!
//! # fn main() -> Result<(), callbot_stt::SttError> {
//! let mut stt = WhisperTranscriber::new(WhisperConfig::new("models/ggml-tiny.en.bin"))?;
//! let utterance: Vec<f32> = vec![0.0; 16_000 * 2]; // 16 kHz mono f32 from the call
//! let job = stt.submit(
//!     TranscriptionRequest::new(utterance).with_deadline(Instant::now() + Duration::from_secs(5)),
//! )?;
//! // ... job.cancel() if the caller hangs up; dropping `job` cancels it too.
//! let transcript = job.wait()?;
//! if transcript.no_speech_prob < 0.6 {
//!     println!("caller said: {}", transcript.text);
//! }
//! let report = stt.shutdown(Instant::now() + Duration::from_secs(2));
//! assert!(report.model_freed);
//! # Ok(())
//! # }
//! ```
// whisper-rs leaves two things to raw FFI: the abort callback (its safe setter leaks a
// boxed closure per call) and routing whisper.cpp's logs into `tracing`. Those two places
// (`whisper.rs`, `logging.rs`) hold this crate's only unsafe blocks.
#![allow(unsafe_code)]

mod error;
mod job;
#[cfg(test)]
mod lifecycle_tests;
mod logging;
mod model_file;
mod whisper;

pub use error::SttError;
pub use job::{
    AudioWindow, Decoding, JobCompletion, JobTimings, MAX_UTTERANCE, MIN_UTTERANCE, SAMPLE_RATE, Segment,
    SttShutdownReport, TranscribeOptions, Transcriber, Transcript, TranscriptionJob, TranscriptionRequest,
    job_channel, samples_to_duration,
};
pub use model_file::{ModelInfo, validate_model_file};
pub use whisper::{WhisperConfig, WhisperTranscriber};
