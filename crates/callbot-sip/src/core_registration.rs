//! Registration bindings of the core (a child module of `core`, extending
//! [`UserAgentCore`]).
//!
//! The core keeps up to three kinds of registration, each with its own Call-ID, user,
//! credentials and state machine (401/407 digest retry, 423 Min-Expires, refresh before
//! the granted expiry):
//! - the **active** one, from [`CoreConfig::registration`](super::CoreConfig) or the
//!   last committed one: refreshed, retried with backoff on failure, reported through
//!   [`SipEvent::Registration`], removed (`Expires: 0`) on shutdown;
//! - at most one **staged** one ([`UserAgentCore::stage_registration`]): a new binding
//!   registered beside the active one. It is not retried: its first final answer
//!   decides ([`UserAgentCore::staged_registration`]). Then
//!   [`commit_registration`](UserAgentCore::commit_registration) makes it active, or
//!   [`abort_registration`](UserAgentCore::abort_registration) drops it;
//! - **retiring** ones: replaced or removed bindings being unregistered (`Expires: 0`),
//!   forgotten once answered or timed out.
//!
//! Two registrations are the **same binding** when they have the same registrar, user
//! and domain (so the same address of record and Contact): a staged one then simply
//! refreshes the active binding, and the replaced one is dropped without `Expires: 0`
//! (which would remove the new binding too).

use std::time::{Duration, Instant};

use super::{
    CommandError, RegistrationConfig, RegistrationState, SipEvent, TxOwner, UserAgentCore, new_branch,
    random_token,
};
use crate::digest::{DigestChallenge, DigestCredentials};
use crate::message::{self, SipMsg, StartLine};

/// Progress of a registration staged with [`UserAgentCore::stage_registration`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StagedRegistration {
    /// A REGISTER is in flight (possibly the digest retry); no final answer yet.
    Pending,
    /// The registrar accepted the new binding.
    Registered {
        /// Expiry the registrar granted, in seconds.
        expires: u32,
        /// From the first REGISTER to the accepting 2xx.
        took: Duration,
    },
    /// The registrar refused the binding (`code`), or did not answer (`code` is `None`).
    Failed {
        /// The final status code, `None` when the REGISTER timed out.
        code: Option<u16>,
        /// Status line or timeout, e.g. `"403 Forbidden"`, `"401 authentication rejected"`.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RegPhase {
    Idle,
    Registering,
    Registered,
    Failed,
    Unregistering,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Active,
    Staged,
    Retiring,
}

#[derive(Debug)]
pub(super) struct Registration {
    cfg: RegistrationConfig,
    /// User part of the address of record and of the Contact.
    user: String,
    credentials: Option<DigestCredentials>,
    pub(super) call_id: String,
    from_tag: String,
    cseq: u32,
    phase: RegPhase,
    next_at: Option<Instant>,
    backoff: Duration,
    challenge: Option<(DigestChallenge, bool)>,
    nc: u32,
    auth_attempts: u32,
    branch: Option<String>,
    granted: u32,
    pub(super) unregistered: Option<bool>,
    /// When the current registration attempt began.
    started: Option<Instant>,
    /// How long the last successful attempt took.
    took: Duration,
    /// Why a staged registration failed: status code (`None`: no answer) and reason.
    failure: Option<(Option<u16>, String)>,
}

impl Registration {
    /// A registration of `user` at `cfg`, due at `now`.
    pub(super) fn new(
        cfg: RegistrationConfig,
        user: String,
        credentials: Option<DigestCredentials>,
        now: Instant,
    ) -> Registration {
        Registration {
            backoff: cfg.retry_min,
            cfg,
            user,
            credentials,
            call_id: format!("{}@callbot", random_token(20)),
            from_tag: random_token(10),
            cseq: 0,
            phase: RegPhase::Idle,
            next_at: Some(now),
            challenge: None,
            nc: 0,
            auth_attempts: 0,
            branch: None,
            granted: 0,
            unregistered: None,
            started: None,
            took: Duration::ZERO,
            failure: None,
        }
    }

