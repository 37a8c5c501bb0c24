//! `answer_play`: answer every call, play a WAV into it, record the call, hang up when
//! the reply has been played.
//!
//! ```text
//! cargo run --release -p callbot-examples --example answer_play -- \
//!     --listen 127.0.0.1:5060 --play reply.wav --record-dir recordings [--max-calls N]
//! ```
//!
//! REPLY.wav may have any sample rate and channel count: it is mixed to mono and
//! resampled to 8 kHz once, at start-up, with callbot-audio. Each call gets its own
//! `RtpSession` (codec and address from the SDP offer, PCMU or PCMA) recording to
//! `DIR/<Call-ID>.wav` (the SIP Call-ID, sanitised for a file name; stereo: caller left, bot right; written under a hidden temporary
//! name and renamed when the call ends). The reply starts when the caller's ACK
//! arrives; 200 ms after its last packet the bot sends BYE.
//!
//! Prints one line per event on stdout (`LISTENING addr`, `CALL id answered ...`,
//! `CALL id ended ...`), logs to stderr. Exits after N calls, or on SIGINT/SIGTERM
//! (live calls are hung up and their recordings saved).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use callbot_audio::AudioFrame;
use callbot_audio::g711::Law;
use callbot_examples::{Args, run_main};
use callbot_rtp::{PlaybackId, RecordTo, RtpEvent, RtpSession, RtpSessionConfig};
use callbot_sip::{AudioCodec, CallId, SipConfig, SipEvent, SipUserAgent};

struct Call {
    session: RtpSession,
    playback: Option<PlaybackId>,
    hang_up_at: Option<Instant>,
    hung_up: bool,
}

fn main() -> std::process::ExitCode {
    run_main("answer_play", run)
}

