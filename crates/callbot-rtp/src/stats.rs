//! Per-session counters ([`RtpStats`]).

use std::time::Duration;

/// Everything a session counted. Returned by `RtpSession::stats` and by shutdown.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RtpStats {
    /// RTP packets accepted from the latched source (audio and telephone-event).
    pub packets_received: u64,
    /// Payload bytes of those packets.
    pub bytes_received: u64,
    /// RFC 3550 cumulative loss: expected minus received (negative with duplicates).
    pub packets_lost: i64,
    /// RFC 3550 A.8 interarrival jitter, in milliseconds.
    pub jitter_ms: f64,
    /// Packets that arrived after their playout slot (dropped).
    pub late: u64,
    /// Duplicate packets (dropped).
    pub duplicates: u64,
    /// Packets too far ahead of the stream, never confirmed (dropped).
    pub out_of_window: u64,
    /// Sequence jumps confirmed by the next packet (buffer restarted).
    pub resyncs: u64,
    /// 20 ms slots filled by loss concealment.
    pub concealed: u64,
    /// The jitter buffer's playout delay target now (its fixed depth, or an adaptive
    /// buffer's current target).
    pub playout_delay: Duration,
    /// Quiet caller packets dropped to shrink an adaptive jitter buffer's delay.
    pub playout_shrunk: u64,
    /// Late caller packets that grew an adaptive jitter buffer's delay.
    pub playout_grown: u64,
    /// Datagrams on the RTP port that were not RTP: RTCP, STUN, wrong version,
    /// malformed, oversized.
    pub discarded_non_rtp: u64,
    /// RTP packets with a payload type that was not negotiated, or an audio payload of
    /// a size no G.711 packet has (empty or over 60 ms).
    pub discarded_payload: u64,
    /// RTP packets from another address or SSRC than the latched source.
    pub foreign_source: u64,
    /// Decoded frames dropped because the application did not drain the frame channel
    /// (the oldest is dropped).
    pub overflow_drops: u64,
    /// Events dropped because the event channel was full.
    pub events_dropped: u64,
    /// Caller frames delivered to the application.
    pub frames_delivered: u64,
    /// DTMF key presses received.
    pub dtmf_received: u64,
    /// Times the latched source changed SSRC through `retarget`.
    pub ssrc_changes: u64,
    /// RTP packets sent (audio, silence and telephone-event).
    pub packets_sent: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// 20 ms frames of queued playback audio sent.
    pub frames_played: u64,
    /// 20 ms frames of playback discarded by `stop_playback`.
    pub frames_dropped: u64,
    /// DTMF key presses sent.
    pub dtmf_sent: u64,
    /// Send calls that failed (socket errors).
    pub send_errors: u64,
    /// Pacer ticks skipped because the socket thread stalled.
    pub clock_skips: u64,
    /// RTCP compound packets sent.
    pub rtcp_sent: u64,
    /// RTCP SR/RR packets received and parsed.
    pub rtcp_received: u64,
    /// Datagrams on the RTCP port that were not valid RTCP.
    pub rtcp_discarded: u64,
    /// Loss the peer reports about our stream (last RTCP report), 0.0..=1.0.
    pub remote_fraction_lost: Option<f32>,
    /// Jitter the peer reports about our stream, in milliseconds.
    pub remote_jitter_ms: Option<f64>,
    /// Round-trip time from the peer's last report block (RFC 3550 6.4.1).
    pub round_trip: Option<Duration>,
}
