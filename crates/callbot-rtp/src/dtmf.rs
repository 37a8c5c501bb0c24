//! DTMF as RTP named telephone events (RFC 4733), sans-IO.
//!
//! Receiving: every packet of one key press carries the same RTP timestamp (the event
//! start); the last one has the E bit and is sent three times. [`DtmfReceiver`] reports
//! each key press **once**, when its first end packet arrives, or, if all end packets
//! were lost, when another event starts or the event has not been updated for
//! [`DtmfReceiver::STALE_AFTER`].
//!
//! Sending: [`DtmfSender`] yields one payload per 20 ms slot: updates with a growing
//! duration (the first one marked), then the final packet three times with the E bit.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A telephone-event payload (RFC 4733 section 2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPayload {
    /// Event code (0-9, 10 = `*`, 11 = `#`, 12-15 = A-D).
    pub event: u8,
    /// End of event.
    pub end: bool,
    /// Volume in -dBm0 (0..=63).
    pub volume: u8,
    /// Duration so far in timestamp units.
    pub duration: u16,
}

impl EventPayload {
    /// Parses the first 4 bytes; `None` when shorter.
    pub fn parse(b: &[u8]) -> Option<Self> {
        match b {
            [event, flags, d0, d1, ..] => Some(EventPayload {
                event: *event,
                end: flags & 0x80 != 0,
                volume: flags & 0x3F,
                duration: u16::from_be_bytes([*d0, *d1]),
            }),
            _ => None,
        }
    }

    /// The 4 wire bytes.
    pub fn to_bytes(self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (u8::from(self.end) << 7) | (self.volume & 0x3F),
            d[0],
            d[1],
        ]
    }
}

/// The key for an event code, if it is a DTMF key.
pub fn digit_for_event(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

/// The event code for a key (`0-9 * # A-D`, lower case accepted).
pub fn event_for_digit(digit: char) -> Option<u8> {
    match digit.to_ascii_uppercase() {
        c @ '0'..='9' => Some(c as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        c @ 'A'..='D' => Some(c as u8 - b'A' + 12),
        _ => None,
    }
}

/// One key press received from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfEvent {
    /// The key: `0-9`, `*`, `#`, `A-D`.
    pub digit: char,
    /// How long it was held (from the packets' duration field).
    pub duration: Duration,
    /// RTP timestamp of the event start (identifies the press).
    pub timestamp: u32,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    ts: u32,
    event: u8,
    duration: u16,
    updated: Instant,
}

/// Turns telephone-event packets into one [`DtmfEvent`] per key press.
#[derive(Debug, Default)]
pub struct DtmfReceiver {
    pending: Option<Pending>,
    last_done: Option<u32>,
    ignored: u64,
    ready: VecDeque<DtmfEvent>,
}

impl DtmfReceiver {
    /// An event not updated for this long is reported even without an end packet.
    pub const STALE_AFTER: Duration = Duration::from_millis(500);

    /// A fresh receiver.
    pub fn new() -> Self {
        Self::default()
    }

    /// Payloads that were not DTMF (short, unknown event codes).
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Forgets state (new SSRC).
    pub fn reset(&mut self) {
        self.pending = None;
        self.last_done = None;
        self.ready.clear();
    }

    fn finish(p: Pending) -> Option<DtmfEvent> {
        digit_for_event(p.event).map(|digit| DtmfEvent {
            digit,
            duration: Duration::from_micros(u64::from(p.duration) * 125),
            timestamp: p.ts,
        })
    }

    /// Handles one telephone-event packet (RTP timestamp and payload). Finished key
    /// presses are then returned by [`DtmfReceiver::poll`].
    pub fn on_packet(&mut self, now: Instant, timestamp: u32, payload: &[u8]) {
        let Some(ev) = EventPayload::parse(payload) else {
            self.ignored += 1;
            return;
        };
        if digit_for_event(ev.event).is_none() {
            self.ignored += 1;
            return;
        }
        if self.last_done == Some(timestamp) {
            return; // retransmitted end packet, or a late update of a finished press
        }
        match self.pending {
            Some(p) if p.ts == timestamp => {
                let d = p.duration.max(ev.duration);
                self.pending = Some(Pending {
                    duration: d,
                    updated: now,
                    ..p
                });
            }
            other => {
                // A new press: a previous one that never got its end packet is done.
                if let Some(prev) = other {
                    self.ready.extend(Self::finish(prev));
                }
                self.pending = Some(Pending {
                    ts: timestamp,
                    event: ev.event,
                    duration: ev.duration,
                    updated: now,
                });
            }
        }
        if ev.end
            && let Some(p) = self.pending.take()
        {
            self.last_done = Some(p.ts);
            self.ready.extend(Self::finish(p));
        }
    }

    /// The next finished key press, including one whose end packets were all lost
    /// (not updated for [`DtmfReceiver::STALE_AFTER`]). Call after each packet and
    /// periodically.
    pub fn poll(&mut self, now: Instant) -> Option<DtmfEvent> {
        if let Some(ev) = self.ready.pop_front() {
            return Some(ev);
        }
        let p = self.pending?;
        if now.duration_since(p.updated) >= Self::STALE_AFTER {
            self.pending = None;
            self.last_done = Some(p.ts);
            return Self::finish(p);
        }
        None
    }
}

/// Yields the payloads of one key press, one per 20 ms slot.
#[derive(Debug, Clone)]
pub struct DtmfSender {
    event: u8,
    total: u16,
    step: u16,
    sent_updates: u16,
    ends_sent: u8,
    volume: u8,
}

/// One telephone-event packet to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPacket {
    /// The payload.
    pub payload: EventPayload,
    /// Marker bit (first packet of the event).
    pub marker: bool,
}

