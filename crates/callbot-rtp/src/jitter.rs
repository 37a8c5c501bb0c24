//! Sans-IO jitter buffer: packets in with their arrival time, one playout slot out per
//! call of [`JitterBuffer::pop`].
//!
//! - Ordering is by **extended sequence number** (16-bit wrap handled), so timestamp
//!   jumps (silence suppression, a peer that restarts its clock) do not disturb playout.
//! - Playout starts `depth` after the first packet of a talkspurt arrives; from then on
//!   the owner calls `pop` once per packet interval (20 ms) and gets the next packet,
//!   [`Playout::Concealed`] for a missing one, or [`Playout::Nothing`] while idle.
//! - A packet older than the playout point is **late**, one already buffered is a
//!   **duplicate**: both are dropped and counted. A packet more than `window` ahead is
//!   held on probation: a second consecutive one re-synchronises the buffer (the peer
//!   really jumped), otherwise it is dropped as out of window.
//! - When the buffer runs dry the gap is concealed without advancing the playout point
//!   (the packet may just be late); after `max_conceal` slots the buffer goes idle and
//!   the next packet starts a new talkspurt with a fresh `depth` of buffering.
//! - [`JitterBuffer::reset`] forgets everything (SSRC change after a re-INVITE).
//!
//! **Adaptive delay** ([`JitterConfig::adaptive`]): every millisecond of buffering delays
//! the bot's endpoint and barge-in, so instead of a fixed `depth` the buffer can start
//! small on a clean path and grow with the jitter it meets. Its target delay is
//! `clamp(min_depth + grown, depth)`, at least four times the RFC 3550 interarrival
//! jitter its owner reports ([`JitterBuffer::observe_jitter`]); a talkspurt starts after
//! the target. It **grows** when a packet misses its slot (the underrun keeps the
//! playout point, so every later packet waits one packet interval longer, and `grown`
//! rises by one interval, decaying again after `grow_hold` without underrun). It
//! **shrinks** by one packet when every packet played over the last `shrink_after`
//! slots waited at least one interval longer than the target
//! ([`JitterBuffer::surplus`]): the owner then drops the next packet with
//! [`JitterBuffer::skip`] if it is quiet (dropping 20 ms of a pause is inaudible;
//! dropping speech is not), so the delay only ever shrinks in silence.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::packet::RtpPacket;

/// Jitter buffer settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// Buffering before playout starts (default 60 ms).
    pub depth: Duration,
    /// How far ahead of the playout point (in packets) a packet may be (default 64).
    pub window: u16,
    /// Most packets kept; above `depth` plus this many slots the oldest is dropped to
    /// catch up with a peer whose clock runs fast (default 10).
    pub max_excess: usize,
    /// Consecutive concealed slots on an empty buffer before going idle (default 3).
    pub max_conceal: u32,
    /// Packet interval (default 20 ms).
    pub frame: Duration,
    /// Adapt the delay between a minimum and `depth` (`None`: fixed `depth`).
    pub adaptive: Option<AdaptiveDepth>,
}

/// How an adaptive buffer moves its delay (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveDepth {
    /// The delay on a clean path (default 10 ms); `depth` is the most it grows to.
    pub min_depth: Duration,
    /// Slots of steady surplus before the delay shrinks by one packet (default 100 =
    /// 2 s of 20 ms packets).
    pub shrink_after: u32,
    /// Slots without underrun after which one interval of underrun growth is given
    /// back (default 500 = 10 s).
    pub grow_hold: u32,
}

impl Default for AdaptiveDepth {
    fn default() -> Self {
        AdaptiveDepth {
            min_depth: Duration::from_millis(10),
            shrink_after: 100,
            grow_hold: 500,
        }
    }
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            depth: Duration::from_millis(60),
            window: 64,
            max_excess: 10,
            max_conceal: 3,
            frame: Duration::from_millis(20),
            adaptive: None,
        }
    }
}

/// What [`JitterBuffer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Buffered for playout.
    Accepted,
    /// Same sequence number as a buffered packet: dropped.
    Duplicate,
    /// Older than the playout point: dropped.
    Late,
    /// Too far ahead: kept aside (a second consecutive one re-synchronises).
    Probation,
    /// A jump confirmed by a second packet: the buffer restarted at the new sequence.
    Resynced,
}

