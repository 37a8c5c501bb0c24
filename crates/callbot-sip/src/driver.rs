//! The UDP driver: one socket, one named thread (`sip-ua`) running a [`UserAgentCore`]
//! on a worker thread (`sip-ua-io`) that is replaced after each load peak.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::core::{
    CallId, CommandError, CoreConfig, CoreStats, RegistrationConfig, SipEvent, StagedRegistration,
    UserAgentCore,
};
use crate::digest::DigestCredentials;
use crate::transaction::Timers;

/// Default deadline `Drop` gives `shutdown`.
pub const DROP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a command waits for the driver thread to take and answer it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest sleep of the driver thread between looks at its command channel.
const MAX_IDLE: Duration = Duration::from_millis(200);
/// Events kept for a slow application before the oldest are dropped.
const MAX_PENDING_EVENTS: usize = 100_000;
/// Longest wait in [`SipUserAgent::start`] for the driver to have started its worker.
const STARTUP_WAIT: Duration = Duration::from_secs(1);

/// Configuration of [`SipUserAgent::start`].
#[derive(Debug, Clone)]
pub struct SipConfig {
    /// Address to bind (IPv4 or IPv6; port 0 picks a free port).
    pub bind: SocketAddr,
    /// Address written in Via/Contact when `bind` is unspecified (`0.0.0.0` / `::`);
    /// default: loopback of the same family.
    pub advertise_ip: Option<IpAddr>,
    /// User part of our URIs.
    pub user: String,
    /// Maximum simultaneous calls (further INVITEs get 486).
    pub max_calls: usize,
    /// Largest datagram accepted.
    pub max_message_size: usize,
    /// RFC 3261 timers.
    pub timers: Timers,
    /// Credentials for digest challenges (REGISTER and outgoing INVITE).
    pub credentials: Option<DigestCredentials>,
    /// Register at a registrar, if set (needs `credentials` if it challenges).
    pub registration: Option<RegistrationConfig>,
    /// Capacity of the bounded event channel.
    pub event_capacity: usize,
    /// Retry-After seconds on 503 during shutdown.
    pub retry_after_secs: u32,
    /// Longest an unanswered call rings (incoming: 480; outgoing: CANCEL).
    pub ring_timeout: Duration,
}

impl SipConfig {
    /// Defaults: user `callbot`, 100 calls, 64 KiB messages, RFC timers, 1024 events.
    pub fn new(bind: SocketAddr) -> SipConfig {
        SipConfig {
            bind,
            advertise_ip: None,
            user: "callbot".into(),
            max_calls: 100,
            max_message_size: 65_535,
            timers: Timers::default(),
            credentials: None,
            registration: None,
            event_capacity: 1024,
            retry_after_secs: 5,
            ring_timeout: Duration::from_secs(120),
        }
    }
}

/// Errors of the handle.
#[derive(Debug, thiserror::Error)]
pub enum SipError {
    /// The socket could not be bound or configured.
    #[error("cannot bind SIP socket {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The driver thread could not be started.
    #[error("cannot start the SIP thread: {0}")]
    Thread(std::io::Error),
    /// The core refused the command.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The user agent was shut down (or its thread ended).
    #[error("the SIP user agent is not running")]
    NotRunning,
    /// The driver thread did not answer in time.
    #[error("the SIP thread did not answer within {0:?}")]
    Timeout(Duration),
    /// A staged registration was refused by the registrar (`code`) or not answered in
    /// time (`code` is `None`); it was dropped and the current registration kept.
    #[error("registration refused: {reason}")]
    Registration {
        /// The registrar's final status code; `None` when it did not answer in time.
        code: Option<u16>,
        /// The status line, or what timed out.
        reason: String,
    },
}

/// What [`SipHandle::shutdown`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SipShutdownReport {
    /// Calls the shutdown hung up (BYE, CANCEL or 603); calls whose BYE the application
    /// had already sent are not counted.
    pub calls_hung_up: usize,
    /// Calls whose hangup was still unanswered at the deadline (forgotten).
    pub calls_abandoned: usize,
    /// `Some(true)` when the registration was removed (200 to Expires: 0),
    /// `Some(false)` when that failed or timed out, `None` when there was no
    /// registration or no binding to remove.
    pub unregistered: Option<bool>,
    /// The deadline passed before everything was answered.
    pub timed_out: bool,
    /// The driver thread was joined.
    pub thread_joined: bool,
    /// This call found the agent already shut down (nothing done).
    pub already_shut_down: bool,
    /// How long shutdown took.
    pub elapsed: Duration,
}

