//! Answers every SIP call (PCMU/PCMA), hangs up after `--hold` seconds unless the caller
//! hangs up first, and prints one line per event. No media is processed: the SDP answer
//! names a UDP socket that discards what it receives.
//!
//! ```text
//! cargo run --release -p callbot-examples --example answer -- \
//!     --listen 127.0.0.1:5060 [--max-calls N] [--hold SECS]
//! ```
//!
//! Output lines (stdout):
//! - `listening on ADDR`
//! - `incoming CALL from=FROM codec=PCMU remote_rtp=ADDR`
//! - `answered CALL` / `confirmed CALL` / `media CALL codec=.. remote_rtp=..`
//! - `hangup CALL after=SECS`
//! - `ended CALL reason=REASON`
//! - `shutdown REPORT` on SIGINT/SIGTERM, then exit 0.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use callbot_examples::{Args, run_main};
use callbot_sip::{CallId, SipConfig, SipEvent, SipUserAgent};

fn main() -> std::process::ExitCode {
    run_main("answer", run)
}

fn run() -> Result<(), String> {
    let args = Args::parse(&[])?;
    args.reject_unknown(&["listen", "max-calls", "hold"])?;
    let listen: SocketAddr = args.required_parsed("listen")?;
    let max_calls: usize = args.parsed_or("max-calls", 100)?;
    let hold = Duration::from_secs_f64(args.parsed_or("hold", 10.0f64)?.max(0.0));

    let stop = callbot_examples::signal_flag(&[signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    // One socket stands for every call's RTP address; what arrives there is discarded
    // by the kernel once its buffer is full.
    let rtp_sink =
        UdpSocket::bind(SocketAddr::new(listen.ip(), 0)).map_err(|e| format!("RTP socket: {e}"))?;
    let rtp = rtp_sink.local_addr().map_err(|e| e.to_string())?;

    let mut config = SipConfig::new(listen);
    config.max_calls = max_calls;
    config.event_capacity = 4096;
    let mut sip = SipUserAgent::start(config).map_err(|e| e.to_string())?;
    println!("listening on {}", sip.local_addr());

    let mut hangups: HashMap<CallId, Instant> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        match sip.events().recv_timeout(Duration::from_millis(50)) {
            Ok(ev) => handle(&sip, ev, rtp, hold, &mut hangups),
            Err(e) if e.is_disconnected() => break,
            Err(_) => {}
        }
        let now = Instant::now();
        let due: Vec<CallId> = hangups
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(c, _)| *c)
            .collect();
        for call in due {
            hangups.remove(&call);
            println!("hangup {call} after={}", hold.as_secs_f64());
            if let Err(e) = sip.hang_up(call) {
                println!("hangup {call} failed: {e}");
            }
        }
    }
    let report = sip.shutdown(Instant::now() + Duration::from_secs(5));
    // Calls that ended during shutdown.
    for ev in sip.events().try_iter() {
        handle(&sip, ev, rtp, hold, &mut hangups);
    }
    println!("shutdown {report}");
    Ok(())
}

fn handle(
    sip: &callbot_sip::SipHandle,
    ev: SipEvent,
    rtp: SocketAddr,
    hold: Duration,
    hangups: &mut HashMap<CallId, Instant>,
) {
    match ev {
        SipEvent::IncomingCall {
            call, from, media, ..
        } => {
            println!(
                "incoming {call} from={from} codec={:?} remote_rtp={}",
                media.codec, media.remote_rtp
            );
            match sip.answer(call, rtp) {
                Ok(()) => {
                    println!("answered {call}");
                    hangups.insert(call, Instant::now() + hold);
                }
                Err(e) => println!("answer {call} failed: {e}"),
            }
        }
        SipEvent::CallConfirmed { call } => println!("confirmed {call}"),
        SipEvent::MediaUpdated { call, media } => println!(
            "media {call} codec={:?} remote_rtp={} direction={:?}",
            media.codec, media.remote_rtp, media.direction
        ),
        SipEvent::CallEnded { call, reason } => {
            hangups.remove(&call);
            println!("ended {call} reason={reason}");
        }
        other => println!("event {other:?}"),
    }
}
