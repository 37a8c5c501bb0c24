//! The SIP torture set of `../shared/peers/torture/` (56 raw messages modelled on RFC
//! 4475 plus transaction and SDP edge cases, with an `INDEX` of expected answers), sent
//! to a target over UDP the way `torture/torture.py` does it.
//!
//! Per message: placeholders are filled (`__HOST__`, `__PORT__`, `__LHOST__`,
//! `__LPORT__`, `__BRANCH2__`, `__BRANCH__`, `__CALLID__`, `__TAG__`, then `__CL__` = the
//! body length), one datagram is sent from an ephemeral loopback port, responses that
//! match its Call-ID or Via branch are collected (INVITEs: until a final response), every
//! INVITE is cleaned up (ACK of a non-2xx; ACK + BYE of a 2xx; CANCEL when only
//! provisional), requests from the target get a 200, and an OPTIONS probe checks that
//! the target is still alive.
//!
//! ```no_run
//! use callbot_testkit::torture::{TortureOptions, TortureSet};
//! let set = TortureSet::load()?.expect("../shared present");
//! let report = set.run("127.0.0.1:5060".parse()?, &TortureOptions::default())?;
//! assert_eq!(report.alive_at_end, Some(true));
//! println!("{}", report.table());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{HarnessError, ensure_loopback, host_uri, io_err, loopback};

/// One message of the set, with its line in `INDEX`.
#[derive(Debug, Clone)]
pub struct TortureMessage {
    /// File name (`01_options_valid.sip`, ...).
    pub file: String,
    /// Expected status: `|`-separated patterns over the final code (`\d`, `\d{3}`,
    /// digits) or `NONE` for no response.
    pub expected: String,
    /// Category column.
    pub category: String,
    /// Description column.
    pub description: String,
    /// The raw template bytes (placeholders not yet filled).
    pub raw: Vec<u8>,
}

/// The loaded set.
#[derive(Debug, Clone)]
pub struct TortureSet {
    /// The folder it was loaded from.
    pub dir: PathBuf,
    /// The messages, in `INDEX` order.
    pub messages: Vec<TortureMessage>,
    probe: Vec<u8>,
}

/// How to run the set.
#[derive(Debug, Clone)]
pub struct TortureOptions {
    /// How long to collect responses to a non-INVITE (torture.py `--timeout`, 1.0 s).
    pub timeout: Duration,
    /// How long to wait for an INVITE's final response (`--invite-timeout`, 4 s).
    pub invite_timeout: Duration,
    /// How long the OPTIONS probe waits (`--probe-timeout`, 2 s).
    pub probe_timeout: Duration,
    /// Probe aliveness after each message (`--no-probe` turns it off).
    pub probe: bool,
    /// Only files whose name contains one of these substrings (all when empty).
    pub only: Vec<String>,
}

impl Default for TortureOptions {
    fn default() -> Self {
        TortureOptions {
            timeout: Duration::from_secs(1),
            invite_timeout: Duration::from_secs(4),
            probe_timeout: Duration::from_secs(2),
            probe: true,
            only: Vec::new(),
        }
    }
}

/// The outcome for one message.
#[derive(Debug, Clone)]
pub struct TortureRow {
    /// File name.
    pub file: String,
    /// Bytes sent (after filling the placeholders).
    pub sent_bytes: usize,
    /// Status codes received for it, in order.
    pub statuses: Vec<u16>,
    /// The expectation from `INDEX`.
    pub expected: String,
    /// True when the outcome matches the expectation (`ok`), false for `DIFF`.
    pub ok: bool,
    /// Clean-up notes (`ACK`, `ACK+BYE->200`, `CANCEL->200,487`).
    pub notes: Vec<String>,
    /// Whether the OPTIONS probe after it was answered (`None` without probing).
    pub alive: Option<bool>,
    /// A send error, if the datagram could not be sent (e.g. too large).
    pub send_error: Option<String>,
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct TortureReport {
    /// The target.
    pub target: SocketAddr,
    /// One row per message.
    pub rows: Vec<TortureRow>,
    /// Whether the target answered the baseline OPTIONS before the run.
    pub baseline_alive: bool,
    /// Whether the target answered the final OPTIONS (`None` without probing).
    pub alive_at_end: Option<bool>,
}

impl TortureReport {
    /// Messages that got at least one response.
    pub fn responded(&self) -> usize {
        self.rows.iter().filter(|r| !r.statuses.is_empty()).count()
    }

