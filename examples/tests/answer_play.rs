#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `answer_play` against baresip 1.0.0: PCMU and PCMA, IPv4 and IPv6. The bot's
//! recording must hold what baresip sent, baresip's recording must hold REPLY.wav
//! (normalised correlation >= 0.95 after alignment), and the bot must hang up.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use callbot_audio::AudioFrame;
use callbot_testkit::baresip::{BaresipCall, BaresipCodecs, CallEnd};
use callbot_testkit::process::Child;
use callbot_testkit::wavcompare::compare;

/// The example binary: `target/<profile>/examples/answer_play`, beside this test's
/// `target/<profile>/deps/` directory.
fn example_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("examples").join("answer_play");
    assert!(bin.is_file(), "{} not built", bin.display());
    bin
}

fn to_8k(pcm: &[i16], rate: u32) -> Vec<i16> {
    callbot_audio::resample::resample_frame(&AudioFrame::new(rate, pcm.to_vec()), 8000)
        .unwrap()
        .samples
}

fn read_mono(path: &Path) -> Vec<i16> {
    let mut r = hound::WavReader::open(path).unwrap();
    assert_eq!(r.spec().sample_rate, 8000);
    assert_eq!(r.spec().channels, 1);
    r.samples::<i16>().map(|s| s.unwrap()).collect()
}

fn read_channel(path: &Path, channel: usize) -> Vec<i16> {
    let mut r = hound::WavReader::open(path).unwrap();
    assert_eq!(r.spec().sample_rate, 8000);
    assert_eq!(r.spec().channels, 2);
    let s: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    s.iter().skip(channel).step_by(2).copied().collect()
}

#[test]
fn heavy_answer_play_against_baresip() {
    if callbot_testkit::tools::require("baresip").is_none() {
        return;
    }
    let Some(reply_22k) = callbot_testkit::speech::espeak(
        "Thank you for calling the callbot test line. This reply was synthesised at twenty two kilohertz and resampled by the bot.",
        "en-us",
    ) else {
        return;
    };
    let Some(caller_22k) = callbot_testkit::speech::espeak(
        "Hello, I would like to know when the shop opens tomorrow morning, please.",
        "en-us",
    ) else {
        return;
    };
    let work = callbot_testkit::temp_dir("answer-play");
    let reply_wav = work.path().join("reply.wav");
    let caller_wav = work.path().join("caller.wav");
    callbot_audio::wav::write_wav(&reply_wav, &AudioFrame::new(22050, reply_22k.clone())).unwrap();
    callbot_audio::wav::write_wav(&caller_wav, &AudioFrame::new(22050, caller_22k.clone())).unwrap();
    let reply_8k = to_8k(&reply_22k, 22050);
    let caller_8k = to_8k(&caller_22k, 22050);

    let cases = [
        (BaresipCodecs::Pcmu, "PCMU", false),
        (BaresipCodecs::Pcma, "PCMA", false),
        (BaresipCodecs::Pcmu, "PCMU", true),
        (BaresipCodecs::Pcma, "PCMA", true),
    ];
    for (codecs, codec_name, ipv6) in cases {
        let ip = if ipv6 {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        };
        let port = callbot_testkit::ports::free_udp_port_on(ip, false);
        let listen = SocketAddr::new(ip, port);
        let rec_dir = work.path().join(format!("rec-{codec_name}-{ipv6}"));
        let mut cmd = Command::new(example_bin());
        cmd.arg("--listen")
            .arg(listen.to_string())
            .arg("--play")
            .arg(&reply_wav)
            .arg("--record-dir")
            .arg(&rec_dir)
            .arg("--max-calls")
            .arg("1");
        let log = work.path().join(format!("bot-{codec_name}-{ipv6}.log"));
        let (mut bot, stdout) = Child::spawn_piped("answer_play", cmd, &log).unwrap();
        // stdout lines on a channel (the reader thread ends when the bot exits)
        let (tx, rx) = mpsc::sync_channel::<String>(64);
        let reader = std::thread::Builder::new()
            .name("bot-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            })
            .unwrap();
        let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(first.starts_with("LISTENING"), "{first}");

        let out = work.path().join(format!("baresip-{codec_name}-{ipv6}.wav"));
        let result = BaresipCall::new(listen, &caller_wav)
            .record_to(&out)
            .codecs(codecs)
            .hold(Duration::from_secs(20))
            .run()
            .unwrap();
        assert!(result.answered, "{}", result.log);
        assert_eq!(
            result.ended_by,
            CallEnd::RemoteBye,
            "the bot hangs up when the reply has been played"
        );
        assert_eq!(result.codec.as_deref(), Some(codec_name));
        let status = bot.wait_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            status.is_some_and(|s| s.success()),
            "bot did not exit after --max-calls 1"
        );
        reader.join().unwrap();
        let lines: Vec<String> = rx.try_iter().collect();
        eprintln!("{codec_name} ipv6={ipv6}: {lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("answered") && l.contains(codec_name))
        );
        // baresip's RTCP reached the bot's RTCP port and parsed as SR/RR
        let ended = lines.iter().find(|l| l.contains("ended")).expect("ended line");
        let rtcp_in: u64 = ended
            .split_whitespace()
            .find_map(|w| w.strip_prefix("rtcp_in="))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(rtcp_in >= 1, "{ended}");

        // baresip heard REPLY.wav
        let heard = read_mono(result.received_audio.as_deref().unwrap());
        let c = compare(&reply_8k, &heard, 8000).expect("baresip received audio");
        eprintln!("baresip's recording vs REPLY.wav: {c:?}");
        assert!(c.correlation >= 0.95, "{c:?}");
        assert!(c.duration_diff_seconds.abs() < 0.15, "{c:?}");

        // the bot recorded what baresip sent (left channel), and what it played (right)
        let files: Vec<_> = std::fs::read_dir(&rec_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "exactly one recording, no temp file: {files:?}");
        // named after the SIP Call-ID baresip chose (printed by the example, seen in
        // baresip's own SIP trace)
        let answered = lines
            .iter()
            .find(|l| l.contains(" answered "))
            .expect("answered line");
        let call_id = answered
            .split_whitespace()
            .find_map(|w| w.strip_prefix("call_id="))
            .expect("call_id= in the answered line");
        assert!(
            result.log.contains(call_id),
            "baresip's trace names Call-ID {call_id}"
        );
        let expected = format!("{}.wav", callbot_rtp::recorder::sanitize_name(call_id));
        assert_eq!(files[0].file_name().unwrap().to_string_lossy(), expected);
        let caller_side = read_channel(&files[0], 0);
        let c = compare(&caller_8k, &caller_side, 8000).expect("bot recorded the caller");
        eprintln!("bot's recording (caller channel) vs what baresip sent: {c:?}");
        assert!(c.correlation >= 0.95, "{c:?}");
        let bot_side = read_channel(&files[0], 1);
        let c = compare(&reply_8k, &bot_side, 8000).unwrap();
        assert!(c.correlation >= 0.99, "{c:?}");
    }
}
