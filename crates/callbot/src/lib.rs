//! # callbot: the voice bot
//!
//! Status: skeleton. The composition issue fills this crate.
//!
//! What it owns once complete: a `Bot` handle composing the SIP, RTP, STT, LLM and
//! TTS layers through traits, one pipeline per call, `reconfigure` with rollback and
//! a bounded `shutdown(deadline)` that `Drop` also calls.
