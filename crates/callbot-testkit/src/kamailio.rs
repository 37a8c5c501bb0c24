//! Kamailio 5.6 as a registrar demanding digest authentication for one user, storing
//! bindings in memory and routing INVITE/MESSAGE/OPTIONS for that user to the
//! registered Contact (as `../shared/peers/registrar.sh` does).
//!
//! The config is generated from an embedded template (learned from
//! `scenarios/registrar.cfg.in`): UDP only, `usrloc` in memory, `pv_auth_check(realm,
//! PASSWORD, 0, 1)`, `auth_challenge(realm, qop)`. Quirks handled: `#!KAMAILIO` must be
//! the first line; it runs in the foreground with `-DD -E` and its runtime dir in the
//! temp dir (`-Y`); nonce-count replay checking is off (Kamailio's default).
//! Each REGISTER and routed request logs one `PEER: ...` line, parsed into
//! [`RegistrarEvent`]s.
//!
//! ```no_run
//! use callbot_testkit::kamailio::{Kamailio, KamailioConfig, RegistrarEvent};
//! use std::time::Duration;
//! let reg = Kamailio::start(&KamailioConfig::new("botuser", "s3cret"))?;
//! // ... let the UA register at reg.addr() ...
//! let ok = reg.wait_event(Duration::from_secs(5), |e| matches!(e, RegistrarEvent::RegOk { .. }));
//! # Ok::<(), callbot_testkit::harness::HarnessError>(())
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{
    HarnessError, host_uri, io_err, loopback, read_lossy, require_tool, sip_uri, wait_udp_listening,
};
use crate::process::Child;

/// How the registrar is set up.
#[derive(Debug, Clone)]
pub struct KamailioConfig {
    /// The one user allowed to register (letters, digits, `._~+-`).
    pub user: String,
    /// Its password (letters, digits, `._~!*+=:@%^-`).
    pub password: String,
    /// The digest realm; `None` = the To-domain of each request.
    pub realm: Option<String>,
    /// Challenge with `qop="auth"` (true) or the RFC 2069 form without qop.
    pub qop: bool,
    /// Answer a wrong password with 403 (true) instead of a fresh 401 challenge.
    pub wrong_password_403: bool,
    /// `registrar` `min_expires`.
    pub min_expires: u32,
    /// `registrar` `max_expires` (the Expires it grants at most).
    pub max_expires: u32,
    /// Listen on `::1` instead of 127.0.0.1.
    pub ipv6: bool,
}

impl KamailioConfig {
    /// qop=auth, realm from the To-domain, wrong password -> 401, expires 10..3600, IPv4.
    pub fn new(user: &str, password: &str) -> KamailioConfig {
        KamailioConfig {
            user: user.to_string(),
            password: password.to_string(),
            realm: None,
            qop: true,
            wrong_password_403: false,
            min_expires: 10,
            max_expires: 3600,
            ipv6: false,
        }
    }
}

/// One `PEER:` line of the registrar's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrarEvent {
    /// A REGISTER without credentials was challenged (or stale nonce / user mismatch).
    Challenge {
        /// The log line.
        line: String,
    },
    /// Authenticated and saved: a binding was added or refreshed.
    RegOk {
        /// The AOR (To URI).
        aor: String,
        /// The Contact header value.
        contact: String,
        /// The Expires header the UA sent, if any.
        expires: Option<u32>,
    },
    /// Authenticated unregistration (Expires 0).
    Unregistered {
        /// The AOR.
        aor: String,
        /// The Contact header value.
        contact: String,
    },
    /// Wrong password.
    BadPassword {
        /// The log line.
        line: String,
    },
    /// A user other than the configured one.
    Forbidden {
        /// The log line.
        line: String,
    },
    /// A request routed to a registered contact.
    Routed {
        /// The method.
        method: String,
        /// The log line.
        line: String,
    },
    /// A request for the user while nothing is registered (404).
    NotRegistered {
        /// The log line.
        line: String,
    },
    /// Anything else (`BAD-REQUEST`, `REG-ERROR`, ...).
    Other {
        /// The log line.
        line: String,
    },
}

