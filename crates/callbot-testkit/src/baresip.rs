//! baresip 1.0.0 as a caller (one call: send a WAV, record what comes back) and as an
//! auto-answering callee, headless, on loopback, with a private config dir.
//!
//! Quirks handled (from `../shared/peers/README.md` and `call.sh`/`answerer.sh`):
//! `module_path` must be set; `net_interface` takes an IP (`127.0.0.1` / `::1`), not
//! `lo`; SIP always also opens TLS on port+1 (so the answerer picks a port whose +1 is
//! free); `aufile` is a source only, needs 8 kHz mono S16 and hangs the call up at end
//! of file (so the caller's input is padded past the hold time); recording is the
//! `sndfile` filter (`dump-*-dec.wav`, written on RTP arrival, no gap filling); the
//! headless sink is `aubridge,nil`; stdout is block-buffered when redirected (run under
//! `stdbuf -oL`); a remote BYE is logged as `session closed: Connection reset by peer`;
//! SIGTERM makes it hang up (BYE or CANCEL) and exit.
//!
//! ```no_run
//! use callbot_testkit::baresip::{BaresipAnswerer, BaresipCall};
//! use std::time::Duration;
//! let callee = BaresipAnswerer::start("reply.wav".as_ref(), false)?;
//! let out = callbot_testkit::temp_dir("out");
//! let result = BaresipCall::new(callee.addr(), "hello.wav".as_ref())
//!     .record_to(&out.path().join("got.wav"))
//!     .hold(Duration::from_secs(3))
//!     .run()?;
//! assert!(result.answered);
//! # Ok::<(), callbot_testkit::harness::HarnessError>(())
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{
    HarnessError, audio_seconds, ensure_loopback, free_sip_port_pair, host_uri, io_err, loopback, read_lossy,
    require_tool, sip_uri, sox_to_8k_pcm16,
};
use crate::process::Child;

/// How a baresip call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEnd {
    /// We (baresip) hung up after the hold time: BYE sent.
    LocalHangup,
    /// The callee sent BYE.
    RemoteBye,
    /// baresip's audio source ended (should not happen: the input is padded).
    LocalAudioEnded,
    /// Not answered: a final error response (its text, e.g. `486 Busy Here`).
    Rejected(String),
    /// Not answered within the setup timeout (CANCEL sent if anything was received).
    NoAnswer,
    /// baresip exited by itself.
    BaresipExited,
}

/// Codecs baresip offers (telephone-event 101 is always added by baresip).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaresipCodecs {
    /// `PCMU/8000/1,PCMA/8000/1`
    PcmuPcma,
    /// `PCMA/8000/1,PCMU/8000/1`
    PcmaPcmu,
    /// `PCMU/8000/1`
    Pcmu,
    /// `PCMA/8000/1`
    Pcma,
}

impl BaresipCodecs {
    fn list(self) -> &'static str {
        match self {
            BaresipCodecs::PcmuPcma => "PCMU/8000/1,PCMA/8000/1",
            BaresipCodecs::PcmaPcmu => "PCMA/8000/1,PCMU/8000/1",
            BaresipCodecs::Pcmu => "PCMU/8000/1",
            BaresipCodecs::Pcma => "PCMA/8000/1",
        }
    }
}

/// One call placed by baresip.
#[derive(Debug, Clone)]
pub struct BaresipCall {
    /// Callee address (loopback; the family decides IPv4/IPv6).
    pub target: SocketAddr,
    /// Request-URI user.
    pub callee_user: String,
    /// What to send (any file sox reads).
    pub in_wav: PathBuf,
    /// Where to write what the callee sent (8 kHz mono S16 WAV), if wanted.
    pub out_wav: Option<PathBuf>,
    /// Hang up this long after the answer (unless the callee hangs up first).
    pub hold: Duration,
    /// Codecs offered.
    pub codecs: BaresipCodecs,
    /// How long to wait for a 200.
    pub setup_timeout: Duration,
}

/// What happened during a [`BaresipCall`].
#[derive(Debug, Clone)]
pub struct BaresipCallResult {
    /// A 200 was received.
    pub answered: bool,
    /// INVITE -> established.
    pub setup_time: Option<Duration>,
    /// How it ended.
    pub ended_by: CallEnd,
    /// Established -> end.
    pub duration: Option<Duration>,
    /// The audio decoder baresip set (`PCMU`/`PCMA`).
    pub codec: Option<String>,
    /// baresip saw incoming RTP.
    pub rtp_received: bool,
    /// The recorded audio, when `out_wav` was given and audio was decoded.
    pub received_audio: Option<PathBuf>,
    /// Seconds of audio received (frames back to back).
    pub received_seconds: f64,
    /// Provisional responses seen (start lines).
    pub provisional: Vec<String>,
    /// The start line of the response to our BYE, when we hung up.
    pub bye_response: Option<String>,
    /// baresip's full log (with the SIP trace).
    pub log: String,
}