    /// Rows whose outcome differs from `INDEX`.
    pub fn diffs(&self) -> Vec<&TortureRow> {
        self.rows.iter().filter(|r| !r.ok).collect()
    }

    /// Rows after which the probe went unanswered.
    pub fn dead_after(&self) -> Vec<&TortureRow> {
        self.rows.iter().filter(|r| r.alive == Some(false)).collect()
    }

    /// A table like torture.py prints.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:38} {:>6}  {:28} {:18} {:7} alive\n",
            "file", "bytes", "responses", "expected", "verdict"
        );
        for r in &self.rows {
            let mut resp = if r.statuses.is_empty() {
                String::from("-- none --")
            } else {
                r.statuses
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            if let Some(e) = &r.send_error {
                resp = format!("send error: {e}");
            }
            if !r.notes.is_empty() {
                resp = format!("{resp} [{}]", r.notes.join(";"));
            }
            let alive = match r.alive {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            let expected: String = r.expected.chars().take(18).collect();
            let _ = writeln!(
                out,
                "{:38} {:6}  {:28} {:18} {:7} {alive}",
                r.file,
                r.sent_bytes,
                resp,
                expected,
                if r.ok { "ok" } else { "DIFF" }
            );
        }
        let _ = writeln!(
            out,
            "torture: {}/{} messages got a response; {} matched the expectation, {} DIFF; alive at end: {:?}",
            self.responded(),
            self.rows.len(),
            self.rows.len() - self.diffs().len(),
            self.diffs().len(),
            self.alive_at_end
        );
        out
    }
}

impl TortureSet {
    /// Loads `peers/torture/` from [`crate::shared_dir`]; `Ok(None)` (after reporting it
    /// missing, which panics under `CALLBOT_REQUIRE_PEERS=1`) when it is not there.
    pub fn load() -> Result<Option<TortureSet>, HarnessError> {
        let Some(shared) = crate::shared_dir() else {
            crate::tools::missing("../shared/peers/torture");
            return Ok(None);
        };
        let dir = shared.join("peers").join("torture");
        if !dir.join("INDEX").is_file() {
            crate::tools::missing("../shared/peers/torture/INDEX");
            return Ok(None);
        }
        TortureSet::load_from(&dir).map(Some)
    }

    /// Loads a set from a folder holding `INDEX` and the `.sip` files.
    pub fn load_from(dir: &Path) -> Result<TortureSet, HarnessError> {
        let index = std::fs::read_to_string(dir.join("INDEX")).map_err(io_err("read torture INDEX"))?;
        let mut messages = Vec::new();
        for line in index.lines() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let mut cols = line.split('\t');
            let (Some(file), Some(expected)) = (cols.next(), cols.next()) else {
                return Err(HarnessError::InvalidArgument(format!("bad INDEX line {line:?}")));
            };
            for alt in expected.split('|') {
                if alt != "NONE" && compile_pattern(alt).is_none() {
                    return Err(HarnessError::InvalidArgument(format!(
                        "unsupported status pattern {alt:?} in INDEX"
                    )));
                }
            }
            let raw = std::fs::read(dir.join(file)).map_err(io_err(format!("read {file}")))?;
            messages.push(TortureMessage {
                file: file.to_string(),
                expected: expected.to_string(),
                category: cols.next().unwrap_or_default().to_string(),
                description: cols.next().unwrap_or_default().to_string(),
                raw,
            });
        }
        let probe =
            std::fs::read(dir.join("01_options_valid.sip")).map_err(io_err("read 01_options_valid.sip"))?;
        Ok(TortureSet {
            dir: dir.to_path_buf(),
            messages,
            probe,
        })
    }

