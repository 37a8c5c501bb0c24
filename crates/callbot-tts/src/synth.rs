//! The engine-independent part: the [`Synthesizer`] trait, voice options, audio chunks
//! and the job handle with its bounded chunk channel and cancellation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use callbot_audio::AudioFrame;
use callbot_audio::frame::duration_of;

use crate::TtsError;

/// How to speak: voice, speed, pitch and loudness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoiceOptions {
    /// Voice name as the engine knows it (espeak-ng: `en-us`, `en`, `de`, `fr`, ... see
    /// `espeak-ng --voices`). ASCII letters, digits, `-`, `_`, `+`, `/`, at most 64 bytes.
    pub voice: String,
    /// Speaking rate in words per minute, 80..=450 (espeak-ng's normal 175; the default here
    /// is 140, see [`VoiceOptions::default`]).
    pub rate_wpm: u16,
    /// Base pitch, 0..=100 (normal 50).
    pub pitch: u8,
    /// Volume, 0..=200 (normal 100; above 100 may clip).
    pub volume: u8,
}

/// The bot's own voice by default: espeak-ng's American English with its `f2` variant
/// (`en-us+f2`), at 140 words per minute (espeak-ng's own default is `en-us` at 175).
///
/// Why: a phone bot is heard through an 8 kHz G.711 channel, and its words must survive
/// it for a caller (and for a speech recogniser); slower speech is what IVR systems use for
/// the same reason. Measured with Whisper tiny.en as the listener on ten bot replies (101
/// words) after 8 kHz G.711 µ-law (espeak-ng CLI, same engine): `en-us` at 120 wpm 18.8 %
/// WER, at 140 wpm 20.8 %, at 100 wpm 25.7 %; `en` 29.7 %, `en-gb-x-rp` 34.7 %,
/// `en-us+m1` 20.8 %, `en-us+m3` 24.8 %, `en-us+f3` 17.8 %, `en-us+f2` 9.9 % at 120 wpm and
/// 10.9 % at 140 wpm. Through this engine (`tests/heavy.rs`): `en-us+f2` at 140 wpm 5.0 %
/// full band, 10.9 % after 8 kHz µ-law, 15.8 % through the analogue 300-3400 Hz band
/// (`en-us` at 120 wpm: 5.0 % and 20.8-24.8 % after 8 kHz).
impl Default for VoiceOptions {
    fn default() -> Self {
        VoiceOptions {
            voice: "en-us+f2".to_string(),
            rate_wpm: 140,
            pitch: 50,
            volume: 100,
        }
    }
}

impl VoiceOptions {
    /// Lowest accepted rate (words per minute).
    pub const MIN_RATE_WPM: u16 = 80;
    /// Highest accepted rate (words per minute).
    pub const MAX_RATE_WPM: u16 = 450;
    /// Highest accepted pitch.
    pub const MAX_PITCH: u8 = 100;
    /// Highest accepted volume.
    pub const MAX_VOLUME: u8 = 200;
    /// Longest accepted voice name in bytes.
    pub const MAX_VOICE_LEN: usize = 64;

    /// Checks every field's range and the voice name's characters.
    pub fn validate(&self) -> Result<(), TtsError> {
        let v = &self.voice;
        if v.is_empty() || v.len() > Self::MAX_VOICE_LEN {
            return Err(TtsError::InvalidOption(format!(
                "voice name must be 1..={} bytes",
                Self::MAX_VOICE_LEN
            )));
        }
        if !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_+/".contains(&b))
        {
            return Err(TtsError::InvalidOption(format!(
                "voice name {v:?} has invalid characters"
            )));
        }
        if !(Self::MIN_RATE_WPM..=Self::MAX_RATE_WPM).contains(&self.rate_wpm) {
            return Err(TtsError::InvalidOption(format!(
                "rate {} wpm outside {}..={}",
                self.rate_wpm,
                Self::MIN_RATE_WPM,
                Self::MAX_RATE_WPM
            )));
        }
        if self.pitch > Self::MAX_PITCH {
            return Err(TtsError::InvalidOption(format!(
                "pitch {} above {}",
                self.pitch,
                Self::MAX_PITCH
            )));
        }
        if self.volume > Self::MAX_VOLUME {
            return Err(TtsError::InvalidOption(format!(
                "volume {} above {}",
                self.volume,
                Self::MAX_VOLUME
            )));
        }
        Ok(())
    }
}

