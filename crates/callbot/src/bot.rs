//! [`Bot`]: the running voice bot.
//!
//! **What it owns**: the SIP user agent ([`SipHandle`]: one UDP socket, thread
//! `sip-ua`), the shared components ([`Components`] of the real layers: the Whisper
//! worker pool, the Ollama client or echo mode, the espeak-ng engine), the current
//! [`Settings`], and one entry per live call.
//!
//! **Threads it starts**: `bot-sip`, which takes SIP events (answers or rejects calls,
//! tells calls their caller hung up, reaps ended calls and the components they
//! released), and one `call-N` thread per live call running [`run_call`] over that
//! call's own [`RtpSession`] (thread `rtp-<port>`) and a VAD endpointer. A call thread
//! sends BYE when its dialogue decided to hang up, shuts its RTP session down and ends.
//!
//! **How it stops**: [`Bot::shutdown`]`(deadline)`: new calls get 503; the shutdown
//! phrase is synthesized once and fitted to the time left ([`crate::shutdown`]); every
//! live call is told at once to stop speaking, play that shared audio and hang up (BYE)
//! within 5/8 of the time left, and the call threads are joined in parallel (each with
//! the same deadline, 3/4 of the time left; one still running then gets until the SIP
//! layer's own deadline, since it holds the SIP handle); then `bot-sip` is stopped and
//! joined, the SIP user agent is shut down (BYE to calls still up, the answers to the
//! BYEs awaited, registration removed, `sip-ua` joined; it keeps up to 100 ms of the
//! deadline for the components when a registrar does not answer), and the components
//! are shut down ("All components cleaned up"), all bounded by the deadline. The
//! [`BotShutdownReport`] says what happened (calls ended/abandoned, BYEs sent/answered,
//! the goodbye, whether the registration was removed). Idempotent; `Drop` calls it with
//! a 3 s deadline.
//!
//! **Reconfiguration**: [`Bot::reconfigure`] (SIGHUP in `examples/callbot.rs`):
//! 1. *Build* everything that changed while the old keeps serving, with no lock held
//!    that a new call needs (see [`crate::components`]): a new Whisper pool when
//!    `stt.model`/`threads`/`workers` change, a new LLM client (probed) when any
//!    `llm.*` changes **or the bot is in echo mode** (so a server that became
//!    reachable ends echo mode; the log says when echo mode starts or ends), and a
//!    changed `[sip.registration]` is registered *beside* the old binding
//!    ([`SipHandle::stage_registration`], at most [`REGISTRATION_TIMEOUT`]).
//! 2. *Swap* at once, under the components lock: the new registration becomes the
//!    current one and the old binding is removed (`Expires: 0`; a removed
//!    `[sip.registration]` just unregisters), the new components are installed, the
//!    new settings take effect.
//! 3. *Retire* the old components: each is shut down as soon as no live call holds it.
//!
//! If anything fails to build or register, nothing changes: the old components and
//! registration keep serving, the new components are shut down, the staged
//! registration is dropped, and the [`SettingsError`] names the field
//! (`sip.registration.password: registrar `...` answered 401 authentication rejected`).
//! Reconfigurations are serialised by their own mutex.
//!
//! | settings | when a change applies |
//! |---|---|
//! | `sip.listen` | **restart needed**: refused with the field named (the new socket cannot be bound beside the old one on the same port) |
//! | `sip.registration.*` | live: new binding registered, then swapped in; the old one removed |
//! | `dialogue.max_calls` | live: the next INVITE is checked against it (calls above it get 486; live calls are not ended) |
//! | `stt.model`, `stt.threads`, `stt.workers`, `llm.*` | live: new component built, used by new calls |
//! | `stt.language`/`beam_size`/`initial_prompt`, `tts.*`, `media.*`, `dialogue.*`, `transcripts.*` | live: read by each new call when it starts |
//!
//! **Live calls keep until they end** the STT, LLM and TTS components, the settings
//! (dialogue, media, voice, transcript directory) they started with; the registration
//! does not belong to a call (a call is a dialog with its own route), so a swapped
//! registration does not affect it.
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! let settings = callbot::Settings::load("examples/callbot.toml".as_ref())?;
//! let mut bot = callbot::Bot::start(settings)?;
//! // ... later, on SIGHUP:
//! let new = callbot::Settings::load("examples/callbot.toml".as_ref())?;
//! if let Err(e) = bot.reconfigure(new) { eprintln!("kept the old settings: {e}"); }
//! let report = bot.shutdown(Instant::now() + Duration::from_secs(2));
//! println!("{report:?}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use callbot_audio::AudioFrame;
use callbot_audio::g711::Law;
use callbot_audio::vad::{VadConfig, VadEvent};
use callbot_rtp::{RecordTo, RtpSession, RtpSessionConfig};
use callbot_sip::digest::DigestCredentials;
use callbot_sip::{
    AudioCodec, CallId, NegotiatedMedia, RegistrationConfig, SipConfig, SipError, SipEvent, SipHandle,
    SipShutdownReport, SipUserAgent,
};
use crossbeam_channel::{Receiver, Sender, bounded};

