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
//! What the types own: [`Resampler`] a rubato FFT plan and one chunk of buffered input
//! (a few KB); [`vad::Endpointer`] an `earshot::Detector` (about 8 KB) and, below or above
//! 16 kHz, a resampler; [`wav::WavWriter`] one open file, finalized by `finish()` or on
//! drop. No type starts a thread or holds a lock; all are `Send`, one per call/stream.
//!
//! The path of caller audio through this crate in a call: RTP payload (8 kHz µ-law) ->
//! [`g711::Law::decode_into`] -> [`vad::Endpointer`] for turn-taking -> [`Resampler`]
//! 8 kHz -> 16 kHz for speech recognition. The bot's voice goes the other way:
//! TTS at 22,050 Hz -> [`Resampler`] -> 8 kHz -> [`g711::Law::encode_into`].
//!
//! ```
//! use callbot_audio::{AudioFrame, Resampler, g711::Law, vad::{Endpointer, VadConfig}};
//! # fn main() -> Result<(), callbot_audio::AudioError> {
//! let payload = vec![0xFFu8; 160]; // one 20 ms PCMU packet (silence)
//! let mut pcm = Vec::new();
//! Law::Ulaw.decode_into(&payload, &mut pcm);
//! let frame = AudioFrame::new(8000, pcm);
//! assert_eq!(frame.duration().as_millis(), 20);
//!
//! let mut vad = Endpointer::new(8000, VadConfig::default())?;
//! let mut events = Vec::new();
//! vad.process_i16(&frame.samples, &mut events); // SpeechStart / SpeechEnd events
//!
//! let mut to_16k = Resampler::new(8000, 16000)?;
//! let mut for_stt = Vec::new();
//! to_16k.process(&frame.to_f32(), &mut for_stt); // 320 samples per 160 in, after 30 ms
//! # Ok(())
//! # }
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

#[cfg(test)]
mod tests {
    #[test]
    fn processors_are_send() {
        fn send<T: Send>() {}
        send::<crate::Resampler>();
        send::<crate::vad::Endpointer>();
        send::<crate::wav::WavWriter>();
        send::<crate::AudioFrame>();
    }
}
