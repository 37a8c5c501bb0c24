//! baresip 1.0.0 calling the real UDP user agent: the caller hangs up, and the UA hangs
//! up on the caller; IPv4 and IPv6.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod peers_support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use callbot_sip::{EndReason, SipEvent};
use callbot_testkit::baresip::{BaresipCall, BaresipCodecs, CallEnd};
use peers_support::Bot;

fn audio() -> Option<PathBuf> {
    if callbot_testkit::tools::require("baresip").is_none()
        || callbot_testkit::tools::require("sox").is_none()
    {
        return None;
    }
    let Some(shared) = callbot_testkit::shared_dir() else {
        callbot_testkit::tools::missing("../shared/peers/audio");
        return None;
    };
    Some(shared.join("peers/audio/caller_yes.wav"))
}

#[test]
fn heavy_baresip_calls_and_hangs_up() {
    let Some(wav) = audio() else { return };
    let mut bot = Bot::start(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let addr = bot.addr();
    let r = bot.run_while(|| {
        BaresipCall::new(addr, &wav)
            .hold(Duration::from_secs(2))
            .codecs(BaresipCodecs::PcmaPcmu)
            .run()
            .unwrap()
    });
    assert!(r.answered, "{}", r.log);
    assert_eq!(r.ended_by, CallEnd::LocalHangup);
    assert_eq!(r.bye_response.as_deref(), Some("SIP/2.0 200 OK"), "{}", r.log);
    assert!(bot.pump_until(Duration::from_secs(3), |b| !b.ended().is_empty()));
    assert_eq!(bot.ended()[0].1, EndReason::RemoteHangup);
    // baresip offered PCMA first; the UA prefers PCMU and both were offered.
    let media = bot
        .events
        .iter()
        .find_map(|(_, e)| match e {
            SipEvent::IncomingCall { media, .. } => Some(media.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(media.telephone_event, Some(101));
    assert_eq!(r.codec.as_deref(), Some(media.codec.encoding_name()));
    assert!(
        bot.events
            .iter()
            .any(|(_, e)| matches!(e, SipEvent::CallConfirmed { .. }))
    );
    let st = bot.wait_no_calls(Duration::from_secs(3));
    assert_eq!((st.calls, st.dialogs), (0, 0));
}

#[test]
fn heavy_ua_hangs_up_on_baresip_ipv6() {
    let Some(wav) = audio() else { return };
    let mut bot = Bot::start(IpAddr::V6(Ipv6Addr::LOCALHOST));
    bot.hang_up_after = Some(Duration::from_millis(1500));
    let addr = bot.addr();
    let started = Instant::now();
    let r = bot.run_while(|| {
        BaresipCall::new(addr, &wav)
            .hold(Duration::from_secs(20))
            .run()
            .unwrap()
    });
    assert!(r.answered, "{}", r.log);
    assert_eq!(r.ended_by, CallEnd::RemoteBye, "{}", r.log);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(bot.pump_until(Duration::from_secs(3), |b| !b.ended().is_empty()));
    assert_eq!(bot.ended()[0].1, EndReason::LocalHangup);
    let mut h = bot.handle;
    let rep = h.shutdown(Instant::now() + Duration::from_secs(2));
    assert!(rep.thread_joined && !rep.timed_out, "{rep}");
}

/// Shutdown with a live call sends BYE to baresip, which sees the remote hang-up.
#[test]
fn heavy_shutdown_hangs_up_live_baresip_call() {
    let Some(wav) = audio() else { return };
    let mut bot = Bot::start(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let addr = bot.addr();
    std::thread::scope(|s| {
        let caller = s.spawn(|| {
            BaresipCall::new(addr, &wav)
                .hold(Duration::from_secs(20))
                .run()
                .unwrap()
        });
        assert!(bot.pump_until(Duration::from_secs(10), |b| {
            b.events
                .iter()
                .any(|(_, e)| matches!(e, SipEvent::CallConfirmed { .. }))
        }));
        let rep = bot.handle.shutdown(Instant::now() + Duration::from_secs(3));
        assert_eq!(rep.calls_hung_up, 1, "{rep}");
        assert_eq!(rep.calls_abandoned, 0, "{rep}");
        assert!(rep.thread_joined, "{rep}");
        let r = caller.join().unwrap();
        assert_eq!(r.ended_by, CallEnd::RemoteBye, "{}", r.log);
    });
}
