//! The sans-IO user agent core: transactions, dialogs, registration, UAS and UAC logic.
//!
//! No socket, no thread, no clock: datagrams and time go in through
//! [`UserAgentCore::handle_datagram`] and [`UserAgentCore::handle_timeout`], datagrams
//! to send come out of [`UserAgentCore::poll_transmit`], application events out of
//! [`UserAgentCore::poll_event`], and [`UserAgentCore::poll_timeout`] says when to call
//! `handle_timeout` next.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::digest::{DigestChallenge, DigestCredentials};
use crate::media::{self, MediaError, NegotiatedMedia, Offer};
use crate::message::{self, EchoHeaders, Method, Parsed, SipMsg, StartLine};
use crate::transaction::{
    ClientKey, ClientState, ClientTable, ClientTimeout, ClientTx, ServerKey, ServerState, ServerTimeout,
    ServerTx, Timers,
};

use self::registration::Registration;
pub use self::registration::StagedRegistration;

/// Methods this UA implements (the `Allow` header).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS";
const ACCEPT: &str = "application/sdp";
const BRANCH_COOKIE: &str = "z9hG4bK";
/// Tables (maps, queues, the timer heap) at or below this capacity are never shrunk.
const SHRINK_MIN_CAPACITY: usize = 64;
/// Records (transactions and calls) a load peak must reach for its end to be reported
/// by [`UserAgentCore::take_drained`].
const DRAINED_MIN_PEAK: usize = 1000;

/// Identifies one call (one INVITE dialog) for the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "call-{}", self.0)
    }
}

/// Configuration of the core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The address written in Via and Contact (the bound socket address).
    pub local_addr: SocketAddr,
    /// User part of our Contact and From URIs.
    pub user: String,
    /// Maximum simultaneous calls; further INVITEs get 486 Busy Here.
    pub max_calls: usize,
    /// Largest datagram accepted (bigger ones are dropped and counted).
    pub max_message_size: usize,
    /// RFC 3261 timers.
    pub timers: Timers,
    /// `User-Agent` / `Server` header value.
    pub user_agent: String,
    /// Retry-After seconds on 503 while shutting down.
    pub retry_after_secs: u32,
    /// Longest an unanswered call may ring: an incoming call the application neither
    /// answered nor rejected gets 480, an outgoing one is cancelled (`EndReason::Timeout`).
    pub ring_timeout: Duration,
    /// Credentials used for digest challenges on INVITE (and REGISTER when registering).
    pub credentials: Option<DigestCredentials>,
    /// Register with a registrar, if set.
    pub registration: Option<RegistrationConfig>,
}

impl CoreConfig {
    /// A configuration with defaults for everything but the local address.
    pub fn new(local_addr: SocketAddr) -> CoreConfig {
        CoreConfig {
            local_addr,
            user: "callbot".into(),
            max_calls: 100,
            max_message_size: 65_535,
            timers: Timers::default(),
            user_agent: concat!("callbot-sip/", env!("CARGO_PKG_VERSION")).into(),
            retry_after_secs: 5,
            ring_timeout: Duration::from_secs(120),
            credentials: None,
            registration: None,
        }
    }
}

/// Where and how to register.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// Registrar address (requests are sent there).
    pub registrar: SocketAddr,
    /// Domain of the address of record (`sip:user@domain`); also the Request-URI host.
    pub domain: String,
    /// Requested expiry in seconds.
    pub expires: u32,
    /// First retry delay after a failure (doubles up to `retry_max`).
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl RegistrationConfig {
    /// Registration at `registrar` for `sip:USER@domain` with 3600 s expiry and 2..300 s backoff.
    pub fn new(registrar: SocketAddr, domain: impl Into<String>) -> RegistrationConfig {
        RegistrationConfig {
            registrar,
            domain: domain.into(),
            expires: 3600,
            retry_min: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
        }
    }
}

/// Registration status, reported through [`SipEvent::Registration`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationState {
    /// A REGISTER is in flight.
    Registering,
    /// The registrar accepted; `expires` is what it granted (seconds).
    Registered {
        /// Granted expiry in seconds.
        expires: u32,
    },
    /// The attempt failed; another follows after `retry_in` (with backoff).
    Failed {
        /// Why (status line or timeout).
        reason: String,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
    /// The binding was removed (Expires: 0 answered) or registration was never made.
    Unregistered,
}

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The remote party sent BYE.
    RemoteHangup,
    /// We hung up (BYE answered, or timed out) or cancelled our own INVITE.
    LocalHangup,
    /// The caller cancelled before we answered (we sent 487).
    CallerCancelled,
    /// We rejected the incoming call with this status (480 when the application let it
    /// ring longer than `ring_timeout`).
    Rejected {
        /// Status we sent.
        code: u16,
    },
    /// The callee refused our INVITE with this status.
    Refused {
        /// Status received.
        code: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// We answered but no ACK arrived within 64*T1 (we sent BYE).
    NoAck,
    /// No response to our INVITE or BYE in time, or our INVITE rang longer than
    /// `ring_timeout` (we cancelled it).
    Timeout,
    /// The remote answer was unusable (no codec, bad SDP); we sent BYE.
    MediaFailed(String),
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::RemoteHangup => write!(f, "remote hangup"),
            EndReason::LocalHangup => write!(f, "local hangup"),
            EndReason::CallerCancelled => write!(f, "caller cancelled"),
            EndReason::Rejected { code } => write!(f, "rejected {code}"),
            EndReason::Refused { code, reason } => write!(f, "refused {code} {reason}"),
            EndReason::NoAck => write!(f, "no ACK"),
            EndReason::Timeout => write!(f, "timeout"),
            EndReason::MediaFailed(r) => write!(f, "media failed: {r}"),
        }
    }
}

/// Something the application should know.
#[derive(Debug, Clone, PartialEq)]
pub enum SipEvent {
    /// An INVITE with a usable offer arrived. Answer, reject or ring.
    IncomingCall {
        /// The call.
        call: CallId,
        /// The SIP Call-ID header value (for logs, CDRs and recording names).
        call_id: String,
        /// From header value.
        from: String,
        /// To header value.
        to: String,
        /// Media negotiated from the offer.
        media: NegotiatedMedia,
    },
    /// Our 200 was acknowledged: the call is up (UAS).
    CallConfirmed {
        /// The call.
        call: CallId,
    },
    /// A provisional response to our INVITE (UAC).
    CallProgress {
        /// The call.
        call: CallId,
        /// Status code (180, 183...).
        code: u16,
    },
    /// Our INVITE was answered with 200 and ACKed (UAC).
    CallAnswered {
        /// The call.
        call: CallId,
        /// Media negotiated from the answer.
        media: NegotiatedMedia,
    },
    /// A re-INVITE changed the media (hold, new address); it was answered 200.
    MediaUpdated {
        /// The call.
        call: CallId,
        /// The new media.
        media: NegotiatedMedia,
    },
    /// The call is over and forgotten. Exactly one per call.
    CallEnded {
        /// The call.
        call: CallId,
        /// Why.
        reason: EndReason,
    },
    /// Registration status changed.
    Registration(RegistrationState),
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub destination: SocketAddr,
    /// The SIP message.
    pub payload: Vec<u8>,
}

/// Errors of the command methods.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    /// No such call (ended, or never existed).
    #[error("no such call: {0}")]
    UnknownCall(CallId),
    /// The call is not in a state where this command applies.
    #[error("{call} cannot {command} now")]
    WrongState {
        /// The call.
        call: CallId,
        /// The command.
        command: &'static str,
    },
    /// The status code is not a final error status (300-699).
    #[error("invalid reject status {0}")]
    InvalidStatus(u16),
    /// The user agent is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// Too many calls.
    #[error("max_calls reached")]
    TooManyCalls,
    /// The target URI is not a usable SIP URI.
    #[error("invalid target: {0}")]
    InvalidTarget(String),
    /// No staged registration accepted by the registrar to commit.
    #[error("no accepted staged registration to commit")]
    NoStagedRegistration,
}