/// One playout slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// The next packet in sequence.
    Frame(RtpPacket),
    /// A packet is missing (lost, or not here yet): the owner conceals one interval.
    Concealed,
    /// Not playing (before the first packet, between talkspurts).
    Nothing,
}

/// Counters kept by the buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets accepted.
    pub accepted: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Late packets dropped.
    pub late: u64,
    /// Packets dropped for being too far ahead (never confirmed).
    pub out_of_window: u64,
    /// Re-synchronisations after a confirmed sequence jump.
    pub resyncs: u64,
    /// Packets never received by the time their slot was played (lost).
    pub lost: u64,
    /// Slots concealed (lost packets and underruns).
    pub concealed: u64,
    /// Packets dropped to catch up when the buffer grew too deep.
    pub trimmed: u64,
    /// Resets (SSRC changes).
    pub resets: u64,
    /// Quiet packets dropped to shrink an adaptive delay ([`JitterBuffer::skip`]).
    pub shrunk: u64,
    /// Late packets (played after an underrun kept their slot) that grew an adaptive
    /// delay.
    pub grown: u64,
}

#[derive(Debug)]
struct Entry {
    arrival: Instant,
    packet: RtpPacket,
}

/// The jitter buffer. See the module documentation.
#[derive(Debug)]
pub struct JitterBuffer {
    cfg: JitterConfig,
    packets: BTreeMap<u64, Entry>,
    /// Highest extended sequence seen (the reference for extending new ones).
    highest: Option<u64>,
    /// Next extended sequence to play; `None` before the first playout.
    next: Option<u64>,
    playing: bool,
    conceal_run: u32,
    probation: Option<u64>,
    stats: JitterStats,
    /// Interarrival jitter reported by the owner.
    jitter: Duration,
    /// Underrun growth of an adaptive target.
    grown: Duration,
    /// Slots since the last underrun.
    since_underrun: u32,
    /// Slots played since the surplus window began, and the least wait among them.
    window: u32,
    least_wait: Option<Duration>,
    /// The least wait of the last complete window (no concealment in it).
    ready_wait: Option<Duration>,
}

/// Extended sequence numbers start here so that going backwards never underflows.
const EXT_BASE: u64 = 1 << 32;

impl JitterBuffer {
    /// An empty buffer.
    pub fn new(cfg: JitterConfig) -> Self {
        JitterBuffer {
            cfg,
            packets: BTreeMap::new(),
            highest: None,
            next: None,
            playing: false,
            conceal_run: 0,
            probation: None,
            stats: JitterStats::default(),
            jitter: Duration::ZERO,
            grown: Duration::ZERO,
            since_underrun: 0,
            window: 0,
            least_wait: None,
            ready_wait: None,
        }
    }

    /// The delay a talkspurt starts with: `depth`, or for an adaptive buffer its
    /// current target (see the module documentation).
    pub fn target_depth(&self) -> Duration {
        match self.cfg.adaptive {
            None => self.cfg.depth,
            Some(a) => (a.min_depth + self.grown)
                .max(self.jitter * 4)
                .min(self.cfg.depth),
        }
    }

    /// The owner's current RFC 3550 interarrival jitter estimate of the stream (an
    /// adaptive buffer keeps at least four times this much delay).
    pub fn observe_jitter(&mut self, jitter: Duration) {
        self.jitter = jitter;
    }

    /// True when an adaptive buffer has held every packet of the last `shrink_after`
    /// slots at least one packet interval longer than its target: dropping one packet
    /// ([`JitterBuffer::skip`]) would still leave each of them in time.
    pub fn surplus(&self) -> bool {
        if self.cfg.adaptive.is_none() {
            return false;
        }
        self.playing
            && self
                .ready_wait
                .is_some_and(|w| w >= self.target_depth() + self.cfg.frame)
    }

    /// The packet the next [`JitterBuffer::pop`] would play, if it is here.
    pub fn peek(&self) -> Option<&RtpPacket> {
        let next = self.next?;
        self.packets.get(&next).map(|e| &e.packet)
    }