use crate::call::{CallControl, CallSetup, EndpointEvent, Endpointer, run_call};
use crate::components::{Components, ComponentsShutdownReport, ReconfigureReport, RegistrationChange};
use crate::layers::{LayerFactory, LlmComponent, transcribe_options, voice_options};
use crate::settings::{MAX_CALLS_LIMIT, RegistrationSettings, Settings, SettingsError};
use crate::shutdown::{GoodbyeReport, prepare_goodbye};

/// How long [`Bot::reconfigure`] waits for the registrar to accept a new registration
/// before it gives up (the error then names `sip.registration.server`).
pub const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(4);

/// Time of the shutdown deadline kept for the components (Whisper, LLM, TTS) when the
/// SIP layer waits for a registrar that does not answer (they take about 25 ms).
const COMPONENTS_RESERVE: Duration = Duration::from_millis(100);

/// Why the bot could not start.
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    /// A setting is not acceptable, or a component built from it failed.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// A thread could not be started.
    #[error("cannot start thread: {0}")]
    Thread(std::io::Error),
}

/// What [`Bot::shutdown`] did. Its `Display` is one line for logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BotShutdownReport {
    /// True when the bot was already shut down (nothing was done).
    pub already_shut_down: bool,
    /// Live calls when the shutdown began.
    pub live_calls: usize,
    /// Calls whose thread ended and was joined within the deadline.
    pub calls_ended: usize,
    /// Call threads still running at the deadline (left to their own bounded end).
    pub calls_abandoned: usize,
    /// Calls whose goodbye played to its end before their BYE.
    pub goodbyes_completed: usize,
    /// BYEs sent to live calls: by the call threads, plus those the SIP user agent sent
    /// to calls still up when it shut down.
    pub byes_sent: usize,
    /// BYEs the callers answered (200) before the deadline.
    pub byes_answered: usize,
    /// The shutdown goodbye (`None`: no live call or no phrase).
    pub goodbye: Option<GoodbyeReport>,
    /// From the start of the shutdown until the last call thread was joined.
    pub calls_elapsed: Duration,
    /// Whether the `bot-sip` thread was joined.
    pub event_thread_joined: bool,
    /// The SIP user agent's report (`None` if a call thread still held the handle).
    pub sip: Option<SipShutdownReport>,
    /// The components' report.
    pub components: ComponentsShutdownReport,
    /// How long it took.
    pub elapsed: Duration,
}

/// The VAD endpointer of `callbot-audio` as the pipeline's [`Endpointer`]: speech
/// start (with its onset), pause (the hangover began: speculative transcription),
/// resume, end. While the bot speaks it can confirm speech after a shorter
/// `min_speech` ([`VadEndpointer::with_barge_in_min_speech`]), for a faster barge-in.
#[derive(Debug)]
pub struct VadEndpointer {
    inner: callbot_audio::vad::Endpointer,
    events: Vec<VadEvent>,
    /// The pause last reported (end of the last speech, stream time).
    paused: Option<Duration>,
    min_speech: Duration,
    barge_in_min_speech: Option<Duration>,
}

impl VadEndpointer {
    /// An endpointer for `rate` Hz caller audio.
    pub fn new(rate: u32, config: VadConfig) -> Result<Self, callbot_audio::AudioError> {
        let min_speech = config.min_speech;
        Ok(Self {
            inner: callbot_audio::vad::Endpointer::new(rate, config)?,
            events: Vec::new(),
            paused: None,
            min_speech,
            barge_in_min_speech: None,
        })
    }

    /// Confirms speech after `min_speech` (instead of the configured one) while the bot
    /// speaks.
    pub fn with_barge_in_min_speech(mut self, min_speech: Duration) -> Self {
        self.barge_in_min_speech = Some(min_speech);
        self
    }
}

impl Endpointer for VadEndpointer {
    fn push(&mut self, frame: &AudioFrame) -> EndpointEvent {
        self.events.clear();
        self.inner.process_i16(&frame.samples, &mut self.events);
        // Event times are input positions: measure "how long ago" against the input
        // received so far, not the frames scored (the resampler and the partial frame
        // hold 12 to 24 ms of it), so the dated voice end is not that much too late.
        let position = self.inner.input_position();
        let mut out = EndpointEvent::None;
        for e in self.events.drain(..) {
            out = match e {
                VadEvent::SpeechStart { at } => EndpointEvent::SpeechStarted {
                    onset: position.saturating_sub(at),
                },
                VadEvent::SpeechEnd { at, .. } => EndpointEvent::SpeechEnded {
                    hangover: position.saturating_sub(at),
                },
            };
        }
        let paused = self.inner.paused_since();
        if out != EndpointEvent::None {
            // A pause right after a start is reported with the next frame.
            self.paused = None;
            return out;
        }
        let (event, next) = match (self.paused, paused) {
            (None, Some(at)) => (
                EndpointEvent::SpeechPaused {
                    silence: position.saturating_sub(at),
                },
                paused,
            ),
            (Some(_), None) => (EndpointEvent::SpeechResumed, None),
            // Resumed and paused again within this frame: resume now, pause next.
            (Some(a), Some(b)) if a != b => (EndpointEvent::SpeechResumed, None),
            _ => (EndpointEvent::None, paused),
        };
        self.paused = next;
        event
    }

