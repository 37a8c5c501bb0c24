//! Helpers shared by the integration tests of this crate (each test binary uses a part).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use callbot_stt::WhisperTranscriber;
use whisper_rs::{FullParams, SamplingStrategy, WhisperState};

/// Waits (at most 60 s) until whisper is running a job; returns when it saw it start.
pub(crate) fn wait_running(stt: &WhisperTranscriber) -> Instant {
    let until = Instant::now() + Duration::from_secs(60);
    while stt.running() == 0 {
        assert!(Instant::now() < until, "job never started");
        std::thread::sleep(Duration::from_micros(200));
    }
    Instant::now()
}

/// whisper-rs parameters with `WhisperTranscriber`'s settings (language en, no context,
/// nothing printed; print_realtime and print_special are off by default), for a direct call
/// to compare the handle with.
pub(crate) fn handle_params(
    strategy: SamplingStrategy,
    threads: i32,
    audio_ctx: u16,
) -> FullParams<'static, 'static> {
    let mut p = FullParams::new(strategy);
    p.set_n_threads(threads);
    p.set_audio_ctx(i32::from(audio_ctx));
    p.set_no_context(true);
    p.set_print_progress(false);
    p.set_print_timestamps(false);
    p
}

/// The text of a finished whisper state, as the handle builds it: trimmed segments, empty
/// ones left out, joined by spaces.
pub(crate) fn state_text(st: &WhisperState) -> String {
    st.as_iter()
        .filter_map(|s| s.to_str_lossy().ok().map(|t| t.trim().to_owned()))
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
