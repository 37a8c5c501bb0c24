//! The message layer: normalise a datagram, parse it with `rsip`, extract what the
//! transaction and dialog layers need, and build messages.
//!
//! rsip 0.4 ignores `Content-Length`, does not know compact header names and fails on
//! folded lines and LF-only endings. Most datagrams are already canonical (CRLF, no
//! folding, full names, `Name: value`, one sane Content-Length): one scan proves it and
//! rsip parses the head as it is (zero-copy; the header block is indexed in
//! [`Headers`], no allocation per header; the body is cut by this layer's
//! Content-Length, rsip never sees it). Any other datagram is normalised
//! first: lines are unfolded, endings become CRLF, compact names are expanded, and the
//! body is cut to the `Content-Length` this layer checked (a length that is negative,
//! not a number, duplicated with another value or larger than the datagram is
//! rejected). Both paths end in the same checks; a property test holds them equal.
//!
//! A [`SipMsg`] borrows the datagram: the header block of a canonical datagram and the
//! body of any are not copied, and Via, From, To and Call-ID are byte ranges into the
//! header block (the tags are found when asked for), so taking a message in allocates no
//! string.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// What the message layer made of one datagram.
#[derive(Debug)]
pub(crate) enum Parsed<'a> {
    /// A keep-alive (CRLF) or an empty datagram: ignore silently.
    KeepAlive,
    /// A well-formed message.
    Message(Box<SipMsg<'a>>),
    /// A request that cannot be processed but can be answered with this status.
    Reject {
        /// Status code to answer with (400, 501, 505, 416...).
        code: u16,
        /// Why.
        reason: &'static str,
        /// The surviving headers to echo (Via, From, To, Call-ID, CSeq).
        headers: Box<EchoHeaders>,
    },
    /// Nothing can be answered: drop and count.
    Drop(&'static str),
}

/// The headers a response must echo, taken from a request that failed to parse.
#[derive(Debug, Clone)]
pub(crate) struct EchoHeaders {
    pub(crate) vias: Vec<String>,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) call_id: String,
    pub(crate) cseq: String,
}

/// SIP request methods the UA knows about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    /// Known to SIP (and rsip) but not allowed by this UA: answered 405.
    NotAllowed(String),
}

impl Method {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::NotAllowed(m) => m,
        }
    }

    fn from_rsip(m: rsip::Method) -> Method {
        match m {
            rsip::Method::Invite => Method::Invite,
            rsip::Method::Ack => Method::Ack,
            rsip::Method::Bye => Method::Bye,
            rsip::Method::Cancel => Method::Cancel,
            rsip::Method::Options => Method::Options,
            rsip::Method::Register => Method::Register,
            other => Method::NotAllowed(other.to_string()),
        }
    }
}

/// Start line of a parsed message.
#[derive(Debug, Clone)]
pub(crate) enum StartLine<'a> {
    Request { method: Method },
    Response { code: u16, reason: Cow<'a, str> },
}

/// The top Via of a message, split into the parts routing and matching use (slices of
/// the value it was parsed from).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Via<'s> {
    pub(crate) host: &'s str,
    pub(crate) port: Option<u16>,
    pub(crate) branch: Option<&'s str>,
    pub(crate) rport: bool,
    pub(crate) received: Option<&'s str>,
}

impl<'s> Via<'s> {
    /// Parses one Via value (`SIP/2.0/UDP host:port;branch=..;rport`): one byte scan
    /// (SP and HT are the only white space SIP knows), no allocation.
    pub(crate) fn parse(value: &'s str) -> Option<Via<'s>> {
        let b = value.as_bytes();
        let end_of_word = [b';', b' ', b'\t'];
        // `SIP/2.0/transport LWS sent-by`, leading white space skipped.
        let p0 = skip_lws(b, 0);
        if !eq_ci(b.get(p0..p0 + 8)?, b"SIP/2.0/") {
            return None;
        }
        let p1 = stop_at(b, p0 + 8, end_of_word);
        // No white space after the protocol: nothing names the sent-by.
        if !b.get(p1).copied().is_some_and(is_lws) {
            return None;
        }
        let s0 = skip_lws(b, p1);
        let s1 = stop_at(b, s0, end_of_word);
        let (host, port) = split_host_port(value.get(s0..s1)?)?;
        let mut via = Via {
            host,
            port,
            ..Via::default()
        };
        // The parameters, `name[=value]` each, follow the first `;` after the sent-by:
        // `i` is at the `;` before the next one (at the end when there is none).
        let mut i = stop_at(b, s1, [b';']);
        while i < b.len() {
            let p = i + 1;
            // The name ends at `=` (a value follows) or `;` (none).
            let e = stop_at(b, p, [b'=', b';']);
            let ve = if b.get(e) == Some(&b'=') {
                stop_at(b, e + 1, [b';'])
            } else {
                e
            };
            i = ve;
            // Sliced only for the parameters kept (every cut is at an ASCII byte).
            let v = || (ve > e).then(|| value.get(e + 1..ve).map(trim_lws)).flatten();
            let k = trim_lws_bytes(b.get(p..e).unwrap_or_default());
            match k.len() {
                6 if eq_ci(k, b"branch") => via.branch = v(),
                5 if eq_ci(k, b"rport") => via.rport = true,
                8 if eq_ci(k, b"received") => via.received = v(),
                _ => {}
            }
        }
        Some(via)
    }

    /// The parser [`Via::parse`] replaced (a scan per part), kept to check it against.
    #[cfg(test)]
    fn parse_reference(value: &'s str) -> Option<Via<'s>> {
        let b = value.as_bytes();
        let run = |from: usize, lws: bool| {
            from + b
                .get(from..)
                .unwrap_or_default()
                .iter()
                .position(|&c| c == b';' || is_lws(c) != lws)
                .unwrap_or(b.len().saturating_sub(from))
        };
        let p0 = run(0, true);
        let p1 = run(p0, false);
        if !b
            .get(p0..p1)
            .and_then(|p| p.get(..8))
            .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/2.0/"))
        {
            return None;
        }
        // No white space after the protocol: nothing names the sent-by.
        if !b.get(p1).copied().is_some_and(is_lws) {
            return None;
        }
        let s0 = run(p1, true);
        let s1 = run(s0, false);
        let (host, port) = split_host_port(value.get(s0..s1)?)?;
        let mut params = cut(value.get(s1..)?, b';').1;
        let mut via = Via {
            host,
            port,
            ..Via::default()
        };
        while let Some(p) = params {
            // One scan to the end of the name: `=` (a value follows) or `;` (none).
            let b = p.as_bytes();
            let (k, v) = match b.iter().position(|&c| c == b'=' || c == b';') {
                Some(i) if b.get(i) == Some(&b'=') => {
                    let (v, next) = cut(p.get(i + 1..).unwrap_or_default(), b';');
                    params = next;
                    (p.get(..i).unwrap_or_default(), Some(trim_lws(v)))
                }
                Some(i) => {
                    params = p.get(i + 1..);
                    (p.get(..i).unwrap_or_default(), None)
                }
                None => {
                    params = None;
                    (p, None)
                }
            };
            let k = trim_lws(k);
            match k.len() {
                6 if k.eq_ignore_ascii_case("branch") => via.branch = v,
                5 if k.eq_ignore_ascii_case("rport") => via.rport = true,
                8 if k.eq_ignore_ascii_case("received") => via.received = v,
                _ => {}
            }
        }
        Some(via)
    }
}

/// The top Via value `top` as a response echoes it, stamped with where the request came
/// from: `received` (RFC 3261 18.2.1) and, when the Via asked for it, `rport=PORT`
/// (RFC 3581; any `rport` parameter it had is replaced). None: echoed as it is.
pub(crate) fn stamped_top_via(top: &str, via: &Via, from: SocketAddr) -> Option<String> {
    if via.rport {
        let mut out = String::with_capacity(top.len() + 48);
        // The `;`-separated parts of `top` but those starting with `rport`, joined by `;`:
        // each run of kept parts is copied whole (one copy when `rport` is the last).
        let b = top.as_bytes();
        let is_rport = |p: &[u8]| trim_lws_bytes(p).get(..5).is_some_and(|k| eq_ci(k, b"rport"));
        let mut run: Option<(usize, usize)> = None;
        let mut first = true;
        let mut flush = |out: &mut String, run: Option<(usize, usize)>| {
            if let Some((s, e)) = run {
                if !std::mem::take(&mut first) {
                    out.push(';');
                }
                out.push_str(top.get(s..e).unwrap_or_default());
            }
        };
        let mut start = 0;
        loop {
            let end = stop_at(b, start, [b';']);
            if is_rport(b.get(start..end).unwrap_or_default()) {
                flush(&mut out, run.take());
            } else {
                run = Some((run.map_or(start, |(s, _)| s), end));
            }
            if end >= b.len() {
                break;
            }
            start = end + 1;
        }
        flush(&mut out, run);
        out.push_str(";received=");
        push_ip(&mut out, from.ip());
        out.push_str(";rport=");
        push_decimal(&mut out, from.port().into());
        Some(out)
    } else if via.received.is_none() {
        let mut out = String::with_capacity(top.len() + 48);
        out.push_str(top);
        out.push_str(";received=");
        push_ip(&mut out, from.ip());
        Some(out)
    } else {
        None
    }
}

/// Appends `n` in decimal: what `write!(out, "{n}")` gives, without the formatting
/// machinery (this runs for every message).
pub(crate) fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        start -= 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(digits.get(start..).unwrap_or_default()).unwrap_or_default());
}

