//! The one error type of this crate.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong loading a model or transcribing. Never a panic or an abort.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SttError {
    /// The model file does not exist.
    #[error("Whisper model not found: {path}")]
    ModelNotFound {
        /// The path that was tried.
        path: PathBuf,
    },
    /// The model file could not be read.
    #[error("cannot read Whisper model {path}: {source}")]
    ModelIo {
        /// The model path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a whisper.cpp ggml model.
    #[error("{path} is not a whisper.cpp ggml model: {reason}")]
    NotAModel {
        /// The model path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The model file is shorter than its own layout says (an interrupted download or copy).
    #[error("Whisper model {path} is truncated: {actual} bytes, at least {needed} needed")]
    TruncatedModel {
        /// The model path.
        path: PathBuf,
        /// Bytes the layout needs (at least).
        needed: u64,
        /// Bytes the file has.
        actual: u64,
    },
    /// whisper.cpp refused the model (its reason is in the `whisper_cpp` log target).
    #[error("whisper.cpp could not load {path}")]
    ModelLoad {
        /// The model path.
        path: PathBuf,
    },
    /// whisper.cpp could not allocate a decoding state (out of memory, typically).
    #[error("whisper.cpp could not allocate a decoding state (out of memory?)")]
    StateAllocation,
    /// The configuration is invalid.
    #[error("invalid transcriber configuration: {0}")]
    InvalidConfig(String),
    /// The options of a request are invalid.
    #[error("invalid transcription options: {0}")]
    InvalidOptions(String),
    /// The audio contains NaN or infinite samples.
    #[error("audio contains a non-finite sample at index {index}")]
    InvalidAudio {
        /// Index of the first bad sample.
        index: usize,
    },
    /// The utterance is longer than the transcriber accepts.
    #[error("utterance of {length:?} is longer than the maximum {max:?}")]
    AudioTooLong {
        /// The utterance length.
        length: Duration,
        /// The maximum accepted.
        max: Duration,
    },
    /// The job queue is full: the caller should drop or retry the utterance.
    #[error("transcription queue full ({capacity} jobs waiting)")]
    QueueFull {
        /// Queue capacity.
        capacity: usize,
    },
    /// The transcriber has been shut down.
    #[error("transcriber is shut down")]
    ShutDown,
    /// The job was cancelled (by its handle, by dropping the handle, or by shutdown).
    #[error("transcription cancelled")]
    Cancelled,
    /// The job's deadline passed before it finished.
    #[error("transcription deadline exceeded")]
    DeadlineExceeded,
    /// whisper.cpp returned an error while transcribing.
    #[error("whisper.cpp transcription failed: {0}")]
    Inference(String),
    /// A worker thread could not be started.
    #[error("cannot start transcription worker: {0}")]
    Spawn(std::io::Error),
    /// The worker serving the job disappeared without answering.
    #[error("transcription worker lost")]
    WorkerLost,
}
