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
use std::time::Instant;

use callbot_sip::{CoreConfig, RegistrationConfig, UserAgentCore};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const PEER: &str = "127.0.0.1:5070";

fn invite() -> Vec<u8> {
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";
    format!(
        "INVITE sip:bot@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {PEER};branch=z9hG4bK776asdhds;rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@127.0.0.1>;tag=1928301774\r\nTo: <sip:bot@127.0.0.1>\r\nCall-ID: a84b4c76e66710@127.0.0.1\r\nCSeq: 314159 INVITE\r\nContact: <sip:alice@{PEER}>\r\nUser-Agent: bench\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}

fn local() -> SocketAddr {
    "127.0.0.1:5060".parse().unwrap()
}

/// A core with a REGISTER in flight, and the 200 that answers it.
fn pending_register() -> (UserAgentCore, Vec<u8>) {
    let t0 = Instant::now();
    let mut cfg = CoreConfig::new(local());
    cfg.user = "bot".into();
    cfg.registration = Some(RegistrationConfig::new(PEER.parse().unwrap(), "127.0.0.1"));
    let mut core = UserAgentCore::new(cfg, t0);
    core.handle_timeout(t0);
    let req = core.poll_transmit().unwrap().payload;
    while core.poll_event().is_some() {}
    let text = String::from_utf8(req).unwrap();
    let header = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim_start_matches(':').trim().to_string()))
            .unwrap()
    };
    let resp = format!(
        "SIP/2.0 200 OK\r\nVia: {};received=127.0.0.1;rport=5060\r\nFrom: {}\r\nTo: {};tag=37GkEhwl6\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: <sip:bot@127.0.0.1:5060>;expires=3600\r\nServer: bench\r\nContent-Length: 0\r\n\r\n",
        header("Via"),
        header("From"),
        header("To"),
        header("Call-ID"),
        header("CSeq")
    );
    (core, resp.into_bytes())
}

fn bench(c: &mut Criterion) {
    let peer: SocketAddr = PEER.parse().unwrap();
    let inv = invite();
    let mut g = c.benchmark_group("sip/invite");
    g.throughput(criterion::Throughput::Elements(1));
    g.bench_function("rsip_parse", |b| {
        b.iter(|| black_box(rsip::SipMessage::try_from(black_box(inv.as_slice())).is_ok()))
    });
    g.bench_function("core", |b| {
        b.iter_batched(
            || UserAgentCore::new(CoreConfig::new(local()), Instant::now()),
            |mut core| {
                core.handle_datagram(Instant::now(), peer, black_box(&inv));
                let sent = core.poll_transmit().map(|t| t.payload.len());
                let ev = core.poll_event().is_some();
                (core, sent, ev)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let (_, ok) = pending_register();
    let mut g = c.benchmark_group("sip/register_200");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rsip_parse", |b| {
        b.iter(|| black_box(rsip::SipMessage::try_from(black_box(ok.as_slice())).is_ok()))
    });
    g.bench_function("core", |b| {
        b.iter_batched(
            pending_register,
            |(mut core, resp)| {
                core.handle_datagram(Instant::now(), peer, black_box(&resp));
                let ev = core.poll_event();
                assert!(ev.is_some(), "the 200 must register");
                (core, resp)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
