//! # callbot-rtp: RTP media sessions for phone voice bots
//!
//! One [`RtpSession`] per call. It **owns**:
//! - a UDP port pair from a configured range (RTP on an even port, RTCP on the next
//!   one; or a single port with rtcp-mux). Ports are free again the moment the session
//!   is shut down (UDP has no TIME_WAIT; a test opens and closes 1,000 sessions on a
//!   ten-port range);
//! - **one named thread** (`rtp-<port>`): it waits for its sockets in epoll (`mio`)
//!   until the next 20 ms tick at the latest, and at each tick plays one caller frame
//!   out of the jitter buffer and sends one bot packet. (epoll's timeout is a
//!   high-resolution timer: packets leave within about 1 ms of their tick. A socket
//!   read timeout counts in kernel ticks and rounds up: it sent every packet of a
//!   session a constant 4 to 12 ms late.)
//! - two bounded `crossbeam-channel` receivers for the application:
//!   [`RtpSession::frames`] (decoded caller audio, 8 kHz, 20 ms) and
//!   [`RtpSession::events`] (DTMF, playback finished, source latched). The thread never
//!   blocks on them: when one is full the oldest item is dropped and counted;
//! - optionally a [`recorder::Recorder`] (stereo WAV, caller left, bot right).
//!
//! It **stops** with [`RtpSession::shutdown`]`(deadline)`: the thread sees the stop
//! flag within 20 ms, flushes, finishes the recording (renamed into place) and exits;
//! the handle joins it (via a done-channel with a timeout, then `join`), the sockets
//! close, and the final [`RtpStats`] come back in an [`RtpReport`]. Shutdown is
//! idempotent and `Drop` calls it with a 1 s deadline.
//!
//! All protocol logic is sans-IO and tested with explicit time: [`packet`] (classify
//! datagrams), [`jitter`] (the jitter buffer), [`pacer`] (the drift-free 20 ms clock),
//! [`dtmf`] (RFC 4733), [`rtcp`] (SR/RR), and [`engine::MediaEngine`] which combines
//! them (latching, concealment, packetising, stats). The session is a thin driver.
//!
//! ## Parsing crate
//! RTP headers are parsed by `rtp` 0.17.2 (webrtc-rs), which is the successor of the
//! yanked `webrtc-rtp`, handles CSRC/extension/padding overruns and was already in the
//! workspace. It accepts versions other than 2 and parses RTCP as RTP, so
//! [`packet::classify`] filters version, RTCP (second byte 200..=204), STUN (magic
//! cookie), a zero padding count and oversize datagrams before calling it.
//!
//! ## Source latching
//! [`engine::Latching::SdpAddress`] accepts packets only from the SDP address;
//! [`engine::Latching::Symmetric`] (the default, for peers behind NAT) latches onto
//! the first valid packet with a negotiated payload type, and sends media back there.
//! After latching, other addresses and SSRCs are dropped and counted
//! (`foreign_source`). After a re-INVITE call [`RtpSession::retarget`]: the latch opens
//! again and a new SSRC restarts the jitter buffer. When the re-INVITE moved the media,
//! the old peer's addresses may not take the reopened latch for their next
//! [`engine::STALE_PACKETS`] packets, so a packet of the old peer read after the
//! re-INVITE cannot keep the media pointed at it.
//!
//! ## Limits
//! G.711 only (PCMU/PCMA, 8 kHz), 20 ms packets sent; received packets of 10-60 ms
//! are re-cut into 20 ms frames. Playback takes 8 kHz PCM (encoded on the socket thread) or
//! pre-encoded G.711 codes. No SRTP, no ICE
//! (STUN is recognised and dropped). A process killed with SIGKILL can leave a
//! recorder's hidden `.part` file.
//!
//! ## Example
//! ```no_run
//! use std::time::{Duration, Instant};
//! use callbot_audio::{AudioFrame, g711::Law};
//! use callbot_rtp::{RtpSession, RtpSessionConfig};
//!
//! # fn main() -> Result<(), callbot_rtp::RtpError> {
//! let remote = "127.0.0.1:40000".parse().ok(); // from the SDP
//! let cfg = RtpSessionConfig::new("127.0.0.1".parse().unwrap(), Law::Ulaw, remote);
//! let mut session = RtpSession::start(cfg)?;
//! println!("put port {} in the SDP answer", session.local_addr().port());
//! let id = session.play(AudioFrame::new(8000, vec![0; 8000]))?; // 1 s
//! while let Ok(frame) = session.frames().recv_timeout(Duration::from_millis(100)) {
//!     // feed frame.audio to VAD / STT ...
//!     # let _ = (frame, id); break;
//! }
//! session.stop_playback()?; // barge-in
//! let report = session.shutdown(Instant::now() + Duration::from_secs(1));
//! println!("{} packets in, {} lost", report.stats.packets_received, report.stats.packets_lost);
//! # Ok(()) }
//! ```

pub mod dtmf;
pub mod engine;
pub mod jitter;
pub mod pacer;
pub mod packet;
pub mod recorder;
pub mod rtcp;
mod session;
pub mod stats;

pub use dtmf::DtmfEvent;
pub use engine::{
    FrameKind, Latching, MediaConfig, MediaEngine, MediaError, MediaEvent, PlaybackFinished, PlaybackId,
    PlaybackStopped, ReceivedFrame, Transmit,
};
pub use jitter::{AdaptiveDepth, JitterConfig};
pub use recorder::RecordingReport;
pub use session::{RecordTo, RtpError, RtpEvent, RtpReport, RtpSession, RtpSessionConfig};
pub use stats::RtpStats;
