//! Kamailio 5.6 as a registrar demanding digest auth, against the real UDP user agent:
//! right password registers, wrong password fails without a retry storm, refresh at the
//! granted Expires, unregister on shutdown removes the binding, and a call routed through
//! Kamailio to the registered UA is answered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod peers_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use callbot_sip::digest::DigestCredentials;
use callbot_sip::{RegistrationConfig, RegistrationState, SipConfig, SipError};
use callbot_testkit::kamailio::{Kamailio, KamailioConfig, RegistrarEvent};
use peers_support::Bot;

const USER: &str = "botuser";
const PASS: &str = "s3cret";
const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn registrar(cfg: KamailioConfig) -> Option<Kamailio> {
    callbot_testkit::tools::require("kamailio")?;
    Some(Kamailio::start(&cfg).unwrap())
}

fn bot_for(reg: &Kamailio, password: &str, expires: u32) -> Bot {
    let mut cfg = SipConfig::new(SocketAddr::new(LO, 0));
    cfg.user = USER.into();
    cfg.credentials = Some(DigestCredentials::new(USER, password));
    let mut r = RegistrationConfig::new(reg.addr(), "127.0.0.1");
    r.expires = expires;
    cfg.registration = Some(r);
    Bot::start_with(cfg)
}

fn registered(b: &Bot) -> Option<u32> {
    b.registrations().iter().find_map(|(_, s)| match s {
        RegistrationState::Registered { expires } => Some(*expires),
        _ => None,
    })
}

/// Sends OPTIONS for `sip:USER@registrar` and returns the final status (404 when no
/// binding; routed to the UA, which answers 200, when registered).
fn options_status(reg: &Kamailio) -> Option<u16> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let lport = sock.local_addr().unwrap().port();
    let uri = reg.user_uri(USER);
    let msg = format!(
        "OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK-probe{lport};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1:{lport}>;tag=p{lport}\r\nTo: <{uri}>\r\n\
         Call-ID: probe-{lport}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    sock.send_to(msg.as_bytes(), reg.addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            return None;
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        let code: u16 = text.get(8..11)?.parse().ok()?;
        if code >= 200 {
            return Some(code);
        }
    }
    None
}

#[test]
fn heavy_kamailio_register_route_call_unregister() {
    let Some(reg) = registrar(KamailioConfig::new(USER, PASS)) else {
        return;
    };
    let mut bot = bot_for(&reg, PASS, 300);
    assert!(
        bot.pump_until(Duration::from_secs(5), |b| registered(b).is_some()),
        "not registered: {:?}\n{}",
        bot.registrations(),
        reg.log()
    );
    assert_eq!(registered(&bot), Some(300));
    let ok = reg
        .wait_event(Duration::from_secs(2), |e| {
            matches!(e, RegistrarEvent::RegOk { .. })
        })
        .unwrap();
    let RegistrarEvent::RegOk { contact, .. } = ok else {
        unreachable!()
    };
    assert!(contact.contains(&bot.addr().port().to_string()), "{contact}");
    // The first REGISTER was challenged, the second carried our digest (qop=auth, MD5).
    assert_eq!(reg.count(|e| matches!(e, RegistrarEvent::Challenge { .. })), 1);
    assert_eq!(reg.count(|e| matches!(e, RegistrarEvent::BadPassword { .. })), 0);

    // A call through the registrar reaches the UA and is answered.
    if let Some(wav) = callbot_testkit::shared_dir().map(|s| s.join("peers/audio/caller_yes.wav"))
        && callbot_testkit::tools::require("baresip").is_some()
    {
        let r = bot.run_while(|| {
            callbot_testkit::baresip::BaresipCall::new(reg.addr(), &wav)
                .callee_user(USER)
                .hold(Duration::from_secs(1))
                .run()
                .unwrap()
        });
        assert!(r.answered, "{}", r.log);
        assert_eq!(r.bye_response.as_deref(), Some("SIP/2.0 200 OK"));
        assert!(
            reg.wait_event(
                Duration::from_secs(2),
                |e| matches!(e, RegistrarEvent::Routed { method, .. } if method == "INVITE")
            )
            .is_some()
        );
        assert_eq!(bot.incoming(), 1);
    }
    // OPTIONS through the registrar is routed to the UA too.
    let mut status = None;
    bot.run_while(|| status = options_status(&reg));
    assert_eq!(status, Some(200));

    // Shutdown unregisters; the binding is gone.
    let rep = bot.handle.shutdown(Instant::now() + Duration::from_secs(3));
    assert_eq!(rep.unregistered, Some(true), "{rep}");
    assert!(
        reg.wait_event(Duration::from_secs(2), |e| matches!(
            e,
            RegistrarEvent::Unregistered { .. }
        ))
        .is_some()
    );
    assert_eq!(options_status(&reg), Some(404));
}