/// Convenience: `BaresipCall` with the given settings, run.
pub fn call(
    target: SocketAddr,
    in_wav: &Path,
    out_wav: &Path,
    hold: Duration,
    codecs: BaresipCodecs,
) -> Result<BaresipCallResult, HarnessError> {
    BaresipCall::new(target, in_wav)
        .record_to(out_wav)
        .hold(hold)
        .codecs(codecs)
        .run()
}

fn module_path() -> Option<PathBuf> {
    [
        "/usr/lib/baresip/modules",
        "/usr/lib/x86_64-linux-gnu/baresip/modules",
        "/usr/local/lib/baresip/modules",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|d| d.join("g711.so").is_file())
}

struct ConfigArgs<'a> {
    listen: String,
    ip: std::net::IpAddr,
    source: &'a Path,
    snd_path: &'a Path,
    max_calls: u32,
    local_timeout: u64,
}

fn write_config(dir: &Path, args: &ConfigArgs<'_>) -> Result<(), HarnessError> {
    let ConfigArgs {
        listen,
        ip,
        source,
        snd_path,
        max_calls,
        local_timeout,
    } = args;
    let rtp_ports = rtp_range();
    let mpath = module_path().ok_or(HarnessError::ToolMissing("baresip modules"))?;
    let config = format!(
        "module_path\t\t{}\npoll_method\t\tepoll\nsip_listen\t\t{listen}\nnet_interface\t\t{ip}\n\
call_local_timeout\t{local_timeout}\ncall_max_calls\t\t{max_calls}\naudio_path\t\t/usr/share/baresip\n\
audio_player\t\taubridge,nil\naudio_source\t\taufile,{}\naudio_alert\t\taubridge,nil\n\
audio_buffer\t\t20-160\naudio_level\t\tno\nausrc_format\t\ts16\nauplay_format\t\ts16\n\
auenc_format\t\ts16\naudec_format\t\ts16\nrtp_ports\t\t{rtp_ports}\njitter_buffer_delay\t0-0\n\
rtcp_mux\t\tno\nrtp_stats\t\tno\nsnd_path\t\t{}\nstatmode_default\toff\nringback_disabled\tyes\n\
module\t\t\tg711.so\nmodule\t\t\taufile.so\nmodule\t\t\taubridge.so\nmodule\t\t\tsndfile.so\n\
module_tmp\t\taccount.so\nmodule_app\t\tmenu.so\n",
        mpath.display(),
        source.display(),
        snd_path.display()
    );
    std::fs::write(dir.join("config"), config).map_err(io_err("write baresip config"))?;
    std::fs::write(dir.join("contacts"), "").map_err(io_err("write baresip contacts"))?;
    Ok(())
}

/// A random-ish RTP port range of 200 ports in 20000..40000, so parallel instances
/// rarely collide.
fn rtp_range() -> String {
    let p = crate::ports::free_udp_port();
    let base = 20000 + (u32::from(p) * 7919 % 100) * 200;
    format!("{base}-{}", base + 199)
}

fn baresip_command(dir: &Path, extra: &[&str]) -> Result<Command, HarnessError> {
    let baresip = require_tool("baresip")?;
    let mut cmd = match crate::tools::find("stdbuf") {
        Some(stdbuf) => {
            let mut c = Command::new(stdbuf);
            c.args(["-oL", "-eL"]).arg(baresip);
            c
        }
        None => Command::new(baresip),
    };
    cmd.arg("-f").arg(dir).arg("-s").args(extra);
    Ok(cmd)
}

impl BaresipCall {
    /// A call to `sip:bot@target` sending `in_wav`, hold 5 s, PCMU+PCMA, setup timeout 15 s.
    pub fn new(target: SocketAddr, in_wav: &Path) -> BaresipCall {
        BaresipCall {
            target,
            callee_user: String::from("bot"),
            in_wav: in_wav.to_path_buf(),
            out_wav: None,
            hold: Duration::from_secs(5),
            codecs: BaresipCodecs::PcmuPcma,
            setup_timeout: Duration::from_secs(15),
        }
    }

    /// Records what the callee sends to `out`.
    pub fn record_to(mut self, out: &Path) -> Self {
        self.out_wav = Some(out.to_path_buf());
        self
    }