    fn same_binding(&self, other: &Registration) -> bool {
        self.cfg.registrar == other.cfg.registrar
            && self.user == other.user
            && self.cfg.domain.eq_ignore_ascii_case(&other.cfg.domain)
    }
}

impl UserAgentCore {
    // ------------------------------------------------------------ public API

    /// Registers a new binding (`user` at `registration`, answering challenges with
    /// `credentials`) **beside** the active one, which keeps serving (see the module
    /// docs). Its progress is [`staged_registration`](Self::staged_registration); once
    /// it is `Registered`, [`commit_registration`](Self::commit_registration) swaps it
    /// in, and [`abort_registration`](Self::abort_registration) drops it at any time. A
    /// registration staged before is aborted first.
    pub fn stage_registration(
        &mut self,
        now: Instant,
        registration: RegistrationConfig,
        user: &str,
        credentials: Option<DigestCredentials>,
    ) -> Result<(), CommandError> {
        if self.shutting_down {
            return Err(CommandError::ShuttingDown);
        }
        self.abort_registration(now);
        let reg = Registration::new(registration, user.to_string(), credentials, now);
        let id = reg.call_id.clone();
        tracing::info!(registrar = %reg.cfg.registrar, user = %reg.user, "registering a new binding beside the current one");
        self.reg_staged = Some(reg);
        self.register_now(now, &id);
        Ok(())
    }

    /// The staged registration's progress; `None` when none is staged.
    pub fn staged_registration(&self) -> Option<StagedRegistration> {
        self.reg_staged.as_ref().map(|r| match r.phase {
            RegPhase::Registered => StagedRegistration::Registered {
                expires: r.granted,
                took: r.took,
            },
            RegPhase::Failed => {
                let (code, reason) = r.failure.clone().unwrap_or((None, "failed".into()));
                StagedRegistration::Failed { code, reason }
            }
            _ => StagedRegistration::Pending,
        })
    }

    /// Makes the staged registration (which must be `Registered`) the active one: its
    /// user and credentials become the user agent's, it is announced with
    /// [`SipEvent::Registration`], and the binding it replaces is removed
    /// (`Expires: 0`) unless it is the same binding.
    pub fn commit_registration(&mut self, now: Instant) -> Result<(), CommandError> {
        if self.shutting_down {
            return Err(CommandError::ShuttingDown);
        }
        if self
            .reg_staged
            .as_ref()
            .is_none_or(|r| r.phase != RegPhase::Registered)
        {
            return Err(CommandError::NoStagedRegistration);
        }
        let Some(new) = self.reg_staged.take() else {
            return Err(CommandError::NoStagedRegistration);
        };
        self.cfg.user = new.user.clone();
        self.cfg.credentials = new.credentials.clone();
        self.cfg.registration = Some(new.cfg.clone());
        let granted = new.granted;
        tracing::info!(registrar = %new.cfg.registrar, user = %new.user, expires = granted, "new registration swapped in");
        let old = self.registration.replace(new);
        self.events
            .push_back(SipEvent::Registration(RegistrationState::Registered {
                expires: granted,
            }));
        if let Some(old) = old {
            let same = self.registration.as_ref().is_some_and(|n| n.same_binding(&old));
            let bound = matches!(old.phase, RegPhase::Registered | RegPhase::Registering);
            self.retire(now, old, bound && !same);
        }
        Ok(())
    }

    /// Drops the staged registration; its binding is removed (`Expires: 0`) if the
    /// registrar had accepted it and it is not the active binding. Returns whether one
    /// was staged.
    pub fn abort_registration(&mut self, now: Instant) -> bool {
        let Some(staged) = self.reg_staged.take() else {
            return false;
        };
        let same = self
            .registration
            .as_ref()
            .is_some_and(|a| a.same_binding(&staged));
        let bound = staged.phase == RegPhase::Registered;
        tracing::info!(registrar = %staged.cfg.registrar, user = %staged.user, unregister = bound && !same, "staged registration dropped");
        self.retire(now, staged, bound && !same);
        true
    }

