//! # callbot-sip: SIP signalling for phone voice bots
//!
//! Status: skeleton. The SIP issue fills this crate.
//!
//! What it owns once complete:
//! - a sans-IO user agent core (RFC 3261 transactions, dialogs, registration with
//!   RFC 7616 digest auth): no sockets, no threads, time passed in;
//! - a `SipUserAgent` handle owning one UDP socket and one named driver thread, with
//!   events on a bounded channel and `shutdown(deadline)` (BYE to live calls,
//!   unregister, join, close) that `Drop` also calls.

pub mod digest;
pub mod sdp;

mod core;
mod driver;
mod media;
mod message;
mod transaction;

pub use crate::core::{
    ALLOW, CallId, CommandError, CoreConfig, CoreStats, EndReason, RegistrationConfig, RegistrationState,
    SipEvent, Transmit, UserAgentCore,
};
pub use crate::driver::{
    DROP_SHUTDOWN_TIMEOUT, SipConfig, SipError, SipHandle, SipShutdownReport, SipUserAgent,
};
pub use crate::sdp::{AudioCodec, NegotiatedMedia};
pub use crate::transaction::Timers;
