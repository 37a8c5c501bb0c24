//! # callbot-audio: audio building blocks for phone voice bots
//!
//! Plain values and streaming processors; no threads, no sockets, no I/O beyond WAV files.
//! Nothing here needs a shutdown: every type is an ordinary owned value, dropped normally.
//!
//! - [`AudioFrame`]: mono 16-bit PCM that carries its sample rate, with `dasp` sample
//!   conversions to and from `f32`.
//! - [`g711`]: µ-law and A-law, bit-exact to the ITU-T G.191 reference on all inputs.
//! - [`resample`]: streaming [`Resampler`] (rubato FFT) in 20 ms chunks with bounded,
//!   documented latency and the filter delay trimmed so output stays time-aligned.
//! - [`vad`]: voice activity detection and endpointing ([`vad::Endpointer`], earshot, no
//!   model download): speech-start / speech-end events with hangover and minimum speech
//!   length, at 16 kHz natively or any other rate through the resampler.
//! - [`wav`]: a tolerant WAV reader (any rate, channels, bit depth; downmixed to mono) and
//!   a streaming [`wav::WavWriter`] that writes as it goes.
//!
//! ```
//! use callbot_audio::{AudioFrame, g711::Law};
//! let frame = AudioFrame::new(8000, vec![0i16; 160]); // 20 ms at 8 kHz
//! assert_eq!(frame.duration().as_millis(), 20);
//! let mut payload = Vec::new();
//! Law::Ulaw.encode_into(&frame.samples, &mut payload);
//! assert_eq!(payload.len(), 160);
//! ```

pub mod error;
pub mod frame;
pub mod g711;
pub mod resample;
pub mod vad;
pub mod wav;

pub use error::AudioError;
pub use frame::AudioFrame;
pub use resample::Resampler;