    /// Drops the next packet to shrink the delay by one interval (call when
    /// [`JitterBuffer::surplus`] holds and [`JitterBuffer::peek`] shows a quiet
    /// packet). Returns true when a packet was dropped.
    pub fn skip(&mut self) -> bool {
        let Some(next) = self.next else {
            return false;
        };
        if self.packets.remove(&next).is_none() {
            return false;
        }
        self.next = Some(next + 1);
        self.stats.shrunk += 1;
        self.restart_window();
        true
    }

    fn restart_window(&mut self) {
        self.window = 0;
        self.least_wait = None;
        self.ready_wait = None;
    }

    /// One slot played (`waited`: how long the packet was held; `None`: concealed).
    fn account(&mut self, waited: Option<Duration>) {
        let Some(a) = self.cfg.adaptive else {
            return;
        };
        self.since_underrun = self.since_underrun.saturating_add(1);
        if self.since_underrun >= a.grow_hold && !self.grown.is_zero() {
            self.grown = self.grown.saturating_sub(self.cfg.frame);
            self.since_underrun = 0;
        }
        let Some(w) = waited else {
            self.restart_window();
            return;
        };
        self.window = self.window.saturating_add(1);
        self.least_wait = Some(self.least_wait.map_or(w, |l| l.min(w)));
        if self.window >= a.shrink_after {
            // A complete window: judged by its least wait until the next one completes.
            self.ready_wait = self.least_wait.take();
            self.window = 0;
        }
    }

