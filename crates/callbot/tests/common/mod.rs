//! Settings shared by the end-to-end test files (each includes this with `mod common;`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use callbot::Settings;

/// The loopback address every test uses.
#[allow(dead_code)] // not every test file that includes this module needs it
pub(crate) const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A bot on loopback with the real layers: SIP on a free port, Whisper `model` with one
/// thread, echo mode (the LLM URL names a port where nothing listens; probed for 0.3 s),
/// `max_calls`, and a free RTP range of two ports per call (plus one spare pair).
pub(crate) fn loopback_settings(model: PathBuf, max_calls: usize) -> Settings {
    let mut s = Settings::default();
    s.sip.listen = SocketAddr::new(LOOPBACK, 0);
    s.stt.model = model;
    s.stt.threads = 1;
    s.llm.url = format!("http://127.0.0.1:{}", callbot_testkit::ports::free_udp_port());
    s.llm.connect_timeout_secs = 0.3;
    s.dialogue.max_calls = max_calls;
    let n = u16::try_from(2 * max_calls + 2).expect("a port range that fits");
    let base = callbot_testkit::ports::free_udp_port_range(n);
    s.media.rtp_port_min = base;
    s.media.rtp_port_max = base + n - 1;
    s
}

/// The transcript lines of a bot whose `transcripts.dir` is `dir/transcripts` (where
/// the test files' settings put them).
#[allow(dead_code)] // not every test file that includes this module needs it
pub(crate) fn turns(dir: &Path) -> Vec<serde_json::Value> {
    callbot::testing::transcript_lines(&dir.join("transcripts"))
}

/// Checks that the greeting's turn in `lines` was interrupted; prints what was heard of it.
#[allow(dead_code)] // not every test file that includes this module needs it
pub(crate) fn assert_greeting_interrupted(lines: &[serde_json::Value]) {
    let greeting = lines
        .iter()
        .find(|l| l["kind"] == "greeting")
        .expect("greeting turn");
    assert_eq!(greeting["interrupted"], true, "{greeting}");
    println!("greeting as heard: {}", greeting["bot"]);
}

/// Calls `uri` from `ua` (the INVITE goes to `dest`) offering `rtp`, with
/// [`callbot::testing::dial`] (5 s for the answer): the call. Panics if the call fails
/// or any call ends meanwhile.
#[allow(dead_code)] // not every test file that includes this module needs it
pub(crate) fn dial(
    ua: &callbot_sip::SipHandle,
    rtp: &callbot_rtp::RtpSession,
    uri: &str,
    dest: SocketAddr,
) -> callbot_sip::CallId {
    callbot::testing::dial(ua, rtp, uri, dest, std::time::Duration::from_secs(5), |e| {
        if let callbot_sip::SipEvent::CallEnded { call, reason } = e {
            panic!("call {call} ended: {reason:?}");
        }
    })
    .unwrap_or_else(|e| panic!("call to {uri} via {dest}: {e}"))
    .0
}

/// Shuts `bot` down within `within` and checks that every component stopped cleanly.
#[allow(dead_code)] // not every test file that includes this module needs it
pub(crate) fn shut_down_clean(
    bot: &mut callbot::Bot,
    within: std::time::Duration,
) -> callbot::bot::BotShutdownReport {
    let report = bot.shutdown(std::time::Instant::now() + within);
    assert!(report.components.all_clean(), "{report:?}");
    report
}