#[test]
fn heavy_kamailio_wrong_password_fails_without_retry_storm() {
    let Some(reg) = registrar(KamailioConfig::new(USER, PASS)) else {
        return;
    };
    let mut bot = bot_for(&reg, "WRONG", 300);
    let failed = |b: &Bot| {
        b.registrations()
            .iter()
            .any(|(_, s)| matches!(s, RegistrationState::Failed { .. }))
    };
    assert!(
        bot.pump_until(Duration::from_secs(5), failed),
        "{:?}",
        bot.registrations()
    );
    assert_eq!(registered(&bot), None);
    let first_fail = Instant::now();
    // Watch for 4 s more: a retry with backoff, not a storm.
    bot.pump(Duration::from_secs(4));
    let bad = reg.count(|e| matches!(e, RegistrarEvent::BadPassword { .. }));
    let all = reg.count(|e| {
        matches!(
            e,
            RegistrarEvent::BadPassword { .. } | RegistrarEvent::Challenge { .. }
        )
    });
    println!(
        "after {:?}: {bad} bad-password REGISTERs, {all} REGISTERs",
        first_fail.elapsed()
    );
    assert!(bad >= 1, "{}", reg.log());
    assert!(all <= 6, "retry storm: {all} REGISTERs in ~5 s\n{}", reg.log());
    let rep = bot.handle.shutdown(Instant::now() + Duration::from_secs(2));
    assert!(rep.thread_joined, "{rep}");
}

#[test]
fn heavy_kamailio_refresh_at_granted_expires_no_qop() {
    let mut cfg = KamailioConfig::new(USER, PASS);
    cfg.min_expires = 1;
    cfg.max_expires = 4;
    cfg.qop = false;
    let Some(reg) = registrar(cfg) else {
        return;
    };
    // We ask for 3600 s; the registrar grants 4 s: the UA must refresh before 4 s.
    let mut bot = bot_for(&reg, PASS, 3600);
    assert!(bot.pump_until(Duration::from_secs(5), |b| registered(b).is_some()));
    assert_eq!(registered(&bot), Some(4), "{:?}", bot.registrations());
    let t0 = Instant::now();
    bot.pump(Duration::from_secs(9));
    let oks = reg.count(|e| matches!(e, RegistrarEvent::RegOk { .. }));
    println!(
        "{oks} successful REGISTERs in {:?} with a granted Expires of 4 s",
        t0.elapsed()
    );
    assert!((3..=8).contains(&oks), "{oks} REGISTERs\n{}", reg.log());
    // The binding never lapsed: every check in between routes to us.
    let mut status = None;
    bot.run_while(|| status = options_status(&reg));
    assert_eq!(status, Some(200));
    assert_eq!(reg.count(|e| matches!(e, RegistrarEvent::BadPassword { .. })), 0);
}