/// What a finished job produced and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SynthesisSummary {
    /// Samples delivered.
    pub samples: u64,
    /// Chunks delivered.
    pub chunks: u64,
    /// Playing time of the delivered audio.
    pub audio: Duration,
    /// Time the request waited in the engine's queue before synthesis began.
    pub queued: Duration,
    /// Time from the start of synthesis to its end (includes waiting for the consumer).
    pub synthesis: Duration,
    /// Time from the request to its first chunk being handed to the channel.
    pub first_chunk_after: Option<Duration>,
}

/// One event on a job's channel.
#[derive(Debug, Clone, PartialEq)]
pub enum SynthesisEvent {
    /// The next piece of audio, in order.
    Chunk(AudioFrame),
    /// All audio was delivered; no more events follow.
    Finished(SynthesisSummary),
    /// The job failed (or was cancelled); no more events follow.
    Failed(TtsError),
}

/// A one-shot signal: set once, observed by a flag or by a channel that disconnects, so
/// a waiting `crossbeam_channel::select!` wakes at once.
#[derive(Debug)]
pub(crate) struct Signal {
    flag: AtomicBool,
    trigger: Mutex<Option<Sender<()>>>,
    watch: Receiver<()>,
}

impl Signal {
    pub(crate) fn new() -> Arc<Signal> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        Arc::new(Signal {
            flag: AtomicBool::new(false),
            trigger: Mutex::new(Some(tx)),
            watch: rx,
        })
    }

    /// Sets the signal (idempotent).
    pub(crate) fn set(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let mut guard = self.trigger.lock().unwrap_or_else(|e| e.into_inner());
        guard.take();
    }

    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// A receiver that becomes ready (disconnected) once the signal is set.
    pub(crate) fn watch(&self) -> &Receiver<()> {
        &self.watch
    }
}

/// Cancels one synthesis job from any thread (clone it into a barge-in detector).
#[derive(Debug, Clone)]
pub struct CancelHandle {
    signal: Arc<Signal>,
}

impl CancelHandle {
    /// Cancels the job: a queued job never starts, a running one stops at its next
    /// chunk (espeak-ng: within one chunk of audio, a few milliseconds). Idempotent.
    pub fn cancel(&self) {
        self.signal.set();
    }

    /// True once [`CancelHandle::cancel`] was called (or the job handle was dropped).
    pub fn is_cancelled(&self) -> bool {
        self.signal.is_set()
    }

    pub(crate) fn watch(&self) -> &Receiver<()> {
        self.signal.watch()
    }
}

/// Why [`ChunkSender::send`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendAbort {
    /// The job was cancelled.
    #[error("job cancelled")]
    Cancelled,
    /// The job handle was dropped: nobody listens.
    #[error("job handle dropped")]
    ReceiverGone,
    /// The channel stayed full for the whole timeout.
    #[error("consumer stalled")]
    Stalled,
    /// The engine is shutting down.
    #[error("engine stopping")]
    Stopping,
}

/// The producing side of a job, for [`Synthesizer`] implementations: sends chunks in
/// order and then exactly one end event.
#[derive(Debug)]
pub struct ChunkSender {
    tx: Sender<SynthesisEvent>,
    cancel: CancelHandle,
    sample_rate: u32,
    created: Instant,
    outcome: Arc<Mutex<Option<TtsError>>>,
    samples: u64,
    chunks: u64,
    first_chunk_after: Option<Duration>,
}

impl ChunkSender {
    /// True once the job was cancelled or its handle dropped.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The sample rate every chunk of this job carries.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Sends `samples` as the next chunk, waiting at most `timeout` for room in the
    /// channel; returns at once when the job is cancelled or its handle dropped.
    pub fn send(&mut self, samples: Vec<i16>, timeout: Duration) -> Result<(), SendAbort> {
        self.send_or_stop(samples, timeout, None)
    }

    /// Like [`ChunkSender::send`], also giving up when `stop` becomes ready.
    pub(crate) fn send_or_stop(
        &mut self,
        samples: Vec<i16>,
        timeout: Duration,
        stop: Option<&Receiver<()>>,
    ) -> Result<(), SendAbort> {
        if self.is_cancelled() {
            return Err(SendAbort::Cancelled);
        }
        if samples.is_empty() {
            return Ok(());
        }
        let n = samples.len() as u64;
        let event = SynthesisEvent::Chunk(AudioFrame {
            samples,
            sample_rate: self.sample_rate,
        });
        let event = match self.tx.try_send(event) {
            Ok(()) => {
                self.count(n);
                return Ok(());
            }
            Err(TrySendError::Disconnected(_)) => return Err(SendAbort::ReceiverGone),
            Err(TrySendError::Full(event)) => event,
        };
        // The channel is full: wait for room, cancellation or stop, whichever is first.
        let never = crossbeam_channel::never();
        let stop = stop.unwrap_or(&never);
        crossbeam_channel::select! {
            send(self.tx, event) -> res => match res {
                Ok(()) => {
                    self.count(n);
                    Ok(())
                }
                Err(_) => Err(SendAbort::ReceiverGone),
            },
            recv(self.cancel.watch()) -> _ => Err(SendAbort::Cancelled),
            recv(stop) -> _ => Err(SendAbort::Stopping),
            default(timeout) => Err(SendAbort::Stalled),
        }
    }