    /// Sets the hold time.
    pub fn hold(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    /// Sets the codecs offered.
    pub fn codecs(mut self, codecs: BaresipCodecs) -> Self {
        self.codecs = codecs;
        self
    }

    /// Sets the Request-URI user.
    pub fn callee_user(mut self, user: &str) -> Self {
        self.callee_user = user.to_string();
        self
    }

    /// Sets the setup timeout (whole seconds, at least 1).
    pub fn setup_timeout(mut self, t: Duration) -> Self {
        self.setup_timeout = t.max(Duration::from_secs(1));
        self
    }

    /// The Request-URI dialled.
    pub fn uri(&self) -> String {
        sip_uri(&self.callee_user, self.target)
    }

    /// Places the call and follows it to its end (bounded by setup timeout + hold + 30 s).
    pub fn run(&self) -> Result<BaresipCallResult, HarnessError> {
        ensure_loopback(self.target.ip())?;
        require_tool("baresip")?;
        let dir = crate::temp_dir("baresip-call");
        let ip = loopback(self.target.is_ipv6());
        let in_secs = audio_seconds(&self.in_wav)?;
        let pad = (self.hold.as_secs_f64() - in_secs).max(0.0) + 5.0;
        let src = dir.path().join("in.wav");
        sox_to_8k_pcm16(&self.in_wav, &src, Some(pad))?;
        let setup_secs = self.setup_timeout.as_secs().max(1);
        write_config(
            dir.path(),
            &ConfigArgs {
                listen: format!("{}:0", host_uri(ip)),
                ip,
                source: &src,
                snd_path: dir.path(),
                max_calls: 1,
                local_timeout: setup_secs,
            },
        )?;
        std::fs::write(
            dir.path().join("accounts"),
            format!(
                "<sip:caller@{}>;regint=0;audio_codecs={}\n",
                host_uri(ip),
                self.codecs.list()
            ),
        )
        .map_err(io_err("write baresip accounts"))?;
        let hard_limit = setup_secs + self.hold.as_secs() + 30;
        let dial = format!("/dial {}", self.uri());
        let cmd = baresip_command(dir.path(), &["-t", &hard_limit.to_string(), "-e", dial.as_str()])?;
        let log = dir.path().join("baresip.log");
        let t0 = Instant::now();
        let mut child = Child::spawn("baresip-caller", cmd, &log).map_err(io_err("spawn baresip"))?;

        let mut established: Option<Instant> = None;
        let ended_by;
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let text = read_lossy(&log);
            if !matches!(child.wait_timeout(Duration::ZERO), Ok(None)) {
                ended_by = if established.is_some() {
                    CallEnd::BaresipExited
                } else {
                    closed_reason(&text).map_or(CallEnd::BaresipExited, CallEnd::Rejected)
                };
                break;
            }
            match established {
                None => {
                    if text.contains("Call established:") {
                        established = Some(Instant::now());
                    } else if let Some(reason) = closed_reason(&text) {
                        ended_by = CallEnd::Rejected(reason);
                        break;
                    } else if t0.elapsed() >= Duration::from_secs(setup_secs) {
                        ended_by = CallEnd::NoAnswer;
                        break;
                    }
                }
                Some(at) => {
                    if let Some(reason) = closed_reason(&text) {
                        ended_by = if reason == "Connection reset by peer" {
                            CallEnd::RemoteBye
                        } else {
                            CallEnd::Rejected(reason)
                        };
                        break;
                    } else if text.contains("audio error") {
                        ended_by = CallEnd::LocalAudioEnded;
                        break;
                    } else if at.elapsed() >= self.hold {
                        ended_by = CallEnd::LocalHangup;
                        break;
                    }
                }
            }
        }
        let ended_at = Instant::now();
        // SIGTERM: baresip sends BYE (or CANCEL) and exits after the transaction.
        child.stop();
        let text = read_lossy(&log);
        let provisional: Vec<String> = {
            let mut v: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with("SIP/2.0 1") && l.get(8..11).is_some_and(|c| c.starts_with('1')))
                .map(str::to_string)
                .collect();
            v.dedup();
            v
        };
        let codec = text.lines().find_map(|l| {
            l.split_once("Set audio decoder: ")
                .and_then(|(_, r)| r.split_whitespace().next())
                .map(str::to_string)
        });
        let rtp_received = text.contains("incoming rtp for 'audio' established");
        let bye_response = if ended_by == CallEnd::LocalHangup {
            response_to(&text, "BYE")
        } else {
            None
        };
        let mut received_audio = None;
        let mut received_seconds = 0.0;
        if let Some(dec) = newest_dump(dir.path()) {
            received_seconds = audio_seconds(&dec).unwrap_or(0.0);
            if let Some(out) = &self.out_wav {
                sox_to_8k_pcm16(&dec, out, None)?;
                received_audio = Some(out.clone());
            }
        }
        Ok(BaresipCallResult {
            answered: established.is_some(),
            setup_time: established.map(|e| e.duration_since(t0)),
            duration: established.map(|e| ended_at.duration_since(e)),
            ended_by,
            codec,
            rtp_received,
            received_audio,
            received_seconds,
            provisional,
            bye_response,
            log: text,
        })
    }
}

