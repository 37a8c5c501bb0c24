//! One call's pipeline: the thin I/O driver around the [`Dialogue`] engine.
//!
//! [`run_call`] runs on the call's own thread (the bot names it) until the dialogue
//! ends. It waits with one `crossbeam_channel::Select` on everything the call is waiting
//! for, each with its own bounded channel:
//! - the caller's audio frames and the media events ([`CallMedia`], over an
//!   `RtpSession`: DTMF digits, playback finished),
//! - the control channel ([`CallControl`]: the caller hung up, the bot shuts down),
//! - the running transcription ([`callbot_stt::TranscriptionJob`]),
//! - the running LLM reply ([`callbot_llm::Reply`], cut into sentences by a
//!   [`SentenceChunker`]),
//! - each pending synthesis ([`callbot_tts::SynthesisJob`], one per sentence),
//! - and the dialogue's next timer.
//!
//! Caller frames go through an [`Endpointer`] (voice activity + end of utterance); the
//! utterance (with a short pre-roll) is resampled to 16 kHz for the [`Transcriber`].
//! Synthesized sentences lose their leading silence (it would only delay the reply),
//! are resampled to the media rate and queued in order with [`CallMedia::play`].
//! Each [`Action`] of the dialogue becomes one call on a layer;
//! each layer event becomes one [`Input`]. The LLM [`History`] of the call records each
//! finished turn as it was actually spoken (the dialogue cuts interrupted replies).
//!
//! The pipeline owns no thread: the jobs it starts belong to the layer engines, and
//! every job handle it holds cancels its job when dropped, so when `run_call` returns
//! (for any reason) nothing of the call keeps running. It returns after the dialogue's
//! [`Action::CallEnded`]; a bounded end is guaranteed by the dialogue's timers (maximum
//! call duration, closing grace) and by [`CallControl::Shutdown`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use callbot_audio::AudioFrame;
use callbot_llm::{ChatModel, ChunkerConfig, History, Reply, ReplyEvent, SentenceChunker};
use callbot_rtp::{PlaybackId, PlaybackStopped, ReceivedFrame, RtpEvent, RtpSession};
use callbot_stt::{TranscribeOptions, Transcriber, TranscriptionJob, TranscriptionRequest};
use callbot_tts::{SynthesisJob, Synthesizer, VoiceOptions};
use crossbeam_channel::{Receiver, Select, Sender, TryRecvError};

use crate::dialogue::{Action, CallSummary, Dialogue, DialogueConfig, Input, SpeechId, TurnId, TurnRecord};
use crate::transcript::{TranscriptWriter, log_turn};

/// The media side of one call, as the pipeline uses it. Implemented for
/// [`RtpSession`]; tests use `crate::testing::FakeMedia`.
pub trait CallMedia: Send {
    /// Decoded caller audio, 20 ms frames.
    fn frames(&self) -> &Receiver<ReceivedFrame>;
    /// DTMF digits and playback-finished events.
    fn events(&self) -> &Receiver<RtpEvent>;
    /// The sample rate [`CallMedia::play`] takes.
    fn play_rate(&self) -> u32;
    /// Queues audio (at [`CallMedia::play_rate`]) after what is queued.
    fn play(&self, audio: AudioFrame) -> Result<PlaybackId, String>;
    /// Stops playback at once and drops what is queued (barge-in).
    fn stop_playback(&self) -> Result<PlaybackStopped, String>;
}

impl CallMedia for RtpSession {
    fn frames(&self) -> &Receiver<ReceivedFrame> {
        RtpSession::frames(self)
    }
    fn events(&self) -> &Receiver<RtpEvent> {
        RtpSession::events(self)
    }
    fn play_rate(&self) -> u32 {
        8000
    }
    fn play(&self, audio: AudioFrame) -> Result<PlaybackId, String> {
        RtpSession::play(self, audio).map_err(|e| e.to_string())
    }
    fn stop_playback(&self) -> Result<PlaybackStopped, String> {
        RtpSession::stop_playback(self).map_err(|e| e.to_string())
    }
}