/// Appends an IP address as `Display` writes it (IPv4 without the formatting machinery).
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Dotted decimal written into one stack buffer, pushed once.
            let mut buf = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                let mut put = |c: u8| {
                    if let Some(slot) = buf.get_mut(n) {
                        *slot = c;
                        n += 1;
                    }
                };
                if i > 0 {
                    put(b'.');
                }
                if octet >= 100 {
                    put(b'0' + octet / 100);
                }
                if octet >= 10 {
                    put(b'0' + octet / 10 % 10);
                }
                put(b'0' + octet % 10);
            }
            out.push_str(std::str::from_utf8(buf.get(..n).unwrap_or_default()).unwrap_or_default());
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Splits `host[:port]` / `[v6][:port]` (the host of an IPv6 reference keeps its brackets).
pub(crate) fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if s.starts_with('[') {
        let close = s.find(']')?;
        let after = s.get(close + 1..)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((s.get(..=close)?, port));
    }
    match s
        .bytes()
        .rposition(|b| b == b':')
        .map(|i| (s.get(..i), s.get(i + 1..)))
    {
        Some((Some(h), Some(p))) => Some((h, Some(parse_u16(p)?))),
        Some(_) => None,
        None if !s.is_empty() => Some((s, None)),
        None => None,
    }
}

/// `s.parse::<u16>()` without the generic parser.
fn parse_u16(s: &str) -> Option<u16> {
    parse_unsigned(s, u16::MAX.into()).and_then(|n| u16::try_from(n).ok())
}

/// `s.parse()` of an unsigned integer type whose largest value is `max` (an optional `+`,
/// then digits), without the generic parser.
fn parse_unsigned(s: &str, max: u32) -> Option<u32> {
    let digits = s.strip_prefix('+').unwrap_or(s).as_bytes();
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        // Never above 10 * max + 9: no overflow.
        n = n * 10 + u64::from(d - b'0');
        if n > u64::from(max) {
            return None;
        }
    }
    u32::try_from(n).ok()
}

/// Formats an address as a SIP host:port (`[v6]:port` for IPv6).
pub(crate) fn host_port(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
    }
}

/// Byte ranges of one header line's name and value inside [`Headers::text`], and
/// which of the headers every message is searched for it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    name: (usize, usize),
    value: (usize, usize),
    kind: Kind,
}

/// The headers the message layer looks up on every message (found by a byte compare
/// instead of a case-insensitive name compare per header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Via,
    From,
    To,
    CallId,
    CSeq,
    ContentLength,
    Other,
}

/// How many [`Kind`]s are looked up by index (all but [`Kind::Other`]).
const INDEXED: usize = 6;

impl Kind {
    fn of(name: &[u8]) -> Kind {
        // The canonical spelling compared whole first (a few word compares), any other
        // case byte by byte; the length and first letter pick the one candidate.
        let is = |canonical: &str| eq_ci(name, canonical.as_bytes());
        match (name.len(), name.first().map(u8::to_ascii_lowercase)) {
            (2, Some(b't')) if is("To") => Kind::To,
            (3, Some(b'v')) if is("Via") => Kind::Via,
            (4, Some(b'f')) if is("From") => Kind::From,
            (4, Some(b'c')) if is("CSeq") => Kind::CSeq,
            (7, Some(b'c')) if is("Call-ID") => Kind::CallId,
            (14, Some(b'c')) if is("Content-Length") => Kind::ContentLength,
            _ => Kind::Other,
        }
    }

    /// The slot of an indexed kind in [`Headers::first`].
    fn slot(self) -> Option<usize> {
        (self != Kind::Other).then_some(self as usize)
    }
}

/// The header lines of a message, in order, in one string of `Name: value` lines
/// (names canonical, values trimmed, one line per header) with an index of where each
/// name and value is: a message that arrived in that form borrows its own bytes, no
/// copy and no allocation per header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Headers<'a> {
    text: Cow<'a, str>,
    fields: Vec<Field>,
    /// Per indexed [`Kind`]: the index in `fields` of its first header.
    first: [Option<usize>; INDEXED],
    /// Per indexed [`Kind`] (bit `kind as usize`): it occurs more than once.
    repeated: u8,
}

impl<'a> Headers<'a> {
    fn with_capacity(text: usize, fields: usize) -> Headers<'a> {
        Headers {
            text: Cow::Owned(String::with_capacity(text)),
            fields: Vec::with_capacity(fields),
            ..Headers::default()
        }
    }

    /// The same headers owning their text.
    #[cfg(test)]
    fn into_owned(self) -> Headers<'static> {
        Headers {
            text: Cow::Owned(self.text.into_owned()),
            fields: self.fields,
            first: self.first,
            repeated: self.repeated,
        }
    }

    /// The text of `span` (empty if it is not in the text).
    fn at(&self, span: Span) -> &str {
        self.text.get(span.0..span.1).unwrap_or_default()
    }

    /// Every Via value split per hop (commas outside quotes), in order.
    fn vias(&self) -> impl Iterator<Item = &str> + '_ {
        self.get_all("Via").flat_map(comma_parts)
    }

    /// Appends a field, keeping the index of the first header per kind.
    fn add(&mut self, field: Field) {
        if let Some(slot) = field.kind.slot()
            && let Some(first) = self.first.get_mut(slot)
        {
            match first {
                Some(_) => self.repeated |= 1 << slot,
                None => *first = Some(self.fields.len()),
            }
        }
        self.fields.push(field);
    }

    /// The first value of an indexed kind (None for [`Kind::Other`]).
    fn first(&self, kind: Kind) -> Option<&str> {
        let index = self.first.get(kind.slot()?).copied().flatten()?;
        Some(self.value_of(self.fields.get(index)?))
    }

    /// Whether a header of this kind occurs more than once.
    fn is_repeated(&self, kind: Kind) -> bool {
        kind.slot().is_some_and(|slot| self.repeated & (1 << slot) != 0)
    }

    /// Appends a `name: value` line.
    fn push(&mut self, name: &str, value: &str) {
        let text = self.text.to_mut();
        let n0 = text.len();
        text.push_str(name);
        let n1 = text.len();
        text.push_str(": ");
        let v0 = text.len();
        text.push_str(value);
        let v1 = text.len();
        text.push_str("\r\n");
        self.add(Field {
            name: (n0, n1),
            value: (v0, v1),
            kind: Kind::of(name.as_bytes()),
        });
    }

    fn pair(&self, f: &Field) -> (&str, &str) {
        (self.name_of(f), self.value_of(f))
    }

    #[inline]
    fn name_of(&self, f: &Field) -> &str {
        self.text.get(f.name.0..f.name.1).unwrap_or_default()
    }

    #[inline]
    fn value_of(&self, f: &Field) -> &str {
        self.text.get(f.value.0..f.value.1).unwrap_or_default()
    }

    /// Every header as (name, value), in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.fields.iter().map(|f| self.pair(f))
    }

    /// Every value of a header (case-insensitive name).
    pub(crate) fn get_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        let kind = Kind::of(name.as_bytes());
        self.fields
            .iter()
            .filter(move |f| {
                f.kind == kind && (kind != Kind::Other || self.name_of(f).eq_ignore_ascii_case(name))
            })
            .map(|f| self.value_of(f))
    }

    /// The first value of a header (case-insensitive name).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        let kind = Kind::of(name.as_bytes());
        if kind != Kind::Other {
            return self.first(kind);
        }
        self.fields
            .iter()
            .find(|f| f.kind == kind && self.name_of(f).eq_ignore_ascii_case(name))
            .map(|f| self.value_of(f))
    }
}

/// The Content-Length of a message: None without one; an error when one is not a
/// number or two disagree.
fn content_length_of(headers: &Headers<'_>) -> Result<Option<usize>, &'static str> {
    let mut content_length: Option<usize> = None;
    for v in headers.get_all("Content-Length") {
        let Ok(len) = v.parse::<usize>() else {
            return Err("bad Content-Length");
        };
        if content_length.is_some_and(|c| c != len) {
            return Err("conflicting Content-Length");
        }
        content_length = Some(len);
    }
    Ok(content_length)
}

/// A byte range in a message's header text.
type Span = (usize, usize);

/// Where `sub`, a slice of `base`, lies in it.
fn span_of(base: &str, sub: &str) -> Span {
    let start = (sub.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
    (start, start.wrapping_add(sub.len()))
}

/// A [`Via`] as ranges of the header text, plus the range of the whole value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ViaSpans {
    value: Span,
    host: Span,
    port: Option<u16>,
    branch: Option<Span>,
    rport: bool,
    received: Option<Span>,
}

/// A parsed, validated SIP message, borrowing the datagram it came from (see the
/// module docs); [`SipMsg::into_owned`] detaches it.
#[derive(Debug, Clone)]
pub(crate) struct SipMsg<'a> {
    pub(crate) start: StartLine<'a>,
    /// Every header (name canonical, value trimmed), in order.
    pub(crate) headers: Headers<'a>,
    top_via: ViaSpans,
    /// The top Via as responses echo it, when it differs from the received one
    /// (see [`SipMsg::stamp_top_via`]).
    echo_top_via: Option<String>,
    from: Span,
    to: Span,
    call_id: Span,
    pub(crate) cseq: u32,
    /// Upper case.
    cseq_method: Cow<'static, str>,
    pub(crate) body: Cow<'a, [u8]>,
}