fn closed_reason(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.split_once("session closed: ")
            .map(|(_, r)| r.trim().to_string())
    })
}

/// The start line of the first response whose CSeq names `method`, from the SIP trace.
fn response_to(text: &str, method: &str) -> Option<String> {
    let mut lines = text.lines();
    let mut start: Option<&str> = None;
    while let Some(l) = lines.next() {
        let is_transport = ["UDP ", "TCP ", "TLS "].iter().any(|p| l.starts_with(p)) && l.contains(" -> ");
        if is_transport {
            start = lines.next();
            continue;
        }
        if let Some(cseq) = l.strip_prefix("CSeq: ")
            && cseq.split_whitespace().nth(1) == Some(method)
            && let Some(s) = start
            && s.starts_with("SIP/2.0")
        {
            return Some(s.to_string());
        }
    }
    None
}

fn newest_dump(dir: &Path) -> Option<PathBuf> {
    let mut dumps: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.starts_with("dump-") && n.ends_with("-dec.wav")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dumps.sort();
    dumps.pop().map(|(_, p)| p)
}

/// baresip auto-answering every INVITE, playing a reply (padded with silence) and
/// hanging up itself when the reply has been played (within ~1 s of its end).
pub struct BaresipAnswerer {
    child: Child,
    addr: SocketAddr,
    dir: crate::TempDir,
    log: PathBuf,
}

impl BaresipAnswerer {
    /// Starts the answerer on a free loopback port (`::1` when `ipv6`), playing `reply`
    /// then hanging up; waits until baresip is ready (at most 10 s).
    pub fn start(reply: &Path, ipv6: bool) -> Result<BaresipAnswerer, HarnessError> {
        BaresipAnswerer::start_with_pad(reply, ipv6, Duration::ZERO)
    }

