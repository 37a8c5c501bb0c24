//! sipsak 0.9.8 for one-shot REGISTERs with digest auth.
//!
//! Quirks (from `../shared/peers/README.md`): no IPv6 literal URIs; in `-U` mode it sends
//! `username="user@"` and truncates 5-digit ports in To/From, so it is fit to probe a
//! registrar, not to judge URI handling. Exit code 0 on 200, 2 on "authorization
//! failed", 1 on other final responses.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::harness::{HarnessError, io_err, require_tool};
use crate::process::Child;

/// What a sipsak REGISTER achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SipsakOutcome {
    /// 200 OK (exit 0).
    Registered,
    /// Authorization failed (exit 2).
    AuthFailed,
    /// Another final response or error (exit 1 or other).
    Rejected,
    /// sipsak did not finish within the time limit.
    TimedOut,
}

/// The result of one sipsak run.
#[derive(Debug, Clone)]
pub struct SipsakResult {
    /// Classified outcome.
    pub outcome: SipsakOutcome,
    /// sipsak's exit code.
    pub exit_code: Option<i32>,
    /// Its output (`-vv`: the messages exchanged).
    pub output: String,
}

/// Registers `sip:USER@registrar` with password `password`, Contact
/// `sip:USER@127.0.0.1:CONTACT_PORT`, `Expires: expires` (IPv4 loopback only).
pub fn register(
    registrar: SocketAddr,
    user: &str,
    password: &str,
    contact_port: u16,
    expires: u32,
) -> Result<SipsakResult, HarnessError> {
    let SocketAddr::V4(v4) = registrar else {
        return Err(HarnessError::InvalidArgument(String::from(
            "sipsak cannot use IPv6 literal URIs",
        )));
    };
    crate::harness::ensure_loopback(registrar.ip())?;
    let sipsak = require_tool("sipsak")?;
    let dir = crate::temp_dir("sipsak");
    let log = dir.path().join("sipsak.log");
    let mut cmd = Command::new(sipsak);
    cmd.current_dir(dir.path())
        .arg("-U")
        .arg("-C")
        .arg(format!("sip:{user}@127.0.0.1:{contact_port}"))
        .arg("-s")
        .arg(format!("sip:{user}@{}:{}", v4.ip(), v4.port()))
        .arg("-a")
        .arg(password)
        .arg("-x")
        .arg(expires.to_string())
        .arg("-vv");
    let mut child = Child::spawn("sipsak", cmd, &log).map_err(io_err("spawn sipsak"))?;
    let status = child
        .wait_timeout(Duration::from_secs(15))
        .map_err(io_err("wait for sipsak"))?;
    let output = crate::harness::read_lossy(&log);
    let exit_code = status.and_then(|s| s.code());
    let outcome = match (status, exit_code) {
        (None, _) => SipsakOutcome::TimedOut,
        (_, Some(0)) => SipsakOutcome::Registered,
        (_, Some(2)) => SipsakOutcome::AuthFailed,
        _ => SipsakOutcome::Rejected,
    };
    Ok(SipsakResult {
        outcome,
        exit_code,
        output,
    })
}
