//! `cargo xtask demo`: the bot end to end on loopback.
//!
//! 1. `cargo xtask deps` installs what is missing (as root) or says what to install.
//! 2. The Whisper model: `$CALLBOT_WHISPER_MODEL`, `../shared/models/ggml-tiny.en.bin`,
//!    else `cargo xtask model` (finds or downloads `ggml-tiny.en.bin`).
//! 3. Runs the `demo_call` example (release): `callbot::Bot` on 127.0.0.1, a real SIP
//!    call to it from callbot's own UAC that asks a spoken question (espeak-ng), the
//!    bot's answer recorded and transcribed back; both sides of the conversation and
//!    the stage timings are printed; the bot shuts down; exit 0. With no Ollama on
//!    `http://127.0.0.1:11434` the bot runs in echo mode.

use std::path::PathBuf;
use std::process::Command;

fn model() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CALLBOT_WHISPER_MODEL").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let shared = crate::root()
        .join("..")
        .join("shared")
        .join("models")
        .join("ggml-tiny.en.bin");
    if shared.is_file() {
        return Ok(shared);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["xtask", "model"])
        .current_dir(crate::root())
        .output()
        .map_err(|e| format!("cargo xtask model: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo xtask model failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if path.is_empty() {
        return Err("cargo xtask model printed no path".into());
    }
    Ok(PathBuf::from(path))
}

pub(crate) fn run() -> Result<(), String> {
    crate::deps::run()?;
    let model = model()?;
    println!("demo: Whisper model {}", model.display());
    let model = model.to_string_lossy().to_string();
    let mut args = vec![
        "run",
        "--quiet",
        "--release",
        "-p",
        "callbot-examples",
        "--example",
        "demo_call",
        "--",
        "--model",
        &model,
    ];
    let url = std::env::var("OLLAMA_HOST")
        .ok()
        .filter(|u| u.starts_with("http"));
    if let Some(u) = url.as_deref() {
        args.extend(["--ollama-url", u]);
    }
    crate::run_cmd("cargo", &args, &[])
}
