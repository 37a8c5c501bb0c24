//! The call dialogue: a sans-IO turn-taking engine, one per call.
//!
//! [`Dialogue`] owns no thread, socket, clock or audio device. The call's driver feeds it
//! what happened ([`Input`]: the VAD saw speech start/end, a transcript is ready, the LLM
//! produced a sentence, a sentence's audio was queued or finished playing, a DTMF digit,
//! the caller hung up) together with the current time, and takes out what to do
//! ([`Action`]: start a transcription, start an LLM reply, speak a text, stop speaking,
//! cancel jobs, hang up, write a transcript line). Timers are plain deadlines:
//! [`Dialogue::poll_timeout`] says when to call [`Dialogue::handle_timeout`]. Tests drive
//! it with made-up `Instant`s, so every rule below is tested deterministically.
//!
//! The run loop, for a driver:
//! 1. `Dialogue::new(config, answered_at)` when the call is answered (queues the greeting).
//! 2. Drain [`Dialogue::poll_action`] and carry out each action.
//! 3. Wait for the next event or until [`Dialogue::poll_timeout`].
//! 4. Feed it with [`Dialogue::handle`] (or [`Dialogue::handle_timeout`]); back to 2.
//! 5. Stop when [`Dialogue::is_ended`] (after an [`Action::CallEnded`]).
//!
//! The rules:
//! - **Greeting** when answered. **Turns**: speech end (endpoint) -> [`Action::Transcribe`]
//!   -> [`Action::Reply`] -> one [`Action::Speak`] per LLM sentence as it arrives.
//!   One transcription runs at a time; an utterance that ends meanwhile waits (the
//!   newest one; an older waiting one is dropped and counted).
//! - **Speculative transcription** (when `speculative_stt` is on): when the caller's
//!   voice has stopped ([`Input::SpeechPaused`], the start of the endpoint hangover)
//!   for `speculation_delay`, the utterance so far is transcribed. When the hangover
//!   completes ([`Input::SpeechEnded`]) that job's result is used (or awaited) instead
//!   of a new one; when the caller goes on speaking ([`Input::SpeechResumed`]) it is
//!   cancelled, and no new speculation starts until the cancelled job has stopped (the
//!   driver answers [`Action::CancelTranscription`] with the job's end), so a stale job
//!   never queues ahead of a fresh one. While another transcription runs, the
//!   speculation waits for it.
//! - **Early end of turn** (when `early_end_of_turn` is on): when the speculative
//!   transcript reads as a finished utterance ([`reads_finished`]: final punctuation
//!   from Whisper, enough words, no dangling "and"/"the"/"um") and the caller has been
//!   silent for `early_end_min_silence`, the turn ends at once ([`Action::EndUtterance`],
//!   then [`Action::Reply`]) instead of after the full hangover. Otherwise the engine
//!   waits for the hangover and reuses the result (the audio did not change). Speech
//!   after an early end is a new utterance: before the bot says anything, the reply is
//!   cancelled and both texts are answered together; once it speaks, it is a barge-in.
//! - **Caller goes on speaking** before the bot says anything: the pending transcript
//!   or reply is not answered; its text is carried into the next turn.
//! - **Barge-in** (when enabled): the caller starts speaking while the bot speaks ->
//!   [`Action::StopSpeaking`] and [`Action::CancelReply`]; the turn's record (and so the
//!   history) keeps the sentences fully played plus the share of the interrupted one
//!   that was heard (from [`Input::PlaybackStopped`]'s `played`). Without barge-in the
//!   caller's speech is ignored while the bot speaks.
//! - **Noise guard**: a transcript with a no-speech probability above the limit or
//!   fewer words than the minimum gets no reply.
//! - **Silence**: no caller speech for `silence_prompt_after` (while nothing else is
//!   going on) -> the prompt, once; `silence_hangup_after` -> goodbye and hang-up.
//! - **Maximum duration**, **caller goodbye phrases**, **DTMF actions** with `hangup`,
//!   and [`Input::Shutdown`] close the call: pending jobs are cancelled, what is already
//!   being spoken is finished, the goodbye phrase is spoken, then [`Action::HangUp`].
//!   If playback does not finish within `closing_grace`, the call is hung up anyway.
//! - **Caller hangs up** at any stage: every job is cancelled at once
//!   ([`Action::CancelTranscription`], [`Action::CancelReply`], [`Action::StopSpeaking`]).
//!   A greeting, prompt or other bot-only phrase that was playing is recorded as far as
//!   it was heard: the call ends on the [`Input::PlaybackStopped`] answer (or after
//!   [`HANG_UP_STOP_WAIT`] without one).
//! - **Failed or timed-out transcription**: a turn record of kind
//!   `transcription_failed` with the error and the stage timings; then, unless the
//!   caller already speaks again, the bot says `stt_failed_phrase` (a re-prompt).
//! - **Shutdown** ([`Input::Shutdown`]) stops what the bot is saying at once (recorded
//!   as far as heard), so the short shutdown goodbye is heard within its grace.
//! - Every finished turn comes out as [`Action::TurnFinished`] with its stage timings,
//!   computed from the times passed in; the call ends with [`Action::CallEnded`].
//!
//! ```
//! use std::time::{Duration, Instant};
//! use callbot::dialogue::{Action, Dialogue, DialogueConfig, Input};
//!
//! let t0 = Instant::now();
//! let mut d: Dialogue<Vec<i16>> = Dialogue::new(DialogueConfig::default(), t0);
//! let Some(Action::Speak { speech, .. }) = d.poll_action() else { unreachable!() };
//! d.handle(t0, Input::SpeechAudio { speech, duration: Duration::from_secs(2) });
//! d.handle(t0 + Duration::from_secs(2), Input::PlaybackFinished { speech });
//! let t1 = t0 + Duration::from_secs(3);
//! d.handle(t1, Input::SpeechStarted);
//! d.handle(t1 + Duration::from_secs(1), Input::SpeechEnded { audio: vec![0; 16000], voice_ended: t1 });
//! // the greeting's transcript line, then the transcription of the utterance
//! assert!(matches!(d.poll_action(), Some(Action::TurnFinished(_))));
//! assert!(matches!(d.poll_action(), Some(Action::Transcribe { .. })));
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::settings::{DtmfAction, DtmfThen};

/// The engine's configuration (see [`crate::Settings::dialogue_config`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DialogueConfig {
    /// Said when the call is answered; empty: nothing.
    pub greeting: String,
    /// Said before the bot hangs up.
    pub goodbye: String,
    /// Caller utterances (already passed through [`normalize_words`]) that end the call.
    pub caller_goodbye_phrases: Vec<String>,
    /// Said once after `silence_prompt_after` of silence.
    pub silence_prompt: String,
    /// Caller silence before the prompt.
    pub silence_prompt_after: Duration,
    /// Caller silence before goodbye and hang-up.
    pub silence_hangup_after: Duration,
    /// Maximum call duration.
    pub max_call_duration: Duration,
    /// Said when the LLM fails before saying anything.
    pub error_phrase: String,
    /// Whether caller speech interrupts the bot.
    pub barge_in: bool,
    /// Transcripts with a no-speech probability above this are ignored.
    pub max_no_speech_prob: f32,
    /// Transcripts with fewer words are ignored.
    pub min_words: usize,
    /// DTMF digit to action.
    pub dtmf: BTreeMap<char, DtmfAction>,
    /// Once the call is closing, the longest the bot waits for playback to finish
    /// before it hangs up anyway.
    pub closing_grace: Duration,
    /// Start transcribing when the caller's voice stops, during the endpoint hangover.
    pub speculative_stt: bool,
    /// Said when the transcription of an utterance fails or times out (a re-prompt);
    /// empty: say nothing and listen.
    pub stt_failed_phrase: String,
    /// Silence after the caller's voice stopped before the speculative transcription
    /// starts (zero: as soon as the endpointer reports the pause).
    pub speculation_delay: Duration,
    /// End the turn as soon as a speculative transcript reads as a finished utterance
    /// (see [`reads_finished`]) and the caller has kept silent for
    /// `early_end_min_silence`, instead of waiting for the endpointer's full hangover.
    pub early_end_of_turn: bool,
    /// Silence (from the end of the caller's voice) before an early end of turn.
    pub early_end_min_silence: Duration,
    /// Words a speculative transcript needs for an early end of turn.
    pub early_end_min_words: usize,
}

impl Default for DialogueConfig {
    fn default() -> Self {
        Self {
            greeting: "Hello, how can I help you?".into(),
            goodbye: "Goodbye!".into(),
            caller_goodbye_phrases: vec!["goodbye".into(), "bye".into()],
            silence_prompt: "Are you still there?".into(),
            silence_prompt_after: Duration::from_secs(8),
            silence_hangup_after: Duration::from_secs(20),
            max_call_duration: Duration::from_secs(600),
            error_phrase: "Sorry, I cannot answer that right now.".into(),
            barge_in: true,
            max_no_speech_prob: 0.6,
            min_words: 1,
            dtmf: BTreeMap::new(),
            closing_grace: Duration::from_secs(15),
            speculative_stt: true,
            stt_failed_phrase: "Sorry, I did not catch that. Could you say it again?".into(),
            speculation_delay: Duration::ZERO,
            early_end_of_turn: true,
            early_end_min_silence: Duration::from_millis(250),
            early_end_min_words: 2,
        }
    }
}

/// Identifies one caller turn (one transcription and its reply) within a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TurnId(pub u64);

/// Identifies one piece of bot speech (a sentence, the greeting...) within a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SpeechId(pub u64);

/// What happened, fed to [`Dialogue::handle`]. `A` is the driver's utterance audio
/// type; the engine only passes it on to [`Action::Transcribe`].
#[derive(Debug, Clone, PartialEq)]
pub enum Input<A> {
    /// The VAD detected the caller starting to speak.
    SpeechStarted,
    /// The caller's voice stopped: the endpoint hangover started (the utterance may
    /// still go on). Used for speculative transcription.
    SpeechPaused {
        /// The utterance's audio so far.
        audio: A,
        /// When the voice stopped.
        voice_ended: Instant,
    },
    /// The caller went on speaking after [`Input::SpeechPaused`], within the hangover.
    SpeechResumed,
    /// The VAD's endpointer decided the caller finished an utterance.
    SpeechEnded {
        /// The utterance's audio.
        audio: A,
        /// When the caller's voice actually stopped (before the endpoint hangover).
        voice_ended: Instant,
    },
    /// A transcription finished.
    Transcript {
        /// Its turn.
        turn: TurnId,
        /// The text.
        text: String,
        /// Whisper's no-speech probability (0 to 1).
        no_speech_prob: f32,
    },
    /// A transcription failed.
    TranscriptFailed {
        /// Its turn.
        turn: TurnId,
        /// Why.
        error: String,
    },
    /// The LLM produced a token (only the first one of a reply matters).
    LlmToken {
        /// Its turn.
        turn: TurnId,
    },
    /// The LLM reply's next complete sentence.
    LlmSentence {
        /// Its turn.
        turn: TurnId,
        /// The sentence.
        text: String,
    },
    /// The LLM reply is complete.
    LlmDone {
        /// Its turn.
        turn: TurnId,
    },
    /// The LLM reply failed.
    LlmFailed {
        /// Its turn.
        turn: TurnId,
        /// Why.
        error: String,
    },
    /// The synthesized audio of a speech was queued for playback.
    SpeechAudio {
        /// Which speech.
        speech: SpeechId,
        /// Its playback duration.
        duration: Duration,
    },
    /// Synthesis of a speech failed; it will not be played.
    SpeechFailed {
        /// Which speech.
        speech: SpeechId,
        /// Why.
        error: String,
    },
    /// A speech finished playing completely.
    PlaybackFinished {
        /// Which speech.
        speech: SpeechId,
    },
    /// The answer to [`Action::StopSpeaking`]: playback stopped.
    PlaybackStopped {
        /// The speech that was playing, if any.
        speech: Option<SpeechId>,
        /// How much of it was played.
        played: Duration,
    },
    /// A DTMF digit (`0`-`9`, `*`, `#`, `A`-`D`).
    Dtmf(char),
    /// The caller hung up (BYE or CANCEL received).
    CallerHungUp,
    /// The bot is shutting down: say `phrase` (may be empty) and hang up within `grace`.
    Shutdown {
        /// Short goodbye.
        phrase: String,
        /// Longest wait for playback before hanging up anyway.
        grace: Duration,
    },
}

/// What to do, taken from [`Dialogue::poll_action`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action<A> {
    /// Transcribe this utterance; answer with [`Input::Transcript`] or [`Input::TranscriptFailed`].
    Transcribe {
        /// Its turn.
        turn: TurnId,
        /// The audio.
        audio: A,
    },
    /// Drop the transcription of `turn` (its result is ignored anyway). Once the job
    /// has really stopped, answer with its [`Input::TranscriptFailed`] (or
    /// [`Input::Transcript`]): until then, or for at most [`STALE_JOB_WAIT`], no new
    /// speculative transcription starts, so a stale job never queues ahead of it.
    CancelTranscription {
        /// Which turn.
        turn: TurnId,
    },
    /// The caller's utterance is complete: the engine ended the turn early, from its
    /// speculative transcript, before the endpointer's hangover ran out. The driver
    /// stops collecting the utterance and drops the endpointer's coming
    /// [`Input::SpeechEnded`] for it; if the caller's voice resumes, that is a new
    /// utterance ([`Input::SpeechStarted`]).
    EndUtterance,
    /// Ask the LLM for a reply to `user_text` (the history holds the earlier turns);
    /// answer with [`Input::LlmToken`], [`Input::LlmSentence`]s, then [`Input::LlmDone`]
    /// or [`Input::LlmFailed`].
    Reply {
        /// Its turn.
        turn: TurnId,
        /// What the caller said.
        user_text: String,
    },
    /// Stop the LLM reply of `turn`.
    CancelReply {
        /// Which turn.
        turn: TurnId,
    },
    /// Synthesize `text` and queue it for playback after what is queued; answer with
    /// [`Input::SpeechAudio`] (or [`Input::SpeechFailed`]), then [`Input::PlaybackFinished`].
    Speak {
        /// Its id.
        speech: SpeechId,
        /// The text.
        text: String,
    },
    /// Stop playback now, drop queued audio and pending syntheses; answer with
    /// [`Input::PlaybackStopped`].
    StopSpeaking,
    /// Send BYE: the call is over.
    HangUp,
    /// Append this finished turn to the transcript (and to the LLM history when it
    /// has a `user` text: `bot` is what was actually spoken).
    TurnFinished(TurnRecord),
    /// The call is over; nothing else will come out.
    CallEnded(CallSummary),
}

