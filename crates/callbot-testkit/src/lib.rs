//! # callbot-testkit: test support for callbot (never published, never in a library)
//!
//! Helpers shared by the workspace's tests, examples' tests and xtask:
//! - [`process::Child`]: a spawned peer process (SIPp, baresip, Kamailio, ...) owned by
//!   the test and stopped **by its PID** on drop: SIGTERM, a second SIGTERM, then
//!   SIGKILL, each wait bounded.
//! - [`ports`]: free loopback UDP ports for peers, so tests run in parallel.
//! - [`tools`]: is a peer program installed? Under `CALLBOT_REQUIRE_PEERS=1` (set by
//!   `cargo xtask ci`) a missing tool fails the test instead of skipping it.
//! - [`resources`]: RSS, threads and open fds from `/proc`, for back-to-baseline checks.
//! - [`TempDir`]: re-export of `tempfile::TempDir`, removed on drop.
//! - Real SIP peers, driven the way `../shared/peers/` documents them (loopback only,
//!   config in a temp dir): [`sipp`] (UAC load with parsed statistics, built-in UAS),
//!   [`baresip`] (caller with recording, auto-answering callee), [`kamailio`]
//!   (digest-auth registrar that routes to the registered contact), [`sipsak`]
//!   (one-shot REGISTER), [`torture`] (the 56-message torture set with its INDEX);
//!   shared pieces and [`harness::example_bin`] in [`harness`].
//!
//! Nothing here starts threads that outlive the value that owns them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod baresip;
pub mod harness;
pub mod kamailio;
pub mod ollama;
pub mod ports;
pub mod process;
pub mod resources;
pub mod sipp;
pub mod sipsak;
pub mod speech;
pub mod tools;
pub mod torture;
pub mod wavcompare;

pub use tempfile::TempDir;

/// A private temporary directory, removed (with its contents) when dropped.
pub fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temp dir")
}

/// The shared repository folder (`../shared` beside the checkout), if present.
pub fn shared_dir() -> Option<std::path::PathBuf> {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // crates/callbot-testkit -> repo root -> ../shared
    let root = manifest.parent()?.parent()?;
    let shared = root.parent()?.join("shared");
    shared.is_dir().then_some(shared)
}

/// The workspace root directory.
pub fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.to_path_buf())
        .expect("workspace root")
}

/// The Whisper model for tests: `$CALLBOT_WHISPER_MODEL`, else `../shared/models/ggml-tiny.en.bin`.
///
/// Returns `None` (and prints why) when no model is found, unless
/// `CALLBOT_REQUIRE_PEERS=1`, in which case it panics: CI must not skip silently.
pub fn whisper_model() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("CALLBOT_WHISPER_MODEL") {
        let p = std::path::PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
    }
    if let Some(shared) = shared_dir() {
        let p = shared.join("models").join("ggml-tiny.en.bin");
        if p.is_file() {
            return Some(p);
        }
    }
    tools::missing("the Whisper model (set CALLBOT_WHISPER_MODEL)");
    None
}

/// [`whisper_model`], when every program of `programs` is found as well (each missing
/// one is reported as by [`tools::require`]): a test that needs the model and some peers
/// skips, or under `CALLBOT_REQUIRE_PEERS=1` fails, with one check.
pub fn whisper_model_and(programs: &[&str]) -> Option<std::path::PathBuf> {
    let model = whisper_model()?;
    let mut found = true;
    for program in programs {
        found &= tools::require(program).is_some();
    }
    found.then_some(model)
}
