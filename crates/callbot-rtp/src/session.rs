//! [`RtpSession`]: the I/O driver around [`MediaEngine`]: sockets, one named thread,
//! bounded channels, the recorder, and `shutdown(deadline)`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use callbot_audio::AudioFrame;
use callbot_audio::g711::Law;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::{Events, Interest, Poll, Token};

use crate::dtmf::DtmfEvent;
use crate::engine::{
    MediaConfig, MediaEngine, MediaError, MediaEvent, PlaybackFinished, PlaybackId, PlaybackStopped,
    ReceivedFrame, SAMPLE_RATE,
};
use crate::recorder::{Recorder, RecorderError, RecordingReport};
use crate::stats::RtpStats;

/// Where to record a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordTo {
    /// Target directory (the file is created there under a hidden name, then renamed).
    pub dir: PathBuf,
    /// File name without `.wav` (sanitised; usually the Call-ID).
    pub name: String,
}

/// Settings of one session.
#[derive(Debug, Clone, PartialEq)]
pub struct RtpSessionConfig {
    /// Local address to bind (`127.0.0.1`, `::1`, `0.0.0.0`, ...).
    pub bind_ip: IpAddr,
    /// RTP ports to choose from. RTP takes an even port, RTCP the next odd one (unless
    /// `media.rtcp_mux`). Default 20000..=29999.
    pub ports: RangeInclusive<u16>,
    /// Media parameters (codec, peer address, jitter buffer, ...).
    pub media: MediaConfig,
    /// Capacity of the caller-frame channel (default 50 = 1 s of audio); when full the
    /// oldest frame is dropped and counted.
    pub frame_capacity: usize,
    /// Capacity of the event channel (default 256; oldest dropped when full).
    pub event_capacity: usize,
    /// Record both directions to a stereo WAV.
    pub record: Option<RecordTo>,
    /// Name of the socket thread (default `rtp-<port>`).
    pub thread_name: Option<String>,
}

impl RtpSessionConfig {
    /// Defaults for a call using `law`, binding on `bind_ip`, peer at `remote` (from
    /// the SDP, if known yet).
    pub fn new(bind_ip: IpAddr, law: Law, remote: Option<SocketAddr>) -> Self {
        RtpSessionConfig {
            bind_ip,
            ports: 20000..=29999,
            media: MediaConfig::new(law, remote),
            frame_capacity: 50,
            event_capacity: 256,
            record: None,
            thread_name: None,
        }
    }
}

impl Default for RtpSessionConfig {
    fn default() -> Self {
        Self::new(IpAddr::V4(Ipv4Addr::LOCALHOST), Law::Ulaw, None)
    }
}