/// Changing the registration while running, against two real registrars
/// (`SipHandle::{stage,commit,remove}_registration`): the same binding with a new
/// expiry is refreshed in place and never removed; a wrong password at B is refused
/// (B answers it with 403) with nothing bound there while A still routes to the UA; B
/// for real gets the
/// new binding first, then A's is removed; removing unregisters.
#[test]
fn heavy_kamailio_registration_changes_while_running() {
    let Some(a) = registrar(KamailioConfig::new(USER, PASS)) else {
        return;
    };
    let mut b_cfg = KamailioConfig::new(USER, PASS);
    b_cfg.wrong_password_403 = true;
    let b = Kamailio::start(&b_cfg).unwrap();
    let mut bot = bot_for(&a, PASS, 120);
    assert!(
        bot.pump_until(Duration::from_secs(5), |b| registered(b).is_some()),
        "{}",
        a.log()
    );
    let creds = |pw: &str| Some(DigestCredentials::new(USER, pw));
    let soon = || Instant::now() + Duration::from_secs(3);
    let unregistered = |k: &Kamailio| k.count(|e| matches!(e, RegistrarEvent::Unregistered { .. }));
    let routes = |bot: &mut Bot, k: &Kamailio| {
        let mut status = None;
        bot.run_while(|| status = options_status(k));
        status
    };

    // Same binding, new expiry: refreshed in place, never removed.
    let mut same = RegistrationConfig::new(a.addr(), "127.0.0.1");
    same.expires = 300;
    let (expires, _) = bot
        .handle
        .stage_registration(same, USER, creds(PASS), soon())
        .unwrap();
    assert_eq!(expires, 300);
    bot.handle.commit_registration().unwrap();
    bot.pump(Duration::from_millis(300));
    assert_eq!(unregistered(&a), 0, "{}", a.log());
    assert_eq!(routes(&mut bot, &a), Some(200));

    // Wrong password at B: refused, nothing bound there, A still routes.
    let t = Instant::now();
    let e = bot
        .handle
        .stage_registration(
            RegistrationConfig::new(b.addr(), "127.0.0.1"),
            USER,
            creds("WRONG"),
            soon(),
        )
        .unwrap_err();
    println!("wrong password refused in {:?}: {e}", t.elapsed());
    assert!(matches!(e, SipError::Registration { code: Some(403), .. }), "{e}");
    assert!(bot.handle.commit_registration().is_err(), "nothing staged");
    assert_eq!(routes(&mut bot, &b), Some(404));
    assert_eq!(routes(&mut bot, &a), Some(200));

    // B for real: registered first, swapped in, A's binding removed.
    let t = Instant::now();
    let (_, took) = bot
        .handle
        .stage_registration(
            RegistrationConfig::new(b.addr(), "127.0.0.1"),
            USER,
            creds(PASS),
            soon(),
        )
        .unwrap();
    bot.handle.commit_registration().unwrap();
    let swapped = t.elapsed();
    assert!(
        a.wait_event(Duration::from_secs(3), |e| matches!(
            e,
            RegistrarEvent::Unregistered { .. }
        ))
        .is_some(),
        "{}",
        a.log()
    );
    println!(
        "A -> B: new binding accepted {took:?} after its first REGISTER, swapped after {swapped:?}, A's binding removed after {:?}",
        t.elapsed()
    );
    assert_eq!(routes(&mut bot, &b), Some(200));
    assert_eq!(routes(&mut bot, &a), Some(404));

    // Removed: B's binding gone; shutdown has nothing left to unregister.
    assert!(bot.handle.remove_registration().unwrap());
    assert!(
        b.wait_event(Duration::from_secs(3), |e| matches!(
            e,
            RegistrarEvent::Unregistered { .. }
        ))
        .is_some()
    );
    assert_eq!(routes(&mut bot, &b), Some(404));
    let rep = bot.handle.shutdown(soon());
    assert_eq!(rep.unregistered, None, "{rep}");
    assert!(rep.thread_joined, "{rep}");
}