    fn set_bot_speaking(&mut self, speaking: bool) {
        if let Some(short) = self.barge_in_min_speech {
            self.inner
                .set_min_speech(if speaking { short } else { self.min_speech });
        }
    }
}

struct LiveCall {
    control: Sender<CallControl>,
    done: Receiver<CallEnd>,
    thread: JoinHandle<()>,
}

/// What a call thread reports when it ends.
#[derive(Debug, Clone, Copy)]
struct CallEnd {
    bye_sent: bool,
    goodbye_completed: bool,
}

struct Shared {
    settings: Mutex<Settings>,
    components: Mutex<Components<LayerFactory>>,
    calls: Mutex<HashMap<CallId, LiveCall>>,
    accepting: AtomicBool,
    call_seq: AtomicU64,
    /// Call threads poke `bot-sip` through this when they end, so it reaps at once.
    wake: Sender<()>,
    /// The shutdown's deadline, once it began: call threads bound their own teardown by it.
    stop_by: Mutex<Option<Instant>>,
    /// BYEs the callers answered after the shutdown began.
    byes_answered: AtomicUsize,
    /// Held for a whole reconfiguration (build, register, swap), so two never
    /// interleave; new calls never take it.
    reconfiguring: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running voice bot (see the [module docs](self)).
pub struct Bot {
    shared: Arc<Shared>,
    sip: Option<Arc<SipHandle>>,
    local_sip: SocketAddr,
    stop: Option<Sender<()>>,
    event_done: Receiver<()>,
    event_thread: Option<JoinHandle<()>>,
    report: Option<BotShutdownReport>,
}

impl std::fmt::Debug for Bot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bot")
            .field("local_sip", &self.local_sip)
            .field("live_calls", &self.live_calls())
            .finish()
    }
}

/// Resolves `host[:port]` (default port 5060).
fn resolve(server: &str) -> Result<(SocketAddr, String), SettingsError> {
    let field = "sip.registration.server";
    let with_port = if server.parse::<SocketAddr>().is_ok()
        || (server.contains(':') && !server.starts_with('[') && server.matches(':').count() == 1)
    {
        server.to_string()
    } else {
        format!("{server}:5060")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| SettingsError::new(field, format!("cannot resolve `{server}`: {e}")))?
        .next()
        .ok_or_else(|| SettingsError::new(field, format!("`{server}` has no address")))?;
    let host = with_port
        .rsplit_once(':')
        .map_or(with_port.as_str(), |(h, _)| h)
        .trim_matches(['[', ']'])
        .to_string();
    Ok((addr, host))
}

/// The SIP side of `[sip.registration]`: where (resolved), and the credentials.
fn registration_config(
    reg: &RegistrationSettings,
) -> Result<(RegistrationConfig, DigestCredentials), SettingsError> {
    let (registrar, domain) = resolve(&reg.server)?;
    let mut r = RegistrationConfig::new(registrar, domain);
    r.expires = reg.expires;
    Ok((r, DigestCredentials::new(reg.user.clone(), reg.password.clone())))
}

fn sip_config(settings: &Settings) -> Result<SipConfig, SettingsError> {
    let mut c = SipConfig::new(settings.sip.listen);
    // The bot enforces `dialogue.max_calls` itself (486), so it can change while
    // running; the SIP core's own limit only bounds its tables.
    c.max_calls = MAX_CALLS_LIMIT;
    if let Some(reg) = &settings.sip.registration {
        let (r, credentials) = registration_config(reg)?;
        c.registration = Some(r);
        c.user = reg.user.clone();
        c.credentials = Some(credentials);
    }
    Ok(c)
}

/// Names the `[sip.registration]` field a refused or unanswered new registration
/// points at: no answer -> `server`; 401/403/407 -> `password` (or `user` when only
/// the user changed); 404 -> `user`; 423 -> `expires`; anything else -> `server`.
fn registration_error(
    old: Option<&RegistrationSettings>,
    new: &RegistrationSettings,
    e: SipError,
) -> SettingsError {
    match e {
        SipError::Registration { code: None, reason } => SettingsError::new(
            "sip.registration.server",
            format!("registrar `{}` did not answer: {reason}", new.server),
        ),
        SipError::Registration {
            code: Some(code),
            reason,
        } => {
            let user_changed = old.is_none_or(|o| o.user != new.user);
            let password_changed = old.is_none_or(|o| o.password != new.password);
            let field = match code {
                401 | 403 | 407 if user_changed && !password_changed => "sip.registration.user",
                401 | 403 | 407 => "sip.registration.password",
                404 | 604 => "sip.registration.user",
                423 => "sip.registration.expires",
                _ => "sip.registration.server",
            };
            SettingsError::new(field, format!("registrar `{}` answered {reason}", new.server))
        }
        other => SettingsError::new("sip.registration", other.to_string()),
    }
}