    /// Sends the set to `target` (loopback only) and returns one row per message.
    pub fn run(&self, target: SocketAddr, opts: &TortureOptions) -> Result<TortureReport, HarnessError> {
        ensure_loopback(target.ip())?;
        let mut t = Target::new(target)?;
        let mut use_probe = opts.probe;
        let baseline_alive = t.probe(&self.probe, 0, opts.probe_timeout)?;
        if !baseline_alive {
            use_probe = false;
        }
        let mut rows = Vec::new();
        for (i, m) in self.messages.iter().enumerate() {
            if !opts.only.is_empty() && !opts.only.iter().any(|o| m.file.contains(o.as_str())) {
                continue;
            }
            let n = i + 1;
            let (data, callid, branch) = t.fill(&m.raw, n);
            let send_error = t.send(&data).err().map(|e| e.to_string());
            let is_invite = data.starts_with(b"INVITE ");
            let matches = |d: &[u8]| {
                hdr(d, "Call-ID", Some("i")).as_deref() == Some(callid.as_slice())
                    || hdr(d, "Via", Some("v")).is_some_and(|v| find(&v, &branch).is_some())
            };
            let resps = if is_invite {
                t.recv_until(Instant::now() + opts.invite_timeout, &matches, |g| {
                    g.iter().any(|x| is_final(x))
                })?
            } else {
                t.recv_until(Instant::now() + opts.timeout, &matches, |_| false)?
            };
            let statuses: Vec<u16> = resps.iter().filter_map(|r| status(r)).collect();
            let notes = if is_invite {
                t.invite_cleanup(&data, &resps, &callid, &branch, n)?
            } else {
                Vec::new()
            };
            let ok = verdict(&m.expected, &statuses);
            let alive = if use_probe {
                Some(t.probe(&self.probe, n, opts.probe_timeout)?)
            } else {
                None
            };
            rows.push(TortureRow {
                file: m.file.clone(),
                sent_bytes: data.len(),
                statuses,
                expected: m.expected.clone(),
                ok,
                notes,
                alive,
                send_error,
            });
        }
        let alive_at_end = if use_probe {
            Some(t.probe(&self.probe, 999, opts.probe_timeout)?)
        } else {
            None
        };
        Ok(TortureReport {
            target,
            rows,
            baseline_alive,
            alive_at_end,
        })
    }
}

/// True when the received `statuses` match `expected` as torture.py judges it: with
/// responses, the last final code (or the last code when none is final) must match one
/// non-`NONE` alternative; without, `NONE` must be an alternative.
pub fn verdict(expected: &str, statuses: &[u16]) -> bool {
    let alts: Vec<&str> = expected.split('|').collect();
    if statuses.is_empty() {
        return alts.contains(&"NONE");
    }
    let finals: Vec<u16> = statuses.iter().copied().filter(|&c| c >= 200).collect();
    let Some(&code) = finals.last().or(statuses.last()) else {
        return false;
    };
    let code = code.to_string();
    alts.iter()
        .filter(|a| **a != "NONE")
        .any(|a| compile_pattern(a).is_some_and(|p| pattern_matches(&p, &code)))
}

#[derive(Debug, Clone, Copy)]
enum Atom {
    Digit(u8),
    AnyDigit,
}

/// The tiny regex subset INDEX uses: digits, `\d` and `{n}` repeats, matched whole.
fn compile_pattern(p: &str) -> Option<Vec<Atom>> {
    let b = p.as_bytes();
    let mut atoms = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let atom = match b.get(i)? {
            c if c.is_ascii_digit() => {
                i += 1;
                Atom::Digit(*c)
            }
            b'\\' if b.get(i + 1) == Some(&b'd') => {
                i += 2;
                Atom::AnyDigit
            }
            _ => return None,
        };
        let mut count = 1;
        if b.get(i) == Some(&b'{') {
            let close = b[i..].iter().position(|&c| c == b'}')? + i;
            count = std::str::from_utf8(&b[i + 1..close]).ok()?.parse().ok()?;
            i = close + 1;
        }
        for _ in 0..count {
            atoms.push(atom);
        }
    }
    Some(atoms)
}

