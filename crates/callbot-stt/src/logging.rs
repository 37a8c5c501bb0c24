//! Routes whisper.cpp and ggml logs into `tracing` (target `whisper_cpp`) instead of stderr.
//!
//! whisper.cpp's INFO chatter (about 30 lines per model load) becomes `debug`, its warnings
//! `warn` and its errors `error`, so the reason for a refused model is in the application log.

use std::ffi::{CStr, c_char, c_void};
use std::sync::Once;

use whisper_rs::whisper_rs_sys as sys;

static INSTALL: Once = Once::new();

/// Installs the hooks once per process (later calls do nothing).
pub(crate) fn install() {
    INSTALL.call_once(|| {
        // SAFETY: `log_to_tracing` matches `ggml_log_callback`, never unwinds, ignores the
        // (null) user data and copies the text before returning; both setters only store the
        // pointers in globals.
        unsafe {
            sys::whisper_log_set(Some(log_to_tracing), std::ptr::null_mut());
            sys::ggml_log_set(Some(log_to_tracing), std::ptr::null_mut());
        }
    });
}

unsafe extern "C" fn log_to_tracing(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: whisper.cpp passes a NUL-terminated string valid for the duration of the call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    match level {
        sys::ggml_log_level_GGML_LOG_LEVEL_ERROR => tracing::error!(target: "whisper_cpp", "{text}"),
        sys::ggml_log_level_GGML_LOG_LEVEL_WARN => tracing::warn!(target: "whisper_cpp", "{text}"),
        sys::ggml_log_level_GGML_LOG_LEVEL_INFO => tracing::debug!(target: "whisper_cpp", "{text}"),
        _ => tracing::trace!(target: "whisper_cpp", "{text}"),
    }
}
