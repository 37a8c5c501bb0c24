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
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            depth: Duration::from_millis(60),
            window: 64,
            max_excess: 10,
            max_conceal: 3,
            frame: Duration::from_millis(20),
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
                (Some((k, arrival)), _) if now >= arrival + self.cfg.depth => k,
                _ => return Playout::Nothing,
            };
            self.playing = true;
            self.conceal_run = 0;
            self.next = Some(start);
        }
        let Some(next) = self.next else {
            return Playout::Nothing;
        };
        if let Some(entry) = self.packets.remove(&next) {
            self.next = Some(next + 1);
            self.conceal_run = 0;
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
            return Playout::Concealed;
        }
        // A hole with later packets buffered: that packet is lost.
        self.next = Some(next + 1);
        self.stats.lost += 1;
        self.stats.concealed += 1;
        Playout::Concealed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(seq: u16) -> RtpPacket {
        RtpPacket {
            payload_type: 0,
            marker: false,
            sequence: seq,
            timestamp: u32::from(seq).wrapping_mul(160),
            ssrc: 7,
            payload: vec![seq as u8; 160],
        }
    }

    const F: Duration = Duration::from_millis(20);

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