/// Session errors.
#[derive(Debug, thiserror::Error)]
pub enum RtpError {
    /// No free port (pair) in the configured range.
    #[error("no free RTP port in {first}..={last} on {ip}")]
    NoFreePort {
        /// Bind address.
        ip: IpAddr,
        /// Range start.
        first: u16,
        /// Range end.
        last: u16,
    },
    /// Socket set-up failed.
    #[error("RTP socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The socket thread could not be started.
    #[error("starting the RTP thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The recording could not be started.
    #[error(transparent)]
    Recorder(#[from] RecorderError),
    /// A media request was refused.
    #[error(transparent)]
    Media(#[from] MediaError),
    /// Audio at another rate than 8 kHz was given to `play`.
    #[error("playback audio must be 8000 Hz, got {0} Hz (resample with callbot-audio)")]
    WrongRate(u32),
    /// The session was shut down.
    #[error("the RTP session is shut down")]
    ShutDown,
}

/// Events other than audio frames.
#[derive(Debug, Clone, PartialEq)]
pub enum RtpEvent {
    /// A DTMF key press from the peer (RFC 4733), reported once.
    Dtmf(DtmfEvent),
    /// A playback request finished (`completed`) or was cancelled by `stop_playback`.
    PlaybackFinished(PlaybackFinished),
    /// The session latched onto the peer's media source.
    SourceLatched {
        /// The peer's RTP address.
        addr: SocketAddr,
        /// Its SSRC.
        ssrc: u32,
    },
}

/// What `shutdown` did.
#[derive(Debug, Clone, PartialEq)]
pub struct RtpReport {
    /// The session's counters at the end.
    pub stats: RtpStats,
    /// The recording, if one was made (error text if it could not be saved).
    pub recording: Option<Result<RecordingReport, String>>,
    /// True when the socket thread was joined within the deadline.
    pub thread_joined: bool,
    /// How long the shutdown took.
    pub took: Duration,
}

struct Shared {
    engine: Mutex<MediaEngine>,
    stop: AtomicBool,
}

fn lock(m: &Mutex<MediaEngine>) -> MutexGuard<'_, MediaEngine> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct ThreadExit {
    recording: Option<Result<RecordingReport, String>>,
}

/// One call's media. See the crate documentation.
pub struct RtpSession {
    shared: Arc<Shared>,
    local: SocketAddr,
    rtcp_local: Option<SocketAddr>,
    frames: Receiver<ReceivedFrame>,
    events: Receiver<RtpEvent>,
    thread: Option<JoinHandle<ThreadExit>>,
    done: Receiver<()>,
    /// A handle on the RTP socket used only to wake the thread at shutdown.
    waker: Option<UdpSocket>,
    report: Option<RtpReport>,
}

impl std::fmt::Debug for RtpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtpSession")
            .field("local", &self.local)
            .field("shut_down", &self.report.is_some())
            .finish()
    }
}

static PORT_CURSOR: AtomicU32 = AtomicU32::new(0);
/// Where this process starts in the range: random, so that another process (a restarted
/// bot, a parallel test) does not take the port a peer is still sending to.
static PORT_OFFSET: OnceLock<u32> = OnceLock::new();

fn bind_pair(
    ip: IpAddr,
    ports: &RangeInclusive<u16>,
    mux: bool,
) -> Result<(UdpSocket, Option<UdpSocket>), RtpError> {
    let last = *ports.end();
    let no_port = || RtpError::NoFreePort {
        ip,
        first: *ports.start(),
        last,
    };
    // The first even port (none when the range starts at 65535).
    let Some(first) = ports.start().checked_add(*ports.start() & 1) else {
        return Err(no_port());
    };
    if first > last || (!mux && first >= last) {
        return Err(no_port());
    }
    let pairs = u32::from(last - first) / 2 + 1;
    // Spread concurrent sessions over the range; a closed UDP port is free at once.
    let offset = *PORT_OFFSET.get_or_init(rand::random::<u32>);
    let start = PORT_CURSOR.fetch_add(1, Ordering::Relaxed).wrapping_add(offset) % pairs;
    for i in 0..pairs {
        let k = (start + i) % pairs;
        let Ok(port) = u16::try_from(u32::from(first) + 2 * k) else {
            continue;
        };
        if !mux && port >= last {
            continue;
        }
        let Ok(rtp) = UdpSocket::bind(SocketAddr::new(ip, port)) else {
            continue;
        };
        if mux {
            return Ok((rtp, None));
        }
        if let Ok(rtcp) = UdpSocket::bind(SocketAddr::new(ip, port + 1)) {
            return Ok((rtp, Some(rtcp)));
        }
    }
    Err(no_port())
}

