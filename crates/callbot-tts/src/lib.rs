//! # callbot-tts: speech synthesis for phone voice bots
//!
//! Status: skeleton. The TTS issue fills this crate.
//!
//! What it owns once complete: a `Synthesizer` trait and an `EspeakSynthesizer`
//! handle owning the one worker thread that may touch libespeak-ng's global state.
//! libespeak-ng is GPL-3; it sits behind the default `espeak` feature.