/// Parses the text after `PEER: `.
pub fn parse_event(line: &str) -> RegistrarEvent {
    let line = line.trim().to_string();
    let word = |key: &str| -> Option<String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_string)
    };
    if let Some(rest) = line.strip_prefix("REG-OK (unregister) ") {
        RegistrarEvent::Unregistered {
            aor: rest.split_whitespace().next().unwrap_or_default().to_string(),
            contact: contact_of(&line),
        }
    } else if let Some(rest) = line.strip_prefix("REG-OK ") {
        RegistrarEvent::RegOk {
            aor: rest.split_whitespace().next().unwrap_or_default().to_string(),
            contact: contact_of(&line),
            expires: word("expires=").and_then(|e| e.parse().ok()),
        }
    } else if line.starts_with("REG-CHALLENGE") {
        RegistrarEvent::Challenge { line }
    } else if line.starts_with("REG-BAD-PASSWORD") {
        RegistrarEvent::BadPassword { line }
    } else if line.starts_with("REG-FORBIDDEN") {
        RegistrarEvent::Forbidden { line }
    } else if line.starts_with("ROUTE-404") {
        RegistrarEvent::NotRegistered { line }
    } else if let Some(rest) = line.strip_prefix("ROUTE ") {
        RegistrarEvent::Routed {
            method: rest.split_whitespace().next().unwrap_or_default().to_string(),
            line,
        }
    } else {
        RegistrarEvent::Other { line }
    }
}

/// The Contact value between `contact=` and ` expires=` / ` from `.
fn contact_of(line: &str) -> String {
    let Some(start) = line.find("contact=") else {
        return String::new();
    };
    let rest = &line[start + "contact=".len()..];
    let end = [" expires=", " from "]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .unwrap_or(rest.len());
    rest[..end].to_string()
}

/// A running Kamailio registrar, stopped by PID on drop.
pub struct Kamailio {
    child: Child,
    addr: SocketAddr,
    dir: crate::TempDir,
    log: PathBuf,
}

impl Kamailio {
    /// Writes the config, checks it (`kamailio -c`), starts Kamailio on a free loopback
    /// UDP port and waits until it listens (at most 10 s).
    pub fn start(cfg: &KamailioConfig) -> Result<Kamailio, HarnessError> {
        let ok_user = |s: &str, extra: &str| {
            !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
        };
        if !ok_user(&cfg.user, "._~+-") || !ok_user(&cfg.password, "._~!*+=:@%^-") {
            return Err(HarnessError::InvalidArgument(String::from(
                "user or password has characters the config cannot hold",
            )));
        }
        if let Some(r) = &cfg.realm
            && !ok_user(r, ".-_")
        {
            return Err(HarnessError::InvalidArgument(format!("bad realm {r:?}")));
        }
        let kamailio = require_tool("kamailio")?;
        let mpath = module_path().ok_or(HarnessError::ToolMissing("kamailio modules"))?;
        let ip = loopback(cfg.ipv6);
        let port = crate::ports::free_udp_port_on(ip, false);
        let addr = SocketAddr::new(ip, port);
        let dir = crate::temp_dir("kamailio");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
        }
        let conf = dir.path().join("kamailio.cfg");
        std::fs::write(&conf, config_text(cfg, addr, &mpath)).map_err(io_err("write kamailio.cfg"))?;
        let check = Command::new(&kamailio)
            .arg("-c")
            .arg("-f")
            .arg(&conf)
            .output()
            .map_err(io_err("run kamailio -c"))?;
        if !check.status.success() {
            return Err(HarnessError::start_failed(
                "kamailio",
                &String::from_utf8_lossy(&check.stderr),
            ));
        }
        let log = dir.path().join("kamailio.log");
        let mut cmd = Command::new(&kamailio);
        cmd.arg("-f")
            .arg(&conf)
            .args(["-DD", "-E", "-Y"])
            .arg(dir.path())
            .arg("-P")
            .arg(dir.path().join("kamailio.pid"))
            .arg("-w")
            .arg(dir.path())
            .args(["-m", "32", "-M", "8"]);
        let mut child = Child::spawn("kamailio", cmd, &log).map_err(io_err("spawn kamailio"))?;
        if !wait_udp_listening(addr, Duration::from_secs(10)) {
            child.stop();
            return Err(HarnessError::start_failed("kamailio", &read_lossy(&log)));
        }
        Ok(Kamailio {
            child,
            addr,
            dir,
            log,
        })
    }

    /// The registrar's address (send REGISTER here; calls to `sip:USER@addr` are routed).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `sip:USER@HOST:PORT` for calls routed through the registrar.
    pub fn user_uri(&self, user: &str) -> String {
        sip_uri(user, self.addr)
    }

    /// The full log so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// The config file used.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("kamailio.cfg")
    }

    /// Every `PEER:` event so far, in order.
    pub fn events(&self) -> Vec<RegistrarEvent> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once("PEER: ").map(|(_, rest)| parse_event(rest)))
            .collect()
    }

    /// Waits (at most `timeout`) for an event matching `pred` and returns it.
    pub fn wait_event(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&RegistrarEvent) -> bool,
    ) -> Option<RegistrarEvent> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return Some(e);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Counts events matching `pred`.
    pub fn count(&self, pred: impl Fn(&RegistrarEvent) -> bool) -> usize {
        self.events().iter().filter(|e| pred(e)).count()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.wait_timeout(Duration::ZERO), Ok(None))
    }

    /// Stops Kamailio by PID.
    pub fn stop(mut self) {
        self.child.stop();
    }
}