impl RtpSession {
    /// Binds a port (pair) from the configured range, starts the socket thread and, if
    /// asked, the recording.
    pub fn start(mut config: RtpSessionConfig) -> Result<RtpSession, RtpError> {
        let (rtp, rtcp) = bind_pair(config.bind_ip, &config.ports, config.media.rtcp_mux)?;
        let local = rtp.local_addr().map_err(RtpError::Socket)?;
        let waker = rtp.try_clone().map_err(RtpError::Socket)?;
        let rtcp_local = match &rtcp {
            Some(s) => Some(s.local_addr().map_err(RtpError::Socket)?),
            None => None,
        };
        // The thread waits in epoll (mio), whose timeout is a high-resolution timer: a
        // socket read timeout (SO_RCVTIMEO) counts in kernel ticks and woke the thread
        // 4 to 8 ms after the 20 ms tick was due, so every packet left that much late.
        rtp.set_nonblocking(true).map_err(RtpError::Socket)?;
        if let Some(s) = &rtcp {
            s.set_nonblocking(true).map_err(RtpError::Socket)?;
        }
        let poll = Poll::new().map_err(RtpError::Socket)?;
        let mut rtp = mio::net::UdpSocket::from_std(rtp);
        let mut rtcp = rtcp.map(mio::net::UdpSocket::from_std);
        poll.registry()
            .register(&mut rtp, RTP_TOKEN, Interest::READABLE)
            .map_err(RtpError::Socket)?;
        if let Some(s) = rtcp.as_mut() {
            poll.registry()
                .register(s, RTCP_TOKEN, Interest::READABLE)
                .map_err(RtpError::Socket)?;
        }
        let recorder = match &config.record {
            Some(r) => Some(Recorder::create(&r.dir, &r.name)?),
            None => None,
        };
        config.media.record = recorder.is_some();
        let seed = [
            rand::random::<u32>(),
            rand::random::<u32>(),
            rand::random::<u32>(),
        ];
        let engine = MediaEngine::new(config.media.clone(), Instant::now(), SystemTime::now(), seed);
        let shared = Arc::new(Shared {
            engine: Mutex::new(engine),
            stop: AtomicBool::new(false),
        });
        let (frame_tx, frames) = crossbeam_channel::bounded(config.frame_capacity.max(1));
        let (event_tx, events) = crossbeam_channel::bounded(config.event_capacity.max(1));
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let driver = Driver {
            shared: shared.clone(),
            poll,
            rtp,
            rtcp,
            frame_tx,
            frame_rx: frames.clone(),
            event_tx,
            event_rx: events.clone(),
            recorder,
            record_buf: Vec::new(),
        };
        let name = config
            .thread_name
            .clone()
            .unwrap_or_else(|| format!("rtp-{}", local.port()));
        let thread = std::thread::Builder::new()
            .name(name)
            .stack_size(256 * 1024)
            .spawn(move || {
                let exit = driver.run();
                let _ = done_tx.send(());
                exit
            })
            .map_err(RtpError::Thread)?;
        tracing::debug!(%local, "RTP session started");
        Ok(RtpSession {
            shared,
            local,
            rtcp_local,
            frames,
            events,
            thread: Some(thread),
            done,
            waker: Some(waker),
            report: None,
        })
    }

    /// The local RTP address (put its port in the SDP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The local RTCP address (`None` with rtcp-mux).
    pub fn rtcp_addr(&self) -> Option<SocketAddr> {
        self.rtcp_local
    }

    /// Decoded caller audio: one 8 kHz 20 ms frame per 20 ms once the peer's stream has
    /// started. Bounded: if not drained, the oldest frames are dropped (and counted).
    pub fn frames(&self) -> &Receiver<ReceivedFrame> {
        &self.frames
    }

    /// DTMF, playback-finished and latching events (bounded, oldest dropped).
    pub fn events(&self) -> &Receiver<RtpEvent> {
        &self.events
    }

