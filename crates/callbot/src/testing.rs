//! Instant test doubles for the call pipeline, so tests and benches measure the
//! pipeline alone (no Whisper, no Ollama, no espeak-ng, no sockets).
//!
//! - [`FakeMedia`] implements [`CallMedia`]: the test pushes caller frames and DTMF
//!   through a [`FakeMediaRemote`]; every `play` is recorded with its time and finishes
//!   at once (or when the test says, with `auto_finish` off).
//! - [`EnergyEndpointer`] implements [`Endpointer`]: a frame is speech when its mean
//!   absolute amplitude is above a threshold; the utterance ends after a number of
//!   quiet frames (a pause event at the first quiet frame, a resume event when speech
//!   comes back before the end). Deterministic, for tests; not a production VAD.
//! - [`InstantTranscriber`], [`InstantChat`], [`InstantSynth`] implement the layer
//!   traits and answer synchronously inside the call that starts the job.
//! - [`spawn_fake_call`] runs a call of a [`crate::call::CallSetup`] (see
//!   [`instant_call_setup`]) with [`FakeMedia`] on its own thread.
//! - For tests of the whole bot: [`dial`] (or [`place_call`], when the caller's media is
//!   not an RTP session) and [`hang_up`] place and end a real call from a test's SIP
//!   user agent; [`transcript_lines`] reads the transcript files.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callbot_audio::AudioFrame;
use callbot_llm::{
    ChatModel, History, HistoryBudget, LlmError, LlmShutdownReport, Reply, ReplyEvent, ReplyStats,
};
use callbot_rtp::{
    DtmfEvent, FrameKind, PlaybackFinished, PlaybackId, PlaybackStopped, ReceivedFrame, RtpEvent,
};
use callbot_stt::{
    JobTimings, SttError, SttShutdownReport, Transcriber, Transcript, TranscriptionJob, TranscriptionRequest,
    job_channel,
};
use callbot_tts::{SynthesisJob, Synthesizer, TtsError, VoiceOptions};
use crossbeam_channel::{Receiver, Sender};

use crate::call::{CallMedia, EndpointEvent, Endpointer};

/// One recorded `play`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Played {
    /// Its id.
    pub id: PlaybackId,
    /// When the pipeline queued it.
    pub at: Instant,
    /// Its samples.
    pub samples: usize,
}

#[derive(Debug, Default)]
struct MediaLog {
    plays: Vec<Played>,
    stops: Vec<Instant>,
}

/// A [`CallMedia`] without sockets (see the [module docs](self)).
#[derive(Debug)]
pub struct FakeMedia {
    frames: Receiver<ReceivedFrame>,
    events: Receiver<RtpEvent>,
    events_tx: Sender<RtpEvent>,
    next_id: AtomicU64,
    auto_finish: bool,
    log: Arc<Mutex<MediaLog>>,
}

/// The test's side of a [`FakeMedia`].
#[derive(Debug, Clone)]
pub struct FakeMediaRemote {
    frames: Sender<ReceivedFrame>,
    events: Sender<RtpEvent>,
    log: Arc<Mutex<MediaLog>>,
    tick: Arc<AtomicU64>,
}

impl FakeMedia {
    /// A fake media; `auto_finish`: every play finishes as soon as it is queued.
    pub fn new(auto_finish: bool) -> (FakeMedia, FakeMediaRemote) {
        let (ftx, frx) = crossbeam_channel::bounded(4096);
        let (etx, erx) = crossbeam_channel::bounded(4096);
        let log = Arc::new(Mutex::new(MediaLog::default()));
        (
            FakeMedia {
                frames: frx,
                events: erx,
                events_tx: etx.clone(),
                next_id: AtomicU64::new(1),
                auto_finish,
                log: Arc::clone(&log),
            },
            FakeMediaRemote {
                frames: ftx,
                events: etx,
                log,
                tick: Arc::new(AtomicU64::new(0)),
            },
        )
    }
}

fn lock(log: &Mutex<MediaLog>) -> std::sync::MutexGuard<'_, MediaLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