fn run() -> Result<(), String> {
    let args = Args::parse(&[])?;
    args.reject_unknown(&["listen", "play", "record-dir", "max-calls"])?;
    let listen: SocketAddr = args.required_parsed("listen")?;
    let play = PathBuf::from(args.required("play")?);
    let record_dir = PathBuf::from(args.required("record-dir")?);
    let max_calls: usize = args.parsed_or("max-calls", 0)?;
    std::fs::create_dir_all(&record_dir).map_err(|e| format!("{}: {e}", record_dir.display()))?;

    let reply = callbot_audio::wav::read_wav_limited(&play, Duration::from_secs(600))
        .map_err(|e| format!("{}: {e}", play.display()))?;
    let reply = if reply.sample_rate == 8000 {
        reply
    } else {
        callbot_audio::resample::resample_frame(&reply, 8000).map_err(|e| format!("resampling: {e}"))?
    };
    tracing::info!(seconds = reply.samples.len() as f64 / 8000.0, "reply loaded");

    let stop = callbot_examples::signal_flag(&[signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;

    let mut sip = SipUserAgent::start(SipConfig::new(listen)).map_err(|e| e.to_string())?;
    println!("LISTENING {}", sip.local_addr());
    let mut calls: HashMap<CallId, Call> = HashMap::new();
    let mut finished = 0usize;

    loop {
        let all_done = max_calls > 0 && finished >= max_calls && calls.is_empty();
        if stop.load(Ordering::Relaxed) || all_done {
            break;
        }
        if let Ok(ev) = sip.events().recv_timeout(Duration::from_millis(10)) {
            match ev {
                SipEvent::IncomingCall {
                    call,
                    call_id,
                    media,
                    from,
                    ..
                } => {
                    if max_calls > 0 && finished + calls.len() >= max_calls {
                        let _ = sip.reject(call, 486);
                        continue;
                    }
                    let law = match media.codec {
                        AudioCodec::Pcmu => Law::Ulaw,
                        AudioCodec::Pcma => Law::Alaw,
                    };
                    let mut cfg = RtpSessionConfig::new(listen.ip(), law, Some(media.remote_rtp));
                    cfg.media.payload_type = media.payload_type;
                    cfg.media.telephone_event = media.telephone_event;
                    cfg.record = Some(RecordTo {
                        dir: record_dir.clone(),
                        name: call_id.clone(),
                    });
                    let session = match RtpSession::start(cfg) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::error!(%call, error = %e, "no media session: rejecting");
                            let _ = sip.reject(call, 503);
                            continue;
                        }
                    };
                    if let Err(e) = sip.answer(call, session.local_addr()) {
                        tracing::error!(%call, error = %e, "answer failed");
                        continue;
                    }
                    println!(
                        "CALL {call} answered from={from} codec={} remote={} local={} call_id={call_id}",
                        law.encoding_name(),
                        media.remote_rtp,
                        session.local_addr()
                    );
                    calls.insert(
                        call,
                        Call {
                            session,
                            playback: None,
                            hang_up_at: None,
                            hung_up: false,
                        },
                    );
                }
                SipEvent::CallConfirmed { call } => {
                    if let Some(c) = calls.get_mut(&call)
                        && c.playback.is_none()
                    {
                        match c.session.play(AudioFrame::new(8000, reply.samples.clone())) {
                            Ok(id) => c.playback = Some(id),
                            Err(e) => tracing::error!(%call, error = %e, "play failed"),
                        }
                    }
                }
                SipEvent::MediaUpdated { call, media } => {
                    if let Some(c) = calls.get(&call) {
                        let law = match media.codec {
                            AudioCodec::Pcmu => Law::Ulaw,
                            AudioCodec::Pcma => Law::Alaw,
                        };
                        let _ = c.session.retarget(
                            Some(media.remote_rtp),
                            law,
                            media.payload_type,
                            media.telephone_event,
                        );
                    }
                }
                SipEvent::CallEnded { call, reason } => {
                    if let Some(mut c) = calls.remove(&call) {
                        let report = c.session.shutdown(Instant::now() + Duration::from_secs(2));
                        let rec = match &report.recording {
                            Some(Ok(r)) => r.path.display().to_string(),
                            Some(Err(e)) => format!("error: {e}"),
                            None => "none".into(),
                        };
                        let s = &report.stats;
                        println!(
                            "CALL {call} ended reason={reason:?} recording={rec} packets_in={} packets_out={} lost={} jitter_ms={:.2} late={} discarded={} foreign={} rtcp_in={} rtcp_out={} rtt={:?}",
                            s.packets_received,
                            s.packets_sent,
                            s.packets_lost,
                            s.jitter_ms,
                            s.late,
                            s.discarded_non_rtp + s.discarded_payload,
                            s.foreign_source,
                            s.rtcp_received,
                            s.rtcp_sent,
                            s.round_trip
                        );
                        finished += 1;
                    }
                }
                _ => {}
            }
        }
        let now = Instant::now();
        for (call, c) in calls.iter_mut() {
            // Caller audio is recorded by the session; this bot does not listen to it.
            c.session.frames().try_iter().for_each(drop);
            for ev in c.session.events().try_iter() {
                match ev {
                    RtpEvent::PlaybackFinished(f) if Some(f.id) == c.playback && f.completed => {
                        c.hang_up_at = Some(now + Duration::from_millis(200));
                    }
                    RtpEvent::Dtmf(d) => println!("CALL {call} dtmf={}", d.digit),
                    _ => {}
                }
            }
            if !c.hung_up && c.hang_up_at.is_some_and(|t| now >= t) {
                c.hung_up = true;
                if let Err(e) = sip.hang_up(*call) {
                    tracing::warn!(%call, error = %e, "hang up failed");
                }
            }
        }
    }
    // Stop: hang up what is live (the SIP shutdown sends BYE), save recordings.
    let deadline = Instant::now() + Duration::from_secs(3);
    for (_, mut c) in calls.drain() {
        c.session.shutdown(deadline);
    }
    let report = sip.shutdown(deadline);
    tracing::info!(?report, "answer_play done");
    println!("EXIT calls={finished}");
    Ok(())
}
