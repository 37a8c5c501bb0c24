//! # callbot: the voice bot
//!
//! The composing crate: it turns the layer crates (SIP, RTP, audio, STT, LLM, TTS)
//! into a phone voice bot. What exists so far, each usable and tested on its own:
//!
//! - [`settings`]: [`Settings`] from a TOML file (serde), validated with errors that
//!   name the field and the reason ([`SettingsError`]). Annotated example:
//!   `examples/callbot.toml`.
//! - [`dialogue`]: the sans-IO turn-taking engine of one call ([`Dialogue`]): greeting,
//!   endpoint -> transcribe -> streamed reply spoken sentence by sentence, barge-in,
//!   noise guard, silence prompt and hang-up, maximum duration, DTMF actions, goodbye
//!   before BYE, caller hang-up at any stage, per-turn stage timings. No threads,
//!   no clock: time is passed in.
//! - [`components`]: the lifecycle of the shared STT/LLM/TTS components: build new
//!   first, swap atomically, shut the old down when no live call holds it; on a failed
//!   build nothing changes and the half-built ones are cleaned up.
//! - [`transcript`]: the per-call JSON-lines transcript file, one fsynced line per
//!   finished turn and a summary line at the end.
//!
//! Not there yet (later work on the composition issue): the per-call pipeline driver
//! over the layer handles, `Bot::start` / `reconfigure` / `shutdown`, the `callbot`
//! program and the demo.

pub mod bot;
pub mod call;
pub mod components;
pub mod dialogue;
pub mod layers;
pub mod settings;
pub mod testing;
pub mod transcript;

pub use bot::{Bot, BotError, BotShutdownReport};
pub use dialogue::{Action, Dialogue, DialogueConfig, Input};
pub use settings::{LoadError, Settings, SettingsError};
pub use transcript::{TranscriptError, TranscriptWriter};
