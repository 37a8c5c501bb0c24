//! RFC 3261 section 17 transaction state machines (UDP), sans-IO.
//!
//! Server transactions keep the last response so a retransmitted request is answered
//! from the transaction and never reaches the application twice. Client transactions
//! retransmit their request (timers A/E) and time out (timers B/F). Every state that
//! waits has a deadline; `next_deadline` tells the core when to call back.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// RFC 3261 timer values. Defaults: T1 500 ms, T2 4 s, T4 5 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// RTT estimate (T1).
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses (T2).
    pub t2: Duration,
    /// Maximum time a message stays in the network (T4).
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl Timers {
    /// 64*T1: timers B, F, H, J, L, M.
    pub fn t64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }
}

/// Server transaction key: method (ACK matches INVITE), branch and sent-by, in one
/// shared allocation: the transaction table and the timer heap hold the same key, so
/// scheduling a timer allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ServerKey {
    /// A hash of `text`, ordered first: a search in the B-tree table and timer queue
    /// compares integers and reads the text only where two hashes are equal (in a
    /// tree a collision costs one string compare, so the hash need not resist
    /// chosen keys).
    hash: u64,
    text: Arc<str>,
}

/// Separates the parts of a [`ServerKey`]: a header value holds no line break once the
/// message layer normalised it, so two different (method, branch, sent-by) never meet.
const KEY_SEP: char = '\n';

impl ServerKey {
    /// The key of `method` (ACK passes INVITE), `branch` and the sent-by `host[:port]`.
    pub(crate) fn new(method: &str, branch: &str, host: &str, port: Option<u16>) -> ServerKey {
        let mut key = String::with_capacity(method.len() + branch.len() + host.len() + 8);
        key.push_str(method);
        key.push(KEY_SEP);
        key.push_str(branch);
        key.push(KEY_SEP);
        key.push_str(host);
        if let Some(port) = port {
            key.push(':');
            crate::message::push_decimal(&mut key, port.into());
        }
        ServerKey::from_text(key)
    }

    fn from_text(text: String) -> ServerKey {
        ServerKey {
            hash: word_hash(text.as_bytes()),
            text: text.into(),
        }
    }

    /// The key of the transaction with the same branch and sent-by for `method`
    /// (a CANCEL finds the INVITE it cancels).
    pub(crate) fn with_method(&self, method: &str) -> ServerKey {
        let rest = self.text.split_once(KEY_SEP).map_or("", |(_, rest)| rest);
        ServerKey::from_text(format!("{method}{KEY_SEP}{rest}"))
    }
}

/// The multiplier of [`word_hash`].
const WORD_HASH_K: u64 = 0x517c_c1b7_2722_0a95;

/// A multiply-rotate hash over eight bytes at a time (the mixing step of rustc's
/// FxHash), with the length mixed in.
fn word_hash(bytes: &[u8]) -> u64 {
    let mix = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(WORD_HASH_K);
    let mut chunks = bytes.chunks_exact(8);
    let mut h = bytes.len() as u64;
    for chunk in &mut chunks {
        if let Ok(word) = <[u8; 8]>::try_from(chunk) {
            h = mix(h, u64::from_le_bytes(word));
        }
    }
    let mut tail = [0u8; 8];
    for (t, b) in tail.iter_mut().zip(chunks.remainder()) {
        *t = *b;
    }
    mix(h, u64::from_le_bytes(tail))
}

/// Client transaction key: our branch (a CANCEL's own transaction adds `#cancel`),
/// shared by the table and the timer heap like [`ServerKey`].
pub(crate) type ClientKey = Arc<str>;

/// The client transaction table. Its keys are the branches this UA generated (random), so
/// a hash that resists chosen keys buys nothing: a response can only look a branch up,
/// never add one. [`word_hash`] per write instead of SipHash (every response looks its
/// transaction up twice: to match it and to schedule its timer).
pub(crate) type ClientTable = HashMap<ClientKey, ClientTx, BuildHasherDefault<KeyHasher>>;