impl DtmfSender {
    /// A press of `digit` held for `duration` (clamped to 40 ms..=8 s), 8 kHz clock,
    /// 20 ms packets, volume -10 dBm0. `None` for a character that is not a DTMF key.
    pub fn new(digit: char, duration: Duration) -> Option<Self> {
        let event = event_for_digit(digit)?;
        let ms = duration.as_millis().clamp(40, 8000) as u16;
        let total = ms.saturating_mul(8);
        Some(DtmfSender {
            event,
            total,
            step: 160,
            sent_updates: 0,
            ends_sent: 0,
            volume: 10,
        })
    }

    /// True when all packets (including the three end packets) have been taken.
    pub fn is_done(&self) -> bool {
        self.ends_sent >= 3
    }

    /// The packet for the next slot, `None` when done.
    pub fn next_packet(&mut self) -> Option<EventPacket> {
        if self.is_done() {
            return None;
        }
        let updates = self.total.div_ceil(self.step);
        let marker = self.sent_updates == 0 && self.ends_sent == 0;
        if self.sent_updates + 1 < updates {
            self.sent_updates += 1;
            return Some(EventPacket {
                payload: EventPayload {
                    event: self.event,
                    end: false,
                    volume: self.volume,
                    duration: self.sent_updates * self.step,
                },
                marker,
            });
        }
        self.ends_sent += 1;
        Some(EventPacket {
            payload: EventPayload {
                event: self.event,
                end: true,
                volume: self.volume,
                duration: self.total,
            },
            marker,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_then_receive_one_event_per_press() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new();
        let mut got = Vec::new();
        for (i, digit) in "19*#AD".chars().enumerate() {
            let mut tx = DtmfSender::new(digit, Duration::from_millis(100)).unwrap();
            let ts = 1000 + 8000 * i as u32;
            let mut n = 0;
            while let Some(pk) = tx.next_packet() {
                assert_eq!(pk.marker, n == 0);
                let b = pk.payload.to_bytes();
                // every packet twice (network duplication)
                for _ in 0..2 {
                    rx.on_packet(t0, ts, &b);
                    got.extend(rx.poll(t0));
                }
                n += 1;
            }
            assert_eq!(n, 4 + 3); // 100 ms = 5 slots: 4 updates + final x3
        }
        assert_eq!(got.iter().map(|e| e.digit).collect::<String>(), "19*#AD");
        assert!(got.iter().all(|e| e.duration == Duration::from_millis(100)));
        assert_eq!(rx.poll(t0 + Duration::from_secs(5)), None);
    }

    #[test]
    fn lost_end_packets_still_report_once() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new();
        let upd = EventPayload {
            event: 5,
            end: false,
            volume: 10,
            duration: 320,
        };
        rx.on_packet(t0, 100, &upd.to_bytes());
        assert_eq!(rx.poll(t0 + Duration::from_millis(100)), None);
        let ev = rx.poll(t0 + Duration::from_millis(600)).unwrap();
        assert_eq!(ev.digit, '5');
        assert_eq!(rx.poll(t0 + Duration::from_millis(900)), None);
        // a late end packet of the same press is not reported again
        let end = EventPayload { end: true, ..upd };
        rx.on_packet(t0, 100, &end.to_bytes());
        assert_eq!(rx.poll(t0 + Duration::from_millis(900)), None);
        // next press with lost end packets is flushed by the press after it, which ends
        rx.on_packet(t0, 900, &EventPayload { event: 7, ..upd }.to_bytes());
        rx.on_packet(
            t0,
            1900,
            &EventPayload {
                event: 8,
                end: true,
                ..upd
            }
            .to_bytes(),
        );
        assert_eq!(rx.poll(t0).unwrap().digit, '7');
        assert_eq!(rx.poll(t0).unwrap().digit, '8');
        assert_eq!(rx.poll(t0), None);
        rx.on_packet(t0, 5, &[1, 2]);
        rx.on_packet(t0, 5, &[200, 0x80, 0, 1]);
        assert_eq!(rx.poll(t0 + Duration::from_secs(9)), None);
        assert_eq!(rx.ignored(), 2);
    }

    #[test]
    fn digits_map_both_ways() {
        for e in 0..16u8 {
            assert_eq!(event_for_digit(digit_for_event(e).unwrap()), Some(e));
        }
        assert_eq!(event_for_digit('x'), None);
        assert!(DtmfSender::new('x', Duration::from_millis(100)).is_none());
    }
}