impl Bot {
    /// Validates `settings`, builds the components, starts SIP (and registration).
    /// On failure everything built so far is shut down and the error names the setting.
    pub fn start(settings: Settings) -> Result<Bot, BotError> {
        settings.validate()?;
        let sip_cfg = sip_config(&settings)?;
        let mut components = Components::start(LayerFactory, &settings)?;
        let sip = match SipUserAgent::start(sip_cfg) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                components.shutdown(Instant::now() + Duration::from_secs(2));
                return Err(SettingsError::new("sip.listen", e.to_string()).into());
            }
        };
        let local_sip = sip.local_addr();
        let (wake, wake_rx) = bounded::<()>(1);
        let shared = Arc::new(Shared {
            settings: Mutex::new(settings),
            components: Mutex::new(components),
            calls: Mutex::new(HashMap::new()),
            accepting: AtomicBool::new(true),
            call_seq: AtomicU64::new(0),
            wake,
            stop_by: Mutex::new(None),
            byes_answered: AtomicUsize::new(0),
            reconfiguring: Mutex::new(()),
        });
        let (stop_tx, stop_rx) = bounded::<()>(1);
        let (done_tx, event_done) = bounded::<()>(1);
        let (s2, sip2) = (Arc::clone(&shared), Arc::clone(&sip));
        let thread = std::thread::Builder::new().name("bot-sip".into()).spawn(move || {
            event_loop(&s2, &sip2, &stop_rx, &wake_rx);
            drop(sip2);
            let _ = done_tx.send(());
        });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                if let Ok(mut sip) = Arc::try_unwrap(sip) {
                    sip.shutdown(Instant::now() + Duration::from_secs(2));
                }
                lock(&shared.components).shutdown(Instant::now() + Duration::from_secs(2));
                return Err(BotError::Thread(e));
            }
        };
        tracing::info!(sip = %local_sip, "callbot started");
        Ok(Bot {
            shared,
            sip: Some(sip),
            local_sip,
            stop: Some(stop_tx),
            event_done,
            event_thread: Some(thread),
            report: None,
        })
    }

    /// The address the SIP user agent listens on.
    pub fn sip_addr(&self) -> SocketAddr {
        self.local_sip
    }

    /// Calls in progress.
    pub fn live_calls(&self) -> usize {
        lock(&self.shared.calls).len()
    }

    /// Whether the LLM runs in echo mode: no server was reachable at start or at the
    /// last reconfiguration (each reconfiguration in echo mode probes it again).
    pub fn echo_mode(&self) -> bool {
        lock(&self.shared.components)
            .for_call()
            .is_some_and(|c| c.llm.is_echo())
    }

    /// Applies new settings (see the [module docs](self)): builds every changed
    /// component without holding the lock new calls need (a new Whisper pool, a new LLM
    /// client, probed; echo mode is re-evaluated), registers a changed registration
    /// beside the old one (waiting at most [`REGISTRATION_TIMEOUT`] for the
    /// registrar), then swaps all of it in at once and retires the old ones. On any
    /// failure nothing changes, the half-built components and the staged registration
    /// are cleaned up, and the error names the failing setting. A changed `sip.listen`
    /// is refused (restart needed). One reconfiguration runs at a time.
    pub fn reconfigure(&self, settings: Settings) -> Result<ReconfigureReport, SettingsError> {
        settings.validate()?;
        let (Some(sip), None) = (self.sip.as_ref(), self.report.as_ref()) else {
            return Err(SettingsError::new("bot", "the bot is shut down"));
        };
        let _one_at_a_time = lock(&self.shared.reconfiguring);
        let started = Instant::now();
        let current = lock(&self.shared.settings).clone();
        if current.sip.listen != settings.sip.listen {
            return Err(SettingsError::new(
                "sip.listen",
                format!(
                    "cannot change while running ({} -> {}): a listening socket cannot be built beside the old one on the same port; restart the bot",
                    current.sip.listen, settings.sip.listen
                ),
            ));
        }
        let new_registration = match &settings.sip.registration {
            Some(r) if current.sip.registration.as_ref() != Some(r) => Some((r, registration_config(r)?)),
            _ => None,
        };
        let was_echo = self.echo_mode();
        // 1. Build, with no lock held: new calls keep starting on the old components.
        let plan = lock(&self.shared.components).plan(&settings)?;
        let built = plan.build()?;
        let new_echo = built.llm().map(LlmComponent::is_echo);
        let registration = match new_registration {
            Some((reg, (cfg, credentials))) => {
                let deadline = Instant::now() + REGISTRATION_TIMEOUT;
                match sip.stage_registration(cfg, &reg.user, Some(credentials), deadline) {
                    Ok((expires, took)) if current.sip.registration.is_some() => {
                        RegistrationChange::Replaced { expires, took }
                    }
                    Ok((expires, took)) => RegistrationChange::Added { expires, took },
                    Err(e) => {
                        // `built` is dropped: the new components are shut down.
                        return Err(registration_error(current.sip.registration.as_ref(), reg, e));
                    }
                }
            }
            None if current.sip.registration.is_some() && settings.sip.registration.is_none() => {
                RegistrationChange::Removed
            }
            None => RegistrationChange::Unchanged,
        };
        // 2. Swap everything at once, under the components lock (which new calls take
        //    to read the settings and components together).
        let mut components = lock(&self.shared.components);
        let swapped = match registration {
            RegistrationChange::Added { .. } | RegistrationChange::Replaced { .. } => {
                sip.commit_registration()
            }
            RegistrationChange::Removed => sip.remove_registration().map(|_| ()),
            RegistrationChange::Unchanged => Ok(()),
        };
        if let Err(e) = swapped {
            let _ = sip.abort_registration();
            return Err(SettingsError::new("sip.registration", e.to_string()));
        }
        let mut report = components.install(built)?;
        *lock(&self.shared.settings) = settings;
        drop(components);
        report.registration = registration;
        report.elapsed = started.elapsed();
        match new_echo {
            Some(true) if !was_echo => {
                tracing::warn!("LLM server unreachable: echo mode (the bot repeats what it heard)")
            }
            Some(false) if was_echo => tracing::info!("LLM server reachable again: echo mode left"),
            _ => {}
        }
        tracing::info!(replaced = ?report.replaced, registration = ?report.registration, elapsed_ms = report.elapsed.as_millis() as u64, "reconfigured");
        Ok(report)
    }

    /// Stops the bot within `deadline` (see the [module docs](self)). Idempotent.
    pub fn shutdown(&mut self, deadline: Instant) -> BotShutdownReport {
        if let Some(r) = &self.report {
            return BotShutdownReport {
                already_shut_down: true,
                ..r.clone()
            };
        }
        let started = Instant::now();
        let mut report = BotShutdownReport::default();
        self.shared.accepting.store(false, Ordering::SeqCst);
        *lock(&self.shared.stop_by) = Some(deadline);
        // 1. Live calls: the goodbye synthesized once, played by all at once, BYE, joined.
        let calls: Vec<(CallId, LiveCall)> = lock(&self.shared.calls).drain().collect();
        report.live_calls = calls.len();
        let (phrase, audio) = self.shutdown_goodbye(&mut report, deadline);
        let left = deadline.saturating_duration_since(Instant::now());
        for (_, c) in &calls {
            let _ = c.control.try_send(CallControl::Shutdown {
                phrase: phrase.clone(),
                grace: left * 5 / 8,
                audio: audio.clone(),
            });
        }
        let calls_deadline = Instant::now() + left * 3 / 4;
        let running: Vec<(CallId, LiveCall)> = calls
            .into_iter()
            .filter_map(|(id, c)| join_call(c, calls_deadline, &mut report).map(|c| (id, c)))
            .collect();
        report.calls_elapsed = started.elapsed();
        // 2. The SIP event thread.
        self.stop.take();
        if let Some(t) = self.event_thread.take() {
            match self.event_done.recv_deadline(deadline) {
                Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    report.event_thread_joined = t.join().is_ok();
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    tracing::warn!("bot-sip thread still running at the deadline");
                }
            }
        }
        // 3. SIP: BYE to what is left, the answers awaited, unregister, join. A
        // registrar that does not answer holds it until its own deadline, which
        // leaves the components their share.
        let left = deadline.saturating_duration_since(Instant::now());
        let sip_deadline = deadline
            .checked_sub((left / 4).min(COMPONENTS_RESERVE))
            .unwrap_or(deadline);
        // Call threads still running hold the SIP handle: they get until then.
        for (id, c) in running {
            if join_call(c, sip_deadline, &mut report).is_some() {
                tracing::warn!(call = %id, "call thread still running at the deadline");
                report.calls_abandoned += 1;
            }
        }
        if let Some(sip) = self.sip.take() {
            match Arc::try_unwrap(sip) {
                Ok(mut sip) => {
                    let r = sip.shutdown(sip_deadline);
                    report.byes_sent += r.calls_hung_up;
                    // Answers that arrived after `bot-sip` stopped.
                    let late = sip
                        .events()
                        .try_iter()
                        .filter(|e| {
                            matches!(
                                e,
                                SipEvent::CallEnded {
                                    reason: callbot_sip::EndReason::LocalHangup,
                                    ..
                                }
                            )
                        })
                        .count();
                    self.shared.byes_answered.fetch_add(late, Ordering::SeqCst);
                    report.sip = Some(r);
                }
                Err(_) => {
                    tracing::warn!("SIP handle still held by a call thread; it shuts down when released")
                }
            }
        }
        report.byes_answered = self.shared.byes_answered.load(Ordering::SeqCst);
        // 4. Components.
        report.components = lock(&self.shared.components).shutdown(deadline);
        report.elapsed = started.elapsed();
        tracing::info!(%report, "callbot shut down");
        self.report = Some(report.clone());
        report
    }
}

