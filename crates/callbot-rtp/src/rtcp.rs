//! Minimal RTCP (RFC 3550 section 6): compound SR or RR + SDES CNAME out, SR/RR in.
//!
//! Written here rather than pulled from a crate because only these two report types
//! are needed and the parser must never panic on hostile input (it is bounded by each
//! packet's length field and ignores what it does not know).

/// A reception report block (about one source we receive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Fraction lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR from that source (0 if none).
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

/// Sender information of an SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderInfo {
    /// NTP timestamp (64-bit fixed point).
    pub ntp: u64,
    /// RTP timestamp matching `ntp`.
    pub rtp_timestamp: u32,
    /// Packets sent.
    pub packets: u32,
    /// Payload octets sent.
    pub octets: u32,
}

/// One parsed SR or RR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The reporter's SSRC.
    pub ssrc: u32,
    /// Present for an SR.
    pub sender: Option<SenderInfo>,
    /// Reception report blocks.
    pub blocks: Vec<ReportBlock>,
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    let s = b.get(i..i.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn parse_block(b: &[u8], i: usize) -> Option<ReportBlock> {
    let w1 = u32_at(b, i + 4)?;
    // 24-bit two's complement
    let lost = ((w1 & 0x00FF_FFFF) << 8) as i32 >> 8;
    Some(ReportBlock {
        ssrc: u32_at(b, i)?,
        fraction_lost: (w1 >> 24) as u8,
        cumulative_lost: lost,
        highest_seq: u32_at(b, i + 8)?,
        jitter: u32_at(b, i + 12)?,
        last_sr: u32_at(b, i + 16)?,
        delay_since_last_sr: u32_at(b, i + 20)?,
    })
}

/// Parses the SR and RR packets of a compound RTCP datagram; other packet types are
/// skipped. `None` when the datagram is not valid RTCP (bad version, lengths that
/// overrun, not starting with SR/RR as RFC 3550 requires).
pub fn parse(data: &[u8]) -> Option<Vec<Report>> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while i < data.len() {
        let b0 = *data.get(i)?;
        let pt = *data.get(i + 1)?;
        if b0 >> 6 != 2 {
            return None;
        }
        let words = u16::from_be_bytes([*data.get(i + 2)?, *data.get(i + 3)?]) as usize;
        let len = (words + 1) * 4;
        let pkt = data.get(i..i + len)?;
        if i == 0 && pt != 200 && pt != 201 {
            return None;
        }
        let count = usize::from(b0 & 0x1F);
        match pt {
            200 | 201 => {
                let ssrc = u32_at(pkt, 4)?;
                let (sender, first) = if pt == 200 {
                    let hi = u64::from(u32_at(pkt, 8)?);
                    let lo = u64::from(u32_at(pkt, 12)?);
                    (
                        Some(SenderInfo {
                            ntp: (hi << 32) | lo,
                            rtp_timestamp: u32_at(pkt, 16)?,
                            packets: u32_at(pkt, 20)?,
                            octets: u32_at(pkt, 24)?,
                        }),
                        28,
                    )
                } else {
                    (None, 8)
                };
                let blocks = (0..count)
                    .map(|k| parse_block(pkt, first + 24 * k))
                    .collect::<Option<Vec<_>>>()?;
                out.push(Report { ssrc, sender, blocks });
            }
            _ => {}
        }
        i += len;
    }
    Some(out)
}

fn header(out: &mut Vec<u8>, count: u8, pt: u8, words: usize) {
    out.push(0x80 | (count & 0x1F));
    out.push(pt);
    out.extend_from_slice(&(words as u16).to_be_bytes());
}

fn push_block(out: &mut Vec<u8>, b: &ReportBlock) {
    out.extend_from_slice(&b.ssrc.to_be_bytes());
    let lost = (b.cumulative_lost.clamp(-0x80_0000, 0x7F_FFFF) as u32) & 0x00FF_FFFF;
    out.extend_from_slice(&((u32::from(b.fraction_lost) << 24) | lost).to_be_bytes());
    out.extend_from_slice(&b.highest_seq.to_be_bytes());
    out.extend_from_slice(&b.jitter.to_be_bytes());
    out.extend_from_slice(&b.last_sr.to_be_bytes());
    out.extend_from_slice(&b.delay_since_last_sr.to_be_bytes());
}

/// Builds a compound packet: an SR (when `sender` is given) or an RR with at most one
/// report block, then an SDES with the CNAME (truncated to 255 bytes).
pub fn build(ssrc: u32, sender: Option<SenderInfo>, block: Option<ReportBlock>, cname: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let nblocks = usize::from(block.is_some());
    match sender {
        Some(s) => {
            header(&mut out, nblocks as u8, 200, 6 + 6 * nblocks);
            out.extend_from_slice(&ssrc.to_be_bytes());
            out.extend_from_slice(&s.ntp.to_be_bytes());
            out.extend_from_slice(&s.rtp_timestamp.to_be_bytes());
            out.extend_from_slice(&s.packets.to_be_bytes());
            out.extend_from_slice(&s.octets.to_be_bytes());
        }
        None => {
            header(&mut out, nblocks as u8, 201, 1 + 6 * nblocks);
            out.extend_from_slice(&ssrc.to_be_bytes());
        }
    }
    if let Some(b) = &block {
        push_block(&mut out, b);
    }
    let name = cname.as_bytes();
    let name = name.get(..name.len().min(255)).unwrap_or_default();
    // SSRC + CNAME item (type, len, text) + at least one zero octet, padded to 4.
    let item_len = 2 + name.len() + 1;
    let chunk = 4 + item_len.div_ceil(4) * 4;
    header(&mut out, 1, 202, chunk / 4);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.push(1);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.resize(out.len() + (chunk - 4 - 2 - name.len()), 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sr_and_rr_round_trip() {
        let block = ReportBlock {
            ssrc: 9,
            fraction_lost: 25,
            cumulative_lost: -3,
            highest_seq: 0x1_0005,
            jitter: 44,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 65536,
        };
        let si = SenderInfo {
            ntp: 0xAABB_CCDD_1122_3344,
            rtp_timestamp: 160,
            packets: 50,
            octets: 8000,
        };
        for (sender, name) in [(Some(si), "bot@callbot"), (None, "x")] {
            let data = build(77, sender, Some(block), name);
            assert_eq!(data.len() % 4, 0);
            let reports = parse(&data).unwrap();
            assert_eq!(
                reports,
                vec![Report {
                    ssrc: 77,
                    sender,
                    blocks: vec![block]
                }]
            );
        }
        let data = build(1, None, None, "");
        assert_eq!(parse(&data).unwrap()[0].blocks, vec![]);
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(parse(&[0x80, 200, 0xFF, 0xFF, 0, 0, 0, 1]), None);
        assert_eq!(parse(&[0x80, 201, 0]), None);
        assert_eq!(parse(&[0x81, 203, 0, 1, 0, 0, 0, 1]), None); // BYE first
        assert_eq!(parse(&[0x40, 200, 0, 0]), None);
        // RR claiming 1 block with no room for it
        assert_eq!(parse(&[0x81, 201, 0, 1, 0, 0, 0, 1]), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse(&data);
        }
    }
}