fn module_path() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/kamailio/modules",
        "/usr/lib/aarch64-linux-gnu/kamailio/modules",
        "/usr/lib/kamailio/modules",
        "/usr/local/lib64/kamailio/modules",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|d| d.join("registrar.so").is_file())
}

/// The generated kamailio.cfg.
pub fn config_text(cfg: &KamailioConfig, addr: SocketAddr, mpath: &Path) -> String {
    let listen = format!("udp:{}:{}", host_uri(addr.ip()), addr.port());
    let realm = cfg.realm.clone().unwrap_or_else(|| String::from("$td"));
    let qop = if cfg.qop { 1 } else { 0 };
    let wrong = if cfg.wrong_password_403 { 403 } else { 401 };
    TEMPLATE
        .replace("@LISTEN@", &listen)
        .replace("@ADDR@", &host_uri(addr.ip()))
        .replace("@MPATH@", &mpath.display().to_string())
        .replace("@USER@", &cfg.user)
        .replace("@PASS@", &cfg.password)
        .replace("@REALM@", &realm)
        .replace("@QOP@", &qop.to_string())
        .replace("@WRONG_PW@", &wrong.to_string())
        .replace("@MAX_EXPIRES@", &cfg.max_expires.to_string())
        .replace("@MIN_EXPIRES@", &cfg.min_expires.to_string())
}

const TEMPLATE: &str = r#"#!KAMAILIO
# generated by callbot-testkit (kamailio.rs)
debug=2
log_stderror=yes
log_prefix="[{$mt $ci}] "
children=2
disable_tcp=yes
enable_tls=no
auto_aliases=no
dns=no
rev_dns=no
use_dns_cache=no
listen=@LISTEN@
alias="@ADDR@"
alias="localhost"
server_header="Server: kamailio callbot-testkit"
user_agent_header="User-Agent: kamailio callbot-testkit"
mpath="@MPATH@"

loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "sanity.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"

modparam("usrloc", "db_mode", 0)
modparam("registrar", "max_expires", @MAX_EXPIRES@)
modparam("registrar", "min_expires", @MIN_EXPIRES@)
modparam("auth", "nonce_expire", 300)

