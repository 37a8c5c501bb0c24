//! SIP message path: messages/s for parse + transaction handling, against rsip's bare
//! parse of the same bytes (issue 3: the transaction layer should add less than 50 %,
//! i.e. a ratio below 1.5).
//!
//! Two messages, `sip/invite` (a new INVITE with an SDP offer, 1,000 distinct ones) and
//! `sip/register_200` (the 200 answering the REGISTER the core just sent), each with:
//! - `rsip_parse` (a): `rsip::SipMessage::try_from` on the bytes (result dropped).
//! - `transaction_layer` (b), the figure: `UserAgentCore::receive_datagram`
//!   (feature `bench-internals`) on the same bytes: the message layer (canonical check or
//!   normalisation, rsip's parse, header extraction) and the transaction layer. INVITE: a
//!   new INVITE server transaction opened, its 100 Trying built and queued (and taken
//!   out), the request handed up. 200: the REGISTER client transaction matched and
//!   completed, the response handed up. What is handed up is dropped, not delivered.
//! - `full_core` (reference only): `handle_datagram`, i.e. (b) plus the transaction user.
//!   INVITE: SDP offer negotiated, call and dialog created, `IncomingCall` queued. 200:
//!   registration state, refresh timer, `Registered` queued.
//!
//! Before criterion runs, one `sip ratio` line per message gives the medians of (a), (b)
//! and the full path measured in alternating rounds of the same run (machine load hits
//! them alike), as µs and messages/s, the ratio (b)/(a), and the load average.
//! `SIP_RATIO=invite` (or `register`) prints one of them only. Instruction counts, which
//! load does not change: `cargo bench -p callbot-benches --bench sip --no-run`, then
//! `SIP_RATIO=register valgrind --tool=callgrind BINARY --bench no-criterion` and
//! `callgrind_annotate --inclusive=yes --tree=calling`: `receive_datagram` over
//! `SipMessage::try_from`, per call.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use callbot_sip::{CoreConfig, RegistrationConfig, RegistrationState, SipEvent, UserAgentCore};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const PEER: &str = "127.0.0.1:5070";
const CALLS: usize = 1000;

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

fn peer() -> SocketAddr {
    PEER.parse().unwrap()
}

fn uas_core() -> UserAgentCore {
    let mut cfg = CoreConfig::new(local());
    cfg.max_calls = CALLS;
    UserAgentCore::new(cfg, Instant::now())
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
    cfg.registration = Some(RegistrationConfig::new(peer(), "127.0.0.1"));
    let mut core = UserAgentCore::new(cfg, t0);
    core.handle_timeout(t0);
    core
}

/// A registering core and its simulated clock: `next_ok` jumps to the next refresh.
struct Registrar {
    core: UserAgentCore,
    t: Instant,
    first: bool,
}

impl Registrar {
    fn new() -> Registrar {
        let t = Instant::now();
        Registrar {
            core: registering_core(t),
            t,
            first: true,
        }
    }

    /// Untimed: after the first REGISTER, moves to the refresh of the last one; returns
    /// the 200 for the REGISTER just sent.
    fn next_ok(&mut self) -> Vec<u8> {
        if !std::mem::take(&mut self.first) {
            self.t += Duration::from_secs(3600);
            self.core.handle_timeout(self.t);
        }
        ok_for(&mut self.core)
    }
}

/// (a) for each INVITE.
fn time_rsip(msgs: &[Vec<u8>]) -> Duration {
    let start = Instant::now();
    for m in msgs {
        black_box(rsip::SipMessage::try_from(black_box(m.as_slice())).is_ok());
    }
    start.elapsed()
}

/// (b) for each INVITE: a new INVITE server transaction and its 100 Trying.
fn time_invite_transaction_layer(core: &mut UserAgentCore, msgs: &[Vec<u8>]) -> Duration {
    let now = Instant::now();
    let start = Instant::now();
    for m in msgs {
        let received = core.receive_datagram(now, peer(), black_box(m));
        black_box(core.poll_transmit());
        drop(black_box(received));
    }
    start.elapsed()
}

/// The whole core for each INVITE.
fn time_invite_full(core: &mut UserAgentCore, msgs: &[Vec<u8>]) -> Duration {
    let now = Instant::now();
    let start = Instant::now();
    for m in msgs {
        core.handle_datagram(now, peer(), black_box(m));
        black_box(core.poll_transmit());
        black_box(core.poll_event());
    }
    start.elapsed()
}

fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let out = f();
    (start.elapsed(), out)
}