/// The [`std::hash::Hasher`] of [`ClientTable`].
#[derive(Debug, Default)]
pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = (self.0.rotate_left(5) ^ word_hash(bytes)).wrapping_mul(WORD_HASH_K);
    }

    fn write_u8(&mut self, byte: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(WORD_HASH_K);
    }

    fn finish(&self) -> u64 {
        // The table takes its bucket from the low bits and its tag from the high ones: a
        // multiply only carries upwards, so fold the high bits down and mix once more.
        let x = (self.0 ^ (self.0 >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^ (x >> 29)
    }
}

/// Server transaction states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerState {
    /// INVITE: provisional sent; non-INVITE: no final yet.
    Proceeding,
    /// Final non-2xx (INVITE) or any final (non-INVITE) sent.
    Completed,
    /// INVITE: ACK for the non-2xx received (timer I running).
    Confirmed,
    /// INVITE: 2xx sent, retransmitted until ACK (timer L / H-like give-up).
    Accepted,
}

/// What a server transaction timer produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ServerTimeout {
    /// Retransmit this response (timer G or 2xx retransmission).
    Retransmit,
    /// The transaction is over; remove it.
    Terminated,
    /// No ACK arrived (timer H, or the 2xx give-up): remove it and tell the TU.
    NoAck,
}

/// One server transaction. It holds no parsed message: once a final response is sent
/// only what absorbing retransmissions needs stays (the serialized response, where it
/// went, the timers), and once the final is acknowledged not even the response.
#[derive(Debug)]
pub(crate) struct ServerTx {
    pub(crate) invite: bool,
    pub(crate) state: ServerState,
    last_response: Option<Box<[u8]>>,
    pub(crate) dest: SocketAddr,
    retransmit_at: Option<Instant>,
    interval: Duration,
    timeout_at: Option<Instant>,
    acked: bool,
    /// The call this INVITE transaction belongs to.
    pub(crate) call: Option<crate::core::CallId>,
}

impl ServerTx {
    pub(crate) fn new(invite: bool, dest: SocketAddr) -> ServerTx {
        ServerTx {
            invite,
            state: ServerState::Proceeding,
            last_response: None,
            dest,
            retransmit_at: None,
            interval: Duration::ZERO,
            timeout_at: None,
            acked: false,
            call: None,
        }
    }

    /// Records a response the TU sends through this transaction.
    pub(crate) fn send_response(&mut self, now: Instant, code: u16, bytes: Box<[u8]>, timers: &Timers) {
        self.last_response = Some(bytes);
        if code < 200 {
            return;
        }
        if self.invite {
            self.interval = timers.t1;
            self.retransmit_at = Some(now + timers.t1);
            self.timeout_at = Some(now + timers.t64());
            self.state = if code < 300 {
                ServerState::Accepted
            } else {
                ServerState::Completed
            };
        } else {
            self.state = ServerState::Completed;
            // Timer J: 64*T1 for unreliable transports.
            self.timeout_at = Some(now + timers.t64());
        }
    }

    /// The response to resend when the request is retransmitted or timer G fires; none
    /// once the final response was acknowledged (RFC 3261 17.2.1 and RFC 6026 absorb
    /// later retransmissions).
    pub(crate) fn last_response(&self) -> Option<&[u8]> {
        self.last_response.as_deref()
    }