    /// Removes the active registration (`Expires: 0`) and aborts a staged one; the user
    /// agent then runs without registration. Returns whether there was one.
    pub fn remove_registration(&mut self, now: Instant) -> bool {
        self.abort_registration(now);
        let Some(old) = self.registration.take() else {
            return false;
        };
        self.cfg.registration = None;
        let bound = matches!(old.phase, RegPhase::Registered | RegPhase::Registering);
        tracing::info!(registrar = %old.cfg.registrar, user = %old.user, "registration removed");
        self.retire(now, old, bound);
        true
    }

    // ------------------------------------------------------ hooks for core.rs

    /// The earliest registration timer.
    pub(super) fn registration_timeout(&self) -> Option<Instant> {
        self.registrations().filter_map(|(r, _)| r.next_at).min()
    }

    /// True when no registration has anything left to do (shutdown).
    pub(super) fn registrations_done(&self) -> bool {
        self.registration
            .as_ref()
            .is_none_or(|r| r.phase == RegPhase::Done)
            && self.reg_staged.is_none()
            && self.reg_retiring.is_empty()
    }

    /// Registrations due at `now` register (refresh or retry); none after shutdown began.
    pub(super) fn registration_timers(&mut self, now: Instant) {
        let due: Vec<String> = self
            .registrations()
            .filter(|(r, _)| r.next_at.is_some_and(|t| t <= now) && r.branch.is_none())
            .map(|(r, _)| r.call_id.clone())
            .collect();
        for id in due {
            if !self.shutting_down {
                self.register_now(now, &id);
            } else if let Some((r, _)) = self.reg_mut(&id) {
                r.next_at = None;
            }
        }
    }

    /// The REGISTER transaction `branch` timed out (timer F).
    pub(super) fn register_timed_out(&mut self, now: Instant, branch: &str) {
        let timed_out = self
            .registrations()
            .find(|(r, _)| r.branch.as_deref() == Some(branch))
            .map(|(r, _)| r.call_id.clone());
        if let Some(id) = timed_out {
            self.register_failed(now, &id, None, "408 no response from registrar".into());
        }
    }

    /// Shutdown: the staged registration is aborted, the active one removed
    /// (`Expires: 0`) if it is (being) registered.
    pub(super) fn unregister_all(&mut self, now: Instant) {
        self.abort_registration(now);
        let Some(reg) = self.registration.as_mut() else {
            return;
        };
        if let Some(b) = reg.branch.take() {
            self.client_tx.remove(b.as_str());
        }
        let Some(reg) = self.registration.as_mut() else {
            return;
        };
        reg.next_at = None;
        match reg.phase {
            RegPhase::Registered | RegPhase::Registering => {
                reg.phase = RegPhase::Unregistering;
                reg.unregistered = Some(false);
                reg.auth_attempts = 0;
                let id = reg.call_id.clone();
                self.send_register(now, &id, 0);
            }
            _ => reg.phase = RegPhase::Done,
        }
    }

    /// After the shutdown deadline: every registration is forgotten.
    pub(super) fn abandon_registrations(&mut self) {
        if let Some(r) = self.registration.as_mut() {
            r.phase = RegPhase::Done;
            r.next_at = None;
            r.branch = None;
        }
        self.reg_staged = None;
        self.reg_retiring.clear();
    }

    // ---------------------------------------------------------- internals

    fn registrations(&self) -> impl Iterator<Item = (&Registration, Role)> {
        self.registration
            .iter()
            .map(|r| (r, Role::Active))
            .chain(self.reg_staged.iter().map(|r| (r, Role::Staged)))
            .chain(self.reg_retiring.iter().map(|r| (r, Role::Retiring)))
    }

    fn reg_mut(&mut self, call_id: &str) -> Option<(&mut Registration, Role)> {
        if self.registration.as_ref().is_some_and(|r| r.call_id == call_id) {
            return self.registration.as_mut().map(|r| (r, Role::Active));
        }
        if self.reg_staged.as_ref().is_some_and(|r| r.call_id == call_id) {
            return self.reg_staged.as_mut().map(|r| (r, Role::Staged));
        }
        self.reg_retiring
            .iter_mut()
            .find(|r| r.call_id == call_id)
            .map(|r| (r, Role::Retiring))
    }

    /// Only the active registration is reported to the application.
    fn reg_event(&mut self, role: Role, state: RegistrationState) {
        if role == Role::Active {
            self.events.push_back(SipEvent::Registration(state));
        }
    }

