//! Simulated-time tests of the core: every timer, every table.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::message::{Parsed, SipMsg};

const PEER: &str = "127.0.0.1:5070";
const LOCAL: &str = "127.0.0.1:5060";

fn peer() -> SocketAddr {
    PEER.parse().unwrap()
}

fn rtp() -> SocketAddr {
    "127.0.0.1:30000".parse().unwrap()
}

fn core(now: Instant) -> UserAgentCore {
    let mut cfg = CoreConfig::new(LOCAL.parse().unwrap());
    cfg.max_calls = 2;
    UserAgentCore::new(cfg, now)
}

fn offer_sdp(port: u16, pts: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP {pts}\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
}

fn invite(call_id: &str, branch: &str, to_tag: Option<&str>, cseq: u32, body: &str) -> String {
    let to = match to_tag {
        Some(t) => format!("<sip:bot@127.0.0.1>;tag={t}"),
        None => "<sip:bot@127.0.0.1>".into(),
    };
    format!(
        "INVITE sip:bot@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {PEER};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=alice1\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:alice@{PEER}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn request(method: &str, call_id: &str, branch: &str, to_tag: Option<&str>, cseq: u32) -> String {
    let to = match to_tag {
        Some(t) => format!("<sip:bot@127.0.0.1>;tag={t}"),
        None => "<sip:bot@127.0.0.1>".into(),
    };
    format!(
        "{method} sip:bot@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {PEER};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=alice1\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    )
}

fn parse(bytes: &[u8]) -> SipMsg<'static> {
    match crate::message::parse(bytes, 65535) {
        Parsed::Message(m) => m.into_owned(),
        other => panic!(
            "our own output does not parse: {other:?}\n{}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

fn drain(ua: &mut UserAgentCore) -> Vec<(SocketAddr, SipMsg<'static>)> {
    let mut out = Vec::new();
    while let Some(t) = ua.poll_transmit() {
        out.push((t.destination, parse(&t.payload)));
    }
    out
}

fn events(ua: &mut UserAgentCore) -> Vec<SipEvent> {
    let mut out = Vec::new();
    while let Some(e) = ua.poll_event() {
        out.push(e);
    }
    out
}

fn codes(msgs: &[(SocketAddr, SipMsg)]) -> Vec<u16> {
    msgs.iter().filter_map(|(_, m)| m.status()).collect()
}

/// Runs every timer up to `until`, returning what was sent and when.
fn run_until(ua: &mut UserAgentCore, until: Instant) -> Vec<(Instant, SipMsg<'static>)> {
    let mut out = Vec::new();
    while let Some(t) = ua.poll_timeout() {
        if t > until {
            break;
        }
        ua.handle_timeout(t);
        while let Some(tr) = ua.poll_transmit() {
            out.push((t, parse(&tr.payload)));
        }
    }
    out
}

fn assert_empty(ua: &UserAgentCore) {
    let s = ua.stats();
    assert_eq!(
        (s.calls, s.dialogs, s.server_transactions, s.client_transactions),
        (0, 0, 0, 0),
        "tables not empty: {s:?}"
    );
}

/// Sets up an incoming call; returns (call, local to-tag).
fn incoming(ua: &mut UserAgentCore, now: Instant, call_id: &str) -> (CallId, String) {
    ua.handle_datagram(
        now,
        peer(),
        invite(
            call_id,
            &format!("z9hG4bK{call_id}"),
            None,
            1,
            &offer_sdp(40000, "0 8 101"),
        )
        .as_bytes(),
    );
    let sent = drain(ua);
    assert_eq!(codes(&sent), vec![100]);
    let ev = events(ua);
    let [SipEvent::IncomingCall { call, media, .. }] = ev.as_slice() else {
        panic!("no incoming call: {ev:?}")
    };
    assert_eq!(media.remote_rtp, "127.0.0.1:40000".parse().unwrap());
    assert_eq!(media.telephone_event, Some(101));
    ua.answer(now, *call, rtp()).unwrap();
    let sent = drain(ua);
    assert_eq!(codes(&sent), vec![200]);
    let tag = sent[0].1.tag_to().unwrap().to_string();
    (*call, tag)
}

#[test]
fn options_answered_and_retransmission_absorbed_until_timer_j() {
    let t0 = Instant::now();
    let mut ua = core(t0);
    let req = request("OPTIONS", "o1", "z9hG4bKo1", None, 1);
    ua.handle_datagram(t0, peer(), req.as_bytes());
    let sent = drain(&mut ua);
    assert_eq!(codes(&sent), vec![200]);
    assert_eq!(sent[0].0, peer());
    assert!(sent[0].1.header("Allow").unwrap().contains("INVITE"));
    assert_eq!(sent[0].1.header("Accept"), Some("application/sdp"));
    let via = sent[0].1.vias()[0];
    assert!(
        via.contains("received=127.0.0.1") && via.contains("rport=5070"),
        "{via}"
    );
    // Retransmission: same response, not processed twice.
    ua.handle_datagram(t0 + Duration::from_secs(1), peer(), req.as_bytes());
    let again = drain(&mut ua);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1.tag_to(), sent[0].1.tag_to());
    assert_eq!(ua.stats().retransmissions_absorbed, 1);
    assert_eq!(ua.stats().server_transactions, 1);
    // Timer J = 64*T1 = 32 s.
    run_until(&mut ua, t0 + Duration::from_millis(31_900));
    assert_eq!(ua.stats().server_transactions, 1);
    run_until(&mut ua, t0 + Duration::from_secs(32));
    assert_empty(&ua);
}

#[test]
fn responses_without_rport_go_to_the_via_port() {
    let t0 = Instant::now();
    let mut ua = core(t0);
    let req = request("OPTIONS", "o2", "z9hG4bKo2", None, 1).replace(";rport", "");
    let src: SocketAddr = "127.0.0.1:6000".parse().unwrap();
    ua.handle_datagram(t0, src, req.as_bytes());
    let sent = drain(&mut ua);
    assert_eq!(sent[0].0, peer());
    // IPv6 peer.
    let req6 = request("OPTIONS", "o3", "z9hG4bKo3", None, 1).replace(PEER, "[::1]:5072");
    let src6: SocketAddr = "[::1]:5072".parse().unwrap();
    ua.handle_datagram(t0, src6, req6.as_bytes());
    let sent = drain(&mut ua);
    assert_eq!(sent[0].0, src6);
    assert_eq!(codes(&sent), vec![200]);
}

#[test]
fn answered_call_retransmits_200_with_t1_t2_doubling_until_ack_then_remote_bye() {
    let t0 = Instant::now();
    let mut ua = core(t0);
    let (call, tag) = incoming(&mut ua, t0, "c1");
    // 200 retransmitted at 0.5, 1.5, 3.5, 7.5, 11.5 (interval capped at T2 = 4 s).
    let sent = run_until(&mut ua, t0 + Duration::from_millis(12_000));
    let times: Vec<u128> = sent.iter().map(|(t, _)| (*t - t0).as_millis()).collect();
    assert_eq!(times, vec![500, 1500, 3500, 7500, 11500]);
    assert!(sent.iter().all(|(_, m)| m.status() == Some(200)));
    // A retransmitted INVITE gets the 200 again and no second event.
    ua.handle_datagram(
        t0 + Duration::from_secs(12),
        peer(),
        invite("c1", "z9hG4bKc1", None, 1, &offer_sdp(40000, "0")).as_bytes(),
    );
    assert_eq!(codes(&drain(&mut ua)), vec![200]);
    assert!(events(&mut ua).is_empty());
    // ACK stops the retransmissions.
    ua.handle_datagram(
        t0 + Duration::from_secs(12),
        peer(),
        request("ACK", "c1", "z9hG4bKack1", Some(&tag), 1).as_bytes(),
    );
    assert_eq!(events(&mut ua), vec![SipEvent::CallConfirmed { call }]);
    assert!(run_until(&mut ua, t0 + Duration::from_secs(20)).is_empty());
    // BYE from the caller.
    ua.handle_datagram(
        t0 + Duration::from_secs(20),
        peer(),
        request("BYE", "c1", "z9hG4bKbye1", Some(&tag), 2).as_bytes(),
    );
    assert_eq!(codes(&drain(&mut ua)), vec![200]);
    assert_eq!(
        events(&mut ua),
        vec![SipEvent::CallEnded {
            call,
            reason: EndReason::RemoteHangup
        }]
    );
    run_until(&mut ua, t0 + Duration::from_secs(120));
    assert_empty(&ua);
}

#[test]
fn no_ack_within_64_t1_ends_the_call_with_bye() {
    let t0 = Instant::now();
    let mut ua = core(t0);
    let (call, _tag) = incoming(&mut ua, t0, "c2");
    let sent = run_until(&mut ua, t0 + Duration::from_millis(31_999));
    assert!(sent.iter().all(|(_, m)| m.status() == Some(200)));
    assert!(events(&mut ua).is_empty());
    let sent = run_until(&mut ua, t0 + Duration::from_secs(32));
    let bye: Vec<_> = sent
        .iter()
        .filter(|(_, m)| m.method() == Some(&Method::Bye))
        .collect();
    assert_eq!(bye.len(), 1, "BYE after timer H");
    // BYE unanswered: timer E retransmits, F (32 s) ends it.
    let sent = run_until(&mut ua, t0 + Duration::from_secs(64));
    assert!(
        sent.iter()
            .filter(|(_, m)| m.method() == Some(&Method::Bye))
            .count()
            >= 5
    );
    assert_eq!(
        events(&mut ua),
        vec![SipEvent::CallEnded {
            call,
            reason: EndReason::NoAck
        }]
    );
    run_until(&mut ua, t0 + Duration::from_secs(100));
    assert_empty(&ua);
}

#[test]
fn cancel_before_answer_gives_487_and_an_event() {
    let t0 = Instant::now();
    let mut ua = core(t0);
    ua.handle_datagram(
        t0,
        peer(),
        invite("c3", "z9hG4bKc3", None, 1, &offer_sdp(40000, "8")).as_bytes(),
    );
    drain(&mut ua);
    let [SipEvent::IncomingCall { call, .. }] = events(&mut ua)[..] else {
        panic!()
    };
    ua.ring(t0, call).unwrap();
    assert_eq!(codes(&drain(&mut ua)), vec![180]);
    let cancel = request("CANCEL", "c3", "z9hG4bKc3", None, 1);
    ua.handle_datagram(t0, peer(), cancel.as_bytes());
    let sent = drain(&mut ua);
    assert_eq!(codes(&sent), vec![200, 487]);
    assert_eq!(
        events(&mut ua),
        vec![SipEvent::CallEnded {
            call,
            reason: EndReason::CallerCancelled
        }]
    );
    assert_eq!(ua.answer(t0, call, rtp()), Err(CommandError::UnknownCall(call)));
    // 487 retransmitted (timer G) until the ACK, then timer I.
    let g = run_until(&mut ua, t0 + Duration::from_millis(1600));
    assert_eq!(
        g.iter().map(|(t, _)| (*t - t0).as_millis()).collect::<Vec<_>>(),
        vec![500, 1500]
    );
    let tag = sent[1].1.tag_to().map(str::to_string);
    let ack = request("ACK", "c3", "z9hG4bKc3", tag.as_deref(), 1);
    ua.handle_datagram(t0 + Duration::from_secs(2), peer(), ack.as_bytes());
    assert!(run_until(&mut ua, t0 + Duration::from_secs(6)).is_empty());
    assert_eq!(
        ua.stats().server_transactions,
        2,
        "INVITE (timer I) and CANCEL (timer J)"
    );
    run_until(&mut ua, t0 + Duration::from_millis(7001));
    assert_eq!(ua.stats().server_transactions, 1, "timer I = T4 after the ACK");
    run_until(&mut ua, t0 + Duration::from_secs(40));
    assert_empty(&ua);
}

#[test]
fn rejected_call_without_ack_times_out_on_timer_h() {
    let t0 = Instant::now();
    let mut ua = core(t0);
    ua.handle_datagram(
        t0,
        peer(),
        invite("c4", "z9hG4bKc4", None, 1, &offer_sdp(40000, "0")).as_bytes(),
    );
    drain(&mut ua);
    let [SipEvent::IncomingCall { call, .. }] = events(&mut ua)[..] else {
        panic!()
    };
    assert_eq!(ua.reject(t0, call, 200), Err(CommandError::InvalidStatus(200)));
    ua.reject(t0, call, 486).unwrap();
    assert_eq!(codes(&drain(&mut ua)), vec![486]);
    assert_eq!(
        events(&mut ua),
        vec![SipEvent::CallEnded {
            call,
            reason: EndReason::Rejected { code: 486 }
        }]
    );
    let sent = run_until(&mut ua, t0 + Duration::from_secs(40));
    let times: Vec<u128> = sent.iter().map(|(t, _)| (*t - t0).as_millis()).collect();
    assert_eq!(&times[..5], &[500, 1500, 3500, 7500, 11500]);
    assert!(times.iter().all(|&t| t < 32_000));
    assert_empty(&ua);
}

#[test]
fn application_errors_488_415_486_503_501_481() {
    let t0 = Instant::now();
    let mut ua = core(t0);
    let g729 = invite("e1", "z9hG4bKe1", None, 1, &offer_sdp(40000, "18"));
    ua.handle_datagram(t0, peer(), g729.as_bytes());
    assert_eq!(codes(&drain(&mut ua)), vec![100, 488]);
    let xtype =
        invite("e2", "z9hG4bKe2", None, 1, "hello").replace("application/sdp", "application/x-torture");
    ua.handle_datagram(t0, peer(), xtype.as_bytes());
    assert_eq!(codes(&drain(&mut ua)), vec![100, 415]);
    let bad = invite("e3", "z9hG4bKe3", None, 1, "not sdp at all");
    ua.handle_datagram(t0, peer(), bad.as_bytes());
    let c = codes(&drain(&mut ua));
    assert!(c == vec![100, 400] || c == vec![100, 488], "{c:?}");
    // max_calls = 2
    for i in 0..3 {
        ua.handle_datagram(
            t0,
            peer(),
            invite(
                &format!("m{i}"),
                &format!("z9hG4bKm{i}"),
                None,
                1,
                &offer_sdp(40000, "0"),
            )
            .as_bytes(),
        );
    }
    assert_eq!(codes(&drain(&mut ua)), vec![100, 100, 100, 486]);
    assert_eq!(events(&mut ua).len(), 2);
    let foo = request("FOOBAR", "f1", "z9hG4bKf1", None, 1);
    ua.handle_datagram(t0, peer(), foo.as_bytes());
    let sent = drain(&mut ua);
    assert_eq!(codes(&sent), vec![501]);
    assert!(sent[0].1.header("Allow").is_some());
    let sub = request("SUBSCRIBE", "s1", "z9hG4bKs1", None, 1);
    ua.handle_datagram(t0, peer(), sub.as_bytes());
    assert_eq!(codes(&drain(&mut ua)), vec![405]);
    ua.handle_datagram(
        t0,
        peer(),
        request("BYE", "nope", "z9hG4bKb", Some("x"), 1).as_bytes(),
    );
    assert_eq!(codes(&drain(&mut ua)), vec![481]);
    ua.handle_datagram(
        t0,
        peer(),
        request("CANCEL", "nope", "z9hG4bKc", None, 1).as_bytes(),
    );
    assert_eq!(codes(&drain(&mut ua)), vec![481]);
    let req = request("OPTIONS", "r1", "z9hG4bKr1", None, 1)
        .replace("Max-Forwards", "Require: x-nope\r\nMax-Forwards");
    ua.handle_datagram(t0, peer(), req.as_bytes());
    let sent = drain(&mut ua);
    assert_eq!(codes(&sent), vec![420]);
    assert_eq!(sent[0].1.header("Unsupported"), Some("x-nope"));
    // Stray response and ACK: dropped silently.
    let stray = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnone\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>;tag=2\r\nCall-ID: stray\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    ua.handle_datagram(t0, peer(), stray.as_bytes());
    ua.handle_datagram(
        t0,
        peer(),
        request("ACK", "nope", "z9hG4bKa", Some("x"), 1).as_bytes(),
    );
    assert!(drain(&mut ua).is_empty());
    // Shutting down: 503 with Retry-After.
    ua.begin_shutdown(t0);
    drain(&mut ua);
    ua.handle_datagram(
        t0,
        peer(),
        invite("late", "z9hG4bKlate", None, 1, &offer_sdp(40000, "0")).as_bytes(),
    );
    let sent = drain(&mut ua);
    assert_eq!(codes(&sent), vec![100, 503]);
    assert_eq!(sent[1].1.header("Retry-After"), Some("5"));
}

#[test]
fn reinvite_is_answered_and_reported() {
    let t0 = Instant::now();
    let mut ua = core(t0);
    let (call, tag) = incoming(&mut ua, t0, "r1");
    ua.handle_datagram(
        t0,
        peer(),
        request("ACK", "r1", "z9hG4bKa1", Some(&tag), 1).as_bytes(),
    );
    events(&mut ua);
    let hold = offer_sdp(41000, "0 101").replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
    ua.handle_datagram(
        t0,
        peer(),
        invite("r1", "z9hG4bKre", Some(&tag), 2, &hold).as_bytes(),
    );
    let sent = drain(&mut ua);
    assert_eq!(codes(&sent), vec![200]);
    let body = String::from_utf8(sent[0].1.body.to_vec()).unwrap();
    assert!(body.contains("m=audio 30000 "), "{body}");
    let ev = events(&mut ua);
    let [SipEvent::MediaUpdated { call: c, media }] = ev.as_slice() else {
        panic!("{ev:?}")
    };
    assert_eq!(*c, call);
    assert_eq!(media.remote_rtp, "127.0.0.1:41000".parse().unwrap());
    assert!(media.is_hold());
    // An old CSeq is refused.
    ua.handle_datagram(
        t0,
        peer(),
        invite("r1", "z9hG4bKold", Some(&tag), 1, &hold).as_bytes(),
    );
    assert_eq!(codes(&drain(&mut ua)), vec![500]);
}

#[test]
fn local_hangup_sends_bye_and_reports_after_the_answer() {
    let t0 = Instant::now();
    let mut ua = core(t0);
    let (call, tag) = incoming(&mut ua, t0, "h1");
    ua.handle_datagram(
        t0,
        peer(),
        request("ACK", "h1", "z9hG4bKa1", Some(&tag), 1).as_bytes(),
    );
    events(&mut ua);
    ua.hang_up(t0, call).unwrap();
    let sent = drain(&mut ua);
    let (dest, bye) = &sent[0];
    assert_eq!(bye.method(), Some(&Method::Bye));
    assert_eq!(*dest, peer(), "BYE goes to the Contact");
    assert_eq!(bye.tag_from(), Some(tag.as_str()));
    assert_eq!(bye.tag_to(), Some("alice1"));
    assert!(events(&mut ua).is_empty(), "ended only once the BYE is answered");
    // Timer E: 0.5, 1.5 s...
    let re = run_until(&mut ua, t0 + Duration::from_millis(1600));
    assert_eq!(re.len(), 2);
    let ok = format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: h1\r\nCSeq: {} BYE\r\nContent-Length: 0\r\n\r\n",
        bye.vias()[0],
        bye.header_from(),
        bye.header_to(),
        bye.cseq
    );
    ua.handle_datagram(t0 + Duration::from_secs(2), peer(), ok.as_bytes());
    assert_eq!(
        events(&mut ua),
        vec![SipEvent::CallEnded {
            call,
            reason: EndReason::LocalHangup
        }]
    );
    // Retransmitted 200 absorbed; timer K = T4 removes the transaction.
    ua.handle_datagram(t0 + Duration::from_secs(3), peer(), ok.as_bytes());
    assert!(drain(&mut ua).is_empty());
    run_until(&mut ua, t0 + Duration::from_secs(40));
    assert_empty(&ua);
}

fn respond_to(req: &SipMsg, code: u16, to_tag: Option<&str>, extra: &str, body: &str) -> String {
    let to = match to_tag {
        Some(t) if req.tag_to().is_none() => format!("{};tag={t}", req.header_to()),
        _ => req.header_to().to_string(),
    };
    format!(
        "SIP/2.0 {code} X\r\nVia: {}\r\nFrom: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {} {}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        req.vias()[0],
        req.header_from(),
        req.call_id(),
        req.cseq,
        req.cseq_method(),
        body.len()
    )
}

#[test]
fn registration_with_digest_refresh_and_unregister() {
    let t0 = Instant::now();
    let mut cfg = CoreConfig::new(LOCAL.parse().unwrap());
    cfg.user = "botuser".into();
    cfg.credentials = Some(DigestCredentials::new("botuser", "s3cret"));
    let mut reg = RegistrationConfig::new(peer(), "127.0.0.1");
    reg.expires = 120;
    cfg.registration = Some(reg);
    let mut ua = UserAgentCore::new(cfg, t0);
    assert_eq!(ua.poll_timeout(), Some(t0));
    ua.handle_timeout(t0);
    let sent = drain(&mut ua);
    let r1 = &sent[0].1;
    assert_eq!(r1.method(), Some(&Method::Register));
    assert_eq!(r1.header("Expires"), Some("120"));
    assert!(r1.header("Authorization").is_none());
    assert_eq!(
        events(&mut ua),
        vec![SipEvent::Registration(RegistrationState::Registering)]
    );
    let chal = "WWW-Authenticate: Digest realm=\"127.0.0.1\", nonce=\"abc\", qop=\"auth\"\r\n";
    ua.handle_datagram(t0, peer(), respond_to(r1, 401, Some("reg"), chal, "").as_bytes());
    let sent = drain(&mut ua);
    let r2 = &sent[0].1;
    let auth = r2.header("Authorization").unwrap();
    assert!(
        auth.contains("username=\"botuser\"") && auth.contains("nc=00000001"),
        "{auth}"
    );
    assert_eq!(r2.cseq, r1.cseq + 1);
    assert_eq!(r2.call_id(), r1.call_id());
    // Granted 60 s (less than asked): refresh at half.
    let contact = "Contact: <sip:botuser@127.0.0.1:5060>;expires=60\r\n";
    ua.handle_datagram(
        t0,
        peer(),
        respond_to(r2, 200, Some("reg"), contact, "").as_bytes(),
    );
    assert_eq!(
        events(&mut ua),
        vec![SipEvent::Registration(RegistrationState::Registered {
            expires: 60
        })]
    );
    assert_eq!(
        ua.stats().client_transactions,
        2,
        "timer K still running for both REGISTERs"
    );
    run_until(&mut ua, t0 + Duration::from_millis(29_999));
    assert!(events(&mut ua).is_empty());
    assert_eq!(ua.stats().client_transactions, 0);
    let sent = run_until(&mut ua, t0 + Duration::from_secs(30));
    assert_eq!(sent.len(), 1, "refresh at 30 s");
    let r3 = &sent[0].1;
    // Wrong password now: the second 401 for the same attempt is a failure, with backoff.
    let chal2 = "WWW-Authenticate: Digest realm=\"127.0.0.1\", nonce=\"def\"\r\n";
    ua.handle_datagram(
        t0 + Duration::from_secs(30),
        peer(),
        respond_to(r3, 401, Some("reg"), chal2, "").as_bytes(),
    );
    let r4 = drain(&mut ua).remove(0).1;
    assert!(r4.header("Authorization").unwrap().contains("nonce=\"def\""));
    ua.handle_datagram(
        t0 + Duration::from_secs(30),
        peer(),
        respond_to(&r4, 401, Some("reg"), chal2, "").as_bytes(),
    );
    let ev = events(&mut ua);
    assert!(
        matches!(&ev[..], [SipEvent::Registration(RegistrationState::Registering), SipEvent::Registration(RegistrationState::Failed { retry_in, .. })] if *retry_in == Duration::from_secs(2)),
        "{ev:?}"
    );
    assert!(drain(&mut ua).is_empty(), "no retry storm");
    let sent = run_until(&mut ua, t0 + Duration::from_secs(32));
    assert_eq!(sent.len(), 1, "retry after the backoff");
    // No answer at all: timer F (32 s) fails it, next backoff is 4 s.
    run_until(&mut ua, t0 + Duration::from_secs(64));
    let ev = events(&mut ua);
    assert!(ev.iter().any(|e| matches!(e, SipEvent::Registration(RegistrationState::Failed { retry_in, .. }) if *retry_in == Duration::from_secs(4))), "{ev:?}");
    // Shutdown: unregister with Expires: 0 (from a registered state).
    let sent = run_until(&mut ua, t0 + Duration::from_secs(68));
    let r5 = &sent.last().unwrap().1;
    ua.handle_datagram(
        t0 + Duration::from_secs(68),
        peer(),
        respond_to(r5, 200, Some("reg"), contact, "").as_bytes(),
    );
    events(&mut ua);
    ua.begin_shutdown(t0 + Duration::from_secs(69));
    let sent = drain(&mut ua);
    let un = &sent[0].1;
    assert_eq!(un.header("Expires"), Some("0"));
    assert!(!ua.is_shutdown_complete());
    ua.handle_datagram(
        t0 + Duration::from_secs(69),
        peer(),
        respond_to(un, 200, Some("reg"), "", "").as_bytes(),
    );
    assert_eq!(
        events(&mut ua),
        vec![SipEvent::Registration(RegistrationState::Unregistered)]
    );
    assert!(ua.is_shutdown_complete());
    assert_eq!(ua.unregistration(), Some(true));
}

#[test]
fn outbound_call_with_auth_progress_ack_and_bye() {
    let t0 = Instant::now();
    let mut cfg = CoreConfig::new(LOCAL.parse().unwrap());
    cfg.credentials = Some(DigestCredentials::new("bot", "pw"));
    let mut ua = UserAgentCore::new(cfg, t0);
    assert!(matches!(
        ua.call(t0, "bad target", peer(), rtp()),
        Err(CommandError::InvalidTarget(_))
    ));
    let call = ua.call(t0, "sip:bob@127.0.0.1:5070", peer(), rtp()).unwrap();
    let inv = drain(&mut ua).remove(0).1;
    assert_eq!(inv.method(), Some(&Method::Invite));
    assert!(String::from_utf8_lossy(&inv.body).contains("m=audio 30000 RTP/AVP 0 8 101"));
    // Timer A doubles without cap: 0.5, 1.5, 3.5, 7.5 s.
    let re = run_until(&mut ua, t0 + Duration::from_secs(8));
    assert_eq!(
        re.iter().map(|(t, _)| (*t - t0).as_millis()).collect::<Vec<_>>(),
        vec![500, 1500, 3500, 7500]
    );
    // 407: ACKed, retried with Proxy-Authorization.
    let chal = "Proxy-Authenticate: Digest realm=\"x\", nonce=\"n1\", algorithm=MD5\r\n";
    ua.handle_datagram(t0, peer(), respond_to(&inv, 407, Some("p"), chal, "").as_bytes());
    let sent = drain(&mut ua);
    assert_eq!(sent[0].1.method(), Some(&Method::Ack));
    assert_eq!(sent[0].1.top_via().branch, inv.top_via().branch);
    let inv2 = &sent[1].1;
    assert!(inv2.header("Proxy-Authorization").is_some());
    assert_eq!(inv2.cseq, inv.cseq + 1);
    ua.handle_datagram(t0, peer(), respond_to(inv2, 180, Some("bob1"), "", "").as_bytes());
    assert_eq!(events(&mut ua), vec![SipEvent::CallProgress { call, code: 180 }]);
    let answer = offer_sdp(42000, "8 101");
    let ok = respond_to(
        inv2,
        200,
        Some("bob1"),
        &format!("Contact: <sip:bob@{PEER}>\r\nContent-Type: application/sdp\r\n"),
        &answer,
    );
    ua.handle_datagram(t0, peer(), ok.as_bytes());
    let sent = drain(&mut ua);
    let ack = &sent[0].1;
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_ne!(ack.top_via().branch, inv2.top_via().branch);
    assert_eq!(ack.tag_to(), Some("bob1"));
    let ev = events(&mut ua);
    let [SipEvent::CallAnswered { media, .. }] = ev.as_slice() else {
        panic!("{ev:?}")
    };
    assert_eq!(media.remote_rtp, "127.0.0.1:42000".parse().unwrap());
    // 2xx retransmission: ACK again.
    ua.handle_datagram(t0, peer(), ok.as_bytes());
    assert_eq!(drain(&mut ua)[0].1.method(), Some(&Method::Ack));
    // BYE from the callee (as its own in-dialog request).
    let bye = format!(
        "BYE sip:bot@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {PEER};branch=z9hG4bKbb\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        ack.header_to(),
        ack.header_from(),
        ack.call_id()
    );
    ua.handle_datagram(t0, peer(), bye.as_bytes());
    assert_eq!(codes(&drain(&mut ua)), vec![200]);
    assert_eq!(
        events(&mut ua),
        vec![SipEvent::CallEnded {
            call,
            reason: EndReason::RemoteHangup
        }]
    );
    run_until(&mut ua, t0 + Duration::from_secs(120));
    assert_empty(&ua);
}

#[test]
fn outbound_call_cancel_and_refusal_and_timer_b() {
    let t0 = Instant::now();
    let mut ua = core(t0);
    let call = ua.call(t0, "sip:bob@127.0.0.1:5070", peer(), rtp()).unwrap();
    let inv = drain(&mut ua).remove(0).1;
    ua.hang_up(t0, call).unwrap();
    assert!(drain(&mut ua).is_empty(), "no CANCEL before a provisional");
    ua.handle_datagram(t0, peer(), respond_to(&inv, 180, Some("b"), "", "").as_bytes());
    let sent = drain(&mut ua);
    let cancel = &sent[0].1;
    assert_eq!(cancel.method(), Some(&Method::Cancel));
    assert_eq!(cancel.top_via().branch, inv.top_via().branch);
    ua.handle_datagram(t0, peer(), respond_to(cancel, 200, Some("b"), "", "").as_bytes());
    ua.handle_datagram(t0, peer(), respond_to(&inv, 487, Some("b"), "", "").as_bytes());
    assert_eq!(drain(&mut ua)[0].1.method(), Some(&Method::Ack));
    let ev = events(&mut ua);
    assert_eq!(
        ev.last(),
        Some(&SipEvent::CallEnded {
            call,
            reason: EndReason::LocalHangup
        })
    );
    // Refused.
    let call2 = ua.call(t0, "sip:bob@127.0.0.1:5070", peer(), rtp()).unwrap();
    let inv = drain(&mut ua).remove(0).1;
    ua.handle_datagram(t0, peer(), respond_to(&inv, 486, Some("b"), "", "").as_bytes());
    let busy = respond_to(&inv, 486, Some("b"), "", "");
    ua.handle_datagram(t0, peer(), busy.as_bytes());
    assert_eq!(
        drain(&mut ua).len(),
        2,
        "ACK, and ACK again for the retransmitted 486"
    );
    assert!(
        matches!(events(&mut ua)[..], [SipEvent::CallEnded { call: c, reason: EndReason::Refused { code: 486, .. } }] if c == call2)
    );
    // Timer B.
    let call3 = ua.call(t0, "sip:bob@127.0.0.1:5070", peer(), rtp()).unwrap();
    run_until(&mut ua, t0 + Duration::from_secs(32));
    assert_eq!(
        events(&mut ua),
        vec![SipEvent::CallEnded {
            call: call3,
            reason: EndReason::Timeout
        }]
    );
    run_until(&mut ua, t0 + Duration::from_secs(100));
    assert_empty(&ua);
}

#[test]
fn thousand_calls_leave_every_table_empty() {
    let t0 = Instant::now();
    let mut cfg = CoreConfig::new(LOCAL.parse().unwrap());
    cfg.max_calls = 10_000;
    let mut ua = UserAgentCore::new(cfg, t0);
    let mut now = t0;
    let mut ended = 0;
    for i in 0..1000u32 {
        now += Duration::from_millis(10);
        let cid = format!("k{i}");
        let kind = i % 5;
        ua.handle_datagram(
            now,
            peer(),
            invite(
                &cid,
                &format!("z9hG4bK{cid}"),
                None,
                1,
                &offer_sdp(40000, "0 101"),
            )
            .as_bytes(),
        );
        let sent = drain(&mut ua);
        assert_eq!(codes(&sent), vec![100]);
        let evs = events(&mut ua);
        ended += evs
            .iter()
            .filter(|e| matches!(e, SipEvent::CallEnded { .. }))
            .count();
        let call = evs
            .into_iter()
            .find_map(|e| match e {
                SipEvent::IncomingCall { call, .. } => Some(call),
                _ => None,
            })
            .unwrap();
        match kind {
            // caller cancels
            0 => ua.handle_datagram(
                now,
                peer(),
                request("CANCEL", &cid, &format!("z9hG4bK{cid}"), None, 1).as_bytes(),
            ),
            // we reject
            1 => ua.reject(now, call, 603).unwrap(),
            _ => {
                ua.answer(now, call, rtp()).unwrap();
                let tag = drain(&mut ua).remove(0).1.tag_to().unwrap().to_string();
                ua.handle_datagram(
                    now,
                    peer(),
                    request("ACK", &cid, &format!("z9hG4bKa{cid}"), Some(&tag), 1).as_bytes(),
                );
                if kind == 2 {
                    ua.handle_datagram(
                        now,
                        peer(),
                        request("BYE", &cid, &format!("z9hG4bKb{cid}"), Some(&tag), 2).as_bytes(),
                    );
                } else {
                    ua.hang_up(now, call).unwrap();
                    let sent = drain(&mut ua);
                    let bye = &sent.last().unwrap().1;
                    ua.handle_datagram(now, peer(), respond_to(bye, 200, None, "", "").as_bytes());
                }
            }
        }
        drain(&mut ua);
        // Non-2xx finals get their ACK.
        if kind <= 1 {
            ua.handle_datagram(
                now,
                peer(),
                request("ACK", &cid, &format!("z9hG4bK{cid}"), Some("x"), 1).as_bytes(),
            );
        }
        ua.handle_timeout(now);
        drain(&mut ua);
    }
    ended += events(&mut ua)
        .into_iter()
        .filter(|e| matches!(e, SipEvent::CallEnded { .. }))
        .count();
    assert_eq!(ended, 1000, "exactly one CallEnded per call");
    assert_eq!(ua.stats().calls, 0);
    assert_eq!(ua.stats().dialogs, 0);
    run_until(&mut ua, now + Duration::from_secs(60));
    assert_empty(&ua);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn mutate(base: &[u8], edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
        let mut b = base.to_vec();
        for &(i, v) in edits {
            if !b.is_empty() {
                let n = b.len();
                b[i % n] = v;
            }
        }
        b.truncate(cut.max(1).min(b.len()));
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let t0 = Instant::now();
            let mut ua = core(t0);
            ua.handle_datagram(t0, peer(), &data);
            while ua.poll_transmit().is_some() {}
            ua.handle_timeout(t0 + Duration::from_secs(100));
        }

        #[test]
        fn mutated_messages_are_answered_or_dropped(
            which in 0usize..4,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
        ) {
            let t0 = Instant::now();
            let mut ua = core(t0);
            let bases = [
                invite("p1", "z9hG4bKp1", None, 1, &offer_sdp(40000, "0 8 101")),
                request("OPTIONS", "p2", "z9hG4bKp2", None, 1),
                request("BYE", "p3", "z9hG4bKp3", Some("t"), 2),
                request("CANCEL", "p4", "z9hG4bKp4", None, 1),
            ];
            let bytes = mutate(bases[which].as_bytes(), &edits, cut);
            let before = ua.stats();
            ua.handle_datagram(t0, peer(), &bytes);
            let mut answered = 0;
            while let Some(t) = ua.poll_transmit() {
                answered += 1;
                // Whatever we send is a well-formed SIP message.
                let reparsed = rsip::SipMessage::try_from(t.payload.as_slice());
                prop_assert!(reparsed.is_ok(), "{:?} from {:?}",
                    String::from_utf8_lossy(&t.payload), String::from_utf8_lossy(&bytes));
            }
            let after = ua.stats();
            let dropped = after.dropped > before.dropped;
            let keepalive = bytes.iter().all(|b| b.is_ascii_whitespace());
            prop_assert!(answered > 0 || dropped || keepalive || after.calls > 0 || bytes.starts_with(b"ACK"),
                "neither answered nor counted: {:?}", String::from_utf8_lossy(&bytes));
            while ua.poll_event().is_some() {}
            ua.abandon();
            ua.handle_timeout(t0 + Duration::from_secs(100));
            prop_assert_eq!(ua.stats().server_transactions, 0);
        }
    }
}

#[test]
fn ring_timeouts_reject_unanswered_and_cancel_unanswered_outgoing() {
    let t0 = Instant::now();
    let mut cfg = CoreConfig::new(LOCAL.parse().unwrap());
    cfg.ring_timeout = Duration::from_secs(60);
    let mut ua = UserAgentCore::new(cfg, t0);
    ua.handle_datagram(
        t0,
        peer(),
        invite("rt1", "z9hG4bKrt1", None, 1, &offer_sdp(40000, "0")).as_bytes(),
    );
    drain(&mut ua);
    let [SipEvent::IncomingCall { call: incoming, .. }] = events(&mut ua)[..] else {
        panic!()
    };
    let out = ua.call(t0, "sip:bob@127.0.0.1:5070", peer(), rtp()).unwrap();
    let inv = drain(&mut ua).remove(0).1;
    ua.handle_datagram(t0, peer(), respond_to(&inv, 180, Some("b"), "", "").as_bytes());
    events(&mut ua);
    assert!(
        run_until(&mut ua, t0 + Duration::from_millis(59_999))
            .iter()
            .all(|(_, m)| m.method() == Some(&Method::Invite))
    );
    let sent = run_until(&mut ua, t0 + Duration::from_secs(60));
    assert!(
        sent.iter().any(|(_, m)| m.status() == Some(480)),
        "unanswered incoming call gets 480"
    );
    assert!(
        sent.iter().any(|(_, m)| m.method() == Some(&Method::Cancel)),
        "unanswered outgoing call is cancelled"
    );
    assert_eq!(
        events(&mut ua),
        vec![SipEvent::CallEnded {
            call: incoming,
            reason: EndReason::Rejected { code: 480 }
        }]
    );
    // The callee never answers the CANCEL nor sends 487: gone 64*T1 later, tables empty.
    run_until(&mut ua, t0 + Duration::from_secs(92));
    assert_eq!(
        events(&mut ua),
        vec![SipEvent::CallEnded {
            call: out,
            reason: EndReason::Timeout
        }]
    );
    run_until(&mut ua, t0 + Duration::from_secs(200));
    assert_empty(&ua);
}

#[test]
fn record_route_is_copied_and_followed() {
    let t0 = Instant::now();
    let mut ua = core(t0);
    let proxy: SocketAddr = "127.0.0.1:5090".parse().unwrap();
    let inv = invite("rr1", "z9hG4bKrr1", None, 1, &offer_sdp(40000, "0")).replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nRecord-Route: <sip:127.0.0.1:5090;lr>\r\n",
    );
    ua.handle_datagram(t0, proxy, inv.as_bytes());
    drain(&mut ua);
    let [SipEvent::IncomingCall { call, .. }] = events(&mut ua)[..] else {
        panic!()
    };
    ua.ring(t0, call).unwrap();
    ua.answer(t0, call, rtp()).unwrap();
    let sent = drain(&mut ua);
    for (_, m) in &sent {
        assert_eq!(
            m.header("Record-Route"),
            Some("<sip:127.0.0.1:5090;lr>"),
            "{:?}",
            m.status()
        );
    }
    let tag = sent[1].1.tag_to().unwrap().to_string();
    ua.handle_datagram(
        t0,
        proxy,
        request("ACK", "rr1", "z9hG4bKrra", Some(&tag), 1).as_bytes(),
    );
    ua.hang_up(t0, call).unwrap();
    let sent = drain(&mut ua);
    let (dest, bye) = &sent[0];
    assert_eq!(*dest, proxy, "in-dialog requests follow the route set");
    assert_eq!(bye.header("Route"), Some("<sip:127.0.0.1:5090;lr>"));
}