/// Waits for a call thread until `by` and joins it, counting what it reported; gives it
/// back when it is still running.
fn join_call(c: LiveCall, by: Instant, report: &mut BotShutdownReport) -> Option<LiveCall> {
    match c.done.recv_deadline(by) {
        Ok(end) => {
            report.byes_sent += usize::from(end.bye_sent);
            report.goodbyes_completed += usize::from(end.goodbye_completed);
        }
        // The thread ended without reporting (it panicked): joined all the same.
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {}
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => return Some(c),
    }
    let _ = c.thread.join();
    report.calls_ended += 1;
    None
}

impl Bot {
    /// Synthesizes the shutdown phrase once for every live call and fits it into the
    /// time left. Returns the phrase and its audio, or an empty phrase (hang up without
    /// a goodbye) when there is none.
    fn shutdown_goodbye(
        &self,
        report: &mut BotShutdownReport,
        deadline: Instant,
    ) -> (String, Option<AudioFrame>) {
        let (phrase, voice) = {
            let s = lock(&self.shared.settings);
            (s.dialogue.shutdown_phrase.clone(), voice_options(&s))
        };
        if report.live_calls == 0 || phrase.trim().is_empty() {
            return (String::new(), None);
        }
        let Some(tts) = lock(&self.shared.components).for_call().map(|c| c.tts) else {
            return (String::new(), None);
        };
        let (audio, goodbye) = prepare_goodbye(tts.as_ref(), &phrase, &voice, 8000, deadline);
        tracing::info!(?goodbye, "shutdown goodbye ready");
        report.goodbye = Some(goodbye);
        match audio {
            Some(a) => (phrase, Some(a)),
            None => (String::new(), None),
        }
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        self.shutdown(Instant::now() + Duration::from_secs(3));
    }
}