    /// Takes `reg` out of service; with `unregister`, removes its binding first.
    fn retire(&mut self, now: Instant, mut reg: Registration, unregister: bool) {
        if let Some(b) = reg.branch.take() {
            self.client_tx.remove(b.as_str());
        }
        reg.next_at = None;
        if !unregister {
            return;
        }
        reg.phase = RegPhase::Unregistering;
        reg.unregistered = Some(false);
        reg.auth_attempts = 0;
        let id = reg.call_id.clone();
        self.reg_retiring.push(reg);
        self.send_register(now, &id, 0);
    }

    fn send_register(&mut self, now: Instant, call_id: &str, expires: u32) {
        let local = self.local_host_port();
        let ua = self.cfg.user_agent.clone();
        let Some((reg, _)) = self.reg_mut(call_id) else {
            return;
        };
        reg.cseq = reg.cseq.wrapping_add(1);
        let branch = new_branch();
        let aor = format!("<sip:{}@{}>", reg.user, reg.cfg.domain);
        let uri = format!("sip:{}", reg.cfg.domain);
        let mut headers = vec![
            ("Via", format!("SIP/2.0/UDP {local};branch={branch};rport")),
            ("Max-Forwards", "70".to_string()),
            ("From", format!("{aor};tag={}", reg.from_tag)),
            ("To", aor),
            ("Call-ID", reg.call_id.clone()),
            ("CSeq", format!("{} REGISTER", reg.cseq)),
            ("Contact", format!("<sip:{}@{local}>", reg.user)),
            ("Expires", expires.to_string()),
            ("User-Agent", ua),
        ];
        if let (Some((ch, proxy)), Some(creds)) = (&reg.challenge, &reg.credentials) {
            reg.nc = reg.nc.saturating_add(1);
            let cnonce = random_token(16);
            if let Ok(v) = ch.respond(creds, "REGISTER", &uri, reg.nc, &cnonce) {
                headers.push((
                    if *proxy {
                        "Proxy-Authorization"
                    } else {
                        "Authorization"
                    },
                    v,
                ));
            }
        }
        let bytes = message::build_request("REGISTER", &uri, &headers, b"");
        reg.branch = Some(branch.clone());
        reg.next_at = None;
        let dest = reg.cfg.registrar;
        self.start_client_tx(now, branch, false, bytes, dest, TxOwner::Register);
    }

