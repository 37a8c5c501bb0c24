//! SDP offer/answer for G.711 telephone audio (RFC 3264, RFC 8866), on `sdp-types`.
//!
//! - [`negotiate_offer`]: read a remote offer, choose PCMU or PCMA and the
//!   telephone-event payload type, find the remote RTP address and the direction.
//! - [`build_answer`]: our answer to that offer (same number and order of m-lines,
//!   the other streams rejected with port 0; direction mirrored: `sendonly` is answered
//!   `recvonly`).
//! - [`build_offer`] / [`parse_answer`]: the same for calls we place.
//!
//! [`SdpError::NoUsableCodec`] (answer 488 Not Acceptable Here) is kept apart from
//! [`SdpError::Malformed`] (answer 400 or 488). Nothing here panics on any input; bodies
//! larger than [`MAX_SDP_LEN`] are refused.
//!
//! ```
//! use callbot_sip::sdp::{AudioCodec, build_answer, negotiate_offer};
//! use std::net::{IpAddr, Ipv4Addr};
//!
//! let offer = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
//!               m=audio 40000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
//! let media = negotiate_offer(offer, &[AudioCodec::Pcmu, AudioCodec::Pcma])?;
//! assert_eq!(media.codec, AudioCodec::Pcmu);
//! assert_eq!(media.telephone_event, Some(101));
//! let answer = build_answer(IpAddr::V4(Ipv4Addr::LOCALHOST), 30000, &media, 42, 1);
//! assert!(answer.contains("m=audio 30000 RTP/AVP 0 101\r\n"));
//! # Ok::<(), callbot_sip::sdp::SdpError>(())
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use sdp_types::{Connection, Media, Origin, Session};

/// Largest SDP body accepted, in bytes.
pub const MAX_SDP_LEN: usize = 16 * 1024;
/// Largest number of m-lines accepted in one body.
pub const MAX_MEDIA_LINES: usize = 16;
/// Packetization time used when the remote side names none (ms).
pub const DEFAULT_PTIME_MS: u32 = 20;

/// Why an SDP body could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// The body parses, but no audio stream offers a codec we accept (reply 488).
    #[error("no usable audio codec in the SDP")]
    NoUsableCodec,
    /// The body is not valid SDP or lacks what an audio stream needs (reply 400 or 488).
    #[error("malformed SDP: {0}")]
    Malformed(String),
    /// The body is larger than [`MAX_SDP_LEN`] or has more than [`MAX_MEDIA_LINES`] m-lines.
    #[error("SDP too large")]
    TooLarge,
}

/// A G.711 audio codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioCodec {
    /// G.711 µ-law, static payload type 0, `PCMU/8000`.
    Pcmu,
    /// G.711 A-law, static payload type 8, `PCMA/8000`.
    Pcma,
}

impl AudioCodec {
    /// The static RTP payload type (RFC 3551): 0 for PCMU, 8 for PCMA.
    pub fn static_payload_type(self) -> u8 {
        match self {
            AudioCodec::Pcmu => 0,
            AudioCodec::Pcma => 8,
        }
    }

    /// The rtpmap encoding name (`PCMU` or `PCMA`).
    pub fn encoding_name(self) -> &'static str {
        match self {
            AudioCodec::Pcmu => "PCMU",
            AudioCodec::Pcma => "PCMA",
        }
    }

    /// The RTP clock rate (8000 Hz).
    pub fn clock_rate(self) -> u32 {
        8000
    }

    fn from_static(pt: u8) -> Option<AudioCodec> {
        match pt {
            0 => Some(AudioCodec::Pcmu),
            8 => Some(AudioCodec::Pcma),
            _ => None,
        }
    }

    fn from_name(name: &str) -> Option<AudioCodec> {
        if name.eq_ignore_ascii_case("PCMU") {
            Some(AudioCodec::Pcmu)
        } else if name.eq_ignore_ascii_case("PCMA") {
            Some(AudioCodec::Pcma)
        } else {
            None
        }
    }
}