/// The `bot-sip` thread: SIP events in, calls started and ended.
fn event_loop(shared: &Arc<Shared>, sip: &Arc<SipHandle>, stop: &Receiver<()>, wake: &Receiver<()>) {
    loop {
        crossbeam_channel::select! {
            recv(stop) -> _ => return,
            recv(wake) -> _ => {},
            recv(sip.events()) -> ev => match ev {
                Ok(ev) => on_sip_event(shared, sip, ev),
                Err(_) => return,
            },
            default(Duration::from_millis(100)) => {}
        }
        reap(shared);
    }
}

/// Joins ended call threads and shuts down the components they released.
fn reap(shared: &Shared) {
    let ended: Vec<LiveCall> = {
        let mut calls = lock(&shared.calls);
        let ids: Vec<CallId> = calls
            .iter()
            .filter(|(_, c)| !c.done.is_empty() || c.thread.is_finished())
            .map(|(id, _)| *id)
            .collect();
        ids.iter().filter_map(|id| calls.remove(id)).collect()
    };
    if ended.is_empty() {
        return;
    }
    for c in ended {
        let _ = c.thread.join();
    }
    let reports = lock(&shared.components).reap(Instant::now() + Duration::from_secs(2));
    for r in reports {
        tracing::info!(
            component = r.component,
            generation = r.generation,
            clean = r.clean,
            "retired component shut down"
        );
    }
}

fn on_sip_event(shared: &Arc<Shared>, sip: &Arc<SipHandle>, ev: SipEvent) {
    match ev {
        SipEvent::IncomingCall {
            call, from, media, ..
        } => {
            if let Err((code, why)) = accept(shared, sip, call, &from, media) {
                tracing::info!(%call, code, %why, "call rejected");
                let _ = sip.reject(call, code);
            }
        }
        SipEvent::CallEnded { call, reason } => {
            tracing::debug!(%call, ?reason, "SIP call ended");
            if reason == callbot_sip::EndReason::LocalHangup && !shared.accepting.load(Ordering::SeqCst) {
                shared.byes_answered.fetch_add(1, Ordering::SeqCst);
            }
            if let Some(c) = lock(&shared.calls).get(&call) {
                let _ = c.control.try_send(CallControl::CallerHungUp);
            }
        }
        other => tracing::debug!(event = ?other, "SIP event"),
    }
}