impl std::fmt::Display for SipShutdownReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unreg = match self.unregistered {
            Some(true) => "yes",
            Some(false) => "no",
            None => "n/a",
        };
        write!(
            f,
            "calls_hung_up={} calls_abandoned={} unregistered={unreg} timed_out={} thread_joined={} elapsed_ms={}",
            self.calls_hung_up,
            self.calls_abandoned,
            self.timed_out,
            self.thread_joined,
            self.elapsed.as_millis()
        )
    }
}

enum Command {
    Answer(CallId, SocketAddr, Sender<Result<(), CommandError>>),
    Reject(CallId, u16, Sender<Result<(), CommandError>>),
    Ring(CallId, Sender<Result<(), CommandError>>),
    HangUp(CallId, Sender<Result<(), CommandError>>),
    Call(
        String,
        SocketAddr,
        SocketAddr,
        Sender<Result<CallId, CommandError>>,
    ),
    Stats(Sender<CoreStats>),
    StageRegistration(
        Box<(RegistrationConfig, String, Option<DigestCredentials>)>,
        Sender<Result<Receiver<StagedRegistration>, CommandError>>,
    ),
    CommitRegistration(Sender<Result<(), CommandError>>),
    AbortRegistration(Sender<bool>),
    RemoveRegistration(Sender<bool>),
    Shutdown(Instant),
}

struct ThreadReport {
    calls_hung_up: usize,
    calls_abandoned: usize,
    unregistered: Option<bool>,
    timed_out: bool,
}

/// Starts SIP user agents.
#[derive(Debug)]
pub struct SipUserAgent;

impl SipUserAgent {
    /// Binds the socket, starts the driver thread (`sip-ua`, which runs the loop on a
    /// `sip-ua-io` worker) and returns its handle.
    pub fn start(config: SipConfig) -> Result<SipHandle, SipError> {
        let bind_err = |source| SipError::Bind {
            addr: config.bind,
            source,
        };
        let socket = UdpSocket::bind(config.bind).map_err(bind_err)?;
        let bound = socket.local_addr().map_err(bind_err)?;
        let advertised = if bound.ip().is_unspecified() {
            let ip = config.advertise_ip.unwrap_or(match bound.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
            SocketAddr::new(ip, bound.port())
        } else {
            bound
        };
        let wake = socket.try_clone().map_err(bind_err)?;
        // The wake datagram goes to the bound socket itself (loopback when unspecified).
        let wake_addr = if bound.ip().is_unspecified() {
            let lo = match bound.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            SocketAddr::new(lo, bound.port())
        } else {
            bound
        };
        let mut core_cfg = CoreConfig::new(advertised);
        core_cfg.user = config.user.clone();
        core_cfg.max_calls = config.max_calls;
        core_cfg.max_message_size = config.max_message_size;
        core_cfg.timers = config.timers;
        core_cfg.credentials = config.credentials.clone();
        core_cfg.registration = config.registration.clone();
        core_cfg.retry_after_secs = config.retry_after_secs;
        core_cfg.ring_timeout = config.ring_timeout;
        let (event_tx, event_rx) = bounded(config.event_capacity.max(1));
        let (cmd_tx, cmd_rx) = bounded::<Command>(256);
        let (done_tx, done_rx) = bounded::<ThreadReport>(1);
        let max = config.max_message_size;
        let (ready_tx, ready_rx) = bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("sip-ua".into())
            .spawn(move || {
                let driver = Driver::new(socket, core_cfg, max, cmd_rx, event_tx);
                if let Some(report) = supervise(driver, ready_tx) {
                    let _ = done_tx.send(report);
                }
            })
            .map_err(SipError::Thread)?;
        // Both threads run once `start` returns (a caller counting its threads sees them).
        let _ = ready_rx.recv_timeout(STARTUP_WAIT);
        tracing::info!(local = %advertised, "SIP user agent started");
        Ok(SipHandle {
            local_addr: advertised,
            events: event_rx,
            commands: Some(cmd_tx),
            wake: Some(wake),
            wake_addr,
            thread: Some(thread),
            done: done_rx,
            report: None,
        })
    }
}

/// The running user agent. Owns the socket (through its thread) and the thread.
#[derive(Debug)]
pub struct SipHandle {
    local_addr: SocketAddr,
    events: Receiver<SipEvent>,
    commands: Option<Sender<Command>>,
    wake: Option<UdpSocket>,
    wake_addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
    done: Receiver<ThreadReport>,
    report: Option<SipShutdownReport>,
}

impl SipHandle {
    /// The address peers reach us at (bound port; loopback if bound unspecified).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bounded event channel (clone it to read from another thread).
    pub fn events(&self) -> &Receiver<SipEvent> {
        &self.events
    }