    fn engine(&self) -> Result<MutexGuard<'_, MediaEngine>, RtpError> {
        if self.report.is_some() {
            return Err(RtpError::ShutDown);
        }
        Ok(lock(&self.shared.engine))
    }

    /// Queues 8 kHz audio to send after what is already queued. Returns its id; an
    /// [`RtpEvent::PlaybackFinished`] with that id follows when its last packet is sent.
    pub fn play(&self, audio: AudioFrame) -> Result<PlaybackId, RtpError> {
        if audio.sample_rate != SAMPLE_RATE {
            return Err(RtpError::WrongRate(audio.sample_rate));
        }
        Ok(self.engine()?.play(audio.samples)?)
    }

    /// Queues pre-encoded G.711 codes (8 kHz, one per sample), sent as they are when
    /// `law` is the call's codec (transcoded otherwise). Same completion event as `play`.
    pub fn play_encoded(&self, law: Law, codes: Vec<u8>) -> Result<PlaybackId, RtpError> {
        Ok(self.engine()?.play_encoded(law, codes)?)
    }

    /// Empties the playback queue at once (barge-in); says what was cancelled.
    pub fn stop_playback(&self) -> Result<PlaybackStopped, RtpError> {
        Ok(self.engine()?.stop_playback())
    }

    /// True while audio or DTMF is queued for sending.
    pub fn is_playing(&self) -> bool {
        self.engine().map(|e| e.is_playing()).unwrap_or(false)
    }

    /// Waits (at most until `deadline`) for everything queued to have been sent.
    /// Returns true when playback is idle.
    pub fn wait_playback_idle(&self, deadline: Instant) -> bool {
        loop {
            if !self.is_playing() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(5)));
        }
    }

    /// Sends a DTMF key (`0-9 * # A-D`) held for `duration`, as RFC 4733 events.
    pub fn send_dtmf(&self, digit: char, duration: Duration) -> Result<(), RtpError> {
        Ok(self.engine()?.send_dtmf(digit, duration)?)
    }

    /// Re-targets after a re-INVITE: new peer address, codec and telephone-event type;
    /// the source latch opens again so a new SSRC is accepted.
    pub fn retarget(
        &self,
        remote: Option<SocketAddr>,
        law: Law,
        payload_type: u8,
        telephone_event: Option<u8>,
    ) -> Result<(), RtpError> {
        self.engine()?
            .retarget(remote, law, payload_type, telephone_event);
        Ok(())
    }

    /// The counters so far (after shutdown: the final ones).
    pub fn stats(&self) -> RtpStats {
        match &self.report {
            Some(r) => r.stats.clone(),
            None => lock(&self.shared.engine).stats(),
        }
    }

    /// Stops the socket thread (joined by `deadline`), closes the sockets, finishes the
    /// recording and returns the final counters. Idempotent: later calls return the
    /// same report.
    pub fn shutdown(&mut self, deadline: Instant) -> RtpReport {
        if let Some(r) = &self.report {
            return r.clone();
        }
        let t0 = Instant::now();
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the thread out of its epoll wait: an empty datagram to our own port.
        if let Some(w) = &self.waker {
            let ip = match self.local.ip() {
                IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            let _ = w.send_to(&[], SocketAddr::new(ip, self.local.port()));
        }
        let timeout = deadline.saturating_duration_since(t0);
        let finished = self.done.recv_timeout(timeout).is_ok();
        let mut recording = None;
        let mut joined = false;
        if finished && let Some(t) = self.thread.take() {
            match t.join() {
                Ok(exit) => recording = exit.recording,
                Err(_) => tracing::error!(local = %self.local, "RTP thread panicked"),
            }
            joined = true;
        }
        if !finished {
            tracing::warn!(local = %self.local, "RTP thread did not stop before the deadline");
        }
        let report = RtpReport {
            stats: lock(&self.shared.engine).stats(),
            recording,
            thread_joined: joined,
            took: t0.elapsed(),
        };
        tracing::info!(local = %self.local, packets_in = report.stats.packets_received,
            packets_out = report.stats.packets_sent, jitter_ms = report.stats.jitter_ms,
            playout_delay = ?report.stats.playout_delay, playout_grown = report.stats.playout_grown,
            playout_shrunk = report.stats.playout_shrunk, took = ?report.took,
            "RTP session shutdown complete");
        if joined {
            self.waker = None; // closes our copy of the socket: the port is free now
            self.report = Some(report.clone());
        }
        report
    }
}

impl Drop for RtpSession {
    fn drop(&mut self) {
        self.shutdown(Instant::now() + Duration::from_secs(1));
    }
}

const RTP_TOKEN: Token = Token(0);
const RTCP_TOKEN: Token = Token(1);

struct Driver {
    shared: Arc<Shared>,
    poll: Poll,
    rtp: mio::net::UdpSocket,
    rtcp: Option<mio::net::UdpSocket>,
    frame_tx: Sender<ReceivedFrame>,
    frame_rx: Receiver<ReceivedFrame>,
    event_tx: Sender<RtpEvent>,
    event_rx: Receiver<RtpEvent>,
    recorder: Option<Recorder>,
    record_buf: Vec<i16>,
}