impl<'a> SipMsg<'a> {
    /// The same message owning its text and body.
    #[cfg(test)]
    pub(crate) fn into_owned(self) -> SipMsg<'static> {
        SipMsg {
            start: match self.start {
                StartLine::Request { method } => StartLine::Request { method },
                StartLine::Response { code, reason } => StartLine::Response {
                    code,
                    reason: Cow::Owned(reason.into_owned()),
                },
            },
            headers: self.headers.into_owned(),
            top_via: self.top_via,
            echo_top_via: self.echo_top_via,
            from: self.from,
            to: self.to,
            call_id: self.call_id,
            cseq: self.cseq,
            cseq_method: self.cseq_method,
            body: Cow::Owned(self.body.into_owned()),
        }
    }

    /// The first value of a header (case-insensitive name).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// Every value of a header.
    pub(crate) fn header_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.headers.get_all(name)
    }

    pub(crate) fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub(crate) fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// The From value.
    pub(crate) fn header_from(&self) -> &str {
        self.headers.at(self.from)
    }

    /// The To value.
    pub(crate) fn header_to(&self) -> &str {
        self.headers.at(self.to)
    }

    pub(crate) fn call_id(&self) -> &str {
        self.headers.at(self.call_id)
    }

    /// The From tag (found when asked for: a response to REGISTER never needs it).
    pub(crate) fn tag_from(&self) -> Option<&str> {
        tag_param(self.header_from())
    }

    /// The To tag (found when asked for).
    pub(crate) fn tag_to(&self) -> Option<&str> {
        tag_param(self.header_to())
    }

    /// The CSeq method, upper case.
    pub(crate) fn cseq_method(&self) -> &str {
        &self.cseq_method
    }

    /// The top Via, parsed.
    pub(crate) fn top_via(&self) -> Via<'_> {
        let v = &self.top_via;
        Via {
            host: self.headers.at(v.host),
            port: v.port,
            branch: v.branch.map(|s| self.headers.at(s)),
            rport: v.rport,
            received: v.received.map(|s| self.headers.at(s)),
        }
    }

    /// The top Via's branch (what a response is matched by).
    pub(crate) fn top_via_branch(&self) -> Option<&str> {
        self.top_via.branch.map(|s| self.headers.at(s))
    }

    /// Stamps the top Via that responses echo with where the request came from
    /// (see [`stamped_top_via`]).
    pub(crate) fn stamp_top_via(&mut self, from: SocketAddr) {
        self.echo_top_via = stamped_top_via(self.headers.at(self.top_via.value), &self.top_via(), from);
    }

    /// The Via values a response echoes, one per hop (the top one stamped).
    pub(crate) fn vias(&self) -> Vec<&str> {
        let mut out = Vec::with_capacity(2);
        ViaList::from(self).for_each(|v| out.push(v));
        out
    }

    /// The URI inside the first Contact header.
    pub(crate) fn contact_uri(&self) -> Option<String> {
        self.header("Contact").and_then(name_addr_uri)
    }

    /// The echo headers of this message (for building a response later).
    pub(crate) fn echo(&self) -> EchoHeaders {
        EchoHeaders {
            vias: self.vias().into_iter().map(str::to_string).collect(),
            from: self.header_from().to_string(),
            to: self.header_to().to_string(),
            call_id: self.call_id().to_string(),
            cseq: format!("{} {}", self.cseq, self.cseq_method),
        }
    }
}

/// The Via values a response echoes: kept ones, or those of a message being answered.
#[derive(Debug, Clone, Copy)]
enum ViaList<'a> {
    Owned(&'a [String]),
    Message {
        headers: &'a Headers<'a>,
        /// Replaces the first value.
        top: Option<&'a str>,
    },
}

impl<'a> ViaList<'a> {
    fn for_each(self, mut f: impl FnMut(&'a str)) {
        match self {
            ViaList::Owned(vias) => vias.iter().for_each(|v| f(v)),
            ViaList::Message { headers, top } => {
                let mut first = true;
                for v in headers.vias() {
                    match top {
                        Some(t) if std::mem::take(&mut first) => f(t),
                        _ => f(v),
                    }
                }
            }
        }
    }
}

impl<'a, 'm: 'a> From<&'a SipMsg<'m>> for ViaList<'a> {
    fn from(m: &'a SipMsg<'m>) -> ViaList<'a> {
        ViaList::Message {
            headers: &m.headers,
            top: m.echo_top_via.as_deref(),
        }
    }
}

/// The headers a response copies from its request, borrowed (from a [`SipMsg`] being
/// answered now, or from [`EchoHeaders`] kept for a later answer).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EchoRef<'a> {
    vias: ViaList<'a>,
    from: &'a str,
    to: &'a str,
    call_id: &'a str,
    cseq: CSeqRef<'a>,
}

#[derive(Debug, Clone, Copy)]
enum CSeqRef<'a> {
    Text(&'a str),
    Parts(u32, &'a str),
}

impl<'a> From<&'a EchoHeaders> for EchoRef<'a> {
    fn from(e: &'a EchoHeaders) -> EchoRef<'a> {
        EchoRef {
            vias: ViaList::Owned(&e.vias),
            from: &e.from,
            to: &e.to,
            call_id: &e.call_id,
            cseq: CSeqRef::Text(&e.cseq),
        }
    }
}

impl<'a> From<&'a Box<EchoHeaders>> for EchoRef<'a> {
    fn from(e: &'a Box<EchoHeaders>) -> EchoRef<'a> {
        EchoRef::from(&**e)
    }
}

impl<'a, 'm: 'a> From<&'a SipMsg<'m>> for EchoRef<'a> {
    fn from(m: &'a SipMsg<'m>) -> EchoRef<'a> {
        EchoRef {
            vias: ViaList::from(m),
            from: m.header_from(),
            to: m.header_to(),
            call_id: m.call_id(),
            cseq: CSeqRef::Parts(m.cseq, m.cseq_method()),
        }
    }
}

/// The URI of a name-addr (`"Bob" <sip:bob@host>;tag=x`) or addr-spec (`sip:bob@host;tag=x`).
pub(crate) fn name_addr_uri(value: &str) -> Option<String> {
    if let Some(start) = value.find('<') {
        let rest = value.get(start + 1..)?;
        let end = rest.find('>')?;
        return rest.get(..end).map(|s| s.trim().to_string());
    }
    let v = value.trim();
    let uri = v.split(';').next().unwrap_or(v).trim();
    (!uri.is_empty()).then(|| uri.to_string())
}

/// The `tag` parameter of a From/To value.
pub(crate) fn tag_param(value: &str) -> Option<&str> {
    header_param(value, "tag")
}

/// A generic `;name=value` parameter of a header value (outside `<>`).
pub(crate) fn header_param<'v>(value: &'v str, name: &str) -> Option<&'v str> {
    let params = match value.bytes().rposition(|b| b == b'>') {
        Some(i) => value.get(i + 1..)?,
        None => value,
    };
    let mut params = cut(params, b';').1;
    while let Some(p) = params {
        let (p, next) = cut(p, b';');
        params = next;
        if let (k, Some(v)) = cut(p, b'=') {
            let k = trim_lws(k);
            if k.len() == name.len() && k.eq_ignore_ascii_case(name) {
                return Some(trim_lws(v));
            }
        }
    }
    None
}

