//! # callbot-sip: SIP signalling for phone voice bots
//!
//! A SIP user agent over UDP (IPv4 and IPv6) on [`rsip`]: registration with digest auth
//! ([`digest`]), inbound and outbound calls with SDP offer/answer for G.711 ([`sdp`]).
//!
//! ## Two layers
//!
//! - [`UserAgentCore`]: the protocol engine, **sans-IO**. No socket, no thread, no
//!   clock. Feed it datagrams ([`UserAgentCore::handle_datagram`]) and time
//!   ([`UserAgentCore::handle_timeout`]); take out datagrams to send
//!   ([`UserAgentCore::poll_transmit`]), application events ([`UserAgentCore::poll_event`])
//!   and the next timer deadline ([`UserAgentCore::poll_timeout`]). Commands:
//!   [`answer`](UserAgentCore::answer), [`reject`](UserAgentCore::reject),
//!   [`ring`](UserAgentCore::ring), [`hang_up`](UserAgentCore::hang_up),
//!   [`call`](UserAgentCore::call), [`begin_shutdown`](UserAgentCore::begin_shutdown).
//!   It holds the RFC 3261 transactions (timers A-K, with 2xx retransmission until ACK),
//!   the dialogs, and the registration state machine (401/407 digest retry, refresh
//!   before the granted expiry, backoff on failure, Expires: 0 on shutdown). Every call
//!   and transaction leaves its table when it ends ([`UserAgentCore::stats`] shows the
//!   sizes). Drive it from any event loop.
//!
//!   Memory: a completed transaction keeps only what absorbing retransmissions needs
//!   (one shared key, the serialized final response, its destination and timer; the
//!   response goes too once acknowledged), about 550 bytes while it lingers for its
//!   64*T1 timer: 1,000 calls/s leave some 64,000 lingering, ~35 MB. The tables give
//!   their memory back as they empty, and [`UserAgentCore::take_drained`] tells the
//!   driver when a load peak is over.
//! - [`SipUserAgent::start`] → [`SipHandle`]: the thin UDP driver.
//!
//! ## What the handle owns, its thread, and how it stops
//!
//! A [`SipHandle`] owns **one UDP socket** and **a thread named `sip-ua`**, which runs
//! the core on **one worker thread named `sip-ua-io`** at a time. Events arrive on a
//! bounded crossbeam channel ([`SipHandle::events`]); commands are methods on the
//! handle, passed to the worker over a bounded channel and answered at once (an empty
//! datagram to the socket wakes it). When a load peak is over (at least 1,000
//! transactions and calls at once, all expired) the worker ends, `sip-ua` joins it,
//! returns the freed heap to the system (glibc `malloc_trim`, ~1.4 ms) and starts the
//! next worker with the same socket and core: a thread's exit is the only way glibc
//! hands back its per-thread cache of freed blocks, which otherwise pins scattered
//! pages of the arena (and a freed 64 KiB block makes glibc shrink the worker arena's
//! top, which `malloc_trim` leaves alone). After 10,000 calls at 1,000/s the RSS is
//! +12 to +124 KiB above the RSS after 100 calls in the load test, +228 to +328 KiB
//! for the `answer` example (0.76-1.2 MB with one long-lived thread; 16 MB without
//! the trim); a second burst adds -48 to +88 KiB.
//! [`SipHandle::shutdown`] (deadline-bounded, idempotent) makes new INVITEs get 503 with
//! Retry-After, hangs up every live call (BYE, CANCEL or 603), unregisters, waits for
//! the answers until the deadline, joins the thread, closes the socket (the port can be
//! bound again at once), logs `SIP client shutdown complete` and returns a
//! [`SipShutdownReport`]. `Drop` calls it with [`DROP_SHUTDOWN_TIMEOUT`].
//!
//! ## Changing the registration while running
//!
//! A new binding is registered *beside* the current one before it replaces it:
//! [`SipHandle::stage_registration`] sends the new REGISTER (its own Call-ID, user and
//! credentials; digest challenges answered) and waits, up to a deadline, for the
//! registrar's verdict while the current registration keeps serving. Accepted:
//! [`SipHandle::commit_registration`] makes it current and removes the old binding
//! (`Expires: 0`; not when it is the same binding: same registrar, user and domain) or
//! [`SipHandle::abort_registration`] drops it (removing what it bound). Refused or
//! unanswered: it is dropped at once and [`SipError::Registration`] carries the status
//! code. [`SipHandle::remove_registration`] unregisters. The core's side is
//! [`UserAgentCore::stage_registration`] and [`StagedRegistration`].
//!
//! ## Messages
//!
//! rsip 0.4 ignores Content-Length, does not know compact header names and fails on
//! folded lines and LF-only endings. A datagram already in canonical form (CRLF, no
//! folding, full header names, `Name: value`, one sane Content-Length: what SIP stacks
//! send) is proven so in one scan and rsip parses its head as it is; any other is
//! normalised first: lines unfolded, CRLF endings, compact names expanded, Content-Length
//! checked (a negative, non-numeric, conflicting or too large value is a 400) and the
//! body cut to it (both paths give the same answers; a property test holds them equal).
//! `benches/sip.rs` measures this path against rsip's bare parse (the cargo feature
//! `bench-internals` exposes the transaction layer's half of `handle_datagram` for it;
//! not a stable API). Datagrams above `max_message_size` are dropped and counted; requests that cannot be
//! parsed get 400 (505, 416, 501 when that is the reason) when Via, From, To, Call-ID and
//! CSeq survive, and are dropped and counted otherwise. Responses go where the top Via
//! says (`rport`/`received`, RFC 3581).
//!
//! ## Limits
//!
//! UDP only (no TCP/TLS); an INVITE must carry an SDP offer (a delayed offer gets 488);
//! no reliable provisionals (`Require: 100rel` gets 420), no session timers, no UPDATE or
//! INFO (405). Unanswered calls ring at most `ring_timeout` (incoming: 480, outgoing:
//! CANCEL).
//!
//! ## Example: answer every call
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use callbot_sip::{SipConfig, SipEvent, SipUserAgent};
//!
//! let mut sip = SipUserAgent::start(SipConfig::new("127.0.0.1:5060".parse()?))?;
//! let rtp = "127.0.0.1:30000".parse()?; // where our RTP session listens
//! while let Ok(event) = sip.events().recv_timeout(Duration::from_secs(30)) {
//!     match event {
//!         SipEvent::IncomingCall { call, media, .. } => {
//!             println!("{call}: {:?} to {}", media.codec, media.remote_rtp);
//!             sip.answer(call, rtp)?;
//!         }
//!         SipEvent::CallEnded { call, reason } => println!("{call} ended: {reason}"),
//!         _ => {}
//!     }
//! }
//! let report = sip.shutdown(Instant::now() + Duration::from_secs(2));
//! println!("{report}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod digest;
#[cfg(feature = "bench-internals")]
pub mod internals;
pub mod sdp;

mod core;
mod driver;
mod heap;
mod media;
mod message;
mod transaction;

pub use crate::core::{
    ALLOW, CallId, CommandError, CoreConfig, CoreStats, EndReason, RegistrationConfig, RegistrationState,
    SipEvent, StagedRegistration, Transmit, UserAgentCore,
};
pub use crate::driver::{
    DROP_SHUTDOWN_TIMEOUT, SipConfig, SipError, SipHandle, SipShutdownReport, SipUserAgent,
};
pub use crate::sdp::{AudioCodec, NegotiatedMedia};
pub use crate::transaction::Timers;