fn accept(
    shared: &Arc<Shared>,
    sip: &Arc<SipHandle>,
    call: CallId,
    from: &str,
    media: NegotiatedMedia,
) -> Result<(), (u16, String)> {
    if !shared.accepting.load(Ordering::SeqCst) {
        return Err((503, "shutting down".into()));
    }
    // Settings and components together, under the lock a reconfiguration swaps both
    // under: a call never mixes old settings with new components.
    let (settings, components) = {
        let components = lock(&shared.components);
        (lock(&shared.settings).clone(), components.for_call())
    };
    if lock(&shared.calls).len() >= settings.dialogue.max_calls {
        return Err((486, "max_calls reached".into()));
    }
    let (law, name) = match media.codec {
        AudioCodec::Pcmu => (Law::Ulaw, "PCMU"),
        AudioCodec::Pcma => (Law::Alaw, "PCMA"),
    };
    if !settings.media.codecs.iter().any(|c| c == name) {
        return Err((488, format!("codec {name} not enabled")));
    }
    let components = components.ok_or((503, "components shut down".to_string()))?;
    let n = shared.call_seq.fetch_add(1, Ordering::SeqCst) + 1;
    let call_name = format!("{n}-{}", from_user(from));
    let mut rtp_cfg = RtpSessionConfig::new(sip.local_addr().ip(), law, Some(media.remote_rtp));
    rtp_cfg.ports = settings.media.rtp_port_min..=settings.media.rtp_port_max;
    rtp_cfg.media.payload_type = media.payload_type;
    rtp_cfg.media.telephone_event = media.telephone_event;
    rtp_cfg.media.jitter = settings.jitter_config();
    rtp_cfg.record = settings.media.record_dir.as_ref().map(|dir| RecordTo {
        dir: dir.clone(),
        name: call_name.clone(),
    });
    let endpointer = VadEndpointer::new(8000, settings.vad_config())
        .map_err(|e| (500, format!("VAD: {e}")))?
        .with_barge_in_min_speech(settings.barge_in_min_speech());
    let mut rtp = RtpSession::start(rtp_cfg).map_err(|e| (503, format!("RTP: {e}")))?;
    if let Err(e) = sip.answer(call, rtp.local_addr()) {
        rtp.shutdown(Instant::now() + Duration::from_millis(500));
        return Err((500, format!("answer failed: {e}")));
    }
    let setup = CallSetup {
        call_id: call_name,
        dialogue: settings.dialogue_config(),
        stt: components.stt.clone(),
        stt_options: transcribe_options(&settings),
        stt_timeout: settings.stt_timeout(),
        llm: components.llm.clone(),
        chunker: Default::default(),
        tts: components.tts.clone(),
        voice: voice_options(&settings),
        transcript_dir: settings.transcripts.dir.clone(),
        preroll: Duration::from_millis(300),
        max_utterance: Duration::from_secs(25),
        turn_observer: None,
    };
    let (control, control_rx) = bounded(8);
    let (done_tx, done) = bounded(1);
    let sip2 = Arc::clone(sip);
    let shared2 = Arc::clone(shared);
    let thread = std::thread::Builder::new()
        .name(format!("call-{n}"))
        .spawn(move || {
            let outcome = run_call(setup, &rtp, endpointer, &control_rx);
            let bye_sent = outcome.send_bye
                && match sip2.hang_up(call) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(%call, error = %e, "BYE failed");
                        false
                    }
                };
            // Bounded by the bot's shutdown deadline, if one began (the RTP thread
            // still gets a moment to be joined rather than left behind).
            let now = Instant::now();
            let mut rtp_deadline = now + Duration::from_millis(500);
            if let Some(stop_by) = *lock(&shared2.stop_by) {
                rtp_deadline = rtp_deadline.min(stop_by.max(now + Duration::from_millis(30)));
            }
            rtp.shutdown(rtp_deadline);
            drop(components);
            drop(sip2);
            let _ = done_tx.send(CallEnd {
                bye_sent,
                goodbye_completed: outcome.summary.is_some_and(|s| s.goodbye_completed),
            });
            let _ = shared2.wake.try_send(());
        });
    match thread {
        Ok(thread) => {
            tracing::info!(%call, from, "call answered");
            lock(&shared.calls).insert(
                call,
                LiveCall {
                    control,
                    done,
                    thread,
                },
            );
            Ok(())
        }
        Err(e) => {
            let _ = sip.hang_up(call);
            Err((500, format!("thread: {e}")))
        }
    }
}