/// What an [`Endpointer`] decided about one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointEvent {
    /// Nothing changed.
    None,
    /// The caller started speaking (confirmed in this frame).
    SpeechStarted {
        /// Audio time from the first speech frame to the end of this frame (the VAD's
        /// confirmation delay).
        onset: Duration,
    },
    /// The caller's voice stopped `silence` ago: the endpoint hangover is running and
    /// the utterance may still go on.
    SpeechPaused {
        /// Audio time since the voice stopped.
        silence: Duration,
    },
    /// The caller went on speaking after [`EndpointEvent::SpeechPaused`].
    SpeechResumed,
    /// The caller's utterance ended; the voice stopped `hangover` ago.
    SpeechEnded {
        /// The trailing silence the endpointer waited for.
        hangover: Duration,
    },
}

/// Voice activity detection with end-of-utterance decision, fed frame by frame.
pub trait Endpointer: Send {
    /// Feeds the next caller frame.
    fn push(&mut self, frame: &AudioFrame) -> EndpointEvent;
    /// Told whenever the bot starts or stops speaking (an endpointer may confirm
    /// speech sooner while the bot speaks, for a faster barge-in). Default: ignored.
    fn set_bot_speaking(&mut self, speaking: bool) {
        let _ = speaking;
    }
}

/// Sent to a running call by the bot or the SIP side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallControl {
    /// The caller hung up (BYE/CANCEL received): cancel everything now.
    CallerHungUp,
    /// The bot shuts down: stop speaking, say `phrase`, hang up within `grace`.
    Shutdown {
        /// Short goodbye.
        phrase: String,
        /// Longest wait for playback.
        grace: Duration,
        /// `phrase` already synthesized (at the media's play rate), played instead of
        /// synthesizing it again: the bot synthesizes the goodbye once for all calls.
        audio: Option<AudioFrame>,
    },
}

/// Everything a call needs, taken when it starts (live calls keep these until they end).
#[derive(Clone)]
pub struct CallSetup {
    /// The SIP Call-ID (names the transcript file).
    pub call_id: String,
    /// Dialogue rules.
    pub dialogue: DialogueConfig,
    /// Speech to text.
    pub stt: Arc<dyn Transcriber>,
    /// Transcription options.
    pub stt_options: TranscribeOptions,
    /// Deadline of each transcription, from its start.
    pub stt_timeout: Duration,
    /// Language model.
    pub llm: Arc<dyn ChatModel>,
    /// How replies are cut into sentences.
    pub chunker: ChunkerConfig,
    /// Speech synthesis.
    pub tts: Arc<dyn Synthesizer>,
    /// Voice.
    pub voice: VoiceOptions,
    /// Where the transcript goes (none: no file).
    pub transcript_dir: Option<PathBuf>,
    /// Audio kept before the speech onset and given to the transcriber.
    pub preroll: Duration,
    /// Longest utterance; a longer one is cut and transcribed.
    pub max_utterance: Duration,
    /// Receives a copy of each finished turn (never blocks: dropped when full).
    pub turn_observer: Option<Sender<TurnRecord>>,
}

/// How a call went.
#[derive(Debug, Clone, PartialEq)]
pub struct CallOutcome {
    /// The dialogue's summary.
    pub summary: Option<CallSummary>,
    /// The bot decided to hang up: the SIP side must send BYE.
    pub send_bye: bool,
    /// The transcript file, if one was written.
    pub transcript: Option<PathBuf>,
    /// Problems met on the way (layer errors the call survived).
    pub errors: Vec<String>,
    /// Turns recorded.
    pub turns: u32,
}

struct Synth {
    speech: SpeechId,
    job: Option<SynthesisJob>,
    samples: Vec<i16>,
    rate: u32,
    done: bool,
}

struct Running {
    turn: TurnId,
    reply: Reply,
    chunker: SentenceChunker,
    first: bool,
}

enum Ready {
    Control,
    Frames,
    Events,
    Stt,
    Stopping(usize),
    Llm,
    Synth(usize),
    Timeout,
}