    /// Like [`start`](Self::start), appending `pad` of silence to the reply (longer
    /// calls before the answerer hangs up).
    pub fn start_with_pad(reply: &Path, ipv6: bool, pad: Duration) -> Result<BaresipAnswerer, HarnessError> {
        require_tool("baresip")?;
        let dir = crate::temp_dir("baresip-answer");
        let ip = loopback(ipv6);
        let src = dir.path().join("reply.wav");
        sox_to_8k_pcm16(reply, &src, Some(pad.as_secs_f64()))?;
        let port = free_sip_port_pair(ip);
        let addr = SocketAddr::new(ip, port);
        let snd = dir.path().join("recordings");
        std::fs::create_dir_all(&snd).map_err(io_err("create recordings dir"))?;
        write_config(
            dir.path(),
            &ConfigArgs {
                listen: format!("{}:{port}", host_uri(ip)),
                ip,
                source: &src,
                snd_path: &snd,
                max_calls: 16,
                local_timeout: 60,
            },
        )?;
        std::fs::write(
            dir.path().join("accounts"),
            format!(
                "<sip:bot@{}>;regint=0;answermode=auto;audio_codecs=PCMU/8000/1,PCMA/8000/1\n",
                host_uri(ip)
            ),
        )
        .map_err(io_err("write baresip accounts"))?;
        let cmd = baresip_command(dir.path(), &[])?;
        let log = dir.path().join("baresip.log");
        let mut child = Child::spawn("baresip-answerer", cmd, &log).map_err(io_err("spawn baresip"))?;
        let t0 = Instant::now();
        loop {
            let text = read_lossy(&log);
            if text.contains("baresip is ready") {
                if text.contains("SIP Transport failed") || text.contains("init failed") {
                    child.stop();
                    return Err(HarnessError::start_failed("baresip", &text));
                }
                break;
            }
            if !matches!(child.wait_timeout(Duration::ZERO), Ok(None))
                || t0.elapsed() > Duration::from_secs(10)
            {
                child.stop();
                return Err(HarnessError::start_failed("baresip", &read_lossy(&log)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(BaresipAnswerer {
            child,
            addr,
            dir,
            log,
        })
    }

    /// The answerer's SIP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `sip:USER@addr`.
    pub fn uri(&self, user: &str) -> String {
        sip_uri(user, self.addr)
    }

    /// baresip's log so far (with the SIP trace).
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// Calls answered so far.
    pub fn answered(&self) -> usize {
        self.log().matches("answering call on line").count()
    }

    /// Calls ended so far.
    pub fn ended(&self) -> usize {
        self.log().matches("terminated (duration").count()
    }

    /// Waits until at least `n` calls were answered; false on timeout.
    pub fn wait_answered(&self, n: usize, timeout: Duration) -> bool {
        crate::harness::wait_until(timeout, Duration::from_millis(50), || self.answered() >= n)
    }

    /// Waits until at least `n` calls ended; false on timeout.
    pub fn wait_ended(&self, n: usize, timeout: Duration) -> bool {
        crate::harness::wait_until(timeout, Duration::from_millis(50), || self.ended() >= n)
    }

    /// What callers sent, one `dump-*-dec.wav` per call, oldest first.
    pub fn recordings(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("recordings"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Stops baresip by PID (it hangs up live calls first).
    pub fn stop(mut self) {
        self.child.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::tail;

    #[test]
    fn bye_response_from_trace() {
        let trace = "UDP 127.0.0.1:5000 -> 127.0.0.1:5060\nBYE sip:x SIP/2.0\nCSeq: 2 BYE\n\n\
                     UDP 127.0.0.1:5060 -> 127.0.0.1:5000\nSIP/2.0 200 OK\nVia: x\nCSeq: 2 BYE\n";
        assert_eq!(response_to(trace, "BYE").as_deref(), Some("SIP/2.0 200 OK"));
        assert_eq!(response_to(trace, "INVITE"), None);
    }

    /// baresip calls a baresip answerer twice: once we hang up (BYE answered 200), once
    /// the answerer hangs up when its reply is done (remote BYE). Audio flows both ways.
    #[test]
    fn heavy_baresip_caller_vs_answerer() {
        if crate::tools::require("baresip").is_none() || crate::tools::require("sox").is_none() {
            return;
        }
        let Some(shared) = crate::shared_dir() else {
            crate::tools::missing("../shared/peers/audio");
            return;
        };
        let audio = shared.join("peers/audio");
        let callee =
            BaresipAnswerer::start_with_pad(&audio.join("caller_yes.wav"), false, Duration::from_secs(4))
                .unwrap();
        let out = crate::temp_dir("baresip-test");
        let got = out.path().join("got.wav");
        let r = call(
            callee.addr(),
            &audio.join("caller_yes.wav"),
            &got,
            Duration::from_secs(2),
            BaresipCodecs::PcmaPcmu,
        )
        .unwrap();
        assert!(r.answered, "{}", tail(&r.log, 30));
        assert_eq!(r.ended_by, CallEnd::LocalHangup);
        assert_eq!(r.codec.as_deref(), Some("PCMA"));
        assert!(r.rtp_received);
        assert!(r.received_seconds > 1.0, "{r:?}");
        assert!(got.is_file());
        assert_eq!(
            r.bye_response.as_deref(),
            Some("SIP/2.0 200 OK"),
            "{}",
            tail(&r.log, 40)
        );
        assert!(callee.wait_ended(1, Duration::from_secs(5)));
        assert_eq!(callee.answered(), 1);
        // Second call: held longer than the answerer's reply, so it hangs up on us.
        let r = BaresipCall::new(callee.addr(), &audio.join("caller_yes.wav"))
            .hold(Duration::from_secs(15))
            .run()
            .unwrap();
        assert!(r.answered);
        assert_eq!(r.ended_by, CallEnd::RemoteBye, "{}", tail(&r.log, 30));
        assert!(r.duration.unwrap() < Duration::from_secs(10), "{r:?}");
        assert_eq!(callee.recordings().len(), 2);
        callee.stop();
        // Nobody listening: not answered within the setup timeout.
        let nobody = SocketAddr::new(loopback(false), crate::ports::free_udp_port());
        let r = BaresipCall::new(nobody, &audio.join("caller_yes.wav"))
            .setup_timeout(Duration::from_secs(2))
            .run()
            .unwrap();
        assert!(!r.answered);
        assert!(
            matches!(r.ended_by, CallEnd::NoAnswer | CallEnd::Rejected(_)),
            "{r:?}"
        );
    }
}
