//! Registers at a SIP registrar with digest auth, holds the registration (refreshing it
//! before the expiry the registrar granted), then unregisters and prints the shutdown
//! report.
//!
//! ```text
//! cargo run --release -p callbot-examples --example register -- \
//!     --server HOST:PORT --user USER --password PASS [--expires SECS] [--hold SECS]
//! ```
//!
//! Prints `registered expires=N` (again on every refresh) or
//! `registration failed: REASON` (exit 1); calls routed to the registered contact are
//! answered and printed while holding; at the end `shutdown REPORT`, exit 0.
//! SIGINT/SIGTERM end the hold early.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use callbot_examples::{Args, init_logging};
use callbot_sip::digest::DigestCredentials;
use callbot_sip::{RegistrationConfig, RegistrationState, SipConfig, SipEvent, SipUserAgent};

/// How long to wait for the first registration outcome.
const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(40);

fn main() {
    init_logging();
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("register: {e}");
            std::process::exit(2);
        }
    }
}

fn run() -> Result<i32, String> {
    let args = Args::parse(&[])?;
    args.reject_unknown(&["server", "user", "password", "expires", "hold"])?;
    let server: SocketAddr = args.required_parsed("server")?;
    let user = args.required("user")?.to_string();
    let password = args.required("password")?.to_string();
    let expires: u32 = args.parsed_or("expires", 3600)?;
    let hold = Duration::from_secs_f64(args.parsed_or("hold", 0.0f64)?.max(0.0));

    let stop = callbot_examples::signal_flag(&[signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    let bind_ip = match server.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(ip) if ip.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let domain = match server.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    let mut reg = RegistrationConfig::new(server, domain);
    reg.expires = expires;
    let mut config = SipConfig::new(SocketAddr::new(bind_ip, 0));
    config.user = user.clone();
    config.credentials = Some(DigestCredentials::new(user, password));
    config.registration = Some(reg);
    let mut sip = SipUserAgent::start(config).map_err(|e| e.to_string())?;
    // Calls routed to us are answered with this (discarding) RTP address.
    let rtp_sink =
        std::net::UdpSocket::bind(SocketAddr::new(sip.local_addr().ip(), 0)).map_err(|e| e.to_string())?;
    let rtp = rtp_sink.local_addr().map_err(|e| e.to_string())?;

    // Wait for the first outcome.
    let first_deadline = Instant::now() + FIRST_ANSWER_TIMEOUT;
    let mut failed: Option<String> = None;
    let mut registered = false;
    while !registered && failed.is_none() && !stop.load(Ordering::Relaxed) {
        let left = first_deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            failed = Some("no answer from the registrar".into());
            break;
        }
        match sip.events().recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(SipEvent::Registration(RegistrationState::Registered { expires })) => {
                println!("registered expires={expires}");
                registered = true;
            }
            Ok(SipEvent::Registration(RegistrationState::Failed { reason, .. })) => failed = Some(reason),
            Ok(other) => print_event(&sip, other, rtp),
            Err(e) if e.is_disconnected() => failed = Some("user agent stopped".into()),
            Err(_) => {}
        }
    }
    if let Some(reason) = failed {
        println!("registration failed: {reason}");
        let report = sip.shutdown(Instant::now() + Duration::from_secs(2));
        println!("shutdown {report}");
        return Ok(1);
    }
    let hold_until = Instant::now() + hold;
    while Instant::now() < hold_until && !stop.load(Ordering::Relaxed) {
        let left = hold_until.saturating_duration_since(Instant::now());
        match sip.events().recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(ev) => print_event(&sip, ev, rtp),
            Err(e) if e.is_disconnected() => break,
            Err(_) => {}
        }
    }
    let report = sip.shutdown(Instant::now() + Duration::from_secs(5));
    println!("shutdown {report}");
    Ok(0)
}

fn print_event(sip: &callbot_sip::SipHandle, ev: SipEvent, rtp: SocketAddr) {
    match ev {
        SipEvent::Registration(RegistrationState::Registered { expires }) => {
            println!("registered expires={expires}");
        }
        SipEvent::Registration(RegistrationState::Failed { reason, retry_in }) => {
            println!("registration failed: {reason} (retry in {}s)", retry_in.as_secs());
        }
        SipEvent::Registration(state) => println!("registration {state:?}"),
        SipEvent::IncomingCall {
            call, from, media, ..
        } => {
            println!("incoming {call} from={from} codec={:?}", media.codec);
            match sip.answer(call, rtp) {
                Ok(()) => println!("answered {call}"),
                Err(e) => println!("answer {call} failed: {e}"),
            }
        }
        SipEvent::CallEnded { call, reason } => println!("ended {call} reason={reason}"),
        other => println!("event {other:?}"),
    }
}