impl fmt::Display for AudioCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encoding_name())
    }
}

/// The direction attribute of a media stream (RFC 3264 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MediaDirection {
    /// `sendrecv` (the default).
    #[default]
    SendRecv,
    /// `sendonly`: the side that wrote it only sends (a hold).
    SendOnly,
    /// `recvonly`: the side that wrote it only receives.
    RecvOnly,
    /// `inactive`: no media either way (a hold).
    Inactive,
}

impl MediaDirection {
    /// The attribute name (`sendrecv`, `sendonly`, `recvonly`, `inactive`).
    pub fn as_str(self) -> &'static str {
        match self {
            MediaDirection::SendRecv => "sendrecv",
            MediaDirection::SendOnly => "sendonly",
            MediaDirection::RecvOnly => "recvonly",
            MediaDirection::Inactive => "inactive",
        }
    }

    /// The direction an answer takes for an offer with this direction:
    /// `sendonly` -> `recvonly`, `recvonly` -> `sendonly`, others unchanged.
    pub fn reverse(self) -> MediaDirection {
        match self {
            MediaDirection::SendOnly => MediaDirection::RecvOnly,
            MediaDirection::RecvOnly => MediaDirection::SendOnly,
            d => d,
        }
    }

    fn from_attributes(attrs: &[sdp_types::Attribute]) -> Option<MediaDirection> {
        attrs.iter().find_map(|a| {
            let n = a.attribute.as_str();
            if n.eq_ignore_ascii_case("sendrecv") {
                Some(MediaDirection::SendRecv)
            } else if n.eq_ignore_ascii_case("sendonly") {
                Some(MediaDirection::SendOnly)
            } else if n.eq_ignore_ascii_case("recvonly") {
                Some(MediaDirection::RecvOnly)
            } else if n.eq_ignore_ascii_case("inactive") {
                Some(MediaDirection::Inactive)
            } else {
                None
            }
        })
    }
}

impl fmt::Display for MediaDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One m-line of a remote description, kept so an answer can mirror the offer's
/// m-lines (RFC 3264 section 6: same number and order; streams we refuse get port 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaLine {
    /// The media type (`audio`, `video`, `application`, ...).
    pub media: String,
    /// The transport protocol (`RTP/AVP`, ...).
    pub proto: String,
    /// The format list as written.
    pub fmt: String,
}

/// The outcome of an offer/answer exchange for the audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedMedia {
    /// Where to send RTP (the remote `c=` address and `m=` port). An unspecified
    /// address (`0.0.0.0`, RFC 2543 hold) means: send nothing.
    pub remote_rtp: SocketAddr,
    /// The chosen codec.
    pub codec: AudioCodec,
    /// The payload type of that codec in this session (0/8, or a dynamic PT the
    /// remote mapped to PCMU/PCMA).
    pub payload_type: u8,
    /// The remote's telephone-event (RFC 4733) payload type, if it offered one at 8 kHz.
    pub telephone_event: Option<u8>,
    /// The remote's direction attribute for this stream.
    pub direction: MediaDirection,
    /// The packetization time the remote asked for (`a=ptime`), else 20 ms.
    pub ptime_ms: u32,
    /// Index of the audio stream among the remote description's m-lines.
    pub media_index: usize,
    /// All m-lines of the remote description, in order.
    pub media_lines: Vec<MediaLine>,
}

impl NegotiatedMedia {
    /// True when the remote put the call on hold: `sendonly`, `inactive`, or a
    /// connection address of `0.0.0.0` / `::`.
    pub fn is_hold(&self) -> bool {
        matches!(
            self.direction,
            MediaDirection::SendOnly | MediaDirection::Inactive
        ) || self.remote_rtp.ip().is_unspecified()
    }

    /// True when we may send RTP to the remote (not held, direction allows it).
    pub fn may_send(&self) -> bool {
        !self.is_hold() && self.direction != MediaDirection::SendOnly
    }
}

