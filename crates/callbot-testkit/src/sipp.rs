//! SIPp 3.6 as a load-generating UAC and as a UAS, with parsed statistics.
//!
//! Learned from `../shared/peers/load.sh` and its README: SIPp tries port 5060 when no
//! `-p` is given (we always pass a free port); `rtp_stream` sends a file's bytes verbatim
//! so it must be headerless 8 kHz G.711 (converted here with sox); variables that are
//! assigned but never used abort the run unless listed in `<Reference>`;
//! `-timeout_error` makes the global timeout count as failure; the final screen's
//! response times are reset, so statistics come from the `-trace_stat` CSV, whose times
//! are `HH:MM:SS:mmmuuu` with millisecond resolution.
//!
//! ```no_run
//! use callbot_testkit::sipp::{SippUac, SippUas, UacMedia};
//! let uas = SippUas::start(false)?;
//! let stats = SippUac::new(uas.addr(), 10, 5.0).media(UacMedia::SignallingOnly).run()?;
//! assert_eq!(stats.failed, 0);
//! # Ok::<(), callbot_testkit::harness::HarnessError>(())
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{
    HarnessError, ensure_loopback, io_err, loopback, read_lossy, require_tool, sox, tail, wait_udp_listening,
};
use crate::process::Child;

/// The G.711 codec a SIPp UAC offers (one only, as in `load.sh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SippCodec {
    /// PCMU, payload type 0.
    Pcmu,
    /// PCMA, payload type 8.
    Pcma,
}

impl SippCodec {
    fn pt(self) -> u8 {
        match self {
            SippCodec::Pcmu => 0,
            SippCodec::Pcma => 8,
        }
    }
    fn name(self) -> &'static str {
        match self {
            SippCodec::Pcmu => "PCMU",
            SippCodec::Pcma => "PCMA",
        }
    }
    fn sox_encoding(self) -> &'static str {
        match self {
            SippCodec::Pcmu => "u-law",
            SippCodec::Pcma => "a-law",
        }
    }
}

/// What a UAC call does between ACK and BYE.
#[derive(Debug, Clone, PartialEq)]
pub enum UacMedia {
    /// No RTP: INVITE, 200, ACK, hold, BYE, 200 (for call-setup rate measurements).
    SignallingOnly,
    /// Stream `audio` (any file sox reads) as G.711 RTP, looped, while the call is held.
    Rtp {
        /// The audio file.
        audio: PathBuf,
    },
}

/// A SIPp UAC run: `calls` calls at `rate` calls/s to `sip:SERVICE@target`.
#[derive(Debug, Clone)]
pub struct SippUac {
    /// Where to call (loopback only).
    pub target: SocketAddr,
    /// Request-URI user.
    pub service: String,
    /// Number of calls to place (`-m`).
    pub calls: u32,
    /// Calls per second (`-r` with `-rp 1000`).
    pub rate: f64,
    /// How long each call is held after the ACK.
    pub hold: Duration,
    /// Signalling only, or an RTP stream.
    pub media: UacMedia,
    /// The one codec offered (plus telephone-event 101).
    pub codec: SippCodec,
    /// How long SIPp waits for each expected response (`-recv_timeout`).
    pub recv_timeout: Duration,
    /// Limit of simultaneous calls (`-l`), SIPp's default when `None`.
    pub max_concurrent: Option<u32>,
    /// Keep SIPp's files (scenario, CSV, logs) in this directory after the run.
    pub keep_dir: Option<PathBuf>,
}

/// Statistics of a SIPp run, from its `-trace_stat` CSV (last row) and its exit status.
#[derive(Debug, Clone, Default)]
pub struct SippStats {
    /// Calls created (UAC) or received (UAS).
    pub created: u64,
    /// Incoming calls (UAS runs).
    pub incoming: u64,
    /// Calls that completed the scenario.
    pub successful: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Retransmissions SIPp sent (a sign of slow or lost answers).
    pub retransmissions: u64,
    /// Failed because of a receive timeout / max UDP retransmissions / unexpected message.
    pub failed_timeout: u64,
    /// Failed because of an unexpected message (e.g. an error response).
    pub failed_unexpected: u64,
    /// Mean INVITE -> 200 time (ms, 1 ms resolution), for UAC runs.
    pub setup_avg_ms: Option<f64>,
    /// Standard deviation of the setup time (ms).
    pub setup_stdev_ms: Option<f64>,
    /// Mean BYE -> 200 time (ms), for UAC runs.
    pub bye_avg_ms: Option<f64>,
    /// Mean call length (ms).
    pub call_length_avg_ms: Option<f64>,
    /// Wall-clock duration of the run as measured by the harness.
    pub wall_time: Duration,
    /// SIPp's exit code (0: all calls succeeded, 1: some failed, ...), `None` if killed.
    pub exit_code: Option<i32>,
    /// Every column of the CSV's last row.
    pub fields: BTreeMap<String, String>,
    /// The tail of SIPp's error log (empty when none).
    pub errors: String,
}

