//! The crate's error type.

use std::time::Duration;

/// Everything that can go wrong when asking for speech.
///
/// The type is `Clone` so that a failure can travel on a job's event channel
/// ([`crate::SynthesisEvent::Failed`]) and be kept by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtsError {
    /// The text was empty or only whitespace.
    #[error("nothing to say: the text is empty")]
    EmptyText,
    /// The text is longer than the engine accepts (bytes of UTF-8).
    #[error("text too long: {len} bytes, the limit is {max}")]
    TextTooLong {
        /// Length of the rejected text in bytes.
        len: usize,
        /// The configured limit in bytes.
        max: usize,
    },
    /// The text contains a character the engine cannot take (a NUL byte).
    #[error("invalid text: {0}")]
    InvalidText(String),
    /// A voice option is out of range or malformed.
    #[error("invalid voice option: {0}")]
    InvalidOption(String),
    /// The engine has no voice of that name.
    #[error("voice not found: {0:?}")]
    VoiceNotFound(String),
    /// The engine's request queue is full: too many syntheses are waiting.
    #[error("synthesis queue full ({capacity} requests waiting)")]
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
    },
    /// The engine was shut down (or its worker is gone) before the request finished.
    #[error("the TTS engine is stopped")]
    EngineStopped,
    /// Another engine of the same kind is alive in this process (the library has
    /// process-global state; see [`crate::EspeakSynthesizer::start`]).
    #[error("a TTS engine is already running in this process")]
    AlreadyRunning,
    /// The engine could not be initialised.
    #[error("TTS engine initialisation failed: {0}")]
    Init(String),
    /// The engine reported an error while synthesising.
    #[error("synthesis failed: {0}")]
    Synthesis(String),
    /// The job was cancelled.
    #[error("synthesis cancelled")]
    Cancelled,
    /// The consumer left the chunk channel full for longer than the engine waits; the
    /// job was abandoned so that other calls are not starved.
    #[error("consumer stalled: no chunk taken for {0:?}")]
    ConsumerStalled(Duration),
    /// Nothing arrived on the job within the caller's timeout.
    #[error("no audio within {0:?}")]
    RecvTimeout(Duration),
    /// The worker thread could not be started.
    #[error("could not start the TTS worker thread: {0}")]
    Spawn(String),
}