impl CallMedia for FakeMedia {
    fn frames(&self) -> &Receiver<ReceivedFrame> {
        &self.frames
    }
    fn events(&self) -> &Receiver<RtpEvent> {
        &self.events
    }
    fn play_rate(&self) -> u32 {
        8000
    }
    fn play(&self, audio: AudioFrame) -> Result<PlaybackId, String> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let samples = audio.samples.len();
        lock(&self.log).plays.push(Played {
            id,
            at: Instant::now(),
            samples,
        });
        if self.auto_finish {
            let _ = self
                .events_tx
                .try_send(RtpEvent::PlaybackFinished(PlaybackFinished {
                    id,
                    played_samples: samples as u64,
                    dropped_samples: 0,
                    completed: true,
                }));
        }
        Ok(id)
    }
    fn stop_playback(&self) -> Result<PlaybackStopped, String> {
        lock(&self.log).stops.push(Instant::now());
        Ok(PlaybackStopped::default())
    }
}

impl FakeMediaRemote {
    /// Sends one 20 ms, 8 kHz caller frame with every sample at `level`.
    pub fn frame(&self, level: i16) {
        let tick = self.tick.fetch_add(1, Ordering::SeqCst);
        let _ = self.frames.send(ReceivedFrame {
            audio: AudioFrame::new(8000, vec![level; 160]),
            kind: FrameKind::Audio,
            tick,
        });
    }

    /// Sends `n` frames at `level`.
    pub fn frames(&self, level: i16, n: usize) {
        for _ in 0..n {
            self.frame(level);
        }
    }

    /// Sends a DTMF digit.
    pub fn dtmf(&self, digit: char) {
        let _ = self.events.send(RtpEvent::Dtmf(DtmfEvent {
            digit,
            duration: Duration::from_millis(100),
            timestamp: 0,
        }));
    }

    /// Reports playback `id` as finished.
    pub fn finish(&self, id: PlaybackId, completed: bool) {
        let _ = self.events.send(RtpEvent::PlaybackFinished(PlaybackFinished {
            id,
            played_samples: 0,
            dropped_samples: 0,
            completed,
        }));
    }

    /// Every play so far.
    pub fn plays(&self) -> Vec<Played> {
        lock(&self.log).plays.clone()
    }

    /// When `stop_playback` was called.
    pub fn stops(&self) -> Vec<Instant> {
        lock(&self.log).stops.clone()
    }
}

/// A deterministic energy endpointer for tests (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct EnergyEndpointer {
    threshold: i32,
    hangover_frames: u32,
    speaking: bool,
    quiet: u32,
    quiet_time: Duration,
}

impl EnergyEndpointer {
    /// Speech above `threshold` mean absolute amplitude; ends after `hangover_frames`
    /// quiet frames.
    pub fn new(threshold: i16, hangover_frames: u32) -> Self {
        Self {
            threshold: i32::from(threshold),
            hangover_frames: hangover_frames.max(1),
            speaking: false,
            quiet: 0,
            quiet_time: Duration::ZERO,
        }
    }
}

impl Endpointer for EnergyEndpointer {
    fn push(&mut self, frame: &AudioFrame) -> EndpointEvent {
        let n = frame.samples.len().max(1) as i64;
        let sum: i64 = frame.samples.iter().map(|s| i64::from(*s).abs()).sum();
        let loud = sum / n > i64::from(self.threshold);
        match (self.speaking, loud) {
            (false, true) => {
                self.speaking = true;
                self.quiet = 0;
                self.quiet_time = Duration::ZERO;
                EndpointEvent::SpeechStarted {
                    onset: frame.duration(),
                }
            }
            (true, true) => {
                let resumed = self.quiet > 0;
                self.quiet = 0;
                self.quiet_time = Duration::ZERO;
                if resumed {
                    EndpointEvent::SpeechResumed
                } else {
                    EndpointEvent::None
                }
            }
            (true, false) => {
                self.quiet += 1;
                self.quiet_time += frame.duration();
                if self.quiet >= self.hangover_frames {
                    self.speaking = false;
                    EndpointEvent::SpeechEnded {
                        hangover: self.quiet_time,
                    }
                } else if self.quiet == 1 {
                    EndpointEvent::SpeechPaused {
                        silence: self.quiet_time,
                    }
                } else {
                    EndpointEvent::None
                }
            }
            (false, false) => EndpointEvent::None,
        }
    }
}

/// Answers every transcription at once with the next of its scripted texts (the last
/// one repeats).
#[derive(Debug)]
pub struct InstantTranscriber {
    texts: Vec<String>,
    no_speech_prob: f32,
    next: AtomicUsize,
    /// Transcriptions submitted.
    pub submitted: AtomicUsize,
}

