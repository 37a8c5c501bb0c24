//! The sans-IO media engine of one call: everything an [`crate::RtpSession`] does,
//! without sockets, threads or clocks.
//!
//! Drive it like this (the session's socket thread does exactly this):
//! 1. [`MediaEngine::handle_rtp`] / [`MediaEngine::handle_rtcp`] for each datagram.
//! 2. [`MediaEngine::handle_timeout`] whenever [`MediaEngine::poll_timeout`] is reached.
//! 3. Drain [`MediaEngine::poll_transmit`] (datagrams to send) and
//!    [`MediaEngine::poll_event`] (caller audio, DTMF, playback finished, ...).
//!
//! One 20 ms clock ([`Pacer`]) drives both directions: at each tick one caller frame is
//! played out of the jitter buffer and one bot frame is sent, so the two channels of a
//! recording stay aligned sample for sample.
//!
//! **Loss concealment**: a missing packet is replaced by the last decoded frame at half
//! the level, a second one at a quarter, a third at an eighth; from the fourth on,
//! silence. Between talkspurts (no packets at all) the application receives silence
//! frames marked [`FrameKind::Silence`], so its timeline never has gaps.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callbot_audio::g711::Law;

use crate::dtmf::{DtmfEvent, DtmfReceiver, DtmfSender};
use crate::jitter::{JitterBuffer, JitterConfig, Playout};
use crate::pacer::Pacer;
use crate::packet::{self, Classified, NotRtp, RtpPacket};
use crate::rtcp::{self, ReportBlock, SenderInfo};
use crate::stats::RtpStats;

/// Samples per 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// The frame interval.
pub const FRAME_INTERVAL: Duration = Duration::from_millis(20);
/// G.711 sample rate.
pub const SAMPLE_RATE: u32 = 8000;
/// Largest audio payload accepted (60 ms of G.711).
const MAX_AUDIO_PAYLOAD: usize = 480;
/// A caller packet whose samples all stay below this magnitude (about -42 dBFS) is a
/// pause an adaptive jitter buffer may shorten.
const QUIET_PEAK: u16 = 256;

/// After a re-INVITE that moved the media, how many packets from the old peer's
/// addresses the reopened symmetric latch refuses before it accepts them after all (a
/// peer whose SDP address changed but whose packets still come from the same place):
/// one second of 20 ms packets.
pub const STALE_PACKETS: u32 = 50;

/// How the engine picks the peer's media source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latching {
    /// Accept RTP only from the address in the SDP (exact IP and port) and send there.
    SdpAddress,
    /// Symmetric RTP (RFC 4961) for peers behind NAT: the first valid packet from any
    /// address fixes the source, and media is sent back to where it came from. After a
    /// re-INVITE that moves the media, the old peer's addresses (its SDP address and the
    /// source it was latched to) may not take the reopened latch for the next
    /// [`STALE_PACKETS`] packets they send: their packets still queued in the socket or
    /// in flight would otherwise keep the media pointed at the old peer for the rest of
    /// the call.
    Symmetric,
}

/// Media parameters of one call, usually from the SDP negotiation.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaConfig {
    /// The codec.
    pub law: Law,
    /// The RTP payload type for audio (normally `law.payload_type()`).
    pub payload_type: u8,
    /// The telephone-event payload type, if negotiated (often 101).
    pub telephone_event: Option<u8>,
    /// The peer's RTP address from the SDP (`None` until known: then only symmetric
    /// latching can find it).
    pub remote: Option<SocketAddr>,
    /// Source latching rule.
    pub latching: Latching,
    /// Jitter buffer settings.
    pub jitter: JitterConfig,
    /// Send silence packets while nothing is played (keeps NAT bindings open and peers
    /// that record on packet arrival in step). Default true.
    pub send_silence: bool,
    /// RTCP report interval (default 5 s).
    pub rtcp_interval: Duration,
    /// RTCP on the RTP port (rtcp-mux, RFC 5761) instead of RTP port + 1.
    pub rtcp_mux: bool,
    /// CNAME in RTCP SDES.
    pub cname: String,
    /// Keep interleaved stereo samples (caller left, bot right) for a recorder.
    pub record: bool,
}

impl MediaConfig {
    /// Defaults for `law` towards `remote`: payload type of the law, telephone-event
    /// 101, symmetric latching, 60 ms jitter buffer, RTCP every 5 s on port + 1.
    pub fn new(law: Law, remote: Option<SocketAddr>) -> Self {
        MediaConfig {
            law,
            payload_type: law.payload_type(),
            telephone_event: Some(101),
            remote,
            latching: Latching::Symmetric,
            jitter: JitterConfig::default(),
            send_silence: true,
            rtcp_interval: Duration::from_secs(5),
            rtcp_mux: false,
            cname: "callbot@localhost".to_string(),
            record: false,
        }
    }
}

/// What a delivered caller frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Decoded from received packets.
    Audio,
    /// Loss concealment (at least partly).
    Concealed,
    /// Nothing was received for this slot (between talkspurts, DTMF, or a pause).
    Silence,
}

/// One 20 ms frame of the caller's audio (8 kHz mono, 160 samples).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedFrame {
    /// The samples, with their rate.
    pub audio: callbot_audio::AudioFrame,
    /// Where they came from.
    pub kind: FrameKind,
    /// The tick this frame was played out on (20 ms per tick since session start).
    pub tick: u64,
}

/// Identifies one `play` request.
pub type PlaybackId = u64;

/// One finished (or cancelled) playback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaybackFinished {
    /// The request.
    pub id: PlaybackId,
    /// Samples of it that were sent.
    pub played_samples: u64,
    /// Samples of it that were discarded (by `stop_playback`).
    pub dropped_samples: u64,
    /// True when it played to the end.
    pub completed: bool,
}

/// What `stop_playback` discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlaybackStopped {
    /// Requests cancelled (including the one being played).
    pub cancelled: u32,
    /// Samples of those requests already sent.
    pub played: Duration,
    /// Samples discarded.
    pub dropped: Duration,
}

/// Something for the application.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    /// A 20 ms frame of caller audio.
    Frame(ReceivedFrame),
    /// A DTMF key press.
    Dtmf(DtmfEvent),
    /// A playback request finished or was cancelled.
    PlaybackFinished(PlaybackFinished),
    /// The session latched onto the peer's media source.
    SourceLatched {
        /// The peer's address.
        addr: SocketAddr,
        /// Its SSRC.
        ssrc: u32,
    },
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// Bytes.
    pub data: Vec<u8>,
    /// True for RTCP (send from the RTCP socket unless muxed).
    pub rtcp: bool,
}