/// What kind of exchange a [`TurnRecord`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "digit")]
pub enum TurnKind {
    /// The greeting on answer.
    Greeting,
    /// The caller spoke and the bot replied.
    Conversation,
    /// The silence prompt.
    SilencePrompt,
    /// A DTMF action's phrase.
    Dtmf(char),
    /// The closing goodbye.
    Goodbye,
    /// The transcription of the caller's utterance failed or timed out (the record's
    /// `error` says why; no reply was asked for).
    TranscriptionFailed,
    /// The bot asked the caller to repeat after a failed transcription.
    Reprompt,
}

/// Per-turn stage timings, from the times passed to the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TurnTimings {
    /// From the end of the caller's voice to the endpoint decision (VAD hangover).
    #[serde(serialize_with = "ser_ms")]
    pub endpoint: Option<Duration>,
    /// From the start of the transcription to the transcript.
    #[serde(serialize_with = "ser_ms")]
    pub stt: Option<Duration>,
    /// From the endpoint decision to the transcript being used: the transcription
    /// time the caller waited for (zero when a speculative one had finished first).
    #[serde(serialize_with = "ser_ms")]
    pub stt_after_endpoint: Option<Duration>,
    /// Whether the transcript came from a speculative transcription.
    pub speculative_stt: bool,
    /// Whether the turn was ended early, from the speculative transcript, before the
    /// endpointer's hangover ran out.
    pub early_end: bool,
    /// From the reply request to the LLM's first token.
    #[serde(serialize_with = "ser_ms")]
    pub llm_first_token: Option<Duration>,
    /// From the reply request to the first complete sentence.
    #[serde(serialize_with = "ser_ms")]
    pub llm_first_sentence: Option<Duration>,
    /// From the first sentence to its audio being queued for playback.
    #[serde(serialize_with = "ser_ms")]
    pub tts_first_audio: Option<Duration>,
    /// From the end of the caller's voice to the first reply audio queued for playback.
    #[serde(serialize_with = "ser_ms")]
    pub voice_to_voice: Option<Duration>,
    /// Barge-in: from the caller's speech onset (the time the first frame of the
    /// interrupting utterance reached the call, as given with [`Input::SpeechStarted`])
    /// to playback being stopped (no bot packet is sent after it).
    #[serde(serialize_with = "ser_ms")]
    pub barge_in_stop: Option<Duration>,
}

/// One finished turn, as written to the transcript.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TurnRecord {
    /// 1-based turn number within the call.
    pub index: u32,
    /// What kind of exchange.
    #[serde(flatten)]
    pub kind: TurnKind,
    /// When the turn started, from the call's answer.
    #[serde(serialize_with = "ser_ms_req")]
    pub at: Duration,
    /// What the caller said (conversation turns).
    pub user: Option<String>,
    /// What the bot actually said (cut where it was interrupted).
    pub bot: String,
    /// Whether the bot was interrupted or its reply cancelled.
    pub interrupted: bool,
    /// Stage timings.
    pub timings: TurnTimings,
    /// What failed in this turn (a transcription error or timeout), if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The caller hung up.
    CallerHungUp,
    /// The caller said a goodbye phrase.
    CallerGoodbye,
    /// Nobody spoke for `silence_hangup_after`.
    Silence,
    /// `max_call_duration` was reached.
    MaxDuration,
    /// A DTMF action said to hang up.
    Dtmf,
    /// The bot shut down.
    Shutdown,
}

/// The end-of-call summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallSummary {
    /// Why the call ended.
    pub reason: EndReason,
    /// From answer to end.
    #[serde(serialize_with = "ser_ms_req")]
    pub duration: Duration,
    /// Turns recorded.
    pub turns: u32,
    /// Replies the LLM was asked for.
    pub replies: u32,
    /// Times the caller interrupted the bot.
    pub barge_ins: u32,
    /// Transcripts ignored by the noise guard.
    pub noise_ignored: u32,
    /// Utterances dropped because newer ones were waiting for transcription.
    pub utterances_dropped: u32,
    /// Transcriptions stopped while they ran: the caller hung up or the call ended during
    /// one, or a speculative one was dropped (also counted in `speculations_dropped`).
    pub transcriptions_cancelled: u32,
    /// DTMF digits received.
    pub dtmf_digits: u32,
    /// Speculative transcriptions started.
    pub speculations: u32,
    /// Speculative transcriptions dropped because the caller went on speaking.
    pub speculations_dropped: u32,
    /// Turns ended early from a speculative transcript (before the full hangover).
    pub early_ends: u32,
    /// Whether the closing goodbye finished playing before the hang-up
    /// (false when it was cut by `closing_grace` or the caller hung up).
    pub goodbye_completed: bool,
}

fn ser_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_secs_f64() * 1000.0)),
        None => s.serialize_none(),
    }
}

