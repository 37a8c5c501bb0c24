//! Glue between the core and [`crate::sdp`]: the codecs this UA offers and accepts,
//! and SDP bodies as bytes.

use std::net::SocketAddr;

use crate::sdp::{self, AudioCodec, SdpError};

pub(crate) use crate::sdp::NegotiatedMedia;

/// Codecs accepted and offered, in order of preference.
pub(crate) const CODECS: [AudioCodec; 2] = [AudioCodec::Pcmu, AudioCodec::Pcma];
/// Our telephone-event payload type in offers.
const TELEPHONE_EVENT_PT: u8 = 101;

/// A negotiated remote offer, kept until the application answers.
#[derive(Debug, Clone)]
pub(crate) struct Offer {
    pub(crate) media: NegotiatedMedia,
}

/// Why an offer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MediaError {
    /// Answer 488.
    NoUsableCodec(String),
    /// Answer 400.
    Malformed(String),
}

pub(crate) fn negotiate_offer(body: &[u8]) -> Result<Offer, MediaError> {
    match sdp::negotiate_offer(body, &CODECS) {
        Ok(media) => Ok(Offer { media }),
        Err(SdpError::NoUsableCodec) => Err(MediaError::NoUsableCodec("no usable audio codec".into())),
        Err(e @ (SdpError::Malformed(_) | SdpError::TooLarge)) => Err(MediaError::Malformed(e.to_string())),
    }
}

pub(crate) fn answer_body(offer: &Offer, local_rtp: SocketAddr, session_id: u64, version: u64) -> Vec<u8> {
    sdp::build_answer(
        local_rtp.ip(),
        local_rtp.port(),
        &offer.media,
        session_id,
        version,
    )
    .into_bytes()
}

pub(crate) fn offer_body(local_rtp: SocketAddr, session_id: u64, version: u64) -> Vec<u8> {
    sdp::build_offer(
        local_rtp.ip(),
        local_rtp.port(),
        &CODECS,
        Some(TELEPHONE_EVENT_PT),
        session_id,
        version,
    )
    .into_bytes()
}

pub(crate) fn parse_answer(body: &[u8]) -> Result<NegotiatedMedia, SdpError> {
    sdp::parse_answer(body, &CODECS)
}