// ------------------------------------------- staged registration (reconfiguration)

/// A core registered as `botuser` at `peer()` (challenged once, granted 120 s).
fn registered_core(t0: Instant) -> UserAgentCore {
    let mut cfg = CoreConfig::new(LOCAL.parse().unwrap());
    cfg.user = "botuser".into();
    cfg.credentials = Some(DigestCredentials::new("botuser", "s3cret"));
    let mut reg = RegistrationConfig::new(peer(), "127.0.0.1");
    reg.expires = 120;
    cfg.registration = Some(reg);
    let mut ua = UserAgentCore::new(cfg, t0);
    ua.handle_timeout(t0);
    let r = drain(&mut ua).remove(0).1;
    ua.handle_datagram(
        t0,
        peer(),
        respond_to(&r, 200, Some("reg"), "Expires: 120\r\n", "").as_bytes(),
    );
    assert_eq!(
        events(&mut ua),
        vec![
            SipEvent::Registration(RegistrationState::Registering),
            SipEvent::Registration(RegistrationState::Registered { expires: 120 })
        ]
    );
    ua
}

const CHALLENGE: &str = "WWW-Authenticate: Digest realm=\"127.0.0.1\", nonce=\"n1\", qop=\"auth\"\r\n";

fn other_registrar() -> SocketAddr {
    "127.0.0.1:5080".parse().unwrap()
}

