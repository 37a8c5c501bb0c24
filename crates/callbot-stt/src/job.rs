//! Engine-neutral request, result and job-handle types, and the [`Transcriber`] trait.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::error::SttError;

/// Sample rate of every utterance given to a [`Transcriber`]: 16 kHz mono f32 in [-1, 1].
pub const SAMPLE_RATE: u32 = 16_000;

/// Utterances shorter than this (100 ms) return an empty transcript without running the engine.
pub const MIN_UTTERANCE: Duration = Duration::from_millis(100);

/// The longest utterance accepted: 30 s, one Whisper window. A phone bot's endpointer cuts
/// turns long before this; longer audio is refused with [`SttError::AudioTooLong`].
pub const MAX_UTTERANCE: Duration = Duration::from_secs(30);

/// How tokens are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decoding {
    /// Greedy decoding; `best_of` candidates when a temperature fallback samples (1..=8).
    Greedy {
        /// Candidates sampled on temperature fallback.
        best_of: u8,
    },
    /// Beam search with `beam_size` beams (1..=8): slower, sometimes more accurate. With
    /// tiny.en on espeak-ng speech (`tests/accuracy.rs`), 5 beams scored 20.0 % WER against
    /// greedy's 23.6 % on the accuracy set (60 clips, 555 words) clean and 41.8 % against
    /// 45.2 % at 8 kHz u-law, but only 33.1 % against 33.6 % on the held-out set (200 clips,
    /// 1,575 words), for 1.20-1.25x the wall time and 1.27-1.32x the CPU of a 3-4 s turn
    /// (`tests/speed.rs`); 3 beams gained nothing clean (23.6 %).
    BeamSearch {
        /// Number of beams.
        beam_size: u8,
    },
}

impl Default for Decoding {
    fn default() -> Self {
        Decoding::Greedy { best_of: 1 }
    }
}

/// How much of the encoder window is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AudioWindow {
    /// Sized from the utterance (length plus margin, see
    /// [`WhisperTranscriber::audio_ctx_for`](crate::WhisperTranscriber::audio_ctx_for)):
    /// about 2x faster than the full window on phone turns, same accuracy on the test set.
    #[default]
    Auto,
    /// The model's full window (30 s for Whisper), whatever the utterance length.
    Full,
    /// A fixed window in encoder frames (20 ms each for Whisper).
    Frames(u16),
}

/// Per-request options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscribeOptions {
    /// Spoken language as an ISO 639-1 code (`"en"`, `"de"`, ...), or `"auto"` to detect it.
    pub language: String,
    /// Decoding strategy.
    pub decoding: Decoding,
    /// Text to prime the decoder with (names, domain words). At most 1,000 bytes, no NUL.
    pub initial_prompt: Option<String>,
    /// Compute threads for this job; `None` uses the transcriber's default.
    pub threads: Option<usize>,
    /// Encoder window.
    pub window: AudioWindow,
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        Self {
            language: "en".into(),
            decoding: Decoding::default(),
            initial_prompt: None,
            threads: None,
            window: AudioWindow::Auto,
        }
    }
}

/// One utterance to transcribe.
#[derive(Debug, Clone)]
pub struct TranscriptionRequest {
    /// 16 kHz mono f32 samples.
    pub audio: Vec<f32>,
    /// Options.
    pub options: TranscribeOptions,
    /// When the result is no longer useful; `None` uses the transcriber's default timeout.
    pub deadline: Option<Instant>,
}

impl TranscriptionRequest {
    /// A request for `audio` (16 kHz mono f32) with default options and deadline.
    pub fn new(audio: Vec<f32>) -> Self {
        Self {
            audio,
            options: TranscribeOptions::default(),
            deadline: None,
        }
    }

    /// Sets the options.
    pub fn with_options(mut self, options: TranscribeOptions) -> Self {
        self.options = options;
        self
    }

    /// Sets the deadline.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Length of the audio.
    pub fn duration(&self) -> Duration {
        samples_to_duration(self.audio.len())
    }
}

/// Duration of `samples` at 16 kHz.
pub fn samples_to_duration(samples: usize) -> Duration {
    Duration::from_micros(
        u64::try_from(samples)
            .unwrap_or(u64::MAX)
            .saturating_mul(1_000_000)
            / u64::from(SAMPLE_RATE),
    )
}