/// Counters and table sizes, for tests and monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Live calls (dialogs and pending INVITEs).
    pub calls: usize,
    /// Dialog index entries.
    pub dialogs: usize,
    /// Live server transactions.
    pub server_transactions: usize,
    /// Live client transactions.
    pub client_transactions: usize,
    /// Datagrams dropped without an answer (unparseable, too big, stray responses).
    pub dropped: u64,
    /// Requests answered with an error by the message layer (400, 501, 505, 416).
    pub rejected: u64,
    /// Request retransmissions absorbed by a server transaction.
    pub retransmissions_absorbed: u64,
}

/// Who owns a client transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxOwner {
    /// The call's INVITE.
    Invite(CallId),
    /// The call's BYE.
    Bye(CallId),
    /// A CANCEL for the call's INVITE.
    Cancel(CallId),
    /// A REGISTER.
    Register,
}

/// What the transaction layer hands up to the transaction user (the second half of
/// [`UserAgentCore::handle_datagram`]).
#[derive(Debug)]
pub(crate) enum Incoming<'a> {
    /// A request that opened a new server transaction (a new INVITE has had its
    /// 100 Trying).
    Request {
        key: ServerKey,
        method: Method,
        msg: Box<SipMsg<'a>>,
    },
    /// An ACK: for a non-2xx (its INVITE transaction) or a 2xx (its dialog).
    Ack { key: ServerKey, msg: Box<SipMsg<'a>> },
    /// A response a client transaction let through (not an absorbed retransmission).
    Response {
        owner: TxOwner,
        code: u16,
        msg: Box<SipMsg<'a>>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    /// UAS: INVITE received, not answered yet.
    Incoming,
    /// UAS: 200 sent, waiting for ACK.
    Answered,
    /// UAC: INVITE sent.
    Outgoing,
    /// Dialog confirmed.
    Confirmed,
    /// BYE or CANCEL sent, waiting for the answer.
    Terminating,
}

#[derive(Debug)]
struct Call {
    state: CallState,
    sip_call_id: String,
    local_tag: String,
    remote_tag: Option<String>,
    /// Our From/To value (with tag).
    local_party: String,
    /// Their From/To value (with tag once known).
    remote_party: String,
    remote_target: String,
    route_set: Vec<String>,
    /// Where in-dialog requests go.
    peer: SocketAddr,
    local_cseq: u32,
    remote_cseq: u32,
    /// UAS: the INVITE server transaction and the request's echo headers.
    invite_tx: Option<ServerKey>,
    invite_echo: Option<EchoHeaders>,
    /// UAS: the negotiated offer, until answered.
    offer: Option<Offer>,
    /// Our RTP address once answered / offered.
    local_rtp: Option<SocketAddr>,
    sdp_version: u64,
    sdp_session: u64,
    media: Option<NegotiatedMedia>,
    /// UAC: the INVITE request's URI, branch and body, for CANCEL and auth retries.
    invite_uri: String,
    invite_branch: Option<String>,
    invite_body: Vec<u8>,
    auth_tried: bool,
    provisional_seen: bool,
    cancel_pending: bool,
    /// UAC: the ACK for the 2xx, resent on 2xx retransmissions.
    ack: Option<Vec<u8>>,
    /// Reason to report once a BYE/CANCEL we sent completes.
    end_reason: Option<EndReason>,
}

/// What a timer-heap entry points at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Server(ServerKey),
    Client(ClientKey),
    /// The ring timeout of an unanswered call.
    Ring(CallId),
}

/// Pending deadlines in time order; an entry may be stale (its transaction moved on or
/// ended), which is checked when it fires.
#[derive(Debug, Default)]
struct TimerQueue(BTreeSet<(Instant, TimerKey)>);

impl TimerQueue {
    fn push(&mut self, at: Instant, key: TimerKey) {
        self.0.insert((at, key));
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.0.first().map(|(t, _)| *t)
    }