/// SIP white space (SP, HT).
fn is_lws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `a.eq_ignore_ascii_case(b)`, the exact spelling `b` tried first (what SIP peers send,
/// a word compare for a constant `b`).
fn eq_ci(a: &[u8], b: &[u8]) -> bool {
    a == b || a.eq_ignore_ascii_case(b)
}

/// The index of the first byte at or after `from` that is not SIP white space (`b.len()`
/// if none; `from` if it is past the end).
fn skip_lws(b: &[u8], from: usize) -> usize {
    match b.get(from..) {
        Some(rest) => from + rest.iter().position(|&c| !is_lws(c)).unwrap_or(rest.len()),
        None => from,
    }
}

/// The index of the first byte at or after `from` that is one of `set` (`b.len()` if
/// none; `from` if it is past the end): eight bytes at a time.
fn stop_at<const N: usize>(b: &[u8], from: usize, set: [u8; N]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let Some(rest) = b.get(from..) else {
        return from;
    };
    let mut chunks = rest.chunks_exact(8);
    let mut at = from;
    for chunk in &mut chunks {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let x = u64::from_le_bytes(word);
        // A high bit per byte equal to one of `set`: exact at the lowest such byte,
        // which is the one taken.
        let hits = set.iter().fold(0, |m, &c| {
            let y = x ^ (ONES * u64::from(c));
            m | (y.wrapping_sub(ONES) & !y & HIGH)
        });
        if hits != 0 {
            return at + (hits.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    let tail = chunks.remainder();
    at + tail.iter().position(|c| set.contains(c)).unwrap_or(tail.len())
}

/// [`trim_lws`] on bytes.
fn trim_lws_bytes(b: &[u8]) -> &[u8] {
    if !b.first().copied().is_some_and(is_lws) && !b.last().copied().is_some_and(is_lws) {
        return b;
    }
    let start = b.iter().position(|&c| !is_lws(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|&c| !is_lws(c)).map_or(start, |e| e + 1);
    b.get(start..end).unwrap_or_default()
}

/// `s` without leading and trailing SIP white space (SP, HT).
fn trim_lws(s: &str) -> &str {
    let b = s.as_bytes();
    // Most values have none: two compares.
    if !b.first().copied().is_some_and(is_lws) && !b.last().copied().is_some_and(is_lws) {
        return s;
    }
    let start = b.iter().position(|&c| !is_lws(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|&c| !is_lws(c)).map_or(start, |e| e + 1);
    s.get(start..end).unwrap_or_default()
}

/// `s.trim()`: returns at once when `s` starts and ends with a printable ASCII byte
/// other than space (every header value of a canonical message).
fn trim_unicode(s: &str) -> &str {
    let graphic = |b: Option<&u8>| b.is_some_and(u8::is_ascii_graphic);
    if graphic(s.as_bytes().first()) && graphic(s.as_bytes().last()) {
        s
    } else {
        s.trim()
    }
}

/// Splits `s` at its first `sep` (an ASCII byte): what precedes it and, if it occurs,
/// what follows it.
fn cut(s: &str, sep: u8) -> (&str, Option<&str>) {
    match s.bytes().position(|b| b == sep) {
        Some(i) => (s.get(..i).unwrap_or_default(), s.get(i + 1..)),
        None => (s, None),
    }
}

/// Splits `s` at its first SIP white space byte, like [`cut`].
fn cut_lws(s: &str) -> (&str, Option<&str>) {
    match s.bytes().position(is_lws) {
        Some(i) => (s.get(..i).unwrap_or_default(), s.get(i + 1..)),
        None => (s, None),
    }
}

fn expand_compact(name: &str) -> &str {
    if name.len() != 1 {
        return name;
    }
    match name.to_ascii_lowercase().as_str() {
        "v" => "Via",
        "i" => "Call-ID",
        "f" => "From",
        "t" => "To",
        "l" => "Content-Length",
        "m" => "Contact",
        "c" => "Content-Type",
        "k" => "Supported",
        "s" => "Subject",
        "e" => "Content-Encoding",
        "o" => "Event",
        "r" => "Refer-To",
        "b" => "Referred-By",
        "u" => "Allow-Events",
        "x" => "Session-Expires",
        _ => name,
    }
}

/// The parts of a header value between commas outside quotes and angle brackets,
/// trimmed, empty ones skipped (no allocation).
pub(crate) fn comma_parts(value: &str) -> CommaParts<'_> {
    CommaParts { rest: Some(value) }
}

/// See [`comma_parts`].
pub(crate) struct CommaParts<'v> {
    rest: Option<&'v str>,
}

impl<'v> Iterator for CommaParts<'v> {
    type Item = &'v str;

    fn next(&mut self) -> Option<&'v str> {
        loop {
            let value = self.rest?;
            if stop_at(value.as_bytes(), 0, [b',']) == value.len() {
                self.rest = None;
                let part = trim_unicode(value);
                return (!part.is_empty()).then_some(part);
            }
            // Quotes and brackets are closed at every comma that splits.
            let (mut quoted, mut angle, mut escaped) = (false, false, false);
            let mut comma = None;
            for (i, b) in value.bytes().enumerate() {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' if quoted => escaped = true,
                    b'"' => quoted = !quoted,
                    b'<' if !quoted => angle = true,
                    b'>' if !quoted => angle = false,
                    b',' if !quoted && !angle => {
                        comma = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let part = match comma {
                Some(i) => {
                    self.rest = value.get(i + 1..);
                    value.get(..i).unwrap_or_default()
                }
                None => {
                    self.rest = None;
                    value
                }
            };
            let part = trim_unicode(part);
            if !part.is_empty() {
                return Some(part);
            }
        }
    }
}

fn find_subslice(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

const fn token_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        i += 1;
    }
    t
}

/// RFC 3261 `token` characters.
const TOKEN: [bool; 256] = token_table();

fn is_token_char(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

/// Printable ASCII or HT: what the fast path accepts inside a header value.
fn is_value_char(b: u8) -> bool {
    matches!(b, b' '..=b'~' | b'\t')
}

/// Length of the leading run of [`is_value_char`] bytes: eight at a time while none of
/// them is a control character (HT included), DEL or above, then byte by byte from the
/// first that is.
fn value_run(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut n = 0;
    for chunk in bytes.chunks_exact(8) {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let x = u64::from_le_bytes(word);
        // A byte below 0x20; a byte above 0x7e (both exact at the lowest such byte:
        // borrows and carries only reach the bytes above it).
        let below = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let above = (x.wrapping_add(ONES) | x) & HIGH;
        let stop = below | above;
        if stop != 0 {
            // The byte by byte scan goes on from the first flagged byte (an HT is one).
            n += (stop.trailing_zeros() / 8) as usize;
            break;
        }
        n += 8;
    }
    let tail = bytes.get(n..).unwrap_or_default();
    n + tail.iter().position(|&b| !is_value_char(b)).unwrap_or(tail.len())
}

/// Parses one datagram. `max_size` bounds the datagram length.
///
/// A datagram already in canonical form (the common case) is checked in one scan and
/// handed to rsip as it is; anything else is normalised first (see the module docs).
/// Both paths end in the same checks, so they give the same answer.
pub(crate) fn parse(bytes: &[u8], max_size: usize) -> Parsed<'_> {
    if bytes.iter().all(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t')) {
        return Parsed::KeepAlive;
    }
    if bytes.len() > max_size {
        return Parsed::Drop("message too large");
    }
    match scan_canonical(bytes) {
        Some(c) => finish(c.start_line, c.headers, c.rest, Some((bytes, c.content_length))),
        None => parse_normalising(bytes),
    }
}

/// A datagram found to be in canonical form by [`scan_canonical`].
struct Canonical<'a> {
    start_line: &'a str,
    headers: Headers<'a>,
    /// Everything after the blank line.
    rest: &'a [u8],
    /// The one Content-Length, checked: digits only, no larger than `rest`.
    content_length: Option<usize>,
}

/// One scan proving `bytes` are exactly what [`parse_normalising`] would rebuild them
/// into (the start line at the first byte; printable ASCII header lines
/// `Name: value` ending in CRLF, with a token name of two or more characters and a
/// trimmed value; no folding; at most one digits-only Content-Length, no larger than
/// the body; no IPv6 reference in a Request-URI), so rsip can parse the bytes as they
/// are. None: take the normalising path (which also gives the error answers).
fn scan_canonical(bytes: &[u8]) -> Option<Canonical<'_>> {
    let line_len = bytes.iter().position(|&b| !matches!(b, b' '..=b'~'))?;
    if line_len == 0 || bytes.get(line_len..line_len + 2)? != b"\r\n" {
        return None;
    }
    let first_line = bytes.get(..line_len)?;
    if !first_line.starts_with(b"SIP/") && first_line.contains(&b'[') {
        return None;
    }
    let block = line_len + 2;
    let mut pos = block;
    let mut headers = Headers::with_capacity(0, 16);
    let mut content_length: Option<usize> = None;
    loop {
        let line = bytes.get(pos..)?;
        if line.starts_with(b"\r\n") {
            pos += 2;
            break;
        }
        // The name runs to the first ':' (found eight bytes at a time; ':' is not a
        // token character, so this is where the token run must end).
        let name_len = stop_at(line, 0, [b':']);
        if name_len < 2 || line.get(name_len..name_len + 2)? != b": " {
            return None;
        }
        let v0 = name_len + 2;
        let v1 = v0 + value_run(line.get(v0..)?);
        if line.get(v1..v1 + 2)? != b"\r\n" {
            return None;
        }
        let value = line.get(v0..v1)?;
        let wsp = |b: &u8| matches!(b, b' ' | b'\t');
        if value.first().is_some_and(wsp) || value.last().is_some_and(wsp) {
            return None;
        }
        let name = line.get(..name_len)?;
        let kind = Kind::of(name);
        // A name Kind::of recognised equals a canonical one up to ASCII case: a token.
        if kind == Kind::Other && !name.iter().all(|&b| is_token_char(b)) {
            return None;
        }
        if kind == Kind::ContentLength {
            if content_length.is_some() || value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return None;
            }
            content_length = Some(value.iter().try_fold(0usize, |n, &d| {
                n.checked_mul(10)?.checked_add(usize::from(d.wrapping_sub(b'0')))
            })?);
        }
        let at = pos - block;
        headers.add(Field {
            name: (at, at + name_len),
            value: (at + v0, at + v1),
            kind,
        });
        pos += v1 + 2;
    }
    // One UTF-8 check for the head (the scan let only ASCII through: it cannot fail).
    let head = std::str::from_utf8(bytes.get(..pos - 2)?).ok()?;
    let (start_line, text) = (head.get(..line_len)?, head.get(block..)?);
    let rest = bytes.get(pos..)?;
    if content_length.is_some_and(|len| len > rest.len()) {
        return None;
    }
    headers.text = Cow::Borrowed(text);
    Some(Canonical {
        start_line,
        headers,
        rest,
        content_length,
    })
}

/// The normalising path: skips leading CRLFs, unfolds lines, accepts LF-only endings,
/// expands compact names, trims names and values; rsip then parses a rebuilt message.
fn parse_normalising(bytes: &[u8]) -> Parsed<'_> {
    // Skip leading CRLFs (RFC 3261 7.5).
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(0);
    let bytes = bytes.get(start..).unwrap_or_default();
    let (head_end, body_start) = match (find_subslice(bytes, b"\r\n\r\n"), find_subslice(bytes, b"\n\n")) {
        (Some(a), Some(b)) if b + 1 < a => (b, b + 2),
        (Some(a), _) => (a, a + 4),
        (None, Some(b)) => (b, b + 2),
        (None, None) => (bytes.len(), bytes.len()),
    };
    let complete_head = body_start > head_end;
    let head = bytes.get(..head_end).unwrap_or_default();
    let rest = bytes.get(body_start..).unwrap_or_default();

    let Ok(head) = std::str::from_utf8(head) else {
        return parse_lossy_for_reject(head);
    };
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let Some(start_line) = lines.next() else {
        return Parsed::Drop("empty");
    };
    // Unfold and split headers.
    let mut raw: Vec<std::borrow::Cow<'_, str>> = Vec::with_capacity(16);
    for line in lines {
        if line.starts_with([' ', '\t']) {
            match raw.last_mut() {
                Some(last) => {
                    let l = last.to_mut();
                    l.push(' ');
                    l.push_str(line.trim());
                }
                None => return Parsed::Drop("folded first line"),
            }
        } else {
            raw.push(line.into());
        }
    }
    let mut headers = Headers::with_capacity(head.len() + 64, raw.len() + 1);
    let mut bad_header = false;
    for line in &raw {
        match line.split_once(':') {
            Some((n, v)) => {
                let n = n.trim();
                let v_bad = !clean_value(v);
                if n.is_empty() || !n.bytes().all(is_token_char) || v_bad {
                    // Never echo a value with control characters.
                    bad_header = true;
                    continue;
                }
                headers.push(expand_compact(n), v.trim());
            }
            None => bad_header = true,
        }
    }
    if !complete_head || bad_header {
        let reason = if complete_head {
            "malformed header line"
        } else {
            "truncated message"
        };
        let echo = echo_parts(&headers).map(|e| e.to_echo(&headers));
        return reject_with(echo, !start_line.starts_with("SIP/"), 400, reason);
    }
    finish(start_line, headers, rest, None)
}

