//! # callbot-rtp: RTP media sessions for phone voice bots
//!
//! Status: skeleton. The media issue fills this crate.
//!
//! What it owns once complete: one `RtpSession` per call, owning a UDP port from a
//! configured range and its named threads (receive with jitter buffer, paced send,
//! RTCP), an optional recorder, and `shutdown(deadline)` that `Drop` also calls.
