//! Shared pieces of the peer harnesses (`sipp`, `baresip`, `kamailio`, `torture`,
//! `sipsak`): the error type, loopback
//! checks, waiting on log files, and audio conversion with sox.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Why a peer harness could not do its job (not: what the peer answered).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A program the harness needs is not installed (see [`crate::tools::require`]).
    #[error("{0} is not installed")]
    ToolMissing(&'static str),
    /// Only loopback addresses may be targeted.
    #[error("{0} is not a loopback address")]
    NotLoopback(IpAddr),
    /// An I/O error (spawning, temp files, sockets).
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The peer did not start (bad config, port busy); the log tail says why.
    #[error("{peer} failed to start: {log_tail}")]
    StartFailed {
        /// Which peer.
        peer: &'static str,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The peer's output could not be understood.
    #[error("unexpected output from {peer}: {detail}")]
    Output {
        /// Which peer.
        peer: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A bad argument to the harness.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl HarnessError {
    /// [`HarnessError::StartFailed`] for `peer`, with the last 15 lines of its `log`.
    pub fn start_failed(peer: &'static str, log: &str) -> HarnessError {
        HarnessError::StartFailed {
            peer,
            log_tail: tail(log, 15),
        }
    }
}

/// Wraps an I/O error with what was being done.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let context = context.into();
    move |source| HarnessError::Io { context, source }
}

/// Finds a tool or reports it missing ([`crate::tools::require`]: panics under
/// `CALLBOT_REQUIRE_PEERS=1`, else prints SKIP).
pub fn require_tool(name: &'static str) -> Result<PathBuf, HarnessError> {
    crate::tools::require(name).ok_or(HarnessError::ToolMissing(name))
}

/// Refuses anything but 127.0.0.0/8 and ::1.
pub fn ensure_loopback(ip: IpAddr) -> Result<(), HarnessError> {
    if ip.is_loopback() {
        Ok(())
    } else {
        Err(HarnessError::NotLoopback(ip))
    }
}

/// The loopback address of the family: `::1` or `127.0.0.1`.
pub fn loopback(ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }
}

/// A host for a SIP URI: `[::1]` or `127.0.0.1`.
pub fn host_uri(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// `sip:USER@HOST:PORT` for `addr` (see [`host_uri`]).
pub fn sip_uri(user: &str, addr: SocketAddr) -> String {
    format!("sip:{user}@{}:{}", host_uri(addr.ip()), addr.port())
}

/// True when something is bound to UDP `addr` (our bind fails).
pub fn udp_port_busy(addr: SocketAddr) -> bool {
    UdpSocket::bind(addr).is_err()
}

/// Waits until something listens on UDP `addr`, at most `timeout`.
pub fn wait_udp_listening(addr: SocketAddr, timeout: Duration) -> bool {
    wait_until(timeout, Duration::from_millis(50), || udp_port_busy(addr))
}

/// Polls `cond` every `every` until it is true (returns true) or `timeout` passes.
pub fn wait_until(timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// For tests: waits up to `timeout` for `cond` (polled every 10 ms), and panics saying
/// it timed out waiting for `what` if it never holds.
pub fn wait_for(timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(
        wait_until(timeout, Duration::from_millis(10), cond),
        "timed out waiting for {what}"
    );
}

/// A port on `ip` free for UDP and TCP, with `port + 1` also free for TCP (baresip binds
/// TLS there).
pub fn free_sip_port_pair(ip: IpAddr) -> u16 {
    for _ in 0..200 {
        let p = crate::ports::free_udp_port_on(ip, true);
        if p < 65535 && TcpListener::bind(SocketAddr::new(ip, p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free SIP port pair on {ip}");
}

/// The file's text (lossy UTF-8, CRs removed), or empty when unreadable.
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
        .unwrap_or_default()
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs sox with `args`, mapping failure to an error.
pub fn sox(args: &[&std::ffi::OsStr]) -> Result<(), HarnessError> {
    let sox = require_tool("sox")?;
    let out = Command::new(sox)
        .arg("-V1")
        .args(args)
        .output()
        .map_err(io_err("run sox"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Output {
            peer: "sox",
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Converts `input` with sox into `output`, a WAV of 8 kHz mono 16-bit PCM (what baresip
/// plays and records), with `pad_secs` of silence appended when given.
pub fn sox_to_8k_pcm16(input: &Path, output: &Path, pad_secs: Option<f64>) -> Result<(), HarnessError> {
    let pad = pad_secs.map(|p| format!("{p:.3}"));
    let mut args: Vec<&std::ffi::OsStr> = vec![input.as_os_str()];
    args.extend(["-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer"].map(std::ffi::OsStr::new));
    args.push(output.as_os_str());
    if let Some(pad) = &pad {
        args.extend(["pad", "0", pad.as_str()].map(std::ffi::OsStr::new));
    }
    sox(&args)
}

/// Duration of an audio file in seconds (`soxi -D`).
pub fn audio_seconds(path: &Path) -> Result<f64, HarnessError> {
    let soxi = require_tool("soxi")?;
    let out = Command::new(soxi)
        .arg("-D")
        .arg(path)
        .output()
        .map_err(io_err("run soxi"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| HarnessError::Output {
            peer: "soxi",
            detail: format!("no duration for {}", path.display()),
        })
}

/// An example binary of the `callbot-examples` package, as cargo builds it beside the
/// running test (`target/<profile>/examples/NAME`). `None` (reported missing, which
/// panics under `CALLBOT_REQUIRE_PEERS=1`) when it is not built: cargo builds a
/// package's examples when that package's tests are built.
pub fn example_bin(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/TEST -> target/<profile>/examples/NAME
    let path = exe.parent()?.parent()?.join("examples").join(name);
    if path.is_file() {
        Some(path)
    } else {
        crate::tools::missing(&format!("the {name} example ({})", path.display()));
        None
    }
}
