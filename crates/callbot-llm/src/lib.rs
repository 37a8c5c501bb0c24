//! # callbot-llm: the language model layer for phone voice bots
//!
//! A [`ChatModel`] streams a reply to a conversation ([`History`]) as text deltas on a
//! bounded channel ([`Reply`]); a [`SentenceChunker`] turns those deltas into
//! speakable pieces so speech starts before the model finishes. [`OllamaChat`] is the
//! implementation for an [Ollama](https://ollama.com) server, built on `ollama-rs`.
//!
//! ## What the handle owns, which threads it starts, how it stops
//!
//! An [`OllamaChat`] owns, for its whole life:
//! - **one HTTP client** (`reqwest`, one connection pool, kept-alive connections
//!   reused across replies; a client per call leaks in long-running bots). Plain
//!   `http` only (no TLS in this build), no proxy, no redirects: Ollama is reached
//!   directly;
//! - **one tokio runtime**: multi-thread with **one worker thread named
//!   `callbot-llm`** (and at most two blocking-pool threads, only used to resolve a
//!   host name, which exit after 10 s idle);
//! - a table of the replies in flight.
//!
//! Each [`ChatModel::start_reply`] spawns one task on that runtime. The task sends the
//! request and pushes [`ReplyEvent`]s into the reply's bounded channel; it ends with
//! exactly one `Done` or `Failed`. [`Reply::cancel`] (or dropping the [`Reply`]) stops
//! the task at once: it drops the HTTP response, which closes the connection, so the
//! server stops generating. Connect, first-token and total deadlines turn into
//! [`LlmError::Timeout`] with the [`TimeoutStage`].
//!
//! [`OllamaChat::shutdown`] cancels every reply in flight, waits (bounded by the
//! deadline) for their tasks to finish, then stops the runtime with
//! `Runtime::shutdown_timeout`, and logs "LLM client shutdown complete". It is
//! idempotent and returns an [`LlmShutdownReport`]; `Drop` calls it with a 1 s deadline.
//!
//! ## Why ollama-rs is used for requests but not for reading the stream
//!
//! ollama-rs 0.3.6 provides the request types (`ChatMessageRequest`, `ChatMessage`,
//! `ModelOptions`, `KeepAlive`), the model listing used by [`OllamaChat::probe`] and
//! the line types. Its streaming reader has defects a phone bot cannot live with: it
//! decodes every network chunk separately, so a multi-byte character split across two
//! chunks makes the whole line vanish ("Grüß Gott" arrives as "Gott"); an
//! `{"error": ...}` line mid-stream is only printed to stderr; its stream's error type
//! is `()`; its builders panic on a bad URL. So this crate validates URLs itself
//! ([`validate_base_url`]) and reads the streamed reply with its own NDJSON line
//! decoder over `reqwest`'s byte chunks, buffering bytes up to each newline. Tests with
//! a server that splits characters across chunks and sends error lines prove it.
//!
//! ## History
//!
//! The conversation of a call is ours ([`History`]): a system prompt that always stays,
//! turns trimmed oldest first to a [`HistoryBudget`] (messages and estimated tokens),
//! and [`History::commit_assistant`] to record what was actually spoken when the
//! caller interrupted.
//!
//! ## Example
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use callbot_llm::{ChatModel, ChunkerConfig, OllamaChat, OllamaConfig};
//!
//! let mut config = OllamaConfig::new("http://127.0.0.1:11434", "llama3.2:1b");
//! config.system_prompt = Some("You answer phone calls. Be brief.".into());
//! let mut chat = OllamaChat::new(config)?;
//! if chat.probe(Duration::from_millis(500)).is_err() {
//!     eprintln!("no LLM: falling back to echo mode");
//! }
//! let mut history = chat.new_history();
//! history.push_user("What time do you open?");
//! let mut spoken = String::new();
//! for piece in chat.start_reply(&history)?.sentences(ChunkerConfig::default()) {
//!     match piece {
//!         Ok(piece) => spoken.push_str(&piece), // hand `piece.trim()` to TTS here
//!         Err(e) => { eprintln!("say a fallback phrase: {e}"); break; }
//!     }
//! }
//! history.commit_assistant(&spoken);
//! let report = chat.shutdown(Instant::now() + Duration::from_secs(1));
//! assert!(!report.timed_out);
//! # Ok::<(), callbot_llm::LlmError>(())
//! ```

mod chunker;
mod error;
mod history;
mod ndjson;
mod ollama;
mod reply;

use std::time::{Duration, Instant};

pub use chunker::{ChunkerConfig, SentenceChunker};
pub use error::{LlmError, TimeoutStage};
pub use history::{History, HistoryBudget, Message, Role, estimate_tokens};
pub use ollama::{ChatOptions, KeepAlive, OllamaChat, OllamaConfig, Probe, validate_base_url};
pub use reply::{Reply, ReplyEvent, ReplySender, ReplyStats, Sentences};

/// A language model that streams replies to a conversation.
///
/// The bot keeps one [`History`] per call, starts a reply for it, reads the deltas
/// (through a [`SentenceChunker`] to speak sentence by sentence), cancels the reply
/// when the caller talks over it or hangs up, and answers any [`LlmError`] with a
/// fallback phrase.
pub trait ChatModel: Send + Sync {
    /// A new empty conversation with this model's system prompt and budget.
    fn new_history(&self) -> History;

    /// Starts streaming a reply to `history` (usually ending with the caller's words).
    /// Returns at once; the reply's events arrive on [`Reply::events`].
    fn start_reply(&self, history: &History) -> Result<Reply, LlmError>;

    /// Cancels everything in flight and releases the model's resources by `deadline`.
    /// Idempotent.
    fn shutdown(&mut self, deadline: Instant) -> LlmShutdownReport;
}

/// What [`ChatModel::shutdown`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LlmShutdownReport {
    /// True when the model had already been shut down (nothing was done).
    pub already_shut_down: bool,
    /// Replies in flight that were cancelled.
    pub cancelled_replies: usize,
    /// Reply tasks still running at the deadline (dropped with the runtime).
    pub abandoned_replies: usize,
    /// Runtime threads still alive after the shutdown returned (0 when it completed).
    pub threads_left: usize,
    /// False when the shutdown was called from inside another tokio runtime, where it
    /// cannot block: the runtime was stopped in the background.
    pub waited_for_threads: bool,
    /// True when something did not stop within the deadline.
    pub timed_out: bool,
    /// How long the shutdown took.
    pub elapsed: Duration,
}