struct Call<'a, M: CallMedia, E: Endpointer> {
    setup: CallSetup,
    media: &'a M,
    endpointer: E,
    control: &'a Receiver<CallControl>,
    control_open: bool,
    dialogue: Dialogue<Vec<f32>>,
    history: History,
    stt: Option<(TurnId, TranscriptionJob)>,
    /// Cancelled transcriptions until they stop (their end is told to the dialogue,
    /// which starts no speculation while one still holds the transcriber).
    stopping: Vec<(TurnId, TranscriptionJob)>,
    reply: Option<Running>,
    synths: VecDeque<Synth>,
    /// Queued in the media, in order: (playback, speech).
    playing: VecDeque<(PlaybackId, SpeechId)>,
    collecting: bool,
    /// The dialogue ended the turn early ([`Action::EndUtterance`]) and the endpointer
    /// has not ended that utterance yet: if the voice resumes, it is a new utterance.
    ended_early: bool,
    /// What the endpointer was last told about the bot speaking.
    bot_speaking: bool,
    utterance: Vec<i16>,
    utterance_rate: u32,
    preroll: VecDeque<i16>,
    writer: Option<TranscriptWriter>,
    outcome: CallOutcome,
    /// Audio of a phrase synthesized elsewhere (the shutdown goodbye): (text, audio).
    prerendered: Option<(String, AudioFrame)>,
}

/// Runs one answered call until its dialogue ends (see the [module docs](self)).
pub fn run_call<M: CallMedia, E: Endpointer>(
    setup: CallSetup,
    media: &M,
    endpointer: E,
    control: &Receiver<CallControl>,
) -> CallOutcome {
    let mut outcome = CallOutcome {
        summary: None,
        send_bye: false,
        transcript: None,
        errors: Vec::new(),
        turns: 0,
    };
    let writer = match &setup.transcript_dir {
        Some(dir) => match TranscriptWriter::create(dir, &setup.call_id, SystemTime::now()) {
            Ok(w) => {
                outcome.transcript = Some(w.path().to_path_buf());
                Some(w)
            }
            Err(e) => {
                tracing::warn!(call = %setup.call_id, error = %e, "no transcript for this call");
                outcome.errors.push(e.to_string());
                None
            }
        },
        None => None,
    };
    let history = setup.llm.new_history();
    let dialogue = Dialogue::new(setup.dialogue.clone(), Instant::now());
    let mut call = Call {
        setup,
        media,
        endpointer,
        control,
        control_open: true,
        dialogue,
        history,
        stt: None,
        stopping: Vec::new(),
        reply: None,
        synths: VecDeque::new(),
        playing: VecDeque::new(),
        collecting: false,
        ended_early: false,
        bot_speaking: false,
        utterance: Vec::new(),
        utterance_rate: 8000,
        preroll: VecDeque::new(),
        writer,
        outcome,
        prerendered: None,
    };
    call.run();
    // Dropping the call drops every job handle still held: each cancels its job.
    call.outcome
}

