//! # callbot-audio: audio building blocks for phone voice bots
//!
//! Status: skeleton. The media issue fills this crate.
//!
//! What it owns once complete: plain values and streaming processors, no threads and
//! no I/O beyond WAV files: audio frames that carry their sample rate, G.711 µ-law
//! and A-law, streaming resampling (rubato), voice activity detection and
//! endpointing, WAV read/write.