    /// The earliest entry due at `now`, removed.
    fn pop_due(&mut self, now: Instant) -> Option<TimerKey> {
        if self.next_deadline()? > now {
            return None;
        }
        self.0.pop_first().map(|(_, key)| key)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// The sans-IO SIP user agent.
#[derive(Debug)]
pub struct UserAgentCore {
    cfg: CoreConfig,
    /// Deadlines of transactions (entries may be stale: checked when they fire).
    timer_heap: TimerQueue,
    /// Server transactions. A B-tree, like the timer queue: its nodes are small blocks,
    /// so a burst that leaves tens of thousands of transactions lingering for 64*T1
    /// never makes glibc raise its mmap and trim thresholds (it does when a multi-MB
    /// hash table is freed), and the memory goes back to the system once they expired.
    server_tx: BTreeMap<ServerKey, ServerTx>,
    client_tx: ClientTable,
    calls: HashMap<CallId, Call>,
    dialogs: HashMap<(String, String), CallId>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<SipEvent>,
    /// The active registration (see `core_registration.rs`).
    registration: Option<Registration>,
    /// A new binding registered beside the active one, until committed or aborted.
    reg_staged: Option<Registration>,
    /// Replaced or removed bindings being unregistered.
    reg_retiring: Vec<Registration>,
    next_call: u64,
    shutting_down: bool,
    stats: CoreStats,
    /// Most records (transactions and calls) held since the tables were last empty.
    peak_records: usize,
    /// The tables emptied after holding at least [`DRAINED_MIN_PEAK`] records.
    drained: bool,
}

fn random_token(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| {
            let i = rng.random_range(0..CHARS.len());
            char::from(CHARS.get(i).copied().unwrap_or(b'x'))
        })
        .collect()
}

fn new_branch() -> String {
    format!("{BRANCH_COOKIE}{}", random_token(16))
}

/// The socket address named by a SIP URI whose host is an IP literal.
pub(crate) fn uri_socket_addr(uri: &str) -> Option<SocketAddr> {
    let rest = uri.split_once(':')?.1;
    let hostport = match rest.rsplit_once('@') {
        Some((_, hp)) => hp,
        None => rest,
    };
    let hostport = hostport.split([';', '?', '>']).next()?;
    let (host, port) = message::split_host_port(hostport)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host.parse().ok()?;
    Some(SocketAddr::new(ip, port.unwrap_or(5060)))
}

/// Where a response to a request goes (RFC 3261 18.2.2 and RFC 3581).
fn response_destination(via: &message::Via, source: SocketAddr) -> SocketAddr {
    if via.rport {
        source
    } else {
        SocketAddr::new(source.ip(), via.port.unwrap_or(5060))
    }
}

impl UserAgentCore {
    /// A new core. Registration (if configured) starts at the first `handle_timeout`.
    pub fn new(cfg: CoreConfig, now: Instant) -> UserAgentCore {
        let registration = cfg
            .registration
            .clone()
            .map(|r| Registration::new(r, cfg.user.clone(), cfg.credentials.clone(), now));
        UserAgentCore {
            cfg,
            timer_heap: TimerQueue::default(),
            server_tx: BTreeMap::new(),
            client_tx: ClientTable::default(),
            calls: HashMap::new(),
            dialogs: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            registration,
            reg_staged: None,
            reg_retiring: Vec::new(),
            next_call: 1,
            shutting_down: false,
            stats: CoreStats::default(),
            peak_records: 0,
            drained: false,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// Table sizes and counters.
    pub fn stats(&self) -> CoreStats {
        CoreStats {
            calls: self.calls.len(),
            dialogs: self.dialogs.len(),
            server_transactions: self.server_tx.len(),
            client_transactions: self.client_tx.len(),
            ..self.stats
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next application event.
    pub fn poll_event(&mut self) -> Option<SipEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must be called next (it may find nothing to do).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.timer_heap.next_deadline();
        let r = self.registration_timeout();
        match (t, r) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn schedule_server(&mut self, key: &ServerKey) {
        if let Some(d) = self.server_tx.get(key).and_then(ServerTx::next_deadline) {
            self.timer_heap.push(d, TimerKey::Server(key.clone()));
        }
    }

    fn schedule_client(&mut self, branch: &str) {
        if let Some((key, tx)) = self.client_tx.get_key_value(branch)
            && let Some(d) = tx.next_deadline()
        {
            self.timer_heap.push(d, TimerKey::Client(key.clone()));
        }
    }

    /// Live call ids.
    pub fn calls(&self) -> Vec<CallId> {
        let mut v: Vec<CallId> = self.calls.keys().copied().collect();
        v.sort();
        v
    }

    /// True once shutdown was requested and every call and the unregistration are done.
    pub fn is_shutdown_complete(&self) -> bool {
        self.shutting_down && self.calls.is_empty() && self.registrations_done()
    }

    /// Outcome of the unregistration done by [`begin_shutdown`](Self::begin_shutdown):
    /// `None` when there was no registration (or no binding to remove), `Some(true)` once
    /// the registrar accepted `Expires: 0`, `Some(false)` while pending or after a failure.
    pub fn unregistration(&self) -> Option<bool> {
        self.registration.as_ref().and_then(|r| r.unregistered)
    }

    fn send(&mut self, destination: SocketAddr, payload: Vec<u8>) {
        self.transmits.push_back(Transmit { destination, payload });
    }

    fn local_host_port(&self) -> String {
        message::host_port(self.cfg.local_addr)
    }

    fn contact(&self) -> String {
        format!("<sip:{}@{}>", self.cfg.user, self.local_host_port())
    }

    fn via(&self, branch: &str) -> String {
        format!("SIP/2.0/UDP {};branch={branch};rport", self.local_host_port())
    }

    // ---------------------------------------------------------------- input

    /// Handles one received datagram.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if let Some(incoming) = self.receive(now, from, bytes) {
            self.deliver(now, incoming);
        }
    }

    /// The transaction layer: parses the datagram, answers what cannot be parsed,
    /// matches it to its transaction (retransmissions absorbed) or opens a server
    /// transaction (100 Trying for a new INVITE). Returns what the TU must handle.
    pub(crate) fn receive<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &'a [u8],
    ) -> Option<Incoming<'a>> {
        match message::parse(bytes, self.cfg.max_message_size) {
            Parsed::KeepAlive => None,
            Parsed::Drop(reason) => {
                self.stats.dropped += 1;
                tracing::debug!(%from, reason, "dropped datagram");
                None
            }
            Parsed::Reject {
                code,
                reason,
                headers,
            } => {
                self.stats.rejected += 1;
                tracing::debug!(%from, code, reason, "rejected request");
                let dest = headers
                    .vias
                    .first()
                    .and_then(|v| message::Via::parse(v))
                    .map_or(from, |v| response_destination(&v, from));
                let mut extra = vec![("Warning", format!("399 callbot \"{reason}\""))];
                if code == 501 || code == 405 {
                    extra.push(("Allow", ALLOW.into()));
                }
                let tag = random_token(10);
                let resp = message::build_response(code, &headers, Some(&tag), &extra, b"");
                self.send(dest, resp);
                None
            }
            Parsed::Message(msg) => match msg.start {
                StartLine::Request { .. } => self.request_transaction(now, from, msg),
                StartLine::Response { code, .. } => self.response_transaction(now, code, msg),
            },
        }
    }

    /// The transaction user: dialogs, calls, registration.
    pub(crate) fn deliver(&mut self, now: Instant, incoming: Incoming<'_>) {
        match incoming {
            Incoming::Ack { key, msg } => self.handle_ack(now, &key, &msg),
            Incoming::Request { key, method, msg } => self.handle_request(now, key, method, msg),
            Incoming::Response { owner, code, msg } => self.handle_response(now, owner, code, &msg),
        }
    }

