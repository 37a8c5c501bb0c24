//! G.711 µ-law and A-law (ITU-T G.711), bit-exact to the ITU-T G.191 reference `g711.c`.
//!
//! Samples are 16-bit linear PCM (`i16`, full scale ±32767); codes are the octets carried
//! in RTP payload types 0 (PCMU) and 8 (PCMA), with the usual bit inversions already applied
//! (µ-law codes are complemented, A-law codes have their even bits toggled).
//!
//! Exactness: for every one of the 65,536 `i16` inputs the encoders return the same code as
//! the G.191 reference (`ulaw_compress` / `alaw_compress`), and the decoders return the
//! same sample as `ulaw_expand` / `alaw_expand` for all 256 codes. In particular µ-law
//! rounds negative inputs as the reference does, through the one's complement
//! (`(!x) >> 2`), not through negation (`-x >> 2`) as the widespread "Sun `g711.c`"
//! does; the two disagree on 508 inputs. The tests in this module check all of this
//! against the reference algorithm transcribed from its C source.
//!
//! ```
//! use callbot_audio::g711::{self, Law};
//! assert_eq!(g711::ulaw_encode(0), 0xFF);
//! assert_eq!(g711::alaw_decode(0xD5), 8);
//! let mut payload = Vec::new();
//! Law::Ulaw.encode_into(&[0, 1000, -1000], &mut payload);
//! let mut pcm = Vec::new();
//! Law::Ulaw.decode_into(&payload, &mut pcm);
//! assert_eq!(pcm.len(), 3);
//! assert_eq!(Law::Alaw.payload_type(), 8);
//! ```

/// The µ-law bias (33 in the 14-bit domain), the offset between the A-law and µ-law
/// segment thresholds.
const ULAW_BIAS: u16 = 33;
/// Largest biased 14-bit µ-law magnitude (the reference clamps to `0x1FFF`).
const ULAW_MAX: u16 = 0x1FFF;

/// µ-law decode table: all 256 codes, built at compile time from [`ulaw_expand_one`].
static ULAW_TABLE: [i16; 256] = build_table(Law::Ulaw);
/// A-law decode table: all 256 codes, built at compile time from [`alaw_expand_one`].
static ALAW_TABLE: [i16; 256] = build_table(Law::Alaw);

const fn build_table(law: Law) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = match law {
            Law::Ulaw => ulaw_expand_one(i as u8),
            Law::Alaw => alaw_expand_one(i as u8),
        };
        i += 1;
    }
    table
}

/// Encodes one 16-bit linear sample to a µ-law code (ITU-T G.711, G.191 rounding).
#[inline]
pub fn ulaw_encode(sample: i16) -> u8 {
    // One's complement for negatives, as the reference does: -1 maps like 0.
    let (mag, sign) = if sample < 0 {
        ((!sample) as u16 >> 2, 0x00u8)
    } else {
        (sample as u16 >> 2, 0x80u8)
    };
    let biased = (mag + ULAW_BIAS).min(ULAW_MAX); // 33 ..= 8191
    // Segment 0 holds 32..=63 (bit 5 set), segment 7 holds 4096..=8191 (bit 12 set).
    let top_bit = 15 - biased.leading_zeros() as u16; // 5 ..= 12
    let segment = top_bit - 5;
    let mantissa = (biased >> (top_bit - 4)) & 0x0F;
    let code = ((segment << 4) | mantissa) as u8;
    // The µ-law code is transmitted complemented; the sign bit is 1 for positive samples.
    (!code & 0x7F) | sign
}

/// Decodes one µ-law code to a 16-bit linear sample (table lookup, exact to G.191).
#[inline]
pub fn ulaw_decode(code: u8) -> i16 {
    ULAW_TABLE[code as usize]
}