/// A request that can be answered gets `code`; anything else is dropped.
fn reject_with(
    echo: Option<EchoHeaders>,
    is_request: bool,
    code: u16,
    reason: &'static str,
) -> Parsed<'static> {
    match (echo, is_request) {
        (Some(e), true) => Parsed::Reject {
            code,
            reason,
            headers: Box::new(e),
        },
        _ => Parsed::Drop(reason),
    }
}

/// The checks both paths share, rsip's parse, and the extraction. `original`: the
/// datagram when it is canonical (rsip gets a prefix of it, the body cut to
/// Content-Length); None: rsip gets a message rebuilt from `start_line` and `headers`.
fn finish<'a>(
    start_line: &'a str,
    headers: Headers<'a>,
    rest: &'a [u8],
    canonical: Option<(&[u8], Option<usize>)>,
) -> Parsed<'a> {
    let echo = echo_parts(&headers);
    let is_request = !start_line.starts_with("SIP/");
    let reject =
        |code: u16, reason: &'static str| reject_from(echo.as_ref(), &headers, is_request, code, reason);
    // Content-Length: checked here (rsip ignores it), or by the canonical scan.
    let content_length = match canonical {
        Some((_, checked)) => checked,
        None => match content_length_of(&headers) {
            Ok(len) => len,
            Err(reason) => return reject(400, reason),
        },
    };
    let body = match content_length {
        Some(len) if len > rest.len() => return reject(400, "Content-Length larger than the body"),
        Some(len) => rest.get(..len).unwrap_or_default(),
        None => rest,
    };
    // Single-valued headers must be single (present, and non-empty, when the echo
    // headers are: then only a repeated one needs a look).
    const SINGLE: [Kind; 4] = [Kind::CallId, Kind::From, Kind::To, Kind::CSeq];
    let repeated = SINGLE.iter().any(|&k| headers.is_repeated(k));
    for kind in SINGLE.into_iter().filter(|_| echo.is_none() || repeated) {
        if headers.first(kind).is_none() {
            return reject(400, "missing mandatory header");
        }
        if headers.is_repeated(kind) && repeats_differ(&headers, kind) {
            return reject(400, "duplicate header with different values");
        }
    }
    // Start line checks before rsip (which cannot represent unknown methods).
    if is_request && let Err((code, reason)) = check_request_line(start_line) {
        return reject(code, reason);
    }
    if headers.first(Kind::Via).is_none() {
        return Parsed::Drop("no Via");
    }

    // rsip parses the head only: the body is the one cut above (rsip takes whatever
    // follows the blank line, so the body never changes its verdict), and rsip formats
    // the input it has left into an error string at each alternative it tries, so a
    // body handed to it costs its length several times over.
    let rebuilt;
    let rsip_input = match canonical {
        Some((o, _)) => o.get(..o.len().saturating_sub(rest.len())).unwrap_or(o),
        None => {
            rebuilt = rebuild(start_line, &headers, body.len());
            rebuilt.as_slice()
        }
    };
    // rsip's request or response parser, as the start line says: what
    // `SipMessage::try_from` would pick (a response needs `SIP/` first, a request method
    // must not start with it), without its failed attempt at the other kind (which
    // formats the whole input into an error).
    let start = if is_request {
        match rsip::Request::try_from(rsip_input) {
            Ok(r) => StartLine::Request {
                method: Method::from_rsip(r.method),
            },
            Err(_) => return reject(400, "unparseable message"),
        }
    } else {
        let Ok(r) = rsip::Response::try_from(rsip_input) else {
            return Parsed::Drop("unparseable message");
        };
        let code = r.status_code.code();
        if !(100..700).contains(&code) {
            return Parsed::Drop("bad status code");
        }
        let reason = cut(start_line, b' ')
            .1
            .and_then(|r| cut(r, b' ').1)
            .unwrap_or_default();
        StartLine::Response {
            code,
            reason: Cow::Borrowed(reason),
        }
    };
    // Checks that need the echo headers; the rejects move them into the answer.
    let checked = (|| {
        let e = echo.as_ref()?;
        let Some((cseq, cseq_method)) =
            Some(e.cseq_parts).and_then(|(n, m)| Some((parse_unsigned(n, u32::MAX)?, upper_method(m))))
        else {
            return Some(Err((400, "malformed CSeq")));
        };
        if let StartLine::Request { method, .. } = &start
            && !cseq_method.eq_ignore_ascii_case(method.as_str())
        {
            return Some(Err((400, "CSeq method does not match the request")));
        }
        Some(Ok((cseq, cseq_method)))
    })();
    let (cseq, cseq_method) = match checked {
        None => return Parsed::Drop("missing mandatory header"),
        Some(Err((code, reason))) => return reject(code, reason),
        Some(Ok(v)) => v,
    };
    let Some(e) = echo else {
        return Parsed::Drop("missing mandatory header");
    };
    let text: &str = &headers.text;
    let at = |sub: &str| span_of(text, sub);
    let top_via = ViaSpans {
        value: at(e.top_value),
        host: at(e.top.host),
        port: e.top.port,
        branch: e.top.branch.map(at),
        rport: e.top.rport,
        received: e.top.received.map(at),
    };
    let (from, to, call_id) = (at(e.from), at(e.to), at(e.call_id));
    Parsed::Message(Box::new(SipMsg {
        start,
        headers,
        top_via,
        echo_top_via: None,
        from,
        to,
        call_id,
        cseq,
        cseq_method,
        body: Cow::Borrowed(body),
    }))
}

/// The answer to a message that fails a check: `code` for a request whose echo headers
/// survived, a drop otherwise (out of line: the path every valid message takes stays
/// small).
#[cold]
#[inline(never)]
fn reject_from(
    echo: Option<&EchoParts<'_>>,
    headers: &Headers<'_>,
    is_request: bool,
    code: u16,
    reason: &'static str,
) -> Parsed<'static> {
    let echo = echo.filter(|_| is_request).map(|e| e.to_echo(headers));
    reject_with(echo, is_request, code, reason)
}

/// Whether a repeated single-valued header has a value other than its first one.
#[cold]
#[inline(never)]
fn repeats_differ(headers: &Headers<'_>, kind: Kind) -> bool {
    let first = headers.first(kind);
    headers
        .fields
        .iter()
        .filter(|f| f.kind == kind)
        .any(|f| Some(headers.value_of(f)) != first)
}

/// The request line checks made before rsip parses it (rsip cannot represent unknown
/// methods): the status and reason to answer with when one fails.
#[inline(never)]
fn check_request_line(start_line: &str) -> Result<(), (u16, &'static str)> {
    // `method SP uri SP version`, exactly two spaces.
    let (method, rest) = cut(start_line, b' ');
    let (uri, rest) = rest.map_or(("", None), |r| cut(r, b' '));
    let (version, rest) = rest.map_or(("", None), |r| cut(r, b' '));
    if method.is_empty() || !method.bytes().all(is_token_char) || uri.is_empty() || rest.is_some() {
        return Err((400, "malformed request line"));
    }
    if !eq_ci(version.as_bytes(), b"SIP/2.0") {
        return Err(
            if version.len() > 4 && version.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("SIP/")) {
                (505, "unsupported SIP version")
            } else {
                (400, "malformed request line")
            },
        );
    }
    // The methods rsip knows (what `method.parse::<rsip::Method>()` accepts, a token
    // having no white space for it to trim).
    if known_method(method).is_none() {
        return Err((501, "unknown method"));
    }
    let scheme = cut(uri, b':').0;
    if !(scheme.eq_ignore_ascii_case("sip")
        || scheme.eq_ignore_ascii_case("sips")
        || scheme.eq_ignore_ascii_case("tel"))
    {
        return Err((416, "unsupported URI scheme"));
    }
    Ok(())
}

