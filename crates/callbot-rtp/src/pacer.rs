//! Sans-IO 20 ms clock with no drift.
//!
//! Tick `k` is due at `start + k * interval`, computed from the start instant each time
//! (never by adding up sleeps), so however late the driver wakes, the number of ticks
//! after `t` seconds is `floor(t / interval) + 1`. If the driver stalls for more than
//! `max_burst` intervals the missed ticks are skipped (and counted) rather than sent in
//! a burst the peer would have to discard.

use std::time::{Duration, Instant};

/// The clock that paces sending and playout.
#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    interval: Duration,
    next: u64,
    max_burst: u64,
    skipped: u64,
}

/// One due tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// Tick number since the start (0, 1, 2, ...; skipped ticks leave gaps).
    pub index: u64,
    /// When it was due.
    pub due: Instant,
}

impl Pacer {
    /// A clock whose tick 0 is due at `start`.
    pub fn new(start: Instant, interval: Duration) -> Self {
        Pacer {
            start,
            interval: interval.max(Duration::from_micros(100)),
            next: 0,
            max_burst: 10,
            skipped: 0,
        }
    }

    /// When tick `index` is due.
    pub fn due(&self, index: u64) -> Instant {
        let nanos = self.interval.as_nanos().saturating_mul(u128::from(index));
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        self.start + Duration::from_nanos(nanos)
    }

    /// When the next tick is due (the driver sleeps until then).
    pub fn next_due(&self) -> Instant {
        self.due(self.next)
    }

    /// Ticks skipped because the driver stalled.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The next due tick at `now`, if any. Call in a loop until `None`.
    pub fn poll(&mut self, now: Instant) -> Option<Tick> {
        let due = self.due(self.next);
        if now < due {
            return None;
        }
        let elapsed = now.duration_since(self.start).as_nanos();
        let current = u64::try_from(elapsed / self.interval.as_nanos()).unwrap_or(u64::MAX);
        if current.saturating_sub(self.next) >= self.max_burst {
            let skip_to = current + 1 - self.max_burst.min(current + 1);
            self.skipped += skip_to - self.next;
            self.next = skip_to.max(self.next);
        }
        let tick = Tick {
            index: self.next,
            due: self.due(self.next),
        };
        self.next += 1;
        Some(tick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_minutes_without_drift() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, Duration::from_millis(20));
        let mut now = t0;
        let mut count: u64 = 0;
        let mut x: u64 = 99;
        let end = t0 + Duration::from_secs(600);
        while now < end {
            while p.poll(now).is_some() {
                count += 1;
            }
            // wake up irregularly: 1..=25 ms late or early, like a loaded machine
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let step = 1_000 + (x >> 33) % 24_000;
            now += Duration::from_micros(step);
        }
        let elapsed = now.duration_since(t0).as_secs_f64();
        let expected = (elapsed / 0.020).floor() as i64 + 1;
        assert!((count as i64 - expected).abs() <= 1, "{count} vs {expected}");
        assert_eq!(p.skipped(), 0);
    }

    #[test]
    fn stall_skips_instead_of_bursting() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, Duration::from_millis(20));
        assert_eq!(p.poll(t0).map(|t| t.index), Some(0));
        assert_eq!(p.poll(t0), None);
        // one second stall
        let now = t0 + Duration::from_millis(1000);
        let mut n = 0;
        while p.poll(now).is_some() {
            n += 1;
        }
        assert_eq!(n, 10);
        assert_eq!(p.skipped(), 40);
        assert_eq!(p.next_due(), t0 + Duration::from_millis(1020));
    }
}
