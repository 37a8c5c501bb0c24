//! # callbot: the voice bot
//!
//! The composing crate: it turns the layer crates (SIP, RTP, audio, STT, LLM, TTS) into
//! a phone voice bot. A call is answered, greeted, then loops: the caller's speech is
//! endpointed (VAD), transcribed (Whisper), answered by the LLM (Ollama, or echo mode
//! when none is reachable) and spoken back sentence by sentence (espeak-ng).
//!
//! ## What the handle owns, which threads it starts, how it stops
//!
//! [`Bot`] owns the SIP user agent (thread `sip-ua`), the shared [`components`] (the
//! Whisper worker pool, the Ollama client with its runtime thread, the espeak-ng worker
//! thread), the current [`Settings`] and the live calls. It starts `bot-sip` (SIP
//! events: answer/reject, caller hang-ups, reaping ended calls) and one `call-N` thread
//! per live call, which owns the call's `RtpSession` (thread `rtp-<port>`) and runs
//! [`call::run_call`]. [`Bot::shutdown`]`(deadline)` rejects new calls with 503, has
//! live calls stop talking, play the shutdown phrase (synthesized once for all of them
//! and fitted to the deadline, see [`shutdown`]) and hang up (BYE), joins every thread,
//! shuts SIP down (the BYE answers awaited, unregistering) and then the components,
//! logging "All components cleaned up", all within the deadline (a registrar that does
//! not answer is given up on at the deadline); it returns a [`BotShutdownReport`]
//! (calls ended/abandoned, BYEs sent/answered, the goodbye, unregistered or not), is
//! idempotent, and `Drop` calls it.
//! [`Bot::reconfigure`] builds changed components (and a changed registration) first,
//! without blocking new calls, and swaps them in, or changes nothing and names the
//! failing setting; live calls keep what they started with. Every setting applies
//! without a restart except `sip.listen` (the table is in [`bot`]).
//!
//! ## The modules
//!
//! - [`settings`]: [`Settings`] from a TOML file (serde), validated with errors that
//!   name the field and the reason ([`SettingsError`]). Annotated example:
//!   `examples/callbot.toml`.
//! - [`dialogue`]: the sans-IO turn-taking engine of one call ([`Dialogue`]): greeting,
//!   endpoint -> transcribe -> streamed reply spoken sentence by sentence, barge-in,
//!   noise guard, silence prompt and hang-up, maximum duration, DTMF actions, goodbye
//!   before BYE, caller hang-up at any stage, per-turn stage timings. No threads, no
//!   clock: time is passed in.
//! - [`call`]: the per-call I/O driver around the dialogue, over the [`call::CallMedia`]
//!   and [`call::Endpointer`] traits and the layers' `Transcriber`, `ChatModel` and
//!   `Synthesizer` traits, so any layer can be swapped.
//! - [`components`]: the lifecycle of the shared STT/LLM/TTS components: build new
//!   first, swap atomically, shut the old down when no live call holds it; on a failed
//!   build nothing changes and the half-built ones are cleaned up.
//! - [`layers`]: the real layers as components, and echo mode ([`layers::EchoChat`]).
//! - [`transcript`]: the per-call JSON-lines transcript file, one fsynced line per
//!   finished turn and a summary line at the end (written in place: no temp file).
//! - [`bot`]: the running bot, [`Bot`], and the VAD endpointer adapter.
//! - [`shutdown`]: the shutdown goodbye, synthesized once and fitted to the deadline.
//! - [`testing`]: instant test doubles (media, endpointer, STT, LLM, TTS) and the
//!   [`testing::PipelineRig`] that measures the pipeline's own overhead per turn.
//!
//! ## Example
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//!
//! let settings = callbot::Settings::load("examples/callbot.toml".as_ref())?;
//! let mut bot = callbot::Bot::start(settings)?;
//! println!("listening on {}, echo mode: {}", bot.sip_addr(), bot.echo_mode());
//! // ... on SIGTERM:
//! let report = bot.shutdown(Instant::now() + Duration::from_secs(2));
//! assert!(report.components.all_clean());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The program is `examples/callbot.rs` (`--config FILE` and flags; SIGHUP reloads
//! through [`Bot::reconfigure`], SIGINT/SIGTERM shut down); `cargo xtask demo` runs
//! `examples/demo_call.rs` (the bot on loopback, a real call asking a spoken question).
//!
//! Latency: transcription starts speculatively when the caller's voice stops (during
//! the endpoint hangover; `dialogue.speculative_stt`), the turn ends as soon as that
//! transcript reads as a finished sentence (`dialogue.early_end_of_turn`), and while
//! the bot speaks the VAD confirms speech after a shorter
//! `dialogue.vad.barge_in_min_speech_secs`, so barge-in stops playback sooner.
//! `examples/voice_latency.rs` measures voice-to-voice.

#[cfg(test)]
mod barge_in_tests;
pub mod bot;
pub mod call;
pub mod components;
pub mod dialogue;
pub mod layers;
pub mod settings;
pub mod shutdown;
pub mod testing;
pub mod transcript;

pub use bot::{Bot, BotError, BotShutdownReport};
pub use dialogue::{Action, Dialogue, DialogueConfig, Input};
pub use settings::{LoadError, Settings, SettingsError};
pub use transcript::{TranscriptError, TranscriptWriter};
