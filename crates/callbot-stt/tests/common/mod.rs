//! Helpers shared by the integration tests of this crate.

use std::time::{Duration, Instant};

use callbot_stt::WhisperTranscriber;

/// Waits (at most 60 s) until whisper is running a job; returns when it saw it start.
pub(crate) fn wait_running(stt: &WhisperTranscriber) -> Instant {
    let until = Instant::now() + Duration::from_secs(60);
    while stt.running() == 0 {
        assert!(Instant::now() < until, "job never started");
        std::thread::sleep(Duration::from_micros(200));
    }
    Instant::now()
}