    /// A packet came `slots` slots after its own (the playout point was kept for it).
    fn underrun(&mut self, slots: u32) {
        if self.cfg.adaptive.is_some() {
            self.grown = (self.grown + self.cfg.frame * slots).min(self.cfg.depth);
            self.since_underrun = 0;
            self.stats.grown += 1;
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Packets currently buffered.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// True when no packet is buffered.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// True while a talkspurt is being played out.
    pub fn is_playing(&self) -> bool {
        self.playing
    }

    /// Forgets every packet and the sequence state (new SSRC); counters are kept.
    pub fn reset(&mut self) {
        self.packets.clear();
        self.highest = None;
        self.next = None;
        self.playing = false;
        self.conceal_run = 0;
        self.probation = None;
        self.stats.resets += 1;
        self.jitter = Duration::ZERO;
        self.grown = Duration::ZERO;
        self.restart_window();
    }

    fn extend(&self, seq: u16) -> u64 {
        match self.highest {
            None => EXT_BASE + u64::from(seq),
            Some(h) => {
                let delta = i64::from(seq.wrapping_sub(h as u16) as i16);
                h.saturating_add_signed(delta)
            }
        }
    }

    /// Offers a packet that arrived at `now`.
    pub fn push(&mut self, now: Instant, packet: RtpPacket) -> PushOutcome {
        let ext = self.extend(packet.sequence);
        if let Some(next) = self.next {
            if ext < next {
                if next - ext >= u64::from(self.cfg.window) {
                    // Far behind: the peer restarted its sequence lower.
                    return self.probation(now, ext, packet);
                }
                self.stats.late += 1;
                return PushOutcome::Late;
            }
            if ext - next >= u64::from(self.cfg.window) {
                return self.probation(now, ext, packet);
            }
        } else if let Some(h) = self.highest {
            // Not playing yet: only bound the spread of what is buffered.
            if ext.abs_diff(h) >= u64::from(self.cfg.window) {
                return self.probation(now, ext, packet);
            }
        }
        self.probation = None;
        if self.packets.contains_key(&ext) {
            self.stats.duplicates += 1;
            return PushOutcome::Duplicate;
        }
        self.insert(now, ext, packet);
        PushOutcome::Accepted
    }

    fn insert(&mut self, now: Instant, ext: u64, packet: RtpPacket) {
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        self.packets.insert(ext, Entry { arrival: now, packet });
        self.stats.accepted += 1;
        // Peer clock faster than ours, or a burst: never hold more than depth + excess.
        let limit = self.depth_slots() + self.cfg.max_excess;
        while self.playing && self.packets.len() > limit {
            if let Some((&k, _)) = self.packets.iter().next() {
                self.packets.remove(&k);
                self.next = Some(k + 1);
                self.stats.trimmed += 1;
            }
        }
    }

    fn probation(&mut self, now: Instant, ext: u64, packet: RtpPacket) -> PushOutcome {
        match self.probation {
            Some(p) if ext == p + 1 => {
                // Confirmed jump: restart from here (the probation packet is gone).
                self.packets.clear();
                self.next = None;
                self.playing = false;
                self.conceal_run = 0;
                self.probation = None;
                self.highest = Some(ext);
                self.stats.resyncs += 1;
                self.stats.out_of_window += 1; // the probation packet itself
                self.insert(now, ext, packet);
                PushOutcome::Resynced
            }
            Some(_) => {
                self.stats.out_of_window += 1;
                self.probation = Some(ext);
                PushOutcome::Probation
            }
            None => {
                self.probation = Some(ext);
                PushOutcome::Probation
            }
        }
    }

    fn depth_slots(&self) -> usize {
        let f = self.cfg.frame.as_micros().max(1);
        (self.cfg.depth.as_micros() / f) as usize + 1
    }

    /// Plays out one slot at `now`. Call once per packet interval.
    pub fn pop(&mut self, now: Instant) -> Playout {
        if !self.playing {
            let first = self.packets.iter().next().map(|(&k, e)| (k, e.arrival));
            let start = match (first, self.next) {
                (Some((k, arrival)), _) if now >= arrival + self.target_depth() => k,
                _ => return Playout::Nothing,
            };
            self.playing = true;
            self.conceal_run = 0;
            self.next = Some(start);
            self.restart_window();
        }
        let Some(next) = self.next else {
            return Playout::Nothing;
        };
        if let Some(entry) = self.packets.remove(&next) {
            self.next = Some(next + 1);
            if self.conceal_run > 0 {
                // It came after its slot: the playout point was kept, the delay grew.
                self.underrun(self.conceal_run);
            }
            self.conceal_run = 0;
            self.account(Some(now.saturating_duration_since(entry.arrival)));
            return Playout::Frame(entry.packet);
        }
        if self.packets.is_empty() {
            // Underrun: the peer paused or is late. Keep the playout point.
            self.conceal_run += 1;
            if self.conceal_run > self.cfg.max_conceal {
                self.playing = false;
                return Playout::Nothing;
            }
            self.stats.concealed += 1;
            self.account(None);
            return Playout::Concealed;
        }
        // A hole with later packets buffered: that packet is lost.
        self.next = Some(next + 1);
        self.stats.lost += 1;
        self.stats.concealed += 1;
        self.account(None);
        Playout::Concealed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn p(seq: u16) -> RtpPacket {
        RtpPacket {
            payload_type: 0,
            marker: false,
            sequence: seq,
            timestamp: u32::from(seq).wrapping_mul(160),
            ssrc: 7,
            payload: vec![seq as u8; 160],
        }
    }

    pub(super) const F: Duration = Duration::from_millis(20);

    /// Drives a buffer: packets arrive per `arrivals` (slot index, seq), pops once per
    /// slot; returns the playout as Some(seq) / None (concealed), skipping Nothing.
    fn run(jb: &mut JitterBuffer, arrivals: &[(u32, u16)], slots: u32) -> Vec<Option<u16>> {
        let t0 = Instant::now();
        let mut out = Vec::new();
        for slot in 0..slots {
            let now = t0 + F * slot;
            for &(_, seq) in arrivals.iter().filter(|(s, _)| *s == slot) {
                jb.push(now, p(seq));
            }
            match jb.pop(now) {
                Playout::Frame(pk) => out.push(Some(pk.sequence)),
                Playout::Concealed => out.push(None),
                Playout::Nothing => {}
            }
        }
        out
    }

    #[test]
    fn in_order_stream_plays_after_depth() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let arr: Vec<_> = (0..50).map(|i| (i, 100 + i as u16)).collect();
        let out = run(&mut jb, &arr, 60);
        let want: Vec<_> = (100..150).map(Some).collect();
        assert_eq!(&out[..50], &want[..]);
        // then 3 concealed slots and idle
        assert_eq!(&out[50..], &[None, None, None]);
        assert!(!jb.is_playing());
    }

    #[test]
    fn reordering_within_depth_is_repaired() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let arr = [(0, 0), (1, 2), (1, 1), (2, 4), (3, 3), (3, 5), (4, 6), (5, 7)];
        let out = run(&mut jb, &arr, 12);
        assert_eq!(out[..8], (0..8).map(Some).collect::<Vec<_>>()[..]);
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn loss_is_concealed_and_counted() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let arr: Vec<_> = (0..20u16)
            .filter(|s| *s != 5 && *s != 6 && *s != 12)
            .map(|s| (u32::from(s), s))
            .collect();
        let out = run(&mut jb, &arr, 23);
        let want: Vec<_> = (0..20u16)
            .map(|s| (s != 5 && s != 6 && s != 12).then_some(s))
            .collect();
        assert_eq!(&out[..20], &want[..]);
        assert_eq!(jb.stats().lost, 3);
    }

    #[test]
    fn duplicates_and_late_are_dropped() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let t0 = Instant::now();
        assert_eq!(jb.push(t0, p(10)), PushOutcome::Accepted);
        assert_eq!(jb.push(t0, p(10)), PushOutcome::Duplicate);
        assert_eq!(jb.pop(t0 + F * 3), Playout::Frame(p(10)));
        assert_eq!(jb.push(t0, p(10)), PushOutcome::Late);
        assert_eq!(jb.push(t0, p(9)), PushOutcome::Late);
        assert_eq!(jb.push(t0, p(12)), PushOutcome::Accepted);
        assert_eq!(jb.pop(t0 + F * 4), Playout::Concealed); // 11 lost
        assert_eq!(jb.push(t0, p(11)), PushOutcome::Late);
        assert_eq!(jb.pop(t0 + F * 5), Playout::Frame(p(12)));
        let s = jb.stats();
        assert_eq!((s.duplicates, s.late, s.lost), (1, 3, 1));
    }

