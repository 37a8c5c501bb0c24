//! # callbot-tts: speech synthesis for phone voice bots
//!
//! - [`Synthesizer`]: the trait the bot speaks through. [`Synthesizer::synthesize`]
//!   returns at once with a [`SynthesisJob`]: chunks of mono i16 audio, as
//!   `callbot_audio`'s [`AudioFrame`] (which carries its sample rate), arrive in order on a **bounded** channel, then one end event
//!   ([`SynthesisEvent::Finished`] or [`SynthesisEvent::Failed`]). Cancel a job with
//!   [`SynthesisJob::cancel`], from another thread with a [`CancelHandle`], or by
//!   dropping it. Other engines implement the trait with [`SynthesisJob::channel`].
//! - [`EspeakSynthesizer`] (feature `espeak`, default): libespeak-ng through
//!   `espeakng-sys`, 22,050 Hz. Voice, rate, pitch and volume per request
//!   ([`VoiceOptions`]); SSML and phoneme input are off (text is spoken as text); texts
//!   above [`EspeakConfig::max_text_bytes`] are refused.
//! - `LocalSpeaker` (feature `local-speaker`): speaks aloud on this machine through
//!   speech-dispatcher (the `tts` crate). It cannot produce samples, so it is not a
//!   [`Synthesizer`] and cannot feed a call.
//!
//! ## What the espeak handle owns, its thread, and how it stops
//!
//! libespeak-ng keeps its state in process globals, so an [`EspeakSynthesizer`] owns
//! **one named worker thread, `callbot-tts-espeak`**, which initialises the library,
//! serves requests one at a time from a bounded queue ([`EspeakConfig::request_queue`];
//! a full queue is [`TtsError::QueueFull`], never a wait) and terminates the library.
//! The library runs in its retrieval (asynchronous) mode, so between `espeak_Initialize`
//! and `espeak_Terminate` it also has **one internal command thread** of its own, which
//! runs each synthesis and calls our synth callback; the worker hands it one message at
//! a time and waits for its end-of-message event. (Synchronous mode would avoid that
//! thread, but libespeak-ng 1.51 hangs in the second `espeak_Terminate` of a process in
//! that mode, so an engine could not be restarted; `espeak_Synchronize` is not used
//! either: it polls every 20 ms.) Both threads are gone when shutdown returns.
//! Only **one engine may live per process**: a second [`EspeakSynthesizer::start`] while
//! one lives returns [`TtsError::AlreadyRunning`] (sharing would give the engine two
//! owners). Many calls share one engine through [`EspeakSynthesizer::client`]: an
//! [`EspeakClient`] is `Clone + Send + Sync` and implements [`Synthesizer`].
//!
//! Voice names are espeak-ng's (`en-us`, `en`, `en-gb-x-rp`, `de`, ... as listed by
//! `espeak-ng --voices`; an unknown one is [`TtsError::VoiceNotFound`]). The default
//! [`VoiceOptions`] are the voice a phone bot should speak with: `en-us+f2` at 140 wpm, pitch
//! 50, volume 100 (clearer through an 8 kHz G.711 call than espeak-ng's own `en-us`: 10.9 %
//! vs 20.8-24.8 % word errors when Whisper tiny.en listens; see [`VoiceOptions::default`]).
//!
//! A cancelled job stops within one chunk (the synth callback returns 1 to abort
//! espeak) and its receiver returns [`TtsError::Cancelled`] at once, dropping audio still
//! queued; a consumer that leaves its channel full longer than
//! [`EspeakConfig::consumer_timeout`] loses its job ([`TtsError::ConsumerStalled`]) so it
//! cannot starve other calls. [`EspeakSynthesizer::shutdown`] fails queued requests,
//! aborts the running one, joins the worker (which calls `espeak_Terminate`) within the
//! deadline, logs "TTS engine cleaned up" and returns an [`EspeakShutdownReport`]; it is
//! idempotent and `Drop` calls it. A new engine can be started afterwards.
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use callbot_tts::{EspeakConfig, EspeakSynthesizer, Synthesizer};
//!
//! # fn main() -> Result<(), callbot_tts::TtsError> {
//! let mut engine = EspeakSynthesizer::start(EspeakConfig::default())?;
//! let tts = engine.client(); // give a clone to each call
//! let mut job = tts.synthesize("Hello, how can I help?", &engine.default_options())?;
//! while let Some(chunk) = job.recv_timeout(Duration::from_secs(5))? {
//!     // send chunk.samples (at chunk.sample_rate) towards the call
//!     # let _ = chunk;
//! }
//! let report = engine.shutdown(Instant::now() + Duration::from_secs(2));
//! assert!(report.worker_joined);
//! # Ok(()) }
//! ```
//!
//! ## Licence: libespeak-ng is GPL-3.0-or-later
//!
//! This crate is MIT, but the `espeak` feature (on by default) links libespeak-ng,
//! which is **GPL-3.0-or-later**: a binary built with it is a combined work that must
//! be distributed under the GPL-3. Build with `default-features = false` (and bring
//! your own [`Synthesizer`]) to keep your binary free of GPL code; the trait, the job
//! types and `LocalSpeaker` do not need the feature.

mod error;
#[cfg(feature = "espeak")]
mod espeak;
#[cfg(feature = "local-speaker")]
mod local;
mod synth;

pub use callbot_audio::AudioFrame;
pub use error::TtsError;
#[cfg(feature = "espeak")]
pub use espeak::{EspeakClient, EspeakConfig, EspeakShutdownReport, EspeakSynthesizer};
#[cfg(feature = "local-speaker")]
pub use local::{LocalSpeaker, LocalSpeakerError, LocalSpeakerReport};
pub use synth::{
    CancelHandle, ChunkSender, SendAbort, SynthesisEvent, SynthesisJob, SynthesisSummary, SynthesizedAudio,
    Synthesizer, VoiceOptions,
};
