//! # callbot-llm: the language model layer for phone voice bots
//!
//! Status: skeleton. The LLM issue fills this crate.
//!
//! What it owns once complete: a streaming `ChatModel` trait and an `OllamaChat`
//! handle owning one HTTP client and one tokio runtime for its whole life, history
//! kept per call, a sentence chunker; `shutdown(deadline)` cancels what is in
//! flight and stops the runtime.