/// Encodes one 16-bit linear sample to an A-law code (ITU-T G.711, G.191 rounding).
#[inline]
pub fn alaw_encode(sample: i16) -> u8 {
    let (mag, sign) = if sample < 0 {
        ((!sample) as u16 >> 4, 0x00u8)
    } else {
        (sample as u16 >> 4, 0x80u8)
    }; // mag: 0 ..= 2047
    let code = if mag < 32 {
        // Segments 0 and 1 share the same step: the value is the code.
        mag as u8
    } else {
        let top_bit = 15 - mag.leading_zeros() as u16; // 5 ..= 10
        let segment = top_bit - 3; // 2 ..= 7
        let mantissa = (mag >> (top_bit - 4)) & 0x0F;
        ((segment << 4) | mantissa) as u8
    };
    (code | sign) ^ 0x55
}

/// Decodes one A-law code to a 16-bit linear sample (table lookup, exact to G.191).
#[inline]
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_TABLE[code as usize]
}

/// µ-law expansion of one code, arithmetic form (used to build the table).
const fn ulaw_expand_one(code: u8) -> i16 {
    let inverted = !code;
    let segment = ((inverted >> 4) & 0x07) as i32;
    let mantissa = (inverted & 0x0F) as i32;
    // Reconstruct the middle of the interval, 14-bit domain scaled by 4, minus the bias.
    let magnitude = ((2 * mantissa + 33) << (segment + 2)) - 4 * ULAW_BIAS as i32;
    if code & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

/// A-law expansion of one code, arithmetic form (used to build the table).
const fn alaw_expand_one(code: u8) -> i16 {
    let toggled = code ^ 0x55;
    let segment = ((toggled >> 4) & 0x07) as i32;
    let mantissa = (toggled & 0x0F) as i32;
    let magnitude = if segment == 0 {
        (2 * mantissa + 1) << 3
    } else {
        (2 * mantissa + 33) << (segment + 2)
    };
    if code & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

/// A G.711 companding law, with the RTP static payload type that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Law {
    /// µ-law (PCMU, RTP payload type 0): North America and Japan.
    Ulaw,
    /// A-law (PCMA, RTP payload type 8): most of the rest of the world.
    Alaw,
}

impl Law {
    /// Encodes `pcm` and appends one code per sample to `out`.
    pub fn encode_into(self, pcm: &[i16], out: &mut Vec<u8>) {
        out.reserve(pcm.len());
        match self {
            Law::Ulaw => out.extend(pcm.iter().map(|&s| ulaw_encode(s))),
            Law::Alaw => out.extend(pcm.iter().map(|&s| alaw_encode(s))),
        }
    }

    /// Decodes `data` and appends one sample per code to `out`.
    pub fn decode_into(self, data: &[u8], out: &mut Vec<i16>) {
        let table = match self {
            Law::Ulaw => &ULAW_TABLE,
            Law::Alaw => &ALAW_TABLE,
        };
        out.reserve(data.len());
        out.extend(data.iter().map(|&c| table[c as usize]));
    }

    /// Encodes one sample.
    #[inline]
    pub fn encode(self, sample: i16) -> u8 {
        match self {
            Law::Ulaw => ulaw_encode(sample),
            Law::Alaw => alaw_encode(sample),
        }
    }

    /// Decodes one code.
    #[inline]
    pub fn decode(self, code: u8) -> i16 {
        match self {
            Law::Ulaw => ulaw_decode(code),
            Law::Alaw => alaw_decode(code),
        }
    }

    /// The RTP static payload type (RFC 3551): 0 for PCMU, 8 for PCMA.
    pub fn payload_type(self) -> u8 {
        match self {
            Law::Ulaw => 0,
            Law::Alaw => 8,
        }
    }

    /// The law carried by a static RTP payload type, if it is 0 or 8.
    pub fn from_payload_type(pt: u8) -> Option<Law> {
        match pt {
            0 => Some(Law::Ulaw),
            8 => Some(Law::Alaw),
            _ => None,
        }
    }

    /// The SDP `rtpmap` encoding name: `PCMU` or `PCMA`.
    pub fn encoding_name(self) -> &'static str {
        match self {
            Law::Ulaw => "PCMU",
            Law::Alaw => "PCMA",
        }
    }

    /// The code for silence (what 0 encodes to): `0xFF` for µ-law (decodes to 0) and
    /// `0xD5` for A-law (decodes to +8: A-law has no zero level).
    pub fn silence_code(self) -> u8 {
        match self {
            Law::Ulaw => 0xFF,
            Law::Alaw => 0xD5,
        }
    }
}