    /// A final (or provisional) answer to one of our REGISTERs, matched by Call-ID.
    pub(super) fn on_register_response(&mut self, now: Instant, code: u16, msg: &SipMsg) {
        let local = self.local_host_port();
        let call_id = msg.call_id().to_string();
        let Some((reg, role)) = self.reg_mut(&call_id) else {
            return;
        };
        if code < 200 {
            return;
        }
        let local_contact = format!("sip:{}@{local}", reg.user);
        let has_creds = reg.credentials.is_some();
        reg.branch = None;
        let unregistering = reg.phase == RegPhase::Unregistering;
        if code == 401 || code == 407 {
            let header = if code == 401 {
                "WWW-Authenticate"
            } else {
                "Proxy-Authenticate"
            };
            let ch = msg.header(header).and_then(|v| DigestChallenge::parse(v).ok());
            // Retry once per fresh challenge (again only if the nonce was stale).
            let retry = match &ch {
                Some(c) => has_creds && (reg.auth_attempts == 0 || c.stale) && reg.auth_attempts < 3,
                None => false,
            };
            if let (true, Some(c)) = (retry, ch) {
                reg.challenge = Some((c, code == 407));
                reg.nc = 0;
                reg.auth_attempts += 1;
                let expires = if unregistering { 0 } else { reg.cfg.expires };
                self.send_register(now, &call_id, expires);
                return;
            }
            let reason = if has_creds {
                format!("{code} authentication rejected")
            } else {
                format!("{code} credentials required")
            };
            self.register_failed(now, &call_id, Some(code), reason);
            return;
        }
        reg.auth_attempts = 0;
        if unregistering {
            reg.phase = RegPhase::Done;
            reg.granted = if (200..300).contains(&code) {
                0
            } else {
                reg.granted
            };
            reg.next_at = None;
            if (200..300).contains(&code) {
                reg.unregistered = Some(true);
                if role == Role::Retiring {
                    tracing::info!(registrar = %reg.cfg.registrar, user = %reg.user, "old registration removed");
                }
                self.reg_event(role, RegistrationState::Unregistered);
            }
            self.reg_retiring.retain(|r| r.phase != RegPhase::Done);
            return;
        }
        if (200..300).contains(&code) {
            // The granted expiry: our Contact's expires param, else Expires header.
            let mut granted = None;
            for c in msg.header_all("Contact").flat_map(message::comma_parts) {
                let uri = message::name_addr_uri(c).unwrap_or_default();
                if uri.eq_ignore_ascii_case(&local_contact) || uri.starts_with(&local_contact) {
                    granted = message::header_param(c, "expires").and_then(|e| e.parse::<u32>().ok());
                }
            }
            let granted = granted
                .or_else(|| msg.header("Expires").and_then(|e| e.trim().parse::<u32>().ok()))
                .unwrap_or(reg.cfg.expires);
            if granted == 0 {
                self.register_failed(now, &call_id, Some(code), "registrar granted expires=0".into());
                return;
            }
            reg.granted = granted;
            reg.phase = RegPhase::Registered;
            reg.backoff = reg.cfg.retry_min;
            reg.took = reg
                .started
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
            // Refresh before expiry: at half for short grants, else 30 s before.
            let g = Duration::from_secs(u64::from(granted));
            let lead = if granted <= 60 {
                g / 2
            } else {
                Duration::from_secs(30).max(g / 10)
            };
            reg.next_at = Some(now + g.saturating_sub(lead));
            if role == Role::Staged {
                tracing::info!(registrar = %reg.cfg.registrar, user = %reg.user, expires = granted, took_ms = reg.took.as_millis() as u64, "new binding registered (staged)");
            }
            self.reg_event(role, RegistrationState::Registered { expires: granted });
            return;
        }
        if code == 423
            && let Some(min) = msg
                .header("Min-Expires")
                .and_then(|m| m.trim().parse::<u32>().ok())
        {
            reg.cfg.expires = min;
            self.send_register(now, &call_id, min);
            return;
        }
        let reason = match &msg.start {
            StartLine::Response { reason, .. } => format!("{code} {reason}"),
            StartLine::Request { .. } => code.to_string(),
        };
        self.register_failed(now, &call_id, Some(code), reason);
    }

    fn register_failed(&mut self, now: Instant, call_id: &str, code: Option<u16>, reason: String) {
        let Some((reg, role)) = self.reg_mut(call_id) else {
            return;
        };
        reg.branch = None;
        reg.challenge = None;
        reg.auth_attempts = 0;
        if reg.phase == RegPhase::Unregistering {
            reg.phase = RegPhase::Done;
            reg.next_at = None;
            self.reg_retiring.retain(|r| r.phase != RegPhase::Done);
            return;
        }
        reg.phase = RegPhase::Failed;
        reg.granted = 0;
        if role == Role::Staged {
            // A staged registration is not retried: its first answer decides.
            tracing::warn!(%reason, registrar = %reg.cfg.registrar, user = %reg.user, "new registration refused");
            reg.next_at = None;
            reg.failure = Some((code, reason));
            return;
        }
        let retry_in = reg.backoff;
        reg.backoff = (reg.backoff * 2).min(reg.cfg.retry_max);
        reg.next_at = Some(now + retry_in);
        tracing::warn!(%reason, ?retry_in, "registration failed");
        self.reg_event(role, RegistrationState::Failed { reason, retry_in });
    }

    /// Starts a registration attempt now (at start, on refresh, on retry, when staged).
    fn register_now(&mut self, now: Instant, call_id: &str) {
        let Some((reg, role)) = self.reg_mut(call_id) else {
            return;
        };
        reg.phase = RegPhase::Registering;
        reg.started = Some(now);
        let expires = reg.cfg.expires;
        self.reg_event(role, RegistrationState::Registering);
        self.send_register(now, call_id, expires);
    }
}
