//! Routes whisper.cpp and ggml logs into `tracing` (target `whisper_cpp`) instead of stderr.
//!
//! whisper.cpp's INFO chatter (about 30 lines per model load) becomes `debug`, its warnings
//! `warn` and its errors `error`, so the reason for a refused model is in the application log.
//! One exception: an aborted job makes whisper.cpp log "failed to encode" / "failed to
//! decode" as errors; while the job running on this thread has been aborted (cancelled,
//! past its deadline or stopped by shutdown, see [`during_job`]), those lines are `debug`.

use std::cell::RefCell;
use std::ffi::{CStr, c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};

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

thread_local! {
    /// The abort flag of the job whisper.cpp is running on this thread, if any.
    static JOB_ABORTED: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Runs `f` (a whisper.cpp call for one job) with `aborted` as this thread's job abort flag:
/// whisper.cpp errors logged on this thread once it is set are the abort's consequence, not
/// failures, and go to `debug`.
pub(crate) fn during_job<R>(aborted: &Arc<AtomicBool>, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            JOB_ABORTED.with(|j| j.borrow_mut().take());
        }
    }
    JOB_ABORTED.with(|j| *j.borrow_mut() = Some(Arc::clone(aborted)));
    let _reset = Reset;
    f()
}

fn job_aborted() -> bool {
    JOB_ABORTED
        .try_with(|j| {
            j.try_borrow()
                .is_ok_and(|a| a.as_ref().is_some_and(|a| a.load(Ordering::Acquire)))
        })
        .unwrap_or(false)
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
        sys::ggml_log_level_GGML_LOG_LEVEL_ERROR if job_aborted() => {
            tracing::debug!(target: "whisper_cpp", aborted = true, "{text}");
        }
        sys::ggml_log_level_GGML_LOG_LEVEL_ERROR => tracing::error!(target: "whisper_cpp", "{text}"),
        sys::ggml_log_level_GGML_LOG_LEVEL_WARN => tracing::warn!(target: "whisper_cpp", "{text}"),
        sys::ggml_log_level_GGML_LOG_LEVEL_INFO => tracing::debug!(target: "whisper_cpp", "{text}"),
        _ => tracing::trace!(target: "whisper_cpp", "{text}"),
    }
}