/// Reads a remote offer: the first audio m-line (port not 0, RTP/AVP) carrying a codec of
/// `prefer` is chosen, and among its formats the earliest codec in `prefer`.
///
/// Static payload types 0/8 count without an rtpmap; dynamic payload types count when
/// their rtpmap names PCMU/PCMA at 8000 Hz. The connection address is taken from the
/// m-line, else from the session level; IPv4 and IPv6.
pub fn negotiate_offer(sdp: &[u8], prefer: &[AudioCodec]) -> Result<NegotiatedMedia, SdpError> {
    let session = parse_session(sdp)?;
    let media_lines = media_lines(&session);
    let mut malformed: Option<SdpError> = None;
    for (index, media) in session.medias.iter().enumerate() {
        if !is_usable_audio(media) {
            continue;
        }
        let formats = match audio_formats(media) {
            Ok(f) => f,
            Err(e) => {
                malformed.get_or_insert(e);
                continue;
            }
        };
        let chosen = prefer.iter().find_map(|want| {
            formats
                .codecs
                .iter()
                .find(|(_, c)| c == want)
                .map(|&(pt, c)| (pt, c))
        });
        let Some((payload_type, codec)) = chosen else {
            continue;
        };
        let remote_rtp = remote_address(&session, media)?;
        return Ok(NegotiatedMedia {
            remote_rtp,
            codec,
            payload_type,
            telephone_event: formats.telephone_event,
            direction: direction_of(&session, media),
            ptime_ms: ptime_of(media),
            media_index: index,
            media_lines,
        });
    }
    Err(malformed.unwrap_or(SdpError::NoUsableCodec))
}

/// Our answer to an offer read by [`negotiate_offer`]: one audio m-line with the chosen
/// payload type (and telephone-event when offered) at `local_ip:local_port`, the offer's
/// other m-lines rejected with port 0, and the mirrored direction.
pub fn build_answer(
    local_ip: IpAddr,
    local_port: u16,
    media: &NegotiatedMedia,
    session_id: u64,
    version: u64,
) -> String {
    let mut session = base_session(local_ip, session_id, version);
    let audio = audio_media(
        local_port,
        &[(media.payload_type, media.codec)],
        media.telephone_event,
        media.ptime_ms,
        media.direction.reverse(),
    );
    if media.media_lines.is_empty() {
        session.medias.push(audio);
    } else {
        let mut audio = Some(audio);
        for (i, line) in media.media_lines.iter().enumerate() {
            if i == media.media_index {
                if let Some(a) = audio.take() {
                    session.medias.push(a);
                }
            } else {
                session.medias.push(Media {
                    media: line.media.clone(),
                    port: 0,
                    num_ports: None,
                    proto: line.proto.clone(),
                    fmt: line.fmt.clone(),
                    media_title: None,
                    connections: Vec::new(),
                    bandwidths: Vec::new(),
                    key: None,
                    attributes: Vec::new(),
                });
            }
        }
        if let Some(a) = audio {
            session.medias.push(a);
        }
    }
    session.to_string()
}

/// An offer for a call we place: one audio m-line with `codecs` in order (static
/// payload types), plus telephone-event at `telephone_event_pt` when given, `sendrecv`,
/// `ptime:20`.
pub fn build_offer(
    local_ip: IpAddr,
    local_port: u16,
    codecs: &[AudioCodec],
    telephone_event_pt: Option<u8>,
    session_id: u64,
    version: u64,
) -> String {
    let mut session = base_session(local_ip, session_id, version);
    let mut seen = Vec::new();
    for c in codecs {
        if !seen.iter().any(|&(_, s)| s == *c) {
            seen.push((c.static_payload_type(), *c));
        }
    }
    session.medias.push(audio_media(
        local_port,
        &seen,
        telephone_event_pt,
        DEFAULT_PTIME_MS,
        MediaDirection::SendRecv,
    ));
    session.to_string()
}

