//! The UDP driver over loopback: OPTIONS, a call answered and hung up at shutdown,
//! the port free again at once, IPv6.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use callbot_sip::{EndReason, SipConfig, SipEvent, SipUserAgent};

struct Peer {
    sock: UdpSocket,
}

impl Peer {
    fn new(ip: &str) -> Peer {
        let sock = UdpSocket::bind(format!("{ip}:0")).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Peer { sock }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    fn host_port(&self) -> String {
        match self.addr() {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        }
    }

    fn send(&self, to: SocketAddr, msg: &str) {
        self.sock.send_to(msg.as_bytes(), to).unwrap();
    }

    fn recv(&self) -> String {
        let mut buf = [0u8; 65536];
        let (n, _) = self.sock.recv_from(&mut buf).expect("a SIP message");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Receives until a message whose first line contains `what`.
    fn recv_until(&self, what: &str) -> String {
        for _ in 0..20 {
            let m = self.recv();
            if m.lines().next().unwrap_or("").contains(what) {
                return m;
            }
        }
        panic!("no {what}");
    }
}

fn header<'a>(msg: &'a str, name: &str) -> &'a str {
    msg.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .unwrap_or_else(|| panic!("no {name} in {msg}"))
}

fn options(peer: &Peer, ua: SocketAddr, call_id: &str) -> String {
    format!(
        "OPTIONS sip:bot@{ua} SIP/2.0\r\nVia: SIP/2.0/UDP {hp};branch=z9hG4bK{call_id};rport\r\nFrom: <sip:t@{hp}>;tag=1\r\nTo: <sip:bot@{hp}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        hp = peer.host_port()
    )
}

