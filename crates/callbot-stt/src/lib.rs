//! # callbot-stt: speech to text for phone voice bots
//!
//! Status: skeleton. The STT issue fills this crate.
//!
//! What it owns once complete: a `Transcriber` trait and a `WhisperTranscriber`
//! handle that owns one whisper.cpp model (context) and a bounded pool of named
//! worker threads, each job with its own whisper state; `shutdown(deadline)` fails
//! queued jobs, aborts late ones, joins the workers and frees the model.