/// Stages `user` (without credentials) at `other_registrar()`; returns its REGISTER.
fn stage_at_other_registrar(ua: &mut UserAgentCore, now: Instant, user: &str) -> SipMsg<'static> {
    let cfg = RegistrationConfig::new(other_registrar(), "127.0.0.1");
    ua.stage_registration(now, cfg, user, None).unwrap();
    drain(ua).remove(0).1
}

/// Answers `req` with a 401 challenge from `registrar`; returns the retry, which must
/// carry `user`'s digest.
fn challenge(
    ua: &mut UserAgentCore,
    now: Instant,
    registrar: SocketAddr,
    req: &SipMsg,
    user: &str,
) -> SipMsg<'static> {
    ua.handle_datagram(
        now,
        registrar,
        respond_to(req, 401, Some("r"), CHALLENGE, "").as_bytes(),
    );
    let retry = drain(ua).remove(0).1;
    let auth = retry.header("Authorization").unwrap();
    assert!(auth.contains(&format!("username=\"{user}\"")), "{auth}");
    retry
}

#[test]
fn staged_registration_is_registered_first_then_swapped_and_the_old_binding_removed() {
    let t0 = Instant::now();
    let mut ua = registered_core(t0);
    let old_call_id = ua.registration.as_ref().unwrap().call_id.clone();
    let t1 = t0 + Duration::from_secs(1);
    ua.stage_registration(
        t1,
        RegistrationConfig::new(other_registrar(), "127.0.0.1"),
        "newbot",
        Some(DigestCredentials::new("newbot", "pw2")),
    )
    .unwrap();
    assert_eq!(ua.staged_registration(), Some(StagedRegistration::Pending));
    let sent = drain(&mut ua);
    assert_eq!(sent.len(), 1);
    let (dest, r1) = &sent[0];
    assert_eq!(*dest, other_registrar());
    assert!(
        r1.header_to().contains("sip:newbot@127.0.0.1"),
        "{}",
        r1.header_to()
    );
    assert_ne!(r1.call_id(), old_call_id, "a binding of its own");
    assert_eq!(r1.header("Contact"), Some("<sip:newbot@127.0.0.1:5060>"));
    let r2 = challenge(&mut ua, t1, other_registrar(), r1, "newbot");
    let t2 = t1 + Duration::from_millis(40);
    ua.handle_datagram(
        t2,
        other_registrar(),
        respond_to(&r2, 200, Some("r"), "Expires: 300\r\n", "").as_bytes(),
    );
    assert_eq!(
        ua.staged_registration(),
        Some(StagedRegistration::Registered {
            expires: 300,
            took: Duration::from_millis(40)
        })
    );
    assert!(
        events(&mut ua).is_empty(),
        "the staged binding is not reported as the UA's"
    );
    assert!(
        drain(&mut ua).is_empty(),
        "the old binding is kept until the commit"
    );
    // Swap: the new one is announced, the old one unregistered at its registrar.
    ua.commit_registration(t2).unwrap();
    assert_eq!(
        events(&mut ua),
        vec![SipEvent::Registration(RegistrationState::Registered {
            expires: 300
        })]
    );
    assert_eq!(ua.config().user, "newbot");
    assert_eq!(ua.staged_registration(), None);
    let sent = drain(&mut ua);
    assert_eq!(sent.len(), 1);
    let (dest, un) = &sent[0];
    assert_eq!(*dest, peer());
    assert_eq!(un.call_id(), old_call_id);
    assert_eq!(un.header("Expires"), Some("0"));
    assert_eq!(un.header("Contact"), Some("<sip:botuser@127.0.0.1:5060>"));
    let un2 = challenge(&mut ua, t2, peer(), un, "botuser");
    ua.handle_datagram(t2, peer(), respond_to(&un2, 200, Some("r"), "", "").as_bytes());
    assert!(ua.reg_retiring.is_empty(), "forgotten once removed");
    assert!(events(&mut ua).is_empty());
    // The new binding refreshes itself (300 s granted: 30 s before expiry).
    let sent = run_until(&mut ua, t2 + Duration::from_secs(270));
    let refresh: Vec<_> = sent
        .iter()
        .filter(|(_, m)| m.method() == Some(&Method::Register))
        .collect();
    assert_eq!(refresh.len(), 1, "{sent:?}");
    assert!(refresh[0].1.header_to().contains("newbot"));
    // Shutdown removes the new binding.
    ua.handle_datagram(
        t2 + Duration::from_secs(270),
        other_registrar(),
        respond_to(&refresh[0].1, 200, Some("r"), "Expires: 300\r\n", "").as_bytes(),
    );
    ua.begin_shutdown(t2 + Duration::from_secs(271));
    let un = drain(&mut ua).remove(0);
    assert_eq!((un.0, un.1.header("Expires")), (other_registrar(), Some("0")));
}