#[cfg(test)]
#[allow(clippy::all)]
mod tests {
    use super::*;

    // ---- ITU-T G.191 STL g711.c, transcribed line by line in its own style --------------
    // (short = i16, long = i32; loops over one sample instead of a buffer).

    fn itu_alaw_compress(linbuf: i16) -> u8 {
        let mut ix: i16;
        let mut iexp: i16;
        ix = if linbuf < 0 {
            (!linbuf) >> 4 /* 1's complement for negative values */
        } else {
            linbuf >> 4
        };
        /* Do more, if exponent > 0 */
        if ix > 15 {
            /* exponent=0 for ix <= 15 */
            iexp = 1; /* first step: */
            while ix > 16 + 15 {
                /* find mantissa and exponent */
                ix >>= 1;
                iexp += 1;
            }
            ix -= 16; /* second step: remove leading '1' */
            ix += iexp << 4; /* now compute encoded value */
        }
        if linbuf >= 0 {
            ix |= 0x0080; /* add sign bit */
        }
        (ix ^ 0x0055) as u8 /* toggle even bits */
    }

    fn itu_alaw_expand(logbuf: i16) -> i16 {
        let mut ix: i16;
        let mut mant: i16;
        let iexp: i16;
        ix = logbuf ^ 0x0055; /* re-toggle toggled bits */
        ix &= 0x007F; /* remove sign bit */
        iexp = ix >> 4; /* extract exponent */
        mant = ix & 0x000F; /* now get mantissa */
        if iexp > 0 {
            mant = mant + 16; /* add leading '1', if exponent > 0 */
        }
        mant = (mant << 4) + 0x0008; /* now mantissa left justified and */
        /* 1/2 quantization step added */
        if iexp > 1 {
            /* now left shift according exponent */
            mant = mant << (iexp - 1);
        }
        if logbuf > 127 { mant } else { -mant } /* invert, if negative sample */
    }

    fn itu_ulaw_compress(linbuf: i16) -> u8 {
        let mut i: i16;
        let mut absno: i16;
        let mut segno: i16;
        let mut low_nibble: i16;
        let high_nibble: i16;
        let mut logbuf: i16;
        absno = if linbuf < 0 {
            ((!linbuf) >> 2) + 33 /* compute 1's complement in case of negative samples */
        } else {
            (linbuf >> 2) + 33 /* NB: 33 is the difference value between the thresholds */
        };
        if absno > 0x1FFF {
            absno = 0x1FFF; /* limitation to "absno" < 8192 */
        }
        /* Determination of sample's segment */
        i = absno >> 6;
        segno = 1;
        while i != 0 {
            segno += 1;
            i >>= 1;
        }
        /* Mounting the high-nibble of the log-PCM sample */
        high_nibble = 0x0008 - segno;
        /* Mounting the low-nibble of the log PCM sample */
        low_nibble = (absno >> segno) & 0x000F; /* right shift of mantissa and masking away leading '1' */
        low_nibble = 0x000F - low_nibble;
        /* Joining the high-nibble and the low-nibble of the log PCM sample */
        logbuf = (high_nibble << 4) | low_nibble;
        /* Add sign bit */
        if linbuf >= 0 {
            logbuf = logbuf | 0x0080;
        }
        logbuf as u8
    }