/// Reads the remote answer to our offer of `offered`: the first audio m-line with a
/// port other than 0; its first format that is one of `offered` is the codec the remote
/// will send. A rejected (port 0) or codec-less answer gives [`SdpError::NoUsableCodec`].
pub fn parse_answer(sdp: &[u8], offered: &[AudioCodec]) -> Result<NegotiatedMedia, SdpError> {
    let session = parse_session(sdp)?;
    let media_lines = media_lines(&session);
    for (index, media) in session.medias.iter().enumerate() {
        if !is_usable_audio(media) {
            continue;
        }
        let formats = audio_formats(media)?;
        let Some(&(payload_type, codec)) = formats.codecs.iter().find(|(_, c)| offered.contains(c)) else {
            continue;
        };
        return Ok(NegotiatedMedia {
            remote_rtp: remote_address(&session, media)?,
            codec,
            payload_type,
            telephone_event: formats.telephone_event,
            direction: direction_of(&session, media),
            ptime_ms: ptime_of(media),
            media_index: index,
            media_lines,
        });
    }
    Err(SdpError::NoUsableCodec)
}

fn parse_session(sdp: &[u8]) -> Result<Session, SdpError> {
    if sdp.len() > MAX_SDP_LEN {
        return Err(SdpError::TooLarge);
    }
    let m_lines = sdp
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"m="))
        .count();
    if m_lines > MAX_MEDIA_LINES {
        return Err(SdpError::TooLarge);
    }
    Session::parse(sdp).map_err(|e| SdpError::Malformed(e.to_string()))
}

fn media_lines(session: &Session) -> Vec<MediaLine> {
    session
        .medias
        .iter()
        .map(|m| MediaLine {
            media: m.media.clone(),
            proto: m.proto.clone(),
            fmt: m.fmt.clone(),
        })
        .collect()
}

fn is_usable_audio(media: &Media) -> bool {
    media.media.eq_ignore_ascii_case("audio")
        && media.port != 0
        && media.proto.eq_ignore_ascii_case("RTP/AVP")
}

struct AudioFormats {
    /// (payload type, codec) in the order of the m-line.
    codecs: Vec<(u8, AudioCodec)>,
    telephone_event: Option<u8>,
}

fn audio_formats(media: &Media) -> Result<AudioFormats, SdpError> {
    // rtpmap lines: (pt, name, clock rate, channels).
    let mut maps: Vec<(u8, String, u32, Option<String>)> = Vec::new();
    for value in media.get_attribute_values("rtpmap") {
        let Some(value) = value else { continue };
        let Ok(map) = value.trim().parse::<sdp_types::RtpMap>() else {
            continue;
        };
        maps.push((
            map.payload_type,
            map.encoding_name,
            map.clock_rate,
            map.encoding_params,
        ));
    }
    let mut codecs = Vec::new();
    let mut telephone_event = None;
    for token in media.fmt.split_ascii_whitespace() {
        let pt: u8 = match token.parse() {
            Ok(pt) if pt <= 127 => pt,
            _ => {
                return Err(SdpError::Malformed(format!(
                    "bad payload type {:?}",
                    token.chars().take(16).collect::<String>()
                )));
            }
        };
        match maps.iter().find(|m| m.0 == pt) {
            Some((_, name, rate, channels)) => {
                let mono = channels.as_deref().is_none_or(|c| c.trim() == "1");
                if *rate != 8000 || !mono {
                    continue;
                }
                if let Some(c) = AudioCodec::from_name(name) {
                    codecs.push((pt, c));
                } else if name.eq_ignore_ascii_case("telephone-event") && telephone_event.is_none() {
                    telephone_event = Some(pt);
                }
            }
            None => {
                if let Some(c) = AudioCodec::from_static(pt) {
                    codecs.push((pt, c));
                }
            }
        }
    }
    Ok(AudioFormats {
        codecs,
        telephone_event,
    })
}