/// One piece of the transcript with its place in the utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Text (trimmed).
    pub text: String,
    /// Start, from the beginning of the utterance.
    pub start: Duration,
    /// End, from the beginning of the utterance.
    pub end: Duration,
    /// Mean natural-log probability of the segment's text tokens (0 is certain).
    pub avg_logprob: f32,
    /// Probability that the window held no speech (0..=1).
    pub no_speech_prob: f32,
}

/// Where the time of a job went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobTimings {
    /// From submission until a worker took the job.
    pub queued: Duration,
    /// Engine time (zero when the engine was not run).
    pub inference: Duration,
    /// From submission until the result was ready.
    pub total: Duration,
}

/// The result of one transcription.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    /// The whole text: segments joined with spaces, trimmed. Empty for silence or too-short audio.
    pub text: String,
    /// Segments in order.
    pub segments: Vec<Segment>,
    /// Mean natural-log probability over all text tokens; `None` when there were none.
    pub avg_logprob: Option<f32>,
    /// Highest no-speech probability of the segments; 1.0 when the engine produced nothing
    /// or was not run. A bot can ignore coughs and noise with e.g. `no_speech_prob > 0.6`.
    pub no_speech_prob: f32,
    /// Length of the audio.
    pub audio: Duration,
    /// Encoder window used, in frames (`0` when the engine was not run).
    pub audio_ctx: u16,
    /// Timings.
    pub timings: JobTimings,
}

impl Transcript {
    /// The transcript of audio too short to contain a word: empty, no-speech probability 1.
    pub fn empty(audio: Duration, timings: JobTimings) -> Self {
        Self {
            text: String::new(),
            segments: Vec::new(),
            avg_logprob: None,
            no_speech_prob: 1.0,
            audio,
            audio_ctx: 0,
            timings,
        }
    }
}

/// Shared cancel flag and deadline of one job; read by the engine's abort check.
#[derive(Debug)]
pub(crate) struct JobControl {
    cancelled: AtomicBool,
    deadline: Instant,
}

impl JobControl {
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }
    /// `Some(error)` when the job should stop now.
    pub(crate) fn stop_reason(&self, now: Instant) -> Option<SttError> {
        if self.is_cancelled() {
            Some(SttError::Cancelled)
        } else if now >= self.deadline {
            Some(SttError::DeadlineExceeded)
        } else {
            None
        }
    }
}

/// Slack given to an engine past a job's deadline before [`TranscriptionJob::wait`] gives up.
const WAIT_SLACK: Duration = Duration::from_secs(2);

/// The caller's side of a submitted job. Dropping it cancels the job (a caller who hung up
/// frees the worker at once).
#[derive(Debug)]
pub struct TranscriptionJob {
    control: Arc<JobControl>,
    rx: Receiver<Result<Transcript, SttError>>,
}

/// The engine's side of a job: check [`is_stopped`](Self::is_stopped) while working, then
/// [`complete`](Self::complete). Dropping it without completing makes the caller see
/// [`SttError::WorkerLost`].
#[derive(Debug)]
pub struct JobCompletion {
    control: Arc<JobControl>,
    tx: Sender<Result<Transcript, SttError>>,
}

/// A connected job handle and completion, for engines implementing [`Transcriber`].
pub fn job_channel(deadline: Instant) -> (TranscriptionJob, JobCompletion) {
    let control = Arc::new(JobControl {
        cancelled: AtomicBool::new(false),
        deadline,
    });
    let (tx, rx) = crossbeam_channel::bounded(1);
    (
        TranscriptionJob {
            control: Arc::clone(&control),
            rx,
        },
        JobCompletion { control, tx },
    )
}

impl TranscriptionJob {
    /// Asks the engine to stop; the job then ends with [`SttError::Cancelled`] (unless it
    /// had already finished).
    pub fn cancel(&self) {
        self.control.cancel();
    }

    /// The job's deadline.
    pub fn deadline(&self) -> Instant {
        self.control.deadline()
    }

    /// The channel the result arrives on (exactly one message), for `crossbeam_channel::select!`.
    pub fn result_channel(&self) -> &Receiver<Result<Transcript, SttError>> {
        &self.rx
    }