fn ser_ms_req<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Lower-cases `text`, drops punctuation and joins its words with single spaces:
/// the form used to count words and compare goodbye phrases.
pub fn normalize_words(text: &str) -> String {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Last words after which an utterance is not finished, whatever the punctuation:
/// conjunctions, articles, possessives and hesitation fillers.
const UNFINISHED_LAST_WORDS: &[&str] = &[
    "and", "but", "or", "nor", "because", "if", "although", "though", "unless", "until", "whereas", "the",
    "a", "an", "my", "your", "our", "their", "um", "uh", "uhm", "umm", "er", "erm", "hmm", "mm", "ah",
];

/// Last words after which a statement (not a question) is not finished: prepositions
/// and "to" ("I would like to.").
const UNFINISHED_STATEMENT_LAST_WORDS: &[&str] = &[
    "to", "of", "for", "with", "at", "in", "on", "from", "by", "about", "into", "than", "as",
];

/// Whether a transcript reads as a finished utterance, for an early end of turn: it
/// ends with sentence-final punctuation (`.`, `?` or `!`, not an ellipsis), has at
/// least `min_words` words, and does not end with a conjunction, article, possessive
/// or filler (nor, unless it is a question, with a preposition). Whisper punctuates
/// what it hears as a complete sentence, so this is a cheap stand-in for an
/// end-of-turn model.
pub fn reads_finished(text: &str, min_words: usize) -> bool {
    let t = text
        .trim_end()
        .trim_end_matches(['"', '\'', ')', ']', '\u{201d}', '\u{2019}']);
    if t.ends_with("..") || t.ends_with('\u{2026}') {
        return false;
    }
    let question = t.ends_with('?');
    if !(question || t.ends_with('.') || t.ends_with('!')) {
        return false;
    }
    let words = normalize_words(t);
    let mut iter = words.split(' ').filter(|w| !w.is_empty());
    let Some(last) = iter.next_back() else {
        return false;
    };
    if iter.count() + 1 < min_words {
        return false;
    }
    !(UNFINISHED_LAST_WORDS.contains(&last) || (!question && UNFINISHED_STATEMENT_LAST_WORDS.contains(&last)))
}

fn word_count(text: &str) -> usize {
    normalize_words(text).split(' ').filter(|w| !w.is_empty()).count()
}

#[derive(Debug, Clone)]
struct Speech {
    id: SpeechId,
    text: String,
    kind: SpeechKind,
    audio: Option<Duration>,
    requested_at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpeechKind {
    /// Part of the current reply turn.
    Reply(TurnId),
    /// A bot-only utterance, recorded as its own turn.
    Solo(TurnKind),
}

#[derive(Debug)]
struct SttJob<A> {
    turn: TurnId,
    superseded: bool,
    voice_ended: Instant,
    endpoint: Duration,
    started: Instant,
    /// Started during the endpoint hangover, not yet confirmed by the endpoint.
    speculative: bool,
    /// Started speculatively (kept once confirmed, for the timings).
    was_speculative: bool,
    /// When the endpoint confirmed it.
    endpointed: Instant,
    /// A result that arrived before the endpoint (`Some(None)`: it failed).
    early: Option<Option<(String, f32)>>,
    /// When the early result arrived.
    finished: Option<Instant>,
    /// The final utterance, kept while a confirmed speculative job runs: transcribed
    /// again (not speculatively) if that job fails.
    fallback: Option<A>,
    /// The early result reads as a finished utterance (an early end of turn may use it).
    early_finished: bool,
    /// The turn was ended early from this job's result.
    early_end: bool,
}

/// The caller's voice stopped and has not resumed (the endpoint hangover is running).
#[derive(Debug)]
struct Pause<A> {
    /// The utterance so far, until the speculative transcription takes it.
    audio: Option<A>,
    /// When the voice stopped.
    voice_ended: Instant,
}

/// How long a cancelled transcription may hold back new speculative ones when the
/// driver never reports its end.
pub const STALE_JOB_WAIT: Duration = Duration::from_secs(2);

/// After the caller hung up while a bot-only phrase (the greeting...) played, how long
/// the engine waits for [`Input::PlaybackStopped`] (to record what was heard) before it
/// ends the call without it.
pub const HANG_UP_STOP_WAIT: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Pending<A> {
    audio: A,
    voice_ended: Instant,
    endpointed: Instant,
}

#[derive(Debug)]
struct ReplyTurn {
    turn: TurnId,
    user: String,
    at: Instant,
    voice_ended: Instant,
    requested: Instant,
    timings: TurnTimings,
    spoken: Vec<String>,
    llm_done: bool,
    cancelled: bool,
    any_speech: bool,
}

#[derive(Debug)]
struct Closing {
    reason: EndReason,
    deadline: Instant,
    goodbye: Option<SpeechId>,
}

/// The dialogue of one call (see the [module docs](self)).
#[derive(Debug)]
pub struct Dialogue<A> {
    config: DialogueConfig,
    answered: Instant,
    actions: VecDeque<Action<A>>,
    next_turn: u64,
    next_speech: u64,
    records: u32,
    caller_speaking: bool,
    ignoring_utterance: bool,
    stt: Option<SttJob<A>>,
    waiting: Option<Pending<A>>,
    /// The caller's current pause (speculative transcription and early end of turn).
    pause: Option<Pause<A>>,
    /// The turn was ended early; the endpointer's end of that utterance is not needed.
    ended_early: bool,
    /// Cancelled transcriptions not yet reported stopped, with when they were cancelled.
    draining: Vec<(TurnId, Instant)>,
    carry: String,
    reply: Option<ReplyTurn>,
    queue: VecDeque<Speech>,
    /// A reply turn interrupted by barge-in, waiting for `PlaybackStopped`.
    interrupted: Option<(ReplyTurn, Option<Speech>, Instant)>,
    /// Solo speech stopped by barge-in, waiting for `PlaybackStopped`.
    stopped_solo: Vec<Speech>,
    /// The speech onset that stopped the solo speech (barge-in).
    solo_onset: Option<Instant>,
    silence_since: Instant,
    prompted: bool,
    closing: Option<Closing>,
    /// The caller hung up: waiting (until then) for `PlaybackStopped` before ending.
    hanging_up: Option<Instant>,
    /// The error of the failed transcription being handled.
    stt_error: Option<String>,
    ended: bool,
    summary: CallSummary,
}

impl<A> Dialogue<A> {
    /// The dialogue of a call answered at `now`; queues the greeting.
    pub fn new(config: DialogueConfig, now: Instant) -> Self {
        let mut d = Self {
            config,
            answered: now,
            actions: VecDeque::new(),
            next_turn: 1,
            next_speech: 1,
            records: 0,
            caller_speaking: false,
            ignoring_utterance: false,
            stt: None,
            waiting: None,
            pause: None,
            ended_early: false,
            draining: Vec::new(),
            carry: String::new(),
            reply: None,
            queue: VecDeque::new(),
            interrupted: None,
            stopped_solo: Vec::new(),
            solo_onset: None,
            silence_since: now,
            prompted: false,
            closing: None,
            hanging_up: None,
            stt_error: None,
            ended: false,
            summary: CallSummary {
                reason: EndReason::CallerHungUp,
                duration: Duration::ZERO,
                turns: 0,
                replies: 0,
                barge_ins: 0,
                noise_ignored: 0,
                utterances_dropped: 0,
                transcriptions_cancelled: 0,
                dtmf_digits: 0,
                speculations: 0,
                speculations_dropped: 0,
                early_ends: 0,
                goodbye_completed: false,
            },
        };
        let greeting = d.config.greeting.clone();
        if !greeting.trim().is_empty() {
            d.speak(now, greeting, SpeechKind::Solo(TurnKind::Greeting));
        }
        d
    }

    /// The next action to carry out, if any.
    pub fn poll_action(&mut self) -> Option<Action<A>> {
        self.actions.pop_front()
    }

    /// Whether the call is over (the last action is [`Action::CallEnded`]).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Whether the bot has speech queued or playing.
    pub fn is_speaking(&self) -> bool {
        !self.queue.is_empty()
    }

    /// When [`Dialogue::handle_timeout`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        if self.hanging_up.is_some() {
            return self.hanging_up;
        }
        if let Some(c) = &self.closing {
            return Some(c.deadline);
        }
        let max = self.answered + self.config.max_call_duration;
        let silence = if self.is_idle() {
            Some(if self.prompted {
                self.silence_since + self.config.silence_hangup_after
            } else {
                self.silence_since + self.config.silence_prompt_after
            })
        } else {
            None
        };
        [silence, self.turn_timer(), Some(max)]
            .into_iter()
            .flatten()
            .min()
    }

    /// When the caller's pause next needs the engine: to start the speculative
    /// transcription, or to end the turn early from its finished-looking result.
    fn turn_timer(&self) -> Option<Instant> {
        let p = self.pause.as_ref()?;
        if p.audio.is_some() {
            if self.stt.is_some() {
                // Retried when that job ends.
                return None;
            }
            let at = p.voice_ended + self.config.speculation_delay;
            let stale = self
                .draining
                .iter()
                .map(|(_, since)| *since + STALE_JOB_WAIT)
                .min();
            return Some(stale.map_or(at, |s| s.max(at)));
        }
        let job = self.stt.as_ref()?;
        (self.config.early_end_of_turn && job.speculative && job.early_finished)
            .then(|| p.voice_ended + self.config.early_end_min_silence)
    }

    /// Nothing is going on: the caller is quiet and the bot neither works nor speaks.
    fn is_idle(&self) -> bool {
        !self.caller_speaking
            && self.stt.is_none()
            && self.waiting.is_none()
            && self.reply.is_none()
            && self.queue.is_empty()
            && self.interrupted.is_none()
    }

    /// Fires the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        if let Some(t) = self.hanging_up {
            if now >= t {
                // No `PlaybackStopped` came: end without recording the phrase.
                self.hanging_up = None;
                self.stopped_solo.clear();
                self.end(now);
            }
            return;
        }
        if let Some(c) = &self.closing {
            if now >= c.deadline {
                if !self.queue.is_empty() {
                    self.queue.clear();
                    self.actions.push_back(Action::StopSpeaking);
                }
                self.finish_call(now);
            }
            return;
        }
        if now >= self.answered + self.config.max_call_duration {
            let goodbye = self.config.goodbye.clone();
            self.close(now, EndReason::MaxDuration, goodbye, None);
            return;
        }
        self.maybe_speculate(now);
        self.maybe_end_early(now);
        if self.is_idle() {
            if now >= self.silence_since + self.config.silence_hangup_after {
                let goodbye = self.config.goodbye.clone();
                self.close(now, EndReason::Silence, goodbye, None);
            } else if !self.prompted && now >= self.silence_since + self.config.silence_prompt_after {
                self.prompted = true;
                let prompt = self.config.silence_prompt.clone();
                if !prompt.trim().is_empty() {
                    self.speak(now, prompt, SpeechKind::Solo(TurnKind::SilencePrompt));
                }
            }
        }
    }

    /// Feeds one event that happened at `now`.
    pub fn handle(&mut self, now: Instant, input: Input<A>) {
        if self.ended || (self.hanging_up.is_some() && !matches!(input, Input::PlaybackStopped { .. })) {
            return;
        }
        match input {
            Input::SpeechStarted => self.on_speech_started(now),
            Input::SpeechPaused { audio, voice_ended } => self.on_speech_paused(now, audio, voice_ended),
            Input::SpeechResumed => self.on_speech_resumed(now),
            Input::SpeechEnded { audio, voice_ended } => self.on_speech_ended(now, audio, voice_ended),
            Input::Transcript { turn, .. } | Input::TranscriptFailed { turn, .. } if self.drained(turn) => {
                // A cancelled job stopped: the transcriber is free for a speculation.
                self.maybe_speculate(now);
            }
            Input::Transcript {
                turn,
                text,
                no_speech_prob,
            } => {
                self.on_transcript(now, turn, Some((text, no_speech_prob)));
                self.maybe_speculate(now);
            }
            Input::TranscriptFailed { turn, error } => {
                if self.stt.as_ref().is_some_and(|j| j.turn == turn) {
                    tracing::warn!(turn = turn.0, %error, "transcription failed");
                }
                self.stt_error = Some(error);
                self.on_transcript(now, turn, None);
                self.stt_error = None;
                self.maybe_speculate(now);
            }
            Input::LlmToken { turn } => {
                if let Some(r) = self.reply.as_mut().filter(|r| r.turn == turn && !r.cancelled)
                    && r.timings.llm_first_token.is_none()
                {
                    r.timings.llm_first_token = Some(now.saturating_duration_since(r.requested));
                }
            }
            Input::LlmSentence { turn, text } => self.on_sentence(now, turn, text),
            Input::LlmDone { turn } => {
                if let Some(r) = self.reply.as_mut().filter(|r| r.turn == turn) {
                    r.llm_done = true;
                }
                self.maybe_finish_reply(now);
            }
            Input::LlmFailed { turn, error } => self.on_llm_failed(now, turn, &error),
            Input::SpeechAudio { speech, duration } => self.on_speech_audio(now, speech, duration),
            Input::SpeechFailed { speech, error } => {
                tracing::warn!(speech = speech.0, %error, "speech synthesis failed");
                self.queue.retain(|s| s.id != speech);
                self.after_playback(now);
            }
            Input::PlaybackFinished { speech } => self.on_playback_finished(now, speech),
            Input::PlaybackStopped { speech, played } => self.on_playback_stopped(now, speech, played),
            Input::Dtmf(digit) => self.on_dtmf(now, digit),
            Input::CallerHungUp => self.on_caller_hung_up(now),
            Input::Shutdown { phrase, grace } => {
                if let Some(c) = self.closing.as_mut() {
                    c.deadline = c.deadline.min(now + grace);
                    c.reason = EndReason::Shutdown;
                } else {
                    // Stop talking now (recorded as far as heard): the goodbye must be
                    // heard within the grace.
                    self.cancel_work(now);
                    self.close(now, EndReason::Shutdown, phrase, Some(grace));
                }
            }
        }
    }

    fn new_turn(&mut self) -> TurnId {
        let t = TurnId(self.next_turn);
        self.next_turn += 1;
        t
    }

    fn speak(&mut self, now: Instant, text: String, kind: SpeechKind) -> SpeechId {
        let id = SpeechId(self.next_speech);
        self.next_speech += 1;
        self.queue.push_back(Speech {
            id,
            text: text.clone(),
            kind,
            audio: None,
            requested_at: now,
        });
        self.actions.push_back(Action::Speak { speech: id, text });
        id
    }

    fn record(
        &mut self,
        kind: TurnKind,
        at: Instant,
        user: Option<String>,
        bot: String,
        interrupted: bool,
        timings: TurnTimings,
    ) {
        self.records += 1;
        self.summary.turns = self.records;
        self.actions.push_back(Action::TurnFinished(TurnRecord {
            index: self.records,
            kind,
            at: at.saturating_duration_since(self.answered),
            user,
            bot,
            interrupted,
            timings,
            error: None,
        }));
    }

    fn on_speech_started(&mut self, now: Instant) {
        if self.closing.is_some() {
            return;
        }
        self.caller_speaking = true;
        self.prompted = false;
        self.ignoring_utterance = false;
        self.ended_early = false;
        self.pause = None;
        if let Some(job) = self.stt.as_mut() {
            job.superseded = true;
        }
        let bot_audible = self.queue.iter().any(|s| s.audio.is_some());
        if bot_audible && !self.config.barge_in {
            self.ignoring_utterance = true;
            return;
        }
        if let Some(mut r) = self.reply.take() {
            if !r.llm_done {
                self.actions.push_back(Action::CancelReply { turn: r.turn });
            }
            let reply_audible = self
                .queue
                .iter()
                .any(|s| s.kind == SpeechKind::Reply(r.turn) && s.audio.is_some());
            if r.spoken.is_empty() && !reply_audible {
                // The caller went on speaking before the bot said anything:
                // answer everything together in the next turn.
                self.carry = join(&r.user, &self.carry);
                self.stop_speaking();
                return;
            }
            r.cancelled = true;
            self.summary.barge_ins += 1;
            let playing = self.queue.iter().find(|s| s.audio.is_some()).cloned();
            self.interrupted = Some((r, playing, now));
            self.stop_speaking();
            return;
        }
        if !self.queue.is_empty() {
            // Barge-in on the greeting, prompt or a DTMF phrase.
            self.summary.barge_ins += 1;
            self.solo_onset = Some(now);
            self.stopped_solo = self.queue.drain(..).collect();
            self.actions.push_back(Action::StopSpeaking);
        }
    }

    fn stop_speaking(&mut self) {
        if !self.queue.is_empty() {
            self.queue.clear();
            self.actions.push_back(Action::StopSpeaking);
        }
    }

    fn on_speech_paused(&mut self, now: Instant, audio: A, voice_ended: Instant) {
        if !self.config.speculative_stt
            || !self.caller_speaking
            || self.ended_early
            || self.ignoring_utterance
            || self.closing.is_some()
        {
            return;
        }
        self.pause = Some(Pause {
            audio: Some(audio),
            voice_ended: voice_ended.min(now),
        });
        self.maybe_speculate(now);
    }

    /// Starts the speculative transcription of the paused utterance once the pause is
    /// `speculation_delay` long, no other transcription runs (one at a time: a running
    /// one keeps the worker; this is retried when it ends) and no cancelled one is
    /// still stopping.
    fn maybe_speculate(&mut self, now: Instant) {
        let Some(p) = self.pause.as_ref().filter(|p| p.audio.is_some()) else {
            return;
        };
        if self.stt.is_some() || now < p.voice_ended + self.config.speculation_delay {
            return;
        }
        let voice_ended = p.voice_ended;
        self.draining.retain(|(_, since)| now < *since + STALE_JOB_WAIT);
        if !self.draining.is_empty() {
            return;
        }
        let Some(audio) = self.pause.as_mut().and_then(|p| p.audio.take()) else {
            return;
        };
        self.summary.speculations += 1;
        let turn = self.new_turn();
        self.stt = Some(SttJob {
            turn,
            superseded: false,
            voice_ended,
            endpoint: Duration::ZERO,
            started: now,
            speculative: true,
            was_speculative: true,
            endpointed: now,
            early: None,
            finished: None,
            fallback: None,
            early_finished: false,
            early_end: false,
        });
        self.actions.push_back(Action::Transcribe { turn, audio });
    }

    /// Ends the turn now when the speculative transcript reads as a finished
    /// utterance and the caller has been silent for `early_end_min_silence`.
    fn maybe_end_early(&mut self, now: Instant) {
        if !self.config.early_end_of_turn || !self.caller_speaking || self.closing.is_some() {
            return;
        }
        let Some(p) = self.pause.as_ref().filter(|p| p.audio.is_none()) else {
            return;
        };
        let voice_ended = p.voice_ended;
        if now < voice_ended + self.config.early_end_min_silence
            || !self
                .stt
                .as_ref()
                .is_some_and(|j| j.speculative && j.early_finished)
        {
            return;
        }
        self.ended_early = true;
        self.summary.early_ends += 1;
        self.actions.push_back(Action::EndUtterance);
        if let Some(job) = self.stt.as_mut() {
            job.early_end = true;
        }
        self.utterance_over(now);
        self.confirm_speculation(now, voice_ended, None);
    }

    /// The caller stopped speaking (endpoint or early end of turn).
    fn utterance_over(&mut self, now: Instant) {
        self.caller_speaking = false;
        self.silence_since = now;
        self.pause = None;
    }

    /// Cancels a transcription; while it still runs, it holds back speculation until
    /// it stops.
    fn cancel_stt(&mut self, now: Instant, job: &SttJob<A>) {
        self.actions
            .push_back(Action::CancelTranscription { turn: job.turn });
        if job.finished.is_none() {
            self.summary.transcriptions_cancelled += 1;
            self.draining.push((job.turn, now));
        }
    }

    /// Whether `turn` was a cancelled job (now stopped: forgotten).
    fn drained(&mut self, turn: TurnId) -> bool {
        let before = self.draining.len();
        self.draining.retain(|(t, _)| *t != turn);
        self.draining.len() != before
    }

    fn on_speech_resumed(&mut self, now: Instant) {
        if self.ended_early {
            // The turn was already ended: this is a new utterance.
            self.on_speech_started(now);
            return;
        }
        self.pause = None;
        if let Some(job) = self.stt.take_if(|j| j.speculative) {
            self.summary.speculations_dropped += 1;
            self.cancel_stt(now, &job);
        }
    }

    /// The utterance ended without more speech: a speculative job transcribes exactly
    /// it, so its result is used (now if it is there, else when it comes) instead of a
    /// new job. `fallback` is transcribed if that job fails.
    fn confirm_speculation(&mut self, now: Instant, voice_ended: Instant, fallback: Option<A>) {
        let Some(job) = self.stt.as_mut().filter(|j| j.speculative) else {
            return;
        };
        job.speculative = false;
        job.voice_ended = voice_ended.min(now);
        job.endpoint = now.saturating_duration_since(job.voice_ended);
        job.endpointed = now;
        job.fallback = fallback;
        if let Some(result) = job.early.take() {
            let turn = job.turn;
            self.on_transcript(now, turn, result);
        }
    }

    fn on_speech_ended(&mut self, now: Instant, audio: A, voice_ended: Instant) {
        if std::mem::take(&mut self.ended_early) {
            // Already ended early from the transcript.
            return;
        }
        self.utterance_over(now);
        if self.closing.is_some() || std::mem::take(&mut self.ignoring_utterance) {
            self.on_speech_resumed(now);
            return;
        }
        self.finish_interrupted(now, None);
        if self.stt.as_ref().is_some_and(|j| j.speculative) {
            self.confirm_speculation(now, voice_ended, Some(audio));
            return;
        }
        let pending = Pending {
            audio,
            voice_ended: voice_ended.min(now),
            endpointed: now,
        };
        if self.stt.is_some() {
            if self.waiting.replace(pending).is_some() {
                self.summary.utterances_dropped += 1;
            }
        } else {
            self.start_stt(now, pending);
        }
    }

    fn start_stt(&mut self, now: Instant, p: Pending<A>) {
        let turn = self.new_turn();
        self.stt = Some(SttJob {
            turn,
            superseded: false,
            voice_ended: p.voice_ended,
            endpoint: p.endpointed.saturating_duration_since(p.voice_ended),
            started: now,
            speculative: false,
            was_speculative: false,
            endpointed: now,
            early: None,
            finished: None,
            fallback: None,
            early_finished: false,
            early_end: false,
        });
        self.actions
            .push_back(Action::Transcribe { turn, audio: p.audio });
    }

    fn on_transcript(&mut self, now: Instant, turn: TurnId, result: Option<(String, f32)>) {
        if let Some(job) = self.stt.as_mut().filter(|j| j.turn == turn && j.speculative) {
            // Not answered before the endpoint (or an early end of turn) confirms
            // that the utterance ended.
            job.early_finished = result.as_ref().is_some_and(|(text, nsp)| {
                *nsp <= self.config.max_no_speech_prob
                    && reads_finished(text, self.config.early_end_min_words)
            });
            job.early = Some(result);
            job.finished = Some(now);
            self.maybe_end_early(now);
            return;
        }
        let Some(mut job) = self.stt.take_if(|j| j.turn == turn) else {
            return;
        };
        if result.is_none()
            && let Some(audio) = job.fallback.take()
        {
            // The speculative job failed: transcribe the utterance the usual way.
            let endpointed = job.endpointed;
            self.start_stt(
                now,
                Pending {
                    audio,
                    voice_ended: job.voice_ended,
                    endpointed,
                },
            );
            if let Some(j) = self.stt.as_mut() {
                j.superseded = job.superseded;
            }
            return;
        }
        let failed = result.is_none();
        if failed {
            self.record_stt_failure(now, &job);
        }
        let text = match result {
            Some((text, nsp)) => {
                let text = text.trim().to_string();
                if nsp > self.config.max_no_speech_prob || word_count(&text) < self.config.min_words {
                    tracing::debug!(turn = turn.0, no_speech_prob = nsp, %text, "noise guard: no reply");
                    self.summary.noise_ignored += 1;
                    String::new()
                } else {
                    text
                }
            }
            None => String::new(),
        };
        let full = join(&self.carry, &text);
        if job.superseded || self.waiting.is_some() || self.caller_speaking {
            self.carry = full;
            if let Some(p) = self.waiting.take() {
                self.start_stt(now, p);
            }
            return;
        }
        self.carry.clear();
        if full.is_empty() {
            let phrase = self.config.stt_failed_phrase.clone();
            if failed && !phrase.trim().is_empty() {
                self.speak(now, phrase, SpeechKind::Solo(TurnKind::Reprompt));
            }
            return;
        }
        let mut timings = TurnTimings {
            endpoint: Some(job.endpoint),
            stt: Some(job.finished.unwrap_or(now).saturating_duration_since(job.started)),
            stt_after_endpoint: Some(now.saturating_duration_since(job.endpointed)),
            speculative_stt: job.was_speculative,
            early_end: job.early_end,
            ..TurnTimings::default()
        };
        if self
            .config
            .caller_goodbye_phrases
            .contains(&normalize_words(&full))
        {
            let goodbye = self.config.goodbye.clone();
            let id = if goodbye.trim().is_empty() {
                None
            } else {
                Some(self.speak(now, goodbye.clone(), SpeechKind::Solo(TurnKind::Goodbye)))
            };
            timings.voice_to_voice = None;
            self.record(
                TurnKind::Conversation,
                job.voice_ended,
                Some(full),
                String::new(),
                false,
                timings,
            );
            self.closing = Some(Closing {
                reason: EndReason::CallerGoodbye,
                deadline: now + self.config.closing_grace,
                goodbye: id,
            });
            self.after_playback(now);
            return;
        }
        self.summary.replies += 1;
        self.reply = Some(ReplyTurn {
            turn,
            user: full.clone(),
            at: job.voice_ended,
            voice_ended: job.voice_ended,
            requested: now,
            timings,
            spoken: Vec::new(),
            llm_done: false,
            cancelled: false,
            any_speech: false,
        });
        self.actions.push_back(Action::Reply {
            turn,
            user_text: full,
        });
    }

    /// Records a failed (or timed-out) transcription as its own turn, with the error
    /// and the timings up to the failure.
    fn record_stt_failure(&mut self, now: Instant, job: &SttJob<A>) {
        let error = self
            .stt_error
            .take()
            .unwrap_or_else(|| "transcription failed".into());
        let timings = TurnTimings {
            endpoint: Some(job.endpoint),
            stt: Some(now.saturating_duration_since(job.started)),
            stt_after_endpoint: Some(now.saturating_duration_since(job.endpointed)),
            speculative_stt: job.was_speculative,
            ..TurnTimings::default()
        };
        self.record(
            TurnKind::TranscriptionFailed,
            job.voice_ended,
            None,
            String::new(),
            false,
            timings,
        );
        if let Some(Action::TurnFinished(r)) = self.actions.back_mut() {
            r.error = Some(error);
        }
    }

    fn on_sentence(&mut self, now: Instant, turn: TurnId, text: String) {
        let Some(r) = self.reply.as_mut().filter(|r| r.turn == turn && !r.cancelled) else {
            return;
        };
        let text = text.trim().to_string();
        if text.is_empty() {
            return;
        }
        if r.timings.llm_first_sentence.is_none() {
            r.timings.llm_first_sentence = Some(now.saturating_duration_since(r.requested));
        }
        r.any_speech = true;
        self.speak(now, text, SpeechKind::Reply(turn));
    }

    fn on_llm_failed(&mut self, now: Instant, turn: TurnId, error: &str) {
        let Some(r) = self.reply.as_mut().filter(|r| r.turn == turn && !r.cancelled) else {
            return;
        };
        tracing::warn!(turn = turn.0, %error, "LLM reply failed");
        r.llm_done = true;
        if !r.any_speech {
            r.any_speech = true;
            let phrase = self.config.error_phrase.clone();
            if !phrase.trim().is_empty() {
                self.speak(now, phrase, SpeechKind::Reply(turn));
            }
        }
        self.maybe_finish_reply(now);
    }

    fn on_speech_audio(&mut self, now: Instant, speech: SpeechId, duration: Duration) {
        let Some(s) = self.queue.iter_mut().find(|s| s.id == speech) else {
            return;
        };
        s.audio = Some(duration);
        if let SpeechKind::Reply(turn) = s.kind
            && let Some(r) = self.reply.as_mut().filter(|r| r.turn == turn)
            && r.timings.tts_first_audio.is_none()
        {
            r.timings.tts_first_audio = Some(now.saturating_duration_since(s.requested_at));
            r.timings.voice_to_voice = Some(now.saturating_duration_since(r.voice_ended));
        }
    }

    fn on_playback_finished(&mut self, now: Instant, speech: SpeechId) {
        let Some(pos) = self.queue.iter().position(|s| s.id == speech) else {
            return;
        };
        let Some(s) = self.queue.remove(pos) else {
            return;
        };
        match s.kind {
            SpeechKind::Reply(turn) => {
                if let Some(r) = self.reply.as_mut().filter(|r| r.turn == turn) {
                    r.spoken.push(s.text);
                }
            }
            SpeechKind::Solo(kind) => {
                if self.closing.as_ref().and_then(|c| c.goodbye) == Some(s.id) {
                    self.summary.goodbye_completed = true;
                }
                self.record(kind, s.requested_at, None, s.text, false, TurnTimings::default());
            }
        }
        self.after_playback(now);
    }

    /// After speech left the queue: finish the reply, reset the silence timer, hang up
    /// when closing and nothing is left to say.
    fn after_playback(&mut self, now: Instant) {
        self.maybe_finish_reply(now);
        if self.queue.is_empty() {
            if self.closing.is_some() {
                self.finish_call(now);
            } else if !self.prompted {
                self.silence_since = now;
            }
        }
    }

    fn maybe_finish_reply(&mut self, now: Instant) {
        let Some(r) = self.reply.as_ref() else {
            return;
        };
        let turn = r.turn;
        if !r.llm_done || self.queue.iter().any(|s| s.kind == SpeechKind::Reply(turn)) {
            return;
        }
        let Some(r) = self.reply.take() else {
            return;
        };
        let interrupted = r.cancelled;
        self.record(
            TurnKind::Conversation,
            r.at,
            Some(r.user),
            r.spoken.join(" "),
            interrupted,
            r.timings,
        );
        if self.queue.is_empty() && self.closing.is_none() {
            self.silence_since = now;
        }
    }

    fn on_playback_stopped(&mut self, now: Instant, speech: Option<SpeechId>, played: Duration) {
        let timings = TurnTimings {
            barge_in_stop: self
                .solo_onset
                .take()
                .map(|onset| now.saturating_duration_since(onset)),
            ..TurnTimings::default()
        };
        for s in std::mem::take(&mut self.stopped_solo) {
            let heard = if Some(s.id) == speech {
                cut_words(&s.text, played, s.audio)
            } else {
                continue;
            };
            if let SpeechKind::Solo(kind) = s.kind
                && !heard.is_empty()
            {
                self.record(kind, s.requested_at, None, heard, true, timings);
            }
        }
        self.finish_interrupted(now, Some((speech, played)));
        if self.hanging_up.take().is_some() {
            self.end(now);
        }
    }

    /// Records the barge-in-interrupted turn: the sentences played in full plus the
    /// share of the playing one that was heard (when `stopped` says how much).
    fn finish_interrupted(&mut self, now: Instant, stopped: Option<(Option<SpeechId>, Duration)>) {
        let Some((mut r, playing, onset)) = self.interrupted.take() else {
            return;
        };
        if let (Some((Some(id), played)), Some(s)) = (stopped, playing.as_ref())
            && s.id == id
        {
            let heard = cut_words(&s.text, played, s.audio);
            if !heard.is_empty() {
                r.spoken.push(heard);
            }
        }
        if stopped.is_some() {
            r.timings.barge_in_stop = Some(now.saturating_duration_since(onset));
        }
        self.record(
            TurnKind::Conversation,
            r.at,
            Some(r.user),
            r.spoken.join(" "),
            true,
            r.timings,
        );
    }

    fn on_dtmf(&mut self, now: Instant, digit: char) {
        if self.closing.is_some() {
            return;
        }
        self.summary.dtmf_digits += 1;
        let digit = digit.to_ascii_uppercase();
        tracing::info!(%digit, "DTMF digit");
        let Some(action) = self.config.dtmf.get(&digit).cloned() else {
            tracing::debug!(%digit, "DTMF digit without an action");
            return;
        };
        self.silence_since = now;
        self.prompted = false;
        self.cancel_work(now);
        match action.then {
            DtmfThen::Hangup => {
                self.close(now, EndReason::Dtmf, action.say, None);
                // Its phrase (the call's goodbye) is recorded as the digit's turn.
                let id = self.closing.as_ref().and_then(|c| c.goodbye);
                if let Some(s) = self.queue.iter_mut().find(|s| Some(s.id) == id) {
                    s.kind = SpeechKind::Solo(TurnKind::Dtmf(digit));
                }
            }
            DtmfThen::Continue => {
                if !action.say.trim().is_empty() {
                    self.speak(now, action.say, SpeechKind::Solo(TurnKind::Dtmf(digit)));
                }
            }
        }
    }

    /// Cancels the transcription and reply in progress and stops speaking.
    fn cancel_work(&mut self, now: Instant) {
        self.pause = None;
        if let Some(job) = self.stt.take() {
            self.cancel_stt(now, &job);
        }
        if self.waiting.take().is_some() {
            self.summary.utterances_dropped += 1;
        }
        self.carry.clear();
        if let Some(mut r) = self.reply.take() {
            if !r.llm_done {
                self.actions.push_back(Action::CancelReply { turn: r.turn });
            }
            r.cancelled = true;
            let playing = self.queue.iter().find(|s| s.audio.is_some()).cloned();
            self.interrupted = Some((r, playing, now));
        }
        if !self.queue.is_empty() {
            self.stopped_solo = self
                .queue
                .iter()
                .filter(|s| matches!(s.kind, SpeechKind::Solo(_)))
                .cloned()
                .collect();
        }
        self.stop_speaking();
    }

    fn on_caller_hung_up(&mut self, now: Instant) {
        self.pause = None;
        if let Some(job) = self.stt.take() {
            self.cancel_stt(now, &job);
        }
        self.waiting = None;
        if let Some(r) = self.reply.take() {
            if !r.llm_done {
                self.actions.push_back(Action::CancelReply { turn: r.turn });
            }
            let cut =
                r.cancelled || !r.llm_done || self.queue.iter().any(|s| s.kind == SpeechKind::Reply(r.turn));
            let bot = r.spoken.join(" ");
            self.record(TurnKind::Conversation, r.at, Some(r.user), bot, cut, r.timings);
        }
        self.finish_interrupted(now, None);
        self.summary.reason = self
            .closing
            .as_ref()
            .map_or(EndReason::CallerHungUp, |c| c.reason);
        if !self.queue.is_empty() {
            let heard: Vec<Speech> = self
                .queue
                .iter()
                .filter(|s| matches!(s.kind, SpeechKind::Solo(_)) && s.audio.is_some())
                .cloned()
                .collect();
            self.queue.clear();
            self.actions.push_back(Action::StopSpeaking);
            if !heard.is_empty() {
                // The greeting (or prompt...) was playing: record what was heard once
                // the driver says how much was played.
                self.stopped_solo = heard;
                self.solo_onset = None;
                self.hanging_up = Some(now + HANG_UP_STOP_WAIT);
                return;
            }
        }
        self.end(now);
    }

    /// Starts closing: cancel pending work, keep what is already being spoken, say
    /// `goodbye`, hang up when playback is done (or at the grace deadline).
    fn close(&mut self, now: Instant, reason: EndReason, goodbye: String, grace: Option<Duration>) {
        self.pause = None;
        if let Some(job) = self.stt.take() {
            self.cancel_stt(now, &job);
        }
        if self.waiting.take().is_some() {
            self.summary.utterances_dropped += 1;
        }
        self.finish_interrupted(now, None);
        if let Some(r) = self.reply.as_mut()
            && !r.llm_done
        {
            self.actions.push_back(Action::CancelReply { turn: r.turn });
            r.llm_done = true;
            r.cancelled = true;
        }
        let grace = grace.unwrap_or(self.config.closing_grace);
        let id = if goodbye.trim().is_empty() {
            None
        } else {
            Some(self.speak(now, goodbye, SpeechKind::Solo(TurnKind::Goodbye)))
        };
        self.closing = Some(Closing {
            reason,
            deadline: now + grace,
            goodbye: id,
        });
        self.maybe_finish_reply(now);
        if self.queue.is_empty() {
            self.finish_call(now);
        }
    }

    /// Hangs up (the bot's side) and ends the call.
    fn finish_call(&mut self, now: Instant) {
        if let Some(r) = self.reply.take() {
            self.record(
                TurnKind::Conversation,
                r.at,
                Some(r.user),
                r.spoken.join(" "),
                true,
                r.timings,
            );
        }
        self.actions.push_back(Action::HangUp);
        if let Some(c) = &self.closing {
            self.summary.reason = c.reason;
        }
        self.end(now);
    }

    fn end(&mut self, now: Instant) {
        self.summary.duration = now.saturating_duration_since(self.answered);
        self.ended = true;
        self.actions.push_back(Action::CallEnded(self.summary.clone()));
    }
}