fn pattern_matches(atoms: &[Atom], s: &str) -> bool {
    s.len() == atoms.len()
        && s.bytes().zip(atoms).all(|(c, a)| match a {
            Atom::Digit(d) => c == *d,
            Atom::AnyDigit => c.is_ascii_digit(),
        })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn head(msg: &[u8]) -> &[u8] {
    match find(msg, b"\r\n\r\n") {
        Some(p) => &msg[..p],
        None => msg,
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |p| p + 1);
    &b[s..e.max(s)]
}

fn header_lines<'a>(msg: &'a [u8], name: &str, compact: Option<&str>) -> Vec<(&'a [u8], &'a [u8])> {
    let mut out = Vec::new();
    let mut lines = head(msg).split(|&c| c == b'\n');
    lines.next();
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            continue;
        };
        let k = trim(&line[..colon]);
        let hit = k.eq_ignore_ascii_case(name.as_bytes())
            || compact.is_some_and(|c| k.eq_ignore_ascii_case(c.as_bytes()));
        if hit {
            out.push((line, trim(&line[colon + 1..])));
        }
    }
    out
}

/// First value of header `name` (or its compact form) in a raw message.
fn hdr(msg: &[u8], name: &str, compact: Option<&str>) -> Option<Vec<u8>> {
    header_lines(msg, name, compact).first().map(|(_, v)| v.to_vec())
}