/// The canonical (upper case) name of a method rsip knows, any case accepted.
fn known_method(m: &str) -> Option<&'static str> {
    KNOWN_METHODS
        .iter()
        .find(|k| k.len() == m.len() && eq_ci(m.as_bytes(), k.as_bytes()))
        .copied()
}

/// A method name in upper case: the standard ones without allocating.
fn upper_method(m: &str) -> Cow<'static, str> {
    match known_method(m) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(m.to_ascii_uppercase()),
    }
}

/// The methods rsip 0.4 knows, upper case.
const KNOWN_METHODS: [&str; 14] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "PRACK",
    "UPDATE",
    "INFO",
    "SUBSCRIBE",
    "NOTIFY",
    "REFER",
    "MESSAGE",
    "PUBLISH",
];

/// The canonical head rsip parses on the normalising path: the start line, every
/// header but Content-Length, then the Content-Length of the (cut) body.
fn rebuild(start_line: &str, headers: &Headers<'_>, body_len: usize) -> Vec<u8> {
    let mut canon = String::with_capacity(start_line.len() + headers.text.len() + 32);
    canon.push_str(&rsip_safe_start_line(start_line));
    canon.push_str("\r\n");
    for (n, v) in headers.iter() {
        if n.eq_ignore_ascii_case("Content-Length") {
            continue;
        }
        let _ = write!(canon, "{n}: {v}\r\n");
    }
    let _ = write!(canon, "Content-Length: {body_len}\r\n\r\n");
    canon.into_bytes()
}

/// rsip 0.4 cannot parse IPv6 references (`[::1]`) in a Request-URI: hand it the
/// line with the reference replaced by a placeholder host (the URI is not used further).
fn rsip_safe_start_line(line: &str) -> std::borrow::Cow<'_, str> {
    match (line.find('['), line.find(']')) {
        (Some(a), Some(b)) if a < b && !line.starts_with("SIP/") => {
            let (Some(pre), Some(post)) = (line.get(..a), line.get(b + 1..)) else {
                return line.into();
            };
            format!("{pre}ipv6.invalid{post}").into()
        }
        _ => line.into(),
    }
}

/// No control characters (other than HT) in a header value.
fn clean_value(v: &str) -> bool {
    !v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// The headers a response echoes, borrowed from a message's [`Headers`], and its top
/// Via parsed.
struct EchoParts<'h> {
    top_value: &'h str,
    top: Via<'h>,
    from: &'h str,
    to: &'h str,
    call_id: &'h str,
    cseq: &'h str,
    /// The two words of `cseq`.
    cseq_parts: (&'h str, &'h str),
}

impl EchoParts<'_> {
    /// The owned copy kept for an answer (`headers`: those the parts were taken from).
    fn to_echo(&self, headers: &Headers<'_>) -> EchoHeaders {
        EchoHeaders {
            vias: headers.vias().map(str::to_string).collect(),
            from: self.from.to_string(),
            to: self.to.to_string(),
            call_id: self.call_id.to_string(),
            cseq: self.cseq.to_string(),
        }
    }
}

/// The echo headers and the parsed top Via, if all of them are present.
fn echo_parts<'h>(headers: &'h Headers<'_>) -> Option<EchoParts<'h>> {
    // Only answer what can be routed back: the top Via must parse.
    // The first part of the first Via header (of a later one when that has none).
    let top_value = match headers.first(Kind::Via).and_then(|v| comma_parts(v).next()) {
        Some(v) => v,
        None => headers.vias().next()?,
    };
    let cseq = headers.first(Kind::CSeq)?;
    let e = EchoParts {
        top_value,
        top: Via::parse(top_value)?,
        from: headers.first(Kind::From)?,
        to: headers.first(Kind::To)?,
        call_id: headers.first(Kind::CallId)?,
        cseq,
        cseq_parts: split_cseq(cseq)?,
    };
    let all_present = [e.from, e.to, e.call_id].iter().all(|v| !v.is_empty());
    let (n, m) = e.cseq_parts;
    let cseq_ok = n.bytes().all(|b| b.is_ascii_digit()) && m.bytes().all(is_token_char);
    (all_present && cseq_ok).then_some(e)
}

/// The two words of a CSeq value (`number method`, separated by SIP white space);
/// None unless there are exactly two.
fn split_cseq(value: &str) -> Option<(&str, &str)> {
    let (number, rest) = cut_lws(trim_lws(value));
    let (method, rest) = cut_lws(trim_lws(rest?));
    (!method.is_empty() && rest.is_none_or(|r| trim_lws(r).is_empty())).then_some((number, method))
}

/// A head with bytes that are not UTF-8: answer 400 if the echo headers are clean.
fn parse_lossy_for_reject(head: &[u8]) -> Parsed<'static> {
    let text = String::from_utf8_lossy(head);
    if text.starts_with("SIP/") {
        return Parsed::Drop("non-UTF-8 response");
    }
    let mut headers = Headers::default();
    for line in text.split('\n').skip(1) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some((n, v)) = line.split_once(':')
            && !v.contains('\u{FFFD}')
            && clean_value(v)
        {
            headers.push(expand_compact(n.trim()), v.trim());
        }
    }
    match echo_parts(&headers) {
        Some(e) => Parsed::Reject {
            code: 400,
            reason: "non-UTF-8 header",
            headers: Box::new(e.to_echo(&headers)),
        },
        None => Parsed::Drop("non-UTF-8 message"),
    }
}

/// Standard reason phrases.
pub(crate) fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        603 => "Decline",
        _ => "Unknown",
    }
}

/// No extra headers for [`build_response`].
pub(crate) const NO_EXTRA: &[(&str, &str)] = &[];