/// The user part of a From header value, for names (`"Bob" <sip:bob@host>` -> `bob`).
fn from_user(from: &str) -> String {
    let uri = from
        .split_once('<')
        .map_or(from, |(_, r)| r.split('>').next().unwrap_or(r));
    let user = uri
        .trim()
        .trim_start_matches("sips:")
        .trim_start_matches("sip:")
        .split(['@', ';', '>'])
        .next()
        .unwrap_or("");
    let s: String = user
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(32)
        .collect();
    if s.is_empty() { "caller".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// espeak-ng sentences at 8 kHz through the real VAD: each utterance starts once,
    /// pauses (hangover) before it ends, every resume follows a pause, and the
    /// shorter barge-in `min_speech` confirms speech sooner while the bot speaks.
    #[test]
    fn vad_endpointer_reports_start_pause_resume_end_on_espeak_speech() {
        let Some(pcm) = callbot_testkit::speech::espeak("What is the capital of France?", "en-us") else {
            return;
        };
        let speech = callbot_testkit::speech::telephone_8k(&pcm, None);
        let run = |bot_speaking: bool| {
            let mut ep = VadEndpointer::new(8000, VadConfig::default())
                .unwrap()
                .with_barge_in_min_speech(Duration::from_millis(48));
            ep.set_bot_speaking(bot_speaking);
            let mut audio = vec![0i16; 8000];
            audio.extend_from_slice(&speech);
            audio.extend(std::iter::repeat_n(0i16, 8000));
            let mut events = Vec::new();
            for (i, chunk) in audio.chunks(160).enumerate() {
                let e = ep.push(&AudioFrame::new(8000, chunk.to_vec()));
                if e != EndpointEvent::None {
                    events.push((i, e));
                }
            }
            events
        };
        let events = run(false);
        println!("{events:?}");
        let starts = events
            .iter()
            .filter(|(_, e)| matches!(e, EndpointEvent::SpeechStarted { .. }))
            .count();
        let ends: Vec<usize> = events
            .iter()
            .filter(|(_, e)| matches!(e, EndpointEvent::SpeechEnded { .. }))
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(starts, 1, "{events:?}");
        assert_eq!(ends.len(), 1, "{events:?}");
        let mut paused = false;
        for (_, e) in &events {
            match e {
                EndpointEvent::SpeechPaused { silence } => {
                    assert!(!paused, "two pauses without a resume: {events:?}");
                    assert!(*silence < Duration::from_millis(100), "{silence:?}");
                    paused = true;
                }
                EndpointEvent::SpeechResumed => {
                    assert!(paused, "resume without a pause: {events:?}");
                    paused = false;
                }
                EndpointEvent::SpeechEnded { .. } => assert!(paused, "end without a pause"),
                _ => {}
            }
        }
        let onset = |events: &[(usize, EndpointEvent)]| {
            events.iter().find_map(|(i, e)| match e {
                EndpointEvent::SpeechStarted { onset } => Some((*i, *onset)),
                _ => None,
            })
        };
        let (normal_frame, normal_onset) = onset(&events).unwrap();
        let (barge_frame, barge_onset) = onset(&run(true)).unwrap();
        println!(
            "start confirmed at frame {normal_frame} ({normal_onset:?} after onset); bot speaking: frame {barge_frame} ({barge_onset:?})"
        );
        assert!(barge_frame < normal_frame);
        assert!(barge_onset < normal_onset);
    }

    #[test]
    fn from_user_extracts_a_safe_name() {
        assert_eq!(from_user("\"Bob\" <sip:bob@127.0.0.1>;tag=1"), "bob");
        assert_eq!(from_user("sip:alice@host"), "alice");
        assert_eq!(from_user("<sip:../../x@h>"), "x");
        assert_eq!(from_user(""), "caller");
    }

    #[test]
    fn registration_server_resolves_with_default_port() {
        let (a, host) = resolve("127.0.0.1").unwrap();
        assert_eq!(a, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(host, "127.0.0.1");
        let (a, _) = resolve("127.0.0.1:5070").unwrap();
        assert_eq!(a.port(), 5070);
        let (a, host) = resolve("[::1]:5080").unwrap();
        assert_eq!(a.port(), 5080);
        assert_eq!(host, "::1");
        assert_eq!(
            resolve("no-such-host.invalid").unwrap_err().field,
            "sip.registration.server"
        );
    }

    #[test]
    fn a_refused_registration_names_the_field_at_fault() {
        let old = RegistrationSettings {
            server: "127.0.0.1:5070".into(),
            user: "bot".into(),
            password: "pw".into(),
            expires: 300,
        };
        let refused = |code| SipError::Registration {
            code,
            reason: format!("{code:?} X"),
        };
        let field = |old: Option<&RegistrationSettings>, new: &RegistrationSettings, code| {
            registration_error(old, new, refused(code)).field
        };
        let new_password = RegistrationSettings {
            password: "other".into(),
            ..old.clone()
        };
        let new_user = RegistrationSettings {
            user: "bot2".into(),
            ..old.clone()
        };
        assert_eq!(
            field(Some(&old), &new_password, Some(401)),
            "sip.registration.password"
        );
        assert_eq!(
            field(Some(&old), &new_password, Some(403)),
            "sip.registration.password"
        );
        assert_eq!(field(Some(&old), &new_user, Some(403)), "sip.registration.user");
        assert_eq!(field(None, &old, Some(407)), "sip.registration.password");
        assert_eq!(field(Some(&old), &new_user, Some(404)), "sip.registration.user");
        assert_eq!(field(Some(&old), &old, Some(423)), "sip.registration.expires");
        assert_eq!(field(Some(&old), &old, Some(503)), "sip.registration.server");
        assert_eq!(field(Some(&old), &old, None), "sip.registration.server");
        let e = registration_error(None, &old, SipError::NotRunning);
        assert_eq!(e.field, "sip.registration");
        assert!(
            registration_error(None, &old, refused(Some(401)))
                .reason
                .contains("127.0.0.1:5070")
        );
    }
}