impl InstantTranscriber {
    /// Answers with `texts` in order.
    pub fn new(texts: &[&str]) -> Self {
        Self {
            texts: texts.iter().map(|t| t.to_string()).collect(),
            no_speech_prob: 0.01,
            next: AtomicUsize::new(0),
            submitted: AtomicUsize::new(0),
        }
    }
}

impl Transcriber for InstantTranscriber {
    fn submit(&self, request: TranscriptionRequest) -> Result<TranscriptionJob, SttError> {
        self.submitted.fetch_add(1, Ordering::SeqCst);
        let (job, completion) = job_channel(Instant::now() + Duration::from_secs(5));
        let i = self.next.fetch_add(1, Ordering::SeqCst);
        let text = self
            .texts
            .get(i)
            .or(self.texts.last())
            .cloned()
            .unwrap_or_default();
        let mut t = Transcript::empty(request.duration(), JobTimings::default());
        t.text = text;
        t.no_speech_prob = self.no_speech_prob;
        completion.complete(Ok(t));
        Ok(job)
    }

    fn shutdown(&mut self, _deadline: Instant) -> SttShutdownReport {
        SttShutdownReport::default()
    }
}

/// Replies at once with a fixed text, streamed word by word.
#[derive(Debug)]
pub struct InstantChat {
    reply: String,
    /// Replies started.
    pub started: AtomicUsize,
    /// The last conversation it was asked to answer, as `role: text` lines.
    pub last_prompt: Mutex<Vec<String>>,
}

impl InstantChat {
    /// Always replies `reply`.
    pub fn new(reply: &str) -> Self {
        Self {
            reply: reply.to_string(),
            started: AtomicUsize::new(0),
            last_prompt: Mutex::new(Vec::new()),
        }
    }
}

impl ChatModel for InstantChat {
    fn new_history(&self) -> History {
        History::new(Some("test"), HistoryBudget::default())
    }

    fn start_reply(&self, history: &History) -> Result<Reply, LlmError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut p) = self.last_prompt.lock() {
            *p = history
                .messages()
                .map(|m| format!("{:?}: {}", m.role, m.content))
                .collect();
        }
        let words: Vec<&str> = self.reply.split_inclusive(' ').collect();
        let (tx, reply) = Reply::channel(words.len() + 2);
        for w in words {
            tx.send(ReplyEvent::Delta(w.to_string()), Duration::ZERO)?;
        }
        tx.send(ReplyEvent::Done(ReplyStats::default()), Duration::ZERO)?;
        Ok(reply)
    }

    fn shutdown(&mut self, _deadline: Instant) -> LlmShutdownReport {
        LlmShutdownReport::default()
    }
}

/// Synthesizes at once: 10 ms of 8 kHz audio per character, after `lead_in` of
/// digital silence (like a real synthesizer's).
#[derive(Debug, Default)]
pub struct InstantSynth {
    /// Texts synthesized, in order.
    pub texts: Mutex<Vec<String>>,
    /// Silence before each text's audio (default none).
    pub lead_in: Duration,
}

impl Synthesizer for InstantSynth {
    fn sample_rate(&self) -> u32 {
        8000
    }

    fn synthesize(&self, text: &str, _options: &VoiceOptions) -> Result<SynthesisJob, TtsError> {
        if let Ok(mut t) = self.texts.lock() {
            t.push(text.to_string());
        }
        let (job, mut tx) = SynthesisJob::channel(8000, 4);
        let mut samples = vec![0i16; callbot_audio::frame::samples_for(8000, self.lead_in)];
        samples.resize(samples.len() + 80 * text.chars().count().max(1), 100);
        let n = samples.len();
        if tx.send(samples, Duration::ZERO).is_ok() {
            let summary = tx.summary(Duration::ZERO, Duration::ZERO);
            tx.finish(summary, Duration::ZERO);
        }
        let _ = n;
        Ok(job)
    }
}