    fn itu_ulaw_expand(logbuf: i16) -> i16 {
        let segment: i16;
        let mut mantissa: i16;
        let exponent: i16;
        let sign: i16;
        let step: i16;
        sign = if logbuf < 0x0080 { -1 } else { 1 }; /* sign-bit = 1 for positive values */
        mantissa = !logbuf; /* 1's complement of input value */
        exponent = (mantissa >> 4) & 0x0007; /* extract exponent */
        segment = exponent + 1; /* compute segment number */
        mantissa = mantissa & 0x000F; /* extract mantissa */
        /* Compute Quantized Sample (14 bit left justified!) */
        step = 4 << segment; /* position of the LSB = 1 quantization step */
        sign * ((0x0080 << exponent) /* '1', preceding the mantissa */
            + step * mantissa /* left shift of mantissa */
            + step / 2 /* 1/2 quantization step */
            - 4 * 33)
    }

    // ---- The common "Sun Microsystems g711.c" µ-law encoder (negates instead of
    // complementing), transcribed to show where it differs. -------------------------------
    fn sun_linear2ulaw(pcm_val: i16) -> u8 {
        const BIAS: i16 = 0x84;
        const CLIP: i16 = 8159;
        const SEG_UEND: [i16; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
        let mask: i16;
        let mut pcm_val = pcm_val >> 2;
        if pcm_val < 0 {
            pcm_val = -pcm_val;
            mask = 0x7F;
        } else {
            mask = 0xFF;
        }
        if pcm_val > CLIP {
            pcm_val = CLIP;
        }
        pcm_val += BIAS >> 2;
        let mut seg = 8;
        for (i, &end) in SEG_UEND.iter().enumerate() {
            if pcm_val <= end {
                seg = i as i16;
                break;
            }
        }
        if seg >= 8 {
            (0x7F ^ mask) as u8
        } else {
            let uval = (seg << 4) | ((pcm_val >> (seg + 1)) & 0xF);
            (uval ^ mask) as u8
        }
    }

    fn all_inputs() -> impl Iterator<Item = i16> {
        i16::MIN..=i16::MAX
    }

    #[test]
    fn ulaw_encode_matches_itu_reference_on_all_65536_inputs() {
        let mut mismatches = 0;
        for x in all_inputs() {
            if ulaw_encode(x) != itu_ulaw_compress(x) {
                mismatches += 1;
            }
        }
        assert_eq!(mismatches, 0);
    }

    #[test]
    fn alaw_encode_matches_itu_reference_on_all_65536_inputs() {
        let mut mismatches = 0;
        for x in all_inputs() {
            if alaw_encode(x) != itu_alaw_compress(x) {
                mismatches += 1;
            }
        }
        assert_eq!(mismatches, 0);
    }

    #[test]
    fn decoders_match_itu_reference_on_all_256_codes() {
        for c in 0..=255u8 {
            assert_eq!(ulaw_decode(c), itu_ulaw_expand(c as i16), "ulaw code {c:#04x}");
            assert_eq!(alaw_decode(c), itu_alaw_expand(c as i16), "alaw code {c:#04x}");
            assert_eq!(ulaw_expand_one(c), itu_ulaw_expand(c as i16));
            assert_eq!(alaw_expand_one(c), itu_alaw_expand(c as i16));
        }
    }

    #[test]
    fn sun_variant_differs_on_508_negative_inputs() {
        let diffs: Vec<i16> = all_inputs()
            .filter(|&x| sun_linear2ulaw(x) != itu_ulaw_compress(x))
            .collect();
        assert_eq!(diffs.len(), 508);
        assert!(diffs.iter().all(|&x| x < 0), "only negative inputs differ");
        // Our encoder follows ITU on every one of them.
        for &x in &diffs {
            assert_eq!(ulaw_encode(x), itu_ulaw_compress(x));
            assert_ne!(ulaw_encode(x), sun_linear2ulaw(x));
        }
        // On positive inputs the two agree.
        assert!((0..=i16::MAX).all(|x| sun_linear2ulaw(x) == ulaw_encode(x)));
    }

    #[test]
    fn known_reference_vectors() {
        // Silence, extremes and the smallest steps (standard G.711 tables).
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_encode(-1), 0x7F);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0x01), -31100);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0xFE), 8);
        assert_eq!(ulaw_decode(0x7E), -8);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);
        assert_eq!(alaw_decode(0x80), 5504);
        // Entries of the classic published decode tables.
        assert_eq!(ulaw_decode(0x10), -15996);
        assert_eq!(ulaw_decode(0x1E), -8828);
        assert_eq!(ulaw_decode(0x1F), -8316);
        assert_eq!(alaw_decode(0x00), -5504);
        assert_eq!(alaw_decode(0x01), -5248);
        assert_eq!(alaw_decode(0x08), -7552);
    }

    /// Decision-threshold property, derived from the decoded levels alone: G.711 places
    /// every reconstruction level in the middle of its decision interval. For each code,
    /// the inputs the encoder maps to it must form one interval whose centre is the decoded
    /// value exactly. Only the clipping codes at the ends are exempt (their interval
    /// extends to full scale), and µ-law's two zero codes share one interval.
    #[test]
    fn every_level_is_the_centre_of_its_decision_interval() {
        for law in [Law::Ulaw, Law::Alaw] {
            let mut lo = [i32::MAX; 256];
            let mut hi = [i32::MIN; 256];
            for x in all_inputs() {
                let c = law.encode(x) as usize;
                lo[c] = lo[c].min(x as i32);
                hi[c] = hi[c].max(x as i32);
            }
            let mut checked = 0;
            for c in 0..256 {
                assert!(lo[c] <= hi[c], "{law:?}: code {c:#04x} never produced");
                let level = law.decode(c as u8) as i32;
                let end_code = level.abs() >= 32000;
                if end_code {
                    continue;
                }
                if level == 0 {
                    // µ-law's two zero codes split one interval: [-4, -1] and [0, 3].
                    assert!(hi[c] - lo[c] == 3 && (lo[c] == 0 || hi[c] == -1));
                    continue;
                }
                // 2 * centre of [lo, hi] (inclusive) vs 2 * level.
                let dev = (lo[c] + hi[c] + 1 - 2 * level).abs();
                assert!(
                    dev == 0,
                    "{law:?} code {c:#04x}: [{}, {}] level {level}",
                    lo[c],
                    hi[c]
                );
                checked += 1;
            }
            assert!(checked >= 250, "{law:?}: {checked} codes checked");
        }
    }

    #[test]
    fn encoding_is_monotonic_and_decode_encode_is_identity() {
        for law in [Law::Ulaw, Law::Alaw] {
            let mut prev = i32::MIN;
            for x in all_inputs() {
                let y = law.decode(law.encode(x)) as i32;
                assert!(y >= prev, "{law:?}: not monotonic at {x}");
                prev = y;
            }
            for c in 0..=255u8 {
                let back = law.encode(law.decode(c));
                if law == Law::Ulaw && c == 0x7F {
                    // "negative zero" decodes to 0, which encodes as positive zero.
                    assert_eq!(back, 0xFF);
                } else {
                    assert_eq!(back, c, "{law:?} code {c:#04x}");
                }
            }
        }
    }

    #[test]
    fn law_slices_and_payload_types() {
        let pcm: Vec<i16> = (0..160).map(|i| ((i * 397) % 65536 - 32768) as i16).collect();
        for law in [Law::Ulaw, Law::Alaw] {
            let mut out = vec![0xAB];
            law.encode_into(&pcm, &mut out);
            assert_eq!(out.len(), 161);
            assert_eq!(out[0], 0xAB, "appends");
            for (i, &s) in pcm.iter().enumerate() {
                assert_eq!(out[i + 1], law.encode(s));
            }
            let mut back = vec![7];
            law.decode_into(&out[1..], &mut back);
            assert_eq!(back.len(), 161);
            assert_eq!(back[0], 7);
            assert_eq!(law.encode(0), law.silence_code());
            assert!(law.decode(law.silence_code()).abs() <= 8);
            assert_eq!(Law::from_payload_type(law.payload_type()), Some(law));
        }
        assert_eq!(Law::Ulaw.payload_type(), 0);
        assert_eq!(Law::Alaw.payload_type(), 8);
        assert_eq!(Law::from_payload_type(9), None);
        assert_eq!(Law::Ulaw.encoding_name(), "PCMU");
    }
}
