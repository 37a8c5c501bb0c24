//! SIPp against the real UDP user agent: 200 calls at 20 calls/s answered with 0
//! failures (the acceptance run), a few calls streaming RTP, and the UA calling
//! SIPp's built-in UAS (outbound calls).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod peers_support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use callbot_sip::{EndReason, SipEvent};
use callbot_testkit::sipp::{SippCodec, SippUac, SippUas, UacMedia};
use peers_support::Bot;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[test]
fn heavy_sipp_200_calls_at_20_per_second() {
    if callbot_testkit::tools::require("sipp").is_none() {
        return;
    }
    let mut bot = Bot::start(LO);
    let addr = bot.addr();
    let stats = bot.run_while(|| {
        SippUac::new(addr, 200, 20.0)
            .hold(Duration::from_millis(500))
            .run()
            .unwrap()
    });
    println!(
        "SIPp: created={} successful={} failed={} retrans={} setup_avg_ms={:?} bye_avg_ms={:?}",
        stats.created,
        stats.successful,
        stats.failed,
        stats.retransmissions,
        stats.setup_avg_ms,
        stats.bye_avg_ms
    );
    assert_eq!(stats.created, 200, "{stats:?}");
    assert_eq!(stats.successful, 200, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert_eq!(stats.exit_code, Some(0));
    // The application saw every call, and each ended by the caller's BYE.
    assert_eq!(bot.incoming(), 200);
    bot.pump_until(Duration::from_secs(5), |b| b.ended().len() == 200);
    let ended = bot.ended();
    assert_eq!(ended.len(), 200);
    assert!(
        ended.iter().all(|(_, r)| *r == EndReason::RemoteHangup),
        "{ended:?}"
    );
    // No call or dialog is left in the tables.
    let st = bot.wait_no_calls(Duration::from_secs(5));
    assert_eq!((st.calls, st.dialogs), (0, 0), "{st:?}");
}

#[test]
fn heavy_sipp_calls_with_rtp_pcma_ipv6() {
    if callbot_testkit::tools::require("sipp").is_none() || callbot_testkit::tools::require("sox").is_none() {
        return;
    }
    let Some(shared) = callbot_testkit::shared_dir() else {
        callbot_testkit::tools::missing("../shared/peers/audio");
        return;
    };
    let mut bot = Bot::start(IpAddr::V6(Ipv6Addr::LOCALHOST));
    let addr = bot.addr();
    let stats = bot.run_while(|| {
        SippUac::new(addr, 4, 4.0)
            .hold(Duration::from_secs(1))
            .codec(SippCodec::Pcma)
            .media(UacMedia::Rtp {
                audio: shared.join("peers/audio/caller_yes.wav"),
            })
            .run()
            .unwrap()
    });
    assert_eq!((stats.successful, stats.failed), (4, 0), "{stats:?}");
    // The offer was PCMA only: the UA must have chosen it.
    for (_, e) in &bot.events {
        if let SipEvent::IncomingCall { media, .. } = e {
            assert_eq!(media.codec, callbot_sip::AudioCodec::Pcma);
            assert_eq!(media.telephone_event, Some(101));
            assert!(media.remote_rtp.is_ipv6());
        }
    }
    assert_eq!(bot.incoming(), 4);
}

#[test]
fn heavy_ua_calls_sipp_uas_and_hangs_up() {
    if callbot_testkit::tools::require("sipp").is_none() {
        return;
    }
    let uas = SippUas::start(false).unwrap();
    let mut bot = Bot::start(LO);
    let target = format!("sip:service@127.0.0.1:{}", uas.addr().port());
    let mut calls = Vec::new();
    for _ in 0..3 {
        let call = bot.handle.call(&target, uas.addr(), bot.rtp()).unwrap();
        assert!(
            bot.pump_until(Duration::from_secs(5), |b| b.events.iter().any(
                |(_, e)| matches!(e, SipEvent::CallAnswered { call: c, .. } if *c == call)
            )),
            "SIPp UAS did not answer: {:?}",
            bot.events
        );
        calls.push(call);
    }
    // SIPp's built-in UAS answers PCMU.
    for (_, e) in &bot.events {
        if let SipEvent::CallAnswered { media, .. } = e {
            assert_eq!(media.codec, callbot_sip::AudioCodec::Pcmu);
        }
    }
    for c in &calls {
        bot.handle.hang_up(*c).unwrap();
    }
    assert!(bot.pump_until(Duration::from_secs(5), |b| b.ended().len() == 3));
    assert!(
        bot.ended().iter().all(|(_, r)| *r == EndReason::LocalHangup),
        "{:?}",
        bot.ended()
    );
    let st = uas
        .wait_stats(Duration::from_secs(10), |s| s.successful == 3)
        .unwrap();
    assert_eq!((st.incoming, st.successful, st.failed), (3, 3, 0), "{st:?}");
    let mut h = bot.handle;
    let rep = h.shutdown(Instant::now() + Duration::from_secs(2));
    assert_eq!(rep.calls_hung_up, 0, "{rep}");
}
