//! Typed errors: every failure a caller can answer with a fallback phrase.

use std::fmt;

/// Which deadline of a reply expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeoutStage {
    /// The TCP connection to the server was not established in time
    /// ([`crate::OllamaConfig::connect_timeout`]).
    Connect,
    /// No reply text (and no final line) arrived in time after the request was sent
    /// ([`crate::OllamaConfig::first_token_timeout`]); a model still loading looks like this.
    FirstToken,
    /// The whole reply took longer than [`crate::OllamaConfig::total_timeout`].
    Total,
    /// A reachability probe ([`crate::OllamaChat::probe`]) got no answer in time.
    Probe,
}

impl fmt::Display for TimeoutStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutStage::Connect => "connect",
            TimeoutStage::FirstToken => "first token",
            TimeoutStage::Total => "total",
            TimeoutStage::Probe => "probe",
        })
    }
}

/// Everything that can go wrong while configuring the client or getting a reply.
///
/// Each variant is something a voice bot can answer with a fallback phrase
/// ("Sorry, I can't think right now"); none of them is a panic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// The base URL is not a usable `http://` URL.
    #[error("invalid Ollama URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A configuration value is out of range (empty model name, zero timeout, ...).
    #[error("invalid LLM configuration: {0}")]
    InvalidConfig(String),
    /// The server could not be reached (connection refused, no route, DNS failure).
    #[error("Ollama server unreachable: {0}")]
    Unreachable(String),
    /// The server does not have the requested model (HTTP 404 from `/api/chat`).
    #[error("model not found: {0}")]
    ModelNotFound(String),
    /// A deadline expired.
    #[error("LLM request timed out ({stage})")]
    Timeout {
        /// Which deadline.
        stage: TimeoutStage,
    },
    /// The server reported an error: an HTTP error status with its message, or an
    /// `{"error": ...}` line in the middle of a streamed reply.
    #[error("Ollama server error: {0}")]
    Server(String),
    /// The connection was lost before the reply was complete.
    #[error("connection lost mid-reply: {0}")]
    Disconnected(String),
    /// The server sent something that is not Ollama's protocol (bad JSON, invalid UTF-8,
    /// an over-long line, a stream that ended without its final line).
    #[error("Ollama protocol error: {0}")]
    Protocol(String),
    /// The reply was cancelled by its owner ([`crate::Reply::cancel`] or dropping the reply).
    #[error("reply cancelled")]
    Cancelled,
    /// The client was shut down (or is shutting down); no more replies.
    #[error("LLM client shut down")]
    Shutdown,
}

impl LlmError {
    /// True for failures that may go away if the same request is sent again later
    /// (server unreachable, timeouts, lost connection, server errors).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LlmError::Unreachable(_)
                | LlmError::Timeout { .. }
                | LlmError::Disconnected(_)
                | LlmError::Server(_)
        )
    }
}