    fn request_transaction<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        mut msg: Box<SipMsg<'a>>,
    ) -> Option<Incoming<'a>> {
        let method = msg.method()?.clone();
        // Add received/rport to the top Via copy used in responses.
        msg.stamp_top_via(from);
        let via = msg.top_via();
        let dest = response_destination(&via, from);
        let rfc2543_branch;
        let branch = match via.branch {
            Some(b) if b.starts_with(BRANCH_COOKIE) => b,
            _ => {
                rfc2543_branch = format!(
                    "2543:{}:{}:{}",
                    msg.call_id(),
                    msg.cseq,
                    msg.tag_from().unwrap_or("")
                );
                &rfc2543_branch
            }
        };
        let key = ServerKey::new(
            match method {
                Method::Ack => "INVITE",
                ref m => m.as_str(),
            },
            branch,
            via.host,
            via.port,
        );
        if method == Method::Ack {
            return Some(Incoming::Ack { key, msg });
        }
        let invite = method == Method::Invite;
        // One search: a retransmission finds its transaction, a new request takes the slot.
        match self.server_tx.entry(key.clone()) {
            std::collections::btree_map::Entry::Occupied(tx) => {
                self.stats.retransmissions_absorbed += 1;
                let tx = tx.get();
                if let Some(resp) = tx.last_response().map(<[u8]>::to_vec) {
                    let d = tx.dest;
                    self.send(d, resp);
                }
                return None;
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(ServerTx::new(invite, dest));
            }
        }
        // RFC 3261 8.2.2.3: Require with extensions we do not support.
        if method != Method::Cancel {
            let unsupported: Vec<String> = msg
                .header_all("Require")
                .flat_map(message::comma_parts)
                .map(str::to_string)
                .collect();
            if !unsupported.is_empty() {
                let extra = [("Unsupported", unsupported.join(", "))];
                self.respond(now, &key, &msg, 420, &extra, b"", None);
                return None;
            }
        }
        if invite && msg.tag_to().is_none() {
            self.respond(now, &key, &msg, 100, &[], b"", None);
        }
        Some(Incoming::Request { key, method, msg })
    }

    fn handle_request(&mut self, now: Instant, key: ServerKey, method: Method, msg: Box<SipMsg<'_>>) {
        match method {
            Method::Invite => self.handle_invite(now, &key, *msg),
            Method::Cancel => self.handle_cancel(now, &key, &msg),
            Method::Bye => self.handle_bye(now, &key, &msg),
            Method::Options => {
                let extra = [
                    ("Allow", ALLOW.to_string()),
                    ("Accept", ACCEPT.to_string()),
                    ("Supported", String::new()),
                ];
                self.respond(now, &key, &msg, 200, &extra, b"", None);
            }
            Method::Register | Method::NotAllowed(_) => {
                let extra = [("Allow", ALLOW.to_string())];
                self.respond(now, &key, &msg, 405, &extra, b"", None);
            }
            Method::Ack => {}
        }
    }

    /// Sends a response through the server transaction `key`.
    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        now: Instant,
        key: &ServerKey,
        msg: &SipMsg,
        code: u16,
        extra: &[(&str, String)],
        body: &[u8],
        to_tag: Option<&str>,
    ) {
        let generated;
        let tag = match to_tag {
            Some(t) => Some(t),
            None if code > 100 && msg.tag_to().is_none() => {
                generated = random_token(10);
                Some(generated.as_str())
            }
            None => None,
        };
        // Borrowed: no header value is copied for the answer (the Server header included).
        let server = ("Server", self.cfg.user_agent.as_str());
        let bytes = if extra.is_empty() {
            message::build_response(code, msg, tag, &[server], body)
        } else {
            let extra: Vec<(&str, &str)> = extra
                .iter()
                .map(|(n, v)| (*n, v.as_str()))
                .chain([server])
                .collect();
            message::build_response(code, msg, tag, &extra, body)
        };
        self.respond_bytes(now, key, code, bytes);
    }

    fn respond_bytes(&mut self, now: Instant, key: &ServerKey, code: u16, bytes: Vec<u8>) {
        let timers = self.cfg.timers;
        let Some(tx) = self.server_tx.get_mut(key) else {
            return;
        };
        tx.send_response(now, code, bytes.clone().into_boxed_slice(), &timers);
        let d = tx.dest;
        // The next timer, scheduled from this lookup (what schedule_server does).
        if let Some(at) = tx.next_deadline() {
            self.timer_heap.push(at, TimerKey::Server(key.clone()));
        }
        self.send(d, bytes);
    }

    fn handle_ack(&mut self, now: Instant, key: &ServerKey, msg: &SipMsg) {
        let timers = self.cfg.timers;
        // ACK for a non-2xx: same branch as the INVITE.
        if let Some(tx) = self.server_tx.get_mut(key)
            && tx.state == ServerState::Completed
        {
            tx.on_ack(now, &timers);
            self.schedule_server(key);
            return;
        }
        // ACK for a 2xx: matched to the dialog.
        let Some(tag) = msg.tag_to() else { return };
        let Some(&call_id) = self.dialogs.get(&(msg.call_id().to_string(), tag.to_string())) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        if call.state != CallState::Answered {
            return;
        }
        call.state = CallState::Confirmed;
        if let Some(k) = call.invite_tx.clone()
            && let Some(tx) = self.server_tx.get_mut(&k)
        {
            tx.on_ack(now, &timers);
            self.schedule_server(&k);
        }
        self.events.push_back(SipEvent::CallConfirmed { call: call_id });
    }

    fn handle_invite(&mut self, now: Instant, key: &ServerKey, msg: SipMsg) {
        if let Some(tag) = msg.tag_to().map(str::to_string) {
            self.handle_reinvite(now, key, msg, tag);
            return;
        }
        if self.shutting_down {
            let extra = [("Retry-After", self.cfg.retry_after_secs.to_string())];
            self.respond(now, key, &msg, 503, &extra, b"", None);
            return;
        }
        if self.calls.len() >= self.cfg.max_calls {
            self.respond(now, key, &msg, 486, &[], b"", None);
            return;
        }
        let content_type = msg.header("Content-Type").unwrap_or("");
        if msg.body.is_empty() {
            // No offer (delayed offer) is not supported: say so.
            let extra = [("Warning", "399 callbot \"an SDP offer is required\"".to_string())];
            self.respond(now, key, &msg, 488, &extra, b"", None);
            return;
        }
        let ct = content_type.split(';').next().unwrap_or("").trim();
        if !ct.eq_ignore_ascii_case("application/sdp") {
            let extra = [("Accept", ACCEPT.to_string())];
            self.respond(now, key, &msg, 415, &extra, b"", None);
            return;
        }
        let offer = match media::negotiate_offer(&msg.body) {
            Ok(o) => o,
            Err(MediaError::NoUsableCodec(why)) => {
                let extra = [("Warning", format!("304 callbot \"{why}\""))];
                self.respond(now, key, &msg, 488, &extra, b"", None);
                return;
            }
            Err(MediaError::Malformed(why)) => {
                let extra = [("Warning", format!("399 callbot \"bad SDP: {why}\""))];
                self.respond(now, key, &msg, 400, &extra, b"", None);
                return;
            }
        };
        let id = CallId(self.next_call);
        self.next_call += 1;
        let local_tag = random_token(12);
        let remote_target = msg.contact_uri().unwrap_or_default();
        let route_set: Vec<String> = msg
            .header_all("Record-Route")
            .flat_map(message::comma_parts)
            .map(str::to_string)
            .collect();
        // In-dialog requests go to the first route (loose routing), else to the Contact;
        // when neither names an IP address, back where the INVITE came from.
        let next_hop = match route_set.first() {
            Some(r) => message::name_addr_uri(r).and_then(|u| uri_socket_addr(&u)),
            None => uri_socket_addr(&remote_target),
        };
        let peer = next_hop
            .or_else(|| self.server_tx.get(key).map(|t| t.dest))
            .unwrap_or(self.cfg.local_addr);
        let local_party = format!("{};tag={local_tag}", msg.header_to());
        let media = offer.media.clone();
        let call = Call {
            state: CallState::Incoming,
            sip_call_id: msg.call_id().to_string(),
            local_tag: local_tag.clone(),
            remote_tag: msg.tag_from().map(str::to_string),
            local_party,
            remote_party: msg.header_from().to_string(),
            remote_target,
            route_set,
            peer,
            local_cseq: rand_cseq(),
            remote_cseq: msg.cseq,
            invite_tx: Some(key.clone()),
            invite_echo: Some(msg.echo()),
            offer: Some(offer),
            local_rtp: None,
            sdp_version: 1,
            sdp_session: u64::from(rand_cseq()),
            media: Some(media.clone()),
            invite_uri: String::new(),
            invite_branch: None,
            invite_body: Vec::new(),
            auth_tried: false,
            provisional_seen: false,
            cancel_pending: false,
            ack: None,
            end_reason: None,
        };
        self.dialogs.insert((msg.call_id().to_string(), local_tag), id);
        self.timer_heap
            .push(now + self.cfg.ring_timeout, TimerKey::Ring(id));
        self.calls.insert(id, call);
        if let Some(tx) = self.server_tx.get_mut(key) {
            tx.call = Some(id);
        }
        self.events.push_back(SipEvent::IncomingCall {
            call: id,
            call_id: msg.call_id().to_string(),
            from: msg.header_from().to_string(),
            to: msg.header_to().to_string(),
            media,
        });
    }

    fn handle_reinvite(&mut self, now: Instant, key: &ServerKey, msg: SipMsg, tag: String) {
        let Some(&id) = self.dialogs.get(&(msg.call_id().to_string(), tag.clone())) else {
            self.respond(now, key, &msg, 481, &[], b"", None);
            return;
        };
        let pending = self
            .calls
            .get(&id)
            .is_none_or(|c| c.state != CallState::Confirmed || msg.cseq <= c.remote_cseq);
        if pending {
            let code = if self.calls.get(&id).is_some_and(|c| msg.cseq <= c.remote_cseq) {
                500
            } else {
                491
            };
            self.respond(now, key, &msg, code, &[], b"", Some(&tag));
            return;
        }
        let offer = if msg.body.is_empty() {
            None
        } else {
            match media::negotiate_offer(&msg.body) {
                Ok(o) => Some(o),
                Err(e) => {
                    let code = if matches!(e, MediaError::NoUsableCodec(_)) {
                        488
                    } else {
                        400
                    };
                    self.respond(now, key, &msg, code, &[], b"", Some(&tag));
                    return;
                }
            }
        };
        let contact = self.contact();
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.remote_cseq = msg.cseq;
        if let Some(t) = msg.contact_uri() {
            if call.route_set.is_empty()
                && let Some(a) = uri_socket_addr(&t)
            {
                call.peer = a;
            }
            call.remote_target = t;
        }
        let local_rtp = call.local_rtp.unwrap_or(self.cfg.local_addr);
        call.sdp_version += 1;
        let body = match &offer {
            Some(o) => {
                call.media = Some(o.media.clone());
                media::answer_body(o, local_rtp, call.sdp_session, call.sdp_version)
            }
            None => media::offer_body(local_rtp, call.sdp_session, call.sdp_version),
        };
        // RFC 3261 12.1.1: the Record-Route of the request is copied into the response.
        let mut extra: Vec<(&str, String)> = msg
            .header_all("Record-Route")
            .map(|r| ("Record-Route", r.to_string()))
            .collect();
        extra.push(("Contact", contact));
        extra.push(("Allow", ALLOW.to_string()));
        extra.push(("Content-Type", "application/sdp".to_string()));
        // The re-INVITE's 2xx is retransmitted until its ACK like the first one.
        call.state = CallState::Answered;
        call.invite_tx = Some(key.clone());
        self.respond(now, key, &msg, 200, &extra, &body, Some(&tag));
        if let Some(tx) = self.server_tx.get_mut(key) {
            tx.call = Some(id);
        }
        if let Some(o) = offer {
            self.events.push_back(SipEvent::MediaUpdated {
                call: id,
                media: o.media,
            });
        }
    }

    fn handle_cancel(&mut self, now: Instant, key: &ServerKey, msg: &SipMsg) {
        let invite_key = key.with_method("INVITE");
        let target = self.server_tx.get(&invite_key).map(|tx| (tx.state, tx.call));
        let Some((state, call)) = target else {
            self.respond(now, key, msg, 481, &[], b"", None);
            return;
        };
        let call_tag = call.and_then(|c| self.calls.get(&c)).map(|c| c.local_tag.clone());
        self.respond(now, key, msg, 200, &[], b"", call_tag.as_deref());
        if state != ServerState::Proceeding {
            return;
        }
        if let Some(id) = call {
            if let Some(echo) = self.calls.get(&id).and_then(|c| c.invite_echo.clone()) {
                let bytes = message::build_response(487, &echo, call_tag.as_deref(), message::NO_EXTRA, b"");
                self.respond_bytes(now, &invite_key, 487, bytes);
            }
            self.end_call(id, EndReason::CallerCancelled);
        }
    }

    fn handle_bye(&mut self, now: Instant, key: &ServerKey, msg: &SipMsg) {
        let found = msg.tag_to().and_then(|t| {
            self.dialogs
                .get(&(msg.call_id().to_string(), t.to_string()))
                .copied()
        });
        let Some(id) = found else {
            self.respond(now, key, msg, 481, &[], b"", None);
            return;
        };
        self.respond(now, key, msg, 200, &[], b"", None);
        // A BYE on an early dialog also ends the pending INVITE.
        if let Some(call) = self.calls.get(&id)
            && call.state == CallState::Incoming
            && let (Some(k), Some(echo)) = (call.invite_tx.clone(), call.invite_echo.clone())
        {
            let tag = call.local_tag.clone();
            let bytes = message::build_response(487, &echo, Some(&tag), message::NO_EXTRA, b"");
            self.respond_bytes(now, &k, 487, bytes);
        }
        self.end_call(id, EndReason::RemoteHangup);
    }

    /// Removes a call from every table and reports it ended.
    fn end_call(&mut self, id: CallId, reason: EndReason) {
        if let Some(call) = self.calls.remove(&id) {
            self.dialogs
                .remove(&(call.sip_call_id.clone(), call.local_tag.clone()));
            // Detach server transactions (they finish on their own timers).
            if let Some(k) = call.invite_tx
                && let Some(tx) = self.server_tx.get_mut(&k)
            {
                tx.call = None;
            }
            // Our INVITE without a final response has no timer left (Proceeding): drop it.
            if let Some(b) = call.invite_branch.as_deref()
                && self
                    .client_tx
                    .get(b)
                    .is_some_and(|tx| tx.state != ClientState::Completed)
            {
                self.client_tx.remove(b);
            }
            tracing::debug!(%id, %reason, "call ended");
            self.events.push_back(SipEvent::CallEnded { call: id, reason });
        }
    }

    // ------------------------------------------------------------ responses

    fn response_transaction<'a>(
        &mut self,
        now: Instant,
        code: u16,
        msg: Box<SipMsg<'a>>,
    ) -> Option<Incoming<'a>> {
        let Some(branch) = msg.top_via_branch() else {
            self.stats.dropped += 1;
            return None;
        };
        let timers = self.cfg.timers;
        let branch: std::borrow::Cow<'_, str> = if msg.cseq_method() == "CANCEL" {
            format!("{branch}#cancel").into()
        } else {
            branch.into()
        };
        let Some(tx) = self.client_tx.get_mut(&*branch) else {
            // A 2xx retransmission after the INVITE transaction ended: re-ACK.
            self.reack(&msg);
            return None;
        };
        // (The CSeq method is upper case already: the exact compare decides.)
        if msg.cseq_method() != if tx.invite { "INVITE" } else { method_of(tx.owner) } {
            self.stats.dropped += 1;
            return None;
        }
        let was_completed = tx.state == ClientState::Completed;
        let fresh = tx.on_response(now, code, &timers);
        let owner = tx.owner;
        let invite_tx = tx.invite;
        let dest = tx.dest;
        // (Only a retransmitted non-2xx final re-sends the ACK: no copy otherwise.)
        let ack = (!fresh && was_completed && invite_tx && code >= 300)
            .then(|| tx.ack().map(<[u8]>::to_vec))
            .flatten();
        // A fresh final completes the transaction; one that needs no ACK built from the
        // request (all but an INVITE's non-2xx) completes here, in the same lookup.
        let needs_ack = invite_tx && code >= 300;
        if fresh && code >= 200 && !needs_ack {
            tx.completed(None);
        }
        // The next timer, scheduled from this lookup.
        if let Some(d) = tx.next_deadline() {
            self.timer_heap.push(d, TimerKey::Client(tx.key.clone()));
        }
        if !fresh {
            // Retransmitted final: INVITE non-2xx gets its ACK again, 2xx re-ACKed by the TU.
            if was_completed && invite_tx {
                if code >= 300 {
                    if let Some(ack) = ack {
                        self.send(dest, ack);
                    }
                } else {
                    self.reack(&msg);
                }
            }
            return None;
        }
        if code >= 200 && needs_ack {
            // ACK for non-2xx: same branch, To from the response. Built from the request,
            // which the completed transaction then lets go.
            let ack = self.build_non2xx_ack(&branch, &msg);
            if let Some(tx) = self.client_tx.get_mut(&*branch) {
                tx.completed(Some(Box::from(ack.as_slice())));
            }
            self.send(dest, ack);
        }
        Some(Incoming::Response { owner, code, msg })
    }

    fn handle_response(&mut self, now: Instant, owner: TxOwner, code: u16, msg: &SipMsg) {
        match owner {
            TxOwner::Register => self.on_register_response(now, code, msg),
            TxOwner::Invite(id) => self.on_invite_response(now, id, code, msg),
            TxOwner::Bye(id) | TxOwner::Cancel(id) => {
                if code >= 200 && matches!(owner, TxOwner::Bye(_)) {
                    let reason = self
                        .calls
                        .get(&id)
                        .and_then(|c| c.end_reason.clone())
                        .unwrap_or(EndReason::LocalHangup);
                    self.end_call(id, reason);
                }
            }
        }
    }

    fn reack(&mut self, msg: &SipMsg) {
        if msg.status().is_some_and(|c| (200..300).contains(&c))
            && msg.cseq_method() == "INVITE"
            && let Some(tag) = msg.tag_from()
            && let Some(id) = self.dialogs.get(&(msg.call_id().to_string(), tag.to_string()))
            && let Some(call) = self.calls.get(id)
            && let Some(ack) = call.ack.clone()
        {
            let d = call.peer;
            self.send(d, ack);
            return;
        }
        self.stats.dropped += 1;
    }

    fn build_non2xx_ack(&self, branch: &str, resp: &SipMsg) -> Vec<u8> {
        let uri = self
            .client_tx
            .get(branch)
            .and_then(|tx| request_uri(tx.request()))
            .unwrap_or_default();
        let headers = [
            ("Via", self.via(branch)),
            ("Max-Forwards", "70".to_string()),
            ("From", resp.header_from().to_string()),
            ("To", resp.header_to().to_string()),
            ("Call-ID", resp.call_id().to_string()),
            ("CSeq", format!("{} ACK", resp.cseq)),
        ];
        message::build_request("ACK", &uri, &headers, b"")
    }

    // ------------------------------------------------------------- commands

    /// Sends 180 Ringing for an incoming call.
    pub fn ring(&mut self, now: Instant, call: CallId) -> Result<(), CommandError> {
        self.uas_provisional(now, call, 180)
    }

    fn uas_provisional(&mut self, now: Instant, id: CallId, code: u16) -> Result<(), CommandError> {
        let contact = self.contact();
        let call = self.calls.get(&id).ok_or(CommandError::UnknownCall(id))?;
        if call.state != CallState::Incoming {
            return Err(CommandError::WrongState {
                call: id,
                command: "ring",
            });
        }
        let (Some(k), Some(echo)) = (call.invite_tx.clone(), call.invite_echo.clone()) else {
            return Err(CommandError::WrongState {
                call: id,
                command: "ring",
            });
        };
        let mut extra = record_routes(&call.route_set);
        extra.push(("Contact", contact));
        let bytes = message::build_response(code, &echo, Some(&call.local_tag), &extra, b"");
        self.respond_bytes(now, &k, code, bytes);
        Ok(())
    }

    /// Answers an incoming call with 200 and an SDP answer naming `local_rtp`.
    pub fn answer(&mut self, now: Instant, id: CallId, local_rtp: SocketAddr) -> Result<(), CommandError> {
        let contact = self.contact();
        let call = self.calls.get_mut(&id).ok_or(CommandError::UnknownCall(id))?;
        if call.state != CallState::Incoming {
            return Err(CommandError::WrongState {
                call: id,
                command: "answer",
            });
        }
        let (Some(k), Some(echo), Some(offer)) = (
            call.invite_tx.clone(),
            call.invite_echo.clone(),
            call.offer.take(),
        ) else {
            return Err(CommandError::WrongState {
                call: id,
                command: "answer",
            });
        };
        let body = media::answer_body(&offer, local_rtp, call.sdp_session, call.sdp_version);
        call.local_rtp = Some(local_rtp);
        call.state = CallState::Answered;
        let mut extra = record_routes(&call.route_set);
        extra.push(("Contact", contact));
        extra.push(("Allow", ALLOW.to_string()));
        extra.push(("Content-Type", "application/sdp".to_string()));
        let bytes = message::build_response(200, &echo, Some(&call.local_tag), &extra, &body);
        self.respond_bytes(now, &k, 200, bytes);
        Ok(())
    }

    /// Rejects an incoming call (486 Busy Here, 603 Decline, any 300-699).
    pub fn reject(&mut self, now: Instant, id: CallId, code: u16) -> Result<(), CommandError> {
        if !(300..700).contains(&code) {
            return Err(CommandError::InvalidStatus(code));
        }
        let call = self.calls.get(&id).ok_or(CommandError::UnknownCall(id))?;
        if call.state != CallState::Incoming {
            return Err(CommandError::WrongState {
                call: id,
                command: "reject",
            });
        }
        if let (Some(k), Some(echo)) = (call.invite_tx.clone(), call.invite_echo.clone()) {
            let tag = call.local_tag.clone();
            let bytes = message::build_response(code, &echo, Some(&tag), message::NO_EXTRA, b"");
            self.respond_bytes(now, &k, code, bytes);
        }
        self.end_call(id, EndReason::Rejected { code });
        Ok(())
    }

    /// Hangs up: BYE on an established call, CANCEL on our unanswered INVITE,
    /// 603 on an unanswered incoming call. `CallEnded` follows.
    pub fn hang_up(&mut self, now: Instant, id: CallId) -> Result<(), CommandError> {
        let call = self.calls.get(&id).ok_or(CommandError::UnknownCall(id))?;
        match call.state {
            CallState::Incoming => self.reject(now, id, 603),
            CallState::Answered | CallState::Confirmed => {
                self.send_bye(now, id, EndReason::LocalHangup);
                Ok(())
            }
            CallState::Outgoing => {
                self.cancel_invite(now, id);
                Ok(())
            }
            CallState::Terminating => Ok(()),
        }
    }

    fn in_dialog_headers(
        &self,
        call: &Call,
        branch: &str,
        method: &str,
        cseq: u32,
    ) -> Vec<(&'static str, String)> {
        let mut h = vec![("Via", self.via(branch)), ("Max-Forwards", "70".to_string())];
        for r in &call.route_set {
            h.push(("Route", r.clone()));
        }
        h.push(("From", call.local_party.clone()));
        h.push(("To", call.remote_party.clone()));
        h.push(("Call-ID", call.sip_call_id.clone()));
        h.push(("CSeq", format!("{cseq} {method}")));
        h.push(("User-Agent", self.cfg.user_agent.clone()));
        h
    }

    fn send_bye(&mut self, now: Instant, id: CallId, reason: EndReason) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.local_cseq = call.local_cseq.wrapping_add(1);
        call.state = CallState::Terminating;
        call.end_reason = Some(reason);
        let cseq = call.local_cseq;
        let Some(call) = self.calls.get(&id) else { return };
        let branch = new_branch();
        let headers = self.in_dialog_headers(call, &branch, "BYE", cseq);
        let uri = if call.remote_target.is_empty() {
            format!("sip:{}", message::host_port(call.peer))
        } else {
            call.remote_target.clone()
        };
        let bytes = message::build_request("BYE", &uri, &headers, b"");
        let dest = call.peer;
        self.start_client_tx(now, branch, false, bytes, dest, TxOwner::Bye(id));
    }

    fn start_client_tx(
        &mut self,
        now: Instant,
        branch: String,
        invite: bool,
        bytes: Vec<u8>,
        dest: SocketAddr,
        owner: TxOwner,
    ) {
        let request = bytes.clone().into_boxed_slice();
        let tx = ClientTx::new(
            now,
            invite,
            request,
            dest,
            owner,
            ClientKey::from(branch.as_str()),
            &self.cfg.timers,
        );
        self.client_tx.insert(tx.key.clone(), tx);
        self.schedule_client(&branch);
        self.send(dest, bytes);
    }

    /// Places a call to `target` (a SIP URI), sending the INVITE to `dest`, offering
    /// PCMU/PCMA/telephone-event on `local_rtp`.
    pub fn call(
        &mut self,
        now: Instant,
        target: &str,
        dest: SocketAddr,
        local_rtp: SocketAddr,
    ) -> Result<CallId, CommandError> {
        if self.shutting_down {
            return Err(CommandError::ShuttingDown);
        }
        if self.calls.len() >= self.cfg.max_calls {
            return Err(CommandError::TooManyCalls);
        }
        if !(target.starts_with("sip:") || target.starts_with("sips:"))
            || target.contains(['\r', '\n', '<', '>', ' '])
        {
            return Err(CommandError::InvalidTarget(target.to_string()));
        }
        let id = CallId(self.next_call);
        self.next_call += 1;
        let local_tag = random_token(12);
        let local_party = format!(
            "<sip:{}@{}>;tag={local_tag}",
            self.cfg.user,
            message::host_port(self.cfg.local_addr)
        );
        let sdp_session = u64::from(rand_cseq());
        let body = media::offer_body(local_rtp, sdp_session, 1);
        let call = Call {
            state: CallState::Outgoing,
            sip_call_id: format!("{}@callbot", random_token(20)),
            local_tag: local_tag.clone(),
            remote_tag: None,
            local_party,
            remote_party: format!("<{target}>"),
            remote_target: target.to_string(),
            route_set: Vec::new(),
            peer: dest,
            local_cseq: rand_cseq(),
            remote_cseq: 0,
            invite_tx: None,
            invite_echo: None,
            offer: None,
            local_rtp: Some(local_rtp),
            sdp_version: 1,
            sdp_session,
            media: None,
            invite_uri: target.to_string(),
            invite_branch: None,
            invite_body: body,
            auth_tried: false,
            provisional_seen: false,
            cancel_pending: false,
            ack: None,
            end_reason: None,
        };
        self.dialogs.insert((call.sip_call_id.clone(), local_tag), id);
        self.calls.insert(id, call);
        self.send_invite(now, id, None);
        self.timer_heap
            .push(now + self.cfg.ring_timeout, TimerKey::Ring(id));
        Ok(id)
    }

    fn send_invite(&mut self, now: Instant, id: CallId, auth: Option<(&'static str, String)>) {
        let contact = self.contact();
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let branch = new_branch();
        call.invite_branch = Some(branch.clone());
        let cseq = call.local_cseq;
        let Some(call) = self.calls.get(&id) else { return };
        let mut headers = self.in_dialog_headers(call, &branch, "INVITE", cseq);
        headers.push(("Contact", contact));
        headers.push(("Allow", ALLOW.to_string()));
        headers.push(("Content-Type", "application/sdp".to_string()));
        if let Some(a) = auth {
            headers.push(a);
        }
        let bytes = message::build_request("INVITE", &call.invite_uri, &headers, &call.invite_body);
        let dest = call.peer;
        self.start_client_tx(now, branch, true, bytes, dest, TxOwner::Invite(id));
    }

    fn cancel_invite(&mut self, now: Instant, id: CallId) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.end_reason = Some(EndReason::LocalHangup);
        if !call.provisional_seen {
            // RFC 3261 9.1: no CANCEL before a provisional; send it when one arrives.
            call.cancel_pending = true;
            return;
        }
        call.state = CallState::Terminating;
        let Some(branch) = call.invite_branch.clone() else {
            return;
        };
        let Some(call) = self.calls.get(&id) else { return };
        let headers = [
            ("Via", self.via(&branch)),
            ("Max-Forwards", "70".to_string()),
            ("From", call.local_party.clone()),
            ("To", format!("<{}>", call.invite_uri)),
            ("Call-ID", call.sip_call_id.clone()),
            ("CSeq", format!("{} CANCEL", call.local_cseq)),
        ];
        let bytes = message::build_request("CANCEL", &call.invite_uri, &headers, b"");
        let dest = call.peer;
        // The CANCEL's own transaction uses the INVITE's branch with a suffix key.
        self.start_client_tx(
            now,
            format!("{branch}#cancel"),
            false,
            bytes,
            dest,
            TxOwner::Cancel(id),
        );
        // RFC 3261 9.1: without a final response to the INVITE 64*T1 after the CANCEL,
        // the INVITE transaction is considered destroyed.
        self.timer_heap
            .push(now + self.cfg.timers.t64(), TimerKey::Ring(id));
    }

    fn on_invite_response(&mut self, now: Instant, id: CallId, code: u16, msg: &SipMsg) {
        let creds = self.cfg.credentials.clone();
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if code < 200 {
            if code > 100 {
                self.events.push_back(SipEvent::CallProgress { call: id, code });
            }
            let first = !call.provisional_seen;
            call.provisional_seen = true;
            if first && call.cancel_pending {
                call.cancel_pending = false;
                self.cancel_invite(now, id);
            }
            return;
        }
        if code >= 300 {
            if (code == 401 || code == 407) && !call.auth_tried && call.state == CallState::Outgoing {
                let header = if code == 401 {
                    "WWW-Authenticate"
                } else {
                    "Proxy-Authenticate"
                };
                let auth = msg.header(header).and_then(|v| DigestChallenge::parse(v).ok());
                if let (Some(ch), Some(creds)) = (auth, creds) {
                    call.auth_tried = true;
                    call.local_cseq = call.local_cseq.wrapping_add(1);
                    let cnonce = random_token(16);
                    if let Ok(value) = ch.respond(&creds, "INVITE", &call.invite_uri, 1, &cnonce) {
                        let name = if code == 401 {
                            "Authorization"
                        } else {
                            "Proxy-Authorization"
                        };
                        self.send_invite(now, id, Some((name, value)));
                        return;
                    }
                }
            }
            let reason = match call.end_reason.clone() {
                Some(r) if code == 487 => r,
                _ => EndReason::Refused {
                    code,
                    reason: match &msg.start {
                        StartLine::Response { reason, .. } => reason.to_string(),
                        StartLine::Request { .. } => String::new(),
                    },
                },
            };
            self.end_call(id, reason);
            return;
        }
        // 2xx: the dialog is confirmed; ACK it (new branch, to the remote target).
        call.remote_tag = msg.tag_to().map(str::to_string);
        call.remote_party = msg.header_to().to_string();
        if let Some(t) = msg.contact_uri() {
            call.remote_target = t;
        }
        call.route_set = msg
            .header_all("Record-Route")
            .flat_map(message::comma_parts)
            .map(str::to_string)
            .collect();
        call.route_set.reverse();
        if call.route_set.is_empty() {
            if let Some(a) = uri_socket_addr(&call.remote_target) {
                call.peer = a;
            }
        } else if let Some(a) = call
            .route_set
            .first()
            .and_then(|r| message::name_addr_uri(r))
            .and_then(|u| uri_socket_addr(&u))
        {
            call.peer = a;
        }
        let was_terminating = call.state == CallState::Terminating || call.cancel_pending;
        call.state = CallState::Confirmed;
        let cseq = call.local_cseq;
        let branch = new_branch();
        let Some(call) = self.calls.get(&id) else { return };
        let headers = self.in_dialog_headers(call, &branch, "ACK", cseq);
        let ack = message::build_request("ACK", &call.remote_target, &headers, b"");
        let dest = call.peer;
        self.send(dest, ack.clone());
        let media = media::parse_answer(&msg.body);
        if let Some(call) = self.calls.get_mut(&id) {
            call.ack = Some(ack);
        }
        if was_terminating {
            self.send_bye(now, id, EndReason::LocalHangup);
            return;
        }
        match media {
            Ok(m) => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.media = Some(m.clone());
                }
                self.events
                    .push_back(SipEvent::CallAnswered { call: id, media: m });
            }
            Err(e) => self.send_bye(now, id, EndReason::MediaFailed(e.to_string())),
        }
    }

    // ------------------------------------------------------------- timers

    /// True once after a load peak (at least 1,000 transactions and calls at once)
    /// ended and every table emptied, the last transaction's RFC 3261 linger timer
    /// having expired: the moment a driver can hand the heap memory the peak used back
    /// to the system (the UDP driver calls glibc's `malloc_trim` then).
    pub fn take_drained(&mut self) -> bool {
        std::mem::take(&mut self.drained)
    }

    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.run_timers(now);
        self.shrink_tables();
    }

    /// Gives table memory back once the load dropped: a table keeps its peak capacity
    /// otherwise (30,000 lingering transactions after a burst of 1,000 calls/s are
    /// megabytes). A table holding less than a quarter of its capacity is shrunk to
    /// twice its length: amortised, since growing back costs no more inserts than the
    /// shrink moved. Tables below [`SHRINK_MIN_CAPACITY`] are left alone.
    fn shrink_tables(&mut self) {
        fn worth(len: usize, capacity: usize) -> bool {
            capacity > SHRINK_MIN_CAPACITY && len < capacity / 4
        }
        fn map<K: std::hash::Hash + Eq, V, S: std::hash::BuildHasher>(m: &mut HashMap<K, V, S>) {
            if worth(m.len(), m.capacity()) {
                m.shrink_to(m.len() * 2);
            }
        }
        // (The server transactions and the timers are B-trees: they free as they empty.)
        fn queue<T>(q: &mut VecDeque<T>) {
            if worth(q.len(), q.capacity()) {
                q.shrink_to(q.len() * 2);
            }
        }
        map(&mut self.client_tx);
        map(&mut self.calls);
        map(&mut self.dialogs);
        queue(&mut self.transmits);
        queue(&mut self.events);
        let live = self.server_tx.len() + self.client_tx.len() + self.calls.len();
        self.peak_records = self.peak_records.max(live);
        if live == 0 && self.peak_records >= DRAINED_MIN_PEAK {
            self.peak_records = 0;
            self.drained = true;
        }
        // Timers of transactions and calls that are gone (a ring timeout outlives every
        // short call by minutes) are dropped once they outnumber the live ones.
        if self.timer_heap.len() > 4 * live + SHRINK_MIN_CAPACITY {
            let (server_tx, client_tx, calls) = (&self.server_tx, &self.client_tx, &self.calls);
            self.timer_heap.0.retain(|(_, key)| match key {
                TimerKey::Server(k) => server_tx.contains_key(k),
                TimerKey::Client(k) => client_tx.contains_key(k),
                TimerKey::Ring(id) => calls.contains_key(id),
            });
        }
    }

    fn run_timers(&mut self, now: Instant) {
        let timers = self.cfg.timers;
        let mut due_server: Vec<ServerKey> = Vec::new();
        let mut due_client: Vec<ClientKey> = Vec::new();
        let mut due_ring: Vec<CallId> = Vec::new();
        while let Some(key) = self.timer_heap.pop_due(now) {
            match key {
                TimerKey::Server(k) => due_server.push(k),
                TimerKey::Client(k) => due_client.push(k),
                TimerKey::Ring(id) => due_ring.push(id),
            }
        }
        due_server.sort();
        due_server.dedup();
        due_client.sort();
        due_client.dedup();
        let due = due_server;
        for k in due {
            let Some(tx) = self.server_tx.get_mut(&k) else {
                continue;
            };
            match tx.on_timeout(now, &timers) {
                Some(ServerTimeout::Retransmit) => {
                    if let Some(r) = tx.last_response().map(<[u8]>::to_vec) {
                        let d = tx.dest;
                        self.send(d, r);
                    }
                    self.schedule_server(&k);
                }
                Some(ServerTimeout::Terminated) => {
                    self.server_tx.remove(&k);
                }
                Some(ServerTimeout::NoAck) => {
                    let call = tx.call;
                    let state = tx.state;
                    self.server_tx.remove(&k);
                    if let (Some(id), ServerState::Accepted) = (call, state) {
                        // 2xx never acknowledged: end the dialog with BYE (RFC 3261 13.3.1.4).
                        self.send_bye(now, id, EndReason::NoAck);
                    }
                }
                None => {}
            }
        }
        for id in due_ring {
            match self.calls.get(&id).map(|c| c.state) {
                Some(CallState::Incoming) => {
                    tracing::info!(%id, "incoming call not answered in time: 480");
                    let _ = self.reject(now, id, 480);
                }
                Some(CallState::Outgoing) => {
                    tracing::info!(%id, "outgoing call not answered in time: CANCEL");
                    self.cancel_invite(now, id);
                    if let Some(c) = self.calls.get_mut(&id) {
                        c.end_reason = Some(EndReason::Timeout);
                    }
                }
                Some(CallState::Terminating)
                    if self
                        .calls
                        .get(&id)
                        .is_some_and(|c| c.invite_branch.is_some() && c.ack.is_none()) =>
                {
                    // Cancelled 64*T1 ago and still no final response.
                    let reason = self
                        .calls
                        .get(&id)
                        .and_then(|c| c.end_reason.clone())
                        .unwrap_or(EndReason::Timeout);
                    self.end_call(id, reason);
                }
                _ => {}
            }
        }
        let due = due_client;
        for k in due {
            let Some(tx) = self.client_tx.get_mut(&k) else {
                continue;
            };
            match tx.on_timeout(now, &timers) {
                Some(ClientTimeout::Retransmit) => {
                    let (d, r) = (tx.dest, tx.request().to_vec());
                    self.send(d, r);
                    self.schedule_client(&k);
                }
                Some(ClientTimeout::Terminated) => {
                    self.client_tx.remove(&k);
                }
                Some(ClientTimeout::TimedOut) => {
                    let owner = tx.owner;
                    self.client_tx.remove(&k);
                    match owner {
                        TxOwner::Register => self.register_timed_out(now, &k),
                        TxOwner::Invite(id) => {
                            let reason = self
                                .calls
                                .get(&id)
                                .and_then(|c| c.end_reason.clone())
                                .unwrap_or(EndReason::Timeout);
                            self.end_call(id, reason);
                        }
                        TxOwner::Bye(id) => {
                            let reason = self
                                .calls
                                .get(&id)
                                .and_then(|c| c.end_reason.clone())
                                .unwrap_or(EndReason::Timeout);
                            self.end_call(id, reason);
                        }
                        TxOwner::Cancel(_) => {}
                    }
                }
                None => {}
            }
        }
        self.registration_timers(now);
    }

    /// Stops taking calls: new INVITEs get 503 with Retry-After; every live call is
    /// hung up (BYE, CANCEL or 603) and the registration is removed (Expires: 0).
    /// Drive the core until [`is_shutdown_complete`](Self::is_shutdown_complete).
    /// Returns the calls it hung up; calls already ending (their BYE sent) are not
    /// counted, nor is anything on a second call.
    pub fn begin_shutdown(&mut self, now: Instant) -> usize {
        if self.shutting_down {
            return 0;
        }
        self.shutting_down = true;
        let mut hung_up = 0;
        for id in self.calls() {
            let ending = self
                .calls
                .get(&id)
                .is_some_and(|c| matches!(c.state, CallState::Terminating));
            if !ending && self.hang_up(now, id).is_ok() {
                hung_up += 1;
            }
        }
        self.unregister_all(now);
        hung_up
    }

    /// Forgets everything still in flight (after the shutdown deadline): every call gets
    /// its `CallEnded` (reason `Timeout`) and every table is cleared. Returns the number
    /// of calls that were still live.
    pub fn abandon(&mut self) -> usize {
        let live = self.calls();
        for id in &live {
            self.end_call(*id, EndReason::Timeout);
        }
        self.server_tx.clear();
        self.client_tx.clear();
        self.timer_heap.clear();
        self.abandon_registrations();
        live.len()
    }

    /// Whether [`begin_shutdown`](Self::begin_shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }
}

/// The Record-Route headers a UAS copies into its responses (RFC 3261 12.1.1).
fn record_routes(route_set: &[String]) -> Vec<(&'static str, String)> {
    route_set.iter().map(|r| ("Record-Route", r.clone())).collect()
}

fn method_of(owner: TxOwner) -> &'static str {
    match owner {
        TxOwner::Invite(_) => "INVITE",
        TxOwner::Bye(_) => "BYE",
        TxOwner::Cancel(_) => "CANCEL",
        TxOwner::Register => "REGISTER",
    }
}

fn rand_cseq() -> u32 {
    use rand::Rng;
    rand::rng().random_range(1..10_000)
}

fn request_uri(request: &[u8]) -> Option<String> {
    let line_end = request.iter().position(|&b| b == b'\r')?;
    let line = std::str::from_utf8(request.get(..line_end)?).ok()?;
    line.split(' ').nth(1).map(str::to_string)
}

#[path = "core_registration.rs"]
mod registration;

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
