//! Shared by the `peers_*` integration tests: a [`Bot`] that owns a real
//! [`SipUserAgent`] handle and plays the application (answer every call, optionally hang
//! up after a delay), recording every event, while a peer runs on a scoped thread.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use callbot_sip::{CallId, EndReason, RegistrationState, SipConfig, SipEvent, SipHandle, SipUserAgent};

/// The application side of the tests.
pub(crate) struct Bot {
    /// The user agent.
    pub(crate) handle: SipHandle,
    /// Every event received, with its arrival time.
    pub(crate) events: Vec<(Instant, SipEvent)>,
    /// Answer incoming calls (else leave them ringing).
    pub(crate) auto_answer: bool,
    /// Hang up answered calls after this long.
    pub(crate) hang_up_after: Option<Duration>,
    /// Count events in `counts` instead of recording them in `events` (memory
    /// measurements: a Vec of every event of 10,000 calls is megabytes the test itself
    /// would hold, and freeing it would move glibc's thresholds under the measured UA).
    pub(crate) count_only: bool,
    /// Events seen in `count_only` mode by kind: `incoming`, `ended: REASON`, `other`.
    pub(crate) counts: BTreeMap<String, usize>,
    answered: HashMap<CallId, Instant>,
    rtp: SocketAddr,
}

impl Bot {
    /// A UA bound to `ip:0` with defaults, answering every call.
    pub(crate) fn start(ip: IpAddr) -> Bot {
        Bot::start_with(SipConfig::new(SocketAddr::new(ip, 0)))
    }

    /// A UA with `config`, answering every call.
    pub(crate) fn start_with(mut config: SipConfig) -> Bot {
        if config.event_capacity < 4096 {
            config.event_capacity = 4096;
        }
        let ip = config.bind.ip();
        let handle = SipUserAgent::start(config).expect("start SIP user agent");
        // No media in these tests: the SDP answer names a port nobody reads.
        let rtp = SocketAddr::new(ip, callbot_testkit::ports::free_udp_port_on(ip, false));
        Bot {
            handle,
            events: Vec::new(),
            auto_answer: true,
            hang_up_after: None,
            count_only: false,
            counts: BTreeMap::new(),
            answered: HashMap::new(),
            rtp,
        }
    }

    /// The UA's SIP address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// The RTP address put in our SDP.
    pub(crate) fn rtp(&self) -> SocketAddr {
        self.rtp
    }

    /// Handles events for `dur`.
    pub(crate) fn pump(&mut self, dur: Duration) {
        let end = Instant::now() + dur;
        loop {
            self.hang_up_due();
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            if let Ok(ev) = self
                .handle
                .events()
                .recv_timeout(left.min(Duration::from_millis(20)))
            {
                self.on_event(ev);
            }
        }
    }

    /// Handles events until `pred` holds for the recorded events or `timeout` passes.
    pub(crate) fn pump_until(&mut self, timeout: Duration, pred: impl Fn(&Bot) -> bool) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if pred(self) {
                return true;
            }
            self.pump(Duration::from_millis(20));
        }
        pred(self)
    }

    /// Runs `peer` on a scoped thread while handling events; returns its result.
    pub(crate) fn run_while<T: Send>(&mut self, peer: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let job = std::thread::Builder::new()
                .name("peer".into())
                .spawn_scoped(s, peer)
                .expect("spawn peer thread");
            while !job.is_finished() {
                self.pump(Duration::from_millis(20));
            }
            let out = job.join().expect("peer thread panicked");
            self.pump(Duration::from_millis(50));
            out
        })
    }

    fn on_event(&mut self, ev: SipEvent) {
        if let SipEvent::IncomingCall { call, .. } = &ev
            && self.auto_answer
        {
            match self.handle.answer(*call, self.rtp) {
                Ok(()) => {
                    self.answered.insert(*call, Instant::now());
                }
                Err(e) => eprintln!("answer {call}: {e}"),
            }
        }
        if let SipEvent::CallEnded { call, .. } = &ev {
            self.answered.remove(call);
        }
        if self.count_only {
            let kind = match &ev {
                SipEvent::IncomingCall { .. } => "incoming".to_string(),
                SipEvent::CallEnded { reason, .. } => format!("ended: {reason}"),
                _ => "other".to_string(),
            };
            *self.counts.entry(kind).or_default() += 1;
            return;
        }
        self.events.push((Instant::now(), ev));
    }

    fn hang_up_due(&mut self) {
        let Some(after) = self.hang_up_after else {
            return;
        };
        let due: Vec<CallId> = self
            .answered
            .iter()
            .filter(|(_, t)| t.elapsed() >= after)
            .map(|(c, _)| *c)
            .collect();
        for c in due {
            self.answered.remove(&c);
            if let Err(e) = self.handle.hang_up(c) {
                eprintln!("hang up {c}: {e}");
            }
        }
    }

    /// Incoming calls seen.
    pub(crate) fn incoming(&self) -> usize {
        self.events
            .iter()
            .filter(|(_, e)| matches!(e, SipEvent::IncomingCall { .. }))
            .count()
    }

    /// (call, reason) of every ended call.
    pub(crate) fn ended(&self) -> Vec<(CallId, EndReason)> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                SipEvent::CallEnded { call, reason } => Some((*call, reason.clone())),
                _ => None,
            })
            .collect()
    }

    /// Registration states seen, in order.
    pub(crate) fn registrations(&self) -> Vec<(Instant, RegistrationState)> {
        self.events
            .iter()
            .filter_map(|(t, e)| match e {
                SipEvent::Registration(r) => Some((*t, r.clone())),
                _ => None,
            })
            .collect()
    }

    /// Waits until no call and no dialog is left (transactions linger for their
    /// absorption timers J/K and are not waited for).
    pub(crate) fn wait_no_calls(&mut self, timeout: Duration) -> callbot_sip::CoreStats {
        let end = Instant::now() + timeout;
        loop {
            let st = self.handle.stats().expect("stats");
            if (st.calls == 0 && st.dialogs == 0) || Instant::now() >= end {
                return st;
            }
            self.pump(Duration::from_millis(100));
        }
    }

    /// Waits until every table is empty: calls, dialogs and both transaction tables
    /// (transactions linger up to 64*T1 for their absorption timers).
    pub(crate) fn wait_idle(&mut self, timeout: Duration) -> callbot_sip::CoreStats {
        let end = Instant::now() + timeout;
        loop {
            let st = self.handle.stats().expect("stats");
            let idle = st.calls == 0
                && st.dialogs == 0
                && st.server_transactions == 0
                && st.client_transactions == 0;
            if idle || Instant::now() >= end {
                return st;
            }
            self.pump(Duration::from_millis(200));
        }
    }
}
