//! The crate's error type.

/// Everything that can go wrong in callbot-audio.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// A sample rate of 0 or above [`crate::resample::MAX_RATE`].
    #[error("unsupported sample rate {0} Hz")]
    InvalidRate(u32),
    /// rubato refused to build a resampler for this pair of rates.
    #[error("cannot resample {from} Hz -> {to} Hz: {reason}")]
    Resampler {
        /// Input rate.
        from: u32,
        /// Output rate.
        to: u32,
        /// rubato's message.
        reason: String,
    },
    /// A VAD or endpointer configuration value out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A WAV file could not be read or written.
    #[error("WAV {path}: {source}")]
    Wav {
        /// The file.
        path: String,
        /// hound's error.
        #[source]
        source: hound::Error,
    },
    /// A WAV file is valid but not acceptable (too long, unsupported format, ...).
    #[error("WAV {path}: {reason}")]
    WavFormat {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The operation was attempted on a writer that is already finished.
    #[error("WAV writer already finalized")]
    Finished,
}