request_route {
    if (!mf_process_maxfwd_header("10")) {
        sl_send_reply("483", "Too Many Hops");
        exit;
    }
    if (!sanity_check("1511", "7")) {
        xlog("L_NOTICE", "PEER: BAD-REQUEST $rm from $si:$sp (sanity check failed)\n");
        exit;
    }
    if (is_method("REGISTER")) {
        route(REGISTER);
        exit;
    }
    if (is_method("CANCEL")) {
        if (t_check_trans()) t_relay();
        exit;
    }
    if (is_method("ACK")) {
        if (t_check_trans()) t_relay();
        exit;
    }
    if (has_totag()) {
        if (uri == myself) {
            sl_send_reply("404", "Not here");
        } else {
            t_relay();
        }
        exit;
    }
    if (uri == myself) {
        if (is_method("OPTIONS") && $rU == $null) {
            sl_send_reply("200", "OK");
            exit;
        }
        if ($rU != "@USER@") {
            xlog("L_NOTICE", "PEER: ROUTE-404 $rm for $ru from $si:$sp\n");
            sl_send_reply("404", "Not Found");
            exit;
        }
        if (!lookup("location")) {
            xlog("L_NOTICE", "PEER: ROUTE-404 $rm for $ru: not registered\n");
            sl_send_reply("404", "Not Registered");
            exit;
        }
        xlog("L_NOTICE", "PEER: ROUTE $rm from $fu -> $ru\n");
        if (!t_relay()) sl_reply_error();
        exit;
    }
    sl_send_reply("403", "Not relaying");
    exit;
}