#[test]
fn refused_or_unanswered_staged_registration_leaves_the_old_one_alone() {
    let t0 = Instant::now();
    let mut ua = registered_core(t0);
    // Wrong password: the digest retry is refused with a fresh challenge, then 403.
    ua.stage_registration(
        t0,
        RegistrationConfig::new(peer(), "127.0.0.1"),
        "botuser",
        Some(DigestCredentials::new("botuser", "WRONG")),
    )
    .unwrap();
    let r1 = drain(&mut ua).remove(0).1;
    let r2 = challenge(&mut ua, t0, peer(), &r1, "botuser");
    ua.handle_datagram(t0, peer(), respond_to(&r2, 403, Some("r"), "", "").as_bytes());
    assert_eq!(
        ua.staged_registration(),
        Some(StagedRegistration::Failed {
            code: Some(403),
            reason: "403 X".into()
        })
    );
    assert!(drain(&mut ua).is_empty(), "a staged registration is not retried");
    assert!(events(&mut ua).is_empty());
    assert_eq!(
        ua.commit_registration(t0),
        Err(CommandError::NoStagedRegistration)
    );
    assert!(ua.abort_registration(t0));
    assert!(drain(&mut ua).is_empty(), "nothing was bound: no Expires: 0");
    assert_eq!(
        ua.config().credentials,
        Some(DigestCredentials::new("botuser", "s3cret"))
    );
    // Unreachable registrar: timer F fails it (the driver gives up sooner).
    stage_at_other_registrar(&mut ua, t0, "botuser");
    run_until(&mut ua, t0 + Duration::from_secs(33));
    assert_eq!(
        ua.staged_registration(),
        Some(StagedRegistration::Failed {
            code: None,
            reason: "408 no response from registrar".into()
        })
    );
    assert!(ua.abort_registration(t0 + Duration::from_secs(33)));
    // The old binding still refreshes at its registrar, as before.
    let sent = run_until(&mut ua, t0 + Duration::from_secs(90));
    assert!(
        sent.iter()
            .any(|(_, m)| m.method() == Some(&Method::Register) && m.header_to().contains("botuser")),
        "{sent:?}"
    );
    assert!(events(&mut ua).contains(&SipEvent::Registration(RegistrationState::Registering)));
}