fn status(msg: &[u8]) -> Option<u16> {
    let rest = msg.strip_prefix(b"SIP/2.0 ")?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

fn is_final(msg: &[u8]) -> bool {
    status(msg).is_some_and(|c| c >= 200)
}

struct Target {
    sock: UdpSocket,
    target: SocketAddr,
    lport: u16,
    hostu: String,
    lhostu: String,
    stash: Vec<Vec<u8>>,
    rng: u64,
}

impl Target {
    fn new(target: SocketAddr) -> Result<Target, HarnessError> {
        let ip = loopback(target.is_ipv6());
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).map_err(io_err("bind torture socket"))?;
        let lport = sock.local_addr().map_err(io_err("local addr"))?.port();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ u64::from(std::process::id()) << 32
            ^ u64::from(lport);
        Ok(Target {
            sock,
            target,
            lport,
            hostu: host_uri(target.ip()),
            lhostu: host_uri(ip),
            stash: Vec::new(),
            rng: seed | 1,
        })
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: unique-enough tokens for Call-IDs and branches.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills the placeholders; returns (datagram, Call-ID, branch token).
    fn fill(&mut self, raw: &[u8], n: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let tok = format!("{n:02}{:08x}", self.random() & 0xffff_ffff);
        let subs: [(&[u8], String); 8] = [
            (b"__HOST__", self.hostu.clone()),
            (b"__PORT__", self.target.port().to_string()),
            (b"__LHOST__", self.lhostu.clone()),
            (b"__LPORT__", self.lport.to_string()),
            (b"__BRANCH2__", format!("-t2-{tok}")),
            (b"__BRANCH__", format!("-t-{tok}")),
            (b"__CALLID__", format!("torture-{tok}")),
            (b"__TAG__", format!("tt{tok}")),
        ];
        let mut data = raw.to_vec();
        for (k, v) in subs {
            data = replace_all(&data, k, v.as_bytes());
        }
        if find(&data, b"__CL__").is_some() {
            let body_len = find(&data, b"\r\n\r\n").map_or(0, |p| data.len() - p - 4);
            data = replace_all(&data, b"__CL__", body_len.to_string().as_bytes());
        }
        (
            data,
            format!("torture-{tok}").into_bytes(),
            format!("-t-{tok}").into_bytes(),
        )
    }

    fn send(&self, data: &[u8]) -> std::io::Result<()> {
        self.sock.send_to(data, self.target).map(|_| ())
    }

    fn recv_until(
        &mut self,
        deadline: Instant,
        matches: &dyn Fn(&[u8]) -> bool,
        stop: impl Fn(&[Vec<u8>]) -> bool,
    ) -> Result<Vec<Vec<u8>>, HarnessError> {
        let mut got = Vec::new();
        let mut keep = Vec::new();
        for d in self.stash.drain(..) {
            if matches(&d) {
                got.push(d);
            } else {
                keep.push(d);
            }
        }
        self.stash = keep;
        let mut buf = vec![0u8; 70_000];
        loop {
            if stop(&got) {
                return Ok(got);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(got);
            }
            self.sock
                .set_read_timeout(Some(left))
                .map_err(io_err("set timeout"))?;
            let n = match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(got);
                }
                // ICMP port unreachable from an earlier send: keep listening.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(io_err("recv")(e)),
            };
            let d = buf[..n].to_vec();
            if !d.starts_with(b"SIP/2.0 ") {
                self.answer_request(&d);
                continue;
            }
            if matches(&d) {
                got.push(d);
            } else {
                self.stash.push(d);
                let excess = self.stash.len().saturating_sub(50);
                self.stash.drain(..excess);
            }
        }
    }

    fn answer_request(&self, req: &[u8]) {
        if req.starts_with(b"ACK ") || trim(req).is_empty() {
            return;
        }
        let mut lines: Vec<Vec<u8>> = vec![b"SIP/2.0 200 OK".to_vec()];
        for (line, _) in header_lines(req, "Via", Some("v")) {
            lines.push(line.to_vec());
        }
        for (name, c) in [
            ("From", Some("f")),
            ("To", Some("t")),
            ("Call-ID", Some("i")),
            ("CSeq", None),
        ] {
            if let Some(h) = hdr(req, name, c) {
                let mut l = format!("{name}: ").into_bytes();
                l.extend_from_slice(&h);
                lines.push(l);
            }
        }
        lines.push(b"Content-Length: 0".to_vec());
        let mut msg = lines.join(&b"\r\n"[..]);
        msg.extend_from_slice(b"\r\n\r\n");
        let _ = self.sock.send_to(&msg, self.target);
    }

    fn probe(&mut self, raw: &[u8], n: usize, timeout: Duration) -> Result<bool, HarnessError> {
        let (data, cid, _) = self.fill(raw, n);
        let data = replace_all(&data, b"torture-", b"probe-");
        let cid = replace_all(&cid, b"torture-", b"probe-");
        let _ = self.send(&data);
        let got = self.recv_until(
            Instant::now() + timeout,
            &|d: &[u8]| hdr(d, "Call-ID", Some("i")).as_deref() == Some(cid.as_slice()),
            |g| !g.is_empty(),
        )?;
        Ok(!got.is_empty())
    }

    fn base(
        &self,
        method: &[u8],
        uri: &[u8],
        [from, to, callid]: [&[u8]; 3],
        cseq: &[u8],
        vbranch: &[u8],
    ) -> Vec<u8> {
        let mut m = Vec::new();
        for part in [
            [method, b" ", uri, b" SIP/2.0"].concat(),
            [
                b"Via: SIP/2.0/UDP ".as_slice(),
                self.lhostu.as_bytes(),
                b":",
                self.lport.to_string().as_bytes(),
                b";branch=z9hG4bK",
                vbranch,
                b";rport",
            ]
            .concat(),
            b"Max-Forwards: 70".to_vec(),
            [b"From: ".as_slice(), from].concat(),
            [b"To: ".as_slice(), to].concat(),
            [b"Call-ID: ".as_slice(), callid].concat(),
            [b"CSeq: ".as_slice(), cseq].concat(),
            b"Content-Length: 0".to_vec(),
        ] {
            m.extend_from_slice(&part);
            m.extend_from_slice(b"\r\n");
        }
        m.extend_from_slice(b"\r\n");
        m
    }

    /// Leaves no call or transaction behind after a torture INVITE.
    fn invite_cleanup(
        &mut self,
        inv: &[u8],
        resps: &[Vec<u8>],
        callid: &[u8],
        branch: &[u8],
        n: usize,
    ) -> Result<Vec<String>, HarnessError> {
        let mut notes = Vec::new();
        let mut finals: Vec<Vec<u8>> = resps.iter().filter(|r| is_final(r)).cloned().collect();
        let first_line = inv.split(|&c| c == b'\r').next().unwrap_or_default();
        let ruri = first_line
            .split(|&c| c == b' ')
            .nth(1)
            .unwrap_or_default()
            .to_vec();
        let (Some(_via), Some(from)) = (hdr(inv, "Via", Some("v")), hdr(inv, "From", Some("f"))) else {
            return Ok(notes);
        };
        let is_invite_final =
            |x: &[u8]| is_final(x) && hdr(x, "CSeq", None).is_some_and(|c| find(&c, b" INVITE").is_some());
        if finals.is_empty() {
            if resps.is_empty() {
                return Ok(notes);
            }
            let to = hdr(inv, "To", Some("t")).unwrap_or_default();
            let cancel = self.base(b"CANCEL", &ruri, [&from, &to, callid], b"1 CANCEL", branch);
            let _ = self.send(&cancel);
            let cid = callid.to_vec();
            let got = self.recv_until(
                Instant::now() + Duration::from_secs(4),
                &|d: &[u8]| hdr(d, "Call-ID", Some("i")).as_deref() == Some(cid.as_slice()),
                |g| g.iter().any(|x| is_invite_final(x)),
            )?;
            notes.push(format!(
                "CANCEL->{}",
                got.iter()
                    .filter_map(|r| status(r).map(|c| c.to_string()))
                    .collect::<Vec<_>>()
                    .join(",")
            ));
            finals = got.into_iter().filter(|x| is_invite_final(x)).collect();
            if finals.is_empty() {
                return Ok(notes);
            }
        }
        let Some(fin) = finals.last() else {
            return Ok(notes);
        };
        let code = status(fin).unwrap_or(0);
        let to_tagged = hdr(fin, "To", Some("t"))
            .or_else(|| hdr(inv, "To", Some("t")))
            .unwrap_or_default();
        if code >= 300 {
            let ack = self.base(b"ACK", &ruri, [&from, &to_tagged, callid], b"1 ACK", branch);
            let _ = self.send(&ack);
            notes.push(String::from("ACK"));
        } else {
            let target = contact_uri(fin).unwrap_or(ruri);
            let nb = format!("-c{n:02}{:06x}", self.random() & 0xff_ffff);
            let ack = self.base(
                b"ACK",
                &target,
                [&from, &to_tagged, callid],
                b"1 ACK",
                format!("{nb}a").as_bytes(),
            );
            let bye = self.base(
                b"BYE",
                &target,
                [&from, &to_tagged, callid],
                b"2 BYE",
                format!("{nb}b").as_bytes(),
            );
            let _ = self.send(&ack);
            let _ = self.send(&bye);
            let cid = callid.to_vec();
            let got = self.recv_until(
                Instant::now() + Duration::from_secs(3),
                &|d: &[u8]| {
                    hdr(d, "Call-ID", Some("i")).as_deref() == Some(cid.as_slice())
                        && hdr(d, "CSeq", None).is_some_and(|c| find(&c, b"BYE").is_some())
                },
                |g| g.iter().any(|x| is_final(x)),
            )?;
            let codes: Vec<String> = got
                .iter()
                .filter_map(|r| status(r).map(|c| c.to_string()))
                .collect();
            notes.push(format!(
                "ACK+BYE->{}",
                if codes.is_empty() {
                    String::from("no answer")
                } else {
                    codes.join(",")
                }
            ));
        }
        Ok(notes)
    }
}