fn invite(peer: &Peer, call_id: &str) -> String {
    let hp = peer.host_port();
    let ip = peer.addr().ip();
    let (fam, ip) = if ip.is_ipv4() {
        ("IP4", ip.to_string())
    } else {
        ("IP6", ip.to_string())
    };
    let sdp = format!(
        "v=0\r\no=- 1 1 IN {fam} {ip}\r\ns=-\r\nc=IN {fam} {ip}\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    );
    format!(
        "INVITE sip:bot@x SIP/2.0\r\nVia: SIP/2.0/UDP {hp};branch=z9hG4bK{call_id};rport\r\nFrom: <sip:t@{hp}>;tag=caller\r\nTo: <sip:bot@{hp}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:t@{hp}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

fn next_event(ua: &callbot_sip::SipHandle) -> SipEvent {
    ua.events()
        .recv_timeout(Duration::from_secs(3))
        .expect("an event")
}

#[test]
fn answers_options_and_calls_then_shuts_down_with_bye_and_frees_the_port() {
    let mut ua = SipUserAgent::start(SipConfig::new("127.0.0.1:0".parse().unwrap())).unwrap();
    let addr = ua.local_addr();
    let peer = Peer::new("127.0.0.1");
    peer.send(addr, &options(&peer, addr, "opt1"));
    let resp = peer.recv();
    assert!(resp.starts_with("SIP/2.0 200"), "{resp}");
    assert!(header(&resp, "Allow").contains("INVITE"));

    peer.send(addr, &invite(&peer, "call1"));
    assert!(peer.recv().starts_with("SIP/2.0 100"));
    let SipEvent::IncomingCall { call, media, .. } = next_event(&ua) else {
        panic!()
    };
    assert_eq!(media.remote_rtp, SocketAddr::new(peer.addr().ip(), 40000));
    let rtp: SocketAddr = "127.0.0.1:30000".parse().unwrap();
    ua.answer(call, rtp).unwrap();
    let ok = peer.recv_until("200");
    assert!(ok.contains("m=audio 30000 RTP/AVP 8 101"), "{ok}");
    let to = header(&ok, "To").to_string();
    let ack = format!(
        "ACK sip:bot@{addr} SIP/2.0\r\nVia: SIP/2.0/UDP {hp};branch=z9hG4bKack1\r\nFrom: <sip:t@{hp}>;tag=caller\r\nTo: {to}\r\nCall-ID: call1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        hp = peer.host_port()
    );
    peer.send(addr, &ack);
    assert_eq!(next_event(&ua), SipEvent::CallConfirmed { call });
    assert_eq!(ua.stats().unwrap().calls, 1);

    // Shutdown: the peer gets a BYE and answers it from another thread.
    let peer_thread = std::thread::spawn(move || {
        let bye = peer.recv_until("BYE");
        let resp = format!(
            "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
            header(&bye, "Via"),
            header(&bye, "From"),
            header(&bye, "To"),
            header(&bye, "Call-ID"),
            header(&bye, "CSeq")
        );
        peer.send(addr, &resp);
        bye
    });
    let report = ua.shutdown(Instant::now() + Duration::from_secs(3));
    let bye = peer_thread.join().unwrap();
    assert!(bye.starts_with(&format!("BYE sip:t@{}", "127.0.0.1")), "{bye}");
    assert_eq!(report.calls_hung_up, 1);
    assert_eq!(report.calls_abandoned, 0);
    assert!(!report.timed_out, "{report:?}");
    assert!(report.thread_joined);
    assert_eq!(report.unregistered, None);
    assert!(report.elapsed < Duration::from_secs(3));
    assert_eq!(
        next_event(&ua),
        SipEvent::CallEnded {
            call,
            reason: EndReason::LocalHangup
        }
    );
    // Idempotent, and the port is free at once.
    let again = ua.shutdown(Instant::now() + Duration::from_secs(1));
    assert!(again.already_shut_down);
    assert!(ua.answer(call, rtp).is_err());
    UdpSocket::bind(addr).expect("port free again after shutdown");
}

#[test]
fn shutdown_deadline_bounds_an_unanswered_bye() {
    let mut ua = SipUserAgent::start(SipConfig::new("127.0.0.1:0".parse().unwrap())).unwrap();
    let addr = ua.local_addr();
    let peer = Peer::new("127.0.0.1");
    peer.send(addr, &invite(&peer, "call2"));
    let SipEvent::IncomingCall { call, .. } = next_event(&ua) else {
        panic!()
    };
    ua.answer(call, "127.0.0.1:30002".parse().unwrap()).unwrap();
    let start = Instant::now();
    let report = ua.shutdown(Instant::now() + Duration::from_millis(700));
    assert!(report.timed_out);
    assert_eq!(report.calls_abandoned, 1);
    assert!(report.thread_joined);
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    // The call still gets exactly one CallEnded.
    let ended: Vec<_> = ua
        .events()
        .try_iter()
        .filter(|e| matches!(e, SipEvent::CallEnded { .. }))
        .collect();
    assert_eq!(ended.len(), 1);
    UdpSocket::bind(addr).expect("port free again");
}

#[test]
fn ipv6_and_drop_shuts_down() {
    let Ok(probe) = UdpSocket::bind("[::1]:0") else {
        eprintln!("SKIP: no IPv6 loopback");
        return;
    };
    drop(probe);
    let ua = SipUserAgent::start(SipConfig::new("[::1]:0".parse().unwrap())).unwrap();
    let addr = ua.local_addr();
    let peer = Peer::new("[::1]");
    peer.send(addr, &options(&peer, addr, "opt6"));
    let resp = peer.recv();
    assert!(resp.starts_with("SIP/2.0 200"), "{resp}");
    peer.send(addr, &invite(&peer, "call6"));
    let SipEvent::IncomingCall { media, .. } = next_event(&ua) else {
        panic!()
    };
    assert!(media.remote_rtp.is_ipv6());
    let t = Instant::now();
    drop(ua);
    assert!(t.elapsed() < Duration::from_secs(3));
    UdpSocket::bind(addr).expect("port free after drop");
}

#[test]
fn commands_are_answered_promptly() {
    let ua = SipUserAgent::start(SipConfig::new("127.0.0.1:0".parse().unwrap())).unwrap();
    // Idle thread: a command must not wait for the idle timeout.
    let t = Instant::now();
    for _ in 0..20 {
        ua.stats().unwrap();
    }
    assert!(t.elapsed() < Duration::from_millis(1000), "{:?}", t.elapsed());
    assert!(ua.hang_up(callbot_sip::CallId(99)).is_err());
}

#[test]
fn unspecified_bind_with_advertised_address() {
    let mut cfg = SipConfig::new("0.0.0.0:0".parse().unwrap());
    cfg.advertise_ip = Some("192.0.2.10".parse().unwrap());
    let mut ua = SipUserAgent::start(cfg).unwrap();
    assert_eq!(ua.local_addr().ip().to_string(), "192.0.2.10");
    // Commands still wake the thread (the wake datagram goes to loopback).
    let t = Instant::now();
    for _ in 0..10 {
        ua.stats().unwrap();
    }
    assert!(t.elapsed() < Duration::from_millis(1000), "{:?}", t.elapsed());
    let peer = Peer::new("127.0.0.1");
    let to = SocketAddr::new("127.0.0.1".parse().unwrap(), ua.local_addr().port());
    peer.send(to, &options(&peer, to, "optu"));
    let resp = peer.recv();
    assert!(resp.starts_with("SIP/2.0 200"), "{resp}");
    let report = ua.shutdown(Instant::now() + Duration::from_secs(1));
    assert!(report.thread_joined && !report.timed_out);
}

/// Thread ids of this process's threads named `name` (`/proc/self/task/*/comm`).
fn threads_named(name: &str) -> Vec<u32> {
    let mut tids: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim() == name).then(|| e.file_name().to_str()?.parse().ok())?
        })
        .collect();
    tids.sort();
    tids
}

