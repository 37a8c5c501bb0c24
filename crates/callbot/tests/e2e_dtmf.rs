//! DTMF from a real peer (issue 7, "Tested end to end with real peers: DTMF"): SIPp
//! calls the bot, waits for the greeting, then plays `dtmf_2833_0.pcap` from the SIPp
//! package (RFC 4733 telephone-events, payload type 101, digit 0: a start packet with
//! the marker bit, updates every 20 ms, three end packets) with `play_pcap_audio`.
//! The bot's configured action for `0` is "say a phrase and hang up": SIPp must then
//! receive the bot's BYE (its scenario waits for it and answers 200), and the bot's
//! transcript must show the digit, the phrase and the reason.
//!
//! `play_pcap_audio` sends through a raw socket, so SIPp needs root or CAP_NET_RAW
//! (`cargo xtask ci` runs as root); without it the test says so and skips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use callbot::Bot;
use callbot::settings::{DtmfAction, DtmfThen};
use callbot_testkit::process::Child;
use callbot_testkit::sipp::{SippCodec, parse_stats, uac_scenario};

const PHRASE: &str = "Transferring you to a human. Goodbye.";

/// The RFC 2833 capture SIPp ships for `digit`, if installed.
fn dtmf_pcap(digit: char) -> Option<PathBuf> {
    [
        "/usr/share/sip-tester",
        "/usr/share/sipp",
        "/usr/local/share/sipp",
    ]
    .iter()
    .map(|d| Path::new(d).join(format!("dtmf_2833_{digit}.pcap")))
    .find(|p| p.is_file())
}

/// The testkit's UAC scenario (INVITE offering PCMU and telephone-event 101, 200, ACK,
/// a pause of `before`) with its own BYE replaced by: play the DTMF capture, then wait
/// up to `bye_timeout` for the bot's BYE and answer it with 200.
fn dtmf_scenario(pcap: &Path, before: Duration, bye_timeout: Duration) -> String {
    let base = uac_scenario(SippCodec::Pcmu, before, None);
    let from = base.find("  <send retrans=\"500\" start_rtd=\"bye\"").unwrap();
    let to = base.find("  <Reference variables").unwrap();
    let tail = format!(
        r#"  <nop><action><exec play_pcap_audio="{}"/></action></nop>
  <recv request="BYE" timeout="{}"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Content-Length: 0

    ]]>
  </send>

"#,
        pcap.display(),
        bye_timeout.as_millis()
    );
    format!("{}{tail}{}", &base[..from], &base[to..])
}

#[test]
fn heavy_e2e_dtmf_0_from_sipp_says_the_phrase_and_hangs_up() {
    let Some(model) = callbot_testkit::whisper_model() else {
        return;
    };
    let Some(sipp) = callbot_testkit::tools::require("sipp") else {
        return;
    };
    let Some(pcap) = dtmf_pcap('0') else {
        let msg = "SKIP: dtmf_2833_0.pcap not found (package sip-tester)";
        assert!(std::env::var_os("CALLBOT_REQUIRE_PEERS").is_none(), "{msg}");
        println!("{msg}");
        return;
    };
    // play_pcap_audio needs a raw socket: effective uid 0 (CI runs as root).
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"));
    if !root {
        println!("SKIP: SIPp's play_pcap_audio needs a raw socket (root or CAP_NET_RAW)");
        return;
    }
    let dir = callbot_testkit::temp_dir("callbot-dtmf");
    let transcripts = dir.path().join("transcripts");
    let mut s = common::loopback_settings(model, 1);
    s.dialogue.greeting = "Hello.".into();
    s.dialogue.dtmf.insert(
        "0".into(),
        DtmfAction {
            say: PHRASE.into(),
            then: DtmfThen::Hangup,
        },
    );
    s.transcripts.dir = Some(transcripts.clone());
    let mut bot = Bot::start(s).unwrap();
    let target = bot.sip_addr();

    let work = callbot_testkit::temp_dir("sipp-dtmf");
    let scenario = work.path().join("dtmf.xml");
    std::fs::write(
        &scenario,
        dtmf_scenario(&pcap, Duration::from_millis(1500), Duration::from_secs(8)),
    )
    .unwrap();
    let mut cmd = Command::new(sipp);
    cmd.current_dir(work.path())
        .arg(target.to_string())
        .arg("-sf")
        .arg(&scenario)
        .args(["-s", "bot", "-i", "127.0.0.1", "-bind_local"])
        .args(["-mi", "127.0.0.1"])
        .args(["-p", &callbot_testkit::ports::free_udp_port().to_string()])
        .args(["-mp", &callbot_testkit::ports::free_udp_port_range(4).to_string()])
        .args(["-m", "1", "-timeout", "20s", "-timeout_error", "-nostdin"])
        .args(["-trace_stat", "-stf"])
        .arg(work.path().join("stat.csv"))
        .args(["-trace_err", "-error_file"])
        .arg(work.path().join("errors.log"))
        .args(["-trace_msg", "-message_file"])
        .arg(work.path().join("messages.log"));
    let started = Instant::now();
    let mut child = Child::spawn("sipp-dtmf", cmd, &work.path().join("stdout.log")).unwrap();
    let status = child.wait_timeout(Duration::from_secs(30)).unwrap();
    let wall = started.elapsed();
    let messages = std::fs::read_to_string(work.path().join("messages.log")).unwrap_or_default();
    let stats = parse_stats(
        &work.path().join("stat.csv"),
        &work.path().join("errors.log"),
        wall,
        status.and_then(|s| s.code()),
    )
    .unwrap();
    println!(
        "SIPp: exit {:?} after {wall:?}, successful {} failed {}; errors: {}",
        stats.exit_code, stats.successful, stats.failed, stats.errors
    );
    // The bot's BYE reached SIPp (its scenario waited for it and answered 200).
    assert_eq!(stats.exit_code, Some(0), "{}\n{messages}", stats.errors);
    assert_eq!(stats.successful, 1);
    let byes = messages.matches("BYE sip:").count();
    assert!(byes >= 1, "SIPp received no BYE:\n{messages}");

    // The call thread ends right after its BYE; the bot reaps it at once.
    callbot_testkit::harness::wait_for(Duration::from_secs(2), "the call to end", || {
        bot.live_calls() == 0
    });
    let report = bot.shutdown(Instant::now() + Duration::from_secs(2));
    println!("{report}");

    let lines = callbot::testing::transcript_lines(&transcripts);
    for l in &lines {
        println!("{l}");
    }
    let summary = lines
        .iter()
        .find(|l| l["type"] == "summary")
        .expect("a summary line");
    assert_eq!(summary["reason"], "dtmf", "{summary}");
    assert_eq!(summary["dtmf_digits"], 1, "{summary}");
    assert_eq!(summary["goodbye_completed"], true, "{summary}");
    // The digit's turn: the phrase, spoken whole, after the 1.5 s pause (the digit's
    // first packet is at 1.5 s; the bot acts on its end, about 150 ms later).
    let turn = lines
        .iter()
        .find(|l| l["type"] == "turn" && l["kind"] == "dtmf")
        .expect("the digit as a turn");
    assert_eq!(turn["digit"], "0", "{turn}");
    assert_eq!(turn["bot"], PHRASE, "{turn}");
    assert_eq!(turn["interrupted"], false, "{turn}");
    let at = turn["at"].as_f64().unwrap();
    assert!((1500.0..3000.0).contains(&at), "{turn}");
}