    fn command<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T, SipError> {
        let commands = self.commands.as_ref().ok_or(SipError::NotRunning)?;
        let (tx, rx) = bounded(1);
        commands
            .send_timeout(make(tx), COMMAND_TIMEOUT)
            .map_err(|_| SipError::NotRunning)?;
        self.wake_thread();
        match rx.recv_timeout(COMMAND_TIMEOUT) {
            Ok(v) => Ok(v),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(SipError::Timeout(COMMAND_TIMEOUT)),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(SipError::NotRunning),
        }
    }

    fn wake_thread(&self) {
        if let Some(w) = &self.wake {
            // An empty datagram to our own socket: ignored as a keep-alive, but it ends
            // the thread's blocking read at once.
            let _ = w.send_to(&[], self.wake_addr);
        }
    }

    /// Answers an incoming call: 200 with an SDP answer naming `local_rtp`.
    pub fn answer(&self, call: CallId, local_rtp: SocketAddr) -> Result<(), SipError> {
        Ok(self.command(|r| Command::Answer(call, local_rtp, r))??)
    }

    /// Rejects an incoming call (486, 603, ...).
    pub fn reject(&self, call: CallId, code: u16) -> Result<(), SipError> {
        Ok(self.command(|r| Command::Reject(call, code, r))??)
    }

    /// Sends 180 Ringing.
    pub fn ring(&self, call: CallId) -> Result<(), SipError> {
        Ok(self.command(|r| Command::Ring(call, r))??)
    }

    /// Hangs up (BYE, CANCEL or 603 depending on the call state).
    pub fn hang_up(&self, call: CallId) -> Result<(), SipError> {
        Ok(self.command(|r| Command::HangUp(call, r))??)
    }

    /// Calls `target` (SIP URI), sending the INVITE to `dest`, offering media at `local_rtp`.
    pub fn call(&self, target: &str, dest: SocketAddr, local_rtp: SocketAddr) -> Result<CallId, SipError> {
        let t = target.to_string();
        Ok(self.command(|r| Command::Call(t, dest, local_rtp, r))??)
    }

    /// Table sizes and counters of the core.
    pub fn stats(&self) -> Result<CoreStats, SipError> {
        self.command(Command::Stats)
    }