/// After a load peak drained (1,200 OPTIONS transactions lingering at once, then
/// expired) the loop moves to a fresh worker thread (the old one's exit returns glibc's
/// per-thread cache); the user agent keeps answering and shuts down cleanly.
#[test]
fn drained_peak_moves_the_loop_to_a_fresh_worker() {
    let mut cfg = SipConfig::new("127.0.0.1:0".parse().unwrap());
    // Transactions linger 64*T1 = 3.2 s: long enough to hold 1,200 at once.
    cfg.timers.t1 = Duration::from_millis(50);
    let mut ua = SipUserAgent::start(cfg).unwrap();
    let addr = ua.local_addr();
    let peer = Peer::new("127.0.0.1");
    peer.send(addr, &options(&peer, addr, "warm"));
    assert!(peer.recv().starts_with("SIP/2.0 200"));
    let first = threads_named("sip-ua-io");
    assert_eq!(first.len(), 1, "one worker: {first:?}");
    assert_eq!(threads_named("sip-ua").len(), 1);
    let sent = Instant::now();
    // Batches small enough for the socket's receive buffer.
    for batch in 0..24 {
        for i in 0..50 {
            peer.send(addr, &options(&peer, addr, &format!("peak-{batch}-{i}")));
        }
        for _ in 0..50 {
            assert!(peer.recv().starts_with("SIP/2.0 200"));
        }
    }
    let peak = ua.stats().unwrap().server_transactions;
    println!("1,200 OPTIONS answered in {:?}; lingering {peak}", sent.elapsed());
    assert!(peak >= 1000, "the peak must reach 1,000 records: {peak}");
    let t0 = Instant::now();
    let mut now = threads_named("sip-ua-io");
    // (Between the old worker's exit and the new one's start the list is empty.)
    while (now == first || now.is_empty()) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        now = threads_named("sip-ua-io");
    }
    assert_eq!(ua.stats().unwrap().server_transactions, 0);
    assert_eq!(now.len(), 1, "one worker after the handover: {now:?}");
    assert_ne!(now, first, "a fresh worker after the drained peak");
    // The new worker serves the same socket and core.
    peer.send(addr, &options(&peer, addr, "after"));
    assert!(peer.recv().starts_with("SIP/2.0 200"));
    assert_eq!(ua.stats().unwrap().server_transactions, 1);
    let report = ua.shutdown(Instant::now() + Duration::from_secs(2));
    assert!(report.thread_joined && !report.timed_out, "{report:?}");
    assert!(threads_named("sip-ua-io").is_empty() && threads_named("sip-ua").is_empty());
    UdpSocket::bind(addr).expect("port free after shutdown");
}