    #[test]
    fn sequence_wraps() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let seqs: Vec<u16> = (0..40u32).map(|i| 65520u16.wrapping_add(i as u16)).collect();
        // deliver with pairwise swaps across the wrap
        let mut arr: Vec<(u32, u16)> = seqs.iter().enumerate().map(|(i, &s)| (i as u32, s)).collect();
        for pair in arr.chunks_mut(2) {
            if let [a, b] = pair {
                std::mem::swap(&mut a.1, &mut b.1);
            }
        }
        let out = run(&mut jb, &arr, 40);
        let got: Vec<u16> = out.iter().flatten().copied().collect();
        assert_eq!(got, seqs[..got.len()]);
        assert!(got.len() >= 36);
        assert_eq!(jb.stats().late + jb.stats().lost + jb.stats().duplicates, 0);
    }

    #[test]
    fn lone_jump_is_dropped_confirmed_jump_resyncs() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let arr = [(0, 1), (1, 2), (2, 30002), (2, 3), (3, 4), (4, 5), (5, 6)];
        let out = run(&mut jb, &arr, 7);
        assert_eq!(out, vec![Some(1), Some(2), Some(3), Some(4)]);
        assert_eq!(jb.stats().out_of_window, 0); // still on probation until the next one
        let t = Instant::now() + F * 7;
        assert_eq!(jb.push(t, p(40000)), PushOutcome::Probation);
        assert_eq!(jb.push(t, p(40001)), PushOutcome::Resynced);
        assert_eq!(jb.push(t, p(40002)), PushOutcome::Accepted);
        assert_eq!(jb.pop(t + F * 4), Playout::Frame(p(40001)));
        assert_eq!(jb.pop(t + F * 5), Playout::Frame(p(40002)));
        assert_eq!(jb.stats().resyncs, 1);
    }

    #[test]
    fn pause_and_resume_does_not_lose_the_new_talkspurt() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        // 10 packets, a 1 s pause (DTX), then 10 more with continuous sequence numbers.
        let mut arr: Vec<(u32, u16)> = (0..10).map(|i| (i, i as u16)).collect();
        arr.extend((0..10).map(|i| (60 + i, 10 + i as u16)));
        let out = run(&mut jb, &arr, 80);
        let got: Vec<u16> = out.iter().flatten().copied().collect();
        assert_eq!(got, (0..20).collect::<Vec<_>>());
        assert_eq!(jb.stats().lost, 0);
        assert_eq!(jb.stats().late, 0);
    }

    #[test]
    fn reset_starts_over_with_a_new_stream() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let t0 = Instant::now();
        jb.push(t0, p(500));
        assert_eq!(jb.pop(t0 + F * 3), Playout::Frame(p(500)));
        jb.reset();
        assert_eq!(jb.push(t0 + F * 4, p(7)), PushOutcome::Accepted);
        assert_eq!(jb.pop(t0 + F * 7), Playout::Frame(p(7)));
    }

    #[test]
    fn simulated_loss_reorder_duplication_keeps_order() {
        // Deterministic pseudo-random network: 5 % loss, 10 % duplicated, jitter 0..50 ms.
        let mut x: u64 = 0x1234_5678;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut arr = Vec::new();
        let mut sent = Vec::new();
        for i in 0..2000u32 {
            let seq = 60000u16.wrapping_add(i as u16);
            if i < 1999 && rnd() % 100 < 5 {
                continue;
            }
            sent.push(seq);
            let delay = (rnd() % 3) as u32; // 0..40 ms in slots
            arr.push((i + delay, seq));
            if rnd() % 10 == 0 {
                arr.push((i + delay + (rnd() % 2) as u32, seq));
            }
        }
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let out = run(&mut jb, &arr, 2010);
        let got: Vec<u16> = out.iter().flatten().copied().collect();
        // every packet that was sent is played, in order, exactly once
        assert_eq!(got, sent);
        let s = jb.stats();
        assert_eq!(s.lost as usize, 2000 - sent.len());
        assert_eq!(s.accepted as usize, sent.len());
        assert!(s.duplicates > 100);
    }
}