fn remote_address(session: &Session, media: &Media) -> Result<SocketAddr, SdpError> {
    let conn = media
        .connections
        .first()
        .or(session.connection.as_ref())
        .ok_or_else(|| SdpError::Malformed(String::from("no connection address (c=)")))?;
    let addr = conn
        .try_address()
        .map_err(|e| SdpError::Malformed(format!("bad connection address: {e:?}")))?;
    if addr.ip.is_multicast() {
        return Err(SdpError::Malformed(String::from("multicast connection address")));
    }
    Ok(SocketAddr::new(addr.ip, media.port))
}

fn direction_of(session: &Session, media: &Media) -> MediaDirection {
    MediaDirection::from_attributes(&media.attributes)
        .or_else(|| MediaDirection::from_attributes(&session.attributes))
        .unwrap_or_default()
}

fn ptime_of(media: &Media) -> u32 {
    media
        .get_first_attribute_value("ptime")
        .flatten()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|p| (10..=200).contains(p))
        .unwrap_or(DEFAULT_PTIME_MS)
}

fn base_session(local_ip: IpAddr, session_id: u64, version: u64) -> Session {
    let mut origin = Origin::with_ip_addr(session_id, version, local_ip);
    origin.set_username("callbot");
    let mut session = Session::new(origin, "callbot");
    session.set_connection(Connection::from_ip_addr(local_ip));
    session.add_time(sdp_types::Time::new(0, 0));
    session
}