impl<M: CallMedia, E: Endpointer> Call<'_, M, E> {
    fn run(&mut self) {
        loop {
            self.apply_actions();
            if self.dialogue.is_ended() {
                return;
            }
            let speaking = self.dialogue.is_speaking();
            if speaking != self.bot_speaking {
                self.bot_speaking = speaking;
                self.endpointer.set_bot_speaking(speaking);
            }
            match self.wait() {
                Ready::Timeout => self.on_timeout(),
                Ready::Control => self.on_control(),
                Ready::Frames => self.on_frames(),
                Ready::Events => self.on_events(),
                Ready::Stt => self.on_stt(),
                Ready::Stopping(i) => self.on_stopping(i),
                Ready::Llm => self.on_llm(),
                Ready::Synth(i) => self.on_synth(i),
            }
        }
    }

    /// Waits until one source is ready or the dialogue's timer is due.
    fn wait(&self) -> Ready {
        let mut sel = Select::new();
        let mut map = Vec::with_capacity(6 + self.stopping.len() + self.synths.len());
        if self.control_open {
            sel.recv(self.control);
            map.push(Ready::Control);
        }
        sel.recv(self.media.frames());
        map.push(Ready::Frames);
        sel.recv(self.media.events());
        map.push(Ready::Events);
        if let Some((_, job)) = &self.stt {
            sel.recv(job.result_channel());
            map.push(Ready::Stt);
        }
        for (i, (_, job)) in self.stopping.iter().enumerate() {
            sel.recv(job.result_channel());
            map.push(Ready::Stopping(i));
        }
        if let Some(r) = &self.reply {
            sel.recv(r.reply.events());
            map.push(Ready::Llm);
        }
        for (i, s) in self.synths.iter().enumerate() {
            if let Some(job) = &s.job {
                sel.recv(job.events());
                map.push(Ready::Synth(i));
            }
        }
        // A transcription the engine does not end by its deadline is given up on.
        let stt_limit = self.stt.as_ref().map(|(_, job)| job.deadline() + STT_STALL_SLACK);
        let ready = match [self.dialogue.poll_timeout(), stt_limit]
            .into_iter()
            .flatten()
            .min()
        {
            Some(t) => sel.ready_deadline(t).ok(),
            None => Some(sel.ready()),
        };
        match ready {
            Some(i) if i < map.len() => map.swap_remove(i),
            _ => Ready::Timeout,
        }
    }

    fn input(&mut self, input: Input<Vec<f32>>) {
        self.dialogue.handle(Instant::now(), input);
    }

    /// The dialogue's timers, and a transcription still running [`STT_STALL_SLACK`] past
    /// its deadline: cancelled and reported as failed, so the turn is recorded and the
    /// caller re-prompted even when the engine does not keep its deadline.
    fn on_timeout(&mut self) {
        let now = Instant::now();
        if let Some((turn, job)) = self
            .stt
            .take_if(|(_, job)| now >= job.deadline() + STT_STALL_SLACK)
        {
            job.cancel();
            let error = format!(
                "transcription timed out after {:?} (the engine did not end it)",
                self.setup.stt_timeout
            );
            self.outcome.errors.push(error.clone());
            self.input(Input::TranscriptFailed { turn, error });
        }
        self.dialogue.handle_timeout(now);
    }

    fn on_control(&mut self) {
        match self.control.try_recv() {
            Ok(CallControl::CallerHungUp) => self.input(Input::CallerHungUp),
            Ok(CallControl::Shutdown { phrase, grace, audio }) => {
                self.prerendered = audio.map(|a| (phrase.clone(), a));
                self.input(Input::Shutdown { phrase, grace })
            }
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => {
                // The bot is gone: end the call at once.
                self.control_open = false;
                self.input(Input::Shutdown {
                    phrase: String::new(),
                    grace: Duration::ZERO,
                });
            }
        }
    }

    fn on_frames(&mut self) {
        loop {
            match self.media.frames().try_recv() {
                Ok(frame) => self.on_frame(frame.audio),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.input(Input::CallerHungUp);
                    return;
                }
            }
        }
    }

    fn on_frame(&mut self, audio: AudioFrame) {
        let event = self.endpointer.push(&audio);
        let rate = audio.sample_rate.max(1);
        let preroll_max = samples(rate, self.setup.preroll);
        if self.collecting {
            self.utterance.extend_from_slice(&audio.samples);
        } else {
            self.preroll.extend(audio.samples.iter().copied());
            let excess = self.preroll.len().saturating_sub(preroll_max);
            self.preroll.drain(..excess);
        }
        match event {
            EndpointEvent::SpeechStarted { onset } if !self.collecting => {
                self.ended_early = false;
                self.start_utterance(rate);
                // The speech began `onset` before this frame reached the call.
                let now = Instant::now();
                self.dialogue
                    .handle(now.checked_sub(onset).unwrap_or(now), Input::SpeechStarted);
            }
            EndpointEvent::SpeechResumed if !self.collecting && self.ended_early => {
                // The caller goes on after the dialogue ended the turn early.
                self.ended_early = false;
                self.start_utterance(rate);
                self.input(Input::SpeechStarted);
            }
            EndpointEvent::SpeechEnded { .. } if !self.collecting => self.ended_early = false,
            EndpointEvent::SpeechPaused { silence }
                if self.collecting && self.setup.dialogue.speculative_stt =>
            {
                let audio = self.utterance_audio();
                let now = Instant::now();
                self.dialogue.handle(
                    now,
                    Input::SpeechPaused {
                        audio,
                        voice_ended: now.checked_sub(silence).unwrap_or(now),
                    },
                );
            }
            EndpointEvent::SpeechResumed if self.collecting => self.input(Input::SpeechResumed),
            EndpointEvent::SpeechEnded { hangover } if self.collecting => {
                self.end_utterance(hangover);
            }
            _ => {
                if self.collecting && self.utterance.len() >= samples(rate, self.setup.max_utterance) {
                    self.end_utterance(Duration::ZERO);
                }
            }
        }
    }

    /// Starts collecting an utterance (with the pre-roll).
    fn start_utterance(&mut self, rate: u32) {
        self.collecting = true;
        self.utterance_rate = rate;
        self.utterance.clear();
        self.utterance.extend(self.preroll.drain(..));
    }

    /// The utterance so far, at the transcriber's rate.
    fn utterance_audio(&mut self) -> Vec<f32> {
        let f32s = callbot_audio::frame::i16_to_f32(&self.utterance);
        if self.utterance_rate == callbot_stt::SAMPLE_RATE {
            f32s
        } else {
            match callbot_audio::resample::resample(&f32s, self.utterance_rate, callbot_stt::SAMPLE_RATE) {
                Ok(a) => a,
                Err(e) => {
                    self.outcome.errors.push(format!("resampling the utterance: {e}"));
                    Vec::new()
                }
            }
        }
    }

    fn end_utterance(&mut self, hangover: Duration) {
        self.collecting = false;
        let audio = self.utterance_audio();
        self.utterance.clear();
        let now = Instant::now();
        self.dialogue.handle(
            now,
            Input::SpeechEnded {
                audio,
                voice_ended: now.checked_sub(hangover).unwrap_or(now),
            },
        );
    }

    fn on_events(&mut self) {
        loop {
            match self.media.events().try_recv() {
                Ok(RtpEvent::Dtmf(d)) => self.input(Input::Dtmf(d.digit)),
                Ok(RtpEvent::PlaybackFinished(p)) => {
                    let Some(pos) = self.playing.iter().position(|(id, _)| *id == p.id) else {
                        continue;
                    };
                    let Some((_, speech)) = self.playing.remove(pos) else {
                        continue;
                    };
                    if p.completed {
                        self.input(Input::PlaybackFinished { speech });
                    }
                }
                Ok(RtpEvent::SourceLatched { .. }) => {}
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.input(Input::CallerHungUp);
                    return;
                }
            }
        }
    }

    fn on_stt(&mut self) {
        let Some((turn, job)) = &self.stt else {
            return;
        };
        let turn = *turn;
        let Some(result) = job.try_result() else {
            return;
        };
        self.stt = None;
        match result {
            Ok(t) => self.input(Input::Transcript {
                turn,
                text: t.text,
                no_speech_prob: t.no_speech_prob,
            }),
            Err(callbot_stt::SttError::DeadlineExceeded) => self.input(Input::TranscriptFailed {
                turn,
                error: format!("transcription timed out after {:?}", self.setup.stt_timeout),
            }),
            Err(e) => self.input(Input::TranscriptFailed {
                turn,
                error: e.to_string(),
            }),
        }
    }

    /// A cancelled transcription may have stopped: tell the dialogue.
    fn on_stopping(&mut self, i: usize) {
        let Some((turn, job)) = self.stopping.get(i) else {
            return;
        };
        let turn = *turn;
        let Some(result) = job.try_result() else {
            return;
        };
        self.stopping.swap_remove(i);
        let error = match result {
            Ok(_) => "cancelled (finished first)".to_string(),
            Err(e) => e.to_string(),
        };
        self.input(Input::TranscriptFailed { turn, error });
    }

    fn on_llm(&mut self) {
        let Some(r) = self.reply.as_mut() else {
            return;
        };
        let turn = r.turn;
        let event = match r.reply.recv_timeout(Duration::ZERO) {
            Ok(Some(e)) => e,
            Ok(None) => {
                self.reply = None;
                return;
            }
            Err(()) => return,
        };
        let now = Instant::now();
        match event {
            ReplyEvent::Delta(text) => {
                if std::mem::replace(&mut r.first, false) {
                    self.dialogue.handle(now, Input::LlmToken { turn });
                }
                let sentences: Vec<String> = r.chunker.push(&text).collect();
                for s in sentences {
                    self.dialogue.handle(now, Input::LlmSentence { turn, text: s });
                }
            }
            ReplyEvent::Done(_) => {
                let sentences: Vec<String> = r.chunker.finish().collect();
                self.reply = None;
                for s in sentences {
                    self.dialogue.handle(now, Input::LlmSentence { turn, text: s });
                }
                self.dialogue.handle(now, Input::LlmDone { turn });
            }
            ReplyEvent::Failed(e) => {
                self.reply = None;
                self.dialogue.handle(
                    now,
                    Input::LlmFailed {
                        turn,
                        error: e.to_string(),
                    },
                );
            }
        }
    }

    fn on_synth(&mut self, i: usize) {
        let Some(s) = self.synths.get_mut(i) else {
            return;
        };
        let Some(job) = s.job.as_mut() else {
            return;
        };
        let event = match job.events().try_recv() {
            Ok(e) => job.on_event(e),
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => Err(callbot_tts::TtsError::EngineStopped),
        };
        match event {
            Ok(Some(chunk)) => {
                s.rate = chunk.sample_rate;
                s.samples.extend_from_slice(&chunk.samples);
            }
            Ok(None) => {
                s.done = true;
                s.job = None;
                self.play_ready();
            }
            Err(e) => {
                let speech = s.speech;
                self.synths.remove(i);
                self.input(Input::SpeechFailed {
                    speech,
                    error: e.to_string(),
                });
                self.play_ready();
            }
        }
    }

    /// Hands finished syntheses to the media, in order.
    fn play_ready(&mut self) {
        while self.synths.front().is_some_and(|s| s.done) {
            let Some(s) = self.synths.pop_front() else {
                return;
            };
            let mut frame = AudioFrame::new(s.rate, s.samples);
            // The synthesizer's leading silence would only delay the reply.
            frame.trim_leading_silence(TRIM_THRESHOLD, TRIM_KEEP);
            let rate = self.media.play_rate();
            let frame = if frame.sample_rate == rate {
                Ok(frame)
            } else {
                callbot_audio::resample::resample_frame(&frame, rate).map_err(|e| e.to_string())
            };
            let result = frame.and_then(|f| {
                let duration = f.duration();
                self.media.play(f).map(|id| (id, duration))
            });
            match result {
                Ok((id, duration)) => {
                    self.playing.push_back((id, s.speech));
                    self.input(Input::SpeechAudio {
                        speech: s.speech,
                        duration,
                    });
                }
                Err(error) => {
                    self.outcome.errors.push(format!("playback: {error}"));
                    self.input(Input::SpeechFailed {
                        speech: s.speech,
                        error,
                    });
                }
            }
        }
    }

    fn apply_actions(&mut self) {
        while let Some(action) = self.dialogue.poll_action() {
            self.apply(action);
        }
    }

    fn apply(&mut self, action: Action<Vec<f32>>) {
        let now = Instant::now();
        match action {
            Action::Transcribe { turn, audio } => {
                let request = TranscriptionRequest::new(audio)
                    .with_options(self.setup.stt_options.clone())
                    .with_deadline(now + self.setup.stt_timeout);
                match self.setup.stt.submit(request) {
                    Ok(job) => self.stt = Some((turn, job)),
                    Err(e) => self.input(Input::TranscriptFailed {
                        turn,
                        error: e.to_string(),
                    }),
                }
            }
            Action::CancelTranscription { turn } => {
                if let Some((turn, job)) = self.stt.take_if(|(t, _)| *t == turn) {
                    job.cancel();
                    if self.stopping.len() >= MAX_STOPPING {
                        // Dropping the oldest handle leaves it cancelled, untracked.
                        self.stopping.remove(0);
                    }
                    self.stopping.push((turn, job));
                }
            }
            Action::EndUtterance => {
                self.collecting = false;
                self.ended_early = true;
                self.utterance.clear();
            }
            Action::Reply { turn, user_text } => {
                let mut history = self.history.clone();
                history.push_user(&user_text);
                match self.setup.llm.start_reply(&history) {
                    Ok(reply) => {
                        self.reply = Some(Running {
                            turn,
                            reply,
                            chunker: SentenceChunker::new(self.setup.chunker),
                            first: true,
                        })
                    }
                    Err(e) => self.input(Input::LlmFailed {
                        turn,
                        error: e.to_string(),
                    }),
                }
            }
            Action::CancelReply { turn } => {
                if let Some(r) = self.reply.take_if(|r| r.turn == turn) {
                    r.reply.cancel();
                }
            }
            Action::Speak { speech, text } if self.prerendered.as_ref().is_some_and(|(t, _)| *t == text) => {
                if let Some((_, audio)) = self.prerendered.take() {
                    self.synths.push_back(Synth {
                        speech,
                        job: None,
                        rate: audio.sample_rate,
                        samples: audio.samples,
                        done: true,
                    });
                    self.play_ready();
                }
            }
            Action::Speak { speech, text } => match self.setup.tts.synthesize(&text, &self.setup.voice) {
                Ok(job) => self.synths.push_back(Synth {
                    speech,
                    rate: job.sample_rate(),
                    job: Some(job),
                    samples: Vec::new(),
                    done: false,
                }),
                Err(e) => self.input(Input::SpeechFailed {
                    speech,
                    error: e.to_string(),
                }),
            },
            Action::StopSpeaking => {
                // Dropping the jobs cancels the syntheses.
                self.synths.clear();
                let playing = self.playing.front().map(|(_, s)| *s);
                self.playing.clear();
                let played = match self.media.stop_playback() {
                    Ok(stopped) => stopped.played,
                    Err(e) => {
                        self.outcome.errors.push(format!("stop playback: {e}"));
                        Duration::ZERO
                    }
                };
                self.input(Input::PlaybackStopped {
                    speech: playing,
                    played,
                });
            }
            Action::HangUp => self.outcome.send_bye = true,
            Action::TurnFinished(record) => self.on_turn(record),
            Action::CallEnded(summary) => {
                if let Some(w) = self.writer.take()
                    && let Err(e) = w.finish(&summary)
                {
                    self.outcome.errors.push(e.to_string());
                }
                tracing::info!(call = %self.setup.call_id, reason = ?summary.reason, turns = summary.turns, duration_ms = summary.duration.as_millis() as u64, "call ended");
                self.outcome.summary = Some(summary);
            }
        }
    }

    fn on_turn(&mut self, record: TurnRecord) {
        if let Some(user) = &record.user {
            self.history.push_user(user);
            self.history.commit_assistant(&record.bot);
        }
        log_turn(&self.setup.call_id, &record);
        self.outcome.turns += 1;
        if let Some(w) = self.writer.as_mut()
            && let Err(e) = w.write_turn(&record)
        {
            tracing::warn!(call = %self.setup.call_id, error = %e, "transcript write failed");
            self.outcome.errors.push(e.to_string());
        }
        if let Some(tx) = &self.setup.turn_observer {
            let _ = tx.try_send(record);
        }
    }
}

/// Synthesized audio starts at its first sample above this magnitude (about -54 dBFS)...
const TRIM_THRESHOLD: u16 = 64;
/// ...less this much lead-in, so the onset is not clipped.
const TRIM_KEEP: Duration = Duration::from_millis(2);

/// Cancelled transcriptions tracked until they stop (each ends by its deadline anyway).
const MAX_STOPPING: usize = 8;

/// How long past its deadline ([`CallSetup::stt_timeout`]) a transcription may run
/// before the call gives up on it (an engine normally ends it at the deadline).
pub const STT_STALL_SLACK: Duration = Duration::from_secs(1);

fn samples(rate: u32, d: Duration) -> usize {
    callbot_audio::frame::samples_for(rate, d)
}