impl SippStats {
    /// Successful calls per second of wall-clock time.
    pub fn calls_per_second(&self) -> f64 {
        let s = self.wall_time.as_secs_f64();
        if s > 0.0 { self.successful as f64 / s } else { 0.0 }
    }
}

impl SippUac {
    /// `calls` calls at `rate`/s to `target`, RTP-less, held 0 ms, PCMU, user `bot`.
    pub fn new(target: SocketAddr, calls: u32, rate: f64) -> SippUac {
        SippUac {
            target,
            service: String::from("bot"),
            calls,
            rate,
            hold: Duration::ZERO,
            media: UacMedia::SignallingOnly,
            codec: SippCodec::Pcmu,
            recv_timeout: Duration::from_secs(10),
            max_concurrent: None,
            keep_dir: None,
        }
    }

    /// Sets the media mode.
    pub fn media(mut self, media: UacMedia) -> Self {
        self.media = media;
        self
    }

    /// Sets how long each call is held.
    pub fn hold(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    /// Sets the codec offered.
    pub fn codec(mut self, codec: SippCodec) -> Self {
        self.codec = codec;
        self
    }

    /// Sets the Request-URI user.
    pub fn service(mut self, service: &str) -> Self {
        self.service = service.to_string();
        self
    }

    /// Sets the per-response receive timeout.
    pub fn recv_timeout(mut self, t: Duration) -> Self {
        self.recv_timeout = t;
        self
    }

    /// Sets `-l`.
    pub fn max_concurrent(mut self, n: u32) -> Self {
        self.max_concurrent = Some(n);
        self
    }

    /// The scenario XML this run uses.
    pub fn scenario_xml(&self, audio_file: Option<&Path>) -> String {
        uac_scenario(self.codec, self.hold, audio_file)
    }

    /// Runs SIPp to completion (bounded by a global watchdog) and returns its statistics.
    pub fn run(&self) -> Result<SippStats, HarnessError> {
        ensure_loopback(self.target.ip())?;
        if self.calls == 0 || self.rate.is_nan() || self.rate <= 0.0 {
            return Err(HarnessError::InvalidArgument(String::from(
                "calls and rate must be positive",
            )));
        }
        let sipp = require_tool("sipp")?;
        let dir = crate::temp_dir("sipp-uac");
        let local_ip = loopback(self.target.is_ipv6());
        let audio = match &self.media {
            UacMedia::SignallingOnly => None,
            UacMedia::Rtp { audio } => {
                let raw = dir.path().join("audio.g711");
                sox(&[
                    audio.as_os_str(),
                    "-t".as_ref(),
                    "raw".as_ref(),
                    "-r".as_ref(),
                    "8000".as_ref(),
                    "-c".as_ref(),
                    "1".as_ref(),
                    "-e".as_ref(),
                    self.codec.sox_encoding().as_ref(),
                    "-b".as_ref(),
                    "8".as_ref(),
                    raw.as_os_str(),
                ])?;
                Some(raw)
            }
        };
        let scenario = dir.path().join("uac.xml");
        std::fs::write(&scenario, self.scenario_xml(audio.as_deref())).map_err(io_err("write scenario"))?;
        let lport = crate::ports::free_udp_port_on(local_ip, false);
        let global = Duration::from_secs_f64(
            f64::from(self.calls) / self.rate
                + self.hold.as_secs_f64()
                + 2.0 * self.recv_timeout.as_secs_f64()
                + 15.0,
        );
        let mut cmd = Command::new(sipp);
        cmd.current_dir(dir.path())
            .arg(crate::harness::host_uri(self.target.ip()) + ":" + &self.target.port().to_string())
            .arg("-sf")
            .arg(&scenario)
            .args(["-s", &self.service])
            .args(["-i", &local_ip.to_string(), "-bind_local"])
            .args(["-mi", &local_ip.to_string(), "-ci", "127.0.0.1"])
            .args(["-p", &lport.to_string()])
            .args(["-m", &self.calls.to_string()])
            .args(["-r", &format!("{}", self.rate), "-rp", "1000"])
            .args(["-recv_timeout", &format!("{}ms", self.recv_timeout.as_millis())])
            .args(["-max_retrans", "5"])
            .args(["-timeout", &format!("{}s", global.as_secs())])
            .arg("-timeout_error")
            .arg("-nostdin")
            .args(["-trace_stat", "-stf"])
            .arg(dir.path().join("stat.csv"))
            .args(["-fd", "1"])
            .args(["-trace_err", "-error_file"])
            .arg(dir.path().join("errors.log"))
            .args(["-trace_screen", "-screen_file"])
            .arg(dir.path().join("screen.log"));
        if let Some(l) = self.max_concurrent {
            cmd.args(["-l", &l.to_string()]);
        }
        if audio.is_some() {
            let mp = crate::ports::free_udp_port_range(4);
            cmd.args(["-mp", &mp.to_string()]);
        }
        let log = dir.path().join("stdout.log");
        let started = Instant::now();
        let mut child = Child::spawn("sipp-uac", cmd, &log).map_err(io_err("spawn sipp"))?;
        let status = child
            .wait_timeout(global + Duration::from_secs(15))
            .map_err(io_err("wait for sipp"))?;
        let wall_time = started.elapsed();
        let exit_code = match status {
            Some(st) => st.code(),
            None => {
                child.stop();
                None
            }
        };
        let stats = parse_stats(
            &dir.path().join("stat.csv"),
            &dir.path().join("errors.log"),
            wall_time,
            exit_code,
        );
        if let Some(keep) = &self.keep_dir {
            keep_files(dir.path(), keep);
        }
        stats.map_err(|e| match e {
            HarnessError::Output { peer, detail } => HarnessError::Output {
                peer,
                detail: format!("{detail}; sipp said: {}", tail(&read_lossy(&log), 5)),
            },
            e => e,
        })
    }
}

fn keep_files(from: &Path, to: &Path) {
    if std::fs::create_dir_all(to).is_ok()
        && let Ok(rd) = std::fs::read_dir(from)
    {
        for e in rd.flatten() {
            let _ = std::fs::copy(e.path(), to.join(e.file_name()));
        }
    }
}

/// The UAC scenario: INVITE (one codec + telephone-event 101), optional 100/180/183,
/// 200 (its Contact captured; the answer must carry the offered PT), ACK to the Contact,
/// optional RTP stream, hold, BYE, 200. Response times `setup` and `bye`. Responses are
/// matched to their transaction (`start_txn`/`response_txn`): without it SIPp takes a
/// retransmitted 200 to the INVITE (after a lost ACK) as the answer to its BYE.
pub fn uac_scenario(codec: SippCodec, hold: Duration, audio: Option<&Path>) -> String {
    let pt = codec.pt();
    let name = codec.name();
    let (rtp_start, rtp_stop) = match audio {
        Some(a) => (
            format!(
                "  <nop><action><exec rtp_stream=\"{},-1,{pt}\"/></action></nop>\n",
                a.display()
            ),
            String::from("  <nop><action><exec rtp_stream=\"pause\"/></action></nop>\n"),
        ),
        None => (String::new(), String::new()),
    };
    let pause = if hold.is_zero() {
        String::new()
    } else {
        format!("  <pause milliseconds=\"{}\"/>\n", hold.as_millis())
    };
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="callbot uac">
  <send retrans="500" start_rtd="setup" start_txn="invite">
    <![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70
      User-Agent: callbot-testkit SIPp
      Allow: INVITE, ACK, BYE, CANCEL, OPTIONS
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=sipp 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=sipp
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP {pt} 101
      a=rtpmap:{pt} {name}/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a=ptime:20
      a=sendrecv

    ]]>
  </send>