/// Errors of engine requests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The character is not a DTMF key.
    #[error("not a DTMF key: {0:?}")]
    NotADtmfKey(char),
    /// telephone-event was not negotiated.
    #[error("telephone-event was not negotiated for this call")]
    NoTelephoneEvent,
    /// Too much audio queued.
    #[error("playback queue full ({0} s queued)")]
    QueueFull(u64),
}

#[derive(Debug)]
struct Job {
    id: PlaybackId,
    media: JobMedia,
    pos: usize,
}

#[derive(Debug)]
enum JobMedia {
    /// 8 kHz PCM, encoded when sent.
    Pcm(Vec<i16>),
    /// G.711 codes sent as they are (transcoded only if the call's law differs).
    Encoded(Law, Vec<u8>),
}

impl JobMedia {
    fn len(&self) -> usize {
        match self {
            JobMedia::Pcm(v) => v.len(),
            JobMedia::Encoded(_, v) => v.len(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum LatchState {
    Open,
    Latched { addr: SocketAddr, ssrc: u32 },
}

#[derive(Debug, Default)]
struct RecvStats {
    base: Option<u64>,
    highest: Option<u64>,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    jitter: f64,
    last_transit: Option<i64>,
    last_sr: Option<(u32, Instant)>,
}

/// Most playback audio that may be queued (10 minutes).
const MAX_QUEUED_SAMPLES: usize = 10 * 60 * SAMPLE_RATE as usize;

/// The engine. See the module documentation.
#[derive(Debug)]
pub struct MediaEngine {
    cfg: MediaConfig,
    epoch: Instant,
    wall_epoch: SystemTime,
    pacer: Pacer,
    jitter: JitterBuffer,
    latch: LatchState,
    latched_ssrc_before: Option<u32>,
    /// The old peer's addresses after a re-INVITE that moved the media, and how many
    /// more of their packets the open latch refuses.
    stale: ([Option<SocketAddr>; 2], u32),
    dest: Option<SocketAddr>,
    dtmf_rx: DtmfReceiver,
    // receive playout
    rx_fifo: VecDeque<i16>,
    rx_real: bool,
    rx_concealed: bool,
    last_frame: [i16; FRAME_SAMPLES],
    conceal_run: u32,
    started: bool,
    recv: RecvStats,
    // send
    ssrc: u32,
    seq: u16,
    ts0: u32,
    jobs: VecDeque<Job>,
    queued: usize,
    next_id: PlaybackId,
    tx_idle: bool,
    dtmf_tx: VecDeque<DtmfSender>,
    dtmf_ts: Option<u32>,
    sent_since_report: bool,
    next_rtcp: Instant,
    // output
    transmits: VecDeque<Transmit>,
    events: VecDeque<MediaEvent>,
    record: Vec<i16>,
    stats: RtpStats,
    scratch: Vec<u8>,
}

fn extend_seq(highest: Option<u64>, seq: u16) -> u64 {
    match highest {
        None => (1 << 32) + u64::from(seq),
        Some(h) => h.saturating_add_signed(i64::from(seq.wrapping_sub(h as u16) as i16)),
    }
}

impl MediaEngine {
    /// A new engine whose clock starts at `now`; `wall` is the wall-clock time at
    /// `now` (for RTCP NTP timestamps); `seed` gives the random SSRC, first sequence
    /// number and first timestamp (RFC 3550 requires them random).
    pub fn new(cfg: MediaConfig, now: Instant, wall: SystemTime, seed: [u32; 3]) -> Self {
        let dest = cfg.remote;
        MediaEngine {
            jitter: JitterBuffer::new(cfg.jitter),
            pacer: Pacer::new(now, FRAME_INTERVAL),
            epoch: now,
            wall_epoch: wall,
            latch: LatchState::Open,
            latched_ssrc_before: None,
            stale: ([None; 2], 0),
            dest,
            dtmf_rx: DtmfReceiver::new(),
            rx_fifo: VecDeque::with_capacity(4 * FRAME_SAMPLES),
            rx_real: false,
            rx_concealed: false,
            last_frame: [0; FRAME_SAMPLES],
            conceal_run: 0,
            started: false,
            recv: RecvStats::default(),
            ssrc: seed[0],
            seq: seed[1] as u16,
            ts0: seed[2],
            jobs: VecDeque::new(),
            queued: 0,
            next_id: 1,
            tx_idle: true,
            dtmf_tx: VecDeque::new(),
            dtmf_ts: None,
            sent_since_report: false,
            next_rtcp: now + cfg.rtcp_interval,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            record: Vec::new(),
            stats: RtpStats::default(),
            scratch: Vec::with_capacity(200),
            cfg,
        }
    }

    /// Our SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The counters so far.
    pub fn stats(&self) -> RtpStats {
        let mut s = self.stats.clone();
        let j = self.jitter.stats();
        s.late = j.late;
        s.duplicates = j.duplicates;
        s.out_of_window = j.out_of_window;
        s.resyncs = j.resyncs;
        s.concealed = j.concealed;
        s.playout_delay = self.jitter.target_depth();
        s.playout_shrunk = j.shrunk;
        s.playout_grown = j.grown;
        s.clock_skips = self.pacer.skipped();
        if let (Some(b), Some(h)) = (self.recv.base, self.recv.highest) {
            let expected = h + 1 - b;
            s.packets_lost = expected as i64 - self.recv.received as i64;
        }
        s.jitter_ms = self.recv.jitter / f64::from(SAMPLE_RATE) * 1000.0;
        s
    }

    /// Counts frames the driver had to drop from a full channel.
    pub fn count_overflow(&mut self, frames: u64, events: u64) {
        self.stats.overflow_drops += frames;
        self.stats.events_dropped += events;
    }

    /// Counts failed sends.
    pub fn count_send_error(&mut self) {
        self.stats.send_errors += 1;
    }

    /// Where media is sent (SDP address or latched source).
    pub fn destination(&self) -> Option<SocketAddr> {
        self.dest
    }

    /// The latched source, if any.
    pub fn latched(&self) -> Option<(SocketAddr, u32)> {
        match self.latch {
            LatchState::Latched { addr, ssrc } => Some((addr, ssrc)),
            LatchState::Open => None,
        }
    }

    /// Re-targets after a re-INVITE: new peer address (and possibly codec); the latch
    /// opens again so the next valid packet (possibly with a new SSRC) is accepted. When
    /// the address moved, the old peer's addresses are refused for a while (see
    /// [`Latching::Symmetric`]).
    pub fn retarget(
        &mut self,
        remote: Option<SocketAddr>,
        law: Law,
        payload_type: u8,
        telephone_event: Option<u8>,
    ) {
        self.stale = if remote.is_some() && remote != self.cfg.remote {
            let latched = match self.latch {
                LatchState::Latched { addr, .. } => Some(addr),
                LatchState::Open => None,
            };
            (
                [self.cfg.remote, latched].map(|a| a.filter(|a| Some(*a) != remote)),
                STALE_PACKETS,
            )
        } else {
            ([None; 2], 0)
        };
        self.cfg.remote = remote;
        self.cfg.law = law;
        self.cfg.payload_type = payload_type;
        self.cfg.telephone_event = telephone_event;
        if remote.is_some() {
            self.dest = remote;
        }
        self.latch = LatchState::Open;
    }

    /// Queues 8 kHz PCM to send after what is already queued. The matching
    /// [`MediaEvent::PlaybackFinished`] comes when its last packet has been sent.
    pub fn play(&mut self, pcm: Vec<i16>) -> Result<PlaybackId, MediaError> {
        self.enqueue(JobMedia::Pcm(pcm))
    }

    /// Queues pre-encoded G.711 (one code per sample, 8 kHz) after what is already
    /// queued. Codes in the call's law go on the wire unchanged; another law is
    /// transcoded. Completion is reported like [`MediaEngine::play`].
    pub fn play_encoded(&mut self, law: Law, codes: Vec<u8>) -> Result<PlaybackId, MediaError> {
        self.enqueue(JobMedia::Encoded(law, codes))
    }

    fn enqueue(&mut self, media: JobMedia) -> Result<PlaybackId, MediaError> {
        let len = media.len();
        if self.queued + len > MAX_QUEUED_SAMPLES {
            return Err(MediaError::QueueFull((self.queued / SAMPLE_RATE as usize) as u64));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.queued += len;
        self.jobs.push_back(Job { id, media, pos: 0 });
        Ok(id)
    }

    /// Samples queued and not yet sent.
    pub fn queued_samples(&self) -> usize {
        self.queued
    }

    /// True while playback audio or DTMF is queued.
    pub fn is_playing(&self) -> bool {
        !self.jobs.is_empty() || !self.dtmf_tx.is_empty()
    }

    /// Discards all queued playback at once (barge-in).
    pub fn stop_playback(&mut self) -> PlaybackStopped {
        let mut out = PlaybackStopped::default();
        let mut played = 0u64;
        let mut dropped = 0u64;
        for job in self.jobs.drain(..) {
            let p = job.pos as u64;
            let d = (job.media.len() - job.pos.min(job.media.len())) as u64;
            played += p;
            dropped += d;
            out.cancelled += 1;
            self.events
                .push_back(MediaEvent::PlaybackFinished(PlaybackFinished {
                    id: job.id,
                    played_samples: p,
                    dropped_samples: d,
                    completed: false,
                }));
        }
        self.queued = 0;
        self.stats.frames_dropped += dropped.div_ceil(FRAME_SAMPLES as u64);
        out.played = Duration::from_micros(played * 1_000_000 / u64::from(SAMPLE_RATE));
        out.dropped = Duration::from_micros(dropped * 1_000_000 / u64::from(SAMPLE_RATE));
        out
    }

    /// Queues a DTMF key press (RFC 4733) of `duration`; audio playback pauses while it
    /// is sent.
    pub fn send_dtmf(&mut self, digit: char, duration: Duration) -> Result<(), MediaError> {
        if self.cfg.telephone_event.is_none() {
            return Err(MediaError::NoTelephoneEvent);
        }
        let s = DtmfSender::new(digit, duration).ok_or(MediaError::NotADtmfKey(digit))?;
        self.dtmf_tx.push_back(s);
        Ok(())
    }

    /// When [`MediaEngine::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Instant {
        self.pacer.next_due().min(self.next_rtcp)
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    /// Moves the recorded stereo samples (caller left, bot right, interleaved) into
    /// `out` (appended). Empty unless `record` is set in the config.
    pub fn take_recording(&mut self, out: &mut Vec<i16>) {
        out.append(&mut self.record);
    }

    /// Handles a datagram that arrived on the RTP port.
    pub fn handle_rtp(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let pkt = match packet::classify(data) {
            Classified::Rtp(p) => p,
            Classified::NotRtp(NotRtp::Rtcp) if self.cfg.rtcp_mux => {
                self.handle_rtcp(now, from, data);
                return;
            }
            Classified::NotRtp(_) => {
                self.stats.discarded_non_rtp += 1;
                return;
            }
        };
        let is_event = Some(pkt.payload_type) == self.cfg.telephone_event;
        let is_audio = pkt.payload_type == self.cfg.payload_type;
        if !(is_event || is_audio && !pkt.payload.is_empty() && pkt.payload.len() <= MAX_AUDIO_PAYLOAD) {
            self.stats.discarded_payload += 1;
            return;
        }
        match self.latch {
            LatchState::Latched { addr, ssrc } => {
                if addr != from || ssrc != pkt.ssrc {
                    self.stats.foreign_source += 1;
                    return;
                }
            }
            LatchState::Open => {
                if self.cfg.latching == Latching::SdpAddress && self.cfg.remote != Some(from) {
                    self.stats.foreign_source += 1;
                    return;
                }
                // After a re-INVITE, a packet of the old peer (still queued in the
                // socket, or sent before it moved) must not take the reopened latch:
                // media would go to the old address for the rest of the call.
                let (old, left) = &mut self.stale;
                if *left > 0 && old.contains(&Some(from)) {
                    *left -= 1;
                    self.stats.foreign_source += 1;
                    return;
                }
                self.latch_onto(from, pkt.ssrc);
            }
        }
        self.stats.packets_received += 1;
        self.stats.bytes_received += pkt.payload.len() as u64;
        self.update_recv_stats(now, &pkt, is_audio);
        if is_event {
            self.dtmf_rx.on_packet(now, pkt.timestamp, &pkt.payload);
            self.drain_dtmf(now);
        }
        self.jitter.push(now, pkt);
    }

    fn latch_onto(&mut self, from: SocketAddr, ssrc: u32) {
        let previous = self.latched_ssrc_before.replace(ssrc);
        if previous.is_some_and(|p| p != ssrc) {
            self.stats.ssrc_changes += 1;
            self.jitter.reset();
            self.dtmf_rx.reset();
            self.recv = RecvStats::default();
        }
        self.latch = LatchState::Latched { addr: from, ssrc };
        self.stale = ([None; 2], 0);
        if self.cfg.latching == Latching::Symmetric {
            self.dest = Some(from);
        }
        tracing::debug!(%from, ssrc, "RTP source latched");
        self.events
            .push_back(MediaEvent::SourceLatched { addr: from, ssrc });
    }

    fn drain_dtmf(&mut self, now: Instant) {
        while let Some(ev) = self.dtmf_rx.poll(now) {
            self.stats.dtmf_received += 1;
            self.events.push_back(MediaEvent::Dtmf(ev));
        }
    }

    fn update_recv_stats(&mut self, now: Instant, pkt: &RtpPacket, is_audio: bool) {
        let r = &mut self.recv;
        let ext = extend_seq(r.highest, pkt.sequence);
        r.base = Some(r.base.map_or(ext, |b| b.min(ext)));
        r.highest = Some(r.highest.map_or(ext, |h| h.max(ext)));
        r.received += 1;
        if is_audio {
            let arrival =
                (now.duration_since(self.epoch).as_micros() * u128::from(SAMPLE_RATE) / 1_000_000) as i64;
            let transit = arrival.wrapping_sub(i64::from(pkt.timestamp));
            if let Some(last) = r.last_transit {
                let d = transit.wrapping_sub(last).unsigned_abs() as f64;
                // Ignore absurd jumps (new talkspurt timestamp base, re-INVITE).
                if d < f64::from(SAMPLE_RATE) * 10.0 {
                    r.jitter += (d - r.jitter) / 16.0;
                }
            }
            r.last_transit = Some(transit);
            let jitter = Duration::from_secs_f64(r.jitter / f64::from(SAMPLE_RATE));
            self.jitter.observe_jitter(jitter);
        }
    }

    /// True for an audio packet whose every sample is below [`QUIET_PEAK`]: the
    /// adaptive jitter buffer may drop it to shrink its delay.
    fn quiet(&self, p: &RtpPacket) -> bool {
        p.payload_type == self.cfg.payload_type
            && p.payload
                .iter()
                .all(|&c| self.cfg.law.decode(c).unsigned_abs() < QUIET_PEAK)
    }

    /// Handles a datagram that arrived on the RTCP port (or an RTCP packet on a muxed
    /// RTP port).
    pub fn handle_rtcp(&mut self, now: Instant, _from: SocketAddr, data: &[u8]) {
        let Some(reports) = rtcp::parse(data) else {
            self.stats.rtcp_discarded += 1;
            return;
        };
        for r in reports {
            self.stats.rtcp_received += 1;
            if let Some(si) = r.sender {
                self.recv.last_sr = Some(((si.ntp >> 16) as u32, now));
            }
            for b in r.blocks.iter().filter(|b| b.ssrc == self.ssrc) {
                self.stats.remote_fraction_lost = Some(f32::from(b.fraction_lost) / 256.0);
                self.stats.remote_jitter_ms = Some(f64::from(b.jitter) / f64::from(SAMPLE_RATE) * 1000.0);
                if b.last_sr != 0 {
                    let now_mid = (self.ntp(now) >> 16) as u32;
                    let rtt = now_mid
                        .wrapping_sub(b.last_sr)
                        .wrapping_sub(b.delay_since_last_sr);
                    if rtt < 65536 * 10 {
                        self.stats.round_trip =
                            Some(Duration::from_micros(u64::from(rtt) * 1_000_000 / 65536));
                    }
                }
            }
        }
    }

    fn ntp(&self, now: Instant) -> u64 {
        let wall = self.wall_epoch + now.duration_since(self.epoch);
        let since = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs() + 2_208_988_800;
        let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
        (secs << 32) | frac
    }

    /// Runs every tick (and RTCP report) due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(tick) = self.pacer.poll(now) {
            self.tick(tick.index, now);
        }
        self.drain_dtmf(now);
        if now >= self.next_rtcp {
            self.next_rtcp = now + self.cfg.rtcp_interval;
            self.send_rtcp(now);
        }
    }

    fn tick(&mut self, index: u64, now: Instant) {
        let caller = self.play_out(index, now);
        let bot = self.send_tick(index);
        if self.cfg.record {
            for (c, b) in caller.iter().zip(bot.iter()) {
                self.record.push(*c);
                self.record.push(*b);
            }
        }
    }

    fn play_out(&mut self, index: u64, now: Instant) -> [i16; FRAME_SAMPLES] {
        while self.rx_fifo.len() < FRAME_SAMPLES {
            // An adaptive buffer holding more delay than it needs sheds it in a pause.
            if self.jitter.surplus() && self.jitter.peek().is_some_and(|p| self.quiet(p)) {
                self.jitter.skip();
            }
            match self.jitter.pop(now) {
                Playout::Frame(p) => {
                    if p.payload_type == self.cfg.payload_type {
                        let mut buf = Vec::with_capacity(p.payload.len());
                        self.cfg.law.decode_into(&p.payload, &mut buf);
                        self.rx_fifo.extend(buf);
                        self.rx_real = true;
                        self.conceal_run = 0;
                    } else {
                        // telephone-event: the slot is silent audio
                        self.rx_fifo.extend([0i16; FRAME_SAMPLES]);
                    }
                    self.started = true;
                }
                Playout::Concealed => {
                    self.conceal_run += 1;
                    self.rx_concealed = true;
                    let shift = self.conceal_run.min(15);
                    if self.conceal_run <= 3 {
                        self.rx_fifo.extend(self.last_frame.iter().map(|s| s >> shift));
                    } else {
                        self.rx_fifo.extend([0i16; FRAME_SAMPLES]);
                    }
                    break;
                }
                Playout::Nothing => break,
            }
        }
        // Never let a burst of long packets build latency.
        while self.rx_fifo.len() > 3 * FRAME_SAMPLES {
            self.rx_fifo.pop_front();
        }
        let mut frame = [0i16; FRAME_SAMPLES];
        let have = self.rx_fifo.len().min(FRAME_SAMPLES);
        for (dst, src) in frame.iter_mut().zip(self.rx_fifo.drain(..have)) {
            *dst = src;
        }
        if !self.started {
            return frame;
        }
        let kind = if self.rx_concealed {
            FrameKind::Concealed
        } else if self.rx_real {
            FrameKind::Audio
        } else {
            FrameKind::Silence
        };
        if kind == FrameKind::Audio {
            self.last_frame = frame;
        }
        self.rx_real = false;
        self.rx_concealed = false;
        self.stats.frames_delivered += 1;
        self.events.push_back(MediaEvent::Frame(ReceivedFrame {
            audio: callbot_audio::AudioFrame::new(SAMPLE_RATE, frame.to_vec()),
            kind,
            tick: index,
        }));
        frame
    }

    fn send_tick(&mut self, index: u64) -> [i16; FRAME_SAMPLES] {
        let ts = self
            .ts0
            .wrapping_add((index as u32).wrapping_mul(FRAME_SAMPLES as u32));
        let mut frame = [0i16; FRAME_SAMPLES];
        // DTMF first: audio waits.
        if let (Some(pt), Some(sender)) = (self.cfg.telephone_event, self.dtmf_tx.front_mut()) {
            let next = sender.next_packet();
            let done = sender.is_done();
            if let Some(ep) = next {
                let event_ts = *self.dtmf_ts.get_or_insert(ts);
                let payload = ep.payload.to_bytes();
                self.emit_rtp(pt, ep.marker, event_ts, &payload);
                if done {
                    self.dtmf_tx.pop_front();
                    self.dtmf_ts = None;
                    self.stats.dtmf_sent += 1;
                }
                self.tx_idle = true;
                return frame;
            }
            self.dtmf_tx.pop_front();
            self.dtmf_ts = None;
        }
        let law = self.cfg.law;
        let mut payload = std::mem::take(&mut self.scratch);
        payload.clear();
        let mut filled = 0;
        while filled < FRAME_SAMPLES {
            let Some(job) = self.jobs.front_mut() else { break };
            let total = job.media.len();
            let n = total.saturating_sub(job.pos).min(FRAME_SAMPLES - filled);
            let range = job.pos..job.pos + n;
            let dst = frame.get_mut(filled..filled + n).unwrap_or_default();
            match &job.media {
                JobMedia::Pcm(v) => {
                    let src = v.get(range).unwrap_or_default();
                    for (d, &x) in dst.iter_mut().zip(src) {
                        *d = x;
                    }
                    law.encode_into(src, &mut payload);
                }
                JobMedia::Encoded(job_law, codes) => {
                    let src = codes.get(range).unwrap_or_default();
                    for (d, &c) in dst.iter_mut().zip(src) {
                        *d = job_law.decode(c);
                    }
                    if *job_law == law {
                        payload.extend_from_slice(src);
                    } else {
                        law.encode_into(dst, &mut payload);
                    }
                }
            }
            job.pos += n;
            filled += n;
            self.queued = self.queued.saturating_sub(n);
            if job.pos >= total {
                let done = PlaybackFinished {
                    id: job.id,
                    played_samples: total as u64,
                    dropped_samples: 0,
                    completed: true,
                };
                self.jobs.pop_front();
                self.events.push_back(MediaEvent::PlaybackFinished(done));
            }
        }
        if filled > 0 {
            // the end of the last request: pad the frame with silence
            payload.resize(FRAME_SAMPLES, law.silence_code());
            let marker = self.tx_idle;
            self.tx_idle = false;
            self.stats.frames_played += 1;
            self.emit_rtp(self.cfg.payload_type, marker, ts, &payload);
        } else {
            self.tx_idle = true;
            if self.cfg.send_silence {
                payload.resize(FRAME_SAMPLES, law.silence_code());
                // The first packet of the stream is marked; later silence is not a talkspurt.
                let marker = self.stats.packets_sent == 0;
                self.emit_rtp(self.cfg.payload_type, marker, ts, &payload);
            }
        }
        self.scratch = payload;
        frame
    }

    fn emit_rtp(&mut self, pt: u8, marker: bool, ts: u32, payload: &[u8]) {
        let Some(to) = self.dest else { return };
        let mut data = Vec::with_capacity(12 + payload.len());
        packet::write_rtp(&mut data, pt, marker, self.seq, ts, self.ssrc, payload);
        self.seq = self.seq.wrapping_add(1);
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += payload.len() as u64;
        self.sent_since_report = true;
        self.transmits.push_back(Transmit {
            to,
            data,
            rtcp: false,
        });
    }

    fn send_rtcp(&mut self, now: Instant) {
        let Some(dest) = self.dest else { return };
        let to = if self.cfg.rtcp_mux {
            dest
        } else {
            SocketAddr::new(dest.ip(), dest.port().wrapping_add(1))
        };
        let sender = self.sent_since_report.then(|| {
            let elapsed = now.duration_since(self.epoch);
            let ts = self
                .ts0
                .wrapping_add((elapsed.as_micros() * u128::from(SAMPLE_RATE) / 1_000_000) as u32);
            SenderInfo {
                ntp: self.ntp(now),
                rtp_timestamp: ts,
                packets: self.stats.packets_sent as u32,
                octets: self.stats.bytes_sent as u32,
            }
        });
        self.sent_since_report = false;
        let block = match (self.latched(), self.recv.base, self.recv.highest) {
            (Some((_, ssrc)), Some(base), Some(highest)) => {
                let r = &mut self.recv;
                let expected = highest + 1 - base;
                let lost = expected as i64 - r.received as i64;
                let exp_int = expected - r.expected_prior;
                let rec_int = r.received - r.received_prior;
                r.expected_prior = expected;
                r.received_prior = r.received;
                let lost_int = exp_int as i64 - rec_int as i64;
                let fraction = if exp_int == 0 || lost_int <= 0 {
                    0
                } else {
                    ((lost_int << 8) / exp_int as i64).min(255) as u8
                };
                let (lsr, dlsr) = match r.last_sr {
                    Some((mid, at)) => (
                        mid,
                        (now.duration_since(at).as_micros() * 65536 / 1_000_000) as u32,
                    ),
                    None => (0, 0),
                };
                Some(ReportBlock {
                    ssrc,
                    fraction_lost: fraction,
                    cumulative_lost: lost.clamp(-0x80_0000, 0x7F_FFFF) as i32,
                    highest_seq: highest.wrapping_sub(1 << 32) as u32,
                    jitter: r.jitter as u32,
                    last_sr: lsr,
                    delay_since_last_sr: dlsr,
                })
            }
            _ => None,
        };
        let data = rtcp::build(self.ssrc, sender, block, &self.cfg.cname);
        self.stats.rtcp_sent += 1;
        self.transmits.push_back(Transmit { to, data, rtcp: true });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    struct Pair {
        a: MediaEngine,
        b: MediaEngine,
        a_addr: SocketAddr,
        b_addr: SocketAddr,
        t0: Instant,
        now: Instant,
        b_frames: Vec<ReceivedFrame>,
        b_events: Vec<MediaEvent>,
        a_events: Vec<MediaEvent>,
        a_packets: Vec<RtpPacket>,
    }

    impl Pair {
        fn new(law: Law) -> Pair {
            let t0 = Instant::now();
            let a_addr = addr("127.0.0.1:4000");
            let b_addr = addr("127.0.0.1:5000");
            let mut ca = MediaConfig::new(law, Some(b_addr));
            ca.send_silence = false;
            let cb = MediaConfig::new(law, Some(a_addr));
            let wall = SystemTime::now();
            Pair {
                a: MediaEngine::new(ca, t0, wall, [1, 65500, 4_294_967_000]),
                b: MediaEngine::new(cb, t0 + Duration::from_millis(7), wall, [2, 3, 4]),
                a_addr,
                b_addr,
                t0,
                now: t0,
                b_frames: Vec::new(),
                b_events: Vec::new(),
                a_events: Vec::new(),
                a_packets: Vec::new(),
            }
        }

        /// Advances time in 1 ms steps, delivering packets at once (`filter` may drop).
        fn run_for(&mut self, d: Duration, mut filter: impl FnMut(&Transmit) -> bool) {
            let end = self.now + d;
            while self.now < end {
                self.now += Duration::from_millis(1);
                let now = self.now;
                self.a.handle_timeout(now);
                self.b.handle_timeout(now);
                while let Some(t) = self.a.poll_transmit() {
                    if !t.rtcp
                        && let Classified::Rtp(p) = packet::classify(&t.data)
                    {
                        self.a_packets.push(p);
                    }
                    if filter(&t) {
                        if t.rtcp {
                            self.b.handle_rtcp(now, self.a_addr, &t.data);
                        } else {
                            self.b.handle_rtp(now, self.a_addr, &t.data);
                        }
                    }
                }
                while let Some(t) = self.b.poll_transmit() {
                    if t.rtcp {
                        self.a.handle_rtcp(now, self.b_addr, &t.data);
                    } else {
                        self.a.handle_rtp(now, self.b_addr, &t.data);
                    }
                }
                while let Some(ev) = self.b.poll_event() {
                    match ev {
                        MediaEvent::Frame(f) => self.b_frames.push(f),
                        other => self.b_events.push(other),
                    }
                }
                while let Some(ev) = self.a.poll_event() {
                    if !matches!(ev, MediaEvent::Frame(_)) {
                        self.a_events.push(ev);
                    }
                }
            }
        }
    }

    fn tone(n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| ((i as f64 * 0.3).sin() * 8000.0 + (i as f64 * 0.031).sin() * 3000.0) as i16)
            .collect()
    }

    fn audio_of(frames: &[ReceivedFrame]) -> Vec<i16> {
        frames
            .iter()
            .flat_map(|f| f.audio.samples.iter().copied())
            .collect()
    }

    #[test]
    fn played_audio_arrives_intact_with_correct_headers() {
        for law in [Law::Ulaw, Law::Alaw] {
            let mut p = Pair::new(law);
            let pcm = tone(8000 + 80); // 1.01 s: the last frame is padded
            let id = p.a.play(pcm.clone()).unwrap();
            p.run_for(Duration::from_millis(1500), |_| true);
            // sent packets: contiguous seq (wrapping), ts +160, one marker at the start
            let pk = &p.a_packets;
            assert_eq!(pk.len(), 51);
            for w in pk.windows(2) {
                assert_eq!(w[1].sequence, w[0].sequence.wrapping_add(1));
                assert_eq!(w[1].timestamp, w[0].timestamp.wrapping_add(160));
                assert!(!w[1].marker);
            }
            assert!(pk[0].marker);
            assert_eq!(pk[0].payload_type, law.payload_type());
            // received audio = G.711 round trip of what was played, after the jitter delay
            let got = audio_of(&p.b_frames);
            let mut enc = Vec::new();
            law.encode_into(&pcm, &mut enc);
            let mut want = Vec::new();
            law.decode_into(&enc, &mut want);
            assert_eq!(p.b_frames[0].kind, FrameKind::Audio);
            assert!(got.len() >= want.len());
            assert!(got[..want.len()] == want[..], "received audio differs");
            assert!(
                p.a_events
                    .contains(&MediaEvent::PlaybackFinished(PlaybackFinished {
                        id,
                        played_samples: 8080,
                        dropped_samples: 0,
                        completed: true
                    }))
            );
            let s = p.b.stats();
            assert_eq!(
                (s.packets_received, s.packets_lost, s.late, s.foreign_source),
                (51, 0, 0, 0)
            );
            assert!(s.jitter_ms < 1.0, "{}", s.jitter_ms);
        }
    }

    #[test]
    fn pre_encoded_playback_goes_on_the_wire_unchanged() {
        let mut p = Pair::new(Law::Ulaw);
        // every code, including µ-law's negative zero 0x7F that re-encoding would change
        let codes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let id = p.a.play_encoded(Law::Ulaw, codes.clone()).unwrap();
        // A-law codes into a µ-law call are transcoded
        let alaw: Vec<u8> = vec![0xD5; 160];
        p.a.play_encoded(Law::Alaw, alaw).unwrap();
        p.run_for(Duration::from_millis(400), |_| true);
        let wire: Vec<u8> = p.a_packets.iter().flat_map(|k| k.payload.clone()).collect();
        assert_eq!(wire.len(), 1280); // 1000 + 160 codes -> 8 frames, the last padded
        assert_eq!(&wire[..1000], &codes[..]);
        assert!(
            wire[1000..1160]
                .iter()
                .all(|&c| c == Law::Ulaw.encode(Law::Alaw.decode(0xD5)))
        );
        assert!(wire[1160..].iter().all(|&c| c == Law::Ulaw.silence_code()));
        assert!(p.a_events.iter().any(|e| matches!(e,
            MediaEvent::PlaybackFinished(f) if f.id == id && f.completed && f.played_samples == 1000)));
    }

    #[test]
    fn talkspurts_get_a_marker_and_timestamps_follow_the_clock() {
        let mut p = Pair::new(Law::Ulaw);
        p.a.play(tone(1600)).unwrap();
        p.run_for(Duration::from_millis(500), |_| true);
        p.a.play(tone(1600)).unwrap();
        p.run_for(Duration::from_millis(500), |_| true);
        let pk = &p.a_packets;
        assert_eq!(pk.len(), 20);
        assert!(pk[0].marker && pk[10].marker);
        assert_eq!(pk.iter().filter(|p| p.marker).count(), 2);
        assert_eq!(pk[10].sequence, pk[9].sequence.wrapping_add(1));
        // the gap in time shows in the timestamp
        let gap = pk[10].timestamp.wrapping_sub(pk[9].timestamp);
        assert!(gap > 160 * 10, "{gap}");
    }

    #[test]
    fn stop_playback_reports_played_and_dropped() {
        let mut p = Pair::new(Law::Ulaw);
        let id1 = p.a.play(tone(8000)).unwrap();
        let id2 = p.a.play(tone(8000)).unwrap();
        p.run_for(Duration::from_millis(205), |_| true);
        let stopped = p.a.stop_playback();
        assert_eq!(stopped.cancelled, 2);
        assert_eq!(stopped.played, Duration::from_millis(220)); // ticks at 0,20..200 ms
        assert_eq!(stopped.dropped, Duration::from_millis(2000 - 220));
        assert!(!p.a.is_playing());
        let sent = p.a_packets.len();
        p.run_for(Duration::from_millis(200), |_| true);
        assert_eq!(p.a_packets.len(), sent, "nothing more is sent");
        let finished: Vec<_> = p
            .a_events
            .iter()
            .filter_map(|e| match e {
                MediaEvent::PlaybackFinished(f) => Some((f.id, f.completed)),
                _ => None,
            })
            .collect();
        assert_eq!(finished, vec![(id1, false), (id2, false)]);
    }

    #[test]
    fn loss_is_concealed_and_counted_in_stats() {
        let mut p = Pair::new(Law::Ulaw);
        p.a.play(tone(16000)).unwrap();
        let mut n = 0;
        p.run_for(Duration::from_millis(2500), |t| {
            n += 1;
            t.rtcp || n % 10 != 5
        });
        let s = p.b.stats();
        assert_eq!(s.packets_lost, 10);
        assert!(s.concealed >= 10);
        let kinds: Vec<_> = p.b_frames.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds.iter().filter(|k| **k == FrameKind::Concealed).count(),
            10 + 3
        );
    }

    #[test]
    fn latching_counts_foreign_sources_and_retarget_accepts_a_new_ssrc() {
        let mut p = Pair::new(Law::Ulaw);
        let t = p.t0;
        let mut data = Vec::new();
        packet::write_rtp(&mut data, 0, false, 10, 1600, 77, &[0xFF; 160]);
        p.b.handle_rtp(t, p.a_addr, &data);
        assert_eq!(p.b.latched(), Some((p.a_addr, 77)));
        p.b.handle_rtp(t, addr("127.0.0.1:6666"), &data);
        packet::write_rtp(&mut data, 0, false, 11, 1760, 78, &[0xFF; 160]);
        p.b.handle_rtp(t, p.a_addr, &data);
        packet::write_rtp(&mut data, 96, false, 11, 1760, 77, &[0xFF; 160]);
        p.b.handle_rtp(t, p.a_addr, &data);
        p.b.handle_rtp(t, p.a_addr, &[0x80, 200, 0, 0]);
        let s = p.b.stats();
        assert_eq!(
            (
                s.packets_received,
                s.foreign_source,
                s.discarded_payload,
                s.discarded_non_rtp
            ),
            (1, 2, 1, 1)
        );
        // re-INVITE: new SSRC from a new port
        p.b.retarget(Some(addr("127.0.0.1:7000")), Law::Ulaw, 0, Some(101));
        packet::write_rtp(&mut data, 0, false, 5000, 1, 99, &[0xFF; 160]);
        p.b.handle_rtp(t, addr("127.0.0.1:7000"), &data);
        assert_eq!(p.b.latched(), Some((addr("127.0.0.1:7000"), 99)));
        assert_eq!(p.b.stats().ssrc_changes, 1);
        assert_eq!(p.b.destination(), Some(addr("127.0.0.1:7000")));
    }

    /// An engine whose SDP names `sdp`, latched onto `from` (SSRC 77, sequence 10) by
    /// its first packet; the instant it was made.
    fn latched_engine(sdp: SocketAddr, from: SocketAddr) -> (MediaEngine, Instant) {
        let t = Instant::now();
        let mut e = MediaEngine::new(
            MediaConfig::new(Law::Ulaw, Some(sdp)),
            t,
            SystemTime::now(),
            [1, 2, 3],
        );
        let mut data = Vec::new();
        packet::write_rtp(&mut data, 0, false, 10, 1600, 77, &[0xFF; 160]);
        e.handle_rtp(t, from, &data);
        assert_eq!(e.latched(), Some((from, 77)));
        (e, t)
    }

    fn latched_events(e: &mut MediaEngine) -> Vec<(SocketAddr, u32)> {
        std::iter::from_fn(|| e.poll_event())
            .filter_map(|ev| match ev {
                MediaEvent::SourceLatched { addr, ssrc } => Some((addr, ssrc)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_old_peer_cannot_take_the_latch_after_a_retarget_that_moved_the_media() {
        let old_sdp = addr("127.0.0.1:5000");
        let old_nat = addr("127.0.0.1:5002");
        let new_sdp = addr("127.0.0.1:7000");
        let new_nat = addr("127.0.0.1:7002");
        let (mut e, t) = latched_engine(old_sdp, old_nat);
        let mut data = Vec::new();
        // re-INVITE to a peer behind NAT before the socket thread read the old peer's
        // last packets (from both its addresses)
        e.retarget(Some(new_sdp), Law::Ulaw, 0, Some(101));
        packet::write_rtp(&mut data, 0, false, 11, 1760, 77, &[0xFF; 160]);
        e.handle_rtp(t, old_nat, &data);
        e.handle_rtp(t, old_sdp, &data);
        assert_eq!(e.latched(), None);
        assert_eq!(e.stats().foreign_source, 2);
        // the new peer's packets come from its NAT address, not its SDP address
        packet::write_rtp(&mut data, 0, true, 500, 9, 88, &[0xFF; 160]);
        e.handle_rtp(t, new_nat, &data);
        assert_eq!(e.latched(), Some((new_nat, 88)));
        assert_eq!(e.destination(), Some(new_nat));
        assert_eq!(e.stats().ssrc_changes, 1);
        // the latch is final: the old peer, the SDP address and strangers are foreign
        packet::write_rtp(&mut data, 0, false, 12, 1920, 77, &[0xFF; 160]);
        e.handle_rtp(t, old_nat, &data);
        packet::write_rtp(&mut data, 0, false, 501, 169, 99, &[0xFF; 160]);
        e.handle_rtp(t, new_sdp, &data);
        e.handle_rtp(t, addr("127.0.0.1:6666"), &data);
        assert_eq!(e.latched(), Some((new_nat, 88)));
        assert_eq!(e.destination(), Some(new_nat));
        let s = e.stats();
        assert_eq!((s.packets_received, s.foreign_source), (2, 5));
        assert_eq!(latched_events(&mut e), vec![(old_nat, 77), (new_nat, 88)]);
    }

    #[test]
    fn a_retarget_to_the_same_address_keeps_the_peer_and_a_moved_sdp_gives_way_in_time() {
        let sdp = addr("127.0.0.1:5000");
        let nat = addr("127.0.0.1:5002");
        let (mut e, t) = latched_engine(sdp, nat);
        let mut data = Vec::new();
        // hold / resume or a codec change: same address, the peer latches again at once
        e.retarget(Some(sdp), Law::Alaw, 8, Some(101));
        packet::write_rtp(&mut data, 8, false, 11, 1760, 77, &[0xD5; 160]);
        e.handle_rtp(t, nat, &data);
        assert_eq!(e.latched(), Some((nat, 77)));
        // the SDP address moves, but the peer's packets still come from the same place
        // (a media relay kept its port): refused for STALE_PACKETS packets, then taken
        e.retarget(Some(addr("127.0.0.1:7000")), Law::Alaw, 8, Some(101));
        for n in 0..=STALE_PACKETS {
            assert_eq!(e.latched(), None, "packet {n}");
            let seq = 12 + n as u16;
            packet::write_rtp(&mut data, 8, false, seq, 160 * u32::from(seq), 77, &[0xD5; 160]);
            e.handle_rtp(t, nat, &data);
        }
        assert_eq!(e.latched(), Some((nat, 77)));
        assert_eq!(e.destination(), Some(nat));
        let s = e.stats();
        assert_eq!(
            (s.packets_received, s.foreign_source),
            (3, u64::from(STALE_PACKETS))
        );
    }

    #[test]
    fn sdp_latching_ignores_other_addresses() {
        let t0 = Instant::now();
        let mut cfg = MediaConfig::new(Law::Ulaw, Some(addr("127.0.0.1:4000")));
        cfg.latching = Latching::SdpAddress;
        let mut e = MediaEngine::new(cfg, t0, SystemTime::now(), [1, 2, 3]);
        let mut data = Vec::new();
        packet::write_rtp(&mut data, 0, false, 10, 1600, 77, &[0xFF; 160]);
        e.handle_rtp(t0, addr("127.0.0.1:4001"), &data);
        assert_eq!(e.latched(), None);
        e.handle_rtp(t0, addr("127.0.0.1:4000"), &data);
        assert_eq!(e.latched(), Some((addr("127.0.0.1:4000"), 77)));
        assert_eq!(e.stats().foreign_source, 1);
    }

    #[test]
    fn dtmf_goes_across_once_per_key() {
        let mut p = Pair::new(Law::Ulaw);
        p.a.play(tone(800)).unwrap();
        for d in "12#".chars() {
            p.a.send_dtmf(d, Duration::from_millis(80)).unwrap();
        }
        assert_eq!(
            p.a.send_dtmf('x', Duration::from_millis(80)),
            Err(MediaError::NotADtmfKey('x'))
        );
        p.run_for(Duration::from_millis(1000), |_| true);
        let digits: String = p
            .b_events
            .iter()
            .filter_map(|e| match e {
                MediaEvent::Dtmf(d) => Some(d.digit),
                _ => None,
            })
            .collect();
        assert_eq!(digits, "12#");
        assert_eq!(p.a.stats().dtmf_sent, 3);
        // 3 keys x (3 updates + 3 end packets), all with PT 101
        assert_eq!(p.a_packets.iter().filter(|p| p.payload_type == 101).count(), 18);
        // audio resumed after DTMF
        assert_eq!(p.a_packets.iter().filter(|p| p.payload_type == 0).count(), 5);
    }

    #[test]
    fn adaptive_playout_starts_small_and_sheds_growth_only_in_quiet_packets() {
        // A caller streams 151 loud packets then quiet ones, every 20 ms; its sender
        // stalls once (packets 5 and 6 leave together at 135 ms).
        let t0 = Instant::now();
        let from = addr("127.0.0.1:4000");
        let mut cfg = MediaConfig::new(Law::Ulaw, Some(from));
        cfg.send_silence = false;
        cfg.jitter = JitterConfig {
            depth: Duration::from_millis(60),
            adaptive: Some(crate::jitter::AdaptiveDepth {
                min_depth: Duration::from_millis(10),
                shrink_after: 10,
                grow_hold: 50,
            }),
            ..JitterConfig::default()
        };
        let mut b = MediaEngine::new(cfg, t0 + Duration::from_millis(3), SystemTime::now(), [2, 3, 4]);
        let loud = tone(160);
        let mut arrivals: Vec<(Duration, u16)> = (0..300u16)
            .map(|s| {
                let at = match s {
                    5 => Duration::from_millis(135),
                    6 => Duration::from_millis(135),
                    _ => Duration::from_millis(20 * u64::from(s)),
                };
                (at, s)
            })
            .collect();
        arrivals.sort();
        let mut frames = Vec::new();
        let mut next = 0;
        let mut data = Vec::new();
        for ms in 0..6400u64 {
            let now = t0 + Duration::from_millis(ms);
            while let Some(&(at, seq)) = arrivals.get(next)
                && at <= Duration::from_millis(ms)
            {
                let mut payload = Vec::new();
                if seq <= 150 {
                    Law::Ulaw.encode_into(&loud, &mut payload);
                } else {
                    payload = vec![Law::Ulaw.silence_code(); 160];
                }
                packet::write_rtp(&mut data, 0, seq == 0, seq, u32::from(seq) * 160, 9, &payload);
                b.handle_rtp(now, from, &data);
                next += 1;
            }
            b.handle_timeout(now);
            while let Some(ev) = b.poll_event() {
                if let MediaEvent::Frame(f) = ev {
                    frames.push(f);
                }
            }
        }
        let peak = |f: &ReceivedFrame| {
            f.audio
                .samples
                .iter()
                .map(|s| s.unsigned_abs())
                .max()
                .unwrap_or(0)
        };
        // packet 0 arrived at 0 and played at the first tick 10 ms later (tick 1 at 23 ms)
        let first = frames.iter().find(|f| f.kind == FrameKind::Audio).unwrap();
        assert_eq!(first.tick, 1);
        let s = b.stats();
        assert_eq!((s.playout_grown, s.playout_shrunk, s.packets_lost), (1, 1, 0));
        assert_eq!(s.playout_delay, Duration::from_millis(10));
        // every loud packet was played: only a quiet one was shed
        let loud_frames = frames
            .iter()
            .filter(|f| f.kind == FrameKind::Audio && peak(f) >= QUIET_PEAK)
            .count();
        assert_eq!(loud_frames, 151);
        let quiet_frames = frames
            .iter()
            .filter(|f| f.kind == FrameKind::Audio && peak(f) == 0)
            .count();
        assert_eq!(quiet_frames, 300 - 151 - 1);
    }

    #[test]
    fn rtcp_reports_flow_both_ways() {
        let mut p = Pair::new(Law::Ulaw);
        p.a.play(tone(8000 * 12)).unwrap();
        let mut n = 0;
        p.run_for(Duration::from_millis(11_000), |t| {
            n += 1;
            t.rtcp || n % 20 != 0
        });
        let a = p.a.stats();
        let b = p.b.stats();
        assert_eq!(a.rtcp_sent, 2);
        assert_eq!(b.rtcp_received, 2);
        assert_eq!(a.rtcp_received, 2);
        // B reports ~5 % loss of A's stream back to A
        let f = a.remote_fraction_lost.unwrap();
        assert!((0.03..0.07).contains(&f), "{f}");
        assert!(a.round_trip.is_some());
    }
}