    /// The result if it is ready, without blocking.
    pub fn try_result(&self) -> Option<Result<Transcript, SttError>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(crossbeam_channel::TryRecvError::Empty) => None,
            Err(crossbeam_channel::TryRecvError::Disconnected) => Some(Err(SttError::WorkerLost)),
        }
    }

    /// Waits for the result, at most until `deadline`; on timeout the job is cancelled and
    /// [`SttError::DeadlineExceeded`] returned.
    pub fn wait_until(self, deadline: Instant) -> Result<Transcript, SttError> {
        match self.rx.recv_deadline(deadline) {
            Ok(r) => r,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                self.cancel();
                Err(SttError::DeadlineExceeded)
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(SttError::WorkerLost),
        }
    }

    /// Waits for the result. Bounded: the engine ends every job by its deadline, and this
    /// gives up 2 s after it.
    pub fn wait(self) -> Result<Transcript, SttError> {
        let limit = self.control.deadline() + WAIT_SLACK;
        self.wait_until(limit)
    }
}

impl Drop for TranscriptionJob {
    fn drop(&mut self) {
        // Harmless if the job already finished; frees the worker if it is still running.
        self.control.cancel();
    }
}

impl JobCompletion {
    /// True once the job is cancelled or past its deadline.
    pub fn is_stopped(&self) -> bool {
        self.control.stop_reason(Instant::now()).is_some()
    }

    /// The error to report if the job is stopped now ([`SttError::Cancelled`] or
    /// [`SttError::DeadlineExceeded`]).
    pub fn stop_reason(&self) -> Option<SttError> {
        self.control.stop_reason(Instant::now())
    }

    /// The job's deadline.
    pub fn deadline(&self) -> Instant {
        self.control.deadline()
    }

    pub(crate) fn control(&self) -> &Arc<JobControl> {
        &self.control
    }

    /// Delivers the result (ignored if the caller has gone).
    pub fn complete(self, result: Result<Transcript, SttError>) {
        // The channel holds one message and only this sends: never blocks. A gone caller is fine.
        let _ = self.tx.try_send(result);
    }
}

/// A speech-to-text engine: takes 16 kHz mono f32 utterances, returns transcripts.
///
/// Implementations run jobs on their own threads; [`submit`](Self::submit) never blocks
/// on inference. An engine of your own builds its job handles with [`job_channel`].
pub trait Transcriber: Send + Sync {
    /// Queues one utterance. Fails at once with [`SttError::QueueFull`],
    /// [`SttError::ShutDown`], [`SttError::AudioTooLong`], [`SttError::InvalidAudio`] or
    /// [`SttError::InvalidOptions`]; every other outcome arrives through the job.
    fn submit(&self, request: TranscriptionRequest) -> Result<TranscriptionJob, SttError>;

    /// Submits and waits (bounded by the request's deadline).
    fn transcribe(&self, request: TranscriptionRequest) -> Result<Transcript, SttError> {
        self.submit(request)?.wait()
    }

    /// Stops the engine: queued jobs fail with [`SttError::Cancelled`], running ones may
    /// finish until `deadline` and are aborted then; threads are joined and the model freed.
    /// Idempotent.
    fn shutdown(&mut self, deadline: Instant) -> SttShutdownReport;
}

/// What [`Transcriber::shutdown`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SttShutdownReport {
    /// True when an earlier call had already shut the engine down: nothing was done, except
    /// waiting again for workers an earlier call reported in `workers_not_joined`.
    pub already_shut_down: bool,
    /// Queued jobs failed with [`SttError::Cancelled`].
    pub queued_cancelled: usize,
    /// Jobs that were running and finished before the deadline.
    pub running_finished: usize,
    /// Jobs that were running at the deadline and were aborted.
    pub running_aborted: usize,
    /// From the abort of the running jobs (at the deadline) until the last worker had
    /// stopped; `None` when nothing had to be aborted, or when a worker did not stop.
    pub abort_latency: Option<Duration>,
    /// Worker threads joined.
    pub workers_joined: usize,
    /// Worker threads that had not stopped by the deadline plus the engine's abort grace
    /// (should be 0). They are not detached: a later `shutdown` call (or `Drop`) waits for
    /// them again and frees the model once they are gone.
    pub workers_not_joined: usize,
    /// True when the model memory was released (always after every state).
    pub model_freed: bool,
    /// How long the shutdown took.
    pub elapsed: Duration,
}