/// A [`crate::call::CallSetup`] for `dialogue` whose layers are instant fakes: the
/// caller is heard saying `heard` (in turn), the bot replies `reply`, synthesis is
/// [`InstantSynth`]; 5 s transcription timeout, 200 ms pre-roll, 30 s maximum
/// utterance, no transcript file, no turn observer. Tests override what they need
/// with struct update syntax (`CallSetup { stt, ..instant_call_setup(..) }`).
pub fn instant_call_setup(
    call_id: &str,
    dialogue: crate::dialogue::DialogueConfig,
    heard: &[&str],
    reply: &str,
) -> crate::call::CallSetup {
    crate::call::CallSetup {
        call_id: call_id.into(),
        dialogue,
        stt: Arc::new(InstantTranscriber::new(heard)),
        stt_options: Default::default(),
        stt_timeout: Duration::from_secs(5),
        llm: Arc::new(InstantChat::new(reply)),
        chunker: Default::default(),
        tts: Arc::new(InstantSynth::default()),
        voice: Default::default(),
        transcript_dir: None,
        preroll: Duration::from_millis(200),
        max_utterance: Duration::from_secs(30),
        turn_observer: None,
    }
}

/// Runs the call of `setup` on a thread named `name`, with [`FakeMedia`] (`auto_finish`
/// as in [`FakeMedia::new`]) and an [`EnergyEndpointer`] (threshold 1000, 5 quiet
/// frames): the test's side of the media, the call's control sender and its thread.
pub fn spawn_fake_call(
    name: &str,
    setup: crate::call::CallSetup,
    auto_finish: bool,
) -> std::io::Result<(
    FakeMediaRemote,
    Sender<crate::call::CallControl>,
    std::thread::JoinHandle<crate::call::CallOutcome>,
)> {
    let (media, remote) = FakeMedia::new(auto_finish);
    let (control, control_rx) = crossbeam_channel::bounded(4);
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || crate::call::run_call(setup, &media, EnergyEndpointer::new(1000, 5), &control_rx))?;
    Ok((remote, control, thread))
}

/// A call with instant fakes on its own thread, to measure the pipeline's overhead
/// per turn (used by the pipeline test and the `pipeline` criterion bench).
#[derive(Debug)]
pub struct PipelineRig {
    remote: FakeMediaRemote,
    control: Option<Sender<crate::call::CallControl>>,
    turns: Receiver<crate::dialogue::TurnRecord>,
    done: Receiver<()>,
    thread: Option<std::thread::JoinHandle<crate::call::CallOutcome>>,
}

impl PipelineRig {
    /// Starts a call (no greeting) whose caller always says `heard` and whose bot
    /// always replies `reply`.
    pub fn start(heard: &str, reply: &str) -> std::io::Result<PipelineRig> {
        let (media, remote) = FakeMedia::new(true);
        let (control, control_rx) = crossbeam_channel::bounded(4);
        let (turn_tx, turns) = crossbeam_channel::bounded(1024);
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let dialogue = crate::dialogue::DialogueConfig {
            greeting: String::new(),
            silence_prompt_after: Duration::from_secs(3600),
            silence_hangup_after: Duration::from_secs(7200),
            max_call_duration: Duration::from_secs(86_400),
            ..crate::dialogue::DialogueConfig::default()
        };
        let setup = crate::call::CallSetup {
            turn_observer: Some(turn_tx),
            ..instant_call_setup("pipeline-rig", dialogue, &[heard], reply)
        };
        let thread = std::thread::Builder::new()
            .name("pipeline-rig".into())
            .spawn(move || {
                let out = crate::call::run_call(setup, &media, EnergyEndpointer::new(1000, 5), &control_rx);
                let _ = done_tx.send(());
                out
            })?;
        Ok(PipelineRig {
            remote,
            control: Some(control),
            turns,
            done,
            thread: Some(thread),
        })
    }

    /// One caller utterance (200 ms of "speech", then the 100 ms endpoint hangover);
    /// returns the time from handing the frame that ends the utterance to the media
    /// channel until the first reply audio was queued for playback.
    pub fn turn(&self) -> Result<Duration, String> {
        let before = self.remote.plays().len();
        self.remote.frames(5000, 10);
        self.remote.frames(0, 4);
        // Let the pipeline take everything but the endpoint frame.
        let t0 = Instant::now();
        while !self.remote.frames.is_empty() && t0.elapsed() < Duration::from_secs(1) {
            std::thread::yield_now();
        }
        let sent = Instant::now();
        self.remote.frame(0);
        self.turns
            .recv_timeout(Duration::from_secs(5))
            .map_err(|e| format!("no finished turn: {e}"))?;
        let plays = self.remote.plays();
        let first = plays.get(before).ok_or("no reply audio")?;
        Ok(first.at.saturating_duration_since(sent))
    }

    /// Hangs the call up and joins its thread (bounded: 2 s).
    pub fn finish(mut self) -> Option<crate::call::CallOutcome> {
        self.stop()
    }