    fn count(&mut self, n: u64) {
        if self.first_chunk_after.is_none() {
            self.first_chunk_after = Some(self.created.elapsed());
        }
        self.samples += n;
        self.chunks += 1;
    }

    /// Samples sent so far.
    pub fn samples_sent(&self) -> u64 {
        self.samples
    }

    /// A summary of what was sent, with the given timings filled in.
    pub fn summary(&self, queued: Duration, synthesis: Duration) -> SynthesisSummary {
        SynthesisSummary {
            samples: self.samples,
            chunks: self.chunks,
            audio: duration_of(
                self.sample_rate,
                usize::try_from(self.samples).unwrap_or(usize::MAX),
            ),
            queued,
            synthesis,
            first_chunk_after: self.first_chunk_after,
        }
    }

    /// Ends the job successfully, waiting at most `timeout` for room for the end event
    /// (less if the job is cancelled meanwhile).
    pub fn finish(self, summary: SynthesisSummary, timeout: Duration) {
        self.finish_or_stop(summary, timeout, None);
    }

    /// Like [`ChunkSender::finish`], also giving up when `stop` becomes ready.
    pub(crate) fn finish_or_stop(
        self,
        summary: SynthesisSummary,
        timeout: Duration,
        stop: Option<&Receiver<()>>,
    ) {
        let never = crossbeam_channel::never();
        let stop = stop.unwrap_or(&never);
        crossbeam_channel::select! {
            send(self.tx, SynthesisEvent::Finished(summary)) -> _ => {},
            recv(self.cancel.watch()) -> _ => {},
            recv(stop) -> _ => {},
            default(timeout) => {},
        }
    }

    /// Ends the job with an error. Never blocks: if the channel is full, the job handle
    /// reports the error once the queued chunks are read.
    pub fn fail(self, error: TtsError) {
        // Kept beside the channel too, so a full channel cannot hide the cause.
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.clone());
        let _ = self.tx.try_send(SynthesisEvent::Failed(error));
    }
}

/// A running synthesis: receive its chunks in order, cancel it, or drop it (which cancels).
///
/// Chunks arrive on a bounded channel: the engine stops producing while the channel is
/// full, so memory per job is bounded by the channel's capacity.
#[derive(Debug)]
pub struct SynthesisJob {
    rx: Receiver<SynthesisEvent>,
    cancel: CancelHandle,
    sample_rate: u32,
    outcome: Arc<Mutex<Option<TtsError>>>,
    summary: Option<SynthesisSummary>,
    ended: bool,
}

