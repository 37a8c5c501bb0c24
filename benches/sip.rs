//! SIP message path: parse + transaction handling in the sans-IO core, against rsip's
//! bare parse of the same bytes.
//!
//! - `sip/invite/core`: a new INVITE with an SDP offer through `UserAgentCore`
//!   (normalise, rsip parse, server transaction, 100 Trying built and queued, SDP
//!   negotiated, call and dialog created, event queued).
//! - `sip/register_200/core`: the 200 to a pending REGISTER (client transaction matched,
//!   registration state updated, refresh timer set, event queued).
//! - `*/rsip_parse`: `rsip::SipMessage::try_from` on the same bytes.
//!
//! Throughput is reported in messages/s (criterion `Elements`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use callbot_sip::{CoreConfig, RegistrationConfig, UserAgentCore};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const PEER: &str = "127.0.0.1:5070";

fn invite(n: usize) -> Vec<u8> {
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";
    format!(
        "INVITE sip:bot@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {PEER};branch=z9hG4bK776asd{n:06};rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@127.0.0.1>;tag=1928301774\r\nTo: <sip:bot@127.0.0.1>\r\nCall-ID: a84b4c76e{n:06}@127.0.0.1\r\nCSeq: 314159 INVITE\r\nContact: <sip:alice@{PEER}>\r\nUser-Agent: bench\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}

fn local() -> SocketAddr {
    "127.0.0.1:5060".parse().unwrap()
}

/// The 200 answering the REGISTER the core just sent.
fn ok_for(core: &mut UserAgentCore) -> Vec<u8> {
    let req = core.poll_transmit().unwrap().payload;
    while core.poll_transmit().is_some() {}
    while core.poll_event().is_some() {}
    let text = String::from_utf8(req).unwrap();
    let header = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .map(|v| v.trim_start_matches(':').trim().to_string())
            })
            .unwrap()
    };
    format!(
        "SIP/2.0 200 OK\r\nVia: {};received=127.0.0.1;rport=5060\r\nFrom: {}\r\nTo: {};tag=37GkEhwl6\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: <sip:bot@127.0.0.1:5060>;expires=3600\r\nServer: bench\r\nContent-Length: 0\r\n\r\n",
        header("Via"),
        header("From"),
        header("To"),
        header("Call-ID"),
        header("CSeq")
    )
    .into_bytes()
}

fn registering_core(t0: Instant) -> UserAgentCore {
    let mut cfg = CoreConfig::new(local());
    cfg.user = "bot".into();
    cfg.registration = Some(RegistrationConfig::new(PEER.parse().unwrap(), "127.0.0.1"));
    let mut core = UserAgentCore::new(cfg, t0);
    core.handle_timeout(t0);
    core
}

fn bench(c: &mut Criterion) {
    let peer: SocketAddr = PEER.parse().unwrap();
    const CALLS: usize = 1000;
    let invites: Vec<Vec<u8>> = (0..CALLS).map(invite).collect();
    let mut g = c.benchmark_group("sip/invite");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rsip_parse", |b| {
        b.iter(|| black_box(rsip::SipMessage::try_from(black_box(invites[0].as_slice())).is_ok()))
    });
    // Steady state: one core takes 1,000 distinct INVITEs (each a new server transaction,
    // a 100 Trying, an SDP negotiation, a call, a dialog and an event); only that is timed.
    g.bench_function("core", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            while done < iters {
                let mut cfg = CoreConfig::new(local());
                cfg.max_calls = CALLS;
                let mut core = UserAgentCore::new(cfg, Instant::now());
                let n = (iters - done).min(CALLS as u64) as usize;
                let start = Instant::now();
                for inv in &invites[..n] {
                    core.handle_datagram(start, peer, black_box(inv));
                    black_box(core.poll_transmit());
                    black_box(core.poll_event());
                }
                total += start.elapsed();
                done += n as u64;
            }
            total
        })
    });
    g.finish();

    let mut probe = registering_core(Instant::now());
    let ok = ok_for(&mut probe);
    let mut g = c.benchmark_group("sip/register_200");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rsip_parse", |b| {
        b.iter(|| black_box(rsip::SipMessage::try_from(black_box(ok.as_slice())).is_ok()))
    });
    // One core registers again and again (simulated time jumps to each refresh); only
    // the handling of each 200 is timed.
    g.bench_function("core", |b| {
        b.iter_custom(|iters| {
            let mut t = Instant::now();
            let mut core = registering_core(t);
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let resp = ok_for(&mut core);
                let start = Instant::now();
                core.handle_datagram(t, peer, black_box(&resp));
                let ev = core.poll_event();
                total += start.elapsed();
                assert!(ev.is_some(), "the 200 must register");
                // Next refresh (untimed).
                t += Duration::from_secs(3600);
                core.handle_timeout(t);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