  <recv response="100" optional="true" response_txn="invite"/>
  <recv response="180" optional="true" response_txn="invite"/>
  <recv response="183" optional="true" response_txn="invite"/>

  <recv response="200" rtd="setup" response_txn="invite">
    <action>
      <ereg regexp="sips?:[^>; ]+" search_in="hdr" header="Contact:"
            check_it="true" assign_to="remote_contact"/>
      <ereg regexp="m=audio [0-9]+ RTP/AVP {pt}" search_in="body"
            check_it="true" assign_to="answered_codec"/>
    </action>
  </recv>

  <send ack_txn="invite">
    <![CDATA[

      ACK [$remote_contact] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>

{rtp_start}{pause}{rtp_stop}
  <send retrans="500" start_rtd="bye" start_txn="bye">
    <![CDATA[

      BYE [$remote_contact] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>

  <recv response="200" rtd="bye" crlf="true" response_txn="bye"/>

  <Reference variables="answered_codec"/>

  <ResponseTimeRepartition value="1, 2, 5, 10, 20, 50, 100, 200, 500, 1000"/>
  <CallLengthRepartition value="10, 100, 1000, 5000, 10000, 30000"/>
</scenario>
"#
    )
}

/// Parses SIPp's `HH:MM:SS:mmmuuu` time into milliseconds.
pub fn parse_sipp_time_ms(t: &str) -> Option<f64> {
    let mut it = t.trim().split(':');
    let h: f64 = it.next()?.parse().ok()?;
    let m: f64 = it.next()?.parse().ok()?;
    let s: f64 = it.next()?.parse().ok()?;
    let f: f64 = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((h * 3600.0 + m * 60.0 + s) * 1000.0 + f / 1000.0)
}

/// Reads the last row of a `-trace_stat` CSV (`;`-separated, header first).
pub fn parse_stats(
    csv: &Path,
    errors: &Path,
    wall_time: Duration,
    exit_code: Option<i32>,
) -> Result<SippStats, HarnessError> {
    let text = read_lossy(csv);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or_else(|| HarnessError::Output {
        peer: "sipp",
        detail: String::from("no statistics CSV"),
    })?;
    let last = lines.next_back().ok_or_else(|| HarnessError::Output {
        peer: "sipp",
        detail: String::from("statistics CSV has no data row"),
    })?;
    let fields: BTreeMap<String, String> = header
        .split(';')
        .zip(last.split(';'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let num = |k: &str| fields.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let ms = |k: &str| fields.get(k).and_then(|v| parse_sipp_time_ms(v));
    let created = num("TotalCallCreated");
    Ok(SippStats {
        created,
        incoming: num("IncomingCall(C)"),
        successful: num("SuccessfulCall(C)"),
        failed: num("FailedCall(C)"),
        retransmissions: num("Retransmissions(C)"),
        failed_timeout: num("FailedMaxUDPRetrans(C)") + num("FailedCallTimeOut(C)"),
        failed_unexpected: num("FailedUnexpectedMessage(C)"),
        setup_avg_ms: ms("ResponseTimesetup(C)"),
        setup_stdev_ms: ms("ResponseTimesetupStDev(C)"),
        bye_avg_ms: ms("ResponseTimebye(C)"),
        call_length_avg_ms: ms("CallLength(C)"),
        wall_time,
        exit_code,
        errors: tail(&read_lossy(errors), 15),
        fields,
    })
}

/// SIPp's built-in UAS (`-sn uas`: 180, 200 with a PCMU answer, waits for ACK and
/// BYE), with RTP echo, running until stopped.
pub struct SippUas {
    child: Child,
    addr: SocketAddr,
    dir: crate::TempDir,
}

impl SippUas {
    /// Starts the UAS on a free loopback port (`::1` when `ipv6`) and waits until it
    /// listens.
    pub fn start(ipv6: bool) -> Result<SippUas, HarnessError> {
        let sipp = require_tool("sipp")?;
        let ip = loopback(ipv6);
        let port = crate::ports::free_udp_port_on(ip, false);
        let media = crate::ports::free_udp_port_range(4);
        let dir = crate::temp_dir("sipp-uas");
        let mut cmd = Command::new(sipp);
        cmd.current_dir(dir.path())
            .args(["-sn", "uas", "-i", &ip.to_string(), "-bind_local"])
            .args(["-p", &port.to_string()])
            .args(["-mi", &ip.to_string(), "-mp", &media.to_string()])
            .args(["-ci", "127.0.0.1", "-rtp_echo", "-nostdin"])
            .args(["-timeout", "600s"])
            .args(["-trace_stat", "-stf"])
            .arg(dir.path().join("stat.csv"))
            .args(["-fd", "1"])
            .args(["-trace_msg", "-message_file"])
            .arg(dir.path().join("messages.log"));
        let log = dir.path().join("stdout.log");
        let child = Child::spawn("sipp-uas", cmd, &log).map_err(io_err("spawn sipp"))?;
        let addr = SocketAddr::new(ip, port);
        if !wait_udp_listening(addr, Duration::from_secs(10)) {
            return Err(HarnessError::StartFailed {
                peer: "sipp",
                log_tail: tail(&read_lossy(&log), 10),
            });
        }
        Ok(SippUas { child, addr, dir })
    }

    /// The UAS's SIP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The SIP messages SIPp exchanged so far (`-trace_msg`).
    pub fn messages(&self) -> String {
        read_lossy(&self.dir.path().join("messages.log"))
    }

    /// Statistics so far (the CSV is rewritten every second).
    pub fn stats(&self) -> Result<SippStats, HarnessError> {
        parse_stats(
            &self.dir.path().join("stat.csv"),
            &self.dir.path().join("errors.log"),
            Duration::ZERO,
            None,
        )
    }

    /// Waits (at most `timeout`) until the statistics satisfy `pred`; returns the last
    /// statistics read either way.
    pub fn wait_stats(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&SippStats) -> bool,
    ) -> Result<SippStats, HarnessError> {
        let end = Instant::now() + timeout;
        loop {
            let s = self.stats();
            if let Ok(st) = &s
                && pred(st)
            {
                return s;
            }
            if Instant::now() >= end {
                return s;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops SIPp (by PID) and returns its final statistics.
    pub fn stop(mut self) -> Result<SippStats, HarnessError> {
        let status = self.child.stop();
        let mut stats = self.stats()?;
        stats.exit_code = status.and_then(|s| s.code());
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_parsing() {
        assert_eq!(parse_sipp_time_ms("00:00:01:500000"), Some(1500.0));
        assert_eq!(parse_sipp_time_ms("01:00:00:000250"), Some(3_600_000.25));
        assert_eq!(parse_sipp_time_ms("1:2"), None);
    }

    #[test]
    fn csv_parsing() {
        let dir = crate::temp_dir("sipp-csv");
        let csv = dir.path().join("s.csv");
        std::fs::write(
            &csv,
            "TotalCallCreated;SuccessfulCall(C);FailedCall(C);Retransmissions(C);ResponseTimesetup(C);\n\
             1;1;0;0;00:00:00:000000;\n7;6;1;3;00:00:00:012000;\n",
        )
        .unwrap();
        let s = parse_stats(&csv, &dir.path().join("none"), Duration::from_secs(2), Some(1)).unwrap();
        assert_eq!(
            (s.created, s.successful, s.failed, s.retransmissions),
            (7, 6, 1, 3)
        );
        assert_eq!(s.setup_avg_ms, Some(12.0));
        assert_eq!(s.calls_per_second(), 3.0);
        assert!(parse_stats(&dir.path().join("missing"), &csv, Duration::ZERO, None).is_err());
    }

    #[test]
    fn heavy_sipp_uac_against_sipp_uas() {
        if crate::tools::require("sipp").is_none() {
            return;
        }
        let uas = SippUas::start(false).unwrap();
        let stats = SippUac::new(uas.addr(), 10, 10.0)
            .hold(Duration::from_millis(200))
            .run()
            .unwrap();
        assert_eq!(stats.created, 10, "{stats:?}");
        assert_eq!(stats.successful, 10, "{stats:?}");
        assert_eq!(stats.failed, 0, "{stats:?}");
        assert_eq!(stats.exit_code, Some(0));
        assert!(stats.setup_avg_ms.is_some());
        let uas_stats = uas
            .wait_stats(Duration::from_secs(10), |s| s.successful == 10)
            .unwrap();
        assert_eq!(uas_stats.incoming, 10, "{uas_stats:?}");
        assert_eq!(uas_stats.successful, 10, "{uas_stats:?}");
        assert!(uas.messages().contains("BYE sip:"));
        uas.stop().unwrap();
    }

    #[test]
    fn heavy_sipp_uac_rtp_and_failure_path() {
        if crate::tools::require("sipp").is_none() || crate::tools::require("sox").is_none() {
            return;
        }
        let Some(shared) = crate::shared_dir() else {
            crate::tools::missing("../shared/peers/audio");
            return;
        };
        let uas = SippUas::start(false).unwrap();
        let stats = SippUac::new(uas.addr(), 2, 4.0)
            .hold(Duration::from_millis(600))
            .media(UacMedia::Rtp {
                audio: shared.join("peers/audio/caller_yes.wav"),
            })
            .run()
            .unwrap();
        assert_eq!((stats.successful, stats.failed), (2, 0), "{stats:?}");
        assert!(stats.call_length_avg_ms.unwrap_or(0.0) >= 600.0, "{stats:?}");
        drop(uas);
        // Nobody listening: the call must be counted as failed, not hang.
        let nobody = SocketAddr::new(loopback(false), crate::ports::free_udp_port());
        let stats = SippUac::new(nobody, 1, 1.0)
            .recv_timeout(Duration::from_secs(1))
            .run()
            .unwrap();
        assert_eq!((stats.successful, stats.failed), (0, 1), "{stats:?}");
        assert_ne!(stats.exit_code, Some(0));
    }
}