impl SynthesisJob {
    /// A new job with a chunk channel of `capacity` events, and its producing side.
    /// For [`Synthesizer`] implementations.
    pub fn channel(sample_rate: u32, capacity: usize) -> (SynthesisJob, ChunkSender) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let cancel = CancelHandle {
            signal: Signal::new(),
        };
        let outcome = Arc::new(Mutex::new(None));
        let job = SynthesisJob {
            rx,
            cancel: cancel.clone(),
            sample_rate,
            outcome: Arc::clone(&outcome),
            summary: None,
            ended: false,
        };
        let sender = ChunkSender {
            tx,
            cancel,
            sample_rate,
            created: Instant::now(),
            outcome,
            samples: 0,
            chunks: 0,
            first_chunk_after: None,
        };
        (job, sender)
    }

    /// The sample rate of every chunk of this job.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Cancels the job (see [`CancelHandle::cancel`]).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A handle that cancels this job from another thread.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// The raw event channel, to wait on it in a `crossbeam_channel::select!` beside
    /// other channels. Events read from it directly are not seen by
    /// [`SynthesisJob::recv_timeout`].
    pub fn events(&self) -> &Receiver<SynthesisEvent> {
        &self.rx
    }

    /// The summary, once the job finished successfully.
    pub fn summary(&self) -> Option<SynthesisSummary> {
        self.summary
    }

    /// The next chunk: `Ok(Some(chunk))`, `Ok(None)` when all audio was delivered, or the
    /// job's error. Waits at most `timeout` ([`TtsError::RecvTimeout`]). Once the job is
    /// cancelled this returns [`TtsError::Cancelled`] at once, even if chunks were queued.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<AudioFrame>, TtsError> {
        if self.ended {
            return Ok(None);
        }
        if self.cancel.is_cancelled() {
            // Audio already queued is not wanted any more.
            self.ended = true;
            return Err(TtsError::Cancelled);
        }
        match self.rx.recv_timeout(timeout) {
            Ok(event) => self.on_event(event),
            Err(RecvTimeoutError::Timeout) => Err(TtsError::RecvTimeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => {
                self.ended = true;
                let recorded = self.outcome.lock().unwrap_or_else(|e| e.into_inner()).take();
                Err(recorded.unwrap_or(if self.cancel.is_cancelled() {
                    TtsError::Cancelled
                } else {
                    TtsError::EngineStopped
                }))
            }
        }
    }

    /// Interprets one event read from [`SynthesisJob::events`]: `Ok(Some(chunk))`,
    /// `Ok(None)` at the successful end, or the job's error.
    pub fn on_event(&mut self, event: SynthesisEvent) -> Result<Option<AudioFrame>, TtsError> {
        if self.cancel.is_cancelled() && !self.ended {
            self.ended = true;
            return Err(TtsError::Cancelled);
        }
        match event {
            SynthesisEvent::Chunk(chunk) => Ok(Some(chunk)),
            SynthesisEvent::Finished(summary) => {
                self.ended = true;
                self.summary = Some(summary);
                Ok(None)
            }
            SynthesisEvent::Failed(error) => {
                self.ended = true;
                Err(error)
            }
        }
    }

    /// Receives everything until the end, waiting at most until `deadline` (on timeout
    /// the job is cancelled and [`TtsError::RecvTimeout`] returned).
    pub fn collect(mut self, deadline: Instant) -> Result<SynthesizedAudio, TtsError> {
        let mut samples = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_timeout(left)? {
                Some(chunk) => samples.extend_from_slice(&chunk.samples),
                None => {
                    return Ok(SynthesizedAudio {
                        samples,
                        sample_rate: self.sample_rate,
                        summary: self.summary.unwrap_or_default(),
                    });
                }
            }
        }
    }
}

impl Drop for SynthesisJob {
    fn drop(&mut self) {
        // Dropping the handle stops the work it asked for.
        if !self.ended {
            self.cancel.cancel();
        }
    }
}

/// A whole utterance, as returned by [`SynthesisJob::collect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthesizedAudio {
    /// Mono samples.
    pub samples: Vec<i16>,
    /// Samples per second.
    pub sample_rate: u32,
    /// What the engine reported.
    pub summary: SynthesisSummary,
}

impl SynthesizedAudio {
    /// How long the audio plays.
    pub fn duration(&self) -> Duration {
        duration_of(self.sample_rate, self.samples.len())
    }
}

/// A speech synthesiser producing PCM for a call, streamed in chunks.
///
/// Implementations are shared by many calls at once (`Send + Sync`, methods take
/// `&self`); each [`Synthesizer::synthesize`] returns its own [`SynthesisJob`].
pub trait Synthesizer: Send + Sync {
    /// The sample rate of the audio this synthesiser produces.
    fn sample_rate(&self) -> u32;

    /// Starts speaking `text` with `options`. Returns at once (never waits for
    /// synthesis); errors for invalid input, a full queue or a stopped engine. Chunks,
    /// then one end event, arrive on the returned job.
    fn synthesize(&self, text: &str, options: &VoiceOptions) -> Result<SynthesisJob, TtsError>;
}

impl<T: Synthesizer + ?Sized> Synthesizer for Arc<T> {
    fn sample_rate(&self) -> u32 {
        (**self).sample_rate()
    }