route[REGISTER] {
    if (!is_present_hf("Authorization")) {
        xlog("L_NOTICE", "PEER: REG-CHALLENGE $tu from $si:$sp (no credentials)\n");
        auth_challenge("@REALM@", "@QOP@");
        exit;
    }
    pv_auth_check("@REALM@", "@PASS@", "0", "1");
    $var(rc) = $rc;
    if ($var(rc) < 0) {
        if ($var(rc) == -2 || $var(rc) == -3) {
            xlog("L_NOTICE", "PEER: REG-BAD-PASSWORD $tu user=$au from $si:$sp (rc=$var(rc))\n");
            $var(wrong_pw) = @WRONG_PW@;
            if ($var(wrong_pw) == 403) {
                sl_send_reply("403", "Wrong password");
                exit;
            }
        } else {
            xlog("L_NOTICE", "PEER: REG-CHALLENGE $tu user=$au from $si:$sp (rc=$var(rc): stale/unknown nonce or user mismatch)\n");
        }
        auth_challenge("@REALM@", "@QOP@");
        exit;
    }
    if ($au != "@USER@") {
        xlog("L_NOTICE", "PEER: REG-FORBIDDEN user=$au from $si:$sp\n");
        sl_send_reply("403", "Forbidden");
        exit;
    }
    consume_credentials();
    if (!save("location")) {
        xlog("L_NOTICE", "PEER: REG-ERROR $tu from $si:$sp\n");
        sl_reply_error();
        exit;
    }
    if ($hdr(Expires) == "0" || $ct =~ "expires=0([^0-9]|$)") {
        xlog("L_NOTICE", "PEER: REG-OK (unregister) $tu contact=$ct from $si:$sp\n");
    } else {
        xlog("L_NOTICE", "PEER: REG-OK $tu contact=$ct expires=$hdr(Expires) from $si:$sp\n");
    }
    exit;
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_parsing() {
        assert_eq!(
            parse_event(
                "REG-OK sip:botuser@127.0.0.1:5062 contact=<sip:botuser@127.0.0.1:5999> expires=60 from 127.0.0.1:5999"
            ),
            RegistrarEvent::RegOk {
                aor: String::from("sip:botuser@127.0.0.1:5062"),
                contact: String::from("<sip:botuser@127.0.0.1:5999>"),
                expires: Some(60),
            }
        );
        assert!(matches!(
            parse_event("REG-OK (unregister) sip:a@b contact=<sip:a@c>;expires=0 from x"),
            RegistrarEvent::Unregistered { contact, .. } if contact == "<sip:a@c>;expires=0"
        ));
        assert!(matches!(
            parse_event("REG-OK sip:a@b contact=<sip:a@c> expires=<null> from x"),
            RegistrarEvent::RegOk { expires: None, .. }
        ));
        assert!(matches!(
            parse_event("REG-BAD-PASSWORD sip:a@b user=a"),
            RegistrarEvent::BadPassword { .. }
        ));
        assert!(
            matches!(parse_event("ROUTE INVITE from sip:x -> sip:y"), RegistrarEvent::Routed { method, .. } if method == "INVITE")
        );
        assert!(matches!(
            parse_event("ROUTE-404 INVITE for sip:y"),
            RegistrarEvent::NotRegistered { .. }
        ));
    }

    #[test]
    fn config_is_filled() {
        let mut cfg = KamailioConfig::new("bob", "pw");
        cfg.qop = false;
        cfg.realm = Some(String::from("example.org"));
        let t = config_text(&cfg, "[::1]:5070".parse().unwrap(), Path::new("/m"));
        assert!(t.starts_with("#!KAMAILIO\n"));
        assert!(t.contains("listen=udp:[::1]:5070\n"));
        assert!(t.contains("auth_challenge(\"example.org\", \"0\")"));
        assert!(t.contains("pv_auth_check(\"example.org\", \"pw\", \"0\", \"1\")"));
        assert!(!t.contains('@') || !t.contains("@USER@"));
    }

    /// sipsak registers against the real Kamailio: right password -> REG-OK after a
    /// challenge, wrong password -> rejected.
    #[test]
    fn heavy_kamailio_registrar_with_sipsak() {
        if crate::tools::require("kamailio").is_none() || crate::tools::require("sipsak").is_none() {
            return;
        }
        let reg = Kamailio::start(&KamailioConfig::new("botuser", "s3cret")).unwrap();
        let contact_port = crate::ports::free_udp_port();
        let ok = crate::sipsak::register(reg.addr(), "botuser", "s3cret", contact_port, 60).unwrap();
        assert_eq!(
            ok.outcome,
            crate::sipsak::SipsakOutcome::Registered,
            "{ok:?}\n{}",
            reg.log()
        );
        let ev = reg
            .wait_event(Duration::from_secs(3), |e| {
                matches!(e, RegistrarEvent::RegOk { .. })
            })
            .expect("REG-OK");
        let RegistrarEvent::RegOk { contact, expires, .. } = ev else {
            unreachable!()
        };
        assert!(contact.contains(&contact_port.to_string()), "{contact}");
        assert_eq!(expires, Some(60));
        assert!(reg.count(|e| matches!(e, RegistrarEvent::Challenge { .. })) >= 1);
        let bad = crate::sipsak::register(reg.addr(), "botuser", "WRONG", contact_port, 60).unwrap();
        assert_eq!(bad.outcome, crate::sipsak::SipsakOutcome::AuthFailed, "{bad:?}");
        assert!(
            reg.wait_event(Duration::from_secs(3), |e| matches!(
                e,
                RegistrarEvent::BadPassword { .. }
            ))
            .is_some()
        );
    }

    /// The torture harness against the real Kamailio: it stays alive, drops most
    /// malformed requests (README: 34/56 answered).
    #[test]
    fn heavy_torture_against_kamailio() {
        if crate::tools::require("kamailio").is_none() {
            return;
        }
        let Some(set) = crate::torture::TortureSet::load().unwrap() else {
            return;
        };
        let reg = Kamailio::start(&KamailioConfig::new("bot", "pw")).unwrap();
        let opts = crate::torture::TortureOptions {
            timeout: Duration::from_millis(150),
            invite_timeout: Duration::from_millis(300),
            probe_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let report = set.run(reg.addr(), &opts).unwrap();
        assert!(report.baseline_alive);
        assert_eq!(report.alive_at_end, Some(true), "{}", report.table());
        assert_eq!(report.rows.len(), 56);
        // Kamailio answers a fair share but not all of them.
        let n = report.responded();
        eprintln!("{}", report.table());
        assert!((20..56).contains(&n), "{}", report.table());
        // The plain OPTIONS for an unregistered user is answered (404 Not Registered).
        assert_eq!(report.rows[0].statuses, [404], "{}", report.table());
    }
}