#[cfg(test)]
mod adaptive_tests {
    use super::tests::{F, p};
    use super::*;

    fn adaptive() -> JitterConfig {
        JitterConfig {
            depth: Duration::from_millis(60),
            adaptive: Some(AdaptiveDepth {
                min_depth: Duration::from_millis(10),
                shrink_after: 10,
                grow_hold: 50,
            }),
            ..JitterConfig::default()
        }
    }

    /// Packet `seq` arrives at `t0 + seq * 20 ms + late(seq)`; the owner pops every
    /// 20 ms at `t0 + phase + k * 20 ms`. Returns (pop time, played seq or None when
    /// concealed), from the first played slot on, and the buffer.
    fn drive(
        cfg: JitterConfig,
        packets: u16,
        phase: Duration,
        late: impl Fn(u16) -> Duration,
        mut each_slot: impl FnMut(&mut JitterBuffer),
    ) -> (Vec<(Duration, Option<u16>)>, JitterBuffer) {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(cfg);
        let mut arrivals: Vec<(Duration, u16)> =
            (0..packets).map(|s| (F * u32::from(s) + late(s), s)).collect();
        arrivals.sort();
        let mut out = Vec::new();
        let mut next = 0;
        for k in 0..u32::from(packets) + 10 {
            let now = phase + F * k;
            while let Some(&(at, seq)) = arrivals.get(next)
                && at <= now
            {
                jb.push(t0 + at, p(seq));
                next += 1;
            }
            each_slot(&mut jb);
            match jb.pop(t0 + now) {
                Playout::Frame(pk) => out.push((now, Some(pk.sequence))),
                Playout::Concealed => out.push((now, None)),
                Playout::Nothing => {}
            }
        }
        (out, jb)
    }

    #[test]
    fn a_clean_path_plays_after_the_minimum_delay() {
        let phase = Duration::from_millis(3);
        let (fixed, _) = drive(JitterConfig::default(), 20, phase, |_| Duration::ZERO, |_| {});
        let (adapt, jb) = drive(adaptive(), 20, phase, |_| Duration::ZERO, |_| {});
        // packet 0 arrives at 0: played at the first slot at least 60 ms (fixed) or
        // 10 ms (adaptive) later
        assert_eq!(fixed[0], (Duration::from_millis(63), Some(0)));
        assert_eq!(adapt[0], (Duration::from_millis(23), Some(0)));
        let played: Vec<_> = adapt.iter().filter_map(|x| x.1).collect();
        assert_eq!(played, (0..20).collect::<Vec<_>>());
        assert_eq!(jb.target_depth(), Duration::from_millis(10));
        assert_eq!((jb.stats().grown, jb.stats().shrunk), (0, 0));
    }