fn audio_media(
    port: u16,
    codecs: &[(u8, AudioCodec)],
    telephone_event: Option<u8>,
    ptime_ms: u32,
    direction: MediaDirection,
) -> Media {
    let mut fmt: Vec<String> = codecs.iter().map(|(pt, _)| pt.to_string()).collect();
    if let Some(te) = telephone_event {
        fmt.push(te.to_string());
    }
    let mut media = Media::new(
        sdp_types::MediaType::Audio,
        port,
        sdp_types::TransportProto::RtpAvp,
        fmt.join(" "),
    );
    for (pt, c) in codecs {
        media.add_attribute_with_value("rtpmap", format!("{pt} {}/{}", c.encoding_name(), c.clock_rate()));
    }
    if let Some(te) = telephone_event {
        media.add_attribute_with_value("rtpmap", format!("{te} telephone-event/8000"));
        media.add_attribute_with_value("fmtp", format!("{te} 0-16"));
    }
    media.add_attribute_with_value("ptime", ptime_ms.to_string());
    media.add_attribute_from_str(direction.as_str());
    media
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const BOTH: &[AudioCodec] = &[AudioCodec::Pcmu, AudioCodec::Pcma];
    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn torture_body(name: &str) -> Option<Vec<u8>> {
        let path = callbot_testkit::shared_dir()?.join("peers/torture").join(name);
        let raw = std::fs::read(path).ok()?;
        let pos = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        Some(raw[pos + 4..].to_vec())
    }

    // baresip 1.0.0 offer as captured on loopback (codec list PCMU, PCMA, telephone-event).
    const BARESIP_OFFER: &str = "v=0\r\n\
o=- 1369914397 3391826125 IN IP4 127.0.0.1\r\n\
s=-\r\n\
c=IN IP4 127.0.0.1\r\n\
t=0 0\r\n\
m=audio 32006 RTP/AVP 0 8 101\r\n\
b=AS:88\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n\
a=rtcp-rsize\r\n\
a=label:1\r\n\
a=ssrc:2101617474 cname:sip:caller@127.0.0.1\r\n";

    // The offer of SIPp 3.6 scenario uac_rtp.xml with CODEC=PCMA, IPv6.
    const SIPP_OFFER_V6: &str = "v=0\r\n\
o=sipp 53655765 2353687637 IN IP6 ::1\r\n\
s=sipp\r\n\
c=IN IP6 ::1\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 8 101\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

    #[test]
    fn baresip_offer() {
        let m = negotiate_offer(BARESIP_OFFER.as_bytes(), BOTH).unwrap();
        assert_eq!(m.remote_rtp, "127.0.0.1:32006".parse().unwrap());
        assert_eq!(m.codec, AudioCodec::Pcmu);
        assert_eq!(m.payload_type, 0);
        assert_eq!(m.telephone_event, Some(101));
        assert_eq!(m.direction, MediaDirection::SendRecv);
        assert_eq!(m.ptime_ms, 20);
        assert!(!m.is_hold());
        // Our preference order wins over the offer's.
        let m = negotiate_offer(BARESIP_OFFER.as_bytes(), &[AudioCodec::Pcma, AudioCodec::Pcmu]).unwrap();
        assert_eq!((m.codec, m.payload_type), (AudioCodec::Pcma, 8));
    }

    #[test]
    fn sipp_ipv6_offer_and_answer() {
        let m = negotiate_offer(SIPP_OFFER_V6.as_bytes(), BOTH).unwrap();
        assert_eq!(
            m.remote_rtp,
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 6000)
        );
        assert_eq!(m.codec, AudioCodec::Pcma);
        let ans = build_answer(IpAddr::V6(Ipv6Addr::LOCALHOST), 30000, &m, 7, 2);
        // SIPp's check: "m=audio [0-9]+ RTP/AVP 8".
        assert!(ans.contains("m=audio 30000 RTP/AVP 8 101\r\n"), "{ans}");
        assert!(ans.contains("c=IN IP6 ::1\r\n"), "{ans}");
        assert!(ans.contains("o=callbot 7 2 IN IP6 ::1\r\n"), "{ans}");
        assert!(ans.contains("a=rtpmap:8 PCMA/8000\r\n"));
        assert!(ans.contains("a=rtpmap:101 telephone-event/8000\r\n"));
        assert!(ans.contains("a=sendrecv\r\n"));
        // The answer parses back to the same choice.
        let back = parse_answer(ans.as_bytes(), BOTH).unwrap();
        assert_eq!(back.codec, AudioCodec::Pcma);
        assert_eq!(back.telephone_event, Some(101));
        assert_eq!(back.remote_rtp.port(), 30000);
    }

    #[test]
    fn dynamic_pt_and_case_and_static_without_rtpmap() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
                   m=audio 4000 RTP/AVP 96 8 97\r\nc=IN IP4 127.0.0.2\r\n\
                   a=rtpmap:96 pcmu/8000/1\r\na=rtpmap:97 Telephone-Event/8000\r\n";
        let m = negotiate_offer(sdp.as_bytes(), BOTH).unwrap();
        assert_eq!((m.codec, m.payload_type), (AudioCodec::Pcmu, 96));
        assert_eq!(m.telephone_event, Some(97));
        assert_eq!(m.remote_rtp, "127.0.0.2:4000".parse().unwrap());
        let ans = build_answer(LO, 5000, &m, 1, 1);
        assert!(ans.contains("m=audio 5000 RTP/AVP 96 97\r\n"), "{ans}");
        assert!(ans.contains("a=rtpmap:96 PCMU/8000\r\n"), "{ans}");
    }

    #[test]
    fn wrong_rate_or_stereo_not_usable() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 4000 RTP/AVP 96 97 98\r\na=rtpmap:96 PCMU/16000\r\n\
                   a=rtpmap:97 PCMA/8000/2\r\na=rtpmap:98 telephone-event/48000\r\n";
        assert_eq!(
            negotiate_offer(sdp.as_bytes(), BOTH),
            Err(SdpError::NoUsableCodec)
        );
    }

    #[test]
    fn hold_variants_and_mirrored_direction() {
        let base = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                    m=audio 4000 RTP/AVP 0\r\n";
        for (attr, dir, answer) in [
            ("a=sendonly\r\n", MediaDirection::SendOnly, "a=recvonly\r\n"),
            ("a=inactive\r\n", MediaDirection::Inactive, "a=inactive\r\n"),
            ("a=recvonly\r\n", MediaDirection::RecvOnly, "a=sendonly\r\n"),
            ("", MediaDirection::SendRecv, "a=sendrecv\r\n"),
        ] {
            let sdp = format!("{base}{attr}");
            let m = negotiate_offer(sdp.as_bytes(), BOTH).unwrap();
            assert_eq!(m.direction, dir);
            assert_eq!(
                m.is_hold(),
                matches!(dir, MediaDirection::SendOnly | MediaDirection::Inactive)
            );
            let ans = build_answer(LO, 5000, &m, 1, 2);
            assert!(ans.contains(answer), "{attr} -> {ans}");
        }
        // Session-level direction applies when the m-line has none.
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   a=sendonly\r\nm=audio 4000 RTP/AVP 0\r\n";
        let m = negotiate_offer(sdp.as_bytes(), BOTH).unwrap();
        assert_eq!(m.direction, MediaDirection::SendOnly);
        // RFC 2543 hold.
        let sdp = base.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0");
        let m = negotiate_offer(sdp.as_bytes(), BOTH).unwrap();
        assert!(m.is_hold());
        assert!(!m.may_send());
    }

    #[test]
    fn first_usable_audio_line_wins() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 0 RTP/AVP 0\r\n\
                   m=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
                   m=audio 6000 RTP/SAVP 0\r\n\
                   m=audio 7000 RTP/AVP 18 8\r\n";
        let m = negotiate_offer(sdp.as_bytes(), BOTH).unwrap();
        assert_eq!(m.remote_rtp.port(), 7000);
        assert_eq!(m.codec, AudioCodec::Pcma);
        assert_eq!(m.media_index, 3);
        let ans = build_answer(LO, 5000, &m, 1, 1);
        let m_lines: Vec<&str> = ans.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m_lines,
            [
                "m=audio 0 RTP/AVP 0",
                "m=video 0 RTP/AVP 96",
                "m=audio 0 RTP/SAVP 0",
                "m=audio 5000 RTP/AVP 8"
            ]
        );
    }

    #[test]
    fn torture_bodies() {
        let Some(b48) = torture_body("48_invite_sdp_unknown_codecs.sip") else {
            callbot_testkit::tools::missing("../shared/peers/torture");
            return;
        };
        assert_eq!(negotiate_offer(&b48, BOTH), Err(SdpError::NoUsableCodec));
        for (name, want) in [
            ("49_invite_sdp_g729_only.sip", Err(SdpError::NoUsableCodec)),
            ("50_invite_sdp_video_only.sip", Err(SdpError::NoUsableCodec)),
            ("53_invite_sdp_port_zero.sip", Err(SdpError::NoUsableCodec)),
        ] {
            let body = torture_body(name).unwrap();
            assert_eq!(negotiate_offer(&body, BOTH).map(|_| ()), want, "{name}");
        }
        let b51 = torture_body("51_invite_sdp_malformed.sip").unwrap();
        assert!(matches!(negotiate_offer(&b51, BOTH), Err(SdpError::Malformed(_))));
        let b56 = torture_body("56_invite_sdp_odd_but_valid.sip").unwrap();
        let m = negotiate_offer(&b56, BOTH).unwrap();
        assert_eq!((m.codec, m.payload_type), (AudioCodec::Pcmu, 0));
        assert_eq!(m.ptime_ms, 30);
        assert_eq!(m.telephone_event, Some(101));
        assert_eq!(m.remote_rtp, "127.0.0.1:49178".parse().unwrap());
        let ans = build_answer(LO, 5000, &m, 1, 1);
        assert!(ans.contains("m=audio 5000 RTP/AVP 0 101\r\n"), "{ans}");
        assert!(ans.contains("m=application 0 UDP/BFCP *\r\n"), "{ans}");
        assert!(ans.contains("a=ptime:30\r\n"), "{ans}");
        // 54 is multipart: its first part (after the part headers) is a PCMU offer.
        let b54 = torture_body("54_invite_multipart_sdp.sip").unwrap();
        let start = b54.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let end = b54
            .windows(14)
            .position(|w| w == b"\r\n--boundary42")
            .unwrap_or(b54.len());
        let m = negotiate_offer(&b54[start..end.max(start)], BOTH).unwrap();
        assert_eq!(m.remote_rtp.port(), 49176);
    }

    #[test]
    fn offer_round_trip() {
        let offer = build_offer(
            LO,
            40000,
            &[AudioCodec::Pcma, AudioCodec::Pcmu, AudioCodec::Pcma],
            Some(101),
            99,
            1,
        );
        assert_eq!(
            offer,
            "v=0\r\no=callbot 99 1 IN IP4 127.0.0.1\r\ns=callbot\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio 40000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
        );
        // The remote answers with its own offer's negotiation: PCMU preferred by it.
        let theirs = negotiate_offer(offer.as_bytes(), &[AudioCodec::Pcmu]).unwrap();
        let answer = build_answer("127.0.0.3".parse().unwrap(), 50000, &theirs, 5, 5);
        let got = parse_answer(answer.as_bytes(), &[AudioCodec::Pcma, AudioCodec::Pcmu]).unwrap();
        assert_eq!(got.codec, AudioCodec::Pcmu);
        assert_eq!(got.remote_rtp, "127.0.0.3:50000".parse().unwrap());
        // A rejected answer (port 0).
        let rejected = answer.replace("m=audio 50000", "m=audio 0");
        assert_eq!(
            parse_answer(rejected.as_bytes(), BOTH),
            Err(SdpError::NoUsableCodec)
        );
        // An answer naming a codec we did not offer.
        assert_eq!(
            parse_answer(answer.as_bytes(), &[AudioCodec::Pcma]),
            Err(SdpError::NoUsableCodec)
        );
    }

    #[test]
    fn malformed_and_limits() {
        assert!(matches!(negotiate_offer(b"", BOTH), Err(SdpError::Malformed(_))));
        assert!(matches!(
            negotiate_offer(b"v=0\r\nm=audio 4000 RTP/AVP 0\r\n", BOTH),
            Err(SdpError::Malformed(_))
        ));
        let bad_pt = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                      m=audio 4000 RTP/AVP zero\r\n";
        assert!(matches!(
            negotiate_offer(bad_pt.as_bytes(), BOTH),
            Err(SdpError::Malformed(_))
        ));
        let host = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 example.com\r\nt=0 0\r\n\
                    m=audio 4000 RTP/AVP 0\r\n";
        assert!(matches!(
            negotiate_offer(host.as_bytes(), BOTH),
            Err(SdpError::Malformed(_))
        ));
        let big = vec![b'a'; MAX_SDP_LEN + 1];
        assert_eq!(negotiate_offer(&big, BOTH), Err(SdpError::TooLarge));
        let many = format!(
            "v=0\r\nc=IN IP4 127.0.0.1\r\n{}",
            "m=audio 4000 RTP/AVP 0\r\n".repeat(MAX_MEDIA_LINES + 1)
        );
        assert_eq!(negotiate_offer(many.as_bytes(), BOTH), Err(SdpError::TooLarge));
        assert_eq!(
            negotiate_offer(BARESIP_OFFER.as_bytes(), &[]),
            Err(SdpError::NoUsableCodec)
        );
    }

    #[test]
    fn lf_only_offer() {
        let sdp = BARESIP_OFFER.replace("\r\n", "\n");
        let m = negotiate_offer(sdp.as_bytes(), BOTH).unwrap();
        assert_eq!(m.codec, AudioCodec::Pcmu);
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = negotiate_offer(&data, BOTH);
            let _ = parse_answer(&data, BOTH);
        }

        #[test]
        fn mutated_offers_never_panic(pos in 0usize..400, byte: u8, cut in 0usize..400) {
            let mut data = BARESIP_OFFER.as_bytes().to_vec();
            if let Some(b) = data.get_mut(pos) { *b = byte; }
            data.truncate(cut.max(1));
            if let Ok(m) = negotiate_offer(&data, BOTH) {
                let ans = build_answer(LO, 5000, &m, 1, 1);
                proptest::prop_assert!(parse_answer(ans.as_bytes(), BOTH).is_ok());
            }
        }
    }
}