    fn synthesize(&self, text: &str, options: &VoiceOptions) -> Result<SynthesisJob, TtsError> {
        (**self).synthesize(text, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_validate_ranges() {
        assert!(VoiceOptions::default().validate().is_ok());
        let bad = [
            VoiceOptions {
                rate_wpm: 79,
                ..Default::default()
            },
            VoiceOptions {
                rate_wpm: 451,
                ..Default::default()
            },
            VoiceOptions {
                pitch: 101,
                ..Default::default()
            },
            VoiceOptions {
                volume: 201,
                ..Default::default()
            },
            VoiceOptions {
                voice: String::new(),
                ..Default::default()
            },
            VoiceOptions {
                voice: "en us".into(),
                ..Default::default()
            },
            VoiceOptions {
                voice: "x".repeat(65),
                ..Default::default()
            },
        ];
        for o in bad {
            assert!(matches!(o.validate(), Err(TtsError::InvalidOption(_))), "{o:?}");
        }
        assert!(
            VoiceOptions {
                voice: "en-us+f3".into(),
                ..Default::default()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn chunks_then_finish_in_order() {
        let (mut job, mut tx) = SynthesisJob::channel(8000, 4);
        tx.send(vec![1, 2], Duration::from_millis(10)).unwrap();
        tx.send(vec![], Duration::from_millis(10)).unwrap();
        tx.send(vec![3], Duration::from_millis(10)).unwrap();
        let s = tx.summary(Duration::ZERO, Duration::ZERO);
        tx.finish(s, Duration::from_millis(10));
        let c = job.recv_timeout(Duration::from_secs(1)).unwrap().unwrap();
        assert_eq!((c.samples.as_slice(), c.sample_rate), (&[1i16, 2][..], 8000));
        assert_eq!(
            job.recv_timeout(Duration::from_secs(1)).unwrap().unwrap().samples,
            vec![3]
        );
        assert_eq!(job.recv_timeout(Duration::from_secs(1)).unwrap(), None);
        assert_eq!(job.summary().unwrap().samples, 3);
        assert_eq!(job.summary().unwrap().chunks, 2);
        assert_eq!(job.recv_timeout(Duration::from_secs(1)).unwrap(), None);
    }

    #[test]
    fn full_channel_send_wakes_on_cancel_and_times_out_when_stalled() {
        let (job, mut tx) = SynthesisJob::channel(8000, 1);
        tx.send(vec![1], Duration::from_millis(10)).unwrap();
        let t = Instant::now();
        assert_eq!(
            tx.send(vec![2], Duration::from_millis(50)),
            Err(SendAbort::Stalled)
        );
        assert!(t.elapsed() >= Duration::from_millis(50));
        let cancel = job.cancel_handle();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            cancel.cancel();
        });
        let t = Instant::now();
        assert_eq!(
            tx.send(vec![2], Duration::from_secs(10)),
            Err(SendAbort::Cancelled)
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        waker.join().unwrap();
        drop(job);
    }

    #[test]
    fn dropping_the_job_cancels_and_disconnects() {
        let (job, mut tx) = SynthesisJob::channel(8000, 4);
        drop(job);
        assert!(tx.is_cancelled());
        assert_eq!(
            tx.send(vec![1], Duration::from_millis(10)),
            Err(SendAbort::Cancelled)
        );
    }

    #[test]
    fn producer_gone_without_end_is_engine_stopped_or_cancelled() {
        let (mut job, tx) = SynthesisJob::channel(8000, 4);
        drop(tx);
        assert_eq!(
            job.recv_timeout(Duration::from_secs(1)),
            Err(TtsError::EngineStopped)
        );
        let (mut job, tx) = SynthesisJob::channel(8000, 4);
        job.cancel();
        drop(tx);
        assert_eq!(job.recv_timeout(Duration::from_secs(1)), Err(TtsError::Cancelled));
        let (mut job, _tx) = SynthesisJob::channel(8000, 4);
        assert_eq!(
            job.recv_timeout(Duration::from_millis(5)),
            Err(TtsError::RecvTimeout(Duration::from_millis(5)))
        );
    }

    #[test]
    fn fail_on_a_full_channel_is_reported_after_the_chunks() {
        let (mut job, mut tx) = SynthesisJob::channel(8000, 1);
        tx.send(vec![1], Duration::from_millis(10)).unwrap();
        tx.fail(TtsError::ConsumerStalled(Duration::from_millis(5)));
        assert!(job.recv_timeout(Duration::from_secs(1)).unwrap().is_some());
        assert_eq!(
            job.recv_timeout(Duration::from_secs(1)),
            Err(TtsError::ConsumerStalled(Duration::from_millis(5)))
        );
    }

    #[test]
    fn fail_is_reported() {
        let (mut job, tx) = SynthesisJob::channel(8000, 4);
        tx.fail(TtsError::VoiceNotFound("xx".into()));
        assert_eq!(
            job.recv_timeout(Duration::from_secs(1)),
            Err(TtsError::VoiceNotFound("xx".into()))
        );
    }
}