#[test]
fn same_binding_is_refreshed_not_removed_and_remove_unregisters() {
    let t0 = Instant::now();
    let mut ua = registered_core(t0);
    // New password and expiry, same registrar, user and domain: the same binding.
    let mut cfg = RegistrationConfig::new(peer(), "127.0.0.1");
    cfg.expires = 600;
    ua.stage_registration(t0, cfg, "botuser", Some(DigestCredentials::new("botuser", "new")))
        .unwrap();
    let r = drain(&mut ua).remove(0).1;
    assert_eq!(r.header("Expires"), Some("600"));
    ua.handle_datagram(
        t0,
        peer(),
        respond_to(&r, 200, Some("r"), "Expires: 600\r\n", "").as_bytes(),
    );
    ua.commit_registration(t0).unwrap();
    assert!(
        drain(&mut ua).is_empty(),
        "no Expires: 0 for the binding just refreshed"
    );
    assert_eq!(
        ua.config().credentials,
        Some(DigestCredentials::new("botuser", "new"))
    );
    // A staged registration accepted then aborted (another component failed) is
    // removed again when it is another binding...
    let r = stage_at_other_registrar(&mut ua, t0, "x");
    ua.handle_datagram(
        t0,
        other_registrar(),
        respond_to(&r, 200, Some("r"), "", "").as_bytes(),
    );
    assert!(ua.abort_registration(t0));
    let un = drain(&mut ua).remove(0);
    assert_eq!((un.0, un.1.header("Expires")), (other_registrar(), Some("0")));
    ua.handle_datagram(
        t0,
        other_registrar(),
        respond_to(&un.1, 200, Some("r"), "", "").as_bytes(),
    );
    // ...and removing the registration unregisters the active binding; shutdown then
    // completes without one.
    assert!(ua.remove_registration(t0));
    assert!(!ua.remove_registration(t0));
    let un = drain(&mut ua).remove(0);
    assert_eq!((un.0, un.1.header("Expires")), (peer(), Some("0")));
    ua.begin_shutdown(t0);
    assert!(!ua.is_shutdown_complete(), "the removal is still in flight");
    ua.handle_datagram(t0, peer(), respond_to(&un.1, 200, Some("r"), "", "").as_bytes());
    assert!(ua.is_shutdown_complete());
    assert_eq!(ua.unregistration(), None);
    assert!(ua.config().registration.is_none());
    assert!(
        ua.stage_registration(t0, RegistrationConfig::new(peer(), "h"), "u", None)
            .is_err()
    );
}