/// Joins two texts with a space, skipping empty ones.
fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a} {b}"),
    }
}

/// The words of `text` heard in `played` out of `total`, proportionally.
fn cut_words(text: &str, played: Duration, total: Option<Duration>) -> String {
    let Some(total) = total.filter(|t| !t.is_zero()) else {
        return String::new();
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let share = (played.as_secs_f64() / total.as_secs_f64()).clamp(0.0, 1.0);
    let n = ((words.len() as f64) * share).round() as usize;
    words.get(..n).map(|w| w.join(" ")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    type D = Dialogue<&'static str>;
    type Act = Action<&'static str>;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn config() -> DialogueConfig {
        let mut dtmf = BTreeMap::new();
        dtmf.insert(
            '0',
            DtmfAction {
                say: "Transferring you. Goodbye.".into(),
                then: DtmfThen::Hangup,
            },
        );
        dtmf.insert(
            '*',
            DtmfAction {
                say: "Ask me anything.".into(),
                then: DtmfThen::Continue,
            },
        );
        DialogueConfig {
            greeting: "Hello there.".into(),
            dtmf,
            // The early end of turn has its own tests (`early_config`).
            early_end_of_turn: false,
            ..DialogueConfig::default()
        }
    }

    fn drain(d: &mut D) -> Vec<Act> {
        std::iter::from_fn(|| d.poll_action()).collect()
    }

    fn speak_id(actions: &[Act]) -> SpeechId {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Speak { speech, .. } => Some(*speech),
                _ => None,
            })
            .expect("a Speak action")
    }

    fn spoken_texts(actions: &[Act]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Speak { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    fn records(actions: &[Act]) -> Vec<TurnRecord> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::TurnFinished(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    fn summary(actions: &[Act]) -> CallSummary {
        actions
            .iter()
            .find_map(|a| match a {
                Action::CallEnded(s) => Some(s.clone()),
                _ => None,
            })
            .expect("CallEnded")
    }

    /// The LLM hands out `text` for `turn` at `at`: the actions that follow (its
    /// [`Action::Speak`] among them).
    fn sentence(d: &mut D, at: Instant, turn: TurnId, text: &str) -> Vec<Act> {
        d.handle(
            at,
            Input::LlmSentence {
                turn,
                text: text.into(),
            },
        );
        drain(d)
    }

    /// The audio of `speech`, `len` long, is queued for playback at `at`.
    fn queued(d: &mut D, at: Instant, speech: SpeechId, len: Duration) {
        d.handle(
            at,
            Input::SpeechAudio {
                speech,
                duration: len,
            },
        );
    }

    /// Plays a speech fully: audio queued at `at`, finished after `len`.
    fn play(d: &mut D, at: Instant, id: SpeechId, len: Duration) -> Vec<Act> {
        queued(d, at, id, len);
        d.handle(at + len, Input::PlaybackFinished { speech: id });
        drain(d)
    }

    /// The LLM answers `turn` with `text` alone at `at`; its audio, `len` long, is queued
    /// 20 ms later and played fully: the actions after the playback.
    fn answer(d: &mut D, at: Instant, turn: TurnId, text: &str, len: Duration) -> Vec<Act> {
        let speech = speak_id(&sentence(d, at, turn, text));
        d.handle(at, Input::LlmDone { turn });
        play(d, at + ms(20), speech, len)
    }

    /// A call past its greeting at `t0 + 1 s`.
    fn greeted() -> (D, Instant) {
        let (mut d, t0) = call(config());
        let a = drain(&mut d);
        assert_eq!(spoken_texts(&a), vec!["Hello there.".to_string()]);
        let r = only_record(&play(&mut d, t0, speak_id(&a), ms(1000)));
        assert_eq!(r.kind, TurnKind::Greeting);
        assert_eq!(r.bot, "Hello there.");
        (d, t0)
    }

    /// The caller speaks from `at` for 1 s; the endpoint fires 300 ms later.
    /// Returns the transcription's turn.
    fn utterance(d: &mut D, at: Instant, audio: &'static str) -> TurnId {
        speak_then(
            d,
            at,
            ms(300),
            |voice_ended| Input::SpeechEnded { audio, voice_ended },
            audio,
        )
    }

    /// The caller speaks from `at` for 1 s; `after` the voice stopped, the VAD reports
    /// `input(voice_ended)`, which must ask for a transcription of `audio`: returns its turn.
    fn speak_then(
        d: &mut D,
        at: Instant,
        after: Duration,
        input: impl FnOnce(Instant) -> Input<&'static str>,
        audio: &'static str,
    ) -> TurnId {
        d.handle(at, Input::SpeechStarted);
        assert!(drain(d).is_empty());
        let end = at + ms(1000);
        d.handle(end + after, input(end));
        match drain(d).as_slice() {
            [Action::Transcribe { turn, audio: a }] => {
                assert_eq!(*a, audio);
                *turn
            }
            other => panic!("expected Transcribe, got {other:?}"),
        }
    }

    fn transcript(d: &mut D, at: Instant, turn: TurnId, text: &str) -> Vec<Act> {
        transcript_with(d, at, turn, text, 0.01)
    }

    /// The transcriber hands out `text` for `turn` at `at`, with this no-speech probability.
    fn transcript_with(d: &mut D, at: Instant, turn: TurnId, text: &str, no_speech_prob: f32) -> Vec<Act> {
        d.handle(
            at,
            Input::Transcript {
                turn,
                text: text.into(),
                no_speech_prob,
            },
        );
        drain(d)
    }

    /// The transcription of `turn` fails with `error` at `at`.
    fn transcript_failed(d: &mut D, at: Instant, turn: TurnId, error: &str) -> Vec<Act> {
        d.handle(
            at,
            Input::TranscriptFailed {
                turn,
                error: error.into(),
            },
        );
        drain(d)
    }

    /// The driver reports at `at` that the playback of `speech` stopped after `played`.
    fn stopped(d: &mut D, at: Instant, speech: SpeechId, played: Duration) -> Vec<Act> {
        d.handle(
            at,
            Input::PlaybackStopped {
                speech: Some(speech),
                played,
            },
        );
        drain(d)
    }

    /// The bot is shut down at `at`, saying `phrase` within `grace`.
    fn shutdown(d: &mut D, at: Instant, phrase: &str, grace: Duration) -> Vec<Act> {
        d.handle(
            at,
            Input::Shutdown {
                phrase: phrase.into(),
                grace,
            },
        );
        drain(d)
    }

    /// The action asking for a reply of `turn` to `user_text`.
    fn reply(turn: TurnId, user_text: &str) -> Act {
        Action::Reply {
            turn,
            user_text: user_text.into(),
        }
    }

    /// The one turn record among `actions`.
    fn only_record(actions: &[Act]) -> TurnRecord {
        match records(actions).as_slice() {
            [r] => r.clone(),
            other => panic!("expected one turn record, got {other:?} in {actions:?}"),
        }
    }

    /// A call answered now with `config`, its first actions not drained yet.
    fn call(config: DialogueConfig) -> (D, Instant) {
        let t0 = Instant::now();
        (D::new(config, t0), t0)
    }

    /// A call answered now with `config` whose greeting, 1 s of audio, is queued `after`
    /// the answer: (dialogue, answer time, the greeting's speech).
    fn greeting_queued(config: DialogueConfig, after: Duration) -> (D, Instant, SpeechId) {
        let (mut d, t0) = call(config);
        let greeting = speak_id(&drain(&mut d));
        queued(&mut d, t0 + after, greeting, ms(1000));
        (d, t0, greeting)
    }

    /// A call past its greeting whose caller asked `question`: voice from `t0 + 2 s` to
    /// `t0 + 3 s`, transcript at `t0 + 3.5 s`. Returns (dialogue, t0, the reply's turn).
    fn asked(question: &str) -> (D, Instant, TurnId) {
        let (mut d, t0) = greeted();
        let turn = utterance(&mut d, t0 + ms(2000), "a");
        let a = transcript(&mut d, t0 + ms(3500), turn, question);
        assert_eq!(a, vec![reply(turn, question)]);
        (d, t0, turn)
    }

    #[test]
    fn greeting_then_a_full_turn_with_stage_timings() {
        let (mut d, t0) = greeted();
        let t = t0 + ms(2000);
        let turn = utterance(&mut d, t, "audio-1");
        // voice ended at t+1000, endpoint at t+1300, transcript at t+1500
        let a = transcript(&mut d, t + ms(1500), turn, " What time is it? ");
        assert_eq!(a, vec![reply(turn, "What time is it?")]);
        d.handle(t + ms(1600), Input::LlmToken { turn });
        d.handle(t + ms(1650), Input::LlmToken { turn });
        let a = sentence(&mut d, t + ms(1700), turn, "It is noon.");
        assert_eq!(spoken_texts(&a), vec!["It is noon.".to_string()]);
        let s1 = speak_id(&a);
        queued(&mut d, t + ms(1720), s1, ms(800));
        let s2 = speak_id(&sentence(&mut d, t + ms(1800), turn, "Anything else?"));
        d.handle(t + ms(1850), Input::LlmDone { turn });
        queued(&mut d, t + ms(1900), s2, ms(700));
        d.handle(t + ms(2520), Input::PlaybackFinished { speech: s1 });
        assert!(
            drain(&mut d).is_empty(),
            "turn not finished before its last sentence"
        );
        d.handle(t + ms(3220), Input::PlaybackFinished { speech: s2 });
        let r = only_record(&drain(&mut d));
        assert_eq!(r.index, 2);
        assert_eq!(r.kind, TurnKind::Conversation);
        assert_eq!(r.user.as_deref(), Some("What time is it?"));
        assert_eq!(r.bot, "It is noon. Anything else?");
        assert!(!r.interrupted);
        assert_eq!(r.at, ms(3000));
        let tm = r.timings;
        assert_eq!(tm.endpoint, Some(ms(300)));
        assert_eq!(tm.stt, Some(ms(200)));
        assert_eq!(tm.llm_first_token, Some(ms(100)));
        assert_eq!(tm.llm_first_sentence, Some(ms(200)));
        assert_eq!(tm.tts_first_audio, Some(ms(20)));
        assert_eq!(tm.voice_to_voice, Some(ms(720)));
        assert_eq!(tm.barge_in_stop, None);
    }

    /// The caller speaks from `at` for 1 s; the voice stops at `at + 1 s` and the VAD
    /// reports the pause 50 ms later: returns the speculative transcription's turn.
    fn paused(d: &mut D, at: Instant, audio: &'static str) -> TurnId {
        speak_then(
            d,
            at,
            ms(50),
            |voice_ended| Input::SpeechPaused { audio, voice_ended },
            audio,
        )
    }

    /// The VAD reports at `at` the end of the utterance `audio`, whose voice stopped at
    /// `voice_ended`.
    fn ended(d: &mut D, at: Instant, audio: &'static str, voice_ended: Instant) -> Vec<Act> {
        d.handle(at, Input::SpeechEnded { audio, voice_ended });
        drain(d)
    }

    /// The VAD reports at `at` a pause in the utterance `audio` so far, whose voice
    /// stopped at `voice_ended`.
    fn paused_at(d: &mut D, at: Instant, audio: &'static str, voice_ended: Instant) -> Vec<Act> {
        d.handle(at, Input::SpeechPaused { audio, voice_ended });
        drain(d)
    }

    #[test]
    fn speculative_transcript_is_answered_at_the_endpoint_without_a_new_job() {
        let (mut d, t0) = greeted();
        let t = t0 + ms(2000);
        let turn = paused(&mut d, t, "u1");
        // the result arrives during the hangover: no reply yet
        assert!(transcript(&mut d, t + ms(1250), turn, "What time is it?").is_empty());
        assert_eq!(d.poll_timeout(), Some(t0 + ms(600_000)), "not idle");
        // endpoint: the reply starts at once, no second transcription
        let a = ended(&mut d, t + ms(1600), "u1+silence", t + ms(1000));
        assert_eq!(a, vec![reply(turn, "What time is it?")]);
        let tm = only_record(&answer(&mut d, t + ms(1700), turn, "Noon.", ms(500))).timings;
        assert!(tm.speculative_stt);
        assert_eq!(tm.endpoint, Some(ms(600)));
        assert_eq!(tm.stt, Some(ms(200)));
        assert_eq!(tm.stt_after_endpoint, Some(Duration::ZERO));
        assert_eq!(tm.voice_to_voice, Some(ms(720)));
        assert_eq!(d.summary.speculations, 1);
        assert_eq!(d.summary.speculations_dropped, 0);
        assert_eq!(d.summary.replies, 1);
    }

    #[test]
    fn speculative_transcript_still_running_at_the_endpoint_is_awaited() {
        let (mut d, t0) = greeted();
        let t = t0 + ms(2000);
        let turn = paused(&mut d, t, "u1");
        assert!(
            ended(&mut d, t + ms(1600), "u1", t + ms(1000)).is_empty(),
            "waits for the job"
        );
        let a = transcript(&mut d, t + ms(1700), turn, "Hello");
        assert!(matches!(a.as_slice(), [Action::Reply { turn: r, .. }] if *r == turn));
        d.handle(t + ms(1800), Input::LlmDone { turn });
        let r = records(&drain(&mut d));
        let tm = r[0].timings;
        assert!(tm.speculative_stt);
        assert_eq!(tm.stt, Some(ms(650)));
        assert_eq!(tm.stt_after_endpoint, Some(ms(100)));
    }

    #[test]
    fn speculation_is_dropped_when_the_caller_goes_on_and_only_one_reply_comes() {
        let (mut d, t0) = greeted();
        let t = t0 + ms(2000);
        let turn1 = paused(&mut d, t, "part1");
        // the caller goes on within the hangover
        d.handle(t + ms(1300), Input::SpeechResumed);
        assert_eq!(drain(&mut d), vec![Action::CancelTranscription { turn: turn1 }]);
        // a late result of the dropped job is ignored
        assert!(transcript(&mut d, t + ms(1350), turn1, "I would like").is_empty());
        // pause again, then a failed job is also dropped on resume
        let turn2 = transcribes(
            &paused_at(&mut d, t + ms(2050), "part1+2", t + ms(2000)),
            "part1+2",
        );
        assert!(transcript(&mut d, t + ms(2200), turn2, "I would like a").is_empty());
        d.handle(t + ms(2300), Input::SpeechResumed);
        assert_eq!(drain(&mut d), vec![Action::CancelTranscription { turn: turn2 }]);
        let turn3 = transcribes(&paused_at(&mut d, t + ms(3050), "all", t + ms(3000)), "all");
        assert!(transcript(&mut d, t + ms(3300), turn3, "I would like a pizza.").is_empty());
        let a = ended(&mut d, t + ms(3600), "all", t + ms(3000));
        assert_eq!(a, vec![reply(turn3, "I would like a pizza.")]);
        // nothing else comes: no second transcription, no second reply
        d.handle(t + ms(3700), Input::LlmDone { turn: turn3 });
        let a = drain(&mut d);
        assert!(
            !a.iter()
                .any(|x| matches!(x, Action::Reply { .. } | Action::Transcribe { .. }))
        );
        assert_eq!(d.summary.speculations, 3);
        assert_eq!(d.summary.speculations_dropped, 2);
        assert_eq!(d.summary.replies, 1);
    }

    #[test]
    fn failed_speculative_transcription_is_redone_on_the_final_utterance() {
        let (mut d, t0) = greeted();
        let t = t0 + ms(2000);
        let turn = paused(&mut d, t, "u1");
        assert!(transcript_failed(&mut d, t + ms(1200), turn, "failed to encode").is_empty());
        let a = ended(&mut d, t + ms(1600), "u1-final", t + ms(1000));
        let turn2 = transcribes(&a, "u1-final");
        assert_ne!(turn2, turn);
        let a = transcript(&mut d, t + ms(1900), turn2, "Hello");
        assert!(matches!(a.as_slice(), [Action::Reply { .. }]));
        // the same when the failure comes after the endpoint
        d.handle(t + ms(2000), Input::LlmDone { turn: turn2 });
        drain(&mut d);
        let t = t + ms(5000);
        let turn = paused(&mut d, t, "u2");
        assert!(ended(&mut d, t + ms(1600), "u2-final", t + ms(1000)).is_empty());
        transcribes(&transcript_failed(&mut d, t + ms(1700), turn, "x"), "u2-final");
    }

    #[test]
    fn no_speculation_when_off_and_none_until_another_transcription_ends() {
        let (mut d, t0) = call(DialogueConfig {
            greeting: String::new(),
            speculative_stt: false,
            ..config()
        });
        d.handle(t0, Input::SpeechStarted);
        assert!(
            paused_at(&mut d, t0 + ms(1050), "a", t0 + ms(1000)).is_empty(),
            "off"
        );
        d.handle(t0 + ms(1100), Input::SpeechResumed);
        assert!(drain(&mut d).is_empty());
        let a = ended(&mut d, t0 + ms(1600), "a", t0 + ms(1000));
        assert!(matches!(a.as_slice(), [Action::Transcribe { audio: "a", .. }]));

        let (mut d, t0) = greeted();
        let turn1 = utterance(&mut d, t0 + ms(2000), "u1");
        // a second utterance pauses while the first is being transcribed
        d.handle(t0 + ms(3400), Input::SpeechStarted);
        assert!(
            paused_at(&mut d, t0 + ms(3900), "u2", t0 + ms(3850)).is_empty(),
            "one transcription at a time"
        );
        // the first one ends during the pause: the speculation starts then, and the
        // first text waits for the second (the caller is still in their turn)
        let turn2 = transcribes(&transcript(&mut d, t0 + ms(4000), turn1, "one"), "u2");
        assert!(ended(&mut d, t0 + ms(4450), "u2", t0 + ms(3850)).is_empty());
        let a = transcript(&mut d, t0 + ms(4500), turn2, "two");
        assert!(matches!(a.as_slice(), [Action::Reply { user_text, .. }] if user_text == "one two"));
        assert_eq!(d.summary.speculations, 1);
    }

    fn early_config() -> DialogueConfig {
        DialogueConfig {
            greeting: String::new(),
            early_end_of_turn: true,
            ..config()
        }
    }

    /// The caller's voice stopped at `voice_ended`; the VAD reports the pause 40 ms
    /// later, with the utterance so far.
    fn pause(d: &mut D, voice_ended: Instant, audio: &'static str) -> Vec<Act> {
        paused_at(d, voice_ended + ms(40), audio, voice_ended)
    }

    /// The turn of `actions`, which must be just the transcription of `audio`.
    fn transcribes(actions: &[Act], audio: &str) -> TurnId {
        match actions {
            [Action::Transcribe { turn, audio: a }] if *a == audio => *turn,
            other => panic!("expected a Transcribe of {audio:?}, got {other:?}"),
        }
    }

    /// A call (no greeting) whose caller spoke from `t0` and stopped at `t0 + 1 s`;
    /// the pause starts the speculative job: (dialogue, voice end, the job's turn).
    fn early_pause(config: DialogueConfig) -> (D, Instant, TurnId) {
        let (mut d, t0) = call(config);
        d.handle(t0, Input::SpeechStarted);
        let end = t0 + ms(1000);
        let turn = transcribes(&pause(&mut d, end, "u"), "u");
        (d, end, turn)
    }

    fn reply_text(actions: &[Act]) -> Option<&str> {
        actions.iter().find_map(|a| match a {
            Action::Reply { user_text, .. } => Some(user_text.as_str()),
            _ => None,
        })
    }

    #[test]
    fn a_finished_sentence_ends_the_turn_before_the_hangover() {
        let (mut d, end, turn) = early_pause(early_config());
        let a = transcript(&mut d, end + ms(380), turn, " What time is it?");
        assert_eq!(a, vec![Action::EndUtterance, reply(turn, "What time is it?")]);
        // the endpointer's own end of that utterance changes nothing
        assert!(ended(&mut d, end + ms(600), "u+silence", end).is_empty());
        let tm = only_record(&answer(&mut d, end + ms(480), turn, "Noon.", ms(500))).timings;
        assert!(tm.early_end && tm.speculative_stt);
        assert_eq!(tm.endpoint, Some(ms(380)));
        assert_eq!(tm.stt, Some(ms(340)));
        assert_eq!(tm.stt_after_endpoint, Some(Duration::ZERO));
        assert_eq!(tm.voice_to_voice, Some(ms(500)));
        assert_eq!(d.summary.early_ends, 1);
        assert_eq!(d.summary.speculations, 1);
        assert_eq!(d.summary.replies, 1);
    }

    #[test]
    fn a_fast_transcript_waits_for_the_minimum_silence() {
        let (mut d, end, turn) = early_pause(early_config());
        assert!(transcript(&mut d, end + ms(120), turn, "Book a table, please.").is_empty());
        assert_eq!(d.poll_timeout(), Some(end + ms(250)));
        d.handle_timeout(end + ms(249));
        assert!(drain(&mut d).is_empty());
        d.handle_timeout(end + ms(250));
        let a = drain(&mut d);
        assert_eq!(a.first(), Some(&Action::EndUtterance));
        assert_eq!(reply_text(&a), Some("Book a table, please."));
    }

    #[test]
    fn an_unfinished_transcript_waits_for_the_hangover_and_is_reused() {
        for text in [
            "I would like to book a table and",
            "I would like to book a table...",
            "My number is",
            "Um.",
            "I want to go to.",
            "Tonight.", // one word: not enough to end early
        ] {
            let (mut d, end, turn) = early_pause(early_config());
            assert!(transcript(&mut d, end + ms(300), turn, text).is_empty(), "{text}");
            assert_eq!(
                d.poll_timeout(),
                Some(d.answered + ms(600_000)),
                "{text}: no turn timer"
            );
            d.handle_timeout(end + ms(500));
            assert!(drain(&mut d).is_empty(), "{text}");
            // the hangover completes with the same audio: no second transcription
            let a = ended(&mut d, end + ms(600), "u+silence", end);
            assert_eq!(a, vec![reply(turn, text)], "{text}");
            assert_eq!(d.summary.early_ends, 0);
        }
        // likely noise: no early end either
        let (mut d, end, turn) = early_pause(early_config());
        assert!(transcript_with(&mut d, end + ms(300), turn, "Thank you.", 0.9).is_empty());
        assert!(ended(&mut d, end + ms(600), "u", end).is_empty(), "noise guard");
        // and none when the early end is off
        let (mut d, end, turn) = early_pause(DialogueConfig {
            early_end_of_turn: false,
            ..early_config()
        });
        assert!(transcript(&mut d, end + ms(300), turn, "What time is it?").is_empty());
        assert!(matches!(
            ended(&mut d, end + ms(600), "u", end).as_slice(),
            [Action::Reply { .. }]
        ));
    }

    #[test]
    fn resumed_speech_cancels_the_speculation_before_an_early_end() {
        let (mut d, end, turn) = early_pause(early_config());
        d.handle(end + ms(150), Input::SpeechResumed);
        assert_eq!(drain(&mut d), vec![Action::CancelTranscription { turn }]);
        // its result, had it come, is not used
        assert!(transcript(&mut d, end + ms(300), turn, "Thank you very much.").is_empty());
        d.handle_timeout(end + ms(400));
        assert!(drain(&mut d).is_empty());
        assert_eq!(d.summary.speculations_dropped, 1);
        assert_eq!(d.summary.transcriptions_cancelled, 1);
        assert_eq!(d.summary.early_ends, 0);
    }

    #[test]
    fn speech_after_an_early_end_is_a_new_utterance_answered_with_the_first() {
        let (mut d, end, turn) = early_pause(early_config());
        let a = transcript(&mut d, end + ms(300), turn, "Thank you very much.");
        assert_eq!(a.first(), Some(&Action::EndUtterance));
        // the caller goes on before the bot said anything (the endpointer reports a
        // resume: the turn was already over, so it is a new utterance)
        d.handle(end + ms(350), Input::SpeechResumed);
        assert_eq!(drain(&mut d), vec![Action::CancelReply { turn }]);
        let turn2 = transcribes(&pause(&mut d, end + ms(2000), "u2"), "u2");
        let a = transcript(&mut d, end + ms(2300), turn2, "That is all I needed.");
        assert_eq!(reply_text(&a), Some("Thank you very much. That is all I needed."));
        assert_eq!(d.summary.early_ends, 2);
        assert_eq!(d.summary.replies, 2);
    }

    #[test]
    fn a_cancelled_job_holds_back_the_next_speculation_until_it_stops() {
        let (mut d, end, turn) = early_pause(early_config());
        d.handle(end + ms(100), Input::SpeechResumed);
        assert_eq!(drain(&mut d), vec![Action::CancelTranscription { turn }]);
        assert!(
            pause(&mut d, end + ms(1000), "u2").is_empty(),
            "the stale job still holds the transcriber"
        );
        let turn2 = transcribes(
            &transcript_failed(&mut d, end + ms(1100), turn, "cancelled"),
            "u2",
        );
        // a driver that never reports the stopped job holds it back for STALE_JOB_WAIT
        d.handle(end + ms(1200), Input::SpeechResumed);
        assert_eq!(drain(&mut d), vec![Action::CancelTranscription { turn: turn2 }]);
        assert!(pause(&mut d, end + ms(1500), "u3").is_empty());
        let due = end + ms(1200) + STALE_JOB_WAIT;
        assert_eq!(d.poll_timeout(), Some(due));
        d.handle_timeout(due);
        transcribes(&drain(&mut d), "u3");
    }

    #[test]
    fn speculation_delay_starts_the_job_after_that_much_silence() {
        let (mut d, t0) = call(DialogueConfig {
            speculation_delay: ms(200),
            ..early_config()
        });
        d.handle(t0, Input::SpeechStarted);
        let end = t0 + ms(1000);
        assert!(pause(&mut d, end, "u").is_empty());
        assert_eq!(d.poll_timeout(), Some(end + ms(200)));
        // a pause shorter than the delay costs no transcription
        d.handle(end + ms(150), Input::SpeechResumed);
        assert!(drain(&mut d).is_empty());
        assert_eq!(d.poll_timeout(), Some(t0 + ms(600_000)));
        assert!(pause(&mut d, end + ms(1000), "u+").is_empty());
        d.handle_timeout(end + ms(1200));
        let turn = transcribes(&drain(&mut d), "u+");
        let a = transcript(&mut d, end + ms(1500), turn, "Is the pharmacy open?");
        assert_eq!(a.first(), Some(&Action::EndUtterance));
        assert_eq!(d.summary.speculations, 1);
    }

    #[test]
    fn reads_finished_wants_final_punctuation_enough_words_and_no_dangling_word() {
        for (text, min, want) in [
            ("What time is it?", 2, true),
            ("Please transfer me to the billing department.", 2, true),
            ("Thank you!", 2, true),
            (" Who is it for? ", 2, true),
            ("\"I need a taxi.\"", 2, true),
            ("Yes.", 1, true),
            ("Yes.", 2, false),
            ("I would like to book a table", 2, false),
            ("I would like to book a table...", 2, false),
            ("I would like to book a table\u{2026}", 2, false),
            ("I need the address and.", 2, false),
            ("Can I speak to the.", 2, false),
            ("I want to talk to.", 2, false),
            ("So, um.", 1, false),
            ("", 1, false),
            ("?", 1, false),
        ] {
            assert_eq!(reads_finished(text, min), want, "{text:?} min {min}");
        }
    }

    #[test]
    fn caller_hang_up_cancels_a_speculative_transcription() {
        let (mut d, t0) = greeted();
        let turn = paused(&mut d, t0 + ms(2000), "a");
        hang_up_cancels(&mut d, t0 + ms(3100), &[Action::CancelTranscription { turn }]);
    }

    #[test]
    fn empty_greeting_says_nothing_and_listens() {
        let (mut d, t0) = call(DialogueConfig {
            greeting: " ".into(),
            ..config()
        });
        assert!(drain(&mut d).is_empty());
        utterance(&mut d, t0 + ms(100), "a");
    }

    #[test]
    fn barge_in_stops_playback_cancels_reply_and_keeps_what_was_heard() {
        let (mut d, t0, turn) = asked("Tell me a story");
        let t = t0 + ms(2000);
        let s1 = speak_id(&sentence(&mut d, t + ms(1600), turn, "Once upon a time."));
        let s2 = speak_id(&sentence(
            &mut d,
            t + ms(1650),
            turn,
            "There was a king who ruled a land.",
        ));
        queued(&mut d, t + ms(1700), s1, ms(1000));
        queued(&mut d, t + ms(1750), s2, ms(2000));
        d.handle(t + ms(2700), Input::PlaybackFinished { speech: s1 });
        assert!(drain(&mut d).is_empty());
        // caller speaks half-way through the second sentence
        let onset = t + ms(3700);
        d.handle(onset, Input::SpeechStarted);
        let a = drain(&mut d);
        assert_eq!(
            a,
            vec![Action::CancelReply { turn }, Action::StopSpeaking],
            "barge-in"
        );
        let r = only_record(&stopped(&mut d, onset + ms(40), s2, ms(1000)));
        assert!(r.interrupted);
        // 8 words, half heard
        assert_eq!(r.bot, "Once upon a time. There was a king");
        assert_eq!(r.timings.barge_in_stop, Some(ms(40)));
        // late LLM output of the cancelled turn is ignored
        d.handle(
            onset + ms(50),
            Input::LlmSentence {
                turn,
                text: "Late.".into(),
            },
        );
        d.handle(onset + ms(60), Input::LlmDone { turn });
        assert!(drain(&mut d).is_empty());
        // the interrupting utterance becomes the next turn
        transcribes(&ended(&mut d, onset + ms(900), "b", onset + ms(600)), "b");
        let mut s = d.summary.clone();
        s.duration = Duration::ZERO;
        assert_eq!(s.barge_ins, 1);
    }

    /// The one record of `actions`: the greeting "Hello there.", cut after its first word.
    fn half_heard_greeting(actions: &[Act]) -> TurnRecord {
        let r = only_record(actions);
        assert_eq!(r.kind, TurnKind::Greeting);
        assert_eq!(r.bot, "Hello");
        assert!(r.interrupted);
        r
    }

    #[test]
    fn barge_in_on_the_greeting_stops_it() {
        let (mut d, t0, g) = greeting_queued(config(), Duration::ZERO);
        // the onset is given as the time the speech began (before the VAD confirmed it)
        d.handle(t0 + ms(500), Input::SpeechStarted);
        assert_eq!(drain(&mut d), vec![Action::StopSpeaking]);
        let r = half_heard_greeting(&stopped(&mut d, t0 + ms(570), g, ms(500)));
        assert_eq!(r.timings.barge_in_stop, Some(ms(70)));
    }

    #[test]
    fn without_barge_in_caller_speech_during_the_bot_is_ignored() {
        let (mut d, t0, g) = greeting_queued(
            DialogueConfig {
                barge_in: false,
                ..config()
            },
            Duration::ZERO,
        );
        d.handle(t0 + ms(200), Input::SpeechStarted);
        assert!(ended(&mut d, t0 + ms(700), "x", t0 + ms(500)).is_empty());
        d.handle(t0 + ms(1000), Input::PlaybackFinished { speech: g });
        assert_eq!(records(&drain(&mut d)).len(), 1);
        utterance(&mut d, t0 + ms(2000), "y");
    }

    #[test]
    fn caller_going_on_before_the_bot_speaks_merges_into_one_turn() {
        let (mut d, t0) = greeted();
        let t = t0 + ms(2000);
        let turn1 = utterance(&mut d, t, "part1");
        // caller resumes while the first part is still being transcribed
        d.handle(t + ms(1400), Input::SpeechStarted);
        assert!(drain(&mut d).is_empty());
        assert!(transcript(&mut d, t + ms(1500), turn1, "I would like").is_empty());
        let turn2 = transcribes(&ended(&mut d, t + ms(2500), "part2", t + ms(2200)), "part2");
        let a = transcript(&mut d, t + ms(2700), turn2, "a pizza.");
        assert_eq!(a, vec![reply(turn2, "I would like a pizza.")]);
        // caller goes on again while the LLM thinks: reply dropped, text carried
        d.handle(t + ms(2800), Input::SpeechStarted);
        assert_eq!(drain(&mut d), vec![Action::CancelReply { turn: turn2 }]);
        let turn3 = transcribes(&ended(&mut d, t + ms(3800), "part3", t + ms(3500)), "part3");
        let a = transcript(&mut d, t + ms(4000), turn3, "With cheese.");
        assert_eq!(a, vec![reply(turn3, "I would like a pizza. With cheese.")]);
    }

    #[test]
    fn utterance_ending_during_a_transcription_waits_and_only_the_newest_waits() {
        let (mut d, t0) = greeted();
        let t = t0 + ms(2000);
        let turn1 = utterance(&mut d, t, "u1");
        d.handle(t + ms(1400), Input::SpeechStarted);
        let a = ended(&mut d, t + ms(1600), "u2", t + ms(1500));
        assert!(a.is_empty(), "one transcription at a time");
        d.handle(t + ms(1700), Input::SpeechStarted);
        let a = ended(&mut d, t + ms(1900), "u3", t + ms(1800));
        assert!(a.is_empty(), "one transcription at a time");
        let turn3 = transcribes(&transcript(&mut d, t + ms(2000), turn1, "one"), "u3");
        let a = transcript(&mut d, t + ms(2300), turn3, "three");
        assert!(matches!(a.as_slice(), [Action::Reply { user_text, .. }] if user_text == "one three"));
        assert_eq!(d.summary.utterances_dropped, 1);
    }

    #[test]
    fn noise_guard_ignores_no_speech_and_too_few_words() {
        let (mut d, t0) = greeted();
        let t = t0 + ms(2000);
        let turn = utterance(&mut d, t, "cough");
        assert!(transcript_with(&mut d, t + ms(1500), turn, "Thank you.", 0.9).is_empty());
        let turn = utterance(&mut d, t + ms(3000), "breath");
        assert!(transcript(&mut d, t + ms(4500), turn, " ... ").is_empty());
        let turn = utterance(&mut d, t + ms(6000), "speech");
        let a = transcript(&mut d, t + ms(7500), turn, "Hello?");
        assert!(matches!(a.as_slice(), [Action::Reply { .. }]));
        assert_eq!(d.summary.noise_ignored, 2);

        // min_words = 3: a two-word transcript is noise
        let (mut d, t0) = call(DialogueConfig {
            greeting: String::new(),
            min_words: 3,
            ..config()
        });
        let turn = utterance(&mut d, t0, "a");
        assert!(transcript(&mut d, t0 + ms(1500), turn, "uh huh").is_empty());
        let turn = utterance(&mut d, t0 + ms(2000), "b");
        assert!(!transcript(&mut d, t0 + ms(3500), turn, "what is that").is_empty());
    }

    #[test]
    fn failed_transcription_is_recorded_and_reprompted_without_a_reply() {
        let (mut d, t0) = greeted();
        let turn = utterance(&mut d, t0 + ms(2000), "a");
        let error = "transcription timed out after 10 s";
        let a = transcript_failed(&mut d, t0 + ms(3500), turn, error);
        assert!(!a.iter().any(|x| matches!(x, Action::Reply { .. })), "{a:?}");
        let r = only_record(&a);
        assert_eq!(r.kind, TurnKind::TranscriptionFailed);
        assert_eq!(r.error.as_deref(), Some(error));
        assert_eq!(r.user, None);
        // voice ended at +3000, endpoint at +3300, failure at +3500
        assert_eq!(r.at, ms(3000));
        assert_eq!(r.timings.endpoint, Some(ms(300)));
        assert_eq!(r.timings.stt, Some(ms(200)));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "transcription_failed");
        assert_eq!(v["error"], "transcription timed out after 10 s");
        // the bot asks again; the re-prompt is its own turn once played
        assert_eq!(
            spoken_texts(&a),
            vec![DialogueConfig::default().stt_failed_phrase]
        );
        let a = play(&mut d, t0 + ms(3600), speak_id(&a), ms(1500));
        assert_eq!(records(&a)[0].kind, TurnKind::Reprompt);
        assert!(
            serde_json::to_value(&records(&a)[0])
                .unwrap()
                .get("error")
                .is_none()
        );

        // no re-prompt when the caller already speaks again, or with an empty phrase
        let t = t0 + ms(6000);
        let turn = utterance(&mut d, t, "c");
        d.handle(t + ms(1400), Input::SpeechStarted);
        let a = transcript_failed(&mut d, t + ms(1500), turn, "x");
        assert_eq!(records(&a)[0].kind, TurnKind::TranscriptionFailed);
        assert!(spoken_texts(&a).is_empty());
        let (mut d, t0) = call(DialogueConfig {
            greeting: String::new(),
            stt_failed_phrase: " ".into(),
            ..config()
        });
        let turn = utterance(&mut d, t0, "a");
        let a = transcript_failed(&mut d, t0 + ms(1500), turn, "x");
        only_record(&a);
        assert!(spoken_texts(&a).is_empty());
    }

    #[test]
    fn silence_prompts_then_says_goodbye_and_hangs_up_after_playback() {
        let (mut d, t0) = greeted();
        // greeting finished at t0+1s: prompt due at +8 s
        let due = t0 + ms(9000);
        assert_eq!(d.poll_timeout(), Some(due));
        d.handle_timeout(due - ms(1));
        assert!(drain(&mut d).is_empty());
        d.handle_timeout(due);
        let a = drain(&mut d);
        assert_eq!(spoken_texts(&a), vec!["Are you still there?".to_string()]);
        let p = speak_id(&a);
        assert_eq!(
            d.poll_timeout(),
            Some(t0 + ms(600_000)),
            "no silence timer while speaking"
        );
        let a = play(&mut d, due, p, ms(1500));
        assert_eq!(records(&a)[0].kind, TurnKind::SilencePrompt);
        // hang-up due 20 s after the silence began (the prompt does not reset it)
        let hang = t0 + ms(21_000);
        assert_eq!(d.poll_timeout(), Some(hang));
        d.handle_timeout(hang);
        let a = drain(&mut d);
        assert_eq!(spoken_texts(&a), vec!["Goodbye!".to_string()]);
        assert!(
            !a.contains(&Action::HangUp),
            "no BYE before the goodbye is spoken"
        );
        let g = speak_id(&a);
        let a = play(&mut d, hang, g, ms(700));
        assert_eq!(records(&a)[0].kind, TurnKind::Goodbye);
        assert!(a.contains(&Action::HangUp));
        let s = summary(&a);
        assert_eq!(s.reason, EndReason::Silence);
        assert!(s.goodbye_completed);
        assert_eq!(s.duration, ms(21_700));
        assert!(d.is_ended());
        assert_eq!(d.poll_timeout(), None);
    }

    #[test]
    fn caller_speech_resets_the_silence_timers() {
        let (mut d, t0) = greeted();
        d.handle_timeout(t0 + ms(9000));
        let p = speak_id(&drain(&mut d));
        play(&mut d, t0 + ms(9000), p, ms(1000));
        let turn = utterance(&mut d, t0 + ms(12_000), "a");
        assert!(transcript(&mut d, t0 + ms(13_400), turn, "uh").len() == 1);
        d.handle(t0 + ms(13_500), Input::LlmDone { turn });
        let r = records(&drain(&mut d));
        assert_eq!(r[0].bot, "");
        // silence restarts at the end of the turn (t0+13.5 s): prompt again at +8 s
        assert_eq!(d.poll_timeout(), Some(t0 + ms(21_500)));
    }

    #[test]
    fn max_call_duration_finishes_the_sentence_then_goodbye_then_bye() {
        let (mut d, t0, turn) = asked("Talk forever");
        let t = t0 + ms(2000);
        let s1 = speak_id(&sentence(&mut d, t + ms(1600), turn, "Sure thing."));
        queued(&mut d, t + ms(1650), s1, ms(1000));
        let max = t0 + ms(600_000);
        // (the silence timer is not armed while speaking)
        assert_eq!(d.poll_timeout(), Some(max));
        d.handle_timeout(max);
        let a = drain(&mut d);
        assert_eq!(a.first(), Some(&Action::CancelReply { turn }));
        assert_eq!(spoken_texts(&a), vec!["Goodbye!".to_string()]);
        assert!(!a.contains(&Action::StopSpeaking));
        let g = speak_id(&a);
        // input while closing is ignored
        d.handle(max + ms(10), Input::SpeechStarted);
        d.handle(max + ms(20), Input::Dtmf('0'));
        assert!(drain(&mut d).is_empty());
        d.handle(max + ms(100), Input::PlaybackFinished { speech: s1 });
        let a = drain(&mut d);
        let r = only_record(&a);
        assert_eq!(r.bot, "Sure thing.");
        assert!(r.interrupted, "the reply was cut by the end of the call");
        assert!(!a.contains(&Action::HangUp));
        let a = play(&mut d, max + ms(100), g, ms(500));
        assert!(a.contains(&Action::HangUp));
        assert_eq!(summary(&a).reason, EndReason::MaxDuration);
    }

    #[test]
    fn closing_grace_bounds_the_wait_for_playback() {
        let (mut d, t0) = greeted();
        let a = shutdown(&mut d, t0 + ms(2000), "Shutting down.", ms(300));
        assert_eq!(spoken_texts(&a), vec!["Shutting down.".to_string()]);
        assert_eq!(d.poll_timeout(), Some(t0 + ms(2300)));
        // synthesis never finishes: BYE at the deadline anyway
        d.handle_timeout(t0 + ms(2300));
        let a = drain(&mut d);
        assert_eq!(a.first(), Some(&Action::StopSpeaking));
        assert!(a.contains(&Action::HangUp));
        let s = summary(&a);
        assert_eq!(s.reason, EndReason::Shutdown);
        assert!(!s.goodbye_completed);
    }

    #[test]
    fn shutdown_with_empty_phrase_hangs_up_at_once() {
        let (mut d, t0) = greeted();
        let a = shutdown(&mut d, t0 + ms(1500), "", ms(300));
        assert_eq!(a.first(), Some(&Action::HangUp));
        assert_eq!(summary(&a).reason, EndReason::Shutdown);
    }

    #[test]
    fn caller_goodbye_phrase_ends_the_call_politely() {
        let (mut d, t0) = greeted();
        let turn = utterance(&mut d, t0 + ms(2000), "bye");
        let a = transcript(&mut d, t0 + ms(3500), turn, "Goodbye!");
        assert_eq!(spoken_texts(&a), vec!["Goodbye!".to_string()]);
        assert!(!a.iter().any(|x| matches!(x, Action::Reply { .. })));
        let r = records(&a);
        assert_eq!(r[0].user.as_deref(), Some("Goodbye!"));
        let a = play(&mut d, t0 + ms(3600), speak_id(&a), ms(600));
        assert!(a.contains(&Action::HangUp));
        assert_eq!(summary(&a).reason, EndReason::CallerGoodbye);
    }

    #[test]
    fn dtmf_hangup_action_interrupts_says_phrase_and_hangs_up() {
        let (mut d, t0, turn) = asked("Hello");
        let t = t0 + ms(2000);
        let s1 = speak_id(&sentence(&mut d, t + ms(1600), turn, "Hi, I can help."));
        queued(&mut d, t + ms(1650), s1, ms(1000));
        d.handle(t + ms(1700), Input::Dtmf('0'));
        let a = drain(&mut d);
        assert_eq!(a[0], Action::CancelReply { turn });
        assert_eq!(a[1], Action::StopSpeaking);
        assert_eq!(spoken_texts(&a), vec!["Transferring you. Goodbye.".to_string()]);
        // the interrupted turn is recorded without the unheard sentence
        let r = only_record(&a);
        assert!(r.interrupted);
        assert_eq!(r.bot, "");
        let g = speak_id(&a);
        let a = play(&mut d, t + ms(1800), g, ms(900));
        assert!(a.contains(&Action::HangUp));
        let r = records(&a);
        assert_eq!(r[0].kind, TurnKind::Dtmf('0'));
        assert_eq!(r[0].bot, "Transferring you. Goodbye.");
        let s = summary(&a);
        assert_eq!(s.reason, EndReason::Dtmf);
        assert_eq!(s.dtmf_digits, 1);
        assert!(s.goodbye_completed);
    }

    #[test]
    fn dtmf_continue_action_speaks_and_unknown_digits_do_nothing() {
        let (mut d, t0) = greeted();
        d.handle(t0 + ms(1500), Input::Dtmf('5'));
        assert!(drain(&mut d).is_empty());
        d.handle(t0 + ms(1600), Input::Dtmf('*'));
        let a = drain(&mut d);
        assert_eq!(spoken_texts(&a), vec!["Ask me anything.".to_string()]);
        let a = play(&mut d, t0 + ms(1600), speak_id(&a), ms(500));
        assert_eq!(records(&a)[0].kind, TurnKind::Dtmf('*'));
        assert!(!d.is_ended());
        assert_eq!(d.summary.dtmf_digits, 2);
    }

    #[test]
    fn llm_failure_before_any_sentence_says_the_error_phrase() {
        let (mut d, t0, turn) = asked("Hello");
        d.handle(
            t0 + ms(3600),
            Input::LlmFailed {
                turn,
                error: "connection refused".into(),
            },
        );
        let a = drain(&mut d);
        assert_eq!(
            spoken_texts(&a),
            vec!["Sorry, I cannot answer that right now.".to_string()]
        );
        let a = play(&mut d, t0 + ms(3700), speak_id(&a), ms(900));
        let r = records(&a);
        assert_eq!(r[0].bot, "Sorry, I cannot answer that right now.");
    }

    #[test]
    fn failed_synthesis_is_skipped() {
        let (mut d, t0, turn) = asked("Hello");
        let s1 = speak_id(&sentence(&mut d, t0 + ms(3600), turn, "One."));
        d.handle(t0 + ms(3610), Input::LlmDone { turn });
        d.handle(
            t0 + ms(3620),
            Input::SpeechFailed {
                speech: s1,
                error: "engine".into(),
            },
        );
        assert_eq!(only_record(&drain(&mut d)).bot, "");
    }

    fn hang_up_cancels(d: &mut D, at: Instant, expected: &[Act]) -> Vec<Act> {
        d.handle(at, Input::CallerHungUp);
        let a = drain(d);
        for e in expected {
            assert!(a.contains(e), "missing {e:?} in {a:?}");
        }
        assert!(!a.contains(&Action::HangUp), "no BYE after the caller's BYE");
        assert_eq!(summary(&a).reason, EndReason::CallerHungUp);
        assert!(d.is_ended());
        assert_eq!(d.poll_timeout(), None);
        d.handle(at + ms(1), Input::SpeechStarted);
        d.handle_timeout(at + ms(1_000_000));
        assert!(drain(d).is_empty(), "nothing after the end");
        a
    }

    #[test]
    fn caller_hang_up_during_greeting_stops_playback() {
        let (mut d, t0) = call(config());
        drain(&mut d);
        hang_up_cancels(&mut d, t0 + ms(200), &[Action::StopSpeaking]);
    }

    #[test]
    fn caller_hang_up_during_the_greeting_records_what_was_heard() {
        let (mut d, t0, id) = greeting_queued(config(), ms(20));
        d.handle(t0 + ms(520), Input::CallerHungUp);
        assert_eq!(drain(&mut d), vec![Action::StopSpeaking]);
        assert!(!d.is_ended(), "waits for the driver to say how much was played");
        assert_eq!(d.poll_timeout(), Some(t0 + ms(520) + HANG_UP_STOP_WAIT));
        // other inputs are ignored meanwhile
        d.handle(t0 + ms(521), Input::SpeechStarted);
        let a = stopped(&mut d, t0 + ms(522), id, ms(500));
        assert_eq!(half_heard_greeting(&a).timings.barge_in_stop, None);
        assert!(matches!(a.last(), Some(Action::CallEnded(_))));
        assert!(!a.contains(&Action::HangUp));
        assert_eq!(summary(&a).reason, EndReason::CallerHungUp);
        assert_eq!(summary(&a).turns, 1);
        assert!(d.is_ended());

        // a driver that never answers: the call ends at the wait's end, unrecorded
        let (mut d, t0, _) = greeting_queued(config(), Duration::ZERO);
        d.handle(t0 + ms(300), Input::CallerHungUp);
        drain(&mut d);
        d.handle_timeout(t0 + ms(350));
        assert!(!d.is_ended());
        d.handle_timeout(t0 + ms(300) + HANG_UP_STOP_WAIT);
        let a = drain(&mut d);
        assert!(records(&a).is_empty());
        assert_eq!(summary(&a).reason, EndReason::CallerHungUp);
    }

    #[test]
    fn shutdown_stops_the_current_speech_and_says_the_goodbye() {
        let (mut d, t0, turn) = asked("Tell me a story");
        let sentence = speak_id(&sentence(
            &mut d,
            t0 + ms(3600),
            turn,
            "Once upon a time there was a bot.",
        ));
        queued(&mut d, t0 + ms(3610), sentence, ms(2000));
        let a = shutdown(&mut d, t0 + ms(4000), "Goodbye.", ms(300));
        let stop = a
            .iter()
            .position(|x| *x == Action::StopSpeaking)
            .expect("stops speaking");
        let speak = a
            .iter()
            .position(|x| matches!(x, Action::Speak { .. }))
            .expect("says goodbye");
        assert!(stop < speak, "{a:?}");
        assert!(a.contains(&Action::CancelReply { turn }));
        assert_eq!(spoken_texts(&a), vec!["Goodbye.".to_string()]);
        assert!(only_record(&a).interrupted);
        let a = play(&mut d, t0 + ms(4010), speak_id(&a), ms(200));
        assert!(a.contains(&Action::HangUp));
        let s = summary(&a);
        assert_eq!(s.reason, EndReason::Shutdown);
        assert!(s.goodbye_completed);
    }

    #[test]
    fn caller_hang_up_during_stt_cancels_the_transcription() {
        let (mut d, t0) = greeted();
        let turn = utterance(&mut d, t0 + ms(2000), "a");
        let a = hang_up_cancels(&mut d, t0 + ms(3400), &[Action::CancelTranscription { turn }]);
        assert_eq!(summary(&a).transcriptions_cancelled, 1);
        // a late transcript is ignored
        transcript(&mut d, t0 + ms(3500), turn, "hello");
        assert!(drain(&mut d).is_empty());
    }

    #[test]
    fn caller_hang_up_during_llm_cancels_the_reply_and_records_the_turn() {
        let (mut d, t0, turn) = asked("Hello");
        let a = hang_up_cancels(&mut d, t0 + ms(3600), &[Action::CancelReply { turn }]);
        assert_eq!(
            summary(&a).transcriptions_cancelled,
            0,
            "the transcription had finished"
        );
        let r = only_record(&a);
        assert!(r.interrupted);
        assert_eq!(r.user.as_deref(), Some("Hello"));
    }

    #[test]
    fn caller_hang_up_during_tts_cancels_reply_and_speech() {
        let (mut d, t0, turn) = asked("Hello");
        sentence(&mut d, t0 + ms(3600), turn, "Hi.");
        hang_up_cancels(
            &mut d,
            t0 + ms(3650),
            &[Action::CancelReply { turn }, Action::StopSpeaking],
        );
    }

    #[test]
    fn caller_hang_up_while_closing_keeps_the_closing_reason() {
        let (mut d, t0) = greeted();
        d.handle(t0 + ms(1500), Input::Dtmf('0'));
        drain(&mut d);
        d.handle(t0 + ms(1600), Input::CallerHungUp);
        let a = drain(&mut d);
        assert!(!a.contains(&Action::HangUp));
        let s = summary(&a);
        assert_eq!(s.reason, EndReason::Dtmf);
        assert!(!s.goodbye_completed);
    }

    #[test]
    fn normalize_words_and_cut_words() {
        assert_eq!(
            normalize_words("  Bye-bye, Bob! It's OK. "),
            "bye bye bob it's ok"
        );
        assert_eq!(normalize_words("..."), "");
        assert_eq!(word_count("one, two three"), 3);
        assert_eq!(cut_words("a b c d", ms(500), Some(ms(1000))), "a b");
        assert_eq!(cut_words("a b c d", ms(5000), Some(ms(1000))), "a b c d");
        assert_eq!(cut_words("a b c d", ms(500), None), "");
    }

    #[test]
    fn turn_record_serializes_with_millisecond_timings() {
        let r = TurnRecord {
            index: 3,
            kind: TurnKind::Dtmf('0'),
            at: ms(1500),
            user: None,
            bot: "Bye".into(),
            interrupted: false,
            timings: TurnTimings {
                stt: Some(Duration::from_micros(250_500)),
                ..TurnTimings::default()
            },
            error: None,
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "dtmf");
        assert_eq!(v["digit"], "0");
        assert_eq!(v["at"], 1500.0);
        assert_eq!(v["timings"]["stt"], 250.5);
        assert!(v["timings"]["endpoint"].is_null());
    }
}