fn contact_uri(resp: &[u8]) -> Option<Vec<u8>> {
    let c = hdr(resp, "Contact", Some("m"))?;
    if let Some(lt) = c.iter().position(|&b| b == b'<') {
        let gt = c[lt..].iter().position(|&b| b == b'>')? + lt;
        return Some(c[lt + 1..gt].to_vec());
    }
    let t = trim(&c);
    let end = t
        .iter()
        .position(|&b| b == b';' || b.is_ascii_whitespace())
        .unwrap_or(t.len());
    (end > 0).then(|| t[..end].to_vec())
}

fn replace_all(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(verdict("2\\d\\d|405|501", &[200]));
        assert!(verdict("2\\d\\d|405|501", &[100, 405]));
        assert!(!verdict("2\\d\\d|405|501", &[400]));
        assert!(verdict("\\d{3}", &[180]));
        assert!(verdict("400|NONE", &[]));
        assert!(!verdict("400", &[]));
        assert!(!verdict("NONE", &[400]));
        assert!(verdict("488|606|415", &[100, 415]));
        assert!(compile_pattern("4x0").is_none());
        assert!(compile_pattern("\\d{3").is_none());
    }

    #[test]
    fn fill_placeholders() {
        let mut t = Target::new("127.0.0.1:5999".parse().unwrap()).unwrap();
        let raw = b"INVITE sip:bot@__HOST__:__PORT__ SIP/2.0\r\nVia: SIP/2.0/UDP __LHOST__:__LPORT__;branch=z9hG4bK__BRANCH__\r\nVia: x;branch=__BRANCH2__\r\nCall-ID: __CALLID__\r\nContent-Length: __CL__\r\n\r\nv=0\r\n";
        let (d, cid, br) = t.fill(raw, 7);
        let s = String::from_utf8(d).unwrap();
        assert!(s.starts_with("INVITE sip:bot@127.0.0.1:5999 SIP/2.0\r\n"), "{s}");
        assert!(s.contains(&format!("127.0.0.1:{};branch=z9hG4bK-t-07", t.lport)));
        assert!(s.contains("branch=-t2-07"), "{s}");
        assert!(s.contains("Content-Length: 5\r\n"), "{s}");
        assert!(s.contains(&format!("Call-ID: {}", String::from_utf8(cid).unwrap())));
        assert!(String::from_utf8(br).unwrap().starts_with("-t-07"));
        let v6 = Target::new("[::1]:5999".parse().unwrap()).unwrap();
        assert_eq!(v6.hostu, "[::1]");
    }

    #[test]
    fn headers_and_contact() {
        let r = b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP a;branch=z9hG4bK-t-1\r\nm: <sip:bot@127.0.0.1:5060;transport=udp>\r\ni: abc\r\n\r\n";
        assert_eq!(status(r), Some(200));
        assert_eq!(hdr(r, "Call-ID", Some("i")).unwrap(), b"abc");
        assert_eq!(contact_uri(r).unwrap(), b"sip:bot@127.0.0.1:5060;transport=udp");
        assert_eq!(status(b"SIP/2.0 18"), None);
    }

    #[test]
    fn loads_the_shared_set() {
        let Some(set) = TortureSet::load().unwrap() else {
            return;
        };
        assert_eq!(set.messages.len(), 56);
        assert!(set.messages.iter().all(|m| !m.expected.is_empty()));
    }

    /// Against a target that never answers: every row without response, the run is
    /// bounded, and liveness is reported false.
    #[test]
    fn silent_target() {
        let Some(set) = TortureSet::load().unwrap() else {
            return;
        };
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let opts = TortureOptions {
            timeout: Duration::from_millis(20),
            invite_timeout: Duration::from_millis(20),
            probe_timeout: Duration::from_millis(20),
            only: vec![String::from("01_"), String::from("45_"), String::from("40_")],
            ..TortureOptions::default()
        };
        let r = set.run(silent.local_addr().unwrap(), &opts).unwrap();
        assert!(!r.baseline_alive);
        assert_eq!(r.rows.len(), 3);
        assert!(r.rows.iter().all(|row| row.statuses.is_empty()));
        // 45 expects NONE, 01 expects a response, 40 (empty datagram) NONE|400.
        let oks: Vec<bool> = r.rows.iter().map(|row| row.ok).collect();
        assert_eq!(oks, [false, true, true], "{}", r.table());
    }
}