    fn stop(&mut self) -> Option<crate::call::CallOutcome> {
        if let Some(c) = self.control.take() {
            let _ = c.send(crate::call::CallControl::CallerHungUp);
        }
        let thread = self.thread.take()?;
        match self.done.recv_timeout(Duration::from_secs(2)) {
            Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => thread.join().ok(),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                tracing::error!("pipeline rig call did not end within 2 s");
                None
            }
        }
    }
}

impl Drop for PipelineRig {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The producing ends of the jobs a hanging test double started and never finishes.
#[derive(Debug)]
struct HeldJobs<T>(Mutex<Vec<T>>);

impl<T> Default for HeldJobs<T> {
    fn default() -> Self {
        HeldJobs(Mutex::new(Vec::new()))
    }
}

impl<T> HeldJobs<T> {
    fn hold(&self, job: T) {
        if let Ok(mut j) = self.0.lock() {
            j.push(job);
        }
    }
    fn count(&self) -> usize {
        self.0.lock().map(|j| j.len()).unwrap_or(0)
    }
    /// Whether every job held is `stopped` (false when the lock is poisoned).
    fn all(&self, stopped: impl Fn(&T) -> bool) -> bool {
        self.0.lock().map(|j| j.iter().all(stopped)).unwrap_or(false)
    }
}

/// A transcriber whose jobs never finish: they stay pending until cancelled, so tests
/// can check that a call cancels its transcription (see [`HangingTranscriber::all_stopped`]).
#[derive(Debug, Default)]
pub struct HangingTranscriber {
    jobs: HeldJobs<callbot_stt::JobCompletion>,
}

impl HangingTranscriber {
    /// Jobs submitted.
    pub fn submitted(&self) -> usize {
        self.jobs.count()
    }
    /// Whether every submitted job was cancelled.
    pub fn all_stopped(&self) -> bool {
        self.jobs.all(|c| c.is_stopped())
    }
}

impl Transcriber for HangingTranscriber {
    fn submit(&self, _request: TranscriptionRequest) -> Result<TranscriptionJob, SttError> {
        let (job, completion) = job_channel(Instant::now() + Duration::from_secs(3600));
        self.jobs.hold(completion);
        Ok(job)
    }
    fn shutdown(&mut self, _deadline: Instant) -> SttShutdownReport {
        SttShutdownReport::default()
    }
}

/// A chat model whose replies never produce anything until cancelled.
#[derive(Debug, Default)]
pub struct HangingChat {
    replies: HeldJobs<callbot_llm::ReplySender>,
}

impl HangingChat {
    /// Replies started.
    pub fn started(&self) -> usize {
        self.replies.count()
    }
    /// Whether every started reply was cancelled.
    pub fn all_cancelled(&self) -> bool {
        self.replies.all(|s| s.is_cancelled())
    }
}

impl ChatModel for HangingChat {
    fn new_history(&self) -> History {
        History::new(None, HistoryBudget::default())
    }
    fn start_reply(&self, _history: &History) -> Result<Reply, LlmError> {
        let (tx, reply) = Reply::channel(4);
        self.replies.hold(tx);
        Ok(reply)
    }
    fn shutdown(&mut self, _deadline: Instant) -> LlmShutdownReport {
        LlmShutdownReport::default()
    }
}

/// A synthesizer whose jobs never deliver audio until cancelled.
#[derive(Debug, Default)]
pub struct HangingSynth {
    jobs: HeldJobs<callbot_tts::ChunkSender>,
}

impl HangingSynth {
    /// Jobs started.
    pub fn started(&self) -> usize {
        self.jobs.count()
    }
    /// Whether every job was cancelled.
    pub fn all_cancelled(&self) -> bool {
        self.jobs.all(|s| s.is_cancelled())
    }
}

impl Synthesizer for HangingSynth {
    fn sample_rate(&self) -> u32 {
        8000
    }
    fn synthesize(&self, _text: &str, _options: &VoiceOptions) -> Result<SynthesisJob, TtsError> {
        let (job, tx) = SynthesisJob::channel(8000, 4);
        self.jobs.hold(tx);
        Ok(job)
    }
}

/// Every JSON line of every transcript file in `dir` (each call's turns, then its
/// summary), files in name order; a missing directory, an unreadable file or a line
/// that is not JSON gives nothing.
pub fn transcript_lines(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<std::path::PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    files
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Why [`dial`] or [`place_call`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The SIP user agent refused to place the call.
    #[error("SIP: {0}")]
    Sip(#[from] callbot_sip::SipError),
    /// The RTP session could not be pointed at the answered media.
    #[error("RTP: {0}")]
    Rtp(#[from] callbot_rtp::RtpError),
    /// The call ended before it was answered.
    #[error("call ended before the answer: {0:?}")]
    Ended(callbot_sip::EndReason),
    /// No answer within the timeout (or the user agent's event channel closed).
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
}

/// Places a call from `ua` to `uri` (the INVITE goes to `dest`) offering `offer` as the
/// caller's RTP address, and waits up to `timeout` for the answer: the call and the media
/// the callee answered with. Events of other calls (and provisional ones of this call)
/// that arrive meanwhile are handed to `other_event`. [`dial`] does this for an
/// [`callbot_rtp::RtpSession`] and points it at the answer; this is for a caller whose
/// media is something else (a bare socket, a relay).
pub fn place_call(
    ua: &callbot_sip::SipHandle,
    uri: &str,
    dest: std::net::SocketAddr,
    offer: std::net::SocketAddr,
    timeout: Duration,
    mut other_event: impl FnMut(callbot_sip::SipEvent),
) -> Result<(callbot_sip::CallId, callbot_sip::NegotiatedMedia), DialError> {
    use callbot_sip::SipEvent;
    let call = ua.call(uri, dest, offer)?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ua.events().recv_timeout(left) {
            Ok(SipEvent::CallAnswered { call: c, media }) if c == call => return Ok((call, media)),
            Ok(SipEvent::CallEnded { call: c, reason }) if c == call => return Err(DialError::Ended(reason)),
            Ok(other) => other_event(other),
            Err(_) => return Err(DialError::NoAnswer(timeout)),
        }
    }
}

/// A caller for tests, examples and benches: places a call from `ua` to `uri` (the
/// INVITE goes to `dest`) offering `rtp`'s local address, waits up to `timeout` for the
/// answer, and points `rtp` at the media the callee answered with (its address, codec,
/// payload type and telephone-event type). Returns the call and the negotiated media.
///
/// Events of other calls (and provisional ones of this call) that arrive meanwhile are
/// handed to `other_event`, so a test holding several calls sees them.
pub fn dial(
    ua: &callbot_sip::SipHandle,
    rtp: &callbot_rtp::RtpSession,
    uri: &str,
    dest: std::net::SocketAddr,
    timeout: Duration,
    other_event: impl FnMut(callbot_sip::SipEvent),
) -> Result<(callbot_sip::CallId, callbot_sip::NegotiatedMedia), DialError> {
    let (call, media) = place_call(ua, uri, dest, rtp.local_addr(), timeout, other_event)?;
    let law = match media.codec {
        callbot_sip::AudioCodec::Pcmu => callbot_audio::g711::Law::Ulaw,
        callbot_sip::AudioCodec::Pcma => callbot_audio::g711::Law::Alaw,
    };
    rtp.retarget(
        Some(media.remote_rtp),
        law,
        media.payload_type,
        media.telephone_event,
    )?;
    Ok((call, media))
}

/// Why [`hang_up`] failed.
#[derive(Debug, thiserror::Error)]
pub enum HangUpError {
    /// The SIP user agent refused the hang-up (an unknown call, a stopped agent).
    #[error("SIP: {0}")]
    Sip(#[from] callbot_sip::SipError),
    /// The call's end was not reported within the timeout (or the event channel closed).
    #[error("the call did not end within {0:?}")]
    NotEnded(Duration),
}

/// The counterpart of [`dial`]: hangs up `call` on `ua` and waits up to `timeout` for
/// the user agent to report its end. Events of other calls that arrive meanwhile are
/// handed to `other_event`.
pub fn hang_up(
    ua: &callbot_sip::SipHandle,
    call: callbot_sip::CallId,
    timeout: Duration,
    mut other_event: impl FnMut(callbot_sip::SipEvent),
) -> Result<(), HangUpError> {
    use callbot_sip::SipEvent;
    ua.hang_up(call)?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ua.events().recv_timeout(left) {
            Ok(SipEvent::CallEnded { call: c, .. }) if c == call => return Ok(()),
            Ok(other) => other_event(other),
            Err(_) => return Err(HangUpError::NotEnded(timeout)),
        }
    }
}