/// One 200 through (a), (b) then the transaction user (untimed), and another through
/// the full path; returns the three times.
fn time_register_200(tl: &mut Registrar, full: &mut Registrar) -> [Duration; 3] {
    let ok = tl.next_ok();
    let (a, ok_parsed) = timed(|| rsip::SipMessage::try_from(black_box(ok.as_slice())).is_ok());
    assert!(ok_parsed);
    let (b, received) = timed(|| tl.core.receive_datagram(tl.t, peer(), black_box(&ok)));
    tl.core
        .deliver_received(tl.t, received.expect("the 200 must reach the TU"));
    let ok = full.next_ok();
    let (c, ()) = timed(|| full.core.handle_datagram(full.t, peer(), black_box(&ok)));
    assert!(
        matches!(
            full.core.poll_event(),
            Some(SipEvent::Registration(RegistrationState::Registered { .. }))
        ),
        "the 200 must register"
    );
    [a, b, c]
}

fn micros(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

/// The lower decile and the median.
fn p10_p50(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 10], v[v.len() / 2])
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Prints the `sip ratio` line from samples (µs per message) of (a), (b) and the full
/// path: the lower decile (the samples least disturbed by other processes on a shared
/// machine) and, in brackets, the median.
fn print_ratio(name: &str, samples: &mut [Vec<f64>; 3]) {
    let [(a, a50), (b, b50), (f, f50)] = samples.each_mut().map(|s| p10_p50(s));
    println!(
        "sip ratio {name}: rsip bare parse {a:.2} µs ({:.0} msg/s); parse + transaction layer {b:.2} µs \
         ({:.0} msg/s); ratio {:.2} (goal < 1.5) [medians {a50:.2} / {b50:.2} µs: {:.2}]; full core path \
         (reference) {f:.2} µs ({:.0} msg/s, {:.2}x rsip) [median {f50:.2} µs]; {} samples; load average {}",
        1e6 / a,
        1e6 / b,
        b / a,
        b50 / a50,
        1e6 / f,
        f / a,
        samples[0].len(),
        loadavg()
    );
}

/// `SIP_RATIO=invite` or `SIP_RATIO=register` runs one message's ratio only (to profile
/// it alone, e.g. under callgrind); unset: both.
fn ratio_wanted(which: &str) -> bool {
    std::env::var("SIP_RATIO").map_or(true, |v| v == which)
}

fn ratios(invites: &[Vec<u8>]) {
    if ratio_wanted("invite") {
        ratio_invite(invites);
    }
    if ratio_wanted("register") {
        ratio_register_200();
    }
}

fn ratio_invite(invites: &[Vec<u8>]) {
    // Rounds over the 1,000 INVITEs (a fresh core each), timed per chunk of 50 so a
    // sample rarely spans a preemption.
    let mut samples: [Vec<f64>; 3] = Default::default();
    for _ in 0..20 {
        let (mut tl, mut full) = (uas_core(), uas_core());
        for chunk in invites.chunks(50) {
            samples[0].push(micros(time_rsip(chunk), chunk.len()));
            samples[1].push(micros(time_invite_transaction_layer(&mut tl, chunk), chunk.len()));
            samples[2].push(micros(time_invite_full(&mut full, chunk), chunk.len()));
        }
    }
    print_ratio("INVITE", &mut samples);
}

fn ratio_register_200() {
    let (mut tl, mut full) = (Registrar::new(), Registrar::new());
    let mut samples: [Vec<f64>; 3] = Default::default();
    for _ in 0..5000 {
        for (s, d) in samples.iter_mut().zip(time_register_200(&mut tl, &mut full)) {
            s.push(micros(d, 1));
        }
    }
    print_ratio("200 to REGISTER", &mut samples);
}

/// Criterion `iter_custom` over the 1,000 INVITEs in chunks, a fresh core per chunk.
fn chunked(iters: u64, invites: &[Vec<u8>], run: fn(&mut UserAgentCore, &[Vec<u8>]) -> Duration) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0u64;
    while done < iters {
        let n = (iters - done).min(invites.len() as u64) as usize;
        total += run(&mut uas_core(), &invites[..n]);
        done += n as u64;
    }
    total
}

fn bench(c: &mut Criterion) {
    let invites: Vec<Vec<u8>> = (0..CALLS).map(invite).collect();
    ratios(&invites);

    let mut g = c.benchmark_group("sip/invite");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rsip_parse", |b| {
        b.iter_custom(|iters| chunked(iters, &invites, |_, msgs| time_rsip(msgs)))
    });
    g.bench_function("transaction_layer", |b| {
        b.iter_custom(|iters| chunked(iters, &invites, time_invite_transaction_layer))
    });
    g.bench_function("full_core", |b| {
        b.iter_custom(|iters| chunked(iters, &invites, time_invite_full))
    });
    g.finish();

    let mut g = c.benchmark_group("sip/register_200");
    g.throughput(Throughput::Elements(1));
    let pick = |which: usize| {
        move |iters: u64| {
            let (mut tl, mut full) = (Registrar::new(), Registrar::new());
            (0..iters)
                .map(|_| time_register_200(&mut tl, &mut full)[which])
                .sum::<Duration>()
        }
    };
    g.bench_function("rsip_parse", |b| b.iter_custom(pick(0)));
    g.bench_function("transaction_layer", |b| b.iter_custom(pick(1)));
    g.bench_function("full_core", |b| b.iter_custom(pick(2)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