/// Sends on a bounded channel without ever blocking: when full, drops the oldest.
fn send_drop_oldest<T>(tx: &Sender<T>, rx: &Receiver<T>, mut item: T) -> u64 {
    let mut dropped = 0;
    loop {
        match tx.try_send(item) {
            Ok(()) => return dropped,
            Err(TrySendError::Full(back)) => {
                if rx.try_recv().is_ok() {
                    dropped += 1;
                }
                item = back;
            }
            Err(TrySendError::Disconnected(_)) => return dropped,
        }
    }
}

impl Driver {
    fn run(mut self) -> ThreadExit {
        let mut buf = vec![0u8; 2048];
        let mut events = Events::with_capacity(4);
        let max_wait = Duration::from_millis(20);
        while !self.shared.stop.load(Ordering::SeqCst) {
            let next = lock(&self.shared.engine).poll_timeout();
            let wait = next.saturating_duration_since(Instant::now()).min(max_wait);
            if let Err(e) = self.poll.poll(&mut events, Some(wait))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                tracing::warn!(error = %e, "RTP poll failed");
                std::thread::sleep(wait);
            }
            if self.shared.stop.load(Ordering::SeqCst) {
                break;
            }
            // Edge-triggered readiness: read until the socket is empty (bounded; the
            // next tick reads on anyway).
            for _ in 0..256 {
                match self.rtp.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let data = buf.get(..n).unwrap_or_default();
                        lock(&self.shared.engine).handle_rtp(Instant::now(), from, data);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // ICMP port unreachable from an earlier send shows up here on Linux.
                        tracing::trace!(error = %e, "RTP receive error");
                    }
                }
            }
            if let Some(rtcp) = &self.rtcp {
                for _ in 0..64 {
                    match rtcp.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            let data = buf.get(..n).unwrap_or_default();
                            lock(&self.shared.engine).handle_rtcp(Instant::now(), from, data);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => tracing::trace!(error = %e, "RTCP receive error"),
                    }
                }
            }
            self.pump(Instant::now());
        }
        // Final flush so the recording has everything up to now.
        self.pump(Instant::now());
        let recording = self
            .recorder
            .take()
            .map(|r| r.finish().map_err(|e| e.to_string()));
        ThreadExit { recording }
    }

    fn pump(&mut self, now: Instant) {
        let mut engine = lock(&self.shared.engine);
        engine.handle_timeout(now);
        let mut send_errors = 0;
        while let Some(t) = engine.poll_transmit() {
            let sock = match (&self.rtcp, t.rtcp) {
                (Some(r), true) => r,
                _ => &self.rtp,
            };
            if sock.send_to(&t.data, t.to).is_err() {
                send_errors += 1;
            }
        }
        for _ in 0..send_errors {
            engine.count_send_error();
        }
        let (mut f_drop, mut e_drop) = (0, 0);
        while let Some(ev) = engine.poll_event() {
            let ev = match ev {
                MediaEvent::Frame(f) => {
                    f_drop += send_drop_oldest(&self.frame_tx, &self.frame_rx, f);
                    continue;
                }
                MediaEvent::Dtmf(d) => RtpEvent::Dtmf(d),
                MediaEvent::PlaybackFinished(p) => RtpEvent::PlaybackFinished(p),
                MediaEvent::SourceLatched { addr, ssrc } => RtpEvent::SourceLatched { addr, ssrc },
            };
            e_drop += send_drop_oldest(&self.event_tx, &self.event_rx, ev);
        }
        engine.count_overflow(f_drop, e_drop);
        if self.recorder.is_some() {
            engine.take_recording(&mut self.record_buf);
        }
        drop(engine);
        if let Some(r) = self.recorder.as_mut()
            && !self.record_buf.is_empty()
        {
            if let Err(e) = r.write_interleaved(&self.record_buf) {
                tracing::warn!(error = %e, "recording stopped");
                self.recorder = None;
            }
            self.record_buf.clear();
        }
    }
}