/// Builds a response: the echo headers (the To gets `to_tag` unless it has a tag
/// already), the extra headers, Content-Length and the body. The bytes are those rsip
/// serialises for the same response, written straight into one buffer.
pub(crate) fn build_response<'a, V: AsRef<str>>(
    code: u16,
    echo: impl Into<EchoRef<'a>>,
    to_tag: Option<&str>,
    extra: &[(&str, V)],
    body: &[u8],
) -> Vec<u8> {
    let e = echo.into();
    let reason = reason_phrase(code);
    let tag = to_tag.filter(|_| tag_param(e.to).is_none());
    let mut vias_len = 0;
    e.vias.for_each(|v| vias_len += v.len() + 7);
    let len = 96
        + reason.len()
        + vias_len
        + e.from.len()
        + e.to.len()
        + tag.map_or(0, |t| t.len() + 5)
        + e.call_id.len()
        + extra
            .iter()
            .map(|(n, v)| n.len() + v.as_ref().len() + 4)
            .sum::<usize>()
        + body.len();
    let mut out = String::with_capacity(len);
    out.push_str("SIP/2.0 ");
    push_decimal(&mut out, code.into());
    out.push(' ');
    out.push_str(reason);
    out.push_str("\r\n");
    e.vias.for_each(|v| {
        out.push_str("Via: ");
        out.push_str(v);
        out.push_str("\r\n");
    });
    out.push_str("From: ");
    out.push_str(e.from);
    out.push_str("\r\nTo: ");
    out.push_str(e.to);
    if let Some(tag) = tag {
        out.push_str(";tag=");
        out.push_str(tag);
    }
    out.push_str("\r\nCall-ID: ");
    out.push_str(e.call_id);
    out.push_str("\r\nCSeq: ");
    match e.cseq {
        CSeqRef::Text(t) => out.push_str(t),
        CSeqRef::Parts(n, m) => {
            push_decimal(&mut out, n.into());
            out.push(' ');
            out.push_str(m);
        }
    }
    out.push_str("\r\n");
    for (n, v) in extra {
        out.push_str(n);
        out.push_str(": ");
        out.push_str(v.as_ref());
        out.push_str("\r\n");
    }
    out.push_str("Content-Length: ");
    push_decimal(&mut out, body.len() as u64);
    out.push_str("\r\n\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Builds a request. `headers` are written in order after the request line; Content-Length is set here.
pub(crate) fn build_request(method: &str, uri: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    // rsip's Request needs a typed Method and Uri; both come from our own code, but fall
    // back to plain formatting rather than fail if rsip rejects a URI.
    let mut hs = rsip::Headers::default();
    for (n, v) in headers {
        hs.push(rsip::Header::Other((*n).to_string(), v.clone()));
    }
    hs.push(rsip::Header::Other(
        "Content-Length".into(),
        body.len().to_string(),
    ));
    let parsed = (method.parse::<rsip::Method>(), rsip::Uri::try_from(uri));
    let mut out = match parsed {
        (Ok(m), Ok(u)) => rsip::Request {
            method: m,
            uri: u,
            version: rsip::Version::V2,
            headers: hs,
            body: Vec::new(),
        }
        .to_string()
        .into_bytes(),
        _ => format!("{method} {uri} SIP/2.0\r\n{hs}\r\n").into_bytes(),
    };
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &str = "OPTIONS sip:bot@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:bot@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    fn msg(s: &str) -> SipMsg<'_> {
        match parse(s.as_bytes(), 65535) {
            Parsed::Message(m) => *m,
            other => panic!("not a message: {other:?}"),
        }
    }

    #[test]
    fn parses_plain_options() {
        let m = msg(OPTIONS);
        assert_eq!(m.method(), Some(&Method::Options));
        assert_eq!(m.call_id(), "c1");
        assert_eq!(m.cseq, 1);
        assert_eq!(m.tag_from(), Some("1"));
        assert_eq!(m.tag_to(), None);
        assert_eq!(m.top_via().branch, Some("z9hG4bK1"));
        assert!(m.top_via().rport);
        assert_eq!(m.top_via().port, Some(5070));
    }

    #[test]
    fn compact_folded_and_lf_only() {
        let s = "OPTIONS sip:bot@127.0.0.1 SIP/2.0\nv: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK2\nf: <sip:a@127.0.0.1>\n ;tag=9\nt: <sip:bot@127.0.0.1>\ni: c2\nCSeq  :  7 OPTIONS\nl: 0\n\n";
        let m = msg(s);
        assert_eq!(m.call_id(), "c2");
        assert_eq!(m.tag_from(), Some("9"));
        assert_eq!(m.cseq, 7);
    }

    #[test]
    fn content_length_cuts_and_rejects() {
        let two = format!("{OPTIONS}{OPTIONS}");
        let m = msg(&two);
        assert!(m.body.is_empty());
        let big = OPTIONS.replace("Content-Length: 0", "Content-Length: 5000");
        assert!(matches!(
            parse(big.as_bytes(), 65535),
            Parsed::Reject { code: 400, .. }
        ));
        let neg = OPTIONS.replace("Content-Length: 0", "Content-Length: -3");
        assert!(matches!(
            parse(neg.as_bytes(), 65535),
            Parsed::Reject { code: 400, .. }
        ));
        let dup = OPTIONS.replace("Content-Length: 0", "Content-Length: 0\r\nContent-Length: 4");
        assert!(matches!(
            parse(dup.as_bytes(), 65535),
            Parsed::Reject { code: 400, .. }
        ));
    }

    #[test]
    fn missing_headers_and_keepalive() {
        let no_via = OPTIONS.replace("Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport\r\n", "");
        assert!(matches!(parse(no_via.as_bytes(), 65535), Parsed::Drop(_)));
        let no_cid = OPTIONS.replace("Call-ID: c1\r\n", "");
        assert!(matches!(parse(no_cid.as_bytes(), 65535), Parsed::Drop(_)));
        assert!(matches!(parse(b"\r\n\r\n", 65535), Parsed::KeepAlive));
        assert!(matches!(parse(b"", 65535), Parsed::KeepAlive));
        assert!(matches!(parse(OPTIONS.as_bytes(), 10), Parsed::Drop(_)));
    }

    #[test]
    fn unknown_method_version_and_scheme() {
        let foo = OPTIONS
            .replace("OPTIONS sip", "FOOBAR sip")
            .replace("1 OPTIONS", "1 FOOBAR");
        assert!(matches!(
            parse(foo.as_bytes(), 65535),
            Parsed::Reject { code: 501, .. }
        ));
        let v7 = OPTIONS.replace("5060 SIP/2.0", "5060 SIP/7.0");
        assert!(matches!(
            parse(v7.as_bytes(), 65535),
            Parsed::Reject { code: 505, .. }
        ));
        let nope = OPTIONS.replace("OPTIONS sip:", "OPTIONS nope:");
        assert!(matches!(
            parse(nope.as_bytes(), 65535),
            Parsed::Reject { code: 416, .. }
        ));
        let mismatch = OPTIONS.replace("1 OPTIONS", "1 INVITE");
        assert!(matches!(
            parse(mismatch.as_bytes(), 65535),
            Parsed::Reject { code: 400, .. }
        ));
        let big = OPTIONS.replace("CSeq: 1 ", "CSeq: 4294967296 ");
        assert!(matches!(
            parse(big.as_bytes(), 65535),
            Parsed::Reject { code: 400, .. }
        ));
    }

    #[test]
    fn response_round_trip_echoes_everything() {
        let m = msg(OPTIONS);
        let out = build_response(200, &m.echo(), Some("abc"), &[("Allow", "INVITE")], b"");
        let r = msg(std::str::from_utf8(&out).unwrap());
        assert_eq!(r.status(), Some(200));
        assert_eq!(r.tag_to(), Some("abc"));
        assert_eq!(r.vias(), m.vias());
        assert_eq!(r.header("Allow"), Some("INVITE"));
        // The same bytes rsip serialises for this response.
        use rsip::headers::UntypedHeader;
        let mut hs = rsip::Headers::default();
        for v in m.vias() {
            hs.push(rsip::headers::Via::new(v).into());
        }
        hs.push(rsip::headers::From::new(m.header_from()).into());
        hs.push(rsip::headers::To::new(format!("{};tag=abc", m.header_to())).into());
        hs.push(rsip::headers::CallId::new(m.call_id()).into());
        hs.push(rsip::headers::CSeq::new("1 OPTIONS").into());
        hs.push(rsip::Header::Other("Allow".into(), "INVITE".into()));
        hs.push(rsip::headers::ContentLength::new("3").into());
        let expected = rsip::Response {
            status_code: rsip::StatusCode::Other(200, "OK".into()),
            version: rsip::Version::V2,
            headers: hs,
            body: b"abc".to_vec(),
        }
        .to_string();
        let ours = build_response(200, &m, Some("abc"), &[("Allow", "INVITE")], b"abc");
        assert_eq!(String::from_utf8(ours).unwrap(), expected);
    }

    const INVITE: &str = "INVITE sip:bot@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK7;rport\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK6, SIP/2.0/UDP 10.0.0.2\r\nMax-Forwards: 70\r\nFrom: \"A\" <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:bot@127.0.0.1>\r\nCall-ID: c7@127.0.0.1\r\nCSeq: 3 INVITE\r\nContact: <sip:a@127.0.0.1:5070>\r\nSupported: \r\nContent-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\nTRAILING";
    const OK: &str = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK9;rport=5060\r\nFrom: <sip:bot@127.0.0.1>;tag=x\r\nTo: <sip:bot@127.0.0.1>;tag=y\r\nCall-ID: r1\r\nCSeq: 2 REGISTER\r\nContact: <sip:bot@127.0.0.1:5060>;expires=60\r\n\r\n";

    #[test]
    fn canonical_messages_take_the_fast_path() {
        for m in [OPTIONS, INVITE, OK] {
            assert!(scan_canonical(m.as_bytes()).is_some(), "{m}");
            assert_eq!(
                format!("{:?}", parse(m.as_bytes(), 65535)),
                format!("{:?}", parse_normalising(m.as_bytes()))
            );
        }
        let m = msg(INVITE);
        assert_eq!(&*m.body, b"v=0\n");
        assert_eq!(m.vias().len(), 3);
        assert_eq!(m.header("supported"), Some(""));
        assert_eq!(m.header_all("via").count(), 2);
        // Each of these needs the normalising path, and gets the same message from it.
        let plain = msg(OPTIONS);
        for variant in [
            OPTIONS.replace("\r\n", "\n"),
            OPTIONS.replace("Call-ID: ", "i: "),
            OPTIONS.replace("Call-ID: ", "Call-ID:"),
            OPTIONS.replace("Call-ID: ", "Call-ID :  "),
            OPTIONS.replace("Call-ID: c1", "Call-ID: c1 "),
            OPTIONS.replace(
                "From: <sip:a@127.0.0.1>;tag=1",
                "From: <sip:a@127.0.0.1>\r\n ;tag=1",
            ),
            format!("\r\n{OPTIONS}"),
            OPTIONS.replace("Content-Length: 0", "Content-Length: +0"),
            OPTIONS.replace("Content-Length: 0", "Content-Length: 0\r\nContent-Length: 0"),
        ] {
            assert!(scan_canonical(variant.as_bytes()).is_none(), "{variant}");
            let m = msg(&variant);
            assert_eq!(
                (m.call_id(), m.tag_from(), m.cseq),
                (plain.call_id(), plain.tag_from(), plain.cseq)
            );
        }
        let v6 = OPTIONS.replace("bot@127.0.0.1:5060", "bot@[::1]:5060");
        assert!(scan_canonical(v6.as_bytes()).is_none());
        assert_eq!(msg(&v6).call_id(), "c1");
    }

    #[test]
    fn rsip_parser_picked_by_the_start_line_agrees_with_sip_message() {
        for m in [
            OPTIONS,
            INVITE,
            OK,
            "SIP/2.0 200 OK\r\n\r\n",
            "SIP/2.0 20 OK\r\nX: y\r\n\r\n",
            "sip/2.0 200 OK\r\n\r\n",
            "INVITE sip:a SIP/2.0\r\n\r\n",
            "SIP/ sip:a SIP/2.0\r\n\r\n",
        ] {
            let b = m.as_bytes();
            let whole = rsip::SipMessage::try_from(b);
            let picked = if m.starts_with("SIP/") {
                rsip::Response::try_from(b).map(rsip::SipMessage::Response)
            } else {
                rsip::Request::try_from(b).map(rsip::SipMessage::Request)
            };
            assert_eq!(whole.ok(), picked.ok(), "{m}");
        }
    }

    mod fast_path_equivalence {
        use super::*;
        use proptest::prelude::*;

        const ALPHABET: &[u8] = b" \t\r\n:;,=<>[]0a\"\\\x00\x7f\xc3";

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]
            /// Whenever the one-scan check accepts a datagram, the answer is exactly the
            /// normalising path's (message, reject or drop).
            #[test]
            fn fast_path_equals_normalising_path(
                which in 0usize..3,
                edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<bool>()), 0..6),
                cut in any::<usize>(),
            ) {
                let base = [OPTIONS, INVITE, OK][which].as_bytes();
                let mut b = base.to_vec();
                for &(i, v, from_alphabet) in &edits {
                    let v = if from_alphabet { ALPHABET[usize::from(v) % ALPHABET.len()] } else { v };
                    let n = b.len();
                    b[i % n] = v;
                }
                b.truncate(cut % (base.len() + 1));
                if scan_canonical(&b).is_some() {
                    prop_assert_eq!(
                        format!("{:?}", parse(&b, 65535)),
                        format!("{:?}", parse_normalising(&b)),
                        "{:?}", String::from_utf8_lossy(&b)
                    );
                }
            }
        }
    }

    mod via_fast_paths {
        use super::*;
        use proptest::prelude::*;

        /// `stamped_top_via` as it was (a push per kept part).
        fn stamped_top_via_reference(top: &str, via: &Via, from: SocketAddr) -> Option<String> {
            if !via.rport {
                return stamped_top_via(top, via, from);
            }
            let is_rport = |p: &str| {
                trim_lws(p)
                    .get(..5)
                    .is_some_and(|k| k.eq_ignore_ascii_case("rport"))
            };
            let kept: Vec<&str> = top.split(';').filter(|p| !is_rport(p)).collect();
            Some(format!(
                "{};received={};rport={}",
                kept.join(";"),
                from.ip(),
                from.port()
            ))
        }

        /// The request-line checks as they were (`str::split`, rsip's method parser).
        fn check_request_line_reference(start_line: &str) -> Result<(), (u16, &'static str)> {
            let mut parts = start_line.split(' ');
            let method = parts.next().unwrap_or_default();
            let uri = parts.next().unwrap_or_default();
            let version = parts.next().unwrap_or_default();
            if method.is_empty()
                || !method.bytes().all(is_token_char)
                || uri.is_empty()
                || parts.next().is_some()
            {
                return Err((400, "malformed request line"));
            }
            if !version.eq_ignore_ascii_case("SIP/2.0") {
                return Err(
                    if version.len() > 4 && version.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("SIP/")) {
                        (505, "unsupported SIP version")
                    } else {
                        (400, "malformed request line")
                    },
                );
            }
            if method.parse::<rsip::Method>().is_err() {
                return Err((501, "unknown method"));
            }
            let scheme = uri.split(':').next().unwrap_or_default();
            if !["sip", "sips", "tel"]
                .iter()
                .any(|s| scheme.eq_ignore_ascii_case(s))
            {
                return Err((416, "unsupported URI scheme"));
            }
            Ok(())
        }

        /// Bytes Via values are made of, white space and separators weighted in.
        const VIA_ALPHABET: &[u8] = b" \t;=:,[]+.0159aA/SIPUDbrnchpotevi\xc3\xa9";

        fn via_like() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("SIP/2.0/UDP ".to_string()),
                Just("sip/2.0/tcp\t".to_string()),
                Just(";branch=z9hG4bK1".to_string()),
                Just(";rport".to_string()),
                Just(";rport=5060".to_string()),
                Just(";received=10.0.0.1".to_string()),
                Just(" ; BRANCH = x ".to_string()),
                Just("127.0.0.1:5060".to_string()),
                Just("[::1]:5070".to_string()),
                Just("host:+65535".to_string()),
                Just("host:65536".to_string()),
                proptest::collection::vec(proptest::sample::select(VIA_ALPHABET), 0..6)
                    .prop_map(|v| String::from_utf8_lossy(&v).into_owned()),
            ];
            proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(5000))]
            /// The one-scan Via parser gives what the per-part one gave.
            #[test]
            fn via_parse_equals_reference(v in via_like()) {
                prop_assert_eq!(Via::parse(&v), Via::parse_reference(&v), "{:?}", v);
            }

            /// `known_method` accepts exactly the tokens rsip's `Method` parses.
            #[test]
            fn known_method_equals_rsip(
                m in "(?i)(invite|ack|bye|cancel|options|register|prack|update|info|subscribe|notify|refer|message|publish)[a-z]?|[A-Za-z.!%*_+`'~-]{1,10}"
            ) {
                prop_assert_eq!(known_method(&m).is_some(), m.parse::<rsip::Method>().is_ok(), "{:?}", m);
            }

            /// The request-line checks give what they gave with `str::split` and
            /// rsip's method parser.
            #[test]
            fn check_request_line_equals_reference(
                line in "(?i)(INVITE|bye|FOO|in vite|)( ?)(sip|sips|tel|http|)(:?)(bot@h|)( ?)(SIP/2\\.0|sip/2.0|SIP/3.0|SIP/|x|)( ?[a-z]?)"
            ) {
                prop_assert_eq!(check_request_line(&line), check_request_line_reference(&line), "{:?}", line);
            }

            /// `trim_unicode` is `str::trim`.
            #[test]
            fn trim_unicode_equals_trim(s in "[ \t\r\n\u{a0}\u{3000}a,]{0,6}|\\PC{0,6}") {
                prop_assert_eq!(trim_unicode(&s), s.trim());
            }

            /// The top Via stamped by runs of kept parameters is what the part-by-part
            /// join gave.
            #[test]
            fn stamped_top_via_equals_reference(v in via_like(), port in any::<u16>(), v6 in any::<bool>()) {
                let ip: IpAddr = if v6 { "2001:db8::7".parse().unwrap() } else { [10, 0, 0, 1].into() };
                let from = SocketAddr::new(ip, port);
                if let Some(via) = Via::parse(&v) {
                    prop_assert_eq!(stamped_top_via(&v, &via, from), stamped_top_via_reference(&v, &via, from), "{:?}", v);
                }
            }

            /// `stop_at` (eight bytes at a time) finds what a byte-by-byte search finds.
            #[test]
            fn stop_at_equals_position(
                b in proptest::collection::vec(proptest::sample::select(b";= \t\x80\xbb\xff\x00a;".to_vec()), 0..40),
                from in 0usize..45,
            ) {
                let slow = |set: &[u8]| b.get(from..).map_or(from, |r| from + r.iter().position(|c| set.contains(c)).unwrap_or(r.len()));
                prop_assert_eq!(stop_at(&b, from, [b';']), slow(b";"));
                prop_assert_eq!(stop_at(&b, from, [b'=', b';']), slow(b"=;"));
                prop_assert_eq!(stop_at(&b, from, [b';', b' ', b'\t']), slow(b"; \t"));
            }

            /// `parse_u16` and `parse_unsigned` are `str::parse::<u16>` and `::<u32>`.
            #[test]
            fn parse_u16_equals_std(s in "[+-]?[0-9]{0,7}|[+]?[0-9]{9,11}|[0-9a+ ]{0,4}") {
                prop_assert_eq!(parse_u16(&s), s.parse::<u16>().ok(), "{:?}", s);
                prop_assert_eq!(parse_unsigned(&s, u32::MAX), s.parse::<u32>().ok(), "{:?}", s);
            }

            /// `push_ip` writes what `Display` does.
            #[test]
            fn push_ip_equals_display(a in any::<[u8; 4]>(), six in any::<[u16; 8]>()) {
                for ip in [IpAddr::from(a), IpAddr::from(six)] {
                    let mut s = String::new();
                    push_ip(&mut s, ip);
                    prop_assert_eq!(s, ip.to_string());
                }
            }
        }
    }

    #[test]
    fn value_run_stops_at_the_first_byte_outside_a_value() {
        for len in 0..20 {
            for bad in [0u8, b'\r', b'\n', 0x1f, 0x7f, 0x80, 0xff, b'\t'] {
                for at in 0..=len {
                    let mut v = vec![b'a'; len];
                    v.insert(at, bad);
                    let expected = if bad == b'\t' { len + 1 } else { at };
                    assert_eq!(value_run(&v), expected, "{v:?}");
                }
            }
            assert_eq!(value_run(&vec![b'~'; len]), len);
            assert_eq!(value_run(&vec![b' '; len]), len);
        }
    }

    #[test]
    fn via_and_name_addr_helpers() {
        let v = Via::parse("SIP/2.0/UDP [::1]:5080;branch=z9hG4bKx;received=::1;rport=5").unwrap();
        assert_eq!(v.host, "[::1]");
        assert_eq!(v.port, Some(5080));
        assert!(v.rport);
        assert_eq!(
            name_addr_uri("\"A, B\" <sip:a@h;lr>;tag=1").as_deref(),
            Some("sip:a@h;lr")
        );
        assert_eq!(tag_param("<sip:a@h;tag=no>;tag=yes"), Some("yes"));
        assert_eq!(split_cseq(" 1 \tINVITE "), Some(("1", "INVITE")));
        for bad in ["", "1", "1 INVITE x", "  "] {
            assert_eq!(split_cseq(bad), None, "{bad:?}");
        }
        for n in [0u64, 7, 10, 99, 100, 65_535, 4_294_967_295, u64::MAX] {
            let mut s = String::from("x");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "10.20.3.40",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut s = String::new();
            push_ip(&mut s, ip);
            assert_eq!(s, ip.to_string());
        }
        assert_eq!(
            comma_parts("a, \"b,c\" <x,y>, d").collect::<Vec<_>>(),
            vec!["a", "\"b,c\" <x,y>", "d"]
        );
    }
}