    /// An ACK arrived (for the non-2xx, or for the 2xx via the dialog).
    pub(crate) fn on_ack(&mut self, now: Instant, timers: &Timers) -> bool {
        match self.state {
            ServerState::Completed => {
                self.state = ServerState::Confirmed;
                self.retransmit_at = None;
                self.last_response = None;
                // Timer I: T4 for unreliable transports.
                self.timeout_at = Some(now + timers.t4);
                true
            }
            ServerState::Accepted if !self.acked => {
                self.acked = true;
                self.retransmit_at = None;
                // Timer L only absorbs INVITE retransmissions from here on.
                self.last_response = None;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match (self.retransmit_at, self.timeout_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn on_timeout(&mut self, now: Instant, timers: &Timers) -> Option<ServerTimeout> {
        if self.timeout_at.is_some_and(|t| t <= now) {
            self.timeout_at = None;
            self.retransmit_at = None;
            let no_ack = self.invite
                && match self.state {
                    ServerState::Completed => true,
                    ServerState::Accepted => !self.acked,
                    _ => false,
                };
            return Some(if no_ack {
                ServerTimeout::NoAck
            } else {
                ServerTimeout::Terminated
            });
        }
        if self.retransmit_at.is_some_and(|t| t <= now) {
            // Timer G (non-2xx) and the 2xx retransmission both double up to T2.
            self.interval = (self.interval * 2).min(timers.t2);
            self.retransmit_at = Some(now + self.interval);
            return Some(ServerTimeout::Retransmit);
        }
        None
    }
}

/// Client transaction states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientState {
    /// Request sent, nothing heard (Calling / Trying).
    Calling,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived (timer D / K running).
    Completed,
}

/// What a client transaction timer produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ClientTimeout {
    /// Retransmit the request (timer A / E).
    Retransmit,
    /// No final response in time (timer B / F): tell the TU, remove.
    TimedOut,
    /// Timer D / K / M fired: remove quietly.
    Terminated,
}

/// One client transaction. Like [`ServerTx`] it holds serialized bytes only: the
/// request until a final response arrives, then (INVITE non-2xx) the ACK to resend.
#[derive(Debug)]
pub(crate) struct ClientTx {
    pub(crate) invite: bool,
    pub(crate) state: ClientState,
    request: Box<[u8]>,
    pub(crate) dest: SocketAddr,
    /// For INVITE: the ACK sent for a non-2xx final (resent on retransmitted finals).
    ack: Option<Box<[u8]>>,
    retransmit_at: Option<Instant>,
    interval: Duration,
    timeout_at: Option<Instant>,
    /// Who to tell about responses.
    pub(crate) owner: crate::core::TxOwner,
    /// Its key in the client table (a response schedules the next timer with it: no
    /// second lookup).
    pub(crate) key: ClientKey,
}

impl ClientTx {
    pub(crate) fn new(
        now: Instant,
        invite: bool,
        request: Box<[u8]>,
        dest: SocketAddr,
        owner: crate::core::TxOwner,
        key: ClientKey,
        timers: &Timers,
    ) -> ClientTx {
        ClientTx {
            invite,
            state: ClientState::Calling,
            request,
            dest,
            ack: None,
            retransmit_at: Some(now + timers.t1),
            interval: timers.t1,
            timeout_at: Some(now + timers.t64()),
            owner,
            key,
        }
    }

    /// The request (retransmitted by timers A/E); empty once a final response arrived.
    pub(crate) fn request(&self) -> &[u8] {
        &self.request
    }

    /// The ACK resent on retransmissions of a non-2xx final response.
    pub(crate) fn ack(&self) -> Option<&[u8]> {
        self.ack.as_deref()
    }

    /// Completed: keeps `ack` (the ACK for a non-2xx, if any) and lets the request go,
    /// nothing retransmits it any more.
    pub(crate) fn completed(&mut self, ack: Option<Box<[u8]>>) {
        self.ack = ack;
        self.request = Box::default();
    }

    /// A response arrived. Returns true when the TU should see it (false: absorbed
    /// retransmission of a final response).
    pub(crate) fn on_response(&mut self, now: Instant, code: u16, timers: &Timers) -> bool {
        if self.state == ClientState::Completed {
            return false;
        }
        if code < 200 {
            if self.state == ClientState::Calling {
                self.state = ClientState::Proceeding;
                if self.invite {
                    // RFC 3261 17.1.1.2: timers A and B only run in Calling; in
                    // Proceeding the TU bounds the wait (it CANCELs).
                    self.retransmit_at = None;
                    self.timeout_at = None;
                } else {
                    // Timer E continues at T2.
                    self.interval = timers.t2;
                    self.retransmit_at = Some(now + timers.t2);
                }
            }
            return true;
        }
        self.state = ClientState::Completed;
        self.retransmit_at = None;
        self.timeout_at = Some(if self.invite {
            if code < 300 {
                // RFC 6026 Accepted: timer M absorbs 2xx retransmissions (the TU ACKs them).
                now + timers.t64()
            } else {
                // Timer D: at least 32 s for unreliable transports.
                now + Duration::from_secs(32).max(timers.t64() / 2)
            }
        } else {
            // Timer K: T4.
            now + timers.t4
        });
        true
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match (self.retransmit_at, self.timeout_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn on_timeout(&mut self, now: Instant, timers: &Timers) -> Option<ClientTimeout> {
        if self.timeout_at.is_some_and(|t| t <= now) {
            self.timeout_at = None;
            self.retransmit_at = None;
            return Some(if self.state == ClientState::Completed {
                ClientTimeout::Terminated
            } else {
                ClientTimeout::TimedOut
            });
        }
        if self.retransmit_at.is_some_and(|t| t <= now) {
            self.interval = if self.invite {
                self.interval * 2
            } else {
                (self.interval * 2).min(timers.t2)
            };
            self.retransmit_at = Some(now + self.interval);
            return Some(ClientTimeout::Retransmit);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_keys_order_by_hash_and_match_by_text() {
        let invite = ServerKey::new("INVITE", "z9hG4bK1", "127.0.0.1", Some(5060));
        assert_eq!(
            invite,
            ServerKey::new("INVITE", "z9hG4bK1", "127.0.0.1", Some(5060))
        );
        assert_eq!(
            invite,
            ServerKey::new("CANCEL", "z9hG4bK1", "127.0.0.1", Some(5060)).with_method("INVITE")
        );
        let others = [
            ServerKey::new("CANCEL", "z9hG4bK1", "127.0.0.1", Some(5060)),
            ServerKey::new("INVITE", "z9hG4bK2", "127.0.0.1", Some(5060)),
            ServerKey::new("INVITE", "z9hG4bK1", "127.0.0.1", None),
            ServerKey::new("INVITE", "z9hG4bK1", "127.0.0.1", Some(5061)),
        ];
        for other in &others {
            assert_ne!(&invite, other);
        }
        // Equal hashes fall back to the text: two keys of one hash stay apart.
        let (a, b) = (
            ServerKey {
                hash: 7,
                text: "a".into(),
            },
            ServerKey {
                hash: 7,
                text: "b".into(),
            },
        );
        let table: std::collections::BTreeMap<_, _> = [(a.clone(), 1), (b.clone(), 2)].into();
        assert_eq!((table.get(&a), table.get(&b)), (Some(&1), Some(&2)));
        assert_ne!(word_hash(b"abcdefgh1"), word_hash(b"abcdefgh2"));
        assert_ne!(word_hash(b"abc"), word_hash(b"abc\0"));
    }

    #[test]
    fn client_table_finds_by_str_and_spreads_keys() {
        use std::hash::BuildHasher;
        let timers = Timers::default();
        let now = Instant::now();
        let dest: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let mut table = ClientTable::default();
        let keys: Vec<String> = (0..1000).map(|i| format!("z9hG4bK{i:08}")).collect();
        for k in &keys {
            let tx = ClientTx::new(
                now,
                false,
                Box::default(),
                dest,
                crate::core::TxOwner::Register,
                ClientKey::from(k.as_str()),
                &timers,
            );
            table.insert(tx.key.clone(), tx);
        }
        assert!(keys.iter().all(|k| table.contains_key(k.as_str())));
        assert!(!table.contains_key("z9hG4bK00001000"));
        assert!(!table.contains_key(&format!("{}#cancel", keys[0])[..]));
        // Keys one digit apart land in many buckets (low bits) and tags (high bits).
        let hashes: Vec<u64> = keys.iter().map(|k| table.hasher().hash_one(k.as_str())).collect();
        let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        let high: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(low.len() > 500, "{} of 1024 buckets", low.len());
        assert_eq!(high.len(), 128);
    }
}
