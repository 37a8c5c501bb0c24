//! Classifying datagrams that arrive on an RTP port: RTP, RTCP, STUN or garbage.
//!
//! Parsing is done by the `rtp` crate (webrtc-rs); this module adds what it does not
//! check (version 2, RTCP packet types, STUN, a zero padding count, a size limit) and
//! copies the fields the session needs into a small owned [`RtpPacket`].

use rtp::header::Header;
use webrtc_util::marshal::{Marshal, MarshalSize, Unmarshal};

/// Largest datagram accepted on an RTP port. Anything bigger is discarded (an
/// ordinary 20 ms G.711 packet is 172 bytes; Ethernet MTU is 1500).
pub const MAX_DATAGRAM: usize = 1500;

/// The RTP fields the session uses, with the payload copied out (padding removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket {
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// Marker bit (start of a talkspurt for audio, start of an event for DTMF).
    pub marker: bool,
    /// Sequence number.
    pub sequence: u16,
    /// RTP timestamp (8 kHz units for G.711 and telephone-event).
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Payload bytes (CSRCs, header extension and padding removed).
    pub payload: Vec<u8>,
}

/// Why a datagram was not accepted as RTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRtp {
    /// An RTCP packet (second byte 200..=204, i.e. "PT" 72..=76 with the marker set).
    Rtcp,
    /// A STUN message (RFC 5389 magic cookie).
    Stun,
    /// Version field is not 2.
    BadVersion,
    /// Larger than [`MAX_DATAGRAM`].
    Oversized,
    /// Truncated header, CSRC list, extension or padding that lies about its length.
    Malformed,
}

/// What a datagram on the RTP port turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// A well-formed RTP version 2 packet.
    Rtp(RtpPacket),
    /// Anything else, with the reason.
    NotRtp(NotRtp),
}

/// True when `data` looks like RTCP (version 2, packet type 200..=204).
pub fn is_rtcp(data: &[u8]) -> bool {
    matches!(data, [b0, b1, ..] if b0 >> 6 == 2 && (200..=204).contains(b1))
}

/// True when `data` is a STUN message (first two bits zero, magic cookie at offset 4).
pub fn is_stun(data: &[u8]) -> bool {
    matches!(data, [b0, _, _, _, 0x21, 0x12, 0xA4, 0x42, ..] if b0 >> 6 == 0) && data.len() >= 20
}

/// Classifies one datagram. Never panics, whatever the input.
pub fn classify(data: &[u8]) -> Classified {
    if data.len() > MAX_DATAGRAM {
        return Classified::NotRtp(NotRtp::Oversized);
    }
    if is_stun(data) {
        return Classified::NotRtp(NotRtp::Stun);
    }
    let Some(b0) = data.first() else {
        return Classified::NotRtp(NotRtp::Malformed);
    };
    if b0 >> 6 != 2 {
        return Classified::NotRtp(NotRtp::BadVersion);
    }
    if is_rtcp(data) {
        return Classified::NotRtp(NotRtp::Rtcp);
    }
    // RFC 3550 5.1: the last padding octet counts itself, so 0 is invalid (`rtp` accepts it).
    if b0 & 0x20 != 0 && data.last().is_none_or(|&n| n == 0) {
        return Classified::NotRtp(NotRtp::Malformed);
    }
    let mut buf = data;
    match rtp::packet::Packet::unmarshal(&mut buf) {
        Ok(p) => Classified::Rtp(RtpPacket {
            payload_type: p.header.payload_type,
            marker: p.header.marker,
            sequence: p.header.sequence_number,
            timestamp: p.header.timestamp,
            ssrc: p.header.ssrc,
            payload: p.payload.to_vec(),
        }),
        Err(_) => Classified::NotRtp(NotRtp::Malformed),
    }
}

/// Serialises an RTP packet (version 2, no CSRC, no extension) into `out` (cleared first).
pub fn write_rtp(
    out: &mut Vec<u8>,
    payload_type: u8,
    marker: bool,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    payload: &[u8],
) {
    let header = Header {
        version: 2,
        marker,
        payload_type: payload_type & 0x7F,
        sequence_number: sequence,
        timestamp,
        ssrc,
        ..Header::default()
    };
    out.clear();
    let n = header.marshal_size();
    out.resize(n, 0);
    // A plain header always fits the buffer sized by marshal_size; fall back to a
    // hand-written 12-byte header should the crate ever refuse.
    if header.marshal_to(out.as_mut_slice()).is_err() {
        out.clear();
        out.push(0x80);
        out.push((u8::from(marker) << 7) | (payload_type & 0x7F));
        out.extend_from_slice(&sequence.to_be_bytes());
        out.extend_from_slice(&timestamp.to_be_bytes());
        out.extend_from_slice(&ssrc.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(b0: u8, b1: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![b0, b1, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        write_rtp(&mut out, 8, true, 65535, 0xDEAD_BEEF, 42, &[1, 2, 3]);
        assert_eq!(out.len(), 15);
        let Classified::Rtp(p) = classify(&out) else {
            panic!("not rtp")
        };
        assert_eq!(
            p,
            RtpPacket {
                payload_type: 8,
                marker: true,
                sequence: 65535,
                timestamp: 0xDEAD_BEEF,
                ssrc: 42,
                payload: vec![1, 2, 3]
            }
        );
    }

    #[test]
    fn rejects_non_rtp() {
        assert_eq!(classify(&[]), Classified::NotRtp(NotRtp::Malformed));
        for v in [0u8, 1, 3] {
            assert_eq!(
                classify(&pkt(v << 6, 0, &[0; 160])),
                Classified::NotRtp(NotRtp::BadVersion)
            );
        }
        for pt in 200..=204u8 {
            assert_eq!(
                classify(&pkt(0x80, pt, &[0; 20])),
                Classified::NotRtp(NotRtp::Rtcp)
            );
        }
        let stun = [
            0u8, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(classify(&stun), Classified::NotRtp(NotRtp::Stun));
        assert_eq!(classify(&[0x80, 0, 1]), Classified::NotRtp(NotRtp::Malformed));
        // CC=15 with no CSRCs.
        assert_eq!(
            classify(&pkt(0x8F, 0, &[])),
            Classified::NotRtp(NotRtp::Malformed)
        );
        // padding count larger than payload, and zero
        assert_eq!(
            classify(&pkt(0xA0, 0, &[1, 200])),
            Classified::NotRtp(NotRtp::Malformed)
        );
        assert_eq!(
            classify(&pkt(0xA0, 0, &[1, 0])),
            Classified::NotRtp(NotRtp::Malformed)
        );
        assert_eq!(classify(&vec![0x80; 1501]), Classified::NotRtp(NotRtp::Oversized));
        // valid padding is removed
        let Classified::Rtp(p) = classify(&pkt(0xA0, 0, &[9, 9, 0, 0, 0, 3])) else {
            panic!()
        };
        assert_eq!(p.payload, vec![9, 9, 0]);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..2000)) {
            let _ = classify(&data);
        }

        #[test]
        fn mutated_rtp_never_panics(flip in 0usize..200, val in 0u8..=255, len in 0usize..200) {
            let mut v = Vec::new();
            write_rtp(&mut v, 0, false, 1, 2, 3, &[0xFF; 160]);
            if let Some(b) = v.get_mut(flip) { *b = val; }
            v.truncate(len);
            let _ = classify(&v);
        }
    }
}