    #[test]
    fn measured_jitter_raises_the_target_up_to_depth() {
        let mut jb = JitterBuffer::new(adaptive());
        assert_eq!(jb.target_depth(), Duration::from_millis(10));
        jb.observe_jitter(Duration::from_millis(6));
        assert_eq!(jb.target_depth(), Duration::from_millis(24));
        jb.observe_jitter(Duration::from_millis(40));
        assert_eq!(jb.target_depth(), Duration::from_millis(60));
        // a fixed buffer ignores it
        let mut fixed = JitterBuffer::new(JitterConfig::default());
        fixed.observe_jitter(Duration::from_millis(40));
        assert_eq!(fixed.target_depth(), Duration::from_millis(60));
        // a talkspurt starts after the raised target
        jb.observe_jitter(Duration::from_millis(6));
        let t0 = Instant::now();
        jb.push(t0, p(1));
        assert_eq!(jb.pop(t0 + Duration::from_millis(20)), Playout::Nothing);
        assert_eq!(jb.pop(t0 + Duration::from_millis(24)), Playout::Frame(p(1)));
    }

    #[test]
    fn a_stall_grows_the_delay_and_a_pause_gives_it_back() {
        // The sender stalls: packets 5 (due at 100 ms) and 6 (120 ms) leave at 135 ms.
        // Slot 5 (at 123 ms) is concealed with the playout point kept, so every later
        // packet waits 20 ms longer.
        let phase = Duration::from_millis(3);
        let late = |s: u16| match s {
            5 => Duration::from_millis(35),
            6 => Duration::from_millis(15),
            _ => Duration::ZERO,
        };
        let mut surplus_seen = 0;
        let (out, jb) = drive(adaptive(), 200, phase, late, |jb| {
            if jb.surplus() {
                surplus_seen += 1;
                // every packet is quiet here: shed one
                assert!(jb.skip());
            }
        });
        let first: Vec<_> = out.iter().take(8).map(|x| x.1).collect();
        assert_eq!(
            first,
            vec![
                Some(0),
                Some(1),
                Some(2),
                Some(3),
                Some(4),
                None,
                Some(5),
                Some(6)
            ]
        );
        let s = jb.stats();
        assert_eq!((s.grown, s.lost), (1, 0));
        // the growth was given back after `grow_hold` slots, then a window of steady
        // surplus dropped one packet: the delay is back to the first one
        assert_eq!((s.shrunk, surplus_seen), (1, 1));
        assert_eq!(jb.target_depth(), Duration::from_millis(10));
        let waits: Vec<Duration> = out
            .iter()
            .filter_map(|&(at, seq)| seq.map(|q| at - F * u32::from(q)))
            .collect();
        assert_eq!(waits[0], Duration::from_millis(23));
        assert_eq!(waits[10], Duration::from_millis(43));
        assert_eq!(*waits.last().unwrap(), Duration::from_millis(23));
        // every packet but the dropped one was played, in order
        let played: Vec<u16> = out.iter().filter_map(|x| x.1).collect();
        assert_eq!(played.len(), 199);
        assert!(played.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn jitter_within_the_delay_changes_nothing() {
        // every odd packet 12 ms late: each still makes its slot, so the least wait
        // (11 ms) never leaves a whole interval to spare
        let late = |s: u16| Duration::from_millis(if s % 2 == 1 { 12 } else { 0 });
        let phase = Duration::from_millis(3);
        let (out, jb) = drive(adaptive(), 300, phase, late, |jb| assert!(!jb.surplus()));
        // every packet in its slot (then the 3 concealed slots of the stream's end)
        let played: Vec<_> = out.iter().take(300).map(|x| x.1).collect();
        assert_eq!(played, (0..300).map(Some).collect::<Vec<_>>());
        let s = jb.stats();
        assert_eq!((s.grown, s.shrunk, s.lost), (0, 0, 0));
    }

    #[test]
    fn a_fixed_buffer_never_reports_surplus() {
        let cfg = JitterConfig {
            depth: Duration::from_millis(100),
            ..JitterConfig::default()
        };
        let (out, jb) = drive(
            cfg,
            200,
            Duration::ZERO,
            |_| Duration::ZERO,
            |jb| assert!(!jb.surplus()),
        );
        assert_eq!(out.len(), 200 + 3);
        assert_eq!(jb.stats().shrunk, 0);
    }
}

#[cfg(test)]
mod timestamp_tests {
    use super::*;

    #[test]
    fn timestamp_jumps_do_not_disturb_playout() {
        // Timestamps jump forward (silence suppression at the sender), backwards (a
        // buggy peer) and wrap: playout follows the sequence numbers only.
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let t0 = Instant::now();
        let ts = [0u32, 160, 320, 80_000, 80_160, 10, 170, u32::MAX - 100, 59, 219];
        let mut out = Vec::new();
        for (i, &t) in ts.iter().enumerate() {
            let now = t0 + Duration::from_millis(20) * i as u32;
            let pk = RtpPacket {
                payload_type: 0,
                marker: i == 3,
                sequence: 500 + i as u16,
                timestamp: t,
                ssrc: 1,
                payload: vec![0; 160],
            };
            assert_eq!(jb.push(now, pk), PushOutcome::Accepted);
            if let Playout::Frame(p) = jb.pop(now) {
                out.push(p.timestamp);
            }
        }
        for i in 10..14u32 {
            if let Playout::Frame(p) = jb.pop(t0 + Duration::from_millis(20) * i) {
                out.push(p.timestamp);
            }
        }
        assert_eq!(out, ts);
        assert_eq!(jb.stats().lost + jb.stats().late + jb.stats().resyncs, 0);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives (any sequence numbers, any order, duplicates, jumps, wraps),
        /// the buffer never panics, never plays a sequence number twice, plays in
        /// ascending (extended) order between resyncs, and only plays what was pushed.
        #[test]
        fn playout_invariants(
            base in any::<u16>(),
            offsets in proptest::collection::vec((0u16..80, 0u32..4), 1..300),
            jumps in proptest::collection::vec(any::<u16>(), 0..3),
        ) {
            let mut jb = JitterBuffer::new(JitterConfig::default());
            let t0 = Instant::now();
            let mut pushed = std::collections::HashSet::new();
            let mut played: Vec<u16> = Vec::new();
            let mut last: Option<u16> = None;
            let resyncs_before = |jb: &JitterBuffer| jb.stats().resyncs + jb.stats().resets;
            let mut slot = 0u32;
            let mut shift = 0u16;
            for (i, (off, hold)) in offsets.iter().enumerate() {
                // every 97 packets the sender may jump (persistently)
                if i > 0 && i % 97 == 0 && let Some(j) = jumps.get(i / 97 - 1) {
                    shift = shift.wrapping_add(*j);
                }
                let seq = base.wrapping_add(i as u16).wrapping_add(*off).wrapping_sub(40).wrapping_add(shift);
                let now = t0 + Duration::from_millis(20) * slot;
                let before = resyncs_before(&jb);
                let pk = RtpPacket { payload_type: 0, marker: false, sequence: seq, timestamp: 0, ssrc: 1, payload: vec![] };
                if matches!(jb.push(now, pk), PushOutcome::Accepted | PushOutcome::Resynced) {
                    pushed.insert(seq);
                }
                if resyncs_before(&jb) != before { last = None; }
                for _ in 0..*hold {
                    slot += 1;
                    if let Playout::Frame(p) = jb.pop(t0 + Duration::from_millis(20) * slot) {
                        prop_assert!(pushed.contains(&p.sequence));
                        if let Some(l) = last {
                            let d = p.sequence.wrapping_sub(l) as i16;
                            prop_assert!(d > 0, "played {} after {}", p.sequence, l);
                        }
                        last = Some(p.sequence);
                        played.push(p.sequence);
                    }
                }
            }
            let s = jb.stats();
            prop_assert!(s.accepted as usize >= played.len());
        }
    }
}