    /// Registers a new binding (`user` at `registration`, answering challenges with
    /// `credentials`) beside the current one, which keeps serving, and waits until the
    /// registrar accepts it (returns the granted expiry and how long it took) or until
    /// `deadline`. Then [`commit_registration`](Self::commit_registration) swaps it in
    /// (the old binding is removed) or [`abort_registration`](Self::abort_registration)
    /// drops it. On refusal or timeout it is dropped at once, the current registration
    /// is untouched, and the error is [`SipError::Registration`].
    pub fn stage_registration(
        &self,
        registration: RegistrationConfig,
        user: &str,
        credentials: Option<DigestCredentials>,
        deadline: Instant,
    ) -> Result<(u32, Duration), SipError> {
        let args = Box::new((registration, user.to_string(), credentials));
        let outcome = self.command(|r| Command::StageRegistration(args, r))??;
        let failed = match outcome.recv_deadline(deadline) {
            Ok(StagedRegistration::Registered { expires, took }) => return Ok((expires, took)),
            Ok(StagedRegistration::Failed { code, reason }) => SipError::Registration { code, reason },
            Ok(StagedRegistration::Pending) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                SipError::Registration {
                    code: None,
                    reason: "no final answer from the registrar in time".into(),
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => SipError::NotRunning,
        };
        let _ = self.abort_registration();
        Err(failed)
    }

    /// Makes the registration staged by [`stage_registration`](Self::stage_registration)
    /// the current one; the binding it replaces is removed (`Expires: 0`) unless it is
    /// the same binding (same registrar, user and domain).
    pub fn commit_registration(&self) -> Result<(), SipError> {
        Ok(self.command(Command::CommitRegistration)??)
    }

    /// Drops a staged registration (removing its binding if it was accepted). Returns
    /// whether one was staged.
    pub fn abort_registration(&self) -> Result<bool, SipError> {
        self.command(Command::AbortRegistration)
    }

    /// Removes the current registration (`Expires: 0`, not waited for); the user agent
    /// keeps running without one. Returns whether there was one.
    pub fn remove_registration(&self) -> Result<bool, SipError> {
        self.command(Command::RemoveRegistration)
    }

    /// Stops taking calls (503), sends BYE to every live call, unregisters, waits for
    /// the answers until `deadline`, joins the thread and closes the socket.
    /// Idempotent: later calls return the first report with `already_shut_down`.
    pub fn shutdown(&mut self, deadline: Instant) -> SipShutdownReport {
        if let Some(r) = &self.report {
            return SipShutdownReport {
                already_shut_down: true,
                ..r.clone()
            };
        }
        let started = Instant::now();
        let mut report = SipShutdownReport::default();
        if let Some(commands) = self.commands.take() {
            let _ = commands.send_timeout(Command::Shutdown(deadline), COMMAND_TIMEOUT);
            self.wake_thread();
        }
        // The thread stops by itself at the deadline; allow it a little slack to exit.
        let wait = deadline.saturating_duration_since(Instant::now()) + MAX_IDLE * 2;
        match self.done.recv_timeout(wait) {
            Ok(t) => {
                report.calls_hung_up = t.calls_hung_up;
                report.calls_abandoned = t.calls_abandoned;
                report.unregistered = t.unregistered;
                report.timed_out = t.timed_out;
                if let Some(h) = self.thread.take() {
                    report.thread_joined = h.join().is_ok();
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                // The thread ended without a report (its worker panicked): it has
                // dropped its end of the channel, so the join returns at once.
                report.timed_out = true;
                if let Some(h) = self.thread.take() {
                    report.thread_joined = h.join().is_ok();
                }
                tracing::error!("SIP thread ended without a shutdown report");
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                report.timed_out = true;
                tracing::error!("SIP thread did not stop in time; it is left to exit on its own");
            }
        }
        self.wake = None;
        report.elapsed = started.elapsed();
        tracing::info!(%report, "SIP client shutdown complete");
        self.report = Some(report.clone());
        report
    }
}

impl Drop for SipHandle {
    fn drop(&mut self) {
        self.shutdown(Instant::now() + DROP_SHUTDOWN_TIMEOUT);
    }
}

/// Everything the driver loop owns. It moves to a fresh worker thread after each load
/// peak (see [`supervise`]).
struct Driver {
    socket: UdpSocket,
    core: UserAgentCore,
    /// The receive buffer, reused for every datagram.
    buf: Vec<u8>,
    commands: Receiver<Command>,
    events: Sender<SipEvent>,
    pending: VecDeque<SipEvent>,
    shutdown: Option<(Instant, usize)>,
    /// Told once the staged registration is accepted or refused.
    staged_waiter: Option<Sender<StagedRegistration>>,
}

/// How a worker's run ended.
enum Step {
    /// A load peak is over and the tables are empty: the worker thread ends so glibc
    /// returns its per-thread cache, and the next worker continues.
    Drained(Box<Driver>),
    /// Shutdown finished or its deadline passed.
    Finished(ThreadReport),
}

/// The `sip-ua` thread: runs the driver loop on a worker thread (`sip-ua-io`) until a
/// load peak drained, joins it, returns the freed heap to the system and starts the
/// next worker; returns the shutdown report (`None` if a worker panicked).
///
/// Why a new worker per peak: glibc keeps up to 7 freed blocks per size class in a
/// per-thread cache (tcache) that `malloc_trim` does not empty; after a burst those
/// blocks are the last ones the burst freed, scattered over the arena, and each pins
/// its page. Only the thread's exit gives them back. The worker's arena goes to glibc's
/// free list and the next worker takes it over, so no arena is added per peak.
fn supervise(driver: Driver, ready: Sender<()>) -> Option<ThreadReport> {
    let mut ready = Some(ready);
    let mut driver = Box::new(driver);
    // Once a worker could not be started the loop stays on this thread.
    let mut inline = false;
    loop {
        let step = if inline {
            driver.run(false)
        } else {
            // The driver goes through a channel so a failed spawn gives it back.
            let (tx, rx) = bounded::<Box<Driver>>(1);
            let handoff = rx.clone();
            let _ = tx.send(driver);
            let spawned = std::thread::Builder::new()
                .name("sip-ua-io".into())
                .spawn(move || handoff.recv().ok().map(|d| d.run(true)));
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
            match spawned {
                Ok(worker) => match worker.join() {
                    Ok(step) => step?,
                    Err(_) => {
                        tracing::error!("SIP worker thread panicked: the user agent stopped");
                        return None;
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a SIP worker thread: the loop stays on sip-ua");
                    inline = true;
                    driver = rx.try_recv().ok()?;
                    continue;
                }
            }
        };
        match step {
            Step::Finished(report) => return Some(report),
            Step::Drained(d) => {
                driver = d;
                crate::heap::release_after_peak();
            }
        }
    }
}

impl Driver {
    fn new(
        socket: UdpSocket,
        cfg: CoreConfig,
        max_message_size: usize,
        commands: Receiver<Command>,
        events: Sender<SipEvent>,
    ) -> Driver {
        Driver {
            socket,
            core: UserAgentCore::new(cfg, Instant::now()),
            buf: vec![0u8; max_message_size.saturating_add(1).max(2048)],
            commands,
            events,
            pending: VecDeque::new(),
            shutdown: None,
            staged_waiter: None,
        }
    }

    /// The driver loop. Returns when shutdown finished or its deadline passed, or, when
    /// `yield_drained`, once a load peak drained.
    fn run(mut self: Box<Self>, yield_drained: bool) -> Step {
        // A worker after a handover usually has its predecessor's arena: the blocks its
        // cache returned at exit may have merged into the arena's top.
        crate::heap::trim_thread_arena();
        loop {
            let now = Instant::now();
            self.take_commands(now);
            let mut drained = false;
            let core = &mut self.core;
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
                drained = core.take_drained();
                if drained {
                    crate::heap::trim_thread_arena();
                }
                if drained && !yield_drained {
                    crate::heap::release_after_peak();
                }
            }
            while let Some(t) = core.poll_transmit() {
                if let Err(e) = self.socket.send_to(&t.payload, t.destination) {
                    tracing::debug!(dest = %t.destination, error = %e, "SIP send failed");
                }
            }
            if let Some(report) = self.deliver_events(now) {
                return Step::Finished(report);
            }
            if drained && yield_drained {
                if self.pending.is_empty() {
                    // Its peak capacity goes with the peak.
                    self.pending = VecDeque::new();
                }
                return Step::Drained(self);
            }
            self.receive(now);
        }
    }

    fn take_commands(&mut self, now: Instant) {
        let core = &mut self.core;
        loop {
            let cmd = match self.commands.try_recv() {
                Ok(cmd) => cmd,
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    // The handle is gone (its shutdown sends Shutdown first, so this
                    // only covers a lost handle): stop within a second.
                    if self.shutdown.is_none() {
                        let hung_up = core.begin_shutdown(now);
                        self.shutdown = Some((now + Duration::from_secs(1), hung_up));
                    }
                    break;
                }
            };
            match cmd {
                Command::Answer(c, rtp, r) => {
                    let _ = r.send(core.answer(now, c, rtp));
                }
                Command::Reject(c, code, r) => {
                    let _ = r.send(core.reject(now, c, code));
                }
                Command::Ring(c, r) => {
                    let _ = r.send(core.ring(now, c));
                }
                Command::HangUp(c, r) => {
                    let _ = r.send(core.hang_up(now, c));
                }
                Command::Call(t, d, rtp, r) => {
                    let _ = r.send(core.call(now, &t, d, rtp));
                }
                Command::Stats(r) => {
                    let _ = r.send(core.stats());
                }
                Command::StageRegistration(args, r) => {
                    let (cfg, user, credentials) = *args;
                    let result = core.stage_registration(now, cfg, &user, credentials).map(|()| {
                        let (tx, rx) = bounded(1);
                        self.staged_waiter = Some(tx);
                        rx
                    });
                    let _ = r.send(result);
                }
                Command::CommitRegistration(r) => {
                    let _ = r.send(core.commit_registration(now));
                }
                Command::AbortRegistration(r) => {
                    self.staged_waiter = None;
                    let _ = r.send(core.abort_registration(now));
                }
                Command::RemoveRegistration(r) => {
                    self.staged_waiter = None;
                    let _ = r.send(core.remove_registration(now));
                }
                Command::Shutdown(deadline) => {
                    if self.shutdown.is_none() {
                        let hung_up = core.begin_shutdown(now);
                        self.shutdown = Some((deadline, hung_up));
                    }
                }
            }
        }
    }

    /// Hands the core's events to the application; returns the report once shutdown
    /// finished or its deadline passed.
    fn deliver_events(&mut self, now: Instant) -> Option<ThreadReport> {
        let core = &mut self.core;
        let pending = &mut self.pending;
        while let Some(e) = core.poll_event() {
            pending.push_back(e);
        }
        if self.staged_waiter.is_some() {
            match core.staged_registration() {
                Some(StagedRegistration::Pending) => {}
                Some(outcome) => {
                    if let Some(w) = self.staged_waiter.take() {
                        let _ = w.try_send(outcome);
                    }
                }
                None => self.staged_waiter = None,
            }
        }
        while let Some(e) = pending.pop_front() {
            if let Err(err) = self.events.try_send(e) {
                if err.is_disconnected() {
                    pending.clear();
                    break;
                }
                pending.push_front(err.into_inner());
                break;
            }
        }
        if pending.len() > MAX_PENDING_EVENTS {
            let n = pending.len() - MAX_PENDING_EVENTS;
            pending.drain(..n);
            tracing::warn!(dropped = n, "SIP event channel full: oldest events dropped");
        }
        let (deadline, live) = self.shutdown?;
        if !(core.is_shutdown_complete() || now >= deadline) {
            return None;
        }
        let report = ThreadReport {
            calls_hung_up: live,
            timed_out: !core.is_shutdown_complete(),
            unregistered: core.unregistration(),
            calls_abandoned: core.abandon(),
        };
        while let Some(e) = core.poll_event() {
            pending.push_back(e);
        }
        for e in pending.drain(..) {
            let _ = self.events.try_send(e);
        }
        Some(report)
    }

    /// Waits for one datagram (at most until the next timer, a shutdown deadline or
    /// [`MAX_IDLE`]) and hands it to the core.
    fn receive(&mut self, now: Instant) {
        let mut wait = self
            .core
            .poll_timeout()
            .map_or(MAX_IDLE, |t| t.saturating_duration_since(now))
            .min(MAX_IDLE);
        if !self.pending.is_empty() {
            wait = wait.min(Duration::from_millis(10));
        }
        if let Some((deadline, _)) = self.shutdown {
            wait = wait.min(deadline.saturating_duration_since(now));
        }
        let wait = wait.max(Duration::from_millis(1));
        if let Err(e) = self.socket.set_read_timeout(Some(wait)) {
            tracing::warn!(error = %e, "cannot set SIP socket timeout");
        }
        match self.socket.recv_from(&mut self.buf) {
            Ok((n, from)) => {
                let data = self.buf.get(..n).unwrap_or_default();
                self.core.handle_datagram(Instant::now(), from, data);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            // ICMP port unreachable from an earlier send shows up here on Linux: ignore.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            Err(e) => {
                tracing::warn!(error = %e, "SIP socket receive failed");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}
